//! car-gateway: `car-server`, the WebSocket JSON-RPC gateway over car's event log.
//!
//! - [`daemon`]: start-up (replay, recovery), serving, graceful stop;
//! - `connection`: one WebSocket = one session; frames, batches, responders, keep-alive;
//! - `handlers`: the method table and one module per area of the protocol;
//! - `tail`: live subscriptions as cursors over the log;
//! - [`app`]: what connections share: the single writer, the notifier, the tokens;
//! - [`rpc`]: JSON-RPC framing and the one error mapping;
//! - [`config`], [`tokens`]: flags, environment, token files;
//! - [`cli`]: the `car-server` command line.

pub mod app;
pub mod cli;
pub mod config;
mod connection;
pub mod daemon;
mod gate;
mod handlers;
pub mod notify;
pub mod rpc;
mod tail;
pub mod tokens;
mod tools;

pub use config::{Cli, Config};
pub use daemon::{Daemon, StartError, StartReport, StopReport};
