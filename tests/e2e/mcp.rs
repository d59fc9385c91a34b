//! §16 MCP: the endpoint over raw HTTP (every check, refusal and status code, the methods,
//! every tool and the `car_context` prompt, roles), the listener rules of §18 (a taken
//! default address is skipped, a taken explicit one exits 2), and the official MCP Python
//! SDK's client against the real daemon.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

use car_gateway::http::Bind;
use car_tests::http::{McpClient, request};
use car_tests::{Client, InProcessServer, Server};
use serde_json::{Value, json};

use super::builder;

const VERSIONS: [&str; 3] = ["2024-11-05", "2025-06-18", "2025-11-25"];

/// A daemon with auth on and MCP on a free loopback port.
async fn mcp_server(args: &[&str]) -> Server {
    builder()
        .mcp()
        .args(args.iter().copied())
        .spawn()
        .await
        .unwrap_or_else(|err| panic!("{err:#}"))
}

fn ping() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})
}

/// POSTs `body` with exactly `headers` (plus the content type).
async fn post_with(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    body: &str,
) -> car_tests::http::HttpResponse {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    request(addr, "POST", "/mcp", &all, body.to_owned())
        .await
        .unwrap_or_else(|err| panic!("{err:#}"))
}

#[tokio::test]
async fn health_answers_without_a_token_and_the_start_up_line_names_the_endpoint() {
    let server = mcp_server(&[]).await;
    let addr = server.mcp_addr();
    let health = request(addr, "GET", "/mcp/health", &[], "").await.unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(health.header("content-type"), Some("application/json"));
    assert_eq!(
        health.json(),
        json!({"status": "ok", "protocol_version": "2025-11-25", "server_version": env!("CARGO_PKG_VERSION")})
    );
    assert!(
        server
            .stderr()
            .iter()
            .any(|l| l.ends_with(&format!("mcp: http://{addr}/mcp"))),
        "{:?}",
        server.stderr()
    );
    let elsewhere = request(addr, "GET", "/other", &[], "").await.unwrap();
    assert_eq!(
        (elsewhere.status, elsewhere.json()),
        (404, json!({"error": "not found"}))
    );
}

