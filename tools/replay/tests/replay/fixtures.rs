//! Fixture logs and a driver for the built `car-replay` binary.
//!
//! Logs are written straight into sled, record by record, in the layout of
//! `car_events::log::SledLog` (tree `meta` holds the format marker, tree `events` maps the
//! big-endian seq to the stored record), so a test can store any bytes under any key: the
//! golden fixture's records exactly as they were encoded, a damaged record, a missing
//! seq. The test process closes its sled handle before running the binary; sled lets go
//! of its file lock a moment after that, which `SledLog::open` in the binary waits out.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use car_events::{Envelope, Seq, codec};
use serde_json::Value;

/// The marker `SledLog` stores in tree `meta` under key `format`.
const FORMAT_MARKER: &[u8] = b"car-event-log/1";

/// The golden fixture of car-events: each record as a `u32` LE length and the bytes.
pub(crate) fn golden_records() -> Vec<(Seq, Vec<u8>)> {
    golden_records_of(1)
}

/// The golden-v2 fixture of car-events (21 events, among them every memory kind).
pub(crate) fn golden_v2_records() -> Vec<(Seq, Vec<u8>)> {
    golden_records_of(2)
}

/// The golden-v6 fixture of car-events (runs v3: cancellations with receipts, a quarantine
/// ended as an orphan, resumes, approvals in a run).
pub(crate) fn golden_v6_records() -> Vec<(Seq, Vec<u8>)> {
    golden_records_of(6)
}

/// The golden-v7 fixture of car-events (cluster mode: sessions on gateways, a gateway
/// declared lost and its run ended `gateway_lost`).
pub(crate) fn golden_v7_records() -> Vec<(Seq, Vec<u8>)> {
    golden_records_of(7)
}

/// The golden-v8 fixture of car-events (a registered agent's life: spawns, a backoff, an
/// `errored`, a rotation, a daemon restart, a removal).
pub(crate) fn golden_v8_records() -> Vec<(Seq, Vec<u8>)> {
    golden_records_of(8)
}

/// The golden-v9 fixture of car-events (chats: streamed to the end with an approval,
/// cancelled, refused, started by A2A, dropped by a restart).
pub(crate) fn golden_v9_records() -> Vec<(Seq, Vec<u8>)> {
    golden_records_of(9)
}

/// The golden-v2 fixture's JSON rendering, one line per record.
pub(crate) fn golden_v2_jsonl() -> String {
    std::fs::read_to_string(car_events_fixture("golden-v2.jsonl")).unwrap()
}

fn golden_records_of(version: u32) -> Vec<(Seq, Vec<u8>)> {
    let bytes = std::fs::read(car_events_fixture(&format!("golden-v{version}.records"))).unwrap();
    let mut records = Vec::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        let (record, tail) = tail.split_at(len);
        records.push((records.len() as Seq + 1, record.to_vec()));
        rest = tail;
    }
    records
}

/// The golden fixture's JSON rendering, one line per record.
pub(crate) fn golden_jsonl() -> String {
    std::fs::read_to_string(car_events_fixture("golden-v1.jsonl")).unwrap()
}

/// The golden records, decoded.
pub(crate) fn golden_envelopes() -> Vec<Envelope> {
    golden_records()
        .into_iter()
        .map(|(seq, bytes)| codec::decode(seq, &bytes).unwrap())
        .collect()
}

fn car_events_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../crates/car-events/tests/fixtures")
        .join(name)
}

/// A data directory with a log in it (`DIR/log`), removed when dropped.
#[derive(Debug)]
pub(crate) struct DataDir {
    dir: tempfile::TempDir,
}

