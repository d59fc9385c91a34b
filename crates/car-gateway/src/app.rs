//! What every connection shares: the configuration, the single writer over the log and
//! the state, injected time and ids, and the per-run notifier that wakes subscribers.
//!
//! All writes go through [`App::submit`] or [`App::append`], which decide or append
//! through the writer and, once the events are durable, wake the subscribers of every run
//! or approval the events touched. No other code path appends, so nobody misses a wake-up.

use std::collections::BTreeSet;
use std::sync::Arc;

use car_events::event::Event;
use car_events::{Pending, SeqRange, Stamper, Writer};
use car_projections::{Command, Refusal, State, decide};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::frames::TurnFrames;
use crate::live_proposals::LiveProposals;
use crate::notify::{Notifier, approval_key, run_key};
use crate::rpc::RpcError;
use crate::tokens::Tokens;

/// The daemon's shared runtime.
#[derive(Debug)]
pub struct App {
    /// The configuration.
    pub config: Config,
    /// The single writer (and through it the state and the log).
    pub writer: Writer<State>,
    /// Time and ids.
    pub stamper: Stamper,
    /// The tokens sessions authenticate with.
    pub tokens: Tokens,
    /// Wakes whoever follows a run or waits on an approval when it changes.
    pub notifier: Notifier,
    /// Cancelled when the daemon begins to stop.
    pub stopping: CancellationToken,
    /// Recent `runs.trace.event` frames, rendered once for all of a run's subscribers.
    pub turn_frames: Arc<TurnFrames>,
    /// The proposals running under each run, for `runs.cancel`.
    pub(crate) live_proposals: Arc<LiveProposals>,
    /// Cluster mode: this gateway's heartbeat and maintenance lease (§19).
    pub(crate) leases: Option<Arc<crate::lease::Leases>>,
    /// The registered agents' live processes (PROTOCOL.md §12.3).
    pub supervisor: crate::supervisor::Supervisor,
    /// The agents attached here and the chats relayed to them (PROTOCOL.md §13).
    pub(crate) chats: crate::chat_relay::ChatRelay,
}

/// A write whose events are durable.
#[derive(Debug)]
pub struct Committed<R> {
    /// What the decision computed beside its events.
    pub out: R,
    /// The seqs its events got (empty when it decided to no events).
    pub range: SeqRange,
}

type Decision<R> = Result<(R, BTreeSet<String>), Refusal>;

/// A queued command: [`Submitted::wait`] resolves once it is durable.
#[derive(Debug)]
pub struct Submitted<R> {
    pending: Pending<Decision<R>>,
    app: Arc<App>,
}

impl<R> Submitted<R> {
    /// Waits until the command's events are durable, then wakes the runs they touched.
    pub async fn wait(self) -> Result<Result<Committed<R>, Refusal>, RpcError> {
        let (decision, range) = self.pending.wait().await?;
        Ok(decision.map(|(out, touched)| {
            self.app.wake(&touched, range);
            Committed { out, range }
        }))
    }
}

/// The notifier keys a batch of events changes (whoever follows these must look again):
/// the runs it starts, extends, ends or evicts, and the approvals it resolves or expires.
fn touched_keys(events: &[Event]) -> BTreeSet<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::RunStarted(_)
            | Event::TurnsRecorded(_)
            | Event::RunEnded(_)
            | Event::RunEvicted(_) => e.run_id().map(run_key),
            Event::ApprovalResolved(a) => Some(approval_key(&a.approval_id)),
            Event::ApprovalExpired(a) => Some(approval_key(&a.approval_id)),
            _ => None,
        })
        .collect()
}

impl App {
    /// Now, from the injected clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.stamper.clock().now()
    }

    /// A fresh id.
    pub fn new_id(&self) -> String {
        self.stamper.ids().uuid().to_string()
    }

    /// Queues `command`; `extract` computes, from the state the command is decided against
    /// and the events decided, whatever the caller needs beside them. Returns once queued:
    /// commands submitted one after another are decided in that order. In cluster mode a
    /// command may be decided (and `extract` run) again after another gateway wrote first;
    /// the last run counts.
    pub async fn submit<R, F>(
        self: &Arc<Self>,
        command: Command,
        extract: F,
    ) -> Result<Submitted<R>, RpcError>
    where
        R: Send + 'static,
        F: FnMut(&State, &[Event]) -> R + Send + 'static,
    {
        self.submit_decision(move |state| decide(state, &command), extract)
            .await
    }

    /// [`App::submit`] for a command that depends on the state it is decided against.
    pub async fn submit_with<R, B, F>(
        self: &Arc<Self>,
        mut build: B,
        extract: F,
    ) -> Result<Submitted<R>, RpcError>
    where
        R: Send + 'static,
        B: FnMut(&State) -> Command + Send + 'static,
        F: FnMut(&State, &[Event]) -> R + Send + 'static,
    {
        self.submit_decision(move |state| decide(state, &build(state)), extract)
            .await
    }

    async fn submit_decision<R, D, F>(
        self: &Arc<Self>,
        mut decide: D,
        mut extract: F,
    ) -> Result<Submitted<R>, RpcError>
    where
        R: Send + 'static,
        D: FnMut(&State) -> Result<Vec<Event>, Refusal> + Send + 'static,
        F: FnMut(&State, &[Event]) -> R + Send + 'static,
    {
        let pending = self
            .writer
            .enqueue(move |state: &State| match decide(state) {
                Ok(events) => {
                    let out = extract(state, &events);
                    let touched = touched_keys(&events);
                    (events, Ok((out, touched)))
                }
                Err(refusal) => (Vec::new(), Err(refusal)),
            })
            .await?;
        Ok(Submitted {
            pending,
            app: self.clone(),
        })
    }

    /// Submits and waits.
    pub async fn execute<R, F>(
        self: &Arc<Self>,
        command: Command,
        extract: F,
    ) -> Result<Result<Committed<R>, Refusal>, RpcError>
    where
        R: Send + 'static,
        F: FnMut(&State, &[Event]) -> R + Send + 'static,
    {
        self.submit(command, extract).await?.wait().await
    }

    /// Appends the events `effects` computes from the state (recovery, retention,
    /// shutdown): decided and appended in one step, then the touched runs are woken.
    pub async fn append<F>(
        self: &Arc<Self>,
        mut effects: F,
    ) -> Result<(Vec<Event>, SeqRange), RpcError>
    where
        F: FnMut(&State) -> Vec<Event> + Send + 'static,
    {
        let (events, range) = self
            .writer
            .execute(move |state: &State| {
                let events = effects(state);
                (events.clone(), events)
            })
            .await?;
        self.wake(&touched_keys(&events), range);
        Ok((events, range))
    }

    /// Wakes whoever follows what `event` (at `seq`, written by any gateway) changed.
    pub(crate) fn wake_event(&self, event: &Event, seq: car_events::Seq) {
        for key in touched_keys(std::slice::from_ref(event)) {
            self.notifier.bump(&key, seq);
        }
    }

    fn wake(&self, keys: &BTreeSet<String>, range: SeqRange) {
        if let Some(last) = range.last() {
            for key in keys {
                self.notifier.bump(key, last);
            }
        }
    }
}
