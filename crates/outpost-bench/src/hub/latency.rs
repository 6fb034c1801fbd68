//! Desired-patch propagation: how long from a service `PATCH /twins/{d}` to the device's notification on
//! `$iothub/twin/PATCH/properties/desired/`, at a paced rate.
//!
//! Update `seq` is due at `start + seq / rate` (open loop: a slow hub does not slow the schedule down, it
//! makes senders late, which the figures show). A pool of senders takes the next `seq`, waits until it is
//! due, stamps it and sends it to device `seq % devices`; each device's task stamps the notification it
//! receives and finds its `seq` in the body. Stamps go into per-`seq` slots, so nothing is locked on the way.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use outpost_mqtt::{Client, Publish};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::device::{connect_all, DeviceEndpoint};
use crate::hub_process::HubProcess;
use crate::report::{Part, Table};
use crate::service::{create_devices, ServiceApi};
use crate::stats::{millis, seconds, LatencySummary};
use crate::system::{self, group, CpuTimes};

/// Requests in flight while creating and connecting devices.
const SETUP_CONCURRENCY: usize = 16;

/// How long to wait for the last notifications after the last PATCH was answered.
const GRACE: Duration = Duration::from_secs(5);

/// The topic prefix of desired-property notifications.
const DESIRED_TOPIC: &str = "$iothub/twin/PATCH/properties/desired/";

/// What the latency benchmark does.
#[derive(Debug, Clone)]
pub struct LatencyParams {
    /// Connected devices the updates go round-robin to.
    pub devices: usize,
    /// Updates per second.
    pub rate: u32,
    /// How long updates are sent.
    pub duration: Duration,
    /// Concurrent senders (and keep-alive HTTPS connections).
    pub senders: usize,
    /// The PostgreSQL database of the hub, if not SQLite.
    pub database: Option<String>,
    /// Hub processes on `database`.
    pub replicas: usize,
}

impl LatencyParams {
    /// What the hub stores its state in, for messages and the report.
    pub fn storage(&self) -> String {
        match (&self.database, self.replicas) {
            (None, _) => "SQLite".to_owned(),
            (Some(_), 1) => "PostgreSQL, one replica".to_owned(),
            (Some(_), n) => format!("PostgreSQL, {n} replicas"),
        }
    }

    fn updates(&self) -> usize {
        (u128::from(self.rate) * self.duration.as_millis() / 1000) as usize
    }
}

/// When each update was sent and its notification received, in nanoseconds since `origin` plus one
/// (0: not yet).
struct Timeline {
    origin: Instant,
    sent: Vec<AtomicU64>,
    received: Vec<AtomicU64>,
    received_count: AtomicUsize,
    duplicates: AtomicUsize,
    strays: AtomicUsize,
}

impl Timeline {
    fn new(updates: usize) -> Self {
        Self {
            origin: Instant::now(),
            sent: (0..updates).map(|_| AtomicU64::new(0)).collect(),
            received: (0..updates).map(|_| AtomicU64::new(0)).collect(),
            received_count: AtomicUsize::new(0),
            duplicates: AtomicUsize::new(0),
            strays: AtomicUsize::new(0),
        }
    }

    fn stamp(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64 + 1
    }

