//! What a job is: its request as `azure-iot-hub`'s `JobRequest` sends it, what the hub stores of it, and its
//! `JobResponse` JSON.

use chrono::{DateTime, SecondsFormat, Utc};
use outpost_core::query::QueryCondition;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::HubError;
use crate::messaging::MethodCall;
use crate::twins::TwinWrite;

/// The longest job id IoT Hub accepts.
pub const MAX_JOB_ID_LEN: usize = 64;
/// The default of `maxExecutionTimeInSeconds`.
pub const DEFAULT_MAX_EXECUTION_SECS: u64 = 3600;
/// The longest `maxExecutionTimeInSeconds` accepted: IoT Hub keeps a job's history for 30 days.
pub const MAX_EXECUTION_SECS: u64 = 30 * 24 * 3600;

/// What a job does to each device it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobType {
    /// Applies a twin patch (tags and desired properties).
    #[serde(rename = "scheduleUpdateTwin")]
    UpdateTwin,
    /// Invokes a direct method.
    #[serde(rename = "scheduleDeviceMethod")]
    DeviceMethod,
}

impl JobType {
    /// The name IoT Hub gives the type (`scheduleUpdateTwin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpdateTwin => "scheduleUpdateTwin",
            Self::DeviceMethod => "scheduleDeviceMethod",
        }
    }

    /// Reads a type's name; `None` for one the hub does not run.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "scheduleUpdateTwin" => Some(Self::UpdateTwin),
            "scheduleDeviceMethod" => Some(Self::DeviceMethod),
            _ => None,
        }
    }
}

/// Where a job is in its life. The first three are active; a final status never changes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum JobStatus {
    /// Created with a start time already due: waits for a replica's runner to pick it up.
    Queued,
    /// Created with a start time in the future.
    Scheduled,
    /// Its devices were selected and are being worked through.
    Running,
    /// Every selected device was done, or its maximum execution time passed (the rest counted as failed).
    Completed,
    /// The job itself could not run (its devices could not be selected).
    Failed,
    /// Cancelled by the service before it ended.
    Cancelled,
}

impl JobStatus {
    /// Every status, in the order of their stored codes.
    pub const ALL: [Self; 6] = [
        Self::Queued,
        Self::Scheduled,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The name IoT Hub gives the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Reads a status's name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The stored code: active statuses are below [`JobStatus::FIRST_FINAL`], so that storage can refuse to
    /// change a final status with one comparison.
    pub fn code(self) -> i64 {
        match self {
            Self::Queued => 0,
            Self::Scheduled => 1,
            Self::Running => 2,
            Self::Completed => 3,
            Self::Failed => 4,
            Self::Cancelled => 5,
        }
    }

    /// The status of a stored code (an unknown code reads as failed).
    pub fn from_code(code: i64) -> Self {
        Self::ALL
            .into_iter()
            .find(|s| s.code() == code)
            .unwrap_or(Self::Failed)
    }

    /// The code of the first final status.
    pub const FIRST_FINAL: i64 = 3;

    /// Whether the job may still change.
    pub fn is_active(self) -> bool {
        self.code() < Self::FIRST_FINAL
    }
}

/// How a job's devices stand (`deviceJobStatistics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceJobStatistics {
    /// The devices the job selected.
    pub device_count: u64,
    /// Those whose operation succeeded.
    pub succeeded_count: u64,
    /// Those whose operation failed, or that the job did not reach in its time.
    pub failed_count: u64,
    /// Those whose operation is in progress.
    pub running_count: u64,
    /// Those not started yet.
    pub pending_count: u64,
}

/// How one device of a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceOutcome {
    /// Not done yet (also a device whose operation was in flight when its runner stopped: it runs again).
    Pending,
    /// The twin was written, or the method answered.
    Succeeded,
    /// The operation failed (the device was offline, did not answer, was deleted).
    Failed,
}

impl DeviceOutcome {
    /// The stored code.
    pub fn code(self) -> i64 {
        match self {
            Self::Pending => 0,
            Self::Succeeded => 1,
            Self::Failed => 2,
        }
    }

