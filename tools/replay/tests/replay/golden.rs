//! Every command on the golden log of car-events (66 events, every kind, two daemon
//! lives, four runs: two evicted, one with tool calls and an approval).

use car_events::{EventLog, MemLog, Seq};
use car_projections::{State, canonical, trace};
use serde_json::{Value, json};

use crate::fixtures::{DataDir, golden_envelopes, golden_jsonl};

/// The state folded from the golden log up to `seq`, and the log in memory.
fn folded(seq: Seq) -> (State, MemLog) {
    let log = MemLog::new();
    log.append(&golden_envelopes()).unwrap();
    let mut state = State::new();
    for env in golden_envelopes().iter().take(seq as usize) {
        state.apply(env).unwrap();
    }
    (state, log)
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[test]
fn events_renders_the_golden_log_exactly_as_its_jsonl() {
    let data = DataDir::golden();
    for threads in ["1", "2", "4"] {
        let run = data.run(&["--threads", threads, "events"]).expect(0);
        assert_eq!(run.stdout, golden_jsonl(), "with {threads} threads");
        assert_eq!(run.stderr, "");
    }
}

#[test]
fn events_filters_by_seq_time_kind_run_and_session() {
    let data = DataDir::golden();
    let kinds = data.run(&["events", "--kind", "run.started"]).expect(0);
    assert_eq!(seqs(&kinds.json_lines()), [8, 33, 41, 60]);
    let prefix = data
        .run(&["events", "--kind", "approval.*,daemon.stopped"])
        .expect(0);
    assert_eq!(
        seqs(&prefix.json_lines()),
        [20, 21, 28, 29, 44, 48, 62, 63, 66]
    );
    let range = data
        .run(&["events", "--from", "10", "--to", "12"])
        .expect(0);
    let jsonl = golden_jsonl();
    let lines: Vec<&str> = jsonl.lines().skip(9).take(3).collect();
    assert_eq!(range.stdout, lines.join("\n") + "\n");
    let time = data
        .run(&[
            "events",
            "--since",
            "2026-11-24T09:05:42.875Z",
            "--until",
            "2026-11-24T09:05:56.895Z",
        ])
        .expect(0);
    assert_eq!(seqs(&time.json_lines()), [30, 31]);
    // A run: its own events, the tool calls and proposal indexed under it, the approval
    // its owner asked for while it ran (and its resolution), and its eviction; not the
    // subscription that watched it, nor the approval asked after it ended.
    let run = data.run(&["events", "--run", "run-7f3a9c2e"]).expect(0);
    let expected: Vec<u64> = [8, 10].into_iter().chain(11..=26).chain([55]).collect();
    assert_eq!(seqs(&run.json_lines()), expected);
    let with_kind = data
        .run(&[
            "events",
            "--run",
            "run-7f3a9c2e",
            "--kind",
            "tool_call.*",
            "--to",
            "16",
        ])
        .expect(0);
    assert_eq!(seqs(&with_kind.json_lines()), [12, 13, 14, 15, 16]);
    // A session: what names it, and the outcome of its tool call and proposal.
    let session = data.run(&["events", "--session", "sess-ops-1"]).expect(0);
    assert_eq!(seqs(&session.json_lines()), [32, 33, 34, 35, 36, 37, 38]);
}

#[test]
fn runs_lists_the_retained_runs_newest_first_and_the_evicted_on_request() {
    let data = DataDir::golden();
    let all = data.run(&["runs", "--json"]).expect(0).json();
    assert_eq!(all["head"], 66);
    assert_eq!(
        all["runs"],
        json!([
            {"run_id": "run-d4e8f610", "agent_id": "agent-researcher",
             "intent": "Translate the summary: « résumé », 要約, резюме",
             "started_at": "2026-11-24T11:52:54.000Z", "ended_at": "2026-11-24T11:54:28.350Z",
             "status": "incomplete", "turn_count": 2},
            {"run_id": "nightly-digest-2026-11-24", "agent_id": "agent-digest",
             "intent": "Nightly digest of open incidents",
             "started_at": "2026-11-24T09:08:14.466Z", "ended_at": "2026-11-24T11:52:48.469Z",
             "status": "incomplete", "turn_count": 0},
        ])
    );
    let evicted = data.run(&["runs", "--evicted", "--json"]).expect(0).json();
    let ids: Vec<&str> = evicted["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "run-d4e8f610",
            "nightly-digest-2026-11-24",
            "run-b21d04aa",
            "run-7f3a9c2e"
        ]
    );
    assert_eq!(evicted["runs"][0]["evicted"], Value::Null);
    assert_eq!(
        evicted["runs"][3]["evicted"],
        json!({"seq": 55, "at": "2026-11-24T11:52:48.470Z", "reason": "age"})
    );
    assert_eq!(evicted["runs"][3]["status"], "completed");
    assert_eq!(evicted["runs"][3]["turn_count"], 3);

    let filtered = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["runs", "--evicted", "--json"];
        all.extend_from_slice(args);
        data.run(&all).expect(0).json()["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(filtered(&["--status", "completed"]), ["run-7f3a9c2e"]);
    assert_eq!(
        filtered(&["--agent", "agent-researcher"]),
        ["run-d4e8f610", "run-7f3a9c2e"]
    );
    assert_eq!(
        filtered(&[
            "--since",
            "2026-11-24T09:05:57.045Z",
            "--until",
            "2026-11-24T11:00:00Z"
        ]),
        ["nightly-digest-2026-11-24", "run-b21d04aa"]
    );
    assert_eq!(filtered(&["--limit", "1"]), ["run-d4e8f610"]);
    assert!(filtered(&["--since", "2026-11-25"]).is_empty());

    let table = data.run(&["runs", "--evicted"]).expect(0);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].starts_with("RUN "), "{}", table.stdout);
    assert!(
        lines[4].starts_with("run-7f3a9c2e")
            && lines[4].contains("completed (evicted: age)")
            && lines[4].contains("27.458s"),
        "{}",
        table.stdout
    );
    assert_eq!(lines.last(), Some(&"4 runs"));
}

