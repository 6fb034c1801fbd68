//! The wire contract of the upstream link between an edge device and the hub (`/edge/{device}/...`): every
//! request and answer body as a serde type that both ends import, and the link's API version.
//!
//! The hub's side is `outpost_hub::edge_link` with its routes in `outpost_hub::rest::edge`; the edge's side is
//! `outpost_edge::edgehub::link`. A missing field is an error; only the two lists of an acks request may be
//! left out (a request carries what is ready). Twins' documents and message bodies stay [`Value`]: their shape
//! is the user's.
//!
//! | route                          | request                | answer              |
//! |--------------------------------|------------------------|---------------------|
//! | `POST /presence`               | [`PresenceRequest`]    | [`PresenceAnswer`]  |
//! | `GET /events?waitSecs=`        |                        | [`EventsAnswer`]    |
//! | `POST /messages`               | [`TelemetryBatch`]     | [`TelemetryAnswer`] |
//! | `GET /twin?client=`            |                        | [`TwinAnswer`]      |
//! | `PATCH /twin/reported?client=` | the patch (a document) | [`ReportedAnswer`]  |
//! | `POST /acks`                   | [`AcksRequest`]        | [`AcksAnswer`]      |
//! | `GET /scope`                   |                        | [`ScopeAnswer`]     |
//!
//! A refusal that is the link's state and not the request's fault is a `409` with a [`LinkRefusal`]: today
//! only `GET /events` from an edge that has not declared its presence to this hub process (the hub restarted
//! between two long polls and forgot it), answered by declaring presence again, catching up, and polling on.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Message;

/// The version of this contract. The edge sends it in the [`LINK_VERSION_PARAM`] query parameter of every
/// request; the hub refuses any other (or none) with a 400 rather than guess.
pub const LINK_API_VERSION: &str = "2026-12-01";

/// The query parameter that carries [`LINK_API_VERSION`] (beside IoT Hub's own `api-version`).
pub const LINK_VERSION_PARAM: &str = "link-version";

/// Why a request's link version is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkVersionError {
    /// The request names no link version.
    #[error("the upstream link version is missing: send {LINK_VERSION_PARAM}={LINK_API_VERSION}")]
    Missing,
    /// The request names a version this side does not speak.
    #[error("upstream link version {0:?} is not supported: this hub speaks {LINK_API_VERSION}")]
    Unsupported(String),
}

/// Checks the link version a request names (the value of its [`LINK_VERSION_PARAM`], if any).
pub fn check_link_version(version: Option<&str>) -> Result<(), LinkVersionError> {
    match version {
        None => Err(LinkVersionError::Missing),
        Some(LINK_API_VERSION) => Ok(()),
        Some(other) => Err(LinkVersionError::Unsupported(other.to_owned())),
    }
}

/// The status of a [`LinkRefusal`].
pub const LINK_REFUSAL_STATUS: u16 = 409;

/// Why the link's state makes the hub refuse a request: what the edge must do before it asks again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LinkRefusalCode {
    /// The edge has not declared its presence since this hub process started: the hub holds no virtual
    /// connection for its clients, so it would push them nothing. Declare presence, catch up, then poll.
    PresenceRequired,
    /// A code this side does not know (from a newer hub): the request is refused, for a reason unknown.
    #[serde(other, skip_serializing)]
    Unknown,
}

/// The body of a `409` on the link ([`LINK_REFUSAL_STATUS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRefusal {
    /// What the edge must do.
    pub code: LinkRefusalCode,
    /// For people.
    pub message: String,
}

impl LinkRefusal {
    /// The refusal of a long poll from an edge device that has not declared its presence to this hub process.
    pub fn presence_required(edge: &str) -> Self {
        Self {
            code: LinkRefusalCode::PresenceRequired,
            message: format!(
                "edge device {edge} has not declared its presence since the hub started: declare it, then poll"
            ),
        }
    }
}

/// What a client behind an edge device listens for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkFeature {
    /// Desired property patches.
    Desired,
    /// Direct method requests.
    Methods,
    /// Cloud-to-device messages.
    C2d,
    /// Module inputs (routed on the edge; the hub keeps the flag).
    Inputs,
}

impl LinkFeature {
    /// Every feature, in wire order.
    pub const ALL: [Self; 4] = [Self::Desired, Self::Methods, Self::C2d, Self::Inputs];

