//! PROTOCOL.md §5: approvals and the gate.
//!
//! §5.1: `host.request_approval` (default options, `agent_id` stamped for agent sessions,
//! `system_level`, invalid params), `host.approvals {status?}`, `host.resolve_approval`
//! (a host resolves; a client cannot resolve a non-system approval; anyone but the
//! requester resolves a system-level one; the requester never, even a host; the resolution
//! must be an option; unknown ids; "already resolved"; racing resolutions have exactly one
//! winner), `host.await_approval` (once resolved, or as it stands at `timeout_ms`), every
//! `host.*` before `server.handshake` is `-32005`, and approvals are events: after a
//! SIGTERM or a SIGKILL and a restart, resolved ones read back the same and pending ones
//! are `expired`.
//!
//! §5.2, the gate (`--approval-methods`, `--approval-timeout`): a gated proposal action
//! waits for a system-level approval `tool:<tool>` with `details {tool, params_preview}`
//! (≤ 512 bytes) and runs once approved, fails "approval denied" or "approval timed out"
//! (the approval `expired`); a gated method (`ws.method:<method>`) answers normally once
//! approved, `-32003` "approval denied" / "approval timed out" otherwise, and holds
//! nothing else of its session meanwhile; the default gated set; `--no-approvals` and
//! `CAR_NO_APPROVALS=1` turn the gate off.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use car_tests::{Client, Endpoint, ToolAnswer, is_protocol_time};
use serde_json::{Value, json};

use crate::{builder, server};

/// The sorted keys of an object.
fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// A session after `server.handshake` (needed by every `host.*` method).
async fn handshaken(mut client: Client) -> Client {
    client.handshake().await;
    client
}

/// A host session, handshaken.
async fn handshaken_host(server: &Endpoint) -> Client {
    handshaken(server.auth_host().await).await
}

/// A client session, handshaken.
async fn handshaken_client(server: &Endpoint) -> Client {
    handshaken(server.auth_client().await).await
}

/// `host.request_approval`; returns the approval.
async fn request(client: &mut Client, params: Value) -> Value {
    client.ok("host.request_approval", params).await
}

fn id(approval: &Value) -> String {
    approval["id"].as_str().unwrap().to_owned()
}

/// `host.resolve_approval`.
async fn resolve(
    client: &mut Client,
    approval_id: &str,
    resolution: &str,
) -> Result<Value, car_tests::RpcError> {
    client
        .call(
            "host.resolve_approval",
            json!({"approval_id": approval_id, "resolution": resolution}),
        )
        .await
}

/// Every approval `client` sees with `params`, by id.
async fn approvals(client: &mut Client, params: Value) -> Vec<Value> {
    client.ok("host.approvals", params).await["approvals"]
        .as_array()
        .unwrap()
        .clone()
}

fn ids(approvals: &[Value]) -> BTreeSet<String> {
    approvals.iter().map(id).collect()
}

/// The payload of the next `approval.requested` host event (a subscribed host).
async fn next_requested(host: &mut Client) -> Value {
    host.next_notification_where("host.event", |e| e["kind"] == "approval.requested")
        .await
        .unwrap()["payload"]
        .clone()
}

