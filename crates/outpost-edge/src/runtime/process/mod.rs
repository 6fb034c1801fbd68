//! The native-process runtime, for devices without a container engine: a module instance is a child process of
//! the daemon.
//!
//! Each instance has a directory `state_dir/{name}`: its working directory, with `spec.json` (what to run),
//! `status.json` (last start, exit and exit code), `pid` (while it runs) and `output.log` (stdout and stderr,
//! rotated by size and count, see `output.rs`). A watcher task per child records how it ended. Because the spec and pid are on disk, a
//! daemon that was killed finds its instances again on restart ([`ProcessRuntime::new`]); the children it left
//! behind run unsupervised, so they are terminated and reported stopped, and the agent starts them again.

mod output;
mod persisted;
mod procfs;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use rustix::process::Signal;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::AbortHandle;

use self::output::OutputLog;
use self::persisted::{write_json, RunRecord, StoredSpec, PID_FILE, SPEC_FILE, STATUS_FILE};
use super::{
    ImageOrigin, ImageRemoval, InstanceSpec, InstanceState, InstanceStatus, LogRotation,
    ModuleRuntime, RegistryCredential, RuntimeError,
};
use crate::lock;

/// How long an orphan of a previous daemon gets between SIGTERM and SIGKILL.
const ORPHAN_GRACE: Duration = Duration::from_secs(5);
/// How long a child's output may keep flowing after it exited before its exit is recorded anyway (a grandchild
/// that inherited the pipes can keep them open indefinitely).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How long to wait for a child to die after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs module instances as child processes of the daemon.
#[derive(Debug)]
pub struct ProcessRuntime {
    state_dir: PathBuf,
    log_rotation: LogRotation,
    instances: Arc<Mutex<BTreeMap<String, Instance>>>,
}

/// One instance, in memory.
#[derive(Debug)]
struct Instance {
    spec: StoredSpec,
    dir: PathBuf,
    record: RunRecord,
    /// Present from start until the watcher has recorded the exit.
    running: Option<Running>,
    log: Arc<Mutex<OutputLog>>,
    lines: broadcast::Sender<String>,
    /// The watcher and pump tasks of this instance, aborted when the runtime is dropped or the instance removed.
    tasks: Vec<AbortHandle>,
}

/// A live child.
#[derive(Debug)]
struct Running {
    pid: u32,
    /// Distinguishes runs, so a late watcher never touches a newer run (or a re-created instance).
    run_id: u64,
    /// Becomes true once the exit is recorded.
    exited: watch::Receiver<bool>,
}

impl Instance {
    fn new(spec: StoredSpec, dir: PathBuf, record: RunRecord, rotation: LogRotation) -> Self {
        let (lines, _) = broadcast::channel(1024);
        let log = Arc::new(Mutex::new(OutputLog::new(
            dir.clone(),
            rotation,
            lines.clone(),
        )));
        Self {
            spec,
            dir,
            record,
            running: None,
            log,
            lines,
            tasks: Vec::new(),
        }
    }

    fn state(&self) -> InstanceState {
        let status = match (&self.running, self.record.exit_code) {
            (Some(_), _) => InstanceStatus::Running,
            (None, Some(code)) if code != 0 => InstanceStatus::Failed,
            (None, _) => InstanceStatus::Stopped,
        };
        InstanceState {
            name: self.spec.name.clone(),
            digest: self.spec.digest.clone(),
            status,
            exit_code: if self.running.is_some() {
                None
            } else {
                self.record.exit_code
            },
            started_at: self.record.started_at,
            // The last exit stays known while it runs again (as Docker's FinishedAt): restart back-off counts from it.
            exited_at: self.record.exited_at,
            image: self
                .spec
                .executable
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            image_id: None,
        }
    }
}

static NEXT_RUN: AtomicU64 = AtomicU64::new(1);

