//! One device's evaluation inside a transaction: read its twins and the configurations, decide with
//! [`assign`](super::assign) what they should hold, and write only what differs.

use std::collections::BTreeMap;

use chrono::Utc;
use outpost_core::query::{Collection, Narrowing, QueryCondition};
use outpost_core::{DeploymentManifest, DeviceId, Identity, ModuleId, Twin};
use serde_json::{json, Map, Value};

use super::assign::{
    desired_patch, edge_deployment, edge_statuses, twin_paths, Assignment, Status, TwinAssignment,
    DEVICE_TWIN, EDGE_AGENT,
};
use super::configuration::{parse_target_condition, Configuration, ConfigurationKind};
use super::rollout::Rollout;
use crate::error::HubError;
use crate::eventhub::{twin_change_body, TwinChanges, TwinOperation};
use crate::identity::{DeviceRecord, ModuleRecord};
use crate::storage::Tables;
use crate::stream::Appended;
use crate::twins::{twin_json, TwinView};

/// What an evaluation changes on one device.
pub(crate) struct Plan {
    /// Desired patches by twin (`None` for the device twin).
    desired: Vec<(Option<ModuleId>, Value)>,
    /// The automatic deployment to apply to an edge device, when its stored one differs.
    manifest: Option<DeploymentManifest>,
    /// The new record of what configurations gave the device, when it differs.
    assignment: Option<Assignment>,
}

/// The desired notifications and twin change events of a committed evaluation.
pub(crate) type Written = (Vec<(Identity, Value)>, Vec<Appended>);

/// A configuration with its parsed target condition (`None` targets nothing).
pub(crate) struct Targeting {
    configuration: Configuration,
    condition: Option<QueryCondition>,
}

impl Targeting {
    /// Parses the stored configurations' target conditions, skipping (with a warning) one that no longer parses.
    pub(crate) fn parse_all(configurations: Vec<Configuration>) -> Vec<Self> {
        configurations
            .into_iter()
            .filter_map(|configuration| {
                match parse_target_condition(&configuration.target_condition, configuration.kind())
                {
                    Ok(condition) => Some(Self {
                        configuration,
                        condition,
                    }),
                    Err(error) => {
                        tracing::warn!(id = %configuration.id, %error, "configuration skipped");
                        None
                    }
                }
            })
            .collect()
    }

    /// The configuration.
    pub(crate) fn configuration(&self) -> &Configuration {
        &self.configuration
    }

    /// Whether the configuration targets the twin `document`.
    pub(crate) fn targets(&self, document: &Value) -> bool {
        self.condition.as_ref().is_some_and(|c| c.matches(document))
    }
}

/// The twin document a target condition is matched against (the REST form of the twin).
pub(crate) fn document(device: &DeviceRecord, module: Option<&ModuleRecord>, twin: &Twin) -> Value {
    twin_json(&TwinView {
        twin: twin.clone(),
        device: device.clone(),
        module: module.cloned(),
        connected: false,
        configurations: None,
    })
}

/// What an evaluation pass evaluates every device against: the configurations with their parsed target
/// conditions and the rollouts' state, read once per pass rather than once per device.
///
/// A configuration put or deleted during a pass signals a pass of its own, which reads a new snapshot; the
/// pass that used the old one may write what the old one gave, and the next one corrects it.
pub(crate) struct Snapshot {
    configurations: Vec<Targeting>,
    rollouts: BTreeMap<String, Rollout>,
}

impl Snapshot {
    /// Reads the configurations, and the rollouts when a configuration has one.
    pub(crate) fn read(tx: &mut dyn Tables) -> Result<Self, HubError> {
        let stored = tx.configurations()?;
        let rollouts = if stored.iter().any(|c| c.rollout.is_some()) {
            tx.rollouts()?
                .into_iter()
                .map(|r| (r.deployment.clone(), r))
                .collect()
        } else {
            BTreeMap::new()
        };
        Ok(Self {
            configurations: Targeting::parse_all(stored),
            rollouts,
        })
    }

