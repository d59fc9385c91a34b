//! Decisions about sessions (PROTOCOL.md §2.1, §3.7): opening, `session.auth` with agent
//! attachment, closing (subscriptions end, tool calls are cancelled) and the end of the
//! disconnect grace (runs end only when no other live owner holds them).

use car_events::Event;
use car_events::event::{
    IncompleteReason, Role, SessionAuthenticated, SessionClosed, SessionOpened, SubscriptionClosed,
    SubscriptionTarget, ToolCallCancelled,
};
use car_projections::decide::OpenSession;
use car_projections::{Command, Refusal};
use rstest::rstest;

use crate::gwt::{Then, check, event, events, invalid, nothing, refused};
use crate::support::*;

fn auth_event(client: &str, role: Role, agent: Option<&str>) -> SessionAuthenticated {
    SessionAuthenticated {
        client_id: client.into(),
        role,
        agent_id: agent.map(Into::into),
    }
}

#[rstest]
#[case::a_connection_opens_unauthenticated(
    given![],
    open_session("c1"),
    event(SessionOpened { client_id: "c1".into(), peer: PEER.into(), role: None, agent_id: None }),
)]
#[case::with_auth_disabled_the_role_is_known_at_once(
    given![],
    Command::OpenSession(OpenSession { client_id: "c1".into(), peer: PEER.into(), role: Some(Role::Client) }),
    event(SessionOpened { client_id: "c1".into(), peer: PEER.into(), role: Some(Role::Client), agent_id: None }),
)]
#[case::the_daemon_token_makes_a_client(
    given![opened("c1")],
    authenticate("c1", Role::Client, None),
    event(auth_event("c1", Role::Client, None)),
)]
#[case::a_client_token_with_no_agent_binding_keeps_no_agent_id(
    given![opened("c1")],
    authenticate("c1", Role::Client, Some("a1")),
    event(auth_event("c1", Role::Client, None)),
)]
#[case::the_host_token_makes_a_host(
    given![opened("c1")],
    authenticate("c1", Role::Host, None),
    event(auth_event("c1", Role::Host, None)),
)]
#[case::an_agent_attaches(
    given![opened("c1")],
    authenticate("c1", Role::Agent, Some("a1")),
    event(auth_event("c1", Role::Agent, Some("a1"))),
)]
#[case::a_second_connection_claiming_an_attached_agent_is_refused(
    given![agent_session("c1", "a1"), opened("c2")],
    authenticate("c2", Role::Agent, Some("a1")),
    refused(Refusal::AgentAttached("a1".into())),
)]
#[case::another_agent_may_attach_beside_it(
    given![agent_session("c1", "a1"), opened("c2")],
    authenticate("c2", Role::Agent, Some("a2")),
    event(auth_event("c2", Role::Agent, Some("a2"))),
)]
#[case::an_agent_may_attach_again_once_its_connection_closed(
    given![agent_session("c1", "a1"), agent_closed("c1", "a1"), opened("c2")],
    authenticate("c2", Role::Agent, Some("a1")),
    event(auth_event("c2", Role::Agent, Some("a1"))),
)]
#[case::an_agent_session_needs_an_agent_id(
    given![opened("c1")],
    authenticate("c1", Role::Agent, None),
    invalid("agent_id"),
)]
#[case::an_agent_id_must_not_be_blank(
    given![opened("c1")],
    authenticate("c1", Role::Agent, Some("  ")),
    invalid("agent_id"),
)]
#[case::re_auth_is_refused(
    given![client_session("c1")],
    authenticate("c1", Role::Client, None),
    refused(Refusal::AlreadyAuthenticated),
)]
#[case::re_auth_with_another_role_is_refused(
    given![client_session("c1")],
    authenticate("c1", Role::Host, None),
    refused(Refusal::AlreadyAuthenticated),
)]
#[case::re_auth_of_an_agent_is_refused_before_the_agent_check(
    given![agent_session("c1", "a1")],
    authenticate("c1", Role::Agent, Some("a1")),
    refused(Refusal::AlreadyAuthenticated),
)]
#[case::auth_of_a_session_that_is_not_open_is_refused(
    given![],
    authenticate("c9", Role::Client, None),
    Then::Forbidden,
)]
#[case::auth_disabled_sessions_may_still_send_session_auth(
    given![opened_unrestricted("c1")],
    authenticate("c1", Role::Client, None),
    event(auth_event("c1", Role::Client, None)),
)]
fn session_open_and_auth(#[case] given: Vec<Event>, #[case] when: Command, #[case] then: Then) {
    check(given, when, then);
}

fn cancelled(request: &str) -> Event {
    ToolCallCancelled {
        request_id: request.into(),
        reason: "disconnected".into(),
    }
    .into()
}

