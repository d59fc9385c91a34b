//! PROTOCOL.md §1 and §8 at the transport level: text frames of JSON-RPC 2.0, parse errors
//! (`-32700`, id `null`), invalid requests (`-32600`: binary frames, malformed requests,
//! the empty batch), unknown methods (`-32601`), invalid params (`-32602`, naming the
//! field), batches answered with an array (notifications in them unanswered), the frame
//! size limit (close code 1009), hostile nesting, the connection limit (HTTP 503), and
//! keep-alive (pings; a silent peer is closed after the idle timeout).

use std::time::{Duration, Instant};

use car_tests::Client;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::server;

/// Asserts `reply` is an error response with `code` and id `null`.
fn assert_error_null_id(reply: &Value, code: i64) {
    assert_eq!(reply["jsonrpc"], "2.0", "{reply}");
    assert_eq!(reply["id"], Value::Null, "{reply}");
    assert_eq!(reply["error"]["code"], code, "{reply}");
    assert!(reply["error"]["message"].is_string(), "{reply}");
    assert!(reply.get("result").is_none(), "{reply}");
}

#[tokio::test]
async fn invalid_json_gets_a_parse_error_with_null_id_and_the_connection_stays() {
    let server = server(&[]).await;
    let mut client = server.connect().await;
    for junk in [
        "{not json",
        "",
        "{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": ",
        "nul",
    ] {
        client.send_text(junk).await.unwrap();
        let reply = client.next_reply().await.unwrap();
        assert_error_null_id(&reply, -32700);
    }
    // Still open, and a parse error is not a request: no -32001, no close.
    let auth = client
        .ok("session.auth", json!({"token": server.auth_token}))
        .await;
    assert_eq!(auth["ok"], true);
    client.send_text("]]").await.unwrap();
    assert_error_null_id(&client.next_reply().await.unwrap(), -32700);
    client.ok("runs.list", json!({})).await;
}

/// Regression (issue 9): integer ids past what an f64 or an i64/u64 holds came back as
/// floats (`1.2345678901234568e+29`). Every id comes back exactly as sent, digit for digit.
#[tokio::test]
async fn request_ids_come_back_exactly_as_sent_whatever_their_size() {
    let server = server(&[]).await;
    let mut client = server.connect().await;
    let auth = format!(
        r#"{{"jsonrpc":"2.0","id":9007199254740993,"method":"session.auth","params":{{"token":"{}"}}}}"#,
        server.auth_token
    );
    client.send_text(auth).await.unwrap();
    let reply = client.next_reply().await.unwrap();
    assert_eq!(reply["id"].to_string(), "9007199254740993");
    assert_eq!(reply["result"]["ok"], true);
    for id in [
        "18446744073709551615",
        "123456789012345678901234567890",
        "-9223372036854775809",
        "-123456789012345678901234567890",
        "0.1",
    ] {
        client
            .send_text(format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"runs.list","params":{{}}}}"#
            ))
            .await
            .unwrap();
        let reply = client.next_reply().await.unwrap();
        assert_eq!(reply["id"].to_string(), id, "{reply}");
        assert!(reply["result"]["runs"].is_array(), "{reply}");
    }
}

#[tokio::test]
async fn a_binary_frame_gets_invalid_request_with_null_id_and_the_connection_stays() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let request = json!({"jsonrpc": "2.0", "id": 7, "method": "runs.list", "params": {}});
    client
        .send_binary(request.to_string().into_bytes())
        .await
        .unwrap();
    let reply = client.next_reply().await.unwrap();
    assert_error_null_id(&reply, -32600);
    // The binary frame was not executed as a request, and the session goes on.
    let list = client.ok("runs.list", json!({})).await;
    assert_eq!(list["runs"], json!([]));
    assert!(client.unclaimed_replies().is_empty());
}

#[tokio::test]
async fn a_frame_over_max_message_bytes_closes_the_connection_with_1009() {
    let server = server(&["--max-message-bytes", "4096"]).await;
    let mut bystander = server.auth_client().await;
    let mut client = server.auth_client().await;
    // Just under the limit is served.
    let intent = "i".repeat(3000);
    let started = client
        .ok("runs.start", json!({"intent": intent, "agent_id": "a"}))
        .await;
    assert!(started["run_id"].is_string());
    // Over it: closed with 1009.
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "runs.start",
                     "params": {"intent": "x".repeat(8192), "agent_id": "a"}});
    client.send_json(&big).await.unwrap();
    let frame = client.wait_closed().await.unwrap();
    let frame = frame.expect("a close frame");
    assert_eq!(frame.code, CloseCode::Size, "{frame:?}");
    assert_eq!(u16::from(frame.code), 1009);
    // Other sessions are not affected.
    bystander.ok("runs.list", json!({})).await;
}