impl DataDir {
    /// A data directory whose log holds `records` (seq, stored bytes).
    pub(crate) fn with_records(records: &[(Seq, Vec<u8>)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_log(&dir.path().join("log"), records);
        Self { dir }
    }

    /// A data directory holding the golden log.
    pub(crate) fn golden() -> Self {
        Self::with_records(&golden_records())
    }

    /// A data directory holding the golden-v2 log (memory events).
    pub(crate) fn golden_v2() -> Self {
        Self::with_records(&golden_v2_records())
    }

    /// A data directory holding the golden-v6 log (runs v3).
    pub(crate) fn golden_v6() -> Self {
        Self::with_records(&golden_v6_records())
    }

    /// A data directory holding the golden-v8 log (registered agents).
    pub(crate) fn golden_v8() -> Self {
        Self::with_records(&golden_v8_records())
    }

    /// A data directory holding the golden-v9 log (chats).
    pub(crate) fn golden_v9() -> Self {
        Self::with_records(&golden_v9_records())
    }

    /// A data directory holding `envelopes`, encoded.
    pub(crate) fn with_envelopes(envelopes: &[Envelope]) -> Self {
        let records: Vec<_> = envelopes
            .iter()
            .map(|env| (env.seq, codec::encode(env).unwrap()))
            .collect();
        Self::with_records(&records)
    }

    /// The data directory.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The log directory.
    pub(crate) fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// Runs `car-replay --data-dir DIR ARGS…`.
    pub(crate) fn run(&self, args: &[&str]) -> Run {
        let mut all = vec!["--data-dir", self.path().to_str().unwrap()];
        all.extend_from_slice(args);
        car_replay(&all)
    }

    /// The stored bytes of every record, read straight from sled (to check that nothing
    /// was changed).
    pub(crate) fn stored(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let db = open_sled(&self.log_dir());
        let events = db.open_tree("events").unwrap();
        events
            .iter()
            .map(|item| {
                let (k, v) = item.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }
}

/// Writes a log into `dir` with `records` stored as they are.
pub(crate) fn write_log(dir: &Path, records: &[(Seq, Vec<u8>)]) {
    let db = open_sled(dir);
    db.open_tree("meta")
        .unwrap()
        .insert("format", FORMAT_MARKER)
        .unwrap();
    let events = db.open_tree("events").unwrap();
    for (seq, bytes) in records {
        events.insert(seq.to_be_bytes(), bytes.as_slice()).unwrap();
    }
    db.flush().unwrap();
}

/// How long [`open_sled`] waits for this process's previous handle on the same directory
/// to let go: sled releases its file lock only when its last background thread drops the
/// database, a moment after the handle itself was dropped.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Opens sled directly (no `SledLog`), so tests can plant records as they are.
///
/// Regression (`damage::a_corrupt_record_in_the_middle` failed once in CI): writing the
/// log and reading it straight back opened the same directory twice in a row in this
/// process, and the second open found the lock still held by the first handle's
/// background flusher. A lock error is retried until [`RELEASE_WAIT`]; any other error,
/// or a lock that outlives the wait, fails the test.
fn open_sled(dir: &Path) -> sled::Db {
    let started = Instant::now();
    loop {
        match sled::Config::new().path(dir).flush_every_ms(None).open() {
            Ok(db) => return db,
            Err(err)
                if err.to_string().contains("could not acquire lock")
                    && started.elapsed() < RELEASE_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => panic!("cannot open sled at {}: {err}", dir.display()),
        }
    }
}

/// What a run of the binary did.
#[derive(Debug)]
pub(crate) struct Run {
    /// The exit code.
    pub(crate) code: i32,
    /// Stdout.
    pub(crate) stdout: String,
    /// Stderr.
    pub(crate) stderr: String,
}

impl Run {
    /// Stdout as one JSON document.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }

    /// Stdout as JSON lines.
    pub(crate) fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Asserts the exit code, showing the output when it differs.
    #[track_caller]
    pub(crate) fn expect(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs the built binary with `args`.
pub(crate) fn car_replay(args: &[&str]) -> Run {
    let output = command(args).output().unwrap();
    finish(output)
}

/// The binary as a [`Command`], stdin closed, `CAR_HOME` cleared.
pub(crate) fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_car-replay"));
    command
        .args(args)
        .env_remove("CAR_HOME")
        .stdin(Stdio::null());
    command
}

fn finish(output: Output) -> Run {
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}
