//! Misbehaving clients: each closes only its own connection while the server keeps serving everyone else.
//! The backend is `FakeBackend`, an in-memory test double of the hub.

mod common;

use common::{Server, WAIT};
use outpost_mqtt::{Connect, Packet, Publish, QoS};

/// A well-behaved client publishes and gets its PUBACK.
async fn still_serves(client: &outpost_mqtt::Client) {
    let sent = tokio::time::timeout(
        WAIT,
        client.publish(
            "devices/good/messages/events/",
            QoS::AtLeastOnce,
            &b"ok"[..],
        ),
    )
    .await;
    assert!(
        matches!(sent, Ok(Ok(()))),
        "the well-behaved client is still served: {sent:?}"
    );
}

#[tokio::test]
async fn garbage_bytes_close_only_their_connection() {
    let server = Server::start().await;
    let good = server.client("good", false).await;
    let mut raw = server.raw().await;
    raw.send_bytes(&[0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, b'g', b'a', b'r', b'b'])
        .await;
    assert!(raw.closed().await);
    still_serves(&good).await;
}

#[tokio::test]
async fn garbage_after_connect_closes_only_that_connection() {
    let server = Server::start().await;
    let good = server.client("good", false).await;
    let mut raw = server.raw_connected("bad", false).await;
    raw.send_bytes(b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(raw.closed().await);
    still_serves(&good).await;
}

#[tokio::test]
async fn a_300_kb_packet_closes_only_its_connection() {
    let server = Server::start().await;
    let good = server.client("good", false).await;
    let mut raw = server.raw_connected("big", false).await;
    let publish = Publish::new(
        "devices/big/messages/events/",
        QoS::AtLeastOnce,
        vec![b'x'; 300 * 1024],
    )
    .with_pkid(1);
    raw.send(&Packet::Publish(publish)).await;
    assert!(raw.closed().await);
    still_serves(&good).await;
    let messages = server
        .backend
        .wait_for("messages", |v| Some(v.messages()))
        .await;
    assert!(messages.iter().all(|(sender, _)| sender == "good"));
}

#[tokio::test]
async fn a_truncated_packet_then_eof_closes_only_its_connection() {
    let server = Server::start().await;
    let good = server.client("good", false).await;
    let mut raw = server.raw_connected("cut", false).await;
    raw.send_bytes(&[0x32, 0x40, 0x00, 0x05, b'd']).await;
    drop(raw);
    still_serves(&good).await;
}

#[tokio::test]
async fn a_qos2_publish_closes_the_connection() {
    let server = Server::start().await;
    let good = server.client("good", false).await;
    let mut raw = server.raw_connected("q2", false).await;
    let publish =
        Publish::new("devices/q2/messages/events/", QoS::ExactlyOnce, &b"x"[..]).with_pkid(1);
    raw.send(&Packet::Publish(publish)).await;
    assert!(raw.closed().await);
    still_serves(&good).await;
}

#[tokio::test]
async fn a_first_packet_other_than_connect_closes_the_connection() {
    let server = Server::start().await;
    let mut raw = server.raw().await;
    raw.send(&Packet::PingReq).await;
    assert_eq!(raw.recv().await, None);
}

#[tokio::test]
async fn an_unsupported_protocol_level_is_answered_with_return_code_1() {
    let server = Server::start().await;
    server.backend.allow("devA");
    let mut raw = server.raw().await;
    let mut connect = Connect::new("devA", 60, false);
    connect.protocol_level = 5;
    raw.send(&Packet::Connect(Box::new(connect))).await;
    let Some(Packet::ConnAck(ack)) = raw.recv().await else {
        panic!("no CONNACK")
    };
    assert_eq!(
        ack.code,
        outpost_mqtt::ConnectReturnCode::UnacceptableProtocolVersion
    );
    assert!(raw.closed().await);
}

#[tokio::test]
async fn a_malformed_client_id_is_answered_with_return_code_2() {
    let server = Server::start().await;
    let mut raw = server.raw().await;
    let mut connect = Connect::new("a/b/c", 60, true);
    connect.username = Some("localhost/a/b/c/".into());
    raw.send(&Packet::Connect(Box::new(connect))).await;
    let Some(Packet::ConnAck(ack)) = raw.recv().await else {
        panic!("no CONNACK")
    };
    assert_eq!(
        ack.code,
        outpost_mqtt::ConnectReturnCode::IdentifierRejected
    );
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_closes_the_first() {
    let server = Server::start().await;
    let mut first = server.client("devA", false).await;
    let first_id = server
        .backend
        .wait_for("first", |v| v.connected("devA"))
        .await;
    let mut second = server.client("devA", false).await;
    assert!(
        tokio::time::timeout(WAIT, first.recv())
            .await
            .unwrap()
            .is_none(),
        "the first connection is closed"
    );
    // The second one works, and the backend holds its outbox rather than the first's.
    second
        .publish("$iothub/twin/GET/?$rid=1", QoS::AtLeastOnce, &b" "[..])
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, second.recv())
            .await
            .unwrap()
            .unwrap()
            .topic,
        "$iothub/twin/res/200/?$rid=1"
    );
    assert!(server
        .backend
        .wait_for("disconnect", |v| Some(v.disconnects()))
        .await
        .contains(&("devA".to_owned(), first_id)));
    assert_ne!(
        server
            .backend
            .wait_for("second", |v| v.connected("devA"))
            .await,
        first_id
    );
}

#[tokio::test]
async fn a_silent_client_is_closed_after_one_and_a_half_keep_alive_periods() {
    let server = Server::start().await;
    server.backend.allow("quiet");
    let mut raw = server.raw().await;
    let mut connect = Connect::new("quiet", 1, true);
    connect.username = Some("localhost/quiet/".into());
    connect.password = Some(common::FakeBackend::token("quiet").into_bytes().into());
    raw.send(&Packet::Connect(Box::new(connect))).await;
    assert!(matches!(raw.recv().await, Some(Packet::ConnAck(_))));
    let started = std::time::Instant::now();
    assert!(raw.closed().await);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
}
