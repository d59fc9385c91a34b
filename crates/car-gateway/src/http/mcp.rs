//! The MCP endpoint (PROTOCOL.md §16): `http://<--mcp-bind>/mcp`, MCP's streamable HTTP
//! transport without streams, so desktop assistants and IDEs read and write the daemon's
//! shared memory, its runs and its approvals.
//!
//! # Why a small axum service and not the official Rust SDK (`rmcp`)
//!
//! rmcp 3.11's streamable HTTP server (`StreamableHttpService`) cannot be configured to
//! answer as §16 requires:
//! - with sessions on it answers `GET /mcp` with an SSE stream and POSTs with SSE unless
//!   sessions are off; with sessions off there is no `MCP-Session-Id` and no `DELETE`;
//!   §16 wants sessions *and* one `application/json` response per request, `GET` → 405
//!   `Allow: POST, DELETE` (rmcp sends `Allow: POST`);
//! - an unsupported `MCP-Protocol-Version` gets a plain-text 400 and every revision rmcp
//!   knows is accepted; §16 wants exactly three and a JSON body naming them;
//! - its `Origin` check is an allow-list of exact origins (no `127.0.0.0/8`, any port), with
//!   a plain-text refusal, and it adds a `Host` check §16 does not have;
//! - it has no bearer check, no `/mcp/health`, no batch refusal with §16's message, and on
//!   newer revisions maps `-32601` to HTTP 404.
//!
//! Wrapping it in middleware would fix the checks but not the transport, and would bring a
//! large dependency (rmcp, schemars, macros) whose toolchain floor (1.88) is above the
//! workspace's. The MCP methods §16 asks for are few and plain JSON-RPC, so they are
//! written here against [`crate::rpc`] (the WebSocket's codes and messages) and the same
//! reads and commands as the WebSocket handlers; the official Python SDK client drives this
//! endpoint in the e2e tests (`tests/e2e/mcp.rs`).
//!
//! # The transport
//!
//! - `POST /mcp`: one JSON-RPC 2.0 object → one `application/json` response (HTTP 200, a
//!   JSON-RPC error included); a notification or a response → 202, empty; an array → 400
//!   `-32600` `"batches are not supported"`; not JSON → 400 `-32700`; not a JSON-RPC
//!   request → 400 `-32600`.
//! - `GET /mcp` (or any other method) → 405 `Allow: POST, DELETE`; `DELETE /mcp` with
//!   `MCP-Session-Id` → 204, or 404 for an unknown one.
//! - `GET /mcp/health`, no token → `{"status":"ok","protocol_version":"2025-11-25",
//!   "server_version":…}`.
//! - Checks on `/mcp`, in order: `Origin` (absent, or http/https on `localhost`,
//!   `127.0.0.0/8`, `[::1]`, any port; else 403), bearer (daemon token → role `client`, host
//!   token → `host`; else 401 with `WWW-Authenticate: Bearer`; not asked with auth
//!   disabled), `MCP-Protocol-Version` (absent or one of [`SUPPORTED_VERSIONS`]; else 400).
//!   Then a request carrying an `MCP-Session-Id` that is unknown or idle for 24 h is 404
//!   (`initialize` excepted: it starts a new session).
//!
//! Sessions are random UUIDs kept in memory only (never logged as events, gone at a
//! restart); they name the MCP caller (`mcp:<session id>`, or `mcp` without one) in the
//! events it causes, such as an approval's resolution. Roles are those of the WebSocket:
//! with the daemon token the runs tools find no run and `approvals_resolve` reaches only
//! system-level approvals. Memory tools act on the `shared` scope and mint `mcp-<n>` ids
//! with `source: "mcp"`. Writes go through the single writer like every other write; reads
//! wait until what they read is durable.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State as Extract;
use axum::http::header::HeaderValue;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use car_events::event::Role;
use car_projections::Actor;
use car_projections::decide::{Command, ResolveApproval};
use car_projections::memory::{AddFact, DeleteFact, MAX_QUERY_BYTES, Minter, Scope};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{HttpError, caller, json_response, read_body};
use crate::app::App;
use crate::handlers::{approvals, memory, runs};
use crate::rpc::{self, Incoming, RpcError};

