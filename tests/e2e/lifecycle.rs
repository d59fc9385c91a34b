//! PROTOCOL.md §3.7 and §9, the daemon's life: a departed owner's runs end
//! `incomplete`/`disconnected` after the grace (not while another owner stays); a restart
//! answers `runs.list`/`runs.get_trace` exactly as before and keeps the log's seqs going; a
//! SIGKILL mid-run loses no acknowledged turn and the run ends `daemon_restart` (once);
//! SIGTERM/SIGINT stop cleanly (exit 0, token files removed, runs `daemon_shutdown`); a
//! second daemon on the same data directory exits 2 naming it; `--help`; retention by count
//! (periodic GC and at start-up) and by age; and the daemon's final state equals a fresh
//! replay of its log (canonical digest).

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use car_tests::{Client, DataDir, InProcessServer, replay_digest, turns};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::runs::{complete, full_trace, record, start};
use crate::{builder, server};

/// The `ended` record of `run_id`, as a subscribed host receives it.
async fn ended_event(host: &mut Client, run_id: &str) -> Value {
    host.next_notification_where("runs.trace.event", |e| {
        e["run_id"] == run_id && e["record"]["record"] == "ended"
    })
    .await
    .unwrap()
}

fn incomplete(reason: &str) -> Value {
    json!({"kind": "incomplete", "reason": reason})
}

/// The last record of a trace.
fn last_record(trace: &Value) -> Value {
    trace["records"].as_array().unwrap().last().unwrap().clone()
}

/// Every event of the log (host session).
async fn whole_log(host: &mut Client) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let page = host
            .ok("log.read", json!({"from_seq": from, "limit": 10_000}))
            .await;
        let got = page["events"].as_array().unwrap();
        if got.is_empty() {
            return events;
        }
        from = page["next_seq"].as_u64().unwrap();
        events.extend(got.iter().cloned());
    }
}

#[tokio::test]
async fn a_departed_owners_run_ends_incomplete_disconnected_after_the_grace() {
    let server = server(&[]).await;
    let mut host = server.auth_host().await;
    for abrupt in [false, true] {
        let mut owner = server.auth_client().await;
        let run = start(&mut owner, "a").await;
        record(&mut owner, &run, turns("t", 2)).await;
        let snapshot = host.ok("runs.subscribe", json!({"run_id": run})).await;
        assert_eq!(snapshot["status"], "in_progress");
        let left = Instant::now();
        if abrupt {
            drop(owner); // no close handshake: the TCP connection just goes
        } else {
            owner.close().await;
        }
        let ended = ended_event(&mut host, &run).await;
        let waited = left.elapsed();
        assert!(
            waited >= Duration::from_millis(250),
            "ended {waited:?} after the owner left, before the 250 ms grace"
        );
        assert_eq!(ended["status"], "incomplete", "{ended}");
        assert_eq!(ended["cursor"], 2);
        assert_eq!(ended["record"]["termination"], incomplete("disconnected"));
        let trace = full_trace(&mut host, &run).await;
        assert_eq!(last_record(&trace), ended["record"]);
    }
    let incomplete_runs = host.ok("runs.list", json!({"status": "incomplete"})).await;
    let incomplete_runs = incomplete_runs["runs"].as_array().unwrap().clone();
    assert_eq!(incomplete_runs.len(), 2);
    // Ended is ended: the agent (an owner) can neither complete nor extend it.
    let mut agent = server.auth_agent("a").await;
    let run = incomplete_runs[0]["run_id"].as_str().unwrap();
    let err = agent
        .err(
            "runs.complete",
            json!({"run_id": run, "outcome": {"status": "success"}}),
        )
        .await;
    assert_eq!(err.code, -32603);
    assert_eq!(
        err.message,
        format!("run `{run}` is already terminal — cannot record another outcome")
    );
    let refused = agent
        .ok(
            "runs.record_turns",
            json!({"run_id": run, "turns": turns("x", 1)}),
        )
        .await;
    assert_eq!(refused["dropped"], "run_terminal");
}

