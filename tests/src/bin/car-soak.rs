//! `car-soak`: crash soak of `car-server`. Clients write runs while the daemon is killed
//! (SIGKILL) at seeded random moments and restarted on the same data directory; after
//! every restart each acknowledged turn is read back and checked (see
//! `car_tests::load::soak` and docs/gateway.md).
//!
//! `car-soak tools`: the same for tool calls. Tool clients submit proposals and answer
//! `tools.execute` after a random delay while the daemon is killed; after every restart
//! each dispatch marker's outcome, every call received and every proposal's
//! `proposal.result` are checked (see `car_tests::load::tool_soak`).
//!
//! Exit codes: 0 every check passed, 1 a violation (each printed with its run and turn
//! index, or its proposal, action and attempt, and the reason), 2 the soak could not be
//! set up or run.

use std::fmt::Display;
use std::path::Path;
use std::process::ExitCode;

use car_tests::load::soak::{SoakOptions, run_soak};
use car_tests::load::tool_soak::{ToolSoakOptions, run_tool_soak};
use car_tests::load::{EXIT_FAILED, EXIT_SETUP, server};
use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "car-soak",
    version,
    about = "Crash soak of car-server: SIGKILL it at random moments while clients write \
             runs (default) or answer tool calls (`tools`), restart it, and check that \
             every promise it made survived",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    scenario: Option<Scenario>,
    #[command(flatten)]
    soak: SoakOptions,
    /// Print the summary as one JSON object on stdout (cycle lines go to stderr).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Kill the daemon while tool clients are mid-call: every dispatch marker gets exactly
    /// one fitting outcome (`indeterminate` for a call cut off by the kill), no call is
    /// received twice, and `proposal.result` answers for every proposal seen accepted.
    Tools(ToolSoakOptions),
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
    let progress = |line: &dyn Display| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    match &cli.scenario {
        None => match runtime.block_on(run_soak(&cli.soak, |cycle| progress(cycle))) {
            Ok(report) => finish(&report, &report.violations, &report.data_dir, json),
            Err(err) => setup_failed(&err),
        },
        Some(Scenario::Tools(options)) => {
            match runtime.block_on(run_tool_soak(options, |cycle| progress(cycle))) {
                Ok(report) => finish(&report, &report.violations, &report.data_dir, json),
                Err(err) => setup_failed(&err),
            }
        }
    }
}

fn setup_failed(err: &anyhow::Error) -> ExitCode {
    eprintln!("car-soak: {err:#}");
    ExitCode::from(EXIT_SETUP)
}

/// Prints the violations and the summary; the exit code says whether any was found.
fn finish<R: Serialize + Display, V: Display>(
    report: &R,
    violations: &[V],
    data_dir: &Path,
    json: bool,
) -> ExitCode {
    for violation in violations {
        eprintln!("VIOLATION {violation}");
    }
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("car-soak: {err}");
                return ExitCode::from(EXIT_SETUP);
            }
        }
    } else {
        println!("{report}");
        if !violations.is_empty() {
            println!("data directory kept: {}", data_dir.display());
        }
    }
    if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}
