//! The `$edgeAgent` reported properties (AZURE-COMPAT §5.3): what the deployment asked, how it went, and the
//! state of every module.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::runtime::{InstanceState, InstanceStatus};

/// The agent's view of one module, for reporting.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleReport {
    /// What the manifest says of it (`version`, `type`, `status`, `restartPolicy`, `imagePullPolicy`,
    /// `settings`, `env`), echoed back as Azure's agent does.
    pub manifest: Value,
    /// Its instance, if one exists.
    pub instance: Option<InstanceState>,
    /// Restarts so far.
    pub restart_count: u32,
    /// When the agent last restarted it.
    pub last_restart: Option<DateTime<Utc>>,
    /// `backoff` or `failed` when the supervisor holds it, else the instance's own status.
    pub held: Option<&'static str>,
    /// Why it is not running, when the agent knows (pull or create errors).
    pub problem: Option<String>,
}

/// .NET round-trip time without the `Z`, as Azure's agent writes it.
fn dotnet_time(time: DateTime<Utc>) -> String {
    // chrono prints 3, 6 or 9 fraction digits; .NET's round-trip format has 7.
    let mut text = time.format("%Y-%m-%dT%H:%M:%S%.9f").to_string();
    text.truncate(text.len() - 2);
    text
}

/// The reported status name of an instance's state.
pub fn status_name(status: InstanceStatus) -> &'static str {
    match status {
        InstanceStatus::Running => "running",
        InstanceStatus::Stopped => "stopped",
        InstanceStatus::Failed => "failed",
        InstanceStatus::Dead => "dead",
    }
}

impl ModuleReport {
    /// The reported JSON of this module.
    pub fn to_json(&self) -> Value {
        let mut json = self.manifest.as_object().cloned().unwrap_or_default();
        let status = self.held.unwrap_or_else(|| {
            self.instance
                .as_ref()
                .map_or("unknown", |i| status_name(i.status))
        });
        json.insert("runtimeStatus".into(), status.into());
        let description = match (&self.problem, &self.instance) {
            (Some(problem), _) => problem.clone(),
            (None, Some(instance)) if instance.status != InstanceStatus::Running => {
                format!("{status} (exit code {})", instance.exit_code.unwrap_or(0))
            }
            _ => status.to_owned(),
        };
        json.insert("statusDescription".into(), description.into());
        json.insert("restartCount".into(), self.restart_count.into());
        if let Some(instance) = &self.instance {
            json.insert("exitCode".into(), instance.exit_code.unwrap_or(0).into());
            if let Some(started) = instance.started_at {
                json.insert("lastStartTimeUtc".into(), dotnet_time(started).into());
            }
            if let Some(exited) = instance.exited_at {
                json.insert("lastExitTimeUtc".into(), dotnet_time(exited).into());
            }
            if let (Some(id), Some(settings)) = (
                &instance.image_id,
                json.get_mut("settings").and_then(Value::as_object_mut),
            ) {
                settings.insert("imageHash".into(), id.clone().into());
            }
        }
        if let Some(restarted) = self.last_restart {
            json.insert("lastRestartTimeUtc".into(), dotnet_time(restarted).into());
        }
        Value::Object(json)
    }
}

/// The whole reported document.
pub struct AgentReport<'a> {
    /// The desired `$version` last handled.
    pub last_desired_version: Option<u64>,
    /// Its outcome: 200, or the refusal code (400, 412, 417, 500) with a description.
    pub last_desired_status: (u16, String),
    /// The runtime's kind (`docker` or `process`).
    pub runtime_kind: &'a str,
    /// The user modules.
    pub modules: &'a BTreeMap<String, ModuleReport>,
    /// When the daemon started (the system modules run inside it).
    pub started: DateTime<Utc>,
}

impl AgentReport<'_> {
    /// The reported JSON (the upstream link sends its [`reported_diff`] from what the hub holds).
    pub fn to_json(&self) -> Value {
        let mut modules = Map::new();
        for (name, module) in self.modules {
            modules.insert(name.clone(), module.to_json());
        }
        let system = |kind: &str| {
            json!({"type": self.runtime_kind, "runtimeStatus": "running", "status": "running", "restartPolicy": "always",
                   "exitCode": 0, "statusDescription": format!("running inside outpost edge ({kind})"),
                   "lastStartTimeUtc": dotnet_time(self.started), "restartCount": 0})
        };
        json!({
            "schemaVersion": "1.0",
            "version": {"version": env!("CARGO_PKG_VERSION"), "build": "outpost", "commit": ""},
            "lastDesiredVersion": self.last_desired_version,
            "lastDesiredStatus": {"code": self.last_desired_status.0, "description": self.last_desired_status.1},
            "runtime": {"platform": {"os": std::env::consts::OS, "architecture": std::env::consts::ARCH,
                                     "version": env!("CARGO_PKG_VERSION")},
                        "type": self.runtime_kind},
            "systemModules": {"edgeAgent": system("agent"), "edgeHub": system("edge hub")},
            "modules": modules,
        })
    }
}

