//! `agents.*` (PROTOCOL.md §12.4): registering agents, listing them, their health, their
//! logs, starting and stopping their processes (through [`crate::supervisor`]), and
//! removing them.
//!
//! The handlers do the I/O the decisions must not: they look at the spec's paths on disk
//! ([`spec_facts`]), mint tokens and write their files, read log files. Whether a call is
//! allowed and what it records is decided by `car_projections::agents`.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use car_events::event::Event;
use car_projections::agents::decide::{RemoveAgent, StartAgent, StopAgent, UpsertAgent};
use car_projections::agents::spec::{self, SpecFacts};
use car_projections::agents::{AgentCommand, AgentRefusal, managed_agent};
use car_projections::{Actor, Command, State};
use serde_json::{Value, json};

use crate::app::App;
use crate::rpc::RpcError;
use crate::session::{Responder, Session};
use crate::supervisor;
use crate::tokens::{self, Secret};

/// The folder of agents' log files, under the data directory (§12.3).
pub(crate) const LOG_DIR: &str = "logs";
/// `tail_log` reads at most the last 8 MiB of a log (§12.4): a bounded read whatever the
/// file's size.
const TAIL_WINDOW: u64 = 8 << 20;
/// `tail_log`'s default and maximum `n` (§12.4).
const TAIL_DEFAULT: usize = 100;
const TAIL_MAX: u64 = 10_000;

/// An agent's log file: `DATA_DIR/logs/<id>.log`.
pub(crate) fn log_path(data_dir: &Path, agent_id: &str) -> PathBuf {
    data_dir.join(LOG_DIR).join(format!("{agent_id}.log"))
}

fn managed(app: &App, state: &State, agent_id: &str, with_env: bool) -> Option<Value> {
    let agent = state.registered_agent(agent_id)?;
    let log = log_path(&app.config.data_dir, agent_id);
    Some(managed_agent(
        agent,
        state.agent_session(agent_id),
        &log.to_string_lossy(),
        with_env,
    ))
}

/// Why `command` cannot be spawned, if it cannot: it must be an executable regular file
/// (§12.1; its shape is checked by the pure half).
pub(crate) fn check_command_file(command: &str) -> Result<(), String> {
    spec::check_command_shape(command)?;
    let meta = fs::metadata(command).map_err(|_| "does not exist".to_owned())?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("is not executable".into());
    }
    Ok(())
}

/// Looks a bare program name up on the daemon's `PATH`.
fn resolve_on_path(name: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .to_str()
                .is_some_and(|c| check_command_file(c).is_ok())
        })
        .and_then(|p| p.to_str().map(str::to_owned))
}

/// The file-system facts of a spec's paths (the I/O half of §12.1).
pub(crate) fn spec_facts(params: &Value) -> SpecFacts {
    let (command, cwd, interpreter) = spec::paths_to_check(params);
    SpecFacts {
        command: command.map_or(Ok(()), check_command_file),
        cwd: cwd.map_or(Ok(()), |cwd| match fs::metadata(cwd) {
            Ok(meta) if meta.is_dir() => Ok(()),
            _ => Err("is not an existing folder".to_owned()),
        }),
        interpreter: Ok(interpreter.and_then(resolve_on_path)),
    }
}

fn agent_id_param(params: &Value) -> Result<String, RpcError> {
    match params.get("id") {
        Some(Value::String(id)) => Ok(id.clone()),
        None | Some(Value::Null) => Err(RpcError::params("id", "is required")),
        Some(_) => Err(RpcError::params("id", "must be a string")),
    }
}

async fn execute(app: &Arc<App>, command: AgentCommand) -> Result<Vec<Event>, RpcError> {
    let committed = app
        .execute(Command::Agent(command), |_, events| events.to_vec())
        .await??;
    Ok(committed.out)
}

