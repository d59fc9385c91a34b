//! PROTOCOL.md §19, cluster mode: two real `car-server` processes ("gateways") over one
//! NATS JetStream stream on the 3-node cluster of scripts/nats-cluster.sh. A run written
//! through one gateway is read and followed live through the other; racing writes through
//! both keep the rules of §3 and §5 (first terminal wins, contiguous turn indices, one
//! resolution per approval, one run per idempotency key); `log.read`
//! is the same log from both; the start-up refusals of §19 exit 2; a gateway killed with
//! SIGKILL is declared lost by the other, which ends its runs `incomplete`/`gateway_lost`
//! unless they were resumed elsewhere first; with the whole cluster stopped, writes fail
//! with `-32603` (the log is unavailable), reads keep working, and writes resume when it
//! is back (on a cluster of the test's own, so the others are not disturbed).
//!
//! Skipped (with a `SKIPPED` line) unless `CAR_TEST_NATS_URLS` names the cluster, as
//! scripts/test.sh does. Each test uses a stream of its own.

use car_tests::{Client, Server, turns};
use serde_json::{Value, json};

use crate::builder;
use crate::runs::{full_trace, record, start};
use crate::subscriptions::events_until_ended;

/// The tokens every gateway of a test shares (§19 requires shared tokens).
const AUTH_TOKEN: &str = "cluster-test-daemon-token-0123456789abcdef0123";
const HOST_TOKEN: &str = "cluster-test-host-token-0123456789abcdef012345";

/// The cluster's URLs, or `None` after printing why the test is skipped.
fn cluster(test: &str) -> Option<String> {
    match std::env::var("CAR_TEST_NATS_URLS") {
        Ok(urls) if !urls.trim().is_empty() => Some(urls),
        _ => {
            println!("SKIPPED cluster::{test}: CAR_TEST_NATS_URLS not set");
            None
        }
    }
}

fn stream_name(test: &str) -> String {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    format!("E_{test}_{}", &unique[..12])
}

/// One gateway on `stream`.
async fn gateway(urls: &str, stream: &str, id: &str) -> Server {
    gateway_with(urls, stream, id, &[]).await
}

/// One gateway on `stream`, with more arguments.
async fn gateway_with(urls: &str, stream: &str, id: &str, more: &[&str]) -> Server {
    builder()
        .args(more)
        .args([
            "--log",
            "jetstream",
            "--nats",
            urls,
            "--stream",
            stream,
            "--gateway-id",
            id,
        ])
        .env("CAR_AUTH_TOKEN", AUTH_TOKEN)
        .env("CAR_HOST_TOKEN", HOST_TOKEN)
        .spawn()
        .await
        .unwrap_or_else(|err| panic!("{err:#}"))
}

/// Two gateways on a fresh stream of their own.
async fn two_gateways(urls: &str, test: &str) -> (Server, Server) {
    let stream = stream_name(test);
    let a = gateway(urls, &stream, "a").await;
    let b = gateway(urls, &stream, "b").await;
    (a, b)
}

/// A host session on `gateway` following its log from seq 1 (see [`until_started`]).
async fn log_feed(gateway: &Server) -> Client {
    let mut feed = gateway.auth_host().await;
    feed.ok("log.subscribe", json!({"from_seq": 1})).await;
    feed
}

/// Waits until the gateway of `feed` has folded the start of `run` (written through
/// another gateway, which answered once its own projection had it: this one follows a few
/// milliseconds later).
async fn until_started(feed: &mut Client, run: &str) {
    feed.next_notification_where("log.event", |e| {
        e["kind"] == "run.started" && e["data"]["run_id"] == run
    })
    .await
    .unwrap();
}

