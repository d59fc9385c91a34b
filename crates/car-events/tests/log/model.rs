//! Model-based property tests of the event log, the record codec, the JSON rendering and
//! the group-commit writer.
//!
//! - [`mem_log_behaves_like_a_vec`] / [`sled_log_behaves_like_a_vec`]: random sequences of
//!   appends (of 0.. events, of every kind), out-of-sequence appends, `read_from`, `get`,
//!   `head` and reopens, run against both [`EventLog`] implementations and a plain
//!   `Vec<Envelope>`; after every operation the log must answer exactly as the vector does.
//! - [`codec_and_rendering_round_trip_any_envelope`]: `codec::encode`/`decode` and the
//!   `{seq, ts, kind, data}` rendering give back exactly what went in.
//! - [`writer_over_mem_log_acknowledges_disjoint_gapless_ranges`] /
//!   [`writer_over_sled_log_acknowledges_disjoint_gapless_ranges`]: concurrent appenders
//!   (tokio tasks) through one [`Writer`]: every acknowledged range is durable (read back
//!   after a reopen), ranges are disjoint, their union is exactly `1..=head`, and each range
//!   holds what its appender sent.
//!
//! Everything is deterministic: the proptest seed is fixed (set `PROPTEST_RNG_SEED` or
//! `PROPTEST_CASES` to explore further), and times and ids come from a [`ManualClock`] and
//! seeded ids.

use std::sync::Arc;

use car_events::codec;
use car_events::event::{
    ApprovalExpired, ApprovalRequested, ApprovalResolved, DaemonRecovered, DaemonStarted,
    DaemonStopped, EvictionReason, IncompleteReason, ProposalFinished, ProposalSubmitted, Role,
    RunEnded, RunEvicted, RunStarted, SessionAuthenticated, SessionClosed, SessionOpened,
    SubscriptionClosed, SubscriptionOpened, SubscriptionTarget, Termination, ToolCallCancelled,
    ToolCallCompleted, ToolCallDispatched, ToolCallFailed, ToolCallTimedOut, TurnsRecorded,
};
use car_events::{
    Envelope, Event, EventJson, EventLog, JsonText, LogError, ManualClock, MemLog, OpenOptions,
    SCHEMA_VERSION, Seq, SeqRange, SledLog, Stamper, Writer,
};
use chrono::{DateTime, TimeDelta, Utc};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Configuration.

/// The fixed proptest seed (overridden by `PROPTEST_RNG_SEED`).
const SEED: u64 = 0x00ca_7e7e_2026;

fn config(cases: u32) -> ProptestConfig {
    // `default()` reads the PROPTEST_* environment variables; keep what they set.
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    config.failure_persistence = None;
    config
}

// ---------------------------------------------------------------------------------------
// Strategies: every event kind, with awkward strings and arbitrary JSON.

/// Strings of every sort: id-like, any printable unicode, control characters and quotes.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-z][a-z0-9-]{0,10}",
        2 => "\\PC{0,12}",
        1 => "[\\x00-\\x1f\"\\\\/\u{7f}\u{2028}]{0,4}",
        1 => ".{0,24}",
    ]
    .boxed()
}

fn opt_text() -> BoxedStrategy<Option<String>> {
    option::of(text()).boxed()
}

/// Any JSON value, nested a few levels (objects keep their key order).
fn json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((text(), inner), 0..4)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
    .boxed()
}

fn json_text() -> BoxedStrategy<JsonText> {
    json().prop_map(JsonText::from).boxed()
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Client), Just(Role::Agent), Just(Role::Host)]
}

fn incomplete_reason() -> impl Strategy<Value = IncompleteReason> {
    prop_oneof![
        Just(IncompleteReason::Disconnected),
        Just(IncompleteReason::DaemonRestart),
        Just(IncompleteReason::DaemonShutdown),
    ]
}

