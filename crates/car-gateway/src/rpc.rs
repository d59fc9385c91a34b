//! JSON-RPC 2.0 framing and the one place where failures become wire errors.
//!
//! Every handler returns `Result<Value, RpcError>`; [`RpcError`] knows its code and its
//! message (PROTOCOL.md §8), and the conversions from the lower layers' errors
//! ([`Refusal`], [`WriteError`]) live here, so no handler formats an error code itself and
//! nothing internal (a path, a backtrace) reaches a client.

use car_events::WriteError;
use car_projections::Refusal;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// A failure as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// `-32700`: the frame is not JSON.
    #[error("parse error: {0}")]
    Parse(String),
    /// `-32600`: not a JSON-RPC 2.0 request, a binary frame, a repeated auth.
    #[error("{0}")]
    InvalidRequest(String),
    /// `-32601`: no such method.
    #[error("unknown method: {0}")]
    MethodNotFound(String),
    /// `-32602`: the message names the field and the reason.
    #[error("{0}")]
    InvalidParams(String),
    /// `-32603`: refused or failed; the message is the contract's.
    #[error("{0}")]
    Internal(String),
    /// `-32603`: the event log cannot record anything now (a full disk, a storage
    /// failure); nothing of the request was recorded. Reads still work.
    #[error("{0}")]
    Unavailable(String),
    /// `-32001`: the session must authenticate first; the connection closes.
    #[error("auth required: send session.auth first")]
    AuthRequired,
    /// `-32003`: the approval gate said no.
    #[error("{0}")]
    ApprovalDenied(String),
    /// `-32004`: the handler did not finish in time.
    #[error("handler deadline exceeded")]
    Deadline,
    /// `-32005`: `host.*` before `server.handshake`.
    #[error(
        "protocol handshake required: call server.handshake with protocol_version 2 or 3 first"
    )]
    HandshakeRequired,
    /// `-32006`: a protocol version other than 2 and 3, or another than negotiated.
    #[error("protocol version mismatch: {0}")]
    VersionMismatch(String),
    /// `-32008`: a capability the server does not support, or the session did not
    /// negotiate (PROTOCOL.md §10).
    #[error("protocol capability mismatch: {0}")]
    CapabilityMismatch(String),
}

impl RpcError {
    /// The JSON-RPC error code.
    pub fn code(&self) -> i64 {
        match self {
            RpcError::Parse(_) => -32700,
            RpcError::InvalidRequest(_) => -32600,
            RpcError::MethodNotFound(_) => -32601,
            RpcError::InvalidParams(_) => -32602,
            RpcError::Internal(_) | RpcError::Unavailable(_) => -32603,
            RpcError::AuthRequired => -32001,
            RpcError::ApprovalDenied(_) => -32003,
            RpcError::Deadline => -32004,
            RpcError::HandshakeRequired => -32005,
            RpcError::VersionMismatch(_) => -32006,
            RpcError::CapabilityMismatch(_) => -32008,
        }
    }

    /// An invalid-params error about `field`.
    pub fn params(field: &str, reason: impl std::fmt::Display) -> Self {
        RpcError::InvalidParams(format!("invalid params: {field}: {reason}"))
    }

    /// The `error` object.
    pub fn to_json(&self) -> Value {
        json!({"code": self.code(), "message": self.to_string()})
    }
}

