//! Reading runs back (PROTOCOL.md §3.1, §3.6): [`trace::trace_records`] and
//! [`trace::turn_records`] read from a [`MemLog`] exactly the turns that were recorded —
//! the client's fields in their order, daemon-owned fields replaced, the batch's time as
//! `recorded_at` —, paged by position and by `max_bytes`, for runs in progress and ended,
//! the same after a restart, and not at all once the run is evicted.
//!
//! The expected records are built here from what the client sent and the contract's record
//! shapes, not with the crate's record builders.

use car_events::event::Role;
use car_events::{Event, MemLog, format_ts};
use car_projections::recovery::{self, Retention};
use car_projections::state::{Run, TurnBatch};
use car_projections::trace::{self, TraceError};
use car_projections::{Actor, State};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, Value, json};

use crate::scenario::Scenario;
use crate::support::{INTENT, complete_run};

/// The record the contract says a sent turn reads back as.
fn expected_turn(index: usize, sent: &Value, recorded_at: DateTime<Utc>) -> Value {
    let mut record = Map::new();
    record.insert("record".into(), json!("turn"));
    record.insert("index".into(), json!(index));
    for (key, value) in sent.as_object().expect("a turn is an object") {
        if !["index", "record", "recorded_at"].contains(&key.as_str()) {
            record.insert(key.clone(), value.clone());
        }
    }
    record.entry("verifier_verdict").or_insert(json!("not_run"));
    record.entry("policy_rejected").or_insert(json!(false));
    record.insert("recorded_at".into(), json!(format_ts(recorded_at)));
    Value::Object(record)
}

/// What was sent, batch by batch.
fn batches() -> Vec<Vec<Value>> {
    vec![
        vec![
            json!({"prompt": "list", "tool": "fs.ls", "parameters": {"dir": "."}, "output": ["a", "b"]}),
            json!({"index": 41, "prompt": "read a", "output": {"z": 1, "a": null}}),
            json!({"verifier_verdict": "passed", "prompt": "check", "record": "spoofed"}),
        ],
        vec![json!({"policy_rejected": true, "tool": "sh", "recorded_at": "never"})],
        (0..5)
            .map(|i| json!({"prompt": format!("loop {i}"), "output": "x".repeat(100 * i)}))
            .collect(),
    ]
}

/// A scenario with run `done` (all batches, completed) and run `live` (the first batch,
/// in progress); returns it with the two run ids and, for `done`, the expected trace.
struct Traced {
    scenario: Scenario,
    done: String,
    live: String,
    done_trace: Vec<Value>,
    live_trace: Vec<Value>,
}

fn ts_of(scenario: &Scenario, matches: impl Fn(&Event) -> bool) -> Vec<DateTime<Utc>> {
    scenario
        .log()
        .iter()
        .filter(|env| matches(&env.event))
        .map(|env| env.ts)
        .collect()
}

fn traced() -> Traced {
    let mut s = Scenario::new(21);
    let c1 = s.connect("c1", Role::Client, None);
    let done = s.start(&c1, Some("coder"), None);
    let live = s.start(&c1, Some("coder"), None);
    for batch in batches() {
        s.record(&c1, &done, &batch).unwrap();
    }
    s.record(&c1, &live, &batches()[0]).unwrap();
    let outcome = json!({"status": "success", "summary": "read", "metrics": {"turns": 9}});
    s.must(complete_run(c1.clone(), &done, outcome.clone()));

    let started = |run: &str| {
        let at = ts_of(&s, |e| matches!(e, Event::RunStarted(r) if r.run_id == run))[0];
        json!({"record": "started", "run_id": run, "agent_id": "coder", "intent": INTENT,
               "outcome_description": null, "started_at": format_ts(at)})
    };
    let turns = |run: &str, sent: &[Vec<Value>]| {
        let times = ts_of(
            &s,
            |e| matches!(e, Event::TurnsRecorded(t) if t.run_id == run),
        );
        let mut out = Vec::new();
        for (batch, at) in sent.iter().zip(times) {
            for turn in batch {
                out.push(expected_turn(out.len(), turn, at));
            }
        }
        out
    };
    let ended_at = ts_of(&s, |e| matches!(e, Event::RunEnded(_)))[0];
    let mut done_trace = vec![started(&done)];
    done_trace.extend(turns(&done, &batches()));
    done_trace.push(
        json!({"record": "ended", "run_id": done, "agent_id": "coder",
        "termination": {"kind": "outcome", "outcome": outcome}, "ended_at": format_ts(ended_at)}),
    );
    let mut live_trace = vec![started(&live)];
    live_trace.extend(turns(&live, &batches()[..1]));
    Traced {
        scenario: s,
        done,
        live,
        done_trace,
        live_trace,
    }
}

