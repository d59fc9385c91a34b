//! The CAR cookbook flow, as an unmodified old CAR client runs it against a daemon started
//! with `--no-auth` (or `CAR_NO_AUTH=1`): it never calls `session.auth` nor
//! `server.handshake`; it registers a tool with `session.init`, submits a proposal with
//! `proposal.submit`, answers `tools.execute` reading the arguments from `params.params`
//! (the older name; it knows nothing of `params.parameters`), and gets the final result
//! with `final_state: "completed"` and the tool's output in `outputs`.

use car_tests::{Client, Endpoint};
use serde_json::{Value, json};

use crate::{builder, server};

/// The old client's tool: evaluates `a <op> b` from the arguments it is given.
fn calculator(args: &Value) -> Value {
    let (a, b) = (args["a"].as_f64().unwrap(), args["b"].as_f64().unwrap());
    let value = match args["op"].as_str().unwrap() {
        "+" => a + b,
        "*" => a * b,
        op => return json!({"error": format!("unsupported operator {op}")}),
    };
    json!({"value": value})
}

/// The cookbook, step by step, as raw JSON-RPC frames: what an old client sends and reads.
async fn cookbook(server: &Endpoint) {
    let mut old = Client::connect(server.addr).await.unwrap();
    old.send_text(
        json!({"jsonrpc": "2.0", "id": 1, "method": "session.init", "params": {
            "tools": [{"name": "calculator", "description": "basic arithmetic",
                       "parameters": {"type": "object", "properties": {
                           "a": {"type": "number"}, "b": {"type": "number"},
                           "op": {"type": "string"}}}}],
        }})
        .to_string(),
    )
    .await
    .unwrap();
    let init = old.response(&json!(1)).await.unwrap().unwrap();
    assert_eq!(init["tools_registered"], 1, "{init}");
    old.send_text(
        json!({"jsonrpc": "2.0", "id": 2, "method": "proposal.submit", "params": {
            "proposal": {"actions": [
                {"id": "sum", "type": "tool_call", "tool": "calculator",
                 "parameters": {"a": 2, "b": 3, "op": "+"}},
                {"id": "product", "type": "tool_call", "tool": "calculator",
                 "parameters": {"a": 4, "b": 2.5, "op": "*"}},
            ]},
        }})
        .to_string(),
    )
    .await
    .unwrap();
    for _ in 0..2 {
        let request = old.next_request("tools.execute").await.unwrap();
        // The old client reads `params.params` and echoes the id it got.
        let output = calculator(&request["params"]["params"]);
        old.send_text(json!({"jsonrpc": "2.0", "id": request["id"], "result": output}).to_string())
            .await
            .unwrap();
    }
    let result = old.response(&json!(2)).await.unwrap().unwrap();
    assert_eq!(result["final_state"], "completed", "{result}");
    assert_eq!(
        result["outputs"],
        json!({"sum": {"value": 5.0}, "product": {"value": 10.0}})
    );
    assert_eq!(result["errors"], json!({}));
    assert!(result["proposal_id"].is_string(), "{result}");
}

#[tokio::test]
async fn an_old_client_runs_the_cookbook_with_auth_disabled() {
    let flag = server(&["--no-auth"]).await;
    cookbook(&flag).await;
    let env = builder()
        .env("CAR_NO_AUTH", "1")
        .spawn()
        .await
        .unwrap_or_else(|err| panic!("{err:#}"));
    cookbook(&env).await;
}
