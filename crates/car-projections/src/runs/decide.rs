//! The decisions of runs: `runs.start`, `runs.record_turns` (and the turns a proposal's
//! actions record), `runs.complete`, and ending the runs a departed session abandoned.
//!
//! Each reads the state and returns the events that record it, or a [`Refusal`] with the
//! contract's wording; [`crate::decide()`] dispatches the [`Command`](crate::Command)s to
//! them.

use car_events::JsonText;
use car_events::event::{
    Event, IncompleteReason, Role, RunEnded, RunStarted, Termination, TurnsRecorded,
};
use serde_json::Value;

use crate::access::Actor;
use crate::decide::{Dropped, Refusal};
use crate::runs::MAX_TURNS_PER_RUN;
use crate::state::State;
use crate::turns::{self, MAX_TURNS_PER_BATCH, TurnError};

/// `runs.start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRun {
    /// Who asks.
    pub actor: Actor,
    /// A fresh UUID, used unless an idempotency key is given.
    pub new_run_id: String,
    /// What the run is for.
    pub intent: String,
    /// The requested agent id.
    pub agent_id: Option<String>,
    /// The agent's name, slugged into `name:<slug>` when no agent id is known.
    pub agent_name: Option<String>,
    /// The client's description of a good outcome.
    pub outcome_description: Option<String>,
    /// Makes the start idempotent: the run id is the key.
    pub idempotency_key: Option<String>,
}

/// `runs.record_turns`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordTurns {
    /// Who asks.
    pub actor: Actor,
    /// The run.
    pub run_id: String,
    /// The turns, already through [`AdmittedTurns::admit`] (done by the caller, off the
    /// single writer, because it is the expensive part).
    pub turns: AdmittedTurns,
}

/// A batch of turns through the size rules of [`crate::turns`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmittedTurns {
    turns: Vec<JsonText>,
    /// How many turns were sent.
    sent: usize,
    /// Whether a turn was too large even after truncation (the batch is refused).
    too_large: bool,
}

impl AdmittedTurns {
    /// Checks and truncates a batch as sent. A malformed batch is refused at once
    /// (`-32602`); an oversized turn is remembered, to be refused as `turn_too_large` once
    /// the run itself has been checked.
    pub fn admit(turns: &[Value]) -> Result<Self, Refusal> {
        if turns.is_empty() || turns.len() > MAX_TURNS_PER_BATCH {
            return Err(Refusal::InvalidParams(format!(
                "turns: expected 1 to {MAX_TURNS_PER_BATCH} turns, got {}",
                turns.len()
            )));
        }
        let mut admitted = Vec::with_capacity(turns.len());
        let mut too_large = false;
        for (index, turn) in turns.iter().enumerate() {
            match turns::admit(index, turn) {
                Ok(text) => admitted.push(text),
                Err(err @ TurnError::NotAnObject { .. }) => {
                    return Err(Refusal::InvalidParams(err.to_string()));
                }
                Err(TurnError::TooLarge { .. }) => too_large = true,
            }
        }
        Ok(Self {
            turns: admitted,
            sent: turns.len(),
            too_large,
        })
    }

    /// One model turn (`runs.record_model_turn`), admitted by
    /// [`turns::admit_model_turn`]: `None` when it was too large.
    pub fn model_turn(turn: Option<JsonText>) -> Self {
        Self {
            too_large: turn.is_none(),
            turns: turn.into_iter().collect(),
            sent: 1,
        }
    }

    /// How many turns were sent.
    pub fn len(&self) -> usize {
        self.sent
    }

    /// Whether the batch is empty (never, once admitted).
    pub fn is_empty(&self) -> bool {
        self.sent == 0
    }

    /// The admitted turns, `None` when one was too large.
    pub fn admitted(&self) -> Option<&[JsonText]> {
        (!self.too_large).then_some(self.turns.as_slice())
    }
}

/// `runs.complete`.
#[derive(Debug, Clone, PartialEq)]
pub struct CompleteRun {
    /// Who asks.
    pub actor: Actor,
    /// The run.
    pub run_id: String,
    /// `{status, summary?, evidence?, metrics?, timestamp?}`.
    pub outcome: Value,
}

/// The disconnect grace of a session expired: end the runs it leaves without an owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndAbandonedRuns {
    /// The session that left.
    pub client_id: String,
    /// The agent identity it was bound to, if it was an `agent` session.
    pub agent_id: Option<String>,
}