impl From<Refusal> for RpcError {
    fn from(refusal: Refusal) -> Self {
        let message = refusal.to_string();
        match refusal {
            Refusal::InvalidParams(_)
            | Refusal::KeyUnavailable
            | Refusal::CancelKeyReused
            | Refusal::UnknownApproval(_)
            | Refusal::ApprovalResolved(_)
            | Refusal::ApprovalExpired(_) => RpcError::InvalidParams(message),
            Refusal::AlreadyAuthenticated => RpcError::InvalidRequest(message),
            Refusal::AgentAttached(_)
            | Refusal::HostCannotStartRuns
            | Refusal::UnknownRun(_)
            | Refusal::RunTerminal(_)
            | Refusal::Forbidden(_)
            | Refusal::CancelUnavailable
            | Refusal::Quarantined(_)
            | Refusal::Dropped(_)
            | Refusal::NotFound => RpcError::Internal(message),
            Refusal::Memory(memory) if memory.is_invalid_params() => {
                RpcError::InvalidParams(message)
            }
            Refusal::Memory(_) => RpcError::Internal(message),
            Refusal::Agent(agent) if agent.is_invalid_params() => RpcError::InvalidParams(message),
            Refusal::Agent(_) => RpcError::Internal(message),
            Refusal::Chat(chat) if chat.is_invalid_params() => RpcError::InvalidParams(message),
            Refusal::Chat(_) => RpcError::Internal(message),
        }
    }
}

/// What a client is told when the disk is full.
pub const DISK_FULL: &str = "the event log is unavailable: the disk is full; nothing was recorded, and writes resume once space is freed";
/// What a client is told when the cluster's log cannot be reached (cluster mode).
pub const LOG_UNREACHABLE: &str = "the event log is unavailable: the NATS cluster cannot be reached or did not acknowledge in time; writes resume once it is back";
/// What a client is told when other gateways kept winning the race to the log.
pub const LOG_CONTENDED: &str = "the event log is unavailable: other gateways kept writing first; nothing was recorded, try again";
/// What a client is told after a storage failure.
pub const LOG_FAILED: &str = "the event log is unavailable after a storage failure: nothing was recorded; car-server must be restarted";

impl From<WriteError> for RpcError {
    fn from(err: WriteError) -> Self {
        // The details (which may name files) go to the daemon's log, not to the client.
        match err {
            WriteError::DiskFull(_) => {
                tracing::warn!(%err, "write refused");
                RpcError::Unavailable(DISK_FULL.into())
            }
            WriteError::Log(_) | WriteError::Poisoned(_) => {
                tracing::error!(%err, "write failed");
                RpcError::Unavailable(LOG_FAILED.into())
            }
            WriteError::Unavailable(_) => {
                tracing::warn!(%err, "write failed");
                RpcError::Unavailable(LOG_UNREACHABLE.into())
            }
            WriteError::Conflict(_) => {
                tracing::warn!(%err, "write failed");
                RpcError::Unavailable(LOG_CONTENDED.into())
            }
            WriteError::Stopped => RpcError::Unavailable("the daemon is stopping".into()),
            WriteError::Rejected { .. } => {
                tracing::error!(%err, "write failed");
                RpcError::Internal(
                    "internal error: the event log could not record this request".into(),
                )
            }
        }
    }
}

/// What one JSON value of a frame is.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A request (has an id) or a notification (none).
    Call {
        /// The id; `None` for a notification.
        id: Option<Value>,
        /// The method.
        method: String,
        /// The params (`{}` when absent).
        params: Value,
    },
    /// A reply to a request the server sent (a `tools.execute` result or error).
    Reply {
        /// The id of the server's request.
        id: Value,
        /// `Ok(result)` or `Err(error object)`.
        outcome: Result<Value, Value>,
    },
    /// Not a valid message; answered with this error and id.
    Invalid {
        /// The id, when one could be read.
        id: Value,
        /// What is wrong.
        error: RpcError,
    },
}

