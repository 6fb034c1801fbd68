//! The REST service API, as azure-iot-hub 2.7.0 calls it (AZURE-COMPAT §4), plus Outpost's own endpoints for
//! cloud-to-device messages and reading the event stream.
//!
//! Every request needs a known `api-version` and a shared access signature whose policy grants the right the
//! route needs, except the upgrades to MQTT over WebSocket (`outpost_https::websocket::mqtt_over_websocket`)
//! and to AMQP over WebSocket ([`amqp_over_websocket`]), whose clients authenticate inside the protocol.
//! Where a device may act for itself (an edge device managing its modules, the upstream link), its own SAS token
//! does too, or, on a request without an `Authorization` header, the TLS client certificate it presented
//! (X.509 devices: [`authenticate_caller`] checks it with [`Hub::authenticate_certificate`] against the device
//! the path names). Errors are answered in IoT Hub's shape by [`ApiError`], in one place.

mod bulk;
mod configurations;
mod devices;
mod edge;
mod jobs;
mod messages;
mod provisioning;
mod query;
mod statistics;
mod twins;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ConnectInfo;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde_json::Value;

use outpost_core::{DeviceId, Identity};

use crate::auth::Caller;
use crate::error::HubError;
use crate::identity::Right;
use crate::registry::Precondition;
use crate::Hub;

/// The api-versions the hub answers. azure-iot-hub 2.7.0 sends 2021-04-12.
pub const API_VERSIONS: &[&str] = &[
    "2016-11-14",
    "2017-11-08-preview",
    "2018-06-30",
    "2018-08-30-preview",
    "2019-03-30",
    "2019-10-01",
    "2020-03-13",
    "2020-05-31-preview",
    "2020-06-30-preview",
    "2020-09-30",
    "2021-04-12",
];

/// The largest request body on the service routes: 2 MiB, the limit the hub has always had (axum's default),
/// far above IoT Hub's own payload limits (a twin 32 KB per section, a method payload 128 KB, a C2D message
/// 64 KB), which each handler enforces for itself.
pub const BODY_LIMIT: usize = 2 << 20;

/// The largest request body on the edge upstream link's routes (`/edge/...`): a telemetry batch carries up to
/// 500 device-to-cloud messages of up to 256 KB, which the edge cuts by bytes below this figure.
pub const EDGE_BODY_LIMIT: usize = 16 << 20;

