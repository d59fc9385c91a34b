//! The canonical rendering of a [`State`] and its digest.
//!
//! Two states are the same exactly when their canonical renderings are byte-identical:
//! every collection is rendered in a fixed order (sorted by id, or in log order where the
//! order means something), every field in a fixed order, times at full precision. The
//! SHA-256 of the compact rendering is the state's digest, which the daemon logs at
//! shutdown, `car-replay state` prints, and the determinism tests compare.
//!
//! The rendering is one [`Serialize`] implementation ([`Canonical`]) streamed straight
//! into its consumer: [`digest`] hashes it as it is written, without building a JSON tree
//! or a string (a million-event state has about a million turn batches; building them as
//! `serde_json::Value`s took most of a second and half a GiB).

use std::collections::BTreeMap;
use std::io;

use car_events::event::{Role, SubscriptionTarget};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::memory::{Memory, Minter};
use crate::state::{Run, State, TurnBatch};
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

/// The canonical rendering of a state, as a [`Serialize`]: serialize it with
/// `serde_json` (compact) to get the canonical text.
#[derive(Debug, Clone, Copy)]
pub struct Canonical<'a>(pub &'a State);

/// Serializes the items of an iterator as a sequence, without collecting them.
struct Items<I>(std::cell::Cell<Option<I>>);

impl<I> Items<I> {
    fn new(items: I) -> Self {
        Self(std::cell::Cell::new(Some(items)))
    }
}

impl<I: Iterator<Item = T>, T: Serialize> Serialize for Items<I> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        for item in self.0.take().into_iter().flatten() {
            seq.serialize_element(&item)?;
        }
        seq.end()
    }
}

/// A run's turn batches as `[[base_index, seq], …]`.
struct Batches<'a>(&'a [TurnBatch]);

impl Serialize for Batches<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for b in self.0 {
            seq.serialize_element(&(b.base_index, b.seq))?;
        }
        seq.end()
    }
}

/// One run, fields in their canonical order.
struct RunDoc<'a>(&'a Run);

impl Serialize for RunDoc<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("run_id", &r.run_id)?;
        map.serialize_entry("agent_id", &r.agent_id)?;
        map.serialize_entry("owner", &r.owner)?;
        map.serialize_entry("intent", &r.intent)?;
        map.serialize_entry("outcome_description", &r.outcome_description)?;
        map.serialize_entry("idempotency_key", &r.idempotency_key)?;
        map.serialize_entry("status", r.status().as_str())?;
        map.serialize_entry("started_seq", &r.started_seq)?;
        map.serialize_entry("started_at", &ts(r.started_at))?;
        map.serialize_entry("turn_count", &r.turn_count)?;
        map.serialize_entry("turn_batches", &Batches(&r.turn_batches))?;
        map.serialize_entry(
            "end",
            &r.end.as_ref().map(|e| {
                json!({
                    "termination": termination_json(&e.termination),
                    "ended_at": ts(e.ended_at),
                    "seq": e.seq,
                })
            }),
        )?;
        map.serialize_entry("related", &r.related)?;
        map.end()
    }
}

/// The retained runs by id.
struct Runs<'a>(&'a State);

impl Serialize for Runs<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let runs: BTreeMap<&str, &Run> = self.0.runs().map(|r| (r.run_id.as_str(), r)).collect();
        let mut map = serializer.serialize_map(Some(runs.len()))?;
        for (id, run) in runs {
            map.serialize_entry(id, &RunDoc(run))?;
        }
        map.end()
    }
}

/// Memory: by scope text, each `{minted: {ws, mcp}, facts: [...]}` with the facts in log
/// order (the index is derived from them, so it is not rendered).
struct MemoryDoc<'a>(&'a Memory);

impl Serialize for MemoryDoc<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, scope) in self.0.scopes() {
            map.serialize_entry(
                key,
                &json!({
                    "minted": {
                        "ws": scope.minted(Minter::Ws),
                        "mcp": scope.minted(Minter::Mcp),
                    },
                    "facts": scope.facts().map(|f| json!({
                        "fact_id": f.fact_id,
                        "subject": f.subject,
                        "body": f.body,
                        "kind": f.kind,
                        "tags": f.tags,
                        "source": f.source,
                        "created_at": ts(f.created_at),
                        "seq": f.seq,
                    })).collect::<Vec<_>>(),
                }),
            )?;
        }
        map.end()
    }
}