#[tokio::test]
async fn origin_then_bearer_then_protocol_version_are_checked_with_their_status_codes() {
    let server = mcp_server(&[]).await;
    let addr = server.mcp_addr();
    let bearer = format!("Bearer {}", server.auth_token);
    let host_bearer = format!("Bearer {}", server.host_token);
    let body = ping().to_string();

    // Origin: loopback origins on any port pass, others are 403 whatever the token.
    for origin in [
        "http://127.0.0.5:1234",
        "http://localhost:3000",
        "https://localhost",
        "http://127.0.0.1",
        "http://[::1]:8080",
    ] {
        let r = post_with(
            addr,
            &[("origin", origin), ("authorization", &bearer)],
            &body,
        )
        .await;
        assert_eq!(r.status, 200, "{origin}: {}", r.text());
        assert_eq!(r.json()["result"], json!({}), "{origin}");
    }
    for origin in [
        "http://evil.com",
        "http://127.0.0.1.evil.com",
        "null",
        "http://10.0.0.1",
    ] {
        for auth in [bearer.as_str(), "Bearer wrong"] {
            let r = post_with(addr, &[("origin", origin), ("authorization", auth)], &body).await;
            assert_eq!(r.status, 403, "{origin}");
            assert_eq!(r.json(), json!({"error": "origin not allowed"}));
        }
    }

    // Bearer: missing, wrong, another scheme: 401 with WWW-Authenticate.
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong")],
        vec![("authorization", "Basic abc")],
        vec![("authorization", server.auth_token.as_str())],
    ] {
        let r = post_with(addr, &headers, &body).await;
        assert_eq!(r.status, 401, "{headers:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert_eq!(r.json(), json!({"error": "unauthorized"}));
    }
    // The host token is accepted too.
    let r = post_with(addr, &[("authorization", &host_bearer)], &body).await;
    assert_eq!(r.status, 200);

    // MCP-Protocol-Version: absent or supported passes; anything else is 400.
    for version in VERSIONS {
        let r = post_with(
            addr,
            &[
                ("authorization", &bearer),
                ("mcp-protocol-version", version),
            ],
            &body,
        )
        .await;
        assert_eq!(r.status, 200, "{version}");
    }
    for version in ["2025-03-26", "2026-07-28", "1"] {
        let r = post_with(
            addr,
            &[
                ("authorization", &bearer),
                ("mcp-protocol-version", version),
            ],
            &body,
        )
        .await;
        assert_eq!(r.status, 400, "{version}");
        assert_eq!(
            r.json(),
            json!({"error": "unsupported MCP-Protocol-Version", "requested": version, "supported": VERSIONS})
        );
    }
    // In order: a bad version without a token is 401; a bad origin with a bad version is 403.
    let r = post_with(addr, &[("mcp-protocol-version", "1")], &body).await;
    assert_eq!(r.status, 401);
    let r = post_with(
        addr,
        &[("origin", "http://evil.com"), ("mcp-protocol-version", "1")],
        &body,
    )
    .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn transport_status_codes_for_every_kind_of_message() {
    let server = mcp_server(&[]).await;
    let addr = server.mcp_addr();
    let mut mcp = McpClient::new(addr, &server.auth_token);
    let bearer = format!("Bearer {}", server.auth_token);

    // A notification: 202, empty.
    let r = mcp
        .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    assert_eq!((r.status, r.body.len()), (202, 0));
    // A response to a request the server never sent: 202 too.
    let r = mcp
        .post(&json!({"jsonrpc": "2.0", "id": 9, "result": {}}))
        .await;
    assert_eq!(r.status, 202);

    // A batch: 400, -32600.
    let r = mcp.post(&json!([ping(), ping()])).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "batches are not supported"}})
    );
    // Not JSON: 400, -32700.
    for junk in ["{not json", "", "\u{0}"] {
        let r = mcp.post_raw(junk.to_owned(), &[]).await.unwrap();
        assert_eq!(r.status, 400, "{junk:?}");
        let body = r.json();
        assert_eq!(body["id"], Value::Null);
        assert_eq!(body["error"]["code"], -32700, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("parse error: ")
        );
    }
    // JSON but not a JSON-RPC request: 400, -32600.
    for junk in [
        json!({"id": 1, "method": "ping"}),
        json!(7),
        json!({"jsonrpc": "2.0", "id": 1, "method": 5}),
    ] {
        let r = mcp.post(&junk).await;
        assert_eq!(r.status, 400, "{junk}");
        assert_eq!(r.json()["error"]["code"], -32600, "{junk}");
    }
    // An unknown method: a JSON-RPC error, HTTP 200.
    assert_eq!(
        mcp.err("sampling/createMessage", json!({})).await,
        (-32601, "unknown method: sampling/createMessage".to_owned())
    );
    assert_eq!(
        mcp.ok("resources/list", json!({})).await,
        json!({"resources": []})
    );

    // GET (and any other method): 405 with Allow: POST, DELETE.
    for method in ["GET", "PUT", "PATCH"] {
        let r = request(addr, method, "/mcp", &[("authorization", &bearer)], "")
            .await
            .unwrap();
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("POST, DELETE"), "{method}");
    }
    // A body over --max-message-bytes: 413, nothing read.
    let small = mcp_server(&["--max-message-bytes", "1024"]).await;
    let big =
        json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x".repeat(2000)}});
    let r = McpClient::new(small.mcp_addr(), &small.auth_token)
        .post(&big)
        .await;
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].is_string());
}

