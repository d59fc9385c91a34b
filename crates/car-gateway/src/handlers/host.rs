//! `host.subscribe` and `host.events` (PROTOCOL.md §6): the host feed.

use std::sync::Arc;

use car_events::Seq;
use car_events::event::{Event, SubscriptionTarget};
use car_projections::Actor;
use car_projections::decide::{Command, Subscribe};
use car_projections::host_feed::{self, approval_json, approval_visible};
use car_projections::state::ApprovalStatus;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::App;
use crate::reads::read_blocking;
use crate::rpc::{self, RpcError};
use crate::session::{Responder, Session};
use crate::tail;

/// Host events `host.subscribe` returns with its answer.
const SUBSCRIBE_BACKLOG: usize = 100;
/// `host.events` default and maximum page.
const DEFAULT_EVENTS_LIMIT: usize = 100;
const MAX_EVENTS_LIMIT: usize = 1000;

/// The last `limit` host events before `before` (exclusive) that `actor` may see,
/// ascending, read back from the log through the state's host-feed index.
fn recent_events(
    app: &Arc<App>,
    actor: &Actor,
    before: Seq,
    limit: usize,
) -> Result<Vec<Value>, car_events::LogError> {
    let seqs: Vec<Seq> = {
        let state = app.writer.state();
        state
            .host_feed()
            .iter()
            .rev()
            .copied()
            .filter(|s| *s < before)
            .collect()
    };
    let mut found = Vec::new();
    for chunk in seqs.chunks(SUBSCRIBE_BACKLOG) {
        let mut envelopes = Vec::with_capacity(chunk.len());
        for seq in chunk {
            if let Some(env) = app.writer.log().get(*seq)? {
                envelopes.push(env);
            }
        }
        let state = app.writer.state();
        for env in &envelopes {
            if host_feed::visible(actor, &state, env) {
                if let Some(event) = host_feed::host_event(&state, env) {
                    found.push(event);
                    if found.len() == limit {
                        found.reverse();
                        return Ok(found);
                    }
                }
            }
        }
    }
    found.reverse();
    Ok(found)
}

/// `host.subscribe`: pending approvals, the last 100 host events and the identity, as of
/// the subscription's position; then `host.event` for every later host event.
pub(crate) async fn subscribe(session: &mut Session, params: Value, responder: Responder) {
    let queued = async {
        rpc::parse::<serde_json::Map<String, Value>>(params)?;
        let actor = session.actor()?.clone();
        let command = Command::Subscribe(Subscribe {
            actor: actor.clone(),
            subscription_id: session.app.new_id(),
            target: SubscriptionTarget::Host,
        });
        let approvals_actor = actor.clone();
        let write = session
            .queue(command, move |state, _: &[Event]| {
                state
                    .approvals()
                    .into_iter()
                    .filter(|a| {
                        a.status == ApprovalStatus::Pending && approval_visible(&approvals_actor, a)
                    })
                    .map(approval_json)
                    .collect::<Vec<_>>()
            })
            .await?;
        Ok::<_, RpcError>((actor, write))
    }
    .await;
    let (actor, write) = match queued {
        Ok(queued) => queued,
        Err(err) => return responder.send(Err(err)).await,
    };
    let cancel = session.subscription("host".into());
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
        let position = done.range.last().unwrap_or_default();
        let (backlog_app, backlog_actor) = (app.clone(), actor.clone());
        let events = read_blocking(move || {
            recent_events(&backlog_app, &backlog_actor, position, SUBSCRIBE_BACKLOG)
        })
        .await;
        let events = match events {
            Ok(events) => events,
            Err(err) => return responder.send(Err(err)).await,
        };
        responder
            .send(Ok(json!({
                "subscribed": true,
                "approvals": done.out,
                "events": events,
                "identity": {
                    "version": env!("CARGO_PKG_VERSION"),
                    "pid": std::process::id(),
                    "data_dir": app.config.data_dir.display().to_string(),
                    "role": "primary",
                    // No agent manifest file here; this daemon owns supervision (§12.4).
                    "manifest_path": null,
                    "manifest_role": "owner",
                },
                "event_sequence": position,
            })))
            .await;
        tail::follow_host(app, out, actor, position + 1, cancel).await;
    });
}

#[derive(Debug, Deserialize)]
struct EventsParams {
    limit: Option<usize>,
    before: Option<Seq>,
}

/// `host.events`: recent host events, ascending, paged backwards with `before`.
pub(crate) async fn events(session: &mut Session, params: Value, responder: Responder) {
    let prepared = rpc::parse::<EventsParams>(params).and_then(|params| {
        let limit = match params.limit {
            None => DEFAULT_EVENTS_LIMIT,
            Some(0) => return Err(RpcError::params("limit", "must be at least 1")),
            Some(n) => n.min(MAX_EVENTS_LIMIT),
        };
        Ok((
            limit,
            params.before.unwrap_or(Seq::MAX),
            session.actor()?.clone(),
        ))
    });
    session.reply_after_writes(
        responder,
        prepared,
        |app, (limit, before, actor)| async move {
            let durable = app.writer.durable().seq;
            let before = before.min(durable + 1);
            let events = read_blocking(move || recent_events(&app, &actor, before, limit)).await?;
            Ok(json!({"events": events}))
        },
    );
}
