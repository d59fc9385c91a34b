//! Approvals (PROTOCOL.md §5.1): a session asks (`host.request_approval`, or the gate on
//! behalf of a gated tool call), another session resolves it with one of its options, or
//! its time runs out.
//!
//! The whole aggregate in one place: its slice of the state (`Approvals`, every approval
//! ever requested: they are never dropped, so the host feed can render any of them), its
//! fold (`approval.requested`, `approval.resolved`, `approval.expired`) and its decisions
//! ([`RequestApproval`], [`ResolveApproval`], [`ExpireApproval`]). The fold runs from
//! inside [`State::apply`], the decisions from inside [`crate::decide()`].

use std::collections::BTreeMap;

use car_events::event::{
    ApprovalExpired, ApprovalRequested, ApprovalRequestedInRun, ApprovalResolved, Event,
};
use car_events::{Envelope, JsonText, Seq};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::access::Actor;
use crate::decide::Refusal;
use crate::state::{Contradiction, State};

/// An approval's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ApprovalStatus {
    /// Waiting for a resolution.
    Pending,
    /// Resolved (the first resolution).
    Resolved,
    /// Expired unresolved.
    Expired,
}

impl ApprovalStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Resolved => "resolved",
            ApprovalStatus::Expired => "expired",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "pending" => Some(ApprovalStatus::Pending),
            "resolved" => Some(ApprovalStatus::Resolved),
            "expired" => Some(ApprovalStatus::Expired),
            _ => None,
        }
    }
}

/// An approval (PROTOCOL.md §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// Its id.
    pub id: String,
    /// The session that asked.
    pub requester: Option<String>,
    /// The agent it concerns.
    pub agent_id: Option<String>,
    /// What is to be approved.
    pub action: String,
    /// Free-form details.
    pub details: JsonText,
    /// The allowed resolutions; the first approves.
    pub options: Vec<String>,
    /// Whether any session but the requester may resolve it.
    pub system_level: bool,
    /// Where it stands.
    pub status: ApprovalStatus,
    /// The resolution, once resolved.
    pub resolution: Option<String>,
    /// Who resolved it.
    pub resolved_by: Option<String>,
    /// When it was requested.
    pub created_at: DateTime<Utc>,
    /// When it was resolved or expired.
    pub resolved_at: Option<DateTime<Utc>>,
    /// Its `approval.requested` event.
    pub requested_seq: Seq,
    /// A chat's mirrored approval (§13.2): the chat's `session_id` and its caller's
    /// session, who may see and resolve it like a host.
    pub chat: Option<(String, Option<String>)>,
    /// The requesting session's current run (§14.5).
    pub run_id: Option<String>,
}

/// The approvals slice of the state: every approval, by id.
#[derive(Debug, Clone, Default)]
pub(crate) struct Approvals {
    approvals: BTreeMap<String, Approval>,
}

impl Approval {
    /// The session of the caller of the chat this approval was mirrored from, if any.
    pub fn chat_caller(&self) -> Option<&str> {
        self.chat.as_ref().and_then(|(_, caller)| caller.as_deref())
    }
}

impl Approvals {
    /// Folds an `approval.*` event (other events are not this slice's). On error the slice
    /// is unchanged.
    pub(crate) fn apply(&mut self, env: &Envelope) -> Result<(), Contradiction> {
        let (seq, ts) = (env.seq, env.ts);
        match &env.event {
            Event::ApprovalRequested(e) => self.request(e, None, seq, ts)?,
            Event::ApprovalRequestedInRun(e) => {
                self.request(&e.approval, Some(&e.run_id), seq, ts)?;
            }
            Event::ApprovalRequestedInChat(e) => self.request(&e.approval, None, seq, ts)?,
            Event::ApprovalResolved(e) => {
                let approval = self.pending(&e.approval_id)?;
                if !approval.options.contains(&e.resolution) {
                    return Err(Contradiction::NotAnOption {
                        id: e.approval_id.clone(),
                        resolution: e.resolution.clone(),
                    });
                }
                approval.status = ApprovalStatus::Resolved;
                approval.resolution = Some(e.resolution.clone());
                approval.resolved_by = e.client_id.clone();
                approval.resolved_at = Some(ts);
            }
            Event::ApprovalExpired(e) => {
                let approval = self.pending(&e.approval_id)?;
                approval.status = ApprovalStatus::Expired;
                approval.resolved_at = Some(ts);
            }
            _ => {}
        }
        Ok(())
    }

    fn request(
        &mut self,
        e: &ApprovalRequested,
        run_id: Option<&String>,
        seq: Seq,
        ts: DateTime<Utc>,
    ) -> Result<(), Contradiction> {
        if self.approvals.contains_key(&e.approval_id) {
            return Err(Contradiction::DuplicateApproval(e.approval_id.clone()));
        }
        self.approvals.insert(
            e.approval_id.clone(),
            Approval {
                id: e.approval_id.clone(),
                requester: e.client_id.clone(),
                agent_id: e.agent_id.clone(),
                action: e.action.clone(),
                details: e.details.clone(),
                options: e.options.clone(),
                system_level: e.system_level,
                status: ApprovalStatus::Pending,
                resolution: None,
                resolved_by: None,
                created_at: ts,
                resolved_at: None,
                requested_seq: seq,
                chat: None,
                run_id: run_id.cloned(),
            },
        );
        Ok(())
    }

