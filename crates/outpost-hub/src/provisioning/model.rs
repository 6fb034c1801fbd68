//! Enrollments and registration records, in the JSON shape of DPS's service API (`IndividualEnrollment`,
//! `EnrollmentGroup`, `DeviceRegistrationState`), which is also how they are stored.

use chrono::{DateTime, Utc};
use outpost_core::provisioning::{validate_registration_id, RegistrationStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::HubError;
use crate::identity::validate_key;

/// How a device proves it belongs to an enrollment. Only symmetric keys register today; an X.509 enrollment
/// is stored as given and refused at registration until X.509 attestation exists (see
/// [`super::attest::attest`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Attestation {
    /// A key pair: an individual device signs with one of them; a group member with the key derived from one
    /// of the group's and its registration id.
    #[serde(rename = "symmetricKey")]
    SymmetricKey {
        /// The keys.
        #[serde(rename = "symmetricKey")]
        symmetric_key: SymmetricKeys,
    },
    /// Certificates: an individual device's own, or the CA (signing certificate) a group member's chains to.
    #[serde(rename = "x509")]
    X509 {
        /// The certificates.
        x509: X509Attestation,
    },
}

/// The two keys of a symmetric-key attestation (base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeys {
    /// The primary key.
    pub primary_key: String,
    /// The secondary key.
    pub secondary_key: String,
}

/// The certificates of an X.509 attestation, as DPS's service API names them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Attestation {
    /// An individual enrollment's device certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificates: Option<X509Certificates>,
    /// A group's CA (or intermediate) certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_certificates: Option<X509Certificates>,
}

/// A primary and an optional secondary certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct X509Certificates {
    /// The primary certificate.
    pub primary: X509Certificate,
    /// The secondary certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<X509Certificate>,
}

/// One certificate (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct X509Certificate {
    /// The PEM text.
    pub certificate: String,
}

/// `enabled` or `disabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProvisioningStatus {
    /// Devices may register.
    #[default]
    Enabled,
    /// Registrations are refused with the status `disabled`.
    Disabled,
}

/// What a device registering again gets. With one hub there is no other hub to move to: `updateHubAssignment`
/// is kept for the API's sake, `migrateDeviceData` decides whether the twin is kept (`deviceDataMigrated`) or
/// set back to the initial twin (`deviceDataReset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReprovisionPolicy {
    /// Whether a registering device may be assigned again.
    pub update_hub_assignment: bool,
    /// Whether its twin is kept when it registers again.
    pub migrate_device_data: bool,
}

impl Default for ReprovisionPolicy {
    fn default() -> Self {
        Self {
            update_hub_assignment: true,
            migrate_device_data: true,
        }
    }
}

/// `capabilities`: whether the device is an IoT Edge device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Created as an edge device (with `$edgeAgent` and `$edgeHub`).
    pub iot_edge: bool,
}

/// The twin a device gets when it is first assigned: tags and desired properties.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InitialTwin {
    /// Tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Value>,
    /// `{"desired": {...}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<InitialTwinProperties>,
}

/// The properties section of an initial twin.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InitialTwinProperties {
    /// Desired properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Value>,
}

impl InitialTwin {
    /// The desired properties, if any.
    pub fn desired(&self) -> Option<&Value> {
        self.properties.as_ref().and_then(|p| p.desired.as_ref())
    }
}

/// What individual enrollments and groups share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentSettings {
    /// How devices prove membership.
    pub attestation: Attestation,
    /// Edge or not.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Tags and desired properties given at first assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<InitialTwin>,
    /// Enabled or disabled.
    #[serde(default)]
    pub provisioning_status: ProvisioningStatus,
    /// What registering again does.
    #[serde(default)]
    pub reprovision_policy: ReprovisionPolicy,
    /// Set by the hub.
    #[serde(default = "Utc::now")]
    pub created_date_time_utc: DateTime<Utc>,
    /// Set by the hub.
    #[serde(default = "Utc::now")]
    pub last_updated_date_time_utc: DateTime<Utc>,
    /// Set by the hub: changes with every write.
    #[serde(default)]
    pub etag: String,
}

