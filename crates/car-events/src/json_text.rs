//! `JsonText`: an arbitrary JSON value carried inside an event as its JSON text.
//!
//! bincode is not self-describing, so a `serde_json::Value` cannot round-trip through it.
//! Events therefore hold client-supplied JSON (turn parameters, outputs, outcomes, approval
//! details) as text. The same type renders as the JSON *value* in human-readable formats
//! (the `{seq, ts, kind, data}` rendering, JSONL fixtures), so nobody reading a log sees
//! escaped JSON inside strings.
//!
//! Invariant: the text is always one valid JSON value. Every constructor checks or
//! guarantees it.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// One JSON value held as its (compact) text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct JsonText(String);

impl JsonText {
    /// The JSON `null`.
    pub fn null() -> Self {
        Self("null".to_owned())
    }

    /// Renders a value as compact JSON text.
    pub fn from_value(value: &serde_json::Value) -> Self {
        Self(value.to_string())
    }

    /// Renders any serializable value as compact JSON text.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::to_string(value).map(Self)
    }

    /// Checks that `text` is one JSON value and keeps it as it is.
    pub fn parse(text: impl Into<String>) -> Result<Self, serde_json::Error> {
        let text = text.into();
        serde_json::from_str::<&RawValue>(&text)?;
        Ok(Self(text))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The length of the JSON text in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty (never true for a valid value; here for clippy's sake).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses the text into a `serde_json::Value`.
    pub fn to_value(&self) -> serde_json::Value {
        // The invariant guarantees valid JSON; a failure here would be a bug in a constructor,
        // and `Null` is the least harmful answer for a reader.
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }

    /// The text as a borrowed raw JSON value, for writing it into a larger document unparsed.
    pub fn as_raw(&self) -> &RawValue {
        // Same invariant as `to_value`; an invalid text cannot be constructed.
        serde_json::from_str(&self.0).unwrap_or_else(|_| {
            serde_json::from_str("null").unwrap_or_else(|_| unreachable!("`null` is JSON"))
        })
    }
}

impl Default for JsonText {
    fn default() -> Self {
        Self::null()
    }
}

impl fmt::Debug for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<serde_json::Value> for JsonText {
    fn from(value: serde_json::Value) -> Self {
        Self::from_value(&value)
    }
}

impl Serialize for JsonText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            self.as_raw().serialize(serializer)
        } else {
            serializer.serialize_str(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let raw = Box::<RawValue>::deserialize(deserializer)?;
            Ok(Self(raw.get().to_owned()))
        } else {
            let text = String::deserialize(deserializer)?;
            Self::parse(text).map_err(D::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_non_json() {
        assert!(JsonText::parse("{not json").is_err());
        assert!(JsonText::parse("").is_err());
        assert_eq!(JsonText::parse(" [1, 2] ").unwrap().as_str(), " [1, 2] ");
    }

    #[test]
    fn renders_as_a_value_in_json_and_as_a_string_in_bincode() {
        let text = JsonText::parse(r#"{"a":[1,2]}"#).unwrap();
        assert_eq!(serde_json::to_string(&text).unwrap(), r#"{"a":[1,2]}"#);
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&text, config).unwrap();
        let (back, _): (JsonText, usize) =
            bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(back, text);
        let back: JsonText = serde_json::from_str(r#" {"a": [1, 2]} "#).unwrap();
        assert_eq!(back.to_value(), serde_json::json!({"a": [1, 2]}));
    }
}
