//! The tables of the partitioned event stream behind the Event Hubs-compatible endpoint: events by partition with
//! their sequence numbers, each partition's head, the Event Hub's settings, consumer groups and the delivery
//! feedback of cloud-to-device messages.
//!
//! An event's offset is its global sequence number (the `events` rowid): it grows within each partition, and
//! one integer reads both the REST stream and a partition. Partition sequence numbers start at 0 and have no gaps;
//! the head of each partition lives in `partition_heads`, so that pruning every event of a partition (or a restart)
//! never hands a number out twice.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use crate::store::StorageError;

/// What caused an event (the `iothub-message-source` annotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    /// A device-to-cloud message.
    Telemetry,
    /// A change of a device's or module's twin.
    TwinChange,
}

impl EventSource {
    fn column(self) -> i64 {
        match self {
            Self::Telemetry => 0,
            Self::TwinChange => 1,
        }
    }

    fn from_column(value: i64) -> Self {
        if value == 1 {
            Self::TwinChange
        } else {
            Self::Telemetry
        }
    }

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

/// The stored Event Hub, if the hub has opened this database since it had partitions.
pub fn event_hub(conn: &Connection) -> Result<Option<EventHubRecord>, StorageError> {
    Ok(conn
        .query_row(
            "SELECT name, partitions, created_ms FROM event_hub WHERE id = 0",
            [],
            |r| {
                Ok(EventHubRecord {
                    name: r.get(0)?,
                    partitions: r.get(1)?,
                    created_ms: r.get(2)?,
                })
            },
        )
        .optional()?)
}

/// Stores the Event Hub and the heads of its partitions (once: the caller checked there is none).
pub fn create_event_hub(conn: &Connection, record: &EventHubRecord) -> Result<(), StorageError> {
    conn.execute(
        "INSERT INTO event_hub (id, name, partitions, created_ms) VALUES (0, ?1, ?2, ?3)",
        params![record.name, record.partitions, record.created_ms],
    )?;
    Ok(())
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

/// Appends an event to `partition`, enqueued at `enqueued_ms` (Unix milliseconds).
pub fn append_event(
    conn: &Connection,
    partition: u32,
    source: EventSource,
    event: &Value,
    enqueued_ms: i64,
) -> Result<Appended, StorageError> {
    let text = serde_json::to_string(event)?;
    let partition_seq = head(conn, partition)?.last_seq + 1;
    conn.prepare_cached(
        "INSERT INTO events (enqueued_ms, bytes, partition, partition_seq, source, event)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        enqueued_ms,
        text.len() as i64,
        partition,
        partition_seq,
        source.column(),
        text
    ])?;
    let seq = conn.last_insert_rowid();
    advance_head(conn, partition, partition_seq, seq, enqueued_ms)?;
    Ok(Appended {
        seq,
        partition,
        partition_seq,
    })
}

fn advance_head(
    conn: &Connection,
    partition: u32,
    partition_seq: i64,
    offset: i64,
    enqueued_ms: i64,
) -> Result<(), StorageError> {
    conn.prepare_cached(
        "INSERT INTO partition_heads (partition, last_seq, last_offset, last_enqueued_ms)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (partition) DO UPDATE SET last_seq = excluded.last_seq,
             last_offset = excluded.last_offset, last_enqueued_ms = excluded.last_enqueued_ms",
    )?
    .execute(params![partition, partition_seq, offset, enqueued_ms])?;
    Ok(())
}

/// Gives the events of an older database (stored before partitions existed) their partitions and sequence
/// numbers, in the order they were enqueued; returns how many.
pub fn assign_partitions(conn: &Connection, partitions: u32) -> Result<usize, StorageError> {
    let unassigned: Vec<(i64, i64, String)> = {
        let mut statement = conn.prepare(
            "SELECT seq, enqueued_ms, event FROM events WHERE partition IS NULL ORDER BY seq",
        )?;
        let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (seq, enqueued_ms, text) in &unassigned {
        let event: Value = serde_json::from_str(text)?;
        let device = event.get("deviceId").and_then(Value::as_str).unwrap_or("");
        let partition = partition_of(device, partitions);
        let partition_seq = head(conn, partition)?.last_seq + 1;
        conn.execute(
            "UPDATE events SET partition = ?1, partition_seq = ?2 WHERE seq = ?3",
            params![partition, partition_seq, seq],
        )?;
        advance_head(conn, partition, partition_seq, *seq, *enqueued_ms)?;
    }
    Ok(unassigned.len())
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

/// The head of a partition.
pub fn head(conn: &Connection, partition: u32) -> Result<Head, StorageError> {
    Ok(conn
        .prepare_cached(
            "SELECT last_seq, last_offset, last_enqueued_ms FROM partition_heads WHERE partition = ?1",
        )?
        .query_row([partition], |r| {
            Ok(Head {
                last_seq: r.get(0)?,
                last_offset: r.get(1)?,
                last_enqueued_ms: r.get(2)?,
            })
        })
        .optional()?
        .unwrap_or(Head {
            last_seq: -1,
            last_offset: -1,
            last_enqueued_ms: 0,
        }))
}

/// The sequence number of the oldest event a partition still keeps.
pub fn first_kept(conn: &Connection, partition: u32) -> Result<Option<i64>, StorageError> {
    Ok(conn
        .prepare_cached("SELECT MIN(partition_seq) FROM events WHERE partition = ?1")?
        .query_row([partition], |r| r.get(0))?)
}

/// The sequence number of the first kept event of a partition at or after offset `offset` (after it, unless
/// `inclusive`).
pub fn first_from_offset(
    conn: &Connection,
    partition: u32,
    offset: i64,
    inclusive: bool,
) -> Result<Option<i64>, StorageError> {
    let from = if inclusive {
        offset
    } else {
        offset.saturating_add(1)
    };
    Ok(conn
        // A rowid range scan from the offset: it stops at the first event of the partition, a few rows on,
        // where the partition index would walk the partition's events before the offset.
        .prepare_cached(
            "SELECT partition_seq FROM events NOT INDEXED WHERE seq >= ?2 AND partition = ?1
             ORDER BY seq LIMIT 1",
        )?
        .query_row(params![partition, from], |r| r.get(0))
        .optional()?)
}

/// The sequence number of the first kept event of a partition enqueued after `ms`.
pub fn first_after_time(
    conn: &Connection,
    partition: u32,
    ms: i64,
) -> Result<Option<i64>, StorageError> {
    Ok(conn
        .prepare_cached(
            "SELECT partition_seq FROM events INDEXED BY events_by_partition_time
             WHERE partition = ?1 AND enqueued_ms > ?2 ORDER BY enqueued_ms, partition_seq LIMIT 1",
        )?
        .query_row(params![partition, ms], |r| r.get(0))
        .optional()?)
}

/// One event of a partition as stored.
#[derive(Debug, Clone)]
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

/// Up to `max` events of `partition` with a sequence number above `after`, in order.
pub fn partition_events(
    conn: &Connection,
    partition: u32,
    after: i64,
    max: usize,
) -> Result<Vec<PartitionEvent>, StorageError> {
    let mut statement = conn.prepare_cached(
        "SELECT partition_seq, seq, enqueued_ms, source, event FROM events
         WHERE partition = ?1 AND partition_seq > ?2 ORDER BY partition_seq LIMIT ?3",
    )?;
    let rows = statement.query_map(params![partition, after, max as i64], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    rows.map(|row| {
        let (partition_seq, offset, enqueued_ms, source, text) = row?;
        Ok(PartitionEvent {
            partition_seq,
            offset,
            enqueued_ms,
            source: EventSource::from_column(source),
            event: serde_json::from_str(&text)?,
        })
    })
    .collect()
}

/// The consumer groups created besides `$Default`, by name.
pub fn consumer_groups(conn: &Connection) -> Result<Vec<String>, StorageError> {
    let mut statement = conn.prepare_cached("SELECT name FROM consumer_groups ORDER BY name")?;
    let rows = statement.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether a consumer group was created (names compare without case, as Event Hubs does).
pub fn consumer_group_exists(conn: &Connection, name: &str) -> Result<bool, StorageError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM consumer_groups WHERE name = ?1")?
        .query_row([name], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Creates a consumer group; returns false if it existed.
pub fn create_consumer_group(
    conn: &Connection,
    name: &str,
    created_ms: i64,
) -> Result<bool, StorageError> {
    Ok(conn.execute(
        "INSERT INTO consumer_groups (name, created_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        params![name, created_ms],
    )? > 0)
}

/// Deletes a consumer group; returns whether it existed.
pub fn delete_consumer_group(conn: &Connection, name: &str) -> Result<bool, StorageError> {
    Ok(conn.execute("DELETE FROM consumer_groups WHERE name = ?1", [name])? > 0)
}

/// Records one delivery feedback record.
pub fn add_feedback(
    conn: &Connection,
    record: &Value,
    enqueued_ms: i64,
) -> Result<i64, StorageError> {
    conn.execute(
        "INSERT INTO feedback (enqueued_ms, record) VALUES (?1, ?2)",
        params![enqueued_ms, serde_json::to_string(record)?],
    )?;
    Ok(conn.last_insert_rowid())
}

/// A batch of feedback records locked for one receiver.
#[derive(Debug, Clone)]
pub struct LockedFeedback {
    /// The records, oldest first.
    pub records: Vec<Value>,
    /// When the oldest was recorded, Unix milliseconds.
    pub enqueued_ms: i64,
}

/// Locks up to `max` records that are not locked at `now_ms` under `token` until `until_ms`; `None` when every
/// record is locked or there is none.
pub fn lock_feedback(
    conn: &Connection,
    token: i64,
    now_ms: i64,
    until_ms: i64,
    max: usize,
) -> Result<Option<LockedFeedback>, StorageError> {
    let rows: Vec<(i64, i64, String)> = {
        let mut statement = conn.prepare_cached(
            "SELECT id, enqueued_ms, record FROM feedback WHERE locked_until_ms <= ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = statement.query_map(params![now_ms, max as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let Some(&(_, enqueued_ms, _)) = rows.first() else {
        return Ok(None);
    };
    let mut records = Vec::with_capacity(rows.len());
    for (id, _, text) in rows {
        conn.prepare_cached(
            "UPDATE feedback SET lock_token = ?1, locked_until_ms = ?2 WHERE id = ?3",
        )?
        .execute(params![token, until_ms, id])?;
        records.push(serde_json::from_str(&text)?);
    }
    Ok(Some(LockedFeedback {
        records,
        enqueued_ms,
    }))
}

/// When the earliest lock of a record ends (Unix milliseconds), if any record is locked.
pub fn next_feedback_unlock(conn: &Connection, now_ms: i64) -> Result<Option<i64>, StorageError> {
    Ok(conn
        .prepare_cached("SELECT MIN(locked_until_ms) FROM feedback WHERE locked_until_ms > ?1")?
        .query_row([now_ms], |r| r.get(0))?)
}

/// Deletes the records locked under `token`; returns how many.
pub fn complete_feedback(conn: &Connection, token: i64) -> Result<usize, StorageError> {
    Ok(conn.execute("DELETE FROM feedback WHERE lock_token = ?1", [token])?)
}

/// How many feedback records wait (locked or not).
pub fn feedback_count(conn: &Connection) -> Result<usize, StorageError> {
    let count: i64 = conn.query_row("SELECT COUNT(*) FROM feedback", [], |r| r.get(0))?;
    Ok(count.max(0).unsigned_abs() as usize)
}