/// One device's enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndividualEnrollment {
    /// The registration id the device connects with.
    pub registration_id: String,
    /// The device id in the hub (the registration id when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The rest.
    #[serde(flatten)]
    pub settings: EnrollmentSettings,
}

/// An enrollment any number of devices join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentGroup {
    /// The group's id.
    pub enrollment_group_id: String,
    /// The rest.
    #[serde(flatten)]
    pub settings: EnrollmentSettings,
}

/// Which enrollment a registration belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "id")]
pub enum EnrollmentRef {
    /// The individual enrollment of the registration id.
    Individual,
    /// The group of this id.
    Group(String),
}

/// The two kinds of enrollment, as the storage keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollmentKind {
    /// `/enrollments/{registrationId}`.
    Individual,
    /// `/enrollmentGroups/{id}`.
    Group,
}

impl EnrollmentKind {
    /// The storage's name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Individual => "individual",
            Self::Group => "group",
        }
    }
}

/// What a registration left: the state DPS's service API shows at `/registrations/{id}`, and the operation a
/// device polls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationRecord {
    /// The registration id.
    pub registration_id: String,
    /// The group, when the device registered through one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
    /// The device it made (empty when refused before any).
    pub device_id: String,
    /// The hub (this one's host name; empty when refused).
    pub assigned_hub: String,
    /// `assigned`, `disabled` or `failed`.
    pub status: RegistrationStatus,
    /// `initialAssignment`, `deviceDataMigrated`, `deviceDataReset` (empty when refused).
    pub substatus: String,
    /// DPS's error code of a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// First registration.
    pub created_date_time_utc: DateTime<Utc>,
    /// Last registration.
    pub last_updated_date_time_utc: DateTime<Utc>,
    /// Changes with every registration.
    pub etag: String,
    /// The operation the last registration request started (what its status requests name).
    pub operation_id: String,
}

/// The most enrollment groups a hub keeps: a group member's token is checked against every symmetric-key
/// group's derived keys, so their number bounds the work of one CONNECT.
pub const MAX_ENROLLMENT_GROUPS: usize = 1_000;

/// The largest initial twin (tags plus desired, as JSON), IoT Hub's 32 KB per section twice.
const MAX_INITIAL_TWIN_BYTES: usize = 64 * 1024;

/// Checks what every enrollment needs: keys that are base64 of 16 to 64 bytes, certificates that look like PEM,
/// an initial twin of objects within IoT Hub's limits.
pub fn validate_settings(settings: &EnrollmentSettings) -> Result<(), HubError> {
    match &settings.attestation {
        Attestation::SymmetricKey { symmetric_key } => {
            for key in [&symmetric_key.primary_key, &symmetric_key.secondary_key] {
                validate_key(key).map_err(HubError::ArgumentInvalid)?;
            }
        }
        Attestation::X509 { x509 } => {
            let certificates = [&x509.client_certificates, &x509.signing_certificates];
            let mut present = certificates.iter().filter_map(|c| c.as_ref()).peekable();
            if present.peek().is_none() {
                return Err(HubError::ArgumentInvalid(
                    "an x509 attestation needs clientCertificates or signingCertificates".into(),
                ));
            }
            for pair in present {
                for certificate in std::iter::once(&pair.primary).chain(&pair.secondary) {
                    if !certificate
                        .certificate
                        .contains("-----BEGIN CERTIFICATE-----")
                    {
                        return Err(HubError::ArgumentInvalid(
                            "an x509 certificate must be PEM (-----BEGIN CERTIFICATE-----)".into(),
                        ));
                    }
                }
            }
        }
    }
    if let Some(twin) = &settings.initial_twin {
        for (name, section) in [("tags", twin.tags.as_ref()), ("desired", twin.desired())] {
            if section.is_some_and(|s| !s.is_object()) {
                return Err(HubError::ArgumentInvalid(format!(
                    "initialTwin {name} must be a JSON object"
                )));
            }
        }
        if serde_json::to_vec(twin).map_or(0, |b| b.len()) > MAX_INITIAL_TWIN_BYTES {
            return Err(HubError::TooLarge(format!(
                "the initial twin is larger than {MAX_INITIAL_TWIN_BYTES} bytes"
            )));
        }
    }
    Ok(())
}