impl ProcessRuntime {
    /// A runtime keeping its instances under `state_dir`. Instances created by a previous daemon are found again;
    /// any of their processes still running is terminated (SIGTERM, SIGKILL after 5 s: this call may block that
    /// long) and the instance is reported stopped.
    pub fn new(state_dir: PathBuf) -> Result<Self, RuntimeError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            RuntimeError::new(
                "recover",
                "*",
                format!("{what} {}: {e}", state_dir.display()),
            )
        };
        fs::create_dir_all(&state_dir).map_err(|e| fail("could not create", &e))?;
        let mut instances = BTreeMap::new();
        let mut orphans = Vec::new();
        for entry in fs::read_dir(&state_dir)
            .map_err(|e| fail("could not read", &e))?
            .flatten()
        {
            let dir = entry.path();
            let Some((spec, mut record, pid)) = persisted::load(&dir) else {
                continue;
            };
            if let Some(pid) = pid {
                // It was running when the previous daemon died; whatever became of it, it is unsupervised now.
                let executable = spec.executable.as_deref().unwrap_or(Path::new(""));
                if procfs::is_alive(pid) && procfs::runs(pid, executable) {
                    tracing::info!(module = %spec.name, pid, "terminating a process left by a previous daemon");
                    orphans.push(pid);
                }
                record.exit_code = None;
                record.exited_at = Some(Utc::now());
                write_json(&dir.join(STATUS_FILE), &record)
                    .map_err(|e| fail("could not write in", &e))?;
                let _ = fs::remove_file(dir.join(PID_FILE));
            }
            instances.insert(
                spec.name.clone(),
                Instance::new(spec, dir, record, LogRotation::default()),
            );
        }
        procfs::terminate(&orphans, ORPHAN_GRACE);
        Ok(Self {
            state_dir,
            log_rotation: LogRotation::default(),
            instances: Arc::new(Mutex::new(instances)),
        })
    }

    /// Rotates every module's `output.log` by `rotation` instead of [`LogRotation::default`] (10 MiB × 3).
    #[must_use]
    pub fn with_log_rotation(mut self, rotation: LogRotation) -> Self {
        self.log_rotation = rotation;
        for instance in lock(&self.instances).values_mut() {
            *lock(&instance.log) =
                OutputLog::new(instance.dir.clone(), rotation, instance.lines.clone());
        }
        self
    }

    /// Rotates every module's `output.log` at `bytes`, keeping one old file.
    #[must_use]
    pub fn with_log_limit(self, bytes: u64) -> Self {
        self.with_log_rotation(LogRotation {
            max_bytes: bytes,
            max_files: 2,
        })
    }

    fn spawn(&self, instance: &mut Instance) -> Result<(), SpawnError> {
        let spec = &instance.spec;
        let name = spec.name.clone();
        let executable = spec.executable.as_ref().ok_or(SpawnError::NoExecutable)?;
        let mut command = tokio::process::Command::new(executable);
        command
            .args(&spec.args)
            .env_clear()
            .envs(&spec.env)
            .current_dir(&instance.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so stop reaches what it spawned, and a Ctrl-C meant for the daemon does not.
            .process_group(0);
        if !spec.env.contains_key("PATH") {
            if let Some(path) = std::env::var_os("PATH") {
                command.env("PATH", path);
            }
        }
        let mut child = command.spawn().map_err(|source| SpawnError::Spawn {
            path: executable.clone(),
            source,
        })?;
        let pid = child.id().ok_or(SpawnError::ExitedAtOnce)?;
        let run_id = NEXT_RUN.fetch_add(1, Ordering::Relaxed);
        let started_at = Utc::now();

        instance.tasks.retain(|t| !t.is_finished());
        let pumps: Vec<_> = [
            child
                .stdout
                .take()
                .map(|p| tokio::spawn(output::pump(p, instance.log.clone()))),
            child
                .stderr
                .take()
                .map(|p| tokio::spawn(output::pump(p, instance.log.clone()))),
        ]
        .into_iter()
        .flatten()
        .collect();
        instance
            .tasks
            .extend(pumps.iter().map(tokio::task::JoinHandle::abort_handle));

        let (exited_tx, exited) = watch::channel(false);
        let instances = Arc::clone(&self.instances);
        let watcher = tokio::spawn(async move {
            let status = child.wait().await;
            let _ =
                tokio::time::timeout(DRAIN_TIMEOUT, futures_util::future::join_all(pumps)).await;
            let code = match status {
                Ok(s) => s
                    .code()
                    .map_or_else(|| 128 + i64::from(s.signal().unwrap_or(0)), i64::from),
                Err(e) => {
                    tracing::warn!(module = %name, error = %e, "could not wait for a process module");
                    -1
                }
            };
            let mut instances = lock(&instances);
            if let Some(instance) = instances.get_mut(&name) {
                if instance
                    .running
                    .as_ref()
                    .is_some_and(|r| r.run_id == run_id)
                {
                    instance.running = None;
                    instance.record.exit_code = Some(code);
                    instance.record.exited_at = Some(Utc::now());
                    let _ = fs::remove_file(instance.dir.join(PID_FILE));
                    if let Err(e) = write_json(&instance.dir.join(STATUS_FILE), &instance.record) {
                        tracing::warn!(module = %name, error = %e, "could not record a process module's exit");
                    }
                }
            }
            drop(instances);
            let _ = exited_tx.send(true);
        });
        instance.tasks.push(watcher.abort_handle());

        instance.running = Some(Running {
            pid,
            run_id,
            exited,
        });
        instance.record = RunRecord {
            started_at: Some(started_at),
            exited_at: instance.record.exited_at,
            exit_code: None,
        };
        crate::identities::write_durably(
            &instance.dir.join(PID_FILE),
            format!("{pid}\n").as_bytes(),
        )
        .map_err(SpawnError::Pid)?;
        write_json(&instance.dir.join(STATUS_FILE), &instance.record)
            .map_err(SpawnError::Status)?;
        Ok(())
    }

    fn with_instance<T>(
        &self,
        operation: &'static str,
        name: &str,
        f: impl FnOnce(&mut Instance) -> T,
    ) -> Result<T, RuntimeError> {
        let mut instances = lock(&self.instances);
        let instance = instances
            .get_mut(name)
            .ok_or_else(|| RuntimeError::new(operation, name, "no such instance"))?;
        Ok(f(instance))
    }
}

