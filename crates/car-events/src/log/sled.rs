//! [`SledLog`]: the daemon's durable log in sled.
//!
//! Layout: tree `events` maps the big-endian seq (so sled's key order is seq order) to the
//! encoded record ([`crate::codec`]); tree `meta` holds a format marker so a directory that
//! is some other sled database is refused rather than misread.
//!
//! sled 0.34 facts this relies on:
//! - `apply_batch` is atomic: after a crash, a batch is in the log entirely or not at all;
//! - an insert is *not* durable when it returns, only `flush` makes it so, and one flush
//!   covers every write before it. So `append` writes the batch, flushes once, and only
//!   then moves the head; readers never see past the head, so nobody observes a record that
//!   a crash could still take back;
//! - but on Linux sled's `flush` ends in `sync_file_range`, not `fsync`: the data is
//!   written out, yet neither the file's metadata (its growing size) nor the disk's write
//!   cache is flushed, so a power cut or kernel crash could still take an acknowledged
//!   batch back (sled only `fsync`s from its periodic flusher, which we turn off). Every
//!   flush is therefore followed by `fdatasync` of sled's `db` file, and before that an
//!   `fsync` of every blob file sled wrote (it never syncs those) ([`super::durable`]);
//!   one per batch, which the writer's group commit amortises;
//! - a failed flush leaves the batch in sled's page cache, where a later flush would make
//!   it durable after we reported failure. `append` therefore removes the failed batch
//!   again;
//! - after a failed write sled is unusable until reopened: it sets a database-wide error,
//!   every later write fails, and a later `flush` (ours, or the one sled runs when its last
//!   handle is dropped) can wait forever for a buffer that will never be written. So:
//!   the free-space guard ([`super::space`]) refuses a batch the disk has no room for
//!   before sled sees it (appends resume by themselves once space is freed); any storage
//!   error poisons the log (appends are refused at once, naming the cause, until a
//!   restart); every write and flush runs on the log's own I/O thread, and an append
//!   whose write does not finish within [`OpenOptions::stall_timeout`] poisons the log
//!   instead of blocking its caller; and a poisoned log's sled handles are closed on a
//!   thread of their own (their last drop flushes), waited for at most a few seconds, so
//!   a daemon stops within seconds whatever the disk does;
//! - sled 0.34 reads a half-written `snap.*.generating` snapshot at open and then refuses
//!   the database as corrupt; such files are removed and the open retried
//!   ([`remove_interrupted_snapshots`]);
//! - sled takes an exclusive file lock on open, so a second process gets a clear
//!   [`LogError::Locked`] naming the directory and, where known, the holder's pid.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

use super::durable::{DiskSync, SyncCounts};
use super::space::SpaceGuard;
use super::{EventLog, LogError, RawIter, RawRecord, check_sequence};
use crate::codec::{self, CodecError};
use crate::envelope::{Envelope, Seq, SeqRange};

/// The marker stored in the `meta` tree; a directory without it is not our log.
const FORMAT_MARKER: &[u8] = b"car-event-log/1";
/// The `meta` key of the marker.
const FORMAT_KEY: &[u8] = b"format";
/// A file beside sled's own, naming the process that holds the log, for the error a
/// second opener gets. (sled's lock itself is the authority; this is only a label.)
const HOLDER_FILE: &str = "holder.pid";
/// sled's page cache. sled's default (1 GiB) is more than the daemon needs: the hot part of
/// the log is the recent tail, which the writer also caches.
const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;
/// How long [`SledLog::open`] waits for a lock held by nobody recorded (see [`open_db`]).
const RELEASE_WAIT: Duration = Duration::from_secs(2);
/// The default [`OpenOptions::own_lock_wait`]: a handle this process dropped is let go by
/// sled's I/O threads within milliseconds on a quiet machine; a busy 2-core machine running
/// a parallel build was seen to need over a second.
const OWN_RELEASE_WAIT: Duration = Duration::from_secs(30);
/// The default [`OpenOptions::stall_timeout`]: far above any flush of a healthy disk (the
/// slowest seen on a loaded CI machine was under 2 s), so only a storage that stopped
/// answering trips it.
const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How to open a [`SledLog`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Create the log if the directory holds none (the daemon); `false` refuses with
    /// [`LogError::NotALog`] (auditing tools, which must never create a log).
    pub create: bool,
    /// sled's page cache size in bytes.
    pub cache_bytes: u64,
    /// Open for reading only (auditing tools such as `car-replay`): implies `create:
    /// false`; a damaged last record is left in place (it reads back as an error item)
    /// instead of being repaired; the holder label is neither written nor removed; appends
    /// are refused ([`LogError::ReadOnly`]). sled itself may still update its own
    /// bookkeeping files (its snapshot) when it opens a database; the records are never
    /// touched.
    pub read_only: bool,
    /// Free disk space kept in reserve: an append that would leave less is refused with
    /// [`LogError::DiskFull`] before sled sees it. `None`: a twentieth of the file system,
    /// between 1 and 64 MiB (see `space.rs`).
    pub min_free_bytes: Option<u64>,
    /// An append whose write and flush take longer than this is abandoned: the log is
    /// poisoned (appends refused until a restart) rather than block its caller forever on
    /// a storage that stopped answering.
    pub stall_timeout: Duration,
    /// How long to wait for a lock whose recorded holder is this very process (a handle on
    /// the same directory that is being dropped, or is about to be) before refusing with
    /// [`LogError::Locked`]. Another process's lock is refused at once.
    pub own_lock_wait: Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            create: true,
            cache_bytes: DEFAULT_CACHE_BYTES,
            read_only: false,
            min_free_bytes: None,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            own_lock_wait: OWN_RELEASE_WAIT,
        }
    }
}

