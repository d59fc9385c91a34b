//! Memory (PROTOCOL.md §11): every decision and refusal as given/when/then tables, the
//! fold and its contradictions, load/persist's pure halves, path checks, ranking and
//! `build_context` byte for byte, replay determinism, and by property: the incrementally
//! kept index is at every moment the one a rebuild from scratch gives, and ranks exactly
//! as the reference scan does.

use std::path::{Path, PathBuf};

use car_events::event::{
    FactRemoval, MemoryFact, MemoryFactAdded, MemoryFactDeleted, MemoryScopeLoaded,
    MemoryScopePersisted,
};
use car_events::{Event, EventJson};
use car_projections::memory::decide::{check_fact, decide_add_fact};
use car_projections::memory::{
    AddFact, Consolidate, DeleteFact, LoadScope, MemoryRefusal, Minter, PathRejection,
    RecordPersist, Scope, ScopeMemory, parse_load_file, resolve_memory_path, scan_query, snapshot,
};
use car_projections::state::Contradiction;
use car_projections::{Command, Refusal, State, canonical};
use proptest::prelude::*;
use rstest::rstest;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::gwt::{Then, check, event, events, nothing, refused};
use crate::support::{apply_events, envelope, fold, given, given_ts};

// ---------------------------------------------------------------------------------------
// Vocabulary.

const C1: &str = "c1";

fn shared() -> Scope {
    Scope::Shared
}

fn ns(name: &str) -> Scope {
    Scope::Namespace(name.into())
}

fn fact(id: &str, subject: &str, body: &str, kind: &str) -> MemoryFact {
    MemoryFact {
        fact_id: id.into(),
        subject: subject.into(),
        body: body.into(),
        kind: kind.into(),
        tags: vec![],
        source: "user".into(),
    }
}

/// `memory.fact_added` in `scope` by session `c1`.
fn added_in(scope: &Scope, fact: MemoryFact) -> Event {
    MemoryFactAdded {
        scope: scope.as_key(),
        fact,
        client_id: Some(C1.into()),
    }
    .into()
}

/// A `pattern` fact added to `shared`.
fn added(id: &str, subject: &str, body: &str) -> Event {
    added_in(&shared(), fact(id, subject, body, "pattern"))
}

fn deleted_in(scope: &Scope, id: &str, reason: FactRemoval) -> Event {
    MemoryFactDeleted {
        scope: scope.as_key(),
        fact_id: id.into(),
        reason,
        client_id: Some(C1.into()),
    }
    .into()
}

/// `memory.add_fact {subject, body}` on `shared` from `c1`, every default.
fn add(subject: &str, body: &str) -> AddFact {
    AddFact {
        scope: shared(),
        client_id: Some(C1.into()),
        fact_id: None,
        subject: subject.into(),
        body: body.into(),
        kind: None,
        tags: None,
        source: None,
        minter: Minter::Ws,
        max_facts: 100_000,
    }
}

fn add_id(id: &str, subject: &str, body: &str) -> AddFact {
    AddFact {
        fact_id: Some(id.into()),
        ..add(subject, body)
    }
}

fn when_add(c: AddFact) -> Command {
    Command::MemoryAddFact(c)
}

fn field(field: &str, reason: &str) -> Then {
    refused(Refusal::Memory(MemoryRefusal::Field {
        method: "memory.add_fact",
        field: field.into(),
        reason: reason.into(),
    }))
}

fn x(n: usize) -> String {
    "x".repeat(n)
}

// ---------------------------------------------------------------------------------------
// memory.add_fact

#[rstest]
#[case::a_minted_id_with_every_default(
    given![],
    when_add(add("editor", "Neovim")),
    event(added("ws-1", "editor", "Neovim")),
)]
#[case::minting_counts_up_per_scope(
    given![added("ws-1", "a", "b"), added("ws-2", "c", "d")],
    when_add(add("e", "f")),
    event(added("ws-3", "e", "f")),
)]
#[case::minting_skips_an_id_in_use(
    given![added("ws-1", "a", "b"), added("ws-2", "c", "d"), added("ws-3", "mine", "explicit")],
    when_add(add("e", "f")),
    event(added("ws-4", "e", "f")),
)]
#[case::a_minted_id_is_never_reused_after_a_delete(
    given![added("ws-1", "a", "b"), deleted_in(&shared(), "ws-1", FactRemoval::Delete)],
    when_add(add("e", "f")),
    event(added("ws-2", "e", "f")),
)]
#[case::each_scope_has_its_own_counter(
    given![added("ws-1", "a", "b")],
    when_add(AddFact { scope: ns("team"), ..add("e", "f") }),
    event(added_in(&ns("team"), fact("ws-1", "e", "f", "pattern"))),
)]
#[case::mcp_mints_its_own_family(
    given![added("ws-1", "a", "b")],
    when_add(AddFact { minter: Minter::Mcp, client_id: None, source: Some("mcp".into()), ..add("e", "f") }),
    event(MemoryFactAdded {
        scope: "shared".into(),
        fact: MemoryFact { source: "mcp".into(), ..fact("mcp-1", "e", "f", "pattern") },
        client_id: None,
    }),
)]
#[case::non_canonical_numbers_do_not_move_the_counter(
    given![added("ws-01", "a", "b"), added("ws-x", "c", "d")],
    when_add(add("e", "f")),
    event(added("ws-1", "e", "f")),
)]
#[case::the_client_names_the_id_kind_tags_and_source(
    given![],
    when_add(AddFact {
        kind: Some("constraint".into()),
        tags: Some(vec!["deploy".into(), "policy".into()]),
        source: Some("operator".into()),
        ..add_id("deploy-freeze", "deploys", "Not on Fridays")
    }),
    event(added_in(&shared(), MemoryFact {
        tags: vec!["deploy".into(), "policy".into()],
        source: "operator".into(),
        ..fact("deploy-freeze", "deploys", "Not on Fridays", "constraint")
    })),
)]
#[case::a_retry_with_the_same_content_changes_nothing(
    given![added("f1", "editor", "Neovim")],
    when_add(AddFact { tags: Some(vec!["other".into()]), source: Some("x".into()), ..add_id("f1", "editor", "Neovim") }),
    nothing(),
)]
#[case::other_content_under_a_live_id_is_refused(
    given![added("f1", "editor", "Neovim")],
    when_add(add_id("f1", "editor", "Emacs")),
    refused(Refusal::Memory(MemoryRefusal::Conflict("f1".into()))),
)]
#[case::another_kind_is_other_content(
    given![added("f1", "editor", "Neovim")],
    when_add(AddFact { kind: Some("identity".into()), ..add_id("f1", "editor", "Neovim") }),
    refused(Refusal::Memory(MemoryRefusal::Conflict("f1".into()))),
)]
#[case::a_deleted_id_can_be_added_again(
    given![added("f1", "editor", "Neovim"), deleted_in(&shared(), "f1", FactRemoval::Delete)],
    when_add(add_id("f1", "editor", "Emacs")),
    event(added("f1", "editor", "Emacs")),
)]
#[case::a_full_scope_refuses(
    given![added("ws-1", "a", "b"), added("ws-2", "c", "d")],
    when_add(AddFact { max_facts: 2, ..add("e", "f") }),
    refused(Refusal::Memory(MemoryRefusal::ScopeFull(2))),
)]
#[case::a_safe_retry_on_a_full_scope_is_still_fine(
    given![added("ws-1", "a", "b"), added("ws-2", "c", "d")],
    when_add(AddFact { max_facts: 2, ..add_id("ws-2", "c", "d") }),
    nothing(),
)]
#[case::a_full_scope_does_not_fill_another(
    given![added("ws-1", "a", "b"), added("ws-2", "c", "d")],
    when_add(AddFact { max_facts: 2, scope: Scope::Agent("a1".into()), ..add("e", "f") }),
    event(added_in(&Scope::Agent("a1".into()), fact("ws-1", "e", "f", "pattern"))),
)]
fn add_fact(#[case] given: Vec<Event>, #[case] when: Command, #[case] then: Then) {
    check(given, when, then);
}

