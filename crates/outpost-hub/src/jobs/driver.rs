//! The task that runs jobs: it owns the [`JobRunner`], feeds it what storage and the device operations say,
//! and performs its actions. One per hub, joined by [`crate::RunningHub`].
//!
//! Delivery: each device's outcome is stored before the runner hears of it, so a hub that stops (or dies)
//! resumes a job with the devices not done; the operations in flight when it stopped run again (at least
//! once for those devices: a twin merge applied twice gives the same twin, a method may be invoked twice).
//!
//! Replicas: a job runs on the replica that holds its lease (`jobs.lease_owner`, until `lease_until_ms`):
//! taken when the job is due, renewed at every poll, given up when the job ends or the hub stops. A replica
//! that dies leaves its lease to lapse, and the next replica that polls takes the job over and resumes it.
//! A replica stalled past its lease (a database outage) may find its job taken over: the same device can
//! then run twice, which is the at-least-once already promised.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::model::{
    DeviceJobStatistics, DeviceOperation, DeviceOutcome, JobDevice, JobStatus, StoredJob,
};
use super::runner::{Action, ActiveJob, Event, JobRunner};
use crate::error::HubError;
use crate::registry::Precondition;
use crate::Hub;

/// How the runner runs.
#[derive(Debug, Clone, Copy)]
pub struct JobSettings {
    /// Device operations in flight at most, across all jobs (16).
    pub concurrency: usize,
    /// How often storage is polled for due and cancelled jobs (1 s).
    pub poll: Duration,
    /// How long a lease lasts unless renewed (30 s): how long a dead replica's job waits to be taken over.
    pub lease: Duration,
    /// How long an ended job is kept (30 days, as IoT Hub keeps them).
    pub retention: Duration,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            concurrency: 16,
            poll: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            retention: Duration::from_hours(30 * 24),
        }
    }
}

/// Ended jobs deleted by one statement.
const PRUNE_BATCH: usize = 256;
/// Polls between two prunings of ended jobs.
const PRUNE_EVERY: u32 = 60;

/// Runs the hub's jobs until `shutdown`; then stops the operations in flight and gives up its leases.
pub async fn run(hub: Arc<Hub>, settings: JobSettings, mut shutdown: watch::Receiver<bool>) {
    let mut driver = Driver {
        runner: JobRunner::new(settings.concurrency),
        operations: HashMap::new(),
        in_flight: JoinSet::new(),
        hub,
        settings,
    };
    let wake = driver.hub.jobs().wake().clone();
    let mut polls = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(joined) = driver.in_flight.join_next() => {
                if let Ok(event) = joined {
                    driver.feed(event).await;
                }
            }
            () = tokio::time::sleep(settings.poll) => {
                driver.poll().await;
                polls += 1;
                if polls.is_multiple_of(PRUNE_EVERY) {
                    driver.prune().await;
                }
            }
            () = wake.notified() => driver.poll().await,
        }
    }
    driver.stop().await;
}

/// The runner with what performing its actions needs.
struct Driver {
    hub: Arc<Hub>,
    settings: JobSettings,
    runner: JobRunner,
    /// What each held job does to a device.
    operations: HashMap<String, Arc<DeviceOperation>>,
    /// The device operations in flight; each ends with its [`Event::DeviceDone`].
    in_flight: JoinSet<Event>,
}

