//! The jobs' tables ([`crate::jobs`]): one row per job (its record, status, counts and lease) and one per
//! device a job selected (its outcome), so that a runner that starts again resumes without the devices done.
//!
//! A trait of its own, which [`Tables`](super::Tables) requires, so that each engine keeps it in a file of its
//! own (`sqlite/jobs.rs`, `postgres/jobs.rs`).

use crate::jobs::model::{DeviceJobStatistics, JobDevice, JobStatus, StoredJob};
use crate::store::StorageError;

/// One transaction's view of the jobs' tables.
pub trait JobTables {
    /// One job.
    fn job(&mut self, id: &str) -> Result<Option<StoredJob>, StorageError>;
    /// Every job, oldest first.
    fn jobs(&mut self) -> Result<Vec<StoredJob>, StorageError>;
    /// The jobs that have not ended, oldest first.
    fn active_jobs(&mut self) -> Result<Vec<StoredJob>, StorageError>;
    /// Stores a new job; `false` (and nothing stored) when a job with its id exists.
    fn create_job(&mut self, job: &StoredJob) -> Result<bool, StorageError>;
    /// Moves a job that has not ended to `status`, with its end time and failure reason; `false` when the job
    /// is missing or has ended already (a final status never changes).
    fn set_job_status(
        &mut self,
        id: &str,
        status: JobStatus,
        end_ms: Option<i64>,
        failure_reason: Option<&str>,
    ) -> Result<bool, StorageError>;
    /// Stores a job's counts.
    fn set_job_statistics(
        &mut self,
        id: &str,
        statistics: &DeviceJobStatistics,
    ) -> Result<(), StorageError>;
    /// Takes or extends `owner`'s lease of a job that has not ended, until `until_ms`, unless another owner's
    /// lease lasts past `now_ms`; whether `owner` holds it now.
    fn claim_job(
        &mut self,
        id: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StorageError>;
    /// Gives up `owner`'s lease of a job (another runner may claim it at once).
    fn release_job(&mut self, id: &str, owner: &str) -> Result<(), StorageError>;
    /// Adds the devices a job selected, pending (a device already added is left as it is).
    fn add_job_devices(&mut self, id: &str, devices: &[String]) -> Result<(), StorageError>;
    /// The devices of a job, ordered by id.
    fn job_devices(&mut self, id: &str) -> Result<Vec<JobDevice>, StorageError>;
    /// Stores how one device of a job stands.
    fn set_job_device(&mut self, id: &str, device: &JobDevice) -> Result<(), StorageError>;
    /// Deletes up to `batch` jobs that ended before `before_ms`, with their devices; how many.
    fn prune_jobs(&mut self, before_ms: i64, batch: usize) -> Result<usize, StorageError>;
}
