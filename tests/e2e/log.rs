//! PROTOCOL.md §7: `log.read` (from seq 1, paging with `limit`/`next_seq`, the `kinds`
//! filter, `head_seq`), `log.subscribe` (catch-up from `from_seq`, then live, in order,
//! without gap or duplicate while writers append; by default from the next event),
//! `log.unsubscribe` (`removed`), seqs from 1 increasing by exactly 1, and the host-only
//! refusal for every other role.

use car_tests::{Client, is_protocol_time, turns};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::runs::{complete, record, start};
use crate::server;

/// Some activity: a run with turns, completed.
async fn activity(client: &mut Client, agent: &str) -> String {
    let run = start(client, agent).await;
    record(client, &run, turns("t", 2)).await;
    complete(client, &run).await;
    run
}

/// Every event of the log, read in pages of `limit`.
async fn read_all(host: &mut Client, limit: u64) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let page = host
            .ok("log.read", json!({"from_seq": from, "limit": limit}))
            .await;
        let got = page["events"].as_array().unwrap();
        assert!(got.len() as u64 <= limit);
        if got.is_empty() {
            assert_eq!(page["next_seq"], from, "{page}");
            return events;
        }
        from = page["next_seq"].as_u64().unwrap();
        assert_eq!(from, got.last().unwrap()["seq"].as_u64().unwrap() + 1);
        events.extend(got.iter().cloned());
    }
}

#[tokio::test]
async fn log_read_pages_through_the_whole_log_from_seq_1() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    activity(&mut client, "a").await;
    let mut host = server.auth_host().await;
    let all = host.ok("log.read", json!({})).await;
    let events = all["events"].as_array().unwrap().clone();
    assert!(events.len() >= 8, "{all}");
    assert_eq!(events[0]["seq"], 1);
    assert_eq!(events[0]["kind"], "daemon.started");
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["seq"], i as u64 + 1, "{event}");
        let keys: Vec<&str> = event
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 4, "{event}");
        for key in ["seq", "ts", "kind", "data"] {
            assert!(keys.contains(&key), "{event}");
        }
        assert!(is_protocol_time(event["ts"].as_str().unwrap()), "{event}");
        assert!(event["data"].is_object(), "{event}");
    }
    let last = events.last().unwrap()["seq"].as_u64().unwrap();
    assert!(all["head_seq"].as_u64().unwrap() >= last, "{all}");
    assert_eq!(all["next_seq"], last + 1);
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for kind in ["run.started", "run.turns_recorded", "run.ended"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }

    // Paging gives the same events.
    for limit in [1, 3, 1000] {
        let paged = read_all(&mut host, limit).await;
        assert_eq!(paged[..events.len()], events[..], "limit {limit}");
    }
    // From the middle.
    let tail = host.ok("log.read", json!({"from_seq": 4})).await;
    assert_eq!(tail["events"][0], events[3]);
    // Past the head: nothing.
    let head = host.ok("log.read", json!({"from_seq": 1_000_000})).await;
    assert_eq!(head["events"], json!([]));
    assert!(head["head_seq"].as_u64().unwrap() >= last);
    let err = host.err("log.read", json!({"limit": 0})).await;
    assert_eq!(err.code, -32602);
    assert!(err.message.contains("limit"), "{err}");
}

