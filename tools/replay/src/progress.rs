//! The progress bar of long scans, on stderr.
//!
//! Drawn only when stderr is a terminal and `--quiet` was not given, so piped or
//! redirected output, scripts and tests never see it. Updated once per chunk of records
//! (see [`crate::scan`]), not per record, so it costs nothing measurable.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the bar redraws: smooth enough to see it move, rare enough to cost nothing.
const REFRESH_PER_SECOND: u8 = 8;
/// Scans shorter than this many records finish before a bar would be worth drawing.
const MIN_RECORDS_FOR_A_BAR: u64 = 50_000;

/// A progress bar, or nothing.
#[derive(Debug)]
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar for a scan of `total` records, labelled `what`; hidden when `quiet`, when
    /// stderr is not a terminal, or when the scan is short.
    pub fn new(total: u64, what: &str, quiet: bool) -> Self {
        if quiet || total < MIN_RECORDS_FOR_A_BAR || !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = ProgressBar::with_draw_target(
            Some(total),
            ProgressDrawTarget::stderr_with_hz(REFRESH_PER_SECOND),
        );
        let style = ProgressStyle::with_template(
            "{msg:>7} [{bar:30}] {percent:>3}% of {human_len} events, {eta} left",
        )
        .map(|style| style.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(1000 / u64::from(REFRESH_PER_SECOND)));
        Self(Some(bar))
    }

    /// A bar that never draws.
    pub fn hidden() -> Self {
        Self(None)
    }

    /// `n` more records done.
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