/// The merge patch that takes reported properties from `current` (as the twin holds them, or as last
/// acknowledged) to `next`: what changed, `null` for what is gone, nothing for what is equal (an empty object
/// when nothing changed). Keys starting with `$` (`$version`, `$metadata`) are the twin's own and never
/// deleted; a key absent on one side equals a `null` on the other, as a merge patch reads it.
pub fn reported_diff(current: &Value, next: &Value) -> Value {
    let (Some(current), Some(next)) = (current.as_object(), next.as_object()) else {
        return next.clone();
    };
    let mut patch = Map::new();
    for (key, value) in current {
        if !key.starts_with('$') && !value.is_null() && next.get(key).is_none_or(Value::is_null) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    for (key, value) in next {
        let old = current.get(key).unwrap_or(&Value::Null);
        if value == old || value.is_null() {
            continue;
        }
        if value.is_object() && old.is_object() {
            let nested = reported_diff(old, value);
            if nested.as_object().is_some_and(Map::is_empty) {
                continue;
            }
            patch.insert(key.clone(), nested);
        } else {
            patch.insert(key.clone(), value.clone());
        }
    }
    Value::Object(patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_the_twin_still_holds_but_the_report_lacks_is_deleted_with_null() {
        let twin = json!({"modules": {"a": {"runtimeStatus": "running"}, "b": {"runtimeStatus": "running"}},
                          "lastDesiredVersion": 3, "$version": 9});
        let next = json!({"modules": {"a": {"runtimeStatus": "running"}}, "lastDesiredVersion": 4});
        assert_eq!(
            reported_diff(&twin, &next),
            json!({"modules": {"b": null}, "lastDesiredVersion": 4})
        );
    }

    #[test]
    fn a_report_equal_to_the_twin_is_an_empty_patch() {
        let twin =
            json!({"modules": {"a": {"x": [1, 2]}}, "lastDesiredVersion": null, "$metadata": {}});
        let next = json!({"modules": {"a": {"x": [1, 2]}}, "lastDesiredVersion": null});
        assert_eq!(reported_diff(&twin, &next), json!({}));
    }

    #[test]
    fn a_changed_field_is_sent_alone_and_a_new_module_whole() {
        let twin = json!({"modules": {"a": {"runtimeStatus": "running", "restartCount": 0}}});
        let next = json!({"modules": {"a": {"runtimeStatus": "failed", "restartCount": 0}, "b": {"x": 1}}});
        assert_eq!(
            reported_diff(&twin, &next),
            json!({"modules": {"a": {"runtimeStatus": "failed"}, "b": {"x": 1}}})
        );
    }

    #[test]
    fn an_empty_twin_gets_the_whole_report() {
        let next = json!({"modules": {"a": {}}, "schemaVersion": "1.0"});
        assert_eq!(reported_diff(&json!({}), &next), next);
    }

    #[test]
    fn the_twins_own_dollar_keys_are_never_deleted() {
        let twin = json!({"$version": 4, "$metadata": {"$lastUpdated": "t"}, "gone": 1});
        assert_eq!(reported_diff(&twin, &json!({})), json!({"gone": null}));
    }

    #[test]
    fn a_running_module_reports_its_status_times_and_image_hash() {
        let started = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let report = ModuleReport {
            manifest: json!({"version": "1.0", "type": "docker", "settings": {"image": "img:1"}}),
            instance: Some(InstanceState {
                name: "m".into(),
                digest: "d".into(),
                status: InstanceStatus::Running,
                exit_code: None,
                started_at: Some(started),
                exited_at: None,
                image: "img:1".into(),
                image_id: Some("sha256:abc".into()),
            }),
            restart_count: 2,
            last_restart: None,
            held: None,
            problem: None,
        };
        let json = report.to_json();
        assert_eq!(json["runtimeStatus"], "running");
        assert_eq!(json["restartCount"], 2);
        assert_eq!(json["lastStartTimeUtc"], "2023-11-14T22:13:20.0000000");
        assert_eq!(json["settings"]["imageHash"], "sha256:abc");
        assert_eq!(json["version"], "1.0");
    }

    #[test]
    fn a_module_held_in_back_off_reports_backoff() {
        let report = ModuleReport {
            manifest: json!({}),
            instance: None,
            restart_count: 1,
            last_restart: None,
            held: Some("backoff"),
            problem: None,
        };
        assert_eq!(report.to_json()["runtimeStatus"], "backoff");
    }
}
