//! The method table: which handler answers which method, after the checks every call
//! passes (authentication, handshake, the approval gate).

pub(crate) mod log;
pub(crate) mod runs;
pub(crate) mod session;

use serde_json::Value;

use crate::connection::{Responder, Session};
use crate::rpc::RpcError;

/// Answers one call.
pub(crate) async fn dispatch(
    session: &mut Session,
    method: &str,
    params: Value,
    responder: Responder,
) {
    if session.actor.is_none() && method != "session.auth" {
        responder.send(Err(RpcError::AuthRequired)).await;
        session.closing.cancel();
        return;
    }
    if method.starts_with("host.") && !session.handshake {
        return responder.send(Err(RpcError::HandshakeRequired)).await;
    }
    match method {
        "session.auth" => session::auth(session, params, responder).await,
        "server.handshake" => session::handshake(session, params, responder).await,
        "runs.start" => runs::start(session, params, responder).await,
        "runs.record_turns" => runs::record_turns(session, params, responder).await,
        "runs.complete" => runs::complete(session, params, responder).await,
        "runs.list" => runs::list(session, params, responder).await,
        "runs.get_trace" => runs::get_trace(session, params, responder).await,
        "runs.subscribe" => runs::subscribe(session, params, responder).await,
        "runs.unsubscribe" => runs::unsubscribe(session, params, responder).await,
        "log.read" => log::read(session, params, responder).await,
        "log.subscribe" => log::subscribe(session, params, responder).await,
        "log.unsubscribe" => log::unsubscribe(session, params, responder).await,
        other => {
            responder
                .send(Err(RpcError::MethodNotFound(other.to_owned())))
                .await
        }
    }
}
