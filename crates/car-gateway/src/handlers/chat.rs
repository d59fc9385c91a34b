//! `agents.chat`, `agents.chat.cancel`, `agents.chat.approve` and the agent's
//! `agent.chat.event` notifications (PROTOCOL.md §13): a host or client chats with an
//! attached agent through the daemon.
//!
//! The handlers check and record (through `car_projections::chats`); the routes, queues
//! and requests to the agent are [`crate::chat_relay`]'s.

use std::sync::Arc;

use car_events::event::Role;
use car_projections::chats::decide::{Caller, MirrorApproval, ResolveMirrored, StartChat};
use car_projections::chats::{ChatCommand, ChatRequest, Ending, decide::decision_resolution};
use car_projections::decide::Command;
use serde_json::{Value, json};

use crate::app::App;
use crate::chat_relay::{AgentAnswer, CallerSink, ChatRelay, relayed, resolved_by};
use crate::rpc::RpcError;
use crate::session::{Responder, Session};

/// The agent's terminal event kinds (§13.1): after the first, the route is dropped.
const TERMINAL_KINDS: [&str; 3] = ["done", "error", "auth_required"];

fn string_param(params: &Value, name: &str, method: &str) -> Result<String, RpcError> {
    match params.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None | Some(Value::Null) => Err(RpcError::InvalidParams(format!(
            "{method}: {name}: is required"
        ))),
        Some(_) => Err(RpcError::InvalidParams(format!(
            "{method}: {name}: must be a non-empty string"
        ))),
    }
}

/// Whether the session may act on the chat as its caller or a host (§13.1, §13.2).
fn caller_or_host(session: &Session, method: &str, caller: Option<&str>) -> Result<(), RpcError> {
    let actor = session.actor()?;
    if actor.has_host_rights() || caller == Some(actor.client_id.as_str()) {
        Ok(())
    } else {
        Err(RpcError::Internal(format!(
            "permission denied: {method} requires the host role or the chat's caller"
        )))
    }
}

/// `agents.chat`: records the chat, opens its route, asks the agent (`agent.chat`) and
/// answers once it acknowledged; the route's events then flow to this session.
pub(crate) async fn chat(session: &mut Session, params: Value, responder: Responder) {
    let started = start(session, params).await;
    let app = session.app.clone();
    match started {
        Err(err) => responder.send(Err(err)).await,
        Ok(started) => {
            tokio::spawn(async move { acknowledge(app, started, responder).await });
        }
    }
}

struct Started {
    route: Arc<crate::chat_relay::Route>,
    events: crate::chat_relay::RouteEvents,
    request: Value,
}

async fn start(session: &mut Session, params: Value) -> Result<Started, RpcError> {
    let actor = session.actor()?.clone();
    if actor.role == Role::Agent && !actor.unrestricted {
        return Err(RpcError::Internal(
            "permission denied: agents.chat requires the host or client role".into(),
        ));
    }
    let request = ChatRequest::parse(&params).map_err(RpcError::InvalidParams)?;
    let app = session.app.clone();
    let Some(agent) = app.chats.agent(&request.agent_id) else {
        return Err(RpcError::Internal(format!(
            "agent '{}' is not attached",
            request.agent_id
        )));
    };
    let session_id = request
        .session_id
        .clone()
        .unwrap_or_else(|| format!("chat-{}", app.new_id()));
    let conversation_id = request
        .conversation_id
        .clone()
        .unwrap_or_else(|| format!("session:{session_id}"));
    let command = Command::Chat(ChatCommand::Start(StartChat {
        caller: Caller::Session(actor.clone()),
        request: request.clone(),
        session_id: session_id.clone(),
        conversation_id: conversation_id.clone(),
        agent_client_id: agent.client_id.clone(),
    }));
    session.queue(command, |_, _| ()).await?.committed().await?;
    let (route, events) = app.chats.open(
        &session_id,
        &request.agent_id,
        agent,
        Some(actor.client_id.clone()),
        CallerSink::Socket(session.out.clone()),
    );
    let mut agent_params = json!({
        "session_id": session_id,
        "prompt": request.prompt,
        "stream": request.stream,
        "conversation_id": conversation_id,
        "context": {
            "host_client_id": actor.client_id,
            "voice_input": request.voice_input,
            "caller_role": actor.role.as_str(),
        },
    });
    if let Some(model) = &request.model {
        agent_params["model"] = Value::from(model.clone());
    }
    if !request.attachments.is_empty() {
        agent_params["attachments"] = Value::Array(request.attachments.clone());
    }
    Ok(Started {
        route,
        events,
        request: agent_params,
    })
}