impl Drop for ProcessRuntime {
    /// A dropped runtime stops supervising: its tasks end, its children keep running (and a later runtime on the
    /// same state directory treats them as orphans).
    fn drop(&mut self) {
        for instance in lock(&self.instances).values() {
            for task in &instance.tasks {
                task.abort();
            }
        }
    }
}

#[async_trait]
impl ModuleRuntime for ProcessRuntime {
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn pull(
        &self,
        spec: &InstanceSpec,
        _: &[RegistryCredential],
        _: bool,
    ) -> Result<ImageOrigin, RuntimeError> {
        check_executable(spec)
            .map(|()| ImageOrigin::AlreadyPresent)
            .map_err(|e| RuntimeError::new("pull the image of", &spec.name, e))
    }

    async fn remove_image(&self, _: &str) -> Result<ImageRemoval, RuntimeError> {
        Ok(ImageRemoval::Missing)
    }

    async fn create(&self, spec: &InstanceSpec) -> Result<(), RuntimeError> {
        let fail = |e: &dyn std::fmt::Display| RuntimeError::new("create", &spec.name, e);
        if spec.name.is_empty()
            || spec.name == "."
            || spec.name == ".."
            || spec.name.contains(['/', '\0'])
        {
            return Err(fail(&"its name cannot be used as a directory name"));
        }
        if spec.executable.is_none() {
            return Err(fail(&"a process module needs an executable"));
        }
        let mut instances = lock(&self.instances);
        if instances.contains_key(&spec.name) {
            return Err(fail(&"it already exists"));
        }
        let dir = self.state_dir.join(&spec.name);
        let stored = StoredSpec::from(spec);
        let record = RunRecord::default();
        fs::create_dir_all(&dir)
            .and_then(|()| write_json(&dir.join(STATUS_FILE), &record))
            .and_then(|()| write_json(&dir.join(SPEC_FILE), &stored))
            .map_err(|e| fail(&e))?;
        instances.insert(
            spec.name.clone(),
            Instance::new(stored, dir, record, self.log_rotation),
        );
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        let mut instances = lock(&self.instances);
        let instance = instances
            .get_mut(name)
            .ok_or_else(|| RuntimeError::new("start", name, "no such instance"))?;
        if instance.running.is_some() {
            return Ok(());
        }
        self.spawn(instance)
            .map_err(|e| RuntimeError::new("start", name, e))
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<(), RuntimeError> {
        let Some((pid, mut exited)) = self.with_instance("stop", name, |i| {
            i.running.as_ref().map(|r| (r.pid, r.exited.clone()))
        })?
        else {
            return Ok(());
        };
        // The pid cannot have been reused yet: `running` is cleared only after the watcher reaped the child, and
        // the group signals below are sent at most to what is left of its group.
        procfs::signal_group(pid, Signal::TERM);
        if tokio::time::timeout(grace, exited.wait_for(|e| *e))
            .await
            .is_err()
        {
            procfs::signal_group(pid, Signal::KILL);
            if tokio::time::timeout(KILL_TIMEOUT, exited.wait_for(|e| *e))
                .await
                .is_err()
            {
                return Err(RuntimeError::new(
                    "stop",
                    name,
                    format!("pid {pid} survived SIGKILL"),
                ));
            }
        }
        // Descendants that outlived the main process would keep the module's resources: they go too.
        procfs::signal_group(pid, Signal::KILL);
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        if !lock(&self.instances).contains_key(name) {
            return Ok(());
        }
        self.stop(name, Duration::ZERO)
            .await
            .map_err(|e| RuntimeError::new("remove", name, e.reason))?;
        let Some(instance) = lock(&self.instances).remove(name) else {
            return Ok(());
        };
        for task in &instance.tasks {
            task.abort();
        }
        match fs::remove_dir_all(&instance.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(RuntimeError::new("remove", name, e))
            }
            _ => Ok(()),
        }
    }

