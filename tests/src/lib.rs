//! car-tests: support for the end-to-end tests of `car-server` (the `e2e` test binary).
//!
//! Everything here drives the *real* daemon over a *real* WebSocket:
//!
//! - [`Server`]: the daemon as a separate process (the `car-test-server` binary of this
//!   package, whose `main` is `car_gateway::cli::main`, i.e. the shipped command line), on
//!   port 0 and a temporary data directory. It parses the listen address from the start-up
//!   line on stderr, reads the token files, and can be stopped with SIGTERM (graceful),
//!   killed with SIGKILL (a crash) and restarted on the same data directory.
//! - [`InProcessServer`]: the daemon inside the test (`car_gateway::Daemon::start` and
//!   `run`), for the tests that need its [`car_gateway::StopReport`] (the canonical digest).
//! - [`Client`]: a JSON-RPC 2.0 client over tokio-tungstenite: calls, pipelined requests,
//!   batches, raw text and binary frames, notifications buffered by method (with arrival
//!   numbers, to tell what came before or after a response), and a small-socket-buffer
//!   variant for peers that stop reading; as a tool client it takes the server's
//!   `tools.execute` requests whole ([`Client::next_tool_call`]), replies to them in any
//!   order ([`Client::reply`], [`Client::reply_error`]) or answers each with a closure
//!   while it waits for a response ([`Client::serve_tools_until`], [`Client::submit`],
//!   [`ToolAnswer`]), and reads the whole log ([`Client::whole_log`]).
//! - [`Endpoint`]: where a daemon listens and its tokens; `auth_client`, `auth_agent`,
//!   `auth_host` open authenticated sessions.
//! - [`replay_digest`]: the canonical digest of a fresh replay of a data directory's log.
//!
//! Synchronisation is always on an observable event: a response, a notification, a log
//! event, the server's exit. Every wait is bounded by [`WAIT`], which only turns a hang into
//! a test failure; nothing here sleeps to let something happen.

pub mod http;
pub mod load;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use car_events::{EventLog, OpenOptions, SledLog, Stamper, replay};
use car_gateway::{Config, Daemon, StopReport};
use car_projections::{State, canonical};
use futures::{SinkExt, StreamExt};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The failure bound of every wait: a test that waits longer than this for something it
/// expects has failed. It never delays a passing test.
pub const WAIT: Duration = Duration::from_secs(20);

/// Environment variables of the daemon that the tests and the load drivers control
/// explicitly; a developer's own settings (a data directory, a fixed token, auth switched
/// off) must not leak into a test or change what is measured.
pub const DAEMON_ENV: [&str; 12] = [
    "CAR_HOME",
    "CAR_HOST_TOKEN",
    "CAR_LOG",
    "CAR_NATS_URLS",
    "CAR_STREAM",
    "CAR_GATEWAY_ID",
    "CAR_MCP_BIND",
    "CAR_AUTH_TOKEN",
    "CAR_NO_AUTH",
    "CAR_NO_APPROVALS",
    "CAR_TOOL_TIMEOUT",
    "RUST_LOG",
];

/// The marker of the daemon's start-up line: `car-server <v> listening on ws://ADDR/`.
const LISTEN_MARKER: &str = "listening on ws://";
/// The marker of the MCP start-up line: `mcp: http://ADDR/mcp` or `mcp: disabled`.
const MCP_MARKER: &str = "mcp: ";
/// The marker of the dashboard's start-up line: `dashboard: http://ADDR/#host_token=…`,
/// `dashboard: http://ADDR/` or `dashboard: disabled`.
const DASHBOARD_MARKER: &str = "dashboard: ";

// ---------------------------------------------------------------------------------------
// Errors

/// A JSON-RPC error response: `{code, message, data?}`.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// The error code (PROTOCOL.md §8).
    pub code: i64,
    /// The message.
    pub message: String,
    /// `data`, when the server sent one.
    pub data: Option<Value>,
}

impl RpcError {
    fn from_json(error: &Value) -> Self {
        Self {
            code: error["code"].as_i64().unwrap_or(0),
            message: error["message"].as_str().unwrap_or_default().to_owned(),
            data: error.get("data").cloned(),
        }
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JSON-RPC error {}: {}", self.code, self.message)
    }
}

impl std::error::Error for RpcError {}

// ---------------------------------------------------------------------------------------
// Client

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the connection delivered next.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A JSON text frame.
    Json(Value),
    /// A text frame that is not JSON (never expected from the server).
    Text(String),
    /// A binary frame (never expected from the server).
    Binary(Vec<u8>),
    /// A ping (answered with a pong by tungstenite on the next read or write).
    Ping,
    /// The server's close frame (`None`: closed without one, or the stream ended).
    Closed(Option<CloseFrame>),
}

/// A WebSocket JSON-RPC client session.
///
/// Incoming frames are sorted as they are read: messages with a `method` (notifications
/// and server requests such as `tools.execute`) go to a notification buffer, everything else
/// (responses, batch arrays) to a reply buffer, so a test can wait for one response while
/// notifications keep arriving, and find those notifications afterwards.
#[derive(Debug)]
pub struct Client {
    ws: Ws,
    next_id: u64,
    /// Buffered notifications and replies, with the arrival number of each (frames are
    /// numbered in the order they are read).
    notifications: VecDeque<(u64, Value)>,
    replies: VecDeque<(u64, Value)>,
    arrivals: u64,
    closed: Option<Option<CloseFrame>>,
    pings: u64,
}

