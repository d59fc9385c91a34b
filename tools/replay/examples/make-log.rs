//! `make-log`: writes a large, realistic, valid event log for benchmarking `car-replay`.
//!
//! ```sh
//! cargo run --release -p car-replay --example make-log -- /tmp/car-bench --events 1000000
//! time target/release/car-replay --data-dir /tmp/car-bench verify
//! ```
//!
//! `car-replay` itself never writes a log, so the benchmark's log comes from here. The
//! history is what a busy daemon records: a host session watching the feed, a number of
//! agents connected at once (their events interleaved), each running one run after the
//! other with ~100 turns (mostly one turn per `run.turns_recorded`, sometimes a batch),
//! some turns done through proposals with tool calls (which complete, fail or time out),
//! some runs asking for approvals that the host resolves, sessions that drop and come
//! back, runs that end `incomplete`, and a clean stop at the end. Every event is folded
//! into a [`State`] as it is generated, so the log is valid by construction. The history
//! is deterministic (a fixed seed, simulated time), so two logs made with the same
//! arguments hold the same events.
//!
//! The data directory gets the daemon's layout (`DIR/log`), so `car-replay --data-dir DIR`
//! reads it. The directory must not hold a log yet.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use car_events::event::{
    ApprovalRequested, ApprovalResolved, DaemonRecovered, DaemonStarted, Event, IncompleteReason,
    ProposalFinished, ProposalSubmitted, Role, RunEnded, RunStarted, SessionAuthenticated,
    SessionClosed, SessionOpened, SubscriptionOpened, SubscriptionTarget, Termination,
    ToolCallCompleted, ToolCallDispatched, ToolCallFailed, ToolCallTimedOut, TurnsRecorded,
};
use car_events::{Envelope, EventLog, JsonText, OpenOptions, SCHEMA_VERSION, Seq, SledLog};
use car_projections::{State, recovery};
use chrono::{DateTime, TimeDelta, Utc};
use clap::Parser;
use serde_json::json;
use uuid::Uuid;

/// Events per append: one flush per 10 000 events keeps the bulk load disk-bound on
/// bytes, not on `fdatasync`s.
const BATCH: usize = 10_000;

