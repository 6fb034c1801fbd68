//! Routes of the edge upstream link (`/edge/{device}/...`), authenticated with the edge device's own token or
//! client certificate. Every
//! body is a type of [`outpost_core::edge_link`]; a request naming another link version is refused (400).
//! A long poll from an edge device that has not declared its presence to this process is a 409 with a
//! [`LinkRefusal`]. See [`crate::edge_link`].

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use outpost_core::edge_link::{
    check_link_version, AcksAnswer, AcksRequest, EventsAnswer, LinkRefusal, PresenceAnswer,
    PresenceRequest, ReportedAnswer, TelemetryAnswer, TelemetryBatch, LINK_REFUSAL_STATUS,
};
use serde::{Deserialize, Serialize};

use super::{json_body, ApiError, HubState, RestCaller};
use crate::identity::DeviceRecord;
use crate::metrics::{TwinOperation, TwinSource};
use crate::Hub;

/// The link version a request names, in its query.
#[derive(Deserialize)]
pub(super) struct LinkVersion {
    #[serde(rename = "link-version")]
    version: Option<String>,
}

/// Checks the link version, then that the caller is the enabled edge device `device` (by its token or its client
/// certificate).
async fn edge(
    hub: &Hub,
    version: &LinkVersion,
    caller: &RestCaller,
    device: &str,
) -> Result<DeviceRecord, ApiError> {
    check_link_version(version.version.as_deref())
        .map_err(|e| ApiError::bad_request(&e.to_string()))?;
    Ok(hub.authorize_edge(caller.caller(), device).await?)
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(&format!("invalid request body: {e}")))
}

/// A `200 OK` with a typed answer.
fn ok<T: Serialize>(answer: &T) -> Response {
    (StatusCode::OK, axum::Json(answer)).into_response()
}

pub(super) async fn presence(
    State(hub): HubState,
    Path(device): Path<String>,
    Query(version): Query<LinkVersion>,
    caller: RestCaller,
    body: Bytes,
) -> Result<Response, ApiError> {
    let record = edge(&hub, &version, &caller, &device).await?;
    let presence: PresenceRequest = parse(&body)?;
    hub.edge_presence(&record, &presence.clients).await?;
    Ok(ok(&PresenceAnswer {
        clients: presence.clients.len(),
    }))
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
    Query(version): Query<LinkVersion>,
    caller: RestCaller,
) -> Result<Response, ApiError> {
    let record = edge(&hub, &version, &caller, &device).await?;
    let wait = Duration::from_secs(query.wait_secs.unwrap_or(0).min(60));
    match hub.edge_events(&record, wait).await {
        Ok(events) => Ok(ok(&EventsAnswer { events })),
        Err(undeclared) => {
            tracing::info!(edge = %undeclared.0, "a long poll before any presence: asking the edge to declare it");
            let status = StatusCode::from_u16(LINK_REFUSAL_STATUS).unwrap_or(StatusCode::CONFLICT);
            Ok((
                status,
                axum::Json(LinkRefusal::presence_required(&undeclared.0)),
            )
                .into_response())
        }
    }
}

pub(super) async fn messages(
    State(hub): HubState,
    Path(device): Path<String>,
    Query(version): Query<LinkVersion>,
    caller: RestCaller,
    body: Bytes,
) -> Result<Response, ApiError> {
    let record = edge(&hub, &version, &caller, &device).await?;
    let batch: TelemetryBatch<'static> = parse(&body)?;
    Ok(ok(&TelemetryAnswer {
        accepted: hub.edge_messages(&record, &batch.messages).await?,
    }))
}

pub(super) async fn acks(
    State(hub): HubState,
    Path(device): Path<String>,
    Query(version): Query<LinkVersion>,
    caller: RestCaller,
    body: Bytes,
) -> Result<Response, ApiError> {
    let record = edge(&hub, &version, &caller, &device).await?;
    let acks: AcksRequest = parse(&body)?;
    hub.edge_acks(&record, &acks.delivered, acks.method_responses)
        .await?;
    Ok(ok(&AcksAnswer {}))
}

#[derive(Deserialize)]
pub(super) struct ClientQuery {
    client: String,
}

pub(super) async fn twin(
    State(hub): HubState,
    Path(device): Path<String>,
    Query(query): Query<ClientQuery>,
    Query(version): Query<LinkVersion>,
    caller: RestCaller,
) -> Result<Response, ApiError> {
    let record = edge(&hub, &version, &caller, &device).await?;
    let twin = hub.edge_twin(&record, &query.client).await?;
    hub.metrics().twin(TwinOperation::Read, TwinSource::Edge);
    Ok(ok(&twin))
}

pub(super) async fn reported(
    State(hub): HubState,
    Path(device): Path<String>,
    Query(query): Query<ClientQuery>,
    Query(version): Query<LinkVersion>,
    caller: RestCaller,
    body: Bytes,
) -> Result<Response, ApiError> {
    let record = edge(&hub, &version, &caller, &device).await?;
    // The patch is a document whose shape the user owns.
    let version = hub
        .edge_reported(&record, &query.client, &json_body(&body)?)
        .await?;
    hub.metrics()
        .twin(TwinOperation::UpdateReported, TwinSource::Edge);
    Ok(ok(&ReportedAnswer { version }))
}

pub(super) async fn scope(
    State(hub): HubState,
    Path(device): Path<String>,
    Query(version): Query<LinkVersion>,
    caller: RestCaller,
) -> Result<Response, ApiError> {
    let record = edge(&hub, &version, &caller, &device).await?;
    Ok(ok(&hub.edge_scope(&record).await?))
}
