//! The single writer: group commit, decisions against the current state, and the durable
//! head that readers and tailers wait on.
//!
//! Every append in the process goes through one [`Writer`], which runs on its own OS
//! thread (a flush blocks; it must not block the async runtime):
//!
//! 1. it takes every job waiting in its queue (up to [`MAX_JOBS_PER_BATCH`]);
//! 2. for each job, in order, it runs the job's *decision* against the state, stamps the
//!    events it returns (seq, id, time) and folds them into the state, so the next job in
//!    the same batch sees them (two racing `runs.complete` cannot both be "first");
//! 3. it appends the whole batch to the [`EventLog`] once: one write, one flush;
//! 4. only then does it answer every job in the batch and announce the new durable head.
//!
//! While a flush is under way, new jobs queue up and become the next batch, so throughput
//! rises with concurrency and latency never waits for a timer.
//!
//! The state is folded *before* the flush, so a reader can see events that are not durable
//! yet. [`Writer::read`] therefore waits, after reading, until everything it saw is durable
//! (a read barrier): nobody is ever told something a crash could take back. If an append
//! fails, the state is rebuilt from the durable log and the writer's *epoch* moves on, so a
//! reader that saw the failed events reads again.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::thread;

use chrono::{DateTime, Utc};
use parking_lot::{MappedRwLockReadGuard, RwLock, RwLockReadGuard};
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::Stamper;
use crate::envelope::{Envelope, SCHEMA_VERSION, Seq, SeqRange};
use crate::event::Event;
use crate::log::{EventLog, GaplessCheck, LogError};
use crate::scan;

/// The most jobs folded into one durable batch. Large enough that a flush amortises over
/// thousands of appenders, small enough that one batch's write stays a few milliseconds.
pub const MAX_JOBS_PER_BATCH: usize = 4096;
/// Jobs that may wait for the writer before appenders feel back-pressure.
const QUEUE_CAPACITY: usize = 16 * 1024;
/// How many races in a row a batch may lose on a shared log before its jobs fail. Each lost
/// race means another writer appended in the few milliseconds between this writer's fold
/// and its publish; losing 16 in a row means the log is too contended to make progress, and
/// the clients are better told than kept waiting.
pub const MAX_CONFLICT_ATTEMPTS: u32 = 16;
/// Events between two checkpoints of the state on a shared log: undoing a lost race
/// replays at most this many events after a clone of the checkpoint, and a clone of the
/// state is paid once per this many events.
pub const CHECKPOINT_EVERY: Seq = 4096;
/// How often the follower of a shared log checks that its writer still runs, when the
/// log's head does not move.
const FOLLOWER_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// A state built by folding events: a projection. [`Fold::apply`] must be pure.
pub trait Fold: Send + Sync + 'static {
    /// Why an event cannot be applied (it contradicts the state).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Folds one event into the state.
    fn apply(&mut self, envelope: &Envelope) -> Result<(), Self::Error>;
}

/// The empty projection, for a writer that only appends.
impl Fold for () {
    type Error = Infallible;

    fn apply(&mut self, _: &Envelope) -> Result<(), Infallible> {
        Ok(())
    }
}

/// Why a write was not done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The log refused or failed the batch; nothing of it is in the log.
    #[error("{0}")]
    Log(String),
    /// The disk has no room: the batch was refused before anything of it was decided or
    /// written; writes go on once space is freed.
    #[error("{0}")]
    DiskFull(String),
    /// The decision produced an event the state cannot apply (a bug in the decision).
    #[error("decided event at seq {seq} contradicts the state: {reason}")]
    Rejected {
        /// The seq the event would have had.
        seq: Seq,
        /// The projection's error.
        reason: String,
    },
    /// The state could not be rebuilt after a failure; the writer accepts nothing more.
    #[error("event writer stopped after an unrecoverable failure: {0}")]
    Poisoned(String),
    /// The log's servers are out of reach (cluster mode): the write may or may not have
    /// been recorded if the servers went away during it; writes resume once they are back.
    #[error("{0}")]
    Unavailable(String),
    /// A shared log: other writers appended first [`MAX_CONFLICT_ATTEMPTS`] times in a
    /// row; nothing of the write is in the log.
    #[error("{0}")]
    Conflict(String),
    /// The writer has been shut down.
    #[error("event writer has stopped")]
    Stopped,
}

impl From<LogError> for WriteError {
    fn from(err: LogError) -> Self {
        match err {
            LogError::DiskFull { .. } => WriteError::DiskFull(err.to_string()),
            LogError::Unavailable(_) => WriteError::Unavailable(err.to_string()),
            other => WriteError::Log(other.to_string()),
        }
    }
}

