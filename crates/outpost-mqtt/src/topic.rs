//! The IoT Hub topic grammar (AZURE-COMPAT §1.2–1.3): client topics and filters → requests, and the topics
//! the server publishes on.
//!
//! IoT Hub is not a general broker: a topic outside this grammar, or one naming another device or module,
//! closes the connection (IoT Hub does the same). Device and module ids in topics are raw, not encoded.

use std::collections::BTreeMap;

use outpost_core::quote::{push_quoted, quote};
use outpost_core::{Identity, Message, PropertyBagError};

use crate::ops::Feature;

/// What a client's PUBLISH asks for, read from its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRequest {
    /// `$iothub/twin/GET/?$rid={rid}`: read the twin.
    TwinGet {
        /// Request id, echoed in the response topic.
        rid: String,
    },
    /// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`: patch reported properties.
    TwinPatchReported {
        /// Request id, echoed in the response topic.
        rid: String,
    },
    /// `devices/{d}[/modules/{m}]/messages/events[/{bag}][/]`: telemetry or module output.
    Telemetry {
        /// System properties by internal name (`outputName` for module outputs).
        system: BTreeMap<String, String>,
        /// Application properties.
        properties: BTreeMap<String, Option<String>>,
    },
    /// `$iothub/methods/res/{status}/?$rid={rid}`: the answer to a direct method.
    MethodResponse {
        /// Request id of the method call.
        rid: String,
        /// Status chosen by the device.
        status: i32,
    },
}

/// A topic filter the server accepts in SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subscription {
    /// One of the features the backend can push to.
    Feature(Feature),
    /// `$iothub/twin/res/#`: twin responses, which are sent whether or not the client subscribed.
    TwinResponses,
}

/// Why a topic or filter is refused; each closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Not an IoT Hub topic.
    #[error("unsupported topic {0:?}")]
    Unsupported(String),
    /// A telemetry, C2D or input topic of another device or module.
    #[error("topic {topic:?} does not belong to {identity}")]
    ForeignIdentity {
        /// The topic.
        topic: String,
        /// The identity of the connection.
        identity: String,
    },
    /// A twin or method topic without `$rid`.
    #[error("topic {0:?} has no $rid")]
    MissingRequestId(String),
    /// A method response whose status is not an integer.
    #[error("topic {0:?} has no integer status")]
    BadStatus(String),
    /// A telemetry property bag that does not decode.
    #[error(transparent)]
    PropertyBag(#[from] PropertyBagError),
}

/// Reads a client PUBLISH topic.
pub fn parse_publish(topic: &str, identity: &Identity) -> Result<ClientRequest, TopicError> {
    if let Some(rest) = topic.strip_prefix("$iothub/") {
        return parse_iothub(topic, rest);
    }
    let Some(bag) =
        strip_identity(topic, identity)?.and_then(|rest| rest.strip_prefix("messages/events"))
    else {
        return Err(TopicError::Unsupported(topic.to_owned()));
    };
    // edgeHub's template: `.../messages/events[/{params}][/]`.
    let bag = match bag.strip_prefix('/') {
        Some(bag) => bag,
        None if bag.is_empty() => bag,
        None => return Err(TopicError::Unsupported(topic.to_owned())),
    };
    let (system, properties) = Message::decode_property_bag(bag)?;
    Ok(ClientRequest::Telemetry { system, properties })
}

/// `$iothub/...` topics: twin requests and method responses.
fn parse_iothub(topic: &str, rest: &str) -> Result<ClientRequest, TopicError> {
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = path.strip_suffix('/').unwrap_or(path);
    let rid =
        || query_value(query, "rid").ok_or_else(|| TopicError::MissingRequestId(topic.to_owned()));
    match path.split('/').collect::<Vec<_>>()[..] {
        ["twin", "GET"] => Ok(ClientRequest::TwinGet { rid: rid()? }),
        ["twin", "PATCH", "properties", "reported"] => {
            Ok(ClientRequest::TwinPatchReported { rid: rid()? })
        }
        ["methods", "res", status] => {
            let status = unquote(status)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| TopicError::BadStatus(topic.to_owned()))?;
            Ok(ClientRequest::MethodResponse {
                rid: rid()?,
                status,
            })
        }
        _ => Err(TopicError::Unsupported(topic.to_owned())),
    }
}

