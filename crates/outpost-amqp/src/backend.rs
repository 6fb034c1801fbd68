//! The contract between the AMQP head and the hub: what the head asks of the hub's storage and policies.
//!
//! The head owns the protocol (SASL, `$cbs`, links, filters, `$management`, error conditions); the hub
//! implements [`ServiceBackend`] over its event stream, its policies and its C2D queues. Nothing here knows
//! AMQP types: the head converts.

use std::time::SystemTime;

/// What a token or a SASL PLAIN password grants, as the REST API's policies do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The access policy the credential belongs to.
    pub policy: String,
    /// ServiceConnect: read the device-to-cloud stream and feedback, send cloud-to-device messages.
    pub service_connect: bool,
    /// When the credential stops being valid (a SAS token's `se`); `None` for a key given directly.
    pub expires_at: Option<SystemTime>,
}

/// Why a credential was refused (the head answers `amqp:unauthorized-access` with this text).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// The Event Hub the hub presents (`$management` READ of type `com.microsoft:eventhub`).
#[derive(Debug, Clone)]
pub struct EventHubInfo {
    /// The entity path (`EntityPath=` of the connection string; the hub's name).
    pub name: String,
    /// When the stream was created, in Unix milliseconds.
    pub created_at_ms: i64,
    /// Partitions `0..partition_count`.
    pub partition_count: u32,
}

/// One partition's state (`$management` READ of type `com.microsoft:partition`).
#[derive(Debug, Clone, Default)]
pub struct PartitionInfo {
    pub begin_sequence_number: i64,
    pub last_enqueued_sequence_number: i64,
    pub last_enqueued_offset: i64,
    pub last_enqueued_time_ms: i64,
    pub is_empty: bool,
}

/// Where a receiver starts, from the filter it attached with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventPosition {
    /// Everything kept (`x-opt-offset > '-1'`).
    Earliest,
    /// Only what arrives after the link attached (`x-opt-offset > '@latest'`).
    Latest,
    /// After (or at, when inclusive) this offset.
    Offset { offset: i64, inclusive: bool },
    /// After (or at, when inclusive) this partition sequence number.
    SequenceNumber {
        sequence_number: i64,
        inclusive: bool,
    },
    /// Events enqueued after this time (Unix milliseconds).
    EnqueuedTime { ms: i64 },
}

/// A value of an application property or an annotation.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Long(i64),
    /// An AMQP timestamp (Unix milliseconds).
    Timestamp(i64),
    Bool(bool),
}

/// One event of a partition, with everything IoT Hub's built-in endpoint puts on it.
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// The partition's sequence number (per partition, starting at 0, no gaps).
    pub sequence_number: i64,
    /// The offset (increasing within the partition; sent as a string in `x-opt-offset`).
    pub offset: i64,
    /// When the hub accepted it, in Unix milliseconds (`x-opt-enqueued-time`).
    pub enqueued_time_ms: i64,
    /// The body as the device sent it.
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub user_id: Option<Vec<u8>>,
    /// Application properties, in the order the device sent them.
    pub application_properties: Vec<(String, Value)>,
    /// Message annotations besides the `x-opt-*` ones the head adds: `iothub-connection-device-id`,
    /// `iothub-connection-module-id`, `iothub-connection-auth-method`, `iothub-enqueuedtime`,
    /// `iothub-message-source`, ...
    pub annotations: Vec<(String, Value)>,
}

/// Why a backend call failed; the head maps each kind to the AMQP condition Event Hubs uses.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// `amqp:not-found` (no such consumer group, partition, device).
    #[error("{0}")]
    NotFound(String),
    /// `com.microsoft:argument-error` / `amqp:invalid-field`.
    #[error("{0}")]
    InvalidArgument(String),
    /// `amqp:resource-limit-exceeded` (a device's C2D queue is full).
    #[error("{0}")]
    LimitExceeded(String),
    /// `amqp:internal-error`; the text is logged, not sent.
    #[error("{0}")]
    Internal(String),
}

/// A cloud-to-device message as the service SDK sends it on `/messages/devicebound`.
#[derive(Debug, Clone, Default)]
pub struct C2dMessage {
    /// From the `to` property: `/devices/{id}/messages/devicebound`, already parsed by the head.
    pub device_id: String,
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub user_id: Option<Vec<u8>>,
    /// The `absolute-expiry-time` property, Unix milliseconds.
    pub expiry_time_ms: Option<i64>,
    /// The `iothub-ack` application property: `none`, `positive`, `negative` or `full`.
    pub ack: Option<String>,
    /// The other application properties, as strings.
    pub application_properties: Vec<(String, String)>,
}

/// One batch of delivery feedback records (IoT Hub sends a JSON array per message on
/// `/messages/servicebound/feedback`, content type `application/vnd.microsoft.iothub.feedback.json`).
#[derive(Debug, Clone)]
pub struct FeedbackBatch {
    /// Passed back to [`ServiceBackend::complete_feedback`] once the receiver accepted the message.
    pub lock_token: i64,
    /// The JSON array body.
    pub body: Vec<u8>,
    pub enqueued_time_ms: i64,
}

/// What the AMQP head needs from the hub. Synchronous methods must not block on a disk for long; the
/// async ones may wait (for new events, for a feedback record) and are cancelled by being dropped.
#[async_trait::async_trait]
pub trait ServiceBackend: Send + Sync + 'static {
    /// Checks a SAS token put on `$cbs` (`type` `servicebus.windows.net:sastoken`) for `audience`.
    fn authorize_token(&self, audience: &str, token: &str) -> Result<Grant, AuthError>;
    /// SASL PLAIN: `user` is a policy name (possibly `name@sas.root.HUB`), `password` a SAS token or the
    /// policy's key.
    fn authorize_plain(&self, user: &str, password: &str) -> Result<Grant, AuthError>;

    /// The hub's Event Hub.
    fn event_hub(&self) -> EventHubInfo;
    /// Whether a consumer group exists (`$Default` always does).
    fn consumer_group_exists(&self, name: &str) -> bool;
    fn partition_info(&self, partition: u32) -> Result<PartitionInfo, BackendError>;
    /// The sequence number to read after for `position` (so that reading starts at the first event the
    /// position selects; `-1` to start at the partition's first event).
    fn resolve_position(
        &self,
        partition: u32,
        position: EventPosition,
    ) -> Result<i64, BackendError>;
    /// Up to `max` events of `partition` with a sequence number above `after`, in order; waits until at least
    /// one exists.
    async fn wait_events(
        &self,
        partition: u32,
        after: i64,
        max: usize,
    ) -> Result<Vec<Event>, BackendError>;

    /// Queues a cloud-to-device message exactly as the REST route does (per-device queue limit included).
    async fn send_c2d(&self, grant: &Grant, message: C2dMessage) -> Result<(), BackendError>;
    /// The oldest feedback batch not yet completed; waits until one exists. A batch handed out and not
    /// completed is handed out again after a while (the lock expires), as IoT Hub does.
    async fn next_feedback(&self) -> Result<FeedbackBatch, BackendError>;
    /// Removes a feedback batch the receiver accepted.
    fn complete_feedback(&self, lock_token: i64) -> Result<(), BackendError>;
}
