//! `events`: the raw log as JSON lines, `{seq, ts, kind, data}` ([`EventJson`], the shape
//! of `log.read`), with filters.
//!
//! Filters on the event alone (seq range, time range, kind) and the rendering run on the
//! scan's worker threads. `--run` and `--session` need what came before (which tool
//! calls a run dispatched, which approvals its owner asked for), so they are followed in
//! order on the main thread ([`RunFilter`], [`SessionFilter`], [`ChatFilter`]).
//!
//! A damaged record is skipped with a message on stderr, and the command ends with exit
//! code 4 (a damaged *last* record, a torn write the daemon drops, only warns).

use std::collections::HashSet;
use std::ops::ControlFlow;

use car_events::event::Event;
use car_events::{Envelope, EventJson, EventLog, Seq};
use chrono::{DateTime, Utc};

use super::Context;
use crate::cli::{EventsArgs, KindFilter};
use crate::datadir::OpenLog;
use crate::exit::{Error, Exit};
use crate::output::Out;
use crate::progress::Progress;
use crate::replay::reason_of;
use crate::scan::{self, error_seq};

/// What a worker hands back for one record.
enum Mapped {
    /// Filtered out.
    Skip(Seq),
    /// Passed, rendered.
    Line(Seq, String),
    /// Passed the per-event filters; the order-dependent ones decide (rendered later).
    Event(Box<Envelope>, bool),
    /// Damaged.
    Damaged(Option<Seq>, String),
}

impl Mapped {
    fn seq(&self) -> Option<Seq> {
        match self {
            Mapped::Skip(seq) | Mapped::Line(seq, _) => Some(*seq),
            Mapped::Event(env, _) => Some(env.seq),
            Mapped::Damaged(seq, _) => *seq,
        }
    }
}

/// Runs the command.
pub fn run(log: &OpenLog, context: &Context, args: &EventsArgs) -> Result<Exit, Error> {
    let from = args.from.unwrap_or(1).max(1);
    let to = args.to.unwrap_or(Seq::MAX);
    if from > to {
        return Err(Error::Usage(format!(
            "--from {from} is after --to {to}: nothing to show"
        )));
    }
    let head = log.log.head();
    let stateful = args.run.is_some() || args.session.is_some() || args.chat.is_some();
    // Order-dependent filters must see every event from the start of the log: a run's
    // tool calls are known from its dispatches, which may come before `--from`.
    let scan_from = if stateful { 1 } else { from };
    let filter = EventFilter {
        from,
        to,
        since: args.since,
        until: args.until,
        kinds: &args.kind,
        scope: args.scope.as_ref().map(|s| s.as_key()),
    };
    let progress = Progress::new(
        to.min(head).saturating_sub(scan_from - 1),
        "events",
        context.quiet,
    );
    let mut run_filter = args.run.as_deref().map(RunFilter::new);
    let mut session_filter = args.session.as_deref().map(SessionFilter::new);
    let mut chat_filter = args.chat.as_deref().map(ChatFilter::new);
    let mut out = Out::new();
    let mut damaged = 0u64;
    let mut failure = None;
    let mut expected = scan_from;
    scan::scan(
        &log.log,
        scan_from..=to,
        context.threads,
        &progress,
        |item| match item {
            Ok(env) => {
                let passes = filter.passes(&env);
                if stateful {
                    Mapped::Event(Box::new(env), passes)
                } else if passes {
                    match serde_json::to_string(&EventJson::from_envelope(&env)) {
                        Ok(line) => Mapped::Line(env.seq, line),
                        Err(err) => Mapped::Damaged(Some(env.seq), err.to_string()),
                    }
                } else {
                    Mapped::Skip(env.seq)
                }
            }
            Err(err) => Mapped::Damaged(error_seq(&err), reason_of(&err)),
        },
        |mapped| {
            if let Some(seq) = mapped.seq() {
                if seq > expected {
                    damaged += 1;
                    missing(expected, seq);
                }
                expected = seq + 1;
            }
            let result = match mapped {
                Mapped::Skip(_) => Ok(()),
                Mapped::Line(_, line) => out.line(&line),
                Mapped::Event(env, passes) => {
                    let by_run = run_filter.as_mut().is_none_or(|f| f.keep(&env));
                    let by_session = session_filter.as_mut().is_none_or(|f| f.keep(&env));
                    let by_chat = chat_filter.as_mut().is_none_or(|f| f.keep(&env));
                    if passes && by_run && by_session && by_chat {
                        out.json_line(&EventJson::from_envelope(&env))
                    } else {
                        Ok(())
                    }
                }
                Mapped::Damaged(seq, reason) => {
                    match seq {
                        Some(seq) if seq == head && head > 0 => {
                            eprintln!(
                                "car-replay: warning: the last record (seq {seq}) is damaged, a \
                                 torn write: {reason}. It is left out, as the daemon drops it \
                                 at its next start."
                            );
                        }
                        Some(seq) => {
                            damaged += 1;
                            eprintln!(
                                "car-replay: seq {seq}: skipped, the record is damaged: {reason}"
                            );
                        }
                        None => {
                            damaged += 1;
                            eprintln!("car-replay: skipped an unreadable entry: {reason}");
                        }
                    }
                    Ok(())
                }
            };
            match result {
                Ok(()) => ControlFlow::Continue(()),
                Err(err) => {
                    failure = Some(err);
                    ControlFlow::Break(())
                }
            }
        },
    );
    progress.finish();
    if let Some(err) = failure {
        return Err(err);
    }
    out.flush()?;
    if damaged > 0 {
        eprintln!(
            "car-replay: {damaged} damaged or missing record{} skipped; `car-replay verify` lists every problem",
            if damaged == 1 { "" } else { "s" }
        );
        return Ok(Exit::Corrupt);
    }
    Ok(Exit::Ok)
}

