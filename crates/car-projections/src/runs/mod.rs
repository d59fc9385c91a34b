//! Runs (PROTOCOL.md §3): what an agent is doing, from `runs.start` through its turns to
//! its outcome (`runs.complete`) or its abandonment, until retention evicts it.
//!
//! The whole aggregate in one place: the run types ([`Run`], [`RunStatus`], [`RunEnd`],
//! [`TurnBatch`]), its slice of the state (`Runs`: the retained runs in start order, and
//! the idempotency keys of evicted runs, which stay taken), its fold (`run.started`,
//! `run.turns_recorded`, `run.ended`, `run.evicted`, and protocol 3's
//! `run.cancellation_*` and `run.resumed`) and its decisions: [`decide`](mod@decide) for
//! §3, [`cancel`] for `runs.cancel` and [`resume`] for `runs.resume` (§14). A run keeps its turn *count* and the seqs of its events, not their contents:
//! a trace reads them back from the log ([`crate::trace`]). Events of other aggregates
//! that belong to a run (tool calls, proposals) are indexed under it by `Runs::relate`.
//! The fold runs from inside [`State::apply`](crate::State::apply), the decisions from
//! inside [`crate::decide()`].

pub mod cancel;
pub mod decide;
pub mod resume;

use std::collections::{BTreeMap, HashMap};

use car_events::event::{Event, RunStarted, Termination};
use car_events::{Envelope, Seq};
use chrono::{DateTime, Utc};

use crate::state::Contradiction;

pub use decide::{AdmittedTurns, CompleteRun, EndAbandonedRuns, RecordTurns, StartRun, agent_slug};

/// The most turns a run may hold (PROTOCOL.md §3.3).
pub const MAX_TURNS_PER_RUN: u32 = 2000;

/// A run's live status (PROTOCOL.md §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RunStatus {
    /// Started, not ended.
    InProgress,
    /// Ended with an outcome.
    Completed,
    /// Ended without one.
    Incomplete,
}

impl RunStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::InProgress => "in_progress",
            RunStatus::Completed => "completed",
            RunStatus::Incomplete => "incomplete",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "in_progress" => Some(RunStatus::InProgress),
            "completed" => Some(RunStatus::Completed),
            "incomplete" => Some(RunStatus::Incomplete),
            _ => None,
        }
    }
}

/// One `run.turns_recorded` event of a run: turns `base_index ..` are stored at `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnBatch {
    /// The index of its first turn.
    pub base_index: u32,
    /// The event holding the turns.
    pub seq: Seq,
}

/// How and when a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEnd {
    /// How.
    pub termination: Termination,
    /// When.
    pub ended_at: DateTime<Utc>,
    /// Its `run.ended` event.
    pub seq: Seq,
}

/// A retained run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Its id.
    pub run_id: String,
    /// Its agent.
    pub agent_id: String,
    /// The session that started it.
    pub owner: Option<String>,
    /// What it is for.
    pub intent: String,
    /// The client's description of a good outcome.
    pub outcome_description: Option<String>,
    /// Its idempotency key.
    pub idempotency_key: Option<String>,
    /// Its `run.started` event.
    pub started_seq: Seq,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// How many turns it holds.
    pub turn_count: u32,
    /// Where its turns are in the log, in order.
    pub turn_batches: Vec<TurnBatch>,
    /// Its end, once ended.
    pub end: Option<RunEnd>,
    /// Other events that belong to it (tool calls, proposals), in order.
    pub related: Vec<Seq>,
    /// Its `runs.cancel` calls, in order (§14.1).
    pub cancellations: Vec<cancel::Cancellation>,
    /// A cancellation could not be confirmed (§14.1): no turns, proposals or outcome, and
    /// no ending by disconnect, restart or retention, until a host cancels it as an orphan.
    pub quarantined: bool,
    /// The session that took it over with `runs.resume` (§14.2), last.
    pub resumed_by: Option<String>,
}

impl Run {
    /// Its live status.
    pub fn status(&self) -> RunStatus {
        match &self.end {
            None => RunStatus::InProgress,
            Some(RunEnd {
                termination: Termination::Outcome { .. },
                ..
            }) => RunStatus::Completed,
            Some(_) => RunStatus::Incomplete,
        }
    }

    /// Whether it has ended.
    pub fn is_ended(&self) -> bool {
        self.end.is_some()
    }

    /// The seq of its last event (start, turn batch or end).
    pub fn last_seq(&self) -> Seq {
        match (&self.end, self.turn_batches.last()) {
            (Some(end), _) => end.seq,
            (None, Some(batch)) => batch.seq,
            (None, None) => self.started_seq,
        }
    }

    /// The turn batches stored at or before `seq`: the run as it was at that position.
    pub fn batches_until(&self, seq: Seq) -> &[TurnBatch] {
        let n = self.turn_batches.partition_point(|b| b.seq <= seq);
        &self.turn_batches[..n]
    }
}

fn check_agent(run: &Run, agent_id: &str) -> Result<(), Contradiction> {
    if run.agent_id == agent_id {
        Ok(())
    } else {
        Err(Contradiction::AgentMismatch {
            run_id: run.run_id.clone(),
            expected: run.agent_id.clone(),
            got: agent_id.to_owned(),
        })
    }
}

