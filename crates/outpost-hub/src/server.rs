//! Runs a hub: opens its data directory, makes its certificates, and serves the MQTT, HTTPS and (when asked)
//! AMQP listeners until shut down.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::device_ops::HubDevices;
use crate::storage::postgres::PostgresEngine;
use crate::storage::Engine;
use crate::Hub;
pub use outpost_https::HttpsLimits;
use outpost_pki::{CertificateAuthority, CertificateRenewal, ServerCertificate};

/// How a hub is run.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Where its database and certificates live (with `database`, its copy of the shared CA and `hub.json`).
    pub data_dir: PathBuf,
    /// A PostgreSQL database (`postgres://USER@HOST:PORT/DB` or `key=value` pairs) the hub keeps its tables
    /// and identity in, shared by every replica on it; `None`: SQLite in `data_dir`.
    pub database: Option<String>,
    /// The name clients address it by: the server certificate names it, tokens are scoped to it.
    pub host_name: String,
    /// The address both listeners bind.
    pub bind: IpAddr,
    /// The MQTT/TLS port (8883).
    pub mqtt_port: u16,
    /// The HTTPS port (443).
    pub https_port: u16,
    /// The AMQP/TLS port of the Event Hubs-compatible endpoint and C2D (5671); `None` serves no AMQP (what
    /// tests use, so that concurrent hubs do not collide), `Some(0)` any free port.
    pub amqp_port: Option<u16>,

    // The device-to-cloud event stream.
    /// How long and how much of the event stream is kept (pruned in the background).
    pub event_retention: crate::messaging::EventRetention,
    /// The stream's partitions and whether twin changes are streamed too.
    pub stream: crate::eventhub::StreamSettings,
    /// The HTTPS listener's connection cap and timeouts (see `outpost_https`).
    pub https_limits: HttpsLimits,
    /// How long the in-memory persistent session of an MQTT client that went away is kept (7 days).
    pub session_expiry: std::time::Duration,
    /// Where Prometheus scrapes `/metrics` (plain HTTP), if anywhere: off by default.
    pub metrics_bind: Option<SocketAddr>,
    /// How long the hub's CA and its server certificate are valid (each is renewed at 80 % of its life).
    pub certificates: CertificateLifetimes,
    /// The provisioning service's listener, when the hub serves one.
    pub provisioning: Option<ProvisioningListener>,
}

/// Where the provisioning service (DPS's device protocol, [`crate::provisioning`]) listens.
#[derive(Debug, Clone)]
pub struct ProvisioningListener {
    /// Its own address (devices dial the provisioning host on fixed ports, so it cannot share the hub's).
    pub bind: IpAddr,
    /// The name devices dial (the global device endpoint); the server certificate names it too.
    pub host_name: String,
    /// The MQTT/TLS port (8883, what the SDK dials).
    pub mqtt_port: u16,
    /// The HTTPS port of the REST variant (443); `None` serves no REST variant.
    pub https_port: Option<u16>,
}

/// How long the certificates a daemon makes are valid; each is renewed at 80 % of its life.
#[derive(Debug, Clone, Copy)]
pub struct CertificateLifetimes {
    /// A new CA (365 days).
    pub ca: Duration,
    /// The listeners' server certificate (90 days).
    pub server: Duration,
}

impl Default for CertificateLifetimes {
    fn default() -> Self {
        Self {
            ca: outpost_pki::DEFAULT_CA_LIFETIME,
            server: outpost_pki::DEFAULT_SERVER_LIFETIME,
        }
    }
}

/// How long an away client's persistent session is kept in memory unless the settings say otherwise.
pub const DEFAULT_SESSION_EXPIRY: std::time::Duration = std::time::Duration::from_hours(7 * 24);

