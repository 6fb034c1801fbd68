//! `outpost-bench eventhub`: the Event Hubs-compatible endpoint (issue 16) under device telemetry. One hub with
//! AMQP on a free port; 1,000 devices created over REST and connected over MQTT; one consumer per partition
//! attached from the latest event ([`consumer`]); then two phases on the same connections, each measured apart:
//!
//! - [`throughput`]: devices publish QoS 1 telemetry as fast as the hub acknowledges, and the consumers count
//!   events/s per partition and in total;
//! - [`latency`]: devices publish at a steady rate, and each message is timed from its PUBACK to its event.
//!
//! [`ledger`] is what the devices' and the consumers' tasks share.

mod consumer;
mod latency;
mod ledger;
mod throughput;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use outpost_mqtt::Client;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::device::{client_tls, connect_all, DeviceEndpoint};
use crate::hub_process::HubProcess;
use crate::report::{Part, Section, Table};
use crate::service::{create_devices, ServiceApi};
use crate::stats::{millis, seconds, LatencySummary};
use crate::system::{group, CpuTimes};
use crate::{Bench, Profile};

use consumer::{EventHubConnection, PartitionConsumer};
use latency::{LatencyFigures, LatencyParams};
use ledger::Ledger;
use throughput::{ThroughputFigures, ThroughputParams};

/// Requests in flight while creating and connecting devices.
const SETUP_CONCURRENCY: usize = 16;

/// Options of `outpost-bench eventhub`; each one left out takes the profile's default.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EventhubArgs {
    /// Devices publishing telemetry [default: 1000; --quick: 50].
    #[arg(long)]
    pub devices: Option<usize>,
    /// Partitions of the hub's event stream, one consumer each [default: 4].
    #[arg(long)]
    pub partitions: Option<u32>,
    /// QoS 1 publishes in flight per device in the throughput phase [default: 2].
    #[arg(long)]
    pub in_flight: Option<usize>,
    /// Messages per second over all devices in the latency phase, well under what the hub acknowledges
    /// (see docs/benchmarks.md) [default: 200].
    #[arg(long)]
    pub rate: Option<u32>,
    /// Seconds of each phase (the throughput phase's measured window; it warms up 2 s first) [default: 10;
    /// --quick: 2].
    #[arg(long)]
    pub duration: Option<u64>,
    /// Skip the throughput phase.
    #[arg(long)]
    pub skip_throughput: bool,
    /// Skip the latency phase.
    #[arg(long)]
    pub skip_latency: bool,
}

/// The resolved parameters of a run.
#[derive(Debug, Clone)]
struct Params {
    devices: usize,
    partitions: u32,
    throughput: Option<ThroughputParams>,
    latency: Option<LatencyParams>,
}

impl EventhubArgs {
    fn params(&self, profile: Profile) -> anyhow::Result<Params> {
        let quick = profile == Profile::Quick;
        let duration = Duration::from_secs(self.duration.unwrap_or(if quick { 2 } else { 10 }));
        if duration.is_zero() || duration > Duration::from_mins(2) {
            bail!("--duration must be between 1 and 120 seconds");
        }
        let params = Params {
            devices: self.devices.unwrap_or(if quick { 50 } else { 1000 }),
            partitions: self.partitions.unwrap_or(4),
            throughput: (!self.skip_throughput).then(|| ThroughputParams {
                in_flight: self.in_flight.unwrap_or(2),
                warm_up: Duration::from_secs(if quick { 1 } else { 2 }),
                window: duration,
            }),
            latency: (!self.skip_latency).then(|| LatencyParams {
                rate: self.rate.unwrap_or(200),
                duration,
            }),
        };
        if params.devices == 0 || !(1..=32).contains(&params.partitions) {
            bail!("--devices must be at least 1 and --partitions between 1 and 32");
        }
        if self.in_flight == Some(0) || self.rate == Some(0) {
            bail!("--in-flight and --rate must be at least 1");
        }
        Ok(params)
    }
}