/// Why replaying a log into a state failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The log could not be read (damaged record, gap, I/O).
    #[error(transparent)]
    Log(#[from] LogError),
    /// An event contradicts the state built from the events before it.
    #[error("event at seq {seq} cannot be applied: {source}")]
    Apply {
        /// The event's seq.
        seq: Seq,
        /// The projection's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Folds every event after `from - 1` into `state`, checking that seqs are gapless;
/// `progress` is called with each seq applied. Returns the last seq applied (or
/// `from - 1` when there was nothing).
///
/// Records are read from storage on one thread and decoded on others while this thread
/// folds, in seq order ([`crate::scan`]), so a cold start-up is bound by the storage, not
/// by the codec.
pub fn replay<S: Fold>(
    log: &dyn EventLog,
    state: &mut S,
    from: Seq,
    progress: impl FnMut(Seq),
) -> Result<Seq, ReplayError> {
    replay_until(log, state, from, Seq::MAX, progress)
}

/// [`replay`] up to `to` (inclusive) at most.
fn replay_until<S: Fold>(
    log: &dyn EventLog,
    state: &mut S,
    from: Seq,
    to: Seq,
    mut progress: impl FnMut(Seq),
) -> Result<Seq, ReplayError> {
    let from = from.max(1);
    let mut gapless = GaplessCheck::starting_at(from);
    let mut last = from - 1;
    let mut failure = None;
    scan::scan(
        log,
        from..=to,
        scan::default_threads(),
        |_| {},
        |item| item,
        |item| {
            let applied = item.map_err(ReplayError::from).and_then(|env| {
                gapless.check(env.seq)?;
                state.apply(&env).map_err(|e| ReplayError::Apply {
                    seq: env.seq,
                    source: Box::new(e),
                })?;
                Ok(env.seq)
            });
            match applied {
                Ok(seq) => {
                    last = seq;
                    progress(seq);
                    ControlFlow::Continue(())
                }
                Err(err) => {
                    failure = Some(err);
                    ControlFlow::Break(())
                }
            }
        },
    );
    match failure {
        Some(err) => Err(err),
        None => Ok(last),
    }
}

/// The durable position of the log as the writer announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    /// Moves on when a failed append forced a rebuild of the state.
    pub epoch: u64,
    /// Every event up to this seq is durable.
    pub seq: Seq,
}

/// A decision run by the writer against the current state. It may run more than once
/// (a lost race on a shared log); the last run is the one whose events count.
type Decide<S> = Box<dyn FnMut(&S) -> Vec<Event> + Send>;

/// What a job asks of the writer.
enum Work<S> {
    /// Append these events whatever the state (kept, not cloned, across a lost race).
    Append(Vec<Event>),
    /// Decide against the state.
    Decide(Decide<S>),
}

enum Msg<S> {
    Job {
        work: Work<S>,
        reply: oneshot::Sender<Result<SeqRange, WriteError>>,
    },
    /// The log's head moved (another writer appended): fold what is new.
    CatchUp,
    Stop(oneshot::Sender<()>),
}

/// The state with the writer's bookkeeping, behind one lock so readers see them together.
#[derive(Debug)]
struct Inner<S> {
    state: S,
    /// The seq of the last event folded into `state` (durable or not).
    folded: Seq,
    /// See [`Durable::epoch`].
    epoch: u64,
    /// Set when a failed write could not be undone (the durable log could not be read
    /// back): the state may hold events that are not durable, so no read is answered
    /// from it any more.
    tainted: Option<String>,
}

struct Shared<S> {
    inner: RwLock<Inner<S>>,
    durable: watch::Sender<Durable>,
    log: Arc<dyn EventLog>,
}

/// A handle on the single writer. Cheap to clone; every clone feeds the same writer.
pub struct Writer<S: Fold> {
    shared: Arc<Shared<S>>,
    tx: mpsc::Sender<Msg<S>>,
}

impl<S: Fold> Clone for Writer<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            tx: self.tx.clone(),
        }
    }
}

impl<S: Fold> fmt::Debug for Writer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("durable", &*self.shared.durable.borrow())
            .finish_non_exhaustive()
    }
}

/// The writer thread; join it after [`Writer::shutdown`].
#[derive(Debug)]
pub struct WriterThread(thread::JoinHandle<()>);

impl WriterThread {
    /// Waits for the writer thread to end.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl<S: Fold + Default + Clone> Writer<S> {
    /// Starts the writer over `log`. `state` must already be the fold of the whole log (see
    /// [`replay`]). Over a shared log it also starts the follower that folds other
    /// writers' events while this one is idle.
    pub fn spawn(log: Arc<dyn EventLog>, state: S, stamper: Stamper) -> (Self, WriterThread) {
        let head = log.head();
        let last_ts = match log.get(head) {
            Ok(Some(env)) => env.ts,
            _ => DateTime::<Utc>::MIN_UTC,
        };
        let shared = Arc::new(Shared {
            inner: RwLock::new(Inner {
                state,
                folded: head,
                epoch: 0,
                tainted: None,
            }),
            durable: watch::Sender::new(Durable {
                epoch: 0,
                seq: head,
            }),
            log,
        });
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let is_shared = shared.log.is_shared();
        let worker = Worker {
            shared: shared.clone(),
            stamper,
            last_ts,
            poisoned: None,
            checkpoint: None,
            is_shared,
            max_batch_events: shared.log.max_batch_events().max(1),
        };
        if is_shared {
            spawn_follower(shared.log.watch_head(), tx.downgrade());
        }
        let thread = thread::Builder::new()
            .name("car-event-writer".into())
            .spawn(move || worker.run(rx))
            .unwrap_or_else(|e| panic!("cannot start the event writer thread: {e}"));
        (Self { shared, tx }, WriterThread(thread))
    }
}

