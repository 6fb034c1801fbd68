//! IoT Edge deployment manifests (AZURE-COMPAT §5): `$edgeAgent`, `$edgeHub` and module desired properties.
//!
//! [`DeploymentManifest`] is the document applied to an edge device; [`EdgeAgentDesired`] (in `agent`) and
//! [`EdgeHubDesired`] (in `hub`) read the two system modules' desired properties with the defaults and the
//! error codes of IoT Edge: 400 for a malformed document, 412 for an unsupported schema, 417 for an empty one.

mod agent;
mod hub;

use serde_json::{Map, Value};

pub use self::agent::{
    join_create_options, split_create_options, DesiredStatus, EdgeAgentDesired, ImagePullPolicy,
    ModuleSpec, RestartPolicy,
};
pub use self::hub::{EdgeHubDesired, RouteSpec};

/// Why a deployment manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Structurally invalid (HTTP / `lastDesiredStatus` 400).
    #[error("invalid deployment manifest: {0}")]
    Format(String),
    /// Unsupported `schemaVersion` (412).
    #[error("unsupported schemaVersion: {0}")]
    SchemaVersion(String),
    /// The desired properties are empty (417).
    #[error("the desired properties are empty")]
    Empty,
}

impl ManifestError {
    /// The status code IoT Edge reports for this error.
    pub fn status_code(&self) -> u16 {
        match self {
            Self::Format(_) => 400,
            Self::SchemaVersion(_) => 412,
            Self::Empty => 417,
        }
    }
}

/// The key of the desired properties of each module in `modulesContent`.
const PROPERTIES_DESIRED: &str = "properties.desired";
/// The `$edgeAgent` module.
const EDGE_AGENT: &str = "$edgeAgent";
/// The `$edgeHub` module.
const EDGE_HUB: &str = "$edgeHub";

/// A deployment: for each module (`$edgeAgent`, `$edgeHub`, user modules), its `properties.desired` object.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentManifest {
    /// Module name to its desired properties object.
    pub modules_content: Map<String, Value>,
}

impl DeploymentManifest {
    /// Reads `{"modulesContent":{..}}` or `{"content":{"modulesContent":{..}}}`; every entry must be
    /// `{"properties.desired": {..}}`, and `$edgeAgent` and `$edgeHub` must be present and valid.
    pub fn from_json(v: &Value) -> Result<Self, ManifestError> {
        let root = as_object(v, "the manifest")?;
        let content = match (root.get("modulesContent"), root.get("content")) {
            (Some(content), _) => content,
            (None, Some(Value::Object(outer))) => outer
                .get("modulesContent")
                .ok_or_else(|| format_error("content has no modulesContent"))?,
            _ => return Err(format_error("the manifest has no modulesContent")),
        };
        let mut modules_content = Map::new();
        for (module, entry) in as_object(content, "modulesContent")? {
            let entry = as_object(entry, &format!("modulesContent.{module}"))?;
            let desired = match (entry.len(), entry.get(PROPERTIES_DESIRED)) {
                (1, Some(desired)) => as_object(desired, &format!("{module} properties.desired"))?,
                _ => {
                    return Err(format_error(format!(
                        "modulesContent.{module} must hold exactly \"{PROPERTIES_DESIRED}\""
                    )))
                }
            };
            modules_content.insert(module.clone(), Value::Object(desired.clone()));
        }
        let manifest = Self { modules_content };
        manifest.edge_agent()?;
        manifest.edge_hub()?;
        Ok(manifest)
    }

    /// The `$edgeAgent` desired properties, parsed.
    pub fn edge_agent(&self) -> Result<EdgeAgentDesired, ManifestError> {
        let desired = self
            .modules_content
            .get(EDGE_AGENT)
            .ok_or_else(|| format_error("$edgeAgent is missing"))?;
        EdgeAgentDesired::from_desired(desired)
    }

    /// The `$edgeHub` desired properties, parsed.
    pub fn edge_hub(&self) -> Result<EdgeHubDesired, ManifestError> {
        let desired = self
            .modules_content
            .get(EDGE_HUB)
            .ok_or_else(|| format_error("$edgeHub is missing"))?;
        EdgeHubDesired::from_desired(desired)
    }
}

/// A [`ManifestError::Format`].
fn format_error(message: impl Into<String>) -> ManifestError {
    ManifestError::Format(message.into())
}

/// `v` as an object, or a format error naming `what`.
fn as_object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, ManifestError> {
    v.as_object()
        .ok_or_else(|| format_error(format!("{what} must be a JSON object")))
}

/// The desired properties of a system module without the `$version` and `$metadata` a twin adds;
/// [`ManifestError::Empty`] when nothing else is left.
fn desired_body<'a>(v: &'a Value, module: &str) -> Result<&'a Map<String, Value>, ManifestError> {
    let body = as_object(v, &format!("{module} desired properties"))?;
    if body.keys().all(|k| k == "$version" || k == "$metadata") {
        return Err(ManifestError::Empty);
    }
    Ok(body)
}

/// Checks `schemaVersion` as .NET's `Version` compares it: major 1 and at most `1.{max_minor}`.
/// Returns the text and the minor version.
fn check_schema_version(
    desired: &Map<String, Value>,
    max_minor: u64,
) -> Result<(String, u64), ManifestError> {
    let text = match desired.get("schemaVersion") {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(ManifestError::SchemaVersion(other.to_string())),
        None => return Err(ManifestError::SchemaVersion("missing".to_owned())),
    };
    let refuse = || ManifestError::SchemaVersion(text.to_owned());
    // .NET Version: 2 to 4 dot-separated non-negative integers.
    let parts = text
        .split('.')
        .map(|p| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                p.parse::<u64>().ok()
            } else {
                None
            }
        })
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(refuse)?;
    match parts.as_slice() {
        [1, minor, rest @ ..]
            if rest.len() <= 2
                && (*minor < max_minor
                    || (*minor == max_minor && rest.iter().all(|&p| p == 0))) =>
        {
            Ok((text.to_owned(), *minor))
        }
        _ => Err(refuse()),
    }
}

#[cfg(test)]
mod tests;
