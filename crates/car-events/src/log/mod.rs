//! The append-only event log: one trait, three implementations.
//!
//! [`EventLog`] is raw sequenced storage, like raft-rs's `Storage`: it stores envelopes
//! that already carry their seq and time, refuses anything that is not exactly the next
//! seq, returns from [`EventLog::append`] only once the batch is durable, and announces its
//! head. Batching many appenders into one durable write is the job of the single
//! [`crate::Writer`] above it, not of the storage.
//!
//! - [`SledLog`]: the daemon's log, in sled, key = big-endian seq.
//! - [`JetStreamLog`]: cluster mode (PROTOCOL.md §19): a NATS JetStream stream that several
//!   gateways append to. Its appends are conditional: one whose first seq is no longer the
//!   stream's next (another gateway appended first) fails with [`LogError::Conflict`], and
//!   its head moves for events other gateways appended ([`EventLog::is_shared`]).
//! - [`MemLog`]: the same contract in memory, for every other crate's tests, with fault
//!   injection for the "disk full" paths and "foreign" appends behind a writer's back.

mod durable;
pub mod jetstream;
mod mem;
mod sled;
mod space;

use std::fmt;
use std::path::PathBuf;

use tokio::sync::watch;

pub use self::jetstream::{JetStreamLog, JetStreamOptions};
pub use self::mem::MemLog;
pub use self::sled::{OpenOptions, SledLog, TailRepair};

use crate::codec::CodecError;
use crate::envelope::{Envelope, Seq, SeqRange};

/// What can go wrong with the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Another process holds the log.
    #[error("the event log in {dir} is in use by another process{}", holder_suffix(*.pid))]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// The pid of the holder, when known.
        pid: Option<u32>,
    },
    /// The directory does not hold an event log (and creation was not asked for).
    #[error("{dir} does not hold a car event log{}", reason_suffix(.reason))]
    NotALog {
        /// The directory.
        dir: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// A stored record is damaged where it cannot be repaired (anywhere but the tail).
    #[error("corrupt event log: {0}")]
    Corrupt(#[from] CodecError),
    /// The log has a hole or goes backwards.
    #[error("corrupt event log: expected seq {expected}, found seq {found}")]
    Gap {
        /// The seq that should have come next.
        expected: Seq,
        /// The seq found.
        found: Seq,
    },
    /// An append did not start at the next seq or was not contiguous (a caller bug).
    #[error("append out of sequence: expected seq {expected}, got seq {got}")]
    OutOfSequence {
        /// The next seq of the log.
        expected: Seq,
        /// The seq offered.
        got: Seq,
    },
    /// The storage failed (disk full, I/O error). The failed batch is not in the log.
    #[error("event log I/O error: {0}")]
    Io(String),
    /// The disk has no room for the batch (see `space.rs`): it was refused before anything
    /// was written, and appends go on once space is freed.
    #[error(
        "the disk holding the event log is full: {} free, {} needed; nothing was written, and writes resume once space is freed",
        mib(*.free),
        mib(*.needed)
    )]
    DiskFull {
        /// Bytes available.
        free: u64,
        /// Bytes the batch needs, with the reserve.
        needed: u64,
    },
    /// The log was opened read-only ([`OpenOptions::read_only`]); appends are refused.
    #[error("the event log in {dir} was opened read-only")]
    ReadOnly {
        /// The directory of the log.
        dir: PathBuf,
    },
    /// An earlier failure left the storage in an unknown state; appends are refused until
    /// the log is reopened (the daemon restarted). Reads of durable events still work
    /// where the storage still reads.
    #[error(
        "the event log refuses writes until it is reopened (restart car-server), after an earlier failure: {0}"
    )]
    Poisoned(String),
    /// A shared log moved on: another writer appended first, up to `head`. Nothing of the
    /// batch is in the log; fold the log up to `head` and decide again.
    #[error("another writer appended first: the log's head is now seq {head}")]
    Conflict {
        /// The log's head as the refusal named it (the local view may lag behind it).
        head: Seq,
    },
    /// The log's servers cannot be reached (or did not acknowledge in time). Reads of what
    /// was already read keep working; appends resume once the servers are back.
    #[error("the event log is unavailable: {0}")]
    Unavailable(String),
    /// The log's servers or stream do not meet what the log needs (a server too old, a
    /// stream that could lose events, a bad address): refused at open.
    #[error("{0}")]
    Unfit(String),
    /// More events in one append than the log takes at once ([`EventLog::max_batch_events`]).
    #[error("an append of {events} events exceeds the log's limit of {max} per append")]
    BatchTooLarge {
        /// Events offered.
        events: usize,
        /// The limit.
        max: usize,
    },
}

impl LogError {
    /// Whether this failure is the storage's (a full disk, an I/O error, a stalled or
    /// poisoned log) rather than a caller's mistake or damage found in the records.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            LogError::Io(_)
                | LogError::DiskFull { .. }
                | LogError::Poisoned(_)
                | LogError::Unavailable(_)
        )
    }
}

/// `n` bytes in MiB, for messages.
fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}