/// The MCP revisions spoken, oldest first (PROTOCOL.md §16).
pub const SUPPORTED_VERSIONS: [&str; 3] = ["2024-11-05", "2025-06-18", "2025-11-25"];
/// The revision answered when the client asks for another one, and the one `/mcp/health`
/// reports.
pub const LATEST_VERSION: &str = "2025-11-25";
/// The session header.
pub const SESSION_HEADER: &str = "mcp-session-id";
/// The protocol-version header.
pub const VERSION_HEADER: &str = "mcp-protocol-version";
/// A session unused this long is forgotten (404 afterwards).
pub const SESSION_IDLE: Duration = Duration::from_secs(24 * 60 * 60);
/// The most sessions kept: beyond it the least recently used one is forgotten, so a
/// client that initializes in a loop cannot grow the daemon's memory without bound.
pub const MAX_SESSIONS: usize = 10_000;
/// `source` of the facts MCP adds.
const MCP_SOURCE: &str = "mcp";
/// The one prompt.
const CONTEXT_PROMPT: &str = "car_context";

/// The endpoint's shared state.
#[derive(Debug)]
struct Mcp {
    app: Arc<App>,
    sessions: Sessions,
}

/// The MCP router: `/mcp` and `/mcp/health`; anything else is 404.
pub fn router(app: Arc<App>) -> Router {
    let mcp = Arc::new(Mcp {
        app,
        sessions: Sessions::new(SESSION_IDLE, MAX_SESSIONS),
    });
    Router::new()
        .route("/mcp", any(endpoint))
        .route("/mcp/health", any(health))
        .fallback(|| async { HttpError::not_found() })
        .with_state(mcp)
}

/// `/mcp/health`: no token asked (a probe must not need one); the `Origin` check still
/// applies.
async fn health(method: Method, headers: HeaderMap) -> Response {
    if let Err(refused) = check_origin(&headers) {
        return refused.into_response();
    }
    if method != Method::GET && method != Method::HEAD {
        return HttpError::method_not_allowed("GET").into_response();
    }
    json_response(
        StatusCode::OK,
        &json!({
            "status": "ok",
            "protocol_version": LATEST_VERSION,
            "server_version": env!("CARGO_PKG_VERSION"),
        }),
    )
}

/// `/mcp`: the checks, then the method.
async fn endpoint(
    Extract(mcp): Extract<Arc<Mcp>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let role = match check(&mcp.app, &headers) {
        Ok(role) => role,
        Err(refused) => return refused.into_response(),
    };
    match method {
        Method::POST => post(&mcp, role, &headers, body).await,
        Method::DELETE => delete(&mcp, &headers),
        _ => HttpError::method_not_allowed("POST, DELETE").into_response(),
    }
}

/// The checks of §16, in order: `Origin`, bearer, `MCP-Protocol-Version`. `Ok(None)`: auth
/// is disabled.
fn check(app: &App, headers: &HeaderMap) -> Result<Option<Role>, HttpError> {
    check_origin(headers)?;
    let role = caller(app, headers)?;
    if let Some(value) = headers.get(VERSION_HEADER) {
        let requested = String::from_utf8_lossy(value.as_bytes());
        if !SUPPORTED_VERSIONS.contains(&requested.as_ref()) {
            return Err(HttpError::new(
                StatusCode::BAD_REQUEST,
                "unsupported MCP-Protocol-Version",
            )
            .with("requested", Value::from(requested.as_ref()))
            .with("supported", json!(SUPPORTED_VERSIONS)));
        }
    }
    Ok(role)
}

fn check_origin(headers: &HeaderMap) -> Result<(), HttpError> {
    match headers.get(axum::http::header::ORIGIN) {
        None => Ok(()),
        Some(origin) => match origin.to_str() {
            Ok(origin) if origin_allowed(origin) => Ok(()),
            _ => Err(HttpError::new(StatusCode::FORBIDDEN, "origin not allowed")),
        },
    }
}

/// Whether `origin` is http or https on `localhost`, `127.0.0.0/8` or `[::1]`, any port.
pub fn origin_allowed(origin: &str) -> bool {
    let origin = origin.trim().to_ascii_lowercase();
    let Some(authority) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, rest)) => (host, rest),
            None => return false,
        },
        None => match authority.find(':') {
            Some(colon) => authority.split_at(colon),
            None => (authority, ""),
        },
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
        });
    let host_ok = if authority.starts_with('[') {
        host.parse::<Ipv6Addr>() == Ok(Ipv6Addr::LOCALHOST)
    } else {
        host == "localhost"
            || host
                .parse::<Ipv4Addr>()
                .is_ok_and(|ip| ip.octets()[0] == 127)
    };
    port_ok && host_ok
}

