//! Live subscriptions as cursors over the log.
//!
//! A tail never holds a queue of events: it remembers where it is (a turn index, a seq),
//! and when woken it reads what is durable past that point from the log and sends it,
//! waiting for room in the connection's outbound queue. So a slow subscriber simply falls
//! behind and catches up from the log (EventStoreDB's catch-up/live switch), nothing is
//! dropped or sent twice, and neither the writer nor any other connection ever waits for
//! it. Only durable events are read, so nothing a crash could take back is ever sent.

use std::sync::Arc;

use car_events::{Envelope, EventJson, EventLog, Seq};
use car_projections::{RunStatus, trace};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::notify::run_key;
use crate::outbound::Outbound;
use crate::reads::{MAX_RESPONSE_BYTES, read_blocking};
use crate::rpc::{self, RpcError};

/// Events a log tail reads per step: large enough to amortise a read, small enough that a
/// step stays short.
const LOG_CHUNK: usize = 256;

/// What a run tail may send next.
struct RunNews {
    agent_id: String,
    run_id: String,
    /// The durable turn batches from the one holding the tail's next turn on.
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
    let shared = app.turn_frames.join(&run_id);
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
                // Only the batches from the one holding turn `next` on: copying the whole
                // list on every wake would cost each subscriber O(turns) per event.
                let first = batches
                    .partition_point(|b| b.base_index <= next)
                    .saturating_sub(1);
                RunNews {
                    agent_id: run.agent_id.clone(),
                    run_id: run.run_id.clone(),
                    batches: batches[first..].to_vec(),
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
            let render = |from, to| render(&app, &news, from, to);
            let Ok(frames) = shared.frames(next, news.available, render).await else {
                return;
            };
            for frame in frames {
                next += 1;
                if !send_frame_unless_cancelled(&out, &cancel, frame).await {
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

/// Reads turns `from .. to` from the log and renders their `runs.trace.event` frames.
async fn render(
    app: &Arc<App>,
    news: &RunNews,
    from: u32,
    to: u32,
) -> Result<Vec<Utf8Bytes>, RpcError> {
    let log = app.writer.log().clone();
    let (id, batches) = (news.run_id.clone(), news.batches.clone());
    let records = read_blocking(move || {
        trace::turn_records(log.as_ref(), &id, &batches, from, to, MAX_RESPONSE_BYTES)
    })
    .await?;
    Ok(records
        .into_iter()
        .zip(from + 1..)
        .map(|(record, cursor)| {
            let params = json!({
                "run_id": news.run_id,
                "agent_id": news.agent_id,
                "record": record,
                "cursor": cursor,
                "status": RunStatus::InProgress.as_str(),
            });
            rpc::notification("runs.trace.event", params)
                .to_string()
                .into()
        })
        .collect())
}

/// Sends a rendered frame unless the subscription is ended first. Cancellation wins: once a
/// subscription is ended (the unsubscribe is answered after its token is cancelled), no
/// further event of it may be queued behind the answer.
async fn send_frame_unless_cancelled(
    out: &Outbound,
    cancel: &CancellationToken,
    frame: Utf8Bytes,
) -> bool {
    if cancel.is_cancelled() {
        return false;
    }
    tokio::select! {
        biased;
        () = cancel.cancelled() => false,
        sent = out.send_text(frame) => sent,
    }
}

/// [`send_frame_unless_cancelled`] for a notification not rendered yet.
async fn send_unless_cancelled(
    out: &Outbound,
    cancel: &CancellationToken,
    method: &str,
    params: Value,
) -> bool {
    let frame = rpc::notification(method, params).to_string().into();
    send_frame_unless_cancelled(out, cancel, frame).await
}

/// Follows the whole log for `log.subscribe`: `log.event` for every event from `from` on.
pub(crate) async fn follow_log(
    app: Arc<App>,
    out: Outbound,
    subscription_id: String,
    from: Seq,
    cancel: CancellationToken,
) {
    let render = move |envelopes: &[Envelope]| {
        envelopes
            .iter()
            .map(|env| {
                let rendered = EventJson::from_envelope(env);
                json!({
                    "subscription_id": subscription_id,
                    "seq": rendered.seq,
                    "ts": rendered.ts,
                    "kind": rendered.kind,
                    "data": rendered.data,
                })
            })
            .collect()
    };
    follow_events(app, out, "log.event", from, cancel, render).await;
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
    let state_of = app.clone();
    let render = move |envelopes: &[Envelope]| {
        let state = state_of.writer.state();
        envelopes
            .iter()
            .filter(|env| car_projections::host_feed::visible(&actor, &state, env))
            .filter_map(|env| car_projections::host_feed::host_event(&state, env))
            .collect()
    };
    follow_events(app, out, "host.event", from, cancel, render).await;
}

/// Follows the durable log from `from` on, a chunk of events at a time: `render` turns a
/// chunk into the params of the `method` notifications to send (any number per event).
async fn follow_events(
    app: Arc<App>,
    out: Outbound,
    method: &'static str,
    from: Seq,
    cancel: CancellationToken,
    mut render: impl FnMut(&[Envelope]) -> Vec<Value> + Send,
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
                return; // the log is behind the writer's durable head: never expected
            };
            next = last + 1;
            for params in render(&envelopes) {
                if !send_unless_cancelled(&out, &cancel, method, params).await {
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
) -> Result<Vec<Envelope>, car_events::LogError> {
    log.read_from(start).take(count).collect()
}
