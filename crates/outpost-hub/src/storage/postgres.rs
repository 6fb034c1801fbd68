//! The PostgreSQL engine: several hub replicas on one database (see the parent module).
//!
//! [`PostgresEngine::connect`] checks the database at once (a five-second connect timeout: a wrong or unreachable
//! URL is an error at start, not a hang), then brings the schema up to date in one transaction under an advisory
//! lock, so that replicas starting together migrate it once; `schema_version` records the version. Connections
//! are pooled (r2d2), each with its own cache of prepared statements. A group commit is one `READ COMMITTED`
//! transaction with a `SAVEPOINT` per job and one `COMMIT`, with `synchronous_commit` on: durable when `COMMIT`
//! returns. Reads run in `REPEATABLE READ READ ONLY` transactions: one snapshot for every call of a job.
//!
//! Records the hub will query by content (devices, modules, twins, deployments, policies, sessions) are
//! `JSONB`: the fleet query language that comes next filters twins and identities in SQL, with GIN or
//! expression indexes. `JSONB` does not keep the order of an object's keys, which no client of the hub relies
//! on. The event stream, cloud-to-device messages and feedback are `TEXT`: written once, read back as they
//! are, never searched by content, and an event's size is its text's (the stream's size cap counts it).
//!
//! Offsets and per-partition sequence numbers under several writers: an event's offset (the global `seq`)
//! comes from a counter row (`event_totals`, which also keeps the byte total), updated first in the appending
//! transaction: its row lock, held until `COMMIT`, orders the appending transactions of every replica, so
//! offsets are committed in increasing order and a reader that resumes after offset N never misses an event
//! committed later with a smaller one (a `SEQUENCE` cannot promise that). The partition's head row is then
//! upserted (`ON CONFLICT DO UPDATE` locks it), so partition sequence numbers stay contiguous.
//!
//! Errors: a lost, refused or timed-out connection (and PostgreSQL shutting down, and a deadlock between
//! replicas' groups) is [`StorageError::Unavailable`], which the hub answers with 503; anything else PostgreSQL
//! says is [`StorageError::Postgres`]. Pooled connections found dead when a transaction begins are replaced, so
//! that the first request after the database came back does not fail.
//!
//! The client is `postgres`, the blocking face of tokio-postgres: each connection blocks on a small runtime of
//! its own, which tokio refuses to start on a thread that drives a runtime. The engine's methods block by
//! contract (storage thread, `spawn_blocking`); on a worker of a multi-thread runtime they go through
//! `block_in_place`; connecting and dropping the engine happen on threads of their own.

mod jobs;
mod provisioning;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use outpost_core::query::{Field, Literal, Narrowing};
use outpost_core::{DeviceId, ModuleId, Twin};
use postgres::config::Host;
use postgres::types::{Json, ToSql};
use postgres::{Client, Config, IsolationLevel, NoTls, Row, Statement, Transaction};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{index, Engine, Group, SavepointJob, Tables};
use crate::fleet::rollout::Rollout;
use crate::fleet::{Assignment, Configuration};
use crate::identity::{AccessPolicy, DeviceRecord, ModuleRecord};
use crate::store::StorageError;
use crate::stream::{
    partition_of, Appended, EventHubRecord, EventSource, Head, LockedFeedback, PartitionEvent,
};
use crate::x509_auth::CaRecord;

/// How long connecting may take before the database counts as unreachable (unless the URL says otherwise).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many connections a replica keeps open by default.
pub const DEFAULT_POOL_SIZE: u32 = 8;

/// The advisory lock migrations run under (`outpost` in ASCII, then 1).
const MIGRATION_LOCK: i64 = 0x6f75_7470_6f73_7401;

