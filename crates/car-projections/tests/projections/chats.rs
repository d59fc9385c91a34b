//! Chats (PROTOCOL.md §13) as given/when/then tables: starting a chat (who may, which
//! agent, which ids), every ending and exactly what it records, approvals mirrored from a
//! chat and their resolutions (by the agent, by the chat's caller, by a host), a session's
//! close and start-up recovery ending what they leave routed, and the fold's refusals.

use car_events::event::{
    ApprovalExpired, ApprovalRequested, ApprovalRequestedInChat, ApprovalResolved,
    ChatCancelRequested, ChatRouteDropped, ChatStarted, ChatTerminal,
};
use car_events::{Event, JsonText};
use car_projections::chats::decide::{
    Caller, EndChat, MirrorApproval, PROMPT_LOGGED_BYTES, ResolveMirrored, StartChat,
};
use car_projections::chats::{ChatCommand, ChatRefusal, ChatRequest, Ending};
use car_projections::decide::{CloseSession, ResolveApproval};
use car_projections::{Actor, Command, Refusal, Retention, recovery};
use rstest::rstest;
use serde_json::json;

use crate::gwt::{check, event, events, nothing, refused};
use crate::support::{agent_session, apply_events, client_session, fold, given_ts};

const AGENT: &str = "writer";
const AGENT_SESSION: &str = "sess-agent";
const CALLER: &str = "sess-caller";
const CHAT: &str = "chat-1";

fn request(prompt: &str) -> ChatRequest {
    ChatRequest::parse(&json!({"agent_id": AGENT, "prompt": prompt})).unwrap()
}

fn start_as(caller: Caller, session_id: &str, agent_client_id: &str) -> Command {
    Command::Chat(ChatCommand::Start(StartChat {
        caller,
        request: request("hello"),
        session_id: session_id.into(),
        conversation_id: format!("session:{session_id}"),
        agent_client_id: agent_client_id.into(),
    }))
}

fn start() -> Command {
    start_as(Caller::Session(Actor::client(CALLER)), CHAT, AGENT_SESSION)
}

fn started() -> Event {
    Event::from(ChatStarted {
        session_id: CHAT.into(),
        agent_id: AGENT.into(),
        agent_client_id: AGENT_SESSION.into(),
        caller_client_id: Some(CALLER.into()),
        caller_role: "client".into(),
        conversation_id: format!("session:{CHAT}"),
        prompt: "hello".into(),
        prompt_bytes: 5,
        attachments: 0,
        stream: true,
        model: None,
    })
}

/// Both sessions open, the agent attached.
fn sessions() -> Vec<Event> {
    let mut given = agent_session(AGENT_SESSION, AGENT);
    given.extend(client_session(CALLER));
    given
}

/// The sessions and a routed chat.
fn routed() -> Vec<Event> {
    let mut given = sessions();
    given.push(started());
    given
}

fn end(ending: Ending) -> Command {
    Command::Chat(ChatCommand::End(EndChat {
        session_id: CHAT.into(),
        ending,
    }))
}

fn dropped(reason: &str) -> Event {
    Event::from(ChatRouteDropped {
        session_id: CHAT.into(),
        reason: reason.into(),
    })
}

fn error_terminal(error: &str) -> Event {
    Event::from(ChatTerminal {
        session_id: CHAT.into(),
        kind: "error".into(),
        finish_reason: None,
        error: Some(error.into()),
    })
}

fn mirror_from(client: &str, approval_id: &str) -> Command {
    Command::Chat(ChatCommand::MirrorApproval(MirrorApproval {
        session_id: CHAT.into(),
        from_client_id: client.into(),
        event: json!({"kind": "approval_pending", "approval_id": approval_id, "tool": "shell",
                      "params": {"cmd": "ls"}, "deadline": "2026-02-01T00:00:00Z"}),
    }))
}

