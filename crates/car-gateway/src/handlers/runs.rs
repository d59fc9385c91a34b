//! `runs.*` (PROTOCOL.md §3).
//!
//! Writes are queued on the single writer from the reader task (so a session's writes
//! keep their order) and answered from a spawned task once durable. Reads wait for the
//! session's earlier writes, read the state, and read turns back from the log through the
//! run's index.

use car_events::Seq;
use car_events::event::{Event, SubscriptionTarget};
use car_projections::decide::{
    AdmittedTurns, Command, CompleteRun, RecordTurns, StartRun, Subscribe, SubscriptionSelector,
    Unsubscribe,
};
use car_projections::{Actor, Refusal, Run, RunStatus, State, trace};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::{App, Committed};
use crate::handlers::pages;
use crate::reads::{MAX_RESPONSE_BYTES, read_blocking};
use crate::rpc::{self, RpcError};
use crate::session::{QueuedWrite, Responder, Session};
use crate::tail;

/// `runs.list` default and maximum page size (PROTOCOL.md §3.6).
const DEFAULT_LIST_LIMIT: u64 = 100;
const MAX_LIST_LIMIT: u64 = 1000;

#[derive(Debug, Deserialize)]
struct StartParams {
    intent: String,
    agent_id: Option<String>,
    agent_name: Option<String>,
    outcome_description: Option<String>,
    idempotency_key: Option<String>,
}

/// `runs.start`: answered inline, so the run is the session's current run before the
/// response is sent (and before the next frame is read).
pub(crate) async fn start(session: &mut Session, params: Value, responder: Responder) {
    let result = start_run(session, params).await;
    responder.send(result).await;
}

async fn start_run(session: &mut Session, params: Value) -> Result<Value, RpcError> {
    let params: StartParams = rpc::parse(params)?;
    let actor = session.actor()?.clone();
    let app = session.app.clone();
    let command = Command::StartRun(StartRun {
        actor,
        new_run_id: app.new_id(),
        intent: params.intent,
        agent_id: params.agent_id,
        agent_name: params.agent_name,
        outcome_description: params.outcome_description,
        idempotency_key: params.idempotency_key.clone(),
    });
    let key = params.idempotency_key;
    let done = app
        .execute(
            command,
            move |state: &State, events: &[Event]| match events.first() {
                Some(Event::RunStarted(e)) => Some((e.run_id.clone(), e.agent_id.clone())),
                _ => {
                    // Idempotent: the run (or the evicted run) that already has this key.
                    let key = key.as_deref().unwrap_or_default().trim();
                    let agent = state
                        .run(key)
                        .map(|run| run.agent_id.clone())
                        .or_else(|| state.retired_key(key).map(str::to_owned))?;
                    Some((key.to_owned(), agent))
                }
            },
        )
        .await??;
    let (run_id, agent_id) = done
        .out
        .ok_or_else(|| RpcError::Internal("internal error: run not found after start".into()))?;
    session.current_run = Some(run_id.clone());
    session.current_run_resumed = false;
    Ok(json!({"run_id": run_id, "agent_id": agent_id}))
}

#[derive(Debug, Deserialize)]
struct RecordParams {
    run_id: String,
    turns: Vec<Value>,
}

/// `runs.record_turns`.
pub(crate) async fn record_turns(session: &mut Session, params: Value, responder: Responder) {
    let queued = async {
        let params: RecordParams = rpc::parse(params)?;
        let turns = AdmittedTurns::admit(&params.turns)?;
        queue_turns(session, params.run_id, turns).await
    }
    .await;
    session.reply_when_durable(responder, queued, turns_answer);
}

/// Queues admitted turns (action or model turns) on a run.
async fn queue_turns(
    session: &mut Session,
    run_id: String,
    turns: AdmittedTurns,
) -> Result<(String, QueuedWrite<(u32, usize)>), RpcError> {
    let command = Command::RecordTurns(RecordTurns {
        actor: session.actor()?.clone(),
        run_id: run_id.clone(),
        turns,
    });
    let write = session
        .queue(command, |_, events: &[Event]| match events.first() {
            Some(Event::TurnsRecorded(e)) => (e.base_index, e.turns.len()),
            _ => (0, 0),
        })
        .await?;
    Ok((run_id, write))
}

