//! PROTOCOL.md §17, the dashboard's HTTP side over real HTTP/1.1: the `Host` check on every
//! route, `GET /auth-token`, and the JSON API under `/api/` (host bearer, GET only, 404 and
//! 400 wording), its data checked against what the WebSocket methods answer.

use car_tests::http::{HttpResponse, request};
use car_tests::{Client, Server, ToolAnswer};
use serde_json::{Value, json};

use crate::builder;
use crate::runs::{complete, record, start};

async fn dashboard() -> Server {
    builder()
        .dashboard()
        .spawn()
        .await
        .unwrap_or_else(|err| panic!("{err:#}"))
}

async fn get(server: &Server, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    request(server.dashboard_addr(), "GET", path, headers, "")
        .await
        .unwrap_or_else(|err| panic!("GET {path}: {err:#}"))
}

/// `GET path` as the host, expecting 200 JSON.
async fn api(server: &Server, path: &str) -> Value {
    let bearer = format!("Bearer {}", server.host_token);
    let response = get(server, path, &[("authorization", &bearer)]).await;
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("access-control-allow-origin"), None);
    response.json()
}

#[tokio::test]
async fn every_route_refuses_a_foreign_host_and_auth_token_serves_only_its_origin() {
    let server = dashboard().await;
    let port = server.dashboard_addr().port();
    for path in ["/auth-token", "/api/runs", "/api/stats", "/nothing"] {
        for host in [
            "evil.example:80".to_owned(),
            format!("127.0.0.1:{}", port + 7),
        ] {
            let response = get(&server, path, &[("host", &host)]).await;
            assert_eq!(response.status, 403, "{path} with Host {host}");
        }
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        let response = get(&server, "/auth-token", &[("host", &host)]).await;
        assert_eq!(response.status, 200, "Host {host}");
        assert_eq!(
            response.text(),
            server.auth_token,
            "the daemon token, no newline"
        );
        assert_ne!(response.text(), server.host_token);
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(response.header("cache-control"), Some("no-store"));
    }
    let own = format!("http://localhost:{port}");
    let response = get(&server, "/auth-token", &[("origin", &own)]).await;
    assert_eq!(response.status, 200);
    let response = get(&server, "/auth-token", &[("origin", "http://evil.example")]).await;
    assert_eq!(response.status, 403);
    assert!(!response.text().contains(&server.auth_token));
}

#[tokio::test]
async fn the_api_wants_the_host_token_and_get() {
    let server = dashboard().await;
    for (headers, why) in [
        (vec![], "no token"),
        (vec![("authorization", "Bearer nope")], "a wrong token"),
    ] {
        let response = get(&server, "/api/runs", &headers).await;
        assert_eq!(response.status, 401, "{why}");
        assert_eq!(response.json(), json!({"error": "unauthorized"}));
    }
    let client = format!("Bearer {}", server.auth_token);
    let response = get(&server, "/api/stats", &[("authorization", &client)]).await;
    assert_eq!(response.status, 401, "the daemon token is not the host's");
    let host = format!("Bearer {}", server.host_token);
    for method in ["POST", "PUT", "DELETE"] {
        let response = request(
            server.dashboard_addr(),
            method,
            "/api/runs",
            &[("authorization", &host)],
            "",
        )
        .await
        .unwrap();
        assert_eq!(response.status, 405, "{method}");
        assert_eq!(response.header("allow"), Some("GET"));
    }
    for (path, error) in [
        (
            "/api/runs?limit=many",
            "limit: expected a non-negative integer",
        ),
        (
            "/api/runs?status=sleeping",
            "status: must be in_progress, completed or incomplete",
        ),
        (
            "/api/events?kinds=run.nope",
            "kinds[0]: unknown kind `run.nope`",
        ),
        (
            "/api/events?from_seq=-1",
            "from_seq: expected a non-negative integer",
        ),
    ] {
        let response = get(&server, path, &[("authorization", &host)]).await;
        assert_eq!(response.status, 400, "{path}");
        assert_eq!(response.json(), json!({"error": error}), "{path}");
    }
    for path in ["/api/runs/no-such-run", "/api/runs/no-such-run/trace"] {
        let response = get(&server, path, &[("authorization", &host)]).await;
        assert_eq!(response.status, 404, "{path}");
        assert_eq!(response.json(), json!({"error": "not found"}));
    }
}