#[tokio::test]
async fn an_agent_that_reconnects_within_the_grace_keeps_its_run() {
    let server = server(&["--disconnect-grace-ms", "300"]).await;
    let mut host = server.auth_host().await;
    host.ok("log.subscribe", json!({})).await;
    let mut agent = server.auth_agent("comeback").await;
    let run = agent.ok("runs.start", json!({"intent": "survive"})).await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    host.ok("runs.subscribe", json!({"run_id": run})).await;
    agent.close().await;
    // As soon as the old session is closed, the agent comes back.
    host.next_notification_where("log.event", |e| {
        e["kind"] == "session.closed" && e["data"]["agent_id"] == "comeback"
    })
    .await
    .unwrap();
    let mut agent = server.auth_agent("comeback").await;
    // A witness that leaves after the agent came back: its grace expires after the
    // agent's, so once the witness's run has ended, the agent's grace has expired too.
    let mut witness = server.auth_client().await;
    let witness_run = start(&mut witness, "witness").await;
    host.ok("runs.subscribe", json!({"run_id": witness_run}))
        .await;
    witness.close().await;
    ended_event(&mut host, &witness_run).await;
    let list = host.ok("runs.list", json!({"agent_id": "comeback"})).await;
    assert_eq!(list["runs"][0]["status"], "in_progress", "{list}");
    assert_eq!(record(&mut agent, &run, turns("t", 1)).await, 0);
    complete(&mut agent, &run).await;
}

#[tokio::test]
async fn a_run_is_not_ended_while_another_owner_session_stays() {
    let server = server(&["--disconnect-grace-ms", "100"]).await;
    let mut host = server.auth_host().await;

    // The starter leaves, but an agent session bound to the run's agent stays.
    let mut starter = server.auth_client().await;
    let held = start(&mut starter, "held").await;
    let witness = start(&mut starter, "unheld").await;
    let mut agent = server.auth_agent("held").await;
    host.ok("runs.subscribe", json!({"run_id": held})).await;
    host.ok("runs.subscribe", json!({"run_id": witness})).await;
    starter.close().await;
    // Both runs are decided in the same step once the grace expires: the witness ends...
    let ended = ended_event(&mut host, &witness).await;
    assert_eq!(ended["record"]["termination"], incomplete("disconnected"));
    // ...and the held run does not.
    let list = host.ok("runs.list", json!({"agent_id": "held"})).await;
    assert_eq!(list["runs"][0]["status"], "in_progress", "{list}");
    record(&mut agent, &held, turns("still", 1)).await;

    // The agent session leaves while the run's starter stays: the starter's run goes on,
    // the agent's own run (no other owner) ends.
    let mut starter = server.auth_client().await;
    let kept = start(&mut starter, "held").await;
    let own = agent.ok("runs.start", json!({"intent": "own"})).await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    host.ok("runs.subscribe", json!({"run_id": own})).await;
    agent.close().await;
    let ended = ended_event(&mut host, &own).await;
    assert_eq!(ended["record"]["termination"], incomplete("disconnected"));
    // The first held run has no owner left now: it ended in the same step.
    let ended = ended_event(&mut host, &held).await;
    assert_eq!(ended["record"]["termination"], incomplete("disconnected"));
    assert_eq!(ended["cursor"], 1);
    let trace = full_trace(&mut host, &kept).await;
    assert_eq!(trace["records"].as_array().unwrap().len(), 1, "{trace}");
    record(&mut starter, &kept, turns("t", 1)).await;
}

/// What the daemon answers about `runs`, as a host and as agent `a` see it.
async fn views(host: &mut Client, agent: &mut Client, runs: &[String]) -> Value {
    let mut traces = Vec::new();
    for run in runs {
        traces.push(full_trace(host, run).await);
        traces.push(
            host.ok("runs.get_trace", json!({"run_id": run, "cursor": 2}))
                .await,
        );
        traces.push(agent.ok("runs.get_trace", json!({"run_id": run})).await);
    }
    json!({
        "list": host.ok("runs.list", json!({})).await,
        "completed": host.ok("runs.list", json!({"status": "completed"})).await,
        "incomplete": host.ok("runs.list", json!({"status": "incomplete"})).await,
        "page": host.ok("runs.list", json!({"limit": 2, "before": runs[3]})).await,
        "by_agent": host.ok("runs.list", json!({"agent_id": "a"})).await,
        "agent_list": agent.ok("runs.list", json!({})).await,
        "traces": traces,
    })
}

