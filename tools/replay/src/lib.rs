//! car-replay: the offline audit tool of car's event log.
//!
//! The daemon's state is a pure fold of its log ([`car_projections::State`]), so everything
//! the daemon ever knew can be read back from the log alone: which runs there were and
//! how each went, the raw events, the state as it was at any position, and whether the
//! log is intact. This crate does that, read-only: it opens the log with
//! [`car_events::OpenOptions::read_only`], so it never creates a log, never repairs one
//! and never appends.
//!
//! How the crate is laid out, in the order a reader meets it:
//! - [`cli`]: the command line (clap derive); `src/main.rs` only parses it and exits;
//! - [`exit`]: the exit codes and the one error type, which knows its exit code;
//! - [`datadir`]: finding the data directory and opening its log read-only (a running
//!   daemon's directory is refused with advice);
//! - [`scan`]: reading records in order, decoding them on worker threads;
//! - [`replay`]: folding records into the daemon's [`car_projections::State`];
//! - [`output`], [`progress`]: stdout that tolerates a closed pipe, tables and times, and
//!   the progress bar on stderr;
//! - [`commands`]: one module per command (`runs`, `trace`, `events`, `state`, `verify`,
//!   `stats`).

pub mod cli;
pub mod commands;
pub mod datadir;
pub mod exit;
pub mod output;
pub mod progress;
pub mod replay;
pub mod scan;
pub mod stream;

pub use cli::Cli;
pub use exit::{Error, Exit};

/// Runs the parsed command line; returns how the process should exit.
pub fn run(cli: Cli) -> Result<Exit, Error> {
    commands::run(cli)
}
