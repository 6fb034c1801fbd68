//! The AMQP head end to end: fe2o3-amqp's client over TLS on loopback against [`common::MemoryHub`] (which
//! stands for the hub's storage; see its module doc).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Client, Server, HUB};
use fe2o3_amqp::link::delivery::Delivery;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::definitions::SenderSettleMode;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, DeliveryAnnotations, Message, MessageAnnotations, MessageId,
    Outcome, Properties, Source,
};
use fe2o3_amqp::types::primitives::{Symbol, Timestamp, Value};
use fe2o3_amqp::{Receiver, Sender};
use tokio::io::AsyncWriteExt;

const AUDIENCE: &str = "sb://localhost/myhub";

/// Numbers the test links (names must be unique on a session).
static LINKS: AtomicU64 = AtomicU64::new(0);

fn partition_address(consumer_group: &str, partition: &str) -> String {
    format!("amqps://localhost/{HUB}/ConsumerGroups/{consumer_group}/Partitions/{partition}")
}

/// A receiver on a partition from the position `selector` selects (`None`: no filter).
async fn attach_partition(client: &mut Client, address: &str, selector: Option<&str>) -> Receiver {
    attach_partition_with(client, address, selector, &[]).await
}

/// [`attach_partition`], desiring `capabilities`.
async fn attach_partition_with(
    client: &mut Client,
    address: &str,
    selector: Option<&str>,
    capabilities: &[&str],
) -> Receiver {
    let mut source = Source::builder().address(address.to_owned());
    if let Some(selector) = selector {
        source = source.add_to_filter(
            Symbol::from("apache.org:selector-filter:string"),
            Some(serde_amqp::described::Described {
                descriptor: serde_amqp::descriptor::Descriptor::Name(Symbol::from(
                    "apache.org:selector-filter:string",
                )),
                value: Value::String(selector.to_owned()),
            }),
        );
    }
    Receiver::builder()
        .name(format!(
            "receiver-{}",
            LINKS.fetch_add(1, Ordering::Relaxed)
        ))
        .source(source.build())
        .target("client")
        .sender_settle_mode(SenderSettleMode::Settled)
        .set_desired_capabilities(capabilities.iter().map(|c| Symbol::from(*c)).collect())
        .attach(&mut client.session)
        .await
        .unwrap()
}

async fn next_event(receiver: &mut Receiver) -> Delivery<Body<Value>> {
    tokio::time::timeout(Duration::from_secs(10), receiver.recv::<Body<Value>>())
        .await
        .expect("no event within 10 s")
        .unwrap()
}

fn sequence_number(delivery: &Delivery<Body<Value>>) -> i64 {
    let MessageAnnotations(annotations) = delivery.message().message_annotations.clone().unwrap();
    match annotations.get(&OwnedKey::Symbol(Symbol::from("x-opt-sequence-number"))) {
        Some(Value::Long(n)) => *n,
        other => panic!("x-opt-sequence-number is not a long: {other:?}"),
    }
}

/// The first event a receiver from `selector` gets.
async fn first_sequence_number(server: &Server, selector: &str) -> i64 {
    let mut client = server.connect(SaslProfile::Anonymous).await;
    assert_eq!(client.put_token(AUDIENCE, "good").await, 200);
    let mut receiver = attach_partition(
        &mut client,
        &partition_address("$Default", "0"),
        Some(selector),
    )
    .await;
    sequence_number(&next_event(&mut receiver).await)
}

/// The error a refused link's first receive reports, as text.
async fn refusal(receiver: &mut Receiver) -> String {
    let error = tokio::time::timeout(Duration::from_secs(10), receiver.recv::<Body<Value>>())
        .await
        .expect("the link was neither refused nor served")
        .expect_err("the link was served");
    format!("{error:?}")
}

