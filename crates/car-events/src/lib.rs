//! car-events: what car records, how it is encoded, and the durable log that keeps it.
//!
//! - [`event`]: the past-tense event vocabulary (frozen shapes) and [`Envelope`].
//! - [`codec`]: the stored record format (version byte, CRC32, bincode 2 body).
//! - [`render`]: the `{seq, ts, kind, data}` JSON rendering.
//! - [`log`]: the [`EventLog`] trait, [`SledLog`] and [`MemLog`].
//! - [`writer`]: the single [`Writer`]: group commit, decisions against the state, the
//!   durable head.
//! - [`receipt`]: `runs.cancel` receipts and their digests (SHA-256 over RFC 8785 JSON);
//! - [`scan`]: ordered scans that decode on other threads (replay, audits);
//! - [`clock`]: injected time and ids, so replays and tests are deterministic.

pub mod clock;
pub mod codec;
pub mod envelope;
pub mod event;
pub mod json_text;
pub mod log;
pub mod receipt;
pub mod render;
pub mod scan;
pub mod writer;

pub use clock::{Clock, IdSource, ManualClock, SeededIds, Stamper, SystemClock};
pub use codec::CodecError;
pub use envelope::{Envelope, SCHEMA_VERSION, Seq, SeqRange};
pub use event::Event;
pub use json_text::JsonText;
pub use log::{EventLog, LogError, MemLog, OpenOptions, SledLog, TailRepair};
pub use render::{EventJson, format_ts};
pub use writer::{Durable, Fold, Pending, ReplayError, WriteError, Writer, WriterThread, replay};
