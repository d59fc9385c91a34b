//! A full disk (an I/O error on append) loses nothing acknowledged and adds nothing refused.
//!
//! The contract of [`EventLog::append`]: on error, none of the batch is in the log and the
//! head has not moved; everything acknowledged before stays readable; after the fault
//! clears, the log goes on at the next seq, without a gap.
//!
//! - [`MemLog`] is checked with its injected failures ([`MemLog::fail_next_appends`]),
//!   directly and through a [`Writer`].
//! - [`SledLog`] is checked against a real failing file system: a *child process* (this
//!   test binary, re-executed on one test, [`full_disk_child`]) lowers its own
//!   `RLIMIT_FSIZE` soft limit just above the size of sled's file, so sled's writes fail
//!   with `EFBIG` ("File too large"; `SIGXFSZ` is blocked so it does not kill the process).
//!   It appends until an append fails, probes the log, raises the limit again, goes on, and
//!   prints what it saw as `car-io-errors: key=value` lines; the parent test parses them,
//!   asserts, and reopens the log itself once the child has exited.
//!
//! What sled 0.34 does on a failed write (found here, asserted below): the failed flush
//! sets a database-wide error, so every later write of *that* database handle fails
//! too, including `SledLog`'s roll-back of the failed batch. The `SledLog` therefore
//! poisons itself: every later append, even once the disk has room again, is refused with
//! [`LogError::Poisoned`] naming the original error. Reads of acknowledged events keep
//! working. Reopening the log (sled resets the error at start-up) recovers exactly the
//! acknowledged events, never the torn failed batch, and appends continue at the next seq.
//! (After a failure sled's I/O threads hold the file lock for a moment after the handle
//! is dropped; `SledLog::open` waits that moment out, so the child reopens in-process.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use car_events::codec;
use car_events::event::{DaemonStopped, ToolCallCompleted, TurnsRecorded};
use car_events::{
    Envelope, Event, EventLog, JsonText, LogError, ManualClock, MemLog, OpenOptions,
    SCHEMA_VERSION, SeqRange, SledLog, Stamper, WriteError, Writer, replay,
};
use chrono::{DateTime, TimeDelta, Utc};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;
use uuid::Uuid;

/// Set (to a [`Scenario`] name) in the child process only.
const SCENARIO_ENV: &str = "CAR_IO_ERRORS_SCENARIO";
/// The log directory the child works in.
const DIR_ENV: &str = "CAR_IO_ERRORS_DIR";
/// The child test's name, as the harness filters it.
const CHILD_TEST: &str = "io_errors::full_disk_child";
/// The prefix of the child's report lines.
const REPORT: &str = "car-io-errors:";
/// How far past sled's file size the child lets its files grow before writes fail.
const HEADROOM: u64 = 64 * 1024;
/// Appends the child makes before the limit, so there is something to lose.
const BASE_BATCHES: u64 = 20;
/// Appends the child tries under the limit before giving up (it never gets close).
const MAX_BATCHES: u64 = 5_000;
/// How long the parent waits for a child.
const CHILD_DEADLINE: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------
// Events.

/// A bulky event (about 2 KB encoded), so a few appends fill the headroom; its content is
/// a function of `n`, so a misplaced or altered record is visible.
fn bulky(n: u64) -> Event {
    let text = format!("{n}:{}", "é∑x".repeat(400));
    match n % 3 {
        0 => Event::DaemonStopped(DaemonStopped { reason: text }),
        1 => Event::ToolCallCompleted(ToolCallCompleted {
            request_id: format!("req-{n}"),
            output: JsonText::from(serde_json::json!({"n": n, "text": text})),
            elapsed_ms: n,
        }),
        _ => Event::TurnsRecorded(TurnsRecorded {
            run_id: format!("run-{}", n / 10),
            base_index: u32::try_from(n).unwrap_or(u32::MAX),
            turns: vec![JsonText::from(
                serde_json::json!({"prompt": text, "parameters": {"n": n}}),
            )],
        }),
    }
}