#[tokio::test]
async fn cbs_accepts_a_good_token_and_answers_401_to_a_bad_one() {
    let server = Server::start().await;
    let mut client = server.connect(SaslProfile::Anonymous).await;
    let (id, answer) = client
        .request(
            "$cbs",
            &[
                ("operation", "put-token"),
                ("type", "servicebus.windows.net:sastoken"),
                ("name", AUDIENCE),
            ],
            Some("good"),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.correlation_id, Some(id));
    assert_eq!(client.put_token(AUDIENCE, "forged").await, 401);
}

#[tokio::test]
async fn a_request_sent_before_its_reply_link_is_attached_is_answered_on_it() {
    let server = Server::start().await;
    let mut client = server.connect(SaslProfile::Anonymous).await;
    let mut sender = Sender::attach(&mut client.session, "cbs-sender", "$cbs")
        .await
        .unwrap();
    let mut application = fe2o3_amqp::types::primitives::OrderedMap::new();
    for (k, v) in [
        ("operation", "put-token"),
        ("type", "servicebus.windows.net:sastoken"),
        ("name", AUDIENCE),
    ] {
        application.insert(
            k.to_owned(),
            fe2o3_amqp::types::primitives::SimpleValue::String(v.into()),
        );
    }
    let request = Message::builder()
        .properties(Properties {
            message_id: Some(MessageId::Ulong(0)),
            ..Properties::default()
        })
        .application_properties(ApplicationProperties(application))
        .value(Value::String("good".into()))
        .build();
    // The hub accepts the request (settling it) before it has anywhere to answer.
    let outcome = sender.send(request).await.unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)));
    let mut receiver = Receiver::attach(&mut client.session, "cbs-receiver", "$cbs")
        .await
        .unwrap();
    let answer = next_event(&mut receiver).await;
    let properties = answer.message().properties.clone().unwrap();
    assert_eq!(properties.correlation_id, Some(MessageId::Ulong(0)));
}

#[tokio::test]
async fn a_partition_without_a_token_or_with_an_insufficient_or_expired_one_is_refused() {
    let server = Server::start().await;
    let address = partition_address("$Default", "0");
    for token in [None, Some("no-service-connect"), Some("expired")] {
        let mut client = server.connect(SaslProfile::Anonymous).await;
        if let Some(token) = token {
            assert_eq!(client.put_token(AUDIENCE, token).await, 200);
        }
        let mut receiver = attach_partition(&mut client, &address, None).await;
        let error = refusal(&mut receiver).await;
        assert!(error.contains("UnauthorizedAccess"), "{token:?}: {error}");
    }
    // A token for another entity does not cover this one.
    let mut client = server.connect(SaslProfile::Anonymous).await;
    assert_eq!(
        client.put_token("sb://localhost/otherhub", "good").await,
        200
    );
    let mut receiver = attach_partition(&mut client, &address, None).await;
    assert!(refusal(&mut receiver).await.contains("UnauthorizedAccess"));
}

#[tokio::test]
async fn an_event_link_whose_token_expired_is_detached_before_its_next_event() {
    let server = Server::start().await;
    let mut client = server.connect(SaslProfile::Anonymous).await;
    assert_eq!(client.put_token(AUDIENCE, "short").await, 200);
    let mut receiver = attach_partition(
        &mut client,
        &partition_address("$Default", "1"),
        Some("amqp.annotation.x-opt-offset > '@latest'"),
    )
    .await;
    // Let the token expire (nothing to wait on but the clock), then give the link something to send.
    tokio::time::sleep(common::SHORT_TOKEN).await;
    server.hub.append(1, b"too late");
    assert!(refusal(&mut receiver).await.contains("UnauthorizedAccess"));
}

