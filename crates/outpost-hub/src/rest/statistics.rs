//! `GET /statistics/devices` and `GET /statistics/service`: counts of the registry and of live connections.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::json;

use super::{authorize, ok_json, ApiError, HubState};
use crate::identity::{IdentityStatus, Right};

/// `RegistryStatistics`: how many devices, enabled and disabled.
pub(super) async fn device_statistics(
    State(hub): HubState,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryRead)?;
    let devices = hub.registry().devices().await?;
    let enabled = devices
        .iter()
        .filter(|d| d.status == IdentityStatus::Enabled)
        .count();
    Ok(ok_json(json!({
        "totalDeviceCount": devices.len(),
        "enabledDeviceCount": enabled,
        "disabledDeviceCount": devices.len() - enabled,
    })))
}

/// `ServiceStatistics`: how many devices (not modules) are connected to any replica of the hub.
pub(super) async fn service_statistics(
    State(hub): HubState,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::ServiceConnect)?;
    let ids: Vec<String> = hub
        .registry()
        .devices()
        .await?
        .iter()
        .map(|d| d.device_id.to_string())
        .collect();
    let connected = hub.connections().connected_clients(&ids).await;
    Ok(ok_json(json!({"connectedDeviceCount": connected.len()})))
}
