//! Registry routes: `/devices/{d}` and `/devices/{d}/modules/{m}`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use outpost_core::Identity;
use serde_json::Value;

use super::wire::{device_json, device_spec, module_json, module_spec};
use super::{
    authorize, authorize_modules, json_body, ok_json, precondition, ApiError, HubState, RestCaller,
};
use crate::identity::Right;

pub(super) async fn put_device(
    State(hub): HubState,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryWrite)?;
    let spec = device_spec(&device, &json_body(&body)?)?;
    let record = hub
        .registry()
        .put_device(&spec, &precondition(&headers))
        .await?;
    let connected = hub
        .connections()
        .is_connected_anywhere(&Identity::device(record.device_id.clone()))
        .await;
    Ok(ok_json(device_json(&record, connected)))
}

pub(super) async fn get_device(
    State(hub): HubState,
    Path(device): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryRead)?;
    let record = hub.registry().device(&device).await?;
    let connected = hub
        .connections()
        .is_connected_anywhere(&Identity::device(record.device_id.clone()))
        .await;
    Ok(ok_json(device_json(&record, connected)))
}

/// The query of `GET /devices` (azure-iot-hub's `get_devices(max_number_of_devices)` sends `top`).
#[derive(serde::Deserialize)]
pub(super) struct ListQuery {
    pub(super) top: Option<usize>,
}

pub(super) async fn list_devices(
    State(hub): HubState,
    axum::extract::Query(query): axum::extract::Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryRead)?;
    let mut devices = hub.registry().devices().await?;
    devices.truncate(query.top.unwrap_or(usize::MAX));
    let ids: Vec<String> = devices.iter().map(|d| d.device_id.to_string()).collect();
    let connected = hub.connections().connected_clients(&ids).await;
    let devices: Vec<Value> = devices
        .iter()
        .map(|d| device_json(d, connected.contains(d.device_id.as_str())))
        .collect();
    Ok(ok_json(Value::Array(devices)))
}

pub(super) async fn delete_device(
    State(hub): HubState,
    Path(device): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryWrite)?;
    hub.registry()
        .delete_device(&device, &precondition(&headers))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn put_module(
    State(hub): HubState,
    Path((device, module)): Path<(String, String)>,
    headers: HeaderMap,
    caller: RestCaller,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize_modules(&hub, &caller, Right::RegistryWrite, &device).await?;
    let spec = module_spec(&device, &module, &json_body(&body)?)?;
    let (record, created) = hub
        .registry()
        .put_module(spec, &precondition(&headers))
        .await?;
    let connected = hub
        .connections()
        .is_connected_anywhere(&Identity::module(
            record.device_id.clone(),
            record.module_id.clone(),
        ))
        .await;
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
    caller: RestCaller,
) -> Result<Response, ApiError> {
    authorize_modules(&hub, &caller, Right::RegistryRead, &device).await?;
    let record = hub.registry().module(&device, &module).await?;
    let connected = hub
        .connections()
        .is_connected_anywhere(&Identity::module(
            record.device_id.clone(),
            record.module_id.clone(),
        ))
        .await;
    Ok(ok_json(module_json(&record, connected)))
}

pub(super) async fn list_modules(
    State(hub): HubState,
    Path(device): Path<String>,
    caller: RestCaller,
) -> Result<Response, ApiError> {
    authorize_modules(&hub, &caller, Right::RegistryRead, &device).await?;
    let modules = hub.registry().modules(&device).await?;
    let ids: Vec<String> = modules
        .iter()
        .map(|m| format!("{}/{}", m.device_id, m.module_id))
        .collect();
    let connected = hub.connections().connected_clients(&ids).await;
    let modules: Vec<Value> = modules
        .iter()
        .zip(&ids)
        .map(|(m, id)| module_json(m, connected.contains(id)))
        .collect();
    Ok(ok_json(Value::Array(modules)))
}

pub(super) async fn delete_module(
    State(hub): HubState,
    Path((device, module)): Path<(String, String)>,
    headers: HeaderMap,
    caller: RestCaller,
) -> Result<Response, ApiError> {
    authorize_modules(&hub, &caller, Right::RegistryWrite, &device).await?;
    hub.registry()
        .delete_module(&device, &module, &precondition(&headers))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