#[tokio::test]
async fn a_sas_token_covers_only_the_resource_it_was_signed_for() {
    let server = Server::start().await;
    let address = partition_address("$Default", "0");
    // Signed for another entity, put for the whole hub: it does not cover this entity.
    let mut client = server.connect(SaslProfile::Anonymous).await;
    let other = "SharedAccessSignature sr=localhost%2Fotherhub&sig=good&se=1&skn=service";
    assert_eq!(client.put_token("sb://localhost", other).await, 200);
    let mut receiver = attach_partition(&mut client, &address, None).await;
    assert!(refusal(&mut receiver).await.contains("UnauthorizedAccess"));
    // Signed for the whole hub, put for this entity: it does.
    let mut client = server.connect(SaslProfile::Anonymous).await;
    let hub = "SharedAccessSignature sr=localhost&sig=good&se=1&skn=service";
    assert_eq!(client.put_token(AUDIENCE, hub).await, 200);
    let mut receiver = attach_partition(&mut client, &address, None).await;
    assert_eq!(sequence_number(&next_event(&mut receiver).await), 0);
    // Signed for an unrelated entity and put for this one: refused at once.
    assert_eq!(client.put_token(AUDIENCE, other).await, 401);
}

#[tokio::test]
async fn events_from_the_earliest_carry_body_properties_and_annotations() {
    let server = Server::start().await;
    let mut client = server.connect(SaslProfile::Anonymous).await;
    assert_eq!(client.put_token(AUDIENCE, "good").await, 200);
    let mut receiver = attach_partition(
        &mut client,
        &partition_address("$Default", "0"),
        Some("amqp.annotation.x-opt-offset > '-1'"),
    )
    .await;
    for expected in 0..3 {
        let delivery = next_event(&mut receiver).await;
        let message: &Message<Body<Value>> = delivery.message();
        match &message.body {
            Body::Data(sections) => {
                let bytes: Vec<u8> = sections.iter().flat_map(|Data(b)| b.to_vec()).collect();
                assert_eq!(bytes, format!("e{expected}").as_bytes());
            }
            other => panic!("the body is not data: {other:?}"),
        }
        let properties: &Properties = message.properties.as_ref().unwrap();
        assert_eq!(
            properties.message_id,
            Some(MessageId::String(format!("m{expected}")))
        );
        assert_eq!(
            properties.correlation_id,
            Some(MessageId::String("c".into()))
        );
        assert_eq!(
            properties.content_type.as_ref().map(Symbol::as_str),
            Some("application/json")
        );
        assert_eq!(
            properties.content_encoding.as_ref().map(Symbol::as_str),
            Some("utf-8")
        );
        let ApplicationProperties(application) = message.application_properties.clone().unwrap();
        assert_eq!(
            application.get("temperature"),
            Some(&fe2o3_amqp::types::primitives::SimpleValue::String(
                "21".into()
            ))
        );
        let MessageAnnotations(annotations) = message.message_annotations.clone().unwrap();
        let annotation = |name: &str| {
            annotations
                .get(&OwnedKey::Symbol(Symbol::from(name)))
                .cloned()
        };
        assert_eq!(
            annotation("x-opt-sequence-number"),
            Some(Value::Long(expected))
        );
        assert_eq!(
            annotation("x-opt-offset"),
            Some(Value::String((expected * 100).to_string()))
        );
        assert_eq!(
            annotation("x-opt-enqueued-time"),
            Some(Value::Timestamp(Timestamp::from_milliseconds(
                (expected + 1) * 1000
            )))
        );
        assert_eq!(
            annotation("iothub-connection-device-id"),
            Some(Value::String("d1".into()))
        );
        assert_eq!(
            annotation("iothub-message-source"),
            Some(Value::String("Telemetry".into()))
        );
    }
}

#[tokio::test]
async fn a_receiver_that_desires_the_runtime_metric_gets_the_last_enqueued_figures() {
    let server = Server::start().await;
    let mut client = server.connect(SaslProfile::Anonymous).await;
    assert_eq!(client.put_token(AUDIENCE, "good").await, 200);
    let address = partition_address("$Default", "0");
    let metric = outpost_amqp::wire::RUNTIME_METRIC;
    let mut receiver = attach_partition_with(&mut client, &address, None, &[metric]).await;
    let delivery = next_event(&mut receiver).await;
    let DeliveryAnnotations(annotations) = delivery.message().delivery_annotations.clone().unwrap();
    let annotation = |name: &str| {
        annotations
            .get(&OwnedKey::Symbol(Symbol::from(name)))
            .cloned()
    };
    assert_eq!(
        annotation("last_enqueued_sequence_number"),
        Some(Value::Long(2))
    );
    assert_eq!(
        annotation("last_enqueued_offset"),
        Some(Value::String("200".into()))
    );
    assert_eq!(
        annotation("last_enqueued_time_utc"),
        Some(Value::Timestamp(Timestamp::from_milliseconds(3000)))
    );
    // Without the capability, no delivery annotations.
    let mut receiver = attach_partition(&mut client, &address, None).await;
    assert!(next_event(&mut receiver)
        .await
        .message()
        .delivery_annotations
        .is_none());
}

