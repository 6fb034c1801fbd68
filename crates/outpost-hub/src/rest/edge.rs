//! Routes of the edge upstream link (`/edge/{device}/...`), authenticated with the edge device's own token.
//! See [`crate::edge_link`].

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::{json_body, ok_json, ApiError, HubState};
use crate::edge_link::{EdgeClient, EdgeMessage};
use crate::identity::DeviceRecord;
use crate::metrics::{TwinOperation, TwinSource};
use crate::Hub;

fn edge(hub: &Hub, headers: &HeaderMap, device: &str) -> Result<DeviceRecord, ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    Ok(hub.authorize_edge(header, device)?)
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_value(json_body(body)?)
        .map_err(|e| ApiError::bad_request(&format!("invalid request body: {e}")))
}

#[derive(Deserialize)]
struct Presence {
    clients: Vec<EdgeClient>,
}

pub(super) async fn presence(
    State(hub): HubState,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let record = edge(&hub, &headers, &device)?;
    let presence: Presence = parse(&body)?;
    hub.edge_presence(&record, &presence.clients)?;
    Ok(ok_json(json!({"clients": presence.clients.len()})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EventsQuery {
    wait_secs: Option<u64>,
}

pub(super) async fn events(
    State(hub): HubState,
    Path(device): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = edge(&hub, &headers, &device)?;
    let wait = Duration::from_secs(query.wait_secs.unwrap_or(0).min(60));
    Ok(ok_json(
        json!({"events": hub.edge_events(&record, wait).await}),
    ))
}

#[derive(Deserialize)]
struct Messages {
    messages: Vec<EdgeMessage>,
}

pub(super) async fn messages(
    State(hub): HubState,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let record = edge(&hub, &headers, &device)?;
    let batch: Messages = parse(&body)?;
    Ok(ok_json(
        json!({"accepted": hub.edge_messages(&record, &batch.messages)?}),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Delivered {
    client: String,
    delivery_id: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Acks {
    #[serde(default)]
    delivered: Vec<Delivered>,
    #[serde(default)]
    method_responses: Vec<crate::edge_link::EdgeMethodAnswer>,
}

pub(super) async fn acks(
    State(hub): HubState,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let record = edge(&hub, &headers, &device)?;
    let acks: Acks = parse(&body)?;
    let delivered: Vec<(String, u64)> = acks
        .delivered
        .into_iter()
        .map(|d| (d.client, d.delivery_id))
        .collect();
    hub.edge_acks(&record, &delivered, acks.method_responses)?;
    Ok(ok_json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct ClientQuery {
    client: String,
}

pub(super) async fn twin(
    State(hub): HubState,
    Path(device): Path<String>,
    Query(query): Query<ClientQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = edge(&hub, &headers, &device)?;
    let twin = hub.edge_twin(&record, &query.client)?;
    hub.metrics().twin(TwinOperation::Read, TwinSource::Edge);
    Ok(ok_json(twin))
}

pub(super) async fn reported(
    State(hub): HubState,
    Path(device): Path<String>,
    Query(query): Query<ClientQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let record = edge(&hub, &headers, &device)?;
    let version = hub.edge_reported(&record, &query.client, &json_body(&body)?)?;
    hub.metrics()
        .twin(TwinOperation::UpdateReported, TwinSource::Edge);
    Ok(ok_json(json!({"version": version})))
}

pub(super) async fn scope(
    State(hub): HubState,
    Path(device): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = edge(&hub, &headers, &device)?;
    Ok(ok_json(hub.edge_scope(&record)?))
}