#[tokio::test]
async fn log_read_filters_by_kind() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let first = activity(&mut client, "a").await;
    let second = activity(&mut client, "b").await;
    let mut host = server.auth_host().await;
    let all = host.ok("log.read", json!({})).await["events"].clone();
    let filtered = host
        .ok("log.read", json!({"kinds": ["run.started", "run.ended"]}))
        .await;
    let events = filtered["events"].as_array().unwrap();
    let expected: Vec<&Value> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "run.started" || e["kind"] == "run.ended")
        .collect();
    assert_eq!(events.len(), 4, "{filtered}");
    assert_eq!(events.iter().collect::<Vec<_>>(), expected);
    let runs: Vec<&str> = events
        .iter()
        .map(|e| e["data"]["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        runs,
        [
            first.as_str(),
            first.as_str(),
            second.as_str(),
            second.as_str()
        ]
    );
    // Paging with a filter: next_seq moves past what was scanned.
    let page = host
        .ok("log.read", json!({"kinds": ["run.started"], "limit": 1}))
        .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    let next = page["next_seq"].as_u64().unwrap();
    let rest = host
        .ok(
            "log.read",
            json!({"kinds": ["run.started"], "from_seq": next}),
        )
        .await;
    assert_eq!(rest["events"].as_array().unwrap().len(), 1);
    assert_eq!(rest["events"][0]["data"]["run_id"], second.as_str());

    let err = host
        .err(
            "log.read",
            json!({"kinds": ["run.started", "run.exploded"]}),
        )
        .await;
    assert_eq!(err.code, -32602);
    assert!(err.message.contains("kinds[1]"), "{err}");
}

#[tokio::test]
async fn log_methods_are_for_hosts_only() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let mut agent = server.auth_agent("a").await;
    for session in [&mut client, &mut agent] {
        for (method, params) in [
            ("log.read", json!({})),
            ("log.subscribe", json!({"from_seq": 1})),
            ("log.unsubscribe", json!({"subscription_id": "x"})),
        ] {
            let err = session.err(method, params).await;
            assert_eq!(err.code, -32603, "{method}: {err}");
        }
        // Refused subscriptions send nothing.
        assert_eq!(session.take_notifications("log.event"), Vec::<Value>::new());
    }
    activity(&mut client, "a").await;
    client.ok("runs.list", json!({})).await;
    assert_eq!(client.take_notifications("log.event"), Vec::<Value>::new());
}

#[tokio::test]
async fn log_subscribe_by_default_starts_with_the_next_event() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    activity(&mut client, "a").await;
    let mut host = server.auth_host().await;
    let sub = host.ok("log.subscribe", json!({})).await;
    let id = sub["subscription_id"].as_str().unwrap().to_owned();
    let head = sub["head_seq"].as_u64().unwrap();
    let read = host.ok("log.read", json!({})).await;
    assert!(read["head_seq"].as_u64().unwrap() >= head);
    let run = start(&mut client, "a").await;
    let event = host.next_notification("log.event").await.unwrap();
    assert_eq!(event["subscription_id"], id.as_str());
    assert_eq!(event["seq"], head + 1, "{event}");
    assert_eq!(event["kind"], "run.started");
    assert_eq!(event["data"]["run_id"], run.as_str());
    assert!(is_protocol_time(event["ts"].as_str().unwrap()));
    // Exactly the event log.read shows at that seq.
    let same = host
        .ok("log.read", json!({"from_seq": head + 1, "limit": 1}))
        .await;
    let mut expected = same["events"][0].clone();
    expected["subscription_id"] = json!(id);
    assert_eq!(event, expected);
}

