//! Reading a run back: its trace records and summary in the wire shapes of PROTOCOL.md
//! §3.1 and §3.6, built from the per-run index in [`Run`] and the events in the log.
//!
//! Shared by the daemon (`runs.get_trace`, `runs.subscribe`, `runs.list`) and `car-replay`
//! (`trace --json`), so both answer with the same records. Reading costs O(the run's own
//! events): only the log entries the run's index names are read.
//!
//! Positions in a trace: 0 is `started`, `1 ..= turn_count` are the turns (index
//! `position - 1`), and `turn_count + 1` is `ended`, once the run has ended.

use car_events::event::{Event, Termination};
use car_events::{EventLog, JsonText, LogError, Seq, format_ts};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::state::{Run, RunEnd, TurnBatch};

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The log could not be read.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The run's index names a seq that does not hold its turns (a bug or a damaged log).
    #[error("run `{run_id}`: seq {seq} does not hold its turns from index {base_index}")]
    BadIndex {
        /// The run.
        run_id: String,
        /// The seq named by the index.
        seq: Seq,
        /// The turn index expected there.
        base_index: u32,
    },
}

/// The `started` record.
pub fn started_record(run: &Run) -> Value {
    json!({
        "record": "started",
        "run_id": run.run_id,
        "agent_id": run.agent_id,
        "intent": run.intent,
        "outcome_description": run.outcome_description,
        "started_at": format_ts(run.started_at),
    })
}

/// The wire `termination` object.
pub fn termination_json(termination: &Termination) -> Value {
    match termination {
        Termination::Outcome { outcome } => json!({"kind": "outcome", "outcome": outcome.as_raw()}),
        Termination::Incomplete { reason } => {
            json!({"kind": "incomplete", "reason": reason.as_str()})
        }
        Termination::Cancelled {
            idempotency_key,
            reason_digest,
        } => json!({"kind": "cancelled", "idempotency_key": idempotency_key,
                    "reason_digest": reason_digest}),
    }
}

/// The `ended` record.
pub fn ended_record(run: &Run, end: &RunEnd) -> Value {
    json!({
        "record": "ended",
        "run_id": run.run_id,
        "agent_id": run.agent_id,
        "termination": termination_json(&end.termination),
        "ended_at": format_ts(end.ended_at),
    })
}

/// A `turn` record: `record` and `index` first, the client's fields in their order, then
/// `recorded_at`. A stored model turn (it carries its own `record`, see [`crate::turns`])
/// is a `model_turn` record in the same shape.
pub fn turn_record(index: u32, turn: &JsonText, recorded_at: DateTime<Utc>) -> Value {
    let mut record = Map::new();
    let mut fields = match turn.to_value() {
        Value::Object(fields) => fields,
        _ => Map::new(),
    };
    let kind = fields
        .shift_remove("record")
        .unwrap_or_else(|| Value::from("turn"));
    record.insert("record".into(), kind);
    record.insert("index".into(), Value::from(index));
    record.extend(fields);
    record.insert("recorded_at".into(), Value::from(format_ts(recorded_at)));
    Value::Object(record)
}

/// The run summary of `runs.list`.
pub fn summary(run: &Run) -> Value {
    json!({
        "run_id": run.run_id,
        "agent_id": run.agent_id,
        "intent": run.intent,
        "started_at": format_ts(run.started_at),
        "ended_at": run.end.as_ref().map(|end| format_ts(end.ended_at)),
        "status": run.status().as_str(),
        "turn_count": run.turn_count,
    })
}

/// Turn records `from .. to` (turn indices) of a run, read from the batches that hold them.
/// Stops early, after at least one record, once the records pass `max_bytes` of JSON
/// (the caller pages on); returns the records.
pub fn turn_records(
    log: &dyn EventLog,
    run_id: &str,
    batches: &[TurnBatch],
    from: u32,
    to: u32,
    max_bytes: usize,
) -> Result<Vec<Value>, TraceError> {
    let mut records = Vec::new();
    if from >= to {
        return Ok(records);
    }
    let first = batches
        .partition_point(|b| b.base_index <= from)
        .saturating_sub(1);
    let mut bytes = 0;
    for batch in &batches[first..] {
        if batch.base_index >= to {
            break;
        }
        let bad_index = || TraceError::BadIndex {
            run_id: run_id.to_owned(),
            seq: batch.seq,
            base_index: batch.base_index,
        };
        let env = log.get(batch.seq)?.ok_or_else(bad_index)?;
        let Event::TurnsRecorded(recorded) = &env.event else {
            return Err(bad_index());
        };
        if recorded.run_id != run_id || recorded.base_index != batch.base_index {
            return Err(bad_index());
        }
        for (offset, turn) in recorded.turns.iter().enumerate() {
            let index = batch.base_index + offset as u32;
            if index < from {
                continue;
            }
            if index >= to || (bytes > max_bytes && !records.is_empty()) {
                return Ok(records);
            }
            bytes += turn.len() + 64;
            records.push(turn_record(index, turn, env.ts));
        }
    }
    Ok(records)
}

/// The trace records of a run from `position` on, as `runs.get_trace` returns them; stops
/// early once past `max_bytes` (at least one record is returned when any is left).
pub fn trace_records(
    log: &dyn EventLog,
    run: &Run,
    position: usize,
    max_bytes: usize,
) -> Result<Vec<Value>, TraceError> {
    trace_page(log, run, position, usize::MAX, max_bytes)
}

/// [`trace_records`], at most `max_records` of them (a page of `runs.get_trace` with
/// `runs.pagination.v1`, PROTOCOL.md §14.4); reads only the turns it returns.
pub fn trace_page(
    log: &dyn EventLog,
    run: &Run,
    position: usize,
    max_records: usize,
    max_bytes: usize,
) -> Result<Vec<Value>, TraceError> {
    let mut records = Vec::new();
    if max_records == 0 {
        return Ok(records);
    }
    if position == 0 {
        records.push(started_record(run));
    }
    let from = position.saturating_sub(1).min(run.turn_count as usize) as u32;
    let room = max_records - records.len();
    let to = (from as usize)
        .saturating_add(room)
        .min(run.turn_count as usize) as u32;
    let turns = turn_records(log, &run.run_id, &run.turn_batches, from, to, max_bytes)?;
    let all_turns = from as usize + turns.len() == run.turn_count as usize;
    records.extend(turns);
    if let Some(end) = &run.end {
        if all_turns && records.len() < max_records && position <= run.turn_count as usize + 1 {
            records.push(ended_record(run, end));
        }
    }
    Ok(records)
}
