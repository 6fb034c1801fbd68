//! One runtime over two: container modules go to Docker, `process` modules to native processes, so a single
//! deployment may hold both.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{
    ImageOrigin, ImageRemoval, InstanceSpec, InstanceState, ModuleRuntime, RegistryCredential,
    RuntimeError,
};

/// Docker (when the device has it) and processes, behind one [`ModuleRuntime`].
pub struct CombinedRuntime {
    containers: Option<Arc<dyn ModuleRuntime>>,
    processes: Arc<dyn ModuleRuntime>,
    /// Which runtime holds which instance, as last listed or created. A std `Mutex`: never held across `.await`.
    owners: Mutex<BTreeMap<String, bool>>,
}

impl CombinedRuntime {
    /// Containers go to `containers` (none on a device without an engine), processes to `processes`.
    pub fn new(
        containers: Option<Arc<dyn ModuleRuntime>>,
        processes: Arc<dyn ModuleRuntime>,
    ) -> Self {
        Self {
            containers,
            processes,
            owners: Mutex::new(BTreeMap::new()),
        }
    }

    fn remember(&self, name: &str, is_process: bool) {
        self.owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned(), is_process);
    }

    fn for_spec(&self, spec: &InstanceSpec) -> Result<&Arc<dyn ModuleRuntime>, RuntimeError> {
        if spec.executable.is_some() {
            return Ok(&self.processes);
        }
        self.containers.as_ref().ok_or_else(|| {
            RuntimeError::new(
                "create",
                &spec.name,
                "this device runs no container engine; deploy it as a process module",
            )
        })
    }

    /// The runtime that holds `name` (asking both when it is not known yet).
    async fn owner(&self, name: &str) -> &Arc<dyn ModuleRuntime> {
        let known = self
            .owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .copied();
        match (known, &self.containers) {
            (Some(false), Some(containers)) => containers,
            (None, Some(containers)) => {
                if let Ok(list) = containers.list().await {
                    if list.iter().any(|i| i.name == name) {
                        self.remember(name, false);
                        return containers;
                    }
                }
                &self.processes
            }
            _ => &self.processes,
        }
    }
}

#[async_trait]
impl ModuleRuntime for CombinedRuntime {
    fn kind(&self) -> &'static str {
        self.containers.as_ref().map_or("process", |c| c.kind())
    }

    async fn pull(
        &self,
        spec: &InstanceSpec,
        credentials: &[RegistryCredential],
        always: bool,
    ) -> Result<ImageOrigin, RuntimeError> {
        self.for_spec(spec)?.pull(spec, credentials, always).await
    }

    async fn remove_image(&self, reference: &str) -> Result<ImageRemoval, RuntimeError> {
        match &self.containers {
            Some(containers) => containers.remove_image(reference).await,
            None => Ok(ImageRemoval::Missing),
        }
    }

    async fn create(&self, spec: &InstanceSpec) -> Result<(), RuntimeError> {
        self.for_spec(spec)?.create(spec).await?;
        self.remember(&spec.name, spec.executable.is_some());
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        self.owner(name).await.start(name).await
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.owner(name).await.stop(name, grace).await
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let result = self.owner(name).await.remove(name).await;
        self.owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
        result
    }

    async fn list(&self) -> Result<Vec<InstanceState>, RuntimeError> {
        let mut all = self.processes.list().await?;
        for instance in &all {
            self.remember(&instance.name, true);
        }
        if let Some(containers) = &self.containers {
            let listed = containers.list().await?;
            for instance in &listed {
                self.remember(&instance.name, false);
            }
            all.extend(listed);
        }
        Ok(all)
    }

    async fn pids(&self, name: &str) -> Result<Vec<u32>, RuntimeError> {
        self.owner(name).await.pids(name).await
    }

    async fn logs(&self, name: &str, tail: Option<usize>) -> Result<Vec<String>, RuntimeError> {
        self.owner(name).await.logs(name, tail).await
    }

    async fn stream_logs(
        &self,
        name: &str,
        since: Option<chrono::DateTime<chrono::Utc>>,
        lines: mpsc::Sender<super::LogLine>,
    ) -> Result<(), RuntimeError> {
        self.owner(name).await.stream_logs(name, since, lines).await
    }

    async fn follow_logs(
        &self,
        name: &str,
        lines: mpsc::Sender<String>,
    ) -> Result<(), RuntimeError> {
        self.owner(name).await.follow_logs(name, lines).await
    }
}
