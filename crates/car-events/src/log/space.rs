//! The free-space guard: an append the disk may not have room for is refused *before* sled
//! sees it.
//!
//! Why: sled 0.34 does not survive running out of space. The first write that fails sets a
//! database-wide error; every later write of that handle fails too, and a later `flush`
//! (ours, or the one sled runs when the last handle is dropped) can wait forever for a
//! buffer that will never be written (found with a full tmpfs and 512 KiB records: the
//! daemon hung in `Drop` after SIGTERM). Only a restart recovers. So the log never lets
//! sled get that far: before every append it asks the file system (`statvfs`) how much
//! room is left, and refuses with [`LogError::DiskFull`] when the batch, times sled's
//! write amplification, would eat into a reserve. Nothing is written, nothing is poisoned,
//! and appends go on by themselves as soon as space is freed.
//!
//! What an append may cost on disk: the records themselves, and now and then the whole
//! leaf page they land in, which sled rewrites in one piece when it consolidates it (as a
//! blob file, when large). Keys are appended in order, so that leaf is the last one: it
//! holds at most the last [`LEAF_RECORDS`] records. Measured with 512 KiB records on a
//! 48 MiB tmpfs: most appends took 0.5 MiB, every eighth or ninth took 5 to 9 MiB at once,
//! and a guard of 4 × the batch alone let sled run out of space.
//!
//! The guard cannot see another process filling the disk between its check and sled's
//! write; that residual case is the stall watchdog's and the poisoning's (see
//! [`super::sled`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::LogError;

/// sled splits a leaf once it holds more than 16 entries (`Node::should_split`), so the
/// leaf an append may make sled rewrite holds at most this many records.
const LEAF_RECORDS: usize = 17;
/// Disk bytes per byte of the batch and of that leaf: the new copy is written before the
/// old one is reclaimed by sled's segment cleaning.
const AMPLIFICATION: u64 = 2;
/// The reserve never exceeds this: enough for sled to open, recover and snapshot a log,
/// and for the daemon's last events, on a disk of any size.
const MAX_RESERVE: u64 = 64 * 1024 * 1024;
/// Nor falls below this.
const MIN_RESERVE: u64 = 1024 * 1024;
/// The reserve is this fraction (1/N) of the file system's size, within the bounds above,
/// so that a small disk (a test's tmpfs) is not declared full while mostly empty.
const RESERVE_FRACTION: u64 = 20;

/// Free and total bytes of the file system holding a directory.
pub(crate) trait FreeSpace: Send + Sync + std::fmt::Debug {
    /// `(available to us, total size)` in bytes.
    fn free_and_total(&self, dir: &Path) -> std::io::Result<(u64, u64)>;
}

/// The real file system, through `statvfs`.
#[derive(Debug)]
pub(crate) struct Statvfs;

impl FreeSpace for Statvfs {
    fn free_and_total(&self, dir: &Path) -> std::io::Result<(u64, u64)> {
        let stat = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
        let unit = stat.fragment_size() as u64;
        Ok((
            (stat.blocks_available() as u64).saturating_mul(unit),
            (stat.blocks() as u64).saturating_mul(unit),
        ))
    }
}

/// Decides whether the disk has room for an append.
#[derive(Debug)]
pub(crate) struct SpaceGuard {
    dir: PathBuf,
    /// The reserve in bytes, or `None` for the default (a fraction of the file system).
    reserve: Option<u64>,
    /// The sizes of the last records admitted (at most [`LEAF_RECORDS`]) and of the last
    /// batch (the estimate for the next one, asked before it exists).
    recent: Mutex<Recent>,
    source: Box<dyn FreeSpace>,
}

#[derive(Debug, Default)]
struct Recent {
    records: VecDeque<u64>,
    last_batch: u64,
}

impl Recent {
    /// The bytes of the leaf an append may rewrite.
    fn leaf(&self) -> u64 {
        self.records.iter().sum()
    }
}

impl SpaceGuard {
    pub(crate) fn new(dir: &Path, reserve: Option<u64>) -> Self {
        Self {
            dir: dir.to_path_buf(),
            reserve,
            recent: Mutex::default(),
            source: Box::new(Statvfs),
        }
    }

    #[cfg(test)]
    fn with_source(mut self, source: impl FreeSpace + 'static) -> Self {
        self.source = Box::new(source);
        self
    }

