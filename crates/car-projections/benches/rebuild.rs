//! Rebuild benchmark: how fast the state is rebuilt from a 1 M-event sled log, next to a
//! decode-only scan of the same log (the floor any replay pays).
//!
//! ```sh
//! cargo bench -p car-projections --bench rebuild          # CAR_BENCH_QUICK=1: 100 k events
//! ```
//!
//! The log is [`Workload::million`]: a busy daemon's 1 M events (≈ 10 000 runs of ~100
//! turns by 16 interleaved agents, with proposals, tool calls and approvals). Scan and rebuild are interleaved, three rounds
//! each, and the medians compared, so machine noise hits both alike. Target: rebuild at
//! least 50 % of the scan's events/s.

use std::ops::ControlFlow;
use std::time::Instant;

use car_events::{EventLog, OpenOptions, SledLog, replay, scan};
use car_projections::State;
use car_projections::synth::{Workload, write_log};

/// Rounds of each measurement; the median is reported.
const ROUNDS: usize = 3;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let quick = std::env::var_os("CAR_BENCH_QUICK").is_some();
    let workload = if quick {
        Workload {
            events: 100_000,
            ..Workload::million()
        }
    } else {
        Workload::million()
    };
    // On the project's disk (not a tmpfs), like the daemon's data directory.
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let log = SledLog::open(dir.path(), OpenOptions::default()).expect("open log");
    let started = Instant::now();
    let head = write_log(&log, &workload, 7, |_| {})
        .expect("write log")
        .head();
    println!(
        "log: {head} events (~{} turns per run, {} agents), {:.1} MiB on disk, written in {:.1}s",
        workload.turns_per_run,
        workload.agents,
        log.size_on_disk() as f64 / (1024.0 * 1024.0),
        started.elapsed().as_secs_f64()
    );

    let mut scans = Vec::new();
    let mut rebuilds = Vec::new();
    for _ in 0..ROUNDS {
        // The same pipelined scan replay uses (read on one thread, decode on others),
        // without the fold: the difference between the two is the cost of `apply`.
        let started = Instant::now();
        let mut count = 0u64;
        scan::scan(
            &log,
            1..=head,
            scan::default_threads(),
            |_| {},
            |item| item.expect("decode"),
            |env| {
                std::hint::black_box(env);
                count += 1;
                ControlFlow::Continue(())
            },
        );
        assert_eq!(count, head);
        scans.push(head as f64 / started.elapsed().as_secs_f64());

        let started = Instant::now();
        let mut state = State::new();
        let last = replay(&log, &mut state, 1, |_| {}).expect("replay");
        assert_eq!(last, head);
        rebuilds.push(head as f64 / started.elapsed().as_secs_f64());
        std::hint::black_box(&state);
    }
    let (scan, rebuild) = (median(scans), median(rebuilds));
    println!(
        "decode-only scan : {:>10.0} events/s (median of {ROUNDS})",
        scan
    );
    println!(
        "state rebuild    : {:>10.0} events/s (median of {ROUNDS})",
        rebuild
    );
    println!(
        "rebuild / scan   : {:>10.0} %   (target ≥ 50 %: {})",
        100.0 * rebuild / scan,
        if rebuild >= 0.5 * scan {
            "met"
        } else {
            "MISSED"
        }
    );
    println!("rebuild of the whole log: {:.2}s", head as f64 / rebuild);
}
