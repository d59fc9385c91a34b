//! The event vocabulary: everything the daemon ever records, in the past tense.
//!
//! # Frozen shapes
//! Events are stored forever, and the binary codec (bincode) identifies enum variants by
//! their position and struct fields by their order. Therefore:
//! - never reorder, remove or rename-in-place a variant of any enum here;
//! - never add, remove or reorder a field of a shipped payload struct;
//! - new facts get **new variants appended at the end** (or a new payload with a new
//!   variant), and the golden fixtures in `tests/fixtures/` must keep decoding.
//!
//! The `#[serde(rename)]`s only affect the human-readable rendering (`kind` names in the
//! `{seq, ts, kind, data}` JSON), which is part of the contract of `log.read`, `log.event`
//! and `car-replay`, so they are frozen too.
//!
//! No `skip_serializing_if`, `flatten`, `tag` or `untagged` may appear here: bincode cannot
//! round-trip them.

use serde::{Deserialize, Serialize};

use crate::json_text::JsonText;

/// A session's role, fixed by `session.auth` (see PROTOCOL.md §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The daemon token.
    Client,
    /// The daemon token bound to an `agent_id`.
    Agent,
    /// The host token.
    Host,
}

impl Role {
    /// The wire name of the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Agent => "agent",
            Role::Host => "host",
        }
    }
}

/// Why a run ended without an outcome (PROTOCOL.md §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncompleteReason {
    /// Its owner left and the grace period expired.
    Disconnected,
    /// Found unfinished at start-up after a crash.
    DaemonRestart,
    /// The daemon stopped while it ran.
    DaemonShutdown,
    /// A host cancelled it while no live session held it (`runs.cancel`, PROTOCOL.md §14.1).
    CancelledOrphan,
    /// Cluster mode (PROTOCOL.md §19): the gateway that held it died (its heartbeat lapsed)
    /// and another gateway declared it lost.
    GatewayLost,
}

impl IncompleteReason {
    /// The wire name of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            IncompleteReason::Disconnected => "disconnected",
            IncompleteReason::DaemonRestart => "daemon_restart",
            IncompleteReason::DaemonShutdown => "daemon_shutdown",
            IncompleteReason::CancelledOrphan => "cancelled_orphan",
            IncompleteReason::GatewayLost => "gateway_lost",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Termination {
    /// `runs.complete` with the client's outcome object (`{status, summary?, …}`).
    Outcome {
        /// The outcome exactly as the client sent it.
        outcome: JsonText,
    },
    /// Ended by the daemon without an outcome.
    Incomplete {
        /// Why.
        reason: IncompleteReason,
    },
    /// Ended by `runs.cancel` (PROTOCOL.md §14.1). The reason itself is never stored.
    Cancelled {
        /// The cancellation's idempotency key.
        idempotency_key: String,
        /// Lowercase hex SHA-256 of the reason's UTF-8.
        reason_digest: String,
    },
}

/// Why retention removed a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictionReason {
    /// Ended longer ago than the retention window.
    Age,
    /// Among the oldest ended runs beyond the maximum run count.
    Count,
}

/// What a subscription follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionTarget {
    /// `runs.subscribe`: one run's trace, from turn `cursor` on.
    Run {
        /// The run followed.
        run_id: String,
        /// The first turn index the subscriber asked for.
        cursor: u32,
    },
    /// `log.subscribe`: the raw log from `from_seq` on.
    Log {
        /// The first seq delivered.
        from_seq: u64,
    },
    /// `host.subscribe`: the host feed.
    Host,
}

/// The daemon process started and owns the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStarted {
    /// `car-server` version.
    pub version: String,
    /// OS process id.
    pub pid: u32,
    /// The data directory, as given.
    pub data_dir: String,
    /// The address it listens on.
    pub listen: String,
}

/// Start-up recovery finished; counts of what it did (the events themselves precede it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonRecovered {
    /// Events replayed to rebuild the state.
    pub events_replayed: u64,
    /// Runs found in progress and ended `incomplete`/`daemon_restart`.
    pub runs_adopted: u32,
    /// Sessions found open and closed.
    pub sessions_closed: u32,
    /// Pending approvals expired.
    pub approvals_expired: u32,
    /// Subscriptions found open and closed.
    pub subscriptions_closed: u32,
    /// Tool calls found in flight and cancelled.
    pub tool_calls_cancelled: u32,
    /// Runs evicted by retention.
    pub runs_evicted: u32,
}

