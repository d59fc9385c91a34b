//! The chats' decisions (PROTOCOL.md §13): starting a chat, ending it (each way a chat can
//! end is an [`Ending`], and every ending writes the same shape: the cancellation if any,
//! the terminal event the caller got if any, the chat's pending approvals expired, the
//! route dropped), mirroring an agent's approval into §5, and taking an agent's (or the
//! caller's) resolution of it.
//!
//! The relay itself (sockets, queues, timers) is the gateway's; it asks these functions
//! what to record, and an [`Ending`] tells it what to send: the caller's terminal error
//! ([`Ending::caller_error`]) and whether the agent gets `agent.chat.cancel`
//! ([`Ending::cancels_agent`]).

use std::collections::BTreeSet;

use car_events::JsonText;
use car_events::event::{
    ApprovalExpired, ApprovalRequested, ApprovalRequestedInChat, ApprovalResolved,
    ChatCancelRequested, ChatRouteDropped, ChatStarted, ChatTerminal, Event, Role,
};
use serde_json::Value;

use super::{ChatRequest, cut};
use crate::access::Actor;
use crate::state::{ApprovalStatus, State};

/// What `chat.started` keeps of a prompt (§13.1).
pub const PROMPT_LOGGED_BYTES: usize = 16 << 10;
/// What `chat.terminal` keeps of a `finish_reason` or an error (§13.1).
pub const TERMINAL_LOGGED_BYTES: usize = 1 << 10;
/// The options of a mirrored approval (§13.2).
pub const MIRROR_OPTIONS: [&str; 2] = ["approve", "deny"];
/// The expiry reason of a chat's approvals still pending when it ends.
pub const CHAT_ENDED: &str = "chat_ended";

/// Why a chat command was refused; the messages are the contract's (§13.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatRefusal {
    /// `-32602`: a breach of `agents.chat`'s params.
    #[error("{0}")]
    Params(String),
    /// `-32602`: the `session_id` names a live chat.
    #[error("agents.chat: session_id '{0}' is already in use")]
    InUse(String),
    /// `-32603`: no session is bound to the agent id.
    #[error("agent '{0}' is not attached")]
    NotAttached(String),
    /// `-32603`: an agent session asked.
    #[error("permission denied: agents.chat requires the host or client role")]
    AgentCaller,
}

impl ChatRefusal {
    /// Whether the refusal is `-32602` (else `-32603`).
    pub fn is_invalid_params(&self) -> bool {
        matches!(self, ChatRefusal::Params(_) | ChatRefusal::InUse(_))
    }
}

/// Who starts a chat.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// A WebSocket session (`agents.chat`).
    Session(Actor),
    /// An A2A task (§15): no session of ours.
    A2a,
}

/// `agents.chat`, its params checked and its ids chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct StartChat {
    /// Who asks.
    pub caller: Caller,
    /// The request.
    pub request: ChatRequest,
    /// The chat's `session_id` (the caller's, or one the daemon minted).
    pub session_id: String,
    /// Its `conversation_id` (the caller's, or `session:<session_id>`).
    pub conversation_id: String,
    /// The session the relay found attached for the agent on this gateway.
    pub agent_client_id: String,
}

/// How a chat ended: each way §13 names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The agent sent a terminal event (`done`, `error`, `auth_required`); the caller got it.
    Terminal {
        /// Its kind.
        kind: String,
        /// `done`'s `finish_reason`.
        finish_reason: Option<String>,
        /// `error`'s error, or `auth_required`'s message.
        error: Option<String>,
    },
    /// `agents.chat.cancel` (or an A2A `tasks/cancel`) by `by`.
    Cancelled {
        /// `host`, `client:<id>` or `a2a`.
        by: String,
    },
    /// The agent refused the chat or did not acknowledge it.
    AckFailed {
        /// No reply in time (the agent is told to cancel).
        timed_out: bool,
    },
    /// The agent's session ended.
    AgentDisconnect,
    /// The caller's session ended.
    CallerDisconnect,
    /// No event from the agent for this many seconds.
    IdleTimeout {
        /// `--chat-idle-timeout`, in seconds.
        secs: u64,
    },
    /// Too many events waited for a slow caller.
    Overflow,
    /// The daemon is stopping.
    DaemonShutdown,
    /// The daemon found the chat routed at start-up.
    DaemonRestart,
}

