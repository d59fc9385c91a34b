//! PROTOCOL.md §13, the chat relay, over real WebSockets: a host or client chats with an
//! attached agent (a test session bound to an agent id, driven step by step, or a real
//! supervised `car-test-agent`). Events stream in order to the caller alone; refusals and
//! acknowledgement failures; cancel; approvals mirrored into §5 and resolved by a host or
//! the caller; every disconnect, the idle timeout, a slow caller's overflow, shutdown and
//! restart; and what the log keeps of it all.

use std::time::Duration;

use car_tests::Client;
use serde_json::{Value, json};

use crate::server;

/// The agent's events of `session_id` the caller received, in order, until a terminal one.
async fn chat_events_until_terminal(caller: &mut Client, session_id: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let note = caller
            .next_notification_where("agents.chat.event", |p| p["session_id"] == session_id)
            .await
            .unwrap_or_else(|err| panic!("{err:#}; received so far: {events:?}"));
        let params = note;
        let kind = params["kind"].as_str().unwrap_or_default().to_owned();
        events.push(params);
        if ["done", "error", "auth_required"].contains(&kind.as_str()) {
            return events;
        }
    }
}

/// Starts `agents.chat` from `caller`; the agent session receives `agent.chat` and
/// acknowledges it; returns the caller's result and the agent's request.
async fn start_chat(caller: &mut Client, agent: &mut Client, params: Value) -> (Value, Value) {
    let id = caller.request("agents.chat", params).await.unwrap();
    let request = agent.next_request("agent.chat").await.unwrap();
    agent.reply(&request["id"], json!({"accepted": true})).await;
    let result = caller
        .response(&id)
        .await
        .unwrap()
        .unwrap_or_else(|err| panic!("agents.chat: {err}"));
    (result, request)
}

async fn send_event(agent: &mut Client, session_id: &str, event: Value) {
    let mut params = event;
    params["session_id"] = json!(session_id);
    agent.notify("agent.chat.event", params).await.unwrap();
}

fn chat_records(log: &[Value], session_id: &str) -> Vec<Value> {
    log.iter()
        .filter(|e| e["data"]["session_id"] == session_id)
        .cloned()
        .collect()
}

