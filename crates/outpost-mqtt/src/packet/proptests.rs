//! Property tests: every encodable packet decodes to itself, and no byte string makes the decoder panic.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

fn text() -> impl Strategy<Value = String> {
    // Any Unicode but U+0000 [MQTT-1.5.3-2].
    "[^\u{0}]{0,40}"
}

fn topic_name() -> impl Strategy<Value = String> {
    "[^\u{0}+#]{1,40}"
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn pkid() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn connect() -> impl Strategy<Value = Connect> {
    let will =
        (topic_name(), binary(), qos(), any::<bool>()).prop_map(|(topic, message, qos, retain)| {
            Will {
                topic,
                message,
                qos,
                retain,
            }
        });
    (
        any::<u8>(),
        any::<bool>(),
        any::<u16>(),
        text(),
        proptest::option::of(will),
        proptest::option::of(text()),
        proptest::option::of(binary()),
    )
        .prop_map(
            |(protocol_level, clean_session, keep_alive, client_id, will, username, password)| {
                // A password needs a user name [MQTT-3.1.2-22].
                let password = if username.is_some() { password } else { None };
                Connect {
                    protocol_level,
                    clean_session,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                }
            },
        )
}

fn connack() -> impl Strategy<Value = ConnAck> {
    let code = prop_oneof![
        Just(ConnectReturnCode::Accepted),
        Just(ConnectReturnCode::UnacceptableProtocolVersion),
        Just(ConnectReturnCode::IdentifierRejected),
        Just(ConnectReturnCode::ServerUnavailable),
        Just(ConnectReturnCode::BadUserNameOrPassword),
        Just(ConnectReturnCode::NotAuthorized),
    ];
    (any::<bool>(), code).prop_map(|(present, code)| ConnAck {
        session_present: present && code == ConnectReturnCode::Accepted,
        code,
    })
}

fn publish() -> impl Strategy<Value = Publish> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        pkid(),
        vec(any::<u8>(), 0..512),
    )
        .prop_map(|(dup, qos, retain, topic, pkid, payload)| {
            let qos0 = qos == QoS::AtMostOnce;
            Publish {
                dup: dup && !qos0,
                qos,
                retain,
                topic,
                pkid: if qos0 { 0 } else { pkid },
                payload: payload.into(),
            }
        })
}

fn suback_code() -> impl Strategy<Value = SubscribeReturnCode> {
    prop_oneof![
        qos().prop_map(SubscribeReturnCode::Success),
        Just(SubscribeReturnCode::Failure)
    ]
}

fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        connect().prop_map(|c| Packet::Connect(Box::new(c))),
        connack().prop_map(Packet::ConnAck),
        publish().prop_map(Packet::Publish),
        any::<u16>().prop_map(|pkid| Packet::PubAck(PubAck { pkid })),
        (pkid(), vec((text(), qos()), 1..5))
            .prop_map(|(pkid, filters)| Packet::Subscribe(Subscribe { pkid, filters })),
        (any::<u16>(), vec(suback_code(), 0..5))
            .prop_map(|(pkid, return_codes)| Packet::SubAck(SubAck { pkid, return_codes })),
        (pkid(), vec(text(), 1..5))
            .prop_map(|(pkid, filters)| Packet::Unsubscribe(Unsubscribe { pkid, filters })),
        any::<u16>().prop_map(|pkid| Packet::UnsubAck(UnsubAck { pkid })),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        Just(Packet::Disconnect),
    ]
}

proptest! {
    #[test]
    fn every_encoded_packet_decodes_to_itself(packet in packet()) {
        let mut buf = BytesMut::new();
        encode(&packet, &mut buf).unwrap();
        prop_assert_eq!(encoded_len(&packet).unwrap(), buf.len());
        prop_assert_eq!(decode(&mut buf, usize::MAX), Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn a_stream_of_packets_decodes_in_order_whatever_the_chunking(
        packets in vec(packet(), 1..8),
        chunk in 1usize..64,
    ) {
        let mut wire = BytesMut::new();
        for packet in &packets {
            encode(packet, &mut wire).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(packet) = decode(&mut buf, usize::MAX).unwrap() {
                decoded.push(packet);
            }
        }
        prop_assert_eq!(decoded, packets);
    }

    #[test]
    fn a_truncated_packet_is_never_complete(packet in packet(), cut in any::<prop::sample::Index>()) {
        let mut wire = BytesMut::new();
        encode(&packet, &mut wire).unwrap();
        let cut = cut.index(wire.len());
        let mut partial = BytesMut::from(&wire[..cut]);
        prop_assert_eq!(decode(&mut partial, usize::MAX), Ok(None));
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..1024), max in 0usize..2048) {
        let mut buf = BytesMut::from(&bytes[..]);
        // Keep decoding until the input is exhausted, incomplete or refused.
        while let Ok(Some(_)) = decode(&mut buf, max) {}
    }

    #[test]
    fn decode_never_panics_on_a_valid_header_with_arbitrary_body(
        byte1 in any::<u8>(),
        body in vec(any::<u8>(), 0..256),
    ) {
        let mut buf = BytesMut::new();
        frame::write_header(byte1, body.len(), &mut buf);
        buf.extend_from_slice(&body);
        let _ = decode(&mut buf, usize::MAX);
    }
}