impl Ending {
    /// The `chat.route_dropped` reason (§13.3).
    pub fn reason(&self) -> &'static str {
        match self {
            Ending::Terminal { .. } => "terminal",
            Ending::Cancelled { .. } => "cancelled",
            Ending::AckFailed { .. } => "ack_failed",
            Ending::AgentDisconnect => "agent_disconnect",
            Ending::CallerDisconnect => "caller_disconnect",
            Ending::IdleTimeout { .. } => "idle_timeout",
            Ending::Overflow => "overflow",
            Ending::DaemonShutdown => "daemon_shutdown",
            Ending::DaemonRestart => "daemon_restart",
        }
    }

    /// The terminal `error` the daemon itself sends the caller, if it sends one (the
    /// contract's words, §13.1, §13.3).
    pub fn caller_error(&self, agent_id: &str) -> Option<String> {
        match self {
            Ending::Cancelled { .. } => Some("chat cancelled".into()),
            Ending::AgentDisconnect => Some(format!("agent '{agent_id}' disconnected")),
            Ending::IdleTimeout { secs } => Some(format!(
                "chat timed out: no event from agent '{agent_id}' for {secs}s"
            )),
            Ending::Overflow => Some("chat event queue overflow".into()),
            Ending::DaemonShutdown => Some("daemon shutting down".into()),
            Ending::Terminal { .. }
            | Ending::AckFailed { .. }
            | Ending::CallerDisconnect
            | Ending::DaemonRestart => None,
        }
    }

    /// Whether the agent is sent `agent.chat.cancel`: it may still be working, and nobody
    /// is listening any more.
    pub fn cancels_agent(&self) -> bool {
        matches!(
            self,
            Ending::Cancelled { .. }
                | Ending::AckFailed { timed_out: true }
                | Ending::CallerDisconnect
                | Ending::IdleTimeout { .. }
                | Ending::Overflow
        )
    }
}

/// A chat ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndChat {
    /// The chat.
    pub session_id: String,
    /// How.
    pub ending: Ending,
}

/// An agent's `approval_pending` event, to mirror (§13.2).
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorApproval {
    /// The chat.
    pub session_id: String,
    /// The session the event came from (only the chat's agent session counts).
    pub from_client_id: String,
    /// The event's params (`approval_id`, `tool`|`action`, `params`|`details`, `deadline?`).
    pub event: Value,
}

/// A resolution of a mirrored approval that does not come through `host.resolve_approval`:
/// the agent's `approval_resolved` event, or `agents.chat.approve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveMirrored {
    /// The chat.
    pub session_id: String,
    /// The approval.
    pub approval_id: String,
    /// The resolution ([`decision_resolution`]); `timeout` expires the row.
    pub resolution: String,
    /// The session it came from.
    pub client_id: Option<String>,
}

/// Every chat write.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatCommand {
    /// `agents.chat`.
    Start(StartChat),
    /// A chat ends.
    End(EndChat),
    /// `approval_pending`.
    MirrorApproval(MirrorApproval),
    /// `approval_resolved`, `agents.chat.approve`.
    ResolveMirrored(ResolveMirrored),
}

/// Decides a chat command.
pub fn decide(state: &State, command: &ChatCommand) -> Result<Vec<Event>, ChatRefusal> {
    match command {
        ChatCommand::Start(c) => start(state, c),
        ChatCommand::End(c) => Ok(end(state, c)),
        ChatCommand::MirrorApproval(c) => Ok(mirror(state, c)),
        ChatCommand::ResolveMirrored(c) => Ok(resolve_mirrored(state, c)),
    }
}

