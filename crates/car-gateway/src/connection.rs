//! One WebSocket connection: one session.
//!
//! Two tasks per connection:
//! - the **reader** (this module's [`serve`]) reads frames in order, classifies them and
//!   dispatches each call. Writes are *queued* on the single writer right there, in frame
//!   order (so a client pipelining writes to a run gets them applied in its order), and
//!   their completion is awaited in a spawned task, so a slow flush never stops the
//!   reader (which must keep reading, e.g. tool replies while a proposal waits for them);
//! - the **sender** ([`send_loop`]) owns the socket's write half: it sends what the
//!   bounded outbound queue holds, pings every `ping_interval`, and sends the close frame.
//!
//! Memory per connection is bounded whatever the peer does: the outbound queue is bounded
//! (responses and subscription tails wait for room, i.e. for the peer to read), a frame is
//! at most `max_message_bytes`, and subscriptions are cursors over the log, not buffers.
//!
//! Every call gets exactly one response through its [`Responder`]: a handler that panics
//! or forgets still answers `-32603`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use car_events::event::Event;
use car_events::event::Role;
use car_projections::decide::{CloseSession, Command, EndAbandonedRuns, OpenSession};
use car_projections::{Actor, Refusal, State};
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::app::{App, Committed, Submitted};
use crate::handlers;
use crate::rpc::{self, Incoming, RpcError};
use crate::tools::ToolSession;

/// Outbound frames a connection may have queued. Small: a subscriber that does not read
/// holds at most this many frames here (plus the kernel's socket buffer) and its tail
/// simply waits; nothing is dropped and nothing else waits for it.
const OUTBOUND_FRAMES: usize = 32;
/// tungstenite's read buffer, allocated eagerly per connection. 4 KiB keeps 10 000 idle
/// connections cheap; larger messages grow it as needed.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Outbound bytes tungstenite gathers before writing to the socket. (Its cap on the write
/// buffer stays unlimited: outbound memory is bounded by the outbound queue and by the
/// size caps of the responses themselves, and a cap below the largest response would drop
/// the connection instead of sending it.)
const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// A frame for the sender task.
#[derive(Debug)]
pub(crate) enum Frame {
    /// A JSON text (shared bytes: a frame rendered once can go to many connections).
    Text(Utf8Bytes),
    /// Close the connection with this code and reason.
    Close(CloseCode, &'static str),
}

/// The sending side of a connection; clones are cheap.
#[derive(Debug, Clone)]
pub(crate) struct Outbound(mpsc::Sender<Frame>);

impl Outbound {
    /// Sends a JSON message, waiting for room. False once the connection is gone.
    pub(crate) async fn send(&self, message: &Value) -> bool {
        self.send_text(message.to_string().into()).await
    }

    /// Sends an already rendered JSON text, waiting for room. False once the connection
    /// is gone.
    pub(crate) async fn send_text(&self, text: Utf8Bytes) -> bool {
        self.0.send(Frame::Text(text)).await.is_ok()
    }

    /// Sends a notification.
    pub(crate) async fn notify(&self, method: &str, params: Value) -> bool {
        self.send(&rpc::notification(method, params)).await
    }

