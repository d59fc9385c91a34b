//! The live proposals of each run, so that `runs.cancel` can stop them (PROTOCOL.md
//! §14.1 step 2): a running proposal skips its later actions, and the action awaiting its
//! callback fails with ``run '<run_id>' cancelled``, the text `tools.cancel` carries to
//! the tool client.
//!
//! This is in-memory coordination between two tasks of this process (the canceller and
//! the proposal's runner), not state: what happened is recorded by the runner as the
//! tool call's and the action's outcome events, and by `runs.cancel` as the cancellation's
//! events. A restart has no live proposals to stop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How long `runs.cancel` waits for a runner to say what it did with its in-flight
/// callback. The runner only queues one `tools.cancel` frame and answers; if it has not
/// after this long, its connection is stuck, and the end is reported unconfirmed.
pub(crate) const ABANDON_WAIT: Duration = Duration::from_secs(5);

/// The callback a cancellation abandoned, and whether its `tools.cancel` reached the
/// owner's outbound queue (false: the connection was gone; the end is unconfirmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Abandoned {
    /// The action whose callback was abandoned.
    pub(crate) action_id: String,
    /// The `tools.execute` request id.
    pub(crate) request_id: String,
    /// `tools.cancel` was queued to the tool client.
    pub(crate) written: bool,
}

/// What `runs.cancel` learns from stopping a run's proposals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Stopped {
    /// The callback abandoned, if one was in flight.
    pub(crate) abandoned: Option<Abandoned>,
    /// A runner had a callback in flight and did not answer within [`ABANDON_WAIT`], or
    /// could not write `tools.cancel`.
    pub(crate) unconfirmed: bool,
}

/// The live proposals, by run.
#[derive(Debug, Default)]
pub(crate) struct LiveProposals {
    runs: Mutex<HashMap<String, Vec<Arc<Control>>>>,
}

/// One running proposal's control.
#[derive(Debug)]
pub(crate) struct Control {
    cancelled: CancellationToken,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The cancellation's text, once cancelled.
    message: Option<String>,
    /// The callback awaited now: (action id, request id).
    in_flight: Option<(String, String)>,
    /// Where to report what was done with the in-flight callback.
    report: Option<oneshot::Sender<Abandoned>>,
}

/// Keeps a proposal registered under its run while it runs.
#[derive(Debug)]
pub(crate) struct ControlGuard {
    controls: Arc<LiveProposals>,
    run_id: String,
    control: Arc<Control>,
}

impl LiveProposals {
    /// Registers a proposal running under `run_id`.
    pub(crate) fn register(self: &Arc<Self>, run_id: &str) -> ControlGuard {
        let control = Arc::new(Control {
            cancelled: CancellationToken::new(),
            inner: Mutex::new(Inner::default()),
        });
        self.runs
            .lock()
            .entry(run_id.to_owned())
            .or_default()
            .push(control.clone());
        ControlGuard {
            controls: self.clone(),
            run_id: run_id.to_owned(),
            control,
        }
    }

    /// Stops every proposal running under `run_id` with `message` (the action error
    /// text), and waits, at most [`ABANDON_WAIT`], for each runner with a callback in
    /// flight to say what it did with it.
    pub(crate) async fn stop(&self, run_id: &str, message: &str) -> Stopped {
        let controls = self.runs.lock().get(run_id).cloned().unwrap_or_default();
        let mut waits = Vec::new();
        for control in controls {
            let mut inner = control.inner.lock();
            if inner.message.is_none() {
                inner.message = Some(message.to_owned());
                if inner.in_flight.is_some() {
                    let (tx, rx) = oneshot::channel();
                    inner.report = Some(tx);
                    waits.push(rx);
                }
            }
            drop(inner);
            control.cancelled.cancel();
        }
        let mut stopped = Stopped::default();
        for wait in waits {
            match tokio::time::timeout(ABANDON_WAIT, wait).await {
                Ok(Ok(abandoned)) => {
                    stopped.unconfirmed |= !abandoned.written;
                    stopped.abandoned.get_or_insert(abandoned);
                }
                // The runner ended the call another way first (a reply raced the
                // cancellation): nothing was abandoned.
                Ok(Err(_)) => {}
                Err(_) => stopped.unconfirmed = true,
            }
        }
        stopped
    }
}

impl ControlGuard {
    /// The cancellation's text, once the run is cancelled.
    pub(crate) fn cancelled(&self) -> Option<String> {
        self.control.inner.lock().message.clone()
    }

