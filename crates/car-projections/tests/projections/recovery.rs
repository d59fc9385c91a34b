//! Start-up recovery, retention and shutdown as pure functions of the state (PROTOCOL.md
//! §9): what each returns for a given state, in which order, with which reasons; the age
//! boundary; which runs count eviction picks; and that each has nothing left to do once
//! its events are applied.

use car_events::event::{
    ApprovalExpired, DaemonRecovered, DaemonStopped, EvictionReason, IncompleteReason,
    ProposalActionFinished, ProposalFinished, ProposalResultRecorded, ProposalSubmitted, Role,
    RunEvicted, SessionClosed, SubscriptionClosed, ToolCallCancelled, ToolCallIndeterminate,
    TurnsRecorded,
};
use car_events::{Event, JsonText};
use car_projections::State;
use car_projections::recovery::{self, Retention};
use chrono::{DateTime, TimeDelta, Utc};
use rstest::rstest;

use crate::support::*;

/// Client `c1` with run `r1` in progress (a subscription, a tool call and a proposal on
/// it), agent session `g1` with ended run `r2`, approval `ap1` pending, `ap2` resolved.
fn live_world() -> Vec<Event> {
    given![
        client_session("c1"),
        agent_session("g1", "a2"),
        host_session("h1"),
        run_started("r1", "a1", "c1"),
        run_started("r2", "a2", "g1"),
        run_completed("r2", "a2"),
        subscribed("s1", "h1", run_target("r1")),
        Event::from(ProposalSubmitted {
            proposal_id: "p1".into(),
            client_id: "c1".into(),
            run_id: Some("r1".into()),
            action_ids: vec!["a1".into()],
        }),
        dispatched("q1", "c1", Some("r1")),
        approval_requested("ap1", "c1", false),
        approval_requested("ap2", "c1", false),
        approval_resolved("ap2", "approve", "h1"),
    ]
}

fn abandoned(reason: IncompleteReason) -> Vec<Event> {
    let why = reason.as_str();
    let closed = |client: &str, role: Role, agent: Option<&str>| -> Event {
        SessionClosed {
            client_id: client.into(),
            role: Some(role),
            agent_id: agent.map(Into::into),
            reason: why.into(),
        }
        .into()
    };
    let mut events: Vec<Event> = if reason == IncompleteReason::DaemonRestart {
        cut_off_proposal()
    } else {
        vec![
            ToolCallCancelled {
                request_id: "q1".into(),
                reason: why.into(),
            }
            .into(),
            ProposalFinished {
                proposal_id: "p1".into(),
                final_state: "failed".into(),
            }
            .into(),
        ]
    };
    events.extend([
        SubscriptionClosed {
            subscription_id: "s1".into(),
            reason: why.into(),
        }
        .into(),
        run_incomplete("r1", "a1", reason),
        closed("c1", Role::Client, None),
        closed("g1", Role::Agent, Some("a2")),
        closed("h1", Role::Host, None),
        ApprovalExpired {
            approval_id: "ap1".into(),
            reason: why.into(),
        }
        .into(),
    ]);
    events
}

/// After a crash (§14.5): the call in flight is `indeterminate` and never dispatched
/// again; its action is recorded as such, added to the run as a turn before the run
/// ends, and the proposal is completed `failed` with its result stored.
fn cut_off_proposal() -> Vec<Event> {
    let error = recovery::INDETERMINATE;
    let turn = car_projections::turns::admit(
        0,
        &serde_json::json!({"tool": "fs.read", "parameters": {"path": "/tmp/x"}, "output": error, "policy_rejected": false}),
    )
    .unwrap();
    vec![
        ProposalActionFinished {
            proposal_id: "p1".into(),
            action_id: "a1".into(),
            status: "indeterminate".into(),
            output: None,
            error: Some(error.into()),
            attempts: 1,
        }
        .into(),
        TurnsRecorded {
            run_id: "r1".into(),
            base_index: 0,
            turns: vec![turn],
        }
        .into(),
        ToolCallIndeterminate {
            request_id: "q1".into(),
            error: error.into(),
        }
        .into(),
        ProposalResultRecorded {
            proposal_id: "p1".into(),
            principal: "client".into(),
            result: JsonText::from(serde_json::json!({
                "proposal_id": "p1",
                "final_state": "failed",
                "outputs": {},
                "errors": {"a1": error},
                "results": [{"action_id": "a1", "status": "indeterminate", "error": error, "attempts": 1}],
            })),
        }
        .into(),
        ProposalFinished {
            proposal_id: "p1".into(),
            final_state: "failed".into(),
        }
        .into(),
    ]
}

