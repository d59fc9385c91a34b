//! The tests' shared vocabulary: fixed times, envelopes, folding events into a [`State`],
//! and short constructors for the events and commands the other modules talk about.
//!
//! Every time here is fixed (one second per given event after [`t0`]) and every id is a
//! literal, so a test reads like the log it describes.

use car_events::event::{
    ApprovalExpired, ApprovalRequested, ApprovalResolved, EvictionReason, IncompleteReason, Role,
    RunEnded, RunEvicted, RunStarted, SessionAuthenticated, SessionClosed, SessionOpened,
    SubscriptionOpened, SubscriptionTarget, Termination, ToolCallCompleted, ToolCallDispatched,
    TurnsRecorded,
};
use car_events::{Clock, Envelope, Event, JsonText, ManualClock, SCHEMA_VERSION, Seq};
use car_projections::decide::{
    Authenticate, CloseSession, EndAbandonedRuns, FinishToolCall, OpenSession, RequestApproval,
    ResolveApproval, StartRun, Subscribe, ToolCallOutcome,
};
use car_projections::state::ApplyError;
use car_projections::{Actor, Command, State};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

/// The time of the empty log: 2026-01-01T00:00:00Z (the fixed [`ManualClock`]).
pub(crate) fn t0() -> DateTime<Utc> {
    ManualClock::fixed().now()
}

/// The fixed time of the given event at `seq`: `seq` seconds after [`t0`].
pub(crate) fn given_ts(seq: Seq) -> DateTime<Utc> {
    t0() + TimeDelta::seconds(seq as i64)
}

/// An envelope with a nil event id (ids of events play no part in the state).
pub(crate) fn envelope(seq: Seq, ts: DateTime<Utc>, event: Event) -> Envelope {
    Envelope {
        seq,
        event_id: Default::default(),
        ts,
        schema_version: SCHEMA_VERSION,
        event,
    }
}

/// Applies `events` after the state's head, the one at seq `s` at time `ts(s)`.
pub(crate) fn apply_events(
    state: &mut State,
    events: &[Event],
    ts: impl Fn(Seq) -> DateTime<Utc>,
) -> Result<(), ApplyError> {
    for event in events {
        let seq = state.head() + 1;
        state.apply(&envelope(seq, ts(seq), event.clone()))?;
    }
    Ok(())
}

/// Folds `events` into a fresh state with seqs 1.. at [`given_ts`]; panics on a
/// contradiction (a test whose *given* is impossible is a broken test).
pub(crate) fn fold(events: &[Event]) -> State {
    let mut state = State::new();
    if let Err(err) = apply_events(&mut state, events, given_ts) {
        panic!("the given events do not fold: {err}");
    }
    state
}

/// Something that stands for a list of events in a `given![…]`.
pub(crate) trait IntoEvents {
    /// The events.
    fn into_events(self) -> Vec<Event>;
}

impl IntoEvents for Event {
    fn into_events(self) -> Vec<Event> {
        vec![self]
    }
}

impl IntoEvents for Vec<Event> {
    fn into_events(self) -> Vec<Event> {
        self
    }
}

/// `given![a, b, …]`: the concatenation of events and lists of events.
macro_rules! given {
    ($($part:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut all: Vec<car_events::Event> = Vec::new();
        $( all.extend($crate::support::IntoEvents::into_events($part)); )*
        all
    }};
}
pub(crate) use given;

// ---------------------------------------------------------------------------------------
// Events.

/// The peer address of every test session.
pub(crate) const PEER: &str = "127.0.0.1:50000";

/// `session.opened` of an unauthenticated session.
pub(crate) fn opened(client: &str) -> Event {
    SessionOpened {
        client_id: client.into(),
        peer: PEER.into(),
        role: None,
        agent_id: None,
    }
    .into()
}

/// `session.opened` with auth disabled: the role is known at once.
pub(crate) fn opened_unrestricted(client: &str) -> Event {
    SessionOpened {
        client_id: client.into(),
        peer: PEER.into(),
        role: Some(Role::Client),
        agent_id: None,
    }
    .into()
}

/// `session.authenticated`.
pub(crate) fn authenticated(client: &str, role: Role, agent: Option<&str>) -> Event {
    SessionAuthenticated {
        client_id: client.into(),
        role,
        agent_id: agent.map(Into::into),
    }
    .into()
}

/// An open `client` session.
pub(crate) fn client_session(client: &str) -> Vec<Event> {
    vec![opened(client), authenticated(client, Role::Client, None)]
}

/// An open `agent` session bound to `agent`.
pub(crate) fn agent_session(client: &str, agent: &str) -> Vec<Event> {
    vec![
        opened(client),
        authenticated(client, Role::Agent, Some(agent)),
    ]
}

