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

/// Appends a device-to-cloud event; returns its sequence number.
pub fn append_event(conn: &Connection, event: &serde_json::Value) -> Result<i64, StorageError> {
    conn.execute("INSERT INTO events (event) VALUES (?1)", [to_text(event)?])?;
    Ok(conn.last_insert_rowid())
}

/// Reads up to `max` events with a sequence number above `after`.
pub fn events_after(
    conn: &Connection,
    after: i64,
    max: usize,
) -> Result<Vec<(i64, serde_json::Value)>, StorageError> {
    let mut statement =
        conn.prepare_cached("SELECT seq, event FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
    let rows = statement.query_map(params![after, max as i64], |r| {
        Ok((r.get(0)?, r.get::<_, String>(1)?))
    })?;
    rows.map(|row| {
        let (seq, text) = row?;
        Ok((seq, serde_json::from_str(&text)?))
    })
    .collect()
}

/// The sequence number of the newest event (0 when there is none).
pub fn last_event(conn: &Connection) -> Result<i64, StorageError> {
    Ok(conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?)
}

/// Queues a cloud-to-device message; returns its id.
pub fn enqueue_c2d(
    conn: &Connection,
    device: &DeviceId,
    message: &serde_json::Value,
) -> Result<i64, StorageError> {
    conn.execute(
        "INSERT INTO c2d (device_id, message) VALUES (?1, ?2)",
        params![device.as_str(), to_text(message)?],
    )?;
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
