//! The daemon's life: start-up (open the log, rebuild the state, recover, write the
//! tokens, listen; the HTTP endpoints of [`crate::http`] after recovery), serving until
//! told to stop, and the graceful stop.
//!
//! The log is sled in the data directory (§9), or, in cluster mode (§19), a NATS JetStream
//! stream that other gateways write too. Then the data directory holds only the tokens,
//! the memory sandbox and a lock file (one gateway per directory), and three things
//! change, because the state also holds what *other live gateways* are doing:
//! - every session is recorded with its gateway (`session.gateway`), and start-up recovery
//!   ends only what this gateway's previous life left (`daemon_restart`); retention runs
//!   only on the holder of the maintenance lease, which also declares dead gateways lost
//!   ([`crate::lease`]);
//! - a clean stop ends this gateway's sessions and runs (`daemon_shutdown`, §3.7/§9),
//!   records the stop, and ends nothing of the others';
//! - every event another gateway appends wakes this gateway's subscribers of the runs and
//!   approvals it touches ([`wake_for_foreign_events`]), as its own writes do.
//!
//! Shutdown is passed in (mini-redis style): [`Daemon::run`] serves until the given
//! future resolves, then drains, so tests start the daemon on port 0 and stop it.

use std::fs;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use car_events::event::{DaemonStarted, DaemonStopped, Event, IncompleteReason};
use car_events::log::{JetStreamLog, JetStreamOptions};
use car_events::{
    EventLog, LogError, OpenOptions, ReplayError, SledLog, Stamper, TailRepair, Writer,
    WriterThread, replay,
};
use car_projections::gateways::gateway_stopped;
use car_projections::{State, canonical, recovery};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::config::{ClusterConfig, Config, LogBackend};
use crate::connection;
use crate::http;
use crate::lease::{self, Leases};
use crate::notify::Notifier;
use crate::tokens::Tokens;

