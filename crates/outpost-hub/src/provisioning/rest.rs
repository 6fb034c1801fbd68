//! The REST variant of DPS's device protocol on the provisioning host's HTTPS port:
//! `PUT /{idScope}/registrations/{registrationId}/register` (a registration) and
//! `GET /{idScope}/registrations/{registrationId}/operations/{operationId}` (its status), each authorised by
//! the registration's SAS token in `Authorization` or, without one, by the X.509 certificate the client presented
//! at the TLS handshake (the listener asks for an optional one; `outpost_https::ClientCertificateChain`). They run
//! the very operations the MQTT head runs ([`HubProvisioning`]), so both variants answer alike; a refused proof is
//! a 401 with DPS's error body.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use outpost_https::ClientCertificateChain;
use outpost_mqtt::provisioning::{ProvisioningAnswer, ProvisioningOperations, MAX_PACKET_SIZE};

use super::head::HubProvisioning;

/// The provisioning host's HTTPS routes.
pub fn router(backend: Arc<HubProvisioning>) -> Router {
    Router::new()
        .route(
            "/{scope}/registrations/{registration}/register",
            put(register),
        )
        .route(
            "/{scope}/registrations/{registration}/operations/{operation}",
            get(operation_status),
        )
        .layer(DefaultBodyLimit::max(MAX_PACKET_SIZE))
        .with_state(backend)
}

type Backend = State<Arc<HubProvisioning>>;

/// The client certificate chain of the request's connection, if it presented one.
type Chain = Option<Extension<ClientCertificateChain>>;

async fn attested(
    backend: &HubProvisioning,
    scope: &str,
    registration: &str,
    headers: &HeaderMap,
    chain: &Chain,
) -> Result<super::attest::Attested, Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let chain = chain
        .as_ref()
        .map_or(&[][..], |Extension(chain)| &chain.0[..]);
    backend
        .authenticate(scope, registration, token, chain)
        .await
        .map_err(|refusal| {
            let (status, code) = match refusal {
                outpost_mqtt::ConnectRefusal::ServerUnavailable => (503, 503_000),
                _ => (401, 401_002),
            };
            let body = serde_json::json!({
                "errorCode": code,
                "trackingId": registration,
                "message": format!("{refusal}"),
            });
            answer(ProvisioningAnswer {
                status,
                retry_after: None,
                body: body.to_string().into_bytes(),
            })
        })
}

fn answer(answer: ProvisioningAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        answer.body,
    )
        .into_response();
    if let Some(seconds) = answer.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

async fn register(
    State(backend): Backend,
    Path((scope, registration)): Path<(String, String)>,
    headers: HeaderMap,
    chain: Chain,
    body: Bytes,
) -> Response {
    match attested(&backend, &scope, &registration, &headers, &chain).await {
        Ok(attested) => answer(backend.register(&attested, &body).await),
        Err(refused) => refused,
    }
}

async fn operation_status(
    State(backend): Backend,
    Path((scope, registration, operation)): Path<(String, String, String)>,
    headers: HeaderMap,
    chain: Chain,
) -> Response {
    match attested(&backend, &scope, &registration, &headers, &chain).await {
        Ok(attested) => answer(backend.operation_status(&attested, &operation).await),
        Err(refused) => refused,
    }
}