/// The daemon stopped cleanly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStopped {
    /// Why (`"signal"`, …).
    pub reason: String,
}

/// A WebSocket connection was accepted: one connection is one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOpened {
    /// The session's id (`session_id` on the wire, `client_id` in the host feed).
    pub client_id: String,
    /// The peer address.
    pub peer: String,
    /// Set at once when auth is disabled; otherwise `None` until [`SessionAuthenticated`].
    pub role: Option<Role>,
    /// The bound agent, when known at open.
    pub agent_id: Option<String>,
}

/// `session.auth` succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionAuthenticated {
    /// The session.
    pub client_id: String,
    /// Its role from now on.
    pub role: Role,
    /// The agent identity it is bound to (role `agent`).
    pub agent_id: Option<String>,
}

/// A session ended (close, error, timeout, shutdown, or found open at recovery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClosed {
    /// The session.
    pub client_id: String,
    /// Its role when it ended (`None`: it never authenticated).
    pub role: Option<Role>,
    /// The agent it was bound to.
    pub agent_id: Option<String>,
    /// Why (`"closed"`, `"timeout"`, `"daemon_restart"`, …).
    pub reason: String,
}

/// `runs.start` created a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStarted {
    /// The run id (a UUID or the idempotency key).
    pub run_id: String,
    /// The resolved agent id.
    pub agent_id: String,
    /// The session that started it (its first owner).
    pub client_id: Option<String>,
    /// What the run is for.
    pub intent: String,
    /// The client's description of a good outcome.
    pub outcome_description: Option<String>,
    /// The idempotency key, when the client gave one.
    pub idempotency_key: Option<String>,
}

/// Turns appended to a run, indices `base_index .. base_index + turns.len()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnsRecorded {
    /// The run.
    pub run_id: String,
    /// Index of the first turn of this batch.
    pub base_index: u32,
    /// Each turn as the JSON object the client sent, after truncation, without `index`,
    /// `record` and `recorded_at` (those are the daemon's: the index from `base_index`, the
    /// time from the envelope) and with `verifier_verdict`/`policy_rejected` defaulted.
    pub turns: Vec<JsonText>,
}

/// A run reached its terminal state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEnded {
    /// The run.
    pub run_id: String,
    /// Its agent (so the event tells the whole story without the run's start).
    pub agent_id: String,
    /// How it ended.
    pub termination: Termination,
}

/// Retention removed a run from every read; its events stay in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEvicted {
    /// The run.
    pub run_id: String,
    /// Its agent.
    pub agent_id: String,
    /// Which retention rule.
    pub reason: EvictionReason,
}

/// The daemon sent `tools.execute` to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallDispatched {
    /// The JSON-RPC id of the request (correlates the reply).
    pub request_id: String,
    /// The session asked to run the tool.
    pub client_id: String,
    /// The proposal the action belongs to.
    pub proposal_id: String,
    /// The action.
    pub action_id: String,
    /// The tool.
    pub tool: String,
    /// The action's parameters.
    pub parameters: JsonText,
    /// 1 for the first attempt, +1 per retry.
    pub attempt: u32,
    /// How long the daemon waits for the reply.
    pub timeout_ms: u64,
    /// The session's current run, if any: the finished action becomes one of its turns.
    pub run_id: Option<String>,
}

/// The client answered a tool call with a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallCompleted {
    /// The call.
    pub request_id: String,
    /// The result.
    pub output: JsonText,
    /// Time from dispatch to reply, measured by the daemon.
    pub elapsed_ms: u64,
}

/// The client answered a tool call with an error (or an `{"error": …}` result).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallFailed {
    /// The call.
    pub request_id: String,
    /// The error message.
    pub error: String,
    /// Time from dispatch to reply, measured by the daemon.
    pub elapsed_ms: u64,
}

/// No reply came before the deadline; `tools.cancel` was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallTimedOut {
    /// The call.
    pub request_id: String,
    /// The deadline that passed.
    pub elapsed_ms: u64,
}

/// The call was abandoned without a reply (the client left, the daemon stopped or restarted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallCancelled {
    /// The call.
    pub request_id: String,
    /// Why (`"disconnected"`, `"daemon_shutdown"`, `"daemon_restart"`).
    pub reason: String,
}

