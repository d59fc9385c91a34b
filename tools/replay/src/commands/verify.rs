//! `verify`: checks every record and every invariant of the log, and reports every
//! problem it finds, each with its seq and reason.
//!
//! Record checks, for every record to the end of the log whatever came before: the
//! checksum, that it decodes and holds the seq it is stored under (the codec's checks),
//! that seqs go up by exactly one (a missing seq is a problem), that times never go
//! backwards, and that no record claims a newer schema than this build knows.
//!
//! The fold: events are folded into two fresh [`State`]s, the daemon's projection, whose
//! [`State::apply`] checks every invariant (no turn after a run's end, no second terminal,
//! contiguous turn indices, approvals resolved once, ...) and names the seq of an event
//! that contradicts what came before. The first record that cannot be folded (damaged,
//! missing, or contradicting the state) ends the fold: every later event would be applied
//! to a state that is already wrong, so further invariant errors would be noise. The
//! record checks go on to the end. Each state has its own hash maps (their iteration
//! order differs), so comparing their canonical digests checks that the fold and the
//! canonical rendering depend on nothing but the events.
//!
//! What the daemon would do with the log is reported too: rebuild it, drop a torn last
//! record at its next start, or refuse to start.

use std::ops::ControlFlow;
use std::time::Instant;

use car_events::{CodecError, Envelope, EventLog, LogError, SCHEMA_VERSION, Seq};
use car_projections::{State, canonical};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::Context;
use crate::cli::VerifyArgs;
use crate::datadir::OpenLog;
use crate::exit::{Error, Exit};
use crate::output::{Out, bytes, ts};
use crate::progress::Progress;
use crate::replay::reason_of;
use crate::scan::{self, error_seq};

/// Problems kept for the report: far more than anyone reads, few enough that a log
/// damaged everywhere still reports in bounded memory (the count is always exact).
const PROBLEMS_KEPT: usize = 1000;
/// Problems the text report lists (`--json` has all those kept).
const PROBLEMS_SHOWN: usize = 100;

/// One problem.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The seq it is about (`None`: an entry whose position is unknown).
    pub seq: Option<Seq>,
    /// Which check found it: `read`, `truncated`, `format`, `checksum`, `decode`, `seq`,
    /// `missing`, `time`, `schema`, `invariant`, `rebuild`.
    pub check: &'static str,
    /// What is wrong.
    pub message: String,
}

/// The whole report.
#[derive(Debug)]
struct Verification {
    problems: Vec<Problem>,
    problem_count: u64,
    /// Records read (good or damaged).
    records: u64,
    /// Seq of the last record that decoded, with its time, and of the first.
    first_ts: Option<DateTime<Utc>>,
    last_ts: Option<(Seq, DateTime<Utc>)>,
    /// The next seq expected.
    expected: Seq,
    /// The first problem that stopped the fold.
    fold_stopped: Option<Seq>,
    /// Damaged (unreadable) records, by seq.
    damaged: Vec<Seq>,
    a: State,
    b: State,
}

impl Verification {
    fn problem(&mut self, seq: Option<Seq>, check: &'static str, message: String) {
        self.problem_count += 1;
        if self.problems.len() < PROBLEMS_KEPT {
            self.problems.push(Problem {
                seq,
                check,
                message,
            });
        }
    }

    fn stop_fold(&mut self, seq: Seq) {
        if self.fold_stopped.is_none() {
            self.fold_stopped = Some(seq);
        }
    }

    fn step(&mut self, item: scan::Item) {
        self.records += 1;
        let env = match item {
            Ok(env) => env,
            Err(err) => return self.damaged(&err),
        };
        self.sequence(env.seq);
        if env.schema_version > SCHEMA_VERSION {
            self.problem(
                Some(env.seq),
                "schema",
                format!(
                    "written with event schema {}; this build knows schema {SCHEMA_VERSION}",
                    env.schema_version
                ),
            );
        }
        match self.last_ts {
            Some((seq, last)) if env.ts < last => self.problem(
                Some(env.seq),
                "time",
                format!(
                    "time goes backwards: {} is before seq {seq}'s {}",
                    ts(env.ts),
                    ts(last)
                ),
            ),
            _ => {}
        }
        if self.first_ts.is_none() {
            self.first_ts = Some(env.ts);
        }
        self.last_ts = Some((env.seq, env.ts));
        if self.fold_stopped.is_none() {
            self.fold(&env);
        }
    }

