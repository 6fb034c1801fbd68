//! The hub's side of the upstream link's contract, through its REST routes.
//!
//! Every link route checks the link version before anything else: another version, or none, is a 400 in IoT
//! Hub's error shape, never a guess. And the hub refuses the long poll of an edge device that has not declared
//! its presence to this hub process: a restarted hub has forgotten the edge's clients, and a poll it answered
//! would wait for pushes that never come.

mod router_call;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use outpost_core::edge_link::{
    EventsAnswer, LinkRefusal, LinkRefusalCode, PresenceRequest, ScopeAnswer, LINK_API_VERSION,
    LINK_REFUSAL_STATUS, LINK_VERSION_PARAM,
};
use outpost_hub::registry::{DeviceSpec, Precondition};
use outpost_hub::rest::API_VERSIONS;
use outpost_hub::Hub;
use serde_json::Value;

/// `hub` with the edge device `edge1`, and that device's token.
async fn hub_with_edge(hub: Hub) -> (Arc<Hub>, String) {
    let edge = hub
        .registry()
        .put_device(
            &DeviceSpec {
                device_id: "edge1".into(),
                iot_edge: true,
                ..DeviceSpec::default()
            },
            &Precondition::CreateOnly,
        )
        .await
        .unwrap();
    let token =
        outpost_core::device_token("hub.test", "edge1", &edge.credentials.primary_key, u64::MAX)
            .unwrap();
    (Arc::new(hub), token)
}

/// Calls the link route `method path` as the edge device, with this link version; returns the status and body.
async fn call(
    hub: &Arc<Hub>,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    call_as_version(hub, token, method, path, body, Some(LINK_API_VERSION)).await
}

/// [`call`] with `link_version` (if any) as the link version.
async fn call_as_version(
    hub: &Arc<Hub>,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    link_version: Option<&str>,
) -> (StatusCode, Value) {
    let separator = if path.contains('?') { '&' } else { '?' };
    let link_version = link_version
        .map(|version| format!("&{LINK_VERSION_PARAM}={version}"))
        .unwrap_or_default();
    let uri = format!(
        "/edge/edge1{path}{separator}api-version={}{link_version}",
        API_VERSIONS[0]
    );
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("Authorization", token)
        .header("Content-Type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    router_call::answer(outpost_hub::rest::router(hub.clone()), request).await
}

/// `GET /scope` with `link_version` (if any) on a new hub.
async fn scope_call(link_version: Option<&str>) -> (StatusCode, Value) {
    let (hub, token) = hub_with_edge(Hub::in_memory("hub.test").unwrap()).await;
    call_as_version(&hub, &token, "GET", "/scope", None, link_version).await
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

#[tokio::test]
async fn a_long_poll_before_any_presence_is_refused_with_a_presence_refusal() {
    let (hub, token) = hub_with_edge(Hub::in_memory("hub.test").unwrap()).await;
    let (status, body) = call(&hub, &token, "GET", "/events?waitSecs=0", None).await;
    assert_eq!(status.as_u16(), LINK_REFUSAL_STATUS, "{body}");
    let refusal: LinkRefusal = serde_json::from_value(body).unwrap();
    assert_eq!(refusal.code, LinkRefusalCode::PresenceRequired);
}

#[tokio::test]
async fn a_long_poll_after_a_presence_is_answered_even_when_no_client_is_declared() {
    let (hub, token) = hub_with_edge(Hub::in_memory("hub.test").unwrap()).await;
    let presence = serde_json::to_value(PresenceRequest { clients: vec![] }).unwrap();
    let (status, body) = call(&hub, &token, "POST", "/presence", Some(presence)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&hub, &token, "GET", "/events?waitSecs=0", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: EventsAnswer = serde_json::from_value(body).unwrap();
    assert!(answer.events.is_empty());
}

#[tokio::test]
async fn a_restarted_hub_asks_again_for_the_presence_the_last_one_was_told() {
    let data = tempfile::tempdir().unwrap();
    let (hub, token) = hub_with_edge(Hub::open(data.path(), "hub.test").unwrap()).await;
    let presence = serde_json::to_value(PresenceRequest { clients: vec![] }).unwrap();
    let (status, _) = call(&hub, &token, "POST", "/presence", Some(presence)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&hub, &token, "GET", "/events?waitSecs=0", None).await;
    assert_eq!(status, StatusCode::OK);
    drop(hub);
    // The same registry in a new process: the edge device and its token are still good, its presence is gone.
    let restarted = Arc::new(Hub::open(data.path(), "hub.test").unwrap());
    let (status, body) = call(&restarted, &token, "GET", "/events?waitSecs=0", None).await;
    assert_eq!(status.as_u16(), LINK_REFUSAL_STATUS, "{body}");
}

#[tokio::test]
async fn a_hub_that_stops_answers_the_long_polls_in_progress_at_once() {
    let (hub, token) = hub_with_edge(Hub::in_memory("hub.test").unwrap()).await;
    let presence = serde_json::to_value(PresenceRequest { clients: vec![] }).unwrap();
    let (status, _) = call(&hub, &token, "POST", "/presence", Some(presence)).await;
    assert_eq!(status, StatusCode::OK);
    let poll = {
        let (hub, token) = (hub.clone(), token.clone());
        tokio::spawn(async move { call(&hub, &token, "GET", "/events?waitSecs=60", None).await })
    };
    tokio::task::yield_now().await;
    hub.stop_long_polls();
    // Without the stop, the poll would hold its connection (and the hub's shutdown) for 60 s.
    let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(30), poll)
        .await
        .expect("the long poll ends when the hub stops")
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: EventsAnswer = serde_json::from_value(body).unwrap();
    assert!(answer.events.is_empty());
}