#[rstest]
#[case::subject_empty(add("", "b"), "subject", "is empty")]
#[case::subject_too_long(add(&x(1025), "b"), "subject", "exceeds 1024 bytes")]
#[case::body_empty(add("s", ""), "body", "is empty")]
#[case::body_too_long(add("s", &x(16_385)), "body", "exceeds 16384 bytes")]
#[case::kind_empty(AddFact { kind: Some(String::new()), ..add("s", "b") }, "kind", "is empty")]
#[case::kind_too_long(AddFact { kind: Some(x(33)), ..add("s", "b") }, "kind", "exceeds 32 bytes")]
#[case::kind_upper_case(AddFact { kind: Some("Pattern".into()), ..add("s", "b") }, "kind", "has a character outside [a-z_]")]
#[case::kind_digit(AddFact { kind: Some("v2".into()), ..add("s", "b") }, "kind", "has a character outside [a-z_]")]
#[case::too_many_tags(AddFact { tags: Some(vec!["t".into(); 33]), ..add("s", "b") }, "tags", "has more than 32 entries")]
#[case::an_empty_tag(AddFact { tags: Some(vec!["t".into(), String::new()]), ..add("s", "b") }, "tags[1]", "is empty")]
#[case::a_long_tag(AddFact { tags: Some(vec![x(65)]), ..add("s", "b") }, "tags[0]", "exceeds 64 bytes")]
#[case::fact_id_empty(add_id("", "s", "b"), "fact_id", "is empty")]
#[case::fact_id_too_long(add_id(&x(129), "s", "b"), "fact_id", "exceeds 128 bytes")]
#[case::fact_id_with_a_space(
    add_id("my fact", "s", "b"),
    "fact_id",
    "has a character outside [A-Za-z0-9._:-]"
)]
#[case::fact_id_with_a_slash(
    add_id("a/b", "s", "b"),
    "fact_id",
    "has a character outside [A-Za-z0-9._:-]"
)]
#[case::source_empty(AddFact { source: Some(String::new()), ..add("s", "b") }, "source", "is empty")]
#[case::source_too_long(AddFact { source: Some(x(65)), ..add("s", "b") }, "source", "exceeds 64 bytes")]
fn add_fact_limits(#[case] when: AddFact, #[case] field_name: &str, #[case] reason: &str) {
    check(given![], when_add(when.clone()), field(field_name, reason));
    let message = decide_add_fact(&State::new().memory().clone(), &when)
        .unwrap_err()
        .to_string();
    assert_eq!(message, format!("memory.add_fact: {field_name} {reason}"));
}

#[test]
fn the_contract_s_example_message_word_for_word() {
    let refusal = decide_add_fact(State::new().memory(), &add("s", &x(16_385))).unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "memory.add_fact: body exceeds 16384 bytes"
    );
    assert_eq!(refusal.code(), -32602);
    let full = MemoryRefusal::ScopeFull(100_000);
    assert_eq!(full.to_string(), "memory scope is full (100000 facts)");
    assert_eq!(full.code(), -32603);
    assert_eq!(
        MemoryRefusal::Conflict("f1".into()).to_string(),
        "memory.add_fact: fact_id 'f1' exists with different content"
    );
}

#[test]
fn every_limit_is_inclusive() {
    let at_the_limits = AddFact {
        kind: Some(x(32)),
        tags: Some(vec![x(64); 32]),
        source: Some(x(64)),
        ..add_id(&format!("{}.:-_A9", x(122)), &x(1024), &x(16_384))
    };
    let state = State::new();
    let decided = decide_add_fact(state.memory(), &at_the_limits).unwrap();
    assert_eq!(decided.len(), 1);
    check(given![], when_add(at_the_limits), Then::Events(decided));
    assert!(check_fact(&fact("é", "s", "b", "pattern")).is_err());
}

// ---------------------------------------------------------------------------------------
// memory.delete, memory.consolidate

fn delete(id: &str) -> Command {
    Command::MemoryDelete(DeleteFact {
        scope: shared(),
        client_id: Some(C1.into()),
        fact_id: id.into(),
    })
}

fn consolidate(scope: Scope) -> Command {
    Command::MemoryConsolidate(Consolidate {
        scope,
        client_id: Some(C1.into()),
    })
}

