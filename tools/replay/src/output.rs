//! Writing results: stdout that stops quietly when its reader goes away, JSON, tables for
//! people, and times and durations the way the protocol writes them.
//!
//! Nothing here uses `print!`: it panics on a closed pipe. Every write goes through
//! [`Out`], whose errors become [`Error::Closed`] (exit 0, nothing printed: `car-replay
//! events | head` is normal use) or [`Error::Io`].

use std::io::{self, BufWriter, Stdout, Write};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::exit::Error;

/// Buffered stdout.
#[derive(Debug)]
pub struct Out(BufWriter<Stdout>);

impl Default for Out {
    fn default() -> Self {
        Self::new()
    }
}

impl Out {
    /// Stdout, buffered (one `write` per 64 KiB, not per line).
    pub fn new() -> Self {
        Self(BufWriter::with_capacity(64 * 1024, io::stdout()))
    }

    /// Writes `text` and a newline.
    pub fn line(&mut self, text: &str) -> Result<(), Error> {
        self.0.write_all(text.as_bytes()).map_err(Error::stdout)?;
        self.0.write_all(b"\n").map_err(Error::stdout)
    }

    /// Writes `value` as pretty JSON and a newline.
    pub fn json(&mut self, value: &impl Serialize) -> Result<(), Error> {
        serde_json::to_writer_pretty(&mut self.0, value).map_err(json_error)?;
        self.0.write_all(b"\n").map_err(Error::stdout)
    }

    /// Writes `value` as one line of compact JSON.
    pub fn json_line(&mut self, value: &impl Serialize) -> Result<(), Error> {
        serde_json::to_writer(&mut self.0, value).map_err(json_error)?;
        self.0.write_all(b"\n").map_err(Error::stdout)
    }

    /// Writes everything buffered.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.0.flush().map_err(Error::stdout)
    }
}

fn json_error(err: serde_json::Error) -> Error {
    match err.io_error_kind() {
        Some(kind) => Error::stdout(io::Error::from(kind)),
        None => Error::Io(format!("rendering JSON: {err}")),
    }
}

/// A time as the protocol writes it (RFC 3339, UTC, milliseconds).
pub fn ts(time: DateTime<Utc>) -> String {
    car_events::format_ts(time)
}

/// A duration for people: `0.412s`, `27.458s`, `4m05s`, `2h03m`, `3d04h`.
pub fn duration(delta: TimeDelta) -> String {
    let millis = delta.num_milliseconds();
    let sign = if millis < 0 { "-" } else { "" };
    let millis = millis.unsigned_abs();
    let secs = millis / 1000;
    match secs {
        0..60 => format!("{sign}{}.{:03}s", secs, millis % 1000),
        60..3600 => format!("{sign}{}m{:02}s", secs / 60, secs % 60),
        3600..86_400 => format!("{sign}{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{sign}{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// `text` on one line, cut to `max` characters with `…`.
pub fn clip(text: &str, max: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A bytes count for people: `512 B`, `4.0 KiB`, `643.3 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A table for people: columns padded to their widest cell; the last column is not padded.
#[derive(Debug)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as columns).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Writes the table.
    pub fn write(&self, out: &mut Out) -> Result<(), Error> {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == columns {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    let width = widths.get(i).copied().unwrap_or(0);
                    let pad = width.saturating_sub(cell.chars().count()) + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.line(line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well_at_every_scale() {
        assert_eq!(duration(TimeDelta::milliseconds(412)), "0.412s");
        assert_eq!(duration(TimeDelta::milliseconds(27_458)), "27.458s");
        assert_eq!(duration(TimeDelta::seconds(245)), "4m05s");
        assert_eq!(duration(TimeDelta::seconds(7_380)), "2h03m");
        assert_eq!(duration(TimeDelta::seconds(273_600)), "3d04h");
        assert_eq!(duration(TimeDelta::milliseconds(-1_500)), "-1.500s");
    }

    #[test]
    fn clip_keeps_one_line_and_marks_the_cut() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("a\nb", 10), "a b");
        assert_eq!(clip("résumé résumé", 8), "résumé …");
    }

    #[test]
    fn bytes_pick_a_unit() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(4096), "4.0 KiB");
        assert_eq!(bytes(674_568_186), "643.3 MiB");
    }
}
