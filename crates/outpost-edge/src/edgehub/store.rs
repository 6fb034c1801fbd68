//! The edge hub's small durable state in SQLite: cached twins, reported patches waiting for the hub, MQTT
//! sessions, the identities in this device's scope (for authentication while offline), and the counts of what
//! the hub refused for itself and was dead-lettered.

use outpost_store::{Database, StoreError};
use rusqlite::{params, OptionalExtension};
use serde_json::Value;

/// The schema, one migration per version.
pub const MIGRATIONS: &[&str] = &["
    CREATE TABLE twins (client TEXT PRIMARY KEY, view TEXT NOT NULL);
    CREATE TABLE reported_queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, client TEXT NOT NULL, patch TEXT NOT NULL);
    CREATE TABLE sessions (client TEXT PRIMARY KEY, filters TEXT NOT NULL);
    CREATE TABLE scope (id INTEGER PRIMARY KEY CHECK (id = 1), identities TEXT NOT NULL);
", "
    CREATE TABLE dead_letters (kind TEXT PRIMARY KEY, count INTEGER NOT NULL);
"];

/// What the hub refused for itself, so the edge gave up on it (counted durably, the reason logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetter {
    /// A telemetry message of the `$upstream` queue.
    Message,
    /// A queued reported-property patch.
    ReportedPatch,
}

impl DeadLetter {
    fn key(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::ReportedPatch => "reported",
        }
    }
}

const COUNT_DEAD_LETTER: &str = "INSERT INTO dead_letters (kind, count) VALUES (?1, 1) \
    ON CONFLICT (kind) DO UPDATE SET count = count + 1";

/// Errors of the edge hub's store.
#[derive(Debug, thiserror::Error)]
pub enum EdgeStoreError {
    /// SQLite failed.
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    /// The database could not be opened.
    #[error(transparent)]
    Open(#[from] StoreError),
    /// A stored value is not valid JSON.
    #[error("corrupt record: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// The edge hub's store.
pub struct EdgeStore {
    db: Database,
}

impl EdgeStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &std::path::Path) -> Result<Self, EdgeStoreError> {
        Ok(Self {
            db: Database::open(path, MIGRATIONS)?,
        })
    }

