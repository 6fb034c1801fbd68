//! The Device Provisioning Service's device protocol, as azure-iot-device 2.14.0 speaks it over MQTT: the
//! topics, the CONNECT user name, the registration's SAS resource, the key a group member derives, and the
//! JSON bodies of a registration and of its operation status. Both the hub's provisioning head and the edge's
//! provisioning client import these types, so the two ends cannot drift apart.
//!
//! The exchange: CONNECT with client id `{registrationId}`, user name
//! `{idScope}/registrations/{registrationId}/api-version=2019-03-31&ClientVersion=...` and a SAS token for
//! `{idScope}/registrations/{registrationId}`; SUBSCRIBE `$dps/registrations/res/#`; PUBLISH
//! `$dps/registrations/PUT/iotdps-register/?$rid={rid}` with [`DeviceRegistration`]; the answer on
//! `$dps/registrations/res/{status}/?$rid={rid}&retry-after={s}` is a [`RegistrationOperationStatus`]; while it
//! says `assigning`, the client polls with `$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&
//! operationId={id}`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::quote::{quote, unquote};
use crate::sas::{sign, SasError};

/// The api-version azure-iot-device 2.14.0 sends.
pub const API_VERSION: &str = "2019-03-31";
/// The filter a client subscribes to for its answers.
pub const RESPONSE_FILTER: &str = "$dps/registrations/res/#";
/// The prefix of every answer's topic.
const RESPONSE_PREFIX: &str = "$dps/registrations/res/";
/// The prefix of a registration request's topic.
const REGISTER_PREFIX: &str = "$dps/registrations/PUT/iotdps-register/?";
/// The prefix of an operation-status request's topic.
const STATUS_PREFIX: &str = "$dps/registrations/GET/iotdps-get-operationstatus/?";
/// The longest registration id DPS accepts.
pub const MAX_REGISTRATION_ID_LEN: usize = 128;

/// Why a provisioning topic, user name or id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvisioningError {
    /// The registration id breaks DPS's rules.
    #[error(
        "invalid registration id {0:?}: 1-128 lower-case letters, digits, '-', '.', '_' or ':'"
    )]
    InvalidRegistrationId(String),
    /// The topic is not one of the two requests a device sends.
    #[error("unknown provisioning topic {0:?}")]
    UnknownTopic(String),
    /// A request topic lacks `$rid` (or the status request lacks `operationId`).
    #[error("provisioning topic {0:?} lacks {1}")]
    MissingParameter(String, &'static str),
    /// The CONNECT user name is not `{idScope}/registrations/{registrationId}/...`.
    #[error("the user name is not {{idScope}}/registrations/{{registrationId}}/...")]
    BadUsername,
}

/// Checks a registration id: DPS allows 1 to 128 lower-case alphanumerics and `-._:`.
pub fn validate_registration_id(id: &str) -> Result<(), ProvisioningError> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._:".contains(c);
    if id.is_empty() || id.len() > MAX_REGISTRATION_ID_LEN || !id.chars().all(allowed) {
        return Err(ProvisioningError::InvalidRegistrationId(id.to_owned()));
    }
    Ok(())
}

/// The key a member of a symmetric-key enrollment group proves: `base64(HMAC-SHA256(groupKey, registrationId))`.
pub fn derive_device_key(group_key_b64: &str, registration_id: &str) -> Result<String, SasError> {
    sign(group_key_b64, registration_id.as_bytes())
}

/// The resource a registration's SAS token is for (not encoded): `{idScope}/registrations/{registrationId}`.
pub fn registration_resource(id_scope: &str, registration_id: &str) -> String {
    format!("{id_scope}/registrations/{registration_id}")
}

/// A registration's SAS token as the SDK builds it (`sr` and `sig` quoted, no key name).
pub fn registration_token(
    id_scope: &str,
    registration_id: &str,
    key_b64: &str,
    expiry: u64,
) -> Result<String, SasError> {
    let sr = quote(&registration_resource(id_scope, registration_id));
    let sig = sign(key_b64, format!("{sr}\n{expiry}").as_bytes())?;
    Ok(format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry}&skn=registration",
        quote(&sig)
    ))
}

/// The CONNECT user name of a registration.
pub fn username(id_scope: &str, registration_id: &str) -> String {
    format!("{id_scope}/registrations/{registration_id}/api-version={API_VERSION}")
}

/// The ID scope and registration id a CONNECT user name names.
pub fn parse_username(username: &str) -> Result<(&str, &str), ProvisioningError> {
    let (scope, rest) = username
        .split_once("/registrations/")
        .ok_or(ProvisioningError::BadUsername)?;
    let registration = rest.split('/').next().unwrap_or_default();
    if scope.is_empty() || scope.contains('/') || registration.is_empty() {
        return Err(ProvisioningError::BadUsername);
    }
    Ok((scope, registration))
}

