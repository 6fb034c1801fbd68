//! Reads what Outpost needs from an X.509 certificate (RFC 5280 §4.1): its serial number, subject, validity and
//! public key, with `x509-parser` (certificates come from disk, some from operators: a well-kept parser reads
//! them, not a walk of our own over the DER).

use crate::PkiError;

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject, as `CN=...` (with `O=` and `OU=` when present).
    pub subject: String,
    /// The subject's common name alone.
    pub common_name: String,
    /// The serial number, in lower-case hexadecimal.
    pub serial: String,
    /// The start of its validity, in Unix seconds.
    pub not_before: i64,
    /// The end of its validity, in Unix seconds.
    pub not_after: i64,
    /// The subject's public key (the bits of `subjectPublicKey`).
    pub public_key: Vec<u8>,
}

/// How close a certificate is to the end of its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateState {
    /// Less than [`RENEWAL_POINT`] of its life has passed.
    Valid,
    /// Past [`RENEWAL_POINT`] of its life: it should have been renewed.
    Expiring,
    /// Past its `notAfter`.
    Expired,
}

/// The part of a certificate's life after which it is renewed: 80 %, as a fraction (numerator, denominator).
pub const RENEWAL_POINT: (i64, i64) = (4, 5);

impl CertificateInfo {
    /// When the certificate is due for renewal: [`RENEWAL_POINT`] of the way from `notBefore` to `notAfter`.
    pub fn renewal_due_at(&self) -> i64 {
        let life = i128::from(self.not_after - self.not_before);
        let (numerator, denominator) = RENEWAL_POINT;
        self.not_before + (life * i128::from(numerator) / i128::from(denominator)) as i64
    }

    /// Whether the certificate is due for renewal at `now` (Unix seconds).
    pub fn renewal_due(&self, now: i64) -> bool {
        now >= self.renewal_due_at()
    }

    /// Its state at `now` (Unix seconds).
    pub fn state(&self, now: i64) -> CertificateState {
        if now >= self.not_after {
            CertificateState::Expired
        } else if self.renewal_due(now) {
            CertificateState::Expiring
        } else {
            CertificateState::Valid
        }
    }
}

impl std::fmt::Display for CertificateState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Valid => "valid",
            Self::Expiring => "expiring",
            Self::Expired => "expired",
        })
    }
}

/// Reads every certificate in PEM text, in order.
pub fn inspect_pem(pem: &str) -> Result<Vec<CertificateInfo>, PkiError> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .map(|der| {
            let der = der.map_err(|source| PkiError::Io {
                path: "<pem>".into(),
                source,
            })?;
            inspect(&der)
        })
        .collect()
}

/// Reads one DER certificate.
pub fn inspect(der: &[u8]) -> Result<CertificateInfo, PkiError> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};

    let (rest, certificate) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::Malformed(format!("not an X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(malformed("bytes after the certificate"));
    }
    let mut subject = Vec::new();
    let mut common_name = String::new();
    for attribute in certificate.subject().iter_attributes() {
        let oid = attribute.attr_type();
        let label = if *oid == x509_parser::oid_registry::OID_X509_COMMON_NAME {
            "CN"
        } else if *oid == x509_parser::oid_registry::OID_X509_ORGANIZATION_NAME {
            "O"
        } else if *oid == x509_parser::oid_registry::OID_X509_ORGANIZATIONAL_UNIT {
            "OU"
        } else {
            continue;
        };
        let value = attribute
            .as_str()
            .map_err(|_| malformed("a subject name that is not a string"))?
            .to_owned();
        if label == "CN" && common_name.is_empty() {
            common_name.clone_from(&value);
        }
        subject.push(format!("{label}={value}"));
    }
    let serial = certificate
        .raw_serial()
        .iter()
        .fold(String::new(), |mut hex, b| {
            use std::fmt::Write as _;
            let _ = write!(hex, "{b:02x}");
            hex
        });
    let validity = certificate.validity();
    Ok(CertificateInfo {
        subject: subject.join(", "),
        common_name,
        serial,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        public_key: certificate.public_key().subject_public_key.data.to_vec(),
    })
}

fn malformed(what: &str) -> PkiError {
    PkiError::Malformed(what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_shows_its_subject_serial_and_validity() {
        let mut params = rcgen::CertificateParams::new(vec!["device.example".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "device.example");
        params.not_before = rcgen::date_time_ymd(2030, 1, 2);
        params.not_after = rcgen::date_time_ymd(2060, 6, 30);
        params.serial_number = Some(vec![0x01, 0x02, 0xff].into());
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        let info = inspect(certificate.der()).unwrap();
        assert_eq!(info.subject, "CN=device.example");
        assert_eq!(info.common_name, "device.example");
        assert_eq!(info.serial, "0102ff");
        // 2030-01-02 and 2060-06-30 at midnight UTC.
        assert_eq!(info.not_before, 1_893_542_400);
        assert_eq!(info.not_after, 2_855_779_200);
        assert_eq!(info.public_key, key.public_key_raw());
    }

    #[test]
    fn renewal_is_due_at_four_fifths_of_the_life() {
        let info = CertificateInfo {
            subject: String::new(),
            common_name: String::new(),
            serial: String::new(),
            not_before: 1_000,
            not_after: 1_100,
            public_key: Vec::new(),
        };
        assert_eq!(info.renewal_due_at(), 1_080);
        assert!(!info.renewal_due(1_079));
        assert!(info.renewal_due(1_080));
        assert_eq!(info.state(1_050), CertificateState::Valid);
        assert_eq!(info.state(1_080), CertificateState::Expiring);
        assert_eq!(info.state(1_100), CertificateState::Expired);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        assert!(inspect(&[]).is_err());
        assert!(inspect(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(inspect(&[0x30, 0x03, 0x30, 0x01]).is_err());
    }
}
