//! Direct methods both ways: calls the hub delivers to this client (answered over MQTT), and calls a
//! module makes on another module or device through its gateway, over HTTPS (AZURE-COMPAT §1.6).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use outpost_core::Identity;
use serde_json::{json, Value};

use crate::error::ClientError;
use crate::quote::{quote, quote_plus};
use crate::requests::{Command, Requester};
use crate::topics;

/// The api-version of the gateway's method endpoint, as azure-iot-device sends it.
const METHOD_API_VERSION: &str = "2019-10-01";

/// The gateway's default time to wait for the target's answer (edgeHub: 30 s).
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// A direct method call delivered to this client; answer it with [`respond`](Self::respond).
///
/// ```no_run
/// # async fn run(client: outpost_sdk::DeviceClient) -> Result<(), outpost_sdk::ClientError> {
/// let mut calls = client.direct_methods().await?;
/// while let Some(call) = calls.next().await {
///     match call.name() {
///         "reset" => call.respond(200, serde_json::json!({"reset": true})).await?,
///         _ => call.respond(404, serde_json::json!({"message": "no such method"})).await?,
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MethodCall {
    name: String,
    rid: String,
    payload: Value,
    responder: Requester,
}

impl MethodCall {
    pub(crate) fn new(name: String, rid: String, payload: Value, responder: Requester) -> Self {
        Self {
            name,
            rid,
            payload,
            responder,
        }
    }

    /// The method's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The JSON payload of the call (`null` when it had none).
    pub fn payload(&self) -> &Value {
        &self.payload
    }

    /// The request id the hub gave the call.
    pub fn request_id(&self) -> &str {
        &self.rid
    }

    /// Answers the call with a status (200 for success, by convention) and a JSON payload; returns once the
    /// hub acknowledged the answer.
    pub async fn respond(
        self,
        status: i32,
        payload: impl serde::Serialize,
    ) -> Result<(), ClientError> {
        let payload = serde_json::to_vec(&payload).map_err(|e| {
            ClientError::Configuration(format!("the method answer is not JSON: {e}"))
        })?;
        let topic = topics::method_response(status, &self.rid);
        self.responder
            .request("method response", |reply| Command::Publish {
                topic,
                payload: Bytes::from(payload),
                reply,
            })
            .await
    }
}

/// Whom a module calls a method on.
///
/// ```
/// use outpost_sdk::MethodTarget;
/// let target = MethodTarget::module("edge-1", "filter");
/// assert_eq!(target.to_string(), "edge-1/filter");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodTarget {
    /// A device (a leaf device behind the same gateway).
    Device(String),
    /// A module.
    Module {
        /// Its device.
        device: String,
        /// Its name.
        module: String,
    },
}

impl MethodTarget {
    /// A device.
    pub fn device(device: impl Into<String>) -> Self {
        Self::Device(device.into())
    }

    /// A module of a device.
    pub fn module(device: impl Into<String>, module: impl Into<String>) -> Self {
        Self::Module {
            device: device.into(),
            module: module.into(),
        }
    }

    /// `/twins/{d}[/modules/{m}]/methods`, ids encoded with `quote_plus` as the Python SDK does.
    fn path(&self) -> String {
        match self {
            Self::Device(device) => format!("/twins/{}/methods", quote_plus(device)),
            Self::Module { device, module } => format!(
                "/twins/{}/modules/{}/methods",
                quote_plus(device),
                quote_plus(module)
            ),
        }
    }
}

impl std::fmt::Display for MethodTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Device(device) => f.write_str(device),
            Self::Module { device, module } => write!(f, "{device}/{module}"),
        }
    }
}

/// A method call a module makes.
///
/// ```
/// use std::time::Duration;
/// use outpost_sdk::MethodInvocation;
///
/// let call = MethodInvocation::new("reset", serde_json::json!({"hard": false}))
///     .with_response_timeout(Duration::from_secs(10));
/// assert_eq!(call.body()["responseTimeoutInSeconds"], 10);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MethodInvocation {
    /// The method's name (at most 100 characters).
    pub method_name: String,
    /// The JSON payload.
    pub payload: Value,
    /// How long the gateway waits for the target's answer (5..=300 s; the gateway's default is 30 s).
    pub response_timeout: Option<Duration>,
    /// How long the gateway waits for the target to connect (0..=300 s; default 0: fail at once).
    pub connect_timeout: Option<Duration>,
}

