//! The command line: `car-replay [--data-dir DIR] [--quiet] <command>`.
//!
//! Parsing only: every value is checked here (times, statuses, kinds), so a command
//! receives well-formed arguments and a bad one is a usage error (exit 64) before anything
//! is opened.

use std::path::PathBuf;

use car_events::{Event, Seq};
use car_projections::RunStatus;
use car_projections::memory::Scope;
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::exit::EXIT_CODES_HELP;

/// car-replay: audit car's event log offline. Reads the log of a data directory (never
/// writes it): list runs, print a run's trace, dump the raw events, show the state at any
/// seq, verify every record and invariant, and summarise.
///
/// The daemon must not be running on the directory (it holds the log exclusively): stop
/// it, or audit a copy (`cp -r DIR /tmp/car-copy`).
#[derive(Debug, Parser)]
#[command(name = "car-replay", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// The daemon's data directory (the log is DIR/log) [default: $CAR_HOME, else ~/.car]
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// Cluster mode (PROTOCOL.md §19): read the log from this NATS JetStream cluster's
    /// stream instead of a data directory. The stream is copied into a temporary sled log
    /// first, which the command then reads as it reads any data directory.
    #[arg(long, value_name = "URL[,URL…]", value_delimiter = ',', global = true)]
    pub nats: Vec<String>,

    /// The stream to read with --nats.
    #[arg(long, value_name = "NAME", default_value = "CAR", global = true)]
    pub stream: String,

    /// No progress bar (it is drawn only when stderr is a terminal anyway).
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// Threads decoding records [default: the number of CPUs, at most 8].
    #[arg(long, value_name = "N", global = true, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List runs, newest first (as `runs.list` does), with filters.
    #[command(after_help = EXIT_CODES_HELP)]
    Runs(RunsArgs),
    /// Print one run's trace: started, every turn, ended, with its tool calls and approvals.
    #[command(after_help = TRACE_HELP)]
    Trace(TraceArgs),
    /// Print the raw log as JSON lines `{seq, ts, kind, data}`, with filters.
    #[command(after_help = EVENTS_HELP)]
    Events(EventsArgs),
    /// Show the state as it was at a seq (time travel) and its canonical digest.
    #[command(after_help = EXIT_CODES_HELP)]
    State(StateArgs),
    /// Check every record and every invariant; exit 1 on any problem.
    #[command(after_help = VERIFY_HELP)]
    Verify(VerifyArgs),
    /// Events by kind, runs by status, turns per run, size on disk.
    #[command(after_help = EXIT_CODES_HELP)]
    Stats(StatsArgs),
    /// Show a memory scope's live facts as they were at a seq, or list every scope.
    #[command(after_help = MEMORY_HELP)]
    Memory(MemoryArgs),
    /// Copy a cluster's stream (--nats) into a sled log at DIR/log, which every other
    /// command then reads offline with --data-dir DIR.
    #[command(after_help = EXIT_CODES_HELP)]
    Export(ExportArgs),
    /// Show the registered agents (PROTOCOL.md §12) as they were at a seq.
    #[command(after_help = AGENTS_HELP)]
    Agents(AgentsArgs),
    /// Every chat relayed to an agent (PROTOCOL.md §13): caller, terminal event, mirrored
    /// approvals, why its route was dropped.
    #[command(after_help = CHATS_HELP)]
    Chats(ChatsArgs),
}

/// `chats`.
#[derive(Debug, Args)]
pub struct ChatsArgs {
    /// Read up to this seq [default: the end of the log].
    #[arg(long, value_name = "SEQ")]
    pub to: Option<Seq>,
    /// Only the chats of this agent.
    #[arg(long, value_name = "ID")]
    pub agent: Option<String>,
    /// JSON: `{seq, chats: [{session_id, agent_id, caller_role, caller_client_id,
    /// conversation_id, prompt, prompt_bytes, attachments, started_seq, started_at,
    /// cancelled_by, terminal, finish_reason, error, approvals: [{approval_id, action,
    /// outcome}], ended, ended_at}]}`.
    #[arg(long)]
    pub json: bool,
}

const CHATS_HELP: &str = "\
ENDED is why the chat's route was dropped (terminal, cancelled, ack_failed,
agent_disconnect, caller_disconnect, idle_timeout, overflow, daemon_shutdown,
daemon_restart), or `live`. The log keeps a chat's start, cancellation, terminal event,
route drop and approvals, never the relayed events themselves. `car-replay events --chat
ID` prints one chat's events.

Exit codes: see `car-replay --help`.";

/// `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The new data directory (it must not hold a log yet).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
}

const AGENTS_HELP: &str = "\
Each agent with its supervision status and why it has it, its live pid, its restart count
and how its last process ended. `car-replay events --kind 'agent.*'` shows every spawn,
exit, backoff and status change behind it.