/// Classifies one element of a frame.
pub fn classify(value: Value) -> Incoming {
    let Value::Object(mut obj) = value else {
        return invalid(Value::Null, "a JSON-RPC message must be an object");
    };
    let id = obj.remove("id");
    let valid_id = match &id {
        None => true,
        Some(Value::Null | Value::Number(_) | Value::String(_)) => true,
        Some(_) => false,
    };
    if !valid_id {
        return invalid(Value::Null, "id must be a number, a string or null");
    }
    let id_or_null = id.clone().unwrap_or(Value::Null);
    if obj.get("jsonrpc") != Some(&Value::from("2.0")) {
        return invalid(id_or_null, "jsonrpc must be \"2.0\"");
    }
    match obj.remove("method") {
        Some(Value::String(method)) => {
            let params = match obj.remove("params") {
                None | Some(Value::Null) => Value::Object(Map::new()),
                Some(params @ (Value::Object(_) | Value::Array(_))) => params,
                Some(_) => {
                    return Incoming::Invalid {
                        id: id_or_null,
                        error: RpcError::InvalidRequest(
                            "params must be an object or an array".into(),
                        ),
                    };
                }
            };
            Incoming::Call { id, method, params }
        }
        Some(_) => invalid(id_or_null, "method must be a string"),
        None => {
            let Some(id) = id.filter(|id| !id.is_null()) else {
                return invalid(
                    Value::Null,
                    "a message needs a method, or an id and a result",
                );
            };
            match (obj.remove("result"), obj.remove("error")) {
                (Some(result), None) => Incoming::Reply {
                    id,
                    outcome: Ok(result),
                },
                (None, Some(error)) => Incoming::Reply {
                    id,
                    outcome: Err(error),
                },
                _ => invalid(id, "a response needs exactly one of result and error"),
            }
        }
    }
}

fn invalid(id: Value, message: &str) -> Incoming {
    Incoming::Invalid {
        id,
        error: RpcError::InvalidRequest(format!("invalid request: {message}")),
    }
}

/// A success response.
pub fn success(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// An error response.
pub fn failure(id: &Value, error: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": error.to_json()})
}

/// A response for a result.
pub fn response(id: &Value, result: &Result<Value, RpcError>) -> Value {
    match result {
        Ok(value) => success(id, value.clone()),
        Err(error) => failure(id, error),
    }
}

/// A notification from the server.
pub fn notification(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

/// A request from the server (`tools.execute`).
pub fn request(id: &str, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// Reads params into `T`; an error names the field (`a.b[2]`) and the reason.
pub fn parse<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    if !params.is_object() {
        return Err(RpcError::params("params", "expected an object"));
    }
    serde_path_to_error::deserialize(params).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." {
            "params".to_owned()
        } else {
            path
        };
        RpcError::params(&field, err.into_inner())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn classifies_calls_replies_and_junk() {
        assert!(matches!(
            classify(json!({"jsonrpc": "2.0", "id": 1, "method": "m"})),
            Incoming::Call { id: Some(_), ref method, .. } if method == "m"
        ));
        assert!(matches!(
            classify(json!({"jsonrpc": "2.0", "method": "m", "params": {"a": 1}})),
            Incoming::Call { id: None, .. }
        ));
        assert!(matches!(
            classify(json!({"jsonrpc": "2.0", "id": "x", "result": 5})),
            Incoming::Reply { outcome: Ok(_), .. }
        ));
        for junk in [
            json!(7),
            json!({"id": 1, "method": "m"}),
            json!({"jsonrpc": "2.0", "id": [1], "method": "m"}),
            json!({"jsonrpc": "2.0", "id": 1, "method": 5}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "m", "params": 5}),
            json!({"jsonrpc": "2.0", "id": 1}),
        ] {
            assert!(
                matches!(
                    classify(junk.clone()),
                    Incoming::Invalid {
                        error: RpcError::InvalidRequest(_),
                        ..
                    }
                ),
                "{junk}"
            );
        }
    }

    #[test]
    fn params_errors_name_the_field() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct P {
            intent: String,
            nested: Option<Vec<u32>>,
        }
        let err = parse::<P>(json!({"intent": 5})).unwrap_err();
        assert_eq!(err.code(), -32602);
        assert!(
            err.to_string()
                .starts_with("invalid params: intent: invalid type"),
            "{err}"
        );
        let err = parse::<P>(json!({"intent": "x", "nested": [1, "a"]})).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid params: nested[1]:"),
            "{err}"
        );
        let err = parse::<P>(json!({})).unwrap_err();
        assert!(err.to_string().contains("missing field `intent`"), "{err}");
        let err = parse::<P>(json!([1])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid params: params: expected an object"
        );
    }
}