    /// Asks the sender to close the connection after what is queued.
    pub(crate) async fn close(&self, code: CloseCode, reason: &'static str) {
        let _ = self.0.send(Frame::Close(code, reason)).await;
    }
}

/// Collects the responses of a JSON-RPC batch and sends them as one array.
#[derive(Debug)]
struct Batch {
    responses: Mutex<Vec<Value>>,
    remaining: AtomicUsize,
    out: Outbound,
}

#[derive(Debug)]
enum Sink {
    Direct(Outbound),
    Batch(Arc<Batch>),
}

/// Sends the response to one call, exactly once.
#[derive(Debug)]
pub(crate) struct Responder {
    /// `None` for a notification: nothing is sent.
    id: Option<Value>,
    sink: Option<Sink>,
}

impl Responder {
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
    fn new() -> Self {
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
    /// Whether `server.handshake` succeeded.
    pub(crate) handshake: bool,
    /// The run started last by this session (proposal actions are recorded in it).
    pub(crate) current_run: Option<String>,
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
        F: FnOnce(&State, &[Event]) -> R + Send + 'static,
    {
        self.queue_with(move |_| command, extract).await
    }

    /// [`Session::queue`] for a command that depends on the state it is decided against.
    pub(crate) async fn queue_with<R, B, F>(
        &mut self,
        build: B,
        extract: F,
    ) -> Result<QueuedWrite<R>, RpcError>
    where
        R: Send + 'static,
        B: FnOnce(&State) -> Command + Send + 'static,
        F: FnOnce(&State, &[Event]) -> R + Send + 'static,
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

fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// The WebSocket configuration of the daemon's connections.
pub(crate) fn config_for(app: &App) -> WebSocketConfig {
    ws_config(app.config.max_message_bytes)
}

/// Serves one upgraded connection until it ends, then ends its session.
pub(crate) async fn serve(app: Arc<App>, ws: WebSocketStream<TcpStream>, peer: SocketAddr) {
    let client_id = app.new_id();
    let auth_disabled = !app.config.auth;
    let open = Command::OpenSession(OpenSession {
        client_id: client_id.clone(),
        peer: peer.to_string(),
        role: auth_disabled.then_some(Role::Client),
    });
    // While the log cannot take writes (a full disk) a session still opens, to read: its
    // opening is recorded before its first write (see `Session::unrecorded`).
    let (opened, unrecorded) = match app.execute(open.clone(), |_, _| ()).await {
        Err(RpcError::Unavailable(reason)) => {
            tracing::warn!(%peer, %client_id, %reason, "session opened without its record: it may read, and is recorded before its first write");
            (true, vec![open])
        }
        other => (matches!(other, Ok(Ok(_))), Vec::new()),
    };
    let (sink, stream) = ws.split();
    let (tx, rx) = mpsc::channel(OUTBOUND_FRAMES);
    let sender = tokio::spawn(send_loop(
        sink,
        rx,
        app.config.ping_interval,
        app.config.idle_timeout,
    ));
    let out = Outbound(tx);
    if !opened {
        tracing::error!(%peer, "could not record the session; closing the connection");
        out.close(CloseCode::Error, "the daemon cannot record sessions now")
            .await;
        drop(out);
        let _ = sender.await;
        return;
    }
    tracing::debug!(%peer, %client_id, "session opened");
    let (deferred, approved) = mpsc::unbounded_channel();
    let mut session = Session {
        deferred,
        actor: auth_disabled
            .then(|| Actor::new(client_id.clone(), Role::Client, None).unrestricted()),
        app: app.clone(),
        client_id,
        authenticated: false,
        handshake: false,
        current_run: None,
        out,
        subscriptions: HashMap::new(),
        fence: Fence::new(),
        tools: ToolSession::default(),
        closing: CancellationToken::new(),
        unrecorded,
    };
    let reason = read_loop(&mut session, stream, approved).await;
    end_session(session, reason).await;
    let _ = sender.await;
}

/// Why a session ended (recorded in `session.closed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Closed,
    Timeout,
    TooBig,
    AuthRequired,
    AuthTimeout,
    Error,
    Shutdown,
}

impl Ending {
    fn as_str(self) -> &'static str {
        match self {
            Ending::Closed => "closed",
            Ending::Timeout => "timeout",
            Ending::TooBig => "message_too_big",
            Ending::AuthRequired => "auth_required",
            Ending::AuthTimeout => "auth_timeout",
            Ending::Error => "error",
            Ending::Shutdown => "daemon_shutdown",
        }
    }
}

type WsRead = futures::stream::SplitStream<WebSocketStream<TcpStream>>;
type WsWrite = futures::stream::SplitSink<WebSocketStream<TcpStream>, Message>;

async fn read_loop(
    session: &mut Session,
    mut stream: WsRead,
    mut approved: mpsc::UnboundedReceiver<Deferred>,
) -> Ending {
    let idle = session.app.config.idle_timeout;
    let stopping = session.app.stopping.clone();
    let auth_deadline = tokio::time::sleep(session.app.config.auth_timeout);
    tokio::pin!(auth_deadline);
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(idle, stream.next()) => next,
            () = &mut auth_deadline, if session.actor.is_none() => {
                session.out.close(CloseCode::Policy, "auth timeout").await;
                return Ending::AuthTimeout;
            }
            () = stopping.cancelled() => {
                session.out.close(CloseCode::Away, "daemon shutting down").await;
                return Ending::Shutdown;
            }
            () = session.closing.cancelled() => {
                session.out.close(CloseCode::Policy, "auth required").await;
                return Ending::AuthRequired;
            }
            () = session.out.0.closed() => return Ending::Error,
            Some(call) = approved.recv() => {
                Box::pin(handlers::route(session, &call.method, call.params, call.responder)).await;
                continue;
            }
        };
        match next {
            Err(_) => {
                session.out.close(CloseCode::Away, "idle timeout").await;
                return Ending::Timeout;
            }
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => return Ending::Closed,
            Ok(Some(Err(WsError::Capacity(err)))) => {
                tracing::info!(%err, "closing a connection that sent a message too big");
                session.out.close(CloseCode::Size, "message too big").await;
                return Ending::TooBig;
            }
            Ok(Some(Err(err))) => {
                tracing::debug!(%err, "connection error");
                return Ending::Error;
            }
            // Boxed: the reader's own future stays small while idle (10 000 idle
            // connections must not each carry the largest handler's state inline).
            Ok(Some(Ok(Message::Text(text)))) => Box::pin(on_text(session, text.as_str())).await,
            Ok(Some(Ok(Message::Binary(_)))) => {
                let error = RpcError::InvalidRequest(
                    "invalid request: binary frames are not supported; send JSON text".into(),
                );
                session.out.send(&rpc::failure(&Value::Null, &error)).await;
            }
            Ok(Some(Ok(_))) => {} // ping, pong: they only prove the peer is alive
        }
    }
}

