//! PUBACK (§3.4): acknowledges a QoS 1 PUBLISH.

use bytes::{BufMut, BytesMut};

use super::frame::Reader;
use super::PacketError;

/// A PUBACK packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubAck {
    /// Packet identifier of the PUBLISH it acknowledges.
    pub pkid: u16,
}

impl PubAck {
    pub(super) fn read(r: &mut Reader) -> Result<Self, PacketError> {
        Ok(Self { pkid: r.u16()? })
    }

    pub(super) fn write(self, buf: &mut BytesMut) {
        buf.put_u16(self.pkid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{decode, Packet};

    #[test]
    fn a_puback_is_its_packet_id() {
        let mut buf = BytesMut::from(&[0x40, 0x02, 0x01, 0x02][..]);
        assert_eq!(
            decode(&mut buf, 10),
            Ok(Some(Packet::PubAck(PubAck { pkid: 0x0102 })))
        );
    }

    #[test]
    fn a_puback_with_extra_bytes_is_refused() {
        let mut buf = BytesMut::from(&[0x40, 0x03, 0x01, 0x02, 0x03][..]);
        assert_eq!(decode(&mut buf, 10), Err(PacketError::TrailingBytes(1)));
    }

    #[test]
    fn a_short_puback_is_truncated() {
        let mut buf = BytesMut::from(&[0x40, 0x01, 0x01][..]);
        assert_eq!(decode(&mut buf, 10), Err(PacketError::Truncated));
    }
}