fn missing(expected: Seq, found: Seq) {
    eprintln!(
        "car-replay: seq {expected}{}: missing from the log",
        if found > expected + 1 {
            format!(" to {}", found - 1)
        } else {
            String::new()
        }
    );
}

/// The filters that look at one event alone.
#[derive(Debug)]
struct EventFilter<'a> {
    from: Seq,
    to: Seq,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    kinds: &'a [KindFilter],
    /// Only memory events of this scope (its text form).
    scope: Option<String>,
}

impl EventFilter<'_> {
    fn passes(&self, env: &Envelope) -> bool {
        env.seq >= self.from
            && env.seq <= self.to
            && self.since.is_none_or(|since| env.ts >= since)
            && self.until.is_none_or(|until| env.ts < until)
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| k.matches(env.event.kind())))
            && self
                .scope
                .as_deref()
                .is_none_or(|scope| env.event.memory_scope() == Some(scope))
    }
}

/// Follows one run through the log: its own events, the tool calls and proposals the
/// daemon indexes under it (those dispatched or submitted with its id while it is
/// retained, and their outcomes), and the approvals that belong to it (requested while it
/// is live, by its owner session or naming its agent: the rule of
/// [`super::trace::approval_belongs`]).
#[derive(Debug)]
pub struct RunFilter {
    run_id: String,
    owner: Option<String>,
    agent_id: Option<String>,
    /// Between its `run.started` and its `run.ended`.
    live: bool,
    /// Between its `run.started` and its `run.evicted`.
    retained: bool,
    requests: HashSet<String>,
    proposals: HashSet<String>,
    approvals: HashSet<String>,
}

impl RunFilter {
    /// Follows `run_id`.
    pub fn new(run_id: &str) -> Self {
        Self {
            run_id: run_id.to_owned(),
            owner: None,
            agent_id: None,
            live: false,
            retained: false,
            requests: HashSet::new(),
            proposals: HashSet::new(),
            approvals: HashSet::new(),
        }
    }

