//! The agents' decisions: `agents.upsert/remove/start/stop` (PROTOCOL.md §12.4), and the
//! supervisor's records of what happened to a process (spawned, failed to spawn, exited,
//! backoff elapsed), each decided against the state into `agent.*` events or an
//! [`AgentRefusal`].
//!
//! Everything that needs I/O comes in through the command: the spec's file-system facts
//! ([`SpecFacts`]), the hash of a freshly minted token, the pid, the exit status, the time.

use car_events::JsonText;
use car_events::event::{
    AgentBackoffScheduled, AgentExit, AgentProcessExited, AgentProcessSpawned, AgentRemoved,
    AgentStartRequested, AgentStatus, AgentStatusChanged, AgentStopRequested, AgentTokenRotated,
    AgentUpserted, Event,
};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::supervise::{AfterExit, after_exit, restart_due};
use super::{Agent, Agents, SpecFacts, spec};
use crate::access::Actor;

/// Why an agents command was refused. The messages are the contract's (§12.1, §12.4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentRefusal {
    /// `-32602`: a breach of §12.1.
    #[error("agents.upsert: {field}: {reason}")]
    Field {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `-32602`: no agent has this id.
    #[error("unknown agent '{0}'")]
    Unknown(String),
    /// `-32603`: a host-only method.
    #[error("permission denied: {0} requires the host role")]
    HostOnly(&'static str),
    /// `-32603`: a method for hosts and the agent itself.
    #[error("permission denied: {0} requires the host role or the agent itself")]
    HostOrSelf(&'static str),
    /// `-32603`: the agent's process must be stopped first.
    #[error("agent '{0}' still has a running process")]
    ProcessAlive(String),
}

impl AgentRefusal {
    /// Whether the refusal is `-32602` (else `-32603`).
    pub fn is_invalid_params(&self) -> bool {
        matches!(self, AgentRefusal::Field { .. } | AgentRefusal::Unknown(_))
    }
}

/// `agents.upsert`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpsertAgent {
    /// Who asks.
    pub actor: Actor,
    /// The params (`AgentSpec` + `rotate_token?`).
    pub params: Value,
    /// What the gateway found on disk for the spec's paths.
    pub facts: SpecFacts,
    /// Lowercase hex SHA-256 of a token the gateway minted, used if this upsert mints one
    /// (the id's first upsert, or `rotate_token: true`).
    pub fresh_token_sha256: String,
}

/// `agents.remove`.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoveAgent {
    /// Who asks.
    pub actor: Actor,
    /// The agent.
    pub agent_id: String,
}

/// `agents.start` (and the start half of `agents.restart`).
#[derive(Debug, Clone, PartialEq)]
pub struct StartAgent {
    /// Who asks.
    pub actor: Actor,
    /// The agent.
    pub agent_id: String,
}

/// `agents.stop` (and the stop half of `agents.restart`, and stops by the daemon).
#[derive(Debug, Clone, PartialEq)]
pub struct StopAgent {
    /// Who asks; `None`: the daemon itself (removal, shutdown).
    pub actor: Option<Actor>,
    /// The agent.
    pub agent_id: String,
    /// `"term"` or `"kill"`.
    pub signal: String,
}

/// Every agents command.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentCommand {
    /// `agents.upsert`.
    Upsert(UpsertAgent),
    /// `agents.remove`.
    Remove(RemoveAgent),
    /// `agents.start`.
    Start(StartAgent),
    /// `agents.stop`.
    Stop(StopAgent),
    /// Start-up, after recovery: start every `auto_start` agent.
    AutoStart,
    /// The supervisor spawned the agent's process.
    Spawned {
        /// The agent.
        agent_id: String,
        /// Its pid.
        pid: u32,
    },
    /// The supervisor could not spawn it.
    SpawnFailed {
        /// The agent.
        agent_id: String,
        /// Why (no path: it reaches the host feed).
        reason: String,
    },
    /// The supervisor reaped its process.
    Exited {
        /// The agent.
        agent_id: String,
        /// The process.
        pid: u32,
        /// How it ended.
        exit: AgentExit,
        /// When it was reaped.
        now: DateTime<Utc>,
    },
    /// The supervisor's timer fired: start the agent if its backoff has elapsed.
    BackoffElapsed {
        /// The agent.
        agent_id: String,
        /// The time now.
        now: DateTime<Utc>,
    },
}