/// The schema, one migration per version: version N is `MIGRATIONS[N - 1]`. Key columns are `COLLATE "C"`:
/// byte order, as SQLite sorts, whatever the database's locale, and prefix ranges on the index.
pub const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE devices (device_id TEXT COLLATE "C" PRIMARY KEY, record JSONB NOT NULL);
    CREATE TABLE modules (
        device_id TEXT COLLATE "C" NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
        module_id TEXT COLLATE "C" NOT NULL,
        record JSONB NOT NULL,
        PRIMARY KEY (device_id, module_id));
    -- module_id is '' for the device twin.
    CREATE TABLE twins (
        device_id TEXT COLLATE "C" NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
        module_id TEXT COLLATE "C" NOT NULL,
        twin JSONB NOT NULL,
        PRIMARY KEY (device_id, module_id));
    CREATE TABLE deployments (
        device_id TEXT COLLATE "C" PRIMARY KEY REFERENCES devices (device_id) ON DELETE CASCADE,
        manifest JSONB NOT NULL,
        applied TIMESTAMPTZ NOT NULL);
    CREATE TABLE policies (name TEXT COLLATE "C" PRIMARY KEY, record JSONB NOT NULL);
    -- The hub's own state that every replica shares (its CA, its server certificate).
    CREATE TABLE settings (name TEXT COLLATE "C" PRIMARY KEY, value BYTEA NOT NULL);
    CREATE TABLE sessions (client_id TEXT COLLATE "C" PRIMARY KEY, filters JSONB NOT NULL);

    -- One row: the last offset handed out (it survives pruning) and the bytes of event text kept. Appending
    -- updates it first, so its row lock orders the appending transactions (see the module's documentation).
    CREATE TABLE event_totals (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        last_seq BIGINT NOT NULL,
        bytes BIGINT NOT NULL);
    INSERT INTO event_totals (id, last_seq, bytes) VALUES (0, 0, 0);
    -- partition and partition_seq are NULL for events copied from a hub that had no partitions yet
    -- (assign_partitions gives them theirs). source: 0 telemetry, 1 twin change.
    CREATE TABLE events (
        seq BIGINT PRIMARY KEY,
        enqueued_ms BIGINT NOT NULL,
        bytes BIGINT NOT NULL,
        partition INTEGER,
        partition_seq BIGINT,
        source SMALLINT NOT NULL DEFAULT 0,
        event TEXT NOT NULL);
    -- Unique: a sequence number handed out twice is refused, whatever goes wrong above.
    CREATE UNIQUE INDEX events_by_partition ON events (partition, partition_seq);
    CREATE INDEX events_by_partition_time ON events (partition, enqueued_ms);
    CREATE TABLE event_hub (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        name TEXT NOT NULL,
        partitions INTEGER NOT NULL,
        created_ms BIGINT NOT NULL);
    -- Each partition's newest event, kept apart from the events so that pruning never resets a sequence.
    CREATE TABLE partition_heads (
        partition INTEGER PRIMARY KEY,
        last_seq BIGINT NOT NULL,
        last_offset BIGINT NOT NULL,
        last_enqueued_ms BIGINT NOT NULL);
    -- Names compare without case, as Event Hubs does (ASCII folding under "C", as SQLite's NOCASE).
    CREATE TABLE consumer_groups (name TEXT COLLATE "C" NOT NULL, created_ms BIGINT NOT NULL);
    CREATE UNIQUE INDEX consumer_groups_by_name ON consumer_groups (lower(name));

    CREATE TABLE c2d (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        device_id TEXT COLLATE "C" NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
        expiry_ms BIGINT,
        message TEXT NOT NULL);
    CREATE INDEX c2d_by_device ON c2d (device_id, id);
    CREATE INDEX c2d_by_expiry ON c2d (expiry_ms) WHERE expiry_ms IS NOT NULL;
    CREATE TABLE feedback (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        enqueued_ms BIGINT NOT NULL,
        lock_token BIGINT,
        locked_until_ms BIGINT NOT NULL DEFAULT 0,
        record TEXT NOT NULL);
    CREATE INDEX feedback_by_lock_token ON feedback (lock_token) WHERE lock_token IS NOT NULL;
"#,
    r#"
    -- Replicas (crate::replicas): which replica holds each live device connection, and the bodies of notices
    -- too large for a NOTIFY payload (pruned after a minute).
    CREATE TABLE replica_connections (
        client_id TEXT COLLATE "C" PRIMARY KEY,
        replica TEXT NOT NULL,
        connection BIGINT NOT NULL,
        since TIMESTAMPTZ NOT NULL DEFAULT now());
    CREATE TABLE replica_mailbox (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        created TIMESTAMPTZ NOT NULL DEFAULT now(),
        notice TEXT NOT NULL);
"#,
    r#"
    -- Replica liveness (crate::replicas): each replica's heartbeat. Connections of a replica not seen for a while
    -- do not count and are deleted with its row; rows recorded before liveness existed have no replica row.
    CREATE TABLE replicas (
        id TEXT COLLATE "C" PRIMARY KEY,
        last_seen TIMESTAMPTZ NOT NULL DEFAULT now());
    CREATE INDEX replica_connections_by_replica ON replica_connections (replica);
    DELETE FROM replica_connections;
"#,
    r#"
    -- Jobs (crate::jobs): the record as created (JSON text, never changed nor searched) beside what changes: the
    -- status (active codes below 3, so that a final one is never overwritten), the counts, and the lease of the
    -- replica that runs it. One row per device a job selected, with its outcome, so that a resumed job skips
    -- those done.
    CREATE TABLE jobs (
        job_id TEXT COLLATE "C" PRIMARY KEY,
        status BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        end_ms BIGINT,
        failure_reason TEXT,
        statistics TEXT NOT NULL,
        lease_owner TEXT,
        lease_until_ms BIGINT NOT NULL DEFAULT 0,
        record TEXT NOT NULL);
    CREATE INDEX jobs_by_status ON jobs (status, created_ms);
    CREATE TABLE job_devices (
        job_id TEXT COLLATE "C" NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
        device_id TEXT COLLATE "C" NOT NULL,
        outcome BIGINT NOT NULL,
        result TEXT,
        PRIMARY KEY (job_id, device_id));
"#,
    r#"
    -- Automatic configurations and deployments (crate::fleet) by id, and what they gave each device and its
    -- modules (so that a device that stops matching loses exactly that).
    CREATE TABLE configurations (id TEXT COLLATE "C" PRIMARY KEY, record JSONB NOT NULL);
    CREATE TABLE configuration_assignments (
        device_id TEXT COLLATE "C" PRIMARY KEY REFERENCES devices (device_id) ON DELETE CASCADE,
        assignment JSONB NOT NULL);
"#,
    r#"
    -- Rollouts of deployments in waves (crate::fleet::rollout): the persisted state machine, and the lease of the
    -- replica that drives it.
    CREATE TABLE rollouts (
        id TEXT COLLATE "C" PRIMARY KEY REFERENCES configurations (id) ON DELETE CASCADE,
        record JSONB NOT NULL,
        lease_owner TEXT,
        lease_until_ms BIGINT NOT NULL DEFAULT 0);
"#,
    r"
    -- The index of fleet queries (crate::storage::index): a tag or reported property equal to a literal is a
    -- containment (@>) of these sections.
    CREATE INDEX twins_by_tags ON twins USING GIN ((twin -> 'tags') jsonb_path_ops);
    CREATE INDEX twins_by_reported ON twins USING GIN ((twin -> 'reported' -> 'properties') jsonb_path_ops);
",
    r#"
    -- CA certificates that device certificates may chain to (crate::x509_auth), by name.
    CREATE TABLE ca_certificates (name TEXT COLLATE "C" PRIMARY KEY, record JSONB NOT NULL);
"#,
    r#"
    -- The provisioning service (crate::provisioning): enrollments of one device by registration id, enrollment
    -- groups by id, and what each registration id's last registration did (DPS's registration state).
    CREATE TABLE individual_enrollments (registration_id TEXT COLLATE "C" PRIMARY KEY, record JSONB NOT NULL);
    CREATE TABLE enrollment_groups (id TEXT COLLATE "C" PRIMARY KEY, record JSONB NOT NULL);
    CREATE TABLE registrations (registration_id TEXT COLLATE "C" PRIMARY KEY, record JSONB NOT NULL);
"#,
];

impl From<postgres::Error> for StorageError {
    fn from(error: postgres::Error) -> Self {
        if let Some(db) = error.as_db_error() {
            let code = db.code().code();
            let mut message = format!("{} ({code})", db.message());
            if let Some(detail) = db.detail() {
                message = format!("{message}: {detail}");
            }
            // 08: connection exceptions; 57P01-03: the server shuts down or cannot take connections yet;
            // 53300: too many connections; 40: a deadlock or serialization failure between replicas, for
            // which the answer is also "try again".
            return if code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("40")
                || code == "53300"
            {
                Self::Unavailable(message)
            } else {
                Self::Postgres(message)
            };
        }
        let mut source = std::error::Error::source(&error);
        let mut io = false;
        while let Some(cause) = source {
            io |= cause.is::<std::io::Error>();
            source = cause.source();
        }
        if error.is_closed() || io {
            Self::Unavailable(error.to_string())
        } else {
            Self::Postgres(error.to_string())
        }
    }
}

/// A pooled connection with its prepared statements (by SQL text: every statement of this module is static).
struct Connection {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

/// Opens the pool's connections.
#[derive(Debug)]
struct Connector {
    config: Config,
}

impl r2d2::ManageConnection for Connector {
    type Connection = Connection;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Connection, postgres::Error> {
        let mut client = self.config.connect(NoTls)?;
        // Durable when COMMIT returns, whatever the server's or the role's default. A SET, not a startup
        // option, which connection poolers may refuse.
        client.batch_execute("SET synchronous_commit = on")?;
        Ok(Connection {
            client,
            statements: HashMap::new(),
        })
    }

    fn is_valid(&self, connection: &mut Connection) -> Result<(), postgres::Error> {
        connection.client.simple_query("").map(drop)
    }

