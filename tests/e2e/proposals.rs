//! PROTOCOL.md §4.2 `proposal.submit`, with real tool clients: actions run one after
//! another, each as `tools.execute` requests to the submitting session carrying exactly
//! `{action_id, tool, parameters, params (= parameters), timeout_ms? (only when given),
//! attempt, request_id, session_id}` with JSON-RPC `id` = `request_id`; replies out of
//! order (two proposals of one session, several sessions) reach their own call, and a
//! session cannot answer another's; a JSON-RPC error or an `{"error": "…"}` result fails
//! the action; a silent tool times out after `timeout_ms` + 5 s (or `CAR_TOOL_TIMEOUT` /
//! `--tool-timeout`) with ``tool '<tool>' callback timed out (<N>s)`` and gets
//! `tools.cancel {request_id, action_id, reason}`, and its late reply is ignored; a tool
//! client that disconnects mid-call fails the call at once (and later calls without
//! sending them), and its run still ends after the grace; stray and malformed replies are
//! harmless; `unknown tool: <name>`; `failure_behavior` abort (remaining actions
//! `skipped`), continue and retry (`attempt` + 1, `max_retries` default 2, `attempts` in
//! the results); `final_state`, `outputs`, `errors`, `results` exactly; each finished
//! action is a turn of the session's current run; and every proposal and tool call is in
//! the log (`proposal.submitted` … `tool_call.dispatched` → `completed` | `failed` |
//! `timed_out` | `cancelled` with `elapsed_ms`/`reason` … `proposal.finished`).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use car_tests::{Client, ToolAnswer};
use serde_json::{Value, json};

use crate::runs::{full_trace, start};
use crate::{builder, server};

/// The log kinds of proposals and tool calls.
const TOOL_KINDS: [&str; 8] = [
    "proposal.submitted",
    "proposal.finished",
    "tool_call.dispatched",
    "tool_call.completed",
    "tool_call.failed",
    "tool_call.timed_out",
    "tool_call.cancelled",
    "tool_call.indeterminate",
];

/// The `action_id` of a `tools.execute` request.
pub(crate) fn action_of(call: &Value) -> String {
    call["params"]["action_id"].as_str().unwrap().to_owned()
}

/// The proposal and tool-call events of the log (a host session), in log order.
async fn tool_events(host: &mut Client) -> Vec<Value> {
    host.whole_log(Some(&TOOL_KINDS)).await
}

/// One proposal's story in the log: `proposal.submitted`, then each call as
/// `<kind> <action_id>#<attempt>`, then `proposal.finished <final_state>`.
fn story(events: &[Value], proposal_id: &str) -> Vec<String> {
    let mut calls: HashMap<String, String> = HashMap::new();
    let mut told = Vec::new();
    for event in events {
        let data = &event["data"];
        let kind = event["kind"].as_str().unwrap();
        match kind {
            "proposal.submitted" if data["proposal_id"] == proposal_id => {
                told.push(kind.to_owned())
            }
            "proposal.finished" if data["proposal_id"] == proposal_id => {
                told.push(format!("{kind} {}", data["final_state"].as_str().unwrap()))
            }
            "tool_call.dispatched" if data["proposal_id"] == proposal_id => {
                let call = format!(
                    "{}#{}",
                    data["action_id"].as_str().unwrap(),
                    data["attempt"]
                );
                told.push(format!("{kind} {call}"));
                calls.insert(data["request_id"].as_str().unwrap().to_owned(), call);
            }
            _ => {
                if let Some(call) = data["request_id"].as_str().and_then(|id| calls.get(id)) {
                    told.push(format!("{kind} {call}"));
                }
            }
        }
    }
    told
}

/// The event of `kind` about the call `request_id`.
fn call_event<'a>(events: &'a [Value], kind: &str, request_id: &Value) -> &'a Value {
    events
        .iter()
        .find(|e| e["kind"] == kind && e["data"]["request_id"] == *request_id)
        .unwrap_or_else(|| panic!("no {kind} for {request_id} in {events:?}"))
}

