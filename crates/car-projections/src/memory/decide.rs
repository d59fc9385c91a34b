//! Memory's decisions (PROTOCOL.md §11.2): commands decided against the state into events,
//! or a [`MemoryRefusal`] carrying the contract's exact message; and the pure halves of
//! `memory.load` and `memory.persist` (parsing a file, rendering a snapshot, checking a
//! path lexically). The file I/O, and the symlink checks that need it, are the gateway's.

use std::path::{Component, Path, PathBuf};

use car_events::event::{
    Event, FactRemoval, MemoryFact, MemoryFactAdded, MemoryFactDeleted, MemoryScopeLoaded,
    MemoryScopePersisted,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Memory;
use super::index::{Minter, ScopeMemory};
use super::scope::Scope;

/// `--memory-max-facts`' default: live facts per scope.
pub const DEFAULT_MAX_FACTS: usize = 100_000;
/// The longest `subject`, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 1024;
/// The longest `body`, in bytes.
pub const MAX_BODY_BYTES: usize = 16_384;
/// The most tags a fact holds.
pub const MAX_TAGS: usize = 32;
/// The longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 64;
/// The longest `fact_id`, in bytes.
pub const MAX_FACT_ID_BYTES: usize = 128;
/// The longest `source`, in bytes.
pub const MAX_SOURCE_BYTES: usize = 64;
/// The longest `kind`, in bytes.
pub const MAX_KIND_BYTES: usize = 32;
/// The largest file `memory.load` reads and `memory.persist` writes: 64 MiB.
pub const MAX_SNAPSHOT_BYTES: usize = 64 << 20;
/// `kind` when none is given (`memory.add_fact`, `memory.load`).
pub const DEFAULT_KIND: &str = "pattern";
/// `source` when `memory.add_fact` gives none.
pub const DEFAULT_SOURCE: &str = "user";
/// `source` of a loaded row that gives none.
pub const LOAD_SOURCE: &str = "load";

/// Why a memory command was refused. The messages are the contract's, word for word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryRefusal {
    /// `-32602`: a field breaks §11.1's limits (`"memory.add_fact: body exceeds 16384 bytes"`).
    #[error("{method}: {field} {reason}")]
    Field {
        /// The method (`memory.add_fact`).
        method: &'static str,
        /// The field (`body`, `tags[3]`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `-32602`: a live id with other content.
    #[error("memory.add_fact: fact_id '{0}' exists with different content")]
    Conflict(String),
    /// `-32603`: the scope holds the configured maximum of live facts.
    #[error("memory scope is full ({0} facts)")]
    ScopeFull(usize),
    /// `-32602`: a `persist`/`load` path outside the memory directory.
    #[error("{method} rejected path '{path}': outside the memory directory")]
    PathRejected {
        /// `memory.persist` or `memory.load`.
        method: &'static str,
        /// The path as the client gave it.
        path: String,
    },
    /// `-32602`: a file `memory.load` cannot take; nothing changed.
    #[error("memory.load: '{path}': {reason}")]
    LoadInvalid {
        /// The path as the client gave it.
        path: String,
        /// What is wrong (`row 3: body exceeds 16384 bytes`, `invalid JSON: …`).
        reason: String,
    },
    /// `-32603`: `memory.load` of a file that does not exist.
    #[error("memory.load: no such file '{0}'")]
    LoadNoSuchFile(String),
    /// `-32603`: the snapshot `memory.persist` would write is over 64 MiB.
    #[error("memory.persist: snapshot exceeds 64 MiB")]
    SnapshotTooLarge,
}

impl MemoryRefusal {
    /// Whether this is `-32602` (invalid params); otherwise it is `-32603`.
    pub fn is_invalid_params(&self) -> bool {
        match self {
            MemoryRefusal::Field { .. }
            | MemoryRefusal::Conflict(_)
            | MemoryRefusal::PathRejected { .. }
            | MemoryRefusal::LoadInvalid { .. } => true,
            MemoryRefusal::ScopeFull(_)
            | MemoryRefusal::LoadNoSuchFile(_)
            | MemoryRefusal::SnapshotTooLarge => false,
        }
    }

    /// The JSON-RPC error code: `-32602` or `-32603`.
    pub fn code(&self) -> i64 {
        if self.is_invalid_params() {
            -32602
        } else {
            -32603
        }
    }
}

/// `(field, reason)` of the first limit a fact breaks (PROTOCOL.md §11.1).
pub fn check_fact(fact: &MemoryFact) -> Result<(), (String, String)> {
    fn bytes(field: &str, value: &str, max: usize) -> Result<(), (String, String)> {
        if value.is_empty() {
            Err((field.to_owned(), "is empty".to_owned()))
        } else if value.len() > max {
            Err((field.to_owned(), format!("exceeds {max} bytes")))
        } else {
            Ok(())
        }
    }
    bytes("fact_id", &fact.fact_id, MAX_FACT_ID_BYTES)?;
    if !fact
        .fact_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        return Err((
            "fact_id".into(),
            "has a character outside [A-Za-z0-9._:-]".into(),
        ));
    }
    bytes("subject", &fact.subject, MAX_SUBJECT_BYTES)?;
    bytes("body", &fact.body, MAX_BODY_BYTES)?;
    bytes("kind", &fact.kind, MAX_KIND_BYTES)?;
    if !fact
        .kind
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        return Err(("kind".into(), "has a character outside [a-z_]".into()));
    }
    if fact.tags.len() > MAX_TAGS {
        return Err(("tags".into(), format!("has more than {MAX_TAGS} entries")));
    }
    for (i, tag) in fact.tags.iter().enumerate() {
        bytes(&format!("tags[{i}]"), tag, MAX_TAG_BYTES)?;
    }
    bytes("source", &fact.source, MAX_SOURCE_BYTES)
}