    fn has_broken(&self, connection: &mut Connection) -> bool {
        connection.client.is_closed()
    }
}

/// Logs the pool's failures to connect in the background (r2d2 would log them with `log`, which the hub does
/// not collect).
#[derive(Debug)]
struct PoolErrors;

impl r2d2::HandleError<postgres::Error> for PoolErrors {
    fn handle_error(&self, error: postgres::Error) {
        tracing::warn!(%error, "could not open a PostgreSQL connection");
    }
}

/// The hub's tables in a PostgreSQL database, shared by every replica that connects to it.
pub struct PostgresEngine {
    /// `None` only while the engine drops (see its `Drop`).
    pool: Option<r2d2::Pool<Connector>>,
    described: String,
}

impl Drop for PostgresEngine {
    fn drop(&mut self) {
        // Closing a connection blocks on the client's own runtime, which cannot start on a thread that drives
        // an async runtime: the pool is dropped on a thread of its own.
        if let Some(pool) = self.pool.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = std::thread::spawn(move || drop(pool)).join();
            }
        }
    }
}

/// Runs `work` where the blocking client may block: as it is on a plain thread or a `spawn_blocking` thread; on
/// a worker of a multi-thread tokio runtime through `block_in_place` (the AMQP head's few synchronous reads).
/// The one place it cannot run is the thread of a current-thread runtime: use `spawn_blocking` there.
fn off_runtime<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

impl std::fmt::Debug for PostgresEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresEngine")
            .field("database", &self.described)
            .finish_non_exhaustive()
    }
}

impl PostgresEngine {
    /// Connects to `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?…]` or `key=value` pairs) with
    /// [`DEFAULT_POOL_SIZE`] connections and migrates the schema. A bad URL is [`StorageError::Postgres`]; a
    /// database that cannot be reached within [`CONNECT_TIMEOUT`] is [`StorageError::Unavailable`].
    pub fn connect(url: &str) -> Result<Self, StorageError> {
        Self::connect_with_pool(url, DEFAULT_POOL_SIZE)
    }

    /// [`PostgresEngine::connect`] with `pool_size` connections at most.
    pub fn connect_with_pool(url: &str, pool_size: u32) -> Result<Self, StorageError> {
        // On a thread of its own: the blocking client cannot connect on a thread that drives a runtime, and the
        // hub starts from async code.
        std::thread::scope(|scope| {
            scope
                .spawn(|| Self::open(url, pool_size))
                .join()
                .unwrap_or_else(|_| Err(StorageError::Postgres("connecting panicked".to_owned())))
        })
    }

    fn open(url: &str, pool_size: u32) -> Result<Self, StorageError> {
        let mut config: Config = url
            .parse()
            .map_err(|e| StorageError::Postgres(format!("bad database URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("outpost-hub");
        }
        // A peer that vanished without closing the connection is noticed within a minute, not two hours.
        config.keepalives_idle(Duration::from_secs(30));
        let described = describe(&config);

        let mut client = config.connect(NoTls).map_err(|e| {
            let error = StorageError::from(e);
            let cause = match &error {
                StorageError::Unavailable(m) | StorageError::Postgres(m) => m.clone(),
                other => other.to_string(),
            };
            StorageError::Unavailable(format!("could not connect to {described}: {cause}"))
        })?;
        migrate(&mut client)?;
        drop(client);

        let pool = r2d2::Pool::builder()
            .max_size(pool_size.max(1))
            .min_idle(Some(1))
            .connection_timeout(
                config
                    .get_connect_timeout()
                    .copied()
                    .unwrap_or(CONNECT_TIMEOUT),
            )
            .test_on_check_out(false)
            .error_handler(Box::new(PoolErrors))
            .build_unchecked(Connector { config });
        Ok(Self {
            pool: Some(pool),
            described,
        })
    }

    /// The schema version of the database (the number of migrations applied).
    pub fn schema_version(&self) -> Result<i32, StorageError> {
        off_runtime(|| {
            let mut connection = self.checkout()?;
            let row = connection
                .client
                .query_one("SELECT version FROM schema_version WHERE id = 0", &[])?;
            Ok(row.get(0))
        })
    }

    fn pool(&self) -> Result<&r2d2::Pool<Connector>, StorageError> {
        self.pool
            .as_ref()
            .ok_or_else(|| StorageError::Unavailable("the engine is closing".to_owned()))
    }

    fn checkout(&self) -> Result<r2d2::PooledConnection<Connector>, StorageError> {
        self.pool()?.get().map_err(|e| {
            StorageError::Unavailable(format!("no connection to {}: {e}", self.described))
        })
    }

    /// Runs `work` in a transaction on a pooled connection; connections found dead when the transaction
    /// begins (the database restarted since they were last used) are dropped and the next one is tried.
    fn transaction<T>(
        &self,
        read_only: bool,
        work: &mut dyn FnMut(&mut Transaction<'_>, &mut Statements) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut attempt = 0_u32;
        loop {
            attempt += 1;
            let mut connection = self.checkout()?;
            let Connection { client, statements } = &mut *connection;
            let begun = if read_only {
                client
                    .build_transaction()
                    .isolation_level(IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
            } else {
                client
                    .build_transaction()
                    .isolation_level(IsolationLevel::ReadCommitted)
                    .start()
            };
            let mut tx = match begun.map_err(StorageError::from) {
                Ok(tx) => tx,
                // Each dead connection fails at once; a checkout that must connect waits, then fails.
                Err(StorageError::Unavailable(_)) if attempt <= self.pool()?.max_size() => continue,
                Err(error) => return Err(error),
            };
            let result = work(&mut tx, statements)?;
            tx.commit()?;
            return Ok(result);
        }
    }
}

/// `postgres user@host:port/db`: never the password.
fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(i)
                .or_else(|| config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    format!(
        "postgres {}@{}/{}",
        config.get_user().unwrap_or("?"),
        if hosts.is_empty() {
            "localhost:5432".to_owned()
        } else {
            hosts.join(",")
        },
        config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("postgres")
    )
}

/// Applies the migrations the database lacks, in one transaction under [`MIGRATION_LOCK`]; returns the version.
fn migrate(client: &mut Client) -> Result<usize, StorageError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             id INTEGER PRIMARY KEY CHECK (id = 0),
             version INTEGER NOT NULL)",
    )?;
    let version = tx
        .query_opt("SELECT version FROM schema_version WHERE id = 0", &[])?
        .map_or(0, |row| row.get::<_, i32>(0));
    let version = usize::try_from(version).unwrap_or(0);
    if version > MIGRATIONS.len() {
        return Err(StorageError::Postgres(format!(
            "the database's schema is version {version}, newer than this hub's ({}): upgrade the hub",
            MIGRATIONS.len()
        )));
    }
    for migration in &MIGRATIONS[version..] {
        tx.batch_execute(migration)?;
    }
    let latest = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    tx.execute(
        "INSERT INTO schema_version (id, version) VALUES (0, $1)
         ON CONFLICT (id) DO UPDATE SET version = excluded.version",
        &[&latest],
    )?;
    tx.commit()?;
    if version < MIGRATIONS.len() {
        tracing::info!(
            from = version,
            to = MIGRATIONS.len(),
            "migrated the PostgreSQL schema"
        );
    }
    Ok(MIGRATIONS.len())
}

type Statements = HashMap<&'static str, Statement>;

impl Engine for PostgresEngine {
    fn describe(&self) -> String {
        self.described.clone()
    }

