//! A run's timeline for the dashboard (PROTOCOL.md §17, `/api/runs/<run_id>`): its start,
//! turns, model turns, tool calls, approvals and end, each with its time, and where one
//! lasts, its end and duration, in time order.
//!
//! Durations and statuses are computed here, from the log, once: the page only draws them.
//! Tool calls come from their dispatch markers and outcomes (§14.5), approvals from those
//! asked inside the run (`approval.requested_in_run`) and their resolution in the state.
//! Pure: the caller reads the trace records and the run's related events from the log.

use car_events::event::Event;
use car_events::{Envelope, format_ts};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::runs::Run;
use crate::state::{ApprovalStatus, State};
use crate::trace::{self, termination_json};

/// One entry: what, when, and (for what lasts) until when.
#[derive(Debug, Clone, PartialEq)]
struct Item {
    kind: &'static str,
    at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    detail: Value,
}

impl Item {
    fn to_json(&self) -> Value {
        let mut out = json!({"kind": self.kind, "at": format_ts(self.at)});
        if let Some(end) = self.ended_at {
            out["ended_at"] = json!(format_ts(end));
            out["duration_ms"] = json!((end - self.at).num_milliseconds().max(0));
        }
        out["detail"] = self.detail.clone();
        out
    }
}

/// `termination_kind` of a run's summary: `outcome`, `incomplete`, `cancelled`, or null.
pub fn termination_kind(run: &Run) -> Value {
    run.end
        .as_ref()
        .map(|end| termination_json(&end.termination)["kind"].clone())
        .unwrap_or(Value::Null)
}

/// A run's summary as the dashboard lists it: `runs.list`'s plus `termination_kind` and
/// `duration_ms` (start to end; null while it runs).
pub fn summary(run: &Run) -> Value {
    let mut summary = trace::summary(run);
    summary["termination_kind"] = termination_kind(run);
    summary["duration_ms"] = run.end.as_ref().map_or(Value::Null, |end| {
        json!((end.ended_at - run.started_at).num_milliseconds().max(0))
    });
    summary
}

/// The timeline of `run`: `records` is its whole trace (`started`, turns, `ended`) and
/// `related` its other events (from [`Run::related`]), in seq order.
pub fn build(state: &State, run: &Run, records: &[Value], related: &[Envelope]) -> Value {
    let mut items = Vec::new();
    for record in records {
        let at = record
            .get("recorded_at")
            .or_else(|| record.get("started_at"))
            .or_else(|| record.get("ended_at"))
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        let Some(at) = at else { continue };
        let kind = match record["record"].as_str() {
            Some("started") => "started",
            Some("model_turn") => "model_turn",
            Some("ended") => "ended",
            _ => "turn",
        };
        // A model turn says how long the model took; it ended when it was recorded.
        let started = match (kind, record["duration_ms"].as_i64()) {
            ("model_turn", Some(ms)) => at - chrono::TimeDelta::milliseconds(ms),
            _ => at,
        };
        items.push(Item {
            kind,
            at: started,
            ended_at: (kind == "model_turn").then_some(at),
            detail: record.clone(),
        });
    }
    items.extend(tool_calls(related));
    items.extend(approvals(state, related));
    // Stable: equal times keep the trace's order, then tool calls, then approvals.
    items.sort_by_key(|item| item.at);
    json!({
        "summary": summary(run),
        "timeline": items.iter().map(Item::to_json).collect::<Vec<_>>(),
    })
}

/// Tool calls: each dispatch marker with its outcome, if it has one yet.
fn tool_calls(related: &[Envelope]) -> Vec<Item> {
    let mut items: Vec<(String, Item)> = Vec::new();
    for env in related {
        let (request_id, status, extra) = match &env.event {
            Event::ToolCallDispatched(e) => {
                let detail = json!({
                    "request_id": e.request_id, "proposal_id": e.proposal_id,
                    "action_id": e.action_id, "tool": e.tool, "attempt": e.attempt,
                    "status": "in_progress",
                });
                items.push((
                    e.request_id.clone(),
                    Item {
                        kind: "tool_call",
                        at: env.ts,
                        ended_at: None,
                        detail,
                    },
                ));
                continue;
            }
            Event::ToolCallCompleted(e) => (&e.request_id, "completed", None),
            Event::ToolCallFailed(e) => (&e.request_id, "failed", Some(&e.error)),
            Event::ToolCallTimedOut(e) => (&e.request_id, "timed_out", None),
            Event::ToolCallCancelled(e) => (&e.request_id, "cancelled", Some(&e.reason)),
            Event::ToolCallIndeterminate(e) => (&e.request_id, "indeterminate", Some(&e.error)),
            _ => continue,
        };
        if let Some((_, item)) = items.iter_mut().find(|(id, _)| id == request_id) {
            item.ended_at = Some(env.ts);
            item.detail["status"] = json!(status);
            if let Some(error) = extra {
                item.detail["error"] = json!(error);
            }
        }
    }
    items.into_iter().map(|(_, item)| item).collect()
}

/// Approvals asked inside the run, with their wait and resolution.
fn approvals(state: &State, related: &[Envelope]) -> Vec<Item> {
    related
        .iter()
        .filter_map(|env| match &env.event {
            Event::ApprovalRequestedInRun(e) => Some((env, &e.approval.approval_id)),
            _ => None,
        })
        .map(|(env, id)| {
            let approval = state.approval(id);
            let status = approval.map_or("unknown", |a| a.status.as_str());
            let ended_at = approval
                .filter(|a| a.status != ApprovalStatus::Pending)
                .and_then(|a| a.resolved_at);
            Item {
                kind: "approval",
                at: env.ts,
                ended_at,
                detail: json!({
                    "approval_id": id,
                    "action": approval.map(|a| a.action.clone()),
                    "status": status,
                    "resolution": approval.and_then(|a| a.resolution.clone()),
                }),
            }
        })
        .collect()
}
