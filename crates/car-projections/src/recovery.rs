//! Effects that follow from the state: start-up recovery, retention, shutdown.
//!
//! Each is a pure function of the state (and, for retention, of "now") that returns the
//! events to append, like openraft's engine returning commands for the runtime to run.
//! Applying the events and calling the function again returns nothing, so a recovery that
//! a crash interrupted simply completes at the next start, without duplicates.

use std::collections::{BTreeSet, HashMap, HashSet};

use car_events::JsonText;
use car_events::event::{
    ApprovalExpired, DaemonRecovered, DaemonStopped, Event, EvictionReason, IncompleteReason,
    ProposalActionFinished, ProposalFinished, ProposalResultRecorded, RunEnded, RunEvicted,
    SessionClosed, SubscriptionClosed, Termination, ToolCallCancelled, ToolCallDispatched,
    ToolCallIndeterminate, TurnsRecorded,
};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

use crate::chats::Ending;
use crate::chats::decide::ending_events;
use crate::proposal_result::ResultBuilder;
use crate::state::{ApprovalStatus, MAX_TURNS_PER_RUN, Proposal, Run, State, ToolCall};
use crate::turns;

/// The error of an action whose tool call was in flight when the daemon stopped
/// (PROTOCOL.md §14.5).
pub const INDETERMINATE: &str = "outcome unknown: the daemon stopped during dispatch";
/// The error of an earlier action whose outcome the log does not hold (written before
/// outcomes were recorded).
const UNRECORDED: &str = "outcome unknown: not recorded in the log";

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
    events.extend(crate::agents::decide::adopt_at_startup(
        state.registered_agents(),
    ));
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
        tool_calls_cancelled: count(&|e| {
            matches!(
                e,
                Event::ToolCallCancelled(_) | Event::ToolCallIndeterminate(_)
            )
        }),
        runs_evicted: count(&|e| matches!(e, Event::RunEvicted(_))),
    }
}

fn abandon_everything_live(state: &State, reason: IncompleteReason) -> Vec<Event> {
    abandon_live(state, reason, &|_| true, &|_| true, true)
}

/// Ends what is live as `reason` says: the tool calls, proposals, subscriptions and
/// sessions of the sessions `mine` names, the approvals they asked for (and, when
/// `unattributed`, those no session is named for), and the runs in progress `ends` picks.
/// At a clean stop calls in flight are cancelled; otherwise (a crash, a lost gateway) their
/// outcomes are unknown and their proposals are completed as §14.5 says. A quarantined run
/// is never ended here: it waits for a host's orphan cancellation (§14.1), across restarts
/// too. Shared by start-up and shutdown (everything) and by cluster mode (one gateway's).
pub(crate) fn abandon_live(
    state: &State,
    reason: IncompleteReason,
    mine: &dyn Fn(&str) -> bool,
    ends: &dyn Fn(&Run) -> bool,
    unattributed: bool,
) -> Vec<Event> {
    let why = reason.as_str();
    let mut events = if reason == IncompleteReason::DaemonShutdown {
        let mut events = Vec::new();
        for call in state.tool_calls() {
            if mine(&call.dispatch.client_id) {
                events.push(Event::ToolCallCancelled(ToolCallCancelled {
                    request_id: call.dispatch.request_id.clone(),
                    reason: why.into(),
                }));
            }
        }
        for proposal in state.proposals() {
            if mine(&proposal.client_id) {
                events.push(Event::ProposalFinished(ProposalFinished {
                    proposal_id: proposal.proposal_id.clone(),
                    final_state: "failed".into(),
                }));
            }
        }
        events
    } else {
        complete_cut_off_proposals(state, mine)
    };
    for sub in state.subscriptions() {
        if mine(&sub.client_id) {
            events.push(Event::SubscriptionClosed(SubscriptionClosed {
                subscription_id: sub.subscription_id.clone(),
                reason: why.into(),
            }));
        }
    }
    for run in state.runs() {
        if run.is_ended() || run.quarantined || !ends(run) {
            continue;
        }
        events.push(Event::RunEnded(RunEnded {
            run_id: run.run_id.clone(),
            agent_id: run.agent_id.clone(),
            termination: Termination::Incomplete { reason },
        }));
    }
    for session in state.sessions() {
        if mine(&session.client_id) {
            events.push(Event::SessionClosed(SessionClosed {
                client_id: session.client_id.clone(),
                role: session.role,
                agent_id: session.agent_id.clone(),
                reason: why.into(),
            }));
        }
    }
    let mut expired = BTreeSet::new();
    for approval in state.approvals() {
        let asked_by_mine = approval.requester.as_deref().map_or(unattributed, mine);
        if approval.status == ApprovalStatus::Pending && asked_by_mine {
            expired.insert(approval.id.clone());
            events.push(Event::ApprovalExpired(ApprovalExpired {
                approval_id: approval.id.clone(),
                reason: why.into(),
            }));
        }
    }
    // Chats whose agent or caller was one of these sessions lose their route (§13.3).
    let ending = if reason == IncompleteReason::DaemonShutdown {
        Ending::DaemonShutdown
    } else {
        Ending::DaemonRestart
    };
    for chat in state.chats().iter() {
        if mine(&chat.agent_client_id) || chat.caller_client_id.as_deref().is_some_and(mine) {
            events.extend(ending_events(state, &chat.session_id, &ending, &expired));
        }
    }
    events
}

