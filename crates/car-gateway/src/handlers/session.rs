//! `session.auth` and `server.handshake` (PROTOCOL.md §2).

use car_events::event::Role;
use car_projections::Actor;
use car_projections::decide::{Authenticate, Command};
use car_projections::memory::Scope;
use car_projections::memory::scope::ScopeError;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::protocol;
use crate::rpc::{self, RpcError};
use crate::session::{Responder, Session};

/// Compared against when the agent id is not registered, so that an unregistered id takes
/// as long to refuse as a registered one: the SHA-256 of nothing any token can be.
const UNREGISTERED_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Deserialize)]
struct AuthParams {
    token: Option<String>,
    agent_id: Option<String>,
    host_token: Option<String>,
    /// The memory graph of this session (PROTOCOL.md §11.1), on every form.
    memory_namespace: Option<String>,
}

/// `session.auth`.
pub(crate) async fn auth(session: &mut Session, params: Value, responder: Responder) {
    let result = authenticate(session, params).await;
    responder.send(result).await;
}

async fn authenticate(session: &mut Session, params: Value) -> Result<Value, RpcError> {
    if session.authenticated {
        return Err(RpcError::InvalidRequest("already authenticated".into()));
    }
    let params: AuthParams = rpc::parse(params)?;
    if let Some(namespace) = &params.memory_namespace {
        Scope::check_namespace(namespace).map_err(|err| {
            let reason = match err {
                ScopeError::Namespace(reason) => reason.to_owned(),
                other => other.to_string(),
            };
            RpcError::params("memory_namespace", reason)
        })?;
    }
    let app = session.app.clone();
    let auth_enabled = app.config.auth;
    let agent_id = params.agent_id.filter(|a| !a.trim().is_empty());
    let (role, granted) = match (&params.host_token, &params.token) {
        (Some(host_token), _) => (Role::Host, app.tokens.host.matches(host_token)),
        (None, Some(token)) => {
            let role = if agent_id.is_some() {
                Role::Agent
            } else {
                Role::Client
            };
            // The daemon token binds any agent id; a registered agent's own token
            // (PROTOCOL.md §12.2) binds that agent. Both compared in constant time, and
            // both always, so the time taken does not say whether the id is registered.
            let daemon = app.tokens.auth.matches(token);
            let own = agent_id.as_deref().is_some_and(|id| {
                let hash = app
                    .writer
                    .state()
                    .registered_agent(id)
                    .map(|agent| agent.token_sha256.clone());
                let hash = hash.unwrap_or_else(|| UNREGISTERED_HASH.to_owned());
                crate::tokens::hash_matches(&hash, token)
            });
            (role, daemon || own)
        }
        (None, None) if !auth_enabled => {
            let role = if agent_id.is_some() {
                Role::Agent
            } else {
                Role::Client
            };
            (role, true)
        }
        (None, None) => return Err(RpcError::params("token", "required (or host_token)")),
    };
    if auth_enabled && !granted {
        tracing::info!(client_id = %session.client_id, "auth failed: token mismatch");
        return Err(RpcError::Internal("auth failed: token mismatch".into()));
    }
    let agent_id = agent_id.filter(|_| role == Role::Agent);
    let command = Command::Authenticate(Authenticate {
        client_id: session.client_id.clone(),
        role,
        agent_id: agent_id.clone(),
    });
    // An agent's attach is decided against every other session (one live session per
    // agent id), so it must be recorded now; a client's or host's may wait for a full disk
    // to clear, so that it can read meanwhile.
    session.record(command, role != Role::Agent).await?;
    if let Some(agent_id) = &agent_id {
        // Reachable for chats from now on (PROTOCOL.md §13).
        app.chats.attach(
            agent_id,
            crate::chat_relay::AgentLink {
                client_id: session.client_id.clone(),
                out: session.out.clone(),
                calls: session.tools.calls(),
            },
        );
    }
    let mut actor = Actor::new(session.client_id.clone(), role, agent_id.clone());
    actor.unrestricted = !auth_enabled;
    session.actor = Some(actor);
    session.authenticated = true;
    session.memory_scope =
        Scope::for_session(params.memory_namespace.as_deref(), agent_id.as_deref());
    let mut result = json!({"ok": true, "auth_enabled": auth_enabled, "role": role.as_str()});
    if let Some(agent_id) = agent_id {
        result["agent_id"] = Value::from(agent_id);
    }
    if let Some(namespace) = params.memory_namespace {
        result["memory_namespace"] = Value::from(namespace);
    }
    Ok(result)
}

/// `server.handshake` (PROTOCOL.md §2.2, §10): see [`crate::protocol`].
pub(crate) async fn handshake(session: &mut Session, params: Value, responder: Responder) {
    let negotiated = protocol::negotiate(
        session.protocol.as_ref(),
        &params,
        env!("CARGO_PKG_VERSION"),
    );
    let result = negotiated.map(|negotiated| {
        let answer = negotiated.answer.clone();
        session.protocol = Some(negotiated);
        answer
    });
    responder.send(result).await;
}

/// `session.clear_halt` (PROTOCOL.md §14.5): clears the calling host session's halt →
/// `{cleared, halted: false}`; other roles are refused.
pub(crate) async fn clear_halt(session: &mut Session, _params: Value, responder: Responder) {
    let queued = async {
        let command = Command::ClearHalt(car_projections::halts::ClearHalt {
            actor: session.actor()?.clone(),
        });
        Ok((
            (),
            session
                .queue(command, |_, events| !events.is_empty())
                .await?,
        ))
    }
    .await;
    session.reply_when_durable(responder, queued, |(), outcome| async move {
        let cleared = outcome?.out;
        Ok(json!({"cleared": cleared, "halted": false}))
    });
}
