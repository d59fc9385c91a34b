//! Reading records in seq order, decoding them on other threads.
//!
//! A scan has three costs per record: sled reads it (a page-in: ~1.5 µs), the codec checks
//! and decodes it (checksum, bincode, JSON validation: ~1 µs), and the command folds or
//! prints it. Only the first and the last must happen in order. So with more than one
//! thread, [`scan`] is a pipeline:
//!
//! ```text
//!   reader thread ──chunks of raw records──▶ decoder threads ──▶ reorder ──▶ `each` (caller)
//!   (sled, in order)                         (decode + `map`)      (by chunk number)
//! ```
//!
//! The reader is the only thread inside sled, the decoders run the codec and the
//! command's per-record `map` (e.g. rendering JSON), and the calling thread gets the
//! mapped items strictly in seq order.
//!
//! Why one reader: sled itself does read faster from two threads (disjoint halves of a
//! 1 M-event log of the daemon's mix, cold: 1.13–1.18 M raw records/s against 0.61–0.67 M
//! for one thread). But workers that each read *and* decode their own chunks, measured
//! side by side with this design on that log, gained nothing under mimalloc (0.73–0.87 M
//! against 0.80–0.84 M events/s) and lost a third under glibc's malloc (0.40 M against
//! 0.59–0.68 M): freeing the decoded events on the consuming thread dominates, and two
//! cores have no room for a third busy thread. At most [`AHEAD_PER_THREAD`] chunks per thread are in flight, so memory stays
//! bounded however large the log is. With one thread, everything runs on the caller.
//!
//! Items are what [`crate::EventLog::read_from`] yields: an envelope, or an error naming
//! the seq of a damaged record (a key that is not a seq, or an I/O error, names none).
//! Missing seqs simply do not appear; the consumer sees the jump.
//!
//! The daemon's start-up replay ([`crate::replay`]) and every `car-replay` command scan
//! through here.

use std::collections::BTreeMap;
use std::ops::{ControlFlow, RangeInclusive};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, PoisonError};

use crate::codec;
use crate::envelope::{Envelope, Seq};
use crate::log::{EventLog, LogError, RawRecord};

/// Records per chunk: large enough that a chunk's fixed costs (two channel messages, a
/// reorder-map entry, a progress update) vanish next to 4096 decodes, small enough that
/// the decoders start at once and the reorder buffer stays a few MiB.
pub const CHUNK: usize = 4096;
/// Chunks in flight (read, not yet consumed) per thread: enough that nobody waits when
/// chunks take uneven time, few enough to bound memory (4 × 4096 records × a few hundred
/// bytes ≈ 5 MiB per thread).
pub const AHEAD_PER_THREAD: usize = 4;
/// Most threads by default: one reader feeds about this many decoders before sled's
/// page-ins become the limit.
pub const MAX_DEFAULT_THREADS: usize = 8;

/// One record as read.
pub type Item = Result<Envelope, LogError>;

/// A record as the reader hands it on.
type Raw = Result<(Seq, RawRecord), LogError>;

/// The default number of threads: the CPUs, at most [`MAX_DEFAULT_THREADS`].
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_DEFAULT_THREADS)
}

/// The seq an item is about, when it names one.
pub fn item_seq(item: &Item) -> Option<Seq> {
    match item {
        Ok(env) => Some(env.seq),
        Err(err) => error_seq(err),
    }
}

/// The seq of a damaged record an error is about (a key that is not a seq, or an I/O
/// error, names none).
pub fn error_seq(err: &LogError) -> Option<Seq> {
    match err {
        LogError::Corrupt(codec) if codec.seq() > 0 => Some(codec.seq()),
        _ => None,
    }
}

fn decode(raw: Raw) -> Item {
    let (seq, bytes) = raw?;
    Ok(codec::decode(seq, &bytes)?)
}

/// Whether a raw item lies past `last` (the reader stops there).
fn past(raw: &Raw, last: Seq) -> bool {
    matches!(raw, Ok((seq, _)) if *seq > last)
}