/// After a crash (PROTOCOL.md §14.5): every tool call found without an outcome gets the
/// outcome `indeterminate` (it is never dispatched again), and every proposal cut off is
/// completed: `final_state: "failed"`, the action whose call was in flight
/// `indeterminate`, the actions after it `skipped`, its result stored for
/// `proposal.result`, and the indeterminate action added to its run as a turn (before the
/// run ends `incomplete`).
///
/// Only the proposals and calls of sessions `of` selects: every one at start-up, a lost or
/// restarted gateway's in cluster mode ([`crate::gateways`]).
pub(crate) fn complete_cut_off_proposals(state: &State, of: &dyn Fn(&str) -> bool) -> Vec<Event> {
    let mut calls: Vec<&ToolCall> = state
        .tool_calls()
        .filter(|call| of(&call.dispatch.client_id))
        .collect();
    calls.sort_by_key(|call| call.dispatched_seq);
    let indeterminate = |call: &ToolCall| {
        Event::ToolCallIndeterminate(ToolCallIndeterminate {
            request_id: call.dispatch.request_id.clone(),
            error: INDETERMINATE.into(),
        })
    };
    // Each step below is decided from what the steps before it left in the state, so a
    // recovery cut short anywhere completes, at the next start, with exactly the rest.
    let mut events = Vec::new();
    let mut turns_added: HashMap<&str, u32> = HashMap::new();
    for proposal in state.proposals().filter(|p| of(&p.client_id)) {
        let mine: Vec<&ToolCall> = calls
            .iter()
            .copied()
            .filter(|call| call.dispatch.proposal_id == proposal.proposal_id)
            .collect();
        let mut finished: Vec<ProposalActionFinished> =
            proposal.finished.iter().map(|(f, _)| f.clone()).collect();
        if let Some(call) = mine.last() {
            let recorded = proposal
                .finished
                .iter()
                .find(|(f, _)| f.action_id == call.dispatch.action_id);
            // The turn goes in after the outcome and before the call is closed; it is
            // there already when the run has a batch after the outcome's event.
            let needs_turn = match recorded {
                None => {
                    let outcome = ProposalActionFinished {
                        proposal_id: proposal.proposal_id.clone(),
                        action_id: call.dispatch.action_id.clone(),
                        status: "indeterminate".into(),
                        output: None,
                        error: Some(INDETERMINATE.into()),
                        attempts: call.dispatch.attempt,
                    };
                    events.push(Event::ProposalActionFinished(outcome.clone()));
                    finished.push(outcome);
                    true
                }
                Some((f, seq)) => f.status == "indeterminate" && !turn_after(state, proposal, *seq),
            };
            if needs_turn {
                let output = json!(INDETERMINATE);
                if let Some(turn) =
                    action_turn(state, proposal, &call.dispatch, output, &mut turns_added)
                {
                    events.push(turn);
                }
            }
        } else if let Some((dispatch, _)) = &proposal.last_call {
            // Cut off after its last call ended and before that action's outcome was
            // recorded (or before the next attempt's marker): the call's outcome says what
            // the action did. Regression: these were reported `skipped`, as if never run.
            // As above, the turn follows the outcome unless the run has one after it.
            let recorded = proposal
                .finished
                .iter()
                .find(|(f, _)| f.action_id == dispatch.action_id);
            let (outcome, needs_turn) = match recorded {
                Some((f, seq)) => (f.clone(), !turn_after(state, proposal, *seq)),
                None => {
                    let outcome = call_outcome(dispatch, proposal);
                    events.push(Event::ProposalActionFinished(outcome.clone()));
                    finished.push(outcome.clone());
                    (outcome, true)
                }
            };
            if needs_turn {
                let output = match (&outcome.output, &outcome.error) {
                    (Some(output), _) => output.to_value(),
                    (None, error) => json!(error),
                };
                if let Some(turn) = action_turn(state, proposal, dispatch, output, &mut turns_added)
                {
                    events.push(turn);
                }
            }
        }
        events.extend(mine.iter().map(|call| indeterminate(call)));
        let principal = state.principal_of(&proposal.client_id);
        let stored = state
            .proposal_result(Some(&principal), &proposal.proposal_id)
            .is_some_and(|seq| seq > proposal.submitted_seq);
        if !stored {
            events.push(Event::ProposalResultRecorded(ProposalResultRecorded {
                proposal_id: proposal.proposal_id.clone(),
                principal,
                result: JsonText::from_value(&failed_result(proposal, &finished)),
            }));
        }
        events.push(Event::ProposalFinished(ProposalFinished {
            proposal_id: proposal.proposal_id.clone(),
            final_state: "failed".into(),
        }));
    }
    // Calls of no proposal in progress (none are made so; kept for any log that has one).
    events.extend(
        calls
            .iter()
            .filter(|call| state.proposal(&call.dispatch.proposal_id).is_none())
            .map(|call| indeterminate(call)),
    );
    events
}

