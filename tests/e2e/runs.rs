//! PROTOCOL.md §3.1–3.4 and §3.6: `runs.start` (agent id resolution, idempotency keys,
//! hosts refused), `runs.record_turns` (daemon-assigned indices, 1–256 per batch, the
//! 2000-turn ceiling, truncation at 16 KiB, the 256 KiB replacement, and the soft results
//! `run_not_found` / `run_terminal` / `run_turn_limit` / `turn_too_large`),
//! `runs.complete` (first terminal wins, exact messages), `runs.list` (order, paging,
//! status filter, visibility) and `runs.get_trace` (records, cursor paging, not found), and
//! who may read and write which run (§2.3, §3).

use car_tests::{Client, is_protocol_time, turn, turns};
use serde_json::{Value, json};

use crate::server;

/// Starts a run with `agent_id`; returns its id.
pub(crate) async fn start(client: &mut Client, agent_id: &str) -> String {
    let result = client
        .ok(
            "runs.start",
            json!({"intent": format!("work of {agent_id}"), "agent_id": agent_id}),
        )
        .await;
    result["run_id"].as_str().unwrap().to_owned()
}

/// Records `batch`, expecting it appended; returns the base index.
pub(crate) async fn record(client: &mut Client, run_id: &str, batch: Vec<Value>) -> u64 {
    let count = batch.len();
    let result = client
        .ok(
            "runs.record_turns",
            json!({"run_id": run_id, "turns": batch}),
        )
        .await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["count"], count, "{result}");
    result["base_index"].as_u64().unwrap()
}

/// Completes `run_id` with `{"status": "success"}`, expecting the first terminal to win.
pub(crate) async fn complete(client: &mut Client, run_id: &str) {
    let result = client
        .ok(
            "runs.complete",
            json!({"run_id": run_id, "outcome": {"status": "success"}}),
        )
        .await;
    assert_eq!(result, json!({"run_id": run_id, "ok": true}));
}

/// The whole trace of a run as `client` sees it (following the cursor).
pub(crate) async fn full_trace(client: &mut Client, run_id: &str) -> Value {
    client.ok("runs.get_trace", json!({"run_id": run_id})).await
}

/// The soft result of a refused `runs.record_turns`.
fn dropped(run_id: &str, why: &str) -> Value {
    json!({"run_id": run_id, "base_index": 0, "count": 0, "ok": false, "dropped": why})
}

fn turn_count(trace: &Value) -> usize {
    trace["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["record"] == "turn")
        .count()
}

#[tokio::test]
async fn start_resolves_the_agent_id() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let cases = [
        (json!({"intent": "i", "agent_id": "a1"}), "a1"),
        (
            json!({"intent": "i", "agent_id": "a1", "agent_name": "Zed"}),
            "a1",
        ),
        (
            json!({"intent": "i", "agent_name": "My Agent"}),
            "name:my-agent",
        ),
        (
            json!({"intent": "i", "agent_name": "planner"}),
            "name:planner",
        ),
    ];
    let mut ids = Vec::new();
    for (params, agent_id) in cases {
        let result = client.ok("runs.start", params.clone()).await;
        assert_eq!(result.as_object().unwrap().len(), 2, "{result}");
        assert_eq!(result["agent_id"], agent_id, "{params}");
        let run_id = result["run_id"].as_str().unwrap();
        uuid::Uuid::parse_str(run_id).unwrap_or_else(|e| panic!("{run_id}: {e}"));
        ids.push(run_id.to_owned());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "every start is a new run");
    for params in [
        json!({"intent": "i"}),
        json!({"intent": "i", "agent_name": ""}),
        json!({"intent": "i", "agent_name": "!!!"}),
    ] {
        let err = client.err("runs.start", params.clone()).await;
        assert_eq!(err.code, -32602, "{params}: {err}");
        assert!(err.message.contains("agent_id"), "{params}: {err}");
    }

    // An agent session's bound identity wins.
    let mut agent = server.auth_agent("bound").await;
    for params in [
        json!({"intent": "i"}),
        json!({"intent": "i", "agent_id": "bound"}),
        json!({"intent": "i", "agent_name": "Someone Else"}),
    ] {
        let result = agent.ok("runs.start", params.clone()).await;
        assert_eq!(result["agent_id"], "bound", "{params}");
    }
    let err = agent
        .err("runs.start", json!({"intent": "i", "agent_id": "other"}))
        .await;
    assert_eq!(err.code, -32602, "{err}");
    assert!(err.message.contains("agent_id"), "{err}");
}

