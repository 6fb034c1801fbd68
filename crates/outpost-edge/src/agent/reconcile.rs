//! Carrying out a deployment: module identities, workload sockets, instance specs and the plan's steps.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_core::{DesiredStatus, EdgeAgentDesired, ImagePullPolicy, ModuleSpec};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::plan::{plan, DesiredModule, Step};
use super::Agent;
use crate::hub_client::HubClientError;
use crate::identities::ModuleCredentials;
use crate::runtime::{ImageOrigin, InstanceSpec, RegistryCredential};
use crate::workload::CONTAINER_SOCKET;

/// How long a stopping instance gets before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Why a module has no identity to run with: it stays as it is and the reason is reported.
#[derive(Debug, thiserror::Error)]
pub enum ModuleIdentityError {
    /// The hub refused to read or create it.
    #[error("cannot create the identity of module {module}: {source}")]
    Create {
        /// The module.
        module: String,
        /// Why.
        source: HubClientError,
    },
    /// The hub has not been reached since the module was deployed, and nothing is cached.
    #[error("module {0} has no identity yet (the hub has not been reached)")]
    NotYetKnown(String),
}

/// What the reported properties echo of a module's manifest entry.
pub fn manifest_echo(module: &ModuleSpec) -> Value {
    let env: BTreeMap<&str, Value> = module
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), json!({"value": v})))
        .collect();
    json!({
        "version": module.version,
        "type": module.kind,
        "status": module.status.as_str(),
        "restartPolicy": module.restart_policy.as_str(),
        "imagePullPolicy": module.image_pull_policy.as_str(),
        "startupOrder": module.startup_order,
        "settings": module.settings,
        "env": env,
    })
}

/// The registry credentials of the manifest's `runtime.settings.registryCredentials`.
fn registry_credentials(desired: &EdgeAgentDesired) -> Vec<RegistryCredential> {
    let Some(entries) = desired
        .runtime
        .pointer("/settings/registryCredentials")
        .and_then(Value::as_object)
    else {
        return Vec::new();
    };
    entries
        .values()
        .filter_map(|entry| {
            let text = |key: &str| entry.get(key).and_then(Value::as_str).map(str::to_owned);
            Some(RegistryCredential {
                address: text("address")?,
                username: text("username")?,
                password: text("password")?,
            })
        })
        .collect()
}

impl Agent {
    /// The environment of a module instance: the deployment's `env` first, then the `IOTEDGE_*` variables the
    /// Azure SDK reads (AZURE-COMPAT §6.1) where the deployment did not set them.
    fn module_environment(
        &self,
        name: &str,
        module: &ModuleSpec,
        credentials: &ModuleCredentials,
        socket: &Path,
    ) -> BTreeMap<String, String> {
        let mut env = module.env.clone();
        let workload_uri = if module.kind == "process" {
            format!("unix://{}", socket.display())
        } else {
            format!("unix://{CONTAINER_SOCKET}")
        };
        let ours = [
            ("IOTEDGE_WORKLOADURI", workload_uri),
            ("IOTEDGE_AUTHSCHEME", "sasToken".to_owned()),
            (
                "IOTEDGE_MODULEGENERATIONID",
                credentials.generation_id.clone(),
            ),
            ("IOTEDGE_IOTHUBHOSTNAME", self.device.hub_hostname.clone()),
            ("IOTEDGE_GATEWAYHOSTNAME", self.config.hostname.clone()),
            ("IOTEDGE_DEVICEID", self.device.device_id.clone()),
            ("IOTEDGE_MODULEID", name.to_owned()),
            (
                "IOTEDGE_APIVERSION",
                outpost_core::workload_api::ApiVersion::CURRENT.to_string(),
            ),
            ("RuntimeLogLevel", "info".to_owned()),
        ];
        for (key, value) in ours {
            env.entry(key.to_owned()).or_insert(value);
        }
        env
    }

