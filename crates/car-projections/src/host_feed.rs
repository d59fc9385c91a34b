//! The host feed (PROTOCOL.md §6): which events hosts are told about, how they look on
//! the wire (`host.event`), and who may see which.
//!
//! A host event is rendered from its log event alone, plus, for approvals, the approval's
//! immutable fields from the state (approvals are never dropped from the state), so the
//! feed's history renders the same whenever it is read.
//!
//! Sessions and `session.*`: a connection that never authenticates is not a session hosts
//! hear about; a session "opens" for the feed when its role is known (at once with auth
//! disabled, else at `session.auth`) and "closes" only if it had opened.

use car_events::event::{
    ApprovalExpired, ApprovalRequested, ApprovalRequestedInChat, ApprovalRequestedInRun,
    ApprovalResolved, Event, Role, SessionClosed, SessionOpened, Termination,
};
use car_events::{Envelope, format_ts};
use serde_json::{Map, Value, json};

use crate::access::Actor;
use crate::state::{Approval, ApprovalStatus, State};

/// Whether an event is part of the host feed.
pub fn is_host_event(event: &Event) -> bool {
    match event {
        Event::DaemonStarted(_)
        | Event::DaemonRecovered(_)
        | Event::SessionAuthenticated(_)
        | Event::RunStarted(_)
        | Event::RunEnded(_)
        | Event::RunEvicted(_)
        | Event::ApprovalRequested(_)
        | Event::ApprovalRequestedInRun(_)
        | Event::ApprovalRequestedInChat(_)
        | Event::ApprovalResolved(_)
        | Event::ApprovalExpired(_)
        | Event::AgentRemoved(_)
        | Event::AgentStatusChanged(_)
        | Event::ChatStarted(_)
        | Event::ChatRouteDropped(_) => true,
        // The first upsert of an id (the one that mints its token) registers it; later
        // ones replace its spec, which hosts are not told about (§12.4 names no kind).
        Event::AgentUpserted(e) => e.token_sha256.is_some(),
        Event::SessionOpened(SessionOpened { role, .. }) => role.is_some(),
        Event::SessionClosed(SessionClosed { role, .. }) => role.is_some(),
        _ => false,
    }
}

/// An approval on the wire (PROTOCOL.md §5.1); absent optional fields are left out.
pub fn approval_json(approval: &Approval) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), json!(approval.id));
    if let Some(agent_id) = &approval.agent_id {
        out.insert("agent_id".into(), json!(agent_id));
    }
    if let Some(run_id) = &approval.run_id {
        out.insert("run_id".into(), json!(run_id));
    }
    out.insert("action".into(), json!(approval.action));
    out.insert("details".into(), approval.details.to_value());
    out.insert("options".into(), json!(approval.options));
    out.insert("system_level".into(), json!(approval.system_level));
    out.insert("status".into(), json!(approval.status.as_str()));
    if let Some(resolution) = &approval.resolution {
        out.insert("resolution".into(), json!(resolution));
    }
    out.insert("created_at".into(), json!(format_ts(approval.created_at)));
    if let Some(resolved_at) = approval.resolved_at {
        out.insert("resolved_at".into(), json!(format_ts(resolved_at)));
    }
    Value::Object(out)
}

/// The approval as it was right after `env` (one of its own events).
fn approval_as_of(state: &State, env: &Envelope) -> Option<Approval> {
    let (id, status, resolution) = match &env.event {
        Event::ApprovalRequested(ApprovalRequested { approval_id, .. })
        | Event::ApprovalRequestedInRun(ApprovalRequestedInRun {
            approval: ApprovalRequested { approval_id, .. },
            ..
        })
        | Event::ApprovalRequestedInChat(ApprovalRequestedInChat {
            approval: ApprovalRequested { approval_id, .. },
            ..
        }) => (approval_id, ApprovalStatus::Pending, None),
        Event::ApprovalResolved(ApprovalResolved {
            approval_id,
            resolution,
            ..
        }) => (
            approval_id,
            ApprovalStatus::Resolved,
            Some(resolution.clone()),
        ),
        Event::ApprovalExpired(ApprovalExpired { approval_id, .. }) => {
            (approval_id, ApprovalStatus::Expired, None)
        }
        _ => return None,
    };
    let mut approval = state.approval(id)?.clone();
    approval.status = status;
    approval.resolution = resolution;
    approval.resolved_at = (status != ApprovalStatus::Pending).then_some(env.ts);
    if status != ApprovalStatus::Resolved {
        approval.resolved_by = None;
    }
    Some(approval)
}

