//! Decisions: `decide(&State, &Command) -> Result<Vec<Event>, Refusal>`.
//!
//! Every write of the protocol is a [`Command`]. Deciding it reads the state and returns
//! the events that record it, or a typed [`Refusal`] that the gateway maps to the exact
//! result or error of PROTOCOL.md. Deciding is pure; the caller supplies every fresh id and
//! the single writer applies the events, so two racing commands are decided one after the
//! other against the state the first one left.
//!
//! A command that has nothing left to do (an idempotent `runs.start`, a late tool reply,
//! expiring an approval that was resolved meanwhile) decides to no events.

use car_events::JsonText;
use car_events::event::{
    Event, IncompleteReason, ProposalFinished, ProposalSubmitted, Role, RunEnded, RunStarted,
    Termination, TurnsRecorded,
};
use serde_json::Value;

use crate::access::Actor;
pub use crate::approvals::{ExpireApproval, RequestApproval, ResolveApproval};
use crate::approvals::{expire_approval, request_approval, resolve_approval};
use crate::memory::{self, MemoryRefusal};
use crate::proposals::{complete_proposal, finish_action, finish_proposal, submit_proposal};
pub use crate::sessions::{Authenticate, CloseSession, OpenSession};
use crate::sessions::{authenticate, close_session, open_session};
use crate::state::{MAX_TURNS_PER_RUN, State};
pub use crate::subscriptions::{Subscribe, SubscriptionSelector, Unsubscribe};
use crate::subscriptions::{subscribe, unsubscribe};
pub use crate::tool_calls::{DispatchToolCall, FinishToolCall, ToolCallOutcome};
use crate::tool_calls::{dispatch_tool_call, finish_tool_call};
use crate::turns::{self, MAX_TURNS_PER_BATCH, TurnError};

/// Why `runs.record_turns` appended nothing (the `dropped` field of its soft result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dropped {
    /// Unknown, evicted, or not owned by the caller.
    RunNotFound,
    /// The run has ended.
    RunTerminal,
    /// The batch would pass [`MAX_TURNS_PER_RUN`].
    RunTurnLimit,
    /// A turn is too large even after truncation.
    TurnTooLarge,
}

impl Dropped {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::RunNotFound => "run_not_found",
            Dropped::RunTerminal => "run_terminal",
            Dropped::RunTurnLimit => "run_turn_limit",
            Dropped::TurnTooLarge => "turn_too_large",
        }
    }
}

/// Why a command was refused. The messages are the contract's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `-32602`: a parameter is missing or wrong; the message names it.
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// `-32600`: `session.auth` on an authenticated session.
    #[error("already authenticated")]
    AlreadyAuthenticated,
    /// `-32603`: another live connection holds the agent identity.
    #[error("agent '{0}' is already attached on another connection")]
    AgentAttached(String),
    /// `-32603`: `runs.start` from a host session.
    #[error("host sessions cannot start runs")]
    HostCannotStartRuns,
    /// `-32603`: `runs.complete` of a run the caller cannot see.
    #[error("unknown run_id `{0}`")]
    UnknownRun(String),
    /// `-32603`: `runs.complete` of a run that has ended.
    #[error("run `{0}` is already terminal — cannot record another outcome")]
    RunTerminal(String),
    /// Soft result of `runs.record_turns`: nothing appended.
    #[error("dropped: {}", .0.as_str())]
    Dropped(Dropped),
    /// Soft result: the run does not exist for the caller (`{run_id, not_found: true}`).
    #[error("not found")]
    NotFound,
    /// `-32602`: an approval id that does not exist.
    #[error("unknown approval_id `{0}`")]
    UnknownApproval(String),
    /// `-32602`: a resolution after the first.
    #[error("approval {0} is already resolved")]
    ApprovalResolved(String),
    /// `-32602`: a resolution after expiry.
    #[error("approval {0} has expired")]
    ApprovalExpired(String),
    /// `-32603`: the caller's role does not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// `-32602`: `runs.start` with an `idempotency_key` that names a run the caller may
    /// not read. Says nothing more: not whether the key is taken, nor by whom.
    #[error("idempotency_key is not available")]
    KeyUnavailable,
    /// A memory refusal (`-32602` or `-32603`, see [`MemoryRefusal::code`]), its message
    /// the contract's, word for word.
    #[error(transparent)]
    Memory(#[from] MemoryRefusal),
}

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

