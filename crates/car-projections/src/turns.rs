//! Turn admission: the size rules of `runs.record_turns` (PROTOCOL.md §3.3).
//!
//! A turn is kept as the client sent it, minus the fields the daemon owns (`index`,
//! `record`, `recorded_at`), with `verifier_verdict` and `policy_rejected` defaulted. Then:
//! 1. every string longer than [`MAX_STRING_BYTES`], at any depth, is cut so that with
//!    [`TRUNCATED_SUFFIX`] it is at most that long;
//! 2. a turn whose JSON still exceeds [`MAX_TURN_BYTES`] has `prompt`, `parameters` and
//!    `output` replaced with [`TURN_TOO_LARGE`];
//! 3. if it is still too large, the turn is refused (and with it the whole batch).
//!
//! A model turn (`runs.record_model_turn`, PROTOCOL.md §14.3) is stored like an action turn,
//! in a `run.turns_recorded` event, so it shares the index sequence, the ceiling and these
//! rules; its stored object starts with `"record": "model_turn"`, which no client turn can
//! carry (`record` is a daemon field, dropped from action turns), so the trace renders it
//! as a `model_turn` record.

use car_events::JsonText;
use serde_json::{Map, Value};

/// The most turns in one `runs.record_turns` call.
pub const MAX_TURNS_PER_BATCH: usize = 256;
/// The longest string a turn keeps, in bytes.
pub const MAX_STRING_BYTES: usize = 16 * 1024;
/// The largest turn, as JSON, in bytes.
pub const MAX_TURN_BYTES: usize = 256 * 1024;
/// What a cut string ends with.
pub const TRUNCATED_SUFFIX: &str = "…[truncated]";
/// What replaces the large fields of a turn that is too large.
pub const TURN_TOO_LARGE: &str = "…[truncated: turn exceeded 256 KiB]";
/// Fields the daemon sets on the wire record; a client's values for them are ignored.
const DAEMON_FIELDS: [&str; 3] = ["index", "record", "recorded_at"];
/// Fields replaced when a turn is too large.
const LARGE_FIELDS: [&str; 3] = ["prompt", "parameters", "output"];
/// The `record` of a stored model turn.
pub const MODEL_TURN: &str = "model_turn";
/// Fields replaced when a model turn is too large.
const LARGE_MODEL_FIELDS: [&str; 2] = ["assistant_text", "requested_tool_calls"];

/// Why a turn was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TurnError {
    /// The turn is not a JSON object.
    #[error("turns[{index}]: expected an object")]
    NotAnObject {
        /// Its position in the batch.
        index: usize,
    },
    /// Still larger than [`MAX_TURN_BYTES`] after truncation.
    #[error("turns[{index}]: {bytes} bytes after truncation exceeds {MAX_TURN_BYTES}")]
    TooLarge {
        /// Its position in the batch.
        index: usize,
        /// Its size after truncation.
        bytes: usize,
    },
}

/// Admits one turn (the `index`-th of its batch) or says why not.
pub fn admit(index: usize, turn: &Value) -> Result<JsonText, TurnError> {
    let Value::Object(fields) = turn else {
        return Err(TurnError::NotAnObject { index });
    };
    let mut kept = Map::with_capacity(fields.len() + 2);
    for (key, value) in fields {
        if DAEMON_FIELDS.contains(&key.as_str()) {
            continue;
        }
        kept.insert(key.clone(), truncate_strings(value));
    }
    kept.entry("verifier_verdict")
        .or_insert_with(|| Value::String("not_run".into()));
    kept.entry("policy_rejected").or_insert(Value::Bool(false));
    fit(index, kept, &LARGE_FIELDS)
}

/// A model turn, its fields in the contract's order (§14.3), as it is stored: `record:
/// "model_turn"` first, then `turn_index`, `assistant_text`, `requested_tool_calls`,
/// `model_id`, `token_usage`, `duration_ms`; strings cut and sizes checked as for action
/// turns. The caller has checked the shapes and redacted credentials.
pub fn admit_model_turn(fields: Map<String, Value>) -> Result<JsonText, TurnError> {
    let mut kept = Map::with_capacity(fields.len() + 1);
    kept.insert("record".into(), Value::from(MODEL_TURN));
    for (key, value) in &fields {
        if !DAEMON_FIELDS.contains(&key.as_str()) {
            kept.insert(key.clone(), truncate_strings(value));
        }
    }
    fit(0, kept, &LARGE_MODEL_FIELDS)
}

/// A turn's JSON within [`MAX_TURN_BYTES`]: as it is, or with its `large` fields replaced.
fn fit(index: usize, kept: Map<String, Value>, large: &[&str]) -> Result<JsonText, TurnError> {
    let mut turn = Value::Object(kept);
    let mut text = JsonText::from_value(&turn);
    if text.len() > MAX_TURN_BYTES {
        if let Value::Object(fields) = &mut turn {
            for field in large {
                if let Some(value) = fields.get_mut(*field) {
                    *value = Value::String(TURN_TOO_LARGE.into());
                }
            }
        }
        text = JsonText::from_value(&turn);
        if text.len() > MAX_TURN_BYTES {
            return Err(TurnError::TooLarge {
                index,
                bytes: text.len(),
            });
        }
    }
    Ok(text)
}