fn daemon_event() -> BoxedStrategy<Event> {
    prop_oneof![
        (text(), any::<u32>(), text(), text()).prop_map(|(version, pid, data_dir, listen)| {
            Event::from(DaemonStarted {
                version,
                pid,
                data_dir,
                listen,
            })
        }),
        (any::<u64>(), any::<[u32; 6]>()).prop_map(|(events_replayed, n)| {
            Event::from(DaemonRecovered {
                events_replayed,
                runs_adopted: n[0],
                sessions_closed: n[1],
                approvals_expired: n[2],
                subscriptions_closed: n[3],
                tool_calls_cancelled: n[4],
                runs_evicted: n[5],
            })
        }),
        text().prop_map(|reason| Event::from(DaemonStopped { reason })),
    ]
    .boxed()
}

fn session_event() -> BoxedStrategy<Event> {
    prop_oneof![
        (text(), text(), option::of(role()), opt_text()).prop_map(
            |(client_id, peer, role, agent_id)| Event::from(SessionOpened {
                client_id,
                peer,
                role,
                agent_id,
            })
        ),
        (text(), role(), opt_text()).prop_map(|(client_id, role, agent_id)| {
            Event::from(SessionAuthenticated {
                client_id,
                role,
                agent_id,
            })
        }),
        (text(), option::of(role()), opt_text(), text()).prop_map(
            |(client_id, role, agent_id, reason)| Event::from(SessionClosed {
                client_id,
                role,
                agent_id,
                reason
            })
        ),
    ]
    .boxed()
}

fn run_event() -> BoxedStrategy<Event> {
    let termination = prop_oneof![
        json_text().prop_map(|outcome| Termination::Outcome { outcome }),
        incomplete_reason().prop_map(|reason| Termination::Incomplete { reason }),
    ];
    let eviction = prop_oneof![Just(EvictionReason::Age), Just(EvictionReason::Count)];
    prop_oneof![
        (text(), text(), opt_text(), text(), opt_text(), opt_text()).prop_map(
            |(run_id, agent_id, client_id, intent, outcome_description, idempotency_key)| {
                Event::from(RunStarted {
                    run_id,
                    agent_id,
                    client_id,
                    intent,
                    outcome_description,
                    idempotency_key,
                })
            }
        ),
        (text(), any::<u32>(), vec(json_text(), 0..4)).prop_map(|(run_id, base_index, turns)| {
            Event::from(TurnsRecorded {
                run_id,
                base_index,
                turns,
            })
        }),
        (text(), text(), termination).prop_map(|(run_id, agent_id, termination)| {
            Event::from(RunEnded {
                run_id,
                agent_id,
                termination,
            })
        }),
        (text(), text(), eviction).prop_map(|(run_id, agent_id, reason)| {
            Event::from(RunEvicted {
                run_id,
                agent_id,
                reason,
            })
        }),
    ]
    .boxed()
}

fn tool_call_event() -> BoxedStrategy<Event> {
    prop_oneof![
        (
            (text(), text(), text(), text(), text()),
            json_text(),
            any::<u32>(),
            any::<u64>(),
            opt_text()
        )
            .prop_map(
                |(
                    (request_id, client_id, proposal_id, action_id, tool),
                    parameters,
                    attempt,
                    timeout_ms,
                    run_id,
                )| {
                    Event::from(ToolCallDispatched {
                        request_id,
                        client_id,
                        proposal_id,
                        action_id,
                        tool,
                        parameters,
                        attempt,
                        timeout_ms,
                        run_id,
                    })
                }
            ),
        (text(), json_text(), any::<u64>()).prop_map(|(request_id, output, elapsed_ms)| {
            Event::from(ToolCallCompleted {
                request_id,
                output,
                elapsed_ms,
            })
        }),
        (text(), text(), any::<u64>()).prop_map(|(request_id, error, elapsed_ms)| {
            Event::from(ToolCallFailed {
                request_id,
                error,
                elapsed_ms,
            })
        }),
        (text(), any::<u64>()).prop_map(|(request_id, elapsed_ms)| {
            Event::from(ToolCallTimedOut {
                request_id,
                elapsed_ms,
            })
        }),
        (text(), text()).prop_map(|(request_id, reason)| {
            Event::from(ToolCallCancelled { request_id, reason })
        }),
    ]
    .boxed()
}

