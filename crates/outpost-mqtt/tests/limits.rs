//! A client cannot grow the server's memory: one that never reads what it asked for is disconnected once its
//! bounded queues are full, and a connection ends when its token does. The backend is `FakeBackend`, an
//! in-memory test double of the hub.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use common::{FakeBackend, Server};
use outpost_mqtt::{encode, Packet, Publish, QoS};

/// Far more than the kernel's socket buffers and the server's queues hold together.
const FLOOD_LIMIT: usize = 512 * 1024 * 1024;

/// Writes `packet` over and over without reading anything back; the number of bytes written before the
/// server closed the connection, or `None` if it never did within `FLOOD_LIMIT`.
async fn flood_until_closed(raw: &mut common::Raw, packet: &Packet) -> Option<usize> {
    let mut one = BytesMut::new();
    encode(packet, &mut one).unwrap();
    let chunk = one.repeat((64 * 1024 / one.len()).max(1));
    let mut written = 0;
    while written < FLOOD_LIMIT {
        let sent = tokio::time::timeout(Duration::from_secs(20), raw.write(&chunk)).await;
        match sent {
            Ok(Ok(())) => written += chunk.len(),
            // The server closed (reset or broken pipe), or stopped reading for good after closing.
            Ok(Err(_)) | Err(_) => return Some(written),
        }
    }
    None
}

#[tokio::test]
async fn a_client_that_sends_pingreqs_and_never_reads_is_disconnected() {
    let server = Server::start_with(std::sync::Arc::new(FakeBackend::default()), |config| {
        config.max_queued_packets = 64;
    })
    .await;
    let mut raw = server.raw_connected("flooder", true).await;
    let written = flood_until_closed(&mut raw, &Packet::PingReq).await;
    assert!(
        written.is_some(),
        "the server kept reading {FLOOD_LIMIT} bytes of PINGREQ without closing"
    );
    let disconnects = server
        .backend
        .wait_for("the disconnect", |b| {
            let d = b.disconnects();
            (!d.is_empty()).then_some(d)
        })
        .await;
    assert_eq!(disconnects[0].0, "flooder");
}

#[tokio::test]
async fn a_client_that_asks_for_its_twin_and_never_reads_is_disconnected() {
    let server = Server::start().await;
    let mut raw = server.raw_connected("getter", true).await;
    let get = Packet::Publish(Publish::new(
        "$iothub/twin/GET/?$rid=1",
        QoS::AtMostOnce,
        &b" "[..],
    ));
    let written = flood_until_closed(&mut raw, &get).await;
    assert!(
        written.is_some(),
        "the server kept answering twin GETs nobody read, for {FLOOD_LIMIT} bytes"
    );
}

#[tokio::test]
async fn a_connection_closes_when_its_token_expires() {
    let server = Server::start().await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Valid for two more seconds: its expiry is five minutes of clock skew in the past.
    let expiry = now + 2 - outpost_core::sas::MAX_CLOCK_SKEW_SECS;
    let token = format!("SharedAccessSignature sr=short&sig=good&se={expiry}");
    server.backend.allow_with_token("short", &token);
    let mut raw = server.raw_connected_with("short", &token, true).await;
    raw.send(&Packet::PingReq).await;
    assert_eq!(
        raw.recv().await,
        Some(Packet::PingResp),
        "served while the token is valid"
    );
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            raw.send(&Packet::PingReq).await;
            if raw.recv().await.is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection outlived its token");
}
