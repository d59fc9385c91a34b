//! The fold refuses contradictions: every event that cannot follow the events before it is
//! an [`ApplyError`] naming its seq and kind, and a refused event leaves the state exactly
//! as it was (same canonical digest, same head). Also: the refusal messages the gateway
//! sends are the contract's words (PROTOCOL.md §2.1, §3.2–§3.4, §5.1).

use car_events::event::{
    ProposalFinished, ProposalSubmitted, Role, SubscriptionClosed, SubscriptionTarget,
    TurnsRecorded,
};
use car_events::{Event, JsonText};
use car_projections::canonical;
use car_projections::decide::Dropped;
use car_projections::state::{ApplyError, Contradiction};
use car_projections::{Refusal, State};
use rstest::rstest;

use crate::support::*;

fn s(text: &str) -> String {
    text.to_owned()
}

#[rstest]
#[case::a_session_opened_twice(
    client_session("c1"),
    opened("c1"),
    Contradiction::SessionAlreadyOpen(s("c1"))
)]
#[case::auth_of_an_unknown_session(given![], authenticated("c1", Role::Client, None), Contradiction::UnknownSession(s("c1")))]
#[case::closing_an_unknown_session(
    client_session("c2"),
    session_closed("c1"),
    Contradiction::UnknownSession(s("c1"))
)]
#[case::an_agent_attached_twice(
    given![agent_session("c1", "a1"), opened("c2")],
    authenticated("c2", Role::Agent, Some("a1")),
    Contradiction::AgentAttached { agent_id: s("a1"), client_id: s("c1") },
)]
#[case::a_run_started_twice(
    given![client_session("c1"), run_started("r1", "a1", "c1")],
    run_started("r1", "a2", "c1"),
    Contradiction::DuplicateRun(s("r1")),
)]
#[case::a_retired_key_reused(
    given![client_session("c1"), keyed_run_started("k1", "a1", "c1"), run_completed("k1", "a1"), run_evicted("k1", "a1")],
    keyed_run_started("k1", "a1", "c1"),
    Contradiction::DuplicateRun(s("k1")),
)]
#[case::turns_of_an_unknown_run(
    client_session("c1"),
    turns_recorded("r1", 0, 1),
    Contradiction::UnknownRun(s("r1"))
)]
#[case::turns_after_the_end(
    given![client_session("c1"), run_started("r1", "a1", "c1"), run_completed("r1", "a1")],
    turns_recorded("r1", 0, 1),
    Contradiction::RunEnded(s("r1")),
)]
#[case::turns_with_a_gap(
    given![client_session("c1"), run_started("r1", "a1", "c1"), turns_recorded("r1", 0, 2)],
    turns_recorded("r1", 3, 1),
    Contradiction::TurnIndex { run_id: s("r1"), expected: 2, got: 3 },
)]
#[case::turns_repeated(
    given![client_session("c1"), run_started("r1", "a1", "c1"), turns_recorded("r1", 0, 2)],
    turns_recorded("r1", 1, 1),
    Contradiction::TurnIndex { run_id: s("r1"), expected: 2, got: 1 },
)]
#[case::turns_past_the_ceiling(
    given![client_session("c1"), run_started("r1", "a1", "c1"), turns_up_to("r1", 1999)],
    turns_recorded("r1", 1999, 2),
    Contradiction::TurnCeiling { run_id: s("r1"), count: 2001 },
)]
#[case::a_second_end(
    given![client_session("c1"), run_started("r1", "a1", "c1"), run_completed("r1", "a1")],
    run_completed("r1", "a1"),
    Contradiction::RunEnded(s("r1")),
)]
#[case::an_end_naming_another_agent(
    given![client_session("c1"), run_started("r1", "a1", "c1")],
    run_completed("r1", "a2"),
    Contradiction::AgentMismatch { run_id: s("r1"), expected: s("a1"), got: s("a2") },
)]
#[case::an_eviction_naming_another_agent(
    given![client_session("c1"), run_started("r1", "a1", "c1"), run_completed("r1", "a1")],
    run_evicted("r1", "a2"),
    Contradiction::AgentMismatch { run_id: s("r1"), expected: s("a1"), got: s("a2") },
)]
#[case::an_end_of_an_unknown_run(
    client_session("c1"),
    run_completed("r1", "a1"),
    Contradiction::UnknownRun(s("r1"))
)]
#[case::evicting_a_run_in_progress(
    given![client_session("c1"), run_started("r1", "a1", "c1")],
    run_evicted("r1", "a1"),
    Contradiction::RunInProgress(s("r1")),
)]
#[case::evicting_twice(
    given![client_session("c1"), run_started("r1", "a1", "c1"), run_completed("r1", "a1"), run_evicted("r1", "a1")],
    run_evicted("r1", "a1"),
    Contradiction::UnknownRun(s("r1")),
)]
#[case::a_tool_call_dispatched_twice(
    given![client_session("c1"), dispatched("q1", "c1", None)],
    dispatched("q1", "c1", None),
    Contradiction::DuplicateToolCall(s("q1")),
)]
#[case::a_tool_call_finished_twice(
    given![client_session("c1"), dispatched("q1", "c1", None), tool_completed("q1")],
    tool_completed("q1"),
    Contradiction::UnknownToolCall(s("q1")),
)]
#[case::an_approval_requested_twice(
    given![client_session("c1"), approval_requested("ap1", "c1", false)],
    approval_requested("ap1", "c1", false),
    Contradiction::DuplicateApproval(s("ap1")),
)]
#[case::an_unknown_approval_resolved(
    client_session("c1"),
    approval_resolved("ap1", "approve", "c1"),
    Contradiction::UnknownApproval(s("ap1"))
)]
#[case::an_approval_resolved_twice(
    given![client_session("c1"), approval_requested("ap1", "c1", false), approval_resolved("ap1", "deny", "h")],
    approval_resolved("ap1", "approve", "h"),
    Contradiction::ApprovalNotPending { id: s("ap1"), status: "resolved" },
)]
#[case::an_approval_resolved_after_expiry(
    given![client_session("c1"), approval_requested("ap1", "c1", false), approval_expired("ap1")],
    approval_resolved("ap1", "approve", "h"),
    Contradiction::ApprovalNotPending { id: s("ap1"), status: "expired" },
)]
#[case::an_approval_expired_after_resolution(
    given![client_session("c1"), approval_requested("ap1", "c1", false), approval_resolved("ap1", "deny", "h")],
    approval_expired("ap1"),
    Contradiction::ApprovalNotPending { id: s("ap1"), status: "resolved" },
)]
#[case::a_resolution_that_is_not_an_option(
    given![client_session("c1"), approval_requested("ap1", "c1", false)],
    approval_resolved("ap1", "maybe", "h"),
    Contradiction::NotAnOption { id: s("ap1"), resolution: s("maybe") },
)]
#[case::a_subscription_opened_twice(
    given![client_session("c1"), subscribed("s1", "c1", SubscriptionTarget::Host)],
    subscribed("s1", "c1", SubscriptionTarget::Host),
    Contradiction::DuplicateSubscription(s("s1")),
)]
#[case::a_subscription_of_a_closed_session(
    given![client_session("c1"), session_closed("c1")],
    subscribed("s1", "c1", SubscriptionTarget::Host),
    Contradiction::UnknownSession(s("c1")),
)]
#[case::closing_an_unknown_subscription(
    client_session("c1"),
    SubscriptionClosed { subscription_id: s("s1"), reason: s("unsubscribed") }.into(),
    Contradiction::UnknownSubscription(s("s1")),
)]
#[case::a_proposal_submitted_twice(
    given![client_session("c1"), Event::from(ProposalSubmitted { proposal_id: s("p1"), client_id: s("c1"), run_id: None, action_ids: vec![] })],
    ProposalSubmitted { proposal_id: s("p1"), client_id: s("c1"), run_id: None, action_ids: vec![] }.into(),
    Contradiction::DuplicateProposal(s("p1")),
)]
#[case::an_unknown_proposal_finished(
    client_session("c1"),
    ProposalFinished { proposal_id: s("p1"), final_state: s("failed") }.into(),
    Contradiction::UnknownProposal(s("p1")),
)]
fn contradictions_are_refused_and_change_nothing(
    #[case] given: Vec<Event>,
    #[case] bad: Event,
    #[case] expected: Contradiction,
) {
    let mut state = fold(&given);
    let before = canonical::render_text(&state);
    let seq = state.head() + 1;
    let kind = bad.kind();
    let err = state
        .apply(&envelope(seq, given_ts(seq), bad))
        .expect_err("the event contradicts the state");
    assert_eq!(
        err,
        ApplyError {
            seq,
            kind,
            contradiction: expected
        }
    );
    assert!(
        err.to_string()
            .starts_with(&format!("event at seq {seq} ({kind})")),
        "{err}"
    );
    assert_eq!(
        canonical::render_text(&state),
        before,
        "a refused event changed the state"
    );
}

