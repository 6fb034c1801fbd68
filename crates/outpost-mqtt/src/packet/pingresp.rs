//! PINGRESP (§3.13): the server's answer to PINGREQ; no variable header, no payload.

use super::frame::Reader;
use super::{Packet, PacketError};

pub(super) fn read(r: &Reader) -> Result<Packet, PacketError> {
    // §3.13: the packet is the fixed header alone; anything after it is malformed.
    r.finish()?;
    Ok(Packet::PingResp)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use crate::packet::{decode, encode, Packet, PacketError};

    #[test]
    fn pingresp_is_two_bytes() {
        let mut buf = BytesMut::new();
        encode(&Packet::PingResp, &mut buf).unwrap();
        assert_eq!(&buf[..], &[0xD0, 0x00]);
        assert_eq!(decode(&mut buf, 10), Ok(Some(Packet::PingResp)));
    }

    #[test]
    fn pingresp_with_flags_is_refused() {
        let mut buf = BytesMut::from(&[0xD1, 0x00][..]);
        assert!(matches!(
            decode(&mut buf, 10),
            Err(PacketError::InvalidFlags { .. })
        ));
    }
}