/// `memory.add_fact` (and MCP's `memory_add_fact`), its params already typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddFact {
    /// The caller's scope.
    pub scope: Scope,
    /// The calling session (`None`: MCP).
    pub client_id: Option<String>,
    /// The id asked for; `None`: minted.
    pub fact_id: Option<String>,
    /// The subject.
    pub subject: String,
    /// The body.
    pub body: String,
    /// The kind (default `pattern`).
    pub kind: Option<String>,
    /// The tags (default none).
    pub tags: Option<Vec<String>>,
    /// The source (default `user`).
    pub source: Option<String>,
    /// Which id family a minted id comes from.
    pub minter: Minter,
    /// `--memory-max-facts`.
    pub max_facts: usize,
}

/// `memory.delete`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteFact {
    /// The caller's scope.
    pub scope: Scope,
    /// The calling session (`None`: MCP).
    pub client_id: Option<String>,
    /// The fact.
    pub fact_id: String,
}

/// `memory.consolidate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consolidate {
    /// The caller's scope.
    pub scope: Scope,
    /// The calling session.
    pub client_id: Option<String>,
}

/// `memory.load`, its file already read and parsed by [`parse_load_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadScope {
    /// The caller's scope.
    pub scope: Scope,
    /// The calling session.
    pub client_id: Option<String>,
    /// The file, relative to the memory directory.
    pub path: String,
    /// The file's facts.
    pub facts: LoadedFacts,
}

/// `memory.persist` wrote a snapshot: record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordPersist {
    /// The event [`snapshot`] returned.
    pub event: MemoryScopePersisted,
}

/// Facts that passed every rule of a load file (only [`parse_load_file`] makes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedFacts(Vec<MemoryFact>);

impl LoadedFacts {
    /// The facts, in the file's order.
    pub fn facts(&self) -> &[MemoryFact] {
        &self.0
    }
}

/// Decides `memory.add_fact`: one event, none for a safe retry (same id, subject, body and
/// kind live), or a refusal.
pub fn decide_add_fact(memory: &Memory, c: &AddFact) -> Result<Vec<Event>, MemoryRefusal> {
    let scope = memory.scope(&c.scope);
    let field = |(field, reason): (String, String)| MemoryRefusal::Field {
        method: "memory.add_fact",
        field,
        reason,
    };
    let mut fact = MemoryFact {
        // Checked below; a minted id is always valid.
        fact_id: c.fact_id.clone().unwrap_or_else(|| "ws-1".to_owned()),
        subject: c.subject.clone(),
        body: c.body.clone(),
        kind: c.kind.clone().unwrap_or_else(|| DEFAULT_KIND.to_owned()),
        tags: c.tags.clone().unwrap_or_default(),
        source: c
            .source
            .clone()
            .unwrap_or_else(|| DEFAULT_SOURCE.to_owned()),
    };
    check_fact(&fact).map_err(field)?;
    match &c.fact_id {
        Some(id) => {
            if let Some(live) = scope.and_then(|s| s.get(id)) {
                return if (&live.subject, &live.body, &live.kind)
                    == (&fact.subject, &fact.body, &fact.kind)
                {
                    Ok(vec![])
                } else {
                    Err(MemoryRefusal::Conflict(id.clone()))
                };
            }
        }
        None => {
            fact.fact_id = match scope {
                Some(scope) => scope.mint(c.minter),
                None => format!("{}-1", c.minter.prefix()),
            };
        }
    }
    if scope.map_or(0, ScopeMemory::len) >= c.max_facts {
        return Err(MemoryRefusal::ScopeFull(c.max_facts));
    }
    Ok(vec![Event::MemoryFactAdded(MemoryFactAdded {
        scope: c.scope.as_key(),
        fact,
        client_id: c.client_id.clone(),
    })])
}

