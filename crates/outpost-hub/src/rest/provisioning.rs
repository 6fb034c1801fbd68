//! The provisioning service's API, in the shape of DPS's service API: individual enrollments
//! (`/enrollments/{registrationId}`), enrollment groups (`/enrollmentGroups/{id}`), registration records
//! (`/registrations/{registrationId}`), each listed by `GET` on the collection (and by `POST .../query`, which
//! DPS's SDKs use), and `/provisioning` for the ID scope. Writing needs `RegistryWrite`, reading
//! `RegistryRead`, as the registry's own routes do.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{authorize, json_body, ok_json, ApiError, HubState};
use crate::identity::Right;

fn to_json(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

pub(super) async fn put_enrollment(
    State(hub): HubState,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryWrite)?;
    let enrollment = hub
        .provisioning()
        .put_enrollment(&id, &json_body(&body)?)
        .await?;
    Ok(ok_json(to_json(&enrollment)))
}

pub(super) async fn get_enrollment(
    State(hub): HubState,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryRead)?;
    Ok(ok_json(to_json(&hub.provisioning().enrollment(&id).await?)))
}

pub(super) async fn delete_enrollment(
    State(hub): HubState,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryWrite)?;
    hub.provisioning().delete_enrollment(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn list_enrollments(
    State(hub): HubState,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryRead)?;
    Ok(ok_json(to_json(&hub.provisioning().enrollments().await?)))
}

pub(super) async fn put_group(
    State(hub): HubState,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryWrite)?;
    let group = hub
        .provisioning()
        .put_group(&id, &json_body(&body)?)
        .await?;
    Ok(ok_json(to_json(&group)))
}

pub(super) async fn get_group(
    State(hub): HubState,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryRead)?;
    Ok(ok_json(to_json(&hub.provisioning().group(&id).await?)))
}

pub(super) async fn delete_group(
    State(hub): HubState,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryWrite)?;
    hub.provisioning().delete_group(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn list_groups(
    State(hub): HubState,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryRead)?;
    Ok(ok_json(to_json(&hub.provisioning().groups().await?)))
}

pub(super) async fn get_registration(
    State(hub): HubState,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryRead)?;
    Ok(ok_json(to_json(
        &hub.provisioning().registration(&id).await?,
    )))
}

pub(super) async fn delete_registration(
    State(hub): HubState,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryWrite)?;
    hub.provisioning().delete_registration(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn list_registrations(
    State(hub): HubState,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryRead)?;
    Ok(ok_json(to_json(&hub.provisioning().registrations().await?)))
}

pub(super) async fn provisioning_info(
    State(hub): HubState,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryRead)?;
    Ok(ok_json(json!({"idScope": hub.id_scope()})))
}
