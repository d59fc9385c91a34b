//! The chat relay (PROTOCOL.md §13): the I/O half of chats. Which agents are attached to
//! this gateway and how to reach them, the live routes (chat `session_id` → its agent and
//! its caller), one forwarding task per route that delivers the agent's events to the
//! caller in order, and every way a route ends.
//!
//! What is recorded, and what each ending means, is decided by
//! `car_projections::chats`; this module only moves frames and keeps time:
//! - a route's events wait in a bounded queue ([`QUEUED_EVENTS`]) for a slow caller; a full
//!   queue ends the chat (`overflow`) instead of growing;
//! - a route ends exactly once: whoever removes it from the table ([`ChatRelay::take`])
//!   owns its ending. Dropping the queue's sender then lets the forwarder deliver what was
//!   queued, then the daemon's terminal error (if the ending has one), and stop;
//! - the forwarder's idle timer ends a chat whose agent went quiet.
//!
//! Requests to the agent (`agent.chat`, `agent.chat.approve`) go out on the agent's
//! connection and their replies come back through that session's call table
//! ([`crate::tools::CallTable`]), like tool calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use car_projections::chats::ChatCommand;
use car_projections::chats::decide::{EndChat, Ending};
use car_projections::decide::Command;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::outbound::Outbound;
use crate::tools::{CallTable, ToolReply};

/// Events a route holds for a caller that reads slower than its agent writes (§13.1:
/// 4096); one more ends the chat as `overflow`.
pub(crate) const QUEUED_EVENTS: usize = 4096;
/// How long the agent has to answer `agent.chat` and `agent.chat.approve` (§13.1: 5 s).
pub(crate) const AGENT_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping daemon waits for the forwarders to hand their callers the
/// "daemon shutting down" error: a caller that does not read by then is closed anyway.
const SHUTDOWN_DELIVERY: Duration = Duration::from_secs(2);

/// How to reach an attached agent: its session and connection.
#[derive(Debug, Clone)]
pub(crate) struct AgentLink {
    /// The agent's session.
    pub(crate) client_id: String,
    /// Its connection.
    pub(crate) out: Outbound,
    /// Where its replies to our requests arrive.
    pub(crate) calls: CallTable,
}

/// Why a request to the agent got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AgentAnswer {
    /// A JSON-RPC result.
    Result(Value),
    /// A JSON-RPC error: its message.
    Error(String),
    /// No reply in time.
    TimedOut,
    /// The agent's connection is gone.
    Gone,
}

impl AgentLink {
    /// Sends `method` as a request on the agent's connection and waits for its reply, at
    /// most [`AGENT_REPLY_TIMEOUT`].
    pub(crate) async fn request(&self, app: &App, method: &str, params: Value) -> AgentAnswer {
        let id = format!("{method}-{}", app.new_id());
        let reply = self.calls.expect(&id);
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        if !self.out.send(&request).await {
            self.calls.forget(&id);
            return AgentAnswer::Gone;
        }
        match tokio::time::timeout(AGENT_REPLY_TIMEOUT, reply).await {
            Ok(Ok(ToolReply::Result(result))) => AgentAnswer::Result(result),
            Ok(Ok(ToolReply::Error(error))) => AgentAnswer::Error(
                error
                    .get("message")
                    .and_then(Value::as_str)
                    .map_or_else(|| error.to_string(), str::to_owned),
            ),
            Ok(Ok(ToolReply::Gone(_))) | Ok(Err(_)) => AgentAnswer::Gone,
            Err(_) => {
                self.calls.forget(&id);
                AgentAnswer::TimedOut
            }
        }
    }
}

/// Where a route delivers: the caller's connection.
#[derive(Debug, Clone)]
pub(crate) enum CallerSink {
    /// A WebSocket session: `agents.chat.event` notifications.
    Socket(Outbound),
}

impl CallerSink {
    async fn deliver(&self, params: Value) -> bool {
        match self {
            CallerSink::Socket(out) => out.notify("agents.chat.event", params).await,
        }
    }
}

/// A live route.
#[derive(Debug)]
pub(crate) struct Route {
    /// The chat's `session_id`.
    pub(crate) session_id: String,
    /// The agent.
    pub(crate) agent_id: String,
    /// How to reach it.
    pub(crate) agent: AgentLink,
    /// The caller's session, if it is one.
    pub(crate) caller_client_id: Option<String>,
    /// The queue's sending half; taken (closing the queue) when the route ends.
    queue: Mutex<Option<mpsc::Sender<Value>>>,
    /// Set by the ending: the terminal error the daemon sends after the queued events.
    last: Mutex<Option<Value>>,
}

