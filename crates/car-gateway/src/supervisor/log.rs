//! An agent's log file (PROTOCOL.md §12.3): `DATA_DIR/logs/<id>.log`, one line per line
//! the agent wrote, `<RFC 3339 ms time> out|err <line>`, rotated to `<id>.log.1` at 64 MiB.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use car_events::format_ts;
use chrono::{DateTime, Utc};

/// Size at which a log becomes `.log.1` (§12.3): one generation of 64 MiB is kept, so an
/// agent's logs never take more than 128 MiB however long it runs.
pub(crate) const ROTATE_BYTES: u64 = 64 << 20;
/// Longest line written as one (§12.3): longer output is split, so one line can neither
/// hold unbounded memory nor make `tail_log` read a single 8 MiB line.
pub(crate) const MAX_LINE: usize = 64 << 10;

/// An open agent log.
#[derive(Debug)]
pub(crate) struct AgentLog {
    path: PathBuf,
    file: File,
    size: u64,
    rotate_at: u64,
}

impl AgentLog {
    /// Opens (appends to) the log at `path`, creating its folder.
    pub(crate) fn open(path: PathBuf) -> std::io::Result<Self> {
        Self::open_rotating_at(path, ROTATE_BYTES)
    }

    /// [`AgentLog::open`] with another rotation size (tests).
    pub(crate) fn open_rotating_at(path: PathBuf, rotate_at: u64) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            file,
            size,
            rotate_at,
        })
    }

    /// Writes one line of the agent's output (`stderr`: from its stderr), at `now`.
    pub(crate) fn write_line(
        &mut self,
        now: DateTime<Utc>,
        stderr: bool,
        line: &[u8],
    ) -> std::io::Result<()> {
        let text = String::from_utf8_lossy(line);
        let record = format!(
            "{} {} {}\n",
            format_ts(now),
            if stderr { "err" } else { "out" },
            text.trim_end_matches(['\n', '\r'])
        );
        if self.size > 0 && self.size + record.len() as u64 > self.rotate_at {
            self.rotate()?;
        }
        self.file.write_all(record.as_bytes())?;
        self.size += record.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        fs::rename(&self.path, &old)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_prefixed_and_the_log_rotates_keeping_one_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/a.log");
        let mut log = AgentLog::open_rotating_at(path.clone(), 100).unwrap();
        let t = DateTime::parse_from_rfc3339("2026-12-02T10:00:00.5Z")
            .unwrap()
            .with_timezone(&Utc);
        log.write_line(t, false, b"hello\n").unwrap();
        log.write_line(t, true, b"oops").unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "2026-12-02T10:00:00.500Z out hello\n2026-12-02T10:00:00.500Z err oops\n"
        );
        // 69 bytes written; the next 40-byte record would pass 100: rotated.
        log.write_line(t, false, b"third line").unwrap();
        let rotated = dir.path().join("logs/a.log.1");
        assert!(fs::read_to_string(&rotated).unwrap().contains("hello"));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "2026-12-02T10:00:00.500Z out third line\n"
        );
        for _ in 0..5 {
            log.write_line(t, false, b"more and more output").unwrap();
        }
        assert!(fs::metadata(&path).unwrap().len() <= 100);
        assert!(!dir.path().join("logs/a.log.2").exists());
    }
}