/// The turn indices of a subscription's snapshot and live events, in arrival order.
fn indices(snapshot: &Value, events: &[Value]) -> Vec<u64> {
    snapshot["turns_so_far"]
        .as_array()
        .unwrap()
        .iter()
        .chain(
            events
                .iter()
                .map(|e| &e["record"])
                .filter(|r| r["record"] == "turn"),
        )
        .map(|t| t["index"].as_u64().unwrap())
        .collect()
}

/// The whole log as a host sees it through one gateway.
async fn whole_log(host: &mut Client) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let page = host
            .ok("log.read", json!({"from_seq": from, "limit": 10_000}))
            .await;
        let batch = page["events"].as_array().unwrap().clone();
        if batch.is_empty() {
            return events;
        }
        from = page["next_seq"].as_u64().unwrap();
        events.extend(batch);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_written_through_both_gateways_is_followed_live_on_either() {
    let Some(urls) = cluster("a_run_written_through_both_gateways_is_followed_live_on_either")
    else {
        return;
    };
    let (a, b) = two_gateways(&urls, "follow").await;
    let mut feed = log_feed(&b).await;
    let mut owner = a.auth_client().await;
    let run = start(&mut owner, "w").await;
    until_started(&mut feed, &run).await;
    // B knows the run A started: its subscription's snapshot has it, in progress.
    let mut host_b = b.auth_host().await;
    let snapshot_b = host_b.ok("runs.subscribe", json!({"run_id": run})).await;
    assert_eq!(snapshot_b["status"], "in_progress", "{snapshot_b}");
    assert_eq!(snapshot_b["agent_id"], "w");
    let mut host_a = a.auth_host().await;
    let snapshot_a = host_a.ok("runs.subscribe", json!({"run_id": run})).await;
    // Turns through both gateways, alternately: A's owner and B's agent session for `w`.
    let mut agent_b = b.auth_agent("w").await;
    let mut expected_base = 0;
    for round in 0..10 {
        let (client, who) = if round % 2 == 0 {
            (&mut owner, "a")
        } else {
            (&mut agent_b, "b")
        };
        let base = record(client, &run, turns(&format!("{who}{round}"), 2)).await;
        assert_eq!(
            base, expected_base,
            "indices follow each other across gateways"
        );
        expected_base += 2;
    }
    let done = agent_b
        .ok(
            "runs.complete",
            json!({"run_id": run, "outcome": {"status": "success"}}),
        )
        .await;
    assert_eq!(done["ok"], true, "{done}");
    // Both subscribers saw every turn live, in order, without gap or duplicate, then the end.
    for (snapshot, host) in [(&snapshot_b, &mut host_b), (&snapshot_a, &mut host_a)] {
        let events = events_until_ended(host, &run).await;
        assert_eq!(indices(snapshot, &events), (0..20).collect::<Vec<u64>>());
        let last = events.last().unwrap();
        assert_eq!(last["status"], "completed", "{last}");
    }
    // The same trace through either gateway.
    let trace_a = full_trace(&mut host_a, &run).await;
    let trace_b = full_trace(&mut host_b, &run).await;
    assert_eq!(trace_a["records"], trace_b["records"]);
    // log.read: one log, the same events at the same seqs through both.
    let log_a = whole_log(&mut host_a).await;
    let log_b = whole_log(&mut host_b).await;
    let common = log_a.len().min(log_b.len());
    assert!(common >= 13, "{common}");
    assert_eq!(log_a[..common], log_b[..common]);
    for (i, event) in log_a.iter().enumerate() {
        assert_eq!(event["seq"], i as u64 + 1, "gapless");
    }
    let started = log_a
        .iter()
        .filter(|e| e["kind"] == "daemon.started")
        .count();
    assert_eq!(
        started, 2,
        "both gateways recorded their start in the one log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_completes_through_two_gateways_have_one_winner() {
    let Some(urls) = cluster("racing_completes_through_two_gateways_have_one_winner") else {
        return;
    };
    let (a, b) = two_gateways(&urls, "race").await;
    let mut owner = a.auth_client().await;
    let mut agent = b.auth_agent("racer").await;
    let mut host = b.auth_host().await;
    let mut feed = log_feed(&b).await;
    for round in 0..5 {
        let run = start(&mut owner, "racer").await;
        until_started(&mut feed, &run).await;
        host.ok("runs.subscribe", json!({"run_id": run})).await;
        let complete = |status: &str| json!({"run_id": run, "outcome": {"status": status}});
        let (on_a, on_b) = tokio::join!(
            owner.call("runs.complete", complete("success")),
            agent.call("runs.complete", complete("failed")),
        );
        let won: Vec<&str> = [(&on_a, "success"), (&on_b, "failed")]
            .iter()
            .filter(|(r, _)| r.as_ref().is_ok_and(|v| v["ok"] == true))
            .map(|(_, status)| *status)
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {on_a:?} / {on_b:?}");
        for loser in [&on_a, &on_b] {
            if let Err(err) = loser {
                assert_eq!(err.code, -32603);
                assert!(
                    err.message.contains("already terminal"),
                    "round {round}: {on_a:?} / {on_b:?}"
                );
            }
        }
        // The winner's outcome is the run's, as the other gateway shows it too.
        let events = events_until_ended(&mut host, &run).await;
        let ended = &events.last().unwrap()["record"];
        assert_eq!(ended["termination"]["outcome"]["status"], won[0], "{ended}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_approval_resolutions_through_two_gateways_have_one_winner() {
    let Some(urls) = cluster("racing_approval_resolutions_through_two_gateways_have_one_winner")
    else {
        return;
    };
    let (a, b) = two_gateways(&urls, "approve").await;
    let mut asker = a.auth_client().await;
    asker.handshake().await;
    let mut host_a = a.auth_host().await;
    host_a.handshake().await;
    let mut host_b = b.auth_host().await;
    host_b.handshake().await;
    let mut feed = log_feed(&b).await;
    for round in 0..5 {
        let asked = asker
            .ok(
                "host.request_approval",
                json!({"action": format!("deploy {round}"), "system_level": true}),
            )
            .await;
        let id = asked["id"].as_str().unwrap().to_owned();
        feed.next_notification_where("log.event", |e| {
            e["kind"] == "approval.requested" && e["data"]["approval_id"] == id.as_str()
        })
        .await
        .unwrap();
        let resolve = |resolution: &str| json!({"approval_id": id, "resolution": resolution});
        let (on_a, on_b) = tokio::join!(
            host_a.call("host.resolve_approval", resolve("approve")),
            host_b.call("host.resolve_approval", resolve("deny")),
        );
        let won: Vec<&str> = [(&on_a, "approve"), (&on_b, "deny")]
            .iter()
            .filter(|(r, _)| r.is_ok())
            .map(|(_, resolution)| *resolution)
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {on_a:?} / {on_b:?}");
        for loser in [&on_a, &on_b] {
            if let Err(err) = loser {
                assert_eq!(err.code, -32602);
                assert_eq!(err.message, format!("approval {id} is already resolved"));
            }
        }
        // Both gateways show the winner's resolution, and the log holds one.
        for host in [&mut host_a, &mut host_b] {
            let seen = host
                .ok(
                    "host.await_approval",
                    json!({"approval_id": id, "timeout_ms": 5000}),
                )
                .await;
            assert_eq!(seen["resolution"], won[0], "round {round}: {seen}");
        }
    }
    let resolved: Vec<Value> = whole_log(&mut host_a)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "approval.resolved")
        .collect();
    assert_eq!(
        resolved.len(),
        5,
        "one resolution per approval: {resolved:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_runs_start_raced_through_two_gateways_makes_one_run() {
    let Some(urls) = cluster("an_idempotent_runs_start_raced_through_two_gateways_makes_one_run")
    else {
        return;
    };
    let (a, b) = two_gateways(&urls, "idem").await;
    let mut on_a = a.auth_client().await;
    let mut on_b = b.auth_client().await;
    for round in 0..5 {
        let key = format!("job-{round}");
        let params = json!({"intent": "nightly job", "agent_id": "cron", "idempotency_key": key});
        let (first, second) = tokio::join!(
            on_a.call("runs.start", params.clone()),
            on_b.call("runs.start", params.clone()),
        );
        // The loser's session may not read the winner's run (§3.2: another client's), so
        // it learns nothing of it; never a second run, never an internal error.
        let answers = [&first, &second];
        let won: Vec<&Value> = answers.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert!(!won.is_empty(), "round {round}: {first:?} / {second:?}");
        for answer in &won {
            assert_eq!(answer["run_id"], key.as_str(), "round {round}");
        }
        for refused in answers.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(
                (refused.code, refused.message.as_str()),
                (-32602, "idempotency_key is not available"),
                "round {round}"
            );
        }
    }
    let mut host = a.auth_host().await;
    let started: Vec<Value> = whole_log(&mut host)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "run.started")
        .collect();
    assert_eq!(started.len(), 5, "one run.started per key: {started:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_recorded_concurrently_through_both_gateways_get_contiguous_indices() {
    let Some(urls) =
        cluster("turns_recorded_concurrently_through_both_gateways_get_contiguous_indices")
    else {
        return;
    };
    let (a, b) = two_gateways(&urls, "turns").await;
    let mut feed = log_feed(&b).await;
    let mut owner = a.auth_client().await;
    let run = start(&mut owner, "t").await;
    until_started(&mut feed, &run).await;
    let mut host = b.auth_host().await;
    host.ok("runs.subscribe", json!({"run_id": run})).await;
    let agent = b.auth_agent("t").await;
    const BATCHES: usize = 20;
    const PER_BATCH: usize = 3;
    let write = |mut client: Client, who: &'static str, run: String| async move {
        let mut bases = Vec::new();
        for i in 0..BATCHES {
            bases.push(record(&mut client, &run, turns(&format!("{who}-{i}"), PER_BATCH)).await);
        }
        (client, bases)
    };
    let (bases_a, bases_b) = tokio::join!(
        tokio::spawn(write(owner, "a", run.clone())),
        tokio::spawn(write(agent, "b", run.clone())),
    );
    let ((mut owner, bases_a), (_agent, bases_b)) = (bases_a.unwrap(), bases_b.unwrap());
    let mut bases: Vec<u64> = bases_a.into_iter().chain(bases_b).collect();
    bases.sort_unstable();
    let expected: Vec<u64> = (0..2 * BATCHES as u64)
        .map(|i| i * PER_BATCH as u64)
        .collect();
    assert_eq!(
        bases, expected,
        "every batch got its own contiguous indices"
    );
    // Everything acknowledged is in the trace once, in order, as each gateway shows it.
    let mut host_a = a.auth_host().await;
    let done = owner
        .ok(
            "runs.complete",
            json!({"run_id": run, "outcome": {"status": "success"}}),
        )
        .await;
    assert_eq!(done["ok"], true, "{done}");
    let mut live = events_until_ended(&mut host, &run).await;
    live.retain(|e| e["record"]["record"] == "turn");
    let live_indices: Vec<u64> = live
        .iter()
        .map(|e| e["record"]["index"].as_u64().unwrap())
        .collect();
    assert_eq!(
        live_indices,
        (0..(2 * BATCHES * PER_BATCH) as u64).collect::<Vec<_>>()
    );
    let trace_a = full_trace(&mut host_a, &run).await;
    let trace_b = full_trace(&mut host, &run).await;
    assert_eq!(trace_a["records"], trace_b["records"]);
    let mut texts: Vec<String> = trace_a["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["record"] == "turn")
        .map(|r| r.to_string())
        .collect();
    let total = texts.len();
    texts.sort();
    texts.dedup();
    assert_eq!(total, 2 * BATCHES * PER_BATCH);
    assert_eq!(texts.len(), total, "no turn twice");
}

#[tokio::test]
async fn cluster_mode_refuses_to_start_without_shared_tokens_or_reachable_nats() {
    // Needs no cluster: both refusals come before anything is reachable.
    let (status, _, stderr) = builder()
        .args([
            "--data-dir",
            "/nonexistent-car-test",
            "--log",
            "jetstream",
            "--nats",
            "nats://127.0.0.1:1",
        ])
        .run_to_exit()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("CAR_AUTH_TOKEN") && stderr.contains("CAR_HOST_TOKEN"),
        "{stderr}"
    );
    let data = car_tests::DataDir::new();
    let (status, _, stderr) = builder()
        .args(["--port", "0", "--mcp-bind", "disabled", "--data-dir"])
        .args([data.path()])
        .args([
            "--log",
            "jetstream",
            "--nats",
            "nats://127.0.0.1:1,nats://127.0.0.1:9",
        ])
        .env("CAR_AUTH_TOKEN", AUTH_TOKEN)
        .env("CAR_HOST_TOKEN", HOST_TOKEN)
        .run_to_exit()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("nats://127.0.0.1:1,nats://127.0.0.1:9"),
        "{stderr}"
    );
}

