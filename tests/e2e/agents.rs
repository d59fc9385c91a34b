//! PROTOCOL.md §12: registered agents with real child processes (`car-test-agent`).
//! Spawn, environment and attach with the agent's own token; logs and `tail_log`; crash →
//! backoff → restart → `errored`; stop (`term`, `kill`) and restart; remove; every §12.1
//! refusal over the wire and the roles; and the promises about processes: a daemon SIGKILL
//! leaves no agent running, a graceful stop stops them, nothing is left a zombie.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use car_tests::Client;
use serde_json::{Value, json};

use crate::server;

/// The test agent binary built by this package.
const AGENT_BIN: &str = env!("CARGO_BIN_EXE_car-test-agent");
/// A regular file outside `/tmp` without an execute bit.
const NOT_EXECUTABLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
/// Longest any wait here may take: far above what each takes, so only a bug reaches it.
const DEADLINE: Duration = Duration::from_secs(20);
/// How often a condition on the daemon's or the kernel's state is looked at again.
const POLL: Duration = Duration::from_millis(20);

fn spec(id: &str, mode: &str) -> Value {
    json!({"id": id, "name": format!("test agent {id}"), "command": AGENT_BIN,
           "args": [mode], "env": {"EXTRA": "from-spec"}})
}

/// Polls `check` until it gives `Some`, failing after [`DEADLINE`].
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

