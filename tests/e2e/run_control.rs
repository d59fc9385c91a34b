//! PROTOCOL.md §14.1–14.2 over a real WebSocket: `runs.cancel` (receipts whose digests
//! recompute, idempotent retries, a tool call in flight abandoned with `tools.cancel`,
//! orphans ended by a host) and `runs.resume` (the lease, recovery-only proposals, every
//! refusal), each behind its capability; and approvals that carry their run (§14.5).

use car_events::receipt::{self, Receipt};
use car_tests::{Client, Server};
use serde_json::{Value, json};

use crate::proposals::action_of;
use crate::runs::{full_trace, record, start};
use crate::server;

const CANCEL: &str = "runs.cancel.v1";
const RESUME: &str = "runs.resume.v1";

/// Negotiates protocol 3 with `caps`.
async fn v3(client: &mut Client, caps: &[&str]) {
    let answer = client
        .ok(
            "server.handshake",
            json!({"protocol_version": 3, "required_capabilities": caps}),
        )
        .await;
    let mut expected: Vec<&str> = caps.to_vec();
    expected.sort_unstable();
    assert_eq!(answer["negotiated_capabilities"], json!(expected));
}

async fn agent_v3(server: &Server, agent_id: &str) -> Client {
    let mut agent = server.auth_agent(agent_id).await;
    v3(&mut agent, &[CANCEL, RESUME]).await;
    agent
}

async fn host_v3(server: &Server) -> Client {
    let mut host = server.auth_host().await;
    v3(&mut host, &[CANCEL, RESUME]).await;
    host
}

/// The receipt, checked: the shape of §14.1, and a `receipt_digest` that recomputes.
fn checked(answer: &Value) -> Receipt {
    Receipt::parse_checked(answer).unwrap_or_else(|err| panic!("{err}: {answer}"))
}

/// The `ended` record of a run's trace, as `runs.get_trace` serves it.
async fn ended_record(client: &mut Client, run_id: &str) -> Value {
    let trace = full_trace(client, run_id).await;
    let last = trace["records"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["record"], "ended", "{trace}");
    last
}

