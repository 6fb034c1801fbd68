//! The IoT Hub topic grammar from the client's side (AZURE-COMPAT §1.2–1.3): the topics a client publishes
//! on and subscribes to, and the reading of the topics the server publishes on.
//!
//! `outpost-mqtt::topic` is the server's half of the same grammar; the tests here check the two agree.

use outpost_core::{Identity, Message};

use crate::quote::{quote, unquote};

/// The MQTT username's api-version, as azure-iot-device 2.14.0 sends it.
pub(crate) const API_VERSION: &str = "2019-10-01";

/// A push a client subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Feature {
    /// `$iothub/twin/PATCH/properties/desired/#`.
    DesiredPatches,
    /// `$iothub/methods/POST/#`.
    Methods,
    /// `devices/{d}/messages/devicebound/#` (devices only).
    CloudToDevice,
    /// `devices/{d}/modules/{m}/inputs/#` (modules only).
    Inputs,
}

impl Feature {
    /// The topic filter to subscribe to.
    pub(crate) fn filter(self, identity: &Identity) -> String {
        match self {
            Self::DesiredPatches => "$iothub/twin/PATCH/properties/desired/#".to_owned(),
            Self::Methods => "$iothub/methods/POST/#".to_owned(),
            Self::CloudToDevice => format!("devices/{}/messages/devicebound/#", identity.device),
            Self::Inputs => format!("{}/inputs/#", identity_path(identity)),
        }
    }

    /// The stream's name in errors.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::DesiredPatches => "desired properties",
            Self::Methods => "direct methods",
            Self::CloudToDevice => "cloud-to-device messages",
            Self::Inputs => "inputs",
        }
    }
}

/// The filter of twin responses; subscribed at every connect, as the SDK does on first use.
pub(crate) const TWIN_RESPONSES: &str = "$iothub/twin/res/#";

/// `devices/{d}` or `devices/{d}/modules/{m}` (ids raw, as on the wire).
fn identity_path(identity: &Identity) -> String {
    match &identity.module {
        Some(module) => format!("devices/{}/modules/{module}", identity.device),
        None => format!("devices/{}", identity.device),
    }
}

/// The MQTT username: `{hub}/{clientId}/?api-version=..&DeviceClientType=..` (ids not encoded, query values
/// quoted).
pub(crate) fn username(hub_host: &str, identity: &Identity, user_agent: &str) -> String {
    format!(
        "{hub_host}/{}/?api-version={API_VERSION}&DeviceClientType={}",
        identity.client_id(),
        quote(user_agent)
    )
}

/// `devices/{d}[/modules/{m}]/messages/events/{bag}`: telemetry, or a module output when the message
/// carries `outputName` (encoded first, as `$.on`).
pub(crate) fn telemetry(identity: &Identity, message: &outpost_core::Message) -> String {
    format!(
        "{}/messages/events/{}",
        identity_path(identity),
        message.encode_property_bag()
    )
}

/// `$iothub/twin/GET/?$rid={rid}`.
pub(crate) fn twin_get(rid: &str) -> String {
    format!("$iothub/twin/GET/?$rid={}", quote(rid))
}

/// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`.
pub(crate) fn twin_patch_reported(rid: &str) -> String {
    format!(
        "$iothub/twin/PATCH/properties/reported/?$rid={}",
        quote(rid)
    )
}

/// `$iothub/methods/res/{status}/?$rid={rid}`.
pub(crate) fn method_response(status: i32, rid: &str) -> String {
    format!("$iothub/methods/res/{status}/?$rid={}", quote(rid))
}

/// What a server PUBLISH is, read from its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// `$iothub/twin/res/{status}/?$rid=..[&$version=..]`.
    TwinResponse {
        /// The status (200 for a GET, 204 for a patch, an error otherwise).
        status: u16,
        /// The request id.
        rid: String,
        /// The new reported `$version` after a patch (edgeHub leaves it out).
        version: Option<u64>,
    },
    /// `$iothub/twin/PATCH/properties/desired/?$version=..`.
    DesiredPatch {
        /// The version in the topic; the body's `$version` is the one that counts.
        version: Option<u64>,
    },
    /// `$iothub/methods/POST/{name}/?$rid=..`.
    MethodRequest {
        /// The method's name.
        name: String,
        /// The request id to answer with.
        rid: String,
    },
    /// `devices/{d}/messages/devicebound[/{bag}]`: a cloud-to-device message, body not included.
    CloudToDevice(Message),
    /// `devices/{d}/modules/{m}/inputs/{input}[/{bag}]`: a message on a module input, body not included.
    Input(Message),
}