/// An approval was requested (by a client, or by the gate for a gated method or tool).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequested {
    /// The approval id.
    pub approval_id: String,
    /// The requesting session (it may never resolve its own request).
    pub client_id: Option<String>,
    /// The agent it concerns.
    pub agent_id: Option<String>,
    /// What is to be approved.
    pub action: String,
    /// Free-form details.
    pub details: JsonText,
    /// The allowed resolutions; the first one approves.
    pub options: Vec<String>,
    /// Whether any session other than the requester may resolve it.
    pub system_level: bool,
}

/// An approval got its (first and only) resolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalResolved {
    /// The approval.
    pub approval_id: String,
    /// One of its options.
    pub resolution: String,
    /// The session that resolved it.
    pub client_id: Option<String>,
}

/// A pending approval expired (gate timeout, or found pending at recovery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalExpired {
    /// The approval.
    pub approval_id: String,
    /// Why (`"timeout"`, `"daemon_restart"`).
    pub reason: String,
}

/// A live subscription began; its snapshot is the state at this event's seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionOpened {
    /// The subscription id.
    pub subscription_id: String,
    /// The subscribing session.
    pub client_id: String,
    /// What it follows.
    pub target: SubscriptionTarget,
}

/// A live subscription ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionClosed {
    /// The subscription.
    pub subscription_id: String,
    /// Why (`"unsubscribed"`, `"disconnected"`, `"daemon_restart"`, …).
    pub reason: String,
}

/// `proposal.submit` was accepted; its actions follow as tool-call events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalSubmitted {
    /// The proposal id.
    pub proposal_id: String,
    /// The submitting session.
    pub client_id: String,
    /// The session's current run, if any.
    pub run_id: Option<String>,
    /// The action ids, in order.
    pub action_ids: Vec<String>,
}

/// A proposal finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalFinished {
    /// The proposal.
    pub proposal_id: String,
    /// `"completed"` or `"failed"`.
    pub final_state: String,
}

/// Why a fact left its memory scope (PROTOCOL.md §11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FactRemoval {
    /// `memory.delete` (or MCP's `memory_delete`).
    Delete,
    /// `memory.consolidate` merged it into an older exact duplicate.
    Consolidate,
}

impl FactRemoval {
    /// The wire name of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            FactRemoval::Delete => "delete",
            FactRemoval::Consolidate => "consolidate",
        }
    }
}

/// One memory fact as recorded (PROTOCOL.md §11.1). Its `created_at` is not stored: it is
/// the time of the envelope that added (or loaded) it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemoryFact {
    /// The fact's id within its scope (`[A-Za-z0-9._:-]{1,128}`).
    pub fact_id: String,
    /// What it is about (1–1024 bytes).
    pub subject: String,
    /// The fact itself (1–16384 bytes).
    pub body: String,
    /// `[a-z_]{1,32}`; `identity`, `constraint`, `conversation` and `environment` pick
    /// context sections.
    pub kind: String,
    /// At most 32 tags of 1–64 bytes.
    pub tags: Vec<String>,
    /// Who contributed it (`user`, `mcp`, `load`, …; 1–64 bytes).
    pub source: String,
}

/// A fact was added to a memory scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryFactAdded {
    /// The scope: `shared`, `ns:<namespace>` or `agent:<agent_id>`.
    pub scope: String,
    /// The fact (its id minted by the daemon when the client gave none).
    pub fact: MemoryFact,
    /// The session that added it (`None`: not a WebSocket session, e.g. MCP).
    pub client_id: Option<String>,
}

/// A live fact left its memory scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryFactDeleted {
    /// The scope.
    pub scope: String,
    /// The fact.
    pub fact_id: String,
    /// Why.
    pub reason: FactRemoval,
    /// The session that asked (`None`: not a WebSocket session, e.g. MCP).
    pub client_id: Option<String>,
}

/// `memory.load` replaced the whole scope with a file's facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryScopeLoaded {
    /// The scope.
    pub scope: String,
    /// The file, relative to `DATA_DIR/memory/`.
    pub path: String,
    /// Every fact loaded, in the file's order: the scope's whole content from now on.
    pub facts: Vec<MemoryFact>,
    /// The session that asked.
    pub client_id: Option<String>,
}

