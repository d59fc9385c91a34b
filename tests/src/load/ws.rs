//! A lean WebSocket JSON-RPC connection for load: small buffers, Nagle off, no buffering
//! of notifications, and every wait bounded.
//!
//! The e2e harness's [`crate::Client`] sorts and keeps every frame (tests look back at
//! them); under load that bookkeeping would be measured too, and ten thousand of them
//! would each hold tungstenite's default 128 KiB read buffer. Here a call waits for its
//! response and drops whatever else arrives, and the raw frames are there for drivers that
//! read notifications themselves.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The failure bound of a single call or connect: a daemon that takes longer has hung
/// (or is down), and the driver reports it instead of waiting forever.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// tungstenite's read buffer (allocated per connection): responses and events here are a
/// few hundred bytes, and ten thousand idle connections must stay cheap on the client side.
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// Bytes gathered before a write reaches the socket; requests are sent with an explicit
/// flush, so this only bounds the buffer.
const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// The underlying stream.
pub type Ws = WebSocketStream<TcpStream>;
/// The write half of a split connection.
pub type WsSink = SplitSink<Ws, Message>;
/// The read half of a split connection.
pub type WsStream = SplitStream<Ws>;

/// One client connection.
#[derive(Debug)]
pub struct Conn {
    ws: Ws,
    next_id: u64,
}

/// The connection configuration of every load client.
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
}

/// Opens a WebSocket to `ws://addr/` (Nagle off, as the daemon's side).
pub async fn connect_ws(addr: SocketAddr) -> anyhow::Result<Ws> {
    let connect = async {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let url = format!("ws://{addr}/");
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            url.as_str(),
            stream,
            Some(client_config()),
        )
        .await
        .with_context(|| format!("WebSocket upgrade with {url}"))?;
        Ok::<_, anyhow::Error>(ws)
    };
    tokio::time::timeout(CALL_TIMEOUT, connect)
        .await
        .map_err(|_| anyhow!("connecting to {addr}: timed out"))?
}

/// A JSON-RPC request frame.
pub fn request_text(id: u64, method: &str, params: &Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

/// A response's `result`, or its `error` object as an `Err`.
pub fn outcome(response: Value) -> Result<Value, Value> {
    match response {
        Value::Object(mut map) => match map.remove("error") {
            Some(error) => Err(error),
            None => Ok(map.remove("result").unwrap_or(Value::Null)),
        },
        other => Err(json!({"message": format!("not a response object: {other}")})),
    }
}

/// Reads the next text frame (pings are answered by tungstenite as it reads); an error
/// once the connection is closed.
pub async fn next_text<S>(stream: &mut S) -> anyhow::Result<String>
where
    S: futures::Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        match stream.next().await {
            None => bail!("connection closed"),
            Some(Err(err)) => return Err(err).context("reading a frame"),
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => bail!("connection closed: {frame:?}"),
            Some(Ok(_)) => {}
        }
    }
}

impl Conn {
    /// Connects to `ws://addr/`.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            ws: connect_ws(addr).await?,
            next_id: 0,
        })
    }

    /// Connects and authenticates with `params` (`{token}`, `{host_token}`, …).
    pub async fn authenticated(addr: SocketAddr, params: Value) -> anyhow::Result<Self> {
        let mut conn = Self::connect(addr).await?;
        conn.call("session.auth", params)
            .await?
            .map_err(|error| anyhow!("session.auth refused: {error}"))?;
        Ok(conn)
    }

    /// A fresh request id.
    pub fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends a text frame and flushes it.
    pub async fn send_text(&mut self, text: String) -> anyhow::Result<()> {
        self.ws
            .send(Message::text(text))
            .await
            .context("sending a frame")
    }

    /// Reads the next text frame.
    pub async fn next_text(&mut self) -> anyhow::Result<String> {
        next_text(&mut self.ws).await
    }

    /// Waits for the response with `id`, dropping any other frame; `Err` on a transport
    /// failure (closed, timed out), `Ok(Err(error))` on a JSON-RPC error.
    pub async fn response(&mut self, id: u64) -> anyhow::Result<Result<Value, Value>> {
        let wait = async {
            loop {
                let text = self.next_text().await?;
                let value: Value = serde_json::from_str(&text).context("a non-JSON frame")?;
                if value.get("method").is_none() && value.get("id") == Some(&json!(id)) {
                    return Ok(outcome(value));
                }
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, wait)
            .await
            .map_err(|_| anyhow!("no response to request {id} within {CALL_TIMEOUT:?}"))?
    }

    /// Calls `method` and waits for its response.
    pub async fn call(
        &mut self,
        method: &str,
        params: Value,
    ) -> anyhow::Result<Result<Value, Value>> {
        let id = self.fresh_id();
        self.send_text(request_text(id, method, &params)).await?;
        self.response(id).await
    }

    /// Calls `method`, expecting a result.
    pub async fn ok(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.call(method, params)
            .await?
            .map_err(|error| anyhow!("{method}: {error}"))
    }

    /// The two halves, for drivers that send and read concurrently.
    pub fn split(self) -> (WsSink, WsStream) {
        self.ws.split()
    }

    /// Closes the connection (close handshake, bounded).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.ws.close(None)).await;
    }
}
