//! `memory.*` (PROTOCOL.md §11.2), on the session's scope (`Session::memory_scope`).
//!
//! The rules are the core's (`car_projections::memory`): field limits, conflicts, the
//! scope's size, the load file's format and the lexical path rules are decided there, with
//! the contract's messages. This module reads the params (their types, and the limits of
//! the reads, which the core does not decide), queues the writes on the single writer in
//! the session's frame order, answers reads after the session's earlier writes, and does
//! the file side of `persist`/`load` (in [`crate::sandbox`], on `spawn_blocking`).
//!
//! `persist` and `load` do their file work before the reader reads the next frame, so a
//! client's pipelined calls keep their order around them: a snapshot holds every earlier
//! write of the session and none of the later ones, and a load replaces the scope between
//! them. `persist` writes the file first, then records `memory.scope_persisted`: the log
//! never names a snapshot that is not on disk; if the record fails the client is told the
//! file was written but not recorded.

use car_events::Event;
use car_projections::Command;
use car_projections::memory::Scope;
use car_projections::memory::decide::MAX_SNAPSHOT_BYTES;
use car_projections::memory::{
    AddFact, Consolidate, DEFAULT_K, DeleteFact, Hit, LoadScope, MAX_CONTEXT_WINDOW, MAX_K,
    MAX_QUERY_BYTES, MemoryRefusal, Minter, RecordPersist, parse_load_file, snapshot,
};
use car_projections::{Refusal, State};
use serde_json::{Map, Value, json};

use crate::app::App;
use crate::rpc::RpcError;
use crate::sandbox::{self, SandboxError, Target};
use crate::session::{Responder, Session};

/// A method's params, read field by field; every error is `-32602`
/// `"<method>: <field> <reason>"` (PROTOCOL.md §11.1).
struct Params {
    method: &'static str,
    fields: Map<String, Value>,
}

impl Params {
    /// An object of named params (absent or `null` params arrive as `{}`).
    fn new(method: &'static str, params: Value) -> Result<Self, RpcError> {
        match params {
            Value::Object(fields) => Ok(Self { method, fields }),
            _ => Err(RpcError::InvalidParams(format!(
                "{method}: params must be an object"
            ))),
        }
    }

    /// Params that must be `null` or `{}` (an empty array is the same: no params). Unknown
    /// fields are ignored, as every method here ignores them.
    fn none(method: &'static str, params: &Value) -> Result<(), RpcError> {
        match params {
            Value::Object(_) => Ok(()),
            Value::Array(items) if items.is_empty() => Ok(()),
            _ => Err(RpcError::InvalidParams(format!(
                "{method}: params must be null or {{}}"
            ))),
        }
    }

    fn error(&self, field: &str, reason: impl std::fmt::Display) -> RpcError {
        RpcError::InvalidParams(format!("{}: {field} {reason}", self.method))
    }

    /// An optional string (`null` is absent).
    fn string(&mut self, field: &str) -> Result<Option<String>, RpcError> {
        match self.fields.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.error(field, "must be a string")),
        }
    }

    /// A required string.
    fn required(&mut self, field: &str) -> Result<String, RpcError> {
        self.string(field)?
            .ok_or_else(|| self.error(field, "is required"))
    }

    /// An optional array of strings.
    fn strings(&mut self, field: &str) -> Result<Option<Vec<String>>, RpcError> {
        let method = self.method;
        let not_strings =
            || RpcError::InvalidParams(format!("{method}: {field} must be an array of strings"));
        match self.fields.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s),
                    _ => Err(not_strings()),
                })
                .collect::<Result<_, _>>()
                .map(Some),
            Some(_) => Err(not_strings()),
        }
    }

    /// An optional integer in `min..=max`.
    fn integer(&mut self, field: &str, min: u64, max: u64) -> Result<Option<u64>, RpcError> {
        match self.fields.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => match value.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(self.error(field, format!("must be an integer from {min} to {max}"))),
            },
        }
    }
}

/// `memory.add_fact` → the scope's live facts after the call.
pub(crate) async fn add_fact(session: &mut Session, params: Value, responder: Responder) {
    let queued = async {
        let mut p = Params::new("memory.add_fact", params)?;
        // `committed_by` and `verdicts` are accepted and ignored (§11.2).
        let command = Command::MemoryAddFact(AddFact {
            scope: session.memory_scope.clone(),
            client_id: Some(session.client_id.clone()),
            fact_id: p.string("fact_id")?,
            subject: p.required("subject")?,
            body: p.required("body")?,
            kind: p.string("kind")?,
            tags: p.strings("tags")?,
            source: p.string("source")?,
            minter: Minter::Ws,
            max_facts: session.app.config.memory_max_facts,
        });
        let write = session
            .queue(command, count_after_add(session.memory_scope.clone()))
            .await?;
        Ok(((), write))
    }
    .await;
    session.reply_when_durable(responder, queued, |(), outcome| async move {
        Ok(json!(outcome?.out))
    });
}