/// How long a client may take to complete the WebSocket upgrade.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the stop waits for connections to finish their last frames.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Replay progress is logged every this many events.
const REPLAY_PROGRESS_EVERY: u64 = 1_000_000;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another daemon holds the data directory.
    #[error("another car-server is using the data directory {dir}{}: stop it, or give this one another --data-dir", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// The other daemon's pid, when known.
        pid: Option<u32>,
    },
    /// The data directory could not be prepared.
    #[error("data directory {dir}: {source}")]
    DataDir {
        /// The directory.
        dir: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The log could not be opened.
    #[error("event log: {0}")]
    Log(#[from] LogError),
    /// Cluster mode: the NATS cluster is out of reach, or it or its stream is unfit (§19;
    /// exit 2).
    #[error("cluster mode: {0}")]
    Cluster(LogError),
    /// The log could not be replayed.
    #[error("replaying the event log: {0}")]
    Replay(#[from] ReplayError),
    /// The recovery events could not be appended.
    #[error("recording the recovery: {0}")]
    Recovery(String),
    /// The address is not available.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
    /// An HTTP endpoint's explicitly given address is not available (exit 2; a default
    /// address is skipped with a warning instead).
    #[error("{name}: cannot listen on {addr}: {source}")]
    HttpBind {
        /// The endpoint (`mcp`).
        name: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
}

/// What start-up did, for the start-up lines.
#[derive(Debug, Clone)]
pub struct StartReport {
    /// The address listened on.
    pub listen: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// `auth-token`.
    pub auth_token_path: PathBuf,
    /// `host-token`.
    pub host_token_path: PathBuf,
    /// Events replayed to rebuild the state.
    pub events_replayed: u64,
    /// A damaged last record dropped at open.
    pub tail_repair: Option<TailRepair>,
    /// Runs found in progress, ended `incomplete`/`daemon_restart`.
    pub runs_adopted: u32,
    /// Runs evicted by retention at start.
    pub runs_evicted: u32,
    /// Sessions found open and closed.
    pub sessions_closed: u32,
    /// Pending approvals expired.
    pub approvals_expired: u32,
    /// Start-up time.
    pub elapsed: Duration,
    /// Where the MCP endpoint listens (`None`: disabled, or its default address was taken).
    pub mcp: Option<SocketAddr>,
    /// Where the dashboard listens, if it does (PROTOCOL.md §17).
    pub dashboard: Option<SocketAddr>,
    /// Which event log, for the start-up line (`sled in DIR`, or the stream and its URLs).
    pub log: String,
}

/// What the stop did.
#[derive(Debug, Clone)]
pub struct StopReport {
    /// The seq of the last event (`daemon.stopped`).
    pub head: u64,
    /// The canonical digest of the final state.
    pub digest: String,
}

/// A started daemon, ready to serve.
#[derive(Debug)]
pub struct Daemon {
    app: Arc<App>,
    listener: TcpListener,
    http: Vec<http::Listener>,
    writer_thread: WriterThread,
    report: StartReport,
    /// Cluster mode: the lock on the data directory (sled holds its own otherwise).
    _dir_lock: Option<nix::fcntl::Flock<fs::File>>,
}

impl Daemon {
    /// Opens the log, rebuilds and recovers the state, writes the tokens and binds.
    pub async fn start(config: Config, stamper: Stamper) -> Result<Self, StartError> {
        let started = Instant::now();
        let data_dir = config.data_dir.clone();
        let log_dir = config.log_dir();
        let memory_dir = config.memory_dir();
        for dir in [&data_dir, &log_dir, &memory_dir] {
            owner_only_dir(dir).map_err(|source| StartError::DataDir {
                dir: dir.clone(),
                source,
            })?;
        }
        let mut leases = None;
        let (log, tail_repair, dir_lock, log_line): (Arc<dyn EventLog>, _, _, _) = match &config.log
        {
            LogBackend::Sled => {
                let log_files = log_dir.clone();
                let log = tokio::task::spawn_blocking(move || {
                    SledLog::open(&log_dir, OpenOptions::default())
                })
                .await
                .map_err(|e| StartError::Recovery(e.to_string()))?
                .map_err(|err| match err {
                    LogError::Locked { pid, .. } => StartError::Locked {
                        dir: data_dir.clone(),
                        pid,
                    },
                    other => StartError::Log(other),
                })?;
                // sled creates its files with the process's umask: whatever that is, none
                // of the log (every prompt and output) is left readable by others.
                owner_only_files(&log_files).map_err(|source| StartError::DataDir {
                    dir: log_files.clone(),
                    source,
                })?;
                let tail_repair = log.tail_repair().cloned();
                let line = format!("sled in {}", log_files.display());
                (Arc::new(log) as Arc<dyn EventLog>, tail_repair, None, line)
            }
            LogBackend::JetStream(cluster) => {
                let lock = lock_data_dir(&data_dir)?;
                let log = open_jetstream(cluster.clone()).await?;
                // The heartbeat goes in before this gateway records anything, so no holder
                // ever finds one of its sessions without it.
                let held = Leases::connect(cluster)
                    .await
                    .map_err(|e| StartError::Cluster(LogError::Unavailable(e.to_string())))?;
                if let Err(err) = held.first_beat().await {
                    return Err(StartError::Cluster(LogError::Unavailable(format!(
                        "gateway heartbeat: {err}"
                    ))));
                }
                held.hold().await;
                leases = Some(Arc::new(held));
                let line = format!(
                    "jetstream stream {} at {} (gateway {})",
                    cluster.stream,
                    cluster.nats_urls.join(","),
                    cluster.gateway_id
                );
                (Arc::new(log) as Arc<dyn EventLog>, None, Some(lock), line)
            }
        };
        let clustered = log.is_shared();
        let replay_log = log.clone();
        let (state, events_replayed) = tokio::task::spawn_blocking(move || {
            let mut state = State::new();
            let total = replay_log.head();
            let last = replay(replay_log.as_ref(), &mut state, 1, |seq| {
                if seq % REPLAY_PROGRESS_EVERY == 0 {
                    tracing::info!("replaying the event log: {seq} / {total} events");
                }
            })?;
            Ok::<_, ReplayError>((state, last))
        })
        .await
        .map_err(|e| StartError::Recovery(e.to_string()))??;

        // The token files are written before the port opens: a client that waits for the
        // port and then reads `auth-token` must never read the previous run's token (after
        // a crash the old files are still there).
        let tokens = Tokens::create(
            &config.data_dir,
            config.auth_token.clone(),
            config.host_token.clone(),
        )
        .map_err(|source| StartError::DataDir {
            dir: config.data_dir.clone(),
            source,
        })?;
        let bound = match TcpListener::bind(config.listen).await {
            Ok(listener) => listener.local_addr().map(|addr| (listener, addr)),
            Err(err) => Err(err),
        };
        let (listener, listen) = bound.map_err(|source| {
            tokens.remove();
            StartError::Bind {
                addr: config.listen,
                source,
            }
        })?;
        let (writer, writer_thread) = Writer::spawn(log, state, stamper.clone());
        let now = stamper.clock().now();
        let retention = config.retention;
        let started_event = DaemonStarted {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            data_dir: config.data_dir.display().to_string(),
            listen: listen.to_string(),
        };
        let gateway = leases
            .as_ref()
            .map(|l| (l.gateway_id().to_owned(), l.holds_maintenance()));
        // Recovery is appended before anything else can happen: no connection exists yet.
        let recovered = writer
            .execute(move |state: &State| {
                // Cluster mode: what is live may be another gateway's (module docs).
                let recovered = match &gateway {
                    Some((me, holder)) => {
                        let mut events =
                            gateway_stopped(state, me, IncompleteReason::DaemonRestart);
                        if *holder {
                            events.extend(recovery::gc(state, now, &retention));
                        }
                        events
                    }
                    None => recovery::recover(state, now, &retention),
                };
                let summary = recovery::summarize(&recovered, events_replayed);
                let mut events = Vec::with_capacity(recovered.len() + 2);
                events.push(Event::DaemonStarted(started_event.clone()));
                events.extend(recovered);
                events.push(Event::DaemonRecovered(summary.clone()));
                (events, summary)
            })
            .await;
        let summary = match recovered {
            Ok((summary, _)) => summary,
            Err(err) => {
                writer.shutdown().await;
                writer_thread.join();
                tokens.remove();
                return Err(StartError::Recovery(err.to_string()));
            }
        };
        let grace = config.agent_stop_grace;
        let app = Arc::new(App {
            config,
            writer,
            stamper,
            tokens,
            notifier: Notifier::default(),
            stopping: CancellationToken::new(),
            turn_frames: Arc::default(),
            live_proposals: Arc::default(),
            leases,
            supervisor: crate::supervisor::Supervisor::new(listen, grace),
            chats: crate::chat_relay::ChatRelay::default(),
        });
        // The HTTP endpoints open after recovery (PROTOCOL.md §18).
        let mut http = Vec::new();
        match http::bind("mcp", app.config.mcp_bind).await {
            Ok(Some((listener, addr))) => http.push(http::Listener {
                name: "mcp",
                listener,
                addr,
                router: http::mcp::router(app.clone()),
            }),
            Ok(None) => {}
            Err(err) => {
                abandon_start(&app, writer_thread).await;
                return Err(err);
            }
        }
        match http::bind("dashboard", app.config.dashboard_bind).await {
            Ok(Some((listener, addr))) => http.push(http::Listener {
                name: "dashboard",
                listener,
                addr,
                router: http::dashboard::router(app.clone(), addr, listen),
            }),
            Ok(None) => {}
            Err(err) => {
                abandon_start(&app, writer_thread).await;
                return Err(err);
            }
        }
        let report = StartReport {
            listen,
            data_dir: app.config.data_dir.clone(),
            auth_token_path: app.tokens.auth_path.clone(),
            host_token_path: app.tokens.host_path.clone(),
            events_replayed,
            tail_repair,
            runs_adopted: summary.runs_adopted,
            runs_evicted: summary.runs_evicted,
            sessions_closed: summary.sessions_closed,
            approvals_expired: summary.approvals_expired,
            elapsed: started.elapsed(),
            mcp: http.iter().find(|l| l.name == "mcp").map(|l| l.addr),
            dashboard: http.iter().find(|l| l.name == "dashboard").map(|l| l.addr),
            log: log_line,
        };
        if clustered {
            tokio::spawn(wake_for_foreign_events(app.clone()));
        }
        if let Some(leases) = &app.leases {
            tokio::spawn(lease::maintain(app.clone(), leases.clone()));
        }
        // After recovery recorded the agents it found running as exited (§12.3).
        crate::supervisor::auto_start(&app).await;
        Ok(Self {
            app,
            listener,
            http,
            writer_thread,
            report,
            _dir_lock: dir_lock,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.report.listen
    }

    /// What start-up did.
    pub fn report(&self) -> &StartReport {
        &self.report
    }

    /// The shared runtime (for embedding and tests).
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Serves until `shutdown` resolves, then stops gracefully: stops accepting, closes
    /// every connection, ends runs in progress `incomplete`/`daemon_shutdown`, makes the
    /// log durable and removes the token files.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> StopReport {
        let Self {
            app,
            listener,
            http,
            writer_thread,
            ..
        } = self;
        let gc = tokio::spawn(gc_loop(app.clone()));
        let connections = TaskTracker::new();
        // The HTTP endpoints drain with the WebSocket connections.
        for endpoint in http {
            let served = http::serve(endpoint, app.stopping.clone());
            connections.spawn(async move {
                let _ = served.await;
            });
        }
        let permits = Arc::new(Semaphore::new(app.config.max_connections));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let app = app.clone();
                        let permit = permits.clone().try_acquire_owned().ok();
                        connections.spawn(async move {
                            let Some(_permit) = permit else {
                                return refuse(stream, &app).await;
                            };
                            accept(app, stream, peer).await;
                        });
                    }
                    Err(err) => {
                        // Out of file descriptors and the like: wait a moment, go on.
                        tracing::warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        tracing::info!("stopping: closing connections");
        drop(listener);
        // Chats end first: their callers are told "daemon shutting down" before the
        // connections close (§13.3).
        crate::chat_relay::ChatRelay::shutdown(&app).await;
        app.stopping.cancel();
        gc.abort();
        connections.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close in time");
        }
        // Agents stop before the log closes (§12.3), their exits recorded.
        crate::supervisor::stop_all(&app).await;
        let gateway = app.leases.as_ref().map(|l| l.gateway_id().to_owned());
        let stopped = app
            .append(move |state| stop_events(state, "signal", gateway.as_deref()))
            .await;
        if let Err(err) = &stopped {
            tracing::error!(%err, "could not record the shutdown");
        }
        if let Some(leases) = &app.leases {
            leases.release().await;
        }
        app.writer.shutdown().await;
        writer_thread.join();
        let (head, digest) = {
            let state = app.writer.state();
            (state.head(), canonical::digest(&state))
        };
        app.tokens.remove();
        tracing::info!(head, %digest, "stopped");
        StopReport { head, digest }
    }
}

/// Undoes a start that failed after recovery was recorded: records the stop (so the next
/// start finds a clean history), stops the writer and removes the token files.
async fn abandon_start(app: &Arc<App>, writer_thread: WriterThread) {
    let gateway = app.leases.as_ref().map(|l| l.gateway_id().to_owned());
    if let Err(err) = app
        .append(move |state| stop_events(state, "start-up failed", gateway.as_deref()))
        .await
    {
        tracing::error!(%err, "could not record the stop");
    }
    if let Some(leases) = &app.leases {
        leases.release().await;
    }
    app.writer.shutdown().await;
    writer_thread.join();
    app.tokens.remove();
}

/// Creates `dir` (and its parents) if needed and makes it `0700`, warning when an existing
/// one was open to others: the data directory holds the tokens and the log.
fn owner_only_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode != 0o700 {
        if mode & 0o077 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                "the directory was open to others (mode {mode:o}): tightened to 700"
            );
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Takes every permission but the owner's off the files and directories under `dir`.
fn owner_only_files(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            owner_only_files(&entry.path())?;
        }
        if mode & 0o077 != 0 {
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode & 0o700))?;
        }
    }
    Ok(())
}