/// The heartbeat lease of the tests of a lost gateway: short, so they finish quickly, and
/// long enough for a loaded 2-core machine to beat (three times per lease) in time.
const TEST_LEASE_SECS: u64 = 3;

/// Two gateways `a` and `b` on a fresh stream with [`TEST_LEASE_SECS`] leases; `a` starts
/// first, so it holds the maintenance lease and `b` must take it over when `a` dies.
async fn two_leased_gateways(urls: &str, test: &str) -> (Server, Server, String) {
    let stream = stream_name(test);
    let lease = TEST_LEASE_SECS.to_string();
    let a = gateway_with(urls, &stream, "a", &["--gateway-lease", &lease]).await;
    let b = gateway_with(urls, &stream, "b", &["--gateway-lease", &lease]).await;
    (a, b, stream)
}

/// `car-replay --nats URLS --stream STREAM verify --json` (the binary `cargo test
/// --workspace` builds beside this test's), parsed; `None` when it is not built.
fn replay_verify(urls: &str, stream: &str) -> Option<Value> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("car-replay");
    if !bin.exists() {
        return None;
    }
    let output = std::process::Command::new(bin)
        .args([
            "--nats", urls, "--stream", stream, "--quiet", "verify", "--json",
        ])
        .output()
        .expect("car-replay runs");
    assert!(
        output.status.success(),
        "car-replay verify: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_slice(&output.stdout).expect("verify --json"))
}