/// A damaged last record dropped at open: the trace of a crash in the middle of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailRepair {
    /// The seq of the dropped record.
    pub seq: Seq,
    /// Its size in bytes.
    pub bytes: usize,
    /// Why it could not be read.
    pub reason: String,
}

impl std::fmt::Display for TailRepair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dropped the damaged last record (seq {}, {} bytes): {}",
            self.seq, self.bytes, self.reason
        )
    }
}

/// The event log in a sled database.
#[derive(Debug)]
pub struct SledLog {
    dir: PathBuf,
    /// sled's handles; taken only by `Drop`, which may have to close them on another
    /// thread (see [`close_in_background`]).
    sled: Option<Handles>,
    head: watch::Sender<Seq>,
    /// Serialises appends (there is one writer, but the contract must not depend on it)
    /// and holds the reason appends are refused after an unrecoverable failure.
    append_lock: Mutex<Option<String>>,
    tail_repair: Option<TailRepair>,
    /// Opened with [`OpenOptions::read_only`].
    read_only: bool,
    /// Refuses what the disk has no room for.
    space: SpaceGuard,
    /// Runs every write and flush (see the module docs); `None` when read-only.
    io: Option<IoThread>,
    stall_timeout: Duration,
    /// The syncs made so far (for tests).
    syncs: Arc<SyncCounts>,
}

/// The database and its `events` tree.
#[derive(Debug)]
struct Handles {
    db: sled::Db,
    events: sled::Tree,
}

/// How long `Drop` waits for sled to close after a storage failure before leaving it to
/// the process's exit: a daemon asked to stop must stop within seconds.
const CLOSE_AFTER_FAILURE_WAIT: Duration = Duration::from_secs(3);

/// What the log's I/O thread does.
enum IoJob {
    /// Write the batch and make it durable.
    Append(sled::Batch),
    /// Make sled's own bookkeeping durable (at drop).
    Flush,
}

type IoReply = mpsc::SyncSender<Result<(), LogError>>;

/// The thread that runs every sled write and flush, so that a storage that stops answering
/// blocks only this thread, never the caller (see the module docs).
#[derive(Debug)]
struct IoThread {
    jobs: mpsc::SyncSender<(IoJob, IoReply)>,
    handle: thread::JoinHandle<()>,
}

impl IoThread {
    fn spawn(db: sled::Db, events: sled::Tree, sync: DiskSync) -> Result<Self, LogError> {
        let (jobs, rx) = mpsc::sync_channel::<(IoJob, IoReply)>(1);
        let handle = thread::Builder::new()
            .name("car-log-io".into())
            .spawn(move || {
                for (job, reply) in rx {
                    let done = match job {
                        IoJob::Append(batch) => events
                            .apply_batch(batch)
                            .map_err(io_error)
                            .and_then(|()| sync.flush(&db)),
                        IoJob::Flush => db.flush().map(drop).map_err(io_error),
                    };
                    let _ = reply.send(done);
                }
                // The last drop of sled's handles flushes; after a failure that may never
                // return, which is why this thread, not a caller, may be the one to do it.
                drop((events, db));
            })
            .map_err(|e| LogError::Io(format!("cannot start the event log's I/O thread: {e}")))?;
        Ok(Self { jobs, handle })
    }

