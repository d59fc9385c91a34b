//! `make-log`: writes a large, realistic, valid event log for benchmarking `car-replay`.
//!
//! ```sh
//! cargo run --release -p car-replay --example make-log -- /tmp/car-bench --events 1000000
//! time target/release/car-replay --data-dir /tmp/car-bench verify
//! ```
//!
//! `car-replay` itself never writes a log, so the benchmark's log comes from here: the
//! history of [`car_projections::synth`] (the one every benchmark uses), written with the
//! daemon's layout (`DIR/log`) so `car-replay --data-dir DIR` reads it. The directory must
//! not hold a log yet.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use car_events::{EventLog, OpenOptions, SledLog};
use car_projections::synth::{Workload, write_log};
use clap::Parser;

/// Writes a synthetic event log for benchmarks.
#[derive(Debug, Parser)]
#[command(name = "make-log")]
struct Args {
    /// The data directory to create (the log goes into DIR/log).
    dir: PathBuf,
    /// How many events to write before the clean stop (which adds a few more).
    #[arg(long, default_value_t = Workload::million().events)]
    events: u64,
    /// Turns per run, on average.
    #[arg(long, default_value_t = Workload::million().turns_per_run)]
    turns_per_run: u32,
    /// Agents connected at the same time.
    #[arg(long, default_value_t = Workload::million().agents)]
    agents: usize,
    /// Seed of the history.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let log_dir = args.dir.join("log");
    if log_dir.exists() {
        bail!("{} already exists: give a new directory", log_dir.display());
    }
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let started = Instant::now();
    let log = SledLog::open(&log_dir, OpenOptions::default())?;
    let workload = Workload {
        events: args.events,
        turns_per_run: args.turns_per_run,
        agents: args.agents,
    };
    let state = write_log(&log, &workload, args.seed, |_| {})?;
    println!(
        "wrote {} events ({} runs) to {} in {:.1} s; {:.1} MiB on disk",
        log.head(),
        state.run_count(),
        log_dir.display(),
        started.elapsed().as_secs_f64(),
        log.size_on_disk() as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}