#[tokio::test]
async fn host_sessions_cannot_start_runs() {
    let server = server(&[]).await;
    let mut host = server.auth_host().await;
    for params in [
        json!({"intent": "i", "agent_id": "a"}),
        json!({"intent": "i", "agent_id": "a", "idempotency_key": "k"}),
    ] {
        let err = host.err("runs.start", params).await;
        assert_eq!(
            (err.code, err.message.as_str()),
            (-32603, "host sessions cannot start runs")
        );
    }
    let list = host.ok("runs.list", json!({})).await;
    assert_eq!(list["runs"], json!([]));
}

#[tokio::test]
async fn an_idempotency_key_returns_the_existing_run_and_records_nothing_new() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let params = json!({"intent": "first", "agent_id": "a", "idempotency_key": "job-42"});
    let first = client.ok("runs.start", params).await;
    assert_eq!(first, json!({"run_id": "job-42", "agent_id": "a"}));
    record(&mut client, "job-42", turns("t", 2)).await;
    // Again, even with other params: the same run, as it is.
    let again = client
        .ok(
            "runs.start",
            json!({"intent": "second", "agent_id": "a", "idempotency_key": "job-42"}),
        )
        .await;
    assert_eq!(again, first);
    // Also for the owning agent session, and once the run has ended.
    let mut agent = server.auth_agent("a").await;
    let by_agent = agent
        .ok(
            "runs.start",
            json!({"intent": "x", "idempotency_key": "job-42"}),
        )
        .await;
    assert_eq!(by_agent, first);
    complete(&mut client, "job-42").await;
    let after_end = client
        .ok(
            "runs.start",
            json!({"intent": "third", "agent_id": "a", "idempotency_key": "job-42"}),
        )
        .await;
    assert_eq!(after_end, first);

    let trace = full_trace(&mut client, "job-42").await;
    assert_eq!(trace["records"][0]["intent"], "first");
    assert_eq!(turn_count(&trace), 2);
    let list = client.ok("runs.list", json!({})).await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["runs"][0]["status"], "completed");
    let mut host = server.auth_host().await;
    let started = host.ok("log.read", json!({"kinds": ["run.started"]})).await;
    assert_eq!(started["events"].as_array().unwrap().len(), 1, "{started}");
    // Regression (issue 9, item 5): a caller that may not read the run learns nothing about
    // it, not even that the key is taken (it used to get the run's id and agent_id), and
    // nothing is recorded.
    let mut stranger = server.auth_client().await;
    let refused = stranger
        .err(
            "runs.start",
            json!({"intent": "x", "agent_id": "z", "idempotency_key": "job-42"}),
        )
        .await;
    assert_eq!(refused.code, -32602);
    assert_eq!(refused.message, "idempotency_key is not available");
    let mut other_agent = server.auth_agent("z").await;
    let refused = other_agent
        .err(
            "runs.start",
            json!({"intent": "x", "idempotency_key": "job-42"}),
        )
        .await;
    assert_eq!(refused.message, "idempotency_key is not available");
    // A host may read every run: it gets the run as it is.
    let by_host = host
        .call(
            "runs.start",
            json!({"intent": "x", "agent_id": "a", "idempotency_key": "job-42"}),
        )
        .await;
    assert_eq!(
        by_host.unwrap_err().message,
        "host sessions cannot start runs"
    );
    let hidden = stranger
        .ok("runs.get_trace", json!({"run_id": "job-42"}))
        .await;
    assert_eq!(hidden, json!({"run_id": "job-42", "not_found": true}));
    let started = host.ok("log.read", json!({"kinds": ["run.started"]})).await;
    assert_eq!(started["events"].as_array().unwrap().len(), 1, "{started}");
    // Another key is another run.
    let other = client
        .ok(
            "runs.start",
            json!({"intent": "i", "agent_id": "a", "idempotency_key": "job-43"}),
        )
        .await;
    assert_eq!(other["run_id"], "job-43");
}

