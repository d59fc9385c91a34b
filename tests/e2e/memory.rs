//! PROTOCOL.md §11: memory over a real WebSocket. Every method (`memory.add_fact`,
//! `query`, `build_context`, `fact_count`, `delete`, `persist`, `load`, `consolidate`),
//! every limit with its exact message, the scopes (`shared`, `ns:<namespace>` from
//! `session.auth memory_namespace`, `agent:<id>`), the persist/load sandbox
//! (`DATA_DIR/memory/`: `..`, absolute paths outside, symlinks out, the folder itself, a
//! malformed file changing nothing), and the cookbook flow surviving a SIGKILL to the byte.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::PathBuf;

use car_tests::{Client, Endpoint, Server};
use serde_json::{Value, json};

use crate::server;

/// A `client` session on the memory graph `ns:<namespace>`.
async fn in_namespace(server: &Endpoint, namespace: &str) -> Client {
    server
        .auth_with(json!({"token": server.auth_token, "memory_namespace": namespace}))
        .await
}

/// The daemon's memory directory.
fn memory_dir(server: &Server) -> PathBuf {
    server.data_dir().path().join("memory")
}

/// The memory events of the log, as `log.read` renders them.
async fn memory_events(server: &Endpoint) -> Vec<Value> {
    let mut host = server.auth_host().await;
    host.whole_log(Some(&[
        "memory.fact_added",
        "memory.fact_deleted",
        "memory.scope_loaded",
        "memory.scope_persisted",
    ]))
    .await
}

