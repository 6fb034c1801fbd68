//! A client of the hub's REST service API, authenticated with a shared access policy's SAS token.

use std::time::Duration;

use anyhow::{bail, Context as _};
use outpost_core::ConnectionString;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::HubArgs;

/// The api-version Outpost's CLI speaks (the same as azure-iot-hub 2.7.0).
const API_VERSION: &str = "2021-04-12";
/// Tokens the CLI makes live this long.
const TOKEN_TTL_SECS: u64 = 3600;

/// A connection to the hub's REST API.
pub struct ServiceClient {
    http: reqwest::Client,
    base: String,
    token: String,
    /// The hub's host name without a port (what device connection strings carry).
    pub host_name: String,
}

/// An error answered by the hub.
#[derive(Debug, thiserror::Error)]
#[error("the hub answered {status}: {message}")]
pub struct HubRefusal {
    /// The HTTP status.
    pub status: StatusCode,
    /// The hub's message.
    pub message: String,
}

impl ServiceClient {
    /// Connects as the `--hub` connection string says, trusting `--ca`.
    pub fn new(args: &HubArgs) -> anyhow::Result<Self> {
        let text = args.connection_string.as_deref().context(
            "no hub given: pass --hub CONNECTION_STRING or set OUTPOST_HUB_CONNECTION_STRING",
        )?;
        let connection: ConnectionString = text
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid hub connection string: {e}"))?;
        let (Some(policy), Some(key)) = (
            &connection.shared_access_key_name,
            &connection.shared_access_key,
        ) else {
            bail!("the hub connection string needs SharedAccessKeyName and SharedAccessKey");
        };
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(Duration::from_secs(330));
        if let Some(ca) = &args.ca {
            let pem = std::fs::read(ca)
                .with_context(|| format!("cannot read the CA file {}", ca.display()))?;
            for certificate in
                reqwest::Certificate::from_pem_bundle(&pem).context("the CA file is not PEM")?
            {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let expiry = chrono::Utc::now().timestamp().max(0) as u64 + TOKEN_TTL_SECS;
        let token = outpost_core::service_token(&connection.host_name, policy, key, expiry)
            .map_err(|e| anyhow::anyhow!("cannot sign a token with the hub key: {e}"))?;
        let (host, _port) = connection.host_and_port();
        Ok(Self {
            http: builder.build()?,
            base: format!("https://{}", connection.host_name),
            token,
            host_name: host.to_owned(),
        })
    }

    /// Sends a request and returns the JSON answer (`Value::Null` for an empty one).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut request = self.request(method, path);
        if let Some(etag) = if_match {
            request = request.header("If-Match", format!("\"{etag}\""));
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        Ok(self.send(request).await?.0)
    }

    /// Asks for one page of a query's rows (`POST /devices/query`): the rows, and the continuation token of the
    /// next page when there is one.
    pub async fn query_page(
        &self,
        query: &str,
        page_size: usize,
        continuation: Option<&str>,
    ) -> anyhow::Result<(Vec<Value>, Option<String>)> {
        let mut request = self
            .request(Method::POST, "/devices/query")
            .header("x-ms-max-item-count", page_size.to_string())
            .json(&serde_json::json!({ "query": query }));
        if let Some(token) = continuation {
            request = request.header("x-ms-continuation", token);
        }
        let (rows, headers) = self.send(request).await?;
        let next = headers
            .get("x-ms-continuation")
            .and_then(|v| v.to_str().ok())
            .filter(|token| !token.is_empty())
            .map(str::to_owned);
        match rows {
            Value::Array(rows) => Ok((rows, next)),
            other => bail!("the hub answered a query with {other} instead of a list"),
        }
    }

    /// A request to `path` with the api-version and the token.
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let separator = if path.contains('?') { '&' } else { '?' };
        let url = format!("{}{path}{separator}api-version={API_VERSION}", self.base);
        self.http
            .request(method, &url)
            .header("Authorization", &self.token)
    }

    /// Sends a request; the JSON answer (`Value::Null` for an empty one) with the response's headers.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<(Value, reqwest::header::HeaderMap)> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the hub at {}", self.base))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("Message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(HubRefusal { status, message }.into());
        }
        if bytes.is_empty() {
            return Ok((Value::Null, headers));
        }
        let value = serde_json::from_slice(&bytes).context("the hub answered with invalid JSON")?;
        Ok((value, headers))
    }
}

/// A path segment percent-encoded as the service SDK does it (`$edgeAgent` → `%24edgeAgent`): core's one
/// percent-encoding, `urllib.parse.quote(s, safe="")`.
pub use outpost_core::quote::quote as segment;
