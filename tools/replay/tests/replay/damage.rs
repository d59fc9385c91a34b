//! Damaged logs, wrong directories and bad command lines: clear messages, distinct exit
//! codes, never a panic, and never a change to the log.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use car_events::event::{Event, RunEnded, Termination};
use car_events::{Seq, codec};
use chrono::TimeDelta;
use serde_json::Value;

use crate::fixtures::{DataDir, car_replay, command, golden_envelopes, golden_records};

/// The golden records with the record at `seq` damaged by `damage`.
fn damaged(seq: Seq, damage: impl Fn(&mut Vec<u8>)) -> Vec<(Seq, Vec<u8>)> {
    let mut records = golden_records();
    damage(&mut records[seq as usize - 1].1);
    records
}

fn flip_last_byte(bytes: &mut [u8]) {
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
}

fn problems(report: &Value) -> Vec<(Option<u64>, String)> {
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["seq"].as_u64(), p["check"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn a_corrupt_record_in_the_middle() {
    let data = DataDir::with_records(&damaged(30, |bytes| flip_last_byte(bytes)));
    let before = data.stored();

    let report = data.run(&["verify", "--json"]).expect(1).json();
    assert_eq!(report["ok"], false);
    assert_eq!(problems(&report), [(Some(30), "checksum".to_owned())]);
    assert!(
        report["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("record at seq 30 fails its checksum"),
        "{report}"
    );
    assert_eq!(report["records"], 66, "every record is still checked");
    assert_eq!(report["folded_to"], 29, "the fold stops before the damage");
    assert_eq!(
        report["daemon"],
        "refuses to start: its replay of the log stops at seq 30"
    );
    let text = data.run(&["verify"]).expect(1).stdout;
    assert!(
        text.contains("seq 30: checksum: record at seq 30 fails"),
        "{text}"
    );
    assert!(text.contains("FAILED: 66 records"), "{text}");

    // Streaming commands skip it and say so; folding ones cannot go past it.
    let events = data.run(&["events"]).expect(4);
    assert_eq!(events.json_lines().len(), 65);
    assert!(
        events
            .stderr
            .contains("seq 30: skipped, the record is damaged"),
        "{}",
        events.stderr
    );
    let stats = data.run(&["stats", "--json"]).expect(4);
    assert_eq!(stats.json()["events"], 65);
    for args in [&["runs"][..], &["state"], &["trace", "run-d4e8f610"]] {
        let run = data.run(args).expect(4);
        assert!(
            run.stderr.contains("the log is damaged at seq 30")
                && run.stderr.contains("state --at 29"),
            "{args:?}: {}",
            run.stderr
        );
        assert_eq!(run.stdout, "");
    }
    let before_damage = data.run(&["state", "--at", "29", "--json"]).expect(0);
    assert_eq!(before_damage.json()["seq"], 29);

    assert_eq!(data.stored(), before, "car-replay changed the log");
}

#[test]
fn a_torn_tail_is_reported_and_left_in_place() {
    let data = DataDir::with_records(&damaged(66, |bytes| bytes.truncate(bytes.len() / 2)));
    let before = data.stored();

    let report = data.run(&["verify", "--json"]).expect(1).json();
    assert_eq!(problems(&report), [(Some(66), "checksum".to_owned())]);
    let message = report["problems"][0]["message"].as_str().unwrap();
    assert!(message.contains("torn write"), "{message}");
    assert_eq!(report["folded_to"], 65);
    assert_eq!(
        report["daemon"],
        "drops the damaged last record (seq 66) and rebuilds the state to seq 65"
    );

    // Reading commands show the log as the daemon will see it, and warn.
    let state = data.run(&["state", "--json"]).expect(0);
    assert_eq!(state.json()["seq"], 65);
    assert!(
        state
            .stderr
            .contains("the last record (seq 66) is damaged, a torn write"),
        "{}",
        state.stderr
    );
    let events = data.run(&["events"]).expect(0);
    assert_eq!(events.json_lines().len(), 65);
    assert!(events.stderr.contains("torn write"), "{}", events.stderr);
    data.run(&["runs"]).expect(0);

    // Nothing was repaired: the damaged record is still there, byte for byte, and a
    // second audit finds the same.
    assert_eq!(data.stored(), before, "car-replay changed the log");
    assert_eq!(
        problems(&data.run(&["verify", "--json"]).expect(1).json()),
        [(Some(66), "checksum".to_owned())]
    );
}

#[test]
fn verify_reports_every_problem_not_only_the_first() {
    let mut envelopes = golden_envelopes();
    // seq 40 goes back in time (a whole second before seq 39).
    envelopes[39].ts = envelopes[38].ts - TimeDelta::seconds(1);
    let mut records: Vec<(Seq, Vec<u8>)> = envelopes
        .iter()
        .map(|env| (env.seq, codec::encode(env).unwrap()))
        .collect();
    flip_last_byte(&mut records[9].1); // seq 10: checksum
    records[14].1.truncate(3); // seq 15: truncated
    records[49].1 = records[48].1.clone(); // seq 50 holds seq 49's record
    records.remove(19); // seq 20: missing
    let data = DataDir::with_records(&records);
    let report = data.run(&["verify", "--json"]).expect(1).json();
    assert_eq!(
        problems(&report),
        [
            (Some(10), "checksum".to_owned()),
            (Some(15), "truncated".to_owned()),
            (Some(20), "missing".to_owned()),
            (Some(40), "time".to_owned()),
            (Some(50), "seq".to_owned()),
        ]
    );
    assert_eq!(report["problem_count"], 5);
    assert_eq!(report["records"], 65);
    assert_eq!(report["folded_to"], 9);
}

#[test]
fn an_event_that_contradicts_the_state_is_an_invariant_problem() {
    let mut envelopes = golden_envelopes();
    // seq 65 ends run-d4e8f610 a second time (it ended at seq 64).
    envelopes[64].event = Event::RunEnded(RunEnded {
        run_id: "run-d4e8f610".into(),
        agent_id: "agent-researcher".into(),
        termination: Termination::Incomplete {
            reason: car_events::event::IncompleteReason::DaemonShutdown,
        },
    });
    let data = DataDir::with_envelopes(&envelopes);
    let report = data.run(&["verify", "--json"]).expect(1).json();
    assert_eq!(problems(&report), [(Some(65), "invariant".to_owned())]);
    let message = report["problems"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("seq 65") && message.contains("run `run-d4e8f610` has already ended"),
        "{message}"
    );
    assert_eq!(report["folded_to"], 64);
    // Reading commands cannot show a state past it.
    let runs = data.run(&["runs"]).expect(4);
    assert!(runs.stderr.contains("damaged at seq 65"), "{}", runs.stderr);
}

#[test]
fn what_is_not_a_car_log_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let run = car_replay(&["--data-dir", missing.to_str().unwrap(), "runs"]).expect(3);
    assert!(
        run.stderr.contains("no data directory at"),
        "{}",
        run.stderr
    );
    assert!(!missing.exists(), "car-replay created a directory");

    let run = car_replay(&["--data-dir", dir.path().to_str().unwrap(), "verify"]).expect(3);
    assert!(
        run.stderr.contains("is not a car data directory"),
        "{}",
        run.stderr
    );
    assert!(!dir.path().join("log").exists(), "car-replay created a log");

    let other = dir.path().join("other");
    {
        let db = sled::open(other.join("log")).unwrap();
        db.insert("k", "v").unwrap();
        db.flush().unwrap();
    }
    let run = car_replay(&["--data-dir", other.to_str().unwrap(), "stats"]).expect(3);
    assert!(
        run.stderr.contains("does not hold a car event log")
            && run.stderr.contains("without the car format marker"),
        "{}",
        run.stderr
    );
    // CAR_HOME is the default data directory.
    let run = command(&["runs"])
        .env("CAR_HOME", missing.to_str().unwrap())
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&run.stderr).contains(missing.to_str().unwrap()));
}