/// The ids a query returns, best first.
fn ids(hits: &Value) -> Vec<&str> {
    hits.as_array()
        .unwrap_or_else(|| panic!("not an array: {hits}"))
        .iter()
        .map(|h| h["fact_id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn add_fact_counts_mints_ids_retries_safely_and_refuses_conflicts() {
    // Given a client on the shared graph
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    // When it adds facts without and with ids
    assert_eq!(
        client
            .ok(
                "memory.add_fact",
                json!({"subject": "editor", "body": "uses helix"})
            )
            .await,
        1
    );
    assert_eq!(
        client
            .ok(
                "memory.add_fact",
                json!({"subject": "shell", "body": "fish", "fact_id": "ws-7", "kind": "environment",
                       "tags": ["setup"], "source": "survey", "committed_by": "x", "verdicts": []}),
            )
            .await,
        2
    );
    assert_eq!(
        client
            .ok("memory.add_fact", json!({"subject": "os", "body": "linux"}))
            .await,
        3
    );
    // Then minted ids count from 1 and skip past ids given (ws-7: the next is ws-8), the
    // defaults are kind `pattern`, source `user`, no tags
    let hits = client
        .ok("memory.query", json!({"query": "editor shell os", "k": 50}))
        .await;
    let mut got = ids(&hits);
    got.sort_unstable();
    assert_eq!(got, ["ws-1", "ws-7", "ws-8"]);
    let editor = hits
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["fact_id"] == "ws-1")
        .unwrap();
    assert_eq!(
        (&editor["kind"], &editor["source"], &editor["tags"]),
        (&json!("pattern"), &json!("user"), &json!([]))
    );
    // When the same fact is added again under its id: no change, a safe retry
    assert_eq!(
        client
            .ok(
                "memory.add_fact",
                json!({"subject": "shell", "body": "fish", "fact_id": "ws-7", "kind": "environment"}),
            )
            .await,
        3
    );
    // And with other content: refused
    let err = client
        .err(
            "memory.add_fact",
            json!({"subject": "shell", "body": "zsh", "fact_id": "ws-7", "kind": "environment"}),
        )
        .await;
    assert_eq!(
        (err.code, err.message.as_str()),
        (
            -32602,
            "memory.add_fact: fact_id 'ws-7' exists with different content"
        )
    );
    // Then the log holds exactly three additions, each naming the session and the scope
    let events = memory_events(&server).await;
    assert_eq!(events.len(), 3, "{events:?}");
    for e in &events {
        assert_eq!(e["kind"], "memory.fact_added");
        assert_eq!(e["data"]["scope"], "shared");
        assert!(e["data"]["client_id"].is_string(), "{e}");
    }
    assert_eq!(events[1]["data"]["fact"]["tags"], json!(["setup"]));
}

#[tokio::test]
async fn every_limit_has_its_exact_message_and_changes_nothing() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    let long = |n: usize| "x".repeat(n);
    let fact = |extra: Value| {
        let mut params = json!({"subject": "s", "body": "b"});
        for (k, v) in extra.as_object().unwrap() {
            params[k] = v.clone();
        }
        params
    };
    let thirty_three = vec!["t"; 33];
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "memory.add_fact",
            fact(json!({"body": long(16_385)})),
            "memory.add_fact: body exceeds 16384 bytes",
        ),
        (
            "memory.add_fact",
            fact(json!({"body": ""})),
            "memory.add_fact: body is empty",
        ),
        (
            "memory.add_fact",
            fact(json!({"subject": long(1025)})),
            "memory.add_fact: subject exceeds 1024 bytes",
        ),
        (
            "memory.add_fact",
            fact(json!({"subject": ""})),
            "memory.add_fact: subject is empty",
        ),
        (
            "memory.add_fact",
            fact(json!({"fact_id": long(129)})),
            "memory.add_fact: fact_id exceeds 128 bytes",
        ),
        (
            "memory.add_fact",
            fact(json!({"fact_id": "a b"})),
            "memory.add_fact: fact_id has a character outside [A-Za-z0-9._:-]",
        ),
        (
            "memory.add_fact",
            fact(json!({"kind": "Pattern"})),
            "memory.add_fact: kind has a character outside [a-z_]",
        ),
        (
            "memory.add_fact",
            fact(json!({"kind": long(33)})),
            "memory.add_fact: kind exceeds 32 bytes",
        ),
        (
            "memory.add_fact",
            fact(json!({"tags": thirty_three})),
            "memory.add_fact: tags has more than 32 entries",
        ),
        (
            "memory.add_fact",
            fact(json!({"tags": ["ok", ""]})),
            "memory.add_fact: tags[1] is empty",
        ),
        (
            "memory.add_fact",
            fact(json!({"tags": [long(65)]})),
            "memory.add_fact: tags[0] exceeds 64 bytes",
        ),
        (
            "memory.add_fact",
            fact(json!({"source": long(65)})),
            "memory.add_fact: source exceeds 64 bytes",
        ),
        (
            "memory.add_fact",
            json!({"body": "b"}),
            "memory.add_fact: subject is required",
        ),
        (
            "memory.add_fact",
            fact(json!({"tags": "t"})),
            "memory.add_fact: tags must be an array of strings",
        ),
        (
            "memory.query",
            json!({"query": ""}),
            "memory.query: query is empty",
        ),
        (
            "memory.query",
            json!({"query": long(4097)}),
            "memory.query: query exceeds 4096 bytes",
        ),
        (
            "memory.query",
            json!({"query": "q", "k": 0}),
            "memory.query: k must be an integer from 1 to 50",
        ),
        (
            "memory.query",
            json!({"query": "q", "k": 51}),
            "memory.query: k must be an integer from 1 to 50",
        ),
        (
            "memory.build_context",
            json!({"query": "q", "model_context_window": 0}),
            "memory.build_context: model_context_window must be an integer from 1 to 10000000",
        ),
        (
            "memory.build_context",
            json!({"query": "q", "model_context_window": 10_000_001}),
            "memory.build_context: model_context_window must be an integer from 1 to 10000000",
        ),
        (
            "memory.build_context",
            json!({}),
            "memory.build_context: query is required",
        ),
        ("memory.delete", json!({}), "memory.delete: id is required"),
        (
            "memory.persist",
            json!({"path": 5}),
            "memory.persist: path must be a string",
        ),
        ("memory.load", json!({}), "memory.load: path is required"),
    ];
    for (method, params, message) in cases {
        let err = client.err(method, params.clone()).await;
        assert_eq!(
            (err.code, err.message.as_str()),
            (-32602, message),
            "{method} {}",
            &params.to_string()[..params.to_string().len().min(120)]
        );
    }
    // The edges themselves pass
    client
        .ok(
            "memory.add_fact",
            json!({"subject": long(1024), "body": long(16_384), "fact_id": long(128),
                   "kind": long(32), "tags": vec![long(64); 32], "source": long(64)}),
        )
        .await;
    client
        .ok("memory.query", json!({"query": long(4096), "k": 50}))
        .await;
    client
        .ok(
            "memory.build_context",
            json!({"query": "x", "model_context_window": 10_000_000}),
        )
        .await;
    assert_eq!(client.ok("memory.fact_count", json!({})).await, 1);
    assert_eq!(memory_events(&server).await.len(), 1);
    // CAR's skill methods and its other memory methods are not offered (§11.2)
    for method in [
        "skill.ingest",
        "skill.find",
        "skill.report",
        "skills.list",
        "memory.graph",
    ] {
        let err = client.err(method, json!({})).await;
        assert_eq!(
            (err.code, err.message),
            (-32601, format!("unknown method: {method}"))
        );
    }
}