fn status(agent_id: &str, status: AgentStatus, reason: &str) -> Event {
    Event::from(AgentStatusChanged {
        agent_id: agent_id.to_owned(),
        status,
        reason: reason.to_owned(),
    })
}

fn host_or_self(actor: &Actor, agent_id: &str, method: &'static str) -> Result<(), AgentRefusal> {
    if actor.has_host_rights() || actor.bound_agent() == Some(agent_id) {
        Ok(())
    } else {
        Err(AgentRefusal::HostOrSelf(method))
    }
}

fn known<'a>(agents: &'a Agents, agent_id: &str) -> Result<&'a Agent, AgentRefusal> {
    agents
        .get(agent_id)
        .ok_or_else(|| AgentRefusal::Unknown(agent_id.to_owned()))
}

/// Decides an agents command.
pub fn decide(agents: &Agents, command: &AgentCommand) -> Result<Vec<Event>, AgentRefusal> {
    match command {
        AgentCommand::Upsert(c) => upsert(agents, c),
        AgentCommand::Remove(c) => {
            if !c.actor.has_host_rights() {
                return Err(AgentRefusal::HostOnly("agents.remove"));
            }
            match agents.get(&c.agent_id) {
                None => Ok(vec![]),
                Some(agent) if agent.pid.is_some() => {
                    Err(AgentRefusal::ProcessAlive(c.agent_id.clone()))
                }
                Some(_) => Ok(vec![Event::from(AgentRemoved {
                    agent_id: c.agent_id.clone(),
                    by: c.actor.principal(),
                })]),
            }
        }
        AgentCommand::Start(c) => {
            host_or_self(&c.actor, &c.agent_id, "agents.start")?;
            let agent = known(agents, &c.agent_id)?;
            Ok(start(agent, &c.actor.principal()))
        }
        AgentCommand::Stop(c) => {
            if let Some(actor) = &c.actor {
                host_or_self(actor, &c.agent_id, "agents.stop")?;
            }
            let agent = known(agents, &c.agent_id)?;
            let by = c
                .actor
                .as_ref()
                .map_or_else(|| "daemon".to_owned(), Actor::principal);
            let mut events = vec![Event::from(AgentStopRequested {
                agent_id: c.agent_id.clone(),
                by,
                signal: c.signal.clone(),
            })];
            if agent.pid.is_none() && agent.status != AgentStatus::Stopped {
                events.push(status(&c.agent_id, AgentStatus::Stopped, "stop requested"));
            }
            Ok(events)
        }
        AgentCommand::AutoStart => Ok(agents
            .iter()
            .filter(|a| a.spec.auto_start)
            .flat_map(|a| start(a, "daemon"))
            .collect()),
        AgentCommand::Spawned { agent_id, pid } => {
            known(agents, agent_id)?;
            Ok(vec![
                Event::from(AgentProcessSpawned {
                    agent_id: agent_id.clone(),
                    pid: *pid,
                }),
                status(agent_id, AgentStatus::Running, "spawned"),
            ])
        }
        AgentCommand::SpawnFailed { agent_id, reason } => {
            known(agents, agent_id)?;
            Ok(vec![status(
                agent_id,
                AgentStatus::Errored,
                &format!("spawn failed: {reason}"),
            )])
        }
        AgentCommand::Exited {
            agent_id,
            pid,
            exit,
            now,
        } => Ok(match agents.get(agent_id) {
            Some(agent) if agent.pid == Some(*pid) => exited(agent, *pid, *exit, *now),
            // A process the state no longer holds: nothing to record.
            _ => vec![],
        }),
        AgentCommand::BackoffElapsed { agent_id, now } => Ok(match agents.get(agent_id) {
            Some(agent) if agent.status == AgentStatus::Backoff && restart_due(agent, *now) => {
                vec![status(agent_id, AgentStatus::Starting, "backoff elapsed")]
            }
            _ => vec![],
        }),
    }
}