fn millis(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

impl Driver {
    fn lease_until(&self, now: DateTime<Utc>) -> i64 {
        let lease = i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX);
        millis(now).saturating_add(lease)
    }

    /// Tells the runner what storage holds, then lets time pass.
    async fn poll(&mut self) {
        let active = match self.hub.jobs().storage().read(|t| t.active_jobs()).await {
            Ok(jobs) => jobs,
            Err(error) => {
                tracing::warn!(%error, "cannot read the jobs");
                return;
            }
        };
        let active = active
            .into_iter()
            .map(|job| ActiveJob {
                job_id: job.record.job_id,
                start_time: job.record.start_time,
            })
            .collect();
        self.feed(Event::Stored(active)).await;
        self.feed(Event::Tick).await;
        let held = self.runner.held();
        self.operations.retain(|id, _| held.contains(id));
    }

    /// Feeds `event` and every event its actions answer with.
    async fn feed(&mut self, event: Event) {
        let mut events = vec![event];
        while let Some(event) = events.pop() {
            for action in self.runner.handle(event, Utc::now()) {
                if let Some(answer) = self.perform(action).await {
                    events.push(answer);
                }
            }
        }
    }

    async fn perform(&mut self, action: Action) -> Option<Event> {
        let storage = self.hub.jobs().storage().clone();
        let owner = self.hub.jobs().owner().to_owned();
        match action {
            Action::Claim { job_id } => Some(self.claim(job_id).await),
            Action::Run { job_id, device_id } => {
                let operation = self.operations.get(&job_id).cloned();
                let hub = self.hub.clone();
                self.in_flight
                    .spawn(run_device(hub, job_id, device_id, operation));
                None
            }
            Action::Renew { job_ids } => {
                let now = Utc::now();
                let until = self.lease_until(now);
                let renewed = storage
                    .write(move |t| {
                        for id in &job_ids {
                            if !t.claim_job(id, &owner, millis(now), until)? {
                                tracing::warn!(job = %id, "the lease of a running job was taken over");
                            }
                        }
                        Ok::<_, HubError>(())
                    })
                    .await;
                if let Err(error) = renewed {
                    tracing::warn!(%error, "cannot renew the leases of the running jobs");
                }
                None
            }
            Action::Save { job_id, statistics } => {
                let saved = storage
                    .write(move |t| t.set_job_statistics(&job_id, &statistics))
                    .await;
                if let Err(error) = saved {
                    tracing::warn!(%error, "cannot save a job's progress");
                }
                None
            }
            Action::Finish {
                job_id,
                status,
                statistics,
            } => {
                self.operations.remove(&job_id);
                let end = millis(Utc::now());
                let finished = storage
                    .write(move |t| {
                        t.set_job_statistics(&job_id, &statistics)?;
                        t.set_job_status(&job_id, status, Some(end), None)?;
                        t.release_job(&job_id, &owner)
                    })
                    .await;
                if let Err(error) = finished {
                    tracing::warn!(%error, "cannot store a job's end");
                }
                None
            }
        }
    }

    /// Takes a due job's lease and selects (or, for a job already running, loads) its devices.
    async fn claim(&mut self, job_id: String) -> Event {
        match self.try_claim(&job_id).await {
            Ok(Some(claimed)) => claimed,
            Ok(None) => Event::NotClaimed { job_id },
            Err(error) => {
                tracing::warn!(%error, job = %job_id, "cannot start a job");
                Event::NotClaimed { job_id }
            }
        }
    }

    async fn try_claim(&mut self, job_id: &str) -> Result<Option<Event>, HubError> {
        let jobs = self.hub.jobs();
        let storage = jobs.storage().clone();
        let (id, owner) = (job_id.to_owned(), jobs.owner().to_owned());
        let now = Utc::now();
        let until = self.lease_until(now);
        let job = storage
            .write(move |t| {
                if !t.claim_job(&id, &owner, millis(now), until)? {
                    return Ok::<_, HubError>(None);
                }
                Ok(t.job(&id)?)
            })
            .await?;
        let Some(job) = job else { return Ok(None) };
        let operation = match job.record.operation() {
            Ok(operation) => operation,
            Err(error) => {
                self.fail(job_id, &error.to_string()).await?;
                return Ok(None);
            }
        };
        let (pending, statistics) = if job.status == JobStatus::Running {
            resumed(&storage, job_id).await?
        } else {
            match self.select(&job).await {
                Ok(Some(selected)) => selected,
                Ok(None) => return Ok(None),
                Err(error) => {
                    self.fail(job_id, &error.to_string()).await?;
                    return Ok(None);
                }
            }
        };
        self.operations
            .insert(job_id.to_owned(), Arc::new(operation));
        Ok(Some(Event::Claimed {
            job_id: job_id.to_owned(),
            deadline: job.record.deadline(),
            pending,
            statistics,
        }))
    }

    /// Selects a starting job's devices, stores them and marks it running; `None` when it ended meanwhile.
    async fn select(
        &self,
        job: &StoredJob,
    ) -> Result<Option<(Vec<String>, DeviceJobStatistics)>, HubError> {
        let condition = job.record.condition()?;
        // Read a page at a time, through the index where the condition allows; only the ids are kept.
        let mut selected: Vec<String> = Vec::new();
        self.hub
            .twins()
            .each_document(
                outpost_core::query::Collection::Devices,
                &condition.narrowing(),
                |twin| {
                    if condition.matches(twin) {
                        if let Some(id) = twin.get("deviceId").and_then(Value::as_str) {
                            selected.push(id.to_owned());
                        }
                    }
                    true
                },
            )
            .await?;
        let statistics = DeviceJobStatistics {
            device_count: selected.len() as u64,
            pending_count: selected.len() as u64,
            ..DeviceJobStatistics::default()
        };
        let (id, devices) = (job.record.job_id.clone(), selected.clone());
        let running = self
            .hub
            .jobs()
            .storage()
            .write(move |t| {
                if !t.set_job_status(&id, JobStatus::Running, None, None)? {
                    return Ok::<_, HubError>(false);
                }
                t.add_job_devices(&id, &devices)?;
                t.set_job_statistics(&id, &statistics)?;
                Ok(true)
            })
            .await?;
        Ok(running.then_some((selected, statistics)))
    }

    /// Ends a job that cannot run as failed, with the reason.
    async fn fail(&self, job_id: &str, reason: &str) -> Result<(), HubError> {
        tracing::warn!(job = %job_id, %reason, "a job failed");
        let (id, reason, owner) = (
            job_id.to_owned(),
            reason.to_owned(),
            self.hub.jobs().owner().to_owned(),
        );
        let end = millis(Utc::now());
        self.hub
            .jobs()
            .storage()
            .write(move |t| {
                t.set_job_status(&id, JobStatus::Failed, Some(end), Some(&reason))?;
                t.release_job(&id, &owner)
            })
            .await?;
        Ok(())
    }

    /// Deletes the jobs that ended longer ago than the retention.
    async fn prune(&self) {
        let retention =
            chrono::Duration::from_std(self.settings.retention).unwrap_or(chrono::Duration::MAX);
        let before = millis(Utc::now() - retention);
        let pruned = self
            .hub
            .jobs()
            .storage()
            .write(move |t| t.prune_jobs(before, PRUNE_BATCH))
            .await;
        if let Err(error) = pruned {
            tracing::warn!(%error, "cannot prune the ended jobs");
        }
    }

    /// Stops the operations in flight (their devices run again where the jobs resume) and gives up the leases.
    async fn stop(mut self) {
        self.in_flight.shutdown().await;
        let held = self.runner.held();
        if held.is_empty() {
            return;
        }
        let owner = self.hub.jobs().owner().to_owned();
        let released = self
            .hub
            .jobs()
            .storage()
            .write(move |t| {
                for id in &held {
                    t.release_job(id, &owner)?;
                }
                Ok::<_, HubError>(())
            })
            .await;
        if let Err(error) = released {
            tracing::warn!(%error, "cannot give up the leases of the running jobs");
        }
    }
}