#[tokio::test]
async fn initialize_negotiates_the_revision_and_sessions_end_with_delete() {
    let server = mcp_server(&[]).await;
    let addr = server.mcp_addr();
    let bearer = format!("Bearer {}", server.auth_token);
    for (asked, answered) in [
        ("2024-11-05", "2024-11-05"),
        ("2025-06-18", "2025-06-18"),
        ("2025-11-25", "2025-11-25"),
        ("2025-03-26", "2025-11-25"),
        ("2099-01-01", "2025-11-25"),
    ] {
        let mut mcp = McpClient::new(addr, &server.auth_token);
        let result = mcp.initialize(asked).await.unwrap();
        assert_eq!(
            result,
            json!({
                "protocolVersion": answered,
                "capabilities": {
                    "tools": {},
                    "prompts": {"listChanged": false},
                    "resources": {"subscribe": false, "listChanged": false},
                },
                "serverInfo": {"name": "car-server", "version": env!("CARGO_PKG_VERSION")},
            }),
            "{asked}"
        );
        let session = mcp.session.clone().unwrap();
        assert!(uuid::Uuid::parse_str(&session).is_ok(), "{session}");
    }

    let mut mcp = McpClient::new(addr, &server.auth_token);
    mcp.initialize("2025-11-25").await.unwrap();
    let session = mcp.session.clone().unwrap();
    let r = mcp
        .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(mcp.ok("ping", json!({})).await, json!({}));
    // Requests without the session are served too (it "may be sent later").
    assert_eq!(
        McpClient::new(addr, &server.auth_token)
            .ok("ping", json!({}))
            .await,
        json!({})
    );

    // DELETE with the session: 204; then the session is unknown: 404 for POST and DELETE.
    let delete = |id: String| {
        let bearer = bearer.clone();
        async move {
            request(
                addr,
                "DELETE",
                "/mcp",
                &[("authorization", &bearer), ("mcp-session-id", &id)],
                "",
            )
            .await
            .unwrap()
        }
    };
    let r = delete(session.clone()).await;
    assert_eq!((r.status, r.body.len()), (204, 0));
    let r = mcp.post(&ping()).await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    assert_eq!(delete(session.clone()).await.status, 404);
    assert_eq!(delete("no-such-session".into()).await.status, 404);
    // DELETE without the header names what is missing; DELETE is checked like POST.
    let r = request(addr, "DELETE", "/mcp", &[("authorization", &bearer)], "")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let r = request(addr, "DELETE", "/mcp", &[("mcp-session-id", &session)], "")
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    // initialize with a stale session starts a new one.
    let fresh = mcp.initialize("2025-11-25").await.unwrap();
    assert_eq!(fresh["protocolVersion"], "2025-11-25");
    assert_ne!(mcp.session.as_deref(), Some(session.as_str()));
    assert_eq!(mcp.ok("ping", json!({})).await, json!({}));
}

#[tokio::test]
async fn tools_list_every_tool_with_its_schema_and_hints() {
    let server = mcp_server(&[]).await;
    let mut mcp = McpClient::new(server.mcp_addr(), &server.auth_token);
    let tools = mcp.ok("tools/list", json!({})).await["tools"].clone();
    let names: Vec<&str> = tools
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "memory_add_fact",
            "memory_query",
            "memory_delete",
            "runs_list",
            "runs_get_trace",
            "approvals_list",
            "approvals_resolve"
        ]
    );
    // (read-only, destructive) as §16 says.
    let hints = [
        ("memory_add_fact", false, false),
        ("memory_query", true, false),
        ("memory_delete", false, true),
        ("runs_list", true, false),
        ("runs_get_trace", true, false),
        ("approvals_list", true, false),
        ("approvals_resolve", false, false),
    ];
    for (tool, (name, read_only, destructive)) in tools.as_array().unwrap().iter().zip(hints) {
        assert_eq!(tool["name"], name);
        assert!(tool["description"].is_string());
        assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
        assert!(tool["inputSchema"]["properties"].is_object(), "{tool}");
        let a = &tool["annotations"];
        assert_eq!(a["readOnlyHint"], read_only, "{name}");
        assert_eq!(a["destructiveHint"], destructive, "{name}");
        assert!(a["idempotentHint"].is_boolean(), "{name}");
        assert_eq!(a["openWorldHint"], false, "{name}");
    }
    assert_eq!(
        tools[0]["inputSchema"]["required"],
        json!(["subject", "body"])
    );
}