#[tokio::test]
async fn log_subscribe_from_a_future_seq_starts_there() {
    let server = server(&[]).await;
    let mut host = server.auth_host().await;
    let head = host.ok("log.read", json!({"limit": 1})).await["head_seq"]
        .as_u64()
        .unwrap();
    // head + 1 is the subscription's own event; start two later.
    let from = head + 3;
    host.ok("log.subscribe", json!({"from_seq": from})).await;
    let mut client = server.auth_client().await;
    for _ in 0..3 {
        start(&mut client, "a").await;
    }
    let first = host.next_notification("log.event").await.unwrap();
    assert_eq!(first["seq"], from, "{first}");
    let second = host.next_notification("log.event").await.unwrap();
    assert_eq!(second["seq"], from + 1, "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_subscribe_catches_up_then_follows_without_gap_or_duplicate() {
    let server = server(&[]).await;
    let endpoint = server.endpoint().clone();
    let (progress, mut acked) = mpsc::unbounded_channel::<()>();
    // Two writers append concurrently; each finishes with a completed run.
    let mut writers = Vec::new();
    for w in 0..2 {
        let endpoint = endpoint.clone();
        let progress = progress.clone();
        writers.push(tokio::spawn(async move {
            let mut client = endpoint.auth_client().await;
            let run = start(&mut client, &format!("writer-{w}")).await;
            for i in 0..40 {
                record(&mut client, &run, turns(&format!("b{i}"), 1 + i % 3)).await;
                let _ = progress.send(());
            }
            complete(&mut client, &run).await;
            run
        }));
    }
    drop(progress);
    for _ in 0..10 {
        acked.recv().await.unwrap();
    }
    let mut host = endpoint.auth_host().await;
    let from_start = host.ok("log.subscribe", json!({"from_seq": 1})).await;
    let from_middle = host.ok("log.subscribe", json!({"from_seq": 5})).await;
    let mut runs = Vec::new();
    for writer in writers {
        runs.push(writer.await.unwrap());
    }
    for (sub, first) in [(&from_start, 1u64), (&from_middle, 5)] {
        let id = sub["subscription_id"].clone();
        let mut seqs = Vec::new();
        let mut ended = 0;
        let mut received = Vec::new();
        while ended < runs.len() {
            let event = host
                .next_notification_where("log.event", |e| e["subscription_id"] == id)
                .await
                .unwrap();
            if event["kind"] == "run.ended" {
                ended += 1;
            }
            seqs.push(event["seq"].as_u64().unwrap());
            received.push(event);
        }
        let expected: Vec<u64> = (first..first + seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "in order, without gap or duplicate");
        // The same events log.read returns.
        let read = host
            .ok(
                "log.read",
                json!({"from_seq": first, "limit": received.len()}),
            )
            .await;
        let mut read = read["events"].as_array().unwrap().clone();
        for event in &mut read {
            event["subscription_id"] = id.clone();
        }
        assert_eq!(read, received);
    }
}

#[tokio::test]
async fn log_unsubscribe_removes_the_subscription() {
    let server = server(&[]).await;
    let mut host = server.auth_host().await;
    let gone = host.ok("log.subscribe", json!({})).await["subscription_id"].clone();
    let kept = host.ok("log.subscribe", json!({})).await["subscription_id"].clone();
    let removed = host
        .ok("log.unsubscribe", json!({"subscription_id": gone}))
        .await;
    assert_eq!(removed, json!({"removed": true}));
    // What arrived before the answer was sent before the unsubscription; nothing after.
    let _before = host.take_notifications("log.event");
    let again = host
        .ok("log.unsubscribe", json!({"subscription_id": gone}))
        .await;
    assert_eq!(again, json!({"removed": false}));
    let unknown = host
        .ok("log.unsubscribe", json!({"subscription_id": "nope"}))
        .await;
    assert_eq!(unknown, json!({"removed": false}));

    // The other subscription goes on.
    let mut client = server.auth_client().await;
    let run = start(&mut client, "a").await;
    host.next_notification_where("log.event", |e| {
        e["subscription_id"] == kept && e["data"]["run_id"] == run.as_str()
    })
    .await
    .unwrap();
}

/// After `log.unsubscribe` answered `removed: true`, events of that subscription can
/// still arrive. A tail checks its cancellation only in an unbiased `select!` against each
/// send (`tail.rs`, `send_unless_cancelled`), which picks the send about half the time when
/// both are ready, and `follow_log` reads and sends its next chunk without looking at it;
/// so a tail woken by an event just before the unsubscription often sends that event after
/// the answer. (`runs.unsubscribe` tails share the helper and leak the same way.) Each
/// round below gives ten tails that chance; one stray fails the test.
#[tokio::test]
async fn regression_events_arrive_after_unsubscribe() {
    let server = server(&[]).await;
    let mut host = server.auth_host().await;
    let mut strays = Vec::new();
    for _ in 0..60 {
        // Subscriptions whose tails are busy when the unsubscriptions come: another
        // subscription's event has just been appended, pipelined with the unsubscribes.
        let mut gone = Vec::new();
        for _ in 0..10 {
            gone.push(host.ok("log.subscribe", json!({})).await["subscription_id"].clone());
        }
        let trigger = host.request("log.subscribe", json!({})).await.unwrap();
        let mut unsubscribes = Vec::new();
        for id in &gone {
            let params = json!({"subscription_id": id});
            unsubscribes.push(host.request("log.unsubscribe", params).await.unwrap());
        }
        let mut answered = Vec::new();
        for request in &unsubscribes {
            let (arrival, removed) = host.response_arrival(request).await.unwrap();
            assert_eq!(removed.unwrap(), json!({"removed": true}));
            answered.push(arrival);
        }
        host.response(&trigger).await.unwrap().unwrap();
        // A round trip: whatever a cancelled tail still sent is here by now.
        host.ok("runs.list", json!({})).await;
        for (arrival, event) in host.take_notifications_arrived("log.event") {
            if let Some(i) = gone.iter().position(|id| *id == event["subscription_id"]) {
                if arrival > answered[i] {
                    strays.push(json!({"subscription_id": gone[i], "seq": event["seq"],
                                       "kind": event["kind"]}));
                }
            }
        }
        if !strays.is_empty() {
            break;
        }
    }
    assert_eq!(strays, Vec::<Value>::new(), "events after removed: true");
}

#[tokio::test]
async fn log_read_returns_1000_by_default_and_at_most_10000() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    // Over 10 000 events: 6 runs, 1 800 single-turn appends each, pipelined.
    for r in 0..6 {
        let run = start(&mut client, &format!("a{r}")).await;
        let mut ids = Vec::with_capacity(1800);
        for i in 0..1800 {
            let params = json!({"run_id": run, "turns": [{"prompt": i}]});
            ids.push(client.request("runs.record_turns", params).await.unwrap());
        }
        for id in &ids {
            let result = client.response(id).await.unwrap().unwrap();
            assert_eq!(result["ok"], true, "{result}");
        }
    }
    let mut host = server.auth_host().await;
    let default = host.ok("log.read", json!({})).await;
    assert_eq!(default["events"].as_array().unwrap().len(), 1000);
    assert_eq!(default["next_seq"], 1001);
    let most = host.ok("log.read", json!({"limit": 50_000})).await;
    let events = most["events"].as_array().unwrap();
    assert_eq!(events.len(), 10_000);
    assert_eq!(events[9_999]["seq"], 10_000);
    assert_eq!(most["next_seq"], 10_001);
    assert!(
        most["head_seq"].as_u64().unwrap() > 10_800,
        "{}",
        most["head_seq"]
    );
}

