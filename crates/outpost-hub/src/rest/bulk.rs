//! `POST /devices`: the bulk registry operation, up to [`MAX_BULK_DEVICES`] `ExportImportDevice`s a request.
//!
//! Each device is applied on its own through the registry and twins services (the same rules as
//! `PUT /devices/{d}` and `PATCH /twins/{d}`), all of them at once so that the storage writer group-commits them
//! together. One device's failure does not undo the others: the answer lists the failures, with 400 when there
//! is any, as IoT Hub does (azure-iot-hub reads a `BulkRegistryOperationResult` from both 200 and 400).

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::wire::device_spec;
use super::{authorize, json_body, ApiError, HubState};
use crate::error::HubError;
use crate::identity::Right;
use crate::registry::Precondition;
use crate::twins::TwinWrite;
use crate::Hub;

/// The most devices one request may name, as in IoT Hub.
pub const MAX_BULK_DEVICES: usize = 100;

/// What to do with one device of a bulk request (`importMode`, any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportMode {
    /// Create; an existing device is an error.
    Create,
    /// Create, or overwrite an existing device whatever its etag (the default).
    CreateOrUpdate,
    /// Overwrite an existing device whatever its etag; a missing device is an error.
    Update,
    /// Overwrite an existing device whose etag is `eTag`.
    UpdateIfMatchETag,
    /// Delete whatever the etag.
    Delete,
    /// Delete if the device's etag is `eTag`.
    DeleteIfMatchETag,
    /// Update the twin's tags and desired properties whatever its etag.
    UpdateTwin,
    /// Update the twin if its etag is `twinETag`.
    UpdateTwinIfMatchETag,
}

impl ImportMode {
    /// Reads an `importMode` in any case; a missing one is `createOrUpdate`, IoT Hub's default.
    pub fn parse(text: Option<&str>) -> Result<Self, HubError> {
        let Some(text) = text else {
            return Ok(Self::CreateOrUpdate);
        };
        Ok(match text.to_ascii_lowercase().as_str() {
            "create" => Self::Create,
            "createorupdate" => Self::CreateOrUpdate,
            "update" => Self::Update,
            "updateifmatchetag" => Self::UpdateIfMatchETag,
            "delete" => Self::Delete,
            "deleteifmatchetag" => Self::DeleteIfMatchETag,
            "updatetwin" => Self::UpdateTwin,
            "updatetwinifmatchetag" => Self::UpdateTwinIfMatchETag,
            _ => {
                return Err(HubError::ArgumentInvalid(format!(
                    "unknown importMode {text:?}"
                )))
            }
        })
    }
}

/// The text of an optional string field of an `ExportImportDevice`.
fn field<'a>(item: &'a Value, key: &str) -> Option<&'a str> {
    item.get(key).and_then(Value::as_str)
}

/// The etag precondition of an `...IfMatchETag` mode, which must name one.
fn etag(item: &Value, key: &str) -> Result<Precondition, HubError> {
    field(item, key)
        .map(|etag| Precondition::from_if_match(Some(etag)))
        .ok_or_else(|| HubError::ArgumentInvalid(format!("this importMode needs {key}")))
}

/// Writes the tags and desired properties an `ExportImportDevice` carries, if any.
async fn write_twin(
    hub: &Hub,
    id: &str,
    item: &Value,
    precondition: &Precondition,
) -> Result<(), HubError> {
    let write = TwinWrite::from_body(item, false)?;
    if write.tags.is_some() || write.desired.is_some() {
        hub.twins()
            .write_twin(id, None, &write, precondition)
            .await?;
    }
    Ok(())
}

