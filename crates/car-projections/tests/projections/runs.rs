//! Decisions about runs (PROTOCOL.md §3.2–§3.4): `runs.start` (agent resolution,
//! idempotency, roles), `runs.record_turns` (index stamping, batch and run limits, size
//! rules, ownership) and `runs.complete` (first terminal wins, ownership, outcome shape).
//!
//! Expected turns are written out from the contract's rules (the client's fields in their
//! order, `index`/`record`/`recorded_at` dropped, `verifier_verdict`/`policy_rejected`
//! defaulted, strings cut to 16 KiB ending `…[truncated]`, large fields replaced past
//! 256 KiB), not computed with the crate's own constants.

use car_events::event::{IncompleteReason, RunEnded, RunStarted, Termination, TurnsRecorded};
use car_events::{Event, JsonText};
use car_projections::decide::{Dropped, StartRun};
use car_projections::{Actor, Command, Refusal};
use rstest::rstest;
use serde_json::{Value, json};

use crate::gwt::{Then, When, check, event, invalid, nothing, record_turns, refused};
use crate::support::*;

fn start(actor: Actor, agent: Option<&str>, name: Option<&str>, key: Option<&str>) -> Command {
    Command::StartRun(StartRun {
        agent_id: agent.map(Into::into),
        agent_name: name.map(Into::into),
        idempotency_key: key.map(Into::into),
        ..start_run(actor)
    })
}

fn started(run: &str, agent: &str, client: &str, key: Option<&str>) -> RunStarted {
    RunStarted {
        run_id: run.into(),
        agent_id: agent.into(),
        client_id: Some(client.into()),
        intent: INTENT.into(),
        outcome_description: None,
        idempotency_key: key.map(Into::into),
    }
}