    fn fold(&mut self, env: &Envelope) {
        if let Err(err) = self.a.apply(env) {
            self.problem(Some(env.seq), "invariant", err.to_string());
            return self.stop_fold(env.seq);
        }
        if let Err(err) = self.b.apply(env) {
            self.problem(
                Some(env.seq),
                "rebuild",
                format!("the second rebuild refuses what the first accepted: {err}"),
            );
            self.stop_fold(env.seq);
        }
    }

    /// Checks that `seq` is the next one; a jump is a missing range, which stops the fold.
    fn sequence(&mut self, seq: Seq) {
        if seq > self.expected {
            let missing = if seq - self.expected == 1 {
                format!("seq {} is missing", self.expected)
            } else {
                format!("seqs {} to {} are missing", self.expected, seq - 1)
            };
            self.problem(Some(self.expected), "missing", missing);
            self.stop_fold(self.expected);
        }
        self.expected = self.expected.max(seq + 1);
    }

    fn damaged(&mut self, err: &LogError) {
        let seq = error_seq(err);
        let check = match err {
            LogError::Corrupt(CodecError::Truncated { .. }) => "truncated",
            LogError::Corrupt(CodecError::UnknownFormat { .. }) => "format",
            LogError::Corrupt(CodecError::Checksum { .. }) => "checksum",
            LogError::Corrupt(CodecError::WrongSeq { .. }) => "seq",
            LogError::Corrupt(_) if seq.is_some() => "decode",
            _ => "read",
        };
        match seq {
            Some(seq) => {
                self.sequence(seq);
                self.damaged.push(seq);
                self.problem(Some(seq), check, reason_of(err));
                self.stop_fold(seq);
            }
            None => {
                self.problem(None, check, reason_of(err));
                self.stop_fold(self.expected);
            }
        }
    }
}

/// Runs the command.
pub fn run(log: &OpenLog, context: &Context, args: &VerifyArgs) -> Result<Exit, Error> {
    let started = Instant::now();
    let head = log.log.head();
    let progress = Progress::new(head, "verify", context.quiet);
    let mut v = Verification {
        problems: Vec::new(),
        problem_count: 0,
        records: 0,
        first_ts: None,
        last_ts: None,
        expected: 1,
        fold_stopped: None,
        damaged: Vec::new(),
        a: State::new(),
        b: State::new(),
    };
    scan::scan(
        &log.log,
        1..=head,
        context.threads,
        &progress,
        |item| item,
        |item| {
            v.step(item);
            ControlFlow::Continue(())
        },
    );
    progress.finish();
    if v.expected <= head {
        let (from, to) = (v.expected, head);
        v.problem(
            Some(from),
            "missing",
            format!("seqs {from} to {to} are missing"),
        );
    }
    // The two digests are independent: compute them side by side.
    let (digest_a, digest_b) = std::thread::scope(|scope| {
        let b = scope.spawn(|| canonical::digest(&v.b));
        let a = canonical::digest(&v.a);
        (a, b.join().unwrap_or_default())
    });
    if digest_a != digest_b {
        v.problem(
            Some(v.a.head()),
            "rebuild",
            format!("two rebuilds of the same events differ: digest {digest_a} vs {digest_b}"),
        );
    }
    let torn_tail = v.damaged == [head] && v.fold_stopped == Some(head) && head > 0;
    if torn_tail {
        if let Some(problem) = v.problems.iter_mut().find(|p| p.seq == Some(head)) {
            problem.message = format!(
                "the last record is damaged, a torn write (the daemon drops it at its next \
                 start): {}",
                problem.message
            );
        }
    }
    let daemon = daemon_view(&v, head, torn_tail);
    let elapsed = started.elapsed();
    let per_sec = v.records as f64 / elapsed.as_secs_f64().max(1e-9);
    let ok = v.problem_count == 0;
    let mut out = Out::new();
    if args.json {
        out.json(&json!({
            "ok": ok,
            "data_dir": log.data_dir.display().to_string(),
            "records": v.records,
            "head": head,
            "first_ts": v.first_ts.map(ts),
            "last_ts": v.last_ts.map(|(_, t)| ts(t)),
            "problem_count": v.problem_count,
            "problems": v.problems,
            "folded_to": v.a.head(),
            "digest": digest_a,
            "rebuild_digests_match": digest_a == digest_b,
            "daemon": daemon,
            "size_on_disk": log.log.size_on_disk(),
            "elapsed_ms": elapsed.as_millis() as u64,
            "events_per_sec": per_sec.round() as u64,
        }))?;
    } else {
        let lines = text_report(&v, log, head, &digest_a, &daemon, ok);
        for line in lines {
            out.line(&line)?;
        }
        out.line(&format!(
            "{} {} records in {:.2} s ({:.0} k events/s)",
            if ok { "OK:" } else { "FAILED:" },
            v.records,
            elapsed.as_secs_f64(),
            per_sec / 1000.0
        ))?;
    }
    out.flush()?;
    super::leak(v);
    Ok(if ok { Exit::Ok } else { Exit::Problems })
}

