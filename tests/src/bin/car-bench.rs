//! `car-bench`: benchmarks of `car-server` against their targets, printed as one table:
//! acknowledged turns/s (a), subscriber latency (b), idle memory per connection (c),
//! start-up on a 1 M-event log (d), tool round-trips (e). See `car_tests::load::bench`
//! and docs/gateway.md.
//!
//! Exit codes: 0 done (1 with `--check` when a target was missed), 2 a case could not be
//! set up or run.

use std::process::ExitCode;

use car_tests::load::bench::{BenchOptions, build_log_if_requested, run_bench};
use car_tests::load::{EXIT_FAILED, EXIT_SETUP, server};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "car-bench",
    version,
    about = "Benchmarks of car-server (throughput, subscriber latency, idle memory, start-up, \
             tool round-trips), each against its target"
)]
struct Cli {
    #[command(flatten)]
    bench: BenchOptions,
    /// Print the report as one JSON object on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Exit 1 when any target was missed.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    if let Some(code) = server::serve_if_requested().or_else(build_log_if_requested) {
        return code;
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("car-bench: starting the async runtime: {err}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    let report = runtime.block_on(run_bench(&cli.bench, |row| {
        let met = match row.met {
            Some(true) => " [target met]",
            Some(false) => " [target MISSED]",
            None => "",
        };
        eprintln!("{:?}: {}: {}{met}", row.case, row.what, row.result);
    }));
    let report = match report {
        Ok(report) => report,
        Err(err) => {
            eprintln!("car-bench: {err:#}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    if cli.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("car-bench: {err}");
                return ExitCode::from(EXIT_SETUP);
            }
        }
    } else {
        println!(
            "\n{} CPUs, load average {} at the start, {:.0} s{}\n",
            report.cpus,
            report
                .load_average
                .map_or_else(|| "?".into(), |l| format!("{l:.2}")),
            report.elapsed_secs,
            if report.quick { " (--quick)" } else { "" }
        );
        print!("{}", report.table());
    }
    if cli.check && !report.all_met() {
        return ExitCode::from(EXIT_FAILED);
    }
    ExitCode::SUCCESS
}
