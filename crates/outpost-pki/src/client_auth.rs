//! X.509 client authentication as IoT Hub does it, in two steps.
//!
//! *At the TLS handshake*, [`AnyClientCertificate`] asks the client for a certificate without requiring one,
//! accepts any chain and verifies the handshake signature, which proves that the client holds the key of the
//! leaf it presented. Which identity that leaf may open is known only at the MQTT CONNECT (the client id), so
//! *at CONNECT* the owner of the registry checks the chain with this module's pure functions:
//!
//! - [`verify_self_signed`]: a device or module registered with thumbprints (`selfSigned`): the leaf's SHA-1 or
//!   SHA-256 thumbprint is its primary or secondary one, and the leaf is within its validity;
//! - [`verify_ca_signed`]: a device or module registered as `certificateAuthority`: the chain verifies (webpki,
//!   for client authentication) to one of the CA certificates the hub holds, and the leaf's common name is the
//!   device id (IoT Hub's rule for modules too).
//!
//! [`parse_thumbprint`] is the registry's rule for thumbprints, [`thumbprints`] computes a certificate's, and
//! [`CaCertificate::from_pem`] checks a CA certificate an operator hands the hub. Nothing here does I/O or
//! reads the clock: callers pass `now`, so that the device provisioning service can check its X.509
//! attestations with the same functions.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::x509::inspect;

/// Why a client certificate does not authenticate the identity it claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientCertificateError {
    /// The client presented no certificate.
    #[error("no client certificate was presented")]
    Missing,
    /// The leaf is not a certificate this code can read.
    #[error("the client certificate is malformed: {0}")]
    Malformed(String),
    /// The leaf is outside its validity period at the time of the check.
    #[error("the client certificate is not valid now (valid from {not_before} to {not_after}, Unix seconds)")]
    OutsideValidity {
        /// Its `notBefore`, in Unix seconds.
        not_before: i64,
        /// Its `notAfter`, in Unix seconds.
        not_after: i64,
    },
    /// The leaf's thumbprint is neither the primary nor the secondary one registered.
    #[error(
        "the client certificate's thumbprint {sha1} is not one the identity is registered with"
    )]
    ThumbprintMismatch {
        /// The leaf's SHA-1 thumbprint (upper-case hex), for the log.
        sha1: String,
    },
    /// The chain does not verify to any CA certificate the hub holds (or it holds none).
    #[error("the client certificate does not chain to a CA certificate of the hub: {0}")]
    Untrusted(String),
    /// The chain verifies, but the leaf names another device.
    #[error("the client certificate's common name {found:?} is not the device id {expected:?}")]
    CommonNameMismatch {
        /// The device id the client connects as.
        expected: String,
        /// The leaf's common name.
        found: String,
    },
}

/// Why a thumbprint given to the registry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an X.509 thumbprint: 40 (SHA-1) or 64 (SHA-256) hexadecimal digits")]
pub struct ThumbprintError(pub String);

/// Why a CA certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaCertificateError {
    /// The text holds no PEM certificate, or more than one.
    #[error("expected exactly one PEM certificate, found {0}")]
    Count(usize),
    /// The certificate cannot be read.
    #[error("the certificate is malformed: {0}")]
    Malformed(String),
    /// It is not a CA certificate (no `basicConstraints` with `cA` true).
    #[error("the certificate is not a CA certificate (basicConstraints cA is not true)")]
    NotCa,
    /// It has expired, or is not valid yet.
    #[error(
        "the certificate is not valid now (valid from {not_before} to {not_after}, Unix seconds)"
    )]
    OutsideValidity {
        /// Its `notBefore`, in Unix seconds.
        not_before: i64,
        /// Its `notAfter`, in Unix seconds.
        not_after: i64,
    },
    /// webpki cannot use it as a trust anchor.
    #[error("the certificate cannot be a trust anchor: {0}")]
    NotAnAnchor(String),
}

/// A certificate's thumbprints, in upper-case hexadecimal as IoT Hub shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbprints {
    /// SHA-1 of the DER (40 digits).
    pub sha1: String,
    /// SHA-256 of the DER (64 digits).
    pub sha256: String,
}

impl Thumbprints {
    /// Whether `thumbprint` (either length, any case) is one of these.
    pub fn matches(&self, thumbprint: &str) -> bool {
        thumbprint.eq_ignore_ascii_case(&self.sha1) || thumbprint.eq_ignore_ascii_case(&self.sha256)
    }
}

/// The SHA-1 and SHA-256 thumbprints of a DER certificate.
pub fn thumbprints(der: &[u8]) -> Thumbprints {
    let hex = |algorithm| upper_hex(ring::digest::digest(algorithm, der).as_ref());
    Thumbprints {
        sha1: hex(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY),
        sha256: hex(&ring::digest::SHA256),
    }
}