/// Runs the benchmark and returns its figures.
pub async fn run(bench: &Bench, args: &EventhubArgs) -> anyhow::Result<Section> {
    let params = args.params(bench.profile)?;
    let serve_args = vec!["--partitions".to_owned(), params.partitions.to_string()];
    let mut hub = HubProcess::start_with(&bench.outpost, serve_args).await?;
    eprintln!(
        "eventhub: hub pid {} on {} (AMQP port {})",
        hub.pid(),
        hub.host(),
        hub.amqp_port
    );
    let measured = measure(bench, &mut hub, &params).await;
    hub.stop().await;
    let measured = measured?;
    Ok(Section {
        id: "eventhub",
        title: "Event Hubs-compatible endpoint (issue 16)".into(),
        parts: measured.to_parts(&params),
    })
}

/// What a run measured.
struct Measured {
    registry: Duration,
    connected: Duration,
    throughput: Option<ThroughputFigures>,
    latency: Option<LatencyFigures>,
    strays: usize,
    consumer_errors: Vec<String>,
}

async fn measure(bench: &Bench, hub: &mut HubProcess, params: &Params) -> anyhow::Result<Measured> {
    let api = Arc::new(ServiceApi::new(hub, SETUP_CONCURRENCY)?);
    let ids = (0..params.devices)
        .map(|i| format!("telemetry-{i:05}"))
        .collect();
    let created = create_devices(&api, ids, SETUP_CONCURRENCY).await?;
    let endpoint = DeviceEndpoint::new(hub.mqtt_addr(), &hub.host(), &hub.ca_pem())?;
    let connecting = tokio::time::Instant::now();
    let clients = connect_all(&endpoint, &created.devices, SETUP_CONCURRENCY).await?;
    let connected = connecting.elapsed();
    let devices: Vec<(Arc<Client>, Arc<str>)> = clients
        .into_iter()
        .zip(&created.devices)
        .map(|(client, device)| {
            let topic: Arc<str> = format!("devices/{}/messages/events/", device.id).into();
            (Arc::new(client), topic)
        })
        .collect();
    eprintln!(
        "eventhub: {} devices created in {} and connected in {}",
        devices.len(),
        seconds(created.elapsed),
        seconds(connected)
    );

    let connection: EventHubConnection = hub
        .eventhub_connection_string(&bench.outpost)
        .await?
        .parse()?;
    let tls = client_tls(&hub.ca_pem())?;
    let latency_messages = params.latency.as_ref().map_or(0, LatencyParams::messages);
    let ledger = Arc::new(Ledger::new(params.partitions, latency_messages));
    let (stop, stopped) = watch::channel(false);
    let mut consumers = JoinSet::new();
    for partition in 0..params.partitions {
        let consumer =
            PartitionConsumer::attach(hub.amqp_addr(), Arc::clone(&tls), &connection, partition)
                .await?;
        consumers.spawn(ledger::consume(
            consumer,
            Arc::clone(&ledger),
            stopped.clone(),
        ));
    }
    eprintln!(
        "eventhub: {} consumers attached to {} from the latest event",
        params.partitions, connection.entity_path
    );

    let mut measured = Measured {
        registry: created.elapsed,
        connected,
        throughput: None,
        latency: None,
        strays: 0,
        consumer_errors: Vec::new(),
    };
    if let Some(throughput) = &params.throughput {
        eprintln!(
            "eventhub: throughput, {} in flight per device, {:?} after {:?} of warm-up",
            throughput.in_flight, throughput.window, throughput.warm_up
        );
        measured.throughput = Some(throughput::run(hub, &devices, &ledger, throughput).await?);
    }
    if let Some(latency) = &params.latency {
        eprintln!(
            "eventhub: latency, {} messages/s for {:?}",
            latency.rate, latency.duration
        );
        measured.latency = Some(latency::run(hub, &devices, &ledger, latency).await?);
    }

    let _ = stop.send(true);
    while let Some(ended) = consumers.join_next().await {
        let (consumer, error) = ended.context("a consumer task failed")?;
        measured.consumer_errors.extend(error);
        consumer.close().await;
    }
    for (client, _) in devices {
        if let Ok(client) = Arc::try_unwrap(client) {
            client.disconnect().await;
        }
    }
    measured.strays = ledger.strays.load(std::sync::atomic::Ordering::Relaxed);
    Ok(measured)
}

