//! The daemon's recent log lines, kept in memory for the support bundle and the management API: a ring of at
//! most [`MAX_LINES`] lines and [`MAX_BYTES`] bytes, whichever is reached first, the oldest line dropped to make
//! room.
//!
//! The binary's tracing subscriber writes every formatted event through [`DaemonLog::writer`] beside stderr.
//! [`RECENT`] is a process-wide value because the subscriber it is fed by is process-wide too: one daemon per
//! process, and a line logged before the daemon's state exists (settings, start-up) is kept as well.

use std::collections::VecDeque;
use std::sync::Mutex;

/// The most lines kept.
pub const MAX_LINES: usize = 2_000;
/// The most bytes kept (the lines' lengths, without their newlines).
pub const MAX_BYTES: usize = 1 << 20;
/// A longer line is cut to this many bytes (at a character boundary) and marked with `…`.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// The log lines of this process, fed by the binary's tracing subscriber.
pub static RECENT: DaemonLog = DaemonLog::new();

/// A bounded ring of log lines.
#[derive(Debug)]
pub struct DaemonLog {
    /// A std `Mutex`: held to push a line or copy the ring, never across an `.await`, and taken inside the
    /// tracing subscriber, where an async lock cannot be.
    ring: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Default for DaemonLog {
    fn default() -> Self {
        Self::new()
    }
}

impl DaemonLog {
    /// An empty ring.
    pub const fn new() -> Self {
        Self {
            ring: Mutex::new(Ring {
                lines: VecDeque::new(),
                bytes: 0,
            }),
        }
    }

    /// Appends one line (without its newline), dropping the oldest lines until both limits hold.
    pub fn push(&self, line: &str) {
        let line = cut(line);
        let mut ring = self
            .ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ring.bytes += line.len();
        ring.lines.push_back(line);
        while ring.lines.len() > MAX_LINES || ring.bytes > MAX_BYTES {
            let Some(oldest) = ring.lines.pop_front() else {
                break;
            };
            ring.bytes -= oldest.len();
        }
    }

    /// The last `tail` lines (all of them with `None`), oldest first, each ending in a newline.
    pub fn text(&self, tail: Option<usize>) -> String {
        let ring = self
            .ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let skip = tail.map_or(0, |n| ring.lines.len().saturating_sub(n));
        let mut text = String::with_capacity(ring.bytes + ring.lines.len());
        for line in ring.lines.iter().skip(skip) {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// How many lines and bytes it holds.
    pub fn len(&self) -> (usize, usize) {
        let ring = self
            .ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (ring.lines.len(), ring.bytes)
    }

    /// Whether it holds no line.
    pub fn is_empty(&self) -> bool {
        self.len().0 == 0
    }

    /// A writer for one formatted event (a tracing subscriber's `MakeWriter` makes one per event): what it is
    /// given is split into lines when it is flushed or dropped.
    pub fn writer(&self) -> LineWriter<'_> {
        LineWriter {
            log: self,
            buffer: Vec::new(),
        }
    }
}

fn cut(line: &str) -> String {
    if line.len() <= MAX_LINE_BYTES {
        return line.to_owned();
    }
    let mut end = MAX_LINE_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

/// Collects the bytes of one event and pushes them to a [`DaemonLog`] line by line.
#[derive(Debug)]
pub struct LineWriter<'a> {
    log: &'a DaemonLog,
    buffer: Vec<u8>,
}

impl std::io::Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        // One event is a line or a few; the cap keeps a runaway writer from growing the buffer.
        let room = (MAX_LINE_BYTES * 4).saturating_sub(self.buffer.len());
        self.buffer
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let text = String::from_utf8_lossy(&self.buffer);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            self.log.push(line);
        }
        self.buffer.clear();
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        let _ = std::io::Write::flush(self);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn the_ring_keeps_the_last_lines_up_to_its_line_limit() {
        let log = DaemonLog::new();
        for i in 0..MAX_LINES + 500 {
            log.push(&format!("line {i}"));
        }
        assert_eq!(log.len().0, MAX_LINES);
        let text = log.text(None);
        assert!(text.starts_with("line 500\n"), "{}", &text[..20]);
        assert!(text.ends_with(&format!("line {}\n", MAX_LINES + 499)));
        assert_eq!(
            log.text(Some(2)),
            format!("line {}\nline {}\n", MAX_LINES + 498, MAX_LINES + 499)
        );
    }

    #[test]
    fn the_ring_keeps_at_most_its_byte_limit_and_cuts_a_long_line() {
        let log = DaemonLog::new();
        let long = "x".repeat(MAX_LINE_BYTES * 3);
        for _ in 0..(MAX_BYTES / MAX_LINE_BYTES) * 2 {
            log.push(&long);
        }
        let (lines, bytes) = log.len();
        assert!(bytes <= MAX_BYTES, "{bytes}");
        assert!(lines < MAX_LINES);
        assert!(bytes > MAX_BYTES - MAX_LINE_BYTES - 4, "{bytes}");
        assert!(log.text(Some(1)).trim_end().ends_with('…'));
        let multibyte = "é".repeat(MAX_LINE_BYTES);
        log.push(&multibyte);
        assert!(log.text(Some(1)).len() <= MAX_LINE_BYTES + 4);
    }

    #[test]
    fn a_writer_pushes_each_line_of_an_event_when_it_is_dropped() {
        let log = DaemonLog::new();
        {
            let mut writer = log.writer();
            writer
                .write_all(b"2026-12-02T00:00:00Z  INFO first")
                .unwrap();
            writer.write_all(b" half\nsecond\n\n").unwrap();
            assert!(
                log.is_empty(),
                "nothing is pushed before the event is complete"
            );
        }
        assert_eq!(
            log.text(None),
            "2026-12-02T00:00:00Z  INFO first half\nsecond\n"
        );
    }
}
