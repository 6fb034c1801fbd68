//! A message as the edge hub stores it in its log: the sender's client id and the message (body, system and
//! application properties as accepted), in the payload of one log record.
//!
//! Records are written in a compact binary form (`FORMAT_V1`); records written before it are JSON
//! (`{"client":..,"message":{"bodyBase64":..,..}}`) and are still read. The first byte tells them apart: JSON
//! starts with `{`, the binary form with `0xB1`, which no JSON text starts with. The log's own record checksum
//! covers the payload, so this layer adds none.
//!
//! ```text
//! size   field
//! 1      0xB1                       format tag
//! v      client length, then client (UTF-8)
//! v      number of system properties, then each:
//!          1      name code: 1..=N an entry of SYSTEM_NAMES, 0 = the name follows (v length, UTF-8)
//!          v      value length, then value (UTF-8)
//! v      number of application properties, then each:
//!          v      key length, then key (UTF-8)
//!          v      0 = no value (a key sent without `=`), else value length + 1, then value (UTF-8)
//! ..     body: the rest of the payload, raw
//! ```
//! `v` is an unsigned LEB128 varint (at most 5 bytes, below 2^32): one byte for anything under 128.
//! A system property's name may appear twice (the router writes the properties it stamps after the sender's
//! own): readers keep the last.
//! Every length is checked against the bytes left before anything is allocated, so corrupt lengths are an
//! error, never a large allocation or a panic.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use outpost_core::Message;
use outpost_mqtt::topic::input_with_bag;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// The first byte of a binary record (version 1).
pub const FORMAT_V1: u8 = 0xB1;

/// The system property names with a one-byte code (code = index + 1). Part of the on-disk format: entries are
/// only ever appended, never reordered or removed.
const SYSTEM_NAMES: [&str; 19] = [
    "messageId",
    "correlationId",
    "userId",
    "to",
    "contentType",
    "contentEncoding",
    "absolute-expiry-time",
    "outputName",
    "inputName",
    "connectionDeviceId",
    "connectionModuleId",
    "messageSchema",
    "creationTime",
    "iothub-interface-id",
    "componentName",
    "ack",
    "operation",
    "enqueuedTime",
    "iothub-connection-auth-method",
];

/// A message as it is stored in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// The sender's client id.
    pub client: String,
    /// The message, with its system properties as accepted.
    pub message: Message,
}

/// Why a stored payload does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoredError {
    /// A binary record is cut short or a length points past its end.
    #[error("binary message record: {0}")]
    Binary(&'static str),
    /// A record of the JSON form does not parse.
    #[error("JSON message record: {0}")]
    Json(String),
}

impl Stored {
    /// The binary form, ready to append to the log.
    pub fn encode(&self) -> Vec<u8> {
        encode(&self.client, &self.message, &[])
    }

    /// Decodes a payload of either form. The body of a binary record is a slice of `payload`, not a copy.
    pub fn decode(payload: &Bytes) -> Result<Self, StoredError> {
        match payload.first() {
            Some(&FORMAT_V1) => decode_binary(payload).map_err(StoredError::Binary),
            _ => serde_json::from_slice(payload).map_err(|e| StoredError::Json(e.to_string())),
        }
    }
}

/// [`Stored::encode`] of `client`'s `message`, from borrowed parts (the router stores a batch of one sender's
/// messages without a copy of its client id per message), with the system properties `stamped` written after
/// the message's own: every reader keeps the last of a name, so a stamped property stands over one of the same
/// name that the sender set (the router stamps who sent a message and when it arrived without a map entry and
/// two strings of each per message).
pub fn encode(client: &str, message: &Message, stamped: &[(&str, &str)]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_into(&mut out, client, message, stamped);
    out.into()
}

