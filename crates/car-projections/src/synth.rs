//! Synthetic workloads: realistic, valid event histories for benchmarks and soak tests.
//!
//! Every benchmark that needs "a 1 M-event log" (the projection rebuild, the daemon's
//! start-up, `car-replay verify`) builds it here, so they all measure the same thing. The
//! history is what a busy daemon writes: agents connect and authenticate, start runs,
//! record turns one at a time, complete (most) runs, sometimes ask for approvals, and
//! leave. It is deterministic (a seed, a manual clock) and every event applies cleanly to
//! a [`State`](crate::State).

use car_events::event::{
    ApprovalRequested, ApprovalResolved, DaemonRecovered, DaemonStarted, Event, IncompleteReason,
    Role, RunEnded, RunStarted, SessionAuthenticated, SessionClosed, SessionOpened, Termination,
    TurnsRecorded,
};
use car_events::{
    Envelope, EventLog, JsonText, LogError, ManualClock, SCHEMA_VERSION, Seq, Stamper,
};
use chrono::TimeDelta;
use serde_json::json;

/// The shape of a synthetic history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// How many runs.
    pub runs: usize,
    /// Turns per run (each its own `run.turns_recorded`, as agents usually record them).
    pub turns_per_run: u32,
    /// Roughly how many bytes of text each turn's prompt and output carry.
    pub turn_text_bytes: usize,
    /// Every this many runs, one asks for an approval (0: never).
    pub approval_every: usize,
}

impl Workload {
    /// 10 000 runs of 100 turns: about 1.05 M events, the benchmarks' "1 M-event log".
    pub fn million() -> Self {
        Self {
            runs: 10_000,
            turns_per_run: 100,
            turn_text_bytes: 120,
            approval_every: 50,
        }
    }

    /// How many events [`Workload::events`] yields.
    pub fn event_count(&self) -> u64 {
        let per_run = 5 + u64::from(self.turns_per_run);
        let approvals = if self.approval_every == 0 {
            0
        } else {
            self.runs.div_ceil(self.approval_every) as u64 * 2
        };
        2 + self.runs as u64 * per_run + approvals
    }

    /// The history, event by event.
    pub fn events(&self) -> impl Iterator<Item = Event> + use<> {
        let workload = *self;
        let header = [
            Event::DaemonStarted(DaemonStarted {
                version: "synthetic".into(),
                pid: 1,
                data_dir: "/synthetic".into(),
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
        ];
        header
            .into_iter()
            .chain((0..workload.runs).flat_map(move |run| workload.run_events(run)))
    }

    fn run_events(&self, run: usize) -> Vec<Event> {
        let client_id = format!("session-{run:06}");
        let agent_id = format!("agent-{:03}", run % 97);
        let run_id = format!("run-{run:06}");
        let text = "lorem ipsum dolor sit amet ".repeat(self.turn_text_bytes / 27 + 1);
        let text = &text[..self.turn_text_bytes.min(text.len())];
        let mut events = Vec::with_capacity(self.turns_per_run as usize + 7);
        events.push(Event::SessionOpened(SessionOpened {
            client_id: client_id.clone(),
            peer: format!("127.0.0.1:{}", 40_000 + run % 20_000),
            role: None,
            agent_id: None,
        }));
        events.push(Event::SessionAuthenticated(SessionAuthenticated {
            client_id: client_id.clone(),
            role: Role::Agent,
            agent_id: Some(agent_id.clone()),
        }));
        events.push(Event::RunStarted(RunStarted {
            run_id: run_id.clone(),
            agent_id: agent_id.clone(),
            client_id: Some(client_id.clone()),
            intent: format!("synthetic task {run}"),
            outcome_description: Some("the task is done".into()),
            idempotency_key: None,
        }));
        for index in 0..self.turns_per_run {
            let turn = json!({
                "prompt": text,
                "tool": "search",
                "parameters": {"query": format!("q{index}"), "limit": 10},
                "output": text,
                "verifier_verdict": "not_run",
                "policy_rejected": false,
            });
            events.push(Event::TurnsRecorded(TurnsRecorded {
                run_id: run_id.clone(),
                base_index: index,
                turns: vec![JsonText::from_value(&turn)],
            }));
        }
        if self.approval_every != 0 && run % self.approval_every == 0 {
            let approval_id = format!("approval-{run:06}");
            events.push(Event::ApprovalRequested(ApprovalRequested {
                approval_id: approval_id.clone(),
                client_id: Some(client_id.clone()),
                agent_id: Some(agent_id.clone()),
                action: "tool:messages.send".into(),
                details: JsonText::from_value(&json!({"tool": "messages.send"})),
                options: vec!["approve".into(), "deny".into()],
                system_level: true,
            }));
            events.push(Event::ApprovalResolved(ApprovalResolved {
                approval_id,
                resolution: "approve".into(),
                client_id: Some("host".into()),
            }));
        }
        let termination = if run % 10 == 9 {
            Termination::Incomplete {
                reason: IncompleteReason::Disconnected,
            }
        } else {
            Termination::Outcome {
                outcome: JsonText::from_value(&json!({"status": "success", "summary": "done"})),
            }
        };
        events.push(Event::RunEnded(RunEnded {
            run_id,
            agent_id: agent_id.clone(),
            termination,
        }));
        events.push(Event::SessionClosed(SessionClosed {
            client_id,
            role: Some(Role::Agent),
            agent_id: Some(agent_id),
            reason: "closed".into(),
        }));
        events
    }
}

/// Appends a workload to an empty log in large batches (fast bulk load: no writer, no
/// projection), with times from a manual clock 10 ms apart. `progress` is called with the
/// seq reached after each batch. Returns the head.
pub fn write_log(
    log: &dyn EventLog,
    workload: &Workload,
    seed: u64,
    mut progress: impl FnMut(Seq),
) -> Result<Seq, LogError> {
    /// Events per append: large batches make the bulk load one flush per 10 000 events.
    const BATCH: usize = 10_000;
    let clock = ManualClock::fixed();
    let stamper = Stamper::deterministic(clock.clone(), seed);
    let mut seq = log.head();
    let mut batch = Vec::with_capacity(BATCH);
    for event in workload.events() {
        seq += 1;
        clock.advance(TimeDelta::milliseconds(10));
        batch.push(Envelope {
            seq,
            event_id: stamper.ids().uuid(),
            ts: stamper.clock().now(),
            schema_version: SCHEMA_VERSION,
            event,
        });
        if batch.len() == BATCH {
            log.append(&batch)?;
            batch.clear();
            progress(seq);
        }
    }
    if !batch.is_empty() {
        log.append(&batch)?;
        progress(seq);
    }
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::State;
    use car_events::MemLog;

    #[test]
    fn a_workload_applies_cleanly_and_has_the_announced_size() {
        let workload = Workload {
            runs: 60,
            turns_per_run: 7,
            turn_text_bytes: 40,
            approval_every: 25,
        };
        let log = MemLog::new();
        let head = write_log(&log, &workload, 1, |_| {}).unwrap();
        assert_eq!(head, workload.event_count());
        let mut state = State::new();
        car_events::replay(&log, &mut state, 1, |_| {}).unwrap();
        assert_eq!(state.run_count(), 60);
        assert!(
            state
                .runs()
                .all(|run| run.turn_count == 7 && run.is_ended())
        );
        assert_eq!(state.sessions().count(), 0);
        assert_eq!(state.approvals().len(), 3);
    }
}
