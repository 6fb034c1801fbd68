//! `outpost job ...`: schedule twin updates and direct methods over the devices a query condition selects,
//! and follow them (the hub's `/jobs/v2` routes).

use anyhow::{bail, Context as _};
use clap::{Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Value};

use crate::output::{print_object, print_table};
use crate::service::{segment, ServiceClient};
use crate::HubArgs;

const JOB_FIELDS: &[&str] = &[
    "jobId",
    "type",
    "status",
    "queryCondition",
    "createdTime",
    "startTime",
    "endTime",
    "maxExecutionTimeInSeconds",
    "failureReason",
    "deviceJobStatistics.deviceCount",
    "deviceJobStatistics.succeededCount",
    "deviceJobStatistics.failedCount",
    "deviceJobStatistics.runningCount",
    "deviceJobStatistics.pendingCount",
];

/// What a job does to each device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JobKind {
    /// Apply a twin patch (`--twin-patch`).
    Twin,
    /// Invoke a direct method (`--method`, `--payload`).
    Method,
}

/// `outpost job ...`
#[derive(Subcommand)]
pub enum JobCommand {
    /// Schedule a job over the devices a query condition selects.
    Create {
        /// The job id (letters, digits and dashes, at most 64).
        id: String,
        /// What the job does.
        #[arg(long = "type", value_enum)]
        kind: JobKind,
        /// The devices it selects (IoT Hub's WHERE syntax, e.g. `tags.site = 'north'`).
        #[arg(long)]
        query_condition: String,
        /// The twin patch of a twin job: `{"tags":{..}}` and/or `{"properties":{"desired":{..}}}`; any other
        /// object is taken as desired properties.
        #[arg(long)]
        twin_patch: Option<String>,
        /// The method name of a method job.
        #[arg(long)]
        method: Option<String>,
        /// The method payload (JSON).
        #[arg(long, default_value = "null")]
        payload: String,
        /// Seconds to wait for each device's answer (5 to 300).
        #[arg(long, default_value_t = 30)]
        response_timeout: u64,
        /// Seconds to wait for each device to come online (0 to 300).
        #[arg(long, default_value_t = 0)]
        connect_timeout: u64,
        /// When the job starts (RFC 3339); now when absent.
        #[arg(long)]
        start_time: Option<String>,
        /// How long the job may run, in seconds; the devices not done by then count as failed.
        #[arg(long)]
        max_execution_time: Option<u64>,
    },
    /// Show a job and its device counts.
    Show {
        /// The job id.
        id: String,
    },
    /// List jobs.
    List {
        /// Only jobs of this type (`scheduleUpdateTwin`, `scheduleDeviceMethod`).
        #[arg(long)]
        job_type: Option<String>,
        /// Only jobs with this status (`queued`, `scheduled`, `running`, `completed`, `failed`, `cancelled`).
        #[arg(long)]
        status: Option<String>,
    },
    /// Cancel a job that has not ended.
    Cancel {
        /// The job id.
        id: String,
    },
}

/// The `JobRequest` body of `job create`.
fn job_request(command: &JobCommand) -> anyhow::Result<Value> {
    let JobCommand::Create {
        id,
        kind,
        query_condition,
        twin_patch,
        method,
        payload,
        response_timeout,
        connect_timeout,
        start_time,
        max_execution_time,
    } = command
    else {
        bail!("not a job to create")
    };
    let mut body = json!({"jobId": id, "queryCondition": query_condition});
    match kind {
        JobKind::Twin => {
            let patch = twin_patch
                .as_deref()
                .context("a twin job needs --twin-patch")?;
            let patch: Value =
                serde_json::from_str(patch).context("--twin-patch is not valid JSON")?;
            let Some(object) = patch.as_object() else {
                bail!("--twin-patch must be a JSON object")
            };
            let patch = if object.contains_key("properties") || object.contains_key("tags") {
                patch
            } else {
                json!({"properties": {"desired": patch}})
            };
            body["type"] = "scheduleUpdateTwin".into();
            body["updateTwin"] = patch;
        }
        JobKind::Method => {
            let method = method.as_deref().context("a method job needs --method")?;
            let payload: Value =
                serde_json::from_str(payload).context("--payload is not valid JSON")?;
            body["type"] = "scheduleDeviceMethod".into();
            body["cloudToDeviceMethod"] = json!({
                "methodName": method,
                "payload": payload,
                "responseTimeoutInSeconds": response_timeout,
                "connectTimeoutInSeconds": connect_timeout,
            });
        }
    }
    if let Some(start) = start_time {
        chrono::DateTime::parse_from_rfc3339(start)
            .with_context(|| format!("--start-time {start:?} is not an RFC 3339 time"))?;
        body["startTime"] = start.clone().into();
    }
    if let Some(seconds) = max_execution_time {
        body["maxExecutionTimeInSeconds"] = (*seconds).into();
    }
    Ok(body)
}

