//! One module per command. Each gets the opened log and the global flags, writes its
//! output through [`crate::output::Out`], and returns the exit code of a completed run;
//! anything that stops it early is an [`Error`].

pub mod agents;
pub mod chats;
pub mod events;
pub mod memory;
pub mod runs;
pub mod state;
pub mod stats;
pub mod trace;
pub mod verify;

use crate::cli::{Cli, Command};
use crate::datadir::{self, OpenLog};
use crate::exit::{Error, Exit};
use crate::replay::{self, ReplayOptions, Replayed};
use crate::scan;
use crate::stream;

/// The global flags every command sees.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// No progress bar.
    pub quiet: bool,
    /// Decoding threads.
    pub threads: usize,
}

impl Context {
    /// Replay options for a fold up to `until`, labelled `label` on the progress bar.
    pub fn replay_options<'a>(
        &self,
        until: car_events::Seq,
        keep_evicted: bool,
        label: &'a str,
    ) -> ReplayOptions<'a> {
        ReplayOptions {
            until,
            keep_evicted,
            threads: self.threads,
            quiet: self.quiet,
            label,
        }
    }

    /// Folds the whole log, warning about a torn tail on stderr.
    pub fn replay_all(
        &self,
        log: &OpenLog,
        keep_evicted: bool,
        label: &str,
    ) -> Result<Replayed, Error> {
        let replayed = replay::replay(
            &log.log,
            self.replay_options(car_events::Seq::MAX, keep_evicted, label),
        )?;
        replayed.warn_torn_tail();
        Ok(replayed)
    }
}

/// Opens the log and runs the command.
pub fn run(cli: Cli) -> Result<Exit, Error> {
    let context = Context {
        quiet: cli.quiet,
        threads: cli.threads.map_or_else(scan::default_threads, usize::from),
    };
    if let Command::Export(args) = &cli.command {
        if cli.nats.is_empty() {
            return Err(Error::Usage(
                "export reads a cluster's stream: give --nats URL[,URL…]".into(),
            ));
        }
        let events = stream::export(&cli.nats, &cli.stream, &args.to)?;
        eprintln!(
            "exported {events} events of stream {} into {}",
            cli.stream,
            args.to.join("log").display()
        );
        return Ok(Exit::Ok);
    }
    // Cluster mode: the stream's copy is audited as a data directory (crate::stream).
    let copy = if cli.nats.is_empty() {
        None
    } else {
        Some(stream::TempCopy::make(&cli.nats, &cli.stream)?)
    };
    let data_dir = match &copy {
        Some(copy) => copy.path().to_path_buf(),
        None => datadir::resolve(cli.data_dir)?,
    };
    let mut log = datadir::open(data_dir)?;
    if copy.is_some() {
        log.shown = format!("stream {} at {}", cli.stream, cli.nats.join(","));
    }
    let result = match cli.command {
        Command::Runs(args) => runs::run(&log, &context, &args),
        Command::Trace(args) => trace::run(&log, &context, &args),
        Command::Events(args) => events::run(&log, &context, &args),
        Command::State(args) => state::run(&log, &context, &args),
        Command::Verify(args) => verify::run(&log, &context, &args),
        Command::Stats(args) => stats::run(&log, &context, &args),
        Command::Memory(args) => memory::run(&log, &context, &args),
        Command::Export(_) => Ok(Exit::Ok),
        Command::Agents(args) => agents::run(&log, &context, &args),
        Command::Chats(args) => chats::run(&log, &context, &args),
    };
    if copy.is_some() {
        // The copy is removed: its log must be closed first.
        drop(log);
    } else {
        leak(log);
    }
    result
}

/// Leaves `value` to the operating system instead of dropping it, for what the process no
/// longer needs just before it exits:
/// - the log: closing sled writes its own bookkeeping into the directory (a flush, a new
///   segment); not closing it leaves the directory as it was (the exit releases sled's
///   lock);
/// - large states: freeing a million-event state's allocations one by one takes a tenth
///   of a second that nobody waits for.
pub fn leak<T>(value: T) {
    std::mem::forget(value);
}
