//! The edge hub's HTTPS method API (AZURE-COMPAT §1.6): a module invokes a direct method on another module of
//! this device, or on a device behind it, through its gateway, even while the hub is unreachable.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use outpost_core::Identity;
use outpost_mqtt::{Feature, Outgoing};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::EdgeHub;

/// Largest method payload (128 KiB).
const MAX_PAYLOAD: usize = 128 * 1024;

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"message": message}))).into_response()
}

/// The method API's routes.
pub fn router(hub: Arc<EdgeHub>) -> Router {
    Router::new()
        .route("/twins/{device}/methods", post(invoke_device))
        .route(
            "/twins/{device}/modules/{module}/methods",
            post(invoke_module),
        )
        .with_state(hub)
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
    let Some(outbox) = hub
        .outbox(&target)
        .filter(|o| o.subscribed(Feature::Methods))
    else {
        return refuse(
            StatusCode::NOT_FOUND,
            &format!("{target} is not connected to this edge hub or does not listen for methods"),
        );
    };
    let rid = hub.next_rid();
    let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
    super::lock(&hub.pending_methods).insert(rid.clone(), answer_tx);
    outbox.send(Outgoing::MethodRequest {
        rid: rid.clone(),
        method: method.to_owned(),
        payload,
    });
    let answer = tokio::time::timeout(Duration::from_secs(timeout), answer_rx).await;
    super::lock(&hub.pending_methods).remove(&rid);
    match answer {
        Ok(Ok((status, payload))) => {
            let payload: Value = if payload.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                serde_json::from_slice(&payload).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&payload).into_owned())
                })
            };
            Json(json!({"status": status, "payload": payload})).into_response()
        }
        _ => refuse(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("{target} did not answer {method} in {timeout} s"),
        ),
    }
}

/// Serves the method API over TLS on `listener` until the process ends.
pub async fn serve(hub: Arc<EdgeHub>, listener: TcpListener, acceptor: TlsAcceptor) {
    let app = router(hub);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
            else {
                return tracing::debug!(%peer, "method API: TLS handshake failed");
            };
            let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "method API connection ended with an error");
            }
        });
    }
}