#[tokio::test]
async fn offset_sequence_number_and_enqueued_time_filters_select_the_first_event() {
    let server = Server::start().await;
    let cases = [
        ("amqp.annotation.x-opt-offset > '100'", 2),
        ("amqp.annotation.x-opt-offset >= '100'", 1),
        ("amqp.annotation.x-opt-sequence-number > '0'", 1),
        ("amqp.annotation.x-opt-sequence-number >= '2'", 2),
        ("amqp.annotation.x-opt-enqueued-time > '1500'", 1),
    ];
    for (selector, expected) in cases {
        assert_eq!(
            first_sequence_number(&server, selector).await,
            expected,
            "{selector}"
        );
    }
}

#[tokio::test]
async fn a_receiver_from_the_latest_gets_only_what_arrives_after_it_attached() {
    let server = Server::start().await;
    let mut client = server.connect(SaslProfile::Anonymous).await;
    assert_eq!(client.put_token(AUDIENCE, "good").await, 200);
    let mut receiver = attach_partition(
        &mut client,
        &partition_address("$Default", "0"),
        Some("amqp.annotation.x-opt-offset > '@latest'"),
    )
    .await;
    let appended = server.hub.append(0, b"new");
    assert_eq!(sequence_number(&next_event(&mut receiver).await), appended);
}

#[tokio::test]
async fn management_reads_the_event_hub_and_a_partition() {
    let server = Server::start().await;
    let mut client = server.connect(SaslProfile::Anonymous).await;
    // No token on $cbs: the request's security_token is checked.
    let (id, answer) = client
        .request(
            "$management",
            &[
                ("operation", "READ"),
                ("type", "com.microsoft:eventhub"),
                ("name", HUB),
                ("security_token", "good"),
            ],
            None,
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.description);
    assert_eq!(answer.correlation_id, Some(id));
    let Some(Value::Map(body)) = answer.body else {
        panic!("the body is not a map: {:?}", answer.body)
    };
    let field = |name: &str| body.get(&Value::String(name.into())).cloned();
    assert_eq!(field("name"), Some(Value::String(HUB.into())));
    assert_eq!(field("partition_count"), Some(Value::Int(2)));
    assert_eq!(
        field("created_at"),
        Some(Value::Timestamp(Timestamp::from_milliseconds(
            1_600_000_000_000
        )))
    );
    match field("partition_ids") {
        Some(Value::Array(ids)) => assert_eq!(
            ids.0,
            vec![Value::String("0".into()), Value::String("1".into())]
        ),
        other => panic!("partition_ids is not an array: {other:?}"),
    }

    let (_, answer) = client
        .request(
            "$management",
            &[
                ("operation", "READ"),
                ("type", "com.microsoft:partition"),
                ("name", HUB),
                ("partition", "0"),
                ("security_token", "good"),
            ],
            None,
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.description);
    let Some(Value::Map(body)) = answer.body else {
        panic!("the body is not a map")
    };
    let field = |name: &str| body.get(&Value::String(name.into())).cloned();
    assert_eq!(field("partition"), Some(Value::String("0".into())));
    assert_eq!(field("begin_sequence_number"), Some(Value::Long(0)));
    assert_eq!(field("last_enqueued_sequence_number"), Some(Value::Long(2)));
    assert_eq!(
        field("last_enqueued_offset"),
        Some(Value::String("200".into()))
    );
    assert_eq!(
        field("last_enqueued_time_utc"),
        Some(Value::Timestamp(Timestamp::from_milliseconds(3000)))
    );
    assert_eq!(field("is_partition_empty"), Some(Value::Bool(false)));

    let (_, answer) = client
        .request(
            "$management",
            &[
                ("operation", "READ"),
                ("type", "com.microsoft:eventhub"),
                ("security_token", "forged"),
            ],
            None,
        )
        .await;
    assert_eq!(answer.status, 401);
}