#[rstest]
#[case::a_client_names_the_agent(
    given![client_session("c1")],
    start(Actor::client("c1"), Some("a1"), None, None),
    event(new_run_started("a1", "c1")),
)]
#[case::the_bound_agent_is_used(
    given![agent_session("c1", "a1")],
    start(Actor::agent("c1", "a1"), None, None, None),
    event(new_run_started("a1", "c1")),
)]
#[case::the_bound_agent_wins_over_an_agent_name(
    given![agent_session("c1", "a1")],
    start(Actor::agent("c1", "a1"), None, Some("Other Bot"), None),
    event(new_run_started("a1", "c1")),
)]
#[case::the_bound_agent_named_again_is_fine(
    given![agent_session("c1", "a1")],
    start(Actor::agent("c1", "a1"), Some("a1"), None, None),
    event(new_run_started("a1", "c1")),
)]
#[case::another_agent_id_on_an_agent_session_is_invalid(
    given![agent_session("c1", "a1")],
    start(Actor::agent("c1", "a1"), Some("a2"), None, None),
    invalid("agent_id"),
)]
#[case::the_agent_id_wins_over_the_agent_name(
    given![client_session("c1")],
    start(Actor::client("c1"), Some("a1"), Some("Some Bot"), None),
    event(new_run_started("a1", "c1")),
)]
#[case::an_agent_name_becomes_a_slug(
    given![client_session("c1")],
    start(Actor::client("c1"), None, Some("My Agent"), None),
    event(new_run_started("name:my-agent", "c1")),
)]
#[case::punctuation_and_spaces_collapse_to_one_dash(
    given![client_session("c1")],
    start(Actor::client("c1"), None, Some("  Claude   Code!! v2 "), None),
    event(new_run_started("name:claude-code-v2", "c1")),
)]
#[case::underscores_and_dashes_collapse_too(
    given![client_session("c1")],
    start(Actor::client("c1"), None, Some("a__b--c"), None),
    event(new_run_started("name:a-b-c", "c1")),
)]
#[case::leading_and_trailing_symbols_are_dropped(
    given![client_session("c1")],
    start(Actor::client("c1"), None, Some("🚀 Rocket 🚀"), None),
    event(new_run_started("name:rocket", "c1")),
)]
#[case::letters_beyond_ascii_are_letters(
    given![client_session("c1")],
    start(Actor::client("c1"), None, Some("ÉLAN Vital"), None),
    event(new_run_started("name:élan-vital", "c1")),
)]
#[case::a_blank_agent_id_falls_back_to_the_name(
    given![client_session("c1")],
    start(Actor::client("c1"), Some("  "), Some("x"), None),
    event(new_run_started("name:x", "c1")),
)]
#[case::a_name_with_nothing_to_slug_is_invalid(
    given![client_session("c1")],
    start(Actor::client("c1"), None, Some("!!! ???"), None),
    invalid("agent_id"),
)]
#[case::a_blank_name_is_invalid(
    given![client_session("c1")],
    start(Actor::client("c1"), None, Some("   "), None),
    invalid("agent_id"),
)]
#[case::no_agent_at_all_is_invalid(
    given![client_session("c1")],
    start(Actor::client("c1"), None, None, None),
    invalid("agent_id"),
)]
#[case::the_outcome_description_is_kept(
    given![client_session("c1")],
    Command::StartRun(StartRun {
        agent_id: Some("a1".into()),
        outcome_description: Some("tests pass".into()),
        ..start_run(Actor::client("c1"))
    }),
    event(RunStarted { outcome_description: Some("tests pass".into()), ..started(NEW_RUN, "a1", "c1", None) }),
)]
#[case::an_idempotency_key_becomes_the_run_id(
    given![client_session("c1")],
    start(Actor::client("c1"), Some("a1"), None, Some("k1")),
    event(started("k1", "a1", "c1", Some("k1"))),
)]
#[case::a_blank_idempotency_key_is_no_key(
    given![client_session("c1")],
    start(Actor::client("c1"), Some("a1"), None, Some(" ")),
    event(started(NEW_RUN, "a1", "c1", None)),
)]
#[case::a_repeated_key_returns_the_live_run_and_records_nothing(
    given![client_session("c1"), keyed_run_started("k1", "a1", "c1")],
    start(Actor::client("c1"), Some("a1"), None, Some("k1")),
    nothing(),
)]
#[case::a_repeated_key_returns_the_ended_run_and_records_nothing(
    given![client_session("c1"), keyed_run_started("k1", "a1", "c1"), turns_recorded("k1", 0, 2), run_completed("k1", "a1")],
    start(Actor::client("c1"), Some("a1"), None, Some("k1")),
    nothing(),
)]
#[case::an_agent_session_owning_the_run_repeats_the_key(
    given![client_session("c1"), agent_session("c2", "a1"), keyed_run_started("k1", "a1", "c1")],
    start(Actor::agent("c2", "a1"), None, None, Some("k1")),
    nothing(),
)]
#[case::a_retry_from_a_new_agent_session_gets_the_run_back(
    given![agent_session("c1", "a1"), keyed_run_started("k1", "a1", "c1"), agent_closed("c1", "a1"), agent_session("c2", "a1")],
    start(Actor::agent("c2", "a1"), None, None, Some("k1")),
    nothing(),
)]
// Regression (issue 9, item 5): another client's key revealed that client's run (its id
// and agent_id). A caller that may not read the run learns nothing, not even whether
// the key is taken, and nothing is recorded.
#[case::another_clients_key_is_not_available(
    given![client_session("c1"), client_session("c2"), keyed_run_started("k1", "a1", "c1")],
    start(Actor::client("c2"), Some("a1"), None, Some("k1")),
    refused(Refusal::KeyUnavailable),
)]
#[case::another_agents_key_is_not_available(
    given![agent_session("c1", "a1"), agent_session("c2", "a2"), keyed_run_started("k1", "a1", "c1")],
    start(Actor::agent("c2", "a2"), None, None, Some("k1")),
    refused(Refusal::KeyUnavailable),
)]
#[case::an_evicted_key_stays_taken(
    given![agent_session("c1", "a1"), keyed_run_started("k1", "a1", "c1"), run_completed("k1", "a1"), run_evicted("k1", "a1")],
    start(Actor::agent("c1", "a1"), None, None, Some("k1")),
    nothing(),
)]
#[case::an_evicted_key_stays_taken_after_a_restart(
    given![agent_session("c1", "a1"), keyed_run_started("k1", "a1", "c1"), run_completed("k1", "a1"), run_evicted("k1", "a1"), agent_closed("c1", "a1"), agent_session("c2", "a1")],
    start(Actor::agent("c2", "a1"), None, None, Some("k1")),
    nothing(),
)]
// An evicted run keeps only its agent: a session not bound to it cannot be shown to be
// a reader, so the key is not available to it.
#[case::an_evicted_key_is_not_available_to_a_plain_client(
    given![client_session("c1"), keyed_run_started("k1", "a1", "c1"), run_completed("k1", "a1"), run_evicted("k1", "a1"), session_closed("c1"), client_session("c2")],
    start(Actor::client("c2"), Some("a1"), None, Some("k1")),
    refused(Refusal::KeyUnavailable),
)]
#[case::a_host_cannot_start_runs(
    given![host_session("h1")],
    start(Actor::host("h1"), Some("a1"), None, None),
    refused(Refusal::HostCannotStartRuns),
)]
#[case::a_host_cannot_start_runs_even_with_a_known_key(
    given![client_session("c1"), host_session("h1"), keyed_run_started("k1", "a1", "c1")],
    start(Actor::host("h1"), Some("a1"), None, Some("k1")),
    refused(Refusal::HostCannotStartRuns),
)]
#[case::with_auth_disabled_a_host_may_start_runs(
    given![opened_unrestricted("h1")],
    start(Actor::host("h1").unrestricted(), Some("a1"), None, None),
    event(new_run_started("a1", "h1")),
)]
fn runs_start(#[case] given: Vec<Event>, #[case] when: Command, #[case] then: Then) {
    check(given, when, then);
}

