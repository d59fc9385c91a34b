//! PROTOCOL.md §3.5: `runs.subscribe` (snapshot, then `runs.trace.event` for every later
//! record with contiguous cursors, no gap and no duplicate, even while another client
//! appends), resuming with `cursor`, subscribing to an ended run (snapshot, then one `ended`
//! event), `runs.unsubscribe` (`removed`), not found for unknown and unreadable runs, slow
//! subscribers that are caught up from the log without slowing anyone, and subscribers
//! that leave.

use std::time::Duration;

use car_tests::{Client, turns};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::runs::{complete, full_trace, record, start};
use crate::server;

/// Reads `runs.trace.event`s of `run_id` until its `ended` event; returns them all.
pub(crate) async fn events_until_ended(client: &mut Client, run_id: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let event = client
            .next_notification_where("runs.trace.event", |e| e["run_id"] == run_id)
            .await
            .unwrap();
        let ended = event["record"]["record"] == "ended";
        events.push(event);
        if ended {
            return events;
        }
    }
}

/// Checks a snapshot and the events after it: every turn index `0..total` exactly once and
/// in order, cursors contiguous from the snapshot's, and one final `ended`.
fn assert_contiguous(snapshot: &Value, events: &[Value], total: u64, final_status: &str) {
    let snap_turns = snapshot["turns_so_far"].as_array().unwrap();
    let from = snapshot["cursor"].as_u64().unwrap() - snap_turns.len() as u64;
    for (i, t) in snap_turns.iter().enumerate() {
        assert_eq!(t["record"], "turn");
        assert_eq!(t["index"], from + i as u64, "{t}");
        assert_eq!(t["prompt"], format!("t-{}", from + i as u64));
    }
    let mut cursor = snapshot["cursor"].as_u64().unwrap();
    let (last, turns) = events.split_last().expect("at least the ended event");
    for event in turns {
        cursor += 1;
        assert_eq!(event["cursor"], cursor, "{event}");
        assert_eq!(event["record"]["record"], "turn", "{event}");
        assert_eq!(event["record"]["index"], cursor - 1, "{event}");
        assert_eq!(event["record"]["prompt"], format!("t-{}", cursor - 1));
        assert_eq!(event["status"], "in_progress", "{event}");
        assert_eq!(event["run_id"], snapshot["run_id"]);
        assert_eq!(event["agent_id"], snapshot["agent_id"]);
    }
    assert_eq!(
        cursor, total,
        "every turn after the snapshot came as an event"
    );
    assert_eq!(last["record"]["record"], "ended", "{last}");
    assert_eq!(last["cursor"], total, "{last}");
    assert_eq!(last["status"], final_status, "{last}");
}

/// Records `batches` batches of 1–4 turns tagged `t-<index>`, reporting each ack on
/// `progress`, then completes the run. Returns the number of turns.
async fn write_run(
    mut writer: Client,
    run_id: String,
    batches: usize,
    progress: mpsc::UnboundedSender<u64>,
) -> u64 {
    let mut next = 0u64;
    for b in 0..batches {
        let size = 1 + b % 4;
        let batch: Vec<Value> = (0..size)
            .map(|i| json!({"prompt": format!("t-{}", next + i as u64), "output": b}))
            .collect();
        let base = record(&mut writer, &run_id, batch).await;
        assert_eq!(base, next);
        next += size as u64;
        let _ = progress.send(next);
    }
    complete(&mut writer, &run_id).await;
    next
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_then_contiguous_live_events_while_another_client_appends() {
    let server = server(&[]).await;
    let mut owner = server.auth_client().await;
    let run = start(&mut owner, "a").await;
    let (progress, mut acked) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_run(owner, run.clone(), 60, progress));
    // Subscribe while the writer is under way: some turns are in the snapshot, the rest
    // come live.
    while acked.recv().await.expect("the writer stopped early") < 10 {}
    let mut host = server.auth_host().await;
    let mut agent = server.auth_agent("a").await;
    let host_snapshot = host.ok("runs.subscribe", json!({"run_id": run})).await;
    let agent_snapshot = agent.ok("runs.subscribe", json!({"run_id": run})).await;
    for snapshot in [&host_snapshot, &agent_snapshot] {
        assert_eq!(snapshot["run_id"], run.as_str());
        assert_eq!(snapshot["agent_id"], "a");
        assert_eq!(snapshot["status"], "in_progress");
        assert!(snapshot["cursor"].as_u64().unwrap() >= 10, "{snapshot}");
        assert_eq!(
            snapshot["turns_so_far"].as_array().unwrap().len() as u64,
            snapshot["cursor"].as_u64().unwrap()
        );
    }
    let total = writer.await.unwrap();
    let host_events = events_until_ended(&mut host, &run).await;
    let agent_events = events_until_ended(&mut agent, &run).await;
    assert_contiguous(&host_snapshot, &host_events, total, "completed");
    assert_contiguous(&agent_snapshot, &agent_events, total, "completed");
    // The ended event carries the trace's ended record.
    let trace = full_trace(&mut host, &run).await;
    let ended = trace["records"].as_array().unwrap().last().unwrap();
    assert_eq!(host_events.last().unwrap()["record"], *ended);
}