#[rstest]
#[case::a_live_fact(
    given![added("f1", "a", "b")],
    delete("f1"),
    event(deleted_in(&shared(), "f1", FactRemoval::Delete)),
)]
#[case::an_unknown_id_logs_nothing(given![added("f1", "a", "b")], delete("f2"), nothing())]
#[case::an_already_deleted_id_logs_nothing(
    given![added("f1", "a", "b"), deleted_in(&shared(), "f1", FactRemoval::Delete)],
    delete("f1"),
    nothing(),
)]
#[case::another_scope_s_fact_is_not_seen(
    given![added_in(&ns("team"), fact("f1", "a", "b", "pattern"))],
    delete("f1"),
    nothing(),
)]
#[case::consolidate_removes_exact_duplicates_the_oldest_stays(
    given![
        added("f1", "editor", "Neovim"),
        added("f2", "shell", "zsh"),
        added("f3", "editor", "Neovim"),
        added_in(&shared(), fact("f4", "editor", "Neovim", "identity")),
        added("f5", "editor", "Neovim "),
        added("f6", "shell", "zsh"),
        added("f7", "editor", "Neovim"),
    ],
    consolidate(shared()),
    events(vec![
        deleted_in(&shared(), "f3", FactRemoval::Consolidate),
        deleted_in(&shared(), "f6", FactRemoval::Consolidate),
        deleted_in(&shared(), "f7", FactRemoval::Consolidate),
    ]),
)]
#[case::consolidate_without_duplicates_logs_nothing(
    given![added("f1", "a", "b"), added("f2", "a", "c")],
    consolidate(shared()),
    nothing(),
)]
#[case::consolidate_of_a_scope_never_written(given![], consolidate(ns("none")), nothing())]
fn delete_and_consolidate(#[case] given: Vec<Event>, #[case] when: Command, #[case] then: Then) {
    check(given, when, then);
}

// ---------------------------------------------------------------------------------------
// memory.load

fn load_err(path: &str, reason: &str) -> MemoryRefusal {
    MemoryRefusal::LoadInvalid {
        path: path.into(),
        reason: reason.into(),
    }
}

#[test]
fn a_load_file_is_an_array_or_an_object_with_facts_and_defaults_apply() {
    let array = br#"[
        {"subject": "editor", "body": "Neovim"},
        {"fact_id": "deploy", "subject": "deploys", "body": "Not on Fridays", "kind": "constraint",
         "tags": ["ops"], "source": "operator", "created_at": "2026-01-01T00:00:00.000Z",
         "confidence": 0.5},
        {"fact_id": null, "subject": "shell", "body": "zsh", "kind": null, "tags": null}
    ]"#;
    let loaded = parse_load_file("snap.json", array, 100).unwrap();
    assert_eq!(
        loaded.facts(),
        [
            MemoryFact {
                source: "load".into(),
                ..fact("loaded-1", "editor", "Neovim", "pattern")
            },
            MemoryFact {
                tags: vec!["ops".into()],
                source: "operator".into(),
                ..fact("deploy", "deploys", "Not on Fridays", "constraint")
            },
            MemoryFact {
                source: "load".into(),
                ..fact("loaded-3", "shell", "zsh", "pattern")
            },
        ]
    );
    let object = br#"{"facts": [{"subject": "editor", "body": "Neovim"}], "version": 1}"#;
    assert_eq!(
        parse_load_file("snap.json", object, 100)
            .unwrap()
            .facts()
            .len(),
        1
    );
    assert!(
        parse_load_file("e.json", b"[]", 100)
            .unwrap()
            .facts()
            .is_empty()
    );
}

#[rstest]
#[case::bad_json(&b"[{"[..], "invalid JSON: EOF while parsing an object at line 1 column 2")]
#[case::not_json(&b""[..], "invalid JSON: EOF while parsing a value at line 1 column 0")]
#[case::a_string(&br#""facts""#[..], r#"expected a JSON array of facts or {"facts": [...]}"#)]
#[case::an_object_without_facts(&br#"{"rows": []}"#[..], r#"expected a JSON array of facts or {"facts": [...]}"#)]
#[case::facts_not_an_array(&br#"{"facts": {}}"#[..], r#"expected a JSON array of facts or {"facts": [...]}"#)]
#[case::a_row_not_an_object(&br#"[{"subject": "s", "body": "b"}, 7]"#[..], "row 2: expected an object")]
#[case::no_subject(&br#"[{"body": "b"}]"#[..], "row 1: subject is required")]
#[case::no_body(&br#"[{"subject": "s"}]"#[..], "row 1: body is required")]
#[case::a_number_subject(&br#"[{"subject": 1, "body": "b"}]"#[..], "row 1: subject must be a string")]
#[case::tags_not_an_array(&br#"[{"subject": "s", "body": "b", "tags": "t"}]"#[..], "row 1: tags must be an array of strings")]
#[case::a_tag_not_a_string(&br#"[{"subject": "s", "body": "b", "tags": [1]}]"#[..], "row 1: tags must be an array of strings")]
#[case::a_row_breaking_a_limit(&br#"[{"subject": "s", "body": "b", "kind": "Bad"}]"#[..], "row 1: kind has a character outside [a-z_]")]
#[case::an_empty_body(&br#"[{"subject": "s", "body": "b"}, {"subject": "s", "body": ""}]"#[..], "row 2: body is empty")]
#[case::duplicate_ids(&br#"[{"fact_id": "a", "subject": "s", "body": "b"}, {"fact_id": "a", "subject": "t", "body": "c"}]"#[..], "row 2: duplicate fact_id 'a'")]
#[case::an_explicit_id_colliding_with_a_default(&br#"[{"subject": "s", "body": "b"}, {"fact_id": "loaded-1", "subject": "t", "body": "c"}]"#[..], "row 2: duplicate fact_id 'loaded-1'")]
#[case::too_many_facts(&br#"[{"subject": "a", "body": "b"}, {"subject": "c", "body": "d"}, {"subject": "e", "body": "f"}]"#[..], "3 facts, more than the scope holds (2)")]
fn a_bad_load_file_is_refused_with_its_reason(#[case] bytes: &[u8], #[case] reason: &str) {
    let refusal = parse_load_file("team/snap.json", bytes, 2).unwrap_err();
    assert_eq!(refusal, load_err("team/snap.json", reason));
    assert_eq!(
        refusal.to_string(),
        format!("memory.load: 'team/snap.json': {reason}")
    );
    assert_eq!(refusal.code(), -32602);
}

#[test]
fn a_load_file_over_64_mib_is_refused_unread() {
    let bytes = vec![b' '; (64 << 20) + 1];
    assert_eq!(
        parse_load_file("big.json", &bytes, 100).unwrap_err(),
        load_err("big.json", "exceeds 64 MiB")
    );
    let missing = MemoryRefusal::LoadNoSuchFile("nope.json".into());
    assert_eq!(missing.to_string(), "memory.load: no such file 'nope.json'");
    assert_eq!(missing.code(), -32603);
}

