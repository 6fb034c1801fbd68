//! `outpost hub`: run the hub, and print its connection string.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
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
        } => {
            let config = HubConfig {
                data_dir,
                host_name: hostname,
                bind,
                mqtt_port,
                https_port,
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
    println!("  CA     {}", config.data_dir.join("ca.pem").display());
    println!("Service connection string:");
    println!("{connection_string}");
    shutdown_signal().await;
    eprintln!("shutting down");
    running.shutdown().await;
    Ok(())
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
