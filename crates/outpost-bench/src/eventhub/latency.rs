//! Latency: devices publish at a steady total rate, and each message is timed from its PUBACK at the device to
//! its event at a partition's consumer.
//!
//! Message `seq` is due at `start + seq / rate` and is sent by device `seq % devices`, so every device sends at
//! `rate / devices` messages/s. The device's task stamps the message when it hands it to the client and when
//! the PUBACK comes back; the consumer stamps its event, matched by the `seq` in the body. The hub tells the
//! partition's readers once the batch is committed, which is also when it sends the PUBACK, so an event can
//! reach the consumer before its PUBACK reaches the device: those count as 0 and are counted apart.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use outpost_mqtt::{Client, QoS};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::ledger::{Ledger, Phase};
use crate::hub_process::HubProcess;
use crate::stats::LatencySummary;
use crate::system::{self, CpuTimes};

/// How long to wait for the last events after the last PUBACK.
const GRACE: Duration = Duration::from_secs(10);

/// What the latency phase does.
#[derive(Debug, Clone)]
pub struct LatencyParams {
    /// Messages per second, over all devices.
    pub rate: u32,
    /// How long messages are sent.
    pub duration: Duration,
}

impl LatencyParams {
    /// How many messages the phase sends.
    pub fn messages(&self) -> usize {
        (u128::from(self.rate) * self.duration.as_millis() / 1000) as usize
    }
}

/// The figures of the latency phase.
pub struct LatencyFigures {
    /// Messages due.
    pub messages: usize,
    /// Messages the hub acknowledged.
    pub acked: usize,
    /// The rate of PUBACKs, first to last.
    pub achieved_rate: f64,
    /// The latest a publish started after it was due.
    pub max_lag: Duration,
    /// PUBACK at the device → event at the consumer.
    pub puback_to_event: Option<LatencySummary>,
    /// Events that reached the consumer before their PUBACK reached the device.
    pub before_puback: usize,
    /// Publish handed to the client → event at the consumer.
    pub publish_to_event: Option<LatencySummary>,
    /// Publish → PUBACK.
    pub publish_to_puback: Option<LatencySummary>,
    /// Acknowledged messages whose event never arrived.
    pub lost: usize,
    /// Events received twice.
    pub duplicates: usize,
    /// Failed publishes.
    pub failures: usize,
    /// The first failed publish.
    pub first_failure: Option<String>,
    /// The sending window.
    pub window: Duration,
    /// CPU time the hub used while sending.
    pub hub_cpu: CpuTimes,
    /// CPU time the harness used while sending.
    pub harness_cpu: CpuTimes,
}

/// What one device's task saw.
#[derive(Default)]
struct DeviceReport {
    max_lag: Duration,
    failures: usize,
    first_failure: Option<String>,
}

/// Runs the phase on connected `devices` (client and telemetry topic each).
pub async fn run(
    hub: &mut HubProcess,
    devices: &[(Arc<Client>, Arc<str>)],
    ledger: &Arc<Ledger>,
    params: &LatencyParams,
) -> anyhow::Result<LatencyFigures> {
    let start = Instant::now() + Duration::from_millis(200);
    let (hub_before, harness_before) = (
        system::cpu_times(hub.pid())?,
        system::cpu_times(std::process::id())?,
    );
    let mut tasks = JoinSet::new();
    for (index, (client, topic)) in devices.iter().enumerate() {
        tasks.spawn(paced(
            Arc::clone(client),
            Arc::clone(topic),
            Arc::clone(ledger),
            (index, devices.len()),
            start,
            params.rate,
        ));
    }
    let mut reports = Vec::with_capacity(devices.len());
    while let Some(report) = tasks.join_next().await {
        reports.push(report?);
    }
    let window = start.elapsed();
    let hub_cpu = system::cpu_times(hub.pid())?.since(hub_before);
    let harness_cpu = system::cpu_times(std::process::id())?.since(harness_before);

    let failures: usize = reports.iter().map(|r| r.failures).sum();
    let acked = ledger.messages_acked();
    ledger
        .wait_until(GRACE, |l| l.received_count.load(Ordering::Relaxed) >= acked)
        .await;
    hub.check_alive()?;
    let mut figures = figures(ledger, params, acked);
    figures.failures = failures;
    figures.first_failure = reports.iter().find_map(|r| r.first_failure.clone());
    figures.max_lag = reports.iter().map(|r| r.max_lag).max().unwrap_or_default();
    figures.window = window;
    figures.hub_cpu = hub_cpu;
    figures.harness_cpu = harness_cpu;
    Ok(figures)
}

