//! The storage writer, and [`Storage`], the handle the hub holds on its engine.
//!
//! An async caller hands a write job (a closure over [`Tables`], inside a transaction) to
//! [`StorageWriter::write`] and awaits its answer; no tokio worker runs a write or waits on its commit. The
//! writer's thread takes every job waiting (up to [`MAX_BATCH`]) and gives them to the engine as one group
//! ([`Engine::write_group`]): each job runs in its own savepoint inside one transaction, so a job that fails rolls
//! back only its own changes; the group commits once (one fsync for the whole group), and only then is each
//! caller answered: nothing is acknowledged before it is durable. The writer knows no SQL: it runs over any
//! [`Engine`].
//!
//! The queue is bounded ([`QUEUE_CAPACITY`]): past it a caller waits for room, which is the back-pressure that
//! keeps a slow disk from growing memory. The thread stops when the [`StorageWriter`] is dropped: the queue
//! closes, the jobs already in it are committed and answered, and the drop joins the thread.
//!
//! Reads go through [`Storage::read`], which runs the engine's [`Engine::read`] on tokio's blocking pool: the
//! engine reads on connections of its own (SQLite: WAL readers), so a read waits neither for the writer nor on
//! an async worker.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::metrics::HubMetrics;
use crate::storage::{Engine, Group, Tables};
use crate::store::StorageError;

/// Write jobs that may wait for the writer; past this a caller waits for room.
pub const QUEUE_CAPACITY: usize = 1024;
/// The most jobs committed together in one transaction.
pub const MAX_BATCH: usize = 256;

/// What a job leaves for its caller once the group's commit is known: it answers with its own result, or with
/// the commit's failure.
type Answer = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// A write job: runs inside its savepoint and says whether it succeeded (`false` rolls the savepoint back).
/// Given no tables (the group could not begin), it does not run and its caller gets the group's failure.
type Job = Box<dyn FnOnce(Option<&mut dyn Tables>) -> (bool, Answer) + Send>;

/// The handle on the hub's storage: reads on the blocking pool, writes through the group-committing writer.
/// Cheap to clone; the writer's thread stops when the last clone is dropped.
#[derive(Clone)]
pub struct Storage {
    engine: Arc<dyn Engine>,
    writer: Arc<StorageWriter>,
}

impl Storage {
    /// Starts the writer's thread over `engine`.
    pub fn start(engine: Arc<dyn Engine>) -> Result<Self, StorageError> {
        let writer = StorageWriter::start(engine.clone()).map_err(StorageError::WriterStart)?;
        Ok(Self {
            engine,
            writer: Arc::new(writer),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The writer.
    pub fn writer(&self) -> &StorageWriter {
        &self.writer
    }

    /// Runs `job` in a consistent read view on tokio's blocking pool (never on an async worker).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn read<T, E, F>(&self, job: F) -> Result<T, E>
    where
        F: FnOnce(&mut dyn Tables) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || read_now(&*engine, job))
            .await
            .map_err(|e| E::from(StorageError::Engine(format!("a read task failed: {e}"))))?
    }

    /// Runs `job` in a consistent read view on the calling thread. Only for the callers that cannot wait
    /// asynchronously (synchronous trait methods of the AMQP head): the engine's readers never wait for the
    /// writer, but the read itself blocks this thread.
    pub fn read_blocking<T, E>(
        &self,
        job: impl FnOnce(&mut dyn Tables) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StorageError>,
    {
        read_now(&*self.engine, job)
    }

    /// Runs `job` in the writer's next group commit and answers once that commit is durable (see
    /// [`StorageWriter::write`]).
    pub async fn write<T, E, F>(&self, job: F) -> Result<T, E>
    where
        F: FnOnce(&mut dyn Tables) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        self.writer.write(job).await
    }
}

/// Runs a one-shot job through the engine's [`Engine::read`].
fn read_now<T, E>(
    engine: &dyn Engine,
    job: impl FnOnce(&mut dyn Tables) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<StorageError>,
{
    let mut job = Some(job);
    let mut result = None;
    engine.read(&mut |tables| {
        if let Some(job) = job.take() {
            result = Some(job(tables));
        }
        Ok(())
    })?;
    result.unwrap_or_else(|| Err(E::from(StorageError::Engine("the read did not run".into()))))
}

/// The handle of the writer thread: submits jobs, and stops and joins the thread when dropped.
pub struct StorageWriter {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    commits: Arc<AtomicU64>,
    metrics: Arc<Mutex<HubMetrics>>,
}

impl StorageWriter {
    /// Starts the writer thread over `engine`.
    pub fn start(engine: Arc<dyn Engine>) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
        let commits = Arc::new(AtomicU64::new(0));
        let metrics = Arc::new(Mutex::new(HubMetrics::default()));
        let thread = {
            let commits = commits.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name("outpost-storage".into())
                .spawn(move || run(&*engine, queue, &commits, &metrics))?
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
        F: FnOnce(&mut dyn Tables) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        let answered = self.submit(job).await?;
        answered.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Queues `job` (waiting for room) and returns where its answer will arrive.
    async fn submit<T, E, F>(&self, job: F) -> Result<oneshot::Receiver<Result<T, E>>, StorageError>
    where
        F: FnOnce(&mut dyn Tables) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |tables| {
            let result = tables.map(job);
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
    engine: &dyn Engine,
    mut queue: mpsc::Receiver<Job>,
    commits: &AtomicU64,
    metrics: &Mutex<HubMetrics>,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut batch = VecDeque::from([first]);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push_back(job),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let (answers, committed) = commit_group(engine, batch);
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
                // A lost database stays recognisable (503, retry) through the group's failure.
                let unavailable = matches!(error, StorageError::Unavailable(_));
                for answer in answers {
                    answer(Err(if unavailable {
                        StorageError::Unavailable(text.clone())
                    } else {
                        StorageError::CommitFailed(text.clone())
                    }));
                }
            }
        }
    }
}

/// Runs `batch` as one group of the engine, each job in its own savepoint, and commits it. Jobs the group did
/// not reach (it failed first) are answered with its failure.
fn commit_group(
    engine: &dyn Engine,
    mut batch: VecDeque<Job>,
) -> (Vec<Answer>, Result<(), StorageError>) {
    let mut answers = Vec::with_capacity(batch.len());
    let committed = engine.write_group(&mut |group: &mut dyn Group| {
        while let Some(job) = batch.pop_front() {
            let mut job = Some(job);
            let ran = group.run(&mut |tables| {
                let Some(job) = job.take() else { return false };
                let (ok, answer) = job(Some(tables));
                answers.push(answer);
                ok
            });
            if let Some(job) = job.take() {
                // The savepoint could not begin: the job never ran.
                answers.push(job(None).1);
            }
            ran?;
        }
        Ok(())
    });
    answers.extend(batch.into_iter().map(|job| job(None).1));
    (answers, committed)
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Waker};

