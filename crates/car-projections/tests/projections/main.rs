//! car-projections integration tests: one binary, one module per concern.
//!
//! - [`support`], [`gwt`], [`scenario`]: the shared vocabulary (fixed times, event and
//!   command constructors), the given/when/then harness of the decision tables, and a
//!   deterministic little daemon that writes whole logs;
//! - [`sessions`], [`runs`], [`approvals`], [`subscriptions`], [`chats`]: every decision
//!   and refusal of the contract as given/when/then tables;
//! - [`apply`]: the fold refuses contradictions (naming the seq) and is unchanged by them;
//!   the refusal messages are the contract's;
//! - [`recovery`]: start-up recovery, retention and shutdown, event by event;
//! - [`gateways`]: cluster mode: a gateway declared lost, or stopping, ends only its own;
//! - [`golden`]: committed JSONL logs replayed against reviewed expected states and
//!   recoveries (`CAR_REWRITE_FIXTURES=1` rewrites them);
//! - [`determinism`]: properties — replay is deterministic, the writer's live state is the
//!   replay of its log, recovery is idempotent even when interrupted;
//! - [`trace`]: runs read back from the log, paged, before and after eviction;
//! - [`memory`]: memory's decisions, refusals, fold, ranking and contexts, and by property
//!   the incremental index against a rebuild and the reference scan;
//! - [`ranking`]: MRR and recall@3 on the committed labelled set.

mod agents;
mod apply;
mod approvals;
mod chats;
mod determinism;
mod gateways;
mod golden;
mod gwt;
mod memory;
mod ranking;
mod recovery;
mod run_control;
mod runs;
mod scenario;
mod sessions;
mod subscriptions;
mod support;
mod trace;
