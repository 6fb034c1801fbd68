//! Durable storage for Outpost.
//!
//! [`log::MessageLog`] is the edge hub's store-and-forward queue: an append-only segmented log whose appends
//! resolve only once fsync'd (group-committed), read by each endpoint through its own cursors; start at
//! `log/mod.rs`.
//!
//! [`Database`] is the embedded SQL store (SQLite in WAL mode, `synchronous=FULL`): a commit returns only once it
//! is on disk, so whatever a caller acknowledges after a commit survives a crash. Schemas belong to the crates
//! that own the data (the hub's registry and twins, the edge's caches); they hand their migrations to
//! [`Database::open`], which applies the ones not applied yet, in order, each in its own transaction.

pub mod host;
pub mod log;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

/// Errors of the embedded store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused or failed an operation.
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The database file could not be created or made private.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The database was written by a newer Outpost than this one.
    #[error("database schema version {found} is newer than this build knows ({known})")]
    SchemaTooNew {
        /// The version found on disk.
        found: usize,
        /// The highest version this build has migrations for.
        known: usize,
    },
}

/// An embedded SQLite database with its schema migrated.
///
/// The connection sits behind a std `Mutex`, not tokio's: every statement is short and never held across an
/// `.await`, so a blocking lock is cheaper than an async one and cannot be held by a suspended task.
pub struct Database {
    connection: Mutex<Connection>,
}

impl Database {
    /// Opens (or creates) the database at `path` and applies the `migrations` not yet applied.
    ///
    /// `migrations[i]` brings the schema from version `i` to `i + 1`; never edit one that has shipped, add another.
    ///
    /// The database holds keys and tokens: it is created `0600` (SQLite gives its `-wal` and `-shm` files the
    /// database's mode), and an existing one, with its `-wal` and `-shm`, is tightened to `0600`.
    pub fn open(path: &Path, migrations: &[&str]) -> Result<Self, StoreError> {
        Self::make_private(path).map_err(|source| StoreError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let connection = Connection::open(path)?;
        Self::configure(connection, migrations)
    }

    fn make_private(path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(host::PRIVATE_FILE_MODE)
            .open(path)?;
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            host::private_file(Path::new(&file))?;
        }
        Ok(())
    }

    /// An in-memory database, for tests.
    pub fn in_memory(migrations: &[&str]) -> Result<Self, StoreError> {
        Self::configure(Connection::open_in_memory()?, migrations)
    }

    fn configure(mut connection: Connection, migrations: &[&str]) -> Result<Self, StoreError> {
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: each commit is fsync'd before it returns, which is what "acknowledged" means.
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let found: usize = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if found > migrations.len() {
            return Err(StoreError::SchemaTooNew {
                found,
                known: migrations.len(),
            });
        }
        for (version, migration) in migrations.iter().enumerate().skip(found) {
            let transaction = connection.transaction()?;
            transaction.execute_batch(migration)?;
            transaction.pragma_update(None, "user_version", version + 1)?;
            transaction.commit()?;
        }
        Ok(Self {
            connection: Mutex::new(connection),
        })
    }

    /// Locks the connection for a few statements. Keep the guard out of any `.await`.
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite itself consistent (transactions roll back on drop),
        // so a poisoned lock is still safe to use.
        self.connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` inside one transaction: all of it commits, or none of it does.
    pub fn transaction<T, E>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<rusqlite::Error>,
    {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        let value = f(&transaction)?;
        transaction.commit()?;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIGRATIONS: &[&str] = &[
        "CREATE TABLE things (name TEXT PRIMARY KEY);",
        "ALTER TABLE things ADD COLUMN size INTEGER NOT NULL DEFAULT 0;",
    ];

    #[test]
    fn migrations_apply_once_and_data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let db = Database::open(&path, &MIGRATIONS[..1]).unwrap();
            db.lock()
                .execute("INSERT INTO things (name) VALUES ('a')", [])
                .unwrap();
        }
        let db = Database::open(&path, MIGRATIONS).unwrap();
        let (name, size): (String, i64) = db
            .lock()
            .query_row("SELECT name, size FROM things", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((name.as_str(), size), ("a", 0));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        drop(Database::open(&path, MIGRATIONS).unwrap());
        assert!(matches!(
            Database::open(&path, &MIGRATIONS[..1]),
            Err(StoreError::SchemaTooNew { found: 2, known: 1 })
        ));
    }

    #[test]
    fn a_failed_transaction_changes_nothing() {
        let db = Database::in_memory(MIGRATIONS).unwrap();
        let result: Result<(), rusqlite::Error> = db.transaction(|tx| {
            tx.execute("INSERT INTO things (name) VALUES ('a')", [])?;
            tx.execute("INSERT INTO things (name) VALUES ('a')", [])?;
            Ok(())
        });
        assert!(result.is_err());
        let count: i64 = db
            .lock()
            .query_row("SELECT COUNT(*) FROM things", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 0);
    }
}