/// A route's receiving half, for its forwarder.
#[derive(Debug)]
pub(crate) struct RouteEvents {
    rx: mpsc::Receiver<Value>,
    sink: CallerSink,
}

/// Every attached agent and live route of this gateway.
#[derive(Debug, Default)]
pub(crate) struct ChatRelay {
    agents: Mutex<HashMap<String, AgentLink>>,
    routes: Mutex<HashMap<String, Arc<Route>>>,
    forwarders: TaskTracker,
}

/// The params of an `agents.chat.event` the daemon itself sends: a terminal error.
fn terminal_error(session_id: &str, agent_id: &str, error: &str) -> Value {
    json!({"session_id": session_id, "kind": "error", "error": error, "agent_id": agent_id})
}

impl ChatRelay {
    /// An agent session authenticated on this gateway.
    pub(crate) fn attach(&self, agent_id: &str, link: AgentLink) {
        self.agents.lock().insert(agent_id.to_owned(), link);
    }

    /// The attached agent, if its session is on this gateway.
    pub(crate) fn agent(&self, agent_id: &str) -> Option<AgentLink> {
        self.agents.lock().get(agent_id).cloned()
    }

    /// Opens a route (its chat just recorded as started); its events queue until the
    /// forwarder runs.
    pub(crate) fn open(
        &self,
        session_id: &str,
        agent_id: &str,
        agent: AgentLink,
        caller_client_id: Option<String>,
        sink: CallerSink,
    ) -> (Arc<Route>, RouteEvents) {
        let (tx, rx) = mpsc::channel(QUEUED_EVENTS);
        let route = Arc::new(Route {
            session_id: session_id.to_owned(),
            agent_id: agent_id.to_owned(),
            agent,
            caller_client_id,
            queue: Mutex::new(Some(tx)),
            last: Mutex::new(None),
        });
        self.routes
            .lock()
            .insert(session_id.to_owned(), route.clone());
        (route, RouteEvents { rx, sink })
    }

    /// The live route of `session_id`.
    pub(crate) fn route(&self, session_id: &str) -> Option<Arc<Route>> {
        self.routes.lock().get(session_id).cloned()
    }

    /// Takes `session_id`'s route out of the table for `ending`, if it is still live: its
    /// queue closes (the forwarder delivers what is queued, then `ending`'s terminal error
    /// for the caller, then stops). Whoever gets the route must [`ChatRelay::finish`] it.
    pub(crate) fn take(&self, session_id: &str, ending: &Ending) -> Option<Arc<Route>> {
        let route = self.routes.lock().remove(session_id)?;
        if let Some(error) = ending.caller_error(&route.agent_id) {
            *route.last.lock() = Some(terminal_error(session_id, &route.agent_id, &error));
        }
        route.queue.lock().take();
        Some(route)
    }

    /// The effects of a route's ending: `agent.chat.cancel` when the agent may still be at
    /// work, and the ending recorded.
    pub(crate) async fn finish(app: &Arc<App>, route: &Route, ending: Ending) {
        if ending.cancels_agent() {
            route
                .agent
                .out
                .notify("agent.chat.cancel", json!({"session_id": route.session_id}))
                .await;
        }
        let reason = ending.reason();
        let command = Command::Chat(ChatCommand::End(EndChat {
            session_id: route.session_id.clone(),
            ending,
        }));
        if let Err(err) = app.execute(command, |_, _| ()).await.map(|r| r.map(|_| ())) {
            tracing::warn!(session_id = %route.session_id, reason, %err, "could not record a chat's end");
        }
    }

    /// Ends `session_id`'s route for `ending` if it is live; true if this call ended it.
    pub(crate) async fn end(app: &Arc<App>, session_id: &str, ending: Ending) -> bool {
        match app.chats.take(session_id, &ending) {
            Some(route) => {
                Self::finish(app, &route, ending).await;
                true
            }
            None => false,
        }
    }

    /// Queues one of the agent's events for the caller; a full queue ends the chat
    /// (`overflow`). `terminal` ends the route after the event (it is delivered first).
    pub(crate) fn relay(
        app: &Arc<App>,
        route: &Arc<Route>,
        event: Value,
        terminal: Option<Ending>,
    ) {
        let queued = match route.queue.lock().as_ref() {
            Some(tx) => tx
                .try_send(event)
                .map_err(|err| matches!(err, mpsc::error::TrySendError::Full(_))),
            None => return, // ending already: later events are dropped
        };
        let ending = match queued {
            Ok(()) => terminal,
            Err(true) => Some(Ending::Overflow),
            Err(false) => None,
        };
        if let Some(ending) = ending {
            if let Some(route) = app.chats.take(&route.session_id, &ending) {
                let app = app.clone();
                tokio::spawn(async move { Self::finish(&app, &route, ending).await });
            }
        }
    }

