//! `AgentSpec` (PROTOCOL.md §12.1): its shape and its validations.
//!
//! Validation is split along the pure/I/O line. What can be judged from the parameters
//! alone (ids, lengths, ranges, env names, path *shapes*) is judged here; what needs the
//! file system (is `command` an executable regular file, does `cwd` exist, where is
//! `interpreter` on `PATH`) is looked up by the gateway and passed in as [`SpecFacts`], so
//! [`validate`] stays a pure function that tests can drive with any facts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::decide::AgentRefusal;

/// Longest `id` and `name` (bytes), as §12.1 says.
pub const MAX_ID_LEN: usize = 128;
/// Most `env` entries (§12.1).
pub const MAX_ENV: usize = 64;
/// Most restarts a spec may allow (§12.1).
pub const MAX_RESTARTS: u64 = 100;
/// `backoff_secs` bounds (§12.1): above 0.1 s a crash loop cannot spin the CPU; 60 s is
/// the longest wait the backoff ever reaches anyway.
pub const BACKOFF_MIN_SECS: f64 = 0.1;
/// See [`BACKOFF_MIN_SECS`].
pub const BACKOFF_MAX_SECS: f64 = 60.0;
/// Directories any user can write to: an executable there could be swapped under the
/// daemon between the check and the spawn, so `command` may not live in them.
pub const WORLD_WRITABLE_DIRS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm"];
/// Environment names the daemon sets itself (§12.3), or must never hand out.
pub const RESERVED_ENV: &[&str] = &[
    "CAR_AGENT_ID",
    "CAR_AGENT_TOKEN",
    "CAR_SERVER_URL",
    "CAR_DAEMON_URL",
    "CAR_AUTH_TOKEN",
];

/// When an agent's process is restarted after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Never: an exit is `stopped`.
    Never,
    /// After a non-zero exit or a signal; code 0 is `stopped`.
    #[default]
    OnFailure,
    /// After any exit.
    Always,
}

/// A validated `AgentSpec`, as stored in `agent.upserted` and served in `ManagedAgent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSpec {
    /// `[A-Za-z0-9._-]{1,128}`, not `.`/`..`: it names files (`<id>.token`, `<id>.log`).
    pub id: String,
    /// 1–128 bytes.
    pub name: String,
    /// Absolute path of the executable (the resolved interpreter when one was given).
    pub command: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Working directory; `None`: the data directory.
    pub cwd: Option<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Restarts allowed before `errored`.
    pub max_restarts: u32,
    /// The first backoff, doubled per restart.
    pub backoff_secs: f64,
    /// Started when the daemon starts.
    pub auto_start: bool,
    /// The interpreter's bare name as given (`command` holds its resolved path).
    pub interpreter: Option<String>,
    /// Free text (ext).
    pub description: Option<String>,
}

/// What the gateway found on disk for a spec's paths (the I/O half of §12.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecFacts {
    /// `command`: `Err(reason)` when it is not an executable regular file.
    pub command: Result<(), String>,
    /// `cwd`: `Err(reason)` when it is not an existing folder (`Ok` when absent).
    pub cwd: Result<(), String>,
    /// `interpreter`: its resolved absolute path, or why it could not be resolved
    /// (`Ok(None)` when the spec has none).
    pub interpreter: Result<Option<String>, String>,
}

impl Default for SpecFacts {
    /// Every path fine (no interpreter): for specs whose paths were checked before.
    fn default() -> Self {
        Self {
            command: Ok(()),
            cwd: Ok(()),
            interpreter: Ok(None),
        }
    }
}

/// The fields of a spec the gateway must look up before [`validate`]: `(command, cwd,
/// interpreter)` as given, when they have the right JSON type.
pub fn paths_to_check(params: &Value) -> (Option<&str>, Option<&str>, Option<&str>) {
    let text = |key| params.get(key).and_then(Value::as_str);
    (text("command"), text("cwd"), text("interpreter"))
}