#[test]
fn load_replaces_the_whole_scope_and_keeps_the_minting_counter() {
    let given = given![
        added("ws-1", "editor", "Neovim"),
        added("ws-2", "shell", "zsh"),
        added_in(&ns("team"), fact("t1", "standup", "09:30", "conversation")),
    ];
    let file = br#"[{"subject": "os", "body": "Arch Linux"}, {"fact_id": "ws-1", "subject": "editor", "body": "Helix"}]"#;
    let facts = parse_load_file("snap.json", file, 100).unwrap();
    let when = Command::MemoryLoad(LoadScope {
        scope: shared(),
        client_id: Some(C1.into()),
        path: "snap.json".into(),
        facts: facts.clone(),
    });
    check(
        given.clone(),
        when.clone(),
        event(MemoryScopeLoaded {
            scope: "shared".into(),
            path: "snap.json".into(),
            facts: facts.facts().to_vec(),
            client_id: Some(C1.into()),
        }),
    );
    let mut state = fold(&given);
    let decided = car_projections::decide(&state, &when).unwrap();
    apply_events(&mut state, &decided, given_ts).unwrap();
    let memory = state.memory();
    let ids: Vec<&str> = memory
        .facts(&shared())
        .map(|f| f.fact_id.as_str())
        .collect();
    assert_eq!(ids, ["loaded-1", "ws-1"]);
    assert_eq!(memory.fact(&shared(), "ws-1").unwrap().body, "Helix");
    assert_eq!(memory.fact_count(&shared()), 2);
    assert_eq!(memory.fact_count(&ns("team")), 1, "other scopes untouched");
    // Every loaded fact was created at the load.
    assert!(
        memory
            .facts(&shared())
            .all(|f| f.created_at == given_ts(4) && f.seq == 4)
    );
    // The old facts are gone from the index too.
    assert!(memory.query(&shared(), "zsh", 5).is_empty());
    assert_eq!(memory.query(&shared(), "helix", 5)[0].fact.fact_id, "ws-1");
    // ws-2 was live once: the counter stays past it.
    check(
        given![given, decided],
        when_add(add("e", "f")),
        event(added("ws-3", "e", "f")),
    );
}

// ---------------------------------------------------------------------------------------
// memory.persist

#[test]
fn a_snapshot_is_the_live_facts_in_log_order_as_pretty_json() {
    let state = fold(&given![
        added("ws-1", "editor", "Neovim"),
        added_in(
            &shared(),
            MemoryFact {
                tags: vec!["ops".into()],
                ..fact("deploy", "deploys", "Not on\nFridays", "constraint")
            }
        ),
        added("ws-2", "gone", "soon"),
        deleted_in(&shared(), "ws-2", FactRemoval::Delete),
    ]);
    let snap = snapshot(state.memory(), &shared(), "snap.json", Some(C1.into())).unwrap();
    let expected = r#"[
  {
    "fact_id": "ws-1",
    "subject": "editor",
    "body": "Neovim",
    "kind": "pattern",
    "tags": [],
    "source": "user",
    "created_at": "2026-01-01T00:00:01.000Z"
  },
  {
    "fact_id": "deploy",
    "subject": "deploys",
    "body": "Not on\nFridays",
    "kind": "constraint",
    "tags": [
      "ops"
    ],
    "source": "user",
    "created_at": "2026-01-01T00:00:02.000Z"
  }
]
"#;
    assert_eq!(String::from_utf8(snap.bytes.clone()).unwrap(), expected);
    assert_eq!(
        snap.event,
        MemoryScopePersisted {
            scope: "shared".into(),
            path: "snap.json".into(),
            count: 2,
            sha256: hex::encode(Sha256::digest(expected.as_bytes())),
            client_id: Some(C1.into()),
        }
    );
    // The snapshot loads back to the same facts.
    let back = parse_load_file("snap.json", &snap.bytes, 100).unwrap();
    let live: Vec<MemoryFact> = state
        .memory()
        .facts(&shared())
        .map(|f| MemoryFact {
            fact_id: f.fact_id.clone(),
            subject: f.subject.clone(),
            body: f.body.clone(),
            kind: f.kind.clone(),
            tags: f.tags.clone(),
            source: f.source.clone(),
        })
        .collect();
    assert_eq!(back.facts(), live);
    // Recording it changes no fact.
    check(
        given![],
        Command::MemoryPersisted(RecordPersist {
            event: snap.event.clone(),
        }),
        event(snap.event),
    );
    // An empty scope is an empty array.
    let empty = snapshot(state.memory(), &ns("none"), "e.json", None).unwrap();
    assert_eq!(empty.bytes, b"[]\n");
}

#[test]
fn a_snapshot_over_64_mib_is_refused() {
    let body = x(16_384);
    let events: Vec<Event> = (0..4097)
        .map(|i| added(&format!("f{i}"), "s", &body))
        .collect();
    let state = fold(&events);
    let refusal = snapshot(state.memory(), &shared(), "big.json", None).unwrap_err();
    assert_eq!(refusal, MemoryRefusal::SnapshotTooLarge);
    assert_eq!(
        refusal.to_string(),
        "memory.persist: snapshot exceeds 64 MiB"
    );
    assert_eq!(refusal.code(), -32603);
}

// ---------------------------------------------------------------------------------------
// Paths.

#[rstest]
#[case::a_file("snap.json", Ok("snap.json"))]
#[case::a_sub_folder("team/a/snap.json", Ok("team/a/snap.json"))]
#[case::dots_are_dropped("./team/./snap.json", Ok("team/snap.json"))]
#[case::absolute_inside("/data/memory/team/snap.json", Ok("team/snap.json"))]
#[case::absolute_inside_with_dots("/data/./memory//snap.json", Ok("snap.json"))]
#[case::empty("", Err(PathRejection::Empty))]
#[case::nul("snap\0.json", Err(PathRejection::Nul))]
#[case::parent("../snap.json", Err(PathRejection::ParentComponent))]
#[case::parent_in_the_middle("team/../../snap.json", Err(PathRejection::ParentComponent))]
#[case::parent_that_stays_inside("team/../snap.json", Err(PathRejection::ParentComponent))]
#[case::absolute_outside("/etc/passwd", Err(PathRejection::Outside))]
#[case::absolute_sibling("/data/memory-other/snap.json", Err(PathRejection::Outside))]
#[case::absolute_parent("/data", Err(PathRejection::Outside))]
#[case::absolute_with_parent("/data/memory/../x", Err(PathRejection::ParentComponent))]
#[case::the_folder_itself_absolute("/data/memory", Err(PathRejection::TheDirectory))]
#[case::the_folder_itself_with_slash("/data/memory/", Err(PathRejection::TheDirectory))]
#[case::the_folder_itself_relative(".", Err(PathRejection::TheDirectory))]
#[case::the_folder_itself_relative_slash("./", Err(PathRejection::TheDirectory))]
fn persist_and_load_paths_stay_in_the_memory_directory(
    #[case] requested: &str,
    #[case] expected: Result<&str, PathRejection>,
) {
    assert_eq!(
        resolve_memory_path(Path::new("/data/memory"), requested),
        expected.map(PathBuf::from)
    );
}

