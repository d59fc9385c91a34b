//! Scans for the commands: [`car_events::scan`] with `car-replay`'s progress bar.

use std::ops::{ControlFlow, RangeInclusive};

use car_events::{Seq, SledLog};

pub use car_events::scan::{Item, default_threads, error_seq, item_seq};

use crate::progress::Progress;

/// [`car_events::scan::scan`], advancing `progress` per chunk.
pub fn scan<T: Send>(
    log: &SledLog,
    range: RangeInclusive<Seq>,
    threads: usize,
    progress: &Progress,
    map: impl Fn(Item) -> T + Sync,
    each: impl FnMut(T) -> ControlFlow<()>,
) {
    car_events::scan::scan(log, range, threads, |n| progress.inc(n), map, each);
}
