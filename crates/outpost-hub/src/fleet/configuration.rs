//! The configuration record: what `PUT /configurations/{id}` stores, how a request body becomes one (every check
//! that answers 400 before anything changes), and the REST JSON of azure-iot-hub's `Configuration` model.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use outpost_core::DeploymentManifest;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::rollout::RolloutPolicy;
use crate::error::HubError;

/// The key of a module's (or device's) whole desired properties in a configuration's content.
pub const PROPERTIES_DESIRED: &str = "properties.desired";

/// The most configurations a hub holds, as IoT Hub allows (automatic deployments and device and module
/// configurations together): creating one more is throttled (429) and stores nothing.
pub const MAX_CONFIGURATIONS: usize = 100;

/// The longest configuration id IoT Hub accepts.
const MAX_ID_LEN: usize = 128;

/// The punctuation IoT Hub allows in a configuration id beside lower-case letters and digits.
const ID_PUNCTUATION: &str = "-:+%_#*?!(),=@;$'";

/// The prefix of a module configuration's target condition (`FROM devices.modules WHERE ...`), which IoT Hub
/// requires and Outpost accepts with or without.
const MODULES_FROM: &str = "from devices.modules where ";

/// An automatic configuration as stored: a device configuration (`deviceContent`), a module configuration
/// (`moduleContent`) or an IoT Edge deployment (`modulesContent`, base or layered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Configuration {
    /// The id (lower case).
    pub id: String,
    /// The schema version (`1.0`).
    pub schema_version: String,
    /// The labels the operator gave it.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What it writes.
    pub content: ConfigurationContent,
    /// Which twins it targets, in the WHERE grammar of the query language.
    pub target_condition: String,
    /// When it was created.
    pub created_time_utc: DateTime<Utc>,
    /// When it was last replaced.
    pub last_updated_time_utc: DateTime<Utc>,
    /// Among the configurations that target a twin, the highest priority wins.
    pub priority: i64,
    /// The operator's metric queries by name (their results are computed when it is read).
    #[serde(default)]
    pub metric_queries: BTreeMap<String, String>,
    /// Counts every replacement; the etag is made of it.
    pub version: u64,
    /// Outpost's extension: how an edge deployment rolls out in waves (none: to every targeted device at once,
    /// as in IoT Hub).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutPolicy>,
}

/// What a configuration writes; exactly one part is present.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationContent {
    /// `properties.desired.PATH` to value, for device twins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_content: Option<Map<String, Value>>,
    /// Module name to `{"properties.desired": {..}}` (a base deployment) or `{"properties.desired.PATH": v}`
    /// (a layered one), for an edge device's `$edgeAgent`, `$edgeHub` and module twins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules_content: Option<Map<String, Value>>,
    /// `properties.desired.PATH` to value, for module twins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_content: Option<Map<String, Value>>,
}

/// What kind of configuration a record is, read from its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigurationKind {
    /// An IoT Edge deployment with the whole `$edgeAgent` and `$edgeHub` desired properties.
    BaseDeployment,
    /// An IoT Edge deployment of paths, applied on top of the base one.
    LayeredDeployment,
    /// Desired property paths for device twins.
    Device,
    /// Desired property paths for module twins.
    Module,
}

/// The rank that orders configurations targeting the same twin: higher priority, then newer creation, wins.
pub type Rank = (i64, DateTime<Utc>);

impl Configuration {
    /// Reads a `PUT /configurations/{id}` body into the record to store, refusing an invalid id, content,
    /// target condition or metric query. `existing` is the stored record this one replaces.
    pub fn from_request(
        id: &str,
        body: &Value,
        existing: Option<&Configuration>,
        now: DateTime<Utc>,
    ) -> Result<Self, HubError> {
        validate_id(id)?;
        let object = body.as_object().ok_or_else(|| {
            HubError::ArgumentInvalid("the configuration must be a JSON object".into())
        })?;
        if let Some(body_id) = object.get("id").and_then(Value::as_str) {
            if body_id != id {
                return Err(HubError::ArgumentInvalid(format!(
                    "the configuration id {body_id:?} differs from the one in the path ({id:?})"
                )));
            }
        }
        let content: ConfigurationContent =
            serde_json::from_value(object.get("content").cloned().unwrap_or(Value::Null))
                .map_err(|e| HubError::InvalidConfigurationContent(e.to_string()))?;
        let kind = content.kind()?;
        if let Some(existing) = existing {
            // As in IoT Hub, only the target condition, priority, labels and metrics of a configuration change.
            if existing.content != content {
                return Err(HubError::InvalidConfigurationContent(
                    "the content of an existing configuration cannot change".into(),
                ));
            }
        }
        let target_condition = string_field(object, "targetCondition")?.unwrap_or_default();
        parse_target_condition(&target_condition, kind)?;
        let priority = match object.get("priority") {
            None | Some(Value::Null) => 0,
            Some(value) => value.as_i64().filter(|p| *p >= 0).ok_or_else(|| {
                HubError::ArgumentInvalid("priority must be a non-negative integer".into())
            })?,
        };
        let labels = string_map(object.get("labels"), "labels")?;
        let metric_queries = string_map(
            object.get("metrics").and_then(|m| m.get("queries")),
            "metrics.queries",
        )?;
        for (name, query) in &metric_queries {
            parse_metric_query(query).map_err(|e| {
                HubError::ArgumentInvalid(format!("metric query {name:?} is invalid: {e}"))
            })?;
        }
        let rollout = rollout_policy(object.get("rollout"), kind)?;
        if let Some(existing) = existing {
            if existing.rollout != rollout {
                return Err(HubError::ArgumentInvalid(
                    "the rollout of an existing deployment cannot change".into(),
                ));
            }
        }
        Ok(Self {
            id: id.to_owned(),
            schema_version: string_field(object, "schemaVersion")?.unwrap_or_else(|| "1.0".into()),
            labels,
            content,
            target_condition,
            created_time_utc: existing.map_or(now, |e| e.created_time_utc),
            last_updated_time_utc: now,
            priority,
            metric_queries,
            version: existing.map_or(1, |e| e.version + 1),
            rollout,
        })
    }