/// A request frame of exactly `size` bytes (a `runs.list` with padding).
fn frame_of(size: usize, id: u64) -> String {
    let base = json!({"jsonrpc": "2.0", "id": id, "method": "runs.list", "params": {"pad": ""}})
        .to_string();
    let pad = "p".repeat(size - base.len());
    let text = json!({"jsonrpc": "2.0", "id": id, "method": "runs.list", "params": {"pad": pad}})
        .to_string();
    assert_eq!(text.len(), size);
    text
}

#[tokio::test]
async fn the_size_limit_is_exact_at_max_message_bytes() {
    let server = server(&["--max-message-bytes", "4096"]).await;
    let mut client = server.auth_client().await;
    client.send_text(frame_of(4096, 1)).await.unwrap();
    let reply = client.next_reply().await.unwrap();
    assert_eq!(reply["id"], 1, "{reply}");
    assert!(reply["result"]["runs"].is_array(), "{reply}");
    client.send_text(frame_of(4097, 2)).await.unwrap();
    let frame = client.wait_closed().await.unwrap().expect("a close frame");
    assert_eq!(u16::from(frame.code), 1009);
}

#[tokio::test]
async fn a_batch_is_answered_with_one_array_and_its_notifications_are_not_answered() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let handshake = client.request_object("server.handshake", json!({"protocol_version": 2}));
    let list = client.request_object("runs.list", json!({}));
    let unknown = client.request_object("no.such", json!({}));
    let batch = [
        handshake.clone(),
        Client::notification_object("runs.list", json!({})),
        list.clone(),
        json!(5),
        unknown.clone(),
        Client::notification_object("no.such.either", json!({})),
    ];
    client.send_batch(&batch).await.unwrap();
    let reply = client.next_reply().await.unwrap();
    let responses = reply.as_array().expect("a batch is answered with an array");
    assert_eq!(responses.len(), 4, "{reply}");
    let by_id = |id: &Value| {
        responses
            .iter()
            .filter(|r| r["id"] == *id)
            .cloned()
            .collect::<Vec<_>>()
    };
    let h = by_id(&handshake["id"]);
    assert_eq!(h.len(), 1, "{reply}");
    assert_eq!(h[0]["result"]["protocol_version"], 2);
    let l = by_id(&list["id"]);
    assert_eq!(l.len(), 1, "{reply}");
    assert_eq!(l[0]["result"]["runs"], json!([]));
    let u = by_id(&unknown["id"]);
    assert_eq!(u.len(), 1, "{reply}");
    assert_eq!(u[0]["error"]["code"], -32601);
    let invalid = by_id(&Value::Null);
    assert_eq!(invalid.len(), 1, "{reply}");
    assert_eq!(invalid[0]["error"]["code"], -32600);
    // Nothing else was sent for the notifications.
    client.ok("runs.list", json!({})).await;
    assert!(
        client.unclaimed_replies().is_empty(),
        "{:?}",
        client.unclaimed_replies()
    );
}

#[tokio::test]
async fn an_empty_batch_is_an_invalid_request() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    client.send_text("[]").await.unwrap();
    let reply = client.next_reply().await.unwrap();
    assert!(reply.is_object(), "one error object, not an array: {reply}");
    assert_error_null_id(&reply, -32600);
    client.ok("runs.list", json!({})).await;
}

#[tokio::test]
async fn a_batch_of_only_notifications_gets_no_answer_but_is_executed() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    // Before a handshake, host.* is refused with -32005.
    assert_eq!(client.err("host.approvals", json!({})).await.code, -32005);
    let batch = [
        Client::notification_object("server.handshake", json!({"protocol_version": 2})),
        Client::notification_object("no.such.method", json!({})),
    ];
    client.send_batch(&batch).await.unwrap();
    // The handshake notification ran: host.* no longer needs one.
    match client.call("host.approvals", json!({})).await {
        Ok(_) => {}
        Err(err) => assert_ne!(err.code, -32005, "{err}"),
    }
    assert!(
        client.unclaimed_replies().is_empty(),
        "{:?}",
        client.unclaimed_replies()
    );
    // A single notification is not answered either.
    client
        .notify("runs.start", json!({"intent": 5}))
        .await
        .unwrap();
    client.ok("runs.list", json!({})).await;
    assert!(client.unclaimed_replies().is_empty());
}

