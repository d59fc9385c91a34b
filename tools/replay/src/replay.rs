//! Folding the log into the daemon's state, for the commands that read runs and state.
//!
//! The fold is [`State::apply`], exactly as the daemon's start-up replay does it, so what
//! `runs`, `trace` and `state` show is what the daemon would rebuild. Beside the state it
//! keeps what an audit wants and the daemon forgets: runs evicted by retention, as they
//! were just before their eviction (their events are still in the log).
//!
//! Damage: a damaged *last* record is what a crash in the middle of a write leaves; the
//! daemon drops it at its next start, so the fold leaves it out too and says so
//! ([`Replayed::torn_tail`]). Anything else that stops the fold (a damaged or missing
//! record before the end, an event that contradicts the state) is [`Error::Corrupt`]
//! naming the seq: the state after it cannot be known.

use std::ops::ControlFlow;

use car_events::event::{Event, EvictionReason};
use car_events::{EventLog, LogError, Seq, SledLog};
use car_projections::{Run, State};
use chrono::{DateTime, Utc};

use crate::exit::Error;
use crate::progress::Progress;
use crate::scan::{self, error_seq};

/// A run that retention evicted, as it was just before.
#[derive(Debug, Clone)]
pub struct EvictedRun {
    /// The run, with its index into the log.
    pub run: Run,
    /// The `run.evicted` event.
    pub seq: Seq,
    /// When it was evicted.
    pub at: DateTime<Utc>,
    /// Which retention rule.
    pub reason: EvictionReason,
}

/// A damaged last record, left out of the fold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Its seq (the log's last).
    pub seq: Seq,
    /// What is wrong with it.
    pub reason: String,
}

/// The state folded from the log.
#[derive(Debug)]
pub struct Replayed {
    /// The daemon's state after the last event folded.
    pub state: State,
    /// Runs evicted before that point (only when asked for), in eviction order.
    pub evicted: Vec<EvictedRun>,
    /// The time of the last event folded.
    pub last_ts: Option<DateTime<Utc>>,
    /// A damaged last record that was left out.
    pub torn_tail: Option<TornTail>,
}

impl Replayed {
    /// The warning about a torn tail, for stderr.
    pub fn torn_tail_warning(&self) -> Option<String> {
        self.torn_tail.as_ref().map(|torn| {
            format!(
                "warning: the last record (seq {}) is damaged, a torn write: {}. It is left \
                 out, as the daemon drops it at its next start; `car-replay verify` reports it.",
                torn.seq, torn.reason
            )
        })
    }

    /// Prints [`Replayed::torn_tail_warning`] to stderr, if there is one.
    pub fn warn_torn_tail(&self) {
        if let Some(warning) = self.torn_tail_warning() {
            eprintln!("car-replay: {warning}");
        }
    }
}

/// What to fold.
#[derive(Debug, Clone, Copy)]
pub struct ReplayOptions<'a> {
    /// Fold events up to this seq (inclusive); `Seq::MAX` for the whole log.
    pub until: Seq,
    /// Keep evicted runs.
    pub keep_evicted: bool,
    /// Decoding threads.
    pub threads: usize,
    /// No progress bar.
    pub quiet: bool,
    /// The progress bar's label.
    pub label: &'a str,
}

/// Folds the log from seq 1 to `options.until`.
pub fn replay(log: &SledLog, options: ReplayOptions<'_>) -> Result<Replayed, Error> {
    let head = log.head();
    let until = options.until.min(head);
    let progress = Progress::new(until, options.label, options.quiet);
    let mut fold = Fold {
        out: Replayed {
            state: State::new(),
            evicted: Vec::new(),
            last_ts: None,
            torn_tail: None,
        },
        keep_evicted: options.keep_evicted,
        head,
        failure: None,
    };
    scan::scan(
        log,
        1..=until,
        options.threads,
        &progress,
        |item| item,
        |item| fold.step(item),
    );
    progress.finish();
    if let Some(err) = fold.failure {
        return Err(err);
    }
    let folded = fold.out.state.head();
    let expected = if fold.out.torn_tail.is_some() {
        until - 1
    } else {
        until
    };
    if folded != expected {
        // The records after `folded` up to `until` were not there.
        return Err(Error::Corrupt {
            seq: folded + 1,
            reason: format!(
                "seq {} is missing (the log's last record is seq {head})",
                folded + 1
            ),
        });
    }
    Ok(fold.out)
}

/// The fold's bookkeeping.
#[derive(Debug)]
struct Fold {
    out: Replayed,
    keep_evicted: bool,
    head: Seq,
    failure: Option<Error>,
}

impl Fold {
    fn step(&mut self, item: scan::Item) -> ControlFlow<()> {
        let expected = self.out.state.head() + 1;
        let env = match item {
            Ok(env) => env,
            Err(err) => {
                let seq = error_seq(&err).unwrap_or(0);
                if seq == self.head && seq == expected {
                    self.out.torn_tail = Some(TornTail {
                        seq,
                        reason: reason_of(&err),
                    });
                    return ControlFlow::Break(());
                }
                self.failure = Some(Error::Corrupt {
                    seq,
                    reason: reason_of(&err),
                });
                return ControlFlow::Break(());
            }
        };
        if env.seq != expected {
            self.failure = Some(Error::Corrupt {
                seq: expected,
                reason: format!(
                    "seq {expected} is missing (the next record is seq {})",
                    env.seq
                ),
            });
            return ControlFlow::Break(());
        }
        let evicted = match (&env.event, self.keep_evicted) {
            (Event::RunEvicted(e), true) => {
                self.out
                    .state
                    .run(&e.run_id)
                    .cloned()
                    .map(|run| EvictedRun {
                        run,
                        seq: env.seq,
                        at: env.ts,
                        reason: e.reason,
                    })
            }
            _ => None,
        };
        if let Err(err) = self.out.state.apply(&env) {
            self.failure = Some(Error::Corrupt {
                seq: env.seq,
                reason: format!("the event cannot be folded into the state: {err}"),
            });
            return ControlFlow::Break(());
        }
        self.out.evicted.extend(evicted);
        self.out.last_ts = Some(env.ts);
        ControlFlow::Continue(())
    }
}

/// Why a record could not be read, without the "corrupt event log:" prefix.
pub fn reason_of(err: &LogError) -> String {
    match err {
        LogError::Corrupt(codec) => codec.to_string(),
        other => other.to_string(),
    }
}