#[tokio::test]
async fn record_turns_assigns_contiguous_indices_and_keeps_the_turns_as_sent() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let run = start(&mut client, "a").await;
    let first = client
        .ok(
            "runs.record_turns",
            json!({"run_id": run, "turns": [
                {"index": 99, "prompt": "p0", "tool": "search", "parameters": {"q": [1, 2.5, null]},
                 "output": {"hits": 3}},
                {"prompt": "p1", "output": [1, "two"], "verifier_verdict": "passed",
                 "policy_rejected": true},
                {"index": 0, "output": 42, "recorded_at": "1999-01-01T00:00:00.000Z",
                 "record": "bogus"},
            ]}),
        )
        .await;
    assert_eq!(
        first,
        json!({"run_id": run, "base_index": 0, "count": 3, "ok": true})
    );
    assert_eq!(record(&mut client, &run, turns("b", 1)).await, 3);
    assert_eq!(record(&mut client, &run, turns("c", 2)).await, 4);

    let trace = full_trace(&mut client, &run).await;
    let records = trace["records"].as_array().unwrap();
    let turns: Vec<&Value> = records.iter().filter(|r| r["record"] == "turn").collect();
    assert_eq!(turns.len(), 6);
    for (i, t) in turns.iter().enumerate() {
        assert_eq!(t["index"], i, "{t}");
        assert!(is_protocol_time(t["recorded_at"].as_str().unwrap()), "{t}");
    }
    let t0 = turns[0];
    assert_eq!(t0["prompt"], "p0");
    assert_eq!(t0["tool"], "search");
    assert_eq!(t0["parameters"], json!({"q": [1, 2.5, null]}));
    assert_eq!(t0["output"], json!({"hits": 3}));
    assert_eq!(t0["verifier_verdict"], "not_run");
    assert_eq!(t0["policy_rejected"], false);
    assert_eq!(turns[1]["output"], json!([1, "two"]));
    assert_eq!(turns[1]["verifier_verdict"], "passed");
    assert_eq!(turns[1]["policy_rejected"], true);
    // The daemon's fields are the daemon's.
    assert_eq!(turns[2]["record"], "turn");
    assert_eq!(turns[2]["index"], 2);
    assert_eq!(turns[2]["output"], 42);
    assert_ne!(turns[2]["recorded_at"], "1999-01-01T00:00:00.000Z");
    assert_eq!(turns[3]["prompt"], "b-0");
    assert_eq!(turns[5]["prompt"], "c-1");
}

#[tokio::test]
async fn record_turns_takes_1_to_256_turns_per_call() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let run = start(&mut client, "a").await;
    for batch in [vec![], turns("x", 257)] {
        let err = client
            .err("runs.record_turns", json!({"run_id": run, "turns": batch}))
            .await;
        assert_eq!(err.code, -32602, "{err}");
        assert!(err.message.contains("turns"), "{err}");
    }
    let err = client
        .err(
            "runs.record_turns",
            json!({"run_id": run, "turns": [{"prompt": "ok"}, "not an object"]}),
        )
        .await;
    assert_eq!(err.code, -32602, "{err}");
    assert!(err.message.contains("turns[1]"), "{err}");
    assert_eq!(turn_count(&full_trace(&mut client, &run).await), 0);
    assert_eq!(record(&mut client, &run, turns("x", 256)).await, 0);
    assert_eq!(record(&mut client, &run, turns("y", 1)).await, 256);
    // Every field of a turn but the daemon's is optional: an empty turn is a turn.
    assert_eq!(record(&mut client, &run, vec![json!({})]).await, 257);
    let page = client
        .ok("runs.get_trace", json!({"run_id": run, "cursor": 258}))
        .await;
    let empty = &page["records"][0];
    assert_eq!(empty["record"], "turn");
    assert_eq!(empty["index"], 257);
    assert_eq!(empty["verifier_verdict"], "not_run");
    assert_eq!(empty["policy_rejected"], false);
    assert!(is_protocol_time(empty["recorded_at"].as_str().unwrap()));
}

