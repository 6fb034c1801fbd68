//! The hub's tables in the embedded SQL store.
//!
//! Records are kept as JSON text keyed by their ids: the registry's shape changes more often than its access
//! paths, and every lookup is by key. The functions take a `&Connection` so that callers compose them inside one
//! transaction (check an etag, then write) with [`outpost_store::Database::transaction`].

use outpost_core::{DeviceId, ModuleId, Twin};
use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::identity::{AccessPolicy, DeviceRecord, ModuleRecord};

/// The schema, one migration per version (see [`outpost_store::Database::open`]).
pub const MIGRATIONS: &[&str] = &["
    CREATE TABLE devices (device_id TEXT PRIMARY KEY, record TEXT NOT NULL);
    CREATE TABLE modules (
        device_id TEXT NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
        module_id TEXT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (device_id, module_id));
    CREATE TABLE twins (
        device_id TEXT NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
        module_id TEXT NOT NULL,
        twin TEXT NOT NULL,
        PRIMARY KEY (device_id, module_id));
    CREATE TABLE policies (name TEXT PRIMARY KEY, record TEXT NOT NULL);
    CREATE TABLE sessions (client_id TEXT PRIMARY KEY, filters TEXT NOT NULL);
    CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event TEXT NOT NULL);
    CREATE TABLE c2d (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id TEXT NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
        message TEXT NOT NULL);
    CREATE TABLE deployments (
        device_id TEXT PRIMARY KEY REFERENCES devices(device_id) ON DELETE CASCADE,
        manifest TEXT NOT NULL,
        applied TEXT NOT NULL);
", "
    -- The event stream's retention (see `prune_events`) needs each event's age and size without reading its JSON:
    -- both are columns before the JSON, so a large event's overflow pages are not read to find them, and the
    -- total is kept by triggers so that checking the size cap reads one row.
    CREATE TABLE events_v2 (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        enqueued_ms INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        event TEXT NOT NULL);
    INSERT INTO events_v2 (seq, enqueued_ms, bytes, event)
        SELECT seq,
            COALESCE(CAST(strftime('%s', json_extract(event, '$.enqueuedTime')) AS INTEGER),
                     CAST(strftime('%s', 'now') AS INTEGER)) * 1000,
            length(CAST(event AS BLOB)),
            event
        FROM events;
    DROP TABLE events;
    ALTER TABLE events_v2 RENAME TO events;
    CREATE TABLE event_totals (bytes INTEGER NOT NULL);
    INSERT INTO event_totals (bytes) SELECT COALESCE(SUM(bytes), 0) FROM events;
    CREATE TRIGGER event_added AFTER INSERT ON events
        BEGIN UPDATE event_totals SET bytes = bytes + NEW.bytes; END;
    CREATE TRIGGER event_removed AFTER DELETE ON events
        BEGIN UPDATE event_totals SET bytes = bytes - OLD.bytes; END;
