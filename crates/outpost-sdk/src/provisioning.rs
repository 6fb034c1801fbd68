//! Registration with a Device Provisioning Service (Azure's, or an Outpost hub's `--provisioning-bind`) over
//! MQTT, as azure-iot-device's `ProvisioningDeviceClient` does it: connect as the registration with a SAS token
//! of its key (or, for X.509 attestation, no password and the device's certificate at the TLS handshake),
//! subscribe to the answers, publish the registration, poll the operation until it ends.
//!
//! [`register_with_symmetric_key`] and [`register_with_certificate`] are the whole exchange; [`next_step`] is its
//! pure decision on each answer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_core::provisioning::{
    self, DeviceRegistration, DeviceRegistrationResult, ProvisioningRequest,
    RegistrationOperationStatus, RegistrationStatus, RESPONSE_FILTER,
};
use outpost_mqtt::packet::QoS;

/// How long one answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// The most requests one registration sends (polls and retries), so a service that says "assigning" forever
/// cannot hold the caller.
const MAX_REQUESTS: u32 = 30;
/// The wait before a poll when the service names none (the Python SDK's).
const DEFAULT_RETRY_AFTER: u32 = 2;
/// The longest wait a service may ask for between two requests.
const MAX_RETRY_AFTER: u32 = 60;

/// Why a registration did not end with an assignment.
#[derive(Debug, thiserror::Error)]
pub enum ProvisioningError {
    /// The TLS settings or the key are unusable.
    #[error("provisioning settings: {0}")]
    Configuration(String),
    /// The service could not be reached or the connection failed (try again later).
    #[error("cannot reach the provisioning service: {0}")]
    Unreachable(String),
    /// The service refused the CONNECT: the key, the registration id or the ID scope is wrong.
    #[error("the provisioning service refused the registration's credentials ({0})")]
    Unauthorized(String),
    /// The service answered the registration with a final refusal (disabled, failed, or an error status).
    #[error("the provisioning service refused the registration: {0}")]
    Refused(String),
    /// No final answer in time.
    #[error("the provisioning service gave no final answer in time")]
    Timeout,
}

/// What to do after an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Assigned: the registration state (boxed: the other steps are small).
    Done(Box<DeviceRegistrationResult>),
    /// Ask for the operation's status after this many seconds.
    Poll {
        /// The operation to ask about.
        operation_id: String,
        /// Seconds to wait.
        after: u32,
    },
    /// Send the same request again after this many seconds (the service is busy).
    Retry {
        /// Seconds to wait.
        after: u32,
    },
    /// A final refusal.
    Fail(String),
}

/// The pure decision on one answer: its status code, its retry-after and its body.
pub fn next_step(status: u16, retry_after: Option<u32>, body: &[u8]) -> Step {
    let after = retry_after
        .unwrap_or(DEFAULT_RETRY_AFTER)
        .clamp(1, MAX_RETRY_AFTER);
    if status >= 429 {
        return Step::Retry { after };
    }
    if status >= 300 {
        return Step::Fail(format!(
            "status {status}: {}",
            String::from_utf8_lossy(body)
        ));
    }
    let answer: RegistrationOperationStatus = match serde_json::from_slice(body) {
        Ok(answer) => answer,
        Err(error) => {
            return Step::Fail(format!(
                "an answer that is not an operation status: {error}"
            ))
        }
    };
    match (answer.status, answer.registration_state) {
        (RegistrationStatus::Assigning | RegistrationStatus::Unassigned, _) => Step::Poll {
            operation_id: answer.operation_id,
            after,
        },
        (RegistrationStatus::Assigned, Some(state)) => Step::Done(Box::new(state)),
        (RegistrationStatus::Assigned, None) => {
            Step::Fail("assigned without a registration state".into())
        }
        (status, state) => Step::Fail(format!(
            "status {status:?}{}",
            state
                .and_then(|s| s.error_message)
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        )),
    }
}

/// Registers `registration_id` in `id_scope` at `host:port` with a symmetric key (an individual enrollment's,
/// or the one derived from a group's), trusting `ca_pem` (or the system's CAs); returns the assignment.
pub async fn register_with_symmetric_key(
    host: &str,
    port: u16,
    ca_pem: Option<&str>,
    id_scope: &str,
    registration_id: &str,
    key: &str,
) -> Result<DeviceRegistrationResult, ProvisioningError> {
    provisioning::validate_registration_id(registration_id)
        .map_err(|e| ProvisioningError::Configuration(e.to_string()))?;
    let tls = crate::tls::client_config(ca_pem)
        .map_err(|e| ProvisioningError::Configuration(e.to_string()))?;
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        + 3600;
    let token = provisioning::registration_token(id_scope, registration_id, key, expiry)
        .map_err(|e| ProvisioningError::Configuration(format!("the key: {e}")))?;
    register(host, port, tls, id_scope, registration_id, Some(&token)).await
}

