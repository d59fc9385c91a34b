//! Determinism and idempotence, by property: random command sequences (sessions opening,
//! authenticating and leaving, runs started, written, completed, subscriptions, approvals,
//! proposals and tool calls, retention, time passing) decided against the live state.
//!
//! - (a) replaying the same log twice — or its JSONL rendering — gives byte-identical
//!   canonical states;
//! - (b) folding events one at a time as the single [`Writer`] produces them (over a
//!   [`MemLog`]) gives the same digest as a fresh replay of the whole log; no decision is
//!   ever rejected by the fold;
//! - (c) recovery is idempotent: after its events, `recover()` returns nothing, and a
//!   recovery interrupted after any prefix of its events and completed by a second
//!   `recover()` ends in the same state (digest) as an uninterrupted one. Retention and
//!   shutdown likewise leave nothing to do.

use std::collections::VecDeque;
use std::sync::Arc;

use car_events::event::{ProposalSubmitted, Role, SubscriptionTarget};
use car_events::{Event, EventJson, EventLog, JsonText, ManualClock, MemLog, Stamper, Writer};
use car_projections::decide::{
    AdmittedTurns, Authenticate, CompleteRun, EndAbandonedRuns, ExpireApproval, OpenSession,
    RecordTurns, RequestApproval, ResolveApproval, StartRun, Subscribe, SubscriptionSelector,
    ToolCallOutcome, Unsubscribe,
};
use car_projections::recovery::{self, Retention};
use car_projections::state::Session;
use car_projections::{Actor, Command, State, canonical, decide};
use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use serde_json::json;

use crate::scenario::Scenario;
use crate::support::{PEER, apply_events, envelope, finish_call, tool_call};

/// One step of a random history. Indices pick among what exists when the step is decided
/// (modulo how many there are), so every step means something whatever came before.
#[derive(Debug, Clone)]
enum Op {
    /// A connection; `unrestricted`: auth disabled, the role known at once.
    Open { unrestricted: bool },
    /// `session.auth` of a session: 0 client, 1 agent (`a<agent>`), 2 host.
    Auth { session: usize, role: u8, agent: u8 },
    /// A session ends; its grace is remembered.
    Close { session: usize },
    /// The oldest remembered grace expires.
    Grace,
    /// `runs.start`: `agent` 0..3 names `a<agent>`, 3 gives an agent name, 4 nothing.
    Start {
        session: usize,
        agent: u8,
        key: Option<u8>,
    },
    /// `runs.record_turns` of `turns` turns (0: an invalid batch).
    Record {
        session: usize,
        run: usize,
        turns: u8,
    },
    /// `runs.complete`, with or without a status.
    Complete {
        session: usize,
        run: usize,
        valid: bool,
    },
    /// A subscription: 0 a run, 1 the log, 2 the host feed.
    Subscribe {
        session: usize,
        run: usize,
        kind: u8,
    },
    /// An unsubscription by id (maybe of another session's subscription).
    Unsubscribe { session: usize, sub: usize },
    /// `host.request_approval`.
    Request { session: usize, system: bool },
    /// `host.resolve_approval` with option 0, 1, or not an option.
    Resolve {
        session: usize,
        approval: usize,
        option: u8,
    },
    /// An approval's gate times out.
    Expire { approval: usize },
    /// `proposal.submit` and its first tool call.
    Propose { session: usize },
    /// A tool call ends (0 completed, 1 failed, 2 timed out, 3 cancelled).
    Finish { call: usize, how: u8 },
    /// A proposal finishes.
    FinishProposal { proposal: usize },
    /// Retention now.
    Gc { days: u8, max_runs: u8 },
    /// Time passes.
    Advance { secs: u32 },
}