/// The turns of a run's trace.
async fn run_turns(client: &mut Client, run_id: &str) -> Vec<Value> {
    full_trace(client, run_id).await["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["record"] == "turn")
        .cloned()
        .collect()
}

fn status_list(result: &Value) -> Vec<(String, String, u64)> {
    result["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action_id"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
                r["attempts"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn actions_run_in_order_as_tools_execute_requests_with_the_params_of_4_2() {
    let server = server(&[]).await;
    let wall = Instant::now();
    let mut client = server.auth_client().await;
    let init = client
        .ok(
            "session.init",
            json!({"tools": [{"name": "echo"}, {"name": "upper"}]}),
        )
        .await;
    let session_id = init["session_id"].clone();
    let actions = json!([
        {"id": "a1", "tool": "echo", "parameters": {"text": "hi", "n": [1, 2.5, null]},
         "timeout_ms": 30000},
        {"id": "a2", "type": "tool_call", "tool": "upper", "parameters": {"text": "x"}},
        {"id": "a3", "tool": "echo"},
        {"id": "a4", "tool": "echo", "parameters": {"nothing": true}},
    ]);
    let outputs = [
        json!({"echo": "hi"}),
        json!("X"),
        json!([1, "two", {"three": 3}]),
        json!(null),
    ];
    let mut calls = Vec::new();
    let result = client
        .submit(json!({"id": "p-1", "actions": actions}), |call| {
            calls.push(call.clone());
            ToolAnswer::Result(outputs[calls.len() - 1].clone())
        })
        .await;

    let mut request_ids = BTreeSet::new();
    for (i, call) in calls.iter().enumerate() {
        let action = &actions[i];
        let mut keys: Vec<&str> = call
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["id", "jsonrpc", "method", "params"], "{call}");
        assert_eq!(call["jsonrpc"], "2.0");
        assert_eq!(call["method"], "tools.execute");
        let request_id = call["id"].as_str().expect("a string request id");
        assert!(request_ids.insert(request_id.to_owned()), "{call}");
        let parameters = action
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let mut expected = json!({
            "action_id": action["id"],
            "tool": action["tool"],
            "parameters": parameters,
            "params": parameters,
            "attempt": 1,
            "request_id": request_id,
            "session_id": session_id,
        });
        if let Some(ms) = action.get("timeout_ms") {
            expected["timeout_ms"] = ms.clone();
        }
        assert_eq!(call["params"], expected);
    }
    assert_eq!(calls.len(), 4);

    let results: Vec<Value> = (0..4)
        .map(|i| {
            json!({"action_id": actions[i]["id"], "status": "succeeded", "output": outputs[i],
                   "attempts": 1})
        })
        .collect();
    assert_eq!(
        result,
        json!({
            "proposal_id": "p-1",
            "final_state": "completed",
            "outputs": {"a1": outputs[0], "a2": outputs[1], "a3": outputs[2], "a4": null},
            "errors": {},
            "results": results,
        })
    );

    // One after another: each call was dispatched only once the one before had completed.
    let mut host = server.auth_host().await;
    let events = tool_events(&mut host).await;
    assert_eq!(
        story(&events, "p-1"),
        [
            "proposal.submitted",
            "tool_call.dispatched a1#1",
            "tool_call.completed a1#1",
            "tool_call.dispatched a2#1",
            "tool_call.completed a2#1",
            "tool_call.dispatched a3#1",
            "tool_call.completed a3#1",
            "tool_call.dispatched a4#1",
            "tool_call.completed a4#1",
            "proposal.finished completed",
        ]
    );
    let submitted = events
        .iter()
        .find(|e| e["kind"] == "proposal.submitted")
        .unwrap();
    assert_eq!(submitted["data"]["client_id"], session_id);
    assert_eq!(
        submitted["data"]["action_ids"],
        json!(["a1", "a2", "a3", "a4"])
    );
    for (i, call) in calls.iter().enumerate() {
        let dispatched = call_event(&events, "tool_call.dispatched", &call["id"]);
        let data = &dispatched["data"];
        assert_eq!(data["client_id"], session_id, "{dispatched}");
        assert_eq!(data["proposal_id"], "p-1");
        assert_eq!(data["action_id"], actions[i]["id"]);
        assert_eq!(data["tool"], actions[i]["tool"]);
        assert_eq!(data["parameters"], call["params"]["parameters"]);
        assert_eq!(data["attempt"], 1);
        assert_eq!(data["run_id"], Value::Null, "no current run");
        let completed = call_event(&events, "tool_call.completed", &call["id"]);
        assert_eq!(completed["data"]["output"], outputs[i]);
        let elapsed = completed["data"]["elapsed_ms"]
            .as_u64()
            .expect("elapsed_ms");
        assert!(elapsed <= wall.elapsed().as_millis() as u64, "{completed}");
    }
    // The first action's wait is its timeout_ms plus the 5 s the protocol adds.
    let first = call_event(&events, "tool_call.dispatched", &calls[0]["id"]);
    assert_eq!(first["data"]["timeout_ms"], 35_000, "{first}");
}

#[tokio::test]
async fn proposal_ids_are_given_when_absent_and_malformed_proposals_are_minus_32602() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let mut ids = BTreeSet::new();
    for _ in 0..2 {
        let result = client
            .submit(json!({"actions": [{"id": "a", "tool": "t"}]}), |_| {
                ToolAnswer::Result(json!(1))
            })
            .await;
        let id = result["proposal_id"].as_str().unwrap();
        assert!(!id.is_empty(), "{result}");
        assert!(ids.insert(id.to_owned()), "{result}");
        assert_eq!(result["final_state"], "completed");
    }
    let bad = [
        (json!({}), "proposal"),
        (json!({"proposal": {}}), "actions"),
        (json!({"proposal": {"actions": [{"id": "a"}]}}), "tool"),
        (
            json!({"proposal": {"actions": [{"id": "a", "tool": "t", "type": "shell"}]}}),
            "type",
        ),
        (
            json!({"proposal": {"actions": [{"id": "a", "tool": "t"}, {"id": "a", "tool": "u"}]}}),
            "id",
        ),
        (
            json!({"proposal": {"actions": [{"id": "a", "tool": "t", "failure_behavior": "panic"}]}}),
            "failure_behavior",
        ),
    ];
    for (params, field) in bad {
        let err = client.err("proposal.submit", params.clone()).await;
        assert_eq!(err.code, -32602, "{params}: {err}");
        assert!(err.message.contains(field), "{params}: {err}");
    }
    // Nothing was asked of the client for any of them.
    assert!(client.take_notifications("tools.execute").is_empty());
}

#[tokio::test]
async fn replies_out_of_order_reach_their_own_call_and_never_another_sessions() {
    let server = server(&[]).await;
    let mut a = server.auth_client().await;
    let mut b = server.auth_client().await;
    let proposal = |id: &str| {
        json!({"proposal": {"id": id, "actions": [
            {"id": "only", "tool": "work", "parameters": {"for": id}},
        ]}})
    };
    let a1 = a.request("proposal.submit", proposal("a-1")).await.unwrap();
    let a2 = a.request("proposal.submit", proposal("a-2")).await.unwrap();
    let b1 = b.request("proposal.submit", proposal("b-1")).await.unwrap();
    let mut a_calls = HashMap::new();
    for _ in 0..2 {
        let call = a.next_tool_call().await;
        a_calls.insert(
            call["params"]["parameters"]["for"]
                .as_str()
                .unwrap()
                .to_owned(),
            call,
        );
    }
    let b_call = b.next_tool_call().await;
    assert_eq!(b_call["params"]["parameters"]["for"], "b-1");
    let (c1, c2) = (&a_calls["a-1"], &a_calls["a-2"]);

    // B answers A's calls (and A one of B's): each session answers only its own calls.
    b.reply(&c1["id"], json!("forged by b")).await;
    b.reply(&c2["id"], json!("forged by b")).await;
    a.reply(&b_call["id"], json!("forged by a")).await;

    // The second call is answered first, and its proposal completes while the first
    // call is still in flight.
    a.reply(&c2["id"], json!("for a-2")).await;
    let done = a.response(&a2).await.unwrap().unwrap();
    assert_eq!(done["outputs"], json!({"only": "for a-2"}), "{done}");
    b.reply(&b_call["id"], json!("for b-1")).await;
    let done = b.response(&b1).await.unwrap().unwrap();
    assert_eq!(done["outputs"], json!({"only": "for b-1"}), "{done}");
    a.reply(&c1["id"], json!("for a-1")).await;
    let done = a.response(&a1).await.unwrap().unwrap();
    assert_eq!(done["outputs"], json!({"only": "for a-1"}), "{done}");
    assert_eq!(done["final_state"], "completed");

    // The forged replies were dropped without an answer or any other effect.
    a.ok("runs.list", json!({})).await;
    b.ok("runs.list", json!({})).await;
    assert_eq!(a.unclaimed_replies(), Vec::<Value>::new());
    assert_eq!(b.unclaimed_replies(), Vec::<Value>::new());
    let mut host = server.auth_host().await;
    let completed = host.whole_log(Some(&["tool_call.completed"])).await;
    let mut outputs: Vec<&str> = completed
        .iter()
        .map(|e| e["data"]["output"].as_str().unwrap())
        .collect();
    outputs.sort_unstable();
    assert_eq!(outputs, ["for a-1", "for a-2", "for b-1"]);
}

#[tokio::test]
async fn error_replies_fail_the_action() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let actions = json!([
        {"id": "rpc-error", "tool": "t", "failure_behavior": "continue"},
        {"id": "error-result", "tool": "t", "failure_behavior": "continue"},
        // Only an `error` *string* is a failure: any other result is the output.
        {"id": "error-object", "tool": "t", "failure_behavior": "continue"},
        {"id": "fine", "tool": "t"},
        {"id": "last-straw", "tool": "t"},
        {"id": "never", "tool": "t"},
    ]);
    let answers: HashMap<&str, ToolAnswer> = HashMap::from([
        (
            "rpc-error",
            ToolAnswer::Error(json!({"code": -32000, "message": "disk full"})),
        ),
        (
            "error-result",
            ToolAnswer::Result(json!({"error": "no such file"})),
        ),
        (
            "error-object",
            ToolAnswer::Result(json!({"error": {"code": 7}, "data": 1})),
        ),
        ("fine", ToolAnswer::Result(json!({"ok": true}))),
        (
            "last-straw",
            ToolAnswer::Error(json!({"code": 1, "message": "gave up"})),
        ),
    ]);
    let mut called = Vec::new();
    let result = client
        .submit(json!({"id": "errors", "actions": actions}), |call| {
            let action = action_of(call);
            called.push(action.clone());
            answers[action.as_str()].clone()
        })
        .await;
    assert_eq!(
        called,
        [
            "rpc-error",
            "error-result",
            "error-object",
            "fine",
            "last-straw"
        ]
    );
    assert_eq!(
        result,
        json!({
            "proposal_id": "errors",
            "final_state": "failed",
            "outputs": {"error-object": {"error": {"code": 7}, "data": 1}, "fine": {"ok": true}},
            "errors": {"rpc-error": "disk full", "error-result": "no such file",
                       "last-straw": "gave up"},
            "results": [
                {"action_id": "rpc-error", "status": "failed", "error": "disk full", "attempts": 1},
                {"action_id": "error-result", "status": "failed", "error": "no such file",
                 "attempts": 1},
                {"action_id": "error-object", "status": "succeeded",
                 "output": {"error": {"code": 7}, "data": 1}, "attempts": 1},
                {"action_id": "fine", "status": "succeeded", "output": {"ok": true}, "attempts": 1},
                {"action_id": "last-straw", "status": "failed", "error": "gave up", "attempts": 1},
                {"action_id": "never", "status": "skipped", "attempts": 0},
            ],
        })
    );
    let mut host = server.auth_host().await;
    let events = tool_events(&mut host).await;
    assert_eq!(
        story(&events, "errors"),
        [
            "proposal.submitted",
            "tool_call.dispatched rpc-error#1",
            "tool_call.failed rpc-error#1",
            "tool_call.dispatched error-result#1",
            "tool_call.failed error-result#1",
            "tool_call.dispatched error-object#1",
            "tool_call.completed error-object#1",
            "tool_call.dispatched fine#1",
            "tool_call.completed fine#1",
            "tool_call.dispatched last-straw#1",
            "tool_call.failed last-straw#1",
            "proposal.finished failed",
        ]
    );
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "tool_call.failed")
        .collect();
    let errors: Vec<&str> = failed
        .iter()
        .map(|e| e["data"]["error"].as_str().unwrap())
        .collect();
    assert_eq!(errors, ["disk full", "no such file", "gave up"]);
    for event in failed {
        assert!(event["data"]["elapsed_ms"].is_u64(), "{event}");
    }
}