/// Wakes the writer whenever the shared log's head moves, so it folds other writers'
/// events while it has no job of its own. Ends when the writer or the log is gone.
fn spawn_follower<S: Send + 'static>(
    mut head: watch::Receiver<Seq>,
    writer: mpsc::WeakSender<Msg<S>>,
) {
    let follow = move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                tracing::error!(%err, "cannot start the log follower: foreign events are folded only before this gateway's own writes");
                return;
            }
        };
        runtime.block_on(async move {
            loop {
                let moved = tokio::time::timeout(FOLLOWER_TICK, head.changed()).await;
                if matches!(moved, Ok(Err(_))) {
                    return; // the log is gone
                }
                let Some(tx) = writer.upgrade() else {
                    return; // the writer is gone
                };
                if tx.is_closed() {
                    return;
                }
                if moved.is_ok() {
                    // A full queue needs no nudge: the writer catches up before each batch.
                    let _ = tx.try_send(Msg::CatchUp);
                }
            }
        });
    };
    if let Err(err) = thread::Builder::new()
        .name("car-log-follower".into())
        .spawn(follow)
    {
        tracing::error!(%err, "cannot start the log follower thread");
    }
}

impl<S: Fold> Writer<S> {
    /// Appends `events` as one contiguous range; resolves once they are durable.
    pub async fn append(&self, events: Vec<Event>) -> Result<SeqRange, WriteError> {
        self.submit(Work::Append(events)).await
    }

    /// Runs `decide` against the state (as it is after every earlier write) and appends
    /// the events it returns. Resolves, once they are durable, with the decision's other
    /// output and the seqs its events got. Over a shared log `decide` may run again after a
    /// lost race (see the module docs): the output of its last run is returned.
    pub async fn execute<R, F>(&self, decide: F) -> Result<(R, SeqRange), WriteError>
    where
        R: Send + 'static,
        F: FnMut(&S) -> (Vec<Event>, R) + Send + 'static,
    {
        self.enqueue(decide).await?.wait().await
    }

    /// Queues `decide` (as [`Writer::execute`]) and returns as soon as it is queued, so a
    /// caller can queue several writes in order and wait for them elsewhere: writes queued
    /// one after the other are decided in that order.
    pub async fn enqueue<R, F>(&self, mut decide: F) -> Result<Pending<R>, WriteError>
    where
        R: Send + 'static,
        F: FnMut(&S) -> (Vec<Event>, R) + Send + 'static,
    {
        let out = Arc::new(parking_lot::Mutex::new(None));
        let (reply, range) = oneshot::channel();
        let slot = out.clone();
        let decide: Decide<S> = Box::new(move |state: &S| {
            let (events, output) = decide(state);
            *slot.lock() = Some(output);
            events
        });
        self.tx
            .send(Msg::Job {
                work: Work::Decide(decide),
                reply,
            })
            .await
            .map_err(|_| WriteError::Stopped)?;
        Ok(Pending { range, out })
    }

    /// [`Writer::append`] for code outside an async runtime.
    pub fn append_blocking(&self, events: Vec<Event>) -> Result<SeqRange, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(Msg::Job {
                work: Work::Append(events),
                reply,
            })
            .map_err(|_| WriteError::Stopped)?;
        rx.blocking_recv().map_err(|_| WriteError::Stopped)?
    }

    async fn submit(&self, work: Work<S>) -> Result<SeqRange, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Job { work, reply })
            .await
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    /// Reads the state; resolves once everything the read saw is durable. Fails only when
    /// a failed write could not be undone (the writer is poisoned and the state may hold
    /// events that are not durable).
    pub async fn read<R>(&self, read: impl Fn(&S) -> R) -> Result<R, WriteError> {
        let mut durable = self.shared.durable.subscribe();
        loop {
            let (out, epoch, seen) = {
                let inner = self.shared.inner.read();
                if let Some(reason) = &inner.tainted {
                    return Err(WriteError::Poisoned(reason.clone()));
                }
                (read(&inner.state), inner.epoch, inner.folded)
            };
            let reached = durable
                .wait_for(|d| d.epoch != epoch || d.seq >= seen)
                .await
                .map(|d| d.epoch == epoch);
            match reached {
                // Everything seen is durable (or the writer is gone: nothing more can
                // become durable or be lost, and what was seen was the final state).
                Ok(true) | Err(_) => return Ok(out),
                // A failed append was undone under us: read again.
                Ok(false) => continue,
            }
        }
    }

    /// The state as it is now, including events not yet durable. Do not let what is read
    /// here reach a client (use [`Writer::read`]), and do not hold the guard across await.
    pub fn state(&self) -> MappedRwLockReadGuard<'_, S> {
        RwLockReadGuard::map(self.shared.inner.read(), |inner| &inner.state)
    }

    /// The log under the writer (for reads of durable events).
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.shared.log
    }

    /// The durable position now.
    pub fn durable(&self) -> Durable {
        *self.shared.durable.borrow()
    }

    /// A receiver of the durable position; it changes after every durable batch.
    pub fn watch_durable(&self) -> watch::Receiver<Durable> {
        self.shared.durable.subscribe()
    }

    /// Finishes every job queued before this call, then stops the writer. Later appends
    /// fail with [`WriteError::Stopped`].
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Msg::Stop(done)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// A queued write: [`Pending::wait`] resolves once its events are durable.
#[derive(Debug)]
pub struct Pending<R> {
    range: oneshot::Receiver<Result<SeqRange, WriteError>>,
    /// The output of the decision's last run (set by the writer before it answers).
    out: Arc<parking_lot::Mutex<Option<R>>>,
}