fn op() -> impl Strategy<Value = Op> {
    let i = || 0usize..8;
    prop_oneof![
        3 => any::<bool>().prop_map(|unrestricted| Op::Open { unrestricted }),
        3 => (i(), 0u8..3, 0u8..3).prop_map(|(session, role, agent)| Op::Auth { session, role, agent }),
        1 => i().prop_map(|session| Op::Close { session }),
        1 => Just(Op::Grace),
        4 => (i(), 0u8..5, proptest::option::weighted(0.3, 0u8..3))
            .prop_map(|(session, agent, key)| Op::Start { session, agent, key }),
        5 => (i(), i(), 0u8..4).prop_map(|(session, run, turns)| Op::Record { session, run, turns }),
        2 => (i(), i(), proptest::bool::weighted(0.8))
            .prop_map(|(session, run, valid)| Op::Complete { session, run, valid }),
        2 => (i(), i(), 0u8..3).prop_map(|(session, run, kind)| Op::Subscribe { session, run, kind }),
        1 => (i(), i()).prop_map(|(session, sub)| Op::Unsubscribe { session, sub }),
        2 => (i(), any::<bool>()).prop_map(|(session, system)| Op::Request { session, system }),
        2 => (i(), i(), 0u8..3).prop_map(|(session, approval, option)| Op::Resolve { session, approval, option }),
        1 => i().prop_map(|approval| Op::Expire { approval }),
        2 => i().prop_map(|session| Op::Propose { session }),
        2 => (i(), 0u8..4).prop_map(|(call, how)| Op::Finish { call, how }),
        1 => i().prop_map(|proposal| Op::FinishProposal { proposal }),
        1 => (0u8..3, 0u8..6).prop_map(|(days, max_runs)| Op::Gc { days, max_runs }),
        2 => prop_oneof![0u32..5, 0u32..(3 * 86_400)].prop_map(|secs| Op::Advance { secs }),
    ]
}

fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..max)
}

/// The `index % len`-th item, `None` when there are none.
fn pick<T>(items: impl Iterator<Item = T>, index: usize) -> Option<T> {
    let mut items: Vec<T> = items.collect();
    if items.is_empty() {
        None
    } else {
        let n = index % items.len();
        Some(items.swap_remove(n))
    }
}

/// The actor behind an open session whose role is known.
fn actor(session: &Session) -> Option<Actor> {
    let role = session.role?;
    let actor = Actor::new(session.client_id.clone(), role, session.agent_id.clone());
    Some(if session.authenticated {
        actor
    } else {
        actor.unrestricted()
    })
}

fn actor_at(state: &State, index: usize) -> Option<Actor> {
    pick(state.sessions().filter_map(actor), index)
}

fn run_at(state: &State, index: usize) -> Option<String> {
    pick(state.runs().map(|r| r.run_id.clone()), index)
}