#[tokio::test]
async fn the_api_serves_what_the_websocket_methods_answer_and_the_timeline() {
    let server = dashboard().await;
    let mut agent = server.auth_agent("a").await;
    let run = start(&mut agent, "a").await;
    record(
        &mut agent,
        &run,
        vec![json!({"tool": "search", "output": "3 hits"})],
    )
    .await;
    let result = agent
        .submit(
            json!({"id": "p-1", "actions": [{"id": "a1", "tool": "fetch"}]}),
            |_| ToolAnswer::Result(json!({"bytes": 12})),
        )
        .await;
    assert_eq!(result["final_state"], "completed");
    agent.handshake().await;
    agent
        .ok("host.request_approval", json!({"action": "deploy"}))
        .await;
    let done = start(&mut agent, "a").await;
    complete(&mut agent, &done).await;

    let mut host: Client = server.auth_host().await;
    host.handshake().await;
    let listed = api(&server, "/api/runs").await;
    let ws = host.ok("runs.list", json!({})).await;
    let strip = |mut v: Value| {
        for run in v["runs"].as_array_mut().unwrap() {
            let fields = run.as_object_mut().unwrap();
            assert!(fields.remove("termination_kind").is_some(), "{run:?}");
            assert!(fields.remove("duration_ms").is_some(), "{run:?}");
        }
        v
    };
    assert_eq!(strip(listed.clone()), ws);
    assert_eq!(listed["runs"][0]["termination_kind"], "outcome");
    assert!(listed["runs"][0]["duration_ms"].as_i64().unwrap() >= 0);
    assert_eq!(listed["runs"][1]["termination_kind"], Value::Null);
    assert_eq!(
        listed["runs"][1]["duration_ms"],
        Value::Null,
        "still running"
    );
    let filtered = api(&server, "/api/runs?status=in_progress&limit=5").await;
    assert_eq!(filtered["runs"].as_array().unwrap().len(), 1);

    let trace = api(&server, &format!("/api/runs/{run}/trace")).await;
    assert_eq!(
        trace,
        host.ok("runs.get_trace", json!({"run_id": run})).await
    );
    let events = api(
        &server,
        "/api/events?from_seq=1&limit=5&kinds=run.started,run.ended",
    )
    .await;
    assert_eq!(
        events,
        host.ok(
            "log.read",
            json!({"from_seq": 1, "limit": 5, "kinds": ["run.started", "run.ended"]})
        )
        .await
    );
    let approvals = api(&server, "/api/approvals?status=pending").await;
    assert_eq!(
        approvals,
        host.ok("host.approvals", json!({"status": "pending"}))
            .await
    );

    let timeline = api(&server, &format!("/api/runs/{run}")).await;
    assert_eq!(timeline["summary"]["run_id"], run);
    let entries = timeline["timeline"].as_array().unwrap();
    let kinds: Vec<&str> = entries.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds[0], "started", "{kinds:?}");
    for kind in ["turn", "tool_call", "approval"] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    let ats: Vec<&str> = entries.iter().filter_map(|e| e["at"].as_str()).collect();
    let mut sorted = ats.clone();
    sorted.sort_unstable();
    assert_eq!(ats, sorted, "time order");
    let call = entries.iter().find(|e| e["kind"] == "tool_call").unwrap();
    assert_eq!(call["detail"]["tool"], "fetch");
    assert_eq!(call["detail"]["status"], "completed");
    assert_eq!(call["detail"]["attempt"], 1);
    assert!(call["duration_ms"].as_i64().unwrap() >= 0, "{call}");
    let approval = entries.iter().find(|e| e["kind"] == "approval").unwrap();
    assert_eq!(approval["detail"]["status"], "pending");
    assert!(approval.get("ended_at").is_none(), "{approval}");

    let stats = api(&server, "/api/stats").await;
    assert_eq!(
        stats["runs"],
        json!({"in_progress": 1, "completed": 1, "incomplete": 0})
    );
    assert_eq!(stats["approvals_pending"], 1);
    assert_eq!(stats["sessions_open"], 2);
    assert_eq!(stats["agents"]["attached"], 1);
    let head = host
        .ok("log.read", json!({"from_seq": 1, "limit": 1}))
        .await["head_seq"]
        .clone();
    assert!(stats["head_seq"].as_u64().unwrap() >= head.as_u64().unwrap());
    assert_eq!(stats["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn start_up_prints_the_dashboard_url_with_the_host_token_in_the_fragment() {
    let server = dashboard().await;
    let port = server.dashboard_addr().port();
    let line = format!(
        "dashboard: http://127.0.0.1:{port}/#host_token={}",
        server.host_token
    );
    assert!(
        server.stderr().iter().any(|l| l.ends_with(&line)),
        "no {line:?} in {:?}",
        server.stderr()
    );
    let off = builder().spawn().await.unwrap();
    assert!(
        off.stderr()
            .iter()
            .any(|l| l.ends_with("dashboard: disabled"))
    );
}

#[tokio::test]
async fn the_page_is_self_contained_with_a_csp_and_never_cached() {
    let server = dashboard().await;
    let page = get(&server, "/", &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let ws = format!("ws://{}/", server.addr);
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(csp.contains(&format!("connect-src 'self' {ws}")), "{csp}");
    let html = page.text();
    assert!(
        html.contains(&format!("content=\"{ws}\"")),
        "the page names its WS endpoint"
    );
    // Nothing from outside: every src and href is this origin's.
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            assert!(
                part.starts_with('/'),
                "{attr}{}",
                &part[..part.len().min(40)]
            );
        }
    }
    for (path, kind) in [
        ("/assets/dashboard.js", "text/javascript; charset=utf-8"),
        ("/assets/dashboard.css", "text/css; charset=utf-8"),
    ] {
        let asset = get(&server, path, &[]).await;
        assert_eq!(
            (asset.status, asset.header("content-type")),
            (200, Some(kind)),
            "{path}"
        );
        assert!(
            !asset.text().contains("http://") && !asset.text().contains("https://"),
            "{path}"
        );
    }
    // The page carries no token: it takes the host token from the fragment.
    assert!(!html.contains(&server.host_token) && !html.contains(&server.auth_token));
}

