//! Cluster mode's gateway decisions (PROTOCOL.md §19), given/when/then: a gateway declared
//! lost ends its own sessions and runs `incomplete`/`gateway_lost` and nothing of another
//! gateway's; a run resumed on a surviving gateway (§14.2) or owned by a live session of
//! another gateway stays; a clean stop ends only the stopping gateway's; each decision has
//! nothing left to do once its events are applied; the attribution itself is folded.

use car_events::Event;
use car_events::event::{
    ApprovalExpired, GatewayLost, IncompleteReason, ProposalFinished, ProposalSubmitted, Role,
    RunResumed, SessionClosed, SessionOnGateway, SubscriptionClosed, ToolCallCancelled,
};
use car_projections::State;
use car_projections::decide::{Command, OpenSession, decide};
use car_projections::gateways::{active_gateways, gateway_lost, gateway_stopped};

use crate::support::*;

fn on(client: &str, gateway: &str) -> Event {
    SessionOnGateway {
        client_id: client.into(),
        gateway_id: gateway.into(),
    }
    .into()
}

fn closed(client: &str, role: Role, agent: Option<&str>, why: &str) -> Event {
    SessionClosed {
        client_id: client.into(),
        role: Some(role),
        agent_id: agent.map(Into::into),
        reason: why.into(),
    }
    .into()
}

fn lost(gateway: &str, by: &str) -> Event {
    GatewayLost {
        gateway_id: gateway.into(),
        declared_by: by.into(),
    }
    .into()
}

/// Gateway `gw-a` serves client `c1` (run `r1` in progress, a proposal with a tool call in
/// flight, a pending approval) and host `h1` (subscribed to `r1`); gateway `gw-b` serves
/// client `c2` with run `r2` in progress.
fn two_gateways() -> Vec<Event> {
    given![
        client_session("c1"),
        on("c1", "gw-a"),
        host_session("h1"),
        on("h1", "gw-a"),
        client_session("c2"),
        on("c2", "gw-b"),
        run_started("r1", "a1", "c1"),
        run_started("r2", "a2", "c2"),
        subscribed("s1", "h1", run_target("r1")),
        Event::from(ProposalSubmitted {
            proposal_id: "p1".into(),
            client_id: "c1".into(),
            run_id: Some("r1".into()),
            action_ids: vec!["a1".into()],
        }),
        dispatched("q1", "c1", Some("r1")),
        approval_requested("ap1", "c1", false),
    ]
}

/// Everything of `gw-a` in [`two_gateways`], ended for `reason`.
fn gw_a_ended(reason: IncompleteReason) -> Vec<Event> {
    let why = reason.as_str();
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
        SubscriptionClosed {
            subscription_id: "s1".into(),
            reason: why.into(),
        }
        .into(),
        run_incomplete("r1", "a1", reason),
        closed("c1", Role::Client, None, why),
        closed("h1", Role::Host, None, why),
        ApprovalExpired {
            approval_id: "ap1".into(),
            reason: why.into(),
        }
        .into(),
    ]
}

/// Applies `events` after `given` and asserts that deciding again gives nothing.
fn settles(given: Vec<Event>, events: &[Event], again: impl Fn(&State) -> Vec<Event>) {
    let mut all = given;
    all.extend(events.iter().cloned());
    let state = fold(&all);
    assert_eq!(again(&state), Vec::<Event>::new(), "a second decision");
}

#[test]
fn given_two_gateways_when_one_is_declared_lost_then_only_its_sessions_and_runs_end() {
    let given = two_gateways();
    let state = fold(&given);
    assert_eq!(active_gateways(&state, "gw-b"), vec!["gw-a"]);

    let events = gateway_lost(&state, "gw-a", "gw-b");

    // The proposal cut off is completed as after a crash (§14.5): the call in flight has
    // an unknown outcome, recorded as a turn of its run before the run ends.
    let kinds: Vec<&str> = events.iter().map(Event::kind).collect();
    assert_eq!(
        kinds,
        [
            "gateway.lost",
            "proposal.action_finished",
            "run.turns_recorded",
            "tool_call.indeterminate",
            "proposal.result",
            "proposal.finished",
            "subscription.closed",
            "run.ended",
            "session.closed",
            "session.closed",
            "approval.expired",
        ]
    );
    assert_eq!(events[0], lost("gw-a", "gw-b"));
    match &events[1] {
        Event::ProposalActionFinished(f) => assert_eq!(
            (f.action_id.as_str(), f.status.as_str()),
            ("a1", "indeterminate")
        ),
        other => panic!("{other:?}"),
    }
    let mut rest = gw_a_ended(IncompleteReason::GatewayLost);
    rest.drain(..2);
    assert_eq!(events[6..], rest[..]);
    settles(given, &events, |s| gateway_lost(s, "gw-a", "gw-b"));
}

#[test]
fn given_a_lost_gateway_when_it_is_declared_lost_then_nothing_is_left_to_watch() {
    let mut given = two_gateways();
    let state = fold(&given);
    given.extend(gateway_lost(&state, "gw-a", "gw-b"));
    let state = fold(&given);
    assert_eq!(active_gateways(&state, "gw-b"), Vec::<&str>::new());
    assert_eq!(active_gateways(&state, "gw-x"), vec!["gw-b"]);
}

