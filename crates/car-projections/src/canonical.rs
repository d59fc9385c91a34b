//! The canonical rendering of a [`State`] and its digest.
//!
//! Two states are the same exactly when their canonical renderings are byte-identical:
//! every collection is rendered in a fixed order (sorted by id, or in log order where the
//! order means something), every field in a fixed order, times at full precision. The
//! SHA-256 of the compact rendering is the state's digest, which the daemon logs at
//! shutdown, `car-replay state` prints, and the determinism tests compare.

use std::collections::BTreeMap;

use car_events::event::{Role, SubscriptionTarget};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::state::{Run, State};
use crate::trace::termination_json;

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn role(r: Option<Role>) -> Value {
    r.map_or(Value::Null, |r| Value::from(r.as_str()))
}

fn target(t: &SubscriptionTarget) -> Value {
    match t {
        SubscriptionTarget::Run { run_id, cursor } => {
            json!({"kind": "run", "run_id": run_id, "cursor": cursor})
        }
        SubscriptionTarget::Log { from_seq } => json!({"kind": "log", "from_seq": from_seq}),
        SubscriptionTarget::Host => json!({"kind": "host"}),
    }
}

fn run(r: &Run) -> Value {
    json!({
        "run_id": r.run_id,
        "agent_id": r.agent_id,
        "owner": r.owner,
        "intent": r.intent,
        "outcome_description": r.outcome_description,
        "idempotency_key": r.idempotency_key,
        "status": r.status().as_str(),
        "started_seq": r.started_seq,
        "started_at": ts(r.started_at),
        "turn_count": r.turn_count,
        "turn_batches": r.turn_batches.iter().map(|b| json!([b.base_index, b.seq])).collect::<Vec<_>>(),
        "end": r.end.as_ref().map(|e| json!({
            "termination": termination_json(&e.termination),
            "ended_at": ts(e.ended_at),
            "seq": e.seq,
        })),
        "related": r.related,
    })
}

/// The canonical rendering of a state.
pub fn render(state: &State) -> Value {
    let runs: BTreeMap<&str, Value> = state.runs().map(|r| (r.run_id.as_str(), run(r))).collect();
    let retired: BTreeMap<&str, &str> = state.retired_keys().collect();
    json!({
        "head": state.head(),
        "daemon": state.daemon().map(|d| json!({
            "started_seq": d.started_seq,
            "started_at": ts(d.started_at),
            "version": d.version,
            "pid": d.pid,
            "recovered": d.recovered,
            "stopped": d.stopped,
        })),
        "sessions": state.sessions().map(|s| json!({
            "client_id": s.client_id,
            "peer": s.peer,
            "role": role(s.role),
            "agent_id": s.agent_id,
            "authenticated": s.authenticated,
            "opened_seq": s.opened_seq,
            "opened_at": ts(s.opened_at),
        })).collect::<Vec<_>>(),
        "agents": state.agents().collect::<BTreeMap<_, _>>(),
        "runs": runs,
        "retired_keys": retired,
        "approvals": state.approvals().into_iter().map(|a| json!({
            "id": a.id,
            "requester": a.requester,
            "agent_id": a.agent_id,
            "action": a.action,
            "details": a.details.as_raw(),
            "options": a.options,
            "system_level": a.system_level,
            "status": a.status.as_str(),
            "resolution": a.resolution,
            "resolved_by": a.resolved_by,
            "created_at": ts(a.created_at),
            "resolved_at": a.resolved_at.map(ts),
            "requested_seq": a.requested_seq,
        })).collect::<Vec<_>>(),
        "subscriptions": state.subscriptions().map(|s| json!({
            "subscription_id": s.subscription_id,
            "client_id": s.client_id,
            "target": target(&s.target),
            "opened_seq": s.opened_seq,
        })).collect::<Vec<_>>(),
        "tool_calls": state.tool_calls().map(|c| json!({
            "dispatch": serde_json::to_value(&c.dispatch).unwrap_or(Value::Null),
            "dispatched_at": ts(c.dispatched_at),
            "dispatched_seq": c.dispatched_seq,
        })).collect::<Vec<_>>(),
        "proposals": state.proposals().map(|p| json!({
            "proposal_id": p.proposal_id,
            "client_id": p.client_id,
            "run_id": p.run_id,
            "submitted_seq": p.submitted_seq,
        })).collect::<Vec<_>>(),
        "host_feed": state.host_feed(),
    })
}

/// The compact canonical rendering as text.
pub fn render_text(state: &State) -> String {
    render(state).to_string()
}

/// The SHA-256 of the canonical rendering, in hex.
pub fn digest(state: &State) -> String {
    hex::encode(Sha256::digest(render_text(state).as_bytes()))
}