    fn read(
        &self,
        job: &mut dyn FnMut(&mut dyn Tables) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        off_runtime(|| {
            self.transaction(true, &mut |tx, statements| {
                job(&mut PgTables {
                    tx,
                    statements,
                    failed: false,
                })
            })
        })
    }

    fn write_group(
        &self,
        fill: &mut dyn FnMut(&mut dyn Group) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        off_runtime(|| {
            self.transaction(false, &mut |tx, statements| {
                fill(&mut PgGroup {
                    tx,
                    statements,
                    release_pending: false,
                })
            })
        })
    }
}

/// A group commit in progress: one transaction, a savepoint per job.
///
/// A kept job's savepoint is released in the same round trip as the next job's is set (`COMMIT` releases the
/// last one): one round trip per job besides its statements.
struct PgGroup<'g, 'c> {
    tx: &'g mut Transaction<'c>,
    statements: &'g mut Statements,
    /// The previous job was kept and its savepoint is not released yet.
    release_pending: bool,
}

impl Group for PgGroup<'_, '_> {
    fn run(&mut self, job: SavepointJob<'_>) -> Result<(), StorageError> {
        self.tx.batch_execute(if self.release_pending {
            "RELEASE SAVEPOINT job; SAVEPOINT job"
        } else {
            "SAVEPOINT job"
        })?;
        self.release_pending = false;
        let mut tables = PgTables {
            tx: &mut *self.tx,
            statements: &mut *self.statements,
            failed: false,
        };
        let keep = job(&mut tables);
        let failed = tables.failed;
        if keep && !failed {
            self.release_pending = true;
            return Ok(());
        }
        self.tx
            .batch_execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")?;
        if keep {
            // After a failed statement PostgreSQL has discarded the job's work (unlike SQLite, where the job
            // may go on): what the job answered its caller is not true, so the group must not commit.
            return Err(StorageError::Postgres(
                "a job went on after one of its statements failed".to_owned(),
            ));
        }
        Ok(())
    }
}

/// One transaction's (or savepoint's) view of the tables.
struct PgTables<'t, 'c> {
    tx: &'t mut Transaction<'c>,
    statements: &'t mut Statements,
    /// A statement failed: PostgreSQL has aborted the transaction (or the job's savepoint).
    failed: bool,
}

/// A count or limit as a `BIGINT`.
fn big(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A partition number as an `INTEGER`.
fn partition_column(partition: u32) -> i32 {
    i32::try_from(partition).unwrap_or(i32::MAX)
}

fn source_column(source: EventSource) -> i16 {
    match source {
        EventSource::Telemetry => 0,
        EventSource::TwinChange => 1,
    }
}

fn source_of(value: i16) -> EventSource {
    if value == 1 {
        EventSource::TwinChange
    } else {
        EventSource::Telemetry
    }
}

/// The module column of the twins table: empty for the device twin.
fn module_key(module: Option<&ModuleId>) -> &str {
    module.map_or("", ModuleId::as_str)
}

fn parse<T: DeserializeOwned>(text: &str) -> Result<T, StorageError> {
    Ok(serde_json::from_str(text)?)
}

fn json<T: Serialize + std::fmt::Debug>(value: &T) -> Json<&T> {
    Json(value)
}

/// A parameter of the SQL that narrows a page of twins.
enum NarrowValue {
    /// Device ids (`= ANY`).
    Ids(Vec<String>),
    /// A document a section must contain (`@>`).
    Contains(Json<Value>),
}

impl NarrowValue {
    fn parameter(&self) -> &(dyn ToSql + Sync) {
        match self {
            Self::Ids(ids) => ids,
            Self::Contains(document) => document,
        }
    }
}

/// The SQL that narrows a page of twins (`AND ...` after its `WHERE`, over the twins table as `t`), with its
/// parameters from `$first` on; `device_column` names the device id column (see [`index`]).
fn narrowing_sql(
    narrowing: &Narrowing,
    device_column: &str,
    first: usize,
) -> (String, Vec<NarrowValue>) {
    let mut sql = String::new();
    let mut values = Vec::new();
    for constraint in &narrowing.constraints {
        let section = match &constraint.field {
            Field::DeviceId => {
                let ids = constraint
                    .values
                    .iter()
                    .filter_map(|v| match v {
                        Literal::String(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect();
                values.push(NarrowValue::Ids(ids));
                let _ = write!(
                    sql,
                    " AND {device_column} = ANY(${})",
                    first + values.len() - 1
                );
                continue;
            }
            Field::Tag(_) => "t.twin -> 'tags'",
            Field::Reported(_) => "t.twin -> 'reported' -> 'properties'",
        };
        let mut alternatives = Vec::new();
        for literal in &constraint.values {
            if let Some(document) = index::containment(&constraint.field, literal) {
                values.push(NarrowValue::Contains(Json(document)));
                alternatives.push(format!("{section} @> ${}", first + values.len() - 1));
            }
        }
        let _ = write!(sql, " AND ({})", alternatives.join(" OR "));
    }
    (sql, values)
}

impl PgTables<'_, '_> {
    /// Notes a failed statement (see [`PgTables::failed`]).
    fn track<T>(&mut self, result: Result<T, postgres::Error>) -> Result<T, StorageError> {
        self.failed |= result.is_err();
        Ok(result?)
    }

    fn statement(&mut self, sql: &'static str) -> Result<Statement, StorageError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let prepared = self.tx.prepare(sql);
        let statement = self.track(prepared)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StorageError> {
        let statement = self.statement(sql)?;
        let result = self.tx.query(&statement, params);
        self.track(result)
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StorageError> {
        let statement = self.statement(sql)?;
        let result = self.tx.query_opt(&statement, params);
        self.track(result)
    }

    fn query_one(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, StorageError> {
        let statement = self.statement(sql)?;
        let result = self.tx.query_one(&statement, params);
        self.track(result)
    }

    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StorageError> {
        let statement = self.statement(sql)?;
        let result = self.tx.execute(&statement, params);
        self.track(result)
    }

    /// The JSON record of the first column of the one row `sql` finds, if any.
    fn record<T: DeserializeOwned>(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<T>, StorageError> {
        self.query_opt(sql, params)?
            .map(|row| parse(row.get::<_, &str>(0)))
            .transpose()
    }

    /// The JSON records of the first column of the rows `sql` finds.
    fn records<T: DeserializeOwned>(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<T>, StorageError> {
        self.query(sql, params)?
            .iter()
            .map(|row| parse(row.get::<_, &str>(0)))
            .collect()
    }

    /// Moves a partition's head to its next sequence number (creating it at 0) and returns that number; the
    /// upsert locks the head row until the transaction ends.
    fn next_partition_seq(
        &mut self,
        partition: u32,
        offset: i64,
        enqueued_ms: i64,
    ) -> Result<i64, StorageError> {
        let row = self.query_one(
            "INSERT INTO partition_heads (partition, last_seq, last_offset, last_enqueued_ms)
             VALUES ($1, 0, $2, $3)
             ON CONFLICT (partition) DO UPDATE SET last_seq = partition_heads.last_seq + 1,
                 last_offset = excluded.last_offset, last_enqueued_ms = excluded.last_enqueued_ms
             RETURNING last_seq",
            &[&partition_column(partition), &offset, &enqueued_ms],
        )?;
        Ok(row.get(0))
    }
}

impl Tables for PgTables<'_, '_> {
    fn device(&mut self, id: &DeviceId) -> Result<Option<DeviceRecord>, StorageError> {
        self.record(
            "SELECT record::text FROM devices WHERE device_id = $1",
            &[&id.as_str()],
        )
    }

    fn devices(&mut self) -> Result<Vec<DeviceRecord>, StorageError> {
        self.records("SELECT record::text FROM devices ORDER BY device_id", &[])
    }

    fn device_ids(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .query(
                "SELECT device_id FROM devices WHERE device_id > $1 ORDER BY device_id LIMIT $2",
                &[&after.unwrap_or(""), &limit],
            )?
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect())
    }

    fn put_device(&mut self, record: &DeviceRecord) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO devices (device_id, record) VALUES ($1, $2)
             ON CONFLICT (device_id) DO UPDATE SET record = excluded.record",
            &[&record.device_id.as_str(), &json(record)],
        )?;
        Ok(())
    }

    fn delete_device(&mut self, id: &DeviceId) -> Result<bool, StorageError> {
        // The sessions of its modules are `{device}/{module}`: the keys from `{device}/` up to `{device}0`
        // ('0' follows '/'), a range of the primary key in byte order.
        let (from, to) = (format!("{id}/"), format!("{id}0"));
        self.execute(
            "DELETE FROM sessions WHERE client_id = $1 OR (client_id >= $2 AND client_id < $3)",
            &[&id.as_str(), &from, &to],
        )?;
        Ok(self.execute("DELETE FROM devices WHERE device_id = $1", &[&id.as_str()])? > 0)
    }

    fn module_ids(&mut self, device: &DeviceId) -> Result<HashSet<String>, StorageError> {
        Ok(self
            .query(
                "SELECT module_id FROM modules WHERE device_id = $1",
                &[&device.as_str()],
            )?
            .iter()
            .map(|row| row.get(0))
            .collect())
    }

    fn module(
        &mut self,
        device: &DeviceId,
        module: &ModuleId,
    ) -> Result<Option<ModuleRecord>, StorageError> {
        self.record(
            "SELECT record::text FROM modules WHERE device_id = $1 AND module_id = $2",
            &[&device.as_str(), &module.as_str()],
        )
    }

    fn modules(&mut self, device: &DeviceId) -> Result<Vec<ModuleRecord>, StorageError> {
        self.records(
            "SELECT record::text FROM modules WHERE device_id = $1 ORDER BY module_id",
            &[&device.as_str()],
        )
    }

    fn put_module(&mut self, record: &ModuleRecord) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO modules (device_id, module_id, record) VALUES ($1, $2, $3)
             ON CONFLICT (device_id, module_id) DO UPDATE SET record = excluded.record",
            &[
                &record.device_id.as_str(),
                &record.module_id.as_str(),
                &json(record),
            ],
        )?;
        Ok(())
    }

    fn delete_module(
        &mut self,
        device: &DeviceId,
        module: &ModuleId,
    ) -> Result<bool, StorageError> {
        let key: [&(dyn ToSql + Sync); 2] = [&device.as_str(), &module.as_str()];
        self.execute(
            "DELETE FROM twins WHERE device_id = $1 AND module_id = $2",
            &key,
        )?;
        self.execute(
            "DELETE FROM sessions WHERE client_id = $1",
            &[&format!("{device}/{module}")],
        )?;
        Ok(self.execute(
            "DELETE FROM modules WHERE device_id = $1 AND module_id = $2",
            &key,
        )? > 0)
    }

    fn twin(
        &mut self,
        device: &DeviceId,
        module: Option<&ModuleId>,
    ) -> Result<Option<Twin>, StorageError> {
        self.record(
            "SELECT twin::text FROM twins WHERE device_id = $1 AND module_id = $2",
            &[&device.as_str(), &module_key(module)],
        )
    }

    fn put_twin(
        &mut self,
        device: &DeviceId,
        module: Option<&ModuleId>,
        twin: &Twin,
    ) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO twins (device_id, module_id, twin) VALUES ($1, $2, $3)
             ON CONFLICT (device_id, module_id) DO UPDATE SET twin = excluded.twin",
            &[&device.as_str(), &module_key(module), &json(twin)],
        )?;
        Ok(())
    }

    fn device_twins(
        &mut self,
        after: Option<&str>,
        limit: usize,
        narrowing: &Narrowing,
    ) -> Result<Vec<(DeviceRecord, Option<Twin>)>, StorageError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let after = after.unwrap_or("");
        let rows = if narrowing.is_empty() {
            self.query(
                "SELECT d.record::text, t.twin::text FROM devices d
                 LEFT JOIN twins t ON t.device_id = d.device_id AND t.module_id = ''
                 WHERE d.device_id > $1 ORDER BY d.device_id LIMIT $2",
                &[&after, &limit],
            )?
        } else {
            let (narrowed, values) = narrowing_sql(narrowing, "d.device_id", 3);
            let sql = format!(
                "SELECT d.record::text, t.twin::text FROM devices d
                 LEFT JOIN twins t ON t.device_id = d.device_id AND t.module_id = ''
                 WHERE d.device_id > $1{narrowed} ORDER BY d.device_id LIMIT $2"
            );
            let mut parameters: Vec<&(dyn ToSql + Sync)> = vec![&after, &limit];
            parameters.extend(values.iter().map(NarrowValue::parameter));
            let result = self.tx.query(sql.as_str(), &parameters);
            self.track(result)?
        };
        rows.iter()
            .map(|row| {
                let twin = row.get::<_, Option<&str>>(1).map(parse).transpose()?;
                Ok((parse(row.get::<_, &str>(0))?, twin))
            })
            .collect()
    }

    fn module_twins(
        &mut self,
        after: Option<(&str, &str)>,
        limit: usize,
        narrowing: &Narrowing,
    ) -> Result<Vec<(DeviceRecord, ModuleRecord, Option<Twin>)>, StorageError> {
        let (device, module) = after.unwrap_or(("", ""));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = if narrowing.is_empty() {
            self.query(
                "SELECT d.record::text, m.record::text, t.twin::text FROM modules m
                 JOIN devices d ON d.device_id = m.device_id
                 LEFT JOIN twins t ON t.device_id = m.device_id AND t.module_id = m.module_id
                 WHERE (m.device_id, m.module_id) > ($1, $2)
                 ORDER BY m.device_id, m.module_id LIMIT $3",
                &[&device, &module, &limit],
            )?
        } else {
            let (narrowed, values) = narrowing_sql(narrowing, "m.device_id", 4);
            let sql = format!(
                "SELECT d.record::text, m.record::text, t.twin::text FROM modules m
                 JOIN devices d ON d.device_id = m.device_id
                 LEFT JOIN twins t ON t.device_id = m.device_id AND t.module_id = m.module_id
                 WHERE (m.device_id, m.module_id) > ($1, $2){narrowed}
                 ORDER BY m.device_id, m.module_id LIMIT $3"
            );
            let mut parameters: Vec<&(dyn ToSql + Sync)> = vec![&device, &module, &limit];
            parameters.extend(values.iter().map(NarrowValue::parameter));
            let result = self.tx.query(sql.as_str(), &parameters);
            self.track(result)?
        };
        rows.iter()
            .map(|row| {
                let twin = row.get::<_, Option<&str>>(2).map(parse).transpose()?;
                Ok((
                    parse(row.get::<_, &str>(0))?,
                    parse(row.get::<_, &str>(1))?,
                    twin,
                ))
            })
            .collect()
    }

    fn put_deployment(&mut self, device: &DeviceId, manifest: &Value) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO deployments (device_id, manifest, applied) VALUES ($1, $2, now())
             ON CONFLICT (device_id) DO UPDATE SET manifest = excluded.manifest, applied = excluded.applied",
            &[&device.as_str(), &json(manifest)],
        )?;
        Ok(())
    }

