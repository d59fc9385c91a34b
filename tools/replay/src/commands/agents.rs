//! `agents [--at SEQ] [--json]`: the registered agents (PROTOCOL.md §12) as they were right
//! after event SEQ: spec, supervision status and why, live pid, restart count, last exit,
//! token hash.
//!
//! Agents are a projection of the log like runs and memory: the same fold the daemon runs
//! at start-up ([`car_projections::agents::Agents`]), so an auditor sees what the
//! supervisor saw at that moment (and `car-replay events --kind 'agent.*'` shows each
//! spawn, exit, backoff and status change behind it).

use car_events::EventLog;
use car_events::event::AgentExit;
use car_projections::State;
use car_projections::agents::Agent;
use serde_json::{Value, json};

use super::Context;
use crate::cli::AgentsArgs;
use crate::datadir::OpenLog;
use crate::exit::{Error, Exit};
use crate::output::{Out, Table, clip, ts};
use crate::replay;

fn exit_text(exit: Option<AgentExit>) -> String {
    match exit {
        None => "-".to_owned(),
        Some(AgentExit::Code { code }) => format!("code {code}"),
        Some(AgentExit::Signal { signal }) => format!("signal {signal}"),
        Some(AgentExit::DaemonRestart) => "daemon_restart".to_owned(),
    }
}

fn agent_json(agent: &Agent) -> Value {
    json!({
        "id": agent.spec.id,
        "status": agent.status.as_str(),
        "status_reason": agent.status_reason,
        "pid": agent.pid,
        "restart_count": agent.restart_count,
        "last_exit": agent.last_exit,
        "started_at": agent.started_at.map(ts),
        "restart_at": agent.restart_at.map(ts),
        "stop_requested": agent.stop_requested,
        "token_sha256": agent.token_sha256,
        "registered_seq": agent.registered_seq,
        "spec": agent.spec,
    })
}

/// Runs the command.
pub fn run(log: &OpenLog, context: &Context, args: &AgentsArgs) -> Result<Exit, Error> {
    let head = log.log.head();
    let at = args.at.unwrap_or(head);
    if at > head {
        return Err(Error::NotFound(format!(
            "--at {at} is past the end of the log (its last seq is {head})"
        )));
    }
    let replayed = replay::replay(&log.log, context.replay_options(at, false, "agents"))?;
    replayed.warn_torn_tail();
    let state: &State = &replayed.state;
    let time = replayed.last_ts.map(ts);
    let agents: Vec<&Agent> = state.registered_agents().iter().collect();
    let mut out = Out::new();
    if args.json {
        out.json(&json!({
            "seq": state.head(),
            "ts": time,
            "agents": agents.iter().map(|a| agent_json(a)).collect::<Vec<_>>(),
        }))?;
    } else {
        let at = match time {
            Some(time) => format!("at seq {} ({time})", state.head()),
            None => "at seq 0 (before the first event)".to_owned(),
        };
        out.line(&format!("agents {at}: {}", agents.len()))?;
        if !agents.is_empty() {
            let mut table = Table::new(&[
                "AGENT",
                "STATUS",
                "PID",
                "RESTARTS",
                "LAST EXIT",
                "WHY",
                "COMMAND",
            ]);
            for agent in &agents {
                table.row(vec![
                    agent.spec.id.clone(),
                    agent.status.as_str().to_owned(),
                    agent.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                    agent.restart_count.to_string(),
                    exit_text(agent.last_exit),
                    clip(&agent.status_reason, 30),
                    clip(&agent.spec.command, 50),
                ]);
            }
            table.write(&mut out)?;
        }
    }
    out.flush()?;
    super::leak(replayed);
    Ok(Exit::Ok)
}
