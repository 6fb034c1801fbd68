//! The Docker runtime: module instances are containers of the local Docker Engine, reached through bollard over
//! its Unix socket.
//!
//! Containers are named `{prefix}{module}` and labelled with the device, the module and the spec digest, so
//! `list` sees only this device's instances. They are attached to one bridge network that Outpost creates; its
//! gateway is the host's address on that network, where the edge hub listens and to which the gateway host name
//! resolves in every container. The create body is the deployment's
//! `createOptions` with Outpost's additions merged in (`create_options.rs`).

mod create_options;
pub mod disk_usage;
mod log_lines;
mod reference;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bollard::auth::DockerCredentials;
use bollard::container::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StartContainerOptions, StopContainerOptions, TopOptions,
};
use bollard::errors::Error as DockerError;
use bollard::image::{CreateImageOptions, RemoveImageOptions};
use bollard::models::ContainerStateStatusEnum;
use bollard::network::{CreateNetworkOptions, InspectNetworkOptions};
use bollard::Docker;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::mpsc;

pub use self::create_options::WORKLOAD_SOCKET_IN_CONTAINER;
use self::log_lines::{split_timestamp, LineSplitter};
use super::{
    ImageOrigin, ImageRemoval, InstanceSpec, InstanceState, LogRotation, ModuleRuntime,
    RegistryCredential, RuntimeError,
};

/// The label holding the edge device id of a module container.
pub const LABEL_DEVICE: &str = "net.outpost.device";
/// The label holding the module name.
pub const LABEL_MODULE: &str = "net.outpost.module";
/// The label holding the digest of the spec the container was created from.
pub const LABEL_DIGEST: &str = "net.outpost.digest";
/// The label marking a network as created by Outpost.
pub const LABEL_NETWORK: &str = "net.outpost.network";

/// Seconds a request may wait for the daemon's answer (not for a streamed body: logs and pulls run longer).
const REQUEST_TIMEOUT_SECS: u64 = 120;
/// How often a log follower looks whether a stopped container runs again.
const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// Module instances as Docker containers.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    device_id: String,
    network: String,
    prefix: String,
    gateway_ip: IpAddr,
    logs: LogRotation,
}

impl DockerRuntime {
    /// Connects to the daemon at `socket` (negotiating the API version) and creates the bridge network `network`
    /// unless it exists. Containers will be named `{container_prefix}{module}`.
    pub async fn connect(
        socket: &Path,
        device_id: &str,
        network: &str,
        container_prefix: &str,
    ) -> Result<Self, RuntimeError> {
        let fail =
            |e: &dyn std::fmt::Display| RuntimeError::new("connect to Docker for", "$edgeAgent", e);
        let path = socket
            .to_str()
            .ok_or_else(|| fail(&"the socket path is not UTF-8"))?;
        let docker =
            Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
                .map_err(|e| fail(&format!("{}: {e}", socket.display())))?
                .negotiate_version()
                .await
                .map_err(|e| fail(&format!("{}: {e}", socket.display())))?;
        let gateway_ip = ensure_network(&docker, network)
            .await
            .map_err(|e| fail(&format!("network {network}: {e}")))?;
        Ok(Self {
            docker,
            device_id: device_id.to_owned(),
            network: network.to_owned(),
            prefix: container_prefix.to_owned(),
            gateway_ip,
            logs: LogRotation::default(),
        })
    }

    /// Creates containers with a json-file log rotated by `logs` instead of [`LogRotation::default`], unless
    /// their `createOptions` set a `HostConfig.LogConfig`.
    #[must_use]
    pub fn with_log_rotation(mut self, logs: LogRotation) -> Self {
        self.logs = logs;
        self
    }

    /// The host's address on the edge network: the edge hub listens there, and containers resolve the gateway
    /// host name to it.
    pub fn gateway_ip(&self) -> IpAddr {
        self.gateway_ip
    }

    /// The edge network's name.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The container name of `module`.
    pub fn container_name(&self, module: &str) -> String {
        format!("{}{module}", self.prefix)
    }

