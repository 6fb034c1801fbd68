//! Latency samples reduced to the figures the report prints: nearest-rank percentiles and the maximum.

use std::time::Duration;

/// Nearest-rank percentile (`p` in 0..=100) of samples sorted in ascending order; `None` when there are none.
///
/// Nearest rank rather than interpolation: every figure printed is a latency that was really observed.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// The distribution of a set of latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySummary {
    /// How many samples.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// The slowest sample.
    pub max: Duration,
}

impl LatencySummary {
    /// Summarises latencies given in nanoseconds; `None` when there are none.
    pub fn from_nanos(mut samples: Vec<u64>) -> Option<Self> {
        samples.sort_unstable();
        let at = |p| percentile(&samples, p).map(Duration::from_nanos);
        Some(Self {
            count: samples.len(),
            p50: at(50.0)?,
            p90: at(90.0)?,
            p99: at(99.0)?,
            max: Duration::from_nanos(*samples.last()?),
        })
    }
}

/// A duration in milliseconds with two decimals (`1.27 ms`).
pub fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

/// A duration in seconds with one decimal (`12.3 s`).
pub fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_one_to_one_hundred_are_their_rank() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 50.0), Some(50));
        assert_eq!(percentile(&samples, 90.0), Some(90));
        assert_eq!(percentile(&samples, 99.0), Some(99));
        assert_eq!(percentile(&samples, 100.0), Some(100));
    }

    #[test]
    fn a_percentile_between_ranks_rounds_up_to_an_observed_sample() {
        let samples = [10, 20, 30, 40];
        assert_eq!(percentile(&samples, 50.0), Some(20));
        assert_eq!(percentile(&samples, 51.0), Some(30));
        assert_eq!(percentile(&samples, 99.0), Some(40));
    }

    #[test]
    fn the_zeroth_percentile_is_the_smallest_sample() {
        assert_eq!(percentile(&[7, 8, 9], 0.0), Some(7));
    }

    #[test]
    fn no_samples_have_no_percentile() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(LatencySummary::from_nanos(Vec::new()), None);
    }

    #[test]
    fn a_summary_sorts_its_samples_first() {
        let summary = LatencySummary::from_nanos(vec![3_000, 1_000, 2_000]).unwrap();
        assert_eq!(summary.count, 3);
        assert_eq!(summary.p50, Duration::from_micros(2));
        assert_eq!(summary.p99, Duration::from_micros(3));
        assert_eq!(summary.max, Duration::from_micros(3));
    }

    #[test]
    fn millis_prints_two_decimals() {
        assert_eq!(millis(Duration::from_micros(1_274)), "1.27 ms");
        assert_eq!(millis(Duration::from_millis(250)), "250.00 ms");
    }
}