async fn acknowledge(app: Arc<App>, started: Started, responder: Responder) {
    let Started {
        route,
        events,
        request,
    } = started;
    let answer = route.agent.request(&app, "agent.chat", request).await;
    let agent_id = route.agent_id.clone();
    let failure = match &answer {
        AgentAnswer::Result(result) if result.get("accepted") == Some(&Value::Bool(true)) => None,
        AgentAnswer::Result(result) => {
            let message = ["message", "error", "reason"]
                .iter()
                .find_map(|k| result.get(*k).and_then(Value::as_str))
                .unwrap_or("accepted is not true");
            Some((
                format!("agent '{agent_id}' refused the chat: {message}"),
                false,
            ))
        }
        AgentAnswer::Error(message) => Some((
            format!("agent '{agent_id}' refused the chat: {message}"),
            false,
        )),
        AgentAnswer::TimedOut => Some((
            format!("agent '{agent_id}' did not acknowledge the chat within 5s"),
            true,
        )),
        AgentAnswer::Gone => Some((format!("agent '{agent_id}' disconnected"), false)),
    };
    match failure {
        None => {
            let session_id = route.session_id.clone();
            responder
                .send(Ok(json!({"accepted": true, "session_id": session_id})))
                .await;
            ChatRelay::forward(&app, route, events);
        }
        Some((message, timed_out)) => {
            // The ack failed: the route goes (unless something ended it meanwhile, e.g.
            // the agent's disconnect), and the caller gets the error alone.
            drop(events);
            ChatRelay::end(&app, &route.session_id, Ending::AckFailed { timed_out }).await;
            responder.send(Err(RpcError::Internal(message))).await;
        }
    }
}

/// `agents.chat.cancel` → `{cancelled, session_id}`.
pub(crate) async fn cancel(session: &mut Session, params: Value, responder: Responder) {
    let result = async {
        let session_id = string_param(&params, "session_id", "agents.chat.cancel")?;
        let app = session.app.clone();
        let Some(route) = app.chats.route(&session_id) else {
            return Ok(json!({"cancelled": false, "session_id": session_id}));
        };
        caller_or_host(
            session,
            "agents.chat.cancel",
            route.caller_client_id.as_deref(),
        )?;
        let actor = session.actor()?;
        let by = if actor.has_host_rights()
            && route.caller_client_id.as_deref() != Some(&actor.client_id)
        {
            "host".to_owned()
        } else {
            format!("{}:{}", actor.role.as_str(), actor.client_id)
        };
        let cancelled = ChatRelay::end(&app, &session_id, Ending::Cancelled { by }).await;
        Ok(json!({"cancelled": cancelled, "session_id": session_id}))
    }
    .await;
    responder.send(result).await;
}

