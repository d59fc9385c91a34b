//! Exit codes, and the one error type of the crate, which knows its exit code.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (also when stdout was closed early, e.g. `car-replay events \| head`) |
//! | 1 | `verify` found problems |
//! | 2 | the log is held by a running daemon (or another process) |
//! | 3 | no data directory, or it holds no car event log |
//! | 4 | the log is damaged where this command needs to read it |
//! | 5 | the run or seq asked for is not in the log |
//! | 64 | usage: unknown command or flag, bad value |
//! | 74 | I/O error reading the log or writing the output |
//!
//! The numbers 64 and 74 are the BSD `sysexits.h` `EX_USAGE` and `EX_IOERR`, which
//! scripts and supervisors already know.

use std::path::PathBuf;
use std::process::ExitCode;

use car_events::Seq;

/// How the process ends. See the module docs for the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: success.
    Ok,
    /// 1: `verify` found problems.
    Problems,
    /// 2: the log is held by a running daemon.
    Held,
    /// 3: no data directory, or not a car event log.
    NoLog,
    /// 4: the log is damaged where the command needs it.
    Corrupt,
    /// 5: the run or seq asked for is not in the log.
    NotFound,
    /// 64: bad command line.
    Usage,
    /// 74: I/O error.
    Io,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Problems => 1,
            Exit::Held => 2,
            Exit::NoLog => 3,
            Exit::Corrupt => 4,
            Exit::NotFound => 5,
            Exit::Usage => 64,
            Exit::Io => 74,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// The help text's table of exit codes (kept next to [`Exit`] so they cannot drift).
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0   success (also when stdout is closed early, e.g. `car-replay events | head`)
  1   verify found problems
  2   the log is held by a running daemon: stop it, or audit a copy of the directory
  3   no data directory, or it holds no car event log
  4   the log is damaged where this command needs to read it (see `verify`)
  5   the run or seq asked for is not in the log
  64  usage error
  74  I/O error";

/// Why a command could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A running daemon (or another process) holds the log.
    #[error(
        "the data directory {dir} is {holder}: car-replay only reads a log that nobody else \
         has open.\n\
         Stop the daemon first, or audit a copy of the directory:\n  \
         cp -r {dir} /tmp/car-copy && car-replay --data-dir /tmp/car-copy verify",
        dir = dir.display(),
        holder = holder(*pid)
    )]
    Held {
        /// The data directory.
        dir: PathBuf,
        /// The holder's pid, when known.
        pid: Option<u32>,
    },
    /// No data directory, or no car event log in it.
    #[error("{0}")]
    NoLog(String),
    /// A record the command needs is damaged.
    #[error(
        "the log is damaged at seq {seq}: {reason}\n\
         `car-replay verify` lists every problem; `car-replay state --at {before}` shows the \
         state just before it",
        before = seq.saturating_sub(1)
    )]
    Corrupt {
        /// The seq of the damaged record (0 when its position is unknown).
        seq: Seq,
        /// What is wrong with it.
        reason: String,
    },
    /// The run or seq asked for is not in the log.
    #[error("{0}")]
    NotFound(String),
    /// A bad value on the command line.
    #[error("{0}")]
    Usage(String),
    /// Reading the log or writing the output failed.
    #[error("{0}")]
    Io(String),
    /// Whoever read stdout stopped reading (`| head`): not an error, stop quietly.
    #[error("stdout was closed")]
    Closed,
}

fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("held by a running car-server (pid {pid})"),
        None => "in use by another process (a running car-server, or another car-replay)".into(),
    }
}

impl Error {
    /// The exit code this error ends the process with.
    pub fn exit(&self) -> Exit {
        match self {
            Error::Held { .. } => Exit::Held,
            Error::NoLog(_) => Exit::NoLog,
            Error::Corrupt { .. } => Exit::Corrupt,
            Error::NotFound(_) => Exit::NotFound,
            Error::Usage(_) => Exit::Usage,
            Error::Io(_) => Exit::Io,
            Error::Closed => Exit::Ok,
        }
    }

    /// Writing to stdout failed: a closed pipe is [`Error::Closed`], anything else I/O.
    pub fn stdout(err: std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            Error::Closed
        } else {
            Error::Io(format!("writing the output: {err}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exit_code_is_distinct_and_in_the_help() {
        let all = [
            Exit::Ok,
            Exit::Problems,
            Exit::Held,
            Exit::NoLog,
            Exit::Corrupt,
            Exit::NotFound,
            Exit::Usage,
            Exit::Io,
        ];
        let mut codes: Vec<u8> = all.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        for code in codes {
            assert!(
                EXIT_CODES_HELP.contains(&format!("\n  {code} ")),
                "exit code {code} is not in the help"
            );
        }
    }
}
