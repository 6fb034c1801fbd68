//! The log filter of `GetModuleLogs` and `UploadModuleLogs`, as a pure state machine over lines: no I/O, no
//! clock. Lines are pushed one at a time and only the last `tail` lines that pass are kept, within a byte
//! budget, so a log of any size is read in bounded memory.
//!
//! Azure's recommended line format is `<{level}> {yyyy-MM-dd HH:mm:ss.fff zzz} {text}`, the level a syslog
//! severity (0 emergency .. 7 debug). A line without `<N>` is informational (6), as Azure's agent reads it. A
//! line's time is the runtime's record of it when there is one (Docker), else the time at its start (Azure's
//! format or RFC 3339), else the time of the line before it (the rest of a stack trace); a line whose time
//! cannot be known passes `since` and `until`.

use std::collections::VecDeque;

use chrono::{DateTime, Duration, FixedOffset, NaiveDateTime, TimeZone as _, Utc};
use regex::Regex;

use crate::runtime::LogLine;

/// The level of a line without a `<N>` prefix: informational.
pub const DEFAULT_LEVEL: u8 = 6;

/// Which lines pass.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Only lines written at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only lines written at or before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only lines of this severity or a more severe one (a lower number).
    pub max_level: Option<u8>,
    /// Only lines whose text matches.
    pub regex: Option<Regex>,
}

/// A line with what was read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its severity (syslog, 0..=7).
    pub level: u8,
    /// When it was written, when known.
    pub time: Option<DateTime<Utc>>,
    /// The whole line, as the module wrote it.
    pub line: String,
}

impl Entry {
    /// The line without its `<N>` and time prefixes (what Azure's JSON content calls `text`).
    pub fn message(&self) -> &str {
        let (_, rest) = split_level(&self.line);
        split_time(rest).map_or(rest, |(_, text)| text)
    }
}

/// The lines kept, and how many that passed the filter were left out for the tail or the byte budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Oldest first.
    pub entries: Vec<Entry>,
    /// Lines that passed the filter but were dropped by the byte budget (not by `tail`).
    pub cut_for_size: u64,
}

/// Filters lines as they come and keeps the newest that pass: at most `tail` of them and at most `budget`
/// bytes as measured by `cost`.
pub struct LogSelector<C: Fn(&Entry) -> usize> {
    filter: LogFilter,
    tail: Option<usize>,
    budget: usize,
    cost: C,
    kept: VecDeque<(Entry, usize)>,
    kept_bytes: usize,
    cut_for_size: u64,
    last_time: Option<DateTime<Utc>>,
}

impl<C: Fn(&Entry) -> usize> LogSelector<C> {
    /// A selector keeping the last `tail` passing lines (all when `None`) within `budget` bytes.
    pub fn new(filter: LogFilter, tail: Option<usize>, budget: usize, cost: C) -> Self {
        Self {
            filter,
            tail,
            budget,
            cost,
            kept: VecDeque::new(),
            kept_bytes: 0,
            cut_for_size: 0,
            last_time: None,
        }
    }

    /// Reads one line.
    pub fn push(&mut self, line: LogLine) {
        let (level, rest) = split_level(&line.text);
        let time = line
            .time
            .or_else(|| split_time(rest).map(|(time, _)| time))
            .or(self.last_time);
        self.last_time = time;
        if !self.admits(level, time, &line.text) {
            return;
        }
        if self.tail == Some(0) {
            return;
        }
        let entry = Entry {
            level,
            time,
            line: line.text,
        };
        let cost = (self.cost)(&entry);
        if cost > self.budget {
            self.cut_for_size += 1;
            return;
        }
        if self.tail.is_some_and(|n| self.kept.len() == n) {
            if let Some((_, old)) = self.kept.pop_front() {
                self.kept_bytes -= old;
            }
        }
        while self.kept_bytes + cost > self.budget {
            let Some((_, old)) = self.kept.pop_front() else {
                break;
            };
            self.kept_bytes -= old;
            self.cut_for_size += 1;
        }
        self.kept_bytes += cost;
        self.kept.push_back((entry, cost));
    }

    fn admits(&self, level: u8, time: Option<DateTime<Utc>>, text: &str) -> bool {
        let filter = &self.filter;
        if filter.max_level.is_some_and(|max| level > max) {
            return false;
        }
        if let Some(time) = time {
            if filter.since.is_some_and(|since| time < since)
                || filter.until.is_some_and(|until| time > until)
            {
                return false;
            }
        }
        filter.regex.as_ref().is_none_or(|r| r.is_match(text))
    }

    /// The lines kept.
    pub fn finish(self) -> Selection {
        Selection {
            entries: self.kept.into_iter().map(|(entry, _)| entry).collect(),
            cut_for_size: self.cut_for_size,
        }
    }
}

/// Filters `lines` at once: the pure form of [`LogSelector`], without a byte budget.
pub fn select(
    lines: impl IntoIterator<Item = LogLine>,
    filter: &LogFilter,
    tail: Option<usize>,
) -> Vec<Entry> {
    let mut selector = LogSelector::new(filter.clone(), tail, usize::MAX, |_| 0);
    for line in lines {
        selector.push(line);
    }
    selector.finish().entries
}