/// An open `host` session.
pub(crate) fn host_session(client: &str) -> Vec<Event> {
    vec![opened(client), authenticated(client, Role::Host, None)]
}

/// `session.closed` of a `client` session, reason `closed`.
pub(crate) fn session_closed(client: &str) -> Event {
    SessionClosed {
        client_id: client.into(),
        role: Some(Role::Client),
        agent_id: None,
        reason: "closed".into(),
    }
    .into()
}

/// `session.closed` of an `agent` session, reason `closed`.
pub(crate) fn agent_closed(client: &str, agent: &str) -> Event {
    SessionClosed {
        client_id: client.into(),
        role: Some(Role::Agent),
        agent_id: Some(agent.into()),
        reason: "closed".into(),
    }
    .into()
}

/// The intent of every test run.
pub(crate) const INTENT: &str = "test run";

/// `run.started` without an idempotency key.
pub(crate) fn run_started(run: &str, agent: &str, client: &str) -> Event {
    RunStarted {
        run_id: run.into(),
        agent_id: agent.into(),
        client_id: Some(client.into()),
        intent: INTENT.into(),
        outcome_description: None,
        idempotency_key: None,
    }
    .into()
}

/// `run.started` of a run whose id is its idempotency key.
pub(crate) fn keyed_run_started(key: &str, agent: &str, client: &str) -> Event {
    RunStarted {
        run_id: key.into(),
        agent_id: agent.into(),
        client_id: Some(client.into()),
        intent: INTENT.into(),
        outcome_description: None,
        idempotency_key: Some(key.into()),
    }
    .into()
}

/// The stored form of a plain turn `i`.
pub(crate) fn stored_turn(i: u32) -> JsonText {
    JsonText::parse(format!(
        r#"{{"prompt":"turn {i}","verifier_verdict":"not_run","policy_rejected":false}}"#
    ))
    .expect("valid JSON")
}

/// `run.turns_recorded`: plain turns `base .. base + count`.
pub(crate) fn turns_recorded(run: &str, base: u32, count: u32) -> Event {
    TurnsRecorded {
        run_id: run.into(),
        base_index: base,
        turns: (base..base + count).map(stored_turn).collect(),
    }
    .into()
}

/// Plain turns `0 .. count` in batches of at most 256.
pub(crate) fn turns_up_to(run: &str, count: u32) -> Vec<Event> {
    (0..count)
        .step_by(256)
        .map(|base| turns_recorded(run, base, (count - base).min(256)))
        .collect()
}