/// The browser test's tools (`scripts/setup-browser.sh`, run by `scripts/test.sh`), or why
/// the test is skipped.
fn browser() -> Option<(String, String)> {
    match (
        std::env::var("CAR_TEST_CHROMIUM"),
        std::env::var("CAR_TEST_NODE_MODULES"),
    ) {
        (Ok(chromium), Ok(modules)) => Some((chromium, modules)),
        _ => None,
    }
}

/// Runs `tests/browser/dashboard.mjs` against `server`, following `run`, expecting `listed`
/// in the runs list; `act` is called when the page waits for new turns. Screenshots go to
/// `target/browser-screenshots/<shots>/`. Returns the driver's `KEY value` lines.
async fn drive_page(
    server: &Server,
    shots: &str,
    run: &str,
    listed: &[&str],
    act: impl AsyncFnOnce(),
) -> Vec<(String, String)> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (chromium, modules) = browser().expect("checked by the caller");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shots = root.join("target/browser-screenshots").join(shots);
    std::fs::create_dir_all(&shots).unwrap();
    let url = format!(
        "http://{}/#host_token={}",
        server.dashboard_addr(),
        server.host_token
    );
    let mut child = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/dashboard.mjs"))
        .args(["--url", &url, "--run", run, "--expect", &listed.join(",")])
        .arg("--shots")
        .arg(&shots)
        .env("CAR_TEST_CHROMIUM", chromium)
        .env("CAR_TEST_NODE_MODULES", modules)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut act = Some(act);
    let driven = async {
        while let Some(line) = out.next_line().await.unwrap() {
            eprintln!("browser: {line}");
            let (key, value) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            if key == "READY_FOR_TURNS" {
                if let Some(act) = act.take() {
                    act().await;
                }
                stdin.write_all(b"go\n").await.unwrap();
                stdin.flush().await.unwrap();
            }
            seen.push((key.to_owned(), value.to_owned()));
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), driven)
        .await
        .expect("the browser driver finished within 60 s");
    let status = child.wait().await.unwrap();
    assert!(status.success(), "the browser driver failed: {seen:?}");
    eprintln!("screenshots in {}", shots.display());
    seen
}

fn value<'a>(seen: &'a [(String, String)], key: &str) -> &'a str {
    seen.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {seen:?}"))
}

