//! The fixed header and the field primitives every packet is built from (MQTT 3.1.1 §1.5, §2.2).
//!
//! Framing is two-phase, after mini-redis: [`check`] looks at the fixed header without allocating and
//! says whether a whole frame is buffered; only then is the frame parsed where it lies, with a [`Reader`], and
//! consumed.

use bytes::{BufMut, Bytes, BytesMut};

use super::PacketError;

/// Largest value the four-byte Remaining Length can hold (§2.2.3).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Control packet types (§2.2.1).
pub mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
}

/// The fixed header of a frame that is entirely in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// First byte: packet type in the high nibble, flags in the low nibble.
    pub byte1: u8,
    /// Bytes taken by the fixed header itself (type byte + Remaining Length).
    pub header_len: usize,
    /// The Remaining Length: variable header plus payload.
    pub remaining_len: usize,
}

impl FixedHeader {
    /// The packet type (high nibble).
    pub fn packet_type(self) -> u8 {
        self.byte1 >> 4
    }

    /// The flags (low nibble).
    pub fn flags(self) -> u8 {
        self.byte1 & 0x0F
    }

    /// Length of the whole frame.
    pub fn frame_len(self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Checks that `buf` starts with a whole, acceptable frame, without allocating.
///
/// Returns `Ok(None)` when more bytes are needed. The type, the flags and the size are judged from the
/// fixed header alone, so garbage and oversize packets are refused before their body is buffered.
pub fn check(buf: &[u8], max_size: usize) -> Result<Option<FixedHeader>, PacketError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    check_type_and_flags(byte1)?;

    let mut remaining_len = 0usize;
    let mut header_len = None;
    // §2.2.3: at most four bytes, seven bits each, the high bit says "more follow".
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining_len |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            header_len = Some(2 + i);
            break;
        }
    }
    let Some(header_len) = header_len else {
        return Err(PacketError::MalformedRemainingLength);
    };

    let header = FixedHeader {
        byte1,
        header_len,
        remaining_len,
    };
    if header.frame_len() > max_size {
        return Err(PacketError::PacketTooLarge {
            size: header.frame_len(),
            max: max_size,
        });
    }
    if buf.len() < header.frame_len() {
        return Ok(None);
    }
    Ok(Some(header))
}

/// Refuses reserved packet types, the QoS 2 flow we do not speak, and reserved flag values.
fn check_type_and_flags(byte1: u8) -> Result<(), PacketError> {
    let packet_type = byte1 >> 4;
    let flags = byte1 & 0x0F;
    let expected = match packet_type {
        // §2.2.1: 0 and 15 are reserved.
        0 | 15 => return Err(PacketError::InvalidPacketType(packet_type)),
        kind::PUBREC | kind::PUBREL | kind::PUBCOMP => {
            return Err(PacketError::UnsupportedPacketType(packet_type))
        }
        // PUBLISH flags are DUP, QoS and RETAIN; their rules live in publish.rs.
        kind::PUBLISH => return Ok(()),
        // [MQTT-3.8.1-1] [MQTT-3.10.1-1] SUBSCRIBE and UNSUBSCRIBE carry 0b0010.
        kind::SUBSCRIBE | kind::UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    // [MQTT-2.2.2-1] [MQTT-2.2.2-2] reserved flags must hold the listed value, else the connection closes.
    if flags == expected {
        Ok(())
    } else {
        Err(PacketError::InvalidFlags { packet_type, flags })
    }
}

/// Writes a fixed header: type byte then the Remaining Length.
pub fn write_header(byte1: u8, remaining_len: usize, buf: &mut BytesMut) {
    buf.put_u8(byte1);
    let mut len = remaining_len;
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

/// Bytes the Remaining Length field takes for `remaining_len`.
pub fn remaining_len_bytes(remaining_len: usize) -> usize {
    match remaining_len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// A cursor over the body of one frame, borrowed from the read buffer; every read fails with `Truncated`
/// instead of panicking.
///
/// What a packet keeps (its strings, its payload) is copied out, so a decoded packet never shares the read
/// buffer: no reference count is taken per packet and per field, and a queue holding a payload keeps only the
/// payload alive, never the buffer it arrived in.
pub struct Reader<'a> {
    body: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads the variable header and payload of a frame.
    pub fn new(body: &'a [u8]) -> Self {
        Self { body }
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.body.len()
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, PacketError> {
        let (&byte, rest) = self.body.split_first().ok_or(PacketError::Truncated)?;
        self.body = rest;
        Ok(byte)
    }

    /// A big-endian two-byte integer (§1.5.2).
    pub fn u16(&mut self) -> Result<u16, PacketError> {
        let (bytes, rest) = self
            .body
            .split_first_chunk::<2>()
            .ok_or(PacketError::Truncated)?;
        self.body = rest;
        Ok(u16::from_be_bytes(*bytes))
    }

    /// A non-zero Packet Identifier: [MQTT-2.3.1-1].
    pub fn packet_id(&mut self) -> Result<u16, PacketError> {
        match self.u16()? {
            0 => Err(PacketError::ZeroPacketId),
            id => Ok(id),
        }
    }

    /// Two-byte length then that many bytes, borrowed.
    fn field(&mut self) -> Result<&'a [u8], PacketError> {
        let len = usize::from(self.u16()?);
        if self.body.len() < len {
            return Err(PacketError::Truncated);
        }
        let (field, rest) = self.body.split_at(len);
        self.body = rest;
        Ok(field)
    }

    /// Two-byte length then that many bytes (§1.5.3 without the text rules; passwords, will messages).
    pub fn binary(&mut self) -> Result<Bytes, PacketError> {
        self.field().map(Bytes::copy_from_slice)
    }

    /// A UTF-8 encoded string (§1.5.3).
    pub fn string(&mut self) -> Result<String, PacketError> {
        let raw = self.field()?;
        // [MQTT-1.5.3-1] ill-formed UTF-8 (which includes the surrogates U+D800..U+DFFF) closes the connection.
        let text = std::str::from_utf8(raw).map_err(|_| PacketError::InvalidUtf8)?;
        // [MQTT-1.5.3-2] U+0000 is not allowed either.
        if text.contains('\0') {
            return Err(PacketError::NullCharacter);
        }
        // [MQTT-1.5.3-3] a leading BOM is kept as is: nothing to do.
        Ok(text.to_owned())
    }

    /// Everything left (a PUBLISH payload), copied into a buffer of its own.
    pub fn rest(&mut self) -> Bytes {
        Bytes::copy_from_slice(std::mem::take(&mut self.body))
    }

    /// Fails if bytes are left over after the last field.
    pub fn finish(&self) -> Result<(), PacketError> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(PacketError::TrailingBytes(self.body.len()))
        }
    }
}

