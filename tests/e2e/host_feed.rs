//! PROTOCOL.md §6, the host feed: `host.subscribe` (after the handshake; refused to agent
//! sessions) answers `{subscribed, approvals (pending), events (the last 100 host events),
//! identity {version, pid, data_dir, role: "primary"}, event_sequence}`, then sends a
//! `host.event` `{id: "event-<sequence>", sequence, timestamp, kind, agent_id?, message?,
//! payload}` for every later host event with the kinds and payloads of §6; checked against
//! the log itself (`log.read`): a subscriber of a busy daemon (several clients starting
//! and ending runs, sessions coming and going, approvals requested and resolved) gets every
//! host event in order, none missing, sequences strictly increasing; a slow subscriber
//! that does not read for a while blocks no one and then catches up without missing
//! anything; and `host.events {limit, before}` pages backwards, each page ascending.

use std::collections::BTreeSet;

use car_tests::{Client, Endpoint, is_protocol_time};
use serde_json::{Value, json};

use crate::runs::{complete, start};
use crate::server;

/// What the feed says of a log event (`{seq, ts, kind, data}`): `(sequence, kind,
/// timestamp)`, or `None` when it is not a host event. A session joins the feed once its
/// role is known (`session.authenticated` is its `session.opened`), and only such a session
/// is heard closing.
fn feed_entry(event: &Value) -> Option<(u64, String, String)> {
    let kind = event["kind"].as_str().unwrap();
    let has_role = !event["data"]["role"].is_null();
    let kind = match kind {
        "daemon.started" | "daemon.recovered" | "run.started" | "run.ended" | "run.evicted"
        | "approval.requested" | "approval.resolved" | "approval.expired" => kind,
        "session.authenticated" => "session.opened",
        // An approval asked for inside a run (§14.5) is the same host event.
        "approval.requested_in_run" => "approval.requested",
        "session.opened" | "session.closed" if has_role => kind,
        _ => return None,
    };
    Some((
        event["seq"].as_u64().unwrap(),
        kind.to_owned(),
        event["ts"].as_str().unwrap().to_owned(),
    ))
}

/// The host events of the log with sequence in `from..=to`, as [`feed_entry`]s.
async fn feed_from_log(host: &mut Client, from: u64, to: u64) -> Vec<(u64, String, String)> {
    host.whole_log(None)
        .await
        .iter()
        .filter_map(feed_entry)
        .filter(|(seq, _, _)| (from..=to).contains(seq))
        .collect()
}

/// A host event as a [`feed_entry`], after checking its shape.
fn entry(event: &Value) -> (u64, String, String) {
    let sequence = event["sequence"].as_u64().unwrap();
    assert_eq!(event["id"], format!("event-{sequence}"), "{event}");
    let keys: BTreeSet<&str> = event
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in ["id", "sequence", "timestamp", "kind", "payload"] {
        assert!(keys.contains(key), "{key} missing: {event}");
    }
    let allowed = [
        "id",
        "sequence",
        "timestamp",
        "kind",
        "agent_id",
        "message",
        "payload",
    ];
    assert!(keys.iter().all(|k| allowed.contains(k)), "{event}");
    let timestamp = event["timestamp"].as_str().unwrap();
    assert!(is_protocol_time(timestamp), "{event}");
    assert!(event["payload"].is_object(), "{event}");
    (
        sequence,
        event["kind"].as_str().unwrap().to_owned(),
        timestamp.to_owned(),
    )
}

/// Reads `host.event`s until one with `sequence >= last`; returns them all.
async fn events_until(subscriber: &mut Client, last: u64) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let event = subscriber.next_notification("host.event").await.unwrap();
        let sequence = event["sequence"].as_u64().unwrap();
        events.push(event);
        if sequence >= last {
            return events;
        }
    }
}

/// Checks that sequences strictly increase.
fn assert_increasing(events: &[Value]) {
    for pair in events.windows(2) {
        assert!(
            pair[0]["sequence"].as_u64() < pair[1]["sequence"].as_u64(),
            "{} then {}",
            pair[0],
            pair[1]
        );
    }
}

