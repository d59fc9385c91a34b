//! `state [--at SEQ]`: the daemon's state as it was right after event SEQ (time travel),
//! and its canonical digest ([`car_projections::canonical`]), the digest the daemon logs
//! when it stops.

use std::collections::BTreeMap;

use car_events::EventLog;
use car_projections::state::ApprovalStatus;
use car_projections::{RunStatus, State, canonical};
use serde_json::json;

use super::Context;
use crate::cli::StateArgs;
use crate::datadir::OpenLog;
use crate::exit::{Error, Exit};
use crate::output::{Out, clip, ts};
use crate::replay;

/// Most items of each kind (sessions, runs in progress, pending approvals) the text lists.
const LIST_AT_MOST: usize = 20;

/// Runs the command.
pub fn run(log: &OpenLog, context: &Context, args: &StateArgs) -> Result<Exit, Error> {
    let head = log.log.head();
    let at = args.at.unwrap_or(head);
    if at > head {
        return Err(Error::NotFound(format!(
            "--at {at} is past the end of the log (its last seq is {head})"
        )));
    }
    let replayed = replay::replay(&log.log, context.replay_options(at, false, "state"))?;
    replayed.warn_torn_tail();
    let state = &replayed.state;
    let digest = canonical::digest(state);
    let mut out = Out::new();
    if args.json {
        out.json(&json!({
            "seq": state.head(),
            "ts": replayed.last_ts.map(ts),
            "digest": digest,
            "state": canonical::render(state),
        }))?;
    } else {
        write_text(&mut out, state, replayed.last_ts.map(ts), &digest)?;
    }
    out.flush()?;
    super::leak(replayed);
    Ok(Exit::Ok)
}

fn write_text(
    out: &mut Out,
    state: &State,
    time: Option<String>,
    digest: &str,
) -> Result<(), Error> {
    let at = match time {
        Some(time) => format!("state at seq {} ({time})", state.head()),
        None => "state at seq 0 (before the first event)".to_owned(),
    };
    out.line(&at)?;
    out.line(&format!("digest         {digest}"))?;
    if let Some(daemon) = state.daemon() {
        let mut how = vec![format!("started at seq {}", daemon.started_seq)];
        if daemon.recovered {
            how.push("recovered".into());
        }
        if daemon.stopped {
            how.push("stopped cleanly".into());
        }
        out.line(&format!(
            "daemon         car-server {} (pid {}), {}",
            daemon.version,
            daemon.pid,
            how.join(", ")
        ))?;
    }
    let mut by_status: BTreeMap<RunStatus, usize> = BTreeMap::new();
    for run in state.runs() {
        *by_status.entry(run.status()).or_default() += 1;
    }
    let count = |s| by_status.get(&s).copied().unwrap_or(0);
    out.line(&format!(
        "runs           {} retained: {} in progress, {} completed, {} incomplete",
        state.run_count(),
        count(RunStatus::InProgress),
        count(RunStatus::Completed),
        count(RunStatus::Incomplete)
    ))?;
    let approvals = state.approvals();
    let pending: Vec<_> = approvals
        .iter()
        .filter(|a| a.status == ApprovalStatus::Pending)
        .collect();
    out.line(&format!(
        "approvals      {} ({} pending)",
        approvals.len(),
        pending.len()
    ))?;
    let sessions: Vec<_> = state.sessions().collect();
    out.line(&format!("sessions       {} open", sessions.len()))?;
    out.line(&format!(
        "subscriptions  {} open",
        state.subscriptions().count()
    ))?;
    out.line(&format!(
        "in flight      {} tool calls, {} proposals",
        state.tool_calls().count(),
        state.proposals().count()
    ))?;

    if !sessions.is_empty() {
        out.line("\nopen sessions:")?;
        for s in sessions.iter().take(LIST_AT_MOST) {
            let role = s.role.map_or("unauthenticated", |r| r.as_str());
            let agent = s.agent_id.as_deref().map(|a| format!(" agent {a}"));
            out.line(&format!(
                "  {}  {role}{}  from {}  since {}",
                s.client_id,
                agent.unwrap_or_default(),
                s.peer,
                ts(s.opened_at)
            ))?;
        }
        more(out, sessions.len())?;
    }
    let live: Vec<_> = state.runs().filter(|r| !r.is_ended()).collect();
    if !live.is_empty() {
        out.line("\nruns in progress:")?;
        for run in live.iter().take(LIST_AT_MOST) {
            out.line(&format!(
                "  {}  agent {}  {} turns  since {}  {}",
                run.run_id,
                run.agent_id,
                run.turn_count,
                ts(run.started_at),
                clip(&run.intent, 40)
            ))?;
        }
        more(out, live.len())?;
    }
    if !pending.is_empty() {
        out.line("\npending approvals:")?;
        for a in pending.iter().take(LIST_AT_MOST) {
            out.line(&format!(
                "  {}  {}  since {}",
                a.id,
                a.action,
                ts(a.created_at)
            ))?;
        }
        more(out, pending.len())?;
    }
    Ok(())
}

fn more(out: &mut Out, total: usize) -> Result<(), Error> {
    if total > LIST_AT_MOST {
        out.line(&format!("  … and {} more", total - LIST_AT_MOST))?;
    }
    Ok(())
}