/// A turn as stored: `fields` then the defaulted verdicts.
fn stored(fields: Value) -> JsonText {
    let Value::Object(mut map) = fields else {
        panic!("a turn is an object")
    };
    map.entry("verifier_verdict").or_insert(json!("not_run"));
    map.entry("policy_rejected").or_insert(json!(false));
    JsonText::from_value(&Value::Object(map))
}

fn recorded(run: &str, base: u32, turns: Vec<JsonText>) -> TurnsRecorded {
    TurnsRecorded {
        run_id: run.into(),
        base_index: base,
        turns,
    }
}

fn plain(n: usize) -> Vec<Value> {
    (0..n).map(|i| json!({"prompt": format!("p{i}")})).collect()
}

fn plain_stored(n: usize) -> Vec<JsonText> {
    (0..n)
        .map(|i| stored(json!({"prompt": format!("p{i}")})))
        .collect()
}

/// A run `r1` of agent `a1` started by client `c1`, with `turns` turns.
fn c1_run(turns: u32) -> Vec<Event> {
    given![
        client_session("c1"),
        run_started("r1", "a1", "c1"),
        turns_up_to("r1", turns)
    ]
}

/// The contract's cut: 16 KiB in all, ending with `…[truncated]`.
const SUFFIX: &str = "…[truncated]";
const KIB16: usize = 16 * 1024;
const REPLACED: &str = "…[truncated: turn exceeded 256 KiB]";

/// Twenty strings of 16 KiB: 320 KiB of JSON even after cutting.
fn twenty_full_strings() -> Value {
    json!(vec!["y".repeat(KIB16); 20])
}