/// The devices of a running job not done yet, and its counts as its devices' rows say.
async fn resumed(
    storage: &crate::writer::Storage,
    job_id: &str,
) -> Result<(Vec<String>, DeviceJobStatistics), HubError> {
    let id = job_id.to_owned();
    let devices = storage.read(move |t| t.job_devices(&id)).await?;
    let count = |outcome| devices.iter().filter(|d| d.outcome == outcome).count() as u64;
    let statistics = DeviceJobStatistics {
        device_count: devices.len() as u64,
        succeeded_count: count(DeviceOutcome::Succeeded),
        failed_count: count(DeviceOutcome::Failed),
        running_count: 0,
        pending_count: count(DeviceOutcome::Pending),
    };
    let pending = devices
        .into_iter()
        .filter(|d| d.outcome == DeviceOutcome::Pending)
        .map(|d| d.device_id)
        .collect();
    Ok((pending, statistics))
}

/// Runs a job's operation on one device and stores its outcome.
async fn run_device(
    hub: Arc<Hub>,
    job_id: String,
    device_id: String,
    operation: Option<Arc<DeviceOperation>>,
) -> Event {
    let result = match operation.as_deref() {
        Some(DeviceOperation::Twin(write)) => hub
            .twins()
            .write_twin(&device_id, None, write, &Precondition::Any)
            .await
            .map(|_| None),
        Some(DeviceOperation::Method(call)) => hub
            .messaging()
            .invoke_method(&device_id, None, call.clone())
            .await
            .map(|(status, payload)| Some(json!({"status": status, "payload": payload}))),
        None => Err(HubError::ArgumentInvalid("the job is not held here".into())),
    };
    let device = match result {
        Ok(result) => JobDevice {
            device_id: device_id.clone(),
            outcome: DeviceOutcome::Succeeded,
            result,
        },
        Err(error) => JobDevice {
            device_id: device_id.clone(),
            outcome: DeviceOutcome::Failed,
            result: Some(json!({"errorCode": error.code().0, "message": error.to_string()})),
        },
    };
    let succeeded = device.outcome == DeviceOutcome::Succeeded;
    let id = job_id.clone();
    if let Err(error) = hub
        .jobs()
        .storage()
        .write(move |t| t.set_job_device(&id, &device))
        .await
    {
        // Not stored: the device runs again if the job resumes elsewhere.
        tracing::warn!(%error, job = %job_id, "cannot store a device's outcome");
    }
    Event::DeviceDone {
        job_id,
        device_id,
        succeeded,
    }
}
