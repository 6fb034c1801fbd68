//! The jobs' tables in PostgreSQL (see [`crate::storage::jobs`]).
//!
//! Several replicas share them: a job's lease ([`JobTables::claim_job`]) is one conditional `UPDATE`, whose
//! row lock makes a second replica's concurrent claim wait for the first one's `COMMIT` and then find the lease
//! taken (`READ COMMITTED` checks the condition again on the row as committed).

use chrono::{DateTime, Utc};
use postgres::Row;

use super::{big, parse, PgTables};
use crate::jobs::model::{
    DeviceJobStatistics, DeviceOutcome, JobDevice, JobRecord, JobStatus, StoredJob,
};
use crate::storage::jobs::JobTables;
use crate::store::StorageError;

fn text<T: serde::Serialize>(value: &T) -> Result<String, StorageError> {
    Ok(serde_json::to_string(value)?)
}

/// Reads `record, status, end_ms, failure_reason, statistics`.
fn stored_job(row: &Row) -> Result<StoredJob, StorageError> {
    Ok(StoredJob {
        record: parse::<JobRecord>(row.get::<_, &str>(0))?,
        status: JobStatus::from_code(row.get(1)),
        end_time: row
            .get::<_, Option<i64>>(2)
            .and_then(DateTime::<Utc>::from_timestamp_millis),
        failure_reason: row.get(3),
        statistics: parse::<DeviceJobStatistics>(row.get::<_, &str>(4))?,
    })
}

impl JobTables for PgTables<'_, '_> {
    fn job(&mut self, id: &str) -> Result<Option<StoredJob>, StorageError> {
        self.query_opt(
            "SELECT record, status, end_ms, failure_reason, statistics FROM jobs WHERE job_id = $1",
            &[&id],
        )?
        .as_ref()
        .map(stored_job)
        .transpose()
    }

    fn jobs(&mut self) -> Result<Vec<StoredJob>, StorageError> {
        self.query(
            "SELECT record, status, end_ms, failure_reason, statistics FROM jobs
             ORDER BY created_ms, job_id",
            &[],
        )?
        .iter()
        .map(stored_job)
        .collect()
    }

    fn active_jobs(&mut self) -> Result<Vec<StoredJob>, StorageError> {
        // 3: JobStatus::FIRST_FINAL.
        self.query(
            "SELECT record, status, end_ms, failure_reason, statistics FROM jobs WHERE status < 3
             ORDER BY created_ms, job_id",
            &[],
        )?
        .iter()
        .map(stored_job)
        .collect()
    }

    fn create_job(&mut self, job: &StoredJob) -> Result<bool, StorageError> {
        let created = self.execute(
            "INSERT INTO jobs (job_id, status, created_ms, end_ms, failure_reason, statistics, record)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (job_id) DO NOTHING",
            &[
                &job.record.job_id,
                &job.status.code(),
                &job.record.created_time.timestamp_millis(),
                &job.end_time.map(|t| t.timestamp_millis()),
                &job.failure_reason,
                &text(&job.statistics)?,
                &text(&job.record)?,
            ],
        )?;
        Ok(created > 0)
    }

    fn set_job_status(
        &mut self,
        id: &str,
        status: JobStatus,
        end_ms: Option<i64>,
        failure_reason: Option<&str>,
    ) -> Result<bool, StorageError> {
        let changed = self.execute(
            "UPDATE jobs SET status = $2, end_ms = $3, failure_reason = $4
             WHERE job_id = $1 AND status < 3",
            &[&id, &status.code(), &end_ms, &failure_reason],
        )?;
        Ok(changed > 0)
    }

    fn set_job_statistics(
        &mut self,
        id: &str,
        statistics: &DeviceJobStatistics,
    ) -> Result<(), StorageError> {
        self.execute(
            "UPDATE jobs SET statistics = $2 WHERE job_id = $1",
            &[&id, &text(statistics)?],
        )?;
        Ok(())
    }

    fn claim_job(
        &mut self,
        id: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StorageError> {
        let claimed = self.execute(
            "UPDATE jobs SET lease_owner = $2, lease_until_ms = $4
             WHERE job_id = $1 AND status < 3
               AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until_ms <= $3)",
            &[&id, &owner, &now_ms, &until_ms],
        )?;
        Ok(claimed > 0)
    }

    fn release_job(&mut self, id: &str, owner: &str) -> Result<(), StorageError> {
        self.execute(
            "UPDATE jobs SET lease_owner = NULL, lease_until_ms = 0
             WHERE job_id = $1 AND lease_owner = $2",
            &[&id, &owner],
        )?;
        Ok(())
    }

    fn add_job_devices(&mut self, id: &str, devices: &[String]) -> Result<(), StorageError> {
        // One statement for the whole selection, however large.
        self.execute(
            "INSERT INTO job_devices (job_id, device_id, outcome)
             SELECT $1, device_id, 0 FROM unnest($2::text[]) AS selected (device_id)
             ON CONFLICT (job_id, device_id) DO NOTHING",
            &[&id, &devices],
        )?;
        Ok(())
    }

    fn job_devices(&mut self, id: &str) -> Result<Vec<JobDevice>, StorageError> {
        self.query(
            "SELECT device_id, outcome, result FROM job_devices WHERE job_id = $1 ORDER BY device_id",
            &[&id],
        )?
        .iter()
        .map(|row| {
            Ok(JobDevice {
                device_id: row.get(0),
                outcome: DeviceOutcome::from_code(row.get(1)),
                result: row.get::<_, Option<&str>>(2).map(parse).transpose()?,
            })
        })
        .collect()
    }

    fn set_job_device(&mut self, id: &str, device: &JobDevice) -> Result<(), StorageError> {
        let result = device.result.as_ref().map(text).transpose()?;
        self.execute(
            "INSERT INTO job_devices (job_id, device_id, outcome, result) VALUES ($1, $2, $3, $4)
             ON CONFLICT (job_id, device_id) DO UPDATE SET outcome = excluded.outcome,
                 result = excluded.result",
            &[&id, &device.device_id, &device.outcome.code(), &result],
        )?;
        Ok(())
    }

    fn prune_jobs(&mut self, before_ms: i64, batch: usize) -> Result<usize, StorageError> {
        let pruned = self.execute(
            "DELETE FROM jobs WHERE job_id IN (
                 SELECT job_id FROM jobs WHERE status >= 3 AND end_ms < $1 LIMIT $2)",
            &[&before_ms, &big(batch)],
        )?;
        Ok(usize::try_from(pruned).unwrap_or(usize::MAX))
    }
}
