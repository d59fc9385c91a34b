//! Against a real daemon's data directory: refused (exit 2, with advice) while the daemon
//! holds it; after the daemon stops, `state` gives the very digest the daemon reported
//! for its final state.

use std::net::SocketAddr;

use car_events::Stamper;
use car_gateway::{Config, Daemon};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::fixtures::car_replay;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A JSON-RPC client over one WebSocket.
struct Client {
    socket: Socket,
    next_id: u64,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
            .await
            .unwrap();
        Self { socket, next_id: 0 }
    }

    /// Calls `method` and returns its result (panics on an error reply).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.socket
            .send(Message::text(request.to_string()))
            .await
            .unwrap();
        loop {
            let frame = self.socket.next().await.unwrap().unwrap();
            let Message::Text(text) = frame else { continue };
            let reply: Value = serde_json::from_str(text.as_str()).unwrap();
            if reply["id"] == id {
                assert!(reply["error"].is_null(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }
}

#[test]
fn state_of_a_stopped_daemon_has_the_digest_the_daemon_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let report = runtime.block_on(async {
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            // MCP's default port is one for every test running beside this one.
            mcp_bind: car_gateway::http::Bind::Disabled,
            ..Config::new(dir.path())
        };
        let daemon = Daemon::start(config, Stamper::system()).await.unwrap();
        let addr = daemon.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(daemon.run(async {
            let _ = stopped.await;
        }));

        let token = std::fs::read_to_string(dir.path().join("auth-token")).unwrap();
        let mut agent = Client::connect(addr).await;
        agent
            .call(
                "session.auth",
                json!({"token": token.trim(), "agent_id": "agent-replay"}),
            )
            .await;
        let done = agent
            .call("runs.start", json!({"intent": "audit me"}))
            .await;
        let run_id = done["run_id"].as_str().unwrap().to_owned();
        let turns = json!([
            {"prompt": "first", "tool": "search", "parameters": {"q": "a"}, "output": "A"},
            {"prompt": "second", "output": {"rows": [1, 2.5, "three"]}},
        ]);
        agent
            .call(
                "runs.record_turns",
                json!({"run_id": run_id, "turns": turns}),
            )
            .await;
        agent
            .call(
                "runs.complete",
                json!({"run_id": run_id, "outcome": {"status": "success", "summary": "done"}}),
            )
            .await;
        // Left running: the stop ends it `incomplete`/`daemon_shutdown`.
        let open = agent
            .call("runs.start", json!({"intent": "still going"}))
            .await;

        // The daemon holds the log: refused, with a way out, and nothing touched.
        let held = tokio::task::spawn_blocking({
            let data_dir = data_dir.clone();
            move || car_replay(&["--data-dir", &data_dir, "runs"])
        })
        .await
        .unwrap()
        .expect(2);
        let pid = std::process::id();
        assert!(
            held.stderr
                .contains(&format!("held by a running car-server (pid {pid})"))
                && held.stderr.contains("cp -r ")
                && held
                    .stderr
                    .contains("car-replay --data-dir /tmp/car-copy verify"),
            "{}",
            held.stderr
        );

        let _ = stop.send(());
        let report = serving.await.unwrap();
        (report, run_id, open["run_id"].as_str().unwrap().to_owned())
    });
    // Every task and the log are gone with the runtime.
    drop(runtime);
    let (report, done_id, open_id) = report;

    let state = car_replay(&["--data-dir", &data_dir, "state", "--json"])
        .expect(0)
        .json();
    assert_eq!(state["digest"], report.digest.as_str());
    assert_eq!(state["seq"], report.head);

    let verified = car_replay(&["--data-dir", &data_dir, "verify", "--json"])
        .expect(0)
        .json();
    assert_eq!(verified["digest"], report.digest.as_str());
    assert_eq!(verified["records"], report.head);

    let runs = car_replay(&["--data-dir", &data_dir, "runs", "--json"])
        .expect(0)
        .json();
    let statuses: Vec<(&str, &str)> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["run_id"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [
            (open_id.as_str(), "incomplete"),
            (done_id.as_str(), "completed")
        ]
    );
    let traced = car_replay(&["--data-dir", &data_dir, "trace", &done_id, "--json"])
        .expect(0)
        .json();
    assert_eq!(
        traced["records"][2]["output"],
        json!({"rows": [1, 2.5, "three"]})
    );
    assert_eq!(traced["records"][3]["record"], "ended");
}