async fn status_of(client: &mut Client, run_id: &str) -> Value {
    let list = client.ok("runs.list", json!({})).await;
    list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == run_id)
        .map(|r| r["status"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn cancel_and_resume_need_their_capabilities() {
    let server = server(&[]).await;
    let mut agent = server.auth_agent("a").await;
    let run = start(&mut agent, "a").await;
    let err = agent
        .err(
            "runs.cancel",
            json!({"run_id": run, "idempotency_key": "k", "reason": "r"}),
        )
        .await;
    assert_eq!(err.code, -32008);
    assert_eq!(
        err.message,
        "protocol capability mismatch: runs.cancel requires runs.cancel.v1"
    );
    let err = agent.err("runs.resume", json!({"run_id": run})).await;
    assert_eq!(err.code, -32008);
    assert_eq!(
        err.message,
        "protocol capability mismatch: runs.resume requires runs.resume.v1"
    );
    // Offered in version 3 (§10), and then served.
    v3(&mut agent, &[CANCEL, RESUME, "runs.pagination.v1"]).await;
    let answer = agent
        .ok(
            "runs.cancel",
            json!({"run_id": run, "idempotency_key": "k", "reason": "r"}),
        )
        .await;
    assert_eq!(answer["status"], "cancelled_confirmed");
}

#[tokio::test]
async fn cancel_params_and_visibility_are_checked() {
    let server = server(&[]).await;
    let mut agent = agent_v3(&server, "a").await;
    let mut other = agent_v3(&server, "b").await;
    let run = start(&mut agent, "a").await;
    let long_key = "k".repeat(129);
    let long_reason = "r".repeat(1025);
    for (params, message) in [
        (
            json!({"run_id": run, "idempotency_key": "k", "reason": "r", "force": true}),
            "invalid params: unknown field 'force'",
        ),
        (
            json!({"run_id": run, "idempotency_key": "", "reason": "r"}),
            "invalid params: idempotency_key: must not be empty",
        ),
        (
            json!({"run_id": run, "reason": "r"}),
            "invalid params: params: missing field `idempotency_key`",
        ),
        (
            json!({"run_id": run, "idempotency_key": long_key, "reason": "r"}),
            "invalid params: idempotency_key: at most 128 bytes",
        ),
        (
            json!({"run_id": run, "idempotency_key": "k", "reason": long_reason}),
            "invalid params: reason: at most 1024 bytes",
        ),
    ] {
        let err = agent.err("runs.cancel", params.clone()).await;
        assert_eq!(
            (err.code, err.message.as_str()),
            (-32602, message),
            "{params}"
        );
    }
    for (client, run_id) in [(&mut agent, "no-such-run"), (&mut other, run.as_str())] {
        let err = client
            .err(
                "runs.cancel",
                json!({"run_id": run_id, "idempotency_key": "k", "reason": "r"}),
            )
            .await;
        assert_eq!(err.code, -32603);
        assert_eq!(err.message, format!("unknown run_id `{run_id}`"));
    }
    // Nothing was recorded by any of them.
    let mut host = server.auth_host().await;
    let requested = host.whole_log(Some(&["run.cancellation_requested"])).await;
    assert!(requested.is_empty(), "{requested:?}");
}

#[tokio::test]
async fn a_host_cancels_a_run_while_its_tool_call_is_in_flight() {
    let server = server(&[]).await;
    let mut agent = agent_v3(&server, "a").await;
    let mut host = host_v3(&server).await;
    let run = start(&mut agent, "a").await;
    let submit = agent
        .request(
            "proposal.submit",
            json!({"proposal": {"id": "p-1", "actions": [
                {"id": "a1", "tool": "deploy"},
                {"id": "a2", "tool": "notify"},
            ]}}),
        )
        .await
        .unwrap();
    let call = agent.next_tool_call().await;
    assert_eq!(action_of(&call), "a1");

    let reason = "the operator pressed stop";
    let params = json!({"run_id": run, "idempotency_key": "stop-1", "reason": reason});
    let answer = host.ok("runs.cancel", params.clone()).await;
    let cancelled = format!("run '{run}' cancelled");
    // The tool client was told, with the action's error text.
    let cancel = agent.next_request("tools.cancel").await.unwrap();
    assert_eq!(
        cancel["params"],
        json!({"request_id": call["id"], "action_id": "a1", "reason": cancelled})
    );
    let receipt = checked(&answer);
    assert_eq!(receipt.status, "cancelled_confirmed");
    assert_eq!(receipt.principal, "host");
    assert_eq!(receipt.run_id, run);
    assert_eq!(receipt.idempotency_key, "stop-1");
    assert_eq!(receipt.reason_digest, receipt::reason_digest(reason));
    assert_eq!(receipt.action_id.as_deref(), Some("a1"));
    assert_eq!(receipt.request_id.as_deref(), call["id"].as_str());

    // The proposal: the awaited action failed with the cancellation, the rest skipped.
    let result = agent
        .serve_tools_until(&submit, |_| panic!("nothing is dispatched after a cancel"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result["final_state"], "failed");
    assert_eq!(result["errors"]["a1"], json!(cancelled));
    assert_eq!(result["results"][1]["status"], "skipped");

    // The end, and the receipt's digest of it.
    let ended = ended_record(&mut host, &run).await;
    assert_eq!(
        ended["termination"],
        json!({"kind": "cancelled", "idempotency_key": "stop-1",
               "reason_digest": receipt::reason_digest(reason)})
    );
    assert_eq!(
        receipt.terminal_digest.as_deref(),
        Some(receipt::jcs_digest(&ended).as_str())
    );
    assert_eq!(status_of(&mut host, &run).await, "incomplete");

    // Retries: the same receipt, byte for byte; a changed reason is refused.
    assert_eq!(host.ok("runs.cancel", params.clone()).await, answer);
    let err = host
        .err(
            "runs.cancel",
            json!({"run_id": run, "idempotency_key": "stop-1", "reason": "other"}),
        )
        .await;
    assert_eq!(err.code, -32602);
    assert_eq!(
        err.message,
        "runs.cancel: idempotency_key already used with a different reason or principal"
    );
    // The same key from another principal is refused too.
    let err = agent.err("runs.cancel", params).await;
    assert_eq!(err.code, -32602, "{err}");
    // A new key on the ended run: already terminal, nothing new appended but its record.
    let again = agent
        .ok(
            "runs.cancel",
            json!({"run_id": run, "idempotency_key": "stop-2", "reason": reason}),
        )
        .await;
    let again = checked(&again);
    assert_eq!(again.status, "already_terminal");
    assert_eq!(again.principal, "agent:a");
    assert_eq!(again.terminal_digest, receipt.terminal_digest);
    assert_eq!(again.action_id, None);
    let err = agent
        .err(
            "runs.complete",
            json!({"run_id": run, "outcome": {"status": "success"}}),
        )
        .await;
    assert!(err.message.contains("already terminal"), "{err}");

    // The log keeps the reason's digest, never the reason.
    let log = host.whole_log(None).await;
    let text = serde_json::to_string(&log).unwrap();
    assert!(!text.contains(reason), "the reason reached the log");
    let kinds: Vec<&str> = log
        .iter()
        .filter(|e| e["data"]["run_id"] == run)
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| k.starts_with("run.cancellation") || *k == "run.ended")
        .collect();
    assert_eq!(
        kinds,
        [
            "run.cancellation_requested",
            "run.ended",
            "run.cancellation_result",
            "run.cancellation_requested",
            "run.cancellation_result",
        ]
    );
}

#[tokio::test]
async fn an_owner_cancels_its_own_run_and_its_later_proposals_are_refused_by_the_end() {
    let server = server(&[]).await;
    let mut agent = agent_v3(&server, "a").await;
    let run = start(&mut agent, "a").await;
    record(&mut agent, &run, vec![json!({"tool": "t"})]).await;
    let answer = agent
        .ok(
            "runs.cancel",
            json!({"run_id": run, "idempotency_key": "k1", "reason": "done early"}),
        )
        .await;
    let receipt = checked(&answer);
    assert_eq!(
        (receipt.status.as_str(), receipt.principal.as_str()),
        ("cancelled_confirmed", "agent:a")
    );
    assert_eq!((receipt.action_id, receipt.request_id), (None, None));
    let recorded = agent
        .ok(
            "runs.record_turns",
            json!({"run_id": run, "turns": [{"tool": "t"}]}),
        )
        .await;
    assert_eq!(recorded["dropped"], "run_terminal");
}

#[tokio::test]
async fn a_host_ends_an_orphan_and_only_a_host_may() {
    // A long lease keeps the run in progress after its owner left.
    let server = server(&["--resume-lease", "60"]).await;
    let mut agent = agent_v3(&server, "a").await;
    let run = start(&mut agent, "a").await;
    let mut host = host_v3(&server).await;
    host.ok("log.subscribe", json!({"from_seq": 1})).await;
    agent.close().await;
    // The owner's end is in the log before the host cancels.
    host.next_notification_where("log.event", |n| n["kind"] == "session.closed")
        .await
        .unwrap();
    assert_eq!(status_of(&mut host, &run).await, "in_progress");
    let answer = host
        .ok(
            "runs.cancel",
            json!({"run_id": run, "idempotency_key": "orphan-1", "reason": "nobody home"}),
        )
        .await;
    let receipt = checked(&answer);
    assert_eq!(receipt.status, "already_terminal");
    let ended = ended_record(&mut host, &run).await;
    assert_eq!(
        ended["termination"],
        json!({"kind": "incomplete", "reason": "cancelled_orphan"})
    );
    assert_eq!(
        receipt.terminal_digest.as_deref(),
        Some(receipt::jcs_digest(&ended).as_str())
    );
}

#[tokio::test]
async fn resume_takes_over_a_run_within_the_lease_for_recovery_only() {
    let server = server(&["--resume-lease", "60"]).await;
    let mut host = server.auth_host().await;
    host.ok("log.subscribe", json!({})).await;
    // A client session produces a run of agent `a` (an agent id is held by one
    // connection at a time, so the agent comes back on a new one).
    let mut holder = server.auth_client().await;
    v3(&mut holder, &[CANCEL, RESUME]).await;
    let run = start(&mut holder, "a").await;
    let done = holder
        .submit(
            json!({"id": "p-done", "actions": [{"id": "a1", "tool": "t"}]}),
            |_| car_tests::ToolAnswer::Result(json!("ok")),
        )
        .await;
    assert_eq!(done["final_state"], "completed");

    // Refusals while the producer is live, and for sessions that may never resume.
    let mut agent = agent_v3(&server, "a").await;
    let err = agent.err("runs.resume", json!({"run_id": run})).await;
    assert_eq!(err.code, -32603);
    assert_eq!(
        err.message,
        format!("run `{run}` is still held by a live session")
    );
    let err = holder.err("runs.resume", json!({"run_id": run})).await;
    assert_eq!(err.message, "runs.resume requires an agent-bound session");
    let mut other = agent_v3(&server, "b").await;
    let err = other.err("runs.resume", json!({"run_id": run})).await;
    assert_eq!(err.message, format!("unknown run_id `{run}`"));
    let err = agent
        .err("runs.resume", json!({"run_id": run, "extra": 1}))
        .await;
    assert_eq!(err.message, "invalid params: unknown field 'extra'");

    holder.close().await;
    host.next_notification_where("log.event", |n| n["kind"] == "session.closed")
        .await
        .unwrap();
    let resumed = agent.ok("runs.resume", json!({"run_id": run})).await;
    assert_eq!(resumed["run_id"], run);
    assert_eq!(resumed["agent_id"], "a");
    assert!(resumed["client_id"].is_string());
    assert!(resumed["resumed_from_client_id"].is_string());
    assert_ne!(resumed["client_id"], resumed["resumed_from_client_id"]);

    // Recovery only: the stored result of a proposal made under the run, nothing else.
    let stored = agent
        .ok(
            "proposal.submit",
            json!({"proposal": {"id": "p-done", "actions": [{"id": "a1", "tool": "t"}]}}),
        )
        .await;
    assert_eq!(stored, done);
    let err = agent
        .err(
            "proposal.submit",
            json!({"proposal": {"id": "p-new", "actions": [{"id": "a1", "tool": "t"}]}}),
        )
        .await;
    assert_eq!(err.code, -32603);
    assert_eq!(
        err.message,
        format!("run `{run}` was resumed: only stored proposal results are returned")
    );
    // It is the session's run now: it records and completes it.
    record(&mut agent, &run, vec![json!({"tool": "after-resume"})]).await;
    agent
        .ok(
            "runs.complete",
            json!({"run_id": run, "outcome": {"status": "success"}}),
        )
        .await;
    let err = agent.err("runs.resume", json!({"run_id": run})).await;
    assert_eq!(
        err.message,
        format!("run `{run}` is already terminal — cannot resume")
    );
    let resumed_events = host.whole_log(Some(&["run.resumed"])).await;
    assert_eq!(resumed_events.len(), 1);
}

#[tokio::test]
async fn after_the_lease_the_run_ends_disconnected_and_cannot_be_resumed() {
    let server = server(&["--resume-lease", "0.3"]).await;
    let mut host = server.auth_host().await;
    let mut first = agent_v3(&server, "a").await;
    let run = start(&mut first, "a").await;
    let follow = host.ok("runs.subscribe", json!({"run_id": run})).await;
    assert_eq!(follow["status"], "in_progress");
    first.close().await;
    let ended = host
        .next_notification_where("runs.trace.event", |n| n["record"]["record"] == "ended")
        .await
        .unwrap();
    assert_eq!(
        ended["record"]["termination"],
        json!({"kind": "incomplete", "reason": "disconnected"})
    );
    let mut second = agent_v3(&server, "a").await;
    let err = second.err("runs.resume", json!({"run_id": run})).await;
    assert_eq!(
        err.message,
        format!("run `{run}` is already terminal — cannot resume")
    );
}

#[tokio::test]
async fn approvals_carry_the_run_of_the_session_that_asked() {
    let server = server(&[]).await;
    let mut agent = server.auth_agent("a").await;
    agent.handshake().await;
    let before = agent
        .ok("host.request_approval", json!({"action": "deploy"}))
        .await;
    assert!(before.get("run_id").is_none(), "{before}");
    let run = start(&mut agent, "a").await;
    let approval = agent
        .ok("host.request_approval", json!({"action": "deploy"}))
        .await;
    assert_eq!(approval["run_id"], run);
    let mut host = server.auth_host().await;
    host.handshake().await;
    let listed = host.ok("host.approvals", json!({})).await;
    let found = listed["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == approval["id"])
        .unwrap()
        .clone();
    assert_eq!(found["run_id"], run);
}
