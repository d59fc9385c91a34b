//! The stored record format: how an [`Envelope`] becomes bytes in the log and back.
//!
//! ```text
//! +---------+---------------------+------------------------------------------+
//! | version | crc32 (LE, 4 bytes) | body: bincode 2 (standard config) of the |
//! | 1 byte  | over version + body | StoredEnvelope (seq, id, ts, schema, ev) |
//! +---------+---------------------+------------------------------------------+
//! ```
//!
//! Format 1 is frozen: the bincode configuration ([`bincode::config::standard`]: little
//! endian, varint integers) and the field order of `StoredEnvelope` must never change.
//! A different layout gets a new version byte and a new decoding branch, and the old
//! branch stays forever.
//!
//! Decoding verifies the checksum before anything else, then that the decoded seq is the
//! one expected (the key it was stored under). Every failure is a [`CodecError`] that names
//! the seq; nothing here panics on any input.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::{Envelope, Seq};
use crate::event::Event;

/// The record format version written by this build.
pub const FORMAT_V1: u8 = 1;

/// Bytes before the body: version byte + CRC32.
const HEADER_LEN: usize = 5;

/// Why a stored record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Shorter than the header.
    #[error("record at seq {seq} is truncated ({len} bytes)")]
    Truncated {
        /// The seq being decoded.
        seq: Seq,
        /// How many bytes there were.
        len: usize,
    },
    /// An unknown format version byte.
    #[error("record at seq {seq} has unknown format version {version}")]
    UnknownFormat {
        /// The seq being decoded.
        seq: Seq,
        /// The version byte found.
        version: u8,
    },
    /// The bytes are not the bytes that were written.
    #[error(
        "record at seq {seq} fails its checksum (stored {stored:#010x}, computed {computed:#010x})"
    )]
    Checksum {
        /// The seq being decoded.
        seq: Seq,
        /// The CRC in the record.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
    /// The checksum matched but the body does not decode (a newer writer, or a bug).
    #[error("record at seq {seq} does not decode: {reason}")]
    Body {
        /// The seq being decoded.
        seq: Seq,
        /// The decoder's message.
        reason: String,
    },
    /// The body decodes but belongs to another seq.
    #[error("record stored at seq {seq} claims seq {found}")]
    WrongSeq {
        /// The seq it was stored under.
        seq: Seq,
        /// The seq inside the record.
        found: Seq,
    },
    /// Encoding failed (never expected for our own types).
    #[error("event at seq {seq} does not encode: {reason}")]
    Encode {
        /// The seq being encoded.
        seq: Seq,
        /// The encoder's message.
        reason: String,
    },
}

impl CodecError {
    /// The seq the error is about.
    pub fn seq(&self) -> Seq {
        match self {
            CodecError::Truncated { seq, .. }
            | CodecError::UnknownFormat { seq, .. }
            | CodecError::Checksum { seq, .. }
            | CodecError::Body { seq, .. }
            | CodecError::WrongSeq { seq, .. }
            | CodecError::Encode { seq, .. } => *seq,
        }
    }
}

/// The frozen body layout of format 1.
#[derive(Serialize, Deserialize)]
struct StoredEnvelope {
    seq: u64,
    event_id: u128,
    /// Nanoseconds since the Unix epoch (covers years 1677–2262).
    ts_nanos: i64,
    schema_version: u16,
    event: Event,
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes an envelope as a format-1 record.
pub fn encode(envelope: &Envelope) -> Result<Vec<u8>, CodecError> {
    let ts_nanos = envelope
        .ts
        .timestamp_nanos_opt()
        .ok_or_else(|| CodecError::Encode {
            seq: envelope.seq,
            reason: format!("timestamp {} is out of range", envelope.ts),
        })?;
    let stored = StoredEnvelope {
        seq: envelope.seq,
        event_id: envelope.event_id.as_u128(),
        ts_nanos,
        schema_version: envelope.schema_version,
        event: envelope.event.clone(),
    };
    let mut out = vec![FORMAT_V1, 0, 0, 0, 0];
    bincode::serde::encode_into_std_write(&stored, &mut out, config()).map_err(|e| {
        CodecError::Encode {
            seq: envelope.seq,
            reason: e.to_string(),
        }
    })?;
    let crc = checksum(FORMAT_V1, &out[HEADER_LEN..]);
    out[1..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes the record stored under `seq`, verifying version, checksum and seq.
pub fn decode(seq: Seq, bytes: &[u8]) -> Result<Envelope, CodecError> {
    let body = verify(seq, bytes)?;
    let (stored, used): (StoredEnvelope, usize) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Body {
            seq,
            reason: e.to_string(),
        })?;
    if used != body.len() {
        return Err(CodecError::Body {
            seq,
            reason: format!("{} trailing bytes", body.len() - used),
        });
    }
    if stored.seq != seq {
        return Err(CodecError::WrongSeq {
            seq,
            found: stored.seq,
        });
    }
    Ok(Envelope {
        seq,
        event_id: Uuid::from_u128(stored.event_id),
        ts: DateTime::<Utc>::from_timestamp_nanos(stored.ts_nanos),
        schema_version: stored.schema_version,
        event: stored.event,
    })
}

/// Checks header and checksum without decoding the body; returns the body.
pub fn verify(seq: Seq, bytes: &[u8]) -> Result<&[u8], CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::Truncated {
            seq,
            len: bytes.len(),
        });
    }
    let version = bytes[0];
    if version != FORMAT_V1 {
        return Err(CodecError::UnknownFormat { seq, version });
    }
    let mut stored = [0u8; 4];
    stored.copy_from_slice(&bytes[1..HEADER_LEN]);
    let stored = u32::from_le_bytes(stored);
    let body = &bytes[HEADER_LEN..];
    let computed = checksum(version, body);
    if stored != computed {
        return Err(CodecError::Checksum {
            seq,
            stored,
            computed,
        });
    }
    Ok(body)
}

fn checksum(version: u8, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[version]);
    hasher.update(body);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{DaemonStopped, Event};

    fn sample(seq: Seq) -> Envelope {
        Envelope {
            seq,
            event_id: Uuid::from_u128(0x1234),
            ts: DateTime::<Utc>::from_timestamp_nanos(1_700_000_000_123_456_789),
            schema_version: crate::SCHEMA_VERSION,
            event: Event::DaemonStopped(DaemonStopped {
                reason: "signal".into(),
            }),
        }
    }

    #[test]
    fn round_trips() {
        let env = sample(7);
        let bytes = encode(&env).unwrap();
        assert_eq!(decode(7, &bytes).unwrap(), env);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = encode(&sample(3)).unwrap();
        for i in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let err = decode(3, &bad).unwrap_err();
            assert_eq!(err.seq(), 3, "bit {i}: {err}");
        }
    }

    #[test]
    fn wrong_seq_truncation_and_unknown_format_are_errors() {
        let bytes = encode(&sample(3)).unwrap();
        assert!(matches!(
            decode(4, &bytes),
            Err(CodecError::WrongSeq { seq: 4, found: 3 })
        ));
        assert!(matches!(
            decode(3, &bytes[..3]),
            Err(CodecError::Truncated { seq: 3, len: 3 })
        ));
        let mut v9 = bytes.clone();
        v9[0] = 9;
        assert!(matches!(
            decode(3, &v9),
            Err(CodecError::UnknownFormat { version: 9, .. })
        ));
        assert!(decode(3, &[]).is_err());
    }
}
