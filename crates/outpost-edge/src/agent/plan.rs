//! The reconciler's plan: the difference between the deployment and what runs, as steps. Pure: the agent
//! carries the steps out through a runtime.

use std::collections::BTreeMap;

use outpost_core::DesiredStatus;

use crate::runtime::{InstanceSpec, InstanceState, InstanceStatus};

/// One module of the deployment, ready for a runtime.
#[derive(Debug, Clone)]
pub struct DesiredModule {
    /// The manifest's view of it.
    pub module: outpost_core::ModuleSpec,
    /// The runtime's view of it.
    pub instance: InstanceSpec,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Stop and remove an instance the deployment no longer has, and delete its identity.
    Remove(String),
    /// Create (and start, if it should run) a new instance.
    Create(String),
    /// Remove the instance and create it anew: its spec changed.
    Recreate(String),
    /// Start an instance that should run and is stopped (at boot: whatever its policy).
    Start(String),
    /// Stop an instance whose desired status is `stopped`.
    Stop(String),
}

/// Plans the steps from `running` to `desired` (in startup order, removals first). An instance whose spec
/// digest is unchanged is never touched, except that at `boot` every instance that should run and does not is
/// started: the daemon brings the last-known-good deployment back whatever the restart policies say.
pub fn plan(desired: &[DesiredModule], running: &[InstanceState], boot: bool) -> Vec<Step> {
    let wanted: BTreeMap<&str, &DesiredModule> = desired
        .iter()
        .map(|d| (d.instance.name.as_str(), d))
        .collect();
    let mut steps: Vec<Step> = running
        .iter()
        .filter(|instance| !wanted.contains_key(instance.name.as_str()))
        .map(|instance| Step::Remove(instance.name.clone()))
        .collect();
    let mut ordered: Vec<&DesiredModule> = desired.iter().collect();
    ordered.sort_by_key(|d| (d.module.startup_order, d.instance.name.clone()));
    for module in ordered {
        let name = module.instance.name.clone();
        let should_run = module.module.status == DesiredStatus::Running;
        match running.iter().find(|instance| instance.name == name) {
            None => steps.push(Step::Create(name)),
            Some(instance) if instance.digest != module.instance.digest => {
                steps.push(Step::Recreate(name));
            }
            Some(instance) if !should_run && instance.status == InstanceStatus::Running => {
                steps.push(Step::Stop(name));
            }
            Some(instance) if boot && should_run && instance.status != InstanceStatus::Running => {
                steps.push(Step::Start(name));
            }
            Some(_) => {}
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn desired(name: &str, digest: &str, order: u32, status: &str) -> DesiredModule {
        let manifest = json!({"version": "1.0", "type": "docker", "status": status, "restartPolicy": "always",
                              "startupOrder": order, "settings": {"image": "img:1", "createOptions": "{}"}});
        let agent = json!({"schemaVersion": "1.1", "runtime": {"type": "docker", "settings": {}},
            "systemModules": {"edgeAgent": {"type": "docker", "settings": {"image": "a", "createOptions": "{}"}},
                              "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always", "settings": {"image": "h", "createOptions": "{}"}}},
            "modules": {name: manifest}});
        let module = outpost_core::EdgeAgentDesired::from_desired(&agent)
            .unwrap()
            .modules
            .remove(name)
            .unwrap();
        let instance = InstanceSpec {
            name: name.to_owned(),
            image: "img:1".into(),
            executable: None,
            args: Vec::new(),
            create_options: None,
            env: BTreeMap::new(),
            workload_socket: "/tmp/x.sock".into(),
            gateway_hostname: "edge".into(),
            digest: digest.to_owned(),
        };
        DesiredModule { module, instance }
    }

    fn state(name: &str, digest: &str, status: InstanceStatus) -> InstanceState {
        InstanceState {
            name: name.to_owned(),
            digest: digest.to_owned(),
            status,
            exit_code: None,
            started_at: None,
            exited_at: None,
            image: "img:1".into(),
            image_id: None,
        }
    }

    #[test]
    fn new_modules_are_created_in_startup_order_and_removed_ones_go_first() {
        let steps = plan(
            &[
                desired("b", "1", 2, "running"),
                desired("a", "1", 1, "running"),
            ],
            &[state("old", "1", InstanceStatus::Running)],
            false,
        );
        assert_eq!(
            steps,
            [
                Step::Remove("old".into()),
                Step::Create("a".into()),
                Step::Create("b".into())
            ]
        );
    }

    #[test]
    fn only_a_changed_module_is_recreated() {
        let steps = plan(
            &[
                desired("a", "1", 1, "running"),
                desired("b", "2", 1, "running"),
            ],
            &[
                state("a", "1", InstanceStatus::Running),
                state("b", "1", InstanceStatus::Running),
            ],
            false,
        );
        assert_eq!(steps, [Step::Recreate("b".into())]);
    }

    #[test]
    fn an_unchanged_stopped_module_is_left_to_its_policy_except_at_boot() {
        let wanted = [desired("a", "1", 1, "running")];
        let running = [state("a", "1", InstanceStatus::Stopped)];
        assert!(plan(&wanted, &running, false).is_empty());
        assert_eq!(plan(&wanted, &running, true), [Step::Start("a".into())]);
    }

    #[test]
    fn a_module_desired_stopped_is_stopped() {
        let steps = plan(
            &[desired("a", "1", 1, "stopped")],
            &[state("a", "1", InstanceStatus::Running)],
            false,
        );
        assert_eq!(steps, [Step::Stop("a".into())]);
    }
}