    async fn list(&self) -> Result<Vec<InstanceState>, RuntimeError> {
        Ok(lock(&self.instances)
            .values()
            .map(Instance::state)
            .collect())
    }

    async fn pids(&self, name: &str) -> Result<Vec<u32>, RuntimeError> {
        let pid = self.with_instance("list the processes of", name, |i| {
            i.running.as_ref().map(|r| r.pid)
        })?;
        Ok(pid.map(procfs::with_descendants).unwrap_or_default())
    }

    async fn logs(&self, name: &str, tail: Option<usize>) -> Result<Vec<String>, RuntimeError> {
        let dir = self.with_instance("read the logs of", name, |i| i.dir.clone())?;
        tokio::task::spawn_blocking(move || output::read_tail(&dir, tail))
            .await
            .map_err(|e| RuntimeError::new("read the logs of", name, e))?
            .map_err(|e| RuntimeError::new("read the logs of", name, e))
    }

    /// `output.log` records no times: every line is sent, and `since` is left to the caller.
    async fn stream_logs(
        &self,
        name: &str,
        _since: Option<chrono::DateTime<Utc>>,
        lines: mpsc::Sender<super::LogLine>,
    ) -> Result<(), RuntimeError> {
        let dir = self.with_instance("read the logs of", name, |i| i.dir.clone())?;
        tokio::task::spawn_blocking(move || output::stream_lines(&dir, &lines))
            .await
            .map_err(|e| RuntimeError::new("read the logs of", name, e))?
            .map_err(|e| RuntimeError::new("read the logs of", name, e))
    }

