//! The `car-server` command line, as a library function so that the test package can
//! build a binary identical to the shipped one.
//!
//! Exit codes: 0 after a clean stop (SIGINT/SIGTERM), 1 when it fails while starting or
//! running, 2 for a bad command line, a data directory held by another daemon, an
//! explicitly given HTTP endpoint address that cannot be bound, or (cluster mode) a NATS
//! cluster out of reach or unfit.

use std::process::ExitCode;

use anyhow::Context;
use car_events::Stamper;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::{Cli, Config, Daemon, StartError};

/// Runs `car-server` with the process's arguments and environment.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour_wanted())
        .init();
    let config = match Config::from_cli(cli) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("car-server: {err}");
            return ExitCode::from(2);
        }
    };
    match serve(config) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::from(1)
        }
    }
}

/// Colours only on a terminal (not in journald or a file), and never with `NO_COLOR` set
/// (no-color.org).
fn colour_wanted() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn serve(config: Config) -> anyhow::Result<ExitCode> {
    // Everything the daemon creates (the log's files, the tokens) is for its owner only.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("car-server")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let daemon = match Daemon::start(config, Stamper::system()).await {
            Ok(daemon) => daemon,
            Err(
                err @ (StartError::Locked { .. }
                | StartError::HttpBind { .. }
                | StartError::Cluster(_)),
            ) => {
                tracing::error!("{err}");
                return Ok(ExitCode::from(2));
            }
            Err(err) => return Err(err).context("car-server could not start"),
        };
        let r = daemon.report();
        if let Some(repair) = &r.tail_repair {
            tracing::warn!("event log: {repair}");
        }
        tracing::info!("car-server {} listening on ws://{}/", env!("CARGO_PKG_VERSION"), r.listen);
        tracing::info!("data dir: {}", r.data_dir.display());
        tracing::info!("event log: {}", r.log);
        tracing::info!("daemon token: {}", r.auth_token_path.display());
        tracing::info!("host token: {}", r.host_token_path.display());
        match r.mcp {
            Some(addr) => tracing::info!("mcp: http://{addr}/mcp"),
            None => tracing::info!("mcp: disabled"),
        }
        // The host token rides in the fragment, which browsers never send to a server.
        let app = daemon.app();
        match r.dashboard {
            Some(addr) if app.config.auth => tracing::info!(
                "dashboard: http://{addr}/#host_token={}",
                app.tokens.host.expose()
            ),
            Some(addr) => tracing::info!("dashboard: http://{addr}/"),
            None => tracing::info!("dashboard: disabled"),
        }
        tracing::info!(
            "replayed {} events; adopted {} runs, evicted {} runs, closed {} sessions, expired {} approvals; ready in {:.3}s",
            r.events_replayed,
            r.runs_adopted,
            r.runs_evicted,
            r.sessions_closed,
            r.approvals_expired,
            r.elapsed.as_secs_f64()
        );
        daemon.run(shutdown_signal()).await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Resolves at the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot listen for signals; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
