//! `car-replay chats` and `events --chat` on the golden-v9 log of car-events: a chat
//! streamed to its end with an approval resolved by its caller, one cancelled with its
//! approval expiring, one the agent never acknowledged, an A2A task, and one still routed
//! when the daemon was killed (dropped `daemon_restart` by the next).

use serde_json::{Value, json};

use crate::fixtures::DataDir;

#[test]
fn chats_lists_every_chat_with_how_it_ended() {
    let data = DataDir::golden_v9();
    let doc = data.run(&["chats", "--json"]).expect(0).json();
    let chats = doc["chats"].as_array().unwrap();
    let ids: Vec<&str> = chats
        .iter()
        .map(|c| c["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["chat-1", "chat-2", "chat-3", "task-7f3a", "chat-4"]);
    let ended: Vec<&str> = chats.iter().map(|c| c["ended"].as_str().unwrap()).collect();
    assert_eq!(
        ended,
        [
            "terminal",
            "cancelled",
            "ack_failed",
            "terminal",
            "daemon_restart"
        ]
    );
    let first = &chats[0];
    assert_eq!(
        (first["terminal"].as_str(), first["finish_reason"].as_str()),
        (Some("done"), Some("stop"))
    );
    assert_eq!(first["caller_role"], "client");
    assert_eq!(first["caller_client_id"], "sess-ui");
    assert_eq!(first["prompt"], "Draft the release notes for 0.9");
    assert_eq!(
        first["approvals"],
        json!([{"approval_id": "chat-appr-1", "action": "chat:write_file", "outcome": "resolved:approve"}])
    );
    let cancelled = &chats[1];
    assert_eq!(cancelled["cancelled_by"], "client:sess-ui");
    assert_eq!(cancelled["error"], "chat cancelled");
    assert_eq!(cancelled["approvals"][0]["outcome"], "expired:chat_ended");
    assert_eq!(chats[3]["caller_role"], "a2a");
    assert!(chats[3]["caller_client_id"].is_null());
    assert_eq!(chats[3]["terminal"], "auth_required");
    // Up to seq 22, chat-4 is still routed.
    let at = data
        .run(&["chats", "--to", "22", "--json"])
        .expect(0)
        .json();
    let last = at["chats"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        (last["session_id"].as_str(), last["ended"].as_str()),
        (Some("chat-4"), Some("live"))
    );
    // The table names each chat and the live count.
    let text = data.run(&["chats", "--to", "22"]).expect(0).stdout;
    assert!(text.starts_with("chats up to seq 22: 5 (1 live)"), "{text}");
    assert!(
        text.contains("ack_failed") && text.contains("resolved:approve"),
        "{text}"
    );
    // --agent filters.
    let none = data
        .run(&["chats", "--agent", "nobody", "--json"])
        .expect(0)
        .json();
    assert_eq!(none["chats"], json!([]));
}

#[test]
fn events_chat_follows_one_chat_and_its_approvals() {
    let data = DataDir::golden_v9();
    let out = data.run(&["events", "--chat", "chat-2"]).expect(0).stdout;
    let kinds: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "chat.started",
            "approval.requested_in_chat",
            "chat.cancel_requested",
            "chat.terminal",
            "approval.expired",
            "chat.route_dropped"
        ]
    );
}

#[test]
fn a_log_with_chats_verifies_clean() {
    DataDir::golden_v9().run(&["verify"]).expect(0);
}
