//! The evaluation of automatic configurations for one device, without I/O: given the configurations that
//! target a twin, what its desired properties should be, and the patch that brings the stored twin there.
//!
//! Edge deployments: the base deployment of highest rank (priority, then newest creation) gives the whole
//! `modulesContent`; every layered deployment that targets the device is applied on top, lowest rank first, so
//! that the highest wins where two set the same path. Device and module configurations: each
//! `properties.desired.PATH` goes to the configuration of highest rank that sets it; a path that a configuration
//! gave the twin before and none gives it now is removed (set to null in the patch).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::configuration::{desired_path, Configuration, ConfigurationKind, PROPERTIES_DESIRED};

/// The key of the device twin in [`Assignment::twins`] (module twins are keyed by module id).
pub const DEVICE_TWIN: &str = "";

/// The twin whose `configurations` show an edge device's deployments, as in IoT Hub.
pub const EDGE_AGENT: &str = "$edgeAgent";

/// What automatic configurations gave one device and its modules, stored per device after each evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The automatic deployment applied to an edge device, while one targets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeDeployment>,
    /// By twin ([`DEVICE_TWIN`] or a module id): the configurations that target it and the paths they gave it.
    #[serde(default)]
    pub twins: BTreeMap<String, TwinAssignment>,
}

/// An edge device's deployment made of a base and its layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeDeployment {
    /// The base deployment's id.
    pub base: String,
    /// The layered deployments' ids, in the order they were applied.
    pub layers: Vec<String>,
    /// Module name to its desired properties, as the deployments make them.
    pub modules_content: Map<String, Value>,
}

/// What configurations gave one twin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TwinAssignment {
    /// Every configuration that targets the twin, with whether it gave it anything.
    #[serde(default)]
    pub configurations: BTreeMap<String, Status>,
    /// Each desired property path that configurations set, to the configuration that set it.
    #[serde(default)]
    pub paths: BTreeMap<String, String>,
}

/// A configuration's status on a twin (`configurations.ID.status` in twin documents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// The twin matches its target condition, but configurations of higher rank set everything it sets.
    Targeted,
    /// The twin has (some of) its content.
    Applied,
}

/// Sorts `configurations` lowest rank first (the order to apply them in, so the highest wins).
fn by_rank<'a>(
    configurations: impl IntoIterator<Item = &'a Configuration>,
) -> Vec<&'a Configuration> {
    let mut sorted: Vec<_> = configurations.into_iter().collect();
    sorted.sort_by(|a, b| a.rank().cmp(&b.rank()).then_with(|| a.id.cmp(&b.id)));
    sorted
}

/// The deployment for an edge device from the edge deployments that target it: none without a base.
pub fn edge_deployment(targeting: &[&Configuration]) -> Option<EdgeDeployment> {
    let of_kind = |kind| targeting.iter().copied().filter(move |c| c.kind() == kind);
    let base = *by_rank(of_kind(ConfigurationKind::BaseDeployment)).last()?;
    let mut modules = Map::new();
    for (module, entry) in base.content.modules_content.iter().flatten() {
        if let Some(desired) = entry.get(PROPERTIES_DESIRED) {
            modules.insert(module.clone(), desired.clone());
        }
    }
    let layers = by_rank(of_kind(ConfigurationKind::LayeredDeployment));
    for layer in &layers {
        for (module, entry) in layer.content.modules_content.iter().flatten() {
            for (key, value) in entry.as_object().into_iter().flatten() {
                if key == PROPERTIES_DESIRED {
                    modules.insert(module.clone(), value.clone());
                } else if let Some(path) = desired_path(key) {
                    let desired = modules
                        .entry(module.clone())
                        .or_insert_with(|| Value::Object(Map::new()));
                    set_path(desired, path, value.clone());
                }
            }
        }
    }
    Some(EdgeDeployment {
        base: base.id.clone(),
        layers: layers.iter().map(|l| l.id.clone()).collect(),
        modules_content: modules,
    })
}

/// The statuses of the edge deployments that target a device, given the deployment made of them.
pub fn edge_statuses(
    targeting: &[&Configuration],
    deployment: Option<&EdgeDeployment>,
) -> BTreeMap<String, Status> {
    targeting
        .iter()
        .map(|c| {
            let applied = deployment.is_some_and(|d| d.base == c.id || d.layers.contains(&c.id));
            let status = if applied {
                Status::Applied
            } else {
                Status::Targeted
            };
            (c.id.clone(), status)
        })
        .collect()
}