#[rstest]
#[case::the_first_batch_starts_at_index_0(
    c1_run(0),
    record_turns(Actor::client("c1"), "r1", plain(2)),
    event(recorded("r1", 0, plain_stored(2)))
)]
#[case::indices_continue_from_the_turn_count_and_client_indices_are_ignored(
    c1_run(3),
    record_turns(Actor::client("c1"), "r1", vec![
        json!({"index": 99, "prompt": "a"}),
        json!({"prompt": "b", "index": 0, "record": "x", "recorded_at": "yesterday", "tool": "t"}),
    ]),
    event(recorded("r1", 3, vec![stored(json!({"prompt": "a"})), stored(json!({"prompt": "b", "tool": "t"}))])),
)]
#[case::client_fields_are_kept_as_sent(
    c1_run(0),
    record_turns(Actor::client("c1"), "r1", vec![json!({
        "tool": "fs.read", "parameters": {"z": 1, "a": [null, 2.5]}, "output": "text",
        "verifier_verdict": "passed", "policy_rejected": true, "extra": {"k": "v"},
    })]),
    event(recorded("r1", 0, vec![JsonText::parse(
        r#"{"tool":"fs.read","parameters":{"z":1,"a":[null,2.5]},"output":"text","verifier_verdict":"passed","policy_rejected":true,"extra":{"k":"v"}}"#,
    ).unwrap()])),
)]
#[case::a_batch_of_256_is_accepted(
    c1_run(0),
    record_turns(Actor::client("c1"), "r1", plain(256)),
    event(recorded("r1", 0, plain_stored(256)))
)]
#[case::a_batch_of_257_is_invalid(
    c1_run(0),
    record_turns(Actor::client("c1"), "r1", plain(257)),
    invalid("turns")
)]
#[case::an_empty_batch_is_invalid(c1_run(0), record_turns(Actor::client("c1"), "r1", vec![]), invalid("turns"))]
#[case::a_turn_that_is_not_an_object_is_invalid(
    c1_run(0),
    record_turns(Actor::client("c1"), "r1", vec![json!({"prompt": "ok"}), json!("text")]),
    invalid("turns[1]"),
)]
#[case::a_batch_reaching_the_ceiling_exactly_is_accepted(
    c1_run(1998),
    record_turns(Actor::client("c1"), "r1", plain(2)),
    event(recorded("r1", 1998, plain_stored(2)))
)]
#[case::a_batch_passing_the_ceiling_is_refused_whole(
    c1_run(1999),
    record_turns(Actor::client("c1"), "r1", plain(2)),
    refused(Refusal::Dropped(Dropped::RunTurnLimit))
)]
#[case::the_last_turn_fits(
    c1_run(1999),
    record_turns(Actor::client("c1"), "r1", plain(1)),
    event(recorded("r1", 1999, plain_stored(1)))
)]
#[case::a_full_run_takes_no_more(
    c1_run(2000),
    record_turns(Actor::client("c1"), "r1", plain(1)),
    refused(Refusal::Dropped(Dropped::RunTurnLimit))
)]
#[case::long_strings_are_cut_to_16_kib_at_any_depth(
    c1_run(0),
    record_turns(Actor::client("c1"), "r1", vec![json!({
        "prompt": "a".repeat(20_000), "output": {"log": ["b".repeat(KIB16 + 1)]}, "tool": "t",
    })]),
    event(recorded("r1", 0, vec![stored(json!({
        "prompt": format!("{}{SUFFIX}", "a".repeat(KIB16 - SUFFIX.len())),
        "output": {"log": [format!("{}{SUFFIX}", "b".repeat(KIB16 - SUFFIX.len()))]},
        "tool": "t",
    }))])),
)]
#[case::multibyte_strings_are_cut_at_a_character_boundary(
    c1_run(0),
    // 10 000 × "é" is 20 000 bytes; 16 384 − 14 bytes of suffix leave 16 370 = 8 185 × 2.
    record_turns(Actor::client("c1"), "r1", vec![json!({"prompt": "é".repeat(10_000)})]),
    event(recorded("r1", 0, vec![stored(json!({"prompt": format!("{}{SUFFIX}", "é".repeat(8_185))}))])),
)]
#[case::a_string_of_exactly_16_kib_is_kept(
    c1_run(0),
    record_turns(Actor::client("c1"), "r1", vec![json!({"prompt": "c".repeat(KIB16)})]),
    event(recorded("r1", 0, vec![stored(json!({"prompt": "c".repeat(KIB16)}))])),
)]
#[case::a_turn_over_256_kib_loses_prompt_parameters_and_output(
    c1_run(0),
    record_turns(Actor::client("c1"), "r1", vec![json!({"prompt": "p", "tool": "t", "parameters": twenty_full_strings()})]),
    event(recorded("r1", 0, vec![stored(json!({"prompt": REPLACED, "tool": "t", "parameters": REPLACED}))])),
)]
#[case::a_turn_too_large_elsewhere_is_refused(
    c1_run(0),
    record_turns(Actor::client("c1"), "r1", vec![json!({"tool": "t", "notes": twenty_full_strings()})]),
    refused(Refusal::Dropped(Dropped::TurnTooLarge)),
)]
#[case::one_turn_too_large_refuses_the_whole_batch(
    c1_run(0),
    record_turns(Actor::client("c1"), "r1", vec![json!({"prompt": "fine"}), json!({"notes": twenty_full_strings()})]),
    refused(Refusal::Dropped(Dropped::TurnTooLarge)),
)]
#[case::the_run_is_checked_before_the_turn_sizes(
    c1_run(0),
    record_turns(Actor::client("c1"), "nope", vec![json!({"notes": twenty_full_strings()})]),
    refused(Refusal::Dropped(Dropped::RunNotFound)),
)]
#[case::a_stranger_finds_no_run(
    given![c1_run(0), client_session("c2")],
    record_turns(Actor::client("c2"), "r1", plain(1)),
    refused(Refusal::Dropped(Dropped::RunNotFound)),
)]
#[case::a_host_cannot_write_turns(
    given![c1_run(0), host_session("h1")],
    record_turns(Actor::host("h1"), "r1", plain(1)),
    refused(Refusal::Dropped(Dropped::RunNotFound)),
)]
#[case::an_agent_session_bound_to_the_runs_agent_may_write(
    given![c1_run(1), agent_session("c2", "a1")],
    record_turns(Actor::agent("c2", "a1"), "r1", plain(1)),
    event(recorded("r1", 1, plain_stored(1))),
)]
#[case::an_agent_session_bound_to_another_agent_may_not(
    given![c1_run(0), agent_session("c2", "a2")],
    record_turns(Actor::agent("c2", "a2"), "r1", plain(1)),
    refused(Refusal::Dropped(Dropped::RunNotFound)),
)]
#[case::the_starter_may_write_after_an_agent_session_left(
    given![c1_run(0), agent_session("c2", "a1"), agent_closed("c2", "a1")],
    record_turns(Actor::client("c1"), "r1", plain(1)),
    event(recorded("r1", 0, plain_stored(1))),
)]
#[case::an_ended_run_is_terminal(
    given![c1_run(2), run_completed("r1", "a1")],
    record_turns(Actor::client("c1"), "r1", plain(1)),
    refused(Refusal::Dropped(Dropped::RunTerminal)),
)]
#[case::an_incomplete_run_is_terminal(
    given![c1_run(0), run_incomplete("r1", "a1", IncompleteReason::Disconnected)],
    record_turns(Actor::client("c1"), "r1", plain(1)),
    refused(Refusal::Dropped(Dropped::RunTerminal)),
)]
#[case::termination_is_checked_before_the_ceiling(
    given![c1_run(2000), run_completed("r1", "a1")],
    record_turns(Actor::client("c1"), "r1", plain(1)),
    refused(Refusal::Dropped(Dropped::RunTerminal)),
)]
#[case::an_unknown_run_is_not_found(
    c1_run(0),
    record_turns(Actor::client("c1"), "nope", plain(1)),
    refused(Refusal::Dropped(Dropped::RunNotFound))
)]
#[case::an_evicted_run_is_not_found(
    given![c1_run(1), run_completed("r1", "a1"), run_evicted("r1", "a1")],
    record_turns(Actor::client("c1"), "r1", plain(1)),
    refused(Refusal::Dropped(Dropped::RunNotFound)),
)]
fn runs_record_turns(#[case] given: Vec<Event>, #[case] when: When, #[case] then: Then) {
    check(given, when, then);
}