#[tokio::test]
async fn unknown_partitions_consumer_groups_entities_and_nodes_are_refused() {
    let server = Server::start().await;
    let mut client = server.connect(SaslProfile::Anonymous).await;
    assert_eq!(client.put_token("sb://localhost/", "good").await, 200);
    let cases = [
        (partition_address("$Default", "2"), "argument-out-of-range"),
        (partition_address("$Default", "x"), "argument-out-of-range"),
        (partition_address("nosuchgroup", "0"), "NotFound"),
        (
            "amqps://localhost/otherhub/ConsumerGroups/$Default/Partitions/0".to_owned(),
            "NotFound",
        ),
        ("amqps://localhost/somequeue".to_owned(), "NotFound"),
    ];
    for (address, condition) in cases {
        let mut receiver = attach_partition(&mut client, &address, None).await;
        let error = refusal(&mut receiver).await;
        assert!(error.contains(condition), "{address}: {error}");
    }
    // A filter the head does not understand refuses the link too.
    let mut receiver = attach_partition(
        &mut client,
        &partition_address("$Default", "0"),
        Some("amqp.annotation.x-opt-offset < '5'"),
    )
    .await;
    assert!(refusal(&mut receiver).await.contains("InvalidField"));
    // The connection still serves.
    let mut receiver =
        attach_partition(&mut client, &partition_address("analytics", "0"), None).await;
    assert_eq!(sequence_number(&next_event(&mut receiver).await), 0);
}

fn c2d(to: &str, body: &[u8]) -> Message<Data> {
    let mut application = fe2o3_amqp::types::primitives::OrderedMap::new();
    application.insert(
        "iothub-ack".to_owned(),
        fe2o3_amqp::types::primitives::SimpleValue::String("full".into()),
    );
    application.insert(
        "color".to_owned(),
        fe2o3_amqp::types::primitives::SimpleValue::String("red".into()),
    );
    Message::builder()
        .properties(Properties {
            to: Some(to.to_owned()),
            message_id: Some(MessageId::String("c2d-1".into())),
            ..Properties::default()
        })
        .application_properties(ApplicationProperties(application))
        .data(body.to_vec())
        .build()
}

fn rejection(outcome: Result<Outcome, fe2o3_amqp::link::SendError>) -> String {
    match outcome {
        Ok(Outcome::Rejected(rejected)) => format!("{:?}", rejected.error),
        other => panic!("not rejected: {other:?}"),
    }
}

