//! Losing the hub: the client reconnects with back-off, resends what was not acknowledged, and delivers the
//! desired change made while it was away exactly once. Tokens are renewed by reconnecting.

mod support;

use std::time::Duration;

use outpost_mqtt::Feature;
use outpost_sdk::kind::Kind;
use outpost_sdk::{Client, ClientOptions, ConnectionStatus, DeviceClient, Message, ModuleClient};
use serde_json::json;
use support::gateway::TestGateway;
use support::{within, TestHub};

async fn wait_status<K: Kind>(client: &Client<K>, wanted: ConnectionStatus) {
    let mut status = client.status_changes();
    within(
        &format!("status {wanted:?}"),
        status.wait_for(|s| *s == wanted),
    )
    .await
    .unwrap();
}

/// Restarts the hub under a connected client and checks what it got: the body of the test for both kinds.
async fn restart_under<K: Kind>(
    hub: &mut TestHub,
    client: &Client<K>,
    device: &str,
    module: Option<&str>,
) {
    let mut desired = client.desired_properties().await.unwrap();
    let first = within("the desired document", desired.next())
        .await
        .unwrap();
    hub.patch_desired(device, module, json!({"a": 1})).await;
    let live = within("a live patch", desired.next()).await.unwrap();
    assert_eq!(live.version, first.version + 1);

    let after = hub.newest_event();
    hub.stop().await;
    wait_status(client, ConnectionStatus::Disconnected).await;
    hub.patch_desired_while_stopped(device, module, json!({"b": 2, "a": null}))
        .await;
    // Sent while the hub is down: it waits for the next connection.
    let sending = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .send_telemetry(Message::new("sent while the hub was down"))
                .await
        })
    };
    let reporting = {
        let client = client.clone();
        tokio::spawn(async move { client.patch_reported(json!({"offline": true})).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    hub.start_again().await;
    wait_status(client, ConnectionStatus::Connected).await;

    // The change made while away arrives once, as the difference, with its version.
    let missed = within("the missed desired change", desired.next())
        .await
        .unwrap();
    assert!(!missed.complete);
    assert_eq!(missed.version, live.version + 1);
    assert_eq!(
        serde_json::Value::Object(missed.properties),
        json!({"b": 2, "a": null})
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        desired.try_next(),
        None,
        "the missed change was delivered twice"
    );

    // What was sent while down got through.
    within("the telemetry sent while down", sending)
        .await
        .unwrap()
        .unwrap();
    within("the reported patch made while down", reporting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hub.reported(device, module).await["offline"], true);
    hub.wait_for_event(after, |e| e["body"] == "sent while the hub was down")
        .await;

    // And live patches flow again, exactly once each.
    hub.patch_desired(device, module, json!({"c": 3})).await;
    let next = within("a live patch after the restart", desired.next())
        .await
        .unwrap();
    assert_eq!(next.version, missed.version + 1);
    assert_eq!(next.get("c"), Some(&json!(3)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(desired.try_next(), None);
}

#[tokio::test]
async fn a_device_client_survives_a_hub_restart_and_gets_the_missed_desired_change_once() {
    let mut hub = TestHub::start().await;
    let client =
        DeviceClient::from_connection_string(&hub.create_device("d1").await, hub.options())
            .await
            .unwrap();
    restart_under(&mut hub, &client, "d1", None).await;
}

#[tokio::test]
async fn a_module_client_survives_a_hub_restart_and_gets_the_missed_desired_change_once() {
    let mut hub = TestHub::start().await;
    let client =
        ModuleClient::from_connection_string(&hub.create_module("e1", "m1").await, hub.options())
            .await
            .unwrap();
    restart_under(&mut hub, &client, "e1", Some("m1")).await;
}

#[tokio::test]
async fn method_calls_and_cloud_to_device_messages_resume_after_a_restart() {
    let mut hub = TestHub::start().await;
    let client =
        DeviceClient::from_connection_string(&hub.create_device("d2").await, hub.options())
            .await
            .unwrap();
    let mut calls = client.direct_methods().await.unwrap();
    let mut messages = client.cloud_to_device_messages().await.unwrap();
    hub.stop().await;
    wait_status(&client, ConnectionStatus::Disconnected).await;
    hub.start_again().await;
    wait_status(&client, ConnectionStatus::Connected).await;

    let message = outpost_core::Message {
        body: bytes::Bytes::from_static(b"after restart"),
        ..outpost_core::Message::default()
    };
    hub.hub()
        .messaging()
        .send_c2d("d2", &message)
        .await
        .unwrap();
    let received = within("a C2D message after the restart", messages.next())
        .await
        .unwrap();
    assert_eq!(received.body_str(), Some("after restart"));

    let answering = tokio::spawn(async move {
        let call = calls.next().await.unwrap();
        call.respond(200, json!("pong")).await.unwrap();
    });
    let call = outpost_hub::messaging::MethodCall {
        method: "ping".into(),
        payload: serde_json::Value::Null,
        response_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
    };
    let (status, payload) = hub
        .hub()
        .messaging()
        .invoke_method("d2", None, call)
        .await
        .unwrap();
    assert_eq!((status, payload), (200, json!("pong")));
    answering.await.unwrap();
}

#[tokio::test]
async fn a_token_is_renewed_by_reconnecting_before_it_expires() {
    let hub = TestHub::start().await;
    let gateway = TestGateway::start(hub.hub(), &hub.config.data_dir).await;
    let options = ClientOptions {
        token_ttl: Duration::from_secs(4),
        ..hub.options()
    };
    let client = ModuleClient::from_connection_string(
        &gateway.connection_string(&hub.create_module("e1", "short-lived").await),
        options,
    )
    .await
    .unwrap();
    let mut desired = client.desired_properties().await.unwrap();
    within("the desired document", desired.next())
        .await
        .unwrap();
    let first = gateway.connection("e1/short-lived").unwrap();

    // Renewed after three quarters of its life, twice within eight seconds.
    let mut seen = vec![first];
    within("two renewals", async {
        while seen.len() < 3 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Some(connection) = gateway.connection("e1/short-lived") {
                if !seen.contains(&connection)
                    && gateway.subscribed("e1/short-lived", Feature::DesiredPatches)
                {
                    seen.push(connection);
                }
            }
        }
    })
    .await;
    assert_eq!(client.status(), ConnectionStatus::Connected);
    client
        .patch_reported(json!({"still": "working"}))
        .await
        .unwrap();
    hub.patch_desired("e1", Some("short-lived"), json!({"x": 1}))
        .await;
    let patch = within("a patch after renewals", desired.next())
        .await
        .unwrap();
    assert_eq!(patch.get("x"), Some(&json!(1)));
}