#[test]
fn trace_json_has_the_daemons_records_and_what_else_belongs_to_the_run() {
    let data = DataDir::golden();
    let traced = data
        .run(&["trace", "run-7f3a9c2e", "--json"])
        .expect(0)
        .json();
    // The records are exactly what `runs.get_trace` builds for the run (it was evicted at
    // seq 55: the daemon's state just before that still had it).
    let (state, log) = folded(54);
    let run = state.run("run-7f3a9c2e").unwrap();
    let records = trace::trace_records(&log, run, 0, usize::MAX).unwrap();
    assert_eq!(traced["records"], Value::Array(records));
    assert_eq!(traced["cursor"], 5);
    let kinds: Vec<&str> = traced["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["record"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["started", "turn", "turn", "turn", "ended"]);
    assert_eq!(traced["status"], "completed");
    assert_eq!(traced["evicted"]["seq"], 55);
    assert_eq!(
        seqs(traced["tool_calls"].as_array().unwrap()),
        [11, 12, 13, 14, 15, 16, 17, 18, 19, 22, 23, 24]
    );
    assert_eq!(traced["tool_calls"][4]["kind"], "tool_call.failed");
    let approvals = traced["approvals"].as_array().unwrap();
    assert_eq!(approvals.len(), 1, "{approvals:?}");
    assert_eq!(approvals[0]["id"], "appr-1");
    assert_eq!(approvals[0]["status"], "resolved");
    assert_eq!(approvals[0]["resolution"], "approve");

    // A retained run, whose approval was denied; a run with no owner session gets no
    // approval of another session's.
    let d4e8 = data
        .run(&["trace", "run-d4e8f610", "--json"])
        .expect(0)
        .json();
    assert_eq!(d4e8["evicted"], Value::Null);
    assert_eq!(d4e8["approvals"][0]["id"], "appr-4");
    assert_eq!(d4e8["approvals"][0]["resolution"], "deny");
    assert_eq!(
        d4e8["records"][3]["termination"],
        json!({"kind": "incomplete", "reason": "daemon_shutdown"})
    );
    let nightly = data
        .run(&["trace", "nightly-digest-2026-11-24", "--json"])
        .expect(0)
        .json();
    assert_eq!(nightly["approvals"], json!([]));
    assert_eq!(nightly["tool_calls"], json!([]));
}

/// Regression (issue 9): `trace` needed the whole run id. A unique prefix now names the
/// run (live or evicted), as git takes a commit hash; an ambiguous one lists the runs it
/// matches (exit 64); one that matches nothing is not found (exit 5).
#[test]
fn trace_takes_a_unique_prefix_of_a_run_id_and_lists_the_runs_an_ambiguous_one_matches() {
    let data = DataDir::golden();
    let whole = data
        .run(&["trace", "run-7f3a9c2e", "--json"])
        .expect(0)
        .json();
    let by_prefix = data.run(&["trace", "run-7f", "--json"]).expect(0).json();
    assert_eq!(by_prefix, whole);
    let retained = data.run(&["trace", "run-d4", "--json"]).expect(0).json();
    assert_eq!(retained["records"][0]["run_id"], "run-d4e8f610");

    let ambiguous = data.run(&["trace", "run-"]).expect(64);
    assert!(
        ambiguous
            .stderr
            .contains("run id prefix `run-` is ambiguous"),
        "{}",
        ambiguous.stderr
    );
    for id in ["run-7f3a9c2e", "run-d4e8f610"] {
        assert!(ambiguous.stderr.contains(id), "{}", ambiguous.stderr);
    }
    assert!(
        ambiguous.stderr.contains("(evicted)"),
        "{}",
        ambiguous.stderr
    );
    let none = data.run(&["trace", "zz"]).expect(5);
    assert!(none.stderr.contains("no run `zz`"), "{}", none.stderr);
}

#[test]
fn trace_text_reads_as_a_timeline_with_offsets_and_durations() {
    let data = DataDir::golden();
    let text = data.run(&["trace", "run-7f3a9c2e"]).expect(0).stdout;
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("run run-7f3a9c2e  agent agent-researcher  completed  3 turns"),
        "{text}"
    );
    assert!(text.contains("evicted by retention at seq 55"), "{text}");
    let at = |what: &str| {
        lines
            .iter()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line with {what:?} in:\n{text}"))
    };
    // In time order, each with its offset from the start.
    assert!(at("+0.000s  started") < at("turn 0") && at("turn 0") < at("turn 2"));
    assert!(at("tool_call.failed") < at("approval.requested"));
    assert!(at("approval.resolved") < at("ended"));
    assert!(
        lines[at("tool_call.timed_out")].contains("after 5.000s"),
        "{text}"
    );
    assert!(
        lines[at("approval.resolved")].contains("approve after 14.250s"),
        "{text}"
    );
    assert!(lines[at("ended")].contains("+27.458s"), "{text}");
    assert!(lines[at("ended")].contains("outcome success"), "{text}");
}