    fn deployment(&mut self, device: &DeviceId) -> Result<Option<Value>, StorageError> {
        self.record(
            "SELECT manifest::text FROM deployments WHERE device_id = $1",
            &[&device.as_str()],
        )
    }

    fn configuration(&mut self, id: &str) -> Result<Option<Configuration>, StorageError> {
        self.record(
            "SELECT record::text FROM configurations WHERE id = $1",
            &[&id],
        )
    }

    fn configurations(&mut self) -> Result<Vec<Configuration>, StorageError> {
        self.records("SELECT record::text FROM configurations ORDER BY id", &[])
    }

    fn put_configuration(&mut self, record: &Configuration) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO configurations (id, record) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            &[&record.id, &json(record)],
        )?;
        Ok(())
    }

    fn delete_configuration(&mut self, id: &str) -> Result<bool, StorageError> {
        Ok(self.execute("DELETE FROM configurations WHERE id = $1", &[&id])? > 0)
    }

    fn assignment(&mut self, device: &DeviceId) -> Result<Option<Assignment>, StorageError> {
        self.record(
            "SELECT assignment::text FROM configuration_assignments WHERE device_id = $1",
            &[&device.as_str()],
        )
    }

    fn assigned_devices(&mut self) -> Result<Vec<String>, StorageError> {
        Ok(self
            .query(
                "SELECT device_id FROM configuration_assignments ORDER BY device_id",
                &[],
            )?
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect())
    }

    fn assignments(&mut self) -> Result<Vec<(String, Assignment)>, StorageError> {
        self.query(
            "SELECT device_id, assignment::text FROM configuration_assignments ORDER BY device_id",
            &[],
        )?
        .iter()
        .map(|row| Ok((row.get::<_, String>(0), parse(row.get::<_, &str>(1))?)))
        .collect()
    }

    fn put_assignment(
        &mut self,
        device: &DeviceId,
        assignment: &Assignment,
    ) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO configuration_assignments (device_id, assignment) VALUES ($1, $2)
             ON CONFLICT (device_id) DO UPDATE SET assignment = excluded.assignment",
            &[&device.as_str(), &json(assignment)],
        )?;
        Ok(())
    }

    fn rollout(&mut self, id: &str) -> Result<Option<Rollout>, StorageError> {
        self.record("SELECT record::text FROM rollouts WHERE id = $1", &[&id])
    }

    fn rollouts(&mut self) -> Result<Vec<Rollout>, StorageError> {
        self.records("SELECT record::text FROM rollouts ORDER BY id", &[])
    }

    fn put_rollout(&mut self, rollout: &Rollout) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO rollouts (id, record) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            &[&rollout.deployment, &json(rollout)],
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
            "UPDATE rollouts SET lease_owner = $2, lease_until_ms = $4
             WHERE id = $1 AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until_ms < $3)",
            &[&id, &owner, &now_ms, &until_ms],
        )?;
        Ok(claimed > 0)
    }

    fn policies(&mut self) -> Result<Vec<AccessPolicy>, StorageError> {
        self.records("SELECT record::text FROM policies ORDER BY name", &[])
    }

    fn put_policy(&mut self, policy: &AccessPolicy) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO policies (name, record) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET record = excluded.record",
            &[&policy.name, &json(policy)],
        )?;
        Ok(())
    }

    fn setting(&mut self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .query_opt("SELECT value FROM settings WHERE name = $1", &[&name])?
            .map(|row| row.get(0)))
    }

    fn put_setting(
        &mut self,
        name: &str,
        value: &[u8],
        only_if_absent: bool,
    ) -> Result<bool, StorageError> {
        // A concurrent insert of the same name by another replica makes this one wait for its COMMIT, then do
        // nothing: exactly one replica stores the value.
        let stored = if only_if_absent {
            self.execute(
                "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[&name, &value],
            )?
        } else {
            self.execute(
                "INSERT INTO settings (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[&name, &value],
            )?
        };
        Ok(stored > 0)
    }

    fn session(&mut self, client_id: &str) -> Result<Vec<String>, StorageError> {
        Ok(self
            .record(
                "SELECT filters::text FROM sessions WHERE client_id = $1",
                &[&client_id],
            )?
            .unwrap_or_default())
    }

    fn put_session(&mut self, client_id: &str, filters: &[String]) -> Result<(), StorageError> {
        if filters.is_empty() {
            self.execute("DELETE FROM sessions WHERE client_id = $1", &[&client_id])?;
        } else {
            self.execute(
                "INSERT INTO sessions (client_id, filters) VALUES ($1, $2)
                 ON CONFLICT (client_id) DO UPDATE SET filters = excluded.filters",
                &[&client_id, &json(&filters)],
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
        self.query(
            "SELECT seq, event FROM events WHERE seq > $1 AND ($3 OR source = 0) ORDER BY seq LIMIT $2",
            &[&after, &big(max), &all_sources],
        )?
        .iter()
        .map(|row| Ok((row.get(0), parse(row.get::<_, &str>(1))?)))
        .collect()
    }

    fn last_event(&mut self) -> Result<i64, StorageError> {
        Ok(self
            .query_one("SELECT last_seq FROM event_totals WHERE id = 0", &[])?
            .get(0))
    }

    fn event_bytes(&mut self) -> Result<u64, StorageError> {
        let bytes: i64 = self
            .query_one("SELECT bytes FROM event_totals WHERE id = 0", &[])?
            .get(0);
        Ok(bytes.max(0).unsigned_abs())
    }

    fn prune_events(
        &mut self,
        cutoff_ms: i64,
        max_bytes: u64,
        batch: usize,
    ) -> Result<usize, StorageError> {
        let mut excess = i128::from(self.event_bytes()?) - i128::from(max_bytes);
        let mut last = None;
        for row in self.query(
            "SELECT seq, enqueued_ms, bytes FROM events ORDER BY seq LIMIT $1",
            &[&big(batch)],
        )? {
            let (seq, enqueued_ms, bytes): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            if enqueued_ms >= cutoff_ms && excess <= 0 {
                break;
            }
            excess -= i128::from(bytes);
            last = Some(seq);
        }
        let Some(last) = last else {
            return Ok(0);
        };
        // What is deleted, not what was seen: another replica may be pruning the same events.
        let deleted: i64 = self
            .query_one(
                "WITH gone AS (DELETE FROM events WHERE seq <= $1 RETURNING bytes)
                 UPDATE event_totals
                 SET bytes = event_totals.bytes - (SELECT COALESCE(SUM(gone.bytes), 0) FROM gone)::bigint
                 WHERE id = 0
                 RETURNING (SELECT COUNT(*) FROM gone)",
                &[&last],
            )?
            .get(0);
        Ok(usize::try_from(deleted).unwrap_or(0))
    }

    fn event_hub(&mut self) -> Result<Option<EventHubRecord>, StorageError> {
        self.query_opt(
            "SELECT name, partitions, created_ms FROM event_hub WHERE id = 0",
            &[],
        )?
        .map(|row| {
            let partitions: i32 = row.get(1);
            Ok(EventHubRecord {
                name: row.get(0),
                partitions: u32::try_from(partitions).map_err(|_| {
                    StorageError::Postgres(format!("the Event Hub has {partitions} partitions"))
                })?,
                created_ms: row.get(2),
            })
        })
        .transpose()
    }

    fn create_event_hub(&mut self, record: &EventHubRecord) -> Result<(), StorageError> {
        self.execute(
            // Replicas starting together may both find none: the first one's stays, the others read it.
            "INSERT INTO event_hub (id, name, partitions, created_ms) VALUES (0, $1, $2, $3)
             ON CONFLICT (id) DO NOTHING",
            &[
                &record.name,
                &partition_column(record.partitions),
                &record.created_ms,
            ],
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
        let bytes = big(text.len());
        // One round trip: first the counter row, whose lock orders appending transactions until COMMIT
        // (module documentation), then the partition's head (the upsert locks it), then the event.
        let row = self.query_one(
            "WITH total AS (
                 UPDATE event_totals SET last_seq = last_seq + 1, bytes = bytes + $1 WHERE id = 0
                 RETURNING last_seq),
             head AS (
                 INSERT INTO partition_heads (partition, last_seq, last_offset, last_enqueued_ms)
                 SELECT $2, 0, total.last_seq, $3 FROM total
                 ON CONFLICT (partition) DO UPDATE SET last_seq = partition_heads.last_seq + 1,
                     last_offset = excluded.last_offset, last_enqueued_ms = excluded.last_enqueued_ms
                 RETURNING last_seq, last_offset)
             INSERT INTO events (seq, enqueued_ms, bytes, partition, partition_seq, source, event)
             SELECT head.last_offset, $3, $1, $2, head.last_seq, $4, $5 FROM head
             RETURNING seq, partition_seq",
            &[
                &bytes,
                &partition_column(partition),
                &enqueued_ms,
                &source_column(source),
                &text,
            ],
        )?;
        let (seq, partition_seq) = (row.get(0), row.get(1));
        Ok(Appended {
            seq,
            partition,
            partition_seq,
        })
    }

    fn assign_partitions(&mut self, partitions: u32) -> Result<usize, StorageError> {
        // The counter row's lock keeps appends out while the heads move.
        self.query_one(
            "SELECT last_seq FROM event_totals WHERE id = 0 FOR UPDATE",
            &[],
        )?;
        let unassigned = self.query(
            "SELECT seq, enqueued_ms, event FROM events WHERE partition IS NULL ORDER BY seq",
            &[],
        )?;
        for row in &unassigned {
            let (seq, enqueued_ms): (i64, i64) = (row.get(0), row.get(1));
            let event: Value = parse(row.get::<_, &str>(2))?;
            let device = event.get("deviceId").and_then(Value::as_str).unwrap_or("");
            let partition = partition_of(device, partitions);
            let partition_seq = self.next_partition_seq(partition, seq, enqueued_ms)?;
            self.execute(
                "UPDATE events SET partition = $1, partition_seq = $2 WHERE seq = $3",
                &[&partition_column(partition), &partition_seq, &seq],
            )?;
        }
        Ok(unassigned.len())
    }

    fn head(&mut self, partition: u32) -> Result<Head, StorageError> {
        Ok(self
            .query_opt(
                "SELECT last_seq, last_offset, last_enqueued_ms FROM partition_heads WHERE partition = $1",
                &[&partition_column(partition)],
            )?
            .map_or(
                Head {
                    last_seq: -1,
                    last_offset: -1,
                    last_enqueued_ms: 0,
                },
                |row| Head {
                    last_seq: row.get(0),
                    last_offset: row.get(1),
                    last_enqueued_ms: row.get(2),
                },
            ))
    }

    fn first_kept(&mut self, partition: u32) -> Result<Option<i64>, StorageError> {
        Ok(self
            .query_one(
                "SELECT MIN(partition_seq) FROM events WHERE partition = $1",
                &[&partition_column(partition)],
            )?
            .get(0))
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
            .query_opt(
                "SELECT partition_seq FROM events WHERE partition = $1 AND seq >= $2
                 ORDER BY seq LIMIT 1",
                &[&partition_column(partition), &from],
            )?
            .map(|row| row.get(0)))
    }

    fn first_after_time(&mut self, partition: u32, ms: i64) -> Result<Option<i64>, StorageError> {
        Ok(self
            .query_opt(
                "SELECT partition_seq FROM events WHERE partition = $1 AND enqueued_ms > $2
                 ORDER BY enqueued_ms, partition_seq LIMIT 1",
                &[&partition_column(partition), &ms],
            )?
            .map(|row| row.get(0)))
    }

    fn partition_events(
        &mut self,
        partition: u32,
        after: i64,
        max: usize,
    ) -> Result<Vec<PartitionEvent>, StorageError> {
        self.query(
            "SELECT partition_seq, seq, enqueued_ms, source, event FROM events
             WHERE partition = $1 AND partition_seq > $2 ORDER BY partition_seq LIMIT $3",
            &[&partition_column(partition), &after, &big(max)],
        )?
        .iter()
        .map(|row| {
            Ok(PartitionEvent {
                partition_seq: row.get(0),
                offset: row.get(1),
                enqueued_ms: row.get(2),
                source: source_of(row.get(3)),
                event: parse(row.get::<_, &str>(4))?,
            })
        })
        .collect()
    }

    fn consumer_groups(&mut self) -> Result<Vec<String>, StorageError> {
        Ok(self
            .query(
                "SELECT name FROM consumer_groups ORDER BY lower(name), name",
                &[],
            )?
            .iter()
            .map(|row| row.get(0))
            .collect())
    }

    fn consumer_group_exists(&mut self, name: &str) -> Result<bool, StorageError> {
        Ok(self
            .query_opt(
                "SELECT 1 FROM consumer_groups WHERE lower(name) = lower($1::text COLLATE \"C\")",
                &[&name],
            )?
            .is_some())
    }

    fn create_consumer_group(&mut self, name: &str, created_ms: i64) -> Result<bool, StorageError> {
        Ok(self.execute(
            "INSERT INTO consumer_groups (name, created_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&name, &created_ms],
        )? > 0)
    }

    fn delete_consumer_group(&mut self, name: &str) -> Result<bool, StorageError> {
        Ok(self.execute(
            "DELETE FROM consumer_groups WHERE lower(name) = lower($1::text COLLATE \"C\")",
            &[&name],
        )? > 0)
    }

    fn ca_certificates(&mut self) -> Result<Vec<CaRecord>, StorageError> {
        self.records(
            "SELECT record::text FROM ca_certificates ORDER BY name",
            &[],
        )
    }

    fn add_ca_certificate(&mut self, record: &CaRecord) -> Result<bool, StorageError> {
        Ok(self.execute(
            "INSERT INTO ca_certificates (name, record) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&record.name, &json(record)],
        )? > 0)
    }

    fn remove_ca_certificate(&mut self, name: &str) -> Result<bool, StorageError> {
        Ok(self.execute("DELETE FROM ca_certificates WHERE name = $1", &[&name])? > 0)
    }

    fn enqueue_c2d(&mut self, device: &DeviceId, message: &Value) -> Result<i64, StorageError> {
        let expiry_ms = message["system"]["absolute-expiry-time"]
            .as_str()
            .and_then(|time| chrono::DateTime::parse_from_rfc3339(time).ok())
            .map(|time| time.timestamp_millis());
        Ok(self
            .query_one(
                "INSERT INTO c2d (device_id, expiry_ms, message) VALUES ($1, $2, $3) RETURNING id",
                &[
                    &device.as_str(),
                    &expiry_ms,
                    &serde_json::to_string(message)?,
                ],
            )?
            .get(0))
    }

    fn pending_c2d(&mut self, device: &DeviceId) -> Result<Vec<(i64, Value)>, StorageError> {
        self.query(
            "SELECT id, message FROM c2d WHERE device_id = $1 ORDER BY id",
            &[&device.as_str()],
        )?
        .iter()
        .map(|row| Ok((row.get(0), parse(row.get::<_, &str>(1))?)))
        .collect()
    }

    fn c2d_message(&mut self, device: &DeviceId, id: i64) -> Result<Option<Value>, StorageError> {
        self.record(
            "SELECT message FROM c2d WHERE id = $1 AND device_id = $2",
            &[&id, &device.as_str()],
        )
    }

    fn expired_c2d(&mut self, now_ms: i64) -> Result<Vec<(String, i64)>, StorageError> {
        Ok(self
            .query(
                "SELECT device_id, id FROM c2d WHERE expiry_ms < $1 ORDER BY expiry_ms, id",
                &[&now_ms],
            )?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    }

    fn devices_with_c2d(&mut self) -> Result<Vec<String>, StorageError> {
        Ok(self
            .query("SELECT DISTINCT device_id FROM c2d ORDER BY device_id", &[])?
            .iter()
            .map(|row| row.get(0))
            .collect())
    }

    fn complete_c2d(&mut self, device: &DeviceId, id: i64) -> Result<(), StorageError> {
        self.execute(
            "DELETE FROM c2d WHERE id = $1 AND device_id = $2",
            &[&id, &device.as_str()],
        )?;
        Ok(())
    }

    fn add_feedback(
        &mut self,
        record: &Value,
        enqueued_ms: i64,
        cap: usize,
    ) -> Result<i64, StorageError> {
        let id: i64 = self
            .query_one(
                "INSERT INTO feedback (enqueued_ms, record) VALUES ($1, $2) RETURNING id",
                &[&enqueued_ms, &serde_json::to_string(record)?],
            )?
            .get(0);
        // As SQLite: ids come one by one (no cache), so at most `cap` are kept, fewer only after a rolled-back
        // insert left a gap; counting rows instead would walk `cap` index entries on every insert.
        self.execute(
            "DELETE FROM feedback WHERE id <= $1::bigint - $2::bigint",
            &[&id, &big(cap)],
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
        // SKIP LOCKED: two replicas locking at once hand out different records.
        let mut rows: Vec<(i64, i64, String)> = self
            .query(
                "UPDATE feedback SET lock_token = $1, locked_until_ms = $2
                 WHERE id IN (SELECT id FROM feedback WHERE locked_until_ms <= $3
                              ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED)
                 RETURNING id, enqueued_ms, record",
                &[&token, &until_ms, &now_ms, &big(max)],
            )?
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect();
        rows.sort_unstable_by_key(|&(id, _, _)| id);
        let Some(&(_, enqueued_ms, _)) = rows.first() else {
            return Ok(None);
        };
        let records = rows
            .iter()
            .map(|(_, _, text)| parse(text))
            .collect::<Result<_, _>>()?;
        Ok(Some(LockedFeedback {
            records,
            enqueued_ms,
        }))
    }

    fn next_feedback_unlock(&mut self, now_ms: i64) -> Result<Option<i64>, StorageError> {
        Ok(self
            .query_one(
                "SELECT MIN(locked_until_ms) FROM feedback WHERE locked_until_ms > $1",
                &[&now_ms],
            )?
            .get(0))
    }

    fn complete_feedback(&mut self, token: i64) -> Result<usize, StorageError> {
        let deleted = self.execute("DELETE FROM feedback WHERE lock_token = $1", &[&token])?;
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }

    fn feedback_count(&mut self) -> Result<usize, StorageError> {
        let count: i64 = self.query_one("SELECT COUNT(*) FROM feedback", &[])?.get(0);
        Ok(usize::try_from(count).unwrap_or(0))
    }
}
