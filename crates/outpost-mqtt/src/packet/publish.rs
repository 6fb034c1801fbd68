//! PUBLISH (§3.3): an application message, either way.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{field_len, kind, write_field, Reader};
use super::{PacketError, QoS};

const DUP: u8 = 0b1000;
const RETAIN: u8 = 0b0001;

/// A PUBLISH packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP: this is a redelivery [MQTT-3.3.1-1].
    pub dup: bool,
    /// Delivery QoS.
    pub qos: QoS,
    /// RETAIN flag (IoT Hub ignores it).
    pub retain: bool,
    /// Topic name.
    pub topic: String,
    /// Packet identifier; 0 for QoS 0 (which carries none).
    pub pkid: u16,
    /// Application payload.
    pub payload: Bytes,
}

impl Publish {
    /// A fresh PUBLISH (not DUP, not retained, packet id 0 until one is assigned).
    pub fn new(topic: impl Into<String>, qos: QoS, payload: impl Into<Bytes>) -> Self {
        Self {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            pkid: 0,
            payload: payload.into(),
        }
    }

    /// The same PUBLISH with packet id `pkid`.
    #[must_use]
    pub fn with_pkid(mut self, pkid: u16) -> Self {
        self.pkid = pkid;
        self
    }

    pub(super) fn read(flags: u8, r: &mut Reader) -> Result<Self, PacketError> {
        // [MQTT-3.3.1-4] QoS bits 11 are malformed.
        let qos = QoS::from_bits((flags >> 1) & 0b11)?;
        let dup = flags & DUP != 0;
        // [MQTT-3.3.1-2] DUP must be 0 for QoS 0.
        if dup && qos == QoS::AtMostOnce {
            return Err(PacketError::DupOnQoS0);
        }
        let topic = r.string()?;
        // [MQTT-4.7.3-1] a topic name is at least one character long.
        if topic.is_empty() {
            return Err(PacketError::EmptyTopic);
        }
        // [MQTT-3.3.2-2] a topic name must not contain wildcards.
        if topic.contains(['+', '#']) {
            return Err(PacketError::WildcardInTopicName(topic));
        }
        // [MQTT-2.3.1-1] QoS 1 and 2 carry a non-zero packet identifier; QoS 0 none.
        let pkid = if qos == QoS::AtMostOnce {
            0
        } else {
            r.packet_id()?
        };
        Ok(Self {
            dup,
            qos,
            retain: flags & RETAIN != 0,
            topic,
            pkid,
            payload: r.rest(),
        })
    }

    pub(super) fn byte1(&self) -> u8 {
        let mut byte1 = (kind::PUBLISH << 4) | ((self.qos as u8) << 1);
        if self.dup {
            byte1 |= DUP;
        }
        if self.retain {
            byte1 |= RETAIN;
        }
        byte1
    }

    pub(super) fn remaining_len(&self) -> Result<usize, PacketError> {
        let pkid_len = if self.qos == QoS::AtMostOnce { 0 } else { 2 };
        Ok(field_len(self.topic.len())? + pkid_len + self.payload.len())
    }

    pub(super) fn write(&self, buf: &mut BytesMut) {
        write_field(self.topic.as_bytes(), buf);
        if self.qos != QoS::AtMostOnce {
            buf.put_u16(self.pkid);
        }
        buf.put_slice(&self.payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{decode, encode, Packet};

    fn raw(byte1: u8, body: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        super::super::frame::write_header(byte1, body.len(), &mut buf);
        buf.extend_from_slice(body);
        buf
    }

    #[test]
    fn a_qos1_publish_carries_topic_packet_id_and_payload() {
        let mut buf = raw(0x32, b"\x00\x03a/b\x00\x07hi");
        let Packet::Publish(p) = decode(&mut buf, 100).unwrap().unwrap() else {
            panic!()
        };
        assert_eq!(
            (p.topic.as_str(), p.pkid, &p.payload[..], p.qos),
            ("a/b", 7, &b"hi"[..], QoS::AtLeastOnce)
        );
    }

    #[test]
    fn qos_bits_3_are_malformed() {
        assert_eq!(
            decode(&mut raw(0x36, b"\x00\x01a\x00\x01"), 100),
            Err(PacketError::InvalidQoS(3))
        );
    }

    #[test]
    fn dup_on_qos0_is_refused() {
        assert_eq!(
            decode(&mut raw(0x38, b"\x00\x01a"), 100),
            Err(PacketError::DupOnQoS0)
        );
    }

    #[test]
    fn a_qos1_publish_with_packet_id_zero_is_refused() {
        assert_eq!(
            decode(&mut raw(0x32, b"\x00\x01a\x00\x00"), 100),
            Err(PacketError::ZeroPacketId)
        );
    }

    #[test]
    fn wildcards_in_a_topic_name_are_refused() {
        assert!(matches!(
            decode(&mut raw(0x30, b"\x00\x03a/#"), 100),
            Err(PacketError::WildcardInTopicName(_))
        ));
    }

    #[test]
    fn an_empty_topic_name_is_refused() {
        assert_eq!(
            decode(&mut raw(0x30, b"\x00\x00x"), 100),
            Err(PacketError::EmptyTopic)
        );
    }

    #[test]
    fn a_qos2_publish_decodes_so_the_session_can_refuse_it() {
        let mut buf = raw(0x34, b"\x00\x01a\x00\x01");
        assert!(matches!(
            decode(&mut buf, 100),
            Ok(Some(Packet::Publish(Publish {
                qos: QoS::ExactlyOnce,
                ..
            })))
        ));
    }

    #[test]
    fn dup_and_retain_round_trip() {
        let mut p = Publish::new("t", QoS::AtLeastOnce, &b"x"[..]).with_pkid(3);
        p.dup = true;
        p.retain = true;
        let mut buf = BytesMut::new();
        encode(&Packet::Publish(p.clone()), &mut buf).unwrap();
        assert_eq!(buf[0], 0x3B);
        assert_eq!(decode(&mut buf, 100), Ok(Some(Packet::Publish(p))));
    }
}
