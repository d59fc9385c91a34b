//! `car-replay`: parses the command line, runs the command, exits with its code.
//!
//! Everything else lives in the library (`car_replay`); see its docs for the layout and
//! `car_replay::exit` for the exit codes.

use std::process::ExitCode;

use car_replay::{Cli, Error, Exit};
use clap::Parser;

/// mimalloc instead of the system allocator: a scan allocates and frees millions of small
/// strings (decoded events, sled's pages) across threads, where glibc's malloc spent a
/// third of `verify`'s CPU time. Built without transparent huge pages (feature `no_thp`):
/// with them, every page the allocator takes fresh from the kernel is zeroed 2 MiB at a
/// time, which was a quarter of `verify`'s CPU time. Together: `verify` on a 1 M-event log
/// went from ~2.2 s to ~1.5 s on 2 cores.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // `--help` and `--version` are not errors; anything else is a usage error.
            let exit = if err.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            let _ = err.print();
            return exit.into();
        }
    };
    match car_replay::run(cli) {
        Ok(exit) => exit.into(),
        Err(Error::Closed) => Exit::Ok.into(),
        Err(err) => {
            eprintln!("car-replay: {err}");
            err.exit().into()
        }
    }
}