/// `run.ended` with the outcome `{"status":"success"}`.
pub(crate) fn run_completed(run: &str, agent: &str) -> Event {
    RunEnded {
        run_id: run.into(),
        agent_id: agent.into(),
        termination: Termination::Outcome {
            outcome: JsonText::parse(r#"{"status":"success"}"#).expect("valid JSON"),
        },
    }
    .into()
}

/// `run.ended` without an outcome.
pub(crate) fn run_incomplete(run: &str, agent: &str, reason: IncompleteReason) -> Event {
    RunEnded {
        run_id: run.into(),
        agent_id: agent.into(),
        termination: Termination::Incomplete { reason },
    }
    .into()
}

/// `run.evicted` by age.
pub(crate) fn run_evicted(run: &str, agent: &str) -> Event {
    RunEvicted {
        run_id: run.into(),
        agent_id: agent.into(),
        reason: EvictionReason::Age,
    }
    .into()
}

/// `approval.requested` by `requester`, action `deploy`, options `approve`/`deny`.
pub(crate) fn approval_requested(id: &str, requester: &str, system_level: bool) -> Event {
    ApprovalRequested {
        approval_id: id.into(),
        client_id: Some(requester.into()),
        agent_id: None,
        action: "deploy".into(),
        details: JsonText::parse("{}").expect("valid JSON"),
        options: vec!["approve".into(), "deny".into()],
        system_level,
    }
    .into()
}

/// `approval.resolved`.
pub(crate) fn approval_resolved(id: &str, resolution: &str, by: &str) -> Event {
    ApprovalResolved {
        approval_id: id.into(),
        resolution: resolution.into(),
        client_id: Some(by.into()),
    }
    .into()
}

/// `approval.expired`, reason `timeout`.
pub(crate) fn approval_expired(id: &str) -> Event {
    ApprovalExpired {
        approval_id: id.into(),
        reason: "timeout".into(),
    }
    .into()
}

/// `subscription.opened`.
pub(crate) fn subscribed(sub: &str, client: &str, target: SubscriptionTarget) -> Event {
    SubscriptionOpened {
        subscription_id: sub.into(),
        client_id: client.into(),
        target,
    }
    .into()
}

/// The target of `runs.subscribe` from turn 0.
pub(crate) fn run_target(run: &str) -> SubscriptionTarget {
    SubscriptionTarget::Run {
        run_id: run.into(),
        cursor: 0,
    }
}

/// A `tools.execute` request to `client`, attempt 1 of action `a1` of proposal `p1`.
pub(crate) fn tool_call(request: &str, client: &str, run: Option<&str>) -> ToolCallDispatched {
    ToolCallDispatched {
        request_id: request.into(),
        client_id: client.into(),
        proposal_id: "p1".into(),
        action_id: "a1".into(),
        tool: "fs.read".into(),
        parameters: JsonText::parse(r#"{"path":"/tmp/x"}"#).expect("valid JSON"),
        attempt: 1,
        timeout_ms: 1000,
        run_id: run.map(Into::into),
    }
}

/// `tool_call.dispatched`.
pub(crate) fn dispatched(request: &str, client: &str, run: Option<&str>) -> Event {
    tool_call(request, client, run).into()
}

/// `tool_call.completed` with output `"ok"`.
pub(crate) fn tool_completed(request: &str) -> Event {
    ToolCallCompleted {
        request_id: request.into(),
        output: JsonText::parse(r#""ok""#).expect("valid JSON"),
        elapsed_ms: 5,
    }
    .into()
}

// ---------------------------------------------------------------------------------------
// Commands.

/// The fresh run id every `runs.start` command offers.
pub(crate) const NEW_RUN: &str = "00000000-0000-4000-8000-000000000001";

/// A connection was accepted (auth enabled).
pub(crate) fn open_session(client: &str) -> Command {
    Command::OpenSession(OpenSession {
        client_id: client.into(),
        peer: PEER.into(),
        role: None,
    })
}

/// `session.auth` with a token already checked.
pub(crate) fn authenticate(client: &str, role: Role, agent: Option<&str>) -> Command {
    Command::Authenticate(Authenticate {
        client_id: client.into(),
        role,
        agent_id: agent.map(Into::into),
    })
}

/// A session ended, reason `closed`.
pub(crate) fn close_session(client: &str) -> Command {
    Command::CloseSession(CloseSession {
        client_id: client.into(),
        reason: "closed".into(),
    })
}

/// `runs.start {intent}` with nothing else: callers fill in the rest.
pub(crate) fn start_run(actor: Actor) -> StartRun {
    StartRun {
        actor,
        new_run_id: NEW_RUN.into(),
        intent: INTENT.into(),
        agent_id: None,
        agent_name: None,
        outcome_description: None,
        idempotency_key: None,
    }
}

/// The `run.started` that [`start_run`] decides to, for `agent` and `client`.
pub(crate) fn new_run_started(agent: &str, client: &str) -> Event {
    run_started(NEW_RUN, agent, client)
}

/// `runs.complete`.
pub(crate) fn complete_run(actor: Actor, run: &str, outcome: Value) -> Command {
    Command::CompleteRun(car_projections::decide::CompleteRun {
        actor,
        run_id: run.into(),
        outcome,
    })
}

/// A disconnect grace expired.
pub(crate) fn end_abandoned(client: &str, agent: Option<&str>) -> Command {
    Command::EndAbandonedRuns(EndAbandonedRuns {
        client_id: client.into(),
        agent_id: agent.map(Into::into),
    })
}

/// `host.request_approval {action: "deploy", details: {"env": "prod"}}`.
pub(crate) fn request_approval(actor: Actor, id: &str) -> RequestApproval {
    RequestApproval {
        actor,
        approval_id: id.into(),
        action: "deploy".into(),
        details: json!({"env": "prod"}),
        options: None,
        system_level: false,
        agent_id: None,
        run_id: None,
    }
}

/// `host.resolve_approval`.
pub(crate) fn resolve_approval(actor: Actor, id: &str, resolution: &str) -> Command {
    Command::ResolveApproval(ResolveApproval {
        actor,
        approval_id: id.into(),
        resolution: resolution.into(),
    })
}

/// A subscription begins.
pub(crate) fn subscribe(actor: Actor, sub: &str, target: SubscriptionTarget) -> Command {
    Command::Subscribe(Subscribe {
        actor,
        subscription_id: sub.into(),
        target,
    })
}

/// A tool call ended.
pub(crate) fn finish_call(request: &str, outcome: ToolCallOutcome) -> Command {
    Command::FinishToolCall(FinishToolCall {
        request_id: request.into(),
        outcome,
    })
}