/// The command an op stands for against `state` (`None`: nothing to do it to).
fn command(op: &Op, i: usize, state: &State, grace: Option<&EndAbandonedRuns>) -> Option<Command> {
    let fresh = |prefix: &str| format!("{prefix}{i}");
    Some(match op {
        Op::Open { unrestricted } => Command::OpenSession(OpenSession {
            client_id: fresh("c"),
            peer: PEER.into(),
            role: unrestricted.then_some(Role::Client),
        }),
        Op::Auth {
            session,
            role,
            agent,
        } => {
            let client = pick(state.sessions(), *session)?.client_id.clone();
            let role = [Role::Client, Role::Agent, Role::Host][usize::from(*role)];
            Command::Authenticate(Authenticate {
                client_id: client,
                role,
                agent_id: (role == Role::Agent).then(|| format!("a{agent}")),
            })
        }
        Op::Close { session } => Command::CloseSession(car_projections::decide::CloseSession {
            client_id: pick(state.sessions(), *session)?.client_id.clone(),
            reason: "closed".into(),
        }),
        Op::Grace => Command::EndAbandonedRuns(grace?.clone()),
        Op::Start {
            session,
            agent,
            key,
        } => Command::StartRun(StartRun {
            actor: actor_at(state, *session)?,
            new_run_id: fresh("run-"),
            intent: format!("intent {i}"),
            agent_id: (*agent < 3).then(|| format!("a{agent}")),
            agent_name: (*agent == 3).then(|| format!("Bot {i}!")),
            outcome_description: None,
            idempotency_key: key.map(|k| format!("key-{k}")),
        }),
        Op::Record {
            session,
            run,
            turns,
        } => {
            let sent: Vec<_> = (0..*turns)
                .map(|j| json!({"prompt": format!("op {i} turn {j}"), "index": j}))
                .collect();
            Command::RecordTurns(RecordTurns {
                actor: actor_at(state, *session)?,
                run_id: run_at(state, *run)?,
                turns: AdmittedTurns::admit(&sent).ok()?,
            })
        }
        Op::Complete {
            session,
            run,
            valid,
        } => Command::CompleteRun(CompleteRun {
            actor: actor_at(state, *session)?,
            run_id: run_at(state, *run)?,
            outcome: if *valid {
                json!({"status": "success", "summary": format!("op {i}")})
            } else {
                json!({"summary": "no status"})
            },
        }),
        Op::Subscribe { session, run, kind } => Command::Subscribe(Subscribe {
            actor: actor_at(state, *session)?,
            subscription_id: fresh("sub-"),
            target: match kind {
                0 => SubscriptionTarget::Run {
                    run_id: run_at(state, *run)?,
                    cursor: 0,
                },
                1 => SubscriptionTarget::Log { from_seq: 1 },
                _ => SubscriptionTarget::Host,
            },
        }),
        Op::Unsubscribe { session, sub } => Command::Unsubscribe(Unsubscribe {
            client_id: pick(state.sessions(), *session)?.client_id.clone(),
            selector: SubscriptionSelector::Id(
                pick(state.subscriptions(), *sub)?.subscription_id.clone(),
            ),
        }),
        Op::Request { session, system } => Command::RequestApproval(RequestApproval {
            actor: actor_at(state, *session)?,
            approval_id: fresh("ap-"),
            action: "deploy".into(),
            details: json!({"op": i}),
            options: None,
            system_level: *system,
            agent_id: None,
            run_id: None,
        }),
        Op::Resolve {
            session,
            approval,
            option,
        } => {
            let approval = pick(state.approvals().into_iter(), *approval)?;
            Command::ResolveApproval(ResolveApproval {
                actor: actor_at(state, *session)?,
                approval_id: approval.id.clone(),
                resolution: approval
                    .options
                    .get(usize::from(*option))
                    .cloned()
                    .unwrap_or_else(|| "bogus".into()),
            })
        }
        Op::Expire { approval } => Command::ExpireApproval(ExpireApproval {
            approval_id: pick(state.approvals().into_iter(), *approval)?.id.clone(),
            reason: "timeout".into(),
        }),
        Op::Propose { .. } => return None, // two events: see `decide_op`
        Op::Finish { call, how } => {
            let request = pick(state.tool_calls(), *call)
                .map_or_else(|| "q-gone".to_owned(), |c| c.dispatch.request_id.clone());
            finish_call(
                &request,
                match how {
                    0 => ToolCallOutcome::Completed {
                        output: json!({"op": i}),
                        elapsed_ms: 3,
                    },
                    1 => ToolCallOutcome::Failed {
                        error: "boom".into(),
                        elapsed_ms: 3,
                    },
                    2 => ToolCallOutcome::TimedOut { elapsed_ms: 1000 },
                    _ => ToolCallOutcome::Cancelled {
                        reason: "disconnected".into(),
                    },
                },
            )
        }
        Op::FinishProposal { proposal } => {
            Command::FinishProposal(car_events::event::ProposalFinished {
                proposal_id: pick(state.proposals(), *proposal)?.proposal_id.clone(),
                final_state: "completed".into(),
            })
        }
        Op::Gc { .. } | Op::Advance { .. } => return None,
    })
}

