//! The storage writer: one thread that owns SQLite writes and commits them in groups.
//!
//! An async caller hands a write job (a closure over the connection, inside a transaction) to
//! [`StorageWriter::write`] and awaits its answer; no tokio worker runs SQLite or waits on its fsync. The thread
//! takes every job waiting (up to [`MAX_BATCH`]), runs each in its own `SAVEPOINT` inside one transaction, so a
//! job that fails rolls back only its own changes, commits once (one fsync for the whole group) and only then
//! answers each caller: nothing is acknowledged before it is durable.
//!
//! The queue is bounded ([`QUEUE_CAPACITY`]): past it a caller waits for room, which is the back-pressure that
//! keeps a slow disk from growing memory. The thread stops when the [`StorageWriter`] is dropped: the queue
//! closes, the jobs already in it are committed and answered, and the drop joins the thread.
//!
//! Reads still take the database's lock on the caller's thread; while the writer commits a group they wait for
//! it, as before. Moving them to a WAL read connection is the next step.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use outpost_store::Database;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::HubMetrics;
use crate::store::StorageError;

/// Write jobs that may wait for the writer; past this a caller waits for room.
pub const QUEUE_CAPACITY: usize = 1024;
/// The most jobs committed together in one transaction.
pub const MAX_BATCH: usize = 256;

/// What a job leaves for its caller once the group's commit is known: it answers with its own result, or with
/// the commit's failure.
type Answer = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// A write job: runs inside its savepoint and says whether it succeeded (`false` rolls the savepoint back).
/// Given no connection (the group could not begin), it does not run and its caller gets the group's failure.
type Job = Box<dyn FnOnce(Option<&rusqlite::Connection>) -> (bool, Answer) + Send>;

/// The handle of the writer thread: submits jobs, and stops and joins the thread when dropped.
pub struct StorageWriter {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    commits: Arc<AtomicU64>,
    metrics: Arc<Mutex<HubMetrics>>,
}

impl StorageWriter {
    /// Starts the writer thread over `db`.
    pub fn start(db: Arc<Database>) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
        let commits = Arc::new(AtomicU64::new(0));
        let metrics = Arc::new(Mutex::new(HubMetrics::default()));
        let thread = {
            let commits = commits.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name("outpost-storage".into())
                .spawn(move || run(&db, queue, &commits, &metrics))?
        };
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
            commits,
            metrics,
        })
    }

    /// Records commit durations into `metrics` from now on.
    pub fn set_metrics(&self, metrics: HubMetrics) {
        *self
            .metrics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = metrics;
    }

    /// The transactions the writer has committed (each carries one or more jobs).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `job` in the next group commit and answers once that commit is on disk.
    ///
    /// An `Err` from `job` rolls back only `job`'s changes and is returned as is; a failed commit is returned as
    /// `E::from(StorageError)`.
    pub async fn write<T, E, F>(&self, job: F) -> Result<T, E>
    where
        F: FnOnce(&rusqlite::Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        let answered = self.submit(job).await?;
        answered.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Queues `job` (waiting for room) and returns where its answer will arrive.
    async fn submit<T, E, F>(&self, job: F) -> Result<oneshot::Receiver<Result<T, E>>, StorageError>
    where
        F: FnOnce(&rusqlite::Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let result = connection.map(job);
            let ok = result.as_ref().is_some_and(Result::is_ok);
            let reply: Answer = Box::new(move |committed| {
                let answered = match (committed, result) {
                    (Ok(()), Some(result)) => result,
                    (Err(error), _) => Err(E::from(error)),
                    (Ok(()), None) => Err(E::from(StorageError::CommitFailed(
                        "the job did not run".into(),
                    ))),
                };
                // The caller may have gone (its request cancelled); the write stands either way.
                let _ = answer.send(answered);
            });
            (ok, reply)
        });
        self.jobs
            .as_ref()
            .ok_or(StorageError::WriterStopped)?
            .send(job)
            .await
            .map_err(|_| StorageError::WriterStopped)?;
        Ok(answered)
    }
}