/// Why a server topic cannot be read; the publish is dropped (and acknowledged, so it is not resent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TopicError {
    /// Not a topic a client is sent.
    #[error("unexpected topic {0:?}")]
    Unexpected(String),
    /// A part is not what the grammar wants.
    #[error("malformed topic {0:?}")]
    Malformed(String),
}

/// Reads a topic the server published on.
pub(crate) fn parse_incoming(topic: &str, identity: &Identity) -> Result<Incoming, TopicError> {
    let malformed = || TopicError::Malformed(topic.to_owned());
    if let Some(rest) = topic.strip_prefix("$iothub/") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let path = path.strip_suffix('/').unwrap_or(path);
        let rid = || query_value(query, "rid").ok_or_else(malformed);
        return match path.split('/').collect::<Vec<_>>()[..] {
            ["twin", "res", status] => Ok(Incoming::TwinResponse {
                status: status.parse().map_err(|_| malformed())?,
                rid: rid()?,
                version: query_value(query, "version").and_then(|v| v.parse().ok()),
            }),
            ["twin", "PATCH", "properties", "desired"] => Ok(Incoming::DesiredPatch {
                version: query_value(query, "version").and_then(|v| v.parse().ok()),
            }),
            ["methods", "POST", name] => Ok(Incoming::MethodRequest {
                name: unquote(name).ok().ok_or_else(malformed)?,
                rid: rid()?,
            }),
            _ => Err(TopicError::Unexpected(topic.to_owned())),
        };
    }
    let prefix = identity_path(identity);
    let rest = topic
        .strip_prefix(prefix.as_str())
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| TopicError::Unexpected(topic.to_owned()))?;
    if identity.module.is_none() {
        if let Some(bag) = rest.strip_prefix("messages/devicebound") {
            let bag = bag.strip_prefix('/').unwrap_or(bag);
            return Ok(Incoming::CloudToDevice(decode(bag, topic)?));
        }
    } else if let Some(rest) = rest.strip_prefix("inputs/") {
        let (input, bag) = rest.split_once('/').unwrap_or((rest, ""));
        let input = unquote(input)
            .ok()
            .filter(|i| !i.is_empty())
            .ok_or_else(malformed)?;
        let mut message = decode(bag, topic)?;
        message.system.insert("inputName".into(), input);
        return Ok(Incoming::Input(message));
    }
    Err(TopicError::Unexpected(topic.to_owned()))
}

/// A message with the properties of a bag and no body yet.
fn decode(bag: &str, topic: &str) -> Result<Message, TopicError> {
    let (system, properties) =
        Message::decode_property_bag(bag).map_err(|_| TopicError::Malformed(topic.to_owned()))?;
    Ok(Message {
        body: bytes::Bytes::new(),
        system,
        properties,
    })
}

