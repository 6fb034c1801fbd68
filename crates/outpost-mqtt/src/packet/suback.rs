//! SUBACK (§3.9): answers SUBSCRIBE, one return code per filter.

use bytes::{BufMut, BytesMut};

use super::frame::Reader;
use super::{PacketError, QoS};

/// One SUBACK return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeReturnCode {
    /// Granted at this QoS.
    Success(QoS),
    /// 0x80: refused.
    Failure,
}

/// A SUBACK packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub pkid: u16,
    /// One code per filter, in the SUBSCRIBE's order [MQTT-3.9.3-1].
    pub return_codes: Vec<SubscribeReturnCode>,
}

impl SubAck {
    pub(super) fn read(r: &mut Reader) -> Result<Self, PacketError> {
        let pkid = r.u16()?;
        let mut return_codes = Vec::with_capacity(r.remaining());
        while r.remaining() > 0 {
            return_codes.push(match r.u8()? {
                0x80 => SubscribeReturnCode::Failure,
                code @ 0..=2 => SubscribeReturnCode::Success(QoS::from_bits(code)?),
                // [MQTT-3.9.3-2] other values are reserved.
                other => return Err(PacketError::InvalidSubscribeReturnCode(other)),
            });
        }
        Ok(Self { pkid, return_codes })
    }

    pub(super) fn remaining_len(&self) -> usize {
        2 + self.return_codes.len()
    }

    pub(super) fn write(&self, buf: &mut BytesMut) {
        buf.put_u16(self.pkid);
        for code in &self.return_codes {
            buf.put_u8(match code {
                SubscribeReturnCode::Success(qos) => *qos as u8,
                SubscribeReturnCode::Failure => 0x80,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{decode, Packet};

    #[test]
    fn a_suback_lists_granted_qos_and_failures() {
        let mut buf = BytesMut::from(&[0x90, 0x04, 0x00, 0x05, 0x01, 0x80][..]);
        let expected = SubAck {
            pkid: 5,
            return_codes: vec![
                SubscribeReturnCode::Success(QoS::AtLeastOnce),
                SubscribeReturnCode::Failure,
            ],
        };
        assert_eq!(decode(&mut buf, 10), Ok(Some(Packet::SubAck(expected))));
    }

    #[test]
    fn reserved_suback_codes_are_refused() {
        let mut buf = BytesMut::from(&[0x90, 0x03, 0x00, 0x05, 0x03][..]);
        assert_eq!(
            decode(&mut buf, 10),
            Err(PacketError::InvalidSubscribeReturnCode(3))
        );
    }
}
