//! Finding the data directory and opening its event log read-only.
//!
//! The data directory is found the way the daemon finds it (PROTOCOL.md §9):
//! `--data-dir`, else `$CAR_HOME`, else `~/.car`; the log is its `log` subdirectory
//! (`car_gateway::Config::log_dir`). For convenience the log directory itself is accepted
//! too.
//!
//! The log is opened with [`OpenOptions::read_only`]: nothing is created, a torn last
//! record is left in place (and reported by the commands), no holder label is written, no
//! append is possible. A directory a running daemon holds is refused with
//! [`Error::Held`], which tells how to audit a copy instead.

use std::path::{Path, PathBuf};

use car_events::{LogError, OpenOptions, SledLog};

use crate::exit::Error;

/// An opened log and where it is.
#[derive(Debug)]
pub struct OpenLog {
    /// The data directory as given (or found).
    pub data_dir: PathBuf,
    /// The log directory inside it.
    pub log_dir: PathBuf,
    /// The log, read-only.
    pub log: SledLog,
    /// What reports name as the log read: its directory, or for `--nats` the stream.
    pub shown: String,
}

/// The data directory: `given`, else `$CAR_HOME`, else `~/.car` (the daemon's rule,
/// `car_gateway::config::default_data_dir`).
pub fn resolve(given: Option<PathBuf>) -> Result<PathBuf, Error> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    if let Some(home) = std::env::var_os("CAR_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    std::env::home_dir()
        .map(|home| home.join(".car"))
        .ok_or_else(|| Error::NoLog("no home directory: give --data-dir or set CAR_HOME".into()))
}

/// The log directory of a data directory: `DIR/log`, or `DIR` itself when it is a sled
/// database (someone pointed at the log directory).
fn log_dir_of(data_dir: &Path) -> Result<PathBuf, Error> {
    if !data_dir.is_dir() {
        return Err(Error::NoLog(format!(
            "no data directory at {} (give --data-dir, or set CAR_HOME)",
            data_dir.display()
        )));
    }
    let log_dir = data_dir.join("log");
    if log_dir.is_dir() {
        return Ok(log_dir);
    }
    if data_dir.join("db").is_file() && data_dir.join("conf").is_file() {
        return Ok(data_dir.to_path_buf());
    }
    Err(Error::NoLog(format!(
        "{} is not a car data directory: it has no event log ({} does not exist)",
        data_dir.display(),
        log_dir.display()
    )))
}

/// Opens the log of `data_dir` read-only.
pub fn open(data_dir: PathBuf) -> Result<OpenLog, Error> {
    let log_dir = log_dir_of(&data_dir)?;
    let options = OpenOptions {
        create: false,
        read_only: true,
        ..OpenOptions::default()
    };
    let log = SledLog::open(&log_dir, options).map_err(|err| open_error(&data_dir, err))?;
    Ok(OpenLog {
        shown: log_dir.display().to_string(),
        data_dir,
        log_dir,
        log,
    })
}

fn open_error(data_dir: &Path, err: LogError) -> Error {
    match err {
        LogError::Locked { pid, .. } => Error::Held {
            dir: data_dir.to_path_buf(),
            pid,
        },
        LogError::NotALog { dir, reason } => {
            let mut message = format!("{} does not hold a car event log: {reason}", dir.display());
            if let Some(snapshot) = interrupted_snapshot(&dir) {
                message.push_str(&format!(
                    "\n{} is a snapshot sled was writing when its process died; the daemon \
                     removes it at its next start. To audit without it: copy the directory \
                     and delete that file in the copy.",
                    snapshot.display()
                ));
            }
            Error::NoLog(message)
        }
        LogError::Corrupt(codec) => Error::Corrupt {
            seq: codec.seq(),
            reason: codec.to_string(),
        },
        other => Error::Io(format!(
            "opening the log in {}: {other}",
            data_dir.display()
        )),
    }
}

/// A `snap.*.generating` file: a snapshot interrupted by a crash, which sled 0.34 reads
/// (and then refuses the database) unless the daemon's open removes it first.
fn interrupted_snapshot(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snap.") && n.ends_with(".generating"))
        })
}
