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
//!
//! This module holds what every decision shares ([`Command`], [`Refusal`], [`Dropped`]) and
//! the [`decide`] dispatch; each aggregate's commands and decisions live in its own module
//! ([`crate::sessions`], [`crate::runs`], [`crate::approvals`], [`crate::subscriptions`],
//! [`crate::proposals`], [`crate::tool_calls`], [`crate::halts`], [`crate::memory`]) and
//! are re-exported here, so `car_projections::decide::StartRun` and the like still name
//! them.

use car_events::event::{Event, ProposalFinished, ProposalSubmitted};

pub use crate::agents::{AgentCommand, AgentRefusal};
pub use crate::chats::{ChatCommand, ChatRefusal};

pub use crate::approvals::{ExpireApproval, RequestApproval, ResolveApproval};
use crate::approvals::{expire_approval, request_approval, resolve_approval};
use crate::memory::{self, MemoryRefusal};
use crate::proposals::{complete_proposal, finish_action, finish_proposal, submit_proposal};
use crate::runs::decide::{complete_run, end_abandoned_runs, record_turns, start_run};
pub use crate::runs::{
    AdmittedTurns, CompleteRun, EndAbandonedRuns, RecordTurns, StartRun, agent_slug,
};
pub use crate::sessions::{Authenticate, CloseSession, OpenSession};
use crate::sessions::{authenticate, close_session, open_session};
use crate::state::State;
pub use crate::subscriptions::{Subscribe, SubscriptionSelector, Unsubscribe};
use crate::subscriptions::{subscribe, unsubscribe};
pub use crate::tool_calls::{DispatchToolCall, FinishToolCall, ToolCallOutcome};
use crate::tool_calls::{dispatch_tool_call, finish_tool_call};

/// Why `runs.record_turns` appended nothing (the `dropped` field of its soft result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dropped {
    /// Unknown, evicted, or not owned by the caller.
    RunNotFound,
    /// The run has ended.
    RunTerminal,
    /// The batch would pass [`MAX_TURNS_PER_RUN`](crate::runs::MAX_TURNS_PER_RUN).
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
    /// `-32602`: `runs.cancel` with a key used before with another reason or principal.
    #[error("runs.cancel: idempotency_key already used with a different reason or principal")]
    CancelKeyReused,
    /// `-32603`: `runs.cancel` of a run nobody holds, by someone who is not a host.
    #[error("run cancellation control is unavailable")]
    CancelUnavailable,
    /// `-32603`: a write to a quarantined run (§14.1).
    #[error("run `{0}` has an unconfirmed cancellation")]
    Quarantined(String),
    /// A memory refusal (`-32602` or `-32603`, see [`MemoryRefusal::code`]), its message
    /// the contract's, word for word.
    #[error(transparent)]
    Memory(#[from] MemoryRefusal),
    /// An agents refusal (`-32602` or `-32603`, see [`AgentRefusal::is_invalid_params`]).
    #[error(transparent)]
    Agent(#[from] AgentRefusal),
    /// A chat refusal (`-32602` or `-32603`, see [`ChatRefusal::is_invalid_params`]).
    #[error(transparent)]
    Chat(#[from] ChatRefusal),
}

/// Every write of the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A connection was accepted.
    OpenSession(OpenSession),
    /// Cluster mode (§19): a connection was accepted by the gateway named second.
    OpenSessionOnGateway(OpenSession, String),
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
    /// One step of `runs.cancel` (§14.1).
    AdvanceCancel(crate::runs::cancel::AdvanceCancel),
    /// `runs.resume` (§14.2).
    ResumeRun(crate::runs::resume::ResumeRun),
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
    /// `agents.*` and the supervisor's records (PROTOCOL.md §12).
    Agent(AgentCommand),
    /// `agents.chat*` and the relay's records (PROTOCOL.md §13).
    Chat(ChatCommand),
}

/// Decides a command against the state.
pub fn decide(state: &State, command: &Command) -> Result<Vec<Event>, Refusal> {
    match command {
        Command::Agent(c) => Ok(crate::agents::decide::decide(state.registered_agents(), c)?),
        Command::Chat(c) => Ok(crate::chats::decide::decide(state, c)?),
        Command::OpenSession(c) => Ok(open_session(c)),
        Command::OpenSessionOnGateway(c, gateway_id) => {
            let mut events = open_session(c);
            events.push(Event::SessionOnGateway(
                car_events::event::SessionOnGateway {
                    client_id: c.client_id.clone(),
                    gateway_id: gateway_id.clone(),
                },
            ));
            Ok(events)
        }
        Command::Authenticate(c) => authenticate(state, c),
        Command::CloseSession(c) => Ok(close_session(state, c)),
        Command::StartRun(c) => start_run(state, c),
        Command::RecordTurns(c) => record_turns(state, c),
        Command::CompleteRun(c) => complete_run(state, c),
        Command::AdvanceCancel(c) => crate::runs::cancel::advance(state, c),
        Command::ResumeRun(c) => crate::runs::resume::resume_run(state, c),
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