    fn labels(&self, spec: &InstanceSpec) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_DEVICE.to_owned(), self.device_id.clone()),
            (LABEL_MODULE.to_owned(), spec.name.clone()),
            (LABEL_DIGEST.to_owned(), spec.digest.clone()),
        ])
    }

    /// Whether `container` is gone, and whether it is running.
    async fn gone_or_running(&self, container: &str) -> Result<(bool, bool), DockerError> {
        match self
            .docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspect) => {
                let status = inspect.state.and_then(|s| s.status);
                Ok((false, status == Some(ContainerStateStatusEnum::RUNNING)))
            }
            Err(e) if status_code(&e) == Some(404) => Ok((true, false)),
            Err(e) => Err(e),
        }
    }
}

/// Why Outpost's Docker network cannot be used.
#[derive(Debug, thiserror::Error)]
enum NetworkError {
    /// It could not be read.
    #[error(transparent)]
    Inspect(DockerError),
    /// It did not exist and could not be created.
    #[error("could not create it: {0}")]
    Create(#[source] DockerError),
    /// It has no gateway for the edge hub to listen on.
    #[error("it has no gateway address")]
    NoGateway,
}

/// Creates the bridge network `name` unless it exists, and returns its gateway address.
async fn ensure_network(docker: &Docker, name: &str) -> Result<IpAddr, NetworkError> {
    let network = match docker
        .inspect_network(name, None::<InspectNetworkOptions<String>>)
        .await
    {
        Ok(network) => network,
        Err(e) if status_code(&e) == Some(404) => {
            let options = CreateNetworkOptions {
                name,
                check_duplicate: true,
                driver: "bridge",
                labels: HashMap::from([(LABEL_NETWORK, "true")]),
                ..Default::default()
            };
            match docker.create_network(options).await {
                // 409: another runtime created it meanwhile.
                Err(e) if status_code(&e) != Some(409) => return Err(NetworkError::Create(e)),
                _ => {}
            }
            docker
                .inspect_network(name, None::<InspectNetworkOptions<String>>)
                .await
                .map_err(NetworkError::Inspect)?
        }
        Err(e) => return Err(NetworkError::Inspect(e)),
    };
    let gateways: Vec<IpAddr> = network
        .ipam
        .and_then(|ipam| ipam.config)
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.gateway.as_deref()?.parse().ok())
        .collect();
    // The edge hub listens on one address: prefer IPv4, which every module image can reach.
    gateways
        .iter()
        .find(|ip| ip.is_ipv4())
        .or(gateways.first())
        .copied()
        .ok_or(NetworkError::NoGateway)
}