impl Client {
    /// Connects to `ws://addr/`.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let url = format!("ws://{addr}/");
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url.as_str()))
            .await
            .with_context(|| format!("connecting to {url}: timed out"))?
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Self::from_ws(ws))
    }

    /// Connects with a small socket receive buffer (`SO_RCVBUF`, which also turns off the
    /// kernel's buffer auto-tuning), so that a client that stops reading fills the path
    /// from the server quickly: a realistic stuck or dead peer.
    pub async fn connect_with_recv_buffer(addr: SocketAddr, bytes: u32) -> anyhow::Result<Self> {
        let socket = TcpSocket::new_v4().context("creating a socket")?;
        socket
            .set_recv_buffer_size(bytes)
            .context("setting SO_RCVBUF")?;
        let stream = tokio::time::timeout(WAIT, socket.connect(addr))
            .await
            .map_err(|_| anyhow!("connecting to {addr}: timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
        let url = format!("ws://{addr}/");
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::client_async(url.as_str(), MaybeTlsStream::Plain(stream)),
        )
        .await
        .map_err(|_| anyhow!("WebSocket upgrade with {url}: timed out"))?
        .with_context(|| format!("WebSocket upgrade with {url}"))?;
        Ok(Self::from_ws(ws))
    }

    fn from_ws(ws: Ws) -> Self {
        Self {
            ws,
            next_id: 0,
            notifications: VecDeque::new(),
            replies: VecDeque::new(),
            arrivals: 0,
            closed: None,
            pings: 0,
        }
    }

    /// Sends a text frame as is.
    pub async fn send_text(&mut self, text: impl Into<String>) -> anyhow::Result<()> {
        let text: String = text.into();
        self.ws
            .send(Message::text(text))
            .await
            .context("sending a text frame")
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.ws
            .send(Message::binary(bytes))
            .await
            .context("sending a binary frame")
    }

    /// Sends a JSON value as one text frame.
    pub async fn send_json(&mut self, value: &Value) -> anyhow::Result<()> {
        self.send_text(value.to_string()).await
    }

    /// A fresh request id.
    pub fn fresh_id(&mut self) -> Value {
        self.next_id += 1;
        Value::from(self.next_id)
    }

    /// A request object with a fresh id (to send alone or in a batch).
    pub fn request_object(&mut self, method: &str, params: Value) -> Value {
        let id = self.fresh_id();
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
    }

    /// A notification object (no id).
    pub fn notification_object(method: &str, params: Value) -> Value {
        json!({"jsonrpc": "2.0", "method": method, "params": params})
    }

    /// Sends a request without waiting; returns its id (see [`Client::response`]).
    pub async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let request = self.request_object(method, params);
        self.send_json(&request).await?;
        Ok(request["id"].clone())
    }

    /// Sends a JSON-RPC notification (no id, no answer).
    pub async fn notify(&mut self, method: &str, params: Value) -> anyhow::Result<()> {
        self.send_json(&Self::notification_object(method, params))
            .await
    }

    /// Sends a batch (a JSON array) as one frame.
    pub async fn send_batch(&mut self, items: &[Value]) -> anyhow::Result<()> {
        self.send_json(&Value::Array(items.to_vec())).await
    }

    /// Waits for the response with `id`; other replies stay buffered.
    pub async fn response(&mut self, id: &Value) -> anyhow::Result<Result<Value, RpcError>> {
        Ok(self.response_arrival(id).await?.1)
    }

    /// As [`Client::response`], with the response's arrival number (compare with those
    /// of [`Client::take_notifications_arrived`] to tell what came before or after it).
    pub async fn response_arrival(
        &mut self,
        id: &Value,
    ) -> anyhow::Result<(u64, Result<Value, RpcError>)> {
        let (arrival, response) = self
            .wait_reply(|reply| reply.get("id") == Some(id) && !reply.is_array())
            .await
            .with_context(|| format!("waiting for the response to id {id}"))?;
        Ok((arrival, outcome(&response)))
    }

    /// Calls `method`; transport failures (closed connection, timeout) are `Err` too.
    pub async fn try_call(
        &mut self,
        method: &str,
        params: Value,
    ) -> anyhow::Result<Result<Value, RpcError>> {
        let id = self.request(method, params).await?;
        self.response(&id).await
    }

    /// Calls `method` and returns its result or its error. Panics if the connection fails.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, RpcError> {
        match self.try_call(method, params).await {
            Ok(outcome) => outcome,
            Err(err) => panic!("{method}: {err:#}"),
        }
    }

    /// Calls `method`, expecting a result. Panics on an error response.
    pub async fn ok(&mut self, method: &str, params: Value) -> Value {
        match self.call(method, params.clone()).await {
            Ok(result) => result,
            Err(err) => panic!("{method} {params}: unexpected error: {err}"),
        }
    }

    /// Calls `method`, expecting an error response. Panics on a result.
    pub async fn err(&mut self, method: &str, params: Value) -> RpcError {
        match self.call(method, params.clone()).await {
            Ok(result) => panic!("{method} {params}: expected an error, got {result}"),
            Err(err) => err,
        }
    }

    /// The next reply-shaped message (a response object or a batch array), in arrival order.
    pub async fn next_reply(&mut self) -> anyhow::Result<Value> {
        Ok(self.wait_reply(|_| true).await?.1)
    }

    /// Replies received but not yet claimed.
    pub fn unclaimed_replies(&self) -> Vec<Value> {
        self.replies.iter().map(|(_, r)| r.clone()).collect()
    }

    /// The params of the next notification of `method` (buffered or read now).
    pub async fn next_notification(&mut self, method: &str) -> anyhow::Result<Value> {
        self.next_notification_where(method, |_| true).await
    }

    /// The params of the next notification of `method` whose params satisfy `pred`;
    /// notifications passed over stay buffered.
    pub async fn next_notification_where(
        &mut self,
        method: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let matches = |(_, n): &(u64, Value)| n["method"] == method && pred(&n["params"]);
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(pos) = self.notifications.iter().position(matches) {
                    let (_, n) = self.notifications.remove(pos).unwrap_or_default();
                    return Ok(n["params"].clone());
                }
                self.pump().await?;
            }
        })
        .await;
        match found {
            Ok(result) => result,
            Err(_) => bail!("no {method} notification within {WAIT:?}"),
        }
    }

    /// Removes and returns the buffered notifications of `method` (params), without reading.
    pub fn take_notifications(&mut self, method: &str) -> Vec<Value> {
        self.take_notifications_arrived(method)
            .into_iter()
            .map(|(_, params)| params)
            .collect()
    }

    /// As [`Client::take_notifications`], each with its arrival number.
    pub fn take_notifications_arrived(&mut self, method: &str) -> Vec<(u64, Value)> {
        let (taken, kept) = std::mem::take(&mut self.notifications)
            .into_iter()
            .partition(|(_, n)| n["method"] == method);
        self.notifications = kept;
        taken
            .into_iter()
            .map(|(arrival, n)| (arrival, n["params"].clone()))
            .collect()
    }

    /// Reads frames until the server closes the connection; returns its close frame.
    pub async fn wait_closed(&mut self) -> anyhow::Result<Option<CloseFrame>> {
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(frame) = &self.closed {
                    return Ok::<_, anyhow::Error>(frame.clone());
                }
                if let Err(err) = self.pump().await {
                    if self.closed.is_none() {
                        return Err(err);
                    }
                }
            }
        })
        .await;
        closed.map_err(|_| anyhow!("the server did not close the connection within {WAIT:?}"))?
    }

    /// Reads (answering pings, as any tungstenite reader does) until `n` server pings have
    /// been received on this connection in all; fails if the connection closes first.
    pub async fn wait_pings(&mut self, n: u64) -> anyhow::Result<()> {
        let waited = tokio::time::timeout(WAIT, async {
            while self.pings < n {
                self.pump().await?;
            }
            Ok(())
        })
        .await;
        waited.map_err(|_| anyhow!("{n} pings did not arrive within {WAIT:?}"))?
    }

    /// Server pings received so far.
    pub fn pings(&self) -> u64 {
        self.pings
    }

    /// Closes the connection (close handshake) and waits until the server has seen it.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// Reads the next frame, as is (nothing buffered is consulted; pongs are skipped).
    pub async fn next_frame(&mut self) -> anyhow::Result<Frame> {
        if let Some(frame) = &self.closed {
            return Ok(Frame::Closed(frame.clone()));
        }
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .map_err(|_| anyhow!("no frame within {WAIT:?}"))?;
            let frame = match next {
                None => Frame::Closed(None),
                Some(Err(err)) => {
                    use tokio_tungstenite::tungstenite::Error as E;
                    match err {
                        E::ConnectionClosed | E::AlreadyClosed => Frame::Closed(None),
                        E::Protocol(_) | E::Io(_) => Frame::Closed(None),
                        other => return Err(other).context("reading a frame"),
                    }
                }
                Some(Ok(Message::Text(text))) => match serde_json::from_str(text.as_str()) {
                    Ok(value) => Frame::Json(value),
                    Err(_) => Frame::Text(text.as_str().to_owned()),
                },
                Some(Ok(Message::Binary(bytes))) => Frame::Binary(bytes.to_vec()),
                Some(Ok(Message::Close(frame))) => Frame::Closed(frame),
                Some(Ok(Message::Ping(_))) => {
                    self.pings += 1;
                    Frame::Ping
                }
                Some(Ok(_)) => continue,
            };
            if let Frame::Closed(frame) = &frame {
                self.closed = Some(frame.clone());
            }
            return Ok(frame);
        }
    }

    /// Reads one frame into the buffers.
    async fn pump(&mut self) -> anyhow::Result<()> {
        match self.next_frame().await? {
            Frame::Json(value) => {
                self.arrivals += 1;
                if value.get("method").is_some() {
                    self.notifications.push_back((self.arrivals, value));
                } else {
                    self.replies.push_back((self.arrivals, value));
                }
                Ok(())
            }
            Frame::Ping => Ok(()),
            Frame::Closed(frame) => bail!("connection closed: {frame:?}"),
            Frame::Text(text) => bail!("the server sent a non-JSON text frame: {text}"),
            Frame::Binary(_) => bail!("the server sent a binary frame"),
        }
    }

    async fn wait_reply(&mut self, pred: impl Fn(&Value) -> bool) -> anyhow::Result<(u64, Value)> {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(pos) = self.replies.iter().position(|(_, r)| pred(r)) {
                    return Ok(self.replies.remove(pos).unwrap_or_default());
                }
                self.pump().await?;
            }
        })
        .await;
        found.map_err(|_| anyhow!("no reply within {WAIT:?}"))?
    }

    /// `server.handshake {protocol_version: 2}`, expecting success.
    pub async fn handshake(&mut self) -> Value {
        self.ok("server.handshake", json!({"protocol_version": 2}))
            .await
    }
}

