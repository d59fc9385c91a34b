//! Registered agents (PROTOCOL.md §12): every §12.1 validation as a refusal, the upsert /
//! start / stop / remove decisions and their roles, the fold's contradictions, start-up
//! adoption, and the supervisor's pure restart rule with made-up times: backoff doubling
//! and its cap, the 60 s uptime reset, `max_restarts` → `errored`, the restart policies.

use car_events::event::{
    AgentBackoffScheduled, AgentExit, AgentProcessExited, AgentProcessSpawned, AgentRemoved,
    AgentStartRequested, AgentStatus, AgentStatusChanged, AgentStopRequested, AgentTokenRotated,
    AgentUpserted,
};
use car_events::{Event, JsonText};
use car_projections::agents::decide::{RemoveAgent, StartAgent, StopAgent, UpsertAgent};
use car_projections::agents::supervise::{AfterExit, after_exit, backoff_delay};
use car_projections::agents::{AgentCommand, AgentRefusal, SpecFacts, spec};
use car_projections::{Actor, Command, Refusal, State, recovery};
use chrono::TimeDelta;
use rstest::rstest;
use serde_json::{Value, json};

use crate::gwt::{check, events, nothing, refused};
use crate::support::{fold, given_ts};

const ID: &str = "indexer";
const HASH: &str = "aa";
const HASH2: &str = "bb";

fn host() -> Actor {
    Actor::host("h1")
}

fn ok_facts() -> SpecFacts {
    SpecFacts {
        command: Ok(()),
        cwd: Ok(()),
        interpreter: Ok(None),
    }
}

fn params() -> Value {
    json!({"id": ID, "name": "Indexer", "command": "/usr/bin/indexer"})
}

fn upsert_with(actor: Actor, params: Value, facts: SpecFacts) -> Command {
    Command::Agent(AgentCommand::Upsert(UpsertAgent {
        actor,
        params,
        facts,
        fresh_token_sha256: HASH2.into(),
    }))
}

fn stored_spec(params: &Value) -> JsonText {
    let spec = spec::validate(params, &ok_facts()).unwrap();
    JsonText::encode(&spec).unwrap()
}

fn upserted(params: &Value, hash: Option<&str>) -> Event {
    Event::from(AgentUpserted {
        agent_id: ID.into(),
        spec: stored_spec(params),
        token_sha256: hash.map(str::to_owned),
        by: "host".into(),
    })
}

fn registered_with(params: Value) -> Vec<Event> {
    vec![upserted(&params, Some(HASH))]
}

fn registered() -> Vec<Event> {
    registered_with(params())
}

fn status(status: AgentStatus, reason: &str) -> Event {
    Event::from(AgentStatusChanged {
        agent_id: ID.into(),
        status,
        reason: reason.into(),
    })
}

fn running(pid: u32) -> Vec<Event> {
    vec![
        Event::from(AgentStartRequested {
            agent_id: ID.into(),
            by: "host".into(),
        }),
        status(AgentStatus::Starting, "start requested"),
        Event::from(AgentProcessSpawned {
            agent_id: ID.into(),
            pid,
        }),
        status(AgentStatus::Running, "spawned"),
    ]
}

fn agent_cmd(c: AgentCommand) -> Command {
    Command::Agent(c)
}

// ---------------------------------------------------------------------------------------
// §12.1 validations.