fn start(state: &State, c: &StartChat) -> Result<Vec<Event>, ChatRefusal> {
    let (caller_client_id, caller_role) = match &c.caller {
        Caller::Session(actor) => {
            if actor.role == Role::Agent {
                return Err(ChatRefusal::AgentCaller);
            }
            (
                Some(actor.client_id.clone()),
                actor.role.as_str().to_owned(),
            )
        }
        Caller::A2a => (None, "a2a".to_owned()),
    };
    let agent_id = &c.request.agent_id;
    if state.agent_session(agent_id) != Some(c.agent_client_id.as_str()) {
        return Err(ChatRefusal::NotAttached(agent_id.clone()));
    }
    if state.chats().get(&c.session_id).is_some() {
        return Err(ChatRefusal::InUse(c.session_id.clone()));
    }
    Ok(vec![Event::ChatStarted(ChatStarted {
        session_id: c.session_id.clone(),
        agent_id: agent_id.clone(),
        agent_client_id: c.agent_client_id.clone(),
        caller_client_id,
        caller_role,
        conversation_id: c.conversation_id.clone(),
        prompt: cut(&c.request.prompt, PROMPT_LOGGED_BYTES),
        prompt_bytes: c.request.prompt.len() as u64,
        attachments: c.request.attachments.len() as u32,
        stream: c.request.stream,
        model: c.request.model.clone(),
    })])
}

/// The events of `session_id`'s ending (none when its route is already gone: the first
/// ending wins). `expired` holds approvals another part of the same batch already expires.
pub(crate) fn ending_events(
    state: &State,
    session_id: &str,
    ending: &Ending,
    expired: &BTreeSet<String>,
) -> Vec<Event> {
    let Some(chat) = state.chats().get(session_id) else {
        return Vec::new();
    };
    let mut events = Vec::new();
    if let Ending::Cancelled { by } = ending {
        events.push(Event::ChatCancelRequested(ChatCancelRequested {
            session_id: session_id.to_owned(),
            by: by.clone(),
        }));
    }
    let terminal = match ending {
        Ending::Terminal {
            kind,
            finish_reason,
            error,
        } => Some(ChatTerminal {
            session_id: session_id.to_owned(),
            kind: kind.clone(),
            finish_reason: finish_reason
                .as_deref()
                .map(|r| cut(r, TERMINAL_LOGGED_BYTES)),
            error: error.as_deref().map(|e| cut(e, TERMINAL_LOGGED_BYTES)),
        }),
        other => other
            .caller_error(&chat.agent_id)
            .map(|error| ChatTerminal {
                session_id: session_id.to_owned(),
                kind: "error".into(),
                finish_reason: None,
                error: Some(error),
            }),
    };
    events.extend(terminal.map(Event::ChatTerminal));
    for approval_id in &chat.approvals {
        let pending = state
            .approval(approval_id)
            .is_some_and(|a| a.status == ApprovalStatus::Pending);
        if pending && !expired.contains(approval_id) {
            events.push(Event::ApprovalExpired(ApprovalExpired {
                approval_id: approval_id.clone(),
                reason: CHAT_ENDED.into(),
            }));
        }
    }
    events.push(Event::ChatRouteDropped(ChatRouteDropped {
        session_id: session_id.to_owned(),
        reason: ending.reason().into(),
    }));
    events
}

fn end(state: &State, c: &EndChat) -> Vec<Event> {
    ending_events(state, &c.session_id, &c.ending, &BTreeSet::new())
}

fn text(event: &Value, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| event.get(*k).and_then(Value::as_str))
        .map(str::to_owned)
}

/// How much of an approval's params `details.params_preview` keeps (as §5.2's gate does).
const PREVIEW_BYTES: usize = 512;

