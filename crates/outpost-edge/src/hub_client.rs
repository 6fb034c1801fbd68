//! The edge device's REST client of the hub: it manages the module identities this device owns, authenticated
//! with the device's own SAS token (the hub lets an edge device manage its modules).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::config::{DeviceCredentials, EdgeConfig};
use crate::identities::ModuleCredentials;

/// How long the device's tokens live.
const TOKEN_TTL_SECS: u64 = 3600;

/// Errors talking to the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubClientError {
    /// The hub could not be reached (offline).
    #[error("the hub is unreachable: {0}")]
    Unreachable(String),
    /// The hub answered with an error.
    #[error("the hub answered {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The hub's message.
        message: String,
    },
    /// The settings do not allow a connection (bad CA file, bad key).
    #[error("{0}")]
    Setup(String),
}

/// A REST client of the hub acting as the edge device.
pub struct HubClient {
    http: reqwest::Client,
    base: String,
    device: DeviceCredentials,
}

fn segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl HubClient {
    /// A client for the hub named by the settings, trusting the hub's CA.
    pub fn new(config: &EdgeConfig) -> Result<Self, HubClientError> {
        let device = config.device().map_err(HubClientError::Setup)?;
        let pem = std::fs::read(&config.hub_ca).map_err(|e| {
            HubClientError::Setup(format!(
                "cannot read hub_ca {}: {e}",
                config.hub_ca.display()
            ))
        })?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(Duration::from_secs(20));
        for certificate in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| HubClientError::Setup(format!("hub_ca is not PEM: {e}")))?
        {
            builder = builder.add_root_certificate(certificate);
        }
        let http = builder
            .build()
            .map_err(|e| HubClientError::Setup(e.to_string()))?;
        let base = format!("https://{}:{}", device.hub_hostname, config.hub_https_port);
        Ok(Self { http, base, device })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, HubClientError> {
        let expiry = chrono::Utc::now().timestamp().max(0) as u64 + TOKEN_TTL_SECS;
        let token = outpost_core::device_token(
            &self.device.hub_hostname,
            &self.device.device_id,
            &self.device.key,
            expiry,
        )
        .map_err(|e| HubClientError::Setup(format!("cannot sign with the device key: {e}")))?;
        let url = format!("{}{path}?api-version=2021-04-12", self.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .header("Authorization", token);
        if method == Method::DELETE {
            request = request.header("If-Match", "\"*\"");
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| HubClientError::Unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| HubClientError::Unreachable(e.to_string()))?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let message = String::from_utf8_lossy(&bytes).into_owned();
            return Err(HubClientError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        if bytes.is_empty() {
            return Ok(Some(Value::Null));
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| HubClientError::Unreachable(format!("invalid JSON from the hub: {e}")))
    }

    /// Reads a module identity of this device, creating it (`managedBy: IotEdge`, generated keys) when missing.
    pub async fn ensure_module(&self, module: &str) -> Result<ModuleCredentials, HubClientError> {
        let path = format!(
            "/devices/{}/modules/{}",
            segment(&self.device.device_id),
            segment(module)
        );
        let found = if let Some(found) = self.call(Method::GET, &path, None).await? {
            found
        } else {
            let body = json!({
                "deviceId": self.device.device_id,
                "moduleId": module,
                "managedBy": "IotEdge",
                "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}},
            });
            self.call(Method::PUT, &path, Some(&body))
                .await?
                .ok_or_else(|| HubClientError::Refused {
                    status: 404,
                    message: "the device is gone".into(),
                })?
        };
        let text = |pointer: &str| {
            found
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Ok(ModuleCredentials {
            module_id: module.to_owned(),
            generation_id: text("/generationId"),
            primary_key: text("/authentication/symmetricKey/primaryKey"),
            secondary_key: text("/authentication/symmetricKey/secondaryKey"),
        })
    }

    /// Deletes a module identity of this device (a missing one is fine).
    pub async fn delete_module(&self, module: &str) -> Result<(), HubClientError> {
        let path = format!(
            "/devices/{}/modules/{}",
            segment(&self.device.device_id),
            segment(module)
        );
        self.call(Method::DELETE, &path, None).await.map(drop)
    }

    /// Whether the hub answers this device, and the hub's clock (its `Date` header) for `outpost edge check`.
    pub async fn reachable(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>, HubClientError> {
        let expiry = chrono::Utc::now().timestamp().max(0) as u64 + TOKEN_TTL_SECS;
        let token = outpost_core::device_token(
            &self.device.hub_hostname,
            &self.device.device_id,
            &self.device.key,
            expiry,
        )
        .map_err(|e| HubClientError::Setup(format!("cannot sign with the device key: {e}")))?;
        let url = format!(
            "{}/devices/{}/modules?api-version=2021-04-12",
            self.base,
            segment(&self.device.device_id)
        );
        let response = self
            .http
            .get(&url)
            .header("Authorization", token)
            .send()
            .await
            .map_err(|e| HubClientError::Unreachable(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let message = response.text().await.unwrap_or_default();
            return Err(HubClientError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        let date = response
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|d| d.to_str().ok())
            .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok())
            .map(|d| d.with_timezone(&chrono::Utc));
        Ok(date)
    }
}
