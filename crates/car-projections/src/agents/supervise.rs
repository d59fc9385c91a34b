//! The supervisor's decisions (PROTOCOL.md §12.3), pure: given an agent's state, what just
//! happened to its process and the time now, what happens next.
//!
//! The gateway's supervisor does the I/O (spawning, signalling, reaping, timers) and asks
//! these functions what to do; they read no clock (`now` is passed in) and touch nothing, so
//! backoff timings are tested exactly, with made-up times, without waiting.

use car_events::event::AgentExit;
use chrono::{DateTime, TimeDelta, Utc};

use super::Agent;
use super::spec::RestartPolicy;

/// The longest backoff (§12.3): however many restarts came before, a crashed agent is
/// retried at least once a minute until `max_restarts`.
pub const MAX_BACKOFF: TimeDelta = TimeDelta::seconds(60);

/// Uptime after which a process counts as healthy (§12.3): its exit starts the restart
/// count afresh, so an agent that crashes once a day never reaches `errored`.
pub const HEALTHY_UPTIME: TimeDelta = TimeDelta::seconds(60);

/// What follows an exit.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterExit {
    /// No restart: `stopped`, for this reason.
    Stop(&'static str),
    /// Restart after `delay`; the restart makes the count `restart_count`.
    Restart {
        /// The count once restarted.
        restart_count: u32,
        /// The wait.
        delay: TimeDelta,
    },
    /// Past `max_restarts`: `errored`.
    Errored(&'static str),
}

/// The backoff before restart number `count + 1`: min(`backoff_secs` × 2^`count`, 60 s),
/// to the millisecond.
pub fn backoff_delay(backoff_secs: f64, count: u32) -> TimeDelta {
    // 0.1 s × 2^10 > 60 s, so from count 10 on every allowed backoff_secs (≥ 0.1) is at the
    // cap; capping the exponent at 16 only keeps the shift from overflowing.
    let factor = f64::from(1u32 << count.min(16));
    let ms = (backoff_secs * factor * 1000.0).round();
    let max_ms = MAX_BACKOFF.num_milliseconds() as f64;
    TimeDelta::milliseconds(ms.min(max_ms) as i64)
}

/// What follows `agent`'s process ending with `exit` at `now`.
pub fn after_exit(agent: &Agent, exit: AgentExit, now: DateTime<Utc>) -> AfterExit {
    if agent.stop_requested {
        return AfterExit::Stop("stop requested");
    }
    let failed = match exit {
        AgentExit::DaemonRestart => return AfterExit::Stop("daemon_restart"),
        AgentExit::Code { code } => code != 0,
        AgentExit::Signal { .. } => true,
    };
    match agent.spec.restart {
        RestartPolicy::Never => return AfterExit::Stop("exited"),
        RestartPolicy::OnFailure if !failed => return AfterExit::Stop("exited"),
        RestartPolicy::OnFailure | RestartPolicy::Always => {}
    }
    let healthy = agent
        .started_at
        .is_some_and(|started| now - started >= HEALTHY_UPTIME);
    let count = if healthy { 0 } else { agent.restart_count };
    if count >= agent.spec.max_restarts {
        return AfterExit::Errored("max_restarts reached");
    }
    AfterExit::Restart {
        restart_count: count + 1,
        delay: backoff_delay(agent.spec.backoff_secs, count),
    }
}

/// When `agent`'s scheduled restart is due, if one is scheduled (status `backoff`).
pub fn restart_due_at(agent: &Agent) -> Option<DateTime<Utc>> {
    agent.restart_at
}

/// Whether `agent`'s scheduled restart is due at `now`.
pub fn restart_due(agent: &Agent, now: DateTime<Utc>) -> bool {
    restart_due_at(agent).is_some_and(|at| at <= now)
}
