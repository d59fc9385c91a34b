//! Golden replay fixtures: committed event logs and what replaying them must give.
//!
//! Each case has, under `tests/fixtures/replay/`:
//! - `<case>.jsonl`: the log, one `{seq, ts, kind, data}` event per line (the
//!   [`EventJson`] rendering of `log.read` and `car-replay`). It is written by the case's
//!   program below (commands decided through [`crate::scenario::Scenario`]); the test
//!   checks that the committed file is still exactly what the program writes, so a change
//!   of a decision shows up as a diff of a reviewed file.
//! - `<case>.expected.json`: the canonical rendering of the state after replaying the
//!   committed log and its digest; the events `recovery::recover(state, now, retention)`
//!   returns, as `{kind, data}`; the digest of the state once they are applied (each at
//!   `now`); and what `recover` returns on that state (it must be nothing).
//!
//! `now` and the retention of each case are columns of the case table [`CASES`] (and are
//! repeated in the expected file for the reader).
//!
//! `CAR_REWRITE_FIXTURES=1 cargo test -p car-projections --test projections golden`
//! rewrites the logs and expected files that changed and prints which; without it, a
//! mismatch fails with the first differing line. Review the diff before committing it.
//!
//! `tests/fixtures/replay/bad/` holds hand-written logs that must not replay.

use std::fs;
use std::path::{Path, PathBuf};

use car_events::event::{
    IncompleteReason, ProposalFinished, ProposalSubmitted, Role, SubscriptionTarget,
    ToolCallDispatched,
};
use car_events::{Envelope, Event, EventJson, JsonText};
use car_projections::decide::{
    DispatchToolCall, Dropped, ExpireApproval, RequestApproval, SubscriptionSelector,
    ToolCallOutcome, Unsubscribe,
};
use car_projections::recovery::{self, Retention};
use car_projections::state::Contradiction;
use car_projections::{Command, Refusal, State, canonical};
use chrono::{DateTime, TimeDelta, Utc};
use rstest::rstest;
use serde_json::{Value, json};

use crate::scenario::Scenario;
use crate::support::{
    complete_run, envelope, finish_call, request_approval, resolve_approval, run_target, subscribe,
};

/// Set to `1` to rewrite the fixtures that changed.
const REWRITE: &str = "CAR_REWRITE_FIXTURES";

/// One golden case.
#[derive(Debug)]
struct Case {
    name: &'static str,
    /// The program that writes the log.
    write: fn() -> Scenario,
    /// When the recovery runs.
    now: &'static str,
    /// `--run-retention`, in days.
    max_age_days: i64,
    /// `--max-runs`.
    max_runs: usize,
}

impl Case {
    fn now(&self) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(self.now)
            .expect("an RFC 3339 time")
            .with_timezone(&Utc)
    }

    fn retention(&self) -> Retention {
        Retention {
            max_age: TimeDelta::days(self.max_age_days),
            max_runs: self.max_runs,
        }
    }
}

/// The cases: name, program, `now`, retention days, max runs.
const CASES: &[Case] = &[
    Case {
        name: "clean_session",
        write: clean_session,
        now: "2026-01-02T00:00:00Z",
        max_age_days: 30,
        max_runs: 10_000,
    },
    Case {
        name: "crash_mid_run",
        write: crash_mid_run,
        now: "2026-01-01T01:00:00Z",
        max_age_days: 30,
        max_runs: 10_000,
    },
    Case {
        name: "crash_mid_recovery",
        write: crash_mid_recovery,
        now: "2026-01-01T02:00:00Z",
        max_age_days: 30,
        max_runs: 10_000,
    },
    Case {
        name: "eviction_by_age",
        write: eviction_by_age,
        now: "2026-02-20T00:00:00Z",
        max_age_days: 30,
        max_runs: 10_000,
    },
    Case {
        name: "eviction_by_count",
        write: eviction_by_count,
        now: "2026-01-02T00:00:00Z",
        max_age_days: 30,
        max_runs: 3,
    },
    Case {
        name: "idempotent_start",
        write: idempotent_start,
        now: "2026-01-02T00:00:00Z",
        max_age_days: 30,
        max_runs: 10_000,
    },
    Case {
        name: "turn_ceiling",
        write: turn_ceiling,
        now: "2026-01-02T00:00:00Z",
        max_age_days: 30,
        max_runs: 10_000,
    },
    Case {
        name: "double_completion",
        write: double_completion,
        now: "2026-01-02T00:00:00Z",
        max_age_days: 30,
        max_runs: 10_000,
    },
    Case {
        name: "approvals",
        write: approvals,
        now: "2026-01-02T00:00:00Z",
        max_age_days: 30,
        max_runs: 10_000,
    },
    Case {
        name: "open_at_crash",
        write: open_at_crash,
        now: "2026-01-02T00:00:00Z",
        max_age_days: 30,
        max_runs: 10_000,
    },
];