#[rstest]
#[case::a_seq_skipped(2)]
#[case::a_seq_repeated(0)]
#[case::a_seq_far_ahead(1000)]
fn seqs_must_follow_the_head_by_exactly_one(#[case] offset: u64) {
    let mut state = fold(&client_session("c1"));
    let head = state.head();
    let seq = head + offset;
    let err = state
        .apply(&envelope(seq, given_ts(seq), opened("c2")))
        .expect_err("out of order");
    assert_eq!(err.seq, seq);
    assert_eq!(
        err.contradiction,
        Contradiction::OutOfOrder { expected: head + 1 }
    );
    assert_eq!(state.head(), head);
    assert!(state.session("c2").is_none());
}

/// A batch of no turns is harmless and leaves no trace in the run's index.
#[test]
fn an_empty_turn_batch_records_nothing() {
    let mut state = fold(&given![
        client_session("c1"),
        run_started("r1", "a1", "c1"),
        turns_recorded("r1", 0, 2)
    ]);
    let seq = state.head() + 1;
    let empty = TurnsRecorded {
        run_id: s("r1"),
        base_index: 2,
        turns: Vec::<JsonText>::new(),
    };
    state
        .apply(&envelope(seq, given_ts(seq), empty.into()))
        .unwrap();
    let run = state.run("r1").unwrap();
    assert_eq!(run.turn_count, 2);
    assert_eq!(run.turn_batches.len(), 1);
}