#[tokio::test]
async fn failure_behavior_abort_continue_and_retry() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let fail = || ToolAnswer::Result(json!({"error": "nope"}));

    // abort, the default and explicit: the remaining actions are skipped, never called.
    for behavior in [None, Some("abort")] {
        let mut first = json!({"id": "first", "tool": "t"});
        if let Some(behavior) = behavior {
            first["failure_behavior"] = json!(behavior);
        }
        let actions = json!([first, {"id": "second", "tool": "t"}, {"id": "third", "tool": "t"}]);
        let mut called = Vec::new();
        let result = client
            .submit(json!({"actions": actions}), |call| {
                called.push(action_of(call));
                fail()
            })
            .await;
        assert_eq!(called, ["first"], "{behavior:?}");
        assert_eq!(result["final_state"], "failed");
        assert_eq!(
            result["results"],
            json!([
                {"action_id": "first", "status": "failed", "error": "nope", "attempts": 1},
                {"action_id": "second", "status": "skipped", "attempts": 0},
                {"action_id": "third", "status": "skipped", "attempts": 0},
            ]),
            "{behavior:?}"
        );
        assert_eq!(result["outputs"], json!({}));
        assert_eq!(result["errors"], json!({"first": "nope"}));
    }

    // continue: the next actions run.
    let actions = json!([
        {"id": "first", "tool": "t", "failure_behavior": "continue"},
        {"id": "second", "tool": "t"},
    ]);
    let result = client
        .submit(json!({"actions": actions}), |call| {
            if action_of(call) == "first" {
                fail()
            } else {
                ToolAnswer::Result(json!("two"))
            }
        })
        .await;
    assert_eq!(
        status_list(&result),
        [
            ("first".into(), "failed".into(), 1),
            ("second".into(), "succeeded".into(), 1)
        ]
    );
    assert_eq!(
        result["final_state"], "failed",
        "any failure fails the proposal"
    );

    // retry: attempt 1, 2, 3 (max_retries defaults to 2), each a new request.
    let mut attempts = Vec::new();
    let result = client
        .submit(
            json!({"id": "retry-default", "actions": [
                {"id": "flaky", "tool": "t", "parameters": {"p": 1}, "failure_behavior": "retry"},
            ]}),
            |call| {
                attempts.push(call.clone());
                fail()
            },
        )
        .await;
    let numbers: Vec<&Value> = attempts.iter().map(|c| &c["params"]["attempt"]).collect();
    assert_eq!(numbers, [&json!(1), &json!(2), &json!(3)]);
    let ids: BTreeSet<&str> = attempts.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "every attempt is a new request");
    for call in &attempts {
        assert_eq!(call["params"]["action_id"], "flaky");
        assert_eq!(call["params"]["parameters"], json!({"p": 1}));
        assert_eq!(call["id"], call["params"]["request_id"]);
    }
    assert_eq!(
        result["results"],
        json!([{"action_id": "flaky", "status": "failed", "error": "nope", "attempts": 3}])
    );
    assert_eq!(result["final_state"], "failed");

    // retry until it works; max_retries bounds the extra attempts.
    let mut seen = Vec::new();
    let result = client
        .submit(
            json!({"id": "retry-bounded", "actions": [
                {"id": "second-time", "tool": "t", "failure_behavior": "retry", "max_retries": 1},
                {"id": "once", "tool": "t", "failure_behavior": "retry", "max_retries": 0},
                {"id": "fifth-time", "tool": "t", "failure_behavior": "retry", "max_retries": 5},
            ]}),
            |call| {
                let key = (action_of(call), call["params"]["attempt"].as_u64().unwrap());
                seen.push(key.clone());
                match key {
                    (a, 2) if a == "second-time" => ToolAnswer::Result(json!("2nd")),
                    (a, _) if a == "once" => ToolAnswer::Result(json!("1st")),
                    (a, 5) if a == "fifth-time" => ToolAnswer::Result(json!("5th")),
                    _ => ToolAnswer::Error(json!({"code": -1, "message": "flaky"})),
                }
            },
        )
        .await;
    let seen: Vec<(&str, u64)> = seen.iter().map(|(a, n)| (a.as_str(), *n)).collect();
    assert_eq!(
        seen,
        [
            ("second-time", 1),
            ("second-time", 2),
            ("once", 1),
            ("fifth-time", 1),
            ("fifth-time", 2),
            ("fifth-time", 3),
            ("fifth-time", 4),
            ("fifth-time", 5),
        ]
    );
    assert_eq!(
        result,
        json!({
            "proposal_id": "retry-bounded",
            "final_state": "completed",
            "outputs": {"second-time": "2nd", "once": "1st", "fifth-time": "5th"},
            "errors": {},
            "results": [
                {"action_id": "second-time", "status": "succeeded", "output": "2nd", "attempts": 2},
                {"action_id": "once", "status": "succeeded", "output": "1st", "attempts": 1},
                {"action_id": "fifth-time", "status": "succeeded", "output": "5th", "attempts": 5},
            ],
        })
    );
    let mut host = server.auth_host().await;
    let events = tool_events(&mut host).await;
    assert_eq!(
        story(&events, "retry-default"),
        [
            "proposal.submitted",
            "tool_call.dispatched flaky#1",
            "tool_call.failed flaky#1",
            "tool_call.dispatched flaky#2",
            "tool_call.failed flaky#2",
            "tool_call.dispatched flaky#3",
            "tool_call.failed flaky#3",
            "proposal.finished failed",
        ]
    );
    // max_retries 0: a single attempt even when it fails.
    let mut calls = 0;
    let result = client
        .submit(
            json!({"actions": [{"id": "x", "tool": "t", "failure_behavior": "retry",
                                "max_retries": 0}]}),
            |_| {
                calls += 1;
                fail()
            },
        )
        .await;
    assert_eq!(calls, 1);
    assert_eq!(result["results"][0]["attempts"], 1);
}