impl<R> Pending<R> {
    /// Waits until the write is durable (or failed); returns the decision's output and
    /// the seqs its events got.
    pub async fn wait(self) -> Result<(R, SeqRange), WriteError> {
        let range = self.range.await.map_err(|_| WriteError::Stopped)??;
        let out = self.out.lock().take().ok_or(WriteError::Stopped)?;
        Ok((out, range))
    }
}

struct Worker<S: Fold> {
    shared: Arc<Shared<S>>,
    stamper: Stamper,
    /// The time of the last stamped event: times never go backwards.
    last_ts: DateTime<Utc>,
    poisoned: Option<String>,
    /// A shared log only: the state at a durable seq, to undo a fold from (see
    /// [`CHECKPOINT_EVERY`]).
    checkpoint: Option<(S, Seq)>,
    /// Whether the log is shared ([`EventLog::is_shared`]).
    is_shared: bool,
    /// The most events one append may carry ([`EventLog::max_batch_events`]).
    max_batch_events: usize,
}

type Reply = oneshot::Sender<Result<SeqRange, WriteError>>;

/// A job on its way through a batch.
struct Job<S> {
    work: Work<S>,
    reply: Reply,
}

/// What deciding a batch produced.
struct Decided<S> {
    envelopes: Vec<Envelope>,
    /// The jobs taken into the batch, each with the end of its envelopes and its answer.
    taken: Vec<(Job<S>, usize, Result<SeqRange, WriteError>)>,
    epoch: u64,
}

impl<S: Fold + Default + Clone> Worker<S> {
    fn run(mut self, mut rx: mpsc::Receiver<Msg<S>>) {
        let mut batch: VecDeque<Msg<S>> = VecDeque::new();
        while let Some(first) = rx.blocking_recv() {
            batch.push_back(first);
            while batch.len() < MAX_JOBS_PER_BATCH {
                match rx.try_recv() {
                    Ok(msg) => batch.push_back(msg),
                    Err(_) => break,
                }
            }
            let mut jobs = VecDeque::with_capacity(batch.len());
            let mut stop = None;
            while let Some(msg) = batch.pop_front() {
                match msg {
                    Msg::Job { work, reply } => jobs.push_back(Job { work, reply }),
                    Msg::CatchUp => {}
                    Msg::Stop(done) => {
                        stop = Some(done);
                        break;
                    }
                }
            }
            if jobs.is_empty() {
                self.catch_up();
            }
            while !jobs.is_empty() {
                self.commit(&mut jobs);
            }
            if let Some(done) = stop {
                // Everything before the stop is answered; everything after it is refused.
                rx.close();
                for msg in batch.drain(..) {
                    refuse(msg);
                }
                while let Ok(msg) = rx.try_recv() {
                    refuse(msg);
                }
                let _ = done.send(());
                return;
            }
        }
    }

