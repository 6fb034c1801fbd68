//! The edge hub's HTTPS method API (AZURE-COMPAT §1.6): a module invokes a direct method on another module of
//! this device, or on a device behind it, through its gateway, even while the hub is unreachable. The same
//! HTTPS port upgrades `GET /$iothub/websocket` to MQTT over WebSocket for the edge hub's MQTT server.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use outpost_core::Identity;
use outpost_mqtt::methods::{answer_payload, new_request_id};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::state::MethodOutcome;
use super::EdgeHub;

/// How a call refused for [`MethodOutcome::TooManyCalls`] is told (429, local or forwarded).
fn too_many_calls(max: usize) -> String {
    format!("{max} method calls are waiting for their answer already")
}

/// How long a call forwarded from the hub may wait for its answer: the longest response timeout IoT Hub
/// allows (the hub gives up on its own timeout and ignores a later answer).
const FORWARDED_TIMEOUT: Duration = Duration::from_mins(5);

/// Largest method payload (128 KiB).
const MAX_PAYLOAD: usize = 128 * 1024;

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"message": message}))).into_response()
}

/// Largest request body: a method call is its name, timeouts and a payload of at most [`MAX_PAYLOAD`].
const MAX_BODY: usize = 2 * MAX_PAYLOAD;

/// Connections the method API serves at once (each module and downstream device holds one or two).
pub const MAX_CONNECTIONS: usize = 1_000;

/// The method API's routes.
pub fn router(hub: Arc<EdgeHub>) -> Router {
    Router::new()
        .route("/twins/{device}/methods", post(invoke_device))
        .route(
            "/twins/{device}/modules/{module}/methods",
            post(invoke_module),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            hub.clone(),
            require_caller,
        ))
        .with_state(hub)
}

/// Refuses a request whose caller is not a module of this device with its own token, before its body is read
/// (an unauthenticated client cannot make the edge hold bodies); the handler checks the caller again.
async fn require_caller(
    State(hub): State<Arc<EdgeHub>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match caller(&hub, request.headers()) {
        Ok(_) => next.run(request).await,
        Err(refusal) => {
            let mut refusal = *refusal;
            // The body is left unread; an HTTP/1.1 connection cannot carry another request after that.
            if request.version() < axum::http::Version::HTTP_2 {
                refusal.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
            }
            refusal
        }
    }
}

async fn invoke_device(
    State(hub): State<Arc<EdgeHub>>,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    invoke(&hub, &device, None, &headers, &body).await
}