fn upper_hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut hex, b| {
        use std::fmt::Write as _;
        let _ = write!(hex, "{b:02X}");
        hex
    })
}

/// Checks a thumbprint as IoT Hub accepts one: 40 (SHA-1) or 64 (SHA-256) hexadecimal digits, any case, nothing
/// else. Returns it unchanged.
pub fn parse_thumbprint(text: &str) -> Result<&str, ThumbprintError> {
    if matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text)
    } else {
        Err(ThumbprintError(text.to_owned()))
    }
}

/// Checks the chain of an identity registered with thumbprints: the leaf (`chain[0]`) is within its validity at
/// `now` (Unix seconds) and its SHA-1 or SHA-256 thumbprint is one of `registered` (empty ones are skipped).
pub fn verify_self_signed(
    chain: &[CertificateDer<'_>],
    registered: &[&str],
    now: i64,
) -> Result<(), ClientCertificateError> {
    let leaf = chain.first().ok_or(ClientCertificateError::Missing)?;
    let info = inspect(leaf).map_err(|e| ClientCertificateError::Malformed(e.to_string()))?;
    if now < info.not_before || now > info.not_after {
        return Err(ClientCertificateError::OutsideValidity {
            not_before: info.not_before,
            not_after: info.not_after,
        });
    }
    let found = thumbprints(leaf);
    if registered.iter().any(|t| !t.is_empty() && found.matches(t)) {
        Ok(())
    } else {
        Err(ClientCertificateError::ThumbprintMismatch { sha1: found.sha1 })
    }
}

/// Checks the chain of an identity registered as `certificateAuthority`: `chain[0]` is the leaf and the rest are
/// intermediates as the client sent them; the chain must verify at `now` (Unix seconds) for client
/// authentication to one of `cas` (DER), and the leaf's common name must be `device_id` (exactly, as IoT Hub
/// compares it).
pub fn verify_ca_signed(
    chain: &[CertificateDer<'_>],
    cas: &[CertificateDer<'_>],
    device_id: &str,
    now: i64,
) -> Result<(), ClientCertificateError> {
    let (leaf, intermediates) = chain.split_first().ok_or(ClientCertificateError::Missing)?;
    let anchors: Vec<_> = cas
        .iter()
        .filter_map(|ca| webpki::anchor_from_trusted_cert(ca).ok())
        .collect();
    if anchors.is_empty() {
        return Err(ClientCertificateError::Untrusted(
            "the hub holds no CA certificate".into(),
        ));
    }
    let end_entity = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| ClientCertificateError::Malformed(e.to_string()))?;
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now).unwrap_or_default(),
    ));
    end_entity
        .verify_for_usage(
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .all,
            &anchors,
            intermediates,
            time,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| ClientCertificateError::Untrusted(e.to_string()))?;
    let info = inspect(leaf).map_err(|e| ClientCertificateError::Malformed(e.to_string()))?;
    if info.common_name != device_id {
        return Err(ClientCertificateError::CommonNameMismatch {
            expected: device_id.to_owned(),
            found: info.common_name,
        });
    }
    Ok(())
}

/// A CA certificate fit for the hub to trust device certificates with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCertificate {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Its subject (`CN=..., O=...`).
    pub subject: String,
    /// Its thumbprints.
    pub thumbprints: Thumbprints,
    /// The end of its validity, in Unix seconds.
    pub not_after: i64,
}

impl CaCertificate {
    /// Reads and checks one PEM certificate: exactly one, readable, a CA (`basicConstraints cA`), valid at `now`
    /// (Unix seconds), and usable by webpki as a trust anchor.
    pub fn from_pem(pem: &str, now: i64) -> Result<Self, CaCertificateError> {
        let certificates = rustls_pemfile::certs(&mut pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CaCertificateError::Malformed(e.to_string()))?;
        let [der] = certificates.as_slice() else {
            return Err(CaCertificateError::Count(certificates.len()));
        };
        Self::from_der(der, now)
    }