/// Records as text: equal texts mean equal values *and* equal field order.
fn texts(records: &[Value]) -> Vec<String> {
    records.iter().map(Value::to_string).collect()
}

fn read(log: &MemLog, run: &Run, position: usize, max_bytes: usize) -> Vec<Value> {
    trace::trace_records(log, run, position, max_bytes).expect("the trace reads")
}

#[test]
fn every_position_reads_the_rest_of_an_ended_runs_trace() {
    let t = traced();
    let log = t.scenario.mem_log();
    let run = t.scenario.state().run(&t.done).unwrap();
    assert_eq!(run.turn_count, 9);
    assert_eq!(t.done_trace.len(), 11);
    for position in 0..=t.done_trace.len() + 2 {
        let expected = &t.done_trace[position.min(t.done_trace.len())..];
        assert_eq!(
            texts(&read(&log, run, position, usize::MAX)),
            texts(expected),
            "from position {position}"
        );
    }
}

#[test]
fn a_run_in_progress_has_no_ended_record() {
    let t = traced();
    let log = t.scenario.mem_log();
    let run = t.scenario.state().run(&t.live).unwrap();
    for position in 0..=t.live_trace.len() + 1 {
        let expected = &t.live_trace[position.min(t.live_trace.len())..];
        assert_eq!(
            texts(&read(&log, run, position, usize::MAX)),
            texts(expected),
            "from position {position}"
        );
    }
}

#[test]
fn paging_by_bytes_reads_every_record_once_in_order() {
    let t = traced();
    let log = t.scenario.mem_log();
    let run = t.scenario.state().run(&t.done).unwrap();
    for max_bytes in [0, 1, 150, 400, 1_000, usize::MAX] {
        let mut all = Vec::new();
        let mut pages = 0;
        while all.len() < t.done_trace.len() {
            let page = read(&log, run, all.len(), max_bytes);
            assert!(
                !page.is_empty(),
                "an empty page before the end ({max_bytes})"
            );
            if max_bytes == 0 {
                assert!(page.len() <= 2, "one turn per page, {} records", page.len());
            }
            all.extend(page);
            pages += 1;
            assert!(pages <= t.done_trace.len(), "paging does not progress");
        }
        assert_eq!(texts(&all), texts(&t.done_trace), "max_bytes {max_bytes}");
        assert!(read(&log, run, all.len(), max_bytes).is_empty());
        if max_bytes == usize::MAX {
            assert_eq!(pages, 1);
        }
        if max_bytes == 0 {
            assert_eq!(pages, 9, "one page per turn");
        }
    }
}

#[test]
fn turn_ranges_read_exactly_those_turns() {
    let t = traced();
    let log = t.scenario.mem_log();
    let run = t.scenario.state().run(&t.done).unwrap();
    let turns = &t.done_trace[1..10];
    for from in 0..=10u32 {
        for to in 0..=10u32 {
            let got =
                trace::turn_records(&log, &run.run_id, &run.turn_batches, from, to, usize::MAX)
                    .unwrap();
            let expected = if from < to {
                &turns[from.min(9) as usize..to.min(9) as usize]
            } else {
                &turns[..0]
            };
            assert_eq!(texts(&got), texts(expected), "turns {from}..{to}");
        }
    }
}

#[test]
fn a_restart_reads_the_same_records() {
    let t = traced();
    let log = t.scenario.mem_log();
    let reopened = log.reopen();
    let mut state = State::new();
    car_events::replay(&reopened, &mut state, 1, |_| {}).unwrap();
    let run = state.run(&t.done).unwrap();
    assert_eq!(
        texts(&read(&reopened, run, 0, usize::MAX)),
        texts(&t.done_trace)
    );
}

