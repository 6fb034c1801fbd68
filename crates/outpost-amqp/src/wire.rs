//! Conversions between the backend's types and AMQP messages, and the shapes of the service nodes' answers:
//! events as Event Hubs delivers them, C2D messages as the service SDK sends them, `$cbs` and `$management`
//! responses, and the error conditions Event Hubs uses.
//!
//! Pure functions over fe2o3-amqp's types; no links, no I/O.

use std::fmt::Write as _;

use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition, Fields, LinkError};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Data, DeliveryAnnotations, Message, MessageAnnotations,
    MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Array, OrderedMap, SimpleValue, Symbol, Timestamp, Value};

use crate::backend::{
    self, BackendError, C2dMessage, Event, EventHubInfo, FeedbackBatch, PartitionInfo,
};

/// The content type of a feedback message.
pub const FEEDBACK_CONTENT_TYPE: &str = "application/vnd.microsoft.iothub.feedback.json";

/// An error with `condition`. Its `info` is an empty map, not null: the Python client reads an error's
/// three fields by position.
fn error(condition: ErrorCondition, description: String) -> definitions::Error {
    definitions::Error::new(condition, Some(description), Some(Fields::new()))
}

/// An AMQP error with a standard condition.
pub fn amqp_error(condition: AmqpError, description: impl Into<String>) -> definitions::Error {
    error(ErrorCondition::AmqpError(condition), description.into())
}

/// An AMQP error with one of Microsoft's conditions (`com.microsoft:argument-out-of-range`, ...).
pub fn vendor_error(condition: &str, description: impl Into<String>) -> definitions::Error {
    error(
        ErrorCondition::Custom(Symbol::from(condition)),
        description.into(),
    )
}

/// `amqp:link:message-size-exceeded`.
pub fn too_large(description: impl Into<String>) -> definitions::Error {
    error(
        ErrorCondition::LinkError(LinkError::MessageSizeExceeded),
        description.into(),
    )
}

/// The condition Event Hubs answers a backend failure with; internal errors are logged, not sent.
pub fn backend_error(error: &BackendError) -> definitions::Error {
    match error {
        BackendError::NotFound(text) => amqp_error(AmqpError::NotFound, text.clone()),
        BackendError::InvalidArgument(text) => {
            vendor_error("com.microsoft:argument-error", text.clone())
        }
        BackendError::LimitExceeded(text) => {
            amqp_error(AmqpError::ResourceLimitExceeded, text.clone())
        }
        BackendError::Internal(text) => {
            tracing::error!(error = %text, "the hub failed an AMQP request");
            amqp_error(AmqpError::InternalError, "internal error")
        }
    }
}

fn symbol_key(name: &str) -> OwnedKey {
    OwnedKey::Symbol(Symbol::from(name))
}

fn annotation_value(value: &backend::Value) -> Value {
    match value {
        backend::Value::String(text) => Value::String(text.clone()),
        backend::Value::Long(n) => Value::Long(*n),
        backend::Value::Timestamp(ms) => Value::Timestamp(Timestamp::from_milliseconds(*ms)),
        backend::Value::Bool(b) => Value::Bool(*b),
    }
}

fn simple_value(value: &backend::Value) -> SimpleValue {
    match value {
        backend::Value::String(text) => SimpleValue::String(text.clone()),
        backend::Value::Long(n) => SimpleValue::Long(*n),
        backend::Value::Timestamp(ms) => SimpleValue::Timestamp(Timestamp::from_milliseconds(*ms)),
        backend::Value::Bool(b) => SimpleValue::Bool(*b),
    }
}

/// The capability a receiver desires to get its partition's last-enqueued figures on each event.
pub const RUNTIME_METRIC: &str = "com.microsoft:enable-receiver-runtime-metric";

/// The partition's last-enqueued figures as delivery annotations (the runtime metric), read at `now_ms`.
pub fn runtime_metric(info: &PartitionInfo, now_ms: i64) -> DeliveryAnnotations {
    let mut annotations = OrderedMap::new();
    annotations.insert(
        symbol_key("last_enqueued_sequence_number"),
        Value::Long(info.last_enqueued_sequence_number),
    );
    annotations.insert(
        symbol_key("last_enqueued_offset"),
        Value::String(info.last_enqueued_offset.to_string()),
    );
    annotations.insert(
        symbol_key("last_enqueued_time_utc"),
        Value::Timestamp(Timestamp::from_milliseconds(info.last_enqueued_time_ms)),
    );
    annotations.insert(
        symbol_key("runtime_info_retrieval_time_utc"),
        Value::Timestamp(Timestamp::from_milliseconds(now_ms)),
    );
    DeliveryAnnotations(annotations)
}

