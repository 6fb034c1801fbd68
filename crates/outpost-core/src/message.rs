//! Messages and their MQTT property bags (AZURE-COMPAT §1.3–1.5).
//!
//! A property bag is the last topic segment of telemetry, outputs, inputs and C2D messages:
//! `k=v` pairs joined by `&`, both sides percent-encoded. System properties travel under short wire names
//! (`$.mid`); in a [`Message`] they are kept under their internal (routing) names (`messageId`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;

use crate::quote::{push_quoted, unquote_borrowed};

/// A telemetry / output / input / C2D message.
///
/// Its JSON form (for links and stores) is `{"bodyBase64": "...", "system": {..}, "properties": {..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// The payload, raw bytes, cheap to clone and to slice: the edge hub sends a routed message's body as a
    /// slice of the record it read back from its log, without a copy. A body taken from a received packet is
    /// copied once, so that a queue holding the message never keeps the connection's read buffer alive.
    #[serde(rename = "bodyBase64", with = "base64_body")]
    pub body: Bytes,
    /// System properties by internal name: messageId, correlationId, userId, to, contentType, contentEncoding,
    /// absolute-expiry-time, outputName, inputName, connectionDeviceId, connectionModuleId, messageSchema,
    /// creationTime, iothub-interface-id, componentName, ack, operation.
    pub system: BTreeMap<String, String>,
    /// Application properties; `None` is a key sent without `=`.
    pub properties: BTreeMap<String, Option<String>>,
}

/// The body as standard base64 in JSON.
mod base64_body {
    use base64::Engine as _;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(body: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(body))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<bytes::Bytes, D::Error> {
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(bytes::Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

/// Why a property bag cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropertyBagError {
    /// Percent-encoding that does not decode to UTF-8, or a pair with an empty key.
    #[error("bad property bag encoding: {0}")]
    BadEncoding(String),
}

/// System and application properties decoded from a property bag.
pub type DecodedProperties = (BTreeMap<String, String>, BTreeMap<String, Option<String>>);

/// Wire name and internal name of each system property, in the order they are encoded.
///
/// The first eight are the device SDK's order (`encode_message_properties_in_topic`), so a message the SDK
/// sent re-encodes byte for byte; the others follow in edgeHub's `SystemProperties` order.
const SYSTEM_PROPERTIES: [(&str, &str); 16] = [
    ("$.on", "outputName"),
    ("$.mid", "messageId"),
    ("$.cid", "correlationId"),
    ("$.uid", "userId"),
    ("$.ct", "contentType"),
    ("$.ce", "contentEncoding"),
    ("$.ifid", "iothub-interface-id"),
    ("$.exp", "absolute-expiry-time"),
    ("$.to", "to"),
    ("$.cdid", "connectionDeviceId"),
    ("$.cmid", "connectionModuleId"),
    ("$.schema", "messageSchema"),
    ("$.ctime", "creationTime"),
    ("$.sub", "componentName"),
    ("iothub-operation", "operation"),
    ("iothub-ack", "ack"),
];

/// [`SYSTEM_PROPERTIES`]' wire names as a bag writes them, `quote(safe="")`d (`$` is `%24`; the rest are
/// unreserved): written as they are rather than encoded per message.
const QUOTED_WIRE_NAMES: [&str; SYSTEM_PROPERTIES.len()] = [
    "%24.on",
    "%24.mid",
    "%24.cid",
    "%24.uid",
    "%24.ct",
    "%24.ce",
    "%24.ifid",
    "%24.exp",
    "%24.to",
    "%24.cdid",
    "%24.cmid",
    "%24.schema",
    "%24.ctime",
    "%24.sub",
    "iothub-operation",
    "iothub-ack",
];

/// Wire names that are read as system properties but never written (the SDK writes `iothub-ack`).
const SYSTEM_ALIASES: [(&str, &str); 1] = [("ack", "ack")];

/// The internal name of a system property's wire name, if it is one.
fn internal_name(wire: &str) -> Option<&'static str> {
    SYSTEM_PROPERTIES
        .iter()
        .chain(&SYSTEM_ALIASES)
        .find(|(w, _)| *w == wire)
        .map(|&(_, internal)| internal)
}

impl Message {
    /// Decodes a property bag into (system properties by internal name, application properties).
    ///
    /// Percent-decodes both sides (a `+` stays a `+`), so `$` may come raw or as `%24`. An empty bag and a
    /// trailing `/` are accepted. Unknown `$.x` names stay application properties, as do system names sent
    /// without a value (a system property has no null). When a key repeats, the last one wins.
    pub fn decode_property_bag(bag: &str) -> Result<DecodedProperties, PropertyBagError> {
        let bag = bag.strip_suffix('/').unwrap_or(bag);
        let mut system = BTreeMap::new();
        let mut properties = BTreeMap::new();
        for pair in bag.split('&').filter(|p| !p.is_empty()) {
            let (raw_key, raw_value) = match pair.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (pair, None),
            };
            // A system property's name as the SDKs write it (`%24.mid`) is known without decoding it.
            let (key, internal) =
                if let Some(index) = QUOTED_WIRE_NAMES.iter().position(|&w| w == raw_key) {
                    let (wire, internal) = SYSTEM_PROPERTIES[index];
                    (Cow::Borrowed(wire), Some(internal))
                } else {
                    let key = decode(raw_key)?;
                    let internal = internal_name(&key);
                    (key, internal)
                };
            if key.is_empty() {
                return Err(PropertyBagError::BadEncoding(format!(
                    "pair {pair:?} has an empty key"
                )));
            }
            let value = raw_value.map(decode).transpose()?;
            match (internal, value) {
                (Some(internal), Some(value)) => {
                    system.insert(internal.to_owned(), value.into_owned());
                }
                (_, value) => {
                    properties.insert(key.into_owned(), value.map(Cow::into_owned));
                }
            }
        }
        Ok((system, properties))
    }