    fn instance_spec(
        &self,
        name: &str,
        module: &ModuleSpec,
        credentials: &ModuleCredentials,
        socket: PathBuf,
    ) -> InstanceSpec {
        let env = self.module_environment(name, module, credentials, &socket);
        let executable = (module.kind == "process")
            .then(|| {
                module
                    .settings
                    .get("path")
                    .and_then(Value::as_str)
                    .map(PathBuf::from)
            })
            .flatten();
        let args = module
            .settings
            .get("args")
            .and_then(Value::as_array)
            .map(|args| {
                args.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        // Only what shapes the instance counts: a new restart policy or startup order recreates nothing.
        let shape = json!({
            "kind": module.kind, "version": module.version, "image": module.image, "createOptions": module.create_options,
            "settings": module.settings, "env": env, "generation": credentials.generation_id,
        });
        let digest = format!("{:x}", Sha256::digest(shape.to_string().as_bytes()));
        InstanceSpec {
            name: name.to_owned(),
            image: if module.kind == "process" {
                module
                    .settings
                    .get("path")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            } else {
                module.image.clone()
            },
            executable,
            args,
            create_options: module.create_options.clone(),
            env,
            workload_socket: socket,
            gateway_hostname: self.config.hostname.clone(),
            digest,
        }
    }

    /// A module's identity: from the hub when it answers (creating it if needed), else from the cache.
    async fn module_identity(
        &self,
        name: &str,
        offline: bool,
    ) -> Result<ModuleCredentials, ModuleIdentityError> {
        if !offline {
            match self.hub.ensure_module(name).await {
                Ok(credentials) => {
                    if let Err(error) = self.identities.put(credentials.clone()) {
                        tracing::error!(module = name, %error, "cannot cache the module identity");
                    }
                    return Ok(credentials);
                }
                Err(error @ (HubClientError::Unreachable(_) | HubClientError::Malformed(_))) => {
                    tracing::info!(module = name, %error, "hub unreachable: using the cached identity");
                }
                Err(source) => {
                    return Err(ModuleIdentityError::Create {
                        module: name.to_owned(),
                        source,
                    })
                }
            }
        }
        self.identities
            .get(name)
            .ok_or_else(|| ModuleIdentityError::NotYetKnown(name.to_owned()))
    }

    /// Applies a deployment: `boot` means the hub is not consulted and every instance that should run is started.
    pub async fn apply(&self, desired: EdgeAgentDesired, version: u64, boot: bool) {
        // Before anything acts on it: image garbage collection must not remove what it is about to use.
        self.images
            .deploying(super::image_gc::images_of(&desired))
            .await;
        let mut state = self.state.lock().await;
        let mut problems = BTreeMap::new();
        let mut modules = Vec::new();
        for (name, module) in &desired.modules {
            let credentials = match self.module_identity(name, boot).await {
                Ok(credentials) => credentials,
                Err(problem) => {
                    problems.insert(name.clone(), problem.to_string());
                    continue;
                }
            };
            match self.sockets.ensure(name) {
                Ok(socket) => modules.push(DesiredModule {
                    module: module.clone(),
                    instance: self.instance_spec(name, module, &credentials, socket),
                }),
                Err(error) => {
                    problems.insert(
                        name.clone(),
                        format!("cannot open the workload socket of {name}: {error}"),
                    );
                }
            }
        }
        let running = match self.runtime.list().await {
            Ok(running) => running,
            Err(error) => {
                tracing::error!(%error, "cannot list instances; the deployment waits for the next look");
                state.last_desired_version = Some(version);
                state.last_desired_status = (500, error.to_string());
                return;
            }
        };
        // A deployed module whose identity or socket is missing keeps its instance until that is resolved.
        let deployed: BTreeSet<&str> = desired.modules.keys().map(String::as_str).collect();
        let steps: Vec<Step> = plan(&modules, &running, boot)
            .into_iter()
            .filter(|step| !matches!(step, Step::Remove(name) if deployed.contains(name.as_str())))
            .collect();
        let credentials = registry_credentials(&desired);
        for step in steps {
            tracing::info!(?step, "reconciling");
            if let Err((name, problem)) = self.execute(&step, &modules, &credentials, boot).await {
                tracing::warn!(module = %name, %problem, "a deployment step failed");
                problems.insert(name, problem);
            }
            if let Step::Remove(name) | Step::Recreate(name) = &step {
                state.restarts.remove(name);
                state.given_up.remove(name);
            }
        }
        state.deployment = Some(desired);
        state.modules = modules;
        state.last_desired_version = Some(version);
        state.last_desired_status = (200, String::new());
        state.problems = problems;
        drop(state);
        self.refresh_report().await;
    }

    async fn execute(
        &self,
        step: &Step,
        modules: &[DesiredModule],
        credentials: &[RegistryCredential],
        boot: bool,
    ) -> Result<(), (String, String)> {
        let find = |name: &str| modules.iter().find(|m| m.instance.name == name);
        match step {
            Step::Remove(name) => {
                self.runtime
                    .remove(name)
                    .await
                    .map_err(|e| (name.clone(), e.to_string()))?;
                self.sockets.remove(name);
                if let Err(error) = self.hub.delete_module(name).await {
                    tracing::warn!(module = %name, %error, "cannot delete the module identity in the hub");
                }
                if let Err(error) = self.identities.remove(name) {
                    tracing::warn!(module = %name, %error, "cannot forget the cached module identity");
                }
                Ok(())
            }
            Step::Create(name) | Step::Recreate(name) => {
                let Some(module) = find(name) else {
                    return Ok(());
                };
                if matches!(step, Step::Recreate(_)) {
                    self.runtime
                        .remove(name)
                        .await
                        .map_err(|e| (name.clone(), e.to_string()))?;
                }
                if module.module.image_pull_policy == ImagePullPolicy::OnCreate {
                    // At boot only a missing image is pulled: an offline device runs what it has.
                    match self
                        .runtime
                        .pull(&module.instance, credentials, !boot)
                        .await
                    {
                        Ok(ImageOrigin::Pulled) => self.images.pulled(&module.instance.image).await,
                        Ok(ImageOrigin::AlreadyPresent) => {}
                        Err(error) => {
                            tracing::warn!(module = %name, %error, "pull failed; creating from the local image if there is one");
                        }
                    }
                }
                self.runtime
                    .create(&module.instance)
                    .await
                    .map_err(|e| (name.clone(), e.to_string()))?;
                if module.module.status == DesiredStatus::Running {
                    self.runtime
                        .start(name)
                        .await
                        .map_err(|e| (name.clone(), e.to_string()))?;
                    self.metrics
                        .module_started(name, module.module.version.as_deref());
                }
                Ok(())
            }
            Step::Start(name) => {
                self.runtime
                    .start(name)
                    .await
                    .map_err(|e| (name.clone(), e.to_string()))?;
                let version = find(name).and_then(|m| m.module.version.as_deref());
                self.metrics.module_started(name, version);
                Ok(())
            }
            Step::Stop(name) => {
                self.runtime
                    .stop(name, STOP_GRACE)
                    .await
                    .map_err(|e| (name.clone(), e.to_string()))?;
                let version = find(name).and_then(|m| m.module.version.as_deref());
                self.metrics.module_stopped(name, version);
                Ok(())
            }
        }
    }
}
