//! PROTOCOL.md §14.1–14.2 as decisions: `runs.cancel` step by step (each refusal, the
//! orphan and quarantine paths, receipts whose digests the fold recomputes) and
//! `runs.resume` (who may, when, and what it changes), in given/when/then form, plus a
//! walk of whole cancellations as the gateway drives them.

use car_events::event::{
    IncompleteReason, RunCancellationRequested, RunCancellationResult, RunEnded, RunResumed,
    Termination,
};
use car_events::receipt::{self, CancelStatus, Receipt};
use car_events::{Event, JsonText};
use car_projections::runs::cancel::{AdvanceCancel, Progress, StopReport, progress};
use car_projections::runs::resume::ResumeRun;
use car_projections::{Actor, Command, Refusal, State, decide, trace};
use rstest::rstest;

use crate::gwt::{Then, check, event, nothing, refused};
use crate::support::*;

const REASON: &str = "operator pressed stop";

fn step(actor: Actor, key: &str, stopped: Option<StopReport>) -> AdvanceCancel {
    AdvanceCancel {
        principal: car_projections::runs::cancel::principal(&actor),
        actor,
        run_id: "r1".into(),
        idempotency_key: key.into(),
        reason_digest: receipt::reason_digest(REASON),
        stopped,
    }
}

fn cancel(actor: Actor, key: &str) -> Command {
    Command::AdvanceCancel(step(actor, key, None))
}

fn requested(key: &str, principal: &str) -> Event {
    Event::RunCancellationRequested(RunCancellationRequested {
        run_id: "r1".into(),
        idempotency_key: key.into(),
        reason_digest: receipt::reason_digest(REASON),
        principal: principal.into(),
    })
}

fn cancelled_end(key: &str) -> Event {
    Event::RunEnded(RunEnded {
        run_id: "r1".into(),
        agent_id: "a1".into(),
        termination: Termination::Cancelled {
            idempotency_key: key.into(),
            reason_digest: receipt::reason_digest(REASON),
        },
    })
}

fn orphan_end() -> Event {
    run_incomplete("r1", "a1", IncompleteReason::CancelledOrphan)
}

/// The agent `a1` on session `c1`, its run `r1`, and a host session `h1`.
fn live_run() -> Vec<Event> {
    given![
        agent_session("c1", "a1"),
        host_session("h1"),
        run_started("r1", "a1", "c1"),
    ]
}

fn unconfirmed(key: &str, principal: &str) -> Event {
    let receipt = Receipt::new(
        "r1",
        key,
        &receipt::reason_digest(REASON),
        principal,
        CancelStatus::TerminationUnconfirmed,
        None,
        Some("act-1".into()),
        Some("req-1".into()),
    );
    Event::RunCancellationResult(RunCancellationResult {
        run_id: "r1".into(),
        idempotency_key: key.into(),
        status: "termination_unconfirmed".into(),
        receipt: JsonText::from_value(&receipt.to_value()),
    })
}

fn host() -> Actor {
    Actor::host("h1")
}

fn agent() -> Actor {
    Actor::agent("c1", "a1")
}

