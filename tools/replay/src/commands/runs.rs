//! `runs`: the runs of the log, newest first, as `runs.list` would list them (and, with
//! `--evicted`, the runs retention evicted too).

use car_events::format_ts;
use car_projections::{Run, trace};
use serde_json::{Value, json};

use super::Context;
use crate::cli::RunsArgs;
use crate::datadir::OpenLog;
use crate::exit::{Error, Exit};
use crate::output::{Out, Table, clip, duration};
use crate::replay::EvictedRun;

/// Longest intent shown in the table (the JSON has all of it).
const INTENT_WIDTH: usize = 48;

/// A run to list, and its eviction if it was evicted.
type Listed<'a> = (&'a Run, Option<&'a EvictedRun>);

/// Runs the command.
pub fn run(log: &OpenLog, context: &Context, args: &RunsArgs) -> Result<Exit, Error> {
    let replayed = context.replay_all(log, args.evicted, "runs")?;
    let mut runs: Vec<Listed<'_>> = replayed.state.runs().map(|run| (run, None)).collect();
    runs.extend(replayed.evicted.iter().map(|e| (&e.run, Some(e))));
    runs.retain(|(run, _)| keep(run, args));
    // Newest first: the start seq orders starts exactly (times may tie).
    runs.sort_by_key(|(run, _)| std::cmp::Reverse(run.started_seq));
    if let Some(limit) = args.limit {
        runs.truncate(limit);
    }
    let mut out = Out::new();
    if args.json {
        let runs: Vec<Value> = runs
            .iter()
            .map(|(run, evicted)| summary(run, *evicted, args.evicted))
            .collect();
        out.json(&json!({"head": replayed.state.head(), "runs": runs}))?;
    } else {
        write_table(&mut out, &runs)?;
    }
    out.flush()?;
    drop(runs);
    super::leak(replayed);
    Ok(Exit::Ok)
}

fn keep(run: &Run, args: &RunsArgs) -> bool {
    args.agent
        .as_ref()
        .is_none_or(|agent| &run.agent_id == agent)
        && args
            .status
            .is_none_or(|status| run.status() == status.status())
        && args.since.is_none_or(|since| run.started_at >= since)
        && args.until.is_none_or(|until| run.started_at < until)
}

/// `runs.list`'s summary, plus where the run was evicted when evicted runs are listed.
fn summary(run: &Run, evicted: Option<&EvictedRun>, with_evicted: bool) -> Value {
    let mut summary = trace::summary(run);
    if let (true, Value::Object(fields)) = (with_evicted, &mut summary) {
        fields.insert(
            "evicted".into(),
            evicted.map_or(
                Value::Null,
                |e| json!({"seq": e.seq, "at": format_ts(e.at), "reason": reason(e)}),
            ),
        );
    }
    summary
}

fn reason(evicted: &EvictedRun) -> &'static str {
    match evicted.reason {
        car_events::event::EvictionReason::Age => "age",
        car_events::event::EvictionReason::Count => "count",
    }
}

fn write_table(out: &mut Out, runs: &[Listed<'_>]) -> Result<(), Error> {
    if runs.is_empty() {
        return out.line("no runs");
    }
    let mut table = Table::new(&[
        "RUN", "AGENT", "STATUS", "TURNS", "STARTED", "DURATION", "INTENT",
    ]);
    for (run, evicted) in runs {
        let mut status = run.status().as_str().to_owned();
        if let Some(evicted) = evicted {
            status.push_str(&format!(" (evicted: {})", reason(evicted)));
        }
        table.row(vec![
            run.run_id.clone(),
            run.agent_id.clone(),
            status,
            run.turn_count.to_string(),
            format_ts(run.started_at),
            run.end.as_ref().map_or_else(
                || "-".to_owned(),
                |end| duration(end.ended_at - run.started_at),
            ),
            clip(&run.intent, INTENT_WIDTH),
        ]);
    }
    table.write(out)?;
    out.line(&format!(
        "{} run{}",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" }
    ))
}