/// The session id a request carries, if any (a value that is not text is an id no
/// session has).
fn session_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get(SESSION_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn session_not_found() -> Response {
    HttpError::new(StatusCode::NOT_FOUND, "unknown or expired MCP session").into_response()
}

/// `DELETE /mcp`: ends the session named by `MCP-Session-Id`.
fn delete(mcp: &Mcp, headers: &HeaderMap) -> Response {
    match session_header(headers) {
        None => HttpError::new(StatusCode::BAD_REQUEST, "MCP-Session-Id header required")
            .into_response(),
        Some(id) if mcp.sessions.remove(&id, Instant::now()) => {
            StatusCode::NO_CONTENT.into_response()
        }
        Some(_) => session_not_found(),
    }
}

/// A JSON-RPC error as an HTTP response with `status`.
fn rpc_failure(status: StatusCode, id: &Value, error: &RpcError) -> Response {
    json_response(status, &rpc::failure(id, error))
}

/// `POST /mcp`: one JSON-RPC message.
async fn post(mcp: &Arc<Mcp>, role: Option<Role>, headers: &HeaderMap, body: Body) -> Response {
    let bytes = match read_body(body, mcp.app.config.max_message_bytes).await {
        Ok(bytes) => bytes,
        Err(refused) => return refused.into_response(),
    };
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(err) => {
            return rpc_failure(
                StatusCode::BAD_REQUEST,
                &Value::Null,
                &RpcError::Parse(err.to_string()),
            );
        }
    };
    if value.is_array() {
        return rpc_failure(
            StatusCode::BAD_REQUEST,
            &Value::Null,
            &RpcError::InvalidRequest("batches are not supported".into()),
        );
    }
    let session = session_header(headers);
    let (id, method, params) = match rpc::classify(value) {
        Incoming::Invalid { id, error } => {
            return rpc_failure(StatusCode::BAD_REQUEST, &id, &error);
        }
        Incoming::Reply { .. } => {
            // This server never sends requests: a response to one has nothing to answer.
            if !session_live(mcp, session.as_deref()) {
                return session_not_found();
            }
            return StatusCode::ACCEPTED.into_response();
        }
        Incoming::Call { id, method, params } => (id, method, params),
    };
    if method != "initialize" && !session_live(mcp, session.as_deref()) {
        return session_not_found();
    }
    let Some(id) = id else {
        // Notifications (`notifications/initialized`, `notifications/cancelled`, …) need
        // nothing from this server.
        tracing::debug!(%method, "mcp notification");
        return StatusCode::ACCEPTED.into_response();
    };
    let actor = actor(role, session.as_deref().filter(|_| method != "initialize"));
    let deadline = mcp.app.config.handler_deadline;
    let answered = tokio::time::timeout(deadline, call(mcp, &actor, &method, params)).await;
    let (result, new_session) = match answered {
        Ok(Ok((result, new_session))) => (Ok(result), new_session),
        Ok(Err(err)) => (Err(err), None),
        Err(_) => (Err(RpcError::Deadline), None),
    };
    let mut response = json_response(StatusCode::OK, &rpc::response(&id, &result));
    if let Some(session) = new_session.and_then(|s| HeaderValue::from_str(&s).ok()) {
        response.headers_mut().insert(SESSION_HEADER, session);
    }
    response
}

/// Whether a request may go on: one naming a session must name a live one.
fn session_live(mcp: &Mcp, session: Option<&str>) -> bool {
    session.is_none_or(|id| mcp.sessions.touch(id, Instant::now()))
}

/// Who an MCP request is: its role by token (unrestricted with auth disabled), and a
/// client id naming the MCP session (`mcp:<id>`), or `mcp` without one. No WebSocket
/// session has such an id (theirs are UUIDs), so an MCP caller never owns a run.
fn actor(role: Option<Role>, session: Option<&str>) -> Actor {
    let client_id = session.map_or_else(|| "mcp".to_owned(), |id| format!("mcp:{id}"));
    match role {
        None => Actor::client(client_id).unrestricted(),
        Some(Role::Host) => Actor::host(client_id),
        Some(_) => Actor::client(client_id),
    }
}