    /// Folds the events other writers appended to a shared log since the last fold. Runs
    /// only between batches, when everything folded is durable.
    fn catch_up(&mut self) {
        if !self.is_shared || self.poisoned.is_some() {
            return;
        }
        let head = self.shared.log.head();
        let shared = self.shared.clone();
        let mut inner = shared.inner.write();
        if head <= inner.folded {
            return;
        }
        let from = inner.folded + 1;
        let mut gapless = GaplessCheck::starting_at(from);
        let mut failure = None;
        for item in self.shared.log.read_from(from) {
            let applied = item.map_err(ReplayError::from).and_then(|env| {
                if env.seq > head {
                    return Ok(None);
                }
                gapless.check(env.seq)?;
                inner.state.apply(&env).map_err(|e| ReplayError::Apply {
                    seq: env.seq,
                    source: Box::new(e),
                })?;
                Ok(Some(env))
            });
            match applied {
                Ok(Some(env)) => {
                    inner.folded = env.seq;
                    // Stamps never go behind what other writers stamped either.
                    self.last_ts = self.last_ts.max(env.ts);
                }
                Ok(None) => break,
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        if let Some(err) = failure {
            // The fold stopped inside the log: the state is only good up to `folded`,
            // which is durable, so reads stay answered; writes cannot be decided right.
            let reason = format!("folding another writer's events failed: {err}");
            tracing::error!(%reason, "event writer poisoned: restart car-server");
            self.poisoned = Some(reason);
        }
        let durable = Durable {
            epoch: inner.epoch,
            seq: inner.folded,
        };
        drop(inner);
        self.shared.durable.send_replace(durable);
    }

    /// On a shared log, keeps a clone of the state at a durable seq no more than
    /// [`CHECKPOINT_EVERY`] events back. Runs between batches.
    fn refresh_checkpoint(&mut self) {
        if !self.is_shared {
            return;
        }
        let inner = self.shared.inner.read();
        let stale = self
            .checkpoint
            .as_ref()
            .is_none_or(|(_, at)| inner.folded >= at + CHECKPOINT_EVERY);
        if stale && inner.tainted.is_none() {
            self.checkpoint = Some((inner.state.clone(), inner.folded));
        }
    }

    /// Decides, folds, appends and answers jobs from the front of `jobs`: as many as fit in
    /// one append. Over a shared log, a lost race folds the winner's events and decides the
    /// same jobs again (bounded).
    fn commit(&mut self, jobs: &mut VecDeque<Job<S>>) {
        if let Some(reason) = &self.poisoned {
            for job in jobs.drain(..) {
                let _ = job.reply.send(Err(WriteError::Poisoned(reason.clone())));
            }
            return;
        }
        // A full disk (or an unreachable cluster) refuses the batch before anything is
        // decided or folded: nothing to undo, so no rebuild while it lasts.
        if let Err(err) = self.shared.log.admit_next() {
            let failure = WriteError::from(err);
            tracing::warn!(%failure, jobs = jobs.len(), "event log refused a batch");
            for job in jobs.drain(..) {
                let _ = job.reply.send(Err(failure.clone()));
            }
            return;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.catch_up();
            if let Some(reason) = &self.poisoned {
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(WriteError::Poisoned(reason.clone())));
                }
                return;
            }
            self.refresh_checkpoint();
            let decided = self.decide(jobs);
            let result = if decided.envelopes.is_empty() {
                Ok(())
            } else {
                self.shared.log.append(&decided.envelopes).map(|_| ())
            };
            match result {
                Ok(()) => {
                    let seq = decided
                        .envelopes
                        .last()
                        .map(|e| e.seq)
                        .unwrap_or_else(|| self.shared.durable.borrow().seq);
                    self.shared.durable.send_replace(Durable {
                        epoch: decided.epoch,
                        seq,
                    });
                    for (job, _, answer) in decided.taken {
                        let _ = job.reply.send(answer);
                    }
                    return;
                }
                Err(LogError::Conflict { head }) if attempt < MAX_CONFLICT_ATTEMPTS => {
                    tracing::debug!(
                        head,
                        attempt,
                        "another writer appended first: deciding again"
                    );
                    self.undo();
                    // Back to the front of the queue, in their order; an append gets its
                    // events back from the envelopes. A job already answered (its decision
                    // was rejected) is told now.
                    let mut envelopes = decided.envelopes;
                    for (mut job, start, answer) in decided.taken.into_iter().rev() {
                        let mine = envelopes.split_off(start.min(envelopes.len()));
                        if answer.is_err() {
                            let _ = job.reply.send(answer);
                            continue;
                        }
                        if let Work::Append(events) = &mut job.work {
                            *events = mine.into_iter().map(|e| e.event).collect();
                        }
                        jobs.push_front(job);
                    }
                }
                Err(err) => {
                    let conflict = matches!(err, LogError::Conflict { .. });
                    tracing::error!(%err, events = decided.envelopes.len(), "event log append failed");
                    let failure = if conflict {
                        WriteError::Conflict(format!(
                            "the write lost {MAX_CONFLICT_ATTEMPTS} races in a row to other gateways writing the same log; nothing was recorded, try again"
                        ))
                    } else {
                        WriteError::from(err)
                    };
                    self.undo();
                    for (job, _, answer) in decided.taken {
                        let _ = job.reply.send(answer.and(Err(failure.clone())));
                    }
                    return;
                }
            }
        }
    }

    /// Runs the jobs from the front of `jobs` against the state, as many as fit in one
    /// append, stamping and folding their events in order.
    fn decide(&mut self, jobs: &mut VecDeque<Job<S>>) -> Decided<S> {
        let mut envelopes: Vec<Envelope> = Vec::new();
        let mut taken = Vec::with_capacity(jobs.len());
        let shared = self.shared.clone();
        let mut inner = shared.inner.write();
        while let Some(mut job) = jobs.pop_front() {
            if let Some(reason) = &self.poisoned {
                let answer = Err(WriteError::Poisoned(reason.clone()));
                taken.push((job, envelopes.len(), answer));
                continue;
            }
            let events = match &mut job.work {
                Work::Append(events) => std::mem::take(events),
                Work::Decide(decide) => decide(&inner.state),
            };
            if envelopes.len() + events.len() > self.max_batch_events {
                if envelopes.is_empty() {
                    let err = LogError::BatchTooLarge {
                        events: events.len(),
                        max: self.max_batch_events,
                    };
                    taken.push((job, 0, Err(WriteError::Log(err.to_string()))));
                    continue;
                }
                // Into the next append, decided again there.
                if let Work::Append(slot) = &mut job.work {
                    *slot = events;
                }
                jobs.push_front(job);
                break;
            }
            let first = inner.folded + 1;
            let start = envelopes.len();
            for (i, event) in events.into_iter().enumerate() {
                self.last_ts = self.stamper.now_after(self.last_ts);
                envelopes.push(Envelope {
                    seq: first + i as Seq,
                    event_id: self.stamper.ids().uuid(),
                    ts: self.last_ts,
                    schema_version: SCHEMA_VERSION,
                    event,
                });
            }
            let mut rejected = None;
            for env in &envelopes[start..] {
                if let Err(e) = inner.state.apply(env) {
                    rejected = Some(WriteError::Rejected {
                        seq: env.seq,
                        reason: e.to_string(),
                    });
                    break;
                }
            }
            match rejected {
                None => {
                    let range = SeqRange {
                        first,
                        count: (envelopes.len() - start) as u64,
                    };
                    inner.folded = first + range.count - 1;
                    taken.push((job, start, Ok(range)));
                }
                Some(err) => {
                    tracing::error!(%err, "decision rejected by the projection");
                    envelopes.truncate(start);
                    // Undo the part of this job that was folded: rebuild from the
                    // durable log plus the earlier jobs of this batch.
                    self.rebuild(&mut inner, &envelopes);
                    taken.push((job, start, Err(err)));
                }
            }
        }
        Decided {
            envelopes,
            taken,
            epoch: inner.epoch,
        }
    }