#[tokio::test]
async fn a_restart_answers_runs_list_and_get_trace_exactly_as_before() {
    let mut server = server(&[]).await;
    let mut host = server.auth_host().await;
    let mut client = server.auth_client().await;
    let mut runs = Vec::new();
    // A completed run with turns and a rich outcome.
    let run = start(&mut client, "a").await;
    record(&mut client, &run, turns("t", 5)).await;
    client
        .ok(
            "runs.complete",
            json!({"run_id": run, "outcome": {"status": "success", "summary": "s",
                   "metrics": {"n": 1.5}, "evidence": [1, "two"]}}),
        )
        .await;
    runs.push(run);
    // An idempotent run.
    let keyed = client
        .ok(
            "runs.start",
            json!({"intent": "keyed", "agent_id": "b", "idempotency_key": "key-1"}),
        )
        .await;
    record(&mut client, "key-1", turns("k", 3)).await;
    client
        .ok(
            "runs.complete",
            json!({"run_id": "key-1", "outcome": {"status": "failure"}}),
        )
        .await;
    runs.push("key-1".to_owned());
    // A run that ended incomplete when its owner left.
    let mut leaver = server.auth_client().await;
    let left = start(&mut leaver, "a").await;
    record(&mut leaver, &left, turns("l", 2)).await;
    host.ok("runs.subscribe", json!({"run_id": left})).await;
    leaver.close().await;
    ended_event(&mut host, &left).await;
    runs.push(left);
    // A run of the agent's own.
    let mut agent = server.auth_agent("a").await;
    let own = agent
        .ok(
            "runs.start",
            json!({"intent": "own", "outcome_description": "od"}),
        )
        .await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    record(&mut agent, &own, turns("o", 4)).await;
    complete(&mut agent, &own).await;
    runs.push(own);

    let before = views(&mut host, &mut agent, &runs).await;
    let log_before = whole_log(&mut host).await;
    let started_before = log_before
        .iter()
        .filter(|e| e["kind"] == "run.started")
        .count();
    drop((host, client, agent));

    let status = server.stop().await.unwrap();
    assert_eq!(status.code(), Some(0));
    let old_tokens = (server.auth_token.clone(), server.host_token.clone());
    server.restart().await.unwrap();
    // Fresh tokens at every start.
    assert_ne!(server.auth_token, old_tokens.0);
    assert_ne!(server.host_token, old_tokens.1);

    let mut host = server.auth_host().await;
    let mut agent = server.auth_agent("a").await;
    let after = views(&mut host, &mut agent, &runs).await;
    assert_eq!(after, before);
    // The idempotency key still names the same run for its owners (a session bound to its
    // agent), and starting it again records nothing; to a plain client of the new daemon,
    // which may not read the run, the key is not available.
    let mut owner = server.auth_agent("b").await;
    let again = owner
        .ok(
            "runs.start",
            json!({"intent": "again", "idempotency_key": "key-1"}),
        )
        .await;
    assert_eq!(again, keyed);
    let mut client = server.auth_client().await;
    let refused = client
        .err(
            "runs.start",
            json!({"intent": "again", "agent_id": "b", "idempotency_key": "key-1"}),
        )
        .await;
    assert_eq!(refused.message, "idempotency_key is not available");
    // The log goes on where it was: the old events unchanged, seqs 1, 2, 3, … without gap.
    let log_after = whole_log(&mut host).await;
    assert_eq!(log_after[..log_before.len()], log_before[..]);
    for (i, event) in log_after.iter().enumerate() {
        assert_eq!(event["seq"], i as u64 + 1);
    }
    let started_after = log_after
        .iter()
        .filter(|e| e["kind"] == "run.started")
        .count();
    assert_eq!(started_after, started_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_run_loses_no_acknowledged_turn() {
    let mut server = server(&[]).await;
    let mut client = server.auth_client().await;
    let run = start(&mut client, "a").await;
    // An agent session is attached when the daemon dies.
    let mut attached = server.auth_agent("a").await;
    attached.ok("runs.list", json!({})).await;
    let (acks, mut acked) = mpsc::unbounded_channel::<(u64, Vec<String>)>();
    let run_id = run.clone();
    let writer = tokio::spawn(async move {
        for b in 0u64.. {
            let prompts: Vec<String> = (0..1 + b % 3).map(|i| format!("k-{b}-{i}")).collect();
            let batch: Vec<Value> = prompts.iter().map(|p| json!({"prompt": p})).collect();
            let params = json!({"run_id": run_id, "turns": batch});
            match client.try_call("runs.record_turns", params).await {
                Ok(Ok(result)) => {
                    assert_eq!(result["ok"], true, "{result}");
                    let base = result["base_index"].as_u64().unwrap();
                    let _ = acks.send((base, prompts));
                }
                Ok(Err(err)) => panic!("record_turns failed: {err}"),
                Err(_) => return b, // the daemon is gone
            }
        }
        unreachable!()
    });
    let mut all_acks = Vec::new();
    while all_acks.len() < 30 {
        all_acks.push(acked.recv().await.expect("the writer stopped early"));
    }
    // Crash while the writer is still writing.
    let status = server.kill().await.unwrap();
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));
    let batches_sent = tokio::time::timeout(car_tests::WAIT, writer)
        .await
        .unwrap()
        .unwrap();
    while let Ok(ack) = acked.try_recv() {
        all_acks.push(ack);
    }
    assert_eq!(all_acks.len() as u64, batches_sent);

    server.restart().await.unwrap();
    let mut host = server.auth_host().await;
    let trace = full_trace(&mut host, &run).await;
    let records = trace["records"].as_array().unwrap();
    let turns: Vec<&Value> = records.iter().filter(|r| r["record"] == "turn").collect();
    let mut acked_total = 0;
    for (base, prompts) in &all_acks {
        assert_eq!(*base, acked_total, "acks are contiguous");
        for (i, prompt) in prompts.iter().enumerate() {
            let t = turns
                .get(*base as usize + i)
                .unwrap_or_else(|| panic!("acknowledged turn {} lost", base + i as u64));
            assert_eq!(t["index"], base + i as u64);
            assert_eq!(t["prompt"], prompt.as_str());
        }
        acked_total += prompts.len() as u64;
    }
    // At most the batch in flight is there beyond the acknowledged ones, and then whole.
    let extra = turns.len() as u64 - acked_total;
    let in_flight = 1 + batches_sent % 3;
    assert!(
        extra == 0 || extra == in_flight,
        "{extra} turns beyond the acknowledged"
    );
    for (i, t) in turns.iter().enumerate().skip(acked_total as usize) {
        assert_eq!(
            t["prompt"],
            format!("k-{batches_sent}-{}", i as u64 - acked_total)
        );
    }
    let ended = last_record(&trace);
    assert_eq!(
        ended["termination"],
        incomplete("daemon_restart"),
        "{ended}"
    );
    let list = host.ok("runs.list", json!({})).await;
    assert_eq!(list["runs"][0]["status"], "incomplete");
    assert_eq!(list["runs"][0]["turn_count"], turns.len());
    // The sessions found open were closed: the agent id is free again.
    drop(attached);
    let mut agent = server.auth_agent("a").await;
    agent.ok("runs.list", json!({})).await;
    drop(agent);
    // The log is whole: seqs 1, 2, 3, … without gap.
    for (i, event) in whole_log(&mut host).await.iter().enumerate() {
        assert_eq!(event["seq"], i as u64 + 1);
    }

    // A crash right after the recovery: the next start finds nothing left to do.
    drop(host);
    server.kill().await.unwrap();
    server.restart().await.unwrap();
    let mut host = server.auth_host().await;
    assert_eq!(full_trace(&mut host, &run).await, trace);
    let ends = host.ok("log.read", json!({"kinds": ["run.ended"]})).await;
    let ends: Vec<&Value> = ends["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"]["run_id"] == run.as_str())
        .collect();
    assert_eq!(ends.len(), 1, "the run ended once: {ends:?}");
}