    /// Whether a batch of records of these encoded sizes fits; remembers them when it
    /// does.
    pub(crate) fn admit(&self, records: &[u64]) -> Result<(), LogError> {
        let mut recent = self.recent.lock();
        let batch: u64 = records.iter().sum();
        let leaf: u64 = recent.leaf() + batch;
        self.check(batch + leaf)?;
        recent.last_batch = batch;
        for &record in records.iter().rev().take(LEAF_RECORDS).rev() {
            if recent.records.len() == LEAF_RECORDS {
                recent.records.pop_front();
            }
            recent.records.push_back(record);
        }
        Ok(())
    }

    /// Whether a batch like the last one would fit: asked before a batch is decided, so
    /// that a full disk refuses work before any of it is done.
    pub(crate) fn admit_next(&self) -> Result<(), LogError> {
        let recent = self.recent.lock();
        self.check(2 * recent.last_batch + recent.leaf())
    }

    fn check(&self, bytes: u64) -> Result<(), LogError> {
        let (free, total) = match self.source.free_and_total(&self.dir) {
            Ok(space) => space,
            // A file system that cannot say (none known on Linux) is not refused for it:
            // sled's own errors still stop a write that does not fit.
            Err(err) => {
                tracing::debug!(dir = %self.dir.display(), %err, "statvfs failed");
                return Ok(());
            }
        };
        let reserve = self.reserve.unwrap_or_else(|| default_reserve(total));
        let needed = reserve.saturating_add(bytes.saturating_mul(AMPLIFICATION));
        if free < needed {
            return Err(LogError::DiskFull { free, needed });
        }
        Ok(())
    }
}

/// The default reserve for a file system of `total` bytes.
fn default_reserve(total: u64) -> u64 {
    (total / RESERVE_FRACTION).clamp(MIN_RESERVE, MAX_RESERVE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Debug, Clone)]
    struct Fixed(Arc<AtomicU64>, u64);

    impl FreeSpace for Fixed {
        fn free_and_total(&self, _: &Path) -> std::io::Result<(u64, u64)> {
            Ok((self.0.load(Ordering::Relaxed), self.1))
        }
    }

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn the_reserve_is_a_twentieth_of_the_disk_within_1_and_64_mib() {
        assert_eq!(default_reserve(10 * MIB), MIB);
        assert_eq!(default_reserve(200 * MIB), 10 * MIB);
        assert_eq!(default_reserve(500 * 1024 * MIB), 64 * MIB);
    }

    #[test]
    fn a_batch_is_refused_when_it_and_its_leaf_would_eat_into_the_reserve() {
        let free = Arc::new(AtomicU64::new(100 * MIB));
        let guard = SpaceGuard::new(Path::new("/"), Some(10 * MIB))
            .with_source(Fixed(free.clone(), 1000 * MIB));
        // The batch, then the leaf with it: 10 + 2 × (20 + 20) = 90 MiB ≤ 100.
        guard.admit(&[20 * MIB]).unwrap();
        // 10 + 2 × (5 + 25) = 70 ≤ 100.
        guard.admit(&[5 * MIB]).unwrap();
        // 10 + 2 × (20 + 45) = 140 > 100.
        let err = guard.admit(&[20 * MIB]).unwrap_err();
        assert!(
            matches!(err, LogError::DiskFull { free: f, needed } if f == 100 * MIB && needed == 140 * MIB),
            "{err:?}"
        );
        // The next batch is estimated like the last one (5 MiB): 10 + 2 × (2 × 5 + 25).
        free.store(80 * MIB, Ordering::Relaxed);
        guard.admit_next().unwrap();
        free.store(79 * MIB, Ordering::Relaxed);
        assert!(matches!(guard.admit_next(), Err(LogError::DiskFull { .. })));
        free.store(100 * MIB, Ordering::Relaxed);
        guard.admit_next().unwrap();
    }

    #[test]
    fn the_leaf_is_the_last_17_records() {
        let free = Arc::new(AtomicU64::new(1000 * MIB));
        let guard =
            SpaceGuard::new(Path::new("/"), Some(0)).with_source(Fixed(free.clone(), 1000 * MIB));
        guard.admit(&[100 * MIB]).unwrap();
        for _ in 0..16 {
            guard.admit(&[MIB]).unwrap();
        }
        assert_eq!(guard.recent.lock().leaf(), 116 * MIB);
        guard.admit(&[MIB, MIB]).unwrap();
        assert_eq!(
            guard.recent.lock().leaf(),
            17 * MIB,
            "the big record left the leaf"
        );
    }
}