#[tokio::test]
async fn memory_tools_and_the_context_prompt_act_on_the_shared_scope_through_the_log() {
    let server = mcp_server(&[]).await;
    let mut mcp = McpClient::new(server.mcp_addr(), &server.auth_token);
    mcp.initialize("2025-11-25").await.unwrap();

    // memory_add_fact: ids mcp-<n>, source mcp; the result is the scope's fact count.
    assert_eq!(
        mcp.tool(
            "memory_add_fact",
            json!({"subject": "editor", "body": "the team uses helix"})
        )
        .await,
        json!(1)
    );
    assert_eq!(
        mcp.tool(
            "memory_add_fact",
            json!({"subject": "deploy", "body": "deploys happen on Tuesdays", "kind": "pattern"})
        )
        .await,
        json!(2)
    );
    // Bad arguments: isError with the -32602 message.
    assert_eq!(
        mcp.tool_error("memory_add_fact", json!({"subject": "s", "body": ""}))
            .await,
        "memory.add_fact: body is empty"
    );
    assert_eq!(
        mcp.tool_error(
            "memory_add_fact",
            json!({"subject": "x".repeat(1025), "body": "b"})
        )
        .await,
        "memory.add_fact: subject exceeds 1024 bytes"
    );
    assert_eq!(
        mcp.tool_error(
            "memory_add_fact",
            json!({"subject": "s", "body": "b", "kind": "Bad"})
        )
        .await,
        "memory.add_fact: kind has a character outside [a-z_]"
    );
    let missing = mcp
        .tool_error("memory_add_fact", json!({"subject": "s"}))
        .await;
    assert!(
        missing.starts_with("invalid params: ") && missing.contains("body"),
        "{missing}"
    );
    let wrong_type = mcp
        .tool_error("memory_add_fact", json!({"subject": 5, "body": "b"}))
        .await;
    assert!(
        wrong_type.starts_with("invalid params: subject: "),
        "{wrong_type}"
    );
    assert_eq!(
        mcp.tool_error("memory_query", json!({"query": "x", "k": 0}))
            .await,
        "memory.query: k must be an integer from 1 to 50"
    );
    assert_eq!(
        mcp.tool_error("memory_query", json!({"query": ""})).await,
        "memory.query: query is empty"
    );
    assert_eq!(
        mcp.tool_error("memory_query", json!({"query": "q".repeat(4097)}))
            .await,
        "memory.query: query exceeds 4096 bytes"
    );
    let answer = mcp.call_tool("memory_query", json!("not an object")).await;
    assert_eq!(answer["isError"], true);
    assert_eq!(
        answer["content"][0]["text"],
        "invalid params: arguments: expected an object"
    );

    // Unknown or missing tool name: a JSON-RPC -32602.
    assert_eq!(
        mcp.err("tools/call", json!({"name": "nope", "arguments": {}}))
            .await,
        (-32602, "unknown tool: nope".to_owned())
    );
    assert_eq!(
        mcp.err("tools/call", json!({"arguments": {}})).await,
        (-32602, "unknown tool: (none)".to_owned())
    );

    // memory_query: memory.query's shape, best first, with the fact's source.
    let hits = mcp
        .tool(
            "memory_query",
            json!({"query": "when do deploys happen", "k": 5}),
        )
        .await;
    assert_eq!(hits.as_array().unwrap().len(), 1, "{hits}");
    let hit = &hits[0];
    assert_eq!(
        (
            &hit["fact_id"],
            &hit["subject"],
            &hit["body"],
            &hit["kind"],
            &hit["source"],
            &hit["tags"]
        ),
        (
            &json!("mcp-2"),
            &json!("deploy"),
            &json!("deploys happen on Tuesdays"),
            &json!("pattern"),
            &json!("mcp"),
            &json!([])
        )
    );
    let confidence = hit["confidence"].as_f64().unwrap();
    assert!(confidence > 0.0 && confidence < 1.0, "{hit}");
    assert_eq!(
        mcp.tool("memory_query", json!({"query": "zebra"})).await,
        json!([])
    );

    // The prompt: memory.build_context on shared.
    let prompts = mcp.ok("prompts/list", json!({})).await;
    assert_eq!(prompts["prompts"][0]["name"], "car_context");
    assert_eq!(
        prompts["prompts"][0]["arguments"][0],
        json!({"name": "query", "description": "What the context is for (1-4096 bytes).", "required": true})
    );
    let prompt = mcp
        .ok("prompts/get", json!({"name": "car_context", "arguments": {"query": "when do deploys happen", "mode": "fast"}}))
        .await;
    assert_eq!(
        prompt["messages"],
        json!([{"role": "user", "content": {"type": "text", "text": "## Facts\n- [mcp-2] deploy: deploys happen on Tuesdays\n\n"}}])
    );
    let prompt = mcp
        .ok(
            "prompts/get",
            json!({"name": "car_context", "arguments": {"query": "deploys on kubernetes"}}),
        )
        .await;
    assert_eq!(
        prompt["messages"][0]["content"]["text"],
        "## Facts\n- [mcp-2] deploy: deploys happen on Tuesdays\n\n## Known Unknowns\n- kubernetes\n\n"
    );
    assert_eq!(
        mcp.err(
            "prompts/get",
            json!({"name": "other", "arguments": {"query": "x"}})
        )
        .await,
        (-32602, "unknown prompt: other".to_owned())
    );
    let (code, message) = mcp.err("prompts/get", json!({"name": "car_context"})).await;
    assert_eq!(code, -32602);
    assert!(message.contains("query"), "{message}");
    assert_eq!(
        mcp.err(
            "prompts/get",
            json!({"name": "car_context", "arguments": {"query": "x", "mode": "slow"}})
        )
        .await,
        (
            -32602,
            "invalid params: mode: must be full or fast".to_owned()
        )
    );

    // memory_delete: memory.delete's shape; a second delete finds nothing.
    assert_eq!(
        mcp.tool("memory_delete", json!({"id": "mcp-1"})).await,
        json!({"id": "mcp-1", "deleted": true, "kind": "pattern", "fact_count": 1})
    );
    assert_eq!(
        mcp.tool("memory_delete", json!({"id": "mcp-1"})).await,
        json!({"id": "mcp-1", "deleted": false, "kind": null, "fact_count": 1})
    );
    // A new fact never reuses a minted id.
    assert_eq!(
        mcp.tool("memory_add_fact", json!({"subject": "a", "body": "b"}))
            .await,
        json!(2)
    );
    let hits = mcp.tool("memory_query", json!({"query": "a b"})).await;
    assert_eq!(hits[0]["fact_id"], "mcp-3", "{hits}");

    // Every change is an event in the log, with MCP's source and no session.
    let mut host = server.auth_host().await;
    let events = host
        .whole_log(Some(&["memory.fact_added", "memory.fact_deleted"]))
        .await;
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "memory.fact_added",
            "memory.fact_added",
            "memory.fact_deleted",
            "memory.fact_added"
        ]
    );
    let first = &events[0]["data"];
    assert_eq!(first["scope"], "shared");
    assert_eq!(first["fact"]["fact_id"], "mcp-1");
    assert_eq!(first["fact"]["source"], "mcp");
    assert_eq!(first["client_id"], Value::Null);

    // And they survive a crash: the same answers after SIGKILL and a restart.
    let before = mcp.tool("memory_query", json!({"query": "deploys"})).await;
    drop(host);
    let mut server = server;
    server.kill().await.unwrap();
    server.restart().await.unwrap();
    let mut mcp = McpClient::new(server.mcp_addr(), &server.auth_token);
    assert_eq!(
        mcp.tool("memory_query", json!({"query": "deploys"})).await,
        before
    );
}

