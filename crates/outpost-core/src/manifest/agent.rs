//! `$edgeAgent` desired properties: the runtime, the system modules and the user modules.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{as_object, check_schema_version, desired_body, format_error, ManifestError};
use crate::id::ModuleId;

/// The `$edgeAgent` desired properties.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeAgentDesired {
    /// `schemaVersion` (1.0 or 1.1).
    pub schema_version: String,
    /// `runtime`, raw.
    pub runtime: Value,
    /// `systemModules` (`edgeAgent`, `edgeHub`).
    pub system_modules: BTreeMap<String, ModuleSpec>,
    /// `modules`: the user modules.
    pub modules: BTreeMap<String, ModuleSpec>,
}

impl EdgeAgentDesired {
    /// Parses and validates `$edgeAgent`'s `properties.desired` (a twin's `$version`/`$metadata` are ignored).
    pub fn from_desired(v: &Value) -> Result<Self, ManifestError> {
        let desired = desired_body(v, "$edgeAgent")?;
        // edgeAgent's ExpectedSchemaVersion is 1.1.0.
        let (schema_version, _) = check_schema_version(desired, 1)?;
        let runtime = desired
            .get("runtime")
            .ok_or_else(|| format_error("$edgeAgent has no runtime"))?;
        as_object(runtime, "runtime")?;
        let system = desired
            .get("systemModules")
            .ok_or_else(|| format_error("$edgeAgent has no systemModules"))?;
        let mut system_modules = BTreeMap::new();
        for (name, spec) in as_object(system, "systemModules")? {
            let spec = match name.as_str() {
                "edgeAgent" => ModuleSpec::edge_agent(spec)?,
                "edgeHub" => ModuleSpec::from_value(name, spec)?,
                _ => return Err(format_error(format!("unknown system module {name:?}"))),
            };
            system_modules.insert(name.clone(), spec);
        }
        for required in ["edgeAgent", "edgeHub"] {
            if !system_modules.contains_key(required) {
                return Err(format_error(format!("systemModules has no {required}")));
            }
        }
        let mut modules = BTreeMap::new();
        if let Some(user) = desired.get("modules") {
            for (name, spec) in as_object(user, "modules")? {
                check_module_name(name)?;
                modules.insert(name.clone(), ModuleSpec::from_value(name, spec)?);
            }
        }
        Ok(Self {
            schema_version,
            runtime: runtime.clone(),
            system_modules,
            modules,
        })
    }
}

/// User module names become module identities, and `$` names belong to the system modules.
fn check_module_name(name: &str) -> Result<(), ManifestError> {
    ModuleId::new(name).map_err(|e| format_error(format!("module name {name:?}: {e}")))?;
    if name.starts_with('$') {
        return Err(format_error(format!(
            "module name {name:?} may not start with '$'"
        )));
    }
    Ok(())
}

/// One module of the deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleSpec {
    /// `version`, free text.
    pub version: Option<String>,
    /// `type`: `docker` or `process`.
    pub kind: String,
    /// `status`, default running.
    pub status: DesiredStatus,
    /// `restartPolicy`, default on-unhealthy.
    pub restart_policy: RestartPolicy,
    /// `imagePullPolicy`, default on-create.
    pub image_pull_policy: ImagePullPolicy,
    /// `startupOrder`, default 4294967295 (last); 0 for edgeAgent, which starts everything else.
    pub startup_order: u32,
    /// `settings.image` (may be empty for a process module).
    pub image: String,
    /// `settings.createOptions` joined from its chunks; `None` when absent or empty.
    pub create_options: Option<String>,
    /// `settings`, raw (a process module's `path` and `args` are here).
    pub settings: Value,
    /// `env`: name to value.
    pub env: BTreeMap<String, String>,
}

/// `startupOrder` when the manifest gives none: after every module that has one.
const DEFAULT_STARTUP_ORDER: u32 = u32::MAX;