#[tokio::test]
async fn a_run_holds_2000_turns_and_a_batch_that_would_pass_that_is_refused_whole() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let run = start(&mut client, "a").await;
    for i in 0..7 {
        assert_eq!(record(&mut client, &run, turns("t", 256)).await, i * 256);
    }
    // 1792 + 256 = 2048 > 2000: nothing of the batch is appended.
    let refused = client
        .ok(
            "runs.record_turns",
            json!({"run_id": run, "turns": turns("over", 256)}),
        )
        .await;
    assert_eq!(refused, dropped(&run, "run_turn_limit"));
    assert_eq!(record(&mut client, &run, turns("last", 208)).await, 1792);
    let refused = client
        .ok(
            "runs.record_turns",
            json!({"run_id": run, "turns": turns("one-more", 1)}),
        )
        .await;
    assert_eq!(refused, dropped(&run, "run_turn_limit"));
    let list = client.ok("runs.list", json!({})).await;
    assert_eq!(list["runs"][0]["turn_count"], 2000);
    // The run can still end normally.
    complete(&mut client, &run).await;
    let trace = client
        .ok("runs.get_trace", json!({"run_id": run, "cursor": 2000}))
        .await;
    let records = trace["records"].as_array().unwrap();
    assert_eq!(records.len(), 2, "{trace}");
    assert_eq!(records[0]["index"], 1999);
    assert_eq!(records[0]["prompt"], "last-207");
    assert_eq!(records[1]["record"], "ended");
}

#[tokio::test]
async fn strings_over_16_kib_are_cut_to_16_kib_ending_with_the_marker() {
    const MAX: usize = 16 * 1024;
    const MARK: &str = "…[truncated]";
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let run = start(&mut client, "a").await;
    let ascii = "a".repeat(20_000);
    let multibyte = "é".repeat(10_000); // 20 000 bytes
    let exact = "e".repeat(MAX);
    record(
        &mut client,
        &run,
        vec![json!({
            "prompt": ascii,
            "parameters": {"deep": [{"x": ascii}], "n": 1},
            "output": multibyte,
            "tool": exact,
            "note": "short",
        })],
    )
    .await;
    let trace = full_trace(&mut client, &run).await;
    let t = &trace["records"][1];
    for cut in [&t["prompt"], &t["parameters"]["deep"][0]["x"]] {
        let cut = cut.as_str().unwrap();
        assert_eq!(cut.len(), MAX);
        assert!(cut.ends_with(MARK));
        assert_eq!(&cut[..MAX - MARK.len()], &ascii[..MAX - MARK.len()]);
    }
    let cut = t["output"].as_str().unwrap();
    assert!(cut.len() <= MAX && cut.len() > MAX - 4, "{}", cut.len());
    assert!(cut.ends_with(MARK));
    assert!(cut.trim_end_matches(MARK).chars().all(|c| c == 'é'));
    assert_eq!(
        t["tool"].as_str().unwrap(),
        exact,
        "16 KiB exactly is kept whole"
    );
    assert_eq!(t["parameters"]["n"], 1);
    assert_eq!(t["note"], "short");
}

#[tokio::test]
async fn a_turn_over_256_kib_has_prompt_parameters_and_output_replaced() {
    const REPLACED: &str = "…[truncated: turn exceeded 256 KiB]";
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let run = start(&mut client, "a").await;
    let chunk = "y".repeat(16 * 1024);
    let many: Vec<&str> = (0..20).map(|_| chunk.as_str()).collect();
    record(
        &mut client,
        &run,
        vec![
            json!({"prompt": "small", "parameters": many, "output": "o", "tool": "t", "extra": 7}),
            json!({"prompt": "p", "output": many}),
        ],
    )
    .await;
    let trace = full_trace(&mut client, &run).await;
    let t = &trace["records"][1];
    assert_eq!(t["prompt"], REPLACED);
    assert_eq!(t["parameters"], REPLACED);
    assert_eq!(t["output"], REPLACED);
    assert_eq!(t["tool"], "t");
    assert_eq!(t["extra"], 7);
    assert_eq!(t["index"], 0);
    let t = &trace["records"][2];
    assert_eq!(t["prompt"], REPLACED);
    assert_eq!(t["output"], REPLACED);
    assert!(
        t.get("parameters").is_none(),
        "absent fields stay absent: {t}"
    );
}

