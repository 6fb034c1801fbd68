//! Identities in the registry: devices, modules and shared access policies, as the hub keeps them.
//!
//! These are domain records; their JSON form on the REST API lives in `rest::wire`.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use outpost_core::{DeviceId, ModuleId};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};

/// Whether an identity may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityStatus {
    /// It may connect.
    Enabled,
    /// Connections are refused.
    Disabled,
}

/// How an identity authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AuthenticationType {
    /// Shared access signatures made from symmetric keys.
    Sas,
    /// X.509, self-signed thumbprints.
    SelfSigned,
    /// X.509, signed by a registered CA.
    CertificateAuthority,
    /// No credentials (for modules that authenticate through their edge device).
    None,
}

/// An identity's credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// How the identity authenticates.
    pub kind: AuthenticationType,
    /// Base64 symmetric primary key (empty unless SAS).
    pub primary_key: String,
    /// Base64 symmetric secondary key (empty unless SAS).
    pub secondary_key: String,
    /// X.509 primary thumbprint.
    pub primary_thumbprint: Option<String>,
    /// X.509 secondary thumbprint.
    pub secondary_thumbprint: Option<String>,
}

impl Credentials {
    /// SAS credentials with the given keys, generating any that are missing or empty.
    pub fn sas(primary: Option<&str>, secondary: Option<&str>) -> Self {
        let pick = |key: Option<&str>| {
            key.filter(|k| !k.is_empty())
                .map_or_else(generate_key, str::to_owned)
        };
        Self {
            kind: AuthenticationType::Sas,
            primary_key: pick(primary),
            secondary_key: pick(secondary),
            primary_thumbprint: None,
            secondary_thumbprint: None,
        }
    }

    /// X.509 credentials: thumbprints for `SelfSigned` (checked by the caller with
    /// `outpost_pki::client_auth::parse_thumbprint`), none for `CertificateAuthority`. No symmetric keys.
    pub fn x509(
        kind: AuthenticationType,
        primary_thumbprint: Option<String>,
        secondary_thumbprint: Option<String>,
    ) -> Self {
        Self {
            kind,
            primary_key: String::new(),
            secondary_key: String::new(),
            primary_thumbprint,
            secondary_thumbprint,
        }
    }

    /// The thumbprints a self-signed client certificate may have (none unless `SelfSigned`).
    pub fn thumbprints(&self) -> Vec<&str> {
        if self.kind != AuthenticationType::SelfSigned {
            return Vec::new();
        }
        [&self.primary_thumbprint, &self.secondary_thumbprint]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// The keys a SAS token may be signed with.
    pub fn keys(&self) -> Vec<&str> {
        if self.kind != AuthenticationType::Sas {
            return Vec::new();
        }
        [self.primary_key.as_str(), self.secondary_key.as_str()]
            .into_iter()
            .filter(|k| !k.is_empty())
            .collect()
    }
}

/// Checks that a key given by a caller is base64 of 16 to 64 bytes, as IoT Hub requires.
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Ok(());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| "the symmetric key is not valid base64".to_owned())?;
    if !(16..=64).contains(&bytes.len()) {
        return Err(format!(
            "the symmetric key must be 16 to 64 bytes, not {}",
            bytes.len()
        ));
    }
    Ok(())
}

/// A fresh random 32-byte key, base64.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A fresh generation id: digits, like IoT Hub's, distinguishing a re-created identity from the deleted one.
pub fn generate_generation_id() -> String {
    let ticks = Utc::now().timestamp_micros().unsigned_abs() * 10;
    format!("{ticks:018}")
}

/// The etag of an identity: base64 of its change counter written in decimal (`"MQ=="` for 1).
pub fn identity_etag(counter: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(counter.to_string())
}

