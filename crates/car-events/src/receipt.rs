//! `runs.cancel` receipts (PROTOCOL.md §14.1) and the digests they are made of.
//!
//! A receipt is stored in the log (in [`crate::event::RunCancellationResult`]) exactly as
//! it was answered, so a retry gets the same bytes back, and anyone holding one can check
//! it offline: every digest is lowercase hex SHA-256, of the reason's UTF-8
//! ([`reason_digest`]), or of the RFC 8785 (JCS) canonical JSON of a value ([`jcs_digest`]):
//! the `ended` record as `runs.get_trace` serves it, and the receipt's nine other fields.
//! It lives here, beside the event that stores it, so that the daemon, `car-replay verify`
//! and the golden fixtures compute it one way.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The receipt format this build writes.
pub const RECEIPT_VERSION: u32 = 1;

/// How a cancellation ended, as the receipt's `status` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CancelStatus {
    /// This call ended the run.
    CancelledConfirmed,
    /// The run had already ended (or was ended as an orphan by a host).
    AlreadyTerminal,
    /// The owner's connection failed before the callback could be cancelled: the run is
    /// quarantined until a host cancels it as an orphan.
    TerminationUnconfirmed,
}

impl CancelStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelStatus::CancelledConfirmed => "cancelled_confirmed",
            CancelStatus::AlreadyTerminal => "already_terminal",
            CancelStatus::TerminationUnconfirmed => "termination_unconfirmed",
        }
    }

    /// The status of a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        [
            CancelStatus::CancelledConfirmed,
            CancelStatus::AlreadyTerminal,
            CancelStatus::TerminationUnconfirmed,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// A `runs.cancel` receipt, fields in the contract's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// [`RECEIPT_VERSION`].
    pub receipt_version: u32,
    /// The run.
    pub run_id: String,
    /// The caller's key.
    pub idempotency_key: String,
    /// [`reason_digest`] of the reason.
    pub reason_digest: String,
    /// `host`, `agent:<agent_id>` or `client:<client_id>`.
    pub principal: String,
    /// A [`CancelStatus`] name.
    pub status: String,
    /// [`jcs_digest`] of the run's `ended` record; `None` when the end is unconfirmed.
    pub terminal_digest: Option<String>,
    /// The action whose callback was abandoned, if one was.
    pub action_id: Option<String>,
    /// That callback's request id.
    pub request_id: Option<String>,
    /// [`jcs_digest`] of the nine fields above.
    pub receipt_digest: String,
}

/// Why a stored receipt does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// It is not a receipt of this format.
    #[error("not a version-{RECEIPT_VERSION} receipt: {0}")]
    Shape(String),
    /// Its digest is not the digest of its fields.
    #[error("receipt_digest {stored} does not match its fields (they digest to {computed})")]
    Digest {
        /// The digest it carries.
        stored: String,
        /// The digest of its fields.
        computed: String,
    },
}

/// The nine fields a receipt's digest covers.
#[derive(Serialize)]
struct Fields<'a> {
    receipt_version: u32,
    run_id: &'a str,
    idempotency_key: &'a str,
    reason_digest: &'a str,
    principal: &'a str,
    status: &'a str,
    terminal_digest: Option<&'a str>,
    action_id: Option<&'a str>,
    request_id: Option<&'a str>,
}

