//! One routed measurement phase: M subscribers connect and subscribe, N publishers send QoS 1 for a while (as
//! fast as their window allows, or paced), and the subscribers time every message of the phase on arrival.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::loadgen::{self, Broker, Login, PublishPlan, Publisher, Tally};
use crate::stats::percentile;

/// How long subscribers may lag behind the last PUBACK before the phase ends without them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Who publishes and subscribes where, on one broker.
#[derive(Clone)]
pub struct Target {
    /// The broker, for the side-by-side table: `Outpost`, `mosquitto` or `rumqttd`.
    pub peer: &'static str,
    /// Name in the table (`Outpost edge hub (TLS)`).
    pub name: String,
    /// The broker.
    pub broker: Broker,
    /// Publishers: CONNECT and the topic they publish to.
    pub publishers: Vec<(Login, String)>,
    /// Subscribers: CONNECT and their filter.
    pub subscribers: Vec<(Login, String)>,
}

/// Load of one phase.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Payload bytes.
    pub size: usize,
    /// Unacknowledged publishes per publisher.
    pub window: usize,
    /// Total messages per second over all publishers, or `None` for as fast as possible.
    pub rate: Option<f64>,
    /// Sending time.
    pub duration: Duration,
}

/// The figures of one phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseFigures {
    /// Publishes written.
    pub sent: u64,
    /// Publishes acknowledged by the broker.
    pub acked: u64,
    /// Messages of the phase that reached a subscriber.
    pub delivered: u64,
    /// Delivered messages per second, from the first publish to the last arrival.
    pub rate: f64,
    /// Acknowledged publishes per second, from the first publish to the last PUBACK.
    pub acked_rate: f64,
    /// Latency percentiles (p50, p99, p99.9), nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Messages of earlier phases that arrived during this one.
    pub stale: u64,
    /// Of the delivered, those a paced publisher sent on schedule ([`loadgen::ON_SCHEDULE`]): all, if not paced.
    pub on_schedule: u64,
    /// Their latency percentiles (p50, p99, p99.9), nanoseconds.
    pub on_schedule_p50_ns: u64,
    /// 99th percentile.
    pub on_schedule_p99_ns: u64,
    /// 99.9th percentile.
    pub on_schedule_p999_ns: u64,
    /// The longest a delivered message was sent behind its schedule, nanoseconds.
    pub max_behind_ns: u64,
}

impl PhaseFigures {
    /// Publishes the broker acknowledged that no subscriber received: what it dropped (duplicates aside).
    pub fn lost(&self) -> u64 {
        self.acked.saturating_sub(self.delivered)
    }

    /// [`Self::lost`] as `1234 (5.6 %)` of what was acknowledged, or `0`.
    pub fn loss(&self) -> String {
        match self.lost() {
            0 => "0".to_owned(),
            lost => format!("{lost} ({:.1} %)", lost as f64 * 100.0 / self.acked as f64),
        }
    }
}

/// Delivered messages per second over `nanos`.
pub fn per_second(count: u64, nanos: u64) -> f64 {
    if nanos == 0 {
        0.0
    } else {
        count as f64 * 1e9 / nanos as f64
    }
}