#[tokio::test]
async fn a_tool_the_session_did_not_register_is_an_unknown_tool() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    client
        .ok("tools.register", json!({"tools": [{"name": "known"}]}))
        .await;
    let mut called = Vec::new();
    let result = client
        .submit(
            json!({"actions": [
                {"id": "ghost", "tool": "ghost", "failure_behavior": "continue"},
                {"id": "known", "tool": "known"},
                {"id": "ghost-again", "tool": "Known"},
                {"id": "after", "tool": "known"},
            ]}),
            |call| {
                called.push(action_of(call));
                ToolAnswer::Result(json!("ok"))
            },
        )
        .await;
    assert_eq!(called, ["known"]);
    assert_eq!(
        result["results"],
        json!([
            {"action_id": "ghost", "status": "failed", "error": "unknown tool: ghost", "attempts": 0},
            {"action_id": "known", "status": "succeeded", "output": "ok", "attempts": 1},
            {"action_id": "ghost-again", "status": "failed", "error": "unknown tool: Known",
             "attempts": 0},
            {"action_id": "after", "status": "skipped", "attempts": 0},
        ])
    );
    assert_eq!(
        result["errors"],
        json!({"ghost": "unknown tool: ghost", "ghost-again": "unknown tool: Known"})
    );
    // A session that registered no tool may call any.
    let mut open = server.auth_client().await;
    let result = open
        .submit(
            json!({"actions": [{"id": "any", "tool": "whatever"}]}),
            |call| ToolAnswer::Result(call["params"]["tool"].clone()),
        )
        .await;
    assert_eq!(result["outputs"], json!({"any": "whatever"}));
}

