//! UNSUBSCRIBE (§3.10): removes subscriptions.

use bytes::{BufMut, BytesMut};

use super::frame::{field_len, write_field, Reader};
use super::PacketError;

/// An UNSUBSCRIBE packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier, echoed in the UNSUBACK.
    pub pkid: u16,
    /// Topic filters to remove, at least one.
    pub filters: Vec<String>,
}

impl Unsubscribe {
    pub(super) fn read(r: &mut Reader) -> Result<Self, PacketError> {
        let pkid = r.packet_id()?;
        let mut filters = Vec::new();
        while r.remaining() > 0 {
            filters.push(r.string()?);
        }
        // [MQTT-3.10.3-2] at least one filter.
        if filters.is_empty() {
            return Err(PacketError::NoTopicFilter);
        }
        Ok(Self { pkid, filters })
    }

    pub(super) fn remaining_len(&self) -> Result<usize, PacketError> {
        self.filters
            .iter()
            .try_fold(2, |len, filter| Ok(len + field_len(filter.len())?))
    }

    pub(super) fn write(&self, buf: &mut BytesMut) {
        buf.put_u16(self.pkid);
        for filter in &self.filters {
            write_field(filter.as_bytes(), buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{decode, Packet};

    #[test]
    fn an_unsubscribe_lists_its_filters() {
        let mut buf = BytesMut::from(&b"\xA2\x08\x00\x02\x00\x01a\x00\x01b"[..]);
        let expected = Unsubscribe {
            pkid: 2,
            filters: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            decode(&mut buf, 100),
            Ok(Some(Packet::Unsubscribe(expected)))
        );
    }

    #[test]
    fn an_unsubscribe_without_filters_is_refused() {
        let mut buf = BytesMut::from(&b"\xA2\x02\x00\x02"[..]);
        assert_eq!(decode(&mut buf, 100), Err(PacketError::NoTopicFilter));
    }
}
