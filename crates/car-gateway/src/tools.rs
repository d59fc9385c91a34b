//! A session's tools, policies and tool calls in flight (PROTOCOL.md §4).
//!
//! The daemon calls tools *back* on the client that submitted a proposal: it sends a
//! `tools.execute` request and waits for the reply with that request id. Replies arrive on
//! the connection's reader, which hands them to [`ToolSession::on_reply`]; the proposal
//! task waiting for that id gets it through a oneshot. A reply to an unknown id (late,
//! duplicated, made up) is dropped without harm. When the connection ends, every call in
//! flight fails at once, and later calls fail without being sent.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::oneshot;

/// A tool the client can run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct ToolSpec {
    /// Its name.
    pub(crate) name: String,
    /// What it does.
    #[serde(default)]
    pub(crate) description: Option<String>,
    /// Its parameter schema, as the client gave it.
    #[serde(default)]
    pub(crate) parameters: Option<Value>,
}

/// A policy rule (PROTOCOL.md §4.1).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Rule {
    /// Deny every call of the tool.
    DenyTool {
        /// The tool.
        target: String,
    },
    /// Deny calls whose `parameters[key]`, as a string, contains `pattern`.
    DenyToolParam {
        /// The tool.
        target: String,
        /// The parameter.
        key: String,
        /// The forbidden text.
        pattern: String,
    },
}

/// A named policy.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Policy {
    /// Its name (reported when it rejects an action).
    pub(crate) name: String,
    /// What it denies.
    pub(crate) rule: Rule,
}

impl Policy {
    /// Whether the policy denies calling `tool` with `parameters`.
    pub(crate) fn denies(&self, tool: &str, parameters: &Value) -> bool {
        match &self.rule {
            Rule::DenyTool { target } => target == tool,
            Rule::DenyToolParam {
                target,
                key,
                pattern,
            } => {
                target == tool
                    && parameters.get(key).is_some_and(|value| {
                        let text = match value {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        text.contains(pattern.as_str())
                    })
            }
        }
    }
}

/// How a tool call came back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ToolReply {
    /// A JSON-RPC `result`.
    Result(Value),
    /// A JSON-RPC `error` object.
    Error(Value),
    /// The connection ended before a reply.
    Gone(String),
}

#[derive(Debug, Default)]
struct Calls {
    waiting: HashMap<String, oneshot::Sender<ToolReply>>,
    /// Set when the connection ends: new calls fail at once.
    gone: Option<String>,
}

/// Tools and calls of one session.
#[derive(Debug, Default)]
pub(crate) struct ToolSession {
    /// Registered tools, by name.
    pub(crate) tools: BTreeMap<String, ToolSpec>,
    /// Policies, in registration order.
    pub(crate) policies: Vec<Policy>,
    calls: Arc<Mutex<Calls>>,
}

/// The calls-in-flight side of a [`ToolSession`], for the proposal task.
#[derive(Debug, Clone)]
pub(crate) struct CallTable(Arc<Mutex<Calls>>);

impl CallTable {
    /// Expects a reply to `request_id`.
    pub(crate) fn expect(&self, request_id: &str) -> oneshot::Receiver<ToolReply> {
        let (tx, rx) = oneshot::channel();
        let mut calls = self.0.lock();
        match &calls.gone {
            Some(reason) => {
                let _ = tx.send(ToolReply::Gone(reason.clone()));
            }
            None => {
                calls.waiting.insert(request_id.to_owned(), tx);
            }
        }
        rx
    }

    /// Whether the connection has ended (calls would fail at once).
    pub(crate) fn is_gone(&self) -> bool {
        self.0.lock().gone.is_some()
    }

    /// Stops expecting a reply (after a timeout): a late reply is then ignored.
    pub(crate) fn forget(&self, request_id: &str) {
        self.0.lock().waiting.remove(request_id);
    }
}

impl ToolSession {
    /// The table proposals use to wait for replies.
    pub(crate) fn calls(&self) -> CallTable {
        CallTable(self.calls.clone())
    }

    /// A reply arrived from the client.
    pub(crate) fn on_reply(&self, id: &Value, outcome: Result<Value, Value>) {
        let key = match id {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let waiter = self.calls.lock().waiting.remove(&key);
        match waiter {
            Some(tx) => {
                let _ = tx.send(match outcome {
                    Ok(result) => ToolReply::Result(result),
                    Err(error) => ToolReply::Error(error),
                });
            }
            None => tracing::debug!(id = %key, "reply to no call in flight ignored"),
        }
    }

    /// The connection ended: fail every call in flight and every later one.
    pub(crate) fn fail_all(&self, reason: &str) {
        let mut calls = self.calls.lock();
        calls.gone = Some(reason.to_owned());
        for (_, tx) in calls.waiting.drain() {
            let _ = tx.send(ToolReply::Gone(reason.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn param_policies_match_string_forms() {
        let policy = Policy {
            name: "no-rm".into(),
            rule: Rule::DenyToolParam {
                target: "shell".into(),
                key: "cmd".into(),
                pattern: "rm -rf".into(),
            },
        };
        assert!(policy.denies("shell", &json!({"cmd": "sudo rm -rf /"})));
        assert!(!policy.denies("shell", &json!({"cmd": "ls"})));
        assert!(!policy.denies("other", &json!({"cmd": "rm -rf"})));
        assert!(!policy.denies("shell", &json!({})));
        let numeric = Policy {
            name: "n".into(),
            rule: Rule::DenyToolParam {
                target: "t".into(),
                key: "n".into(),
                pattern: "42".into(),
            },
        };
        assert!(numeric.denies("t", &json!({"n": 1042})));
    }

    #[tokio::test]
    async fn replies_reach_their_call_and_strays_are_ignored() {
        let session = ToolSession::default();
        let calls = session.calls();
        let rx = calls.expect("r1");
        session.on_reply(&json!("nope"), Ok(json!(1)));
        session.on_reply(&json!("r1"), Ok(json!({"ok": true})));
        assert_eq!(rx.await.unwrap(), ToolReply::Result(json!({"ok": true})));
        session.on_reply(&json!("r1"), Ok(json!(2)));
    }

    #[tokio::test]
    async fn a_gone_connection_fails_calls_now_and_later() {
        let session = ToolSession::default();
        let calls = session.calls();
        let waiting = calls.expect("a");
        session.fail_all("the client disconnected");
        assert!(matches!(waiting.await.unwrap(), ToolReply::Gone(_)));
        assert!(matches!(
            calls.expect("b").await.unwrap(),
            ToolReply::Gone(_)
        ));
    }
}
