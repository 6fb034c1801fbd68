//! The hub's SQLite schema and the errors of its storage.
//!
//! The tables are read and written through [`crate::storage::Tables`]; the SQLite engine
//! ([`crate::storage::sqlite`]) applies these migrations when it opens a database.

/// The SQLite schema, one migration per version (`PRAGMA user_version` counts those applied).
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
", "
    -- The hub's own settings by name (its CA and server certificate, say), shared by every process on the database.
    CREATE TABLE settings (name TEXT PRIMARY KEY, value BLOB NOT NULL);
", "
    -- Jobs (crate::jobs): the record as created (JSON, never changed) beside what changes: the status (active
    -- codes below 3, so that a final one is never overwritten), the counts, and the lease of the runner that
    -- runs it. One row per device a job selected, with its outcome, so that a resumed job skips those done.
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        status INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        end_ms INTEGER,
        failure_reason TEXT,
        statistics TEXT NOT NULL,
        lease_owner TEXT,
        lease_until_ms INTEGER NOT NULL DEFAULT 0,
        record TEXT NOT NULL);
    CREATE INDEX jobs_by_status ON jobs (status, created_ms);
    CREATE TABLE job_devices (
        job_id TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
        device_id TEXT NOT NULL,
        outcome INTEGER NOT NULL,
        result TEXT,
        PRIMARY KEY (job_id, device_id));
", "
    -- Automatic configurations and deployments (crate::fleet) by id, and what they gave each device and its
    -- modules (so that a device that stops matching loses exactly that).
    CREATE TABLE configurations (id TEXT PRIMARY KEY, record TEXT NOT NULL);
    CREATE TABLE configuration_assignments (
        device_id TEXT PRIMARY KEY REFERENCES devices(device_id) ON DELETE CASCADE,
        assignment TEXT NOT NULL);
", "
    -- Rollouts of deployments in waves (crate::fleet::rollout): the persisted state machine, and the lease of the
    -- process that drives it.
    CREATE TABLE rollouts (
        id TEXT PRIMARY KEY REFERENCES configurations(id) ON DELETE CASCADE,
        record TEXT NOT NULL,
        lease_owner TEXT,
        lease_until_ms INTEGER NOT NULL DEFAULT 0);
", "
    -- The index of fleet queries (crate::storage::index): every scalar leaf of a twin's tags and reported
    -- properties, written with the twin; the engine fills it from the existing twins when it applies this
    -- migration (TWIN_VALUES_VERSION).
    CREATE TABLE twin_values (
        device_id TEXT NOT NULL,
        module_id TEXT NOT NULL,
        path TEXT NOT NULL,
        value TEXT NOT NULL,
        FOREIGN KEY (device_id, module_id) REFERENCES twins (device_id, module_id) ON DELETE CASCADE);
    CREATE INDEX twin_values_by_value ON twin_values (path, value, module_id, device_id);
    CREATE INDEX twin_values_by_twin ON twin_values (device_id, module_id);
", "
    -- CA certificates that device certificates may chain to (crate::x509_auth), by name.
    CREATE TABLE ca_certificates (name TEXT PRIMARY KEY, record TEXT NOT NULL);
", "
    -- The provisioning service (crate::provisioning): enrollments of one device by registration id, enrollment
    -- groups by id, and what each registration id's last registration did (DPS's registration state).
    CREATE TABLE individual_enrollments (registration_id TEXT PRIMARY KEY, record TEXT NOT NULL);
    CREATE TABLE enrollment_groups (id TEXT PRIMARY KEY, record TEXT NOT NULL);
    CREATE TABLE registrations (registration_id TEXT PRIMARY KEY, record TEXT NOT NULL);
"];

/// The version whose migration creates `twin_values`, which the engine then fills from the stored twins.
pub const TWIN_VALUES_VERSION: usize = 10;

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
    /// The storage engine failed otherwise (it could not open its database, its schema is newer than this
    /// build, a read task was lost).
    #[error("storage: {0}")]
    Engine(String),
}