#[tokio::test]
async fn c2d_messages_are_queued_and_bad_ones_rejected_with_their_reason() {
    let server = Server::start_with(|config| config.max_message_size = 1024).await;
    let mut client = server.connect(SaslProfile::Anonymous).await;
    assert_eq!(client.put_token("https://localhost", "good").await, 200);
    let mut sender = Sender::attach(
        &mut client.session,
        "c2d",
        "amqps://localhost/messages/devicebound",
    )
    .await
    .unwrap();
    let outcome = sender
        .send(c2d("/devices/d1/messages/devicebound", b"hello"))
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    {
        let queued = server.hub.c2d.lock().unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].device_id, "d1");
        assert_eq!(queued[0].body, b"hello");
        assert_eq!(queued[0].ack.as_deref(), Some("full"));
        assert_eq!(queued[0].message_id.as_deref(), Some("c2d-1"));
        assert_eq!(
            queued[0].application_properties,
            vec![("color".to_owned(), "red".to_owned())]
        );
    }
    let cases: [(&str, &[u8], &str); 4] = [
        ("/devices/d1/messages/events", b"x", "InvalidField"),
        ("/devices/ghost/messages/devicebound", b"x", "NotFound"),
        (
            "/devices/full/messages/devicebound",
            b"x",
            "ResourceLimitExceeded",
        ),
        (
            "/devices/d1/messages/devicebound",
            &[0; 1500],
            "MessageSizeExceeded",
        ),
    ];
    for (to, body, condition) in cases {
        let error = rejection(sender.send(c2d(to, body)).await);
        assert!(error.contains(condition), "{to}: {error}");
    }
    // The link still works after the rejections.
    let outcome = sender
        .send(c2d("/devices/d1/messages/devicebound", b"again"))
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)));
    assert_eq!(server.hub.c2d.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn c2d_without_a_token_for_the_hub_is_refused() {
    let server = Server::start().await;
    let mut client = server.connect(SaslProfile::Anonymous).await;
    let mut sender = Sender::attach(&mut client.session, "c2d", "/messages/devicebound")
        .await
        .unwrap();
    let sent = tokio::time::timeout(
        Duration::from_secs(10),
        sender.send(c2d("/devices/d1/messages/devicebound", b"x")),
    )
    .await
    .expect("the link was neither refused nor served");
    assert!(
        format!("{sent:?}").contains("UnauthorizedAccess"),
        "{sent:?}"
    );
    assert!(server.hub.c2d.lock().unwrap().is_empty());
}

#[tokio::test]
async fn feedback_is_delivered_and_completed_once_accepted() {
    let server = Server::start().await;
    server.hub.add_feedback(7, r#"[{"statusCode":"Success"}]"#);
    // SASL PLAIN with the policy's key needs no token.
    let mut client = server
        .connect(SaslProfile::Plain {
            username: "service".into(),
            password: "key".into(),
        })
        .await;
    let mut receiver = Receiver::attach(
        &mut client.session,
        "feedback",
        "/messages/servicebound/feedback",
    )
    .await
    .unwrap();
    let delivery = next_event(&mut receiver).await;
    let properties = delivery.message().properties.clone().unwrap();
    assert_eq!(
        properties.content_type.as_ref().map(Symbol::as_str),
        Some(outpost_amqp::wire::FEEDBACK_CONTENT_TYPE)
    );
    assert!(server.hub.completed.lock().unwrap().is_empty());
    receiver.accept(&delivery).await.unwrap();
    // The hub completes the batch when the accept arrives.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let completed = server.hub.completion.notified();
            tokio::pin!(completed);
            completed.as_mut().enable();
            if !server.hub.completed.lock().unwrap().is_empty() {
                break;
            }
            completed.await;
        }
    })
    .await
    .expect("the batch was not completed");
    assert_eq!(*server.hub.completed.lock().unwrap(), vec![7]);
}

#[tokio::test]
async fn sasl_plain_with_a_wrong_key_fails_the_connection() {
    let server = Server::start().await;
    let opened = server
        .try_connect(SaslProfile::Plain {
            username: "service".into(),
            password: "wrong".into(),
        })
        .await;
    assert!(opened.is_err());
}

#[tokio::test]
async fn a_bad_connection_does_not_disturb_another() {
    let server = Server::start().await;
    let mut client = server.connect(SaslProfile::Anonymous).await;
    assert_eq!(client.put_token(AUDIENCE, "good").await, 200);
    let mut receiver = attach_partition(
        &mut client,
        &partition_address("$Default", "1"),
        Some("amqp.annotation.x-opt-offset > '@latest'"),
    )
    .await;
    // Garbage after TLS, a valid SASL header followed by garbage frames, and a plain-text client.
    let mut garbage = server.tls_stream().await;
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut framed = server.tls_stream().await;
    framed
        .write_all(b"AMQP\x03\x01\x00\x00\xff\xff\xff\xff\x02\x01\x00\x00garbage")
        .await
        .unwrap();
    let mut plain = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    plain.write_all(b"AMQP\x00\x01\x00\x00").await.unwrap();

    let appended = server.hub.append(1, b"still served");
    assert_eq!(sequence_number(&next_event(&mut receiver).await), appended);
    // And new connections are served too.
    let mut other = server.connect(SaslProfile::Anonymous).await;
    assert_eq!(other.put_token(AUDIENCE, "good").await, 200);
}