    /// Whether `env` belongs to the run (call for every event, in order).
    pub fn keep(&mut self, env: &Envelope) -> bool {
        let mine = |id: &Option<String>| id.as_deref() == Some(self.run_id.as_str());
        match &env.event {
            Event::RunStarted(e) if e.run_id == self.run_id => {
                self.owner = e.client_id.clone();
                self.agent_id = Some(e.agent_id.clone());
                self.live = true;
                self.retained = true;
                true
            }
            Event::TurnsRecorded(e) => e.run_id == self.run_id,
            Event::RunEnded(e) if e.run_id == self.run_id => {
                self.live = false;
                true
            }
            Event::RunEvicted(e) if e.run_id == self.run_id => {
                self.retained = false;
                true
            }
            Event::ToolCallDispatched(e) if self.retained && mine(&e.run_id) => {
                self.requests.insert(e.request_id.clone());
                true
            }
            Event::ToolCallCompleted(e) => self.finished_call(&e.request_id),
            Event::ToolCallFailed(e) => self.finished_call(&e.request_id),
            Event::ToolCallTimedOut(e) => self.finished_call(&e.request_id),
            Event::ToolCallCancelled(e) => self.finished_call(&e.request_id),
            Event::ToolCallIndeterminate(e) => self.finished_call(&e.request_id),
            Event::ProposalSubmitted(e) if self.retained && mine(&e.run_id) => {
                self.proposals.insert(e.proposal_id.clone());
                true
            }
            Event::ProposalFinished(e) => self.proposals.remove(&e.proposal_id) && self.retained,
            Event::RunCancellationRequested(e) => e.run_id == self.run_id,
            Event::RunCancellationResult(e) => e.run_id == self.run_id,
            Event::RunResumed(e) => e.run_id == self.run_id,
            Event::ApprovalRequestedInRun(e) if e.run_id == self.run_id => {
                self.approvals.insert(e.approval.approval_id.clone());
                true
            }
            Event::ApprovalRequested(e) => {
                let by_owner = self.owner.is_some() && e.client_id == self.owner;
                let for_agent = self.agent_id.is_some() && e.agent_id == self.agent_id;
                let belongs = self.live && (by_owner || for_agent);
                if belongs {
                    self.approvals.insert(e.approval_id.clone());
                }
                belongs
            }
            Event::ApprovalResolved(e) => self.approvals.contains(&e.approval_id),
            Event::ApprovalExpired(e) => self.approvals.contains(&e.approval_id),
            _ => false,
        }
    }

    fn finished_call(&mut self, request_id: &str) -> bool {
        self.requests.remove(request_id) && self.retained
    }
}

/// Follows one session: the events that name it, and the outcomes of the tool calls
/// dispatched to it, the proposals it submitted and the approvals it requested.
#[derive(Debug)]
pub struct SessionFilter {
    client_id: String,
    requests: HashSet<String>,
    proposals: HashSet<String>,
    approvals: HashSet<String>,
}

impl SessionFilter {
    /// Follows `client_id`.
    pub fn new(client_id: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            requests: HashSet::new(),
            proposals: HashSet::new(),
            approvals: HashSet::new(),
        }
    }

    /// Whether `env` belongs to the session (call for every event, in order).
    pub fn keep(&mut self, env: &Envelope) -> bool {
        let named = env.event.client_id() == Some(self.client_id.as_str());
        match &env.event {
            Event::ToolCallDispatched(e) if named => {
                self.requests.insert(e.request_id.clone());
            }
            Event::ProposalSubmitted(e) if named => {
                self.proposals.insert(e.proposal_id.clone());
            }
            Event::ApprovalRequested(e) if named => {
                self.approvals.insert(e.approval_id.clone());
            }
            Event::ApprovalRequestedInRun(e) if named => {
                self.approvals.insert(e.approval.approval_id.clone());
            }
            Event::ToolCallCompleted(e) => return self.requests.remove(&e.request_id),
            Event::ToolCallFailed(e) => return self.requests.remove(&e.request_id),
            Event::ToolCallTimedOut(e) => return self.requests.remove(&e.request_id),
            Event::ToolCallCancelled(e) => return self.requests.remove(&e.request_id),
            Event::ToolCallIndeterminate(e) => return self.requests.remove(&e.request_id),
            Event::ProposalFinished(e) => return self.proposals.remove(&e.proposal_id),
            Event::ApprovalResolved(e) => {
                return named || self.approvals.contains(&e.approval_id);
            }
            Event::ApprovalExpired(e) => return self.approvals.contains(&e.approval_id),
            _ => {}
        }
        named
    }
}

/// Follows one chat through the log: its `chat.*` events, the approvals mirrored from it
/// (`approval.requested_in_chat`) and their resolutions or expiries.
#[derive(Debug)]
pub struct ChatFilter {
    session_id: String,
    approvals: HashSet<String>,
}

impl ChatFilter {
    /// Follows the chat `session_id`.
    pub fn new(session_id: &str) -> Self {
        Self {
            session_id: session_id.to_owned(),
            approvals: HashSet::new(),
        }
    }

    /// Whether `env` belongs to the chat (called for every event, in log order).
    pub fn keep(&mut self, env: &Envelope) -> bool {
        match &env.event {
            Event::ApprovalResolved(e) => self.approvals.contains(&e.approval_id),
            Event::ApprovalExpired(e) => self.approvals.contains(&e.approval_id),
            event if event.chat_session() == Some(self.session_id.as_str()) => {
                if let Event::ApprovalRequestedInChat(e) = event {
                    self.approvals.insert(e.approval.approval_id.clone());
                }
                true
            }
            _ => false,
        }
    }
}