impl Serialize for Canonical<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let state = self.0;
        let retired: BTreeMap<&str, &str> = state.retired_keys().collect();
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("head", &state.head())?;
        map.serialize_entry(
            "daemon",
            &state.daemon().map(|d| {
                json!({
                    "started_seq": d.started_seq,
                    "started_at": ts(d.started_at),
                    "version": d.version,
                    "pid": d.pid,
                    "recovered": d.recovered,
                    "stopped": d.stopped,
                })
            }),
        )?;
        map.serialize_entry(
            "sessions",
            &Items::new(state.sessions().map(|s| {
                let mut session = json!({
                    "client_id": s.client_id,
                    "peer": s.peer,
                    "role": role(s.role),
                    "agent_id": s.agent_id,
                    "authenticated": s.authenticated,
                    "opened_seq": s.opened_seq,
                    "opened_at": ts(s.opened_at),
                });
                // Only when set, so the digests of states that never saw a halt (every
                // log written before halts existed) are unchanged.
                if s.halted {
                    session["halted"] = Value::Bool(true);
                }
                session
            })),
        )?;
        map.serialize_entry("agents", &state.agents().collect::<BTreeMap<_, _>>())?;
        map.serialize_entry("runs", &Runs(state))?;
        map.serialize_entry("retired_keys", &retired)?;
        map.serialize_entry(
            "approvals",
            &Items::new(state.approvals().into_iter().map(|a| {
                json!({
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
                })
            })),
        )?;
        map.serialize_entry(
            "subscriptions",
            &Items::new(state.subscriptions().map(|s| {
                json!({
                    "subscription_id": s.subscription_id,
                    "client_id": s.client_id,
                    "target": target(&s.target),
                    "opened_seq": s.opened_seq,
                })
            })),
        )?;
        map.serialize_entry(
            "tool_calls",
            &Items::new(state.tool_calls().map(|c| {
                json!({
                    "dispatch": serde_json::to_value(&c.dispatch).unwrap_or(Value::Null),
                    "dispatched_at": ts(c.dispatched_at),
                    "dispatched_seq": c.dispatched_seq,
                })
            })),
        )?;
        map.serialize_entry(
            "proposals",
            &Items::new(state.proposals().map(|p| {
                let mut proposal = json!({
                    "proposal_id": p.proposal_id,
                    "client_id": p.client_id,
                    "run_id": p.run_id,
                    "submitted_seq": p.submitted_seq,
                });
                // Only when there are any (§14.5), so earlier states' digests stay as they
                // were; the action ids come from the proposal's own event.
                if !p.finished.is_empty() {
                    proposal["finished"] = p
                        .finished
                        .iter()
                        .map(|(f, seq)| json!([f.action_id, f.status, f.attempts, seq]))
                        .collect();
                }
                proposal
            })),
        )?;
        map.serialize_entry("host_feed", state.host_feed())?;
        // Only once memory was ever written, so that the digest of a state without memory
        // is what it was before memory existed (digests stay comparable across versions).
        // Likewise for stored proposal results (PROTOCOL.md §14.5).
        if state.proposal_results().next().is_some() {
            let results: Vec<Value> = state
                .proposal_results()
                .map(|(id, principal, seq)| json!({"proposal_id": id, "principal": principal, "seq": seq}))
                .collect();
            map.serialize_entry("proposal_results", &results)?;
        }
        if state.memory().scopes().next().is_some() {
            map.serialize_entry("memory", &MemoryDoc(state.memory()))?;
        }
        // Chats (PROTOCOL.md §13), once one was ever started: the live routes and counts.
        let (started, ended) = state.chats().totals();
        if started > 0 {
            let live: Vec<Value> = state
                .chats()
                .iter()
                .map(|c| {
                    json!({
                        "session_id": c.session_id, "agent_id": c.agent_id,
                        "agent_client_id": c.agent_client_id, "caller_client_id": c.caller_client_id,
                        "caller_role": c.caller_role, "conversation_id": c.conversation_id,
                        "started_at": ts(c.started_at), "started_seq": c.started_seq,
                        "cancel_requested_by": c.cancel_requested_by, "terminal": c.terminal,
                        "approvals": c.approvals,
                    })
                })
                .collect();
            map.serialize_entry(
                "chats",
                &json!({"started": started, "ended": ended, "live": live}),
            )?;
        }
        map.end()
    }
}

/// The canonical rendering of a state.
pub fn render(state: &State) -> Value {
    // Our own types only: serializing them into a `Value` cannot fail.
    serde_json::to_value(Canonical(state)).unwrap_or(Value::Null)
}

/// The compact canonical rendering as text.
pub fn render_text(state: &State) -> String {
    serde_json::to_string(&Canonical(state)).unwrap_or_default()
}

/// Feeds everything written to it to a hasher.
struct HashWriter(Sha256);

impl io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The SHA-256 of the canonical rendering, in hex.
pub fn digest(state: &State) -> String {
    // Through a buffer: serde_json writes a few bytes at a time.
    let mut out = io::BufWriter::with_capacity(64 * 1024, HashWriter(Sha256::new()));
    // Writing to a hasher cannot fail, and our own types always serialize.
    let _ = serde_json::to_writer(&mut out, &Canonical(state));
    let _ = io::Write::flush(&mut out);
    let (hasher, _) = out.into_parts();
    hex::encode(hasher.0.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streamed text, the `Value` and the digest are one rendering.
    #[test]
    fn text_value_and_digest_agree() {
        let state = State::new();
        let text = render_text(&state);
        assert_eq!(render(&state).to_string(), text);
        assert_eq!(digest(&state), hex::encode(Sha256::digest(text.as_bytes())));
        assert!(
            text.starts_with(r#"{"head":0,"daemon":null,"sessions":[],"#),
            "{text}"
        );
    }
}
