//! The filter binary run as a process, from its module connection string with `GatewayHostName`.
//!
//! Readings reach a module input only through an edge hub's routes, and the edge hub is not built yet: here
//! they are delivered by the TEST-ONLY gateway of the SDK's test support (the real MQTT protocol head over
//! the real hub, plus delivery to inputs). What the filter sends to `output1` reaches the hub's event
//! stream through the same gateway. What cannot be shown until the edge hub exists: routes written in the
//! deployment manifest, and durable queueing of input messages while the filter is down.

#[path = "../../../crates/outpost-sdk/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use outpost_mqtt::Feature;
use serde_json::{json, Value};
use support::gateway::TestGateway;
use support::{eventually, within, ModuleProcess, TestHub};

const BINARY: &str = env!("CARGO_BIN_EXE_filter");

fn reading(temperature: f64) -> outpost_core::Message {
    let mut message = outpost_core::Message {
        body: json!({
            "machine": {"temperature": temperature, "pressure": 1.0},
            "ambient": {"temperature": 21.0, "humidity": 25},
            "timeCreated": "2026-01-01T00:00:00Z"
        })
        .to_string()
        .into_bytes()
        .into(),
        ..outpost_core::Message::default()
    };
    message
        .system
        .insert("contentType".into(), "application/json".into());
    message
        .system
        .insert("contentEncoding".into(), "utf-8".into());
    message
}

/// The machine temperatures of the alerts the filter sent after event `after`.
async fn alerts(hub: &TestHub, after: i64) -> Vec<f64> {
    hub.events_within(after, Duration::ZERO)
        .await
        .iter()
        .filter(|e| e["moduleId"] == "filter" && e["systemProperties"]["outputName"] == "output1")
        .map(|e| {
            assert_eq!(e["properties"]["MessageType"], "Alert");
            let body: Value = serde_json::from_str(e["body"].as_str().unwrap()).unwrap();
            body["machine"]["temperature"].as_f64().unwrap()
        })
        .collect()
}

fn is_alert_at(temperature: f64) -> impl Fn(&Value) -> bool {
    move |event: &Value| {
        event["moduleId"] == "filter"
            && event["body"]
                .as_str()
                .and_then(|b| serde_json::from_str::<Value>(b).ok())
                .and_then(|b| b["machine"]["temperature"].as_f64())
                .is_some_and(|t| (t - temperature).abs() < 1e-9)
    }
}

#[tokio::test]
async fn the_filter_forwards_only_readings_above_the_threshold_it_reports() {
    let hub = TestHub::start().await;
    let gateway = TestGateway::start(hub.hub(), &hub.config.data_dir).await;
    let connection_string = gateway.connection_string(&hub.create_module("edge-1", "filter").await);
    hub.patch_desired(
        "edge-1",
        Some("filter"),
        json!({"TemperatureThreshold": 30}),
    )
    .await;
    let mut filter =
        ModuleProcess::start(BINARY, &connection_string, &hub.ca_path(), hub.dir.path());

    within("threshold 30 reported", async {
        while hub.reported("edge-1", Some("filter")).await["TemperatureThreshold"] != 30.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    eventually("the filter to listen on its inputs", || {
        gateway.subscribed("edge-1/filter", Feature::Inputs)
    })
    .await;

    let after = hub.newest_event();
    for temperature in [25.0, 35.0, 29.9, 30.0] {
        gateway.send_to_input("edge-1", "filter", "input1", reading(temperature));
    }
    // Another input is not the filter's business, whatever it carries.
    gateway.send_to_input("edge-1", "filter", "input2", reading(99.0));
    gateway.send_to_input("edge-1", "filter", "input1", reading(40.0));
    hub.wait_for_event(after, is_alert_at(40.0)).await;
    assert_eq!(alerts(&hub, after).await, vec![35.0, 40.0]);

    // A new threshold is applied and reported.
    hub.patch_desired(
        "edge-1",
        Some("filter"),
        json!({"TemperatureThreshold": 36.5}),
    )
    .await;
    within("threshold 36.5 reported", async {
        while hub.reported("edge-1", Some("filter")).await["TemperatureThreshold"] != 36.5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let after = hub.newest_event();
    for temperature in [35.0, 36.5, 37.0] {
        gateway.send_to_input("edge-1", "filter", "input1", reading(temperature));
    }
    hub.wait_for_event(after, is_alert_at(37.0)).await;
    assert_eq!(alerts(&hub, after).await, vec![37.0]);

    assert!(filter.running());
    let status = filter.terminate().await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn the_filter_connects_to_the_hub_directly_and_reports_the_default_threshold() {
    let hub = TestHub::start().await;
    let connection_string = hub.create_module("edge-1", "filter").await;
    let filter = ModuleProcess::start(BINARY, &connection_string, &hub.ca_path(), hub.dir.path());
    within("the default threshold reported", async {
        while hub.reported("edge-1", Some("filter")).await["TemperatureThreshold"] != 25.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let status = filter.terminate().await;
    assert!(status.success(), "{status}");
}