    /// Runs `job`, waiting at most `timeout`; `None` when it did not finish in time.
    fn run(&self, job: IoJob, timeout: Duration) -> Option<Result<(), LogError>> {
        let (reply, done) = mpsc::sync_channel(1);
        if self.jobs.send((job, reply)).is_err() {
            return Some(Err(LogError::Io(
                "the event log's I/O thread has stopped".into(),
            )));
        }
        match done.recv_timeout(timeout) {
            Ok(result) => Some(result),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => Some(Err(LogError::Io(
                "the event log's I/O thread has stopped".into(),
            ))),
        }
    }
}

fn key(seq: Seq) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(key: &[u8]) -> Option<Seq> {
    Some(Seq::from_be_bytes(key.try_into().ok()?))
}

fn io_error(err: sled::Error) -> LogError {
    LogError::Io(err.to_string())
}

impl SledLog {
    /// Opens (or creates) the log in `dir`, verifying its tail.
    pub fn open(dir: impl AsRef<Path>, options: OpenOptions) -> Result<Self, LogError> {
        let dir = dir.as_ref().to_path_buf();
        let create = options.create && !options.read_only;
        let exists = dir.join("db").is_file() && dir.join("conf").is_file();
        if !exists && !create {
            let reason = if dir.exists() {
                "no sled database in it".to_owned()
            } else {
                "no such directory".to_owned()
            };
            return Err(LogError::NotALog { dir, reason });
        }
        let db = open_db(&dir, &options)?;
        if !options.read_only {
            write_holder(&dir);
        }
        let sync = DiskSync::open(&dir, options.read_only)?;
        let space = SpaceGuard::new(&dir, options.min_free_bytes);

        if !create && !db.tree_names().iter().any(|name| name.as_ref() == b"meta") {
            // Checked before `open_tree`, which would create the tree in someone else's
            // database.
            return Err(LogError::NotALog {
                dir,
                reason: "a sled database without the car format marker".into(),
            });
        }
        let meta = db.open_tree("meta").map_err(io_error)?;
        let events = db.open_tree("events").map_err(io_error)?;
        match meta.get(FORMAT_KEY).map_err(io_error)? {
            Some(marker) if marker.as_ref() == FORMAT_MARKER => {}
            Some(other) => {
                return Err(LogError::NotALog {
                    dir,
                    reason: format!(
                        "unknown format marker {:?}",
                        String::from_utf8_lossy(&other)
                    ),
                });
            }
            None if events.is_empty() && create => {
                meta.insert(FORMAT_KEY, FORMAT_MARKER).map_err(io_error)?;
                sync.flush(&db)?;
            }
            None => {
                return Err(LogError::NotALog {
                    dir,
                    reason: "a sled database without the car format marker".into(),
                });
            }
        }

        let tail_repair = if options.read_only {
            None
        } else {
            verify_tail(&events)?
        };
        if tail_repair.is_some() {
            sync.flush(&db)?;
        }
        let head = match events.last().map_err(io_error)? {
            Some((k, _)) => seq_of(&k).ok_or_else(|| bad_key(&k))?,
            None => 0,
        };
        let syncs = sync.counts();
        let io = if options.read_only {
            None
        } else {
            Some(IoThread::spawn(db.clone(), events.clone(), sync)?)
        };
        Ok(Self {
            dir,
            sled: Some(Handles { db, events }),
            head: watch::Sender::new(head),
            append_lock: Mutex::new(None),
            tail_repair,
            read_only: options.read_only,
            space,
            io,
            stall_timeout: options.stall_timeout,
            syncs,
        })
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What opening had to repair, if anything.
    pub fn tail_repair(&self) -> Option<&TailRepair> {
        self.tail_repair.as_ref()
    }

    /// The stored bytes of `seq`, unverified (for tools that inspect damage).
    pub fn raw(&self, seq: Seq) -> Result<Option<Vec<u8>>, LogError> {
        if seq > self.head() {
            return Ok(None);
        }
        Ok(self
            .events()
            .get(key(seq))
            .map_err(io_error)?
            .map(|v| v.to_vec()))
    }

    fn events(&self) -> &sled::Tree {
        &self.handles().events
    }

    fn handles(&self) -> &Handles {
        self.sled
            .as_ref()
            .expect("sled's handles are taken only by Drop")
    }

    /// The syncs made so far: `(fdatasyncs of sled's db file, blob files fsynced)`, one of
    /// the first per durable append (for benchmarks and tests).
    pub fn sync_counts(&self) -> (u64, u64) {
        (
            self.syncs.data.load(Ordering::Relaxed),
            self.syncs.blobs.load(Ordering::Relaxed),
        )
    }

    /// Whether the log refuses appends after an unrecoverable failure.
    pub fn is_poisoned(&self) -> bool {
        self.append_lock.lock().is_some()
    }

    /// Writes and flushes `batch` on the I/O thread, unless the disk has no room for it.
    fn try_append(&self, batch: &[Envelope]) -> Result<(), Failure> {
        let mut writes = sled::Batch::default();
        let mut sizes = Vec::with_capacity(batch.len());
        for env in batch {
            let record = codec::encode(env).map_err(|e| Failure::Refused(e.into()))?;
            sizes.push(record.len() as u64);
            writes.insert(&key(env.seq), record);
        }
        self.space.admit(&sizes).map_err(Failure::Refused)?;
        let io = self.io.as_ref().ok_or_else(|| {
            Failure::Refused(LogError::ReadOnly {
                dir: self.dir.clone(),
            })
        })?;
        match io.run(IoJob::Append(writes), self.stall_timeout) {
            Some(Ok(())) => Ok(()),
            Some(Err(err)) => Err(Failure::Storage(err)),
            None => Err(Failure::Stalled),
        }
    }

    fn poison(&self, slot: &mut Option<String>, reason: String) {
        tracing::error!(dir = %self.dir.display(), %reason, "event log poisoned: appends are refused until car-server is restarted");
        *slot = Some(reason);
    }

    /// Takes a failed batch back out of sled's cache, so no later flush makes it durable.
    fn roll_back(&self, batch: &[Envelope]) -> Result<(), sled::Error> {
        let mut removals = sled::Batch::default();
        for env in batch {
            removals.remove(&key(env.seq));
        }
        self.events().apply_batch(removals)
    }
}

/// Why [`SledLog::try_append`] failed.
enum Failure {
    /// Refused before anything was written (a full disk, an encoding error).
    Refused(LogError),
    /// sled or the sync failed: the storage's state is unknown.
    Storage(LogError),
    /// The write did not finish within the stall timeout.
    Stalled,
}

impl EventLog for SledLog {
    fn append(&self, batch: &[Envelope]) -> Result<SeqRange, LogError> {
        if self.read_only {
            return Err(LogError::ReadOnly {
                dir: self.dir.clone(),
            });
        }
        let mut poisoned = self.append_lock.lock();
        if let Some(reason) = poisoned.as_ref() {
            return Err(LogError::Poisoned(reason.clone()));
        }
        let range = check_sequence(self.head(), batch)?;
        if batch.is_empty() {
            return Ok(range);
        }
        match self.try_append(batch) {
            Ok(()) => {}
            Err(Failure::Refused(err)) => return Err(err),
            Err(Failure::Storage(err)) => {
                // The batch may sit in sled's cache, where a later flush would make it
                // durable: take it out again (sled usually refuses this too, after a
                // failed write), and refuse every later append: sled is unusable until
                // reopened.
                let reason = match self.roll_back(batch) {
                    Ok(()) => err.to_string(),
                    Err(again) => {
                        format!("{err}; rolling the failed batch back also failed: {again}")
                    }
                };
                self.poison(&mut poisoned, reason);
                return Err(err);
            }
            Err(Failure::Stalled) => {
                // The I/O thread is still inside sled: leave it there. The batch is not
                // acknowledged (the head does not move); whether it reaches the disk is
                // unknown, as for any write whose answer was lost.
                let reason = format!(
                    "a write to the event log did not finish within {} s (the disk may be full or failing)",
                    self.stall_timeout.as_secs_f64()
                );
                self.poison(&mut poisoned, reason.clone());
                return Err(LogError::Poisoned(reason));
            }
        }
        if let Some(last) = range.last() {
            self.head.send_replace(last);
        }
        Ok(range)
    }