/// An event as Event Hubs delivers it: the body in one Data section, the system properties, the
/// application properties, and the `x-opt-*` annotations before the event's own; with the runtime metric
/// when the receiver asked for it.
pub fn event_message(event: &Event, metric: Option<DeliveryAnnotations>) -> Message<Data> {
    let properties = Properties {
        message_id: event.message_id.clone().map(MessageId::String),
        correlation_id: event.correlation_id.clone().map(MessageId::String),
        content_type: event.content_type.as_deref().map(Symbol::from),
        content_encoding: event.content_encoding.as_deref().map(Symbol::from),
        user_id: event.user_id.clone().map(Into::into),
        ..Properties::default()
    };
    let mut annotations = OrderedMap::new();
    annotations.insert(
        symbol_key("x-opt-sequence-number"),
        Value::Long(event.sequence_number),
    );
    annotations.insert(
        symbol_key("x-opt-offset"),
        Value::String(event.offset.to_string()),
    );
    annotations.insert(
        symbol_key("x-opt-enqueued-time"),
        Value::Timestamp(Timestamp::from_milliseconds(event.enqueued_time_ms)),
    );
    for (name, value) in &event.annotations {
        annotations.insert(symbol_key(name), annotation_value(value));
    }
    let application: OrderedMap<String, SimpleValue> = event
        .application_properties
        .iter()
        .map(|(name, value)| (name.clone(), simple_value(value)))
        .collect();
    Message::builder()
        .delivery_annotations(metric)
        .properties(properties)
        .application_properties(
            (!application.is_empty()).then_some(ApplicationProperties(application)),
        )
        .message_annotations(MessageAnnotations(annotations))
        .data(event.body.clone())
        .build()
}

/// Why a message sent to `/messages/devicebound` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum C2dRefusal {
    /// No `to`, or not `/devices/{id}/messages/devicebound`.
    #[error("the message's `to` must be /devices/{{deviceId}}/messages/devicebound")]
    BadTo,
    /// A body of AMQP sequences.
    #[error("the body must be data sections or a string or binary value")]
    BadBody,
    /// Body and properties over the hub's limit.
    #[error("the message is {size} bytes; the limit is {limit}")]
    TooLarge { size: u64, limit: u64 },
}

impl C2dRefusal {
    /// The AMQP error the sender's delivery is rejected with.
    pub fn to_error(&self) -> definitions::Error {
        match self {
            C2dRefusal::BadTo | C2dRefusal::BadBody => {
                amqp_error(AmqpError::InvalidField, self.to_string())
            }
            C2dRefusal::TooLarge { .. } => too_large(self.to_string()),
        }
    }
}

/// The bytes of a body: its Data sections joined, or a string or binary value.
pub fn body_bytes(body: &Body<Value>) -> Option<Vec<u8>> {
    match body {
        Body::Data(sections) => Some(sections.iter().flat_map(|d| d.0.iter().copied()).collect()),
        Body::Value(AmqpValue(Value::String(text))) => Some(text.clone().into_bytes()),
        Body::Value(AmqpValue(Value::Binary(bytes))) => Some(bytes.to_vec()),
        Body::Empty => Some(Vec::new()),
        Body::Value(_) | Body::Sequence(_) => None,
    }
}

/// A string of an application property value; `None` for values that have no text form here.
pub fn simple_text(value: &SimpleValue) -> Option<String> {
    Some(match value {
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.as_str().to_owned(),
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Ubyte(n) => n.to_string(),
        SimpleValue::Ushort(n) => n.to_string(),
        SimpleValue::Uint(n) => n.to_string(),
        SimpleValue::Ulong(n) => n.to_string(),
        SimpleValue::Byte(n) => n.to_string(),
        SimpleValue::Short(n) => n.to_string(),
        SimpleValue::Int(n) => n.to_string(),
        SimpleValue::Long(n) => n.to_string(),
        SimpleValue::Timestamp(t) => t.milliseconds().to_string(),
        SimpleValue::Uuid(u) => format!("{u:?}"),
        _ => return None,
    })
}

