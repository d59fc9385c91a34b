//! The daemon's state: a pure fold of the event log.
//!
//! [`State::apply`] is the only way the state changes. It reads nothing but the event and
//! the state (no clock, no I/O, no randomness: every time and id comes from the events), so
//! replaying the same log always gives the same state, in the daemon, in `car-replay` and
//! in tests. An event that contradicts the state is an [`ApplyError`] naming its seq.
//!
//! What is kept in memory is what decisions and reads need, not the log's contents: a run
//! holds its turn *count* and a per-run index of the seqs of its events, and a trace is
//! read back from the log through that index ([`crate::trace`]), so reading any run costs
//! O(its own events), and memory does not grow with turn sizes.
//!
//! [`State`] is the composition of one slice per aggregate, each in its own module with its
//! fold and its decisions: [`crate::sessions`], [`crate::runs`], [`crate::approvals`],
//! [`crate::subscriptions`], [`crate::tool_calls`], [`crate::proposals`],
//! [`crate::memory`] and [`crate::agents`]. This module keeps what they share: the seq check, the dispatch of
//! each event to its aggregate's fold, the daemon's own lifecycle, the host feed's index,
//! the reads (delegations to the slices, and those that join them, like run access) and
//! the fold's errors ([`ApplyError`], [`Contradiction`]). The aggregates' types are
//! re-exported here, so `car_projections::state::Run` and the like still name them.

use std::collections::VecDeque;

use car_events::event::{DaemonStarted, Event};
use car_events::{Envelope, Fold, Seq};
use chrono::{DateTime, Utc};

use crate::access::Actor;
use crate::agents::{Agent, Agents};
use crate::approvals::Approvals;
pub use crate::approvals::{Approval, ApprovalStatus};
use crate::chats::Chats;
use crate::gateways::Gateways;
use crate::memory::Memory;
pub use crate::proposals::Proposal;
use crate::proposals::Proposals;
use crate::runs::Runs;
pub use crate::runs::{MAX_TURNS_PER_RUN, Run, RunEnd, RunStatus, TurnBatch};
pub use crate::sessions::Session;
use crate::sessions::Sessions;
pub use crate::subscriptions::Subscription;
use crate::subscriptions::Subscriptions;
pub use crate::tool_calls::ToolCall;
use crate::tool_calls::ToolCalls;

/// How many recent host-feed events the state indexes (for `host.subscribe`'s last 100
/// and `host.events` paging): 80 KiB of seqs, hours of a busy daemon's feed.
pub const HOST_FEED_WINDOW: usize = 10_000;

/// The daemon instance that last started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    /// Its `daemon.started` event.
    pub started_seq: Seq,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its version.
    pub version: String,
    /// Its pid.
    pub pid: u32,
    /// Whether its start-up recovery finished.
    pub recovered: bool,
    /// Whether it stopped cleanly.
    pub stopped: bool,
}

/// An event that cannot follow the events before it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event at seq {seq} ({kind}) contradicts the state: {contradiction}")]
pub struct ApplyError {
    /// The event's seq.
    pub seq: Seq,
    /// The event's kind.
    pub kind: &'static str,
    /// What it contradicts.
    pub contradiction: Contradiction,
}