fn kinds(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

const CHAT_KINDS: [&str; 6] = [
    "chat.started",
    "chat.cancel_requested",
    "chat.terminal",
    "chat.route_dropped",
    "approval.requested_in_chat",
    "approval.expired",
];

#[tokio::test]
async fn chat_events_stream_in_order_to_the_caller_alone() {
    let server = server(&[]).await;
    let mut agent = server.auth_agent("echo").await;
    let mut caller = server.auth_client().await;
    let mut bystander = server.auth_client().await;
    let mut impostor = server.auth_agent("other").await;
    let (result, request) = start_chat(
        &mut caller,
        &mut agent,
        json!({"agent_id": "echo", "prompt": "say it", "model": "m1", "voice_input": true}),
    )
    .await;
    let session_id = result["session_id"].as_str().unwrap().to_owned();
    assert_eq!(result["accepted"], true);
    assert!(session_id.starts_with("chat-"), "{session_id}");
    let params = &request["params"];
    assert!(
        request["id"].is_string(),
        "the daemon's request id is a string: {request}"
    );
    assert_eq!(params["session_id"], session_id.as_str());
    assert_eq!(params["prompt"], "say it");
    assert_eq!(params["stream"], true);
    assert_eq!(params["model"], "m1");
    assert_eq!(params["conversation_id"], format!("session:{session_id}"));
    assert_eq!(params["context"]["caller_role"], "client");
    assert_eq!(params["context"]["voice_input"], true);
    assert!(params["context"]["host_client_id"].is_string());

    // Another connection's events for this chat are dropped; the agent's own are relayed,
    // unknown kinds too, in order, each with agent_id.
    send_event(
        &mut impostor,
        &session_id,
        json!({"kind": "token", "text": "forged"}),
    )
    .await;
    for i in 0..200 {
        send_event(
            &mut agent,
            &session_id,
            json!({"kind": "token", "text": format!("t{i}")}),
        )
        .await;
    }
    send_event(
        &mut agent,
        &session_id,
        json!({"kind": "tool_start", "tool": "x"}),
    )
    .await;
    send_event(
        &mut agent,
        &session_id,
        json!({"kind": "done", "finish_reason": "stop", "text": "all"}),
    )
    .await;
    // After the terminal event the route is gone: this one is dropped.
    send_event(
        &mut agent,
        &session_id,
        json!({"kind": "token", "text": "late"}),
    )
    .await;
    let events = chat_events_until_terminal(&mut caller, &session_id).await;
    assert_eq!(events.len(), 202, "{events:?}");
    for (i, event) in events[..200].iter().enumerate() {
        assert_eq!(event["text"], format!("t{i}"));
        assert_eq!(event["agent_id"], "echo");
        assert_eq!(event["kind"], "token");
    }
    assert_eq!(events[200]["kind"], "tool_start");
    assert_eq!(events[201]["kind"], "done");
    assert_eq!(events[201]["finish_reason"], "stop");

    // A second chat on the same connection: its first event is the first thing the caller
    // gets after the first chat's end, so nothing ("late") came in between.
    let (second, _) = start_chat(&mut caller, &mut agent, json!({"agent_id": "echo", "prompt": "again", "session_id": "s:2", "conversation_id": "conv.1"})).await;
    assert_eq!(second["session_id"], "s:2");
    send_event(
        &mut agent,
        "s:2",
        json!({"kind": "error", "error": "model failed"}),
    )
    .await;
    let events = chat_events_until_terminal(&mut caller, "s:2").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(caller.take_notifications("agents.chat.event").is_empty());
    bystander.ok("agents.list", json!({})).await;
    assert!(bystander.take_notifications("agents.chat.event").is_empty());

    // The log: started, terminal, dropped per chat; nothing of the relayed events.
    let mut host = server.auth_host().await;
    let log = host.whole_log(Some(&CHAT_KINDS)).await;
    let first = chat_records(&log, &session_id);
    assert_eq!(
        kinds(&first),
        ["chat.started", "chat.terminal", "chat.route_dropped"]
    );
    let started = &first[0]["data"];
    assert_eq!(started["agent_id"], "echo");
    assert_eq!(started["caller_role"], "client");
    assert_eq!(started["prompt"], "say it");
    assert_eq!(started["model"], "m1");
    assert_eq!(first[1]["data"]["kind"], "done");
    assert_eq!(first[1]["data"]["finish_reason"], "stop");
    assert_eq!(first[2]["data"]["reason"], "terminal");
    let second = chat_records(&log, "s:2");
    assert_eq!(second[0]["data"]["conversation_id"], "conv.1");
    assert_eq!(second[1]["data"]["error"], "model failed");

    // Hosts hear of chats on the feed.
    host.handshake().await;
    let feed = host.ok("host.events", json!({"limit": 100})).await;
    let feed_kinds: Vec<&str> = feed["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| k.starts_with("chat."))
        .collect();
    assert_eq!(
        feed_kinds,
        ["chat.started", "chat.ended", "chat.started", "chat.ended"]
    );
}

#[tokio::test]
async fn refusals_name_what_is_wrong() {
    let server = server(&[]).await;
    let mut agent = server.auth_agent("a").await;
    let mut caller = server.auth_client().await;
    let err = caller
        .err("agents.chat", json!({"agent_id": "ghost", "prompt": "hi"}))
        .await;
    assert_eq!(
        (err.code, err.message.as_str()),
        (-32603, "agent 'ghost' is not attached")
    );
    let err = agent
        .err("agents.chat", json!({"agent_id": "a", "prompt": "hi"}))
        .await;
    assert_eq!(
        (err.code, err.message.as_str()),
        (
            -32603,
            "permission denied: agents.chat requires the host or client role"
        )
    );
    for (params, field) in [
        (json!({"agent_id": "a"}), "agents.chat: prompt: is required"),
        (
            json!({"agent_id": "a", "prompt": ""}),
            "agents.chat: prompt: must not be empty",
        ),
        (
            json!({"agent_id": "a", "prompt": "x", "session_id": "bad id"}),
            "agents.chat: session_id",
        ),
        (
            json!({"agent_id": "a", "prompt": "x", "goal": {"check": "done"}}),
            "agents.chat: goal",
        ),
        (
            json!({"agent_id": "a", "prompt": "x", "attachments": [{"image_url": "ftp://x"}]}),
            "agents.chat: attachments[0]",
        ),
    ] {
        let err = caller.err("agents.chat", params.clone()).await;
        assert_eq!(err.code, -32602, "{params}");
        assert!(err.message.starts_with(field), "{params}: {}", err.message);
    }

    // The agent refuses: accepted false, or an error.
    let id = caller
        .request(
            "agents.chat",
            json!({"agent_id": "a", "prompt": "x", "session_id": "r1"}),
        )
        .await
        .unwrap();
    let request = agent.next_request("agent.chat").await.unwrap();
    agent
        .reply(
            &request["id"],
            json!({"accepted": false, "message": "busy"}),
        )
        .await;
    let err = caller.response(&id).await.unwrap().unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (-32603, "agent 'a' refused the chat: busy")
    );
    let id = caller
        .request(
            "agents.chat",
            json!({"agent_id": "a", "prompt": "x", "session_id": "r2"}),
        )
        .await
        .unwrap();
    let request = agent.next_request("agent.chat").await.unwrap();
    agent
        .reply_error(
            &request["id"],
            json!({"code": -32000, "message": "no model"}),
        )
        .await;
    let err = caller.response(&id).await.unwrap().unwrap_err();
    assert_eq!(err.message, "agent 'a' refused the chat: no model");

    // A session_id in use.
    start_chat(
        &mut caller,
        &mut agent,
        json!({"agent_id": "a", "prompt": "x", "session_id": "live"}),
    )
    .await;
    let err = caller
        .err(
            "agents.chat",
            json!({"agent_id": "a", "prompt": "y", "session_id": "live"}),
        )
        .await;
    assert_eq!(
        (err.code, err.message.as_str()),
        (-32602, "agents.chat: session_id 'live' is already in use")
    );
    // A refused chat's id is free again (its route dropped ack_failed).
    let mut host = server.auth_host().await;
    let log = host.whole_log(Some(&CHAT_KINDS)).await;
    let r1 = chat_records(&log, "r1");
    assert_eq!(kinds(&r1), ["chat.started", "chat.route_dropped"]);
    assert_eq!(r1[1]["data"]["reason"], "ack_failed");
    start_chat(
        &mut caller,
        &mut agent,
        json!({"agent_id": "a", "prompt": "x", "session_id": "r1"}),
    )
    .await;
}

#[tokio::test]
async fn an_agent_that_never_acknowledges_is_told_to_cancel() {
    let server = server(&[]).await;
    let mut agent = server.auth_agent("mute").await;
    let mut caller = server.auth_client().await;
    let id = caller
        .request(
            "agents.chat",
            json!({"agent_id": "mute", "prompt": "x", "session_id": "m1"}),
        )
        .await
        .unwrap();
    agent.next_request("agent.chat").await.unwrap();
    let err = caller.response(&id).await.unwrap().unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (
            -32603,
            "agent 'mute' did not acknowledge the chat within 5s"
        )
    );
    let cancel = agent.next_request("agent.chat.cancel").await.unwrap();
    assert_eq!(cancel["params"], json!({"session_id": "m1"}));
    assert!(cancel.get("id").is_none(), "a notification: {cancel}");
}