    /// Its wire name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Desired => "desired",
            Self::Methods => "methods",
            Self::C2d => "c2d",
            Self::Inputs => "inputs",
        }
    }

    /// The feature of a wire name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// One connected client behind an edge device, as its edge hub reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceClient {
    /// `d` or `d/m`.
    pub id: String,
    /// What it listens for.
    pub features: Vec<LinkFeature>,
}

/// `POST /presence`: the whole set of clients connected behind the edge device now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRequest {
    /// The clients.
    pub clients: Vec<PresenceClient>,
}

/// The answer to a presence request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceAnswer {
    /// How many clients the hub now holds as connected behind the edge device.
    pub clients: usize,
}

/// A push from the hub for a client behind the edge device, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LinkEvent {
    /// A desired property patch.
    Desired {
        /// `d` or `d/m`.
        client: String,
        /// The patch (with `$version`).
        body: Value,
    },
    /// A cloud-to-device message, to be acknowledged with its delivery id.
    C2d {
        /// The device.
        client: String,
        /// The hub's delivery id.
        #[serde(rename = "deliveryId")]
        delivery_id: u64,
        /// The message.
        message: Message,
    },
    /// A direct method request.
    Method {
        /// `d` or `d/m`.
        client: String,
        /// The request id, echoed in the answer.
        rid: String,
        /// The method name.
        method: String,
        /// Its JSON payload.
        payload: Value,
    },
    /// The hub closes a client (deleted, disabled or its keys changed).
    Close {
        /// `d` or `d/m`.
        client: String,
    },
    /// A kind this side does not know (from a newer hub): logged and skipped, never sent.
    #[serde(other, skip_serializing)]
    Unknown,
}

/// `GET /events`: the pushes waiting for the edge device (empty when the long poll timed out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsAnswer {
    /// The pushes, oldest first.
    pub events: Vec<LinkEvent>,
}

/// A telemetry message of a client behind an edge device. Borrowed where the edge sends it, owned where the
/// hub reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamMessage<'a> {
    /// The client that sent it (`device` or `device/module`).
    pub client: Cow<'a, str>,
    /// The message (its body in base64).
    pub message: Cow<'a, Message>,
}

/// The bytes of a batch's body around its messages: `{"messages":[]}`.
pub const BATCH_ENVELOPE_BYTES: usize = r#"{"messages":[]}"#.len();

impl<'a> UpstreamMessage<'a> {
    /// A message to send, borrowed.
    pub fn borrowed(client: &'a str, message: &'a Message) -> Self {
        Self {
            client: Cow::Borrowed(client),
            message: Cow::Borrowed(message),
        }
    }

    /// Its size in a batch's JSON body, the comma before it included.
    pub fn encoded_len(&self) -> usize {
        /// Counts what is written and keeps nothing: the size without a second copy of the message.
        struct Counter(usize);
        impl std::io::Write for Counter {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0 += bytes.len();
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut counter = Counter(1);
        // Serialising plain strings and maps into a writer that never fails cannot fail.
        let _ = serde_json::to_writer(&mut counter, self);
        counter.0
    }
}

/// `POST /messages`: a batch of telemetry, appended by the hub in one transaction. Its size is the sum of the
/// messages' [`UpstreamMessage::encoded_len`] plus [`BATCH_ENVELOPE_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryBatch<'a> {
    /// The messages, in order.
    pub messages: Vec<UpstreamMessage<'a>>,
}

/// The answer to a telemetry batch, once it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryAnswer {
    /// How many messages were stored.
    pub accepted: usize,
}

/// `GET /twin`: a client's twin as the device sees it. The documents are the user's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwinAnswer {
    /// Desired properties with `$version`.
    pub desired: Value,
    /// Reported properties with `$version`.
    pub reported: Value,
}

impl TwinAnswer {
    /// The twin as one document, `{"desired":..,"reported":..}`, as the edge caches and serves it.
    pub fn into_document(self) -> Value {
        let mut document = serde_json::Map::new();
        document.insert("desired".to_owned(), self.desired);
        document.insert("reported".to_owned(), self.reported);
        Value::Object(document)
    }
}

/// The answer to a reported patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedAnswer {
    /// The new reported version.
    pub version: u64,
}

/// A C2D message a client acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivered {
    /// The device.
    pub client: String,
    /// The hub's delivery id from the [`LinkEvent::C2d`].
    pub delivery_id: u64,
}

