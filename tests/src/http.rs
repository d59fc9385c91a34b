//! A plain HTTP/1.1 client for the daemon's HTTP endpoints (MCP now), over hyper's
//! client connection: one connection per request, every header and byte of the request
//! as the test gives it (so tests can send malformed bodies, odd headers, any method), and
//! the whole response back. [`McpClient`] adds the MCP conveniences: the bearer header,
//! JSON-RPC calls, `tools/call`.

use std::net::SocketAddr;

use anyhow::{Context, anyhow, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::WAIT;

/// A response, whole.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers (names lower-case), in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON. Panics if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "HTTP {} body is not JSON ({err}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request to `addr` and reads the whole response (bounded by [`WAIT`]).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> anyhow::Result<HttpResponse> {
    tokio::time::timeout(WAIT, send(addr, method, path, headers, body.into()))
        .await
        .map_err(|_| anyhow!("{method} {path} on {addr}: no response within {WAIT:?}"))?
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> anyhow::Result<HttpResponse> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    let driver = tokio::spawn(connection);
    let mut builder = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).context("method")?)
        .uri(path);
    // The test's own `Host`, if it gives one (to send a wrong one), else the address.
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        builder = builder.header("host", addr.to_string());
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(body))
        .context("building the request")?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("{method} {path}"))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the body")?
        .to_bytes()
        .to_vec();
    driver.abort();
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// An MCP client over plain HTTP: `POST /mcp` with a bearer token and, once
/// [`McpClient::initialize`] ran, the session id.
#[derive(Debug, Clone)]
pub struct McpClient {
    /// The endpoint's address.
    pub addr: SocketAddr,
    /// The bearer token sent (`None`: no `Authorization` header).
    pub token: Option<String>,
    /// The session id sent (`MCP-Session-Id`), if any.
    pub session: Option<String>,
    next_id: u64,
}

impl McpClient {
    /// A client sending `Authorization: Bearer <token>`.
    pub fn new(addr: SocketAddr, token: &str) -> Self {
        Self {
            addr,
            token: Some(token.to_owned()),
            session: None,
            next_id: 0,
        }
    }

    /// A client sending no token.
    pub fn anonymous(addr: SocketAddr) -> Self {
        Self {
            addr,
            token: None,
            session: None,
            next_id: 0,
        }
    }

    /// POSTs `body` (any bytes) to `/mcp` with this client's headers and `extra`.
    pub async fn post_raw(
        &self,
        body: impl Into<Bytes>,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<HttpResponse> {
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ];
        if let Some(bearer) = &bearer {
            headers.push(("authorization", bearer));
        }
        if let Some(session) = &self.session {
            headers.push(("mcp-session-id", session));
        }
        headers.extend_from_slice(extra);
        request(self.addr, "POST", "/mcp", &headers, body).await
    }

    /// POSTs a JSON value.
    pub async fn post(&self, body: &Value) -> HttpResponse {
        self.post_raw(body.to_string(), &[])
            .await
            .unwrap_or_else(|err| panic!("{err:#}"))
    }

    /// A request object with a fresh id.
    pub fn request_object(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
    }

    /// Calls `method`: the JSON-RPC response object (`result` or `error`), after checking
    /// that it came with HTTP 200 as `application/json` and carries the request's id.
    pub async fn rpc(&mut self, method: &str, params: Value) -> Value {
        let request = self.request_object(method, params);
        let response = self.post(&request).await;
        assert_eq!(
            response.status,
            200,
            "{method}: HTTP {} {}",
            response.status,
            response.text()
        );
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{method}"
        );
        let body = response.json();
        assert_eq!(body["jsonrpc"], "2.0", "{body}");
        assert_eq!(body["id"], request["id"], "{body}");
        body
    }

    /// Calls `method`, expecting a result.
    pub async fn ok(&mut self, method: &str, params: Value) -> Value {
        let body = self.rpc(method, params.clone()).await;
        match body.get("result") {
            Some(result) => result.clone(),
            None => panic!("{method} {params}: expected a result, got {body}"),
        }
    }

    /// Calls `method`, expecting an error: `(code, message)`.
    pub async fn err(&mut self, method: &str, params: Value) -> (i64, String) {
        let body = self.rpc(method, params.clone()).await;
        match body.get("error") {
            Some(error) => (
                error["code"].as_i64().unwrap_or_default(),
                error["message"].as_str().unwrap_or_default().to_owned(),
            ),
            None => panic!("{method} {params}: expected an error, got {body}"),
        }
    }

    /// `initialize` at `version`; keeps the session id it returns.
    pub async fn initialize(&mut self, version: &str) -> anyhow::Result<Value> {
        let request = self.request_object(
            "initialize",
            json!({
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": {"name": "car-tests", "version": "0"},
            }),
        );
        let response = self.post_raw(request.to_string(), &[]).await?;
        if response.status != 200 {
            bail!("initialize: HTTP {} {}", response.status, response.text());
        }
        let session = response
            .header("mcp-session-id")
            .context("initialize: no MCP-Session-Id")?;
        self.session = Some(session.to_owned());
        Ok(response.json()["result"].clone())
    }

    /// `tools/call`: the whole tool result (`content`, `structuredContent`, `isError`).
    pub async fn call_tool(&mut self, name: &str, arguments: Value) -> Value {
        self.ok("tools/call", json!({"name": name, "arguments": arguments}))
            .await
    }

    /// `tools/call` of a tool expected to succeed: its result, parsed from the text
    /// content (and checked against `structuredContent` when it is an object).
    pub async fn tool(&mut self, name: &str, arguments: Value) -> Value {
        let answer = self.call_tool(name, arguments.clone()).await;
        assert_eq!(answer["isError"], false, "{name} {arguments}: {answer}");
        let text = answer["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no text content: {answer}"));
        assert_eq!(answer["content"][0]["type"], "text");
        let result: Value = serde_json::from_str(text)
            .unwrap_or_else(|err| panic!("{name}: text is not JSON ({err}): {text}"));
        if result.is_object() {
            assert_eq!(answer["structuredContent"], result, "{name}");
        } else {
            assert!(
                answer.get("structuredContent").is_none(),
                "{name}: {answer}"
            );
        }
        result
    }

    /// `tools/call` of a tool expected to fail: its error text.
    pub async fn tool_error(&mut self, name: &str, arguments: Value) -> String {
        let answer = self.call_tool(name, arguments.clone()).await;
        assert_eq!(answer["isError"], true, "{name} {arguments}: {answer}");
        answer["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no text content: {answer}"))
            .to_owned()
    }
}
