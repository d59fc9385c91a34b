//! Gateways (cluster mode, PROTOCOL.md §19): which gateway serves each open session and
//! holds each run in progress, so that a gateway's stop or death ends *its* sessions and
//! runs and nothing of the other gateways'.
//!
//! The whole aggregate in one place: its slice of the state ([`Gateways`]: session →
//! gateway for open sessions, run → gateway for runs in progress), its fold
//! (`session.gateway`, and the session and run events that move the attribution) and its
//! decisions:
//! - [`gateway_lost`]: what the maintenance lease holder appends for a gateway whose
//!   heartbeat lapsed: `gateway.lost`, then its proposals cut off completed as after a
//!   crash (§14.5: the call in flight `indeterminate`), its subscriptions and sessions
//!   closed, pending approvals it asked for expired, and its runs ended
//!   `incomplete`/`gateway_lost`;
//! - [`gateway_stopped`]: the same for a clean stop (`daemon_shutdown`, §3.7/§9) or for a
//!   gateway's own leftovers found at its start (`daemon_restart`), without `gateway.lost`.
//!
//! A run belongs to the gateway of the session that started it, and moves to the gateway of
//! the session that resumes it (`run.resumed`, §14.2): a run resumed on a surviving gateway
//! is not ended when its first gateway is declared lost. Nor is one that a live session of
//! another gateway owns (an agent session bound to its agent id), as §3.7 says for a
//! disconnect. Sessions and runs written by a gateway without attribution (a log from
//! before cluster mode part 2) belong to no gateway: nothing here ends them.
//!
//! The I/O (heartbeats and the lease in JetStream KV) is the gateway's; these are pure.

use std::collections::{BTreeMap, BTreeSet};

use car_events::Envelope;
use car_events::event::{Event, GatewayLost, IncompleteReason};

use crate::state::{Contradiction, Run, State};

/// The gateways slice of the state.
#[derive(Debug, Clone, Default)]
pub(crate) struct Gateways {
    /// Open sessions with a known gateway: `client_id` → `gateway_id`.
    sessions: BTreeMap<String, String>,
    /// Runs in progress with a known gateway: `run_id` → `gateway_id`.
    runs: BTreeMap<String, String>,
}

impl Gateways {
    /// Folds `session.gateway` (the session must be open: `is_open`) and keeps the
    /// attribution in step with the session and run events, after their own slices folded
    /// them. On error the slice is unchanged.
    pub(crate) fn apply(
        &mut self,
        env: &Envelope,
        is_open: impl Fn(&str) -> bool,
    ) -> Result<(), Contradiction> {
        match &env.event {
            Event::SessionOnGateway(e) => {
                if !is_open(&e.client_id) {
                    return Err(Contradiction::UnknownSession(e.client_id.clone()));
                }
                self.sessions
                    .insert(e.client_id.clone(), e.gateway_id.clone());
            }
            Event::SessionClosed(e) => {
                self.sessions.remove(&e.client_id);
            }
            Event::RunStarted(e) => {
                if let Some(gateway) = e.client_id.as_ref().and_then(|c| self.sessions.get(c)) {
                    self.runs.insert(e.run_id.clone(), gateway.clone());
                }
            }
            Event::RunResumed(e) => match self.sessions.get(&e.client_id) {
                Some(gateway) => {
                    self.runs.insert(e.run_id.clone(), gateway.clone());
                }
                None => {
                    self.runs.remove(&e.run_id);
                }
            },
            Event::RunEnded(e) => {
                self.runs.remove(&e.run_id);
            }
            _ => {}
        }
        Ok(())
    }

    /// The gateway serving an open session, if known.
    pub(crate) fn of_session(&self, client_id: &str) -> Option<&str> {
        self.sessions.get(client_id).map(String::as_str)
    }

    /// The gateway holding a run in progress, if known.
    pub(crate) fn of_run(&self, run_id: &str) -> Option<&str> {
        self.runs.get(run_id).map(String::as_str)
    }

    /// Every gateway that serves an open session or holds a run in progress.
    pub(crate) fn active(&self) -> BTreeSet<&str> {
        self.sessions
            .values()
            .chain(self.runs.values())
            .map(String::as_str)
            .collect()
    }
}

/// The maintenance lease holder `declared_by` declares `gateway_id` lost (its heartbeat
/// lapsed): `gateway.lost`, then everything of it ended (module docs), its runs
/// `incomplete`/`gateway_lost`. Nothing when the gateway serves nothing and holds no run,
/// so deciding again after the events are applied gives nothing.
pub fn gateway_lost(state: &State, gateway_id: &str, declared_by: &str) -> Vec<Event> {
    let ended = abandon_gateway(state, gateway_id, IncompleteReason::GatewayLost);
    if ended.is_empty() {
        return ended;
    }
    let mut events = vec![Event::GatewayLost(GatewayLost {
        gateway_id: gateway_id.to_owned(),
        declared_by: declared_by.to_owned(),
    })];
    events.extend(ended);
    events
}

/// A gateway's own sessions and runs ended (module docs): `daemon_shutdown` at its clean
/// stop, `daemon_restart` for what its previous life left when it starts again. Nothing of
/// other gateways'.
pub fn gateway_stopped(state: &State, gateway_id: &str, reason: IncompleteReason) -> Vec<Event> {
    abandon_gateway(state, gateway_id, reason)
}

/// Gateways that serve a session or hold a run in progress, other than `except`: those
/// whose heartbeat the lease holder checks.
pub fn active_gateways<'a>(state: &'a State, except: &str) -> Vec<&'a str> {
    state
        .gateways()
        .active()
        .into_iter()
        .filter(|g| *g != except)
        .collect()
}

fn abandon_gateway(state: &State, gateway_id: &str, reason: IncompleteReason) -> Vec<Event> {
    let gateways = state.gateways();
    let mine = |client_id: &str| gateways.of_session(client_id) == Some(gateway_id);
    // A run stays when a live session of another gateway owns it (§3.7).
    let owned_elsewhere = |run: &Run| {
        let starter = run
            .owner
            .as_deref()
            .is_some_and(|c| state.session(c).is_some() && !mine(c));
        let agent = state.agent_session(&run.agent_id).is_some_and(|c| !mine(c));
        starter || agent
    };
    let ends =
        |run: &Run| gateways.of_run(&run.run_id) == Some(gateway_id) && !owned_elsewhere(run);
    // Approvals of sessions no gateway was named for (logs from before cluster mode) stay.
    crate::recovery::abandon_live(state, reason, &mine, &ends, false)
}