/// Writes a synthetic event log for benchmarks.
#[derive(Debug, Parser)]
#[command(name = "make-log")]
struct Args {
    /// The data directory to create (the log goes into DIR/log).
    dir: PathBuf,
    /// How many events to write before the clean stop (which adds a few more).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Turns per run, on average.
    #[arg(long, default_value_t = 100)]
    turns_per_run: u32,
    /// Agents connected at the same time.
    #[arg(long, default_value_t = 16)]
    agents: usize,
    /// Seed of the history.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// splitmix64: a tiny, fast, deterministic generator (no dependency, same output
/// everywhere), good enough to pick what happens next.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

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

/// One connected agent and what it is doing.
#[derive(Debug)]
struct Agent {
    agent_id: String,
    /// Its current session, if connected.
    session: Option<String>,
    /// Its current run and that run's turn count and target.
    run: Option<(String, u32, u32)>,
    /// Events it has decided and not yet emitted (they come out one per turn it gets, so
    /// agents interleave).
    queue: VecDeque<Event>,
}

/// The generator: the agents, the host, counters for ids.
#[derive(Debug)]
struct Generator {
    rng: Rng,
    agents: Vec<Agent>,
    host: String,
    turns_per_run: u32,
    next_session: u64,
    next_run: u64,
    next_request: u64,
    next_proposal: u64,
    next_approval: u64,
    /// Approvals waiting for the host, with how many more steps until it answers.
    pending_approvals: VecDeque<(String, Vec<String>, u32)>,
}

impl Generator {
    fn new(seed: u64, agents: usize, turns_per_run: u32) -> Self {
        Self {
            rng: Rng(seed),
            agents: (0..agents)
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
                version: "make-log".into(),
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

    fn text(&mut self, words: usize) -> String {
        let mut out = String::with_capacity(words * 8);
        for i in 0..words {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(WORDS[self.rng.below(WORDS.len() as u64) as usize]);
        }
        out
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
        if let Some((approval_id, options, wait)) = self.pending_approvals.front_mut() {
            if *wait == 0 {
                let resolution = if self.rng.chance(80) {
                    options[0].clone()
                } else {
                    options[1].clone()
                };
                let approval_id = approval_id.clone();
                self.pending_approvals.pop_front();
                return Event::ApprovalResolved(ApprovalResolved {
                    approval_id,
                    resolution,
                    client_id: Some(self.host.clone()),
                });
            }
            *wait -= 1;
        }
        let who = self.rng.below(self.agents.len() as u64) as usize;
        if self.agents[who].queue.is_empty() {
            self.plan(who);
        }
        self.agents[who]
            .queue
            .pop_front()
            .unwrap_or_else(|| unreachable!("plan always queues an event"))
    }

    /// Queues what agent `who` does next.
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
            let target =
                self.turns_per_run - self.turns_per_run / 10 + self.rng.below(spread) as u32;
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
        let roll = self.rng.below(100);
        if roll < 4 {
            self.proposal(who, session, run_id, done);
        } else if roll < 5 {
            self.approval(who, session, agent_id);
        } else {
            let count = if roll < 15 {
                2 + self.rng.below(4) as u32
            } else {
                1
            }
            .min(target - done);
            let turns = (0..count)
                .map(|_| {
                    let tool = TOOLS[self.rng.below(TOOLS.len() as u64) as usize];
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
        let tool = TOOLS[self.rng.below(TOOLS.len() as u64) as usize];
        let mut events = vec![Event::ProposalSubmitted(ProposalSubmitted {
            proposal_id: proposal_id.clone(),
            client_id: session.clone(),
            run_id: Some(run_id.clone()),
            action_ids: vec!["action-1".into()],
        })];
        let attempts = if self.rng.chance(10) { 2 } else { 1 };
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
            let elapsed_ms = 5 + self.rng.below(2_000);
            events.push(if attempt < attempts {
                Event::ToolCallTimedOut(ToolCallTimedOut {
                    request_id,
                    elapsed_ms: 30_000,
                })
            } else if self.rng.chance(10) {
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
            run_id: run_id.clone(),
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
        let options = vec!["approve".to_owned(), "deny".to_owned()];
        let wait = 5 + self.rng.below(40) as u32;
        self.pending_approvals
            .push_back((approval_id.clone(), options.clone(), wait));
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
                options,
                system_level: true,
            }));
    }

    /// Ends a run: mostly with an outcome; sometimes the agent drops and the run ends
    /// `incomplete`/`disconnected` after its session closes.
    fn end_run(&mut self, who: usize, session: String, run_id: String, agent_id: String) {
        let roll = self.rng.below(100);
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

/// Stamps, checks and buffers events, appending them in batches.
#[derive(Debug)]
struct Sink {
    log: SledLog,
    state: State,
    batch: Vec<Envelope>,
    seq: Seq,
    ts: DateTime<Utc>,
    rng: Rng,
}

impl Sink {
    fn push(&mut self, event: Event) -> anyhow::Result<()> {
        self.seq += 1;
        // 0 to 40 ms between events: a busy daemon, about 12 hours per million events.
        self.ts += TimeDelta::milliseconds(self.rng.below(41) as i64);
        let env = Envelope {
            seq: self.seq,
            event_id: Uuid::from_u64_pair(self.rng.next(), self.seq),
            ts: self.ts,
            schema_version: SCHEMA_VERSION,
            event,
        };
        self.state
            .apply(&env)
            .context("the generator made an invalid event")?;
        self.batch.push(env);
        if self.batch.len() == BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.log.append(&self.batch)?;
        self.batch.clear();
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let log_dir = args.dir.join("log");
    if log_dir.exists() {
        bail!("{} already exists: give a new directory", log_dir.display());
    }
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let started = Instant::now();
    let log = SledLog::open(&log_dir, OpenOptions::default())?;
    let mut sink = Sink {
        log,
        state: State::new(),
        batch: Vec::with_capacity(BATCH),
        seq: 0,
        ts: DateTime::parse_from_rfc3339("2026-11-24T09:00:00Z")?.with_timezone(&Utc),
        rng: Rng(args.seed ^ 0x5EED),
    };
    let mut generator = Generator::new(args.seed, args.agents, args.turns_per_run);
    for event in generator.header() {
        sink.push(event)?;
    }
    while sink.seq < args.events {
        let event = generator.next_event();
        sink.push(event)?;
    }
    for event in recovery::shutdown(&sink.state, "signal") {
        sink.push(event)?;
    }
    sink.flush()?;
    let runs = sink.state.run_count();
    let head = sink.log.head();
    let bytes = sink.log.size_on_disk();
    println!(
        "wrote {head} events ({runs} runs) to {} in {:.1} s; {:.1} MiB on disk",
        log_dir.display(),
        started.elapsed().as_secs_f64(),
        bytes as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}
