//! What the protocol head needs from whoever owns identities, twins and messages (the hub, later the edge
//! hub), and what that owner pushes back to a connected client.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use outpost_core::{Identity, Message};
use tokio::sync::mpsc;

use crate::packet::ConnectReturnCode;

/// Operations the protocol head needs from whoever owns identities, twins and messages (the hub, later the edge hub).
#[async_trait::async_trait]
pub trait DeviceOperations: Send + Sync + 'static {
    /// Checks a CONNECT: the identity comes from the client id; password is the SAS token.
    async fn authenticate(
        &self,
        identity: &Identity,
        username: &str,
        password: Option<&[u8]>,
    ) -> Result<(), ConnectRefusal>;
    /// A session is live: the backend keeps the outbox to push to this client until `disconnected` with the same connection id.
    async fn connected(&self, identity: &Identity, outbox: Outbox);
    /// The connection `connection` of this identity has ended.
    async fn disconnected(&self, identity: &Identity, connection: u64);
    /// Answer to `$iothub/twin/GET` (the 200 body: Twin::device_view()).
    async fn get_twin(&self, identity: &Identity) -> Result<serde_json::Value, OperationError>;
    /// Applies a reported patch; returns the new reported $version.
    async fn patch_reported(
        &self,
        identity: &Identity,
        patch: serde_json::Value,
    ) -> Result<u64, OperationError>;
    /// Telemetry or module output; Ok means durably accepted (then the head sends PUBACK).
    async fn send_message(
        &self,
        identity: &Identity,
        message: Message,
    ) -> Result<(), OperationError>;
    /// The client answered a direct method on connection `connection` (the backend accepts it only from the
    /// identity and connection the request went to; see [`PendingMethods`](crate::PendingMethods)).
    async fn method_response(
        &self,
        identity: &Identity,
        connection: u64,
        rid: &str,
        status: i32,
        payload: Vec<u8>,
    );
    /// The client PUBACKed, on connection `connection`, a C2D or input message that was pushed with this
    /// delivery id (a backend may accept it only from the connection the message went to).
    async fn delivered(&self, identity: &Identity, connection: u64, delivery_id: u64);
    /// Persisted session state for CleanSession=0 (subscription filters by client id), so sessions survive restarts.
    async fn load_subscriptions(&self, client_id: &str) -> Vec<String>;
    /// Stores the full filter list after every change; an empty list for a clean session means "forget".
    async fn save_subscriptions(&self, client_id: &str, filters: &[String]);
}

/// Why `authenticate` refused a CONNECT; each maps to a CONNACK return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectRefusal {
    /// Bad or expired token (CONNACK 4; the SDK raises UnauthorizedError).
    #[error("bad user name or password")]
    BadUsernameOrPassword,
    /// Unknown or disabled identity (CONNACK 5; the SDK raises UnauthorizedError).
    #[error("not authorized")]
    NotAuthorized,
    /// The backend cannot answer now (CONNACK 3; the SDK retries).
    #[error("server unavailable")]
    ServerUnavailable,
}

impl ConnectRefusal {
    /// The CONNACK return code that carries this refusal.
    pub fn return_code(self) -> ConnectReturnCode {
        match self {
            Self::BadUsernameOrPassword => ConnectReturnCode::BadUserNameOrPassword,
            Self::NotAuthorized => ConnectReturnCode::NotAuthorized,
            Self::ServerUnavailable => ConnectReturnCode::ServerUnavailable,
        }
    }
}

/// A failed twin or message operation; twin errors travel as `$iothub/twin/res/{status}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct OperationError {
    /// HTTP-like status (400 bad patch, 404, 429 throttled, 500...).
    pub status: u16,
    /// Human-readable cause, sent to the client as `{"message": ...}`.
    pub message: String,
}

impl OperationError {
    /// An error with this status and message.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// What the backend pushes to a connected client.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A desired-properties patch; the body includes "$version". Sent only if the client subscribed.
    DesiredPatch {
        /// The notification body: changed keys (null = deleted) plus "$version".
        body: serde_json::Value,
    },
    /// A cloud-to-device message, sent at QoS 1; its PUBACK comes back as `delivered(delivery_id)`.
    CloudToDevice {
        /// The backend's id for this delivery.
        delivery_id: u64,
        /// The message.
        message: Message,
    },
    /// A message to a module input, sent at QoS 1; its PUBACK comes back as `delivered(delivery_id)`.
    Input {
        /// The backend's id for this delivery.
        delivery_id: u64,
        /// The input name.
        input: String,
        /// The message.
        message: Message,
    },
    /// A direct method call, sent at QoS 0; the answer comes back as `method_response`.
    MethodRequest {
        /// Request id, echoed by the client.
        rid: String,
        /// Method name.
        method: String,
        /// JSON payload (may be empty).
        payload: Vec<u8>,
    },
    /// Force-disconnect (e.g. identity deleted or disabled).
    Close,
}