impl ModuleSpec {
    /// Parses one module entry; `name` only serves the error messages.
    fn from_value(name: &str, v: &Value) -> Result<Self, ManifestError> {
        let what = |field: &str| format!("module {name}: {field}");
        let spec = as_object(v, &what("the module"))?;
        let kind = match spec.get("type") {
            Some(Value::String(kind)) if kind == "docker" || kind == "process" => kind.clone(),
            Some(other) => {
                return Err(format_error(what(&format!(
                    "type {other} is neither \"docker\" nor \"process\""
                ))))
            }
            None => return Err(format_error(what("type is missing"))),
        };
        let version = match spec.get("version") {
            None | Some(Value::Null) => None,
            Some(Value::String(v)) => Some(v.clone()),
            Some(_) => return Err(format_error(what("version must be a string"))),
        };
        let status = parse_enum(spec, "status", DesiredStatus::from_wire, &what)?;
        let restart_policy = parse_enum(spec, "restartPolicy", RestartPolicy::from_wire, &what)?;
        let image_pull_policy =
            parse_enum(spec, "imagePullPolicy", ImagePullPolicy::from_wire, &what)?;
        let startup_order = match spec.get("startupOrder") {
            None => DEFAULT_STARTUP_ORDER,
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    format_error(what("startupOrder must be an integer from 0 to 4294967295"))
                })?,
        };
        let settings = spec
            .get("settings")
            .ok_or_else(|| format_error(what("settings are missing")))?;
        let settings_map = as_object(settings, &what("settings"))?;
        let image = match settings_map.get("image") {
            Some(Value::String(image)) => image.clone(),
            None => String::new(),
            Some(_) => return Err(format_error(what("settings.image must be a string"))),
        };
        if kind == "docker" && image.trim().is_empty() {
            return Err(format_error(what(
                "settings.image is required for a docker module",
            )));
        }
        if kind == "process" {
            check_process_settings(settings_map).map_err(|e| format_error(what(&e)))?;
        }
        let create_options = join_create_options(settings_map)
            .map_err(|e| format_error(what(&e.to_string())))?
            .filter(|o| !o.trim().is_empty());
        if let Some(options) = &create_options {
            // Docker reads them as a JSON object; catching it here names the module instead of failing at create.
            if !serde_json::from_str::<Value>(options).is_ok_and(|v| v.is_object()) {
                return Err(format_error(what("createOptions is not a JSON object")));
            }
        }
        let env = parse_env(spec).map_err(|e| format_error(what(&e)))?;
        Ok(Self {
            version,
            kind,
            status,
            restart_policy,
            image_pull_policy,
            startup_order,
            image,
            create_options,
            settings: settings.clone(),
            env,
        })
    }

    /// edgeAgent is always running and starts first; its manifest entry has no status, policy or order.
    fn edge_agent(v: &Value) -> Result<Self, ManifestError> {
        let mut spec = Self::from_value("edgeAgent", v)?;
        spec.status = DesiredStatus::Running;
        spec.restart_policy = RestartPolicy::Always;
        spec.startup_order = 0;
        Ok(spec)
    }
}

/// A process module names an absolute executable and optional string arguments.
fn check_process_settings(settings: &Map<String, Value>) -> Result<(), String> {
    match settings.get("path") {
        Some(Value::String(path)) if path.starts_with('/') => {}
        _ => return Err("settings.path must be an absolute path for a process module".to_owned()),
    }
    match settings.get("args") {
        None => Ok(()),
        Some(Value::Array(args)) if args.iter().all(Value::is_string) => Ok(()),
        Some(_) => Err("settings.args must be an array of strings".to_owned()),
    }
}

/// `env`: `{"NAME": {"value": "v"}}`; numbers and booleans are taken as their text, as edgeAgent does.
fn parse_env(spec: &Map<String, Value>) -> Result<BTreeMap<String, String>, String> {
    let Some(env) = spec.get("env") else {
        return Ok(BTreeMap::new());
    };
    let env = env.as_object().ok_or("env must be a JSON object")?;
    let mut vars = BTreeMap::new();
    for (name, entry) in env {
        let value = match entry.get("value") {
            Some(Value::String(s)) => s.clone(),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
            _ => return Err(format!("env.{name} must be {{\"value\": \"...\"}}")),
        };
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(format!("env name {name:?} is not a valid variable name"));
        }
        vars.insert(name.clone(), value);
    }
    Ok(vars)
}

