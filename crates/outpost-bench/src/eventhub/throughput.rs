//! Throughput: every device publishes QoS 1 telemetry as fast as the hub acknowledges it, with a bounded number
//! of publishes in flight per device, and the consumers count what reaches each partition.
//!
//! After a warm-up, the harness reads the counters at the start and at the end of a measured window: events/s
//! per partition consumer and in total, and PUBACKs/s at the devices, over the same window. Then the devices
//! stop and the harness waits for the consumers to catch up with every acknowledged message.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outpost_mqtt::{Client, QoS};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::ledger::{Ledger, Phase};
use crate::hub_process::HubProcess;
use crate::system::{self, CpuTimes};

/// How long the consumers get to catch up after the devices stopped.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// What the throughput phase does.
#[derive(Debug, Clone)]
pub struct ThroughputParams {
    /// Publishes in flight per device.
    pub in_flight: usize,
    /// Publishing before the measured window.
    pub warm_up: Duration,
    /// The measured window.
    pub window: Duration,
}

/// The figures of the throughput phase.
pub struct ThroughputFigures {
    /// Events delivered to each partition's consumer in the window, per second.
    pub per_partition: Vec<f64>,
    /// PUBACKs the devices received in the window, per second.
    pub acked_rate: f64,
    /// The window as measured.
    pub window: Duration,
    /// Messages acknowledged over the whole phase.
    pub acked: u64,
    /// Throughput events delivered over the whole phase.
    pub delivered: u64,
    /// From the devices stopping to the consumers holding every acknowledged message (`None`: they did not
    /// within the grace period).
    pub drain: Option<Duration>,
    /// Publishes that failed, and the first failure.
    pub failures: u64,
    /// The first failed publish.
    pub first_failure: Option<String>,
    /// CPU time used in the window by the hub and by the harness.
    pub hub_cpu: CpuTimes,
    /// CPU time used by the harness in the window.
    pub harness_cpu: CpuTimes,
}

/// What one publishing worker saw.
#[derive(Default)]
struct WorkerReport {
    failures: u64,
    first_failure: Option<String>,
}

/// Runs the phase on connected `devices` (client and telemetry topic each).
pub async fn run(
    hub: &mut HubProcess,
    devices: &[(Arc<Client>, Arc<str>)],
    ledger: &Arc<Ledger>,
    params: &ThroughputParams,
) -> anyhow::Result<ThroughputFigures> {
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for (client, topic) in devices {
        for _ in 0..params.in_flight.max(1) {
            workers.spawn(publish_flat_out(
                Arc::clone(client),
                Arc::clone(topic),
                Arc::clone(&next),
                Arc::clone(&acked),
                Arc::clone(&stop),
            ));
        }
    }

    tokio::time::sleep(params.warm_up).await;
    let (delivered_before, acked_before) = (ledger.delivered_now(), acked.load(Ordering::Relaxed));
    let (hub_before, harness_before) = (
        system::cpu_times(hub.pid())?,
        system::cpu_times(std::process::id())?,
    );
    let opened = Instant::now();
    tokio::time::sleep(params.window).await;
    let (delivered_after, acked_after) = (ledger.delivered_now(), acked.load(Ordering::Relaxed));
    let window = opened.elapsed();
    let hub_cpu = system::cpu_times(hub.pid())?.since(hub_before);
    let harness_cpu = system::cpu_times(std::process::id())?.since(harness_before);

    stop.store(true, Ordering::Relaxed);
    let stopped = Instant::now();
    let mut failures = 0;
    let mut first_failure = None;
    while let Some(report) = workers.join_next().await {
        let report = report?;
        failures += report.failures;
        first_failure = first_failure.or(report.first_failure);
    }
    let acked_total = acked.load(Ordering::Relaxed);
    let caught_up = ledger
        .wait_until(DRAIN_GRACE, |l| {
            l.delivered_now().iter().sum::<u64>() >= acked_total
        })
        .await;
    hub.check_alive()?;

    let per_second = |n: u64| n as f64 / window.as_secs_f64().max(1e-9);
    Ok(ThroughputFigures {
        per_partition: delivered_after
            .iter()
            .zip(&delivered_before)
            .map(|(after, before)| per_second(after - before))
            .collect(),
        acked_rate: per_second(acked_after - acked_before),
        window,
        acked: acked_total,
        delivered: ledger.delivered_now().iter().sum(),
        drain: caught_up.then(|| stopped.elapsed()),
        failures,
        first_failure,
        hub_cpu,
        harness_cpu,
    })
}

/// One of a device's in-flight slots: publishes, waits for the PUBACK, publishes the next, until told to stop.
async fn publish_flat_out(
    client: Arc<Client>,
    topic: Arc<str>,
    next: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> WorkerReport {
    let mut report = WorkerReport::default();
    while !stop.load(Ordering::Relaxed) {
        let seq = next.fetch_add(1, Ordering::Relaxed);
        match client
            .publish(&*topic, QoS::AtLeastOnce, Phase::Throughput.body(seq))
            .await
        {
            Ok(()) => {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                report.failures += 1;
                report.first_failure = Some(error.to_string());
                // A failed publish means a closed connection: this slot is done.
                break;
            }
        }
    }
    report
}
