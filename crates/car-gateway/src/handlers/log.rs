//! `log.read`, `log.subscribe`, `log.unsubscribe` (PROTOCOL.md §7): the raw log, for
//! host sessions.

use car_events::event::{Event, SubscriptionTarget};
use car_events::{EventJson, Seq};
use car_projections::decide::{Command, Subscribe, SubscriptionSelector, Unsubscribe};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::App;
use crate::reads::{MAX_RESPONSE_BYTES, read_blocking};
use crate::rpc::{self, RpcError};
use crate::session::{Responder, Session};
use crate::tail;

/// `log.read` default and maximum page (PROTOCOL.md §7).
const DEFAULT_READ_LIMIT: usize = 1000;
const MAX_READ_LIMIT: usize = 10_000;
/// With a `kinds` filter, one call scans at most this many events before answering (with
/// `next_seq` where to go on), so a rare kind never makes one call scan the whole log.
const MAX_SCAN: usize = 100_000;

fn require_host(session: &Session, method: &str) -> Result<(), RpcError> {
    if session.actor()?.has_host_rights() {
        Ok(())
    } else {
        Err(RpcError::Internal(format!(
            "{method} requires a host session"
        )))
    }
}

#[derive(Debug, Deserialize)]
struct ReadParams {
    from_seq: Option<Seq>,
    limit: Option<usize>,
    kinds: Option<Vec<String>>,
}

/// `log.read`'s params, checked: from where, how many, which kinds.
#[derive(Debug, Clone)]
pub(crate) struct LogRead {
    from: Seq,
    limit: usize,
    kinds: Option<Vec<String>>,
}

/// Reads and checks `log.read`'s params (shared with the dashboard's `/api/events`).
pub(crate) fn parse_read(params: Value) -> Result<LogRead, RpcError> {
    let params: ReadParams = rpc::parse(params)?;
    if let Some(kinds) = &params.kinds {
        for (i, kind) in kinds.iter().enumerate() {
            if !Event::KINDS.contains(&kind.as_str()) {
                return Err(RpcError::params(
                    &format!("kinds[{i}]"),
                    format!("unknown kind `{kind}`"),
                ));
            }
        }
    }
    let limit = match params.limit {
        None => DEFAULT_READ_LIMIT,
        Some(0) => return Err(RpcError::params("limit", "must be at least 1")),
        Some(n) => n.min(MAX_READ_LIMIT),
    };
    Ok(LogRead {
        from: params.from_seq.unwrap_or(1).max(1),
        limit,
        kinds: params.kinds,
    })
}

/// `log.read`.
pub(crate) async fn read(session: &mut Session, params: Value, responder: Responder) {
    let prepared = require_host(session, "log.read").and_then(|()| parse_read(params));
    session.reply_after_writes(responder, prepared, |app, read| async move {
        read_log(&app, read).await
    });
}

/// `log.read`'s result: a page of durable events, `next_seq` where to go on.
pub(crate) async fn read_log(app: &App, read: LogRead) -> Result<Value, RpcError> {
    let LogRead { from, limit, kinds } = read;
    let head = app.writer.durable().seq;
    let log = app.writer.log().clone();
    let (events, next) = read_blocking(move || {
        let mut events = Vec::new();
        let mut bytes = 0;
        let mut next = from;
        for item in log.read_from(from).take(MAX_SCAN) {
            let env = item?;
            // A page ends at the head, at `limit` events, or past the response size
            // cap (always holding at least one event); `next_seq` says where to go on.
            let full = bytes > MAX_RESPONSE_BYTES && !events.is_empty();
            if env.seq > head || events.len() == limit || full {
                break;
            }
            next = env.seq + 1;
            if kinds
                .as_ref()
                .is_none_or(|k| k.iter().any(|k| k == env.event.kind()))
            {
                let rendered = EventJson::from_envelope(&env);
                bytes += rendered.data.to_string().len() + 64;
                events.push(rendered);
            }
        }
        Ok::<_, car_events::LogError>((events, next))
    })
    .await?;
    Ok(json!({"events": events, "next_seq": next, "head_seq": head}))
}

#[derive(Debug, Deserialize)]
struct SubscribeParams {
    from_seq: Option<Seq>,
}

/// `log.subscribe`: every event from `from_seq` (default: the one after the subscription)
/// on, in order, without gap or duplicate.
pub(crate) async fn subscribe(session: &mut Session, params: Value, responder: Responder) {
    let queued = async {
        require_host(session, "log.subscribe")?;
        let params: SubscribeParams = rpc::parse(params)?;
        let actor = session.actor()?.clone();
        let subscription_id = session.app.new_id();
        let id = subscription_id.clone();
        // The default start is the event after the subscription's own: its seq is the
        // head the decision sees, plus one.
        let write = session
            .queue_with(
                move |state| {
                    Command::Subscribe(Subscribe {
                        actor: actor.clone(),
                        subscription_id: id.clone(),
                        target: SubscriptionTarget::Log {
                            from_seq: params.from_seq.unwrap_or(state.head() + 2).max(1),
                        },
                    })
                },
                |_, events: &[Event]| match events.last() {
                    Some(Event::SubscriptionOpened(e)) => match e.target {
                        SubscriptionTarget::Log { from_seq } => from_seq,
                        _ => 1,
                    },
                    _ => 1,
                },
            )
            .await?;
        Ok::<_, RpcError>((subscription_id, write))
    }
    .await;
    let (subscription_id, write) = match queued {
        Ok(queued) => queued,
        Err(err) => return responder.send(Err(err)).await,
    };
    let cancel = session.subscription(format!("log:{subscription_id}"));
    let app = session.app.clone();
    let out = session.out.clone();
    tokio::spawn(async move {
        let done = match write.committed().await {
            Ok(done) => done,
            Err(err) => {
                cancel.cancel();
                return responder.send(Err(err)).await;
            }
        };
        let head = done.range.last().unwrap_or_default();
        responder
            .send(Ok(
                json!({"subscription_id": subscription_id, "head_seq": head}),
            ))
            .await;
        tail::follow_log(app, out, subscription_id, done.out, cancel).await;
    });
}

#[derive(Debug, Deserialize)]
struct UnsubscribeParams {
    subscription_id: String,
}

/// `log.unsubscribe`.
pub(crate) async fn unsubscribe(session: &mut Session, params: Value, responder: Responder) {
    let queued = async {
        require_host(session, "log.unsubscribe")?;
        let params: UnsubscribeParams = rpc::parse(params)?;
        session.end_subscription(&format!("log:{}", params.subscription_id));
        let command = Command::Unsubscribe(Unsubscribe {
            client_id: session.client_id.clone(),
            selector: SubscriptionSelector::Id(params.subscription_id),
        });
        Ok((
            (),
            session
                .queue(command, |_, events| !events.is_empty())
                .await?,
        ))
    }
    .await;
    session.reply_when_durable(responder, queued, |(), outcome| async move {
        Ok(json!({"removed": outcome?.out}))
    });
}
