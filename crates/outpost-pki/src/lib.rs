//! Outpost's certificate authorities and TLS server configurations.
//!
//! The hub and each edge device create their own CA on first start (`ca.pem`, `ca.key` in their data
//! directory); clients trust `ca.pem`. Server certificates are issued anew at every start for the configured
//! host name, so changing it needs no manual step. The CA is rebuilt from its stored key with a fixed subject,
//! which yields an issuer that verifies exactly like the one written on first start.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

/// Errors while creating or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a certificate file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Generating or parsing a key or certificate failed.
    #[error("certificate error: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("TLS configuration error: {0}")]
    Tls(#[from] rustls::Error),
    /// The host name is neither a DNS name nor an IP address.
    #[error("invalid host name {0:?} for a certificate")]
    HostName(String),
}

/// A certificate authority that issues server certificates.
pub struct CertificateAuthority {
    key: KeyPair,
    certificate: rcgen::Certificate,
    pem: String,
}

impl CertificateAuthority {
    /// Loads the CA from `dir/ca.key`, or creates it (and `dir/ca.pem`) when there is none.
    ///
    /// A missing `dir` is created `0700`; the key is written `0600`, and an existing key readable by others is
    /// tightened to `0600`.
    pub fn load_or_create(dir: &Path, common_name: &str) -> Result<Self, PkiError> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| PkiError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        let key_path = dir.join("ca.key");
        let pem_path = dir.join("ca.pem");
        if key_path.exists() {
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| PkiError::Io {
                    path: key_path.display().to_string(),
                    source,
                },
            )?;
            let key_pem = read(&key_path)?;
            let key = KeyPair::from_pem(&key_pem)?;
            let certificate = ca_params(common_name).self_signed(&key)?;
            let pem = read(&pem_path)?;
            return Ok(Self {
                key,
                certificate,
                pem,
            });
        }
        let key = KeyPair::generate()?;
        let certificate = ca_params(common_name).self_signed(&key)?;
        let pem = certificate.pem();
        write_private(&key_path, &key.serialize_pem())?;
        write(&pem_path, &pem)?;
        Ok(Self {
            key,
            certificate,
            pem,
        })
    }

    /// The CA certificate that clients trust, as PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Issues a TLS server certificate for `host_name` (an IP address or a DNS name) and returns `(chain PEM, key PEM)`.
    pub fn issue_server_certificate(&self, host_name: &str) -> Result<(String, String), PkiError> {
        let extra: &[&str] = if host_name == "localhost" {
            &[]
        } else {
            &["localhost"]
        };
        self.issue_server_certificate_for(host_name, extra)
    }

    /// Issues a TLS server certificate whose common name is `host_name`, naming it and `other_names` as SANs.
    pub fn issue_server_certificate_for(
        &self,
        host_name: &str,
        other_names: &[&str],
    ) -> Result<(String, String), PkiError> {
        let mut params = CertificateParams::default();
        let mut names = vec![san_for(host_name)?];
        for name in other_names {
            names.push(san_for(name)?);
        }
        params.subject_alt_names = names;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host_name);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.certificate, &self.key)?;
        Ok((
            format!("{}{}", certificate.pem(), self.pem),
            key.serialize_pem(),
        ))
    }

    /// A rustls server configuration (TLS 1.2 and 1.3) presenting a fresh certificate for `host_name`.
    pub fn server_tls_config(
        &self,
        host_name: &str,
    ) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let (chain_pem, key_pem) = self.issue_server_certificate(host_name)?;
        server_tls_config(&chain_pem, &key_pem)
    }
}

/// Builds a rustls server configuration from PEM text, offering TLS 1.2 (the Python SDK's only version) and 1.3.
pub fn server_tls_config(
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let io = |source| PkiError::Io {
        path: "<pem>".into(),
        source,
    };
    let chain = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(io)?
        .ok_or_else(|| io(std::io::Error::other("no private key in PEM")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    params
}

fn san_for(host_name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = host_name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let name = host_name
        .try_into()
        .map_err(|_| PkiError::HostName(host_name.to_owned()))?;
    Ok(SanType::DnsName(name))
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn write(path: &Path, contents: &str) -> Result<(), PkiError> {
    std::fs::write(path, contents).map_err(|source| PkiError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_key_is_private_and_an_existing_open_one_is_tightened() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pki");
        CertificateAuthority::load_or_create(&dir, "test CA").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        std::fs::set_permissions(dir.join("ca.key"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        CertificateAuthority::load_or_create(&dir, "test CA").unwrap();
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
    }

    #[test]
    fn a_reloaded_ca_issues_certificates_that_the_first_ca_pem_verifies() {
        use rustls::client::danger::ServerCertVerifier as _;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let first = CertificateAuthority::load_or_create(dir.path(), "Outpost test CA").unwrap();
        let original_pem = first.pem().to_owned();
        drop(first);
        let reloaded = CertificateAuthority::load_or_create(dir.path(), "Outpost test CA").unwrap();
        assert_eq!(reloaded.pem(), original_pem);
        let (chain, _key) = reloaded.issue_server_certificate("127.0.0.5").unwrap();

        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut original_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let certs: Vec<_> = rustls_pemfile::certs(&mut chain.as_bytes())
            .map(Result::unwrap)
            .collect();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.5").unwrap();
        verifier
            .verify_server_cert(
                &certs[0],
                &certs[1..],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("the reloaded CA's certificate verifies against the original ca.pem");
    }
}