#[tokio::test]
async fn subscribe_with_a_cursor_resumes_from_there() {
    let server = server(&[]).await;
    let mut owner = server.auth_client().await;
    let run = start(&mut owner, "a").await;
    let batch: Vec<Value> = (0..10)
        .map(|i| json!({"prompt": format!("t-{i}")}))
        .collect();
    record(&mut owner, &run, batch).await;
    let mut sub = server.auth_host().await;

    let resumed = sub
        .ok("runs.subscribe", json!({"run_id": run, "cursor": 7}))
        .await;
    let indices: Vec<u64> = resumed["turns_so_far"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, vec![7, 8, 9]);
    assert_eq!(resumed["cursor"], 10);
    assert_eq!(resumed["status"], "in_progress");

    let from_zero = sub
        .ok("runs.subscribe", json!({"run_id": run, "cursor": 0}))
        .await;
    let default = sub.ok("runs.subscribe", json!({"run_id": run})).await;
    assert_eq!(from_zero, default);
    assert_eq!(default["turns_so_far"].as_array().unwrap().len(), 10);
    assert_eq!(default["turns_so_far"][3]["prompt"], "t-3");

    // Past the end: nothing so far, and the cursor is the run's turn count.
    let beyond = sub
        .ok("runs.subscribe", json!({"run_id": run, "cursor": 50}))
        .await;
    assert_eq!(beyond["turns_so_far"], json!([]));
    assert_eq!(beyond["cursor"], 10);

    owner
        .ok(
            "runs.record_turns",
            json!({"run_id": run, "turns": [{"prompt": "t-10"}]}),
        )
        .await;
    let event = sub
        .next_notification_where("runs.trace.event", |e| e["run_id"] == run.as_str())
        .await
        .unwrap();
    assert_eq!(event["cursor"], 11);
    assert_eq!(event["record"]["index"], 10);
    assert_eq!(event["record"]["prompt"], "t-10");
    // One subscription per session and run: subscribing again replaced the earlier ones,
    // so the turn came once.
    complete(&mut owner, &run).await;
    let rest = events_until_ended(&mut sub, &run).await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    sub.ok("runs.list", json!({})).await;
    assert_eq!(
        sub.take_notifications("runs.trace.event"),
        Vec::<Value>::new()
    );
}