/// The envelope the direct-log scenarios put at `seq`; `salt` tells apart two different
/// batches offered at the same seqs (the failed one and the one that replaces it).
fn envelope(seq: u64, salt: u64) -> Envelope {
    Envelope {
        seq,
        event_id: Uuid::from_u128((u128::from(salt) << 64) | u128::from(seq)),
        ts: DateTime::<Utc>::from_timestamp_millis(1_767_225_600_000 + 1_000 * seq as i64)
            .unwrap_or_default(),
        schema_version: SCHEMA_VERSION,
        event: bulky(seq * 7 + salt),
    }
}

fn batch(first: u64, len: u64, salt: u64) -> Vec<Envelope> {
    (first..first + len)
        .map(|seq| envelope(seq, salt))
        .collect()
}

fn read_all(log: &dyn EventLog) -> Vec<Envelope> {
    log.read_from(1)
        .map(|item| item.unwrap_or_else(|e| panic!("read back: {e}")))
        .collect()
}

/// A CRC-32 over the stored form of every envelope: what the parent compares with the
/// child's report after it reopens the log.
fn digest(envelopes: &[Envelope]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for env in envelopes {
        hasher.update(&codec::encode(env).unwrap_or_else(|e| panic!("encode: {e}")));
    }
    hasher.finalize()
}

// ---------------------------------------------------------------------------------------
// MemLog: the same contract with injected failures.

#[test]
fn mem_log_failed_appends_change_nothing_and_the_log_goes_on_gaplessly() {
    let log = MemLog::new();
    let mut acked = Vec::new();
    for first in [1, 4, 6] {
        let b = batch(first, if first == 4 { 2 } else { 3 }, 0);
        let range = log.append(&b).unwrap();
        assert_eq!(
            range,
            SeqRange {
                first,
                count: b.len() as u64
            }
        );
        acked.extend(b);
    }
    let head = log.head();
    assert_eq!(head, 8);
    let stored: Vec<_> = (1..=head).map(|seq| log.raw(seq).unwrap()).collect();

    log.fail_next_appends(2);
    for attempt in 0..2 {
        let err = log.append(&batch(head + 1, 3, 1)).unwrap_err();
        assert!(
            matches!(&err, LogError::Io(msg) if msg.contains("no space left")),
            "attempt {attempt}: {err:?}"
        );
        assert_eq!(log.head(), head, "attempt {attempt}: the head moved");
        assert_eq!(read_all(&log), acked, "attempt {attempt}");
        assert_eq!(log.get(head + 1).unwrap(), None, "attempt {attempt}");
        assert_eq!(log.raw(head + 1), None, "attempt {attempt}");
    }
    for (seq, bytes) in (1..=head).zip(&stored) {
        assert_eq!(&log.raw(seq).unwrap(), bytes, "seq {seq} was rewritten");
    }

    // The fault has cleared: the next append takes the seqs the failed one was offered.
    let next = batch(head + 1, 2, 2);
    assert_eq!(log.append(&next).unwrap().first, head + 1);
    acked.extend(next);

    let reopened = log.reopen();
    drop(log);
    assert_eq!(reopened.head(), head + 2);
    assert_eq!(
        read_all(&reopened),
        acked,
        "the failed batches left no trace"
    );
}

#[test]
fn writer_over_mem_log_reports_the_failure_and_reuses_its_seqs() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let log = Arc::new(MemLog::new());
    let (writer, thread) = Writer::<()>::spawn(
        log.clone(),
        (),
        Stamper::deterministic(ManualClock::fixed(), 11),
    );
    runtime.block_on(async {
        let mut sent = Vec::new();
        for n in 0..4 {
            let events = vec![bulky(n), bulky(n + 100)];
            let range = writer.append(events.clone()).await.unwrap();
            assert_eq!(range.first, 2 * n + 1);
            sent.extend(events);
        }
        log.fail_next_appends(1);
        let err = writer.append(vec![bulky(999)]).await.unwrap_err();
        assert!(
            matches!(&err, WriteError::Log(msg) if msg.contains("no space left")),
            "{err:?}"
        );
        assert_eq!(writer.durable().seq, 8);
        assert_eq!(writer.durable().epoch, 1, "the failure forced a rebuild");
        assert_eq!(log.head(), 8);

        let range = writer.append(vec![bulky(1000)]).await.unwrap();
        assert_eq!(range, SeqRange { first: 9, count: 1 });
        sent.push(bulky(1000));
        let stored: Vec<Event> = read_all(log.as_ref())
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(stored, sent);
        writer.shutdown().await;
    });
    thread.join();
}

