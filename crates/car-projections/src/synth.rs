//! Synthetic workloads: realistic, valid event histories for benchmarks and soak tests.
//!
//! Every benchmark that needs "a 1 M-event log" (the projection rebuild, the daemon's
//! start-up, `car-replay verify`) builds it here, so they all measure the same thing. The
//! history is what a busy daemon records: a host session watching the feed, a number of
//! agents connected at once (their events interleaved), each running one run after the
//! other with ~100 turns (mostly one turn per `run.turns_recorded`, sometimes a batch),
//! some turns done through proposals with tool calls (which complete, fail or time out and
//! are retried), some runs asking for approvals that the host resolves, sessions that drop
//! and come back, runs that end `incomplete`, and a clean stop at the end.
//!
//! Every event is folded into a [`State`] as it is written, so the log is valid by
//! construction (an invalid one is a [`SynthError::Invalid`], never silently written). The
//! history is deterministic: a seed and simulated time, so two logs written with the same
//! workload and seed hold the same events.

use std::collections::VecDeque;

use car_events::event::{
    ApprovalRequested, ApprovalResolved, DaemonRecovered, DaemonStarted, Event, IncompleteReason,
    ProposalFinished, ProposalSubmitted, Role, RunEnded, RunStarted, SessionAuthenticated,
    SessionClosed, SessionOpened, SubscriptionOpened, SubscriptionTarget, Termination,
    ToolCallCompleted, ToolCallDispatched, ToolCallFailed, ToolCallTimedOut, TurnsRecorded,
};
use car_events::{Envelope, EventLog, JsonText, LogError, SCHEMA_VERSION, Seq};
use chrono::{DateTime, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use uuid::Uuid;

use crate::recovery;
use crate::state::{ApplyError, State};

/// Events per append while bulk-loading: one flush per 10 000 events keeps the load bound
/// by bytes, not by syncs.
const BATCH: usize = 10_000;

/// Words the synthetic prompts and outputs are made of.
const WORDS: &[&str] = &[
    "incident", "report", "latency", "database", "failover", "summary", "deploy", "rollback",
    "metrics", "alert", "customer", "ticket", "query", "cache", "region", "timeout", "retry",
    "budget", "owner", "review", "draft", "release", "schema", "index",
];

/// Tools the synthetic agents call.
const TOOLS: &[&str] = &[
    "search",
    "read_file",
    "fetch_metrics",
    "run_query",
    "write_file",
    "send_email",
];

/// The shape of a synthetic history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// How many events to write before the clean stop (which adds a few more).
    pub events: u64,
    /// Turns per run, on average (±10 %).
    pub turns_per_run: u32,
    /// Agents connected at the same time.
    pub agents: usize,
}

impl Workload {
    /// The benchmarks' "1 M-event log": about 10 000 runs of ~100 turns by 16 agents.
    pub fn million() -> Self {
        Self {
            events: 1_000_000,
            turns_per_run: 100,
            agents: 16,
        }
    }
}

/// Why a synthetic log could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The log refused or failed an append.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The generator made an event the state refuses (a bug in the generator).
    #[error("the generator made an invalid event: {0}")]
    Invalid(#[from] ApplyError),
}

/// Appends a workload's history to `log` (which must be empty or end where a previous
/// history ended cleanly) in large batches, without a writer: a bulk load. `progress` is
/// called with the seq reached after each batch. Returns the final state (its head is the
/// log's head).
pub fn write_log(
    log: &dyn EventLog,
    workload: &Workload,
    seed: u64,
    mut progress: impl FnMut(Seq),
) -> Result<State, SynthError> {
    let mut sink = Sink {
        log,
        state: State::new(),
        batch: Vec::with_capacity(BATCH),
        seq: log.head(),
        ts: DateTime::<Utc>::from_timestamp(1_795_510_800, 0).unwrap_or_default(),
        rng: StdRng::seed_from_u64(seed ^ 0x5EED),
    };
    car_events::replay(log, &mut sink.state, 1, |_| {})
        .map_err(|err| LogError::Io(format!("the log does not replay: {err}")))?;
    let mut history = Generator::new(seed, workload.agents, workload.turns_per_run);
    for event in history.header() {
        sink.push(event, &mut progress)?;
    }
    let end = sink.seq + workload.events;
    while sink.seq < end {
        let event = history.next_event();
        sink.push(event, &mut progress)?;
    }
    for event in recovery::shutdown(&sink.state, "signal") {
        sink.push(event, &mut progress)?;
    }
    sink.flush(&mut progress)?;
    Ok(sink.state)
}

