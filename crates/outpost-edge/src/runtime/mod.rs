//! Module runtimes: what starts, stops and watches module instances. Docker ([`docker`]) and native processes
//! ([`process`]) implement one trait, so the agent's reconciler and supervisor never know which one runs.

pub mod combined;
pub mod docker;
pub mod process;

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

/// Everything a runtime needs to create one module instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// The module's name (`filter`; system modules are never created by the agent).
    pub name: String,
    /// `docker`: the image reference. `process`: unused (see `executable`).
    pub image: String,
    /// `process`: the executable's absolute path.
    pub executable: Option<PathBuf>,
    /// `process`: its arguments.
    pub args: Vec<String>,
    /// `docker`: the `createOptions` JSON (Docker Engine create body: `HostConfig`, `Env`, `Cmd`, ...).
    pub create_options: Option<String>,
    /// The environment: deployment `env` first, then the `IOTEDGE_*` variables (user values win).
    pub env: BTreeMap<String, String>,
    /// The host path of this module's workload socket, mounted at `/var/run/iotedge/workload.sock` in containers.
    pub workload_socket: PathBuf,
    /// The host name modules use for the edge hub; containers resolve it to the host through the edge network.
    pub gateway_hostname: String,
    /// A digest of everything above: an instance whose digest differs from the desired one is recreated.
    pub digest: String,
}

/// What a runtime knows of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceState {
    /// The module's name.
    pub name: String,
    /// The spec digest the instance was created with.
    pub digest: String,
    /// Its state.
    pub status: InstanceStatus,
    /// The exit code of its last run, if it has exited.
    pub exit_code: Option<i64>,
    /// When it last started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it last exited.
    pub exited_at: Option<DateTime<Utc>>,
    /// The image (or executable) it runs.
    pub image: String,
    /// `sha256:...` of the image, when known.
    pub image_id: Option<String>,
}

/// An instance's state, as Azure maps container states (AZURE-COMPAT §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceStatus {
    /// Running.
    Running,
    /// Created or exited with code 0.
    Stopped,
    /// Exited with a non-zero code.
    Failed,
    /// Dead (never restarted).
    Dead,
}

/// Errors of a runtime, naming the operation and the module ("could not start module filter: ...").
#[derive(Debug, thiserror::Error)]
#[error("could not {operation} module {module}: {reason}")]
pub struct RuntimeError {
    /// What was being done (`pull the image of`, `create`, `start`, `stop`, `remove`, `list`, `read the logs of`).
    pub operation: &'static str,
    /// The module.
    pub module: String,
    /// Why it failed.
    pub reason: String,
}

impl RuntimeError {
    /// An error of `operation` on `module`.
    pub fn new(operation: &'static str, module: &str, reason: impl std::fmt::Display) -> Self {
        Self {
            operation,
            module: module.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// Credentials for a registry, from the manifest's `registryCredentials`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryCredential {
    /// The registry's address (`myacr.azurecr.io`, `127.0.0.1:5000`).
    pub address: String,
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// How module logs rotate: a file is rotated when it would pass `max_bytes`, and `max_files` files are kept (the
/// current one included), so a module's log never takes more than about `max_bytes × max_files`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    /// The size at which the current file is rotated.
    pub max_bytes: u64,
    /// The files kept, the current one included (at least 1).
    pub max_files: u32,
}

impl Default for LogRotation {
    /// 10 MiB × 3 files, as Docker's json-file options operators usually set.
    fn default() -> Self {
        Self {
            max_bytes: 10 << 20,
            max_files: 3,
        }
    }
}

/// Where the image of a pulled spec came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageOrigin {
    /// It was not on the device: this pull brought it (only such images are ever garbage-collected).
    Pulled,
    /// It was already on the device (pulled again or not), or there is no image (process modules).
    AlreadyPresent,
}

/// What removing an image did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRemoval {
    /// The reference was removed (and the image with it unless other references hold it).
    Removed,
    /// There was no such image.
    Missing,
    /// A container (any, running or not) uses it: it was left alone.
    InUse,
}

/// A module runtime.
#[async_trait]
pub trait ModuleRuntime: Send + Sync + 'static {
    /// `docker` or `process` (what `$edgeAgent` reports as `runtime.type`).
    fn kind(&self) -> &'static str;
    /// Makes the image available: pulls it unless it is present and `always` is false, and says whether it was
    /// there before. No-op for processes.
    async fn pull(
        &self,
        spec: &InstanceSpec,
        credentials: &[RegistryCredential],
        always: bool,
    ) -> Result<ImageOrigin, RuntimeError>;
    /// Removes the image `reference`, never forcibly: an image a container uses stays. No-op for processes.
    async fn remove_image(&self, reference: &str) -> Result<ImageRemoval, RuntimeError>;
    /// Creates the instance (not started). An existing instance of that name is an error: remove it first.
    async fn create(&self, spec: &InstanceSpec) -> Result<(), RuntimeError>;
    /// Starts a created or exited instance.
    async fn start(&self, name: &str) -> Result<(), RuntimeError>;
    /// Stops an instance, killing it after `grace`.
    async fn stop(&self, name: &str, grace: std::time::Duration) -> Result<(), RuntimeError>;
    /// Removes an instance (stopping it first if needed). Removing a missing instance is not an error.
    async fn remove(&self, name: &str) -> Result<(), RuntimeError>;
    /// Every instance this runtime manages for this edge device.
    async fn list(&self) -> Result<Vec<InstanceState>, RuntimeError>;
    /// The host PIDs of the instance's processes (the workload API authorises callers by them).
    async fn pids(&self, name: &str) -> Result<Vec<u32>, RuntimeError>;
    /// The last `tail` lines of the instance's output (stdout and stderr), all when `None`.
    async fn logs(&self, name: &str, tail: Option<usize>) -> Result<Vec<String>, RuntimeError>;
    /// New output lines as they come, until the instance is removed or the receiver is dropped.
    async fn follow_logs(
        &self,
        name: &str,
        lines: mpsc::Sender<String>,
    ) -> Result<(), RuntimeError>;
    /// The instance's stored output, oldest first, sent line by line into `lines` so that no caller holds a
    /// whole log; returns when all is sent or `lines` is closed. A runtime that records when each line was
    /// written skips what is older than `since` (it may send a little more: callers filter exactly).
    async fn stream_logs(
        &self,
        name: &str,
        since: Option<DateTime<Utc>>,
        lines: mpsc::Sender<LogLine>,
    ) -> Result<(), RuntimeError>;
}

/// One line of an instance's stored output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When the runtime recorded it (Docker does; a process module's `output.log` does not).
    pub time: Option<DateTime<Utc>>,
    /// The line, without its newline.
    pub text: String,
}