/// Every write of the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A connection was accepted.
    OpenSession(OpenSession),
    /// `session.auth` succeeded at the token level.
    Authenticate(Authenticate),
    /// A session ended.
    CloseSession(CloseSession),
    /// `runs.start`.
    StartRun(StartRun),
    /// `runs.record_turns`.
    RecordTurns(RecordTurns),
    /// `runs.complete`.
    CompleteRun(CompleteRun),
    /// A disconnect grace expired.
    EndAbandonedRuns(EndAbandonedRuns),
    /// `host.request_approval` or the gate.
    RequestApproval(RequestApproval),
    /// `host.resolve_approval`.
    ResolveApproval(ResolveApproval),
    /// An approval timed out.
    ExpireApproval(ExpireApproval),
    /// A subscription begins.
    Subscribe(Subscribe),
    /// Subscriptions end.
    Unsubscribe(Unsubscribe),
    /// `proposal.submit` accepted.
    SubmitProposal(ProposalSubmitted),
    /// A proposal finished.
    FinishProposal(ProposalFinished),
    /// One action of a proposal ended (§14.5), with its turn in the proposal's run, if
    /// any (the turn is left out when the run refuses it: ended, full, …).
    FinishAction(
        car_events::event::ProposalActionFinished,
        Option<RecordTurns>,
    ),
    /// A proposal finished with this result, recorded before it is sent (§14.5).
    CompleteProposal(ProposalFinished, car_events::event::ProposalResultRecorded),
    /// A tool call is sent.
    DispatchToolCall(DispatchToolCall),
    /// A tool call ended.
    FinishToolCall(FinishToolCall),
    /// A terminal tool failure halts a session (§14.5).
    HaltSession(crate::halts::HaltSession),
    /// `session.clear_halt`.
    ClearHalt(crate::halts::ClearHalt),
    /// `memory.add_fact` (and MCP's `memory_add_fact`).
    MemoryAddFact(memory::AddFact),
    /// `memory.delete` (and MCP's `memory_delete`).
    MemoryDelete(memory::DeleteFact),
    /// `memory.consolidate`.
    MemoryConsolidate(memory::Consolidate),
    /// `memory.load`, its file parsed.
    MemoryLoad(memory::LoadScope),
    /// `memory.persist` wrote its snapshot.
    MemoryPersisted(memory::RecordPersist),
}

/// Decides a command against the state.
pub fn decide(state: &State, command: &Command) -> Result<Vec<Event>, Refusal> {
    match command {
        Command::OpenSession(c) => Ok(open_session(c)),
        Command::Authenticate(c) => authenticate(state, c),
        Command::CloseSession(c) => Ok(close_session(state, c)),
        Command::StartRun(c) => start_run(state, c),
        Command::RecordTurns(c) => record_turns(state, c),
        Command::CompleteRun(c) => complete_run(state, c),
        Command::EndAbandonedRuns(c) => Ok(end_abandoned_runs(state, c)),
        Command::RequestApproval(c) => request_approval(c),
        Command::ResolveApproval(c) => resolve_approval(state, c),
        Command::ExpireApproval(c) => Ok(expire_approval(state, c)),
        Command::Subscribe(c) => subscribe(state, c),
        Command::Unsubscribe(c) => Ok(unsubscribe(state, c)),
        Command::SubmitProposal(c) => submit_proposal(state, c),
        Command::FinishAction(finished, turn) => Ok(finish_action(state, finished, turn.as_ref())),
        Command::CompleteProposal(finished, result) => {
            Ok(complete_proposal(state, finished, result))
        }
        Command::FinishProposal(c) => Ok(finish_proposal(state, c)),
        Command::DispatchToolCall(c) => Ok(dispatch_tool_call(c)),
        Command::FinishToolCall(c) => Ok(finish_tool_call(state, c)),
        Command::HaltSession(c) => Ok(crate::halts::decide_halt(state, c)),
        Command::ClearHalt(c) => crate::halts::decide_clear(state, c),
        Command::MemoryAddFact(c) => Ok(memory::decide::decide_add_fact(state.memory(), c)?),
        Command::MemoryDelete(c) => Ok(memory::decide::decide_delete(state.memory(), c)),
        Command::MemoryConsolidate(c) => Ok(memory::decide::decide_consolidate(state.memory(), c)),
        Command::MemoryLoad(c) => Ok(memory::decide::decide_load(c)),
        Command::MemoryPersisted(c) => Ok(vec![Event::MemoryScopePersisted(c.event.clone())]),
    }
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

fn start_run(state: &State, c: &StartRun) -> Result<Vec<Event>, Refusal> {
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

pub(crate) fn record_turns(state: &State, c: &RecordTurns) -> Result<Vec<Event>, Refusal> {
    let run = state
        .owned_run(&c.actor, &c.run_id)
        .ok_or(Refusal::Dropped(Dropped::RunNotFound))?;
    if run.is_ended() {
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

fn complete_run(state: &State, c: &CompleteRun) -> Result<Vec<Event>, Refusal> {
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
    Ok(vec![Event::RunEnded(RunEnded {
        run_id: run.run_id.clone(),
        agent_id: run.agent_id.clone(),
        termination: Termination::Outcome {
            outcome: JsonText::from_value(&c.outcome),
        },
    })])
}

fn end_abandoned_runs(state: &State, c: &EndAbandonedRuns) -> Vec<Event> {
    state
        .runs()
        .filter(|run| !run.is_ended())
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