/// A request a device publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisioningRequest {
    /// `PUT iotdps-register`: register (or register again).
    Register {
        /// The request id the answer carries back.
        rid: String,
    },
    /// `GET iotdps-get-operationstatus`: how the registration operation stands.
    OperationStatus {
        /// The request id the answer carries back.
        rid: String,
        /// The operation the registration answer named.
        operation_id: String,
    },
}

impl ProvisioningRequest {
    /// Reads a request topic.
    pub fn parse(topic: &str) -> Result<Self, ProvisioningError> {
        let (query, register) = if let Some(query) = topic.strip_prefix(REGISTER_PREFIX) {
            (query, true)
        } else if let Some(query) = topic.strip_prefix(STATUS_PREFIX) {
            (query, false)
        } else {
            return Err(ProvisioningError::UnknownTopic(topic.to_owned()));
        };
        let parameter = |name: &'static str| {
            query
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .find(|(key, _)| *key == name)
                .and_then(|(_, value)| unquote(value).ok())
                .filter(|value| !value.is_empty())
                .ok_or_else(|| ProvisioningError::MissingParameter(topic.to_owned(), name))
        };
        let rid = parameter("$rid")?;
        if register {
            Ok(Self::Register { rid })
        } else {
            Ok(Self::OperationStatus {
                rid,
                operation_id: parameter("operationId")?,
            })
        }
    }

    /// The topic of this request.
    pub fn topic(&self) -> String {
        match self {
            Self::Register { rid } => format!("{REGISTER_PREFIX}$rid={}", quote(rid)),
            Self::OperationStatus { rid, operation_id } => format!(
                "{STATUS_PREFIX}$rid={}&operationId={}",
                quote(rid),
                quote(operation_id)
            ),
        }
    }
}

/// The topic of an answer: `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]`.
pub fn response_topic(status: u16, rid: &str, retry_after: Option<u32>) -> String {
    let topic = format!("{RESPONSE_PREFIX}{status}/?$rid={}", quote(rid));
    match retry_after {
        Some(seconds) => format!("{topic}&retry-after={seconds}"),
        None => topic,
    }
}

/// An answer's status, request id and retry-after, read from its topic.
pub fn parse_response_topic(topic: &str) -> Option<(u16, String, Option<u32>)> {
    let rest = topic.strip_prefix(RESPONSE_PREFIX)?;
    let (status, query) = rest.split_once("/?")?;
    let status = status.parse().ok()?;
    let mut rid = None;
    let mut retry_after = None;
    for (key, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
        match key {
            "$rid" => rid = unquote(value).ok(),
            "retry-after" => retry_after = value.parse().ok(),
            _ => {}
        }
    }
    Some((status, rid?, retry_after))
}

/// The body of a registration request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistration {
    /// Must be the registration id the client connected as.
    pub registration_id: String,
    /// The device's own data for custom allocation (kept, not interpreted).
    #[serde(default)]
    pub payload: Option<Value>,
}

/// Where a registration stands, as DPS spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RegistrationStatus {
    /// Not yet assigned.
    Unassigned,
    /// In progress: poll the operation status.
    Assigning,
    /// Done: the device exists in `assignedHub`.
    Assigned,
    /// Refused or failed; `errorCode` and `errorMessage` say why.
    Failed,
    /// The enrollment is disabled.
    Disabled,
}

/// The registration state inside an answer. azure-iot-device 2.14.0 waits forever when a final state lacks
/// `deviceId`, `assignedHub` or `substatus`, so they are always present (empty strings when there is nothing
/// to say, as in a refusal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistrationResult {
    /// The registration id.
    pub registration_id: String,
    /// When the registration was first recorded (RFC 3339).
    pub created_date_time_utc: String,
    /// The hub the device was assigned to.
    pub assigned_hub: String,
    /// The device's id in that hub.
    pub device_id: String,
    /// How the registration stands.
    pub status: RegistrationStatus,
    /// `initialAssignment`, `deviceDataMigrated`, `deviceDataReset` or `reprovisionedToInitialAssignment`.
    pub substatus: String,
    /// When the registration last changed (RFC 3339).
    pub last_updated_date_time_utc: String,
    /// The registration record's etag.
    pub etag: String,
    /// DPS's error code of a failed registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    /// Why a registration failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// A payload for the device (custom allocation); absent here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// The body of every answer: the operation and, once it ended, the registration's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationOperationStatus {
    /// The operation to poll.
    pub operation_id: String,
    /// How it stands.
    pub status: RegistrationStatus,
    /// Present once the operation ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<DeviceRegistrationResult>,
}