// ---------------------------------------------------------------------------------------
// The programs.

fn day(n: i64) -> TimeDelta {
    TimeDelta::days(n)
}

fn work_turn(i: usize) -> Value {
    json!({
        "prompt": format!("step {i}: read the file"),
        "tool": "fs.read",
        "parameters": {"path": format!("src/file{i}.rs")},
        "output": format!("contents of file {i}"),
    })
}

fn outcome(status: &str, summary: &str) -> Value {
    json!({"status": status, "summary": summary})
}

/// A run started, three turns in two batches, completed; the session leaves; clean stop.
fn clean_session() -> Scenario {
    let mut s = Scenario::new(1);
    s.start_daemon(100, &Retention::default());
    let c1 = s.connect("c1", Role::Client, None);
    let run = s.start(&c1, Some("coder"), None);
    s.record(&c1, &run, &[work_turn(0), work_turn(1)]).unwrap();
    s.record(&c1, &run, &[json!({"prompt": "done?", "index": 7})])
        .unwrap();
    s.must(complete_run(
        c1.clone(),
        &run,
        outcome("success", "all files read"),
    ));
    s.disconnect(&c1);
    s.stop_daemon();
    s
}

/// An agent's run in progress, followed by a host, when the daemon dies.
fn crash_mid_run() -> Scenario {
    let mut s = Scenario::new(2);
    s.start_daemon(100, &Retention::default());
    let agent = s.connect("g1", Role::Agent, Some("coder"));
    let host = s.connect("h1", Role::Host, None);
    let run = s.start(&agent, None, None);
    s.must(subscribe(host, "sub-h1", run_target(&run)));
    s.record(&agent, &run, &[work_turn(0)]).unwrap();
    s.record(&agent, &run, &[work_turn(1), work_turn(2)])
        .unwrap();
    s
}

/// Everything live at a crash; the next start-up records part of its recovery and dies too.
fn crash_mid_recovery() -> Scenario {
    let mut s = Scenario::new(3);
    s.start_daemon(100, &Retention::default());
    let c1 = s.connect("c1", Role::Client, None);
    let agent = s.connect("g1", Role::Agent, Some("coder"));
    let run1 = s.start(&c1, Some("reviewer"), None);
    s.record(&c1, &run1, &[work_turn(0)]).unwrap();
    let run2 = s.start(&agent, None, None);
    s.must(subscribe(c1.clone(), "sub-c1", run_target(&run1)));
    s.must(Command::RequestApproval(request_approval(
        agent.clone(),
        "ap-1",
    )));
    s.must(Command::SubmitProposal(ProposalSubmitted {
        proposal_id: "prop-1".into(),
        client_id: "g1".into(),
        run_id: Some(run2.clone()),
        action_ids: vec!["act-1".into()],
    }));
    s.must(dispatch("call-1", "g1", "prop-1", "act-1", Some(&run2)));
    // The crash. The next daemon starts, records the first three recovery events, dies.
    s.daemon_started(200);
    let events = recovery::recover(s.state(), s.now(), &Retention::default());
    assert!(events.len() > 3, "a recovery with more than three events");
    s.append(events[..3].to_vec());
    s
}

