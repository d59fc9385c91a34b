//! PROTOCOL.md §2 and §9 (tokens): `session.auth` with the daemon token (role `client`),
//! bound to an `agent_id` (role `agent`, one live connection per agent id), the host token
//! (role `host`); wrong tokens, repeated auth, calls before auth (`-32001` and close);
//! auth disabled; the token files; `server.handshake` (`-32006`, idempotence) and `host.*`
//! before it (`-32005`).

use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};

use crate::{builder, server};

#[tokio::test]
async fn a_call_before_auth_is_minus_32001_and_the_connection_closes() {
    let server = server(&[]).await;
    for method in [
        "runs.list",
        "server.handshake",
        "log.read",
        "no.such.method",
    ] {
        let mut client = server.connect().await;
        let err = client.err(method, json!({})).await;
        assert_eq!(err.code, -32001, "{method}: {err}");
        assert_eq!(err.message, "auth required: send session.auth first");
        client.wait_closed().await.unwrap();
    }
}

/// Regression (issue 9): a connection that never authenticated was kept forever, so idle
/// strangers could hold every connection slot. It is closed (1008 "auth timeout") after
/// the auth timeout (30 s; 300 ms here), its session recorded as ended `auth_timeout`;
/// an authenticated session silent as long is kept.
#[tokio::test]
async fn an_unauthenticated_connection_is_closed_after_the_auth_timeout() {
    let server = server(&["--auth-timeout-ms", "300"]).await;
    let mut host = server.auth_host().await;
    // The session's end is recorded after its close frame is sent: follow the log for it.
    host.ok("log.subscribe", json!({})).await;
    let mut stranger = server.connect().await;
    let closed = stranger
        .wait_closed()
        .await
        .unwrap()
        .expect("a close frame");
    assert_eq!(u16::from(closed.code), 1008);
    assert_eq!(closed.reason.as_str(), "auth timeout");
    // The authenticated session outlived the deadline and still answers.
    host.ok("runs.list", json!({})).await;
    let closed = host
        .next_notification_where("log.event", |e| e["kind"] == "session.closed")
        .await
        .unwrap();
    assert_eq!(closed["data"]["reason"], "auth_timeout", "{closed}");
}

#[tokio::test]
async fn auth_results_name_the_role() {
    let server = server(&[]).await;
    let mut client = server.connect().await;
    let result = client
        .ok("session.auth", json!({"token": server.auth_token}))
        .await;
    assert_eq!(
        result,
        json!({"ok": true, "auth_enabled": true, "role": "client"})
    );
    let mut agent = server.connect().await;
    let result = agent
        .ok(
            "session.auth",
            json!({"token": server.auth_token, "agent_id": "agent-7"}),
        )
        .await;
    assert_eq!(
        result,
        json!({"ok": true, "auth_enabled": true, "role": "agent", "agent_id": "agent-7"})
    );
    let mut host = server.connect().await;
    let result = host
        .ok("session.auth", json!({"host_token": server.host_token}))
        .await;
    assert_eq!(
        result,
        json!({"ok": true, "auth_enabled": true, "role": "host"})
    );
    // Each session then works in its role.
    client.ok("runs.list", json!({})).await;
    agent.ok("runs.list", json!({})).await;
    host.ok("log.read", json!({"limit": 1})).await;
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_the_session_may_try_again() {
    let server = server(&[]).await;
    let mut client = server.connect().await;
    let wrong = [
        json!({"token": "nope"}),
        json!({"token": server.host_token}),
        json!({"host_token": server.auth_token}),
        json!({"token": "", "agent_id": "a"}),
        json!({"token": format!("{} ", server.auth_token)}),
    ];
    for params in wrong {
        let err = client.err("session.auth", params.clone()).await;
        assert_eq!(err.code, -32603, "{params}: {err}");
        assert_eq!(err.message, "auth failed: token mismatch", "{params}");
    }
    // Still connected, still unauthenticated, free to retry; the failed agent claim
    // attached nothing.
    let result = client
        .ok(
            "session.auth",
            json!({"token": server.auth_token, "agent_id": "a"}),
        )
        .await;
    assert_eq!(result["role"], "agent");
    client.ok("runs.list", json!({})).await;

    // A failed auth leaves the session unauthenticated: any other call is -32001.
    let mut other = server.connect().await;
    other.err("session.auth", json!({"token": "nope"})).await;
    assert_eq!(other.err("runs.list", json!({})).await.code, -32001);
    other.wait_closed().await.unwrap();
}

#[tokio::test]
async fn auth_on_an_authenticated_session_is_already_authenticated() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    for params in [
        json!({"token": server.auth_token}),
        json!({"host_token": server.host_token}),
        json!({"token": "wrong"}),
    ] {
        let err = client.err("session.auth", params).await;
        assert_eq!(
            (err.code, err.message.as_str()),
            (-32600, "already authenticated")
        );
    }
    // The session keeps its role: still a client, not a host.
    let err = client.err("log.read", json!({})).await;
    assert_eq!(err.code, -32603, "{err}");
    let mut host = server.auth_host().await;
    let err = host
        .err(
            "session.auth",
            json!({"token": server.auth_token, "agent_id": "x"}),
        )
        .await;
    assert_eq!(
        (err.code, err.message.as_str()),
        (-32600, "already authenticated")
    );
}