#[test]
fn a_rejected_path_reads_as_the_contract_says() {
    let refusal = PathRejection::ParentComponent.refusal("memory.persist", "../x");
    assert_eq!(
        refusal.to_string(),
        "memory.persist rejected path '../x': outside the memory directory"
    );
    assert_eq!(refusal.code(), -32602);
    assert_eq!(
        PathRejection::Empty.refusal("memory.load", "").to_string(),
        "memory.load rejected path '': outside the memory directory"
    );
}

// ---------------------------------------------------------------------------------------
// The fold.

fn apply_one(given: &[Event], event: Event) -> Result<(), Contradiction> {
    let mut state = fold(given);
    let seq = state.head() + 1;
    let before = canonical::digest(&state);
    let outcome = state.apply(&envelope(seq, given_ts(seq), event));
    assert_eq!(
        canonical::digest(&state),
        before,
        "a refused event changes nothing"
    );
    outcome.map_err(|e| e.contradiction)
}

#[test]
fn the_fold_refuses_what_contradicts_memory() {
    let base = given![added("f1", "a", "b")];
    let err = apply_one(&base, added("f1", "a", "b")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "fact `f1` is already live in scope `shared`"
    );
    let err = apply_one(&base, deleted_in(&shared(), "f2", FactRemoval::Delete)).unwrap_err();
    assert_eq!(err.to_string(), "fact `f2` is not live in scope `shared`");
    let err = apply_one(&base, deleted_in(&ns("team"), "f1", FactRemoval::Delete)).unwrap_err();
    assert_eq!(err.to_string(), "fact `f1` is not live in scope `ns:team`");
    let bad_scope = MemoryFactAdded {
        scope: "global".into(),
        fact: fact("f2", "a", "b", "pattern"),
        client_id: None,
    };
    assert!(apply_one(&base, bad_scope.into()).is_err());
    let dup_load = MemoryScopeLoaded {
        scope: "shared".into(),
        path: "x.json".into(),
        facts: vec![
            fact("a", "s", "b", "pattern"),
            fact("a", "t", "c", "pattern"),
        ],
        client_id: None,
    };
    assert!(apply_one(&base, dup_load.into()).is_err());
    let persisted = MemoryScopePersisted {
        scope: "ns:".into(),
        path: "x.json".into(),
        count: 0,
        sha256: String::new(),
        client_id: None,
    };
    assert!(apply_one(&base, persisted.into()).is_err());
}

/// The golden-v2 log of car-events (every memory event kind) folds, twice to the same
/// digest, and leaves the memory its story tells.
#[test]
fn the_golden_v2_log_folds_deterministically() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../car-events/tests/fixtures/golden-v2.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let envelopes: Vec<_> = text
        .lines()
        .map(|line| {
            let (seq, ts, event) = serde_json::from_str::<EventJson>(line)
                .unwrap()
                .into_parts()
                .unwrap();
            envelope(seq, ts, event)
        })
        .collect();
    let fold_all = || {
        let mut state = State::new();
        for env in &envelopes {
            state.apply(env).unwrap();
        }
        state
    };
    let (a, b) = (fold_all(), fold_all());
    assert_eq!(canonical::digest(&a), canonical::digest(&b));
    assert_eq!(canonical::render_text(&a), canonical::render_text(&b));
    let memory = a.memory();
    let ids =
        |scope: &Scope| -> Vec<String> { memory.facts(scope).map(|f| f.fact_id.clone()).collect() };
    assert_eq!(ids(&shared()), ["ws-1", "deploy-freeze"]);
    assert_eq!(ids(&Scope::Agent("agent-researcher".into())), ["ws-1"]);
    assert_eq!(ids(&ns("team-alpha")), ["ws-1", "loaded-2"]);
    assert_eq!(
        ids(&Scope::Agent("agent-retired".into())),
        Vec::<String>::new()
    );
    let rendered = canonical::render(&a);
    assert_eq!(
        rendered["memory"]["shared"]["minted"],
        json!({"ws": 2, "mcp": 1})
    );
    assert_eq!(
        rendered["memory"]["shared"]["facts"][1]["body"],
        "No production deploys on Fridays after 15:00 UTC.\nHotfixes need two approvals."
    );
}