/// Reads a SUBSCRIBE topic filter.
pub fn parse_filter(filter: &str, identity: &Identity) -> Result<Subscription, TopicError> {
    match filter {
        "$iothub/methods/POST/#" => return Ok(Subscription::Feature(Feature::Methods)),
        "$iothub/twin/res/#" => return Ok(Subscription::TwinResponses),
        "$iothub/twin/PATCH/properties/desired/#" => {
            return Ok(Subscription::Feature(Feature::DesiredPatches))
        }
        _ => {}
    }
    let rest = strip_identity(filter, identity)?;
    match (rest, &identity.module) {
        (Some("messages/devicebound/#"), None) => Ok(Subscription::Feature(Feature::CloudToDevice)),
        (Some("inputs/#"), Some(_)) => Ok(Subscription::Feature(Feature::Inputs)),
        _ => Err(TopicError::Unsupported(filter.to_owned())),
    }
}

/// For `devices/{d}/...` or `devices/{d}/modules/{m}/...`: the part after the identity, if it is the
/// connection's own; an error if it is another's; `None` if the topic does not start that way.
fn strip_identity<'t>(topic: &'t str, identity: &Identity) -> Result<Option<&'t str>, TopicError> {
    let Some(rest) = topic.strip_prefix("devices/") else {
        return Ok(None);
    };
    let Some((device, rest)) = rest.split_once('/') else {
        return Ok(None);
    };
    let foreign = || TopicError::ForeignIdentity {
        topic: topic.to_owned(),
        identity: identity.to_string(),
    };
    // `devices/{d}/modules/{m}/...` names a module; anything else under `devices/{d}/` names the device.
    let (module, rest) = match rest
        .strip_prefix("modules/")
        .and_then(|r| r.split_once('/'))
    {
        Some((module, rest)) => (Some(module), rest),
        None => (None, rest),
    };
    if device != identity.device.as_str()
        || module != identity.module.as_ref().map(outpost_core::ModuleId::as_str)
    {
        return Err(foreign());
    }
    Ok(Some(rest))
}

/// The decoded value of query parameter `name` (given without `$`; the key may be `$name` or `%24name`).
fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        let key = unquote(key)?;
        (key.strip_prefix('$').unwrap_or(&key) == name)
            .then(|| unquote(value))
            .flatten()
    })
}

/// Percent-decodes with core's `unquote` (Python's `urllib.parse` rules); `None` for invalid UTF-8.
fn unquote(s: &str) -> Option<String> {
    outpost_core::quote::unquote(s).ok()
}

/// `$iothub/twin/res/{status}/?$rid={rid}`, plus `&$version={v}` after a reported patch.
pub fn twin_response(status: u16, rid: &str, version: Option<u64>) -> String {
    let rid = quote(rid);
    match version {
        Some(version) => format!("$iothub/twin/res/{status}/?$rid={rid}&$version={version}"),
        None => format!("$iothub/twin/res/{status}/?$rid={rid}"),
    }
}

/// `$iothub/twin/PATCH/properties/desired/?$version={v}`.
pub fn desired_patch(version: u64) -> String {
    format!("$iothub/twin/PATCH/properties/desired/?$version={version}")
}

/// `$iothub/methods/POST/{method}/?$rid={rid}`; the SDK unquotes both.
pub fn method_request(method: &str, rid: &str) -> String {
    format!(
        "$iothub/methods/POST/{}/?$rid={}",
        quote(method),
        quote(rid)
    )
}

/// `devices/{d}/messages/devicebound/{bag}`.
pub fn cloud_to_device(identity: &Identity, message: &Message) -> String {
    let mut topic = String::with_capacity(64 + identity.device.as_str().len());
    topic.push_str("devices/");
    topic.push_str(identity.device.as_str());
    topic.push_str("/messages/devicebound/");
    message.push_property_bag(&mut topic);
    topic
}

/// `devices/{d}/modules/{m}/inputs/{input}`, with `/{bag}` when the message has properties (as edgeHub):
/// `property_bag` is [`Message::encode_property_bag`]'s.
pub fn input(identity: &Identity, input: &str, property_bag: &str) -> String {
    let module = identity
        .module
        .as_ref()
        .map_or("", outpost_core::ModuleId::as_str);
    input_with_bag(
        &input_prefix(identity.device.as_str(), module, input),
        property_bag.len(),
        |topic| topic.push_str(property_bag),
    )
}

/// `devices/{d}/modules/{m}/inputs/{input}`: what [`input`] writes before the property bag, the same for every
/// message to that input (the edge hub makes it once per input).
pub fn input_prefix(device: &str, module: &str, input: &str) -> String {
    let mut prefix = String::with_capacity(24 + device.len() + module.len() + input.len());
    prefix.push_str("devices/");
    prefix.push_str(device);
    prefix.push_str("/modules/");
    prefix.push_str(module);
    prefix.push_str("/inputs/");
    push_quoted(&mut prefix, input);
    prefix
}