/// A client's answer to a direct method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodResponse {
    /// Who answered, `d` or `d/m`: the hub takes it only from the identity the request was sent to.
    pub client: String,
    /// The request id from the [`LinkEvent::Method`].
    pub rid: String,
    /// The status the client chose.
    pub status: i32,
    /// Its JSON payload.
    pub payload: Value,
}

/// `POST /acks`: completed C2D messages and method answers. Either list may be left out (a request carries
/// what is ready); the entries' fields may not.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcksRequest {
    /// Acknowledged C2D messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delivered: Vec<Delivered>,
    /// Method answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub method_responses: Vec<MethodResponse>,
}

/// The answer to an acks request: `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcksAnswer {}

/// Whether a device in scope may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeStatus {
    /// It may connect.
    Enabled,
    /// Connections are refused.
    Disabled,
}

/// The symmetric keys of an identity in scope (empty strings when it does not use SAS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeys {
    /// Base64 primary key.
    pub primary_key: String,
    /// Base64 secondary key.
    pub secondary_key: String,
}

/// The X.509 thumbprints of an identity in scope (SHA-1 or SHA-256 hex; `None` unless `selfSigned`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Thumbprints {
    /// The primary thumbprint.
    pub primary_thumbprint: Option<String>,
    /// The secondary thumbprint.
    pub secondary_thumbprint: Option<String>,
}

/// The part of an identity's `authentication` the edge checks tokens and client certificates with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopeAuthentication {
    /// Its keys.
    pub symmetric_key: SymmetricKeys,
    /// Its thumbprints (`selfSigned`).
    pub x509_thumbprint: X509Thumbprints,
    /// How it authenticates, as IoT Hub names it: `sas`, `selfSigned` or `certificateAuthority`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// A child device of the edge device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopeDevice {
    /// Its id.
    pub device_id: String,
    /// Whether it may connect.
    pub status: ScopeStatus,
    /// Its keys.
    pub authentication: ScopeAuthentication,
}

/// A module of the edge device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopeModule {
    /// The edge device.
    pub device_id: String,
    /// Its id.
    pub module_id: String,
    /// Its keys.
    pub authentication: ScopeAuthentication,
}

/// `GET /scope`: the identities behind the edge device with their keys, for its offline authentication cache.
/// The field names are those of IoT Hub's `Device` and `Module` JSON, of which it is a part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeAnswer {
    /// The child devices.
    pub devices: Vec<ScopeDevice>,
    /// The edge device's modules.
    pub modules: Vec<ScopeModule>,
    /// The hub's CA certificates (PEM), which `certificateAuthority` identities' certificates chain to.
    #[serde(rename = "caCertificates")]
    pub ca_certificates: Vec<String>,
}

#[cfg(test)]
pub(crate) mod tests {
    use serde::de::DeserializeOwned;
    use serde_json::json;

    use super::*;

    /// Parses `wire` (the JSON a contract carries today) as `T` and prints it back: the same JSON. Shared by the
    /// tests of every wire contract in this crate.
    pub(crate) fn round_trip<T: Serialize + DeserializeOwned>(wire: Value) -> T {
        let expected = wire.clone();
        let parsed: T = serde_json::from_value(wire).expect("today's JSON parses");
        assert_eq!(serde_json::to_value(&parsed).unwrap(), expected);
        parsed
    }

    fn message() -> (Message, Value) {
        let mut message = Message {
            body: bytes::Bytes::from_static(b"21.5"),
            ..Message::default()
        };
        message
            .properties
            .insert("alert".to_owned(), Some("true".to_owned()));
        let wire = json!({"bodyBase64": "MjEuNQ==", "system": {}, "properties": {"alert": "true"}});
        assert_eq!(serde_json::to_value(&message).unwrap(), wire);
        (message, wire)
    }

    #[test]
    fn a_presence_request_and_its_answer_round_trip() {
        let request: PresenceRequest = round_trip(json!({"clients": [
            {"id": "edge1/filter", "features": ["desired", "methods", "c2d", "inputs"]},
            {"id": "leaf", "features": []},
        ]}));
        assert_eq!(request.clients[0].features, LinkFeature::ALL);
        let answer: PresenceAnswer = round_trip(json!({"clients": 2}));
        assert_eq!(answer.clients, 2);
        for feature in LinkFeature::ALL {
            assert_eq!(json!(feature), json!(feature.name()));
            assert_eq!(LinkFeature::from_name(feature.name()), Some(feature));
        }
    }