    /// What the index can tell of the twins each configuration targets: the collection and narrowing of each,
    /// or `None` when one of them cannot be narrowed (then every device must be evaluated).
    pub(crate) fn narrowings(&self) -> Option<Vec<(Collection, Narrowing)>> {
        let mut found = Vec::new();
        for targeting in &self.configurations {
            let Some(condition) = &targeting.condition else {
                continue; // targets nothing
            };
            let narrowing = crate::storage::index::applied(condition.narrowing());
            if narrowing.is_empty() {
                return None;
            }
            let collection = match targeting.configuration.kind() {
                ConfigurationKind::Module => Collection::Modules,
                _ => Collection::Devices,
            };
            found.push((collection, narrowing));
        }
        Some(found)
    }

    /// The configurations that may reach `device`: a deployment rolling out reaches only the devices its
    /// rollout admits; the others keep what they had.
    fn admitted(&self, device: &DeviceId) -> Vec<&Targeting> {
        self.configurations
            .iter()
            .filter(|t| {
                t.configuration.rollout.is_none()
                    || self
                        .rollouts
                        .get(&t.configuration.id)
                        .is_some_and(|r| r.admits(device.as_str()))
            })
            .collect()
    }
}

/// Decides what the configurations of `snapshot` give `device` now; `None` when its twins hold that already.
pub(crate) fn plan(
    tx: &mut dyn Tables,
    device: &DeviceId,
    snapshot: &Snapshot,
) -> Result<Option<Plan>, HubError> {
    let Some(record) = tx.device(device)? else {
        return Ok(None);
    };
    let configurations = snapshot.admitted(device);
    let Some(previous) = tx.assignment(device)? else {
        // Nothing was given and nothing can be: the common case of a hub without configurations, decided
        // without reading the device's twins (reported properties trigger an evaluation each).
        if configurations.is_empty() {
            return Ok(None);
        }
        return plan_with(tx, device, &record, &configurations, &Assignment::default());
    };
    plan_with(tx, device, &record, &configurations, &previous)
}

/// [`plan`] once the configurations and the previous assignment are read.
fn plan_with(
    tx: &mut dyn Tables,
    device: &DeviceId,
    record: &DeviceRecord,
    configurations: &[&Targeting],
    previous: &Assignment,
) -> Result<Option<Plan>, HubError> {
    let mut next = Assignment::default();
    let mut plan = Plan {
        desired: Vec::new(),
        manifest: None,
        assignment: None,
    };
    let device_twin = tx
        .twin(device, None)?
        .unwrap_or_else(|| Twin::new(Utc::now()));
    let device_document = document(record, None, &device_twin);
    let matching = |kind: ConfigurationKind, document: &Value| -> Vec<&Configuration> {
        configurations
            .iter()
            .filter(|t| t.configuration.kind() == kind && t.targets(document))
            .map(|t| &t.configuration)
            .collect()
    };
    let targeting = matching(ConfigurationKind::Device, &device_document);
    plan_twin(
        &mut plan,
        &mut next,
        previous,
        None,
        &device_twin,
        &targeting,
    );
    for module in tx.modules(device)? {
        let twin = tx
            .twin(device, Some(&module.module_id))?
            .unwrap_or_else(|| Twin::new(Utc::now()));
        let module_document = document(record, Some(&module), &twin);
        let targeting = matching(ConfigurationKind::Module, &module_document);
        plan_twin(
            &mut plan,
            &mut next,
            previous,
            Some(&module.module_id),
            &twin,
            &targeting,
        );
    }
    if record.iot_edge {
        let mut targeting = matching(ConfigurationKind::BaseDeployment, &device_document);
        targeting.extend(matching(
            ConfigurationKind::LayeredDeployment,
            &device_document,
        ));
        let mut deployment = edge_deployment(&targeting);
        if let Some(made) = &deployment {
            let wrapped: Map<String, Value> = made
                .modules_content
                .iter()
                .map(|(module, desired)| (module.clone(), json!({ "properties.desired": desired })))
                .collect();
            match DeploymentManifest::from_json(&json!({ "modulesContent": wrapped })) {
                Ok(manifest) => {
                    let made_json = json!({ "modulesContent": made.modules_content });
                    if tx.deployment(device)?.as_ref() != Some(&made_json) {
                        plan.manifest = Some(manifest);
                    }
                }
                Err(error) => {
                    // Layers can make an invalid whole out of valid parts: the device keeps what it has.
                    tracing::warn!(%device, base = %made.base, %error, "the layered deployment is invalid");
                    deployment = None;
                }
            }
        }
        // A device that no deployment targets any more keeps its last deployment (see docs/architecture.md).
        let statuses = edge_statuses(&targeting, deployment.as_ref());
        if !statuses.is_empty() {
            next.twins
                .entry(EDGE_AGENT.to_owned())
                .or_default()
                .configurations
                .extend(statuses);
        }
        next.edge = deployment;
    }
    if next != *previous {
        plan.assignment = Some(next);
    }
    let empty = plan.desired.is_empty() && plan.manifest.is_none() && plan.assignment.is_none();
    Ok((!empty).then_some(plan))
}

