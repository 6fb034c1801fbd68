//! MQTT 3.1.1 control packets: one module per packet type, each with `read` (from a whole frame) and
//! `write`; [`decode`] and [`encode`] are the entry points.
//!
//! Only what an IoT Hub device speaks is supported: QoS 0 and 1. The QoS 2 flow packets (PUBREC, PUBREL,
//! PUBCOMP) are refused by the decoder; a QoS 2 PUBLISH decodes (it is valid MQTT) and the session
//! closes the connection.

mod connack;
mod connect;
mod disconnect;
mod frame;
mod pingreq;
mod pingresp;
mod puback;
mod publish;
mod suback;
mod subscribe;
mod unsuback;
mod unsubscribe;

#[cfg(test)]
mod proptests;

use bytes::{Buf, BytesMut};

pub use connack::{ConnAck, ConnectReturnCode};
pub use connect::{Connect, Will, PROTOCOL_LEVEL_3_1_1};
pub use frame::MAX_REMAINING_LENGTH;
pub use puback::PubAck;
pub use publish::Publish;
pub use suback::{SubAck, SubscribeReturnCode};
pub use subscribe::Subscribe;
pub use unsuback::UnsubAck;
pub use unsubscribe::Unsubscribe;

use frame::{kind, FixedHeader, Reader};

/// Quality of service of a PUBLISH or a subscription (§4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// Fire and forget.
    AtMostOnce = 0,
    /// Acknowledged by PUBACK, may be delivered twice.
    AtLeastOnce = 1,
    /// The four-packet flow; IoT Hub refuses it and so do we, but it is decoded so the session can say why.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for its two-bit value; 3 is malformed.
    pub fn from_bits(bits: u8) -> Result<Self, PacketError> {
        match bits {
            0 => Ok(Self::AtMostOnce),
            1 => Ok(Self::AtLeastOnce),
            2 => Ok(Self::ExactlyOnce),
            other => Err(PacketError::InvalidQoS(other)),
        }
    }
}

/// An MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Client → server: opens the session. Boxed: it is by far the largest packet and comes once per
    /// connection, and every queue of packets holds slots of the enum's size.
    Connect(Box<Connect>),
    /// Server → client: answers CONNECT.
    ConnAck(ConnAck),
    /// Either way: an application message.
    Publish(Publish),
    /// Either way: acknowledges a QoS 1 PUBLISH.
    PubAck(PubAck),
    /// Client → server: adds subscriptions.
    Subscribe(Subscribe),
    /// Server → client: answers SUBSCRIBE.
    SubAck(SubAck),
    /// Client → server: removes subscriptions.
    Unsubscribe(Unsubscribe),
    /// Server → client: answers UNSUBSCRIBE.
    UnsubAck(UnsubAck),
    /// Client → server: keep-alive probe.
    PingReq,
    /// Server → client: answers PINGREQ.
    PingResp,
    /// Client → server: clean end of the connection.
    Disconnect,
}

impl Packet {
    /// The packet's name as the spec writes it, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connect(_) => "CONNECT",
            Self::ConnAck(_) => "CONNACK",
            Self::Publish(_) => "PUBLISH",
            Self::PubAck(_) => "PUBACK",
            Self::Subscribe(_) => "SUBSCRIBE",
            Self::SubAck(_) => "SUBACK",
            Self::Unsubscribe(_) => "UNSUBSCRIBE",
            Self::UnsubAck(_) => "UNSUBACK",
            Self::PingReq => "PINGREQ",
            Self::PingResp => "PINGRESP",
            Self::Disconnect => "DISCONNECT",
        }
    }
}