    #[test]
    fn an_unknown_feature_is_refused() {
        let parsed = serde_json::from_value::<PresenceRequest>(
            json!({"clients": [{"id": "d", "features": ["telepathy"]}]}),
        );
        assert!(parsed.is_err());
    }

    #[test]
    fn every_event_kind_round_trips_as_todays_json() {
        let (message, message_wire) = message();
        let answer: EventsAnswer = round_trip(json!({"events": [
            {"kind": "desired", "client": "edge1/filter", "body": {"threshold": 5, "$version": 3}},
            {"kind": "c2d", "client": "leaf", "deliveryId": 7, "message": message_wire},
            {"kind": "method", "client": "edge1/filter", "rid": "12", "method": "reboot",
             "payload": {"delay": 1}},
            {"kind": "close", "client": "leaf"},
        ]}));
        assert_eq!(
            answer.events,
            vec![
                LinkEvent::Desired {
                    client: "edge1/filter".into(),
                    body: json!({"threshold": 5, "$version": 3})
                },
                LinkEvent::C2d {
                    client: "leaf".into(),
                    delivery_id: 7,
                    message
                },
                LinkEvent::Method {
                    client: "edge1/filter".into(),
                    rid: "12".into(),
                    method: "reboot".into(),
                    payload: json!({"delay": 1})
                },
                LinkEvent::Close {
                    client: "leaf".into()
                },
            ]
        );
        round_trip::<EventsAnswer>(json!({"events": []}));
    }

    #[test]
    fn an_event_of_a_kind_from_a_newer_hub_parses_as_unknown() {
        let answer: EventsAnswer = serde_json::from_value(json!({"events": [
            {"kind": "teleport", "client": "leaf", "where": "mars"},
            {"kind": "close", "client": "leaf"},
        ]}))
        .unwrap();
        assert_eq!(
            answer.events,
            vec![
                LinkEvent::Unknown,
                LinkEvent::Close {
                    client: "leaf".into()
                }
            ]
        );
        assert!(serde_json::to_value(&LinkEvent::Unknown).is_err());
    }

    #[test]
    fn a_known_event_missing_a_field_does_not_parse() {
        for event in [
            json!({"kind": "c2d", "client": "leaf", "message": message().1}),
            json!({"kind": "method", "client": "d", "rid": "1", "method": "m"}),
            json!({"kind": "desired", "body": {}}),
            json!({"client": "d"}),
        ] {
            assert!(
                serde_json::from_value::<LinkEvent>(event.clone()).is_err(),
                "{event}"
            );
        }
    }