/// `memory.persist` wrote the scope's live facts to a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryScopePersisted {
    /// The scope.
    pub scope: String,
    /// The file, relative to `DATA_DIR/memory/`.
    pub path: String,
    /// How many facts it holds.
    pub count: u64,
    /// The SHA-256 of the bytes written, lower-case hex.
    pub sha256: String,
    /// The session that asked.
    pub client_id: Option<String>,
}

/// A terminal tool failure halted a session (PROTOCOL.md §14.5): a `tools.execute` error
/// with `data.terminal: true`. The session's later proposals are rejected until a host
/// clears the halt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionHalted {
    /// The halted session.
    pub client_id: String,
    /// The proposal whose action failed.
    pub proposal_id: String,
    /// The action.
    pub action_id: String,
    /// The tool's error text.
    pub error: String,
}

/// `session.clear_halt`: a host session's halt was cleared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaltCleared {
    /// The session.
    pub client_id: String,
}

/// The final `proposal.submit` result, recorded before it is sent (PROTOCOL.md §14.5), for
/// `proposal.result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalResultRecorded {
    /// The proposal.
    pub proposal_id: String,
    /// Who may read it besides hosts: `agent:<agent_id>`, `client` or `host`.
    pub principal: String,
    /// The result exactly as `proposal.submit` answers it.
    pub result: JsonText,
}

/// One action of a proposal ended (PROTOCOL.md §14.5): how, as `proposal.submit`'s
/// `results[]` shows it. With the dispatch markers, what start-up needs to complete a
/// proposal cut off by a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalActionFinished {
    /// The proposal.
    pub proposal_id: String,
    /// The action.
    pub action_id: String,
    /// `succeeded`, `failed`, `rejected` or `indeterminate`.
    pub status: String,
    /// The output, when it succeeded.
    pub output: Option<JsonText>,
    /// The error text, when it did not.
    pub error: Option<String>,
    /// `tools.execute` attempts made.
    pub attempts: u32,
}

/// A tool call found without an outcome at start-up: the daemon stopped during its
/// dispatch, so whether the tool acted is unknown (PROTOCOL.md §14.5). It is never
/// dispatched again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallIndeterminate {
    /// The call.
    pub request_id: String,
    /// What its action's result says.
    pub error: String,
}

/// `runs.cancel` was asked to end a run (PROTOCOL.md §14.1): step 1 of a cancellation,
/// before the run's in-flight callback is abandoned. The reason is kept only as its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCancellationRequested {
    /// The run.
    pub run_id: String,
    /// The caller's idempotency key.
    pub idempotency_key: String,
    /// Lowercase hex SHA-256 of the reason's UTF-8.
    pub reason_digest: String,
    /// Who asked: `host`, `agent:<agent_id>` or `client:<client_id>`.
    pub principal: String,
}

/// How a cancellation ended, with the receipt `runs.cancel` answered (PROTOCOL.md §14.1):
/// a retry with the same key gets this receipt back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCancellationResult {
    /// The run.
    pub run_id: String,
    /// The cancellation's idempotency key.
    pub idempotency_key: String,
    /// `cancelled_confirmed`, `already_terminal` or `termination_unconfirmed` (the run
    /// is then quarantined until a host cancels it as an orphan).
    pub status: String,
    /// The receipt exactly as answered.
    pub receipt: JsonText,
}

/// An agent session took over a run whose producer was gone (`runs.resume`, PROTOCOL.md
/// §14.2): it is the session's current run from here on, for recovery only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResumed {
    /// The run.
    pub run_id: String,
    /// The run's agent.
    pub agent_id: String,
    /// The resuming session.
    pub client_id: String,
    /// The session that held the run before, when known.
    pub resumed_from_client_id: Option<String>,
}

/// An approval requested by a session with a current run (PROTOCOL.md §14.5): the
/// request as [`ApprovalRequested`] records it, and the run it was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequestedInRun {
    /// The request.
    pub approval: ApprovalRequested,
    /// The requesting session's current run.
    pub run_id: String,
}

/// Cluster mode (PROTOCOL.md §19): the session just opened is served by this gateway.
/// Appended in the same batch as its `session.opened`, so every session (and through it
/// every run it starts or resumes) can be told apart from other gateways' when its gateway
/// stops or dies. A separate event rather than a field of `session.opened`, whose shape is
/// frozen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOnGateway {
    /// The session.
    pub client_id: String,
    /// The gateway serving it (`--gateway-id`).
    pub gateway_id: String,
}