/// Runs ended on days 0, 10 and 35; retention on day 35 evicted the day-0 runs (one of
/// them keyed); a run started on day 1 is still in progress.
fn eviction_by_age() -> Scenario {
    let mut s = Scenario::new(4);
    let retention = Retention::default();
    s.start_daemon(100, &retention);
    let c1 = s.connect("c1", Role::Client, None);
    let old = s.start(&c1, Some("nightly"), None);
    s.must(complete_run(c1.clone(), &old, outcome("success", "day 0")));
    let keyed = s.start(&c1, Some("nightly"), Some("nightly-2026-01-01"));
    s.must(complete_run(
        c1.clone(),
        &keyed,
        outcome("failure", "day 0"),
    ));
    s.advance(day(1));
    let long = s.start(&c1, Some("soak"), None);
    s.record(&c1, &long, &[work_turn(0)]).unwrap();
    s.advance(day(9));
    let mid = s.start(&c1, Some("nightly"), None);
    s.must(complete_run(c1.clone(), &mid, outcome("success", "day 10")));
    s.advance(day(25));
    s.gc(&retention);
    let recent = s.start(&c1, Some("nightly"), None);
    s.must(complete_run(
        c1.clone(),
        &recent,
        outcome("success", "day 35"),
    ));
    s
}

/// Six runs: the oldest still in progress, then five ended.
fn eviction_by_count() -> Scenario {
    let mut s = Scenario::new(5);
    s.start_daemon(100, &Retention::default());
    let c1 = s.connect("c1", Role::Client, None);
    s.start(&c1, Some("batch"), None);
    for i in 0..5 {
        let run = s.start(&c1, Some("batch"), None);
        s.record(&c1, &run, &[work_turn(i)]).unwrap();
        s.must(complete_run(c1.clone(), &run, outcome("success", "ok")));
    }
    s
}

/// One key, many starts: only one `run.started`, before and after the run's end and its
/// eviction, whichever session retries.
fn idempotent_start() -> Scenario {
    let mut s = Scenario::new(6);
    s.start_daemon(100, &Retention::default());
    let c1 = s.connect("c1", Role::Client, None);
    let c2 = s.connect("c2", Role::Client, None);
    let key = "deploy-42";
    let run = s.start(&c1, Some("deployer"), Some(key));
    assert_eq!(run, key);
    s.start(&c1, Some("deployer"), Some(key));
    s.record(&c1, &run, &[work_turn(0)]).unwrap();
    s.must(complete_run(
        c1.clone(),
        &run,
        outcome("success", "deployed"),
    ));
    s.start(&c1, Some("deployer"), Some(key));
    let retried = s.exec(Command::StartRun(car_projections::decide::StartRun {
        new_run_id: s.fresh_id(),
        agent_id: Some("deployer".into()),
        idempotency_key: Some(key.into()),
        ..crate::support::start_run(c2.clone())
    }));
    // Another client may not read the run: the key is not available to it (issue 9).
    assert_eq!(retried, Err(car_projections::Refusal::KeyUnavailable));
    s.gc(&Retention {
        max_age: day(30),
        max_runs: 0,
    });
    // Evicted, the run keeps only its agent: no plain client can be shown to be its
    // reader, so its key stays taken and is not available to either.
    for client in [&c1, &c2] {
        let retried = s.exec(Command::StartRun(car_projections::decide::StartRun {
            new_run_id: s.fresh_id(),
            agent_id: Some("deployer".into()),
            idempotency_key: Some(key.into()),
            ..crate::support::start_run(client.clone())
        }));
        assert_eq!(retried, Err(car_projections::Refusal::KeyUnavailable));
    }
    s
}