/// Decides `memory.delete`: one event, or none for an id that is not live.
pub fn decide_delete(memory: &Memory, c: &DeleteFact) -> Vec<Event> {
    if memory.fact(&c.scope, &c.fact_id).is_none() {
        return vec![];
    }
    vec![Event::MemoryFactDeleted(MemoryFactDeleted {
        scope: c.scope.as_key(),
        fact_id: c.fact_id.clone(),
        reason: FactRemoval::Delete,
        client_id: c.client_id.clone(),
    })]
}

/// Decides `memory.consolidate`: one deletion per exact duplicate (same kind, subject and
/// body as an older live fact; the oldest stays), in log order.
pub fn decide_consolidate(memory: &Memory, c: &Consolidate) -> Vec<Event> {
    let Some(scope) = memory.scope(&c.scope) else {
        return vec![];
    };
    let mut seen = std::collections::HashSet::new();
    scope
        .facts()
        .filter(|f| !seen.insert((f.kind.as_str(), f.subject.as_str(), f.body.as_str())))
        .map(|f| {
            Event::MemoryFactDeleted(MemoryFactDeleted {
                scope: c.scope.as_key(),
                fact_id: f.fact_id.clone(),
                reason: FactRemoval::Consolidate,
                client_id: c.client_id.clone(),
            })
        })
        .collect()
}

/// Decides `memory.load`: one event replacing the scope.
pub fn decide_load(c: &LoadScope) -> Vec<Event> {
    vec![Event::MemoryScopeLoaded(MemoryScopeLoaded {
        scope: c.scope.as_key(),
        path: c.path.clone(),
        facts: c.facts.0.clone(),
        client_id: c.client_id.clone(),
    })]
}

/// Parses a `memory.load` file: a JSON array of facts or `{"facts": [...]}`; `subject` and
/// `body` required; `fact_id` defaults to `loaded-<position from 1>`, `kind` to `pattern`,
/// `source` to `load`, `tags` to none (`null` counts as absent; other fields, such as
/// `created_at`, are ignored: a loaded fact is created when it is loaded). Every row must
/// keep §11.1's limits, ids must be distinct, and there may be at most `max_facts` rows.
/// `path` is the path as the client gave it, for the message.
pub fn parse_load_file(
    path: &str,
    bytes: &[u8],
    max_facts: usize,
) -> Result<LoadedFacts, MemoryRefusal> {
    let invalid = |reason: String| MemoryRefusal::LoadInvalid {
        path: path.to_owned(),
        reason,
    };
    if bytes.len() > MAX_SNAPSHOT_BYTES {
        return Err(invalid("exceeds 64 MiB".into()));
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("invalid JSON: {e}")))?;
    let rows = match value {
        Value::Array(rows) => rows,
        Value::Object(mut map) => match map.remove("facts") {
            Some(Value::Array(rows)) => rows,
            _ => {
                return Err(invalid(
                    r#"expected a JSON array of facts or {"facts": [...]}"#.into(),
                ));
            }
        },
        _ => {
            return Err(invalid(
                r#"expected a JSON array of facts or {"facts": [...]}"#.into(),
            ));
        }
    };
    if rows.len() > max_facts {
        return Err(invalid(format!(
            "{} facts, more than the scope holds ({max_facts})",
            rows.len()
        )));
    }
    let mut facts = Vec::with_capacity(rows.len());
    let mut ids = std::collections::HashSet::with_capacity(rows.len());
    for (i, row) in rows.into_iter().enumerate() {
        let n = i + 1;
        let row_err = |reason: String| invalid(format!("row {n}: {reason}"));
        let Value::Object(mut row) = row else {
            return Err(row_err("expected an object".into()));
        };
        let mut text = |name: &str, default: Option<String>| -> Result<String, MemoryRefusal> {
            match row.remove(name) {
                Some(Value::String(s)) => Ok(s),
                None | Some(Value::Null) => {
                    default.ok_or_else(|| row_err(format!("{name} is required")))
                }
                Some(_) => Err(row_err(format!("{name} must be a string"))),
            }
        };
        let fact_id = text("fact_id", Some(format!("loaded-{n}")))?;
        let subject = text("subject", None)?;
        let body = text("body", None)?;
        let kind = text("kind", Some(DEFAULT_KIND.to_owned()))?;
        let source = text("source", Some(LOAD_SOURCE.to_owned()))?;
        let tags = match row.remove("tags") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(tags)) => tags
                .into_iter()
                .map(|t| match t {
                    Value::String(s) => Ok(s),
                    _ => Err(row_err("tags must be an array of strings".into())),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(row_err("tags must be an array of strings".into())),
        };
        let fact = MemoryFact {
            fact_id,
            subject,
            body,
            kind,
            tags,
            source,
        };
        check_fact(&fact).map_err(|(field, reason)| row_err(format!("{field} {reason}")))?;
        if !ids.insert(fact.fact_id.clone()) {
            return Err(row_err(format!("duplicate fact_id '{}'", fact.fact_id)));
        }
        facts.push(fact);
    }
    Ok(LoadedFacts(facts))
}