fn approval_event() -> BoxedStrategy<Event> {
    prop_oneof![
        (
            text(),
            opt_text(),
            opt_text(),
            text(),
            json_text(),
            vec(text(), 0..4),
            any::<bool>()
        )
            .prop_map(
                |(approval_id, client_id, agent_id, action, details, options, system_level)| {
                    Event::from(ApprovalRequested {
                        approval_id,
                        client_id,
                        agent_id,
                        action,
                        details,
                        options,
                        system_level,
                    })
                }
            ),
        (text(), text(), opt_text()).prop_map(|(approval_id, resolution, client_id)| {
            Event::from(ApprovalResolved {
                approval_id,
                resolution,
                client_id,
            })
        }),
        (text(), text()).prop_map(|(approval_id, reason)| {
            Event::from(ApprovalExpired {
                approval_id,
                reason,
            })
        }),
    ]
    .boxed()
}

fn subscription_and_proposal_event() -> BoxedStrategy<Event> {
    let target = prop_oneof![
        (text(), any::<u32>())
            .prop_map(|(run_id, cursor)| SubscriptionTarget::Run { run_id, cursor }),
        any::<u64>().prop_map(|from_seq| SubscriptionTarget::Log { from_seq }),
        Just(SubscriptionTarget::Host),
    ];
    prop_oneof![
        (text(), text(), target).prop_map(|(subscription_id, client_id, target)| {
            Event::from(SubscriptionOpened {
                subscription_id,
                client_id,
                target,
            })
        }),
        (text(), text()).prop_map(|(subscription_id, reason)| {
            Event::from(SubscriptionClosed {
                subscription_id,
                reason,
            })
        }),
        (text(), text(), opt_text(), vec(text(), 0..4)).prop_map(
            |(proposal_id, client_id, run_id, action_ids)| Event::from(ProposalSubmitted {
                proposal_id,
                client_id,
                run_id,
                action_ids,
            })
        ),
        (text(), text()).prop_map(|(proposal_id, final_state)| {
            Event::from(ProposalFinished {
                proposal_id,
                final_state,
            })
        }),
    ]
    .boxed()
}

/// Any event, of any kind.
fn event() -> BoxedStrategy<Event> {
    prop_oneof![
        daemon_event(),
        session_event(),
        run_event(),
        tool_call_event(),
        approval_event(),
        subscription_and_proposal_event(),
    ]
    .boxed()
}

/// Any time the codec can store (nanoseconds since the epoch fit an i64).
fn any_ts() -> impl Strategy<Value = DateTime<Utc>> {
    any::<i64>().prop_map(DateTime::<Utc>::from_timestamp_nanos)
}

/// A time as the writer stamps it: whole milliseconds.
fn millis_ts() -> impl Strategy<Value = DateTime<Utc>> {
    (-9_000_000_000_000i64..9_000_000_000_000)
        .prop_map(|ms| DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default())
}

fn envelope_with(ts: impl Strategy<Value = DateTime<Utc>>) -> impl Strategy<Value = Envelope> {
    (any::<u64>(), any::<u128>(), ts, any::<u16>(), event()).prop_map(
        |(seq, id, ts, schema_version, event)| Envelope {
            seq,
            event_id: uuid::Uuid::from_u128(id),
            ts,
            schema_version,
            event,
        },
    )
}

// ---------------------------------------------------------------------------------------
// Codec and rendering.

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn codec_and_rendering_round_trip_any_envelope(
        stored in envelope_with(any_ts()),
        rendered in envelope_with(millis_ts()),
    ) {
        // The record format keeps everything, to the nanosecond.
        let bytes = codec::encode(&stored).unwrap();
        prop_assert_eq!(&codec::decode(stored.seq, &bytes).unwrap(), &stored);
        prop_assert!(codec::verify(stored.seq, &bytes).is_ok());
        prop_assert_eq!(codec::encode(&stored).unwrap(), bytes, "encoding is deterministic");

        // The rendering keeps seq, time (milliseconds, as stamped) and event.
        let json = EventJson::from_envelope(&rendered);
        prop_assert_eq!(json.kind.as_str(), rendered.event.kind());
        let line = serde_json::to_string(&json).unwrap();
        let parsed: EventJson = serde_json::from_str(&line).unwrap();
        prop_assert_eq!(&parsed, &json, "the JSON line parses back");
        let (seq, ts, event) = parsed.into_parts().unwrap();
        prop_assert_eq!(seq, rendered.seq);
        prop_assert_eq!(ts, rendered.ts);
        prop_assert_eq!(event, rendered.event);
    }
}