#[rstest]
#[case::no_id(json!({"name": "n", "command": "/usr/bin/x"}), "id", "is required")]
#[case::bad_id(json!({"id": "a/b", "name": "n", "command": "/usr/bin/x"}), "id", "must match")]
#[case::dot_id(json!({"id": "..", "name": "n", "command": "/usr/bin/x"}), "id", "must match")]
#[case::long_id(json!({"id": "a".repeat(129), "name": "n", "command": "/usr/bin/x"}), "id", "must match")]
#[case::empty_name(json!({"id": "a", "name": "", "command": "/usr/bin/x"}), "name", "1-128")]
#[case::long_name(json!({"id": "a", "name": "n".repeat(129), "command": "/usr/bin/x"}), "name", "1-128")]
#[case::relative(json!({"id": "a", "name": "n", "command": "bin/x"}), "command", "absolute")]
#[case::tmp(json!({"id": "a", "name": "n", "command": "/tmp/x"}), "command", "/tmp")]
#[case::var_tmp(json!({"id": "a", "name": "n", "command": "/var/tmp/x"}), "command", "/var/tmp")]
#[case::shm(json!({"id": "a", "name": "n", "command": "/dev/shm/x"}), "command", "/dev/shm")]
#[case::dotdot(json!({"id": "a", "name": "n", "command": "/usr/../tmp/x"}), "command", "'..'")]
#[case::args(json!({"id": "a", "name": "n", "command": "/usr/bin/x", "args": [1]}), "args", "strings")]
#[case::cwd(json!({"id": "a", "name": "n", "command": "/usr/bin/x", "cwd": "rel"}), "cwd", "absolute")]
#[case::env_reserved(json!({"id": "a", "name": "n", "command": "/usr/bin/x", "env": {"CAR_AGENT_TOKEN": "x"}}), "env", "CAR_AGENT_TOKEN")]
#[case::env_auth(json!({"id": "a", "name": "n", "command": "/usr/bin/x", "env": {"CAR_AUTH_TOKEN": "x"}}), "env", "CAR_AUTH_TOKEN")]
#[case::env_value(json!({"id": "a", "name": "n", "command": "/usr/bin/x", "env": {"A": 1}}), "env", "string")]
#[case::env_name(json!({"id": "a", "name": "n", "command": "/usr/bin/x", "env": {"A=B": "1"}}), "env", "name")]
#[case::restart(json!({"id": "a", "name": "n", "command": "/usr/bin/x", "restart": "sometimes"}), "restart", "never")]
#[case::max_restarts(json!({"id": "a", "name": "n", "command": "/usr/bin/x", "max_restarts": 101}), "max_restarts", "0-100")]
#[case::backoff_low(json!({"id": "a", "name": "n", "command": "/usr/bin/x", "backoff_secs": 0.05}), "backoff_secs", "0.1-60")]
#[case::backoff_high(json!({"id": "a", "name": "n", "command": "/usr/bin/x", "backoff_secs": 61}), "backoff_secs", "0.1-60")]
#[case::auto_start(json!({"id": "a", "name": "n", "command": "/usr/bin/x", "auto_start": "yes"}), "auto_start", "boolean")]
#[case::allowlist(json!({"id": "a", "name": "n", "command": "/usr/bin/x", "method_allowlist": []}), "method_allowlist", "not supported")]
#[case::interpreter_path(json!({"id": "a", "name": "n", "command": "x", "interpreter": "/usr/bin/python3"}), "interpreter", "bare")]
#[case::rotate(json!({"id": "a", "name": "n", "command": "/usr/bin/x", "rotate_token": 1}), "rotate_token", "boolean")]
fn upsert_refuses_each_breach_of_12_1(
    #[case] params: Value,
    #[case] field: &str,
    #[case] reason: &str,
) {
    let outcome = car_projections::decide(&State::new(), &upsert_with(host(), params, ok_facts()));
    let Err(Refusal::Agent(refusal @ AgentRefusal::Field { .. })) = outcome else {
        panic!("expected a field refusal, got {outcome:?}");
    };
    let message = refusal.to_string();
    assert!(
        message.starts_with(&format!("agents.upsert: {field}: ")),
        "{message}"
    );
    assert!(message.contains(reason), "{message} should say {reason}");
    assert!(refusal.is_invalid_params());
}

