//! `runs.cancel` (PROTOCOL.md §14.1) as a pure state machine over the log.
//!
//! A cancellation is identified by its run and idempotency key and goes through steps,
//! each one write of [`AdvanceCancel`] decided against the state:
//!
//! 1. `run.cancellation_requested` (the reason only as its digest);
//! 2. the run's live proposals are stopped: the one effect, done by the gateway, which
//!    then reports what it abandoned ([`StopReport`]); nothing is written for it;
//! 3. `run.ended` `cancelled` (or, for a host and a run nobody holds, `incomplete` /
//!    `cancelled_orphan`), unless the run ended otherwise meanwhile (first terminal wins);
//! 4. `run.cancellation_result` with the receipt, which from then on is the answer to
//!    every retry with the same key.
//!
//! [`progress`] reads what the state says after each write: the receipt, the next step,
//! or "stop the proposals now". Because every step is decided from the log, a retry after
//! a crash between steps walks on from where the log stands and answers the same receipt.
//!
//! If the owner's connection fails before `tools.cancel` could be written, step 4 records
//! `termination_unconfirmed` and the run is *quarantined*: it takes no turns, proposals
//! or outcome and is not ended by a disconnect, a restart or retention, until a host
//! cancels it as an orphan. The fold checks every step ([`apply`]): `car-replay verify`
//! recomputes each receipt's digests.

use car_events::event::{
    Event, IncompleteReason, RunCancellationRequested, RunCancellationResult, RunEnded, Termination,
};
use car_events::receipt::{self, CancelStatus, Receipt};
use car_events::{Envelope, JsonText, Seq};

use crate::access::Actor;
use crate::decide::Refusal;
use crate::runs::{Run, RunEnd};
use crate::state::{Contradiction, State};

/// One cancellation of a run, as the log has it so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancellation {
    /// The caller's key.
    pub idempotency_key: String,
    /// SHA-256 of the reason.
    pub reason_digest: String,
    /// Who asked.
    pub principal: String,
    /// Its `run.cancellation_requested` event.
    pub requested_seq: Seq,
    /// The receipt, once the cancellation has its result.
    pub receipt: Option<Receipt>,
}

/// One step of `runs.cancel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvanceCancel {
    /// Who asks.
    pub actor: Actor,
    /// The run.
    pub run_id: String,
    /// The caller's key.
    pub idempotency_key: String,
    /// [`receipt::reason_digest`] of the reason.
    pub reason_digest: String,
    /// [`principal`] of the caller.
    pub principal: String,
    /// What stopping the run's proposals did, once done (step 2).
    pub stopped: Option<StopReport>,
}

/// What stopping a run's live proposals did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopReport {
    /// The callback abandoned: (action id, request id).
    pub abandoned: Option<(String, String)>,
    /// `tools.cancel` could not be written to the owner: the end is unconfirmed.
    pub unconfirmed: bool,
}

/// Where a cancellation stands after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Settled: the receipt to answer.
    Done(Box<Receipt>),
    /// The run's proposals must be stopped before the next step.
    StopProposals,
    /// The next step can be written at once.
    Continue,
}

/// The receipt's `principal` of a caller: `host`, `agent:<agent_id>`, `client:<client_id>`.
pub fn principal(actor: &Actor) -> String {
    if actor.has_host_rights() {
        "host".to_owned()
    } else if let Some(agent) = actor.bound_agent() {
        format!("agent:{agent}")
    } else {
        format!("client:{}", actor.client_id)
    }
}

impl Run {
    /// The cancellation with this key.
    pub fn cancellation(&self, key: &str) -> Option<&Cancellation> {
        self.cancellations.iter().find(|c| c.idempotency_key == key)
    }
}

/// Whether a cancellation of `run` must end it as an orphan: nobody holds it, or its
/// last cancellation is unconfirmed (quarantine).
fn orphaned(state: &State, run: &Run) -> bool {
    run.quarantined || !state.has_live_owner(run, None)
}