/// Registers `registration_id` in `id_scope` at `host:port` with an X.509 certificate: the chain of `chain_pem`
/// (leaf first; an individual enrollment's certificate, or one that chains to a group's CA) and its private key
/// `key_pem`, presented at the TLS handshake, trusting `ca_pem` (or the system's CAs); returns the assignment.
/// DPS wants the leaf's common name as the registration id.
pub async fn register_with_certificate(
    host: &str,
    port: u16,
    ca_pem: Option<&str>,
    id_scope: &str,
    registration_id: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<DeviceRegistrationResult, ProvisioningError> {
    provisioning::validate_registration_id(registration_id)
        .map_err(|e| ProvisioningError::Configuration(e.to_string()))?;
    let tls = crate::tls::client_config_with_certificate(ca_pem, chain_pem, key_pem)
        .map_err(|e| ProvisioningError::Configuration(e.to_string()))?;
    register(host, port, tls, id_scope, registration_id, None).await
}

/// The exchange, once connected as `registration_id` with `password` (a token) or none (a client certificate).
async fn register(
    host: &str,
    port: u16,
    tls: std::sync::Arc<rustls::ClientConfig>,
    id_scope: &str,
    registration_id: &str,
    password: Option<&str>,
) -> Result<DeviceRegistrationResult, ProvisioningError> {
    let username = provisioning::username(id_scope, registration_id);
    let mut client = outpost_mqtt::Client::connect(
        (host, port),
        host,
        tls,
        registration_id,
        Some(&username),
        password,
        60,
        true,
    )
    .await
    .map_err(|error| match error {
        outpost_mqtt::ClientError::Refused(code) => {
            ProvisioningError::Unauthorized(format!("{code:?}"))
        }
        other => ProvisioningError::Unreachable(other.to_string()),
    })?;
    let closed = |e: outpost_mqtt::ClientError| ProvisioningError::Unreachable(e.to_string());
    client
        .subscribe(RESPONSE_FILTER, QoS::AtLeastOnce)
        .await
        .map_err(closed)?;
    let body = serde_json::to_vec(&DeviceRegistration {
        registration_id: registration_id.to_owned(),
        payload: None,
    })
    .unwrap_or_default();
    let mut request = ProvisioningRequest::Register { rid: "0".into() };
    let mut result = Err(ProvisioningError::Timeout);
    for sent in 1..=MAX_REQUESTS {
        let rid = sent.to_string();
        request = match request {
            ProvisioningRequest::Register { .. } => {
                ProvisioningRequest::Register { rid: rid.clone() }
            }
            ProvisioningRequest::OperationStatus { operation_id, .. } => {
                ProvisioningRequest::OperationStatus {
                    rid: rid.clone(),
                    operation_id,
                }
            }
        };
        let payload = match request {
            ProvisioningRequest::Register { .. } => body.clone(),
            ProvisioningRequest::OperationStatus { .. } => Vec::new(),
        };
        client
            .publish(request.topic(), QoS::AtLeastOnce, payload)
            .await
            .map_err(closed)?;
        let (status, retry_after, answer) = loop {
            let publish = tokio::time::timeout(ANSWER_TIMEOUT, client.recv())
                .await
                .map_err(|_| ProvisioningError::Timeout)?
                .ok_or_else(|| ProvisioningError::Unreachable("the connection closed".into()))?;
            // Answers to older requests (ours, resent) are skipped.
            if let Some((status, answer_rid, retry_after)) =
                provisioning::parse_response_topic(&publish.topic)
            {
                if answer_rid == rid {
                    break (status, retry_after, publish.payload);
                }
            }
        };
        match next_step(status, retry_after, &answer) {
            Step::Done(state) => {
                result = Ok(*state);
                break;
            }
            Step::Fail(why) => {
                result = Err(ProvisioningError::Refused(why));
                break;
            }
            Step::Poll {
                operation_id,
                after,
            } => {
                tokio::time::sleep(Duration::from_secs(u64::from(after))).await;
                request = ProvisioningRequest::OperationStatus {
                    rid: String::new(),
                    operation_id,
                };
            }
            Step::Retry { after } => {
                tokio::time::sleep(Duration::from_secs(u64::from(after))).await;
            }
        }
    }
    client.disconnect().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(status: &str) -> serde_json::Value {
        json!({"registrationId": "r", "createdDateTimeUtc": "", "assignedHub": "hub", "deviceId": "r",
               "status": status, "substatus": "initialAssignment", "lastUpdatedDateTimeUtc": "", "etag": "e"})
    }

    #[test]
    fn assigning_is_polled_after_the_wait_the_service_asks_for() {
        let body = json!({"operationId": "op", "status": "assigning"}).to_string();
        assert_eq!(
            next_step(202, Some(3), body.as_bytes()),
            Step::Poll {
                operation_id: "op".into(),
                after: 3
            }
        );
        assert_eq!(
            next_step(202, Some(100_000), body.as_bytes()),
            Step::Poll {
                operation_id: "op".into(),
                after: MAX_RETRY_AFTER
            }
        );
    }

    #[test]
    fn an_assignment_ends_with_its_state() {
        let body = json!({"operationId": "op", "status": "assigned", "registrationState": state("assigned")});
        let Step::Done(state) = next_step(200, None, body.to_string().as_bytes()) else {
            panic!()
        };
        assert_eq!(
            (state.assigned_hub.as_str(), state.device_id.as_str()),
            ("hub", "r")
        );
    }

    #[test]
    fn refusals_end_and_throttling_retries() {
        let disabled = json!({"operationId": "op", "status": "disabled", "registrationState": state("disabled")});
        assert!(matches!(
            next_step(200, None, disabled.to_string().as_bytes()),
            Step::Fail(_)
        ));
        assert!(matches!(next_step(401, None, b"{}"), Step::Fail(_)));
        assert!(matches!(next_step(200, None, b"not json"), Step::Fail(_)));
        assert_eq!(next_step(429, Some(5), b""), Step::Retry { after: 5 });
        assert_eq!(
            next_step(503, None, b""),
            Step::Retry {
                after: DEFAULT_RETRY_AFTER
            }
        );
    }
}