/// A hub serving its listeners.
pub struct RunningHub {
    /// The hub's state.
    pub hub: Arc<Hub>,
    /// Where MQTT listens.
    pub mqtt_addr: SocketAddr,
    /// Where HTTPS listens.
    pub https_addr: SocketAddr,
    /// Where AMQP listens, when it does.
    pub amqp_addr: Option<SocketAddr>,
    /// Where `/metrics` is served, when metrics are on.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the provisioning service's MQTT listens, when it does.
    pub provisioning_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    certificates: Arc<CertificateRenewal>,
}

impl HubConfig {
    /// The service connection string of the `iothubowner` policy (`HostName` carries the port when it is not 443).
    pub fn owner_connection_string(&self) -> anyhow::Result<String> {
        let hub = self.open_hub()?.0;
        connection_string(&hub, &self.host_name, self.https_port)
    }

    /// Opens the hub on its database: PostgreSQL when `database` is set (an unreachable or wrong one is an
    /// error within seconds), SQLite in the data directory otherwise. Also returns the engine when it is
    /// shared by replicas.
    pub fn open_hub(&self) -> anyhow::Result<(Hub, Option<Arc<dyn Engine>>)> {
        let Some(url) = &self.database else {
            return Ok((
                Hub::open_with(&self.data_dir, &self.host_name, &self.stream)?,
                None,
            ));
        };
        let engine: Arc<dyn Engine> =
            Arc::new(PostgresEngine::connect(url).map_err(|e| {
                anyhow::anyhow!("cannot open the database given by --database: {e}")
            })?);
        let hub = Hub::with_engine(engine.clone(), &self.host_name, &self.stream)?;
        Ok((hub, Some(engine)))
    }
}

/// The service connection string of the `iothubowner` policy of `hub`.
pub fn connection_string(hub: &Hub, host_name: &str, https_port: u16) -> anyhow::Result<String> {
    let owner = hub
        .policies()?
        .into_iter()
        .find(|p| p.name == "iothubowner")
        .ok_or_else(|| anyhow::anyhow!("the hub has no iothubowner policy"))?;
    let host = if https_port == 443 {
        host_name.to_owned()
    } else {
        format!("{host_name}:{https_port}")
    };
    Ok(outpost_core::ConnectionString::service(&host, &owner.name, &owner.primary_key).to_string())
}