/// A device in the registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Its id.
    pub device_id: DeviceId,
    /// Distinguishes this identity from an earlier one of the same id.
    pub generation_id: String,
    /// Bumped on every change; the etag is made from it.
    pub etag_counter: u64,
    /// Enabled or disabled.
    pub status: IdentityStatus,
    /// Why it has that status.
    pub status_reason: Option<String>,
    /// When the status last changed.
    pub status_updated: DateTime<Utc>,
    /// Its credentials.
    pub credentials: Credentials,
    /// Whether it is an edge device.
    pub iot_edge: bool,
    /// For an edge device its own scope; for a child device, its parent's scope.
    pub device_scope: Option<String>,
    /// The scopes of the parents of a child device (at most one).
    pub parent_scopes: Vec<String>,
}

impl DeviceRecord {
    /// The scope an edge device hands to the devices behind it (`ms-azure-iot-edge://{id}-{generationId}`).
    pub fn edge_scope(&self) -> String {
        format!(
            "ms-azure-iot-edge://{}-{}",
            self.device_id, self.generation_id
        )
    }
}

/// A module identity in the registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleRecord {
    /// The device it belongs to.
    pub device_id: DeviceId,
    /// Its name.
    pub module_id: ModuleId,
    /// Distinguishes this identity from an earlier one of the same name.
    pub generation_id: String,
    /// Bumped on every change.
    pub etag_counter: u64,
    /// Who manages it (`IotEdge` for modules created by an edge runtime).
    pub managed_by: Option<String>,
    /// Its credentials.
    pub credentials: Credentials,
}

/// A right that a shared access policy grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Right {
    /// Read the registry.
    RegistryRead,
    /// Write the registry (implies read).
    RegistryWrite,
    /// Service operations: twins, methods, C2D, the event stream, deployments.
    ServiceConnect,
    /// Connect on behalf of devices.
    DeviceConnect,
}

/// A shared access policy of the hub.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessPolicy {
    /// Its name (`skn` in tokens).
    pub name: String,
    /// Base64 primary key.
    pub primary_key: String,
    /// Base64 secondary key.
    pub secondary_key: String,
    /// What it grants.
    pub rights: Vec<Right>,
}

impl AccessPolicy {
    /// Whether the policy grants `right` (`RegistryWrite` implies `RegistryRead`).
    pub fn grants(&self, right: Right) -> bool {
        self.rights.contains(&right)
            || (right == Right::RegistryRead && self.rights.contains(&Right::RegistryWrite))
    }

    /// The policies a new hub starts with, as IoT Hub creates them.
    pub fn defaults() -> Vec<Self> {
        use Right::{DeviceConnect, RegistryRead, RegistryWrite, ServiceConnect};
        let policy = |name: &str, rights: &[Right]| Self {
            name: name.to_owned(),
            primary_key: generate_key(),
            secondary_key: generate_key(),
            rights: rights.to_vec(),
        };
        vec![
            policy(
                "iothubowner",
                &[RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect],
            ),
            policy("service", &[ServiceConnect]),
            policy("device", &[DeviceConnect]),
            policy("registryRead", &[RegistryRead]),
            policy("registryReadWrite", &[RegistryWrite]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_keys_are_generated_and_given_keys_are_kept() {
        let given = generate_key();
        let credentials = Credentials::sas(Some(""), Some(&given));
        assert_eq!(credentials.secondary_key, given);
        assert!(validate_key(&credentials.primary_key).is_ok());
        assert_ne!(credentials.primary_key, given);
    }

    #[test]
    fn keys_that_are_not_base64_or_too_short_are_refused() {
        assert!(validate_key("not base64!").is_err());
        assert!(validate_key("YWJj").is_err());
        assert!(validate_key(&generate_key()).is_ok());
    }

    #[test]
    fn identity_etags_look_like_iot_hubs() {
        assert_eq!(identity_etag(1), "MQ==");
    }

    #[test]
    fn registry_write_implies_registry_read() {
        let policies = AccessPolicy::defaults();
        let read_write = policies
            .iter()
            .find(|p| p.name == "registryReadWrite")
            .unwrap();
        assert!(read_write.grants(Right::RegistryRead));
        assert!(!read_write.grants(Right::ServiceConnect));
    }
}
