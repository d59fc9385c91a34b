//! The daemon as a separate process for the soak and the benchmarks.
//!
//! Unlike the e2e harness's [`crate::Server`] (a temporary directory, fixed waits), this
//! launcher runs the daemon on a data directory the caller chooses (a log built in advance,
//! a directory on the project's disk), times the start-up from the spawn to the listening
//! line, parses the daemon's own start-up summary (`ready in X s`, runs adopted), reads the
//! process's resident memory, and can be killed and launched again on the same directory.
//!
//! The daemon binary is, by default, the running executable itself with [`SERVE_ENV`] set:
//! the binaries of this package call [`serve_if_requested`] first thing, which hands the
//! process to `car_gateway::cli::main`, the very function `car-server` runs.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::{DAEMON_ENV, parse_listen_line, strip_ansi};

/// Set to `1` in the environment of a re-executed load binary: it then runs the daemon.
pub const SERVE_ENV: &str = "CAR_LOAD_SERVE";

/// The marker of the start-up summary line the daemon prints after its listening line.
const READY_MARKER: &str = "ready in ";

/// Stderr lines kept for error messages: the last ones say why a daemon died; keeping
/// all of a long run's would only grow.
const KEPT_LINES: usize = 200;

/// Runs the daemon instead of the caller's own `main` when [`SERVE_ENV`] is `1`.
pub fn serve_if_requested() -> Option<ExitCode> {
    (std::env::var_os(SERVE_ENV).as_deref() == Some("1".as_ref())).then(car_gateway::cli::main)
}

/// How to launch the daemon.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The daemon binary; `None`: this executable, re-executed with [`SERVE_ENV`].
    pub bin: Option<PathBuf>,
    /// The data directory (created by the daemon if missing).
    pub data_dir: PathBuf,
    /// Further arguments (after `--port 0 --data-dir DIR`).
    pub args: Vec<String>,
    /// How long to wait for the listening line: a start-up on a large log takes seconds.
    pub start_timeout: Duration,
}

impl ServerSpec {
    /// The daemon on `data_dir`, with the default binary and no further arguments.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            bin: None,
            data_dir: data_dir.into(),
            args: Vec::new(),
            start_timeout: Duration::from_secs(120),
        }
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Uses `bin` as the daemon binary (`None`: this executable).
    pub fn bin(mut self, bin: Option<PathBuf>) -> Self {
        self.bin = bin;
        self
    }
}

/// What the daemon's start-up took and did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Startup {
    /// From the spawn to the listening line on stderr.
    pub to_listening: Duration,
    /// The start-up time the daemon reports itself (`ready in X s`): open, replay,
    /// recovery, tokens, bind.
    pub ready_in: Option<f64>,
    /// Events replayed.
    pub events_replayed: Option<u64>,
    /// Runs found in progress and ended `incomplete`/`daemon_restart`.
    pub runs_adopted: Option<u64>,
}

