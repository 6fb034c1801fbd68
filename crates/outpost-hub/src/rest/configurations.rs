//! Configuration routes (`/configurations[/{id}]`, `/configurations/testQueries`): automatic configurations
//! and IoT Edge deployments, as azure-iot-hub's `IoTHubConfigurationManager` calls them.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::devices::ListQuery;
use super::{authorize, json_body, ok_json, precondition, ApiError, HubState};
use crate::fleet::Configurations;
use crate::identity::Right;

pub(super) async fn put_configuration(
    State(hub): HubState,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryWrite)?;
    let body = json_body(&body)?;
    let (record, created) = hub
        .configurations()
        .put(&id, &body, &precondition(&headers))
        .await?;
    let shown = hub.configurations().get(&record.id).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(shown)).into_response())
}

pub(super) async fn get_configuration(
    State(hub): HubState,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryRead)?;
    Ok(ok_json(hub.configurations().get(&id).await?))
}

/// `POST /configurations/{id}/rollout/{pause|resume|abort}` (Outpost's extension): steers a rollout; answers
/// the configuration with its rollout state.
pub(super) async fn rollout_command(
    State(hub): HubState,
    Path((id, command)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryWrite)?;
    Ok(ok_json(
        hub.configurations().rollout_command(&id, &command).await?,
    ))
}

pub(super) async fn delete_configuration(
    State(hub): HubState,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryWrite)?;
    hub.configurations()
        .delete(&id, &precondition(&headers))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn list_configurations(
    State(hub): HubState,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryRead)?;
    let shown = hub.configurations().list(query.top).await?;
    Ok(ok_json(Value::Array(shown)))
}

pub(super) async fn test_queries(
    State(hub): HubState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryRead)?;
    Ok(ok_json(Configurations::test_queries(&json_body(&body)?)?))
}