fn mirrored(approval_id: &str) -> Event {
    Event::from(ApprovalRequestedInChat {
        approval: ApprovalRequested {
            approval_id: approval_id.into(),
            client_id: Some(AGENT_SESSION.into()),
            agent_id: Some(AGENT.into()),
            action: "chat:shell".into(),
            details: JsonText::from_value(&json!({
                "source": "chat", "session_id": CHAT, "params_preview": r#"{"cmd":"ls"}"#,
                "deadline": "2026-02-01T00:00:00Z"
            })),
            options: vec!["approve".into(), "deny".into()],
            system_level: false,
        },
        session_id: CHAT.into(),
    })
}

/// A routed chat with a pending mirrored approval `ap-1`.
fn with_approval() -> Vec<Event> {
    let mut given = routed();
    given.push(mirrored("ap-1"));
    given
}

fn resolve_mirrored(resolution: &str) -> Command {
    Command::Chat(ChatCommand::ResolveMirrored(ResolveMirrored {
        session_id: CHAT.into(),
        approval_id: "ap-1".into(),
        resolution: resolution.into(),
        client_id: Some(AGENT_SESSION.into()),
    }))
}

fn expired(approval_id: &str, reason: &str) -> Event {
    Event::from(ApprovalExpired {
        approval_id: approval_id.into(),
        reason: reason.into(),
    })
}

#[test]
fn a_client_starts_a_chat_with_an_attached_agent() {
    check(sessions(), start(), event(started()));
}

#[test]
fn a_host_and_an_a2a_task_start_chats_too() {
    let Event::ChatStarted(mut as_host) = started() else {
        unreachable!()
    };
    as_host.caller_client_id = Some("h1".into());
    as_host.caller_role = "host".into();
    check(
        sessions(),
        start_as(Caller::Session(Actor::host("h1")), CHAT, AGENT_SESSION),
        event(as_host.clone()),
    );
    as_host.caller_client_id = None;
    as_host.caller_role = "a2a".into();
    check(
        sessions(),
        start_as(Caller::A2a, CHAT, AGENT_SESSION),
        event(as_host),
    );
}

#[test]
fn the_prompt_is_logged_cut_to_16_kib_with_its_full_length() {
    let prompt = "é".repeat(PROMPT_LOGGED_BYTES); // 2 bytes each: twice the cut
    let command = Command::Chat(ChatCommand::Start(StartChat {
        caller: Caller::Session(Actor::client(CALLER)),
        request: request(&prompt),
        session_id: CHAT.into(),
        conversation_id: "c".into(),
        agent_client_id: AGENT_SESSION.into(),
    }));
    let state = fold(&sessions());
    let decided = car_projections::decide(&state, &command).unwrap();
    let Event::ChatStarted(e) = &decided[0] else {
        panic!("{decided:?}")
    };
    assert_eq!(e.prompt.len(), PROMPT_LOGGED_BYTES);
    assert_eq!(e.prompt_bytes, 2 * PROMPT_LOGGED_BYTES as u64);
}

#[rstest]
#[case::an_agent_session_asks(
    start_as(Caller::Session(Actor::agent("sess-x", "other")), CHAT, AGENT_SESSION),
    ChatRefusal::AgentCaller
)]
#[case::the_agent_is_attached_elsewhere(
    start_as(Caller::Session(Actor::client(CALLER)), CHAT, "sess-stale"),
    ChatRefusal::NotAttached(AGENT.into())
)]
fn refusals(#[case] when: Command, #[case] refusal: ChatRefusal) {
    check(sessions(), when, refused(Refusal::Chat(refusal)));
}

#[test]
fn an_unattached_agent_and_a_session_id_in_use_are_refused() {
    check(
        client_session(CALLER),
        start(),
        refused(Refusal::Chat(ChatRefusal::NotAttached(AGENT.into()))),
    );
    check(
        routed(),
        start(),
        refused(Refusal::Chat(ChatRefusal::InUse(CHAT.into()))),
    );
    // Free again once its route was dropped.
    let mut given = routed();
    given.push(dropped("terminal"));
    check(given, start(), event(started()));
}