/// Cluster mode (PROTOCOL.md §19): a gateway's heartbeat lapsed; the maintenance lease
/// holder declared it lost. Its sessions' closings and its runs' `gateway_lost` endings
/// follow in the same batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayLost {
    /// The gateway declared lost.
    pub gateway_id: String,
    /// The gateway that declared it (the maintenance lease holder).
    pub declared_by: String,
}

/// A registered agent's status (PROTOCOL.md §12.1 `ManagedAgent.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// No process, and none will be started until asked.
    Stopped,
    /// Asked to start; the process is being spawned.
    Starting,
    /// Its process is alive.
    Running,
    /// Its process exited and a restart is scheduled.
    Backoff,
    /// Given up on: past `max_restarts`, or a spawn failed.
    Errored,
}

impl AgentStatus {
    /// The wire name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Stopped => "stopped",
            AgentStatus::Starting => "starting",
            AgentStatus::Running => "running",
            AgentStatus::Backoff => "backoff",
            AgentStatus::Errored => "errored",
        }
    }
}

/// How an agent's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentExit {
    /// It exited with this code.
    Code {
        /// The exit code.
        code: i32,
    },
    /// A signal ended it.
    Signal {
        /// The signal number.
        signal: i32,
    },
    /// The log shows it running at start-up: the daemon that supervised it is gone, and so
    /// (by `PR_SET_PDEATHSIG`) is the process.
    DaemonRestart,
}

/// `agents.upsert` registered an agent or replaced its spec (PROTOCOL.md §12.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentUpserted {
    /// The agent's id.
    pub agent_id: String,
    /// The `AgentSpec`, validated, as stored (`interpreter` already resolved).
    pub spec: JsonText,
    /// Lowercase hex SHA-256 of the token minted by this upsert (the first one of an id);
    /// `None` when the id already had a token. The token itself is never logged.
    pub token_sha256: Option<String>,
    /// Who asked (a principal: `host`, `client`, …).
    pub by: String,
}

/// An agent's token was replaced (`agents.upsert {rotate_token: true}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentTokenRotated {
    /// The agent.
    pub agent_id: String,
    /// Lowercase hex SHA-256 of the new token.
    pub token_sha256: String,
}

/// `agents.remove` unregistered an agent (its process was stopped first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRemoved {
    /// The agent.
    pub agent_id: String,
    /// Who asked.
    pub by: String,
}

/// Someone asked for an agent's process to run (`agents.start`, `agents.restart`,
/// `auto_start`). Resets its restart count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStartRequested {
    /// The agent.
    pub agent_id: String,
    /// Who asked (`host`, `agent:<id>`, `daemon` for `auto_start`).
    pub by: String,
}

/// Someone asked for an agent's process to stop; it is not restarted after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStopRequested {
    /// The agent.
    pub agent_id: String,
    /// Who asked (`host`, `agent:<id>`, `daemon` at shutdown or removal).
    pub by: String,
    /// `"term"` (SIGTERM, SIGKILL after the grace) or `"kill"`.
    pub signal: String,
}

/// An agent's process was spawned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentProcessSpawned {
    /// The agent.
    pub agent_id: String,
    /// Its OS process id (and process group id).
    pub pid: u32,
}

/// An agent's process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentProcessExited {
    /// The agent.
    pub agent_id: String,
    /// The process that ended.
    pub pid: u32,
    /// How.
    pub exit: AgentExit,
}

/// A restart of an agent was scheduled after an exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentBackoffScheduled {
    /// The agent.
    pub agent_id: String,
    /// Its restart count once the restart happens.
    pub restart_count: u32,
    /// The wait, from this event's time, before the restart.
    pub delay_ms: u64,
}

/// An agent's status changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatusChanged {
    /// The agent.
    pub agent_id: String,
    /// The new status.
    pub status: AgentStatus,
    /// Why, in a few words (`"spawned"`, `"exited"`, `"max_restarts reached"`, …).
    pub reason: String,
}