#[tokio::test]
async fn sigterm_stops_gracefully_with_exit_0() {
    let mut server = server(&[]).await;
    let dir = server.data_dir().path().to_owned();
    let mut client = server.auth_client().await;
    let open = start(&mut client, "a").await;
    record(&mut client, &open, turns("t", 2)).await;
    let done = start(&mut client, "a").await;
    complete(&mut client, &done).await;
    let mut host = server.auth_host().await;
    host.ok("runs.subscribe", json!({"run_id": open})).await;
    assert!(dir.join("auth-token").exists() && dir.join("host-token").exists());

    server.signal(Signal::SIGTERM).unwrap();
    // Sessions are told the daemon is going away.
    for session in [&mut client, &mut host] {
        let frame = session.wait_closed().await.unwrap();
        assert_eq!(frame.map(|f| f.code), Some(CloseCode::Away));
    }
    let status = server.wait_exit().await.unwrap();
    assert_eq!(status.code(), Some(0), "{:?}", server.stderr());
    assert!(!dir.join("auth-token").exists(), "auth-token left behind");
    assert!(!dir.join("host-token").exists(), "host-token left behind");

    server.restart().await.unwrap();
    let mut host = server.auth_host().await;
    let trace = full_trace(&mut host, &open).await;
    assert_eq!(
        last_record(&trace)["termination"],
        incomplete("daemon_shutdown")
    );
    assert_eq!(trace["records"].as_array().unwrap().len(), 4);
    let trace = full_trace(&mut host, &done).await;
    assert_eq!(last_record(&trace)["termination"]["kind"], "outcome");

    // SIGINT too.
    drop(host);
    server.signal(Signal::SIGINT).unwrap();
    assert_eq!(server.wait_exit().await.unwrap().code(), Some(0));
    assert!(!dir.join("auth-token").exists() && !dir.join("host-token").exists());
}