#[tokio::test]
async fn a_turn_still_too_large_refuses_the_whole_batch() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let run = start(&mut client, "a").await;
    record(&mut client, &run, turns("before", 1)).await;
    let chunk = "z".repeat(16 * 1024);
    let many: Vec<&str> = (0..20).map(|_| chunk.as_str()).collect();
    let result = client
        .ok(
            "runs.record_turns",
            json!({"run_id": run, "turns": [turn("fine"), {"tool": "t", "notes": many}]}),
        )
        .await;
    assert_eq!(result, dropped(&run, "turn_too_large"));
    let trace = full_trace(&mut client, &run).await;
    assert_eq!(turn_count(&trace), 1, "nothing of the batch was appended");
    assert_eq!(record(&mut client, &run, turns("after", 1)).await, 1);
}

#[tokio::test]
async fn turns_for_an_ended_run_are_run_terminal() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let run = start(&mut client, "a").await;
    record(&mut client, &run, turns("t", 2)).await;
    client
        .ok(
            "runs.complete",
            json!({"run_id": run, "outcome": {"status": "failure"}}),
        )
        .await;
    let result = client
        .ok(
            "runs.record_turns",
            json!({"run_id": run, "turns": turns("late", 1)}),
        )
        .await;
    assert_eq!(result, dropped(&run, "run_terminal"));
    assert_eq!(turn_count(&full_trace(&mut client, &run).await), 2);
}

#[tokio::test]
async fn turns_for_unknown_or_foreign_runs_are_run_not_found() {
    let server = server(&[]).await;
    let mut owner = server.auth_client().await;
    let run = start(&mut owner, "a").await;
    let mut stranger = server.auth_client().await;
    let mut other_agent = server.auth_agent("b").await;
    let mut host = server.auth_host().await;
    for client in [&mut stranger, &mut other_agent, &mut host] {
        let result = client
            .ok(
                "runs.record_turns",
                json!({"run_id": run, "turns": turns("x", 1)}),
            )
            .await;
        assert_eq!(result, dropped(&run, "run_not_found"));
    }
    let result = owner
        .ok(
            "runs.record_turns",
            json!({"run_id": "no-such-run", "turns": turns("x", 1)}),
        )
        .await;
    assert_eq!(result, dropped("no-such-run", "run_not_found"));
    // The agent session bound to the run's agent owns it too.
    let mut agent = server.auth_agent("a").await;
    assert_eq!(record(&mut agent, &run, turns("by-agent", 1)).await, 0);
    assert_eq!(record(&mut owner, &run, turns("by-owner", 1)).await, 1);
    let trace = full_trace(&mut host, &run).await;
    assert_eq!(turn_count(&trace), 2);
}

#[tokio::test]
async fn complete_first_terminal_wins_with_the_exact_messages() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let run = start(&mut client, "a").await;
    let outcome = json!({"status": "success", "summary": "done", "evidence": ["e1", {"k": 1}],
                         "metrics": {"tokens": 12, "cost": 0.5}, "timestamp": "2026-01-01T00:00:00Z"});
    let result = client
        .ok("runs.complete", json!({"run_id": run, "outcome": outcome}))
        .await;
    assert_eq!(result, json!({"run_id": run, "ok": true}));
    let err = client
        .err(
            "runs.complete",
            json!({"run_id": run, "outcome": {"status": "failure"}}),
        )
        .await;
    assert_eq!(err.code, -32603);
    assert_eq!(
        err.message,
        format!("run `{run}` is already terminal — cannot record another outcome")
    );
    let err = client
        .err(
            "runs.complete",
            json!({"run_id": "nope", "outcome": {"status": "success"}}),
        )
        .await;
    assert_eq!(
        (err.code, err.message.as_str()),
        (-32603, "unknown run_id `nope`")
    );
    let trace = full_trace(&mut client, &run).await;
    let ended = trace["records"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        ended["termination"],
        json!({"kind": "outcome", "outcome": outcome})
    );
    assert_eq!(ended["record"], "ended");
    assert_eq!(ended["run_id"], run.as_str());
    assert_eq!(ended["agent_id"], "a");
    assert!(is_protocol_time(ended["ended_at"].as_str().unwrap()));
}