/// `<6> rest` → (6, `rest`); a line without a valid prefix is informational and keeps all its text.
fn split_level(line: &str) -> (u8, &str) {
    let bytes = line.as_bytes();
    if bytes.len() >= 3 && bytes[0] == b'<' && bytes[2] == b'>' && (b'0'..=b'7').contains(&bytes[1])
    {
        let rest = &line[3..];
        return (bytes[1] - b'0', rest.strip_prefix(' ').unwrap_or(rest));
    }
    (DEFAULT_LEVEL, line)
}

/// The time at the start of `text`: Azure's `2024-03-01 10:20:30.123 +00:00` or an RFC 3339 time; and the rest.
fn split_time(text: &str) -> Option<(DateTime<Utc>, &str)> {
    let mut words = text.splitn(4, ' ');
    let first = words.next()?;
    if let Ok(time) = DateTime::parse_from_rfc3339(first) {
        let rest = text[first.len()..].strip_prefix(' ').unwrap_or("");
        return Some((time.with_timezone(&Utc), rest));
    }
    let (date, clock, zone) = (first, words.next()?, words.next()?);
    let naive =
        NaiveDateTime::parse_from_str(&format!("{date} {clock}"), "%Y-%m-%d %H:%M:%S%.f").ok()?;
    let offset = parse_offset(zone)?;
    let time = offset.from_local_datetime(&naive).single()?;
    let consumed = date.len() + clock.len() + zone.len() + 2;
    let rest = text[consumed..].strip_prefix(' ').unwrap_or("");
    Some((time.with_timezone(&Utc), rest))
}

/// `+01:00`, `-0530` or `Z`.
fn parse_offset(zone: &str) -> Option<FixedOffset> {
    if zone == "Z" {
        return FixedOffset::east_opt(0);
    }
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = digits[2..].parse().ok()?;
    FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60))
}

/// Why a `since` or `until` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is neither a duration (90m, 2 days 3 hours), an RFC 3339 time nor a UNIX time")]
pub struct TimeSpecError(pub String);