impl Ledger {
    /// Latency messages acknowledged so far.
    fn messages_acked(&self) -> usize {
        self.acked
            .iter()
            .filter(|a| a.load(Ordering::Relaxed) != 0)
            .count()
    }
}

/// Reduces the ledger's stamps to figures.
fn figures(ledger: &Ledger, params: &LatencyParams, acked: usize) -> LatencyFigures {
    let mut puback_to_event = Vec::with_capacity(acked);
    let mut publish_to_event = Vec::with_capacity(acked);
    let mut publish_to_puback = Vec::with_capacity(acked);
    let (mut before_puback, mut lost) = (0, 0);
    let (mut first_ack, mut last_ack) = (u64::MAX, 0);
    for ((sent, ack), received) in ledger.sent.iter().zip(&ledger.acked).zip(&ledger.received) {
        let load = |slot: &std::sync::atomic::AtomicU64| slot.load(Ordering::Relaxed);
        let (sent, ack, received) = (load(sent), load(ack), load(received));
        if ack == 0 {
            continue; // refused or never sent: a failure, not a loss
        }
        first_ack = first_ack.min(ack);
        last_ack = last_ack.max(ack);
        publish_to_puback.push(ack - sent);
        if received == 0 {
            lost += 1;
            continue;
        }
        if received < ack {
            before_puback += 1;
        }
        puback_to_event.push(received.saturating_sub(ack));
        publish_to_event.push(received.saturating_sub(sent));
    }
    let span = Duration::from_nanos(last_ack.saturating_sub(first_ack));
    let achieved_rate = if acked > 1 && !span.is_zero() {
        (acked - 1) as f64 / span.as_secs_f64()
    } else {
        0.0
    };
    LatencyFigures {
        messages: params.messages(),
        acked,
        achieved_rate,
        max_lag: Duration::ZERO,
        puback_to_event: LatencySummary::from_nanos(puback_to_event),
        before_puback,
        publish_to_event: LatencySummary::from_nanos(publish_to_event),
        publish_to_puback: LatencySummary::from_nanos(publish_to_puback),
        lost,
        duplicates: ledger.duplicates.load(Ordering::Relaxed),
        failures: 0,
        first_failure: None,
        window: Duration::ZERO,
        hub_cpu: CpuTimes::default(),
        harness_cpu: CpuTimes::default(),
    }
}

/// Device `index` of `count`: sends messages `index`, `index + count`, ... each when it is due.
async fn paced(
    client: Arc<Client>,
    topic: Arc<str>,
    ledger: Arc<Ledger>,
    (index, count): (usize, usize),
    start: Instant,
    rate: u32,
) -> DeviceReport {
    let mut report = DeviceReport::default();
    for seq in (index..ledger.sent.len()).step_by(count.max(1)) {
        let due = start + Duration::from_nanos((seq as u64 * 1_000_000_000) / u64::from(rate));
        tokio::time::sleep_until(due).await;
        report.max_lag = report
            .max_lag
            .max(Instant::now().saturating_duration_since(due));
        ledger.sent[seq].store(ledger.stamp(), Ordering::Relaxed);
        match client
            .publish(&*topic, QoS::AtLeastOnce, Phase::Latency.body(seq as u64))
            .await
        {
            Ok(()) => ledger.acked[seq].store(ledger.stamp(), Ordering::Relaxed),
            Err(error) => {
                report.failures += 1;
                report.first_failure.get_or_insert(error.to_string());
            }
        }
    }
    report
}