    /// The outcome of a stored code.
    pub fn from_code(code: i64) -> Self {
        match code {
            1 => Self::Succeeded,
            2 => Self::Failed,
            _ => Self::Pending,
        }
    }
}

/// A job as created: what it does, to which devices, and when. Stored as JSON, never changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    /// The job's id.
    pub job_id: String,
    /// What it does.
    #[serde(rename = "type")]
    pub job_type: JobType,
    /// The devices it selects (IoT Hub's WHERE grammar over device twins).
    pub query_condition: String,
    /// The twin patch of an update-twin job (`{"tags":..,"properties":{"desired":..}}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_twin: Option<Value>,
    /// The method of a device-method job (`{"methodName":..,"payload":..,..}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_to_device_method: Option<Value>,
    /// When it was created.
    pub created_time: DateTime<Utc>,
    /// When it starts.
    pub start_time: DateTime<Utc>,
    /// How long it may run from its start.
    pub max_execution_time_in_seconds: u64,
}

impl JobRecord {
    /// When the job must have ended: its start plus its maximum execution time.
    pub fn deadline(&self) -> DateTime<Utc> {
        let seconds = i64::try_from(self.max_execution_time_in_seconds).unwrap_or(i64::MAX);
        self.start_time + chrono::Duration::seconds(seconds)
    }

    /// The condition, parsed (it was checked when the job was created).
    pub fn condition(&self) -> Result<QueryCondition, HubError> {
        QueryCondition::parse(&self.query_condition)
            .map_err(|e| HubError::ArgumentInvalid(format!("invalid queryCondition: {e}")))
    }

    /// What the job does to one device.
    pub fn operation(&self) -> Result<DeviceOperation, HubError> {
        match self.job_type {
            JobType::UpdateTwin => {
                let patch = self.update_twin.as_ref().ok_or_else(|| {
                    HubError::ArgumentInvalid("a scheduleUpdateTwin job needs updateTwin".into())
                })?;
                let write = TwinWrite::from_body(patch, false)?;
                if write.tags.is_none() && write.desired.is_none() {
                    return Err(HubError::ArgumentInvalid(
                        "updateTwin must hold tags or desired properties".into(),
                    ));
                }
                Ok(DeviceOperation::Twin(write))
            }
            JobType::DeviceMethod => {
                let method = self.cloud_to_device_method.as_ref().ok_or_else(|| {
                    HubError::ArgumentInvalid(
                        "a scheduleDeviceMethod job needs cloudToDeviceMethod".into(),
                    )
                })?;
                Ok(DeviceOperation::Method(MethodCall::from_body(method)?))
            }
        }
    }

    /// Reads the body of `PUT /jobs/v2/{id}` (`azure-iot-hub`'s `JobRequest`), refusing what the hub could not
    /// run: an unknown type, a bad condition, a missing twin patch or method name, a body id that is not the
    /// path's.
    pub fn from_request(id: &str, body: &Value, now: DateTime<Utc>) -> Result<Self, HubError> {
        let invalid = |what: String| HubError::ArgumentInvalid(what);
        check_job_id(id)?;
        let object = body
            .as_object()
            .ok_or_else(|| invalid("the job must be a JSON object".into()))?;
        let text = |key: &str| object.get(key).and_then(Value::as_str);
        if let Some(body_id) = text("jobId") {
            if body_id != id {
                return Err(invalid(format!(
                    "the body's jobId {body_id:?} is not the path's {id:?}"
                )));
            }
        }
        let job_type = match object.get("type") {
            Some(Value::String(name)) => JobType::parse(name).ok_or_else(|| {
                invalid(format!(
                    "unknown job type {name:?}: this hub runs scheduleUpdateTwin and scheduleDeviceMethod"
                ))
            })?,
            _ => return Err(invalid("type is required".into())),
        };
        let query_condition = text("queryCondition")
            .filter(|q| !q.trim().is_empty())
            .ok_or_else(|| invalid("queryCondition is required".into()))?
            .to_owned();
        let start_time = match object.get("startTime") {
            None | Some(Value::Null) => now,
            Some(Value::String(time)) => DateTime::parse_from_rfc3339(time)
                .map_err(|e| invalid(format!("startTime {time:?} is not an ISO 8601 time: {e}")))?
                .with_timezone(&Utc),
            Some(other) => return Err(invalid(format!("startTime {other} is not a time"))),
        };
        let max_execution_time_in_seconds = match object.get("maxExecutionTimeInSeconds") {
            None | Some(Value::Null) => DEFAULT_MAX_EXECUTION_SECS,
            Some(value) => value
                .as_u64()
                .filter(|s| (1..=MAX_EXECUTION_SECS).contains(s))
                .ok_or_else(|| {
                    invalid(format!(
                        "maxExecutionTimeInSeconds must be a whole number of seconds in 1..={MAX_EXECUTION_SECS}"
                    ))
                })?,
        };
        let present = |key: &str| object.get(key).filter(|v| !v.is_null()).cloned();
        let record = Self {
            job_id: id.to_owned(),
            job_type,
            query_condition,
            update_twin: present("updateTwin").filter(|_| job_type == JobType::UpdateTwin),
            cloud_to_device_method: present("cloudToDeviceMethod")
                .filter(|_| job_type == JobType::DeviceMethod),
            created_time: now,
            start_time,
            max_execution_time_in_seconds,
        };
        record.condition()?;
        record.operation()?;
        Ok(record)
    }
}