    #[test]
    fn a_telemetry_batch_and_its_answer_round_trip() {
        let (message, message_wire) = message();
        let batch: TelemetryBatch<'static> = round_trip(json!({"messages": [
            {"client": "edge1/filter", "message": message_wire},
        ]}));
        assert_eq!(batch.messages[0].client, "edge1/filter");
        assert_eq!(*batch.messages[0].message, message);
        let sent = TelemetryBatch {
            messages: vec![UpstreamMessage::borrowed("edge1/filter", &message)],
        };
        let bytes = serde_json::to_vec(&sent).unwrap();
        assert_eq!(
            bytes.len(),
            BATCH_ENVELOPE_BYTES + sent.messages[0].encoded_len() - 1
        );
        let answer: TelemetryAnswer = round_trip(json!({"accepted": 1}));
        assert_eq!(answer.accepted, 1);
    }

    #[test]
    fn twin_and_reported_answers_round_trip() {
        let twin: TwinAnswer = round_trip(json!({
            "desired": {"threshold": 5, "$version": 3},
            "reported": {"$version": 1},
        }));
        assert_eq!(twin.desired["threshold"], 5);
        let reported: ReportedAnswer = round_trip(json!({"version": 4}));
        assert_eq!(reported.version, 4);
        assert!(serde_json::from_value::<TwinAnswer>(json!({"desired": {}})).is_err());
    }

    #[test]
    fn acks_requests_round_trip_with_either_list() {
        let delivered: AcksRequest =
            round_trip(json!({"delivered": [{"client": "leaf", "deliveryId": 7}]}));
        assert_eq!(delivered.delivered[0].delivery_id, 7);
        let answered: AcksRequest = round_trip(json!({"methodResponses": [
            {"client": "edge1/filter", "rid": "12", "status": 200, "payload": {"ok": true}},
        ]}));
        assert_eq!(answered.method_responses[0].status, 200);
        round_trip::<AcksAnswer>(json!({}));
        assert!(
            serde_json::from_value::<AcksRequest>(json!({"delivered": [{"client": "leaf"}]}))
                .is_err()
        );
        assert!(serde_json::from_value::<AcksRequest>(
            json!({"methodResponses": [{"client": "d", "rid": "1", "status": 200}]})
        )
        .is_err());
    }

    #[test]
    fn the_scope_answer_reads_todays_device_and_module_json() {
        let keys = json!({"primaryKey": "cA==", "secondaryKey": "cw=="});
        let today = json!({
            "devices": [{
                "deviceId": "leaf", "generationId": "1", "etag": "MQ==", "connectionState": "Disconnected",
                "status": "disabled", "statusReason": null, "cloudToDeviceMessageCount": 0,
                "authentication": {"symmetricKey": keys, "x509Thumbprint": {"primaryThumbprint": null,
                    "secondaryThumbprint": null}, "type": "sas"},
                "capabilities": {"iotEdge": false}, "deviceScope": null, "parentScopes": ["ms-azure-iot-edge://edge1-1"],
            }],
            "modules": [{
                "moduleId": "filter", "managedBy": null, "deviceId": "edge1", "generationId": "2",
                "authentication": {"symmetricKey": keys, "x509Thumbprint": {}, "type": "sas"},
            }],
            "caCertificates": [],
        });
        let scope: ScopeAnswer = serde_json::from_value(today).unwrap();
        assert_eq!(scope.devices[0].status, ScopeStatus::Disabled);
        assert_eq!(
            scope.modules[0].authentication.symmetric_key.primary_key,
            "cA=="
        );
        // What the hub sends now: the part the edge reads, under the same names.
        let x509 = json!({"primaryThumbprint": "AB".repeat(20), "secondaryThumbprint": null});
        round_trip::<ScopeAnswer>(json!({
            "devices": [{"deviceId": "leaf", "status": "disabled",
                         "authentication": {"symmetricKey": keys, "x509Thumbprint": x509, "type": "selfSigned"}}],
            "modules": [{"deviceId": "edge1", "moduleId": "filter",
                         "authentication": {"symmetricKey": keys,
                                            "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
                                            "type": "sas"}}],
            "caCertificates": ["-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"],
        }));
        assert!(serde_json::from_value::<ScopeAnswer>(json!({"devices": []})).is_err());
    }

    #[test]
    fn a_missing_field_fails_to_parse() {
        for (name, parsed) in [
            (
                "presence",
                serde_json::from_value::<PresenceRequest>(json!({"clients": [{"id": "d"}]})).err(),
            ),
            (
                "batch",
                serde_json::from_value::<TelemetryBatch<'static>>(
                    json!({"messages": [{"client": "d"}]}),
                )
                .err(),
            ),
            (
                "reported",
                serde_json::from_value::<ReportedAnswer>(json!({})).err(),
            ),
        ] {
            assert!(parsed.is_some(), "{name} parsed without a field");
        }
    }

    #[test]
    fn a_link_refusal_round_trips_and_an_unknown_code_parses_as_unknown() {
        let refusal: LinkRefusal = round_trip(json!({
            "code": "presenceRequired",
            "message": LinkRefusal::presence_required("edge1").message,
        }));
        assert_eq!(refusal.code, LinkRefusalCode::PresenceRequired);
        let newer: LinkRefusal =
            serde_json::from_value(json!({"code": "moveToAnotherHub", "message": "bye"})).unwrap();
        assert_eq!(newer.code, LinkRefusalCode::Unknown);
        assert!(
            serde_json::from_value::<LinkRefusal>(json!({"code": "presenceRequired"})).is_err()
        );
    }

    #[test]
    fn the_link_version_is_checked() {
        assert_eq!(check_link_version(Some(LINK_API_VERSION)), Ok(()));
        assert_eq!(check_link_version(None), Err(LinkVersionError::Missing));
        assert!(matches!(
            check_link_version(Some("2020-01-01")),
            Err(LinkVersionError::Unsupported(v)) if v == "2020-01-01"
        ));
    }
}
