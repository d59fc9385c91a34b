//! The frame cache of run subscriptions: each run's recent `runs.trace.event` frames,
//! rendered once and shared by every tail following the run (see [`crate::tail`]).
//!
//! It sits below the runtime ([`crate::app::App`] holds one registry) and knows nothing of
//! the log or the tails: a tail hands it the function that reads and renders what the
//! window lacks.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Weak};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::rpc::RpcError;

/// The `runs.trace.event` frames of runs' recent turns, rendered once and shared by every
/// subscriber of the run.
///
/// When a run with many subscribers records a turn, every tail wakes at once and needs the
/// same frame: without sharing, each would read the turn back from the log (a hop to the
/// blocking pool, a sled lookup, a decode) and render the same JSON. Here the first tail
/// to need a turn reads and renders it, under the run's lock, and the others find it
/// rendered. Frames are byte-for-byte what each tail would have rendered, and only durable
/// turns are ever rendered (the tail asks only for turns below the durable count).
#[derive(Debug, Default)]
pub struct TurnFrames {
    runs: parking_lot::Mutex<HashMap<String, Weak<RunFrames>>>,
}

impl TurnFrames {
    /// The shared frames of `run_id`, for one more tail; dropping the handle leaves.
    pub(crate) fn join(self: &Arc<Self>, run_id: &str) -> SharedFrames {
        let mut runs = self.runs.lock();
        let frames = match runs.get(run_id).and_then(Weak::upgrade) {
            Some(frames) => frames,
            None => {
                let frames = Arc::new(RunFrames::default());
                runs.insert(run_id.to_owned(), Arc::downgrade(&frames));
                frames
            }
        };
        SharedFrames {
            registry: self.clone(),
            run_id: run_id.to_owned(),
            frames: Some(frames),
        }
    }

    /// How many runs have shared frames (for tests of the clean-up).
    pub fn runs(&self) -> usize {
        self.runs.lock().len()
    }
}

/// The frames of one run: a window of consecutive turns `first ..`, the most recent ones.
#[derive(Debug, Default)]
pub(crate) struct RunFrames {
    window: tokio::sync::Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    first: u32,
    frames: VecDeque<Utf8Bytes>,
    bytes: usize,
}

/// Turns a run's window keeps: subscribers that keep up need only the newest few; one
/// further behind reads from the log as it always could.
const WINDOW_FRAMES: usize = 128;
/// Bytes a run's window keeps at most (turns may be large).
const WINDOW_BYTES: usize = 256 * 1024;

/// A tail's handle on its run's shared frames.
#[derive(Debug)]
pub(crate) struct SharedFrames {
    registry: Arc<TurnFrames>,
    run_id: String,
    frames: Option<Arc<RunFrames>>,
}

impl Drop for SharedFrames {
    fn drop(&mut self) {
        let mut runs = self.registry.runs.lock();
        drop(self.frames.take());
        if runs
            .get(&self.run_id)
            .is_some_and(|w| w.strong_count() == 0)
        {
            runs.remove(&self.run_id);
        }
    }
}

impl SharedFrames {
    /// The frames of turns `from .. to` (fewer when `render` stops early; at least one):
    /// those in the window as they are, the others by `render(from, to)`, which reads
    /// them from the log and renders them, and which the window then keeps.
    pub(crate) async fn frames<F, Fut>(
        &self,
        from: u32,
        to: u32,
        mut render: F,
    ) -> Result<Vec<Utf8Bytes>, RpcError>
    where
        F: FnMut(u32, u32) -> Fut,
        Fut: Future<Output = Result<Vec<Utf8Bytes>, RpcError>>,
    {
        let Some(shared) = &self.frames else {
            return Ok(Vec::new());
        };
        let mut window = shared.window.lock().await;
        let end = window.first + window.frames.len() as u32;
        if window.frames.is_empty() || from > end {
            // Nothing kept, or only turns every tail here is past: start anew at `from`.
            window.frames.clear();
            window.bytes = 0;
            window.first = from;
        } else if from < window.first {
            // Far behind the others: read alone, keep the window for them.
            return render(from, to).await;
        }
        let end = window.first + window.frames.len() as u32;
        let mut frames: Vec<Utf8Bytes> = window
            .frames
            .iter()
            .skip((from - window.first) as usize)
            .take((to.saturating_sub(from)) as usize)
            .cloned()
            .collect();
        if to > end {
            let fresh = render(end, to).await?;
            frames.extend(fresh.iter().cloned());
            for frame in fresh {
                window.bytes += frame.len();
                window.frames.push_back(frame);
            }
            while window.frames.len() > WINDOW_FRAMES || window.bytes > WINDOW_BYTES {
                let Some(old) = window.frames.pop_front() else {
                    break;
                };
                window.bytes -= old.len();
                window.first += 1;
            }
        }
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_s_tails_share_one_window_that_goes_with_the_last_of_them() {
        let registry = Arc::new(TurnFrames::default());
        let first = registry.join("run-a");
        let second = registry.join("run-a");
        let other = registry.join("run-b");
        let (Some(a1), Some(a2), Some(b)) = (&first.frames, &second.frames, &other.frames) else {
            panic!("a joined handle holds its run's frames");
        };
        assert!(Arc::ptr_eq(a1, a2));
        assert!(!Arc::ptr_eq(a1, b));
        assert_eq!(registry.runs(), 2);
        drop(first);
        assert_eq!(registry.runs(), 2);
        drop(second);
        assert_eq!(registry.runs(), 1);
        drop(other);
        assert_eq!(registry.runs(), 0);
        let again = registry.join("run-a");
        assert_eq!(registry.runs(), 1);
        drop(again);
    }
}
