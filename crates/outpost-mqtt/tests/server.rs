//! The device protocol end to end: `serve()` on 127.0.0.1 with real TLS, driven by the crate's client,
//! against `FakeBackend`, an in-memory test double of the hub.

mod common;

use common::{FakeBackend, Server, WAIT};
use outpost_core::Message;
use outpost_mqtt::{
    Client, ClientError, ConnectReturnCode, Feature, Outgoing, Packet, PubAck, Publish, QoS,
    SubscribeReturnCode,
};
use serde_json::{json, Value};

async fn next(client: &mut Client) -> Publish {
    tokio::time::timeout(WAIT, client.recv())
        .await
        .expect("a publish in time")
        .expect("connection open")
}

fn json_of(publish: &Publish) -> Value {
    serde_json::from_slice(&publish.payload).unwrap()
}

#[tokio::test]
async fn an_unknown_identity_is_refused_with_return_code_5() {
    let server = Server::start().await;
    let refused = server
        .try_client("stranger", &FakeBackend::token("stranger"), false)
        .await;
    assert!(
        matches!(
            refused,
            Err(ClientError::Refused(ConnectReturnCode::NotAuthorized))
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_bad_token_is_refused_with_return_code_4() {
    let server = Server::start().await;
    server.backend.allow("devA");
    let refused = server
        .try_client("devA", "SharedAccessSignature sig=forged", false)
        .await;
    assert!(
        matches!(
            refused,
            Err(ClientError::Refused(
                ConnectReturnCode::BadUserNameOrPassword
            ))
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_username_naming_another_client_is_refused_with_return_code_4() {
    let server = Server::start().await;
    server.backend.allow("devA");
    let refused = outpost_mqtt::Client::connect(
        server.addr,
        common::HOST,
        server.tls.client.clone(),
        "devA",
        Some("localhost/devB/?api-version=2019-10-01"),
        Some(&FakeBackend::token("devA")),
        60,
        false,
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(ClientError::Refused(
                ConnectReturnCode::BadUserNameOrPassword
            ))
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_client_offering_only_tls_1_2_connects() {
    let server = Server::start().await;
    server.backend.allow("devA");
    let username = "localhost/devA/?api-version=2019-10-01";
    let tls12 = server.tls.client_tls12_only();
    let client = Client::connect(
        server.addr,
        "localhost",
        tls12,
        "devA",
        Some(username),
        Some(&FakeBackend::token("devA")),
        60,
        false,
    )
    .await;
    assert!(client.is_ok(), "{:?}", client.err());
}

#[tokio::test]
async fn a_twin_get_is_answered_without_a_twin_response_subscription() {
    let server = Server::start().await;
    let mut client = server.client("devA", false).await;
    client
        .publish(
            "$iothub/twin/GET/?$rid=14b7878e",
            QoS::AtLeastOnce,
            &b" "[..],
        )
        .await
        .unwrap();
    let response = next(&mut client).await;
    assert_eq!(response.topic, "$iothub/twin/res/200/?$rid=14b7878e");
    assert_eq!(json_of(&response)["desired"]["$version"], 4);
}

#[tokio::test]
async fn a_reported_patch_is_answered_on_204_with_the_new_version() {
    let server = Server::start().await;
    let mut client = server.client("dev1/mod1", false).await;
    client
        .subscribe("$iothub/twin/res/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let patch = br#"{"status": "ok", "nested": {"a": 1}, "gone": null}"#;
    client
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=68c120c5",
            QoS::AtLeastOnce,
            &patch[..],
        )
        .await
        .unwrap();
    let response = next(&mut client).await;
    assert_eq!(
        response.topic,
        "$iothub/twin/res/204/?$rid=68c120c5&$version=1"
    );
    assert!(response.payload.is_empty());
}

#[tokio::test]
async fn a_refused_reported_patch_is_answered_with_its_status() {
    let server = Server::start().await;
    let mut client = server.client("devA", true).await;
    client
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=r",
            QoS::AtLeastOnce,
            &b"[1]"[..],
        )
        .await
        .unwrap();
    assert_eq!(
        next(&mut client).await.topic,
        "$iothub/twin/res/400/?$rid=r"
    );
}

#[tokio::test]
async fn a_desired_patch_is_delivered_only_after_the_client_subscribes() {
    let server = Server::start().await;
    let mut client = server.client("devA", false).await;
    let patch = || Outgoing::DesiredPatch {
        body: json!({"threshold": 30, "$version": 5}),
    };
    assert!(
        !server
            .backend
            .push("devA", Feature::DesiredPatches, patch())
            .await,
        "not subscribed yet"
    );
    // Even a backend that pushes regardless is not relayed.
    let early = Outgoing::DesiredPatch {
        body: json!({"threshold": 28, "$version": 4}),
    };
    assert!(server.backend.outbox("devA").await.send(early));
    // A round trip, so the connection has handled the early push before the SUBSCRIBE.
    client
        .publish(
            "devices/devA/messages/events/",
            QoS::AtLeastOnce,
            &b"sync"[..],
        )
        .await
        .unwrap();

    let granted = client
        .subscribe("$iothub/twin/PATCH/properties/desired/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(granted, SubscribeReturnCode::Success(QoS::AtLeastOnce));
    assert!(
        server
            .backend
            .push("devA", Feature::DesiredPatches, patch())
            .await
    );
    let delivered = next(&mut client).await;
    assert_eq!(
        delivered.topic,
        "$iothub/twin/PATCH/properties/desired/?$version=5"
    );
    assert_eq!(json_of(&delivered), json!({"threshold": 30, "$version": 5}));
}

#[tokio::test]
async fn telemetry_reaches_the_backend_with_its_properties_before_the_puback() {
    let server = Server::start().await;
    let client = server.client("dev1/mod1", false).await;
    let topic = "devices/dev1/modules/mod1/messages/events/%24.on=output1&%24.mid=mid-1&%24.cid=corr-1&%24.ct=application%2Fjson&%24.ce=utf-8&alert=true&sp%20ace=a%20b%26c%3Dd%2Fe";
    client
        .publish(topic, QoS::AtLeastOnce, &br#"{"temp": 20}"#[..])
        .await
        .unwrap();
    // The PUBACK came back, so the backend already has the message.
    let messages = server
        .backend
        .wait_for("the message", |v| Some(v.messages()))
        .await;
    let (sender, message) = &messages[0];
    assert_eq!(sender, "dev1/mod1");
    assert_eq!(&message.body[..], br#"{"temp": 20}"#);
    assert_eq!(message.system["outputName"], "output1");
    assert_eq!(message.system["correlationId"], "corr-1");
    assert_eq!(message.properties["sp ace"], Some("a b&c=d/e".to_owned()));
    client
        .publish(
            "devices/dev1/modules/mod1/messages/events/",
            QoS::AtLeastOnce,
            &b"plain telemetry"[..],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn telemetry_the_backend_refuses_is_not_acknowledged_and_the_connection_closes() {
    let server = Server::start().await;
    server.backend.refuse_messages();
    let mut client = server.client("devA", false).await;
    let sent = client
        .publish("devices/devA/messages/events/", QoS::AtLeastOnce, &b"x"[..])
        .await;
    assert!(matches!(sent, Err(ClientError::Closed)), "{sent:?}");
    assert!(tokio::time::timeout(WAIT, client.recv())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn telemetry_on_another_devices_topic_closes_the_connection() {
    let server = Server::start().await;
    let mut client = server.client("devA", false).await;
    let sent = client
        .publish("devices/devB/messages/events/", QoS::AtLeastOnce, &b"x"[..])
        .await;
    assert!(matches!(sent, Err(ClientError::Closed)), "{sent:?}");
    assert!(tokio::time::timeout(WAIT, client.recv())
        .await
        .unwrap()
        .is_none());
    assert!(server
        .backend
        .wait_for("no message", |v| Some(v.messages()))
        .await
        .is_empty());
}

#[tokio::test]
async fn a_c2d_message_is_reported_delivered_when_the_client_acknowledges_it() {
    let server = Server::start().await;
    let mut client = server.client("devA", false).await;
    client
        .subscribe("devices/devA/messages/devicebound/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut message = Message {
        body: bytes::Bytes::from_static(b"hello device"),
        ..Message::default()
    };
    message.system.insert("messageId".into(), "c2d-1".into());
    message.properties.insert("k".into(), Some("v".into()));
    assert!(
        server
            .backend
            .push(
                "devA",
                Feature::CloudToDevice,
                Outgoing::CloudToDevice {
                    delivery_id: 17,
                    message
                }
            )
            .await
    );
    let received = next(&mut client).await;
    assert_eq!(
        received.topic,
        "devices/devA/messages/devicebound/%24.mid=c2d-1&k=v"
    );
    assert_eq!(
        (received.qos, &received.payload[..]),
        (QoS::AtLeastOnce, &b"hello device"[..])
    );
    let delivered = server
        .backend
        .wait_for("delivery", |v| {
            Some(v.delivered()).filter(|d| !d.is_empty())
        })
        .await;
    assert_eq!(delivered, vec![17]);
}

#[tokio::test]
async fn a_module_receives_input_messages_and_answers_methods() {
    let server = Server::start().await;
    let mut client = server.client("dev1/mod1", false).await;
    client
        .subscribe("devices/dev1/modules/mod1/inputs/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe("$iothub/methods/POST/#", QoS::AtLeastOnce)
        .await
        .unwrap();

    let mut message = Message {
        body: bytes::Bytes::from_static(br#"{"t": 21}"#),
        ..Message::default()
    };
    message
        .system
        .insert("connectionDeviceId".into(), "dev1".into());
    message.properties.insert("nullprop".into(), None);
    let input = Outgoing::Input {
        delivery_id: 3,
        topic: outpost_mqtt::topic::input_with_bag(
            &outpost_mqtt::topic::input_prefix("dev1", "mod1", "input1"),
            0,
            |topic| message.push_property_bag(topic),
        ),
        body: message.body,
    };
    assert!(
        server
            .backend
            .push("dev1/mod1", Feature::Inputs, input)
            .await
    );
    let received = next(&mut client).await;
    assert_eq!(
        received.topic,
        "devices/dev1/modules/mod1/inputs/input1/%24.cdid=dev1&nullprop"
    );

    let request = Outgoing::MethodRequest {
        rid: "42".into(),
        method: "reboot".into(),
        payload: br#"{"delay": 3}"#.to_vec(),
    };
    assert!(
        server
            .backend
            .push("dev1/mod1", Feature::Methods, request)
            .await
    );
    let call = next(&mut client).await;
    assert_eq!(
        (call.topic.as_str(), call.qos),
        ("$iothub/methods/POST/reboot/?$rid=42", QoS::AtMostOnce)
    );
    client
        .publish(
            "$iothub/methods/res/200/?$rid=42",
            QoS::AtLeastOnce,
            &br#"{"result": "done"}"#[..],
        )
        .await
        .unwrap();
    let responses = server
        .backend
        .wait_for("the method response", |v| {
            Some(v.method_responses()).filter(|r| !r.is_empty())
        })
        .await;
    assert_eq!(
        responses,
        vec![("42".to_owned(), 200, br#"{"result": "done"}"#.to_vec())]
    );
}

#[tokio::test]
async fn a_persistent_session_survives_a_reconnect_without_resubscribing() {
    let server = Server::start().await;
    let client = server.client("devA", false).await;
    assert!(!client.session_present());
    client
        .subscribe("$iothub/twin/PATCH/properties/desired/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe("devices/devA/messages/devicebound/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let first = server
        .backend
        .wait_for("connected", |v| v.connected("devA"))
        .await;
    // The connection drops without DISCONNECT, as in device_sdk_reconnect_wire.log.
    drop(client);
    server
        .backend
        .wait_for("disconnect", |v| {
            v.disconnects().iter().any(|d| d.1 == first).then_some(())
        })
        .await;

    let mut client = server.client("devA", false).await;
    assert!(client.session_present());
    assert!(server
        .backend
        .outbox("devA")
        .await
        .subscribed(Feature::DesiredPatches));
    assert!(
        server
            .backend
            .push(
                "devA",
                Feature::DesiredPatches,
                Outgoing::DesiredPatch {
                    body: json!({"threshold": 30, "$version": 5})
                }
            )
            .await
    );
    assert_eq!(
        next(&mut client).await.topic,
        "$iothub/twin/PATCH/properties/desired/?$version=5"
    );
}

#[tokio::test]
async fn a_persistent_session_survives_a_server_restart_through_the_backend() {
    let backend = std::sync::Arc::new(FakeBackend::default());
    let server = Server::start_with(backend.clone(), |_| {}).await;
    let client = server.client("devA", false).await;
    client
        .subscribe("$iothub/methods/POST/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        backend.wait_for("saved", |v| v.subscriptions("devA")).await,
        vec!["$iothub/methods/POST/#".to_owned()]
    );
    server.stop().await.unwrap();

    let server = Server::start_with(backend.clone(), |_| {}).await;
    let mut client = server.client("devA", false).await;
    assert!(client.session_present());
    let request = Outgoing::MethodRequest {
        rid: "1".into(),
        method: "m".into(),
        payload: Vec::new(),
    };
    assert!(backend.push("devA", Feature::Methods, request).await);
    assert_eq!(
        next(&mut client).await.topic,
        "$iothub/methods/POST/m/?$rid=1"
    );
}

/// A backend that routes by what its clients listen for (the edge hub's state) must hear of every change, of clean
/// sessions too, which persist nothing: the quickstart's Rust modules (clean sessions) once never got their
/// inputs because only `save_subscriptions` told of a SUBSCRIBE.
#[tokio::test]
async fn every_subscription_change_is_told_to_the_backend_for_clean_and_persistent_sessions() {
    let server = Server::start().await;
    for (client_id, clean) in [("devA", true), ("devB", false)] {
        let client = server.client(client_id, clean).await;
        let connection = server.backend.outbox(client_id).await.connection();
        client
            .subscribe("$iothub/methods/POST/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let told = server
            .backend
            .wait_for("the change told", |v| {
                v.feature_changes()
                    .into_iter()
                    .find(|(c, _, _)| c == client_id)
            })
            .await;
        assert_eq!(
            told,
            (client_id.to_owned(), connection, Feature::Methods.bit())
        );
        // A SUBSCRIBE that changes nothing tells nothing.
        client
            .subscribe("$iothub/methods/POST/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        client.unsubscribe("$iothub/methods/POST/#").await.unwrap();
        let changes = server
            .backend
            .wait_for("the unsubscribe told", |v| {
                let mine: Vec<_> = v
                    .feature_changes()
                    .into_iter()
                    .filter(|(c, _, _)| c == client_id)
                    .collect();
                (mine.len() >= 2).then_some(mine)
            })
            .await;
        assert_eq!(
            changes,
            vec![told.clone(), (client_id.to_owned(), connection, 0)]
        );
    }
}

#[tokio::test]
async fn a_clean_session_forgets_the_persisted_one() {
    let server = Server::start().await;
    let client = server.client("devA", false).await;
    client
        .subscribe("$iothub/methods/POST/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    client.disconnect().await;
    let client = server.client("devA", true).await;
    assert!(!client.session_present());
    assert!(!server
        .backend
        .outbox("devA")
        .await
        .subscribed(Feature::Methods));
    assert_eq!(
        server
            .backend
            .wait_for("forgotten", |v| Some(v.subscriptions("devA")))
            .await,
        None
    );
}

#[tokio::test]
async fn unacknowledged_c2d_messages_are_redelivered_after_a_reconnect() {
    let server = Server::start().await;
    // A raw client that never acknowledges.
    let mut raw = server.raw_connected("devA", false).await;
    raw.send(&outpost_mqtt::Packet::Subscribe(outpost_mqtt::Subscribe {
        pkid: 1,
        filters: vec![(
            "devices/devA/messages/devicebound/#".into(),
            QoS::AtLeastOnce,
        )],
    }))
    .await;
    assert!(matches!(
        raw.recv().await,
        Some(outpost_mqtt::Packet::SubAck(_))
    ));
    let message = Message {
        body: bytes::Bytes::from_static(b"once"),
        ..Message::default()
    };
    assert!(
        server
            .backend
            .push(
                "devA",
                Feature::CloudToDevice,
                Outgoing::CloudToDevice {
                    delivery_id: 9,
                    message
                }
            )
            .await
    );
    let Some(outpost_mqtt::Packet::Publish(first)) = raw.recv().await else {
        panic!("no C2D")
    };
    assert!(!first.dup);
    drop(raw);

    let mut client = server.client("devA", false).await;
    assert!(client.session_present());
    let again = next(&mut client).await;
    assert_eq!(
        (again.pkid, again.dup, &again.payload[..]),
        (first.pkid, true, &b"once"[..])
    );
    assert_eq!(
        server
            .backend
            .wait_for("delivery", |v| Some(v.delivered())
                .filter(|d| !d.is_empty()))
            .await,
        vec![9]
    );
}

#[tokio::test]
async fn shutdown_closes_every_connection_and_serve_returns() {
    let server = Server::start().await;
    let mut client = server.client("devA", false).await;
    let backend = server.backend.clone();
    server.stop().await.unwrap();
    assert!(tokio::time::timeout(WAIT, client.recv())
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        backend
            .wait_for("disconnect", |v| Some(v.disconnects()))
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn pubacks_keep_the_order_of_the_publishes_when_operations_finish_out_of_order() {
    let server = Server::start().await;
    server
        .backend
        .slow_twin(std::time::Duration::from_millis(300));
    let mut raw = server.raw_connected("devA", false).await;
    // A slow twin GET, then telemetry the backend accepts at once.
    raw.send(&Packet::Publish(
        Publish::new("$iothub/twin/GET/?$rid=slow", QoS::AtLeastOnce, &b" "[..]).with_pkid(1),
    ))
    .await;
    raw.send(&Packet::Publish(
        Publish::new(
            "devices/devA/messages/events/",
            QoS::AtLeastOnce,
            &b"fast"[..],
        )
        .with_pkid(2),
    ))
    .await;
    assert_eq!(raw.recv().await, Some(Packet::PubAck(PubAck { pkid: 1 })));
    assert!(
        matches!(raw.recv().await, Some(Packet::Publish(p)) if p.topic == "$iothub/twin/res/200/?$rid=slow")
    );
    assert_eq!(raw.recv().await, Some(Packet::PubAck(PubAck { pkid: 2 })));
}

#[tokio::test]
async fn many_pipelined_publishes_are_all_acknowledged() {
    let server = Server::start().await;
    let client = server.client("devA", false).await;
    let sends = (0..500).map(|i| {
        client.publish(
            "devices/devA/messages/events/",
            QoS::AtLeastOnce,
            format!("{i}").into_bytes(),
        )
    });
    let results = futures_util::future::join_all(sends).await;
    assert!(results.iter().all(Result::is_ok));
    let messages = server
        .backend
        .wait_for("500 messages", |v| {
            Some(v.messages()).filter(|m| m.len() == 500)
        })
        .await;
    // One connection's messages reach the backend in the order they were sent.
    let bodies: Vec<String> = messages
        .into_iter()
        .map(|(_, m)| String::from_utf8(m.body.to_vec()).unwrap())
        .collect();
    assert_eq!(bodies, (0..500).map(|i| i.to_string()).collect::<Vec<_>>());
    // Past the 128 operations a connection may run, reading pauses: no batch is larger.
    let batches = server
        .backend
        .wait_for("the batches", |v| Some(v.batches()))
        .await;
    assert_eq!(batches.iter().sum::<usize>(), 500);
    assert!(batches.iter().all(|b| *b <= 128), "{batches:?}");
}

/// Ten publishes in one TLS record, the one at `refused` (if any) refused by the backend: what the client hears.
async fn ten_publishes_in_one_write(refused: Option<u16>) -> (Server, Vec<Option<Packet>>) {
    let server = Server::start().await;
    let mut raw = server.raw_connected("devA", false).await;
    let mut bytes = bytes::BytesMut::new();
    for pkid in 1..=10u16 {
        let body = if Some(pkid) == refused {
            common::backend::REFUSED_BODY.to_vec()
        } else {
            pkid.to_string().into_bytes()
        };
        let publish = Publish::new("devices/devA/messages/events/", QoS::AtLeastOnce, body);
        outpost_mqtt::encode(&Packet::Publish(publish.with_pkid(pkid)), &mut bytes).unwrap();
    }
    raw.send_bytes(&bytes).await;
    let mut heard = Vec::new();
    for _ in 0..10 {
        heard.push(raw.recv().await);
    }
    (server, heard)
}

/// Waits for `n` messages at the backend and checks their bodies are "1" to "n", in order.
async fn assert_bodies_one_to(server: &Server, n: usize) {
    let messages = server
        .backend
        .wait_for("the messages", |v| {
            Some(v.messages()).filter(|m| m.len() == n)
        })
        .await;
    let bodies: Vec<String> = messages
        .into_iter()
        .map(|(_, m)| String::from_utf8(m.body.to_vec()).unwrap())
        .collect();
    assert_eq!(bodies, (1..=n).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[tokio::test]
async fn publishes_read_together_reach_the_backend_as_one_batch_and_are_acknowledged_in_order() {
    let (server, heard) = ten_publishes_in_one_write(None).await;
    let pubacks: Vec<Option<Packet>> = (1..=10)
        .map(|pkid| Some(Packet::PubAck(PubAck { pkid })))
        .collect();
    assert_eq!(heard, pubacks);
    assert_bodies_one_to(&server, 10).await;
    // Ten publishes in one TLS record are read at once: one call, not ten.
    assert_eq!(
        server
            .backend
            .wait_for("the batch", |v| Some(v.batches()))
            .await,
        vec![10]
    );
}

#[tokio::test]
async fn a_message_refused_in_a_batch_acknowledges_those_before_it_and_closes_the_connection() {
    let (server, heard) = ten_publishes_in_one_write(Some(6)).await;
    let mut expected: Vec<Option<Packet>> = (1..=5)
        .map(|pkid| Some(Packet::PubAck(PubAck { pkid })))
        .collect();
    // Closed after the five PUBACKs: nothing for the refused one or those after it.
    expected.extend(std::iter::repeat_n(None, 5));
    assert_eq!(heard, expected);
    assert_bodies_one_to(&server, 5).await;
}

#[tokio::test]
async fn pubacks_read_together_reach_the_backend_as_one_batch_in_order() {
    let server = Server::start().await;
    let mut raw = server.raw_connected("devA", false).await;
    raw.send(&Packet::Subscribe(outpost_mqtt::Subscribe {
        pkid: 1,
        filters: vec![(
            "devices/devA/messages/devicebound/#".into(),
            QoS::AtLeastOnce,
        )],
    }))
    .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
    let mut pkids = Vec::new();
    for delivery_id in [30, 10, 20] {
        let message = Message {
            body: bytes::Bytes::from(delivery_id.to_string()),
            ..Message::default()
        };
        let item = Outgoing::CloudToDevice {
            delivery_id,
            message,
        };
        assert!(
            server
                .backend
                .push("devA", Feature::CloudToDevice, item)
                .await
        );
        let Some(Packet::Publish(publish)) = raw.recv().await else {
            panic!("no C2D")
        };
        pkids.push(publish.pkid);
    }
    let mut bytes = bytes::BytesMut::new();
    for pkid in pkids {
        outpost_mqtt::encode(&Packet::PubAck(PubAck { pkid }), &mut bytes).unwrap();
    }
    raw.send_bytes(&bytes).await;
    let delivered = server
        .backend
        .wait_for("three deliveries", |v| {
            Some(v.delivered()).filter(|d| d.len() == 3)
        })
        .await;
    assert_eq!(delivered, [30, 10, 20]);
    assert_eq!(
        server
            .backend
            .wait_for("the batch", |v| Some(v.delivered_batches()))
            .await,
        [3]
    );
}
