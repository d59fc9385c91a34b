//! Keyed wake-ups: run subscribers and approval waiters.
//!
//! A subscriber to one run must not pay for traffic on other runs, so it does not wake on
//! every durable batch: it waits on its run's own `watch` channel (key [`run_key`]), which
//! the committing side bumps (to the seq of the change) once the change is durable. The
//! same holds for whoever waits on an approval ([`approval_key`]). A channel exists only
//! while someone watches the key; a bump that finds no watcher left removes it.

use std::collections::HashMap;

use car_events::Seq;
use parking_lot::Mutex;
use tokio::sync::watch;

/// The key of a run.
pub fn run_key(run_id: &str) -> String {
    format!("run:{run_id}")
}

/// The key of an approval.
pub fn approval_key(approval_id: &str) -> String {
    format!("approval:{approval_id}")
}

/// The watch channels of the keys someone follows.
#[derive(Debug, Default)]
pub struct Notifier {
    keys: Mutex<HashMap<String, watch::Sender<Seq>>>,
}

impl Notifier {
    /// A receiver that changes whenever `key` changes durably.
    pub fn watch(&self, key: &str) -> watch::Receiver<Seq> {
        let mut keys = self.keys.lock();
        match keys.get(key) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = watch::channel(0);
                keys.insert(key.to_owned(), sender);
                receiver
            }
        }
    }

    /// Records that `key` changed durably at `seq`.
    pub fn bump(&self, key: &str, seq: Seq) {
        let mut keys = self.keys.lock();
        let Some(sender) = keys.get(key) else {
            return;
        };
        if sender.receiver_count() == 0 {
            keys.remove(key);
            return;
        }
        sender.send_if_modified(|current| {
            if seq > *current {
                *current = seq;
                true
            } else {
                false
            }
        });
    }

    /// How many keys have a channel (for tests of the clean-up).
    pub fn watched(&self) -> usize {
        self.keys.lock().len()
    }
}