impl Measured {
    fn to_parts(&self, params: &Params) -> Vec<Part> {
        let mut parts = vec![Part::Text(format!(
            "One hub (`outpost hub serve --partitions {partitions}`, AMQP on a free port of its loopback \
             address). {devices} devices are created over REST (in {registry}) and connect with \
             `outpost_mqtt`'s client over TLS (in {connected}); they publish QoS 1 telemetry to \
             `devices/{{id}}/messages/events/` with the body `{{\"phase\":P,\"seq\":N}}`. {partitions} \
             consumers read the Event Hubs-compatible endpoint as one `EventHubConsumerClient` per partition \
             does: each its own AMQP connection over TLS (fe2o3-amqp), a SAS token of `iothubowner` put on \
             `$cbs` (audience `sb://HOST/NAME`, signed with the key's text as azure-eventhub signs it), and a \
             receiver on `NAME/ConsumerGroups/$Default/Partitions/{{p}}` with the selector \
             `amqp.annotation.x-opt-offset > '@latest'` and 300 credits (azure-eventhub's prefetch). The \
             harness, the hub and its consumers share the machine's 2 CPUs, which other jobs also use.",
            partitions = params.partitions,
            devices = group(params.devices as u64),
            registry = seconds(self.registry),
            connected = seconds(self.connected),
        ))];
        if let (Some(figures), Some(p)) = (&self.throughput, &params.throughput) {
            parts.extend(throughput_parts(figures, p, params.devices));
        }
        if let (Some(figures), Some(p)) = (&self.latency, &params.latency) {
            parts.extend(latency_parts(figures, p, params.devices));
        }
        if self.strays > 0 {
            parts.push(Part::Text(format!(
                "The consumers received {} events the harness did not send.",
                group(self.strays as u64)
            )));
        }
        for error in &self.consumer_errors {
            parts.push(Part::Text(format!("A consumer stopped early: {error}")));
        }
        parts
    }
}

fn throughput_parts(
    figures: &ThroughputFigures,
    params: &ThroughputParams,
    devices: usize,
) -> Vec<Part> {
    let mut parts = vec![
        Part::Heading("Throughput: events/s delivered per partition consumer".into()),
        Part::Text(format!(
            "Every device keeps {in_flight} QoS 1 publishes in flight ({total} in all) and sends the next as \
             soon as a PUBACK comes back. Rates are over a {window} window after {warm} of warm-up.",
            in_flight = params.in_flight,
            total = group((params.in_flight * devices) as u64),
            window = seconds(figures.window),
            warm = seconds(params.warm_up),
        )),
    ];
    let mut table = Table::new(&["consumer", "events/s"]);
    for (partition, rate) in figures.per_partition.iter().enumerate() {
        table.row(vec![format!("partition {partition}"), format!("{rate:.0}")]);
    }
    let total: f64 = figures.per_partition.iter().sum();
    table.row(vec!["**all partitions**".into(), format!("**{total:.0}**")]);
    table.row(vec![
        "PUBACKs at the devices".into(),
        format!("{:.0}", figures.acked_rate),
    ]);
    parts.push(Part::Table(table));

    let mut table = Table::new(&["figure", "value"]);
    let mut row = |name: &str, value: String| table.row(vec![name.to_owned(), value]);
    row(
        "messages acknowledged / events delivered (whole phase)",
        format!("{} / {}", group(figures.acked), group(figures.delivered)),
    );
    row(
        "consumers caught up after the devices stopped",
        figures
            .drain
            .map_or_else(|| "not within 30 s".to_owned(), millis),
    );
    row("failed publishes", group(figures.failures));
    row(
        "CPU in the window",
        cpu(figures.hub_cpu, figures.harness_cpu, figures.window),
    );
    parts.push(Part::Table(table));
    if let Some(failure) = &figures.first_failure {
        parts.push(Part::Text(format!("First failed publish: {failure}")));
    }
    parts
}

