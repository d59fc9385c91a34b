//! The sending side of a connection: a bounded queue of frames that the connection's
//! sender task writes to the socket. Responses, notifications and subscription tails all
//! send through it; a peer that does not read makes them wait for room, never grow a
//! buffer.

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::rpc;

/// Outbound frames a connection may have queued. Small: a subscriber that does not read
/// holds at most this many frames here (plus the kernel's socket buffer) and its tail
/// simply waits; nothing is dropped and nothing else waits for it.
const OUTBOUND_FRAMES: usize = 32;

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

/// A connection's outbound queue: the [`Outbound`] side for everyone who sends, the
/// receiver for the connection's sender task.
pub(crate) fn channel() -> (Outbound, mpsc::Receiver<Frame>) {
    let (tx, rx) = mpsc::channel(OUTBOUND_FRAMES);
    (Outbound(tx), rx)
}

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

    /// Resolves once the connection's sender task is gone.
    pub(crate) async fn closed(&self) {
        self.0.closed().await;
    }

    /// Asks the sender to close the connection after what is queued.
    pub(crate) async fn close(&self, code: CloseCode, reason: &'static str) {
        let _ = self.0.send(Frame::Close(code, reason)).await;
    }
}