/// Size of a length-prefixed field, or an error if it cannot be encoded in two bytes.
pub fn field_len(len: usize) -> Result<usize, PacketError> {
    if len > usize::from(u16::MAX) {
        return Err(PacketError::FieldTooLong(len));
    }
    Ok(2 + len)
}

/// Writes a length-prefixed field whose length was checked by [`field_len`].
pub fn write_field(bytes: &[u8], buf: &mut BytesMut) {
    buf.put_u16(bytes.len() as u16);
    buf.put_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_buffer_is_incomplete() {
        assert_eq!(check(&[], 100), Ok(None));
    }

    #[test]
    fn a_partial_remaining_length_is_incomplete() {
        assert_eq!(check(&[0x30, 0x80], 1000), Ok(None));
    }

    #[test]
    fn a_five_byte_remaining_length_is_malformed() {
        assert_eq!(
            check(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], usize::MAX),
            Err(PacketError::MalformedRemainingLength)
        );
    }

    #[test]
    fn an_oversize_packet_is_refused_from_its_header_alone() {
        // 300 KB announced, only the header buffered.
        let mut buf = BytesMut::new();
        write_header(0x30, 300 * 1024, &mut buf);
        assert!(matches!(
            check(&buf, 256 * 1024),
            Err(PacketError::PacketTooLarge { .. })
        ));
    }

    #[test]
    fn reserved_packet_types_are_refused() {
        assert_eq!(
            check(&[0x00, 0x00], 10),
            Err(PacketError::InvalidPacketType(0))
        );
        assert_eq!(
            check(&[0xF0, 0x00], 10),
            Err(PacketError::InvalidPacketType(15))
        );
    }

    #[test]
    fn qos2_flow_packets_are_unsupported() {
        assert_eq!(
            check(&[0x50, 0x02, 0, 1], 10),
            Err(PacketError::UnsupportedPacketType(5))
        );
    }

    #[test]
    fn subscribe_without_its_reserved_flag_is_refused() {
        assert_eq!(
            check(&[0x80, 0x00], 10),
            Err(PacketError::InvalidFlags {
                packet_type: 8,
                flags: 0
            })
        );
    }

    #[test]
    fn remaining_length_round_trips_at_every_width() {
        for len in [
            0,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            MAX_REMAINING_LENGTH,
        ] {
            let mut buf = BytesMut::new();
            write_header(0xC0, len, &mut buf);
            assert_eq!(buf.len(), 1 + remaining_len_bytes(len));
            buf.resize(buf.len() + len.min(4), 0);
            let header = check(&buf, usize::MAX).unwrap();
            // Only complete when the body is there: for big lengths it is not.
            if len <= 4 {
                assert_eq!(header.unwrap().remaining_len, len);
            } else {
                assert_eq!(header, None);
            }
        }
    }

    #[test]
    fn strings_with_a_null_character_are_refused() {
        let mut r = Reader::new(&[0, 3, b'a', 0, b'b']);
        assert_eq!(r.string(), Err(PacketError::NullCharacter));
    }

    #[test]
    fn strings_with_bad_utf8_are_refused() {
        let mut r = Reader::new(&[0, 2, 0xC3, 0x28]);
        assert_eq!(r.string(), Err(PacketError::InvalidUtf8));
    }

    #[test]
    fn a_string_longer_than_its_packet_is_truncated() {
        let mut r = Reader::new(&[0, 9, b'a']);
        assert_eq!(r.string(), Err(PacketError::Truncated));
    }
}
