//! What makes a flushed sled write durable against a power cut, not only against the
//! process dying.
//!
//! sled 0.34's `flush` writes its buffers out and ends in `sync_file_range`, which flushes
//! neither file metadata nor the disk's write cache. Worse, any page larger than a quarter
//! of a segment (~128 KiB: a leaf of ~16 records of 8 KiB, common with model outputs in
//! turns) is written to its own file under `blobs/`, which sled never syncs at all. So after
//! sled's flush, [`DiskSync::flush`]:
//!
//! 1. `fsync`s every blob file sled created since the last flush, and the `blobs/`
//!    directory (so the new entries exist after a power cut), then
//! 2. `fdatasync`s sled's `db` file, which holds the pointers to those blobs.
//!
//! Only then is a batch acknowledged. New blob files are found with inotify rather than by
//! listing `blobs/`, which may hold tens of thousands of files: the kernel queues the name
//! of each file created, and every flush drains the queue. If the queue ever overflows, the
//! whole directory is synced once.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::LogError;

/// Makes sled's writes durable (see the module docs).
#[derive(Debug)]
pub(super) struct DiskSync {
    db_file: fs::File,
    blobs: Option<BlobWatch>,
    counts: Arc<SyncCounts>,
}

/// How many syncs a [`DiskSync`] made (its tests count them).
#[derive(Debug, Default)]
pub(super) struct SyncCounts {
    /// `fdatasync`s of the db file.
    pub(super) data: AtomicU64,
    /// Blob files `fsync`ed.
    pub(super) blobs: AtomicU64,
}

#[derive(Debug)]
struct BlobWatch {
    dir: PathBuf,
    /// Serialises draining: one flush at a time syncs what it drained.
    inotify: Mutex<Inotify>,
}

fn io(what: &str, path: &Path, err: impl std::fmt::Display) -> LogError {
    LogError::Io(format!("{what} {}: {err}", path.display()))
}

impl DiskSync {
    /// Opens sled's `db` file and starts watching `blobs/`; `fsync`s the directories, so a
    /// freshly created database's entries are durable. Read-only logs never write, so they
    /// watch nothing.
    pub(super) fn open(dir: &Path, read_only: bool) -> Result<Self, LogError> {
        let path = dir.join("db");
        let db_file = fs::OpenOptions::new()
            .read(true)
            .write(!read_only) // some platforms sync only writable handles
            .open(&path)
            .map_err(|e| io("opening", &path, e))?;
        if read_only {
            return Ok(Self {
                db_file,
                blobs: None,
                counts: Arc::default(),
            });
        }
        sync_dir(dir)?;
        let blobs = dir.join("blobs");
        fs::create_dir_all(&blobs).map_err(|e| io("creating", &blobs, e))?;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| io("watching", &blobs, e))?;
        inotify
            .add_watch(
                &blobs,
                AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_CLOSE_WRITE,
            )
            .map_err(|e| io("watching", &blobs, e))?;
        sync_dir(&blobs)?;
        Ok(Self {
            db_file,
            blobs: Some(BlobWatch {
                dir: blobs,
                inotify: Mutex::new(inotify),
            }),
            counts: Arc::default(),
        })
    }

    /// Its sync counts.
    pub(super) fn counts(&self) -> Arc<SyncCounts> {
        self.counts.clone()
    }

    /// sled's flush, then the syncs that make it durable.
    pub(super) fn flush(&self, db: &sled::Db) -> Result<(), LogError> {
        db.flush().map_err(|e| LogError::Io(e.to_string()))?;
        if let Some(blobs) = &self.blobs {
            blobs.sync_new(&self.counts)?;
        }
        self.counts.data.fetch_add(1, Ordering::Relaxed);
        self.db_file
            .sync_data()
            .map_err(|e| LogError::Io(format!("fdatasync of the event log: {e}")))
    }
}

impl BlobWatch {
    /// `fsync`s every blob file created since the last call, then the directory.
    fn sync_new(&self, counts: &SyncCounts) -> Result<(), LogError> {
        let inotify = self.inotify.lock();
        let mut names = BTreeSet::new();
        let mut overflowed = false;
        loop {
            match inotify.read_events() {
                Ok(events) => {
                    for event in events {
                        overflowed |= event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW);
                        if let Some(name) = event.name {
                            names.insert(name);
                        }
                    }
                }
                Err(Errno::EAGAIN) => break,
                Err(err) => return Err(io("watching", &self.dir, err)),
            }
        }
        if overflowed {
            tracing::warn!(dir = %self.dir.display(), "blob watch overflowed: syncing every blob");
            for entry in fs::read_dir(&self.dir).map_err(|e| io("listing", &self.dir, e))? {
                let entry = entry.map_err(|e| io("listing", &self.dir, e))?;
                names.insert(entry.file_name());
            }
        }
        if names.is_empty() {
            return Ok(());
        }
        for name in &names {
            let path = self.dir.join(name);
            match fs::File::open(&path) {
                Ok(file) => file.sync_all().map_err(|e| io("fsync of", &path, e))?,
                // Already replaced and removed by sled: nothing of it to keep.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(io("opening", &path, err)),
            }
            counts.blobs.fetch_add(1, Ordering::Relaxed);
        }
        sync_dir(&self.dir)
    }
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing", dir, e))
}
