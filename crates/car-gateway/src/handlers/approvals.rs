//! `host.request_approval`, `host.resolve_approval`, `host.approvals`,
//! `host.await_approval` (PROTOCOL.md §5.1).

use std::time::Duration;

use car_projections::decide::{Command, RequestApproval, ResolveApproval};
use car_projections::host_feed::{approval_json, approval_visible};
use car_projections::state::ApprovalStatus;
use car_projections::{Actor, Refusal};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::App;
use crate::gate;
use crate::rpc::{self, RpcError};
use crate::session::{Responder, Session};

#[derive(Debug, Deserialize)]
struct RequestParams {
    action: String,
    details: Option<Value>,
    options: Option<Vec<String>>,
    system_level: Option<bool>,
    agent_id: Option<String>,
}

/// `host.request_approval`.
pub(crate) async fn request(session: &mut Session, params: Value, responder: Responder) {
    let queued = async {
        let params: RequestParams = rpc::parse(params)?;
        let approval_id = session.app.new_id();
        let command = Command::RequestApproval(RequestApproval {
            actor: session.actor()?.clone(),
            approval_id: approval_id.clone(),
            action: params.action,
            details: params.details.unwrap_or_else(|| json!({})),
            options: params.options,
            system_level: params.system_level.unwrap_or(false),
            agent_id: params.agent_id,
            run_id: session.current_run.clone(),
        });
        Ok((approval_id, session.queue(command, |_, _| ()).await?))
    }
    .await;
    let app = session.app.clone();
    session.reply_when_durable(responder, queued, |approval_id, outcome| async move {
        outcome?;
        approval(&app, &approval_id).await
    });
}

/// An approval as it stands, on the wire.
pub(crate) async fn approval(app: &App, approval_id: &str) -> Result<Value, RpcError> {
    app.writer
        .read(|state| state.approval(approval_id).map(approval_json))
        .await?
        .ok_or_else(|| RpcError::Internal("internal error: approval not found".into()))
}

/// `host.resolve_approval`'s params (shared with MCP's `approvals_resolve`).
#[derive(Debug, Deserialize)]
pub(crate) struct ResolveParams {
    pub(crate) approval_id: String,
    pub(crate) resolution: String,
}

/// `host.resolve_approval`.
pub(crate) async fn resolve(session: &mut Session, params: Value, responder: Responder) {
    let queued = async {
        let params: ResolveParams = rpc::parse(params)?;
        let command = Command::ResolveApproval(ResolveApproval {
            actor: session.actor()?.clone(),
            approval_id: params.approval_id.clone(),
            resolution: params.resolution,
        });
        Ok((params.approval_id, session.queue(command, |_, _| ()).await?))
    }
    .await;
    let app = session.app.clone();
    session.reply_when_durable(responder, queued, |approval_id, outcome| async move {
        outcome?;
        crate::chat_relay::ChatRelay::forward_resolution(&app, &approval_id);
        approval(&app, &approval_id).await
    });
}

#[derive(Debug, Deserialize)]
struct ListParams {
    status: Option<String>,
}

/// `host.approvals`' params, checked: the status asked for (shared with MCP's
/// `approvals_list`).
pub(crate) fn parse_list(params: Value) -> Result<Option<ApprovalStatus>, RpcError> {
    let params: ListParams = rpc::parse(params)?;
    match params.status.as_deref() {
        None => Ok(None),
        Some(name) => Ok(Some(ApprovalStatus::parse(name).ok_or_else(|| {
            RpcError::params("status", "must be pending, resolved or expired")
        })?)),
    }
}

/// `host.approvals`.
pub(crate) async fn list(session: &mut Session, params: Value, responder: Responder) {
    let prepared = parse_list(params).and_then(|status| Ok((status, session.actor()?.clone())));
    session.reply_after_writes(responder, prepared, |app, (status, actor)| async move {
        list_approvals(&app, &actor, status).await
    });
}

/// `host.approvals`' result for `actor`, once what it reads is durable.
pub(crate) async fn list_approvals(
    app: &App,
    actor: &Actor,
    status: Option<ApprovalStatus>,
) -> Result<Value, RpcError> {
    let approvals = app
        .writer
        .read(|state| {
            state
                .approvals()
                .into_iter()
                .filter(|a| status.is_none_or(|s| a.status == s))
                .filter(|a| approval_visible(actor, a))
                .map(approval_json)
                .collect::<Vec<_>>()
        })
        .await?;
    Ok(json!({"approvals": approvals}))
}

#[derive(Debug, Deserialize)]
struct AwaitParams {
    approval_id: String,
    timeout_ms: Option<u64>,
}

/// `host.await_approval` (ext): the approval once resolved or expired, or as it stands
/// when `timeout_ms` (default: the gate timeout) passes.
pub(crate) async fn wait(session: &mut Session, params: Value, responder: Responder) {
    let prepared =
        rpc::parse::<AwaitParams>(params).and_then(|p| Ok((p, session.actor()?.clone())));
    let (params, actor) = match prepared {
        Ok(prepared) => prepared,
        Err(err) => return responder.send(Err(err)).await,
    };
    let after_writes = session.fence.reads_after_writes();
    let app = session.app.clone();
    let timeout = params
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(app.config.approval_timeout);
    // Not under the handler deadline: waiting for a person is the point of this call.
    tokio::spawn(async move {
        after_writes.await;
        let id = params.approval_id;
        let visible = app
            .writer
            .read(|state| {
                state
                    .approval(&id)
                    .is_some_and(|a| approval_visible(&actor, a))
            })
            .await;
        let result = match visible {
            Ok(true) => match gate::wait(&app, &id, timeout).await {
                Ok(Some(approval)) => Ok(approval_json(&approval)),
                Ok(None) => Err(Refusal::UnknownApproval(id).into()),
                Err(err) => Err(err),
            },
            Ok(false) => Err(Refusal::UnknownApproval(id).into()),
            Err(err) => Err(err.into()),
        };
        responder.send(result).await;
    });
}
