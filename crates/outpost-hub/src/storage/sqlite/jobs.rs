//! The jobs' tables in SQLite (see [`crate::storage::jobs`]).

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row};

use super::{limit, to_text, SqliteTables};
use crate::jobs::model::{
    DeviceJobStatistics, DeviceOutcome, JobDevice, JobRecord, JobStatus, StoredJob,
};
use crate::storage::jobs::JobTables;
use crate::store::StorageError;

/// A job's row: record, status, end, failure reason, counts.
type JobRow = (String, i64, Option<i64>, Option<String>, String);

/// The columns [`stored_job`] reads, in its order.
const JOB_COLUMNS: &str = "record, status, end_ms, failure_reason, statistics";

fn stored_job(row: &Row<'_>) -> rusqlite::Result<JobRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn parse_job(
    (record, status, end_ms, failure_reason, statistics): JobRow,
) -> Result<StoredJob, StorageError> {
    Ok(StoredJob {
        record: serde_json::from_str::<JobRecord>(&record)?,
        status: JobStatus::from_code(status),
        end_time: end_ms.and_then(DateTime::<Utc>::from_timestamp_millis),
        statistics: serde_json::from_str::<DeviceJobStatistics>(&statistics)?,
        failure_reason,
    })
}

impl SqliteTables<'_> {
    fn job_rows(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<StoredJob>, StorageError> {
        let mut statement = self.conn.prepare_cached(sql)?;
        let rows = statement.query_map(args, stored_job)?;
        rows.map(|row| parse_job(row?)).collect()
    }
}

impl JobTables for SqliteTables<'_> {
    fn job(&mut self, id: &str) -> Result<Option<StoredJob>, StorageError> {
        self.conn
            .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?1"))?
            .query_row([id], stored_job)
            .optional()?
            .map(parse_job)
            .transpose()
    }

    fn jobs(&mut self) -> Result<Vec<StoredJob>, StorageError> {
        self.job_rows(
            &format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_ms, job_id"),
            [],
        )
    }

    fn active_jobs(&mut self) -> Result<Vec<StoredJob>, StorageError> {
        self.job_rows(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE status < {} ORDER BY created_ms, job_id",
                JobStatus::FIRST_FINAL
            ),
            [],
        )
    }

    fn create_job(&mut self, job: &StoredJob) -> Result<bool, StorageError> {
        let created = self.execute(
            "INSERT INTO jobs (job_id, status, created_ms, end_ms, failure_reason, statistics, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (job_id) DO NOTHING",
            params![
                job.record.job_id,
                job.status.code(),
                job.record.created_time.timestamp_millis(),
                job.end_time.map(|t| t.timestamp_millis()),
                job.failure_reason,
                to_text(&job.statistics)?,
                to_text(&job.record)?,
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
            "UPDATE jobs SET status = ?2, end_ms = ?3, failure_reason = ?4
             WHERE job_id = ?1 AND status < ?5",
            params![
                id,
                status.code(),
                end_ms,
                failure_reason,
                JobStatus::FIRST_FINAL
            ],
        )?;
        Ok(changed > 0)
    }

    fn set_job_statistics(
        &mut self,
        id: &str,
        statistics: &DeviceJobStatistics,
    ) -> Result<(), StorageError> {
        self.execute(
            "UPDATE jobs SET statistics = ?2 WHERE job_id = ?1",
            params![id, to_text(statistics)?],
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
            "UPDATE jobs SET lease_owner = ?2, lease_until_ms = ?4
             WHERE job_id = ?1 AND status < ?5
               AND (lease_owner IS NULL OR lease_owner = ?2 OR lease_until_ms <= ?3)",
            params![id, owner, now_ms, until_ms, JobStatus::FIRST_FINAL],
        )?;
        Ok(claimed > 0)
    }

    fn release_job(&mut self, id: &str, owner: &str) -> Result<(), StorageError> {
        self.execute(
            "UPDATE jobs SET lease_owner = NULL, lease_until_ms = 0
             WHERE job_id = ?1 AND lease_owner = ?2",
            params![id, owner],
        )?;
        Ok(())
    }

    fn add_job_devices(&mut self, id: &str, devices: &[String]) -> Result<(), StorageError> {
        for device in devices {
            self.execute(
                "INSERT INTO job_devices (job_id, device_id, outcome) VALUES (?1, ?2, ?3)
                 ON CONFLICT (job_id, device_id) DO NOTHING",
                params![id, device, DeviceOutcome::Pending.code()],
            )?;
        }
        Ok(())
    }

    fn job_devices(&mut self, id: &str) -> Result<Vec<JobDevice>, StorageError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT device_id, outcome, result FROM job_devices WHERE job_id = ?1 ORDER BY device_id",
        )?;
        let rows = statement.query_map([id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, Option<String>>(2)?,
            ))
        })?;
        rows.map(|row| {
            let (device_id, outcome, result) = row?;
            Ok(JobDevice {
                device_id,
                outcome: DeviceOutcome::from_code(outcome),
                result: result.map(|r| serde_json::from_str(&r)).transpose()?,
            })
        })
        .collect()
    }

    fn set_job_device(&mut self, id: &str, device: &JobDevice) -> Result<(), StorageError> {
        let result = device.result.as_ref().map(to_text).transpose()?;
        self.execute(
            "INSERT INTO job_devices (job_id, device_id, outcome, result) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (job_id, device_id) DO UPDATE SET outcome = excluded.outcome,
                 result = excluded.result",
            params![id, device.device_id, device.outcome.code(), result],
        )?;
        Ok(())
    }

    fn prune_jobs(&mut self, before_ms: i64, batch: usize) -> Result<usize, StorageError> {
        self.execute(
            "DELETE FROM jobs WHERE job_id IN (
                 SELECT job_id FROM jobs WHERE status >= ?1 AND end_ms < ?2 LIMIT ?3)",
            params![JobStatus::FIRST_FINAL, before_ms, limit(batch)],
        )
    }
}
