//! `chats [--to SEQ] [--agent ID] [--json]`: every chat the log holds (PROTOCOL.md §13),
//! in the order they started: its agent, caller, conversation, prompt (as logged, cut to
//! 16 KiB), whether it was cancelled and by whom, its terminal event, the approvals
//! mirrored from it and how each ended, and why its route was dropped, or `live` when the
//! log ends (or `--to` stops) with it routed.
//!
//! The daemon's state keeps only the chats routed now, so this command reads the history
//! from the log itself, in one ordered scan of the `chat.*` and approval events.
//! `car-replay events --chat ID` shows one chat's events themselves.

use std::collections::HashMap;
use std::ops::ControlFlow;

use car_events::event::Event;
use car_events::{Envelope, EventLog, Seq};
use serde::Serialize;

use super::Context;
use crate::cli::ChatsArgs;
use crate::datadir::OpenLog;
use crate::exit::{Error, Exit};
use crate::output::{Out, Table, clip, ts};
use crate::progress::Progress;
use crate::replay::reason_of;
use crate::scan::{self, error_seq};

/// One mirrored approval and how it ended.
#[derive(Debug, Clone, Serialize)]
struct ChatApproval {
    approval_id: String,
    action: String,
    /// `pending`, `resolved:<resolution>` or `expired:<reason>`.
    outcome: String,
}

/// One chat, as the log tells it.
#[derive(Debug, Clone, Serialize)]
struct ChatRow {
    session_id: String,
    agent_id: String,
    caller_role: String,
    caller_client_id: Option<String>,
    conversation_id: String,
    prompt: String,
    prompt_bytes: u64,
    attachments: u32,
    started_seq: Seq,
    started_at: String,
    cancelled_by: Option<String>,
    terminal: Option<String>,
    finish_reason: Option<String>,
    error: Option<String>,
    approvals: Vec<ChatApproval>,
    /// The route's drop reason, or `live`.
    ended: String,
    ended_at: Option<String>,
}

/// Folds the chat events, in log order, into rows.
#[derive(Debug, Default)]
struct Chats {
    rows: Vec<ChatRow>,
    /// Live chat → its row.
    live: HashMap<String, usize>,
    /// Mirrored approval → (row, index in its approvals).
    approvals: HashMap<String, (usize, usize)>,
}

impl Chats {
    fn apply(&mut self, env: &Envelope) {
        match &env.event {
            Event::ChatStarted(e) => {
                self.live.insert(e.session_id.clone(), self.rows.len());
                self.rows.push(ChatRow {
                    session_id: e.session_id.clone(),
                    agent_id: e.agent_id.clone(),
                    caller_role: e.caller_role.clone(),
                    caller_client_id: e.caller_client_id.clone(),
                    conversation_id: e.conversation_id.clone(),
                    prompt: e.prompt.clone(),
                    prompt_bytes: e.prompt_bytes,
                    attachments: e.attachments,
                    started_seq: env.seq,
                    started_at: ts(env.ts),
                    cancelled_by: None,
                    terminal: None,
                    finish_reason: None,
                    error: None,
                    approvals: Vec::new(),
                    ended: "live".into(),
                    ended_at: None,
                });
            }
            Event::ChatCancelRequested(e) => {
                if let Some(row) = self.row(&e.session_id) {
                    row.cancelled_by = Some(e.by.clone());
                }
            }
            Event::ChatTerminal(e) => {
                if let Some(row) = self.row(&e.session_id) {
                    row.terminal = Some(e.kind.clone());
                    row.finish_reason = e.finish_reason.clone();
                    row.error = e.error.clone();
                }
            }
            Event::ChatRouteDropped(e) => {
                if let Some(index) = self.live.remove(&e.session_id) {
                    let row = &mut self.rows[index];
                    row.ended = e.reason.clone();
                    row.ended_at = Some(ts(env.ts));
                }
            }
            Event::ApprovalRequestedInChat(e) => {
                if let Some(&index) = self.live.get(&e.session_id) {
                    let approvals = &mut self.rows[index].approvals;
                    self.approvals
                        .insert(e.approval.approval_id.clone(), (index, approvals.len()));
                    approvals.push(ChatApproval {
                        approval_id: e.approval.approval_id.clone(),
                        action: e.approval.action.clone(),
                        outcome: "pending".into(),
                    });
                }
            }
            Event::ApprovalResolved(e) => {
                self.outcome(&e.approval_id, format!("resolved:{}", e.resolution));
            }
            Event::ApprovalExpired(e) => {
                self.outcome(&e.approval_id, format!("expired:{}", e.reason));
            }
            _ => {}
        }
    }

