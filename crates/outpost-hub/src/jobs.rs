//! Jobs: a twin update or a direct method applied to the devices a query condition selects, at a scheduled
//! time and within a maximum execution time (IoT Hub's `/jobs/v2`, `azure-iot-hub`'s `IoTHubJobManager`).
//!
//! [`Jobs`] is the service the REST head calls: it checks a job's request, stores it, cancels and lists jobs.
//! Running them is the runner's: [`runner::JobRunner`] is the state (which jobs this replica runs, which
//! devices are left, what is in flight) with no I/O and no clock; [`driver`] is the one task per hub that
//! owns it, claims due jobs, performs its device operations with bounded concurrency through the twins and
//! messaging services, and stores each device's outcome as it comes, so that a restarted hub resumes a job
//! with the devices not done. With PostgreSQL, replicas share the jobs: a lease column says which replica
//! runs a job, renewed while it runs and taken over by another replica once it lapses.

pub mod driver;
pub mod model;
pub mod runner;

use std::sync::Arc;

use chrono::Utc;
use serde_json::Value;
use tokio::sync::Notify;

use crate::error::HubError;
use crate::writer::Storage;
use model::{DeviceJobStatistics, JobDevice, JobRecord, JobStatus, JobType, StoredJob};

/// The most jobs that may be active (queued, scheduled or running) at once; past it a new job is refused with
/// 429, as IoT Hub refuses jobs past its tier's concurrency.
pub const MAX_ACTIVE_JOBS: usize = 100;

/// The jobs service: creates, reads, cancels and lists jobs; the runner ([`driver`]) runs them.
pub struct Jobs {
    storage: Storage,
    /// Who holds a job's lease when this hub's runner runs it.
    owner: String,
    /// Wakes this hub's runner when a job is created or cancelled here, rather than at its next poll.
    wake: Arc<Notify>,
}

impl Jobs {
    /// The jobs over `storage`, run under a lease owner id of this hub's own.
    pub(crate) fn new(storage: Storage) -> Self {
        Self {
            storage,
            owner: uuid::Uuid::new_v4().to_string(),
            wake: Arc::new(Notify::new()),
        }
    }

    /// The id this hub's runner holds job leases under.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The storage the jobs are kept in.
    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// What wakes this hub's runner.
    pub(crate) fn wake(&self) -> &Arc<Notify> {
        &self.wake
    }

    /// Creates job `id` from a `JobRequest` body: refused (400, nothing stored) when the hub could not run it,
    /// 409 when the id is taken, 429 past [`MAX_ACTIVE_JOBS`].
    pub async fn create(&self, id: &str, body: &Value) -> Result<StoredJob, HubError> {
        let now = Utc::now();
        let record = JobRecord::from_request(id, body, now)?;
        let status = if record.start_time <= now {
            JobStatus::Queued
        } else {
            JobStatus::Scheduled
        };
        let job = StoredJob {
            record,
            status,
            end_time: None,
            statistics: DeviceJobStatistics::default(),
            failure_reason: None,
        };
        let stored = job.clone();
        self.storage
            .write(move |tables| {
                if tables.active_jobs()?.len() >= MAX_ACTIVE_JOBS {
                    return Err(HubError::Throttled(format!(
                        "at most {MAX_ACTIVE_JOBS} jobs may be active at once"
                    )));
                }
                if !tables.create_job(&stored)? {
                    return Err(HubError::JobAlreadyExists(stored.record.job_id.clone()));
                }
                Ok(())
            })
            .await?;
        self.wake.notify_one();
        Ok(job)
    }

    /// One job.
    pub async fn job(&self, id: &str) -> Result<StoredJob, HubError> {
        let key = id.to_owned();
        self.storage
            .read(move |tables| tables.job(&key))
            .await?
            .ok_or_else(|| HubError::JobNotFound(id.to_owned()))
    }

    /// The devices of a job with their outcomes.
    pub async fn devices(&self, id: &str) -> Result<Vec<JobDevice>, HubError> {
        let key = id.to_owned();
        Ok(self
            .storage
            .read(move |tables| tables.job_devices(&key))
            .await?)
    }

    /// Cancels a job that has not ended (a job that has is answered as it is). The runner that runs it stops
    /// starting its devices when it next looks (at once on this hub, within a poll on another replica).
    pub async fn cancel(&self, id: &str) -> Result<StoredJob, HubError> {
        let key = id.to_owned();
        let end_ms = Utc::now().timestamp_millis();
        let job = self
            .storage
            .write(move |tables| {
                tables.set_job_status(&key, JobStatus::Cancelled, Some(end_ms), None)?;
                tables.job(&key)
            })
            .await?
            .ok_or_else(|| HubError::JobNotFound(id.to_owned()))?;
        self.wake.notify_one();
        Ok(job)
    }

    /// The jobs of a type and status (each `None`: any), oldest first.
    pub async fn list(
        &self,
        job_type: Option<JobType>,
        status: Option<JobStatus>,
    ) -> Result<Vec<StoredJob>, HubError> {
        let jobs = self.storage.read(|tables| tables.jobs()).await?;
        Ok(jobs
            .into_iter()
            .filter(|job| job_type.is_none_or(|t| job.record.job_type == t))
            .filter(|job| status.is_none_or(|s| job.status == s))
            .collect())
    }
}
