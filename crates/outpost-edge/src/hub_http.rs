//! The edge device's HTTPS session with the hub's REST API: it trusts the hub's CA and authenticates as the edge
//! device, signing every request with its own SAS token or, for a device with an X.509 identity, presenting its
//! certificate at the TLS handshake (and no `Authorization` header). The agent's identity management and the edge
//! hub's upstream link share it.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};

use crate::config::{DeviceAuth, DeviceCredentials, EdgeConfig, SettingsError};
use crate::device_certificate::{DeviceCertificate, DeviceCertificateError};

/// How long the device's tokens live.
const TOKEN_TTL_SECS: u64 = 3600;

/// A path segment percent-encoded as the service SDK does it (`$edgeAgent` → `%24edgeAgent`): core's one
/// percent-encoding, `urllib.parse.quote(s, safe="")`.
pub use outpost_core::quote::quote as segment;

/// Why a session with the hub cannot be set up: the settings are wrong, retrying will not help.
#[derive(Debug, thiserror::Error)]
pub enum HubSetupError {
    /// The connection string.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The hub's CA file could not be read.
    #[error("cannot read hub_ca {path}: {source}")]
    HubCa {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The hub's CA file is not PEM certificates.
    #[error("hub_ca is not PEM: {0}")]
    HubCaPem(#[source] reqwest::Error),
    /// The device's certificate or key cannot be used.
    #[error(transparent)]
    Certificate(#[from] DeviceCertificateError),
    /// The device's certificate and key are not an identity the HTTPS client takes.
    #[error("identity_cert {path}: {source}")]
    Identity {
        /// The certificate file.
        path: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The HTTPS client could not be built.
    #[error("cannot build the HTTPS client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Why a request did not reach the hub, or its answer did not come back: the hub is unreachable.
#[derive(Debug, thiserror::Error)]
pub enum HubRequestError {
    /// The device key cannot sign a token.
    #[error("cannot sign with the device key: {0}")]
    Sign(#[from] outpost_core::SasError),
    /// The exchange failed (connect, TLS, timeout, a dropped connection).
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

/// The hub's answer to one request.
pub struct HubAnswer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The hub's clock (`Date` header), when it sent one.
    pub date: Option<DateTime<Utc>>,
    /// The body.
    pub body: Bytes,
}

impl HubAnswer {
    /// The body as text, for error messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTPS session with the hub as the edge device.
pub struct HubHttp {
    http: reqwest::Client,
    base: String,
    device: DeviceCredentials,
}

impl HubHttp {
    /// A session with the hub the settings name; a request gives up after `timeout`.
    pub fn new(config: &EdgeConfig, timeout: Duration) -> Result<Self, HubSetupError> {
        let device = config.device()?;
        let pem = std::fs::read(&config.hub_ca).map_err(|source| HubSetupError::HubCa {
            path: config.hub_ca.display().to_string(),
            source,
        })?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .http2_keep_alive_interval(Duration::from_secs(20));
        for certificate in
            reqwest::Certificate::from_pem_bundle(&pem).map_err(HubSetupError::HubCaPem)?
        {
            builder = builder.add_root_certificate(certificate);
        }
        if let DeviceAuth::Certificate(files) = &device.auth {
            let certificate = DeviceCertificate::load(files, outpost_pki::unix_now())?;
            let identity = reqwest::Identity::from_pem(certificate.identity_pem().as_bytes())
                .map_err(|source| HubSetupError::Identity {
                    path: files.cert.display().to_string(),
                    source,
                })?;
            builder = builder.identity(identity);
        }
        let http = builder.build().map_err(HubSetupError::Client)?;
        let base = format!("https://{}:{}", device.hub_hostname, config.hub_https_port);
        Ok(Self { http, base, device })
    }

    /// The edge device.
    pub fn device(&self) -> &DeviceCredentials {
        &self.device
    }

    /// Sends one request (`path` from the root, with or without a query); `Err` means the hub was not reached.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        if_match: Option<&str>,
    ) -> Result<HubAnswer, HubRequestError> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let url = format!("{}{path}{separator}api-version=2021-04-12", self.base);
        let mut request = self.http.request(method, &url);
        if let DeviceAuth::Key(key) = &self.device.auth {
            let expiry = Utc::now().timestamp().max(0) as u64 + TOKEN_TTL_SECS;
            let token = outpost_core::device_token(
                &self.device.hub_hostname,
                &self.device.device_id,
                key,
                expiry,
            )?;
            request = request.header("Authorization", token);
        }
        if let Some(etag) = if_match {
            request = request.header("If-Match", format!("\"{etag}\""));
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let date = response
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|d| d.to_str().ok())
            .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
            .map(|d| d.with_timezone(&Utc));
        let body = response.bytes().await?;
        Ok(HubAnswer { status, date, body })
    }
}
