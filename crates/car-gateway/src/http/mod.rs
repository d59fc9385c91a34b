//! What every HTTP endpoint of the daemon shares (PROTOCOL.md §15–18): one stack (axum on
//! hyper, HTTP/1.1), so MCP today and the dashboard and A2A later bind, serve, stop and
//! fail the same way.
//!
//! - [`Bind`]: an endpoint's address flag: off, the default address, or one given
//!   explicitly. [`bind`] applies §18's rule: a default address that cannot be bound is
//!   skipped with a warning, an explicit one stops the start ([`StartError::HttpBind`],
//!   exit 2).
//! - [`Listener`] and [`serve`]: a bound endpoint and its router, served until the daemon
//!   begins to stop (`App::stopping`), then drained gracefully with the WebSocket
//!   connections (the daemon waits for both before it records the stop).
//! - [`HttpError`]: the one mapping of a refusal to a response: a status and the JSON body
//!   `{"error": "<message>", …}`, plus the headers a status needs (`WWW-Authenticate`,
//!   `Allow`).
//! - [`bearer`], [`caller`]: who is asking, from `Authorization: Bearer <token>`, the
//!   tokens compared in constant time ([`crate::tokens::Secret::matches`]).
//! - [`read_body`]: a body read up to `--max-message-bytes` (over it: 413).
//! - [`catch_panic`]: a handler that panics answers 500 `{"error": "internal error"}`;
//!   nothing of the panic reaches the client.
//!
//! The endpoints themselves live in their own modules ([`mcp`], [`dashboard`]); nothing
//! here knows either.

pub mod dashboard;
pub mod mcp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use car_events::event::Role;
use futures::FutureExt;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::daemon::StartError;

/// An HTTP endpoint's address setting (`--mcp-bind ADDR|disabled` and the like).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// Off.
    Disabled,
    /// The default address: if it cannot be bound, a warning and no endpoint.
    Default(SocketAddr),
    /// An address given on the command line or in the environment: if it cannot be
    /// bound, the daemon does not start (exit 2).
    Explicit(SocketAddr),
}

impl Bind {
    /// Reads a flag's value: `disabled`, or `IP:PORT` (`localhost:PORT` is `127.0.0.1`).
    /// `None` (the flag absent) is `default`.
    pub fn parse(flag: &str, value: Option<&str>, default: SocketAddr) -> Result<Self, String> {
        let Some(text) = value.map(str::trim) else {
            return Ok(Bind::Default(default));
        };
        if text.eq_ignore_ascii_case("disabled") {
            return Ok(Bind::Disabled);
        }
        let addr = match text.strip_prefix("localhost:") {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
            None => text.parse::<SocketAddr>().ok(),
        };
        addr.map(Bind::Explicit)
            .ok_or_else(|| format!("{flag} {text:?}: expected IP:PORT or disabled"))
    }

    /// The address to bind, if on.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Bind::Disabled => None,
            Bind::Default(addr) | Bind::Explicit(addr) => Some(*addr),
        }
    }
}

/// A bound HTTP endpoint and what it serves.
#[derive(Debug)]
pub struct Listener {
    /// Its name in logs (`mcp`).
    pub name: &'static str,
    /// The bound socket.
    pub listener: TcpListener,
    /// The address actually bound (port 0 resolved).
    pub addr: SocketAddr,
    /// What it serves.
    pub router: Router,
}

/// Binds endpoint `name` as `bind` says (PROTOCOL.md §16, §18): `Ok(None)` when it is off
/// or when its default address cannot be bound (logged as a warning), an error when an
/// explicit address cannot be bound.
pub async fn bind(
    name: &'static str,
    bind: Bind,
) -> Result<Option<(TcpListener, SocketAddr)>, StartError> {
    let Some(addr) = bind.addr() else {
        return Ok(None);
    };
    let bound = match TcpListener::bind(addr).await {
        Ok(listener) => listener.local_addr().map(|local| (listener, local)),
        Err(err) => Err(err),
    };
    match (bound, bind) {
        (Ok(bound), _) => Ok(Some(bound)),
        (Err(source), Bind::Explicit(_)) => Err(StartError::HttpBind { name, addr, source }),
        (Err(err), _) => {
            tracing::warn!(
                "{name}: cannot listen on the default address {addr} ({err}): {name} is off"
            );
            Ok(None)
        }
    }
}

