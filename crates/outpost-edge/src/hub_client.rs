//! The edge device's REST client of the hub: it manages the module identities this device owns, authenticated
//! with the device's own SAS token (the hub lets an edge device manage its modules).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::config::EdgeConfig;
use crate::hub_http::{segment, HubHttp, HubRequestError, HubSetupError};
use crate::identities::ModuleCredentials;

/// Errors talking to the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubClientError {
    /// The hub could not be reached (offline).
    #[error("the hub is unreachable: {0}")]
    Unreachable(#[from] HubRequestError),
    /// The hub's answer is not the JSON its API documents.
    #[error("invalid JSON from the hub: {0}")]
    Malformed(#[source] serde_json::Error),
    /// A request's body could not be encoded.
    #[error("cannot encode a request to the hub: {0}")]
    Encode(#[source] serde_json::Error),
    /// The hub answered with an error.
    #[error("the hub answered {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The hub's message.
        message: String,
    },
    /// The settings do not allow a connection (bad CA file, bad key).
    #[error(transparent)]
    Setup(#[from] HubSetupError),
}

/// A REST client of the hub acting as the edge device.
pub struct HubClient {
    http: HubHttp,
}

impl HubClient {
    /// A client for the hub named by the settings, trusting the hub's CA.
    pub fn new(config: &EdgeConfig) -> Result<Self, HubClientError> {
        Ok(Self {
            http: HubHttp::new(config, Duration::from_secs(20))?,
        })
    }

    fn modules_path(&self) -> String {
        format!(
            "/devices/{}/modules",
            segment(&self.http.device().device_id)
        )
    }

    /// Sends a request; `None` for 404.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, HubClientError> {
        let if_match = (method == Method::DELETE).then_some("*");
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(HubClientError::Encode)?;
        let answer = self.http.send(method, path, body, if_match).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !answer.status.is_success() {
            return Err(HubClientError::Refused {
                status: answer.status.as_u16(),
                message: answer.text(),
            });
        }
        if answer.body.is_empty() {
            return Ok(Some(Value::Null));
        }
        serde_json::from_slice(&answer.body)
            .map(Some)
            .map_err(HubClientError::Malformed)
    }

    /// Reads a module identity of this device, creating it (`managedBy: IotEdge`, generated keys) when missing.
    pub async fn ensure_module(&self, module: &str) -> Result<ModuleCredentials, HubClientError> {
        let path = format!("{}/{}", self.modules_path(), segment(module));
        let found = if let Some(found) = self.call(Method::GET, &path, None).await? {
            found
        } else {
            let body = json!({
                "deviceId": self.http.device().device_id,
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
        let path = format!("{}/{}", self.modules_path(), segment(module));
        self.call(Method::DELETE, &path, None).await.map(drop)
    }

    /// Whether the hub answers this device, and the hub's clock (its `Date` header) for `outpost edge check`.
    pub async fn reachable(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>, HubClientError> {
        let answer = self
            .http
            .send(Method::GET, &self.modules_path(), None, None)
            .await?;
        if !answer.status.is_success() {
            return Err(HubClientError::Refused {
                status: answer.status.as_u16(),
                message: answer.text(),
            });
        }
        Ok(answer.date)
    }
}
