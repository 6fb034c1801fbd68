//! The SQLite engine: the embedded default, one file in the data directory (see the parent module).
//!
//! One write connection, owned in turn by the storage writer's thread ([`Engine::write_group`]): a group is one
//! transaction with one savepoint per job, committed with one fsync (WAL, `synchronous=FULL`). Reads run on
//! their own connections, kept in a small pool: in WAL mode a reader sees the last commit and never waits for
//! the writer, even while it commits. Every statement is cached per connection (`prepare_cached`).
//!
//! An in-memory database (tests) is a shared-cache URI, so that its read connections see the writer's
//! database; they read without table locks (`read_uncommitted`), the one way a shared-cache reader does not
//! wait for (or fail on) the writer's open transaction.
//!
//! Records are JSON text keyed by their ids: the registry's shape changes more often than its access paths, and
//! every lookup is by key.

mod jobs;
mod provisioning;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use outpost_core::query::Narrowing;
use outpost_core::{DeviceId, ModuleId, Twin};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{index, Engine, Group, SavepointJob, Tables};
use crate::fleet::rollout::Rollout;
use crate::fleet::{Assignment, Configuration};
use crate::identity::{AccessPolicy, DeviceRecord, ModuleRecord};
use crate::store::{StorageError, MIGRATIONS, TWIN_VALUES_VERSION};
use crate::stream::{
    partition_of, Appended, EventHubRecord, EventSource, Head, LockedFeedback, PartitionEvent,
};
use crate::x509_auth::CaRecord;

/// Idle read connections kept for the next reads; more are opened when more reads run at once.
const IDLE_READERS: usize = 8;
/// Statements each connection keeps prepared.
const STATEMENT_CACHE: usize = 128;
/// How long a connection waits for a lock held by another process (the CLI) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Tells in-memory databases of one process apart.
static NEXT_MEMORY: AtomicU64 = AtomicU64::new(0);

/// Where the database lives.
enum Location {
    File(PathBuf),
    /// A shared-cache in-memory database's URI.
    Memory(String),
}

/// The hub's tables in SQLite.
pub struct SqliteEngine {
    location: Location,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl SqliteEngine {
    /// Opens (creating it, `0600`) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        make_private(path).map_err(|e| StorageError::Engine(format!("{}: {e}", path.display())))?;
        let connection = Connection::open(path)?;
        Self::start(Location::File(path.to_owned()), connection)
    }

    /// A new in-memory database, for tests: gone when the engine is dropped.
    pub fn in_memory() -> Result<Self, StorageError> {
        let uri = format!(
            "file:outpost-mem-{}-{}?mode=memory&cache=shared",
            std::process::id(),
            NEXT_MEMORY.fetch_add(1, Ordering::Relaxed)
        );
        let connection = Connection::open_with_flags(&uri, memory_flags())?;
        Self::start(Location::Memory(uri), connection)
    }

    fn start(location: Location, mut connection: Connection) -> Result<Self, StorageError> {
        if matches!(location, Location::File(_)) {
            connection.pragma_update(None, "journal_mode", "WAL")?;
        }
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        // Each job of a group runs in a savepoint, whose undo pages SQLite keeps in a temporary file by default: a
        // `pwrite` per page changed, which was most of the writer's time under a stream of telemetry. In memory
        // they cost a copy; a savepoint changes at most one job's pages.
        connection.pragma_update(None, "temp_store", "MEMORY")?;
        connection.busy_timeout(BUSY_TIMEOUT)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        migrate(&mut connection)?;
        Ok(Self {
            location,
            writer: Mutex::new(connection),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// Holds the write connection, as a commit in progress does: tests queue writes behind it.
    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, Connection> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn reader(&self) -> Result<Connection, StorageError> {
        if let Some(reader) = self
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
        {
            return Ok(reader);
        }
        let connection = match &self.location {
            Location::File(path) => Connection::open(path)?,
            Location::Memory(uri) => {
                let connection = Connection::open_with_flags(uri, memory_flags())?;
                connection.pragma_update(None, "read_uncommitted", true)?;
                connection
            }
        };
        connection.busy_timeout(BUSY_TIMEOUT)?;
        connection.pragma_update(None, "query_only", true)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(connection)
    }

    fn give_back(&self, reader: Connection) {
        let mut readers = self
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if readers.len() < IDLE_READERS {
            readers.push(reader);
        }
    }
}

fn memory_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
}

/// Creates the database file `0600` and tightens it (and its WAL files) when they exist with a wider mode.
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(outpost_store::host::PRIVATE_FILE_MODE)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        outpost_store::host::private_file(Path::new(&file))?;
    }
    Ok(())
}