    /// Delivers a route's events to its caller, in order, until the route ends (then its
    /// terminal error, if any) or the caller is gone; ends the chat after
    /// `--chat-idle-timeout` without an event.
    pub(crate) fn forward(app: &Arc<App>, route: Arc<Route>, mut events: RouteEvents) {
        let app = app.clone();
        let idle = app.config.chat_idle_timeout;
        app.chats.forwarders.clone().spawn(async move {
            loop {
                match tokio::time::timeout(idle, events.rx.recv()).await {
                    Ok(Some(event)) => {
                        if !events.sink.deliver(event).await {
                            return; // the caller is gone: its disconnect ends the chat
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        let ending = Ending::IdleTimeout {
                            secs: idle.as_secs_f64().round() as u64,
                        };
                        Self::end(&app, &route.session_id, ending).await;
                    }
                }
            }
            let last = route.last.lock().take();
            if let Some(last) = last {
                events.sink.deliver(last).await;
            }
        });
    }

    /// A session ended: its agent link goes, and every route it was the agent or the
    /// caller of ends (§13.3), before the session's own end is recorded.
    pub(crate) async fn session_ended(app: &Arc<App>, client_id: &str) {
        app.chats
            .agents
            .lock()
            .retain(|_, link| link.client_id != client_id);
        let mine: Vec<(String, Ending)> = app
            .chats
            .routes
            .lock()
            .values()
            .filter_map(|route| {
                if route.agent.client_id == client_id {
                    Some((route.session_id.clone(), Ending::AgentDisconnect))
                } else if route.caller_client_id.as_deref() == Some(client_id) {
                    Some((route.session_id.clone(), Ending::CallerDisconnect))
                } else {
                    None
                }
            })
            .collect();
        for (session_id, ending) in mine {
            Self::end(app, &session_id, ending).await;
        }
    }

    /// The daemon is stopping: every caller gets "daemon shutting down" (bounded wait for
    /// the forwarders), and every route's end is recorded.
    pub(crate) async fn shutdown(app: &Arc<App>) {
        let routes: Vec<Arc<Route>> = {
            let ids: Vec<String> = app.chats.routes.lock().keys().cloned().collect();
            ids.iter()
                .filter_map(|id| app.chats.take(id, &Ending::DaemonShutdown))
                .collect()
        };
        app.chats.forwarders.close();
        if tokio::time::timeout(SHUTDOWN_DELIVERY, app.chats.forwarders.wait())
            .await
            .is_err()
        {
            tracing::warn!("some chat callers did not take their last event in time");
        }
        for route in routes {
            Self::finish(app, &route, Ending::DaemonShutdown).await;
        }
    }

    /// After a mirrored approval was resolved through `host.resolve_approval` (§13.2): the
    /// agent is told, as `agent.chat.approve` with the resolution as its decision.
    pub(crate) fn forward_resolution(app: &Arc<App>, approval_id: &str) {
        let (session_id, resolution) = {
            let state = app.writer.state();
            let Some(approval) = state.approval(approval_id) else {
                return;
            };
            let (Some((session_id, _)), Some(resolution)) = (&approval.chat, &approval.resolution)
            else {
                return;
            };
            (session_id.clone(), resolution.clone())
        };
        let Some(route) = app.chats.route(&session_id) else {
            return;
        };
        let app = app.clone();
        let approval_id = approval_id.to_owned();
        tokio::spawn(async move {
            let params = json!({"session_id": session_id, "approval_id": approval_id, "decision": resolution});
            let answer = route
                .agent
                .request(&app, "agent.chat.approve", params)
                .await;
            tracing::debug!(%session_id, %approval_id, ?answer, "chat approval forwarded to the agent");
        });
    }
}

/// Whether an answer to `agent.chat.approve` says the approval was resolved: a `false`
/// or `{resolved: false}` says no, an error or silence too; any other result yes.
pub(crate) fn resolved_by(answer: &AgentAnswer) -> bool {
    match answer {
        AgentAnswer::Result(Value::Bool(b)) => *b,
        AgentAnswer::Result(result) => result
            .get("resolved")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        _ => false,
    }
}

/// The caller-facing params of an agent's `agent.chat.event`: the same, plus `agent_id`
/// set by the daemon (§13.1).
pub(crate) fn relayed(mut params: Value, agent_id: &str) -> Value {
    if let Some(obj) = params.as_object_mut() {
        obj.insert("agent_id".into(), Value::from(agent_id));
    }
    params
}
