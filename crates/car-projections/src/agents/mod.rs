//! Registered agents (PROTOCOL.md §12): specs, tokens' hashes, and the supervision status
//! of each agent's process, as a slice of [`State`](crate::State).
//!
//! The whole aggregate in one place: the slice ([`Agents`]: one [`Agent`] per registered
//! id), its fold ([`Agents::apply`], the `agent.*` events), its decisions
//! ([`decide`](mod@decide): upsert, remove, start, stop, and the supervisor's records of
//! spawns and exits), the spec and its validations ([`spec`]) and the supervisor's pure
//! "restart? when?" ([`supervise`]). Whether an agent is *attached* (a session bound to its
//! id) is not recorded here: the session events already say it, and
//! [`State::agent_session`](crate::State::agent_session) reads it.
//!
//! Status only changes through `agent.status_changed`; the other events carry their own
//! facts (a pid, an exit, a backoff), so the status a host is shown is exactly the one the
//! log says, and the fold checks that the facts follow each other (one process at a time,
//! an exit of the process that was spawned).

pub mod decide;
pub mod spec;
pub mod supervise;

use std::collections::BTreeMap;

use car_events::event::{AgentExit, AgentStatus, Event};
use car_events::{Envelope, Seq};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

pub use decide::{AgentCommand, AgentRefusal};
pub use spec::{AgentSpec, RestartPolicy, SpecFacts};

/// A registered agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    /// Its spec (the last upserted).
    pub spec: AgentSpec,
    /// Lowercase hex SHA-256 of its current token.
    pub token_sha256: String,
    /// Its supervision status.
    pub status: AgentStatus,
    /// Why it last changed status.
    pub status_reason: String,
    /// Its live process, if any.
    pub pid: Option<u32>,
    /// How its last process ended.
    pub last_exit: Option<AgentExit>,
    /// Restarts since it was last started by request (or since 60 s of uptime).
    pub restart_count: u32,
    /// When its current (or last) process was spawned.
    pub started_at: Option<DateTime<Utc>>,
    /// A stop was requested and no start since: never restarted.
    pub stop_requested: bool,
    /// When the scheduled restart is due (status `backoff`).
    pub restart_at: Option<DateTime<Utc>>,
    /// Its `agent.upserted` that registered it.
    pub registered_seq: Seq,
}

/// An `agent.*` event that cannot follow the ones before it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentContradiction {
    /// An event about an id that is not registered.
    #[error("agent `{0}` is not registered")]
    Unknown(String),
    /// A first upsert without a token hash.
    #[error("agent `{0}` is registered without a token")]
    NoToken(String),
    /// A spawn while a process is alive, or a removal with one.
    #[error("agent `{agent_id}` already has process {pid}")]
    ProcessAlive {
        /// The agent.
        agent_id: String,
        /// Its live process.
        pid: u32,
    },
    /// An exit of a process that is not the agent's live one.
    #[error("agent `{agent_id}` has no process {pid}")]
    NoSuchProcess {
        /// The agent.
        agent_id: String,
        /// The pid the event names.
        pid: u32,
    },
    /// A spec that does not parse.
    #[error("agent `{0}`: stored spec does not parse: {1}")]
    BadSpec(String, String),
}

/// The agents slice of the state.
#[derive(Debug, Clone, Default)]
pub struct Agents {
    agents: BTreeMap<String, Agent>,
}