#[tokio::test]
async fn a_full_scope_refuses_new_facts_but_not_retries() {
    // Given a daemon holding at most 2 facts per scope, and a full shared scope
    let server = server(&["--memory-max-facts", "2"]).await;
    let mut client = server.auth_client().await;
    for id in ["a", "b"] {
        client
            .ok(
                "memory.add_fact",
                json!({"fact_id": id, "subject": id, "body": id}),
            )
            .await;
    }
    // When a third is added: -32603
    let err = client
        .err("memory.add_fact", json!({"subject": "c", "body": "c"}))
        .await;
    assert_eq!(
        (err.code, err.message.as_str()),
        (-32603, "memory scope is full (2 facts)")
    );
    // A retry of a live fact still answers
    assert_eq!(
        client
            .ok(
                "memory.add_fact",
                json!({"fact_id": "a", "subject": "a", "body": "a"})
            )
            .await,
        2
    );
    // Another scope has its own room
    let mut other = in_namespace(&server, "other").await;
    assert_eq!(
        other
            .ok("memory.add_fact", json!({"subject": "c", "body": "c"}))
            .await,
        1
    );
    // A load file larger than the scope holds is refused
    fs::write(
        memory_dir(&server).join("three.json"),
        json!([{"subject": "1", "body": "1"}, {"subject": "2", "body": "2"}, {"subject": "3", "body": "3"}])
            .to_string(),
    )
    .unwrap();
    let err = client
        .err("memory.load", json!({"path": "three.json"}))
        .await;
    assert_eq!(
        (err.code, err.message.as_str()),
        (
            -32602,
            "memory.load: 'three.json': 3 facts, more than the scope holds (2)"
        )
    );
}