/// 2000 turns in eight batches of 250, then a batch that would pass the ceiling: refused,
/// nothing recorded.
fn turn_ceiling() -> Scenario {
    let mut s = Scenario::new(7);
    s.start_daemon(100, &Retention::default());
    let c1 = s.connect("c1", Role::Client, None);
    let run = s.start(&c1, Some("looper"), None);
    for batch in 0..8 {
        let turns: Vec<Value> = (0..250)
            .map(|i| json!({"prompt": format!("turn {}", batch * 250 + i)}))
            .collect();
        s.record(&c1, &run, &turns).unwrap();
    }
    let refused = s.record(&c1, &run, &[json!({"prompt": "one too many"})]);
    assert_eq!(refused, Err(Refusal::Dropped(Dropped::RunTurnLimit)));
    s.must(complete_run(c1.clone(), &run, outcome("success", "full")));
    s
}

/// Two completions of one run (and a completion by its agent session, and a late turn):
/// one `run.ended`.
fn double_completion() -> Scenario {
    let mut s = Scenario::new(8);
    s.start_daemon(100, &Retention::default());
    let c1 = s.connect("c1", Role::Client, None);
    let agent = s.connect("g1", Role::Agent, Some("coder"));
    let run = s.start(&c1, Some("coder"), None);
    s.must(complete_run(c1.clone(), &run, outcome("success", "first")));
    for actor in [&c1, &agent] {
        let second = s.exec(complete_run(
            actor.clone(),
            &run,
            outcome("failure", "second"),
        ));
        assert_eq!(second, Err(Refusal::RunTerminal(run.clone())));
    }
    let late = s.record(&agent, &run, &[work_turn(0)]);
    assert_eq!(late, Err(Refusal::Dropped(Dropped::RunTerminal)));
    s
}

/// Approvals resolved by a host, resolved by a client (system level), expired, and one
/// pending at the crash; a refused resolution records nothing.
fn approvals() -> Scenario {
    let mut s = Scenario::new(9);
    s.start_daemon(100, &Retention::default());
    let host = s.connect("h1", Role::Host, None);
    let c1 = s.connect("c1", Role::Client, None);
    let agent = s.connect("g1", Role::Agent, Some("coder"));
    s.must(Command::RequestApproval(request_approval(
        c1.clone(),
        "ap-resolved",
    )));
    let refused = s.exec(resolve_approval(c1.clone(), "ap-resolved", "approve"));
    assert!(matches!(refused, Err(Refusal::Forbidden(_))), "{refused:?}");
    s.must(resolve_approval(host.clone(), "ap-resolved", "approve"));
    s.must(Command::RequestApproval(RequestApproval {
        action: "ws.method:messages.send".into(),
        details: json!({"method": "messages.send", "params_preview": "{\"to\":\"ops\"}"}),
        system_level: true,
        ..request_approval(agent.clone(), "ap-gate")
    }));
    s.must(resolve_approval(c1.clone(), "ap-gate", "deny"));
    s.must(Command::RequestApproval(RequestApproval {
        options: Some(vec!["ship".into(), "hold".into()]),
        ..request_approval(c1.clone(), "ap-expired")
    }));
    s.advance(TimeDelta::seconds(60));
    s.must(Command::ExpireApproval(ExpireApproval {
        approval_id: "ap-expired".into(),
        reason: "timeout".into(),
    }));
    s.must(Command::RequestApproval(RequestApproval {
        agent_id: Some("coder".into()),
        ..request_approval(c1.clone(), "ap-pending")
    }));
    s
}

