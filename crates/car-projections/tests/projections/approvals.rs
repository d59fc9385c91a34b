//! Decisions about approvals (PROTOCOL.md §5.1): requests (default options, the agent
//! stamp), who may resolve (a host; anyone for a system-level approval; never the
//! requester), first resolution wins, invalid resolutions, unknown ids, expiry.

use car_events::Event;
use car_events::JsonText;
use car_events::event::{ApprovalExpired, ApprovalRequested, ApprovalResolved};
use car_projections::decide::{ExpireApproval, RequestApproval};
use car_projections::{Actor, Command, Refusal};
use rstest::rstest;

use crate::gwt::{Then, check, event, invalid, nothing, refused};
use crate::support::*;

fn requested(requester: &str, agent: Option<&str>, options: &[&str]) -> ApprovalRequested {
    ApprovalRequested {
        approval_id: "ap1".into(),
        client_id: Some(requester.into()),
        agent_id: agent.map(Into::into),
        action: "deploy".into(),
        details: JsonText::parse(r#"{"env":"prod"}"#).expect("valid JSON"),
        options: options.iter().map(|o| o.to_string()).collect(),
        system_level: false,
    }
}

fn request(command: RequestApproval) -> Command {
    Command::RequestApproval(command)
}

#[rstest]
#[case::options_default_to_approve_and_deny(
    given![client_session("c1")],
    request(request_approval(Actor::client("c1"), "ap1")),
    event(requested("c1", None, &["approve", "deny"])),
)]
#[case::given_options_are_kept_in_order(
    given![client_session("c1")],
    request(RequestApproval { options: Some(vec!["yes".into(), "later".into(), "no".into()]), ..request_approval(Actor::client("c1"), "ap1") }),
    event(requested("c1", None, &["yes", "later", "no"])),
)]
#[case::system_level_is_recorded(
    given![client_session("c1")],
    request(RequestApproval { system_level: true, ..request_approval(Actor::client("c1"), "ap1") }),
    event(ApprovalRequested { system_level: true, ..requested("c1", None, &["approve", "deny"]) }),
)]
#[case::a_client_may_name_the_agent(
    given![client_session("c1")],
    request(RequestApproval { agent_id: Some("a9".into()), ..request_approval(Actor::client("c1"), "ap1") }),
    event(requested("c1", Some("a9"), &["approve", "deny"])),
)]
#[case::an_agent_session_is_stamped_with_its_agent(
    given![agent_session("c1", "a1")],
    request(request_approval(Actor::agent("c1", "a1"), "ap1")),
    event(requested("c1", Some("a1"), &["approve", "deny"])),
)]
#[case::an_agent_session_cannot_name_another_agent(
    given![agent_session("c1", "a1")],
    request(RequestApproval { agent_id: Some("a9".into()), ..request_approval(Actor::agent("c1", "a1"), "ap1") }),
    event(requested("c1", Some("a1"), &["approve", "deny"])),
)]
#[case::empty_options_are_invalid(
    given![client_session("c1")],
    request(RequestApproval { options: Some(vec![]), ..request_approval(Actor::client("c1"), "ap1") }),
    invalid("options"),
)]
#[case::a_blank_option_is_invalid(
    given![client_session("c1")],
    request(RequestApproval { options: Some(vec!["ok".into(), " ".into()]), ..request_approval(Actor::client("c1"), "ap1") }),
    invalid("options"),
)]
#[case::a_blank_action_is_invalid(
    given![client_session("c1")],
    request(RequestApproval { action: "  ".into(), ..request_approval(Actor::client("c1"), "ap1") }),
    invalid("action"),
)]
fn approval_requests(#[case] given: Vec<Event>, #[case] when: Command, #[case] then: Then) {
    check(given, when, then);
}

fn resolved(resolution: &str, by: &str) -> ApprovalResolved {
    ApprovalResolved {
        approval_id: "ap1".into(),
        resolution: resolution.into(),
        client_id: Some(by.into()),
    }
}

/// Sessions `c1` (client, the requester of `ap1`), `c2` (client), `a` (agent), `h1` (host).
fn asked_by_c1(system_level: bool) -> Vec<Event> {
    given![
        client_session("c1"),
        client_session("c2"),
        agent_session("a", "a1"),
        host_session("h1"),
        approval_requested("ap1", "c1", system_level),
    ]
}

