//! Device connections: how many the hub holds at once, and what each costs it in memory.
//!
//! The devices are registered first, then the hub's idle memory is read; connections are opened in steps and,
//! after each, the hub's `VmRSS` and open descriptors are read from `/proc`. Memory per connection is
//! (RSS − idle RSS) / connections. Each connection is TLS, CONNECT (CleanSession=0) and one subscription to
//! desired patches, as a device that watches its twin holds it; the harness only keeps the socket. The first
//! step that cannot be reached ends the run, and the figures say why.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::device::{DeviceCredentials, DeviceEndpoint, HeldConnection, HoldError};
use crate::hub_process::HubProcess;
use crate::report::{Part, Table};
use crate::service::{create_devices, ServiceApi};
use crate::stats::seconds;
use crate::system::{group, OpenFilesLimit};

/// Requests in flight while registering devices.
const REGISTRY_CONCURRENCY: usize = 16;

/// Time for the hub to finish what the last connections started (and for its allocator to settle) before
/// its memory is read.
const SETTLE: Duration = Duration::from_secs(2);

/// What the connections benchmark does.
#[derive(Debug, Clone)]
pub struct ConnectionParams {
    /// Connection counts to reach in turn, ascending.
    pub steps: Vec<usize>,
    /// Connections being opened at once.
    pub concurrency: usize,
    /// Connections from one loopback source address before the next is used.
    pub per_source: usize,
}

/// The hub after one step.
struct Step {
    target: usize,
    held: usize,
    /// Connections opened during this step.
    opened: usize,
    hub_fds: usize,
    rss_kib: u64,
    opened_in: Duration,
}

/// The figures of a connections run.
pub struct ConnectionFigures {
    devices: usize,
    registry: Duration,
    idle_rss_kib: u64,
    idle_fds: usize,
    steps: Vec<Step>,
    stopped: Option<String>,
    sources: usize,
}

/// The loopback source address of the `n`th group of connections: 127.0.2.1, 127.0.2.2, ...
fn source_address(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1 + (n % 254) as u8))
}

/// Registers the devices, then opens connections step by step, reading the hub's memory after each.
pub async fn run(
    hub: &mut HubProcess,
    params: &ConnectionParams,
) -> anyhow::Result<ConnectionFigures> {
    let most = params.steps.last().copied().unwrap_or(0);
    let api = Arc::new(ServiceApi::new(hub, REGISTRY_CONCURRENCY)?);
    let ids = (0..most).map(|i| format!("conn-{i:06}")).collect();
    let created = create_devices(&api, ids, REGISTRY_CONCURRENCY).await?;
    drop(api);
    eprintln!(
        "hub: {} devices registered in {}",
        created.devices.len(),
        seconds(created.elapsed)
    );
    let endpoint = DeviceEndpoint::new(hub.mqtt_addr(), &hub.host(), &hub.ca_pem())?;

    tokio::time::sleep(SETTLE).await;
    let mut figures = ConnectionFigures {
        devices: created.devices.len(),
        registry: created.elapsed,
        idle_rss_kib: hub.rss_kib()?,
        idle_fds: hub.open_fds()?,
        steps: Vec::new(),
        stopped: None,
        sources: 0,
    };
    let mut held: Vec<HeldConnection> = Vec::with_capacity(most);
    for &target in &params.steps {
        let started = Instant::now();
        let first = held.len();
        let (mut opened, error) =
            open(&endpoint, &created.devices[first..target], first, params).await;
        held.append(&mut opened);
        let opened_in = started.elapsed();
        figures.sources = held.len().div_ceil(params.per_source);
        tokio::time::sleep(SETTLE).await;
        if let Err(dead) = hub.check_alive() {
            figures.stopped = Some(format!(
                "step {}: the hub died with {} connections open: {dead:#}",
                group(target as u64),
                group(held.len() as u64)
            ));
            break;
        }
        figures.steps.push(Step {
            target,
            held: held.len(),
            opened: held.len() - first,
            hub_fds: hub.open_fds()?,
            rss_kib: hub.rss_kib()?,
            opened_in,
        });
        eprintln!(
            "hub: {} connections open in {} (hub RSS {} KiB)",
            held.len(),
            seconds(opened_in),
            figures.steps.last().map_or(0, |s| s.rss_kib)
        );
        if let Some(error) = error {
            let mut why = error.explain();
            if hub.logged("Too many open files") {
                why.push_str("; the hub logged \"Too many open files\" (its RLIMIT_NOFILE)");
            }
            figures.stopped = Some(format!(
                "step {}: {} connections open when one failed: {why}",
                group(target as u64),
                group(held.len() as u64)
            ));
            break;
        }
    }
    drop(held);
    Ok(figures)
}

