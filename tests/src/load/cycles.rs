//! What the crash soaks share (`soak` for runs, `tool_soak` for tool calls): the seed,
//! the scratch data directory, when each cycle's SIGKILL lands, each client's own random
//! stream, and the debug daemon their short unit tests run against. One place, so the two
//! soaks draw their kills the same way and a seed means the same schedule in both.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::load::server::{Scratch, default_scratch_parent};

/// Share of kills drawn from the first [`EARLY_KILL_MS`] ms: kills that land while the
/// clients connect and authenticate, not only in the middle of steady work.
const EARLY_KILL_SHARE: f64 = 0.2;
/// See [`EARLY_KILL_SHARE`].
const EARLY_KILL_MS: u64 = 20;

/// The seed given, else one from the clock (printed in the report, so a run can be
/// repeated).
pub(crate) fn seed(given: Option<u64>) -> u64 {
    given.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    })
}

/// The data directory given (kept), else a fresh one named after `name` under `target/`.
pub(crate) fn scratch(given: Option<&PathBuf>, name: &str) -> anyhow::Result<Scratch> {
    match given {
        Some(dir) => Scratch::existing(dir.clone()),
        None => Scratch::new(&default_scratch_parent(), name),
    }
}

/// How long after the clients start this cycle's SIGKILL lands, in milliseconds.
pub(crate) fn kill_after(schedule: &mut StdRng, max_kill_ms: u64) -> u64 {
    if schedule.random_bool(EARLY_KILL_SHARE) {
        schedule.random_range(0..=EARLY_KILL_MS.min(max_kill_ms))
    } else {
        schedule.random_range(0..=max_kill_ms)
    }
}

/// Client `client`'s own random stream, derived from the soak's seed.
pub(crate) fn client_rng(seed: u64, client: u32) -> StdRng {
    StdRng::seed_from_u64(seed ^ (u64::from(client) + 1).wrapping_mul(0x9E37_79B9))
}

/// The debug daemon `cargo test` builds beside the running test binary, if it is built.
#[cfg(test)]
pub(crate) fn test_server_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("car-test-server");
    bin.exists().then_some(bin)
}
