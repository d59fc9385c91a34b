//! Sessions: the connections the daemon serves, each with its role and, for an `agent`
//! session, the agent identity it is bound to (at most one live session per identity).
//!
//! The whole aggregate in one place: its slice of the state (`Sessions`: the open
//! sessions and the attached agent identities; a closed session is forgotten, the log keeps
//! it), its fold (`session.opened`, `session.authenticated`, `session.closed`, and the halt
//! flag of `session.halted` / `session.halt_cleared`) and its decisions ([`OpenSession`],
//! [`Authenticate`], [`CloseSession`]). Halts are decided in [`crate::halts`]. The fold
//! runs from inside [`State::apply`], the decisions from inside [`crate::decide()`].

use std::collections::BTreeMap;

use car_events::event::{
    Event, Role, SessionAuthenticated, SessionClosed, SessionOpened, SubscriptionClosed,
    ToolCallCancelled,
};
use car_events::{Envelope, Seq};
use chrono::{DateTime, Utc};

use crate::decide::Refusal;
use crate::state::{Contradiction, State};

/// An open session (closed sessions are forgotten: the log keeps them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Its id.
    pub client_id: String,
    /// The peer address.
    pub peer: String,
    /// Its role, once known.
    pub role: Option<Role>,
    /// The agent it is bound to.
    pub agent_id: Option<String>,
    /// Whether `session.auth` succeeded (a second one is refused).
    pub authenticated: bool,
    /// Its `session.opened` event.
    pub opened_seq: Seq,
    /// When it opened.
    pub opened_at: DateTime<Utc>,
    /// Halted by a terminal tool failure (PROTOCOL.md §14.5): its proposals are rejected.
    pub halted: bool,
}

/// The sessions slice of the state.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sessions {
    /// Open sessions, by id.
    sessions: BTreeMap<String, Session>,
    /// Attached agent identities: `agent_id` → the `agent` session bound to it.
    agents: BTreeMap<String, String>,
}

impl Sessions {
    /// Folds a `session.*` event (other events are not this slice's). On error the slice
    /// is unchanged.
    pub(crate) fn apply(&mut self, env: &Envelope) -> Result<(), Contradiction> {
        match &env.event {
            Event::SessionOpened(SessionOpened {
                client_id,
                peer,
                role,
                agent_id,
            }) => {
                if self.sessions.contains_key(client_id) {
                    return Err(Contradiction::SessionAlreadyOpen(client_id.clone()));
                }
                if *role == Some(Role::Agent) {
                    if let Some(agent_id) = agent_id {
                        self.attach(agent_id, client_id)?;
                    }
                }
                self.sessions.insert(
                    client_id.clone(),
                    Session {
                        client_id: client_id.clone(),
                        peer: peer.clone(),
                        role: *role,
                        agent_id: agent_id.clone(),
                        authenticated: false,
                        opened_seq: env.seq,
                        opened_at: env.ts,
                        halted: false,
                    },
                );
            }
            Event::SessionAuthenticated(e) => {
                let Some(session) = self.sessions.get(&e.client_id) else {
                    return Err(Contradiction::UnknownSession(e.client_id.clone()));
                };
                if session.authenticated {
                    return Err(Contradiction::AlreadyAuthenticated(e.client_id.clone()));
                }
                let previous = session
                    .agent_id
                    .clone()
                    .filter(|_| session.role == Some(Role::Agent));
                if e.role == Role::Agent {
                    if let Some(agent_id) = &e.agent_id {
                        if previous.as_deref() != Some(agent_id) {
                            self.attach(agent_id, &e.client_id)?;
                        }
                    }
                }
                if let Some(previous) = previous {
                    if e.role != Role::Agent || e.agent_id.as_deref() != Some(&previous) {
                        self.agents.remove(&previous);
                    }
                }
                if let Some(session) = self.sessions.get_mut(&e.client_id) {
                    session.role = Some(e.role);
                    session.agent_id = e.agent_id.clone();
                    session.authenticated = true;
                }
            }
            Event::SessionClosed(e) => {
                let Some(session) = self.sessions.get(&e.client_id) else {
                    return Err(Contradiction::UnknownSession(e.client_id.clone()));
                };
                if (session.role, session.agent_id.as_deref()) != (e.role, e.agent_id.as_deref()) {
                    return Err(Contradiction::SessionMismatch {
                        client_id: e.client_id.clone(),
                        expected: describe_session(session.role, session.agent_id.as_deref()),
                        got: describe_session(e.role, e.agent_id.as_deref()),
                    });
                }
                let Some(session) = self.sessions.remove(&e.client_id) else {
                    return Err(Contradiction::UnknownSession(e.client_id.clone()));
                };
                if let Some(agent_id) = &session.agent_id {
                    if self.agents.get(agent_id) == Some(&e.client_id) {
                        self.agents.remove(agent_id);
                    }
                }
            }
            Event::SessionHalted(e) => self.set_halted(&e.client_id, true)?,
            Event::HaltCleared(e) => self.set_halted(&e.client_id, false)?,
            _ => {}
        }
        Ok(())
    }

    fn set_halted(&mut self, client_id: &str, halted: bool) -> Result<(), Contradiction> {
        let session = self
            .sessions
            .get_mut(client_id)
            .ok_or_else(|| Contradiction::UnknownSession(client_id.to_owned()))?;
        session.halted = halted;
        Ok(())
    }

