//! What a handler works with: the [`Session`] of its connection (who is asking, its
//! subscriptions, tool calls and read-your-writes [`Fence`]), the [`Responder`] that sends
//! its one response, and the shapes of every write and read
//! ([`Session::reply_when_durable`], [`Session::reply_after_writes`]).
//!
//! It sits above the runtime ([`crate::app`]) and below the method table
//! ([`crate::handlers`]); the socket itself is [`crate::connection`]'s.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use car_events::event::Event;
use car_projections::memory::Scope;
use car_projections::{Actor, Command, Refusal, State};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::app::{App, Committed, Submitted};
use crate::outbound::Outbound;
use crate::rpc::{self, RpcError};
use crate::tools::ToolSession;

/// Collects the responses of a JSON-RPC batch and sends them as one array.
#[derive(Debug)]
pub(crate) struct Batch {
    responses: Mutex<Vec<Value>>,
    remaining: AtomicUsize,
    out: Outbound,
}

#[derive(Debug)]
pub(crate) enum Sink {
    /// A single call: its response is a frame of its own.
    Direct(Outbound),
    /// One call of a batch: its response joins the batch's array.
    Batch(Arc<Batch>),
}

impl Batch {
    /// A batch whose `answered` calls (requests and invalid messages) each get a response.
    pub(crate) fn new(answered: usize, out: Outbound) -> Arc<Self> {
        Arc::new(Self {
            responses: Mutex::new(Vec::with_capacity(answered)),
            remaining: AtomicUsize::new(answered),
            out,
        })
    }
}

/// Sends the response to one call, exactly once.
#[derive(Debug)]
pub(crate) struct Responder {
    /// `None` for a notification: nothing is sent.
    id: Option<Value>,
    sink: Option<Sink>,
}

impl Responder {
    /// The responder of a call with `id` (`None`: a notification) whose response goes to
    /// `sink` (`None`: nowhere).
    pub(crate) fn new(id: Option<Value>, sink: Option<Sink>) -> Self {
        Self { id, sink }
    }

    /// Sends the response.
    pub(crate) async fn send(mut self, result: Result<Value, RpcError>) {
        if let Some(sink) = self.sink.take() {
            deliver(self.id.take(), sink, result).await;
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        // Only reached when a handler panicked or never answered: the client still gets
        // its one response.
        if let Some(sink) = self.sink.take() {
            let id = self.id.take();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                tracing::error!(?id, "a handler ended without responding");
                runtime.spawn(deliver(
                    id,
                    sink,
                    Err(RpcError::Internal("internal error".into())),
                ));
            }
        }
    }
}

async fn deliver(id: Option<Value>, sink: Sink, result: Result<Value, RpcError>) {
    match sink {
        Sink::Direct(out) => {
            if let Some(id) = id {
                out.send(&rpc::response(&id, &result)).await;
            }
        }
        Sink::Batch(batch) => {
            if let Some(id) = id {
                batch.responses.lock().push(rpc::response(&id, &result));
            }
            if batch.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                let responses = std::mem::take(&mut *batch.responses.lock());
                if !responses.is_empty() {
                    batch.out.send(&Value::Array(responses)).await;
                }
            }
        }
    }
}

/// Orders a session's reads after its own earlier writes: a read waits until every write
/// the session queued before it is durable (read-your-writes for pipelining clients).
///
/// Writes are numbered in queue order. The single writer decides and answers them in that
/// order, so once write `n` is answered every earlier one is too: "done" is the highest
/// number answered, and a read queued after write `n` waits for done ≥ n.
#[derive(Debug)]
pub(crate) struct Fence {
    issued: u64,
    done: Arc<watch::Sender<u64>>,
}

/// Marks its write answered when dropped (success, refusal or failure alike).
#[derive(Debug)]
pub(crate) struct WriteTicket {
    number: u64,
    done: Arc<watch::Sender<u64>>,
}

impl Drop for WriteTicket {
    fn drop(&mut self) {
        let number = self.number;
        self.done.send_if_modified(|done| {
            let moved = number > *done;
            *done = (*done).max(number);
            moved
        });
    }
}

