//! Registry routes: `/devices/{d}` and `/devices/{d}/modules/{m}`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use outpost_core::Identity;
use serde_json::Value;

use super::wire::{device_json, device_spec, module_json, module_spec};
use super::{authorize, authorize_modules, json_body, ok_json, precondition, ApiError, HubState};
use crate::identity::Right;

pub(super) async fn put_device(
    State(hub): HubState,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryWrite)?;
    let spec = device_spec(&device, &json_body(&body)?)?;
    let record = hub.put_device(&spec, &precondition(&headers)).await?;
    let connected = hub.is_connected(&Identity::device(record.device_id.clone()));
    Ok(ok_json(device_json(&record, connected)))
}

pub(super) async fn get_device(
    State(hub): HubState,
    Path(device): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryRead)?;
    let record = hub.device(&device).await?;
    let connected = hub.is_connected(&Identity::device(record.device_id.clone()));
    Ok(ok_json(device_json(&record, connected)))
}

/// The query of `GET /devices` (azure-iot-hub's `get_devices(max_number_of_devices)` sends `top`).
#[derive(serde::Deserialize)]
pub(super) struct ListQuery {
    top: Option<usize>,
}

pub(super) async fn list_devices(
    State(hub): HubState,
    axum::extract::Query(query): axum::extract::Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryRead)?;
    let devices: Vec<Value> = hub
        .devices()
        .await?
        .iter()
        .take(query.top.unwrap_or(usize::MAX))
        .map(|d| device_json(d, hub.is_connected(&Identity::device(d.device_id.clone()))))
        .collect();
    Ok(ok_json(Value::Array(devices)))
}

pub(super) async fn delete_device(
    State(hub): HubState,
    Path(device): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryWrite)?;
    hub.delete_device(&device, &precondition(&headers)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn put_module(
    State(hub): HubState,
    Path((device, module)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize_modules(&hub, &headers, Right::RegistryWrite, &device).await?;
    let spec = module_spec(&device, &module, &json_body(&body)?)?;
    let (record, created) = hub.put_module(spec, &precondition(&headers)).await?;
    let connected = hub.is_connected(&Identity::module(
        record.device_id.clone(),
        record.module_id.clone(),
    ));
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(module_json(&record, connected))).into_response())
}

pub(super) async fn get_module(
    State(hub): HubState,
    Path((device, module)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize_modules(&hub, &headers, Right::RegistryRead, &device).await?;
    let record = hub.module(&device, &module).await?;
    let connected = hub.is_connected(&Identity::module(
        record.device_id.clone(),
        record.module_id.clone(),
    ));
    Ok(ok_json(module_json(&record, connected)))
}

pub(super) async fn list_modules(
    State(hub): HubState,
    Path(device): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize_modules(&hub, &headers, Right::RegistryRead, &device).await?;
    let modules: Vec<Value> = hub
        .modules(&device)
        .await?
        .iter()
        .map(|m| {
            module_json(
                m,
                hub.is_connected(&Identity::module(m.device_id.clone(), m.module_id.clone())),
            )
        })
        .collect();
    Ok(ok_json(Value::Array(modules)))
}

pub(super) async fn delete_module(
    State(hub): HubState,
    Path((device, module)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize_modules(&hub, &headers, Right::RegistryWrite, &device).await?;
    hub.delete_module(&device, &module, &precondition(&headers))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