/// The body of an error answer (401, 400, 404, 429).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningErrorBody {
    /// DPS's error code (`401002`, `400004`, ...).
    pub error_code: u32,
    /// A tracking id (the operation or the request id).
    pub tracking_id: String,
    /// What was wrong.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sas::SasToken;

    #[test]
    fn a_group_member_key_is_the_hmac_of_its_registration_id() {
        // Computed with Azure's docs' Python snippet (hmac.new(b64decode(key), id, sha256), base64 out).
        let group = "aGVsbG8gd29ybGQgZ3JvdXAga2V5IDEyMzQ1Njc4OTA=";
        let derived = derive_device_key(group, "sensor-001").unwrap();
        assert_eq!(derived, "XRVbFqQHeULpJAOC4Ss2eyiUrM+Da5zuEizLQWXQsf4=");
        assert_ne!(derived, derive_device_key(group, "sensor-002").unwrap());
        assert!(derive_device_key("not base64!", "sensor-001").is_err());
    }

    #[test]
    fn a_registration_token_verifies_with_its_key_only() {
        let key = "aGVsbG8gd29ybGQgZ3JvdXAga2V5IDEyMzQ1Njc4OTA=";
        let token = registration_token("0ne0000ABCD", "dev-1", key, 4_000_000_000).unwrap();
        let parsed = SasToken::parse(&token).unwrap();
        assert_eq!(parsed.resource_raw, "0ne0000ABCD%2Fregistrations%2Fdev-1");
        parsed.verify(&[key], 1_000).unwrap();
        assert!(parsed.verify(&["b3RoZXIga2V5"], 1_000).is_err());
    }

    #[test]
    fn the_sdk_username_names_scope_and_registration() {
        let name = "0ne00ABC/registrations/dev-1/api-version=2019-03-31&ClientVersion=azure-iot-provisioning-devicesdk%2F2.14.0";
        assert_eq!(parse_username(name).unwrap(), ("0ne00ABC", "dev-1"));
        assert!(parse_username("hub/dev-1/?api-version=1").is_err());
        assert!(parse_username("/registrations/dev-1/").is_err());
        assert!(parse_username("scope/registrations//").is_err());
    }

    #[test]
    fn request_topics_round_trip_and_need_their_parameters() {
        for request in [
            ProvisioningRequest::Register {
                rid: "a b/1".into(),
            },
            ProvisioningRequest::OperationStatus {
                rid: "7".into(),
                operation_id: "4.abc/def".into(),
            },
        ] {
            assert_eq!(
                ProvisioningRequest::parse(&request.topic()).unwrap(),
                request
            );
        }
        assert_eq!(
            ProvisioningRequest::parse("$dps/registrations/PUT/iotdps-register/?$rid=42").unwrap(),
            ProvisioningRequest::Register { rid: "42".into() }
        );
        assert!(matches!(
            ProvisioningRequest::parse("$dps/registrations/PUT/iotdps-register/?x=1"),
            Err(ProvisioningError::MissingParameter(_, "$rid"))
        ));
        assert!(matches!(
            ProvisioningRequest::parse("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1"),
            Err(ProvisioningError::MissingParameter(_, "operationId"))
        ));
        assert!(ProvisioningRequest::parse("devices/d/messages/events/").is_err());
    }

    #[test]
    fn response_topics_carry_status_rid_and_retry_after() {
        let topic = response_topic(202, "r 1", Some(3));
        assert_eq!(
            topic,
            "$dps/registrations/res/202/?$rid=r%201&retry-after=3"
        );
        assert_eq!(
            parse_response_topic(&topic),
            Some((202, "r 1".to_owned(), Some(3)))
        );
        assert_eq!(
            parse_response_topic(&response_topic(200, "9", None)),
            Some((200, "9".to_owned(), None))
        );
    }

    #[test]
    fn registration_ids_follow_dps_rules() {
        validate_registration_id("sensor-01.a_b:c").unwrap();
        for bad in ["", "Upper", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_registration_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_final_state_always_names_device_hub_and_substatus() {
        let state = DeviceRegistrationResult {
            registration_id: "r".into(),
            created_date_time_utc: String::new(),
            assigned_hub: String::new(),
            device_id: String::new(),
            status: RegistrationStatus::Disabled,
            substatus: String::new(),
            last_updated_date_time_utc: String::new(),
            etag: String::new(),
            error_code: None,
            error_message: None,
            payload: None,
        };
        let json = serde_json::to_value(&state).unwrap();
        for field in ["deviceId", "assignedHub", "substatus", "status"] {
            assert!(json.get(field).is_some(), "{field} missing");
        }
        assert_eq!(json["status"], "disabled");
    }
}
