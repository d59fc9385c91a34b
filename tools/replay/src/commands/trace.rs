//! `trace RUN`: one run, turn by turn, with its tool calls and approvals.
//!
//! The records (`started`, turns, `ended`) are built by [`car_projections::trace`], the
//! code that answers `runs.get_trace`, so `--json` gives exactly the daemon's records.
//! What else belongs to the run:
//! - tool calls: the proposal and tool-call events the state indexed under the run
//!   ([`Run::related`]: those dispatched while the run was its session's current run);
//! - approvals: see [`approval_belongs`].

use car_events::event::Event;
use car_events::{Envelope, EventJson, EventLog, Seq, format_ts};
use car_projections::host_feed::approval_json;
use car_projections::state::{Approval, ApprovalStatus};
use car_projections::trace::{TraceError, termination_json, trace_records};
use car_projections::{Run, State};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::Context;
use crate::cli::TraceArgs;
use crate::datadir::OpenLog;
use crate::exit::{Error, Exit};
use crate::output::{Out, clip, duration, ts};
use crate::replay::EvictedRun;

/// How much of a prompt, an output or a parameter list a text line shows.
const TEXT_WIDTH: usize = 60;

/// Whether an approval belongs to a run: it was requested while the run was live (from
/// its `run.started` to its `run.ended`, or to the end of the log while it is in
/// progress), and either by the run's owner session (the session that started it) or
/// naming the run's agent. Gate approvals carry the requesting session; approvals an
/// agent asks for carry its agent id.
pub fn approval_belongs(run: &Run, approval: &Approval) -> bool {
    let live_until = run.end.as_ref().map_or(Seq::MAX, |end| end.seq);
    let during = approval.requested_seq > run.started_seq && approval.requested_seq < live_until;
    let by_owner = run.owner.is_some() && approval.requester == run.owner;
    let for_agent = approval.agent_id.as_deref() == Some(run.agent_id.as_str());
    during && (by_owner || for_agent)
}

/// How many runs an ambiguous prefix error lists.
const AMBIGUOUS_SHOWN: usize = 10;

/// The run `asked` names: its full id, or (as git takes a commit hash) a prefix of exactly
/// one run's id, live or evicted. Several matches: a usage error listing them.
fn resolve<'a>(
    state: &'a State,
    evicted: &'a [EvictedRun],
    asked: &str,
) -> Result<(&'a Run, Option<&'a EvictedRun>), Error> {
    let evicted_run = |id: &str| evicted.iter().rev().find(|e| e.run.run_id == id);
    let exact = |id: &str| match state.run(id) {
        Some(run) => Some((run, None)),
        None => evicted_run(id).map(|e| (&e.run, Some(e))),
    };
    if let Some(found) = exact(asked) {
        return Ok(found);
    }
    let mut ids: Vec<&str> = state
        .runs()
        .map(|run| run.run_id.as_str())
        .chain(evicted.iter().map(|e| e.run.run_id.as_str()))
        .filter(|id| !asked.is_empty() && id.starts_with(asked))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    match ids.as_slice() {
        [] => Err(Error::NotFound(format!(
            "no run `{asked}` in the log (`car-replay runs --evicted` lists every run)"
        ))),
        [id] => Ok(exact(id).expect("a listed id names a run")),
        many => {
            let mut lines: Vec<String> = many
                .iter()
                .take(AMBIGUOUS_SHOWN)
                .filter_map(|id| exact(id))
                .map(|(run, evicted)| {
                    format!(
                        "  {}  agent {}  started {}{}",
                        run.run_id,
                        run.agent_id,
                        format_ts(run.started_at),
                        if evicted.is_some() { "  (evicted)" } else { "" }
                    )
                })
                .collect();
            if many.len() > AMBIGUOUS_SHOWN {
                lines.push(format!("  … and {} more", many.len() - AMBIGUOUS_SHOWN));
            }
            Err(Error::Usage(format!(
                "run id prefix `{asked}` is ambiguous: {} runs match; give more of the id:\n{}",
                many.len(),
                lines.join("\n")
            )))
        }
    }
}