impl Drop for StorageWriter {
    fn drop(&mut self) {
        // Closing the queue lets the thread commit what is queued and return.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the storage writer thread panicked");
            }
        }
    }
}

/// The writer thread: takes a group of jobs, commits it, answers it, until the queue closes.
fn run(
    db: &Database,
    mut queue: mpsc::Receiver<Job>,
    commits: &AtomicU64,
    metrics: &Mutex<HubMetrics>,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let (answers, committed) = commit_group(db, batch);
        let elapsed = started.elapsed();
        commits.fetch_add(1, Ordering::Relaxed);
        metrics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .storage_commit(elapsed);
        match committed {
            Ok(()) => answers.into_iter().for_each(|answer| answer(Ok(()))),
            Err(error) => {
                tracing::error!(%error, jobs = answers.len(), "a group commit failed");
                let text = error.to_string();
                for answer in answers {
                    answer(Err(StorageError::CommitFailed(text.clone())));
                }
            }
        }
    }
}

/// Runs `batch` in one transaction, each job in its own savepoint, and commits it.
fn commit_group(db: &Database, batch: Vec<Job>) -> (Vec<Answer>, Result<(), rusqlite::Error>) {
    let mut answers = Vec::with_capacity(batch.len());
    let mut jobs = batch.into_iter();
    let mut connection = db.lock();
    let mut transaction = match connection.transaction() {
        Ok(transaction) => transaction,
        Err(error) => return (not_run(answers, jobs), Err(error)),
    };
    while let Some(job) = jobs.next() {
        let savepoint = match transaction.savepoint() {
            Ok(savepoint) => savepoint,
            Err(error) => {
                answers.push(job(None).1);
                return (not_run(answers, jobs), Err(error));
            }
        };
        let (ok, answer) = job(Some(&savepoint));
        answers.push(answer);
        if ok {
            if let Err(error) = savepoint.commit() {
                return (not_run(answers, jobs), Err(error));
            }
        }
        // A failed job's savepoint rolls back when dropped here.
    }
    let committed = transaction.commit();
    (answers, committed)
}