/// The paths configurations give one twin: `targeting` pairs each configuration with its path content
/// (`properties.desired.PATH` to value). Returns what to record and each path's value.
pub fn twin_paths(
    targeting: &[(&Configuration, &Map<String, Value>)],
) -> (TwinAssignment, BTreeMap<String, Value>) {
    let content: BTreeMap<&str, &Map<String, Value>> =
        targeting.iter().map(|(c, m)| (c.id.as_str(), *m)).collect();
    let mut values = BTreeMap::new();
    let mut assignment = TwinAssignment::default();
    for configuration in by_rank(targeting.iter().map(|(c, _)| *c)) {
        for (key, value) in content[configuration.id.as_str()] {
            if let Some(path) = desired_path(key) {
                values.insert(path.to_owned(), value.clone());
                assignment
                    .paths
                    .insert(path.to_owned(), configuration.id.clone());
            }
        }
    }
    for (configuration, _) in targeting {
        let applied = assignment.paths.values().any(|id| *id == configuration.id);
        let status = if applied {
            Status::Applied
        } else {
            Status::Targeted
        };
        assignment
            .configurations
            .insert(configuration.id.clone(), status);
    }
    (assignment, values)
}

/// The desired patch that brings `current` to the configurations' `values`, removing the paths `previous`
/// gave the twin that no configuration gives it now; `None` when the twin is there already (so that an
/// evaluation that finds nothing to do writes nothing, whichever replica runs it).
pub fn desired_patch(
    current: &Map<String, Value>,
    previous: &TwinAssignment,
    values: &BTreeMap<String, Value>,
) -> Option<Value> {
    let mut patch = Value::Object(Map::new());
    let mut changed = false;
    for path in previous.paths.keys() {
        let still_given = values
            .keys()
            .any(|given| given == path || path.starts_with(&format!("{given}.")));
        if !still_given && get_path(current, path).is_some() {
            set_path(&mut patch, path, Value::Null);
            changed = true;
        }
    }
    for (path, value) in values {
        if get_path(current, path) != Some(value) {
            set_path(&mut patch, path, value.clone());
            changed = true;
        }
    }
    changed.then_some(patch)
}

/// The value at a dotted path of an object.
pub fn get_path<'a>(object: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut segments = path.split('.');
    let mut value = object.get(segments.next()?)?;
    for segment in segments {
        value = value.as_object()?.get(segment)?;
    }
    Some(value)
}