impl MethodInvocation {
    /// A call of `method_name` with `payload` and the gateway's default timeouts.
    pub fn new(method_name: impl Into<String>, payload: Value) -> Self {
        Self {
            method_name: method_name.into(),
            payload,
            response_timeout: None,
            connect_timeout: None,
        }
    }

    /// Sets the response timeout.
    #[must_use]
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = Some(timeout);
        self
    }

    /// Sets the connect timeout.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The request body: `{"methodName", "payload", "responseTimeoutInSeconds"?, "connectTimeoutInSeconds"?}`.
    pub fn body(&self) -> Value {
        let mut body = json!({"methodName": self.method_name, "payload": self.payload});
        if let Some(timeout) = self.response_timeout {
            body["responseTimeoutInSeconds"] = timeout.as_secs().into();
        }
        if let Some(timeout) = self.connect_timeout {
            body["connectTimeoutInSeconds"] = timeout.as_secs().into();
        }
        body
    }

    /// How long to wait for the gateway's HTTP answer: its own waits plus ten seconds.
    fn http_timeout(&self) -> Duration {
        self.response_timeout.unwrap_or(DEFAULT_RESPONSE_TIMEOUT)
            + self.connect_timeout.unwrap_or_default()
            + Duration::from_secs(10)
    }
}

/// The target's answer to a method call.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodResult {
    /// The status the target answered with.
    pub status: i32,
    /// The payload it answered with.
    pub payload: Value,
}

/// Everything a module needs to call a method through its gateway.
pub(crate) struct Invoker<'a> {
    /// The gateway's host name (dialled, and checked against its certificate).
    pub(crate) gateway: &'a str,
    /// Its HTTPS port.
    pub(crate) port: u16,
    /// TLS with the trust bundle.
    pub(crate) tls: std::sync::Arc<rustls::ClientConfig>,
    /// The calling module.
    pub(crate) caller: &'a Identity,
    /// The caller's SAS token.
    pub(crate) token: &'a str,
    /// The user agent.
    pub(crate) user_agent: &'a str,
}

impl Invoker<'_> {
    /// The HTTP request of a call (AZURE-COMPAT §1.6).
    pub(crate) fn request(
        &self,
        target: &MethodTarget,
        invocation: &MethodInvocation,
    ) -> Result<http::Request<Full<Bytes>>, ClientError> {
        http::Request::builder()
            .method(http::Method::POST)
            .uri(format!(
                "{}?api-version={METHOD_API_VERSION}",
                target.path()
            ))
            .header(http::header::HOST, self.gateway)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-ms-edge-moduleId", self.caller.client_id())
            .header(http::header::AUTHORIZATION, self.token)
            .header(http::header::USER_AGENT, quote(self.user_agent))
            .body(Full::new(Bytes::from(invocation.body().to_string())))
            .map_err(|e| {
                ClientError::Configuration(format!("cannot build the method request: {e}"))
            })
    }

    /// Sends a call and reads the answer.
    pub(crate) async fn invoke(
        &self,
        target: &MethodTarget,
        invocation: &MethodInvocation,
    ) -> Result<MethodResult, ClientError> {
        let request = self.request(target, invocation)?;
        let target_address = format!("{}:{}", self.gateway, self.port);
        let exchange = async {
            let name = crate::tls::server_name(self.gateway)?;
            let tcp = tokio::net::TcpStream::connect((self.gateway, self.port))
                .await
                .map_err(|e| {
                    ClientError::connection(format!("cannot reach {target_address}"), e)
                })?;
            let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(&self.tls))
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    ClientError::connection(format!("TLS with {target_address} failed"), e)
                })?;
            crate::http::exchange(tls, request).await.map_err(|e| {
                ClientError::connection_closed(format!("method call to {target_address}: {e}"))
            })
        };
        let (status, body) = tokio::time::timeout(invocation.http_timeout(), exchange)
            .await
            .map_err(|_| {
                ClientError::Timeout(format!(
                    "method {} on {target}: no answer from {target_address}",
                    invocation.method_name
                ))
            })??;
        if !status.is_success() {
            return Err(ClientError::from_status(
                status.as_u16(),
                format!(
                    "method {} on {target}: {}",
                    invocation.method_name,
                    crate::error::error_message(&body)
                ),
            ));
        }
        parse_result(&body)
    }
}

