//! DISCONNECT (§3.14): the client's clean goodbye; no variable header, no payload.

use super::frame::Reader;
use super::{Packet, PacketError};

pub(super) fn read(r: &Reader) -> Result<Packet, PacketError> {
    // §3.14: the packet is the fixed header alone; anything after it is malformed.
    r.finish()?;
    Ok(Packet::Disconnect)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use crate::packet::{decode, encode, Packet, PacketError};

    #[test]
    fn disconnect_is_two_bytes() {
        let mut buf = BytesMut::new();
        encode(&Packet::Disconnect, &mut buf).unwrap();
        assert_eq!(&buf[..], &[0xE0, 0x00]);
        assert_eq!(decode(&mut buf, 10), Ok(Some(Packet::Disconnect)));
    }

    #[test]
    fn disconnect_with_flags_is_refused() {
        let mut buf = BytesMut::from(&[0xE1, 0x00][..]);
        assert!(matches!(
            decode(&mut buf, 10),
            Err(PacketError::InvalidFlags { .. })
        ));
    }
}