/// Reads an optional enum field by its wire name, defaulting when absent.
fn parse_enum<T: Default>(
    spec: &Map<String, Value>,
    field: &str,
    from_wire: fn(&str) -> Option<T>,
    what: &dyn Fn(&str) -> String,
) -> Result<T, ManifestError> {
    match spec.get(field) {
        None => Ok(T::default()),
        Some(v) => v
            .as_str()
            .and_then(from_wire)
            .ok_or_else(|| format_error(what(&format!("{field} {v} is not a known value")))),
    }
}

/// Defines a manifest enum with its wire names, `as_str`, `Display` and kebab-case serde.
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $wire)] $variant,)+
        }

        impl $name {
            /// The manifest spelling.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $wire,)+ }
            }

            fn from_wire(s: &str) -> Option<Self> {
                match s { $($wire => Some(Self::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum! {
    /// Whether a module should run.
    DesiredStatus {
        /// `running`.
        #[default] Running = "running",
        /// `stopped`.
        Stopped = "stopped",
    }
}

wire_enum! {
    /// When a module is restarted.
    RestartPolicy {
        /// `never`.
        Never = "never",
        /// `on-failure`.
        OnFailure = "on-failure",
        /// `on-unhealthy` (the default).
        #[default] OnUnhealthy = "on-unhealthy",
        /// `always`.
        Always = "always",
    }
}

wire_enum! {
    /// Whether the image is pulled when the module is created.
    ImagePullPolicy {
        /// `on-create`.
        #[default] OnCreate = "on-create",
        /// `never`.
        Never = "never",
    }
}

/// Longest chunk of `createOptions` (edgeAgent's `TwinValueMaxSize`), in characters.
const CREATE_OPTIONS_CHUNK: usize = 512;
/// Number of chunks: `createOptions` and `createOptions01` to `createOptions99` (`TwinValueMaxChunks`).
const CREATE_OPTIONS_CHUNKS: usize = 100;
/// The first chunk's key.
const CREATE_OPTIONS: &str = "createOptions";

/// The key of chunk `i` (0 is `createOptions`, then `createOptions01` ..).
fn chunk_key(i: usize) -> String {
    if i == 0 {
        CREATE_OPTIONS.to_owned()
    } else {
        format!("{CREATE_OPTIONS}{i:02}")
    }
}

/// Joins `createOptions`, `createOptions01` .. `createOptions99` from a module's settings, in order.
///
/// Chunks must be strings, except that a lone `createOptions` may be a JSON object (deployment templates
/// write it so; edgeAgent takes its text). A numbered chunk after a gap, or without `createOptions`, is refused.
pub fn join_create_options(settings: &Map<String, Value>) -> Result<Option<String>, ManifestError> {
    let mut joined = match settings.get(CREATE_OPTIONS) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v @ Value::Object(_)) => Some(v.to_string()),
        Some(_) => return Err(format_error("createOptions must be a string")),
    };
    let mut present = usize::from(joined.is_some());
    for i in 1..CREATE_OPTIONS_CHUNKS {
        let key = chunk_key(i);
        match (settings.get(&key), joined.as_mut()) {
            (None, _) => {}
            (Some(Value::String(chunk)), Some(joined)) if present == i => {
                joined.push_str(chunk);
                present += 1;
            }
            (Some(Value::String(_)), _) => {
                return Err(format_error(format!(
                    "{key} does not follow the chunk before it"
                )))
            }
            (Some(_), _) => return Err(format_error(format!("{key} must be a string"))),
        }
    }
    Ok(joined)
}

/// Splits create options into 512-char chunks: `createOptions`, `createOptions01`, ... `createOptions99`.
///
/// Options too long for 100 chunks keep the rest in `createOptions99`, so the split is never lossy; the twin
/// size limits then decide whether the result can be stored.
pub fn split_create_options(create_options: &str) -> Map<String, Value> {
    let chars: Vec<char> = create_options.chars().collect();
    let mut settings = Map::new();
    let mut start = 0;
    for i in 0..CREATE_OPTIONS_CHUNKS {
        let end = if i + 1 == CREATE_OPTIONS_CHUNKS {
            chars.len()
        } else {
            (start + CREATE_OPTIONS_CHUNK).min(chars.len())
        };
        settings.insert(
            chunk_key(i),
            Value::String(chars[start..end].iter().collect()),
        );
        start = end;
        if start == chars.len() {
            break;
        }
    }
    settings
}