/// Why bytes could not be decoded into a packet, or a packet could not be encoded.
///
/// Every decode error is a protocol violation: the connection that sent the bytes is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The Remaining Length has a continuation bit on its fourth byte (§2.2.3).
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    /// The fixed header announces a frame larger than the configured maximum.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// Whole frame size announced by the fixed header.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// Packet type 0 or 15, reserved (§2.2.1).
    #[error("reserved packet type {0}")]
    InvalidPacketType(u8),
    /// PUBREC, PUBREL or PUBCOMP: the QoS 2 flow is not supported.
    #[error("packet type {0} belongs to the QoS 2 flow, which is not supported")]
    UnsupportedPacketType(u8),
    /// Flags of the fixed header differ from the reserved value [MQTT-2.2.2-2].
    #[error("invalid flags {flags:#06b} for packet type {packet_type}")]
    InvalidFlags {
        /// The packet type.
        packet_type: u8,
        /// The flags received.
        flags: u8,
    },
    /// A field runs past the end of the packet.
    #[error("packet truncated: a field runs past its end")]
    Truncated,
    /// Bytes left after the last field of a packet with a fixed layout.
    #[error("{0} unexpected bytes after the last field")]
    TrailingBytes(usize),
    /// A string is not well-formed UTF-8 [MQTT-1.5.3-1].
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A string contains U+0000 [MQTT-1.5.3-2].
    #[error("string contains U+0000")]
    NullCharacter,
    /// CONNECT's protocol name is not "MQTT" [MQTT-3.1.2-1].
    #[error("protocol name {0:?} is not MQTT")]
    InvalidProtocolName(String),
    /// CONNECT flags break [MQTT-3.1.2-3], [MQTT-3.1.2-11..15] or [MQTT-3.1.2-22].
    #[error("invalid connect flags {0:#010b}")]
    InvalidConnectFlags(u8),
    /// A QoS of 3 [MQTT-3.3.1-4].
    #[error("invalid QoS {0}")]
    InvalidQoS(u8),
    /// DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2].
    #[error("DUP flag set on a QoS 0 PUBLISH")]
    DupOnQoS0,
    /// A packet identifier of 0 where one is required [MQTT-2.3.1-1].
    #[error("packet identifier 0")]
    ZeroPacketId,
    /// A PUBLISH topic name that is empty [MQTT-4.7.3-1].
    #[error("empty topic name")]
    EmptyTopic,
    /// A PUBLISH topic name with '+' or '#' [MQTT-3.3.2-2].
    #[error("wildcard in topic name {0:?}")]
    WildcardInTopicName(String),
    /// SUBSCRIBE or UNSUBSCRIBE without any topic filter [MQTT-3.8.3-3] [MQTT-3.10.3-2].
    #[error("no topic filter")]
    NoTopicFilter,
    /// Requested QoS byte with reserved bits set or QoS 3 [MQTT-3.8.3-4].
    #[error("invalid requested QoS byte {0:#04x}")]
    InvalidRequestedQoS(u8),
    /// CONNACK acknowledge flags with reserved bits, or session present with a refusal [MQTT-3.2.2-4].
    #[error("invalid CONNACK flags {0:#04x}")]
    InvalidConnAckFlags(u8),
    /// CONNACK return code above 5 (reserved).
    #[error("reserved CONNACK return code {0}")]
    InvalidConnectReturnCode(u8),
    /// SUBACK return code other than 0x00, 0x01, 0x02, 0x80 [MQTT-3.9.3-2].
    #[error("reserved SUBACK return code {0:#04x}")]
    InvalidSubscribeReturnCode(u8),
    /// Encoding: a string or binary field longer than 65535 bytes.
    #[error("field of {0} bytes does not fit a two-byte length")]
    FieldTooLong(usize),
    /// Encoding: a packet larger than the Remaining Length can express.
    #[error("packet body of {0} bytes exceeds the MQTT maximum")]
    PayloadTooLarge(usize),
}

/// Decodes one packet from the front of `buf`, consuming it.
///
/// Returns `Ok(None)` while the frame is incomplete (nothing is consumed). Frames larger than `max_size`
/// are refused as soon as their fixed header is in. On error the buffer state is unspecified: the caller
/// closes the connection.
pub fn decode(buf: &mut BytesMut, max_size: usize) -> Result<Option<Packet>, PacketError> {
    let Some(header) = frame::check(buf, max_size)? else {
        return Ok(None);
    };
    let packet = read(
        header,
        Reader::new(&buf[header.header_len..header.frame_len()]),
    )?;
    buf.advance(header.frame_len());
    Ok(Some(packet))
}

fn read(header: FixedHeader, mut body: Reader<'_>) -> Result<Packet, PacketError> {
    let packet = match header.packet_type() {
        kind::CONNECT => Packet::Connect(Box::new(Connect::read(&mut body)?)),
        kind::CONNACK => Packet::ConnAck(ConnAck::read(&mut body)?),
        kind::PUBLISH => Packet::Publish(Publish::read(header.flags(), &mut body)?),
        kind::PUBACK => Packet::PubAck(PubAck::read(&mut body)?),
        kind::SUBSCRIBE => Packet::Subscribe(Subscribe::read(&mut body)?),
        kind::SUBACK => Packet::SubAck(SubAck::read(&mut body)?),
        kind::UNSUBSCRIBE => Packet::Unsubscribe(Unsubscribe::read(&mut body)?),
        kind::UNSUBACK => Packet::UnsubAck(UnsubAck::read(&mut body)?),
        kind::PINGREQ => pingreq::read(&body)?,
        kind::PINGRESP => pingresp::read(&body)?,
        kind::DISCONNECT => disconnect::read(&body)?,
        // frame::check refused every other type already.
        other => return Err(PacketError::InvalidPacketType(other)),
    };
    body.finish()?;
    Ok(packet)
}