/// A host session, handshaken.
async fn handshaken_host(server: &Endpoint) -> Client {
    let mut host = server.auth_host().await;
    host.handshake().await;
    host
}

/// The next `host.event` of `kind` that satisfies `pred`.
async fn next_event(host: &mut Client, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
    host.next_notification_where("host.event", |e| e["kind"] == kind && pred(e))
        .await
        .unwrap()
}

#[tokio::test]
async fn host_subscribe_answers_the_snapshot_then_streams_host_events() {
    let server = server(&[]).await;
    // Some history first.
    let mut before = server.auth_client().await;
    before.handshake().await;
    let old_run = start(&mut before, "pre").await;
    complete(&mut before, &old_run).await;
    let pending = before
        .ok("host.request_approval", json!({"action": "pending one"}))
        .await;
    let resolved = before
        .ok("host.request_approval", json!({"action": "resolved one"}))
        .await;
    let mut resolver = handshaken_host(&server).await;
    let resolved = resolver
        .ok(
            "host.resolve_approval",
            json!({"approval_id": resolved["id"], "resolution": "approve"}),
        )
        .await;

    let mut host = server.auth_host().await;
    let hello = host.handshake().await;
    let snapshot = host.ok("host.subscribe", json!({})).await;
    let keys: BTreeSet<&str> = snapshot
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "approvals",
            "event_sequence",
            "events",
            "identity",
            "subscribed"
        ])
    );
    assert_eq!(snapshot["subscribed"], true);
    assert_eq!(snapshot["approvals"], json!([pending]));
    assert_eq!(
        snapshot["identity"],
        json!({
            "version": hello["server_version"],
            "pid": server.pid(),
            "data_dir": server.data_dir().path().display().to_string(),
            "role": "primary",
            "manifest_path": null,
            "manifest_role": "owner",
        })
    );
    let position = snapshot["event_sequence"].as_u64().unwrap();
    let backlog = snapshot["events"].as_array().unwrap();
    let told: Vec<_> = backlog.iter().map(entry).collect();
    assert_eq!(told, feed_from_log(&mut host, 1, position).await);
    assert_eq!(told[0].1, "daemon.started");
    assert_eq!(told[0].0, 1);
    // Payloads: runs, approvals as they were at the time, sessions.
    let find = |kind: &str, pred: &dyn Fn(&Value) -> bool| {
        backlog
            .iter()
            .find(|e| e["kind"] == kind && pred(e))
            .unwrap_or_else(|| panic!("no {kind} in {backlog:?}"))
            .clone()
    };
    let started = find("run.started", &|e| {
        e["payload"]["run_id"] == old_run.as_str()
    });
    assert_eq!(
        started["payload"],
        json!({"run_id": old_run, "agent_id": "pre", "status": "in_progress"})
    );
    assert_eq!(started["agent_id"], "pre");
    let ended = find("run.ended", &|e| e["payload"]["run_id"] == old_run.as_str());
    assert_eq!(
        ended["payload"],
        json!({"run_id": old_run, "agent_id": "pre", "status": "completed"})
    );
    let requested = find("approval.requested", &|e| {
        e["payload"]["id"] == resolved["id"]
    });
    let mut as_requested = resolved.clone();
    let fields = as_requested.as_object_mut().unwrap();
    fields.remove("resolution");
    fields.remove("resolved_at");
    fields.insert("status".into(), json!("pending"));
    assert_eq!(requested["payload"], as_requested);
    let resolution = find("approval.resolved", &|e| {
        e["payload"]["id"] == resolved["id"]
    });
    assert_eq!(resolution["payload"], resolved);
    assert_eq!(
        find("approval.requested", &|e| e["payload"]["id"]
            == pending["id"])["payload"],
        pending
    );

    // Live: a session opens, runs, asks, is answered, and leaves.
    let mut agent = server.auth_agent("live").await;
    agent.handshake().await;
    let session_id = agent.ok("session.init", json!({})).await["session_id"].clone();
    let opened = next_event(&mut host, "session.opened", |e| {
        e["payload"]["client_id"] == session_id
    })
    .await;
    assert_eq!(
        opened["payload"],
        json!({"client_id": session_id, "role": "agent", "agent_id": "live"})
    );
    assert_eq!(opened["agent_id"], "live");
    let run = agent.ok("runs.start", json!({"intent": "live work"})).await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = next_event(&mut host, "run.started", |_| true).await;
    assert_eq!(
        started["payload"],
        json!({"run_id": run, "agent_id": "live", "status": "in_progress"})
    );
    let approval = agent
        .ok(
            "host.request_approval",
            json!({"action": "live approval", "details": {"n": 1}}),
        )
        .await;
    let requested = next_event(&mut host, "approval.requested", |_| true).await;
    assert_eq!(requested["payload"], approval);
    assert_eq!(requested["agent_id"], "live");
    let resolution = resolver
        .ok(
            "host.resolve_approval",
            json!({"approval_id": approval["id"], "resolution": "deny"}),
        )
        .await;
    let resolved_event = next_event(&mut host, "approval.resolved", |_| true).await;
    assert_eq!(resolved_event["payload"], resolution);
    agent.close().await;
    let closed = next_event(&mut host, "session.closed", |e| {
        e["payload"]["client_id"] == session_id
    })
    .await;
    assert_eq!(
        closed["payload"],
        json!({"client_id": session_id, "role": "agent", "agent_id": "live", "reason": "closed"})
    );
    let ended = next_event(&mut host, "run.ended", |_| true).await;
    assert_eq!(
        ended["payload"],
        json!({"run_id": run, "agent_id": "live", "status": "incomplete"})
    );

    // Nothing else came, nothing was missed: the feed is the log's host events.
    let last = ended["sequence"].as_u64().unwrap();
    let mut live = host.take_notifications("host.event");
    live.extend([opened, started, requested, resolved_event, closed, ended]);
    live.sort_by_key(|e| e["sequence"].as_u64());
    let live: Vec<_> = live.iter().map(entry).collect();
    assert_eq!(live, feed_from_log(&mut host, position + 1, last).await);
    assert!(live[0].0 > position);
}

