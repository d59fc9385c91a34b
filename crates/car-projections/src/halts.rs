//! Session halts (PROTOCOL.md §14.5): a `tools.execute` error with `data.terminal: true`
//! fails its action without retry and halts the session that submitted the proposal, whose
//! later proposals are then rejected; `session.clear_halt` clears a host session's own
//! halt. New sessions start clear.
//!
//! The decisions of this aggregate; the fold is the sessions slice's
//! ([`crate::sessions`], `Session::halted`).

use car_events::event::{Event, HaltCleared, Role, SessionHalted};

use crate::access::Actor;
use crate::decide::Refusal;
use crate::state::State;

/// The refusal of `session.clear_halt` to a non-host session (CAR's wording).
pub const CLEAR_HALT_NEEDS_HOST: &str =
    "permission denied: session.clear_halt requires the host role";
/// What every action of a halted session's proposal is rejected with.
pub const HALTED: &str = "session halted by a terminal tool failure";

/// A terminal tool failure halts the session that made the proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaltSession {
    /// The event to record.
    pub halt: SessionHalted,
}

/// `session.clear_halt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearHalt {
    /// Who asks.
    pub actor: Actor,
}

/// Halts the session (nothing when it is gone or already halted).
pub fn decide_halt(state: &State, c: &HaltSession) -> Vec<Event> {
    match state.session(&c.halt.client_id) {
        Some(session) if !session.halted => vec![Event::SessionHalted(c.halt.clone())],
        _ => vec![],
    }
}

/// Clears the caller's halt: a host only; nothing when it is not halted.
pub fn decide_clear(state: &State, c: &ClearHalt) -> Result<Vec<Event>, Refusal> {
    if c.actor.role != Role::Host && !c.actor.unrestricted {
        return Err(Refusal::Forbidden(CLEAR_HALT_NEEDS_HOST.into()));
    }
    Ok(match state.session(&c.actor.client_id) {
        Some(session) if session.halted => vec![Event::HaltCleared(HaltCleared {
            client_id: c.actor.client_id.clone(),
        })],
        _ => vec![],
    })
}

/// Whether a session is halted.
pub fn is_halted(state: &State, client_id: &str) -> bool {
    state.session(client_id).is_some_and(|s| s.halted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use car_events::event::{SessionAuthenticated, SessionOpened};
    use car_events::{Envelope, SCHEMA_VERSION};

    fn given(events: Vec<Event>) -> State {
        let mut state = State::new();
        for (i, event) in events.into_iter().enumerate() {
            let seq = i as u64 + 1;
            state
                .apply(&Envelope {
                    seq,
                    event_id: uuid::Uuid::from_u128(u128::from(seq)),
                    ts: chrono::DateTime::from_timestamp_millis(1_000 * seq as i64).unwrap(),
                    schema_version: SCHEMA_VERSION,
                    event,
                })
                .unwrap();
        }
        state
    }

    fn session(client: &str, role: Role) -> Vec<Event> {
        vec![
            Event::SessionOpened(SessionOpened {
                client_id: client.into(),
                peer: "p".into(),
                role: None,
                agent_id: None,
            }),
            Event::SessionAuthenticated(SessionAuthenticated {
                client_id: client.into(),
                role,
                agent_id: None,
            }),
        ]
    }

    fn halt(client: &str) -> SessionHalted {
        SessionHalted {
            client_id: client.into(),
            proposal_id: "p1".into(),
            action_id: "a1".into(),
            error: "stop".into(),
        }
    }

    #[test]
    fn a_terminal_failure_halts_the_session_once() {
        let state = given(session("c1", Role::Client));
        let command = HaltSession { halt: halt("c1") };
        let events = decide_halt(&state, &command);
        assert_eq!(events, vec![Event::SessionHalted(halt("c1"))]);
        let mut all = session("c1", Role::Client);
        all.extend(events);
        let state = given(all);
        assert!(is_halted(&state, "c1"));
        assert_eq!(decide_halt(&state, &command), vec![], "already halted");
        assert_eq!(
            decide_halt(&state, &HaltSession { halt: halt("gone") }),
            vec![]
        );
    }

    #[test]
    fn a_host_clears_its_own_halt_and_nobody_else_may() {
        let mut events = session("h1", Role::Host);
        events.extend(session("c1", Role::Client));
        events.push(Event::SessionHalted(halt("h1")));
        events.push(Event::SessionHalted(halt("c1")));
        let state = given(events.clone());
        let host = Actor::new("h1".to_owned(), Role::Host, None);
        let cleared = decide_clear(
            &state,
            &ClearHalt {
                actor: host.clone(),
            },
        )
        .unwrap();
        assert_eq!(
            cleared,
            vec![Event::HaltCleared(HaltCleared {
                client_id: "h1".into()
            })]
        );
        let client = Actor::new("c1".to_owned(), Role::Client, None);
        assert_eq!(
            decide_clear(&state, &ClearHalt { actor: client }),
            Err(Refusal::Forbidden(CLEAR_HALT_NEEDS_HOST.into()))
        );
        events.extend(cleared);
        let state = given(events);
        assert!(!is_halted(&state, "h1"));
        assert!(is_halted(&state, "c1"), "only the caller's own halt");
        assert_eq!(
            decide_clear(&state, &ClearHalt { actor: host }).unwrap(),
            vec![],
            "nothing to clear"
        );
    }
}