/// Decides op number `i` against `state` at `now`: the events to append, and the grace to
/// remember when a session closes.
fn decide_op(
    op: &Op,
    i: usize,
    state: &State,
    now: DateTime<Utc>,
    grace: Option<&EndAbandonedRuns>,
) -> (Vec<Event>, Option<EndAbandonedRuns>) {
    match op {
        Op::Gc { days, max_runs } => {
            let retention = Retention {
                max_age: TimeDelta::days(i64::from(*days)),
                max_runs: usize::from(*max_runs),
            };
            (recovery::gc(state, now, &retention), None)
        }
        Op::Propose { session } => {
            let Some(actor) = actor_at(state, *session) else {
                return (vec![], None);
            };
            let run = state
                .runs()
                .find(|r| !r.is_ended() && r.owner.as_deref() == Some(actor.client_id.as_str()))
                .map(|r| r.run_id.clone());
            let proposal = format!("p{i}");
            let mut call = tool_call(&format!("q{i}"), &actor.client_id, run.as_deref());
            call.proposal_id = proposal.clone();
            call.parameters = JsonText::from_value(&json!({"op": i}));
            let events = vec![
                ProposalSubmitted {
                    proposal_id: proposal,
                    client_id: actor.client_id.clone(),
                    run_id: run,
                    action_ids: vec!["a1".into()],
                }
                .into(),
                call.into(),
            ];
            (events, None)
        }
        _ => {
            let Some(command) = command(op, i, state, grace) else {
                return (vec![], None);
            };
            let remember = match &command {
                Command::CloseSession(c) => state.session(&c.client_id).map(|s| EndAbandonedRuns {
                    client_id: s.client_id.clone(),
                    agent_id: s.agent_id.clone().filter(|_| s.role == Some(Role::Agent)),
                }),
                _ => None,
            };
            (decide(state, &command).unwrap_or_default(), remember)
        }
    }
}

/// Runs `ops` through a [`Scenario`] (decide, stamp, fold at once).
fn drive(ops: &[Op], seed: u64) -> Scenario {
    let mut s = Scenario::new(seed);
    let mut graces = VecDeque::new();
    for (i, op) in ops.iter().enumerate() {
        if let Op::Advance { secs } = op {
            s.advance(TimeDelta::seconds(i64::from(*secs)));
            continue;
        }
        let grace = matches!(op, Op::Grace)
            .then(|| graces.pop_front())
            .flatten();
        let (events, remember) = decide_op(op, i, s.state(), s.now(), grace.as_ref());
        s.append(events);
        graces.extend(remember);
    }
    s
}

/// Runs `ops` through a real [`Writer`] over a [`MemLog`]; returns the log and the
/// writer's final state's digest.
fn drive_writer(ops: &[Op], seed: u64) -> (Arc<MemLog>, String) {
    let log = Arc::new(MemLog::new());
    let clock = ManualClock::fixed();
    let (writer, thread) = Writer::spawn(
        log.clone(),
        State::new(),
        Stamper::deterministic(clock.clone(), seed),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut graces = VecDeque::new();
        for (i, op) in ops.iter().enumerate() {
            if let Op::Advance { secs } = op {
                clock.advance(TimeDelta::seconds(i64::from(*secs)));
                continue;
            }
            let grace = matches!(op, Op::Grace)
                .then(|| graces.pop_front())
                .flatten();
            let (op, now) = (op.clone(), car_events::Clock::now(&clock));
            let decided = writer
                .execute(move |state: &State| decide_op(&op, i, state, now, grace.as_ref()))
                .await;
            match decided {
                Ok((remember, _)) => graces.extend(remember),
                Err(err) => panic!("op {i}: the writer refused a decision: {err}"),
            }
        }
        writer.shutdown().await;
    });
    thread.join();
    let digest = canonical::digest(&writer.state());
    (log, digest)
}

fn replay(log: &MemLog) -> State {
    let mut state = State::new();
    car_events::replay(log, &mut state, 1, |_| {}).expect("the log replays");
    state
}

/// The log through its `{seq, ts, kind, data}` rendering and back.
fn replay_rendered(log: &MemLog) -> State {
    let mut state = State::new();
    for env in log.read_from(1) {
        let env = env.expect("a stored event");
        let text = serde_json::to_string(&EventJson::from_envelope(&env)).expect("render");
        let json: EventJson = serde_json::from_str(&text).expect("parse");
        let (seq, ts, event) = json.into_parts().expect("an event");
        state
            .apply(&envelope(seq, ts, event))
            .expect("the rendered log replays");
    }
    state
}