#[rstest]
#[case::a_host_resolves(
    asked_by_c1(false),
    resolve_approval(Actor::host("h1"), "ap1", "approve"),
    event(resolved("approve", "h1"))
)]
#[case::any_option_may_be_chosen(
    asked_by_c1(false),
    resolve_approval(Actor::host("h1"), "ap1", "deny"),
    event(resolved("deny", "h1"))
)]
#[case::a_client_may_not_resolve(
    asked_by_c1(false),
    resolve_approval(Actor::client("c2"), "ap1", "approve"),
    Then::Forbidden
)]
#[case::an_agent_may_not_resolve(
    asked_by_c1(false),
    resolve_approval(Actor::agent("a", "a1"), "ap1", "approve"),
    Then::Forbidden
)]
#[case::a_client_may_resolve_a_system_level_approval(
    asked_by_c1(true),
    resolve_approval(Actor::client("c2"), "ap1", "approve"),
    event(resolved("approve", "c2"))
)]
#[case::an_agent_may_resolve_a_system_level_approval(
    asked_by_c1(true),
    resolve_approval(Actor::agent("a", "a1"), "ap1", "deny"),
    event(resolved("deny", "a"))
)]
#[case::with_auth_disabled_a_client_resolves_like_a_host(
    given![asked_by_c1(false), opened_unrestricted("u1")],
    resolve_approval(Actor::client("u1").unrestricted(), "ap1", "approve"),
    event(resolved("approve", "u1")),
)]
#[case::the_requester_never_resolves_its_own_system_level_approval(
    asked_by_c1(true),
    resolve_approval(Actor::client("c1"), "ap1", "approve"),
    Then::Forbidden
)]
#[case::the_requester_never_resolves_even_as_a_host(
    given![host_session("h1"), host_session("h2"), approval_requested("ap1", "h1", true)],
    resolve_approval(Actor::host("h1"), "ap1", "approve"),
    Then::Forbidden,
)]
#[case::another_host_resolves_a_hosts_request(
    given![host_session("h1"), host_session("h2"), approval_requested("ap1", "h1", false)],
    resolve_approval(Actor::host("h2"), "ap1", "approve"),
    event(resolved("approve", "h2")),
)]
#[case::the_first_resolution_wins(
    given![asked_by_c1(false), approval_resolved("ap1", "deny", "h1")],
    resolve_approval(Actor::host("h1"), "ap1", "approve"),
    refused(Refusal::ApprovalResolved("ap1".into())),
)]
#[case::the_same_resolution_twice_is_still_refused(
    given![asked_by_c1(true), approval_resolved("ap1", "approve", "h1")],
    resolve_approval(Actor::client("c2"), "ap1", "approve"),
    refused(Refusal::ApprovalResolved("ap1".into())),
)]
#[case::an_expired_approval_cannot_be_resolved(
    given![asked_by_c1(false), approval_expired("ap1")],
    resolve_approval(Actor::host("h1"), "ap1", "approve"),
    refused(Refusal::ApprovalExpired("ap1".into())),
)]
#[case::a_resolution_must_be_an_option(
    asked_by_c1(false),
    resolve_approval(Actor::host("h1"), "ap1", "maybe"),
    invalid("resolution")
)]
#[case::options_are_case_sensitive(
    asked_by_c1(false),
    resolve_approval(Actor::host("h1"), "ap1", "Approve"),
    invalid("resolution")
)]
#[case::an_unknown_approval(
    asked_by_c1(false),
    resolve_approval(Actor::host("h1"), "nope", "approve"),
    refused(Refusal::UnknownApproval("nope".into())),
)]
fn approval_resolutions(#[case] given: Vec<Event>, #[case] when: Command, #[case] then: Then) {
    check(given, when, then);
}

fn expire(id: &str) -> Command {
    Command::ExpireApproval(ExpireApproval {
        approval_id: id.into(),
        reason: "timeout".into(),
    })
}

#[rstest]
#[case::a_pending_approval_expires(
    asked_by_c1(false),
    expire("ap1"),
    event(ApprovalExpired { approval_id: "ap1".into(), reason: "timeout".into() }),
)]
#[case::a_resolved_approval_does_not_expire(
    given![asked_by_c1(false), approval_resolved("ap1", "approve", "h1")],
    expire("ap1"),
    nothing(),
)]
#[case::an_expired_approval_does_not_expire_again(
    given![asked_by_c1(false), approval_expired("ap1")],
    expire("ap1"),
    nothing(),
)]
#[case::an_unknown_approval_does_not_expire(asked_by_c1(false), expire("nope"), nothing())]
fn approval_expiry(#[case] given: Vec<Event>, #[case] when: Command, #[case] then: Then) {
    check(given, when, then);
}