/// Opens a connection for each of `devices` (connection numbers from `first`), `params.concurrency` at a
/// time; stops starting new ones at the first failure.
async fn open(
    endpoint: &DeviceEndpoint,
    devices: &[DeviceCredentials],
    first: usize,
    params: &ConnectionParams,
) -> (Vec<HeldConnection>, Option<HoldError>) {
    let mut pending = devices.iter().cloned().enumerate();
    let mut tasks = JoinSet::new();
    let spawn = |tasks: &mut JoinSet<_>, (k, device): (usize, DeviceCredentials)| {
        let endpoint = endpoint.clone();
        let source = source_address((first + k) / params.per_source);
        tasks.spawn(async move { endpoint.hold(&device, source).await });
    };
    for next in pending.by_ref().take(params.concurrency) {
        spawn(&mut tasks, next);
    }
    let mut held = Vec::with_capacity(devices.len());
    let mut error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(connection)) => held.push(connection),
            Ok(Err(e)) => {
                error.get_or_insert(e);
            }
            Err(panic) => {
                error.get_or_insert(HoldError::Io {
                    stage: "connecting task",
                    error: std::io::Error::other(panic.to_string()),
                });
            }
        }
        if error.is_none() {
            if let Some(next) = pending.next() {
                spawn(&mut tasks, next);
            }
        }
    }
    (held, error)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl ConnectionFigures {
    /// The figures as report parts.
    pub fn to_parts(&self, params: &ConnectionParams, open_files: &OpenFilesLimit) -> Vec<Part> {
        let steps: Vec<String> = params.steps.iter().map(|&s| group(s as u64)).collect();
        let mut parts = vec![
            Part::Heading("Concurrent device connections and memory per connection".into()),
            Part::Text(format!(
                "{devices} devices are registered (in {registry}), then connections are opened in steps \
                 ({steps}), {concurrency} at a time, from loopback source addresses 127.0.2.x ({per_source} \
                 per address; {sources} used). Each is TLS, CONNECT (CleanSession=0, keep-alive 0) and one \
                 SUBSCRIBE to desired patches. {settle} s after each step the hub's `VmRSS` and open \
                 descriptors are read from `/proc/<pid>/`; memory per connection is (RSS − idle RSS) / \
                 connections. Open files limit of the harness and the hub: {open_files}.",
                devices = group(self.devices as u64),
                registry = seconds(self.registry),
                steps = steps.join(" → "),
                concurrency = params.concurrency,
                per_source = group(params.per_source as u64),
                sources = self.sources,
                settle = SETTLE.as_secs(),
            )),
        ];
        let mut table = Table::new(&[
            "connections",
            "hub open fds",
            "hub RSS",
            "RSS − idle",
            "per connection",
            "opening rate",
        ]);
        table.row(vec![
            "0 (idle)".into(),
            group(self.idle_fds as u64),
            mib(self.idle_rss_kib),
            "–".into(),
            "–".into(),
            "–".into(),
        ]);
        for step in &self.steps {
            let grown = step.rss_kib.saturating_sub(self.idle_rss_kib);
            let per = if step.held == 0 {
                "–".into()
            } else {
                format!("{:.1} KiB", grown as f64 / step.held as f64)
            };
            let held = if step.held == step.target {
                group(step.held as u64)
            } else {
                format!(
                    "{} of {}",
                    group(step.held as u64),
                    group(step.target as u64)
                )
            };
            table.row(vec![
                held,
                group(step.hub_fds as u64),
                mib(step.rss_kib),
                mib(grown),
                per,
                format!(
                    "{:.0}/s",
                    step.opened as f64 / step.opened_in.as_secs_f64().max(1e-9)
                ),
            ]);
        }
        parts.push(Part::Table(table));
        parts.push(Part::Text(match &self.stopped {
            Some(why) => format!("Stopped at {why}"),
            None => format!(
                "Every step was held; the largest, {}, is the most this run tried.",
                steps.last().map_or("0", String::as_str)
            ),
        }));
        parts
    }
}
