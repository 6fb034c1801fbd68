//! A process module's output: stdout and stderr lines appended to `output.log` in its directory, rotated at a
//! size cap keeping one old file (`output.log.1`), and broadcast to whoever follows the logs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::broadcast;

/// The log file's name in the module's directory.
pub(super) const LOG_FILE: &str = "output.log";
/// The rotated file's name.
pub(super) const OLD_LOG_FILE: &str = "output.log.1";
/// A longer line is cut into pieces of this size, so a child that never prints a newline cannot grow our memory.
const MAX_LINE: usize = 16 * 1024;

/// The output log of one instance, shared by its stdout and stderr pumps.
#[derive(Debug)]
pub(super) struct OutputLog {
    dir: PathBuf,
    limit: u64,
    file: Option<File>,
    size: u64,
    lines: broadcast::Sender<String>,
}

impl OutputLog {
    /// A log in `dir`, rotated when it would pass `limit` bytes; every line is also sent to `lines`.
    pub(super) fn new(dir: PathBuf, limit: u64, lines: broadcast::Sender<String>) -> Self {
        Self {
            dir,
            limit,
            file: None,
            size: 0,
            lines,
        }
    }

    /// Appends one line (without its newline).
    pub(super) fn append(&mut self, line: &str) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(LOG_FILE))?;
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        if self.size > 0 && self.size + len > self.limit {
            self.file = None;
            fs::rename(self.dir.join(LOG_FILE), self.dir.join(OLD_LOG_FILE))?;
            self.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join(LOG_FILE))?,
            );
            self.size = 0;
        }
        let file = self.file.as_mut().expect("opened above");
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        file.write_all(&buf)?;
        self.size += len;
        // No follower is the usual case, not an error.
        let _ = self.lines.send(line.to_owned());
        Ok(())
    }
}

/// Copies `pipe` into `log` line by line until the pipe closes (when the child and every process that inherited
/// the pipe are gone).
pub(super) async fn pump(mut pipe: impl AsyncRead + Unpin, log: Arc<Mutex<OutputLog>>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        let mut complete = Vec::new();
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let rest = pending.split_off(pos + 1);
            pending.truncate(pos);
            complete.push(std::mem::replace(&mut pending, rest));
        }
        while pending.len() >= MAX_LINE {
            let rest = pending.split_off(MAX_LINE);
            complete.push(std::mem::replace(&mut pending, rest));
        }
        write_lines(&log, &complete);
    }
    if !pending.is_empty() {
        write_lines(&log, &[pending]);
    }
}

fn write_lines(log: &Mutex<OutputLog>, lines: &[Vec<u8>]) {
    if lines.is_empty() {
        return;
    }
    // A std mutex held across small appends to a local file: short, and never across an await.
    let mut log = log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for line in lines {
        let text = String::from_utf8_lossy(line);
        if let Err(e) = log.append(text.trim_end_matches('\r')) {
            tracing::warn!(dir = %log.dir.display(), error = %e, "could not write a process module's output");
        }
    }
}

/// The last `tail` lines of the log in `dir` (all when `None`), reading the rotated file only when needed.
pub(super) fn read_tail(dir: &Path, tail: Option<usize>) -> io::Result<Vec<String>> {
    let mut lines = read_lines(&dir.join(LOG_FILE))?;
    if tail.is_none_or(|n| lines.len() < n) {
        let mut old = read_lines(&dir.join(OLD_LOG_FILE))?;
        old.append(&mut lines);
        lines = old;
    }
    if let Some(n) = tail {
        lines.drain(..lines.len().saturating_sub(n));
    }
    Ok(lines)
}

fn read_lines(path: &Path) -> io::Result<Vec<String>> {
    match fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_in(dir: &Path, limit: u64) -> (OutputLog, broadcast::Receiver<String>) {
        let (tx, rx) = broadcast::channel(16);
        (OutputLog::new(dir.to_owned(), limit, tx), rx)
    }

    #[test]
    fn lines_are_appended_and_broadcast() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut rx) = log_in(dir.path(), 1024);
        log.append("one").unwrap();
        log.append("two").unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join(LOG_FILE)).unwrap(),
            "one\ntwo\n"
        );
        assert_eq!(rx.try_recv().unwrap(), "one");
        assert_eq!(rx.try_recv().unwrap(), "two");
    }

    #[test]
    fn the_log_rotates_at_its_cap_keeping_one_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _rx) = log_in(dir.path(), 10);
        for line in ["aaaa", "bbbb", "cccc", "dddd", "eeee"] {
            log.append(line).unwrap();
        }
        assert_eq!(
            fs::read_to_string(dir.path().join(OLD_LOG_FILE)).unwrap(),
            "cccc\ndddd\n"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join(LOG_FILE)).unwrap(),
            "eeee\n"
        );
        assert_eq!(
            read_tail(dir.path(), None).unwrap(),
            ["cccc", "dddd", "eeee"]
        );
        assert_eq!(read_tail(dir.path(), Some(2)).unwrap(), ["dddd", "eeee"]);
        assert_eq!(read_tail(dir.path(), Some(1)).unwrap(), ["eeee"]);
    }

    #[test]
    fn a_missing_log_reads_as_no_lines() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_tail(dir.path(), Some(5)).unwrap().is_empty());
    }

    #[tokio::test]
    async fn pump_splits_lines_and_keeps_an_unterminated_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _rx) = log_in(dir.path(), 1 << 20);
        let log = Arc::new(Mutex::new(log));
        pump(&b"first\r\nsecond\nlast"[..], log).await;
        assert_eq!(
            read_tail(dir.path(), None).unwrap(),
            ["first", "second", "last"]
        );
    }
}