fn mirror(state: &State, c: &MirrorApproval) -> Vec<Event> {
    let Some(chat) = state.chats().get(&c.session_id) else {
        return Vec::new();
    };
    let Some(approval_id) = text(&c.event, &["approval_id"]).filter(|id| !id.is_empty()) else {
        return Vec::new();
    };
    if chat.agent_client_id != c.from_client_id || state.approval(&approval_id).is_some() {
        return Vec::new();
    }
    let what = text(&c.event, &["tool", "action"]).unwrap_or_else(|| "approval".into());
    let params = c
        .event
        .get("params")
        .or_else(|| c.event.get("details"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut details = serde_json::json!({
        "source": "chat",
        "session_id": c.session_id,
        "params_preview": cut(&params.to_string(), PREVIEW_BYTES),
    });
    if let Some(deadline) = c.event.get("deadline").filter(|d| !d.is_null()) {
        details["deadline"] = deadline.clone();
    }
    vec![Event::ApprovalRequestedInChat(ApprovalRequestedInChat {
        approval: ApprovalRequested {
            approval_id,
            client_id: Some(chat.agent_client_id.clone()),
            agent_id: Some(chat.agent_id.clone()),
            action: format!("chat:{what}"),
            details: JsonText::from_value(&details),
            options: MIRROR_OPTIONS.iter().map(|o| (*o).to_owned()).collect(),
            system_level: false,
        },
        session_id: c.session_id.clone(),
    })]
}

/// A chat approval's `decision` (or an agent's `resolution`) as a row's resolution:
/// `true` and `"approve"`-like words approve, `"timeout"` stays `timeout` (the row
/// expires), anything else denies. The agent gets the decision as given; only the row,
/// whose options are `approve`/`deny`, needs one of the two.
pub fn decision_resolution(decision: &Value) -> String {
    let approves = match decision {
        Value::Bool(b) => *b,
        Value::String(s) => {
            let s = s.to_ascii_lowercase();
            if s == "timeout" {
                return s;
            }
            ["approve", "approved", "allow", "yes"]
                .iter()
                .any(|w| s == *w || s.starts_with(&format!("{w}_")))
        }
        _ => false,
    };
    if approves { "approve" } else { "deny" }.to_owned()
}

fn resolve_mirrored(state: &State, c: &ResolveMirrored) -> Vec<Event> {
    let linked = state
        .chats()
        .of_approval(&c.approval_id)
        .is_some_and(|chat| chat.session_id == c.session_id);
    let pending = state
        .approval(&c.approval_id)
        .is_some_and(|a| a.status == ApprovalStatus::Pending);
    if !linked || !pending {
        return Vec::new();
    }
    if c.resolution == "timeout" {
        return vec![Event::ApprovalExpired(ApprovalExpired {
            approval_id: c.approval_id.clone(),
            reason: "timeout".into(),
        })];
    }
    let resolution = if MIRROR_OPTIONS.contains(&c.resolution.as_str()) {
        c.resolution.clone()
    } else {
        decision_resolution(&Value::String(c.resolution.clone()))
    };
    vec![Event::ApprovalResolved(ApprovalResolved {
        approval_id: c.approval_id.clone(),
        resolution,
        client_id: c.client_id.clone(),
    })]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decisions_map_to_approve_or_deny() {
        assert_eq!(decision_resolution(&json!(true)), "approve");
        assert_eq!(decision_resolution(&json!(false)), "deny");
        assert_eq!(decision_resolution(&json!("approve")), "approve");
        assert_eq!(decision_resolution(&json!("approve_always")), "approve");
        assert_eq!(decision_resolution(&json!("Allow")), "approve");
        assert_eq!(decision_resolution(&json!("approvedish")), "deny");
        assert_eq!(decision_resolution(&json!("deny")), "deny");
        assert_eq!(decision_resolution(&json!("timeout")), "timeout");
        assert_eq!(decision_resolution(&json!(1)), "deny");
    }

    #[test]
    fn endings_say_what_the_caller_and_the_agent_get() {
        assert_eq!(
            Ending::IdleTimeout { secs: 600 }.caller_error("a"),
            Some("chat timed out: no event from agent 'a' for 600s".into())
        );
        assert_eq!(
            Ending::AgentDisconnect.caller_error("a"),
            Some("agent 'a' disconnected".into())
        );
        assert!(Ending::CallerDisconnect.cancels_agent());
        assert!(!Ending::AckFailed { timed_out: false }.cancels_agent());
        assert!(Ending::AckFailed { timed_out: true }.cancels_agent());
        assert!(!Ending::AgentDisconnect.cancels_agent());
        assert_eq!(Ending::DaemonRestart.caller_error("a"), None);
    }
}