fn field(field: &str, reason: impl Into<String>) -> AgentRefusal {
    AgentRefusal::Field {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Whether `id` is a valid agent id (§12.1).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The pure part of the `command` check: absolute, normal, outside the world-writable
/// directories.
pub fn check_command_shape(command: &str) -> Result<(), String> {
    if !command.starts_with('/') {
        return Err("must be an absolute path".into());
    }
    if command.split('/').any(|part| part == ".." || part == ".") {
        return Err("must not contain '.' or '..' components".into());
    }
    for dir in WORLD_WRITABLE_DIRS {
        if command == *dir || command.starts_with(&format!("{dir}/")) {
            return Err(format!("must not be under {dir}"));
        }
    }
    Ok(())
}

/// Validates `agents.upsert`'s params into a spec, with the gateway's [`SpecFacts`].
/// Checks go field by field in the spec's order, so the first breach is the one reported.
pub fn validate(params: &Value, facts: &SpecFacts) -> Result<AgentSpec, AgentRefusal> {
    let Some(obj) = params.as_object() else {
        return Err(field("params", "must be an object"));
    };
    if obj.contains_key("method_allowlist") {
        return Err(field("method_allowlist", "is not supported"));
    }
    let id = required_str(obj, "id")?;
    if !valid_id(id) {
        return Err(field(
            "id",
            "must match [A-Za-z0-9._-]{1,128} and not be '.' or '..'",
        ));
    }
    let name = required_str(obj, "name")?;
    if name.is_empty() || name.len() > MAX_ID_LEN {
        return Err(field("name", "must be 1-128 bytes"));
    }
    let interpreter = optional_str(obj, "interpreter")?;
    let command = match interpreter {
        Some(bare) => {
            if bare.is_empty() || bare.contains('/') {
                return Err(field("interpreter", "must be a bare program name"));
            }
            match &facts.interpreter {
                Ok(Some(path)) => path.clone(),
                Ok(None) => return Err(field("interpreter", "not found on PATH")),
                Err(reason) => return Err(field("interpreter", reason.clone())),
            }
        }
        None => {
            let command = required_str(obj, "command")?;
            check_command_shape(command).map_err(|r| field("command", r))?;
            facts
                .command
                .clone()
                .map_err(|reason| field("command", reason))?;
            command.to_owned()
        }
    };
    let args = match obj.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|a| a.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| field("args", "must be an array of strings"))?,
        Some(_) => return Err(field("args", "must be an array of strings")),
    };
    let cwd = optional_str(obj, "cwd")?;
    if let Some(cwd) = cwd {
        if !cwd.starts_with('/') {
            return Err(field("cwd", "must be an absolute path"));
        }
        facts.cwd.clone().map_err(|reason| field("cwd", reason))?;
    }
    let env = match obj.get("env") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(entries)) => {
            if entries.len() > MAX_ENV {
                return Err(field("env", format!("at most {MAX_ENV} entries")));
            }
            let mut env = BTreeMap::new();
            for (key, value) in entries {
                if RESERVED_ENV.contains(&key.as_str()) {
                    return Err(field("env", format!("{key} is set by the daemon")));
                }
                if key.is_empty() || key.contains('=') || key.contains('\0') {
                    return Err(field("env", format!("invalid variable name {key:?}")));
                }
                let Some(value) = value.as_str() else {
                    return Err(field("env", format!("{key}: value must be a string")));
                };
                if value.contains('\0') {
                    return Err(field("env", format!("{key}: value contains NUL")));
                }
                env.insert(key.clone(), value.to_owned());
            }
            env
        }
        Some(_) => return Err(field("env", "must be an object of strings")),
    };
    let restart = match obj.get("restart") {
        None | Some(Value::Null) => RestartPolicy::default(),
        Some(value) => serde_json::from_value(value.clone())
            .map_err(|_| field("restart", "must be \"never\", \"on_failure\" or \"always\""))?,
    };
    let max_restarts = match obj.get("max_restarts") {
        None | Some(Value::Null) => 5,
        Some(value) => match value.as_u64() {
            Some(n) if n <= MAX_RESTARTS => n as u32,
            _ => return Err(field("max_restarts", "must be an integer 0-100")),
        },
    };
    let backoff_secs = match obj.get("backoff_secs") {
        None | Some(Value::Null) => 1.0,
        Some(value) => match value.as_f64() {
            Some(secs) if (BACKOFF_MIN_SECS..=BACKOFF_MAX_SECS).contains(&secs) => secs,
            _ => return Err(field("backoff_secs", "must be a number 0.1-60")),
        },
    };
    let auto_start = match obj.get("auto_start") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(field("auto_start", "must be a boolean")),
    };
    let description = optional_str(obj, "description")?.map(str::to_owned);
    Ok(AgentSpec {
        id: id.to_owned(),
        name: name.to_owned(),
        command,
        args,
        cwd: cwd.map(str::to_owned),
        env,
        restart,
        max_restarts,
        backoff_secs,
        auto_start,
        interpreter: interpreter.map(str::to_owned),
        description,
    })
}

fn required_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, AgentRefusal> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(field(key, "is required")),
        Some(_) => Err(field(key, "must be a string")),
    }
}

fn optional_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, AgentRefusal> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(field(key, "must be a string")),
    }
}