/// Stamps, checks and buffers events, appending them in batches.
struct Sink<'a> {
    log: &'a dyn EventLog,
    state: State,
    batch: Vec<Envelope>,
    seq: Seq,
    ts: DateTime<Utc>,
    rng: StdRng,
}

impl Sink<'_> {
    fn push(&mut self, event: Event, progress: &mut impl FnMut(Seq)) -> Result<(), SynthError> {
        self.seq += 1;
        // 0 to 40 ms between events: a busy daemon, about 12 hours per million events.
        self.ts += TimeDelta::milliseconds(self.rng.random_range(0..=40));
        let env = Envelope {
            seq: self.seq,
            event_id: Uuid::from_u64_pair(self.rng.random(), self.seq),
            ts: self.ts,
            schema_version: SCHEMA_VERSION,
            event,
        };
        self.state.apply(&env)?;
        self.batch.push(env);
        if self.batch.len() == BATCH {
            self.flush(progress)?;
        }
        Ok(())
    }

    fn flush(&mut self, progress: &mut impl FnMut(Seq)) -> Result<(), SynthError> {
        if !self.batch.is_empty() {
            self.log.append(&self.batch)?;
            self.batch.clear();
            progress(self.seq);
        }
        Ok(())
    }
}

/// One connected agent and what it is doing.
#[derive(Debug)]
struct Agent {
    agent_id: String,
    /// Its current session, if connected.
    session: Option<String>,
    /// Its current run: id, turns recorded, turns it will record.
    run: Option<(String, u32, u32)>,
    /// Events it has decided and not yet emitted (one comes out per turn it gets, so
    /// agents interleave).
    queue: VecDeque<Event>,
}

/// The history: the agents, the host, counters for ids.
#[derive(Debug)]
struct Generator {
    rng: StdRng,
    agents: Vec<Agent>,
    host: String,
    turns_per_run: u32,
    next_session: u64,
    next_run: u64,
    next_request: u64,
    next_proposal: u64,
    next_approval: u64,
    /// Approvals waiting for the host, with how many more events until it answers.
    pending_approvals: VecDeque<(String, u32)>,
}

