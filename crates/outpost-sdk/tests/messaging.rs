//! Telemetry, cloud-to-device messages, direct methods, outputs and inputs against a running hub.

mod support;

use std::time::Duration;

use outpost_hub::messaging::MethodCall as HubMethodCall;
use outpost_sdk::{ClientError, DeviceClient, Message, ModuleClient, MAX_MESSAGE_BYTES};
use serde_json::json;
use support::gateway::TestGateway;
use support::{within, TestHub};

#[tokio::test]
async fn telemetry_reaches_the_event_stream_with_its_system_and_custom_properties() {
    let hub = TestHub::start().await;
    let client =
        DeviceClient::from_connection_string(&hub.create_device("sensor-1").await, hub.options())
            .await
            .unwrap();
    let after = hub.newest_event();
    let message = Message::json(&json!({"temperature": 21.5}))
        .with_message_id("mid-1")
        .with_correlation_id("corr 1")
        .with_property("alert", "true")
        .with_property("sp ace", "a b&c=d/e");
    client.send_telemetry(message).await.unwrap();

    let event = hub
        .wait_for_event(after, |e| e["deviceId"] == "sensor-1")
        .await;
    assert_eq!(event["body"], r#"{"temperature":21.5}"#);
    assert!(event["moduleId"].is_null());
    let system = &event["systemProperties"];
    assert_eq!(system["messageId"], "mid-1");
    assert_eq!(system["correlationId"], "corr 1");
    assert_eq!(system["contentType"], "application/json");
    assert_eq!(system["contentEncoding"], "utf-8");
    assert_eq!(system["connectionDeviceId"], "sensor-1");
    assert_eq!(
        event["properties"],
        json!({"alert": "true", "sp ace": "a b&c=d/e"})
    );
}

#[tokio::test]
async fn a_message_over_the_iot_hub_limit_is_refused_before_sending() {
    let hub = TestHub::start().await;
    let client =
        DeviceClient::from_connection_string(&hub.create_device("big").await, hub.options())
            .await
            .unwrap();
    let refused = client
        .send_telemetry(Message::new(vec![b'x'; MAX_MESSAGE_BYTES + 1]))
        .await;
    assert!(
        matches!(refused, Err(ClientError::MessageTooLarge { .. })),
        "{refused:?}"
    );
    // The connection is unharmed.
    client.send_telemetry(Message::new("small")).await.unwrap();
}

#[tokio::test]
async fn cloud_to_device_messages_arrive_with_their_properties() {
    let hub = TestHub::start().await;
    let client =
        DeviceClient::from_connection_string(&hub.create_device("actuator").await, hub.options())
            .await
            .unwrap();
    // Queued before the device listens: it waits in the hub.
    let mut first = outpost_core::Message {
        body: bytes::Bytes::from_static(b"open valve"),
        ..outpost_core::Message::default()
    };
    first.system.insert("messageId".into(), "c2d-1".into());
    first
        .properties
        .insert("valve".into(), Some("3 & 4".into()));
    hub.hub()
        .messaging()
        .send_c2d("actuator", &first)
        .await
        .unwrap();

    let mut messages = client.cloud_to_device_messages().await.unwrap();
    let received = within("the queued message", messages.next()).await.unwrap();
    assert_eq!(received.body_str(), Some("open valve"));
    assert_eq!(received.message_id(), Some("c2d-1"));
    assert_eq!(received.property("valve"), Some("3 & 4"));

    // Sent while it listens: pushed at once.
    let second = outpost_core::Message {
        body: bytes::Bytes::from_static(b"close valve"),
        ..outpost_core::Message::default()
    };
    hub.hub()
        .messaging()
        .send_c2d("actuator", &second)
        .await
        .unwrap();
    let received = within("the pushed message", messages.next()).await.unwrap();
    assert_eq!(received.body_str(), Some("close valve"));
}

#[tokio::test]
async fn direct_methods_are_answered_with_status_and_payload_for_devices_and_modules() {
    let hub = TestHub::start().await;
    let device =
        DeviceClient::from_connection_string(&hub.create_device("d1").await, hub.options())
            .await
            .unwrap();
    let module =
        ModuleClient::from_connection_string(&hub.create_module("d1", "m1").await, hub.options())
            .await
            .unwrap();
    let mut device_calls = device.direct_methods().await.unwrap();
    let mut module_calls = module.direct_methods().await.unwrap();
    tokio::spawn(async move {
        while let Some(call) = device_calls.next().await {
            let answer = json!({"method": call.name(), "echo": call.payload().clone()});
            call.respond(200, answer).await.unwrap();
        }
    });
    tokio::spawn(async move {
        while let Some(call) = module_calls.next().await {
            call.respond(404, json!({"message": "no such method"}))
                .await
                .unwrap();
        }
    });

    let call = |name: &str, payload| HubMethodCall {
        method: name.into(),
        payload,
        response_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
    };
    let (status, payload) = hub
        .hub()
        .messaging()
        .invoke_method("d1", None, call("reboot", json!({"delay": 1})))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(payload, json!({"method": "reboot", "echo": {"delay": 1}}));
    let (status, payload) = hub
        .hub()
        .messaging()
        .invoke_method("d1", Some("m1"), call("unknown", serde_json::Value::Null))
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert_eq!(payload["message"], "no such method");
}

#[tokio::test]
async fn a_module_output_carries_its_output_name_to_the_event_stream() {
    let hub = TestHub::start().await;
    let module = ModuleClient::from_connection_string(
        &hub.create_module("edge-1", "sensor").await,
        hub.options(),
    )
    .await
    .unwrap();
    let after = hub.newest_event();
    module
        .send_output(
            "temperatureOutput",
            Message::new("21").with_property("unit", "C"),
        )
        .await
        .unwrap();
    let event = hub
        .wait_for_event(after, |e| e["moduleId"] == "sensor")
        .await;
    assert_eq!(event["systemProperties"]["outputName"], "temperatureOutput");
    assert_eq!(event["systemProperties"]["connectionModuleId"], "sensor");
    assert_eq!(event["properties"]["unit"], "C");
}

/// Inputs need someone to route messages to them: the edge hub, which is not built yet. These run through
/// the test-only gateway of `support::gateway` (the real protocol head over a real hub, plus input delivery).
#[tokio::test]
async fn a_module_behind_a_gateway_receives_inputs_and_outputs_are_routed_to_other_modules() {
    let hub = TestHub::start().await;
    let gateway = TestGateway::start(hub.hub(), &hub.config.data_dir).await;
    gateway.route("edge-1", ("sender", "out1"), ("receiver", "in1"));
    let sender = ModuleClient::from_connection_string(
        &gateway.connection_string(&hub.create_module("edge-1", "sender").await),
        hub.options(),
    )
    .await
    .unwrap();
    let receiver = ModuleClient::from_connection_string(
        &gateway.connection_string(&hub.create_module("edge-1", "receiver").await),
        hub.options(),
    )
    .await
    .unwrap();
    let mut inputs = receiver.inputs().await.unwrap();

    gateway.send_to_input(
        "edge-1",
        "receiver",
        "control",
        outpost_core::Message {
            body: bytes::Bytes::from_static(b"direct"),
            ..outpost_core::Message::default()
        },
    );
    let direct = within("a message on input control", inputs.next())
        .await
        .unwrap();
    assert_eq!(direct.input_name(), Some("control"));
    assert_eq!(direct.body_str(), Some("direct"));

    sender
        .send_output("out1", Message::new("routed").with_property("k", "v"))
        .await
        .unwrap();
    let routed = within("a routed message on input in1", inputs.next())
        .await
        .unwrap();
    assert_eq!(routed.input_name(), Some("in1"));
    assert_eq!(routed.body_str(), Some("routed"));
    assert_eq!(routed.property("k"), Some("v"));
    assert_eq!(routed.connection_module_id(), Some("sender"));
    assert_eq!(routed.connection_device_id(), Some("edge-1"));
}