    /// Throws away what was folded but not appended: the state becomes the fold of the
    /// durable log again, and the epoch moves on so that readers who saw it read again.
    fn undo(&mut self) {
        let shared = self.shared.clone();
        let mut inner = shared.inner.write();
        self.rebuild(&mut inner, &[]);
        inner.epoch += 1;
        let durable = Durable {
            epoch: inner.epoch,
            seq: inner.folded,
        };
        self.shared.durable.send_replace(durable);
    }

    /// Replaces the state with the fold of the durable log followed by `pending`: from the
    /// checkpoint when there is one (a shared log), else from seq 1.
    fn rebuild(&mut self, inner: &mut Inner<S>, pending: &[Envelope]) {
        let durable = self.shared.durable.borrow().seq;
        let (mut state, from) = match &self.checkpoint {
            Some((state, at)) if *at <= durable => (state.clone(), at + 1),
            _ => (S::default(), 1),
        };
        let outcome = replay_until(self.shared.log.as_ref(), &mut state, from, durable, |_| {})
            .and_then(|last| {
                for env in pending {
                    state.apply(env).map_err(|e| ReplayError::Apply {
                        seq: env.seq,
                        source: Box::new(e),
                    })?;
                }
                Ok(pending.last().map_or(last, |e| e.seq))
            });
        match outcome {
            Ok(folded) => {
                inner.state = state;
                inner.folded = folded;
            }
            Err(err) => {
                let reason = format!("rebuilding the state failed: {err}");
                tracing::error!(%reason, "event writer poisoned: restart car-server");
                inner.tainted = Some(reason.clone());
                // Nothing past the durable head is durable: readers waiting on the failed
                // events wake up (the epoch moves on in the caller) and are refused.
                inner.folded = durable;
                self.poisoned = Some(reason);
            }
        }
    }
}

