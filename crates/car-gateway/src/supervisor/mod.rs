//! The agent supervisor (PROTOCOL.md §12.3): the I/O edge of registered agents.
//!
//! It spawns an agent's process (own process group, stdin `/dev/null`, the environment of
//! §12.3, SIGKILL when the daemon dies), pumps its stdout and stderr into its log file,
//! reaps it, signals it on stop, and sleeps out backoffs. What to do at each step is not
//! decided here: every step is recorded through a decision of
//! `car_projections::agents` (spawned, exited, backoff elapsed), and the exit decision
//! (restart? when? `errored`?) is the pure rule of `car_projections::agents::supervise`.
//! This module only carries it out, so the log says exactly what happened and why.

pub(crate) mod log;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use car_events::event::{AgentExit, AgentStatus, Event};
use car_projections::agents::AgentCommand;
use car_projections::agents::decide::StopAgent;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

use crate::app::App;
use crate::handlers::agents::{check_command_file, log_path};
use crate::tokens;
use log::{AgentLog, MAX_LINE};

/// How long a stop waits for the process to be reaped after SIGKILL: the kernel delivers
/// it at once, so this only bounds a process stuck in uninterruptible I/O.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long the log pumps may run on after the process exited: output still in the pipes
/// is written; a grandchild that kept the pipes open does not hold the exit back.
const PUMP_DRAIN: Duration = Duration::from_secs(1);

/// The supervisor's live processes.
#[derive(Debug)]
pub struct Supervisor {
    /// `ws://host:port/` handed to agents as `CAR_SERVER_URL` and `CAR_DAEMON_URL`.
    server_url: String,
    /// SIGTERM → SIGKILL grace (`--agent-stop-grace`).
    grace: Duration,
    /// Live processes by agent id: their pid and a flag that turns true once reaped.
    live: Mutex<HashMap<String, (u32, watch::Receiver<bool>)>>,
}

impl Supervisor {
    /// A supervisor whose agents reach the daemon at `listen`.
    pub fn new(listen: std::net::SocketAddr, grace: Duration) -> Self {
        let host = if listen.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else if listen.is_ipv6() {
            format!("[{}]", listen.ip())
        } else {
            listen.ip().to_string()
        };
        Self {
            server_url: format!("ws://{host}:{}/", listen.port()),
            grace,
            live: Mutex::default(),
        }
    }
}

async fn record(app: &Arc<App>, command: AgentCommand) -> Vec<Event> {
    match app
        .execute(car_projections::Command::Agent(command), |_, events| {
            events.to_vec()
        })
        .await
    {
        Ok(Ok(committed)) => committed.out,
        Ok(Err(refusal)) => {
            tracing::warn!(%refusal, "agent supervision step refused");
            vec![]
        }
        Err(err) => {
            tracing::error!(%err, "could not record an agent supervision step");
            vec![]
        }
    }
}

/// Spawns the agent's process if the state says it is `starting` (a start or an elapsed
/// backoff was recorded), and records the spawn or its failure.
pub(crate) async fn spawn(app: &Arc<App>, agent_id: &str) {
    let spec = {
        let state = app.writer.state();
        match state.registered_agent(agent_id) {
            Some(agent) if agent.status == AgentStatus::Starting && agent.pid.is_none() => {
                agent.spec.clone()
            }
            _ => return,
        }
    };
    let failed = |reason: String| AgentCommand::SpawnFailed {
        agent_id: agent_id.to_owned(),
        reason,
    };
    if let Err(reason) = check_command_file(&spec.command) {
        record(app, failed(format!("command: {reason}"))).await;
        return;
    }
    let data_dir = &app.config.data_dir;
    let Ok(token) = tokens::read_token(&tokens::agent_token_path(data_dir, agent_id)) else {
        record(app, failed("token file missing".into())).await;
        return;
    };
    let log = match AgentLog::open(log_path(data_dir, agent_id)) {
        Ok(log) => Arc::new(Mutex::new(log)),
        Err(err) => {
            tracing::error!(%agent_id, %err, "could not open the agent log");
            record(app, failed("could not open its log".into())).await;
            return;
        }
    };
    let supervisor = &app.supervisor;
    let mut command = Command::new(&spec.command);
    command
        .args(&spec.args)
        .current_dir(spec.cwd.as_ref().map_or(data_dir.clone(), PathBuf::from))
        .env_remove("CAR_AUTH_TOKEN")
        .envs(&spec.env)
        .env("CAR_AGENT_ID", agent_id)
        .env("CAR_AGENT_TOKEN", &token)
        .env("CAR_SERVER_URL", &supervisor.server_url)
        .env("CAR_DAEMON_URL", &supervisor.server_url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    death::die_with_parent(&mut command);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            record(app, failed(err.kind().to_string())).await;
            return;
        }
    };
    let Some(pid) = child.id() else {
        return;
    };
    let (reaped_tx, reaped_rx) = watch::channel(false);
    supervisor
        .live
        .lock()
        .insert(agent_id.to_owned(), (pid, reaped_rx));
    record(
        app,
        AgentCommand::Spawned {
            agent_id: agent_id.to_owned(),
            pid,
        },
    )
    .await;
    let pumps = [
        child
            .stdout
            .take()
            .map(|out| tokio::spawn(pump(app.clone(), out, log.clone(), false))),
        child
            .stderr
            .take()
            .map(|err| tokio::spawn(pump(app.clone(), err, log.clone(), true))),
    ];
    let app = app.clone();
    let agent_id = agent_id.to_owned();
    tokio::spawn(async move {
        // Always reaped, whatever happens next: no zombies.
        let status = child.wait().await;
        for pump in pumps.into_iter().flatten() {
            let _ = tokio::time::timeout(PUMP_DRAIN, pump).await;
        }
        let exit = match status {
            Ok(status) => exit_of(status),
            Err(err) => {
                tracing::error!(%agent_id, %err, "could not wait for the agent process");
                AgentExit::Signal { signal: 0 }
            }
        };
        // Recorded before anyone waiting in `terminate` is told: once a stop returns, the
        // state already shows the process gone.
        exited(&app, &agent_id, pid, exit).await;
        app.supervisor.live.lock().remove(&agent_id);
        let _ = reaped_tx.send(true);
    });
}