#[tokio::test]
async fn finished_actions_are_turns_of_the_sessions_current_run() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    client
        .ok(
            "session.init",
            json!({"tools": [{"name": "good"}, {"name": "bad"}, {"name": "banned"}],
                   "policies": [{"name": "ban", "rule": "deny_tool", "target": "banned"}]}),
        )
        .await;
    // Without a current run, nothing is recorded anywhere.
    client
        .submit(
            json!({"actions": [{"id": "before", "tool": "good"}]}),
            |_| ToolAnswer::Result(json!("unrecorded")),
        )
        .await;
    let first = start(&mut client, "worker").await;
    let answer = |call: &Value| match call["params"]["tool"].as_str().unwrap() {
        "good" => ToolAnswer::Result(json!({"value": call["params"]["parameters"]["v"]})),
        _ => ToolAnswer::Error(json!({"code": -32000, "message": "it broke"})),
    };
    let result = client
        .submit(
            json!({"id": "recorded", "actions": [
                {"id": "g", "tool": "good", "parameters": {"v": 1}, "failure_behavior": "continue"},
                {"id": "b", "tool": "bad", "parameters": {"v": 2}, "failure_behavior": "continue"},
                {"id": "x", "tool": "banned", "parameters": {"v": 3}, "failure_behavior": "continue"},
                {"id": "u", "tool": "unknown", "failure_behavior": "continue"},
                {"id": "b2", "tool": "bad"},
                {"id": "skipped", "tool": "good", "parameters": {"v": 9}},
            ]}),
            answer,
        )
        .await;
    assert_eq!(result["final_state"], "failed");
    let turns = run_turns(&mut client, &first).await;
    let expected = [
        ("good", json!({"v": 1}), json!({"value": 1}), false),
        ("bad", json!({"v": 2}), json!("it broke"), false),
        (
            "banned",
            json!({"v": 3}),
            result["errors"]["x"].clone(),
            true,
        ),
        ("unknown", json!({}), json!("unknown tool: unknown"), false),
        ("bad", json!({}), json!("it broke"), false),
    ];
    assert_eq!(turns.len(), expected.len(), "{turns:?}");
    for (i, (turn, (tool, parameters, output, rejected))) in turns.iter().zip(expected).enumerate()
    {
        assert_eq!(turn["index"], i, "{turn}");
        assert_eq!(turn["tool"], tool, "{turn}");
        assert_eq!(turn["parameters"], parameters, "{turn}");
        assert_eq!(turn["output"], output, "{turn}");
        assert_eq!(turn["policy_rejected"], rejected, "{turn}");
    }
    let mut host = server.auth_host().await;
    let dispatched = host.whole_log(Some(&["tool_call.dispatched"])).await;
    let g = dispatched
        .iter()
        .find(|e| e["data"]["action_id"] == "g")
        .unwrap();
    assert_eq!(g["data"]["run_id"], first.as_str(), "{g}");

    // The run started last is the current one.
    let second = start(&mut client, "worker").await;
    client
        .submit(
            json!({"actions": [{"id": "g", "tool": "good", "parameters": {"v": 5}}]}),
            answer,
        )
        .await;
    assert_eq!(run_turns(&mut client, &first).await.len(), 5);
    let turns = run_turns(&mut client, &second).await;
    assert_eq!(turns.len(), 1, "{turns:?}");
    assert_eq!(turns[0]["output"], json!({"value": 5}));
    // Nothing recorded the proposal that ran before any run.
    let recorded = host.whole_log(Some(&["run.turns_recorded"])).await;
    assert_eq!(recorded.len(), 6, "{recorded:?}");
    assert!(
        recorded
            .iter()
            .all(|e| !e["data"].to_string().contains("unrecorded"))
    );
}

#[tokio::test]
async fn a_silent_tool_times_out_gets_tools_cancel_and_its_late_reply_is_ignored() {
    let server = server(&["--tool-timeout", "1"]).await;
    let mut client = server.auth_client().await;
    let run = start(&mut client, "patient").await;
    let submit = client
        .request(
            "proposal.submit",
            json!({"proposal": {"id": "slow", "actions": [
                {"id": "wait", "tool": "sleepy", "parameters": {"for": "ever"}},
                {"id": "after", "tool": "sleepy"},
            ]}}),
        )
        .await
        .unwrap();
    let call = client.next_tool_call().await;
    let received = Instant::now();
    assert!(call["params"].get("timeout_ms").is_none(), "{call}");
    let cancel = client.next_notification("tools.cancel").await.unwrap();
    let waited = received.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "cancelled after {waited:?}"
    );
    assert_eq!(cancel["request_id"], call["id"], "{cancel}");
    assert_eq!(cancel["action_id"], "wait", "{cancel}");
    // Regression (issue 11): the reason was "timeout"; CAR sends the action's error text,
    // which clients show.
    assert_eq!(
        cancel["reason"], "tool 'sleepy' callback timed out (1s)",
        "{cancel}"
    );
    assert_eq!(cancel.as_object().unwrap().len(), 3, "{cancel}");
    // The late reply.
    client.reply(&call["id"], json!("too late")).await;
    let result = client.response(&submit).await.unwrap().unwrap();
    let message = "tool 'sleepy' callback timed out (1s)";
    assert_eq!(
        result,
        json!({
            "proposal_id": "slow",
            "final_state": "failed",
            "outputs": {},
            "errors": {"wait": message},
            "results": [
                {"action_id": "wait", "status": "failed", "error": message, "attempts": 1},
                {"action_id": "after", "status": "skipped", "attempts": 0},
            ],
        })
    );
    // Harmless: no answer to it, and the session goes on.
    let next = client
        .submit(
            json!({"actions": [{"id": "quick", "tool": "sleepy"}]}),
            |_| ToolAnswer::Result(json!("fast")),
        )
        .await;
    assert_eq!(next["outputs"], json!({"quick": "fast"}));
    assert_eq!(client.unclaimed_replies(), Vec::<Value>::new());

    let mut host = server.auth_host().await;
    let events = tool_events(&mut host).await;
    assert_eq!(
        story(&events, "slow"),
        [
            "proposal.submitted",
            "tool_call.dispatched wait#1",
            "tool_call.timed_out wait#1",
            "proposal.finished failed",
        ]
    );
    let timed_out = call_event(&events, "tool_call.timed_out", &call["id"]);
    assert!(
        timed_out["data"]["elapsed_ms"].as_u64().unwrap() >= 1000,
        "{timed_out}"
    );
    let dispatched = call_event(&events, "tool_call.dispatched", &call["id"]);
    assert_eq!(dispatched["data"]["timeout_ms"], 1000, "{dispatched}");
    let turns = run_turns(&mut client, &run).await;
    assert_eq!(turns[0]["output"], message);
    assert_eq!(turns[1]["output"], "fast");
}

/// Submits one action to `tool` (with `timeout_ms` when given) and never answers it;
/// returns the time from its `tools.execute` to its `tools.cancel`, and the result.
async fn time_out(mut client: Client, tool: &str, timeout_ms: Option<u64>) -> (Duration, Value) {
    let mut action = json!({"id": "a", "tool": tool});
    if let Some(ms) = timeout_ms {
        action["timeout_ms"] = json!(ms);
    }
    let submit = client
        .request(
            "proposal.submit",
            json!({"proposal": {"actions": [action]}}),
        )
        .await
        .unwrap();
    let call = client.next_tool_call().await;
    let received = Instant::now();
    assert_eq!(
        call["params"].get("timeout_ms"),
        timeout_ms.map(Value::from).as_ref()
    );
    let cancel = client.next_notification("tools.cancel").await.unwrap();
    let waited = received.elapsed();
    assert_eq!(cancel["request_id"], call["id"]);
    assert_eq!(cancel["action_id"], "a");
    (waited, client.response(&submit).await.unwrap().unwrap())
}