impl Agents {
    /// Folds an `agent.*` event (other events are not this slice's). On error the slice is
    /// unchanged.
    pub fn apply(&mut self, env: &Envelope) -> Result<(), AgentContradiction> {
        let Some(id) = env.event.registered_agent() else {
            return Ok(());
        };
        if let Event::AgentUpserted(e) = &env.event {
            let spec: AgentSpec = serde_json::from_str(e.spec.as_str())
                .map_err(|err| AgentContradiction::BadSpec(id.to_owned(), err.to_string()))?;
            match self.agents.get_mut(id) {
                Some(agent) => {
                    agent.spec = spec;
                    if let Some(hash) = &e.token_sha256 {
                        agent.token_sha256 = hash.clone();
                    }
                }
                None => {
                    let Some(hash) = &e.token_sha256 else {
                        return Err(AgentContradiction::NoToken(id.to_owned()));
                    };
                    self.agents.insert(
                        id.to_owned(),
                        Agent {
                            spec,
                            token_sha256: hash.clone(),
                            status: AgentStatus::Stopped,
                            status_reason: "registered".to_owned(),
                            pid: None,
                            last_exit: None,
                            restart_count: 0,
                            started_at: None,
                            stop_requested: false,
                            restart_at: None,
                            registered_seq: env.seq,
                        },
                    );
                }
            }
            return Ok(());
        }
        let Some(agent) = self.agents.get_mut(id) else {
            return Err(AgentContradiction::Unknown(id.to_owned()));
        };
        match &env.event {
            Event::AgentTokenRotated(e) => agent.token_sha256 = e.token_sha256.clone(),
            Event::AgentRemoved(_) => {
                if let Some(pid) = agent.pid {
                    return Err(AgentContradiction::ProcessAlive {
                        agent_id: id.to_owned(),
                        pid,
                    });
                }
                self.agents.remove(id);
            }
            Event::AgentStartRequested(_) => {
                agent.stop_requested = false;
                agent.restart_count = 0;
            }
            Event::AgentStopRequested(_) => {
                agent.stop_requested = true;
                agent.restart_at = None;
            }
            Event::AgentProcessSpawned(e) => {
                if let Some(pid) = agent.pid {
                    return Err(AgentContradiction::ProcessAlive {
                        agent_id: id.to_owned(),
                        pid,
                    });
                }
                agent.pid = Some(e.pid);
                agent.started_at = Some(env.ts);
            }
            Event::AgentProcessExited(e) => {
                if agent.pid != Some(e.pid) {
                    return Err(AgentContradiction::NoSuchProcess {
                        agent_id: id.to_owned(),
                        pid: e.pid,
                    });
                }
                agent.pid = None;
                agent.last_exit = Some(e.exit);
            }
            Event::AgentBackoffScheduled(e) => {
                agent.restart_count = e.restart_count;
                agent.restart_at = Some(env.ts + TimeDelta::milliseconds(e.delay_ms as i64));
            }
            Event::AgentStatusChanged(e) => {
                agent.status = e.status;
                agent.status_reason = e.reason.clone();
                if e.status != AgentStatus::Backoff {
                    agent.restart_at = None;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A registered agent.
    pub fn get(&self, id: &str) -> Option<&Agent> {
        self.agents.get(id)
    }

    /// Every registered agent, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Agent> {
        self.agents.values()
    }

    /// How many agents are registered.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether none is registered.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }
}

/// The exit code `ManagedAgent.last_exit_code` shows: the code, or `128 + signal` as a shell
/// reports a signalled process; none for a process lost with the daemon.
pub fn exit_code(exit: AgentExit) -> Option<i32> {
    match exit {
        AgentExit::Code { code } => Some(code),
        AgentExit::Signal { signal } => Some(128 + signal),
        AgentExit::DaemonRestart => None,
    }
}

/// `ManagedAgent` (§12.1) of `agent`, with the session bound to its id (if any) and its log
/// file's path. `with_env: false` leaves out `spec.env` (the host feed's payload, §12.4).
pub fn managed_agent(
    agent: &Agent,
    session_id: Option<&str>,
    log_path: &str,
    with_env: bool,
) -> Value {
    let mut spec = serde_json::to_value(&agent.spec).unwrap_or(Value::Null);
    if !with_env {
        if let Some(obj) = spec.as_object_mut() {
            obj.remove("env");
        }
    }
    json!({
        "spec": spec,
        "status": agent.status.as_str(),
        "pid": agent.pid,
        "last_exit_code": agent.last_exit.and_then(exit_code),
        "restart_count": agent.restart_count,
        "started_at": agent.started_at.filter(|_| agent.pid.is_some()).map(car_events::format_ts),
        "attached": session_id.is_some(),
        "session_id": session_id,
        "log_path": log_path,
    })
}
