//! `runs.resume` (PROTOCOL.md §14.2): an agent session takes over a run in progress whose
//! producer (the session whose current run it was) is gone, for recovery only.
//!
//! Only a session bound to the run's agent may reclaim it: a client session's ownership
//! dies with it, because nothing identifies it again. The first resume in the log wins;
//! the run's producer is then the resuming session, so a later resume by anyone else
//! finds it held, and the disconnect of an earlier producer no longer ends it (its own
//! departure does, after its lease).

use car_events::event::{Event, RunResumed};

use crate::access::Actor;
use crate::decide::Refusal;
use crate::runs::Run;
use crate::state::{Contradiction, State};

/// `runs.resume`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeRun {
    /// Who asks.
    pub actor: Actor,
    /// The run.
    pub run_id: String,
}

/// Decides `runs.resume`.
pub(crate) fn resume_run(state: &State, c: &ResumeRun) -> Result<Vec<Event>, Refusal> {
    let Some(agent_id) = c.actor.bound_agent().filter(|_| !c.actor.has_host_rights()) else {
        return Err(Refusal::Forbidden(
            "runs.resume requires an agent-bound session".into(),
        ));
    };
    let run = state
        .run(&c.run_id)
        .filter(|run| run.agent_id == agent_id)
        .ok_or_else(|| Refusal::UnknownRun(c.run_id.clone()))?;
    if run.is_ended() {
        return Err(Refusal::Forbidden(format!(
            "run `{}` is already terminal — cannot resume",
            run.run_id
        )));
    }
    if run.quarantined {
        return Err(Refusal::Quarantined(run.run_id.clone()));
    }
    if run
        .owner
        .as_deref()
        .is_some_and(|producer| state.session(producer).is_some())
    {
        return Err(Refusal::Forbidden(format!(
            "run `{}` is still held by a live session",
            run.run_id
        )));
    }
    Ok(vec![Event::RunResumed(RunResumed {
        run_id: run.run_id.clone(),
        agent_id: run.agent_id.clone(),
        client_id: c.actor.client_id.clone(),
        resumed_from_client_id: run.owner.clone(),
    })])
}

/// Folds `run.resumed` into `run`, once the caller checked the session is open and bound
/// to the run's agent.
pub(crate) fn apply(run: &mut Run, e: &RunResumed) -> Result<(), Contradiction> {
    let bad = |problem: &str| Contradiction::Resume {
        run_id: run.run_id.clone(),
        problem: problem.to_owned(),
    };
    if run.agent_id != e.agent_id {
        return Err(bad("the run belongs to another agent"));
    }
    if run.is_ended() {
        return Err(bad("the run has ended"));
    }
    if run.quarantined {
        return Err(bad("the run is quarantined"));
    }
    run.owner = Some(e.client_id.clone());
    run.resumed_by = Some(e.client_id.clone());
    Ok(())
}