/// `agents.chat.approve` → `{resolved, session_id}`: asks the agent (`agent.chat.approve`)
/// and relays its answer; a resolved mirrored approval is resolved in §5 too.
pub(crate) async fn approve(session: &mut Session, params: Value, responder: Responder) {
    let prepared = async {
        let session_id = string_param(&params, "session_id", "agents.chat.approve")?;
        let approval_id = string_param(&params, "approval_id", "agents.chat.approve")?;
        let decision = match params.get("decision") {
            Some(d @ (Value::Bool(_) | Value::String(_))) => d.clone(),
            _ => {
                return Err(RpcError::InvalidParams(
                    "agents.chat.approve: decision: must be a boolean or a string".into(),
                ));
            }
        };
        let actor = session.actor()?;
        if actor.role == Role::Agent && !actor.unrestricted {
            return Err(RpcError::Internal(
                "permission denied: agents.chat.approve requires the host role or the chat's caller".into(),
            ));
        }
        let route = session.app.chats.route(&session_id);
        if let Some(route) = &route {
            caller_or_host(
                session,
                "agents.chat.approve",
                route.caller_client_id.as_deref(),
            )?;
        }
        Ok((session_id, approval_id, decision, route, actor.client_id.clone()))
    }
    .await;
    let (session_id, approval_id, decision, route, client_id) = match prepared {
        Ok(p) => p,
        Err(err) => return responder.send(Err(err)).await,
    };
    let app = session.app.clone();
    session.reply_later(responder, async move {
        let Some(route) = route else {
            return Ok(json!({"resolved": false, "session_id": session_id}));
        };
        let params =
            json!({"session_id": session_id, "approval_id": approval_id, "decision": decision});
        let answer = route
            .agent
            .request(&app, "agent.chat.approve", params)
            .await;
        let resolved = resolved_by(&answer);
        if resolved {
            let command = Command::Chat(ChatCommand::ResolveMirrored(ResolveMirrored {
                session_id: session_id.clone(),
                approval_id,
                resolution: decision_resolution(&decision),
                client_id: Some(client_id),
            }));
            app.execute(command, |_, _| ()).await??;
        }
        Ok(json!({"resolved": resolved, "session_id": session_id}))
    });
}

/// The agent's `agent.chat.event` notification: relayed, in order, to the chat's caller
/// as `agents.chat.event`; dropped unless it comes from the chat's agent session and the
/// chat is routed. `approval_pending` / `approval_resolved` are mirrored into §5 first.
pub(crate) async fn event(session: &mut Session, params: Value, responder: Responder) {
    // A notification gets no answer; one sent as a request gets an empty result.
    responder.send(Ok(json!({}))).await;
    let Some(session_id) = params.get("session_id").and_then(Value::as_str) else {
        return;
    };
    let kind = params
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let app = session.app.clone();
    let Some(route) = app.chats.route(session_id) else {
        tracing::debug!(%session_id, "chat event for no live route dropped");
        return;
    };
    if route.agent.client_id != session.client_id {
        tracing::debug!(%session_id, "chat event from another connection dropped");
        return;
    }
    match kind.as_str() {
        "approval_pending" => {
            let command = Command::Chat(ChatCommand::MirrorApproval(MirrorApproval {
                session_id: session_id.to_owned(),
                from_client_id: session.client_id.clone(),
                event: params.clone(),
            }));
            // Recorded before the caller hears of it, so the caller can resolve it at once.
            if let Err(err) = app.execute(command, |_, _| ()).await {
                tracing::warn!(%session_id, %err, "could not mirror a chat approval");
            }
        }
        "approval_resolved" => {
            let approval_id = params.get("approval_id").and_then(Value::as_str);
            let resolution = params.get("resolution").or_else(|| params.get("decision"));
            if let (Some(approval_id), Some(resolution)) = (approval_id, resolution) {
                let command = Command::Chat(ChatCommand::ResolveMirrored(ResolveMirrored {
                    session_id: session_id.to_owned(),
                    approval_id: approval_id.to_owned(),
                    resolution: decision_resolution(resolution),
                    client_id: Some(session.client_id.clone()),
                }));
                if let Err(err) = app.execute(command, |_, _| ()).await {
                    tracing::warn!(%session_id, %err, "could not record a chat approval's resolution");
                }
            }
        }
        _ => {}
    }
    let terminal = TERMINAL_KINDS.contains(&kind.as_str()).then(|| {
        let text = |k: &str| params.get(k).and_then(Value::as_str).map(str::to_owned);
        Ending::Terminal {
            finish_reason: text("finish_reason"),
            error: text("error").or_else(|| text("message")),
            kind: kind.clone(),
        }
    });
    let agent_id = route.agent_id.clone();
    ChatRelay::relay(&app, &route, relayed(params, &agent_id), terminal);
}