#[tokio::test]
async fn a_second_daemon_on_the_same_data_dir_exits_2_naming_it() {
    let server = server(&[]).await;
    let dir = server.data_dir().path().to_owned();
    let (status, _, stderr) = builder()
        .args(["--port", "0", "--data-dir"])
        .args([dir.as_os_str()])
        .run_to_exit()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(dir.to_str().unwrap()),
        "the message names the directory: {stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {}", server.pid())),
        "the message names the holder's pid: {stderr}"
    );
    // The first daemon is unharmed, tokens included.
    assert_eq!(
        car_gateway::tokens::read_token(&dir.join("auth-token")).unwrap(),
        server.auth_token
    );
    let mut client = server.auth_client().await;
    client.ok("runs.list", json!({})).await;
}

#[tokio::test]
async fn help_lists_the_flags_and_exits_0() {
    let (status, stdout, stderr) = builder().args(["--help"]).run_to_exit().await.unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    for flag in [
        "--listen",
        "--port",
        "--data-dir",
        "--no-auth",
        "--no-approvals",
        "--approval-timeout",
        "--approval-methods",
        "--tool-timeout",
        "--run-retention",
        "--max-runs",
        "--gc-interval",
        "--max-message-bytes",
        "--max-connections",
        "--mcp-bind",
        "--memory-max-facts",
    ] {
        assert!(
            stdout.contains(flag),
            "--help does not mention {flag}:\n{stdout}"
        );
    }
}