// ---------------------------------------------------------------------------------------
// Tool clients: the server's requests (`tools.execute`) and the client's replies

/// How a tool client answers one `tools.execute` request (see
/// [`Client::serve_tools_until`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ToolAnswer {
    /// A JSON-RPC response with this `result`.
    Result(Value),
    /// A JSON-RPC response with this `error` object.
    Error(Value),
    /// These text frames, sent as they are, in order (stray or malformed replies, a
    /// reply with another id, …).
    Frames(Vec<String>),
    /// Nothing (now): the test answers later, or never.
    Nothing,
}

impl Client {
    /// The next message of `method` the server sent (a request such as `tools.execute`, or
    /// a notification), whole: `{jsonrpc, id?, method, params}`. Others stay buffered.
    pub async fn next_request(&mut self, method: &str) -> anyhow::Result<Value> {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(pos) = self
                    .notifications
                    .iter()
                    .position(|(_, n)| n["method"] == method)
                {
                    let (_, message) = self.notifications.remove(pos).unwrap_or_default();
                    return Ok(message);
                }
                self.pump().await?;
            }
        })
        .await;
        match found {
            Ok(result) => result,
            Err(_) => bail!("no {method} message within {WAIT:?}"),
        }
    }

    /// The next `tools.execute` request, whole (its `id` and its `params`).
    pub async fn next_tool_call(&mut self) -> Value {
        self.next_request("tools.execute")
            .await
            .unwrap_or_else(|err| panic!("{err:#}"))
    }

    /// Answers the server's request `id` with `result`.
    pub async fn reply(&mut self, id: &Value, result: Value) {
        self.send_json(&json!({"jsonrpc": "2.0", "id": id, "result": result}))
            .await
            .unwrap_or_else(|err| panic!("{err:#}"));
    }

    /// Answers the server's request `id` with the JSON-RPC `error` object.
    pub async fn reply_error(&mut self, id: &Value, error: Value) {
        self.send_json(&json!({"jsonrpc": "2.0", "id": id, "error": error}))
            .await
            .unwrap_or_else(|err| panic!("{err:#}"));
    }

    /// Sends `answer` to the request `call` (a whole `tools.execute` message).
    pub async fn answer(&mut self, call: &Value, answer: ToolAnswer) {
        let id = &call["id"];
        match answer {
            ToolAnswer::Result(result) => self.reply(id, result).await,
            ToolAnswer::Error(error) => self.reply_error(id, error).await,
            ToolAnswer::Frames(frames) => {
                for frame in frames {
                    self.send_text(frame)
                        .await
                        .unwrap_or_else(|err| panic!("{err:#}"));
                }
            }
            ToolAnswer::Nothing => {}
        }
    }

    /// Answers every `tools.execute` request with `answer(request)` (the whole message)
    /// until the response to `id` arrives; returns that response. Requests are answered
    /// in the order they arrive; the other buffers are left alone.
    pub async fn serve_tools_until(
        &mut self,
        id: &Value,
        mut answer: impl FnMut(&Value) -> ToolAnswer,
    ) -> anyhow::Result<Result<Value, RpcError>> {
        let served = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(pos) = self
                    .replies
                    .iter()
                    .position(|(_, r)| r.get("id") == Some(id) && !r.is_array())
                {
                    let (_, response) = self.replies.remove(pos).unwrap_or_default();
                    return Ok(outcome(&response));
                }
                if let Some(pos) = self
                    .notifications
                    .iter()
                    .position(|(_, n)| n["method"] == "tools.execute")
                {
                    let (_, call) = self.notifications.remove(pos).unwrap_or_default();
                    let reply = answer(&call);
                    self.answer(&call, reply).await;
                    continue;
                }
                self.pump().await?;
            }
        })
        .await;
        match served {
            Ok(result) => result,
            Err(_) => bail!("no response to id {id} within {WAIT:?}"),
        }
    }

    /// Calls `method`, answering `tools.execute` requests with `answer` meanwhile (see
    /// [`Client::serve_tools_until`]). Panics if the connection fails.
    pub async fn call_serving_tools(
        &mut self,
        method: &str,
        params: Value,
        answer: impl FnMut(&Value) -> ToolAnswer,
    ) -> Result<Value, RpcError> {
        let id = self
            .request(method, params)
            .await
            .unwrap_or_else(|err| panic!("{method}: {err:#}"));
        self.serve_tools_until(&id, answer)
            .await
            .unwrap_or_else(|err| panic!("{method}: {err:#}"))
    }

    /// `proposal.submit {proposal}`, answering its `tools.execute` requests with
    /// `answer`; expects a result (a proposal that fails is still a result).
    pub async fn submit(
        &mut self,
        proposal: Value,
        answer: impl FnMut(&Value) -> ToolAnswer,
    ) -> Value {
        let params = json!({"proposal": proposal});
        match self
            .call_serving_tools("proposal.submit", params.clone(), answer)
            .await
        {
            Ok(result) => result,
            Err(err) => panic!("proposal.submit {params}: unexpected error: {err}"),
        }
    }

    /// Every event of the log from seq 1, optionally only those of `kinds` (a host
    /// session, or any session with auth disabled).
    pub async fn whole_log(&mut self, kinds: Option<&[&str]>) -> Vec<Value> {
        let mut events = Vec::new();
        let mut from = 1;
        loop {
            let mut params = json!({"from_seq": from, "limit": 10_000});
            if let Some(kinds) = kinds {
                params["kinds"] = json!(kinds);
            }
            let page = self.ok("log.read", params).await;
            events.extend(page["events"].as_array().cloned().unwrap_or_default());
            let next = page["next_seq"].as_u64().unwrap_or(from);
            if next > page["head_seq"].as_u64().unwrap_or(0) {
                return events;
            }
            assert!(next > from, "log.read did not advance from {from}: {page}");
            from = next;
        }
    }
}

