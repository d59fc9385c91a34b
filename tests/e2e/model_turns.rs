//! PROTOCOL.md §14.3: `runs.record_model_turn` — a model's turn in the run's index sequence,
//! in traces and subscriptions as a `model_turn` record, with credentials redacted.

use car_tests::turns;
use serde_json::{Value, json};

use crate::runs::{complete, full_trace, record, start};
use crate::server;

fn model_turn(run_id: &str, turn_index: u64, text: &str) -> Value {
    json!({
        "run_id": run_id,
        "turn_index": turn_index,
        "assistant_text": text,
        "requested_tool_calls": [{"id": "call-1", "name": "search", "arguments": {"q": "rust"}}],
        "model_id": "claude-test",
        "token_usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                         "context_window": 200000, "cache_read_input_tokens": 0,
                         "cache_creation_input_tokens": 0},
        "duration_ms": 1234,
    })
}

#[tokio::test]
async fn model_turns_share_the_index_sequence_and_read_back_as_model_turn_records() {
    let server = server(&[]).await;
    let mut agent = server.auth_agent("a").await;
    let run = start(&mut agent, "a").await;
    let mut host = server.auth_host().await;
    let snapshot = host.ok("runs.subscribe", json!({"run_id": run})).await;
    assert_eq!(snapshot["cursor"], 0);

    assert_eq!(record(&mut agent, &run, turns("act", 2)).await, 0);
    let reply = agent
        .ok("runs.record_model_turn", model_turn(&run, 1, "thinking"))
        .await;
    assert_eq!(
        reply,
        json!({"run_id": run, "base_index": 2, "count": 1, "ok": true})
    );
    assert_eq!(record(&mut agent, &run, turns("act", 1)).await, 3);

    let trace = full_trace(&mut agent, &run).await;
    let records = trace["records"].as_array().unwrap();
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["record"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["started", "turn", "turn", "model_turn", "turn"]);
    let model = &records[3];
    let keys: Vec<&str> = model
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "record",
            "index",
            "turn_index",
            "assistant_text",
            "requested_tool_calls",
            "model_id",
            "token_usage",
            "duration_ms",
            "recorded_at"
        ]
    );
    assert_eq!(model["index"], 2);
    assert_eq!(model["turn_index"], 1);
    assert_eq!(model["assistant_text"], "thinking");
    assert_eq!(model["requested_tool_calls"][0]["arguments"]["q"], "rust");
    assert_eq!(model["token_usage"]["total_tokens"], 15);
    let listed = agent.ok("runs.list", json!({})).await;
    assert_eq!(listed["runs"][0]["turn_count"], 4);

    // The subscriber got every turn, the model turn as the record the trace shows.
    let mut events = Vec::new();
    for _ in 0..4 {
        events.push(host.next_notification("runs.trace.event").await.unwrap());
    }
    let cursors: Vec<u64> = events
        .iter()
        .map(|e| e["cursor"].as_u64().unwrap())
        .collect();
    assert_eq!(cursors, [1, 2, 3, 4]);
    assert_eq!(events[2]["record"], *model);
    complete(&mut agent, &run).await;
}

#[tokio::test]
async fn the_daemon_and_host_tokens_are_redacted_from_a_model_turn() {
    let server = server(&[]).await;
    let mut agent = server.auth_agent("a").await;
    let run = start(&mut agent, "a").await;
    let leak = format!(
        "my token is {} and the host's is {}",
        server.auth_token, server.host_token
    );
    let mut turn = model_turn(&run, 1, &leak);
    turn["requested_tool_calls"][0]["arguments"] =
        json!({"auth": server.auth_token, server.host_token.clone(): "key"});
    agent.ok("runs.record_model_turn", turn).await;
    let trace = full_trace(&mut agent, &run).await;
    let stored = trace["records"][1].to_string();
    assert!(!stored.contains(&server.auth_token), "{stored}");
    assert!(!stored.contains(&server.host_token), "{stored}");
    assert_eq!(
        trace["records"][1]["assistant_text"],
        "my token is [REDACTED] and the host's is [REDACTED]"
    );
    assert_eq!(
        trace["records"][1]["requested_tool_calls"][0]["arguments"],
        json!({"auth": "[REDACTED]", "[REDACTED]": "key"})
    );
    let mut host = server.auth_host().await;
    let logged = host
        .whole_log(Some(&["run.turns_recorded"]))
        .await
        .last()
        .unwrap()
        .to_string();
    assert!(!logged.contains(&server.auth_token), "{logged}");
}

#[tokio::test]
async fn a_malformed_model_turn_is_minus_32602_and_records_nothing() {
    let server = server(&[]).await;
    let mut agent = server.auth_agent("a").await;
    let run = start(&mut agent, "a").await;
    let base = model_turn(&run, 1, "t");
    for (field, value, named) in [
        ("turn_index", json!(0), "turn_index"),
        ("turn_index", json!(-1), "turn_index"),
        ("turn_index", json!("1"), "turn_index"),
        ("assistant_text", json!(5), "assistant_text"),
        ("requested_tool_calls", json!({}), "requested_tool_calls"),
        (
            "requested_tool_calls",
            json!([{"id": "x"}]),
            "requested_tool_calls",
        ),
        ("model_id", Value::Null, "model_id"),
        ("token_usage", json!(7), "token_usage"),
        ("token_usage", json!({"total_tokens": -3}), "token_usage"),
        ("duration_ms", json!(-1), "duration_ms"),
    ] {
        let mut params = base.clone();
        params[field] = value.clone();
        let err = agent.err("runs.record_model_turn", params).await;
        assert_eq!(err.code, -32602, "{field}={value}: {err}");
        assert!(err.message.contains(named), "{field}={value}: {err}");
    }
    let mut missing = base.clone();
    missing.as_object_mut().unwrap().remove("duration_ms");
    assert_eq!(
        agent.err("runs.record_model_turn", missing).await.code,
        -32602
    );
    // token_usage may be null.
    let mut no_usage = base.clone();
    no_usage["token_usage"] = Value::Null;
    agent.ok("runs.record_model_turn", no_usage).await;
    let listed = agent.ok("runs.list", json!({})).await;
    assert_eq!(listed["runs"][0]["turn_count"], 1);
}

#[tokio::test]
async fn model_turns_are_owners_only_count_against_the_ceiling_and_stop_at_the_end() {
    let server = server(&[]).await;
    let mut agent = server.auth_agent("a").await;
    let run = start(&mut agent, "a").await;
    let mut stranger = server.auth_client().await;
    let refused = stranger
        .ok("runs.record_model_turn", model_turn(&run, 1, "t"))
        .await;
    assert_eq!(
        refused,
        json!({"run_id": run, "base_index": 0, "count": 0, "ok": false, "dropped": "run_not_found"})
    );
    for _ in 0..7 {
        record(&mut agent, &run, turns("t", 250)).await;
    }
    record(&mut agent, &run, turns("t", 249)).await;
    let last = agent
        .ok("runs.record_model_turn", model_turn(&run, 1, "the 2000th"))
        .await;
    assert_eq!(last["base_index"], 1999);
    let over = agent
        .ok(
            "runs.record_model_turn",
            model_turn(&run, 2, "one too many"),
        )
        .await;
    assert_eq!(over["dropped"], "run_turn_limit");
    complete(&mut agent, &run).await;
    let ended = agent
        .ok("runs.record_model_turn", model_turn(&run, 3, "after"))
        .await;
    assert_eq!(ended["dropped"], "run_terminal");
}
