//! Tool calls: `tools.execute` requests the daemon sends to an agent session on behalf of
//! a proposal's actions, in flight until their reply, their deadline or their cancel.
//!
//! The whole aggregate in one place: its slice of the state (`ToolCalls`, the calls in
//! flight), its fold (`tool_call.dispatched` and the five ways a call ends) and its
//! decisions ([`DispatchToolCall`], [`FinishToolCall`]). Every tool call event is indexed
//! under the run it names, when that run is retained, so a trace reads it back. The fold
//! runs from inside [`State::apply`], the decisions from inside [`crate::decide()`].

use std::collections::BTreeMap;

use car_events::event::{
    Event, ToolCallCancelled, ToolCallCompleted, ToolCallDispatched, ToolCallFailed,
    ToolCallTimedOut,
};
use car_events::{Envelope, JsonText, Seq};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::state::{Contradiction, State};

/// A tool call waiting for its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The dispatch as recorded.
    pub dispatch: ToolCallDispatched,
    /// When it was sent.
    pub dispatched_at: DateTime<Utc>,
    /// Its `tool_call.dispatched` event.
    pub dispatched_seq: Seq,
}

/// The tool calls slice of the state: the calls in flight, by request id.
#[derive(Debug, Clone, Default)]
pub(crate) struct ToolCalls {
    tool_calls: BTreeMap<String, ToolCall>,
}

impl ToolCalls {
    /// Folds a `tool_call.*` event (other events are not this slice's), handing `relate`
    /// the run the event belongs to. On error the slice is unchanged and `relate` is not
    /// called.
    pub(crate) fn apply(
        &mut self,
        env: &Envelope,
        relate: impl FnOnce(Option<&str>),
    ) -> Result<(), Contradiction> {
        let (seq, ts) = (env.seq, env.ts);
        match &env.event {
            Event::ToolCallDispatched(e) => {
                if self.tool_calls.contains_key(&e.request_id) {
                    return Err(Contradiction::DuplicateToolCall(e.request_id.clone()));
                }
                relate(e.run_id.as_deref());
                self.tool_calls.insert(
                    e.request_id.clone(),
                    ToolCall {
                        dispatch: e.clone(),
                        dispatched_at: ts,
                        dispatched_seq: seq,
                    },
                );
            }
            Event::ToolCallCompleted(e) => self.finish(&e.request_id, relate)?,
            Event::ToolCallFailed(e) => self.finish(&e.request_id, relate)?,
            Event::ToolCallTimedOut(e) => self.finish(&e.request_id, relate)?,
            Event::ToolCallCancelled(e) => self.finish(&e.request_id, relate)?,
            Event::ToolCallIndeterminate(e) => self.finish(&e.request_id, relate)?,
            _ => {}
        }
        Ok(())
    }

    fn finish(
        &mut self,
        request_id: &str,
        relate: impl FnOnce(Option<&str>),
    ) -> Result<(), Contradiction> {
        let call = self
            .tool_calls
            .remove(request_id)
            .ok_or_else(|| Contradiction::UnknownToolCall(request_id.to_owned()))?;
        relate(call.dispatch.run_id.as_deref());
        Ok(())
    }

    /// A tool call in flight.
    pub(crate) fn get(&self, request_id: &str) -> Option<&ToolCall> {
        self.tool_calls.get(request_id)
    }

    /// Every tool call in flight, by request id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &ToolCall> {
        self.tool_calls.values()
    }
}

/// A `tools.execute` request is about to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchToolCall {
    /// The call as it will be recorded.
    pub dispatch: ToolCallDispatched,
}

/// How a tool call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolCallOutcome {
    /// A result.
    Completed {
        /// The output.
        output: Value,
        /// Dispatch to reply.
        elapsed_ms: u64,
    },
    /// An error reply (or an `{"error": …}` result).
    Failed {
        /// The message.
        error: String,
        /// Dispatch to reply.
        elapsed_ms: u64,
    },
    /// No reply in time.
    TimedOut {
        /// The deadline.
        elapsed_ms: u64,
    },
    /// Abandoned.
    Cancelled {
        /// Why.
        reason: String,
    },
}

/// A tool call ended.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishToolCall {
    /// The call.
    pub request_id: String,
    /// How.
    pub outcome: ToolCallOutcome,
}

/// Records the dispatch as given.
pub(crate) fn dispatch_tool_call(c: &DispatchToolCall) -> Vec<Event> {
    vec![Event::ToolCallDispatched(c.dispatch.clone())]
}

/// Records how a call ended; nothing when it already has.
pub(crate) fn finish_tool_call(state: &State, c: &FinishToolCall) -> Vec<Event> {
    if state.tool_call(&c.request_id).is_none() {
        // Already finished (a late reply after a timeout, a reply after a cancel).
        return vec![];
    }
    let request_id = c.request_id.clone();
    vec![match &c.outcome {
        ToolCallOutcome::Completed { output, elapsed_ms } => {
            Event::ToolCallCompleted(ToolCallCompleted {
                request_id,
                output: JsonText::from_value(output),
                elapsed_ms: *elapsed_ms,
            })
        }
        ToolCallOutcome::Failed { error, elapsed_ms } => Event::ToolCallFailed(ToolCallFailed {
            request_id,
            error: error.clone(),
            elapsed_ms: *elapsed_ms,
        }),
        ToolCallOutcome::TimedOut { elapsed_ms } => Event::ToolCallTimedOut(ToolCallTimedOut {
            request_id,
            elapsed_ms: *elapsed_ms,
        }),
        ToolCallOutcome::Cancelled { reason } => Event::ToolCallCancelled(ToolCallCancelled {
            request_id,
            reason: reason.clone(),
        }),
    }]
}

/// The request id a tool call's outcome event names.
pub(crate) fn request_id(event: &Event) -> Option<&str> {
    match event {
        Event::ToolCallCompleted(e) => Some(&e.request_id),
        Event::ToolCallFailed(e) => Some(&e.request_id),
        Event::ToolCallTimedOut(e) => Some(&e.request_id),
        Event::ToolCallCancelled(e) => Some(&e.request_id),
        Event::ToolCallIndeterminate(e) => Some(&e.request_id),
        _ => None,
    }
}

/// The action error of a call that timed out: ``tool '<tool>' callback timed out (<N>s)``
/// (PROTOCOL.md §14.5), `waited_ms` the whole wait (the dispatch's `timeout_ms`).
pub fn timeout_message(tool: &str, waited_ms: u64) -> String {
    let seconds = if waited_ms % 1000 == 0 {
        format!("{}s", waited_ms / 1000)
    } else {
        format!("{}s", waited_ms as f64 / 1000.0)
    };
    format!("tool '{tool}' callback timed out ({seconds})")
}

/// The action error of a call abandoned with `reason` (a `tool_call.cancelled` event's):
/// the tool client's disconnect, or the text of a run's cancellation.
pub fn cancel_message(reason: &str) -> String {
    match reason {
        DISCONNECTED => CLIENT_DISCONNECTED.to_owned(),
        other => other.to_owned(),
    }
}

/// `tool_call.cancelled`'s reason when the tool client disconnected.
pub const DISCONNECTED: &str = "disconnected";
/// The action error when the tool client disconnected mid-call.
pub const CLIENT_DISCONNECTED: &str = "client disconnected";