/// What `memory.add_fact` answers (also MCP's `memory_add_fact`): the scope's live facts
/// once the decided events (none, or the fact added) are applied.
pub(crate) fn count_after_add(scope: Scope) -> impl FnMut(&State, &[Event]) -> usize {
    move |state, events| state.memory().fact_count(&scope) + events.len()
}

/// `memory.query`'s params: the query text (1 to 4096 bytes) and `k` (1 to 50, default
/// 5), with the contract's messages (also MCP's `memory_query`).
pub(crate) fn query_params(params: Value) -> Result<(String, usize), RpcError> {
    let mut p = Params::new("memory.query", params)?;
    let query = p.required("query")?;
    if query.is_empty() {
        return Err(p.error("query", "is empty"));
    }
    if query.len() > MAX_QUERY_BYTES {
        return Err(p.error("query", format!("exceeds {MAX_QUERY_BYTES} bytes")));
    }
    let k = p.integer("k", 1, MAX_K as u64)?.unwrap_or(DEFAULT_K as u64) as usize;
    Ok((query, k))
}

/// `memory.query`'s answer on `scope`, once what it reads is durable.
pub(crate) async fn read_hits(
    app: &App,
    scope: &Scope,
    query: &str,
    k: usize,
) -> Result<Value, RpcError> {
    let hits = app
        .writer
        .read(|state| {
            state
                .memory()
                .query(scope, query, k)
                .iter()
                .map(Hit::to_json)
                .collect::<Vec<_>>()
        })
        .await?;
    Ok(Value::Array(hits))
}

/// `memory.query` → `[{fact_id, subject, body, kind, confidence, tags, source}]`.
pub(crate) async fn query(session: &mut Session, params: Value, responder: Responder) {
    let scope = session.memory_scope.clone();
    let prepared = query_params(params);
    session.reply_after_writes(responder, prepared, |app, (query, k)| async move {
        read_hits(&app, &scope, &query, k).await
    });
}

/// `memory.build_context` → the context string.
pub(crate) async fn build_context(session: &mut Session, params: Value, responder: Responder) {
    let prepared = (|| {
        let mut p = Params::new("memory.build_context", params)?;
        let query = p.required("query")?;
        let window = p.integer("model_context_window", 1, MAX_CONTEXT_WINDOW)?;
        Ok((session.memory_scope.clone(), query, window))
    })();
    session.reply_after_writes(
        responder,
        prepared,
        |app, (scope, query, window)| async move {
            let context = app
                .writer
                .read(|state| state.memory().build_context(&scope, &query, window))
                .await?;
            Ok(Value::String(context))
        },
    );
}

/// `memory.fact_count` → the scope's live facts.
pub(crate) async fn fact_count(session: &mut Session, params: Value, responder: Responder) {
    let prepared =
        Params::none("memory.fact_count", &params).map(|()| session.memory_scope.clone());
    session.reply_after_writes(responder, prepared, |app, scope| async move {
        let count = app
            .writer
            .read(|state| state.memory().fact_count(&scope))
            .await?;
        Ok(json!(count))
    });
}

/// `memory.delete` → `{id, deleted, kind, fact_count}`.
pub(crate) async fn delete(session: &mut Session, params: Value, responder: Responder) {
    let queued = async {
        let mut p = Params::new("memory.delete", params)?;
        let id = p.required("id")?;
        let scope = session.memory_scope.clone();
        let command = Command::MemoryDelete(DeleteFact {
            scope: scope.clone(),
            client_id: Some(session.client_id.clone()),
            fact_id: id.clone(),
        });
        let write = session
            .queue(command, delete_outcome(scope, id.clone()))
            .await?;
        Ok((id, write))
    }
    .await;
    session.reply_when_durable(responder, queued, |id, outcome| async move {
        Ok(delete_answer(&id, outcome?.out))
    });
}

/// What `memory.delete` computes beside its events (also MCP's `memory_delete`): the
/// deleted fact's kind (`None`: nothing deleted) and the scope's live facts after it.
pub(crate) fn delete_outcome(
    scope: Scope,
    fact_id: String,
) -> impl FnMut(&State, &[Event]) -> (Option<String>, usize) {
    move |state, events| {
        let memory = state.memory();
        let kind = match events {
            [] => None,
            _ => memory.fact(&scope, &fact_id).map(|f| f.kind.clone()),
        };
        (kind, memory.fact_count(&scope) - events.len())
    }
}