fn ended_with(run: &str, outcome: &str) -> RunEnded {
    RunEnded {
        run_id: run.into(),
        agent_id: "a1".into(),
        termination: Termination::Outcome {
            outcome: JsonText::parse(outcome).expect("valid JSON"),
        },
    }
}

#[rstest]
#[case::the_owner_completes_with_the_outcome_as_sent(
    c1_run(1),
    complete_run(Actor::client("c1"), "r1", json!({"status": "success", "summary": "done", "metrics": {"turns": 1}})),
    event(ended_with("r1", r#"{"status":"success","summary":"done","metrics":{"turns":1}}"#)),
)]
#[case::an_agent_session_bound_to_the_runs_agent_may_complete(
    given![c1_run(0), agent_session("c2", "a1")],
    complete_run(Actor::agent("c2", "a1"), "r1", json!({"status": "failure"})),
    event(ended_with("r1", r#"{"status":"failure"}"#)),
)]
#[case::a_second_completion_is_refused(
    given![c1_run(0), run_completed("r1", "a1")],
    complete_run(Actor::client("c1"), "r1", json!({"status": "success"})),
    refused(Refusal::RunTerminal("r1".into())),
)]
#[case::a_completion_after_an_incomplete_end_is_refused(
    given![c1_run(0), run_incomplete("r1", "a1", IncompleteReason::DaemonRestart)],
    complete_run(Actor::client("c1"), "r1", json!({"status": "success"})),
    refused(Refusal::RunTerminal("r1".into())),
)]
#[case::a_stranger_finds_no_run(
    given![c1_run(0), client_session("c2")],
    complete_run(Actor::client("c2"), "r1", json!({"status": "success"})),
    refused(Refusal::UnknownRun("r1".into())),
)]
#[case::a_stranger_learns_nothing_of_an_ended_run(
    given![c1_run(0), run_completed("r1", "a1"), client_session("c2")],
    complete_run(Actor::client("c2"), "r1", json!({"status": "success"})),
    refused(Refusal::UnknownRun("r1".into())),
)]
#[case::a_host_cannot_complete(
    given![c1_run(0), host_session("h1")],
    complete_run(Actor::host("h1"), "r1", json!({"status": "success"})),
    refused(Refusal::UnknownRun("r1".into())),
)]
#[case::an_unknown_run(
    c1_run(0),
    complete_run(Actor::client("c1"), "nope", json!({"status": "success"})),
    refused(Refusal::UnknownRun("nope".into())),
)]
#[case::an_evicted_run(
    given![c1_run(0), run_completed("r1", "a1"), run_evicted("r1", "a1")],
    complete_run(Actor::client("c1"), "r1", json!({"status": "success"})),
    refused(Refusal::UnknownRun("r1".into())),
)]
#[case::an_outcome_without_status_is_invalid(
    c1_run(0),
    complete_run(Actor::client("c1"), "r1", json!({"summary": "done"})),
    invalid("outcome.status"),
)]
#[case::an_empty_status_is_invalid(
    c1_run(0),
    complete_run(Actor::client("c1"), "r1", json!({"status": " "})),
    invalid("outcome.status"),
)]
#[case::a_status_that_is_not_a_string_is_invalid(
    c1_run(0),
    complete_run(Actor::client("c1"), "r1", json!({"status": 1})),
    invalid("outcome.status"),
)]
#[case::an_outcome_that_is_not_an_object_is_invalid(
    c1_run(0),
    complete_run(Actor::client("c1"), "r1", json!("success")),
    invalid("outcome"),
)]
fn runs_complete(#[case] given: Vec<Event>, #[case] when: Command, #[case] then: Then) {
    check(given, when, then);
}