/// Sets the value at a dotted path, making objects of what lies on the way.
pub fn set_path(target: &mut Value, path: &str, value: Value) {
    let mut node = target;
    for segment in path.split('.') {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(object) = node else {
            return;
        };
        node = object.entry(segment.to_owned()).or_insert(Value::Null);
    }
    *node = value;
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    use super::*;
    use crate::fleet::configuration::ConfigurationContent;

    fn configuration(id: &str, priority: i64, created: i64, content: Value) -> Configuration {
        Configuration {
            id: id.into(),
            schema_version: "1.0".into(),
            labels: BTreeMap::new(),
            content: serde_json::from_value::<ConfigurationContent>(content).unwrap(),
            target_condition: "*".into(),
            created_time_utc: Utc.timestamp_opt(created, 0).unwrap(),
            last_updated_time_utc: Utc.timestamp_opt(created, 0).unwrap(),
            priority,
            metric_queries: BTreeMap::new(),
            version: 1,
            rollout: None,
        }
    }

    fn base(id: &str, priority: i64, created: i64, image: &str) -> Configuration {
        configuration(
            id,
            priority,
            created,
            json!({"modulesContent": {
                "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": {"a": {"image": image}}}},
                "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {}}},
            }}),
        )
    }

    fn layer(id: &str, priority: i64, created: i64, image: &str) -> Configuration {
        configuration(
            id,
            priority,
            created,
            json!({"modulesContent": {
                "$edgeAgent": {"properties.desired.modules.extra": {"image": image}},
                "extra": {"properties.desired": {"from": id}},
            }}),
        )
    }

    fn device(id: &str, priority: i64, created: i64, content: &Value) -> Configuration {
        configuration(
            id,
            priority,
            created,
            json!({ "deviceContent": content.clone() }),
        )
    }

    fn agent_image(deployment: &EdgeDeployment, module: &str) -> Value {
        deployment.modules_content["$edgeAgent"]["modules"][module]["image"].clone()
    }

    #[test]
    fn the_base_deployment_of_highest_priority_wins() {
        let (low, high) = (base("low", 1, 10, "low"), base("high", 5, 1, "high"));
        let deployment = edge_deployment(&[&low, &high]).unwrap();
        assert_eq!(deployment.base, "high");
        assert_eq!(agent_image(&deployment, "a"), json!("high"));
    }

    #[test]
    fn equal_priorities_go_to_the_newest_base_deployment() {
        let (old, new) = (base("old", 3, 10, "old"), base("new", 3, 20, "new"));
        let deployment = edge_deployment(&[&new, &old]).unwrap();
        assert_eq!(deployment.base, "new");
        let statuses = edge_statuses(&[&old, &new], Some(&deployment));
        assert_eq!(statuses["old"], Status::Targeted);
        assert_eq!(statuses["new"], Status::Applied);
    }

    #[test]
    fn layered_deployments_apply_on_top_of_the_base_in_priority_order() {
        let b = base("base", 100, 1, "base");
        let (low, high) = (layer("low", 1, 5, "low"), layer("high", 2, 3, "high"));
        let deployment = edge_deployment(&[&high, &b, &low]).unwrap();
        assert_eq!(deployment.layers, ["low", "high"]);
        assert_eq!(agent_image(&deployment, "a"), json!("base"));
        assert_eq!(agent_image(&deployment, "extra"), json!("high"));
        assert_eq!(deployment.modules_content["extra"], json!({"from": "high"}));
        assert_eq!(
            deployment.modules_content["$edgeHub"],
            json!({"schemaVersion": "1.1", "routes": {}})
        );
    }

    #[test]
    fn layered_deployments_without_a_base_give_nothing() {
        let l = layer("layer", 1, 1, "x");
        assert_eq!(edge_deployment(&[&l]), None);
        assert_eq!(edge_statuses(&[&l], None)["layer"], Status::Targeted);
    }

    #[test]
    fn the_highest_priority_device_configuration_wins_each_path() {
        let low = device(
            "low",
            1,
            1,
            &json!({"properties.desired.a": 1, "properties.desired.b": 1}),
        );
        let high = device("high", 9, 1, &json!({"properties.desired.a": 9}));
        let targeting = [
            (&low, low.content.device_content.as_ref().unwrap()),
            (&high, high.content.device_content.as_ref().unwrap()),
        ];
        let (assignment, values) = twin_paths(&targeting);
        assert_eq!(values["a"], json!(9));
        assert_eq!(values["b"], json!(1));
        assert_eq!(assignment.paths["a"], "high");
        assert_eq!(assignment.configurations["low"], Status::Applied);
        assert_eq!(assignment.configurations["high"], Status::Applied);
        let patch = desired_patch(&Map::new(), &TwinAssignment::default(), &values).unwrap();
        assert_eq!(patch, json!({"a": 9, "b": 1}));
    }

    #[test]
    fn a_configuration_overridden_everywhere_is_only_targeted() {
        let low = device("low", 1, 1, &json!({"properties.desired.a.b": 1}));
        let high = device("high", 2, 1, &json!({"properties.desired.a.b": 2}));
        let targeting = [
            (&low, low.content.device_content.as_ref().unwrap()),
            (&high, high.content.device_content.as_ref().unwrap()),
        ];
        let (assignment, values) = twin_paths(&targeting);
        assert_eq!(assignment.configurations["low"], Status::Targeted);
        let patch = desired_patch(&Map::new(), &TwinAssignment::default(), &values).unwrap();
        assert_eq!(patch, json!({"a": {"b": 2}}));
    }

    #[test]
    fn a_twin_that_stops_matching_loses_the_paths_it_was_given() {
        let c = device("c", 1, 1, &json!({"properties.desired.a.b": 1}));
        let (before, values) = twin_paths(&[(&c, c.content.device_content.as_ref().unwrap())]);
        let current = json!({"a": {"b": 1}, "mine": true});
        let current = current.as_object().unwrap();
        assert_eq!(desired_patch(current, &before, &values), None);
        let (after, values) = twin_paths(&[]);
        assert!(after.configurations.is_empty());
        assert_eq!(
            desired_patch(current, &before, &values),
            Some(json!({"a": {"b": null}}))
        );
    }

    #[test]
    fn a_twin_already_as_configured_needs_no_patch() {
        let values = BTreeMap::from([("x.y".to_owned(), json!([1, 2]))]);
        let current = json!({"x": {"y": [1, 2], "z": 0}});
        assert_eq!(
            desired_patch(
                current.as_object().unwrap(),
                &TwinAssignment::default(),
                &values
            ),
            None
        );
    }
}