#[tokio::test]
async fn cancel_ends_the_chat_for_both_sides() {
    let server = server(&[]).await;
    let mut agent = server.auth_agent("a").await;
    let mut caller = server.auth_client().await;
    let mut stranger = server.auth_client().await;
    start_chat(
        &mut caller,
        &mut agent,
        json!({"agent_id": "a", "prompt": "x", "session_id": "c1"}),
    )
    .await;
    send_event(&mut agent, "c1", json!({"kind": "token", "text": "before"})).await;
    let before = caller.next_notification("agents.chat.event").await.unwrap();
    assert_eq!(before["text"], "before");
    let err = stranger
        .err("agents.chat.cancel", json!({"session_id": "c1"}))
        .await;
    assert_eq!(
        (err.code, err.message.as_str()),
        (
            -32603,
            "permission denied: agents.chat.cancel requires the host role or the chat's caller"
        )
    );
    let result = caller
        .ok("agents.chat.cancel", json!({"session_id": "c1"}))
        .await;
    assert_eq!(result, json!({"cancelled": true, "session_id": "c1"}));
    let events = chat_events_until_terminal(&mut caller, "c1").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["kind"], "error");
    assert_eq!(events[0]["error"], "chat cancelled");
    assert_eq!(events[0]["agent_id"], "a");
    let cancel = agent.next_request("agent.chat.cancel").await.unwrap();
    assert_eq!(cancel["params"]["session_id"], "c1");
    let again = caller
        .ok("agents.chat.cancel", json!({"session_id": "c1"}))
        .await;
    assert_eq!(again, json!({"cancelled": false, "session_id": "c1"}));
    // A host may cancel anyone's chat.
    start_chat(
        &mut caller,
        &mut agent,
        json!({"agent_id": "a", "prompt": "x", "session_id": "c2"}),
    )
    .await;
    let mut host = server.auth_host().await;
    assert_eq!(
        host.ok("agents.chat.cancel", json!({"session_id": "c2"}))
            .await["cancelled"],
        true
    );
    chat_events_until_terminal(&mut caller, "c2").await;

    let log = host.whole_log(Some(&CHAT_KINDS)).await;
    let c1 = chat_records(&log, "c1");
    assert_eq!(
        kinds(&c1),
        [
            "chat.started",
            "chat.cancel_requested",
            "chat.terminal",
            "chat.route_dropped"
        ]
    );
    assert!(c1[1]["data"]["by"].as_str().unwrap().starts_with("client:"));
    assert_eq!(c1[2]["data"]["error"], "chat cancelled");
    assert_eq!(c1[3]["data"]["reason"], "cancelled");
    assert_eq!(chat_records(&log, "c2")[1]["data"]["by"], "host");
}