    /// [`from_pem`](Self::from_pem) for one DER certificate.
    pub fn from_der(der: &[u8], now: i64) -> Result<Self, CaCertificateError> {
        use x509_parser::prelude::{FromDer as _, X509Certificate};
        let info = inspect(der).map_err(|e| CaCertificateError::Malformed(e.to_string()))?;
        let (_, parsed) = X509Certificate::from_der(der)
            .map_err(|e| CaCertificateError::Malformed(e.to_string()))?;
        let is_ca = parsed
            .basic_constraints()
            .map_err(|e| CaCertificateError::Malformed(e.to_string()))?
            .is_some_and(|constraints| constraints.value.ca);
        if !is_ca {
            return Err(CaCertificateError::NotCa);
        }
        if now < info.not_before || now > info.not_after {
            return Err(CaCertificateError::OutsideValidity {
                not_before: info.not_before,
                not_after: info.not_after,
            });
        }
        let der_ref = CertificateDer::from(der);
        webpki::anchor_from_trusted_cert(&der_ref)
            .map_err(|e| CaCertificateError::NotAnAnchor(e.to_string()))?;
        Ok(Self {
            der: der.to_vec(),
            subject: info.subject,
            thumbprints: thumbprints(der),
            not_after: info.not_after,
        })
    }

    /// The certificate as PEM text.
    pub fn pem(&self) -> String {
        use base64::Engine as _;
        let body = base64::engine::general_purpose::STANDARD.encode(&self.der);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }
}