/// Shortly after the given events: nothing is due for retention.
fn soon() -> DateTime<Utc> {
    t0() + TimeDelta::hours(1)
}

fn applied(mut state: State, events: &[Event], at: DateTime<Utc>) -> State {
    apply_events(&mut state, events, |_| at).expect("the events apply");
    state
}

#[test]
fn recovery_abandons_everything_live_in_a_fixed_order() {
    let state = fold(&live_world());
    let events = recovery::recover(&state, soon(), &Retention::default());
    assert_eq!(events, abandoned(IncompleteReason::DaemonRestart));
    let after = applied(state, &events, soon());
    assert!(recovery::recover(&after, soon(), &Retention::default()).is_empty());
    assert_eq!(after.sessions().count(), 0);
    assert_eq!(after.subscriptions().count(), 0);
    assert_eq!(after.tool_calls().count(), 0);
    assert_eq!(after.proposals().count(), 0);
    assert!(after.runs().all(|run| run.is_ended()));
}

#[test]
fn shutdown_abandons_everything_as_daemon_shutdown_then_stops() {
    let state = fold(&live_world());
    let mut expected = abandoned(IncompleteReason::DaemonShutdown);
    expected.push(
        DaemonStopped {
            reason: "signal".into(),
        }
        .into(),
    );
    assert_eq!(recovery::shutdown(&state, "signal"), expected);
}

#[test]
fn shutdown_leaves_retention_to_the_next_start() {
    let state = fold(&given![
        client_session("c1"),
        run_started("r1", "a1", "c1"),
        run_completed("r1", "a1"),
        session_closed("c1"),
    ]);
    let long_after = t0() + TimeDelta::days(400);
    let stop = recovery::shutdown(&state, "signal");
    assert_eq!(
        stop,
        vec![Event::from(DaemonStopped {
            reason: "signal".into()
        })]
    );
    let stopped = applied(state, &stop, long_after);
    assert_eq!(
        recovery::recover(&stopped, long_after, &Retention::default()),
        vec![Event::from(RunEvicted {
            run_id: "r1".into(),
            agent_id: "a1".into(),
            reason: EvictionReason::Age,
        })]
    );
}

/// `r1` ends at seq 4, i.e. at `given_ts(4)`.
fn ended_run() -> Vec<Event> {
    given![
        client_session("c1"),
        run_started("r1", "a1", "c1"),
        run_completed("r1", "a1"),
    ]
}

#[rstest]
#[case::a_day_before_the_limit(TimeDelta::days(29), false)]
#[case::exactly_at_the_limit(TimeDelta::days(30), false)]
#[case::a_millisecond_past_the_limit(TimeDelta::days(30) + TimeDelta::milliseconds(1), true)]
#[case::long_past(TimeDelta::days(365), true)]
fn eviction_by_age_counts_from_the_end(#[case] after_end: TimeDelta, #[case] evicted: bool) {
    let state = fold(&ended_run());
    let now = given_ts(4) + after_end;
    let expected: Vec<Event> = if evicted {
        vec![
            RunEvicted {
                run_id: "r1".into(),
                agent_id: "a1".into(),
                reason: EvictionReason::Age,
            }
            .into(),
        ]
    } else {
        vec![]
    };
    assert_eq!(recovery::gc(&state, now, &Retention::default()), expected);
}

#[test]
fn a_run_in_progress_is_never_evicted_by_age() {
    let state = fold(&given![client_session("c1"), run_started("r1", "a1", "c1")]);
    let later = t0() + TimeDelta::days(365);
    assert!(recovery::gc(&state, later, &Retention::default()).is_empty());
}

fn evicted_by_count(run: &str) -> Event {
    RunEvicted {
        run_id: run.into(),
        agent_id: "a1".into(),
        reason: EvictionReason::Count,
    }
    .into()
}

