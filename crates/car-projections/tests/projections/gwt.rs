//! The given/when/then harness of the decision tests (in the style of cqrs-es's
//! `TestFramework`).
//!
//! *Given* a list of prior events (folded with seqs 1.. and fixed times, see
//! [`crate::support::fold`]), *when* a command is decided against that state, *then* either
//! exactly the expected events come out — and they must apply cleanly on top of the given
//! state, so a decision can never produce something the fold refuses — or exactly the
//! expected refusal.

use car_events::Event;
use car_projections::decide::{AdmittedTurns, RecordTurns};
use car_projections::{Actor, Command, Refusal, decide};
use serde_json::Value;

use crate::support::{apply_events, fold, given_ts};

/// What is decided: a command, or a `runs.record_turns` batch that admission already
/// refused (admission is the part of that decision done before the state is looked at).
#[derive(Debug)]
pub(crate) struct When(Result<Command, Refusal>);

impl From<Command> for When {
    fn from(command: Command) -> Self {
        When(Ok(command))
    }
}

/// `runs.record_turns {run_id, turns}` as the gateway decides it: admission, then the
/// decision.
pub(crate) fn record_turns(actor: Actor, run: &str, turns: Vec<Value>) -> When {
    When(AdmittedTurns::admit(&turns).map(|turns| {
        Command::RecordTurns(RecordTurns {
            actor,
            run_id: run.into(),
            turns,
        })
    }))
}

/// What must come out.
#[derive(Debug)]
pub(crate) enum Then {
    /// Exactly these events, in this order (none: a command with nothing left to do).
    Events(Vec<Event>),
    /// Exactly this refusal.
    Refused(Refusal),
    /// `-32602` naming the parameter: the message starts with it.
    InvalidParams(&'static str),
    /// A role refusal (`Refusal::Forbidden`), whatever its wording.
    Forbidden,
}

/// Exactly these events.
pub(crate) fn events(events: Vec<Event>) -> Then {
    Then::Events(events)
}

/// One event.
pub(crate) fn event(event: impl Into<Event>) -> Then {
    Then::Events(vec![event.into()])
}

/// No event, no refusal.
pub(crate) fn nothing() -> Then {
    Then::Events(vec![])
}

/// Exactly this refusal.
pub(crate) fn refused(refusal: Refusal) -> Then {
    Then::Refused(refusal)
}

/// `-32602` about `field`.
pub(crate) fn invalid(field: &'static str) -> Then {
    Then::InvalidParams(field)
}

/// Runs one given/when/then case.
pub(crate) fn check(given: Vec<Event>, when: impl Into<When>, then: Then) {
    let state = fold(&given);
    let When(command) = when.into();
    let outcome = command.and_then(|command| decide(&state, &command));
    match then {
        Then::Events(expected) => {
            let decided = match outcome {
                Ok(decided) => decided,
                Err(refusal) => panic!("expected {expected:#?}, got the refusal {refusal:?}"),
            };
            assert_eq!(decided, expected, "decided events");
            let mut after = state.clone();
            if let Err(err) = apply_events(&mut after, &decided, given_ts) {
                panic!("the decided events do not apply to the state they were decided on: {err}");
            }
        }
        Then::Refused(expected) => assert_eq!(outcome, Err(expected)),
        Then::InvalidParams(field) => match outcome {
            Err(Refusal::InvalidParams(message)) => assert!(
                message.starts_with(field),
                "the message should name `{field}`: {message}"
            ),
            other => panic!("expected invalid params about `{field}`, got {other:?}"),
        },
        Then::Forbidden => assert!(
            matches!(outcome, Err(Refusal::Forbidden(_))),
            "expected a role refusal, got {outcome:?}"
        ),
    }
}