fn sub_closed(sub: &str, reason: &str) -> Event {
    SubscriptionClosed {
        subscription_id: sub.into(),
        reason: reason.into(),
    }
    .into()
}

fn disconnected(run: &str, agent: &str) -> Event {
    run_incomplete(run, agent, IncompleteReason::Disconnected)
}

/// Two sessions, each with subscriptions and a tool call in flight, and a run each.
fn two_busy_sessions() -> Vec<Event> {
    given![
        client_session("c1"),
        client_session("c2"),
        run_started("r1", "a1", "c1"),
        run_started("r2", "a2", "c2"),
        subscribed("s1", "c1", run_target("r1")),
        subscribed("s2", "c1", SubscriptionTarget::Host),
        subscribed("s3", "c2", run_target("r1")),
        dispatched("q1", "c1", Some("r1")),
        dispatched("q2", "c2", Some("r2")),
        dispatched("q3", "c1", None),
    ]
}

#[rstest]
#[case::closing_ends_its_subscriptions_and_cancels_its_tool_calls(
    two_busy_sessions(),
    close_session("c1"),
    events(vec![cancelled("q1"), cancelled("q3"), sub_closed("s1", "disconnected"), sub_closed("s2", "disconnected"), session_closed("c1")]),
)]
#[case::closing_leaves_runs_to_the_grace(
    given![agent_session("c1", "a1"), run_started("r1", "a1", "c1")],
    close_session("c1"),
    event(agent_closed("c1", "a1")),
)]
#[case::closing_an_unauthenticated_session_records_no_role(
    given![opened("c1")],
    close_session("c1"),
    event(SessionClosed { client_id: "c1".into(), role: None, agent_id: None, reason: "closed".into() }),
)]
#[case::closing_a_session_that_is_not_open_does_nothing(
    given![client_session("c1"), session_closed("c1")],
    close_session("c1"),
    nothing(),
)]
#[case::a_run_whose_starter_left_ends(
    given![client_session("c1"), run_started("r1", "a1", "c1"), session_closed("c1")],
    end_abandoned("c1", None),
    event(disconnected("r1", "a1")),
)]
#[case::a_run_held_by_a_live_agent_session_does_not_end_when_its_starter_leaves(
    given![client_session("c1"), agent_session("c2", "a1"), run_started("r1", "a1", "c1"), session_closed("c1")],
    end_abandoned("c1", None),
    nothing(),
)]
#[case::it_ends_once_the_agent_session_leaves_too(
    given![
        client_session("c1"), agent_session("c2", "a1"), run_started("r1", "a1", "c1"),
        session_closed("c1"), agent_closed("c2", "a1"),
    ],
    end_abandoned("c2", Some("a1")),
    event(disconnected("r1", "a1")),
)]
#[case::it_ends_when_the_grace_of_the_agent_expires_before_its_close_is_recorded(
    given![client_session("c1"), agent_session("c2", "a1"), run_started("r1", "a1", "c1"), session_closed("c1")],
    end_abandoned("c2", Some("a1")),
    event(disconnected("r1", "a1")),
)]
#[case::an_agent_leaving_does_not_end_a_run_whose_starter_is_live(
    given![client_session("c1"), agent_session("c2", "a1"), run_started("r1", "a1", "c1"), agent_closed("c2", "a1")],
    end_abandoned("c2", Some("a1")),
    nothing(),
)]
#[case::an_agent_that_reattached_during_the_grace_keeps_its_runs(
    given![
        agent_session("c1", "a1"), run_started("r1", "a1", "c1"), agent_closed("c1", "a1"),
        agent_session("c2", "a1"),
    ],
    end_abandoned("c1", Some("a1")),
    nothing(),
)]
#[case::runs_of_other_sessions_are_untouched(
    given![
        client_session("c1"), client_session("c2"), run_started("r1", "a1", "c1"),
        run_started("r2", "a2", "c2"), run_started("r3", "a1", "c2"), session_closed("c1"),
    ],
    end_abandoned("c1", None),
    event(disconnected("r1", "a1")),
)]
#[case::every_abandoned_run_ends_in_start_order(
    given![
        client_session("c1"), run_started("r2", "a1", "c1"), run_started("r1", "a2", "c1"),
        session_closed("c1"),
    ],
    end_abandoned("c1", None),
    events(vec![disconnected("r2", "a1"), disconnected("r1", "a2")]),
)]
#[case::ended_runs_are_left_alone(
    given![
        client_session("c1"), run_started("r1", "a1", "c1"), run_completed("r1", "a1"),
        session_closed("c1"),
    ],
    end_abandoned("c1", None),
    nothing(),
)]
fn disconnect(#[case] given: Vec<Event>, #[case] when: Command, #[case] then: Then) {
    check(given, when, then);
}
