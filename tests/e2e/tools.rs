//! PROTOCOL.md §4.1: `session.init` (its result: `session_id`, `tools_registered`,
//! `policies_registered`; the `session_id` is the one the log and `tools.execute` name),
//! `tools.register` (`{registered}`), `tools.list` (sorted by name, with `count`; per
//! session), and the policies: `deny_tool` and `deny_tool_param` (the action's
//! `parameters[key]`, as a string, contains `pattern`) reject an action as `rejected`
//! without any `tools.execute` callback; an unknown `rule`, or a `deny_tool_param` without
//! `key` or `pattern`, is `-32602` and registers nothing.

use car_tests::ToolAnswer;
use serde_json::{Value, json};

use crate::server;

#[tokio::test]
async fn session_init_registers_tools_and_policies_and_tools_list_sorts_them() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let schema = json!({"type": "object", "properties": {"q": {"type": "string"}}});
    let init = client
        .ok(
            "session.init",
            json!({
                "tools": [
                    {"name": "zeta"},
                    {"name": "alpha", "description": "the first", "parameters": schema},
                ],
                "policies": [
                    {"name": "p1", "rule": "deny_tool", "target": "zeta"},
                    {"name": "p2", "rule": "deny_tool_param", "target": "alpha", "key": "q",
                     "pattern": "secret"},
                ],
            }),
        )
        .await;
    let session_id = init["session_id"].as_str().unwrap().to_owned();
    assert!(!session_id.is_empty());
    assert_eq!(
        init,
        json!({"session_id": session_id, "tools_registered": 2, "policies_registered": 2})
    );
    // The session id is the session's: the log's `session.authenticated` names it.
    let mut host = server.auth_host().await;
    let authenticated = host.whole_log(Some(&["session.authenticated"])).await;
    assert!(
        authenticated
            .iter()
            .any(|e| e["data"]["client_id"] == session_id.as_str() && e["data"]["role"] == "client"),
        "{authenticated:?}"
    );

    // Nothing given: nothing registered, the same session.
    let again = client.ok("session.init", json!({})).await;
    assert_eq!(
        again,
        json!({"session_id": session_id, "tools_registered": 0, "policies_registered": 0})
    );
    let registered = client
        .ok(
            "tools.register",
            json!({"tools": [{"name": "mid", "description": "in between"}, {"name": "beta"}]}),
        )
        .await;
    assert_eq!(registered, json!({"registered": 2}));

    let list = client.ok("tools.list", json!({})).await;
    assert_eq!(list["count"], 4, "{list}");
    let tools = list["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alpha", "beta", "mid", "zeta"]);
    assert_eq!(tools[0]["description"], "the first");
    assert_eq!(tools[0]["parameters"], schema);
    assert_eq!(tools[2]["description"], "in between");

    // Tools belong to their session.
    let mut other = server.auth_client().await;
    let list = other.ok("tools.list", json!({})).await;
    assert_eq!(list, json!({"tools": [], "count": 0}));
    let other_init = other.ok("session.init", json!({"tools": []})).await;
    assert_ne!(other_init["session_id"], session_id.as_str());

    // A nameless tool is refused.
    let err = client
        .err("tools.register", json!({"tools": [{"name": ""}]}))
        .await;
    assert_eq!(err.code, -32602, "{err}");
    let err = client.err("tools.register", json!({})).await;
    assert_eq!(err.code, -32602, "{err}");
    assert!(err.message.contains("tools"), "{err}");
}

/// What the tool client of the policy test answers: the action's parameters.
fn echo(call: &Value) -> ToolAnswer {
    ToolAnswer::Result(
        json!({"ran": call["params"]["action_id"], "with": call["params"]["parameters"]}),
    )
}

