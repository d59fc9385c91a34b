//! Effects that follow from the state: start-up recovery, retention, shutdown.
//!
//! Each is a pure function of the state (and, for retention, of "now") that returns the
//! events to append, like openraft's engine returning commands for the runtime to run.
//! Applying the events and calling the function again returns nothing, so a recovery that
//! a crash interrupted simply completes at the next start, without duplicates.

use std::collections::HashSet;

use car_events::event::{
    ApprovalExpired, DaemonRecovered, DaemonStopped, Event, EvictionReason, IncompleteReason,
    ProposalFinished, RunEnded, RunEvicted, SessionClosed, SubscriptionClosed, Termination,
    ToolCallCancelled,
};
use chrono::{DateTime, TimeDelta, Utc};

use crate::state::{ApprovalStatus, State};

/// Default `--run-retention`: 30 days.
pub const DEFAULT_RETENTION_DAYS: i64 = 30;
/// Default `--max-runs`.
pub const DEFAULT_MAX_RUNS: usize = 10_000;

/// The retention rules (PROTOCOL.md §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Ended runs that ended longer ago than this are evicted.
    pub max_age: TimeDelta,
    /// Beyond this many retained runs, the oldest ended runs are evicted.
    pub max_runs: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: TimeDelta::days(DEFAULT_RETENTION_DAYS),
            max_runs: DEFAULT_MAX_RUNS,
        }
    }
}

/// What start-up must append after a crash or a stop: runs in progress end
/// `incomplete`/`daemon_restart`, sessions close, pending approvals expire, subscriptions
/// close, tool calls and proposals in flight are abandoned; then retention applies.
pub fn recover(state: &State, now: DateTime<Utc>, retention: &Retention) -> Vec<Event> {
    let mut events = abandon_everything_live(state, IncompleteReason::DaemonRestart);
    let ended_now: HashSet<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::RunEnded(e) => Some(e.run_id.as_str()),
            _ => None,
        })
        .collect();
    events.extend(evict(state, now, retention, &ended_now));
    events
}

/// What a clean stop appends: as [`recover`] with reason `daemon_shutdown`, then
/// `daemon.stopped`. (Retention is left to the next start.)
pub fn shutdown(state: &State, reason: &str) -> Vec<Event> {
    let mut events = abandon_everything_live(state, IncompleteReason::DaemonShutdown);
    events.push(Event::DaemonStopped(DaemonStopped {
        reason: reason.to_owned(),
    }));
    events
}

/// Retention: evictions due now.
pub fn gc(state: &State, now: DateTime<Utc>, retention: &Retention) -> Vec<Event> {
    evict(state, now, retention, &HashSet::new())
}

/// The `daemon.recovered` summary of a recovery's events.
pub fn summarize(events: &[Event], events_replayed: u64) -> DaemonRecovered {
    let count = |pred: &dyn Fn(&Event) -> bool| events.iter().filter(|e| pred(e)).count() as u32;
    DaemonRecovered {
        events_replayed,
        runs_adopted: count(&|e| matches!(e, Event::RunEnded(_))),
        sessions_closed: count(&|e| matches!(e, Event::SessionClosed(_))),
        approvals_expired: count(&|e| matches!(e, Event::ApprovalExpired(_))),
        subscriptions_closed: count(&|e| matches!(e, Event::SubscriptionClosed(_))),
        tool_calls_cancelled: count(&|e| matches!(e, Event::ToolCallCancelled(_))),
        runs_evicted: count(&|e| matches!(e, Event::RunEvicted(_))),
    }
}

fn abandon_everything_live(state: &State, reason: IncompleteReason) -> Vec<Event> {
    let why = reason.as_str();
    let mut events = Vec::new();
    for call in state.tool_calls() {
        events.push(Event::ToolCallCancelled(ToolCallCancelled {
            request_id: call.dispatch.request_id.clone(),
            reason: why.into(),
        }));
    }
    for proposal in state.proposals() {
        events.push(Event::ProposalFinished(ProposalFinished {
            proposal_id: proposal.proposal_id.clone(),
            final_state: "failed".into(),
        }));
    }
    for sub in state.subscriptions() {
        events.push(Event::SubscriptionClosed(SubscriptionClosed {
            subscription_id: sub.subscription_id.clone(),
            reason: why.into(),
        }));
    }
    for run in state.runs().filter(|run| !run.is_ended()) {
        events.push(Event::RunEnded(RunEnded {
            run_id: run.run_id.clone(),
            agent_id: run.agent_id.clone(),
            termination: Termination::Incomplete { reason },
        }));
    }
    for session in state.sessions() {
        events.push(Event::SessionClosed(SessionClosed {
            client_id: session.client_id.clone(),
            role: session.role,
            agent_id: session.agent_id.clone(),
            reason: why.into(),
        }));
    }
    for approval in state.approvals() {
        if approval.status == ApprovalStatus::Pending {
            events.push(Event::ApprovalExpired(ApprovalExpired {
                approval_id: approval.id.clone(),
                reason: why.into(),
            }));
        }
    }
    events
}

/// Evictions due at `now`; runs in `ended_now` are about to end at `now`.
fn evict(
    state: &State,
    now: DateTime<Utc>,
    retention: &Retention,
    ended_now: &HashSet<&str>,
) -> Vec<Event> {
    let cutoff = now - retention.max_age;
    let mut events = Vec::new();
    let mut evicted: HashSet<&str> = HashSet::new();
    for run in state.runs() {
        if let Some(end) = &run.end {
            if end.ended_at < cutoff {
                evicted.insert(&run.run_id);
                events.push(Event::RunEvicted(RunEvicted {
                    run_id: run.run_id.clone(),
                    agent_id: run.agent_id.clone(),
                    reason: EvictionReason::Age,
                }));
            }
        }
    }
    let mut retained = state.run_count() - evicted.len();
    for run in state.runs() {
        if retained <= retention.max_runs {
            break;
        }
        let ended = run.is_ended() || ended_now.contains(run.run_id.as_str());
        if ended && !evicted.contains(run.run_id.as_str()) {
            retained -= 1;
            events.push(Event::RunEvicted(RunEvicted {
                run_id: run.run_id.clone(),
                agent_id: run.agent_id.clone(),
                reason: EvictionReason::Count,
            }));
        }
    }
    events
}
