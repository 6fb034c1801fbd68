//! Module logs for `GetModuleLogs`, `UploadModuleLogs` and the support bundle: which modules a request names,
//! their lines read through the runtime as a stream and filtered on the way ([`log_filter`]), and the result
//! encoded as Azure does (text or JSON, plain or gzip).

use std::io::Write as _;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use regex::Regex;
use tokio::sync::mpsc;

use super::log_filter::{parse_time_spec, Entry, LogFilter, LogSelector, Selection};
use super::wire::{LogContentType, LogEncoding, LogItem, LogMessage, ModuleLogsResponse};
use crate::runtime::{ModuleRuntime, RuntimeError};

/// IoT Hub's limit on a direct method's payload, which a `GetModuleLogs` answer must fit.
pub const MAX_ANSWER_BYTES: usize = 128 * 1024;
/// What each module's entry in an answer costs besides its lines (id, field names, the truncation note).
const ANSWER_ITEM_OVERHEAD: usize = 512;
/// The most of one module's log an upload carries (the newest lines are kept).
pub const MAX_UPLOAD_BYTES_PER_MODULE: usize = 32 << 20;
/// How many lines wait between the runtime's reader and the filter.
const LINE_QUEUE: usize = 256;

/// A logs request that was refused before any log was read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogsRequestError {
    /// An `id` or `regex` is not a regular expression.
    #[error("{field} {pattern:?} is not a regular expression: {reason}")]
    Regex {
        /// `id` or `filter.regex`.
        field: &'static str,
        /// The pattern.
        pattern: String,
        /// Why.
        reason: String,
    },
    /// A `since` or `until` does not parse.
    #[error("filter.{field}: {reason}")]
    Time {
        /// `since` or `until`.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A `loglevel` outside 0..=7.
    #[error("filter.loglevel {0} is not a syslog severity (0..7)")]
    Level(u64),
}

/// What the request asks of one module.
#[derive(Debug, Clone)]
pub struct ModuleQuery {
    /// The module.
    pub module: String,
    /// Its filter.
    pub filter: LogFilter,
    /// The last N lines.
    pub tail: Option<usize>,
}

/// For each deployed module that an item's `id` matches (the first such item wins), what to read.
pub fn queries(
    items: &[LogItem],
    modules: &[String],
    now: DateTime<Utc>,
) -> Result<Vec<ModuleQuery>, LogsRequestError> {
    let mut compiled = Vec::with_capacity(items.len());
    for item in items {
        let id = Regex::new(&item.id).map_err(|e| LogsRequestError::Regex {
            field: "id",
            pattern: item.id.clone(),
            reason: e.to_string(),
        })?;
        compiled.push((id, filter_of(item, now)?));
    }
    let mut found = Vec::new();
    for module in modules {
        if let Some((_, (filter, tail))) = compiled.iter().find(|(id, _)| id.is_match(module)) {
            found.push(ModuleQuery {
                module: module.clone(),
                filter: filter.clone(),
                tail: *tail,
            });
        }
    }
    Ok(found)
}

fn filter_of(
    item: &LogItem,
    now: DateTime<Utc>,
) -> Result<(LogFilter, Option<usize>), LogsRequestError> {
    let filter = &item.filter;
    let time = |field: &'static str, spec: &Option<String>| {
        spec.as_deref()
            .map(|s| parse_time_spec(s, now))
            .transpose()
            .map_err(|e| LogsRequestError::Time {
                field,
                reason: e.to_string(),
            })
    };
    let max_level = match filter.loglevel {
        None => None,
        Some(level @ 0..=7) => Some(u8::try_from(level).unwrap_or(7)),
        Some(level) => return Err(LogsRequestError::Level(level)),
    };
    let regex = filter
        .regex
        .as_deref()
        .map(|pattern| {
            Regex::new(pattern).map_err(|e| LogsRequestError::Regex {
                field: "filter.regex",
                pattern: pattern.to_owned(),
                reason: e.to_string(),
            })
        })
        .transpose()?;
    let tail = filter
        .tail
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    Ok((
        LogFilter {
            since: time("since", &filter.since)?,
            until: time("until", &filter.until)?,
            max_level,
            regex,
        },
        tail,
    ))
}

/// Who the lines belong to, for JSON content.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The hub's host name.
    pub hub: &'a str,
    /// The edge device.
    pub device: &'a str,
}

/// How the lines are laid out and how much room they have.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Text or JSON.
    pub content_type: LogContentType,
    /// Plain or gzip.
    pub encoding: LogEncoding,
    /// Whether the result travels inside a method answer's JSON (costs escaping and base64).
    pub in_answer: bool,
    /// The bytes the lines may take, as measured by [`Layout::cost`].
    pub budget: usize,
}