/// Answers one request: its result, and for `initialize` the new session's id.
async fn call(
    mcp: &Mcp,
    actor: &Actor,
    method: &str,
    params: Value,
) -> Result<(Value, Option<String>), RpcError> {
    let app = &mcp.app;
    let result = match method {
        "initialize" => {
            let session = mcp.sessions.create(Instant::now());
            return Ok((initialize(&params), Some(session)));
        }
        "ping" => json!({}),
        "tools/list" => json!({"tools": tool_list()}),
        "tools/call" => call_tool(app, actor, params).await?,
        "prompts/list" => json!({"prompts": prompt_list()}),
        "prompts/get" => get_prompt(app, params).await?,
        "resources/list" => json!({"resources": []}),
        other => return Err(RpcError::MethodNotFound(other.to_owned())),
    };
    Ok((result, None))
}

/// `initialize`: the client's revision if spoken, else the latest.
fn initialize(params: &Value) -> Value {
    let asked = params.get("protocolVersion").and_then(Value::as_str);
    let version = asked
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .unwrap_or(LATEST_VERSION);
    json!({
        "protocolVersion": version,
        "capabilities": {
            "tools": {},
            "prompts": {"listChanged": false},
            "resources": {"subscribe": false, "listChanged": false},
        },
        "serverInfo": {"name": "car-server", "version": env!("CARGO_PKG_VERSION")},
    })
}

// ---------------------------------------------------------------------------------------
// Tools

/// One tool: name, description, input schema, and whether it only reads, destroys, or may
/// be repeated without further effect.
struct ToolSpec {
    name: &'static str,
    description: &'static str,
    schema: fn() -> Value,
    read_only: bool,
    destructive: bool,
    idempotent: bool,
}

const TOOLS: [ToolSpec; 7] = [
    ToolSpec {
        name: "memory_add_fact",
        description: "Add a fact to car's shared memory. Returns the number of facts in it.",
        schema: || {
            object_schema(
                json!({
                    "subject": {"type": "string", "minLength": 1, "description": "What the fact is about (1-1024 bytes)."},
                    "body": {"type": "string", "minLength": 1, "description": "The fact (1-16384 bytes)."},
                    "kind": {"type": "string", "pattern": "^[a-z_]{1,32}$", "description": "pattern (default), constraint, identity, conversation, environment, or another [a-z_] word."},
                }),
                &["subject", "body"],
            )
        },
        read_only: false,
        destructive: false,
        idempotent: false,
    },
    ToolSpec {
        name: "memory_query",
        description: "Find the facts of car's shared memory most relevant to a query (BM25), best first.",
        schema: || {
            object_schema(
                json!({
                    "query": {"type": "string", "minLength": 1, "description": "What to look for (1-4096 bytes)."},
                    "k": {"type": "integer", "minimum": 1, "maximum": 50, "description": "How many facts at most (default 5)."},
                }),
                &["query"],
            )
        },
        read_only: true,
        destructive: false,
        idempotent: true,
    },
    ToolSpec {
        name: "memory_delete",
        description: "Delete a fact of car's shared memory by id.",
        schema: || {
            object_schema(
                json!({"id": {"type": "string", "description": "The fact_id."}}),
                &["id"],
            )
        },
        read_only: false,
        destructive: true,
        idempotent: true,
    },
    ToolSpec {
        name: "runs_list",
        description: "List the agent runs the caller may read, newest first.",
        schema: || {
            object_schema(
                json!({
                    "agent_id": {"type": "string", "description": "Only this agent's runs."},
                    "status": {"type": "string", "enum": ["in_progress", "completed", "incomplete"]},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "description": "Default 100."},
                    "before": {"type": "string", "description": "A run_id to page from."},
                }),
                &[],
            )
        },
        read_only: true,
        destructive: false,
        idempotent: true,
    },
    ToolSpec {
        name: "runs_get_trace",
        description: "A run's trace: its start, its turns and its end, from a cursor.",
        schema: || {
            object_schema(
                json!({
                    "run_id": {"type": "string"},
                    "cursor": {"type": "integer", "minimum": 0, "description": "Position to start from (0: the start record)."},
                }),
                &["run_id"],
            )
        },
        read_only: true,
        destructive: false,
        idempotent: true,
    },
    ToolSpec {
        name: "approvals_list",
        description: "List the approvals the caller may see.",
        schema: || {
            object_schema(
                json!({"status": {"type": "string", "enum": ["pending", "resolved", "expired"]}}),
                &[],
            )
        },
        read_only: true,
        destructive: false,
        idempotent: true,
    },
    ToolSpec {
        name: "approvals_resolve",
        description: "Resolve a pending approval with one of its options (e.g. approve or deny).",
        schema: || {
            object_schema(
                json!({
                    "approval_id": {"type": "string"},
                    "resolution": {"type": "string", "description": "One of the approval's options."},
                }),
                &["approval_id", "resolution"],
            )
        },
        read_only: false,
        destructive: false,
        idempotent: false,
    },
];