/// A client feature that exists only once the client subscribed to its topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// `devices/{d}/messages/devicebound/#`.
    CloudToDevice,
    /// `devices/{d}/modules/{m}/inputs/#`.
    Inputs,
    /// `$iothub/methods/POST/#`.
    Methods,
    /// `$iothub/twin/PATCH/properties/desired/#`.
    DesiredPatches,
}

impl Feature {
    /// This feature's bit in a feature set.
    pub fn bit(self) -> u8 {
        match self {
            Self::CloudToDevice => 1,
            Self::Inputs => 2,
            Self::Methods => 4,
            Self::DesiredPatches => 8,
        }
    }
}

/// Pushes that may wait for one connection's loop. The loop moves each push into its session at once, so the
/// queue fills only when a backend pushes faster than a connection can take; past this, the connection closes
/// (see [`Inbox::recv`]) and the client reconnects to a backend that re-pushes what was not delivered.
pub const OUTBOX_CAPACITY: usize = 1024;

/// The backend's handle to push to one live connection.
#[derive(Debug, Clone)]
pub struct Outbox {
    connection: u64,
    sender: mpsc::Sender<Outgoing>,
    features: Arc<AtomicU8>,
    overflowed: Arc<AtomicBool>,
}

/// The connection's end of an [`Outbox`].
#[derive(Debug)]
pub struct Inbox {
    receiver: mpsc::Receiver<Outgoing>,
    overflowed: Arc<AtomicBool>,
}

/// The outbox of a connection overflowed: pushes were refused, so the connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the backend pushed more than {OUTBOX_CAPACITY} items the connection had not taken")]
pub struct OutboxOverflow;

impl Inbox {
    /// The next push, `None` once every outbox is dropped, or the overflow once one push was refused.
    ///
    /// A refused push leaves the queue full, so this wakes and reports it without waiting.
    pub async fn recv(&mut self) -> Option<Result<Outgoing, OutboxOverflow>> {
        let item = self.receiver.recv().await?;
        if self.overflowed.load(Ordering::Acquire) {
            return Some(Err(OutboxOverflow));
        }
        Some(Ok(item))
    }

    /// Pushes waiting to be taken.
    pub fn len(&self) -> usize {
        self.receiver.len()
    }

    /// Whether no push waits.
    pub fn is_empty(&self) -> bool {
        self.receiver.is_empty()
    }
}

impl Outbox {
    /// A new outbox for connection `connection` and the receiving end its connection reads.
    ///
    /// The server makes these; backends may make them in their own tests.
    pub fn new(connection: u64) -> (Self, Inbox) {
        let (sender, receiver) = mpsc::channel(OUTBOX_CAPACITY);
        let overflowed = Arc::new(AtomicBool::new(false));
        (
            Self {
                connection,
                sender,
                features: Arc::new(AtomicU8::new(0)),
                overflowed: Arc::clone(&overflowed),
            },
            Inbox {
                receiver,
                overflowed,
            },
        )
    }

    /// The connection this outbox pushes to, as passed to `disconnected`.
    pub fn connection(&self) -> u64 {
        self.connection
    }

    /// Queues `item` for the client; false if the connection is gone or its outbox is full (it then closes).
    pub fn send(&self, item: Outgoing) -> bool {
        match self.sender.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.overflowed.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        connection = self.connection,
                        "a connection's outbox is full; closing it"
                    );
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Whether the client has subscribed to `feature` (persisted subscriptions count).
    pub fn subscribed(&self, feature: Feature) -> bool {
        self.features.load(Ordering::Acquire) & feature.bit() != 0
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Replaces the feature set (bits of [`Feature::bit`]); the connection calls it after every SUBSCRIBE.
    pub fn set_features(&self, bits: u8) {
        self.features.store(bits, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbox_reports_the_features_it_was_given() {
        let (outbox, _rx) = Outbox::new(7);
        assert!(!outbox.subscribed(Feature::Methods));
        outbox.set_features(Feature::Methods.bit() | Feature::Inputs.bit());
        assert!(outbox.subscribed(Feature::Methods) && outbox.subscribed(Feature::Inputs));
        assert!(!outbox.subscribed(Feature::DesiredPatches));
        assert_eq!(outbox.connection(), 7);
    }

    #[test]
    fn sending_to_a_closed_connection_returns_false() {
        let (outbox, rx) = Outbox::new(1);
        assert!(outbox.send(Outgoing::Close));
        drop(rx);
        assert!(!outbox.send(Outgoing::Close));
        assert!(outbox.is_closed());
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_the_push_and_its_inbox_reports_the_overflow() {
        let (outbox, mut inbox) = Outbox::new(1);
        for _ in 0..OUTBOX_CAPACITY {
            assert!(outbox.send(Outgoing::Close));
        }
        assert!(
            !outbox.send(Outgoing::Close),
            "the push past capacity is refused"
        );
        assert_eq!(
            inbox.len(),
            OUTBOX_CAPACITY,
            "nothing grows past the capacity"
        );
        assert!(matches!(inbox.recv().await, Some(Err(OutboxOverflow))));
    }
}