    /// Records a publish received by a device.
    fn receive(&self, publish: &Publish) {
        let now = self.stamp();
        let seq = publish
            .topic
            .starts_with(DESIRED_TOPIC)
            .then(|| serde_json::from_slice::<serde_json::Value>(&publish.payload).ok())
            .flatten()
            .and_then(|body| body.get("seq")?.as_u64())
            .and_then(|seq| self.received.get(seq as usize));
        match seq {
            None => {
                self.strays.fetch_add(1, Ordering::Relaxed);
            }
            Some(slot) => {
                if slot
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    self.received_count.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// What one sender saw.
#[derive(Default)]
struct SenderReport {
    /// PATCH round trips (request to answer), in nanoseconds.
    round_trips: Vec<u64>,
    failures: usize,
    first_failure: Option<String>,
    /// The latest a send started after it was due.
    max_lag: Duration,
}

/// The figures of a latency run.
pub struct LatencyFigures {
    updates: usize,
    accepted: usize,
    failures: usize,
    first_failure: Option<String>,
    achieved_rate: f64,
    max_lag: Duration,
    notification: Option<LatencySummary>,
    round_trip: Option<LatencySummary>,
    lost: usize,
    duplicates: usize,
    strays: usize,
    disconnected: usize,
    registry: Duration,
    cpu: CpuUse,
}

/// CPU time spent while the updates were being sent.
#[derive(Default)]
struct CpuUse {
    /// Wall time from the first due update to the last answer.
    window: Duration,
    hub: CpuTimes,
    harness: CpuTimes,
}

/// Creates the devices, connects them (device `i` to replica `i % replicas`), sends the updates (update `seq`
/// through replica `seq % replicas`), and waits for their notifications.
pub async fn run(
    hubs: &mut [HubProcess],
    params: &LatencyParams,
) -> anyhow::Result<LatencyFigures> {
    let apis = hubs
        .iter()
        .map(|hub| ServiceApi::new(hub, params.senders).map(Arc::new))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let apis = Arc::new(apis);
    let ids = (0..params.devices)
        .map(|i| format!("latency-{i:05}"))
        .collect();
    let created = create_devices(&apis[0], ids, SETUP_CONCURRENCY).await?;
    let mut clients = Vec::with_capacity(created.devices.len());
    for (replica, hub) in hubs.iter().enumerate() {
        let endpoint = DeviceEndpoint::new(hub.mqtt_addr(), &hub.host(), &hub.ca_pem())?;
        let devices: Vec<_> = created
            .devices
            .iter()
            .skip(replica)
            .step_by(hubs.len())
            .cloned()
            .collect();
        clients.extend(connect_all(&endpoint, &devices, SETUP_CONCURRENCY).await?);
    }
    eprintln!(
        "hub: {} devices created and connected; sending {} updates",
        clients.len(),
        params.updates()
    );

    let timeline = Arc::new(Timeline::new(params.updates()));
    let (stop, stopped) = watch::channel(false);
    let mut receivers = JoinSet::new();
    for client in clients {
        receivers.spawn(receive(client, Arc::clone(&timeline), stopped.clone()));
    }

    let start = Instant::now() + Duration::from_millis(200);
    let next = Arc::new(AtomicUsize::new(0));
    let devices: Arc<Vec<String>> =
        Arc::new(created.devices.iter().map(|d| d.id.clone()).collect());
    let hub_cpu = |hubs: &[HubProcess]| -> anyhow::Result<CpuTimes> {
        let mut total = CpuTimes::default();
        for hub in hubs {
            let times = system::cpu_times(hub.pid())?;
            total.running_ns += times.running_ns;
            total.waiting_ns += times.waiting_ns;
        }
        Ok(total)
    };
    let hub_before = hub_cpu(hubs)?;
    let harness_before = system::cpu_times(std::process::id())?;
    let mut senders = JoinSet::new();
    for _ in 0..params.senders {
        senders.spawn(send(
            Arc::clone(&apis),
            Arc::clone(&devices),
            Arc::clone(&timeline),
            Arc::clone(&next),
            start,
            params.rate,
        ));
    }
    let mut reports = Vec::new();
    while let Some(report) = senders.join_next().await {
        reports.push(report.context("a sender task failed")?);
    }
    let cpu = CpuUse {
        window: start.elapsed(),
        hub: hub_cpu(hubs)?.since(hub_before),
        harness: system::cpu_times(std::process::id())?.since(harness_before),
    };

    let accepted = params.updates() - reports.iter().map(|r| r.failures).sum::<usize>();
    let deadline = Instant::now() + GRACE;
    while timeline.received_count.load(Ordering::Relaxed) < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for hub in hubs.iter_mut() {
        hub.check_alive()?;
    }
    let _ = stop.send(true);
    let mut disconnected = 0;
    while let Some(closed) = receivers.join_next().await {
        disconnected += usize::from(closed.unwrap_or(true));
    }
    let mut figures = figures(
        &timeline,
        reports,
        params,
        accepted,
        disconnected,
        created.elapsed,
    );
    figures.cpu = cpu;
    Ok(figures)
}

fn figures(
    timeline: &Timeline,
    reports: Vec<SenderReport>,
    params: &LatencyParams,
    accepted: usize,
    disconnected: usize,
    registry: Duration,
) -> LatencyFigures {
    let mut latencies = Vec::with_capacity(accepted);
    let mut lost = 0;
    let (mut first_sent, mut last_sent) = (u64::MAX, 0);
    for (sent, received) in timeline.sent.iter().zip(&timeline.received) {
        let (sent, received) = (
            sent.load(Ordering::Relaxed),
            received.load(Ordering::Relaxed),
        );
        if sent == 0 {
            continue; // refused by the hub: counted as a failure, not as lost
        }
        first_sent = first_sent.min(sent);
        last_sent = last_sent.max(sent);
        if received == 0 {
            lost += 1;
        } else {
            latencies.push(received.saturating_sub(sent));
        }
    }
    let window = Duration::from_nanos(last_sent.saturating_sub(first_sent));
    let achieved_rate = if accepted > 1 && !window.is_zero() {
        (accepted - 1) as f64 / window.as_secs_f64()
    } else {
        0.0
    };
    let mut round_trips = Vec::new();
    let mut failures = 0;
    let mut first_failure = None;
    let mut max_lag = Duration::ZERO;
    for report in reports {
        round_trips.extend(report.round_trips);
        failures += report.failures;
        first_failure = first_failure.or(report.first_failure);
        max_lag = max_lag.max(report.max_lag);
    }
    LatencyFigures {
        updates: params.updates(),
        accepted,
        failures,
        first_failure,
        achieved_rate,
        max_lag,
        notification: LatencySummary::from_nanos(latencies),
        round_trip: LatencySummary::from_nanos(round_trips),
        lost,
        duplicates: timeline.duplicates.load(Ordering::Relaxed),
        strays: timeline.strays.load(Ordering::Relaxed),
        disconnected,
        registry,
        cpu: CpuUse::default(),
    }
}

/// A device: records what it receives until told to stop; true if the hub closed its connection first.
async fn receive(
    mut client: Client,
    timeline: Arc<Timeline>,
    mut stop: watch::Receiver<bool>,
) -> bool {
    loop {
        tokio::select! {
            publish = client.recv() => match publish {
                Some(publish) => timeline.receive(&publish),
                None => return true,
            },
            _ = stop.changed() => {
                client.disconnect().await;
                return false;
            }
        }
    }
}

/// A sender: takes the next update, waits until it is due, and sends it.
async fn send(
    apis: Arc<Vec<Arc<ServiceApi>>>,
    devices: Arc<Vec<String>>,
    timeline: Arc<Timeline>,
    next: Arc<AtomicUsize>,
    start: Instant,
    rate: u32,
) -> SenderReport {
    let mut report = SenderReport::default();
    loop {
        let seq = next.fetch_add(1, Ordering::Relaxed);
        let Some(sent_slot) = timeline.sent.get(seq) else {
            return report;
        };
        let due = start + Duration::from_nanos((seq as u64 * 1_000_000_000) / u64::from(rate));
        tokio::time::sleep_until(due).await;
        report.max_lag = report
            .max_lag
            .max(Instant::now().saturating_duration_since(due));
        let device = &devices[seq % devices.len()];
        // sentNanos counts from the start of the run: nanoseconds since 1970 exceed the twin's integer
        // range (±2^52), which the hub rightly refuses.
        let sent = timeline.stamp();
        let body = format!(r#"{{"properties":{{"desired":{{"seq":{seq},"sentNanos":{sent}}}}}}}"#);
        sent_slot.store(sent, Ordering::Relaxed);
        match apis[seq % apis.len()].patch_twin(device, body).await {
            Ok(()) => report.round_trips.push(timeline.stamp() - sent),
            Err(error) => {
                sent_slot.store(0, Ordering::Relaxed);
                report.failures += 1;
                report
                    .first_failure
                    .get_or_insert_with(|| error.to_string());
            }
        }
    }
}

impl LatencyFigures {
    /// The figures as report parts.
    pub fn to_parts(&self, params: &LatencyParams) -> Vec<Part> {
        let mut parts = vec![
            Part::Heading(format!(
                "Desired-patch propagation: service PATCH → device notification ({})",
                params.storage()
            )),
            Part::Text(format!(
                "{devices} devices connect with `outpost_mqtt`'s client (CleanSession=0, subscribed to desired \
                 patches at QoS 1). The harness sends `PATCH /twins/{{d}}` (`If-Match: *`, body \
                 `{{\"properties\":{{\"desired\":{{\"seq\":N,\"sentNanos\":T}}}}}}`, T in nanoseconds since the start of the run) at {rate} updates/s \
                 round-robin over the devices for {secs} s, from {senders} concurrent senders on keep-alive \
                 HTTPS connections. Latency runs from handing the PATCH to the HTTP client to the device \
                 receiving the notification, matched by `seq`. The {devices} devices were created in {registry}.{replicas}",
                devices = params.devices,
                rate = group(u64::from(params.rate)),
                secs = params.duration.as_secs(),
                senders = params.senders,
                registry = seconds(self.registry),
                replicas = if params.replicas > 1 {
                    format!(
                        " {n} hub processes on one PostgreSQL database: device i connects to replica i mod {n}, \
                         update N goes through replica N mod {n}, so most notifications cross replicas.",
                        n = params.replicas
                    )
                } else {
                    String::new()
                },
            )),
        ];
        let mut table = Table::new(&["figure", "value"]);
        let mut row = |name: &str, value: String| table.row(vec![name.to_owned(), value]);
        row(
            "updates sent / accepted",
            format!(
                "{} / {}",
                group(self.updates as u64),
                group(self.accepted as u64)
            ),
        );
        row(
            "achieved rate",
            format!("{:.1} updates/s", self.achieved_rate),
        );
        row("latest send behind schedule", millis(self.max_lag));
        match &self.notification {
            Some(n) => {
                row("notification latency p50", millis(n.p50));
                row("notification latency p90", millis(n.p90));
                row("notification latency p99", millis(n.p99));
                row("notification latency max", millis(n.max));
            }
            None => row("notification latency", "no notification received".into()),
        }
        if let Some(r) = &self.round_trip {
            row(
                "PATCH round trip p50 / p99 / max",
                format!("{} / {} / {}", millis(r.p50), millis(r.p99), millis(r.max)),
            );
        }
        row(
            "lost notifications",
            format!(
                "{} of {}",
                group(self.lost as u64),
                group(self.accepted as u64)
            ),
        );
        row("duplicate notifications", group(self.duplicates as u64));
        if self.strays > 0 {
            row("unexpected publishes", group(self.strays as u64));
        }
        row(
            "devices disconnected by the hub",
            group(self.disconnected as u64),
        );
        row("failed PATCHes", group(self.failures as u64));
        let window = self.cpu.window.as_secs_f64().max(1e-9);
        let share = |ns: u64| ns as f64 / 1e9 / window * 100.0;
        let waited = |ns: u64| format!("{:.1} s", ns as f64 / 1e9);
        row(
            "hub CPU while sending",
            format!(
                "{:.2} ms per update ({:.0}% of one CPU); its threads waited {} for a CPU in {}",
                self.cpu.hub.running_ns as f64 / 1e6 / self.accepted.max(1) as f64,
                share(self.cpu.hub.running_ns),
                waited(self.cpu.hub.waiting_ns),
                seconds(self.cpu.window),
            ),
        );
        row(
            "harness CPU while sending",
            format!(
                "{:.0}% of one CPU; its threads waited {} for a CPU",
                share(self.cpu.harness.running_ns),
                waited(self.cpu.harness.waiting_ns),
            ),
        );
        parts.push(Part::Table(table));
        if self.achieved_rate < 0.95 * f64::from(params.rate) {
            parts.push(Part::Text(format!(
                "The hub did not keep up with {} updates/s: it answered {:.0}/s, so sends fell behind \
                 schedule and the latencies above are mostly time queued behind the {} requests in flight.",
                group(u64::from(params.rate)),
                self.achieved_rate,
                params.senders,
            )));
        }
        if let Some(failure) = &self.first_failure {
            parts.push(Part::Text(format!("First failed PATCH: {failure}")));
        }
        parts
    }
}