#[rstest]
#[case::the_first_step_records_the_request_and_never_the_reason(
    live_run(),
    cancel(host(), "k1"),
    event(requested("k1", "host"))
)]
#[case::an_owner_may_cancel(live_run(), cancel(agent(), "k1"), event(requested("k1", "agent:a1")))]
#[case::a_client_that_started_the_run_is_named_by_its_session(
    given![client_session("c9"), run_started("r1", "a1", "c9")],
    cancel(Actor::client("c9"), "k1"),
    event(requested("k1", "client:c9")),
)]
#[case::another_agent_cannot_see_the_run(
    given![live_run(), agent_session("c2", "a2")],
    cancel(Actor::agent("c2", "a2"), "k1"),
    refused(Refusal::UnknownRun("r1".into())),
)]
#[case::an_unknown_run(
    given![host_session("h1")],
    cancel(host(), "k1"),
    refused(Refusal::UnknownRun("r1".into())),
)]
#[case::until_the_proposals_are_stopped_nothing_more_is_written(
    given![live_run(), requested("k1", "host")],
    cancel(host(), "k1"),
    nothing(),
)]
#[case::once_stopped_the_run_ends_cancelled(
    given![live_run(), requested("k1", "host")],
    Command::AdvanceCancel(step(host(), "k1", Some(StopReport::default()))),
    event(cancelled_end("k1")),
)]
#[case::the_same_key_with_another_reason_is_refused(
    given![live_run(), requested("k1", "host")],
    Command::AdvanceCancel(AdvanceCancel {
        reason_digest: receipt::reason_digest("something else"),
        ..step(host(), "k1", None)
    }),
    refused(Refusal::CancelKeyReused),
)]
#[case::the_same_key_from_another_principal_is_refused(
    given![live_run(), requested("k1", "host")],
    cancel(agent(), "k1"),
    refused(Refusal::CancelKeyReused),
)]
#[case::a_host_ends_an_orphan(
    given![
        agent_session("c1", "a1"),
        host_session("h1"),
        run_started("r1", "a1", "c1"),
        agent_closed("c1", "a1"),
        requested("k1", "host"),
    ],
    cancel(host(), "k1"),
    event(orphan_end()),
)]
#[case::an_unconfirmed_end_quarantines_and_only_a_host_may_end_it(
    given![live_run(), requested("k1", "agent:a1"), unconfirmed("k1", "agent:a1")],
    cancel(agent(), "k2"),
    refused(Refusal::CancelUnavailable),
)]
#[case::a_host_cancels_a_quarantined_run_as_an_orphan(
    given![
        live_run(),
        requested("k1", "agent:a1"),
        unconfirmed("k1", "agent:a1"),
        requested("k2", "host"),
    ],
    cancel(host(), "k2"),
    event(orphan_end()),
)]
#[case::a_quarantined_run_takes_no_outcome(
    given![live_run(), requested("k1", "agent:a1"), unconfirmed("k1", "agent:a1")],
    complete_run(agent(), "r1", serde_json::json!({"status": "success"})),
    refused(Refusal::Quarantined("r1".into())),
)]
#[case::a_quarantined_run_is_not_ended_by_its_owner_leaving(
    given![live_run(), requested("k1", "agent:a1"), unconfirmed("k1", "agent:a1"),
           agent_closed("c1", "a1")],
    end_abandoned("c1", Some("a1")),
    nothing(),
)]
fn cancel_steps(#[case] given: Vec<Event>, #[case] when: Command, #[case] then: Then) {
    check(given, when, then);
}

#[rstest]
#[case::an_agent_takes_over_a_run_whose_producer_left(
    given![client_session("c9"), run_started("r1", "a1", "c9"), session_closed("c9"),
           agent_session("c1", "a1")],
    resume(agent()),
    event(Event::RunResumed(RunResumed {
        run_id: "r1".into(),
        agent_id: "a1".into(),
        client_id: "c1".into(),
        resumed_from_client_id: Some("c9".into()),
    })),
)]
#[case::not_while_the_producer_is_live(
    given![client_session("c9"), run_started("r1", "a1", "c9"), agent_session("c1", "a1")],
    resume(agent()),
    Then::Forbidden,
)]
#[case::not_by_a_client_session(
    given![client_session("c9"), run_started("r1", "a1", "c9"), session_closed("c9"),
           client_session("c8")],
    resume(Actor::client("c8")),
    Then::Forbidden,
)]
#[case::not_by_a_host(
    given![client_session("c9"), run_started("r1", "a1", "c9"), session_closed("c9"),
           host_session("h1")],
    resume(host()),
    Then::Forbidden,
)]
#[case::not_by_another_agent(
    given![client_session("c9"), run_started("r1", "a1", "c9"), session_closed("c9"),
           agent_session("c2", "a2")],
    resume(Actor::agent("c2", "a2")),
    refused(Refusal::UnknownRun("r1".into())),
)]
#[case::not_an_ended_run(
    given![client_session("c9"), run_started("r1", "a1", "c9"), run_completed("r1", "a1"),
           session_closed("c9"), agent_session("c1", "a1")],
    resume(agent()),
    Then::Forbidden,
)]
fn resume_decisions(#[case] given: Vec<Event>, #[case] when: Command, #[case] then: Then) {
    check(given, when, then);
}

fn resume(actor: Actor) -> Command {
    Command::ResumeRun(ResumeRun {
        actor,
        run_id: "r1".into(),
    })
}

/// Decides and applies one command as the writer does; returns its events.
fn write(state: &mut State, command: &Command) -> Result<Vec<Event>, Refusal> {
    let events = decide(state, command)?;
    apply_events(state, &events, given_ts).unwrap_or_else(|e| panic!("{e}"));
    Ok(events)
}

/// Walks a whole cancellation the way the gateway does; `stop` is what stopping the
/// proposals reports. Returns the receipt and how many steps it took.
fn walk(state: &mut State, actor: Actor, key: &str, stop: StopReport) -> (Receipt, usize) {
    let mut current = step(actor, key, None);
    for steps in 1..=5 {
        write(state, &Command::AdvanceCancel(current.clone())).unwrap();
        match progress(state, "r1", key) {
            Progress::Done(receipt) => return (*receipt, steps),
            Progress::StopProposals if current.stopped.is_none() => {
                current.stopped = Some(stop.clone());
            }
            Progress::StopProposals | Progress::Continue => {}
        }
    }
    panic!("the cancellation did not settle in 5 steps");
}