/// Runs the command.
pub fn run(log: &OpenLog, context: &Context, args: &TraceArgs) -> Result<Exit, Error> {
    let replayed = context.replay_all(log, true, "trace")?;
    let state = &replayed.state;
    let (run, evicted) = resolve(state, &replayed.evicted, &args.run)?;
    let records = trace_records(&log.log, run, 0, usize::MAX).map_err(trace_error)?;
    let mut related = Vec::with_capacity(run.related.len());
    for &seq in &run.related {
        related.push(read(&log.log, seq)?);
    }
    let approvals: Vec<&Approval> = state
        .approvals()
        .into_iter()
        .filter(|a| approval_belongs(run, a))
        .collect();
    let mut out = Out::new();
    if args.json {
        out.json(&json!({
            "run_id": run.run_id,
            "agent_id": run.agent_id,
            "status": run.status().as_str(),
            "evicted": evicted.map(|e| json!({"seq": e.seq, "at": format_ts(e.at)})),
            "records": records,
            "cursor": records.len(),
            "tool_calls": related.iter().map(EventJson::from_envelope).collect::<Vec<_>>(),
            "approvals": approvals.iter().map(|a| approval_json(a)).collect::<Vec<_>>(),
        }))?;
    } else {
        write_text(
            &mut out, state, run, evicted, &records, &related, &approvals,
        )?;
    }
    out.flush()?;
    drop(approvals);
    super::leak(replayed);
    Ok(Exit::Ok)
}

fn read(log: &dyn EventLog, seq: Seq) -> Result<Envelope, Error> {
    match log.get(seq) {
        Ok(Some(env)) => Ok(env),
        Ok(None) => Err(Error::Corrupt {
            seq,
            reason: "the run's index names a seq past the end of the log".into(),
        }),
        Err(err) => Err(Error::Corrupt {
            seq,
            reason: crate::replay::reason_of(&err),
        }),
    }
}

fn trace_error(err: TraceError) -> Error {
    match err {
        TraceError::Log(err) => Error::Corrupt {
            seq: crate::scan::error_seq(&err).unwrap_or(0),
            reason: crate::replay::reason_of(&err),
        },
        TraceError::BadIndex { seq, .. } => Error::Corrupt {
            seq,
            reason: err.to_string(),
        },
    }
}

/// One line of the text timeline.
struct Line {
    at: DateTime<Utc>,
    /// Orders lines of the same millisecond: the seq of the event shown.
    seq: Seq,
    what: String,
    detail: String,
}