/// Reads `{"status": int, "payload": any}`.
fn parse_result(body: &[u8]) -> Result<MethodResult, ClientError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ClientError::Protocol(format!("the method answer is not JSON: {e}")))?;
    let status = value
        .get("status")
        .and_then(Value::as_i64)
        .and_then(|s| i32::try_from(s).ok())
        .ok_or_else(|| ClientError::Protocol("the method answer has no integer status".into()))?;
    Ok(MethodResult {
        status,
        payload: value.get("payload").cloned().unwrap_or(Value::Null),
    })
}

#[cfg(test)]
mod tests {
    use outpost_core::{DeviceId, ModuleId};

    use super::*;

    fn invoker(caller: &Identity) -> Invoker<'_> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Invoker {
            gateway: "edge.local",
            port: 443,
            tls: std::sync::Arc::new(tls),
            caller,
            token: "SharedAccessSignature sr=x&sig=y&se=1",
            user_agent: "outpost-sdk-rust/0.1",
        }
    }

    #[test]
    fn a_module_method_request_matches_what_the_python_sdk_sends() {
        let caller = Identity::module(
            DeviceId::new("edge-1").unwrap(),
            ModuleId::new("sensor").unwrap(),
        );
        let invocation = MethodInvocation::new("ping", json!({"x": 1}))
            .with_response_timeout(Duration::from_secs(10))
            .with_connect_timeout(Duration::from_secs(5));
        let request = invoker(&caller)
            .request(&MethodTarget::module("edge 1", "$edgeHub"), &invocation)
            .unwrap();
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(
            request.uri().to_string(),
            "/twins/edge+1/modules/%24edgeHub/methods?api-version=2019-10-01"
        );
        let headers = request.headers();
        assert_eq!(headers["host"], "edge.local");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-ms-edge-moduleId"], "edge-1/sensor");
        assert_eq!(
            headers["authorization"],
            "SharedAccessSignature sr=x&sig=y&se=1"
        );
        assert_eq!(headers["user-agent"], "outpost-sdk-rust%2F0.1");
        assert_eq!(
            invocation.body(),
            json!({"methodName": "ping", "payload": {"x": 1}, "responseTimeoutInSeconds": 10, "connectTimeoutInSeconds": 5})
        );
    }

    #[test]
    fn a_device_target_has_no_modules_segment_and_timeouts_are_left_out_when_unset() {
        let caller = Identity::module(DeviceId::new("e").unwrap(), ModuleId::new("m").unwrap());
        let invocation = MethodInvocation::new("reboot", Value::Null);
        let request = invoker(&caller)
            .request(&MethodTarget::device("leaf-1"), &invocation)
            .unwrap();
        assert_eq!(
            request.uri().to_string(),
            "/twins/leaf-1/methods?api-version=2019-10-01"
        );
        assert_eq!(
            invocation.body(),
            json!({"methodName": "reboot", "payload": null})
        );
        assert_eq!(invocation.http_timeout(), Duration::from_secs(40));
    }

    #[test]
    fn the_answer_is_status_and_payload() {
        assert_eq!(
            parse_result(br#"{"status": 200, "payload": {"ok": true}}"#).unwrap(),
            MethodResult {
                status: 200,
                payload: json!({"ok": true})
            }
        );
        assert!(matches!(
            parse_result(br#"{"payload": 1}"#),
            Err(ClientError::Protocol(_))
        ));
    }
}
