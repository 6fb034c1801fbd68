//! The service side of a benchmark: the hub's REST API as azure-iot-hub calls it (HTTPS, a SAS token of the
//! `iothubowner` policy, api-version 2021-04-12), over a pool of keep-alive connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use outpost_core::ConnectionString;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::device::DeviceCredentials;
use crate::hub_process::HubProcess;

/// The api-version azure-iot-hub 2.7.0 sends.
const API_VERSION: &str = "2021-04-12";

/// Tokens the harness signs live this long: longer than any run.
const TOKEN_TTL_SECS: u64 = 3600;

/// A request that takes longer than this failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a REST call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request did not get an answer (connection, TLS or timeout).
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// The hub answered with an error status.
    #[error("the hub answered {status}: {body}")]
    Refused {
        /// The HTTP status.
        status: reqwest::StatusCode,
        /// The answer's body.
        body: String,
    },
}

/// A client of the hub's REST API.
pub struct ServiceApi {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl ServiceApi {
    /// A client of `hub` that keeps up to `pool` idle connections open for reuse.
    pub fn new(hub: &HubProcess, pool: usize) -> anyhow::Result<Self> {
        let connection: ConnectionString = hub
            .connection_string
            .parse()
            .map_err(|e| anyhow!("the hub's connection string does not parse: {e}"))?;
        let (Some(policy), Some(key)) = (
            &connection.shared_access_key_name,
            &connection.shared_access_key,
        ) else {
            bail!("the hub's connection string has no SharedAccessKeyName and SharedAccessKey");
        };
        let expiry = chrono::Utc::now().timestamp().max(0) as u64 + TOKEN_TTL_SECS;
        let token = outpost_core::service_token(&connection.host_name, policy, key, expiry)
            .map_err(|e| anyhow!("cannot sign a service token: {e}"))?;
        let pem = std::fs::read(hub.ca_pem())
            .with_context(|| format!("cannot read {}", hub.ca_pem().display()))?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(pool)
            .timeout(REQUEST_TIMEOUT);
        for certificate in reqwest::Certificate::from_pem_bundle(&pem)? {
            builder = builder.add_root_certificate(certificate);
        }
        Ok(Self {
            http: builder.build()?,
            base: format!("https://{}", connection.host_name),
            token,
        })
    }

    /// Creates a device with generated symmetric keys (empty keys ask the hub for them); returns it with
    /// its primary key.
    pub async fn create_device(&self, id: &str) -> anyhow::Result<DeviceCredentials> {
        let body = json!({
            "deviceId": id,
            "status": "enabled",
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}},
        });
        let response = self
            .http
            .put(format!(
                "{}/devices/{id}?api-version={API_VERSION}",
                self.base
            ))
            .header("Authorization", &self.token)
            .json(&body)
            .send()
            .await?;
        let answer: Value = checked(response).await?.json().await?;
        let key = answer
            .pointer("/authentication/symmetricKey/primaryKey")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .with_context(|| format!("the hub created {id} without a primary key: {answer}"))?;
        Ok(DeviceCredentials {
            id: id.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Creates an IoT Edge device (capabilities.iotEdge) with generated keys.
    pub async fn create_edge_device(&self, id: &str) -> anyhow::Result<DeviceCredentials> {
        let body = json!({
            "deviceId": id,
            "status": "enabled",
            "capabilities": {"iotEdge": true},
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}},
        });
        let answer = self.put(&format!("/devices/{id}"), &body).await?;
        primary_key(id, &answer)
    }