fn refuse<S>(msg: Msg<S>) {
    match msg {
        Msg::Job { reply, .. } => {
            let _ = reply.send(Err(WriteError::Stopped));
        }
        Msg::CatchUp => {}
        Msg::Stop(done) => {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::event::{DaemonStopped, Event};
    use crate::log::MemLog;

    /// Counts events and remembers the reasons, to see what decisions observed.
    #[derive(Debug, Default, Clone)]
    struct Reasons(Vec<String>);

    impl Fold for Reasons {
        type Error = Infallible;
        fn apply(&mut self, env: &Envelope) -> Result<(), Infallible> {
            if let Event::DaemonStopped(e) = &env.event {
                self.0.push(e.reason.clone());
            }
            Ok(())
        }
    }

    fn stopped(reason: &str) -> Event {
        Event::DaemonStopped(DaemonStopped {
            reason: reason.into(),
        })
    }

    fn spawn(log: Arc<MemLog>) -> (Writer<Reasons>, WriterThread) {
        let mut state = Reasons::default();
        replay(log.as_ref(), &mut state, 1, |_| {}).unwrap();
        Writer::spawn(log, state, Stamper::deterministic(ManualClock::fixed(), 7))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_get_disjoint_contiguous_ranges() {
        let log = Arc::new(MemLog::new());
        let (writer, thread) = spawn(log.clone());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    let events = (0..=i % 3).map(|j| stopped(&format!("{i}.{j}"))).collect();
                    writer.append(events).await.unwrap()
                })
            })
            .collect();
        let mut ranges = Vec::new();
        for task in tasks {
            ranges.push(task.await.unwrap());
        }
        ranges.sort_by_key(|r| r.first);
        let mut next = 1;
        for r in &ranges {
            assert_eq!(r.first, next);
            next = r.end();
        }
        assert_eq!(log.head(), next - 1);
        assert_eq!(writer.durable().seq, next - 1);
        writer.shutdown().await;
        thread.join();
    }

    #[tokio::test]
    async fn a_decision_sees_the_jobs_before_it() {
        let log = Arc::new(MemLog::new());
        let (writer, _thread) = spawn(log);
        // Two "first wins" decisions: only one may produce the event.
        let decide = |s: &Reasons| {
            if s.0.iter().any(|r| r == "won") {
                (vec![], false)
            } else {
                (vec![stopped("won")], true)
            }
        };
        let (a, b) = tokio::join!(writer.execute(decide), writer.execute(decide));
        let (a, b) = (a.unwrap().0, b.unwrap().0);
        assert!(a ^ b, "exactly one decision wins: {a} {b}");
        assert_eq!(
            writer.read(|s| s.0.clone()).await.unwrap(),
            vec!["won".to_owned()]
        );
    }

    /// Regression (issue 9, item 1): a full disk must refuse every write promptly, decide
    /// and fold nothing (so no rebuild of the state per refused batch), and let writes go
    /// on as soon as space returns.
    #[tokio::test]
    async fn a_full_disk_refuses_writes_before_deciding_and_they_resume_when_space_returns() {
        let log = Arc::new(MemLog::new());
        let (writer, _thread) = spawn(log.clone());
        writer.append(vec![stopped("a")]).await.unwrap();
        log.set_disk_full(true);
        let decided = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = decided.clone();
        let err = writer
            .execute(move |_: &Reasons| {
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
                (vec![stopped("refused")], ())
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WriteError::DiskFull(m) if m.contains("disk holding the event log is full")),
            "{err:?}"
        );
        assert!(!decided.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(writer.durable().epoch, 0, "nothing folded, nothing rebuilt");
        assert_eq!(
            writer.read(|s| s.0.clone()).await.unwrap(),
            vec!["a".to_owned()]
        );
        log.set_disk_full(false);
        let range = writer.append(vec![stopped("b")]).await.unwrap();
        assert_eq!(range, SeqRange { first: 2, count: 1 });
    }

    /// A failed write whose undo cannot read the log back leaves a state that may hold
    /// events that are not durable: every later read is refused rather than answered from
    /// it, and every later write too.
    #[tokio::test]
    async fn a_failure_that_cannot_be_undone_refuses_reads_instead_of_showing_lost_events() {
        #[derive(Debug)]
        struct Unreadable(MemLog);
        impl EventLog for Unreadable {
            fn append(&self, batch: &[Envelope]) -> Result<SeqRange, LogError> {
                self.0.append(batch)
            }
            fn raw_from(&self, _: Seq) -> crate::log::RawIter<'_> {
                Box::new(std::iter::once(Err(LogError::Io("unreadable".into()))))
            }
            fn head(&self) -> Seq {
                self.0.head()
            }
            fn watch_head(&self) -> watch::Receiver<Seq> {
                self.0.watch_head()
            }
        }
        let inner = MemLog::new();
        let log = Arc::new(Unreadable(inner));
        let (writer, _thread) = Writer::spawn(
            log.clone(),
            Reasons::default(),
            Stamper::deterministic(ManualClock::fixed(), 7),
        );
        writer.append(vec![stopped("kept")]).await.unwrap();
        log.0.fail_next_appends(1);
        assert!(writer.append(vec![stopped("lost")]).await.is_err());
        let err = writer.read(|s| s.0.clone()).await.unwrap_err();
        assert!(
            matches!(&err, WriteError::Poisoned(m) if m.contains("rebuilding the state failed")),
            "{err:?}"
        );
        assert!(matches!(
            writer.append(vec![stopped("b")]).await,
            Err(WriteError::Poisoned(_))
        ));
    }

    #[tokio::test]
    async fn a_failed_append_loses_nothing_acknowledged_and_undoes_the_state() {
        let log = Arc::new(MemLog::new());
        let (writer, _thread) = spawn(log.clone());
        writer.append(vec![stopped("a")]).await.unwrap();
        log.fail_next_appends(1);
        let err = writer.append(vec![stopped("lost")]).await.unwrap_err();
        assert!(
            matches!(err, WriteError::Log(ref m) if m.contains("no space")),
            "{err}"
        );
        assert_eq!(
            writer.read(|s| s.0.clone()).await.unwrap(),
            vec!["a".to_owned()]
        );
        let range = writer.append(vec![stopped("b")]).await.unwrap();
        assert_eq!(range.first, 2, "the failed batch's seq is reused: no gap");
        assert_eq!(writer.durable().epoch, 1);
        let reasons: Vec<_> = log
            .read_from(1)
            .map(|e| match e.unwrap().event {
                Event::DaemonStopped(d) => d.reason,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(reasons, ["a", "b"]);
    }

    #[tokio::test]
    async fn appends_after_shutdown_are_refused() {
        let log = Arc::new(MemLog::new());
        let (writer, thread) = spawn(log);
        writer.append(vec![stopped("a")]).await.unwrap();
        writer.shutdown().await;
        thread.join();
        assert_eq!(
            writer.append(vec![stopped("b")]).await,
            Err(WriteError::Stopped)
        );
    }

    #[tokio::test]
    async fn stamps_are_gapless_and_times_monotonic() {
        let log = Arc::new(MemLog::new());
        let (writer, _thread) = spawn(log.clone());
        for i in 0..10 {
            writer.append(vec![stopped(&i.to_string())]).await.unwrap();
        }
        let envs: Vec<_> = log.read_from(1).map(|e| e.unwrap()).collect();
        assert_eq!(
            envs.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        assert!(
            envs.windows(2)
                .all(|w| w[0].ts <= w[1].ts && w[0].event_id != w[1].event_id)
        );
    }

    /// An event another writer appends to a shared log, behind the writer's back.
    fn foreign(log: &MemLog, reason: &str) -> Seq {
        let seq = log.head() + 1;
        log.append(&[Envelope {
            seq,
            event_id: uuid::Uuid::new_v4(),
            ts: DateTime::<Utc>::UNIX_EPOCH,
            schema_version: SCHEMA_VERSION,
            event: stopped(reason),
        }])
        .unwrap();
        seq
    }

    fn reasons_in(log: &MemLog) -> Vec<String> {
        log.read_from(1)
            .map(|e| match e.unwrap().event {
                Event::DaemonStopped(d) => d.reason,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    /// Cluster mode: what other writers append is folded while this writer is idle, so
    /// reads (and whoever waits on the durable head) see it without a write of their own.
    #[tokio::test]
    async fn a_shared_log_s_foreign_events_are_folded_while_idle() {
        let log = Arc::new(MemLog::shared());
        let other = log.other_writer();
        let (writer, thread) = spawn(log.clone());
        writer.append(vec![stopped("mine")]).await.unwrap();
        let seq = foreign(&other, "theirs");
        let mut durable = writer.watch_durable();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            durable.wait_for(|d| d.seq >= seq),
        )
        .await
        .expect("the writer folds a foreign event while idle")
        .unwrap();
        assert_eq!(
            writer.read(|s| s.0.clone()).await.unwrap(),
            ["mine", "theirs"]
        );
        let range = writer.append(vec![stopped("after")]).await.unwrap();
        assert_eq!(range.first, 3, "the next seq follows the foreign event");
        assert_eq!(reasons_in(&log), ["mine", "theirs", "after"]);
        writer.shutdown().await;
        thread.join();
    }

    /// Cluster mode: a decision that loses the race to another writer is decided again
    /// against the winner's events ("first wins" holds across writers), and nothing of the
    /// losing attempt reaches the log.
    #[tokio::test]
    async fn a_lost_race_is_decided_again_after_folding_the_winner() {
        let log = Arc::new(MemLog::shared());
        let other = log.other_writer();
        let (writer, _thread) = spawn(log.clone());
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = runs.clone();
        let (won, range) = writer
            .execute(move |s: &Reasons| {
                if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    // The other writer wins the race while this one decides.
                    foreign(&other, "won");
                }
                if s.0.iter().any(|r| r == "won") {
                    (vec![], false)
                } else {
                    (vec![stopped("won")], true)
                }
            })
            .await
            .unwrap();
        assert!(!won, "the second run sees the winner and decides nothing");
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(range.count, 0);
        assert_eq!(reasons_in(&log), ["won"]);
        assert_eq!(writer.read(|s| s.0.clone()).await.unwrap(), ["won"]);
        assert_eq!(writer.durable().seq, 1);
    }

    /// Cluster mode: a write that keeps losing fails after a bounded number of tries with
    /// a clear error (no livelock), and the writer goes on working.
    #[tokio::test]
    async fn endless_lost_races_fail_after_bounded_tries() {
        let log = Arc::new(MemLog::shared());
        let other = log.other_writer();
        let (writer, _thread) = spawn(log.clone());
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = runs.clone();
        let err = writer
            .execute(move |_: &Reasons| {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                foreign(&other, "theirs");
                (vec![stopped("mine")], ())
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WriteError::Conflict(m) if m.contains("races in a row")),
            "{err:?}"
        );
        let runs = runs.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(runs, MAX_CONFLICT_ATTEMPTS);
        assert!(reasons_in(&log).iter().all(|r| r == "theirs"));
        let range = writer.append(vec![stopped("later")]).await.unwrap();
        assert_eq!(range.first, u64::from(runs) + 1);
        assert_eq!(writer.read(|s| s.0.len()).await.unwrap(), runs as usize + 1);
    }

    /// Cluster mode: an append queued right behind a decision that loses a race keeps its
    /// events (whether or not the writer took both into one batch), after the winner's.
    #[tokio::test]
    async fn appends_survive_a_lost_race_of_their_batch() {
        let log = Arc::new(MemLog::shared());
        let other = log.other_writer();
        let (writer, _thread) = spawn(log.clone());
        let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let pending = writer
            .enqueue(move |_: &Reasons| {
                if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    foreign(&other, "theirs");
                }
                (vec![stopped("decided")], ())
            })
            .await
            .unwrap();
        let appended = writer.append(vec![stopped("appended")]).await.unwrap();
        pending.wait().await.unwrap();
        let reasons = reasons_in(&log);
        assert_eq!(reasons[0], "theirs");
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(
            reasons.contains(&"decided".to_owned()) && reasons.contains(&"appended".to_owned())
        );
        assert_eq!(appended.count, 1);
    }

    /// Cluster mode: undoing a lost race starts from the checkpoint and replays the durable
    /// events after it, foreign ones included: the decision's second run sees them all.
    #[tokio::test]
    async fn a_lost_race_after_a_checkpoint_keeps_every_durable_event() {
        let log = Arc::new(MemLog::shared());
        let other = log.other_writer();
        let (writer, _thread) = spawn(log.clone());
        writer.append(vec![stopped("mine")]).await.unwrap(); // checkpoint at 0, then 1
        foreign(&other, "f2");
        writer.append(vec![stopped("mine3")]).await.unwrap();
        foreign(&other, "f4");
        foreign(&other, "f5");
        let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (seen, _) = writer
            .execute(move |s: &Reasons| {
                if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    foreign(&other, "f6");
                }
                (vec![stopped("last")], s.0.clone())
            })
            .await
            .unwrap();
        assert_eq!(seen, ["mine", "f2", "mine3", "f4", "f5", "f6"]);
        assert_eq!(
            writer.read(|s| s.0.clone()).await.unwrap(),
            ["mine", "f2", "mine3", "f4", "f5", "f6", "last"]
        );
    }
}