Exit codes: see `car-replay --help`; 5 when --at is past the end of the log.";

const MEMORY_HELP: &str = "\
Scopes are `shared` (clients, hosts, MCP), `ns:<namespace>` (sessions that gave a
memory_namespace) and `agent:<agent_id>` (agent-bound sessions without one). The facts
are the scope's live facts in log order, each with the seq of the event that added (or
loaded) it. `car-replay events --kind 'memory.*' --scope S` shows the events themselves.

Exit codes: see `car-replay --help`; 5 when --at is past the end of the log.";

const TRACE_HELP: &str = "\
What belongs to a run:
  tool calls  the proposal and tool-call events the daemon indexed under the run (those
              of the session's current run when they were dispatched)
  approvals   approvals requested while the run was live (from its run.started to its
              run.ended, or to the end of the log) by the run's owner session, or naming
              the run's agent

Exit codes: see `car-replay --help`; 5 when the run is not in the log.";

const EVENTS_HELP: &str = "\
Filters combine (an event must pass all of them). --run keeps the run's own events, its
tool calls and proposals, and the approvals that belong to it (see `trace --help`);
--session keeps the events that name the session, and the outcomes of the tool calls and
proposals it made. A damaged record is skipped with a message on stderr and the command
ends with exit code 4.";

const VERIFY_HELP: &str = "\
Checks, record by record, to the end of the log: the checksum, that the record decodes
and holds the seq it is stored under, that seqs go up by exactly one, and that times never
go backwards. Events are folded into the daemon's state, which checks every invariant (no
turn after a run's end, no second terminal, contiguous turn indices, approvals resolved
once, ...). After the first record that cannot be folded (damaged, missing, or
contradicting the state), later events can no longer be applied reliably: the fold stops
there, and the remaining records are still checked one by one. The state is built twice
and the two canonical digests compared.

A damaged last record is reported as a torn write: the daemon drops it at its next start.

Exit codes: 0 no problem, 1 problems found (each named with its seq and reason); 2, 3, 64,
74 as for every command (see `car-replay --help`).";

/// `runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only this agent's runs.
    #[arg(long, value_name = "ID")]
    pub agent: Option<String>,
    /// Only runs with this status.
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
    /// Only runs started at or after this time (RFC 3339, or a date: UTC midnight).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only runs started before this time (RFC 3339, or a date: UTC midnight).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// At most this many runs (the newest).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Include runs evicted by retention (the daemon no longer serves them; the log keeps
    /// their events).
    #[arg(long)]
    pub evicted: bool,
    /// JSON for scripts: `{head, runs: [summary]}`, summaries as `runs.list` returns them.
    #[arg(long)]
    pub json: bool,
}

/// A run status on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum StatusArg {
    /// Started, not ended.
    InProgress,
    /// Ended with an outcome.
    Completed,
    /// Ended without one.
    Incomplete,
}

impl StatusArg {
    /// The projection's status.
    pub fn status(self) -> RunStatus {
        match self {
            StatusArg::InProgress => RunStatus::InProgress,
            StatusArg::Completed => RunStatus::Completed,
            StatusArg::Incomplete => RunStatus::Incomplete,
        }
    }
}

/// `trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The run id, or a prefix of exactly one run's id (as git takes a hash).
    pub run: String,
    /// JSON: the trace records exactly as `runs.get_trace` returns them, the tool-call
    /// events as `{seq, ts, kind, data}`, and the approvals as on the wire.
    #[arg(long)]
    pub json: bool,
}

/// `events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// First seq (inclusive).
    #[arg(long, value_name = "SEQ")]
    pub from: Option<Seq>,
    /// Last seq (inclusive).
    #[arg(long, value_name = "SEQ")]
    pub to: Option<Seq>,
    /// Only events at or after this time (RFC 3339, or a date: UTC midnight).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only events before this time (RFC 3339, or a date: UTC midnight).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// Only these kinds (repeat or comma-separate; `run.*` matches a prefix).
    #[arg(long, value_name = "KIND", value_delimiter = ',', value_parser = parse_kind)]
    pub kind: Vec<KindFilter>,
    /// Only what belongs to this run.
    #[arg(long, value_name = "RUN")]
    pub run: Option<String>,
    /// Only what belongs to this session (client id).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Only what belongs to this chat (its `session_id`, PROTOCOL.md §13): its `chat.*`
    /// events, the approvals mirrored from it and their resolutions or expiries.
    #[arg(long, value_name = "ID")]
    pub chat: Option<String>,
    /// Only memory events of this scope (`shared`, `ns:<namespace>`, `agent:<agent_id>`).
    #[arg(long, value_name = "SCOPE", value_parser = parse_scope)]
    pub scope: Option<Scope>,
}

