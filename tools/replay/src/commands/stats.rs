//! `stats`: what the log holds. Events by kind (count and stored bytes), runs by status,
//! turns per run (min, median, p99, max), the log's size on disk and bytes per event.
//!
//! Counted from the events themselves, not from the state: every run that ever started is
//! counted, evicted ones included, and a log whose events contradict each other still has
//! statistics. A damaged record is skipped (exit 4; a torn last record only warns).

use std::collections::HashMap;
use std::ops::ControlFlow;

use car_events::event::{Event, Termination};
use car_events::{EventLog, Seq, codec};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::Context;
use crate::cli::StatsArgs;
use crate::datadir::OpenLog;
use crate::exit::{Error, Exit};
use crate::output::{Out, Table, bytes, ts};
use crate::progress::Progress;
use crate::replay::reason_of;
use crate::scan::{self, error_seq};

/// What a worker hands back per record: the event and its stored size, or the damage.
enum Mapped {
    Event(Box<Event>, Seq, DateTime<Utc>, usize),
    Damaged(Option<Seq>, String),
}

/// One run, as its events tell it.
#[derive(Debug, Default, Clone, Copy)]
struct RunStats {
    turns: u32,
    /// `None` while in progress; `Some(true)` completed, `Some(false)` incomplete.
    completed: Option<bool>,
    evicted: bool,
}

/// The counts.
#[derive(Debug, Default)]
struct Counts {
    events: u64,
    record_bytes: u64,
    by_kind: HashMap<&'static str, (u64, u64)>,
    runs: Vec<RunStats>,
    run_index: HashMap<String, usize>,
    first: Option<(Seq, DateTime<Utc>)>,
    last: Option<(Seq, DateTime<Utc>)>,
    damaged: u64,
}

impl Counts {
    fn add(&mut self, event: &Event, seq: Seq, at: DateTime<Utc>, size: usize) {
        self.events += 1;
        self.record_bytes += size as u64;
        let kind = self.by_kind.entry(event.kind()).or_default();
        kind.0 += 1;
        kind.1 += size as u64;
        if self.first.is_none() {
            self.first = Some((seq, at));
        }
        self.last = Some((seq, at));
        match event {
            Event::RunStarted(e) => {
                self.run_index.insert(e.run_id.clone(), self.runs.len());
                self.runs.push(RunStats::default());
            }
            Event::TurnsRecorded(e) => {
                if let Some(run) = self.run_mut(&e.run_id) {
                    run.turns += e.turns.len() as u32;
                }
            }
            Event::RunEnded(e) => {
                let completed = matches!(e.termination, Termination::Outcome { .. });
                if let Some(run) = self.run_mut(&e.run_id) {
                    run.completed.get_or_insert(completed);
                }
            }
            Event::RunEvicted(e) => {
                if let Some(run) = self.run_mut(&e.run_id) {
                    run.evicted = true;
                }
            }
            _ => {}
        }
    }

    fn run_mut(&mut self, run_id: &str) -> Option<&mut RunStats> {
        let index = *self.run_index.get(run_id)?;
        self.runs.get_mut(index)
    }
}

/// Nearest-rank percentile `p` (0–100) of sorted values.
fn percentile(sorted: &[u32], p: u32) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (u64::from(p) * sorted.len() as u64).div_ceil(100).max(1);
    sorted[(rank - 1) as usize]
}

/// Runs the command.
pub fn run(log: &OpenLog, context: &Context, args: &StatsArgs) -> Result<Exit, Error> {
    let head = log.log.head();
    let progress = Progress::new(head, "stats", context.quiet);
    let mut counts = Counts::default();
    let mut expected = 1;
    scan::scan(
        &log.log,
        1..=head,
        context.threads,
        &progress,
        |item| match item {
            // A record that decoded re-encodes to exactly its stored bytes (the format is
            // frozen and deterministic), which gives its size without a second read.
            Ok(env) => {
                let size = codec::encode(&env).map_or(0, |b| b.len());
                Mapped::Event(Box::new(env.event), env.seq, env.ts, size)
            }
            Err(err) => Mapped::Damaged(error_seq(&err), reason_of(&err)),
        },
        |mapped| {
            match mapped {
                Mapped::Event(event, seq, at, size) => {
                    if seq > expected {
                        counts.damaged += seq - expected;
                        eprintln!("car-replay: seq {expected} to {}: missing", seq - 1);
                    }
                    expected = seq + 1;
                    counts.add(&event, seq, at, size);
                }
                Mapped::Damaged(Some(seq), reason) if seq == head => {
                    eprintln!(
                        "car-replay: warning: the last record (seq {seq}) is damaged, a torn \
                         write: {reason}. It is left out, as the daemon drops it at its next \
                         start."
                    );
                    expected = seq + 1;
                }
                Mapped::Damaged(seq, reason) => {
                    counts.damaged += 1;
                    let at = seq.map_or_else(|| "?".to_owned(), |s| s.to_string());
                    eprintln!("car-replay: seq {at}: skipped, the record is damaged: {reason}");
                    if let Some(seq) = seq {
                        expected = seq + 1;
                    }
                }
            }
            ControlFlow::Continue(())
        },
    );
    progress.finish();
    let report = report(&counts, log.log.size_on_disk());
    let mut out = Out::new();
    if args.json {
        out.json(&report)?;
    } else {
        write_text(&mut out, &report)?;
    }
    out.flush()?;
    if counts.damaged > 0 {
        eprintln!(
            "car-replay: {} damaged or missing record{} not counted; `car-replay verify` lists \
             every problem",
            counts.damaged,
            if counts.damaged == 1 { "" } else { "s" }
        );
        return Ok(Exit::Corrupt);
    }
    Ok(Exit::Ok)
}

