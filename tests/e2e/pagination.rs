//! PROTOCOL.md §14.4: pagination for sessions that negotiated `runs.pagination.v1` —
//! required fields, pages that join to the whole list or trace, the opaque `runs.list`
//! cursor, a bounded `runs.subscribe` snapshot. Unnegotiated sessions keep §3.5–3.6.

use car_tests::{Client, turns};
use serde_json::{Value, json};

use crate::runs::{complete, full_trace, record, start};
use crate::server;

const PAGINATION: &str = "runs.pagination.v1";

async fn negotiate(client: &mut Client) {
    let answer = client
        .ok(
            "server.handshake",
            json!({"protocol_version": 3, "optional_capabilities": [PAGINATION]}),
        )
        .await;
    assert_eq!(answer["negotiated_capabilities"], json!([PAGINATION]));
}

#[tokio::test]
async fn paged_calls_must_send_their_fields() {
    let server = server(&[]).await;
    let mut agent = server.auth_agent("a").await;
    let run = start(&mut agent, "a").await;
    negotiate(&mut agent).await;
    for (method, params, field) in [
        ("runs.list", json!({"cursor": "", "limit": 5}), "agent_id"),
        ("runs.list", json!({"agent_id": null, "limit": 5}), "cursor"),
        (
            "runs.list",
            json!({"agent_id": null, "cursor": ""}),
            "limit",
        ),
        (
            "runs.get_trace",
            json!({"run_id": run, "limit": 5}),
            "cursor",
        ),
        (
            "runs.get_trace",
            json!({"run_id": run, "cursor": 0}),
            "limit",
        ),
        (
            "runs.subscribe",
            json!({"run_id": run, "limit": 5}),
            "cursor",
        ),
        (
            "runs.subscribe",
            json!({"run_id": run, "cursor": 0}),
            "limit",
        ),
    ] {
        let err = agent.err(method, params.clone()).await;
        assert_eq!(err.code, -32602, "{method} {params}");
        assert_eq!(
            err.message,
            format!("invalid params: {field} is required"),
            "{method} {params}"
        );
    }
    for limit in [json!(0), json!(501), json!("5")] {
        let err = agent
            .err(
                "runs.list",
                json!({"agent_id": null, "cursor": "", "limit": limit}),
            )
            .await;
        assert_eq!(err.code, -32602, "{limit}");
        assert!(err.message.contains("limit"), "{err}");
    }
    let foreign = agent
        .err(
            "runs.list",
            json!({"agent_id": null, "cursor": "not-ours", "limit": 5}),
        )
        .await;
    assert_eq!(foreign.code, -32602);
    assert!(foreign.message.contains("cursor"), "{foreign}");
}

#[tokio::test]
async fn runs_list_pages_join_to_the_whole_list() {
    let server = server(&[]).await;
    let mut agent = server.auth_agent("a").await;
    for _ in 0..7 {
        start(&mut agent, "a").await;
    }
    let whole = agent.ok("runs.list", json!({})).await;
    let whole = whole["runs"].as_array().unwrap().clone();
    assert_eq!(whole.len(), 7);
    negotiate(&mut agent).await;
    let mut joined: Vec<Value> = Vec::new();
    let mut cursor = Value::from("");
    let mut pages = 0;
    loop {
        let page = agent
            .ok(
                "runs.list",
                json!({"agent_id": "a", "cursor": cursor, "limit": 3}),
            )
            .await;
        pages += 1;
        assert_eq!(page["agent_id"], "a");
        joined.extend(page["runs"].as_array().unwrap().iter().cloned());
        if page["next_cursor"].is_null() {
            break;
        }
        cursor = page["next_cursor"].clone();
        assert!(pages < 10, "no end: {page}");
    }
    assert_eq!(pages, 3);
    assert_eq!(joined, whole);
    // agent_id null: every run the caller may read.
    let all = agent
        .ok(
            "runs.list",
            json!({"agent_id": null, "cursor": "", "limit": 500}),
        )
        .await;
    assert_eq!(all["agent_id"], Value::Null);
    assert_eq!(all["runs"].as_array().unwrap().len(), 7);
    assert_eq!(all["next_cursor"], Value::Null);
}

#[tokio::test]
async fn runs_get_trace_pages_join_to_the_whole_trace_and_end_with_null() {
    let server = server(&[]).await;
    let mut agent = server.auth_agent("a").await;
    let run = start(&mut agent, "a").await;
    record(&mut agent, &run, turns("t", 8)).await;
    complete(&mut agent, &run).await;
    let whole = full_trace(&mut agent, &run).await;
    let whole = whole["records"].as_array().unwrap().clone();
    assert_eq!(whole.len(), 10);
    negotiate(&mut agent).await;
    let mut joined: Vec<Value> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let page = agent
            .ok(
                "runs.get_trace",
                json!({"run_id": run, "cursor": cursor, "limit": 4}),
            )
            .await;
        assert_eq!(page["cursor"], cursor, "the cursor is echoed");
        let records = page["records"].as_array().unwrap();
        assert!(records.len() <= 4);
        joined.extend(records.iter().cloned());
        match page["next_cursor"].as_u64() {
            Some(next) => {
                assert_eq!(next, cursor + records.len() as u64);
                cursor = next;
            }
            None => break,
        }
    }
    assert_eq!(joined, whole);
    assert_eq!(joined.last().unwrap()["record"], "ended");
}

#[tokio::test]
async fn a_paged_subscribe_snapshot_holds_at_most_limit_turns_and_says_when_it_left_some_out() {
    let server = server(&[]).await;
    let mut agent = server.auth_agent("a").await;
    let run = start(&mut agent, "a").await;
    record(&mut agent, &run, turns("t", 5)).await;
    let mut host = server.auth_host().await;
    negotiate(&mut host).await;
    let snapshot = host
        .ok(
            "runs.subscribe",
            json!({"run_id": run, "cursor": 1, "limit": 2}),
        )
        .await;
    let turns_so_far = snapshot["turns_so_far"].as_array().unwrap();
    let indices: Vec<u64> = turns_so_far
        .iter()
        .map(|t| t["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, [1, 2]);
    assert_eq!(snapshot["cursor"], 5, "the turn count, as §3.5");
    assert_eq!(snapshot["truncated"], true);
    record(&mut agent, &run, turns("u", 1)).await;
    let event = host.next_notification("runs.trace.event").await.unwrap();
    assert_eq!(event["cursor"], 6);
    assert_eq!(event["record"]["index"], 5);
    // A snapshot that holds everything is not truncated.
    let mut other = server.auth_host().await;
    negotiate(&mut other).await;
    let whole = other
        .ok(
            "runs.subscribe",
            json!({"run_id": run, "cursor": 0, "limit": 500}),
        )
        .await;
    assert_eq!(whole["turns_so_far"].as_array().unwrap().len(), 6);
    assert!(whole.get("truncated").is_none(), "{whole}");
}

#[tokio::test]
async fn unnegotiated_sessions_keep_the_v2_shapes() {
    let server = server(&[]).await;
    let mut agent = server.auth_agent("a").await;
    let run = start(&mut agent, "a").await;
    record(&mut agent, &run, turns("t", 3)).await;
    // `limit` on get_trace is ignored, no next_cursor; runs.list needs no cursor.
    let trace = agent
        .ok("runs.get_trace", json!({"run_id": run, "limit": 1}))
        .await;
    assert_eq!(trace["records"].as_array().unwrap().len(), 4);
    assert!(trace.get("next_cursor").is_none(), "{trace}");
    let list = agent.ok("runs.list", json!({})).await;
    assert!(list.get("next_cursor").is_none(), "{list}");
}
