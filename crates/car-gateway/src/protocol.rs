//! Protocol versions and capabilities (PROTOCOL.md §2.2 and §10): what `server.handshake`
//! negotiates, as a pure function of what the session negotiated before and what the
//! client asks, so every rule and refusal is unit-tested here and the handler only stores
//! the result.
//!
//! A session speaks version 2 until a handshake says otherwise. The first successful
//! handshake fixes the version and the capabilities; a repeat in the same version gets
//! the same answer, another version is refused.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::rpc::RpcError;

/// The versions spoken.
pub(crate) const VERSIONS: [u64; 2] = [2, 3];
/// `client_version` is echoed cut to this many characters (§10).
const CLIENT_VERSION_CHARS: usize = 64;

/// The capabilities a v3 handshake can negotiate: the ones whose methods this daemon
/// serves (§14), and the two CAR's bundled v3 clients require, which constrain `infer` and
/// `models.*` results, methods absent here, so they hold trivially (§10).
pub(crate) const SUPPORTED: &[&str] = &[
    "infer.model-identity.v1",
    "models.catalog-identity.v1",
    CANCEL,
    RESUME,
    PAGINATION,
];
/// `runs.cancel` (§14.1).
pub(crate) const CANCEL: &str = "runs.cancel.v1";
/// `runs.resume` and the resume lease (§14.2).
pub(crate) const RESUME: &str = "runs.resume.v1";
/// Paginated `runs.list`, `runs.get_trace`, `runs.subscribe` (§14.4).
pub(crate) const PAGINATION: &str = "runs.pagination.v1";

/// Whether a session negotiated `capability`.
pub(crate) fn has(negotiated: Option<&Negotiated>, capability: &str) -> bool {
    negotiated.is_some_and(|n| n.capabilities.contains(capability))
}

/// What a session negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Negotiated {
    /// 2 or 3.
    pub(crate) version: u64,
    /// The capabilities in effect (v3 only; empty for v2).
    pub(crate) capabilities: BTreeSet<String>,
    /// The answer, repeated as it is to a repeated handshake.
    pub(crate) answer: Value,
}

/// Decides a `server.handshake` with `params`, given what the session negotiated before.
pub(crate) fn negotiate(
    before: Option<&Negotiated>,
    params: &Value,
    server_version: &str,
) -> Result<Negotiated, RpcError> {
    if !params.is_object() {
        return Err(RpcError::params("params", "expected an object"));
    }
    let asked = params.get("protocol_version").unwrap_or(&Value::Null);
    let version = asked
        .as_u64()
        .filter(|v| VERSIONS.contains(v) && asked.is_u64());
    let Some(version) = version else {
        let sent = match asked {
            Value::Null => "no protocol_version".to_owned(),
            other => other.to_string(),
        };
        return Err(RpcError::VersionMismatch(format!(
            "server speaks 2 and 3, client sent {sent}"
        )));
    };
    if let Some(before) = before {
        if before.version != version {
            return Err(RpcError::VersionMismatch(format!(
                "session already negotiated version {}",
                before.version
            )));
        }
        return Ok(before.clone());
    }
    if version == 2 {
        return Ok(Negotiated {
            version,
            capabilities: BTreeSet::new(),
            answer: json!({
                "protocol_version": 2,
                "server_version": server_version,
                "client_protocol_version": 2,
            }),
        });
    }
    let required = capability_list(params, "required_capabilities")?;
    let optional = capability_list(params, "optional_capabilities")?;
    if let Some(missing) = required.iter().find(|c| !SUPPORTED.contains(&c.as_str())) {
        return Err(RpcError::CapabilityMismatch(format!(
            "unsupported required capability '{missing}'"
        )));
    }
    let capabilities: BTreeSet<String> = required
        .into_iter()
        .chain(optional)
        .filter(|c| SUPPORTED.contains(&c.as_str()))
        .collect();
    let client_version = match params.get("client_version").and_then(Value::as_str) {
        Some(v) => v.chars().take(CLIENT_VERSION_CHARS).collect(),
        None => "unknown".to_owned(),
    };
    Ok(Negotiated {
        version,
        answer: json!({
            "protocol_version": 3,
            "server_version": server_version,
            "client_protocol_version": 3,
            "client_version": client_version,
            "negotiated_capabilities": capabilities.iter().collect::<Vec<_>>(),
        }),
        capabilities,
    })
}