#[tokio::test]
async fn connections_past_the_cap_are_closed() {
    let server = Server::start_with(|config| config.max_connections = 1).await;
    let mut first = server.connect(SaslProfile::Anonymous).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let handshake = tokio_rustls::TlsConnector::from(server.tls.client.clone())
        .connect(
            rustls::pki_types::ServerName::try_from(common::HOST).unwrap(),
            tcp,
        )
        .await;
    assert!(handshake.is_err(), "the second connection was served");
    assert_eq!(first.put_token(AUDIENCE, "good").await, 200);
}

#[tokio::test]
async fn shutdown_closes_the_connections_and_serve_returns() {
    let server = Server::start().await;
    let mut client = server.connect(SaslProfile::Anonymous).await;
    assert_eq!(client.put_token(AUDIENCE, "good").await, 200);
    let mut receiver = attach_partition(
        &mut client,
        &partition_address("$Default", "1"),
        Some("amqp.annotation.x-opt-offset > '@latest'"),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(20), server.shut_down())
        .await
        .expect("serve did not return")
        .unwrap();
    // The link is gone with its connection.
    let received = tokio::time::timeout(Duration::from_secs(10), receiver.recv::<Body<Value>>())
        .await
        .expect("the connection stayed open");
    assert!(received.is_err());
}

#[tokio::test]
async fn links_past_the_session_cap_are_refused() {
    let server = Server::start().await;
    let mut client = server.connect(SaslProfile::Anonymous).await;
    let mut senders = Vec::new();
    for i in 0..outpost_amqp::MAX_LINKS_PER_SESSION {
        senders.push(
            Sender::attach(&mut client.session, format!("cbs-{i}"), "$cbs")
                .await
                .unwrap(),
        );
    }
    let mut extra = Sender::attach(&mut client.session, "cbs-extra", "$cbs")
        .await
        .unwrap();
    let sent = tokio::time::timeout(
        Duration::from_secs(10),
        extra.send(Message::builder().value(Value::String("x".into())).build()),
    )
    .await
    .expect("the link was neither refused nor served");
    assert!(
        format!("{sent:?}").contains("ResourceLimitExceeded"),
        "{sent:?}"
    );
    // Another session of the same connection has its own links.
    let mut other = fe2o3_amqp::Session::begin(&mut client.connection)
        .await
        .unwrap();
    let mut sender = Sender::attach(&mut other, "cbs-other", "$cbs")
        .await
        .unwrap();
    let sent = sender
        .send(Message::builder().value(Value::String("x".into())).build())
        .await;
    assert!(matches!(sent, Ok(Outcome::Accepted(_))), "{sent:?}");
}

#[tokio::test]
async fn a_stream_handed_over_by_another_listener_is_served_under_the_same_cap() {
    let server = Server::start_with(|config| config.max_connections = 2).await;
    let peer: std::net::SocketAddr = ([127, 0, 0, 1], 443).into();
    // As the HTTPS listener hands over an upgraded WebSocket: TLS is already done, AMQP starts at SASL.
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    server.handoff.hand_over(server_end, peer).unwrap();
    let mut handed = Server::open(client_end, SaslProfile::Anonymous)
        .await
        .unwrap();
    assert_eq!(handed.put_token(AUDIENCE, "good").await, 200);
    let mut receiver =
        attach_partition(&mut handed, &partition_address("$Default", "0"), None).await;
    assert_eq!(sequence_number(&next_event(&mut receiver).await), 0);

    // One connection from the listener reaches the cap of two; the next handed stream is closed.
    let _listened = server.connect(SaslProfile::Anonymous).await;
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    server.handoff.hand_over(server_end, peer).unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        Server::open(client_end, SaslProfile::Anonymous),
    )
    .await
    .expect("the stream was neither served nor closed");
    assert!(refused.is_err());
}
