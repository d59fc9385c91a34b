//! Decisions about subscriptions (PROTOCOL.md §3.5, §6, §7), tool calls and proposals
//! (§4.2): who may follow what, one run subscription per session, unsubscribing, and late
//! replies to tool calls that already ended.

use car_events::event::{
    ProposalFinished, ProposalResultRecorded, ProposalSubmitted, SubscriptionClosed,
    SubscriptionOpened, SubscriptionTarget, ToolCallCancelled, ToolCallCompleted, ToolCallFailed,
    ToolCallTimedOut,
};
use car_events::{Event, JsonText};
use car_projections::decide::{
    DispatchToolCall, SubscriptionSelector, ToolCallOutcome, Unsubscribe,
};
use car_projections::{Actor, Command, Refusal};
use rstest::rstest;
use serde_json::json;

use crate::gwt::{Then, check, event, events, nothing, refused};
use crate::support::*;

fn opened_sub(sub: &str, client: &str, target: SubscriptionTarget) -> SubscriptionOpened {
    SubscriptionOpened {
        subscription_id: sub.into(),
        client_id: client.into(),
        target,
    }
}

fn closed_sub(sub: &str) -> Event {
    SubscriptionClosed {
        subscription_id: sub.into(),
        reason: "unsubscribed".into(),
    }
    .into()
}

fn unsubscribe(client: &str, selector: SubscriptionSelector) -> Command {
    Command::Unsubscribe(Unsubscribe {
        client_id: client.into(),
        selector,
    })
}

/// Client `c1` with run `r1` (agent `a1`), client `c2`, agent session `g` (agent `a1`),
/// host `h1`.
fn world() -> Vec<Event> {
    given![
        client_session("c1"),
        client_session("c2"),
        agent_session("g", "a1"),
        host_session("h1"),
        run_started("r1", "a1", "c1"),
    ]
}

const LOG: SubscriptionTarget = SubscriptionTarget::Log { from_seq: 1 };

#[rstest]
#[case::the_owner_follows_its_run(
    world(),
    subscribe(Actor::client("c1"), "s1", run_target("r1")),
    event(opened_sub("s1", "c1", run_target("r1")))
)]
#[case::the_cursor_is_kept(
    world(),
    subscribe(Actor::client("c1"), "s1", SubscriptionTarget::Run { run_id: "r1".into(), cursor: 7 }),
    event(opened_sub("s1", "c1", SubscriptionTarget::Run { run_id: "r1".into(), cursor: 7 })),
)]
#[case::a_host_follows_any_run(
    world(),
    subscribe(Actor::host("h1"), "s1", run_target("r1")),
    event(opened_sub("s1", "h1", run_target("r1")))
)]
#[case::an_agent_session_follows_its_agents_runs(
    world(),
    subscribe(Actor::agent("g", "a1"), "s1", run_target("r1")),
    event(opened_sub("s1", "g", run_target("r1")))
)]
#[case::an_ended_run_can_be_followed(
    given![world(), run_completed("r1", "a1")],
    subscribe(Actor::client("c1"), "s1", run_target("r1")),
    event(opened_sub("s1", "c1", run_target("r1"))),
)]
#[case::a_run_that_is_not_readable_is_not_found(
    world(),
    subscribe(Actor::client("c2"), "s1", run_target("r1")),
    refused(Refusal::NotFound)
)]
#[case::an_unknown_run_is_not_found(
    world(),
    subscribe(Actor::host("h1"), "s1", run_target("nope")),
    refused(Refusal::NotFound)
)]
#[case::an_evicted_run_is_not_found(
    given![world(), run_completed("r1", "a1"), run_evicted("r1", "a1")],
    subscribe(Actor::host("h1"), "s1", run_target("r1")),
    refused(Refusal::NotFound),
)]
#[case::subscribing_again_replaces_the_sessions_subscription(
    given![world(), subscribed("s1", "c1", run_target("r1")), subscribed("s2", "h1", run_target("r1"))],
    subscribe(Actor::client("c1"), "s3", SubscriptionTarget::Run { run_id: "r1".into(), cursor: 4 }),
    events(vec![closed_sub("s1"), opened_sub("s3", "c1", SubscriptionTarget::Run { run_id: "r1".into(), cursor: 4 }).into()]),
)]
#[case::log_subscriptions_are_for_hosts(
    world(),
    subscribe(Actor::host("h1"), "s1", LOG),
    event(opened_sub("s1", "h1", LOG))
)]
#[case::a_client_may_not_follow_the_log(
    world(),
    subscribe(Actor::client("c1"), "s1", LOG),
    Then::Forbidden
)]
#[case::an_agent_may_not_follow_the_log(
    world(),
    subscribe(Actor::agent("g", "a1"), "s1", LOG),
    Then::Forbidden
)]
#[case::with_auth_disabled_a_client_may_follow_the_log(
    given![world(), opened_unrestricted("u1")],
    subscribe(Actor::client("u1").unrestricted(), "s1", LOG),
    event(opened_sub("s1", "u1", LOG)),
)]
#[case::a_client_may_follow_the_host_feed(
    world(),
    subscribe(Actor::client("c1"), "s1", SubscriptionTarget::Host),
    event(opened_sub("s1", "c1", SubscriptionTarget::Host))
)]
#[case::a_host_may_follow_the_host_feed(
    world(),
    subscribe(Actor::host("h1"), "s1", SubscriptionTarget::Host),
    event(opened_sub("s1", "h1", SubscriptionTarget::Host))
)]
#[case::an_agent_may_not_follow_the_host_feed(
    world(),
    subscribe(Actor::agent("g", "a1"), "s1", SubscriptionTarget::Host),
    Then::Forbidden
)]
fn subscribing(#[case] given: Vec<Event>, #[case] when: Command, #[case] then: Then) {
    check(given, when, then);
}