/// The runs slice of the state.
#[derive(Debug, Clone, Default)]
pub(crate) struct Runs {
    /// Retained runs, by id.
    runs: HashMap<String, Run>,
    /// Retained runs in start order (seq order is start-time order: times never go back).
    runs_by_start: BTreeMap<Seq, String>,
    /// Evicted runs that had an idempotency key (`run_id` → `agent_id`): the key stays
    /// taken, so a retried `runs.start` never creates a second run under an old id.
    retired_keys: HashMap<String, String>,
}

impl Runs {
    /// Folds a `run.*` event (other events are not this slice's). On error the slice is
    /// unchanged.
    pub(crate) fn apply(&mut self, env: &Envelope) -> Result<(), Contradiction> {
        let (seq, ts) = (env.seq, env.ts);
        match &env.event {
            Event::RunStarted(e) => self.start(e, seq, ts)?,
            Event::TurnsRecorded(e) => {
                let run = self.get_mut(&e.run_id)?;
                if run.is_ended() {
                    return Err(Contradiction::RunEnded(e.run_id.clone()));
                }
                if e.base_index != run.turn_count {
                    return Err(Contradiction::TurnIndex {
                        run_id: e.run_id.clone(),
                        expected: run.turn_count,
                        got: e.base_index,
                    });
                }
                let count = u64::from(run.turn_count) + e.turns.len() as u64;
                if count > u64::from(MAX_TURNS_PER_RUN) {
                    return Err(Contradiction::TurnCeiling {
                        run_id: e.run_id.clone(),
                        count,
                    });
                }
                if !e.turns.is_empty() {
                    run.turn_batches.push(TurnBatch {
                        base_index: e.base_index,
                        seq,
                    });
                    run.turn_count = count as u32;
                }
            }
            Event::RunEnded(e) => {
                let run = self.get_mut(&e.run_id)?;
                check_agent(run, &e.agent_id)?;
                if run.is_ended() {
                    return Err(Contradiction::RunEnded(e.run_id.clone()));
                }
                cancel::apply(run, env)?;
                run.end = Some(RunEnd {
                    termination: e.termination.clone(),
                    ended_at: ts,
                    seq,
                });
                run.quarantined = false;
            }
            Event::RunCancellationRequested(e) => {
                let run = self.get_mut(&e.run_id)?;
                cancel::apply(run, env)?;
                run.related.push(seq);
            }
            Event::RunCancellationResult(e) => {
                let run = self.get_mut(&e.run_id)?;
                cancel::apply(run, env)?;
                run.related.push(seq);
            }
            Event::RunResumed(e) => {
                let run = self.get_mut(&e.run_id)?;
                resume::apply(run, e)?;
                run.related.push(seq);
            }
            Event::RunEvicted(e) => {
                let run = self.get_mut(&e.run_id)?;
                check_agent(run, &e.agent_id)?;
                if !run.is_ended() {
                    return Err(Contradiction::RunInProgress(e.run_id.clone()));
                }
                if let Some(run) = self.runs.remove(&e.run_id) {
                    self.runs_by_start.remove(&run.started_seq);
                    if run.idempotency_key.is_some() {
                        self.retired_keys.insert(run.run_id, run.agent_id);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn start(&mut self, e: &RunStarted, seq: Seq, ts: DateTime<Utc>) -> Result<(), Contradiction> {
        if self.runs.contains_key(&e.run_id) || self.retired_keys.contains_key(&e.run_id) {
            return Err(Contradiction::DuplicateRun(e.run_id.clone()));
        }
        self.runs_by_start.insert(seq, e.run_id.clone());
        self.runs.insert(
            e.run_id.clone(),
            Run {
                run_id: e.run_id.clone(),
                agent_id: e.agent_id.clone(),
                owner: e.client_id.clone(),
                intent: e.intent.clone(),
                outcome_description: e.outcome_description.clone(),
                idempotency_key: e.idempotency_key.clone(),
                started_seq: seq,
                started_at: ts,
                turn_count: 0,
                turn_batches: Vec::new(),
                end: None,
                related: Vec::new(),
                cancellations: Vec::new(),
                quarantined: false,
                resumed_by: None,
            },
        );
        Ok(())
    }

    fn get_mut(&mut self, run_id: &str) -> Result<&mut Run, Contradiction> {
        self.runs
            .get_mut(run_id)
            .ok_or_else(|| Contradiction::UnknownRun(run_id.to_owned()))
    }

    /// Indexes an event under a run it belongs to, when that run is retained.
    pub(crate) fn relate(&mut self, run_id: Option<&str>, seq: Seq) {
        if let Some(run) = run_id.and_then(|id| self.runs.get_mut(id)) {
            run.related.push(seq);
        }
    }

    /// A retained run.
    pub(crate) fn get(&self, run_id: &str) -> Option<&Run> {
        self.runs.get(run_id)
    }

    /// Retained runs, oldest start first.
    pub(crate) fn by_start(&self) -> impl DoubleEndedIterator<Item = &Run> {
        self.runs_by_start
            .values()
            .filter_map(|id| self.runs.get(id))
    }

    /// How many runs are retained.
    pub(crate) fn len(&self) -> usize {
        self.runs.len()
    }

    /// The agent of an evicted run whose idempotency key stays taken.
    pub(crate) fn retired_key(&self, run_id: &str) -> Option<&str> {
        self.retired_keys.get(run_id).map(String::as_str)
    }

    /// Evicted runs whose idempotency keys stay taken.
    pub(crate) fn retired_keys(&self) -> impl Iterator<Item = (&str, &str)> {
        self.retired_keys
            .iter()
            .map(|(r, a)| (r.as_str(), a.as_str()))
    }
}