/// `agents.chat` started a chat relayed to an attached agent (PROTOCOL.md §13.1), or an
/// A2A task did (§15, caller role `a2a`). Recorded before the agent is asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatStarted {
    /// The chat's `session_id` (its route; an A2A task's id).
    pub session_id: String,
    /// The agent it is relayed to.
    pub agent_id: String,
    /// The agent's session (the connection its events must come from).
    pub agent_client_id: String,
    /// The caller's session (`None`: not a WebSocket session, e.g. an A2A task).
    pub caller_client_id: Option<String>,
    /// The caller's role: `host`, `client` or `a2a`.
    pub caller_role: String,
    /// The conversation it belongs to.
    pub conversation_id: String,
    /// The prompt, cut to 16 KiB at a character boundary.
    pub prompt: String,
    /// The prompt's full length in bytes.
    pub prompt_bytes: u64,
    /// How many attachments came with it.
    pub attachments: u32,
    /// Whether the caller asked for streamed events.
    pub stream: bool,
    /// The model asked for, if any.
    pub model: Option<String>,
}

/// A chat's cancellation was asked for (`agents.chat.cancel`, or an A2A `tasks/cancel`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatCancelRequested {
    /// The chat.
    pub session_id: String,
    /// Who asked: `host`, `client:<client_id>` or `a2a`.
    pub by: String,
}

/// A chat's terminal event reached (or was made for) its caller (PROTOCOL.md §13.1):
/// the agent's `done`, `error` or `auth_required`, or the daemon's own error (cancelled,
/// timed out, overflow, agent gone, shutting down).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTerminal {
    /// The chat.
    pub session_id: String,
    /// `done`, `error` or `auth_required`.
    pub kind: String,
    /// `done`'s `finish_reason`, cut to 1 KiB.
    pub finish_reason: Option<String>,
    /// The error (`error`) or message (`auth_required`), cut to 1 KiB.
    pub error: Option<String>,
}

/// A chat's route was dropped: nothing more is relayed for it (PROTOCOL.md §13.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatRouteDropped {
    /// The chat.
    pub session_id: String,
    /// `terminal`, `cancelled`, `ack_failed`, `agent_disconnect`, `caller_disconnect`,
    /// `idle_timeout`, `overflow`, `daemon_shutdown` or `daemon_restart`.
    pub reason: String,
}

/// An approval an agent asked for inside a chat (`approval_pending`, PROTOCOL.md §13.2),
/// mirrored as a §5 approval requested by the agent's session: the request as
/// [`ApprovalRequested`] records it, and the chat it belongs to (whose caller may resolve
/// it, and whose end expires it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequestedInChat {
    /// The request.
    pub approval: ApprovalRequested,
    /// The chat's `session_id`.
    pub session_id: String,
}