/// Decides one step of `runs.cancel`.
pub(crate) fn advance(state: &State, c: &AdvanceCancel) -> Result<Vec<Event>, Refusal> {
    let host = c.actor.has_host_rights();
    let run = state
        .run(&c.run_id)
        .filter(|run| host || state.is_owner(&c.actor, run))
        .ok_or_else(|| Refusal::UnknownRun(c.run_id.clone()))?;
    let Some(cancellation) = run.cancellation(&c.idempotency_key) else {
        if !host && run.end.is_none() && orphaned(state, run) {
            return Err(Refusal::CancelUnavailable);
        }
        return Ok(vec![Event::RunCancellationRequested(
            RunCancellationRequested {
                run_id: c.run_id.clone(),
                idempotency_key: c.idempotency_key.clone(),
                reason_digest: c.reason_digest.clone(),
                principal: c.principal.clone(),
            },
        )]);
    };
    if cancellation.reason_digest != c.reason_digest || cancellation.principal != c.principal {
        return Err(Refusal::CancelKeyReused);
    }
    if cancellation.receipt.is_some() {
        return Ok(Vec::new());
    }
    let abandoned = c.stopped.as_ref().and_then(|s| s.abandoned.clone());
    if let Some(end) = &run.end {
        let status = match &end.termination {
            Termination::Cancelled {
                idempotency_key, ..
            } if *idempotency_key == c.idempotency_key => CancelStatus::CancelledConfirmed,
            _ => CancelStatus::AlreadyTerminal,
        };
        let terminal = Some(terminal_digest(run, end));
        return Ok(vec![result(cancellation, run, status, terminal, abandoned)]);
    }
    if orphaned(state, run) {
        if !host {
            return Err(Refusal::CancelUnavailable);
        }
        return Ok(vec![ended(
            run,
            Termination::Incomplete {
                reason: IncompleteReason::CancelledOrphan,
            },
        )]);
    }
    match &c.stopped {
        None => Ok(Vec::new()),
        Some(stopped) if stopped.unconfirmed => Ok(vec![result(
            cancellation,
            run,
            CancelStatus::TerminationUnconfirmed,
            None,
            abandoned,
        )]),
        Some(_) => Ok(vec![ended(
            run,
            Termination::Cancelled {
                idempotency_key: c.idempotency_key.clone(),
                reason_digest: c.reason_digest.clone(),
            },
        )]),
    }
}

/// Where the cancellation `key` of `run_id` stands.
pub fn progress(state: &State, run_id: &str, key: &str) -> Progress {
    let Some(run) = state.run(run_id) else {
        return Progress::Continue;
    };
    match run.cancellation(key) {
        Some(Cancellation {
            receipt: Some(receipt),
            ..
        }) => Progress::Done(Box::new(receipt.clone())),
        _ if run.end.is_some() || orphaned(state, run) => Progress::Continue,
        _ => Progress::StopProposals,
    }
}

fn ended(run: &Run, termination: Termination) -> Event {
    Event::RunEnded(RunEnded {
        run_id: run.run_id.clone(),
        agent_id: run.agent_id.clone(),
        termination,
    })
}

fn result(
    cancellation: &Cancellation,
    run: &Run,
    status: CancelStatus,
    terminal_digest: Option<String>,
    abandoned: Option<(String, String)>,
) -> Event {
    let (action_id, request_id) = abandoned.unzip();
    let receipt = Receipt::new(
        &run.run_id,
        &cancellation.idempotency_key,
        &cancellation.reason_digest,
        &cancellation.principal,
        status,
        terminal_digest,
        action_id,
        request_id,
    );
    Event::RunCancellationResult(RunCancellationResult {
        run_id: run.run_id.clone(),
        idempotency_key: cancellation.idempotency_key.clone(),
        status: status.as_str().to_owned(),
        receipt: JsonText::from_value(&receipt.to_value()),
    })
}

/// The digest of the run's `ended` record as `runs.get_trace` serves it.
fn terminal_digest(run: &Run, end: &RunEnd) -> String {
    receipt::jcs_digest(&crate::trace::ended_record(run, end))
}

