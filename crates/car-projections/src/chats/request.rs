//! `agents.chat`'s params, checked (PROTOCOL.md §13.1): pure, so the gateway and A2A share
//! one reading of them and the tests need no socket.

use base64::Engine;
use serde_json::{Map, Value};

/// A prompt's bounds: 1 B to 1 MiB.
pub const MAX_PROMPT_BYTES: usize = 1 << 20;
/// How many attachments one chat may carry: images are sent to the agent inline, so a
/// bound keeps one request from filling the agent's connection.
pub const MAX_ATTACHMENTS: usize = 16;
/// The longest `session_id` and `conversation_id`.
const MAX_ID_BYTES: usize = 128;

/// A checked `agents.chat` request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The agent to chat with.
    pub agent_id: String,
    /// The prompt.
    pub prompt: String,
    /// The caller's `session_id`, if it gave one (else the daemon mints `chat-<uuid>`).
    pub session_id: Option<String>,
    /// The caller's `conversation_id`, if it gave one (else `session:<session_id>`).
    pub conversation_id: Option<String>,
    /// Stream events (default true).
    pub stream: bool,
    /// The prompt came from speech.
    pub voice_input: bool,
    /// The model asked for.
    pub model: Option<String>,
    /// Image attachments, as given (checked).
    pub attachments: Vec<Value>,
}

fn field(name: &str, reason: impl std::fmt::Display) -> String {
    format!("agents.chat: {name}: {reason}")
}

/// Whether `id` is 1–128 bytes of `[A-Za-z0-9._-]`, plus `:` when `colon`.
pub fn valid_id(id: &str, colon: bool) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b) || (colon && b == b':'))
}

fn string(params: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(field(name, "must be a string")),
    }
}

fn boolean(params: &Map<String, Value>, name: &str, default: bool) -> Result<bool, String> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(field(name, "must be a boolean")),
    }
}

/// The image formats an `image_base64` attachment may hold, by their leading bytes.
fn image_format(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// Checks one attachment (an `ImageContentBlock`): an object with exactly one of
/// `image_base64` (PNG, JPEG, GIF or WebP, judged by its bytes; a `media_type`, if given,
/// must agree) or `image_url` (http or https).
fn check_attachment(index: usize, attachment: &Value) -> Result<(), String> {
    let name = format!("attachments[{index}]");
    let Some(block) = attachment.as_object() else {
        return Err(field(&name, "must be an object"));
    };
    if let Some(kind) = block.get("type") {
        if kind != "image" {
            return Err(field(&name, "type must be \"image\""));
        }
    }
    match (block.get("image_base64"), block.get("image_url")) {
        (Some(Value::String(data)), None) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|_| field(&name, "image_base64 is not valid base64"))?;
            let format = image_format(&bytes).ok_or_else(|| {
                field(&name, "image_base64 is not a PNG, JPEG, GIF or WebP image")
            })?;
            match block.get("media_type") {
                None | Some(Value::Null) => Ok(()),
                Some(Value::String(declared)) if declared == format => Ok(()),
                Some(_) => Err(field(
                    &name,
                    format!("media_type does not match the image ({format})"),
                )),
            }
        }
        (None, Some(Value::String(url))) => {
            let lower = url.to_ascii_lowercase();
            let rest = lower
                .strip_prefix("https://")
                .or_else(|| lower.strip_prefix("http://"));
            match rest {
                Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(()),
                _ => Err(field(&name, "image_url must be an http(s) URL")),
            }
        }
        (Some(_), Some(_)) => Err(field(&name, "give image_base64 or image_url, not both")),
        _ => Err(field(&name, "needs image_base64 or image_url (a string)")),
    }
}