#[tokio::test]
async fn an_unknown_method_is_minus_32601_naming_it() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let err = client.err("x", json!({})).await;
    assert_eq!(err.code, -32601);
    assert_eq!(err.message, "unknown method: x");
    let err = client.err("runs.nope", json!({"a": 1})).await;
    assert_eq!(
        (err.code, err.message.as_str()),
        (-32601, "unknown method: runs.nope")
    );
}

#[tokio::test]
async fn malformed_requests_are_invalid_requests() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let cases = [
        // Not JSON-RPC 2.0: the id is kept.
        (json!({"id": 3, "method": "runs.list"}), json!(3)),
        (
            json!({"jsonrpc": "1.0", "id": "s", "method": "runs.list"}),
            json!("s"),
        ),
        // method not a string.
        (json!({"jsonrpc": "2.0", "id": 4, "method": 17}), json!(4)),
        // params neither object nor array.
        (
            json!({"jsonrpc": "2.0", "id": 5, "method": "runs.list", "params": 3}),
            json!(5),
        ),
        // An id that is not a number, string or null: answered with id null.
        (
            json!({"jsonrpc": "2.0", "id": [1], "method": "runs.list"}),
            Value::Null,
        ),
        // Not an object at all.
        (json!("runs.list"), Value::Null),
    ];
    for (request, id) in cases {
        client.send_json(&request).await.unwrap();
        let reply = client.next_reply().await.unwrap();
        assert_eq!(reply["error"]["code"], -32600, "{request} -> {reply}");
        assert_eq!(reply["id"], id, "{request} -> {reply}");
    }
    client.ok("runs.list", json!({})).await;
}

#[tokio::test]
async fn string_and_number_ids_are_echoed_exactly_once() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    for id in [
        json!("req-α"),
        json!(0),
        json!(-12),
        json!(9007199254740991u64),
    ] {
        let request = json!({"jsonrpc": "2.0", "id": id, "method": "runs.list", "params": {}});
        client.send_json(&request).await.unwrap();
        let reply = client.next_reply().await.unwrap();
        assert_eq!(reply["id"], id, "{reply}");
        assert_eq!(reply["jsonrpc"], "2.0");
        assert!(reply["result"]["runs"].is_array(), "{reply}");
    }
    // Pipelined requests are each answered once.
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(client.request("runs.list", json!({})).await.unwrap());
    }
    for id in &ids {
        client.response(id).await.unwrap().unwrap();
    }
    client.ok("runs.list", json!({})).await;
    assert!(client.unclaimed_replies().is_empty());
}

#[tokio::test]
async fn wrong_param_types_are_minus_32602_naming_the_field() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let run = client
        .ok("runs.start", json!({"intent": "i", "agent_id": "a"}))
        .await["run_id"]
        .clone();
    let cases = [
        (
            "runs.start",
            json!({"intent": 5, "agent_id": "a"}),
            "intent",
        ),
        ("runs.start", json!({"agent_id": "a"}), "intent"),
        (
            "runs.start",
            json!({"intent": "i", "agent_id": ["a"]}),
            "agent_id",
        ),
        (
            "runs.record_turns",
            json!({"run_id": 1, "turns": [{}]}),
            "run_id",
        ),
        (
            "runs.record_turns",
            json!({"run_id": run, "turns": {}}),
            "turns",
        ),
        ("runs.record_turns", json!({"run_id": run}), "turns"),
        ("runs.complete", json!({"run_id": run}), "outcome"),
        (
            "runs.complete",
            json!({"run_id": run, "outcome": "done"}),
            "outcome",
        ),
        (
            "runs.complete",
            json!({"run_id": run, "outcome": {"summary": "s"}}),
            "outcome.status",
        ),
        ("runs.list", json!({"limit": "ten"}), "limit"),
        ("runs.list", json!({"status": "exploded"}), "status"),
        (
            "runs.get_trace",
            json!({"run_id": run, "cursor": "x"}),
            "cursor",
        ),
        ("runs.get_trace", json!({}), "run_id"),
        (
            "runs.subscribe",
            json!({"run_id": run, "cursor": -1}),
            "cursor",
        ),
        ("runs.unsubscribe", json!({"run_id": false}), "run_id"),
        ("server.handshake", json!([2]), "params"),
    ];
    for (method, params, field) in cases {
        let err = client.err(method, params.clone()).await;
        assert_eq!(err.code, -32602, "{method} {params}: {err}");
        assert!(
            err.message.contains(field),
            "{method} {params}: the message should name `{field}`: {err}"
        );
    }
    // None of those did anything to the run.
    let trace = client.ok("runs.get_trace", json!({"run_id": run})).await;
    assert_eq!(trace["records"].as_array().unwrap().len(), 1, "{trace}");
}

