//! The edge device provisions itself (`[provisioning] source = "dps"`): on first start it registers with the
//! provisioning service ([`outpost_sdk::provisioning`]) with its symmetric key or its X.509 certificate, keeps
//! what it was assigned in `{data_dir}/provisioning.json` (its user's only: it may hold the key; for a
//! certificate it holds the files' paths, never the private key) and connects to the assigned hub; later starts
//! read that file and need no provisioning service, so they work offline. Settings that name another scope,
//! registration, key or certificate register again.
//!
//! A device provisioned with a certificate authenticates to the hub with it (the connection string it is given
//! says `x509=true`); a missing or wrong certificate or key file stops the start with an error naming the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{AttestationConfig, CertificateFiles, EdgeConfig, ProvisioningConfig};
use crate::device_certificate::{DeviceCertificate, DeviceCertificateError};
use outpost_sdk::provisioning::{
    register_with_certificate, register_with_symmetric_key, ProvisioningError,
};

/// The file the assignment is kept in.
const PROVISIONED_FILE: &str = "provisioning.json";
/// The longest wait between two attempts while the provisioning service cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_mins(1);

/// Why the device could not get an identity.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The service refused (a wrong key, an untrusted certificate, a disabled enrollment...): trying again would
    /// not help.
    #[error("registration {registration_id}: {source}")]
    Refused {
        /// The registration id.
        registration_id: String,
        /// The refusal.
        source: ProvisioningError,
    },
    /// The device's certificate or key (`method = "x509"`) cannot be used.
    #[error(transparent)]
    Certificate(#[from] DeviceCertificateError),
    /// The assignment cannot be stored or read.
    #[error("cannot keep the assignment in {path}: {source}")]
    Store {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What the device was assigned, as kept in the data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provisioned {
    /// The ID scope it registered in.
    pub id_scope: String,
    /// Its registration id.
    pub registration_id: String,
    /// The hub it was assigned to.
    pub assigned_hub: String,
    /// Its device id there.
    pub device_id: String,
    /// What it registered with, which is how it authenticates to the hub.
    #[serde(flatten)]
    pub credentials: ProvisionedCredentials,
}

/// What the device registered with, as kept in `provisioning.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProvisionedCredentials {
    /// Its symmetric key, which is its device key in the hub.
    Key {
        /// The base64 key.
        key: String,
    },
    /// Its certificate: the files (`identityCert`, `identityPk`) and the leaf's SHA-256 thumbprint when it
    /// registered (the hub's device holds that thumbprint: another certificate registers again).
    Certificate {
        /// The files.
        #[serde(flatten)]
        files: CertificateFiles,
        /// The leaf's SHA-256 thumbprint.
        thumbprint: String,
    },
}

/// How the settings attest: a key, or a certificate read and checked.
enum Attesting<'a> {
    Key {
        registration_id: &'a str,
        key: &'a str,
    },
    Certificate {
        registration_id: String,
        certificate: Box<DeviceCertificate>,
    },
}

impl<'a> Attesting<'a> {
    /// Reads what `settings` attest with (the certificate and key files, for X.509).
    fn of(settings: &'a ProvisioningConfig) -> Result<Self, DeviceCertificateError> {
        Ok(match &settings.attestation {
            AttestationConfig::SymmetricKey(attestation) => Self::Key {
                registration_id: &attestation.registration_id,
                key: attestation.symmetric_key.key(),
            },
            AttestationConfig::X509(attestation) => {
                let certificate =
                    DeviceCertificate::load(&attestation.files(), outpost_pki::unix_now())?;
                Self::Certificate {
                    registration_id: attestation
                        .registration_id
                        .clone()
                        .unwrap_or_else(|| certificate.common_name.clone()),
                    certificate: Box::new(certificate),
                }
            }
        })
    }

    fn registration_id(&self) -> &str {
        match self {
            Self::Key {
                registration_id, ..
            } => registration_id,
            Self::Certificate {
                registration_id, ..
            } => registration_id,
        }
    }

    /// What `provisioning.json` keeps of it.
    fn credentials(&self) -> ProvisionedCredentials {
        match self {
            Self::Key { key, .. } => ProvisionedCredentials::Key {
                key: (*key).to_owned(),
            },
            Self::Certificate { certificate, .. } => ProvisionedCredentials::Certificate {
                files: certificate.files.clone(),
                thumbprint: certificate.thumbprint.clone(),
            },
        }
    }
}

