//! UNSUBACK (§3.11): answers UNSUBSCRIBE.

use bytes::{BufMut, BytesMut};

use super::frame::Reader;
use super::PacketError;

/// An UNSUBACK packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE.
    pub pkid: u16,
}

impl UnsubAck {
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
    fn an_unsuback_is_its_packet_id() {
        let mut buf = BytesMut::from(&[0xB0, 0x02, 0x00, 0x09][..]);
        assert_eq!(
            decode(&mut buf, 10),
            Ok(Some(Packet::UnsubAck(UnsubAck { pkid: 9 })))
        );
    }
}
