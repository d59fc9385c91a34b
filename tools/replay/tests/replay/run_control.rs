//! Runs v3 in the audit (PROTOCOL.md §14.1–14.2): `trace` shows cancellations with their
//! receipts (checked), the quarantine and the orphan end, and resumes; `verify` passes the
//! golden-v6 log and names a receipt whose digest does not recompute, an outcome without
//! its marker and a second outcome of one.

use car_events::codec;
use car_events::{Event, JsonText};

use crate::fixtures::{DataDir, golden_v6_records};

#[test]
fn verify_passes_the_runs_v3_golden_log() {
    let data = DataDir::golden_v6();
    let report = data.run(&["verify", "--json"]).expect(0).json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["problems"], serde_json::json!([]));
}

#[test]
fn trace_shows_cancellations_receipts_and_resumes() {
    let data = DataDir::golden_v6();
    let text = data.run(&["trace", "run-c1"]).expect(0).stdout;
    for needle in [
        "run.cancellation_requested",
        "key stop-1  by agent:agent-ops",
        "CANCELLED_CONFIRMED",
        "receipt digest ok",
        "cancelled (key stop-1)",
        "approval.requested_in_run",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
    let quarantined = data.run(&["trace", "run-c2"]).expect(0).stdout;
    for needle in [
        "TERMINATION_UNCONFIRMED",
        "ALREADY_TERMINAL",
        "incomplete: cancelled_orphan",
    ] {
        assert!(
            quarantined.contains(needle),
            "{needle:?} missing:\n{quarantined}"
        );
    }
    let resumed = data.run(&["trace", "run-c3"]).expect(0).stdout;
    assert!(
        resumed.contains("run.resumed")
            && resumed.contains("by sess-a3 (agent agent-ops) from sess-a2"),
        "{resumed}"
    );
    // The JSON trace carries the related events whole, the receipt among them.
    let json = data.run(&["trace", "run-c1", "--json"]).expect(0).json();
    let text = json.to_string();
    assert!(text.contains("receipt_digest"), "{json}");
}

#[test]
fn verify_names_a_receipt_whose_digest_does_not_recompute() {
    let mut records = golden_v6_records();
    // Seq 11 is run-c1's result: change its status inside the receipt only.
    let (seq, bytes) = records[10].clone();
    let mut env = codec::decode(seq, &bytes).unwrap();
    let Event::RunCancellationResult(result) = &mut env.event else {
        panic!("seq 11 is a cancellation result: {:?}", env.event);
    };
    let mut receipt = result.receipt.to_value();
    receipt["action_id"] = "forged".into();
    result.receipt = JsonText::from_value(&receipt);
    records[10] = (seq, codec::encode(&env).unwrap());
    let data = DataDir::with_records(&records);
    let report = data.run(&["verify", "--json"]).expect(1).json();
    let problem = &report["problems"][0];
    assert_eq!(problem["seq"], 11, "{report}");
    assert_eq!(problem["check"], "invariant");
    let message = problem["message"].as_str().unwrap();
    assert!(message.contains("receipt_digest"), "{message}");
}

#[test]
fn verify_names_a_tool_call_outcome_without_its_marker_and_a_second_outcome() {
    use crate::fixtures::golden_envelopes;
    use car_events::event::ToolCallCompleted;
    let completed = |request: &str| {
        Event::ToolCallCompleted(ToolCallCompleted {
            request_id: request.into(),
            output: JsonText::from(serde_json::json!("forged")),
            elapsed_ms: 1,
        })
    };
    // The first problem `verify` reports for the golden log with `seq` replaced.
    let first_problem = |seq: usize, event: Event| {
        let mut envelopes = golden_envelopes();
        envelopes[seq - 1].event = event;
        let report = DataDir::with_envelopes(&envelopes)
            .run(&["verify", "--json"])
            .expect(1)
            .json();
        report["problems"][0].clone()
    };
    // Seq 13 completes rpc-101 (dispatched at 12): make it a call never dispatched.
    let problem = first_problem(13, completed("rpc-999"));
    assert_eq!(
        (problem["seq"].as_u64(), problem["check"].as_str()),
        (Some(13), Some("invariant"))
    );
    assert!(
        problem["message"].as_str().unwrap().contains("rpc-999"),
        "{problem}"
    );
    // Seq 14 dispatches rpc-102: make it a second outcome of rpc-101.
    let problem = first_problem(14, completed("rpc-101"));
    assert_eq!(
        (problem["seq"].as_u64(), problem["check"].as_str()),
        (Some(14), Some("invariant"))
    );
    assert!(
        problem["message"].as_str().unwrap().contains("rpc-101"),
        "{problem}"
    );
}