#[tokio::test]
async fn retention_evicts_the_oldest_ended_runs_beyond_max_runs() {
    let server = server(&["--max-runs", "2", "--gc-interval", "1"]).await;
    let mut host = server.auth_host().await;
    let sub = host.ok("log.subscribe", json!({})).await;
    let sub_id = sub["subscription_id"].clone();
    let mut client = server.auth_client().await;
    let mut ended = Vec::new();
    for i in 0..4 {
        let key = format!("key-{i}");
        client
            .ok(
                "runs.start",
                json!({"intent": "i", "agent_id": "a", "idempotency_key": key}),
            )
            .await;
        record(&mut client, &key, turns("t", 1)).await;
        complete(&mut client, &key).await;
        ended.push(key);
    }
    let open = start(&mut client, "a").await;
    // Five runs, at most two kept: the three oldest ended ones go; the run in progress
    // is never evicted.
    let mut evicted = Vec::new();
    while evicted.len() < 3 {
        let event = host
            .next_notification_where("log.event", |e| {
                e["subscription_id"] == sub_id && e["kind"] == "run.evicted"
            })
            .await
            .unwrap();
        assert_eq!(event["data"]["reason"], "count", "{event}");
        assert_eq!(event["data"]["agent_id"], "a", "{event}");
        evicted.push(event["data"]["run_id"].as_str().unwrap().to_owned());
    }
    evicted.sort();
    assert_eq!(evicted, ended[..3]);
    for run in &ended[..3] {
        for session in [&mut host, &mut client] {
            let trace = session.ok("runs.get_trace", json!({"run_id": run})).await;
            assert_eq!(trace, json!({"run_id": run, "not_found": true}));
            let sub = session.ok("runs.subscribe", json!({"run_id": run})).await;
            assert_eq!(sub, json!({"run_id": run, "not_found": true}));
        }
        let refused = client
            .ok(
                "runs.record_turns",
                json!({"run_id": run, "turns": turns("x", 1)}),
            )
            .await;
        assert_eq!(refused["dropped"], "run_not_found");
    }
    let list = host.ok("runs.list", json!({})).await;
    let listed: Vec<&str> = list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [open.as_str(), ended[3].as_str()]);
    let kept = full_trace(&mut host, &ended[3]).await;
    assert_eq!(kept["records"].as_array().unwrap().len(), 3);
    // An evicted run's idempotency key still names it: nothing new is started. Only its
    // agent's sessions get it back (an evicted run keeps no other owner).
    let mut owner = server.auth_agent("a").await;
    let again = owner
        .ok(
            "runs.start",
            json!({"intent": "again", "idempotency_key": "key-0"}),
        )
        .await;
    assert_eq!(again, json!({"run_id": "key-0", "agent_id": "a"}));
    let refused = client
        .err(
            "runs.start",
            json!({"intent": "again", "agent_id": "a", "idempotency_key": "key-0"}),
        )
        .await;
    assert_eq!(refused.message, "idempotency_key is not available");
    let started = host.ok("log.read", json!({"kinds": ["run.started"]})).await;
    assert_eq!(started["events"].as_array().unwrap().len(), 5);
    // Evicted stays evicted after a restart.
    drop((host, client, owner));
    let mut server = server;
    assert_eq!(server.stop().await.unwrap().code(), Some(0));
    server.restart().await.unwrap();
    let mut host = server.auth_host().await;
    for run in &ended[..3] {
        let trace = host.ok("runs.get_trace", json!({"run_id": run})).await;
        assert_eq!(trace, json!({"run_id": run, "not_found": true}));
    }
    let list = host.ok("runs.list", json!({})).await;
    let relisted: Vec<&str> = list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(relisted, [open.as_str(), ended[3].as_str()]);
}

#[tokio::test]
async fn retention_applies_at_start_up_by_count_and_by_age() {
    let data = DataDir::new();
    let mut server = builder().data_dir(&data).spawn().await.unwrap();
    let mut client = server.auth_client().await;
    let mut runs = Vec::new();
    for _ in 0..3 {
        let run = start(&mut client, "a").await;
        complete(&mut client, &run).await;
        runs.push(run);
    }
    let open = start(&mut client, "a").await;
    drop(client);
    assert_eq!(server.stop().await.unwrap().code(), Some(0));
    // By count: four runs (the open one ended daemon_shutdown), at most three kept.
    let mut server = builder()
        .data_dir(&data)
        .args(["--max-runs", "3"])
        .spawn()
        .await
        .unwrap();
    let mut host = server.auth_host().await;
    let trace = host.ok("runs.get_trace", json!({"run_id": runs[0]})).await;
    assert_eq!(trace["not_found"], true, "{trace}");
    let list = host.ok("runs.list", json!({})).await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 3, "{list}");
    drop(host);
    assert_eq!(server.stop().await.unwrap().code(), Some(0));
    // By age: with a retention of 0 days every ended run is too old.
    let server = builder()
        .data_dir(&data)
        .args(["--run-retention", "0"])
        .spawn()
        .await
        .unwrap();
    let mut host = server.auth_host().await;
    let list = host.ok("runs.list", json!({})).await;
    assert_eq!(list["runs"], json!([]), "{list}");
    for run in runs.iter().chain([&open]) {
        let trace = host.ok("runs.get_trace", json!({"run_id": run})).await;
        assert_eq!(trace["not_found"], true, "{trace}");
    }
    let evictions = host.ok("log.read", json!({"kinds": ["run.evicted"]})).await;
    let reasons: Vec<&str> = evictions["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["count", "age", "age", "age"]);
}

