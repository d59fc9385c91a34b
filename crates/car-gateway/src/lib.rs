//! car-gateway: `car-server`, the WebSocket JSON-RPC gateway over car's event log.
//!
//! - [`daemon`]: start-up (replay, recovery), serving, graceful stop;
//!
//! The WebSocket stack, each layer using only those below it:
//! - `connection`: one WebSocket = one session: the socket's reader and sender loops,
//!   frames and batches, keep-alive; it hands each call to
//! - `handlers`: the method table and one module per namespace of the protocol, written
//!   against
//! - `session`: what a handler works with: its [`Session`](session), the one-response
//!   `Responder`, the shapes of every write and read;
//! - `tail` (live subscriptions as cursors over the log), `gate` (the approval gate),
//!   `reads` (bounded log reads off the async workers), `tools` (tool calls in flight),
//!   `sandbox` (the memory directory of `memory.persist`/`memory.load`),
//!   `live_proposals` (the proposals running under each run, for `runs.cancel`);
//! - `outbound` (a connection's bounded send queue), `frames` (the shared frame cache of
//!   run subscriptions);
//! - [`app`]: what connections share: the single writer, the notifier, the tokens;
//! - [`rpc`]: JSON-RPC framing and the one error mapping;
//! - [`http`]: the HTTP endpoints beside the WebSocket (one axum stack): [`http::mcp`];
//! - [`config`], [`tokens`]: flags, environment, token files;
//! - [`cli`]: the `car-server` command line.

pub mod app;
mod chat_relay;
pub mod cli;
pub mod config;
mod connection;
pub mod daemon;
mod frames;
mod gate;
mod handlers;
pub mod http;
pub mod lease;
mod live_proposals;
pub mod notify;
mod outbound;
mod protocol;
mod reads;
pub mod rpc;
mod sandbox;
mod session;
pub mod supervisor;
mod tail;
pub mod tokens;
mod tools;

pub use config::{Cli, Config};
pub use daemon::{Daemon, StartError, StartReport, StopReport};