#[tokio::test]
async fn timeout_ms_waits_that_long_plus_5_s_and_car_tool_timeout_is_the_default() {
    let server = builder()
        .env("CAR_TOOL_TIMEOUT", "1")
        .spawn()
        .await
        .unwrap_or_else(|err| panic!("{err:#}"));
    let (with_ms, with_env) = tokio::join!(
        time_out(server.auth_client().await, "slow", Some(100)),
        time_out(server.auth_client().await, "quick", None),
    );
    let (waited, result) = with_ms;
    assert!(waited >= Duration::from_millis(5000), "{waited:?}");
    assert_eq!(
        result["errors"],
        json!({"a": "tool 'slow' callback timed out (5.1s)"})
    );
    let (waited, result) = with_env;
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(
        result["errors"],
        json!({"a": "tool 'quick' callback timed out (1s)"})
    );
}

#[tokio::test]
async fn a_tool_client_that_disconnects_mid_call_fails_the_call_at_once() {
    // The default callback timeout (300 s): only the disconnect can end the call in time.
    let server = server(&[]).await;
    let mut host = server.auth_host().await;
    host.ok("log.subscribe", json!({})).await;
    let mut client = server.auth_client().await;
    let run = start(&mut client, "leaver").await;
    host.ok("runs.subscribe", json!({"run_id": run})).await;
    client
        .request(
            "proposal.submit",
            json!({"proposal": {"id": "left", "actions": [
                {"id": "first", "tool": "t", "failure_behavior": "continue"},
                {"id": "second", "tool": "t", "timeout_ms": 600000},
            ]}}),
        )
        .await
        .unwrap();
    let call = client.next_tool_call().await;
    let left = Instant::now();
    drop(client); // no close handshake: the connection just goes

    let mut seen = Vec::new();
    loop {
        let event = host.next_notification("log.event").await.unwrap();
        let done = event["kind"] == "proposal.finished";
        seen.push(event);
        if done {
            break;
        }
    }
    let promptly = left.elapsed();
    assert!(promptly < Duration::from_secs(10), "{promptly:?}");
    let cancelled = call_event(&seen, "tool_call.cancelled", &call["id"]);
    assert_eq!(cancelled["data"]["reason"], "disconnected", "{cancelled}");
    let finished = seen.last().unwrap();
    assert_eq!(finished["data"]["final_state"], "failed", "{finished}");
    // The second action was never sent to the departed client.
    let dispatched: Vec<&Value> = seen
        .iter()
        .filter(|e| e["kind"] == "tool_call.dispatched")
        .collect();
    assert_eq!(dispatched.len(), 1, "{dispatched:?}");
    assert_eq!(dispatched[0]["data"]["action_id"], "first");

    // Both actions are turns of the run, which then ends after the grace: nothing leaks.
    let ended = host
        .next_notification_where("runs.trace.event", |e| {
            e["run_id"] == run.as_str() && e["record"]["record"] == "ended"
        })
        .await
        .unwrap();
    assert_eq!(
        ended["record"]["termination"],
        json!({"kind": "incomplete", "reason": "disconnected"})
    );
    assert_eq!(ended["cursor"], 2, "{ended}");
    let turns = run_turns(&mut host, &run).await;
    assert_eq!(turns.len(), 2);
    for turn in &turns {
        let output = turn["output"].as_str().unwrap();
        assert!(output.contains("disconnected"), "{turn}");
    }
    let events = tool_events(&mut host).await;
    assert_eq!(
        story(&events, "left"),
        [
            "proposal.submitted",
            "tool_call.dispatched first#1",
            "tool_call.cancelled first#1",
            "proposal.finished failed",
        ]
    );
    // The daemon is fine.
    let mut other = server.auth_client().await;
    let result = other
        .submit(json!({"actions": [{"id": "a", "tool": "t"}]}), |_| {
            ToolAnswer::Result(json!(1))
        })
        .await;
    assert_eq!(result["final_state"], "completed");
}

