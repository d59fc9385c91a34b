//! Pagination (PROTOCOL.md §14.4, capability `runs.pagination.v1`): what a negotiated
//! session must send to `runs.list`, `runs.get_trace` and `runs.subscribe`, and the opaque
//! cursor of `runs.list`. Sessions that did not negotiate it keep §3.5–3.6 unchanged.

use car_events::Seq;
use serde_json::Value;

use crate::protocol::{self, PAGINATION};
use crate::rpc::RpcError;
use crate::session::Session;

/// The largest page.
pub(crate) const MAX_LIMIT: u64 = 500;
/// What a `runs.list` cursor starts with: a version, so a later format can tell its own.
const LIST_CURSOR_PREFIX: &str = "rl1.";

/// Whether the session pages (negotiated `runs.pagination.v1`).
pub(crate) fn paged(session: &Session) -> bool {
    protocol::has(session.protocol.as_ref(), PAGINATION)
}

/// A field a paged call must send (its value may be `null` where the contract allows).
pub(crate) fn required<'a>(params: &'a Value, field: &str) -> Result<&'a Value, RpcError> {
    params
        .get(field)
        .ok_or_else(|| RpcError::InvalidParams(format!("invalid params: {field} is required")))
}

/// `limit`: required, 1 to [`MAX_LIMIT`].
pub(crate) fn limit(params: &Value) -> Result<usize, RpcError> {
    match required(params, "limit")?.as_u64() {
        Some(n @ 1..=MAX_LIMIT) => Ok(n as usize),
        _ => Err(RpcError::params(
            "limit",
            format!("must be an integer from 1 to {MAX_LIMIT}"),
        )),
    }
}

/// A position cursor (`runs.get_trace`, `runs.subscribe`): required, a non-negative integer.
pub(crate) fn position(params: &Value) -> Result<u64, RpcError> {
    required(params, "cursor")?
        .as_u64()
        .ok_or_else(|| RpcError::params("cursor", "must be a non-negative integer"))
}

/// The `runs.list` cursor: `""` for the first page (`None`), else the one a previous page
/// returned, which names the `started_seq` to continue below.
pub(crate) fn list_cursor(params: &Value) -> Result<Option<Seq>, RpcError> {
    let foreign = || RpcError::params("cursor", "not a cursor runs.list returned");
    match required(params, "cursor")? {
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => s
            .strip_prefix(LIST_CURSOR_PREFIX)
            .and_then(|hex| Seq::from_str_radix(hex, 16).ok())
            .map(Some)
            .ok_or_else(foreign),
        _ => Err(RpcError::params("cursor", "must be a string")),
    }
}

/// The cursor of the page after one that ended at the run started at `seq`.
pub(crate) fn next_list_cursor(seq: Seq) -> String {
    format!("{LIST_CURSOR_PREFIX}{seq:x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn list_cursors_round_trip_and_foreign_ones_are_refused() {
        let cursor = next_list_cursor(0x1234);
        assert_eq!(
            list_cursor(&json!({"cursor": cursor})).unwrap(),
            Some(0x1234)
        );
        assert_eq!(list_cursor(&json!({"cursor": ""})).unwrap(), None);
        for bad in [json!("abc"), json!("rl1.zz"), json!("rl2.10")] {
            let err = list_cursor(&json!({"cursor": bad})).unwrap_err();
            assert_eq!(err.code(), -32602, "{bad}");
            assert!(err.to_string().contains("cursor"), "{err}");
        }
        assert_eq!(
            list_cursor(&json!({})).unwrap_err().to_string(),
            "invalid params: cursor is required"
        );
    }

    #[test]
    fn limits_are_1_to_500_and_required() {
        assert_eq!(limit(&json!({"limit": 1})).unwrap(), 1);
        assert_eq!(limit(&json!({"limit": 500})).unwrap(), 500);
        for bad in [json!(0), json!(501), json!("5"), json!(-1), Value::Null] {
            assert_eq!(limit(&json!({"limit": bad})).unwrap_err().code(), -32602);
        }
        assert_eq!(
            limit(&json!({})).unwrap_err().to_string(),
            "invalid params: limit is required"
        );
    }
}