/// Adds the answers of `jobs` that will not run to `answers`.
fn not_run(mut answers: Vec<Answer>, jobs: impl Iterator<Item = Job>) -> Vec<Answer> {
    answers.extend(jobs.map(|job| job(None).1));
    answers
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Waker};

    use serde_json::json;

    use super::*;
    use crate::registry::{DeviceSpec, Precondition};
    use crate::twins::TwinWrite;
    use crate::{Hub, HubError};

    type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

    const JOBS: usize = 32;
    const FAILING: usize = 7;
    const WRITES: usize = 20;

    /// Polls each future once, so that each has queued its job, and returns them still pending.
    fn queue_all<T>(futures: Vec<Pending<T>>) -> Vec<Pending<T>> {
        let mut context = Context::from_waker(Waker::noop());
        futures
            .into_iter()
            .map(|mut future| {
                assert!(future.as_mut().poll(&mut context).is_pending());
                future
            })
            .collect()
    }

    fn names(db: &Database) -> Vec<String> {
        let connection = db.lock();
        let mut statement = connection
            .prepare("SELECT name FROM things ORDER BY name")
            .unwrap();
        let rows = statement.query_map([], |row| row.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    #[tokio::test]
    async fn jobs_waiting_for_a_commit_share_the_next_one_and_a_failing_job_rolls_back_alone() {
        let db = Arc::new(
            Database::in_memory(&["CREATE TABLE things (name TEXT PRIMARY KEY);"]).unwrap(),
        );
        db.lock()
            .execute("INSERT INTO things (name) VALUES ('taken')", [])
            .unwrap();
        let writer = StorageWriter::start(db.clone()).unwrap();
        let writer = Arc::new(writer);
        // Holding the database stands for a commit in progress: the jobs queue behind it.
        let commit_in_progress = db.lock();
        let futures: Vec<Pending<Result<(), StorageError>>> = (0..JOBS)
            .map(|i| {
                let writer = writer.clone();
                Box::pin(async move {
                    writer
                        .write(move |connection| {
                            let name = format!("job{i:02}");
                            connection.execute("INSERT INTO things (name) VALUES (?1)", [&name])?;
                            if i == FAILING {
                                connection
                                    .execute("INSERT INTO things (name) VALUES ('taken')", [])?;
                            }
                            Ok(())
                        })
                        .await
                }) as Pending<_>
            })
            .collect();
        let futures = queue_all(futures);
        drop(commit_in_progress);
        for (i, future) in futures.into_iter().enumerate() {
            let answer = future.await;
            assert_eq!(answer.is_ok(), i != FAILING, "job {i}: {answer:?}");
        }
        let stored = names(&db);
        assert_eq!(
            stored.len(),
            JOBS,
            "every job but the failing one, and 'taken'"
        );
        assert!(!stored.contains(&format!("job{FAILING:02}")));
        assert!(
            writer.commits() <= 2,
            "{} commits for {JOBS} jobs",
            writer.commits()
        );
    }

    #[tokio::test]
    async fn concurrent_twin_writes_are_answered_after_fewer_commits_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Arc::new(Hub::open(dir.path(), "hub.example").unwrap());
        hub.put_device(
            &DeviceSpec {
                device_id: "sensor".into(),
                ..DeviceSpec::default()
            },
            &Precondition::CreateOnly,
        )
        .await
        .unwrap();
        let commits_before = hub.storage_commits();
        let commit_in_progress = hub.db.lock();
        let mut futures: Vec<Pending<Result<u64, HubError>>> = (0..WRITES)
            .map(|i| {
                let hub = hub.clone();
                Box::pin(async move {
                    let write = TwinWrite {
                        desired: Some(json!({ format!("key{i}"): i })),
                        ..TwinWrite::default()
                    };
                    let view = hub
                        .write_twin("sensor", None, &write, &Precondition::Any)
                        .await?;
                    Ok(view.twin.desired_version())
                }) as Pending<_>
            })
            .collect();
        futures.push(Box::pin({
            let hub = hub.clone();
            async move {
                let write = TwinWrite {
                    desired: Some(json!({"stale": true})),
                    ..TwinWrite::default()
                };
                hub.write_twin(
                    "sensor",
                    None,
                    &write,
                    &Precondition::Etag("\"stale\"".into()),
                )
                .await
                .map(|view| view.twin.desired_version())
            }
        }));
        let futures = queue_all(futures);
        drop(commit_in_progress);
        let mut versions = Vec::new();
        for (i, future) in futures.into_iter().enumerate() {
            match future.await {
                Ok(version) => versions.push(version),
                Err(HubError::PreconditionFailed) => assert_eq!(i, WRITES),
                Err(other) => panic!("write {i}: {other}"),
            }
        }
        assert_eq!(versions.len(), WRITES);
        let commits = hub.storage_commits() - commits_before;
        assert!(commits <= 2, "{commits} commits for {} writes", WRITES + 1);

        drop(hub);
        let hub = Hub::open(dir.path(), "hub.example").unwrap();
        let desired = hub.twin("sensor", None).unwrap().twin.desired().clone();
        for i in 0..WRITES {
            assert_eq!(desired[&format!("key{i}")], json!(i), "{desired:?}");
        }
        assert!(desired.get("stale").is_none());
    }

    #[tokio::test]
    async fn a_devices_subscriptions_are_saved_by_the_writer() {
        use outpost_mqtt::DeviceOperations as _;
        let hub = Arc::new(Hub::in_memory("hub.example").unwrap());
        let devices = crate::device_ops::HubDevices(hub.clone());
        let before = hub.storage_commits();
        let filters = vec!["$iothub/twin/PATCH/properties/desired/#".to_owned()];
        devices.save_subscriptions("sensor", &filters).await;
        assert_eq!(hub.storage_commits(), before + 1);
        assert_eq!(devices.load_subscriptions("sensor").await, filters);
    }
}