/// A response object as `Ok(result)` or `Err(error)`.
pub fn outcome(response: &Value) -> Result<Value, RpcError> {
    match response.get("error") {
        Some(error) => Err(RpcError::from_json(error)),
        None => Ok(response.get("result").cloned().unwrap_or(Value::Null)),
    }
}

// ---------------------------------------------------------------------------------------
// Endpoint

/// Where a daemon listens, and the tokens its data directory holds.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The listen address.
    pub addr: SocketAddr,
    /// The MCP endpoint's address, when it is on.
    pub mcp: Option<SocketAddr>,
    /// The dashboard's address, when it is on.
    pub dashboard: Option<SocketAddr>,
    /// The daemon token (`auth-token`).
    pub auth_token: String,
    /// The host token (`host-token`).
    pub host_token: String,
}

impl Endpoint {
    fn read(
        addr: SocketAddr,
        mcp: Option<SocketAddr>,
        dashboard: Option<SocketAddr>,
        data_dir: &Path,
    ) -> anyhow::Result<Self> {
        let read = |name: &str| {
            let path = data_dir.join(name);
            car_gateway::tokens::read_token(&path)
                .with_context(|| format!("reading {}", path.display()))
        };
        Ok(Self {
            addr,
            mcp,
            dashboard,
            auth_token: read(car_gateway::tokens::AUTH_TOKEN_FILE)?,
            host_token: read(car_gateway::tokens::HOST_TOKEN_FILE)?,
        })
    }

