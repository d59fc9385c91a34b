//! The envelope: an event with its position in the log, identity and time.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::event::Event;

/// A position in the log: starts at 1, +1 per event, gapless, forever. 0 means "before the
/// first event" (an empty log's head).
pub type Seq = u64;

/// The version of the event schema a record was written with. Bumped when the meaning of
/// existing shapes changes in a way readers must know about; new variants alone do not
/// need a bump (old readers fail on them with a clear decode error).
pub const SCHEMA_VERSION: u16 = 1;

/// An event as stored in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Position in the log.
    pub seq: Seq,
    /// Unique id of this event.
    pub event_id: Uuid,
    /// When the event was appended (stamped by the single writer; never goes backwards).
    pub ts: DateTime<Utc>,
    /// [`SCHEMA_VERSION`] at write time.
    pub schema_version: u16,
    /// The fact.
    pub event: Event,
}

/// A contiguous range of seqs, `first ..= last`; empty when `count == 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqRange {
    /// The first seq (for an empty range: the seq the next event would get).
    pub first: Seq,
    /// How many seqs.
    pub count: u64,
}

impl SeqRange {
    /// An empty range positioned at `next`.
    pub fn empty_at(next: Seq) -> Self {
        Self {
            first: next,
            count: 0,
        }
    }

    /// The last seq in the range, `None` when empty.
    pub fn last(&self) -> Option<Seq> {
        (self.count > 0).then(|| self.first + self.count - 1)
    }

    /// One past the last seq.
    pub fn end(&self) -> Seq {
        self.first + self.count
    }

    /// Whether the range holds no seq.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Iterates over the seqs.
    pub fn iter(&self) -> std::ops::Range<Seq> {
        self.first..self.end()
    }
}