#[test]
fn state_travels_to_any_seq_with_the_canonical_digest() {
    let data = DataDir::golden();
    for at in [0, 26, 45, 66] {
        let shown = data
            .run(&["state", "--at", &at.to_string(), "--json"])
            .expect(0)
            .json();
        let (state, _) = folded(at);
        assert_eq!(shown["seq"], at);
        assert_eq!(shown["digest"], canonical::digest(&state), "at {at}");
        assert_eq!(shown["state"], canonical::render(&state), "at {at}");
    }
    let at_26 = data
        .run(&["state", "--at", "26", "--json"])
        .expect(0)
        .json();
    assert_eq!(at_26["ts"], "2026-11-24T09:00:31.165Z");
    assert_eq!(
        at_26["state"]["runs"]["run-7f3a9c2e"]["status"],
        "completed"
    );
    let head = data.run(&["state"]).expect(0).stdout;
    let (state, _) = folded(66);
    assert!(
        head.starts_with("state at seq 66 (2026-11-24T11:54:28.354Z)\n"),
        "{head}"
    );
    assert!(head.contains(&canonical::digest(&state)), "{head}");
    assert!(head.contains("stopped cleanly"), "{head}");
}

#[test]
fn verify_passes_the_golden_log() {
    let data = DataDir::golden();
    let report = data.run(&["verify", "--json"]).expect(0).json();
    let (state, _) = folded(66);
    assert_eq!(report["ok"], true);
    assert_eq!(report["records"], 66);
    assert_eq!(report["problems"], json!([]));
    assert_eq!(report["folded_to"], 66);
    assert_eq!(report["digest"], canonical::digest(&state));
    assert_eq!(report["rebuild_digests_match"], true);
    assert_eq!(report["daemon"], "rebuilds the state to seq 66");
    let text = data.run(&["verify"]).expect(0).stdout;
    assert!(text.contains("OK: 66 records"), "{text}");
}