#[test]
fn usage_errors_exit_64_and_help_lists_the_exit_codes() {
    for args in [
        &["frobnicate"][..],
        &["runs", "--status", "sleeping"],
        &["events", "--kind", "run.exploded"],
        &["runs", "--since", "yesterday"],
        &["--threads", "0", "verify"],
        &[],
    ] {
        let run = car_replay(args).expect(64);
        assert!(
            run.stderr.contains("error:") || run.stderr.contains("Usage:"),
            "{args:?}: {}",
            run.stderr
        );
        assert_eq!(run.stdout, "");
    }
    let help = car_replay(&["--help"]).expect(0);
    for line in [
        "0   success",
        "2   the log is held by a running daemon",
        "64  usage",
    ] {
        assert!(help.stdout.contains(line), "{}", help.stdout);
    }
    for command in ["runs", "trace", "events", "state", "verify", "stats"] {
        let help = car_replay(&[command, "--help"]).expect(0);
        assert!(help.stdout.contains("Usage: car-replay"), "{}", help.stdout);
    }
    let data = DataDir::golden();
    let run = data.run(&["events", "--from", "9", "--to", "3"]).expect(64);
    assert!(
        run.stderr.contains("--from 9 is after --to 3"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_unknown_run_or_a_seq_past_the_end_exits_5() {
    let data = DataDir::golden();
    let run = data.run(&["trace", "run-nope"]).expect(5);
    assert!(
        run.stderr.contains("no run `run-nope` in the log"),
        "{}",
        run.stderr
    );
    let run = data.run(&["state", "--at", "67"]).expect(5);
    assert!(
        run.stderr
            .contains("--at 67 is past the end of the log (its last seq is 66)"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_closed_pipe_ends_quietly_with_success() {
    // Enough events that `events` is still writing when its reader goes away (far more
    // than a pipe buffers).
    let workload = car_projections::synth::Workload {
        events: 2_000,
        turns_per_run: 50,
        agents: 4,
    };
    let log = car_events::MemLog::new();
    car_projections::synth::write_log(&log, &workload, 7, |_| {}).unwrap();
    let envelopes: Vec<_> = car_events::EventLog::read_from(&log, 1)
        .map(Result::unwrap)
        .collect();
    let data = DataDir::with_envelopes(&envelopes);
    let mut child = command(&["--data-dir", data.path().to_str().unwrap(), "events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with(r#"{"seq":1,"#), "{first}");
    // The reader is dropped here: the pipe closes while the child writes.
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
}
