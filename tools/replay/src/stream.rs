//! Cluster mode (PROTOCOL.md §19): a JetStream stream as a log `car-replay` reads.
//!
//! Every command reads a sled log (its scans, raw records and sizes are sled's), so the
//! stream is copied, event by event with its seq, time and id unchanged, into a sled log:
//! `export --to DIR` keeps that copy as a data directory, and `--nats` with any other
//! command makes it in a temporary directory, runs the command on it and removes it. The
//! audit is then the very same code as a sled directory's. A hole or an undecodable message
//! in the stream stops the copy as corruption naming its seq (exit 4).
//!
//! The stream is opened read-only ([`JetStreamOptions::read_only`]): a missing stream is
//! reported, never created, and nothing is published.

use std::path::{Path, PathBuf};

use car_events::log::{JetStreamLog, JetStreamOptions};
use car_events::{EventLog, LogError, OpenOptions, Seq, SledLog};

use crate::exit::Error;

/// Events copied per sled append: large enough that a copy costs little more than reading,
/// small enough to keep memory flat on a long stream.
const EXPORT_BATCH: usize = 4096;

/// Copies stream `stream` at `urls` into a new sled log in `data_dir/log`; returns the
/// number of events copied.
pub fn export(urls: &[String], stream: &str, data_dir: &Path) -> Result<Seq, Error> {
    let log_dir = data_dir.join("log");
    if log_dir.exists() {
        return Err(Error::Usage(format!(
            "{} already holds a log: export into a new directory",
            data_dir.display()
        )));
    }
    let mut options = JetStreamOptions::new(urls.to_vec(), stream);
    options.read_only = true;
    // An audit reads whatever the stream is; the replica floor is the daemon's concern.
    options.allow_unsafe_stream = true;
    options.client_name = Some("car-replay".into());
    let source = JetStreamLog::open(options).map_err(|err| match err {
        LogError::Corrupt(codec) => Error::Corrupt {
            seq: codec.seq(),
            reason: codec.to_string(),
        },
        other => Error::NoLog(format!("stream {stream} at {}: {other}", urls.join(","))),
    })?;
    let head = source.head();
    std::fs::create_dir_all(data_dir)
        .map_err(|e| Error::Io(format!("creating {}: {e}", data_dir.display())))?;
    let target = SledLog::open(&log_dir, OpenOptions::default())
        .map_err(|e| Error::Io(format!("creating the log in {}: {e}", log_dir.display())))?;
    let write = |batch: &[car_events::Envelope]| {
        target
            .append(batch)
            .map(|_| ())
            .map_err(|e| Error::Io(format!("writing {}: {e}", log_dir.display())))
    };
    let mut batch = Vec::with_capacity(EXPORT_BATCH);
    let mut expected: Seq = 1;
    for env in source.read_from(1) {
        let env = env.map_err(|err| match err {
            LogError::Corrupt(codec) => Error::Corrupt {
                seq: codec.seq(),
                reason: codec.to_string(),
            },
            other => Error::Corrupt {
                seq: expected,
                reason: other.to_string(),
            },
        })?;
        if env.seq > head {
            break;
        }
        if env.seq != expected {
            return Err(Error::Corrupt {
                seq: expected,
                reason: format!("the stream skips from seq {} to {}", expected - 1, env.seq),
            });
        }
        expected += 1;
        batch.push(env);
        if batch.len() == EXPORT_BATCH {
            write(&batch)?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        write(&batch)?;
    }
    if expected - 1 != head {
        return Err(Error::Corrupt {
            seq: expected,
            reason: format!(
                "the stream ends at seq {} before its head {head}",
                expected - 1
            ),
        });
    }
    Ok(head)
}

/// A temporary data directory holding a copy of the stream, removed when dropped.
#[derive(Debug)]
pub struct TempCopy {
    dir: PathBuf,
}

impl TempCopy {
    /// Copies the stream into a fresh directory under the system's temporary directory.
    pub fn make(urls: &[String], stream: &str) -> Result<Self, Error> {
        let unique = format!(
            "car-replay-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let copy = Self {
            dir: std::env::temp_dir().join(unique),
        };
        export(urls, stream, &copy.dir)?;
        Ok(copy)
    }

    /// The copy's data directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TempCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