/// `agents`.
#[derive(Debug, Args)]
pub struct AgentsArgs {
    /// The seq to stop at [default: the end of the log]; 0 is before any agent.
    #[arg(long, value_name = "SEQ")]
    pub at: Option<Seq>,
    /// JSON: `{seq, ts, agents: [{id, status, status_reason, pid, restart_count, last_exit,
    /// started_at, restart_at, stop_requested, token_sha256, registered_seq, spec}]}`.
    #[arg(long)]
    pub json: bool,
}

/// `memory`.
#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// The scope: `shared`, `ns:<namespace>` or `agent:<agent_id>`.
    #[arg(long, value_name = "SCOPE", value_parser = parse_scope, default_value = "shared")]
    pub scope: Scope,
    /// The seq to stop at [default: the end of the log]; 0 is before any memory.
    #[arg(long, value_name = "SEQ")]
    pub at: Option<Seq>,
    /// List every scope ever written, with its live fact count, instead of one scope's
    /// facts.
    #[arg(long, conflicts_with = "scope")]
    pub scopes: bool,
    /// JSON: `{seq, ts, scope, written, fact_count, facts: [{fact_id, subject, body, kind,
    /// tags, source, created_at, seq}]}`; with --scopes `{seq, ts, scopes: [{scope,
    /// fact_count}]}`.
    #[arg(long)]
    pub json: bool,
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    Scope::parse(text.trim()).map_err(|err| err.to_string())
}

/// `state`.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// The seq to stop at [default: the end of the log]; 0 is the empty state.
    #[arg(long, value_name = "SEQ")]
    pub at: Option<Seq>,
    /// JSON: `{seq, ts, digest, state}`, the state in its canonical rendering.
    #[arg(long)]
    pub json: bool,
}

/// `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// JSON: `{ok, problems: [{seq, check, message}], ...}`.
    #[arg(long)]
    pub json: bool,
}

/// `stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// An event kind, or a kind prefix (`run.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KindFilter {
    /// Exactly this kind.
    Exact(&'static str),
    /// Every kind that starts with this.
    Prefix(String),
}

impl KindFilter {
    /// Whether `kind` passes.
    pub fn matches(&self, kind: &str) -> bool {
        match self {
            KindFilter::Exact(k) => *k == kind,
            KindFilter::Prefix(p) => kind.starts_with(p.as_str()),
        }
    }
}

fn parse_kind(text: &str) -> Result<KindFilter, String> {
    let text = text.trim();
    if let Some(prefix) = text.strip_suffix('*') {
        if Event::KINDS.iter().any(|k| k.starts_with(prefix)) {
            return Ok(KindFilter::Prefix(prefix.to_owned()));
        }
    } else if let Some(kind) = Event::KINDS.iter().find(|k| **k == text) {
        return Ok(KindFilter::Exact(kind));
    }
    Err(format!(
        "unknown event kind {text:?}; the kinds are: {}",
        Event::KINDS.join(", ")
    ))
}

/// Parses an RFC 3339 time, or a date (`2026-11-24`, meaning its UTC midnight).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        if let Some(midnight) = date.and_hms_opt(0, 0, 0) {
            return Ok(midnight.and_utc());
        }
    }
    Err(format!(
        "{text:?} is not a time: give RFC 3339 (2026-11-24T10:00:00Z) or a date (2026-11-24)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_dates() {
        assert_eq!(
            parse_time("2026-11-24").unwrap(),
            parse_time("2026-11-24T00:00:00Z").unwrap()
        );
        assert_eq!(
            parse_time("2026-11-24T10:00:00+01:00").unwrap(),
            parse_time("2026-11-24T09:00:00Z").unwrap()
        );
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn kinds_are_known_kinds_or_prefixes_of_some() {
        assert_eq!(
            parse_kind("run.started").unwrap(),
            KindFilter::Exact("run.started")
        );
        let prefix = parse_kind("tool_call.*").unwrap();
        assert!(prefix.matches("tool_call.failed") && !prefix.matches("run.started"));
        assert!(parse_kind("run.exploded").is_err());
        assert!(parse_kind("nothing.*").is_err());
        assert!(
            parse_kind("memory.*")
                .unwrap()
                .matches("memory.scope_loaded")
        );
    }

    #[test]
    fn scopes_are_parsed_as_the_daemon_writes_them() {
        assert_eq!(parse_scope("shared").unwrap(), Scope::Shared);
        assert_eq!(
            parse_scope("ns:team-alpha").unwrap(),
            Scope::Namespace("team-alpha".into())
        );
        assert!(parse_scope("global").is_err());
        assert!(parse_scope("agent:").is_err());
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
