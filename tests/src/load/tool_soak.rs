//! The tool-call crash soak (`car-soak tools`): the daemon is cut off by SIGKILL while
//! tool clients are in the middle of `tools.execute` calls, and after every restart each
//! call and each proposal is checked against what its client saw (PROTOCOL.md §4.2, §14.5).
//!
//! A cycle: N tool clients connect (role `client`), register the tool `soak.tool`, and
//! submit proposals one at a time: 1 to `max_actions` actions each, with seeded ids and a
//! seeded plan per action (`failure_behavior` abort, `continue` or `retry` with
//! `max_retries` 0–2, and how many first attempts the client answers with an error, as a
//! JSON-RPC error or an `{"error": …}` result). Each client answers every `tools.execute`
//! after a random delay of up to `max_reply_ms`, so kills land mid-call, and records every
//! call it receives as (proposal, action, attempt) with how it answered; a small share of
//! calls it abandons instead by closing its connection (a client's own disconnect) and then
//! reconnects. After a seeded random delay the daemon gets SIGKILL and is started again on
//! the same data directory; a host session reads the tool-call events of the log
//! (`log.read`, paged, from where the last cycle stopped) and a fresh `client` session asks
//! `proposal.result` for every proposal of the cycle. The checks:
//!
//! - no `tools.execute` is received twice for the same (proposal, action, attempt), across
//!   the whole soak and every reconnect, and a connection only ever receives calls of the
//!   proposal it has in flight (a new connection never gets a call of an old proposal);
//! - every `tools.execute` a client received has its `tool_call.dispatched` marker in the
//!   log (same request id, proposal, action and attempt), and the log never holds two
//!   markers for one (proposal, action, attempt);
//! - every marker has exactly one outcome event after it (`completed`, `failed`,
//!   `timed_out`, `cancelled` or `indeterminate`), and no outcome lacks its marker;
//! - the outcome fits what the client did, and no more than that. A call the client had not
//!   answered when the daemon was killed is `indeterminate`: nothing else can be true (the
//!   daemon died before it could see a reply, a timeout — 300 s — or a disconnect). A call
//!   answered with an output is `completed` or, when the reply was still unread at the kill,
//!   `indeterminate`; one answered with an error `failed` or `indeterminate`. A call the
//!   client abandoned by closing its connection is `cancelled` (the daemon saw the
//!   disconnect) or `indeterminate` (it was killed first). A marker whose call the client
//!   never received (dispatched, then killed before the send) is `indeterminate`, or
//!   `cancelled` when its client had just closed the connection;
//! - `proposal.result` answers every proposal whose `proposal.submit` was answered with
//!   exactly that answer plus `state: "completed"`, and that answer is what the client's
//!   plan implies (statuses, outputs, errors, attempts; abort/continue/retry as §4.2);
//! - every proposal with a marker in the log (in particular every one a client saw
//!   accepted by a `tools.execute`) answers `state: "completed"`, `final_state: "failed"`
//!   unless it was answered: the actions before the last marker's as the plan implies, the
//!   last marker's action `indeterminate` with that attempt when the marker got
//!   `indeterminate`, and never `skipped` when it had a marker at all (`skipped` says the
//!   tool never ran); the actions after it `skipped`, or failed with "client
//!   disconnected" after a client's own disconnect. A proposal sent without any marker is
//!   `not_found` or completed with every action `skipped`; none is ever `in_progress`.
//!
//! At the end the whole log and every proposal of every cycle are checked once more
//! against the last daemon. Each violation names the proposal, the action and attempt
//! when there is one, and the reason.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};

use crate::load::cycles;
use crate::load::server::{ServerProcess, ServerSpec};
use crate::load::ws::{CALL_TIMEOUT, Conn, outcome};

/// The one tool every client registers.
const TOOL: &str = "soak.tool";
/// The error of an action whose client left (the daemon's text, PROTOCOL.md §4.2).
const GONE: &str = "client disconnected";
/// What an `indeterminate` action's error starts with (PROTOCOL.md §14.5).
const INDETERMINATE: &str = "outcome unknown";
/// The outcome kinds of a tool call (PROTOCOL.md §14.5), then its marker.
const OUTCOME_KINDS: [&str; 5] = [
    "tool_call.completed",
    "tool_call.failed",
    "tool_call.timed_out",
    "tool_call.cancelled",
    "tool_call.indeterminate",
];
const MARKER_KIND: &str = "tool_call.dispatched";
/// How an action ended (read to say so in a violation).
const ACTION_FINISHED_KIND: &str = "proposal.action_finished";
/// `log.read`'s largest page (PROTOCOL.md §7).
const LOG_PAGE: u64 = 10_000;
/// Share of actions with `failure_behavior: retry`, and with `continue`.
const RETRY_SHARE: f64 = 0.35;
const CONTINUE_SHARE: f64 = 0.15;
/// Share of non-retry actions whose one attempt the client answers with an error.
const FAIL_SHARE: f64 = 0.1;

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct ToolSoakOptions {
    /// Kill/restart/check cycles.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub cycles: u32,
    /// Concurrent tool clients.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub clients: u32,
    /// Seed of the kill schedule, the proposals and the replies (default: from the clock;
    /// printed either way, so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The longest time from the clients' start to the kill, in milliseconds.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_kill_ms: u64,
    /// The most actions per proposal (each draws 1 to this many).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_actions: u32,
    /// The longest a client waits before answering a `tools.execute`, in milliseconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub max_reply_ms: u64,
    /// Share of `tools.execute` calls a client abandons by closing its connection (then it
    /// reconnects and goes on).
    #[arg(long, default_value_t = 0.02, value_parser = share)]
    pub disconnect_share: f64,
    /// The data directory (kept). Default: a fresh directory under `target/load`,
    /// removed after a clean run and kept after a violation.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The daemon binary (default: this executable, which runs `car_gateway::cli::main`
    /// when re-executed by the soak).
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// Skip the final check of the whole log and every proposal against the last daemon.
    #[arg(long)]
    pub no_final_check: bool,
}

fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{text}` is not a share between 0 and 1")),
    }
}

/// Which promise a violation breaks.
pub mod rule {
    /// A call received twice, dispatched twice, or on a connection not its proposal's.
    pub const DUPLICATE_CALL: &str = "duplicate_call";
    /// A call received without its marker in the log, or a marker that does not match.
    pub const MARKER: &str = "marker";
    /// A marker without exactly one outcome after it, or with one its client rules out.
    pub const OUTCOME: &str = "outcome";
    /// `proposal.submit` or `proposal.result` does not answer as promised.
    pub const RESULT: &str = "result";
    /// An action whose tool call was dispatched, and whose call has a recorded outcome,
    /// reported `skipped` (attempts 0) by the result start-up completes the proposal with
    /// (a daemon bug this soak found, now fixed: `tests::regression_…`).
    pub const RAN_REPORTED_SKIPPED: &str = "ran_reported_skipped";
    /// The daemon did not come back after a kill.
    pub const RESTART: &str = "restart";
}

/// One broken promise.
#[derive(Debug, Clone, Serialize)]
pub struct ToolViolation {
    /// The cycle whose check found it (0: the final check).
    pub cycle: u32,
    /// Which promise ([`rule`]).
    pub rule: &'static str,
    /// The proposal (`-` for a daemon-wide finding).
    pub proposal_id: String,
    /// The action, when the violation is about one.
    pub action_id: Option<String>,
    /// The attempt, when the violation is about one tool call.
    pub attempt: Option<u32>,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for ToolViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.cycle == 0 {
            write!(f, "final check: ")?;
        } else {
            write!(f, "cycle {}: ", self.cycle)?;
        }
        write!(f, "proposal {}", self.proposal_id)?;
        if let Some(action) = &self.action_id {
            write!(f, " action {action}")?;
        }
        if let Some(attempt) = self.attempt {
            write!(f, " attempt {attempt}")?;
        }
        write!(f, ": [{}] {}", self.rule, self.reason)
    }
}

/// One cycle's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ToolCycleReport {
    /// Its number, from 1.
    pub cycle: u32,
    /// When the daemon was killed, after the clients started.
    pub kill_after_ms: u64,
    /// Proposals sent (`proposal.submit`).
    pub proposals: u64,
    /// Proposals whose `proposal.submit` was answered.
    pub answered: u64,
    /// Proposals cut off: a `tools.execute` received, no answer.
    pub cut_off: u64,
    /// `tools.execute` calls received.
    pub tool_calls: u64,
    /// Calls still unanswered by their client when the daemon was killed.
    pub in_flight_at_kill: u64,
    /// Calls a client abandoned by closing its connection.
    pub disconnects: u64,
    /// `tool_call.indeterminate` outcomes the restart appended.
    pub indeterminate: u64,
    /// Dispatch markers checked (new in the cycle).
    pub markers: u64,
    /// The restarted daemon's start-up, spawn to listening, in milliseconds.
    pub restart_ms: u64,
    /// Violations found in the cycle.
    pub violations: u64,
}

impl std::fmt::Display for ToolCycleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cycle {:>3}: killed at {:>4} ms; proposals {:>4} sent, {:>4} answered, {:>2} cut \
             off; tool calls {:>5} ({:>2} in flight at the kill, {:>2} abandoned); markers {:>5}; \
             indeterminate {:>2}; restart {:>4} ms; violations {}",
            self.cycle,
            self.kill_after_ms,
            self.proposals,
            self.answered,
            self.cut_off,
            self.tool_calls,
            self.in_flight_at_kill,
            self.disconnects,
            self.markers,
            self.indeterminate,
            self.restart_ms,
            self.violations
        )
    }
}

/// The whole soak's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ToolSoakReport {
    /// The seed used.
    pub seed: u64,
    /// Cycles run.
    pub cycles: u32,
    /// Tool clients.
    pub clients: u32,
    /// Proposals sent.
    pub proposals: u64,
    /// Proposals answered.
    pub answered: u64,
    /// Proposals cut off (a call received, no answer).
    pub cut_off: u64,
    /// `tools.execute` calls received.
    pub tool_calls: u64,
    /// Calls unanswered by their client at a kill.
    pub in_flight_at_kill: u64,
    /// Calls abandoned by a client's own disconnect.
    pub disconnects: u64,
    /// `tool_call.indeterminate` outcomes appended by the restarts.
    pub indeterminate: u64,
    /// Dispatch markers in the log.
    pub markers: u64,
    /// Proposals checked in the final check (0 when skipped).
    pub final_checked: u64,
    /// Every violation found.
    pub violations: Vec<ToolViolation>,
    /// Wall-clock time of the soak.
    pub elapsed_secs: f64,
    /// The data directory (kept after a violation or when given).
    pub data_dir: PathBuf,
}

impl std::fmt::Display for ToolSoakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rules: Vec<(&str, usize)> = Vec::new();
        for violation in &self.violations {
            match rules.iter_mut().find(|(r, _)| *r == violation.rule) {
                Some((_, n)) => *n += 1,
                None => rules.push((violation.rule, 1)),
            }
        }
        let by_rule = if rules.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = rules.iter().map(|(r, n)| format!("{r} {n}")).collect();
            format!(" ({})", list.join(", "))
        };
        write!(
            f,
            "{} cycles, {} tool clients, seed {}: {} proposals ({} answered, {} cut off); {} \
             tool calls ({} in flight at a kill, {} abandoned by a disconnect); {} markers; {} \
             indeterminate; final check of {} proposals; {} violations{by_rule}; {:.1} s",
            self.cycles,
            self.clients,
            self.seed,
            self.proposals,
            self.answered,
            self.cut_off,
            self.tool_calls,
            self.in_flight_at_kill,
            self.disconnects,
            self.markers,
            self.indeterminate,
            self.final_checked,
            self.violations.len(),
            self.elapsed_secs
        )
    }
}

/// An action's `failure_behavior`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behavior {
    Abort,
    Continue,
    Retry { max_retries: u32 },
}

/// What a client sends as one action and how it will answer its calls.
#[derive(Debug, Clone)]
struct ActionPlan {
    id: String,
    behavior: Behavior,
    /// The first this many attempts are answered with an error.
    fails: u32,
    /// Errors as an `{"error": …}` result rather than a JSON-RPC error.
    error_as_result: bool,
}

impl ActionPlan {
    fn draw(rng: &mut StdRng, index: usize) -> Self {
        let id = format!("a{}", index + 1);
        let roll: f64 = rng.random();
        let (behavior, fails) = if roll < RETRY_SHARE {
            let max_retries = rng.random_range(0..=2);
            // Mostly one failed attempt, so attempt 2 is common; sometimes all of them.
            let fails = match rng.random_range(0..10) {
                0..=1 => 0,
                2..=7 => 1.min(max_retries + 1),
                _ => max_retries + 1,
            };
            (Behavior::Retry { max_retries }, fails)
        } else if roll < RETRY_SHARE + CONTINUE_SHARE {
            (Behavior::Continue, u32::from(rng.random_bool(0.3)))
        } else {
            (Behavior::Abort, u32::from(rng.random_bool(FAIL_SHARE)))
        };
        Self {
            id,
            behavior,
            fails,
            error_as_result: rng.random_bool(0.5),
        }
    }

    fn attempts_allowed(&self) -> u32 {
        match self.behavior {
            Behavior::Retry { max_retries } => max_retries + 1,
            _ => 1,
        }
    }

    fn wire(&self, proposal_id: &str) -> Value {
        let mut action = json!({
            "id": self.id,
            "type": "tool_call",
            "tool": TOOL,
            "parameters": {"proposal_id": proposal_id, "action_id": self.id},
        });
        match self.behavior {
            Behavior::Abort => {}
            Behavior::Continue => action["failure_behavior"] = json!("continue"),
            Behavior::Retry { max_retries } => {
                action["failure_behavior"] = json!("retry");
                action["max_retries"] = json!(max_retries);
            }
        }
        action
    }

    /// The output of a successful attempt.
    fn output(&self, proposal_id: &str, attempt: u32) -> Value {
        json!({"proposal_id": proposal_id, "action_id": self.id, "attempt": attempt, "ok": true})
    }

    /// The error text of a failed attempt.
    fn error(&self, proposal_id: &str, attempt: u32) -> String {
        format!("soak failure: {proposal_id} {} attempt {attempt}", self.id)
    }

    /// Whether the client answers `attempt` with an error.
    fn fails_at(&self, attempt: u32) -> bool {
        attempt <= self.fails
    }

    /// The reply frame to `attempt`'s `tools.execute` with JSON-RPC id `request_id`.
    fn reply(&self, proposal_id: &str, request_id: &Value, attempt: u32) -> String {
        let frame = if !self.fails_at(attempt) {
            json!({"jsonrpc": "2.0", "id": request_id, "result": self.output(proposal_id, attempt)})
        } else if self.error_as_result {
            json!({"jsonrpc": "2.0", "id": request_id,
                   "result": {"error": self.error(proposal_id, attempt)}})
        } else {
            json!({"jsonrpc": "2.0", "id": request_id,
                   "error": {"code": -32000, "message": self.error(proposal_id, attempt)}})
        };
        frame.to_string()
    }

    /// Its entry in `results` when it runs to its end as planned (PROTOCOL.md §4.2).
    fn expected(&self, proposal_id: &str) -> Value {
        let allowed = self.attempts_allowed();
        if self.fails < allowed {
            let attempt = self.fails + 1;
            json!({"action_id": self.id, "status": "succeeded",
                   "output": self.output(proposal_id, attempt), "attempts": attempt})
        } else {
            json!({"action_id": self.id, "status": "failed",
                   "error": self.error(proposal_id, allowed), "attempts": allowed})
        }
    }

    /// Whether the proposal goes on after this action as planned.
    fn goes_on(&self) -> bool {
        self.fails < self.attempts_allowed() || self.behavior == Behavior::Continue
    }
}

/// The `proposal.submit` result a proposal run to its end as planned gets.
fn expected_result(proposal_id: &str, plan: &[ActionPlan]) -> Value {
    let mut results = Vec::new();
    let (mut outputs, mut errors) = (serde_json::Map::new(), serde_json::Map::new());
    let mut stopped = false;
    let mut failed = false;
    for action in plan {
        if stopped {
            results.push(skipped(&action.id));
            continue;
        }
        let entry = action.expected(proposal_id);
        if let Some(output) = entry.get("output") {
            outputs.insert(action.id.clone(), output.clone());
        }
        if let Some(error) = entry.get("error") {
            errors.insert(action.id.clone(), error.clone());
            failed = true;
        }
        stopped = !action.goes_on();
        results.push(entry);
    }
    json!({
        "proposal_id": proposal_id,
        "final_state": if failed { "failed" } else { "completed" },
        "outputs": outputs,
        "errors": errors,
        "results": results,
    })
}

fn skipped(action_id: &str) -> Value {
    json!({"action_id": action_id, "status": "skipped", "attempts": 0})
}

/// How a client answered a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// Not answered when the connection dropped (the kill).
    Pending,
    /// Answered with an output.
    Output,
    /// Answered with an error.
    Error,
    /// The client closed its connection instead of answering.
    Abandoned,
}

/// One `tools.execute` a client received.
#[derive(Debug, Clone)]
struct CallSeen {
    request_id: String,
    action_id: String,
    attempt: u32,
    reply: Reply,
}

/// What a client knows of one of its proposals.
#[derive(Debug, Clone)]
struct ProposalLedger {
    proposal_id: String,
    plan: Vec<ActionPlan>,
    /// Every call received for it, in order.
    calls: Vec<CallSeen>,
    /// `proposal.submit`'s result, once answered.
    answer: Option<Value>,
    /// The client closed its connection instead of answering one of its calls.
    abandoned: bool,
}

/// A tool client, across cycles.
#[derive(Debug)]
struct ToolClient {
    client: u32,
    next_proposal: u32,
    rng: StdRng,
    /// Every (proposal, action, attempt) this client ever received a call for.
    seen: HashSet<(String, String, u32)>,
}

/// A dispatch marker as the log holds it.
#[derive(Debug, Clone)]
struct Marker {
    seq: u64,
    request_id: String,
    proposal_id: String,
    action_id: String,
    attempt: u32,
}

/// The tool-call events of the log, read incrementally.
#[derive(Debug, Default)]
struct LogModel {
    /// Where the next read starts.
    next_seq: u64,
    markers: HashMap<String, Marker>,
    /// Markers by proposal, in log order.
    by_proposal: HashMap<String, Vec<String>>,
    /// (proposal, action, attempt) → request id of its first marker.
    by_key: HashMap<(String, String, u32), String>,
    /// Outcome events by request id: (seq, kind).
    outcomes: HashMap<String, Vec<(u64, String)>>,
    /// (proposal, action) of every `proposal.action_finished`.
    finished: HashSet<(String, String)>,
}

impl LogModel {
    fn new() -> Self {
        Self {
            next_seq: 1,
            ..Self::default()
        }
    }

    /// The outcome kind of a call, when it has exactly one.
    fn outcome_of(&self, request_id: &str) -> Option<&str> {
        match self.outcomes.get(request_id).map(Vec::as_slice) {
            Some([(_, kind)]) => Some(kind.as_str()),
            _ => None,
        }
    }

    /// Whether the log has the action's `proposal.action_finished`.
    fn action_finished(&self, proposal_id: &str, action_id: &str) -> bool {
        self.finished
            .contains(&(proposal_id.to_owned(), action_id.to_owned()))
    }

    /// A proposal's last marker.
    fn last_marker(&self, proposal_id: &str) -> Option<&Marker> {
        self.by_proposal
            .get(proposal_id)
            .and_then(|ids| ids.last())
            .and_then(|id| self.markers.get(id))
    }

    /// Reads the tool-call events from `next_seq` to the head, checking as it goes that
    /// no (proposal, action, attempt) is dispatched twice, that every outcome has its
    /// marker before it, and that no call gets a second outcome. Returns the seq the read
    /// began at (markers from there on are this read's) and the `indeterminate` outcomes
    /// read.
    async fn read_on(
        &mut self,
        host: &mut Conn,
        cycle: u32,
        violations: &mut Vec<ToolViolation>,
    ) -> anyhow::Result<(u64, u64)> {
        let began = self.next_seq;
        let mut indeterminate = 0;
        let kinds: Vec<&str> = [MARKER_KIND, ACTION_FINISHED_KIND]
            .into_iter()
            .chain(OUTCOME_KINDS)
            .collect();
        loop {
            let page = host
                .ok(
                    "log.read",
                    json!({"from_seq": self.next_seq, "limit": LOG_PAGE, "kinds": kinds}),
                )
                .await?;
            let events = page["events"]
                .as_array()
                .with_context(|| format!("log.read: no events in {page}"))?;
            let next = page["next_seq"].as_u64().context("log.read: no next_seq")?;
            let head = page["head_seq"].as_u64().context("log.read: no head_seq")?;
            for event in events {
                let seq = event["seq"]
                    .as_u64()
                    .context("log.read: an event without seq")?;
                let kind = event["kind"].as_str().unwrap_or_default();
                let data = &event["data"];
                let request_id = data["request_id"].as_str().unwrap_or_default().to_owned();
                if kind == ACTION_FINISHED_KIND {
                    let text = |field: &str| data[field].as_str().unwrap_or_default().to_owned();
                    self.finished
                        .insert((text("proposal_id"), text("action_id")));
                } else if kind == MARKER_KIND {
                    let marker = Marker {
                        seq,
                        request_id: request_id.clone(),
                        proposal_id: data["proposal_id"].as_str().unwrap_or_default().into(),
                        action_id: data["action_id"].as_str().unwrap_or_default().into(),
                        attempt: data["attempt"].as_u64().unwrap_or_default() as u32,
                    };
                    let key = (
                        marker.proposal_id.clone(),
                        marker.action_id.clone(),
                        marker.attempt,
                    );
                    if let Some(first) = self.by_key.get(&key) {
                        violations.push(ToolViolation {
                            cycle,
                            rule: rule::DUPLICATE_CALL,
                            proposal_id: key.0.clone(),
                            action_id: Some(key.1.clone()),
                            attempt: Some(key.2),
                            reason: format!(
                                "dispatched twice: markers {first} and {request_id} (seq {seq})"
                            ),
                        });
                    } else {
                        self.by_key.insert(key, request_id.clone());
                    }
                    if self.markers.contains_key(&request_id) {
                        violations.push(daemon_wide(
                            cycle,
                            rule::MARKER,
                            format!("two markers with request id {request_id} (seq {seq})"),
                        ));
                        continue;
                    }
                    self.by_proposal
                        .entry(marker.proposal_id.clone())
                        .or_default()
                        .push(request_id.clone());
                    self.markers.insert(request_id, marker);
                } else {
                    if kind == "tool_call.indeterminate" {
                        indeterminate += 1;
                    }
                    let Some(marker) = self.markers.get(&request_id) else {
                        violations.push(daemon_wide(
                            cycle,
                            rule::OUTCOME,
                            format!("{kind} at seq {seq} for call {request_id}, which has no marker before it"),
                        ));
                        continue;
                    };
                    let earlier = self.outcomes.entry(request_id.clone()).or_default();
                    if let Some((first_seq, first_kind)) = earlier.first() {
                        violations.push(ToolViolation {
                            cycle,
                            rule: rule::OUTCOME,
                            proposal_id: marker.proposal_id.clone(),
                            action_id: Some(marker.action_id.clone()),
                            attempt: Some(marker.attempt),
                            reason: format!(
                                "a second outcome: {kind} at seq {seq} after {first_kind} at \
                                 seq {first_seq}"
                            ),
                        });
                    }
                    earlier.push((seq, kind.to_owned()));
                }
            }
            if next <= self.next_seq && events.is_empty() && next <= head {
                bail!("log.read did not move on from seq {}", self.next_seq);
            }
            self.next_seq = next.max(self.next_seq);
            if self.next_seq > head {
                return Ok((began, indeterminate));
            }
        }
    }
}

fn daemon_wide(cycle: u32, rule: &'static str, reason: String) -> ToolViolation {
    ToolViolation {
        cycle,
        rule,
        proposal_id: "-".into(),
        action_id: None,
        attempt: None,
        reason,
    }
}

/// Runs the soak; `on_cycle` gets each cycle's figures as it ends. `Err` only when the
/// soak could not be set up or run; broken promises are in the report's violations.
pub async fn run_tool_soak(
    options: &ToolSoakOptions,
    mut on_cycle: impl FnMut(&ToolCycleReport),
) -> anyhow::Result<ToolSoakReport> {
    let started = Instant::now();
    let seed = cycles::seed(options.seed);
    let mut scratch = cycles::scratch(options.data_dir.as_ref(), "tool-soak")?;
    let spec = ServerSpec::new(scratch.path()).bin(options.server_bin.clone());
    let mut schedule = StdRng::seed_from_u64(seed);
    let mut clients: Vec<ToolClient> = (0..options.clients)
        .map(|client| ToolClient {
            client,
            next_proposal: 0,
            rng: cycles::client_rng(seed, client),
            seen: HashSet::new(),
        })
        .collect();
    let mut report = ToolSoakReport {
        seed,
        cycles: 0,
        clients: options.clients,
        proposals: 0,
        answered: 0,
        cut_off: 0,
        tool_calls: 0,
        in_flight_at_kill: 0,
        disconnects: 0,
        indeterminate: 0,
        markers: 0,
        final_checked: 0,
        violations: Vec::new(),
        elapsed_secs: 0.0,
        data_dir: scratch.path().to_owned(),
    };
    let mut all: Vec<ProposalLedger> = Vec::new();
    let mut log = LogModel::new();
    let mut server = ServerProcess::launch(&spec)
        .await
        .context("starting the daemon")?;
    for cycle in 1..=options.cycles {
        let kill_after = cycles::kill_after(&mut schedule, options.max_kill_ms);
        let tasks: Vec<_> = clients
            .drain(..)
            .map(|mut client| {
                let (addr, token) = (server.addr, server.auth_token.clone());
                let options = options.clone();
                tokio::spawn(async move {
                    let mut proposals = Vec::new();
                    let mut violations = Vec::new();
                    let _ended = call_until_cut(
                        addr,
                        &token,
                        &mut client,
                        cycle,
                        &options,
                        seed,
                        &mut proposals,
                        &mut violations,
                    )
                    .await;
                    (client, proposals, violations)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        server.kill().await.context("killing the daemon")?;
        let mut cycle_proposals = Vec::new();
        let mut found = Vec::new();
        for task in tasks {
            let (client, proposals, violations) = tokio::time::timeout(CALL_TIMEOUT * 2, task)
                .await
                .map_err(|_| anyhow!("a client did not notice the kill within {CALL_TIMEOUT:?}"))?
                .context("a client task panicked")?;
            clients.push(client);
            cycle_proposals.extend(proposals);
            found.extend(violations);
        }
        server = match ServerProcess::launch(&spec).await {
            Ok(server) => server,
            Err(err) => {
                report.violations.extend(found);
                report.violations.push(daemon_wide(
                    cycle,
                    rule::RESTART,
                    format!("the daemon did not restart after the kill: {err:#}"),
                ));
                report.cycles = cycle;
                scratch.keep();
                report.elapsed_secs = started.elapsed().as_secs_f64();
                return Ok(report);
            }
        };
        let (markers, indeterminate) =
            check_against(&server, &mut log, &cycle_proposals, cycle, &mut found).await?;
        let calls = || cycle_proposals.iter().flat_map(|p| p.calls.iter());
        let figures = ToolCycleReport {
            cycle,
            kill_after_ms: kill_after,
            proposals: cycle_proposals.len() as u64,
            answered: cycle_proposals
                .iter()
                .filter(|p| p.answer.is_some())
                .count() as u64,
            cut_off: cycle_proposals
                .iter()
                .filter(|p| p.answer.is_none() && !p.calls.is_empty())
                .count() as u64,
            tool_calls: calls().count() as u64,
            in_flight_at_kill: calls().filter(|c| c.reply == Reply::Pending).count() as u64,
            disconnects: calls().filter(|c| c.reply == Reply::Abandoned).count() as u64,
            indeterminate,
            markers,
            restart_ms: server.startup.to_listening.as_millis() as u64,
            violations: found.len() as u64,
        };
        on_cycle(&figures);
        report.cycles = cycle;
        report.proposals += figures.proposals;
        report.answered += figures.answered;
        report.cut_off += figures.cut_off;
        report.tool_calls += figures.tool_calls;
        report.in_flight_at_kill += figures.in_flight_at_kill;
        report.disconnects += figures.disconnects;
        report.indeterminate += indeterminate;
        report.markers += markers;
        report.violations.extend(found);
        all.extend(cycle_proposals);
    }
    if !options.no_final_check {
        // The whole log again, from its first event, and every proposal of every cycle.
        let mut fresh = LogModel::new();
        check_against(&server, &mut fresh, &all, 0, &mut report.violations).await?;
        report.final_checked = all.len() as u64;
    }
    server.terminate().await.context("stopping the daemon")?;
    if !report.violations.is_empty() {
        scratch.keep();
    }
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Reads the log on from where `log` stopped and checks it and `proposals` against the
/// running daemon. Returns the markers read and the `indeterminate` outcomes among the
/// events read.
async fn check_against(
    server: &ServerProcess,
    log: &mut LogModel,
    proposals: &[ProposalLedger],
    cycle: u32,
    found: &mut Vec<ToolViolation>,
) -> anyhow::Result<(u64, u64)> {
    let mut host = Conn::authenticated(server.addr, json!({"host_token": server.host_token}))
        .await
        .context("connecting the host checker")?;
    let (began, indeterminate) = log.read_on(&mut host, cycle, found).await?;
    host.close().await;
    let markers = check_markers(log, began, proposals, cycle, found);
    // `proposal.result` as a client asks it after a reconnect: a fresh `client` session.
    let mut client = Conn::authenticated(server.addr, json!({"token": server.auth_token}))
        .await
        .context("connecting the client checker")?;
    for proposal in proposals {
        check_proposal(&mut client, log, proposal, cycle, found).await?;
    }
    client.close().await;
    Ok((markers, indeterminate))
}

/// Checks every marker from seq `began` on (exactly one outcome, one that fits what the
/// client did) and every call the clients received (its marker is in the log). Returns
/// the markers checked.
fn check_markers(
    log: &LogModel,
    began: u64,
    proposals: &[ProposalLedger],
    cycle: u32,
    found: &mut Vec<ToolViolation>,
) -> u64 {
    let ledgers: HashMap<&str, &ProposalLedger> = proposals
        .iter()
        .map(|p| (p.proposal_id.as_str(), p))
        .collect();
    let mut received: HashMap<&str, (&ProposalLedger, &CallSeen)> = HashMap::new();
    for proposal in proposals {
        for call in &proposal.calls {
            received.insert(call.request_id.as_str(), (proposal, call));
            let broken = |reason: String| ToolViolation {
                cycle,
                rule: rule::MARKER,
                proposal_id: proposal.proposal_id.clone(),
                action_id: Some(call.action_id.clone()),
                attempt: Some(call.attempt),
                reason,
            };
            match log.markers.get(&call.request_id) {
                None => found.push(broken(format!(
                    "the client received tools.execute {} but the log has no marker for it",
                    call.request_id
                ))),
                Some(m)
                    if m.proposal_id != proposal.proposal_id
                        || m.action_id != call.action_id
                        || m.attempt != call.attempt =>
                {
                    found.push(broken(format!(
                        "the marker of call {} says proposal {} action {} attempt {}",
                        call.request_id, m.proposal_id, m.action_id, m.attempt
                    )));
                }
                Some(_) => {}
            }
        }
    }
    let mut checked = 0;
    let mut new: Vec<&Marker> = log.markers.values().filter(|m| m.seq >= began).collect();
    new.sort_by_key(|m| m.seq);
    for marker in new {
        checked += 1;
        let broken = |reason: String| ToolViolation {
            cycle,
            rule: rule::OUTCOME,
            proposal_id: marker.proposal_id.clone(),
            action_id: Some(marker.action_id.clone()),
            attempt: Some(marker.attempt),
            reason,
        };
        let outcomes = log
            .outcomes
            .get(&marker.request_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let kind = match outcomes {
            [] => {
                found.push(broken(format!(
                    "marker {} (seq {}) has no outcome after the restart",
                    marker.request_id, marker.seq
                )));
                continue;
            }
            [(seq, kind)] if *seq > marker.seq => kind.as_str(),
            [(seq, kind)] => {
                found.push(broken(format!(
                    "outcome {kind} at seq {seq} comes before its marker at seq {}",
                    marker.seq
                )));
                continue;
            }
            // A second outcome was reported as it was read.
            _ => continue,
        };
        let (allowed, what): (&[&str], String) = match received.get(marker.request_id.as_str()) {
            Some((_, call)) => match call.reply {
                Reply::Pending => (
                    &["tool_call.indeterminate"],
                    "unanswered by its client when the daemon was killed".into(),
                ),
                Reply::Output => (
                    &["tool_call.completed", "tool_call.indeterminate"],
                    "answered with an output".into(),
                ),
                Reply::Error => (
                    &["tool_call.failed", "tool_call.indeterminate"],
                    "answered with an error".into(),
                ),
                Reply::Abandoned => (
                    &["tool_call.cancelled", "tool_call.indeterminate"],
                    "abandoned by its client's disconnect".into(),
                ),
            },
            None => match ledgers.get(marker.proposal_id.as_str()) {
                Some(p) if p.abandoned => (
                    &["tool_call.cancelled", "tool_call.indeterminate"],
                    "never received (its client had closed its connection)".into(),
                ),
                Some(_) => (
                    &["tool_call.indeterminate"],
                    "never received by its client (dispatched, then the kill)".into(),
                ),
                None => {
                    found.push(ToolViolation {
                        rule: rule::MARKER,
                        ..broken(format!(
                            "marker {} is of no proposal this soak sent",
                            marker.request_id
                        ))
                    });
                    continue;
                }
            },
        };
        if !allowed.contains(&kind) {
            found.push(broken(format!(
                "call {} {what}, yet its outcome is {kind}",
                marker.request_id
            )));
        }
    }
    checked
}

/// Checks one proposal's `proposal.result` against its client's ledger and the log
/// (module docs).
async fn check_proposal(
    client: &mut Conn,
    log: &LogModel,
    proposal: &ProposalLedger,
    cycle: u32,
    found: &mut Vec<ToolViolation>,
) -> anyhow::Result<()> {
    let id = proposal.proposal_id.as_str();
    let broken = |action_id: Option<&str>, attempt: Option<u32>, reason: String| ToolViolation {
        cycle,
        rule: rule::RESULT,
        proposal_id: id.to_owned(),
        action_id: action_id.map(str::to_owned),
        attempt,
        reason,
    };
    let stored = client
        .ok("proposal.result", json!({"proposal_id": id}))
        .await?;
    let last = log.last_marker(id);
    let seen_accepted = proposal.answer.is_some() || !proposal.calls.is_empty() || last.is_some();
    if stored["state"] != "completed" {
        if seen_accepted || stored["not_found"] != true {
            let why = if proposal.answer.is_some() {
                "answered by proposal.submit"
            } else if !proposal.calls.is_empty() {
                "seen accepted by its client (a tools.execute)"
            } else if last.is_some() {
                "dispatched (a marker in the log)"
            } else {
                "sent"
            };
            found.push(broken(
                None,
                None,
                format!("{why}, yet proposal.result answers {stored}"),
            ));
        }
        return Ok(());
    }
    let mut result = stored.clone();
    if let Some(map) = result.as_object_mut() {
        map.remove("state");
    }
    if let Some(answer) = &proposal.answer {
        if result != *answer {
            found.push(broken(
                None,
                None,
                format!("proposal.result answers {stored}, but proposal.submit answered {answer}"),
            ));
        }
        let expected = expected_result(id, &proposal.plan);
        if *answer != expected {
            found.push(broken(
                None,
                None,
                format!("proposal.submit answered {answer}, but the plan implies {expected}"),
            ));
        }
        return Ok(());
    }
    // Cut off by the kill (or by the client's disconnect, then completed by the daemon).
    let entries = result["results"].as_array().cloned().unwrap_or_default();
    let ids: Vec<&str> = entries
        .iter()
        .map(|e| e["action_id"].as_str().unwrap_or_default())
        .collect();
    let planned: Vec<&str> = proposal.plan.iter().map(|a| a.id.as_str()).collect();
    if ids != planned || result["proposal_id"] != id {
        found.push(broken(
            None,
            None,
            format!("proposal.result does not list the actions sent ({planned:?}): {stored}"),
        ));
        return Ok(());
    }
    let all_succeeded = entries.iter().all(|e| e["status"] == "succeeded");
    let final_ok = match result["final_state"].as_str() {
        Some("failed") => true,
        Some("completed") => all_succeeded,
        _ => false,
    };
    if !final_ok {
        found.push(broken(
            None,
            None,
            format!("a proposal cut off is completed with a wrong final_state: {stored}"),
        ));
    }
    let last_index = last.and_then(|m| planned.iter().position(|a| *a == m.action_id));
    for (index, (action, entry)) in proposal.plan.iter().zip(&entries).enumerate() {
        let status = entry["status"].as_str().unwrap_or_default();
        let attempts = entry["attempts"].as_u64().unwrap_or(u64::MAX);
        let error = entry["error"].as_str().unwrap_or_default();
        let gone = proposal.abandoned && status == "failed" && error == GONE;
        match last_index {
            // Before the last dispatched action: it ran to its end, as planned.
            Some(last_index) if index < last_index => {
                if *entry != action.expected(id) && !gone {
                    found.push(broken(
                        Some(&action.id),
                        None,
                        format!(
                            "finished before the kill, so {} was due, but proposal.result has {entry}",
                            action.expected(id)
                        ),
                    ));
                }
            }
            Some(last_index) if index == last_index => {
                let Some(marker) = last else {
                    unreachable!("a last index comes from a last marker")
                };
                let outcome = log.outcome_of(&marker.request_id).unwrap_or("none");
                if status == "skipped" && outcome != "tool_call.indeterminate" {
                    // Regression (rule::RAN_REPORTED_SKIPPED): start-up completed a
                    // proposal from its open calls alone; one whose last call already had
                    // its outcome, but whose action had none yet, got that action
                    // `skipped`, as if its tool had never run.
                    let finished = if log.action_finished(id, &action.id) {
                        "and its proposal.action_finished"
                    } else {
                        "but no proposal.action_finished"
                    };
                    found.push(ToolViolation {
                        rule: rule::RAN_REPORTED_SKIPPED,
                        ..broken(
                            Some(&action.id),
                            Some(marker.attempt),
                            format!(
                                "its call {} (attempt {}) was dispatched and ended {outcome} \
                                 in the log, {finished}, yet proposal.result reports the \
                                 action {entry}: `skipped` says its tool never ran",
                                marker.request_id, marker.attempt
                            ),
                        )
                    });
                    continue;
                }
                // Cut off after its call's outcome and before its own (whose event
                // start-up then writes): start-up reports what that call did, at that
                // attempt; the retries the kill prevented never happen.
                let as_the_call_ended = attempts == u64::from(marker.attempt)
                    && matches!(
                        (status, outcome),
                        ("succeeded", "tool_call.completed")
                            | (
                                "failed",
                                "tool_call.failed" | "tool_call.timed_out" | "tool_call.cancelled"
                            )
                    );
                let fits = match status {
                    // The marker was left open at the kill: that action is indeterminate.
                    "indeterminate" => {
                        attempts == u64::from(marker.attempt) && error.starts_with(INDETERMINATE)
                    }
                    _ if outcome == "tool_call.indeterminate" => false,
                    "succeeded" | "failed" => {
                        *entry == action.expected(id) || as_the_call_ended || gone
                    }
                    // `skipped` says the tool never ran: it had a marker.
                    _ => false,
                };
                if !fits {
                    found.push(broken(
                        Some(&action.id),
                        Some(marker.attempt),
                        format!(
                            "its last call {} (attempt {}) ended {outcome} in the log, yet \
                             proposal.result reports the action as {entry}",
                            marker.request_id, marker.attempt
                        ),
                    ));
                }
            }
            // After the last dispatched action (or none was): it never ran.
            _ => {
                if *entry != skipped(&action.id) && !gone {
                    found.push(broken(
                        Some(&action.id),
                        None,
                        format!("never dispatched, yet proposal.result reports {entry}"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Reads the next frame as JSON, bounded by [`CALL_TIMEOUT`].
async fn next_frame(conn: &mut Conn) -> anyhow::Result<Value> {
    let text = tokio::time::timeout(CALL_TIMEOUT, conn.next_text())
        .await
        .map_err(|_| anyhow!("no frame within {CALL_TIMEOUT:?}"))??;
    serde_json::from_str(&text).context("a non-JSON frame")
}

/// Connects as a `client` and registers the tool.
async fn connect_tool_client(addr: SocketAddr, token: &str) -> anyhow::Result<Conn> {
    let mut conn = Conn::authenticated(addr, json!({"token": token})).await?;
    conn.ok("tools.register", json!({"tools": [{"name": TOOL}]}))
        .await?;
    Ok(conn)
}

/// Submits proposals and answers their calls until the connection drops (the kill) or
/// an answer breaks a promise; every proposal and every call goes into `proposals`.
/// Returns why it stopped.
#[allow(clippy::too_many_arguments)]
async fn call_until_cut(
    addr: SocketAddr,
    token: &str,
    client: &mut ToolClient,
    cycle: u32,
    options: &ToolSoakOptions,
    seed: u64,
    proposals: &mut Vec<ProposalLedger>,
    violations: &mut Vec<ToolViolation>,
) -> anyhow::Error {
    'connection: loop {
        let mut conn = match connect_tool_client(addr, token).await {
            Ok(conn) => conn,
            Err(err) => return err,
        };
        loop {
            client.next_proposal += 1;
            let proposal_id = format!(
                "tsoak-{seed:016x}-c{}-p{}",
                client.client, client.next_proposal
            );
            let count = client.rng.random_range(1..=options.max_actions) as usize;
            let plan: Vec<ActionPlan> = (0..count)
                .map(|i| ActionPlan::draw(&mut client.rng, i))
                .collect();
            let actions: Vec<Value> = plan.iter().map(|a| a.wire(&proposal_id)).collect();
            proposals.push(ProposalLedger {
                proposal_id: proposal_id.clone(),
                plan,
                calls: Vec::new(),
                answer: None,
                abandoned: false,
            });
            let Some(proposal) = proposals.last_mut() else {
                unreachable!("a proposal was just pushed");
            };
            let submit_id = conn.fresh_id();
            let submit = crate::load::ws::request_text(
                submit_id,
                "proposal.submit",
                &json!({"proposal": {"id": proposal_id, "actions": actions}}),
            );
            if let Err(err) = conn.send_text(submit).await {
                return err;
            }
            loop {
                let frame = match next_frame(&mut conn).await {
                    Ok(frame) => frame,
                    Err(err) => return err,
                };
                if frame["method"] == "tools.execute" {
                    let params = &frame["params"];
                    let request_id = params["request_id"].as_str().unwrap_or_default();
                    // `tools.execute` names no proposal (§4.2): the soak's parameters do.
                    let call_proposal = params["parameters"]["proposal_id"]
                        .as_str()
                        .unwrap_or_default();
                    let action_id = params["action_id"].as_str().unwrap_or_default();
                    let attempt = params["attempt"].as_u64().unwrap_or_default() as u32;
                    let mut broken = |rule: &'static str, reason: String| {
                        violations.push(ToolViolation {
                            cycle,
                            rule,
                            proposal_id: call_proposal.to_owned(),
                            action_id: Some(action_id.to_owned()),
                            attempt: Some(attempt),
                            reason,
                        });
                    };
                    if !client.seen.insert((
                        call_proposal.to_owned(),
                        action_id.to_owned(),
                        attempt,
                    )) {
                        broken(
                            rule::DUPLICATE_CALL,
                            format!("tools.execute received twice (request {request_id})"),
                        );
                    }
                    if call_proposal != proposal.proposal_id {
                        broken(
                            rule::DUPLICATE_CALL,
                            format!(
                                "tools.execute {request_id} arrived on a connection whose \
                                 proposal in flight is {}",
                                proposal.proposal_id
                            ),
                        );
                        continue;
                    }
                    if frame["id"] != request_id {
                        broken(
                            rule::MARKER,
                            format!(
                                "tools.execute's JSON-RPC id {} is not its request_id \
                                 {request_id}",
                                frame["id"]
                            ),
                        );
                    }
                    let Some(action) = proposal.plan.iter().find(|a| a.id == action_id) else {
                        broken(
                            rule::RESULT,
                            "tools.execute for an action the proposal does not have".into(),
                        );
                        continue;
                    };
                    proposal.calls.push(CallSeen {
                        request_id: request_id.to_owned(),
                        action_id: action_id.to_owned(),
                        attempt,
                        reply: Reply::Pending,
                    });
                    let reply = action.reply(&proposal.proposal_id, &frame["id"], attempt);
                    let answered_with = if action.fails_at(attempt) {
                        Reply::Error
                    } else {
                        Reply::Output
                    };
                    let delay = client.rng.random_range(0..=options.max_reply_ms);
                    let abandon = client.rng.random_bool(options.disconnect_share);
                    // The delay, reading on: a kill during it leaves the call unanswered
                    // (`Pending`), known as such rather than guessed.
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(delay);
                    loop {
                        tokio::select! {
                            () = tokio::time::sleep_until(deadline) => break,
                            frame = next_frame(&mut conn) => {
                                if let Err(err) = frame {
                                    return err;
                                }
                            }
                        }
                    }
                    let Some(call) = proposal.calls.last_mut() else {
                        unreachable!("a call was just pushed");
                    };
                    if abandon {
                        call.reply = Reply::Abandoned;
                        proposal.abandoned = true;
                        conn.close().await;
                        continue 'connection;
                    }
                    // Answered from the moment it is handed to the socket: whether the
                    // daemon read it before the kill is what the check allows either way.
                    call.reply = answered_with;
                    if let Err(err) = conn.send_text(reply).await {
                        return err;
                    }
                } else if frame.get("method").is_none() && frame["id"] == submit_id {
                    match outcome(frame) {
                        Ok(result) => {
                            proposal.answer = Some(result);
                            break;
                        }
                        Err(error) => {
                            violations.push(ToolViolation {
                                cycle,
                                rule: rule::RESULT,
                                proposal_id: proposal.proposal_id.clone(),
                                action_id: None,
                                attempt: None,
                                reason: format!("proposal.submit refused: {error}"),
                            });
                            return anyhow!("stopped after a violation");
                        }
                    }
                }
                // Anything else (a late `tools.cancel`, …) is not for this check.
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(behavior: Behavior, fails: u32) -> ActionPlan {
        ActionPlan {
            id: "a1".into(),
            behavior,
            fails,
            error_as_result: false,
        }
    }

    #[test]
    fn the_plan_implies_the_result_of_section_4_2() {
        let retry = plan(Behavior::Retry { max_retries: 2 }, 1);
        assert_eq!(
            retry.expected("p"),
            json!({"action_id": "a1", "status": "succeeded", "attempts": 2,
                   "output": {"proposal_id": "p", "action_id": "a1", "attempt": 2, "ok": true}})
        );
        let mut exhausted = plan(Behavior::Retry { max_retries: 1 }, 2);
        exhausted.id = "a2".into();
        let mut after = plan(Behavior::Abort, 0);
        after.id = "a3".into();
        let result = expected_result("p", &[retry, exhausted, after]);
        assert_eq!(result["final_state"], "failed");
        assert_eq!(result["errors"]["a2"], "soak failure: p a2 attempt 2");
        assert_eq!(result["results"][1]["attempts"], 2);
        assert_eq!(result["results"][2], skipped("a3"));
        let mut cont = plan(Behavior::Continue, 1);
        cont.id = "a1".into();
        let mut next = plan(Behavior::Abort, 0);
        next.id = "a2".into();
        let result = expected_result("p", &[cont, next]);
        assert_eq!(result["results"][1]["status"], "succeeded");
    }

    /// A short soak against the debug daemon (`car-test-server`, built beside this test by
    /// `cargo test`): a few kills while tool clients are mid-call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_tool_soak_finds_every_call_accounted_for() {
        let Some(server) = cycles::test_server_bin() else {
            eprintln!("skipped: car-test-server is not built (run `cargo test -p car-tests`)");
            return;
        };
        let options = ToolSoakOptions {
            cycles: 4,
            clients: 4,
            seed: Some(11),
            max_kill_ms: 400,
            max_actions: 4,
            max_reply_ms: 10,
            disconnect_share: 0.05,
            data_dir: None,
            server_bin: Some(server),
            no_final_check: false,
        };
        let report = run_tool_soak(&options, |_| {}).await.unwrap();
        assert_eq!(report.cycles, 4);
        assert!(report.tool_calls > 0, "{report}");
        assert_eq!(report.final_checked, report.proposals);
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
    }

    /// Regression (found by this soak): a proposal whose one tool call was dispatched and
    /// *completed* (`tool_call.completed` in the log) when the daemon was killed, before
    /// the action's `proposal.action_finished`, was completed by start-up with that action
    /// `skipped`, attempts 0: "never ran", though the tool ran. Now the call's outcome
    /// says what the action did, and only the actions after it are `skipped` (§14.5).
    #[test]
    fn regression_an_action_whose_call_completed_is_reported_as_its_call_ended_after_a_crash() {
        use car_events::event::{
            ProposalResultRecorded, ProposalSubmitted, Role, SessionOpened, ToolCallCompleted,
            ToolCallDispatched,
        };
        use car_events::{Envelope, Event, JsonText, SCHEMA_VERSION};
        let events: Vec<Event> = vec![
            SessionOpened {
                client_id: "c1".into(),
                peer: "127.0.0.1:1".into(),
                role: Some(Role::Client),
                agent_id: None,
            }
            .into(),
            ProposalSubmitted {
                proposal_id: "p1".into(),
                client_id: "c1".into(),
                run_id: None,
                action_ids: vec!["a1".into(), "a2".into()],
            }
            .into(),
            ToolCallDispatched {
                request_id: "q1".into(),
                client_id: "c1".into(),
                proposal_id: "p1".into(),
                action_id: "a1".into(),
                tool: TOOL.into(),
                parameters: JsonText::from(json!({})),
                attempt: 1,
                timeout_ms: 300_000,
                run_id: None,
            }
            .into(),
            // The tool ran and answered; the kill came before `proposal.action_finished`.
            ToolCallCompleted {
                request_id: "q1".into(),
                output: JsonText::from(json!({"ok": true})),
                elapsed_ms: 3,
            }
            .into(),
        ];
        let mut state = car_projections::State::new();
        for (seq, event) in (1..).zip(events) {
            let envelope = Envelope {
                seq,
                event_id: Default::default(),
                ts: chrono::Utc::now(),
                schema_version: SCHEMA_VERSION,
                event,
            };
            state.apply(&envelope).unwrap();
        }
        let recovered = car_projections::recover(
            &state,
            chrono::Utc::now(),
            &car_projections::Retention::default(),
        );
        let result = recovered
            .iter()
            .find_map(|event| match event {
                Event::ProposalResultRecorded(ProposalResultRecorded { result, .. }) => {
                    Some(result.to_value())
                }
                _ => None,
            })
            .expect("start-up stores a result for the cut-off proposal");
        assert_eq!(result["final_state"], "failed");
        // It was {"action_id": "a1", "status": "skipped", "attempts": 0}.
        assert_eq!(
            result["results"][0],
            json!({"action_id": "a1", "status": "succeeded", "output": {"ok": true}, "attempts": 1}),
            "a1's tool ran (tool_call.completed): {result}"
        );
        assert_eq!(result["results"][1], skipped("a2"));
    }
}
