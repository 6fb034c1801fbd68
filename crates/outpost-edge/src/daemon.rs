//! `outpost edge run`: wires the agent, the runtimes, the workload sockets and the management API together, and
//! keeps them running until the daemon is told to stop.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinSet;

use crate::agent::lkg::LastKnownGood;
use crate::agent::restart::BackOff;
use crate::agent::{upstream, Agent, AgentState};
use crate::config::{EdgeConfig, RuntimeConfig};
use crate::hub_client::HubClient;
use crate::identities::IdentityCache;
use crate::runtime::combined::CombinedRuntime;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::process::ProcessRuntime;
use crate::runtime::ModuleRuntime;
use crate::workload::{WorkloadService, WorkloadSockets};

/// How long a process module gets to exit after SIGTERM when the daemon stops, before SIGKILL.
pub const PROCESS_STOP_GRACE: Duration = Duration::from_secs(10);

/// Why the edge daemon cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The settings.
    #[error(transparent)]
    Settings(#[from] crate::config::SettingsError),
    /// Provisioning (`[provisioning]`) failed.
    #[error(transparent)]
    Provisioning(#[from] crate::provisioning::ProvisionError),
    /// A directory of the daemon's cannot be created or made private.
    #[error("cannot create {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The management socket cannot be bound.
    #[error("cannot serve the management API at {path}: {source}")]
    ManagementSocket {
        /// The socket.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The edge CA or the edge hub's certificate.
    #[error(transparent)]
    Certificates(#[from] outpost_pki::PkiError),
    /// A module runtime.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// A file of the agent's state (module identities, the image ledger).
    #[error("the agent's state: {0}")]
    AgentState(#[source] std::io::Error),
    /// The edge hub.
    #[error(transparent)]
    EdgeHub(#[from] crate::edgehub::EdgeHubError),
    /// The metrics listener.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The agent's client of the hub.
    #[error(transparent)]
    HubClient(#[from] crate::hub_client::HubClientError),
    /// The direct methods' upload settings.
    #[error(transparent)]
    Upload(#[from] crate::agent::methods::upload::UploadError),
    /// The last-known-good deployment.
    #[error(transparent)]
    Boot(#[from] crate::agent::BootError),
}

/// Starts the edge daemon and runs it until `shutdown` resolves (SIGTERM or SIGINT), then stops it: the
/// process modules stop with it, the containers keep running (see [`RunningEdge::stop`]).
pub async fn run(
    config: EdgeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    tokio::pin!(shutdown);
    // Registering may wait for a provisioning service that cannot be reached: a stop signal ends the wait.
    let config = tokio::select! {
        provisioned = crate::provisioning::provision(config) => provisioned?,
        () = &mut shutdown => return Ok(()),
    };
    let edge = start(config).await?;
    shutdown.await;
    tracing::info!(
        "edge daemon stopping: process modules stop with it, containers keep running; both are adopted at the next start"
    );
    edge.stop().await;
    Ok(())
}

/// A started edge daemon: its agent, and the tasks that may start or restart modules.
pub struct RunningEdge {
    /// The agent.
    pub agent: Arc<Agent>,
    processes: Arc<dyn ModuleRuntime>,
    tasks: JoinSet<()>,
    /// The edge CA and the edge hub's server certificate, renewed by a task in `tasks`.
    pub certificates: Arc<outpost_pki::CertificateRenewal>,
}

impl RunningEdge {
    /// `(name, notAfter in Unix seconds)` of the edge's certificates: each CA of the trust bundle (`CA Outpost
    /// edge CA edge-1`), the edge hub's server certificate (`edge hub server`) and each module's newest one from
    /// the workload API (`module filter server`). What the certificate-expiry metric reads.
    pub fn certificate_expiries(&self) -> Vec<(String, i64)> {
        self.certificates.expiries()
    }

    /// Stops the daemon's own tasks (supervisor, upstream link, management socket) so that nothing restarts a
    /// module, then stops every process module (SIGTERM, SIGKILL after [`PROCESS_STOP_GRACE`]).
    ///
    /// Process modules are children of the daemon: left running, they would be half-alive, with nobody serving
    /// their workload socket or the edge hub they talk to, and invisible to `systemctl status`. Containers belong
    /// to the Docker daemon, which keeps them running and restarts them by their own policy, as Azure IoT Edge
    /// does. `outpost edge run` adopts both at its next start.
    pub async fn stop(mut self) -> Arc<Agent> {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        for instance in self.processes.list().await.unwrap_or_default() {
            if let Err(error) = self
                .processes
                .stop(&instance.name, PROCESS_STOP_GRACE)
                .await
            {
                tracing::warn!(%error, "cannot stop a process module");
            }
        }
        self.agent
    }
}

/// Builds the agent and starts its tasks; returns once the last-known-good deployment has been started.
pub async fn start(config: EdgeConfig) -> Result<RunningEdge, StartError> {
    let config = crate::provisioning::provision(config).await?;
    let device = config.device()?;
    // Everything under the data directory is the daemon's user's only: module keys, the CA key, the deployment
    // (with its registry credentials), tokens in the edge hub's database. An older installation is tightened.
    let ca_dir = config.data_dir.join("pki");
    for dir in [
        config.data_dir.clone(),
        config.agent_dir(),
        config.socket_dir(),
        ca_dir.clone(),
        config.data_dir.join("edgehub"),
    ] {
        outpost_store::host::private_dir(&dir).map_err(|source| StartError::CreateDir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let management_listener =
        crate::management::bind(&config.management_socket()).map_err(|source| {
            StartError::ManagementSocket {
                path: config.management_socket().display().to_string(),
                source,
            }
        })?;
    let now = outpost_pki::unix_now();
    let ca = Arc::new(outpost_pki::CertificateAuthority::open(
        &ca_dir,
        &format!("Outpost edge CA {}", device.device_id),
        config.certificates.ca_lifetime,
        now,
    )?);
    if ca.current().renewal_due(now) {
        ca.renew(now)?;
    }

    let processes: Arc<dyn ModuleRuntime> = Arc::new(
        ProcessRuntime::new(config.data_dir.join("processes"))?
            .with_log_rotation(config.disk.log_rotation()),
    );
    let mut gateway_ips = vec![config.listen_address];
    let containers: Option<Arc<dyn ModuleRuntime>> = match &config.runtime {
        RuntimeConfig::Docker {
            socket,
            network,
            container_prefix,
        } => {
            let docker =
                DockerRuntime::connect(socket, &device.device_id, network, container_prefix)
                    .await?
                    .with_log_rotation(config.disk.log_rotation());
            // Containers reach the edge hub through Outpost's own network: it listens on that gateway too.
            gateway_ips.push(docker.gateway_ip());
            Some(Arc::new(docker))
        }
        RuntimeConfig::Process => None,
    };
    let process_runtime = processes.clone();
    let runtime: Arc<dyn ModuleRuntime> = Arc::new(CombinedRuntime::new(containers, processes));

    let identities = Arc::new(
        IdentityCache::open(&config.agent_dir().join("identities.json"))
            .map_err(StartError::AgentState)?,
    );
    let edge_hub_certificate = Arc::new(crate::edgehub::server_certificate(
        &config,
        &ca,
        &gateway_ips,
        now,
    )?);
    let edge_hub = crate::edgehub::start(
        &config,
        identities.clone(),
        &edge_hub_certificate,
        &gateway_ips,
    )
    .await?;
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Metrics { addr, source })?,
        ),
        None => None,
    };
    let certificates = Arc::new(outpost_pki::CertificateRenewal::new(
        ca.clone(),
        vec![edge_hub_certificate],
    ));
    let service = Arc::new(WorkloadService {
        identities: identities.clone(),
        runtime: runtime.clone(),
        ca,
        certificate_lifetime: config.certificates.workload_cert_lifetime,
    });
    let sockets = Arc::new(WorkloadSockets::new(service, &config.socket_dir()));
    let hub = HubClient::new(&config)?;
    let agent = Arc::new(Agent {
        lkg: LastKnownGood::new(&config.agent_dir()),
        images: crate::agent::image_gc::ImageGc::open(&config.agent_dir(), &config.disk)
            .map_err(StartError::AgentState)?,
        config: config.clone(),
        device,
        runtime,
        identities,
        sockets,
        hub,
        back_off: BackOff::default(),
        metrics: edge_hub.metrics.clone(),
        state: Mutex::new(AgentState::default()),
        reported: watch::channel(serde_json::Value::Null).0,
        started: Utc::now(),
    });

    agent.boot().await?;
    let mut tasks = JoinSet::new();
    tasks.spawn(agent.clone().run_supervisor());
    let renewal = certificates.clone();
    tasks.spawn(async move { renewal.run(tokio::time::sleep).await });
    tasks.spawn(crate::agent::image_gc::run(agent.clone()));
    let methods =
        crate::agent::methods::MethodService::new(crate::support_bundle::BundleSources {
            agent: agent.clone(),
            edge_hub: edge_hub.clone(),
        })?;
    if let Some(listener) = metrics_listener {
        match listener.local_addr() {
            Ok(addr) => tracing::info!(%addr, "serving metrics"),
            Err(error) => tracing::info!(%error, "serving metrics (its address is unknown)"),
        }
        tasks.spawn(crate::metrics::serve(
            edge_hub.clone(),
            certificates.clone(),
            config.data_dir.clone(),
            listener,
        ));
    }
    let management = agent.clone();
    tasks.spawn(async move {
        if let Err(error) =
            crate::management::serve(management, edge_hub, management_listener).await
        {
            tracing::error!(%error, "the management socket stopped");
        }
    });
    let link_agent = agent.clone();
    tasks.spawn(upstream::run(agent.clone(), move || {
        crate::agent::sdk_link::connect(link_agent.clone(), methods.clone())
    }));
    Ok(RunningEdge {
        agent,
        processes: process_runtime,
        tasks,
        certificates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_data_directory_that_cannot_be_created_is_a_typed_start_error_naming_it() {
        let blocker = tempfile::NamedTempFile::new().unwrap();
        let data_dir = blocker.path().join("data");
        let config = EdgeConfig::parse(&format!(
            r#"
            connection_string = "HostName=hub.local;DeviceId=edge1;SharedAccessKey=a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s="
            hub_ca = "/nonexistent/hub-ca.pem"
            data_dir = "{}"
            hostname = "edge1.local"
            [runtime]
            type = "process"
            "#,
            data_dir.display()
        ))
        .unwrap();
        let Err(error) = start(config).await else {
            panic!("started under a file");
        };
        assert!(
            matches!(&error, StartError::CreateDir { path, .. } if path == &data_dir.display().to_string()),
            "{error}"
        );
        assert!(std::error::Error::source(&error).is_some());
    }
}