// ---------------------------------------------------------------------------------------
// SledLog on a file system that refuses to grow the file: parent side.

/// What the child process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// Appends straight to the [`SledLog`].
    Log,
    /// Appends through a [`Writer`] over the [`SledLog`].
    Writer,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Log => "log",
            Scenario::Writer => "writer",
        }
    }

    fn parse(name: &str) -> Self {
        match name {
            "log" => Scenario::Log,
            "writer" => Scenario::Writer,
            other => panic!("unknown {SCENARIO_ENV} {other:?}"),
        }
    }
}

/// The child's `key=value` report.
#[derive(Debug)]
struct Report(BTreeMap<String, String>);

impl Report {
    fn parse(stdout: &str) -> Self {
        let mut map = BTreeMap::new();
        for line in stdout.lines() {
            // With --nocapture the harness's "test … ... " may precede the first line.
            if let Some((key, value)) = line
                .find(REPORT)
                .and_then(|at| line[at + REPORT.len()..].trim().split_once('='))
            {
                let previous = map.insert(key.to_owned(), value.to_owned());
                assert!(previous.is_none(), "{key} reported twice");
            }
        }
        Self(map)
    }

    fn text(&self, key: &str) -> &str {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("the child did not report {key}: {:?}", self.0))
    }

    fn number(&self, key: &str) -> u64 {
        let text = self.text(key);
        text.parse()
            .unwrap_or_else(|e| panic!("{key}={text} is not a number: {e}"))
    }
}

/// Runs [`full_disk_child`] in a child process on `dir` and returns its report.
fn run_child(scenario: Scenario, dir: &Path) -> Report {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(SCENARIO_ENV, scenario.name())
        .env(DIR_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output: Output = match rx.recv_timeout(CHILD_DEADLINE) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            panic!("the {scenario:?} child did not finish within {CHILD_DEADLINE:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the {scenario:?} child failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    let report = Report::parse(&stdout);
    assert_eq!(
        report.text("done"),
        scenario.name(),
        "the child did not run the scenario:\n{stdout}\n{stderr}"
    );
    report
}

/// Reopens the log the child left (in this process, after the child exited) and checks it
/// holds exactly what the child reported as acknowledged.
fn check_reopened_by_the_parent(dir: &Path, report: &Report) {
    let log = SledLog::open(dir, OpenOptions::default()).unwrap();
    assert_eq!(log.tail_repair(), None);
    let all = read_all(&log);
    assert_eq!(log.head(), report.number("final_head"));
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=log.head()).collect::<Vec<_>>(),
        "gapless"
    );
    assert_eq!(
        u64::from(digest(&all)),
        report.number("final_digest"),
        "the log differs from what the child was acknowledged"
    );
}

fn log_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    (tmp, dir)
}

/// The assertions both sled scenarios share; `refused` is how the scenario's appends on the
/// failed handle are refused.
fn check_common(report: &Report, refused: &str) {
    let base = report.number("base_head");
    let acked = report.number("acked_head");
    assert!(base > 0, "nothing was appended before the limit");
    // What the child observed right after the failed append.
    assert_eq!(report.number("head_after_failure"), acked, "the head moved");
    assert_eq!(report.number("read_after_failure"), acked);
    assert_eq!(
        report.text("read_after_failure_matches"),
        "true",
        "acknowledged events changed after the failure"
    );
    assert_eq!(report.text("failed_seq_visible"), "false");
    // The same handle stays read-only, with or without room on the disk.
    for key in ["append_again_limited", "append_again_raised"] {
        let outcome = report.text(key);
        assert!(
            outcome.starts_with(refused) && outcome.contains("File too large"),
            "{key}: expected {refused}…, got {outcome}"
        );
    }
    assert_eq!(report.number("head_after_retries"), acked);
    // Reopened in the child (in-process, right after dropping the failed handle).
    assert_eq!(
        report.number("reopen_head"),
        acked,
        "reopen lost or gained events"
    );
    assert_eq!(report.text("reopen_matches"), "true");
    assert_eq!(report.text("reopen_tail_repair"), "none");
    assert_eq!(
        report.number("next_first"),
        acked + 1,
        "the log must go on at the next seq"
    );
    assert!(report.number("final_head") > acked);
}