#[tokio::test]
async fn stray_and_malformed_replies_are_harmless() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let submit = client
        .request(
            "proposal.submit",
            json!({"proposal": {"actions": [{"id": "real", "tool": "t"}]}}),
        )
        .await
        .unwrap();
    let call = client.next_tool_call().await;
    let id = call["id"].clone();
    let strays = [
        // Replies to ids that are no call in flight: ignored, unanswered.
        json!({"jsonrpc": "2.0", "id": "no-such-call", "result": "stray"}).to_string(),
        json!({"jsonrpc": "2.0", "id": 424242, "error": {"code": 1, "message": "stray"}})
            .to_string(),
        // Malformed replies: refused as invalid, the call still waits for a real one.
        json!({"id": id, "result": "no jsonrpc"}).to_string(),
        json!({"jsonrpc": "2.0", "id": id, "result": "both", "error": {"code": 1}}).to_string(),
        json!({"jsonrpc": "2.0", "id": null, "result": "null id"}).to_string(),
        json!({"jsonrpc": "2.0", "id": {"an": "object"}, "result": "object id"}).to_string(),
        format!(r#"{{"jsonrpc": "2.0", "id": {id}, "result": "#),
    ];
    for stray in &strays {
        client.send_text(stray.as_str()).await.unwrap();
    }
    client.reply(&id, json!({"the": "answer"})).await;
    let result = client.response(&submit).await.unwrap().unwrap();
    assert_eq!(result["final_state"], "completed", "{result}");
    assert_eq!(result["outputs"], json!({"real": {"the": "answer"}}));
    // The server is healthy, and answered exactly the malformed frames, each once.
    client.ok("runs.list", json!({})).await;
    let errors: Vec<(Value, i64)> = client
        .unclaimed_replies()
        .iter()
        .map(|r| (r["id"].clone(), r["error"]["code"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        errors,
        [
            (id.clone(), -32600),
            (id.clone(), -32600),
            (Value::Null, -32600),
            (Value::Null, -32600),
            (Value::Null, -32700),
        ]
    );
    let mut host = server.auth_host().await;
    let completed = host.whole_log(Some(&["tool_call.completed"])).await;
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert_eq!(completed[0]["data"]["output"], json!({"the": "answer"}));
}

#[tokio::test]
async fn calls_in_flight_when_the_daemon_stops_or_crashes_end_in_the_log() {
    let mut server = server(&[]).await;
    for crash in [false, true] {
        let mut client = server.auth_client().await;
        let proposal_id = format!("in-flight-{crash}");
        client
            .request(
                "proposal.submit",
                json!({"proposal": {"id": proposal_id, "actions": [{"id": "a", "tool": "t"}]}}),
            )
            .await
            .unwrap();
        let call = client.next_tool_call().await;
        if crash {
            server.kill().await.unwrap();
        } else {
            server.stop().await.unwrap();
        }
        server.restart().await.unwrap();
        let mut host = server.auth_host().await;
        let events = tool_events(&mut host).await;
        // Exactly one end for the call and for the proposal, whoever recorded it.
        let told = story(&events, &proposal_id);
        assert_eq!(told.len(), 4, "{told:?}");
        assert_eq!(
            told[..2],
            ["proposal.submitted", "tool_call.dispatched a#1"]
        );
        assert_eq!(told[3], "proposal.finished failed");
        if crash {
            // §14.5: after a crash the call's outcome is unknown, not "cancelled".
            assert_eq!(told[2], "tool_call.indeterminate a#1", "{told:?}");
            let unknown = call_event(&events, "tool_call.indeterminate", &call["id"]);
            assert_eq!(
                unknown["data"]["error"],
                "outcome unknown: the daemon stopped during dispatch"
            );
        } else {
            assert_eq!(told[2], "tool_call.cancelled a#1", "{told:?}");
            let cancelled = call_event(&events, "tool_call.cancelled", &call["id"]);
            let reason = cancelled["data"]["reason"].as_str().unwrap();
            assert!(
                ["disconnected", "daemon_shutdown"].contains(&reason),
                "{cancelled}"
            );
        }
    }
}

#[tokio::test]
async fn regression_max_retries_at_u32_max_overflows() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    // A valid action (max_retries is any u32) whose tool succeeds at once.
    let result = client
        .call_serving_tools(
            "proposal.submit",
            json!({"proposal": {"id": "many-retries", "actions": [
                {"id": "a", "tool": "t", "failure_behavior": "retry", "max_retries": u32::MAX},
            ]}}),
            |_| ToolAnswer::Result(json!("ok")),
        )
        .await;
    let result = result.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        result["results"],
        json!([{"action_id": "a", "status": "succeeded", "output": "ok", "attempts": 1}])
    );
    let mut host = server.auth_host().await;
    let events = tool_events(&mut host).await;
    assert_eq!(
        story(&events, "many-retries"),
        [
            "proposal.submitted",
            "tool_call.dispatched a#1",
            "tool_call.completed a#1",
            "proposal.finished completed",
        ]
    );
}

/// PROTOCOL.md §14.5: an error reply with `data.terminal: true` fails its action without
/// retry, skips the rest of the proposal (whatever its failure behaviour) and halts the
/// session: its later proposals come back all `rejected` without a single tool call. New
/// sessions start clear; `session.clear_halt` is a host's, for its own session.
#[tokio::test]
async fn a_terminal_tool_failure_halts_the_session() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let mut calls = Vec::new();
    let result = client
        .submit(
            json!({"id": "p1", "actions": [
                {"id": "boom", "tool": "t", "failure_behavior": "retry", "max_retries": 5},
                {"id": "after", "tool": "t", "failure_behavior": "continue"},
            ]}),
            |call| {
                calls.push(action_of(call));
                ToolAnswer::Error(
                    json!({"code": -32000, "message": "credentials revoked", "data": {"terminal": true}}),
                )
            },
        )
        .await;
    assert_eq!(calls, ["boom"], "no retry, nothing after it");
    assert_eq!(result["final_state"], "failed");
    assert_eq!(
        result["results"],
        json!([
            {"action_id": "boom", "status": "failed", "error": "credentials revoked", "attempts": 1},
            {"action_id": "after", "status": "skipped", "attempts": 0},
        ])
    );
    let later = client
        .submit(
            json!({"id": "p2", "actions": [{"id": "x", "tool": "t"}, {"id": "y", "tool": "t", "failure_behavior": "continue"}]}),
            |call| panic!("a halted session's proposal called a tool: {call}"),
        )
        .await;
    assert_eq!(later["final_state"], "failed");
    assert_eq!(
        later["results"][0],
        json!({"action_id": "x", "status": "rejected", "error": "session halted by a terminal tool failure", "attempts": 0})
    );
    assert_eq!(later["results"][1]["status"], "skipped");
    // Only a host may clear (its own halt).
    let refused = client.err("session.clear_halt", json!({})).await;
    assert_eq!(refused.code, -32603);
    assert_eq!(
        refused.message,
        "permission denied: session.clear_halt requires the host role"
    );
    let mut host = server.auth_host().await;
    assert_eq!(
        host.ok("session.clear_halt", json!({})).await,
        json!({"cleared": false, "halted": false})
    );
    let halts = host.whole_log(Some(&["session.halted"])).await;
    assert_eq!(halts.len(), 1, "{halts:?}");
    assert_eq!(halts[0]["data"]["action_id"], "boom");
    assert_eq!(halts[0]["data"]["error"], "credentials revoked");
    // A new session starts clear.
    let mut fresh = server.auth_client().await;
    let ok = fresh
        .submit(
            json!({"id": "p3", "actions": [{"id": "z", "tool": "t"}]}),
            |_| ToolAnswer::Result(json!("done")),
        )
        .await;
    assert_eq!(ok["final_state"], "completed");
}

