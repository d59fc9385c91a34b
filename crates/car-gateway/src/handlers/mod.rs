//! The method table: which handler answers which method, after the checks every call
//! passes (authentication, handshake, the approval gate).

pub(crate) mod agents;
pub(crate) mod approvals;
pub(crate) mod chat;
pub(crate) mod host;
pub(crate) mod log;
pub(crate) mod memory;
pub(crate) mod pages;
pub(crate) mod proposals;
pub(crate) mod run_control;
pub(crate) mod runs;
pub(crate) mod session;
pub(crate) mod tools;

use serde_json::Value;

use crate::gate;
use crate::rpc::RpcError;
use crate::session::{Deferred, Responder, Session};

/// Methods the gate never holds: a session must be able to authenticate and handshake.
const NEVER_GATED: [&str; 2] = ["session.auth", "server.handshake"];
/// Methods that never write: they run even while the session's own events wait for the
/// log (see `Session::unrecorded`). Every other method may write, so it first records them.
const READ_ONLY: [&str; 16] = [
    "session.auth",
    "server.handshake",
    "tools.list",
    "runs.list",
    "runs.get_trace",
    "host.approvals",
    "host.await_approval",
    "host.events",
    "log.read",
    "memory.query",
    "memory.build_context",
    "memory.fact_count",
    "proposal.result",
    "agents.list",
    "agents.health",
    "agents.tail_log",
];

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
    if method.starts_with("host.") && session.protocol.is_none() {
        return responder.send(Err(RpcError::HandshakeRequired)).await;
    }
    if !READ_ONLY.contains(&method) {
        if let Err(err) = session.record_unrecorded().await {
            return responder.send(Err(err)).await;
        }
    }
    if gate::is_gated(&session.app, method) && !NEVER_GATED.contains(&method) {
        return hold_for_approval(session, method, params, responder);
    }
    route(session, method, params, responder).await;
}

/// Waits, in its own task, for the approval of a gated call; once approved the call comes
/// back to the connection's reader (as a [`Deferred`]) and runs like any other.
fn hold_for_approval(session: &Session, method: &str, params: Value, responder: Responder) {
    let (app, deferred, method, run_id) = (
        session.app.clone(),
        session.deferred.clone(),
        method.to_owned(),
        session.current_run.clone(),
    );
    let Some(actor) = session.actor.clone() else {
        return;
    };
    tokio::spawn(async move {
        let details = gate::details("method", &method, &params);
        match gate::pass(&app, &actor, format!("ws.method:{method}"), details, run_id).await {
            Ok(()) => {
                // If the connection is gone, the responder's drop answers into the void.
                let _ = deferred.send(Deferred {
                    method,
                    params,
                    responder,
                });
            }
            Err(err) => responder.send(Err(err)).await,
        }
    });
}

/// Runs a call that passed every check.
pub(crate) async fn route(
    session: &mut Session,
    method: &str,
    params: Value,
    responder: Responder,
) {
    match method {
        "session.auth" => session::auth(session, params, responder).await,
        "server.handshake" => session::handshake(session, params, responder).await,
        "session.clear_halt" => session::clear_halt(session, params, responder).await,
        "session.init" => tools::init(session, params, responder).await,
        "tools.register" => tools::register(session, params, responder).await,
        "tools.list" => tools::list(session, params, responder).await,
        "proposal.submit" => proposals::submit(session, params, responder).await,
        "proposal.result" => proposals::result(session, params, responder).await,
        "runs.start" => runs::start(session, params, responder).await,
        "runs.record_turns" => runs::record_turns(session, params, responder).await,
        "runs.record_model_turn" => runs::record_model_turn(session, params, responder).await,
        "runs.complete" => runs::complete(session, params, responder).await,
        "runs.cancel" => run_control::cancel(session, params, responder).await,
        "runs.resume" => run_control::resume(session, params, responder).await,
        "runs.list" => runs::list(session, params, responder).await,
        "runs.get_trace" => runs::get_trace(session, params, responder).await,
        "runs.subscribe" => runs::subscribe(session, params, responder).await,
        "runs.unsubscribe" => runs::unsubscribe(session, params, responder).await,
        "host.request_approval" => approvals::request(session, params, responder).await,
        "host.resolve_approval" => approvals::resolve(session, params, responder).await,
        "host.approvals" => approvals::list(session, params, responder).await,
        "host.await_approval" => approvals::wait(session, params, responder).await,
        "host.subscribe" => host::subscribe(session, params, responder).await,
        "host.events" => host::events(session, params, responder).await,
        "log.read" => log::read(session, params, responder).await,
        "log.subscribe" => log::subscribe(session, params, responder).await,
        "log.unsubscribe" => log::unsubscribe(session, params, responder).await,
        "memory.add_fact" => memory::add_fact(session, params, responder).await,
        "memory.query" => memory::query(session, params, responder).await,
        "memory.build_context" => memory::build_context(session, params, responder).await,
        "memory.fact_count" => memory::fact_count(session, params, responder).await,
        "memory.delete" => memory::delete(session, params, responder).await,
        "memory.persist" => memory::persist(session, params, responder).await,
        "memory.load" => memory::load(session, params, responder).await,
        "memory.consolidate" => memory::consolidate(session, params, responder).await,
        "agents.upsert" => agents::upsert(session, params, responder).await,
        "agents.list" => agents::list(session, params, responder).await,
        "agents.remove" => agents::remove(session, params, responder).await,
        "agents.health" => agents::health(session, params, responder).await,
        "agents.start" => agents::start(session, params, responder).await,
        "agents.stop" => agents::stop(session, params, responder).await,
        "agents.restart" => agents::restart(session, params, responder).await,
        "agents.tail_log" => agents::tail_log(session, params, responder).await,
        "agents.chat" => chat::chat(session, params, responder).await,
        "agents.chat.cancel" => chat::cancel(session, params, responder).await,
        "agents.chat.approve" => chat::approve(session, params, responder).await,
        "agent.chat.event" => chat::event(session, params, responder).await,
        other => {
            responder
                .send(Err(RpcError::MethodNotFound(other.to_owned())))
                .await
        }
    }
}
