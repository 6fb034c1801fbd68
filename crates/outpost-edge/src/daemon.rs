//! `outpost edge run`: wires the agent, the runtimes, the workload sockets and the management API together, and
//! keeps them running until the daemon is told to stop.

use std::sync::Arc;

use anyhow::Context as _;
use chrono::Utc;
use tokio::sync::{watch, Mutex};

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

/// Starts the edge daemon and runs it until `shutdown` resolves.
pub async fn run(
    config: EdgeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let agent = start(config).await?;
    shutdown.await;
    tracing::info!(
        "edge daemon stopping; module instances keep running and are adopted at the next start"
    );
    drop(agent);
    Ok(())
}

/// Builds the agent and starts its tasks; returns once the last-known-good deployment has been started.
pub async fn start(config: EdgeConfig) -> anyhow::Result<Arc<Agent>> {
    let device = config.device().map_err(anyhow::Error::msg)?;
    for dir in [
        config.data_dir.clone(),
        config.agent_dir(),
        config.socket_dir(),
    ] {
        outpost_store::host::private_dir(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let ca = Arc::new(outpost_pki::CertificateAuthority::load_or_create(
        &ca_dir,
        &format!("Outpost edge CA {}", device.device_id),
    )?);

    let processes: Arc<dyn ModuleRuntime> =
        Arc::new(ProcessRuntime::new(config.data_dir.join("processes"))?);
    let mut gateway_ips = vec![config.listen_address];
    let containers: Option<Arc<dyn ModuleRuntime>> = match &config.runtime {
        RuntimeConfig::Docker {
            socket,
            network,
            container_prefix,
        } => {
            let docker =
                DockerRuntime::connect(socket, &device.device_id, network, container_prefix)
                    .await?;
            // Containers reach the edge hub through Outpost's own network: it listens on that gateway too.
            gateway_ips.push(docker.gateway_ip());
            Some(Arc::new(docker))
        }
        RuntimeConfig::Process => None,
    };
    let runtime: Arc<dyn ModuleRuntime> = Arc::new(CombinedRuntime::new(containers, processes));

    let identities = Arc::new(IdentityCache::open(
        &config.agent_dir().join("identities.json"),
    )?);
    // Everything under the data directory is the daemon's user's only: module keys, the CA key, the deployment
    // (with its registry credentials), tokens in the edge hub's database. An older installation is tightened.
    let ca_dir = config.data_dir.join("pki");
    let edge_hub = crate::edgehub::start(&config, identities.clone(), &ca, &gateway_ips).await?;
    let trust_bundle = ca.pem().to_owned();
    let service = Arc::new(WorkloadService {
        identities: identities.clone(),
        ca_dir.clone(),
        config.data_dir.join("edgehub"),
        runtime: runtime.clone(),
        ca,
        trust_bundle,
    });
    let sockets = Arc::new(WorkloadSockets::new(service, &config.socket_dir()));
    let hub = HubClient::new(&config)?;
    let agent = Arc::new(Agent {
        lkg: LastKnownGood::new(&config.agent_dir()),
        config: config.clone(),
        device,
        runtime,
        identities,
        sockets,
        hub,
        back_off: BackOff::default(),
        state: Mutex::new(AgentState::default()),
        reported: watch::channel(serde_json::Value::Null).0,
        started: Utc::now(),
    });

    agent
        .boot()
        .await
        .context("cannot run the last-known-good deployment")?;
    tokio::spawn(agent.clone().run_supervisor());
    let management = agent.clone();
    let management_socket = config.management_socket();
    tokio::spawn(async move {
        if let Err(error) = crate::management::serve(management, edge_hub, &management_socket).await
        {
            tracing::error!(%error, "the management socket stopped");
        }
    });
    let link_agent = agent.clone();
    tokio::spawn(upstream::run(agent.clone(), move || {
        crate::agent::sdk_link::connect(link_agent.clone())
    }));
    Ok(agent)
}