    /// `ws://ADDR/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// The MCP endpoint's address. Panics when MCP is off (start the daemon with
    /// [`ServerBuilder::mcp`], or set `config.mcp_bind` in process).
    pub fn mcp_addr(&self) -> SocketAddr {
        self.mcp
            .expect("MCP is off for this daemon: start it with ServerBuilder::mcp()")
    }

    /// The dashboard's address. Panics when it is off (start the daemon with
    /// [`ServerBuilder::dashboard`]).
    pub fn dashboard_addr(&self) -> SocketAddr {
        self.dashboard.expect(
            "the dashboard is off for this daemon: start it with ServerBuilder::dashboard()",
        )
    }

    /// A new, unauthenticated connection.
    pub async fn connect(&self) -> Client {
        Client::connect(self.addr)
            .await
            .unwrap_or_else(|err| panic!("{err:#}"))
    }

    /// A session authenticated with `params`, expecting success.
    pub async fn auth_with(&self, params: Value) -> Client {
        let mut client = self.connect().await;
        client.ok("session.auth", params).await;
        client
    }

    /// A new, unauthenticated connection whose socket has a small receive buffer (see
    /// [`Client::connect_with_recv_buffer`]): for tests of peers that stop reading.
    pub async fn connect_small_buffer(&self) -> Client {
        Client::connect_with_recv_buffer(self.addr, 4096)
            .await
            .unwrap_or_else(|err| panic!("{err:#}"))
    }

    /// A `client` session (the daemon token).
    pub async fn auth_client(&self) -> Client {
        self.auth_with(json!({"token": self.auth_token})).await
    }

    /// An `agent` session bound to `agent_id`.
    pub async fn auth_agent(&self, agent_id: &str) -> Client {
        self.auth_with(json!({"token": self.auth_token, "agent_id": agent_id}))
            .await
    }