#[test]
fn the_agents_terminal_event_is_recorded_then_the_route_dropped() {
    check(
        routed(),
        end(Ending::Terminal {
            kind: "done".into(),
            finish_reason: Some("x".repeat(5000)),
            error: None,
        }),
        events(vec![
            Event::from(ChatTerminal {
                session_id: CHAT.into(),
                kind: "done".into(),
                finish_reason: Some("x".repeat(1024)),
                error: None,
            }),
            dropped("terminal"),
        ]),
    );
}

#[rstest]
#[case::cancelled(Ending::Cancelled { by: "host".into() }, vec![
    Event::from(ChatCancelRequested { session_id: CHAT.into(), by: "host".into() }),
    error_terminal("chat cancelled"),
    dropped("cancelled"),
])]
#[case::agent_gone(Ending::AgentDisconnect, vec![
    error_terminal("agent 'writer' disconnected"), dropped("agent_disconnect"),
])]
#[case::idle(Ending::IdleTimeout { secs: 600 }, vec![
    error_terminal("chat timed out: no event from agent 'writer' for 600s"), dropped("idle_timeout"),
])]
#[case::overflow(Ending::Overflow, vec![
    error_terminal("chat event queue overflow"), dropped("overflow"),
])]
#[case::shutdown(Ending::DaemonShutdown, vec![
    error_terminal("daemon shutting down"), dropped("daemon_shutdown"),
])]
#[case::ack_failed(Ending::AckFailed { timed_out: true }, vec![dropped("ack_failed")])]
#[case::caller_gone(Ending::CallerDisconnect, vec![dropped("caller_disconnect")])]
#[case::restart(Ending::DaemonRestart, vec![dropped("daemon_restart")])]
fn every_ending_records_what_the_caller_was_told(
    #[case] ending: Ending,
    #[case] expected: Vec<Event>,
) {
    check(routed(), end(ending), events(expected));
}

#[test]
fn an_ending_expires_the_chats_pending_approvals_and_only_the_first_ending_counts() {
    let mut then = vec![error_terminal("agent 'writer' disconnected")];
    then.push(expired("ap-1", "chat_ended"));
    then.push(dropped("agent_disconnect"));
    check(with_approval(), end(Ending::AgentDisconnect), events(then));
    // A resolved approval stays resolved.
    let mut given = with_approval();
    given.push(Event::from(ApprovalResolved {
        approval_id: "ap-1".into(),
        resolution: "approve".into(),
        client_id: Some(CALLER.into()),
    }));
    check(
        given,
        end(Ending::CallerDisconnect),
        events(vec![dropped("caller_disconnect")]),
    );
    let mut ended = routed();
    ended.push(dropped("terminal"));
    check(ended, end(Ending::Overflow), nothing());
}

#[test]
fn an_approval_is_mirrored_from_the_chats_agent_session_only_once() {
    check(
        routed(),
        mirror_from(AGENT_SESSION, "ap-1"),
        event(mirrored("ap-1")),
    );
    check(routed(), mirror_from(CALLER, "ap-1"), nothing());
    check(
        with_approval(),
        mirror_from(AGENT_SESSION, "ap-1"),
        nothing(),
    );
    check(sessions(), mirror_from(AGENT_SESSION, "ap-1"), nothing());
}