/// Reads the records in `range` in seq order: `map` runs for each item (on decoder
/// threads when `threads > 1`), `each` on the calling thread for each mapped item, in seq
/// order; `each` may stop the scan early. `progress` is told, on the calling thread, how
/// many more records were consumed, once per chunk.
pub fn scan<T: Send>(
    log: &dyn EventLog,
    range: RangeInclusive<Seq>,
    threads: usize,
    mut progress: impl FnMut(u64),
    map: impl Fn(Item) -> T + Sync,
    mut each: impl FnMut(T) -> ControlFlow<()>,
) {
    let first = (*range.start()).max(1);
    let last = (*range.end()).min(log.head());
    if first > last {
        return;
    }
    if threads <= 1 || last - first < CHUNK as Seq {
        let mut done = 0;
        for raw in log.raw_from(first) {
            if past(&raw, last) {
                break;
            }
            done += 1;
            if done % CHUNK == 0 {
                progress(CHUNK as u64);
            }
            if each(map(decode(raw))).is_break() {
                return;
            }
        }
        progress((done % CHUNK) as u64);
        return;
    }
    let decoders = threads - 1;
    let gate = Gate::new(threads * AHEAD_PER_THREAD);
    let (raw_tx, raw_rx) = mpsc::channel::<(u64, Vec<Raw>)>();
    let raw_rx = Mutex::new(raw_rx);
    let (done_tx, done_rx) = mpsc::channel::<(u64, Vec<T>)>();
    std::thread::scope(|scope| {
        let gate = &gate;
        scope.spawn(move || read(log, first, last, gate, &raw_tx));
        for _ in 0..decoders {
            let (raw_rx, done_tx, map) = (&raw_rx, done_tx.clone(), &map);
            scope.spawn(move || {
                loop {
                    let next = raw_rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok((chunk, raws)) = next else { return };
                    let items = raws.into_iter().map(|raw| map(decode(raw))).collect();
                    if done_tx.send((chunk, items)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let mut waiting: BTreeMap<u64, Vec<T>> = BTreeMap::new();
        let mut wanted = 0;
        'chunks: loop {
            let items = match waiting.remove(&wanted) {
                Some(items) => items,
                None => match done_rx.recv() {
                    Ok((chunk, items)) => {
                        waiting.insert(chunk, items);
                        continue;
                    }
                    // Every chunk is done (or a thread panicked: the scope re-raises it).
                    Err(_) => break,
                },
            };
            progress(items.len() as u64);
            for item in items {
                if each(item).is_break() {
                    break 'chunks;
                }
            }
            gate.leave();
            wanted += 1;
        }
        gate.stop();
    });
}

/// The reader: sends the raw records of `first ..= last` in numbered chunks.
fn read(
    log: &dyn EventLog,
    first: Seq,
    last: Seq,
    gate: &Gate,
    out: &mpsc::Sender<(u64, Vec<Raw>)>,
) {
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut number = 0;
    for raw in log.raw_from(first) {
        if past(&raw, last) {
            break;
        }
        chunk.push(raw);
        if chunk.len() == CHUNK {
            if !gate.enter() {
                return;
            }
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            if out.send((number, full)).is_err() {
                return;
            }
            number += 1;
        }
    }
    if !chunk.is_empty() && gate.enter() {
        let _ = out.send((number, chunk));
    }
}

/// Bounds the chunks in flight: the reader [`enter`](Gate::enter)s before sending a
/// chunk, the consumer lets one more in ([`leave`](Gate::leave)) after consuming one.
/// Chunks are sent in order, so the chunk the consumer waits for is always already sent.
#[derive(Debug)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
    limit: usize,
}

#[derive(Debug)]
struct GateState {
    in_flight: usize,
    stopped: bool,
}

impl Gate {
    fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(GateState {
                in_flight: 0,
                stopped: false,
            }),
            changed: Condvar::new(),
            limit,
        }
    }

    /// Waits for room; `false` once the scan is over.
    fn enter(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while state.in_flight >= self.limit && !state.stopped {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.in_flight += 1;
        !state.stopped
    }

    fn leave(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.in_flight = state.in_flight.saturating_sub(1);
        self.changed.notify_one();
    }

    fn stop(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stopped = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{DaemonStopped, Event};
    use crate::{OpenOptions, SCHEMA_VERSION, SledLog};
    use chrono::{DateTime, Utc};

    fn log_of(n: Seq) -> (tempfile::TempDir, SledLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path(), OpenOptions::default()).unwrap();
        let batch: Vec<Envelope> = (1..=n)
            .map(|seq| Envelope {
                seq,
                event_id: uuid::Uuid::from_u128(u128::from(seq)),
                ts: DateTime::<Utc>::from_timestamp_millis(seq as i64).unwrap_or_default(),
                schema_version: SCHEMA_VERSION,
                event: Event::DaemonStopped(DaemonStopped {
                    reason: format!("r{seq}"),
                }),
            })
            .collect();
        log.append(&batch).unwrap();
        (dir, log)
    }

    fn seqs(log: &SledLog, range: RangeInclusive<Seq>, threads: usize) -> Vec<Seq> {
        let mut out = Vec::new();
        scan(
            log,
            range,
            threads,
            |_| {},
            |item| item.map(|env| env.seq).unwrap_or(0),
            |seq| {
                out.push(seq);
                ControlFlow::Continue(())
            },
        );
        out
    }

    #[test]
    fn every_record_comes_once_in_order_whatever_the_threads() {
        let n = 3 * CHUNK as Seq + 17;
        let (_dir, log) = log_of(n);
        for threads in [1, 2, 3, 8] {
            assert_eq!(seqs(&log, 1..=n, threads), (1..=n).collect::<Vec<_>>());
            let middle = 5..=CHUNK as Seq * 2 + 9;
            assert_eq!(
                seqs(&log, middle.clone(), threads),
                middle.collect::<Vec<_>>()
            );
            assert_eq!(seqs(&log, 0..=Seq::MAX, threads).len() as u64, n);
            assert!(seqs(&log, n + 1..=n + 5, threads).is_empty());
        }
    }

    #[test]
    fn the_consumer_can_stop_early() {
        let n = 4 * CHUNK as Seq;
        let (_dir, log) = log_of(n);
        for threads in [1, 2] {
            let mut seen = 0;
            scan(
                &log,
                1..=n,
                threads,
                |_| {},
                |item| item.is_ok(),
                |_| {
                    seen += 1;
                    if seen == CHUNK + 3 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                },
            );
            assert_eq!(seen, CHUNK + 3);
        }
    }
}