/// An empty state renders the same however it was made.
#[test]
fn an_empty_state_has_a_stable_digest() {
    assert_eq!(
        canonical::digest(&State::new()),
        canonical::digest(&State::default())
    );
    assert_eq!(canonical::render(&State::new())["head"], 0);
}

#[rstest]
#[case::agent_attached(
    Refusal::AgentAttached(s("a1")),
    "agent 'a1' is already attached on another connection"
)]
#[case::already_authenticated(Refusal::AlreadyAuthenticated, "already authenticated")]
#[case::host_cannot_start_runs(Refusal::HostCannotStartRuns, "host sessions cannot start runs")]
#[case::unknown_run(Refusal::UnknownRun(s("r1")), "unknown run_id `r1`")]
#[case::run_terminal(
    Refusal::RunTerminal(s("r1")),
    "run `r1` is already terminal — cannot record another outcome"
)]
#[case::approval_resolved(
    Refusal::ApprovalResolved(s("ap1")),
    "approval ap1 is already resolved"
)]
fn refusal_messages_are_the_contracts(#[case] refusal: Refusal, #[case] message: &str) {
    assert_eq!(refusal.to_string(), message);
}

#[rstest]
#[case(Dropped::RunNotFound, "run_not_found")]
#[case(Dropped::RunTerminal, "run_terminal")]
#[case(Dropped::RunTurnLimit, "run_turn_limit")]
#[case(Dropped::TurnTooLarge, "turn_too_large")]
fn dropped_reasons_have_the_wire_names(#[case] dropped: Dropped, #[case] name: &str) {
    assert_eq!(dropped.as_str(), name);
}

/// Regression: the fold accepted a second `session.authenticated` for a session that had
/// already authenticated (and switched its role), though `session.auth` on an
/// authenticated session is refused (PROTOCOL.md §2.1): such a log is a contradiction.
#[test]
fn regression_a_second_authentication_is_a_contradiction() {
    for given in [client_session("c1"), agent_session("c1", "a1")] {
        let mut state = fold(&given);
        let before = canonical::render_text(&state);
        let seq = state.head() + 1;
        let err = state
            .apply(&envelope(
                seq,
                given_ts(seq),
                authenticated("c1", Role::Host, None),
            ))
            .expect_err("a second authentication");
        assert_eq!(err.seq, seq);
        assert_eq!(
            err.contradiction,
            Contradiction::AlreadyAuthenticated(s("c1"))
        );
        assert_eq!(canonical::render_text(&state), before);
    }
    // A session whose role was known at open (auth disabled) may still authenticate once.
    let mut state = fold(&[opened_unrestricted("c1")]);
    let seq = state.head() + 1;
    state
        .apply(&envelope(
            seq,
            given_ts(seq),
            authenticated("c1", Role::Agent, Some("a1")),
        ))
        .unwrap();
    assert_eq!(state.agent_session("a1"), Some("c1"));
}

/// Regression: `session.closed` carries the session's role and agent (the host feed
/// renders it from the event alone), but the fold accepted one that described the session
/// otherwise than it was, so the feed's history could contradict the state.
#[test]
fn regression_a_session_closed_that_misdescribes_the_session_is_a_contradiction() {
    let cases = [
        // An agent session closed as a client.
        (agent_session("c1", "a1"), session_closed("c1")),
        // Closed as bound to another agent.
        (agent_session("c1", "a1"), agent_closed("c1", "a2")),
        // A client session closed as an agent.
        (client_session("c1"), agent_closed("c1", "a1")),
        // An unauthenticated connection closed with a role.
        (vec![opened("c1")], session_closed("c1")),
    ];
    for (given, close) in cases {
        let mut state = fold(&given);
        let before = canonical::render_text(&state);
        let seq = state.head() + 1;
        let err = state
            .apply(&envelope(seq, given_ts(seq), close.clone()))
            .expect_err("a misdescribed close");
        assert_eq!(err.seq, seq);
        assert!(
            matches!(&err.contradiction, Contradiction::SessionMismatch { client_id, .. } if client_id == "c1"),
            "{close:?}: {err}"
        );
        assert_eq!(canonical::render_text(&state), before);
    }
    // The faithful closes apply.
    let mut state = fold(&given![agent_session("c1", "a1"), client_session("c2")]);
    apply_events(
        &mut state,
        &[agent_closed("c1", "a1"), session_closed("c2")],
        given_ts,
    )
    .unwrap();
    assert_eq!(state.sessions().count(), 0);
    assert_eq!(state.agent_session("a1"), None);
}
