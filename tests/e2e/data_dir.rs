//! The data directory at start-up (issue 9, items 4 and 6): the token files are written
//! before the port opens, and neither the directory nor the log is left readable by others.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use car_tests::{Client, DAEMON_ENV, DataDir};
use serde_json::json;

use crate::{SERVER_BIN, builder};

/// How long the test waits for the restarted daemon's port.
const PORT_WAIT: Duration = Duration::from_secs(30);

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A port free right now on loopback.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Regression: the port opened before the token files were written, so a client (or a
/// test harness) that waited for the port and then read `auth-token` read the previous
/// run's token after a crash (9 of 9 restarts). Runs left in progress make the restart
/// append its recovery, the moment that window used to span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_waits_for_the_port_reads_this_runs_token_after_a_crash() {
    let data = DataDir::new();
    let mut first = builder().data_dir(&data).spawn().await.unwrap();
    for n in 0..20 {
        let mut agent = first.auth_agent(&format!("agent-{n}")).await;
        agent
            .ok("runs.start", json!({"intent": "left in progress"}))
            .await;
        std::mem::forget(agent);
    }
    first.kill().await.unwrap();
    let stale = std::fs::read_to_string(data.path().join("auth-token")).unwrap();

    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut command = tokio::process::Command::new(SERVER_BIN);
    for key in DAEMON_ENV {
        command.env_remove(key);
    }
    let mut daemon = command
        .arg("--data-dir")
        .arg(data.path())
        .arg("--port")
        .arg(port.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // What a script does: wait for the port, then read the token.
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            started.elapsed() < PORT_WAIT,
            "the daemon never opened its port"
        );
        tokio::task::yield_now().await;
    }
    let token = std::fs::read_to_string(data.path().join("auth-token")).unwrap();
    assert_ne!(token, stale, "read the previous run's token");
    let mut client = Client::connect(addr).await.unwrap();
    client
        .ok("session.auth", json!({"token": token.trim()}))
        .await;
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
}

/// Regression: in a data directory that already existed with mode 0755 the log files
/// (every prompt and output) were created 0644. The directory and the log directory are
/// now 0700 whatever existed before (with a warning), and no file of the log is readable
/// by others, whatever the umask.
#[tokio::test]
async fn an_open_data_directory_is_tightened_and_the_log_is_the_owners_only() {
    let data = DataDir::new();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let log_dir = data.path().join("log");
    std::fs::create_dir(&log_dir).unwrap();
    std::fs::set_permissions(&log_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut server = builder().data_dir(&data).spawn().await.unwrap();
    let mut client = server.auth_agent("a").await;
    let run = client.ok("runs.start", json!({"intent": "secret"})).await;
    client
        .ok(
            "runs.record_turns",
            json!({"run_id": run["run_id"], "turns": [{"prompt": "a secret prompt"}]}),
        )
        .await;

    assert_eq!(mode(data.path()), 0o700);
    assert_eq!(mode(&log_dir), 0o700);
    let mut checked = 0;
    let mut pending = vec![log_dir.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            assert_eq!(
                mode(&path) & 0o077,
                0,
                "{} is {:o}",
                path.display(),
                mode(&path)
            );
            if path.is_dir() {
                pending.push(path);
            }
            checked += 1;
        }
    }
    assert!(checked >= 2, "the log has files: {checked}");
    for token in ["auth-token", "host-token"] {
        assert_eq!(mode(&data.path().join(token)), 0o600);
    }
    let warned = server
        .stderr()
        .iter()
        .any(|line| line.contains("was open to others (mode 755): tightened to 700"));
    assert!(warned, "{:#?}", server.stderr());
    server.stop().await.unwrap();
}

/// Regression (issue 9): the log lines carried ANSI colour codes when stderr was not a
/// terminal (journald, a file). Piped, with no `NO_COLOR`, the start-up lines are plain.
#[tokio::test]
async fn log_lines_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    use tokio::io::AsyncBufReadExt;
    let data = DataDir::new();
    let mut command = tokio::process::Command::new(SERVER_BIN);
    for key in DAEMON_ENV {
        command.env_remove(key);
    }
    let mut daemon = command
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .arg("--data-dir")
        .arg(data.path())
        .arg("--port")
        .arg("0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(daemon.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(PORT_WAIT, lines.next_line()).await {
        let ready = line.contains("replayed");
        seen.push(line);
        if ready {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("listening on ws://")),
        "{seen:#?}"
    );
    for line in &seen {
        assert!(!line.contains('\u{1b}'), "a colour code in {line:?}");
    }
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
}