/// Starts a run (as an agent) and asks three approvals (as a client): one ordinary, one
/// system-level, one more ordinary. Returns (run id, [ordinary, system, ordinary]).
async fn runs_and_approvals(server: &Server) -> (String, Vec<String>, Client, Client) {
    let mut agent = server.auth_agent("agent-7").await;
    let run = agent.ok("runs.start", json!({"intent": "ship it"})).await;
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    agent
        .ok(
            "runs.record_turns",
            json!({"run_id": run_id, "turns": [{"prompt": "p", "tool": "t", "output": "o"}]}),
        )
        .await;
    let mut client = server.auth_client().await;
    client.handshake().await;
    let mut ids = Vec::new();
    for system_level in [false, true, false] {
        let approval = client
            .ok(
                "host.request_approval",
                json!({"action": "deploy", "system_level": system_level}),
            )
            .await;
        ids.push(approval["id"].as_str().unwrap().to_owned());
    }
    (run_id, ids, agent, client)
}

#[tokio::test]
async fn runs_and_approvals_tools_follow_the_callers_role() {
    let server = mcp_server(&[]).await;
    let (run_id, ids, _agent, _client) = runs_and_approvals(&server).await;
    let (ordinary, system, other) = (&ids[0], &ids[1], &ids[2]);

    // The daemon token: a client, which owns no run and sees only system-level approvals.
    let mut client = McpClient::new(server.mcp_addr(), &server.auth_token);
    client.initialize("2025-06-18").await.unwrap();
    assert_eq!(
        client.tool("runs_list", json!({})).await,
        json!({"agent_id": null, "runs": []})
    );
    assert_eq!(
        client
            .tool("runs_get_trace", json!({"run_id": run_id}))
            .await,
        json!({"run_id": run_id, "not_found": true})
    );
    let approvals = client
        .tool("approvals_list", json!({"status": "pending"}))
        .await;
    let visible: Vec<&str> = approvals["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(visible, [system.as_str()]);
    assert_eq!(
        client
            .tool_error(
                "approvals_resolve",
                json!({"approval_id": ordinary, "resolution": "approve"})
            )
            .await,
        format!("only a host session may resolve approval {ordinary}")
    );
    let resolved = client
        .tool(
            "approvals_resolve",
            json!({"approval_id": system, "resolution": "approve"}),
        )
        .await;
    assert_eq!(
        (
            resolved["id"].as_str(),
            &resolved["status"],
            &resolved["resolution"]
        ),
        (Some(system.as_str()), &json!("resolved"), &json!("approve"))
    );

    // The host token: a host, which reads every run and resolves any approval.
    let mut host = McpClient::new(server.mcp_addr(), &server.host_token);
    let listed = host
        .tool("runs_list", json!({"agent_id": "agent-7", "limit": 10}))
        .await;
    assert_eq!(listed["runs"].as_array().unwrap().len(), 1, "{listed}");
    let summary = &listed["runs"][0];
    assert_eq!(
        (
            &summary["run_id"],
            &summary["status"],
            &summary["turn_count"]
        ),
        (&json!(run_id), &json!("in_progress"), &json!(1))
    );
    let trace = host.tool("runs_get_trace", json!({"run_id": run_id})).await;
    assert_eq!(trace["agent_id"], "agent-7");
    let records: Vec<&str> = trace["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["record"].as_str().unwrap())
        .collect();
    assert_eq!(records, ["started", "turn"]);
    assert_eq!(trace["cursor"], 2);
    let later = host
        .tool("runs_get_trace", json!({"run_id": run_id, "cursor": 1}))
        .await;
    assert_eq!(later["records"].as_array().unwrap().len(), 1);
    assert_eq!(
        host.tool_error("runs_list", json!({"status": "bogus"}))
            .await,
        "invalid params: status: must be in_progress, completed or incomplete"
    );
    assert_eq!(
        host.tool_error("runs_list", json!({"limit": 0})).await,
        "invalid params: limit: must be at least 1"
    );
    let all = host.tool("approvals_list", json!({})).await;
    assert_eq!(all["approvals"].as_array().unwrap().len(), 3);
    assert_eq!(
        host.tool_error("approvals_list", json!({"status": "maybe"}))
            .await,
        "invalid params: status: must be pending, resolved or expired"
    );
    assert_eq!(
        host.tool_error(
            "approvals_resolve",
            json!({"approval_id": other, "resolution": "perhaps"})
        )
        .await,
        "invalid params: resolution: must be one of approve, deny"
    );
    let denied = host
        .tool(
            "approvals_resolve",
            json!({"approval_id": other, "resolution": "deny"}),
        )
        .await;
    assert_eq!(
        (&denied["status"], &denied["resolution"]),
        (&json!("resolved"), &json!("deny"))
    );
    assert_eq!(
        host.tool_error(
            "approvals_resolve",
            json!({"approval_id": other, "resolution": "deny"})
        )
        .await,
        format!("approval {other} is already resolved")
    );
    assert!(
        host.tool_error(
            "approvals_resolve",
            json!({"approval_id": "nope", "resolution": "deny"})
        )
        .await
        .contains("nope")
    );

    // The resolutions are in the log, made by the MCP caller (its session, or `mcp`).
    let mut ws_host = server.auth_host().await;
    let resolved = ws_host.whole_log(Some(&["approval.resolved"])).await;
    let by: Vec<(&str, &str)> = resolved
        .iter()
        .map(|e| {
            (
                e["data"]["approval_id"].as_str().unwrap(),
                e["data"]["client_id"].as_str().unwrap(),
            )
        })
        .collect();
    let session = format!("mcp:{}", client.session.as_deref().unwrap());
    assert_eq!(
        by,
        [(system.as_str(), session.as_str()), (other.as_str(), "mcp")]
    );
    // And the WebSocket sees what MCP did.
    ws_host.handshake().await;
    let pending = ws_host
        .ok("host.approvals", json!({"status": "pending"}))
        .await;
    let pending: Vec<&str> = pending["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(pending, [ordinary.as_str()]);
}

#[tokio::test]
async fn with_auth_disabled_no_token_is_asked_and_the_caller_is_unrestricted() {
    let server = mcp_server(&["--no-auth"]).await;
    let (run_id, ids, _agent, _client) = runs_and_approvals(&server).await;
    let mut mcp = McpClient::anonymous(server.mcp_addr());
    let listed = mcp.tool("runs_list", json!({})).await;
    assert_eq!(listed["runs"][0]["run_id"], json!(run_id));
    let resolved = mcp
        .tool(
            "approvals_resolve",
            json!({"approval_id": ids[0], "resolution": "approve"}),
        )
        .await;
    assert_eq!(resolved["status"], "resolved");
    // A wrong token is not even looked at.
    let mut wrong = McpClient::new(server.mcp_addr(), "wrong");
    assert_eq!(wrong.ok("ping", json!({})).await, json!({}));
}

#[tokio::test]
async fn an_explicit_mcp_address_that_is_taken_exits_2() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let data = car_tests::DataDir::new();
    let (status, _, stderr) = builder()
        .args(["--port", "0", "--mcp-bind", &addr, "--data-dir"])
        .args([data.path().as_os_str()])
        .run_to_exit()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("mcp: cannot listen on {addr}")),
        "{stderr}"
    );
    // The failed start left its log clean: the next start (MCP off) replays it and runs.
    assert!(
        !data.path().join("auth-token").exists(),
        "token files removed"
    );
    let mut server = builder().data_dir(&data).spawn().await.unwrap();
    server.auth_client().await.ok("runs.list", json!({})).await;
    assert_eq!(server.stop().await.unwrap().code(), Some(0));
}