fn message_id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => uuid_text(u.as_inner()),
        MessageId::Binary(b) => hex(b),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn uuid_text(bytes: &[u8; 16]) -> String {
    let hex = hex(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A C2D message as the service SDK sends it, checked against `max_size` (body plus property texts,
/// as IoT Hub counts).
pub fn c2d_message(
    message: &Message<Body<Value>>,
    max_size: u64,
) -> Result<C2dMessage, C2dRefusal> {
    let properties = message.properties.as_ref();
    let to = properties
        .and_then(|p| p.to.as_deref())
        .ok_or(C2dRefusal::BadTo)?;
    let device_id = crate::node::devicebound_device(to).ok_or(C2dRefusal::BadTo)?;
    let body = body_bytes(&message.body).ok_or(C2dRefusal::BadBody)?;
    let mut ack = None;
    let mut application_properties = Vec::new();
    if let Some(ApplicationProperties(map)) = &message.application_properties {
        for (name, value) in map {
            let Some(text) = simple_text(value) else {
                continue;
            };
            if name == "iothub-ack" {
                ack = Some(text);
            } else {
                application_properties.push((name.clone(), text));
            }
        }
    }
    let c2d = C2dMessage {
        device_id,
        body,
        message_id: properties
            .and_then(|p| p.message_id.as_ref())
            .map(message_id_text),
        correlation_id: properties
            .and_then(|p| p.correlation_id.as_ref())
            .map(message_id_text),
        content_type: properties
            .and_then(|p| p.content_type.as_ref())
            .map(|s| s.as_str().to_owned()),
        content_encoding: properties
            .and_then(|p| p.content_encoding.as_ref())
            .map(|s| s.as_str().to_owned()),
        user_id: properties
            .and_then(|p| p.user_id.as_ref())
            .map(|b| b.to_vec()),
        expiry_time_ms: properties
            .and_then(|p| p.absolute_expiry_time.as_ref())
            .map(Timestamp::milliseconds),
        ack,
        application_properties,
    };
    let size = c2d_size(&c2d);
    if size > max_size {
        return Err(C2dRefusal::TooLarge {
            size,
            limit: max_size,
        });
    }
    Ok(c2d)
}

fn c2d_size(message: &C2dMessage) -> u64 {
    let texts = [
        &message.message_id,
        &message.correlation_id,
        &message.content_type,
        &message.content_encoding,
        &message.ack,
    ];
    let properties: usize = texts
        .iter()
        .filter_map(|t| t.as_ref())
        .map(String::len)
        .sum::<usize>()
        + message
            .application_properties
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + message.user_id.as_ref().map_or(0, Vec::len);
    (message.body.len() + properties) as u64
}

/// A feedback batch as IoT Hub sends it on `/messages/servicebound/feedback`.
pub fn feedback_message(batch: &FeedbackBatch) -> Message<Data> {
    let properties = Properties {
        message_id: Some(MessageId::String(batch.lock_token.to_string())),
        content_type: Some(Symbol::from(FEEDBACK_CONTENT_TYPE)),
        content_encoding: Some(Symbol::from("utf-8")),
        creation_time: Some(Timestamp::from_milliseconds(batch.enqueued_time_ms)),
        ..Properties::default()
    };
    let mut annotations = OrderedMap::new();
    annotations.insert(
        symbol_key("iothub-enqueuedtime"),
        Value::Timestamp(Timestamp::from_milliseconds(batch.enqueued_time_ms)),
    );
    Message::builder()
        .properties(properties)
        .message_annotations(MessageAnnotations(annotations))
        .data(batch.body.clone())
        .build()
}

/// A request on `$cbs` or `$management`, as far as the head reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub message_id: Option<MessageId>,
    pub reply_to: Option<String>,
    /// Application properties with a text value.
    pub properties: Vec<(String, String)>,
    /// A string or binary body, as text (the put-token's token).
    pub body_text: Option<String>,
}

impl Request {
    /// Reads the parts of a request message.
    pub fn from_message(message: &Message<Body<Value>>) -> Self {
        let properties = message
            .application_properties
            .as_ref()
            .map(|ApplicationProperties(map)| {
                map.iter()
                    .filter_map(|(k, v)| simple_text(v).map(|text| (k.clone(), text)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            message_id: message
                .properties
                .as_ref()
                .and_then(|p| p.message_id.clone()),
            reply_to: message.properties.as_ref().and_then(|p| p.reply_to.clone()),
            properties,
            body_text: body_bytes(&message.body).and_then(|b| String::from_utf8(b).ok()),
        }
    }

    /// An application property's text.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The answer to a request: `status-code` (an int, as the C client reads it) and `status-description`,
/// the correlation id the request's message id, an optional body.
pub fn response(
    request: &Request,
    status: i32,
    description: &str,
    body: Option<Value>,
) -> Message<Body<Value>> {
    let properties = Properties {
        correlation_id: request.message_id.clone(),
        to: request.reply_to.clone(),
        ..Properties::default()
    };
    let mut application = OrderedMap::new();
    application.insert("status-code".to_owned(), SimpleValue::Int(status));
    application.insert(
        "status-description".to_owned(),
        SimpleValue::String(description.to_owned()),
    );
    Message::builder()
        .properties(properties)
        .application_properties(ApplicationProperties(application))
        .body(body.map_or(Body::Empty, |value| Body::Value(AmqpValue(value))))
        .build()
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::String(k.to_owned()), v))
            .collect(),
    )
}

/// The body of a `com.microsoft:eventhub` READ.
pub fn eventhub_properties(info: &EventHubInfo) -> Value {
    let ids = (0..info.partition_count)
        .map(|p| Value::String(p.to_string()))
        .collect::<Vec<_>>();
    map(vec![
        ("name", Value::String(info.name.clone())),
        (
            "created_at",
            Value::Timestamp(Timestamp::from_milliseconds(info.created_at_ms)),
        ),
        ("partition_count", Value::Int(info.partition_count as i32)),
        ("partition_ids", Value::Array(Array(ids))),
    ])
}

/// The body of a `com.microsoft:partition` READ.
pub fn partition_properties(hub: &str, partition: u32, info: &PartitionInfo) -> Value {
    map(vec![
        ("name", Value::String(hub.to_owned())),
        ("partition", Value::String(partition.to_string())),
        (
            "begin_sequence_number",
            Value::Long(info.begin_sequence_number),
        ),
        (
            "last_enqueued_sequence_number",
            Value::Long(info.last_enqueued_sequence_number),
        ),
        (
            "last_enqueued_offset",
            Value::String(info.last_enqueued_offset.to_string()),
        ),
        (
            "last_enqueued_time_utc",
            Value::Timestamp(Timestamp::from_milliseconds(info.last_enqueued_time_ms)),
        ),
        ("is_partition_empty", Value::Bool(info.is_empty)),
    ])
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp::types::messaging::Data;

    use super::*;

    fn c2d(to: Option<&str>, body: Body<Value>) -> Message<Body<Value>> {
        let mut application = OrderedMap::new();
        application.insert("iothub-ack".to_owned(), SimpleValue::String("full".into()));
        application.insert("color".to_owned(), SimpleValue::String("red".into()));
        Message::builder()
            .properties(Properties {
                to: to.map(str::to_owned),
                message_id: Some(MessageId::Ulong(7)),
                ..Properties::default()
            })
            .application_properties(ApplicationProperties(application))
            .body(body)
            .build()
    }

    fn data(bytes: &[u8]) -> Body<Value> {
        Body::Data(vec![Data(bytes.to_vec().into())].into())
    }

    #[test]
    fn a_c2d_message_names_its_device_and_keeps_its_properties() {
        let message = c2d(Some("/devices/d1/messages/devicebound"), data(b"hi"));
        let parsed = c2d_message(&message, 1024).unwrap();
        assert_eq!(parsed.device_id, "d1");
        assert_eq!(parsed.body, b"hi");
        assert_eq!(parsed.message_id.as_deref(), Some("7"));
        assert_eq!(parsed.ack.as_deref(), Some("full"));
        assert_eq!(
            parsed.application_properties,
            vec![("color".to_owned(), "red".to_owned())]
        );
    }

    #[test]
    fn a_c2d_message_without_a_device_or_too_large_is_refused() {
        let message = c2d(None, data(b"hi"));
        assert_eq!(c2d_message(&message, 1024).unwrap_err(), C2dRefusal::BadTo);
        let message = c2d(Some("/devices/d1/messages/devicebound"), data(&[0; 100]));
        assert!(matches!(
            c2d_message(&message, 64),
            Err(C2dRefusal::TooLarge { .. })
        ));
    }

    #[test]
    fn responses_correlate_with_the_request_and_carry_an_int_status() {
        let request = Request {
            message_id: Some(MessageId::Ulong(3)),
            reply_to: Some("cbs-reply".into()),
            properties: vec![],
            body_text: None,
        };
        let answer = response(&request, 401, "no", None);
        let properties = answer.properties.unwrap();
        assert_eq!(properties.correlation_id, Some(MessageId::Ulong(3)));
        let ApplicationProperties(application) = answer.application_properties.unwrap();
        assert_eq!(application.get("status-code"), Some(&SimpleValue::Int(401)));
    }

    #[test]
    fn events_carry_the_offset_as_a_string_and_the_sequence_number_as_a_long() {
        let event = Event {
            sequence_number: 4,
            offset: 400,
            enqueued_time_ms: 1_000,
            body: b"x".to_vec(),
            annotations: vec![(
                "iothub-connection-device-id".into(),
                backend::Value::String("d1".into()),
            )],
            ..Event::default()
        };
        let message = event_message(&event, None);
        let MessageAnnotations(annotations) = message.message_annotations.unwrap();
        assert_eq!(
            annotations.get(&symbol_key("x-opt-offset")),
            Some(&Value::String("400".into()))
        );
        assert_eq!(
            annotations.get(&symbol_key("x-opt-sequence-number")),
            Some(&Value::Long(4))
        );
        assert_eq!(
            annotations.get(&symbol_key("iothub-connection-device-id")),
            Some(&Value::String("d1".into()))
        );
    }
}
