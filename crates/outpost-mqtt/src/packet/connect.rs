//! CONNECT (§3.1): the first packet a client sends.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{field_len, write_field, Reader};
use super::{PacketError, QoS};

/// Protocol level of MQTT 3.1.1 (§3.1.2.2).
pub const PROTOCOL_LEVEL_3_1_1: u8 = 4;

const PROTOCOL_NAME: &str = "MQTT";

const RESERVED: u8 = 0b0000_0001;
const CLEAN_SESSION: u8 = 0b0000_0010;
const WILL: u8 = 0b0000_0100;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_RETAIN: u8 = 0b0010_0000;
const PASSWORD: u8 = 0b0100_0000;
const USERNAME: u8 = 0b1000_0000;

/// A CONNECT packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol level; the server answers 0x01 to anything but 4 [MQTT-3.1.2-2].
    pub protocol_level: u8,
    /// CleanSession flag: start afresh, and forget the session at the end.
    pub clean_session: bool,
    /// Keep-alive in seconds; 0 turns it off.
    pub keep_alive: u16,
    /// Client identifier (IoT Hub: "device" or "device/module").
    pub client_id: String,
    /// Last will, which IoT Hub devices never set.
    pub will: Option<Will>,
    /// User name (IoT Hub: "{host}/{clientId}/?api-version=...").
    pub username: Option<String>,
    /// Password (IoT Hub: the SAS token).
    pub password: Option<Bytes>,
}

/// The last will of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic the will is published to.
    pub topic: String,
    /// Its payload.
    pub message: Bytes,
    /// Its QoS.
    pub qos: QoS,
    /// Its RETAIN flag.
    pub retain: bool,
}

impl Connect {
    /// A CONNECT for MQTT 3.1.1 with no will and no credentials.
    pub fn new(client_id: impl Into<String>, keep_alive: u16, clean_session: bool) -> Self {
        Self {
            protocol_level: PROTOCOL_LEVEL_3_1_1,
            clean_session,
            keep_alive,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
        }
    }

    pub(super) fn read(r: &mut Reader) -> Result<Self, PacketError> {
        let name = r.string()?;
        // [MQTT-3.1.2-1] anything but "MQTT" (e.g. MQTT 3.1's "MQIsdp") may be disconnected without CONNACK.
        if name != PROTOCOL_NAME {
            return Err(PacketError::InvalidProtocolName(name));
        }
        let protocol_level = r.u8()?;
        let flags = r.u8()?;
        // [MQTT-3.1.2-3] the reserved flag must be 0.
        if flags & RESERVED != 0 {
            return Err(PacketError::InvalidConnectFlags(flags));
        }
        let will_qos_bits = (flags >> WILL_QOS_SHIFT) & 0b11;
        let has_will = flags & WILL != 0;
        // [MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15] without a will, its QoS and RETAIN must be 0.
        if !has_will && (will_qos_bits != 0 || flags & WILL_RETAIN != 0) {
            return Err(PacketError::InvalidConnectFlags(flags));
        }
        // [MQTT-3.1.2-14] will QoS 3 is invalid.
        if will_qos_bits == 3 {
            return Err(PacketError::InvalidConnectFlags(flags));
        }
        // [MQTT-3.1.2-22] a password requires a user name.
        if flags & PASSWORD != 0 && flags & USERNAME == 0 {
            return Err(PacketError::InvalidConnectFlags(flags));
        }
        let keep_alive = r.u16()?;

        // [MQTT-3.1.3-1] payload order: client id, will topic, will message, user name, password.
        let client_id = r.string()?;
        let will = if has_will {
            Some(Will {
                topic: r.string()?,
                message: r.binary()?,
                qos: QoS::from_bits(will_qos_bits)?,
                retain: flags & WILL_RETAIN != 0,
            })
        } else {
            None
        };
        let username = if flags & USERNAME != 0 {
            Some(r.string()?)
        } else {
            None
        };
        let password = if flags & PASSWORD != 0 {
            Some(r.binary()?)
        } else {
            None
        };
        Ok(Self {
            protocol_level,
            clean_session: flags & CLEAN_SESSION != 0,
            keep_alive,
            client_id,
            will,
            username,
            password,
        })
    }