fn retention() -> impl Strategy<Value = Retention> {
    (0i64..40, 0usize..8).prop_map(|(days, max_runs)| Retention {
        max_age: TimeDelta::days(days),
        max_runs,
    })
}

fn applied(state: &State, events: &[Event], now: DateTime<Utc>) -> State {
    let mut state = state.clone();
    if let Err(err) = apply_events(&mut state, events, |_| now) {
        panic!("events returned by recovery do not apply: {err}");
    }
    state
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// (a) and (b): the writer's live state, a fresh replay, a second replay and a replay of
    /// the rendered log all agree byte for byte.
    #[test]
    fn the_live_state_is_the_replay_of_its_log(ops in ops(80), seed in any::<u64>()) {
        let (log, live) = drive_writer(&ops, seed);
        let first = canonical::render_text(&replay(&log));
        let second = canonical::render_text(&replay(&log.reopen()));
        prop_assert_eq!(&first, &second, "two replays differ");
        prop_assert_eq!(&canonical::digest(&replay(&log)), &live, "live state vs replay");
        prop_assert_eq!(canonical::render_text(&replay_rendered(&log)), first, "rendered replay");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// (b) without the writer: folding as the scenario goes equals replaying its log.
    #[test]
    fn folding_as_you_go_equals_replaying(ops in ops(80), seed in any::<u64>()) {
        let s = drive(&ops, seed);
        let mut state = State::new();
        for env in s.log() {
            state.apply(env).expect("the log replays");
        }
        prop_assert_eq!(canonical::render_text(&state), canonical::render_text(s.state()));
    }

    /// (c): recovery, completed after an interruption at any point, ends where an
    /// uninterrupted recovery ends, and then has nothing left to do.
    #[test]
    fn an_interrupted_recovery_completes_to_the_same_state(
        ops in ops(80),
        seed in any::<u64>(),
        later in 0i64..(45 * 86_400),
        retention in retention(),
    ) {
        let s = drive(&ops, seed);
        let state = s.state();
        let now = s.now() + TimeDelta::seconds(later);
        let events = recovery::recover(state, now, &retention);
        let whole = applied(state, &events, now);
        prop_assert!(recovery::recover(&whole, now, &retention).is_empty(), "recover twice");
        let digest = canonical::digest(&whole);
        for cut in 0..events.len() {
            let partial = applied(state, &events[..cut], now);
            let rest = recovery::recover(&partial, now, &retention);
            prop_assert_eq!(rest.len(), events.len() - cut, "after {} events", cut);
            let completed = applied(&partial, &rest, now);
            prop_assert_eq!(&canonical::digest(&completed), &digest, "after {} events", cut);
        }
    }

    /// Retention and shutdown: nothing left to do once their events are applied, and a
    /// start after a clean stop only applies retention.
    #[test]
    fn retention_and_shutdown_leave_nothing_to_do(
        ops in ops(80),
        seed in any::<u64>(),
        later in 0i64..(45 * 86_400),
        retention in retention(),
    ) {
        let s = drive(&ops, seed);
        let now = s.now() + TimeDelta::seconds(later);
        let gc = recovery::gc(s.state(), now, &retention);
        prop_assert!(gc.iter().all(|e| matches!(e, Event::RunEvicted(_))));
        let collected = applied(s.state(), &gc, now);
        prop_assert!(recovery::gc(&collected, now, &retention).is_empty());
        prop_assert!(collected.run_count() <= retention.max_runs.max(
            collected.runs().filter(|r| !r.is_ended()).count()
        ));

        let stop = recovery::shutdown(s.state(), "signal");
        let stopped = applied(s.state(), &stop, now);
        prop_assert!(recovery::recover(&stopped, now, &retention)
            .iter()
            .all(|e| matches!(e, Event::RunEvicted(_))));
    }
}