#[tokio::test]
async fn in_headless_chromium_the_page_lists_runs_opens_a_timeline_and_follows_it_live() {
    if browser().is_none() {
        eprintln!(
            "SKIPPED dashboard::in_headless_chromium_…: CAR_TEST_CHROMIUM / CAR_TEST_NODE_MODULES \
             not set (scripts/setup-browser.sh; scripts/test.sh sets them)"
        );
        return;
    }
    let server = dashboard().await;
    let mut agent = server.auth_agent("researcher").await;
    agent.handshake().await;
    let done = start(&mut agent, "researcher").await;
    record(
        &mut agent,
        &done,
        vec![json!({"tool": "search", "output": "ok"})],
    )
    .await;
    complete(&mut agent, &done).await;
    let run = start(&mut agent, "researcher").await;
    record(
        &mut agent,
        &run,
        vec![json!({"prompt": "find the incident", "tool": "search", "output": "3 hits"})],
    )
    .await;
    agent
        .submit(
            json!({"id": "p-1", "actions": [{"id": "a1", "tool": "fetch_metrics"}]}),
            |_| ToolAnswer::Result(json!({"p99_ms": 840})),
        )
        .await;
    agent
        .ok(
            "host.request_approval",
            json!({"action": "restart the database"}),
        )
        .await;
    let seen = drive_page(&server, "timeline", &run, &[&run, &done], async || {
        record(
            &mut agent,
            &run,
            vec![json!({"tool": "summarise", "output": "done"})],
        )
        .await;
    })
    .await;
    let timeline = value(&seen, "TIMELINE");
    for kind in ["started", "turn", "tool_call", "approval"] {
        assert!(timeline.split(',').any(|k| k == kind), "{kind}: {timeline}");
    }
    let before: usize = value(&seen, "READY_FOR_TURNS").parse().unwrap();
    let after: usize = value(&seen, "LIVE_TURNS").parse().unwrap();
    assert_eq!(after, before + 1, "the new turn appeared without a reload");
    assert_eq!(value(&seen, "DONE"), "");
    eprintln!("first paint: {}", value(&seen, "FIRST_PAINT_MS"));
}

#[tokio::test]
async fn with_10k_runs_the_page_pages_the_list_and_paints_first_paint_printed() {
    if browser().is_none() {
        eprintln!(
            "SKIPPED dashboard::with_10k_runs_…: CAR_TEST_CHROMIUM / CAR_TEST_NODE_MODULES not \
             set (scripts/setup-browser.sh; scripts/test.sh sets them)"
        );
        return;
    }
    const RUNS: usize = 10_000;
    const WRITERS: usize = 20;
    let server = dashboard().await;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut client = server.auth_client().await;
        writers.push(tokio::spawn(async move {
            let mut last = String::new();
            for i in 0..RUNS / WRITERS {
                let started = client
                    .ok(
                        "runs.start",
                        json!({"intent": format!("bulk run {w}-{i}"), "agent_id": format!("bulk-{w}")}),
                    )
                    .await;
                last = started["run_id"].as_str().unwrap().to_owned();
            }
            (client, last)
        }));
    }
    let mut clients = Vec::new();
    for writer in writers {
        clients.push(writer.await.unwrap());
    }
    let (mut client, newest) = clients.pop().unwrap();
    let stats = api(&server, "/api/stats").await;
    assert_eq!(stats["runs"]["in_progress"], RUNS);
    let seen = drive_page(&server, "10k-runs", &newest, &[&newest], async || {
        record(&mut client, &newest, vec![json!({"tool": "t"})]).await;
    })
    .await;
    let rows: usize = value(&seen, "ROWS").parse().unwrap();
    assert!(rows <= 50, "the list is paged server-side: {rows} rows");
    eprintln!(
        "with {RUNS} runs in the log: {}",
        value(&seen, "FIRST_PAINT_MS")
    );
}

#[tokio::test]
async fn with_auth_disabled_the_token_is_empty_and_the_api_asks_for_none() {
    let server = builder()
        .dashboard()
        .args(["--no-auth"])
        .spawn()
        .await
        .unwrap_or_else(|err| panic!("{err:#}"));
    let token = get(&server, "/auth-token", &[]).await;
    assert_eq!((token.status, token.text().as_str()), (200, ""));
    let stats = get(&server, "/api/stats", &[]).await;
    assert_eq!(stats.status, 200, "{}", stats.text());
    assert!(
        server
            .stderr()
            .iter()
            .any(|l| l.ends_with(&format!("dashboard: http://{}/", server.dashboard_addr()))),
        "no fragment without a token"
    );
}