/// What an event contradicts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Contradiction {
    /// Seqs must increase by exactly one.
    #[error("expected seq {expected}")]
    OutOfOrder {
        /// The seq that should come next.
        expected: Seq,
    },
    /// A session id that is not open.
    #[error("session `{0}` is not open")]
    UnknownSession(String),
    /// A session id that is already open.
    #[error("session `{0}` is already open")]
    SessionAlreadyOpen(String),
    /// A second `session.authenticated` for a session that already authenticated.
    #[error("session `{0}` is already authenticated")]
    AlreadyAuthenticated(String),
    /// A `session.closed` describing the session otherwise than it is (role or agent).
    #[error("session `{client_id}` is {expected}, not {got}")]
    SessionMismatch {
        /// The session.
        client_id: String,
        /// What it is.
        expected: String,
        /// What the event says.
        got: String,
    },
    /// An agent identity already attached to another open session.
    #[error("agent `{agent_id}` is already attached to session `{client_id}`")]
    AgentAttached {
        /// The agent.
        agent_id: String,
        /// The session holding it.
        client_id: String,
    },
    /// A run id that is not retained.
    #[error("run `{0}` is unknown or evicted")]
    UnknownRun(String),
    /// A run id already used.
    #[error("run `{0}` already exists")]
    DuplicateRun(String),
    /// A turn or a second terminal after a run's end.
    #[error("run `{0}` has already ended")]
    RunEnded(String),
    /// An event names a run with another agent than the run's.
    #[error("run `{run_id}` belongs to agent `{expected}`, not `{got}`")]
    AgentMismatch {
        /// The run.
        run_id: String,
        /// Its agent.
        expected: String,
        /// The agent the event names.
        got: String,
    },
    /// A second outcome of a proposal's action, or one of an action it does not have.
    #[error("proposal `{proposal_id}` has no open action `{action_id}`")]
    ActionOutcome {
        /// The proposal.
        proposal_id: String,
        /// The action.
        action_id: String,
    },
    /// A `runs.cancel` step that does not follow from the ones before it, or a receipt
    /// whose digests do not recompute (PROTOCOL.md §14.1).
    #[error("run `{run_id}`: cancellation: {problem}")]
    Cancellation {
        /// The run.
        run_id: String,
        /// What is wrong.
        problem: String,
    },
    /// A `run.resumed` the run or the session cannot take (PROTOCOL.md §14.2).
    #[error("run `{run_id}` cannot be resumed: {problem}")]
    Resume {
        /// The run.
        run_id: String,
        /// Why.
        problem: String,
    },
    /// An eviction of a run that has not ended.
    #[error("run `{0}` is still in progress")]
    RunInProgress(String),
    /// Turn indices must be contiguous.
    #[error("run `{run_id}` expects turn index {expected}, got {got}")]
    TurnIndex {
        /// The run.
        run_id: String,
        /// Its turn count.
        expected: u32,
        /// The batch's base index.
        got: u32,
    },
    /// More turns than a run may hold.
    #[error("run `{run_id}` would hold {count} turns (at most {MAX_TURNS_PER_RUN})")]
    TurnCeiling {
        /// The run.
        run_id: String,
        /// The count it would reach.
        count: u64,
    },
    /// An approval id that does not exist.
    #[error("approval `{0}` is unknown")]
    UnknownApproval(String),
    /// An approval id already used.
    #[error("approval `{0}` already exists")]
    DuplicateApproval(String),
    /// A resolution or expiry of an approval that is not pending.
    #[error("approval `{id}` is {status}, not pending")]
    ApprovalNotPending {
        /// The approval.
        id: String,
        /// Its status.
        status: &'static str,
    },
    /// A resolution that is not one of the approval's options.
    #[error("resolution `{resolution}` is not an option of approval `{id}`")]
    NotAnOption {
        /// The approval.
        id: String,
        /// The resolution.
        resolution: String,
    },
    /// A subscription id that is not open.
    #[error("subscription `{0}` is not open")]
    UnknownSubscription(String),
    /// A subscription id already open.
    #[error("subscription `{0}` is already open")]
    DuplicateSubscription(String),
    /// A tool call that is not in flight.
    #[error("tool call `{0}` is not in flight")]
    UnknownToolCall(String),
    /// A tool call id already in flight.
    #[error("tool call `{0}` is already in flight")]
    DuplicateToolCall(String),
    /// A proposal that is not in progress.
    #[error("proposal `{0}` is not in progress")]
    UnknownProposal(String),
    /// A proposal id already in progress.
    #[error("proposal `{0}` is already in progress")]
    DuplicateProposal(String),
    /// A memory event that contradicts memory.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryContradiction),
    /// An agent event that contradicts the registered agents.
    #[error(transparent)]
    Agent(#[from] crate::agents::AgentContradiction),
    /// A chat event that does not follow (PROTOCOL.md §13).
    #[error(transparent)]
    Chat(#[from] crate::chats::ChatContradiction),
}

/// The state of the daemon at a position of its log.
#[derive(Debug, Clone, Default)]
pub struct State {
    head: Seq,
    daemon: Option<Daemon>,
    /// Open sessions and the agent identities attached to them.
    sessions: Sessions,
    /// Retained runs and the idempotency keys of evicted ones.
    runs: Runs,
    approvals: Approvals,
    subscriptions: Subscriptions,
    tool_calls: ToolCalls,
    /// Proposals in progress and where their results are in the log.
    proposals: Proposals,
    /// Seqs of the last [`HOST_FEED_WINDOW`] host-feed events, ascending.
    host_feed: VecDeque<Seq>,
    /// Memory: its own slice, folded by [`Memory::apply`].
    memory: Memory,
    /// Cluster mode: which gateway serves each session and holds each run in progress.
    gateways: Gateways,
    /// Registered agents (PROTOCOL.md §12), folded by [`Agents::apply`].
    registered_agents: Agents,
    /// Chats routed now (PROTOCOL.md §13), folded by [`Chats::apply`].
    chats: Chats,
}

impl Fold for State {
    type Error = ApplyError;

    fn apply(&mut self, envelope: &Envelope) -> Result<(), ApplyError> {
        State::apply(self, envelope)
    }
}

impl State {
    /// An empty state (before the first event).
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds one event into the state. On error the state is unchanged.
    pub fn apply(&mut self, env: &Envelope) -> Result<(), ApplyError> {
        let fail = |contradiction| ApplyError {
            seq: env.seq,
            kind: env.event.kind(),
            contradiction,
        };
        if env.seq != self.head + 1 {
            return Err(fail(Contradiction::OutOfOrder {
                expected: self.head + 1,
            }));
        }
        self.apply_event(env).map_err(fail)?;
        if crate::host_feed::is_host_event(&env.event) {
            if self.host_feed.len() == HOST_FEED_WINDOW {
                self.host_feed.pop_front();
            }
            self.host_feed.push_back(env.seq);
        }
        self.head = env.seq;
        Ok(())
    }

    fn apply_event(&mut self, env: &Envelope) -> Result<(), Contradiction> {
        let (seq, ts) = (env.seq, env.ts);
        match &env.event {
            Event::DaemonStarted(DaemonStarted { version, pid, .. }) => {
                self.daemon = Some(Daemon {
                    started_seq: seq,
                    started_at: ts,
                    version: version.clone(),
                    pid: *pid,
                    recovered: false,
                    stopped: false,
                });
            }
            Event::DaemonRecovered(_) => {
                if let Some(daemon) = &mut self.daemon {
                    daemon.recovered = true;
                }
            }
            Event::DaemonStopped(_) => {
                if let Some(daemon) = &mut self.daemon {
                    daemon.stopped = true;
                }
            }
            Event::SessionOpened(_)
            | Event::SessionAuthenticated(_)
            | Event::SessionClosed(_)
            | Event::SessionHalted(_)
            | Event::HaltCleared(_) => self.sessions.apply(env)?,
            Event::RunStarted(_)
            | Event::TurnsRecorded(_)
            | Event::RunEnded(_)
            | Event::RunEvicted(_)
            | Event::RunCancellationRequested(_)
            | Event::RunCancellationResult(_) => self.runs.apply(env)?,
            Event::RunResumed(e) => {
                let bound = self
                    .sessions
                    .get(&e.client_id)
                    .map(|s| s.agent_id.as_deref());
                match bound {
                    None => return Err(Contradiction::UnknownSession(e.client_id.clone())),
                    Some(agent) if agent != Some(e.agent_id.as_str()) => {
                        return Err(Contradiction::Resume {
                            run_id: e.run_id.clone(),
                            problem: format!(
                                "session `{}` is not bound to agent `{}`",
                                e.client_id, e.agent_id
                            ),
                        });
                    }
                    Some(_) => self.runs.apply(env)?,
                }
            }
            Event::ToolCallDispatched(_)
            | Event::ToolCallCompleted(_)
            | Event::ToolCallFailed(_)
            | Event::ToolCallTimedOut(_)
            | Event::ToolCallCancelled(_)
            | Event::ToolCallIndeterminate(_) => {
                let ended = match &env.event {
                    Event::ToolCallDispatched(_) => None,
                    _ => crate::tool_calls::request_id(&env.event)
                        .and_then(|id| self.tool_calls.get(id))
                        .map(|call| call.dispatch.clone()),
                };
                let runs = &mut self.runs;
                self.tool_calls
                    .apply(env, |run_id| runs.relate(run_id, seq))?;
                if let Some(dispatch) = ended {
                    self.proposals.call_ended(&dispatch, &env.event);
                }
            }
            Event::ProposalSubmitted(_)
            | Event::ProposalActionFinished(_)
            | Event::ProposalFinished(_)
            | Event::ProposalResultRecorded(_) => {
                let runs = &mut self.runs;
                self.proposals
                    .apply(env, |run_id| runs.relate(run_id, seq))?;
            }
            Event::ApprovalRequestedInRun(e) => {
                self.approvals.apply(env)?;
                self.runs.relate(Some(&e.run_id), seq);
            }
            Event::ApprovalRequested(_)
            | Event::ApprovalResolved(_)
            | Event::ApprovalExpired(_) => self.approvals.apply(env)?,
            Event::SubscriptionOpened(_) | Event::SubscriptionClosed(_) => {
                let sessions = &self.sessions;
                self.subscriptions
                    .apply(env, |client_id| sessions.is_open(client_id))?;
            }
            Event::MemoryFactAdded(_)
            | Event::MemoryFactDeleted(_)
            | Event::MemoryScopeLoaded(_)
            | Event::MemoryScopePersisted(_) => self.memory.apply(env)?,
            // Folded below, with the attribution the events above move.
            Event::SessionOnGateway(_) => {}
            // A record for audits: the events that follow it do the ending.
            Event::GatewayLost(_) => {}
            Event::AgentUpserted(_)
            | Event::AgentTokenRotated(_)
            | Event::AgentRemoved(_)
            | Event::AgentStartRequested(_)
            | Event::AgentStopRequested(_)
            | Event::AgentProcessSpawned(_)
            | Event::AgentProcessExited(_)
            | Event::AgentBackoffScheduled(_)
            | Event::AgentStatusChanged(_) => self.registered_agents.apply(env)?,
            Event::ChatStarted(_)
            | Event::ChatCancelRequested(_)
            | Event::ChatTerminal(_)
            | Event::ChatRouteDropped(_) => self.chats.apply(env)?,
            Event::ApprovalRequestedInChat(e) => {
                if self.chats.get(&e.session_id).is_none() {
                    return Err(
                        crate::chats::ChatContradiction::NotRouted(e.session_id.clone()).into(),
                    );
                }
                self.approvals.apply(env)?;
                self.chats.apply(env)?;
                let caller = self
                    .chats
                    .get(&e.session_id)
                    .and_then(|c| c.caller_client_id.as_ref());
                self.approvals
                    .link_chat(&e.approval.approval_id, &e.session_id, caller);
            }
        }
        let sessions = &self.sessions;
        self.gateways
            .apply(env, |client_id| sessions.is_open(client_id))
    }
}

/// Reads.
impl State {
    /// The seq of the last event applied (0 before the first).
    pub fn head(&self) -> Seq {
        self.head
    }

    /// The daemon that last started.
    pub fn daemon(&self) -> Option<&Daemon> {
        self.daemon.as_ref()
    }

    /// An open session.
    pub fn session(&self, client_id: &str) -> Option<&Session> {
        self.sessions.get(client_id)
    }

    /// Every open session, by id.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.iter()
    }

    /// The session an agent identity is attached to.
    pub fn agent_session(&self, agent_id: &str) -> Option<&str> {
        self.sessions.agent_session(agent_id)
    }

    /// Attached agent identities and their sessions, by agent id.
    pub fn agents(&self) -> impl Iterator<Item = (&str, &str)> {
        self.sessions.agents()
    }

    /// A registered agent (PROTOCOL.md §12).
    pub fn registered_agent(&self, agent_id: &str) -> Option<&Agent> {
        self.registered_agents.get(agent_id)
    }

    /// The chats routed now (PROTOCOL.md §13).
    pub fn chats(&self) -> &Chats {
        &self.chats
    }

    /// The registered agents slice, for its decisions and reads.
    pub fn registered_agents(&self) -> &Agents {
        &self.registered_agents
    }

    /// A retained run, whoever asks.
    pub fn run(&self, run_id: &str) -> Option<&Run> {
        self.runs.get(run_id)
    }

    /// Retained runs, oldest start first.
    pub fn runs(&self) -> impl DoubleEndedIterator<Item = &Run> {
        self.runs.by_start()
    }

    /// How many runs are retained.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// The agent of an evicted run whose idempotency key stays taken.
    pub fn retired_key(&self, run_id: &str) -> Option<&str> {
        self.runs.retired_key(run_id)
    }

    /// Evicted runs whose idempotency keys stay taken.
    pub fn retired_keys(&self) -> impl Iterator<Item = (&str, &str)> {
        self.runs.retired_keys()
    }

    /// Whether `actor` owns `run` (may write it).
    pub fn is_owner(&self, actor: &Actor, run: &Run) -> bool {
        actor.unrestricted
            || run.owner.as_deref() == Some(actor.client_id.as_str())
            || actor.bound_agent() == Some(run.agent_id.as_str())
    }

    /// Whether `actor` may read `run`.
    pub fn is_reader(&self, actor: &Actor, run: &Run) -> bool {
        actor.has_host_rights() || self.is_owner(actor, run)
    }

    /// A run as `actor` sees it: `None` when unknown, evicted, or not readable by it.
    pub fn readable_run(&self, actor: &Actor, run_id: &str) -> Option<&Run> {
        self.runs
            .get(run_id)
            .filter(|run| self.is_reader(actor, run))
    }

    /// A run `actor` may write: `None` when unknown, evicted, or not owned by it.
    pub fn owned_run(&self, actor: &Actor, run_id: &str) -> Option<&Run> {
        self.runs
            .get(run_id)
            .filter(|run| self.is_owner(actor, run))
    }

    /// Whether a live session other than `except` owns `run`.
    pub fn has_live_owner(&self, run: &Run, except: Option<&str>) -> bool {
        let starter_live = run
            .owner
            .as_deref()
            .is_some_and(|owner| Some(owner) != except && self.sessions.is_open(owner));
        let agent_live = self
            .sessions
            .agent_session(&run.agent_id)
            .is_some_and(|client| Some(client) != except);
        starter_live || agent_live
    }

    /// An approval.
    pub fn approval(&self, id: &str) -> Option<&Approval> {
        self.approvals.get(id)
    }

    /// Every approval, oldest first.
    pub fn approvals(&self) -> Vec<&Approval> {
        self.approvals.oldest_first()
    }

    /// An open subscription.
    pub fn subscription(&self, id: &str) -> Option<&Subscription> {
        self.subscriptions.get(id)
    }

    /// Every open subscription, by id.
    pub fn subscriptions(&self) -> impl Iterator<Item = &Subscription> {
        self.subscriptions.iter()
    }

    /// A tool call in flight.
    pub fn tool_call(&self, request_id: &str) -> Option<&ToolCall> {
        self.tool_calls.get(request_id)
    }

    /// Every tool call in flight, by request id.
    pub fn tool_calls(&self) -> impl Iterator<Item = &ToolCall> {
        self.tool_calls.iter()
    }

    /// The principal (`proposal.result`'s readers, §14.5) of the session `client_id`, as
    /// its role and agent binding say; `client` for a session the state no longer knows.
    pub fn principal_of(&self, client_id: &str) -> String {
        let session = self.session(client_id);
        crate::access::principal(
            session.and_then(|s| s.role),
            session.and_then(|s| s.agent_id.as_deref()),
        )
    }

    /// A proposal in progress.
    pub fn proposal(&self, id: &str) -> Option<&Proposal> {
        self.proposals.get(id)
    }

    /// The seq of the latest `proposal.result` of proposal `id` that `principal` made; for
    /// `None`, the latest of anyone's (a host's read).
    pub fn proposal_result(&self, principal: Option<&str>, id: &str) -> Option<Seq> {
        self.proposals.result(principal, id)
    }

    /// The seq of the latest `proposal.result` of proposal `id` made under run `run_id`
    /// (what `proposal.submit` answers on a resumed run, §14.2).
    pub fn proposal_result_in_run(&self, run_id: &str, id: &str) -> Option<Seq> {
        self.proposals.result_in_run(run_id, id)
    }

    /// Seqs of the recent host-feed events, ascending (at most [`HOST_FEED_WINDOW`]).
    pub fn host_feed(&self) -> &VecDeque<Seq> {
        &self.host_feed
    }

    /// Memory: every scope's facts (PROTOCOL.md §11).
    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// Every proposal in progress, by id.
    pub fn proposals(&self) -> impl Iterator<Item = &Proposal> {
        self.proposals.iter()
    }

    /// Every stored proposal result: `(proposal id, principal, seq)`, by id.
    pub fn proposal_results(&self) -> impl Iterator<Item = (&str, &str, Seq)> {
        self.proposals.results()
    }

    /// Cluster mode: the gateway serving an open session, if known (§19).
    pub fn session_gateway(&self, client_id: &str) -> Option<&str> {
        self.gateways.of_session(client_id)
    }

    /// Cluster mode: the gateway holding a run in progress, if known (§19).
    pub fn run_gateway(&self, run_id: &str) -> Option<&str> {
        self.gateways.of_run(run_id)
    }

    pub(crate) fn gateways(&self) -> &Gateways {
        &self.gateways
    }
}
