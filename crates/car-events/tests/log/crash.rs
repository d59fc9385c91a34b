//! Crash safety under real SIGKILLs, through the `car-log-soak` binary.
//!
//! The soak's `child` appends to a [`SledLog`] from concurrent tasks through the single
//! writer and prints every acknowledged append; the `soak` parent kills it at seeded random
//! moments, reopens the log and checks that every acknowledged event is there, intact and
//! in place. These tests run a bounded soak (a few seconds in a debug build) and make sure
//! the checker itself fails on a damaged log, so a green soak means something.

use std::path::Path;
use std::process::{Command, Output};

use car_events::{EventLog, LogError, OpenOptions, SledLog};
use serde_json::Value;

const SOAK: &str = env!("CARGO_BIN_EXE_car-log-soak");

/// Cycles of the bounded soak: enough to land kills during start-up, right after the open
/// and mid-stream (see the schedule of seed [`SEED`]), few enough for ~5 s in debug.
const CYCLES: u64 = 12;
/// A seed whose schedule has 9 of 12 kills 20 ms or more after the open or 180 ms or more
/// after the spawn (so they land among appends even on a slow machine), and three within
/// 50 ms (during start-up, or right after the open).
const SEED: &str = "11";

fn soak(dir: &Path, extra: &[&str]) -> Output {
    Command::new(SOAK)
        .args(["soak", "--json", "--appenders", "4", "--dir"])
        .arg(dir)
        .args(extra)
        .output()
        .expect("run car-log-soak")
}

fn summary(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}); stdout: {stdout}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn acknowledged_appends_survive_sigkill_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let cycles = CYCLES.to_string();
    let out = soak(
        dir.path(),
        &["--cycles", &cycles, "--seed", SEED, "--max-delay-ms", "400"],
    );
    let s = summary(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "violations: {}; stderr: {}",
        s["violations"],
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s["ok"], Value::Bool(true));
    assert_eq!(u64_of(&s, "cycles"), CYCLES);
    assert_eq!(s["violations"].as_array().map(Vec::len), Some(0));

    let per_cycle = s["per_cycle"].as_array().expect("per_cycle");
    assert_eq!(per_cycle.len() as u64, CYCLES);
    let acked: u64 = per_cycle.iter().map(|c| u64_of(c, "acked_events")).sum();
    assert_eq!(acked, u64_of(&s, "acked_events"));
    let with_acks = per_cycle
        .iter()
        .filter(|c| u64_of(c, "acked_events") > 0)
        .count() as u64;
    assert_eq!(with_acks, u64_of(&s, "cycles_with_acks"));
    assert!(
        with_acks * 2 >= CYCLES,
        "most cycles should acknowledge appends before the kill: {with_acks} of {CYCLES}"
    );

    // The log grows across cycles, each cycle starting where the previous check ended, and
    // holds at least every acknowledged event (plus any that were durable but unacked).
    let mut head = 0;
    for c in per_cycle {
        assert_eq!(u64_of(c, "head_before"), head, "cycle {c}");
        let after = u64_of(c, "head_after");
        assert!(after >= head + u64_of(c, "acked_events"), "cycle {c}");
        head = after;
    }
    assert_eq!(u64_of(&s, "log_events"), head);
    assert!(head >= acked);

    // And the log the soak left behind opens and reads back in full here too.
    let log = SledLog::open(dir.path(), OpenOptions::default()).unwrap();
    assert_eq!(log.head(), head);
    assert_eq!(log.read_from(1).filter(|e| e.is_ok()).count() as u64, head);
}

#[test]
fn a_record_damaged_mid_log_is_reported_by_seq_and_fails_the_soak() {
    let dir = tempfile::tempdir().unwrap();
    // Two cycles whose kills both land among appends (seed 2 with a 2 s maximum: 543 ms
    // after the spawn, then 38 ms after the open).
    let out = soak(
        dir.path(),
        &["--cycles", "2", "--seed", "2", "--max-delay-ms", "2000"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", summary(&out));
    let head = u64_of(&summary(&out), "log_events");
    assert!(head >= 3, "the soak should have appended: head {head}");

    // Overwrite a record in the middle with garbage, directly in sled.
    let damaged = head / 2;
    {
        let db = sled::open(dir.path()).unwrap();
        let events = db.open_tree("events").unwrap();
        assert!(
            events.get(damaged.to_be_bytes()).unwrap().is_some(),
            "seq {damaged} is stored under its big-endian key"
        );
        events
            .insert(damaged.to_be_bytes(), &b"not a record"[..])
            .unwrap();
        db.flush().unwrap();
    }

    // Only the tail is verified at open, so it opens; a full read names the seq.
    {
        let log = SledLog::open(dir.path(), OpenOptions::default()).unwrap();
        assert!(log.tail_repair().is_none());
        assert_eq!(log.head(), head);
        let errors: Vec<LogError> = log.read_from(1).filter_map(Result::err).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        match &errors[0] {
            LogError::Corrupt(e) => assert_eq!(e.seq(), damaged, "{e}"),
            other => panic!("expected a corrupt record at seq {damaged}, got {other}"),
        }
        assert!(log.get(damaged).is_err());
    }

    // The soak's checker catches it before its first kill, names the seq, and exits 1.
    let out = soak(dir.path(), &["--cycles", "1", "--seed", "1"]);
    let s = summary(&out);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert_eq!(s["ok"], Value::Bool(false));
    let violations = s["violations"].as_array().expect("violations");
    assert_eq!(violations.len(), 1, "{s}");
    let text = violations[0].as_str().unwrap();
    assert!(
        text.starts_with(&format!("seq {damaged}: unreadable")),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("VIOLATION: seq {damaged}")),
        "stderr names the seq"
    );
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let out = Command::new(SOAK).args(["soak"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "--cycles is required");
    let out = Command::new(SOAK)
        .args(["soak", "--cycles", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "zero cycles is a usage error");
    for args in [&["--help"][..], &["soak", "--help"], &["child", "--help"]] {
        let out = Command::new(SOAK).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"));
    }
}