fn object_schema(properties: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required})
}

fn tool_list() -> Vec<Value> {
    TOOLS
        .iter()
        .map(|tool| {
            json!({
                "name": tool.name,
                "description": tool.description,
                "inputSchema": (tool.schema)(),
                "annotations": {
                    "readOnlyHint": tool.read_only,
                    "destructiveHint": tool.destructive,
                    "idempotentHint": tool.idempotent,
                    "openWorldHint": false,
                },
            })
        })
        .collect()
}

/// `tools/call`: an unknown tool (or none named) is a JSON-RPC error; a tool that fails
/// (bad arguments: the `-32602` message of its WebSocket method; a refusal: its `-32603`)
/// answers `isError: true` with the message as its text.
async fn call_tool(app: &Arc<App>, actor: &Actor, params: Value) -> Result<Value, RpcError> {
    let name = match params.get("name") {
        Some(Value::String(name)) if TOOLS.iter().any(|t| t.name == name) => name.clone(),
        Some(Value::String(name)) => {
            return Err(RpcError::InvalidParams(format!("unknown tool: {name}")));
        }
        other => {
            let given = other.map_or_else(|| "(none)".to_owned(), Value::to_string);
            return Err(RpcError::InvalidParams(format!("unknown tool: {given}")));
        }
    };
    let outcome = match params.get("arguments") {
        None | Some(Value::Null) => run_tool(app, actor, &name, json!({})).await,
        Some(args @ Value::Object(_)) => run_tool(app, actor, &name, args.clone()).await,
        Some(_) => Err(RpcError::params("arguments", "expected an object")),
    };
    Ok(match outcome {
        Ok(result) => {
            let mut answer = json!({
                "content": [{"type": "text", "text": result.to_string()}],
                "isError": false,
            });
            if result.is_object() {
                answer["structuredContent"] = result;
            }
            answer
        }
        Err(err) => json!({
            "content": [{"type": "text", "text": err.to_string()}],
            "isError": true,
        }),
    })
}

async fn run_tool(
    app: &Arc<App>,
    actor: &Actor,
    name: &str,
    args: Value,
) -> Result<Value, RpcError> {
    match name {
        "memory_add_fact" => add_fact(app, rpc::parse(args)?).await,
        "memory_query" => query(app, args).await,
        "memory_delete" => delete_fact(app, rpc::parse(args)?).await,
        "runs_list" => runs::list_runs(app, actor, runs::ListQuery::parse(args)?).await,
        "runs_get_trace" => runs::read_trace(app, actor, rpc::parse(args)?, None).await,
        "approvals_list" => {
            approvals::list_approvals(app, actor, approvals::parse_list(args)?).await
        }
        "approvals_resolve" => resolve(app, actor, rpc::parse(args)?).await,
        other => Err(RpcError::InvalidParams(format!("unknown tool: {other}"))),
    }
}

#[derive(Debug, Deserialize)]
struct AddFactArgs {
    subject: String,
    body: String,
    kind: Option<String>,
}

/// `memory_add_fact` → `memory.add_fact`'s result: the facts in `shared` after it.
async fn add_fact(app: &Arc<App>, args: AddFactArgs) -> Result<Value, RpcError> {
    let command = Command::MemoryAddFact(AddFact {
        scope: Scope::Shared,
        client_id: None,
        fact_id: None,
        subject: args.subject,
        body: args.body,
        kind: args.kind,
        tags: None,
        source: Some(MCP_SOURCE.to_owned()),
        minter: Minter::Mcp,
        max_facts: app.config.memory_max_facts,
    });
    let done = app
        .execute(command, memory::count_after_add(Scope::Shared))
        .await??;
    Ok(Value::from(done.out))
}