impl Provisioned {
    /// Whether this assignment was made in `id_scope` with what `attesting` holds.
    fn made_with(&self, id_scope: &str, attesting: &Attesting<'_>) -> bool {
        self.id_scope == id_scope
            && self.registration_id == attesting.registration_id()
            && self.credentials == attesting.credentials()
    }

    /// The device connection string of the assignment (`x509=true` for a certificate, whose files the
    /// settings name).
    pub fn connection_string(&self) -> String {
        match &self.credentials {
            ProvisionedCredentials::Key { key } => {
                outpost_core::ConnectionString::device(&self.assigned_hub, &self.device_id, key)
            }
            ProvisionedCredentials::Certificate { .. } => outpost_core::ConnectionString {
                host_name: self.assigned_hub.clone(),
                device_id: Some(self.device_id.clone()),
                x509: true,
                ..outpost_core::ConnectionString::default()
            },
        }
        .to_string()
    }
}

fn provisioned_path(config: &EdgeConfig) -> PathBuf {
    config.data_dir.join(PROVISIONED_FILE)
}

/// The assignment kept from an earlier start, if any.
pub fn stored(config: &EdgeConfig) -> Option<Provisioned> {
    let text = std::fs::read(provisioned_path(config)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn store(path: &Path, provisioned: &Provisioned) -> Result<(), ProvisionError> {
    let failed = |source| ProvisionError::Store {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        outpost_store::host::private_dir(dir).map_err(failed)?;
    }
    let bytes = serde_json::to_vec_pretty(provisioned).unwrap_or_default();
    outpost_store::host::write_atomically(path, &bytes, 0o600).map_err(failed)
}

/// `config` with the connection string of the assignment stored by an earlier start, when it provisions itself
/// and has one (what `outpost edge check` looks at without registering).
pub fn with_stored_assignment(mut config: EdgeConfig) -> EdgeConfig {
    if config.connection_string.is_none() {
        if let Some(settings) = &config.provisioning {
            let kept = Attesting::of(settings).ok().and_then(|attesting| {
                stored(&config).filter(|kept| kept.made_with(&settings.id_scope, &attesting))
            });
            if let Some(kept) = kept {
                config.connection_string = Some(kept.connection_string());
            }
        }
    }
    config
}

/// Gives `config` its connection string: as written, from the stored assignment, or by registering (retried
/// with back-off while the service cannot be reached; a refusal is an error at once).
pub async fn provision(mut config: EdgeConfig) -> Result<EdgeConfig, ProvisionError> {
    let Some(settings) = config.provisioning.clone() else {
        return Ok(config);
    };
    if config.connection_string.is_some() {
        return Ok(config);
    }
    let attesting = Attesting::of(&settings)?;
    if let Some(kept) =
        stored(&config).filter(|kept| kept.made_with(&settings.id_scope, &attesting))
    {
        tracing::info!(hub = %kept.assigned_hub, device = %kept.device_id, "provisioned earlier; using the stored assignment");
        config.connection_string = Some(kept.connection_string());
        return Ok(config);
    }
    let ca_pem = std::fs::read_to_string(&config.hub_ca).ok();
    let registration_id = attesting.registration_id().to_owned();
    let mut backoff = Duration::from_secs(1);
    let state = loop {
        let attempt = match &attesting {
            Attesting::Key { key, .. } => {
                register_with_symmetric_key(
                    settings.host(),
                    settings.mqtt_port,
                    ca_pem.as_deref(),
                    &settings.id_scope,
                    &registration_id,
                    key,
                )
                .await
            }
            Attesting::Certificate { certificate, .. } => {
                register_with_certificate(
                    settings.host(),
                    settings.mqtt_port,
                    ca_pem.as_deref(),
                    &settings.id_scope,
                    &registration_id,
                    &certificate.chain_pem,
                    &certificate.key_pem,
                )
                .await
            }
        };
        match attempt {
            Ok(state) => break state,
            Err(error @ (ProvisioningError::Unreachable(_) | ProvisioningError::Timeout)) => {
                tracing::warn!(%error, retry_in = ?backoff, "cannot provision yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(source) => {
                return Err(ProvisionError::Refused {
                    registration_id,
                    source,
                })
            }
        }
    };
    let provisioned = Provisioned {
        id_scope: settings.id_scope.clone(),
        registration_id,
        assigned_hub: state.assigned_hub,
        device_id: state.device_id,
        credentials: attesting.credentials(),
    };
    store(&provisioned_path(&config), &provisioned)?;
    tracing::info!(hub = %provisioned.assigned_hub, device = %provisioned.device_id, substatus = %state.substatus, "provisioned");
    config.connection_string = Some(provisioned.connection_string());
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provisioned(credentials: ProvisionedCredentials) -> Provisioned {
        Provisioned {
            id_scope: "0ne00000001".into(),
            registration_id: "gw-1".into(),
            assigned_hub: "hub.local".into(),
            device_id: "gw-1".into(),
            credentials,
        }
    }

    #[test]
    fn a_stored_key_assignment_reads_as_before_and_gives_a_key_connection_string() {
        // provisioning.json as symmetric-key devices have written it all along.
        let kept: Provisioned = serde_json::from_str(
            r#"{"idScope": "0ne00000001", "registrationId": "gw-1", "assignedHub": "hub.local",
                "deviceId": "gw-1", "key": "a2tra2s="}"#,
        )
        .unwrap();
        assert_eq!(
            kept,
            provisioned(ProvisionedCredentials::Key {
                key: "a2tra2s=".into()
            })
        );
        assert_eq!(
            kept.connection_string(),
            "HostName=hub.local;DeviceId=gw-1;SharedAccessKey=a2tra2s="
        );
    }

    #[test]
    fn a_certificate_assignment_keeps_the_files_not_the_key_and_connects_with_x509() {
        let kept = provisioned(ProvisionedCredentials::Certificate {
            files: CertificateFiles {
                cert: "/secrets/gw-1.pem".into(),
                key: "/secrets/gw-1.key.pem".into(),
            },
            thumbprint: "AB".repeat(32),
        });
        let text = serde_json::to_string(&kept).unwrap();
        assert!(
            text.contains(r#""identityCert":"/secrets/gw-1.pem""#),
            "{text}"
        );
        assert!(!text.contains(r#""key""#), "{text}");
        assert_eq!(serde_json::from_str::<Provisioned>(&text).unwrap(), kept);
        let connection: outpost_core::ConnectionString = kept.connection_string().parse().unwrap();
        assert!(connection.x509 && connection.shared_access_key.is_none());
        assert_eq!(connection.device_id.as_deref(), Some("gw-1"));
    }

    #[test]
    fn an_assignment_is_reused_only_with_the_settings_it_was_made_with() {
        let kept = provisioned(ProvisionedCredentials::Key {
            key: "a2tra2s=".into(),
        });
        let same = Attesting::Key {
            registration_id: "gw-1",
            key: "a2tra2s=",
        };
        assert!(kept.made_with("0ne00000001", &same));
        assert!(!kept.made_with("0ne00000002", &same));
        let other_key = Attesting::Key {
            registration_id: "gw-1",
            key: "b3RoZXI=",
        };
        assert!(!kept.made_with("0ne00000001", &other_key));
    }

    #[test]
    fn a_certificate_assignment_is_made_again_for_another_certificate_in_the_same_files() {
        let files = CertificateFiles {
            cert: "/secrets/gw-1.pem".into(),
            key: "/secrets/gw-1.key.pem".into(),
        };
        let attesting = |thumbprint: &str| Attesting::Certificate {
            registration_id: "gw-1".into(),
            certificate: Box::new(DeviceCertificate {
                files: files.clone(),
                chain_pem: String::new(),
                key_pem: String::new(),
                common_name: "gw-1".into(),
                thumbprint: thumbprint.into(),
                not_after: i64::MAX,
            }),
        };
        let kept = provisioned(attesting("AA").credentials());
        assert!(kept.made_with("0ne00000001", &attesting("AA")));
        assert!(
            !kept.made_with("0ne00000001", &attesting("BB")),
            "a renewed certificate registers again (the hub's device holds the old thumbprint)"
        );
        let with_key = provisioned(ProvisionedCredentials::Key {
            key: "a2tra2s=".into(),
        });
        assert!(!with_key.made_with("0ne00000001", &attesting("AA")));
    }
}
