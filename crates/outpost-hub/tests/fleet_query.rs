//! Fleet operations through the REST routes: queries with paging, the bulk registry operation and statistics,
//! and the twin documents they read (`Twins::documents`).

mod fleet_devices;

use fleet_devices::device_with_tags;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use outpost_core::query::Collection;
use outpost_core::Identity;
use outpost_hub::registry::{ModuleSpec, Precondition};
use outpost_hub::rest::API_VERSIONS;
use outpost_hub::Hub;
use serde_json::{json, Value};
use tower::ServiceExt as _;

/// A new hub and the `iothubowner` token for it.
fn hub() -> (Arc<Hub>, String) {
    let hub = Hub::in_memory("hub.test").unwrap();
    let owner = hub.policy("iothubowner").unwrap();
    let token =
        outpost_core::service_token("hub.test", &owner.name, &owner.primary_key, u64::MAX).unwrap();
    (Arc::new(hub), token)
}

/// An answer: status, headers and JSON body.
struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

/// Calls `method path` as the hub's owner with `headers` and a JSON `body`.
async fn call(
    hub: &Arc<Hub>,
    token: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(format!(
            "{path}?api-version={}",
            API_VERSIONS.last().unwrap()
        ))
        .header("Authorization", token)
        .header("Content-Type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let answer = outpost_hub::rest::router(hub.clone())
        .oneshot(request)
        .await
        .unwrap();
    let (status, headers) = (answer.status(), answer.headers().clone());
    let bytes = axum::body::to_bytes(answer.into_body(), 16 << 20)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// Runs `query` page by page (`page` rows each); every row, and how many pages it took.
async fn query_all(hub: &Arc<Hub>, token: &str, query: &str, page: usize) -> (Vec<Value>, usize) {
    let (mut rows, mut pages, mut continuation) = (Vec::new(), 0, None::<String>);
    let page = page.to_string();
    loop {
        let mut headers = vec![("x-ms-max-item-count", page.as_str())];
        if let Some(token) = &continuation {
            headers.push(("x-ms-continuation", token.as_str()));
        }
        let answer = call(
            hub,
            token,
            "POST",
            "/devices/query",
            &headers,
            Some(json!({ "query": query })),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.headers["x-ms-item-type"], "twin");
        pages += 1;
        rows.extend(answer.body.as_array().unwrap().iter().cloned());
        match answer.headers.get("x-ms-continuation") {
            Some(next) => continuation = Some(next.to_str().unwrap().to_owned()),
            None => return (rows, pages),
        }
    }
}

#[tokio::test]
async fn documents_are_the_rest_twins_of_every_device_or_every_module() {
    let (hub, _) = hub();
    device_with_tags(&hub, "a", json!({"site": "north"})).await;
    device_with_tags(&hub, "b", json!({"site": "south"})).await;
    let module = ModuleSpec {
        device_id: "a".into(),
        module_id: "filter".into(),
        ..ModuleSpec::default()
    };
    hub.registry()
        .put_module(module, &Precondition::CreateOnly)
        .await
        .unwrap();
    let devices = hub.twins().documents(Collection::Devices).await.unwrap();
    let ids: Vec<&str> = devices
        .iter()
        .map(|d| d["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    let single = outpost_hub::twins::twin_json(&hub.twins().twin("a", None).await.unwrap());
    assert_eq!(devices[0], single);
    assert_eq!(devices[1]["tags"], json!({"site": "south"}));
    let modules = hub.twins().documents(Collection::Modules).await.unwrap();
    assert_eq!(modules.len(), 1);
    assert_eq!(modules[0]["moduleId"], "filter");
    assert_eq!(modules[0]["deviceId"], "a");
}

#[tokio::test]
async fn a_query_pages_through_every_matching_twin() {
    let (hub, token) = hub();
    for i in 0..25 {
        let site = if i % 5 == 0 { "south" } else { "north" };
        device_with_tags(&hub, &format!("dev{i:02}"), json!({ "site": site })).await;
    }
    let (rows, pages) = query_all(
        &hub,
        &token,
        "SELECT * FROM devices WHERE tags.site = 'north'",
        6,
    )
    .await;
    assert_eq!(rows.len(), 20);
    assert_eq!(pages, 4);
    let mut ids: Vec<&str> = rows
        .iter()
        .map(|r| r["deviceId"].as_str().unwrap())
        .collect();
    let count = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), count, "no row twice");
    let (all, pages) = query_all(&hub, &token, "SELECT * FROM devices", 100).await;
    assert_eq!((all.len(), pages), (25, 1));
}

#[tokio::test]
async fn a_malformed_query_is_a_400_in_iot_hubs_shape_that_says_where() {
    let (hub, token) = hub();
    let answer = call(
        &hub,
        &token,
        "POST",
        "/devices/query",
        &[],
        Some(json!({"query": "SELECT * FROM devices WHERE"})),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    let message = answer.body["Message"].as_str().unwrap();
    assert!(
        message.starts_with("ErrorCode:ArgumentInvalid;"),
        "{message}"
    );
    assert!(message.contains("column"), "{message}");
    assert!(answer.body["ExceptionMessage"].is_string());
}

#[tokio::test]
async fn a_bad_page_size_or_continuation_token_is_a_400() {
    let (hub, token) = hub();
    let body = json!({"query": "SELECT * FROM devices"});
    for headers in [
        [("x-ms-max-item-count", "0")],
        [("x-ms-continuation", "not-a-token")],
    ] {
        let answer = call(
            &hub,
            &token,
            "POST",
            "/devices/query",
            &headers,
            Some(body.clone()),
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{headers:?}");
    }
}

#[tokio::test]
async fn a_bulk_request_applies_the_good_devices_and_lists_the_bad_ones() {
    let (hub, token) = hub();
    device_with_tags(&hub, "existing", json!({})).await;
    device_with_tags(&hub, "doomed", json!({})).await;
    let devices = json!([
        {"id": "new1", "importMode": "create", "tags": {"site": "north"}},
        {"id": "new2", "importMode": "CreateOrUpdate", "status": "disabled"},
        {"id": "existing", "importMode": "create"},
        {"id": "missing", "importMode": "update"},
        {"id": "doomed", "importMode": "Delete"},
        {"id": "new3", "importMode": "teleport"},
        {"id": "new1", "importMode": "create"},
    ]);
    let answer = call(&hub, &token, "POST", "/devices", &[], Some(devices)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    assert_eq!(answer.body["isSuccessful"], false);
    assert_eq!(answer.body["warnings"], json!([]));
    let mut errors: Vec<(String, String)> = answer.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["deviceId"].as_str().unwrap().to_owned(),
                e["errorCode"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    errors.sort();
    let expected = [
        ("existing", "DeviceAlreadyExists"),
        ("missing", "DeviceNotFound"),
        ("new1", "ArgumentInvalid"),
        ("new3", "ArgumentInvalid"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    assert_eq!(errors, expected);
    let ids: Vec<String> = hub
        .registry()
        .devices()
        .await
        .unwrap()
        .iter()
        .map(|d| d.device_id.to_string())
        .collect();
    assert_eq!(ids, ["existing", "new1", "new2"]);
    let twin = hub.twins().twin("new1", None).await.unwrap();
    assert_eq!(twin.twin.tags()["site"], "north");
    assert!(
        hub.registry().device("missing").await.is_err(),
        "update does not create"
    );
}

#[tokio::test]
async fn a_bulk_request_that_all_succeeds_is_a_200() {
    let (hub, token) = hub();
    let devices: Vec<Value> = (0..100)
        .map(|i| json!({"id": format!("d{i}"), "importMode": "create"}))
        .collect();
    let answer = call(
        &hub,
        &token,
        "POST",
        "/devices",
        &[],
        Some(Value::Array(devices)),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"isSuccessful": true, "errors": [], "warnings": []})
    );
    assert_eq!(hub.registry().devices().await.unwrap().len(), 100);
}

#[tokio::test]
async fn more_than_100_devices_in_one_bulk_request_are_refused_and_none_applied() {
    let (hub, token) = hub();
    let devices: Vec<Value> = (0..101)
        .map(|i| json!({"id": format!("d{i}"), "importMode": "create"}))
        .collect();
    let answer = call(
        &hub,
        &token,
        "POST",
        "/devices",
        &[],
        Some(Value::Array(devices)),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(hub.registry().devices().await.unwrap().is_empty());
}

#[tokio::test]
async fn statistics_count_devices_by_status_and_connected_devices() {
    let (hub, token) = hub();
    let devices = json!([
        {"id": "on1", "importMode": "create"},
        {"id": "on2", "importMode": "create"},
        {"id": "off", "importMode": "create", "status": "disabled"},
    ]);
    let answer = call(&hub, &token, "POST", "/devices", &[], Some(devices)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let answer = call(&hub, &token, "GET", "/statistics/devices", &[], None).await;
    assert_eq!(
        answer.body,
        json!({"totalDeviceCount": 3, "enabledDeviceCount": 2, "disabledDeviceCount": 1})
    );
    let answer = call(&hub, &token, "GET", "/statistics/service", &[], None).await;
    assert_eq!(answer.body, json!({"connectedDeviceCount": 0}));
}

#[tokio::test]
async fn the_service_writes_tags_and_a_device_cannot() {
    let (hub, token) = hub();
    device_with_tags(&hub, "dev1", json!({"site": "north"})).await;
    let patch = json!({"tags": {"site": "south", "floor": 2}});
    let answer = call(
        &hub,
        &token,
        "PATCH",
        "/twins/dev1",
        &[("If-Match", "*")],
        Some(patch),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["tags"], json!({"site": "south", "floor": 2}));
    let replace = json!({"tags": {"only": true}});
    let answer = call(
        &hub,
        &token,
        "PUT",
        "/twins/dev1",
        &[("If-Match", "*")],
        Some(replace),
    )
    .await;
    assert_eq!(answer.body["tags"], json!({"only": true}));
    // A device's reported patch named `tags` is a reported property, never the twin's tags.
    let identity = Identity::device(outpost_core::DeviceId::new("dev1").unwrap());
    hub.twins()
        .report(&identity, &json!({"tags": {"only": false}}))
        .await
        .unwrap();
    let twin = outpost_hub::twins::twin_json(&hub.twins().twin("dev1", None).await.unwrap());
    assert_eq!(twin["tags"], json!({"only": true}));
    assert_eq!(
        twin["properties"]["reported"]["tags"],
        json!({"only": false})
    );
}

#[tokio::test]
async fn projections_and_aggregates_are_raw_rows() {
    let (hub, token) = hub();
    for (i, site) in ["north", "north", "south"].iter().enumerate() {
        device_with_tags(&hub, &format!("dev{i}"), json!({ "site": site })).await;
    }
    let query = |text: &str| {
        let (hub, token) = (hub.clone(), token.clone());
        let body = json!({ "query": text });
        async move { call(&hub, &token, "POST", "/devices/query", &[], Some(body)).await }
    };
    let counted = query("SELECT COUNT() AS n FROM devices WHERE tags.site = 'north'").await;
    assert_eq!(counted.status, StatusCode::OK, "{}", counted.body);
    assert_eq!(counted.headers["x-ms-item-type"], "raw");
    assert_eq!(counted.body, json!([{"n": 2}]));
    let projected = query("SELECT deviceId FROM devices WHERE tags.site = 'south'").await;
    assert_eq!(projected.headers["x-ms-item-type"], "raw");
    assert_eq!(projected.body, json!([{"deviceId": "dev2"}]));
}

#[tokio::test]
async fn a_module_query_reads_module_twins() {
    let (hub, token) = hub();
    device_with_tags(&hub, "dev1", json!({})).await;
    for module in ["alpha", "beta"] {
        let spec = ModuleSpec {
            device_id: "dev1".into(),
            module_id: module.into(),
            ..ModuleSpec::default()
        };
        hub.registry()
            .put_module(spec, &Precondition::CreateOnly)
            .await
            .unwrap();
    }
    let body = json!({"query": "SELECT * FROM devices.modules WHERE moduleId = 'beta'"});
    let answer = call(&hub, &token, "POST", "/devices/query", &[], Some(body)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let rows = answer.body.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0]["deviceId"].as_str(), rows[0]["moduleId"].as_str()),
        (Some("dev1"), Some("beta"))
    );
}