#[tokio::test]
async fn policies_reject_actions_without_a_callback() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let run = crate::runs::start(&mut client, "policed").await;
    let init = client
        .ok(
            "session.init",
            json!({
                "tools": [{"name": "shell"}, {"name": "danger"}, {"name": "count"}],
                "policies": [
                    {"name": "no-danger", "rule": "deny_tool", "target": "danger"},
                    {"name": "no-rm", "rule": "deny_tool_param", "target": "shell", "key": "cmd",
                     "pattern": "rm -rf"},
                    {"name": "no-42", "rule": "deny_tool_param", "target": "count", "key": "n",
                     "pattern": "42"},
                ],
            }),
        )
        .await;
    assert_eq!(init["policies_registered"], 3);
    let actions = json!([
        {"id": "ls", "tool": "shell", "parameters": {"cmd": "ls -l"}, "failure_behavior": "continue"},
        {"id": "rm", "tool": "shell", "parameters": {"cmd": "sudo rm -rf /"},
         "failure_behavior": "continue"},
        {"id": "boom", "tool": "danger", "parameters": {}, "failure_behavior": "continue"},
        {"id": "n", "tool": "count", "parameters": {"n": 1042}, "failure_behavior": "continue"},
        {"id": "n-ok", "tool": "count", "parameters": {"n": 7}, "failure_behavior": "continue"},
        // The key is absent: nothing to match, the action runs.
        {"id": "no-key", "tool": "shell", "parameters": {"other": "rm -rf"},
         "failure_behavior": "continue"},
        // Another tool with the same parameter is not the policy's target.
        {"id": "other-tool", "tool": "count", "parameters": {"cmd": "rm -rf"},
         "failure_behavior": "continue"},
    ]);
    let mut called = Vec::new();
    let result = client
        .submit(json!({"id": "policed", "actions": actions}), |call| {
            called.push(call["params"]["action_id"].as_str().unwrap().to_owned());
            echo(call)
        })
        .await;
    assert_eq!(called, ["ls", "n-ok", "no-key", "other-tool"]);
    assert_eq!(result["final_state"], "failed", "{result}");
    let results = result["results"].as_array().unwrap();
    let statuses: Vec<(&str, &str)> = results
        .iter()
        .map(|r| {
            (
                r["action_id"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("ls", "succeeded"),
            ("rm", "rejected"),
            ("boom", "rejected"),
            ("n", "rejected"),
            ("n-ok", "succeeded"),
            ("no-key", "succeeded"),
            ("other-tool", "succeeded"),
        ]
    );
    for (action, policy) in [("rm", "no-rm"), ("boom", "no-danger"), ("n", "no-42")] {
        let error = result["errors"][action].as_str().unwrap();
        assert!(error.contains(policy), "{action}: {error}");
        let entry = results.iter().find(|r| r["action_id"] == action).unwrap();
        assert_eq!(entry["error"], error, "{entry}");
        assert!(entry.get("output").is_none(), "{entry}");
    }
    let outputs = result["outputs"].as_object().unwrap();
    let mut succeeded: Vec<&str> = outputs.keys().map(String::as_str).collect();
    succeeded.sort_unstable();
    assert_eq!(succeeded, ["ls", "n-ok", "no-key", "other-tool"]);
    assert_eq!(
        result["outputs"]["ls"],
        json!({"ran": "ls", "with": {"cmd": "ls -l"}})
    );
    assert_eq!(result["errors"].as_object().unwrap().len(), 3);

    // No callback means no tool call in the log either.
    let mut host = server.auth_host().await;
    let dispatched = host.whole_log(Some(&["tool_call.dispatched"])).await;
    let mut dispatched: Vec<&str> = dispatched
        .iter()
        .map(|e| e["data"]["action_id"].as_str().unwrap())
        .collect();
    dispatched.sort_unstable();
    assert_eq!(dispatched, ["ls", "n-ok", "no-key", "other-tool"]);

    // Every action is a turn of the current run; rejected ones say so.
    let trace = crate::runs::full_trace(&mut client, &run).await;
    let turns: Vec<&Value> = trace["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["record"] == "turn")
        .collect();
    assert_eq!(turns.len(), 7, "{trace}");
    for (turn, (action, status)) in turns.iter().zip(&statuses) {
        assert_eq!(turn["policy_rejected"], *status == "rejected", "{turn}");
        if *status == "rejected" {
            assert_eq!(turn["output"], result["errors"][*action], "{turn}");
        } else {
            assert_eq!(turn["output"], result["outputs"][*action], "{turn}");
        }
    }
}

#[tokio::test]
async fn an_unknown_rule_or_an_incomplete_deny_tool_param_is_minus_32602() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let cases = [
        (
            json!({"name": "x", "rule": "allow_everything", "target": "t"}),
            "rule",
        ),
        (
            json!({"name": "x", "rule": "deny_tool_param", "target": "t", "pattern": "p"}),
            "key",
        ),
        (
            json!({"name": "x", "rule": "deny_tool_param", "target": "t", "key": "k"}),
            "pattern",
        ),
    ];
    for (policy, field) in cases {
        let params = json!({
            "tools": [{"name": "t"}],
            "policies": [{"name": "fine", "rule": "deny_tool", "target": "u"}, policy],
        });
        let err = client.err("session.init", params.clone()).await;
        assert_eq!(err.code, -32602, "{params}: {err}");
        assert!(err.message.contains(field), "{params}: {err}");
    }
    // A refused init registers nothing, neither its tools nor its good policies.
    let list = client.ok("tools.list", json!({})).await;
    assert_eq!(list["count"], 0, "{list}");
    let result = client
        .submit(json!({"actions": [{"id": "a", "tool": "u"}]}), |_| {
            ToolAnswer::Result(json!("ran"))
        })
        .await;
    assert_eq!(result["final_state"], "completed", "{result}");
    assert_eq!(result["outputs"], json!({"a": "ran"}));
}
