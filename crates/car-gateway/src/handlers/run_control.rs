//! `runs.cancel` and `runs.resume` (PROTOCOL.md §14.1, §14.2): protocol 3's run
//! controls, each behind its capability.
//!
//! A cancellation is a small state machine decided in the projection
//! ([`car_projections::runs::cancel`]): every step is one write of [`AdvanceCancel`],
//! and what the state says after it tells this handler what to do next: stop the run's
//! live proposals (the one effect that is I/O, done here through [`LiveProposals`]),
//! write the next step, or answer the stored receipt. A retry with the same key walks the
//! same machine and finds the receipt, so it gets the identical answer, even after a
//! crash between the steps.

use car_events::receipt;
use car_projections::decide::Command;
use car_projections::runs::cancel::{self, AdvanceCancel, Progress, StopReport};
use car_projections::runs::resume::ResumeRun;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::live_proposals::Stopped;
use crate::protocol;
use crate::rpc::{self, RpcError};
use crate::session::{Responder, Session};

/// `idempotency_key` at most this many bytes (§14.1).
const MAX_KEY_BYTES: usize = 128;
/// `reason` at most this many bytes (§14.1).
const MAX_REASON_BYTES: usize = 1024;
/// Writes one cancellation takes at most: request, stop, end, result, and one spare
/// for a run that another writer ended in between.
const MAX_CANCEL_STEPS: usize = 5;

/// Refuses a v3 method on a session that did not negotiate its capability (§10).
fn require(session: &Session, method: &str, capability: &str) -> Result<(), RpcError> {
    if protocol::has(session.protocol.as_ref(), capability) {
        Ok(())
    } else {
        Err(RpcError::CapabilityMismatch(format!(
            "{method} requires {capability}"
        )))
    }
}

/// Refuses a field outside `allowed`, as §14 words it.
fn only_fields(params: &Value, allowed: &[&str]) -> Result<(), RpcError> {
    if let Some(unknown) = params
        .as_object()
        .and_then(|fields| fields.keys().find(|k| !allowed.contains(&k.as_str())))
    {
        return Err(RpcError::InvalidParams(format!(
            "invalid params: unknown field '{unknown}'"
        )));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct CancelParams {
    run_id: String,
    idempotency_key: String,
    reason: String,
}

fn cancel_params(params: Value) -> Result<CancelParams, RpcError> {
    only_fields(&params, &["run_id", "idempotency_key", "reason"])?;
    let params: CancelParams = rpc::parse(params)?;
    for (field, value) in [
        ("run_id", &params.run_id),
        ("idempotency_key", &params.idempotency_key),
        ("reason", &params.reason),
    ] {
        if value.is_empty() {
            return Err(RpcError::params(field, "must not be empty"));
        }
    }
    if params.idempotency_key.len() > MAX_KEY_BYTES {
        return Err(RpcError::params(
            "idempotency_key",
            format!("at most {MAX_KEY_BYTES} bytes"),
        ));
    }
    if params.reason.len() > MAX_REASON_BYTES {
        return Err(RpcError::params(
            "reason",
            format!("at most {MAX_REASON_BYTES} bytes"),
        ));
    }
    Ok(params)
}

/// `runs.cancel` (§14.1).
pub(crate) async fn cancel(session: &mut Session, params: Value, responder: Responder) {
    let prepared = require(session, "runs.cancel", protocol::CANCEL)
        .and_then(|()| cancel_params(params))
        .and_then(|params| Ok((params, session.actor()?.clone())));
    let (params, actor) = match prepared {
        Ok(prepared) => prepared,
        Err(err) => return responder.send(Err(err)).await,
    };
    let app = session.app.clone();
    session.reply_later(responder, async move {
        let principal = cancel::principal(&actor);
        let mut step = AdvanceCancel {
            actor,
            run_id: params.run_id.clone(),
            idempotency_key: params.idempotency_key.clone(),
            reason_digest: receipt::reason_digest(&params.reason),
            principal,
            stopped: None,
        };
        for _ in 0..MAX_CANCEL_STEPS {
            app.execute(Command::AdvanceCancel(step.clone()), |_, _| ())
                .await??;
            // Where it stands once the step is applied (a decision's own view is the
            // state before its events).
            let (run_id, key) = (step.run_id.clone(), step.idempotency_key.clone());
            let progress = app
                .writer
                .read(move |state| cancel::progress(state, &run_id, &key))
                .await?;
            match progress {
                Progress::Done(receipt) => return Ok(receipt.to_value()),
                Progress::StopProposals if step.stopped.is_none() => {
                    let message = format!("run '{}' cancelled", step.run_id);
                    let Stopped {
                        abandoned,
                        unconfirmed,
                    } = app.live_proposals.stop(&step.run_id, &message).await;
                    step.stopped = Some(StopReport {
                        abandoned: abandoned.map(|a| (a.action_id, a.request_id)),
                        unconfirmed,
                    });
                }
                Progress::Continue | Progress::StopProposals => {}
            }
        }
        tracing::error!(run_id = %step.run_id, "runs.cancel did not settle");
        Err(RpcError::Internal(
            "internal error: the cancellation did not settle; retry with the same idempotency_key"
                .into(),
        ))
    });
}

#[derive(Debug, Deserialize)]
struct ResumeParams {
    run_id: String,
}

/// `runs.resume` (§14.2): answered inline, so the run is the session's current run
/// before the next frame is read.
pub(crate) async fn resume(session: &mut Session, params: Value, responder: Responder) {
    let result = resume_run(session, params).await;
    responder.send(result).await;
}

async fn resume_run(session: &mut Session, params: Value) -> Result<Value, RpcError> {
    require(session, "runs.resume", protocol::RESUME)?;
    only_fields(&params, &["run_id"])?;
    let params: ResumeParams = rpc::parse(params)?;
    let actor = session.actor()?.clone();
    let command = Command::ResumeRun(ResumeRun {
        actor,
        run_id: params.run_id.clone(),
    });
    let done = session
        .app
        .execute(command, |_, events| match events.first() {
            Some(car_events::Event::RunResumed(e)) => Some(e.clone()),
            _ => None,
        })
        .await??;
    let resumed = done
        .out
        .ok_or_else(|| RpcError::Internal("internal error: the run was not resumed".into()))?;
    session.current_run = Some(resumed.run_id.clone());
    session.current_run_resumed = true;
    Ok(json!({
        "run_id": resumed.run_id,
        "agent_id": resumed.agent_id,
        "client_id": resumed.client_id,
        "resumed_from_client_id": resumed.resumed_from_client_id,
    }))
}