/// `c1` follows `r1` (`s1`) and the host feed (`s2`); the host follows `r1` (`s3`) and the
/// log (`s4`).
fn following() -> Vec<Event> {
    given![
        world(),
        subscribed("s1", "c1", run_target("r1")),
        subscribed("s2", "c1", SubscriptionTarget::Host),
        subscribed("s3", "h1", run_target("r1")),
        subscribed("s4", "h1", LOG),
    ]
}

#[rstest]
#[case::by_run(following(), unsubscribe("c1", SubscriptionSelector::Run("r1".into())), event(closed_sub("s1")))]
#[case::by_id(following(), unsubscribe("h1", SubscriptionSelector::Id("s4".into())), event(closed_sub("s4")))]
#[case::by_id_of_a_run_subscription(following(), unsubscribe("c1", SubscriptionSelector::Id("s1".into())), event(closed_sub("s1")))]
#[case::a_run_not_followed(following(), unsubscribe("c2", SubscriptionSelector::Run("r1".into())), nothing())]
#[case::an_unknown_run(following(), unsubscribe("c1", SubscriptionSelector::Run("nope".into())), nothing())]
#[case::another_sessions_subscription_id(following(), unsubscribe("c1", SubscriptionSelector::Id("s4".into())), nothing())]
#[case::an_unknown_id(following(), unsubscribe("h1", SubscriptionSelector::Id("s9".into())), nothing())]
#[case::an_already_closed_subscription(
    given![following(), closed_sub("s1")],
    unsubscribe("c1", SubscriptionSelector::Run("r1".into())),
    nothing(),
)]
fn unsubscribing(#[case] given: Vec<Event>, #[case] when: Command, #[case] then: Then) {
    check(given, when, then);
}

/// `c1` runs `r1`; call `q1` (for `r1`) is in flight, `q2` completed, `q3` timed out.
fn calls() -> Vec<Event> {
    given![
        client_session("c1"),
        run_started("r1", "a1", "c1"),
        dispatched("q1", "c1", Some("r1")),
        dispatched("q2", "c1", Some("r1")),
        tool_completed("q2"),
        dispatched("q3", "c1", None),
        Event::from(ToolCallTimedOut {
            request_id: "q3".into(),
            elapsed_ms: 6000
        }),
    ]
}

fn completed(output: serde_json::Value) -> ToolCallOutcome {
    ToolCallOutcome::Completed {
        output,
        elapsed_ms: 12,
    }
}