/// [`input`]'s topic from its [`input_prefix`] and a property bag that `push_bag` appends (nothing for none),
/// `bag_len` bytes or about: built in one string, with no string for the bag (one is made per delivered
/// message, the bag rendered straight from the stored record).
pub fn input_with_bag(prefix: &str, bag_len: usize, push_bag: impl FnOnce(&mut String)) -> String {
    let mut topic = String::with_capacity(prefix.len() + 1 + bag_len);
    topic.push_str(prefix);
    topic.push('/');
    push_bag(&mut topic);
    if topic.len() == prefix.len() + 1 {
        // No properties: no trailing slash.
        topic.pop();
    }
    topic
}

#[cfg(test)]
mod tests {
    use outpost_core::{DeviceId, ModuleId};

    use super::*;

    fn device(d: &str) -> Identity {
        Identity::device(DeviceId::new(d).unwrap())
    }

    fn module(d: &str, m: &str) -> Identity {
        Identity::module(DeviceId::new(d).unwrap(), ModuleId::new(m).unwrap())
    }

    #[test]
    fn a_twin_get_carries_its_request_id() {
        let request = parse_publish(
            "$iothub/twin/GET/?$rid=14b7878e-acbe-44a8-ac2b-3921d890018b",
            &device("devA"),
        );
        assert_eq!(
            request,
            Ok(ClientRequest::TwinGet {
                rid: "14b7878e-acbe-44a8-ac2b-3921d890018b".into()
            })
        );
    }

    #[test]
    fn an_encoded_dollar_in_the_rid_key_is_accepted() {
        assert_eq!(
            parse_publish("$iothub/twin/GET/?%24rid=1", &device("d")),
            Ok(ClientRequest::TwinGet { rid: "1".into() })
        );
    }

    #[test]
    fn a_twin_get_without_rid_is_refused() {
        assert!(matches!(
            parse_publish("$iothub/twin/GET/", &device("d")),
            Err(TopicError::MissingRequestId(_))
        ));
    }