fn write_text(
    out: &mut Out,
    state: &State,
    run: &Run,
    evicted: Option<&EvictedRun>,
    records: &[Value],
    related: &[Envelope],
    approvals: &[&Approval],
) -> Result<(), Error> {
    out.line(&format!(
        "run {}  agent {}  {}  {} turn{}",
        run.run_id,
        run.agent_id,
        run.status().as_str(),
        run.turn_count,
        if run.turn_count == 1 { "" } else { "s" }
    ))?;
    out.line(&format!("intent: {}", run.intent))?;
    if let Some(description) = &run.outcome_description {
        out.line(&format!("outcome wanted: {description}"))?;
    }
    if let Some(owner) = &run.owner {
        out.line(&format!("started by session {owner}"))?;
    }
    let end = run.end.as_ref();
    let live = match end {
        Some(end) => format!(
            "{} … {} ({})",
            ts(run.started_at),
            ts(end.ended_at),
            duration(end.ended_at - run.started_at)
        ),
        None => format!(
            "{} … still in progress at the end of the log (seq {})",
            ts(run.started_at),
            state.head()
        ),
    };
    out.line(&format!("live: {live}"))?;
    if let Some(e) = evicted {
        out.line(&format!(
            "evicted by retention at seq {} ({}): the daemon no longer serves this run",
            e.seq,
            ts(e.at)
        ))?;
    }
    out.line("")?;

    let mut lines = Vec::new();
    lines.push(Line {
        at: run.started_at,
        seq: run.started_seq,
        what: "started".into(),
        detail: String::new(),
    });
    let mut batches = run.turn_batches.iter().peekable();
    let mut batch_seq = run.started_seq;
    for record in records
        .iter()
        .filter(|r| r["record"] == "turn" || r["record"] == "model_turn")
    {
        let index = record["index"].as_u64().unwrap_or(0);
        while let Some(batch) = batches.next_if(|b| u64::from(b.base_index) <= index) {
            batch_seq = batch.seq;
        }
        let (what, detail) = if record["record"] == "model_turn" {
            (format!("model turn {index}"), model_turn_detail(record))
        } else {
            (format!("turn {index}"), turn_detail(record))
        };
        lines.push(Line {
            at: parse_ts(&record["recorded_at"]).unwrap_or(run.started_at),
            seq: batch_seq,
            what,
            detail,
        });
    }
    for env in related {
        lines.push(Line {
            at: env.ts,
            seq: env.seq,
            what: env.event.kind().to_owned(),
            detail: related_detail(&env.event),
        });
    }
    for approval in approvals {
        lines.push(Line {
            at: approval.created_at,
            seq: approval.requested_seq,
            what: "approval.requested".into(),
            detail: format!(
                "{} {}  options {}",
                approval.id,
                approval.action,
                approval.options.join("/")
            ),
        });
        if let Some(at) = approval.resolved_at {
            let outcome = match (approval.status, &approval.resolution) {
                (ApprovalStatus::Resolved, Some(resolution)) => format!("resolved: {resolution}"),
                _ => approval.status.as_str().to_owned(),
            };
            lines.push(Line {
                at,
                // The resolution's own seq is not indexed; it sorts after this millisecond's
                // other events.
                seq: Seq::MAX,
                what: format!("approval.{}", approval.status.as_str()),
                detail: format!(
                    "{} {outcome} after {}",
                    approval.id,
                    duration(at - approval.created_at)
                ),
            });
        }
    }
    if let Some(end) = end {
        let termination = termination_json(&end.termination);
        lines.push(Line {
            at: end.ended_at,
            seq: end.seq,
            what: "ended".into(),
            detail: format!(
                "{}  after {}",
                termination_detail(&termination),
                duration(end.ended_at - run.started_at)
            ),
        });
    }
    lines.sort_by_key(|line| (line.at, line.seq));
    for line in &lines {
        out.line(
            format!(
                "{}  {:>10}  {:<22} {}",
                ts(line.at),
                format!("+{}", duration(line.at - run.started_at)),
                line.what,
                line.detail
            )
            .trim_end(),
        )?;
    }
    Ok(())
}