/// What `memory.persist` writes, and the event that records it once written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The file's bytes: the live facts in log order as a JSON array (pretty-printed,
    /// newline-terminated), each `{fact_id, subject, body, kind, tags, source, created_at}`.
    pub bytes: Vec<u8>,
    /// `memory.scope_persisted`, to append after the file is durably in place.
    pub event: MemoryScopePersisted,
}

/// Renders `scope`'s snapshot for `memory.persist` to the relative `path`.
pub fn snapshot(
    memory: &Memory,
    scope: &Scope,
    path: &str,
    client_id: Option<String>,
) -> Result<Snapshot, MemoryRefusal> {
    let facts: Vec<_> = memory.facts(scope).collect();
    // The text alone already passing the limit is refused before anything is rendered.
    let raw: usize = facts.iter().map(|f| f.subject.len() + f.body.len()).sum();
    if raw > MAX_SNAPSHOT_BYTES {
        return Err(MemoryRefusal::SnapshotTooLarge);
    }
    let rows: Vec<Value> = facts.iter().map(|f| f.to_json()).collect();
    // Our own values: rendering them cannot fail.
    let mut bytes = serde_json::to_vec_pretty(&rows).unwrap_or_default();
    bytes.push(b'\n');
    if bytes.len() > MAX_SNAPSHOT_BYTES {
        return Err(MemoryRefusal::SnapshotTooLarge);
    }
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok(Snapshot {
        event: MemoryScopePersisted {
            scope: scope.as_key(),
            path: path.to_owned(),
            count: facts.len() as u64,
            sha256,
            client_id,
        },
        bytes,
    })
}

/// Why a `persist`/`load` path was rejected (all give the same message to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathRejection {
    /// The path is empty.
    #[error("empty")]
    Empty,
    /// The path holds a NUL byte.
    #[error("contains NUL")]
    Nul,
    /// A `..` component.
    #[error("has a `..` component")]
    ParentComponent,
    /// An absolute path outside the memory directory.
    #[error("absolute and outside the memory directory")]
    Outside,
    /// The memory directory itself.
    #[error("names the memory directory itself")]
    TheDirectory,
}

impl PathRejection {
    /// The refusal the client gets for `method` (`memory.persist`, `memory.load`).
    pub fn refusal(self, method: &'static str, requested: &str) -> MemoryRefusal {
        MemoryRefusal::PathRejected {
            method,
            path: requested.to_owned(),
        }
    }
}

/// Resolves a `persist`/`load` path against the memory directory, lexically: relative
/// paths land inside it, absolute ones must lie inside it; empty paths, NUL, any `..`
/// component and the directory itself are rejected. Returns the path relative to
/// `memory_dir` (only normal components). `memory_dir` is absolute and without `..`.
/// Symlinks are not looked at (that needs the file system: the gateway's part).
pub fn resolve_memory_path(memory_dir: &Path, requested: &str) -> Result<PathBuf, PathRejection> {
    if requested.is_empty() {
        return Err(PathRejection::Empty);
    }
    if requested.contains('\0') {
        return Err(PathRejection::Nul);
    }
    let path = Path::new(requested);
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(PathRejection::ParentComponent);
    }
    let normal = |p: &Path| -> Vec<std::ffi::OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(part) => Some(part.to_os_string()),
                _ => None,
            })
            .collect()
    };
    let relative: Vec<_> = if path.is_absolute() {
        let dir = normal(memory_dir);
        let full = normal(path);
        if !path.has_root() || full.len() < dir.len() || full[..dir.len()] != dir[..] {
            return Err(PathRejection::Outside);
        }
        full[dir.len()..].to_vec()
    } else {
        if path.has_root() {
            return Err(PathRejection::Outside);
        }
        normal(path)
    };
    if relative.is_empty() {
        return Err(PathRejection::TheDirectory);
    }
    Ok(relative.iter().collect())
}
