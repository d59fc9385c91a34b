//! `memory [--scope S] [--at SEQ] [--scopes] [--json]`: a memory scope's live facts as
//! they were right after event SEQ (time travel), or every scope with its fact count.
//!
//! Memory is a projection of the log like runs (PROTOCOL.md §11.1): the same fold the
//! daemon runs at start-up ([`car_projections::memory::Memory`]) gives the facts, in log
//! order, each with the seq of the event that added (or loaded) it, so an auditor sees
//! exactly what `memory.query` and `memory.build_context` worked from at that moment.

use car_events::EventLog;
use car_projections::State;
use car_projections::memory::Fact;
use serde_json::{Value, json};

use super::Context;
use crate::cli::MemoryArgs;
use crate::datadir::OpenLog;
use crate::exit::{Error, Exit};
use crate::output::{Out, Table, clip, ts};
use crate::replay;

/// A fact as `--json` shows it: the snapshot row of `memory.persist`, plus its seq.
fn fact_json(fact: &Fact) -> Value {
    let mut row = fact.to_json();
    row["seq"] = json!(fact.seq);
    row
}

/// Runs the command.
pub fn run(log: &OpenLog, context: &Context, args: &MemoryArgs) -> Result<Exit, Error> {
    let head = log.log.head();
    let at = args.at.unwrap_or(head);
    if at > head {
        return Err(Error::NotFound(format!(
            "--at {at} is past the end of the log (its last seq is {head})"
        )));
    }
    let replayed = replay::replay(&log.log, context.replay_options(at, false, "memory"))?;
    replayed.warn_torn_tail();
    let state = &replayed.state;
    let time = replayed.last_ts.map(ts);
    let mut out = Out::new();
    if args.scopes {
        write_scopes(&mut out, state, time, args.json)?;
    } else {
        write_scope(&mut out, state, time, args)?;
    }
    out.flush()?;
    super::leak(replayed);
    Ok(Exit::Ok)
}

fn at_line(state: &State, time: Option<String>) -> String {
    match time {
        Some(time) => format!("at seq {} ({time})", state.head()),
        None => "at seq 0 (before the first event)".to_owned(),
    }
}

fn write_scopes(
    out: &mut Out,
    state: &State,
    time: Option<String>,
    json: bool,
) -> Result<(), Error> {
    let scopes: Vec<(&str, usize)> = state
        .memory()
        .scopes()
        .map(|(scope, memory)| (scope, memory.len()))
        .collect();
    if json {
        let rows: Vec<Value> = scopes
            .iter()
            .map(|(scope, count)| json!({"scope": scope, "fact_count": count}))
            .collect();
        return out.json(&json!({"seq": state.head(), "ts": time, "scopes": rows}));
    }
    out.line(&format!(
        "memory scopes {}: {}",
        at_line(state, time),
        scopes.len()
    ))?;
    if scopes.is_empty() {
        return Ok(());
    }
    let mut table = Table::new(&["SCOPE", "FACTS"]);
    for (scope, count) in &scopes {
        table.row(vec![(*scope).to_owned(), count.to_string()]);
    }
    table.write(out)
}

fn write_scope(
    out: &mut Out,
    state: &State,
    time: Option<String>,
    args: &MemoryArgs,
) -> Result<(), Error> {
    let memory = state.memory();
    let written = memory.scope(&args.scope).is_some();
    let facts: Vec<&Fact> = memory.facts(&args.scope).collect();
    if args.json {
        return out.json(&json!({
            "seq": state.head(),
            "ts": time,
            "scope": args.scope.as_key(),
            "written": written,
            "fact_count": facts.len(),
            "facts": facts.iter().map(|f| fact_json(f)).collect::<Vec<_>>(),
        }));
    }
    let count = match facts.len() {
        1 => "1 fact".to_owned(),
        n => format!("{n} facts"),
    };
    let never = if written { "" } else { " (never written)" };
    out.line(&format!(
        "memory of {} {}: {count}{never}",
        args.scope,
        at_line(state, time)
    ))?;
    if facts.is_empty() {
        return Ok(());
    }
    let mut table = Table::new(&["FACT", "KIND", "SEQ", "ADDED", "SUBJECT: BODY", "TAGS"]);
    for fact in facts {
        let text = format!("{}: {}", fact.subject, fact.body).replace(['\r', '\n'], " ");
        table.row(vec![
            fact.fact_id.clone(),
            fact.kind.clone(),
            fact.seq.to_string(),
            ts(fact.created_at),
            clip(&text, 60),
            fact.tags.join(","),
        ]);
    }
    table.write(out)
}