/// A start: nothing if already starting or running, else a request that resets the count.
fn start(agent: &Agent, by: &str) -> Vec<Event> {
    if matches!(agent.status, AgentStatus::Starting | AgentStatus::Running) {
        return vec![];
    }
    let agent_id = &agent.spec.id;
    vec![
        Event::from(AgentStartRequested {
            agent_id: agent_id.clone(),
            by: by.to_owned(),
        }),
        status(agent_id, AgentStatus::Starting, "start requested"),
    ]
}

/// An exit of the agent's live process, and what follows it (the pure supervisor rule).
fn exited(agent: &Agent, pid: u32, exit: AgentExit, now: DateTime<Utc>) -> Vec<Event> {
    let agent_id = &agent.spec.id;
    let mut events = vec![Event::from(AgentProcessExited {
        agent_id: agent_id.clone(),
        pid,
        exit,
    })];
    match after_exit(agent, exit, now) {
        AfterExit::Stop(reason) => events.push(status(agent_id, AgentStatus::Stopped, reason)),
        AfterExit::Errored(reason) => events.push(status(agent_id, AgentStatus::Errored, reason)),
        AfterExit::Restart {
            restart_count,
            delay,
        } => {
            events.push(status(agent_id, AgentStatus::Backoff, "exited"));
            events.push(Event::from(AgentBackoffScheduled {
                agent_id: agent_id.clone(),
                restart_count,
                delay_ms: delay.num_milliseconds().max(0) as u64,
            }));
        }
    }
    events
}

fn upsert(agents: &Agents, c: &UpsertAgent) -> Result<Vec<Event>, AgentRefusal> {
    if !c.actor.has_host_rights() {
        return Err(AgentRefusal::HostOnly("agents.upsert"));
    }
    let rotate = match c.params.get("rotate_token") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(AgentRefusal::Field {
                field: "rotate_token".into(),
                reason: "must be a boolean".into(),
            });
        }
    };
    let spec = spec::validate(&c.params, &c.facts)?;
    let existing = agents.get(&spec.id);
    let stored = JsonText::encode(&spec).map_err(|e| AgentRefusal::Field {
        field: "params".into(),
        reason: e.to_string(),
    })?;
    let mut events = vec![Event::from(AgentUpserted {
        agent_id: spec.id.clone(),
        spec: stored,
        token_sha256: existing.is_none().then(|| c.fresh_token_sha256.clone()),
        by: c.actor.principal(),
    })];
    if rotate && existing.is_some() {
        events.push(Event::from(AgentTokenRotated {
            agent_id: spec.id.clone(),
            token_sha256: c.fresh_token_sha256.clone(),
        }));
    }
    Ok(events)
}

/// Start-up recovery: agents the log shows with a process, or about to get one, are
/// recorded exited (`daemon_restart`) and `stopped`: the daemon that supervised them is
/// gone, and `PR_SET_PDEATHSIG` took their processes with it.
pub fn adopt_at_startup(agents: &Agents) -> Vec<Event> {
    let mut events = Vec::new();
    for agent in agents.iter() {
        let agent_id = &agent.spec.id;
        if let Some(pid) = agent.pid {
            events.push(Event::from(AgentProcessExited {
                agent_id: agent_id.clone(),
                pid,
                exit: AgentExit::DaemonRestart,
            }));
        }
        if matches!(
            agent.status,
            AgentStatus::Starting | AgentStatus::Running | AgentStatus::Backoff
        ) {
            events.push(status(agent_id, AgentStatus::Stopped, "daemon_restart"));
        }
    }
    events
}