/// Upgrades an accepted TCP connection and serves it.
async fn accept(app: Arc<App>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let config = connection::config_for(&app);
    let upgrade = tokio_tungstenite::accept_async_with_config(stream, Some(config));
    match tokio::time::timeout(UPGRADE_TIMEOUT, upgrade).await {
        Ok(Ok(ws)) => connection::serve(app, ws, peer).await,
        Ok(Err(err)) => tracing::debug!(%peer, %err, "WebSocket upgrade failed"),
        Err(_) => tracing::debug!(%peer, "WebSocket upgrade timed out"),
    }
}

/// Refuses a connection over the limit with HTTP 503.
async fn refuse(stream: TcpStream, app: &App) {
    tracing::warn!(
        max = app.config.max_connections,
        "connection refused: too many connections"
    );
    // The callback's signature is tungstenite's: its error type is an HTTP response.
    #[allow(clippy::result_large_err)]
    let reject = |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
        let mut response = ErrorResponse::new(Some("too many connections".into()));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        Err(response)
    };
    let _ = tokio::time::timeout(
        UPGRADE_TIMEOUT,
        tokio_tungstenite::accept_hdr_async(stream, reject),
    )
    .await;
}

/// What a stop appends: everything live ended (§9), or in cluster mode (`gateway`: this
/// gateway's id) only this gateway's sessions and runs, then the stop (module docs).
fn stop_events(state: &State, reason: &str, gateway: Option<&str>) -> Vec<Event> {
    match gateway {
        Some(me) => {
            let mut events = gateway_stopped(state, me, IncompleteReason::DaemonShutdown);
            events.push(Event::DaemonStopped(DaemonStopped {
                reason: reason.to_owned(),
            }));
            events
        }
        None => recovery::shutdown(state, reason),
    }
}