/// The answer of `runs.record_turns` and `runs.record_model_turn` (§3.3).
async fn turns_answer(
    run_id: String,
    outcome: Result<Committed<(u32, usize)>, Refusal>,
) -> Result<Value, RpcError> {
    match outcome {
        Ok(done) => {
            let (base_index, count) = done.out;
            Ok(json!({"run_id": run_id, "base_index": base_index, "count": count, "ok": true}))
        }
        Err(Refusal::Dropped(dropped)) => Ok(json!({
            "run_id": run_id, "base_index": 0, "count": 0, "ok": false,
            "dropped": dropped.as_str(),
        })),
        Err(refusal) => Err(refusal.into()),
    }
}

/// What `runs.record_model_turn` takes (§14.3); checked here, stored as sent (in the
/// contract's field order), credentials redacted.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // read for its checks; the turn is stored from the params as sent
struct ModelTurnParams {
    run_id: String,
    turn_index: u64,
    assistant_text: String,
    requested_tool_calls: Vec<RequestedToolCall>,
    model_id: String,
    token_usage: Option<TokenUsage>,
    duration_ms: u64,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct RequestedToolCall {
    id: String,
    name: String,
    arguments: Value,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct TokenUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    context_window: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

/// The fields of a model turn, in the order its record shows them.
const MODEL_TURN_FIELDS: [&str; 6] = [
    "turn_index",
    "assistant_text",
    "requested_tool_calls",
    "model_id",
    "token_usage",
    "duration_ms",
];
/// What a credential in a model turn's strings is replaced with (§14.3).
const REDACTED: &str = "[REDACTED]";

/// `runs.record_model_turn` (§14.3): a model's turn, in the run's index sequence.
pub(crate) async fn record_model_turn(session: &mut Session, params: Value, responder: Responder) {
    let queued = async {
        let checked: ModelTurnParams = rpc::parse(params.clone())?;
        if checked.turn_index < 1 {
            return Err(RpcError::params("turn_index", "must be at least 1"));
        }
        let secrets = [
            session.app.tokens.auth.expose().to_owned(),
            session.app.tokens.host.expose().to_owned(),
        ];
        let fields: serde_json::Map<String, Value> = MODEL_TURN_FIELDS
            .iter()
            .map(|field| {
                let value = params.get(*field).cloned().unwrap_or(Value::Null);
                ((*field).to_owned(), redact(value, &secrets))
            })
            .collect();
        let turn = car_projections::turns::admit_model_turn(fields).ok();
        queue_turns(session, checked.run_id, AdmittedTurns::model_turn(turn)).await
    }
    .await;
    session.reply_when_durable(responder, queued, turns_answer);
}

/// `value` with every occurrence of a non-empty secret in its strings (keys included)
/// replaced by [`REDACTED`].
fn redact(value: Value, secrets: &[String]) -> Value {
    let scrub = |text: String| {
        secrets
            .iter()
            .filter(|s| !s.is_empty())
            .fold(text, |text, secret| text.replace(secret.as_str(), REDACTED))
    };
    match value {
        Value::String(text) => Value::String(scrub(text)),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| redact(v, secrets)).collect())
        }
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (scrub(k), redact(v, secrets)))
                .collect(),
        ),
        other => other,
    }
}

#[derive(Debug, Deserialize)]
struct CompleteParams {
    run_id: String,
    outcome: Value,
}