    fn admit_next(&self) -> Result<(), LogError> {
        if let Some(reason) = self.append_lock.lock().as_ref() {
            return Err(LogError::Poisoned(reason.clone()));
        }
        self.space.admit_next()
    }

    fn raw_from(&self, from: Seq) -> RawIter<'_> {
        let head = self.head();
        let from = from.max(1);
        if from > head {
            return Box::new(std::iter::empty());
        }
        Box::new(self.events().range(key(from)..=key(head)).map(|item| {
            let (k, v) = item.map_err(io_error)?;
            let seq = seq_of(&k).ok_or_else(|| bad_key(&k))?;
            Ok((seq, RawRecord::sled(v)))
        }))
    }

    fn get(&self, seq: Seq) -> Result<Option<Envelope>, LogError> {
        match self.raw(seq)? {
            Some(bytes) => Ok(Some(codec::decode(seq, &bytes)?)),
            None => Ok(None),
        }
    }

    fn head(&self) -> Seq {
        *self.head.borrow()
    }

    fn watch_head(&self) -> watch::Receiver<Seq> {
        self.head.subscribe()
    }

    fn size_on_disk(&self) -> u64 {
        self.handles().db.size_on_disk().unwrap_or(0)
    }
}

impl Drop for SledLog {
    fn drop(&mut self) {
        let Some(handles) = self.sled.take() else {
            return;
        };
        let Some(io) = self.io.take() else {
            // Read-only: nothing of ours to flush or remove.
            return;
        };
        // Appends were each flushed; this only persists sled's own bookkeeping sooner. It
        // is skipped when sled is known to be unusable, and bounded when it stops answering.
        if !self.is_poisoned() && io.run(IoJob::Flush, self.stall_timeout).is_none() {
            *self.append_lock.get_mut() = Some("the final flush did not finish in time".into());
        }
        if self.is_poisoned() {
            close_in_background(&self.dir, handles, io);
            return;
        }
        drop(io.jobs);
        let _ = io.handle.join();
        drop(handles);
        let _ = fs::remove_file(self.dir.join(HOLDER_FILE));
    }
}