macro_rules! events {
    ($( $(#[$doc:meta])* $variant:ident($payload:ident) = $kind:literal, )*) => {
        /// Every fact the daemon records. Variant order is frozen (see the module docs).
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub enum Event {
            $( $(#[$doc])* #[serde(rename = $kind)] $variant($payload), )*
        }

        impl Event {
            /// Every event kind name, in variant order.
            pub const KINDS: &'static [&'static str] = &[$($kind),*];

            /// The stable kind name (`"run.started"`, …) used in the JSON rendering.
            pub fn kind(&self) -> &'static str {
                match self {
                    $( Event::$variant(_) => $kind, )*
                }
            }
        }

        $(
            impl From<$payload> for Event {
                fn from(payload: $payload) -> Self {
                    Event::$variant(payload)
                }
            }
        )*
    };
}

events! {
    /// The daemon started.
    DaemonStarted(DaemonStarted) = "daemon.started",
    /// Start-up recovery finished.
    DaemonRecovered(DaemonRecovered) = "daemon.recovered",
    /// The daemon stopped cleanly.
    DaemonStopped(DaemonStopped) = "daemon.stopped",
    /// A connection was accepted.
    SessionOpened(SessionOpened) = "session.opened",
    /// A session authenticated.
    SessionAuthenticated(SessionAuthenticated) = "session.authenticated",
    /// A session ended.
    SessionClosed(SessionClosed) = "session.closed",
    /// A run started.
    RunStarted(RunStarted) = "run.started",
    /// Turns were appended to a run.
    TurnsRecorded(TurnsRecorded) = "run.turns_recorded",
    /// A run ended.
    RunEnded(RunEnded) = "run.ended",
    /// A run was evicted by retention.
    RunEvicted(RunEvicted) = "run.evicted",
    /// A tool call was sent to a client.
    ToolCallDispatched(ToolCallDispatched) = "tool_call.dispatched",
    /// A tool call returned a result.
    ToolCallCompleted(ToolCallCompleted) = "tool_call.completed",
    /// A tool call returned an error.
    ToolCallFailed(ToolCallFailed) = "tool_call.failed",
    /// A tool call got no reply in time.
    ToolCallTimedOut(ToolCallTimedOut) = "tool_call.timed_out",
    /// A tool call was abandoned.
    ToolCallCancelled(ToolCallCancelled) = "tool_call.cancelled",
    /// An approval was requested.
    ApprovalRequested(ApprovalRequested) = "approval.requested",
    /// An approval was resolved.
    ApprovalResolved(ApprovalResolved) = "approval.resolved",
    /// An approval expired.
    ApprovalExpired(ApprovalExpired) = "approval.expired",
    /// A subscription began.
    SubscriptionOpened(SubscriptionOpened) = "subscription.opened",
    /// A subscription ended.
    SubscriptionClosed(SubscriptionClosed) = "subscription.closed",
    /// A proposal was accepted.
    ProposalSubmitted(ProposalSubmitted) = "proposal.submitted",
    /// A proposal finished.
    ProposalFinished(ProposalFinished) = "proposal.finished",
    /// A memory fact was added.
    MemoryFactAdded(MemoryFactAdded) = "memory.fact_added",
    /// A memory fact was deleted.
    MemoryFactDeleted(MemoryFactDeleted) = "memory.fact_deleted",
    /// A memory scope was replaced by a file's facts.
    MemoryScopeLoaded(MemoryScopeLoaded) = "memory.scope_loaded",
    /// A memory scope was written to a file.
    MemoryScopePersisted(MemoryScopePersisted) = "memory.scope_persisted",
    /// A terminal tool failure halted a session.
    SessionHalted(SessionHalted) = "session.halted",
    /// A session's halt was cleared.
    HaltCleared(HaltCleared) = "session.halt_cleared",
    /// A proposal's final result.
    ProposalResultRecorded(ProposalResultRecorded) = "proposal.result",
    /// One action of a proposal ended.
    ProposalActionFinished(ProposalActionFinished) = "proposal.action_finished",
    /// A tool call's outcome is unknown (found open at start-up).
    ToolCallIndeterminate(ToolCallIndeterminate) = "tool_call.indeterminate",
    /// `runs.cancel` asked to end a run.
    RunCancellationRequested(RunCancellationRequested) = "run.cancellation_requested",
    /// How a cancellation ended, with its receipt.
    RunCancellationResult(RunCancellationResult) = "run.cancellation_result",
    /// An agent session resumed a run.
    RunResumed(RunResumed) = "run.resumed",
    /// An approval was requested by a session with a current run.
    ApprovalRequestedInRun(ApprovalRequestedInRun) = "approval.requested_in_run",
    /// Cluster mode: a session is served by this gateway.
    SessionOnGateway(SessionOnGateway) = "session.gateway",
    /// Cluster mode: a gateway was declared lost.
    GatewayLost(GatewayLost) = "gateway.lost",
    /// An agent was registered or its spec replaced.
    AgentUpserted(AgentUpserted) = "agent.upserted",
    /// An agent's token was replaced.
    AgentTokenRotated(AgentTokenRotated) = "agent.token_rotated",
    /// An agent was unregistered.
    AgentRemoved(AgentRemoved) = "agent.removed",
    /// An agent's process was asked to run.
    AgentStartRequested(AgentStartRequested) = "agent.start_requested",
    /// An agent's process was asked to stop.
    AgentStopRequested(AgentStopRequested) = "agent.stop_requested",
    /// An agent's process was spawned.
    AgentProcessSpawned(AgentProcessSpawned) = "agent.process_spawned",
    /// An agent's process ended.
    AgentProcessExited(AgentProcessExited) = "agent.process_exited",
    /// An agent's restart was scheduled.
    AgentBackoffScheduled(AgentBackoffScheduled) = "agent.backoff_scheduled",
    /// An agent's status changed.
    AgentStatusChanged(AgentStatusChanged) = "agent.status_changed",
    /// A chat was started.
    ChatStarted(ChatStarted) = "chat.started",
    /// A chat's cancellation was asked for.
    ChatCancelRequested(ChatCancelRequested) = "chat.cancel_requested",
    /// A chat reached its terminal event.
    ChatTerminal(ChatTerminal) = "chat.terminal",
    /// A chat's route was dropped.
    ChatRouteDropped(ChatRouteDropped) = "chat.route_dropped",
    /// An approval was mirrored from a chat.
    ApprovalRequestedInChat(ApprovalRequestedInChat) = "approval.requested_in_chat",
}

impl Event {
    /// The run this event belongs to, for events that belong to exactly one run by their
    /// own fields. (Tool calls and approvals are tied to runs through the projection.)
    pub fn run_id(&self) -> Option<&str> {
        match self {
            Event::RunStarted(e) => Some(&e.run_id),
            Event::TurnsRecorded(e) => Some(&e.run_id),
            Event::RunEnded(e) => Some(&e.run_id),
            Event::RunEvicted(e) => Some(&e.run_id),
            Event::ToolCallDispatched(e) => e.run_id.as_deref(),
            Event::ProposalSubmitted(e) => e.run_id.as_deref(),
            Event::RunCancellationRequested(e) => Some(&e.run_id),
            Event::RunCancellationResult(e) => Some(&e.run_id),
            Event::RunResumed(e) => Some(&e.run_id),
            Event::ApprovalRequestedInRun(e) => Some(&e.run_id),
            _ => None,
        }
    }

    /// The session this event names, if any.
    pub fn client_id(&self) -> Option<&str> {
        match self {
            Event::SessionOpened(e) => Some(&e.client_id),
            Event::SessionAuthenticated(e) => Some(&e.client_id),
            Event::SessionClosed(e) => Some(&e.client_id),
            Event::SessionHalted(e) => Some(&e.client_id),
            Event::HaltCleared(e) => Some(&e.client_id),
            Event::SessionOnGateway(e) => Some(&e.client_id),
            Event::RunStarted(e) => e.client_id.as_deref(),
            Event::ToolCallDispatched(e) => Some(&e.client_id),
            Event::ApprovalRequested(e) => e.client_id.as_deref(),
            Event::ApprovalRequestedInRun(e) => e.approval.client_id.as_deref(),
            Event::ApprovalRequestedInChat(e) => e.approval.client_id.as_deref(),
            Event::RunResumed(e) => Some(&e.client_id),
            Event::ApprovalResolved(e) => e.client_id.as_deref(),
            Event::SubscriptionOpened(e) => Some(&e.client_id),
            Event::ProposalSubmitted(e) => Some(&e.client_id),
            Event::MemoryFactAdded(e) => e.client_id.as_deref(),
            Event::MemoryFactDeleted(e) => e.client_id.as_deref(),
            Event::MemoryScopeLoaded(e) => e.client_id.as_deref(),
            Event::MemoryScopePersisted(e) => e.client_id.as_deref(),
            _ => None,
        }
    }

    /// The registered agent this event is about, for agent events (PROTOCOL.md §12).
    pub fn registered_agent(&self) -> Option<&str> {
        match self {
            Event::AgentUpserted(e) => Some(&e.agent_id),
            Event::AgentTokenRotated(e) => Some(&e.agent_id),
            Event::AgentRemoved(e) => Some(&e.agent_id),
            Event::AgentStartRequested(e) => Some(&e.agent_id),
            Event::AgentStopRequested(e) => Some(&e.agent_id),
            Event::AgentProcessSpawned(e) => Some(&e.agent_id),
            Event::AgentProcessExited(e) => Some(&e.agent_id),
            Event::AgentBackoffScheduled(e) => Some(&e.agent_id),
            Event::AgentStatusChanged(e) => Some(&e.agent_id),
            _ => None,
        }
    }

    /// The chat (its `session_id`) this event is about, for chat events (PROTOCOL.md §13).
    pub fn chat_session(&self) -> Option<&str> {
        match self {
            Event::ChatStarted(e) => Some(&e.session_id),
            Event::ChatCancelRequested(e) => Some(&e.session_id),
            Event::ChatTerminal(e) => Some(&e.session_id),
            Event::ChatRouteDropped(e) => Some(&e.session_id),
            Event::ApprovalRequestedInChat(e) => Some(&e.session_id),
            _ => None,
        }
    }

    /// The memory scope this event changes or reads, for memory events.
    pub fn memory_scope(&self) -> Option<&str> {
        match self {
            Event::MemoryFactAdded(e) => Some(&e.scope),
            Event::MemoryFactDeleted(e) => Some(&e.scope),
            Event::MemoryScopeLoaded(e) => Some(&e.scope),
            Event::MemoryScopePersisted(e) => Some(&e.scope),
            _ => None,
        }
    }
}