    /// Links a just-requested approval to its chat (`approval.requested_in_chat`).
    pub(crate) fn link_chat(&mut self, id: &str, session_id: &str, caller: Option<&String>) {
        if let Some(approval) = self.approvals.get_mut(id) {
            approval.chat = Some((session_id.to_owned(), caller.cloned()));
        }
    }

    fn pending(&mut self, id: &str) -> Result<&mut Approval, Contradiction> {
        let approval = self
            .approvals
            .get_mut(id)
            .ok_or_else(|| Contradiction::UnknownApproval(id.to_owned()))?;
        if approval.status != ApprovalStatus::Pending {
            return Err(Contradiction::ApprovalNotPending {
                id: id.to_owned(),
                status: approval.status.as_str(),
            });
        }
        Ok(approval)
    }

    /// An approval.
    pub(crate) fn get(&self, id: &str) -> Option<&Approval> {
        self.approvals.get(id)
    }

    /// Every approval, oldest first.
    pub(crate) fn oldest_first(&self) -> Vec<&Approval> {
        let mut all: Vec<&Approval> = self.approvals.values().collect();
        all.sort_by_key(|a| a.requested_seq);
        all
    }
}

/// `host.request_approval`, or the gate asking on behalf of a gated call.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestApproval {
    /// The requesting session.
    pub actor: Actor,
    /// A fresh id.
    pub approval_id: String,
    /// What is to be approved.
    pub action: String,
    /// Free-form details.
    pub details: Value,
    /// The allowed resolutions (default `["approve", "deny"]`).
    pub options: Option<Vec<String>>,
    /// Whether any session but the requester may resolve it.
    pub system_level: bool,
    /// The agent it concerns (an agent session's own identity wins).
    pub agent_id: Option<String>,
    /// The requesting session's current run, if it has one (§14.5).
    pub run_id: Option<String>,
}

/// `host.resolve_approval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveApproval {
    /// Who resolves.
    pub actor: Actor,
    /// The approval.
    pub approval_id: String,
    /// One of its options.
    pub resolution: String,
}

/// A pending approval's time is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpireApproval {
    /// The approval.
    pub approval_id: String,
    /// Why (`"timeout"`).
    pub reason: String,
}

pub(crate) fn request_approval(c: &RequestApproval) -> Result<Vec<Event>, Refusal> {
    if c.action.trim().is_empty() {
        return Err(Refusal::InvalidParams(
            "action: required, a non-empty string".into(),
        ));
    }
    let options = match &c.options {
        None => vec!["approve".to_owned(), "deny".to_owned()],
        Some(options) if options.is_empty() => {
            return Err(Refusal::InvalidParams("options: must not be empty".into()));
        }
        Some(options) if options.iter().any(|o| o.trim().is_empty()) => {
            return Err(Refusal::InvalidParams(
                "options: must be non-empty strings".into(),
            ));
        }
        Some(options) => options.clone(),
    };
    let agent_id = c
        .actor
        .bound_agent()
        .map(str::to_owned)
        .or_else(|| c.agent_id.clone());
    let approval = ApprovalRequested {
        approval_id: c.approval_id.clone(),
        client_id: Some(c.actor.client_id.clone()),
        agent_id,
        action: c.action.clone(),
        details: JsonText::from_value(&c.details),
        options,
        system_level: c.system_level,
    };
    Ok(vec![match &c.run_id {
        Some(run_id) => Event::ApprovalRequestedInRun(ApprovalRequestedInRun {
            approval,
            run_id: run_id.clone(),
        }),
        None => Event::ApprovalRequested(approval),
    }])
}

pub(crate) fn resolve_approval(state: &State, c: &ResolveApproval) -> Result<Vec<Event>, Refusal> {
    let approval = state
        .approval(&c.approval_id)
        .ok_or_else(|| Refusal::UnknownApproval(c.approval_id.clone()))?;
    if approval.requester.as_deref() == Some(c.actor.client_id.as_str()) {
        return Err(Refusal::Forbidden(format!(
            "approval {} was requested by this session; another session must resolve it",
            c.approval_id
        )));
    }
    // A chat's mirrored approval (§13.2) may also be resolved by the chat's caller.
    let chat_caller = approval.chat_caller() == Some(c.actor.client_id.as_str());
    if !approval.system_level && !c.actor.has_host_rights() && !chat_caller {
        return Err(Refusal::Forbidden(format!(
            "only a host session may resolve approval {}",
            c.approval_id
        )));
    }
    match approval.status {
        ApprovalStatus::Pending => {}
        ApprovalStatus::Resolved => return Err(Refusal::ApprovalResolved(c.approval_id.clone())),
        ApprovalStatus::Expired => return Err(Refusal::ApprovalExpired(c.approval_id.clone())),
    }
    if !approval.options.contains(&c.resolution) {
        return Err(Refusal::InvalidParams(format!(
            "resolution: must be one of {}",
            approval.options.join(", ")
        )));
    }
    Ok(vec![Event::ApprovalResolved(ApprovalResolved {
        approval_id: c.approval_id.clone(),
        resolution: c.resolution.clone(),
        client_id: Some(c.actor.client_id.clone()),
    })])
}

pub(crate) fn expire_approval(state: &State, c: &ExpireApproval) -> Vec<Event> {
    match state.approval(&c.approval_id) {
        Some(approval) if approval.status == ApprovalStatus::Pending => {
            vec![Event::ApprovalExpired(ApprovalExpired {
                approval_id: c.approval_id.clone(),
                reason: c.reason.clone(),
            })]
        }
        _ => vec![],
    }
}