#[tokio::test]
async fn approvals_inside_a_chat_are_mirrored_and_resolved_by_host_or_caller() {
    let server = server(&[]).await;
    let mut agent = server.auth_agent("a").await;
    let mut caller = server.auth_client().await;
    let mut stranger = server.auth_client().await;
    let mut host = server.auth_host().await;
    host.handshake().await;
    start_chat(
        &mut caller,
        &mut agent,
        json!({"agent_id": "a", "prompt": "x", "session_id": "ap"}),
    )
    .await;

    // Mirrored: a §5 approval requested by the agent's session.
    send_event(&mut agent, "ap", json!({"kind": "approval_pending", "approval_id": "ap-1", "tool": "shell", "params": {"cmd": "ls"}, "deadline": "2026-12-31T00:00:00Z"})).await;
    let pending = caller
        .next_notification_where("agents.chat.event", |p| p["kind"] == "approval_pending")
        .await
        .unwrap();
    assert_eq!(pending["approval_id"], "ap-1");
    let approval = host
        .ok(
            "host.await_approval",
            json!({"approval_id": "ap-1", "timeout_ms": 0}),
        )
        .await;
    assert_eq!(approval["action"], "chat:shell");
    assert_eq!(approval["agent_id"], "a");
    assert_eq!(approval["options"], json!(["approve", "deny"]));
    assert_eq!(approval["system_level"], false);
    assert_eq!(approval["details"]["source"], "chat");
    assert_eq!(approval["details"]["session_id"], "ap");
    assert_eq!(approval["details"]["deadline"], "2026-12-31T00:00:00Z");
    assert_eq!(approval["details"]["params_preview"], r#"{"cmd":"ls"}"#);
    // A second approval_pending with the same id mirrors nothing new.
    send_event(
        &mut agent,
        "ap",
        json!({"kind": "approval_pending", "approval_id": "ap-1", "tool": "other"}),
    )
    .await;

    // A host resolves it: the agent is asked agent.chat.approve with the resolution.
    let resolved = host
        .ok(
            "host.resolve_approval",
            json!({"approval_id": "ap-1", "resolution": "approve"}),
        )
        .await;
    assert_eq!(resolved["status"], "resolved");
    let ask = agent.next_request("agent.chat.approve").await.unwrap();
    assert_eq!(
        ask["params"],
        json!({"session_id": "ap", "approval_id": "ap-1", "decision": "approve"})
    );
    agent.reply(&ask["id"], json!({"resolved": true})).await;

    // The caller resolves the next with agents.chat.approve: relayed, and the row resolved.
    send_event(&mut agent, "ap", json!({"kind": "approval_pending", "approval_id": "ap-2", "action": "send mail", "details": {"to": "x"}})).await;
    caller
        .next_notification_where("agents.chat.event", |p| p["approval_id"] == "ap-2")
        .await
        .unwrap();
    let err = stranger
        .err(
            "agents.chat.approve",
            json!({"session_id": "ap", "approval_id": "ap-2", "decision": true}),
        )
        .await;
    assert_eq!(err.code, -32603, "{err}");
    let err = agent
        .err(
            "agents.chat.approve",
            json!({"session_id": "ap", "approval_id": "ap-2", "decision": true}),
        )
        .await;
    assert_eq!(err.code, -32603, "never the agent: {err}");
    let id = caller
        .request(
            "agents.chat.approve",
            json!({"session_id": "ap", "approval_id": "ap-2", "decision": false}),
        )
        .await
        .unwrap();
    let ask = agent.next_request("agent.chat.approve").await.unwrap();
    assert_eq!(ask["params"]["decision"], false);
    agent.reply(&ask["id"], json!({"resolved": true})).await;
    let result = caller.response(&id).await.unwrap().unwrap();
    assert_eq!(result, json!({"resolved": true, "session_id": "ap"}));
    let row = host
        .ok(
            "host.await_approval",
            json!({"approval_id": "ap-2", "timeout_ms": 0}),
        )
        .await;
    assert_eq!(
        (row["status"].as_str(), row["resolution"].as_str()),
        (Some("resolved"), Some("deny"))
    );
    assert_eq!(row["action"], "chat:send mail");

    // The caller may use host.resolve_approval on its own chat's rows; a stranger may not.
    send_event(
        &mut agent,
        "ap",
        json!({"kind": "approval_pending", "approval_id": "ap-3", "tool": "t"}),
    )
    .await;
    caller
        .next_notification_where("agents.chat.event", |p| p["approval_id"] == "ap-3")
        .await
        .unwrap();
    stranger.handshake().await;
    let err = stranger
        .err(
            "host.resolve_approval",
            json!({"approval_id": "ap-3", "resolution": "approve"}),
        )
        .await;
    assert_eq!(err.code, -32603, "{err}");
    caller.handshake().await;
    let listed = caller
        .ok("host.approvals", json!({"status": "pending"}))
        .await;
    assert!(
        listed["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "ap-3"),
        "{listed}"
    );
    caller
        .ok(
            "host.resolve_approval",
            json!({"approval_id": "ap-3", "resolution": "approve"}),
        )
        .await;
    let ask = agent.next_request("agent.chat.approve").await.unwrap();
    assert_eq!(ask["params"]["approval_id"], "ap-3");

    // The agent's own approval_resolved: "timeout" expires the row.
    send_event(
        &mut agent,
        "ap",
        json!({"kind": "approval_pending", "approval_id": "ap-4", "tool": "t"}),
    )
    .await;
    send_event(
        &mut agent,
        "ap",
        json!({"kind": "approval_resolved", "approval_id": "ap-4", "resolution": "timeout"}),
    )
    .await;
    caller
        .next_notification_where("agents.chat.event", |p| p["kind"] == "approval_resolved")
        .await
        .unwrap();
    let row = host
        .ok(
            "host.await_approval",
            json!({"approval_id": "ap-4", "timeout_ms": 0}),
        )
        .await;
    assert_eq!(row["status"], "expired");

    // A row still pending when the chat ends expires with it.
    send_event(
        &mut agent,
        "ap",
        json!({"kind": "approval_pending", "approval_id": "ap-5", "tool": "t"}),
    )
    .await;
    send_event(
        &mut agent,
        "ap",
        json!({"kind": "done", "finish_reason": "stop"}),
    )
    .await;
    chat_events_until_terminal(&mut caller, "ap").await;
    let row = host
        .ok(
            "host.await_approval",
            json!({"approval_id": "ap-5", "timeout_ms": 5000}),
        )
        .await;
    assert_eq!(row["status"], "expired");
    let log = host.whole_log(Some(&["approval.expired"])).await;
    let reasons: Vec<&Value> = log.iter().map(|e| &e["data"]["reason"]).collect();
    assert_eq!(reasons, [&json!("timeout"), &json!("chat_ended")]);
    // After the chat: agents.chat.approve answers resolved false without asking anyone.
    let late = caller
        .ok(
            "agents.chat.approve",
            json!({"session_id": "ap", "approval_id": "ap-5", "decision": true}),
        )
        .await;
    assert_eq!(late, json!({"resolved": false, "session_id": "ap"}));
}

#[tokio::test]
async fn an_agent_disconnect_ends_its_chats_with_an_error() {
    let server = server(&[]).await;
    let agent_a = server.auth_agent("a").await;
    let mut agent = agent_a;
    let mut caller = server.auth_client().await;
    start_chat(
        &mut caller,
        &mut agent,
        json!({"agent_id": "a", "prompt": "x", "session_id": "d1"}),
    )
    .await;
    send_event(
        &mut agent,
        "d1",
        json!({"kind": "approval_pending", "approval_id": "d-ap", "tool": "t"}),
    )
    .await;
    send_event(
        &mut agent,
        "d1",
        json!({"kind": "token", "text": "last words"}),
    )
    .await;
    agent.close().await;
    let events = chat_events_until_terminal(&mut caller, "d1").await;
    let last = events.last().unwrap();
    assert_eq!(events[events.len() - 2]["text"], "last words");
    assert_eq!(
        (last["kind"].as_str(), last["error"].as_str()),
        (Some("error"), Some("agent 'a' disconnected"))
    );
    let mut host = server.auth_host().await;
    host.handshake().await;
    let row = host
        .ok(
            "host.await_approval",
            json!({"approval_id": "d-ap", "timeout_ms": 5000}),
        )
        .await;
    assert_eq!(row["status"], "expired");
    let log = host.whole_log(Some(&CHAT_KINDS)).await;
    let d1 = chat_records(&log, "d1");
    assert_eq!(d1.last().unwrap()["data"]["reason"], "agent_disconnect");
    // The agent is no longer attached.
    let err = caller
        .err("agents.chat", json!({"agent_id": "a", "prompt": "x"}))
        .await;
    assert_eq!(err.message, "agent 'a' is not attached");
}

#[tokio::test]
async fn a_caller_disconnect_cancels_the_chat_at_the_agent() {
    let server = server(&[]).await;
    let mut agent = server.auth_agent("a").await;
    let mut caller = server.auth_client().await;
    start_chat(
        &mut caller,
        &mut agent,
        json!({"agent_id": "a", "prompt": "x", "session_id": "gone"}),
    )
    .await;
    caller.close().await;
    let cancel = agent.next_request("agent.chat.cancel").await.unwrap();
    assert_eq!(cancel["params"], json!({"session_id": "gone"}));
    let mut host = server.auth_host().await;
    let log = host.whole_log(Some(&CHAT_KINDS)).await;
    let records = chat_records(&log, "gone");
    assert_eq!(kinds(&records), ["chat.started", "chat.route_dropped"]);
    assert_eq!(records[1]["data"]["reason"], "caller_disconnect");
}

#[tokio::test]
async fn a_silent_agent_times_the_chat_out() {
    let server = server(&["--chat-idle-timeout", "1"]).await;
    let mut agent = server.auth_agent("quiet").await;
    let mut caller = server.auth_client().await;
    start_chat(
        &mut caller,
        &mut agent,
        json!({"agent_id": "quiet", "prompt": "x", "session_id": "q"}),
    )
    .await;
    let events = chat_events_until_terminal(&mut caller, "q").await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0]["error"],
        "chat timed out: no event from agent 'quiet' for 1s"
    );
    let cancel = agent.next_request("agent.chat.cancel").await.unwrap();
    assert_eq!(cancel["params"]["session_id"], "q");
    let mut host = server.auth_host().await;
    let log = host.whole_log(Some(&CHAT_KINDS)).await;
    assert_eq!(
        chat_records(&log, "q").last().unwrap()["data"]["reason"],
        "idle_timeout"
    );
}