    /// Encodes system properties (wire names, SDK order) then application properties sorted by key.
    ///
    /// Both sides are encoded with `quote(safe="")`. System properties without a wire name (`inputName`,
    /// which travels in the topic) are left out.
    pub fn encode_property_bag(&self) -> String {
        let mut bag = String::new();
        self.push_property_bag(&mut bag);
        bag
    }

    /// Appends [`Message::encode_property_bag`] to `out`, with no strings of its own (a topic per delivered
    /// message is built this way).
    pub fn push_property_bag(&self, out: &mut String) {
        push_property_bag(
            out,
            self.system
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
            self.properties
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_deref())),
        );
    }
}

/// Appends a property bag to `out`, as [`Message::encode_property_bag`] makes it, from borrowed parts:
/// `system` are the system properties by internal name, in any order (of a name given twice, the last one
/// counts, as a map would keep it); `properties` are the application properties in the order to write them
/// (a [`Message`]'s are sorted by key). The edge hub renders a stored record's bag with it without building a
/// [`Message`].
pub fn push_property_bag<'a>(
    out: &mut String,
    system: impl Iterator<Item = (&'a str, &'a str)>,
    properties: impl Iterator<Item = (&'a str, Option<&'a str>)>,
) {
    // Each given property looked up once among the names a bag writes, then written in their order.
    let mut values: [Option<&str>; SYSTEM_PROPERTIES.len()] = [None; SYSTEM_PROPERTIES.len()];
    for (name, value) in system {
        if let Some(index) = SYSTEM_PROPERTIES
            .iter()
            .position(|&(_, internal)| internal == name)
        {
            values[index] = Some(value);
        }
    }
    let mut first = true;
    let mut separate = |out: &mut String| {
        if !std::mem::take(&mut first) {
            out.push('&');
        }
    };
    for (wire, value) in QUOTED_WIRE_NAMES.iter().zip(values) {
        if let Some(value) = value {
            separate(out);
            out.push_str(wire);
            out.push('=');
            push_quoted(out, value);
        }
    }
    for (key, value) in properties {
        separate(out);
        push_quoted(out, key);
        if let Some(value) = value {
            out.push('=');
            push_quoted(out, value);
        }
    }
}