#[tokio::test]
async fn request_approval_answers_the_approval_with_its_defaults() {
    let server = server(&[]).await;
    let mut client = handshaken_client(&server).await;
    let approval = request(&mut client, json!({"action": "deploy"})).await;
    assert_eq!(
        keys(&approval),
        [
            "action",
            "created_at",
            "details",
            "id",
            "options",
            "status",
            "system_level"
        ],
        "{approval}"
    );
    assert!(!id(&approval).is_empty());
    assert_eq!(approval["action"], "deploy");
    assert_eq!(approval["details"], json!({}));
    assert_eq!(approval["options"], json!(["approve", "deny"]));
    assert_eq!(approval["system_level"], false);
    assert_eq!(approval["status"], "pending");
    assert!(is_protocol_time(approval["created_at"].as_str().unwrap()));

    let full = request(
        &mut client,
        json!({"action": "pay", "details": {"amount": [1, 2.5]}, "options": ["yes", "no", "later"],
               "system_level": true, "agent_id": "planner"}),
    )
    .await;
    assert_ne!(id(&full), id(&approval));
    assert_eq!(full["details"], json!({"amount": [1, 2.5]}));
    assert_eq!(full["options"], json!(["yes", "no", "later"]));
    assert_eq!(full["system_level"], true);
    assert_eq!(full["agent_id"], "planner", "a client names the agent");

    // An agent session's own identity is stamped, whatever it says.
    let mut agent = handshaken(server.auth_agent("bot").await).await;
    let stamped = request(
        &mut agent,
        json!({"action": "x", "agent_id": "someone-else"}),
    )
    .await;
    assert_eq!(stamped["agent_id"], "bot", "{stamped}");
    let stamped = request(&mut agent, json!({"action": "y"})).await;
    assert_eq!(stamped["agent_id"], "bot", "{stamped}");

    for (params, field) in [
        (json!({}), "action"),
        (json!({"action": ""}), "action"),
        (json!({"action": "a", "options": []}), "options"),
        (json!({"action": "a", "options": ["ok", ""]}), "options"),
        (
            json!({"action": "a", "system_level": "yes"}),
            "system_level",
        ),
    ] {
        let err = client.err("host.request_approval", params.clone()).await;
        assert_eq!(err.code, -32602, "{params}: {err}");
        assert!(err.message.contains(field), "{params}: {err}");
    }
    let mut host = handshaken_host(&server).await;
    assert_eq!(approvals(&mut host, json!({})).await.len(), 4);
}

#[tokio::test]
async fn host_approvals_filters_by_status() {
    let server = server(&[]).await;
    let mut a = handshaken_client(&server).await;
    let mut b = handshaken_client(&server).await;
    let mut host = handshaken_host(&server).await;
    let a_pending = request(&mut a, json!({"action": "a-pending"})).await;
    let a_resolved = request(&mut a, json!({"action": "a-resolved"})).await;
    let b_pending = request(&mut b, json!({"action": "b-pending"})).await;
    let b_system = request(&mut b, json!({"action": "b-system", "system_level": true})).await;
    let resolved = resolve(&mut host, &id(&a_resolved), "deny").await.unwrap();

    let all = approvals(&mut host, json!({})).await;
    assert_eq!(
        ids(&all),
        ids(&[
            a_pending.clone(),
            a_resolved.clone(),
            b_pending.clone(),
            b_system.clone()
        ])
    );
    assert!(all.contains(&resolved), "{all:?}");
    assert!(all.contains(&a_pending), "{all:?}");
    let pending = approvals(&mut host, json!({"status": "pending"})).await;
    assert_eq!(
        ids(&pending),
        ids(&[a_pending.clone(), b_pending.clone(), b_system.clone()])
    );
    assert!(pending.iter().all(|a| a["status"] == "pending"));
    let done = approvals(&mut host, json!({"status": "resolved"})).await;
    assert_eq!(done, [resolved]);
    assert_eq!(
        approvals(&mut host, json!({"status": "expired"})).await,
        Vec::<Value>::new()
    );
    let err = host.err("host.approvals", json!({"status": "bogus"})).await;
    assert_eq!(err.code, -32602, "{err}");
    assert!(err.message.contains("status"), "{err}");

    // A client sees its own approvals and the system-level ones (which it may resolve).
    let seen_by_a = approvals(&mut a, json!({})).await;
    assert_eq!(
        ids(&seen_by_a),
        ids(&[a_pending.clone(), a_resolved.clone(), b_system.clone()])
    );
}