/// `memory.delete`'s answer.
pub(crate) fn delete_answer(id: &str, (kind, fact_count): (Option<String>, usize)) -> Value {
    json!({"id": id, "deleted": kind.is_some(), "kind": kind, "fact_count": fact_count})
}

/// `memory.consolidate` → `{facts_before, facts_after, duplicates_removed,
/// candidates_promoted: [], candidates_rejected: []}`.
pub(crate) async fn consolidate(session: &mut Session, params: Value, responder: Responder) {
    let queued = async {
        Params::none("memory.consolidate", &params)?;
        let scope = session.memory_scope.clone();
        let command = Command::MemoryConsolidate(Consolidate {
            scope: scope.clone(),
            client_id: Some(session.client_id.clone()),
        });
        let write = session
            .queue(command, move |state: &State, events| {
                (state.memory().fact_count(&scope), events.len())
            })
            .await?;
        Ok(((), write))
    }
    .await;
    session.reply_when_durable(responder, queued, |(), outcome| async move {
        let (before, removed) = outcome?.out;
        Ok(json!({
            "facts_before": before,
            "facts_after": before - removed,
            "duplicates_removed": removed,
            "candidates_promoted": [],
            "candidates_rejected": [],
        }))
    });
}

/// The client's answer to a sandbox failure of `method` on `requested`. File-system
/// details go to the daemon's log, never to the client.
fn sandbox_error(method: &'static str, requested: &str, err: SandboxError) -> RpcError {
    let refusal = |r: MemoryRefusal| RpcError::from(Refusal::Memory(r));
    match err {
        SandboxError::Rejected(rejection) => refusal(rejection.refusal(method, requested)),
        SandboxError::NoSuchFile if method == "memory.load" => {
            refusal(MemoryRefusal::LoadNoSuchFile(requested.to_owned()))
        }
        SandboxError::NotAFile if method == "memory.load" => refusal(MemoryRefusal::LoadInvalid {
            path: requested.to_owned(),
            reason: "not a regular file".into(),
        }),
        SandboxError::NotADirectory if method == "memory.load" => {
            refusal(MemoryRefusal::LoadNoSuchFile(requested.to_owned()))
        }
        SandboxError::NoSuchFile | SandboxError::NotAFile | SandboxError::NotADirectory => {
            RpcError::Internal(format!("{method}: '{requested}': {err}"))
        }
        SandboxError::Io(io) => {
            tracing::error!(%method, path = %requested, error = %io, "memory file I/O failed");
            let verb = if method == "memory.load" {
                "read"
            } else {
                "write"
            };
            RpcError::Internal(format!("{method}: could not {verb} '{requested}'"))
        }
    }
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RpcError> + Send + 'static,
) -> Result<T, RpcError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|err| {
            tracing::error!(%err, "memory file work panicked");
            Err(RpcError::Internal("internal error".into()))
        })
}

/// `memory.persist` → the facts written.
pub(crate) async fn persist(session: &mut Session, params: Value, responder: Responder) {
    match write_snapshot(session, params).await {
        Err(err) => responder.send(Err(err)).await,
        Ok((requested, count, write)) => session.reply_later(responder, async move {
            match write.wait().await {
                Ok(Ok(_)) => Ok(json!(count)),
                Ok(Err(refusal)) => Err(refusal.into()),
                Err(err) => {
                    tracing::error!(path = %requested, %err, "a persisted snapshot was not recorded");
                    Err(RpcError::Internal(format!(
                        "memory.persist: '{requested}' was written but could not be recorded: {err}"
                    )))
                }
            }
        }),
    }
}

type QueuedPersist = crate::session::QueuedWrite<()>;