#[tokio::test]
async fn a_caller_that_does_not_read_overflows_and_loses_nothing_queued_before() {
    let server = server(&[]).await;
    let mut agent = server.auth_agent("flood").await;
    let mut caller = server.connect_small_buffer().await;
    caller
        .ok("session.auth", json!({"token": server.auth_token}))
        .await;
    start_chat(
        &mut caller,
        &mut agent,
        json!({"agent_id": "flood", "prompt": "x", "session_id": "f"}),
    )
    .await;
    // Far more than the queue (4096) plus what the sockets hold, while the caller reads
    // nothing: 20 000 events of 2 KiB.
    let filler = "x".repeat(2048);
    for i in 0..20_000 {
        send_event(
            &mut agent,
            "f",
            json!({"kind": "token", "n": i, "text": filler}),
        )
        .await;
    }
    let cancel = agent.next_request("agent.chat.cancel").await.unwrap();
    assert_eq!(cancel["params"]["session_id"], "f");
    // Now the caller reads: an unbroken prefix of the events, then the overflow error.
    let events = chat_events_until_terminal(&mut caller, "f").await;
    let (last, relayed) = events.split_last().unwrap();
    assert_eq!(last["error"], "chat event queue overflow");
    assert!(
        relayed.len() >= 4096 && relayed.len() < 20_000,
        "{} relayed",
        relayed.len()
    );
    for (i, event) in relayed.iter().enumerate() {
        assert_eq!(event["n"], i, "event {i} of the prefix");
    }
}