    pub(super) fn remaining_len(&self) -> Result<usize, PacketError> {
        let mut len =
            field_len(PROTOCOL_NAME.len())? + 1 + 1 + 2 + field_len(self.client_id.len())?;
        if let Some(will) = &self.will {
            len += field_len(will.topic.len())? + field_len(will.message.len())?;
        }
        if let Some(username) = &self.username {
            len += field_len(username.len())?;
        }
        if let (Some(password), Some(_)) = (&self.password, &self.username) {
            len += field_len(password.len())?;
        }
        Ok(len)
    }

    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.clean_session {
            flags |= CLEAN_SESSION;
        }
        if let Some(will) = &self.will {
            flags |= WILL | ((will.qos as u8) << WILL_QOS_SHIFT);
            if will.retain {
                flags |= WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= USERNAME;
        }
        // A password without a user name cannot be expressed [MQTT-3.1.2-22]; it is then left out.
        if self.password.is_some() && self.username.is_some() {
            flags |= PASSWORD;
        }
        flags
    }

    pub(super) fn write(&self, buf: &mut BytesMut) {
        write_field(PROTOCOL_NAME.as_bytes(), buf);
        buf.put_u8(self.protocol_level);
        let flags = self.flags();
        buf.put_u8(flags);
        buf.put_u16(self.keep_alive);
        write_field(self.client_id.as_bytes(), buf);
        if let Some(will) = &self.will {
            write_field(will.topic.as_bytes(), buf);
            write_field(&will.message, buf);
        }
        if let Some(username) = &self.username {
            write_field(username.as_bytes(), buf);
        }
        if let (Some(password), true) = (&self.password, flags & PASSWORD != 0) {
            write_field(password, buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{decode, encode, Packet};

    fn connect_bytes(flags: u8) -> BytesMut {
        let mut body = BytesMut::new();
        write_field(b"MQTT", &mut body);
        body.put_u8(4);
        body.put_u8(flags);
        body.put_u16(60);
        write_field(b"dev1", &mut body);
        let mut buf = BytesMut::new();
        super::super::frame::write_header(0x10, body.len(), &mut buf);
        buf.extend_from_slice(&body);
        buf
    }

    #[test]
    fn the_sdk_connect_decodes_with_client_id_username_and_token() {
        // The first CONNECT of device_sdk_reconnect_wire.log: flags 0xc0, clean=0, keepalive 60.
        let mut connect = Connect::new("devA", 60, false);
        connect.username = Some("myhub.azure-devices.net/devA/?api-version=2019-10-01".into());
        connect.password = Some(Bytes::from_static(b"SharedAccessSignature sr=x&sig=y&se=1"));
        let mut buf = BytesMut::new();
        encode(&Packet::Connect(Box::new(connect.clone())), &mut buf).unwrap();
        assert_eq!(buf[9], 0xC0, "connect flags byte as on the wire");
        assert_eq!(
            decode(&mut buf, 1024),
            Ok(Some(Packet::Connect(Box::new(connect))))
        );
    }

    #[test]
    fn the_reserved_connect_flag_is_refused() {
        assert_eq!(
            decode(&mut connect_bytes(0x01), 1024),
            Err(PacketError::InvalidConnectFlags(0x01))
        );
    }

    #[test]
    fn a_will_qos_without_a_will_is_refused() {
        assert_eq!(
            decode(&mut connect_bytes(0x08), 1024),
            Err(PacketError::InvalidConnectFlags(0x08))
        );
    }

    #[test]
    fn a_password_without_a_username_is_refused() {
        assert_eq!(
            decode(&mut connect_bytes(0x40), 1024),
            Err(PacketError::InvalidConnectFlags(0x40))
        );
    }

    #[test]
    fn a_username_flag_without_the_field_is_truncated() {
        assert_eq!(
            decode(&mut connect_bytes(0x80), 1024),
            Err(PacketError::Truncated)
        );
    }

    #[test]
    fn mqtt_3_1_protocol_name_is_refused() {
        let mut body = BytesMut::new();
        write_field(b"MQIsdp", &mut body);
        body.extend_from_slice(&[3, 0x02, 0, 60, 0, 1, b'a']);
        let mut buf = BytesMut::new();
        super::super::frame::write_header(0x10, body.len(), &mut buf);
        buf.extend_from_slice(&body);
        assert_eq!(
            decode(&mut buf, 1024),
            Err(PacketError::InvalidProtocolName("MQIsdp".into()))
        );
    }

    #[test]
    fn a_will_round_trips() {
        let mut connect = Connect::new("c", 0, true);
        connect.will = Some(Will {
            topic: "w".into(),
            message: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
        });
        let mut buf = BytesMut::new();
        encode(&Packet::Connect(Box::new(connect.clone())), &mut buf).unwrap();
        assert_eq!(
            decode(&mut buf, 1024),
            Ok(Some(Packet::Connect(Box::new(connect))))
        );
    }
}