#[test]
fn stats_count_kinds_runs_and_turns() {
    let data = DataDir::golden();
    let stats = data.run(&["stats", "--json"]).expect(0).json();
    assert_eq!(stats["events"], 66);
    assert_eq!(stats["by_kind"]["tool_call.dispatched"]["count"], 7);
    assert_eq!(stats["by_kind"]["run.started"]["count"], 4);
    let stored: u64 = crate::fixtures::golden_records()
        .iter()
        .map(|(_, bytes)| bytes.len() as u64)
        .sum();
    assert_eq!(stats["size"]["records"], stored);
    assert_eq!(
        stats["runs"],
        json!({"total": 4, "in_progress": 0, "completed": 1, "incomplete": 3, "evicted": 2})
    );
    // Turns per run: 3, 0, 0, 2.
    assert_eq!(
        stats["turns_per_run"],
        json!({"min": 0, "median": 0, "p99": 3, "max": 3, "mean": 1.3})
    );
    assert!(stats["size"]["on_disk"].as_u64().unwrap() > stored);
    let text = data.run(&["stats"]).expect(0).stdout;
    assert!(
        text.lines().any(|l| l
            .split_whitespace()
            .take(2)
            .eq(["tool_call.dispatched", "7"])),
        "{text}"
    );
    assert!(
        text.contains("turns per run  min 0, median 0, p99 3, max 3"),
        "{text}"
    );
}

/// `trace` shows a model turn (`runs.record_model_turn`, §14.3) in its place among the
/// action turns: JSON as the daemon serves it, a text line naming the model.
#[test]
fn trace_shows_model_turns_among_the_turns() {
    use car_events::event::{
        DaemonStarted, Role, RunStarted, SessionAuthenticated, SessionOpened, TurnsRecorded,
    };
    use car_events::{Envelope, Event, JsonText, SCHEMA_VERSION};
    let at = |seq: u64| {
        chrono::DateTime::from_timestamp_millis(1_764_000_000_000 + 1000 * seq as i64).unwrap()
    };
    let events: Vec<Event> = vec![
        Event::DaemonStarted(DaemonStarted {
            version: "0.1.0".into(),
            pid: 1,
            data_dir: "/d".into(),
            listen: "127.0.0.1:9100".into(),
        }),
        Event::SessionOpened(SessionOpened {
            client_id: "c1".into(),
            peer: "127.0.0.1:1".into(),
            role: None,
            agent_id: None,
        }),
        Event::SessionAuthenticated(SessionAuthenticated {
            client_id: "c1".into(),
            role: Role::Agent,
            agent_id: Some("a1".into()),
        }),
        Event::RunStarted(RunStarted {
            run_id: "run-m".into(),
            agent_id: "a1".into(),
            client_id: Some("c1".into()),
            intent: "think".into(),
            outcome_description: None,
            idempotency_key: None,
        }),
        Event::TurnsRecorded(TurnsRecorded {
            run_id: "run-m".into(),
            base_index: 0,
            turns: vec![JsonText::from(
                json!({"prompt": "p", "tool": "search", "verifier_verdict": "not_run", "policy_rejected": false}),
            )],
        }),
        Event::TurnsRecorded(TurnsRecorded {
            run_id: "run-m".into(),
            base_index: 1,
            turns: vec![JsonText::from(json!({
                "record": "model_turn", "turn_index": 1, "assistant_text": "let me look",
                "requested_tool_calls": [{"id": "c", "name": "grep", "arguments": {}}],
                "model_id": "claude-test", "token_usage": {"total_tokens": 42}, "duration_ms": 1500,
            }))],
        }),
    ];
    let envelopes: Vec<Envelope> = events
        .into_iter()
        .zip(1..)
        .map(|(event, seq)| Envelope {
            seq,
            event_id: uuid::Uuid::from_u128(u128::from(seq)),
            ts: at(seq),
            schema_version: SCHEMA_VERSION,
            event,
        })
        .collect();
    let data = DataDir::with_envelopes(&envelopes);
    let traced = data.run(&["trace", "run-m", "--json"]).expect(0).json();
    let kinds: Vec<&str> = traced["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["record"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["started", "turn", "model_turn"]);
    assert_eq!(traced["records"][2]["index"], 1);
    assert_eq!(traced["records"][2]["model_id"], "claude-test");
    let text = data.run(&["trace", "run-m"]).expect(0).stdout;
    let line = text
        .lines()
        .find(|l| l.contains("model turn 1"))
        .unwrap_or_else(|| panic!("no model turn line in:\n{text}"));
    for part in [
        "model claude-test",
        "\"let me look\"",
        "asks grep",
        "42 tokens",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
}