/// Reads and checks an individual enrollment's body for `registration_id` (the path's).
pub fn individual_from_body(
    registration_id: &str,
    body: &Value,
) -> Result<IndividualEnrollment, HubError> {
    validate_registration_id(registration_id)
        .map_err(|e| HubError::ArgumentInvalid(e.to_string()))?;
    let enrollment: IndividualEnrollment = serde_json::from_value(body.clone())
        .map_err(|e| HubError::ArgumentInvalid(format!("invalid individual enrollment: {e}")))?;
    if enrollment.registration_id != registration_id {
        return Err(HubError::ArgumentInvalid(format!(
            "registrationId {:?} in the body differs from {registration_id:?} in the path",
            enrollment.registration_id
        )));
    }
    if let Some(device) = &enrollment.device_id {
        crate::registry::device_id(device)?;
    }
    validate_settings(&enrollment.settings)?;
    Ok(enrollment)
}

/// Reads and checks an enrollment group's body for `id` (the path's).
pub fn group_from_body(id: &str, body: &Value) -> Result<EnrollmentGroup, HubError> {
    validate_registration_id(id).map_err(|e| HubError::ArgumentInvalid(e.to_string()))?;
    let group: EnrollmentGroup = serde_json::from_value(body.clone())
        .map_err(|e| HubError::ArgumentInvalid(format!("invalid enrollment group: {e}")))?;
    if group.enrollment_group_id != id {
        return Err(HubError::ArgumentInvalid(format!(
            "enrollmentGroupId {:?} in the body differs from {id:?} in the path",
            group.enrollment_group_id
        )));
    }
    validate_settings(&group.settings)?;
    Ok(group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str = "aGVsbG8gd29ybGQgZ3JvdXAga2V5IDEyMzQ1Njc4OTA=";

    fn body() -> Value {
        json!({
            "registrationId": "dev-1",
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY}},
            "capabilities": {"iotEdge": true},
            "initialTwin": {"tags": {"site": "a"}, "properties": {"desired": {"rate": 5}}},
        })
    }

    #[test]
    fn an_individual_enrollment_reads_dps_json_with_defaults() {
        let enrollment = individual_from_body("dev-1", &body()).unwrap();
        assert!(enrollment.settings.capabilities.iot_edge);
        assert_eq!(
            enrollment.settings.provisioning_status,
            ProvisioningStatus::Enabled
        );
        assert!(enrollment.settings.reprovision_policy.migrate_device_data);
        assert_eq!(
            enrollment.settings.initial_twin.as_ref().unwrap().desired(),
            Some(&json!({"rate": 5}))
        );
        let back = serde_json::to_value(&enrollment).unwrap();
        assert_eq!(back["attestation"]["type"], "symmetricKey");
        assert_eq!(back["provisioningStatus"], "enabled");
    }

    #[test]
    fn bad_enrollments_are_refused() {
        let mut wrong_id = body();
        wrong_id["registrationId"] = json!("dev-2");
        let mut bad_key = body();
        bad_key["attestation"]["symmetricKey"]["primaryKey"] = json!("not base64!");
        let mut tags_not_object = body();
        tags_not_object["initialTwin"]["tags"] = json!([1]);
        let mut unknown_type = body();
        unknown_type["attestation"]["type"] = json!("tpm");
        let mut x509_not_pem = body();
        x509_not_pem["attestation"] = json!({"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": "abc"}}}});
        for bad in [
            wrong_id,
            bad_key,
            tags_not_object,
            unknown_type,
            x509_not_pem,
        ] {
            assert!(individual_from_body("dev-1", &bad).is_err(), "{bad}");
        }
        assert!(individual_from_body("Dev 1", &body()).is_err());
    }

    #[test]
    fn an_x509_group_is_stored_as_given() {
        let group = group_from_body(
            "g",
            &json!({"enrollmentGroupId": "g", "attestation": {"type": "x509", "x509": {"signingCertificates": {
                "primary": {"certificate": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}}}}}),
        )
        .unwrap();
        assert!(matches!(
            group.settings.attestation,
            Attestation::X509 { .. }
        ));
    }
}
