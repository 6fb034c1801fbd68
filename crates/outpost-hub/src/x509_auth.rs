//! X.509 authentication of devices and modules at the hub: the CA certificates the hub holds (`outpost hub ca`),
//! and the check of a client certificate chain against the identity a CONNECT names.
//!
//! The chain checks themselves are `outpost_pki::client_auth` (pure, shared with whatever else authenticates
//! certificates); this module reads what they need from storage in one consistent view at each CONNECT, so that
//! disabling a device, changing its thumbprints or removing a CA takes effect at the next connection of any
//! replica, with no cache to invalidate. What closes the live connections of a disabled device is the
//! registry's usual disconnect.

use chrono::{DateTime, Utc};
use outpost_core::Identity;
use outpost_pki::client_auth::{self, CaCertificate, CaCertificateError};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::error::HubError;
use crate::identity::AuthenticationType;
use crate::storage::Tables;
use crate::Hub;

/// Most CA certificates a hub holds (IoT Hub's limit is 25 per hub).
pub const MAX_CA_CERTIFICATES: usize = 25;

/// A CA certificate the hub holds, as stored (table `ca_certificates`, by name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaRecord {
    /// Its name, unique in the hub.
    pub name: String,
    /// The certificate, PEM.
    pub pem: String,
    /// Its subject (`CN=..., O=...`).
    pub subject: String,
    /// Its SHA-1 thumbprint (upper-case hex).
    pub thumbprint: String,
    /// Its SHA-256 thumbprint (upper-case hex).
    pub thumbprint_sha256: String,
    /// The end of its validity.
    pub expiry: DateTime<Utc>,
    /// When it was added.
    pub added: DateTime<Utc>,
}

/// Why a CA certificate cannot be added.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The name breaks the rule (letters, digits, `-`, `_`, `.`; 1 to 64).
    #[error("{0:?} is not a CA certificate name: letters, digits, '-', '_' and '.', at most 64")]
    Name(String),
    /// The certificate is refused.
    #[error(transparent)]
    Certificate(#[from] CaCertificateError),
    /// A CA certificate of that name exists.
    #[error("a CA certificate named {0} exists already")]
    Exists(String),
    /// The hub holds [`MAX_CA_CERTIFICATES`] already.
    #[error("a hub holds at most {MAX_CA_CERTIFICATES} CA certificates")]
    Full,
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] crate::store::StorageError),
}

impl CaRecord {
    /// Checks `pem` (exactly one certificate, a CA, valid at `now`) and `name`, and makes the record to store.
    pub fn new(name: &str, pem: &str, now: DateTime<Utc>) -> Result<Self, CaError> {
        let name_ok = (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(CaError::Name(name.to_owned()));
        }
        let ca = CaCertificate::from_pem(pem, now.timestamp())?;
        Ok(Self {
            name: name.to_owned(),
            pem: ca.pem(),
            subject: ca.subject,
            thumbprint: ca.thumbprints.sha1,
            thumbprint_sha256: ca.thumbprints.sha256,
            expiry: DateTime::from_timestamp(ca.not_after, 0).unwrap_or(DateTime::<Utc>::MAX_UTC),
            added: now,
        })
    }

    /// The certificate, DER (`None` if the stored PEM no longer reads, which [`CaRecord::new`] rules out).
    pub fn der(&self) -> Option<CertificateDer<'static>> {
        rustls_pemfile::certs(&mut self.pem.as_bytes()).next()?.ok()
    }
}

/// Adds a CA certificate in `tables` (one transaction of the caller's): refused when the name exists or the hub
/// holds [`MAX_CA_CERTIFICATES`].
pub fn add_ca(tables: &mut dyn Tables, record: &CaRecord) -> Result<(), CaError> {
    if tables.ca_certificates()?.len() >= MAX_CA_CERTIFICATES {
        return Err(CaError::Full);
    }
    if !tables.add_ca_certificate(record)? {
        return Err(CaError::Exists(record.name.clone()));
    }
    Ok(())
}

impl Hub {
    /// Checks the client certificate chain (leaf first) a device or module presented at the TLS handshake of a
    /// CONNECT without a password: the identity exists, its device is enabled, and by the identity's
    /// authentication type the leaf has one of its thumbprints (`selfSigned`) or the chain verifies to a CA
    /// certificate the hub holds with the device id as the leaf's common name (`certificateAuthority`, modules
    /// included). An identity with SAS keys cannot connect with a certificate.
    pub async fn authenticate_certificate(
        &self,
        identity: &Identity,
        chain: &[CertificateDer<'static>],
    ) -> Result<(), HubError> {
        let unauthorized = |why: &str| HubError::Unauthorized(format!("{identity}: {why}"));
        let read = identity.clone();
        let (credentials, cas) = self
            .storage
            .read(move |tables| {
                let credentials = crate::auth::identity_credentials(tables, &read)?;
                Ok::<_, HubError>((credentials, tables.ca_certificates()?))
            })
            .await?;
        let credentials = credentials?;
        let now = Utc::now().timestamp();
        let checked = match credentials.kind {
            AuthenticationType::SelfSigned => {
                client_auth::verify_self_signed(chain, &credentials.thumbprints(), now)
            }
            AuthenticationType::CertificateAuthority => {
                let cas: Vec<_> = cas.iter().filter_map(CaRecord::der).collect();
                client_auth::verify_ca_signed(chain, &cas, identity.device.as_str(), now)
            }
            AuthenticationType::Sas | AuthenticationType::None => {
                return Err(unauthorized(
                    "the identity is not registered for X.509 authentication",
                ))
            }
        };
        checked.map_err(|e| unauthorized(&e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Fleet CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_ca_record_keeps_the_certificate_and_refuses_bad_names() {
        let pem = ca_pem();
        let record = CaRecord::new("fleet-ca_1.0", &pem, Utc::now()).unwrap();
        assert_eq!(record.subject, "CN=Fleet CA");
        assert_eq!(record.thumbprint.len(), 40);
        assert!(record.der().is_some());
        assert!(matches!(
            CaRecord::new("a b", &pem, Utc::now()),
            Err(CaError::Name(_))
        ));
        assert!(matches!(
            CaRecord::new("", &pem, Utc::now()),
            Err(CaError::Name(_))
        ));
        assert!(matches!(
            CaRecord::new("x", "garbage", Utc::now()),
            Err(CaError::Certificate(_))
        ));
    }
}
