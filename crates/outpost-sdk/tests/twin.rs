//! The twin API against a running hub: one test body, run once with a DeviceClient and once with a
//! ModuleClient, because a module twin is a device twin opened by another kind of identity.

mod support;

use outpost_sdk::kind::Kind;
use outpost_sdk::{Client, ClientError, DeviceClient, ModuleClient};
use serde_json::json;
use support::{within, TestHub};

/// Reads, patches and follows the twin of whoever `client` is (`device`, `module`).
async fn twin_round_trip<K: Kind>(
    hub: &TestHub,
    client: &Client<K>,
    device: &str,
    module: Option<&str>,
) {
    hub.patch_desired(device, module, json!({"SendInterval": 5}))
        .await;

    // The desired stream starts with the whole document...
    let mut desired = client.desired_properties().await.unwrap();
    let first = within("the whole desired document", desired.next())
        .await
        .unwrap();
    assert!(first.complete);
    assert_eq!(first.get("SendInterval"), Some(&json!(5)));
    assert!(matches!(
        client.desired_properties().await,
        Err(ClientError::AlreadyTaken(_))
    ));

    // ...which is what a twin read says too.
    let twin = client.twin().await.unwrap();
    assert_eq!(twin.desired_version, first.version);
    assert_eq!(twin.desired, first.properties);

    // Reported patches merge, `null` deletes, and the new version comes back.
    let version = client
        .patch_reported(json!({"firmware": "1.0", "nested": {"a": 1}}))
        .await
        .unwrap();
    assert_eq!(version, Some(twin.reported_version + 1));
    assert_eq!(hub.reported(device, module).await["firmware"], "1.0");
    client
        .patch_reported(json!({"firmware": null, "nested": {"b": 2}}))
        .await
        .unwrap();
    let reported = hub.reported(device, module).await;
    assert!(reported.get("firmware").is_none(), "{reported}");
    assert_eq!(reported["nested"], json!({"a": 1, "b": 2}));

    // A desired patch made by the service arrives as that patch, with the next version.
    hub.patch_desired(
        device,
        module,
        json!({"SendInterval": 10, "mode": {"fast": true}}),
    )
    .await;
    let patch = within("a desired patch", desired.next()).await.unwrap();
    assert!(!patch.complete);
    assert_eq!(patch.version, first.version + 1);
    assert_eq!(
        serde_json::Value::Object(patch.properties),
        json!({"SendInterval": 10, "mode": {"fast": true}})
    );

    // A patch that breaks the twin rules is refused, typed, and changes nothing.
    let before = client.twin().await.unwrap();
    let refused = client.patch_reported(json!({"bad.key": 1})).await;
    let Err(ClientError::PatchRejected { status, message }) = refused else {
        panic!("expected a rejected patch, got {refused:?}");
    };
    assert_eq!(status, 400);
    assert!(!message.is_empty());
    assert_eq!(client.twin().await.unwrap(), before);
    assert!(matches!(
        client.patch_reported(json!([1, 2])).await,
        Err(ClientError::PatchRejected { .. })
    ));
}

#[tokio::test]
async fn the_twin_api_works_for_a_device_client() {
    let hub = TestHub::start().await;
    let connection_string = hub.create_device("thermostat-1").await;
    let client = DeviceClient::from_connection_string(&connection_string, hub.options())
        .await
        .unwrap();
    assert_eq!(client.device_id(), "thermostat-1");
    twin_round_trip(&hub, &client, "thermostat-1", None).await;
    client.close().await;
}

#[tokio::test]
async fn the_same_twin_api_works_for_a_module_client() {
    let hub = TestHub::start().await;
    let connection_string = hub.create_module("edge-1", "sensor").await;
    let client = ModuleClient::from_connection_string(&connection_string, hub.options())
        .await
        .unwrap();
    assert_eq!(
        (client.device_id(), client.module_id()),
        ("edge-1", "sensor")
    );
    twin_round_trip(&hub, &client, "edge-1", Some("sensor")).await;
    client.close().await;
}

#[tokio::test]
async fn a_device_twin_and_its_module_twin_are_separate_documents() {
    let hub = TestHub::start().await;
    let device =
        DeviceClient::from_connection_string(&hub.create_device("d1").await, hub.options())
            .await
            .unwrap();
    let module =
        ModuleClient::from_connection_string(&hub.create_module("d1", "m1").await, hub.options())
            .await
            .unwrap();
    device
        .patch_reported(json!({"who": "device"}))
        .await
        .unwrap();
    module
        .patch_reported(json!({"who": "module"}))
        .await
        .unwrap();
    assert_eq!(device.twin().await.unwrap().reported["who"], "device");
    assert_eq!(module.twin().await.unwrap().reported["who"], "module");
}