impl Layout {
    /// The layout of a `GetModuleLogs` answer for `modules` modules, sharing IoT Hub's 128 KB between them.
    pub fn answer(content_type: LogContentType, encoding: LogEncoding, modules: usize) -> Self {
        let share = MAX_ANSWER_BYTES.saturating_sub(64) / modules.max(1);
        let room = share.saturating_sub(ANSWER_ITEM_OVERHEAD);
        // Gzip output can be a little larger than its input (incompressible lines), then grows by a third in
        // base64.
        let budget = match encoding {
            LogEncoding::None => room,
            LogEncoding::Gzip => (room * 3 / 4).saturating_sub(room / 64 + 32),
        };
        Self {
            content_type,
            encoding,
            in_answer: true,
            budget,
        }
    }

    /// The layout of one module's upload.
    pub fn upload(content_type: LogContentType, encoding: LogEncoding) -> Self {
        Self {
            content_type,
            encoding,
            in_answer: false,
            budget: MAX_UPLOAD_BYTES_PER_MODULE,
        }
    }

    /// What one line adds to the result before compression; inside an uncompressed answer, after the JSON
    /// escaping of the payload string.
    pub fn cost(&self, entry: &Entry, origin: Origin<'_>, module: &str) -> usize {
        let raw = match self.content_type {
            LogContentType::Text => entry.line.clone(),
            LogContentType::Json => {
                serde_json::to_string(&message(entry, origin, module)).unwrap_or_default()
            }
        };
        if self.in_answer && self.encoding == LogEncoding::None {
            // The quotes serde_json adds stand for the newline or comma that follows the line.
            serde_json::to_string(&raw).map_or(raw.len() + 2, |s| s.len())
        } else {
            raw.len() + 1
        }
    }
}

fn message<'a>(entry: &'a Entry, origin: Origin<'a>, module: &'a str) -> LogMessage<'a> {
    LogMessage {
        iot_hub: origin.hub,
        device_id: origin.device,
        module_id: module,
        log_level: entry.level,
        time_stamp: entry
            .time
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        text: entry.message(),
    }
}

/// Reads one module's lines through the runtime, keeping what `query` asks for within `layout`'s budget.
pub async fn read(
    runtime: &dyn ModuleRuntime,
    query: &ModuleQuery,
    layout: Layout,
    origin: Origin<'_>,
) -> Result<Selection, RuntimeError> {
    let module = query.module.as_str();
    let mut selector = LogSelector::new(query.filter.clone(), query.tail, layout.budget, |e| {
        layout.cost(e, origin, module)
    });
    let (sender, mut receiver) = mpsc::channel(LINE_QUEUE);
    let reading = runtime.stream_logs(module, query.filter.since, sender);
    let filtering = async {
        while let Some(line) = receiver.recv().await {
            selector.push(line);
        }
    };
    let (read, ()) = tokio::join!(reading, filtering);
    read?;
    Ok(selector.finish())
}

/// The selected lines laid out as `content_type` and encoded, ready to upload.
pub fn render(selection: &Selection, layout: Layout, origin: Origin<'_>, module: &str) -> Vec<u8> {
    let mut raw = Vec::new();
    match layout.content_type {
        LogContentType::Text => {
            for entry in &selection.entries {
                raw.extend_from_slice(entry.line.as_bytes());
                raw.push(b'\n');
            }
        }
        LogContentType::Json => {
            let messages: Vec<LogMessage<'_>> = selection
                .entries
                .iter()
                .map(|e| message(e, origin, module))
                .collect();
            raw = serde_json::to_vec(&messages).unwrap_or_else(|_| b"[]".to_vec());
        }
    }
    match layout.encoding {
        LogEncoding::None => raw,
        LogEncoding::Gzip => gzip(&raw),
    }
}