/// `agents.upsert`.
pub(crate) async fn upsert(session: &mut Session, params: Value, responder: Responder) {
    let result = async {
        let actor = session.actor()?.clone();
        let app = session.app.clone();
        let facts = spec_facts(&params);
        let token = Secret::generate();
        let events = execute(
            &app,
            AgentCommand::Upsert(UpsertAgent {
                actor,
                params,
                facts,
                fresh_token_sha256: token.sha256_hex(),
            }),
        )
        .await?;
        let Some(Event::AgentUpserted(upserted)) = events.first() else {
            return Err(RpcError::Internal("agents.upsert recorded nothing".into()));
        };
        let agent_id = upserted.agent_id.clone();
        let minted = events.iter().any(|e| match e {
            Event::AgentUpserted(e) => e.token_sha256.is_some(),
            Event::AgentTokenRotated(_) => true,
            _ => false,
        });
        if minted {
            tokens::write_agent_token(&app.config.data_dir, &agent_id, &token).map_err(|err| {
                tracing::error!(%agent_id, %err, "could not write the agent token file");
                RpcError::Internal("could not write the agent token file".into())
            })?;
        }
        let mut out = managed(&app, &app.writer.state(), &agent_id, true)
            .ok_or_else(|| RpcError::Internal(format!("unknown agent '{agent_id}'")))?;
        if minted {
            out["token"] = json!(token.expose());
        }
        Ok(out)
    }
    .await;
    responder.send(result).await;
}

/// `agents.list`: every registered agent, by id.
pub(crate) async fn list(session: &mut Session, _params: Value, responder: Responder) {
    let result = session.actor().map(|_| {
        let app = &session.app;
        let state = app.writer.state();
        let ids: Vec<String> = state
            .registered_agents()
            .iter()
            .map(|a| a.spec.id.clone())
            .collect();
        Value::Array(
            ids.iter()
                .filter_map(|id| managed(app, &state, id, true))
                .collect(),
        )
    });
    responder.send(result).await;
}

/// `agents.remove`: `{removed}`; the token file goes with it. A live process is stopped
/// first (§12.4), by a host's stop (`kill`: the agent is going away).
pub(crate) async fn remove(session: &mut Session, params: Value, responder: Responder) {
    let result = async {
        let actor = session.actor()?.clone();
        let agent_id = agent_id_param(&params)?;
        let app = session.app.clone();
        let remove = AgentCommand::Remove(RemoveAgent {
            actor: actor.clone(),
            agent_id: agent_id.clone(),
        });
        let running = app
            .writer
            .state()
            .registered_agent(&agent_id)
            .is_some_and(|a| a.pid.is_some());
        // Only a host gets this far (the removal's role check decides the same below).
        if running && actor.has_host_rights() {
            stop_and_wait(&app, Some(actor), &agent_id, true).await?;
        }
        let removed = !execute(&app, remove).await?.is_empty();
        if removed {
            if let Err(err) = tokens::remove_agent_token(&app.config.data_dir, &agent_id) {
                tracing::warn!(%agent_id, %err, "could not delete the agent token file");
            }
        }
        Ok(json!({"removed": removed}))
    }
    .await;
    responder.send(result).await;
}

/// Records a stop and carries it out; returns once the process is reaped.
async fn stop_and_wait(
    app: &Arc<App>,
    actor: Option<Actor>,
    agent_id: &str,
    kill: bool,
) -> Result<(), RpcError> {
    execute(
        app,
        AgentCommand::Stop(StopAgent {
            actor,
            agent_id: agent_id.to_owned(),
            signal: if kill { "kill" } else { "term" }.to_owned(),
        }),
    )
    .await?;
    // Returns once the process is reaped and its exit recorded.
    supervisor::terminate(app, agent_id, kill).await;
    Ok(())
}

fn agent_or_unknown(app: &App, agent_id: &str) -> Result<Value, RpcError> {
    managed(app, &app.writer.state(), agent_id, true).ok_or_else(|| {
        car_projections::Refusal::Agent(AgentRefusal::Unknown(agent_id.to_owned())).into()
    })
}

async fn start_agent(app: &Arc<App>, actor: Actor, agent_id: &str) -> Result<Value, RpcError> {
    let events = execute(
        app,
        AgentCommand::Start(StartAgent {
            actor,
            agent_id: agent_id.to_owned(),
        }),
    )
    .await?;
    if !events.is_empty() {
        supervisor::spawn(app, agent_id).await;
    }
    agent_or_unknown(app, agent_id)
}