/// The decoded value of query parameter `$name` (the `$` may be raw or `%24`).
fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        let key = unquote(key).ok()?;
        (key.strip_prefix('$').unwrap_or(&key) == name)
            .then(|| unquote(value).ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use outpost_core::{DeviceId, ModuleId};
    use outpost_mqtt::topic as server;

    use super::*;

    fn device(d: &str) -> Identity {
        Identity::device(DeviceId::new(d).unwrap())
    }

    fn module(d: &str, m: &str) -> Identity {
        Identity::module(DeviceId::new(d).unwrap(), ModuleId::new(m).unwrap())
    }

    #[test]
    fn the_server_reads_every_topic_a_client_publishes_as_intended() {
        let m = module("dev1", "mod1");
        let mut output = outpost_core::Message::default();
        output.system.insert("outputName".into(), "output1".into());
        output.system.insert("messageId".into(), "mid-1".into());
        output
            .properties
            .insert("sp ace".into(), Some("a b&c".into()));
        assert_eq!(
            telemetry(&m, &output),
            "devices/dev1/modules/mod1/messages/events/%24.on=output1&%24.mid=mid-1&sp%20ace=a%20b%26c"
        );
        let Ok(server::ClientRequest::Telemetry { system, properties }) =
            server::parse_publish(&telemetry(&m, &output), &m)
        else {
            panic!("not telemetry")
        };
        assert_eq!(system["outputName"], "output1");
        assert_eq!(properties["sp ace"].as_deref(), Some("a b&c"));
        assert_eq!(
            server::parse_publish(&twin_get("7"), &m),
            Ok(server::ClientRequest::TwinGet { rid: "7".into() })
        );
        assert_eq!(
            server::parse_publish(&twin_patch_reported("8"), &m),
            Ok(server::ClientRequest::TwinPatchReported { rid: "8".into() })
        );
        assert_eq!(
            server::parse_publish(&method_response(404, "a b"), &m),
            Ok(server::ClientRequest::MethodResponse {
                rid: "a b".into(),
                status: 404
            })
        );
    }

    #[test]
    fn device_telemetry_without_properties_ends_with_a_slash_as_the_sdk_sends_it() {
        assert_eq!(
            telemetry(&device("devA"), &outpost_core::Message::default()),
            "devices/devA/messages/events/"
        );
    }

    #[test]
    fn every_feature_filter_is_one_the_server_accepts() {
        let m = module("dev1", "mod1");
        let d = device("devA");
        for (feature, identity) in [
            (Feature::DesiredPatches, &m),
            (Feature::Methods, &d),
            (Feature::CloudToDevice, &d),
            (Feature::Inputs, &m),
        ] {
            assert!(
                server::parse_filter(&feature.filter(identity), identity).is_ok(),
                "{feature:?}"
            );
        }
        assert!(server::parse_filter(TWIN_RESPONSES, &d).is_ok());
    }

    #[test]
    fn the_username_names_hub_and_client_and_quotes_the_user_agent() {
        assert_eq!(
            username("hub.local", &module("d", "m"), "outpost-sdk/0.1 (rust)"),
            "hub.local/d/m/?api-version=2019-10-01&DeviceClientType=outpost-sdk%2F0.1%20%28rust%29"
        );
        assert!(outpost_mqtt::server::username_names_client(
            &username("h", &device("d"), "ua"),
            "d"
        ));
    }

    #[test]
    fn twin_responses_carry_status_rid_and_version() {
        let d = device("d");
        assert_eq!(
            parse_incoming(&server::twin_response(204, "r 1", Some(8)), &d),
            Ok(Incoming::TwinResponse {
                status: 204,
                rid: "r 1".into(),
                version: Some(8)
            })
        );
        assert_eq!(
            parse_incoming("$iothub/twin/res/400/?$rid=5", &d),
            Ok(Incoming::TwinResponse {
                status: 400,
                rid: "5".into(),
                version: None
            })
        );
    }

    #[test]
    fn desired_patches_and_method_requests_are_recognised() {
        let d = device("d");
        assert_eq!(
            parse_incoming(&server::desired_patch(5), &d),
            Ok(Incoming::DesiredPatch { version: Some(5) })
        );
        assert_eq!(
            parse_incoming(&server::method_request("a/b c", "42"), &d),
            Ok(Incoming::MethodRequest {
                name: "a/b c".into(),
                rid: "42".into()
            })
        );
    }

    #[test]
    fn cloud_to_device_messages_carry_their_decoded_properties() {
        let d = device("devA");
        let mut message = outpost_core::Message::default();
        message.system.insert("messageId".into(), "abc".into());
        message.properties.insert("p1".into(), Some("v 1".into()));
        let Ok(Incoming::CloudToDevice(parsed)) =
            parse_incoming(&server::cloud_to_device(&d, &message), &d)
        else {
            panic!("not C2D")
        };
        assert_eq!(parsed, message);
        assert!(matches!(
            parse_incoming("devices/devA/messages/devicebound", &d),
            Ok(Incoming::CloudToDevice(_))
        ));
    }

    #[test]
    fn input_messages_name_their_input_with_or_without_a_property_bag() {
        let m = module("dev1", "mod1");
        let mut message = outpost_core::Message::default();
        message
            .system
            .insert("connectionModuleId".into(), "sender".into());
        let Ok(Incoming::Input(parsed)) = parse_incoming(
            &server::input(&m, "input 1", &message.encode_property_bag()),
            &m,
        ) else {
            panic!("not an input")
        };
        assert_eq!(parsed.system["inputName"], "input 1");
        assert_eq!(parsed.system["connectionModuleId"], "sender");
        let Ok(Incoming::Input(bare)) = parse_incoming(&server::input(&m, "in", ""), &m) else {
            panic!("not an input")
        };
        assert_eq!(bare.system["inputName"], "in");
    }

    #[test]
    fn topics_of_other_identities_or_outside_the_grammar_are_refused() {
        let d = device("devA");
        for topic in [
            "devices/devB/messages/devicebound/",
            "devices/devA/modules/m/inputs/x",
            "$iothub/twin/GET/?$rid=1",
            "something/else",
        ] {
            assert!(parse_incoming(topic, &d).is_err(), "{topic}");
        }
        assert_eq!(
            parse_incoming("$iothub/twin/res/200/", &d),
            Err(TopicError::Malformed("$iothub/twin/res/200/".into()))
        );
    }
}
