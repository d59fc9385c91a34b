//! The dashboard (PROTOCOL.md §17) on `127.0.0.1:<port + 1>`: the page (`GET /`, its
//! assets embedded from `assets/dashboard/`), `GET /auth-token` and the read-only JSON API
//! under `/api/`.
//!
//! Every route first checks the `Host` header against the loopback names of the port it is
//! served on (403 otherwise: a page of another origin that a DNS rebinding points at
//! 127.0.0.1 must not read it). The API answers `GET` only (405), to the host token only
//! (401), and reads through the same functions the WebSocket methods and MCP use
//! (`runs.list`, `runs.get_trace`, `log.read`, `host.approvals`), so the three never
//! disagree; what only the dashboard shows (a run's timeline, the stats) is computed from
//! the projection and the log by [`car_projections::timeline`], never in the page.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use car_events::event::Role;
use car_projections::{Actor, RunStatus, timeline, trace};
use serde_json::{Map, Value, json};

use super::{HttpError, json_response};
use crate::app::App;
use crate::handlers::{approvals, log, runs};
use crate::reads::{MAX_RESPONSE_BYTES, read_blocking};
use crate::rpc::RpcError;

/// The page and its assets, embedded at build time (files in `assets/dashboard/`).
const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("../../assets/dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../../assets/dashboard/dashboard.css");

/// What the dashboard's routes share.
#[derive(Debug, Clone)]
struct Dashboard {
    app: Arc<App>,
    /// The port it is served on: the only one `Host` may name.
    port: u16,
    /// The WebSocket endpoint the page follows live (`ws://127.0.0.1:<port>/` for a
    /// wildcard listen address).
    ws_url: String,
}

/// The dashboard's routes, served on `addr`, for the WebSocket endpoint on `ws`.
pub fn router(app: Arc<App>, addr: SocketAddr, ws: SocketAddr) -> Router {
    let ws_host = if ws.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], ws.port()))
    } else {
        ws
    };
    let dashboard = Dashboard {
        app,
        port: addr.port(),
        ws_url: format!("ws://{ws_host}/"),
    };
    let api = Router::new()
        .route("/api/runs", get(runs_list))
        .route("/api/runs/{run_id}", get(run_timeline))
        .route("/api/runs/{run_id}/trace", get(run_trace))
        .route("/api/events", get(events))
        .route("/api/approvals", get(approvals_list))
        .route("/api/stats", get(stats))
        .route_layer(axum::middleware::from_fn_with_state(
            dashboard.clone(),
            host_bearer,
        ));
    Router::new()
        .route("/", get(page))
        .route("/assets/dashboard.js", get(script))
        .route("/assets/dashboard.css", get(style))
        // Browsers ask for it unprompted; there is none, and saying so costs no 404.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/auth-token", get(auth_token))
        .merge(api)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            dashboard.clone(),
            same_host,
        ))
        .with_state(dashboard)
}

/// 403 on every route for a `Host` that is not this port on a loopback name.
async fn same_host(State(d): State<Dashboard>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !own_origin_host(host, d.port) {
        return HttpError::new(StatusCode::FORBIDDEN, "forbidden: Host").into_response();
    }
    if request.uri().path().starts_with("/api/") && request.method() != Method::GET {
        return HttpError::method_not_allowed("GET").into_response();
    }
    next.run(request).await
}

/// Whether `host` (a `Host` header, or an origin's host part) is this port on loopback.
fn own_origin_host(host: &str, port: u16) -> bool {
    ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .any(|name| host == format!("{name}:{port}"))
}

/// The API answers the host token only (nobody is asked with auth disabled).
async fn host_bearer(State(d): State<Dashboard>, request: Request, next: Next) -> Response {
    match super::caller(&d.app, request.headers()) {
        Ok(None | Some(Role::Host)) => next.run(request).await,
        Ok(Some(_)) | Err(_) => HttpError::unauthorized().into_response(),
    }
}

async fn not_found() -> HttpError {
    HttpError::not_found()
}