#[tokio::test]
async fn scopes_isolate_namespaces_agents_and_the_shared_graph() {
    let server = server(&[]).await;
    // Given session.auth with memory_namespace on every form, echoed
    let mut alpha = server.connect().await;
    let auth = alpha
        .ok(
            "session.auth",
            json!({"token": server.auth_token, "memory_namespace": "team-alpha"}),
        )
        .await;
    assert_eq!(auth["memory_namespace"], "team-alpha", "{auth}");
    let mut beta = in_namespace(&server, "team-beta").await;
    let mut alpha_agent = server
        .auth_with(json!({"token": server.auth_token, "agent_id": "researcher",
                          "memory_namespace": "team-alpha"}))
        .await;
    let mut agent = server.auth_agent("writer").await;
    let mut client = server.auth_client().await;
    let mut host = server
        .auth_with(json!({"host_token": server.host_token}))
        .await;
    let plain = server
        .connect()
        .await
        .ok("session.auth", json!({"token": server.auth_token}))
        .await;
    assert!(plain.get("memory_namespace").is_none(), "{plain}");

    // When each adds a fact
    alpha
        .ok(
            "memory.add_fact",
            json!({"subject": "alpha", "body": "from alpha"}),
        )
        .await;
    beta.ok(
        "memory.add_fact",
        json!({"subject": "beta", "body": "from beta"}),
    )
    .await;
    agent
        .ok(
            "memory.add_fact",
            json!({"subject": "writer", "body": "from the agent"}),
        )
        .await;
    client
        .ok(
            "memory.add_fact",
            json!({"subject": "shared", "body": "from a client"}),
        )
        .await;

    // Then a namespace wins over an agent binding, namespaces do not see each other, an
    // agent has its own graph, clients and hosts share one
    let everything = json!({"query": "from", "k": 50});
    assert_eq!(
        ids(&alpha.ok("memory.query", everything.clone()).await),
        ["ws-1"]
    );
    let seen = alpha_agent.ok("memory.query", everything.clone()).await;
    assert_eq!(seen[0]["subject"], "alpha", "{seen}");
    let seen = beta.ok("memory.query", everything.clone()).await;
    assert_eq!(
        (seen.as_array().unwrap().len(), &seen[0]["subject"]),
        (1, &json!("beta"))
    );
    let seen = agent.ok("memory.query", everything.clone()).await;
    assert_eq!(
        (seen.as_array().unwrap().len(), &seen[0]["subject"]),
        (1, &json!("writer"))
    );
    let seen = host.ok("memory.query", everything.clone()).await;
    assert_eq!(
        (seen.as_array().unwrap().len(), &seen[0]["subject"]),
        (1, &json!("shared"))
    );
    assert_eq!(host.ok("memory.fact_count", json!({})).await, 1);
    let scopes: Vec<Value> = memory_events(&server)
        .await
        .iter()
        .map(|e| e["data"]["scope"].clone())
        .collect();
    assert_eq!(
        scopes,
        [
            json!("ns:team-alpha"),
            json!("ns:team-beta"),
            json!("agent:writer"),
            json!("shared")
        ]
    );

    // A bad namespace is -32602 and leaves the session unauthenticated
    for (bad, reason) in [
        (json!(""), "is empty"),
        (json!("x".repeat(257)), "exceeds 256 bytes"),
        (json!("a\u{7}b"), "contains a control character"),
    ] {
        let mut session = server.connect().await;
        let err = session
            .err(
                "session.auth",
                json!({"token": server.auth_token, "memory_namespace": bad}),
            )
            .await;
        assert_eq!(err.code, -32602, "{err}");
        assert_eq!(
            err.message,
            format!("invalid params: memory_namespace: {reason}")
        );
        let ok = session
            .ok(
                "session.auth",
                json!({"token": server.auth_token, "memory_namespace": "é".repeat(128)}),
            )
            .await;
        assert_eq!(ok["memory_namespace"], "é".repeat(128));
    }
}

#[tokio::test]
async fn with_auth_disabled_memory_is_the_shared_graph() {
    let server = server(&["--no-auth"]).await;
    let mut anonymous = server.connect().await;
    anonymous
        .ok("memory.add_fact", json!({"subject": "s", "body": "b"}))
        .await;
    let mut named = in_namespace(&server, "n").await;
    assert_eq!(named.ok("memory.fact_count", json!({})).await, 0);
    assert_eq!(
        server
            .connect()
            .await
            .ok("memory.fact_count", json!({}))
            .await,
        1
    );
}

