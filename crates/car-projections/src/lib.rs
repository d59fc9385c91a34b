//! car-projections: the daemon's state as a pure function of its event log.
//!
//! The one piece of code the daemon, `car-replay` and the tests share:
//! - [`state`]: the [`State`] projection and its pure fold [`State::apply`];
//! - [`decide`](mod@decide): every protocol write as a [`Command`] decided against the state into
//!   events, or a typed [`Refusal`];
//! - one module per aggregate, each with its slice of the state, its fold and its
//!   decisions: [`sessions`], [`runs`], [`approvals`], [`subscriptions`], [`proposals`],
//!   [`tool_calls`];
//! - [`halts`]: sessions halted by a terminal tool failure, and `session.clear_halt`;
//! - [`proposal_result`]: the `proposal.submit` result from its actions' outcomes;
//! - [`recovery`]: start-up recovery, retention (GC) and shutdown as events;
//! - [`trace`]: runs read back in the wire shapes, through the per-run index;
//! - [`canonical`]: the canonical rendering and digest of a state;
//! - [`host_feed`]: the host feed's events, their wire shape and who may see them;
//! - [`memory`]: memory (PROTOCOL.md §11) as its own slice of the state: scopes of facts,
//!   their BM25 index, their decisions, `query` and `build_context`;
//! - [`agents`]: registered agents (PROTOCOL.md §12) as their own slice: specs, tokens'
//!   hashes, supervision status, their decisions and the supervisor's pure restart rule;
//! - [`chats`]: chats relayed to attached agents (PROTOCOL.md §13): the live routes, the
//!   approvals mirrored from them, `agents.chat`'s checks and every way a chat ends;
//! - [`access`]: who is asking ([`Actor`]);
//! - [`timeline`]: a run's timeline for the dashboard (turns, tool calls, approvals);
//! - [`synth`]: realistic synthetic histories for benchmarks and soak tests.

pub mod access;
pub mod agents;
pub mod approvals;
pub mod canonical;
pub mod chats;
pub mod decide;
pub mod gateways;
pub mod halts;
pub mod host_feed;
pub mod memory;
pub mod proposal_result;
pub mod proposals;
pub mod recovery;
pub mod runs;
pub mod sessions;
pub mod state;
pub mod subscriptions;
pub mod synth;
pub mod timeline;
pub mod tool_calls;
pub mod trace;
pub mod turns;

pub use access::Actor;
pub use decide::{Command, Dropped, Refusal, decide};
pub use recovery::{Retention, gc, recover, shutdown};
pub use state::{ApplyError, Run, RunStatus, State};
