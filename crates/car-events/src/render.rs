//! The JSON rendering of an event: `{seq, ts, kind, data}`.
//!
//! This is the shape `log.read`, `log.event` and `car-replay events` emit, and the shape of
//! the JSONL fixtures. `data` is the event's payload with client JSON shown as JSON values
//! (see [`crate::JsonText`]). [`EventJson::into_parts`] parses the rendering back, so
//! fixtures can be written by hand.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, Seq};
use crate::event::Event;

/// Renders a time the way the protocol writes times: RFC 3339, UTC, milliseconds, `Z`.
pub fn format_ts(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Why a JSON rendering could not be turned back into an event.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// `ts` is not an RFC 3339 time.
    #[error("seq {seq}: bad ts {ts:?}: {source}")]
    Time {
        /// The seq of the record.
        seq: Seq,
        /// The text found.
        ts: String,
        /// The parser's error.
        source: chrono::ParseError,
    },
    /// `kind`/`data` do not form a known event.
    #[error("seq {seq}: bad {kind} event: {source}")]
    Event {
        /// The seq of the record.
        seq: Seq,
        /// The kind found.
        kind: String,
        /// The decoder's error.
        source: serde_json::Error,
    },
}

/// One event as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventJson {
    /// Position in the log.
    pub seq: Seq,
    /// Append time, as [`format_ts`] writes it.
    pub ts: String,
    /// The kind name (`"run.started"`, …).
    pub kind: String,
    /// The payload.
    pub data: serde_json::Value,
}

impl EventJson {
    /// Renders an envelope.
    pub fn from_envelope(envelope: &Envelope) -> Self {
        Self {
            seq: envelope.seq,
            ts: format_ts(envelope.ts),
            kind: envelope.event.kind().to_owned(),
            data: event_data(&envelope.event),
        }
    }

    /// Parses the rendering back into its seq, time and event.
    pub fn into_parts(self) -> Result<(Seq, DateTime<Utc>, Event), RenderError> {
        let ts = DateTime::parse_from_rfc3339(&self.ts)
            .map_err(|source| RenderError::Time {
                seq: self.seq,
                ts: self.ts.clone(),
                source,
            })?
            .with_timezone(&Utc);
        let mut tagged = serde_json::Map::with_capacity(1);
        tagged.insert(self.kind.clone(), self.data);
        let event =
            serde_json::from_value(serde_json::Value::Object(tagged)).map_err(|source| {
                RenderError::Event {
                    seq: self.seq,
                    kind: self.kind,
                    source,
                }
            })?;
        Ok((self.seq, ts, event))
    }
}

/// The payload of an event as a JSON value.
pub fn event_data(event: &Event) -> serde_json::Value {
    // Every variant is a newtype around a payload struct, so the externally tagged serde
    // rendering is `{"<kind>": {...}}`: the payload is the only entry's value.
    match serde_json::to_value(event) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .next()
            .map(|(_, data)| data)
            .unwrap_or(serde_json::Value::Null),
        _ => serde_json::Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TurnsRecorded;
    use crate::json_text::JsonText;
    use uuid::Uuid;

    #[test]
    fn renders_and_parses_back() {
        let env = Envelope {
            seq: 5,
            event_id: Uuid::nil(),
            ts: DateTime::parse_from_rfc3339("2026-11-24T10:00:00.123Z")
                .unwrap()
                .with_timezone(&Utc),
            schema_version: 1,
            event: Event::TurnsRecorded(TurnsRecorded {
                run_id: "r1".into(),
                base_index: 0,
                turns: vec![JsonText::parse(r#"{"prompt":"hi","parameters":{"x":1}}"#).unwrap()],
            }),
        };
        let json = EventJson::from_envelope(&env);
        assert_eq!(
            serde_json::to_value(&json).unwrap(),
            serde_json::json!({
                "seq": 5,
                "ts": "2026-11-24T10:00:00.123Z",
                "kind": "run.turns_recorded",
                "data": {"run_id": "r1", "base_index": 0, "turns": [{"prompt": "hi", "parameters": {"x": 1}}]}
            })
        );
        let (seq, ts, event) = json.into_parts().unwrap();
        assert_eq!((seq, ts, event), (env.seq, env.ts, env.event));
    }

    /// Regression: the rendering parses the stored JSON text; serde_json's default float
    /// parser is not exact, so some numbers came back one ulp off (the stored
    /// `2.219502251640549e-308` rendered as `2.2195022516405486e-308`). Fixed by the
    /// `float_roundtrip` feature.
    #[test]
    fn rendering_keeps_every_float_exactly() {
        let stored = "[2.219502251640549e-308,5.7962607712675695e-186,4.2590279540301565e+86]";
        let env = Envelope {
            seq: 1,
            event_id: Uuid::nil(),
            ts: DateTime::<Utc>::from_timestamp_millis(0).unwrap(),
            schema_version: 1,
            event: Event::TurnsRecorded(TurnsRecorded {
                run_id: "r".into(),
                base_index: 0,
                turns: vec![JsonText::parse(stored).unwrap()],
            }),
        };
        let json = EventJson::from_envelope(&env);
        let expected: Vec<f64> = vec![
            2.219502251640549e-308,
            5.7962607712675695e-186,
            4.2590279540301565e86,
        ];
        assert_eq!(json.data["turns"][0], serde_json::json!(expected));
        let (_, _, event) = json.into_parts().unwrap();
        assert_eq!(event, env.event);
    }

    #[test]
    fn unknown_kind_is_an_error_naming_the_seq() {
        let json = EventJson {
            seq: 9,
            ts: "2026-11-24T10:00:00.000Z".into(),
            kind: "run.exploded".into(),
            data: serde_json::json!({}),
        };
        let err = json.into_parts().unwrap_err();
        assert!(
            err.to_string().starts_with("seq 9: bad run.exploded event"),
            "{err}"
        );
    }
}