#[tokio::test]
async fn query_ranks_build_context_renders_and_reads_follow_writes() {
    let server = server(&[]).await;
    let mut client = in_namespace(&server, "deploys").await;
    // Given facts of every kind that picks a section, sent pipelined without waiting
    let facts = [
        json!({"fact_id": "me", "subject": "name", "body": "I am Ada", "kind": "identity"}),
        json!({"fact_id": "c1", "subject": "deploys", "body": "never on Fridays", "kind": "constraint"}),
        json!({"fact_id": "p1", "subject": "deploy tool", "body": "we deploy with cargo release"}),
        json!({"fact_id": "p2", "subject": "lunch", "body": "noodles on Tuesdays"}),
    ];
    let mut sent = Vec::new();
    for fact in facts {
        sent.push(client.request("memory.add_fact", fact).await.unwrap());
    }
    // When a read follows them in the same frame order, it sees every one
    let count = client
        .request("memory.fact_count", json!({}))
        .await
        .unwrap();
    assert_eq!(client.response(&count).await.unwrap().unwrap(), 4);
    for (i, id) in sent.iter().enumerate() {
        assert_eq!(client.response(id).await.unwrap().unwrap(), i + 1);
    }
    // fact_count with params null, and absent
    for frame in [
        json!({"jsonrpc": "2.0", "id": "null-params", "method": "memory.fact_count", "params": null}),
        json!({"jsonrpc": "2.0", "id": "no-params", "method": "memory.fact_count"}),
    ] {
        client.send_json(&frame).await.unwrap();
        assert_eq!(client.response(&frame["id"]).await.unwrap().unwrap(), 4);
    }

    // Then a query ranks the matching facts, best first, with confidences in (0, 1)
    let hits = client
        .ok("memory.query", json!({"query": "how do we deploy"}))
        .await;
    // ("how", "do", "we" are stop words; "deploys" is another word than "deploy")
    assert_eq!(ids(&hits), ["p1"]);
    let first = &hits[0];
    let mut keys: Vec<_> = first.as_object().unwrap().keys().collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "body",
            "confidence",
            "fact_id",
            "kind",
            "source",
            "subject",
            "tags"
        ]
    );
    let confidence = first["confidence"].as_f64().unwrap();
    assert!(confidence > 0.0 && confidence < 1.0, "{first}");
    assert_eq!(
        ids(&client
            .ok("memory.query", json!({"query": "noodles", "k": 1}))
            .await),
        ["p2"]
    );
    assert_eq!(
        client
            .ok("memory.query", json!({"query": "kubernetes"}))
            .await,
        json!([])
    );

    // And the context has its sections in order, the unknown term last
    let context = client
        .ok(
            "memory.build_context",
            json!({"query": "how do we deploy kubernetes"}),
        )
        .await;
    assert_eq!(
        context.as_str().unwrap(),
        "## Identity\n- [me] name: I am Ada\n\n\
         ## Constraints\n- [c1] deploys: never on Fridays\n\n\
         ## Facts\n- [p1] deploy tool: we deploy with cargo release\n\n\
         ## Known Unknowns\n- kubernetes\n\n"
    );
    // An empty scope has the empty context
    let mut empty = in_namespace(&server, "empty").await;
    assert_eq!(
        empty
            .ok("memory.build_context", json!({"query": "anything"}))
            .await,
        ""
    );
    // Reads log nothing
    assert_eq!(memory_events(&server).await.len(), 4);
}

#[tokio::test]
async fn delete_and_consolidate_report_and_log_what_they_remove() {
    let server = server(&[]).await;
    let mut client = server.auth_client().await;
    for (id, subject, body) in [
        ("a", "tea", "green"),
        ("b", "tea", "green"),
        ("c", "coffee", "black"),
        ("d", "tea", "green"),
        ("e", "gone", "soon"),
    ] {
        client
            .ok(
                "memory.add_fact",
                json!({"fact_id": id, "subject": subject, "body": body}),
            )
            .await;
    }
    // delete of a live fact
    let deleted = client.ok("memory.delete", json!({"id": "e"})).await;
    assert_eq!(
        deleted,
        json!({"id": "e", "deleted": true, "kind": "pattern", "fact_count": 4})
    );
    // of an unknown one: nothing, nothing logged
    let missing = client.ok("memory.delete", json!({"id": "e"})).await;
    assert_eq!(
        missing,
        json!({"id": "e", "deleted": false, "kind": null, "fact_count": 4})
    );
    // consolidate (params null): the exact duplicates go, the oldest stays
    client
        .send_json(
            &json!({"jsonrpc": "2.0", "id": "c", "method": "memory.consolidate", "params": null}),
        )
        .await
        .unwrap();
    let report = client.response(&json!("c")).await.unwrap().unwrap();
    assert_eq!(
        report,
        json!({"facts_before": 4, "facts_after": 2, "duplicates_removed": 2,
               "candidates_promoted": [], "candidates_rejected": []})
    );
    let left = client
        .ok("memory.query", json!({"query": "tea coffee", "k": 50}))
        .await;
    let mut left = ids(&left);
    left.sort_unstable();
    assert_eq!(left, ["a", "c"]);
    // Again: nothing left to merge
    assert_eq!(
        client.ok("memory.consolidate", json!({})).await["duplicates_removed"],
        0
    );
    let deletions: Vec<(Value, Value)> = memory_events(&server)
        .await
        .iter()
        .filter(|e| e["kind"] == "memory.fact_deleted")
        .map(|e| (e["data"]["fact_id"].clone(), e["data"]["reason"].clone()))
        .collect();
    assert_eq!(
        deletions,
        [
            (json!("e"), json!("delete")),
            (json!("b"), json!("consolidate")),
            (json!("d"), json!("consolidate")),
        ]
    );
}