#[tokio::test]
async fn complete_by_a_stranger_or_a_host_is_unknown_run() {
    let server = server(&[]).await;
    let mut owner = server.auth_client().await;
    let run = start(&mut owner, "a").await;
    let mut stranger = server.auth_client().await;
    let mut host = server.auth_host().await;
    for client in [&mut stranger, &mut host] {
        let err = client
            .err(
                "runs.complete",
                json!({"run_id": run, "outcome": {"status": "success"}}),
            )
            .await;
        assert_eq!(err.code, -32603);
        assert_eq!(err.message, format!("unknown run_id `{run}`"));
    }
    let list = owner.ok("runs.list", json!({})).await;
    assert_eq!(list["runs"][0]["status"], "in_progress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_completes_have_exactly_one_winner() {
    let server = server(&[]).await;
    let endpoint = server.endpoint().clone();
    for round in 0..5 {
        let mut starter = endpoint.auth_client().await;
        let run = start(&mut starter, &format!("agent-{round}")).await;
        let mut agent = endpoint.auth_agent(&format!("agent-{round}")).await;
        let a = starter
            .request(
                "runs.complete",
                json!({"run_id": run, "outcome": {"status": "success", "summary": "starter"}}),
            )
            .await
            .unwrap();
        let b = agent
            .request(
                "runs.complete",
                json!({"run_id": run, "outcome": {"status": "failure", "summary": "agent"}}),
            )
            .await
            .unwrap();
        let (ra, rb) = tokio::join!(starter.response(&a), agent.response(&b));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let winner = match (&ra, &rb) {
            (Ok(_), Err(e)) | (Err(e), Ok(_)) => {
                assert_eq!(e.code, -32603);
                assert!(e.message.contains("already terminal"), "{e}");
                if ra.is_ok() { "starter" } else { "agent" }
            }
            other => panic!("exactly one complete must win: {other:?}"),
        };
        let trace = full_trace(&mut starter, &run).await;
        let ended = trace["records"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            ended["termination"]["outcome"]["summary"], winner,
            "{ended}"
        );
    }
}

#[tokio::test]
async fn list_is_newest_first_and_pages_with_limit_and_before() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let run = client
            .ok(
                "runs.start",
                json!({"intent": format!("intent-{i}"), "agent_id": "a"}),
            )
            .await;
        ids.push(run["run_id"].as_str().unwrap().to_owned());
    }
    let listed = |v: &Value| -> Vec<String> {
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let all = client.ok("runs.list", json!({})).await;
    assert_eq!(listed(&all), newest_first);
    let mut starts: Vec<&str> = all["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["started_at"].as_str().unwrap())
        .collect();
    let before_sort = starts.clone();
    starts.sort_by(|a, b| b.cmp(a));
    assert_eq!(starts, before_sort, "newest started_at first");

    // Paging.
    let mut paged = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut params = json!({"limit": 2});
        if let Some(b) = &before {
            params["before"] = json!(b);
        }
        let page = listed(&client.ok("runs.list", params).await);
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        before = page.last().cloned();
        paged.extend(page);
    }
    assert_eq!(paged, newest_first);
    let page = client
        .ok("runs.list", json!({"before": ids[2], "limit": 100}))
        .await;
    assert_eq!(listed(&page), vec![ids[1].clone(), ids[0].clone()]);
    let err = client
        .err("runs.list", json!({"before": "no-such-run"}))
        .await;
    assert_eq!(err.code, -32602);
    assert!(err.message.contains("before"), "{err}");

    // Summaries, and the status filter.
    record(&mut client, &ids[1], turns("t", 3)).await;
    complete(&mut client, &ids[1]).await;
    let all = client.ok("runs.list", json!({})).await;
    let summary = all["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == ids[1].as_str())
        .unwrap()
        .clone();
    let keys: Vec<&str> = summary
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in [
        "run_id",
        "agent_id",
        "intent",
        "started_at",
        "status",
        "turn_count",
    ] {
        assert!(keys.contains(&key), "{summary}");
    }
    assert_eq!(summary["intent"], "intent-1");
    assert_eq!(summary["agent_id"], "a");
    assert_eq!(summary["status"], "completed");
    assert_eq!(summary["turn_count"], 3);
    assert!(is_protocol_time(summary["started_at"].as_str().unwrap()));
    assert!(is_protocol_time(summary["ended_at"].as_str().unwrap()));
    let open = &all["runs"][0];
    assert_eq!(open["status"], "in_progress");
    assert_eq!(open["turn_count"], 0);
    assert!(open.get("ended_at").is_none_or(Value::is_null), "{open}");

    let completed = client.ok("runs.list", json!({"status": "completed"})).await;
    assert_eq!(listed(&completed), vec![ids[1].clone()]);
    let in_progress = client
        .ok("runs.list", json!({"status": "in_progress"}))
        .await;
    assert_eq!(in_progress["runs"].as_array().unwrap().len(), 4);
    let incomplete = client
        .ok("runs.list", json!({"status": "incomplete"}))
        .await;
    assert_eq!(incomplete["runs"], json!([]));
    let err = client.err("runs.list", json!({"status": "done"})).await;
    assert_eq!(err.code, -32602);
    assert!(err.message.contains("status"), "{err}");
}

#[tokio::test]
async fn list_shows_each_session_the_runs_it_may_read() {
    let server = server(&[]).await;
    let mut alice = server.auth_client().await;
    let mut bob = server.auth_client().await;
    let a1 = start(&mut alice, "x").await;
    let b1 = start(&mut bob, "y").await;
    let mut agent_x = server.auth_agent("x").await;
    let x1 = agent_x
        .ok("runs.start", json!({"intent": "by the agent"}))
        .await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut host = server.auth_host().await;

    let ids = |v: &Value| -> Vec<String> {
        let mut ids: Vec<String> = v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let alice_sees = alice.ok("runs.list", json!({})).await;
    assert_eq!(ids(&alice_sees), vec![a1.clone()]);
    assert_eq!(alice_sees["agent_id"], Value::Null);
    assert_eq!(ids(&bob.ok("runs.list", json!({})).await), vec![b1.clone()]);
    let agent_sees = agent_x.ok("runs.list", json!({})).await;
    assert_eq!(ids(&agent_sees), sorted(vec![a1.clone(), x1.clone()]));
    assert_eq!(agent_sees["agent_id"], "x");
    assert_eq!(
        ids(&host.ok("runs.list", json!({})).await),
        sorted(vec![a1.clone(), b1.clone(), x1.clone()])
    );
    // The agent_id filter narrows what one may read; it never widens it.
    let host_y = host.ok("runs.list", json!({"agent_id": "y"})).await;
    assert_eq!(ids(&host_y), vec![b1.clone()]);
    assert_eq!(host_y["agent_id"], "y");
    let host_x = host.ok("runs.list", json!({"agent_id": "x"})).await;
    assert_eq!(ids(&host_x), sorted(vec![a1.clone(), x1.clone()]));
    let alice_y = alice.ok("runs.list", json!({"agent_id": "y"})).await;
    assert_eq!(alice_y["runs"], json!([]));
    let bob_x = bob.ok("runs.list", json!({"agent_id": "x"})).await;
    assert_eq!(bob_x["runs"], json!([]));
}

#[tokio::test]
async fn get_trace_returns_the_records_and_pages_with_a_cursor() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let started = client
        .ok(
            "runs.start",
            json!({"intent": "find it", "agent_id": "a", "outcome_description": "found"}),
        )
        .await;
    let run = started["run_id"].as_str().unwrap().to_owned();
    // In progress: started and the turns so far.
    record(&mut client, &run, turns("t", 3)).await;
    let live = full_trace(&mut client, &run).await;
    assert_eq!(live["records"].as_array().unwrap().len(), 4);
    assert_eq!(live["cursor"], 4);
    assert_eq!(live["run_id"], run.as_str());
    assert_eq!(live["agent_id"], "a");
    // Paging on from the cursor gives only what came since.
    record(&mut client, &run, turns("u", 2)).await;
    let since = client
        .ok("runs.get_trace", json!({"run_id": run, "cursor": 4}))
        .await;
    let records = since["records"].as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["index"], 3);
    assert_eq!(records[1]["prompt"], "u-1");
    assert_eq!(since["cursor"], 6);
    complete(&mut client, &run).await;

    let full = full_trace(&mut client, &run).await;
    let records = full["records"].as_array().unwrap().clone();
    assert_eq!(records.len(), 7);
    assert_eq!(full["cursor"], 7);
    let s = &records[0];
    assert_eq!(
        s.as_object().unwrap().keys().collect::<Vec<_>>().len(),
        6,
        "{s}"
    );
    assert_eq!(s["record"], "started");
    assert_eq!(s["run_id"], run.as_str());
    assert_eq!(s["agent_id"], "a");
    assert_eq!(s["intent"], "find it");
    assert_eq!(s["outcome_description"], "found");
    assert!(is_protocol_time(s["started_at"].as_str().unwrap()));
    assert_eq!(records[6]["record"], "ended");
    for cursor in 0..=7usize {
        let page = client
            .ok("runs.get_trace", json!({"run_id": run, "cursor": cursor}))
            .await;
        assert_eq!(
            page["records"].as_array().unwrap()[..],
            records[cursor..],
            "cursor {cursor}"
        );
        assert_eq!(page["cursor"], 7, "cursor {cursor}");
    }
    // A run started without an outcome description has null there.
    let other = start(&mut client, "a").await;
    let trace = full_trace(&mut client, &other).await;
    assert_eq!(trace["records"][0]["outcome_description"], Value::Null);
}

