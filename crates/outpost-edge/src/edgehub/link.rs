//! The edge hub's end of the upstream link: one HTTP/2 connection to the hub that carries every identity behind
//! this device (presence, a long poll for pushes, telemetry batches, twins and acks on behalf of clients). Every
//! body is a type of [`outpost_core::edge_link`], the contract the hub's side imports too, and every request
//! names [`LINK_API_VERSION`].

use std::time::Duration;

use outpost_core::edge_link::{
    AcksAnswer, AcksRequest, Delivered, EventsAnswer, LinkEvent, LinkFeature, LinkRefusal,
    LinkRefusalCode, MethodResponse, PresenceAnswer, PresenceClient, PresenceRequest,
    ReportedAnswer, ScopeAnswer, TelemetryAnswer, TelemetryBatch, TwinAnswer, LINK_API_VERSION,
    LINK_REFUSAL_STATUS, LINK_VERSION_PARAM,
};
pub use outpost_core::edge_link::{UpstreamMessage, BATCH_ENVELOPE_BYTES};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::config::EdgeConfig;
use crate::hub_http::{segment, HubHttp, HubRequestError, HubSetupError};

/// Errors of the link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The hub is unreachable: everything waits for it.
    #[error("the hub is unreachable: {0}")]
    Unreachable(#[from] HubRequestError),
    /// The hub failed (5xx): everything waits for it, as when it is unreachable.
    #[error("the hub failed: {status} {message}")]
    HubFailed {
        /// The HTTP status.
        status: u16,
        /// The hub's message.
        message: String,
    },
    /// The hub's answer breaks the link contract (a hub of another release?): taken as unreachable.
    #[error("the hub's answer breaks the link contract: {0}")]
    Contract(#[source] serde_json::Error),
    /// A request or the scope could not be encoded.
    #[error("cannot encode for the link: {0}")]
    Encode(#[source] serde_json::Error),
    /// The hub refused the request; retrying the same will not help.
    #[error("the hub refused: {status} {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The hub's message.
        message: String,
    },
    /// The hub does not know which clients are connected here (it restarted since the last declaration):
    /// declare presence, catch up, and ask again.
    #[error("the hub asks for this edge's presence: {0}")]
    PresenceRequired(String),
    /// The settings do not allow a link.
    #[error(transparent)]
    Setup(#[from] HubSetupError),
}

/// The error of a refused answer: a [`LinkRefusal`] the edge knows how to answer, or a plain refusal.
fn refusal(status: u16, body: &[u8]) -> LinkError {
    if status == LINK_REFUSAL_STATUS {
        if let Ok(LinkRefusal {
            code: LinkRefusalCode::PresenceRequired,
            message,
        }) = serde_json::from_slice(body)
        {
            return LinkError::PresenceRequired(message);
        }
    }
    LinkError::Refused {
        status,
        message: String::from_utf8_lossy(body).into_owned(),
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
        let http = HubHttp::new(config, Duration::from_secs(90))?;
        let prefix = format!("/edge/{}", segment(&http.device().device_id));
        Ok(Self { http, prefix })
    }

    /// Sends `body` (a contract type or, for a reported patch, the user's document) and reads the answer as `A`.
    async fn call<A: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<A, LinkError> {
        // Encoded straight to bytes: through a `Value` first, a batch of telemetry cost a map per message.
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(LinkError::Encode)?;
        self.call_encoded(method, path, body).await
    }

    /// [`Link::call`] with the body already encoded.
    async fn call_encoded<A: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<A, LinkError> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let url = format!(
            "{}{path}{separator}{LINK_VERSION_PARAM}={LINK_API_VERSION}",
            self.prefix
        );
        let answer = self.http.send(method, &url, body, None).await?;
        if answer.status.is_server_error() {
            return Err(LinkError::HubFailed {
                status: answer.status.as_u16(),
                message: answer.text(),
            });
        }
        if !answer.status.is_success() {
            return Err(refusal(answer.status.as_u16(), &answer.body));
        }
        serde_json::from_slice(&answer.body).map_err(LinkError::Contract)
    }

    /// Tells the hub which clients are connected here and what they listen for (features by wire name).
    pub async fn presence(&self, clients: &[(String, Vec<&'static str>)]) -> Result<(), LinkError> {
        let request = PresenceRequest {
            clients: clients
                .iter()
                .map(|(id, features)| PresenceClient {
                    id: id.clone(),
                    features: features
                        .iter()
                        .filter_map(|name| LinkFeature::from_name(name))
                        .collect(),
                })
                .collect(),
        };
        let _: PresenceAnswer = self.call(Method::POST, "/presence", Some(&request)).await?;
        Ok(())
    }

    /// Waits up to `wait_secs` for pushes from the hub.
    pub async fn events(&self, wait_secs: u64) -> Result<Vec<LinkEvent>, LinkError> {
        let answer: EventsAnswer = self
            .call(
                Method::GET,
                &format!("/events?waitSecs={wait_secs}"),
                None::<&()>,
            )
            .await?;
        Ok(answer.events)
    }

    /// Sends a batch of telemetry; returns once the hub has stored it. The body's size is the sum of the
    /// messages' [`UpstreamMessage::encoded_len`] plus [`BATCH_ENVELOPE_BYTES`].
    pub async fn messages(&self, batch: &TelemetryBatch<'_>) -> Result<(), LinkError> {
        let body = serde_json::to_vec(batch).map_err(LinkError::Encode)?;
        self.encoded_messages(body, batch.messages.len()).await
    }

    /// [`Link::messages`] for a batch of `count` messages already encoded, so that the caller's messages are
    /// free while the request is in flight.
    pub async fn encoded_messages(&self, body: Vec<u8>, count: usize) -> Result<(), LinkError> {
        let answer: TelemetryAnswer = self
            .call_encoded(Method::POST, "/messages", Some(body))
            .await?;
        if answer.accepted != count {
            tracing::warn!(
                sent = count,
                accepted = answer.accepted,
                "the hub stored a different number of messages than were sent"
            );
        }
        Ok(())
    }

    /// Reads a client's twin: the document `{"desired":..,"reported":..}`.
    pub async fn twin(&self, client: &str) -> Result<Value, LinkError> {
        let answer: TwinAnswer = self
            .call(
                Method::GET,
                &format!("/twin?client={}", segment(client)),
                None::<&()>,
            )
            .await?;
        Ok(answer.into_document())
    }

    /// Applies a reported patch on behalf of a client; returns the hub's new reported version.
    pub async fn reported(&self, client: &str, patch: &Value) -> Result<u64, LinkError> {
        let answer: ReportedAnswer = self
            .call(
                Method::PATCH,
                &format!("/twin/reported?client={}", segment(client)),
                Some(patch),
            )
            .await?;
        Ok(answer.version)
    }

    async fn acks(&self, request: &AcksRequest) -> Result<(), LinkError> {
        let _: AcksAnswer = self.call(Method::POST, "/acks", Some(request)).await?;
        Ok(())
    }

    /// Completes the C2D messages a client acknowledged (those read together), in one request.
    pub async fn delivered(&self, client: &str, delivery_ids: &[u64]) -> Result<(), LinkError> {
        self.acks(&AcksRequest {
            delivered: delivery_ids
                .iter()
                .map(|&delivery_id| Delivered {
                    client: client.to_owned(),
                    delivery_id,
                })
                .collect(),
            ..AcksRequest::default()
        })
        .await
    }

    /// Returns a client's answer to a cloud method call.
    pub async fn method_response(
        &self,
        client: &str,
        rid: &str,
        status: i32,
        payload: &Value,
    ) -> Result<(), LinkError> {
        self.acks(&AcksRequest {
            method_responses: vec![MethodResponse {
                client: client.to_owned(),
                rid: rid.to_owned(),
                status,
                payload: payload.clone(),
            }],
            ..AcksRequest::default()
        })
        .await
    }

    /// The identities behind this device with their keys: a [`ScopeAnswer`], as the document the edge's store
    /// keeps for offline authentication.
    pub async fn scope(&self) -> Result<Value, LinkError> {
        let answer: ScopeAnswer = self.call(Method::GET, "/scope", None::<&()>).await?;
        serde_json::to_value(&answer).map_err(LinkError::Encode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presence_refusal_asks_for_presence_and_other_refusals_stay_refusals() {
        let body = serde_json::to_vec(&LinkRefusal::presence_required("edge1")).unwrap();
        assert!(matches!(
            refusal(LINK_REFUSAL_STATUS, &body),
            LinkError::PresenceRequired(message) if message.contains("edge1")
        ));
        let unknown = br#"{"code":"moveToAnotherHub","message":"bye"}"#;
        assert!(matches!(
            refusal(LINK_REFUSAL_STATUS, unknown),
            LinkError::Refused { status: 409, .. }
        ));
        assert!(matches!(
            refusal(401, &body),
            LinkError::Refused { status: 401, .. }
        ));
    }
}