/// Applies one `ExportImportDevice` through the registry and twins services.
async fn apply(hub: &Hub, id: &str, mode: ImportMode, item: &Value) -> Result<(), HubError> {
    if field(item, "moduleId").is_some() {
        return Err(HubError::ArgumentInvalid(
            "the bulk registry operation takes devices, not modules".into(),
        ));
    }
    let registry = hub.registry();
    let put = move |precondition: Precondition| async move {
        let spec = device_spec(id, item)?;
        registry.put_device(&spec, &precondition).await?;
        write_twin(hub, id, item, &Precondition::Any).await
    };
    match mode {
        ImportMode::Create => put(Precondition::CreateOnly).await,
        ImportMode::CreateOrUpdate => put(Precondition::Any).await,
        ImportMode::Update => {
            // `Any` would create a missing device; an update must not.
            registry.device(id).await?;
            put(Precondition::Any).await
        }
        ImportMode::UpdateIfMatchETag => put(etag(item, "eTag")?).await,
        ImportMode::Delete => registry.delete_device(id, &Precondition::Any).await,
        ImportMode::DeleteIfMatchETag => registry.delete_device(id, &etag(item, "eTag")?).await,
        ImportMode::UpdateTwin => write_twin(hub, id, item, &Precondition::Any).await,
        ImportMode::UpdateTwinIfMatchETag => {
            write_twin(hub, id, item, &etag(item, "twinETag")?).await
        }
    }
}

/// The `DeviceRegistryOperationError` of one failed device.
fn error_json(id: &str, mode: Option<ImportMode>, error: &HubError) -> Value {
    let (code, _number) = error.code();
    let status = if let HubError::Storage(cause) = error {
        // Internal errors never leak, as in `ApiError`.
        tracing::error!(error = %cause, device = id, "bulk registry operation failed");
        "internal error".to_owned()
    } else {
        error.to_string()
    };
    json!({
        "deviceId": id,
        "errorCode": code,
        "errorStatus": status,
        "operation": mode.map(|m| format!("{m:?}")),
    })
}

pub(super) async fn update_registry(
    State(hub): HubState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryWrite)?;
    let Value::Array(items) = json_body(&body)? else {
        return Err(ApiError::bad_request(
            "the body must be a JSON array of ExportImportDevice",
        ));
    };
    if items.len() > MAX_BULK_DEVICES {
        return Err(ApiError::bad_request(&format!(
            "a bulk registry operation takes at most {MAX_BULK_DEVICES} devices, not {}",
            items.len()
        )));
    }
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    let mut tasks = tokio::task::JoinSet::new();
    for item in items {
        let id = field(&item, "id").unwrap_or_default().to_owned();
        let mode = match ImportMode::parse(field(&item, "importMode")) {
            Ok(mode) => mode,
            Err(error) => {
                errors.push(error_json(&id, None, &error));
                continue;
            }
        };
        if id.is_empty() || !seen.insert(id.clone()) {
            let error = HubError::ArgumentInvalid(if id.is_empty() {
                "every device needs an id".into()
            } else {
                format!("device {id} is named more than once in the request")
            });
            errors.push(error_json(&id, Some(mode), &error));
            continue;
        }
        let hub = Arc::clone(&hub);
        tasks.spawn(async move {
            let outcome = apply(&hub, &id, mode, &item).await;
            (id, mode, outcome)
        });
    }
    let mut failed = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((id, mode, Err(error))) => failed.push((id, mode, error)),
            Ok((_, _, Ok(()))) => {}
            Err(join) => errors.push(error_json(
                "",
                None,
                &HubError::Storage(crate::store::StorageError::Engine(format!(
                    "a bulk registry task failed: {join}"
                ))),
            )),
        }
    }
    // Tasks finish in any order; the answer lists the failures by device id.
    failed.sort_by(|a, b| a.0.cmp(&b.0));
    errors.extend(
        failed
            .iter()
            .map(|(id, mode, error)| error_json(id, Some(*mode), error)),
    );
    let successful = errors.is_empty();
    let status = if successful {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let result = json!({"isSuccessful": successful, "errors": errors, "warnings": []});
    Ok((status, axum::Json(result)).into_response())
}