    /// The cached twin (`{"desired":..,"reported":..}`) of a client.
    pub fn twin(&self, client: &str) -> Result<Option<Value>, EdgeStoreError> {
        let text: Option<String> = self
            .db
            .lock()
            .query_row("SELECT view FROM twins WHERE client = ?1", [client], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
    }

    /// Caches a client's twin.
    pub fn put_twin(&self, client: &str, view: &Value) -> Result<(), EdgeStoreError> {
        self.db.lock().execute(
            "INSERT INTO twins (client, view) VALUES (?1, ?2) ON CONFLICT (client) DO UPDATE SET view = excluded.view",
            params![client, view.to_string()],
        )?;
        Ok(())
    }

    /// Queues a reported patch for the hub and updates the cached twin, in one transaction.
    pub fn queue_reported(
        &self,
        client: &str,
        patch: &Value,
        view: &Value,
    ) -> Result<(), EdgeStoreError> {
        self.db.transaction(|tx| {
            tx.execute("INSERT INTO reported_queue (client, patch) VALUES (?1, ?2)", params![client, patch.to_string()])?;
            tx.execute(
                "INSERT INTO twins (client, view) VALUES (?1, ?2) ON CONFLICT (client) DO UPDATE SET view = excluded.view",
                params![client, view.to_string()],
            )?;
            Ok::<_, EdgeStoreError>(())
        })
    }

    /// The oldest queued reported patches, in the order they were made.
    pub fn queued_reported(&self, max: usize) -> Result<Vec<(i64, String, Value)>, EdgeStoreError> {
        let conn = self.db.lock();
        let mut statement = conn.prepare_cached(
            "SELECT seq, client, patch FROM reported_queue ORDER BY seq LIMIT ?1",
        )?;
        let rows = statement.query_map([max as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?))
        })?;
        rows.map(|row| {
            let (seq, client, patch) = row?;
            Ok((seq, client, serde_json::from_str(&patch)?))
        })
        .collect()
    }

    /// Removes a reported patch the hub has applied.
    pub fn reported_done(&self, seq: i64) -> Result<(), EdgeStoreError> {
        self.db
            .lock()
            .execute("DELETE FROM reported_queue WHERE seq = ?1", [seq])?;
        Ok(())
    }

    /// Removes a reported patch the hub refused for itself and counts it dead-lettered, in one transaction.
    pub fn reported_dead_lettered(&self, seq: i64) -> Result<(), EdgeStoreError> {
        self.db.transaction(|tx| {
            tx.execute("DELETE FROM reported_queue WHERE seq = ?1", [seq])?;
            tx.execute(COUNT_DEAD_LETTER, [DeadLetter::ReportedPatch.key()])?;
            Ok::<_, EdgeStoreError>(())
        })
    }

    /// Counts one more dead-lettered item of `kind`.
    pub fn count_dead_letter(&self, kind: DeadLetter) -> Result<(), EdgeStoreError> {
        self.db.lock().execute(COUNT_DEAD_LETTER, [kind.key()])?;
        Ok(())
    }

    /// How many items of `kind` were dead-lettered since this store was created.
    pub fn dead_lettered(&self, kind: DeadLetter) -> Result<u64, EdgeStoreError> {
        let count: Option<i64> = self
            .db
            .lock()
            .query_row(
                "SELECT count FROM dead_letters WHERE kind = ?1",
                [kind.key()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(count.unwrap_or(0).max(0) as u64)
    }

    /// How many reported patches wait for the hub.
    pub fn reported_backlog(&self) -> Result<i64, EdgeStoreError> {
        Ok(self
            .db
            .lock()
            .query_row("SELECT COUNT(*) FROM reported_queue", [], |r| r.get(0))?)
    }

    /// The persisted MQTT subscriptions of a client.
    pub fn session(&self, client: &str) -> Result<Vec<String>, EdgeStoreError> {
        let text: Option<String> = self
            .db
            .lock()
            .query_row(
                "SELECT filters FROM sessions WHERE client = ?1",
                [client],
                |r| r.get(0),
            )
            .optional()?;
        Ok(text
            .map(|t| serde_json::from_str(&t))
            .transpose()?
            .unwrap_or_default())
    }

    /// Persists a client's subscriptions; an empty list forgets them.
    pub fn put_session(&self, client: &str, filters: &[String]) -> Result<(), EdgeStoreError> {
        let conn = self.db.lock();
        if filters.is_empty() {
            conn.execute("DELETE FROM sessions WHERE client = ?1", [client])?;
        } else {
            conn.execute(
                "INSERT INTO sessions (client, filters) VALUES (?1, ?2) ON CONFLICT (client) DO UPDATE SET filters = excluded.filters",
                params![client, serde_json::to_string(filters)?],
            )?;
        }
        Ok(())
    }

    /// The identities in this device's scope, as last read from the hub.
    pub fn scope(&self) -> Result<Option<Value>, EdgeStoreError> {
        let text: Option<String> = self
            .db
            .lock()
            .query_row("SELECT identities FROM scope WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
    }

    /// Replaces the cached scope.
    pub fn put_scope(&self, identities: &Value) -> Result<(), EdgeStoreError> {
        self.db.lock().execute(
            "INSERT INTO scope (id, identities) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET identities = excluded.identities",
            [identities.to_string()],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reported_patches_come_back_in_order_and_leave_when_done() {
        let dir = tempfile::tempdir().unwrap();
        let store = EdgeStore::open(&dir.path().join("edgehub.sqlite")).unwrap();
        store
            .queue_reported("d/a", &json!({"n": 1}), &json!({}))
            .unwrap();
        store
            .queue_reported("d/b", &json!({"n": 2}), &json!({}))
            .unwrap();
        let queued = store.queued_reported(10).unwrap();
        assert_eq!(
            queued
                .iter()
                .map(|(_, c, p)| (c.as_str(), p["n"].as_i64().unwrap()))
                .collect::<Vec<_>>(),
            [("d/a", 1), ("d/b", 2)]
        );
        store.reported_done(queued[0].0).unwrap();
        drop(store);
        let reopened = EdgeStore::open(&dir.path().join("edgehub.sqlite")).unwrap();
        assert_eq!(reopened.reported_backlog().unwrap(), 1);
    }

    #[test]
    fn dead_letters_are_counted_by_kind_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edgehub.sqlite");
        let store = EdgeStore::open(&path).unwrap();
        store
            .queue_reported("d/a", &json!({"n": 1}), &json!({}))
            .unwrap();
        let (seq, _, _) = store.queued_reported(1).unwrap().remove(0);
        store.reported_dead_lettered(seq).unwrap();
        store.count_dead_letter(DeadLetter::Message).unwrap();
        store.count_dead_letter(DeadLetter::Message).unwrap();
        drop(store);
        let reopened = EdgeStore::open(&path).unwrap();
        assert_eq!(reopened.reported_backlog().unwrap(), 0);
        assert_eq!(reopened.dead_lettered(DeadLetter::Message).unwrap(), 2);
        assert_eq!(
            reopened.dead_lettered(DeadLetter::ReportedPatch).unwrap(),
            1
        );
    }
}