/// What the daemon would do at its next start with this log.
fn daemon_view(v: &Verification, head: Seq, torn_tail: bool) -> String {
    match v.fold_stopped {
        None if v.problem_count == 0 => format!("rebuilds the state to seq {head}"),
        None => {
            format!("rebuilds the state to seq {head} (the problems above do not stop its replay)")
        }
        Some(_) if torn_tail => format!(
            "drops the damaged last record (seq {head}) and rebuilds the state to seq {}",
            head - 1
        ),
        Some(seq) if v.damaged.len() >= 2 && v.damaged.ends_with(&[head - 1, head]) => format!(
            "refuses to open the log: its last two records are damaged (the first problem \
             is at seq {seq})"
        ),
        Some(seq) => format!("refuses to start: its replay of the log stops at seq {seq}"),
    }
}

fn text_report(
    v: &Verification,
    log: &OpenLog,
    head: Seq,
    digest: &str,
    daemon: &str,
    ok: bool,
) -> Vec<String> {
    let mut lines = vec![format!("verify {}", log.shown)];
    let size = log.log.size_on_disk();
    lines.push(format!(
        "  records   {} (seq 1 to {head}), {} on disk",
        v.records,
        bytes(size)
    ));
    if let (Some(first), Some((_, last))) = (v.first_ts, v.last_ts) {
        lines.push(format!("  times     {} to {}", ts(first), ts(last)));
    }
    let folded = v.a.head();
    lines.push(match v.fold_stopped {
        None => format!("  fold      {folded} events folded, every invariant held"),
        Some(seq) => format!(
            "  fold      stopped at seq {seq}: {folded} events folded; later records were \
             checked one by one"
        ),
    });
    lines.push(format!(
        "  state     digest {digest} at seq {folded} (built twice, {})",
        if v.problems.iter().any(|p| p.check == "rebuild") {
            "DIFFERENT"
        } else {
            "identical"
        }
    ));
    lines.push(format!("  daemon    {daemon}"));
    if !ok {
        lines.push(format!(
            "\n{} problem{}:",
            v.problem_count,
            if v.problem_count == 1 { "" } else { "s" }
        ));
        for p in v.problems.iter().take(PROBLEMS_SHOWN) {
            let at = p
                .seq
                .map_or_else(|| "seq ?".to_owned(), |s| format!("seq {s}"));
            lines.push(format!("  {at}: {}: {}", p.check, p.message));
        }
        if v.problem_count > PROBLEMS_SHOWN as u64 {
            lines.push(format!(
                "  … and {} more (`--json` lists the first {PROBLEMS_KEPT})",
                v.problem_count - PROBLEMS_SHOWN as u64
            ));
        }
        lines.push(String::new());
    }
    lines
}
