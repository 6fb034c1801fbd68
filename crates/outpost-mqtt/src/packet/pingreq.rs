//! PINGREQ (§3.12): Client → server keep-alive probe; no variable header, no payload.

use super::frame::Reader;
use super::{Packet, PacketError};

pub(super) fn read(r: &Reader) -> Result<Packet, PacketError> {
    // §3.12: the packet is the fixed header alone; anything after it is malformed.
    r.finish()?;
    Ok(Packet::PingReq)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use crate::packet::{decode, encode, Packet, PacketError};

    #[test]
    fn pingreq_is_two_bytes() {
        let mut buf = BytesMut::new();
        encode(&Packet::PingReq, &mut buf).unwrap();
        assert_eq!(&buf[..], &[0xC0, 0x00]);
        assert_eq!(decode(&mut buf, 10), Ok(Some(Packet::PingReq)));
    }

    #[test]
    fn pingreq_with_flags_is_refused() {
        let mut buf = BytesMut::from(&[0xC1, 0x00][..]);
        assert!(matches!(
            decode(&mut buf, 10),
            Err(PacketError::InvalidFlags { .. })
        ));
    }
}