#[tokio::test]
async fn who_may_resolve_an_approval() {
    let server = server(&[]).await;
    let mut a = handshaken_client(&server).await;
    let mut b = handshaken_client(&server).await;
    let mut agent = handshaken(server.auth_agent("g").await).await;
    let mut h1 = handshaken_host(&server).await;
    let mut h2 = handshaken_host(&server).await;
    let refused = |outcome: Result<Value, car_tests::RpcError>, what: &str| {
        let err = outcome.expect_err(what);
        assert_eq!(err.code, -32603, "{what}: {err}");
    };

    // A client's non-system approval: only a host, never the requester.
    let x = id(&request(&mut a, json!({"action": "x"})).await);
    refused(resolve(&mut b, &x, "approve").await, "another client");
    refused(resolve(&mut agent, &x, "approve").await, "an agent");
    refused(resolve(&mut a, &x, "approve").await, "the requester");
    let err = resolve(&mut h1, &x, "maybe").await.unwrap_err();
    assert_eq!(err.code, -32602, "{err}");
    assert!(err.message.contains("resolution"), "{err}");
    let err = h1
        .err("host.resolve_approval", json!({"approval_id": x}))
        .await;
    assert_eq!(err.code, -32602, "{err}");
    let resolved = resolve(&mut h1, &x, "approve").await.unwrap();
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["resolution"], "approve");
    assert!(is_protocol_time(resolved["resolved_at"].as_str().unwrap()));
    assert_eq!(
        keys(&resolved),
        [
            "action",
            "created_at",
            "details",
            "id",
            "options",
            "resolution",
            "resolved_at",
            "status",
            "system_level"
        ]
    );
    for (session, resolution) in [(&mut h2, "deny"), (&mut h1, "approve")] {
        let err = resolve(session, &x, resolution).await.unwrap_err();
        assert_eq!(
            (err.code, err.message),
            (-32602, format!("approval {x} is already resolved"))
        );
    }
    assert_eq!(
        approvals(&mut h2, json!({"status": "resolved"})).await,
        [resolved]
    );

    // A host's own request: another host resolves it, not the requesting host.
    let y = id(&request(&mut h1, json!({"action": "y"})).await);
    refused(resolve(&mut h1, &y, "approve").await, "the requesting host");
    resolve(&mut h2, &y, "deny").await.unwrap();

    // System-level: anyone but the requester, with any of its options.
    let z = id(&request(
        &mut a,
        json!({"action": "z", "system_level": true, "options": ["go", "stop"]}),
    )
    .await);
    refused(resolve(&mut a, &z, "go").await, "the requester");
    let err = resolve(&mut b, &z, "approve").await.unwrap_err();
    assert_eq!(err.code, -32602, "not one of its options: {err}");
    let stopped = resolve(&mut b, &z, "stop").await.unwrap();
    assert_eq!(stopped["resolution"], "stop");
    let w = id(&request(&mut a, json!({"action": "w", "system_level": true})).await);
    assert_eq!(
        resolve(&mut agent, &w, "approve").await.unwrap()["status"],
        "resolved"
    );
    let v = id(&request(&mut h1, json!({"action": "v", "system_level": true})).await);
    refused(resolve(&mut h1, &v, "approve").await, "the requesting host");
    resolve(&mut b, &v, "approve").await.unwrap();

    let err = resolve(&mut h1, "no-such-approval", "approve")
        .await
        .unwrap_err();
    assert_eq!(err.code, -32602, "{err}");
    assert!(err.message.contains("no-such-approval"), "{err}");
}