impl ChatRequest {
    /// Reads and checks `agents.chat`'s params; the error is the `-32602` message.
    pub fn parse(params: &Value) -> Result<Self, String> {
        let empty = Map::new();
        let params = match params {
            Value::Object(map) => map,
            Value::Null => &empty,
            _ => return Err("agents.chat: params must be an object".into()),
        };
        if params.get("goal").is_some_and(|g| !g.is_null()) {
            return Err(field("goal", "is not supported by this daemon"));
        }
        let agent_id =
            string(params, "agent_id")?.ok_or_else(|| field("agent_id", "is required"))?;
        if agent_id.is_empty() {
            return Err(field("agent_id", "must not be empty"));
        }
        let prompt = string(params, "prompt")?.ok_or_else(|| field("prompt", "is required"))?;
        if prompt.is_empty() {
            return Err(field("prompt", "must not be empty"));
        }
        if prompt.len() > MAX_PROMPT_BYTES {
            return Err(field("prompt", "is larger than 1 MiB"));
        }
        let session_id = string(params, "session_id")?;
        if let Some(id) = &session_id {
            if !valid_id(id, true) {
                return Err(field("session_id", "must be 1-128 of [A-Za-z0-9._:-]"));
            }
        }
        let conversation_id = string(params, "conversation_id")?;
        if let Some(id) = &conversation_id {
            if !valid_id(id, false) {
                return Err(field("conversation_id", "must be 1-128 of [A-Za-z0-9._-]"));
            }
        }
        let attachments = match params.get("attachments") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                if items.len() > MAX_ATTACHMENTS {
                    return Err(field(
                        "attachments",
                        format!("at most {MAX_ATTACHMENTS} are allowed"),
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    check_attachment(i, item)?;
                }
                items.clone()
            }
            Some(_) => return Err(field("attachments", "must be an array")),
        };
        Ok(Self {
            agent_id,
            prompt,
            session_id,
            conversation_id,
            stream: boolean(params, "stream", true)?,
            voice_input: boolean(params, "voice_input", false)?,
            model: string(params, "model")?,
            attachments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn defaults_and_fields() {
        let r = ChatRequest::parse(&json!({"agent_id": "a", "prompt": "hi"})).unwrap();
        assert!(r.stream && !r.voice_input);
        assert_eq!(
            (r.session_id, r.conversation_id, r.model),
            (None, None, None)
        );
        let r = ChatRequest::parse(&json!({
            "agent_id": "a", "prompt": "hi", "session_id": "s:1", "conversation_id": "c.1",
            "stream": false, "voice_input": true, "model": "m"
        }))
        .unwrap();
        assert_eq!(r.session_id.as_deref(), Some("s:1"));
        assert!(!r.stream && r.voice_input);
    }

    #[test]
    fn every_breach_names_its_field() {
        let cases = [
            (json!({"prompt": "x"}), "agent_id: is required"),
            (json!({"agent_id": "a"}), "prompt: is required"),
            (
                json!({"agent_id": "a", "prompt": ""}),
                "prompt: must not be empty",
            ),
            (
                json!({"agent_id": "a", "prompt": 5}),
                "prompt: must be a string",
            ),
            (
                json!({"agent_id": "a", "prompt": "x".repeat(MAX_PROMPT_BYTES + 1)}),
                "prompt: is larger than 1 MiB",
            ),
            (
                json!({"agent_id": "a", "prompt": "x", "session_id": "a b"}),
                "session_id",
            ),
            (
                json!({"agent_id": "a", "prompt": "x", "conversation_id": "a:b"}),
                "conversation_id",
            ),
            (
                json!({"agent_id": "a", "prompt": "x", "goal": {"check": "y"}}),
                "goal",
            ),
            (
                json!({"agent_id": "a", "prompt": "x", "stream": "yes"}),
                "stream",
            ),
            (
                json!({"agent_id": "a", "prompt": "x", "attachments": {}}),
                "attachments",
            ),
        ];
        for (params, expected) in cases {
            let err = ChatRequest::parse(&params).unwrap_err();
            assert!(err.starts_with("agents.chat: "), "{err}");
            assert!(err.contains(expected), "{err} should name {expected}");
        }
    }

    #[test]
    fn attachments_are_checked_as_images() {
        let ok = |a: Value| {
            ChatRequest::parse(&json!({"agent_id": "a", "prompt": "x", "attachments": [a]}))
        };
        assert!(
            ok(json!({"type": "image", "image_base64": b64(PNG), "media_type": "image/png"}))
                .is_ok()
        );
        assert!(ok(json!({"image_base64": b64(b"GIF89a....")})).is_ok());
        assert!(ok(json!({"image_base64": b64(b"RIFF\0\0\0\0WEBPVP8 ")})).is_ok());
        assert!(ok(json!({"image_base64": b64(&[0xFF, 0xD8, 0xFF, 0xE0])})).is_ok());
        assert!(ok(json!({"image_url": "https://example.com/a.png"})).is_ok());
        for bad in [
            json!({"image_base64": b64(b"%PDF-1.7")}),
            json!({"image_base64": "not base64!"}),
            json!({"image_base64": b64(PNG), "media_type": "image/jpeg"}),
            json!({"image_url": "file:///etc/passwd"}),
            json!({"image_url": "https://"}),
            json!({"image_base64": b64(PNG), "image_url": "https://x"}),
            json!({"type": "audio", "image_url": "https://x"}),
            json!({}),
            json!("x"),
        ] {
            assert!(
                ok(bad.clone()).unwrap_err().contains("attachments[0]"),
                "{bad}"
            );
        }
    }
}
