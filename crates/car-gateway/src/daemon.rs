//! The daemon's life: start-up (open the log, rebuild the state, recover, write the
//! tokens, listen; the HTTP endpoints of [`crate::http`] after recovery), serving until
//! told to stop, and the graceful stop.
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

use car_events::event::{DaemonStarted, Event};
use car_events::{
    EventLog, LogError, OpenOptions, ReplayError, SledLog, Stamper, TailRepair, Writer,
    WriterThread, replay,
};
use car_projections::{State, canonical, recovery};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::config::Config;
use crate::connection;
use crate::http;
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
        let log_files = log_dir.clone();
        let log =
            tokio::task::spawn_blocking(move || SledLog::open(&log_dir, OpenOptions::default()))
                .await
                .map_err(|e| StartError::Recovery(e.to_string()))?
                .map_err(|err| match err {
                    LogError::Locked { pid, .. } => StartError::Locked {
                        dir: data_dir.clone(),
                        pid,
                    },
                    other => StartError::Log(other),
                })?;
        // sled creates its files with the process's umask: whatever that is, none of the
        // log (every prompt and output) is left readable by others.
        owner_only_files(&log_files).map_err(|source| StartError::DataDir {
            dir: log_files.clone(),
            source,
        })?;
        let tail_repair = log.tail_repair().cloned();
        let log: Arc<dyn EventLog> = Arc::new(log);
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
        let tokens =
            Tokens::create(&config.data_dir, config.auth_token.clone()).map_err(|source| {
                StartError::DataDir {
                    dir: config.data_dir.clone(),
                    source,
                }
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
        // Recovery is appended before anything else can happen: no connection exists yet.
        let recovered = writer
            .execute(move |state: &State| {
                let recovered = recovery::recover(state, now, &retention);
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
        let app = Arc::new(App {
            config,
            writer,
            stamper,
            tokens,
            notifier: Notifier::default(),
            stopping: CancellationToken::new(),
            turn_frames: Arc::default(),
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
        };
        Ok(Self {
            app,
            listener,
            http,
            writer_thread,
            report,
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
        app.stopping.cancel();
        gc.abort();
        connections.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close in time");
        }
        let stopped = app
            .append(|state| recovery::shutdown(state, "signal"))
            .await;
        if let Err(err) = &stopped {
            tracing::error!(%err, "could not record the shutdown");
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
    if let Err(err) = app
        .append(|state| recovery::shutdown(state, "start-up failed"))
        .await
    {
        tracing::error!(%err, "could not record the stop");
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

/// Retention every `gc_interval`, as events.
async fn gc_loop(app: Arc<App>) {
    let period = app.config.gc_interval;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        ticks.tick().await;
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