/// A copy of `value` with every over-long string cut.
fn truncate_strings(value: &Value) -> Value {
    match value {
        Value::String(s) if s.len() > MAX_STRING_BYTES => Value::String(cut(s)),
        Value::Array(items) => Value::Array(items.iter().map(truncate_strings).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), truncate_strings(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Cuts `s` at a character boundary so that with the suffix it fits [`MAX_STRING_BYTES`].
fn cut(s: &str) -> String {
    let mut end = MAX_STRING_BYTES - TRUNCATED_SUFFIX.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + TRUNCATED_SUFFIX.len());
    out.push_str(&s[..end]);
    out.push_str(TRUNCATED_SUFFIX);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    #[test]
    fn keeps_client_fields_in_order_and_drops_daemon_fields() {
        let turn = json!({"index": 9, "prompt": "p", "tool": "t", "record": "x",
                          "parameters": {"b": 1, "a": [2]}, "recorded_at": "yesterday", "extra": null});
        let text = admit(0, &turn).unwrap();
        assert_eq!(
            text.as_str(),
            r#"{"prompt":"p","tool":"t","parameters":{"b":1,"a":[2]},"extra":null,"verifier_verdict":"not_run","policy_rejected":false}"#
        );
    }

    #[test]
    fn a_model_turn_is_stored_with_its_record_first_and_cut_like_any_turn() {
        let fields = json!({
            "turn_index": 2,
            "assistant_text": "x".repeat(MAX_STRING_BYTES + 10),
            "requested_tool_calls": [{"id": "c1", "name": "search", "arguments": {"q": "rust"}}],
            "model_id": "m",
            "token_usage": null,
            "duration_ms": 5,
            "record": "turn",
        });
        let Value::Object(fields) = fields else {
            unreachable!()
        };
        let text = admit_model_turn(fields).unwrap();
        let value = text.to_value();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "record",
                "turn_index",
                "assistant_text",
                "requested_tool_calls",
                "model_id",
                "token_usage",
                "duration_ms"
            ]
        );
        assert_eq!(value["record"], MODEL_TURN);
        let text = value["assistant_text"].as_str().unwrap();
        assert_eq!(text.len(), MAX_STRING_BYTES);
        assert!(text.ends_with(TRUNCATED_SUFFIX));
    }

    #[test]
    fn a_model_turn_too_large_loses_its_text_and_calls_first() {
        let calls: Vec<Value> = (0..40)
            .map(|i| json!({"id": i, "name": "t", "arguments": "y".repeat(10_000)}))
            .collect();
        let fields = json!({"turn_index": 1, "assistant_text": "a", "requested_tool_calls": calls,
                            "model_id": "m", "token_usage": null, "duration_ms": 0});
        let Value::Object(fields) = fields else {
            unreachable!()
        };
        let value = admit_model_turn(fields).unwrap().to_value();
        assert_eq!(value["assistant_text"], TURN_TOO_LARGE);
        assert_eq!(value["requested_tool_calls"], TURN_TOO_LARGE);
        assert_eq!(value["model_id"], "m");
    }

    #[test]
    fn keeps_a_client_verdict() {
        let text = admit(
            0,
            &json!({"verifier_verdict": "passed", "policy_rejected": true}),
        )
        .unwrap();
        assert_eq!(
            text.to_value(),
            json!({"verifier_verdict": "passed", "policy_rejected": true})
        );
    }

    #[rstest]
    #[case::ascii("a".repeat(MAX_STRING_BYTES + 1))]
    #[case::multibyte("é".repeat(MAX_STRING_BYTES))]
    #[case::nested_deep("x".repeat(100_000))]
    fn long_strings_are_cut_to_the_limit_with_the_suffix(#[case] long: String) {
        let text = admit(
            0,
            &json!({"output": {"deep": [long.clone()]}, "prompt": long}),
        )
        .unwrap();
        let value = text.to_value();
        for cut in [&value["prompt"], &value["output"]["deep"][0]] {
            let cut = cut.as_str().unwrap();
            assert!(cut.len() <= MAX_STRING_BYTES, "{}", cut.len());
            assert!(cut.len() > MAX_STRING_BYTES - 8);
            assert!(cut.ends_with(TRUNCATED_SUFFIX));
        }
    }

    #[test]
    fn a_string_at_the_limit_is_kept_whole() {
        let exact = "a".repeat(MAX_STRING_BYTES);
        let text = admit(0, &json!({"prompt": exact.clone()})).unwrap();
        assert_eq!(text.to_value()["prompt"], json!(exact));
    }

    #[test]
    fn a_turn_too_large_after_cutting_loses_its_large_fields() {
        let many: Vec<String> = (0..20).map(|_| "y".repeat(MAX_STRING_BYTES)).collect();
        let text = admit(0, &json!({"prompt": "p", "parameters": many, "tool": "t"})).unwrap();
        let value = text.to_value();
        assert_eq!(value["parameters"], json!(TURN_TOO_LARGE));
        assert_eq!(value["prompt"], json!(TURN_TOO_LARGE));
        assert_eq!(value["tool"], json!("t"));
        assert!(value.get("output").is_none());
    }

    #[test]
    fn a_turn_still_too_large_is_refused() {
        let many: Vec<String> = (0..20).map(|_| "z".repeat(MAX_STRING_BYTES)).collect();
        let err = admit(3, &json!({"tool": "t", "notes": many})).unwrap_err();
        assert!(matches!(err, TurnError::TooLarge { index: 3, .. }), "{err}");
    }

    #[rstest]
    #[case(json!("text"))]
    #[case(json!([1]))]
    #[case(json!(null))]
    fn a_turn_must_be_an_object(#[case] turn: Value) {
        assert_eq!(admit(2, &turn), Err(TurnError::NotAnObject { index: 2 }));
    }
}