fn dispatch(
    request: &str,
    client: &str,
    proposal: &str,
    action: &str,
    run: Option<&str>,
) -> Command {
    Command::DispatchToolCall(DispatchToolCall {
        dispatch: ToolCallDispatched {
            request_id: request.into(),
            client_id: client.into(),
            proposal_id: proposal.into(),
            action_id: action.into(),
            tool: "fs.read".into(),
            parameters: JsonText::parse(r#"{"path":"README.md"}"#).expect("valid JSON"),
            attempt: 1,
            timeout_ms: 30_000,
            run_id: run.map(Into::into),
        },
    })
}

/// Subscriptions of every kind and a proposal with a tool call in flight at the crash.
fn open_at_crash() -> Scenario {
    let mut s = Scenario::new(10);
    s.start_daemon(100, &Retention::default());
    let host = s.connect("h1", Role::Host, None);
    let c1 = s.connect("c1", Role::Client, None);
    let c2 = s.connect("c2", Role::Client, None);
    let run = s.start(&c1, Some("coder"), None);
    s.must(subscribe(c1.clone(), "sub-run", run_target(&run)));
    s.must(subscribe(
        host.clone(),
        "sub-log",
        SubscriptionTarget::Log { from_seq: 1 },
    ));
    s.must(subscribe(
        host.clone(),
        "sub-host",
        SubscriptionTarget::Host,
    ));
    s.must(subscribe(c2.clone(), "sub-gone", SubscriptionTarget::Host));
    s.must(Command::Unsubscribe(Unsubscribe {
        client_id: "c2".into(),
        selector: SubscriptionSelector::Id("sub-gone".into()),
    }));
    s.must(Command::SubmitProposal(ProposalSubmitted {
        proposal_id: "prop-1".into(),
        client_id: "c1".into(),
        run_id: Some(run.clone()),
        action_ids: vec!["act-1".into(), "act-2".into()],
    }));
    s.must(dispatch("call-1", "c1", "prop-1", "act-1", Some(&run)));
    s.must(finish_call(
        "call-1",
        ToolCallOutcome::Completed {
            output: json!("# README"),
            elapsed_ms: 40,
        },
    ));
    s.record(
        &c1,
        &run,
        &[json!({"tool": "fs.read", "output": "# README"})],
    )
    .unwrap();
    s.must(dispatch("call-2", "c1", "prop-1", "act-2", Some(&run)));
    s.must(Command::SubmitProposal(ProposalSubmitted {
        proposal_id: "prop-2".into(),
        client_id: "c2".into(),
        run_id: None,
        action_ids: vec![],
    }));
    s.must(Command::FinishProposal(ProposalFinished {
        proposal_id: "prop-2".into(),
        final_state: "completed".into(),
    }));
    s
}

// ---------------------------------------------------------------------------------------
// Files.

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replay")
}

fn rewriting() -> bool {
    std::env::var(REWRITE).is_ok_and(|v| v == "1")
}

/// The JSONL rendering of a log.
fn render_jsonl(log: &[Envelope]) -> String {
    let mut out = String::new();
    for env in log {
        out.push_str(
            &serde_json::to_string(&EventJson::from_envelope(env)).expect("render an event"),
        );
        out.push('\n');
    }
    out
}

/// Parses a JSONL log back into envelopes.
fn parse_jsonl(text: &str) -> Vec<Envelope> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            let json: EventJson = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("line {}: not an event: {e}", n + 1));
            let (seq, ts, event) = json
                .into_parts()
                .unwrap_or_else(|e| panic!("line {}: {e}", n + 1));
            envelope(seq, ts, event)
        })
        .collect()
}

/// Folds a log into a fresh state.
fn replay(log: &[Envelope]) -> Result<State, car_projections::state::ApplyError> {
    let mut state = State::new();
    for env in log {
        state.apply(env)?;
    }
    Ok(state)
}

/// Applies `events` to `state` at `now`.
fn apply_at(state: &mut State, events: &[Event], now: DateTime<Utc>) {
    if let Err(err) = crate::support::apply_events(state, events, |_| now) {
        panic!("recovery events do not apply: {err}");
    }
}

fn kind_and_data(event: &Event) -> Value {
    json!({"kind": event.kind(), "data": car_events::render::event_data(event)})
}