// ---------------------------------------------------------------------------------------
// The log against a Vec.

/// An operation on the log.
#[derive(Debug, Clone)]
enum Op {
    /// Append these events, with the right seqs.
    Append(Vec<Event>, u16),
    /// Append a batch whose seqs are wrong in the way described.
    Misplaced(Misplacement, Vec<Event>),
    /// `read_from` at a seq chosen from `0..=head + 2`.
    ReadFrom(u16),
    /// `get` at a seq chosen from `0..=head + 2`.
    Get(u16),
    /// `head` (and the watched head).
    Head,
    /// Drop the handle and open the log again.
    Reopen,
}

/// How an out-of-sequence batch is wrong.
#[derive(Debug, Clone, Copy)]
enum Misplacement {
    /// It starts this far past the next seq.
    Ahead(u8),
    /// It starts this far before the next seq (saturating at 0).
    Behind(u8),
    /// Its second envelope repeats the first one's seq.
    Repeats,
    /// Its second envelope skips a seq.
    Skips,
}

fn op() -> impl Strategy<Value = Op> {
    let misplacement = prop_oneof![
        (1u8..4).prop_map(Misplacement::Ahead),
        (1u8..4).prop_map(Misplacement::Behind),
        Just(Misplacement::Repeats),
        Just(Misplacement::Skips),
    ];
    prop_oneof![
        6 => (vec(event(), 0..6), any::<u16>()).prop_map(|(events, ms)| Op::Append(events, ms)),
        1 => (misplacement, vec(event(), 1..4)).prop_map(|(m, events)| Op::Misplaced(m, events)),
        3 => any::<u16>().prop_map(Op::ReadFrom),
        3 => any::<u16>().prop_map(Op::Get),
        1 => Just(Op::Head),
        1 => Just(Op::Reopen),
    ]
}

/// A log under test and how to reopen it.
trait Subject {
    fn log(&self) -> &dyn EventLog;
    fn reopen(&mut self);
}

#[derive(Debug)]
struct Mem(MemLog);

impl Subject for Mem {
    fn log(&self) -> &dyn EventLog {
        &self.0
    }

    fn reopen(&mut self) {
        self.0 = self.0.reopen();
    }
}

#[derive(Debug)]
struct Sled {
    dir: tempfile::TempDir,
    log: Option<SledLog>,
}

fn small_cache() -> OpenOptions {
    OpenOptions {
        cache_bytes: 8 * 1024 * 1024,
        ..OpenOptions::default()
    }
}

impl Sled {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path(), small_cache()).unwrap();
        Self {
            dir,
            log: Some(log),
        }
    }
}

impl Subject for Sled {
    fn log(&self) -> &dyn EventLog {
        self.log.as_ref().expect("open")
    }

    fn reopen(&mut self) {
        drop(self.log.take());
        let log =
            SledLog::open(self.dir.path(), small_cache()).unwrap_or_else(|e| panic!("reopen: {e}"));
        assert_eq!(log.tail_repair(), None, "a clean log needs no repair");
        self.log = Some(log);
    }
}

/// Picks a seq in `0..=head + 2` from a random number.
fn pick(head: Seq, r: u16) -> Seq {
    u64::from(r) % (head + 3)
}

fn read_from(log: &dyn EventLog, from: Seq) -> Result<Vec<Envelope>, TestCaseError> {
    log.read_from(from)
        .collect::<Result<Vec<_>, LogError>>()
        .map_err(|e| TestCaseError::fail(format!("read_from({from}): {e}")))
}