/// The REST router over a hub.
///
/// Layers, outermost first: [`authenticate_caller`] (before any body is read), [`require_api_version`], then the
/// body limit of the route family, then the handler and its precise rights check.
pub fn router(hub: Arc<Hub>) -> Router {
    let service = Router::new()
        .route(
            "/devices",
            get(devices::list_devices).post(bulk::update_registry),
        )
        .route("/devices/query", post(query::query_devices))
        .route("/statistics/devices", get(statistics::device_statistics))
        .route("/statistics/service", get(statistics::service_statistics))
        .route(
            "/devices/{device}",
            put(devices::put_device)
                .get(devices::get_device)
                .delete(devices::delete_device),
        )
        .route("/devices/{device}/modules", get(devices::list_modules))
        .route(
            "/devices/{device}/modules/{module}",
            put(devices::put_module)
                .get(devices::get_module)
                .delete(devices::delete_module),
        )
        .route(
            "/devices/{device}/applyConfigurationContent",
            post(twins::apply_configuration),
        )
        .route(
            "/devices/{device}/messages/deviceBound",
            post(messages::send_c2d),
        )
        .route(
            "/twins/{device}",
            get(twins::get_device_twin)
                .patch(twins::patch_device_twin)
                .put(twins::replace_device_twin),
        )
        .route(
            "/twins/{device}/modules/{module}",
            get(twins::get_module_twin)
                .patch(twins::patch_module_twin)
                .put(twins::replace_module_twin),
        )
        .route(
            "/twins/{device}/methods",
            post(messages::invoke_device_method),
        )
        .route(
            "/twins/{device}/modules/{module}/methods",
            post(messages::invoke_module_method),
        )
        .route("/events", get(messages::read_events))
        // Before `/jobs/v2/{id}`: `query` is a route of its own, not a job id.
        .route(
            "/jobs/v2/query",
            get(jobs::query_jobs).post(jobs::query_jobs),
        )
        .route("/jobs/v2/{id}", put(jobs::create_job).get(jobs::get_job))
        .route("/jobs/v2/{id}/cancel", post(jobs::cancel_job))
        .route("/configurations", get(configurations::list_configurations))
        .route(
            "/configurations/testQueries",
            post(configurations::test_queries),
        )
        .route(
            "/configurations/{id}",
            put(configurations::put_configuration)
                .get(configurations::get_configuration)
                .delete(configurations::delete_configuration),
        )
        .route(
            "/configurations/{id}/rollout/{command}",
            post(configurations::rollout_command),
        )
        .route("/enrollments", get(provisioning::list_enrollments))
        .route("/enrollments/query", post(provisioning::list_enrollments))
        .route(
            "/enrollments/{id}",
            put(provisioning::put_enrollment)
                .get(provisioning::get_enrollment)
                .delete(provisioning::delete_enrollment),
        )
        .route("/enrollmentGroups", get(provisioning::list_groups))
        .route("/enrollmentGroups/query", post(provisioning::list_groups))
        .route(
            "/enrollmentGroups/{id}",
            put(provisioning::put_group)
                .get(provisioning::get_group)
                .delete(provisioning::delete_group),
        )
        .route("/registrations", get(provisioning::list_registrations))
        .route(
            "/registrations/{id}",
            get(provisioning::get_registration).delete(provisioning::delete_registration),
        )
        .route("/provisioning", get(provisioning::provisioning_info))
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    let edge_link = Router::new()
        .route("/edge/{device}/presence", post(edge::presence))
        .route("/edge/{device}/events", get(edge::events))
        .route("/edge/{device}/messages", post(edge::messages))
        .route("/edge/{device}/acks", post(edge::acks))
        .route("/edge/{device}/twin", get(edge::twin))
        .route(
            "/edge/{device}/twin/reported",
            axum::routing::patch(edge::reported),
        )
        .route("/edge/{device}/scope", get(edge::scope))
        .layer(DefaultBodyLimit::max(EDGE_BODY_LIMIT));
    service
        .merge(edge_link)
        .route_layer(axum::middleware::from_fn_with_state(
            hub.clone(),
            time_request,
        ))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(require_api_version))
        .layer(axum::middleware::from_fn_with_state(
            hub.clone(),
            authenticate_caller,
        ))
        .with_state(hub)
}

/// Room in a WebSocket message beyond one AMQP frame of the largest size.
const WEBSOCKET_MESSAGE_HEADROOM: usize = outpost_https::websocket::WEBSOCKET_MESSAGE_HEADROOM;

/// The path the Azure service SDKs open for AMQP over WebSocket (`transport_type=AmqpOverWebsocket`, port 443).
pub const AMQP_WEBSOCKET_PATH: &str = "/$servicebus/websocket";

/// The WebSocket subprotocol of AMQP 1.0 (pyamqp and uamqp ask for it).
const AMQP_SUBPROTOCOL: &str = "AMQPWSB10";

/// The route that upgrades `GET /$servicebus/websocket` (subprotocol `AMQPWSB10`) and hands the WebSocket, read
/// as bytes, to the AMQP server behind `amqp`, which serves it like a connection of its own port (SASL, `$cbs`,
/// links) under the same connection cap. Like `outpost_https::websocket::mqtt_over_websocket` it stays outside [`router`]'s layers: the
/// client authenticates inside AMQP. A WebSocket message may hold at most one AMQP frame of `max_frame_size` plus
/// a little.
pub fn amqp_over_websocket(amqp: outpost_amqp::StreamHandoff, max_frame_size: usize) -> Router {
    let upgrade = AmqpUpgrade {
        amqp,
        max_message_size: max_frame_size + WEBSOCKET_MESSAGE_HEADROOM,
    };
    Router::new()
        .route(AMQP_WEBSOCKET_PATH, get(upgrade_to_amqp))
        .with_state(upgrade)
}

/// What the AMQP-over-WebSocket route needs.
#[derive(Clone)]
struct AmqpUpgrade {
    amqp: outpost_amqp::StreamHandoff,
    max_message_size: usize,
}