    fn attach(&mut self, agent_id: &str, client_id: &str) -> Result<(), Contradiction> {
        if let Some(holder) = self.agents.get(agent_id) {
            if holder != client_id {
                return Err(Contradiction::AgentAttached {
                    agent_id: agent_id.to_owned(),
                    client_id: holder.clone(),
                });
            }
        }
        self.agents
            .insert(agent_id.to_owned(), client_id.to_owned());
        Ok(())
    }

    /// An open session.
    pub(crate) fn get(&self, client_id: &str) -> Option<&Session> {
        self.sessions.get(client_id)
    }

    /// Whether a session is open.
    pub(crate) fn is_open(&self, client_id: &str) -> bool {
        self.sessions.contains_key(client_id)
    }

    /// Every open session, by id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// The session an agent identity is attached to.
    pub(crate) fn agent_session(&self, agent_id: &str) -> Option<&str> {
        self.agents.get(agent_id).map(String::as_str)
    }

    /// Attached agent identities and their sessions, by agent id.
    pub(crate) fn agents(&self) -> impl Iterator<Item = (&str, &str)> {
        self.agents.iter().map(|(a, c)| (a.as_str(), c.as_str()))
    }
}

/// "role agent, agent `a1`" / "role none, no agent", for [`Contradiction::SessionMismatch`].
fn describe_session(role: Option<Role>, agent_id: Option<&str>) -> String {
    let role = role.map_or("none", Role::as_str);
    match agent_id {
        Some(agent_id) => format!("role {role}, agent `{agent_id}`"),
        None => format!("role {role}, no agent"),
    }
}

/// A connection was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSession {
    /// The new session's id.
    pub client_id: String,
    /// The peer address.
    pub peer: String,
    /// Its role when auth is disabled (known at once); `None` until `session.auth`.
    pub role: Option<Role>,
}

/// `session.auth` with a token the gateway has already checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticate {
    /// The session.
    pub client_id: String,
    /// The role the token grants.
    pub role: Role,
    /// The agent identity claimed (role `agent`).
    pub agent_id: Option<String>,
}

/// A session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseSession {
    /// The session.
    pub client_id: String,
    /// Why.
    pub reason: String,
}

/// A connection was accepted: the session opens, with its role when auth is disabled.
pub(crate) fn open_session(c: &OpenSession) -> Vec<Event> {
    vec![Event::SessionOpened(SessionOpened {
        client_id: c.client_id.clone(),
        peer: c.peer.clone(),
        role: c.role,
        agent_id: None,
    })]
}

/// `session.auth`: the session must be open and not yet authenticated; an agent
/// identity must be given and not attached to another session.
pub(crate) fn authenticate(state: &State, c: &Authenticate) -> Result<Vec<Event>, Refusal> {
    let session = state
        .session(&c.client_id)
        .ok_or_else(|| Refusal::Forbidden(format!("session `{}` is not open", c.client_id)))?;
    if session.authenticated {
        return Err(Refusal::AlreadyAuthenticated);
    }
    if c.role == Role::Agent {
        let Some(agent_id) = c.agent_id.as_deref() else {
            return Err(Refusal::InvalidParams(
                "agent_id: required for an agent session".into(),
            ));
        };
        if agent_id.trim().is_empty() {
            return Err(Refusal::InvalidParams("agent_id: must not be empty".into()));
        }
        if state
            .agent_session(agent_id)
            .is_some_and(|holder| holder != c.client_id)
        {
            return Err(Refusal::AgentAttached(agent_id.to_owned()));
        }
    }
    Ok(vec![Event::SessionAuthenticated(SessionAuthenticated {
        client_id: c.client_id.clone(),
        role: c.role,
        agent_id: c.agent_id.clone().filter(|_| c.role == Role::Agent),
    })])
}

/// Cancels the session's tool calls in flight, closes its subscriptions, then the
/// session; nothing when it is not open.
pub(crate) fn close_session(state: &State, c: &CloseSession) -> Vec<Event> {
    if state.session(&c.client_id).is_none() {
        return vec![];
    }
    let mut events = Vec::new();
    for call in state.tool_calls() {
        if call.dispatch.client_id == c.client_id {
            events.push(Event::ToolCallCancelled(ToolCallCancelled {
                request_id: call.dispatch.request_id.clone(),
                reason: "disconnected".into(),
            }));
        }
    }
    for sub in state.subscriptions() {
        if sub.client_id == c.client_id {
            events.push(Event::SubscriptionClosed(SubscriptionClosed {
                subscription_id: sub.subscription_id.clone(),
                reason: "disconnected".into(),
            }));
        }
    }
    // The relay ends a leaving session's chats itself (telling the other side); what it
    // could not record ends here, so no route outlives either of its sessions (§13.3).
    for chat in state.chats().iter() {
        let ending = if chat.agent_client_id == c.client_id {
            crate::chats::Ending::AgentDisconnect
        } else if chat.caller_client_id.as_deref() == Some(c.client_id.as_str()) {
            crate::chats::Ending::CallerDisconnect
        } else {
            continue;
        };
        events.extend(crate::chats::decide::ending_events(
            state,
            &chat.session_id,
            &ending,
            &Default::default(),
        ));
    }
    let session = state.session(&c.client_id);
    events.push(Event::SessionClosed(SessionClosed {
        client_id: c.client_id.clone(),
        role: session.and_then(|s| s.role),
        agent_id: session.and_then(|s| s.agent_id.clone()),
        reason: c.reason.clone(),
    }));
    events
}