/// Refuses a job id IoT Hub would refuse: at most 64 ASCII letters, digits and dashes.
pub fn check_job_id(id: &str) -> Result<(), HubError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_JOB_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(HubError::ArgumentInvalid(format!(
            "invalid job id {id:?}: at most {MAX_JOB_ID_LEN} ASCII letters, digits and dashes"
        )))
    }
}

/// What a job does to one device.
#[derive(Debug, Clone)]
pub enum DeviceOperation {
    /// A twin write (merge) through the twins service.
    Twin(TwinWrite),
    /// A direct method call through the messaging service.
    Method(MethodCall),
}

/// A job as stored: its record and what changes over its life.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredJob {
    /// What it does, to which devices, and when.
    pub record: JobRecord,
    /// Where it is in its life.
    pub status: JobStatus,
    /// When it ended, once it has.
    pub end_time: Option<DateTime<Utc>>,
    /// How its devices stand (saved by its runner as it goes).
    pub statistics: DeviceJobStatistics,
    /// Why it failed, when it did.
    pub failure_reason: Option<String>,
}

/// One device of a job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDevice {
    /// The device.
    pub device_id: String,
    /// How it stands.
    pub outcome: DeviceOutcome,
    /// What the device answered (a method's status and payload) or why it failed.
    pub result: Option<Value>,
}

fn time(t: DateTime<Utc>) -> Value {
    t.to_rfc3339_opts(SecondsFormat::Millis, true).into()
}

/// The REST JSON of a job (`azure-iot-hub`'s `JobResponse`).
pub fn job_json(job: &StoredJob) -> Value {
    let record = &job.record;
    let mut json = Map::new();
    json.insert("jobId".into(), record.job_id.clone().into());
    json.insert(
        "queryCondition".into(),
        record.query_condition.clone().into(),
    );
    json.insert("createdTime".into(), time(record.created_time));
    json.insert("startTime".into(), time(record.start_time));
    if let Some(end) = job.end_time {
        json.insert("endTime".into(), time(end));
    }
    json.insert(
        "maxExecutionTimeInSeconds".into(),
        record.max_execution_time_in_seconds.into(),
    );
    json.insert("type".into(), record.job_type.as_str().into());
    if let Some(method) = &record.cloud_to_device_method {
        json.insert("cloudToDeviceMethod".into(), method.clone());
    }
    if let Some(twin) = &record.update_twin {
        json.insert("updateTwin".into(), twin.clone());
    }
    json.insert("status".into(), job.status.as_str().into());
    if let Some(reason) = &job.failure_reason {
        json.insert("failureReason".into(), reason.clone().into());
    }
    json.insert(
        "deviceJobStatistics".into(),
        serde_json::to_value(job.statistics).unwrap_or_else(|_| json!({})),
    );
    Value::Object(json)
}