async fn on_text(session: &mut Session, text: &str) {
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(err) => {
            let error = RpcError::Parse(err.to_string());
            session.out.send(&rpc::failure(&Value::Null, &error)).await;
            return;
        }
    };
    match value {
        Value::Array(items) if items.is_empty() => {
            let error = RpcError::InvalidRequest("invalid request: empty batch".into());
            session.out.send(&rpc::failure(&Value::Null, &error)).await;
        }
        Value::Array(items) => {
            let messages: Vec<Incoming> = items.into_iter().map(rpc::classify).collect();
            let answered = messages
                .iter()
                .filter(|m| {
                    matches!(
                        m,
                        Incoming::Call { id: Some(_), .. } | Incoming::Invalid { .. }
                    )
                })
                .count();
            let batch = Arc::new(Batch {
                responses: Mutex::new(Vec::with_capacity(answered)),
                remaining: AtomicUsize::new(answered),
                out: session.out.clone(),
            });
            for message in messages {
                let answers = matches!(
                    message,
                    Incoming::Call { id: Some(_), .. } | Incoming::Invalid { .. }
                );
                let sink = answers.then(|| Sink::Batch(batch.clone()));
                // Every call is answered, even after one was refused `-32001` (the others
                // get it too); the connection closes once the batch is answered.
                on_message(session, message, sink).await;
            }
        }
        single => {
            let sink = Some(Sink::Direct(session.out.clone()));
            on_message(session, rpc::classify(single), sink).await;
        }
    }
}

async fn on_message(session: &mut Session, message: Incoming, sink: Option<Sink>) {
    match message {
        Incoming::Call { id, method, params } => {
            let responder = Responder { id, sink };
            handlers::dispatch(session, &method, params, responder).await;
        }
        Incoming::Invalid { id, error } => {
            let responder = Responder { id: Some(id), sink };
            responder.send(Err(error)).await;
        }
        Incoming::Reply { id, outcome } => session.tools.on_reply(&id, outcome),
    }
}

/// Sends queued frames and pings. A peer that stops reading stalls the socket; after
/// `stall_limit` without progress the connection is dropped, which fails every send still
/// waiting for room in the queue (so nothing waits on a dead peer forever).
async fn send_loop(
    mut sink: WsWrite,
    mut rx: mpsc::Receiver<Frame>,
    ping_every: std::time::Duration,
    stall_limit: std::time::Duration,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    loop {
        let step = async {
            tokio::select! {
                frame = rx.recv() => match frame {
                    Some(Frame::Text(text)) => {
                        let fed = sink.feed(Message::Text(text)).await;
                        // Flush when nothing else is waiting: one syscall per burst.
                        if fed.is_ok() && rx.is_empty() { sink.flush().await.map(|()| true) } else { fed.map(|()| true) }
                    }
                    Some(Frame::Close(code, reason)) => {
                        let frame = CloseFrame { code, reason: reason.into() };
                        sink.send(Message::Close(Some(frame))).await.map(|()| false)
                    }
                    None => sink.send(Message::Close(None)).await.map(|()| false),
                },
                _ = ping.tick() => sink.send(Message::Ping(Default::default())).await.map(|()| true),
            }
        };
        match tokio::time::timeout(stall_limit, step).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) | Ok(Err(_)) => break,
            Err(_) => {
                tracing::info!("dropping a connection whose peer stopped reading");
                return; // drops the socket without a close handshake: it cannot be sent
            }
        }
    }
    let _ = tokio::time::timeout(stall_limit, sink.close()).await;
}

/// Ends a session: its subscriptions and tool calls at once, its record in the log, and
/// after the grace period the runs it leaves without an owner.
async fn end_session(session: Session, ending: Ending) {
    let Session {
        app,
        client_id,
        actor,
        subscriptions,
        tools,
        out,
        closing,
        unrecorded,
        ..
    } = session;
    closing.cancel();
    for token in subscriptions.into_values() {
        token.cancel();
    }
    tools.fail_all("the client disconnected");
    drop(out);
    if app.stopping.is_cancelled() {
        // The shutdown records every session's end in one batch.
        return;
    }
    if matches!(unrecorded.first(), Some(Command::OpenSession(_))) {
        // Its opening never reached the log, nor anything after it: nothing to close.
        return;
    }
    let closed = app
        .execute(
            Command::CloseSession(CloseSession {
                client_id: client_id.clone(),
                reason: ending.as_str().into(),
            }),
            |_, _| (),
        )
        .await;
    if let Err(err) = closed {
        tracing::warn!(%client_id, %err, "could not record the end of a session");
    }
    let agent_id = actor.and_then(|a| a.bound_agent().map(str::to_owned));
    let grace = app.config.disconnect_grace;
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(grace) => {}
            () = app.stopping.cancelled() => return,
        }
        let ended = app
            .execute(
                Command::EndAbandonedRuns(EndAbandonedRuns {
                    client_id,
                    agent_id,
                }),
                |_, events| events.len(),
            )
            .await;
        if let Ok(Ok(done)) = ended {
            if done.out > 0 {
                tracing::info!(
                    runs = done.out,
                    "runs ended incomplete after their owner left"
                );
            }
        }
    });
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