    /// The kind of configuration, read from which part of the content is there (stored records were checked
    /// completely when they were put).
    pub fn kind(&self) -> ConfigurationKind {
        let present =
            |part: &Option<Map<String, Value>>| part.as_ref().is_some_and(|m| !m.is_empty());
        if let Some(modules) = self
            .content
            .modules_content
            .as_ref()
            .filter(|m| !m.is_empty())
        {
            let base = modules
                .get("$edgeAgent")
                .and_then(|agent| agent.get(PROPERTIES_DESIRED))
                .is_some();
            if base {
                ConfigurationKind::BaseDeployment
            } else {
                ConfigurationKind::LayeredDeployment
            }
        } else if present(&self.content.module_content) {
            ConfigurationKind::Module
        } else {
            ConfigurationKind::Device
        }
    }

    /// The etag (`If-Match` of a replacement or delete).
    pub fn etag(&self) -> String {
        crate::identity::identity_etag(self.version)
    }

    /// Orders configurations that target the same twin.
    pub fn rank(&self) -> Rank {
        (self.priority, self.created_time_utc)
    }

    /// The target condition without a module configuration's `FROM devices.modules WHERE`.
    pub fn where_clause(&self) -> &str {
        where_clause(&self.target_condition)
    }

    /// The REST JSON (`Configuration` of azure-iot-hub), with the metrics' results and queries.
    pub fn to_json(&self, system_metrics: &Metrics, metrics: &Metrics) -> Value {
        let mut json = serde_json::json!({
            "id": self.id,
            "schemaVersion": self.schema_version,
            "labels": self.labels,
            "content": self.content,
            "contentType": "assignment",
            "targetCondition": self.target_condition,
            "createdTimeUtc": self.created_time_utc.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "lastUpdatedTimeUtc":
                self.last_updated_time_utc.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "priority": self.priority,
            "systemMetrics": system_metrics,
            "metrics": metrics,
            "etag": self.etag(),
        });
        if let (Some(policy), Some(object)) = (&self.rollout, json.as_object_mut()) {
            object.insert("rollout".into(), serde_json::json!(policy));
        }
        json
    }
}

/// A configuration's metrics: each query's row count by name, and the queries.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Metrics {
    /// Row counts by metric name.
    pub results: BTreeMap<String, u64>,
    /// The queries by metric name.
    pub queries: BTreeMap<String, String>,
}

impl ConfigurationContent {
    /// The kind the content makes, or why it is refused.
    pub fn kind(&self) -> Result<ConfigurationKind, HubError> {
        let present =
            |part: &Option<Map<String, Value>>| part.as_ref().is_some_and(|m| !m.is_empty());
        match (
            present(&self.device_content),
            present(&self.modules_content),
            present(&self.module_content),
        ) {
            (true, false, false) => {
                desired_paths(self.device_content.as_ref(), "deviceContent")?;
                Ok(ConfigurationKind::Device)
            }
            (false, false, true) => {
                desired_paths(self.module_content.as_ref(), "moduleContent")?;
                Ok(ConfigurationKind::Module)
            }
            (false, true, false) => modules_kind(self.modules_content.as_ref()),
            _ => Err(HubError::InvalidConfigurationContent(
                "exactly one of deviceContent, modulesContent and moduleContent must be given"
                    .into(),
            )),
        }
    }
}

