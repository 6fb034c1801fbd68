//! The edge device's HTTPS session with the hub's REST API: it trusts the hub's CA and signs every request with
//! the edge device's own SAS token. The agent's identity management and the edge hub's upstream link share it.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::config::{DeviceCredentials, EdgeConfig};

/// How long the device's tokens live.
const TOKEN_TTL_SECS: u64 = 3600;

/// A path segment percent-encoded as the service SDK does it (`$edgeAgent` → `%24edgeAgent`): core's one
/// percent-encoding, `urllib.parse.quote(s, safe="")`.
pub use outpost_core::quote::quote as segment;

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
    pub fn new(config: &EdgeConfig, timeout: Duration) -> Result<Self, String> {
        let device = config.device()?;
        let pem = std::fs::read(&config.hub_ca)
            .map_err(|e| format!("cannot read hub_ca {}: {e}", config.hub_ca.display()))?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .http2_keep_alive_interval(Duration::from_secs(20));
        for certificate in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("hub_ca is not PEM: {e}"))?
        {
            builder = builder.add_root_certificate(certificate);
        }
        let http = builder.build().map_err(|e| e.to_string())?;
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
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<HubAnswer, String> {
        let expiry = Utc::now().timestamp().max(0) as u64 + TOKEN_TTL_SECS;
        let token = outpost_core::device_token(
            &self.device.hub_hostname,
            &self.device.device_id,
            &self.device.key,
            expiry,
        )
        .map_err(|e| format!("cannot sign with the device key: {e}"))?;
        let separator = if path.contains('?') { '&' } else { '?' };
        let url = format!("{}{path}{separator}api-version=2021-04-12", self.base);
        let mut request = self
            .http
            .request(method, &url)
            .header("Authorization", token);
        if let Some(etag) = if_match {
            request = request.header("If-Match", format!("\"{etag}\""));
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let date = response
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|d| d.to_str().ok())
            .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
            .map(|d| d.with_timezone(&Utc));
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        Ok(HubAnswer { status, date, body })
    }
}