impl RunningHub {
    /// Opens the hub and starts serving; returns once both listeners are bound.
    pub async fn start(config: &HubConfig) -> anyhow::Result<Self> {
        // The directory holds the CA key and the database of every identity's keys: its user's only.
        outpost_store::host::private_dir(&config.data_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the data directory {}: {e}",
                config.data_dir.display()
            )
        })?;
        let (mut hub, shared) = config.open_hub()?;
        let metrics_listener = match config.metrics_bind {
            Some(addr) => {
                hub = hub.with_metrics(crate::metrics::HubMetrics::new(&config.host_name)?);
                Some(bind(addr.ip(), addr.port(), "metrics").await?)
            }
            None => None,
        };
        let replica_notices = match &config.database {
            Some(url) => {
                let (replicas, notices) = crate::replicas::Replicas::start(url)?;
                hub = hub.with_replicas(replicas);
                Some(notices)
            }
            None => None,
        };
        let hub = Arc::new(hub);
        let certificates = Arc::new(hub_certificates(config, shared.as_deref())?);
        let tls = certificates_tls(&certificates)?;

        let mqtt_listener = bind(config.bind, config.mqtt_port, "MQTT").await?;
        let https_listener = bind(config.bind, config.https_port, "HTTPS").await?;
        let provisioning_listener = match &config.provisioning {
            Some(listener) => {
                Some(bind(listener.bind, listener.mqtt_port, "provisioning MQTT").await?)
            }
            None => None,
        };
        let provisioning_addr = provisioning_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let provisioning_https = match &config.provisioning {
            Some(ProvisioningListener {
                bind: address,
                https_port: Some(port),
                ..
            }) => Some(bind(*address, *port, "provisioning HTTPS").await?),
            _ => None,
        };
        let amqp_listener = match config.amqp_port {
            Some(port) => Some(bind(config.bind, port, "AMQP").await?),
            None => None,
        };
        let mqtt_addr = mqtt_listener.local_addr()?;
        let https_addr = https_listener.local_addr()?;
        let amqp_addr = amqp_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        if let Some(listener) = provisioning_https {
            let backend = Arc::new(crate::provisioning::head::HubProvisioning(hub.clone()));
            // Requesting client certificates lets devices attest with X.509 on REST too.
            let provisioning_tls =
                certificates.servers()[0].tls_config_requesting_client_certificates()?;
            tasks.spawn(outpost_https::serve(
                listener,
                TlsAcceptor::from(provisioning_tls),
                crate::provisioning::rest::router(backend),
                config.https_limits.clone(),
                stopped(shutdown_rx.clone()),
            ));
        }
        if let Some(listener) = provisioning_listener {
            let backend = Arc::new(crate::provisioning::head::HubProvisioning(hub.clone()));
            // Requesting client certificates (not requiring them) lets devices attest with X.509.
            let provisioning_tls =
                certificates.servers()[0].tls_config_requesting_client_certificates()?;
            let provisioning_config =
                outpost_mqtt::provisioning::ProvisioningConfig::new(provisioning_tls);
            tasks.spawn(outpost_mqtt::provisioning::serve(
                listener,
                provisioning_config,
                backend,
                stopped(shutdown_rx.clone()),
            ));
        }
        if let Some(notices) = replica_notices {
            let stop = stopped(shutdown_rx.clone());
            let hub = hub.clone();
            tasks.spawn(async move {
                tokio::select! {
                    () = crate::replicas::serve(hub, notices) => {}
                    () = stop => {}
                }
            });
        }

        // The MQTT and HTTPS listeners ask for client certificates (X.509 devices, `x509_auth`, and edge devices
        // calling the REST API with theirs, `rest`); AMQP does not.
        let mqtt_tls = certificates.servers()[0].tls_config_requesting_client_certificates()?;
        let mut mqtt_config = outpost_mqtt::ServerConfig::new(mqtt_tls);
        mqtt_config.session_expiry = config.session_expiry;
        let max_packet_size = mqtt_config.max_packet_size;
        let devices = Arc::new(HubDevices(hub.clone()));
        let stop = stopped(shutdown_rx.clone());
        // MQTT over WebSocket: the HTTPS listener upgrades, the MQTT server serves.
        let (websockets, handed) = outpost_mqtt::server::handoff();
        tasks.spawn(async move {
            let served = outpost_mqtt::server::serve_with_handoff(
                mqtt_listener,
                mqtt_config,
                devices,
                handed,
                stop,
            );
            if let Err(error) = served.await {
                tracing::error!(%error, "the MQTT listener stopped");
            }
        });
        let mut https_routes = crate::rest::router(hub.clone()).merge(
            outpost_https::websocket::mqtt_over_websocket(websockets, max_packet_size),
        );
        if let Some(listener) = amqp_listener {
            // AMQP over WebSocket: the HTTPS listener upgrades, the AMQP server serves (under its cap).
            let (amqp_websockets, amqp_handed) = outpost_amqp::handoff();
            let amqp_config = outpost_amqp::AmqpConfig::new(tls.clone(), config.host_name.clone());
            https_routes = https_routes.merge(crate::rest::amqp_over_websocket(
                amqp_websockets,
                amqp_config.max_frame_size as usize,
            ));
            let backend = Arc::new(crate::eventhub::HubService(hub.clone()));
            let stop = stopped(shutdown_rx.clone());
            tasks.spawn(async move {
                let served = outpost_amqp::serve_with_handoff(
                    listener,
                    amqp_config,
                    backend,
                    amqp_handed,
                    stop,
                );
                if let Err(error) = served.await {
                    tracing::error!(%error, "the AMQP listener stopped");
                }
            });
        }
        let https_tls = certificates.servers()[0].tls_config_requesting_client_certificates()?;
        tasks.spawn(outpost_https::serve(
            https_listener,
            TlsAcceptor::from(https_tls),
            https_routes,
            config.https_limits.clone(),
            stopped(shutdown_rx.clone()),
        ));
        let metrics_addr = match metrics_listener {
            Some(listener) => {
                let addr = listener.local_addr()?;
                let renewal = certificates.clone();
                tasks.spawn(crate::metrics::serve(
                    hub.clone(),
                    move || renewal.expiries(),
                    listener,
                    stopped(shutdown_rx.clone()),
                ));
                Some(addr)
            }
            None => None,
        };
        // Automatic configurations are evaluated by one task on each replica (see crate::fleet).
        tasks.spawn(hub.configurations().clone().run(shutdown_rx.clone()));
        // Rollouts are driven by the replica holding each one's lease (see crate::fleet::rollout::driver).
        tasks.spawn(
            hub.configurations()
                .clone()
                .run_rollouts(shutdown_rx.clone()),
        );
        tasks.spawn(prune_events(
            hub.clone(),
            config.event_retention,
            shutdown_rx.clone(),
        ));
        let renewal = certificates.clone();
        let stop = stopped(shutdown_rx.clone());
        tasks.spawn(async move {
            tokio::select! {
                () = renewal.run(tokio::time::sleep) => {}
                () = stop => {}
            }
        });
        tasks.spawn(crate::jobs::driver::run(
            hub.clone(),
            crate::jobs::driver::JobSettings::default(),
            shutdown_rx.clone(),
        ));
        let pusher = hub.clone();
        let mut stop = shutdown_rx;
        tasks.spawn(async move {
            // Cloud-to-device messages wait for a device that listens; this retries the ones not in flight,
            // after removing those whose expiry time passed (with their feedback).
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {
                        let messaging = pusher.messaging();
                        if let Err(error) = messaging.expire_c2d(chrono::Utc::now()).await {
                            tracing::warn!(%error, "cannot expire cloud-to-device messages");
                        }
                        messaging.push_all_c2d().await;
                    }
                    _ = stop.changed() => break,
                }
            }
        });
        tracing::info!(%mqtt_addr, %https_addr, ?amqp_addr, ?metrics_addr, host_name = %config.host_name, "hub listening");
        Ok(Self {
            hub,
            mqtt_addr,
            https_addr,
            amqp_addr,
            metrics_addr,
            provisioning_addr,
            shutdown,
            tasks,
            certificates,
        })
    }

    /// `(name, notAfter in Unix seconds)` of the hub's certificates: each CA of `ca.pem` (`CA Outpost hub CA`) and
    /// the server certificate (`hub server`). What the certificate-expiry metric reads.
    pub fn certificate_expiries(&self) -> Vec<(String, i64)> {
        self.certificates.expiries()
    }

    /// Stops the listeners and waits for them.
    pub async fn shutdown(mut self) {
        self.hub.stop_long_polls();
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The hub's CA (`ca.pem`, `ca.key`, renewed ones in the same files) and its listeners' server certificate
/// (written to `server.pem`), renewed together; a CA found due or expired at start is renewed before listening.
///
/// With a `shared` database (replicas) both come from it ([`crate::shared_identity`]): the first replica stores
/// its own, the others write the stored CA into their data directory and present the stored server certificate
/// while it is not due; the CA is then not renewed by replicas, the server certificate is, by each on its own.
fn hub_certificates(
    config: &HubConfig,
    shared: Option<&dyn Engine>,
) -> anyhow::Result<CertificateRenewal> {
    let now = outpost_pki::unix_now();
    let open = || -> anyhow::Result<CertificateAuthority> {
        Ok(CertificateAuthority::open(
            &config.data_dir,
            "Outpost hub CA",
            config.certificates.ca,
            now,
        )?)
    };
    let ca = Arc::new(match shared {
        Some(engine) => crate::shared_identity::share_ca(engine, &config.data_dir, open)?.0,
        None => open()?,
    });
    if ca.current().renewal_due(now) && shared.is_none() {
        ca.renew(now)?;
    }
    let mut names = Vec::new();
    if config.host_name != "localhost" {
        names.push("localhost");
    }
    // Devices check the provisioning host's name against the same certificate.
    if let Some(provisioning) = &config.provisioning {
        if provisioning.host_name != config.host_name {
            names.push(provisioning.host_name.as_str());
        }
    }
    let others: &[&str] = &names;
    let file = config.data_dir.join("server.pem");
    let issue = || {
        ServerCertificate::issue(
            &ca,
            "hub server",
            &config.host_name,
            others,
            config.certificates.server,
            file.clone(),
            now,
        )
    };
    let Some(engine) = shared else {
        return Ok(CertificateRenewal::new(
            ca.clone(),
            vec![Arc::new(issue()?)],
        ));
    };
    let adopt = |stored: &crate::shared_identity::StoredServerCertificate| {
        ServerCertificate::adopt(
            "hub server",
            &config.host_name,
            others,
            config.certificates.server,
            file.clone(),
            &stored.chain,
            &stored.key,
        )
    };
    // Stored by the names it covers: a replica that also names the provisioning host needs a certificate that does.
    let stored_as = match &config.provisioning {
        Some(provisioning) if provisioning.host_name != config.host_name => {
            format!("{}+{}", config.host_name, provisioning.host_name)
        }
        _ => config.host_name.clone(),
    };
    let stored = crate::shared_identity::stored_server_certificate(engine, &stored_as)?;
    // Issued by the shared CA (its chain leads to the CA's key) and not due: every replica presents it.
    let usable = stored.clone().filter(|stored| {
        outpost_pki::inspect_pem(&stored.chain).is_ok_and(|chain| {
            chain.len() > 1
                && chain[1].public_key == ca.current().public_key
                && !chain[0].renewal_due(now)
        })
    });
    let server = if let Some(stored) = usable {
        adopt(&stored)?
    } else {
        let issued = ca.issue(
            "hub server",
            &config.host_name,
            others,
            config.certificates.server,
            now,
        )?;
        let ours = crate::shared_identity::StoredServerCertificate {
            chain: issued.chain_pem,
            key: issued.key_pem,
        };
        // None stored: the first replica's wins (the others adopt it); one stored but due or of another CA:
        // replaced.
        let replace = stored.is_some();
        if crate::shared_identity::store_server_certificate(engine, &stored_as, &ours, replace)? {
            adopt(&ours)?
        } else {
            let theirs = crate::shared_identity::stored_server_certificate(engine, &stored_as)?
                .unwrap_or(ours);
            adopt(&theirs)?
        }
    };
    Ok(CertificateRenewal::new(ca, vec![Arc::new(server)]).with_shared_ca())
}

/// The TLS configuration both listeners share: it presents the hub's server certificate as renewed.
fn certificates_tls(
    certificates: &CertificateRenewal,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    Ok(certificates.servers()[0].tls_config()?)
}

async fn bind(ip: IpAddr, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind((ip, port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for {what} on {ip}:{port}: {e}"))
}

async fn stopped(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Keeps the event stream within its retention until shut down: a few statements of at most
/// [`PRUNE_BATCH`](crate::messaging::PRUNE_BATCH) deletes each, yielding between them so that devices and
/// readers get the database in between.
async fn prune_events(
    hub: Arc<Hub>,
    retention: crate::messaging::EventRetention,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(retention.prune_interval()) => {}
            _ = shutdown.changed() => return,
        }
        let mut pruned = 0;
        while !*shutdown.borrow() {
            match hub
                .messaging()
                .prune_events(&retention, chrono::Utc::now())
                .await
            {
                Ok(count) => {
                    pruned += count;
                    if count < crate::messaging::PRUNE_BATCH {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot prune the event stream");
                    break;
                }
            }
        }
        if pruned > 0 {
            tracing::debug!(pruned, "pruned the event stream");
        }
    }
}