#[test]
fn who_may_read_a_run() {
    let t = traced();
    let state = t.scenario.state();
    assert!(state.readable_run(&Actor::client("c1"), &t.done).is_some());
    assert!(state.readable_run(&Actor::host("h1"), &t.done).is_some());
    assert!(
        state
            .readable_run(&Actor::agent("g1", "coder"), &t.done)
            .is_some()
    );
    assert!(state.readable_run(&Actor::client("c2"), &t.done).is_none());
    assert!(
        state
            .readable_run(&Actor::agent("g2", "other"), &t.done)
            .is_none()
    );
    assert!(state.readable_run(&Actor::host("h1"), "nope").is_none());
}

#[test]
fn an_evicted_run_is_not_readable_and_the_others_still_are() {
    let mut t = traced();
    let run_id = t.done.clone();
    t.scenario.advance(TimeDelta::days(31));
    t.scenario.gc(&Retention::default());
    let state = t.scenario.state();
    assert!(state.run(&run_id).is_none(), "evicted");
    assert!(state.readable_run(&Actor::host("h1"), &run_id).is_none());
    assert!(state.readable_run(&Actor::client("c1"), &run_id).is_none());
    let log = t.scenario.mem_log();
    let live = state
        .run(&t.live)
        .expect("a run in progress is never evicted");
    assert_eq!(
        texts(&read(&log, live, 0, usize::MAX)),
        texts(&t.live_trace)
    );
    // The complete command for the evicted run now finds nothing.
    let refused = car_projections::decide(
        state,
        &complete_run(Actor::client("c1"), &run_id, json!({"status": "x"})),
    );
    assert_eq!(
        refused,
        Err(car_projections::Refusal::UnknownRun(run_id.clone()))
    );
    // And a restart agrees.
    let mut replayed = State::new();
    car_events::replay(&log, &mut replayed, 1, |_| {}).unwrap();
    assert!(replayed.run(&run_id).is_none());
    assert!(recovery::gc(&replayed, t.scenario.now(), &Retention::default()).is_empty());
}

#[test]
fn the_summary_is_the_runs_wire_summary() {
    let t = traced();
    let state = t.scenario.state();
    let done = state.run(&t.done).unwrap();
    let ended_at = done.end.as_ref().unwrap().ended_at;
    assert_eq!(
        trace::summary(done),
        json!({"run_id": t.done, "agent_id": "coder", "intent": INTENT,
               "started_at": t.done_trace[0]["started_at"], "ended_at": format_ts(ended_at),
               "status": "completed", "turn_count": 9})
    );
    let live = state.run(&t.live).unwrap();
    assert_eq!(trace::summary(live)["status"], "in_progress");
    assert_eq!(trace::summary(live)["ended_at"], Value::Null);
    assert_eq!(trace::summary(live)["turn_count"], 3);
}

#[test]
fn an_index_naming_the_wrong_event_is_an_error() {
    let t = traced();
    let log = t.scenario.mem_log();
    let run = t.scenario.state().run(&t.done).unwrap();
    // The run's start is not a turn batch.
    let wrong = [TurnBatch {
        base_index: 0,
        seq: run.started_seq,
    }];
    match trace::turn_records(&log, &run.run_id, &wrong, 0, 1, usize::MAX) {
        Err(TraceError::BadIndex { seq, .. }) => assert_eq!(seq, run.started_seq),
        other => panic!("expected a bad index, got {other:?}"),
    }
    // A batch of the other run.
    let other = t.scenario.state().run(&t.live).unwrap().turn_batches[0];
    assert!(matches!(
        trace::turn_records(&log, &run.run_id, &[other], 0, 1, usize::MAX),
        Err(TraceError::BadIndex { .. })
    ));
}

#[test]
fn truncated_turns_read_back_as_stored() {
    let mut s = Scenario::new(22);
    let c1 = s.connect("c1", Role::Client, None);
    let run = s.start(&c1, Some("coder"), None);
    s.record(&c1, &run, &[json!({"prompt": "p".repeat(20_000)})])
        .unwrap();
    let log = s.mem_log();
    let records = read(&log, s.state().run(&run).unwrap(), 1, usize::MAX);
    let prompt = records[0]["prompt"].as_str().unwrap();
    assert_eq!(prompt.len(), 16 * 1024);
    assert!(prompt.ends_with("…[truncated]"));
}