#[tokio::test]
async fn shutdown_tells_callers_and_a_restart_drops_what_a_crash_left() {
    let mut server = server(&[]).await;
    let mut agent = server.auth_agent("a").await;
    let mut caller = server.auth_client().await;
    start_chat(
        &mut caller,
        &mut agent,
        json!({"agent_id": "a", "prompt": "x", "session_id": "sd"}),
    )
    .await;
    server.stop().await.unwrap();
    let events = chat_events_until_terminal(&mut caller, "sd").await;
    assert_eq!(events.last().unwrap()["error"], "daemon shutting down");

    server.restart().await.unwrap();
    let mut agent = server.auth_agent("a").await;
    let mut caller = server.auth_client().await;
    start_chat(
        &mut caller,
        &mut agent,
        json!({"agent_id": "a", "prompt": "x", "session_id": "crash"}),
    )
    .await;
    server.kill().await.unwrap();
    server.restart().await.unwrap();
    let mut host = server.auth_host().await;
    let log = host.whole_log(Some(&CHAT_KINDS)).await;
    assert_eq!(
        chat_records(&log, "sd").last().unwrap()["data"]["reason"],
        "daemon_shutdown"
    );
    assert_eq!(
        chat_records(&log, "crash").last().unwrap()["data"]["reason"],
        "daemon_restart"
    );
    // The id is free again.
    let mut agent = server.auth_agent("a").await;
    let mut caller = server.auth_client().await;
    start_chat(
        &mut caller,
        &mut agent,
        json!({"agent_id": "a", "prompt": "x", "session_id": "crash"}),
    )
    .await;
}

#[tokio::test]
async fn a_supervised_agent_answers_a_chat() {
    let server = server(&[]).await;
    let mut host = server.auth_host().await;
    let bin = env!("CARGO_BIN_EXE_car-test-agent");
    host.ok(
        "agents.upsert",
        json!({"id": "sup", "name": "supervised", "command": bin, "args": ["serve"]}),
    )
    .await;
    host.ok("agents.start", json!({"id": "sup"})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list = host.ok("agents.list", json!({})).await;
        if list[0]["attached"] == true {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent never attached: {list}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let result = host
        .ok(
            "agents.chat",
            json!({"agent_id": "sup", "prompt": "hello chat world"}),
        )
        .await;
    let session_id = result["session_id"].as_str().unwrap().to_owned();
    let events = chat_events_until_terminal(&mut host, &session_id).await;
    let texts: Vec<&str> = events.iter().filter_map(|e| e["text"].as_str()).collect();
    assert_eq!(texts, ["hello", "chat", "world", "hello chat world"]);
    assert_eq!(events.last().unwrap()["kind"], "done");
}