/// `agents.start`: spawns the process (no-op if starting or running).
pub(crate) async fn start(session: &mut Session, params: Value, responder: Responder) {
    let result = async {
        let actor = session.actor()?.clone();
        let agent_id = agent_id_param(&params)?;
        start_agent(&session.app, actor, &agent_id).await
    }
    .await;
    responder.send(result).await;
}

/// `agents.stop {id, signal?}`.
pub(crate) async fn stop(session: &mut Session, params: Value, responder: Responder) {
    let result = async {
        let actor = session.actor()?.clone();
        let agent_id = agent_id_param(&params)?;
        let kill = match params.get("signal") {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) if s == "term" => false,
            Some(Value::String(s)) if s == "kill" => true,
            Some(_) => return Err(RpcError::params("signal", "must be \"term\" or \"kill\"")),
        };
        let app = session.app.clone();
        stop_and_wait(&app, Some(actor), &agent_id, kill).await?;
        agent_or_unknown(&app, &agent_id)
    }
    .await;
    responder.send(result).await;
}

/// `agents.restart`: stop (`term`), then start.
pub(crate) async fn restart(session: &mut Session, params: Value, responder: Responder) {
    let result = async {
        let actor = session.actor()?.clone();
        let agent_id = agent_id_param(&params)?;
        let app = session.app.clone();
        stop_and_wait(&app, Some(actor.clone()), &agent_id, false).await?;
        start_agent(&app, actor, &agent_id).await
    }
    .await;
    responder.send(result).await;
}

/// `agents.health`: whether each agent's `command` still passes §12.1.
pub(crate) async fn health(session: &mut Session, _params: Value, responder: Responder) {
    let result = session.actor().map(|_| {
        let commands: Vec<(String, String)> = session
            .app
            .writer
            .state()
            .registered_agents()
            .iter()
            .map(|a| (a.spec.id.clone(), a.spec.command.clone()))
            .collect();
        let checks = commands.into_iter().map(|(id, command)| {
            let mut out = json!({"id": id, "command": command});
            match check_command_file(&command) {
                Ok(()) => out["ok"] = json!(true),
                Err(reason) => {
                    out["ok"] = json!(false);
                    out["reason"] = json!(format!("command: {reason}"));
                }
            }
            out
        });
        Value::Array(checks.collect())
    });
    responder.send(result).await;
}

/// Refuses `actor` unless it is a host or the agent itself.
fn host_or_self(actor: &Actor, agent_id: &str, method: &'static str) -> Result<(), RpcError> {
    if actor.has_host_rights() || actor.bound_agent() == Some(agent_id) {
        Ok(())
    } else {
        Err(car_projections::Refusal::Agent(AgentRefusal::HostOrSelf(method)).into())
    }
}

/// `agents.tail_log`.
pub(crate) async fn tail_log(session: &mut Session, params: Value, responder: Responder) {
    let result = (|| {
        let actor = session.actor()?.clone();
        let agent_id = agent_id_param(&params)?;
        host_or_self(&actor, &agent_id, "agents.tail_log")?;
        let app = &session.app;
        if app.writer.state().registered_agent(&agent_id).is_none() {
            return Err(car_projections::Refusal::Agent(AgentRefusal::Unknown(agent_id)).into());
        }
        let count = |key: &str| -> Result<Option<u64>, RpcError> {
            match params.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| RpcError::params(key, "must be a non-negative integer")),
            }
        };
        let n = match count("n")?.or(count("lines")?) {
            Some(n) if n > TAIL_MAX => return Err(RpcError::params("n", "must be 0-10000")),
            Some(n) => n as usize,
            None => TAIL_DEFAULT,
        };
        let offset = count("offset")?.unwrap_or(0) as usize;
        let stream = match params.get("stream") {
            None | Some(Value::Null) => "combined",
            Some(Value::String(s)) if matches!(s.as_str(), "combined" | "stdout" | "stderr") => {
                s.as_str()
            }
            Some(_) => {
                return Err(RpcError::params(
                    "stream",
                    "must be \"combined\", \"stdout\" or \"stderr\"",
                ));
            }
        };
        let path = log_path(&app.config.data_dir, &agent_id);
        let entries = read_tail(&path).map_err(|err| {
            tracing::warn!(%agent_id, %err, "could not read the agent log");
            RpcError::Internal("could not read the agent log".into())
        })?;
        Ok(tail_result(&entries, stream, n, offset, &path))
    })();
    responder.send(result).await;
}

