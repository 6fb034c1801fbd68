//! The payloads of `$edgeAgent`'s direct methods, in the shapes Azure IoT Edge documents
//! (how-to-retrieve-iot-edge-logs, how-to-edgeagent-direct-method). Requests are read leniently where Azure is
//! (unknown fields ignored, numbers given as strings accepted), answers are written exactly.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The only request schema Azure defines.
pub const SCHEMA_VERSION: &str = "1.0";

/// `RestartModule`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestartModuleRequest {
    /// `1.0`.
    pub schema_version: String,
    /// The module's name.
    pub id: String,
}

/// `GetModuleLogs`, and `UploadModuleLogs` with its `sasUrl`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleLogsRequest {
    /// `1.0`.
    pub schema_version: String,
    /// Which modules, each with its filter.
    pub items: Vec<LogItem>,
    /// `none` (default) or `gzip`.
    #[serde(default)]
    pub encoding: LogEncoding,
    /// `text` (default) or `json`.
    #[serde(default)]
    pub content_type: LogContentType,
    /// `UploadModuleLogs` only: where to PUT the logs.
    #[serde(default)]
    pub sas_url: Option<String>,
}

/// One `{"id": regex, "filter": {...}}` of a logs request.
#[derive(Debug, Deserialize)]
pub struct LogItem {
    /// A regular expression over module names (`edgeAgent`, `.*`).
    pub id: String,
    /// The filter for the modules it matches.
    #[serde(default)]
    pub filter: LogItemFilter,
}

/// A logs filter as it arrives.
#[derive(Debug, Default, Deserialize)]
pub struct LogItemFilter {
    /// The last N lines.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub tail: Option<u64>,
    /// A duration, RFC 3339 or UNIX time.
    #[serde(default, deserialize_with = "time_spec")]
    pub since: Option<String>,
    /// A duration, RFC 3339 or UNIX time.
    #[serde(default, deserialize_with = "time_spec")]
    pub until: Option<String>,
    /// The least severe syslog level kept (0..=7).
    #[serde(default, deserialize_with = "lenient_u64")]
    pub loglevel: Option<u64>,
    /// A regular expression lines must match.
    #[serde(default)]
    pub regex: Option<String>,
}

/// How logs are encoded in the answer or upload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogEncoding {
    /// As they are.
    #[default]
    None,
    /// Gzip; in a method answer as base64 in `payloadBytes`.
    Gzip,
}

/// What the logs look like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogContentType {
    /// The lines, one per line.
    #[default]
    Text,
    /// A JSON array of [`LogMessage`].
    Json,
}

/// One line in `json` content, as Azure's `ModuleLogMessage` (its `stream` is left out: a process module's
/// output mixes stdout and stderr).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogMessage<'a> {
    /// The hub's host name.
    pub iot_hub: &'a str,
    /// The edge device.
    pub device_id: &'a str,
    /// The module.
    pub module_id: &'a str,
    /// Its syslog severity.
    pub log_level: u8,
    /// When it was written, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_stamp: Option<String>,
    /// The text without its level and time prefixes.
    pub text: &'a str,
}

/// One module's logs in a `GetModuleLogs` answer: `payload` for `none`, `payloadBytes` (base64) for `gzip`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleLogsResponse {
    /// The module.
    pub id: String,
    /// The logs as text (`encoding: none`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The gzipped logs in base64 (`encoding: gzip`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<String>,
    /// Outpost's addition, present only when lines were left out to keep the answer within IoT Hub's 128 KB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<String>,
}

/// `UploadSupportBundle`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportBundleRequest {
    /// `1.0`.
    pub schema_version: String,
    /// Where to PUT the bundle.
    pub sas_url: String,
    /// Module logs since (a duration, RFC 3339 or UNIX time).
    #[serde(default, deserialize_with = "time_spec")]
    pub since: Option<String>,
    /// Module logs until.
    #[serde(default, deserialize_with = "time_spec")]
    pub until: Option<String>,
    /// Only the runtime's own part: no module logs.
    #[serde(default)]
    pub edge_runtime_only: bool,
}

/// `GetTaskStatus`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatusRequest {
    /// `1.0`.
    pub schema_version: String,
    /// The id an upload was answered with.
    pub correlation_id: String,
}

/// A background task's state, as Azure names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TaskState {
    /// Accepted, not begun.
    NotStarted,
    /// Under way.
    Running,
    /// Done.
    Completed,
    /// Ended in an error (see the message).
    Failed,
    /// No task has this id (never had, or forgotten).
    Unknown,
}

/// The answer of `UploadModuleLogs`, `UploadSupportBundle` and `GetTaskStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// The task's state.
    pub status: TaskState,
    /// Why it failed; empty otherwise.
    pub message: String,
    /// The task's id.
    pub correlation_id: String,
}

/// An error answer's payload.
pub fn error_payload(message: impl Into<String>) -> Value {
    serde_json::json!({ "message": message.into() })
}

/// A request's `schemaVersion` that is not [`SCHEMA_VERSION`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schemaVersion {0:?} is not supported (use {SCHEMA_VERSION:?})")]
pub struct SchemaVersionError(pub String);

/// Checks `schemaVersion` (Azure accepts `1.0` and answers 400 otherwise).
pub fn check_schema(version: &str) -> Result<(), SchemaVersionError> {
    if version == SCHEMA_VERSION {
        Ok(())
    } else {
        Err(SchemaVersionError(version.to_owned()))
    }
}

/// A count given as a number or as a string of digits (Azure's own examples quote them).
fn lenient_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a count"))),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a count"))),
        Some(other) => Err(serde::de::Error::custom(format!("{other} is not a count"))),
    }
}

/// A time given as a string or as a UNIX time number.
fn time_spec<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(serde::de::Error::custom(format!("{other} is not a time"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_logs_request_reads_azures_documented_example_with_quoted_numbers() {
        let request: ModuleLogsRequest = serde_json::from_value(json!({
            "schemaVersion": "1.0",
            "items": [{"id": "edgeHub", "filter": {"since": "2d", "tail": "1000", "loglevel": 4}}],
            "encoding": "gzip", "contentType": "text",
        }))
        .unwrap();
        let filter = &request.items[0].filter;
        assert_eq!(
            (filter.tail, filter.loglevel, filter.since.as_deref()),
            (Some(1000), Some(4), Some("2d"))
        );
        assert_eq!(request.encoding, LogEncoding::Gzip);
        assert_eq!(request.content_type, LogContentType::Text);
    }

    #[test]
    fn encoding_and_content_type_default_to_none_and_text() {
        let request: ModuleLogsRequest =
            serde_json::from_value(json!({"schemaVersion": "1.0", "items": [{"id": ".*"}]}))
                .unwrap();
        assert_eq!(request.encoding, LogEncoding::None);
        assert_eq!(request.content_type, LogContentType::Text);
        assert!(request.items[0].filter.tail.is_none());
    }

    #[test]
    fn a_task_status_is_written_as_azure_names_it() {
        let status = TaskStatus {
            status: TaskState::NotStarted,
            message: String::new(),
            correlation_id: "c".into(),
        };
        assert_eq!(
            serde_json::to_value(status).unwrap(),
            json!({"status": "NotStarted", "message": "", "correlationId": "c"})
        );
    }
}