#[test]
fn sled_log_append_fails_cleanly_when_the_disk_is_full() {
    let (_tmp, dir) = log_dir();
    let report = run_child(Scenario::Log, &dir);
    check_common(&report, "Err(Poisoned(");
    let failure = report.text("failure");
    assert!(
        failure.starts_with("Io(") && failure.contains("File too large"),
        "the failed append must be LogError::Io naming the cause: {failure}"
    );
    assert!(report.number("acked_head") > report.number("base_head"));
    check_reopened_by_the_parent(&dir, &report);
}

#[test]
fn writer_over_sled_log_fails_cleanly_when_the_disk_is_full() {
    let (_tmp, dir) = log_dir();
    let report = run_child(Scenario::Writer, &dir);
    check_common(
        &report,
        r#"Err(Log("the event log refuses writes until it is reopened"#,
    );
    let failure = report.text("failure");
    assert!(
        failure.starts_with("Log(") && failure.contains("File too large"),
        "the failed append must be WriteError::Log naming the cause: {failure}"
    );
    assert_eq!(
        report.number("durable_after_failure"),
        report.number("acked_head")
    );
    assert_eq!(report.number("epoch_after_failure"), 1);
    check_reopened_by_the_parent(&dir, &report);
}

// ---------------------------------------------------------------------------------------
// The child side.

fn report(key: &str, value: impl std::fmt::Display) {
    println!("{REPORT} {key}={value}");
}

fn largest_file(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap())
        .filter(|meta| meta.is_file())
        .map(|meta| meta.len())
        .max()
        .unwrap_or(0)
}

/// Caps the size of files this process may write (soft limit only); returns the old soft
/// limit. The hard limit is kept, so the soft one can be raised again.
fn limit_file_size(soft: u64) -> u64 {
    let (old_soft, hard) = getrlimit(Resource::RLIMIT_FSIZE).unwrap();
    setrlimit(Resource::RLIMIT_FSIZE, soft.min(hard), hard).unwrap();
    old_soft
}

/// Not a test of its own: the body of the child process of the sled tests above. Without
/// [`SCENARIO_ENV`] (any ordinary run) it returns at once.
#[test]
fn full_disk_child() {
    let Some(scenario) = std::env::var_os(SCENARIO_ENV) else {
        return;
    };
    let scenario = Scenario::parse(&scenario.to_string_lossy());
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).expect(DIR_ENV));
    // Writing past RLIMIT_FSIZE raises SIGXFSZ, whose default action kills the process.
    // Blocked, it stays pending and the write fails with EFBIG instead. The mask is per
    // thread and inherited: every thread that writes (sled's I/O pool, the writer thread)
    // is started from this one, after this point.
    let mut xfsz = SigSet::empty();
    xfsz.add(Signal::SIGXFSZ);
    xfsz.thread_block().unwrap();
    match scenario {
        Scenario::Log => child_log(&dir),
        Scenario::Writer => child_writer(&dir),
    }
    report("done", scenario.name());
}

fn open(dir: &Path) -> SledLog {
    SledLog::open(dir, OpenOptions::default()).unwrap_or_else(|e| panic!("open: {e}"))
}

fn child_log(dir: &Path) {
    let log = open(dir);
    let mut acked = Vec::new();
    for _ in 0..BASE_BATCHES {
        let b = batch(log.head() + 1, 3, 0);
        log.append(&b).unwrap();
        acked.extend(b);
    }
    report("base_head", log.head());

    let unlimited = limit_file_size(largest_file(dir) + HEADROOM);
    let mut failed = None;
    for _ in 0..MAX_BATCHES {
        let b = batch(log.head() + 1, 3, 0);
        match log.append(&b) {
            Ok(range) => {
                assert_eq!(range.first, b[0].seq);
                acked.extend(b);
            }
            Err(err) => {
                failed = Some((b, err));
                break;
            }
        }
    }
    let (failed, err) = failed.expect("no append failed under the file size limit");
    let acked_head = acked.last().map_or(0, |e| e.seq);
    report("acked_head", acked_head);
    report("failure", format!("{err:?}"));
    report("head_after_failure", log.head());
    let back = read_all(&log);
    report("read_after_failure", back.len());
    report("read_after_failure_matches", back == acked);
    report(
        "failed_seq_visible",
        log.get(failed[0].seq).unwrap().is_some(),
    );

    let retry = batch(acked_head + 1, 3, 1);
    report("append_again_limited", format!("{:?}", log.append(&retry)));
    limit_file_size(unlimited);
    report("append_again_raised", format!("{:?}", log.append(&retry)));
    report("head_after_retries", log.head());
    drop(log);

    let log = open(dir);
    report("reopen_head", log.head());
    report("reopen_matches", read_all(&log) == acked);
    report(
        "reopen_tail_repair",
        log.tail_repair()
            .map_or("none".to_owned(), |r| r.to_string()),
    );
    let range = log.append(&retry).unwrap();
    report("next_first", range.first);
    acked.extend(retry);
    assert_eq!(read_all(&log), acked);
    report("final_head", log.head());
    report("final_digest", digest(&acked));
}