    #[test]
    fn a_reported_patch_carries_its_request_id() {
        let request = parse_publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=68c1",
            &module("dev1", "mod1"),
        );
        assert_eq!(
            request,
            Ok(ClientRequest::TwinPatchReported { rid: "68c1".into() })
        );
    }

    #[test]
    fn a_method_response_carries_status_and_rid() {
        let request = parse_publish("$iothub/methods/res/200/?$rid=42", &module("dev1", "mod1"));
        assert_eq!(
            request,
            Ok(ClientRequest::MethodResponse {
                rid: "42".into(),
                status: 200
            })
        );
    }

    #[test]
    fn a_method_response_with_a_non_numeric_status_is_refused() {
        assert!(matches!(
            parse_publish("$iothub/methods/res/ok/?$rid=42", &device("d")),
            Err(TopicError::BadStatus(_))
        ));
    }

    #[test]
    fn the_sdk_output_topic_decodes_into_system_and_application_properties() {
        let topic = "devices/dev1/modules/mod1/messages/events/%24.on=output1&%24.mid=mid-1&%24.cid=corr-1&%24.ct=application%2Fjson&%24.ce=utf-8&alert=true&sp%20ace=a%20b%26c%3Dd%2Fe";
        let Ok(ClientRequest::Telemetry { system, properties }) =
            parse_publish(topic, &module("dev1", "mod1"))
        else {
            panic!("not telemetry")
        };
        assert_eq!(system["outputName"], "output1");
        assert_eq!(system["contentType"], "application/json");
        assert_eq!(properties["sp ace"], Some("a b&c=d/e".into()));
    }

    #[test]
    fn telemetry_without_a_property_bag_is_accepted_with_or_without_the_slash() {
        for topic in [
            "devices/dev1/modules/mod1/messages/events/",
            "devices/dev1/modules/mod1/messages/events",
        ] {
            let request = parse_publish(topic, &module("dev1", "mod1"));
            assert_eq!(
                request,
                Ok(ClientRequest::Telemetry {
                    system: BTreeMap::new(),
                    properties: BTreeMap::new()
                })
            );
        }
    }

    #[test]
    fn telemetry_with_a_raw_dollar_and_a_trailing_slash_is_accepted() {
        let Ok(ClientRequest::Telemetry { system, .. }) =
            parse_publish("devices/d/messages/events/$.ct=text&k=v/", &device("d"))
        else {
            panic!("not telemetry")
        };
        assert_eq!(system["contentType"], "text");
    }

    #[test]
    fn telemetry_of_another_device_is_refused() {
        let error = parse_publish("devices/other/messages/events/", &device("d"));
        assert!(matches!(error, Err(TopicError::ForeignIdentity { .. })));
    }

    #[test]
    fn a_module_cannot_publish_as_its_device() {
        let error = parse_publish("devices/dev1/messages/events/", &module("dev1", "mod1"));
        assert!(matches!(error, Err(TopicError::ForeignIdentity { .. })));
    }

    #[test]
    fn a_device_cannot_publish_as_one_of_its_modules() {
        let error = parse_publish(
            "devices/dev1/modules/mod1/messages/events/",
            &device("dev1"),
        );
        assert!(matches!(error, Err(TopicError::ForeignIdentity { .. })));
    }

    #[test]
    fn unknown_topics_are_refused() {
        for topic in [
            "a/b",
            "$iothub/twin/DELETE/?$rid=1",
            "devices/d/messages/eventsX",
            "devices/d/other",
        ] {
            assert!(
                matches!(
                    parse_publish(topic, &device("d")),
                    Err(TopicError::Unsupported(_))
                ),
                "{topic}"
            );
        }
    }

    #[test]
    fn the_sdk_filters_map_to_features() {
        let d = device("devA");
        let m = module("dev1", "mod1");
        assert_eq!(
            parse_filter("devices/devA/messages/devicebound/#", &d),
            Ok(Subscription::Feature(Feature::CloudToDevice))
        );
        assert_eq!(
            parse_filter("devices/dev1/modules/mod1/inputs/#", &m),
            Ok(Subscription::Feature(Feature::Inputs))
        );
        assert_eq!(
            parse_filter("$iothub/methods/POST/#", &m),
            Ok(Subscription::Feature(Feature::Methods))
        );
        assert_eq!(
            parse_filter("$iothub/twin/res/#", &m),
            Ok(Subscription::TwinResponses)
        );
        assert_eq!(
            parse_filter("$iothub/twin/PATCH/properties/desired/#", &d),
            Ok(Subscription::Feature(Feature::DesiredPatches))
        );
    }

    #[test]
    fn a_filter_of_another_identity_is_refused() {
        let error = parse_filter("devices/other/messages/devicebound/#", &device("devA"));
        assert!(matches!(error, Err(TopicError::ForeignIdentity { .. })));
    }

    #[test]
    fn generic_wildcard_filters_are_refused() {
        for filter in ["#", "devices/devA/#", "$iothub/#"] {
            assert!(
                matches!(
                    parse_filter(filter, &device("devA")),
                    Err(TopicError::Unsupported(_))
                ),
                "{filter}"
            );
        }
    }

    #[test]
    fn response_topics_match_the_wire_logs() {
        assert_eq!(
            twin_response(200, "925d", None),
            "$iothub/twin/res/200/?$rid=925d"
        );
        assert_eq!(
            twin_response(204, "68c1", Some(8)),
            "$iothub/twin/res/204/?$rid=68c1&$version=8"
        );
        assert_eq!(
            desired_patch(5),
            "$iothub/twin/PATCH/properties/desired/?$version=5"
        );
        assert_eq!(
            method_request("reboot", "42"),
            "$iothub/methods/POST/reboot/?$rid=42"
        );
    }

    #[test]
    fn method_names_are_quoted_so_the_sdk_unquotes_them_back() {
        assert_eq!(
            method_request("a/b c", "1"),
            "$iothub/methods/POST/a%2Fb%20c/?$rid=1"
        );
    }

    #[test]
    fn c2d_and_input_topics_carry_the_property_bag() {
        let mut message = Message::default();
        message.system.insert("messageId".into(), "abc".into());
        message.properties.insert("p1".into(), Some("v 1".into()));
        assert_eq!(
            cloud_to_device(&device("devA"), &message),
            "devices/devA/messages/devicebound/%24.mid=abc&p1=v%201"
        );
        assert_eq!(
            input(
                &module("dev1", "mod1"),
                "input1",
                &message.encode_property_bag()
            ),
            "devices/dev1/modules/mod1/inputs/input1/%24.mid=abc&p1=v%201"
        );
        assert_eq!(
            input(&module("dev1", "mod1"), "in", ""),
            "devices/dev1/modules/mod1/inputs/in"
        );
        assert_eq!(
            input_prefix("dev1", "mod1", "in put"),
            "devices/dev1/modules/mod1/inputs/in%20put"
        );
    }
}
