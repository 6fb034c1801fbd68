//! The edge runtime's workload API, as a module calls it (AZURE-COMPAT §6.2): HTTP/1.1 over a Unix socket,
//! for the trust bundle (the CA of the gateway's certificate) and for signatures made with the module's key,
//! which never leaves the runtime. Every body is a type of [`outpost_core::workload_api`], the contract the
//! runtime's side imports too.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use outpost_core::workload_api::{SignRequest, SignResponse, TrustBundleResponse};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::quote::quote;

/// Time allowed for one call to the workload API.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a workload API call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WorkloadError {
    /// The URI is not `unix:///path`.
    #[error("unsupported workload URI {0:?} (expected unix:///path/to/workload.sock)")]
    UnsupportedUri(String),
    /// The socket could not be reached or the exchange broke.
    #[error("workload API at {socket}: {reason}")]
    Unreachable {
        /// The socket path.
        socket: String,
        /// What failed.
        reason: String,
    },
    /// The workload API answered with an error status.
    #[error("workload API {call} answered {status}: {message}")]
    Status {
        /// Which call (`trust-bundle`, `sign`).
        call: &'static str,
        /// The HTTP status.
        status: u16,
        /// Its `message`.
        message: String,
    },
    /// The answer is not the JSON the API documents.
    #[error("workload API {call} answered something unexpected: {reason}")]
    Malformed {
        /// Which call.
        call: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// A client of the workload API of one edge runtime.
///
/// ```
/// use outpost_sdk::WorkloadClient;
///
/// let workload = WorkloadClient::new("unix:///var/run/iotedge/workload.sock", "2022-08-03").unwrap();
/// assert_eq!(workload.socket().to_str(), Some("/var/run/iotedge/workload.sock"));
/// assert!(WorkloadClient::new("http://localhost:15580", "2022-08-03").is_err());
/// ```
#[derive(Debug, Clone)]
pub struct WorkloadClient {
    socket: PathBuf,
    api_version: String,
}

impl WorkloadClient {
    /// A client for `uri` (`IOTEDGE_WORKLOADURI`, `unix:///...`) speaking `api_version` (`IOTEDGE_APIVERSION`).
    pub fn new(uri: &str, api_version: &str) -> Result<Self, WorkloadError> {
        let path = uri
            .strip_prefix("unix://")
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| WorkloadError::UnsupportedUri(uri.to_owned()))?;
        Ok(Self {
            socket: PathBuf::from(path),
            api_version: api_version.to_owned(),
        })
    }

    /// The socket path.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// `GET /trust-bundle`: the PEM certificates that the gateway's server certificate chains to.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), outpost_sdk::WorkloadError> {
    /// let workload = outpost_sdk::WorkloadClient::new("unix:///var/run/iotedge/workload.sock", "2022-08-03")?;
    /// let pem = workload.trust_bundle().await?;
    /// assert!(pem.contains("BEGIN CERTIFICATE"));
    /// # Ok(()) }
    /// ```
    pub async fn trust_bundle(&self) -> Result<String, WorkloadError> {
        let uri = format!("/trust-bundle?api-version={}", quote(&self.api_version));
        let answer: TrustBundleResponse = self
            .call("trust-bundle", http::Method::GET, &uri, None::<&()>)
            .await?;
        Ok(answer.certificate)
    }

    /// `POST /modules/{module}/genid/{generation}/sign`: `base64(HMAC-SHA256(module key, data))` made by the
    /// runtime with the module's primary key.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), outpost_sdk::WorkloadError> {
    /// let workload = outpost_sdk::WorkloadClient::new("unix:///var/run/iotedge/workload.sock", "2022-08-03")?;
    /// let digest = workload.sign("filter", "638000000000000000", b"hub%2Fdevices%2Fd\n1795455770").await?;
    /// # Ok(()) }
    /// ```
    pub async fn sign(
        &self,
        module: &str,
        generation_id: &str,
        data: &[u8],
    ) -> Result<String, WorkloadError> {
        let uri = sign_path(module, generation_id, &self.api_version);
        let answer: SignResponse = self
            .call(
                "sign",
                http::Method::POST,
                &uri,
                Some(&SignRequest::primary(data)),
            )
            .await?;
        Ok(answer.digest)
    }

    /// Sends `body` and reads the answer as `A`.
    async fn call<A: DeserializeOwned>(
        &self,
        call: &'static str,
        method: http::Method,
        uri: &str,
        body: Option<&impl Serialize>,
    ) -> Result<A, WorkloadError> {
        let unreachable = |reason: String| WorkloadError::Unreachable {
            socket: self.socket.display().to_string(),
            reason,
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, "localhost")
            .header(
                http::header::USER_AGENT,
                concat!("outpost-sdk-rust/", env!("CARGO_PKG_VERSION")),
            );
        let body = match body {
            Some(body) => {
                request = request.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(
                    serde_json::to_vec(body)
                        .map_err(|e| unreachable(format!("cannot encode the request: {e}")))?,
                )
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(body))
            .map_err(|e| unreachable(format!("cannot build the request: {e}")))?;
        let exchange = async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            crate::http::exchange(stream, request)
                .await
                .map_err(|e| unreachable(e.to_string()))
        };
        let (status, body) = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {CALL_TIMEOUT:?}")))??;
        if !status.is_success() {
            return Err(WorkloadError::Status {
                call,
                status: status.as_u16(),
                message: crate::error::error_message(&body),
            });
        }
        serde_json::from_slice(&body).map_err(|e| WorkloadError::Malformed {
            call,
            reason: e.to_string(),
        })
    }
}

/// `/modules/{quote(module)}/genid/{quote(generation)}/sign?api-version=..`.
fn sign_path(module: &str, generation_id: &str, api_version: &str) -> String {
    format!(
        "/modules/{}/genid/{}/sign?api-version={}",
        quote(module),
        quote(generation_id),
        quote(api_version)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sign_path_quotes_the_module_id_as_the_python_sdk_does() {
        assert_eq!(
            sign_path("$edgeHub", "6380", "2022-08-03"),
            "/modules/%24edgeHub/genid/6380/sign?api-version=2022-08-03"
        );
    }

    #[test]
    fn only_absolute_unix_uris_are_accepted() {
        assert!(WorkloadClient::new("unix:///run/w.sock", "v").is_ok());
        for uri in ["unix://relative.sock", "http://127.0.0.1:15580", ""] {
            assert!(
                matches!(
                    WorkloadClient::new(uri, "v"),
                    Err(WorkloadError::UnsupportedUri(_))
                ),
                "{uri}"
            );
        }
    }
}
