//! `outpost-bench hub`: the hub's two figures of merit, each measured on a fresh hub of its own so that one
//! does not leave memory or state behind for the other.
//!
//! - [`latency`]: desired-patch propagation, service `PATCH /twins/{d}` → the device's notification, at a paced
//!   rate over many devices.
//! - [`connections`]: how many concurrent device connections the hub holds, and its memory per connection.

mod connections;
mod latency;

use std::time::Duration;

use anyhow::bail;

use crate::hub_process::HubProcess;
use crate::report::{Part, Section};
use crate::{Bench, Profile};

use connections::ConnectionParams;
use latency::LatencyParams;

/// Options of `outpost-bench hub`; each one left out takes the profile's default.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct HubArgs {
    /// Devices that receive desired patches [default: 100; --quick: 10].
    #[arg(long)]
    pub devices: Option<usize>,
    /// Desired patches per second, round-robin over the devices [default: 1000].
    #[arg(long)]
    pub rate: Option<u32>,
    /// Seconds of sending [default: 10; --quick: 2].
    #[arg(long)]
    pub duration: Option<u64>,
    /// Concurrent PATCH senders, each on its own keep-alive HTTPS connection [default: 32].
    #[arg(long)]
    pub senders: Option<usize>,
    /// Connection counts to reach in turn [default: 1000,5000,10000; --quick: 100,500].
    #[arg(long, value_delimiter = ',')]
    pub steps: Option<Vec<usize>>,
    /// Connections being opened at once [default: 64].
    #[arg(long)]
    pub connect_concurrency: Option<usize>,
    /// Connections per loopback source address before the next address is used [default: 20000].
    #[arg(long)]
    pub per_source: Option<usize>,
    /// Skip the desired-patch latency benchmark.
    #[arg(long)]
    pub skip_latency: bool,
    /// Skip the connections benchmark.
    #[arg(long)]
    pub skip_connections: bool,
    /// Run the latency part's hub on this PostgreSQL database (`postgres://USER@HOST:PORT/DB`, an empty
    /// database: its devices are created there) instead of SQLite; the connections part stays on SQLite.
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// Hub replicas on `--database` for the latency part: devices connect to them in turn, and PATCHes go
    /// through them in turn [default: 1].
    #[arg(long)]
    pub replicas: Option<usize>,
}

impl HubArgs {
    fn latency(&self, profile: Profile) -> anyhow::Result<Option<LatencyParams>> {
        if self.skip_latency {
            return Ok(None);
        }
        let quick = profile == Profile::Quick;
        let params = LatencyParams {
            devices: self.devices.unwrap_or(if quick { 10 } else { 100 }),
            rate: self.rate.unwrap_or(1000),
            duration: Duration::from_secs(self.duration.unwrap_or(if quick { 2 } else { 10 })),
            senders: self.senders.unwrap_or(32),
            database: self.database.clone(),
            replicas: self.replicas.unwrap_or(1),
        };
        if params.devices == 0 || params.rate == 0 || params.senders == 0 || params.replicas == 0 {
            bail!("--devices, --rate, --senders and --replicas must be at least 1");
        }
        if params.replicas > 1 && params.database.is_none() {
            bail!("--replicas above 1 needs --database (replicas share a PostgreSQL database)");
        }
        if params.replicas > 16 {
            bail!("--replicas: at most 16");
        }
        if params.duration.is_zero() || params.duration > Duration::from_mins(2) {
            bail!("--duration must be between 1 and 120 seconds");
        }
        Ok(Some(params))
    }

    fn connections(&self, profile: Profile) -> anyhow::Result<Option<ConnectionParams>> {
        if self.skip_connections {
            return Ok(None);
        }
        let default_steps = match profile {
            Profile::Quick => vec![100, 500],
            Profile::Full => vec![1_000, 5_000, 10_000],
        };
        let mut steps = self.steps.clone().unwrap_or(default_steps);
        steps.sort_unstable();
        steps.dedup();
        if steps.first() == Some(&0) || steps.is_empty() {
            bail!("--steps must be connection counts of at least 1");
        }
        if steps.last().is_some_and(|&n| n > 200_000) {
            bail!("--steps above 200,000 connections are not supported");
        }
        let params = ConnectionParams {
            steps,
            concurrency: self.connect_concurrency.unwrap_or(64).max(1),
            per_source: self.per_source.unwrap_or(20_000).max(1),
        };
        Ok(Some(params))
    }
}

/// Runs the hub benchmarks and returns their figures.
pub async fn run(bench: &Bench, args: &HubArgs) -> anyhow::Result<Section> {
    let latency = args.latency(bench.profile)?;
    let connections = args.connections(bench.profile)?;
    let mut parts = Vec::new();

    if let Some(params) = &latency {
        eprintln!(
            "hub: desired-patch latency: {} devices, {} updates/s for {:?}, {} senders, {}",
            params.devices,
            params.rate,
            params.duration,
            params.senders,
            params.storage()
        );
        let serve_args = params
            .database
            .iter()
            .flat_map(|url| ["--database".to_owned(), url.clone()])
            .collect::<Vec<_>>();
        // One after the other: the first creates the hub's identity in the database, the others load it.
        let mut hubs = Vec::new();
        for _ in 0..params.replicas {
            let hub = HubProcess::start_with(&bench.outpost, serve_args.clone()).await?;
            eprintln!("hub: started pid {} on {}", hub.pid(), hub.host());
            hubs.push(hub);
        }
        let figures = latency::run(&mut hubs, params).await;
        for hub in hubs {
            hub.stop().await;
        }
        parts.extend(figures?.to_parts(params));
    }

    if let Some(params) = &connections {
        eprintln!("hub: connections in steps of {:?}", params.steps);
        let mut hub = HubProcess::start(&bench.outpost).await?;
        eprintln!("hub: started pid {} on {}", hub.pid(), hub.host());
        let figures = connections::run(&mut hub, params).await;
        hub.stop().await;
        parts.extend(figures?.to_parts(params, &bench.open_files));
    }

    if parts.is_empty() {
        parts.push(Part::Text(
            "Nothing measured: both parts were skipped.".into(),
        ));
    }
    Ok(Section {
        id: "hub",
        title: "Hub: desired-patch latency and device connections".into(),
        parts,
    })
}