    /// A `host` session (the host token). No handshake: see [`Client::handshake`].
    pub async fn auth_host(&self) -> Client {
        self.auth_with(json!({"host_token": self.host_token})).await
    }
}

// ---------------------------------------------------------------------------------------
// The daemon as a process

/// A temporary data directory, shared by a server and its restarts; removed when the last
/// holder drops it.
#[derive(Debug, Clone)]
pub struct DataDir(Arc<TempDir>);

impl DataDir {
    /// A fresh, empty data directory.
    pub fn new() -> Self {
        Self(Arc::new(
            tempfile::Builder::new()
                .prefix("car-e2e-")
                .tempdir()
                .unwrap_or_else(|e| panic!("creating a temporary directory: {e}")),
        ))
    }

    /// A fresh, empty data directory inside `parent` (e.g. on a [`SmallDisk`]).
    pub fn new_in(parent: &Path) -> Self {
        Self(Arc::new(
            tempfile::Builder::new()
                .prefix("car-e2e-")
                .tempdir_in(parent)
                .unwrap_or_else(|e| panic!("creating a temporary directory: {e}")),
        ))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// A small file system of its own (a tmpfs), for tests of a full disk; unmounted when
/// dropped. Mounting needs root (CI runs as root).
#[derive(Debug)]
pub struct SmallDisk {
    mount: PathBuf,
    _parent: TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes`; where that is impossible (not root), prints
    /// `SKIPPED <test>: <why>` to stderr and returns `None`: the caller returns, and the
    /// skip is visible in the test output rather than passed off as a pass.
    pub fn mount(bytes: u64, test: &str) -> Option<Self> {
        let parent = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
        let mount = parent.path().join("fs");
        std::fs::create_dir(&mount).unwrap_or_else(|e| panic!("creating {mount:?}: {e}"));
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&mount)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Self {
                mount,
                _parent: parent,
            }),
            Ok(out) => {
                eprintln!(
                    "SKIPPED {test}: cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(err) => {
                eprintln!("SKIPPED {test}: cannot run mount: {err}");
                None
            }
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
    }
}

impl Default for DataDir {
    fn default() -> Self {
        Self::new()
    }
}

/// How to launch the daemon process.
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    bin: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    data: Option<DataDir>,
    data_via_env: bool,
    mcp: McpMode,
    dashboard: bool,
}

/// How a spawned daemon's MCP endpoint is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum McpMode {
    /// `--mcp-bind disabled`.
    Off,
    /// `--mcp-bind 127.0.0.1:0`.
    Loopback,
    /// No flag: the default address.
    Default,
}

impl ServerBuilder {
    /// The daemon binary at `bin` (the tests pass `env!("CARGO_BIN_EXE_car-test-server")`).
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self {
            bin: bin.into(),
            args: Vec::new(),
            envs: Vec::new(),
            data: None,
            data_via_env: false,
            mcp: McpMode::Off,
            dashboard: false,
        }
    }

    /// Turns the dashboard on (on a free loopback port, the daemon's being 0; see
    /// [`Endpoint::dashboard_addr`]). Without it the daemon runs with `--no-dashboard`.
    pub fn dashboard(mut self) -> Self {
        self.dashboard = true;
        self
    }

    /// Turns the MCP endpoint on, on a free loopback port (`--mcp-bind 127.0.0.1:0`; see
    /// [`Endpoint::mcp_addr`]). Without it the daemon runs with `--mcp-bind disabled`
    /// (unless the arguments give `--mcp-bind`): tests run in parallel, and MCP's default
    /// port is one for all of them.
    pub fn mcp(mut self) -> Self {
        self.mcp = McpMode::Loopback;
        self
    }

    /// Leaves `--mcp-bind` out: MCP on its default address (for the one test of a taken
    /// default; any other test would race the rest for that port).
    pub fn mcp_default_address(mut self) -> Self {
        self.mcp = McpMode::Default;
        self
    }

    /// Adds command-line arguments (after `--port 0 --data-dir DIR [--mcp-bind …]`).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable of the daemon.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Uses `data` as the data directory (default: a fresh one).
    pub fn data_dir(mut self, data: &DataDir) -> Self {
        self.data = Some(data.clone());
        self
    }

    /// Uses `data` as the data directory through `$CAR_HOME`, without `--data-dir`.
    pub fn data_dir_from_env(mut self, data: &DataDir) -> Self {
        self.data = Some(data.clone());
        self.data_via_env = true;
        self
    }

    /// Starts the daemon and waits for its start-up line.
    pub async fn spawn(self) -> anyhow::Result<Server> {
        let data = self.data.clone().unwrap_or_default();
        let launched = launch(&self, &data).await?;
        let endpoint =
            Endpoint::read(launched.addr, launched.mcp, launched.dashboard, data.path())?;
        Ok(Server {
            builder: self,
            data,
            endpoint,
            process: launched,
            exit: None,
        })
    }

    /// Runs the daemon with exactly these arguments (no `--port`/`--data-dir` added) until
    /// it exits by itself; returns its exit status, stdout and stderr.
    pub async fn run_to_exit(self) -> anyhow::Result<(ExitStatus, String, String)> {
        let mut command = self.command();
        command.args(&self.args);
        let child = command.stdout(Stdio::piped()).spawn()?;
        let output = tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .map_err(|_| anyhow!("the daemon did not exit within {WAIT:?}"))??;
        Ok((
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            strip_ansi(&String::from_utf8_lossy(&output.stderr)),
        ))
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.bin);
        for key in DAEMON_ENV {
            command.env_remove(key);
        }
        command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }
}

#[derive(Debug)]
struct Launched {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    mcp: Option<SocketAddr>,
    dashboard: Option<SocketAddr>,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_done: JoinHandle<()>,
}

async fn launch(builder: &ServerBuilder, data: &DataDir) -> anyhow::Result<Launched> {
    let mut command = builder.command();
    command.arg("--port").arg("0");
    if builder.data_via_env {
        command.env("CAR_HOME", data.path());
    } else {
        command.arg("--data-dir").arg(data.path());
    }
    if !builder.args.iter().any(|a| a == "--mcp-bind") {
        let bind = match builder.mcp {
            McpMode::Off => Some("disabled"),
            McpMode::Loopback => Some("127.0.0.1:0"),
            McpMode::Default => None,
        };
        if let Some(bind) = bind {
            command.arg("--mcp-bind").arg(bind);
        }
    }
    if !builder.dashboard && !builder.args.iter().any(|a| a == "--no-dashboard") {
        command.arg("--no-dashboard");
    }
    command.args(&builder.args);
    let mut child = command
        .spawn()
        .with_context(|| format!("spawning {}", builder.bin.display()))?;
    let pid = child.id().context("the daemon has no pid")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (listening, listen_line) = oneshot::channel();
    // Reads stderr for the daemon's whole life (a full pipe would block its logging).
    // Start-up is over once the listen, MCP and dashboard lines were printed.
    let stderr_done = tokio::spawn({
        let lines = lines.clone();
        async move {
            let mut listening = Some(listening);
            let (mut ws, mut mcp, mut dashboard) = (None, None, None);
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let line = strip_ansi(&line);
                if let Some(addr) = parse_listen_line(&line) {
                    ws = ws.or(Some(addr));
                }
                if let Some(addr) = parse_mcp_line(&line) {
                    mcp = mcp.or(Some(addr));
                }
                if let Some(addr) = parse_dashboard_line(&line) {
                    dashboard = dashboard.or(Some(addr));
                }
                if let (Some(ws), Some(mcp), Some(dashboard)) = (ws, mcp, dashboard) {
                    if let Some(tx) = listening.take() {
                        let _ = tx.send((ws, mcp, dashboard));
                    }
                }
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        }
    });
    let (addr, mcp, dashboard) = match tokio::time::timeout(WAIT, listen_line).await {
        Ok(Ok(addrs)) => addrs,
        outcome => {
            let status = match outcome {
                Ok(Err(_)) => tokio::time::timeout(WAIT, child.wait()).await.ok(),
                _ => None,
            };
            let _ = child.start_kill();
            let stderr = lines.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
            bail!(
                "the daemon did not report its listen addresses (exit: {status:?}); stderr:\n{stderr}"
            );
        }
    };
    Ok(Launched {
        child,
        pid,
        addr,
        mcp,
        dashboard,
        stderr: lines,
        stderr_done,
    })
}

/// Parses `car-server <v> listening on ws://ADDR/` out of a log line.
pub fn parse_listen_line(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(LISTEN_MARKER)? + LISTEN_MARKER.len()..];
    rest.split('/').next()?.trim().parse().ok()
}

/// Parses the MCP start-up line: `Some(Some(ADDR))` for `mcp: http://ADDR/mcp`,
/// `Some(None)` for `mcp: disabled`, `None` for any other line.
pub fn parse_mcp_line(line: &str) -> Option<Option<SocketAddr>> {
    if line.ends_with(&format!("{MCP_MARKER}disabled")) {
        return Some(None);
    }
    let marker = format!("{MCP_MARKER}http://");
    let rest = &line[line.find(&marker)? + marker.len()..];
    Some(Some(rest.strip_suffix("/mcp")?.parse().ok()?))
}

/// The dashboard's address in its start-up line: `Some(None)` for `dashboard: disabled`.
pub fn parse_dashboard_line(line: &str) -> Option<Option<SocketAddr>> {
    if line.ends_with(&format!("{DASHBOARD_MARKER}disabled")) {
        return Some(None);
    }
    let marker = format!("{DASHBOARD_MARKER}http://");
    let rest = &line[line.find(&marker)? + marker.len()..];
    Some(Some(rest.split('/').next()?.parse().ok()?))
}

/// Removes ANSI escape sequences (in case the daemon colours its log).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The daemon running as a separate process. Dereferences to its [`Endpoint`].
///
/// Dropping it kills the process (SIGKILL); the data directory goes when its last
/// [`DataDir`] clone does.
#[derive(Debug)]
pub struct Server {
    builder: ServerBuilder,
    data: DataDir,
    endpoint: Endpoint,
    process: Launched,
    exit: Option<ExitStatus>,
}

impl Deref for Server {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Server {
    /// The endpoint (address and tokens) of the running process.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The data directory.
    pub fn data_dir(&self) -> &DataDir {
        &self.data
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// The stderr lines so far (ANSI codes removed).
    pub fn stderr(&self) -> Vec<String> {
        self.process
            .stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.process.pid).context("pid out of range")?;
        kill(Pid::from_raw(pid), signal).with_context(|| format!("sending {signal}"))
    }

    /// Waits for the process to exit (bounded by [`WAIT`]); returns its status.
    pub async fn wait_exit(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        let status = tokio::time::timeout(WAIT, self.process.child.wait())
            .await
            .map_err(|_| anyhow!("the daemon did not exit within {WAIT:?}"))??;
        // Every line it wrote is read once the pipe is closed.
        let _ = tokio::time::timeout(WAIT, &mut self.process.stderr_done).await;
        self.exit = Some(status);
        Ok(status)
    }

    /// Graceful stop: SIGTERM, then waits for the exit.
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        if self.exit.is_none() {
            self.signal(Signal::SIGTERM)?;
        }
        self.wait_exit().await
    }

    /// A crash: SIGKILL, then waits for the exit.
    pub async fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        if self.exit.is_none() {
            self.signal(Signal::SIGKILL)?;
        }
        self.wait_exit().await
    }

    /// Starts the daemon again on the same data directory and arguments (after
    /// [`Server::stop`] or [`Server::kill`]); the endpoint is updated (new port, new tokens).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.exit.is_none() {
            bail!("restart: the daemon is still running; stop or kill it first");
        }
        self.process = launch(&self.builder, &self.data).await?;
        self.endpoint = Endpoint::read(
            self.process.addr,
            self.process.mcp,
            self.process.dashboard,
            self.data.path(),
        )?;
        self.exit = None;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The daemon in process

/// The daemon running inside the test process (`Daemon::start` + `run`), for tests that
/// need its [`StopReport`]. Dereferences to its [`Endpoint`].
#[derive(Debug)]
pub struct InProcessServer {
    data: DataDir,
    endpoint: Endpoint,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<StopReport>>,
}

impl Deref for InProcessServer {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl InProcessServer {
    /// Starts a daemon on 127.0.0.1, port 0, a fresh data directory and the default
    /// configuration as changed by `configure`.
    pub async fn start(configure: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        Self::start_in(&DataDir::new(), configure).await
    }

