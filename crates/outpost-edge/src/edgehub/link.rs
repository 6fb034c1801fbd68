//! The edge hub's end of the upstream link: one HTTP/2 connection to the hub that carries every identity behind
//! this device (presence, a long poll for pushes, telemetry batches, twins and acks on behalf of clients).

use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde_json::{json, Value};

use crate::config::EdgeConfig;
use crate::hub_http::{segment, HubHttp};
use outpost_core::Message;

/// Errors of the link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The hub is unreachable: everything waits for it.
    #[error("the hub is unreachable: {0}")]
    Unreachable(String),
    /// The hub refused the request; retrying the same will not help.
    #[error("the hub refused: {status} {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The hub's message.
        message: String,
    },
    /// The settings do not allow a link.
    #[error("{0}")]
    Setup(String),
}

/// One telemetry message of a batch, as the hub's `/edge/{device}/messages` reads it.
#[derive(Debug, Serialize)]
pub struct UpstreamMessage<'a> {
    /// The client that sent it (`device` or `device/module`).
    pub client: &'a str,
    /// The message (its body in base64).
    pub message: &'a Message,
}

/// The bytes of a batch's body around its messages: `{"messages":[]}`.
pub const BATCH_ENVELOPE_BYTES: usize = r#"{"messages":[]}"#.len();

impl UpstreamMessage<'_> {
    /// Its size in a batch's JSON body, the comma before it included.
    pub fn encoded_len(&self) -> usize {
        /// Counts what is written and keeps nothing: the size without a second copy of the message.
        struct Counter(usize);
        impl std::io::Write for Counter {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0 += bytes.len();
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut counter = Counter(1);
        // Serialising plain strings and maps into a writer that never fails cannot fail.
        let _ = serde_json::to_writer(&mut counter, self);
        counter.0
    }
}

/// The link's HTTP session (HTTP/2: one connection carries every request).
pub struct Link {
    http: HubHttp,
    /// `/edge/{device}`.
    prefix: String,
}

impl Link {
    /// A link for the hub the settings name, trusting the hub's CA.
    pub fn new(config: &EdgeConfig) -> Result<Self, LinkError> {
        let http = HubHttp::new(config, Duration::from_secs(90)).map_err(LinkError::Setup)?;
        let prefix = format!("/edge/{}", segment(&http.device().device_id));
        Ok(Self { http, prefix })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, LinkError> {
        let answer = self
            .http
            .send(method, &format!("{}{path}", self.prefix), body, None)
            .await
            .map_err(LinkError::Unreachable)?;
        if answer.status.is_server_error() {
            return Err(LinkError::Unreachable(format!(
                "{}: {}",
                answer.status,
                answer.text()
            )));
        }
        if !answer.status.is_success() {
            return Err(LinkError::Refused {
                status: answer.status.as_u16(),
                message: answer.text(),
            });
        }
        serde_json::from_slice(&answer.body)
            .map_err(|e| LinkError::Unreachable(format!("invalid JSON from the hub: {e}")))
    }

    /// Tells the hub which clients are connected here and what they listen for.
    pub async fn presence(&self, clients: &[(String, Vec<&'static str>)]) -> Result<(), LinkError> {
        let clients: Vec<Value> = clients
            .iter()
            .map(|(id, features)| json!({"id": id, "features": features}))
            .collect();
        self.call(
            Method::POST,
            "/presence",
            Some(&json!({"clients": clients})),
        )
        .await
        .map(drop)
    }

    /// Waits up to `wait_secs` for pushes from the hub.
    pub async fn events(&self, wait_secs: u64) -> Result<Vec<Value>, LinkError> {
        let answer = self
            .call(Method::GET, &format!("/events?waitSecs={wait_secs}"), None)
            .await?;
        Ok(answer
            .get("events")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// Sends a batch of telemetry; returns once the hub has stored it. The body is `{"messages":[..]}`, whose
    /// size is the sum of the messages' [`UpstreamMessage::encoded_len`] plus [`BATCH_ENVELOPE_BYTES`].
    pub async fn messages(&self, batch: &[UpstreamMessage<'_>]) -> Result<(), LinkError> {
        self.call(Method::POST, "/messages", Some(&json!({"messages": batch})))
            .await
            .map(drop)
    }

    /// Reads a client's twin (`{"desired":..,"reported":..}`).
    pub async fn twin(&self, client: &str) -> Result<Value, LinkError> {
        self.call(
            Method::GET,
            &format!("/twin?client={}", segment(client)),
            None,
        )
        .await
    }

    /// Applies a reported patch on behalf of a client; returns the hub's new reported version.
    pub async fn reported(&self, client: &str, patch: &Value) -> Result<u64, LinkError> {
        let answer = self
            .call(
                Method::PATCH,
                &format!("/twin/reported?client={}", segment(client)),
                Some(patch),
            )
            .await?;
        Ok(answer.get("version").and_then(Value::as_u64).unwrap_or(0))
    }

    /// Completes a C2D message a client acknowledged.
    pub async fn delivered(&self, client: &str, delivery_id: u64) -> Result<(), LinkError> {
        let body = json!({"delivered": [{"client": client, "deliveryId": delivery_id}]});
        self.call(Method::POST, "/acks", Some(&body))
            .await
            .map(drop)
    }

    /// Returns a client's answer to a cloud method call.
    pub async fn method_response(
        &self,
        client: &str,
        rid: &str,
        status: i32,
        payload: &Value,
    ) -> Result<(), LinkError> {
        let body = json!({"methodResponses": [
            {"client": client, "rid": rid, "status": status, "payload": payload}
        ]});
        self.call(Method::POST, "/acks", Some(&body))
            .await
            .map(drop)
    }

    /// The identities behind this device, with their keys.
    pub async fn scope(&self) -> Result<Value, LinkError> {
        self.call(Method::GET, "/scope", None).await
    }
}