/// `GET /`: the page, with the WebSocket endpoint it follows; its CSP allows nothing but
/// this origin and that endpoint.
async fn page(State(d): State<Dashboard>) -> Response {
    let html = INDEX_HTML.replace("{{WS_URL}}", &d.ws_url);
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self' {}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        d.ws_url
    );
    let mut response = asset(html, "text/html; charset=utf-8");
    if let Ok(csp) = HeaderValue::from_str(&csp) {
        response
            .headers_mut()
            .insert(axum::http::header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

async fn script() -> Response {
    asset(DASHBOARD_JS.to_owned(), "text/javascript; charset=utf-8")
}

async fn style() -> Response {
    asset(DASHBOARD_CSS.to_owned(), "text/css; charset=utf-8")
}

/// A page or asset: its type, never cached (a daemon upgrade serves the new page).
fn asset(body: String, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `GET /auth-token` (CAR): the daemon token, to loopback peers of this origin only;
/// never the host token.
async fn auth_token(
    State(d): State<Dashboard>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if !peer.ip().is_loopback() {
        return HttpError::new(StatusCode::FORBIDDEN, "forbidden: not a loopback peer")
            .into_response();
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let own = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .is_some_and(|host| own_origin_host(host, d.port));
        if !own {
            return HttpError::new(StatusCode::FORBIDDEN, "forbidden: Origin").into_response();
        }
    }
    let token = if d.app.config.auth {
        d.app.tokens.auth.expose().to_owned()
    } else {
        String::new()
    };
    let mut response = token.into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The API's reader: an unrestricted host.
fn host() -> Actor {
    Actor::host("dashboard")
}

/// A refusal as the API words it: 400 `{"error": "<param>: <reason>"}`.
fn bad_request(err: RpcError) -> HttpError {
    match err {
        RpcError::InvalidParams(message) => HttpError::new(
            StatusCode::BAD_REQUEST,
            message
                .strip_prefix("invalid params: ")
                .unwrap_or(&message)
                .to_owned(),
        ),
        other => internal(other),
    }
}

fn internal(err: RpcError) -> HttpError {
    tracing::warn!(%err, "dashboard API");
    HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
}

/// Query parameters as the JSON params of the method they stand for: a value that reads
/// as a number becomes one where `numeric` names it (else 400).
fn params(query: &[(String, String)], numeric: &[&str]) -> Result<Value, HttpError> {
    let mut out = Map::new();
    for (name, value) in query {
        let value = if numeric.contains(&name.as_str()) {
            let n: u64 = value.parse().map_err(|_| {
                HttpError::new(
                    StatusCode::BAD_REQUEST,
                    format!("{name}: expected a non-negative integer"),
                )
            })?;
            json!(n)
        } else {
            json!(value)
        };
        out.insert(name.clone(), value);
    }
    Ok(Value::Object(out))
}

fn ok(value: &Value) -> Response {
    json_response(StatusCode::OK, value)
}

/// `/api/runs?agent_id&status&limit&before`: `runs.list` as a host sees it, each summary
/// with its `termination_kind`.
async fn runs_list(
    State(d): State<Dashboard>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, HttpError> {
    let params = params(&query, &["limit"])?;
    let query = runs::ListQuery::parse(params).map_err(bad_request)?;
    let mut answer = runs::list_runs(&d.app, &host(), query)
        .await
        .map_err(bad_request)?;
    let ids: Vec<String> = answer["runs"]
        .as_array()
        .map(|runs| {
            runs.iter()
                .filter_map(|r| r["run_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let summaries = d
        .app
        .writer
        .read(move |state| {
            ids.iter()
                .filter_map(|id| state.run(id).map(timeline::summary))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| internal(e.into()))?;
    answer["runs"] = Value::from(summaries);
    Ok(ok(&answer))
}

/// `/api/runs/<run_id>`: the summary and the timeline (start, turns, model turns, tool
/// calls, approvals, end), in time order.
async fn run_timeline(
    State(d): State<Dashboard>,
    Path(run_id): Path<String>,
) -> Result<Response, HttpError> {
    let found = d
        .app
        .writer
        .read(move |state| state.run(&run_id).cloned())
        .await
        .map_err(|e| internal(e.into()))?;
    let run = found.ok_or_else(HttpError::not_found)?;
    let log = d.app.writer.log().clone();
    let reading = run.clone();
    let (records, related) = read_blocking(move || {
        let records = trace::trace_page(log.as_ref(), &reading, 0, usize::MAX, MAX_RESPONSE_BYTES)?;
        let mut related = Vec::with_capacity(reading.related.len());
        for seq in &reading.related {
            if let Some(env) = log.get(*seq)? {
                related.push(env);
            }
        }
        Ok::<_, car_projections::trace::TraceError>((records, related))
    })
    .await
    .map_err(internal)?;
    let answer = d
        .app
        .writer
        .read(move |state| timeline::build(state, &run, &records, &related))
        .await
        .map_err(|e| internal(e.into()))?;
    Ok(ok(&answer))
}

/// `/api/runs/<run_id>/trace?cursor`: `runs.get_trace`.
async fn run_trace(
    State(d): State<Dashboard>,
    Path(run_id): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, HttpError> {
    let mut params = params(&query, &["cursor"])?;
    params["run_id"] = json!(run_id);
    let params = crate::rpc::parse(params).map_err(bad_request)?;
    let answer = runs::read_trace(&d.app, &host(), params, None)
        .await
        .map_err(bad_request)?;
    if answer.get("not_found").is_some() {
        return Err(HttpError::not_found());
    }
    Ok(ok(&answer))
}

/// `/api/events?from_seq&limit&kinds`: `log.read` (`kinds` comma-separated).
async fn events(
    State(d): State<Dashboard>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, HttpError> {
    let kinds: Vec<(String, String)> = query
        .iter()
        .filter(|(name, _)| name != "kinds")
        .cloned()
        .collect();
    let mut params = params(&kinds, &["from_seq", "limit"])?;
    if let Some((_, list)) = query.iter().find(|(name, _)| name == "kinds") {
        params["kinds"] = json!(list.split(',').map(str::trim).collect::<Vec<_>>());
    }
    let read = log::parse_read(params).map_err(bad_request)?;
    let answer = log::read_log(&d.app, read).await.map_err(bad_request)?;
    Ok(ok(&answer))
}

/// `/api/approvals?status`: `host.approvals`.
async fn approvals_list(
    State(d): State<Dashboard>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, HttpError> {
    let status = approvals::parse_list(params(&query, &[])?).map_err(bad_request)?;
    let answer = approvals::list_approvals(&d.app, &host(), status)
        .await
        .map_err(bad_request)?;
    Ok(ok(&answer))
}

/// `/api/stats`.
async fn stats(State(d): State<Dashboard>) -> Result<Response, HttpError> {
    let version = env!("CARGO_PKG_VERSION");
    let now = d.app.now();
    let answer = d
        .app
        .writer
        .read(move |state| {
            let count = |status| state.runs().filter(|r| r.status() == status).count();
            let uptime = state
                .daemon()
                .map_or(0, |daemon| (now - daemon.started_at).num_seconds().max(0));
            json!({
                "version": version,
                "uptime_s": uptime,
                "head_seq": state.head(),
                "runs": {
                    "in_progress": count(RunStatus::InProgress),
                    "completed": count(RunStatus::Completed),
                    "incomplete": count(RunStatus::Incomplete),
                },
                "approvals_pending": state
                    .approvals()
                    .iter()
                    .filter(|a| a.status == car_projections::state::ApprovalStatus::Pending)
                    .count(),
                "sessions_open": state.sessions().count(),
                "agents": {
                    "registered": state.registered_agents().len(),
                    "running": state
                        .registered_agents()
                        .iter()
                        .filter(|a| a.status == car_events::event::AgentStatus::Running)
                        .count(),
                    "attached": state.agents().count(),
                },
                "chats_active": state.chats().active(),
                // A2A tasks (§15) are not served by this build yet: none exist.
                "a2a_tasks_active": 0,
            })
        })
        .await
        .map_err(|e| internal(e.into()))?;
    Ok(ok(&answer))
}