fn latency_parts(figures: &LatencyFigures, params: &LatencyParams, devices: usize) -> Vec<Part> {
    let mut parts = vec![
        Part::Heading("Latency: PUBACK at the device → event at the consumer".into()),
        Part::Text(format!(
            "{rate} messages/s in all, round-robin over the {devices} devices ({per:.2}/s each), for {secs} s. \
             Each message is stamped when the device's PUBACK resolves and when its event reaches the \
             partition's consumer, matched by `seq`. The hub acknowledges a message and wakes the partition's \
             readers after the same commit, so an event can arrive before its PUBACK; such events count as \
             0 ms.",
            rate = group(u64::from(params.rate)),
            devices = group(devices as u64),
            per = f64::from(params.rate) / devices.max(1) as f64,
            secs = params.duration.as_secs(),
        )),
    ];
    let mut table = Table::new(&["figure", "value"]);
    let mut row = |name: &str, value: String| table.row(vec![name.to_owned(), value]);
    row(
        "messages sent / acknowledged",
        format!(
            "{} / {}",
            group(figures.messages as u64),
            group(figures.acked as u64)
        ),
    );
    row(
        "achieved rate",
        format!("{:.1} messages/s", figures.achieved_rate),
    );
    row("latest publish behind schedule", millis(figures.max_lag));
    match &figures.puback_to_event {
        Some(l) => {
            row("PUBACK → event p50", millis(l.p50));
            row("PUBACK → event p90", millis(l.p90));
            row("PUBACK → event p99", millis(l.p99));
            row("PUBACK → event max", millis(l.max));
        }
        None => row("PUBACK → event", "no event received".into()),
    }
    row(
        "events that arrived before their PUBACK",
        group(figures.before_puback as u64),
    );
    let summary = |s: &Option<LatencySummary>| {
        s.as_ref().map_or_else(
            || "none".to_owned(),
            |s| format!("{} / {} / {}", millis(s.p50), millis(s.p99), millis(s.max)),
        )
    };
    row(
        "publish → PUBACK p50 / p99 / max",
        summary(&figures.publish_to_puback),
    );
    row(
        "publish → event p50 / p99 / max",
        summary(&figures.publish_to_event),
    );
    row(
        "lost events",
        format!(
            "{} of {}",
            group(figures.lost as u64),
            group(figures.acked as u64)
        ),
    );
    row("duplicate events", group(figures.duplicates as u64));
    row("failed publishes", group(figures.failures as u64));
    row(
        "CPU while sending",
        cpu(figures.hub_cpu, figures.harness_cpu, figures.window),
    );
    parts.push(Part::Table(table));
    if let Some(failure) = &figures.first_failure {
        parts.push(Part::Text(format!("First failed publish: {failure}")));
    }
    parts
}

/// CPU use of the hub and the harness over `window`, as shares of one CPU, with their run-queue waits.
fn cpu(hub: CpuTimes, harness: CpuTimes, window: Duration) -> String {
    let share = |ns: u64| ns as f64 / 1e9 / window.as_secs_f64().max(1e-9) * 100.0;
    let waited = |ns: u64| format!("{:.1} s", ns as f64 / 1e9);
    format!(
        "hub {:.0}% of one CPU (waited {} for a CPU), harness {:.0}% (waited {}) in {}",
        share(hub.running_ns),
        waited(hub.waiting_ns),
        share(harness.running_ns),
        waited(harness.waiting_ns),
        seconds(window),
    )
}