fn ended_digest(state: &State) -> String {
    let run = state.run("r1").unwrap();
    receipt::jcs_digest(&trace::ended_record(run, run.end.as_ref().unwrap()))
}

#[test]
fn a_cancellation_walks_to_a_confirmed_receipt_and_a_retry_gets_the_same() {
    let mut state = fold(&live_run());
    let stop = StopReport {
        abandoned: Some(("act-1".into(), "req-1".into())),
        unconfirmed: false,
    };
    let (receipt, steps) = walk(&mut state, host(), "k1", stop);
    assert_eq!(steps, 3, "request, end, result");
    assert_eq!(receipt.status, "cancelled_confirmed");
    assert_eq!(receipt.action_id.as_deref(), Some("act-1"));
    assert_eq!(receipt.request_id.as_deref(), Some("req-1"));
    assert_eq!(receipt.terminal_digest, Some(ended_digest(&state)));
    Receipt::parse_checked(&receipt.to_value()).unwrap();
    let head = state.head();
    let (again, steps) = walk(&mut state, host(), "k1", StopReport::default());
    assert_eq!((again, steps), (receipt.clone(), 1));
    assert_eq!(state.head(), head, "a retry appends nothing");
    // A new key on the ended run: already terminal, the same end digested.
    let (late, _) = walk(&mut state, agent(), "k2", StopReport::default());
    assert_eq!(late.status, "already_terminal");
    assert_eq!(late.terminal_digest, receipt.terminal_digest);
    assert_eq!(late.action_id, None);
}

#[test]
fn an_unconfirmed_cancellation_quarantines_until_a_host_ends_the_orphan() {
    let mut state = fold(&live_run());
    let stop = StopReport {
        abandoned: Some(("act-1".into(), "req-1".into())),
        unconfirmed: true,
    };
    let (receipt, _) = walk(&mut state, agent(), "k1", stop);
    assert_eq!(receipt.status, "termination_unconfirmed");
    assert_eq!(receipt.terminal_digest, None);
    let run = state.run("r1").unwrap();
    assert!(run.quarantined && !run.is_ended());
    let (orphan, steps) = walk(&mut state, host(), "k2", StopReport::default());
    assert_eq!(steps, 3, "request, orphan end, result");
    assert_eq!(orphan.status, "already_terminal");
    assert_eq!(orphan.terminal_digest, Some(ended_digest(&state)));
    let run = state.run("r1").unwrap();
    assert!(!run.quarantined);
    assert_eq!(
        run.end.as_ref().unwrap().termination,
        Termination::Incomplete {
            reason: IncompleteReason::CancelledOrphan
        }
    );
}

#[test]
fn the_fold_refuses_a_receipt_whose_digests_do_not_recompute() {
    let mut state = fold(&live_run());
    walk(&mut state, host(), "k1", StopReport::default());
    let Event::RunCancellationResult(stored) = decide(
        &fold(&given![
            live_run(),
            requested("k1", "host"),
            cancelled_end("k1")
        ]),
        &cancel(host(), "k1"),
    )
    .unwrap()
    .remove(0) else {
        panic!("a result");
    };
    let base = given![live_run(), requested("k1", "host"), cancelled_end("k1")];
    let tamper = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut receipt = stored.receipt.to_value();
        change(&mut receipt);
        let mut events = base.clone();
        events.push(Event::RunCancellationResult(RunCancellationResult {
            receipt: JsonText::from_value(&receipt),
            ..stored.clone()
        }));
        let mut state = State::new();
        apply_events(&mut state, &events, given_ts).unwrap_err()
    };
    let err = tamper(&|r| r["status"] = "already_terminal".into());
    assert!(err.to_string().contains("receipt_digest"), "{err}");
    let err = tamper(&|r| {
        r["terminal_digest"] = receipt::jcs_digest(&serde_json::json!({})).into();
        let fixed = Receipt::parse_checked(r).err();
        assert!(fixed.is_some());
        let receipt: Receipt = serde_json::from_value(r.clone()).unwrap();
        r["receipt_digest"] = receipt.computed_digest().into();
    });
    assert!(err.to_string().contains("terminal_digest"), "{err}");
    // A result for a key never requested, and a second result, are refused too.
    let mut events = base.clone();
    events.push(Event::RunCancellationResult(RunCancellationResult {
        idempotency_key: "k9".into(),
        ..stored.clone()
    }));
    assert!(apply_events(&mut State::new(), &events, given_ts).is_err());
    let mut events = base;
    events.push(Event::RunCancellationResult(stored.clone()));
    events.push(Event::RunCancellationResult(stored));
    assert!(apply_events(&mut State::new(), &events, given_ts).is_err());
}
