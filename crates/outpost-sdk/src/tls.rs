//! The client's TLS configuration: TLS 1.2 and 1.3 with the `ring` provider, trusting the given CA
//! certificates. The provider is passed to the builder, never installed process-wide: an application may
//! install its own, and two installed providers make rustls panic.

use std::sync::Arc;

use crate::error::ClientError;

/// Where the system's CA bundle usually is, after `SSL_CERT_FILE`.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// A rustls client configuration trusting the certificates of `ca_pem` (or the system bundle).
pub(crate) fn client_config(
    ca_pem: Option<&str>,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    Ok(Arc::new(trusting(ca_pem)?.with_no_client_auth()))
}

/// [`client_config`] that also presents a client certificate when the server asks for one (X.509 devices): the
/// chain of `chain_pem` (leaf first) and the private key of `key_pem`, which must be the leaf's.
pub(crate) fn client_config_with_certificate(
    ca_pem: Option<&str>,
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let chain = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ClientError::Configuration(format!("the client certificate is not valid PEM: {e}"))
        })?;
    if chain.is_empty() {
        return Err(ClientError::Configuration(
            "no certificate found in the client certificate's PEM".into(),
        ));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| {
            ClientError::Configuration(format!("the client private key is not valid PEM: {e}"))
        })?
        .ok_or_else(|| {
            ClientError::Configuration("no private key found in the client key's PEM".into())
        })?;
    let config = trusting(ca_pem)?
        .with_client_auth_cert(chain, key)
        .map_err(|e| ClientError::Configuration(format!("the client certificate and key: {e}")))?;
    Ok(Arc::new(config))
}

/// A configuration builder (TLS 1.2 and 1.3, ring) trusting the certificates of `ca_pem` (or the system bundle).
fn trusting(
    ca_pem: Option<&str>,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, ClientError>
{
    let pem = match ca_pem {
        Some(pem) => pem.to_owned(),
        None => system_bundle()?,
    };
    let mut roots = rustls::RootCertStore::empty();
    let mut count = 0;
    for certificate in rustls_pemfile::certs(&mut pem.as_bytes()) {
        let certificate = certificate.map_err(|e| {
            ClientError::Configuration(format!("the CA certificates are not valid PEM: {e}"))
        })?;
        roots.add(certificate).map_err(|e| {
            ClientError::Configuration(format!("a CA certificate cannot be used: {e}"))
        })?;
        count += 1;
    }
    if count == 0 {
        return Err(ClientError::Configuration(
            "no CA certificate found in the trusted PEM".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ClientError::Configuration(format!("TLS: {e}")))?
        .with_root_certificates(roots))
}

/// The system's CA bundle: `SSL_CERT_FILE`, else the first of the usual paths that exists.
fn system_bundle() -> Result<String, ClientError> {
    let from_env = std::env::var("SSL_CERT_FILE").ok();
    for path in from_env
        .iter()
        .map(String::as_str)
        .chain(SYSTEM_BUNDLES.iter().copied())
    {
        if let Ok(pem) = std::fs::read_to_string(path) {
            return Ok(pem);
        }
    }
    Err(ClientError::Configuration(
        "no CA certificates to trust: give the CA of the hub or gateway (ClientOptions::ca_pem, or EdgeModuleCACertificateFile for a module) or set SSL_CERT_FILE"
            .into(),
    ))
}

/// The server name to check the certificate against (a DNS name or an IP address).
pub(crate) fn server_name(
    host: &str,
) -> Result<rustls::pki_types::ServerName<'static>, ClientError> {
    rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| ClientError::Configuration(format!("{host:?} is not a valid host name")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_without_certificates_is_refused_with_a_clear_error() {
        let error = client_config(Some("not a certificate")).unwrap_err();
        assert!(error.to_string().contains("no CA certificate"), "{error}");
    }

    #[test]
    fn a_client_certificate_without_a_certificate_or_a_key_is_refused_with_a_clear_error() {
        let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let no_certificate =
            client_config_with_certificate(None, "nothing here", "nothing either").unwrap_err();
        assert!(
            no_certificate.to_string().contains("no certificate"),
            "{no_certificate}"
        );
        let no_key = client_config_with_certificate(Some("not a CA"), ca, "no key").unwrap_err();
        assert!(no_key.to_string().contains("private key"), "{no_key}");
    }

    #[test]
    fn ip_addresses_and_dns_names_are_valid_server_names() {
        assert!(server_name("127.0.0.42").is_ok());
        assert!(server_name("edgehub.local").is_ok());
        assert!(server_name("bad name").is_err());
    }
}