/// Adds one twin's desired patch and assignment to the plan.
fn plan_twin(
    plan: &mut Plan,
    next: &mut Assignment,
    previous: &Assignment,
    module: Option<&ModuleId>,
    twin: &Twin,
    targeting: &[&Configuration],
) {
    let key = module.map_or(DEVICE_TWIN, ModuleId::as_str);
    let before = previous.twins.get(key).cloned().unwrap_or_default();
    let pairs: Vec<(&Configuration, &Map<String, Value>)> = targeting
        .iter()
        .filter_map(|c| {
            let content = match module {
                None => c.content.device_content.as_ref(),
                Some(_) => c.content.module_content.as_ref(),
            };
            content.map(|content| (*c, content))
        })
        .collect();
    let (assignment, values) = twin_paths(&pairs);
    if let Some(patch) = desired_patch(twin.desired(), &before, &values) {
        plan.desired.push((module.cloned(), patch));
    }
    if assignment != TwinAssignment::default() {
        next.twins.insert(key.to_owned(), assignment);
    }
}

/// Writes a plan inside the caller's transaction.
pub(crate) fn apply(
    tx: &mut dyn Tables,
    device: &DeviceId,
    plan: Plan,
    changes: &TwinChanges,
) -> Result<Written, HubError> {
    let mut notifications = Vec::new();
    let mut appended = Vec::new();
    let now = Utc::now();
    for (module, patch) in plan.desired {
        let mut twin = tx
            .twin(device, module.as_ref())?
            .unwrap_or_else(|| Twin::new(now));
        let body = twin.patch_desired(&patch, now).map_err(|e| {
            HubError::InvalidConfigurationContent(format!("the configured twin was refused: {e}"))
        })?;
        tx.put_twin(device, module.as_ref(), &twin)?;
        let identity = Identity {
            device: device.clone(),
            module,
        };
        let change = twin_change_body(twin.version(), None, Some(&body), None);
        appended.extend(changes.append(tx, &identity, TwinOperation::Update, &change)?);
        notifications.push((identity, body));
    }
    if let Some(manifest) = &plan.manifest {
        let (pushed, events) = crate::twins::apply_manifest(tx, device, manifest, changes)?;
        notifications.extend(pushed);
        appended.extend(events);
    }
    if let Some(assignment) = &plan.assignment {
        tx.put_assignment(device, assignment)?;
    }
    Ok((notifications, appended))
}

/// Whether a twin's assignment shows `id` with `status` (any status with `None`).
pub(crate) fn has_status(
    assignment: &Assignment,
    twin: &str,
    id: &str,
    status: Option<Status>,
) -> bool {
    assignment
        .twins
        .get(twin)
        .and_then(|t| t.configurations.get(id))
        .is_some_and(|found| status.is_none_or(|s| s == *found))
}
