//! Injected time and randomness.
//!
//! Nothing in car reads the system clock or an RNG directly: the daemon passes a
//! [`SystemClock`] and [`RandomIds`], tests and replays pass a [`ManualClock`] and
//! [`SeededIds`], so every run of a test produces the same log byte for byte.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    /// A clock stopped at 2026-01-01T00:00:00Z.
    pub fn fixed() -> Self {
        Self::new(DateTime::<Utc>::from_timestamp(1_767_225_600, 0).unwrap_or_default())
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: TimeDelta) {
        *self.0.lock() += by;
    }

    /// Sets the clock.
    pub fn set(&self, to: DateTime<Utc>) {
        *self.0.lock() = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock()
    }
}

/// A source of unique ids.
pub trait IdSource: Send + Sync + fmt::Debug {
    /// A fresh UUID.
    fn uuid(&self) -> Uuid;
}

/// Random (v4) UUIDs from the operating system's entropy.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn uuid(&self) -> Uuid {
        Uuid::new_v4()
    }
}

/// Deterministic UUIDs from a seed: the same seed gives the same sequence.
pub struct SeededIds(Mutex<StdRng>);

impl SeededIds {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(Mutex::new(StdRng::seed_from_u64(seed)))
    }
}

impl fmt::Debug for SeededIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SeededIds")
    }
}

impl IdSource for SeededIds {
    fn uuid(&self) -> Uuid {
        let bytes: [u8; 16] = self.0.lock().random();
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// Stamps events with their time and id as the single writer appends them.
///
/// Times are truncated to whole milliseconds (the precision of every time on the wire, so
/// what is stored is exactly what is shown) and never go backwards, even if the clock does.
#[derive(Debug, Clone)]
pub struct Stamper {
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdSource>,
}

impl Stamper {
    /// A stamper from a clock and an id source.
    pub fn new(clock: Arc<dyn Clock>, ids: Arc<dyn IdSource>) -> Self {
        Self { clock, ids }
    }

    /// The real clock and random ids.
    pub fn system() -> Self {
        Self::new(Arc::new(SystemClock), Arc::new(RandomIds))
    }

    /// A manual clock and seeded ids, for tests.
    pub fn deterministic(clock: ManualClock, seed: u64) -> Self {
        Self::new(Arc::new(clock), Arc::new(SeededIds::new(seed)))
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The id source.
    pub fn ids(&self) -> &Arc<dyn IdSource> {
        &self.ids
    }

    /// Now, truncated to the millisecond, and not before `floor`.
    pub fn now_after(&self, floor: DateTime<Utc>) -> DateTime<Utc> {
        truncate_millis(self.clock.now()).max(floor)
    }
}

/// Truncates a time to whole milliseconds.
pub fn truncate_millis(ts: DateTime<Utc>) -> DateTime<Utc> {
    let millis = ts.timestamp_millis();
    DateTime::<Utc>::from_timestamp_millis(millis).unwrap_or(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_repeat_per_seed() {
        let a = SeededIds::new(7);
        let b = SeededIds::new(7);
        let first = a.uuid();
        assert_eq!(first, b.uuid());
        assert_ne!(first, a.uuid());
        assert_eq!(first.get_version_num(), 4);
    }

    #[test]
    fn stamps_never_go_backwards() {
        let clock = ManualClock::fixed();
        let stamper = Stamper::deterministic(clock.clone(), 1);
        let t1 = stamper.now_after(DateTime::<Utc>::MIN_UTC);
        clock.advance(TimeDelta::seconds(-10));
        assert_eq!(stamper.now_after(t1), t1);
        clock.advance(TimeDelta::microseconds(20_000_500));
        assert_eq!(stamper.now_after(t1), t1 + TimeDelta::milliseconds(10_000));
    }
}
