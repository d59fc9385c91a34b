//! `car-soak`: crash soak of `car-server`. Clients write runs while the daemon is killed
//! (SIGKILL) at seeded random moments and restarted on the same data directory; after
//! every restart each acknowledged turn is read back and checked (see
//! `car_tests::load::soak` and docs/gateway.md).
//!
//! Exit codes: 0 every check passed, 1 a violation (each printed with its run, turn index
//! and reason), 2 the soak could not be set up or run.

use std::process::ExitCode;

use car_tests::load::soak::{SoakOptions, run_soak};
use car_tests::load::{EXIT_FAILED, EXIT_SETUP, server};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "car-soak",
    version,
    about = "Crash soak of car-server: SIGKILL it at random moments while clients write \
             runs, restart it, and check that every acknowledged turn survived"
)]
struct Cli {
    #[command(flatten)]
    soak: SoakOptions,
    /// Print the summary as one JSON object on stdout (cycle lines go to stderr).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    if let Some(code) = server::serve_if_requested() {
        return code;
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("car-soak: starting the async runtime: {err}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    let json = cli.json;
    let report = runtime.block_on(run_soak(&cli.soak, |cycle| {
        if json {
            eprintln!("{cycle}");
        } else {
            println!("{cycle}");
        }
    }));
    let report = match report {
        Ok(report) => report,
        Err(err) => {
            eprintln!("car-soak: {err:#}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    for violation in &report.violations {
        eprintln!("VIOLATION {violation}");
    }
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("car-soak: {err}");
                return ExitCode::from(EXIT_SETUP);
            }
        }
    } else {
        println!("{report}");
        if !report.violations.is_empty() {
            println!("data directory kept: {}", report.data_dir.display());
        }
    }
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}