/// [`encode`] at the end of `out`, which grows only if it has too little room left: the router encodes the
/// messages read together one after the other into one buffer and splits each record off it, so that a batch
/// of messages takes one allocation rather than one or two per message.
pub fn encode_into(out: &mut BytesMut, client: &str, message: &Message, stamped: &[(&str, &str)]) {
    out.reserve(encoded_len_hint(client, message, stamped));
    out.put_u8(FORMAT_V1);
    put_str(out, client);
    put_varint(out, message.system.len() + stamped.len());
    let system = message
        .system
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()));
    for (name, value) in system.chain(stamped.iter().copied()) {
        if let Some(index) = SYSTEM_NAMES.iter().position(|n| *n == name) {
            // At most 19 entries: the code fits a byte.
            #[allow(clippy::cast_possible_truncation)]
            out.put_u8(index as u8 + 1);
        } else {
            out.put_u8(0);
            put_str(out, name);
        }
        put_str(out, value);
    }
    put_varint(out, message.properties.len());
    for (key, value) in &message.properties {
        put_str(out, key);
        match value {
            None => put_varint(out, 0),
            Some(value) => {
                put_varint(out, value.len() + 1);
                out.extend_from_slice(value.as_bytes());
            }
        }
    }
    out.extend_from_slice(&message.body);
}

fn encoded_len_hint(client: &str, m: &Message, stamped: &[(&str, &str)]) -> usize {
    1 + 5
        + client.len()
        + 10
        + m.system
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(stamped.iter().copied())
            .map(|(k, v)| 12 + k.len() + v.len())
            .sum::<usize>()
        + m.properties
            .iter()
            .map(|(k, v)| 10 + k.len() + v.as_ref().map_or(0, String::len))
            .sum::<usize>()
        + m.body.len()
}

/// What a module input's delivery needs of a stored record: its topic with the property bag, the body (a slice
/// of the record), and, when asked for (the metrics' labels), the sender and its output.
#[derive(Debug, PartialEq, Eq)]
pub struct ForInput {
    /// The whole topic of its delivery: the input's ([`outpost_mqtt::topic::input_prefix`]) and the stored
    /// message's property bag ([`Message::encode_property_bag`]), as [`outpost_mqtt::topic::input`] writes them.
    pub topic: String,
    /// The body, a slice of the record for the binary form.
    pub body: Bytes,
    /// The sender's client id and the output it sent on, if asked for.
    pub sender: Option<(String, Option<String>)>,
}

impl ForInput {
    /// Reads a stored payload for a delivery to a module input whose topic before the property bag is `topic`
    /// ([`outpost_mqtt::topic::input_prefix`]). A binary record is read in place, its property bag rendered
    /// from the bytes after `topic` without building a [`Message`] (a few borrowed slices instead of a string
    /// and a map entry per property); a record of the JSON form, or one whose application properties are not in
    /// the order the encoder writes them, goes through [`Stored::decode`], with the same result.
    pub fn read(payload: &Bytes, topic: &str, sender: bool) -> Result<Self, StoredError> {
        if payload.first() == Some(&FORMAT_V1) {
            if let Some(read) =
                read_binary_in_place(payload, topic, sender).map_err(StoredError::Binary)?
            {
                return Ok(read);
            }
        }
        let stored = Stored::decode(payload)?;
        let message = stored.message;
        Ok(Self {
            topic: input_with_bag(topic, 64, |topic| message.push_property_bag(topic)),
            sender: sender.then(|| (stored.client, message.system.get("outputName").cloned())),
            body: message.body,
        })
    }
}

/// [`ForInput::read`] of a binary record; `None` when its application properties are not strictly ordered by
/// key (the encoder writes them so; a decoded [`Message`] would sort them and keep the last of a repeated key).
fn read_binary_in_place(
    payload: &Bytes,
    topic: &str,
    sender: bool,
) -> Result<Option<ForInput>, &'static str> {
    let mut r = Reader {
        bytes: &payload[1..],
    };
    let client = r.str()?;
    // Counts come from the record: nothing is reserved by them, entries are pushed as they parse (two bytes
    // each at least), on the stack for the usual handful (this runs once per delivery).
    let count = r.varint()?;
    let mut system: SmallVec<[(&str, &str); 8]> = SmallVec::new();
    for _ in 0..count {
        let code = r.take(1)?[0];
        let name = match code {
            0 => r.str()?,
            code => *SYSTEM_NAMES
                .get(usize::from(code) - 1)
                .ok_or("unknown system property code")?,
        };
        system.push((name, r.str()?));
    }
    let count = r.varint()?;
    let mut properties: SmallVec<[(&str, Option<&str>); 4]> = SmallVec::new();
    for _ in 0..count {
        let key = r.str()?;
        let value = match r.varint()? {
            0 => None,
            n => Some(r.str_of(n - 1)?),
        };
        if properties.last().is_some_and(|(last, _)| *last >= key) {
            return Ok(None);
        }
        properties.push((key, value));
    }
    let body = payload.slice(payload.len() - r.bytes.len()..);
    let topic = input_with_bag(topic, payload.len() - body.len() + 64, |topic| {
        outpost_core::push_property_bag(topic, system.iter().copied(), properties.into_iter());
    });
    // A name repeated among the system properties: the last one, as a map would keep.
    let output = || {
        system
            .iter()
            .rev()
            .find(|(name, _)| *name == "outputName")
            .map(|&(_, value)| value.to_owned())
    };
    Ok(Some(ForInput {
        topic,
        body,
        sender: sender.then(|| (client.to_owned(), output())),
    }))
}