/// Whether the proposal's run got a turn batch after `seq`.
fn turn_after(state: &State, proposal: &Proposal, seq: car_events::Seq) -> bool {
    proposal
        .run_id
        .as_deref()
        .and_then(|run_id| state.run(run_id))
        .and_then(|run| run.turn_batches.last())
        .is_some_and(|batch| batch.seq > seq)
}

/// The action outcome that the proposal's last ended call (`dispatch`) implies.
fn call_outcome(dispatch: &ToolCallDispatched, proposal: &Proposal) -> ProposalActionFinished {
    let ended = proposal.last_call.as_ref().map(|(_, ended)| ended);
    let (status, output, error) = match ended {
        Some(Event::ToolCallCompleted(e)) => ("succeeded", Some(e.output.clone()), None),
        Some(Event::ToolCallFailed(e)) => ("failed", None, Some(e.error.clone())),
        Some(Event::ToolCallTimedOut(_)) => (
            "failed",
            None,
            Some(crate::tool_calls::timeout_message(
                &dispatch.tool,
                dispatch.timeout_ms,
            )),
        ),
        Some(Event::ToolCallCancelled(e)) => (
            "failed",
            None,
            Some(crate::tool_calls::cancel_message(&e.reason)),
        ),
        _ => ("indeterminate", None, Some(INDETERMINATE.to_owned())),
    };
    ProposalActionFinished {
        proposal_id: proposal.proposal_id.clone(),
        action_id: dispatch.action_id.clone(),
        status: status.into(),
        output,
        error,
        attempts: dispatch.attempt,
    }
}

/// A cut-off action as a turn of the proposal's run (as the daemon records a finished
/// action), if the run is live and has room.
fn action_turn<'a>(
    state: &'a State,
    proposal: &'a Proposal,
    dispatch: &ToolCallDispatched,
    output: Value,
    turns_added: &mut HashMap<&'a str, u32>,
) -> Option<Event> {
    let run = state.run(proposal.run_id.as_deref()?)?;
    if run.is_ended() || run.quarantined {
        return None;
    }
    let added = turns_added.entry(run.run_id.as_str()).or_insert(0);
    let base_index = run.turn_count + *added;
    if base_index >= MAX_TURNS_PER_RUN {
        return None;
    }
    let turn = json!({
        "tool": dispatch.tool,
        "parameters": dispatch.parameters.to_value(),
        "output": output,
        "policy_rejected": false,
    });
    let turn = turns::admit(0, &turn).ok()?;
    *added += 1;
    Some(Event::TurnsRecorded(TurnsRecorded {
        run_id: run.run_id.clone(),
        base_index,
        turns: vec![turn],
    }))
}

/// The `proposal.submit` result of a proposal cut off by a crash: each action as its
/// outcome says; after the last one with an outcome, `skipped`; before it, one without an
/// outcome (a log written before outcomes were recorded) is `indeterminate` too.
fn failed_result(proposal: &Proposal, finished: &[ProposalActionFinished]) -> Value {
    let outcome = |id: &str| finished.iter().find(|f| f.action_id == id);
    let last_known = proposal
        .action_ids
        .iter()
        .rposition(|id| outcome(id).is_some());
    let mut result = ResultBuilder::default();
    for (position, action_id) in proposal.action_ids.iter().enumerate() {
        match outcome(action_id) {
            Some(f) => result.outcome(f),
            None if last_known.is_some_and(|last| position < last) => {
                result.outcome(&ProposalActionFinished {
                    proposal_id: proposal.proposal_id.clone(),
                    action_id: action_id.clone(),
                    status: "indeterminate".into(),
                    output: None,
                    error: Some(UNRECORDED.into()),
                    attempts: 0,
                });
            }
            None => result.skipped(action_id),
        }
    }
    result.finish(&proposal.proposal_id, "failed")
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