#[tokio::test]
async fn subscribing_to_an_ended_run_gives_the_snapshot_then_one_ended_event() {
    let server = server(&[]).await;
    let mut owner = server.auth_client().await;
    let run = start(&mut owner, "a").await;
    let batch: Vec<Value> = (0..4)
        .map(|i| json!({"prompt": format!("t-{i}")}))
        .collect();
    record(&mut owner, &run, batch).await;
    owner
        .ok(
            "runs.complete",
            json!({"run_id": run, "outcome": {"status": "failure", "summary": "no"}}),
        )
        .await;
    let trace = full_trace(&mut owner, &run).await;
    for cursor in [None, Some(2), Some(4)] {
        let mut sub = server.auth_host().await;
        let mut params = json!({"run_id": run});
        if let Some(c) = cursor {
            params["cursor"] = json!(c);
        }
        let snapshot = sub.ok("runs.subscribe", params).await;
        assert_eq!(snapshot["status"], "completed");
        assert_eq!(snapshot["cursor"], 4);
        let events = events_until_ended(&mut sub, &run).await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["cursor"], 4);
        assert_eq!(events[0]["status"], "completed");
        assert_eq!(
            events[0]["record"],
            *trace["records"].as_array().unwrap().last().unwrap()
        );
        // Nothing follows the ended event.
        sub.ok("runs.list", json!({})).await;
        assert_eq!(
            sub.take_notifications("runs.trace.event"),
            Vec::<Value>::new()
        );
    }
}

#[tokio::test]
async fn unsubscribe_removes_the_subscription_and_stops_its_events() {
    let server = server(&[]).await;
    let mut owner = server.auth_client().await;
    let run = start(&mut owner, "a").await;
    let mut sub = server.auth_host().await;
    let mut control = server.auth_host().await;
    sub.ok("runs.subscribe", json!({"run_id": run})).await;
    control.ok("runs.subscribe", json!({"run_id": run})).await;
    record(&mut owner, &run, vec![json!({"prompt": "t-0"})]).await;
    let event = sub.next_notification("runs.trace.event").await.unwrap();
    assert_eq!(event["cursor"], 1);
    control.next_notification("runs.trace.event").await.unwrap();

    let removed = sub.ok("runs.unsubscribe", json!({"run_id": run})).await;
    assert_eq!(removed, json!({"run_id": run, "removed": true}));
    let again = sub.ok("runs.unsubscribe", json!({"run_id": run})).await;
    assert_eq!(again, json!({"run_id": run, "removed": false}));
    let never = sub
        .ok("runs.unsubscribe", json!({"run_id": "never-subscribed"}))
        .await;
    assert_eq!(
        never,
        json!({"run_id": "never-subscribed", "removed": false})
    );

    record(&mut owner, &run, vec![json!({"prompt": "t-1"})]).await;
    complete(&mut owner, &run).await;
    // The control subscriber sees the rest; by then the unsubscribed one would have too.
    let rest = events_until_ended(&mut control, &run).await;
    assert_eq!(rest.len(), 2);
    sub.ok("runs.list", json!({})).await;
    assert_eq!(
        sub.take_notifications("runs.trace.event"),
        Vec::<Value>::new()
    );
}

