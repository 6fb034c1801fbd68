//! The REST routes of the upstream link check the link version before anything else: another version, or none,
//! is a 400 in IoT Hub's error shape, never a guess.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use outpost_core::edge_link::{ScopeAnswer, LINK_API_VERSION, LINK_VERSION_PARAM};
use outpost_hub::registry::{DeviceSpec, Precondition};
use outpost_hub::rest::API_VERSIONS;
use outpost_hub::Hub;
use serde_json::Value;
use tower::ServiceExt as _;

/// Calls `GET /edge/edge1/scope` with `link_version` (if any) as the edge device; returns the status and body.
async fn scope_call(link_version: Option<&str>) -> (StatusCode, Value) {
    let hub = Hub::in_memory("hub.test").unwrap();
    let edge = hub
        .put_device(
            &DeviceSpec {
                device_id: "edge1".into(),
                iot_edge: true,
                ..DeviceSpec::default()
            },
            &Precondition::CreateOnly,
        )
        .unwrap();
    let token =
        outpost_core::device_token("hub.test", "edge1", &edge.credentials.primary_key, u64::MAX)
            .unwrap();
    let link_version = link_version
        .map(|version| format!("&{LINK_VERSION_PARAM}={version}"))
        .unwrap_or_default();
    let uri = format!(
        "/edge/edge1/scope?api-version={}{link_version}",
        API_VERSIONS[0]
    );
    let request = Request::get(uri)
        .header("Authorization", token)
        .body(Body::empty())
        .unwrap();
    let answer = outpost_hub::rest::router(Arc::new(hub))
        .oneshot(request)
        .await
        .unwrap();
    let status = answer.status();
    let body = axum::body::to_bytes(answer.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn a_link_call_of_another_version_is_refused_with_a_400_in_iot_hubs_shape() {
    let (status, body) = scope_call(Some("2019-01-01")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["Message"].as_str().unwrap();
    assert!(message.starts_with("ErrorCode:ArgumentInvalid;"), "{body}");
    assert!(message.contains("2019-01-01"), "{body}");
    assert!(message.contains(LINK_API_VERSION), "{body}");
    assert!(body["ExceptionMessage"].is_string(), "{body}");
}

#[tokio::test]
async fn a_link_call_without_a_version_is_refused() {
    let (status, body) = scope_call(None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["Message"]
        .as_str()
        .unwrap()
        .contains(LINK_VERSION_PARAM));
}

#[tokio::test]
async fn a_link_call_of_this_version_is_answered_with_the_contract() {
    let (status, body) = scope_call(Some(LINK_API_VERSION)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let scope: ScopeAnswer = serde_json::from_value(body).unwrap();
    assert!(scope.devices.is_empty());
}