#[test]
fn a_state_without_memory_renders_as_before_memory_existed() {
    let text = canonical::render_text(&State::new());
    assert!(!text.contains("memory"), "{text}");
    let with = fold(&given![added("f1", "a", "b")]);
    assert!(canonical::render_text(&with).contains(r#""memory":{"shared":"#));
}

// ---------------------------------------------------------------------------------------
// memory.query

#[test]
fn query_ranks_by_bm25_and_leaves_out_facts_matching_nothing() {
    let state = fold(&given![
        added(
            "editor",
            "editor",
            "The user edits in Neovim with 4-space indents"
        ),
        added(
            "shell",
            "shell",
            "The user's login shell is zsh with oh-my-zsh"
        ),
        added(
            "deploy",
            "deploy policy",
            "No production deploys on Fridays"
        ),
        added(
            "deploy2",
            "staging",
            "Deploys go to staging first; production needs an approval"
        ),
    ]);
    let memory = state.memory();
    let hits = memory.query(&shared(), "Which editor does the user prefer?", 5);
    let ids: Vec<&str> = hits.iter().map(|h| h.fact.fact_id.as_str()).collect();
    assert_eq!(ids, ["editor", "shell"]);
    assert!(hits[0].score > hits[1].score);
    let hits = memory.query(&shared(), "production deploy", 5);
    let ids: Vec<&str> = hits.iter().map(|h| h.fact.fact_id.as_str()).collect();
    assert_eq!(ids, ["deploy", "deploy2"]);
    assert_eq!(memory.query(&shared(), "production deploy", 1).len(), 1);
    assert!(memory.query(&shared(), "kubernetes", 5).is_empty());
    assert!(memory.query(&shared(), "", 5).is_empty());
    assert!(memory.query(&ns("none"), "editor", 5).is_empty());
    // Only stop words: they rank.
    let hits = memory.query(&shared(), "the", 5);
    assert_eq!(hits.len(), 2);
    // The wire shape, confidence s/(s+1) to 6 decimals.
    let hit = memory.query(&shared(), "zsh", 1)[0];
    let confidence = hit.confidence();
    assert_eq!(
        confidence,
        (hit.score / (hit.score + 1.0) * 1e6).round() / 1e6
    );
    assert_eq!(
        hit.to_json(),
        json!({
            "fact_id": "shell", "subject": "shell",
            "body": "The user's login shell is zsh with oh-my-zsh", "kind": "pattern",
            "confidence": confidence, "tags": [], "source": "user",
        })
    );
    assert_eq!(
        serde_json::to_string(&hit.to_json()["confidence"]).unwrap(),
        "0.611639"
    );
}

#[test]
fn ties_go_to_the_newer_fact() {
    let state = fold(&given![
        added("b-old", "note", "alpha"),
        added("a-new", "note", "alpha"),
        added("c", "other", "beta"),
    ]);
    let hits = state.memory().query(&shared(), "alpha note", 5);
    let ids: Vec<&str> = hits.iter().map(|h| h.fact.fact_id.as_str()).collect();
    assert_eq!(ids, ["a-new", "b-old"]);
    assert_eq!(hits[0].score, hits[1].score);
}

// ---------------------------------------------------------------------------------------
// memory.build_context

fn context_state() -> State {
    fold(&given![
        added_in(
            &shared(),
            fact(
                "me",
                "who I am",
                "I am the release agent for car.",
                "identity"
            )
        ),
        added_in(
            &shared(),
            fact(
                "c1",
                "deploy window",
                "No production deploys on Fridays.",
                "constraint"
            )
        ),
        added_in(
            &shared(),
            fact(
                "c2",
                "code style",
                "Run cargo fmt before every commit.",
                "constraint"
            )
        ),
        added("p1", "editor", "The user edits in Neovim."),
        added(
            "p2",
            "deploys",
            "Deploys go through the\r\nstaging cluster first."
        ),
        added_in(
            &shared(),
            fact(
                "conv-1",
                "standup",
                "Standup moved to 09:30.",
                "conversation"
            )
        ),
        added_in(
            &shared(),
            fact("env-1", "ci", "CI runs on Ubuntu 24.04.", "environment")
        ),
    ])
}

#[test]
fn build_context_byte_for_byte() {
    let state = context_state();
    let context = state.memory().build_context(
        &shared(),
        "Friday deploys to staging on kubernetes? Kubernetes!",
        None,
    );
    assert_eq!(
        context,
        "## Identity\n\
         - [me] who I am: I am the release agent for car.\n\
         \n\
         ## Constraints\n\
         - [c2] code style: Run cargo fmt before every commit.\n\
         - [c1] deploy window: No production deploys on Fridays.\n\
         \n\
         ## Facts\n\
         - [p2] deploys: Deploys go through the staging cluster first.\n\
         \n\
         ## Conversation\n\
         - [conv-1] standup: Standup moved to 09:30.\n\
         \n\
         ## Environment\n\
         - [env-1] ci: CI runs on Ubuntu 24.04.\n\
         \n\
         ## Known Unknowns\n\
         - friday\n\
         - kubernetes\n\
         \n"
    );
    // Same facts, same params: same bytes (and a replay gives the same facts).
    let again = context_state();
    assert_eq!(
        again.memory().build_context(
            &shared(),
            "Friday deploys to staging on kubernetes? Kubernetes!",
            None
        ),
        context
    );
    assert_eq!(state.memory().build_context(&ns("none"), "x", None), "");
    assert_eq!(fold(&[]).memory().build_context(&shared(), "x", None), "");
}

#[test]
fn build_context_sections_facts_best_nearest_the_prompt_and_limits_by_kind() {
    let mut given = given![
        added("a", "alpha", "alpha alpha"),
        added("b", "alpha", "beta"),
        added("c", "gamma", "delta"),
    ];
    for i in 1..=25 {
        given.push(added_in(
            &shared(),
            fact(
                &format!("t{i}"),
                "turn",
                &format!("said {i}"),
                "conversation",
            ),
        ));
    }
    for i in 1..=7 {
        given.push(added_in(
            &shared(),
            fact(&format!("e{i}"), "env", &format!("v{i}"), "environment"),
        ));
    }
    let state = fold(&given);
    let context = state.memory().build_context(&shared(), "alpha", None);
    let mut expected =
        String::from("## Facts\n- [b] alpha: beta\n- [a] alpha: alpha alpha\n\n## Conversation\n");
    for i in 6..=25 {
        expected.push_str(&format!("- [t{i}] turn: said {i}\n"));
    }
    expected.push_str("\n## Environment\n");
    for i in 3..=7 {
        expected.push_str(&format!("- [e{i}] env: v{i}\n"));
    }
    expected.push('\n');
    assert_eq!(context, expected);
}

/// The tokens of a context: ceil((bytes + 1) / 4) per line, newline included.
fn cost(context: &str) -> u64 {
    context
        .split_terminator('\n')
        .map(|line| (line.len() as u64 + 1).div_ceil(4))
        .sum()
}

#[test]
fn over_budget_the_least_relevant_facts_go_first() {
    // Each fact line is 2799 bytes: 700 tokens with its newline. Budget (W = 1): 2000.
    let body = |tag: &str| format!("alpha {tag}{}", x(2785 - 6 - tag.len()));
    let state = fold(&given![
        added_in(&shared(), fact("me", "who", "I", "identity")),
        added("f1", "alpha", &body("one")),
        added("f2", "alpha", &body("two")),
        added("f3", "alpha", &body("six")),
    ]);
    let line = |id: &str, tag: &str| format!("- [{id}] alpha: {}", body(tag));
    assert_eq!(line("f1", "one").len(), 2799);
    let full = state
        .memory()
        .build_context(&shared(), "alpha", Some(1_000_000));
    assert_eq!(cost(&full), 8 + 4 + 3 * 700);
    assert_eq!(
        full,
        format!(
            "## Identity\n- [me] who: I\n\n## Facts\n{}\n{}\n{}\n\n",
            line("f1", "one"),
            line("f2", "two"),
            line("f3", "six")
        )
    );
    // 2112 > 2000: f1 (equal scores: the oldest is the least relevant) goes.
    let trimmed = state.memory().build_context(&shared(), "alpha", Some(1));
    assert_eq!(
        trimmed,
        format!(
            "## Identity\n- [me] who: I\n\n## Facts\n{}\n{}\n\n",
            line("f2", "two"),
            line("f3", "six")
        )
    );
    assert_eq!(cost(&trimmed), 1412);
}

/// One fact per section kind, each line `tokens` long with its newline.
fn one_per_section(tokens: usize) -> (State, impl Fn(&str) -> String) {
    let line_body = move |id: &str| {
        let len = tokens * 4 - 1 - format!("- [{id}] s: ").len();
        format!("zz {}", x(len - 3))
    };
    let mk = |id: &str, kind: &str| added_in(&shared(), fact(id, "s", &line_body(id), kind));
    let state = fold(&given![
        mk("i1", "identity"),
        mk("k1", "constraint"),
        mk("v1", "conversation"),
        mk("v2", "conversation"),
        mk("n1", "environment"),
    ]);
    (state, line_body)
}

#[test]
fn over_budget_sections_go_in_the_contract_s_order() {
    // Lines of 700 tokens; frames: Identity 4, Constraints 5, Conversation 5, Environment
    // 5, Known Unknowns 6 (+ its line, 4). Nothing matches the query: no Facts section.
    let (state, body) = one_per_section(700);
    let at = |budget: u64| {
        // The window giving exactly this budget.
        let window = budget * 5 / 2 + 4096;
        state
            .memory()
            .build_context(&shared(), "unknownword", Some(window))
    };
    let full = at(1_000_000);
    assert_eq!(cost(&full), 5 * 700 + 4 + 5 + 5 + 5 + 6 + 4);
    let headers = |context: &str| -> Vec<String> {
        context
            .lines()
            .filter(|l| l.starts_with("## "))
            .map(str::to_owned)
            .collect()
    };
    // 3529 > 3000: Conversation's oldest goes.
    let context = at(3000);
    assert_eq!(cost(&context), 2829);
    assert!(!context.contains("[v1]") && context.contains("[v2]"));
    assert_eq!(
        headers(&context),
        [
            "## Identity",
            "## Constraints",
            "## Conversation",
            "## Environment",
            "## Known Unknowns"
        ]
    );
    // 2000: then the newest conversation line (and its frame), then Environment.
    assert_eq!(
        at(2000),
        format!(
            "## Identity\n- [i1] s: {}\n\n## Constraints\n- [k1] s: {}\n\n\
             ## Known Unknowns\n- unknownword\n\n",
            body("i1"),
            body("k1")
        )
    );
    // Lines of 1100 tokens (total 5529): then Known Unknowns, then Constraints; Identity
    // stays.
    let (state, body) = one_per_section(1100);
    let at = |budget: u64| {
        let window = budget * 5 / 2 + 4096;
        state
            .memory()
            .build_context(&shared(), "unknownword", Some(window))
    };
    assert_eq!(
        at(3400),
        format!(
            "## Identity\n- [i1] s: {}\n\n## Constraints\n- [k1] s: {}\n\n\
             ## Environment\n- [n1] s: {}\n\n## Known Unknowns\n- unknownword\n\n",
            body("i1"),
            body("k1"),
            body("n1")
        )
    );
    assert_eq!(
        at(2212),
        format!(
            "## Identity\n- [i1] s: {}\n\n## Constraints\n- [k1] s: {}\n\n",
            body("i1"),
            body("k1")
        )
    );
    assert_eq!(
        at(2000),
        format!("## Identity\n- [i1] s: {}\n\n", body("i1"))
    );
}

#[test]
fn the_default_budget_holds_and_keeps_the_best_facts() {
    let given: Vec<Event> = (0..3000)
        .map(|i| {
            let words = if i % 7 == 0 { "rust cargo" } else { "rust" };
            added(
                &format!("f{i}"),
                &format!("fact {i}"),
                &format!("{words} build number {i} of the workspace"),
            )
        })
        .collect();
    let state = fold(&given);
    let context = state.memory().build_context(&shared(), "rust cargo", None);
    assert!(cost(&context) <= 8000);
    assert!(cost(&context) > 7900, "{}", cost(&context));
    let best = state.memory().query(&shared(), "rust cargo", 50);
    let last_line = context.lines().rfind(|l| l.starts_with("- [")).unwrap();
    assert!(last_line.starts_with(&format!("- [{}]", best[0].fact.fact_id)));
    for hit in &best {
        assert!(context.contains(&format!("- [{}] ", hit.fact.fact_id)));
    }
}

/// Deletes leave tombstones in the postings and holes in the slots; a list drops its
/// tombstones once they outnumber its live postings, the scope renumbers its slots once
/// holes outnumber live facts. Through a long churn (adds, deletes of old and new facts,
/// the scope emptied and refilled) the index stays the rebuilt one, within those bounds,
/// and ranks exactly as the scan does.
#[test]
fn churn_compacts_the_index_and_keeps_it_exact() {
    const WORDS: [&str; 6] = ["deploy", "rust", "cargo", "the", "staging", "zsh"];
    let text = |i: usize, n: usize| -> String {
        (0..n)
            .map(|j| WORDS[(i * 7 + j * j + i / 3) % WORDS.len()])
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut state = State::new();
    let mut live: Vec<usize> = Vec::new();
    let step = |state: &mut State, event: Event| {
        apply_events(state, &[event], given_ts).unwrap();
        let scope = state.memory().scope(&shared()).unwrap();
        assert_eq!(scope.check_invariants(), Ok(()));
        let rebuilt = ScopeMemory::from_facts(scope.facts());
        assert_eq!(scope.index_snapshot(), rebuilt.index_snapshot());
        let facts: Vec<_> = scope.facts().collect();
        for query in [
            "deploy",
            "rust cargo",
            "the",
            "staging zsh deploy",
            "nothing",
        ] {
            let key = |hits: Vec<car_projections::memory::Hit<'_>>| -> Vec<(String, u64)> {
                hits.iter()
                    .map(|h| (h.fact.fact_id.clone(), h.score.to_bits()))
                    .collect()
            };
            assert_eq!(
                key(scope.query(query, 7)),
                key(scan_query(&facts, query, 7)),
                "{query}"
            );
        }
    };
    for round in 0..3 {
        for i in 0..60 {
            let id = round * 100 + i;
            step(
                &mut state,
                added(&format!("f{id}"), &text(id, 2), &text(id + 1, 1 + id % 5)),
            );
            live.push(id);
            // Delete every third fact added, oldest and newest by turns.
            if i % 3 == 2 {
                let gone = if i % 2 == 0 {
                    live.remove(0)
                } else {
                    live.pop().unwrap()
                };
                step(
                    &mut state,
                    deleted_in(&shared(), &format!("f{gone}"), FactRemoval::Delete),
                );
            }
        }
        // Empty the scope, oldest first, then fill it again.
        for gone in live.drain(..) {
            step(
                &mut state,
                deleted_in(&shared(), &format!("f{gone}"), FactRemoval::Delete),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// By property: the index, replay.

/// One memory step of a random history; indices pick among what exists.
#[derive(Debug, Clone)]
enum Op {
    Add {
        scope: usize,
        id: Option<usize>,
        subject: Vec<usize>,
        body: Vec<usize>,
        kind: usize,
    },
    Delete {
        scope: usize,
        pick: usize,
    },
    Load {
        scope: usize,
        rows: Vec<(Vec<usize>, Vec<usize>)>,
    },
    Consolidate {
        scope: usize,
    },
}

const VOCAB: &[&str] = &[
    "deploy", "Deploys", "the", "staging", "Fridays", "rust", "cargo", "neovim", "zsh", "a", "é",
    "要約", "ci", "ubuntu", "24", "on", "not", "user", "prefers", "dark", "mode",
];
const KINDS: &[&str] = &[
    "pattern",
    "identity",
    "constraint",
    "conversation",
    "environment",
    "note",
];

fn scopes() -> [Scope; 3] {
    [shared(), ns("team"), Scope::Agent("a1".into())]
}

fn words(picks: &[usize]) -> String {
    let text: Vec<&str> = picks.iter().map(|i| VOCAB[i % VOCAB.len()]).collect();
    let text = text.join(" ");
    if text.is_empty() { "-".into() } else { text }
}

fn op() -> impl Strategy<Value = Op> {
    let text = || prop::collection::vec(0..VOCAB.len(), 0..6);
    prop_oneof![
        6 => (0..3usize, prop::option::of(0..12usize), text(), text(), 0..KINDS.len())
            .prop_map(|(scope, id, subject, body, kind)| Op::Add { scope, id, subject, body, kind }),
        3 => (0..3usize, any::<usize>()).prop_map(|(scope, pick)| Op::Delete { scope, pick }),
        1 => (0..3usize, prop::collection::vec((text(), text()), 0..5))
            .prop_map(|(scope, rows)| Op::Load { scope, rows }),
        1 => (0..3usize).prop_map(|scope| Op::Consolidate { scope }),
    ]
}

/// Decides every op against the live state and applies what comes out.
fn run(ops: &[Op]) -> (State, Vec<Event>) {
    let mut state = State::new();
    let mut log = Vec::new();
    for op in ops {
        let command = match op {
            Op::Add {
                scope,
                id,
                subject,
                body,
                kind,
            } => Command::MemoryAddFact(AddFact {
                scope: scopes()[*scope].clone(),
                fact_id: id.map(|i| format!("f{i}")),
                kind: Some(KINDS[*kind].into()),
                ..add(&words(subject), &words(body))
            }),
            Op::Delete { scope, pick } => {
                let scope = scopes()[*scope].clone();
                let live: Vec<String> = state
                    .memory()
                    .facts(&scope)
                    .map(|f| f.fact_id.clone())
                    .collect();
                if live.is_empty() {
                    continue;
                }
                Command::MemoryDelete(DeleteFact {
                    scope,
                    client_id: None,
                    fact_id: live[pick % live.len()].clone(),
                })
            }
            Op::Load { scope, rows } => {
                let rows: Vec<_> = rows
                    .iter()
                    .map(|(s, b)| json!({"subject": words(s), "body": words(b)}))
                    .collect();
                let bytes = serde_json::to_vec(&rows).unwrap();
                Command::MemoryLoad(LoadScope {
                    scope: scopes()[*scope].clone(),
                    client_id: None,
                    path: "p.json".into(),
                    facts: parse_load_file("p.json", &bytes, 100).unwrap(),
                })
            }
            Op::Consolidate { scope } => consolidate(scopes()[*scope].clone()),
        };
        let Ok(decided) = car_projections::decide(&state, &command) else {
            continue;
        };
        apply_events(&mut state, &decided, given_ts).unwrap();
        log.extend(decided);
    }
    (state, log)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// After any history the index of every scope equals one rebuilt from its live facts,
    /// and ranks exactly (ids and score bits) as the reference scan does.
    #[test]
    fn the_incremental_index_is_the_rebuilt_index(
        ops in prop::collection::vec(op(), 1..60),
        queries in prop::collection::vec(prop::collection::vec(0..VOCAB.len(), 0..4), 1..5),
    ) {
        let (state, _) = run(&ops);
        for scope in scopes() {
            let Some(live) = state.memory().scope(&scope) else { continue };
            let rebuilt = ScopeMemory::from_facts(live.facts());
            prop_assert_eq!(live.index_snapshot(), rebuilt.index_snapshot());
            prop_assert_eq!(live.check_invariants(), Ok(()));
            let facts: Vec<_> = live.facts().collect();
            for q in &queries {
                let query = words(q);
                let indexed = live.query(&query, 10);
                let scanned = scan_query(&facts, &query, 10);
                let key = |hits: &[car_projections::memory::Hit<'_>]| -> Vec<(String, u64)> {
                    hits.iter().map(|h| (h.fact.fact_id.clone(), h.score.to_bits())).collect()
                };
                prop_assert_eq!(key(&indexed), key(&scanned), "query {:?}", query);
                prop_assert_eq!(
                    live.query(&query, 10).len(),
                    rebuilt.query(&query, 10).len()
                );
                prop_assert_eq!(
                    crate::memory::context_of(live, &query),
                    crate::memory::context_of(&rebuilt, &query)
                );
            }
        }
    }

    /// Replaying the decided log twice gives the same digest as the live state, and the
    /// same contexts.
    #[test]
    fn replay_is_deterministic(ops in prop::collection::vec(op(), 1..40)) {
        let (live, log) = run(&ops);
        let replay = || {
            let mut state = State::new();
            apply_events(&mut state, &log, given_ts).unwrap();
            state
        };
        let (a, b) = (replay(), replay());
        prop_assert_eq!(canonical::digest(&a), canonical::digest(&live));
        prop_assert_eq!(canonical::digest(&a), canonical::digest(&b));
        for scope in scopes() {
            prop_assert_eq!(
                a.memory().build_context(&scope, "deploy rust the unknown", None),
                live.memory().build_context(&scope, "deploy rust the unknown", None)
            );
        }
    }
}

fn context_of(scope: &ScopeMemory, query: &str) -> String {
    car_projections::memory::build_context(scope, query, Some(1))
}