#[tokio::test]
async fn persist_writes_a_0600_snapshot_and_load_replaces_a_scope_with_it() {
    let server = server(&[]).await;
    let dir = memory_dir(&server);
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let mut alpha = in_namespace(&server, "alpha").await;
    for (subject, body, kind) in [
        ("name", "Ada", "identity"),
        ("deploys", "never on Fridays", "constraint"),
        ("tool", "cargo release", "pattern"),
    ] {
        alpha
            .ok(
                "memory.add_fact",
                json!({"subject": subject, "body": body, "kind": kind, "tags": ["t"]}),
            )
            .await;
    }
    // When alpha persists its scope (relative, then absolute inside, into a sub-directory)
    assert_eq!(
        alpha
            .ok("memory.persist", json!({"path": "alpha.json"}))
            .await,
        3
    );
    let absolute = dir.join("backups").join("alpha.json");
    assert_eq!(
        alpha
            .ok(
                "memory.persist",
                json!({"path": absolute.to_str().unwrap()})
            )
            .await,
        3
    );
    // Then the file is the facts in log order, owner-only, and the log records it
    let file = dir.join("alpha.json");
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(fs::read(&file).unwrap(), fs::read(&absolute).unwrap());
    let rows: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    let subjects: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["name", "deploys", "tool"]);
    assert!(rows[0]["created_at"].is_string(), "{rows}");
    let persisted: Vec<Value> = memory_events(&server)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "memory.scope_persisted")
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(persisted.len(), 2);
    assert_eq!(
        (
            &persisted[0]["scope"],
            &persisted[0]["path"],
            &persisted[0]["count"]
        ),
        (&json!("ns:alpha"), &json!("alpha.json"), &json!(3))
    );
    assert_eq!(persisted[1]["path"], "backups/alpha.json");
    assert_eq!(persisted[0]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(persisted[0]["sha256"], persisted[1]["sha256"]);

    // When beta, with a fact of its own, loads alpha's snapshot
    let mut beta = in_namespace(&server, "beta").await;
    beta.ok("memory.add_fact", json!({"subject": "own", "body": "fact"}))
        .await;
    assert_eq!(
        beta.ok("memory.load", json!({"path": "alpha.json"})).await,
        3
    );
    // Then beta's scope is exactly alpha's facts: same ids, content and context
    let context = json!({"query": "deploy tool"});
    assert_eq!(
        beta.ok("memory.build_context", context.clone()).await,
        alpha.ok("memory.build_context", context).await
    );
    let everything = json!({"query": "name deploys tool own fact", "k": 50});
    assert_eq!(
        beta.ok("memory.query", everything.clone()).await,
        alpha.ok("memory.query", everything).await
    );
    assert_eq!(beta.ok("memory.fact_count", json!({})).await, 3);
    // And a hand-written {"facts": [...]} file takes the defaults
    fs::write(
        dir.join("hand.json"),
        json!({"facts": [{"subject": "a", "body": "one", "created_at": "ignored"},
                         {"subject": "b", "body": "two", "fact_id": "mine", "tags": null}]})
        .to_string(),
    )
    .unwrap();
    assert_eq!(
        beta.ok("memory.load", json!({"path": "hand.json"})).await,
        2
    );
    let hits = beta
        .ok("memory.query", json!({"query": "one two", "k": 50}))
        .await;
    let loaded = hits
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["subject"] == "a")
        .unwrap();
    assert_eq!(
        (&loaded["fact_id"], &loaded["kind"], &loaded["source"]),
        (&json!("loaded-1"), &json!("pattern"), &json!("load"))
    );
    let mut got = ids(&hits);
    got.sort_unstable();
    assert_eq!(got, ["loaded-1", "mine"]);
    let loads: Vec<Value> = memory_events(&server)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "memory.scope_loaded")
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(loads.len(), 2);
    assert_eq!(
        (
            &loads[1]["scope"],
            &loads[1]["path"],
            loads[1]["facts"].as_array().unwrap().len()
        ),
        (&json!("ns:beta"), &json!("hand.json"), 2)
    );
}