/// Records an exit and carries out what the pure rule decided: a backoff is slept out,
/// then the restart is recorded and spawned.
async fn exited(app: &Arc<App>, agent_id: &str, pid: u32, exit: AgentExit) {
    let now = app.now();
    let events = record(
        app,
        AgentCommand::Exited {
            agent_id: agent_id.to_owned(),
            pid,
            exit,
            now,
        },
    )
    .await;
    if !events
        .iter()
        .any(|e| matches!(e, Event::AgentBackoffScheduled(_)))
    {
        return;
    }
    let (app, agent_id) = (app.clone(), agent_id.to_owned());
    tokio::spawn(async move {
        loop {
            let due = app
                .writer
                .state()
                .registered_agent(&agent_id)
                .filter(|a| a.status == AgentStatus::Backoff)
                .and_then(|a| a.restart_at);
            let Some(due) = due else { return };
            let wait = (due - app.now()).to_std().unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = app.stopping.cancelled() => return,
            }
            let now = app.now();
            let started = record(
                &app,
                AgentCommand::BackoffElapsed {
                    agent_id: agent_id.clone(),
                    now,
                },
            )
            .await;
            if !started.is_empty() {
                respawn(app, agent_id).await;
                return;
            }
        }
    });
}

/// [`spawn`] behind a boxed future: spawning schedules the exit handling, which may spawn
/// again, and the box ends that cycle of future types.
fn respawn(app: Arc<App>, agent_id: String) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move { spawn(&app, &agent_id).await })
}

fn exit_of(status: ExitStatus) -> AgentExit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => AgentExit::Code { code },
        (None, Some(signal)) => AgentExit::Signal { signal },
        (None, None) => AgentExit::Signal { signal: 0 },
    }
}

/// Copies one of the child's streams into its log, line by line (split at [`MAX_LINE`]).
async fn pump(
    app: Arc<App>,
    stream: impl AsyncRead + Unpin,
    log: Arc<Mutex<AgentLog>>,
    stderr: bool,
) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if let Err(err) = log.lock().write_line(app.now(), stderr, &line) {
                    tracing::warn!(%err, "could not write an agent log line");
                }
            }
        }
    }
}

/// Stops the agent's live process (a stop was recorded): SIGTERM to its group, SIGKILL
/// after the grace (`kill`: at once); returns once it is reaped (or after [`KILL_WAIT`]).
pub(crate) async fn terminate(app: &Arc<App>, agent_id: &str, kill: bool) {
    let Some((pid, mut reaped)) = app.supervisor.live.lock().get(agent_id).cloned() else {
        return;
    };
    let group = Pid::from_raw(pid as i32);
    let first = if kill {
        Signal::SIGKILL
    } else {
        Signal::SIGTERM
    };
    let _ = killpg(group, first);
    if !kill
        && tokio::time::timeout(app.supervisor.grace, reaped.wait_for(|r| *r))
            .await
            .is_ok()
    {
        return;
    }
    let _ = killpg(group, Signal::SIGKILL);
    let _ = tokio::time::timeout(KILL_WAIT, reaped.wait_for(|r| *r)).await;
}

/// Start-up, after recovery: starts every `auto_start` agent.
pub(crate) async fn auto_start(app: &Arc<App>) {
    let events = record(app, AgentCommand::AutoStart).await;
    for event in events {
        if let Event::AgentStartRequested(e) = event {
            spawn(app, &e.agent_id).await;
        }
    }
}

/// Shutdown: stops every live agent (recorded as stops by the daemon) and waits for them.
pub(crate) async fn stop_all(app: &Arc<App>) {
    let ids: Vec<String> = app.supervisor.live.lock().keys().cloned().collect();
    let stops = ids.into_iter().map(|agent_id| {
        let app = app.clone();
        async move {
            record(
                &app,
                AgentCommand::Stop(StopAgent {
                    actor: None,
                    agent_id: agent_id.clone(),
                    signal: "term".into(),
                }),
            )
            .await;
            terminate(&app, &agent_id, false).await;
        }
    });
    // Each returns once its process is reaped and its exit recorded.
    futures::future::join_all(stops).await;
}

/// `PR_SET_PDEATHSIG`: the only way to have the kernel kill a child when the daemon dies
/// (even by SIGKILL), so no agent outlives a crash (§12.3).
mod death {
    // `pre_exec` is unsafe: the closure runs in the forked child before `exec`, where only
    // async-signal-safe calls are allowed. It makes two: prctl(2) and getppid(2).
    #![allow(unsafe_code)]

    use nix::sys::prctl;
    use nix::sys::signal::Signal;
    use nix::unistd::getppid;

    /// Arms `command` so that its process gets SIGKILL when the daemon's thread that
    /// spawned it dies (tokio's worker threads live as long as the daemon).
    pub(super) fn die_with_parent(command: &mut tokio::process::Command) {
        let parent = nix::unistd::getpid();
        // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid) and
        // allocates nothing on success.
        unsafe {
            command.pre_exec(move || {
                prctl::set_pdeathsig(Signal::SIGKILL)?;
                // The daemon may have died between fork and prctl: then nobody would kill us.
                if getppid() != parent {
                    return Err(std::io::Error::other("the daemon died"));
                }
                Ok(())
            });
        }
    }
}
