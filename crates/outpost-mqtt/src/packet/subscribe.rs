//! SUBSCRIBE (§3.8): adds subscriptions.

use bytes::{BufMut, BytesMut};

use super::frame::{field_len, write_field, Reader};
use super::{PacketError, QoS};

/// A SUBSCRIBE packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier, echoed in the SUBACK.
    pub pkid: u16,
    /// Topic filters with their requested QoS, at least one.
    pub filters: Vec<(String, QoS)>,
}

impl Subscribe {
    pub(super) fn read(r: &mut Reader) -> Result<Self, PacketError> {
        let pkid = r.packet_id()?;
        let mut filters = Vec::new();
        while r.remaining() > 0 {
            // [MQTT-3.8.3-1] topic filters are UTF-8 strings.
            let filter = r.string()?;
            let options = r.u8()?;
            // [MQTT-3-8.3-4] upper six bits reserved, QoS 3 invalid.
            if options & !0b11 != 0 || options == 3 {
                return Err(PacketError::InvalidRequestedQoS(options));
            }
            filters.push((filter, QoS::from_bits(options)?));
        }
        // [MQTT-3.8.3-3] at least one filter.
        if filters.is_empty() {
            return Err(PacketError::NoTopicFilter);
        }
        Ok(Self { pkid, filters })
    }

    pub(super) fn remaining_len(&self) -> Result<usize, PacketError> {
        self.filters
            .iter()
            .try_fold(2, |len, (filter, _)| Ok(len + field_len(filter.len())? + 1))
    }

    pub(super) fn write(&self, buf: &mut BytesMut) {
        buf.put_u16(self.pkid);
        for (filter, qos) in &self.filters {
            write_field(filter.as_bytes(), buf);
            buf.put_u8(*qos as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{decode, Packet};

    fn raw(body: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        super::super::frame::write_header(0x82, body.len(), &mut buf);
        buf.extend_from_slice(body);
        buf
    }

    #[test]
    fn the_sdk_c2d_subscribe_decodes() {
        let mut body = vec![0, 1];
        body.extend_from_slice(b"\x00\x23devices/devA/messages/devicebound/#\x01");
        let Packet::Subscribe(s) = decode(&mut raw(&body), 100).unwrap().unwrap() else {
            panic!()
        };
        assert_eq!(
            s.filters,
            vec![(
                "devices/devA/messages/devicebound/#".to_owned(),
                QoS::AtLeastOnce
            )]
        );
    }

    #[test]
    fn a_subscribe_without_filters_is_refused() {
        assert_eq!(
            decode(&mut raw(&[0, 1]), 100),
            Err(PacketError::NoTopicFilter)
        );
    }

    #[test]
    fn reserved_bits_in_the_requested_qos_are_refused() {
        assert_eq!(
            decode(&mut raw(b"\x00\x01\x00\x01a\x04"), 100),
            Err(PacketError::InvalidRequestedQoS(4))
        );
    }

    #[test]
    fn a_filter_without_its_qos_byte_is_truncated() {
        assert_eq!(
            decode(&mut raw(b"\x00\x01\x00\x01a"), 100),
            Err(PacketError::Truncated)
        );
    }
}