/// A host whose own proposal failed terminally clears its halt and proposes again.
#[tokio::test]
async fn a_host_clears_its_own_halt() {
    let server = server(&[]).await;
    let mut host = server.auth_host().await;
    host.submit(
        json!({"id": "h1", "actions": [{"id": "a", "tool": "t"}]}),
        |_| ToolAnswer::Error(json!({"code": 1, "message": "stop", "data": {"terminal": true}})),
    )
    .await;
    let rejected = host
        .submit(
            json!({"id": "h2", "actions": [{"id": "b", "tool": "t"}]}),
            |call| panic!("halted: {call}"),
        )
        .await;
    assert_eq!(rejected["results"][0]["status"], "rejected");
    assert_eq!(
        host.ok("session.clear_halt", json!({})).await,
        json!({"cleared": true, "halted": false})
    );
    let again = host
        .submit(
            json!({"id": "h3", "actions": [{"id": "c", "tool": "t"}]}),
            |_| ToolAnswer::Result(json!(1)),
        )
        .await;
    assert_eq!(again["final_state"], "completed");
    let cleared = host.whole_log(Some(&["session.halt_cleared"])).await;
    assert_eq!(cleared.len(), 1);
}

/// PROTOCOL.md §14.5 `proposal.result`: the final `proposal.submit` result is stored
/// before it is sent; `in_progress` while it runs; to hosts and the same principal only;
/// a reused id gives that principal's latest; it survives a restart.
#[tokio::test]
async fn proposal_result_answers_what_submit_answered_to_its_principal_and_hosts() {
    let mut server = server(&[]).await;
    let mut client = server.auth_client().await;
    let id = client
        .request(
            "proposal.submit",
            json!({"proposal": {"id": "job-1", "actions": [{"id": "a", "tool": "t"}]}}),
        )
        .await
        .unwrap();
    let call = client.next_tool_call().await;
    // While its tool runs: in progress, for another session of the same principal too.
    let mut other_client = server.auth_client().await;
    assert_eq!(
        other_client
            .ok("proposal.result", json!({"proposal_id": "job-1"}))
            .await,
        json!({"proposal_id": "job-1", "state": "in_progress"})
    );
    client.reply(&call["id"], json!({"rows": 3})).await;
    let submitted = client.response(&id).await.unwrap().unwrap();
    let mut expected = submitted.clone();
    expected["state"] = json!("completed");
    assert_eq!(
        other_client
            .ok("proposal.result", json!({"proposal_id": "job-1"}))
            .await,
        expected
    );
    // Another principal learns nothing; a host reads it.
    let mut agent = server.auth_agent("someone").await;
    assert_eq!(
        agent
            .ok("proposal.result", json!({"proposal_id": "job-1"}))
            .await,
        json!({"proposal_id": "job-1", "not_found": true})
    );
    let mut host = server.auth_host().await;
    assert_eq!(
        host.ok("proposal.result", json!({"proposal_id": "job-1"}))
            .await,
        expected
    );
    // A reused id: the principal's latest.
    let again = client
        .submit(
            json!({"id": "job-1", "actions": [{"id": "b", "tool": "t"}]}),
            |_| ToolAnswer::Result(json!("second")),
        )
        .await;
    let latest = other_client
        .ok("proposal.result", json!({"proposal_id": "job-1"}))
        .await;
    assert_eq!(latest["outputs"], again["outputs"]);
    assert_eq!(latest["outputs"]["b"], "second");
    // From the log after a restart.
    drop((client, other_client, agent, host));
    server.stop().await.unwrap();
    server.restart().await.unwrap();
    let mut client = server.auth_client().await;
    let after = client
        .ok("proposal.result", json!({"proposal_id": "job-1"}))
        .await;
    assert_eq!(after, latest);
    assert_eq!(
        client
            .ok("proposal.result", json!({"proposal_id": "never"}))
            .await,
        json!({"proposal_id": "never", "not_found": true})
    );
    let err = client.err("proposal.result", json!({})).await;
    assert_eq!(err.code, -32602);
}

/// PROTOCOL.md §14.5, the crash: a SIGKILL while a tool call is in flight. At the next
/// start the call's outcome is `indeterminate` (never dispatched again), its proposal is
/// completed `failed` (the earlier action as it ended, the call's action `indeterminate`,
/// the rest `skipped`), the cut-off action is a turn of the run before it ends
/// `incomplete`, and `proposal.result` answers for the proposal the client saw accepted.
#[tokio::test]
async fn a_tool_call_in_flight_at_a_crash_is_indeterminate_and_its_proposal_completes() {
    let mut server = server(&[]).await;
    let mut agent = server.auth_agent("a").await;
    let run = start(&mut agent, "a").await;
    let actions = json!([
        {"id": "first", "tool": "t"},
        {"id": "second", "tool": "t", "parameters": {"n": 2}},
        {"id": "third", "tool": "t"},
    ]);
    agent
        .request(
            "proposal.submit",
            json!({"proposal": {"id": "crash-1", "actions": actions}}),
        )
        .await
        .unwrap();
    let call = agent.next_tool_call().await;
    agent.reply(&call["id"], json!("one")).await;
    let in_flight = agent.next_tool_call().await;
    assert_eq!(action_of(&in_flight), "second");
    server.kill().await.unwrap();
    server.restart().await.unwrap();

    let mut agent = server.auth_agent("a").await;
    let error = "outcome unknown: the daemon stopped during dispatch";
    let result = agent
        .ok("proposal.result", json!({"proposal_id": "crash-1"}))
        .await;
    assert_eq!(
        result,
        json!({
            "proposal_id": "crash-1",
            "final_state": "failed",
            "outputs": {"first": "one"},
            "errors": {"second": error},
            "results": [
                {"action_id": "first", "status": "succeeded", "output": "one", "attempts": 1},
                {"action_id": "second", "status": "indeterminate", "error": error, "attempts": 1},
                {"action_id": "third", "status": "skipped", "attempts": 0},
            ],
            "state": "completed",
        })
    );
    let trace = full_trace(&mut agent, &run).await;
    let records = trace["records"].as_array().unwrap();
    let outputs: Vec<&Value> = records
        .iter()
        .filter(|r| r["record"] == "turn")
        .map(|r| &r["output"])
        .collect();
    assert_eq!(outputs, [&json!("one"), &json!(error)]);
    assert_eq!(
        records.last().unwrap()["termination"],
        json!({"kind": "incomplete", "reason": "daemon_restart"})
    );
    let mut host = server.auth_host().await;
    let dispatched = host.whole_log(Some(&["tool_call.dispatched"])).await;
    assert_eq!(
        dispatched.len(),
        2,
        "nothing dispatched again: {dispatched:?}"
    );
    let indeterminate = host.whole_log(Some(&["tool_call.indeterminate"])).await;
    assert_eq!(indeterminate.len(), 1);
    assert_eq!(indeterminate[0]["data"]["request_id"], in_flight["id"]);
}