/// `r0` in progress, then `r1` .. `r4` ended, in start order.
fn five_runs() -> Vec<Event> {
    let mut events = given![client_session("c1"), run_started("r0", "a1", "c1")];
    for i in 1..=4 {
        let run = format!("r{i}");
        events.push(run_started(&run, "a1", "c1"));
        events.push(run_completed(&run, "a1"));
    }
    events
}

#[test]
fn retention_by_count_evicts_the_oldest_ended_runs_and_never_a_run_in_progress() {
    let state = fold(&five_runs());
    let two = Retention {
        max_age: TimeDelta::days(30),
        max_runs: 2,
    };
    assert_eq!(
        recovery::gc(&state, soon(), &two),
        vec![
            evicted_by_count("r1"),
            evicted_by_count("r2"),
            evicted_by_count("r3")
        ]
    );
    let none = Retention { max_runs: 0, ..two };
    assert_eq!(
        recovery::gc(&state, soon(), &none).len(),
        4,
        "every ended run, and r0 stays"
    );
    let five = Retention { max_runs: 5, ..two };
    assert!(recovery::gc(&state, soon(), &five).is_empty());
}

#[test]
fn recovery_counts_a_run_it_ends_as_ended() {
    let state = fold(&five_runs());
    let two = Retention {
        max_age: TimeDelta::days(30),
        max_runs: 2,
    };
    let events = recovery::recover(&state, soon(), &two);
    assert_eq!(
        events,
        vec![
            run_incomplete("r0", "a1", IncompleteReason::DaemonRestart),
            SessionClosed {
                client_id: "c1".into(),
                role: Some(Role::Client),
                agent_id: None,
                reason: "daemon_restart".into(),
            }
            .into(),
            evicted_by_count("r0"),
            evicted_by_count("r1"),
            evicted_by_count("r2"),
        ]
    );
    let after = applied(state, &events, soon());
    assert_eq!(after.run_count(), 2);
    assert!(recovery::recover(&after, soon(), &two).is_empty());
}

#[test]
fn age_and_count_evict_each_run_once() {
    let mut events = five_runs();
    events.push(run_started("r5", "a1", "c1"));
    events.push(run_completed("r5", "a1"));
    let state = fold(&events);
    // r1 ends at seq 5, r2 at 7, r3 at 9, r4 at 11, r5 at 13: a cutoff at seq 8's time
    // makes r1 and r2 too old; then at most one run may remain.
    let retention = Retention {
        max_age: soon() - given_ts(8),
        max_runs: 1,
    };
    let age = |run: &str| -> Event {
        RunEvicted {
            run_id: run.into(),
            agent_id: "a1".into(),
            reason: EvictionReason::Age,
        }
        .into()
    };
    let gc = recovery::gc(&state, soon(), &retention);
    assert_eq!(
        gc,
        vec![
            age("r1"),
            age("r2"),
            evicted_by_count("r3"),
            evicted_by_count("r4"),
            evicted_by_count("r5"),
        ]
    );
    let after = applied(state, &gc, soon());
    assert_eq!(
        after.runs().map(|r| r.run_id.as_str()).collect::<Vec<_>>(),
        ["r0"]
    );
}

#[test]
fn the_summary_counts_what_recovery_did() {
    let state = fold(&live_world());
    let events = recovery::recover(&state, soon(), &Retention::default());
    assert_eq!(
        recovery::summarize(&events, 42),
        DaemonRecovered {
            events_replayed: 42,
            runs_adopted: 1,
            sessions_closed: 3,
            approvals_expired: 1,
            subscriptions_closed: 1,
            tool_calls_cancelled: 1,
            runs_evicted: 0,
        }
    );
}

#[test]
fn recovery_marks_the_daemon_recovered_only_with_its_summary() {
    let mut state = fold(&given![
        Event::from(car_events::event::DaemonStarted {
            version: "0.1.0".into(),
            pid: 1,
            data_dir: "/d".into(),
            listen: "127.0.0.1:9100".into(),
        }),
        client_session("c1"),
    ]);
    let events = recovery::recover(&state, soon(), &Retention::default());
    state = applied(state, &events, soon());
    assert!(!state.daemon().unwrap().recovered);
    let summary = recovery::summarize(&events, 3);
    state = applied(state, &[summary.into()], soon());
    let daemon = state.daemon().unwrap();
    assert!(daemon.recovered && !daemon.stopped);
}