", "
    -- The Event Hubs-compatible endpoint (see `stream`): every event belongs to a partition and has a sequence
    -- number in it. The partition count is a setting of the hub, not of the schema: events of an older database
    -- get theirs when the hub first opens it (`stream::assign_partitions`), hence the NULLs. The source tells
    -- telemetry (0) from twin change events (1). The columns stay before the JSON (see the previous migration).
    CREATE TABLE events_v3 (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        enqueued_ms INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        partition INTEGER,
        partition_seq INTEGER,
        source INTEGER NOT NULL DEFAULT 0,
        event TEXT NOT NULL);
    INSERT INTO events_v3 (seq, enqueued_ms, bytes, event) SELECT seq, enqueued_ms, bytes, event FROM events;
    -- The high-water mark survives even when every event was pruned.
    DELETE FROM sqlite_sequence WHERE name = 'events_v3';
    INSERT INTO sqlite_sequence (name, seq) SELECT 'events_v3', seq FROM sqlite_sequence WHERE name = 'events';
    DROP TABLE events;
    ALTER TABLE events_v3 RENAME TO events;
    CREATE INDEX events_by_partition ON events (partition, partition_seq);
    CREATE TRIGGER event_added AFTER INSERT ON events
        BEGIN UPDATE event_totals SET bytes = bytes + NEW.bytes; END;
    CREATE TRIGGER event_removed AFTER DELETE ON events
        BEGIN UPDATE event_totals SET bytes = bytes - OLD.bytes; END;
    -- One row: the Event Hub the stream is presented as, fixed when the hub first opens the database.
    CREATE TABLE event_hub (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        name TEXT NOT NULL,
        partitions INTEGER NOT NULL,
        created_ms INTEGER NOT NULL);
    -- Each partition's newest event, kept apart from the events so that pruning never resets a sequence.
    CREATE TABLE partition_heads (
        partition INTEGER PRIMARY KEY,
        last_seq INTEGER NOT NULL,
        last_offset INTEGER NOT NULL,
        last_enqueued_ms INTEGER NOT NULL);
    CREATE TABLE consumer_groups (name TEXT PRIMARY KEY COLLATE NOCASE, created_ms INTEGER NOT NULL);
    -- Delivery feedback of cloud-to-device messages, handed to the service in locked batches.
    CREATE TABLE feedback (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        enqueued_ms INTEGER NOT NULL,
        record TEXT NOT NULL,
        lock_token INTEGER,
        locked_until_ms INTEGER NOT NULL DEFAULT 0);
", "
    -- A receiver that starts at an enqueued time finds its first event without scanning its partition.
    CREATE INDEX events_by_partition_time ON events (partition, enqueued_ms);
", "
    -- Expired cloud-to-device messages are found through an index, not by reading every queued message's JSON.
    ALTER TABLE c2d ADD COLUMN expiry_ms INTEGER;
    UPDATE c2d SET expiry_ms = CAST(ROUND((julianday(
        json_extract(message, '$.system.\"absolute-expiry-time\"')) - 2440587.5) * 86400000) AS INTEGER);
    CREATE INDEX c2d_by_expiry ON c2d (expiry_ms);
"];

/// Errors of the hub's storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// SQLite failed.
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    /// A stored record could not be read back.
    #[error("corrupt record: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// The group commit that carried a write failed, so the write is not stored.
    #[error("the group commit failed: {0}")]
    CommitFailed(String),
    /// The storage writer's thread could not be started.
    #[error("could not start the storage writer: {0}")]
    WriterStart(std::io::Error),
    /// The storage writer has stopped (the hub is shutting down).
    #[error("the storage writer has stopped")]
    WriterStopped,
    /// PostgreSQL refused or failed a statement (a constraint, a type, a bad query).
    #[error("PostgreSQL failed: {0}")]
    Postgres(String),
    /// The database cannot be reached (connection lost, refused or timed out): answer 503 and retry later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
}

fn to_text<T: Serialize>(value: &T) -> Result<String, StorageError> {
    Ok(serde_json::to_string(value)?)
}

fn from_text<T: DeserializeOwned>(text: Option<String>) -> Result<Option<T>, StorageError> {
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(StorageError::from)
}

/// The module column of the twins table: empty for the device twin.
fn module_key(module: Option<&ModuleId>) -> &str {
    module.map_or("", ModuleId::as_str)
}

