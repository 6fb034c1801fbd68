//! A direct-method answer that comes back over an edge device's upstream link is taken only for the client the
//! call went to, behind the edge device it went through. An answer sent on behalf of another client (one outside
//! the edge device's scope, or one inside it that is not the target) is dropped: the caller gets the target's
//! own answer, or a timeout, never the forged one.

mod router_call;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use outpost_core::edge_link::{
    AcksRequest, EventsAnswer, LinkEvent, LinkFeature, MethodResponse, PresenceClient,
    PresenceRequest, LINK_API_VERSION, LINK_VERSION_PARAM,
};
use outpost_hub::messaging::MethodCall;
use outpost_hub::registry::{DeviceSpec, ModuleSpec, Precondition};
use outpost_hub::rest::API_VERSIONS;
use outpost_hub::{Hub, HubError};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// One edge device's end of the link: its id and its token.
struct Edge {
    id: &'static str,
    token: String,
}

impl Edge {
    /// Calls the link route `method path` as this edge device; returns the status and body.
    async fn call(
        &self,
        hub: &Arc<Hub>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let separator = if path.contains('?') { '&' } else { '?' };
        let uri = format!(
            "/edge/{}{path}{separator}api-version={}&{LINK_VERSION_PARAM}={LINK_API_VERSION}",
            self.id, API_VERSIONS[0]
        );
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("Authorization", &self.token)
            .header("Content-Type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        router_call::answer(outpost_hub::rest::router(hub.clone()), request).await
    }

    /// Declares `clients` present behind this edge device, each listening for methods.
    async fn present(&self, hub: &Arc<Hub>, clients: &[&str]) {
        let presence = PresenceRequest {
            clients: clients
                .iter()
                .map(|id| PresenceClient {
                    id: (*id).to_owned(),
                    features: vec![LinkFeature::Methods],
                })
                .collect(),
        };
        let (status, body) = self
            .call(
                hub,
                "POST",
                "/presence",
                Some(serde_json::to_value(presence).unwrap()),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// Waits for the method request pushed to `client` behind this edge device; returns its request id.
    async fn method_request_for(&self, hub: &Arc<Hub>, client: &str) -> String {
        let (status, body) = self.call(hub, "GET", "/events?waitSecs=10", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let answer: EventsAnswer = serde_json::from_value(body).unwrap();
        match answer.events.as_slice() {
            [LinkEvent::Method {
                client: to, rid, ..
            }] if to == client => rid.clone(),
            other => panic!("expected one method request for {client}, got {other:?}"),
        }
    }

    /// Sends `answers` in one acks request; returns the status.
    async fn answer(&self, hub: &Arc<Hub>, answers: Vec<MethodResponse>) -> StatusCode {
        let acks = AcksRequest {
            delivered: Vec::new(),
            method_responses: answers,
        };
        let body = serde_json::to_value(acks).unwrap();
        self.call(hub, "POST", "/acks", Some(body)).await.0
    }
}

fn answer(client: &str, rid: &str, status: i32, payload: Value) -> MethodResponse {
    MethodResponse {
        client: client.to_owned(),
        rid: rid.to_owned(),
        status,
        payload,
    }
}

/// A hub with two edge devices: `edge1` (modules `filter` and `other`, child device `leaf`) and `edge2` (module
/// `filter`), and an unrelated device `stranger`; each edge device has declared all of its clients present.
async fn hub_with_two_edges() -> (Arc<Hub>, Edge, Edge) {
    let hub = Hub::in_memory("hub.test").unwrap();
    let mut tokens = Vec::new();
    for (id, iot_edge, parent) in [
        ("edge1", true, None),
        ("edge2", true, None),
        ("leaf", false, Some("edge1")),
        ("stranger", false, None),
    ] {
        let spec = DeviceSpec {
            device_id: id.into(),
            iot_edge,
            parent: parent.map(str::to_owned),
            ..DeviceSpec::default()
        };
        let record = hub
            .registry()
            .put_device(&spec, &Precondition::CreateOnly)
            .await
            .unwrap();
        tokens.push(
            outpost_core::device_token("hub.test", id, &record.credentials.primary_key, u64::MAX)
                .unwrap(),
        );
    }
    for (device, module) in [("edge1", "filter"), ("edge1", "other"), ("edge2", "filter")] {
        hub.registry()
            .put_module(
                ModuleSpec {
                    device_id: device.into(),
                    module_id: module.into(),
                    ..ModuleSpec::default()
                },
                &Precondition::CreateOnly,
            )
            .await
            .unwrap();
    }
    let hub = Arc::new(hub);
    let edge1 = Edge {
        id: "edge1",
        token: tokens.remove(0),
    };
    let edge2 = Edge {
        id: "edge2",
        token: tokens.remove(0),
    };
    edge1
        .present(&hub, &["edge1/filter", "edge1/other", "leaf"])
        .await;
    edge2.present(&hub, &["edge2/filter"]).await;
    (hub, edge1, edge2)
}

/// Invokes `reboot` on `edge1/filter` in the background, waiting `timeout` for the answer.
fn call_filter(hub: &Arc<Hub>, timeout: Duration) -> JoinHandle<Result<(i32, Value), HubError>> {
    let hub = hub.clone();
    tokio::spawn(async move {
        hub.messaging()
            .invoke_method(
                "edge1",
                Some("filter"),
                MethodCall {
                    method: "reboot".into(),
                    payload: json!({"delay": 1}),
                    response_timeout: timeout,
                    connect_timeout: Duration::ZERO,
                },
            )
            .await
    })
}

/// Every way a forged answer to `rid` can come over the link: from `edge1` for a client in its scope that is not
/// the target, for a client outside its scope, and from `edge2` for its own module and for the real target.
async fn forge_every_way(hub: &Arc<Hub>, edge1: &Edge, edge2: &Edge, rid: &str) {
    let forged = |client: &str| answer(client, rid, 666, json!({"forged": client}));
    // In edge1's scope but not the target: the hub drops it quietly (the edge cannot tell it apart from a
    // late answer), the request as a whole is fine.
    for client in ["edge1/other", "leaf", "edge1"] {
        let status = edge1.answer(hub, vec![forged(client)]).await;
        assert_eq!(status, StatusCode::OK, "{client}");
    }
    // Outside edge1's scope: refused.
    for client in ["stranger", "edge2/filter", "edge1/ghost", "leaf/m"] {
        let status = edge1.answer(hub, vec![forged(client)]).await;
        assert!(status.is_client_error(), "{client}: {status}");
    }
    // Another edge device answering for the real target (outside its scope), or for its own module.
    let status = edge2.answer(hub, vec![forged("edge1/filter")]).await;
    assert!(status.is_client_error(), "edge2 for edge1/filter: {status}");
    let status = edge2.answer(hub, vec![forged("edge2/filter")]).await;
    assert_eq!(status, StatusCode::OK, "edge2 for edge2/filter");
}

#[tokio::test]
async fn forged_answers_over_the_link_are_dropped_and_the_caller_gets_the_targets_answer() {
    let (hub, edge1, edge2) = hub_with_two_edges().await;
    let call = call_filter(&hub, Duration::from_secs(30));
    let rid = edge1.method_request_for(&hub, "edge1/filter").await;

    forge_every_way(&hub, &edge1, &edge2, &rid).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!call.is_finished(), "a forged answer completed the call");

    // A forged answer in the same request as the real one, before it, changes nothing either.
    let status = edge1
        .answer(
            &hub,
            vec![
                answer("edge1/other", &rid, 666, json!({"forged": "edge1/other"})),
                answer("edge1/filter", &rid, 200, json!({"rebooted": true})),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, payload) = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the target's answer completes the call")
        .unwrap()
        .unwrap();
    assert_eq!((status, payload), (200, json!({"rebooted": true})));

    // The call is settled: a late answer, even the target's own, is dropped.
    let status = edge1
        .answer(&hub, vec![answer("edge1/filter", &rid, 500, json!(null))])
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn an_answer_for_a_client_outside_the_scope_does_not_sink_the_real_answer_in_the_same_request(
) {
    let (hub, edge1, _) = hub_with_two_edges().await;
    let call = call_filter(&hub, Duration::from_secs(30));
    let rid = edge1.method_request_for(&hub, "edge1/filter").await;

    // One request of the link carries answers of many clients; one of them outside the edge device's scope
    // (forged, or deleted at the hub since) is dropped, the others are taken.
    let status = edge1
        .answer(
            &hub,
            vec![
                answer("stranger", &rid, 666, json!({"forged": "stranger"})),
                answer("edge1/filter", &rid, 200, json!({"rebooted": true})),
            ],
        )
        .await;
    let (status_code, payload) = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the target's answer completes the call")
        .unwrap()
        .unwrap();
    assert_eq!((status_code, payload), (200, json!({"rebooted": true})));
    // The edge still hears that an entry was refused.
    assert!(status.is_client_error(), "{status}");
}

#[tokio::test]
async fn a_call_answered_only_by_forgers_times_out() {
    let (hub, edge1, edge2) = hub_with_two_edges().await;
    let call = call_filter(&hub, Duration::from_secs(3));
    let rid = edge1.method_request_for(&hub, "edge1/filter").await;

    forge_every_way(&hub, &edge1, &edge2, &rid).await;
    let outcome = tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .expect("the call ends at its response timeout")
        .unwrap();
    assert!(
        matches!(&outcome, Err(e @ HubError::GatewayTimeout(_)) if e.status() == 504),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn an_answer_with_a_guessed_request_id_is_dropped() {
    let (hub, edge1, _) = hub_with_two_edges().await;
    let call = call_filter(&hub, Duration::from_secs(30));
    let rid = edge1.method_request_for(&hub, "edge1/filter").await;

    // The target itself, but a request id it was never sent: a neighbouring number, or an empty one.
    let guesses: Vec<String> = match rid.parse::<u64>() {
        Ok(n) => vec![n.wrapping_add(1).to_string(), n.wrapping_sub(1).to_string()],
        Err(_) => vec![format!("{rid}0"), "1".to_owned()],
    };
    for guess in guesses.iter().map(String::as_str).chain([""]) {
        let status = edge1
            .answer(&hub, vec![answer("edge1/filter", guess, 666, json!(null))])
            .await;
        assert_eq!(status, StatusCode::OK, "{guess}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !call.is_finished(),
        "an answer with a guessed rid completed the call"
    );

    edge1
        .answer(&hub, vec![answer("edge1/filter", &rid, 201, json!("done"))])
        .await;
    let (status, payload) = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((status, payload), (201, json!("done")));
}
