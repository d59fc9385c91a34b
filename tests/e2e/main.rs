//! `e2e`: the end-to-end tests of `car-server`. Every test starts its own daemon (a real
//! process of `car-test-server`, or in process where it needs the stop report) on port 0
//! and a temporary data directory, and talks to it over a real WebSocket.
//!
//! One module per area of PROTOCOL.md:
//! - [`transport`]: §1 framing, batches, parse and request errors, size limit, keep-alive;
//! - [`auth`]: §2 authentication, roles, handshake;
//! - [`runs`]: §3.2–3.4, §3.6 runs.start, record_turns, complete, list, get_trace;
//! - [`subscriptions`]: §3.5 runs.subscribe / runs.trace.event / runs.unsubscribe;
//! - [`log`]: §7 log.read, log.subscribe, log.unsubscribe;
//! - [`lifecycle`]: §3.7 and §9: disconnect, restart, crash, graceful stop, the data
//!   directory lock, retention, the command line, state = replay of the log;
//! - [`model_turns`]: §14.3 runs.record_model_turn: indices, records, redaction, limits;
//! - [`pagination`]: §14.4 paged runs.list, runs.get_trace, runs.subscribe (v3);
//! - [`run_control`]: §14.1–14.2 runs.cancel (receipts, tools.cancel, orphans) and
//!   runs.resume (the lease, recovery-only proposals), approvals with their run;
//! - [`tools`]: §4.1 session.init, tools.register, tools.list, policies;
//! - [`proposals`]: §4.2 proposal.submit with real tool clients: tools.execute, replies,
//!   timeouts and tools.cancel, disconnects, failure behaviours, turns, the log's record;
//! - [`approvals`]: §5 approvals (request, resolve, list, await, restarts) and the gate;
//! - [`host_feed`]: §6 host.subscribe, host.event, host.events;
//! - [`dashboard`]: §17 the dashboard's Host check, `/auth-token` and JSON API;
//! - [`cookbook`]: the CAR cookbook flow as an unmodified old client runs it;
//! - [`data_dir`]: start-up order of the token files and the port, the directory's modes;
//! - [`disk_full`]: a full disk: prompt refusals, reads and sessions meanwhile, recovery;
//! - [`memory`]: §11 memory: every method, limit and scope, the persist/load sandbox, the
//!   cookbook flow across a SIGKILL;
//! - [`mcp`]: §16 the MCP endpoint over raw HTTP and through the official Python SDK;
//! - [`agents`]: §12 registered agents with real child processes: spawn, environment,
//!   attach with the agent's token, logs, backoff, stop/kill/restart/remove, refusals,
//!   roles, a daemon SIGKILL taking its agents with it;
//! - [`chat`]: §13 the chat relay: events in order to the caller alone, refusals, acks,
//!   cancel, mirrored approvals, every disconnect, idle timeout, overflow, stop, restart;
//! - [`cluster`]: §19 cluster mode: two gateways over one JetStream stream.

mod agents;
mod approvals;
mod auth;
mod chat;
mod cluster;
mod cookbook;
mod dashboard;
mod data_dir;
mod disk_full;
mod host_feed;
mod lifecycle;
mod log;
mod mcp;
mod memory;
mod model_turns;
mod pagination;
mod proposals;
mod run_control;
mod runs;
mod subscriptions;
mod tools;
mod transport;

use car_tests::{Server, ServerBuilder};

/// The daemon binary built by this package.
const SERVER_BIN: &str = env!("CARGO_BIN_EXE_car-test-server");

/// A builder for the daemon process.
fn builder() -> ServerBuilder {
    ServerBuilder::new(SERVER_BIN)
}

/// A daemon with auth on and the given extra arguments.
async fn server(args: &[&str]) -> Server {
    builder()
        .args(args.iter().copied())
        .spawn()
        .await
        .unwrap_or_else(|err| panic!("{err:#}"))
}