/// `runs.complete`.
pub(crate) async fn complete(session: &mut Session, params: Value, responder: Responder) {
    let queued = async {
        let params: CompleteParams = rpc::parse(params)?;
        let command = Command::CompleteRun(CompleteRun {
            actor: session.actor()?.clone(),
            run_id: params.run_id.clone(),
            outcome: params.outcome,
        });
        Ok((params.run_id, session.queue(command, |_, _| ()).await?))
    }
    .await;
    session.reply_when_durable(responder, queued, |run_id, outcome| async move {
        outcome?;
        Ok(json!({"run_id": run_id, "ok": true}))
    });
}

#[derive(Debug, Deserialize)]
struct ListParams {
    agent_id: Option<String>,
    status: Option<String>,
    limit: Option<u64>,
    before: Option<String>,
}

/// `runs.list`'s params, checked (shared with MCP's `runs_list`).
#[derive(Debug, Clone)]
pub(crate) struct ListQuery {
    agent_id: Option<String>,
    status: Option<RunStatus>,
    limit: usize,
    before: Option<String>,
    /// A page of a session that negotiated pagination (§14.4): the runs started before
    /// this seq (`None` for the first page).
    page: Option<Option<Seq>>,
}

impl ListQuery {
    /// Reads and checks `runs.list`'s params.
    pub(crate) fn parse(params: Value) -> Result<Self, RpcError> {
        let params: ListParams = rpc::parse(params)?;
        let status = match params.status.as_deref() {
            None => None,
            Some(name) => Some(RunStatus::parse(name).ok_or_else(|| {
                RpcError::params("status", "must be in_progress, completed or incomplete")
            })?),
        };
        let limit = match params.limit {
            None => DEFAULT_LIST_LIMIT,
            Some(0) => return Err(RpcError::params("limit", "must be at least 1")),
            Some(n) => n.min(MAX_LIST_LIMIT),
        } as usize;
        Ok(Self {
            agent_id: params.agent_id,
            status,
            limit,
            before: params.before,
            page: None,
        })
    }

    /// Reads and checks a paged `runs.list` (§14.4): `agent_id` (a string, or `null` for
    /// every run the caller may read), `cursor` and `limit` are required.
    pub(crate) fn parse_paged(params: Value) -> Result<Self, RpcError> {
        let agent_id = match pages::required(&params, "agent_id")? {
            Value::Null => None,
            Value::String(id) => Some(id.clone()),
            _ => return Err(RpcError::params("agent_id", "must be a string or null")),
        };
        let after = pages::list_cursor(&params)?;
        let limit = pages::limit(&params)?;
        let mut query = Self::parse(params)?;
        query.agent_id = agent_id;
        query.limit = limit;
        query.page = Some(after);
        Ok(query)
    }
}

/// `runs.list`.
pub(crate) async fn list(session: &mut Session, params: Value, responder: Responder) {
    let parsed = if pages::paged(session) {
        ListQuery::parse_paged(params)
    } else {
        ListQuery::parse(params)
    };
    let prepared = parsed.and_then(|q| Ok((q, session.actor()?.clone())));
    session.reply_after_writes(responder, prepared, |app, (query, actor)| async move {
        list_runs(&app, &actor, query).await
    });
}

/// `runs.list`'s result for `actor`, once what it reads is durable.
pub(crate) async fn list_runs(
    app: &App,
    actor: &Actor,
    query: ListQuery,
) -> Result<Value, RpcError> {
    let ListQuery {
        agent_id,
        status,
        limit,
        before,
        page,
    } = query;
    let (runs, last) = app
        .writer
        .read(|state| {
            let before_seq = match (&before, page) {
                (_, Some(after)) => after,
                (None, None) => None,
                (Some(id), None) => match state.readable_run(actor, id) {
                    Some(run) => Some(run.started_seq),
                    None => {
                        return Err(RpcError::params("before", format!("unknown run_id `{id}`")));
                    }
                },
            };
            let mut runs: Vec<&Run> = state
                .runs()
                .rev()
                .filter(|run| before_seq.is_none_or(|b| run.started_seq < b))
                .filter(|run| state.is_reader(actor, run))
                .filter(|run| agent_id.as_deref().is_none_or(|a| run.agent_id == a))
                .filter(|run| status.is_none_or(|s| run.status() == s))
                .take(limit.saturating_add(1))
                .collect();
            // One more than asked tells whether a next page exists.
            let more = runs.len() > limit;
            runs.truncate(limit);
            let last = more
                .then(|| runs.last().map(|run| run.started_seq))
                .flatten();
            Ok((
                runs.into_iter().map(trace::summary).collect::<Vec<_>>(),
                last,
            ))
        })
        .await??;
    if page.is_some() {
        let next_cursor = last.map(pages::next_list_cursor);
        return Ok(json!({"agent_id": agent_id, "runs": runs, "next_cursor": next_cursor}));
    }
    let agent_id = agent_id.or_else(|| actor.bound_agent().map(str::to_owned));
    Ok(json!({"agent_id": agent_id, "runs": runs}))
}

