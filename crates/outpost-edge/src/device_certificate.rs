//! The edge device's own X.509 identity (`[provisioning.attestation] method = "x509"`): its certificate chain and
//! private key, read from the files the settings name and checked together at start, so that a missing, unreadable
//! or mismatched file is an error naming it, not a TLS failure somewhere later. Provisioning registers with it and
//! the hub's REST client presents it.

use std::path::Path;

use crate::config::CertificateFiles;

/// Why the device's certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceCertificateError {
    /// A file cannot be read.
    #[error("cannot read {setting} {path}: {source}")]
    Read {
        /// `identity_cert` or `identity_pk`.
        setting: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate, or one that cannot be read.
    #[error("identity_cert {path} is not a PEM certificate chain: {reason}")]
    Certificate {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The key file holds no PEM private key, or one of a kind TLS cannot sign with.
    #[error("identity_pk {path} is not a PEM private key: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The key is not the leaf certificate's.
    #[error("identity_pk {key} is not the private key of identity_cert {cert}")]
    Mismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
    },
    /// The leaf is expired or not valid yet.
    #[error("identity_cert {path} is not valid now (valid from {not_before} to {not_after}, Unix seconds)")]
    OutsideValidity {
        /// The file.
        path: String,
        /// Its `notBefore`.
        not_before: i64,
        /// Its `notAfter`.
        not_after: i64,
    },
}

/// The device's certificate and key, checked.
#[derive(Clone)]
pub struct DeviceCertificate {
    /// The files they came from.
    pub files: CertificateFiles,
    /// The chain, leaf first (PEM).
    pub chain_pem: String,
    /// The private key (PEM).
    pub key_pem: String,
    /// The leaf's common name: the registration id unless the settings name one.
    pub common_name: String,
    /// The leaf's SHA-256 thumbprint (upper-case hex), what the hub registers a provisioned device with.
    pub thumbprint: String,
    /// The end of the leaf's validity, in Unix seconds.
    pub not_after: i64,
}

impl std::fmt::Debug for DeviceCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("DeviceCertificate")
            .field("files", &self.files)
            .field("common_name", &self.common_name)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

fn read(setting: &'static str, path: &Path) -> Result<String, DeviceCertificateError> {
    std::fs::read_to_string(path).map_err(|source| DeviceCertificateError::Read {
        setting,
        path: path.display().to_string(),
        source,
    })
}

impl DeviceCertificate {
    /// Reads and checks `files` at `now` (Unix seconds): a readable chain whose leaf is valid now, and that
    /// leaf's private key.
    pub fn load(files: &CertificateFiles, now: i64) -> Result<Self, DeviceCertificateError> {
        let cert_path = files.cert.display().to_string();
        let key_path = files.key.display().to_string();
        let chain_pem = read("identity_cert", &files.cert)?;
        let key_pem = read("identity_pk", &files.key)?;
        let bad_certificate = |reason: String| DeviceCertificateError::Certificate {
            path: cert_path.clone(),
            reason,
        };
        let chain = rustls_pemfile::certs(&mut chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad_certificate(e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| bad_certificate("no certificate in it".into()))?;
        let info = outpost_pki::x509::inspect(leaf).map_err(|e| bad_certificate(e.to_string()))?;
        if now < info.not_before || now >= info.not_after {
            return Err(DeviceCertificateError::OutsideValidity {
                path: cert_path,
                not_before: info.not_before,
                not_after: info.not_after,
            });
        }
        let bad_key = |reason: String| DeviceCertificateError::Key {
            path: key_path.clone(),
            reason,
        };
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .map_err(|e| bad_key(e.to_string()))?
            .ok_or_else(|| bad_key("no private key in it".into()))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| bad_key(e.to_string()))?;
        let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
        match certified.keys_match() {
            // A key whose public half rustls cannot derive is left to the first handshake.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => {
                return Err(DeviceCertificateError::Mismatch {
                    cert: cert_path,
                    key: key_path,
                })
            }
        }
        Ok(Self {
            files: files.clone(),
            thumbprint: outpost_pki::client_auth::thumbprints(leaf).sha256,
            common_name: info.common_name,
            not_after: info.not_after,
            chain_pem,
            key_pem,
        })
    }

    /// The chain and the key in one PEM text, as reqwest's `Identity::from_pem` reads them.
    pub fn identity_pem(&self) -> String {
        format!("{}\n{}", self.chain_pem.trim_end(), self.key_pem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a self-signed certificate for `name` and its key into `dir`; returns the files.
    fn write(dir: &Path, name: &str) -> CertificateFiles {
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        let files = CertificateFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key.pem")),
        };
        std::fs::write(&files.cert, certificate.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn a_certificate_and_its_key_load_with_the_leafs_name_and_thumbprint() {
        let dir = tempfile::tempdir().unwrap();
        let files = write(dir.path(), "gw-1");
        let loaded = DeviceCertificate::load(&files, outpost_pki::unix_now()).unwrap();
        assert_eq!(loaded.common_name, "gw-1");
        assert_eq!(loaded.thumbprint.len(), 64);
        assert!(reqwest::Identity::from_pem(loaded.identity_pem().as_bytes()).is_ok());
        assert!(
            !format!("{loaded:?}").contains("PRIVATE"),
            "the key stays out of logs"
        );
    }

    #[test]
    fn each_bad_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(dir.path(), "gw-1");
        let other = write(dir.path(), "gw-2");
        let now = outpost_pki::unix_now();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not PEM at all").unwrap();
        let missing = dir.path().join("missing.pem");
        for (files, names) in [
            (
                CertificateFiles {
                    cert: missing.clone(),
                    key: good.key.clone(),
                },
                missing.clone(),
            ),
            (
                CertificateFiles {
                    cert: good.cert.clone(),
                    key: missing.clone(),
                },
                missing.clone(),
            ),
            (
                CertificateFiles {
                    cert: garbage.clone(),
                    key: good.key.clone(),
                },
                garbage.clone(),
            ),
            (
                CertificateFiles {
                    cert: good.cert.clone(),
                    key: garbage.clone(),
                },
                garbage.clone(),
            ),
            (
                CertificateFiles {
                    cert: good.cert.clone(),
                    key: other.key.clone(),
                },
                other.key.clone(),
            ),
        ] {
            let error = DeviceCertificate::load(&files, now)
                .unwrap_err()
                .to_string();
            assert!(error.contains(&names.display().to_string()), "{error}");
        }
        // rcgen's certificates start in 1975.
        let early = DeviceCertificate::load(&good, 0).unwrap_err();
        assert!(
            matches!(early, DeviceCertificateError::OutsideValidity { .. }),
            "{early}"
        );
    }
}