/// Reads one device.
pub fn device(conn: &Connection, id: &DeviceId) -> Result<Option<DeviceRecord>, StorageError> {
    let text = conn
        .query_row(
            "SELECT record FROM devices WHERE device_id = ?1",
            [id.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    from_text(text)
}

/// Lists every device, ordered by id.
pub fn devices(conn: &Connection) -> Result<Vec<DeviceRecord>, StorageError> {
    let mut statement = conn.prepare_cached("SELECT record FROM devices ORDER BY device_id")?;
    let rows = statement.query_map([], |r| r.get::<_, String>(0))?;
    rows.map(|text| Ok(serde_json::from_str(&text?)?)).collect()
}

/// Inserts or replaces a device.
pub fn put_device(conn: &Connection, record: &DeviceRecord) -> Result<(), StorageError> {
    conn.execute(
        "INSERT INTO devices (device_id, record) VALUES (?1, ?2)
         ON CONFLICT (device_id) DO UPDATE SET record = excluded.record",
        params![record.device_id.as_str(), to_text(record)?],
    )?;
    Ok(())
}

/// Deletes a device with its modules, twins, queued messages and deployment; returns whether it existed.
pub fn delete_device(conn: &Connection, id: &DeviceId) -> Result<bool, StorageError> {
    let prefix = format!("{id}/");
    conn.execute(
        "DELETE FROM sessions WHERE client_id = ?1 OR substr(client_id, 1, length(?2)) = ?2",
        params![id.as_str(), prefix],
    )?;
    Ok(conn.execute("DELETE FROM devices WHERE device_id = ?1", [id.as_str()])? > 0)
}

/// The ids of the modules of a device.
pub fn module_ids(
    conn: &Connection,
    device: &DeviceId,
) -> Result<std::collections::HashSet<String>, StorageError> {
    let mut statement =
        conn.prepare_cached("SELECT module_id FROM modules WHERE device_id = ?1")?;
    let rows = statement.query_map([device.as_str()], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Reads one module.
pub fn module(
    conn: &Connection,
    device: &DeviceId,
    module: &ModuleId,
) -> Result<Option<ModuleRecord>, StorageError> {
    let text = conn
        .query_row(
            "SELECT record FROM modules WHERE device_id = ?1 AND module_id = ?2",
            [device.as_str(), module.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    from_text(text)
}

/// Lists the modules of a device, ordered by name.
pub fn modules(conn: &Connection, device: &DeviceId) -> Result<Vec<ModuleRecord>, StorageError> {
    let mut statement =
        conn.prepare_cached("SELECT record FROM modules WHERE device_id = ?1 ORDER BY module_id")?;
    let rows = statement.query_map([device.as_str()], |r| r.get::<_, String>(0))?;
    rows.map(|text| Ok(serde_json::from_str(&text?)?)).collect()
}

/// Inserts or replaces a module.
pub fn put_module(conn: &Connection, record: &ModuleRecord) -> Result<(), StorageError> {
    conn.execute(
        "INSERT INTO modules (device_id, module_id, record) VALUES (?1, ?2, ?3)
         ON CONFLICT (device_id, module_id) DO UPDATE SET record = excluded.record",
        params![
            record.device_id.as_str(),
            record.module_id.as_str(),
            to_text(record)?
        ],
    )?;
    Ok(())
}

/// Deletes a module and its twin; returns whether it existed.
pub fn delete_module(
    conn: &Connection,
    device: &DeviceId,
    module: &ModuleId,
) -> Result<bool, StorageError> {
    let key = [device.as_str(), module.as_str()];
    conn.execute(
        "DELETE FROM twins WHERE device_id = ?1 AND module_id = ?2",
        key,
    )?;
    conn.execute(
        "DELETE FROM sessions WHERE client_id = ?1",
        [format!("{device}/{module}")],
    )?;
    Ok(conn.execute(
        "DELETE FROM modules WHERE device_id = ?1 AND module_id = ?2",
        key,
    )? > 0)
}

/// Reads the twin of a device (`module` `None`) or of a module.
pub fn twin(
    conn: &Connection,
    device: &DeviceId,
    module: Option<&ModuleId>,
) -> Result<Option<Twin>, StorageError> {
    let text = conn
        .query_row(
            "SELECT twin FROM twins WHERE device_id = ?1 AND module_id = ?2",
            [device.as_str(), module_key(module)],
            |r| r.get(0),
        )
        .optional()?;
    from_text(text)
}

/// Inserts or replaces a twin.
pub fn put_twin(
    conn: &Connection,
    device: &DeviceId,
    module: Option<&ModuleId>,
    twin: &Twin,
) -> Result<(), StorageError> {
    conn.execute(
        "INSERT INTO twins (device_id, module_id, twin) VALUES (?1, ?2, ?3)
         ON CONFLICT (device_id, module_id) DO UPDATE SET twin = excluded.twin",
        params![device.as_str(), module_key(module), to_text(twin)?],
    )?;
    Ok(())
}

/// Every shared access policy.
pub fn policies(conn: &Connection) -> Result<Vec<AccessPolicy>, StorageError> {
    let mut statement = conn.prepare_cached("SELECT record FROM policies ORDER BY name")?;
    let rows = statement.query_map([], |r| r.get::<_, String>(0))?;
    rows.map(|text| Ok(serde_json::from_str(&text?)?)).collect()
}

/// Inserts or replaces a shared access policy.
pub fn put_policy(conn: &Connection, policy: &AccessPolicy) -> Result<(), StorageError> {
    conn.execute(
        "INSERT INTO policies (name, record) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET record = excluded.record",
        params![policy.name, to_text(policy)?],
    )?;
    Ok(())
}

/// The persisted MQTT subscriptions of a client id.
pub fn session(conn: &Connection, client_id: &str) -> Result<Vec<String>, StorageError> {
    let text = conn
        .query_row(
            "SELECT filters FROM sessions WHERE client_id = ?1",
            [client_id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(from_text(text)?.unwrap_or_default())
}

/// Persists the MQTT subscriptions of a client id; an empty list forgets the session.
pub fn put_session(
    conn: &Connection,
    client_id: &str,
    filters: &[String],
) -> Result<(), StorageError> {
    if filters.is_empty() {
        conn.execute("DELETE FROM sessions WHERE client_id = ?1", [client_id])?;
    } else {
        conn.execute(
            "INSERT INTO sessions (client_id, filters) VALUES (?1, ?2)
             ON CONFLICT (client_id) DO UPDATE SET filters = excluded.filters",
            params![client_id, to_text(&filters)?],
        )?;
    }
    Ok(())
}

/// Reads up to `max` events with a sequence number above `after` (from the oldest kept when `after` is older);
/// twin change events only with `all_sources`.
pub fn events_after(
    conn: &Connection,
    after: i64,
    max: usize,
    all_sources: bool,
) -> Result<Vec<(i64, serde_json::Value)>, StorageError> {
    let mut statement = conn.prepare_cached(
        "SELECT seq, event FROM events WHERE seq > ?1 AND (?3 OR source = 0) ORDER BY seq LIMIT ?2",
    )?;
    let rows = statement.query_map(params![after, max as i64, all_sources], |r| {
        Ok((r.get(0)?, r.get::<_, String>(1)?))
    })?;
    rows.map(|row| {
        let (seq, text) = row?;
        Ok((seq, serde_json::from_str(&text)?))
    })
    .collect()
}

/// The sequence number of the newest event ever appended (0 when there was none), even if it was pruned.
pub fn last_event(conn: &Connection) -> Result<i64, StorageError> {
    Ok(conn.query_row(
        "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
        [],
        |r| r.get(0),
    )?)
}

/// The bytes of event JSON stored.
pub fn event_bytes(conn: &Connection) -> Result<u64, StorageError> {
    let bytes: i64 = conn.query_row("SELECT bytes FROM event_totals", [], |r| r.get(0))?;
    Ok(bytes.max(0).unsigned_abs())
}

/// Deletes the oldest events that were enqueued before `cutoff_ms` or that take the stored JSON over
/// `max_bytes`, at most `batch` of them in one statement; returns how many. Newer events are never deleted
/// before older ones, so what is kept is always the newest part of the stream.
pub fn prune_events(
    conn: &Connection,
    cutoff_ms: i64,
    max_bytes: u64,
    batch: usize,
) -> Result<usize, StorageError> {
    let mut excess = i128::from(event_bytes(conn)?) - i128::from(max_bytes);
    let mut statement =
        conn.prepare_cached("SELECT seq, enqueued_ms, bytes FROM events ORDER BY seq LIMIT ?1")?;
    let mut rows = statement.query([batch as i64])?;
    let (mut last, mut count) = (None, 0);
    while let Some(row) = rows.next()? {
        let (seq, enqueued_ms, bytes): (i64, i64, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
        if enqueued_ms >= cutoff_ms && excess <= 0 {
            break;
        }
        excess -= i128::from(bytes);
        last = Some(seq);
        count += 1;
    }
    drop(rows);
    if let Some(last) = last {
        conn.prepare_cached("DELETE FROM events WHERE seq <= ?1")?
            .execute([last])?;
    }
    Ok(count)
}

/// Queues a cloud-to-device message; returns its id. Its `absolute-expiry-time` (RFC 3339), if any, is kept in
/// Unix milliseconds beside it for [`expired_c2d`].
pub fn enqueue_c2d(
    conn: &Connection,
    device: &DeviceId,
    message: &serde_json::Value,
) -> Result<i64, StorageError> {
    let expiry_ms = message["system"]["absolute-expiry-time"]
        .as_str()
        .and_then(|time| chrono::DateTime::parse_from_rfc3339(time).ok())
        .map(|time| time.timestamp_millis());
    conn.prepare_cached("INSERT INTO c2d (device_id, message, expiry_ms) VALUES (?1, ?2, ?3)")?
        .execute(params![device.as_str(), to_text(message)?, expiry_ms])?;
    Ok(conn.last_insert_rowid())
}

/// The queued cloud-to-device messages of a device, oldest first.
pub fn pending_c2d(
    conn: &Connection,
    device: &DeviceId,
) -> Result<Vec<(i64, serde_json::Value)>, StorageError> {
    let mut statement =
        conn.prepare_cached("SELECT id, message FROM c2d WHERE device_id = ?1 ORDER BY id")?;
    let rows = statement.query_map([device.as_str()], |r| {
        Ok((r.get(0)?, r.get::<_, String>(1)?))
    })?;
    rows.map(|row| {
        let (id, text) = row?;
        Ok((id, serde_json::from_str(&text)?))
    })
    .collect()
}

/// One queued cloud-to-device message of a device.
pub fn c2d_message(
    conn: &Connection,
    device: &DeviceId,
    id: i64,
) -> Result<Option<serde_json::Value>, StorageError> {
    let text = conn
        .prepare_cached("SELECT message FROM c2d WHERE id = ?1 AND device_id = ?2")?
        .query_row(params![id, device.as_str()], |r| r.get(0))
        .optional()?;
    from_text(text)
}

/// `(device, id)` of the queued cloud-to-device messages whose expiry time is before `now_ms`.
pub fn expired_c2d(conn: &Connection, now_ms: i64) -> Result<Vec<(String, i64)>, StorageError> {
    let mut statement = conn
        .prepare_cached("SELECT device_id, id FROM c2d WHERE expiry_ms < ?1 ORDER BY expiry_ms")?;
    let rows = statement.query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The devices that have cloud-to-device messages waiting.
pub fn devices_with_c2d(conn: &Connection) -> Result<Vec<String>, StorageError> {
    let mut statement = conn.prepare_cached("SELECT DISTINCT device_id FROM c2d")?;
    let rows = statement.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Removes a delivered cloud-to-device message.
pub fn complete_c2d(conn: &Connection, device: &DeviceId, id: i64) -> Result<(), StorageError> {
    conn.execute(
        "DELETE FROM c2d WHERE id = ?1 AND device_id = ?2",
        params![id, device.as_str()],
    )?;
    Ok(())
}

/// Records the deployment last applied to an edge device.
pub fn put_deployment(
    conn: &Connection,
    device: &DeviceId,
    manifest: &serde_json::Value,
) -> Result<(), StorageError> {
    conn.execute(
        "INSERT INTO deployments (device_id, manifest, applied) VALUES (?1, ?2, ?3)
         ON CONFLICT (device_id) DO UPDATE SET manifest = excluded.manifest, applied = excluded.applied",
        params![device.as_str(), to_text(manifest)?, chrono::Utc::now().to_rfc3339()],
    )?;
    Ok(())
}

/// The deployment last applied to an edge device (`{"modulesContent": {..}}`, each entry a desired object).
pub fn deployment(
    conn: &Connection,
    device: &DeviceId,
) -> Result<Option<serde_json::Value>, StorageError> {
    let text = conn
        .query_row(
            "SELECT manifest FROM deployments WHERE device_id = ?1",
            [device.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    from_text(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn append(conn: &Connection, event: &serde_json::Value, at: i64) -> i64 {
        crate::stream::append_event(conn, 0, crate::stream::EventSource::Telemetry, event, at)
            .unwrap()
            .seq
    }

    fn events_db() -> outpost_store::Database {
        outpost_store::Database::in_memory(MIGRATIONS).unwrap()
    }

    fn seqs(conn: &Connection) -> Vec<i64> {
        events_after(conn, 0, 1000, true)
            .unwrap()
            .into_iter()
            .map(|(seq, _)| seq)
            .collect()
    }

    #[test]
    fn pruning_by_age_deletes_the_events_enqueued_before_the_cutoff_only() {
        let db = events_db();
        let conn = db.lock();
        for at in [1_000, 2_000, 3_000, 4_000] {
            append(&conn, &json!({"at": at}), at);
        }
        assert_eq!(prune_events(&conn, 3_000, u64::MAX, 100).unwrap(), 2);
        assert_eq!(seqs(&conn), vec![3, 4]);
        assert_eq!(prune_events(&conn, 3_000, u64::MAX, 100).unwrap(), 0);
    }

    #[test]
    fn pruning_by_size_deletes_the_oldest_until_the_rest_fits_and_keeps_the_newest() {
        let db = events_db();
        let conn = db.lock();
        let event = json!({"body": "x".repeat(90)});
        let size = to_text(&event).unwrap().len() as u64;
        for _ in 0..10 {
            append(&conn, &event, 1_000);
        }
        assert_eq!(event_bytes(&conn).unwrap(), 10 * size);
        assert_eq!(prune_events(&conn, 0, 3 * size + 1, 100).unwrap(), 7);
        assert_eq!(seqs(&conn), vec![8, 9, 10]);
        assert_eq!(event_bytes(&conn).unwrap(), 3 * size);
    }

    #[test]
    fn pruning_deletes_at_most_one_batch_per_call() {
        let db = events_db();
        let conn = db.lock();
        for _ in 0..10 {
            append(&conn, &json!({}), 1_000);
        }
        assert_eq!(prune_events(&conn, 5_000, u64::MAX, 4).unwrap(), 4);
        assert_eq!(prune_events(&conn, 5_000, u64::MAX, 4).unwrap(), 4);
        assert_eq!(prune_events(&conn, 5_000, u64::MAX, 4).unwrap(), 2);
        assert!(seqs(&conn).is_empty());
    }

    #[test]
    fn sequence_numbers_keep_growing_after_everything_was_pruned() {
        let db = events_db();
        let conn = db.lock();
        append(&conn, &json!({}), 1_000);
        append(&conn, &json!({}), 1_000);
        prune_events(&conn, 5_000, u64::MAX, 100).unwrap();
        assert_eq!(last_event(&conn).unwrap(), 2);
        assert_eq!(append(&conn, &json!({}), 6_000), 3);
        assert_eq!(event_bytes(&conn).unwrap(), 2);
    }

    #[test]
    fn a_reader_behind_the_retention_gets_what_is_kept() {
        let db = events_db();
        let conn = db.lock();
        for at in [1_000, 2_000, 3_000] {
            append(&conn, &json!({}), at);
        }
        prune_events(&conn, 2_500, u64::MAX, 100).unwrap();
        assert_eq!(seqs(&conn), vec![3]);
    }

    #[test]
    fn the_migration_keeps_existing_events_with_their_age_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.sqlite");
        let event = json!({"enqueuedTime": "2024-05-01T10:00:00.250Z", "body": "hi"});
        {
            let db = outpost_store::Database::open(&path, &MIGRATIONS[..1]).unwrap();
            db.lock()
                .execute(
                    "INSERT INTO events (event) VALUES (?1)",
                    [to_text(&event).unwrap()],
                )
                .unwrap();
        }
        let db = outpost_store::Database::open(&path, MIGRATIONS).unwrap();
        let conn = db.lock();
        let (enqueued_ms, bytes): (i64, i64) = conn
            .query_row("SELECT enqueued_ms, bytes FROM events", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(enqueued_ms, 1_714_557_600_000);
        assert_eq!(bytes, to_text(&event).unwrap().len() as i64);
        assert_eq!(event_bytes(&conn).unwrap(), bytes.unsigned_abs());
        assert_eq!(append(&conn, &json!({}), 0), 2);
    }

    #[test]
    fn the_partition_migration_keeps_the_sequence_high_water_mark_of_a_pruned_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.sqlite");
        {
            let db = outpost_store::Database::open(&path, &MIGRATIONS[..2]).unwrap();
            let conn = db.lock();
            for _ in 0..2 {
                conn.execute(
                    "INSERT INTO events (enqueued_ms, bytes, event) VALUES (1, 2, '{}')",
                    [],
                )
                .unwrap();
            }
            conn.execute("DELETE FROM events", []).unwrap();
        }
        let db = outpost_store::Database::open(&path, MIGRATIONS).unwrap();
        let conn = db.lock();
        assert_eq!(last_event(&conn).unwrap(), 2);
        assert_eq!(append(&conn, &json!({}), 0), 3);
        assert_eq!(event_bytes(&conn).unwrap(), 2);
    }

    /// The device the C2D rows below belong to.
    const DEVICE_D: &str = "INSERT INTO devices (device_id, record) VALUES ('d', '{}')";

    fn c2d(expiry: Option<&str>) -> serde_json::Value {
        json!({"body": "b", "system": {"absolute-expiry-time": expiry}})
    }

    #[test]
    fn expired_cloud_to_device_messages_are_found_by_their_expiry_time_only() {
        let db = outpost_store::Database::in_memory(MIGRATIONS).unwrap();
        let conn = db.lock();
        conn.execute(DEVICE_D, []).unwrap();
        let device = DeviceId::new("d").unwrap();
        let past = enqueue_c2d(&conn, &device, &c2d(Some("2024-05-01T10:00:00.000Z"))).unwrap();
        enqueue_c2d(&conn, &device, &c2d(Some("2024-05-01T12:00:00+00:00"))).unwrap();
        enqueue_c2d(&conn, &device, &c2d(None)).unwrap();
        let eleven = 1_714_561_200_000; // 2024-05-01T11:00:00Z
        assert_eq!(
            expired_c2d(&conn, eleven).unwrap(),
            [("d".to_owned(), past)]
        );
        assert_eq!(expired_c2d(&conn, eleven + 7_200_000).unwrap().len(), 2);
    }

    #[test]
    fn the_expiry_migration_gives_queued_messages_their_expiry_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.sqlite");
        {
            let db = outpost_store::Database::open(&path, &MIGRATIONS[..4]).unwrap();
            let conn = db.lock();
            conn.execute(DEVICE_D, []).unwrap();
            for expiry in [Some("2024-05-01T10:00:00.000Z"), None] {
                conn.execute(
                    "INSERT INTO c2d (device_id, message) VALUES ('d', ?1)",
                    [to_text(&c2d(expiry)).unwrap()],
                )
                .unwrap();
            }
        }
        let db = outpost_store::Database::open(&path, MIGRATIONS).unwrap();
        let conn = db.lock();
        assert_eq!(
            expired_c2d(&conn, 1_714_557_600_001).unwrap(),
            [("d".to_owned(), 1)]
        );
        assert!(expired_c2d(&conn, 1_714_557_600_000).unwrap().is_empty());
    }
}