async fn invoke_module(
    State(hub): State<Arc<EdgeHub>>,
    Path((device, module)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    invoke(&hub, &device, Some(&module), &headers, &body).await
}

/// Checks the caller (`x-ms-edge-moduleId` names a module of this device, and the token is that module's).
fn caller(hub: &EdgeHub, headers: &HeaderMap) -> Result<Identity, Box<Response>> {
    let header = headers
        .get("x-ms-edge-moduleId")
        .and_then(|v| v.to_str().ok());
    let identity = header
        .and_then(|h| Identity::parse_client_id(h).ok())
        .filter(|i| i.module.is_some())
        .ok_or_else(|| {
            Box::new(refuse(
                StatusCode::BAD_REQUEST,
                "Invalid header value for x-ms-edge-moduleId",
            ))
        })?;
    if identity.device.as_str() != hub.device.device_id {
        return Err(Box::new(refuse(
            StatusCode::UNAUTHORIZED,
            "the caller is not a module of this edge device",
        )));
    }
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    hub.authenticate(&identity, token)
        .map_err(|e| Box::new(refuse(StatusCode::UNAUTHORIZED, &e.to_string())))?;
    Ok(identity)
}

async fn invoke(
    hub: &EdgeHub,
    device: &str,
    module: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    if let Err(refusal) = caller(hub, headers) {
        return *refusal;
    }
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return refuse(StatusCode::BAD_REQUEST, "the body is not valid JSON");
    };
    let Some(method) = request
        .get("methodName")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty() && m.len() <= 100)
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "methodName is required (at most 100 characters)",
        );
    };
    let timeout = request
        .get("responseTimeoutInSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(30);
    if !(5..=300).contains(&timeout) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "responseTimeoutInSeconds must be 5 to 300",
        );
    }
    let payload =
        serde_json::to_vec(request.get("payload").unwrap_or(&Value::Null)).unwrap_or_default();
    if payload.len() > MAX_PAYLOAD {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the payload is larger than 128 KB",
        );
    }
    let target = match module {
        Some(module) => format!("{device}/{module}"),
        None => device.to_owned(),
    };
    let outcome = hub
        .hub_loop
        .call_method(
            target.clone(),
            new_request_id(),
            method.to_owned(),
            payload,
            Duration::from_secs(timeout),
        )
        .await;
    match outcome {
        MethodOutcome::Answered { status, payload } => {
            Json(json!({"status": status, "payload": answer_payload(&payload)})).into_response()
        }
        MethodOutcome::NotListening => refuse(
            StatusCode::NOT_FOUND,
            &format!("{target} is not connected to this edge hub or does not listen for methods"),
        ),
        MethodOutcome::TooManyCalls(max) => {
            refuse(StatusCode::TOO_MANY_REQUESTS, &too_many_calls(max))
        }
        // A fresh random request id.
        MethodOutcome::DuplicateRequestId => refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "a method call with this request id is waiting already",
        ),
        MethodOutcome::TimedOut => refuse(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("{target} did not answer {method} in {timeout} s"),
        ),
    }
}

/// Serves the method API over TLS on `listener` until the process ends, under the limits every Outpost HTTPS
/// listener keeps (`outpost_https`), with at most [`MAX_CONNECTIONS`] connections. `websockets` are the
/// routes served beside it, outside its authorisation (the upgrade to MQTT over WebSocket, whose clients
/// authenticate in CONNECT).
pub async fn serve(
    hub: Arc<EdgeHub>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    websockets: Router,
) {
    outpost_https::serve(
        listener,
        acceptor,
        router(hub).merge(websockets),
        outpost_https::HttpsLimits::with_max_connections(MAX_CONNECTIONS),
        std::future::pending(),
    )
    .await;
}

/// Sends a method call that the hub addressed to a client of this edge hub, under the hub's request id, and
/// returns the client's answer to the hub when it comes. Only the target, on the connection the request went
/// out on, can answer it; a client that is not connected or not listening is answered 404 at once.
pub fn forward(hub: &Arc<EdgeHub>, client: &str, rid: String, method: String, payload: Vec<u8>) {
    let hub = Arc::clone(hub);
    let client = client.to_owned();
    tokio::spawn(async move {
        let outcome = hub
            .hub_loop
            .call_method(
                client.clone(),
                rid.clone(),
                method,
                payload,
                FORWARDED_TIMEOUT,
            )
            .await;
        let answer = match outcome {
            MethodOutcome::Answered { status, payload } => Some((status, answer_payload(&payload))),
            MethodOutcome::NotListening => Some((
                404,
                json!({"message": format!("{client} is not connected to the edge hub")}),
            )),
            MethodOutcome::TooManyCalls(max) => {
                Some((429, json!({"message": too_many_calls(max)})))
            }
            MethodOutcome::DuplicateRequestId => Some((
                429,
                json!({"message": format!("a method call with request id {rid} is waiting already")}),
            )),
            MethodOutcome::TimedOut => None,
        };
        let Some((status, payload)) = answer else {
            return tracing::debug!(%client, rid, "no answer to a method call from the hub");
        };
        if let Err(error) = hub
            .link
            .method_response(&client, &rid, status, &payload)
            .await
        {
            tracing::warn!(%client, rid, %error, "cannot return a method response to the hub");
        }
    });
}