    /// As [`InProcessServer::start`], on an existing data directory (a restart).
    pub async fn start_in(
        data: &DataDir,
        configure: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Self> {
        let data = data.clone();
        let mut config = Config::new(data.path());
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        // Off unless a test turns it on (e.g. `Bind::Explicit` on port 0): tests run in
        // parallel, and MCP's default port is one for all of them.
        config.mcp_bind = car_gateway::http::Bind::Disabled;
        config.dashboard_bind = car_gateway::http::Bind::Disabled;
        configure(&mut config);
        let daemon = Daemon::start(config, Stamper::system())
            .await
            .context("starting the daemon in process")?;
        let endpoint = Endpoint::read(
            daemon.local_addr(),
            daemon.report().mcp,
            daemon.report().dashboard,
            data.path(),
        )?;
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(daemon.run(async move {
            let _ = stop.await;
        }));
        Ok(Self {
            data,
            endpoint,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &DataDir {
        &self.data
    }

    /// Stops the daemon gracefully and returns its report.
    pub async fn stop(mut self) -> anyhow::Result<StopReport> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let task = self.task.take().context("already stopped")?;
        tokio::time::timeout(WAIT, task)
            .await
            .map_err(|_| anyhow!("the daemon did not stop within {WAIT:?}"))?
            .context("the daemon task failed")
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Opens the event log of `data_dir` read-only (never creating one), replays it into a
/// fresh [`State`] and returns its head and canonical digest.
pub fn replay_digest(data_dir: &Path) -> anyhow::Result<(u64, String)> {
    let options = OpenOptions {
        create: false,
        ..OpenOptions::default()
    };
    let log = SledLog::open(data_dir.join("log"), options).context("opening the event log")?;
    let mut state = State::new();
    let last = replay(&log as &dyn EventLog, &mut state, 1, |_| {}).context("replaying")?;
    if last != state.head() {
        bail!(
            "replay ended at {last} but the state's head is {}",
            state.head()
        );
    }
    Ok((state.head(), canonical::digest(&state)))
}

// ---------------------------------------------------------------------------------------
// Small helpers

/// A simple turn whose prompt names it (`"<tag>"`).
pub fn turn(tag: impl fmt::Display) -> Value {
    json!({"prompt": tag.to_string(), "tool": "echo", "parameters": {"tag": tag.to_string()}, "output": "ok"})
}

/// `count` turns tagged `<prefix>-0 …`.
pub fn turns(prefix: &str, count: usize) -> Vec<Value> {
    (0..count).map(|i| turn(format!("{prefix}-{i}"))).collect()
}

/// Whether `text` is a protocol timestamp: RFC 3339 UTC with milliseconds and `Z`.
pub fn is_protocol_time(text: &str) -> bool {
    text.len() == 24 && text.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(text).is_ok()
}