impl Fence {
    pub(crate) fn new() -> Self {
        Self {
            issued: 0,
            done: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Registers a write queued now.
    pub(crate) fn write(&mut self) -> WriteTicket {
        self.issued += 1;
        WriteTicket {
            number: self.issued,
            done: self.done.clone(),
        }
    }

    /// Resolves once every write registered so far is done.
    pub(crate) fn reads_after_writes(&self) -> impl Future<Output = ()> + Send + 'static {
        let target = self.issued;
        let mut done = self.done.subscribe();
        async move {
            let _ = done.wait_for(|d| *d >= target).await;
        }
    }
}

/// A gated call, approved, coming back to the reader to run.
#[derive(Debug)]
pub(crate) struct Deferred {
    /// The method.
    pub(crate) method: String,
    /// Its params.
    pub(crate) params: Value,
    /// Its responder.
    pub(crate) responder: Responder,
}

/// A write queued by a session: its command on the writer and its place in the session's
/// [`Fence`] (released when the write is answered, or dropped).
#[derive(Debug)]
pub(crate) struct QueuedWrite<R> {
    submitted: Submitted<R>,
    _ticket: WriteTicket,
}

impl<R> QueuedWrite<R> {
    /// Waits until the write is durable (or refused, or failed).
    pub(crate) async fn wait(self) -> Result<Result<Committed<R>, Refusal>, RpcError> {
        self.submitted.wait().await
    }

    /// [`QueuedWrite::wait`], with a refusal as the error it answers.
    pub(crate) async fn committed(self) -> Result<Committed<R>, RpcError> {
        self.wait().await?.map_err(RpcError::from)
    }
}

/// Per-session state, owned by the reader task.
#[derive(Debug)]
pub(crate) struct Session {
    /// The daemon.
    pub(crate) app: Arc<App>,
    /// This session's id.
    pub(crate) client_id: String,
    /// Who it is, once authenticated (at once when auth is disabled).
    pub(crate) actor: Option<Actor>,
    /// Whether `session.auth` succeeded (a second one is refused).
    pub(crate) authenticated: bool,
    /// The version and capabilities `server.handshake` negotiated (`None`: no handshake
    /// yet, so version 2 without capabilities, and no `host.*` methods).
    pub(crate) protocol: Option<crate::protocol::Negotiated>,
    /// The run started last by this session (proposal actions are recorded in it).
    pub(crate) current_run: Option<String>,
    /// The current run was taken over by `runs.resume` (§14.2): recovery only, so
    /// `proposal.submit` answers stored results and runs nothing.
    pub(crate) current_run_resumed: bool,
    /// Where frames go.
    pub(crate) out: Outbound,
    /// Live subscriptions, by key (`run:<id>`, `log:<id>`, `host`), to cancel their tails.
    pub(crate) subscriptions: HashMap<String, CancellationToken>,
    /// Read-your-writes ordering.
    pub(crate) fence: Fence,
    /// Tools, policies and tool calls in flight (proposals).
    pub(crate) tools: ToolSession,
    /// Cancelled when this connection must close (after `-32001`).
    pub(crate) closing: CancellationToken,
    /// Where approved gated calls come back to the reader.
    pub(crate) deferred: mpsc::UnboundedSender<Deferred>,
    /// This session's own events (its opening, its authentication) that the log could not
    /// take when they happened (a full disk), in order: written before its first write, so
    /// that a session can connect and read while no write is possible.
    pub(crate) unrecorded: Vec<Command>,
    /// The memory scope `memory.*` works on (PROTOCOL.md §11.1): `ns:<memory_namespace>`
    /// if `session.auth` gave one, else `agent:<agent_id>` if agent-bound, else `shared`.
    pub(crate) memory_scope: Scope,
}

impl Session {
    /// Who the session is (`None` before authentication).
    pub(crate) fn actor(&self) -> Result<&Actor, RpcError> {
        self.actor.as_ref().ok_or(RpcError::AuthRequired)
    }

    /// Runs `work` in its own task and sends its result, or `-32004` after the handler
    /// deadline.
    pub(crate) fn reply_later<F>(&self, responder: Responder, work: F)
    where
        F: Future<Output = Result<Value, RpcError>> + Send + 'static,
    {
        let deadline = self.app.config.handler_deadline;
        tokio::spawn(async move {
            let result = tokio::time::timeout(deadline, work)
                .await
                .unwrap_or(Err(RpcError::Deadline));
            responder.send(result).await;
        });
    }