/// The expected file of a case, from the state its log replays to.
fn expected_doc(case: &Case, state: &State, events: usize) -> (Value, State) {
    let now = case.now();
    let retention = case.retention();
    let recovery = recovery::recover(state, now, &retention);
    let mut recovered = state.clone();
    apply_at(&mut recovered, &recovery, now);
    let again = recovery::recover(&recovered, now, &retention);
    let doc = json!({
        "case": case.name,
        "log": format!("{}.jsonl", case.name),
        "events": events,
        "now": case.now,
        "retention": {"max_age_days": case.max_age_days, "max_runs": case.max_runs},
        "state": canonical::render(state),
        "digest": canonical::digest(state),
        "recovery": recovery.iter().map(kind_and_data).collect::<Vec<_>>(),
        "digest_after_recovery": canonical::digest(&recovered),
        "recovery_after_recovery": again.iter().map(kind_and_data).collect::<Vec<_>>(),
    });
    (doc, recovered)
}

/// A readable account of where two texts first differ.
fn first_difference(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let line = e
        .iter()
        .zip(&a)
        .position(|(x, y)| x != y)
        .unwrap_or(e.len().min(a.len()));
    let differing = e.iter().zip(&a).filter(|(x, y)| x != y).count() + e.len().abs_diff(a.len());
    let mut out = format!(
        "first difference at line {} ({} lines differ; expected {} lines, got {}):\n",
        line + 1,
        differing,
        e.len(),
        a.len()
    );
    let clip = |s: &str| -> String {
        if s.len() > 300 {
            let mut end = 300;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &s[..end])
        } else {
            s.to_owned()
        }
    };
    let context = line.saturating_sub(2);
    for (n, text) in e.iter().enumerate().take(line).skip(context) {
        out.push_str(&format!("    {:>5} | {}\n", n + 1, clip(text)));
    }
    out.push_str(&format!(
        "  - {:>5} | {}\n",
        line + 1,
        e.get(line).map_or("<end of file>".into(), |l| clip(l))
    ));
    out.push_str(&format!(
        "  + {:>5} | {}\n",
        line + 1,
        a.get(line).map_or("<end of file>".into(), |l| clip(l))
    ));
    out
}

/// Compares `actual` with the committed file, or rewrites it under [`REWRITE`].
fn compare_or_rewrite(path: &Path, actual: &str) {
    let committed = fs::read_to_string(path).ok();
    if rewriting() {
        if committed.as_deref() != Some(actual) {
            fs::create_dir_all(path.parent().expect("a parent")).expect("create the directory");
            fs::write(path, actual).expect("write the fixture");
            println!("rewrote {}", path.display());
        }
        return;
    }
    let Some(committed) = committed else {
        panic!(
            "{} is missing: run with {REWRITE}=1 to write it, then review it",
            path.display()
        );
    };
    if committed != actual {
        panic!(
            "{} does not match (rerun with {REWRITE}=1 to rewrite it, then review the diff)\n{}",
            path.display(),
            first_difference(&committed, actual)
        );
    }
}

fn case(name: &str) -> &'static Case {
    CASES
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

#[rstest]
#[case::clean_session("clean_session")]
#[case::crash_mid_run("crash_mid_run")]
#[case::crash_mid_recovery("crash_mid_recovery")]
#[case::eviction_by_age("eviction_by_age")]
#[case::eviction_by_count("eviction_by_count")]
#[case::idempotent_start("idempotent_start")]
#[case::turn_ceiling("turn_ceiling")]
#[case::double_completion("double_completion")]
#[case::approvals("approvals")]
#[case::open_at_crash("open_at_crash")]
fn golden_replay(#[case] name: &str) {
    let case = case(name);
    let dir = fixture_dir();
    let log_path = dir.join(format!("{name}.jsonl"));

    // The committed log is what its program writes.
    let written = (case.write)();
    compare_or_rewrite(&log_path, &render_jsonl(written.log()));

    // Replaying the committed log gives the state the program built...
    let text = fs::read_to_string(&log_path).expect("the committed log");
    let log = parse_jsonl(&text);
    let state = replay(&log).unwrap_or_else(|e| panic!("{name}.jsonl does not replay: {e}"));
    assert_eq!(
        canonical::render_text(&state),
        canonical::render_text(written.state()),
        "replaying the JSONL differs from folding the events as they were written"
    );

    // ...and the reviewed expectations.
    let (doc, recovered) = expected_doc(case, &state, log.len());
    let pretty = serde_json::to_string_pretty(&doc).expect("render") + "\n";
    compare_or_rewrite(&dir.join(format!("{name}.expected.json")), &pretty);

    // Whatever the file says: a recovered state needs no more recovery.
    let again = recovery::recover(&recovered, case.now(), &case.retention());
    assert!(again.is_empty(), "recovery is not idempotent: {again:#?}");
}