/// A running daemon process. Dropping it kills the process.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    pid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The daemon token (`auth-token`).
    pub auth_token: String,
    /// The host token (`host-token`).
    pub host_token: String,
    /// What its start-up took.
    pub startup: Startup,
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl ServerProcess {
    /// Spawns the daemon on port 0 and waits for its listening and start-up lines.
    pub async fn launch(spec: &ServerSpec) -> anyhow::Result<Self> {
        let bin = match &spec.bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe().context("locating this executable")?,
        };
        let mut command = Command::new(&bin);
        for key in DAEMON_ENV {
            command.env_remove(key);
        }
        if spec.bin.is_none() {
            command.env(SERVE_ENV, "1");
        } else {
            command.env_remove(SERVE_ENV);
        }
        command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .arg("--port")
            .arg("0")
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(&spec.args)
            // Load runs measure the WebSocket; several daemons must not race for MCP's port.
            .args(
                (!spec.args.iter().any(|a| a == "--mcp-bind"))
                    .then_some(["--mcp-bind", "disabled"])
                    .into_iter()
                    .flatten(),
            )
            .args((!spec.args.iter().any(|a| a == "--no-dashboard")).then_some("--no-dashboard"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let spawned = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let pid = child.id().context("the daemon has no pid")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, String)>();
        // Reads stderr for the daemon's whole life (a full pipe would block its logging);
        // start-up lines also go to the launcher, stamped when read.
        tokio::spawn({
            let lines = lines.clone();
            async move {
                let mut reader = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    let line = strip_ansi(&line);
                    let _ = tx.send((Instant::now(), line.clone()));
                    let mut kept = lines.lock().unwrap_or_else(|e| e.into_inner());
                    if kept.len() == KEPT_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
            }
        });
        let started = tokio::time::timeout(spec.start_timeout, async {
            let mut listening = None;
            while let Some((at, line)) = rx.recv().await {
                if listening.is_none() {
                    if let Some(addr) = parse_listen_line(&line) {
                        listening = Some((addr, at.duration_since(spawned)));
                    }
                } else if line.contains(READY_MARKER) {
                    return listening.map(|(addr, took)| (addr, took, line));
                }
            }
            None
        })
        .await;
        let Ok(Some((addr, to_listening, ready_line))) = started else {
            let _ = child.start_kill();
            let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            let tail = lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n");
            bail!(
                "the daemon did not start within {:?} (exit: {status:?}); stderr:\n{tail}",
                spec.start_timeout
            );
        };
        let read = |name: &str| {
            let path = spec.data_dir.join(name);
            car_gateway::tokens::read_token(&path)
                .with_context(|| format!("reading {}", path.display()))
        };
        Ok(Self {
            child,
            pid,
            addr,
            auth_token: read(car_gateway::tokens::AUTH_TOKEN_FILE)?,
            host_token: read(car_gateway::tokens::HOST_TOKEN_FILE)?,
            startup: parse_ready_line(&ready_line, to_listening),
            lines,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The last stderr lines.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.pid).context("pid out of range")?;
        kill(Pid::from_raw(pid), signal).with_context(|| format!("sending {signal}"))
    }

    /// A crash: SIGKILL, then waits for the exit.
    pub async fn kill(mut self) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        self.wait(Duration::from_secs(30)).await
    }

    /// A graceful stop: SIGTERM, then waits for the exit (the daemon drains for up to 5 s).
    pub async fn terminate(mut self) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        self.wait(Duration::from_secs(60)).await
    }

    async fn wait(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .map_err(|_| anyhow!("the daemon did not exit within {limit:?}"))?
            .context("waiting for the daemon")
    }

    /// The process's resident set size (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        proc_status_kib(self.pid, "VmRSS")
    }
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which may hold spaces) start at `state`, field 3;
    // utime and stime are fields 14 and 15, in clock ticks.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("no command name in {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("no field {i} in {path}"))
    };
    let total = ticks(14)? + ticks(15)?;
    Ok(Duration::from_secs_f64(total as f64 / CLOCK_TICKS_PER_SEC))
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux configuration that matters here.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …).
pub fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .with_context(|| format!("no {field} in {path}"))
}

/// Parses `replayed N events; adopted N runs, …; ready in X s`.
fn parse_ready_line(line: &str, to_listening: Duration) -> Startup {
    let number_before = |marker: &str| -> Option<u64> {
        let end = line.find(marker)?;
        let head = line[..end].trim_end();
        let start = head.rfind(' ').map_or(0, |i| i + 1);
        head[start..].parse().ok()
    };
    let ready_in = line.find(READY_MARKER).and_then(|i| {
        let rest = &line[i + READY_MARKER.len()..];
        rest.trim().trim_end_matches('s').parse().ok()
    });
    Startup {
        to_listening,
        ready_in,
        events_replayed: number_before(" events;"),
        runs_adopted: number_before(" runs, evicted"),
    }
}

/// A scratch directory for a daemon's data, removed when dropped unless kept.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    /// A fresh directory `name-<pid>-<n>` under `parent` (created if missing).
    pub fn new(parent: &Path, name: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        for n in 0.. {
            let path = parent.join(format!("{name}-{}-{n}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Self { path, keep: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        unreachable!("an unbounded range ends only by returning")
    }

    /// An existing directory the caller owns: never removed.
    pub fn existing(path: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, keep: true })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory after the drop (to look at it after a violation).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The default parent of scratch directories: `<target>/load`, next to the build (on the
/// project's disk, not a tmpfs), found from this executable's path
/// (`target/<profile>/<bin>` or `target/<profile>/deps/<test>`).
pub fn default_scratch_parent() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "target"))
        .map(|target| target.join("load"))
        .unwrap_or_else(|| std::env::temp_dir().join("car-load"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_up_summary_is_parsed() {
        let line = "2026-11-24T10:00:00Z  INFO car_gateway::cli: replayed 1050202 events; \
                    adopted 3 runs, evicted 0 runs, closed 0 sessions, expired 0 approvals; \
                    ready in 1.234s";
        let startup = parse_ready_line(line, Duration::from_millis(1300));
        assert_eq!(startup.ready_in, Some(1.234));
        assert_eq!(startup.events_replayed, Some(1_050_202));
        assert_eq!(startup.runs_adopted, Some(3));
    }
}