/// The `(is_stderr, line)` entries of the last [`TAIL_WINDOW`] bytes of a log, oldest
/// first, prefixes dropped (a missing log has none).
fn read_tail(path: &Path) -> std::io::Result<Vec<(bool, String)>> {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(err) => return Err(err),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL_WINDOW);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    if start > 0 {
        // The window may begin mid-line.
        lines.next();
    }
    Ok(lines.filter_map(parse_log_line).collect())
}

/// `<time> out|err <line>` → `(is_stderr, line)`.
pub(crate) fn parse_log_line(line: &str) -> Option<(bool, String)> {
    let (_time, rest) = line.split_once(' ')?;
    let (stream, text) = rest.split_once(' ').unwrap_or((rest, ""));
    match stream {
        "out" => Some((false, text.to_owned())),
        "err" => Some((true, text.to_owned())),
        _ => None,
    }
}

fn tail_result(
    entries: &[(bool, String)],
    stream: &str,
    n: usize,
    offset: usize,
    path: &Path,
) -> Value {
    let selected: Vec<&(bool, String)> = entries
        .iter()
        .filter(|(err, _)| match stream {
            "stdout" => !err,
            "stderr" => *err,
            _ => true,
        })
        .collect();
    // `offset` lines skipped from the end, then the last `n` (all with `n: 0`).
    let end = selected.len().saturating_sub(offset);
    let begin = if n == 0 { 0 } else { end.saturating_sub(n) };
    let window = &selected[begin..end];
    let lines: Vec<&str> = window.iter().map(|(_, l)| l.as_str()).collect();
    let of = |want_err: bool| -> Vec<&str> {
        window
            .iter()
            .filter(|(err, _)| *err == want_err)
            .map(|(_, l)| l.as_str())
            .collect()
    };
    let path = path.to_string_lossy();
    json!({
        "lines": lines,
        "stdout": of(false),
        "stderr": of(true),
        "stdout_total": entries.iter().filter(|(e, _)| !e).count(),
        "stderr_total": entries.iter().filter(|(e, _)| *e).count(),
        "stdout_path": path,
        "stderr_path": path,
        "more": begin > 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<(bool, String)> {
        [
            "2026-12-02T10:00:00.000Z out one",
            "2026-12-02T10:00:00.001Z err two",
            "2026-12-02T10:00:00.002Z out three",
            "2026-12-02T10:00:00.003Z out ",
            "garbage",
        ]
        .iter()
        .filter_map(|l| parse_log_line(l))
        .collect()
    }

    #[test]
    fn tail_selects_by_stream_count_and_offset() {
        let path = Path::new("/d/logs/a.log");
        let all = tail_result(&entries(), "combined", 0, 0, path);
        assert_eq!(all["lines"], json!(["one", "two", "three", ""]));
        assert_eq!(all["stdout"], json!(["one", "three", ""]));
        assert_eq!(all["stderr"], json!(["two"]));
        assert_eq!(
            (all["stdout_total"].clone(), all["stderr_total"].clone()),
            (json!(3), json!(1))
        );
        assert_eq!(all["more"], json!(false));
        let last2 = tail_result(&entries(), "combined", 2, 0, path);
        assert_eq!(last2["lines"], json!(["three", ""]));
        assert_eq!(last2["more"], json!(true));
        let offset = tail_result(&entries(), "stdout", 1, 1, path);
        assert_eq!(offset["lines"], json!(["three"]));
        let err = tail_result(&entries(), "stderr", 100, 0, path);
        assert_eq!(err["lines"], json!(["two"]));
        assert_eq!(err["stdout_path"], err["stderr_path"]);
    }
}