impl Generator {
    fn new(seed: u64, agents: usize, turns_per_run: u32) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            agents: (0..agents.max(1))
                .map(|i| Agent {
                    agent_id: format!("agent-{i:02}"),
                    session: None,
                    run: None,
                    queue: VecDeque::new(),
                })
                .collect(),
            host: "session-host".into(),
            turns_per_run: turns_per_run.max(1),
            next_session: 0,
            next_run: 0,
            next_request: 0,
            next_proposal: 0,
            next_approval: 0,
            pending_approvals: VecDeque::new(),
        }
    }

    /// The opening of the log: a daemon start and a host watching the feed.
    fn header(&self) -> Vec<Event> {
        vec![
            Event::DaemonStarted(DaemonStarted {
                version: "synthetic".into(),
                pid: 4242,
                data_dir: "/var/lib/car".into(),
                listen: "127.0.0.1:9100".into(),
            }),
            Event::DaemonRecovered(DaemonRecovered {
                events_replayed: 0,
                runs_adopted: 0,
                sessions_closed: 0,
                approvals_expired: 0,
                subscriptions_closed: 0,
                tool_calls_cancelled: 0,
                runs_evicted: 0,
            }),
            Event::SessionOpened(SessionOpened {
                client_id: self.host.clone(),
                peer: "127.0.0.1:50000".into(),
                role: None,
                agent_id: None,
            }),
            Event::SessionAuthenticated(SessionAuthenticated {
                client_id: self.host.clone(),
                role: Role::Host,
                agent_id: None,
            }),
            Event::SubscriptionOpened(SubscriptionOpened {
                subscription_id: "sub-host".into(),
                client_id: self.host.clone(),
                target: SubscriptionTarget::Host,
            }),
        ]
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.random_range(0..n.max(1))
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn text(&mut self, words: usize) -> String {
        let mut out = String::with_capacity(words * 8);
        for i in 0..words {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(WORDS[self.below(WORDS.len() as u64) as usize]);
        }
        out
    }

    fn tool(&mut self) -> &'static str {
        TOOLS[self.below(TOOLS.len() as u64) as usize]
    }

    fn turn(&mut self, tool: &str) -> JsonText {
        let prompt = self.text(12);
        let output = self.text(16);
        let query = self.text(3);
        JsonText::from_value(&json!({
            "prompt": prompt,
            "tool": tool,
            "parameters": {"query": query, "limit": 10},
            "output": output,
            "verifier_verdict": "not_run",
            "policy_rejected": false,
        }))
    }

    /// The next event of the history.
    fn next_event(&mut self) -> Event {
        if let Some((_, wait)) = self.pending_approvals.front_mut() {
            if *wait == 0 {
                let approve = self.chance(80);
                if let Some((approval_id, _)) = self.pending_approvals.pop_front() {
                    return Event::ApprovalResolved(ApprovalResolved {
                        approval_id,
                        resolution: if approve { "approve" } else { "deny" }.into(),
                        client_id: Some(self.host.clone()),
                    });
                }
            } else {
                *wait -= 1;
            }
        }
        let who = self.below(self.agents.len() as u64) as usize;
        loop {
            if let Some(event) = self.agents[who].queue.pop_front() {
                return event;
            }
            self.plan(who);
        }
    }

    /// Queues what agent `who` does next (at least one event).
    fn plan(&mut self, who: usize) {
        let agent_id = self.agents[who].agent_id.clone();
        let Some(session) = self.agents[who].session.clone() else {
            self.next_session += 1;
            let client_id = format!("session-{:07}", self.next_session);
            let peer = format!("127.0.0.1:{}", 40_000 + self.next_session % 20_000);
            let agent = &mut self.agents[who];
            agent.session = Some(client_id.clone());
            agent.queue.push_back(Event::SessionOpened(SessionOpened {
                client_id: client_id.clone(),
                peer,
                role: None,
                agent_id: None,
            }));
            agent
                .queue
                .push_back(Event::SessionAuthenticated(SessionAuthenticated {
                    client_id,
                    role: Role::Agent,
                    agent_id: Some(agent_id),
                }));
            return;
        };
        let Some((run_id, done, target)) = self.agents[who].run.clone() else {
            self.next_run += 1;
            let run_id = format!("run-{:07}", self.next_run);
            let spread = u64::from(self.turns_per_run / 5).max(1);
            let target = self.turns_per_run - self.turns_per_run / 10 + self.below(spread) as u32;
            let intent = self.text(6);
            let agent = &mut self.agents[who];
            agent.run = Some((run_id.clone(), 0, target.max(1)));
            agent.queue.push_back(Event::RunStarted(RunStarted {
                run_id,
                agent_id,
                client_id: Some(session),
                intent,
                outcome_description: Some("a short written answer".into()),
                idempotency_key: None,
            }));
            return;
        };
        if done >= target {
            self.end_run(who, session, run_id, agent_id);
            return;
        }
        let roll = self.below(100);
        if roll < 4 {
            self.proposal(who, session, run_id, done);
        } else if roll < 5 {
            self.approval(who, session, agent_id);
        } else {
            let count = if roll < 15 {
                2 + self.below(4) as u32
            } else {
                1
            }
            .min(target - done);
            let turns = (0..count)
                .map(|_| {
                    let tool = self.tool();
                    self.turn(tool)
                })
                .collect();
            let agent = &mut self.agents[who];
            agent.run = Some((run_id.clone(), done + count, target));
            agent.queue.push_back(Event::TurnsRecorded(TurnsRecorded {
                run_id,
                base_index: done,
                turns,
            }));
        }
    }

    /// A proposal of one action, dispatched as a tool call (retried after a timeout,
    /// sometimes failing), whose result becomes the run's next turn.
    fn proposal(&mut self, who: usize, session: String, run_id: String, done: u32) {
        self.next_proposal += 1;
        let proposal_id = format!("proposal-{:07}", self.next_proposal);
        let tool = self.tool();
        let mut events = vec![Event::ProposalSubmitted(ProposalSubmitted {
            proposal_id: proposal_id.clone(),
            client_id: session.clone(),
            run_id: Some(run_id.clone()),
            action_ids: vec!["action-1".into()],
        })];
        let attempts = if self.chance(10) { 2 } else { 1 };
        let mut failed = false;
        for attempt in 1..=attempts {
            self.next_request += 1;
            let request_id = format!("rpc-{:08}", self.next_request);
            let query = self.text(3);
            events.push(Event::ToolCallDispatched(ToolCallDispatched {
                request_id: request_id.clone(),
                client_id: session.clone(),
                proposal_id: proposal_id.clone(),
                action_id: "action-1".into(),
                tool: tool.into(),
                parameters: JsonText::from_value(&json!({"query": query})),
                attempt,
                timeout_ms: 30_000,
                run_id: Some(run_id.clone()),
            }));
            let elapsed_ms = 5 + self.below(2_000);
            events.push(if attempt < attempts {
                Event::ToolCallTimedOut(ToolCallTimedOut {
                    request_id,
                    elapsed_ms: 30_000,
                })
            } else if self.chance(10) {
                failed = true;
                Event::ToolCallFailed(ToolCallFailed {
                    request_id,
                    error: "upstream returned 503".into(),
                    elapsed_ms,
                })
            } else {
                let output = self.text(10);
                Event::ToolCallCompleted(ToolCallCompleted {
                    request_id,
                    output: JsonText::from_value(&json!({"result": output})),
                    elapsed_ms,
                })
            });
        }
        let turn = self.turn(tool);
        events.push(Event::TurnsRecorded(TurnsRecorded {
            run_id,
            base_index: done,
            turns: vec![turn],
        }));
        events.push(Event::ProposalFinished(ProposalFinished {
            proposal_id,
            final_state: if failed { "failed" } else { "completed" }.into(),
        }));
        let agent = &mut self.agents[who];
        if let Some(run) = agent.run.as_mut() {
            run.1 = done + 1;
        }
        agent.queue.extend(events);
    }

    /// A system-level approval (as the gate asks them) that the host answers a little later.
    fn approval(&mut self, who: usize, session: String, agent_id: String) {
        self.next_approval += 1;
        let approval_id = format!("approval-{:07}", self.next_approval);
        let wait = 5 + self.below(40) as u32;
        self.pending_approvals
            .push_back((approval_id.clone(), wait));
        self.agents[who]
            .queue
            .push_back(Event::ApprovalRequested(ApprovalRequested {
                approval_id,
                client_id: Some(session),
                agent_id: Some(agent_id),
                action: "tool:messages.send".into(),
                details: JsonText::from_value(
                    &json!({"tool": "messages.send", "params_preview": "{\"to\":\"ops\"}"}),
                ),
                options: vec!["approve".into(), "deny".into()],
                system_level: true,
            }));
    }

    /// Ends a run: mostly with an outcome; sometimes the agent drops and the run ends
    /// `incomplete`/`disconnected` after its session closes.
    fn end_run(&mut self, who: usize, session: String, run_id: String, agent_id: String) {
        let roll = self.below(100);
        let agent = &mut self.agents[who];
        agent.run = None;
        if roll < 5 {
            agent.session = None;
            agent.queue.push_back(Event::SessionClosed(SessionClosed {
                client_id: session,
                role: Some(Role::Agent),
                agent_id: Some(agent_id.clone()),
                reason: "timeout".into(),
            }));
            agent.queue.push_back(Event::RunEnded(RunEnded {
                run_id,
                agent_id,
                termination: Termination::Incomplete {
                    reason: IncompleteReason::Disconnected,
                },
            }));
            return;
        }
        let status = if roll < 15 { "failure" } else { "success" };
        agent.queue.push_back(Event::RunEnded(RunEnded {
            run_id,
            agent_id: agent_id.clone(),
            termination: Termination::Outcome {
                outcome: JsonText::from_value(
                    &json!({"status": status, "summary": "done", "metrics": {"cost_usd": 0.12}}),
                ),
            },
        }));
        if roll > 90 {
            agent.session = None;
            agent.queue.push_back(Event::SessionClosed(SessionClosed {
                client_id: session,
                role: Some(Role::Agent),
                agent_id: Some(agent_id),
                reason: "closed".into(),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use car_events::MemLog;

    fn small() -> Workload {
        Workload {
            events: 20_000,
            turns_per_run: 30,
            agents: 5,
        }
    }

    #[test]
    fn a_history_is_valid_ends_cleanly_and_covers_the_daemons_work() {
        let log = MemLog::new();
        let state = write_log(&log, &small(), 1, |_| {}).unwrap();
        assert_eq!(state.head(), log.head());
        assert!(log.head() >= 20_000);
        let mut replayed = State::new();
        car_events::replay(&log, &mut replayed, 1, |_| {}).unwrap();
        assert_eq!(
            crate::canonical::digest(&replayed),
            crate::canonical::digest(&state)
        );
        assert!(state.run_count() > 100);
        assert!(
            state.runs().all(|run| run.is_ended()),
            "a clean stop ends every run"
        );
        assert_eq!(state.sessions().count(), 0);
        let kinds: std::collections::BTreeSet<&str> =
            log.read_from(1).map(|e| e.unwrap().event.kind()).collect();
        for kind in [
            "run.turns_recorded",
            "tool_call.completed",
            "tool_call.timed_out",
            "approval.resolved",
            "daemon.stopped",
        ] {
            assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
        }
    }

    #[test]
    fn the_same_seed_writes_the_same_history() {
        let (a, b) = (MemLog::new(), MemLog::new());
        write_log(&a, &small(), 7, |_| {}).unwrap();
        write_log(&b, &small(), 7, |_| {}).unwrap();
        let events = |log: &MemLog| log.read_from(1).map(|e| e.unwrap()).collect::<Vec<_>>();
        assert_eq!(events(&a), events(&b));
    }
}