#[tokio::test]
async fn subscribe_to_an_unknown_or_unreadable_run_is_not_found() {
    let server = server(&[]).await;
    let mut owner = server.auth_client().await;
    let run = start(&mut owner, "a").await;
    let mut stranger = server.auth_client().await;
    let mut other_agent = server.auth_agent("b").await;
    for client in [&mut stranger, &mut other_agent] {
        let result = client.ok("runs.subscribe", json!({"run_id": run})).await;
        assert_eq!(result, json!({"run_id": run, "not_found": true}));
    }
    let unknown = owner.ok("runs.subscribe", json!({"run_id": "nope"})).await;
    assert_eq!(unknown, json!({"run_id": "nope", "not_found": true}));
    // Readers may: the owner, the run's agent.
    let mine = owner.ok("runs.subscribe", json!({"run_id": run})).await;
    assert_eq!(mine["cursor"], 0);
    let mut agent = server.auth_agent("a").await;
    let theirs = agent.ok("runs.subscribe", json!({"run_id": run})).await;
    assert_eq!(theirs["status"], "in_progress");
    // The refused ones get no events.
    record(&mut owner, &run, vec![json!({"prompt": "t-0"})]).await;
    agent.next_notification("runs.trace.event").await.unwrap();
    owner.next_notification("runs.trace.event").await.unwrap();
    for client in [&mut stranger, &mut other_agent] {
        client.ok("runs.list", json!({})).await;
        assert_eq!(
            client.take_notifications("runs.trace.event"),
            Vec::<Value>::new()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_misses_nothing_and_slows_no_one() {
    const BATCHES: usize = 20;
    const PER_BATCH: usize = 100;
    let server = server(&[]).await;
    let mut owner = server.auth_client().await;
    let run = start(&mut owner, "a").await;
    // A small socket buffer: once it stops reading, the path to it is full at once.
    let mut slow = server.connect_small_buffer().await;
    slow.ok("session.auth", json!({"host_token": server.host_token}))
        .await;
    let slow_snapshot = slow.ok("runs.subscribe", json!({"run_id": run})).await;
    let mut live = server.auth_host().await;
    let live_snapshot = live.ok("runs.subscribe", json!({"run_id": run})).await;
    // A live subscriber keeps reading in its own task.
    let run_id = run.clone();
    let live_reader =
        tokio::spawn(async move { (events_until_ended(&mut live, &run_id).await, live) });

    // 2000 turns of 8 KiB: far more than the slow subscriber's socket buffers hold.
    let payload = "p".repeat(8 * 1024);
    for b in 0..BATCHES {
        let batch: Vec<Value> = (0..PER_BATCH)
            .map(|i| json!({"prompt": format!("t-{}", b * PER_BATCH + i), "output": payload}))
            .collect();
        // Each ack arrives although the slow subscriber has read nothing.
        let base = tokio::time::timeout(Duration::from_secs(15), record(&mut owner, &run, batch))
            .await
            .expect("the writer was held up by a subscriber that does not read");
        assert_eq!(base, (b * PER_BATCH) as u64);
    }
    complete(&mut owner, &run).await;
    let total = (BATCHES * PER_BATCH) as u64;
    let (live_events, _live) = live_reader.await.unwrap();
    assert_contiguous(&live_snapshot, &live_events, total, "completed");
    // Now the slow one reads: everything, in order, caught up from the log.
    let slow_events = events_until_ended(&mut slow, &run).await;
    assert_contiguous(&slow_snapshot, &slow_events, total, "completed");

    // A late subscriber to this 16 MB run: the snapshot and the events after it hold every
    // turn exactly once (the daemon may cut a snapshot this large short: its cursor then
    // says where the events take over).
    let mut late = server.auth_host().await;
    let snapshot = late.ok("runs.subscribe", json!({"run_id": run})).await;
    assert_eq!(snapshot["status"], "completed");
    let events = events_until_ended(&mut late, &run).await;
    assert_contiguous(&snapshot, &events, total, "completed");
    // get_trace pages through it with the cursor.
    let mut cursor = 0u64;
    let mut records = 0u64;
    loop {
        let page = late
            .ok("runs.get_trace", json!({"run_id": run, "cursor": cursor}))
            .await;
        let got = page["records"].as_array().unwrap();
        if got.is_empty() {
            break;
        }
        for (i, r) in got.iter().enumerate() {
            let position = cursor + i as u64;
            if position == 0 {
                assert_eq!(r["record"], "started");
            } else if position <= total {
                assert_eq!(r["index"], position - 1, "{}", r["record"]);
            } else {
                assert_eq!(r["record"], "ended");
            }
        }
        records += got.len() as u64;
        assert_eq!(page["cursor"], cursor + got.len() as u64);
        cursor = page["cursor"].as_u64().unwrap();
    }
    assert_eq!(records, total + 2);
}

#[tokio::test]
async fn a_subscriber_that_leaves_never_fails_the_run() {
    let server = server(&[]).await;
    let mut owner = server.auth_client().await;
    let run = start(&mut owner, "a").await;
    let mut sub = server.auth_host().await;
    sub.ok("runs.subscribe", json!({"run_id": run})).await;
    record(&mut owner, &run, turns("t", 3)).await;
    sub.next_notification("runs.trace.event").await.unwrap();
    sub.close().await;
    record(&mut owner, &run, turns("u", 3)).await;
    complete(&mut owner, &run).await;
    let list = owner.ok("runs.list", json!({})).await;
    assert_eq!(list["runs"][0]["status"], "completed");
    assert_eq!(list["runs"][0]["turn_count"], 6);
}
