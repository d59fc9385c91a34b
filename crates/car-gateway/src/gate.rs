//! The approval gate (PROTOCOL.md §5.2) and waiting for an approval.
//!
//! A gated method or tool runs only after a person approves it: the gate records a
//! system-level approval on behalf of the calling session (which therefore can never
//! approve its own call), waits for its resolution through the approval's notifier key,
//! and on timeout records its expiry. Waiting never holds the connection's reader: gated
//! methods wait in their own task and come back to the reader once approved.

use std::sync::Arc;
use std::time::Duration;

use car_projections::Actor;
use car_projections::decide::{Command, ExpireApproval, RequestApproval};
use car_projections::state::{Approval, ApprovalStatus};
use serde_json::{Value, json};

use crate::app::App;
use crate::notify::approval_key;
use crate::rpc::RpcError;

/// How much of a gated call's params the approval shows (PROTOCOL.md §5.2).
const PREVIEW_BYTES: usize = 512;

/// The params' JSON, cut to [`PREVIEW_BYTES`] at a character boundary.
pub(crate) fn params_preview(params: &Value) -> String {
    let mut text = params.to_string();
    if text.len() > PREVIEW_BYTES {
        let mut end = PREVIEW_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Whether calls of `name` (a method or a tool) need an approval.
pub(crate) fn is_gated(app: &App, name: &str) -> bool {
    app.config.approvals && app.config.approval_methods.iter().any(|m| m == name)
}

/// Asks for an approval of `action` on behalf of `actor` and waits up to the gate
/// timeout: `Ok` once approved (the first option), `-32003` when denied or timed out.
pub(crate) async fn pass(
    app: &Arc<App>,
    actor: &Actor,
    action: String,
    details: Value,
    run_id: Option<String>,
) -> Result<(), RpcError> {
    let approval_id = app.new_id();
    let request = Command::RequestApproval(RequestApproval {
        actor: actor.clone(),
        approval_id: approval_id.clone(),
        action,
        details,
        options: None,
        system_level: true,
        agent_id: None,
        run_id,
    });
    app.execute(request, |_, _| ()).await??;
    let mut approval = wait(app, &approval_id, app.config.approval_timeout).await?;
    if approval
        .as_ref()
        .is_some_and(|a| a.status == ApprovalStatus::Pending)
    {
        let expire = Command::ExpireApproval(ExpireApproval {
            approval_id: approval_id.clone(),
            reason: "timeout".into(),
        });
        app.execute(expire, |_, _| ()).await??;
        // A resolution may have won the race against the expiry: read what stands.
        approval = app
            .writer
            .read(|state| state.approval(&approval_id).cloned())
            .await?;
    }
    match approval {
        Some(a)
            if a.status == ApprovalStatus::Resolved
                && a.resolution.as_ref() == a.options.first() =>
        {
            Ok(())
        }
        Some(a) if a.status == ApprovalStatus::Resolved => {
            Err(RpcError::ApprovalDenied("approval denied".into()))
        }
        _ => Err(RpcError::ApprovalDenied("approval timed out".into())),
    }
}

/// Waits until the approval is no longer pending, or `timeout` passes; returns it as it
/// then stands (`None` if there is no such approval).
pub(crate) async fn wait(
    app: &Arc<App>,
    approval_id: &str,
    timeout: Duration,
) -> Result<Option<Approval>, RpcError> {
    let mut changed = app.notifier.watch(&approval_key(approval_id));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        changed.borrow_and_update();
        let approval = app
            .writer
            .read(|state| state.approval(approval_id).cloned())
            .await?;
        match &approval {
            Some(a) if a.status == ApprovalStatus::Pending => {}
            _ => return Ok(approval),
        }
        tokio::select! {
            woke = changed.changed() => if woke.is_err() { return Ok(approval) },
            () = tokio::time::sleep_until(deadline) => return Ok(approval),
        }
    }
}

/// The details of a gate approval.
pub(crate) fn details(field: &str, name: &str, params: &Value) -> Value {
    json!({field: name, "params_preview": params_preview(params)})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_are_cut_at_512_bytes_on_a_char_boundary() {
        let long = json!({"text": "é".repeat(600)});
        let preview = params_preview(&long);
        assert!(preview.len() <= PREVIEW_BYTES && preview.len() >= PREVIEW_BYTES - 1);
        assert!(long.to_string().starts_with(&preview));
        assert_eq!(params_preview(&json!({"a": 1})), r#"{"a":1}"#);
    }
}