/// The HTTP status of a daemon error, if the daemon answered.
fn status_code(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

#[async_trait]
impl ModuleRuntime for DockerRuntime {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn pull(
        &self,
        spec: &InstanceSpec,
        credentials: &[RegistryCredential],
        always: bool,
    ) -> Result<ImageOrigin, RuntimeError> {
        let fail = |e: &dyn std::fmt::Display| {
            RuntimeError::new(
                "pull the image of",
                &spec.name,
                format!("{}: {e}", spec.image),
            )
        };
        let origin = match self.docker.inspect_image(&spec.image).await {
            Ok(_) if !always => return Ok(ImageOrigin::AlreadyPresent),
            Ok(_) => ImageOrigin::AlreadyPresent,
            Err(e) if status_code(&e) == Some(404) => ImageOrigin::Pulled,
            Err(e) => return Err(fail(&e)),
        };
        let options = CreateImageOptions {
            from_image: reference::pull_reference(&spec.image),
            ..Default::default()
        };
        let credentials =
            reference::credentials_for(&spec.image, credentials).map(|c| DockerCredentials {
                username: Some(c.username.clone()),
                password: Some(c.password.clone()),
                serveraddress: Some(c.address.clone()),
                ..Default::default()
            });
        let mut progress = self.docker.create_image(Some(options), None, credentials);
        while let Some(step) = progress.next().await {
            step.map_err(|e| fail(&e))?;
        }
        Ok(origin)
    }

    async fn remove_image(&self, reference: &str) -> Result<ImageRemoval, RuntimeError> {
        // Never forced: Docker refuses (409) to remove an image that any container uses, running or not.
        let options = RemoveImageOptions {
            force: false,
            noprune: false,
        };
        match self
            .docker
            .remove_image(reference, Some(options), None)
            .await
        {
            Ok(_) => Ok(ImageRemoval::Removed),
            Err(e) if status_code(&e) == Some(404) => Ok(ImageRemoval::Missing),
            Err(e) if status_code(&e) == Some(409) => Ok(ImageRemoval::InUse),
            Err(e) => Err(RuntimeError::new(
                "remove an unused image for",
                "$edgeAgent",
                format!("{reference}: {e}"),
            )),
        }
    }

    async fn create(&self, spec: &InstanceSpec) -> Result<(), RuntimeError> {
        let fail = |e: &dyn std::fmt::Display| RuntimeError::new("create", &spec.name, e);
        let body = create_options::container_body(
            spec,
            &self.network,
            self.gateway_ip,
            &self.labels(spec),
            self.logs,
        )
        .map_err(|e| fail(&e))?;
        let options = CreateContainerOptions {
            name: self.container_name(&spec.name),
            platform: None,
        };
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| fail(&e))?;
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        self.docker
            .start_container(
                &self.container_name(name),
                None::<StartContainerOptions<String>>,
            )
            .await
            .map_err(|e| RuntimeError::new("start", name, e))
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<(), RuntimeError> {
        let seconds = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        // The daemon answers only once the container is down, up to `grace` later.
        let docker = self
            .docker
            .clone()
            .with_timeout(Duration::from_secs(seconds + REQUEST_TIMEOUT_SECS));
        docker
            .stop_container(
                &self.container_name(name),
                Some(StopContainerOptions { t: seconds as i64 }),
            )
            .await
            .map_err(|e| RuntimeError::new("stop", name, e))
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self
            .docker
            .remove_container(&self.container_name(name), Some(options))
            .await
        {
            Err(e) if status_code(&e) != Some(404) => Err(RuntimeError::new("remove", name, e)),
            _ => Ok(()),
        }
    }

    async fn list(&self) -> Result<Vec<InstanceState>, RuntimeError> {
        let fail = |e: &dyn std::fmt::Display| RuntimeError::new("list", "*", e);
        let options = ListContainersOptions {
            all: true,
            filters: HashMap::from([(
                "label".to_owned(),
                vec![format!("{LABEL_DEVICE}={}", self.device_id)],
            )]),
            ..Default::default()
        };
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| fail(&e))?;
        let mut instances = Vec::with_capacity(summaries.len());
        for id in summaries.iter().filter_map(|s| s.id.as_deref()) {
            match self
                .docker
                .inspect_container(id, None::<InspectContainerOptions>)
                .await
            {
                Ok(inspect) => instances.extend(state::instance_state(&inspect)),
                // Removed between the listing and the inspection.
                Err(e) if status_code(&e) == Some(404) => {}
                Err(e) => return Err(fail(&e)),
            }
        }
        instances.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(instances)
    }

    async fn pids(&self, name: &str) -> Result<Vec<u32>, RuntimeError> {
        // `docker top` runs ps on the host, so the PID column holds host PIDs: what SO_PEERCRED reports.
        match self
            .docker
            .top_processes(&self.container_name(name), None::<TopOptions<String>>)
            .await
        {
            Ok(top) => {
                let column = top
                    .titles
                    .unwrap_or_default()
                    .iter()
                    .position(|t| t == "PID");
                let Some(column) = column else {
                    return Err(RuntimeError::new(
                        "list the processes of",
                        name,
                        "docker top has no PID column",
                    ));
                };
                Ok(top
                    .processes
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|p| p.get(column)?.parse().ok())
                    .collect())
            }
            // 409: the container is not running, so it has no processes.
            Err(e) if status_code(&e) == Some(409) => Ok(Vec::new()),
            Err(e) => Err(RuntimeError::new("list the processes of", name, e)),
        }
    }

    async fn logs(&self, name: &str, tail: Option<usize>) -> Result<Vec<String>, RuntimeError> {
        let options = LogsOptions::<String> {
            stdout: true,
            stderr: true,
            tail: tail.map_or_else(|| "all".to_owned(), |n| n.to_string()),
            ..Default::default()
        };
        let mut stream = self.docker.logs(&self.container_name(name), Some(options));
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        while let Some(output) = stream.next().await {
            let output = output.map_err(|e| RuntimeError::new("read the logs of", name, e))?;
            lines.extend(splitter.push(output.as_ref()));
        }
        lines.extend(splitter.finish());
        if let Some(n) = tail {
            lines.drain(..lines.len().saturating_sub(n));
        }
        Ok(lines)
    }

    async fn stream_logs(
        &self,
        name: &str,
        since: Option<DateTime<Utc>>,
        lines: mpsc::Sender<super::LogLine>,
    ) -> Result<(), RuntimeError> {
        // Docker's `since` has a resolution of seconds: rounded down, so nothing asked for is missed.
        let options = LogsOptions::<String> {
            stdout: true,
            stderr: true,
            timestamps: true,
            since: since.map_or(0, |t| t.timestamp()),
            tail: "all".to_owned(),
            ..Default::default()
        };
        let mut stream = self.docker.logs(&self.container_name(name), Some(options));
        let mut splitter = LineSplitter::default();
        let send = |line: String| {
            let line = match split_timestamp(&line) {
                Some((time, text)) => super::LogLine {
                    time: Some(time),
                    text: text.to_owned(),
                },
                None => super::LogLine {
                    time: None,
                    text: line,
                },
            };
            lines.send(line)
        };
        while let Some(output) = stream.next().await {
            let output = output.map_err(|e| RuntimeError::new("read the logs of", name, e))?;
            for line in splitter.push(output.as_ref()) {
                if send(line).await.is_err() {
                    return Ok(());
                }
            }
        }
        if let Some(line) = splitter.finish() {
            let _ = send(line).await;
        }
        Ok(())
    }

    /// Runs until the container is removed or `lines` is closed; across restarts of the container.
    async fn follow_logs(
        &self,
        name: &str,
        lines: mpsc::Sender<String>,
    ) -> Result<(), RuntimeError> {
        let container = self.container_name(name);
        self.gone_or_running(&container)
            .await
            .map_err(|e| RuntimeError::new("read the logs of", name, e))
            .and_then(|(gone, _)| {
                if gone {
                    Err(RuntimeError::new(
                        "read the logs of",
                        name,
                        "no such container",
                    ))
                } else {
                    Ok(())
                }
            })?;
        let start = Utc::now();
        let mut last: Option<DateTime<Utc>> = None;
        loop {
            // Docker's `since` has a resolution of seconds: lines already sent are skipped by their timestamps.
            let options = LogsOptions::<String> {
                follow: true,
                stdout: true,
                stderr: true,
                timestamps: true,
                since: last.unwrap_or(start).timestamp(),
                tail: "all".to_owned(),
                ..Default::default()
            };
            let mut stream = self.docker.logs(&container, Some(options));
            let mut splitter = LineSplitter::default();
            loop {
                let item = tokio::select! {
                    item = stream.next() => item,
                    () = lines.closed() => return Ok(()),
                };
                let output = match item {
                    None => break,
                    Some(Ok(output)) => output,
                    Some(Err(e)) if status_code(&e) == Some(404) => return Ok(()),
                    Some(Err(e)) => {
                        tracing::debug!(module = name, error = %e, "log stream broke; following again");
                        break;
                    }
                };
                for line in splitter.push(output.as_ref()) {
                    let Some((time, text)) = split_timestamp(&line) else {
                        continue;
                    };
                    if time < start || last.is_some_and(|l| time <= l) {
                        continue;
                    }
                    last = Some(time);
                    if lines.send(text.to_owned()).await.is_err() {
                        return Ok(());
                    }
                }
            }
            // The stream ends when the container stops: wait until it runs again, or is removed.
            loop {
                tokio::select! {
                    () = tokio::time::sleep(FOLLOW_POLL) => {}
                    () = lines.closed() => return Ok(()),
                }
                match self.gone_or_running(&container).await {
                    Ok((true, _)) => return Ok(()),
                    Ok((false, true)) => break,
                    Ok((false, false)) => {}
                    Err(e) => {
                        tracing::debug!(module = name, error = %e, "cannot inspect a followed container");
                    }
                }
            }
        }
    }
}