#[tokio::test]
async fn a_taken_default_address_is_skipped_with_a_warning() {
    // Hold the default port (if something else already holds it, it is taken all the same).
    let default = car_gateway::config::DEFAULT_MCP_BIND;
    let _held = TcpListener::bind(default).ok();
    let server = builder()
        .mcp_default_address()
        .spawn()
        .await
        .unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(server.mcp, None);
    let stderr = server.stderr();
    assert!(
        stderr.iter().any(|l| l.contains("WARN")
            && l.contains(&format!(
                "mcp: cannot listen on the default address {default}"
            ))),
        "{stderr:?}"
    );
    assert!(
        stderr.iter().any(|l| l.ends_with("mcp: disabled")),
        "{stderr:?}"
    );
    server.auth_client().await.ok("runs.list", json!({})).await;
}

#[tokio::test]
async fn mcp_disabled_opens_no_listener_and_a_stop_with_mcp_on_is_clean() {
    let server = builder().spawn().await.unwrap();
    assert_eq!(server.mcp, None);
    assert!(server.stderr().iter().any(|l| l.ends_with("mcp: disabled")));

    let mut server = mcp_server(&[]).await;
    let addr = server.mcp_addr();
    let mut mcp = McpClient::new(addr, &server.auth_token);
    mcp.tool("memory_add_fact", json!({"subject": "s", "body": "b"}))
        .await;
    assert_eq!(server.stop().await.unwrap().code(), Some(0));
    assert!(
        request(addr, "GET", "/mcp/health", &[], "").await.is_err(),
        "closed after the stop"
    );
}