#[tokio::test]
async fn deeply_nested_json_is_answered_with_an_error_and_harms_nobody() {
    let server = server(&[]).await;
    let mut other = server.auth_client().await;
    let mut client = server.auth_client().await;
    client.send_text("[".repeat(100_000)).await.unwrap();
    let reply = client.next_reply().await.unwrap();
    assert_error_null_id(&reply, -32700);
    // Nested and complete, inside params.
    let nested = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"runs.list\",\"params\":{{\"x\":{}1{}}}}}",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    client.send_text(nested).await.unwrap();
    let reply = client.next_reply().await.unwrap();
    assert!(reply["error"]["code"].is_i64(), "{reply}");
    // The same connection and the others are fine.
    client.ok("runs.list", json!({})).await;
    other.ok("runs.list", json!({})).await;
    let mut fresh = server.auth_client().await;
    fresh.ok("runs.list", json!({})).await;
}

#[tokio::test]
async fn connections_over_max_connections_are_refused_with_http_503() {
    let server = server(&["--max-connections", "2"]).await;
    let mut first = server.auth_client().await;
    let mut second = server.auth_client().await;
    let refused = Client::connect(server.addr).await;
    let err = refused.expect_err("a third connection must be refused");
    let http = err
        .chain()
        .find_map(|e| e.downcast_ref::<tokio_tungstenite::tungstenite::Error>())
        .map(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(response) => response.status().as_u16(),
            _ => 0,
        });
    assert_eq!(http, Some(503), "{err:#}");
    first.ok("runs.list", json!({})).await;
    second.ok("runs.list", json!({})).await;
}

#[tokio::test]
async fn a_client_that_keeps_reading_answers_pings_and_stays_connected() {
    let idle = Duration::from_millis(600);
    let server = server(&["--ping-interval-ms", "100", "--idle-timeout-ms", "600"]).await;
    let mut client = server.auth_client().await;
    let since = Instant::now();
    // Reading answers every ping with a pong: the server hears from us all the time.
    // Keep reading until well past three idle timeouts.
    let mut wanted = 5;
    while since.elapsed() < idle * 3 + Duration::from_millis(200) {
        client.wait_pings(wanted).await.unwrap();
        wanted += 1;
    }
    assert!(client.pings() >= 5);
    // Still connected and served.
    client.ok("runs.list", json!({})).await;
}

#[tokio::test]
async fn a_silent_peer_is_closed_after_the_idle_timeout() {
    let server = server(&["--ping-interval-ms", "100", "--idle-timeout-ms", "600"]).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let upgrade = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    tcp.write_all(upgrade.as_bytes()).await.unwrap();
    let upgraded = Instant::now();
    // From here on we send nothing (and never answer a ping); read until the server hangs up.
    let mut received = Vec::new();
    let read_all = tokio::time::timeout(car_tests::WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read_all.is_ok(),
        "the server never closed the silent connection"
    );
    let elapsed = upgraded.elapsed();
    assert!(
        elapsed >= Duration::from_millis(550),
        "closed after {elapsed:?}, before the idle timeout"
    );
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    let body = &received[text.find("\r\n\r\n").unwrap() + 4..];
    let frames = parse_server_frames(body);
    assert!(
        frames.iter().any(|(op, _)| *op == 0x9),
        "the server pings: {frames:?}"
    );
    let close = frames
        .iter()
        .find(|(op, _)| *op == 0x8)
        .expect("a close frame before the end");
    let code = u16::from_be_bytes([close.1[0], close.1[1]]);
    assert_eq!(code, 1001, "{frames:?}");
}

