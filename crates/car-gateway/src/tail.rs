//! Live subscriptions as cursors over the log.
//!
//! A tail never holds a queue of events: it remembers where it is (a turn index, a seq),
//! and when woken it reads what is durable past that point from the log and sends it,
//! waiting for room in the connection's outbound queue. So a slow subscriber simply falls
//! behind and catches up from the log (EventStoreDB's catch-up/live switch), nothing is
//! dropped or sent twice, and neither the writer nor any other connection ever waits for
//! it. Only durable events are read, so nothing a crash could take back is ever sent.

use std::sync::Arc;

use car_events::{EventJson, EventLog, Seq};
use car_projections::{RunStatus, trace};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::connection::Outbound;
use crate::handlers::runs::{MAX_RESPONSE_BYTES, read_blocking};
use crate::notify::run_key;

/// Events a log tail reads per step: large enough to amortise a read, small enough that a
/// step stays short.
const LOG_CHUNK: usize = 256;

/// What a run tail may send next.
struct RunNews {
    agent_id: String,
    run_id: String,
    batches: Vec<car_projections::state::TurnBatch>,
    /// Turns durable now.
    available: u32,
    /// The run's end, when durable.
    end: Option<Value>,
    status: RunStatus,
    turn_count: u32,
}

/// Follows one run for one subscriber: `runs.trace.event` for every turn from index `next`
/// on, then the `ended` record; returns after the end, when the run is evicted, or when
/// cancelled.
pub(crate) async fn follow_run(
    app: Arc<App>,
    out: Outbound,
    run_id: String,
    mut next: u32,
    cancel: CancellationToken,
) {
    let mut wake = app.notifier.watch(&run_key(&run_id));
    loop {
        wake.borrow_and_update();
        let durable = app.writer.durable().seq;
        let news = {
            let state = app.writer.state();
            state.run(&run_id).map(|run| {
                let batches = run.batches_until(durable);
                let available = if batches.len() == run.turn_batches.len() {
                    run.turn_count
                } else {
                    run.turn_batches[batches.len()].base_index
                };
                RunNews {
                    agent_id: run.agent_id.clone(),
                    run_id: run.run_id.clone(),
                    batches: batches.to_vec(),
                    available,
                    end: run
                        .end
                        .as_ref()
                        .filter(|end| end.seq <= durable)
                        .map(|end| trace::ended_record(run, end)),
                    status: run.status(),
                    turn_count: run.turn_count,
                }
            })
        };
        let Some(news) = news else {
            return; // evicted
        };
        if next < news.available {
            let log = app.writer.log().clone();
            let (id, batches, from, to) = (
                news.run_id.clone(),
                news.batches.clone(),
                next,
                news.available,
            );
            let records = read_blocking(move || {
                trace::turn_records(log.as_ref(), &id, &batches, from, to, MAX_RESPONSE_BYTES)
            })
            .await;
            let Ok(records) = records else {
                return;
            };
            for record in records {
                next += 1;
                let params = json!({
                    "run_id": news.run_id,
                    "agent_id": news.agent_id,
                    "record": record,
                    "cursor": next,
                    "status": RunStatus::InProgress.as_str(),
                });
                if !send_unless_cancelled(&out, &cancel, "runs.trace.event", params).await {
                    return;
                }
            }
            continue;
        }
        if let Some(end) = news.end {
            if next >= news.turn_count {
                let params = json!({
                    "run_id": news.run_id,
                    "agent_id": news.agent_id,
                    "record": end,
                    "cursor": news.turn_count,
                    "status": news.status.as_str(),
                });
                send_unless_cancelled(&out, &cancel, "runs.trace.event", params).await;
                return;
            }
        }
        tokio::select! {
            changed = wake.changed() => if changed.is_err() { return },
            () = cancel.cancelled() => return,
        }
    }
}

async fn send_unless_cancelled(
    out: &Outbound,
    cancel: &CancellationToken,
    method: &str,
    params: Value,
) -> bool {
    // Cancellation wins: once a subscription is ended (the unsubscribe is answered after
    // its token is cancelled), no further event of it may be queued behind the answer.
    if cancel.is_cancelled() {
        return false;
    }
    tokio::select! {
        biased;
        () = cancel.cancelled() => false,
        sent = out.notify(method, params) => sent,
    }
}

/// Follows the whole log for `log.subscribe`: `log.event` for every event from `from` on.
pub(crate) async fn follow_log(
    app: Arc<App>,
    out: Outbound,
    subscription_id: String,
    from: Seq,
    cancel: CancellationToken,
) {
    let mut durable = app.writer.watch_durable();
    let mut next = from.max(1);
    loop {
        let head = durable.borrow_and_update().seq;
        if next <= head {
            let log = app.writer.log().clone();
            let start = next;
            let count = usize::try_from(head - next + 1)
                .unwrap_or(usize::MAX)
                .min(LOG_CHUNK);
            let events = read_blocking(move || read_chunk(log.as_ref(), start, count)).await;
            let Ok(events) = events else {
                return;
            };
            if events.is_empty() {
                return; // the log is behind the writer's durable head: never expected
            }
            for env in events {
                next = env.seq + 1;
                let rendered = EventJson::from_envelope(&env);
                let params = json!({
                    "subscription_id": subscription_id,
                    "seq": rendered.seq,
                    "ts": rendered.ts,
                    "kind": rendered.kind,
                    "data": rendered.data,
                });
                if !send_unless_cancelled(&out, &cancel, "log.event", params).await {
                    return;
                }
            }
            continue;
        }
        tokio::select! {
            changed = durable.changed() => if changed.is_err() { return },
            () = cancel.cancelled() => return,
        }
    }
}

/// Reads `count` events from `start`.
pub(crate) fn read_chunk(
    log: &dyn EventLog,
    start: Seq,
    count: usize,
) -> Result<Vec<car_events::Envelope>, car_events::LogError> {
    log.read_from(start).take(count).collect()
}

/// Follows the host feed for `host.subscribe`: `host.event` for every host event from
/// `from` on that `actor` may see.
pub(crate) async fn follow_host(
    app: Arc<App>,
    out: Outbound,
    actor: car_projections::Actor,
    from: Seq,
    cancel: CancellationToken,
) {
    let mut durable = app.writer.watch_durable();
    let mut next = from.max(1);
    loop {
        let head = durable.borrow_and_update().seq;
        if next <= head {
            let log = app.writer.log().clone();
            let start = next;
            let count = usize::try_from(head - next + 1)
                .unwrap_or(usize::MAX)
                .min(LOG_CHUNK);
            let Ok(envelopes) = read_blocking(move || read_chunk(log.as_ref(), start, count)).await
            else {
                return;
            };
            let Some(last) = envelopes.last().map(|env| env.seq) else {
                return;
            };
            next = last + 1;
            let events: Vec<Value> = {
                let state = app.writer.state();
                envelopes
                    .iter()
                    .filter(|env| car_projections::host_feed::visible(&actor, &state, env))
                    .filter_map(|env| car_projections::host_feed::host_event(&state, env))
                    .collect()
            };
            for event in events {
                if !send_unless_cancelled(&out, &cancel, "host.event", event).await {
                    return;
                }
            }
            continue;
        }
        tokio::select! {
            changed = durable.changed() => if changed.is_err() { return },
            () = cancel.cancelled() => return,
        }
    }
}