/// Folds the cancellation events into `run`; every check of §14.1 is a contradiction.
pub(crate) fn apply(run: &mut Run, env: &Envelope) -> Result<(), Contradiction> {
    let bad = |problem: String| Contradiction::Cancellation {
        run_id: run.run_id.clone(),
        problem,
    };
    match &env.event {
        Event::RunCancellationRequested(e) => {
            if run.cancellation(&e.idempotency_key).is_some() {
                return Err(bad(format!(
                    "idempotency_key `{}` was already requested",
                    e.idempotency_key
                )));
            }
            run.cancellations.push(Cancellation {
                idempotency_key: e.idempotency_key.clone(),
                reason_digest: e.reason_digest.clone(),
                principal: e.principal.clone(),
                requested_seq: env.seq,
                receipt: None,
            });
        }
        Event::RunEnded(RunEnded {
            termination:
                Termination::Cancelled {
                    idempotency_key,
                    reason_digest,
                },
            ..
        }) => match run.cancellation(idempotency_key) {
            Some(c) if c.reason_digest == *reason_digest && c.receipt.is_none() => {}
            _ => {
                return Err(bad(format!(
                    "ended by cancellation `{idempotency_key}`, which was not requested or has settled"
                )));
            }
        },
        Event::RunCancellationResult(e) => {
            let checked = check_result(run, e).map_err(bad)?;
            if checked.status == CancelStatus::TerminationUnconfirmed.as_str() {
                run.quarantined = true;
            }
            let index = run
                .cancellations
                .iter()
                .position(|c| c.idempotency_key == e.idempotency_key)
                .ok_or_else(|| bad("no request".into()))?;
            run.cancellations[index].receipt = Some(checked);
        }
        _ => {}
    }
    Ok(())
}

/// A result's receipt, checked against its request, the run, and its own digest.
fn check_result(run: &Run, e: &RunCancellationResult) -> Result<Receipt, String> {
    let key = &e.idempotency_key;
    let request = run
        .cancellation(key)
        .ok_or_else(|| format!("result of cancellation `{key}`, which was not requested"))?;
    if request.receipt.is_some() {
        return Err(format!("second result of cancellation `{key}`"));
    }
    let receipt = Receipt::parse_checked(&e.receipt.to_value()).map_err(|e| e.to_string())?;
    let fields = [
        ("run_id", &receipt.run_id, &run.run_id),
        ("idempotency_key", &receipt.idempotency_key, key),
        (
            "reason_digest",
            &receipt.reason_digest,
            &request.reason_digest,
        ),
        ("principal", &receipt.principal, &request.principal),
        ("status", &receipt.status, &e.status),
    ];
    for (name, got, want) in fields {
        if got != want {
            return Err(format!("receipt {name} `{got}` is not `{want}`"));
        }
    }
    let status = CancelStatus::parse(&receipt.status).ok_or("unknown status")?;
    match (&run.end, status) {
        (None, CancelStatus::TerminationUnconfirmed) if receipt.terminal_digest.is_none() => {}
        (None, _) => return Err(format!("{} before the run ended", receipt.status)),
        (Some(_), CancelStatus::TerminationUnconfirmed) => {
            return Err("termination_unconfirmed after the run ended".into());
        }
        (Some(end), _) => {
            let computed = terminal_digest(run, end);
            if receipt.terminal_digest.as_deref() != Some(computed.as_str()) {
                return Err(format!(
                    "terminal_digest {:?} is not the digest of the ended record ({computed})",
                    receipt.terminal_digest
                ));
            }
            let by_this = matches!(&end.termination,
                Termination::Cancelled { idempotency_key, .. } if idempotency_key == key);
            if by_this != (status == CancelStatus::CancelledConfirmed) {
                return Err(format!(
                    "{} does not match how the run ended",
                    receipt.status
                ));
            }
        }
    }
    Ok(receipt)
}