fn session_payload(
    client_id: &str,
    role: Option<Role>,
    agent_id: Option<&String>,
    reason: Option<&str>,
) -> Value {
    let mut payload = Map::new();
    payload.insert("client_id".into(), json!(client_id));
    payload.insert("role".into(), json!(role.map(Role::as_str)));
    if let Some(agent_id) = agent_id {
        payload.insert("agent_id".into(), json!(agent_id));
    }
    if let Some(reason) = reason {
        payload.insert("reason".into(), json!(reason));
    }
    Value::Object(payload)
}

/// The `host.event` for a log event, `None` when it is not a host event.
pub fn host_event(state: &State, env: &Envelope) -> Option<Value> {
    if !is_host_event(&env.event) {
        return None;
    }
    let (kind, agent_id, message, payload): (&str, Option<String>, String, Value) = match &env.event
    {
        Event::DaemonStarted(e) => (
            "daemon.started",
            None,
            format!("car-server {} started (pid {})", e.version, e.pid),
            json!({"version": e.version, "pid": e.pid, "data_dir": e.data_dir, "listen": e.listen}),
        ),
        Event::DaemonRecovered(e) => (
            "daemon.recovered",
            None,
            format!(
                "recovered: replayed {} events, adopted {} runs, evicted {} runs",
                e.events_replayed, e.runs_adopted, e.runs_evicted
            ),
            serde_json::to_value(e).unwrap_or(Value::Null),
        ),
        Event::SessionOpened(e) => (
            "session.opened",
            e.agent_id.clone(),
            format!("session {} opened", e.client_id),
            session_payload(&e.client_id, e.role, e.agent_id.as_ref(), None),
        ),
        Event::SessionAuthenticated(e) => (
            "session.opened",
            e.agent_id.clone(),
            format!("session {} opened as {}", e.client_id, e.role.as_str()),
            session_payload(&e.client_id, Some(e.role), e.agent_id.as_ref(), None),
        ),
        Event::SessionClosed(e) => (
            "session.closed",
            e.agent_id.clone(),
            format!("session {} closed ({})", e.client_id, e.reason),
            session_payload(&e.client_id, e.role, e.agent_id.as_ref(), Some(&e.reason)),
        ),
        Event::RunStarted(e) => (
            "run.started",
            Some(e.agent_id.clone()),
            format!("run {} started: {}", e.run_id, e.intent),
            json!({"run_id": e.run_id, "agent_id": e.agent_id, "status": "in_progress"}),
        ),
        Event::RunEnded(e) => {
            let status = match &e.termination {
                Termination::Outcome { .. } => "completed",
                Termination::Incomplete { .. } | Termination::Cancelled { .. } => "incomplete",
            };
            (
                "run.ended",
                Some(e.agent_id.clone()),
                format!("run {} ended {status}", e.run_id),
                json!({"run_id": e.run_id, "agent_id": e.agent_id, "status": status}),
            )
        }
        Event::RunEvicted(e) => (
            "run.evicted",
            Some(e.agent_id.clone()),
            format!("run {} evicted", e.run_id),
            json!({"run_id": e.run_id, "agent_id": e.agent_id, "status": "evicted"}),
        ),
        Event::ApprovalRequested(_)
        | Event::ApprovalRequestedInRun(_)
        | Event::ApprovalRequestedInChat(_)
        | Event::ApprovalResolved(_)
        | Event::ApprovalExpired(_) => {
            let approval = approval_as_of(state, env)?;
            let kind = match approval.status {
                ApprovalStatus::Pending => "approval.requested",
                ApprovalStatus::Resolved => "approval.resolved",
                ApprovalStatus::Expired => "approval.expired",
            };
            (
                kind,
                approval.agent_id.clone(),
                format!(
                    "approval {} {}: {}",
                    approval.id,
                    approval.status.as_str(),
                    approval.action
                ),
                approval_json(&approval),
            )
        }
        Event::AgentUpserted(e) => {
            // The spec as registered, without `env` (§12.4: it may hold secrets).
            let mut spec = e.spec.to_value();
            if let Some(obj) = spec.as_object_mut() {
                obj.remove("env");
            }
            (
                "agent.registered",
                Some(e.agent_id.clone()),
                format!("agent {} registered", e.agent_id),
                json!({"spec": spec, "status": "stopped", "restart_count": 0}),
            )
        }
        Event::AgentRemoved(e) => (
            "agent.unregistered",
            Some(e.agent_id.clone()),
            format!("agent {} unregistered", e.agent_id),
            json!({"id": e.agent_id, "by": e.by}),
        ),
        Event::AgentStatusChanged(e) => (
            "agent.status_changed",
            Some(e.agent_id.clone()),
            format!("agent {} {} ({})", e.agent_id, e.status.as_str(), e.reason),
            json!({"id": e.agent_id, "status": e.status.as_str(), "reason": e.reason}),
        ),
        // Chats (ext, §13.1): hosts hear of them; the prompt stays in the log.
        Event::ChatStarted(e) => (
            "chat.started",
            Some(e.agent_id.clone()),
            format!("chat {} started with agent {}", e.session_id, e.agent_id),
            json!({
                "session_id": e.session_id,
                "agent_id": e.agent_id,
                "conversation_id": e.conversation_id,
                "caller_role": e.caller_role,
                "attachments": e.attachments,
                "stream": e.stream,
            }),
        ),
        Event::ChatRouteDropped(e) => (
            "chat.ended",
            None,
            format!("chat {} ended ({})", e.session_id, e.reason),
            json!({"session_id": e.session_id, "reason": e.reason}),
        ),
        _ => return None,
    };
    let mut out = Map::new();
    out.insert("id".into(), json!(format!("event-{}", env.seq)));
    out.insert("sequence".into(), json!(env.seq));
    out.insert("timestamp".into(), json!(format_ts(env.ts)));
    out.insert("kind".into(), json!(kind));
    if let Some(agent_id) = agent_id {
        out.insert("agent_id".into(), json!(agent_id));
    }
    out.insert("message".into(), json!(message));
    out.insert("payload".into(), payload);
    Some(Value::Object(out))
}