fn holder_suffix(pid: Option<u32>) -> String {
    pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

/// An ordered iterator over stored events.
pub type LogIter<'a> = Box<dyn Iterator<Item = Result<Envelope, LogError>> + Send + 'a>;

/// An ordered iterator over stored records, undecoded.
pub type RawIter<'a> = Box<dyn Iterator<Item = Result<(Seq, RawRecord), LogError>> + Send + 'a>;

/// A stored record's bytes, undecoded and unverified (shared with the storage's cache,
/// not copied). Decode with [`crate::codec::decode`].
#[derive(Debug, Clone)]
pub struct RawRecord(RawBytes);

#[derive(Debug, Clone)]
enum RawBytes {
    Sled(::sled::IVec),
    Shared(std::sync::Arc<Vec<u8>>),
}

impl RawRecord {
    fn sled(bytes: ::sled::IVec) -> Self {
        Self(RawBytes::Sled(bytes))
    }

    fn shared(bytes: std::sync::Arc<Vec<u8>>) -> Self {
        Self(RawBytes::Shared(bytes))
    }
}

impl std::ops::Deref for RawRecord {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            RawBytes::Sled(bytes) => bytes,
            RawBytes::Shared(bytes) => bytes,
        }
    }
}

/// Durable, sequenced, append-only storage of envelopes.
pub trait EventLog: Send + Sync + fmt::Debug + 'static {
    /// Appends a batch whose seqs are exactly `head + 1 ..`, contiguous. Returns once every
    /// envelope in it is durable. On error, none of the batch is in the log and the head has
    /// not moved.
    fn append(&self, batch: &[Envelope]) -> Result<SeqRange, LogError>;

    /// The stored records from `from` (inclusive) to the head, in seq order, undecoded
    /// (for scans that decode elsewhere: see [`crate::scan`]). A key that is not a seq is
    /// an error item.
    fn raw_from(&self, from: Seq) -> RawIter<'_>;

    /// The events from `from` (inclusive) to the head, in seq order. Reading from 0 or 1
    /// reads everything. A damaged record is an error item naming its seq.
    fn read_from(&self, from: Seq) -> LogIter<'_> {
        Box::new(self.raw_from(from).map(|raw| {
            let (seq, bytes) = raw?;
            Ok(crate::codec::decode(seq, &bytes)?)
        }))
    }

    /// One event, `None` past the head.
    fn get(&self, seq: Seq) -> Result<Option<Envelope>, LogError> {
        match self.read_from(seq).next() {
            Some(Ok(env)) if env.seq == seq => Ok(Some(env)),
            Some(Ok(_)) | None => Ok(None),
            Some(Err(e)) => Err(e),
        }
    }

    /// Whether the storage can take a batch like the last one now. The writer asks before
    /// it decides a batch, so that a full disk refuses work before any of it is folded
    /// (cheap: one `statvfs` for [`SledLog`]). [`EventLog::append`] checks the real batch
    /// again.
    fn admit_next(&self) -> Result<(), LogError> {
        Ok(())
    }

    /// The most events one [`EventLog::append`] takes; the writer cuts its batches to fit.
    fn max_batch_events(&self) -> usize {
        usize::MAX
    }

    /// Whether other writers append to this log too, so that its head can move without this
    /// process appending and an append can fail with [`LogError::Conflict`]. False for a
    /// log a process holds alone (sled, memory).
    fn is_shared(&self) -> bool {
        false
    }

    /// The seq of the last durable event (0 when empty). For a shared log, events of
    /// other writers count as soon as this process has them.
    fn head(&self) -> Seq;

    /// A receiver of the head; it changes after every durable append. Use
    /// [`wait_past`] to wait for the head to move past a seq.
    fn watch_head(&self) -> watch::Receiver<Seq>;

    /// Bytes the log takes on disk (0 for memory), for statistics.
    fn size_on_disk(&self) -> u64 {
        0
    }
}

/// Waits until the head in `head` is greater than `seq`; returns the head, or `None` once
/// the log is gone (the sender dropped).
pub async fn wait_past(head: &mut watch::Receiver<Seq>, seq: Seq) -> Option<Seq> {
    head.wait_for(|h| *h > seq).await.ok().map(|h| *h)
}

/// Checks that `batch` is exactly the next `batch.len()` seqs after `head`, and returns
/// the range it takes: the first check of every [`EventLog::append`] implementation.
pub fn check_sequence(head: Seq, batch: &[Envelope]) -> Result<SeqRange, LogError> {
    for (i, env) in batch.iter().enumerate() {
        let expected = head + 1 + i as Seq;
        if env.seq != expected {
            return Err(LogError::OutOfSequence {
                expected,
                got: env.seq,
            });
        }
    }
    Ok(SeqRange {
        first: head + 1,
        count: batch.len() as u64,
    })
}

/// Verifies that a stream of envelopes is gapless starting at `first`.
#[derive(Debug)]
pub struct GaplessCheck {
    next: Seq,
}

impl GaplessCheck {
    /// Expects `first` next.
    pub fn starting_at(first: Seq) -> Self {
        Self { next: first }
    }

    /// Checks one seq.
    pub fn check(&mut self, seq: Seq) -> Result<(), LogError> {
        if seq != self.next {
            return Err(LogError::Gap {
                expected: self.next,
                found: seq,
            });
        }
        self.next += 1;
        Ok(())
    }
}