#[tokio::test]
async fn persist_and_load_never_leave_the_memory_directory() {
    let server = server(&[]).await;
    let dir = memory_dir(&server);
    let outside = server.data_dir().path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(
        outside.join("secret.json"),
        r#"[{"subject": "s", "body": "b"}]"#,
    )
    .unwrap();
    symlink(&outside, dir.join("out")).unwrap();
    symlink(outside.join("secret.json"), dir.join("secret.json")).unwrap();
    let mut client = server.auth_client().await;
    client
        .ok("memory.add_fact", json!({"subject": "keep", "body": "me"}))
        .await;
    let etc = "/etc/passwd".to_owned();
    let the_dir = dir.to_str().unwrap().to_owned();
    let rejected = [
        "".to_owned(),
        "a\0b.json".to_owned(),
        "../escape.json".to_owned(),
        "sub/../../escape.json".to_owned(),
        etc,
        outside.join("x.json").to_str().unwrap().to_owned(),
        "out/secret.json".to_owned(),
        "out/new.json".to_owned(),
        "secret.json".to_owned(),
        the_dir.clone(),
        format!("{the_dir}/"),
        ".".to_owned(),
    ];
    for method in ["memory.persist", "memory.load"] {
        for path in &rejected {
            let err = client.err(method, json!({"path": path})).await;
            assert_eq!(
                (err.code, err.message.clone()),
                (
                    -32602,
                    format!("{method} rejected path '{path}': outside the memory directory")
                ),
                "{method} {path:?}"
            );
        }
    }
    // Nothing was written outside, nothing loaded, nothing logged but the one fact
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
    assert!(!server.data_dir().path().join("escape.json").exists());
    assert_eq!(client.ok("memory.fact_count", json!({})).await, 1);
    assert_eq!(memory_events(&server).await.len(), 1);

    // No file: -32603
    let err = client
        .err("memory.load", json!({"path": "nope.json"}))
        .await;
    assert_eq!(
        (err.code, err.message.as_str()),
        (-32603, "memory.load: no such file 'nope.json'")
    );
    // Malformed files: -32602 naming the reason; the scope is untouched
    let big_body = "x".repeat(16_385);
    let malformed: Vec<(&str, String, String)> = vec![
        ("bad.json", "{not json".into(), "invalid JSON: ".into()),
        (
            "shape.json",
            r#"{"rows": []}"#.into(),
            r#"expected a JSON array of facts or {"facts": [...]}"#.into(),
        ),
        (
            "row.json",
            json!([{"subject": "ok", "body": "ok"}, {"subject": "big", "body": big_body}]).to_string(),
            "row 2: body exceeds 16384 bytes".into(),
        ),
        (
            "dup.json",
            json!([{"fact_id": "x", "subject": "a", "body": "a"}, {"fact_id": "x", "subject": "b", "body": "b"}])
                .to_string(),
            "row 2: duplicate fact_id 'x'".into(),
        ),
        (
            "missing.json",
            json!([{"subject": "a"}]).to_string(),
            "row 1: body is required".into(),
        ),
    ];
    for (name, text, reason) in &malformed {
        fs::write(dir.join(name), text).unwrap();
        let err = client.err("memory.load", json!({"path": name})).await;
        assert_eq!(err.code, -32602, "{name}: {err}");
        let prefix = format!("memory.load: '{name}': {reason}");
        assert!(err.message.starts_with(&prefix), "{name}: {}", err.message);
    }
    // Over 64 MiB
    let huge = fs::File::create(dir.join("huge.json")).unwrap();
    huge.set_len((64 << 20) + 1).unwrap();
    let err = client
        .err("memory.load", json!({"path": "huge.json"}))
        .await;
    assert_eq!(
        (err.code, err.message.as_str()),
        (-32602, "memory.load: 'huge.json': exceeds 64 MiB")
    );
    assert_eq!(
        client.ok("memory.query", json!({"query": "keep"})).await[0]["subject"],
        "keep"
    );
    assert_eq!(memory_events(&server).await.len(), 1);
    // A link that stays inside is followed (a dangling one is refused: where it leads
    // cannot be checked)
    symlink("real.json", dir.join("alias.json")).unwrap();
    let err = client
        .err("memory.persist", json!({"path": "alias.json"}))
        .await;
    assert_eq!(err.code, -32602, "{err}");
    assert_eq!(
        client
            .ok("memory.persist", json!({"path": "real.json"}))
            .await,
        1
    );
    assert_eq!(
        client
            .ok("memory.persist", json!({"path": "alias.json"}))
            .await,
        1
    );
    assert!(dir.join("real.json").is_file());
    assert_eq!(
        client
            .ok("memory.load", json!({"path": "alias.json"}))
            .await,
        1
    );
}

