//! Direct methods from the service, cloud-to-device messages, and reading the device-to-cloud event stream.
//!
//! IoT Hub carries C2D and the event stream over AMQP; Outpost offers them as two REST routes that its own CLI
//! uses (`outpost message send`, `outpost monitor`).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use outpost_core::Message;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{authorize, json_body, ok_json, ApiError, HubState};
use crate::identity::Right;
use crate::messaging::MethodCall;

async fn invoke(
    hub: &crate::Hub,
    device: &str,
    module: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    authorize(hub, headers, Right::ServiceConnect)?;
    let call = MethodCall::from_body(&json_body(body)?)?;
    let (status, payload) = hub.messaging().invoke_method(device, module, call).await?;
    Ok(ok_json(json!({"status": status, "payload": payload})))
}

pub(super) async fn invoke_device_method(
    State(hub): HubState,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    invoke(&hub, &device, None, &headers, &body).await
}

pub(super) async fn invoke_module_method(
    State(hub): HubState,
    Path((device, module)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    invoke(&hub, &device, Some(&module), &headers, &body).await
}

/// The body of `POST /devices/{d}/messages/deviceBound`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct C2dRequest {
    body: String,
    #[serde(default)]
    properties: BTreeMap<String, Option<String>>,
    message_id: Option<String>,
    correlation_id: Option<String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
}

pub(super) async fn send_c2d(
    State(hub): HubState,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::ServiceConnect)?;
    let request: C2dRequest = serde_json::from_value(json_body(&body)?)
        .map_err(|e| ApiError::bad_request(&format!("invalid cloud-to-device message: {e}")))?;
    let mut system = BTreeMap::new();
    let message_id = request
        .message_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    system.insert("messageId".to_owned(), message_id.clone());
    system.insert(
        "to".to_owned(),
        format!("/devices/{device}/messages/deviceBound"),
    );
    for (name, value) in [
        ("correlationId", request.correlation_id),
        ("contentType", request.content_type),
        ("contentEncoding", request.content_encoding),
    ] {
        if let Some(value) = value {
            system.insert(name.to_owned(), value);
        }
    }
    let message = Message {
        body: request.body.into_bytes().into(),
        system,
        properties: request.properties,
    };
    hub.messaging().send_c2d(&device, &message).await?;
    Ok(ok_json(json!({"messageId": message_id})))
}

/// The query of `GET /events`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EventsQuery {
    /// Read events after this sequence number; absent: only events that arrive from now on.
    after: Option<i64>,
    /// At most this many (default 100, at most 1000).
    max: Option<usize>,
    /// Wait up to this many seconds for the first event (default 0, at most 60).
    wait_secs: Option<u64>,
    /// Twin change events too (default: device-to-cloud messages only).
    #[serde(default)]
    include_twin_changes: bool,
}

pub(super) async fn read_events(
    State(hub): HubState,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::ServiceConnect)?;
    let after = query
        .after
        .unwrap_or_else(|| hub.messaging().newest_event());
    let max = query.max.unwrap_or(100).clamp(1, 1000);
    let wait = Duration::from_secs(query.wait_secs.unwrap_or(0).min(60));
    let events = hub
        .messaging()
        .read_stream(after, max, wait, query.include_twin_changes)
        .await?;
    let next = events.last().map_or(after, |(seq, _)| *seq);
    let events: Vec<Value> = events
        .into_iter()
        .map(|(seq, mut event)| {
            event["sequenceNumber"] = seq.into();
            event
        })
        .collect();
    Ok(ok_json(json!({"events": events, "next": next})))
}