async fn upgrade_to_amqp(
    State(upgrade): State<AmqpUpgrade>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    websocket: WebSocketUpgrade,
) -> Response {
    let websocket = websocket.protocols([AMQP_SUBPROTOCOL]);
    if websocket.selected_protocol().is_none() {
        return ApiError::bad_request("the WebSocket subprotocol must be AMQPWSB10")
            .into_response();
    }
    let AmqpUpgrade {
        amqp,
        max_message_size,
    } = upgrade;
    websocket
        .max_message_size(max_message_size)
        .max_frame_size(max_message_size)
        .on_failed_upgrade(move |error| tracing::debug!(%peer, %error, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| async move {
            let stream = outpost_https::websocket::WebSocketBytes::new(socket);
            if let Err(error) = amqp.hand_over(stream, peer) {
                tracing::info!(%peer, %error, "AMQP over WebSocket refused");
            }
        })
}

/// The shared state of the handlers.
type HubState = State<Arc<Hub>>;

async fn not_found() -> ApiError {
    ApiError(
        HubError::ArgumentInvalid("no such resource".into()),
        StatusCode::NOT_FOUND,
    )
}

/// Refuses with 401, before its body is read, a request that does not authenticate: its `Authorization` header
/// must be a valid shared access signature of this hub (a policy's, a device's, a module's or an edge device's),
/// or, without one, the TLS client certificate it presented must authenticate the device its path names
/// ([`certified_device`]), which the request then carries as a [`CertifiedDevice`]. Which right the request needs
/// is the handler's check; this one keeps unauthenticated clients from making the hub buffer their bodies.
async fn authenticate_caller(State(hub): HubState, mut request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let chain = request
        .extensions()
        .get::<outpost_https::ClientCertificateChain>()
        .cloned();
    let authenticated = match (header, chain) {
        (None, Some(chain)) => certified_device(&hub, request.uri().path(), &chain.0)
            .await
            .map(|device| {
                request.extensions_mut().insert(CertifiedDevice(device));
            }),
        (header, _) => hub.authenticate_token(header).await,
    };
    match authenticated {
        Ok(()) => next.run(request).await,
        Err(error) => {
            let mut response = ApiError::from(error).into_response();
            // The body is left unread on purpose; on HTTP/1.1 the connection cannot be reused after that.
            if request.version() < axum::http::Version::HTTP_2 {
                response.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    HeaderValue::from_static("close"),
                );
            }
            response
        }
    }
}

/// The device whose TLS client certificate a request presented, as [`authenticate_caller`] checked it.
#[derive(Debug, Clone)]
struct CertifiedDevice(DeviceId);

/// The device a request's path names (`/devices/{id}/...`, `/edge/{id}/...`, `/twins/{id}/...`), percent-decoded.
fn device_in_path(path: &str) -> Option<String> {
    let mut segments = path.trim_start_matches('/').split('/');
    let family = segments.next()?;
    let device = segments.next().filter(|device| !device.is_empty())?;
    if !matches!(family, "devices" | "edge" | "twins") {
        return None;
    }
    outpost_core::quote::unquote(device).ok()
}

/// Authenticates the device `path` names by the client certificate `chain` (leaf first) it presented: a request
/// that names no device cannot be made with a certificate alone.
async fn certified_device(
    hub: &Hub,
    path: &str,
    chain: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<DeviceId, HubError> {
    let device = device_in_path(path).ok_or_else(|| {
        HubError::Unauthorized(
            "the Authorization header is missing (a client certificate authenticates a device only on a request that names it)"
                .into(),
        )
    })?;
    let device = DeviceId::new(device)
        .map_err(|e| HubError::Unauthorized(format!("the client certificate: {e}")))?;
    hub.authenticate_certificate(&Identity::device(device.clone()), chain)
        .await?;
    Ok(device)
}

/// Who a request comes from, for the handlers whose right a device may have: its `Authorization` header, or the
/// device its client certificate authenticated.
pub(super) struct RestCaller {
    authorization: Option<String>,
    certified: Option<DeviceId>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RestCaller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self {
            authorization: parts
                .headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            certified: parts
                .extensions
                .get::<CertifiedDevice>()
                .map(|certified| certified.0.clone()),
        })
    }
}

impl RestCaller {
    /// What the hub's rights checks take.
    pub(super) fn caller(&self) -> Caller<'_> {
        match (&self.authorization, &self.certified) {
            (None, Some(device)) => Caller::Certificate(device),
            (header, _) => Caller::Token(header.as_deref()),
        }
    }
}