/// Percent-decodes one side of a pair, borrowing it when there is nothing to decode.
fn decode(s: &str) -> Result<Cow<'_, str>, PropertyBagError> {
    unquote_borrowed(s)
        .map_err(|_| PropertyBagError::BadEncoding(format!("{s:?} is not UTF-8 once decoded")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The output message captured from azure-iot-device (AZURE-COMPAT §1.4).
    const SDK_OUTPUT_BAG: &str =
        "%24.on=output1&%24.mid=mid-1&%24.cid=corr-1&%24.ct=application%2Fjson&%24.ce=utf-8&alert=true&sp%20ace=a%20b%26c%3Dd%2Fe";

    fn system(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn app(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn the_wire_names_are_written_as_quote_encodes_them() {
        for ((wire, _), quoted) in SYSTEM_PROPERTIES.iter().zip(QUOTED_WIRE_NAMES) {
            assert_eq!(crate::quote::quote(wire), quoted);
        }
    }

    #[test]
    fn the_sdk_output_bag_decodes_to_system_and_application_properties() {
        let (sys, props) = Message::decode_property_bag(SDK_OUTPUT_BAG).unwrap();
        assert_eq!(
            sys,
            system(&[
                ("outputName", "output1"),
                ("messageId", "mid-1"),
                ("correlationId", "corr-1"),
                ("contentType", "application/json"),
                ("contentEncoding", "utf-8"),
            ])
        );
        assert_eq!(
            props,
            app(&[("alert", Some("true")), ("sp ace", Some("a b&c=d/e"))])
        );
    }

    #[test]
    fn the_sdk_output_bag_re_encodes_identically() {
        let (system, properties) = Message::decode_property_bag(SDK_OUTPUT_BAG).unwrap();
        let message = Message {
            body: bytes::Bytes::from_static(b"{\"temp\": 20}"),
            system,
            properties,
        };
        assert_eq!(message.encode_property_bag(), SDK_OUTPUT_BAG);
    }

    #[test]
    fn an_input_bag_keeps_null_and_empty_values_apart() {
        let bag = "%24.mid=abc&%24.cdid=dev1&%24.cmid=sender&%24.ct=application%2Fjson&%24.ce=utf-8&p1=v%201&nullprop&empty=";
        let (sys, props) = Message::decode_property_bag(bag).unwrap();
        assert_eq!(
            sys.get("connectionDeviceId").map(String::as_str),
            Some("dev1")
        );
        assert_eq!(
            sys.get("connectionModuleId").map(String::as_str),
            Some("sender")
        );
        assert_eq!(
            props,
            app(&[("p1", Some("v 1")), ("nullprop", None), ("empty", Some(""))])
        );
        let message = Message {
            system: sys,
            properties: props,
            ..Message::default()
        };
        assert_eq!(
            message.encode_property_bag(),
            "%24.mid=abc&%24.ct=application%2Fjson&%24.ce=utf-8&%24.cdid=dev1&%24.cmid=sender&empty=&nullprop&p1=v%201"
        );
    }

    #[test]
    fn a_raw_dollar_and_a_trailing_slash_are_accepted() {
        let (sys, props) =
            Message::decode_property_bag("$.ct=text%2Fplain&$.ce=utf-8&k=v/").unwrap();
        assert_eq!(
            sys,
            system(&[("contentType", "text/plain"), ("contentEncoding", "utf-8")])
        );
        assert_eq!(props, app(&[("k", Some("v"))]));
    }

    #[test]
    fn an_empty_bag_has_no_properties() {
        for bag in ["", "/"] {
            let (sys, props) = Message::decode_property_bag(bag).unwrap();
            assert!(sys.is_empty() && props.is_empty());
        }
        assert_eq!(Message::default().encode_property_bag(), "");
    }

    #[test]
    fn a_plus_is_never_a_space() {
        let (_, props) = Message::decode_property_bag("a+b=c+d").unwrap();
        assert_eq!(props, app(&[("a+b", Some("c+d"))]));
    }

    #[test]
    fn the_c2d_bag_of_iot_hub_decodes_the_to_address() {
        let (sys, props) = Message::decode_property_bag(
            "propertyName=propertyValue&%24.to=%2Fdevices%2Fdev_c%2Fmessages%2FdeviceBound",
        )
        .unwrap();
        assert_eq!(
            sys,
            system(&[("to", "/devices/dev_c/messages/deviceBound")])
        );
        assert_eq!(props, app(&[("propertyName", Some("propertyValue"))]));
    }

    #[test]
    fn unknown_dollar_names_and_valueless_system_names_stay_application_properties() {
        let (sys, props) = Message::decode_property_bag("%24.xyz=1&%24.mid").unwrap();
        assert!(sys.is_empty());
        assert_eq!(props, app(&[("$.xyz", Some("1")), ("$.mid", None)]));
    }

    #[test]
    fn ack_operation_and_component_names_map_to_system_properties() {
        let (sys, _) = Message::decode_property_bag(
            "ack=full&iothub-operation=x&%24.sub=c&%24.schema=s&%24.ctime=t&%24.uid=u",
        )
        .unwrap();
        assert_eq!(
            sys,
            system(&[
                ("ack", "full"),
                ("operation", "x"),
                ("componentName", "c"),
                ("messageSchema", "s"),
                ("creationTime", "t"),
                ("userId", "u")
            ])
        );
        let message = Message {
            system: sys,
            ..Message::default()
        };
        assert_eq!(
            message.encode_property_bag(),
            "%24.uid=u&%24.schema=s&%24.ctime=t&%24.sub=c&iothub-operation=x&iothub-ack=full"
        );
    }

    #[test]
    fn input_name_is_not_encoded_because_it_travels_in_the_topic() {
        let message = Message {
            system: system(&[("inputName", "in1"), ("messageId", "m")]),
            ..Message::default()
        };
        assert_eq!(message.encode_property_bag(), "%24.mid=m");
    }

    #[test]
    fn bad_encodings_are_refused() {
        assert!(Message::decode_property_bag("k=%FF").is_err());
        assert!(Message::decode_property_bag("%C3=v").is_err());
        assert!(Message::decode_property_bag("=v").is_err());
    }

    #[test]
    fn empty_pairs_between_ampersands_are_skipped() {
        let (_, props) = Message::decode_property_bag("a=1&&b").unwrap();
        assert_eq!(props, app(&[("a", Some("1")), ("b", None)]));
    }

    /// Application keys that would be read back as system properties are left out of the round trip.
    fn application_key() -> impl Strategy<Value = String> {
        any::<String>().prop_filter("not empty, not a system wire name", |k| {
            !k.is_empty() && internal_name(k).is_none()
        })
    }

    fn system_properties() -> impl Strategy<Value = BTreeMap<String, String>> {
        let internal: Vec<&str> = SYSTEM_PROPERTIES.iter().map(|(_, i)| *i).collect();
        proptest::collection::btree_map(
            proptest::sample::select(internal).prop_map(str::to_owned),
            any::<String>(),
            0..6,
        )
    }

    proptest! {
        #[test]
        fn encoding_then_decoding_gives_back_every_property(
            system in system_properties(),
            properties in proptest::collection::btree_map(application_key(), proptest::option::of(any::<String>()), 0..8),
        ) {
            let message = Message { body: bytes::Bytes::new(), system, properties };
            let bag = message.encode_property_bag();
            let (system, properties) = Message::decode_property_bag(&bag).unwrap();
            prop_assert_eq!(system, message.system);
            prop_assert_eq!(properties, message.properties);
        }

        #[test]
        fn decoding_never_panics(bag in any::<String>()) {
            let _ = Message::decode_property_bag(&bag);
        }
    }
}