#[test]
fn env_of_more_than_64_entries_is_refused_and_64_is_taken() {
    let env = |n: usize| -> Value {
        (0..n)
            .map(|i| (format!("V{i}"), json!("x")))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let mut p = params();
    p["env"] = env(64);
    assert!(spec::validate(&p, &ok_facts()).is_ok());
    p["env"] = env(65);
    let err = spec::validate(&p, &ok_facts()).unwrap_err();
    assert_eq!(err.to_string(), "agents.upsert: env: at most 64 entries");
}

#[test]
fn the_file_system_facts_decide_command_cwd_and_interpreter() {
    let facts = SpecFacts {
        command: Err("is not executable".into()),
        ..ok_facts()
    };
    assert_eq!(
        spec::validate(&params(), &facts).unwrap_err().to_string(),
        "agents.upsert: command: is not executable"
    );
    let mut p = params();
    p["cwd"] = json!("/nonexistent");
    let facts = SpecFacts {
        cwd: Err("is not an existing folder".into()),
        ..ok_facts()
    };
    assert_eq!(
        spec::validate(&p, &facts).unwrap_err().to_string(),
        "agents.upsert: cwd: is not an existing folder"
    );
    let p = json!({"id": ID, "name": "n", "interpreter": "python3", "args": ["agent.py"]});
    assert_eq!(
        spec::validate(&p, &ok_facts()).unwrap_err().to_string(),
        "agents.upsert: interpreter: not found on PATH"
    );
    let facts = SpecFacts {
        interpreter: Ok(Some("/usr/bin/python3".into())),
        ..ok_facts()
    };
    let spec = spec::validate(&p, &facts).unwrap();
    assert_eq!(spec.command, "/usr/bin/python3");
    assert_eq!(spec.args, ["agent.py"]);
    assert_eq!(spec.interpreter.as_deref(), Some("python3"));
}

#[test]
fn defaults_are_the_contracts() {
    let spec = spec::validate(&params(), &ok_facts()).unwrap();
    assert_eq!(spec.restart, spec::RestartPolicy::OnFailure);
    assert_eq!(spec.max_restarts, 5);
    assert_eq!(spec.backoff_secs, 1.0);
    assert!(!spec.auto_start);
    assert!(spec.args.is_empty() && spec.env.is_empty() && spec.cwd.is_none());
}

// ---------------------------------------------------------------------------------------
// Decisions.

#[test]
fn the_first_upsert_mints_a_token_a_later_one_only_replaces_the_spec() {
    check(
        vec![],
        upsert_with(host(), params(), ok_facts()),
        events(vec![upserted(&params(), Some(HASH2))]),
    );
    let mut p = params();
    p["name"] = json!("Renamed");
    check(
        registered(),
        upsert_with(host(), p.clone(), ok_facts()),
        events(vec![upserted(&p, None)]),
    );
    let mut rotating = p.clone();
    rotating["rotate_token"] = json!(true);
    check(
        registered(),
        upsert_with(host(), rotating, ok_facts()),
        events(vec![
            upserted(&p, None),
            Event::from(AgentTokenRotated {
                agent_id: ID.into(),
                token_sha256: HASH2.into(),
            }),
        ]),
    );
}

#[test]
fn roles_upsert_and_remove_are_host_only_start_and_stop_host_or_itself() {
    for actor in [Actor::client("c1"), Actor::agent("a1", ID)] {
        check(
            vec![],
            upsert_with(actor.clone(), params(), ok_facts()),
            refused(Refusal::Agent(AgentRefusal::HostOnly("agents.upsert"))),
        );
        check(
            registered(),
            agent_cmd(AgentCommand::Remove(RemoveAgent {
                actor,
                agent_id: ID.into(),
            })),
            refused(Refusal::Agent(AgentRefusal::HostOnly("agents.remove"))),
        );
    }
    for actor in [Actor::client("c1"), Actor::agent("a1", "someone-else")] {
        check(
            registered(),
            agent_cmd(AgentCommand::Start(StartAgent {
                actor: actor.clone(),
                agent_id: ID.into(),
            })),
            refused(Refusal::Agent(AgentRefusal::HostOrSelf("agents.start"))),
        );
        check(
            registered(),
            agent_cmd(AgentCommand::Stop(StopAgent {
                actor: Some(actor),
                agent_id: ID.into(),
                signal: "term".into(),
            })),
            refused(Refusal::Agent(AgentRefusal::HostOrSelf("agents.stop"))),
        );
    }
    assert_eq!(
        AgentRefusal::HostOrSelf("agents.stop").to_string(),
        "permission denied: agents.stop requires the host role or the agent itself"
    );
    // The agent itself may start itself; auth disabled may do everything.
    for actor in [Actor::agent("a1", ID), Actor::client("c1").unrestricted()] {
        let by = actor.principal();
        check(
            registered(),
            agent_cmd(AgentCommand::Start(StartAgent {
                actor,
                agent_id: ID.into(),
            })),
            events(vec![
                Event::from(AgentStartRequested {
                    agent_id: ID.into(),
                    by,
                }),
                status(AgentStatus::Starting, "start requested"),
            ]),
        );
    }
}

#[test]
fn unknown_agents_are_refused_except_by_remove() {
    let unknown = Refusal::Agent(AgentRefusal::Unknown("ghost".into()));
    assert_eq!(unknown.to_string(), "unknown agent 'ghost'");
    check(
        vec![],
        agent_cmd(AgentCommand::Start(StartAgent {
            actor: host(),
            agent_id: "ghost".into(),
        })),
        refused(unknown.clone()),
    );
    check(
        vec![],
        agent_cmd(AgentCommand::Stop(StopAgent {
            actor: Some(host()),
            agent_id: "ghost".into(),
            signal: "kill".into(),
        })),
        refused(unknown),
    );
    check(
        vec![],
        agent_cmd(AgentCommand::Remove(RemoveAgent {
            actor: host(),
            agent_id: "ghost".into(),
        })),
        nothing(),
    );
}

#[test]
fn start_is_a_no_op_while_starting_or_running() {
    let mut given = registered();
    given.extend(running(41));
    check(
        given,
        agent_cmd(AgentCommand::Start(StartAgent {
            actor: host(),
            agent_id: ID.into(),
        })),
        nothing(),
    );
}

#[test]
fn stop_without_a_process_is_stopped_at_once_with_one_it_waits_for_the_exit() {
    let mut given = registered();
    given.extend(running(41));
    let stop = agent_cmd(AgentCommand::Stop(StopAgent {
        actor: Some(host()),
        agent_id: ID.into(),
        signal: "term".into(),
    }));
    let requested = Event::from(AgentStopRequested {
        agent_id: ID.into(),
        by: "host".into(),
        signal: "term".into(),
    });
    check(given.clone(), stop.clone(), events(vec![requested.clone()]));
    // Its exit after the request: stopped, never restarted.
    given.push(requested.clone());
    check(
        given,
        agent_cmd(AgentCommand::Exited {
            agent_id: ID.into(),
            pid: 41,
            exit: AgentExit::Signal { signal: 15 },
            now: given_ts(100),
        }),
        events(vec![
            Event::from(AgentProcessExited {
                agent_id: ID.into(),
                pid: 41,
                exit: AgentExit::Signal { signal: 15 },
            }),
            status(AgentStatus::Stopped, "stop requested"),
        ]),
    );
    // In backoff (no process): stopped at once.
    let mut backoff = registered();
    backoff.extend([
        status(AgentStatus::Backoff, "exited"),
        Event::from(AgentBackoffScheduled {
            agent_id: ID.into(),
            restart_count: 1,
            delay_ms: 1000,
        }),
    ]);
    check(
        backoff,
        stop,
        events(vec![
            requested,
            status(AgentStatus::Stopped, "stop requested"),
        ]),
    );
}

#[test]
fn remove_waits_for_the_process_to_be_gone() {
    let mut given = registered();
    given.extend(running(41));
    let remove = agent_cmd(AgentCommand::Remove(RemoveAgent {
        actor: host(),
        agent_id: ID.into(),
    }));
    check(
        given,
        remove.clone(),
        refused(Refusal::Agent(AgentRefusal::ProcessAlive(ID.into()))),
    );
    check(
        registered(),
        remove,
        events(vec![Event::from(AgentRemoved {
            agent_id: ID.into(),
            by: "host".into(),
        })]),
    );
}

#[test]
fn an_exit_of_another_process_records_nothing() {
    let mut given = registered();
    given.extend(running(41));
    check(
        given,
        agent_cmd(AgentCommand::Exited {
            agent_id: ID.into(),
            pid: 99,
            exit: AgentExit::Code { code: 1 },
            now: given_ts(10),
        }),
        nothing(),
    );
}

// ---------------------------------------------------------------------------------------
// The supervisor's restart rule, with made-up times.

#[test]
fn backoff_doubles_from_backoff_secs_and_stops_at_60_s() {
    let ms = |secs: f64, n: u32| backoff_delay(secs, n).num_milliseconds();
    assert_eq!(
        (0..8).map(|n| ms(1.0, n)).collect::<Vec<_>>(),
        [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
    );
    assert_eq!(ms(0.1, 0), 100);
    assert_eq!(ms(0.1, 3), 800);
    assert_eq!(ms(60.0, 0), 60_000);
    assert_eq!(ms(0.1, u32::MAX), 60_000);
}

/// Given an agent with `spec` that crashed `crashes` times in a row, each `uptime` after its
/// spawn, when it crashes again: what follows.
fn after_crashes(spec: Value, crashes: u32, uptime: TimeDelta, exit: AgentExit) -> AfterExit {
    let mut given = registered_with(spec);
    given.extend(running(1));
    let mut state = fold(&given);
    for n in 0..crashes {
        let spawned_at = state.registered_agent(ID).unwrap().started_at.unwrap();
        let decided = car_projections::decide(
            &state,
            &agent_cmd(AgentCommand::Exited {
                agent_id: ID.into(),
                pid: n + 1,
                exit,
                now: spawned_at + uptime,
            }),
        )
        .unwrap();
        let mut more = decided;
        more.push(status(AgentStatus::Starting, "backoff elapsed"));
        more.push(Event::from(AgentProcessSpawned {
            agent_id: ID.into(),
            pid: n + 2,
        }));
        more.push(status(AgentStatus::Running, "spawned"));
        crate::support::apply_events(&mut state, &more, given_ts).unwrap();
    }
    let agent = state.registered_agent(ID).unwrap();
    after_exit(agent, exit, agent.started_at.unwrap() + uptime)
}

fn with(extra: Value) -> Value {
    let mut p = params();
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

#[test]
fn crashes_back_off_then_error_past_max_restarts() {
    let spec = with(json!({"max_restarts": 3, "backoff_secs": 0.5}));
    let crash = AgentExit::Code { code: 2 };
    let quick = TimeDelta::seconds(1);
    let delays: Vec<AfterExit> = (0..4)
        .map(|n| after_crashes(spec.clone(), n, quick, crash))
        .collect();
    assert_eq!(
        delays,
        [
            AfterExit::Restart {
                restart_count: 1,
                delay: TimeDelta::milliseconds(500)
            },
            AfterExit::Restart {
                restart_count: 2,
                delay: TimeDelta::milliseconds(1000)
            },
            AfterExit::Restart {
                restart_count: 3,
                delay: TimeDelta::milliseconds(2000)
            },
            AfterExit::Errored("max_restarts reached"),
        ]
    );
    assert_eq!(
        after_crashes(with(json!({"max_restarts": 0})), 0, quick, crash),
        AfterExit::Errored("max_restarts reached")
    );
}

#[test]
fn sixty_seconds_of_uptime_reset_the_count() {
    let spec = with(json!({"max_restarts": 2, "backoff_secs": 1}));
    let crash = AgentExit::Signal { signal: 9 };
    // Two quick crashes, then one after 59.999 s: the count is spent.
    assert_eq!(
        after_crashes(spec.clone(), 2, TimeDelta::milliseconds(59_999), crash),
        AfterExit::Errored("max_restarts reached")
    );
    // After exactly 60 s of uptime it starts again from the first backoff.
    assert_eq!(
        after_crashes(spec, 2, TimeDelta::seconds(60), crash),
        AfterExit::Restart {
            restart_count: 1,
            delay: TimeDelta::seconds(1)
        }
    );
}

#[rstest]
#[case::never_on_failure("never", AgentExit::Code { code: 1 }, false)]
#[case::never_on_success("never", AgentExit::Code { code: 0 }, false)]
#[case::on_failure_success("on_failure", AgentExit::Code { code: 0 }, false)]
#[case::on_failure_failure("on_failure", AgentExit::Code { code: 1 }, true)]
#[case::on_failure_signal("on_failure", AgentExit::Signal { signal: 11 }, true)]
#[case::always_success("always", AgentExit::Code { code: 0 }, true)]
#[case::always_daemon_restart("always", AgentExit::DaemonRestart, false)]
fn restart_policies(#[case] policy: &str, #[case] exit: AgentExit, #[case] restarts: bool) {
    let outcome = after_crashes(
        with(json!({"restart": policy})),
        0,
        TimeDelta::seconds(1),
        exit,
    );
    assert_eq!(
        matches!(outcome, AfterExit::Restart { .. }),
        restarts,
        "{outcome:?}"
    );
}

#[test]
fn an_exit_decides_backoff_and_the_timer_starts_it_only_when_due() {
    let mut given = registered_with(with(json!({"backoff_secs": 2})));
    given.extend(running(41));
    let spawned_at = given_ts(given.len() as u64 - 1);
    let exited = Event::from(AgentProcessExited {
        agent_id: ID.into(),
        pid: 41,
        exit: AgentExit::Code { code: 1 },
    });
    check(
        given.clone(),
        agent_cmd(AgentCommand::Exited {
            agent_id: ID.into(),
            pid: 41,
            exit: AgentExit::Code { code: 1 },
            now: spawned_at + TimeDelta::seconds(3),
        }),
        events(vec![
            exited.clone(),
            status(AgentStatus::Backoff, "exited"),
            Event::from(AgentBackoffScheduled {
                agent_id: ID.into(),
                restart_count: 1,
                delay_ms: 2000,
            }),
        ]),
    );
    given.extend([
        exited,
        status(AgentStatus::Backoff, "exited"),
        Event::from(AgentBackoffScheduled {
            agent_id: ID.into(),
            restart_count: 1,
            delay_ms: 2000,
        }),
    ]);
    // The backoff event is the last given one: at given_ts(len).
    let scheduled_at = given_ts(given.len() as u64);
    let state = fold(&given);
    let agent = state.registered_agent(ID).unwrap();
    assert_eq!(agent.restart_at, Some(scheduled_at + TimeDelta::seconds(2)));
    assert_eq!(agent.restart_count, 1);
    let elapsed = |ms| {
        agent_cmd(AgentCommand::BackoffElapsed {
            agent_id: ID.into(),
            now: scheduled_at + TimeDelta::milliseconds(ms),
        })
    };
    check(given.clone(), elapsed(1_999), nothing());
    check(
        given,
        elapsed(2_000),
        events(vec![status(AgentStatus::Starting, "backoff elapsed")]),
    );
}

// ---------------------------------------------------------------------------------------
// The fold, and start-up.

#[test]
fn the_fold_refuses_impossible_process_histories() {
    let mut state = fold(&registered());
    let mut apply = |event: Event| {
        let seq = state.head() + 1;
        state.apply(&crate::support::envelope(seq, given_ts(seq), event))
    };
    // An exit of a process never spawned.
    assert!(
        apply(Event::from(AgentProcessExited {
            agent_id: ID.into(),
            pid: 5,
            exit: AgentExit::Code { code: 0 },
        }))
        .is_err()
    );
    apply(Event::from(AgentProcessSpawned {
        agent_id: ID.into(),
        pid: 5,
    }))
    .unwrap();
    // A second process at once; removal while it lives; an unknown agent.
    assert!(
        apply(Event::from(AgentProcessSpawned {
            agent_id: ID.into(),
            pid: 6,
        }))
        .is_err()
    );
    assert!(
        apply(Event::from(AgentRemoved {
            agent_id: ID.into(),
            by: "host".into(),
        }))
        .is_err()
    );
    assert!(
        apply(Event::from(AgentStartRequested {
            agent_id: "ghost".into(),
            by: "host".into(),
        }))
        .is_err()
    );
    // A first upsert without a token.
    let mut fresh = State::new();
    assert!(
        fresh
            .apply(&crate::support::envelope(
                1,
                given_ts(1),
                upserted(&params(), None)
            ))
            .is_err()
    );
}

#[test]
fn start_up_records_live_processes_exited_then_auto_start_starts_once() {
    let mut given = registered_with(with(json!({"auto_start": true})));
    given.extend(running(41));
    let state = fold(&given);
    let adopted = car_projections::agents::decide::adopt_at_startup(state.registered_agents());
    assert_eq!(
        adopted,
        [
            Event::from(AgentProcessExited {
                agent_id: ID.into(),
                pid: 41,
                exit: AgentExit::DaemonRestart,
            }),
            status(AgentStatus::Stopped, "daemon_restart"),
        ]
    );
    // Recovery appends them, and a second recovery finds nothing left to do.
    let retention = recovery::Retention::default();
    let events = recovery::recover(&state, given_ts(100), &retention);
    assert!(events.starts_with(&adopted), "{events:?}");
    let mut after = given.clone();
    after.extend(events);
    check(
        after.clone(),
        agent_cmd(AgentCommand::AutoStart),
        events_of_auto_start(),
    );
    let state = fold(&after);
    assert!(
        car_projections::agents::decide::adopt_at_startup(state.registered_agents()).is_empty()
    );
}

fn events_of_auto_start() -> crate::gwt::Then {
    events(vec![
        Event::from(AgentStartRequested {
            agent_id: ID.into(),
            by: "daemon".into(),
        }),
        status(AgentStatus::Starting, "start requested"),
    ])
}
