//! The JSON models of azure-iot-hub's REST API (`Device`, `Module`), apart from the domain records.

use serde_json::{json, Value};

use crate::error::HubError;
use crate::identity::{Credentials, DeviceRecord, IdentityStatus, ModuleRecord};
use crate::registry::{DeviceSpec, ModuleSpec};

/// The `Device` JSON of a device record.
pub fn device_json(record: &DeviceRecord, connected: bool) -> Value {
    json!({
        "deviceId": record.device_id.as_str(),
        "generationId": record.generation_id,
        "etag": crate::identity::identity_etag(record.etag_counter),
        "connectionState": if connected { "Connected" } else { "Disconnected" },
        "status": record.status,
        "statusReason": record.status_reason,
        "connectionStateUpdatedTime": "0001-01-01T00:00:00Z",
        "statusUpdatedTime": record.status_updated.to_rfc3339(),
        "lastActivityTime": "0001-01-01T00:00:00Z",
        "cloudToDeviceMessageCount": 0,
        "authentication": authentication_json(&record.credentials),
        "capabilities": {"iotEdge": record.iot_edge},
        "deviceScope": record.device_scope,
        "parentScopes": record.parent_scopes,
    })
}

/// The `Module` JSON of a module record.
pub fn module_json(record: &ModuleRecord, connected: bool) -> Value {
    json!({
        "moduleId": record.module_id.as_str(),
        "managedBy": record.managed_by,
        "deviceId": record.device_id.as_str(),
        "generationId": record.generation_id,
        "etag": crate::identity::identity_etag(record.etag_counter),
        "connectionState": if connected { "Connected" } else { "Disconnected" },
        "connectionStateUpdatedTime": "0001-01-01T00:00:00Z",
        "lastActivityTime": "0001-01-01T00:00:00Z",
        "cloudToDeviceMessageCount": 0,
        "authentication": authentication_json(&record.credentials),
    })
}

fn authentication_json(credentials: &Credentials) -> Value {
    json!({
        "symmetricKey": {"primaryKey": credentials.primary_key, "secondaryKey": credentials.secondary_key},
        "x509Thumbprint": {
            "primaryThumbprint": credentials.primary_thumbprint,
            "secondaryThumbprint": credentials.secondary_thumbprint,
        },
        "type": credentials.kind,
    })
}

fn invalid(message: impl Into<String>) -> HubError {
    HubError::ArgumentInvalid(message.into())
}

fn optional_str<'a>(value: &'a Value, key: &str) -> Result<Option<&'a str>, HubError> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("{key} must be a string"))),
    }
}

/// The symmetric keys of an `authentication` object, refusing authentication types the hub cannot serve.
fn keys(body: &Value) -> Result<(Option<String>, Option<String>), HubError> {
    let Some(authentication) = body.get("authentication").filter(|a| !a.is_null()) else {
        return Ok((None, None));
    };
    if let Some(kind) = optional_str(authentication, "type")? {
        if kind != "sas" {
            return Err(invalid(format!(
                "authentication type {kind:?} is not supported yet; use \"sas\""
            )));
        }
    }
    let Some(symmetric) = authentication.get("symmetricKey").filter(|s| !s.is_null()) else {
        return Ok((None, None));
    };
    Ok((
        optional_str(symmetric, "primaryKey")?.map(str::to_owned),
        optional_str(symmetric, "secondaryKey")?.map(str::to_owned),
    ))
}

/// Reads the body of `PUT /devices/{id}`.
pub fn device_spec(path_id: &str, body: &Value) -> Result<DeviceSpec, HubError> {
    if !body.is_object() {
        return Err(invalid("the device body must be a JSON object"));
    }
    if let Some(id) = optional_str(body, "deviceId")? {
        if id != path_id {
            return Err(invalid(format!(
                "deviceId {id:?} does not match the path's {path_id:?}"
            )));
        }
    }
    let status = match optional_str(body, "status")? {
        None => None,
        Some("enabled") => Some(IdentityStatus::Enabled),
        Some("disabled") => Some(IdentityStatus::Disabled),
        Some(other) => {
            return Err(invalid(format!(
                "status must be enabled or disabled, not {other:?}"
            )))
        }
    };
    let iot_edge = match body.pointer("/capabilities/iotEdge") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("capabilities.iotEdge must be true or false")),
    };
    let (primary_key, secondary_key) = keys(body)?;
    Ok(DeviceSpec {
        device_id: path_id.to_owned(),
        status,
        status_reason: optional_str(body, "statusReason")?.map(str::to_owned),
        primary_key,
        secondary_key,
        iot_edge,
        parent: optional_str(body, "parentDeviceId")?.map(str::to_owned),
        device_scope: optional_str(body, "deviceScope")?.map(str::to_owned),
    })
}

/// Reads the body of `PUT /devices/{d}/modules/{m}`.
pub fn module_spec(device: &str, module: &str, body: &Value) -> Result<ModuleSpec, HubError> {
    if !body.is_object() {
        return Err(invalid("the module body must be a JSON object"));
    }
    for (key, expected) in [("deviceId", device), ("moduleId", module)] {
        if let Some(id) = optional_str(body, key)? {
            if id != expected {
                return Err(invalid(format!(
                    "{key} {id:?} does not match the path's {expected:?}"
                )));
            }
        }
    }
    let (primary_key, secondary_key) = keys(body)?;
    Ok(ModuleSpec {
        device_id: device.to_owned(),
        module_id: module.to_owned(),
        managed_by: optional_str(body, "managedBy")?.map(str::to_owned),
        primary_key,
        secondary_key,
    })
}