#[test]
fn the_agents_resolution_resolves_or_expires_the_row() {
    check(
        with_approval(),
        resolve_mirrored("approve"),
        event(ApprovalResolved {
            approval_id: "ap-1".into(),
            resolution: "approve".into(),
            client_id: Some(AGENT_SESSION.into()),
        }),
    );
    check(
        with_approval(),
        resolve_mirrored("approve_always"),
        event(ApprovalResolved {
            approval_id: "ap-1".into(),
            resolution: "approve".into(),
            client_id: Some(AGENT_SESSION.into()),
        }),
    );
    check(
        with_approval(),
        resolve_mirrored("timeout"),
        event(expired("ap-1", "timeout")),
    );
    let mut resolved = with_approval();
    resolved.push(expired("ap-1", "timeout"));
    check(resolved, resolve_mirrored("deny"), nothing());
}

#[test]
fn the_chats_caller_may_resolve_its_mirrored_approval_and_a_stranger_may_not() {
    let resolve = |client: &str| {
        Command::ResolveApproval(ResolveApproval {
            actor: Actor::client(client),
            approval_id: "ap-1".into(),
            resolution: "deny".into(),
        })
    };
    check(
        with_approval(),
        resolve(CALLER),
        event(ApprovalResolved {
            approval_id: "ap-1".into(),
            resolution: "deny".into(),
            client_id: Some(CALLER.into()),
        }),
    );
    let mut given = with_approval();
    given.extend(client_session("sess-stranger"));
    check(given, resolve("sess-stranger"), crate::gwt::Then::Forbidden);
}

#[test]
fn a_session_that_closes_ends_its_chats_and_recovery_ends_what_is_left() {
    let close = |client: &str| {
        Command::CloseSession(CloseSession {
            client_id: client.into(),
            reason: "closed".into(),
        })
    };
    let state = fold(&with_approval());
    let decided = car_projections::decide(&state, &close(AGENT_SESSION)).unwrap();
    let kinds: Vec<&str> = decided.iter().map(Event::kind).collect();
    assert_eq!(
        kinds,
        [
            "chat.terminal",
            "approval.expired",
            "chat.route_dropped",
            "session.closed"
        ]
    );
    let decided = car_projections::decide(&state, &close(CALLER)).unwrap();
    assert_eq!(
        decided[..2],
        [expired("ap-1", "chat_ended"), dropped("caller_disconnect")]
    );

    // Start-up: the chat dropped `daemon_restart`, its approval expired exactly once
    // (as its requester's, `daemon_restart`), and a second recovery finds nothing.
    let events = recovery::recover(&state, given_ts(100), &Retention::default());
    let chat_events: Vec<&Event> = events
        .iter()
        .filter(|e| e.chat_session().is_some() || matches!(e, Event::ApprovalExpired(_)))
        .collect();
    assert_eq!(
        chat_events,
        [
            &expired("ap-1", "daemon_restart"),
            &dropped("daemon_restart")
        ]
    );
    let mut after = state.clone();
    apply_events(&mut after, &events, given_ts).unwrap();
    assert!(after.chats().get(CHAT).is_none());
    assert!(recovery::recover(&after, given_ts(200), &Retention::default()).is_empty());
}

#[test]
fn the_fold_refuses_chat_events_that_do_not_follow() {
    let mut state = fold(&sessions());
    let not_routed = apply_events(&mut state.clone(), &[dropped("terminal")], given_ts);
    assert!(
        not_routed
            .unwrap_err()
            .to_string()
            .contains("is not routed")
    );
    let twice = apply_events(&mut state.clone(), &[started(), started()], given_ts);
    assert!(twice.unwrap_err().to_string().contains("already routed"));
    let mirrored_elsewhere = apply_events(&mut state.clone(), &[mirrored("ap-9")], given_ts);
    assert!(
        mirrored_elsewhere
            .unwrap_err()
            .to_string()
            .contains("is not routed")
    );
    apply_events(&mut state, &[started(), error_terminal("x")], given_ts).unwrap();
    let second = apply_events(&mut state.clone(), &[error_terminal("y")], given_ts);
    assert!(
        second
            .unwrap_err()
            .to_string()
            .contains("already had its terminal")
    );
    assert_eq!(state.chats().active(), 1);
}
