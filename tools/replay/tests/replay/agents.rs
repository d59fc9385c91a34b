//! `car-replay agents` on the golden-v8 log of car-events: an agent registered, crashed
//! and restarted after a backoff, `errored` past `max_restarts`, its token rotated, started
//! again, found running by the next daemon (`daemon_restart`), then removed.

use serde_json::json;

use crate::fixtures::DataDir;

#[test]
fn agents_shows_each_agent_as_it_was_at_any_seq() {
    let data = DataDir::golden_v8();
    // Removed at the end
    let end = data.run(&["agents", "--json"]).expect(0).json();
    assert_eq!((&end["seq"], &end["agents"]), (&json!(25), &json!([])));
    // Running its second process, one restart counted
    let doc = data
        .run(&["agents", "--at", "12", "--json"])
        .expect(0)
        .json();
    let agent = &doc["agents"][0];
    assert_eq!(agent["id"], "agent-indexer");
    assert_eq!(agent["status"], "running");
    assert_eq!(agent["pid"], 31_017);
    assert_eq!(agent["restart_count"], 1);
    assert_eq!(agent["last_exit"], json!({"code": {"code": 3}}));
    assert_eq!(agent["spec"]["command"], "/usr/local/bin/indexer");
    assert_eq!(agent["token_sha256"].as_str().unwrap().len(), 64);
    // In backoff: the restart due 500 ms after the backoff event (seq 9, at 14:00:04.554)
    let doc = data
        .run(&["agents", "--at", "9", "--json"])
        .expect(0)
        .json();
    assert_eq!(doc["agents"][0]["status"], "backoff");
    assert_eq!(doc["agents"][0]["restart_at"], "2026-12-08T14:00:05.054Z");
    // Errored past max_restarts
    let doc = data
        .run(&["agents", "--at", "14", "--json"])
        .expect(0)
        .json();
    assert_eq!(doc["agents"][0]["status"], "errored");
    assert_eq!(doc["agents"][0]["status_reason"], "max_restarts reached");
    assert!(doc["agents"][0]["pid"].is_null());
    // The new spec and token; the start reset the count
    let before = data
        .run(&["agents", "--at", "15", "--json"])
        .expect(0)
        .json();
    let after = data
        .run(&["agents", "--at", "20", "--json"])
        .expect(0)
        .json();
    assert_ne!(
        before["agents"][0]["token_sha256"],
        after["agents"][0]["token_sha256"]
    );
    assert_eq!(
        after["agents"][0]["spec"]["command"],
        "/opt/indexer/bin/indexer"
    );
    assert_eq!(after["agents"][0]["restart_count"], 0);
    // The next daemon records the lost process exited
    let doc = data
        .run(&["agents", "--at", "23", "--json"])
        .expect(0)
        .json();
    assert_eq!(doc["agents"][0]["status"], "stopped");
    assert_eq!(doc["agents"][0]["last_exit"], "daemon_restart");
    // Before it was registered, and past the end
    let doc = data
        .run(&["agents", "--at", "1", "--json"])
        .expect(0)
        .json();
    assert_eq!(doc["agents"], json!([]));
    data.run(&["agents", "--at", "26"]).expect(5);
}

#[test]
fn agents_reads_as_a_table() {
    let data = DataDir::golden_v8();
    let text = data.run(&["agents", "--at", "13"]).expect(0).stdout;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "agents at seq 13 (2026-12-08T14:00:05.958Z): 1");
    assert!(lines[1].starts_with("AGENT"), "{text}");
    assert!(lines[2].contains("agent-indexer"), "{text}");
    assert!(lines[2].contains("signal 11"), "{text}");
}
