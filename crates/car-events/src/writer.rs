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
    /// The writer has been shut down.
    #[error("event writer has stopped")]
    Stopped,
}

impl From<LogError> for WriteError {
    fn from(err: LogError) -> Self {
        match err {
            LogError::DiskFull { .. } => WriteError::DiskFull(err.to_string()),
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
    mut progress: impl FnMut(Seq),
) -> Result<Seq, ReplayError> {
    let from = from.max(1);
    let mut gapless = GaplessCheck::starting_at(from);
    let mut last = from - 1;
    let mut failure = None;
    scan::scan(
        log,
        from..=Seq::MAX,
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

/// A decision run by the writer against the current state.
type Decide<S> = Box<dyn FnOnce(&S) -> Vec<Event> + Send>;

enum Msg<S> {
    Job {
        decide: Decide<S>,
        reply: oneshot::Sender<Result<SeqRange, WriteError>>,
    },
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

impl<S: Fold + Default> Writer<S> {
    /// Starts the writer over `log`. `state` must already be the fold of the whole log (see
    /// [`replay`]).
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
        let worker = Worker {
            shared: shared.clone(),
            stamper,
            last_ts,
            poisoned: None,
        };
        let thread = thread::Builder::new()
            .name("car-event-writer".into())
            .spawn(move || worker.run(rx))
            .unwrap_or_else(|e| panic!("cannot start the event writer thread: {e}"));
        (Self { shared, tx }, WriterThread(thread))
    }
}

impl<S: Fold> Writer<S> {
    /// Appends `events` as one contiguous range; resolves once they are durable.
    pub async fn append(&self, events: Vec<Event>) -> Result<SeqRange, WriteError> {
        self.submit(Box::new(move |_: &S| events)).await
    }

    /// Runs `decide` against the state (as it is after every earlier write) and appends
    /// the events it returns. Resolves, once they are durable, with the decision's other
    /// output and the seqs its events got.
    pub async fn execute<R, F>(&self, decide: F) -> Result<(R, SeqRange), WriteError>
    where
        R: Send + 'static,
        F: FnOnce(&S) -> (Vec<Event>, R) + Send + 'static,
    {
        self.enqueue(decide).await?.wait().await
    }

    /// Queues `decide` (as [`Writer::execute`]) and returns as soon as it is queued, so a
    /// caller can queue several writes in order and wait for them elsewhere: writes queued
    /// one after the other are decided in that order.
    pub async fn enqueue<R, F>(&self, decide: F) -> Result<Pending<R>, WriteError>
    where
        R: Send + 'static,
        F: FnOnce(&S) -> (Vec<Event>, R) + Send + 'static,
    {
        let (out_tx, out) = oneshot::channel();
        let (reply, range) = oneshot::channel();
        let decide: Decide<S> = Box::new(move |state: &S| {
            let (events, output) = decide(state);
            let _ = out_tx.send(output);
            events
        });
        self.tx
            .send(Msg::Job { decide, reply })
            .await
            .map_err(|_| WriteError::Stopped)?;
        Ok(Pending { range, out })
    }

    /// [`Writer::append`] for code outside an async runtime.
    pub fn append_blocking(&self, events: Vec<Event>) -> Result<SeqRange, WriteError> {
        let (reply, rx) = oneshot::channel();
        let decide: Decide<S> = Box::new(move |_: &S| events);
        self.tx
            .blocking_send(Msg::Job { decide, reply })
            .map_err(|_| WriteError::Stopped)?;
        rx.blocking_recv().map_err(|_| WriteError::Stopped)?
    }

    async fn submit(&self, decide: Decide<S>) -> Result<SeqRange, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Job { decide, reply })
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
    out: oneshot::Receiver<R>,
}

impl<R> Pending<R> {
    /// Waits until the write is durable (or failed); returns the decision's output and
    /// the seqs its events got.
    pub async fn wait(self) -> Result<(R, SeqRange), WriteError> {
        let range = self.range.await.map_err(|_| WriteError::Stopped)??;
        let out = self.out.await.map_err(|_| WriteError::Stopped)?;
        Ok((out, range))
    }
}

struct Worker<S: Fold> {
    shared: Arc<Shared<S>>,
    stamper: Stamper,
    /// The time of the last stamped event: times never go backwards.
    last_ts: DateTime<Utc>,
    poisoned: Option<String>,
}

type Reply = oneshot::Sender<Result<SeqRange, WriteError>>;

impl<S: Fold + Default> Worker<S> {
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
            let mut jobs = Vec::with_capacity(batch.len());
            let mut stop = None;
            while let Some(msg) = batch.pop_front() {
                match msg {
                    Msg::Job { decide, reply } => jobs.push((decide, reply)),
                    Msg::Stop(done) => {
                        stop = Some(done);
                        break;
                    }
                }
            }
            self.commit(jobs);
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

    /// Decides, folds, appends and answers one batch of jobs.
    fn commit(&mut self, jobs: Vec<(Decide<S>, Reply)>) {
        if jobs.is_empty() {
            return;
        }
        if let Some(reason) = &self.poisoned {
            for (_, reply) in jobs {
                let _ = reply.send(Err(WriteError::Poisoned(reason.clone())));
            }
            return;
        }
        // A full disk refuses the batch before anything is decided or folded: nothing to
        // undo, so no rebuild while the disk stays full.
        if let Err(err) = self.shared.log.admit_next() {
            let failure = WriteError::from(err);
            tracing::warn!(%failure, jobs = jobs.len(), "event log refused a batch");
            for (_, reply) in jobs {
                let _ = reply.send(Err(failure.clone()));
            }
            return;
        }
        let mut envelopes: Vec<Envelope> = Vec::new();
        let mut answers: Vec<(Reply, Result<SeqRange, WriteError>)> =
            Vec::with_capacity(jobs.len());
        let epoch;
        let shared = self.shared.clone();
        {
            let mut inner = shared.inner.write();
            for (decide, reply) in jobs {
                if let Some(reason) = &self.poisoned {
                    answers.push((reply, Err(WriteError::Poisoned(reason.clone()))));
                    continue;
                }
                let events = decide(&inner.state);
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
                        answers.push((reply, Ok(range)));
                    }
                    Some(err) => {
                        tracing::error!(%err, "decision rejected by the projection");
                        envelopes.truncate(start);
                        // Undo the part of this job that was folded: rebuild from the
                        // durable log plus the earlier jobs of this batch.
                        self.rebuild(&mut inner, &envelopes);
                        answers.push((reply, Err(err)));
                    }
                }
            }
            epoch = inner.epoch;
        }

        let result = if envelopes.is_empty() {
            Ok(())
        } else {
            self.shared.log.append(&envelopes).map(|_| ())
        };
        match result {
            Ok(()) => {
                let seq = envelopes
                    .last()
                    .map(|e| e.seq)
                    .unwrap_or_else(|| self.shared.durable.borrow().seq);
                self.shared.durable.send_replace(Durable { epoch, seq });
                for (reply, answer) in answers {
                    let _ = reply.send(answer);
                }
            }
            Err(err) => {
                tracing::error!(%err, events = envelopes.len(), "event log append failed");
                let failure = WriteError::from(err);
                {
                    let mut inner = shared.inner.write();
                    self.rebuild(&mut inner, &[]);
                    inner.epoch += 1;
                    let durable = Durable {
                        epoch: inner.epoch,
                        seq: inner.folded,
                    };
                    self.shared.durable.send_replace(durable);
                }
                for (reply, answer) in answers {
                    let _ = reply.send(answer.and(Err(failure.clone())));
                }
            }
        }
    }

    /// Replaces the state with the fold of the durable log followed by `pending`.
    fn rebuild(&mut self, inner: &mut Inner<S>, pending: &[Envelope]) {
        let mut state = S::default();
        let outcome = replay(self.shared.log.as_ref(), &mut state, 1, |_| {}).and_then(|last| {
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
                // Nothing past the log's head is durable: readers waiting on the failed
                // events wake up (the epoch moves on in the caller) and are refused.
                inner.folded = self.shared.log.head();
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
    #[derive(Debug, Default)]
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
}
