//! Chats relayed to attached agents (PROTOCOL.md §13) as a slice of [`State`](crate::State).
//!
//! The whole aggregate in one place: the slice ([`Chats`]: the routes live now, the
//! approvals mirrored from them), its fold ([`Chats::apply`], the `chat.*` events and
//! `approval.requested_in_chat`), the checks of `agents.chat`'s params ([`request`]) and
//! the decisions ([`decide`](mod@decide): start, end as each way a chat can end, mirror an
//! approval, take an agent's resolution).
//!
//! Only live chats are kept: an ended chat leaves nothing in memory but a count, so the
//! state does not grow with the number of chats ever relayed (`car-replay chats` reads the
//! history from the log itself). The events themselves carry no relayed chat event: the
//! contract logs a chat's start, cancellation, terminal event, route drop and approvals,
//! nothing else (§13.1).

pub mod decide;
pub mod request;

use std::collections::{BTreeMap, BTreeSet};

use car_events::event::Event;
use car_events::{Envelope, Seq};
use chrono::{DateTime, Utc};

pub use decide::{ChatCommand, ChatRefusal, Ending};
pub use request::ChatRequest;

/// A chat whose route is live: events from its agent's session are relayed to its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chat {
    /// Its `session_id`.
    pub session_id: String,
    /// The agent it is relayed to.
    pub agent_id: String,
    /// The agent's session: the one connection whose events count.
    pub agent_client_id: String,
    /// The caller's session (`None` for an A2A task).
    pub caller_client_id: Option<String>,
    /// `host`, `client` or `a2a`.
    pub caller_role: String,
    /// Its conversation.
    pub conversation_id: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its `chat.started`.
    pub started_seq: Seq,
    /// Who asked to cancel it, once someone did.
    pub cancel_requested_by: Option<String>,
    /// The kind of its terminal event, once it had one.
    pub terminal: Option<String>,
    /// The approvals mirrored from it (§13.2), pending or not.
    pub approvals: BTreeSet<String>,
}

/// A chat event that cannot follow the ones before it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatContradiction {
    /// A start of a chat whose route is live.
    #[error("chat `{0}` is already routed")]
    AlreadyRouted(String),
    /// An event about a chat whose route is not live.
    #[error("chat `{0}` is not routed")]
    NotRouted(String),
    /// A second terminal event.
    #[error("chat `{0}` already had its terminal event")]
    SecondTerminal(String),
}

/// The chats slice of the state.
#[derive(Debug, Clone, Default)]
pub struct Chats {
    live: BTreeMap<String, Chat>,
    /// Mirrored approval id → its live chat.
    approvals: BTreeMap<String, String>,
    started: u64,
    ended: u64,
}

impl Chats {
    /// Folds a chat event (other events are not this slice's). On error the slice is
    /// unchanged. `approval.requested_in_chat` is folded here for its link to the chat
    /// (the approvals slice folds the request itself).
    pub fn apply(&mut self, env: &Envelope) -> Result<(), ChatContradiction> {
        match &env.event {
            Event::ChatStarted(e) => {
                if self.live.contains_key(&e.session_id) {
                    return Err(ChatContradiction::AlreadyRouted(e.session_id.clone()));
                }
                self.live.insert(
                    e.session_id.clone(),
                    Chat {
                        session_id: e.session_id.clone(),
                        agent_id: e.agent_id.clone(),
                        agent_client_id: e.agent_client_id.clone(),
                        caller_client_id: e.caller_client_id.clone(),
                        caller_role: e.caller_role.clone(),
                        conversation_id: e.conversation_id.clone(),
                        started_at: env.ts,
                        started_seq: env.seq,
                        cancel_requested_by: None,
                        terminal: None,
                        approvals: BTreeSet::new(),
                    },
                );
                self.started += 1;
            }
            Event::ChatCancelRequested(e) => {
                let chat = self.routed(&e.session_id)?;
                chat.cancel_requested_by.get_or_insert_with(|| e.by.clone());
            }
            Event::ChatTerminal(e) => {
                let chat = self.routed(&e.session_id)?;
                if chat.terminal.is_some() {
                    return Err(ChatContradiction::SecondTerminal(e.session_id.clone()));
                }
                chat.terminal = Some(e.kind.clone());
            }
            Event::ChatRouteDropped(e) => {
                let chat = self
                    .live
                    .remove(&e.session_id)
                    .ok_or_else(|| ChatContradiction::NotRouted(e.session_id.clone()))?;
                for approval in &chat.approvals {
                    self.approvals.remove(approval);
                }
                self.ended += 1;
            }
            Event::ApprovalRequestedInChat(e) => {
                let chat = self.routed(&e.session_id)?;
                chat.approvals.insert(e.approval.approval_id.clone());
                self.approvals
                    .insert(e.approval.approval_id.clone(), e.session_id.clone());
            }
            _ => {}
        }
        Ok(())
    }

    fn routed(&mut self, session_id: &str) -> Result<&mut Chat, ChatContradiction> {
        self.live
            .get_mut(session_id)
            .ok_or_else(|| ChatContradiction::NotRouted(session_id.to_owned()))
    }

    /// A chat whose route is live.
    pub fn get(&self, session_id: &str) -> Option<&Chat> {
        self.live.get(session_id)
    }

    /// Every live chat, by session id.
    pub fn iter(&self) -> impl Iterator<Item = &Chat> {
        self.live.values()
    }

    /// How many chats are routed now.
    pub fn active(&self) -> usize {
        self.live.len()
    }

    /// How many chats were ever started, and how many of them ended.
    pub fn totals(&self) -> (u64, u64) {
        (self.started, self.ended)
    }

    /// The live chat an approval was mirrored from.
    pub fn of_approval(&self, approval_id: &str) -> Option<&Chat> {
        self.approvals
            .get(approval_id)
            .and_then(|session_id| self.live.get(session_id))
    }
}

/// `s` cut to at most `max` bytes at a character boundary (what the log keeps of prompts,
/// errors and replies).
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("abc", 10), "abc");
    }
}