/// Runs `ops` against `subject` and a `Vec<Envelope>` model, comparing after each one.
fn run_model(subject: &mut dyn Subject, ops: &[Op]) -> Result<(), TestCaseError> {
    let clock = ManualClock::fixed();
    let stamper = Stamper::deterministic(clock.clone(), 42);
    let mut model: Vec<Envelope> = Vec::new();
    let stamp = |seq: Seq, event: Event| Envelope {
        seq,
        event_id: stamper.ids().uuid(),
        ts: stamper.now_after(DateTime::<Utc>::MIN_UTC),
        schema_version: SCHEMA_VERSION,
        event,
    };

    for (step, op) in ops.iter().enumerate() {
        let head = model.len() as Seq;
        let log = subject.log();
        match op {
            Op::Append(events, ms) => {
                clock.advance(TimeDelta::milliseconds(i64::from(*ms)));
                let batch: Vec<Envelope> = events
                    .iter()
                    .enumerate()
                    .map(|(i, e)| stamp(head + 1 + i as Seq, e.clone()))
                    .collect();
                let range = log
                    .append(&batch)
                    .map_err(|e| TestCaseError::fail(format!("step {step}: append: {e}")))?;
                prop_assert_eq!(
                    range,
                    SeqRange {
                        first: head + 1,
                        count: batch.len() as u64
                    },
                    "step {}",
                    step
                );
                model.extend(batch);
            }
            Op::Misplaced(how, events) => {
                let first = match how {
                    Misplacement::Ahead(by) => head + 1 + Seq::from(*by),
                    Misplacement::Behind(by) => (head + 1).saturating_sub(Seq::from(*by)),
                    Misplacement::Repeats | Misplacement::Skips => head + 1,
                };
                let mut seqs: Vec<Seq> = (0..events.len() as Seq).map(|i| first + i).collect();
                match how {
                    Misplacement::Repeats if seqs.len() > 1 => seqs[1] = seqs[0],
                    Misplacement::Skips if seqs.len() > 1 => seqs[1] += 1,
                    // A single envelope at the right seq is not misplaced: make it so.
                    Misplacement::Repeats | Misplacement::Skips => seqs[0] += 1,
                    Misplacement::Ahead(_) | Misplacement::Behind(_) => {}
                }
                let batch: Vec<Envelope> = seqs
                    .iter()
                    .zip(events)
                    .map(|(seq, e)| stamp(*seq, e.clone()))
                    .collect();
                // The log names the first envelope that is not where it should be.
                let (expected, got) = batch
                    .iter()
                    .enumerate()
                    .map(|(i, env)| (head + 1 + i as Seq, env.seq))
                    .find(|(want, got)| want != got)
                    .expect("the batch is out of sequence");
                match log.append(&batch) {
                    Err(LogError::OutOfSequence {
                        expected: e,
                        got: g,
                    }) => {
                        prop_assert_eq!((e, g), (expected, got), "step {}", step);
                    }
                    other => {
                        return Err(TestCaseError::fail(format!(
                            "step {step}: {seqs:?} after head {head}: {other:?}"
                        )));
                    }
                }
                prop_assert_eq!(
                    log.head(),
                    head,
                    "step {}: a refused append moved the head",
                    step
                );
                prop_assert_eq!(log.get(head + 1).ok().flatten(), None, "step {}", step);
            }
            Op::ReadFrom(r) => {
                let from = pick(head, *r);
                let start = usize::try_from(from.max(1) - 1).unwrap_or(usize::MAX);
                let want = model.get(start..).unwrap_or(&[]);
                prop_assert_eq!(
                    read_from(log, from)?,
                    want,
                    "step {}: read_from({})",
                    step,
                    from
                );
            }
            Op::Get(r) => {
                let seq = pick(head, *r);
                let want = seq
                    .checked_sub(1)
                    .and_then(|i| model.get(usize::try_from(i).ok()?));
                let got = log
                    .get(seq)
                    .map_err(|e| TestCaseError::fail(format!("step {step}: get({seq}): {e}")))?;
                prop_assert_eq!(got.as_ref(), want, "step {}: get({})", step, seq);
            }
            Op::Head => {}
            Op::Reopen => {
                subject.reopen();
                prop_assert_eq!(read_from(subject.log(), 1)?, &model[..], "step {}", step);
            }
        }
        let log = subject.log();
        let head = model.len() as Seq;
        prop_assert_eq!(log.head(), head, "step {}: head", step);
        prop_assert_eq!(
            *log.watch_head().borrow(),
            head,
            "step {}: watched head",
            step
        );
    }
    // Finally, everything, after one more reopen.
    subject.reopen();
    prop_assert_eq!(read_from(subject.log(), 0)?, model);
    Ok(())
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn mem_log_behaves_like_a_vec(ops in vec(op(), 1..40)) {
        run_model(&mut Mem(MemLog::new()), &ops)?;
    }
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn sled_log_behaves_like_a_vec(ops in vec(op(), 1..40)) {
        run_model(&mut Sled::new(), &ops)?;
    }
}

