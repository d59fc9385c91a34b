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
//!
//! This is the top of the WebSocket stack: it owns the socket, builds the [`Session`] and
//! hands each call to the method table ([`handlers::dispatch`]); nothing below imports it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use car_events::event::Role;
use car_projections::Actor;
use car_projections::decide::{CloseSession, Command, EndAbandonedRuns, OpenSession};
use car_projections::memory::Scope;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::handlers;
use crate::outbound::{self, Frame};
use crate::protocol;
use crate::rpc::{self, Incoming, RpcError};
use crate::session::{Batch, Deferred, Fence, Responder, Session, Sink};
use crate::tools::ToolSession;
/// tungstenite's read buffer, allocated eagerly per connection. 4 KiB keeps 10 000 idle
/// connections cheap; larger messages grow it as needed.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Outbound bytes tungstenite gathers before writing to the socket. (Its cap on the write
/// buffer stays unlimited: outbound memory is bounded by the outbound queue and by the
/// size caps of the responses themselves, and a cap below the largest response would drop
/// the connection instead of sending it.)
const WRITE_BUFFER_BYTES: usize = 8 * 1024;

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
    let session = OpenSession {
        client_id: client_id.clone(),
        peer: peer.to_string(),
        role: auth_disabled.then_some(Role::Client),
    };
    // Cluster mode: the session is recorded with its gateway (§19).
    let open = match &app.leases {
        Some(leases) => Command::OpenSessionOnGateway(session, leases.gateway_id().to_owned()),
        None => Command::OpenSession(session),
    };
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
    let (out, rx) = outbound::channel();
    let sender = tokio::spawn(send_loop(
        sink,
        rx,
        app.config.ping_interval,
        app.config.idle_timeout,
    ));
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
        protocol: None,
        current_run: None,
        current_run_resumed: false,
        out,
        subscriptions: HashMap::new(),
        fence: Fence::new(),
        tools: ToolSession::default(),
        closing: CancellationToken::new(),
        unrecorded,
        memory_scope: Scope::Shared,
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
            () = session.out.closed() => return Ending::Error,
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
            let batch = Batch::new(answered, session.out.clone());
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
            let responder = Responder::new(id, sink);
            handlers::dispatch(session, &method, params, responder).await;
        }
        Incoming::Invalid { id, error } => {
            let responder = Responder::new(Some(id), sink);
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
        protocol,
        ..
    } = session;
    closing.cancel();
    for token in subscriptions.into_values() {
        token.cancel();
    }
    tools.fail_all("the client disconnected");
    drop(out);
    // Its chats end, told to the other side, before its own end is recorded (§13.3).
    if !app.stopping.is_cancelled() {
        crate::chat_relay::ChatRelay::session_ended(&app, &client_id).await;
    }
    if app.stopping.is_cancelled() {
        // The shutdown records every session's end in one batch.
        return;
    }
    if matches!(
        unrecorded.first(),
        Some(Command::OpenSession(_) | Command::OpenSessionOnGateway(..))
    ) {
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
    // An owner that can come back with `runs.resume` gets the resume lease (§14.2).
    let grace = if protocol::has(protocol.as_ref(), protocol::RESUME) {
        app.config.resume_lease
    } else {
        app.config.disconnect_grace
    };
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
