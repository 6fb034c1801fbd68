//! Container output as lines: the daemon's log stream arrives in frames that need not end at a newline (a TTY
//! container's output is one raw stream), and with `timestamps` each line starts with its RFC 3339 time.

use chrono::{DateTime, Utc};

/// Cuts a byte stream into lines.
#[derive(Debug, Default)]
pub(super) struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// The lines completed by `bytes` (without their `\n` or `\r\n`).
    pub(super) fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[start..start + pos];
            lines.push(
                String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line)).into_owned(),
            );
            start += pos + 1;
        }
        self.pending.drain(..start);
        lines
    }

    /// What is left after the last newline, if anything.
    pub(super) fn finish(self) -> Option<String> {
        (!self.pending.is_empty()).then(|| String::from_utf8_lossy(&self.pending).into_owned())
    }
}

/// Splits `2024-03-01T10:20:30.123456789Z text` into its time and text.
pub(super) fn split_timestamp(line: &str) -> Option<(DateTime<Utc>, &str)> {
    let (time, text) = line.split_once(' ').unwrap_or((line, ""));
    Some((
        DateTime::parse_from_rfc3339(time).ok()?.with_timezone(&Utc),
        text,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_frames_are_joined() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"one\ntw"), ["one"]);
        assert_eq!(s.push(b"o\r\nthree\n"), ["two", "three"]);
        assert_eq!(s.push(b"four"), Vec::<String>::new());
        assert_eq!(s.finish().as_deref(), Some("four"));
    }

    #[test]
    fn a_timestamped_line_gives_its_time_and_text() {
        let (time, text) = split_timestamp("2024-03-01T10:20:30.123456789Z hello world").unwrap();
        assert_eq!(time.timestamp_subsec_nanos(), 123_456_789);
        assert_eq!(text, "hello world");
        assert_eq!(split_timestamp("2024-03-01T10:20:30Z").unwrap().1, "");
        assert!(split_timestamp("no time here").is_none());
    }
}