#[tokio::test]
async fn host_subscribe_needs_the_handshake_and_is_refused_to_agents() {
    let server = server(&[]).await;
    let mut agent = server.auth_agent("a").await;
    assert_eq!(agent.err("host.subscribe", json!({})).await.code, -32005);
    agent.handshake().await;
    let err = agent.err("host.subscribe", json!({})).await;
    assert_eq!(err.code, -32603, "{err}");
    // A client may subscribe; it hears of what concerns it.
    let mut client = server.auth_client().await;
    client.handshake().await;
    let snapshot = client.ok("host.subscribe", json!({})).await;
    assert_eq!(snapshot["subscribed"], true);
    let run = start(&mut client, "mine").await;
    let started = next_event(&mut client, "run.started", |_| true).await;
    assert_eq!(started["payload"]["run_id"], run.as_str());
    // The agent's refused subscription sends nothing: its own run is not told to it.
    agent.ok("runs.start", json!({"intent": "i"})).await;
    agent.ok("runs.list", json!({})).await;
    assert!(agent.take_notifications("host.event").is_empty());
}

/// A worker of the busy daemon: `runs` runs started and completed, one approval asked
/// (system-level) and any pending approval of the others resolved; the last worker leaves
/// a run behind (it ends `incomplete` after the grace).
async fn busy_worker(server: Endpoint, worker: usize, runs: usize) {
    let mut client = server.auth_agent(&format!("worker-{worker}")).await;
    client.handshake().await;
    let mine = client
        .ok(
            "host.request_approval",
            json!({"action": format!("from worker {worker}"), "system_level": true}),
        )
        .await["id"]
        .clone();
    for i in 0..runs {
        let run = client
            .ok("runs.start", json!({"intent": format!("job {i}")}))
            .await["run_id"]
            .clone();
        complete(&mut client, run.as_str().unwrap()).await;
        let pending = client
            .ok("host.approvals", json!({"status": "pending"}))
            .await;
        if let Some(other) = pending["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] != mine)
        {
            // Another worker may win the race: one of them does.
            let _ = client
                .call(
                    "host.resolve_approval",
                    json!({"approval_id": other["id"], "resolution": "approve"}),
                )
                .await;
        }
    }
    if worker == 0 {
        client
            .ok("runs.start", json!({"intent": "left behind"}))
            .await;
    }
    client.close().await;
}

#[tokio::test]
async fn a_host_subscriber_sees_every_host_event_of_a_busy_daemon_in_order() {
    let server = server(&["--disconnect-grace-ms", "50"]).await;
    let mut subscriber = handshaken_host(&server).await;
    let snapshot = subscriber.ok("host.subscribe", json!({})).await;
    let position = snapshot["event_sequence"].as_u64().unwrap();
    let mut host = handshaken_host(&server).await;
    host.ok("host.subscribe", json!({})).await;
    let workers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(busy_worker(server.endpoint().clone(), w, 8)))
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    // Whatever the workers left pending, a host resolves.
    let pending = host
        .ok("host.approvals", json!({"status": "pending"}))
        .await;
    for approval in pending["approvals"].as_array().unwrap() {
        host.ok(
            "host.resolve_approval",
            json!({"approval_id": approval["id"], "resolution": "deny"}),
        )
        .await;
    }
    // The run left behind ends after the grace.
    next_event(&mut host, "run.ended", |e| {
        e["payload"]["status"] == "incomplete"
    })
    .await;
    let head = host.ok("log.read", json!({"from_seq": 1_000_000})).await["head_seq"]
        .as_u64()
        .unwrap();
    let expected = feed_from_log(&mut host, position + 1, head).await;
    let kinds: BTreeSet<&str> = expected.iter().map(|(_, k, _)| k.as_str()).collect();
    for kind in [
        "session.opened",
        "session.closed",
        "run.started",
        "run.ended",
        "approval.requested",
        "approval.resolved",
    ] {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
    assert!(expected.len() >= 78, "{}", expected.len());

    let last = expected.last().unwrap().0;
    let events = events_until(&mut subscriber, last).await;
    assert_increasing(&events);
    let told: Vec<_> = events.iter().map(entry).collect();
    assert_eq!(told, expected);
}

#[tokio::test]
async fn a_slow_host_subscriber_blocks_nobody_and_misses_nothing() {
    let server = server(&[]).await;
    // It subscribes, then reads nothing for a while, through a small socket buffer.
    let mut slow = server.connect_small_buffer().await;
    slow.ok("session.auth", json!({"host_token": server.host_token}))
        .await;
    slow.handshake().await;
    let position = slow.ok("host.subscribe", json!({})).await["event_sequence"]
        .as_u64()
        .unwrap();
    let mut fast = handshaken_host(&server).await;
    let fast_position = fast.ok("host.subscribe", json!({})).await["event_sequence"]
        .as_u64()
        .unwrap();

    // Runs with long intents: far more feed than the socket buffers and the queue hold.
    let intent = "x".repeat(8 * 1024);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (server, intent) = (server.endpoint().clone(), intent.clone());
            tokio::spawn(async move {
                let mut client = server.auth_client().await;
                for i in 0..30 {
                    let run = client
                        .ok(
                            "runs.start",
                            json!({"intent": format!("{w}/{i} {intent}"), "agent_id": "busy"}),
                        )
                        .await["run_id"]
                        .clone();
                    complete(&mut client, run.as_str().unwrap()).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    // Every writer was served, and a reading subscriber was told everything, while the
    // slow one read nothing.
    let mut host = handshaken_host(&server).await;
    let runs = host.ok("runs.list", json!({"status": "completed"})).await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 100, "a full page");
    let log = host.whole_log(Some(&["run.ended"])).await;
    let last = log.last().unwrap()["seq"].as_u64().unwrap();
    let fast_events = events_until(&mut fast, last).await;
    let expected = feed_from_log(&mut host, fast_position + 1, last).await;
    assert_eq!(fast_events.iter().map(entry).collect::<Vec<_>>(), expected);
    assert!(expected.len() >= 240, "{}", expected.len());

    // Now it reads, and catches up without missing anything.
    let slow_events = events_until(&mut slow, last).await;
    assert_increasing(&slow_events);
    let expected = feed_from_log(&mut host, position + 1, last).await;
    assert_eq!(slow_events.iter().map(entry).collect::<Vec<_>>(), expected);
    let (before_fast, same): (Vec<Value>, Vec<Value>) = slow_events
        .into_iter()
        .partition(|e| e["sequence"].as_u64().unwrap() <= fast_position);
    assert_eq!(same, fast_events);
    assert!(before_fast.iter().all(|e| e["kind"] == "session.opened"));
    // And it is live again.
    let mut client = server.auth_client().await;
    let run = start(&mut client, "after").await;
    let started = next_event(&mut slow, "run.started", |_| true).await;
    assert_eq!(started["payload"]["run_id"], run.as_str());
}

#[tokio::test]
async fn host_events_pages_backwards_each_page_ascending() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    client.handshake().await;
    // Over 100 host events.
    for i in 0..60 {
        let run = start(&mut client, &format!("agent-{}", i % 3)).await;
        complete(&mut client, &run).await;
    }
    let mut host = handshaken_host(&server).await;
    let head = host.ok("log.read", json!({"from_seq": 1_000_000})).await["head_seq"]
        .as_u64()
        .unwrap();
    let all = feed_from_log(&mut host, 1, head).await;
    assert!(all.len() > 120, "{}", all.len());

    // The default page: the last 100, ascending.
    let page = host.ok("host.events", json!({})).await["events"].clone();
    let page: Vec<_> = page.as_array().unwrap().iter().map(entry).collect();
    assert_eq!(page, all[all.len() - 100..]);
    // Backwards from the end, 7 at a time, until nothing is left.
    let mut pages: Vec<Vec<(u64, String, String)>> = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut params = json!({"limit": 7});
        if let Some(before) = before {
            params["before"] = json!(before);
        }
        let page = host.ok("host.events", params).await["events"].clone();
        let page: Vec<_> = page.as_array().unwrap().iter().map(entry).collect();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        assert!(page.windows(2).all(|w| w[0].0 < w[1].0), "{page:?}");
        before = Some(page[0].0);
        pages.push(page);
    }
    let joined: Vec<_> = pages.into_iter().rev().flatten().collect();
    assert_eq!(joined, all);
    let first = host.ok("host.events", json!({"before": 1})).await;
    assert_eq!(first["events"], json!([]));

    // host.subscribe's backlog is the last 100 too.
    let snapshot = host.ok("host.subscribe", json!({})).await;
    let backlog: Vec<_> = snapshot["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(entry)
        .collect();
    let position = snapshot["event_sequence"].as_u64().unwrap();
    let upto: Vec<_> = all.iter().filter(|e| e.0 < position).cloned().collect();
    assert_eq!(backlog.len(), 100);
    assert_eq!(backlog, upto[upto.len() - 100..]);

    // A client sees the daemon's events, its own session and its own runs, no one else's.
    let mut other = server.auth_client().await;
    other.handshake().await;
    let own = start(&mut other, "other").await;
    let seen = other.ok("host.events", json!({"limit": 1000})).await["events"].clone();
    let seen = seen.as_array().unwrap();
    let runs: Vec<&Value> = seen
        .iter()
        .filter(|e| e["kind"] == "run.started")
        .map(|e| &e["payload"]["run_id"])
        .collect();
    assert_eq!(runs, [&json!(own)]);
    assert!(seen.iter().any(|e| e["kind"] == "daemon.started"));
    let host_view = host.ok("host.events", json!({"limit": 1000})).await["events"].clone();
    for event in seen {
        assert!(
            host_view.as_array().unwrap().contains(event),
            "{event} is not the host's"
        );
    }
}

#[tokio::test]
async fn the_feed_goes_on_across_a_crash_with_the_same_history() {
    let mut server = server(&[]).await;
    let mut client = server.auth_client().await;
    client.handshake().await;
    let client_session = client.ok("session.init", json!({})).await["session_id"].clone();
    let done = start(&mut client, "before").await;
    complete(&mut client, &done).await;
    let open_run = start(&mut client, "before").await;
    let pending = client
        .ok("host.request_approval", json!({"action": "left pending"}))
        .await;
    let mut host = handshaken_host(&server).await;
    let history = host.ok("host.events", json!({"limit": 1000})).await["events"].clone();
    let history = history.as_array().unwrap().clone();
    let old_head = history.last().unwrap()["sequence"].as_u64().unwrap();

    server.kill().await.unwrap();
    server.restart().await.unwrap();
    let mut host = handshaken_host(&server).await;
    let snapshot = host.ok("host.subscribe", json!({})).await;
    let backlog = snapshot["events"].as_array().unwrap();
    let position = snapshot["event_sequence"].as_u64().unwrap();
    // The history reads back the same, sequences are never reused, and the backlog is
    // the log's host events.
    assert_eq!(backlog[..history.len()], history[..]);
    let told: Vec<_> = backlog.iter().map(entry).collect();
    assert_eq!(told, feed_from_log(&mut host, 1, position).await);
    assert_increasing(backlog);
    let after: Vec<&Value> = backlog[history.len()..].iter().collect();
    assert!(
        after
            .iter()
            .all(|e| e["sequence"].as_u64().unwrap() > old_head)
    );
    let find = |kind: &str| {
        after
            .iter()
            .find(|e| e["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} after the restart: {after:?}"))
    };
    assert_eq!(
        find("run.ended")["payload"],
        json!({"run_id": open_run, "agent_id": "before", "status": "incomplete"})
    );
    let expired = find("approval.expired");
    assert_eq!(expired["payload"]["id"], pending["id"]);
    assert_eq!(expired["payload"]["status"], "expired");
    let session_id = client_session.as_str().unwrap();
    let closed = after
        .iter()
        .find(|e| e["kind"] == "session.closed" && e["payload"]["client_id"] == session_id)
        .unwrap_or_else(|| panic!("the client's session did not close: {after:?}"));
    assert_eq!(closed["payload"]["role"], "client", "{closed}");
    assert!(closed["payload"]["reason"].is_string(), "{closed}");
    find("daemon.started");
    find("daemon.recovered");
    assert_eq!(snapshot["approvals"], json!([]));
    assert_eq!(snapshot["identity"]["pid"], server.pid());
}

#[tokio::test]
async fn run_evictions_are_host_events() {
    let server = server(&["--max-runs", "1", "--gc-interval", "1"]).await;
    let mut host = handshaken_host(&server).await;
    host.ok("host.subscribe", json!({})).await;
    let mut client = server.auth_client().await;
    let mut runs = Vec::new();
    for _ in 0..2 {
        let run = start(&mut client, "kept-briefly").await;
        complete(&mut client, &run).await;
        runs.push(run);
    }
    // The periodic retention evicts the older run.
    let evicted = next_event(&mut host, "run.evicted", |_| true).await;
    assert_eq!(
        evicted["payload"],
        json!({"run_id": runs[0], "agent_id": "kept-briefly", "status": "evicted"})
    );
    assert_eq!(evicted["agent_id"], "kept-briefly");
    let sequence = evicted["sequence"].as_u64().unwrap();
    let told = feed_from_log(&mut host, sequence, sequence).await;
    assert_eq!(told, [entry(&evicted)]);
}