    use serde_json::json;

    use super::*;
    use crate::eventhub::StreamSettings;
    use crate::registry::{DeviceSpec, Precondition};
    use crate::storage::sqlite::SqliteEngine;
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

    fn names(storage: &Storage) -> Vec<String> {
        storage
            .read_blocking(|tables| {
                let mut names = Vec::new();
                for i in 0..JOBS {
                    let name = format!("job{i:02}");
                    if tables.setting(&name)?.is_some() {
                        names.push(name);
                    }
                }
                Ok::<_, StorageError>(names)
            })
            .unwrap()
    }

    #[tokio::test]
    async fn jobs_waiting_for_a_commit_share_the_next_one_and_a_failing_job_rolls_back_alone() {
        let engine = Arc::new(SqliteEngine::in_memory().unwrap());
        let storage = Storage::start(engine.clone()).unwrap();
        // Holding the write connection stands for a commit in progress: the jobs queue behind it.
        let commit_in_progress = engine.lock_writer();
        let futures: Vec<Pending<Result<(), StorageError>>> = (0..JOBS)
            .map(|i| {
                let storage = storage.clone();
                Box::pin(async move {
                    storage
                        .write(move |tables| {
                            let name = format!("job{i:02}");
                            tables.put_setting(&name, b"x", false)?;
                            if i == FAILING {
                                return Err(StorageError::Engine("refused".into()));
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
        let stored = names(&storage);
        assert_eq!(stored.len(), JOBS - 1, "every job but the failing one");
        assert!(!stored.contains(&format!("job{FAILING:02}")));
        let commits = storage.writer().commits();
        assert!(commits <= 2, "{commits} commits for {JOBS} jobs");
    }

    #[tokio::test]
    // Holding the write connection across the read is the point: the read must not need it.
    #[allow(clippy::await_holding_lock)]
    async fn a_read_does_not_wait_for_a_commit_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(SqliteEngine::open(&dir.path().join("hub.sqlite")).unwrap());
        let storage = Storage::start(engine.clone()).unwrap();
        storage
            .write(|tables| tables.put_setting("name", b"before", false))
            .await
            .unwrap();
        let commit_in_progress = engine.lock_writer();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            storage.read(|tables| tables.setting("name")),
        )
        .await
        .expect("the read waited for the writer")
        .unwrap();
        drop(commit_in_progress);
        assert_eq!(read.as_deref(), Some(&b"before"[..]));
    }

    #[tokio::test]
    async fn concurrent_twin_writes_are_answered_after_fewer_commits_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(SqliteEngine::open(&dir.path().join("hub.sqlite")).unwrap());
        let hub = Arc::new(
            Hub::with_engine(engine.clone(), "hub.example", &StreamSettings::default()).unwrap(),
        );
        hub.registry()
            .put_device(
                &DeviceSpec {
                    device_id: "sensor".into(),
                    ..DeviceSpec::default()
                },
                &Precondition::CreateOnly,
            )
            .await
            .unwrap();
        let commits_before = hub.storage_commits();
        let commit_in_progress = engine.lock_writer();
        let mut futures: Vec<Pending<Result<u64, HubError>>> = (0..WRITES)
            .map(|i| {
                let hub = hub.clone();
                Box::pin(async move {
                    let write = TwinWrite {
                        desired: Some(json!({ format!("key{i}"): i })),
                        ..TwinWrite::default()
                    };
                    let view = hub
                        .twins()
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
                hub.twins()
                    .write_twin(
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
        drop(engine);
        let hub = Hub::open(dir.path(), "hub.example").unwrap();
        let desired = hub
            .twins()
            .twin("sensor", None)
            .await
            .unwrap()
            .twin
            .desired()
            .clone();
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