/// `runs.get_trace`'s params (shared with MCP's `runs_get_trace`).
#[derive(Debug, Deserialize)]
pub(crate) struct TraceParams {
    run_id: String,
    cursor: Option<u64>,
}

/// `runs.get_trace`; paged (§14.4) for a session that negotiated it.
pub(crate) async fn get_trace(session: &mut Session, params: Value, responder: Responder) {
    let paged = pages::paged(session);
    let prepared = (|| {
        let limit = if paged {
            pages::position(&params)?;
            Some(pages::limit(&params)?)
        } else {
            None
        };
        let parsed = rpc::parse::<TraceParams>(params)?;
        Ok((parsed, limit, session.actor()?.clone()))
    })();
    session.reply_after_writes(
        responder,
        prepared,
        |app, (params, limit, actor)| async move { read_trace(&app, &actor, params, limit).await },
    );
}

/// `runs.get_trace`'s result for `actor`, once what it reads is durable; with `page`
/// (§14.4, a negotiated session's `limit`) at most that many records, the cursor echoed
/// and `next_cursor` the position after them, `null` once the `ended` record is read.
pub(crate) async fn read_trace(
    app: &App,
    actor: &Actor,
    params: TraceParams,
    page: Option<usize>,
) -> Result<Value, RpcError> {
    let run_id = params.run_id;
    let found = app
        .writer
        .read(|state| state.readable_run(actor, &run_id).cloned())
        .await?;
    let Some(run) = found else {
        return Ok(json!({"run_id": run_id, "not_found": true}));
    };
    let asked = params.cursor.unwrap_or(0);
    let position = usize::try_from(asked).unwrap_or(usize::MAX);
    let log = app.writer.log().clone();
    let max_records = page.unwrap_or(usize::MAX);
    let (records, run) = read_blocking(move || {
        trace::trace_page(
            log.as_ref(),
            &run,
            position,
            max_records,
            MAX_RESPONSE_BYTES,
        )
        .map(|r| (r, run))
    })
    .await?;
    let next = position.min(run.turn_count as usize + 2) + records.len();
    let mut answer = json!({"run_id": run.run_id, "agent_id": run.agent_id, "records": records});
    if page.is_none() {
        answer["cursor"] = Value::from(next);
        return Ok(answer);
    }
    let past_the_end = run.end.is_some() && position > run.turn_count as usize + 1;
    let ended = answer["records"]
        .as_array()
        .and_then(|r| r.last())
        .is_some_and(|r| r["record"] == "ended");
    answer["cursor"] = Value::from(asked);
    answer["next_cursor"] = if ended || past_the_end {
        Value::Null
    } else {
        Value::from(next)
    };
    Ok(answer)
}

#[derive(Debug, Deserialize)]
struct SubscribeParams {
    run_id: String,
    cursor: Option<u32>,
}