#[test]
fn given_a_run_resumed_on_another_gateway_when_its_first_gateway_is_lost_then_it_stays() {
    let given = given![
        agent_session("g1", "a1"),
        on("g1", "gw-a"),
        run_started("r1", "a1", "g1"),
        agent_closed("g1", "a1"),
        agent_session("g2", "a1"),
        on("g2", "gw-b"),
        Event::from(RunResumed {
            run_id: "r1".into(),
            agent_id: "a1".into(),
            client_id: "g2".into(),
            resumed_from_client_id: Some("g1".into()),
        }),
        // The resuming session leaves too: the run is now gw-b's, in its resume lease.
        agent_closed("g2", "a1"),
    ];
    let state = fold(&given);
    assert_eq!(state.run_gateway("r1"), Some("gw-b"));
    assert_eq!(gateway_lost(&state, "gw-a", "gw-b"), Vec::<Event>::new());
    assert_eq!(
        gateway_lost(&state, "gw-b", "gw-c"),
        vec![
            lost("gw-b", "gw-c"),
            run_incomplete("r1", "a1", IncompleteReason::GatewayLost),
        ]
    );
}

#[test]
fn given_a_run_whose_owner_left_when_its_gateway_is_lost_then_it_ends() {
    // The run waits out its disconnect grace or resume lease in the dead gateway's memory:
    // only the lost declaration can end it.
    let given = given![
        agent_session("g1", "a1"),
        on("g1", "gw-a"),
        run_started("r1", "a1", "g1"),
        agent_closed("g1", "a1"),
    ];
    let state = fold(&given);
    let events = gateway_lost(&state, "gw-a", "gw-b");
    assert_eq!(
        events,
        vec![
            lost("gw-a", "gw-b"),
            run_incomplete("r1", "a1", IncompleteReason::GatewayLost),
        ]
    );
    settles(given, &events, |s| gateway_lost(s, "gw-a", "gw-b"));
}

#[test]
fn given_a_run_owned_by_a_live_agent_session_elsewhere_when_its_gateway_is_lost_then_it_stays() {
    let given = given![
        client_session("c1"),
        on("c1", "gw-a"),
        run_started("r1", "a1", "c1"),
        agent_session("g1", "a1"),
        on("g1", "gw-b"),
    ];
    let state = fold(&given);
    assert_eq!(
        gateway_lost(&state, "gw-a", "gw-b"),
        vec![
            lost("gw-a", "gw-b"),
            closed("c1", Role::Client, None, "gateway_lost"),
        ]
    );
}

#[test]
fn given_sessions_without_a_gateway_when_any_gateway_is_lost_then_they_stay() {
    // A log written before cluster mode part 2: nothing tells whose they are.
    let given = given![client_session("c1"), run_started("r1", "a1", "c1")];
    let state = fold(&given);
    assert_eq!(active_gateways(&state, "gw-b"), Vec::<&str>::new());
    assert_eq!(gateway_lost(&state, "gw-a", "gw-b"), Vec::<Event>::new());
}

#[test]
fn given_two_gateways_when_one_stops_cleanly_then_only_its_own_end_daemon_shutdown() {
    let given = two_gateways();
    let state = fold(&given);
    let events = gateway_stopped(&state, "gw-a", IncompleteReason::DaemonShutdown);
    assert_eq!(events, gw_a_ended(IncompleteReason::DaemonShutdown));
    settles(given, &events, |s| {
        gateway_stopped(s, "gw-a", IncompleteReason::DaemonShutdown)
    });
}

#[test]
fn given_leftovers_of_a_gateways_previous_life_when_it_starts_then_they_end_daemon_restart() {
    let given = two_gateways();
    let state = fold(&given);
    let events = gateway_stopped(&state, "gw-b", IncompleteReason::DaemonRestart);
    assert_eq!(
        events,
        vec![
            run_incomplete("r2", "a2", IncompleteReason::DaemonRestart),
            closed("c2", Role::Client, None, "daemon_restart"),
        ]
    );
}

#[test]
fn when_a_gateway_opens_a_session_then_the_session_and_its_gateway_are_recorded() {
    let state = fold(&[]);
    let open = OpenSession {
        client_id: "c1".into(),
        peer: PEER.into(),
        role: None,
    };
    let events = decide(&state, &Command::OpenSessionOnGateway(open, "gw-a".into())).unwrap();
    assert_eq!(events, given![opened("c1"), on("c1", "gw-a")]);
    let state = fold(&events);
    assert_eq!(state.session_gateway("c1"), Some("gw-a"));
}

#[test]
fn a_session_gateway_for_a_session_that_is_not_open_contradicts_the_log() {
    let state = fold(&[]);
    let mut state = state;
    let err = state
        .apply(&envelope(1, t0(), on("c9", "gw-a")))
        .unwrap_err();
    assert_eq!(err.seq, 1);
    assert_eq!(state.head(), 0);
}