#[tokio::test]
async fn an_agent_id_is_held_by_one_live_connection() {
    let server = server(&[]).await;
    let mut host = server.auth_host().await;
    host.ok("log.subscribe", json!({})).await;
    let mut first = server.auth_agent("bot").await;
    let mut second = server.connect().await;
    let err = second
        .err(
            "session.auth",
            json!({"token": server.auth_token, "agent_id": "bot"}),
        )
        .await;
    assert_eq!(err.code, -32603);
    assert_eq!(
        err.message,
        "agent 'bot' is already attached on another connection"
    );
    // The refused session may authenticate otherwise.
    let result = second
        .ok(
            "session.auth",
            json!({"token": server.auth_token, "agent_id": "bot-2"}),
        )
        .await;
    assert_eq!(result["agent_id"], "bot-2");
    first.ok("runs.list", json!({})).await;
    // Once the holder is gone (its session.closed is in the log), the id is free again.
    first.close().await;
    host.next_notification_where("log.event", |e| {
        e["kind"] == "session.closed" && e["data"]["agent_id"] == "bot"
    })
    .await
    .unwrap();
    let mut third = server.auth_agent("bot").await;
    third.ok("runs.list", json!({})).await;
}

#[tokio::test]
async fn token_files_are_43_base64url_characters_mode_0600() {
    let server = server(&[]).await;
    let dir = server.data_dir().path();
    let mut tokens = Vec::new();
    for name in ["auth-token", "host-token"] {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let token = text.trim_end().to_owned();
        assert_eq!(token.len(), 43, "{name}: {token:?}");
        assert!(
            token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{name}: {token:?}"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
        tokens.push(token);
    }
    assert_ne!(tokens[0], tokens[1]);
    assert_eq!(tokens[0], server.auth_token);
    assert_eq!(tokens[1], server.host_token);
}

#[tokio::test]
async fn car_auth_token_replaces_the_daemon_token() {
    let server = builder()
        .env("CAR_AUTH_TOKEN", "  my-own-daemon-token  ")
        .spawn()
        .await
        .unwrap();
    assert_eq!(server.auth_token, "my-own-daemon-token");
    let mut client = server.connect().await;
    let result = client
        .ok("session.auth", json!({"token": "my-own-daemon-token"}))
        .await;
    assert_eq!(result["role"], "client");
    // The host token is still generated.
    assert_eq!(server.host_token.len(), 43);
    // A blank one is ignored.
    let blank = builder()
        .env("CAR_AUTH_TOKEN", "   ")
        .spawn()
        .await
        .unwrap();
    assert_eq!(blank.auth_token.len(), 43);
}

#[tokio::test]
async fn with_auth_disabled_every_session_is_served_with_any_token() {
    auth_disabled_serves_everyone(server(&["--no-auth"]).await).await;
}

/// PROTOCOL.md §9 names `CAR_NO_AUTH=1` (and `CAR_NO_APPROVALS=1`), but the daemon's
/// command line only accepts `true`/`false` for these variables: with `=1` it refuses to
/// start (exit 2, "invalid value '1' for '--no-auth'").
#[tokio::test]
async fn regression_car_no_auth_env_1_is_refused() {
    let server = builder()
        .env("CAR_NO_AUTH", "1")
        .spawn()
        .await
        .unwrap_or_else(|err| panic!("CAR_NO_AUTH=1: {err:#}"));
    auth_disabled_serves_everyone(server).await;
    let server = builder()
        .env("CAR_NO_APPROVALS", "1")
        .spawn()
        .await
        .unwrap_or_else(|err| panic!("CAR_NO_APPROVALS=1: {err:#}"));
    server.auth_client().await.ok("runs.list", json!({})).await;
}

#[tokio::test]
async fn car_no_auth_true_disables_auth() {
    let server = builder().env("CAR_NO_AUTH", "true").spawn().await.unwrap();
    auth_disabled_serves_everyone(server).await;
}

async fn auth_disabled_serves_everyone(server: car_tests::Server) {
    {
        // Served at once, with host and client rights.
        let mut anonymous = server.connect().await;
        let run = anonymous
            .ok("runs.start", json!({"intent": "i", "agent_id": "a"}))
            .await;
        let log = anonymous.ok("log.read", json!({})).await;
        assert!(!log["events"].as_array().unwrap().is_empty());
        let mut other = server.connect().await;
        let trace = other
            .ok("runs.get_trace", json!({"run_id": run["run_id"]}))
            .await;
        assert!(trace.get("not_found").is_none(), "{trace}");

        let cases: [(Value, Value); 5] = [
            (
                json!({}),
                json!({"ok": true, "auth_enabled": false, "role": "client"}),
            ),
            (
                json!({"token": "garbage"}),
                json!({"ok": true, "auth_enabled": false, "role": "client"}),
            ),
            (
                json!({"token": "garbage", "agent_id": "ag"}),
                json!({"ok": true, "auth_enabled": false, "role": "agent", "agent_id": "ag"}),
            ),
            (
                json!({"agent_id": "ag2"}),
                json!({"ok": true, "auth_enabled": false, "role": "agent", "agent_id": "ag2"}),
            ),
            (
                json!({"host_token": "whatever"}),
                json!({"ok": true, "auth_enabled": false, "role": "host"}),
            ),
        ];
        for (params, expected) in cases {
            let mut client = server.connect().await;
            let result = client.ok("session.auth", params.clone()).await;
            assert_eq!(result, expected, "{params}");
        }
    }
}

#[tokio::test]
async fn handshake_answers_version_2_and_is_idempotent() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let first = client
        .ok(
            "server.handshake",
            json!({"protocol_version": 2, "client_version": "test/1.0"}),
        )
        .await;
    let object = first.as_object().unwrap();
    assert_eq!(object.len(), 3, "{first}");
    assert_eq!(first["protocol_version"], 2);
    assert_eq!(first["client_protocol_version"], 2);
    assert!(
        first["server_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{first}"
    );
    let again = client.handshake().await;
    assert_eq!(again, first);
}

#[tokio::test]
async fn handshake_with_another_or_no_version_is_minus_32006() {
    let server = server(&[]).await;
    let mut client = server.auth_host().await;
    for params in [
        json!({"protocol_version": 4}),
        json!({"protocol_version": 1}),
        json!({"protocol_version": "2"}),
        json!({"protocol_version": null}),
        json!({}),
        json!({"client_version": "x"}),
    ] {
        let err = client.err("server.handshake", params.clone()).await;
        assert_eq!(err.code, -32006, "{params}: {err}");
        assert!(
            err.message
                .starts_with("protocol version mismatch: server speaks 2 and 3, client sent "),
            "{params}: {err}"
        );
    }
    // A failed handshake is no handshake.
    assert_eq!(client.err("host.approvals", json!({})).await.code, -32005);
    client.handshake().await;
    client.ok("host.approvals", json!({})).await;
}

/// PROTOCOL.md §10: version 3 negotiates capabilities; the first success fixes version and
/// capabilities; an unsupported required capability is -32008 and negotiates nothing.
#[tokio::test]
async fn handshake_v3_negotiates_capabilities_and_the_first_success_fixes_them() {
    let server = server(&[]).await;
    let mut host = server.auth_host().await;
    let refused = host
        .err(
            "server.handshake",
            json!({"protocol_version": 3, "required_capabilities": ["runs.teleport.v1"]}),
        )
        .await;
    assert_eq!(refused.code, -32008);
    assert_eq!(
        refused.message,
        "protocol capability mismatch: unsupported required capability 'runs.teleport.v1'"
    );
    assert_eq!(host.err("host.approvals", json!({})).await.code, -32005);
    let bad = host
        .err(
            "server.handshake",
            json!({"protocol_version": 3, "optional_capabilities": [""]}),
        )
        .await;
    assert_eq!(bad.code, -32602);

    let params = json!({
        "protocol_version": 3,
        "client_version": "car-py/0.57.0",
        "required_capabilities": ["infer.model-identity.v1"],
        "optional_capabilities": ["models.catalog-identity.v1", "something.else.v2"],
    });
    let first = host.ok("server.handshake", params).await;
    assert_eq!(
        first,
        json!({
            "protocol_version": 3,
            "server_version": first["server_version"],
            "client_protocol_version": 3,
            "client_version": "car-py/0.57.0",
            "negotiated_capabilities": ["infer.model-identity.v1", "models.catalog-identity.v1"],
        })
    );
    host.ok("host.approvals", json!({})).await;
    let again = host
        .ok("server.handshake", json!({"protocol_version": 3}))
        .await;
    assert_eq!(again, first);
    let other = host
        .err("server.handshake", json!({"protocol_version": 2}))
        .await;
    assert_eq!(other.code, -32006);
    assert_eq!(
        other.message,
        "protocol version mismatch: session already negotiated version 3"
    );
}

#[tokio::test]
async fn host_methods_before_the_handshake_are_minus_32005() {
    let server = server(&[]).await;
    let mut host = server.auth_host().await;
    // The check comes before dispatch: it holds for every host.* name, known or not.
    for method in [
        "host.approvals",
        "host.subscribe",
        "host.events",
        "host.no_such_method",
    ] {
        let err = host.err(method, json!({})).await;
        assert_eq!(err.code, -32005, "{method}: {err}");
        assert!(
            err.message.starts_with("protocol handshake required: "),
            "{method}: {err}"
        );
    }
    // Other methods do not need it.
    host.ok("log.read", json!({"limit": 1})).await;
    host.ok("runs.list", json!({})).await;
    let mut client = server.auth_client().await;
    client
        .ok("runs.start", json!({"intent": "i", "agent_id": "a"}))
        .await;
    assert_eq!(client.err("host.approvals", json!({})).await.code, -32005);
    // After it, host.* is dispatched: a known method answers, an unknown one is -32601.
    host.handshake().await;
    host.ok("host.approvals", json!({})).await;
    let err = host.err("host.no_such_method", json!({})).await;
    assert_eq!(
        (err.code, err.message.as_str()),
        (-32601, "unknown method: host.no_such_method")
    );
}

#[tokio::test]
async fn a_batch_may_authenticate_first_and_call_after() {
    let server = server(&[]).await;
    let mut client = server.connect().await;
    let auth = client.request_object("session.auth", json!({"token": server.auth_token}));
    let list = client.request_object("runs.list", json!({}));
    client
        .send_batch(&[auth.clone(), list.clone()])
        .await
        .unwrap();
    let reply = client.next_reply().await.unwrap();
    let responses = reply.as_array().unwrap();
    assert_eq!(responses.len(), 2, "{reply}");
    for response in responses {
        assert!(response.get("result").is_some(), "{reply}");
    }
    client.ok("runs.list", json!({})).await;
}

/// A batch whose first call comes before `session.auth` is still answered: the `-32001`
/// error in the batch's array, then the close. (Regression: the daemon stopped at the
/// `-32001` but waited for the skipped calls' answers before sending the array, so the
/// client got only the close.)
#[tokio::test]
async fn regression_unauthenticated_batch_gets_no_answer() {
    let server = server(&[]).await;
    let mut client = server.connect().await;
    let list = client.request_object("runs.list", json!({}));
    let auth = client.request_object("session.auth", json!({"token": server.auth_token}));
    client.send_batch(&[list.clone(), auth]).await.unwrap();
    let reply = client
        .next_reply()
        .await
        .expect("the batch must be answered before the connection closes");
    let responses = reply.as_array().expect("an array");
    let refused = responses
        .iter()
        .find(|r| r["id"] == list["id"])
        .expect("the call before auth is answered");
    assert_eq!(refused["error"]["code"], -32001, "{reply}");
    client.wait_closed().await.unwrap();
}

#[tokio::test]
async fn auth_params_of_the_wrong_type_are_minus_32602() {
    let server = server(&[]).await;
    let mut client = server.connect().await;
    for (params, field) in [
        (json!({"token": 5}), "token"),
        (json!({"host_token": ["x"]}), "host_token"),
        (json!({"token": "t", "agent_id": {}}), "agent_id"),
    ] {
        let err = client.err("session.auth", params.clone()).await;
        assert_eq!(err.code, -32602, "{params}: {err}");
        assert!(err.message.contains(field), "{params}: {err}");
    }
    // Still unauthenticated and open.
    client
        .ok("session.auth", json!({"token": server.auth_token}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_claims_of_one_agent_id_have_exactly_one_winner() {
    let server = server(&[]).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let endpoint = server.endpoint().clone();
        tasks.push(tokio::spawn(async move {
            let mut client = endpoint.connect().await;
            let outcome = client
                .call(
                    "session.auth",
                    json!({"token": endpoint.auth_token, "agent_id": "contested"}),
                )
                .await;
            (outcome, client)
        }));
    }
    let mut winners = 0;
    let mut sessions = Vec::new();
    for task in tasks {
        let (outcome, client) = task.await.unwrap();
        match outcome {
            Ok(result) => {
                assert_eq!(result["agent_id"], "contested");
                winners += 1;
            }
            Err(err) => {
                assert_eq!(err.code, -32603);
                assert_eq!(
                    err.message,
                    "agent 'contested' is already attached on another connection"
                );
            }
        }
        sessions.push(client);
    }
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn with_auth_disabled_an_agent_id_is_still_held_by_one_connection() {
    let server = server(&["--no-auth"]).await;
    let mut first = server.connect().await;
    first.ok("session.auth", json!({"agent_id": "solo"})).await;
    let mut second = server.connect().await;
    let err = second
        .err("session.auth", json!({"token": "x", "agent_id": "solo"}))
        .await;
    assert_eq!(err.code, -32603);
    assert_eq!(
        err.message,
        "agent 'solo' is already attached on another connection"
    );
}