/// Appends the encoding of `packet` to `buf`.
///
/// Fails, leaving `buf` unchanged, when a field is longer than 65535 bytes or the packet exceeds the
/// MQTT maximum size.
pub fn encode(packet: &Packet, buf: &mut BytesMut) -> Result<(), PacketError> {
    let (byte1, remaining_len) = match packet {
        Packet::Connect(p) => (kind::CONNECT << 4, p.remaining_len()?),
        Packet::ConnAck(_) => (kind::CONNACK << 4, 2),
        Packet::Publish(p) => (p.byte1(), p.remaining_len()?),
        Packet::PubAck(_) => (kind::PUBACK << 4, 2),
        Packet::Subscribe(p) => ((kind::SUBSCRIBE << 4) | 0b0010, p.remaining_len()?),
        Packet::SubAck(p) => (kind::SUBACK << 4, p.remaining_len()),
        Packet::Unsubscribe(p) => ((kind::UNSUBSCRIBE << 4) | 0b0010, p.remaining_len()?),
        Packet::UnsubAck(_) => (kind::UNSUBACK << 4, 2),
        Packet::PingReq => (kind::PINGREQ << 4, 0),
        Packet::PingResp => (kind::PINGRESP << 4, 0),
        Packet::Disconnect => (kind::DISCONNECT << 4, 0),
    };
    if remaining_len > MAX_REMAINING_LENGTH {
        return Err(PacketError::PayloadTooLarge(remaining_len));
    }
    buf.reserve(1 + frame::remaining_len_bytes(remaining_len) + remaining_len);
    frame::write_header(byte1, remaining_len, buf);
    match packet {
        Packet::Connect(p) => p.write(buf),
        Packet::ConnAck(p) => p.write(buf),
        Packet::Publish(p) => p.write(buf),
        Packet::PubAck(p) => p.write(buf),
        Packet::Subscribe(p) => p.write(buf),
        Packet::SubAck(p) => p.write(buf),
        Packet::Unsubscribe(p) => p.write(buf),
        Packet::UnsubAck(p) => p.write(buf),
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => {}
    }
    Ok(())
}

/// Size of the encoded packet, or an error if it cannot be encoded.
pub fn encoded_len(packet: &Packet) -> Result<usize, PacketError> {
    let remaining_len = match packet {
        Packet::Connect(p) => p.remaining_len()?,
        Packet::Publish(p) => p.remaining_len()?,
        Packet::Subscribe(p) => p.remaining_len()?,
        Packet::SubAck(p) => p.remaining_len(),
        Packet::Unsubscribe(p) => p.remaining_len()?,
        Packet::ConnAck(_) | Packet::PubAck(_) | Packet::UnsubAck(_) => 2,
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => 0,
    };
    Ok(1 + frame::remaining_len_bytes(remaining_len) + remaining_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_consumes_exactly_one_frame_and_leaves_the_next() {
        let mut buf = BytesMut::from(&[0xC0, 0x00, 0xD0, 0x00, 0xE0][..]);
        assert_eq!(decode(&mut buf, 100), Ok(Some(Packet::PingReq)));
        assert_eq!(decode(&mut buf, 100), Ok(Some(Packet::PingResp)));
        // A lone DISCONNECT type byte is incomplete, not an error, and stays buffered.
        assert_eq!(decode(&mut buf, 100), Ok(None));
        assert_eq!(buf.len(), 1);
    }

    /// A decoded payload is its own allocation, not a slice of the read buffer: a slice would keep the
    /// connection's whole read buffer alive for as long as a queue holds the message, so that a client sending
    /// small messages could pin many times their size in memory.
    #[test]
    fn a_decoded_payload_does_not_share_the_read_buffer() {
        let publish = Publish {
            pkid: 1,
            ..Publish::new(
                "devices/dev1/messages/events/",
                QoS::AtLeastOnce,
                vec![b'x'; 32],
            )
        };
        let mut buf = BytesMut::new();
        encode(&Packet::Publish(publish.clone()), &mut buf).unwrap();
        encode(&Packet::PingReq, &mut buf).unwrap();
        let inside = buf.as_ptr_range();
        let Ok(Some(Packet::Publish(decoded))) = decode(&mut buf, 1000) else {
            panic!("a PUBLISH was encoded")
        };
        assert_eq!(decoded, publish);
        assert!(
            !inside.contains(&decoded.payload.as_ptr()),
            "the payload is a slice of the read buffer"
        );
        assert_eq!(decode(&mut buf, 1000), Ok(Some(Packet::PingReq)));
    }

    #[test]
    fn an_incomplete_frame_consumes_nothing() {
        let mut out = BytesMut::new();
        encode(&Packet::PubAck(PubAck { pkid: 7 }), &mut out).unwrap();
        let mut partial = BytesMut::from(&out[..3]);
        assert_eq!(decode(&mut partial, 100), Ok(None));
        assert_eq!(partial.len(), 3);
    }

    #[test]
    fn encoding_a_too_long_topic_fails_and_writes_nothing() {
        let publish = Publish::new("a".repeat(70_000), QoS::AtMostOnce, &b""[..]);
        let mut buf = BytesMut::new();
        assert_eq!(
            encode(&Packet::Publish(publish), &mut buf),
            Err(PacketError::FieldTooLong(70_000))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn encoded_len_matches_the_bytes_written() {
        let packet =
            Packet::Publish(Publish::new("t/x", QoS::AtLeastOnce, vec![0u8; 300]).with_pkid(9));
        let mut buf = BytesMut::new();
        encode(&packet, &mut buf).unwrap();
        assert_eq!(encoded_len(&packet), Ok(buf.len()));
    }

    #[test]
    fn pingreq_with_a_body_is_refused() {
        let mut buf = BytesMut::from(&[0xC0, 0x01, 0x00][..]);
        assert_eq!(decode(&mut buf, 100), Err(PacketError::TrailingBytes(1)));
    }
}