/// A capability list: absent, or an array of non-empty strings.
fn capability_list(params: &Value, field: &str) -> Result<Vec<String>, RpcError> {
    match params.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item.as_str() {
                Some(s) if !s.is_empty() => Ok(s.to_owned()),
                _ => Err(RpcError::params(
                    field,
                    "expected an array of non-empty strings",
                )),
            })
            .collect(),
        Some(_) => Err(RpcError::params(
            field,
            "expected an array of non-empty strings",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "0.1.0";

    fn ok(before: Option<&Negotiated>, params: Value) -> Negotiated {
        negotiate(before, &params, SERVER).unwrap_or_else(|e| panic!("{params}: {e}"))
    }

    fn err(before: Option<&Negotiated>, params: Value) -> RpcError {
        negotiate(before, &params, SERVER).unwrap_err()
    }

    #[test]
    fn version_2_answers_as_it_always_did() {
        let v2 = ok(None, json!({"protocol_version": 2, "client_version": "x"}));
        assert_eq!(v2.version, 2);
        assert_eq!(
            v2.answer,
            json!({"protocol_version": 2, "server_version": SERVER, "client_protocol_version": 2})
        );
        // Capability lists are read only in version 3.
        let v2 = ok(
            None,
            json!({"protocol_version": 2, "required_capabilities": "junk"}),
        );
        assert!(v2.capabilities.is_empty());
    }

    #[test]
    fn version_3_negotiates_the_supported_entries_of_both_lists_sorted_and_deduplicated() {
        let v3 = ok(
            None,
            json!({
                "protocol_version": 3,
                "client_version": "car-client/0.57",
                "required_capabilities": ["models.catalog-identity.v1"],
                "optional_capabilities": ["zz.unknown.v9", "infer.model-identity.v1", "models.catalog-identity.v1"],
            }),
        );
        assert_eq!(
            v3.answer,
            json!({
                "protocol_version": 3,
                "server_version": SERVER,
                "client_protocol_version": 3,
                "client_version": "car-client/0.57",
                "negotiated_capabilities": ["infer.model-identity.v1", "models.catalog-identity.v1"],
            })
        );
        assert!(v3.capabilities.contains("infer.model-identity.v1"));
        assert!(!v3.capabilities.contains("zz.unknown.v9"));
    }

    #[test]
    fn client_version_is_cut_to_64_characters_or_unknown() {
        let long = "é".repeat(100);
        let v3 = ok(None, json!({"protocol_version": 3, "client_version": long}));
        assert_eq!(v3.answer["client_version"], "é".repeat(64));
        let v3 = ok(None, json!({"protocol_version": 3}));
        assert_eq!(v3.answer["client_version"], "unknown");
        assert_eq!(v3.answer["negotiated_capabilities"], json!([]));
    }

    #[test]
    fn an_unsupported_required_capability_is_minus_32008() {
        let e = err(
            None,
            json!({"protocol_version": 3, "required_capabilities": ["infer.model-identity.v1", "runs.teleport.v1"]}),
        );
        assert_eq!(e.code(), -32008);
        assert_eq!(
            e.to_string(),
            "protocol capability mismatch: unsupported required capability 'runs.teleport.v1'"
        );
    }

    #[test]
    fn lists_that_are_not_arrays_of_non_empty_strings_are_minus_32602() {
        for bad in [
            json!("x"),
            json!([1]),
            json!([""]),
            json!({"a": 1}),
            json!([null]),
        ] {
            for field in ["required_capabilities", "optional_capabilities"] {
                let e = err(None, json!({"protocol_version": 3, field: bad}));
                assert_eq!(e.code(), -32602, "{field}: {bad}");
                assert!(e.to_string().contains(field), "{e}");
            }
        }
    }

    /// Regression: params that are not an object were answered -32006 (no version found)
    /// instead of -32602 naming `params`, as every other method answers them.
    #[test]
    fn params_that_are_not_an_object_are_minus_32602() {
        for params in [json!([2]), json!("x"), json!(3)] {
            let e = err(None, params.clone());
            assert_eq!(e.code(), -32602, "{params}");
            assert!(e.to_string().contains("params"), "{e}");
        }
    }

    #[test]
    fn other_versions_are_minus_32006_naming_what_was_sent() {
        for (params, sent) in [
            (json!({"protocol_version": 1}), "1"),
            (json!({"protocol_version": 4}), "4"),
            (json!({"protocol_version": "2"}), "\"2\""),
            (json!({"protocol_version": 2.0}), "2.0"),
            (json!({"protocol_version": null}), "no protocol_version"),
            (json!({}), "no protocol_version"),
        ] {
            let e = err(None, params.clone());
            assert_eq!(e.code(), -32006, "{params}");
            assert_eq!(
                e.to_string(),
                format!("protocol version mismatch: server speaks 2 and 3, client sent {sent}")
            );
        }
    }

    #[test]
    fn the_first_success_fixes_version_and_capabilities() {
        let first = ok(
            None,
            json!({"protocol_version": 3, "optional_capabilities": ["infer.model-identity.v1"]}),
        );
        // The same version again: the same answer, whatever the lists say now.
        let again = ok(
            Some(&first),
            json!({"protocol_version": 3, "optional_capabilities": ["models.catalog-identity.v1"]}),
        );
        assert_eq!(again, first);
        let e = err(Some(&first), json!({"protocol_version": 2}));
        assert_eq!(e.code(), -32006);
        assert_eq!(
            e.to_string(),
            "protocol version mismatch: session already negotiated version 3"
        );
    }
}