/// Opens cluster mode's log (blocking work: connecting, creating or checking the stream,
/// reading it into the mirror). Out of reach or unfit is [`StartError::Cluster`] (exit 2).
async fn open_jetstream(cluster: ClusterConfig) -> Result<JetStreamLog, StartError> {
    let mut options = JetStreamOptions::new(cluster.nats_urls, cluster.stream);
    options.allow_unsafe_stream = cluster.allow_unsafe_stream;
    options.client_name = Some(format!("car-server {}", cluster.gateway_id));
    tokio::task::spawn_blocking(move || JetStreamLog::open(options))
        .await
        .map_err(|e| StartError::Recovery(e.to_string()))?
        .map_err(|err| match err {
            LogError::Unavailable(_) | LogError::Unfit(_) => StartError::Cluster(err),
            other => StartError::Log(other),
        })
}

/// Cluster mode: one gateway per data directory (its token files and memory sandbox are
/// its own). sled's own lock does this otherwise.
fn lock_data_dir(dir: &Path) -> Result<nix::fcntl::Flock<fs::File>, StartError> {
    let path = dir.join("gateway.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StartError::DataDir {
            dir: dir.to_owned(),
            source,
        })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => StartError::Locked {
                dir: dir.to_owned(),
                pid: None,
            },
            other => StartError::DataDir {
                dir: dir.to_owned(),
                source: other.into(),
            },
        },
    )
}

