//! Per-run wake-ups for run subscribers.
//!
//! A subscriber to one run must not pay for traffic on other runs, so it does not wake on
//! every durable batch: it waits on its run's own `watch` channel, which the committing
//! side bumps (to the seq of the change) once the change is durable. A channel exists only
//! while someone watches the run; a bump that finds no watcher left removes it.

use std::collections::HashMap;

use car_events::Seq;
use parking_lot::Mutex;
use tokio::sync::watch;

/// The watch channels of the runs someone follows.
#[derive(Debug, Default)]
pub struct RunNotifier {
    runs: Mutex<HashMap<String, watch::Sender<Seq>>>,
}

impl RunNotifier {
    /// A receiver that changes whenever `run_id` changes durably.
    pub fn watch(&self, run_id: &str) -> watch::Receiver<Seq> {
        let mut runs = self.runs.lock();
        match runs.get(run_id) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = watch::channel(0);
                runs.insert(run_id.to_owned(), sender);
                receiver
            }
        }
    }

    /// Records that `run_id` changed durably at `seq`.
    pub fn bump(&self, run_id: &str, seq: Seq) {
        let mut runs = self.runs.lock();
        let Some(sender) = runs.get(run_id) else {
            return;
        };
        if sender.receiver_count() == 0 {
            runs.remove(run_id);
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

    /// How many runs have a channel (for tests of the clean-up).
    pub fn watched(&self) -> usize {
        self.runs.lock().len()
    }
}