#[tokio::test]
async fn the_cookbook_flow_survives_sigkill_to_the_byte() {
    // Given a daemon, and a client that adds facts, queries and builds a context
    let mut server = server(&[]).await;
    let facts = [
        json!({"subject": "user name", "body": "Ada Lovelace", "kind": "identity"}),
        json!({"subject": "deploy window", "body": "never deploy on Fridays", "kind": "constraint"}),
        json!({"subject": "deploy tool", "body": "releases go out with cargo release\nand a tag"}),
        json!({"subject": "ci", "body": "GitHub Actions runs the deploy pipeline"}),
        json!({"subject": "chat", "body": "asked about the deploy", "kind": "conversation"}),
        json!({"subject": "host", "body": "linux x86_64", "kind": "environment"}),
        json!({"subject": "deploy tool", "body": "releases go out with cargo release\nand a tag"}),
    ];
    let query = json!({"query": "how do we deploy the release on kubernetes", "k": 10});
    let context = json!({"query": "how do we deploy the release on kubernetes", "model_context_window": 200000});
    let observe = async |server: &Endpoint, namespace: Option<&str>| {
        let mut client = match namespace {
            Some(ns) => in_namespace(server, ns).await,
            None => server.auth_client().await,
        };
        (
            client.ok("memory.fact_count", json!({})).await,
            client.ok("memory.query", query.clone()).await,
            client.ok("memory.build_context", context.clone()).await,
        )
    };
    let mut client = in_namespace(&server, "cookbook").await;
    for fact in &facts {
        client.ok("memory.add_fact", fact.clone()).await;
    }
    client.ok("memory.delete", json!({"id": "ws-4"})).await;
    client.ok("memory.consolidate", json!({})).await;
    let mut shared = server.auth_client().await;
    shared
        .ok(
            "memory.add_fact",
            json!({"subject": "shared", "body": "deploy notes"}),
        )
        .await;
    let before = observe(&server, Some("cookbook")).await;
    let shared_before = observe(&server, None).await;
    assert_eq!(before.0, 5);
    assert!(
        before
            .2
            .as_str()
            .unwrap()
            .contains("## Known Unknowns\n- kubernetes\n"),
        "{}",
        before.2
    );

    // When the daemon is killed and started again
    server.kill().await.unwrap();
    server.restart().await.unwrap();

    // Then the facts, the query results and the context are identical to the byte
    let after = observe(&server, Some("cookbook")).await;
    assert_eq!(after.0, before.0);
    assert_eq!(after.1.to_string(), before.1.to_string());
    assert_eq!(after.2.as_str().unwrap(), before.2.as_str().unwrap());
    assert_eq!(observe(&server, None).await, shared_before);
    // And minting goes on where it stopped: ws-7 was the last minted id
    let mut client = in_namespace(&server, "cookbook").await;
    client
        .ok(
            "memory.add_fact",
            json!({"subject": "new", "body": "after the crash"}),
        )
        .await;
    let hit = client.ok("memory.query", json!({"query": "crash"})).await;
    assert_eq!(ids(&hit), ["ws-8"]);
}