/// `runs.subscribe`: the snapshot is the run as of the `subscription.opened` event, and
/// the tail continues from exactly there.
pub(crate) async fn subscribe(session: &mut Session, params: Value, responder: Responder) {
    let paged = pages::paged(session);
    let queued = async {
        let limit = if paged {
            pages::position(&params)?;
            Some(pages::limit(&params)?)
        } else {
            None
        };
        let params: SubscribeParams = rpc::parse(params)?;
        let cursor = params.cursor.unwrap_or(0);
        let command = Command::Subscribe(Subscribe {
            actor: session.actor()?.clone(),
            subscription_id: session.app.new_id(),
            target: SubscriptionTarget::Run {
                run_id: params.run_id.clone(),
                cursor,
            },
        });
        let run_id = params.run_id.clone();
        let write = session
            .queue(command, move |state: &State, _| state.run(&run_id).cloned())
            .await?;
        Ok::<_, RpcError>((params.run_id, cursor, limit, write))
    }
    .await;
    let (run_id, cursor, limit, write) = match queued {
        Ok(queued) => queued,
        Err(err) => return responder.send(Err(err)).await,
    };
    let cancel = session.subscription(format!("run:{run_id}"));
    let app = session.app.clone();
    let out = session.out.clone();
    tokio::spawn(async move {
        let snapshot: Result<Option<Run>, RpcError> = match write.wait().await {
            Ok(Ok(done)) => Ok(done.out),
            Ok(Err(Refusal::NotFound)) => Ok(None),
            Ok(Err(refusal)) => Err(refusal.into()),
            Err(err) => Err(err),
        };
        let run = match snapshot {
            Ok(Some(run)) => run,
            Ok(None) => {
                cancel.cancel();
                return responder
                    .send(Ok(json!({"run_id": run_id, "not_found": true})))
                    .await;
            }
            Err(err) => {
                cancel.cancel();
                return responder.send(Err(err)).await;
            }
        };
        let from = cursor.min(run.turn_count);
        // A paged snapshot (§14.4) holds at most `limit` turns; the result's cursor is the
        // turn count as §3.5 says, and the tail goes on from there.
        let to = match limit {
            Some(limit) => from.saturating_add(u32::try_from(limit).unwrap_or(u32::MAX)),
            None => run.turn_count,
        }
        .min(run.turn_count);
        let log = app.writer.log().clone();
        let snap = run.clone();
        let turns = read_blocking(move || {
            trace::turn_records(
                log.as_ref(),
                &snap.run_id,
                &snap.turn_batches,
                from,
                to,
                MAX_RESPONSE_BYTES,
            )
        })
        .await;
        let turns = match turns {
            Ok(turns) => turns,
            Err(err) => return responder.send(Err(err)).await,
        };
        let read_to = from + turns.len() as u32;
        let next = if limit.is_some() {
            run.turn_count
        } else {
            read_to
        };
        let mut answer = json!({
            "run_id": run.run_id,
            "agent_id": run.agent_id,
            "turns_so_far": turns,
            "cursor": next,
            "status": run.status().as_str(),
        });
        if limit.is_some() && read_to < run.turn_count {
            answer["truncated"] = Value::Bool(true);
        }
        responder.send(Ok(answer)).await;
        tail::follow_run(app, out, run.run_id, next, cancel).await;
    });
}

#[derive(Debug, Deserialize)]
struct UnsubscribeParams {
    run_id: String,
}

/// `runs.unsubscribe`.
pub(crate) async fn unsubscribe(session: &mut Session, params: Value, responder: Responder) {
    let queued = async {
        let params: UnsubscribeParams = rpc::parse(params)?;
        session.end_subscription(&format!("run:{}", params.run_id));
        let command = Command::Unsubscribe(Unsubscribe {
            client_id: session.client_id.clone(),
            selector: SubscriptionSelector::Run(params.run_id.clone()),
        });
        Ok((
            params.run_id,
            session
                .queue(command, |_, events| !events.is_empty())
                .await?,
        ))
    }
    .await;
    session.reply_when_durable(responder, queued, |run_id, outcome| async move {
        Ok(json!({"run_id": run_id, "removed": outcome?.out}))
    });
}
