//! The JSON models of azure-iot-hub's REST API (`Device`, `Module`), apart from the domain records.

use serde_json::{json, Value};

use crate::error::HubError;
use crate::identity::{
    AuthenticationType, Credentials, DeviceRecord, IdentityStatus, ModuleRecord,
};
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
    // IoT Hub shows null keys for an X.509 identity.
    let key = |k: &str| (!k.is_empty()).then(|| k.to_owned());
    json!({
        "symmetricKey": {"primaryKey": key(&credentials.primary_key), "secondaryKey": key(&credentials.secondary_key)},
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

/// What an `authentication` object asks for (IoT Hub's `AuthenticationMechanism`).
#[derive(Default)]
struct Authentication {
    kind: Option<AuthenticationType>,
    primary_key: Option<String>,
    secondary_key: Option<String>,
    primary_thumbprint: Option<String>,
    secondary_thumbprint: Option<String>,
}

/// Reads the `authentication` object: its type (`sas`, `selfSigned`, `certificateAuthority`), symmetric keys
/// and X.509 thumbprints. The registry checks what each type needs.
fn authentication(body: &Value) -> Result<Authentication, HubError> {
    let Some(authentication) = body.get("authentication").filter(|a| !a.is_null()) else {
        return Ok(Authentication::default());
    };
    let kind = match optional_str(authentication, "type")? {
        None => None,
        Some("sas") => Some(AuthenticationType::Sas),
        Some("selfSigned") => Some(AuthenticationType::SelfSigned),
        Some("certificateAuthority") => Some(AuthenticationType::CertificateAuthority),
        Some(other) => {
            return Err(invalid(format!(
                "authentication type {other:?} is not supported; use \"sas\", \"selfSigned\" or \"certificateAuthority\""
            )))
        }
    };
    let part = |key: &str| authentication.get(key).filter(|v| !v.is_null());
    let (primary_key, secondary_key) = match part("symmetricKey") {
        Some(symmetric) => (
            optional_str(symmetric, "primaryKey")?.map(str::to_owned),
            optional_str(symmetric, "secondaryKey")?.map(str::to_owned),
        ),
        None => (None, None),
    };
    let (primary_thumbprint, secondary_thumbprint) = match part("x509Thumbprint") {
        Some(thumbprints) => (
            optional_str(thumbprints, "primaryThumbprint")?.map(str::to_owned),
            optional_str(thumbprints, "secondaryThumbprint")?.map(str::to_owned),
        ),
        None => (None, None),
    };
    Ok(Authentication {
        kind,
        primary_key,
        secondary_key,
        primary_thumbprint,
        secondary_thumbprint,
    })
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
    let authentication = authentication(body)?;
    Ok(DeviceSpec {
        device_id: path_id.to_owned(),
        status,
        status_reason: optional_str(body, "statusReason")?.map(str::to_owned),
        primary_key: authentication.primary_key,
        secondary_key: authentication.secondary_key,
        authentication: authentication.kind,
        primary_thumbprint: authentication.primary_thumbprint,
        secondary_thumbprint: authentication.secondary_thumbprint,
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
    let authentication = authentication(body)?;
    Ok(ModuleSpec {
        device_id: device.to_owned(),
        module_id: module.to_owned(),
        managed_by: optional_str(body, "managedBy")?.map(str::to_owned),
        primary_key: authentication.primary_key,
        secondary_key: authentication.secondary_key,
        authentication: authentication.kind,
        primary_thumbprint: authentication.primary_thumbprint,
        secondary_thumbprint: authentication.secondary_thumbprint,
    })
}
