//! Uploads by HTTPS PUT to the `sasUrl` of `UploadModuleLogs` and `UploadSupportBundle`: an Azure blob
//! container's SAS URL (each upload is a block blob named under the container, the SAS query kept), or any
//! HTTPS endpoint that takes a PUT. Trusted: the public web roots, plus `[upload] trusted_ca`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

/// How long one upload may take, connection included.
const UPLOAD_TIMEOUT: Duration = Duration::from_mins(10);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of an upload.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The extra CA file could not be used.
    #[error("cannot use upload.trusted_ca {path}: {reason}")]
    TrustedCa {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the upload client: {0}")]
    Client(#[source] reqwest::Error),
    /// The `sasUrl` is not an HTTPS URL.
    #[error("sasUrl must be an https:// URL")]
    NotHttps,
    /// The `sasUrl` does not parse.
    #[error("sasUrl is not a URL: {0}")]
    BadUrl(String),
    /// The request failed before an answer (connection, TLS, timeout).
    #[error("the upload to {host} failed: {source}")]
    Send {
        /// The endpoint's host.
        host: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The endpoint refused the upload.
    #[error("{host} answered the upload with HTTP {status}")]
    Refused {
        /// The endpoint's host.
        host: String,
        /// Its status.
        status: u16,
    },
}

/// The HTTPS client of uploads.
#[derive(Clone)]
pub struct Uploader {
    client: reqwest::Client,
}

impl Uploader {
    /// A client trusting the public web roots and the certificates in `trusted_ca`.
    pub fn new(trusted_ca: Option<&Path>) -> Result<Self, UploadError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = trusted_ca {
            let refuse = |reason: String| UploadError::TrustedCa {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| refuse(e.to_string()))?;
            let mut added = 0;
            for certificate in rustls_pemfile_certs(&pem).map_err(|e| refuse(e.to_string()))? {
                roots.add(certificate).map_err(|e| refuse(e.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(refuse("it holds no PEM certificate".into()));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| UploadError::TrustedCa {
                path: String::new(),
                reason: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(UPLOAD_TIMEOUT)
            .user_agent(concat!("outpost-edge-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(UploadError::Client)?;
        Ok(Self { client })
    }

    /// PUTs `body` as the blob `name` under `sas_url`.
    pub async fn put(
        &self,
        sas_url: &str,
        name: &[&str],
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(), UploadError> {
        let url = blob_url(sas_url, name)?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let response = self
            .client
            .put(url)
            // Azure Blob Storage's Put Blob needs the blob type; other endpoints ignore it.
            .header("x-ms-blob-type", "BlockBlob")
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .map_err(|source| UploadError::Send {
                host: host.clone(),
                source: source.without_url(),
            })?;
        if !response.status().is_success() {
            return Err(UploadError::Refused {
                host,
                status: response.status().as_u16(),
            });
        }
        Ok(())
    }
}

/// Checks a `sasUrl` without uploading: HTTPS, and a URL.
pub fn check_sas_url(sas_url: &str) -> Result<(), UploadError> {
    blob_url(sas_url, &[]).map(drop)
}

/// The URL of blob `name` (path segments) in the container `sas_url` names, its query (the signature) kept.
fn blob_url(sas_url: &str, name: &[&str]) -> Result<Url, UploadError> {
    let mut url = Url::parse(sas_url).map_err(|e| UploadError::BadUrl(e.to_string()))?;
    if url.scheme() != "https" {
        return Err(UploadError::NotHttps);
    }
    {
        let mut segments = url
            .path_segments_mut()
            .map_err(|()| UploadError::NotHttps)?;
        segments.pop_if_empty();
        segments.extend(name);
    }
    Ok(url)
}

/// The certificates of a PEM bundle.
fn rustls_pemfile_certs(
    pem: &[u8],
) -> std::io::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_is_named_under_the_container_and_keeps_the_signature() {
        let url = blob_url(
            "https://acct.blob.core.windows.net/logs?sv=2020&sig=a%2Bb",
            &["hub", "edge-1", "filter-2024.log"],
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "https://acct.blob.core.windows.net/logs/hub/edge-1/filter-2024.log?sv=2020&sig=a%2Bb"
        );
        let root = blob_url("https://127.0.0.1:8443/", &["x.log"]).unwrap();
        assert_eq!(root.as_str(), "https://127.0.0.1:8443/x.log");
    }

    #[test]
    fn a_plain_http_url_is_refused() {
        assert!(matches!(
            check_sas_url("http://example.com/c?sig=x"),
            Err(UploadError::NotHttps)
        ));
        assert!(matches!(
            check_sas_url("not a url"),
            Err(UploadError::BadUrl(_))
        ));
    }

    #[test]
    fn a_trusted_ca_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "nothing here").unwrap();
        assert!(matches!(
            Uploader::new(Some(&path)),
            Err(UploadError::TrustedCa { .. })
        ));
    }
}
