//! Twin routes (`/twins/{d}[/modules/{m}]`) and deployments (`applyConfigurationContent`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{authorize, json_body, ok_json, precondition, ApiError, HubState};
use crate::identity::Right;
use crate::metrics::{TwinOperation, TwinSource};
use crate::twins::{twin_json, TwinWrite};

pub(super) async fn get_device_twin(
    State(hub): HubState,
    Path(device): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::ServiceConnect)?;
    let twin = hub.twins().twin(&device, None).await?;
    hub.metrics().twin(TwinOperation::Read, TwinSource::Service);
    Ok(ok_json(twin_json(&twin)))
}

pub(super) async fn get_module_twin(
    State(hub): HubState,
    Path((device, module)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::ServiceConnect)?;
    let twin = hub.twins().twin(&device, Some(&module)).await?;
    hub.metrics().twin(TwinOperation::Read, TwinSource::Service);
    Ok(ok_json(twin_json(&twin)))
}

async fn write(
    hub: &crate::Hub,
    device: &str,
    module: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
    replace: bool,
) -> Result<Response, ApiError> {
    authorize(hub, headers, Right::ServiceConnect)?;
    let write = TwinWrite::from_body(&json_body(body)?, replace)?;
    let view = hub
        .twins()
        .write_twin(device, module, &write, &precondition(headers))
        .await?;
    let operation = if replace {
        TwinOperation::Replace
    } else {
        TwinOperation::UpdateDesired
    };
    hub.metrics().twin(operation, TwinSource::Service);
    Ok(ok_json(twin_json(&view)))
}

pub(super) async fn patch_device_twin(
    State(hub): HubState,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    write(&hub, &device, None, &headers, &body, false).await
}

pub(super) async fn replace_device_twin(
    State(hub): HubState,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    write(&hub, &device, None, &headers, &body, true).await
}

pub(super) async fn patch_module_twin(
    State(hub): HubState,
    Path((device, module)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    write(&hub, &device, Some(&module), &headers, &body, false).await
}

pub(super) async fn replace_module_twin(
    State(hub): HubState,
    Path((device, module)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    write(&hub, &device, Some(&module), &headers, &body, true).await
}

pub(super) async fn apply_configuration(
    State(hub): HubState,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::ServiceConnect)?;
    hub.twins()
        .apply_configuration(&device, &json_body(&body)?)
        .await?;
    hub.metrics()
        .twin(TwinOperation::ApplyConfiguration, TwinSource::Service);
    Ok(StatusCode::NO_CONTENT.into_response())
}
