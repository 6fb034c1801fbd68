//! The agent: turns the `$edgeAgent` desired properties into running module instances and reports how they do.
//!
//! Three tasks share an [`Agent`]: the upstream link ([`upstream`]) receives deployments and sends reports; the
//! reconciler ([`reconcile`]) carries out a deployment's [`plan`] through the runtime; the supervisor
//! ([`Agent::supervise`]) applies restart policies with back-off ([`restart`]) and rebuilds the report
//! ([`reported`]). A deployment is validated, then saved as last-known-good ([`lkg`]) before anything acts on
//! it, so a device that boots without its hub runs the same modules at once.

pub mod image_gc;
pub mod lkg;
pub mod methods;
pub mod plan;
pub mod reconcile;
pub mod reported;
pub mod restart;
pub mod sdk_link;
pub mod upstream;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use outpost_core::{DesiredStatus, EdgeAgentDesired};
use serde_json::Value;
use tokio::sync::{watch, Mutex};

use crate::config::{DeviceCredentials, EdgeConfig};
use crate::hub_client::HubClient;
use crate::identities::IdentityCache;
use crate::runtime::ModuleRuntime;
use crate::workload::WorkloadSockets;
use lkg::{AcceptedDeployment, LastKnownGood};
use plan::DesiredModule;
use reported::{AgentReport, ModuleReport};
use restart::{BackOff, Decision, RestartRecord};

/// How often the supervisor looks at the instances.
const SUPERVISION_INTERVAL: Duration = Duration::from_secs(1);

/// How long a module gets to stop when restarted on request.
pub const RESTART_GRACE: Duration = Duration::from_secs(10);

/// Why a requested restart did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RestartModuleError {
    /// No deployed module has this name.
    #[error("module {0} is not deployed on this device")]
    NotDeployed(String),
    /// The runtime could not start it.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
}