/// The kind of an edge deployment: base when `$edgeAgent` has its whole desired properties (checked as a
/// deployment manifest), layered when every entry holds desired property paths.
fn modules_kind(content: Option<&Map<String, Value>>) -> Result<ConfigurationKind, HubError> {
    let content = content.cloned().unwrap_or_default();
    let base = content
        .get("$edgeAgent")
        .and_then(|agent| agent.get(PROPERTIES_DESIRED))
        .is_some();
    if base {
        DeploymentManifest::from_json(&serde_json::json!({ "modulesContent": content }))
            .map_err(|e| HubError::InvalidConfigurationContent(e.to_string()))?;
        return Ok(ConfigurationKind::BaseDeployment);
    }
    for (module, entry) in &content {
        let entry = entry.as_object().ok_or_else(|| {
            HubError::InvalidConfigurationContent(format!(
                "modulesContent.{module} must be a JSON object"
            ))
        })?;
        for (key, value) in entry {
            if key == PROPERTIES_DESIRED && !module.starts_with('$') && value.is_object() {
                continue;
            }
            desired_path(key).ok_or_else(|| {
                HubError::InvalidConfigurationContent(format!(
                    "modulesContent.{module}: {key:?} is not properties.desired or a path under it"
                ))
            })?;
        }
    }
    Ok(ConfigurationKind::LayeredDeployment)
}

/// Checks that every key of a device or module content is `properties.desired.PATH`.
fn desired_paths(content: Option<&Map<String, Value>>, what: &str) -> Result<(), HubError> {
    for key in content.into_iter().flat_map(Map::keys) {
        desired_path(key).ok_or_else(|| {
            HubError::InvalidConfigurationContent(format!(
                "{what}: {key:?} is not a path under properties.desired"
            ))
        })?;
    }
    Ok(())
}

/// The path under `properties.desired` of a content key (`properties.desired.a.b` → `a.b`), if it is one.
pub fn desired_path(key: &str) -> Option<&str> {
    let path = key.strip_prefix(PROPERTIES_DESIRED)?.strip_prefix('.')?;
    let valid = !path.is_empty()
        && path
            .split('.')
            .all(|segment| !segment.is_empty() && !segment.starts_with('$'));
    valid.then_some(path)
}

/// A target condition without a module configuration's `FROM devices.modules WHERE`.
pub fn where_clause(condition: &str) -> &str {
    let trimmed = condition.trim();
    match trimmed.get(..MODULES_FROM.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(MODULES_FROM) => &trimmed[MODULES_FROM.len()..],
        _ => trimmed,
    }
}

/// Parses a target condition; an empty one targets nothing, as in IoT Hub.
pub fn parse_target_condition(
    condition: &str,
    kind: ConfigurationKind,
) -> Result<Option<outpost_core::query::QueryCondition>, HubError> {
    let clause = where_clause(condition);
    if clause.is_empty() {
        return Ok(None);
    }
    if kind != ConfigurationKind::Module && clause.len() != condition.trim().len() {
        return Err(HubError::ArgumentInvalid(
            "only a module configuration's target condition may select FROM devices.modules".into(),
        ));
    }
    outpost_core::query::QueryCondition::parse(clause)
        .map(Some)
        .map_err(|e| HubError::ArgumentInvalid(format!("the target condition is invalid: {e}")))
}

/// Parses a metric query (`SELECT deviceId FROM devices WHERE ...`).
pub fn parse_metric_query(
    query: &str,
) -> Result<outpost_core::query::Query, outpost_core::query::QueryError> {
    outpost_core::query::Query::parse(query)
}

/// Checks a configuration id as IoT Hub does: 1 to 128 lower-case letters, digits and `-:+%_#*?!(),=@;$'`.
fn validate_id(id: &str) -> Result<(), HubError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ID_PUNCTUATION.contains(c));
    if valid {
        Ok(())
    } else {
        Err(HubError::ArgumentInvalid(format!(
            "invalid configuration id {id:?}: 1 to {MAX_ID_LEN} lower-case letters, digits and {ID_PUNCTUATION}"
        )))
    }
}

/// The `rollout` extension field: only an edge deployment may have one, and it must be valid.
fn rollout_policy(
    value: Option<&Value>,
    kind: ConfigurationKind,
) -> Result<Option<RolloutPolicy>, HubError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    if !matches!(
        kind,
        ConfigurationKind::BaseDeployment | ConfigurationKind::LayeredDeployment
    ) {
        return Err(HubError::ArgumentInvalid(
            "only an edge deployment (modulesContent) may have a rollout".into(),
        ));
    }
    // The state is the hub's to show; a client that sends back what it read is not refused for it.
    let mut policy = value.clone();
    if let Some(object) = policy.as_object_mut() {
        object.remove("state");
    }
    let policy: RolloutPolicy = serde_json::from_value(policy)
        .map_err(|e| HubError::ArgumentInvalid(format!("the rollout is invalid: {e}")))?;
    policy.validate()?;
    Ok(Some(policy))
}

/// A string field of the body, if present and not null.
fn string_field(object: &Map<String, Value>, name: &str) -> Result<Option<String>, HubError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(HubError::ArgumentInvalid(format!(
            "{name} must be a string"
        ))),
    }
}

/// A map of strings (labels, metric queries), empty when absent.
fn string_map(value: Option<&Value>, name: &str) -> Result<BTreeMap<String, String>, HubError> {
    match value {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(value) => serde_json::from_value(value.clone())
            .map_err(|_| HubError::ArgumentInvalid(format!("{name} must map names to strings"))),
    }
}
