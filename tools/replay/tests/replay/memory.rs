//! `car-replay memory` and the memory side of `events`, on the golden-v2 log of car-events
//! (every memory event kind: facts added by WebSocket sessions and MCP, a consolidation, a
//! delete, loads replacing a scope, persisted snapshots, over `shared`, a namespace and
//! two agent scopes).

use serde_json::{Value, json};

use crate::fixtures::{DataDir, golden_v2_jsonl};

fn fact_ids(doc: &Value) -> Vec<&str> {
    doc["facts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["fact_id"].as_str().unwrap())
        .collect()
}

#[test]
fn memory_shows_a_scope_at_the_end_and_at_any_seq() {
    let data = DataDir::golden_v2();
    // The shared scope by default, at the end of the log
    let end = data.run(&["memory", "--json"]).expect(0).json();
    assert_eq!(
        (
            &end["seq"],
            &end["scope"],
            &end["written"],
            &end["fact_count"]
        ),
        (&json!(21), &json!("shared"), &json!(true), &json!(2))
    );
    assert_eq!(fact_ids(&end), ["ws-1", "deploy-freeze"]);
    let freeze = &end["facts"][1];
    assert_eq!(
        freeze["body"],
        "No production deploys on Fridays after 15:00 UTC.\nHotfixes need two approvals."
    );
    assert_eq!(
        (&freeze["kind"], &freeze["seq"], &freeze["created_at"]),
        (
            &json!("constraint"),
            &json!(6),
            &json!("2026-12-01T08:00:00.989Z")
        )
    );
    assert_eq!(freeze["tags"], json!(["deploy", "policy", "ünïcödé ✓"]));
    // Before the MCP fact was deleted (seq 18) and after the duplicate was consolidated away
    let before = data
        .run(&["memory", "--at", "17", "--json"])
        .expect(0)
        .json();
    assert_eq!(fact_ids(&before), ["ws-1", "deploy-freeze", "mcp-1"]);
    let dup = data
        .run(&["memory", "--at", "11", "--json"])
        .expect(0)
        .json();
    assert_eq!(fact_ids(&dup), ["ws-1", "deploy-freeze", "mcp-1", "ws-2"]);
    // Before any memory
    let nothing = data
        .run(&["memory", "--at", "0", "--json"])
        .expect(0)
        .json();
    assert_eq!(
        (&nothing["written"], &nothing["fact_count"], &nothing["ts"]),
        (&json!(false), &json!(0), &Value::Null)
    );
    // A namespace: the load replaced its scope with the file's facts
    let alpha = data
        .run(&["memory", "--scope", "ns:team-alpha", "--json"])
        .expect(0)
        .json();
    assert_eq!(fact_ids(&alpha), ["ws-1", "loaded-2"]);
    assert_eq!(alpha["facts"][1]["seq"], 15);
    // A scope emptied by a load is written and empty; an unknown one never written
    let retired = data
        .run(&["memory", "--scope", "agent:agent-retired", "--json"])
        .expect(0)
        .json();
    assert_eq!(
        (&retired["written"], &retired["fact_count"]),
        (&json!(true), &json!(0))
    );
    let unknown = data
        .run(&["memory", "--scope", "ns:nobody", "--json"])
        .expect(0)
        .json();
    assert_eq!(unknown["written"], false);
}

#[test]
fn memory_lists_every_scope_and_reads_as_text() {
    let data = DataDir::golden_v2();
    let scopes = data.run(&["memory", "--scopes", "--json"]).expect(0).json();
    assert_eq!(
        scopes["scopes"],
        json!([
            {"scope": "agent:agent-researcher", "fact_count": 1},
            {"scope": "agent:agent-retired", "fact_count": 0},
            {"scope": "ns:team-alpha", "fact_count": 2},
            {"scope": "shared", "fact_count": 2},
        ])
    );
    let early = data
        .run(&["memory", "--scopes", "--at", "7", "--json"])
        .expect(0)
        .json();
    assert_eq!(
        early["scopes"],
        json!([{"scope": "shared", "fact_count": 3}])
    );

    let text = data.run(&["memory"]).expect(0).stdout;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0], "memory of shared at seq 21 (2026-12-01T08:00:08.724Z): 2 facts",
        "{text}"
    );
    assert!(lines[1].starts_with("FACT"), "{text}");
    assert!(
        lines[3].starts_with("deploy-freeze  constraint  6"),
        "{text}"
    );
    // A body's line break does not break the table
    assert!(
        lines[3].contains("release policy: No production deploys on Fridays after"),
        "{text}"
    );
    assert_eq!(lines.len(), 4, "{text}");
    let list = data.run(&["memory", "--scopes"]).expect(0).stdout;
    assert!(list.starts_with("memory scopes at seq 21"), "{list}");
    assert!(list.contains("ns:team-alpha           2"), "{list}");
}

#[test]
fn memory_refuses_a_bad_scope_and_a_seq_past_the_end() {
    let data = DataDir::golden_v2();
    let bad = data.run(&["memory", "--scope", "global"]).expect(64);
    assert!(bad.stderr.contains("is not `shared`"), "{}", bad.stderr);
    let past = data.run(&["memory", "--at", "22"]).expect(5);
    assert!(
        past.stderr.contains("past the end of the log"),
        "{}",
        past.stderr
    );
}

#[test]
fn events_shows_memory_events_by_kind_scope_and_session() {
    let data = DataDir::golden_v2();
    let jsonl = golden_v2_jsonl();
    let expected = |keep: &dyn Fn(&Value) -> bool| -> Vec<Value> {
        jsonl
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| keep(e))
            .collect()
    };
    let memory = data
        .run(&["events", "--kind", "memory.*"])
        .expect(0)
        .json_lines();
    let is_memory = |e: &Value| e["kind"].as_str().unwrap().starts_with("memory.");
    assert_eq!(memory, expected(&is_memory));
    assert_eq!(memory.len(), 12);
    let alpha = data
        .run(&["events", "--scope", "ns:team-alpha"])
        .expect(0)
        .json_lines();
    assert_eq!(
        alpha,
        expected(&|e: &Value| e["data"]["scope"] == "ns:team-alpha")
    );
    assert_eq!(alpha.len(), 3);
    let deleted = data
        .run(&[
            "events",
            "--kind",
            "memory.fact_deleted",
            "--scope",
            "shared",
        ])
        .expect(0)
        .json_lines();
    let reasons: Vec<&Value> = deleted.iter().map(|e| &e["data"]["reason"]).collect();
    assert_eq!(reasons, [&json!("consolidate"), &json!("delete")]);
    // A session's memory events are its own
    let session = data
        .run(&["events", "--session", "sess-agent-1", "--kind", "memory.*"])
        .expect(0)
        .json_lines();
    assert_eq!(
        session,
        expected(&|e: &Value| is_memory(e) && e["data"]["client_id"] == "sess-agent-1")
    );
    assert_eq!(session.len(), 1);
}
