//! What the consumers saw, shared by the devices' tasks and the consumers' without a lock: per-partition counts
//! of throughput events, and per-`seq` stamps of latency messages (sent, PUBACK received, event received), in
//! nanoseconds since the run's origin plus one (0: not yet).
//!
//! Every message carries its phase and `seq` in its JSON body (`{"phase":"latency","seq":17}`), so that an
//! event is matched to its publish by what the device sent, whatever the hub adds around it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::consumer::PartitionConsumer;

/// The two phases, as the body names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Devices publish as fast as the hub acknowledges.
    Throughput,
    /// Devices publish at a paced rate; each message is timed.
    Latency,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Self::Throughput => "throughput",
            Self::Latency => "latency",
        }
    }

    /// The body of message `seq` of this phase.
    pub fn body(self, seq: u64) -> String {
        format!(r#"{{"phase":"{}","seq":{seq}}}"#, self.name())
    }
}

/// Reads the phase and `seq` back from a body; `None` for a body the harness did not send.
pub fn parse_body(body: &[u8]) -> Option<(Phase, u64)> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let phase = match value.get("phase")?.as_str()? {
        "throughput" => Phase::Throughput,
        "latency" => Phase::Latency,
        _ => return None,
    };
    Some((phase, value.get("seq")?.as_u64()?))
}

/// The shared record of a run.
pub struct Ledger {
    origin: Instant,
    /// Throughput events received, per partition.
    pub delivered: Vec<AtomicU64>,
    /// When latency message `seq` was handed to the client.
    pub sent: Vec<AtomicU64>,
    /// When its PUBACK reached the device.
    pub acked: Vec<AtomicU64>,
    /// When its event reached a consumer.
    pub received: Vec<AtomicU64>,
    /// Latency events received (first copies).
    pub received_count: AtomicUsize,
    /// Latency events received more than once.
    pub duplicates: AtomicUsize,
    /// Events whose body the harness did not send, or whose `seq` is out of range.
    pub strays: AtomicUsize,
}

impl Ledger {
    /// A ledger for `partitions` consumers and `latency_messages` timed messages.
    pub fn new(partitions: u32, latency_messages: usize) -> Self {
        let slots = || (0..latency_messages).map(|_| AtomicU64::new(0)).collect();
        Self {
            origin: Instant::now(),
            delivered: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            sent: slots(),
            acked: slots(),
            received: slots(),
            received_count: AtomicUsize::new(0),
            duplicates: AtomicUsize::new(0),
            strays: AtomicUsize::new(0),
        }
    }

    /// Now, in nanoseconds since the origin, plus one.
    pub fn stamp(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64 + 1
    }

    /// Throughput events delivered so far, per partition.
    pub fn delivered_now(&self) -> Vec<u64> {
        self.delivered
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .collect()
    }

    /// Records an event received by the consumer of `partition`.
    pub fn receive(&self, partition: u32, body: &[u8]) {
        let now = self.stamp();
        match parse_body(body) {
            Some((Phase::Throughput, _)) => match self.delivered.get(partition as usize) {
                Some(count) => {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.strays.fetch_add(1, Ordering::Relaxed);
                }
            },
            Some((Phase::Latency, seq)) => match self.received.get(seq as usize) {
                Some(slot) => {
                    let first = slot
                        .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok();
                    let counter = if first {
                        &self.received_count
                    } else {
                        &self.duplicates
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.strays.fetch_add(1, Ordering::Relaxed);
                }
            },
            None => {
                self.strays.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits until `done` holds or `grace` has passed; true if it holds.
    pub async fn wait_until(&self, grace: Duration, done: impl Fn(&Self) -> bool) -> bool {
        let deadline = Instant::now() + grace;
        while !done(self) {
            if Instant::now() >= deadline {
                return false;
            }
            // Counters, not events: nothing to wait on but time.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// A consumer's task: records every event until told to stop; the consumer comes back (to be closed), with
/// the error that ended it early, if any.
pub async fn consume(
    mut consumer: PartitionConsumer,
    ledger: std::sync::Arc<Ledger>,
    mut stop: watch::Receiver<bool>,
) -> (PartitionConsumer, Option<String>) {
    loop {
        tokio::select! {
            body = consumer.next_body() => match body {
                Ok(body) => ledger.receive(consumer.partition, &body),
                Err(error) => return (consumer, Some(format!("{error:#}"))),
            },
            _ = stop.changed() => return (consumer, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_reads_back_as_its_phase_and_seq() {
        assert_eq!(
            parse_body(Phase::Latency.body(17).as_bytes()),
            Some((Phase::Latency, 17))
        );
        assert_eq!(
            parse_body(Phase::Throughput.body(0).as_bytes()),
            Some((Phase::Throughput, 0))
        );
        assert_eq!(parse_body(b"{\"temperature\":21}"), None);
        assert_eq!(parse_body(b"not json"), None);
    }

    #[test]
    fn a_second_copy_of_a_latency_event_counts_as_a_duplicate() {
        let ledger = Ledger::new(2, 4);
        ledger.receive(0, Phase::Latency.body(3).as_bytes());
        ledger.receive(1, Phase::Latency.body(3).as_bytes());
        assert_eq!(ledger.received_count.load(Ordering::Relaxed), 1);
        assert_eq!(ledger.duplicates.load(Ordering::Relaxed), 1);
        assert_ne!(ledger.received[3].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn throughput_events_count_per_partition_and_others_are_strays() {
        let ledger = Ledger::new(2, 1);
        ledger.receive(1, Phase::Throughput.body(9).as_bytes());
        ledger.receive(1, Phase::Throughput.body(10).as_bytes());
        ledger.receive(0, Phase::Latency.body(5).as_bytes());
        ledger.receive(0, b"{}");
        assert_eq!(ledger.delivered_now(), vec![0, 2]);
        assert_eq!(ledger.strays.load(Ordering::Relaxed), 2);
    }
}
