//! The hub's resident memory read from `/proc/<pid>/status` at a fixed interval while an attack runs.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::system;

/// One reading: time since sampling started, and `VmRSS` in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When, from the start of sampling.
    pub at: Duration,
    /// Resident memory, KiB.
    pub rss_kib: u64,
}

/// A task that reads a process's RSS every `interval` until stopped.
pub struct RssSampler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Vec<Sample>>,
}

impl RssSampler {
    /// Starts reading the RSS of `pid` now and every `interval`.
    pub fn start(pid: u32, interval: Duration) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        // A process that exited has no figure: the benchmark notices it separately.
                        if let Ok(rss_kib) = system::rss_kib(pid) {
                            samples.push(Sample { at: started.elapsed(), rss_kib });
                        }
                    }
                    _ = &mut stopped => break,
                }
            }
            samples
        });
        Self { stop, task }
    }

    /// Stops sampling and returns the readings in order.
    pub async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// The largest reading, in KiB (0 without readings).
pub fn peak_kib(samples: &[Sample]) -> u64 {
    samples.iter().map(|s| s.rss_kib).max().unwrap_or(0)
}

/// The first reading at or after every `step` (0, step, 2·step, ...), for a short timeline in the report.
pub fn every(samples: &[Sample], step: Duration) -> Vec<Sample> {
    let mut out: Vec<Sample> = Vec::new();
    let mut next = Duration::ZERO;
    for sample in samples {
        if sample.at >= next {
            out.push(*sample);
            while next <= sample.at {
                next += step;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: u64, rss_kib: u64) -> Sample {
        Sample {
            at: Duration::from_millis(ms),
            rss_kib,
        }
    }

    #[test]
    fn the_peak_is_the_largest_reading() {
        let samples = [sample(0, 10), sample(500, 30), sample(1000, 20)];
        assert_eq!(peak_kib(&samples), 30);
        assert_eq!(peak_kib(&[]), 0);
    }

    #[test]
    fn a_timeline_keeps_one_reading_per_step() {
        let samples: Vec<Sample> = (0..=10).map(|k| sample(k * 500, k)).collect();
        let kept: Vec<u64> = every(&samples, Duration::from_secs(2))
            .iter()
            .map(|s| s.rss_kib)
            .collect();
        assert_eq!(kept, vec![0, 4, 8]);
    }

    #[tokio::test]
    async fn the_sampler_reads_this_process_until_stopped() {
        let sampler = RssSampler::start(std::process::id(), Duration::from_millis(10));
        tokio::time::sleep(Duration::from_millis(55)).await;
        let samples = sampler.stop().await;
        assert!(samples.len() >= 2, "{samples:?}");
        assert!(samples.iter().all(|s| s.rss_kib > 0));
    }
}