/// Why the last-known-good deployment cannot be run at start.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Its file cannot be read.
    #[error("cannot read the last-known-good deployment: {0}")]
    Read(#[from] std::io::Error),
    /// It no longer parses as a deployment (written by another release?).
    #[error("the last-known-good deployment is invalid: {0}")]
    Invalid(#[from] outpost_core::ManifestError),
}

/// The agent's changing state. A tokio `Mutex`: the reconciler holds it across runtime calls so that a
/// deployment is applied whole before the supervisor looks again.
#[derive(Default)]
pub struct AgentState {
    /// The deployment in force, parsed.
    pub deployment: Option<EdgeAgentDesired>,
    /// Its modules, ready for the runtime.
    pub modules: Vec<DesiredModule>,
    /// The desired `$version` last handled.
    pub last_desired_version: Option<u64>,
    /// Its outcome.
    pub last_desired_status: (u16, String),
    /// Restart bookkeeping per module.
    pub restarts: BTreeMap<String, RestartRecord>,
    /// Why a module could not be created or started, per module.
    pub problems: BTreeMap<String, String>,
    /// Modules given up on after too many restarts.
    pub given_up: BTreeMap<String, bool>,
}

/// The edge agent.
pub struct Agent {
    /// The daemon's settings.
    pub config: EdgeConfig,
    /// The edge device.
    pub device: DeviceCredentials,
    /// Instances.
    pub runtime: Arc<dyn ModuleRuntime>,
    /// Module keys.
    pub identities: Arc<IdentityCache>,
    /// Module workload sockets.
    pub sockets: Arc<WorkloadSockets>,
    /// The hub's REST API, as this device.
    pub hub: HubClient,
    /// The last-known-good deployment.
    pub lkg: LastKnownGood,
    /// The images the agent pulled and when each was last used (image garbage collection).
    pub images: image_gc::ImageGc,
    /// Restart back-off.
    pub back_off: BackOff,
    /// Module starts and stops are counted here (`edgeAgent_module_start_total`...).
    pub metrics: crate::metrics::EdgeMetrics,
    /// Mutable state.
    pub state: Mutex<AgentState>,
    /// The latest reported document; the upstream link sends it when it changes.
    pub reported: watch::Sender<Value>,
    /// When the daemon started.
    pub started: DateTime<Utc>,
}

impl Agent {
    /// The names of the modules deployed now.
    pub async fn deployed_module_names(&self) -> Vec<String> {
        self.state
            .lock()
            .await
            .modules
            .iter()
            .map(|m| m.instance.name.clone())
            .collect()
    }

    /// Runs the last-known-good deployment, if there is one, without contacting the hub.
    pub async fn boot(&self) -> Result<(), BootError> {
        let Some(deployment) = self.lkg.load()? else {
            tracing::info!("no last-known-good deployment yet: waiting for the hub");
            return Ok(());
        };
        tracing::info!(
            version = deployment.version,
            "running the last-known-good deployment"
        );
        let desired = EdgeAgentDesired::from_desired(&deployment.desired)?;
        self.apply(desired, deployment.version, true).await;
        Ok(())
    }

    /// Handles the `$edgeAgent` desired properties from the hub: validates them, saves them as last-known-good,
    /// and reconciles. A refused deployment is reported and changes nothing that runs.
    pub async fn handle_desired(&self, desired: &Value) {
        let version = desired.get("$version").and_then(Value::as_u64).unwrap_or(0);
        let mut document = desired.clone();
        if let Some(object) = document.as_object_mut() {
            object.remove("$version");
            object.remove("$metadata");
        }
        {
            let state = self.state.lock().await;
            if state.last_desired_version == Some(version) && state.last_desired_status.0 == 200 {
                return;
            }
        }
        let parsed = match EdgeAgentDesired::from_desired(&document) {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::warn!(version, %error, "refused a deployment; the running modules stay as they are");
                let mut state = self.state.lock().await;
                state.last_desired_version = Some(version);
                state.last_desired_status = (error.status_code(), error.to_string());
                drop(state);
                self.refresh_report().await;
                return;
            }
        };
        if let Err(error) = self.lkg.save(&AcceptedDeployment {
            desired: document,
            version,
        }) {
            tracing::error!(%error, "cannot save the deployment as last-known-good; not applying it");
            let mut state = self.state.lock().await;
            state.last_desired_version = Some(version);
            state.last_desired_status = (500, format!("cannot persist the deployment: {error}"));
            return;
        }
        self.apply(parsed, version, false).await;
    }

    /// Looks at every instance once: restarts by policy, and rebuilds the report.
    ///
    /// The instances are listed while the state is held, never before: a list taken before a deployment that
    /// is being applied would show its new instances created but not started, which would read as `backoff`.
    pub async fn supervise(&self) {
        let now = Utc::now();
        let mut state = self.state.lock().await;
        let instances = match self.runtime.list().await {
            Ok(instances) => instances,
            Err(error) => return tracing::warn!(%error, "cannot list module instances"),
        };
        let mut restarted = false;
        let modules = state.modules.clone();
        for module in &modules {
            let name = &module.instance.name;
            if module.module.status != DesiredStatus::Running {
                continue;
            }
            let Some(instance) = instances.iter().find(|i| &i.name == name) else {
                continue;
            };
            let record = state.restarts.entry(name.clone()).or_default();
            self.back_off.settle(record, instance.started_at, now);
            let record = record.clone();
            match self.back_off.decide(
                module.module.restart_policy,
                instance.status,
                instance.exited_at,
                &record,
                now,
            ) {
                Decision::Restart => {
                    tracing::info!(module = %name, restarts = record.restart_count + 1, "restarting by policy");
                    let result = self.runtime.start(name).await;
                    if result.is_ok() {
                        self.metrics
                            .module_started(name, module.module.version.as_deref());
                    }
                    let record = state.restarts.entry(name.clone()).or_default();
                    record.restart_count += 1;
                    record.last_restart = Some(now);
                    if let Err(error) = result {
                        state.problems.insert(name.clone(), error.to_string());
                    }
                    restarted = true;
                }
                Decision::GiveUp => {
                    state.given_up.insert(name.clone(), true);
                }
                Decision::Wait { .. } | Decision::Leave => {}
            }
        }
        if restarted {
            // What was just restarted runs now: the report must not show it as it was before.
            match self.runtime.list().await {
                Ok(fresh) => self.publish_report(&state, &fresh, now),
                Err(error) => tracing::warn!(%error, "cannot list module instances"),
            }
        } else {
            self.publish_report(&state, &instances, now);
        }
    }

    /// Rebuilds the reported document from a fresh look at the runtime, taken while the state is held.
    pub async fn refresh_report(&self) {
        let state = self.state.lock().await;
        match self.runtime.list().await {
            Ok(instances) => self.publish_report(&state, &instances, Utc::now()),
            Err(error) => tracing::warn!(%error, "cannot list module instances"),
        }
    }

    fn publish_report(
        &self,
        state: &AgentState,
        instances: &[crate::runtime::InstanceState],
        now: DateTime<Utc>,
    ) {
        let mut modules = BTreeMap::new();
        for module in &state.modules {
            let name = &module.instance.name;
            let instance = instances.iter().find(|i| &i.name == name).cloned();
            let record = state.restarts.get(name).cloned().unwrap_or_default();
            let held = if state.given_up.contains_key(name) {
                Some("failed")
            } else if module.module.status == DesiredStatus::Running {
                match instance.as_ref().map(|i| {
                    self.back_off.decide(
                        module.module.restart_policy,
                        i.status,
                        i.exited_at,
                        &record,
                        now,
                    )
                }) {
                    Some(Decision::Wait { .. }) => Some("backoff"),
                    _ => None,
                }
            } else {
                None
            };
            let report = ModuleReport {
                manifest: reconcile::manifest_echo(&module.module),
                instance,
                restart_count: record.restart_count,
                last_restart: record.last_restart,
                held,
                problem: state.problems.get(name).cloned(),
            };
            modules.insert(name.clone(), report);
        }
        let report = AgentReport {
            last_desired_version: state.last_desired_version,
            last_desired_status: state.last_desired_status.clone(),
            runtime_kind: self.runtime.kind(),
            modules: &modules,
            started: self.started,
        };
        let document = report.to_json();
        self.reported.send_if_modified(|current| {
            if *current == document {
                false
            } else {
                *current = document;
                true
            }
        });
    }

    /// Restarts a deployed module on request (`outpost edge restart`, `$edgeAgent`'s `RestartModule`): stops
    /// it (killed after [`RESTART_GRACE`]) and starts it again, holding the state so that the supervisor does
    /// not step in between. Reported as `lastRestartTimeUtc`; the restart count, which drives back-off, is
    /// left alone.
    pub async fn restart_module(&self, name: &str) -> Result<(), RestartModuleError> {
        let mut state = self.state.lock().await;
        if !state.modules.iter().any(|m| m.instance.name == name) {
            return Err(RestartModuleError::NotDeployed(name.to_owned()));
        }
        if let Err(error) = self.runtime.stop(name, RESTART_GRACE).await {
            tracing::debug!(%error, "stopping before a requested restart");
        }
        self.runtime.start(name).await?;
        tracing::info!(module = name, "restarted on request");
        state
            .restarts
            .entry(name.to_owned())
            .or_default()
            .last_restart = Some(Utc::now());
        drop(state);
        self.refresh_report().await;
        Ok(())
    }

    /// Runs the supervisor until the process ends.
    pub async fn run_supervisor(self: Arc<Self>) {
        loop {
            self.supervise().await;
            tokio::time::sleep(SUPERVISION_INTERVAL).await;
        }
    }
}
