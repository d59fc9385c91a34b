//! Subscriptions: a session following a run (`runs.subscribe`), the log (`log.subscribe`)
//! or the host feed (`host.subscribe`) until it unsubscribes or leaves.
//!
//! The whole aggregate in one place: its slice of the state (`Subscriptions`, the open
//! ones), its fold (`subscription.opened`, `subscription.closed`) and its decisions
//! ([`Subscribe`], [`Unsubscribe`]). A subscription's `subscription.opened` seq is the
//! position of its snapshot, so the gateway streams exactly the events after it. The fold
//! runs from inside [`State::apply`], the decisions from inside [`crate::decide()`].

use std::collections::BTreeMap;

use car_events::event::{Event, Role, SubscriptionClosed, SubscriptionOpened, SubscriptionTarget};
use car_events::{Envelope, Seq};

use crate::access::Actor;
use crate::decide::Refusal;
use crate::state::{Contradiction, State};

/// An open subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Its id.
    pub subscription_id: String,
    /// The subscribing session.
    pub client_id: String,
    /// What it follows.
    pub target: SubscriptionTarget,
    /// Its `subscription.opened` event: the position of its snapshot.
    pub opened_seq: Seq,
}

/// The subscriptions slice of the state: the open ones, by id.
#[derive(Debug, Clone, Default)]
pub(crate) struct Subscriptions {
    subscriptions: BTreeMap<String, Subscription>,
}

impl Subscriptions {
    /// Folds a `subscription.*` event (other events are not this slice's); `session_open`
    /// says whether a session is open. On error the slice is unchanged.
    pub(crate) fn apply(
        &mut self,
        env: &Envelope,
        session_open: impl Fn(&str) -> bool,
    ) -> Result<(), Contradiction> {
        match &env.event {
            Event::SubscriptionOpened(e) => {
                if self.subscriptions.contains_key(&e.subscription_id) {
                    return Err(Contradiction::DuplicateSubscription(
                        e.subscription_id.clone(),
                    ));
                }
                if !session_open(&e.client_id) {
                    return Err(Contradiction::UnknownSession(e.client_id.clone()));
                }
                self.subscriptions.insert(
                    e.subscription_id.clone(),
                    Subscription {
                        subscription_id: e.subscription_id.clone(),
                        client_id: e.client_id.clone(),
                        target: e.target.clone(),
                        opened_seq: env.seq,
                    },
                );
            }
            Event::SubscriptionClosed(e) => {
                self.subscriptions
                    .remove(&e.subscription_id)
                    .ok_or_else(|| Contradiction::UnknownSubscription(e.subscription_id.clone()))?;
            }
            _ => {}
        }
        Ok(())
    }

    /// An open subscription.
    pub(crate) fn get(&self, id: &str) -> Option<&Subscription> {
        self.subscriptions.get(id)
    }

    /// Every open subscription, by id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Subscription> {
        self.subscriptions.values()
    }
}

/// `runs.subscribe`, `log.subscribe`, `host.subscribe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Who subscribes.
    pub actor: Actor,
    /// A fresh id.
    pub subscription_id: String,
    /// What to follow.
    pub target: SubscriptionTarget,
}

/// Which subscriptions of a session to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionSelector {
    /// One subscription by id (`log.unsubscribe`).
    Id(String),
    /// The session's subscription to a run (`runs.unsubscribe`).
    Run(String),
}

/// `runs.unsubscribe`, `log.unsubscribe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// The session.
    pub client_id: String,
    /// Which.
    pub selector: SubscriptionSelector,
}

pub(crate) fn subscribe(state: &State, c: &Subscribe) -> Result<Vec<Event>, Refusal> {
    let mut events = Vec::new();
    match &c.target {
        SubscriptionTarget::Run { run_id, .. } => {
            if state.readable_run(&c.actor, run_id).is_none() {
                return Err(Refusal::NotFound);
            }
            // One subscription per session and run: a new one replaces the old.
            events.extend(unsubscribe(
                state,
                &Unsubscribe {
                    client_id: c.actor.client_id.clone(),
                    selector: SubscriptionSelector::Run(run_id.clone()),
                },
            ));
        }
        SubscriptionTarget::Log { .. } => {
            if !c.actor.has_host_rights() {
                return Err(Refusal::Forbidden("log.* is for host sessions".into()));
            }
        }
        SubscriptionTarget::Host => {
            if c.actor.role == Role::Agent && !c.actor.unrestricted {
                return Err(Refusal::Forbidden(
                    "host.subscribe is not available to agent sessions".into(),
                ));
            }
        }
    }
    events.push(Event::SubscriptionOpened(SubscriptionOpened {
        subscription_id: c.subscription_id.clone(),
        client_id: c.actor.client_id.clone(),
        target: c.target.clone(),
    }));
    Ok(events)
}

pub(crate) fn unsubscribe(state: &State, c: &Unsubscribe) -> Vec<Event> {
    state
        .subscriptions()
        .filter(|sub| sub.client_id == c.client_id)
        .filter(|sub| match (&c.selector, &sub.target) {
            (SubscriptionSelector::Id(id), _) => &sub.subscription_id == id,
            (SubscriptionSelector::Run(run_id), SubscriptionTarget::Run { run_id: r, .. }) => {
                r == run_id
            }
            (SubscriptionSelector::Run(_), _) => false,
        })
        .map(|sub| {
            Event::SubscriptionClosed(SubscriptionClosed {
                subscription_id: sub.subscription_id.clone(),
                reason: "unsubscribed".into(),
            })
        })
        .collect()
}
