//! Who is asking: the identity decisions and reads are checked against.

use car_events::event::Role;

/// The session behind a command or a read (PROTOCOL.md §2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The session's id.
    pub client_id: String,
    /// Its role.
    pub role: Role,
    /// The agent identity it is bound to (role `agent`).
    pub agent_id: Option<String>,
    /// Auth is disabled: the session may do everything a `host` and a `client` may.
    pub unrestricted: bool,
}

impl Actor {
    /// A session with auth enabled.
    pub fn new(client_id: impl Into<String>, role: Role, agent_id: Option<String>) -> Self {
        Self {
            client_id: client_id.into(),
            role,
            agent_id,
            unrestricted: false,
        }
    }

    /// A `client` session with auth enabled.
    pub fn client(client_id: impl Into<String>) -> Self {
        Self::new(client_id, Role::Client, None)
    }

    /// An `agent` session bound to `agent_id`, with auth enabled.
    pub fn agent(client_id: impl Into<String>, agent_id: impl Into<String>) -> Self {
        Self::new(client_id, Role::Agent, Some(agent_id.into()))
    }

    /// A `host` session with auth enabled.
    pub fn host(client_id: impl Into<String>) -> Self {
        Self::new(client_id, Role::Host, None)
    }

    /// The same session with auth disabled.
    pub fn unrestricted(mut self) -> Self {
        self.unrestricted = true;
        self
    }

    /// Whether it may do what a `host` may (read every run, resolve approvals, `log.*`).
    pub fn has_host_rights(&self) -> bool {
        self.unrestricted || self.role == Role::Host
    }

    /// Who may read this session's proposal results besides hosts (PROTOCOL.md §14.5).
    pub fn principal(&self) -> String {
        principal(Some(self.role), self.bound_agent())
    }

    /// The agent identity it is bound to, if it is an `agent` session.
    pub fn bound_agent(&self) -> Option<&str> {
        if self.role == Role::Agent {
            self.agent_id.as_deref()
        } else {
            None
        }
    }
}

/// The principal of a session with `role` (and `agent_id` when it is an agent session), as
/// `proposal.result` tells them apart (§14.5): `agent:<agent_id>`; `client` for every
/// client session (their one credential is the daemon token, so nothing tells them apart
/// after a reconnect); `host`.
pub fn principal(role: Option<Role>, agent_id: Option<&str>) -> String {
    match (role, agent_id) {
        (Some(Role::Agent), Some(agent_id)) => format!("agent:{agent_id}"),
        (Some(Role::Host), _) => "host".to_owned(),
        _ => "client".to_owned(),
    }
}
