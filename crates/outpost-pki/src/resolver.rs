//! A server certificate that can be replaced while listeners run.
//!
//! Every listener's `rustls::ServerConfig` asks the [`ReloadableCertificate`] for its chain at each handshake, so a
//! renewal is one swap: connections already open keep the session they negotiated, and the next handshake gets the
//! new chain.

use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::PkiError;

/// The chain and key a server presents, replaceable at any time.
#[derive(Debug)]
pub struct ReloadableCertificate {
    /// A std `RwLock`: held only to clone or replace an `Arc`, never across an `.await` or a handshake.
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCertificate {
    /// Presents the chain and key in `chain_pem` and `key_pem`.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        Ok(Self {
            current: RwLock::new(certified_key(chain_pem, key_pem)?),
        })
    }

    /// Presents `chain_pem` and `key_pem` from the next handshake on.
    pub fn replace(&self, chain_pem: &str, key_pem: &str) -> Result<(), PkiError> {
        let next = certified_key(chain_pem, key_pem)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        Ok(())
    }

    /// The chain and key presented now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesServerCert for ReloadableCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A rustls server configuration (TLS 1.2, the Python SDK's only version, and 1.3) that presents whatever
/// `certificate` holds at each handshake.
pub fn reloading_tls_config(
    certificate: Arc<ReloadableCertificate>,
) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    Ok(Arc::new(config))
}

/// [`reloading_tls_config`] that also asks clients for an optional certificate
/// ([`AnyClientCertificate`](crate::client_auth::AnyClientCertificate)): the MQTT listeners, where devices may
/// authenticate with X.509. The chain is checked at CONNECT, against the identity the client names.
pub fn reloading_tls_config_requesting_client_certificates(
    certificate: Arc<ReloadableCertificate>,
) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
        .with_client_cert_verifier(crate::client_auth::AnyClientCertificate::new())
        .with_cert_resolver(certificate);
    Ok(Arc::new(config))
}

fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, PkiError> {
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
    let key = rustls::crypto::ring::sign::any_supported_type(&key)?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        // A key type whose public half rustls cannot derive is checked by the first handshake instead.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(error) => return Err(error.into()),
    }
    Ok(Arc::new(certified))
}