// ---------------------------------------------------------------------------------------
// The writer: concurrent appenders.

/// Per appender, its appends in order; each append is a batch of events.
type Plan = Vec<Vec<Vec<Event>>>;

fn plan() -> impl Strategy<Value = Plan> {
    vec(vec(vec(event(), 0..4), 1..5), 1..7)
}

/// Runs `plan` through a `Writer<()>` over `log` on a two-thread runtime; returns, per
/// appender, each acknowledged range with the events sent.
fn run_appenders(log: Arc<dyn EventLog>, plan: &Plan) -> Vec<Vec<(SeqRange, Vec<Event>)>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let (writer, thread) =
        Writer::<()>::spawn(log, (), Stamper::deterministic(ManualClock::fixed(), 9));
    let acked = runtime.block_on(async {
        let tasks: Vec<_> = plan
            .iter()
            .cloned()
            .map(|appends| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for events in appends {
                        let range = writer.append(events.clone()).await.unwrap();
                        acked.push((range, events));
                    }
                    acked
                })
            })
            .collect();
        let mut acked = Vec::new();
        for task in tasks {
            acked.push(task.await.unwrap());
        }
        writer.shutdown().await;
        acked
    });
    thread.join();
    acked
}

/// Checks the acknowledged ranges against the log.
fn check_acknowledged(
    log: &dyn EventLog,
    acked: &[Vec<(SeqRange, Vec<Event>)>],
) -> Result<(), TestCaseError> {
    let head = log.head();
    let total: usize = acked.iter().flatten().map(|(_, events)| events.len()).sum();
    prop_assert_eq!(
        head,
        total as Seq,
        "the head counts every acknowledged event"
    );
    let stored = read_from(log, 1)?;
    prop_assert_eq!(
        stored.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>(),
        "gapless"
    );
    let mut ranges = Vec::new();
    for appender in acked {
        let mut previous_end = 1;
        for (range, events) in appender {
            prop_assert_eq!(range.count, events.len() as u64);
            prop_assert!(
                range.first >= 1 && range.end() <= head + 1,
                "{:?} past {}",
                range,
                head
            );
            prop_assert!(
                range.first >= previous_end,
                "an appender's appends keep their order"
            );
            previous_end = range.end();
            let start = usize::try_from(range.first - 1).unwrap_or(usize::MAX);
            let got: Vec<&Event> = stored[start..start + events.len()]
                .iter()
                .map(|e| &e.event)
                .collect();
            prop_assert_eq!(got, events.iter().collect::<Vec<_>>(), "range {:?}", range);
            if !range.is_empty() {
                ranges.push(*range);
            }
        }
    }
    // Disjoint, and together exactly 1..=head.
    ranges.sort_by_key(|r| r.first);
    let mut next = 1;
    for range in &ranges {
        prop_assert_eq!(
            range.first,
            next,
            "ranges overlap or leave a gap: {:?}",
            ranges
        );
        next = range.end();
    }
    prop_assert_eq!(next, head + 1);
    Ok(())
}

proptest! {
    #![proptest_config(config(24))]

    #[test]
    fn writer_over_mem_log_acknowledges_disjoint_gapless_ranges(plan in plan()) {
        let log = Arc::new(MemLog::new());
        let acked = run_appenders(log.clone(), &plan);
        check_acknowledged(log.as_ref(), &acked)?;
        check_acknowledged(&log.reopen(), &acked)?;
    }
}

proptest! {
    #![proptest_config(config(8))]

    #[test]
    fn writer_over_sled_log_acknowledges_disjoint_gapless_ranges(plan in plan()) {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(SledLog::open(dir.path(), small_cache()).unwrap());
        let acked = run_appenders(log.clone(), &plan);
        check_acknowledged(log.as_ref(), &acked)?;
        drop(log);
        // Durable: everything acknowledged is there after a reopen.
        let log = SledLog::open(dir.path(), small_cache()).unwrap();
        check_acknowledged(&log, &acked)?;
    }
}