/// Checks a query text as `memory.query` does (§11.2: 1–4096 bytes), for the prompt.
fn check_query(method: &str, query: &str) -> Result<(), RpcError> {
    if query.is_empty() {
        Err(RpcError::InvalidParams(format!("{method}: query is empty")))
    } else if query.len() > MAX_QUERY_BYTES {
        Err(RpcError::InvalidParams(format!(
            "{method}: query exceeds {MAX_QUERY_BYTES} bytes"
        )))
    } else {
        Ok(())
    }
}

/// `memory_query` → `memory.query`'s result on `shared`, its params read as it reads them.
async fn query(app: &App, args: Value) -> Result<Value, RpcError> {
    let (query, k) = memory::query_params(args)?;
    memory::read_hits(app, &Scope::Shared, &query, k).await
}

#[derive(Debug, Deserialize)]
struct DeleteArgs {
    id: String,
}

/// `memory_delete` → `memory.delete`'s result on `shared`.
async fn delete_fact(app: &Arc<App>, args: DeleteArgs) -> Result<Value, RpcError> {
    let command = Command::MemoryDelete(DeleteFact {
        scope: Scope::Shared,
        client_id: None,
        fact_id: args.id.clone(),
    });
    let done = app
        .execute(
            command,
            memory::delete_outcome(Scope::Shared, args.id.clone()),
        )
        .await??;
    Ok(memory::delete_answer(&args.id, done.out))
}

/// `approvals_resolve` → `host.resolve_approval`'s result, resolved as this MCP caller.
async fn resolve(
    app: &Arc<App>,
    actor: &Actor,
    args: approvals::ResolveParams,
) -> Result<Value, RpcError> {
    let command = Command::ResolveApproval(ResolveApproval {
        actor: actor.clone(),
        approval_id: args.approval_id.clone(),
        resolution: args.resolution,
    });
    app.execute(command, |_, _| ()).await??;
    crate::chat_relay::ChatRelay::forward_resolution(app, &args.approval_id);
    approvals::approval(app, &args.approval_id).await
}

// ---------------------------------------------------------------------------------------
// Prompts

fn prompt_list() -> Vec<Value> {
    vec![json!({
        "name": CONTEXT_PROMPT,
        "description": "car's shared memory as prompt sections for a query (memory.build_context).",
        "arguments": [
            {"name": "query", "description": "What the context is for (1-4096 bytes).", "required": true},
            {"name": "mode", "description": "full or fast (both give the same context here).", "required": false},
        ],
    })]
}

#[derive(Debug, Deserialize)]
struct PromptParams {
    name: Option<Value>,
    arguments: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ContextArgs {
    query: String,
    mode: Option<String>,
}

/// `prompts/get` of `car_context`: `memory.build_context` on `shared` as one user message.
async fn get_prompt(app: &App, params: Value) -> Result<Value, RpcError> {
    let params: PromptParams = rpc::parse(params)?;
    match &params.name {
        Some(Value::String(name)) if name == CONTEXT_PROMPT => {}
        Some(Value::String(name)) => {
            return Err(RpcError::InvalidParams(format!("unknown prompt: {name}")));
        }
        other => {
            let given = other
                .as_ref()
                .map_or_else(|| "(none)".to_owned(), Value::to_string);
            return Err(RpcError::InvalidParams(format!("unknown prompt: {given}")));
        }
    }
    let args: ContextArgs = match params.arguments {
        None | Some(Value::Null) => rpc::parse(json!({}))?,
        Some(args) => rpc::parse(args)?,
    };
    if let Some(mode) = args.mode.as_deref() {
        if mode != "full" && mode != "fast" {
            return Err(RpcError::params("mode", "must be full or fast"));
        }
    }
    check_query("memory.build_context", &args.query)?;
    let text = app
        .writer
        .read(|state| {
            state
                .memory()
                .build_context(&Scope::Shared, &args.query, None)
        })
        .await?;
    Ok(json!({
        "description": "car memory context",
        "messages": [{"role": "user", "content": {"type": "text", "text": text}}],
    }))
}

// ---------------------------------------------------------------------------------------
// Sessions

/// MCP session ids, in memory only: each with when it was last used.
#[derive(Debug)]
struct Sessions {
    live: Mutex<HashMap<String, Instant>>,
    idle: Duration,
    max: usize,
}

impl Sessions {
    fn new(idle: Duration, max: usize) -> Self {
        Self {
            live: Mutex::new(HashMap::new()),
            idle,
            max: max.max(1),
        }
    }

