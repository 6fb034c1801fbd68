//! `outpost hub`: run the hub, and print its connection string.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use outpost_core::units::{parse_bytes, parse_duration};
use outpost_hub::messaging::EventRetention;
use outpost_hub::server::{CertificateLifetimes, HttpsLimits, DEFAULT_SESSION_EXPIRY};
use outpost_hub::{HubConfig, RunningHub};
use serde::{Deserialize, Serialize};

/// The `outpost hub` subcommands.
#[derive(Subcommand)]
pub enum HubCommand {
    /// Run the hub: the REST service API (HTTPS) and the device endpoint (MQTT over TLS).
    Serve {
        /// Where the hub keeps its database and certificates (created on first start).
        #[arg(long)]
        data_dir: PathBuf,
        /// The name devices and services use for the hub (a DNS name or an IP address).
        #[arg(long, default_value = "localhost")]
        hostname: String,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: IpAddr,
        /// The MQTT/TLS port.
        #[arg(long, default_value_t = 8883)]
        mqtt_port: u16,
        /// The HTTPS port.
        #[arg(long, default_value_t = 443)]
        https_port: u16,

        // The device-to-cloud event stream (`GET /events`, `outpost monitor`).
        /// How long device-to-cloud events are kept (`90s`, `30m`, `12h`, `7d`); older ones are pruned in the
        /// background. A reader asking for events older than those kept gets the oldest kept.
        #[arg(long, default_value = "1d", value_parser = parse_duration)]
        event_retention: Duration,
        /// The most event JSON kept (`500MiB`, `1GiB`, or bytes); past it the oldest events are pruned.
        #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
        event_max_bytes: u64,

        // The HTTPS listener's limits (docs/operations.md).
        /// HTTPS connections served at once; past this, new ones wait to be accepted.
        #[arg(long, default_value_t = 10_000)]
        https_max_connections: usize,
        /// Seconds an HTTPS client gets to send a request's headers (an idle HTTP/1.1 connection is closed
        /// after this long too).
        #[arg(long, default_value_t = 10)]
        https_header_timeout_secs: u64,
        /// Seconds an HTTPS connection may stay open without a request in flight.
        #[arg(long, default_value_t = 60)]
        https_idle_timeout_secs: u64,

        /// How long the persistent session (unacknowledged publishes) of an MQTT client that went away is kept
        /// in memory (`12h`, `7d`); its subscriptions stay stored for as long as the identity exists.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        session_expiry: Duration,

        /// Serve Prometheus metrics at `http://ADDR:PORT/metrics` (plain HTTP; off unless given).
        #[arg(long, value_name = "ADDR:PORT")]
        metrics_bind: Option<std::net::SocketAddr>,

        // Certificates (docs/operations.md, "Certificates that renew themselves").
        /// How long a new CA of the hub is valid (`365d`; `90s`, `30m`, `12h` for tests); renewed at 80 % of
        /// its life, the old one staying in ca.pem until it expires.
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        ca_lifetime: Duration,
        /// How long the listeners' server certificate is valid (`90d`; `30s` for tests); renewed at 80 % of
        /// its life without a restart.
        #[arg(long, default_value = "90d", value_parser = parse_duration)]
        server_cert_lifetime: Duration,
    },
    /// Print the service connection string of the `iothubowner` policy.
    ConnectionString {
        /// The hub's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// What `serve` remembers in the data directory so that `connection-string` can say how to reach the hub.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServedAs {
    host_name: String,
    https_port: u16,
}

const SERVED_AS: &str = "hub.json";

pub async fn run(command: HubCommand) -> anyhow::Result<()> {
    match command {
        HubCommand::Serve {
            data_dir,
            hostname,
            bind,
            mqtt_port,
            https_port,
            event_retention,
            event_max_bytes,
            https_max_connections,
            https_header_timeout_secs,
            https_idle_timeout_secs,
            session_expiry,
            metrics_bind,
            ca_lifetime,
            server_cert_lifetime,
        } => {
            let config = HubConfig {
                data_dir,
                host_name: hostname,
                bind,
                mqtt_port,
                https_port,
                event_retention: EventRetention {
                    max_age: event_retention,
                    max_bytes: event_max_bytes,
                },
                https_limits: HttpsLimits {
                    max_connections: https_max_connections.max(1),
                    header_read_timeout: Duration::from_secs(https_header_timeout_secs.max(1)),
                    idle_timeout: Duration::from_secs(https_idle_timeout_secs.max(1)),
                    ..HttpsLimits::default()
                },
                session_expiry,
                metrics_bind,
                certificates: CertificateLifetimes {
                    ca: ca_lifetime,
                    server: server_cert_lifetime,
                },
            };
            serve(&config).await
        }
        HubCommand::ConnectionString { data_dir } => {
            let served: ServedAs = read_served_as(&data_dir)?;
            let config = HubConfig {
                data_dir,
                host_name: served.host_name,
                bind: IpAddr::from([127, 0, 0, 1]),
                mqtt_port: 8883,
                https_port: served.https_port,
                event_retention: EventRetention::default(),
                https_limits: HttpsLimits::default(),
                session_expiry: DEFAULT_SESSION_EXPIRY,
                metrics_bind: None,
                certificates: CertificateLifetimes::default(),
            };
            println!("{}", config.owner_connection_string()?);
            Ok(())
        }
    }
}

fn write_served_as(data_dir: &Path, served: &ServedAs) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    std::fs::write(data_dir.join(SERVED_AS), serde_json::to_vec_pretty(served)?)
        .context("cannot write hub.json in the data directory")
}

async fn serve(config: &HubConfig) -> anyhow::Result<()> {
    // Written before the listeners open, so that whoever sees them open can ask for the connection string.
    if config.https_port != 0 {
        let served = ServedAs {
            host_name: config.host_name.clone(),
            https_port: config.https_port,
        };
        write_served_as(&config.data_dir, &served)?;
    }
    raise_open_files_limit();
    let running = RunningHub::start(config).await?;
    let served = ServedAs {
        host_name: config.host_name.clone(),
        https_port: running.https_addr.port(),
    };
    if config.https_port == 0 {
        write_served_as(&config.data_dir, &served)?;
    }
    let connection_string =
        outpost_hub::server::connection_string(&running.hub, &config.host_name, served.https_port)?;
    println!("Outpost hub {}", env!("CARGO_PKG_VERSION"));
    println!("  MQTT   {}", running.mqtt_addr);
    println!("  HTTPS  {}", running.https_addr);
    if let Some(metrics) = running.metrics_addr {
        println!("  METRICS http://{metrics}/metrics");
    }
    println!("  CA     {}", config.data_dir.join("ca.pem").display());
    println!("Service connection string:");
    println!("{connection_string}");
    shutdown_signal().await;
    eprintln!("shutting down");
    running.shutdown().await;
    Ok(())
}

/// Raises the soft open-files limit to the hard limit (every connection holds a descriptor) and logs the figure.
pub fn raise_open_files_limit() {
    match outpost_store::host::raise_open_files_limit() {
        Ok(limit) => tracing::info!(limit, "open-files soft limit raised to the hard limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-files limit"),
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let Ok(mut terminate) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

fn read_served_as(data_dir: &Path) -> anyhow::Result<ServedAs> {
    let path = data_dir.join(SERVED_AS);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} not found: has `outpost hub serve --data-dir {}` run?",
            path.display(),
            data_dir.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
}