async fn agent_entry(host: &mut Client, id: &str) -> Value {
    let list = host.ok("agents.list", json!({})).await;
    list.as_array()
        .unwrap()
        .iter()
        .find(|a| a["spec"]["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until the agent's entry satisfies `pred`; returns it.
async fn agent_where(
    host: &mut Client,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let entry = agent_entry(host, id).await;
        if pred(&entry) {
            return entry;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}: {entry}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The process's state letter from `/proc/<pid>/stat` (`None`: no such process).
fn proc_state(pid: u64) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S …`: the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

async fn gone(pid: u64) {
    until(
        &format!("process {pid} to be gone (not even a zombie)"),
        || async move { proc_state(pid).is_none().then_some(()) },
    )
    .await;
}

/// Waits until the agent's whole log (`tail_log {n: 0}`) satisfies `pred`; returns it.
async fn tail_where(
    host: &mut Client,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let out = tail(host, id, json!({"n": 0})).await;
        if pred(&out) {
            return out;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}: {out}"
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn register(host: &mut Client, spec: Value) -> Value {
    host.ok("agents.upsert", spec).await
}

async fn tail(host: &mut Client, id: &str, params: Value) -> Value {
    let mut params = params;
    params["id"] = json!(id);
    host.ok("agents.tail_log", params).await
}

#[tokio::test]
async fn an_agent_is_spawned_with_its_environment_authenticates_with_its_token_and_logs() {
    let server = server(&[]).await;
    let mut host = server.auth_host().await;
    // Given a registered agent: its token returned once, its file 0600, only the hash logged
    let registered = register(&mut host, spec("alpha", "serve")).await;
    let token = registered["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 43);
    assert_eq!(registered["status"], "stopped");
    assert_eq!(registered["attached"], false);
    let token_file = server.data_dir().path().join("agents/alpha.token");
    assert_eq!(fs::read_to_string(&token_file).unwrap().trim(), token);
    assert_eq!(
        fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let log = host.whole_log(None).await;
    assert!(
        !serde_json::to_string(&log).unwrap().contains(&token),
        "the token is in the log"
    );
    // When it is started
    let started = host.ok("agents.start", json!({"id": "alpha"})).await;
    assert_eq!(started["status"], "running", "{started}");
    let pid = started["pid"].as_u64().unwrap();
    // Then it authenticates with its own token and shows attached
    let entry = agent_where(&mut host, "alpha", "attached", |a| a["attached"] == true).await;
    assert!(entry["session_id"].is_string());
    assert_eq!(entry["pid"], pid);
    // And its output is in its log, environment as §12.3 says
    let lines = tail_where(&mut host, "alpha", "the agent's output in its log", |out| {
        out["stdout"].as_array().unwrap().len() >= 2
            && !out["stderr"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        lines["stdout"],
        json!([
            "env daemon_url_same=true auth_token=unset extra=from-spec",
            "authenticated \"agent\" \"alpha\""
        ])
    );
    assert_eq!(lines["stderr"], json!(["serving"]));
    assert_eq!(lines["lines"].as_array().unwrap().len(), 3);
    let path = server.data_dir().path().join("logs/alpha.log");
    assert_eq!(lines["stdout_path"], json!(path.to_string_lossy()));
    let raw = fs::read_to_string(&path).unwrap();
    let first = raw.lines().next().unwrap();
    let (time, rest) = first.split_once(' ').unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok() && time.ends_with('Z'),
        "{first}"
    );
    assert!(rest.starts_with("out env "), "{first}");
    // A second connection claiming the id is refused; its own token with another id is not it
    let mut other = server.connect().await;
    let err = other
        .err("session.auth", json!({"token": token, "agent_id": "alpha"}))
        .await;
    assert_eq!(
        err.message,
        "agent 'alpha' is already attached on another connection"
    );
    let mut other = server.connect().await;
    let err = other
        .err("session.auth", json!({"token": token, "agent_id": "beta"}))
        .await;
    assert_eq!(
        (err.code, err.message.as_str()),
        (-32603, "auth failed: token mismatch")
    );
    // When it is stopped: SIGTERM, reaped, stopped, detached
    let stopped = host.ok("agents.stop", json!({"id": "alpha"})).await;
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    assert!(stopped["pid"].is_null());
    gone(pid).await;
    agent_where(&mut host, "alpha", "detached", |a| a["attached"] == false).await;
    // tail_log: the agent itself may read its own log; a client may not
    let mut client = server.auth_client().await;
    let err = client.err("agents.tail_log", json!({"id": "alpha"})).await;
    assert_eq!(
        (err.code, err.message.as_str()),
        (
            -32603,
            "permission denied: agents.tail_log requires the host role or the agent itself"
        )
    );
}

#[tokio::test]
async fn a_crashing_agent_backs_off_doubling_then_errors_and_is_reaped() {
    let server = server(&[]).await;
    let mut host = server.auth_host().await;
    let mut spec = spec("crasher", "crash");
    spec["backoff_secs"] = json!(0.1);
    spec["max_restarts"] = json!(3);
    register(&mut host, spec).await;
    let started = Instant::now();
    host.ok("agents.start", json!({"id": "crasher"})).await;
    let errored = agent_where(&mut host, "crasher", "errored", |a| {
        a["status"] == "errored"
    })
    .await;
    let took = started.elapsed();
    assert_eq!(errored["restart_count"], 3);
    assert_eq!(errored["last_exit_code"], 3);
    // 0.1 + 0.2 + 0.4 s of backoff, never a tight loop
    assert!(took >= Duration::from_millis(700), "errored after {took:?}");
    let log = host
        .whole_log(Some(&[
            "agent.process_spawned",
            "agent.process_exited",
            "agent.backoff_scheduled",
            "agent.status_changed",
        ]))
        .await;
    let delays: Vec<u64> = log
        .iter()
        .filter(|e| e["kind"] == "agent.backoff_scheduled")
        .map(|e| e["data"]["delay_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(delays, [100, 200, 400]);
    let pids: Vec<u64> = log
        .iter()
        .filter(|e| e["kind"] == "agent.process_spawned")
        .map(|e| e["data"]["pid"].as_u64().unwrap())
        .collect();
    // Three restarts: four processes. A spawn the machine refuses (seen once, under the
    // load of the whole CI run) is also `errored` by §12.3 ("a failed spawn: errored"),
    // with one process fewer; the log then says why, and only that is accepted.
    let why = log
        .iter()
        .rev()
        .find(|e| e["kind"] == "agent.status_changed")
        .and_then(|e| e["data"]["reason"].as_str())
        .unwrap_or_default()
        .to_owned();
    let spawns = if pids.len() == 3 && why.starts_with("spawn failed") {
        eprintln!("the fourth spawn failed: {why}");
        3
    } else {
        4
    };
    assert_eq!(pids.len(), spawns, "{errored} {log:?}");
    assert_eq!(
        log.iter()
            .filter(|e| e["kind"] == "agent.process_exited")
            .count(),
        spawns
    );
    for pid in pids {
        gone(pid).await;
    }
    // Its stderr is in its log, once per run
    let out = tail(&mut host, "crasher", json!({"stream": "stderr", "n": 0})).await;
    assert_eq!(out["lines"], json!(vec!["crashing on purpose"; spawns]));
    // A start resets the count
    let again = host.ok("agents.start", json!({"id": "crasher"})).await;
    assert_eq!(again["restart_count"], 0);
}

#[tokio::test]
async fn stop_kill_restart_and_remove() {
    let server = server(&["--agent-stop-grace", "5"]).await;
    let mut host = server.auth_host().await;
    register(&mut host, spec("gamma", "serve")).await;
    let first = host.ok("agents.start", json!({"id": "gamma"})).await;
    let first_pid = first["pid"].as_u64().unwrap();
    // start while running: no-op
    let same = host.ok("agents.start", json!({"id": "gamma"})).await;
    assert_eq!(same["pid"], first_pid);
    // restart: a new process
    let restarted = host.ok("agents.restart", json!({"id": "gamma"})).await;
    let second_pid = restarted["pid"].as_u64().unwrap();
    assert_ne!(second_pid, first_pid);
    gone(first_pid).await;
    // kill: at once
    let killed = host
        .ok("agents.stop", json!({"id": "gamma", "signal": "kill"}))
        .await;
    assert_eq!(killed["status"], "stopped");
    gone(second_pid).await;
    let exits: Vec<Value> = host
        .whole_log(Some(&["agent.process_exited", "agent.stop_requested"]))
        .await
        .into_iter()
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(
        exits.last().unwrap()["exit"],
        json!({"signal": {"signal": 9}})
    );
    assert!(
        exits
            .iter()
            .any(|e| e["signal"] == "kill" && e["by"] == "host")
    );
    // remove while running stops it first; the token file goes
    let third = host.ok("agents.start", json!({"id": "gamma"})).await;
    let third_pid = third["pid"].as_u64().unwrap();
    assert_eq!(
        host.ok("agents.remove", json!({"id": "gamma"})).await,
        json!({"removed": true})
    );
    gone(third_pid).await;
    assert!(!server.data_dir().path().join("agents/gamma.token").exists());
    assert_eq!(host.ok("agents.list", json!({})).await, json!([]));
    assert_eq!(
        host.ok("agents.remove", json!({"id": "gamma"})).await,
        json!({"removed": false})
    );
    let err = host.err("agents.start", json!({"id": "gamma"})).await;
    assert_eq!(
        (err.code, err.message.as_str()),
        (-32602, "unknown agent 'gamma'")
    );
}

#[tokio::test]
async fn a_daemon_sigkill_leaves_no_agent_running_and_the_next_start_records_it() {
    let mut server = server(&[]).await;
    let mut host = server.auth_host().await;
    let mut spec = spec("delta", "serve");
    spec["auto_start"] = json!(true);
    register(&mut host, spec).await;
    let pid = host.ok("agents.start", json!({"id": "delta"})).await["pid"]
        .as_u64()
        .unwrap();
    assert!(matches!(proc_state(pid), Some(s) if s != 'Z'));
    drop(host);
    server.kill().await.unwrap();
    // PR_SET_PDEATHSIG: the kernel kills it with the daemon
    gone(pid).await;
    // The next daemon records it exited (daemon_restart), then auto-starts it
    server.restart().await.unwrap();
    let mut host = server.auth_host().await;
    let entry = agent_where(&mut host, "delta", "auto-started", |a| {
        a["status"] == "running"
    })
    .await;
    let new_pid = entry["pid"].as_u64().unwrap();
    assert_ne!(new_pid, pid);
    let exits = host.whole_log(Some(&["agent.process_exited"])).await;
    assert_eq!(exits[0]["data"]["exit"], "daemon_restart");
    assert_eq!(exits[0]["data"]["pid"], pid);
    // A graceful stop stops it, its exit recorded before the log closes
    drop(host);
    server.stop().await.unwrap();
    gone(new_pid).await;
}

async fn refusal(host: &mut Client, params: Value) -> (i64, String) {
    let err = host.err("agents.upsert", params).await;
    (err.code, err.message)
}

#[tokio::test]
async fn every_12_1_breach_is_refused_with_its_field_and_the_roles_hold() {
    let server = server(&[]).await;
    let mut host = server.auth_host().await;
    let tmp_exe = tempfile::Builder::new().tempfile_in("/tmp").unwrap();
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"id": "a b", "name": "n", "command": AGENT_BIN}),
            "agents.upsert: id: ",
        ),
        (
            json!({"id": "..", "name": "n", "command": AGENT_BIN}),
            "agents.upsert: id: ",
        ),
        (
            json!({"id": "a", "name": "", "command": AGENT_BIN}),
            "agents.upsert: name: ",
        ),
        (
            json!({"id": "a", "name": "n", "command": "relative"}),
            "agents.upsert: command: must be an absolute path",
        ),
        (
            json!({"id": "a", "name": "n", "command": tmp_exe.path()}),
            "agents.upsert: command: must not be under /tmp",
        ),
        (
            json!({"id": "a", "name": "n", "command": "/nonexistent/x"}),
            "agents.upsert: command: does not exist",
        ),
        (
            json!({"id": "a", "name": "n", "command": NOT_EXECUTABLE}),
            "agents.upsert: command: is not executable",
        ),
        (
            json!({"id": "a", "name": "n", "command": "/usr"}),
            "agents.upsert: command: is not a regular file",
        ),
        (
            json!({"id": "a", "name": "n", "command": AGENT_BIN, "cwd": "/nonexistent"}),
            "agents.upsert: cwd: is not an existing folder",
        ),
        (
            json!({"id": "a", "name": "n", "command": AGENT_BIN, "env": {"CAR_AGENT_ID": "x"}}),
            "agents.upsert: env: CAR_AGENT_ID is set by the daemon",
        ),
        (
            json!({"id": "a", "name": "n", "command": AGENT_BIN, "restart": "often"}),
            "agents.upsert: restart: ",
        ),
        (
            json!({"id": "a", "name": "n", "command": AGENT_BIN, "max_restarts": 101}),
            "agents.upsert: max_restarts: ",
        ),
        (
            json!({"id": "a", "name": "n", "command": AGENT_BIN, "backoff_secs": 0}),
            "agents.upsert: backoff_secs: ",
        ),
        (
            json!({"id": "a", "name": "n", "command": AGENT_BIN, "method_allowlist": ["x"]}),
            "agents.upsert: method_allowlist: ",
        ),
        (
            json!({"id": "a", "name": "n", "interpreter": "no-such-interpreter-here"}),
            "agents.upsert: interpreter: not found on PATH",
        ),
    ];
    for (params, expected) in cases {
        let (code, message) = refusal(&mut host, params.clone()).await;
        assert_eq!(code, -32602, "{params}: {message}");
        assert!(message.starts_with(expected), "{params}: {message}");
    }
    // An interpreter resolved on PATH replaces command
    let ok = register(
        &mut host,
        json!({"id": "py", "name": "n", "interpreter": "sh", "args": ["-c", "exit 0"]}),
    )
    .await;
    assert!(
        ok["spec"]["command"].as_str().unwrap().ends_with("/sh"),
        "{ok}"
    );
    // Nothing was registered by the refusals
    assert_eq!(
        host.ok("agents.list", json!({}))
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Roles: upsert and remove are the host's; list and health are everyone's
    let mut client = server.auth_client().await;
    let err = client.err("agents.upsert", spec("x", "serve")).await;
    assert_eq!(
        (err.code, err.message.as_str()),
        (
            -32603,
            "permission denied: agents.upsert requires the host role"
        )
    );
    let err = client.err("agents.remove", json!({"id": "py"})).await;
    assert_eq!(
        err.message,
        "permission denied: agents.remove requires the host role"
    );
    let err = client.err("agents.start", json!({"id": "py"})).await;
    assert_eq!(
        err.message,
        "permission denied: agents.start requires the host role or the agent itself"
    );
    assert_eq!(
        client
            .ok("agents.list", json!({}))
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let health = client.ok("agents.health", json!({})).await;
    assert_eq!(health[0]["id"], "py");
    assert_eq!(health[0]["ok"], true);
    // The daemon token still binds an unregistered agent id (§12.2)
    let mut legacy = server.auth_agent("unregistered").await;
    assert!(legacy.ok("agents.list", json!({})).await.is_array());
    // Rotating the token: the old one no longer authenticates
    let mut rotate = spec("rot", "serve");
    let first = register(&mut host, rotate.clone()).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    rotate["rotate_token"] = json!(true);
    let second = register(&mut host, rotate).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(first, second);
    let mut old = server.connect().await;
    let err = old
        .err("session.auth", json!({"token": first, "agent_id": "rot"}))
        .await;
    assert_eq!(err.message, "auth failed: token mismatch");
    let mut new = server.connect().await;
    let ok = new
        .ok("session.auth", json!({"token": second, "agent_id": "rot"}))
        .await;
    assert_eq!(
        (ok["role"].as_str(), ok["agent_id"].as_str()),
        (Some("agent"), Some("rot"))
    );
}

#[tokio::test]
async fn hosts_hear_of_registrations_status_changes_and_removals() {
    let server = server(&[]).await;
    let mut feed = server.auth_host().await;
    feed.handshake().await;
    let subscribed = feed.ok("host.subscribe", json!({})).await;
    assert_eq!(subscribed["identity"]["manifest_role"], "owner");
    assert!(subscribed["identity"]["manifest_path"].is_null());
    let mut host = server.auth_host().await;
    let mut spec = spec("eps", "serve");
    spec["env"] = json!({"SECRET": "hunter2"});
    register(&mut host, spec).await;
    host.ok("agents.start", json!({"id": "eps"})).await;
    host.ok("agents.remove", json!({"id": "eps"})).await;
    let registered = feed
        .next_notification_where("host.event", |e| e["kind"] == "agent.registered")
        .await
        .unwrap();
    assert_eq!(registered["agent_id"], "eps");
    assert_eq!(registered["payload"]["spec"]["id"], "eps");
    assert!(
        registered["payload"]["spec"].get("env").is_none(),
        "{registered}"
    );
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let changed = feed
            .next_notification_where("host.event", |e| e["kind"] == "agent.status_changed")
            .await
            .unwrap();
        statuses.push(changed["payload"]["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(statuses, ["starting", "running", "stopped"]);
    let removed = feed
        .next_notification_where("host.event", |e| e["kind"] == "agent.unregistered")
        .await
        .unwrap();
    assert_eq!(removed["payload"]["id"], "eps");
}

#[tokio::test]
async fn exits_follow_the_restart_policy_and_a_missing_token_file_is_errored() {
    let server = server(&[]).await;
    let mut host = server.auth_host().await;
    // on_failure, code 0: stopped, not restarted
    register(&mut host, spec("quick", "exit0")).await;
    host.ok("agents.start", json!({"id": "quick"})).await;
    let entry = agent_where(&mut host, "quick", "stopped", |a| {
        a["status"] == "stopped" && a["last_exit_code"] == 0
    })
    .await;
    assert_eq!(entry["restart_count"], 0);
    // always, code 0: restarted (then errored once max_restarts is spent)
    let mut always = spec("again", "exit0");
    always["restart"] = json!("always");
    always["max_restarts"] = json!(1);
    always["backoff_secs"] = json!(0.1);
    register(&mut host, always).await;
    host.ok("agents.start", json!({"id": "again"})).await;
    let entry = agent_where(&mut host, "again", "errored", |a| a["status"] == "errored").await;
    assert_eq!(entry["restart_count"], 1);
    // The token file missing at spawn: errored, nothing spawned
    register(&mut host, spec("tokenless", "serve")).await;
    fs::remove_file(server.data_dir().path().join("agents/tokenless.token")).unwrap();
    let started = host.ok("agents.start", json!({"id": "tokenless"})).await;
    assert_eq!(started["status"], "errored", "{started}");
    assert!(started["pid"].is_null());
    let changes = host.whole_log(Some(&["agent.status_changed"])).await;
    let last = &changes.last().unwrap()["data"];
    assert_eq!(
        (last["agent_id"].as_str(), last["reason"].as_str()),
        (Some("tokenless"), Some("spawn failed: token file missing"))
    );
}