/// Closes a poisoned log's sled handles on a thread of their own, waiting at most
/// [`CLOSE_AFTER_FAILURE_WAIT`]: sled's last drop flushes, and after a storage failure that
/// flush can wait forever (seen with a full tmpfs and large records). Closed in time, the
/// directory can be opened again in this process; otherwise the process's exit ends it.
fn close_in_background(dir: &Path, handles: Handles, io: IoThread) {
    let (closed, wait) = mpsc::sync_channel(1);
    let dir_name = dir.display().to_string();
    let closer = thread::Builder::new()
        .name("car-log-close".into())
        .spawn(move || {
            // The I/O thread may be stuck inside sled (then this waits forever, and the
            // caller stops waiting); otherwise it ends, and the last handle goes here.
            drop(io.jobs);
            let _ = io.handle.join();
            drop(handles);
            let _ = closed.send(());
        });
    let closed_in_time = closer.is_ok() && wait.recv_timeout(CLOSE_AFTER_FAILURE_WAIT).is_ok();
    if closed_in_time {
        let _ = fs::remove_file(dir.join(HOLDER_FILE));
    } else {
        tracing::warn!(dir = %dir_name, "the event log did not close after its storage failed; the process's exit will close it");
    }
}

fn bad_key(key: &[u8]) -> LogError {
    LogError::Corrupt(CodecError::Body {
        seq: 0,
        reason: format!("key of {} bytes is not a seq", key.len()),
    })
}

/// Checks the last record. A damaged last record is what a crash in the middle of a write
/// leaves: it is dropped and reported. If the record before it is damaged too, the damage
/// is not a torn write and opening is refused.
fn verify_tail(events: &sled::Tree) -> Result<Option<TailRepair>, LogError> {
    let Some((last_key, last_value)) = events.last().map_err(io_error)? else {
        return Ok(None);
    };
    let last = seq_of(&last_key).ok_or_else(|| bad_key(&last_key))?;
    let reason = match codec::decode(last, &last_value) {
        Ok(_) => return Ok(None),
        Err(err) => err.to_string(),
    };
    if let Some(item) = events.range(..last_key.clone()).next_back() {
        let (k, v) = item.map_err(io_error)?;
        let seq = seq_of(&k).ok_or_else(|| bad_key(&k))?;
        if seq + 1 != last {
            return Err(LogError::Gap {
                expected: seq + 1,
                found: last,
            });
        }
        codec::decode(seq, &v)?;
    }
    events.remove(last_key).map_err(io_error)?;
    let repair = TailRepair {
        seq: last,
        bytes: last_value.len(),
        reason,
    };
    tracing::warn!(%repair, "event log tail repaired");
    Ok(Some(repair))
}

