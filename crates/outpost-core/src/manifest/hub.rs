//! `$edgeHub` desired properties: routes and store-and-forward.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{as_object, check_schema_version, desired_body, format_error, ManifestError};

/// Route priority when none is given: below every explicit priority 0-9 (edgeHub's `RouteFactory`).
const DEFAULT_PRIORITY: u32 = 2_000_000_000;
/// Lowest explicit route priority.
const MAX_PRIORITY: u64 = 9;
/// `storeAndForwardConfiguration.timeToLiveSecs` when none is given.
const DEFAULT_STORE_AND_FORWARD_TTL_SECS: u64 = 7200;

/// The `$edgeHub` desired properties.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeHubDesired {
    /// `schemaVersion` (1.0 to 1.3).
    pub schema_version: String,
    /// Route name to route.
    pub routes: BTreeMap<String, RouteSpec>,
    /// `storeAndForwardConfiguration.timeToLiveSecs`, default 7200.
    pub store_and_forward_ttl_secs: u64,
}

/// One route with its priority and time to live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// The route text (`FROM ... INTO ...`).
    pub route: String,
    /// 0 (highest) to 9; 2000000000 when not given.
    pub priority: u32,
    /// Seconds; 0 means the global store-and-forward TTL.
    pub time_to_live_secs: u64,
}

impl EdgeHubDesired {
    /// Parses and validates `$edgeHub`'s `properties.desired` (a twin's `$version`/`$metadata` are ignored).
    ///
    /// Schema 1.0 routes are strings; from 1.1 a route may also be `{route, priority, timeToLiveSecs}`.
    pub fn from_desired(v: &Value) -> Result<Self, ManifestError> {
        let desired = desired_body(v, "$edgeHub")?;
        let (schema_version, minor) = check_schema_version(desired, 3)?;
        let objects_allowed = minor >= 1;
        let mut routes = BTreeMap::new();
        if let Some(all) = desired.get("routes") {
            for (name, route) in as_object(all, "routes")? {
                routes.insert(
                    name.clone(),
                    RouteSpec::from_value(name, route, objects_allowed)?,
                );
            }
        }
        let store_and_forward_ttl_secs = match desired.get("storeAndForwardConfiguration") {
            None => DEFAULT_STORE_AND_FORWARD_TTL_SECS,
            Some(config) => match as_object(config, "storeAndForwardConfiguration")?.get("timeToLiveSecs") {
                None => DEFAULT_STORE_AND_FORWARD_TTL_SECS,
                Some(ttl) => ttl
                    .as_u64()
                    .ok_or_else(|| format_error("storeAndForwardConfiguration.timeToLiveSecs must be a non-negative integer"))?,
            },
        };
        Ok(Self {
            schema_version,
            routes,
            store_and_forward_ttl_secs,
        })
    }
}

impl RouteSpec {
    fn from_value(name: &str, v: &Value, objects_allowed: bool) -> Result<Self, ManifestError> {
        let (route, fields) = match v {
            Value::String(route) => (route.as_str(), None),
            Value::Object(fields) if objects_allowed => match fields.get("route") {
                Some(Value::String(route)) => (route.as_str(), Some(fields)),
                _ => {
                    return Err(format_error(format!(
                        "route {name}: \"route\" must be a string"
                    )))
                }
            },
            Value::Object(_) => {
                return Err(format_error(format!(
                    "route {name}: schema 1.0 routes must be strings"
                )))
            }
            _ => {
                return Err(format_error(format!(
                    "route {name} must be a string or an object"
                )))
            }
        };
        if route.trim().is_empty() {
            return Err(format_error(format!("route {name} is empty")));
        }
        let priority = match fields.and_then(|f| f.get("priority")) {
            None => DEFAULT_PRIORITY,
            Some(p) => p
                .as_u64()
                .filter(|&p| p <= MAX_PRIORITY)
                .map(|p| p as u32)
                .ok_or_else(|| {
                    format_error(format!(
                        "route {name}: priority must be an integer from 0 to 9"
                    ))
                })?,
        };
        let time_to_live_secs =
            match fields.and_then(|f: &Map<String, Value>| f.get("timeToLiveSecs")) {
                None => 0,
                Some(t) => t.as_u64().ok_or_else(|| {
                    format_error(format!(
                        "route {name}: timeToLiveSecs must be a non-negative integer"
                    ))
                })?,
            };
        Ok(Self {
            route: route.to_owned(),
            priority,
            time_to_live_secs,
        })
    }
}