fn report(counts: &Counts, size_on_disk: u64) -> Value {
    let mut by_kind = Map::new();
    for kind in Event::KINDS {
        let (count, stored) = counts.by_kind.get(kind).copied().unwrap_or_default();
        by_kind.insert((*kind).to_owned(), json!({"count": count, "bytes": stored}));
    }
    let status = |f: &dyn Fn(&RunStats) -> bool| counts.runs.iter().filter(|r| f(r)).count();
    let mut turns: Vec<u32> = counts.runs.iter().map(|r| r.turns).collect();
    turns.sort_unstable();
    let mean = if turns.is_empty() {
        0.0
    } else {
        turns.iter().map(|&t| f64::from(t)).sum::<f64>() / turns.len() as f64
    };
    let per_event = |total: u64| {
        if counts.events == 0 {
            0.0
        } else {
            (total as f64 / counts.events as f64 * 10.0).round() / 10.0
        }
    };
    json!({
        "events": counts.events,
        "first_seq": counts.first.map(|(s, _)| s),
        "last_seq": counts.last.map(|(s, _)| s),
        "first_ts": counts.first.map(|(_, t)| ts(t)),
        "last_ts": counts.last.map(|(_, t)| ts(t)),
        "damaged": counts.damaged,
        "by_kind": by_kind,
        "runs": {
            "total": counts.runs.len(),
            "in_progress": status(&|r| r.completed.is_none()),
            "completed": status(&|r| r.completed == Some(true)),
            "incomplete": status(&|r| r.completed == Some(false)),
            "evicted": status(&|r| r.evicted),
        },
        "turns_per_run": {
            "min": turns.first().copied().unwrap_or(0),
            "median": percentile(&turns, 50),
            "p99": percentile(&turns, 99),
            "max": turns.last().copied().unwrap_or(0),
            "mean": (mean * 10.0).round() / 10.0,
        },
        "size": {
            "on_disk": size_on_disk,
            "records": counts.record_bytes,
            "bytes_per_event_on_disk": per_event(size_on_disk),
            "bytes_per_event": per_event(counts.record_bytes),
        },
    })
}

fn write_text(out: &mut Out, report: &Value) -> Result<(), Error> {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let span = match (report["first_ts"].as_str(), report["last_ts"].as_str()) {
        (Some(first), Some(last)) => format!(", {first} to {last}"),
        _ => String::new(),
    };
    out.line(&format!("{} events{span}", n(&report["events"])))?;
    out.line("")?;
    let mut kinds = Table::new(&["KIND", "EVENTS", "BYTES"]);
    let mut rows: Vec<(&String, &Value)> = report["by_kind"]
        .as_object()
        .map(|m| m.iter().filter(|(_, v)| n(&v["count"]) > 0).collect())
        .unwrap_or_default();
    rows.sort_by(|a, b| n(&b.1["count"]).cmp(&n(&a.1["count"])).then(a.0.cmp(b.0)));
    for (kind, v) in rows {
        kinds.row(vec![
            kind.clone(),
            n(&v["count"]).to_string(),
            bytes(n(&v["bytes"])),
        ]);
    }
    kinds.write(out)?;
    let runs = &report["runs"];
    out.line("")?;
    out.line(&format!(
        "runs           {} started: {} completed, {} incomplete, {} in progress; {} evicted",
        n(&runs["total"]),
        n(&runs["completed"]),
        n(&runs["incomplete"]),
        n(&runs["in_progress"]),
        n(&runs["evicted"])
    ))?;
    let turns = &report["turns_per_run"];
    out.line(&format!(
        "turns per run  min {}, median {}, p99 {}, max {} (mean {})",
        n(&turns["min"]),
        n(&turns["median"]),
        n(&turns["p99"]),
        n(&turns["max"]),
        turns["mean"]
    ))?;
    let size = &report["size"];
    out.line(&format!(
        "size           {} on disk ({} bytes per event); records {} ({} bytes per event)",
        bytes(n(&size["on_disk"])),
        size["bytes_per_event_on_disk"],
        bytes(n(&size["records"])),
        size["bytes_per_event"]
    ))?;
    if n(&report["damaged"]) > 0 {
        out.line(&format!(
            "damaged        {} records not counted",
            n(&report["damaged"])
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&values, 50), 50);
        assert_eq!(percentile(&values, 99), 99);
        assert_eq!(percentile(&values, 100), 100);
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[1, 2, 3, 4], 50), 2);
        assert_eq!(percentile(&[], 50), 0);
    }
}