/// Decodes `payload`, a binary record with its format tag.
fn decode_binary(payload: &Bytes) -> Result<Stored, &'static str> {
    let mut r = Reader {
        bytes: &payload[1..],
    };
    let client = r.string()?;
    let mut system = BTreeMap::new();
    for _ in 0..r.varint()? {
        let code = r.take(1)?[0];
        let name = match code {
            0 => r.string()?,
            code => (*SYSTEM_NAMES
                .get(usize::from(code) - 1)
                .ok_or("unknown system property code")?)
            .to_owned(),
        };
        system.insert(name, r.string()?);
    }
    let mut properties = BTreeMap::new();
    for _ in 0..r.varint()? {
        let key = r.string()?;
        let value = match r.varint()? {
            0 => None,
            n => Some(r.utf8(n - 1)?),
        };
        properties.insert(key, value);
    }
    // The body is the rest of the record.
    let body = payload.slice(payload.len() - r.bytes.len()..);
    Ok(Stored {
        client,
        message: Message {
            body,
            system,
            properties,
        },
    })
}

fn put_varint(out: &mut BytesMut, value: usize) {
    let mut value = value;
    while value >= 0x80 {
        // The low 7 bits, with the continuation bit.
        #[allow(clippy::cast_possible_truncation)]
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    #[allow(clippy::cast_possible_truncation)]
    out.put_u8(value as u8);
}

fn put_str(out: &mut BytesMut, text: &str) {
    put_varint(out, text.len());
    out.extend_from_slice(text.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if n > self.bytes.len() {
            return Err("a length points past the end of the record");
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// A varint below 2^32 (5 bytes at most).
    fn varint(&mut self) -> Result<usize, &'static str> {
        let mut value: u64 = 0;
        for shift in (0..35).step_by(7) {
            let byte = *self
                .bytes
                .first()
                .ok_or("the record ends inside a length")?;
            self.bytes = &self.bytes[1..];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return u32::try_from(value)
                    .map(|v| v as usize)
                    .map_err(|_| "a length over 2^32");
            }
        }
        Err("a length of more than 5 bytes")
    }

    fn utf8(&mut self, n: usize) -> Result<String, &'static str> {
        self.str_of(n).map(str::to_owned)
    }

    fn string(&mut self) -> Result<String, &'static str> {
        self.str().map(str::to_owned)
    }

    /// `n` bytes of UTF-8, borrowed from the record.
    fn str_of(&mut self, n: usize) -> Result<&'a str, &'static str> {
        std::str::from_utf8(self.take(n)?).map_err(|_| "a string that is not UTF-8")
    }

    /// A length, then that many bytes of UTF-8, borrowed from the record.
    fn str(&mut self) -> Result<&'a str, &'static str> {
        let n = self.varint()?;
        self.str_of(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Result<Stored, StoredError> {
        Stored::decode(&Bytes::copy_from_slice(bytes))
    }

    fn sample() -> Stored {
        let mut message = Message {
            body: bytes::Bytes::from_static(b"{\"temperature\":21.5}"),
            ..Message::default()
        };
        for (k, v) in [
            ("connectionDeviceId", "edge1"),
            ("connectionModuleId", "sensor"),
            ("enqueuedTime", "2026-12-02T19:44:55.123+00:00"),
            ("outputName", "out1"),
            ("x-unknown-system", "kept"),
        ] {
            message.system.insert(k.into(), v.into());
        }
        message
            .properties
            .insert("alert".into(), Some("yes".into()));
        message.properties.insert("flag".into(), None);
        message
            .properties
            .insert("long".into(), Some("é".repeat(200)));
        Stored {
            client: "edge1/sensor".into(),
            message,
        }
    }

    #[test]
    fn a_binary_record_decodes_to_the_same_message() {
        let stored = sample();
        let bytes = stored.encode();
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(decode(&bytes).unwrap(), stored);
    }

    /// Delivery sends the body from the record read out of the log: decoding shares it rather than copying it.
    #[test]
    fn a_decoded_body_is_a_slice_of_the_record() {
        let mut stored = sample();
        stored.message.body = vec![9; 4096].into();
        let record = Bytes::from(stored.encode());
        let decoded = Stored::decode(&record).unwrap();
        assert_eq!(decoded, stored);
        let body = decoded.message.body.as_ptr_range();
        let inside = record.as_ptr_range();
        assert!(
            inside.start <= body.start && body.end == inside.end,
            "the body was copied"
        );
    }

    #[test]
    fn an_empty_message_round_trips() {
        let stored = Stored {
            client: String::new(),
            message: Message::default(),
        };
        assert_eq!(decode(&stored.encode()).unwrap(), stored);
    }

    #[test]
    fn a_json_record_of_the_old_form_still_decodes() {
        let stored = sample();
        let json = serde_json::to_vec(&stored).unwrap();
        assert_eq!(json[0], b'{');
        assert_eq!(decode(&json).unwrap(), stored);
    }

    #[test]
    fn the_binary_form_is_smaller_than_the_json_form() {
        let mut stored = sample();
        stored.message.body = vec![7; 100].into();
        stored.message.properties.remove("long");
        let binary = stored.encode().len();
        let json = serde_json::to_vec(&stored).unwrap().len();
        assert!(binary < 100 + 160, "{binary} bytes");
        assert!(binary * 3 < json * 2, "binary {binary}, JSON {json}");
    }

    #[test]
    fn every_truncation_of_a_record_is_an_error_not_a_panic() {
        let bytes = sample().encode();
        // The body is the tail, so cuts inside it decode (shorter body); every cut before it must not panic.
        for cut in 0..bytes.len() {
            let _ = decode(&bytes[..cut]);
        }
        assert!(decode(&bytes[..10]).is_err());
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn hostile_lengths_are_errors_without_allocating() {
        // A client length of 2^32 - 1 in a 7-byte record.
        let huge = [FORMAT_V1, 0xff, 0xff, 0xff, 0xff, 0x0f, b'a'];
        assert_eq!(
            decode(&huge).unwrap_err(),
            StoredError::Binary("a length points past the end of the record")
        );
        // A varint that never ends.
        let endless = [FORMAT_V1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(decode(&endless).is_err());
        // A property count of 2^32 - 1 with nothing behind it: fails at the first missing entry.
        let mut many = vec![FORMAT_V1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode(&many).is_err());
        // An unknown system code.
        many = vec![FORMAT_V1, 0, 1, 200, 0];
        assert_eq!(
            decode(&many).unwrap_err(),
            StoredError::Binary("unknown system property code")
        );
        // Bytes that are not UTF-8 in a name.
        let bad = [FORMAT_V1, 2, 0xc3, 0x28, 0, 0];
        assert!(decode(&bad).is_err());
    }

    /// The topic of the input the reads below are for, before the property bag.
    const TOPIC: &str = "devices/edge/modules/m/inputs/in1";

    /// [`TOPIC`] with a property bag, as a module gets it: no trailing slash without properties.
    fn topic_with(bag: &str) -> String {
        if bag.is_empty() {
            TOPIC.to_owned()
        } else {
            format!("{TOPIC}/{bag}")
        }
    }

    /// What a delivery to an input gets from the record, read in place, against the decoded message's.
    fn assert_read_in_place_as_decoded(payload: &Bytes) {
        let decoded = Stored::decode(payload).unwrap();
        let read = ForInput::read(payload, TOPIC, true).unwrap();
        assert_eq!(
            read.topic,
            topic_with(&decoded.message.encode_property_bag())
        );
        assert_eq!(read.body, decoded.message.body);
        assert_eq!(
            read.sender,
            Some((
                decoded.client.clone(),
                decoded.message.system.get("outputName").cloned()
            ))
        );
        assert_eq!(ForInput::read(payload, TOPIC, false).unwrap().sender, None);
    }

    /// The properties the router stamps on a message stand over those of the same name its sender set, both
    /// in the decoded message and in an input's property bag, and the rest of the message is as sent.
    #[test]
    fn stamped_properties_stand_over_what_the_sender_set() {
        let sent = sample();
        let bytes = Bytes::from(encode(
            &sent.client,
            &sent.message,
            &[
                ("connectionDeviceId", "edge2"),
                ("connectionModuleId", "filter"),
                ("x-stamped", "by name"),
            ],
        ));
        let decoded = Stored::decode(&bytes).unwrap();
        let mut expected = sent.clone();
        for (name, value) in [
            ("connectionDeviceId", "edge2"),
            ("connectionModuleId", "filter"),
            ("x-stamped", "by name"),
        ] {
            expected.message.system.insert(name.into(), value.into());
        }
        assert_eq!(decoded, expected);
        let read = ForInput::read(&bytes, TOPIC, true).unwrap();
        assert_eq!(
            read.topic,
            topic_with(&expected.message.encode_property_bag())
        );
        assert!(read.topic.contains("%24.cdid=edge2&%24.cmid=filter"));
        assert_read_in_place_as_decoded(&bytes);
    }

    #[test]
    fn a_record_read_in_place_for_an_input_gives_what_the_decoded_message_gives() {
        let mut stored = sample();
        assert_read_in_place_as_decoded(&Bytes::from(stored.encode()));
        // Every system property with a wire name, one the encoder writes by name, odd characters.
        for (internal, value) in [
            ("messageId", "m&1=2"),
            ("correlationId", "c/1"),
            ("userId", "u"),
            ("to", "/devices/x"),
            ("contentType", "application/json"),
            ("contentEncoding", "utf-8"),
            ("absolute-expiry-time", "2026-12-06T00:00:00Z"),
            ("iothub-interface-id", "dtmi:x;1"),
            ("messageSchema", "s"),
            ("creationTime", "t"),
            ("componentName", "c"),
            ("operation", "o"),
            ("ack", "full"),
            ("inputName", "in1"),
        ] {
            stored.message.system.insert(internal.into(), value.into());
        }
        stored
            .message
            .properties
            .insert("é ü%".into(), Some(String::new()));
        assert_read_in_place_as_decoded(&Bytes::from(stored.encode()));
        // No properties at all, an empty body.
        let empty = Stored {
            client: "d".into(),
            message: Message::default(),
        };
        assert_read_in_place_as_decoded(&Bytes::from(empty.encode()));
        // The JSON form of earlier versions.
        let json = serde_json::to_vec(&sample()).unwrap();
        assert_read_in_place_as_decoded(&Bytes::from(json));
    }

    #[test]
    fn application_properties_out_of_order_read_as_the_decoded_map_has_them() {
        // Written by hand: "b" before "a", and "a" twice (the last one wins in a map).
        let mut record = BytesMut::from(&[FORMAT_V1][..]);
        put_str(&mut record, "edge/m");
        put_varint(&mut record, 0);
        put_varint(&mut record, 3);
        for (key, value) in [("b", "1"), ("a", "2"), ("a", "3")] {
            put_str(&mut record, key);
            put_varint(&mut record, value.len() + 1);
            record.extend_from_slice(value.as_bytes());
        }
        record.extend_from_slice(b"body");
        let payload = record.freeze();
        assert_eq!(
            ForInput::read(&payload, TOPIC, false).unwrap().topic,
            topic_with("a=3&b=1")
        );
        assert_read_in_place_as_decoded(&payload);
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small xorshift: deterministic, no dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let mut bytes = vec![FORMAT_V1];
            let mut y = x;
            for _ in 0..len {
                y = y.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                bytes.push((y >> 56) as u8);
            }
            let _ = decode(&bytes);
            let bytes = Bytes::from(bytes);
            // Read in place, a record is refused exactly when decoding refuses it.
            assert_eq!(
                ForInput::read(&bytes, TOPIC, false).is_err(),
                Stored::decode(&bytes).is_err()
            );
        }
    }
}
