//! A process module's output: stdout and stderr lines appended to `output.log` in its directory, rotated by size
//! keeping a number of files (`output.log.1` the newest old one, `output.log.2` older, ...), and broadcast to
//! whoever follows the logs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::broadcast;

use crate::runtime::LogRotation;

/// The log file's name in the module's directory.
pub(super) const LOG_FILE: &str = "output.log";
/// A longer line is cut into pieces of this size, so a child that never prints a newline cannot grow our memory.
const MAX_LINE: usize = 16 * 1024;

/// The output log of one instance, shared by its stdout and stderr pumps.
#[derive(Debug)]
pub(super) struct OutputLog {
    dir: PathBuf,
    rotation: LogRotation,
    file: Option<File>,
    size: u64,
    lines: broadcast::Sender<String>,
}

impl OutputLog {
    /// A log in `dir`, rotated by `rotation`; every line is also sent to `lines`.
    pub(super) fn new(
        dir: PathBuf,
        rotation: LogRotation,
        lines: broadcast::Sender<String>,
    ) -> Self {
        Self {
            dir,
            rotation,
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
        if self.size > 0 && self.size + len > self.rotation.max_bytes {
            self.file = None;
            rotate(&self.dir, self.rotation.max_files)?;
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

/// The path of the `age`-th file of the log in `dir`: 0 is `output.log`, 1 is `output.log.1`, ...
pub(super) fn log_file(dir: &Path, age: u32) -> PathBuf {
    if age == 0 {
        dir.join(LOG_FILE)
    } else {
        dir.join(format!("{LOG_FILE}.{age}"))
    }
}

/// Shifts every file one age older, dropping what would pass `max_files` (and any file a larger earlier setting
/// left), so that `output.log` can start afresh.
fn rotate(dir: &Path, max_files: u32) -> io::Result<()> {
    let mut oldest = max_files.saturating_sub(1);
    while log_file(dir, oldest + 1).exists() {
        oldest += 1;
    }
    for age in (max_files.saturating_sub(1)..=oldest).rev() {
        remove_if_present(&log_file(dir, age))?;
    }
    for age in (0..max_files.saturating_sub(1)).rev() {
        match fs::rename(log_file(dir, age), log_file(dir, age + 1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
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

/// The last `tail` lines of the log in `dir` (all when `None`), oldest first across the rotated files, reading
/// an older file only when the newer ones hold too few lines.
pub(super) fn read_tail(dir: &Path, tail: Option<usize>) -> io::Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut age = 0;
    // A rotation may be under way: a file missing in the middle is skipped, the oldest ends the walk.
    while tail.is_none_or(|n| lines.len() < n) {
        let path = log_file(dir, age);
        if age > 0 && !path.exists() && !log_file(dir, age + 1).exists() {
            break;
        }
        let mut older = read_lines(&path)?;
        older.append(&mut lines);
        lines = older;
        age += 1;
    }
    if let Some(n) = tail {
        lines.drain(..lines.len().saturating_sub(n));
    }
    Ok(lines)
}

/// Sends every line of the log in `dir` into `lines`, oldest file first, one line in memory at a time; stops
/// early when the receiver is gone. (Blocking: run it on a blocking thread.)
pub(super) fn stream_lines(
    dir: &Path,
    lines: &tokio::sync::mpsc::Sender<crate::runtime::LogLine>,
) -> io::Result<()> {
    use std::io::{BufRead as _, Read as _};
    let mut oldest = 0;
    while log_file(dir, oldest + 1).exists() || log_file(dir, oldest + 2).exists() {
        oldest += 1;
    }
    for age in (0..=oldest).rev() {
        let file = match File::open(log_file(dir, age)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut reader = io::BufReader::new(file);
        let mut line = Vec::new();
        loop {
            line.clear();
            // The pumps cut lines at MAX_LINE; a file written otherwise cannot make us hold more than that.
            let n = (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line));
            let text = text.trim_end_matches('\r').to_owned();
            if lines
                .blocking_send(crate::runtime::LogLine { time: None, text })
                .is_err()
            {
                return Ok(());
            }
        }
    }
    Ok(())
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
        log_with(dir, limit, 2)
    }

    fn log_with(
        dir: &Path,
        max_bytes: u64,
        max_files: u32,
    ) -> (OutputLog, broadcast::Receiver<String>) {
        let (tx, rx) = broadcast::channel(16);
        let rotation = LogRotation {
            max_bytes,
            max_files,
        };
        (OutputLog::new(dir.to_owned(), rotation, tx), rx)
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
            fs::read_to_string(log_file(dir.path(), 1)).unwrap(),
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
    fn the_log_keeps_max_files_and_reads_across_them_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _rx) = log_with(dir.path(), 10, 3);
        for i in 0..20 {
            log.append(&format!("line{i:02}")).unwrap();
        }
        // 7 bytes a line, one line a file: the newest three lines survive, in three files.
        assert!(!log_file(dir.path(), 3).exists());
        assert_eq!(
            fs::read_to_string(log_file(dir.path(), 2)).unwrap(),
            "line17\n"
        );
        assert_eq!(
            read_tail(dir.path(), None).unwrap(),
            ["line17", "line18", "line19"]
        );
        assert_eq!(
            read_tail(dir.path(), Some(2)).unwrap(),
            ["line18", "line19"]
        );
        assert_eq!(
            read_tail(dir.path(), Some(10)).unwrap(),
            ["line17", "line18", "line19"]
        );
    }

    #[test]
    fn a_smaller_file_count_drops_the_files_a_larger_one_left() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _rx) = log_with(dir.path(), 10, 5);
        for i in 0..6 {
            log.append(&format!("line{i:02}")).unwrap();
        }
        assert!(log_file(dir.path(), 4).exists());
        let (mut log, _rx) = log_with(dir.path(), 10, 2);
        log.append("line06").unwrap();
        log.append("line07").unwrap();
        assert!(!log_file(dir.path(), 2).exists() && !log_file(dir.path(), 4).exists());
        assert_eq!(read_tail(dir.path(), None).unwrap(), ["line06", "line07"]);
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