/// Runs one phase against `target`.
pub async fn run_phase(target: &Target, load: Load) -> anyhow::Result<PhaseFigures> {
    static PHASE: AtomicU32 = AtomicU32::new(1);
    let phase = PHASE.fetch_add(1, Ordering::Relaxed);
    let tally = Arc::new(Tally::default());
    let mut subscribers = Vec::new();
    for (login, filter) in &target.subscribers {
        subscribers.push(
            loadgen::subscribe(&target.broker, login, filter, phase, Arc::clone(&tally))
                .await
                .with_context(|| format!("subscriber {} on {}", login.client_id, target.name))?,
        );
    }
    let mut publishers = Vec::new();
    for (login, topic) in &target.publishers {
        let publisher = Publisher::connect(&target.broker, login)
            .await
            .with_context(|| format!("publisher {} on {}", login.client_id, target.name))?;
        publishers.push((publisher, topic.clone()));
    }
    let count = publishers.len().max(1) as f64;
    let started_ns = loadgen::now_ns();
    let mut tasks = Vec::new();
    for (publisher, topic) in publishers {
        let plan = PublishPlan {
            topic,
            size: load.size,
            window: load.window,
            rate: load.rate.map(|r| r / count),
            duration: load.duration,
            phase,
            count: None,
        };
        tasks.push(tokio::spawn(publisher.run(plan)));
    }
    let (mut sent, mut acked, mut span) = (0, 0, Duration::ZERO);
    for task in tasks {
        let published = task.await??;
        sent += published.sent;
        acked += published.acked;
        span = span.max(published.elapsed);
    }
    // Wait for the subscribers to get what was acknowledged, as long as they make progress.
    let mut last = (tally.received.load(Ordering::Relaxed), Instant::now());
    loop {
        let now = tally.received.load(Ordering::Relaxed);
        if now >= acked {
            break;
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > DRAIN_TIMEOUT {
            eprintln!("  {}: subscribers stalled at {now} of {acked}", target.name);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tally.stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut on_schedule = Vec::new();
    let mut max_behind = Duration::ZERO;
    let mut last_ns = started_ns;
    let mut stale = 0;
    let mut ended_early = Vec::new();
    for (subscriber, (login, _)) in subscribers.into_iter().zip(&target.subscribers) {
        let received = subscriber.await?;
        if let Some(why) = received.ended_early {
            ended_early.push(format!(
                "{} stopped after {} messages: {why}",
                login.client_id,
                received.latencies_ns.len()
            ));
        }
        latencies.extend(received.latencies_ns);
        on_schedule.extend(received.on_schedule_ns);
        max_behind = max_behind.max(received.max_behind);
        last_ns = last_ns.max(received.last_ns);
        stale += received.stale;
    }
    latencies.sort_unstable();
    on_schedule.sort_unstable();
    let delivered = latencies.len() as u64;
    let figures = PhaseFigures {
        sent,
        acked,
        delivered,
        rate: per_second(delivered, last_ns - started_ns),
        acked_rate: per_second(acked, span.as_nanos() as u64),
        p50_ns: percentile(&latencies, 50.0).unwrap_or(0),
        p99_ns: percentile(&latencies, 99.0).unwrap_or(0),
        p999_ns: percentile(&latencies, 99.9).unwrap_or(0),
        stale,
        on_schedule: on_schedule.len() as u64,
        on_schedule_p50_ns: percentile(&on_schedule, 50.0).unwrap_or(0),
        on_schedule_p99_ns: percentile(&on_schedule, 99.0).unwrap_or(0),
        on_schedule_p999_ns: percentile(&on_schedule, 99.9).unwrap_or(0),
        max_behind_ns: max_behind.as_nanos() as u64,
    };
    eprintln!(
        "  {}: sent {sent}, acked {acked}, delivered {delivered}, lost {}, earlier phases' arriving late {stale}",
        target.name,
        figures.loss()
    );
    for line in ended_early {
        eprintln!("  {}: {line}", target.name);
    }
    Ok(figures)
}

/// `a / b` as `1.23×`, or `–` when `b` is zero.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".to_owned()
    }
}

/// Nanoseconds as milliseconds with two decimals.
pub fn ms(nanos: u64) -> String {
    format!("{:.2} ms", nanos as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_messages_per_second_of_the_span() {
        assert!((per_second(5_000, 500_000_000) - 10_000.0).abs() < 1e-9);
        assert!(per_second(1, 0).abs() < f64::EPSILON);
    }

    #[test]
    fn a_ratio_has_two_decimals_and_no_division_by_zero() {
        assert_eq!(ratio(3.0, 2.0), "1.50×");
        assert_eq!(ratio(1.0, 0.0), "–");
    }

    #[test]
    fn what_was_acknowledged_and_not_delivered_is_lost() {
        let figures = PhaseFigures {
            acked: 1000,
            delivered: 600,
            ..PhaseFigures::default()
        };
        assert_eq!(figures.lost(), 400);
        assert_eq!(figures.loss(), "400 (40.0 %)");
        let all = PhaseFigures {
            acked: 10,
            delivered: 10,
            ..PhaseFigures::default()
        };
        assert_eq!(all.loss(), "0");
    }

    #[test]
    fn nanoseconds_print_as_milliseconds() {
        assert_eq!(ms(1_274_000), "1.27 ms");
    }
}