/// `name:<slug>`: lower-case letters and digits, other runs of characters as one `-`.
pub fn agent_slug(name: &str) -> String {
    let mut slug = String::with_capacity(name.len());
    for ch in name.trim().chars().flat_map(char::to_lowercase) {
        if ch.is_alphanumeric() {
            slug.push(ch);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.trim_matches('-').to_owned()
}

fn non_blank(value: Option<&String>) -> Option<&str> {
    value.map(String::as_str).filter(|v| !v.trim().is_empty())
}

/// `runs.start`: the agent id from the session's binding, the request or the agent's
/// name; with an idempotency key, the run it names when the caller may read it.
pub(crate) fn start_run(state: &State, c: &StartRun) -> Result<Vec<Event>, Refusal> {
    if c.actor.role == Role::Host && !c.actor.unrestricted {
        return Err(Refusal::HostCannotStartRuns);
    }
    let agent_id = match (c.actor.bound_agent(), non_blank(c.agent_id.as_ref())) {
        (Some(bound), Some(asked)) if bound != asked => {
            return Err(Refusal::InvalidParams(format!(
                "agent_id: this session is bound to agent '{bound}', not '{asked}'"
            )));
        }
        (Some(bound), _) => bound.to_owned(),
        (None, Some(asked)) => asked.to_owned(),
        (None, None) => match non_blank(c.agent_name.as_ref()).map(agent_slug) {
            Some(slug) if !slug.is_empty() => format!("name:{slug}"),
            _ => {
                return Err(Refusal::InvalidParams(
                    "agent_id: required (or agent_name), or a session bound to an agent".into(),
                ));
            }
        },
    };
    let run_id = match non_blank(c.idempotency_key.as_ref()) {
        Some(key) => {
            // The run with this key is returned as it is to a caller that may read it (its
            // owners, hosts; after a reconnect the retrying session is a new one, bound to
            // the same agent). Anyone else learns nothing about it, not even that it
            // exists (PROTOCOL.md §3.2).
            if let Some(run) = state.run(key) {
                return if state.is_reader(&c.actor, run) {
                    Ok(vec![])
                } else {
                    Err(Refusal::KeyUnavailable)
                };
            }
            if let Some(agent) = state.retired_key(key) {
                let reader = c.actor.has_host_rights() || c.actor.bound_agent() == Some(agent);
                return if reader {
                    Ok(vec![])
                } else {
                    Err(Refusal::KeyUnavailable)
                };
            }
            key.to_owned()
        }
        None => c.new_run_id.clone(),
    };
    Ok(vec![Event::RunStarted(RunStarted {
        run_id,
        agent_id,
        client_id: Some(c.actor.client_id.clone()),
        intent: c.intent.clone(),
        outcome_description: c.outcome_description.clone(),
        idempotency_key: non_blank(c.idempotency_key.as_ref()).map(str::to_owned),
    })])
}

/// `runs.record_turns`: appends the batch after the run's last turn, or drops it.
pub(crate) fn record_turns(state: &State, c: &RecordTurns) -> Result<Vec<Event>, Refusal> {
    let run = state
        .owned_run(&c.actor, &c.run_id)
        .ok_or(Refusal::Dropped(Dropped::RunNotFound))?;
    if run.is_ended() || run.quarantined {
        return Err(Refusal::Dropped(Dropped::RunTerminal));
    }
    if run.turn_count as usize + c.turns.len() > MAX_TURNS_PER_RUN as usize {
        return Err(Refusal::Dropped(Dropped::RunTurnLimit));
    }
    let turns = c
        .turns
        .admitted()
        .ok_or(Refusal::Dropped(Dropped::TurnTooLarge))?;
    Ok(vec![Event::TurnsRecorded(TurnsRecorded {
        run_id: run.run_id.clone(),
        base_index: run.turn_count,
        turns: turns.to_vec(),
    })])
}

/// `runs.complete`: ends an owned run with its outcome.
pub(crate) fn complete_run(state: &State, c: &CompleteRun) -> Result<Vec<Event>, Refusal> {
    let Value::Object(fields) = &c.outcome else {
        return Err(Refusal::InvalidParams("outcome: expected an object".into()));
    };
    match fields.get("status") {
        Some(Value::String(status)) if !status.trim().is_empty() => {}
        _ => {
            return Err(Refusal::InvalidParams(
                "outcome.status: required, a non-empty string".into(),
            ));
        }
    }
    let run = state
        .owned_run(&c.actor, &c.run_id)
        .ok_or_else(|| Refusal::UnknownRun(c.run_id.clone()))?;
    if run.is_ended() {
        return Err(Refusal::RunTerminal(c.run_id.clone()));
    }
    if run.quarantined {
        return Err(Refusal::Quarantined(c.run_id.clone()));
    }
    Ok(vec![Event::RunEnded(RunEnded {
        run_id: run.run_id.clone(),
        agent_id: run.agent_id.clone(),
        termination: Termination::Outcome {
            outcome: JsonText::from_value(&c.outcome),
        },
    })])
}

/// Ends, as `incomplete`/`disconnected`, the runs the session leaves without a live owner.
/// Not a quarantined run (§14.1), nor one another session has resumed since (§14.2): that
/// session's own departure decides it.
pub(crate) fn end_abandoned_runs(state: &State, c: &EndAbandonedRuns) -> Vec<Event> {
    state
        .runs()
        .filter(|run| !run.is_ended() && !run.quarantined)
        .filter(|run| {
            run.resumed_by
                .as_deref()
                .is_none_or(|resumer| resumer == c.client_id)
        })
        .filter(|run| {
            run.owner.as_deref() == Some(c.client_id.as_str())
                || c.agent_id.as_deref() == Some(run.agent_id.as_str())
        })
        .filter(|run| !state.has_live_owner(run, Some(&c.client_id)))
        .map(|run| {
            Event::RunEnded(RunEnded {
                run_id: run.run_id.clone(),
                agent_id: run.agent_id.clone(),
                termination: Termination::Incomplete {
                    reason: IncompleteReason::Disconnected,
                },
            })
        })
        .collect()
}