fn child_writer(dir: &Path) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let clock = ManualClock::fixed();
    let log = Arc::new(open(dir));
    let (writer, thread) =
        Writer::<()>::spawn(log.clone(), (), Stamper::deterministic(clock.clone(), 5));
    let mut sent = Vec::new();
    let mut n = 0;
    let mut next_events = |count: u64| {
        let events: Vec<Event> = (n..n + count).map(bulky).collect();
        n += count;
        events
    };
    for _ in 0..BASE_BATCHES {
        let events = next_events(3);
        writer.append_blocking(events.clone()).unwrap();
        sent.extend(events);
        clock.advance(TimeDelta::milliseconds(250));
    }
    report("base_head", log.head());

    let unlimited = limit_file_size(largest_file(dir) + HEADROOM);
    let mut failure = None;
    for _ in 0..MAX_BATCHES {
        let events = next_events(3);
        match writer.append_blocking(events.clone()) {
            Ok(range) => {
                assert_eq!(range.first, sent.len() as u64 + 1);
                sent.extend(events);
            }
            Err(err) => {
                failure = Some(err);
                break;
            }
        }
        clock.advance(TimeDelta::milliseconds(250));
    }
    let err = failure.expect("no append failed under the file size limit");
    let acked_head = sent.len() as u64;
    report("acked_head", acked_head);
    report("failure", format!("{err:?}"));
    report("head_after_failure", log.head());
    report("durable_after_failure", writer.durable().seq);
    report("epoch_after_failure", writer.durable().epoch);
    let back: Vec<Event> = read_all(log.as_ref())
        .into_iter()
        .map(|e| e.event)
        .collect();
    report("read_after_failure", back.len());
    report("read_after_failure_matches", back == sent);
    report(
        "failed_seq_visible",
        log.get(acked_head + 1).unwrap().is_some(),
    );

    let retry = next_events(2);
    report(
        "append_again_limited",
        format!("{:?}", writer.append_blocking(retry.clone())),
    );
    limit_file_size(unlimited);
    report(
        "append_again_raised",
        format!("{:?}", writer.append_blocking(retry.clone())),
    );
    report("head_after_retries", log.head());
    runtime.block_on(writer.shutdown());
    thread.join();
    drop(writer);
    let stored_before_reopen = read_all(log.as_ref());
    drop(log);

    // A restart: reopen, rebuild the state, start a new writer.
    let log = Arc::new(open(dir));
    report("reopen_head", log.head());
    report(
        "reopen_matches",
        read_all(log.as_ref()) == stored_before_reopen,
    );
    report(
        "reopen_tail_repair",
        log.tail_repair()
            .map_or("none".to_owned(), |r| r.to_string()),
    );
    let mut state = ();
    replay(log.as_ref(), &mut state, 1, |_| {}).unwrap();
    let (writer, thread) =
        Writer::<()>::spawn(log.clone(), state, Stamper::deterministic(clock, 6));
    let range = writer.append_blocking(retry.clone()).unwrap();
    report("next_first", range.first);
    sent.extend(retry);
    runtime.block_on(writer.shutdown());
    thread.join();
    let all = read_all(log.as_ref());
    assert_eq!(
        all.iter().map(|e| &e.event).collect::<Vec<_>>(),
        sent.iter().collect::<Vec<_>>()
    );
    report("final_head", log.head());
    report("final_digest", digest(&all));
}
