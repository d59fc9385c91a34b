//! A full disk, end to end (issue 9, items 1–3): the daemon's data directory on a small
//! tmpfs the test mounts, filled with runs of large turns (~480 KiB per call, the size the
//! hang was found with).
//!
//! Before the fix: after the first refused write, writes got no answer for 30 s, new
//! connections were closed with 1011 "the daemon cannot record sessions now" until a
//! restart, and SIGTERM never stopped the process (sled's flush hung). Now: every write is
//! refused at once with a message saying the disk is full; reads, old and new connections
//! keep working; writes work again once space is freed (a session that connected while the
//! disk was full is recorded before its first write); SIGTERM stops the daemon; and every
//! acknowledged turn is there after a restart.

use car_tests::{DataDir, SmallDisk};
use serde_json::{Value, json};

use crate::builder;

/// Small, so filling it takes a few dozen calls.
const DISK_BYTES: u64 = 48 * 1024 * 1024;
/// Deleted to "free space".
const FILLER_BYTES: usize = 12 * 1024 * 1024;

/// A turn of ~240 KiB: 15 strings of 16 000 characters (each under the 16 KiB cut).
fn big_turn(n: usize) -> Value {
    let parameters: serde_json::Map<String, Value> = (0..15)
        .map(|k| {
            (
                format!("k{k}"),
                Value::from(format!("{n:06}").repeat(16_000 / 6)),
            )
        })
        .collect();
    json!({"prompt": format!("turn {n}"), "tool": "fill", "parameters": parameters})
}

fn is_disk_full(err: &car_tests::RpcError) -> bool {
    err.code == -32603 && err.message.contains("the disk is full")
}

#[tokio::test]
async fn a_full_disk_refuses_writes_at_once_keeps_reads_and_sessions_and_recovers_when_space_returns()
 {
    let Some(disk) = SmallDisk::mount(
        DISK_BYTES,
        "disk_full::a_full_disk_refuses_writes_at_once_keeps_reads_and_sessions_and_recovers_when_space_returns",
    ) else {
        return;
    };
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![1u8; FILLER_BYTES]).unwrap();
    let data = DataDir::new_in(disk.path());
    let mut server = builder().data_dir(&data).spawn().await.unwrap();

    let mut agent = server.auth_agent("filler").await;
    let run = agent
        .ok("runs.start", json!({"intent": "fill the disk"}))
        .await;
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    let mut acked = 0usize;
    let refusal = loop {
        let turns = json!([big_turn(acked), big_turn(acked + 1)]);
        match agent
            .call(
                "runs.record_turns",
                json!({"run_id": run_id, "turns": turns}),
            )
            .await
        {
            Ok(reply) => {
                assert_eq!(reply["ok"], true, "{reply}");
                acked += 2;
            }
            Err(err) => break err,
        }
        assert!(acked < 400, "a 48 MiB disk took {acked} turns of 240 KiB");
    };
    assert!(is_disk_full(&refusal), "{refusal:?}");
    assert!(acked >= 10, "only {acked} turns fitted");

    // Every later write is refused the same way (the writer is not stuck), and reads of
    // the same connection answer.
    for n in 0..3 {
        let err = agent
            .call(
                "runs.record_turns",
                json!({"run_id": run_id, "turns": [big_turn(1000 + n)]}),
            )
            .await
            .unwrap_err();
        assert!(is_disk_full(&err), "{err:?}");
        let listed = agent.ok("runs.list", json!({})).await;
        assert_eq!(listed["runs"][0]["turn_count"], acked);
        let trace = agent
            .ok("runs.get_trace", json!({"run_id": run_id, "cursor": 1}))
            .await;
        assert_eq!(trace["records"][0]["prompt"], "turn 0");
    }

    // A new session can authenticate and read while the disk is full; its writes are
    // refused like everyone's.
    let mut reader = server.auth_client().await;
    let listed = reader.ok("runs.list", json!({})).await;
    assert_eq!(listed["runs"], json!([]), "a client sees only its own runs");
    let mut host = server.auth_host().await;
    let listed = host.ok("runs.list", json!({})).await;
    assert_eq!(listed["runs"][0]["turn_count"], acked);
    let err = reader
        .call("runs.start", json!({"intent": "too soon", "agent_id": "r"}))
        .await
        .unwrap_err();
    assert!(is_disk_full(&err), "{err:?}");

    // Space returns: writes work again, on old and new sessions alike; the new session's
    // opening and authentication are recorded before its run.
    std::fs::remove_file(&filler).unwrap();
    let reply = agent
        .ok(
            "runs.record_turns",
            json!({"run_id": run_id, "turns": [big_turn(acked)]}),
        )
        .await;
    assert_eq!(reply["base_index"], acked);
    acked += 1;
    let started = reader
        .ok("runs.start", json!({"intent": "now", "agent_id": "r"}))
        .await;
    let reader_run = started["run_id"].as_str().unwrap().to_owned();
    let events = host
        .whole_log(Some(&[
            "session.opened",
            "session.authenticated",
            "run.started",
        ]))
        .await;
    let position = |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred);
    let started_at = position(&|e| e["kind"] == "run.started" && e["data"]["run_id"] == reader_run)
        .expect("the new run is in the log");
    let client_id = &events[started_at]["data"]["client_id"];
    let opened_at =
        position(&|e| e["kind"] == "session.opened" && &e["data"]["client_id"] == client_id)
            .expect("the session's opening was recorded");
    let authed_at =
        position(&|e| e["kind"] == "session.authenticated" && &e["data"]["client_id"] == client_id)
            .expect("the session's authentication was recorded");
    assert!(
        opened_at < authed_at && authed_at < started_at,
        "{events:?}"
    );

    // SIGTERM stops it (it used to hang in sled's flush), and every acknowledged turn is
    // there after a restart.
    let status = server.stop().await.unwrap();
    assert!(status.success(), "{status:?}");
    server.restart().await.unwrap();
    let mut host = server.auth_host().await;
    // Page through the trace (a response holds at most 8 MiB of records).
    let mut records = Vec::new();
    loop {
        let page = host
            .ok(
                "runs.get_trace",
                json!({"run_id": run_id, "cursor": records.len()}),
            )
            .await;
        let page = page["records"].as_array().unwrap().clone();
        if page.is_empty() {
            break;
        }
        records.extend(page);
    }
    let turns: Vec<&Value> = records.iter().filter(|r| r["record"] == "turn").collect();
    assert_eq!(turns.len(), acked);
    for (i, turn) in turns.iter().enumerate() {
        assert_eq!(turn["index"], i);
        assert_eq!(turn["prompt"], format!("turn {i}"));
    }
}