/// Cluster mode: wakes the followers of every run and approval that other gateways'
/// events touch, once this gateway's writer has folded them (its own writes wake them in
/// [`App`] already; a second wake at the same seq is a no-op). Ends with the daemon.
async fn wake_for_foreign_events(app: Arc<App>) {
    let mut durable = app.writer.watch_durable();
    let mut seen = durable.borrow().seq;
    loop {
        tokio::select! {
            changed = durable.changed() => if changed.is_err() { return },
            () = app.stopping.cancelled() => return,
        }
        let now = durable.borrow_and_update().seq;
        if now > seen {
            for env in app.writer.log().read_from(seen + 1) {
                let Ok(env) = env else { break };
                if env.seq > now {
                    break;
                }
                app.wake_event(&env.event, env.seq);
            }
        }
        seen = now;
    }
}

/// Retention every `gc_interval`, as events (in cluster mode, on the lease holder only).
async fn gc_loop(app: Arc<App>) {
    let period = app.config.gc_interval;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        ticks.tick().await;
        // Cluster mode: retention is the maintenance lease holder's (§19).
        if app.leases.as_ref().is_some_and(|l| !l.holds_maintenance()) {
            continue;
        }
        let now = app.now();
        let retention = app.config.retention;
        match app
            .append(move |state| recovery::gc(state, now, &retention))
            .await
        {
            Ok((events, _)) if !events.is_empty() => {
                tracing::info!(runs_evicted = events.len(), "retention evicted runs");
            }
            Ok(_) => {}
            Err(err) => tracing::error!(%err, "retention failed"),
        }
    }
}
