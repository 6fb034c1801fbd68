//! CONNACK (§3.2): the server's answer to CONNECT.

use bytes::{BufMut, BytesMut};

use super::frame::Reader;
use super::PacketError;

/// CONNACK return codes (§3.2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectReturnCode {
    /// 0: connection accepted.
    Accepted = 0,
    /// 1: the protocol level is not supported.
    UnacceptableProtocolVersion = 1,
    /// 2: the client identifier is not allowed.
    IdentifierRejected = 2,
    /// 3: the service is unavailable.
    ServerUnavailable = 3,
    /// 4: malformed user name or password (IoT Hub: bad token).
    BadUserNameOrPassword = 4,
    /// 5: not authorized.
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    fn from_byte(byte: u8) -> Result<Self, PacketError> {
        Ok(match byte {
            0 => Self::Accepted,
            1 => Self::UnacceptableProtocolVersion,
            2 => Self::IdentifierRejected,
            3 => Self::ServerUnavailable,
            4 => Self::BadUserNameOrPassword,
            5 => Self::NotAuthorized,
            other => return Err(PacketError::InvalidConnectReturnCode(other)),
        })
    }
}

/// A CONNACK packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    /// Whether the server resumed a stored session.
    pub session_present: bool,
    /// The verdict.
    pub code: ConnectReturnCode,
}

impl ConnAck {
    pub(super) fn read(r: &mut Reader) -> Result<Self, PacketError> {
        let flags = r.u8()?;
        let code = ConnectReturnCode::from_byte(r.u8()?)?;
        // §3.2.2.1: bits 7-1 are reserved; [MQTT-3.2.2-4] a refusal never has session present.
        if flags & !1 != 0 || (flags == 1 && code != ConnectReturnCode::Accepted) {
            return Err(PacketError::InvalidConnAckFlags(flags));
        }
        Ok(Self {
            session_present: flags == 1,
            code,
        })
    }

    pub(super) fn write(self, buf: &mut BytesMut) {
        let present = self.session_present && self.code == ConnectReturnCode::Accepted;
        buf.put_u8(u8::from(present));
        buf.put_u8(self.code as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{decode, Packet};

    #[test]
    fn a_refusal_is_two_bytes_of_flags_and_code() {
        let mut buf = BytesMut::from(&[0x20, 0x02, 0x00, 0x05][..]);
        let expected = ConnAck {
            session_present: false,
            code: ConnectReturnCode::NotAuthorized,
        };
        assert_eq!(decode(&mut buf, 10), Ok(Some(Packet::ConnAck(expected))));
    }

    #[test]
    fn session_present_with_a_refusal_is_refused() {
        let mut buf = BytesMut::from(&[0x20, 0x02, 0x01, 0x04][..]);
        assert_eq!(
            decode(&mut buf, 10),
            Err(PacketError::InvalidConnAckFlags(1))
        );
    }

    #[test]
    fn reserved_return_codes_are_refused() {
        let mut buf = BytesMut::from(&[0x20, 0x02, 0x00, 0x06][..]);
        assert_eq!(
            decode(&mut buf, 10),
            Err(PacketError::InvalidConnectReturnCode(6))
        );
    }
}