/// Times a request that matched a route, labelled by the route's template (never the raw path, which holds ids).
/// Requests refused before routing (401, 400 for the api-version, 404) are not timed.
async fn time_request(
    State(hub): HubState,
    route: axum::extract::MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let response = next.run(request).await;
    hub.metrics().rest_request(
        &method,
        route.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Refuses a request without a known `api-version` before any handler runs.
async fn require_api_version(request: Request, next: Next) -> Response {
    let version = request.uri().query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("api-version="))
            .map(str::to_owned)
    });
    let refusal = match version {
        None => ApiError::bad_request("the api-version query parameter is required"),
        Some(v) if !API_VERSIONS.contains(&v.as_str()) => ApiError::bad_request(&format!(
            "invalid api-version {v:?}; this hub knows {}",
            API_VERSIONS.join(", ")
        )),
        Some(_) => return next.run(request).await,
    };
    // Read the refused request's body first: answering while the client still sends it would reset the
    // connection (and the answer with it) or leave the rest of the body to be read as the next request.
    let http1 = request.version() < axum::http::Version::HTTP_2;
    let drained = axum::body::to_bytes(request.into_body(), MAX_REFUSED_BODY)
        .await
        .is_ok();
    let mut response = refusal.into_response();
    if !drained && http1 {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    response
}

/// The largest body read from a request refused before its handler runs.
const MAX_REFUSED_BODY: usize = 1 << 20;

/// An error answered in IoT Hub's shape.
pub struct ApiError(HubError, StatusCode);

impl ApiError {
    fn bad_request(message: &str) -> Self {
        HubError::ArgumentInvalid(message.to_owned()).into()
    }
}

impl From<HubError> for ApiError {
    fn from(error: HubError) -> Self {
        let status =
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self(error, status)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ApiError(error, status) = self;
        let (name, _number) = error.code();
        let text = if let HubError::Storage(cause) = &error {
            // Internal errors never leak: the caller learns that it failed, the log learns why.
            tracing::error!(error = %cause, "internal error");
            "internal error".to_owned()
        } else {
            error.to_string()
        };
        let now = chrono::Utc::now();
        let body = serde_json::json!({
            "Message": format!("ErrorCode:{name};{text}"),
            "ExceptionMessage": format!(
                "Tracking ID:{}-G:0-TimeStamp:{}",
                uuid::Uuid::new_v4().simple(),
                now.format("%m/%d/%Y %H:%M:%S")
            ),
        });
        let mut response = (status, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert("iothub-errorcode", HeaderValue::from_static(name));
        response
    }
}

/// Checks the caller's shared access signature for `right`.
fn authorize(hub: &Hub, headers: &HeaderMap, right: Right) -> Result<(), ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    hub.authorize_service(header, right)?;
    Ok(())
}

/// Checks the caller's right on the modules of `device` (a policy, or that edge device itself).
async fn authorize_modules(
    hub: &Hub,
    caller: &RestCaller,
    right: Right,
    device: &str,
) -> Result<(), ApiError> {
    hub.authorize_module_management(caller.caller(), right, device)
        .await?;
    Ok(())
}

/// The `If-Match` precondition of a request.
fn precondition(headers: &HeaderMap) -> Precondition {
    Precondition::from_if_match(
        headers
            .get(axum::http::header::IF_MATCH)
            .and_then(|v| v.to_str().ok()),
    )
}

/// Parses a JSON request body, refusing malformed JSON with a clear 400.
fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(&format!("the request body is not valid JSON: {e}")))
}

/// A `200 OK` JSON response.
fn ok_json(value: Value) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_a_certificate_may_authenticate_is_the_one_the_path_names() {
        assert_eq!(
            device_in_path("/devices/edge%2D1/modules/%24edgeAgent").as_deref(),
            Some("edge-1")
        );
        assert_eq!(device_in_path("/edge/gw/events").as_deref(), Some("gw"));
        assert_eq!(device_in_path("/twins/d1").as_deref(), Some("d1"));
        for nameless in [
            "/devices",
            "/devices/",
            "/statistics/devices",
            "/configurations/c1",
            "/",
        ] {
            assert_eq!(device_in_path(nameless), None, "{nameless}");
        }
    }
}