/// Opens sled, waiting (bounded) for this process's own previous handle to let go.
///
/// sled releases its file lock only when the last of its background I/O threads drops its
/// reference to the database, which can be a moment *after* the last [`SledLog`] on the
/// directory was dropped (rarely after a clean drop; often after an I/O error; and a test
/// that stops a daemon it runs in-process may reopen the log while the daemon's last
/// handle is still being dropped). So a lock held while no holder is recorded
/// ([`HOLDER_FILE`] is written right after a successful open and removed on drop) is
/// retried for up to [`RELEASE_WAIT`], and a lock whose recorded holder is this very
/// process for up to [`OpenOptions::own_lock_wait`]; another process's lock is refused at
/// once.
fn open_db(dir: &Path, options: &OpenOptions) -> Result<sled::Db, LogError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    let mut snapshots_cleared = false;
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_bytes)
            .flush_every_ms(None)
            .open();
        let err = match opened {
            Ok(db) => return Ok(db),
            Err(err) => err,
        };
        // sled takes its file lock before it reads snapshots, so a corruption error means
        // no other process has the log open: an interrupted snapshot is nobody's work.
        if matches!(err, sled::Error::Corruption { .. }) && !snapshots_cleared && !options.read_only
        {
            snapshots_cleared = true;
            if remove_interrupted_snapshots(dir) > 0 {
                continue;
            }
        }
        let waited = started.elapsed();
        match open_error(dir, err) {
            LogError::Locked { pid: None, .. } if waited < RELEASE_WAIT => {}
            LogError::Locked { pid: Some(pid), .. }
                if pid == std::process::id() && waited < options.own_lock_wait => {}
            other => return Err(other),
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Removes `snap.*.generating` files: snapshots whose writer died before it synced and
/// renamed them. sled 0.34 reads the newest `snap.*` file at open, `.generating` ones
/// included, and refuses the whole database when it is torn (sled issue #1527). A
/// snapshot only shortens recovery; without it sled recovers from the previous snapshot
/// and its log. Returns how many were removed.
fn remove_interrupted_snapshots(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::warn!(dir = %dir.display(), file = %name, "removed an interrupted sled snapshot");
                    removed += 1;
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), file = %name, %e, "cannot remove an interrupted sled snapshot");
                }
            }
        }
    }
    removed
}

fn open_error(dir: &Path, err: sled::Error) -> LogError {
    if let sled::Error::Io(io_err) = &err {
        if io_err.to_string().contains("could not acquire lock") {
            return LogError::Locked {
                dir: dir.to_path_buf(),
                pid: read_holder(dir),
            };
        }
    }
    match err {
        sled::Error::Io(e) if e.kind() == io::ErrorKind::NotFound => LogError::NotALog {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        },
        sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => LogError::NotALog {
            dir: dir.to_path_buf(),
            reason: err.to_string(),
        },
        other => io_error(other),
    }
}

fn write_holder(dir: &Path) {
    let _ = fs::write(dir.join(HOLDER_FILE), std::process::id().to_string());
}