    fn row(&mut self, session_id: &str) -> Option<&mut ChatRow> {
        let index = *self.live.get(session_id)?;
        self.rows.get_mut(index)
    }

    fn outcome(&mut self, approval_id: &str, outcome: String) {
        if let Some(&(row, index)) = self.approvals.get(approval_id) {
            self.rows[row].approvals[index].outcome = outcome;
        }
    }
}

/// Whether the chats fold looks at an event.
fn relevant(event: &Event) -> bool {
    event.chat_session().is_some()
        || matches!(
            event,
            Event::ApprovalResolved(_) | Event::ApprovalExpired(_)
        )
}

/// Runs the command.
pub fn run(log: &OpenLog, context: &Context, args: &ChatsArgs) -> Result<Exit, Error> {
    let head = log.log.head();
    let to = args.to.unwrap_or(head).min(head);
    let progress = Progress::new(to, "chats", context.quiet);
    let mut chats = Chats::default();
    let mut damaged = 0u64;
    scan::scan(
        &log.log,
        1..=to,
        context.threads,
        &progress,
        |item| match item {
            Ok(env) if relevant(&env.event) => Ok(Some(env)),
            Ok(_) => Ok(None),
            Err(err) => Err((error_seq(&err), reason_of(&err))),
        },
        |mapped| {
            match mapped {
                Ok(Some(env)) => chats.apply(&env),
                Ok(None) => {}
                Err((seq, reason)) if seq == Some(head) && head > 0 => eprintln!(
                    "car-replay: warning: the last record (seq {head}) is damaged, a torn \
                     write: {reason}. It is left out, as the daemon drops it at its next start."
                ),
                Err((seq, reason)) => {
                    damaged += 1;
                    eprintln!(
                        "car-replay: seq {}: skipped, the record is damaged: {reason}",
                        seq.map_or_else(|| "?".to_owned(), |s| s.to_string())
                    );
                }
            }
            ControlFlow::Continue(())
        },
    );
    progress.finish();
    let rows: Vec<&ChatRow> = chats
        .rows
        .iter()
        .filter(|row| args.agent.as_deref().is_none_or(|a| row.agent_id == a))
        .collect();
    let mut out = Out::new();
    if args.json {
        out.json(&serde_json::json!({"seq": to, "chats": rows}))?;
    } else {
        let live = rows.iter().filter(|r| r.ended == "live").count();
        out.line(&format!(
            "chats up to seq {to}: {} ({live} live)",
            rows.len()
        ))?;
        if !rows.is_empty() {
            let mut table = Table::new(&[
                "CHAT",
                "AGENT",
                "CALLER",
                "STARTED",
                "ENDED",
                "TERMINAL",
                "APPROVALS",
                "PROMPT",
            ]);
            for row in &rows {
                let terminal = match (&row.terminal, &row.finish_reason, &row.error) {
                    (None, _, _) => "-".to_owned(),
                    (Some(kind), Some(reason), _) => format!("{kind} ({reason})"),
                    (Some(kind), None, Some(error)) => format!("{kind}: {error}"),
                    (Some(kind), None, None) => kind.clone(),
                };
                let approvals = row
                    .approvals
                    .iter()
                    .map(|a| format!("{} {}", a.approval_id, a.outcome))
                    .collect::<Vec<_>>()
                    .join(", ");
                table.row(vec![
                    row.session_id.clone(),
                    row.agent_id.clone(),
                    row.caller_role.clone(),
                    row.started_at.clone(),
                    row.ended.clone(),
                    clip(&terminal, 40),
                    if approvals.is_empty() {
                        "-".into()
                    } else {
                        clip(&approvals, 50)
                    },
                    clip(&row.prompt, 40),
                ]);
            }
            table.write(&mut out)?;
        }
    }
    out.flush()?;
    if damaged > 0 {
        eprintln!(
            "car-replay: {damaged} damaged records skipped; `car-replay verify` lists every problem"
        );
        return Ok(Exit::Corrupt);
    }
    Ok(Exit::Ok)
}