/// One module's entry of a `GetModuleLogs` answer.
pub fn answer_item(
    selection: &Selection,
    layout: Layout,
    origin: Origin<'_>,
    module: &str,
) -> ModuleLogsResponse {
    let bytes = render(selection, layout, origin, module);
    let (payload, payload_bytes) = match layout.encoding {
        LogEncoding::None => (Some(String::from_utf8_lossy(&bytes).into_owned()), None),
        LogEncoding::Gzip => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
    ModuleLogsResponse {
        id: module.to_owned(),
        payload,
        payload_bytes,
        truncated: (selection.cut_for_size > 0).then(|| {
            format!(
                "{} older matching lines were left out to keep the answer within IoT Hub's 128 KB method payload; \
                 ask for fewer (tail, since) or use UploadModuleLogs",
                selection.cut_for_size
            )
        }),
    }
}

/// Gzip of `bytes` (writing to a `Vec` cannot fail).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::wire::LogItemFilter;
    use super::*;
    use crate::runtime::LogLine;

    const ORIGIN: Origin<'static> = Origin {
        hub: "hub.local",
        device: "edge-1",
    };

    fn item(id: &str, tail: Option<u64>) -> LogItem {
        LogItem {
            id: id.into(),
            filter: LogItemFilter {
                tail,
                ..LogItemFilter::default()
            },
        }
    }

    fn selection(lines: &[&str], layout: Layout) -> Selection {
        let mut selector = LogSelector::new(LogFilter::default(), None, layout.budget, |e| {
            layout.cost(e, ORIGIN, "m")
        });
        for line in lines {
            selector.push(LogLine {
                time: None,
                text: (*line).to_owned(),
            });
        }
        selector.finish()
    }

    #[test]
    fn an_id_matches_module_names_anywhere_and_the_first_item_wins() {
        let modules = [
            "edgeFilter".to_owned(),
            "sensor".to_owned(),
            "edgeX".to_owned(),
        ];
        let found = queries(
            &[item("^edgeF", Some(1)), item("edge", Some(2))],
            &modules,
            Utc::now(),
        )
        .unwrap();
        let found: Vec<_> = found.iter().map(|q| (q.module.as_str(), q.tail)).collect();
        assert_eq!(found, [("edgeFilter", Some(1)), ("edgeX", Some(2))]);
    }

    #[test]
    fn a_bad_regex_or_level_is_refused_before_reading() {
        assert!(matches!(
            queries(&[item("(", None)], &[], Utc::now()),
            Err(LogsRequestError::Regex { field: "id", .. })
        ));
        let mut bad_level = item(".*", None);
        bad_level.filter.loglevel = Some(9);
        assert_eq!(
            queries(&[bad_level], &[], Utc::now()).unwrap_err(),
            LogsRequestError::Level(9)
        );
    }

    #[test]
    fn a_gzip_answer_decodes_to_the_lines() {
        let layout = Layout::answer(LogContentType::Text, LogEncoding::Gzip, 1);
        let item = answer_item(&selection(&["one", "two"], layout), layout, ORIGIN, "m");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(item.payload_bytes.unwrap())
            .unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text)
            .unwrap();
        assert_eq!(text, "one\ntwo\n");
        assert!(item.payload.is_none() && item.truncated.is_none());
    }

    #[test]
    fn json_content_names_the_module_level_and_time() {
        let layout = Layout::answer(LogContentType::Json, LogEncoding::None, 1);
        let item = answer_item(
            &selection(&["<4> 2024-03-01 10:00:00.000 +00:00 careful"], layout),
            layout,
            ORIGIN,
            "m",
        );
        let messages: serde_json::Value = serde_json::from_str(&item.payload.unwrap()).unwrap();
        assert_eq!(
            messages,
            serde_json::json!([{"iotHub": "hub.local", "deviceId": "edge-1", "moduleId": "m", "logLevel": 4,
                                "timeStamp": "2024-03-01T10:00:00.000Z", "text": "careful"}])
        );
    }

    #[test]
    fn an_answer_of_a_huge_log_fits_iot_hubs_limit_and_says_it_was_cut() {
        for (content_type, encoding) in [
            (LogContentType::Text, LogEncoding::None),
            (LogContentType::Json, LogEncoding::None),
            (LogContentType::Text, LogEncoding::Gzip),
        ] {
            let layout = Layout::answer(content_type, encoding, 3);
            // Quotes and control characters grow under JSON escaping; random-looking text defeats gzip.
            let lines: Vec<String> = (0..20_000u64)
                .map(|i| format!("\"{:x}\"\t{}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15), i))
                .collect();
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            let items: Vec<ModuleLogsResponse> = ["a", "b", "c"]
                .iter()
                .map(|m| answer_item(&selection(&refs, layout), layout, ORIGIN, m))
                .collect();
            let size = serde_json::to_vec(&items).unwrap().len();
            assert!(
                size <= MAX_ANSWER_BYTES,
                "{content_type:?} {encoding:?}: {size}"
            );
            if encoding == LogEncoding::None {
                assert!(size > MAX_ANSWER_BYTES / 2, "{content_type:?}: {size}");
            }
            assert!(items[0].truncated.as_ref().unwrap().contains("128 KB"));
        }
    }
}
