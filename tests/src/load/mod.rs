//! Load, crash-soak and benchmark drivers of `car-server`, behind the `car-soak` and
//! `car-bench` binaries of this package (see `docs/gateway.md`).
//!
//! - [`server`]: the daemon as a separate process on a data directory of our choosing,
//!   with its start-up timed, SIGKILL/SIGTERM and restarts;
//! - [`ws`]: a lean WebSocket JSON-RPC connection (small buffers, no notification
//!   buffering), cheap enough to open ten thousand of;
//! - [`soak`]: writers killed mid-flight, then every acknowledged turn checked against the
//!   restarted daemon;
//! - `cycles`: what both soaks share: the seed, the scratch directory, when kills land;
//! - [`tool_soak`]: tool clients killed mid-call, then every dispatch marker, outcome and
//!   proposal result checked against what the clients saw;
//! - [`bench`](mod@bench): throughput, subscriber latency, idle memory, start-up time and tool
//!   round-trips, each against its target.
//!
//! Both binaries run the daemon by re-executing themselves with [`server::SERVE_ENV`] set
//! (their `main` then hands over to `car_gateway::cli::main`, exactly as `car-server` and
//! `car-test-server` do), so `cargo run --bin car-soak` needs no other binary built.

pub mod bench;
mod cycles;
pub mod server;
pub mod soak;
pub mod tool_soak;
pub mod ws;

/// Exit code: a violation (soak) or a missed target (bench, with `--check`).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the run could not be set up (no server, no data directory, bad options).
pub const EXIT_SETUP: u8 = 2;