/// Splits unmasked server frames into (opcode, payload); stops at a partial frame.
fn parse_server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let op = bytes[0] & 0x0f;
        let (len, header) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 if bytes.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&bytes[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            n if n < 126 => (n as usize, 2),
            _ => break,
        };
        if bytes.len() < header + len {
            break;
        }
        frames.push((op, bytes[header..header + len].to_vec()));
        bytes = &bytes[header + len..];
    }
    frames
}

/// PROTOCOL.md §1: "closes a peer that sent nothing". A dead peer usually stops reading
/// too; with frames queued for it (here a subscription's events, more than the socket
/// holds) the server must still close it and end its session: its run, which no one else
/// holds, then ends `disconnected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_that_stopped_reading_is_closed_even_with_frames_queued_for_it() {
    let server = server(&[
        "--ping-interval-ms",
        "100",
        "--idle-timeout-ms",
        "1500",
        "--disconnect-grace-ms",
        "50",
        // Also caps the server's write buffer per connection at 2 MiB, so that a peer that
        // does not read backs up into the outbound queue after a few MB.
        "--max-message-bytes",
        "1048576",
    ])
    .await;
    let mut writer = server.auth_client().await;
    let flooded = writer
        .ok(
            "runs.start",
            json!({"intent": "flood", "agent_id": "flood"}),
        )
        .await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The silent peer: an agent session of `flood` (so it may follow that run), with a small
    // socket buffer, owning a run of its own that no one else holds.
    let mut silent = server.connect_small_buffer().await;
    silent
        .ok(
            "session.auth",
            json!({"token": server.auth_token, "agent_id": "flood"}),
        )
        .await;
    let alone = silent.ok("runs.start", json!({"intent": "alone"})).await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    silent
        .ok("runs.subscribe", json!({"run_id": flooded}))
        .await;
    let silent_since = Instant::now();
    // From here on the silent session neither reads nor sends, while 6.4 MB of turns are
    // recorded in the run it follows: more than the path to it holds.
    let prompt = "f".repeat(16_000);
    for _ in 0..8 {
        let batch: Vec<Value> = (0..50).map(|_| json!({"prompt": prompt})).collect();
        let result = writer
            .ok(
                "runs.record_turns",
                json!({"run_id": flooded, "turns": batch}),
            )
            .await;
        assert_eq!(result["ok"], true);
    }
    let mut host = server.auth_host().await;
    host.ok("runs.subscribe", json!({"run_id": alone})).await;
    let ended = host
        .next_notification_where("runs.trace.event", |e| e["record"]["record"] == "ended")
        .await
        .expect("the silent session was never closed");
    assert!(silent_since.elapsed() >= Duration::from_millis(1400));
    assert_eq!(
        ended["record"]["termination"],
        json!({"kind": "incomplete", "reason": "disconnected"})
    );
    drop(silent);
}

/// Every request gets its response (§1), also when `--max-message-bytes` is lowered. The
/// daemon builds `runs.get_trace` and `runs.subscribe` answers of up to 8 MiB whatever the
/// flag, but caps each connection's write buffer at twice the flag (at least 1 MiB): with
/// `--max-message-bytes 1048576` an answer over 2 MiB cannot be written, and the connection
/// is dropped without a response or a close frame.
#[tokio::test]
async fn regression_a_large_get_trace_drops_the_connection_under_a_lower_max_message_bytes() {
    let server = server(&["--max-message-bytes", "1048576"]).await;
    let mut client = server.auth_client().await;
    let run = client
        .ok("runs.start", json!({"intent": "big", "agent_id": "a"}))
        .await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let prompt = "g".repeat(16_000);
    for _ in 0..4 {
        let batch: Vec<Value> = (0..50).map(|_| json!({"prompt": prompt})).collect();
        client
            .ok("runs.record_turns", json!({"run_id": run, "turns": batch}))
            .await;
    }
    // 3.2 MB of turns: the trace must come in pages the connection can carry.
    let mut cursor = 0u64;
    let mut records = 0;
    loop {
        let page = client
            .try_call("runs.get_trace", json!({"run_id": run, "cursor": cursor}))
            .await
            .expect("runs.get_trace must be answered")
            .unwrap();
        let got = page["records"].as_array().unwrap().len();
        if got == 0 {
            break;
        }
        records += got;
        cursor = page["cursor"].as_u64().unwrap();
    }
    assert_eq!(records, 201);
}