/// Runs `outpost job ...`.
pub async fn job(args: &HubArgs, command: JobCommand) -> anyhow::Result<()> {
    let client = ServiceClient::new(args)?;
    match &command {
        JobCommand::Create { id, .. } => {
            let body = job_request(&command)?;
            let job = client
                .call(
                    Method::PUT,
                    &format!("/jobs/v2/{}", segment(id)),
                    Some(&body),
                    None,
                )
                .await?;
            print_object(args.output, &job, JOB_FIELDS);
        }
        JobCommand::Show { id } => {
            let job = client
                .call(
                    Method::GET,
                    &format!("/jobs/v2/{}", segment(id)),
                    None,
                    None,
                )
                .await?;
            print_object(args.output, &job, JOB_FIELDS);
        }
        JobCommand::List { job_type, status } => {
            let filters: Vec<String> = [("jobType", job_type), ("jobStatus", status)]
                .into_iter()
                .filter_map(|(key, value)| value.as_ref().map(|v| format!("{key}={}", segment(v))))
                .collect();
            let path = if filters.is_empty() {
                "/jobs/v2/query".to_owned()
            } else {
                format!("/jobs/v2/query?{}", filters.join("&"))
            };
            let answer = client.call(Method::GET, &path, None, None).await?;
            let rows = answer
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let columns = [
                ("JOB", "jobId"),
                ("TYPE", "type"),
                ("STATUS", "status"),
                ("DEVICES", "deviceJobStatistics/deviceCount"),
                ("SUCCEEDED", "deviceJobStatistics/succeededCount"),
                ("FAILED", "deviceJobStatistics/failedCount"),
                ("START", "startTime"),
            ];
            print_table(args.output, &rows, &columns);
        }
        JobCommand::Cancel { id } => {
            let job = client
                .call(
                    Method::POST,
                    &format!("/jobs/v2/{}/cancel", segment(id)),
                    None,
                    None,
                )
                .await?;
            print_object(args.output, &job, JOB_FIELDS);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(kind: JobKind) -> JobCommand {
        JobCommand::Create {
            id: "j1".into(),
            kind,
            query_condition: "tags.site = 'north'".into(),
            twin_patch: Some(r#"{"fan": true}"#.into()),
            method: Some("reboot".into()),
            payload: r#"{"delay": 1}"#.into(),
            response_timeout: 30,
            connect_timeout: 0,
            start_time: Some("2030-01-01T00:00:00Z".into()),
            max_execution_time: Some(60),
        }
    }

    #[test]
    fn a_twin_job_sends_a_bare_patch_as_desired_properties() {
        let body = job_request(&create(JobKind::Twin)).unwrap();
        assert_eq!(body["type"], "scheduleUpdateTwin");
        assert_eq!(
            body["updateTwin"],
            json!({"properties": {"desired": {"fan": true}}})
        );
        assert_eq!(body["startTime"], "2030-01-01T00:00:00Z");
        assert_eq!(body["maxExecutionTimeInSeconds"], 60);
    }

    #[test]
    fn a_method_job_sends_a_cloud_to_device_method() {
        let body = job_request(&create(JobKind::Method)).unwrap();
        assert_eq!(body["type"], "scheduleDeviceMethod");
        assert_eq!(body["cloudToDeviceMethod"]["methodName"], "reboot");
        assert_eq!(body["cloudToDeviceMethod"]["payload"], json!({"delay": 1}));
        assert!(body.get("updateTwin").is_none());
    }
}