    /// Marks a callback as awaited now; refused (with the cancellation's text) when the
    /// run was cancelled before it could be sent.
    pub(crate) fn begin_call(&self, action_id: &str, request_id: &str) -> Result<(), String> {
        let mut inner = self.control.inner.lock();
        if let Some(message) = &inner.message {
            return Err(message.clone());
        }
        inner.in_flight = Some((action_id.to_owned(), request_id.to_owned()));
        Ok(())
    }

    /// The callback ended on its own (a reply, a timeout, a disconnect). A cancellation
    /// waiting for it learns that nothing was abandoned.
    pub(crate) fn end_call(&self) {
        let mut inner = self.control.inner.lock();
        inner.in_flight = None;
        inner.report = None;
    }

    /// Resolves when the run is cancelled.
    pub(crate) async fn wait_cancelled(&self) {
        self.control.cancelled.cancelled().await;
    }

    /// Reports the callback the cancellation abandoned.
    pub(crate) fn abandoned(&self, written: bool) {
        let mut inner = self.control.inner.lock();
        let in_flight = inner.in_flight.take();
        if let (Some((action_id, request_id)), Some(report)) = (in_flight, inner.report.take()) {
            let _ = report.send(Abandoned {
                action_id,
                request_id,
                written,
            });
        }
    }
}

impl Drop for ControlGuard {
    fn drop(&mut self) {
        let mut runs = self.controls.runs.lock();
        if let Some(list) = runs.get_mut(&self.run_id) {
            list.retain(|c| !Arc::ptr_eq(c, &self.control));
            if list.is_empty() {
                runs.remove(&self.run_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stopping_a_run_without_proposals_abandons_nothing() {
        let controls = Arc::new(LiveProposals::default());
        assert_eq!(controls.stop("run-1", "x").await, Stopped::default());
    }

    #[tokio::test]
    async fn a_proposal_between_calls_is_cancelled_and_its_next_call_refused() {
        let controls = Arc::new(LiveProposals::default());
        let guard = controls.register("run-1");
        assert_eq!(guard.cancelled(), None);
        let stopped = controls.stop("run-1", "run 'run-1' cancelled").await;
        assert_eq!(stopped, Stopped::default());
        assert_eq!(guard.cancelled().as_deref(), Some("run 'run-1' cancelled"));
        assert_eq!(
            guard.begin_call("a1", "req-1"),
            Err("run 'run-1' cancelled".to_owned())
        );
    }

    #[tokio::test]
    async fn an_in_flight_call_is_reported_abandoned() {
        let controls = Arc::new(LiveProposals::default());
        let guard = controls.register("run-1");
        guard.begin_call("a1", "req-1").unwrap();
        let runner = tokio::spawn(async move {
            guard.wait_cancelled().await;
            guard.abandoned(true);
            guard
        });
        let stopped = controls.stop("run-1", "run 'run-1' cancelled").await;
        assert_eq!(
            stopped.abandoned,
            Some(Abandoned {
                action_id: "a1".into(),
                request_id: "req-1".into(),
                written: true
            })
        );
        assert!(!stopped.unconfirmed);
        drop(runner.await.unwrap());
        assert!(controls.runs.lock().is_empty(), "the guard unregisters");
    }

    #[tokio::test]
    async fn a_tools_cancel_that_could_not_be_written_is_unconfirmed() {
        let controls = Arc::new(LiveProposals::default());
        let guard = controls.register("run-1");
        guard.begin_call("a1", "req-1").unwrap();
        let runner = tokio::spawn(async move {
            guard.wait_cancelled().await;
            guard.abandoned(false);
        });
        let stopped = controls.stop("run-1", "run 'run-1' cancelled").await;
        assert!(stopped.unconfirmed);
        runner.await.unwrap();
    }

    #[tokio::test]
    async fn a_call_that_ended_on_its_own_first_abandons_nothing() {
        let controls = Arc::new(LiveProposals::default());
        let guard = controls.register("run-1");
        guard.begin_call("a1", "req-1").unwrap();
        let stop = {
            let controls = controls.clone();
            tokio::spawn(async move { controls.stop("run-1", "cancelled").await })
        };
        guard.wait_cancelled().await;
        // The reply won the race: the runner ends the call instead of abandoning it.
        guard.end_call();
        assert_eq!(stop.await.unwrap(), Stopped::default());
    }
}