/// Every request gets its response (§1). `log.read` pages are bounded by a count of events
/// (`limit`, at most 10 000), never by bytes, while the daemon cannot write a message larger
/// than its per-connection write buffer (twice `--max-message-bytes`, so 32 MiB by default):
/// a page of large `run.turns_recorded` events is never sent and the connection is dropped
/// without a response. Shown with `--max-message-bytes 4194304` (an 8 MiB buffer) to keep
/// the test small; with the defaults it takes 32 MiB of events.
#[tokio::test]
async fn regression_a_large_log_read_page_drops_the_connection() {
    let server = server(&["--max-message-bytes", "4194304"]).await;
    let mut client = server.auth_client().await;
    let run = start(&mut client, "a").await;
    let field = "b".repeat(15_000);
    for _ in 0..3 {
        // 3 MB per call: under the 4 MiB message limit.
        let batch: Vec<Value> = (0..50)
            .map(|_| json!({"prompt": field, "output": field, "tool": field, "notes": field}))
            .collect();
        record(&mut client, &run, batch).await;
    }
    let mut host = server.auth_host().await;
    let mut from = 1;
    let mut events = 0;
    loop {
        let page = host
            .try_call("log.read", json!({"from_seq": from}))
            .await
            .expect("log.read must be answered")
            .unwrap();
        let got = page["events"].as_array().unwrap().len();
        if got == 0 {
            break;
        }
        events += got;
        from = page["next_seq"].as_u64().unwrap();
    }
    assert!(events > 3);
}
