//! The records of the partitioned event stream behind the Event Hubs-compatible endpoint: events by partition with
//! their sequence numbers, each partition's head, the Event Hub's settings and the delivery feedback of
//! cloud-to-device messages. [`crate::storage::Tables`] stores and reads them.
//!
//! An event's offset is its global sequence number (the `events` rowid): it grows within each partition, and
//! one integer reads both the REST stream and a partition. Partition sequence numbers start at 0 and have no gaps;
//! the head of each partition is kept apart from the events, so that pruning every event of a partition (or a restart)
//! never hands a number out twice.

use serde_json::Value;

/// What caused an event (the `iothub-message-source` annotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    /// A device-to-cloud message.
    Telemetry,
    /// A change of a device's or module's twin.
    TwinChange,
}

impl EventSource {
    /// The value of `iothub-message-source`.
    pub fn annotation(self) -> &'static str {
        match self {
            Self::Telemetry => "Telemetry",
            Self::TwinChange => "twinChangeEvents",
        }
    }
}

/// The Event Hub the stream is presented as, fixed when the hub first opens its database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHubRecord {
    /// The entity path.
    pub name: String,
    /// How many partitions.
    pub partitions: u32,
    /// When it was created, Unix milliseconds.
    pub created_ms: i64,
}

/// The partition of a device's events: FNV-1a of its id, so that it never changes between versions or runs.
pub fn partition_of(device: &str, partitions: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in device.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions.max(1)
}

/// Where an appended event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its global sequence number (the REST stream's, and the event's offset).
    pub seq: i64,
    /// Its partition.
    pub partition: u32,
    /// Its sequence number in the partition.
    pub partition_seq: i64,
}

/// A partition's newest event (`last_seq` `-1` when it never had one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The sequence number of its newest event.
    pub last_seq: i64,
    /// The offset of its newest event (`-1`: none).
    pub last_offset: i64,
    /// When its newest event was enqueued (0: none).
    pub last_enqueued_ms: i64,
}

/// One event of a partition as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionEvent {
    /// Its sequence number in the partition.
    pub partition_seq: i64,
    /// Its offset (the global sequence number).
    pub offset: i64,
    /// When it was enqueued, Unix milliseconds.
    pub enqueued_ms: i64,
    /// What caused it.
    pub source: EventSource,
    /// Its JSON (the REST stream's form).
    pub event: Value,
}

/// A batch of feedback records locked for one receiver.
#[derive(Debug, Clone)]
pub struct LockedFeedback {
    /// The records, oldest first.
    pub records: Vec<Value>,
    /// When the oldest was recorded, Unix milliseconds.
    pub enqueued_ms: i64,
}
