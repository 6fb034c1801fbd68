//! The module binary run as a process against a hub in this process, from its module connection string.

#[path = "../../../crates/outpost-sdk/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use outpost_hub::messaging::MethodCall;
use serde_json::{json, Value};
use support::{within, ModuleProcess, TestHub};

const BINARY: &str = env!("CARGO_BIN_EXE_simulated-temperature-sensor");

fn is_reading(event: &Value) -> bool {
    event["moduleId"] == "sensor" && event["systemProperties"]["outputName"] == "temperatureOutput"
}

fn body(event: &Value) -> Value {
    serde_json::from_str(event["body"].as_str().unwrap()).unwrap()
}

fn method(name: &str) -> MethodCall {
    MethodCall {
        method: name.into(),
        payload: Value::Null,
        response_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn the_sensor_sends_readings_obeys_send_interval_and_send_data_and_answers_reset() {
    let hub = TestHub::start().await;
    let connection_string = hub.create_module("edge-1", "sensor").await;
    hub.patch_desired("edge-1", Some("sensor"), json!({"SendInterval": 0.3}))
        .await;
    let after = hub.newest_event();
    let mut sensor =
        ModuleProcess::start(BINARY, &connection_string, &hub.ca_path(), hub.dir.path());

    // It applies the desired properties and reports what it applies.
    within("SendInterval 0.3 reported", async {
        loop {
            let reported = hub.reported("edge-1", Some("sensor")).await;
            if reported["SendInterval"] == 0.3 && reported["SendData"] == true {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;

    // Readings in the Azure sample's format on temperatureOutput.
    let event = hub.wait_for_event(after, is_reading).await;
    let reading = body(&event);
    assert!(reading["machine"]["temperature"].is_f64(), "{reading}");
    assert!(reading["machine"]["pressure"].is_f64(), "{reading}");
    assert!(reading["ambient"]["temperature"].is_f64(), "{reading}");
    assert!(reading["ambient"]["humidity"].is_u64(), "{reading}");
    assert!(reading["timeCreated"].is_string(), "{reading}");
    assert_eq!(event["systemProperties"]["contentType"], "application/json");
    assert!(event["properties"]["sequenceNumber"].is_string());
    let several = hub.events_within(after, Duration::from_secs(2)).await;
    let count = several.iter().filter(|e| is_reading(e)).count();
    assert!(
        count >= 4,
        "only {count} readings in 2 s at a 0.3 s interval"
    );

    // SendData false stops the readings.
    hub.patch_desired("edge-1", Some("sensor"), json!({"SendData": false}))
        .await;
    within("SendData false reported", async {
        while hub.reported("edge-1", Some("sensor")).await["SendData"] != false {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let quiet_from = hub.newest_event();
    let during_pause = hub.events_within(quiet_from, Duration::from_secs(2)).await;
    assert!(
        !during_pause.iter().any(is_reading),
        "readings while SendData is false: {during_pause:?}"
    );

    // reset cools the machine down; the next reading starts from 21 °C again.
    let (status, payload) = hub
        .hub()
        .messaging()
        .invoke_method("edge-1", Some("sensor"), method("reset"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{payload}");
    let (status, _) = hub
        .hub()
        .messaging()
        .invoke_method("edge-1", Some("sensor"), method("selfDestruct"))
        .await
        .unwrap();
    assert_eq!(status, 404);
    let resumed_from = hub.newest_event();
    hub.patch_desired("edge-1", Some("sensor"), json!({"SendData": true}))
        .await;
    let event = hub.wait_for_event(resumed_from, is_reading).await;
    let temperature = body(&event)["machine"]["temperature"].as_f64().unwrap();
    assert!(temperature <= 22.25, "{temperature} after reset");

    assert!(sensor.running());
    let status = sensor.terminate().await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn the_sensor_exits_with_an_error_when_its_key_is_wrong() {
    let hub = TestHub::start().await;
    let connection_string = hub.create_module("edge-1", "sensor").await;
    let wrong = format!(
        "{};SharedAccessKey=d3Jvbmd3cm9uZ3dyb25nd3Jvbmd3cm9uZ3dyb25nMTI=",
        connection_string.split(";SharedAccessKey=").next().unwrap()
    );
    let mut sensor = ModuleProcess::start(BINARY, &wrong, &hub.ca_path(), hub.dir.path());
    let status = sensor.exited().await;
    assert!(!status.success(), "{status}");
    assert!(sensor.log().contains("not authorized"), "{}", sensor.log());
}