    /// A new session: a random UUID (never derived from the daemon's id source, so it
    /// cannot be guessed from other ids).
    fn create(&self, now: Instant) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let mut live = self.live.lock();
        live.retain(|_, used| now.saturating_duration_since(*used) < self.idle);
        if live.len() >= self.max {
            let oldest = live
                .iter()
                .min_by_key(|(_, used)| **used)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                live.remove(&oldest);
            }
        }
        live.insert(id.clone(), now);
        id
    }

    /// Whether `id` is a live session; if so it was used `now`. An expired one is
    /// forgotten.
    fn touch(&self, id: &str, now: Instant) -> bool {
        let mut live = self.live.lock();
        match live.get_mut(id) {
            Some(used) if now.saturating_duration_since(*used) < self.idle => {
                *used = now;
                true
            }
            Some(_) => {
                live.remove(id);
                false
            }
            None => false,
        }
    }

    /// Ends `id`; whether it was a live session.
    fn remove(&self, id: &str, now: Instant) -> bool {
        let used = self.live.lock().remove(id);
        used.is_some_and(|used| now.saturating_duration_since(used) < self.idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_on_loopback_pass_any_port_and_others_do_not() {
        for ok in [
            "http://localhost",
            "http://localhost:3000",
            "https://LOCALHOST:443",
            "http://127.0.0.1",
            "http://127.0.0.5:1234",
            "https://127.255.0.1:8443",
            "http://[::1]",
            "http://[::1]:9102",
        ] {
            assert!(origin_allowed(ok), "{ok}");
        }
        for refused in [
            "http://evil.com",
            "http://localhost.evil.com",
            "http://127.0.0.1.evil.com",
            "http://128.0.0.1",
            "http://10.0.0.1:80",
            "ftp://localhost",
            "null",
            "",
            "localhost",
            "http://[::2]",
            "http://[::1",
            "http://localhost:",
            "http://localhost:99999",
            "http://localhost:80x",
            "http://user@localhost",
        ] {
            assert!(!origin_allowed(refused), "{refused}");
        }
    }

    #[test]
    fn sessions_expire_after_idling_and_are_capped() {
        let start = Instant::now();
        let sessions = Sessions::new(Duration::from_secs(10), 2);
        let a = sessions.create(start);
        assert!(sessions.touch(&a, start + Duration::from_secs(9)));
        // Used at 9 s: alive until 19 s.
        assert!(sessions.touch(&a, start + Duration::from_secs(18)));
        assert!(!sessions.touch(&a, start + Duration::from_secs(29)));
        assert!(
            !sessions.touch(&a, start + Duration::from_secs(1)),
            "forgotten"
        );
        assert!(!sessions.touch("nope", start));

        let b = sessions.create(start);
        let c = sessions.create(start + Duration::from_secs(1));
        let d = sessions.create(start + Duration::from_secs(2));
        assert!(
            !sessions.touch(&b, start + Duration::from_secs(2)),
            "evicted"
        );
        assert!(sessions.touch(&c, start + Duration::from_secs(2)));
        assert!(sessions.remove(&d, start + Duration::from_secs(2)));
        assert!(!sessions.remove(&d, start + Duration::from_secs(2)));
    }

    #[test]
    fn every_tool_has_a_schema_and_every_hint() {
        let tools = tool_list();
        assert_eq!(tools.len(), 7);
        for tool in &tools {
            assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
            for hint in ["readOnlyHint", "destructiveHint", "idempotentHint"] {
                assert!(tool["annotations"][hint].is_boolean(), "{tool}");
            }
            assert_eq!(tool["annotations"]["openWorldHint"], false);
        }
    }

    #[test]
    fn initialize_echoes_a_spoken_revision_and_answers_the_latest_otherwise() {
        for v in SUPPORTED_VERSIONS {
            assert_eq!(
                initialize(&json!({"protocolVersion": v}))["protocolVersion"],
                v
            );
        }
        assert_eq!(
            initialize(&json!({"protocolVersion": "2099-01-01"}))["protocolVersion"],
            LATEST_VERSION
        );
        assert_eq!(initialize(&json!({}))["protocolVersion"], LATEST_VERSION);
    }
}