    /// Creates module `module` of `device` with generated keys; returns the module id and its primary key.
    pub async fn create_module(
        &self,
        device: &str,
        module: &str,
    ) -> anyhow::Result<DeviceCredentials> {
        let body = json!({
            "deviceId": device,
            "moduleId": module,
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}},
        });
        let answer = self
            .put(&format!("/devices/{device}/modules/{module}"), &body)
            .await?;
        primary_key(module, &answer)
    }

    /// `POST /devices/{device}/applyConfigurationContent`: deploys a manifest to an edge device.
    pub async fn apply_configuration(&self, device: &str, manifest: &Value) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!(
                "{}/devices/{device}/applyConfigurationContent?api-version={API_VERSION}",
                self.base
            ))
            .header("Authorization", &self.token)
            .json(manifest)
            .send()
            .await?;
        checked(response).await?.bytes().await?;
        Ok(())
    }

    /// `GET /twins/{device}/modules/{module}` (`$` percent-encoded).
    pub async fn module_twin(&self, device: &str, module: &str) -> anyhow::Result<Value> {
        let module = module.replace('$', "%24");
        let response = self
            .http
            .get(format!(
                "{}/twins/{device}/modules/{module}?api-version={API_VERSION}",
                self.base
            ))
            .header("Authorization", &self.token)
            .send()
            .await?;
        Ok(checked(response).await?.json().await?)
    }

    async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self
            .http
            .put(format!("{}{path}?api-version={API_VERSION}", self.base))
            .header("Authorization", &self.token)
            .json(body)
            .send()
            .await?;
        Ok(checked(response).await?.json().await?)
    }

    /// `PATCH /twins/{device}` with `If-Match: *`: merges `body` (a twin JSON text) into the twin.
    pub async fn patch_twin(&self, device: &str, body: String) -> Result<(), ServiceError> {
        let response = self
            .http
            .patch(format!(
                "{}/twins/{device}?api-version={API_VERSION}",
                self.base
            ))
            .header("Authorization", &self.token)
            .header("If-Match", "\"*\"")
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await?;
        // Read the body so that the connection goes back to the pool.
        checked(response).await?.bytes().await?;
        Ok(())
    }
}

impl ServiceApi {
    /// `POST /devices`: one bulk registry operation over `devices` (`ExportImportDevice`s); its result, which
    /// must say that every device succeeded.
    pub async fn bulk(&self, devices: &Value) -> Result<(), ServiceError> {
        let response = self
            .http
            .post(format!("{}/devices?api-version={API_VERSION}", self.base))
            .header("Authorization", &self.token)
            .json(devices)
            .send()
            .await?;
        checked(response).await?.bytes().await?;
        Ok(())
    }

    /// `POST /devices/query`: one page of `query`'s rows, and the continuation token when more remain.
    pub async fn query_page(
        &self,
        query: &str,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>), ServiceError> {
        let mut request = self
            .http
            .post(format!(
                "{}/devices/query?api-version={API_VERSION}",
                self.base
            ))
            .header("Authorization", &self.token)
            .header("x-ms-max-item-count", page_size.to_string())
            .json(&json!({ "query": query }));
        if let Some(token) = continuation {
            request = request.header("x-ms-continuation", token);
        }
        let response = checked(request.send().await?).await?;
        let next = response
            .headers()
            .get("x-ms-continuation")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let rows: Vec<Value> = response.json().await?;
        Ok((rows, next))
    }
}

fn primary_key(id: &str, answer: &Value) -> anyhow::Result<DeviceCredentials> {
    let key = answer
        .pointer("/authentication/symmetricKey/primaryKey")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .with_context(|| format!("the hub created {id} without a primary key: {answer}"))?;
    Ok(DeviceCredentials {
        id: id.to_owned(),
        key: key.to_owned(),
    })
}

async fn checked(response: reqwest::Response) -> Result<reqwest::Response, ServiceError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(ServiceError::Refused { status, body })
}

/// Devices created, and how long the registry took.
pub struct CreatedDevices {
    /// The devices, in the order of `ids`.
    pub devices: Vec<DeviceCredentials>,
    /// Time from the first request to the last answer.
    pub elapsed: Duration,
}

/// Creates devices `ids` with `concurrency` requests in flight.
pub async fn create_devices(
    api: &Arc<ServiceApi>,
    ids: Vec<String>,
    concurrency: usize,
) -> anyhow::Result<CreatedDevices> {
    let started = Instant::now();
    let total = ids.len();
    let mut pending = ids.into_iter().enumerate();
    let mut tasks = JoinSet::new();
    let mut devices: Vec<Option<DeviceCredentials>> = vec![None; total];
    let spawn = |tasks: &mut JoinSet<_>, (index, id): (usize, String)| {
        let api = Arc::clone(api);
        tasks.spawn(async move { (index, api.create_device(&id).await) });
    };
    for next in pending.by_ref().take(concurrency.max(1)) {
        spawn(&mut tasks, next);
    }
    while let Some(joined) = tasks.join_next().await {
        let (index, created) = joined.context("a device-creating task failed")?;
        devices[index] = Some(created.context("cannot create a device")?);
        if let Some(next) = pending.next() {
            spawn(&mut tasks, next);
        }
    }
    Ok(CreatedDevices {
        devices: devices.into_iter().flatten().collect(),
        elapsed: started.elapsed(),
    })
}