impl Receipt {
    /// A receipt with its digest computed.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        run_id: &str,
        idempotency_key: &str,
        reason_digest: &str,
        principal: &str,
        status: CancelStatus,
        terminal_digest: Option<String>,
        action_id: Option<String>,
        request_id: Option<String>,
    ) -> Self {
        let mut receipt = Receipt {
            receipt_version: RECEIPT_VERSION,
            run_id: run_id.to_owned(),
            idempotency_key: idempotency_key.to_owned(),
            reason_digest: reason_digest.to_owned(),
            principal: principal.to_owned(),
            status: status.as_str().to_owned(),
            terminal_digest,
            action_id,
            request_id,
            receipt_digest: String::new(),
        };
        receipt.receipt_digest = receipt.computed_digest();
        receipt
    }

    /// The digest of the receipt's nine other fields.
    pub fn computed_digest(&self) -> String {
        let fields = Fields {
            receipt_version: self.receipt_version,
            run_id: &self.run_id,
            idempotency_key: &self.idempotency_key,
            reason_digest: &self.reason_digest,
            principal: &self.principal,
            status: &self.status,
            terminal_digest: self.terminal_digest.as_deref(),
            action_id: self.action_id.as_deref(),
            request_id: self.request_id.as_deref(),
        };
        jcs_digest(&serde_json::to_value(&fields).expect("plain fields serialize"))
    }

    /// The receipt stored as `value`, checked: the right shape and a digest that
    /// recomputes.
    pub fn parse_checked(value: &Value) -> Result<Self, ReceiptError> {
        let receipt: Receipt = serde_json::from_value(value.clone())
            .map_err(|e| ReceiptError::Shape(e.to_string()))?;
        if receipt.receipt_version != RECEIPT_VERSION {
            return Err(ReceiptError::Shape(format!(
                "receipt_version {}",
                receipt.receipt_version
            )));
        }
        if CancelStatus::parse(&receipt.status).is_none() {
            return Err(ReceiptError::Shape(format!("status {:?}", receipt.status)));
        }
        let computed = receipt.computed_digest();
        if computed != receipt.receipt_digest {
            return Err(ReceiptError::Digest {
                stored: receipt.receipt_digest,
                computed,
            });
        }
        Ok(receipt)
    }

    /// The receipt as JSON, fields in the contract's order.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("plain fields serialize")
    }
}

/// Lowercase hex SHA-256 of a reason's UTF-8.
pub fn reason_digest(reason: &str) -> String {
    hex::encode(Sha256::digest(reason.as_bytes()))
}

/// Lowercase hex SHA-256 of the RFC 8785 canonical JSON of `value`.
pub fn jcs_digest(value: &Value) -> String {
    let canonical =
        serde_json_canonicalizer::to_vec(value).expect("a serde_json::Value always serializes");
    hex::encode(Sha256::digest(&canonical))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reason_digest_is_sha256_of_the_utf8() {
        // sha256("abc"), the FIPS 180-2 test vector.
        assert_eq!(
            reason_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn jcs_digest_ignores_key_order_and_number_spelling() {
        let a = json!({"b": 1000, "a": [1.5, "é"], "c": {"z": 1, "y": null}});
        let b: Value =
            serde_json::from_str(r#"{"c":{"y":null,"z":1.0},"a":[1.50,"\u00e9"],"b":1e3}"#)
                .unwrap();
        assert_eq!(jcs_digest(&a), jcs_digest(&b));
        // The canonical form of `{"a":1}` digested by hand.
        assert_eq!(
            jcs_digest(&json!({"a": 1})),
            hex::encode(Sha256::digest(br#"{"a":1}"#))
        );
    }

    #[test]
    fn a_receipt_checks_out_and_a_changed_field_does_not() {
        let receipt = Receipt::new(
            "run-1",
            "key-1",
            &reason_digest("user pressed stop"),
            "host",
            CancelStatus::CancelledConfirmed,
            Some(jcs_digest(&json!({"record": "ended"}))),
            Some("a1".into()),
            Some("req-1".into()),
        );
        let value = receipt.to_value();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "receipt_version",
                "run_id",
                "idempotency_key",
                "reason_digest",
                "principal",
                "status",
                "terminal_digest",
                "action_id",
                "request_id",
                "receipt_digest"
            ]
        );
        assert_eq!(Receipt::parse_checked(&value).unwrap(), receipt);
        let mut tampered = value.clone();
        tampered["status"] = json!("already_terminal");
        assert!(matches!(
            Receipt::parse_checked(&tampered),
            Err(ReceiptError::Digest { .. })
        ));
        let mut odd = value;
        odd["status"] = json!("maybe");
        assert!(matches!(
            Receipt::parse_checked(&odd),
            Err(ReceiptError::Shape(_))
        ));
    }
}