/// Applies the migrations the database has not seen ([`MIGRATIONS`], versioned by `user_version`).
fn migrate(connection: &mut Connection) -> Result<(), StorageError> {
    let found: usize = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > MIGRATIONS.len() {
        return Err(StorageError::Engine(format!(
            "database schema version {found} is newer than this build knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (version, migration) in MIGRATIONS.iter().enumerate().skip(found) {
        let transaction = connection.transaction()?;
        transaction.execute_batch(migration)?;
        if version + 1 == TWIN_VALUES_VERSION {
            index_stored_twins(&transaction)?;
        }
        transaction.pragma_update(None, "user_version", version + 1)?;
        transaction.commit()?;
    }
    Ok(())
}

/// Fills `twin_values` from the twins stored before it existed.
fn index_stored_twins(connection: &Connection) -> Result<(), StorageError> {
    let mut read = connection.prepare("SELECT device_id, module_id, twin FROM twins")?;
    let mut rows = read.query([])?;
    while let Some(row) = rows.next()? {
        let (device, module, twin): (String, String, String) =
            (row.get(0)?, row.get(1)?, row.get(2)?);
        write_twin_values(connection, &device, &module, &serde_json::from_str(&twin)?)?;
    }
    Ok(())
}

/// Replaces a twin's rows of `twin_values` (see [`crate::storage::index`]).
fn write_twin_values(
    connection: &Connection,
    device: &str,
    module: &str,
    twin: &Twin,
) -> Result<(), StorageError> {
    connection
        .prepare_cached("DELETE FROM twin_values WHERE device_id = ?1 AND module_id = ?2")?
        .execute([device, module])?;
    let mut insert = connection.prepare_cached(
        "INSERT INTO twin_values (device_id, module_id, path, value) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (path, value) in index::entries(twin) {
        insert.execute(params![device, module, path, value])?;
    }
    Ok(())
}

/// The SQL that narrows a page of twins (`AND ...` after its `WHERE`), with its parameters from `?first` on:
/// `devices` names the device id column, and `modules` the module id column (`None` for device twins).
fn narrowing_sql(
    narrowing: &Narrowing,
    device_column: &str,
    module_column: Option<&str>,
    first: usize,
) -> (String, Vec<String>) {
    let mut sql = String::new();
    let mut values: Vec<String> = Vec::new();
    let placeholders = |values: &mut Vec<String>, added: Vec<String>| -> String {
        let mut list = Vec::with_capacity(added.len());
        for value in added {
            values.push(value);
            list.push(format!("?{}", first + values.len() - 1));
        }
        list.join(", ")
    };
    for constraint in &narrowing.constraints {
        let literals: Vec<String> = constraint.values.iter().map(index::literal).collect();
        match index::path(&constraint.field) {
            None => {
                let ids = constraint
                    .values
                    .iter()
                    .filter_map(|v| match v {
                        outpost_core::query::Literal::String(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect();
                let list = placeholders(&mut values, ids);
                let _ = write!(sql, " AND {device_column} IN ({list})");
            }
            Some(path) => {
                let path = placeholders(&mut values, vec![path]);
                let list = placeholders(&mut values, literals);
                let (keys, module) = match module_column {
                    None => (device_column.to_owned(), "v.module_id = ''".to_owned()),
                    Some(column) => (
                        format!("({device_column}, {column})"),
                        "v.module_id != ''".to_owned(),
                    ),
                };
                let selected = if module_column.is_some() {
                    "v.device_id, v.module_id"
                } else {
                    "v.device_id"
                };
                let _ = write!(
                    sql,
                    " AND {keys} IN (SELECT {selected} FROM twin_values v \
                     WHERE v.path = {path} AND v.value IN ({list}) AND {module})"
                );
            }
        }
    }
    (sql, values)
}

impl Engine for SqliteEngine {
    fn describe(&self) -> String {
        match &self.location {
            Location::File(path) => format!("sqlite {}", path.display()),
            Location::Memory(_) => "sqlite in memory".to_owned(),
        }
    }

    fn read(
        &self,
        job: &mut dyn FnMut(&mut dyn Tables) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut reader = self.reader()?;
        let result = {
            // One read transaction: every statement of the job sees the same commit.
            let transaction = reader.transaction()?;
            let result = job(&mut SqliteTables { conn: &transaction });
            transaction.finish()?;
            result
        };
        self.give_back(reader);
        result
    }

    fn write_group(
        &self,
        fill: &mut dyn FnMut(&mut dyn Group) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut connection = self.lock_writer();
        let mut group = SqliteGroup {
            transaction: connection.transaction()?,
        };
        fill(&mut group)?;
        group.transaction.commit()?;
        Ok(())
    }
}

/// A group commit in progress on the write connection.
struct SqliteGroup<'c> {
    transaction: Transaction<'c>,
}

impl Group for SqliteGroup<'_> {
    fn run(&mut self, job: SavepointJob<'_>) -> Result<(), StorageError> {
        let savepoint = self.transaction.savepoint()?;
        if job(&mut SqliteTables { conn: &savepoint }) {
            savepoint.commit()?;
        }
        // A failed job's savepoint rolls back when dropped here.
        Ok(())
    }
}

/// [`Tables`] over a SQLite connection inside a transaction (or savepoint) of its owner's.
pub struct SqliteTables<'c> {
    conn: &'c Connection,
}

impl<'c> SqliteTables<'c> {
    /// The tables seen through `conn`; the caller owns the transaction.
    pub fn new(conn: &'c Connection) -> Self {
        Self { conn }
    }
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

/// Inserts one event.
const INSERT_EVENT: &str =
    "INSERT INTO events (enqueued_ms, bytes, partition, partition_seq, source, event) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Events inserted by one statement of a batch append.
const ROWS_PER_INSERT: usize = 50;

/// Inserts [`ROWS_PER_INSERT`] events.
static INSERT_EVENT_ROWS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let row = "(?, ?, ?, ?, ?, ?)";
    format!(
        "INSERT INTO events (enqueued_ms, bytes, partition, partition_seq, source, event) VALUES {}",
        vec![row; ROWS_PER_INSERT].join(", ")
    )
});

fn column(source: EventSource) -> i64 {
    match source {
        EventSource::Telemetry => 0,
        EventSource::TwinChange => 1,
    }
}

fn source_of(value: i64) -> EventSource {
    if value == 1 {
        EventSource::TwinChange
    } else {
        EventSource::Telemetry
    }
}

fn limit(max: usize) -> i64 {
    i64::try_from(max).unwrap_or(i64::MAX)
}

impl SqliteTables<'_> {
    fn one<T: DeserializeOwned>(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Option<T>, StorageError> {
        let text = self
            .conn
            .prepare_cached(sql)?
            .query_row(args, |r| r.get(0))
            .optional()?;
        from_text(text)
    }

    fn all<T: DeserializeOwned>(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<T>, StorageError> {
        let mut statement = self.conn.prepare_cached(sql)?;
        let rows = statement.query_map(args, |r| r.get::<_, String>(0))?;
        rows.map(|text| Ok(serde_json::from_str(&text?)?)).collect()
    }

    fn execute(&self, sql: &str, args: impl rusqlite::Params) -> Result<usize, StorageError> {
        Ok(self.conn.prepare_cached(sql)?.execute(args)?)
    }

    fn advance_head(
        &self,
        partition: u32,
        partition_seq: i64,
        offset: i64,
        enqueued_ms: i64,
    ) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO partition_heads (partition, last_seq, last_offset, last_enqueued_ms)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (partition) DO UPDATE SET last_seq = excluded.last_seq,
                 last_offset = excluded.last_offset, last_enqueued_ms = excluded.last_enqueued_ms",
            params![partition, partition_seq, offset, enqueued_ms],
        )?;
        Ok(())
    }
}

impl Tables for SqliteTables<'_> {
    fn device(&mut self, id: &DeviceId) -> Result<Option<DeviceRecord>, StorageError> {
        self.one(
            "SELECT record FROM devices WHERE device_id = ?1",
            [id.as_str()],
        )
    }

    fn devices(&mut self) -> Result<Vec<DeviceRecord>, StorageError> {
        self.all("SELECT record FROM devices ORDER BY device_id", [])
    }

    fn device_ids(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT device_id FROM devices WHERE device_id > ?1 ORDER BY device_id LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = statement.query_map(params![after.unwrap_or(""), limit], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn put_device(&mut self, record: &DeviceRecord) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO devices (device_id, record) VALUES (?1, ?2)
             ON CONFLICT (device_id) DO UPDATE SET record = excluded.record",
            params![record.device_id.as_str(), to_text(record)?],
        )?;
        Ok(())
    }

    fn delete_device(&mut self, id: &DeviceId) -> Result<bool, StorageError> {
        let prefix = format!("{id}/");
        self.execute(
            "DELETE FROM sessions WHERE client_id = ?1 OR substr(client_id, 1, length(?2)) = ?2",
            params![id.as_str(), prefix],
        )?;
        Ok(self.execute("DELETE FROM devices WHERE device_id = ?1", [id.as_str()])? > 0)
    }

    fn module_ids(&mut self, device: &DeviceId) -> Result<HashSet<String>, StorageError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT module_id FROM modules WHERE device_id = ?1")?;
        let rows = statement.query_map([device.as_str()], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn module(
        &mut self,
        device: &DeviceId,
        module: &ModuleId,
    ) -> Result<Option<ModuleRecord>, StorageError> {
        self.one(
            "SELECT record FROM modules WHERE device_id = ?1 AND module_id = ?2",
            [device.as_str(), module.as_str()],
        )
    }

    fn modules(&mut self, device: &DeviceId) -> Result<Vec<ModuleRecord>, StorageError> {
        self.all(
            "SELECT record FROM modules WHERE device_id = ?1 ORDER BY module_id",
            [device.as_str()],
        )
    }

    fn put_module(&mut self, record: &ModuleRecord) -> Result<(), StorageError> {
        self.execute(
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

    fn delete_module(
        &mut self,
        device: &DeviceId,
        module: &ModuleId,
    ) -> Result<bool, StorageError> {
        let key = [device.as_str(), module.as_str()];
        self.execute(
            "DELETE FROM twins WHERE device_id = ?1 AND module_id = ?2",
            key,
        )?;
        self.execute(
            "DELETE FROM sessions WHERE client_id = ?1",
            [format!("{device}/{module}")],
        )?;
        Ok(self.execute(
            "DELETE FROM modules WHERE device_id = ?1 AND module_id = ?2",
            key,
        )? > 0)
    }

    fn twin(
        &mut self,
        device: &DeviceId,
        module: Option<&ModuleId>,
    ) -> Result<Option<Twin>, StorageError> {
        self.one(
            "SELECT twin FROM twins WHERE device_id = ?1 AND module_id = ?2",
            [device.as_str(), module_key(module)],
        )
    }

    fn put_twin(
        &mut self,
        device: &DeviceId,
        module: Option<&ModuleId>,
        twin: &Twin,
    ) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO twins (device_id, module_id, twin) VALUES (?1, ?2, ?3)
             ON CONFLICT (device_id, module_id) DO UPDATE SET twin = excluded.twin",
            params![device.as_str(), module_key(module), to_text(twin)?],
        )?;
        write_twin_values(self.conn, device.as_str(), module_key(module), twin)
    }

    fn device_twins(
        &mut self,
        after: Option<&str>,
        limit: usize,
        narrowing: &Narrowing,
    ) -> Result<Vec<(DeviceRecord, Option<Twin>)>, StorageError> {
        let (narrowed, values) = narrowing_sql(narrowing, "d.device_id", None, 3);
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT d.record, t.twin FROM devices d
             LEFT JOIN twins t ON t.device_id = d.device_id AND t.module_id = ''
             WHERE d.device_id > ?1{narrowed} ORDER BY d.device_id LIMIT ?2"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let after = after.unwrap_or("");
        let mut parameters: Vec<&dyn rusqlite::ToSql> = vec![&after, &limit];
        parameters.extend(values.iter().map(|v| v as &dyn rusqlite::ToSql));
        let rows = statement.query_map(parameters.as_slice(), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
        })?;
        rows.map(|row| {
            let (device, twin) = row?;
            Ok((serde_json::from_str(&device)?, from_text(twin)?))
        })
        .collect()
    }

    fn module_twins(
        &mut self,
        after: Option<(&str, &str)>,
        limit: usize,
        narrowing: &Narrowing,
    ) -> Result<Vec<(DeviceRecord, ModuleRecord, Option<Twin>)>, StorageError> {
        let (narrowed, values) = narrowing_sql(narrowing, "m.device_id", Some("m.module_id"), 4);
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT d.record, m.record, t.twin FROM modules m
             JOIN devices d ON d.device_id = m.device_id
             LEFT JOIN twins t ON t.device_id = m.device_id AND t.module_id = m.module_id
             WHERE (m.device_id, m.module_id) > (?1, ?2){narrowed}
             ORDER BY m.device_id, m.module_id LIMIT ?3"
        ))?;
        let (device, module) = after.unwrap_or(("", ""));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut parameters: Vec<&dyn rusqlite::ToSql> = vec![&device, &module, &limit];
        parameters.extend(values.iter().map(|v| v as &dyn rusqlite::ToSql));
        let rows = statement.query_map(parameters.as_slice(), |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })?;
        rows.map(|row| {
            let (device, module, twin) = row?;
            Ok((
                serde_json::from_str(&device)?,
                serde_json::from_str(&module)?,
                from_text(twin)?,
            ))
        })
        .collect()
    }

    fn put_deployment(&mut self, device: &DeviceId, manifest: &Value) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO deployments (device_id, manifest, applied) VALUES (?1, ?2, ?3)
             ON CONFLICT (device_id) DO UPDATE SET manifest = excluded.manifest, applied = excluded.applied",
            params![device.as_str(), to_text(manifest)?, chrono::Utc::now().to_rfc3339()],
        )?;
        Ok(())
    }

    fn deployment(&mut self, device: &DeviceId) -> Result<Option<Value>, StorageError> {
        self.one(
            "SELECT manifest FROM deployments WHERE device_id = ?1",
            [device.as_str()],
        )
    }

    fn configuration(&mut self, id: &str) -> Result<Option<Configuration>, StorageError> {
        self.one("SELECT record FROM configurations WHERE id = ?1", [id])
    }

    fn configurations(&mut self) -> Result<Vec<Configuration>, StorageError> {
        self.all("SELECT record FROM configurations ORDER BY id", [])
    }

    fn put_configuration(&mut self, record: &Configuration) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO configurations (id, record) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            params![record.id, to_text(record)?],
        )?;
        Ok(())
    }

    fn delete_configuration(&mut self, id: &str) -> Result<bool, StorageError> {
        Ok(self.execute("DELETE FROM configurations WHERE id = ?1", [id])? > 0)
    }

    fn assignment(&mut self, device: &DeviceId) -> Result<Option<Assignment>, StorageError> {
        self.one(
            "SELECT assignment FROM configuration_assignments WHERE device_id = ?1",
            [device.as_str()],
        )
    }

    fn assigned_devices(&mut self) -> Result<Vec<String>, StorageError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT device_id FROM configuration_assignments ORDER BY device_id")?;
        let rows = statement.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn assignments(&mut self) -> Result<Vec<(String, Assignment)>, StorageError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT device_id, assignment FROM configuration_assignments ORDER BY device_id",
        )?;
        let rows =
            statement.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|row| {
            let (device, text) = row?;
            Ok((device, serde_json::from_str(&text)?))
        })
        .collect()
    }

    fn put_assignment(
        &mut self,
        device: &DeviceId,
        assignment: &Assignment,
    ) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO configuration_assignments (device_id, assignment) VALUES (?1, ?2)
             ON CONFLICT (device_id) DO UPDATE SET assignment = excluded.assignment",
            params![device.as_str(), to_text(assignment)?],
        )?;
        Ok(())
    }

    fn rollout(&mut self, id: &str) -> Result<Option<Rollout>, StorageError> {
        self.one("SELECT record FROM rollouts WHERE id = ?1", [id])
    }

    fn rollouts(&mut self) -> Result<Vec<Rollout>, StorageError> {
        self.all("SELECT record FROM rollouts ORDER BY id", [])
    }

    fn put_rollout(&mut self, rollout: &Rollout) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO rollouts (id, record) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            params![rollout.deployment, to_text(rollout)?],
        )?;
        Ok(())
    }

    fn claim_rollout(
        &mut self,
        id: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StorageError> {
        let claimed = self.execute(
            "UPDATE rollouts SET lease_owner = ?2, lease_until_ms = ?4
             WHERE id = ?1 AND (lease_owner IS NULL OR lease_owner = ?2 OR lease_until_ms < ?3)",
            params![id, owner, now_ms, until_ms],
        )?;
        Ok(claimed > 0)
    }

    fn policies(&mut self) -> Result<Vec<AccessPolicy>, StorageError> {
        self.all("SELECT record FROM policies ORDER BY name", [])
    }

    fn put_policy(&mut self, policy: &AccessPolicy) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO policies (name, record) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET record = excluded.record",
            params![policy.name, to_text(policy)?],
        )?;
        Ok(())
    }

    fn setting(&mut self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM settings WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()?)
    }

    fn put_setting(
        &mut self,
        name: &str,
        value: &[u8],
        only_if_absent: bool,
    ) -> Result<bool, StorageError> {
        let sql = if only_if_absent {
            "INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING"
        } else {
            "INSERT INTO settings (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value"
        };
        Ok(self.execute(sql, params![name, value])? > 0)
    }

    fn session(&mut self, client_id: &str) -> Result<Vec<String>, StorageError> {
        Ok(self
            .one(
                "SELECT filters FROM sessions WHERE client_id = ?1",
                [client_id],
            )?
            .unwrap_or_default())
    }

    fn put_session(&mut self, client_id: &str, filters: &[String]) -> Result<(), StorageError> {
        if filters.is_empty() {
            self.execute("DELETE FROM sessions WHERE client_id = ?1", [client_id])?;
        } else {
            self.execute(
                "INSERT INTO sessions (client_id, filters) VALUES (?1, ?2)
                 ON CONFLICT (client_id) DO UPDATE SET filters = excluded.filters",
                params![client_id, to_text(&filters)?],
            )?;
        }
        Ok(())
    }

    fn events_after(
        &mut self,
        after: i64,
        max: usize,
        all_sources: bool,
    ) -> Result<Vec<(i64, Value)>, StorageError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT seq, event FROM events WHERE seq > ?1 AND (?3 OR source = 0) ORDER BY seq LIMIT ?2",
        )?;
        let rows = statement.query_map(params![after, limit(max), all_sources], |r| {
            Ok((r.get(0)?, r.get::<_, String>(1)?))
        })?;
        rows.map(|row| {
            let (seq, text) = row?;
            Ok((seq, serde_json::from_str(&text)?))
        })
        .collect()
    }

    fn last_event(&mut self) -> Result<i64, StorageError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
            )?
            .query_row([], |r| r.get(0))?)
    }

    fn event_bytes(&mut self) -> Result<u64, StorageError> {
        let bytes: i64 = self
            .conn
            .prepare_cached("SELECT bytes FROM event_totals")?
            .query_row([], |r| r.get(0))?;
        Ok(bytes.max(0).unsigned_abs())
    }

    /// Newer events are never deleted before older ones, so what is kept is always the newest part of the
    /// stream.
    fn prune_events(
        &mut self,
        cutoff_ms: i64,
        max_bytes: u64,
        batch: usize,
    ) -> Result<usize, StorageError> {
        let mut excess = i128::from(self.event_bytes()?) - i128::from(max_bytes);
        let mut statement = self
            .conn
            .prepare_cached("SELECT seq, enqueued_ms, bytes FROM events ORDER BY seq LIMIT ?1")?;
        let mut rows = statement.query([limit(batch)])?;
        let (mut last, mut count) = (None, 0);
        while let Some(row) = rows.next()? {
            let (seq, enqueued_ms, bytes): (i64, i64, i64) =
                (row.get(0)?, row.get(1)?, row.get(2)?);
            if enqueued_ms >= cutoff_ms && excess <= 0 {
                break;
            }
            excess -= i128::from(bytes);
            last = Some(seq);
            count += 1;
        }
        drop(rows);
        drop(statement);
        if let Some(last) = last {
            self.execute("DELETE FROM events WHERE seq <= ?1", [last])?;
        }
        Ok(count)
    }

    fn event_hub(&mut self) -> Result<Option<EventHubRecord>, StorageError> {
        Ok(self
            .conn
            .prepare_cached("SELECT name, partitions, created_ms FROM event_hub WHERE id = 0")?
            .query_row([], |r| {
                Ok(EventHubRecord {
                    name: r.get(0)?,
                    partitions: r.get(1)?,
                    created_ms: r.get(2)?,
                })
            })
            .optional()?)
    }

    fn create_event_hub(&mut self, record: &EventHubRecord) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO event_hub (id, name, partitions, created_ms) VALUES (0, ?1, ?2, ?3)",
            params![record.name, record.partitions, record.created_ms],
        )?;
        Ok(())
    }

    fn append_event_text(
        &mut self,
        partition: u32,
        source: EventSource,
        text: &str,
        enqueued_ms: i64,
    ) -> Result<Appended, StorageError> {
        let partition_seq = self.head(partition)?.last_seq + 1;
        self.execute(
            INSERT_EVENT,
            params![
                enqueued_ms,
                limit(text.len()),
                partition,
                partition_seq,
                column(source),
                text
            ],
        )?;
        let seq = self.conn.last_insert_rowid();
        self.advance_head(partition, partition_seq, seq, enqueued_ms)?;
        Ok(Appended {
            seq,
            partition,
            partition_seq,
        })
    }

    fn append_events(
        &mut self,
        source: EventSource,
        events: &[(u32, String)],
        enqueued_ms: i64,
    ) -> Result<Vec<Appended>, StorageError> {
        // Each partition's head read once before the batch and written once after it.
        let mut heads: Vec<(u32, i64, i64)> = Vec::new();
        for (partition, _) in events {
            if heads.iter().all(|(p, _, _)| p != partition) {
                heads.push((*partition, self.head(*partition)?.last_seq, -1));
            }
        }
        let mut rows = Vec::with_capacity(events.len());
        for (partition, text) in events {
            let head = heads
                .iter_mut()
                .find(|(p, _, _)| p == partition)
                .expect("every partition's head was read above");
            head.1 += 1;
            rows.push((
                enqueued_ms,
                limit(text.len()),
                *partition,
                head.1,
                column(source),
                text,
            ));
        }
        let mut appended = Vec::with_capacity(events.len());
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            // A statement in a transaction with savepoints journals every page it changes, and the `events`
            // trigger updates `event_totals` for every row: one statement per full chunk copies those pages once
            // per chunk instead of once per event.
            if chunk.len() == ROWS_PER_INSERT {
                let args: Vec<&dyn rusqlite::ToSql> = chunk
                    .iter()
                    .flat_map(|r| -> [&dyn rusqlite::ToSql; 6] {
                        [&r.0, &r.1, &r.2, &r.3, &r.4, &r.5]
                    })
                    .collect();
                self.conn
                    .prepare_cached(&INSERT_EVENT_ROWS)?
                    .execute(&*args)?;
            } else {
                for r in chunk {
                    self.execute(INSERT_EVENT, params![r.0, r.1, r.2, r.3, r.4, r.5])?;
                }
            }
            // One writer, AUTOINCREMENT: the rows of a statement got consecutive sequence numbers, in order.
            let last = self.conn.last_insert_rowid();
            let first = last - chunk.len() as i64 + 1;
            appended.extend(chunk.iter().zip(first..).map(|(r, seq)| Appended {
                seq,
                partition: r.2,
                partition_seq: r.3,
            }));
        }
        for (partition, last_seq, _) in heads {
            let offset = appended
                .iter()
                .rev()
                .find(|a| a.partition == partition)
                .map_or(-1, |a| a.seq);
            self.advance_head(partition, last_seq, offset, enqueued_ms)?;
        }
        Ok(appended)
    }

    /// In the order they were enqueued.
    fn assign_partitions(&mut self, partitions: u32) -> Result<usize, StorageError> {
        let unassigned: Vec<(i64, i64, String)> = {
            let mut statement = self.conn.prepare(
                "SELECT seq, enqueued_ms, event FROM events WHERE partition IS NULL ORDER BY seq",
            )?;
            let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (seq, enqueued_ms, text) in &unassigned {
            let event: Value = serde_json::from_str(text)?;
            let device = event.get("deviceId").and_then(Value::as_str).unwrap_or("");
            let partition = partition_of(device, partitions);
            let partition_seq = self.head(partition)?.last_seq + 1;
            self.conn.execute(
                "UPDATE events SET partition = ?1, partition_seq = ?2 WHERE seq = ?3",
                params![partition, partition_seq, seq],
            )?;
            self.advance_head(partition, partition_seq, *seq, *enqueued_ms)?;
        }
        Ok(unassigned.len())
    }

    fn head(&mut self, partition: u32) -> Result<Head, StorageError> {
        Ok(self
            .conn
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

    fn first_kept(&mut self, partition: u32) -> Result<Option<i64>, StorageError> {
        Ok(self
            .conn
            .prepare_cached("SELECT MIN(partition_seq) FROM events WHERE partition = ?1")?
            .query_row([partition], |r| r.get(0))?)
    }

    fn first_from_offset(
        &mut self,
        partition: u32,
        offset: i64,
        inclusive: bool,
    ) -> Result<Option<i64>, StorageError> {
        let from = if inclusive {
            offset
        } else {
            offset.saturating_add(1)
        };
        Ok(self
            .conn
            // A rowid range scan from the offset: it stops at the first event of the partition, a few rows
            // on, where the partition index would walk the partition's events before the offset.
            .prepare_cached(
                "SELECT partition_seq FROM events NOT INDEXED WHERE seq >= ?2 AND partition = ?1
                 ORDER BY seq LIMIT 1",
            )?
            .query_row(params![partition, from], |r| r.get(0))
            .optional()?)
    }

    fn first_after_time(&mut self, partition: u32, ms: i64) -> Result<Option<i64>, StorageError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT partition_seq FROM events INDEXED BY events_by_partition_time
                 WHERE partition = ?1 AND enqueued_ms > ?2 ORDER BY enqueued_ms, partition_seq LIMIT 1",
            )?
            .query_row(params![partition, ms], |r| r.get(0))
            .optional()?)
    }

    fn partition_events(
        &mut self,
        partition: u32,
        after: i64,
        max: usize,
    ) -> Result<Vec<PartitionEvent>, StorageError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT partition_seq, seq, enqueued_ms, source, event FROM events
             WHERE partition = ?1 AND partition_seq > ?2 ORDER BY partition_seq LIMIT ?3",
        )?;
        let rows = statement.query_map(params![partition, after, limit(max)], |r| {
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
                source: source_of(source),
                event: serde_json::from_str(&text)?,
            })
        })
        .collect()
    }

    fn consumer_groups(&mut self) -> Result<Vec<String>, StorageError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT name FROM consumer_groups ORDER BY name")?;
        let rows = statement.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn consumer_group_exists(&mut self, name: &str) -> Result<bool, StorageError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM consumer_groups WHERE name = ?1")?
            .query_row([name], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn create_consumer_group(&mut self, name: &str, created_ms: i64) -> Result<bool, StorageError> {
        Ok(self.execute(
            "INSERT INTO consumer_groups (name, created_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![name, created_ms],
        )? > 0)
    }

    fn delete_consumer_group(&mut self, name: &str) -> Result<bool, StorageError> {
        Ok(self.execute("DELETE FROM consumer_groups WHERE name = ?1", [name])? > 0)
    }

    fn ca_certificates(&mut self) -> Result<Vec<CaRecord>, StorageError> {
        self.all("SELECT record FROM ca_certificates ORDER BY name", [])
    }

    fn add_ca_certificate(&mut self, record: &CaRecord) -> Result<bool, StorageError> {
        Ok(self.execute(
            "INSERT INTO ca_certificates (name, record) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![record.name, to_text(record)?],
        )? > 0)
    }

    fn remove_ca_certificate(&mut self, name: &str) -> Result<bool, StorageError> {
        Ok(self.execute("DELETE FROM ca_certificates WHERE name = ?1", [name])? > 0)
    }

    /// Its `absolute-expiry-time` (RFC 3339), if any, is kept in Unix milliseconds beside it for
    /// [`Tables::expired_c2d`].
    fn enqueue_c2d(&mut self, device: &DeviceId, message: &Value) -> Result<i64, StorageError> {
        let expiry_ms = message["system"]["absolute-expiry-time"]
            .as_str()
            .and_then(|time| chrono::DateTime::parse_from_rfc3339(time).ok())
            .map(|time| time.timestamp_millis());
        self.execute(
            "INSERT INTO c2d (device_id, message, expiry_ms) VALUES (?1, ?2, ?3)",
            params![device.as_str(), to_text(message)?, expiry_ms],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    fn pending_c2d(&mut self, device: &DeviceId) -> Result<Vec<(i64, Value)>, StorageError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT id, message FROM c2d WHERE device_id = ?1 ORDER BY id")?;
        let rows = statement.query_map([device.as_str()], |r| {
            Ok((r.get(0)?, r.get::<_, String>(1)?))
        })?;
        rows.map(|row| {
            let (id, text) = row?;
            Ok((id, serde_json::from_str(&text)?))
        })
        .collect()
    }

    fn c2d_message(&mut self, device: &DeviceId, id: i64) -> Result<Option<Value>, StorageError> {
        self.one(
            "SELECT message FROM c2d WHERE id = ?1 AND device_id = ?2",
            params![id, device.as_str()],
        )
    }

    fn expired_c2d(&mut self, now_ms: i64) -> Result<Vec<(String, i64)>, StorageError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT device_id, id FROM c2d WHERE expiry_ms < ?1 ORDER BY expiry_ms",
        )?;
        let rows = statement.query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn devices_with_c2d(&mut self) -> Result<Vec<String>, StorageError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT DISTINCT device_id FROM c2d")?;
        let rows = statement.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn complete_c2d(&mut self, device: &DeviceId, id: i64) -> Result<(), StorageError> {
        self.execute(
            "DELETE FROM c2d WHERE id = ?1 AND device_id = ?2",
            params![id, device.as_str()],
        )?;
        Ok(())
    }

    fn add_feedback(
        &mut self,
        record: &Value,
        enqueued_ms: i64,
        cap: usize,
    ) -> Result<i64, StorageError> {
        self.execute(
            "INSERT INTO feedback (enqueued_ms, record) VALUES (?1, ?2)",
            params![enqueued_ms, serde_json::to_string(record)?],
        )?;
        let id = self.conn.last_insert_rowid();
        self.execute(
            "DELETE FROM feedback WHERE id <= (SELECT MAX(id) FROM feedback) - ?1",
            [limit(cap)],
        )?;
        Ok(id)
    }

    fn lock_feedback(
        &mut self,
        token: i64,
        now_ms: i64,
        until_ms: i64,
        max: usize,
    ) -> Result<Option<LockedFeedback>, StorageError> {
        let rows: Vec<(i64, i64, String)> = {
            let mut statement = self.conn.prepare_cached(
                "SELECT id, enqueued_ms, record FROM feedback WHERE locked_until_ms <= ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = statement.query_map(params![now_ms, limit(max)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let Some(&(_, enqueued_ms, _)) = rows.first() else {
            return Ok(None);
        };
        let mut records = Vec::with_capacity(rows.len());
        for (id, _, text) in rows {
            self.execute(
                "UPDATE feedback SET lock_token = ?1, locked_until_ms = ?2 WHERE id = ?3",
                params![token, until_ms, id],
            )?;
            records.push(serde_json::from_str(&text)?);
        }
        Ok(Some(LockedFeedback {
            records,
            enqueued_ms,
        }))
    }

    fn next_feedback_unlock(&mut self, now_ms: i64) -> Result<Option<i64>, StorageError> {
        Ok(self
            .conn
            .prepare_cached("SELECT MIN(locked_until_ms) FROM feedback WHERE locked_until_ms > ?1")?
            .query_row([now_ms], |r| r.get(0))?)
    }

    fn complete_feedback(&mut self, token: i64) -> Result<usize, StorageError> {
        self.execute("DELETE FROM feedback WHERE lock_token = ?1", [token])
    }

    fn feedback_count(&mut self) -> Result<usize, StorageError> {
        let count: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM feedback")?
            .query_row([], |r| r.get(0))?;
        Ok(usize::try_from(count).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::writer::Storage;
    use outpost_core::query::{Field, Literal};
    use serde_json::json;

    fn append(t: &mut SqliteTables<'_>, event: &serde_json::Value, at: i64) -> i64 {
        t.append_event(0, EventSource::Telemetry, event, at)
            .unwrap()
            .seq
    }

    fn events_db() -> SqliteEngine {
        SqliteEngine::in_memory().unwrap()
    }

    fn seqs(t: &mut SqliteTables<'_>) -> Vec<i64> {
        t.events_after(0, 1000, true)
            .unwrap()
            .into_iter()
            .map(|(seq, _)| seq)
            .collect()
    }

    #[test]
    fn a_batch_append_numbers_and_heads_its_events_as_appends_one_by_one_do() {
        // Two statements' worth of rows and a remainder, over three partitions.
        let events: Vec<(u32, String)> = (0..2 * ROWS_PER_INSERT + 7)
            .map(|i| ([0, 1, 0, 2, 1, 0][i % 6], json!({ "n": i }).to_string()))
            .collect();
        let one_by_one = events_db();
        let batched = events_db();
        let (single, batch) = {
            let conn = one_by_one.lock_writer();
            let t = &mut SqliteTables::new(&conn);
            append(t, &json!({"before": true}), 500);
            let single: Vec<Appended> = events
                .iter()
                .map(|(p, e)| {
                    t.append_event_text(*p, EventSource::Telemetry, e, 1_000)
                        .unwrap()
                })
                .collect();
            let conn = batched.lock_writer();
            let b = &mut SqliteTables::new(&conn);
            append(b, &json!({"before": true}), 500);
            let batch = b
                .append_events(EventSource::Telemetry, &events, 1_000)
                .unwrap();
            for partition in 0..3 {
                assert_eq!(
                    t.head(partition).unwrap(),
                    b.head(partition).unwrap(),
                    "partition {partition}"
                );
                assert_eq!(
                    t.partition_events(partition, -1, 100).unwrap(),
                    b.partition_events(partition, -1, 100).unwrap(),
                    "partition {partition}"
                );
            }
            (single, batch)
        };
        assert_eq!(single, batch);
        assert_eq!(
            batch
                .iter()
                .take(6)
                .map(|a| a.partition_seq)
                .collect::<Vec<_>>(),
            vec![1, 0, 2, 0, 1, 3]
        );
        assert_eq!(batch.last().unwrap().seq, events.len() as i64 + 1);
    }

    #[test]
    fn pruning_by_age_deletes_the_events_enqueued_before_the_cutoff_only() {
        let db = events_db();
        let conn = db.lock_writer();
        let t = &mut SqliteTables::new(&conn);
        for at in [1_000, 2_000, 3_000, 4_000] {
            append(t, &json!({"at": at}), at);
        }
        assert_eq!(t.prune_events(3_000, u64::MAX, 100).unwrap(), 2);
        assert_eq!(seqs(t), vec![3, 4]);
        assert_eq!(t.prune_events(3_000, u64::MAX, 100).unwrap(), 0);
    }

    #[test]
    fn pruning_by_size_deletes_the_oldest_until_the_rest_fits_and_keeps_the_newest() {
        let db = events_db();
        let conn = db.lock_writer();
        let t = &mut SqliteTables::new(&conn);
        let event = json!({"body": "x".repeat(90)});
        let size = to_text(&event).unwrap().len() as u64;
        for _ in 0..10 {
            append(t, &event, 1_000);
        }
        assert_eq!(t.event_bytes().unwrap(), 10 * size);
        assert_eq!(t.prune_events(0, 3 * size + 1, 100).unwrap(), 7);
        assert_eq!(seqs(t), vec![8, 9, 10]);
        assert_eq!(t.event_bytes().unwrap(), 3 * size);
    }

    #[test]
    fn pruning_deletes_at_most_one_batch_per_call() {
        let db = events_db();
        let conn = db.lock_writer();
        let t = &mut SqliteTables::new(&conn);
        for _ in 0..10 {
            append(t, &json!({}), 1_000);
        }
        assert_eq!(t.prune_events(5_000, u64::MAX, 4).unwrap(), 4);
        assert_eq!(t.prune_events(5_000, u64::MAX, 4).unwrap(), 4);
        assert_eq!(t.prune_events(5_000, u64::MAX, 4).unwrap(), 2);
        assert!(seqs(t).is_empty());
    }

    #[test]
    fn sequence_numbers_keep_growing_after_everything_was_pruned() {
        let db = events_db();
        let conn = db.lock_writer();
        let t = &mut SqliteTables::new(&conn);
        append(t, &json!({}), 1_000);
        append(t, &json!({}), 1_000);
        t.prune_events(5_000, u64::MAX, 100).unwrap();
        assert_eq!(t.last_event().unwrap(), 2);
        assert_eq!(append(t, &json!({}), 6_000), 3);
        assert_eq!(t.event_bytes().unwrap(), 2);
    }

    #[test]
    fn a_reader_behind_the_retention_gets_what_is_kept() {
        let db = events_db();
        let conn = db.lock_writer();
        let t = &mut SqliteTables::new(&conn);
        for at in [1_000, 2_000, 3_000] {
            append(t, &json!({}), at);
        }
        t.prune_events(2_500, u64::MAX, 100).unwrap();
        assert_eq!(seqs(t), vec![3]);
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
        let db = SqliteEngine::open(&path).unwrap();
        let conn = db.lock_writer();
        let t = &mut SqliteTables::new(&conn);
        let (enqueued_ms, bytes): (i64, i64) = conn
            .query_row("SELECT enqueued_ms, bytes FROM events", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(enqueued_ms, 1_714_557_600_000);
        assert_eq!(bytes, to_text(&event).unwrap().len() as i64);
        assert_eq!(t.event_bytes().unwrap(), bytes.unsigned_abs());
        assert_eq!(append(t, &json!({}), 0), 2);
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
        let db = SqliteEngine::open(&path).unwrap();
        let conn = db.lock_writer();
        let t = &mut SqliteTables::new(&conn);
        assert_eq!(t.last_event().unwrap(), 2);
        assert_eq!(append(t, &json!({}), 0), 3);
        assert_eq!(t.event_bytes().unwrap(), 2);
    }

    /// The device the C2D rows below belong to.
    const DEVICE_D: &str = "INSERT INTO devices (device_id, record) VALUES ('d', '{}')";

    fn c2d(expiry: Option<&str>) -> serde_json::Value {
        json!({"body": "b", "system": {"absolute-expiry-time": expiry}})
    }

    #[test]
    fn expired_cloud_to_device_messages_are_found_by_their_expiry_time_only() {
        let db = SqliteEngine::in_memory().unwrap();
        let conn = db.lock_writer();
        let t = &mut SqliteTables::new(&conn);
        conn.execute(DEVICE_D, []).unwrap();
        let device = DeviceId::new("d").unwrap();
        let past = t
            .enqueue_c2d(&device, &c2d(Some("2024-05-01T10:00:00.000Z")))
            .unwrap();
        t.enqueue_c2d(&device, &c2d(Some("2024-05-01T12:00:00+00:00")))
            .unwrap();
        t.enqueue_c2d(&device, &c2d(None)).unwrap();
        let eleven = 1_714_561_200_000; // 2024-05-01T11:00:00Z
        assert_eq!(t.expired_c2d(eleven).unwrap(), [("d".to_owned(), past)]);
        assert_eq!(t.expired_c2d(eleven + 7_200_000).unwrap().len(), 2);
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
        let db = SqliteEngine::open(&path).unwrap();
        let conn = db.lock_writer();
        let t = &mut SqliteTables::new(&conn);
        assert_eq!(
            t.expired_c2d(1_714_557_600_001).unwrap(),
            [("d".to_owned(), 1)]
        );
        assert!(t.expired_c2d(1_714_557_600_000).unwrap().is_empty());
    }

    #[test]
    fn the_index_migration_indexes_the_twins_stored_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.sqlite");
        let mut twin = Twin::new(chrono::Utc::now());
        twin.replace_tags(&json!({"site": "north"})).unwrap();
        {
            let db = outpost_store::Database::open(&path, &MIGRATIONS[..TWIN_VALUES_VERSION - 1])
                .unwrap();
            let conn = db.lock();
            conn.execute(DEVICE_D, []).unwrap();
            conn.execute(
                "INSERT INTO twins (device_id, module_id, twin) VALUES ('d', '', ?1)",
                [to_text(&twin).unwrap()],
            )
            .unwrap();
        }
        let db = SqliteEngine::open(&path).unwrap();
        let conn = db.lock_writer();
        let indexed: Vec<(String, String)> = conn
            .prepare("SELECT device_id, module_id FROM twin_values WHERE path = ?1 AND value = ?2")
            .unwrap()
            .query_map(
                params![
                    index::path(&Field::Tag(vec!["site".into()])).unwrap(),
                    index::literal(&Literal::String("north".into()))
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(indexed, [("d".to_owned(), String::new())]);
    }

    #[tokio::test]
    async fn settings_are_kept_by_name_and_an_in_memory_database_is_one_for_its_readers_and_writer()
    {
        let engine = Arc::new(SqliteEngine::in_memory().unwrap());
        let storage = Storage::start(engine.clone()).unwrap();
        let put = |value: &'static [u8], only_if_absent| {
            let storage = storage.clone();
            async move {
                storage
                    .write(move |t| t.put_setting("ca", value, only_if_absent))
                    .await
                    .unwrap()
            }
        };
        let get = || {
            let storage = storage.clone();
            async move { storage.read(|t| t.setting("ca")).await.unwrap() }
        };
        assert_eq!(get().await, None);
        assert!(put(b"one", true).await, "the first value is stored");
        assert!(!put(b"two", true).await, "an existing value is kept");
        assert_eq!(get().await.as_deref(), Some(&b"one"[..]));
        assert!(put(b"three", false).await);
        assert_eq!(get().await.as_deref(), Some(&b"three"[..]));
        let other = SqliteEngine::in_memory().unwrap();
        let elsewhere = crate::storage::transaction(&other, |t| t.setting("ca")).unwrap();
        assert_eq!(
            elsewhere, None,
            "another in-memory engine is another database"
        );
    }

    #[test]
    fn a_schema_newer_than_this_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.sqlite");
        drop(SqliteEngine::open(&path).unwrap());
        rusqlite::Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", MIGRATIONS.len() + 1)
            .unwrap();
        assert!(matches!(
            SqliteEngine::open(&path),
            Err(StorageError::Engine(why)) if why.contains("newer")
        ));
    }
}