/// Whether `actor` may see an approval: hosts see all; others see what they asked for,
/// what concerns their agent, system-level approvals (which any session may resolve) and
/// the approvals mirrored from their own chats (which they may resolve, §13.2).
pub fn approval_visible(actor: &Actor, approval: &Approval) -> bool {
    actor.has_host_rights()
        || approval.system_level
        || approval.chat_caller() == Some(actor.client_id.as_str())
        || approval.requester.as_deref() == Some(actor.client_id.as_str())
        || (approval.agent_id.is_some() && approval.agent_id.as_deref() == actor.bound_agent())
}

/// Whether `actor` may see a host event: hosts see the whole feed; other sessions see the
/// daemon's events, their own session's, and runs and approvals they may read.
pub fn visible(actor: &Actor, state: &State, env: &Envelope) -> bool {
    if actor.has_host_rights() {
        return true;
    }
    let own_agent = |agent_id: &str| actor.bound_agent() == Some(agent_id);
    match &env.event {
        // Every role may list agents (§12.4), so every role may hear of them.
        Event::DaemonStarted(_)
        | Event::DaemonRecovered(_)
        | Event::AgentUpserted(_)
        | Event::AgentRemoved(_)
        | Event::AgentStatusChanged(_) => true,
        Event::SessionOpened(e) => e.client_id == actor.client_id,
        Event::SessionAuthenticated(e) => e.client_id == actor.client_id,
        Event::SessionClosed(e) => e.client_id == actor.client_id,
        Event::RunStarted(e) => {
            e.client_id.as_deref() == Some(actor.client_id.as_str()) || own_agent(&e.agent_id)
        }
        Event::RunEnded(e) => {
            own_agent(&e.agent_id)
                || state
                    .run(&e.run_id)
                    .is_some_and(|run| state.is_reader(actor, run))
        }
        Event::RunEvicted(e) => own_agent(&e.agent_id),
        Event::ApprovalRequested(ApprovalRequested { approval_id, .. })
        | Event::ApprovalRequestedInRun(ApprovalRequestedInRun {
            approval: ApprovalRequested { approval_id, .. },
            ..
        })
        | Event::ApprovalRequestedInChat(ApprovalRequestedInChat {
            approval: ApprovalRequested { approval_id, .. },
            ..
        })
        | Event::ApprovalResolved(ApprovalResolved { approval_id, .. })
        | Event::ApprovalExpired(ApprovalExpired { approval_id, .. }) => state
            .approval(approval_id)
            .is_some_and(|approval| approval_visible(actor, approval)),
        _ => false,
    }
}