#[tokio::test]
async fn in_process_with_mcp_the_stopped_state_is_the_replay_of_the_log() {
    let server = InProcessServer::start(|config| {
        config.mcp_bind = Bind::Explicit(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await
    .unwrap();
    let mut mcp = McpClient::new(server.mcp_addr(), &server.auth_token);
    mcp.initialize("2025-11-25").await.unwrap();
    mcp.tool(
        "memory_add_fact",
        json!({"subject": "s", "body": "b", "kind": "identity"}),
    )
    .await;
    mcp.tool("memory_add_fact", json!({"subject": "t", "body": "c"}))
        .await;
    mcp.tool("memory_delete", json!({"id": "mcp-2"})).await;
    let data = server.data_dir().clone();
    let stopped = server.stop().await.unwrap();
    let (head, digest) = car_tests::replay_digest(data.path()).unwrap();
    assert_eq!((head, digest), (stopped.head, stopped.digest));
}

/// The official MCP Python SDK's streamable HTTP client against the daemon: list the tools,
/// call each, get the `car_context` prompt (`tests/py/mcp_client.py`). Needs
/// `CAR_TEST_PYTHON_SDKS` = the python of the venv `scripts/setup-python-sdks.sh` makes;
/// without it the test says it skipped.
#[tokio::test]
async fn official_python_sdk_client() {
    const TEST: &str = "mcp::official_python_sdk_client";
    let Some(python) = std::env::var_os("CAR_TEST_PYTHON_SDKS").filter(|p| !p.is_empty()) else {
        eprintln!(
            "SKIPPED {TEST}: CAR_TEST_PYTHON_SDKS is not set (run scripts/setup-python-sdks.sh and export its output)"
        );
        return;
    };
    let python = PathBuf::from(python);
    let probe = tokio::process::Command::new(&python)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('mcp'))",
        ])
        .output()
        .await;
    let version = match probe {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => {
            eprintln!(
                "SKIPPED {TEST}: {} has no `mcp` package: {}",
                python.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(err) => {
            eprintln!("SKIPPED {TEST}: cannot run {}: {err}", python.display());
            return;
        }
    };

    let server = mcp_server(&[]).await;
    let (run_id, ids, _agent, _client) = runs_and_approvals(&server).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/mcp_client.py");
    let url = format!("http://{}/mcp", server.mcp_addr());
    let out = tokio::time::timeout(
        car_tests::WAIT * 3,
        tokio::process::Command::new(&python)
            .arg(&script)
            .args([
                url.as_str(),
                server.host_token.as_str(),
                run_id.as_str(),
                ids[0].as_str(),
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Python client did not finish in time")
    .expect("running the Python client");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mcp {version} client failed: {stderr}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!(
            "not JSON ({err}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });

    assert_eq!(report["server"]["name"], "car-server", "{report}");
    assert_eq!(report["protocol_version"], "2025-11-25");
    assert_eq!(
        report["tools"],
        json!([
            "memory_add_fact",
            "memory_query",
            "memory_delete",
            "runs_list",
            "runs_get_trace",
            "approvals_list",
            "approvals_resolve"
        ])
    );
    let calls = &report["calls"];
    for (name, call) in calls.as_object().unwrap() {
        assert_eq!(call["isError"], false, "{name}: {call}");
    }
    assert_eq!(calls["memory_add_fact"]["text"], "1");
    let hits: Value =
        serde_json::from_str(calls["memory_query"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(hits[0]["fact_id"], "mcp-1");
    assert_eq!(hits[0]["source"], "mcp");
    assert_eq!(
        calls["runs_list"]["structured"]["runs"][0]["run_id"],
        json!(run_id)
    );
    assert_eq!(
        calls["runs_get_trace"]["structured"]["records"][0]["record"],
        "started"
    );
    assert_eq!(
        calls["approvals_list"]["structured"]["approvals"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        calls["approvals_resolve"]["structured"]["status"],
        "resolved"
    );
    assert_eq!(
        calls["memory_delete"]["structured"],
        json!({"id": "mcp-1", "deleted": true, "kind": "pattern", "fact_count": 0})
    );
    assert_eq!(report["prompts"], json!(["car_context"]));
    assert_eq!(
        report["prompt"],
        json!([{"role": "user", "text": "## Facts\n- [mcp-1] editor: the team uses helix\n\n"}])
    );
    assert_eq!(report["bad_arguments"]["isError"], true);
    assert_eq!(
        report["bad_arguments"]["text"],
        "memory.add_fact: body is empty"
    );
    eprintln!("{TEST}: the official MCP Python SDK {version} passed");
}