/// Every log in the fixture directory is a case, with its expected file.
#[test]
fn every_fixture_is_a_case() {
    if rewriting() {
        // The cases are being (re)written concurrently; the next plain run checks them.
        return;
    }
    let mut logs: Vec<String> = fs::read_dir(fixture_dir())
        .expect("the fixture directory")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".jsonl").map(str::to_owned)
        })
        .collect();
    logs.sort();
    let mut cases: Vec<String> = CASES.iter().map(|c| c.name.to_owned()).collect();
    cases.sort();
    assert_eq!(logs, cases, "fixture logs and cases");
    for name in &cases {
        assert!(
            fixture_dir().join(format!("{name}.expected.json")).exists(),
            "{name}.expected.json is missing"
        );
    }
}

/// A log with a second `run.ended` for one run does not replay: the error names the seq
/// of the contradicting event.
#[test]
fn a_second_end_of_a_run_fails_to_replay_naming_its_seq() {
    let path = fixture_dir().join("bad/second_run_ended.jsonl");
    let log = parse_jsonl(&fs::read_to_string(&path).expect("the bad fixture"));
    let err = replay(&log).expect_err("a contradicting log");
    assert_eq!(err.seq, 8);
    assert_eq!(err.kind, "run.ended");
    assert_eq!(err.contradiction, Contradiction::RunEnded("run-1".into()));
    assert!(err.to_string().contains("seq 8"), "{err}");
    // Through the writer's replay too, as the daemon and car-replay read a log.
    let mem = car_events::MemLog::new();
    car_events::EventLog::append(&mem, &log).expect("append");
    let replayed = car_events::replay(&mem, &mut State::new(), 1, |_| {});
    match replayed {
        Err(car_events::ReplayError::Apply { seq, .. }) => assert_eq!(seq, 8),
        other => panic!("expected an apply error at seq 8, got {other:?}"),
    }
}

/// The "program writes the committed log" check can fail: a log that lost an event no
/// longer matches, and the report names the first differing line.
#[test]
fn the_difference_report_names_the_first_differing_line() {
    let expected = "{\n  \"a\": 1,\n  \"b\": 2,\n  \"c\": 3\n}\n";
    let actual = "{\n  \"a\": 1,\n  \"b\": 20,\n  \"c\": 3\n}\n";
    let report = first_difference(expected, actual);
    assert!(
        report.starts_with("first difference at line 3 (1 lines differ"),
        "{report}"
    );
    assert!(report.contains("-     3 |   \"b\": 2,"), "{report}");
    assert!(report.contains("+     3 |   \"b\": 20,"), "{report}");
    let shorter = first_difference(expected, "{\n  \"a\": 1,\n");
    assert!(shorter.contains("<end of file>"), "{shorter}");
}

/// A crash mid-run ends the run `incomplete`/`daemon_restart` at the next start.
#[test]
fn a_run_in_progress_at_a_crash_ends_as_daemon_restart() {
    let case = case("crash_mid_run");
    let written = (case.write)();
    let state = written.state();
    let run = state.runs().next().expect("the run");
    let recovery = recovery::recover(state, case.now(), &case.retention());
    assert!(
        recovery.contains(&Event::RunEnded(car_events::event::RunEnded {
            run_id: run.run_id.clone(),
            agent_id: "coder".into(),
            termination: car_events::event::Termination::Incomplete {
                reason: IncompleteReason::DaemonRestart
            },
        }))
    );
}