#[tokio::test]
async fn racing_resolutions_have_exactly_one_winner() {
    let server = server(&[]).await;
    let mut requester = handshaken_client(&server).await;
    let mut racers = [
        handshaken_client(&server).await,
        handshaken_client(&server).await,
        handshaken_host(&server).await,
        handshaken(server.auth_agent("racer").await).await,
    ];
    let options = ["one", "two", "three", "four"];
    for round in 0..8 {
        let approval = id(&request(
            &mut requester,
            json!({"action": format!("race {round}"), "system_level": true, "options": options}),
        )
        .await);
        let mut pending = Vec::new();
        for (i, racer) in racers.iter_mut().enumerate() {
            let params = json!({"approval_id": approval, "resolution": options[i]});
            pending.push(
                racer
                    .request("host.resolve_approval", params)
                    .await
                    .unwrap(),
            );
        }
        let mut winners = Vec::new();
        for (i, (racer, request_id)) in racers.iter_mut().zip(&pending).enumerate() {
            match racer.response(request_id).await.unwrap() {
                Ok(won) => {
                    assert_eq!(won["resolution"], options[i], "{won}");
                    winners.push(options[i]);
                }
                Err(err) => assert_eq!(
                    (err.code, err.message),
                    (-32602, format!("approval {approval} is already resolved"))
                ),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let stored = approvals(&mut racers[2], json!({"status": "resolved"})).await;
        let stored = stored
            .iter()
            .find(|a| a["id"] == approval.as_str())
            .unwrap();
        assert_eq!(stored["resolution"], winners[0], "{stored}");
    }
}

#[tokio::test]
async fn await_approval_returns_once_resolved_or_as_it_stands_at_the_timeout() {
    let server = server(&[]).await;
    let mut client = handshaken_client(&server).await;
    let mut host = handshaken_host(&server).await;
    let approval = request(&mut client, json!({"action": "wait for me"})).await;
    let approval_id = id(&approval);

    let asked = Instant::now();
    let still = client
        .ok(
            "host.await_approval",
            json!({"approval_id": approval_id, "timeout_ms": 300}),
        )
        .await;
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(still, approval, "as it stands: pending");

    // Without timeout_ms it waits (up to the gate timeout, 60 s) for the resolution.
    let waiting = client
        .request("host.await_approval", json!({"approval_id": approval_id}))
        .await
        .unwrap();
    let resolved = resolve(&mut host, &approval_id, "deny").await.unwrap();
    let awaited = client.response(&waiting).await.unwrap().unwrap();
    assert_eq!(awaited, resolved);
    // Resolved already: at once, whatever the timeout.
    let again = client
        .ok(
            "host.await_approval",
            json!({"approval_id": approval_id, "timeout_ms": 600_000}),
        )
        .await;
    assert_eq!(again, resolved);
    // A host waits on any approval.
    let by_host = host
        .ok(
            "host.await_approval",
            json!({"approval_id": approval_id, "timeout_ms": 1}),
        )
        .await;
    assert_eq!(by_host, resolved);

    let err = client
        .err(
            "host.await_approval",
            json!({"approval_id": "no-such-approval", "timeout_ms": 10}),
        )
        .await;
    assert_eq!(err.code, -32602, "{err}");
    let err = client.err("host.await_approval", json!({})).await;
    assert_eq!(err.code, -32602, "{err}");
    assert!(err.message.contains("approval_id"), "{err}");
}

#[tokio::test]
async fn every_host_method_needs_the_handshake() {
    let server = server(&[]).await;
    let calls = [
        ("host.request_approval", json!({"action": "a"})),
        (
            "host.resolve_approval",
            json!({"approval_id": "x", "resolution": "approve"}),
        ),
        ("host.approvals", json!({})),
        (
            "host.await_approval",
            json!({"approval_id": "x", "timeout_ms": 1}),
        ),
        ("host.subscribe", json!({})),
        ("host.events", json!({})),
    ];
    let sessions = [
        server.auth_client().await,
        server.auth_agent("a").await,
        server.auth_host().await,
    ];
    for mut session in sessions {
        for (method, params) in &calls {
            let err = session.err(method, params.clone()).await;
            assert_eq!(err.code, -32005, "{method}: {err}");
            assert!(
                err.message.starts_with("protocol handshake required: "),
                "{method}: {err}"
            );
        }
        // No notification either: the refused host.subscribe subscribed nothing.
        session.ok("runs.list", json!({})).await;
        assert!(session.take_notifications("host.event").is_empty());
    }
    let mut host = handshaken_host(&server).await;
    assert_eq!(approvals(&mut host, json!({})).await, Vec::<Value>::new());
}

#[tokio::test]
async fn approvals_survive_restarts_and_pending_ones_expire() {
    let mut server = server(&[]).await;
    let mut before: Vec<Value> = Vec::new();
    for crash in [false, true] {
        let mut client = handshaken_client(&server).await;
        let mut host = handshaken_host(&server).await;
        let resolved = request(&mut client, json!({"action": format!("resolved {crash}")})).await;
        resolve(&mut host, &id(&resolved), "deny").await.unwrap();
        let pending = request(&mut client, json!({"action": format!("pending {crash}")})).await;
        let system = request(
            &mut client,
            json!({"action": format!("system {crash}"), "system_level": true}),
        )
        .await;
        before = approvals(&mut host, json!({})).await;
        if crash {
            server.kill().await.unwrap();
        } else {
            server.stop().await.unwrap();
        }
        server.restart().await.unwrap();

        let mut host = handshaken_host(&server).await;
        let after = approvals(&mut host, json!({})).await;
        assert_eq!(ids(&after), ids(&before));
        for old in &before {
            let new = after.iter().find(|a| a["id"] == old["id"]).unwrap();
            if old["status"] == "pending" {
                assert_eq!(new["status"], "expired", "{new}");
                assert!(new.get("resolution").is_none(), "{new}");
                let mut unchanged = new.clone();
                let fields = unchanged.as_object_mut().unwrap();
                fields.remove("resolved_at");
                fields.insert("status".into(), json!("pending"));
                assert_eq!(&unchanged, old);
            } else {
                assert_eq!(new, old, "read back the same");
            }
        }
        for expired in [&pending, &system] {
            let err = resolve(&mut host, &id(expired), "approve")
                .await
                .unwrap_err();
            assert_eq!(err.code, -32602, "{err}");
            let now = host
                .ok(
                    "host.await_approval",
                    json!({"approval_id": id(expired), "timeout_ms": 600_000}),
                )
                .await;
            assert_eq!(now["status"], "expired", "{now}");
        }
        let expired = host
            .whole_log(Some(&["approval.expired"]))
            .await
            .into_iter()
            .map(|e| e["data"]["approval_id"].as_str().unwrap().to_owned())
            .collect::<BTreeSet<_>>();
        assert!(expired.contains(&id(&pending)) && expired.contains(&id(&system)));
    }
    assert_eq!(before.len(), 6);
}

// ---------------------------------------------------------------------------------------
// The gate

/// A daemon gating the tool `deploy` and the method `runs.list`.
const GATED: [&str; 2] = ["--approval-methods", "deploy,runs.list"];

/// A host session subscribed to the host feed.
async fn watching_host(server: &Endpoint) -> Client {
    let mut host = handshaken_host(server).await;
    host.ok("host.subscribe", json!({})).await;
    host
}

#[tokio::test]
async fn a_gated_tool_runs_once_approved_and_fails_when_denied() {
    let server = server(&[GATED[0], GATED[1], "--approval-timeout", "60"]).await;
    let mut host = watching_host(&server).await;
    let mut client = handshaken(server.auth_agent("deployer").await).await;
    client
        .ok(
            "session.init",
            json!({"tools": [{"name": "deploy"}, {"name": "build"}]}),
        )
        .await;
    let parameters = json!({"target": "prod", "notes": "é".repeat(400)});
    let submit = client
        .request(
            "proposal.submit",
            json!({"proposal": {"id": "ship", "actions": [
                {"id": "build", "tool": "build"},
                {"id": "deploy", "tool": "deploy", "parameters": parameters},
            ]}}),
        )
        .await
        .unwrap();
    // Not gated: runs at once.
    let build = client.next_tool_call().await;
    assert_eq!(build["params"]["tool"], "build");
    client.reply(&build["id"], json!("built")).await;

    let approval = next_requested(&mut host).await;
    assert_eq!(approval["action"], "tool:deploy", "{approval}");
    assert_eq!(approval["system_level"], true);
    assert_eq!(approval["options"], json!(["approve", "deny"]));
    assert_eq!(approval["status"], "pending");
    assert_eq!(approval["agent_id"], "deployer");
    assert_eq!(keys(&approval["details"]), ["params_preview", "tool"]);
    assert_eq!(approval["details"]["tool"], "deploy");
    let preview = approval["details"]["params_preview"].as_str().unwrap();
    assert!(
        preview.len() <= 512 && preview.len() >= 510,
        "{}",
        preview.len()
    );
    assert!(parameters.to_string().starts_with(preview), "{preview}");
    let approval_id = id(&approval);
    // The gated session cannot approve its own call.
    let err = client
        .err(
            "host.resolve_approval",
            json!({"approval_id": approval_id, "resolution": "approve"}),
        )
        .await;
    assert_eq!(err.code, -32603, "{err}");
    assert!(client.take_notifications("tools.execute").is_empty());
    resolve(&mut host, &approval_id, "approve").await.unwrap();
    let deploy = client.next_tool_call().await;
    assert_eq!(deploy["params"]["action_id"], "deploy");
    assert_eq!(deploy["params"]["parameters"], parameters);
    client.reply(&deploy["id"], json!("deployed")).await;
    let result = client.response(&submit).await.unwrap().unwrap();
    assert_eq!(result["final_state"], "completed", "{result}");
    assert_eq!(
        result["outputs"],
        json!({"build": "built", "deploy": "deployed"})
    );

    // Denied, by another (non-host) session: a system-level approval is anyone's but the
    // requester's. The action fails without a callback, and the rest is skipped.
    let mut other = handshaken_client(&server).await;
    let submit = client
        .request(
            "proposal.submit",
            json!({"proposal": {"id": "ship-2", "actions": [
                {"id": "deploy", "tool": "deploy", "parameters": {"target": "prod"}},
                {"id": "after", "tool": "build"},
            ]}}),
        )
        .await
        .unwrap();
    let approval = next_requested(&mut host).await;
    assert_eq!(
        approval["details"],
        json!({"tool": "deploy", "params_preview": r#"{"target":"prod"}"#})
    );
    resolve(&mut other, &id(&approval), "deny").await.unwrap();
    let result = client.response(&submit).await.unwrap().unwrap();
    assert_eq!(result["final_state"], "failed");
    assert_eq!(result["errors"], json!({"deploy": "approval denied"}));
    assert_eq!(result["results"][0]["status"], "failed");
    assert_eq!(result["results"][1]["status"], "skipped");
    assert!(client.take_notifications("tools.execute").is_empty());

    // The log tells it in order: requested, resolved, then (only if approved) dispatched.
    let log = host
        .whole_log(Some(&[
            "approval.requested",
            "approval.resolved",
            "tool_call.dispatched",
        ]))
        .await;
    let told: Vec<String> = log
        .iter()
        .map(|e| {
            let detail = e["data"]["action_id"]
                .as_str()
                .or(e["data"]["resolution"].as_str())
                .or(e["data"]["action"].as_str())
                .unwrap_or_default();
            format!("{} {detail}", e["kind"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        told,
        [
            "tool_call.dispatched build",
            "approval.requested tool:deploy",
            "approval.resolved approve",
            "tool_call.dispatched deploy",
            "approval.requested tool:deploy",
            "approval.resolved deny",
        ]
    );
}

#[tokio::test]
async fn a_gated_method_answers_once_approved_and_minus_32003_when_denied() {
    let server = server(&[GATED[0], GATED[1], "--approval-timeout", "60"]).await;
    let mut host = watching_host(&server).await;
    let mut client = server.auth_client().await;
    let list = client
        .request("runs.list", json!({"limit": 5}))
        .await
        .unwrap();
    let approval = next_requested(&mut host).await;
    assert_eq!(approval["action"], "ws.method:runs.list", "{approval}");
    assert_eq!(
        approval["details"],
        json!({"method": "runs.list", "params_preview": r#"{"limit":5}"#})
    );
    assert_eq!(approval["system_level"], true);
    // The held call holds nothing else: the session is served meanwhile.
    let run = client
        .ok("runs.start", json!({"intent": "i", "agent_id": "a"}))
        .await;
    resolve(&mut host, &id(&approval), "approve").await.unwrap();
    let listed = client.response(&list).await.unwrap().unwrap();
    assert_eq!(listed["runs"][0]["run_id"], run["run_id"], "{listed}");

    let list = client.request("runs.list", json!({})).await.unwrap();
    let approval = next_requested(&mut host).await;
    resolve(&mut host, &id(&approval), "deny").await.unwrap();
    let err = client.response(&list).await.unwrap().unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (-32003, "approval denied")
    );
    // A method outside the set is not gated.
    client.ok("runs.get_trace", json!({"run_id": "x"})).await;
    let all = approvals(&mut host, json!({})).await;
    assert_eq!(all.len(), 2, "{all:?}");
}

#[tokio::test]
async fn the_gate_times_out_and_the_approval_expires() {
    let server = server(&[GATED[0], GATED[1], "--approval-timeout", "1"]).await;
    let mut host = watching_host(&server).await;
    let method = async {
        let mut client = server.auth_client().await;
        let asked = Instant::now();
        let err = client.err("runs.list", json!({})).await;
        (err, asked.elapsed())
    };
    let tool = async {
        let mut client = server.auth_client().await;
        let asked = Instant::now();
        let result = client
            .submit(json!({"actions": [{"id": "d", "tool": "deploy"}]}), |_| {
                ToolAnswer::Result(json!("never called"))
            })
            .await;
        (result, asked.elapsed())
    };
    let ((err, method_waited), (result, tool_waited)) = tokio::join!(method, tool);
    assert_eq!(
        (err.code, err.message.as_str()),
        (-32003, "approval timed out")
    );
    assert!(
        method_waited >= Duration::from_millis(1000),
        "{method_waited:?}"
    );
    assert_eq!(result["final_state"], "failed");
    assert_eq!(result["errors"], json!({"d": "approval timed out"}));
    assert!(
        tool_waited >= Duration::from_millis(1000),
        "{tool_waited:?}"
    );

    let expired = approvals(&mut host, json!({"status": "expired"})).await;
    let actions: BTreeSet<&str> = expired
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        BTreeSet::from(["tool:deploy", "ws.method:runs.list"])
    );
    for approval in &expired {
        let event = host
            .next_notification_where("host.event", |e| {
                e["kind"] == "approval.expired" && e["payload"]["id"] == approval["id"]
            })
            .await
            .unwrap();
        assert_eq!(event["payload"], *approval);
        let err = resolve(&mut host, &id(approval), "approve")
            .await
            .unwrap_err();
        assert_eq!(err.code, -32602, "too late: {err}");
    }
}

#[tokio::test]
async fn the_default_gated_set_holds_its_methods() {
    let server = server(&[]).await;
    let mut host = watching_host(&server).await;
    let mut client = server.auth_client().await;
    let sent = client
        .request("mail.send", json!({"to": "x"}))
        .await
        .unwrap();
    let approval = next_requested(&mut host).await;
    assert_eq!(approval["action"], "ws.method:mail.send");
    resolve(&mut host, &id(&approval), "deny").await.unwrap();
    let err = client.response(&sent).await.unwrap().unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (-32003, "approval denied")
    );
    // Approved, the call goes on to the method table (which has no such method here).
    let sent = client.request("vision.ocr", json!({})).await.unwrap();
    let approval = next_requested(&mut host).await;
    assert_eq!(approval["action"], "ws.method:vision.ocr");
    resolve(&mut host, &id(&approval), "approve").await.unwrap();
    let err = client.response(&sent).await.unwrap().unwrap_err();
    assert_eq!(err.code, -32601, "{err}");
    // And runs.list is not in it.
    client.ok("runs.list", json!({})).await;
}

/// With the gate off, the gated method and tool run at once and no approval is made.
async fn gate_is_off(server: &Endpoint) {
    let mut client = server.auth_client().await;
    client.ok("runs.list", json!({})).await;
    let result = client
        .submit(json!({"actions": [{"id": "d", "tool": "deploy"}]}), |_| {
            ToolAnswer::Result(json!("deployed"))
        })
        .await;
    assert_eq!(result["outputs"], json!({"d": "deployed"}));
    let mut host = handshaken_host(server).await;
    assert_eq!(approvals(&mut host, json!({})).await, Vec::<Value>::new());
}

#[tokio::test]
async fn no_approvals_turns_the_gate_off() {
    let flag = server(&["--no-approvals", GATED[0], GATED[1]]).await;
    gate_is_off(&flag).await;
    let env = builder()
        .env("CAR_NO_APPROVALS", "1")
        .args(GATED)
        .spawn()
        .await
        .unwrap_or_else(|err| panic!("{err:#}"));
    gate_is_off(&env).await;
}