#[rstest]
#[case::a_call_is_dispatched(
    calls(),
    Command::DispatchToolCall(DispatchToolCall { dispatch: tool_call("q9", "c1", Some("r1")) }),
    event(tool_call("q9", "c1", Some("r1"))),
)]
#[case::a_reply_completes_the_call(
    calls(),
    finish_call("q1", completed(json!({"lines": 3}))),
    event(ToolCallCompleted { request_id: "q1".into(), output: JsonText::parse(r#"{"lines":3}"#).unwrap(), elapsed_ms: 12 }),
)]
#[case::an_error_reply_fails_it(
    calls(),
    finish_call("q1", ToolCallOutcome::Failed { error: "boom".into(), elapsed_ms: 3 }),
    event(ToolCallFailed { request_id: "q1".into(), error: "boom".into(), elapsed_ms: 3 }),
)]
#[case::no_reply_times_it_out(
    calls(),
    finish_call("q1", ToolCallOutcome::TimedOut { elapsed_ms: 6000 }),
    event(ToolCallTimedOut { request_id: "q1".into(), elapsed_ms: 6000 }),
)]
#[case::it_can_be_cancelled(
    calls(),
    finish_call("q1", ToolCallOutcome::Cancelled { reason: "disconnected".into() }),
    event(ToolCallCancelled { request_id: "q1".into(), reason: "disconnected".into() }),
)]
#[case::a_second_reply_is_late(calls(), finish_call("q2", completed(json!("again"))), nothing())]
#[case::a_reply_after_the_timeout_is_late(calls(), finish_call("q3", completed(json!("late"))), nothing())]
#[case::a_timeout_after_the_reply_is_moot(calls(), finish_call("q2", ToolCallOutcome::TimedOut { elapsed_ms: 1 }), nothing())]
#[case::a_reply_to_an_unknown_call(calls(), finish_call("q9", completed(json!(1))), nothing())]
#[case::a_reply_after_a_disconnect_is_late(
    given![calls(), Event::from(ToolCallCancelled { request_id: "q1".into(), reason: "disconnected".into() })],
    finish_call("q1", completed(json!("late"))),
    nothing(),
)]
#[case::a_proposal_is_submitted(
    calls(),
    Command::SubmitProposal(ProposalSubmitted { proposal_id: "p1".into(), client_id: "c1".into(), run_id: Some("r1".into()), action_ids: vec!["a1".into()] }),
    event(ProposalSubmitted { proposal_id: "p1".into(), client_id: "c1".into(), run_id: Some("r1".into()), action_ids: vec!["a1".into()] }),
)]
#[case::a_proposal_id_already_in_progress_is_invalid(
    given![calls(), Event::from(ProposalSubmitted { proposal_id: "p1".into(), client_id: "c1".into(), run_id: None, action_ids: vec![] })],
    Command::SubmitProposal(ProposalSubmitted { proposal_id: "p1".into(), client_id: "c1".into(), run_id: None, action_ids: vec!["a2".into()] }),
    crate::gwt::invalid("proposal.id"),
)]
#[case::a_finished_proposals_id_may_be_used_again(
    given![
        calls(),
        Event::from(ProposalSubmitted { proposal_id: "p1".into(), client_id: "c1".into(), run_id: None, action_ids: vec![] }),
        Event::from(ProposalFinished { proposal_id: "p1".into(), final_state: "failed".into() }),
    ],
    Command::SubmitProposal(ProposalSubmitted { proposal_id: "p1".into(), client_id: "c1".into(), run_id: None, action_ids: vec![] }),
    event(ProposalSubmitted { proposal_id: "p1".into(), client_id: "c1".into(), run_id: None, action_ids: vec![] }),
)]
#[case::a_proposal_in_progress_finishes(
    given![calls(), Event::from(ProposalSubmitted { proposal_id: "p1".into(), client_id: "c1".into(), run_id: None, action_ids: vec![] })],
    Command::FinishProposal(ProposalFinished { proposal_id: "p1".into(), final_state: "completed".into() }),
    event(ProposalFinished { proposal_id: "p1".into(), final_state: "completed".into() }),
)]
#[case::a_proposal_completes_with_its_result_stored_before_it_finishes(
    given![calls(), Event::from(ProposalSubmitted { proposal_id: "p1".into(), client_id: "c1".into(), run_id: None, action_ids: vec![] })],
    Command::CompleteProposal(
        ProposalFinished { proposal_id: "p1".into(), final_state: "completed".into() },
        ProposalResultRecorded { proposal_id: "p1".into(), principal: "client".into(), result: JsonText::from(serde_json::json!({"proposal_id": "p1"})) },
    ),
    crate::gwt::events(vec![
        Event::from(ProposalResultRecorded { proposal_id: "p1".into(), principal: "client".into(), result: JsonText::from(serde_json::json!({"proposal_id": "p1"})) }),
        Event::from(ProposalFinished { proposal_id: "p1".into(), final_state: "completed".into() }),
    ]),
)]
#[case::a_proposal_not_in_progress_does_not_complete(
    calls(),
    Command::CompleteProposal(
        ProposalFinished { proposal_id: "p1".into(), final_state: "completed".into() },
        ProposalResultRecorded { proposal_id: "p1".into(), principal: "client".into(), result: JsonText::from(serde_json::json!({})) },
    ),
    nothing(),
)]
#[case::a_proposal_not_in_progress_does_not_finish(
    calls(),
    Command::FinishProposal(ProposalFinished { proposal_id: "p1".into(), final_state: "completed".into() }),
    nothing(),
)]
fn tool_calls_and_proposals(#[case] given: Vec<Event>, #[case] when: Command, #[case] then: Then) {
    check(given, when, then);
}