    /// Records one of this session's own events (see [`Session::unrecorded`]): now, after
    /// any that are still unrecorded; or, when the log cannot take writes now and
    /// `may_wait`, later, before this session's first write.
    pub(crate) async fn record(
        &mut self,
        command: Command,
        may_wait: bool,
    ) -> Result<(), RpcError> {
        let recorded = match self.record_unrecorded().await {
            Ok(()) => self.app.execute(command.clone(), |_, _| ()).await,
            Err(err) => Err(err),
        };
        match recorded {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(refusal)) => Err(refusal.into()),
            Err(RpcError::Unavailable(reason)) if may_wait => {
                tracing::warn!(client_id = %self.client_id, %reason, "session event left for later: the log cannot take writes now");
                self.unrecorded.push(command);
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Writes the session's own events the log could not take before, in order; waits
    /// for them (only ever after a full disk: a session's first write afterwards). The
    /// method table calls it before every method that may write.
    pub(crate) async fn record_unrecorded(&mut self) -> Result<(), RpcError> {
        while let Some(command) = self.unrecorded.first().cloned() {
            self.app.execute(command, |_, _| ()).await??;
            self.unrecorded.remove(0);
        }
        Ok(())
    }

    /// Queues `command` on the single writer, now, in this session's frame order (see
    /// [`App::submit`] for `extract`), and registers it with the session's [`Fence`].
    pub(crate) async fn queue<R, F>(
        &mut self,
        command: Command,
        extract: F,
    ) -> Result<QueuedWrite<R>, RpcError>
    where
        R: Send + 'static,
        F: FnMut(&State, &[Event]) -> R + Send + 'static,
    {
        let submitted = self.app.submit(command, extract).await?;
        Ok(QueuedWrite {
            submitted,
            _ticket: self.fence.write(),
        })
    }

    /// [`Session::queue`] for a command that depends on the state it is decided against.
    pub(crate) async fn queue_with<R, B, F>(
        &mut self,
        build: B,
        extract: F,
    ) -> Result<QueuedWrite<R>, RpcError>
    where
        R: Send + 'static,
        B: FnMut(&State) -> Command + Send + 'static,
        F: FnMut(&State, &[Event]) -> R + Send + 'static,
    {
        let submitted = self.app.submit_with(build, extract).await?;
        Ok(QueuedWrite {
            submitted,
            _ticket: self.fence.write(),
        })
    }

    /// The shape of every plain write: `queued` is what the reader did (parse, queue); once
    /// the write is durable, `answer` turns its outcome into the response, on its own task
    /// under the handler deadline. A failure to queue is answered at once.
    pub(crate) fn reply_when_durable<C, R, F, Fut>(
        &self,
        responder: Responder,
        queued: Result<(C, QueuedWrite<R>), RpcError>,
        answer: F,
    ) where
        C: Send + 'static,
        R: Send + 'static,
        F: FnOnce(C, Result<Committed<R>, Refusal>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Value, RpcError>> + Send,
    {
        match queued {
            Err(err) => {
                tokio::spawn(responder.send(Err(err)));
            }
            Ok((context, write)) => self.reply_later(responder, async move {
                let outcome = write.wait().await?;
                answer(context, outcome).await
            }),
        }
    }

    /// The shape of every plain read: `prepared` is what the reader parsed and checked;
    /// once this session's earlier writes are durable (read-your-writes, see [`Fence`]),
    /// `answer` runs on its own task under the handler deadline. A failure to prepare is
    /// answered at once.
    pub(crate) fn reply_after_writes<P, F, Fut>(
        &self,
        responder: Responder,
        prepared: Result<P, RpcError>,
        answer: F,
    ) where
        P: Send + 'static,
        F: FnOnce(Arc<App>, P) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Value, RpcError>> + Send,
    {
        match prepared {
            Err(err) => {
                tokio::spawn(responder.send(Err(err)));
            }
            Ok(prepared) => {
                let after_writes = self.fence.reads_after_writes();
                let app = self.app.clone();
                self.reply_later(responder, async move {
                    after_writes.await;
                    answer(app, prepared).await
                });
            }
        }
    }

    /// Starts a subscription's tail under `key`, replacing (cancelling) any earlier one.
    pub(crate) fn subscription(&mut self, key: String) -> CancellationToken {
        let token = self.closing.child_token();
        if let Some(old) = self.subscriptions.insert(key, token.clone()) {
            old.cancel();
        }
        token
    }

    /// Ends the subscription under `key`, if any.
    pub(crate) fn end_subscription(&mut self, key: &str) {
        if let Some(token) = self.subscriptions.remove(key) {
            token.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_fence_waits_for_earlier_writes_only() {
        let mut fence = Fence::new();
        let first = fence.write();
        let second = fence.write();
        let barrier = fence.reads_after_writes();
        let later = fence.write();
        drop(first);
        let mut barrier = Box::pin(barrier);
        assert!(futures::poll!(&mut barrier).is_pending());
        drop(second);
        barrier.await;
        drop(later);
    }
}