/// Reads a `since`/`until` value as Azure documents it: a UNIX time (a number, or digits), an RFC 3339 time,
/// or a duration before `now` (`1d`, `90 m`, `2 days 3 hours 2 minutes`, `30s`).
pub fn parse_time_spec(spec: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, TimeSpecError> {
    let refuse = || TimeSpecError(spec.to_owned());
    let spec = spec.trim();
    if !spec.is_empty() && spec.chars().all(|c| c.is_ascii_digit()) {
        let seconds: i64 = spec.parse().map_err(|_| refuse())?;
        return DateTime::from_timestamp(seconds, 0).ok_or_else(refuse);
    }
    if let Ok(time) = DateTime::parse_from_rfc3339(spec) {
        return Ok(time.with_timezone(&Utc));
    }
    let mut total = Duration::zero();
    let mut rest = spec;
    let mut any = false;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(refuse());
        }
        let amount: i64 = rest[..digits].parse().map_err(|_| refuse())?;
        rest = rest[digits..].trim_start();
        let letters = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let unit = match &rest[..letters].to_ascii_lowercase()[..] {
            "s" | "sec" | "secs" | "second" | "seconds" => Duration::seconds(1),
            "m" | "min" | "mins" | "minute" | "minutes" => Duration::minutes(1),
            "h" | "hr" | "hrs" | "hour" | "hours" => Duration::hours(1),
            "d" | "day" | "days" => Duration::days(1),
            "w" | "week" | "weeks" => Duration::weeks(1),
            _ => return Err(refuse()),
        };
        total = unit
            .checked_mul(i32::try_from(amount).map_err(|_| refuse())?)
            .and_then(|d| total.checked_add(&d))
            .ok_or_else(refuse)?;
        rest = rest[letters..].trim_start_matches([' ', ',']);
        any = true;
    }
    if !any {
        return Err(refuse());
    }
    now.checked_sub_signed(total).ok_or_else(refuse)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> LogLine {
        LogLine {
            time: None,
            text: text.to_owned(),
        }
    }

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn texts(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.line.as_str()).collect()
    }

    const AZURE_LINES: [&str; 5] = [
        "<6> 2024-03-01 10:00:00.000 +00:00 starting",
        "<7> 2024-03-01 10:01:00.000 +00:00 detail",
        "<3> 2024-03-01 10:02:00.000 +00:00 failed to connect",
        "    at a stack frame",
        "<4> 2024-03-01 11:02:00.000 +01:00 retrying",
    ];

    #[test]
    fn tail_keeps_the_last_lines_that_pass() {
        let lines = (0..100).map(|i| line(&format!("line {i}")));
        let kept = select(lines, &LogFilter::default(), Some(3));
        assert_eq!(texts(&kept), ["line 97", "line 98", "line 99"]);
    }

    #[test]
    fn tail_applies_after_the_other_filters() {
        let filter = LogFilter {
            regex: Some(Regex::new("even").unwrap()),
            ..LogFilter::default()
        };
        let lines =
            (0..10).map(|i| line(&format!("{} {i}", if i % 2 == 0 { "even" } else { "odd" })));
        assert_eq!(
            texts(&select(lines, &filter, Some(2))),
            ["even 6", "even 8"]
        );
    }

    #[test]
    fn loglevel_keeps_lines_as_severe_or_more_and_unprefixed_lines_count_as_informational() {
        let filter = LogFilter {
            max_level: Some(4),
            ..LogFilter::default()
        };
        let kept = select(AZURE_LINES.map(line), &filter, None);
        assert_eq!(
            texts(&kept),
            [
                "<3> 2024-03-01 10:02:00.000 +00:00 failed to connect",
                "<4> 2024-03-01 11:02:00.000 +01:00 retrying"
            ]
        );
        assert_eq!(kept[0].level, 3);
        let informational = LogFilter {
            max_level: Some(6),
            ..LogFilter::default()
        };
        assert_eq!(select([line("plain text")], &informational, None).len(), 1);
    }

    #[test]
    fn since_and_until_read_the_time_in_azure_format_with_its_offset() {
        let filter = LogFilter {
            since: Some(at("2024-03-01T10:01:00Z")),
            until: Some(at("2024-03-01T10:02:00Z")),
            ..LogFilter::default()
        };
        let kept = select(AZURE_LINES.map(line), &filter, None);
        // 11:02 +01:00 is 10:02 UTC; the stack frame takes the time of the line before it.
        assert_eq!(
            texts(&kept),
            [
                "<7> 2024-03-01 10:01:00.000 +00:00 detail",
                "<3> 2024-03-01 10:02:00.000 +00:00 failed to connect",
                "    at a stack frame",
                "<4> 2024-03-01 11:02:00.000 +01:00 retrying",
            ]
        );
    }

    #[test]
    fn the_runtimes_time_wins_over_the_text_and_lines_of_unknown_time_pass() {
        let filter = LogFilter {
            since: Some(at("2024-03-01T12:00:00Z")),
            ..LogFilter::default()
        };
        let recorded = LogLine {
            time: Some(at("2024-03-01T12:30:00Z")),
            text: "<6> 2020-01-01 00:00:00.000 +00:00 the module's clock is wrong".into(),
        };
        let kept = select([line("no time at all"), recorded], &filter, None);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[1].time, Some(at("2024-03-01T12:30:00Z")));
    }

    #[test]
    fn an_rfc3339_time_at_the_start_of_a_line_is_read_too() {
        let filter = LogFilter {
            until: Some(at("2024-03-01T00:00:00Z")),
            ..LogFilter::default()
        };
        let lines = [
            line("2023-12-31T23:59:59Z old"),
            line("2024-03-01T00:00:01+00:00 new"),
        ];
        assert_eq!(
            texts(&select(lines, &filter, None)),
            ["2023-12-31T23:59:59Z old"]
        );
    }

    #[test]
    fn the_message_drops_the_level_and_time_prefixes() {
        let entry = select([line(AZURE_LINES[2])], &LogFilter::default(), None).remove(0);
        assert_eq!(entry.message(), "failed to connect");
        assert_eq!(entry.time, Some(at("2024-03-01T10:02:00Z")));
        let plain = select([line("<9> not a level")], &LogFilter::default(), None).remove(0);
        assert_eq!((plain.level, plain.message()), (6, "<9> not a level"));
    }

    #[test]
    fn the_byte_budget_keeps_the_newest_lines_and_counts_what_it_cut() {
        let mut selector = LogSelector::new(LogFilter::default(), None, 10, |e| e.line.len() + 1);
        for i in 0..10 {
            selector.push(line(&format!("l{i}")));
        }
        selector.push(line("a line longer than the whole budget"));
        let selection = selector.finish();
        assert_eq!(texts(&selection.entries), ["l7", "l8", "l9"]);
        assert_eq!(selection.cut_for_size, 8);
    }

    #[test]
    fn a_tail_of_zero_keeps_nothing() {
        assert!(select([line("x")], &LogFilter::default(), Some(0)).is_empty());
    }

    #[test]
    fn since_and_until_accept_durations_rfc3339_and_unix_times() {
        let now = at("2024-03-10T00:00:00Z");
        assert_eq!(
            parse_time_spec("1d", now).unwrap(),
            at("2024-03-09T00:00:00Z")
        );
        assert_eq!(
            parse_time_spec("90 m", now).unwrap(),
            at("2024-03-09T22:30:00Z")
        );
        assert_eq!(
            parse_time_spec("2 days 3 hours 2 minutes", now).unwrap(),
            at("2024-03-07T20:58:00Z")
        );
        assert_eq!(
            parse_time_spec("1709251200", now).unwrap(),
            at("2024-03-01T00:00:00Z")
        );
        assert_eq!(
            parse_time_spec("2024-03-01T01:00:00+01:00", now).unwrap(),
            at("2024-03-01T00:00:00Z")
        );
        for bad in ["", "yesterday", "5 parsecs", "m5"] {
            assert!(parse_time_spec(bad, now).is_err(), "{bad}");
        }
    }
}