fn read_holder(dir: &Path) -> Option<u32> {
    fs::read_to_string(dir.join(HOLDER_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{DaemonStopped, Event};
    use uuid::Uuid;

    fn data_syncs(log: &SledLog) -> u64 {
        log.sync_counts().0
    }

    fn blob_syncs(log: &SledLog) -> u64 {
        log.sync_counts().1
    }

    fn env(seq: Seq) -> Envelope {
        Envelope {
            seq,
            event_id: Uuid::from_u128(seq.into()),
            ts: chrono::DateTime::<chrono::Utc>::from_timestamp_millis(1_000 * seq as i64).unwrap(),
            schema_version: crate::SCHEMA_VERSION,
            event: Event::DaemonStopped(DaemonStopped {
                reason: format!("r{seq}"),
            }),
        }
    }

    #[test]
    fn appends_reopen_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SledLog::open(dir.path(), OpenOptions::default()).unwrap();
            assert_eq!(log.head(), 0);
            let range = log.append(&[env(1), env(2)]).unwrap();
            assert_eq!((range.first, range.count), (1, 2));
            assert!(matches!(
                log.append(&[env(4)]),
                Err(LogError::OutOfSequence {
                    expected: 3,
                    got: 4
                })
            ));
            log.append(&[env(3)]).unwrap();
        }
        let log = SledLog::open(dir.path(), OpenOptions::default()).unwrap();
        assert_eq!(log.head(), 3);
        let all: Vec<_> = log.read_from(2).map(|e| e.unwrap()).collect();
        assert_eq!(all, vec![env(2), env(3)]);
        assert_eq!(log.get(3).unwrap(), Some(env(3)));
        assert_eq!(log.get(4).unwrap(), None);
    }

    /// Regression: sled's `flush` on Linux is only `sync_file_range` (no metadata, no disk
    /// cache flush), so appends were acknowledged without ever being `fsync`ed. Every
    /// append must now end in exactly one `fdatasync` of the db file.
    #[test]
    fn every_append_fdatasyncs_the_db_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path(), OpenOptions::default()).unwrap();
        let before = data_syncs(&log);
        log.append(&[env(1), env(2)]).unwrap();
        log.append(&[env(3)]).unwrap();
        assert_eq!(data_syncs(&log) - before, 2);
        // A refused append writes nothing and syncs nothing.
        assert!(log.append(&[env(5)]).is_err());
        assert_eq!(data_syncs(&log) - before, 2);
    }

    /// Regression: sled writes any page over ~128 KiB (a leaf of large records) to its own
    /// file under `blobs/` and never syncs it, so an acknowledged batch of large turns was
    /// not power-cut safe. Every blob file sled creates is now `fsync`ed before the append
    /// returns.
    #[test]
    fn every_blob_file_sled_writes_is_fsynced_before_the_append_returns() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path(), OpenOptions::default()).unwrap();
        let big = |seq: Seq| Envelope {
            event: Event::DaemonStopped(DaemonStopped {
                reason: "x".repeat(300 * 1024),
            }),
            ..env(seq)
        };
        let before = blob_syncs(&log);
        log.append(&[big(1)]).unwrap();
        let blobs = fs::read_dir(dir.path().join("blobs")).unwrap().count();
        assert!(blobs > 0, "a 300 KiB record must be stored as a blob");
        let synced = blob_syncs(&log) - before;
        assert!(synced >= 1, "{blobs} blob files, {synced} synced");
        // Small appends create no blob and sync none.
        let before = blob_syncs(&log);
        log.append(&[env(2)]).unwrap();
        assert_eq!(blob_syncs(&log), before);
        drop(log);
        let log = SledLog::open(dir.path(), OpenOptions::default()).unwrap();
        assert_eq!(log.get(1).unwrap(), Some(big(1)));
    }

    /// Regression: sled 0.34 writes a snapshot to `snap.<lsn>.generating`, syncs it and
    /// renames it; but at open it reads the newest `snap.*` file *including* a
    /// `.generating` one, so a process killed while writing a snapshot (at open, every
    /// million operations, at drop) left a log that refused to open as corrupt (found by
    /// `car-log-soak`: a kill 95 ms into opening a 2-million-event log).
    #[test]
    fn an_interrupted_snapshot_does_not_stop_the_log_from_opening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SledLog::open(dir.path(), OpenOptions::default()).unwrap();
            log.append(&[env(1), env(2), env(3)]).unwrap();
        }
        let torn = dir.path().join("snap.FFFFFFFFFFFFFFFF.generating");
        fs::write(&torn, [0xA5u8; 100]).unwrap();
        let log = SledLog::open(dir.path(), OpenOptions::default()).unwrap();
        assert_eq!(log.head(), 3);
        assert_eq!(log.get(3).unwrap(), Some(env(3)));
        assert!(!torn.exists(), "the interrupted snapshot is removed");
    }

    #[test]
    fn a_second_opener_gets_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _log = SledLog::open(dir.path(), OpenOptions::default()).unwrap();
        let impatient = OpenOptions {
            own_lock_wait: Duration::from_millis(50),
            ..OpenOptions::default()
        };
        let err = SledLog::open(dir.path(), impatient).unwrap_err();
        let pid = std::process::id();
        assert!(matches!(err, LogError::Locked { pid: Some(p), .. } if p == pid));
        let text = err.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains(&format!("pid {pid}")), "{text}");
    }

    #[test]
    fn open_without_create_refuses_what_is_not_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let options = OpenOptions {
            create: false,
            ..OpenOptions::default()
        };
        assert!(matches!(
            SledLog::open(&missing, options.clone()),
            Err(LogError::NotALog { .. })
        ));
        assert!(matches!(
            SledLog::open(dir.path(), options.clone()),
            Err(LogError::NotALog { .. })
        ));
        {
            let other = sled::open(dir.path().join("other")).unwrap();
            other.insert("k", "v").unwrap();
            other.flush().unwrap();
        }
        let err = SledLog::open(dir.path().join("other"), options).unwrap_err();
        assert!(
            err.to_string().contains("without the car format marker"),
            "{err}"
        );
    }

    #[test]
    fn a_damaged_last_record_is_dropped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SledLog::open(dir.path(), OpenOptions::default()).unwrap();
            log.append(&[env(1), env(2), env(3)]).unwrap();
            let mut bad = log.raw(3).unwrap().unwrap();
            let n = bad.len();
            bad[n - 1] ^= 0xff;
            log.events().insert(key(3), bad).unwrap();
        }
        let log = SledLog::open(dir.path(), OpenOptions::default()).unwrap();
        let repair = log.tail_repair().unwrap();
        assert_eq!(repair.seq, 3);
        assert!(repair.reason.contains("checksum"), "{repair}");
        assert_eq!(log.head(), 2);
        log.append(&[env(3)]).unwrap();
        assert_eq!(log.get(3).unwrap(), Some(env(3)));
    }

    /// A read-only open (auditing tools) repairs nothing, labels nothing and appends
    /// nothing: a damaged last record stays where it is and reads back as an error.
    #[test]
    fn a_read_only_open_leaves_a_damaged_tail_in_place_and_refuses_appends() {
        let dir = tempfile::tempdir().unwrap();
        let damaged = {
            let log = SledLog::open(dir.path(), OpenOptions::default()).unwrap();
            log.append(&[env(1), env(2), env(3)]).unwrap();
            let mut bad = log.raw(3).unwrap().unwrap();
            let n = bad.len();
            bad[n - 1] ^= 0xff;
            log.events().insert(key(3), bad.clone()).unwrap();
            bad
        };
        let read_only = OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        };
        {
            let log = SledLog::open(dir.path(), read_only.clone()).unwrap();
            assert!(!dir.path().join(HOLDER_FILE).exists());
            assert_eq!(log.tail_repair(), None);
            assert_eq!(log.head(), 3);
            assert_eq!(log.raw(3).unwrap(), Some(damaged.clone()));
            let read: Vec<_> = log.read_from(1).collect();
            assert!(matches!(&read[2], Err(LogError::Corrupt(e)) if e.seq() == 3));
            let raw: Vec<(Seq, Vec<u8>)> = log
                .raw_from(2)
                .map(|item| item.map(|(seq, bytes)| (seq, bytes.to_vec())).unwrap())
                .collect();
            assert_eq!(
                raw,
                vec![(2, codec::encode(&env(2)).unwrap()), (3, damaged.clone())]
            );
            assert_eq!(log.raw_from(4).count(), 0);
            assert!(matches!(
                log.append(&[env(4)]),
                Err(LogError::ReadOnly { .. })
            ));
        }
        // Still there for the next opener, which repairs it as before.
        let log = SledLog::open(dir.path(), OpenOptions::default()).unwrap();
        assert_eq!(log.tail_repair().map(|r| r.seq), Some(3));
        drop(log);
        // A read-only open never creates a log, and never adds our trees to another
        // sled database.
        let missing = dir.path().join("none");
        assert!(matches!(
            SledLog::open(&missing, read_only.clone()),
            Err(LogError::NotALog { .. })
        ));
        assert!(!missing.exists());
        let other = dir.path().join("other");
        {
            let db = sled::open(&other).unwrap();
            db.insert("k", "v").unwrap();
            db.flush().unwrap();
        }
        assert!(matches!(
            SledLog::open(&other, read_only),
            Err(LogError::NotALog { .. })
        ));
        let db = sled::open(&other).unwrap();
        assert_eq!(db.tree_names(), vec![sled::IVec::from("__sled__default")]);
    }

    /// Regression: sled lets go of its file lock only when its last background I/O thread
    /// drops the database, a moment after the last handle is dropped, so an immediate
    /// reopen in the same process used to fail now and then (about 1 in 100 reopens) with
    /// "in use by another process" and no pid.
    #[test]
    fn reopening_right_after_drop_is_never_refused_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        for seq in 1..=400 {
            let log = SledLog::open(dir.path(), OpenOptions::default())
                .unwrap_or_else(|e| panic!("reopen {seq}: {e}"));
            log.append(&[env(seq)]).unwrap();
        }
        let log = SledLog::open(dir.path(), OpenOptions::default()).unwrap();
        assert_eq!(log.head(), 400);
    }

    /// Regression (issue 9, item 7): a test that stopped an in-process daemon and at once
    /// reopened its log failed under load with "in use by another process (pid <its own
    /// pid>)": the daemon's last handle was still being dropped. An open now waits for a
    /// lock this very process holds.
    #[test]
    fn an_open_waits_for_this_process_to_let_go_of_its_own_lock() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path(), OpenOptions::default()).unwrap();
        log.append(&[env(1)]).unwrap();
        let (opening, started) = std::sync::mpsc::channel();
        let holder = thread::spawn(move || {
            // Hold the log until the other thread is trying to open it.
            started.recv().unwrap();
            thread::sleep(Duration::from_millis(300));
            drop(log);
        });
        opening.send(()).unwrap();
        let reopened = SledLog::open(dir.path(), OpenOptions::default()).unwrap();
        assert_eq!(reopened.head(), 1);
        holder.join().unwrap();
    }

    #[test]
    fn damage_before_the_tail_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SledLog::open(dir.path(), OpenOptions::default()).unwrap();
            log.append(&[env(1), env(2), env(3)]).unwrap();
            log.events().insert(key(2), vec![1, 2, 3]).unwrap();
            log.events().insert(key(3), vec![1, 2, 3]).unwrap();
        }
        let err = SledLog::open(dir.path(), OpenOptions::default()).unwrap_err();
        assert!(err.to_string().contains("seq 2"), "{err}");
    }
}