/// Negotiates protocol 3 with `runs.resume.v1`.
async fn resumable(client: &mut Client) {
    client
        .ok(
            "server.handshake",
            json!({"protocol_version": 3, "required_capabilities": ["runs.resume.v1"]}),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_with_a_run_in_progress_is_declared_lost_and_its_run_ends_gateway_lost() {
    let test =
        "a_gateway_killed_with_a_run_in_progress_is_declared_lost_and_its_run_ends_gateway_lost";
    let Some(urls) = cluster(test) else {
        return;
    };
    let (mut a, b, stream) = two_leased_gateways(&urls, "lost").await;
    let mut worker = a.auth_agent("worker").await;
    let run = start(&mut worker, "worker").await;
    record(&mut worker, &run, turns("before-the-kill", 2)).await;
    let mut feed = log_feed(&b).await;
    until_started(&mut feed, &run).await;
    let mut host = b.auth_host().await;
    let snapshot = host.ok("runs.subscribe", json!({"run_id": run})).await;
    assert_eq!(snapshot["status"], "in_progress");

    let killed = std::time::Instant::now();
    a.kill().await.unwrap();
    // No sleep: the `ended` event is the signal; the wait is bounded by the notification
    // timeout of the client.
    let events = events_until_ended(&mut host, &run).await;
    let noticed = killed.elapsed();
    let ended = &events.last().unwrap()["record"];
    assert_eq!(
        ended["termination"],
        json!({"kind": "incomplete", "reason": "gateway_lost"}),
        "{ended}"
    );
    assert_eq!(events.last().unwrap()["status"], "incomplete");
    // The heartbeat lapses one lease after a's last beat; b may first have to wait out the
    // maintenance lease a held (one more lease), then checks every third of a lease.
    let bound = std::time::Duration::from_secs(2 * TEST_LEASE_SECS + 3);
    println!("gateway declared lost {noticed:?} after SIGKILL (lease {TEST_LEASE_SECS} s)");
    assert!(noticed < bound, "noticed after {noticed:?}");

    let lost = feed
        .next_notification_where("log.event", |e| e["kind"] == "gateway.lost")
        .await
        .unwrap();
    assert_eq!(lost["data"]["gateway_id"], "a", "{lost}");
    assert_eq!(lost["data"]["declared_by"], "b", "{lost}");
    // The worker's session is closed as part of the declaration, so the agent may attach
    // again, on the surviving gateway.
    let mut again = b.auth_agent("worker").await;
    let err = again
        .err(
            "runs.complete",
            json!({"run_id": run, "outcome": {"status": "success"}}),
        )
        .await;
    assert!(err.message.contains("already terminal"), "{err:?}");
    // The stream audits clean afterwards.
    match replay_verify(&urls, &stream) {
        Some(report) => {
            assert_eq!(report["ok"], true, "{report}");
            assert_eq!(report["problems"], json!([]), "{report}");
        }
        None => println!(
            "SKIPPED cluster::{test} (its car-replay verify step): car-replay is not built (cargo test --workspace builds it)"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_resumed_on_the_surviving_gateway_before_the_lease_lapses_is_not_ended() {
    let test = "a_run_resumed_on_the_surviving_gateway_before_the_lease_lapses_is_not_ended";
    let Some(urls) = cluster(test) else {
        return;
    };
    let (mut a, b, _) = two_leased_gateways(&urls, "resumed").await;
    let mut feed = log_feed(&b).await;
    // A client session on `a` produces a run of agent `worker`, negotiating resume, so its
    // departure leaves the run waiting for the agent (§14.2) in a's memory.
    let mut producer = a.auth_client().await;
    resumable(&mut producer).await;
    let run = start(&mut producer, "worker").await;
    record(&mut producer, &run, turns("before-the-kill", 1)).await;
    // Another session keeps `a` serving something, so its loss is declared.
    let _bystander = a.auth_client().await;
    producer.close().await;
    feed.next_notification_where("log.event", |e| e["kind"] == "session.closed")
        .await
        .unwrap();
    a.kill().await.unwrap();

    let mut worker = b.auth_agent("worker").await;
    resumable(&mut worker).await;
    let resumed = worker.ok("runs.resume", json!({"run_id": run})).await;
    assert_eq!(resumed["run_id"], run);

    let lost = feed
        .next_notification_where("log.event", |e| e["kind"] == "gateway.lost")
        .await
        .unwrap();
    assert_eq!(lost["data"]["gateway_id"], "a", "{lost}");
    // Everything the declaration appended is in the log by now (one batch): the run is
    // not among it.
    let mut host = b.auth_host().await;
    let trace = full_trace(&mut host, &run).await;
    let records = trace["records"].as_array().unwrap();
    assert!(
        records.iter().all(|r| r["record"] != "ended"),
        "{records:?}"
    );
    let after = host
        .ok("log.read", json!({"from_seq": lost["seq"], "limit": 1000}))
        .await;
    for event in after["events"].as_array().unwrap() {
        assert!(
            event["kind"] != "run.ended" || event["data"]["run_id"] != run,
            "{event}"
        );
    }
    // The resumer still holds it and may end it.
    worker
        .ok(
            "runs.complete",
            json!({"run_id": run, "outcome": {"status": "success"}}),
        )
        .await;
}

/// A 3-node cluster of one test's own (scripts/nats-cluster.sh with its own directory and
/// ports), stopped node by node by pid and removed when dropped.
struct OwnCluster {
    dir: std::path::PathBuf,
}

impl OwnCluster {
    fn script(&self, command: &str) -> String {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nats-cluster.sh");
        let out = std::process::Command::new(script)
            .arg(command)
            .env("CAR_NATS_CLUSTER_DIR", &self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nats-cluster.sh {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Starts a fresh one; returns it and its URLs.
    fn start() -> (Self, String) {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let cluster = Self {
            dir: std::env::temp_dir().join(format!("car-nats-own-{}", &unique[..12])),
        };
        let urls = cluster.script("start");
        (cluster, urls)
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        self.script("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cluster_down_writes_fail_reads_work_and_writes_resume_when_it_is_back() {
    let test = "with_the_cluster_down_writes_fail_reads_work_and_writes_resume_when_it_is_back";
    if cluster(test).is_none() {
        return;
    }
    let (own, urls) = tokio::task::spawn_blocking(OwnCluster::start)
        .await
        .unwrap();
    let gw = gateway(&urls, &stream_name("down"), "solo").await;
    let mut agent = gw.auth_agent("steady").await;
    let run = start(&mut agent, "steady").await;
    assert_eq!(record(&mut agent, &run, turns("acked-before", 2)).await, 0);

    let own = tokio::task::spawn_blocking(move || {
        own.script("stop");
        own
    })
    .await
    .unwrap();
    let refused = agent
        .call(
            "runs.record_turns",
            json!({"run_id": run, "turns": turns("unacked", 1)}),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code, -32603, "{refused:?}");
    assert!(
        refused.message.contains("the event log is unavailable"),
        "{refused:?}"
    );
    // Reads are served from the gateway's projection meanwhile.
    let trace = full_trace(&mut agent, &run).await;
    let prompts = |trace: &Value| -> Vec<String> {
        trace["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["record"] == "turn")
            .map(|r| r["prompt"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(prompts(&trace), ["acked-before-0", "acked-before-1"]);
    let listed = agent.ok("runs.list", json!({"agent_id": "steady"})).await;
    assert_eq!(listed["runs"][0]["turn_count"], 2, "{listed}");

    let own = tokio::task::spawn_blocking(move || {
        own.script("resume");
        own
    })
    .await
    .unwrap();
    // The client retries as any client would after -32603; each refusal is the same.
    let mut attempts = 0;
    let base = loop {
        attempts += 1;
        match agent
            .call(
                "runs.record_turns",
                json!({"run_id": run, "turns": turns("acked-after", 1)}),
            )
            .await
        {
            Ok(result) => break result["base_index"].as_u64().unwrap(),
            Err(err) => {
                assert_eq!(err.code, -32603, "{err:?}");
                assert!(attempts < 20, "writes did not resume: {err:?}");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    };
    let trace = full_trace(&mut agent, &run).await;
    let after = prompts(&trace);
    println!("writes resumed after {attempts} attempt(s); turns now {after:?}");
    // Every acknowledged turn is there, in order, once; the refused one was never
    // acknowledged, and the next turn's index follows what the log really holds.
    assert_eq!(after.first().map(String::as_str), Some("acked-before-0"));
    assert_eq!(after[1], "acked-before-1");
    assert_eq!(after.last().map(String::as_str), Some("acked-after-0"));
    assert_eq!(base as usize, after.len() - 1);
    assert!(after.len() == 3 || (after.len() == 4 && after[2] == "unacked-0"));
    drop(own);
}