fn parse_ts(value: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A JSON value as short text: strings as they are, anything else as compact JSON.
fn short(value: &Value) -> String {
    match value {
        Value::String(s) => clip(s, TEXT_WIDTH),
        other => clip(&other.to_string(), TEXT_WIDTH),
    }
}

fn turn_detail(record: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(tool) = record.get("tool").filter(|t| !t.is_null()) {
        parts.push(format!("tool {}", short(tool)));
    }
    if let Some(prompt) = record.get("prompt").filter(|p| !p.is_null()) {
        parts.push(format!("prompt {:?}", short(prompt)));
    }
    if let Some(output) = record.get("output").filter(|o| !o.is_null()) {
        parts.push(format!("→ {:?}", short(output)));
    }
    if let Some(verdict) = record["verifier_verdict"]
        .as_str()
        .filter(|v| *v != "not_run")
    {
        parts.push(format!("verdict {verdict}"));
    }
    if record["policy_rejected"] == true {
        parts.push("rejected by policy".into());
    }
    parts.join("  ")
}

/// A model turn (§14.3): the model, its text, the tools it asked for, tokens, time.
fn model_turn_detail(record: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(model) = record["model_id"].as_str() {
        parts.push(format!("model {model}"));
    }
    if let Some(text) = record.get("assistant_text").filter(|t| !t.is_null()) {
        parts.push(format!("{:?}", short(text)));
    }
    let calls: Vec<&str> = record["requested_tool_calls"]
        .as_array()
        .map(|calls| calls.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    if !calls.is_empty() {
        parts.push(format!("asks {}", calls.join(", ")));
    }
    if let Some(total) = record["token_usage"]["total_tokens"].as_u64() {
        parts.push(format!("{total} tokens"));
    }
    if let Some(ms) = record["duration_ms"].as_u64() {
        parts.push(duration(chrono::TimeDelta::milliseconds(ms as i64)));
    }
    parts.join("  ")
}

fn related_detail(event: &Event) -> String {
    let ms = |ms: u64| duration(chrono::TimeDelta::milliseconds(ms as i64));
    match event {
        Event::ProposalSubmitted(e) => format!(
            "{}  {} action{}",
            e.proposal_id,
            e.action_ids.len(),
            if e.action_ids.len() == 1 { "" } else { "s" }
        ),
        Event::ProposalFinished(e) => format!("{}  {}", e.proposal_id, e.final_state),
        Event::ToolCallDispatched(e) => format!(
            "{}  {} (action {}, attempt {})",
            e.request_id, e.tool, e.action_id, e.attempt
        ),
        Event::ToolCallCompleted(e) => format!(
            "{}  after {}  → {}",
            e.request_id,
            ms(e.elapsed_ms),
            short(&e.output.to_value())
        ),
        Event::ToolCallFailed(e) => format!(
            "{}  after {}: {}",
            e.request_id,
            ms(e.elapsed_ms),
            clip(&e.error, TEXT_WIDTH)
        ),
        Event::ToolCallTimedOut(e) => format!("{}  after {}", e.request_id, ms(e.elapsed_ms)),
        Event::ToolCallCancelled(e) => format!("{}  {}", e.request_id, e.reason),
        Event::ToolCallIndeterminate(e) => format!("{}  INDETERMINATE: {}", e.request_id, e.error),
        Event::RunCancellationRequested(e) => format!(
            "key {}  by {}  reason sha256 {}",
            e.idempotency_key,
            e.principal,
            clip(&e.reason_digest, 16)
        ),
        Event::RunCancellationResult(e) => {
            let receipt = e.receipt.to_value();
            let abandoned = match receipt["action_id"].as_str() {
                Some(action) => format!(
                    "  abandoned {action} ({})",
                    receipt["request_id"].as_str().unwrap_or("?")
                ),
                None => String::new(),
            };
            let checks = match car_events::receipt::Receipt::parse_checked(&receipt) {
                Ok(_) => "receipt digest ok".to_owned(),
                Err(err) => format!("RECEIPT DOES NOT CHECK: {err}"),
            };
            format!(
                "key {}  {}{abandoned}  {checks}",
                e.idempotency_key,
                e.status.to_uppercase()
            )
        }
        Event::RunResumed(e) => format!(
            "by {} (agent {}) from {}",
            e.client_id,
            e.agent_id,
            e.resumed_from_client_id
                .as_deref()
                .unwrap_or("an unknown session")
        ),
        Event::ApprovalRequestedInRun(e) => {
            format!("{}  {}", e.approval.approval_id, e.approval.action)
        }
        other => other.kind().to_owned(),
    }
}

fn termination_detail(termination: &Value) -> String {
    match termination["kind"].as_str() {
        Some("outcome") => {
            let outcome = &termination["outcome"];
            let status = outcome["status"].as_str().unwrap_or("?");
            match outcome.get("summary").filter(|s| !s.is_null()) {
                Some(summary) => format!("outcome {status}: {:?}", short(summary)),
                None => format!("outcome {status}"),
            }
        }
        Some("cancelled") => format!(
            "cancelled (key {})",
            termination["idempotency_key"].as_str().unwrap_or("?")
        ),
        _ => format!(
            "incomplete: {}",
            termination["reason"].as_str().unwrap_or("?")
        ),
    }
}
