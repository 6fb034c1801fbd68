//! Jobs (`/jobs/v2`), as `azure-iot-hub`'s `IoTHubJobManager` calls them: create (`PUT /jobs/v2/{id}`), read,
//! cancel (`POST /jobs/v2/{id}/cancel`) and query (`GET` or `POST /jobs/v2/query?jobType=&jobStatus=`, a
//! `QueryResult` of `jobResponse` items). Creating and cancelling need `RegistryWrite`, as IoT Hub's do;
//! reading needs `RegistryRead`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{authorize, json_body, ok_json, ApiError, HubState};
use crate::identity::Right;
use crate::jobs::model::{job_json, JobStatus, JobType};

pub(super) async fn create_job(
    State(hub): HubState,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryWrite)?;
    let job = hub.jobs().create(&id, &json_body(&body)?).await?;
    Ok(ok_json(job_json(&job)))
}

pub(super) async fn get_job(
    State(hub): HubState,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryRead)?;
    let job = hub.jobs().job(&id).await?;
    Ok(ok_json(job_json(&job)))
}

pub(super) async fn cancel_job(
    State(hub): HubState,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryWrite)?;
    let job = hub.jobs().cancel(&id).await?;
    Ok(ok_json(job_json(&job)))
}

/// The filters of `/jobs/v2/query`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct JobQuery {
    job_type: Option<String>,
    job_status: Option<String>,
}

pub(super) async fn query_jobs(
    State(hub): HubState,
    Query(query): Query<JobQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryRead)?;
    let job_type = match query.job_type.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        Some(name) => Some(JobType::parse(name).ok_or_else(|| {
            ApiError::bad_request(&format!(
                "unknown jobType {name:?}: scheduleUpdateTwin or scheduleDeviceMethod"
            ))
        })?),
    };
    let status = match query.job_status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(name) => Some(
            JobStatus::parse(name)
                .ok_or_else(|| ApiError::bad_request(&format!("unknown jobStatus {name:?}")))?,
        ),
    };
    let jobs = hub.jobs().list(job_type, status).await?;
    let items: Vec<Value> = jobs.iter().map(job_json).collect();
    Ok(ok_json(json!({
        "type": "jobResponse",
        "items": items,
        "continuationToken": null,
    })))
}