/// Serves `listener` until `stopping` is cancelled, then finishes the requests in flight
/// (hyper's graceful shutdown: idle keep-alive connections close at once). The daemon
/// waits for the returned task, within its drain timeout, before it records the stop.
pub fn serve(listener: Listener, stopping: CancellationToken) -> JoinHandle<()> {
    let Listener {
        name,
        listener,
        router,
        ..
    } = listener;
    let router = router.layer(axum::middleware::from_fn(catch_panic));
    tokio::spawn(async move {
        let served = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stopping.cancelled_owned())
        .await;
        if let Err(err) = served {
            tracing::error!(%err, "{name}: the HTTP listener failed");
        }
    })
}

/// A refusal as an HTTP response: `status` and `{"error": message, …extra}`.
#[derive(Debug, Clone)]
pub struct HttpError {
    status: StatusCode,
    body: Map<String, Value>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl HttpError {
    /// `status` with `{"error": message}`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let mut body = Map::new();
        body.insert("error".into(), Value::String(message.into()));
        Self {
            status,
            body,
            headers: Vec::new(),
        }
    }

    /// 401 `{"error":"unauthorized"}` with `WWW-Authenticate: Bearer`.
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized")
            .header(axum::http::header::WWW_AUTHENTICATE, "Bearer")
    }

    /// 404 `{"error":"not found"}`.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not found")
    }

    /// 405 `{"error":"method not allowed"}` with `Allow: <allow>`.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            .header(axum::http::header::ALLOW, allow)
    }

    /// Adds a field to the body.
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.body.insert(key.into(), value);
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: HeaderName, value: &'static str) -> Self {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut response = json_response(self.status, &Value::Object(self.body));
        response.headers_mut().extend(self.headers);
        response
    }
}

/// `status` with `value` as an `application/json` body.
pub fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut response = Response::new(Body::from(value.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case), if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Who is asking, by bearer token: the daemon token is a `client`, the host token a
/// `host`; anything else (or nothing) is 401. With auth disabled nobody is asked for a
/// token: `Ok(None)`, the caller being unrestricted.
pub fn caller(app: &App, headers: &HeaderMap) -> Result<Option<Role>, HttpError> {
    if !app.config.auth {
        return Ok(None);
    }
    let token = bearer(headers).unwrap_or_default();
    // Both comparisons always run (each in constant time), whichever matches.
    let (client, host) = (
        app.tokens.auth.matches(token),
        app.tokens.host.matches(token),
    );
    match (client, host) {
        (_, true) => Ok(Some(Role::Host)),
        (true, false) => Ok(Some(Role::Client)),
        (false, false) => Err(HttpError::unauthorized()),
    }
}

/// Reads a request body of at most `limit` bytes; a longer one is 413.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, HttpError> {
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        // Length limits and transport failures look alike here; either way the request
        // is not read, and saying so is all the client needs.
        tracing::debug!(%err, "request body not read");
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {limit} bytes or could not be read"),
        )
    })
}

/// Middleware: a handler that panics answers 500 `{"error":"internal error"}` instead of
/// dropping the connection; the panic goes to the daemon's log.
pub async fn catch_panic(request: Request, next: Next) -> Response {
    match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "an HTTP handler panicked");
            json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": "internal error"}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_reads_disabled_addresses_and_the_default() {
        let default: SocketAddr = "127.0.0.1:9102".parse().unwrap();
        assert_eq!(
            Bind::parse("--x", None, default),
            Ok(Bind::Default(default))
        );
        assert_eq!(
            Bind::parse("--x", Some("disabled"), default),
            Ok(Bind::Disabled)
        );
        assert_eq!(
            Bind::parse("--x", Some("127.0.0.1:0"), default),
            Ok(Bind::Explicit("127.0.0.1:0".parse().unwrap()))
        );
        assert_eq!(
            Bind::parse("--x", Some("localhost:9200"), default),
            Ok(Bind::Explicit("127.0.0.1:9200".parse().unwrap()))
        );
        assert_eq!(
            Bind::parse("--x", Some("[::1]:9"), default),
            Ok(Bind::Explicit("[::1]:9".parse().unwrap()))
        );
        assert!(Bind::parse("--x", Some("nope"), default).is_err());
        assert!(Bind::parse("--x", Some("127.0.0.1"), default).is_err());
    }

    #[test]
    fn bearer_takes_the_token_of_a_bearer_header_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert("authorization", HeaderValue::from_static("bearer  abc "));
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&headers), None);
    }
}
