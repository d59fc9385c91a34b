//! [`MemLog`]: the event log in memory, for tests of everything above the storage.
//!
//! It stores encoded records, not envelopes, so the codec runs on every append and read
//! exactly as with sled, and tests can damage a record to exercise corruption handling.
//! [`MemLog::fail_next_appends`] makes appends fail with an I/O error;
//! [`MemLog::set_disk_full`] makes the log refuse appends as a full disk does.
//! [`MemLog::shared`] and [`MemLog::other_writer`] model a log several writers append to
//! (cluster mode): appends are conditional ([`LogError::Conflict`] when another writer
//! appended first) and the head moves for every writer's appends, so a test can append
//! "foreign" events behind a [`crate::Writer`]'s back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use parking_lot::RwLock;
use tokio::sync::watch;

use super::{EventLog, LogError, RawIter, RawRecord, check_sequence};
use crate::codec;
use crate::envelope::{Envelope, Seq, SeqRange};

/// Records shared by every handle on one in-memory log (`records[i]` is seq `i + 1`).
type Records = Arc<RwLock<Vec<Arc<Vec<u8>>>>>;

/// An in-memory event log.
#[derive(Debug)]
pub struct MemLog {
    records: Records,
    head: Arc<watch::Sender<Seq>>,
    failures_pending: AtomicU32,
    disk_full: AtomicBool,
    /// Whether other writers append too ([`EventLog::is_shared`]).
    shared: bool,
}

impl Default for MemLog {
    fn default() -> Self {
        Self::new()
    }
}

impl MemLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::over(Records::default())
    }

    /// An empty log that several writers share: see [`MemLog::other_writer`].
    pub fn shared() -> Self {
        Self {
            shared: true,
            ..Self::new()
        }
    }

    /// Another writer's handle on this shared log: same records, same head. Its appends are
    /// "foreign" to a [`crate::Writer`] over this handle, and the other way round.
    pub fn other_writer(&self) -> Self {
        Self {
            records: self.records.clone(),
            head: self.head.clone(),
            failures_pending: AtomicU32::new(0),
            disk_full: AtomicBool::new(false),
            shared: true,
        }
    }

    fn over(records: Records) -> Self {
        let head = records.read().len() as Seq;
        Self {
            records,
            head: Arc::new(watch::Sender::new(head)),
            failures_pending: AtomicU32::new(0),
            disk_full: AtomicBool::new(false),
            shared: false,
        }
    }

    /// A fresh handle on the same records, as if the process restarted and reopened the
    /// log. (Everything appended is durable in memory.) Use one handle at a time.
    pub fn reopen(&self) -> Self {
        Self::over(self.records.clone())
    }

    /// Makes the next `n` appends fail with an I/O error, appending nothing.
    pub fn fail_next_appends(&self, n: u32) {
        self.failures_pending.store(n, Ordering::SeqCst);
    }

    /// While `full`, every append (and [`EventLog::admit_next`]) is refused with
    /// [`LogError::DiskFull`], appending nothing, as the sled log's free-space guard does.
    pub fn set_disk_full(&self, full: bool) {
        self.disk_full.store(full, Ordering::SeqCst);
    }

    fn check_space(&self) -> Result<(), LogError> {
        if self.disk_full.load(Ordering::SeqCst) {
            return Err(LogError::DiskFull { free: 0, needed: 1 });
        }
        Ok(())
    }

    /// Replaces the stored bytes of `seq` (tests of corruption handling). Returns false
    /// when there is no such seq.
    pub fn damage(&self, seq: Seq, bytes: Vec<u8>) -> bool {
        let mut records = self.records.write();
        match seq
            .checked_sub(1)
            .and_then(|i| records.get_mut(usize::try_from(i).ok()?))
        {
            Some(slot) => {
                *slot = Arc::new(bytes);
                true
            }
            None => false,
        }
    }

    /// The stored bytes of `seq`.
    pub fn raw(&self, seq: Seq) -> Option<Arc<Vec<u8>>> {
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.records.read().get(index).cloned()
    }

    fn take_failure(&self) -> bool {
        self.failures_pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

impl EventLog for MemLog {
    fn append(&self, batch: &[Envelope]) -> Result<SeqRange, LogError> {
        let mut encoded = Vec::with_capacity(batch.len());
        for env in batch {
            encoded.push(Arc::new(codec::encode(env)?));
        }
        let mut records = self.records.write();
        let head = records.len() as Seq;
        if self.shared && batch.first().is_some_and(|env| env.seq != head + 1) {
            return Err(LogError::Conflict { head });
        }
        let range = check_sequence(head, batch)?;
        self.check_space()?;
        if self.take_failure() {
            return Err(LogError::Io(
                "injected failure: no space left on device".into(),
            ));
        }
        records.extend(encoded);
        let head = records.len() as Seq;
        drop(records);
        self.head.send_replace(head);
        Ok(range)
    }

    fn admit_next(&self) -> Result<(), LogError> {
        self.check_space()
    }

    fn raw_from(&self, from: Seq) -> RawIter<'_> {
        let mut next = from.max(1);
        Box::new(std::iter::from_fn(move || {
            let bytes = self.raw(next)?;
            let seq = next;
            next += 1;
            Some(Ok((seq, RawRecord::shared(bytes))))
        }))
    }

    fn is_shared(&self) -> bool {
        self.shared
    }

    fn head(&self) -> Seq {
        *self.head.borrow()
    }

    fn watch_head(&self) -> watch::Receiver<Seq> {
        self.head.subscribe()
    }
}