/// The TLS side of X.509 client authentication: asks every client for a certificate without requiring one
/// (devices with SAS tokens send none), takes any chain (which identity it may open is decided at CONNECT) and
/// verifies the handshake signature with the leaf's key, so a client cannot present a certificate it has no
/// key for.
#[derive(Debug)]
pub struct AnyClientCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyClientCertificate {
    /// One that verifies signatures with ring's algorithms (the workspace's one provider).
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        })
    }
}

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: OpenSSL clients (the Python SDK) then send whatever certificate they were given.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Checked at CONNECT, against the identity the client names (verify_self_signed, verify_ca_signed).
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_900_000_000;

    struct Issued {
        der: CertificateDer<'static>,
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    fn params(common_name: &str, ca: bool, years: (i32, i32)) -> rcgen::CertificateParams {
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::DigitalSignature,
            ];
        }
        params
    }

    fn self_signed(common_name: &str, ca: bool, years: (i32, i32)) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params(common_name, ca, years).self_signed(&key).unwrap();
        Issued {
            der: cert.der().clone(),
            cert,
            key,
        }
    }

    fn signed_by(common_name: &str, ca: bool, issuer: &Issued, years: (i32, i32)) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params(common_name, ca, years)
            .signed_by(&key, &issuer.cert, &issuer.key)
            .unwrap();
        Issued {
            der: cert.der().clone(),
            cert,
            key,
        }
    }

    const NOW_YEARS: (i32, i32) = (2020, 2050);

    /// `leaf` alone, checked against `ca` alone, for device `device`, at [`NOW`].
    fn one_leaf(leaf: &Issued, ca: &Issued, device: &str) -> Result<(), ClientCertificateError> {
        verify_ca_signed(
            std::slice::from_ref(&leaf.der),
            std::slice::from_ref(&ca.der),
            device,
            NOW,
        )
    }

    #[test]
    fn a_self_signed_leaf_matches_its_primary_or_secondary_thumbprint_of_either_length() {
        let leaf = self_signed("dev1", false, NOW_YEARS);
        let prints = thumbprints(&leaf.der);
        assert_eq!(prints.sha1.len(), 40);
        assert_eq!(prints.sha256.len(), 64);
        let chain = [leaf.der.clone()];
        let other = "0".repeat(40);
        assert!(verify_self_signed(&chain, &[&prints.sha1, ""], NOW).is_ok());
        assert!(verify_self_signed(&chain, &[&other, &prints.sha256.to_lowercase()], NOW).is_ok());
        assert!(matches!(
            verify_self_signed(&chain, &[&other, ""], NOW),
            Err(ClientCertificateError::ThumbprintMismatch { .. })
        ));
        assert_eq!(
            verify_self_signed(&[], &[&prints.sha1], NOW),
            Err(ClientCertificateError::Missing)
        );
    }

    #[test]
    fn an_expired_or_not_yet_valid_self_signed_leaf_is_refused_even_with_the_right_thumbprint() {
        let expired = self_signed("dev1", false, (2010, 2015));
        let prints = thumbprints(&expired.der);
        assert!(matches!(
            verify_self_signed(std::slice::from_ref(&expired.der), &[&prints.sha1], NOW),
            Err(ClientCertificateError::OutsideValidity { .. })
        ));
        let future = self_signed("dev1", false, (2040, 2050));
        let prints = thumbprints(&future.der);
        assert!(matches!(
            verify_self_signed(std::slice::from_ref(&future.der), &[&prints.sha1], NOW),
            Err(ClientCertificateError::OutsideValidity { .. })
        ));
    }

    #[test]
    fn a_leaf_signed_by_a_held_ca_and_named_after_the_device_is_accepted() {
        let ca = self_signed("Fleet CA", true, NOW_YEARS);
        let leaf = signed_by("dev1", false, &ca, NOW_YEARS);
        assert_eq!(one_leaf(&leaf, &ca, "dev1"), Ok(()));
    }

    #[test]
    fn a_leaf_signed_through_an_intermediate_the_client_sends_is_accepted() {
        let root = self_signed("Fleet root", true, NOW_YEARS);
        let intermediate = signed_by("Fleet intermediate", true, &root, NOW_YEARS);
        let leaf = signed_by("dev1", false, &intermediate, NOW_YEARS);
        let chain = [leaf.der.clone(), intermediate.der.clone()];
        assert_eq!(
            verify_ca_signed(&chain, std::slice::from_ref(&root.der), "dev1", NOW),
            Ok(())
        );
        assert!(matches!(
            verify_ca_signed(&chain[..1], std::slice::from_ref(&root.der), "dev1", NOW),
            Err(ClientCertificateError::Untrusted(_))
        ));
    }

    #[test]
    fn a_leaf_whose_common_name_is_another_device_is_refused() {
        let ca = self_signed("Fleet CA", true, NOW_YEARS);
        let leaf = signed_by("dev2", false, &ca, NOW_YEARS);
        assert_eq!(
            one_leaf(&leaf, &ca, "dev1"),
            Err(ClientCertificateError::CommonNameMismatch {
                expected: "dev1".into(),
                found: "dev2".into()
            })
        );
    }

    #[test]
    fn a_leaf_of_another_ca_or_with_no_ca_held_is_untrusted() {
        let ca = self_signed("Fleet CA", true, NOW_YEARS);
        let stranger = self_signed("Other CA", true, NOW_YEARS);
        let leaf = signed_by("dev1", false, &stranger, NOW_YEARS);
        assert!(matches!(
            one_leaf(&leaf, &ca, "dev1"),
            Err(ClientCertificateError::Untrusted(_))
        ));
        assert!(matches!(
            verify_ca_signed(std::slice::from_ref(&leaf.der), &[], "dev1", NOW),
            Err(ClientCertificateError::Untrusted(_))
        ));
        // A self-signed leaf is no CA of its own.
        let alone = self_signed("dev1", false, NOW_YEARS);
        assert!(matches!(
            one_leaf(&alone, &ca, "dev1"),
            Err(ClientCertificateError::Untrusted(_))
        ));
    }

    #[test]
    fn an_expired_leaf_of_a_held_ca_is_untrusted() {
        let ca = self_signed("Fleet CA", true, (2000, 2050));
        let leaf = signed_by("dev1", false, &ca, (2010, 2015));
        assert!(matches!(
            one_leaf(&leaf, &ca, "dev1"),
            Err(ClientCertificateError::Untrusted(_))
        ));
    }

    #[test]
    fn thumbprints_are_40_or_64_hex_digits() {
        assert!(parse_thumbprint(&"aB".repeat(20)).is_ok());
        assert!(parse_thumbprint(&"0".repeat(64)).is_ok());
        assert!(parse_thumbprint(&"0".repeat(41)).is_err());
        assert!(parse_thumbprint(&"g".repeat(40)).is_err());
        assert!(parse_thumbprint("").is_err());
        assert!(parse_thumbprint(&format!("{}:", "0".repeat(39))).is_err());
    }

    #[test]
    fn only_one_valid_ca_certificate_is_taken_as_a_ca() {
        let ca = self_signed("Fleet CA", true, NOW_YEARS);
        let taken = CaCertificate::from_pem(&ca.cert.pem(), NOW).unwrap();
        assert_eq!(taken.subject, "CN=Fleet CA");
        assert_eq!(taken.der, ca.der.to_vec());
        assert_eq!(CaCertificate::from_pem(&taken.pem(), NOW).unwrap(), taken);
        let leaf = self_signed("dev1", false, NOW_YEARS);
        assert_eq!(
            CaCertificate::from_pem(&leaf.cert.pem(), NOW),
            Err(CaCertificateError::NotCa)
        );
        let two = format!("{}{}", ca.cert.pem(), ca.cert.pem());
        assert_eq!(
            CaCertificate::from_pem(&two, NOW),
            Err(CaCertificateError::Count(2))
        );
        assert_eq!(
            CaCertificate::from_pem("not a certificate", NOW),
            Err(CaCertificateError::Count(0))
        );
        let expired = self_signed("Old CA", true, (2000, 2010));
        assert!(matches!(
            CaCertificate::from_pem(&expired.cert.pem(), NOW),
            Err(CaCertificateError::OutsideValidity { .. })
        ));
    }
}