#[tokio::test]
async fn get_trace_of_an_unknown_or_unreadable_run_is_not_found() {
    let server = server(&[]).await;
    let mut owner = server.auth_client().await;
    let run = start(&mut owner, "a").await;
    record(&mut owner, &run, turns("t", 1)).await;
    let mut stranger = server.auth_client().await;
    let mut other_agent = server.auth_agent("b").await;
    for client in [&mut stranger, &mut other_agent] {
        let trace = client.ok("runs.get_trace", json!({"run_id": run})).await;
        assert_eq!(trace, json!({"run_id": run, "not_found": true}));
        let list = client.ok("runs.list", json!({})).await;
        assert_eq!(list["runs"], json!([]));
    }
    let unknown = owner
        .ok("runs.get_trace", json!({"run_id": "missing"}))
        .await;
    assert_eq!(unknown, json!({"run_id": "missing", "not_found": true}));
    // Readers: the owner, the run's agent, any host.
    let mut agent = server.auth_agent("a").await;
    let mut host = server.auth_host().await;
    let expected = full_trace(&mut owner, &run).await;
    assert_eq!(full_trace(&mut agent, &run).await, expected);
    assert_eq!(full_trace(&mut host, &run).await, expected);
    assert_eq!(turn_count(&expected), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_returns_100_by_default_and_at_most_1000() {
    let server = server(&[]).await;
    // 1010 runs, started from several connections at once.
    let mut starters = Vec::new();
    for c in 0..5 {
        let endpoint = server.endpoint().clone();
        starters.push(tokio::spawn(async move {
            let mut client = endpoint.auth_agent(&format!("agent-{c}")).await;
            let mut ids = Vec::new();
            for _ in 0..202 {
                ids.push(
                    client
                        .request("runs.start", json!({"intent": "i"}))
                        .await
                        .unwrap(),
                );
            }
            for id in &ids {
                client.response(id).await.unwrap().unwrap();
            }
            client // kept open: its runs stay in progress
        }));
    }
    let mut clients = Vec::new();
    for starter in starters {
        clients.push(starter.await.unwrap());
    }
    let mut host = server.auth_host().await;
    let default = host.ok("runs.list", json!({})).await;
    assert_eq!(default["runs"].as_array().unwrap().len(), 100);
    let most = host.ok("runs.list", json!({"limit": 5000})).await;
    let most = most["runs"].as_array().unwrap();
    assert_eq!(most.len(), 1000);
    let exact = host.ok("runs.list", json!({"limit": 1000})).await;
    assert!(
        exact["runs"].as_array().unwrap() == most,
        "limit 1000 = limit 5000"
    );
    // The rest is on the next page.
    let last = most.last().unwrap()["run_id"].clone();
    let rest = host
        .ok("runs.list", json!({"limit": 1000, "before": last}))
        .await;
    assert_eq!(rest["runs"].as_array().unwrap().len(), 10);
    drop(clients);
}