/// Persist's part in frame order: the snapshot after the session's earlier writes, the
/// file written, the event queued.
async fn write_snapshot(
    session: &mut Session,
    params: Value,
) -> Result<(String, u64, QueuedPersist), RpcError> {
    let mut p = Params::new("memory.persist", params)?;
    let requested = p.required("path")?;
    let memory_dir = session.app.config.memory_dir();
    let target: Target = {
        let requested = requested.clone();
        blocking(move || {
            sandbox::resolve(&memory_dir, &requested, true)
                .map_err(|err| sandbox_error("memory.persist", &requested, err))
        })
        .await?
    };
    session.fence.reads_after_writes().await;
    let (scope, client_id) = (session.memory_scope.clone(), session.client_id.clone());
    let relative = target.relative.clone();
    let snap = session
        .app
        .writer
        .read(|state| snapshot(state.memory(), &scope, &relative, Some(client_id.clone())))
        .await?
        .map_err(|r| RpcError::from(Refusal::Memory(r)))?;
    let count = snap.event.count;
    let bytes = snap.bytes;
    {
        let requested = requested.clone();
        blocking(move || {
            sandbox::write_atomic(&target, &bytes)
                .map_err(|err| sandbox_error("memory.persist", &requested, err.into()))
        })
        .await?;
    }
    let command = Command::MemoryPersisted(RecordPersist { event: snap.event });
    let write = session.queue(command, |_, _| ()).await?;
    Ok((requested, count, write))
}

/// `memory.load` → the facts loaded. The file is read and parsed before anything is
/// queued: a missing or malformed file changes nothing.
pub(crate) async fn load(session: &mut Session, params: Value, responder: Responder) {
    let queued = async {
        let mut p = Params::new("memory.load", params)?;
        let requested = p.required("path")?;
        let memory_dir = session.app.config.memory_dir();
        let max_facts = session.app.config.memory_max_facts;
        let (relative, facts) = blocking(move || {
            let target = sandbox::resolve(&memory_dir, &requested, false)
                .map_err(|err| sandbox_error("memory.load", &requested, err))?;
            let bytes = sandbox::read_bounded(&target, MAX_SNAPSHOT_BYTES)
                .map_err(|err| sandbox_error("memory.load", &requested, err))?;
            let facts = parse_load_file(&requested, &bytes, max_facts)
                .map_err(|r| RpcError::from(Refusal::Memory(r)))?;
            Ok((target.relative, facts))
        })
        .await?;
        let count = facts.facts().len();
        let command = Command::MemoryLoad(LoadScope {
            scope: session.memory_scope.clone(),
            client_id: Some(session.client_id.clone()),
            path: relative,
            facts,
        });
        Ok((count, session.queue(command, |_, _| ()).await?))
    }
    .await;
    session.reply_when_durable(responder, queued, |count, outcome| async move {
        outcome?;
        Ok(json!(count))
    });
}

#[cfg(test)]
mod tests {
    use car_projections::memory::PathRejection;

    use super::*;

    #[test]
    fn params_errors_name_the_method_and_the_field() {
        let mut p =
            Params::new("memory.add_fact", json!({"subject": 5, "tags": ["a", 1]})).unwrap();
        assert_eq!(
            p.required("subject").unwrap_err().to_string(),
            "memory.add_fact: subject must be a string"
        );
        assert_eq!(
            p.required("body").unwrap_err().to_string(),
            "memory.add_fact: body is required"
        );
        assert_eq!(
            p.strings("tags").unwrap_err().to_string(),
            "memory.add_fact: tags must be an array of strings"
        );
        let mut p = Params::new("memory.query", json!({"k": 51})).unwrap();
        assert_eq!(
            p.integer("k", 1, 50).unwrap_err().to_string(),
            "memory.query: k must be an integer from 1 to 50"
        );
        assert!(Params::none("memory.fact_count", &json!({})).is_ok());
        assert!(Params::none("memory.fact_count", &json!([])).is_ok());
        assert_eq!(
            Params::none("memory.consolidate", &json!([1]))
                .unwrap_err()
                .to_string(),
            "memory.consolidate: params must be null or {}"
        );
        assert_eq!(
            Params::new("memory.delete", json!(["a"]))
                .err()
                .unwrap()
                .to_string(),
            "memory.delete: params must be an object"
        );
    }

    #[test]
    fn sandbox_failures_get_the_contract_messages() {
        let e = sandbox_error(
            "memory.load",
            "../x",
            SandboxError::Rejected(PathRejection::ParentComponent),
        );
        assert_eq!(
            (e.code(), e.to_string()),
            (
                -32602,
                "memory.load rejected path '../x': outside the memory directory".to_owned()
            )
        );
        let e = sandbox_error("memory.load", "a.json", SandboxError::NoSuchFile);
        assert_eq!(
            (e.code(), e.to_string()),
            (-32603, "memory.load: no such file 'a.json'".to_owned())
        );
        let e = sandbox_error(
            "memory.persist",
            "a.json",
            SandboxError::Io(std::io::Error::other("/secret/path: boom")),
        );
        assert_eq!(e.to_string(), "memory.persist: could not write 'a.json'");
    }
}