    /// Runs until the instance is removed or `lines` is closed.
    async fn follow_logs(
        &self,
        name: &str,
        lines: mpsc::Sender<String>,
    ) -> Result<(), RuntimeError> {
        let mut rx = self.with_instance("read the logs of", name, |i| i.lines.subscribe())?;
        loop {
            tokio::select! {
                line = rx.recv() => match line {
                    Ok(line) => {
                        if lines.send(line).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(module = name, missed, "a log follower fell behind");
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                () = lines.closed() => return Ok(()),
            }
        }
    }
}

/// Why a process module cannot be started.
#[derive(Debug, thiserror::Error)]
enum SpawnError {
    /// Its spec names no executable.
    #[error("the spec has no executable")]
    NoExecutable,
    /// The process could not be started.
    #[error("{}: {source}", path.display())]
    Spawn {
        /// The executable.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// It ended before its PID could be read.
    #[error("the child exited before it could be watched")]
    ExitedAtOnce,
    /// Its PID file could not be written.
    #[error("could not write its pid: {0}")]
    Pid(#[source] io::Error),
    /// Its status file could not be written.
    #[error("could not write its status: {0}")]
    Status(#[source] io::Error),
}

/// Why a process module's executable cannot run.
#[derive(Debug, thiserror::Error)]
enum ExecutableError {
    /// Its spec names none.
    #[error("a process module needs an executable")]
    Missing,
    /// It cannot be read.
    #[error("executable {}: {source}", path.display())]
    Unreadable {
        /// The executable.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// It is not an executable file.
    #[error("{} is not an executable file", .0.display())]
    NotExecutable(PathBuf),
}

/// Checks that the spec's executable exists and may be executed.
fn check_executable(spec: &InstanceSpec) -> Result<(), ExecutableError> {
    let path = spec.executable.as_ref().ok_or(ExecutableError::Missing)?;
    let meta = fs::metadata(path).map_err(|source| ExecutableError::Unreadable {
        path: path.clone(),
        source,
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(ExecutableError::NotExecutable(path.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(exit_code: Option<i64>) -> Instance {
        let spec = StoredSpec {
            name: "m".into(),
            image: String::new(),
            executable: Some("/bin/true".into()),
            args: vec![],
            create_options: None,
            env: BTreeMap::new(),
            workload_socket: PathBuf::new(),
            gateway_hostname: String::new(),
            digest: "d1".into(),
        };
        let record = RunRecord {
            started_at: None,
            exited_at: None,
            exit_code,
        };
        Instance::new(
            spec,
            PathBuf::from("/nonexistent"),
            record,
            LogRotation::default(),
        )
    }

    #[test]
    fn an_instance_never_started_is_stopped() {
        let state = record(None).state();
        assert_eq!(state.status, InstanceStatus::Stopped);
        assert_eq!(state.image, "/bin/true");
        assert_eq!(state.digest, "d1");
    }

    #[test]
    fn exit_code_zero_is_stopped_and_any_other_is_failed() {
        assert_eq!(record(Some(0)).state().status, InstanceStatus::Stopped);
        assert_eq!(record(Some(143)).state().status, InstanceStatus::Failed);
    }

    #[test]
    fn a_spec_without_an_executable_cannot_be_pulled() {
        let spec = InstanceSpec {
            name: "m".into(),
            image: String::new(),
            executable: None,
            args: vec![],
            create_options: None,
            env: BTreeMap::new(),
            workload_socket: PathBuf::new(),
            gateway_hostname: String::new(),
            digest: String::new(),
        };
        assert!(matches!(
            check_executable(&spec),
            Err(ExecutableError::Missing)
        ));
        let not_executable = InstanceSpec {
            executable: Some("/".into()),
            ..spec
        };
        assert!(matches!(
            check_executable(&not_executable),
            Err(ExecutableError::NotExecutable(_))
        ));
    }
}