/// A session of every kind against an in-process daemon; leaves one run in progress on a
/// connection that stays open.
async fn busy_session(server: &InProcessServer, tag: &str) -> Vec<Client> {
    let mut host = server.auth_host().await;
    host.ok("log.subscribe", json!({"from_seq": 1})).await;
    let mut client = server.auth_client().await;
    let run = start(&mut client, &format!("{tag}-a")).await;
    host.ok("runs.subscribe", json!({"run_id": run})).await;
    record(&mut client, &run, turns("t", 3)).await;
    let chunk = "z".repeat(20_000);
    record(
        &mut client,
        &run,
        vec![json!({"prompt": chunk, "output": [1.5, null]})],
    )
    .await;
    client
        .ok(
            "runs.complete",
            json!({"run_id": run, "outcome": {"status": "success", "metrics": {"x": 0.1}}}),
        )
        .await;
    client
        .ok(
            "runs.record_turns",
            json!({"run_id": run, "turns": turns("late", 1)}),
        )
        .await;
    let key = format!("{tag}-key");
    for _ in 0..2 {
        client
            .ok(
                "runs.start",
                json!({"intent": "k", "agent_name": "Keyed Agent", "idempotency_key": key}),
            )
            .await;
    }
    // An agent whose run is ended by the disconnect grace.
    let mut agent = server.auth_agent(&format!("{tag}-agent")).await;
    let left = agent.ok("runs.start", json!({"intent": "leaves"})).await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    record(&mut agent, &left, turns("l", 2)).await;
    host.ok("runs.subscribe", json!({"run_id": left})).await;
    agent.close().await;
    ended_event(&mut host, &left).await;
    host.ok("runs.unsubscribe", json!({"run_id": run})).await;
    // Still in progress when the daemon stops.
    let mut stays = server.auth_client().await;
    let open = start(&mut stays, &format!("{tag}-stays")).await;
    record(&mut stays, &open, turns("s", 2)).await;
    vec![host, client, stays]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_after_a_session_equals_a_fresh_replay_of_the_log() {
    let server = InProcessServer::start(|config| {
        config.disconnect_grace = Duration::from_millis(50);
    })
    .await
    .unwrap();
    let data = server.data_dir().clone();
    let sessions = busy_session(&server, "one").await;
    let report = server.stop().await.unwrap();
    drop(sessions);
    let (head, digest) = replay_digest(data.path()).unwrap();
    assert_eq!(head, report.head);
    assert_eq!(digest, report.digest);

    // Again after a restart on the same log (recovery included).
    let server = InProcessServer::start_in(&data, |config| {
        config.disconnect_grace = Duration::from_millis(50);
    })
    .await
    .unwrap();
    let sessions = busy_session(&server, "two").await;
    let report = server.stop().await.unwrap();
    drop(sessions);
    let (head, digest) = replay_digest(data.path()).unwrap();
    assert_eq!(head, report.head);
    assert_eq!(digest, report.digest);
}

#[tokio::test]
async fn without_data_dir_the_daemon_uses_car_home() {
    let home = DataDir::new();
    let mut server = builder().data_dir_from_env(&home).spawn().await.unwrap();
    assert!(home.path().join("auth-token").is_file());
    assert!(home.path().join("host-token").is_file());
    let mut client = server.auth_client().await;
    let run = start(&mut client, "a").await;
    drop(client);
    assert_eq!(server.stop().await.unwrap().code(), Some(0));
    // The log is there too: the same run after a restart on --data-dir.
    let server = builder().data_dir(&home).spawn().await.unwrap();
    let mut host = server.auth_host().await;
    let trace = full_trace(&mut host, &run).await;
    assert_eq!(trace["records"][0]["record"], "started");
}
