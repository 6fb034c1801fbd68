//! Messages and direct methods: the device-to-cloud event stream, cloud-to-device queues, and method calls from
//! the service to devices and modules.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use outpost_core::{DeviceId, Identity, Message};
use outpost_mqtt::{Feature, Outgoing, PendingMethods};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::connections::Connections;
use crate::error::HubError;
use crate::eventhub::EventHubState;
use crate::feedback::{record_feedback, DeliveryOutcome};
use crate::metrics::{C2dOutcome, HubMetrics, Via};
use crate::registry::{device_id, module_id, Registry};
use crate::stream::{Appended, EventSource};
use crate::writer::Storage;

/// Device-to-cloud messages may be at most this large (IoT Hub's limit).
pub const MAX_D2C_BYTES: usize = 256 * 1024;
/// Cloud-to-device messages may be at most this large.
pub const MAX_C2D_BYTES: usize = 64 * 1024;
/// At most this many cloud-to-device messages wait per device.
pub const MAX_PENDING_C2D: usize = 50;
/// Method payloads may be at most this large.
pub const MAX_METHOD_PAYLOAD_BYTES: usize = 128 * 1024;
/// Direct method calls that may wait for their answers at once; past this a call is refused with 429.
const MAX_PENDING_METHODS: usize = 10_000;

/// Stripes of the lock that orders C2D pushes against completions (see `Messaging::c2d_gates`).
const C2D_GATES: usize = 64;

/// How much of the device-to-cloud event stream the hub keeps: events older than `max_age` and the oldest events
/// past `max_bytes` of stored JSON are pruned in the background (see [`Messaging::prune_events`]).
///
/// The size cap counts the bytes of the events' JSON (what `GET /events` returns), not the database file: a row
/// cap would bound a stream of 256 KB messages a thousand times less tightly than one of small readings, and the
/// JSON is what grows. SQLite reuses the pages of pruned rows, so the file stops growing rather than shrinking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRetention {
    /// Events older than this are pruned (default one day).
    pub max_age: Duration,
    /// The oldest events are pruned while the stored JSON is larger than this (default 1 GiB).
    pub max_bytes: u64,
}

impl Default for EventRetention {
    fn default() -> Self {
        Self {
            max_age: Duration::from_hours(24),
            max_bytes: 1 << 30,
        }
    }
}

impl EventRetention {
    /// How often the pruning task looks: a quarter of the maximum age, between 1 and 10 seconds.
    pub fn prune_interval(&self) -> Duration {
        (self.max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(10))
    }
}

/// At most this many events are deleted by one statement, so that pruning never holds the database long.
pub const PRUNE_BATCH: usize = 256;

/// A direct method call from the service.
#[derive(Debug, Clone)]
pub struct MethodCall {
    /// The method's name.
    pub method: String,
    /// Its JSON payload.
    pub payload: Value,
    /// How long to wait for the answer (5..=300 s, default 30).
    pub response_timeout: Duration,
    /// How long to wait for the target to come online (0..=300 s, default 0: fail at once).
    pub connect_timeout: Duration,
}

impl MethodCall {
    /// Reads the body of `POST /twins/{d}[/modules/{m}]/methods`.
    pub fn from_body(body: &Value) -> Result<Self, HubError> {
        let invalid = |what: &str| HubError::ArgumentInvalid(what.to_owned());
        let method = body
            .get("methodName")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty() && m.len() <= 100)
            .ok_or_else(|| invalid("methodName is required (at most 100 characters)"))?;
        let seconds =
            |key: &str, default: u64, range: std::ops::RangeInclusive<u64>| match body.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(value) => value.as_u64().filter(|s| range.contains(s)).ok_or_else(|| {
                    invalid(&format!(
                        "{key} must be a whole number of seconds in {range:?}"
                    ))
                }),
            };
        let payload = body.get("payload").cloned().unwrap_or(Value::Null);
        if serde_json::to_vec(&payload).map_or(0, |p| p.len()) > MAX_METHOD_PAYLOAD_BYTES {
            return Err(HubError::TooLarge(
                "the method payload is larger than 128 KB".into(),
            ));
        }
        Ok(Self {
            method: method.to_owned(),
            payload,
            response_timeout: Duration::from_secs(seconds(
                "responseTimeoutInSeconds",
                30,
                5..=300,
            )?),
            connect_timeout: Duration::from_secs(seconds("connectTimeoutInSeconds", 0, 0..=300)?),
        })
    }
}

/// The JSON form of a message in the event stream (what `outpost monitor` prints).
pub fn event_json(identity: &Identity, message: &Message, enqueued: &str) -> Value {
    let mut system: BTreeMap<String, String> = message.system.clone();
    system.insert("connectionDeviceId".into(), identity.device.to_string());
    // What the hub adds is the hub's word: a device's own `connectionModuleId` is not kept either.
    match &identity.module {
        Some(module) => system.insert("connectionModuleId".into(), module.to_string()),
        None => system.remove("connectionModuleId"),
    };
    system.insert("enqueuedTime".into(), enqueued.to_owned());
    let mut event = json!({
        "deviceId": identity.device.as_str(),
        "moduleId": identity.module.as_ref().map(outpost_core::ModuleId::as_str),
        "properties": message.properties,
        "systemProperties": system,
        "enqueuedTime": enqueued,
    });
    match std::str::from_utf8(&message.body) {
        Ok(text) => event["body"] = text.into(),
        Err(_) => {
            event["bodyBase64"] = base64::engine::general_purpose::STANDARD
                .encode(&message.body)
                .into();
        }
    }
    event
}

/// [`event_json`]'s text, written without building the JSON tree first: the same keys in the same order, byte
/// for byte what `serde_json::to_string(&event_json(..))` writes (a batch of telemetry from an edge device is
/// thousands of these per request).
pub fn event_text(
    identity: &Identity,
    message: &Message,
    enqueued: &str,
) -> Result<String, serde_json::Error> {
    serde_json::to_string(&EventView {
        identity,
        message,
        enqueued,
    })
}

/// A message as [`event_json`] shapes it, borrowed.
struct EventView<'a> {
    identity: &'a Identity,
    message: &'a Message,
    enqueued: &'a str,
}

impl serde::Serialize for EventView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(6))?;
        map.serialize_entry("deviceId", self.identity.device.as_str())?;
        map.serialize_entry(
            "moduleId",
            &self
                .identity
                .module
                .as_ref()
                .map(outpost_core::ModuleId::as_str),
        )?;
        map.serialize_entry("properties", &self.message.properties)?;
        // Sorted by name, as the `BTreeMap` of `event_json`; these three replace a sender's own of the same name.
        let added = [
            ("connectionDeviceId", Some(self.identity.device.as_str())),
            (
                "connectionModuleId",
                self.identity
                    .module
                    .as_ref()
                    .map(outpost_core::ModuleId::as_str),
            ),
            ("enqueuedTime", Some(self.enqueued)),
        ];
        map.serialize_entry(
            "systemProperties",
            &SystemView {
                system: &self.message.system,
                added,
            },
        )?;
        map.serialize_entry("enqueuedTime", self.enqueued)?;
        match std::str::from_utf8(&self.message.body) {
            Ok(text) => map.serialize_entry("body", text)?,
            Err(_) => map.serialize_entry(
                "bodyBase64",
                &base64::engine::general_purpose::STANDARD.encode(&self.message.body),
            )?,
        }
        map.end()
    }
}

/// A message's system properties merged with the ones the hub adds, in name order.
struct SystemView<'a> {
    system: &'a BTreeMap<String, String>,
    /// Sorted by name; `None` adds nothing.
    added: [(&'static str, Option<&'a str>); 3],
}

impl serde::Serialize for SystemView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        let mut added = self
            .added
            .iter()
            .filter_map(|&(name, value)| Some((name, value?)))
            .peekable();
        let mut own = self
            .system
            .iter()
            .filter(|(name, _)| self.added.iter().all(|(added, _)| added != name))
            .peekable();
        loop {
            let next = match (own.peek(), added.peek()) {
                (Some((name, _)), Some((first, _))) if name.as_str() < *first => {
                    own.next().map(|(n, v)| (n.as_str(), v.as_str()))
                }
                (_, Some(_)) => added.next(),
                (Some(_), None) => own.next().map(|(n, v)| (n.as_str(), v.as_str())),
                (None, None) => None,
            };
            let Some((name, value)) = next else { break };
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// The messaging service: the device-to-cloud event stream, cloud-to-device queues with their feedback, and
/// direct method calls, over the storage handle and the shared connection table.
pub struct Messaging {
    storage: Storage,
    connections: Connections,
    /// Existence checks of a method call's target.
    registry: Registry,
    /// The partitions, their heads and the newest event, for appends and long-polling readers.
    stream: Arc<EventHubState>,
    metrics: HubMetrics,
    /// Direct method calls waiting for their response, each bound to the connection it was sent on.
    pending_methods: PendingMethods,
    /// Cloud-to-device messages pushed and not yet acknowledged: message id → connection it went out on.
    c2d_in_flight: Mutex<HashMap<i64, u64>>,
    /// Orders reading a device's C2D queue to push it against completing one of its messages: a push that read
    /// the queue before a completion committed must not see the message's in-flight mark already gone and send
    /// it again. Striped by device ([`C2D_GATES`] locks), so devices do not wait on each other's pushes.
    c2d_gates: Box<[tokio::sync::Mutex<()>]>,
    /// Set when the hub shuts down: long polls answer at once.
    stopping: watch::Receiver<bool>,
}

impl Messaging {
    /// Messaging over `registry`'s storage and connections, appending to `stream`, recording into `metrics`;
    /// long polls end when `stopping` is set.
    pub(crate) fn new(
        registry: Registry,
        stream: Arc<EventHubState>,
        metrics: HubMetrics,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            storage: registry.storage().clone(),
            connections: registry.connections().clone(),
            registry,
            stream,
            metrics,
            pending_methods: PendingMethods::new(MAX_PENDING_METHODS),
            c2d_in_flight: Mutex::new(HashMap::new()),
            c2d_gates: (0..C2D_GATES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            stopping,
        }
    }

    /// The lock that orders pushes and completions of `device`'s C2D messages.
    fn c2d_gate(&self, device: &DeviceId) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        device.as_str().hash(&mut hasher);
        // The remainder is below the stripe count: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let stripe = (hasher.finish() % self.c2d_gates.len() as u64) as usize;
        &self.c2d_gates[stripe]
    }

    /// Resolves once the hub stops its long polls.
    async fn stopping(&self) {
        let mut stopping = self.stopping.clone();
        // The sender lives as long as the hub, so this only ends when the flag is set.
        let _ = stopping.wait_for(|stopping| *stopping).await;
    }

    /// Wakes the readers of the events `appended`; call after their transaction committed.
    fn streamed(&self, appended: &[Appended]) {
        self.stream
            .streamed(appended, self.connections.replicas().map(Arc::as_ref));
    }

    /// Appends a device-to-cloud message to the event stream; answers once it is on disk, in the storage writer's
    /// next group commit (messages from many devices share one fsync).
    pub async fn accept_telemetry(
        &self,
        identity: &Identity,
        message: &Message,
    ) -> Result<i64, HubError> {
        if message.body.len() > MAX_D2C_BYTES {
            return Err(HubError::TooLarge(
                "device-to-cloud messages are at most 256 KB".into(),
            ));
        }
        let now = Utc::now();
        let enqueued = now.to_rfc3339_opts(SecondsFormat::Millis, true);
        let event = event_json(identity, message, &enqueued);
        let partition = self.stream.partition_of(identity);
        let appended = self
            .storage
            .write(move |tx| {
                tx.append_event(
                    partition,
                    EventSource::Telemetry,
                    &event,
                    now.timestamp_millis(),
                )
            })
            .await?;
        self.streamed(&[appended]);
        self.metrics.telemetry(Via::Mqtt, 1);
        Ok(appended.seq)
    }

    /// Appends a batch of device-to-cloud messages in one write of the storage writer (one fsync, shared with
    /// whatever else is in its group); returns how many.
    pub async fn accept_telemetry_batch(
        &self,
        batch: &[(Identity, &Message)],
    ) -> Result<usize, HubError> {
        if let Some((_, big)) = batch.iter().find(|(_, m)| m.body.len() > MAX_D2C_BYTES) {
            return Err(HubError::TooLarge(format!(
                "a message of {} bytes is over the 256 KB limit",
                big.body.len()
            )));
        }
        let now = Utc::now();
        let enqueued = now.to_rfc3339_opts(SecondsFormat::Millis, true);
        let events: Vec<(u32, String)> = batch
            .iter()
            .map(|(identity, message)| {
                Ok((
                    self.stream.partition_of(identity),
                    event_text(identity, message, &enqueued)?,
                ))
            })
            .collect::<Result<_, serde_json::Error>>()
            .map_err(crate::store::StorageError::from)?;
        let appended = self
            .storage
            .write(move |tx| {
                tx.append_events(EventSource::Telemetry, &events, now.timestamp_millis())
            })
            .await?;
        self.streamed(&appended);
        self.metrics.telemetry(Via::Edge, batch.len() as u64);
        Ok(batch.len())
    }

    /// Deletes one batch of events past `retention` at `now` (at most [`PRUNE_BATCH`]); returns how many, so
    /// that the caller repeats while a whole batch went and lets others use the database in between.
    pub async fn prune_events(
        &self,
        retention: &EventRetention,
        now: DateTime<Utc>,
    ) -> Result<usize, HubError> {
        let max_age = i64::try_from(retention.max_age.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now.timestamp_millis().saturating_sub(max_age);
        let max_bytes = retention.max_bytes;
        self.storage
            .write(move |tx| tx.prune_events(cutoff, max_bytes, PRUNE_BATCH))
            .await
            .map_err(HubError::from)
    }

    /// Reads up to `max` device-to-cloud messages after sequence number `after`, waiting up to `wait` for the
    /// first one. A reader behind the retention (asking after an event already pruned) gets the oldest events kept.
    pub async fn read_events(
        &self,
        after: i64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<(i64, Value)>, HubError> {
        self.read_stream(after, max, wait, false).await
    }

    /// As [`read_events`](Self::read_events), with twin change events too when `all_sources`.
    pub async fn read_stream(
        &self,
        after: i64,
        max: usize,
        wait: Duration,
        all_sources: bool,
    ) -> Result<Vec<(i64, Value)>, HubError> {
        let mut newest = self.stream.newest_event.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            newest.borrow_and_update();
            let events = self
                .storage
                .read(move |tables| tables.events_after(after, max, all_sources))
                .await?;
            if !events.is_empty() {
                return Ok(events);
            }
            tokio::select! {
                waited = tokio::time::timeout_at(deadline, newest.changed()) => if waited.is_err() {
                    return Ok(Vec::new());
                },
                () = self.stopping() => return Ok(Vec::new()),
            }
        }
    }

    /// The sequence number of the newest event.
    pub fn newest_event(&self) -> i64 {
        *self.stream.newest_event.borrow()
    }

    /// Queues a cloud-to-device message for a device and pushes it if the device listens.
    pub async fn send_c2d(&self, device: &str, message: &Message) -> Result<i64, HubError> {
        let device = device_id(device)?;
        if message.body.len() > MAX_C2D_BYTES {
            return Err(HubError::TooLarge(
                "cloud-to-device messages are at most 64 KB".into(),
            ));
        }
        let stored =
            serde_json::to_value(message).map_err(|e| HubError::ArgumentInvalid(e.to_string()))?;
        let queued = device.clone();
        let id = self
            .storage
            .write(move |tx| {
                if tx.device(&queued)?.is_none() {
                    return Err(HubError::DeviceNotFound(queued.to_string()));
                }
                if tx.pending_c2d(&queued)?.len() >= MAX_PENDING_C2D {
                    return Err(HubError::QueueFull(queued.to_string()));
                }
                Ok(tx.enqueue_c2d(&queued, &stored)?)
            })
            .await?;
        self.metrics.c2d(C2dOutcome::Queued);
        let identity = Identity::device(device);
        match self.connections.replicas() {
            Some(replicas) if !self.connections.is_connected(&identity) => {
                replicas.tell(crate::replicas::Notice::C2dQueued {
                    device: identity.device.to_string(),
                });
            }
            _ => self.push_c2d(&identity).await,
        }
        Ok(id)
    }

    /// Pushes the waiting cloud-to-device messages of a device that listens for them and does not have them yet.
    pub async fn push_c2d(&self, identity: &Identity) {
        let Some(outbox) = self.connections.outbox(identity) else {
            return;
        };
        if identity.module.is_some() || !outbox.subscribed(Feature::CloudToDevice) {
            return;
        }
        let _gate = self.c2d_gate(&identity.device).lock().await;
        let device = identity.device.clone();
        let Ok(pending) = self
            .storage
            .read(move |tables| tables.pending_c2d(&device))
            .await
        else {
            return;
        };
        let mut in_flight = self
            .c2d_in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (id, stored) in pending {
            if in_flight.get(&id) == Some(&outbox.connection()) {
                continue;
            }
            let Some(message) = stored_c2d(&stored) else {
                continue;
            };
            if outbox.send(Outgoing::CloudToDevice {
                delivery_id: id as u64,
                message,
            }) {
                in_flight.insert(id, outbox.connection());
            }
        }
    }

    /// Pushes waiting cloud-to-device messages to every device that can take them.
    pub async fn push_all_c2d(&self) {
        let Ok(devices) = self.storage.read(|tables| tables.devices_with_c2d()).await else {
            return;
        };
        for device in devices {
            if let Ok(device) = DeviceId::new(device) {
                self.push_c2d(&Identity::device(device)).await;
            }
        }
    }

    /// The device acknowledged a cloud-to-device message: it is complete (with its feedback, if asked for).
    pub async fn complete_c2d(&self, identity: &Identity, delivery_id: u64) {
        let id = delivery_id as i64;
        // Its in-flight mark goes only once the removal is committed, with no push reading the queue meanwhile.
        let _gate = self.c2d_gate(&identity.device).lock().await;
        let settled = self
            .settle_c2d(&identity.device, id, DeliveryOutcome::Completed)
            .await;
        self.c2d_in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        match settled {
            Ok(()) => self.metrics.c2d(C2dOutcome::Completed),
            Err(error) => {
                tracing::warn!(%identity, %error, "could not complete a cloud-to-device message");
            }
        }
    }

    /// Removes a queued cloud-to-device message with its `outcome`, recording the feedback its sender asked for
    /// in the same transaction.
    pub async fn settle_c2d(
        &self,
        device: &DeviceId,
        id: i64,
        outcome: DeliveryOutcome,
    ) -> Result<(), HubError> {
        let device = device.clone();
        let recorded = self
            .storage
            .write(move |tx| {
                let recorded = match tx.c2d_message(&device, id)?.as_ref().and_then(stored_c2d) {
                    Some(message) => record_feedback(tx, &device, &message, outcome)?,
                    None => false,
                };
                tx.complete_c2d(&device, id)?;
                Ok::<_, HubError>(recorded)
            })
            .await?;
        if recorded {
            self.stream.feedback_recorded();
        }
        Ok(())
    }

    /// Removes the queued cloud-to-device messages whose `absolute-expiry-time` passed, with their feedback;
    /// returns how many.
    pub async fn expire_c2d(&self, now: DateTime<Utc>) -> Result<usize, HubError> {
        let now_ms = now.timestamp_millis();
        let expired: Vec<(DeviceId, i64)> = self
            .storage
            .read(move |tables| tables.expired_c2d(now_ms))
            .await?
            .into_iter()
            .filter_map(|(device, id)| Some((DeviceId::new(device).ok()?, id)))
            .collect();
        for (device, id) in &expired {
            self.settle_c2d(device, *id, DeliveryOutcome::Expired)
                .await?;
            self.metrics.c2d(C2dOutcome::Expired);
        }
        Ok(expired.len())
    }

    /// Invokes a direct method on a device or module and waits for its answer: `(status, payload)`.
    pub async fn invoke_method(
        &self,
        device: &str,
        module: Option<&str>,
        call: MethodCall,
    ) -> Result<(i32, Value), HubError> {
        let result = self.call_method(device, module, call).await;
        self.metrics.method_call(&result);
        result
    }

    async fn call_method(
        &self,
        device: &str,
        module: Option<&str>,
        call: MethodCall,
    ) -> Result<(i32, Value), HubError> {
        let identity = Identity {
            device: device_id(device)?,
            module: module.map(module_id).transpose()?,
        };
        match &identity.module {
            Some(_) => drop(
                self.registry
                    .module(device, module.unwrap_or_default())
                    .await?,
            ),
            None => drop(self.registry.device(device).await?),
        }
        let deadline = tokio::time::Instant::now() + call.connect_timeout;
        let outbox = loop {
            match self.connections.outbox(&identity) {
                Some(outbox) if outbox.subscribed(Feature::Methods) => break outbox,
                Some(_) => {}
                None => {
                    if let Some(answer) = self.call_elsewhere(&identity, &call).await? {
                        return Ok(answer);
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HubError::DeviceNotOnline(identity.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let pending = self
            .pending_methods
            .call(&identity.client_id(), outbox.connection())
            .map_err(|e| HubError::Throttled(e.to_string()))?;
        let payload = serde_json::to_vec(&call.payload).unwrap_or_default();
        let sent = outbox.send(Outgoing::MethodRequest {
            rid: pending.rid().to_owned(),
            method: call.method,
            payload,
        });
        let answer = if sent {
            pending.answer(call.response_timeout).await
        } else {
            None
        };
        let (status, payload) =
            answer.ok_or_else(|| HubError::GatewayTimeout(identity.to_string()))?;
        Ok((status, outpost_mqtt::methods::answer_payload(&payload)))
    }

    /// Forwards a method call to the replica holding `identity`'s connection, if another one does: its answer,
    /// or `None` when no replica holds it.
    async fn call_elsewhere(
        &self,
        identity: &Identity,
        call: &MethodCall,
    ) -> Result<Option<(i32, Value)>, HubError> {
        let Some(replicas) = self.connections.replicas() else {
            return Ok(None);
        };
        let client_id = identity.client_id();
        let Some(holder) = replicas.holder(&client_id).await? else {
            return Ok(None);
        };
        if holder == replicas.id() {
            return Ok(None);
        }
        let outcome = replicas
            .call(
                &holder,
                &client_id,
                call.method.clone(),
                call.payload.clone(),
                call.response_timeout,
            )
            .await;
        match outcome {
            Some(crate::replicas::MethodOutcome::Answered { status, payload }) => {
                Ok(Some((status, payload)))
            }
            Some(crate::replicas::MethodOutcome::NotOnline) => Ok(None),
            Some(crate::replicas::MethodOutcome::Throttled) => Err(HubError::Throttled(
                "too many direct methods wait at the replica holding the device".into(),
            )),
            Some(crate::replicas::MethodOutcome::TimedOut) | None => {
                Err(HubError::GatewayTimeout(identity.to_string()))
            }
        }
    }

    /// Invokes a method forwarded by another replica on `identity`'s connection here.
    pub(crate) async fn call_method_here(
        &self,
        identity: &Identity,
        method: String,
        payload: &Value,
        response_timeout: Duration,
    ) -> crate::replicas::MethodOutcome {
        use crate::replicas::MethodOutcome;
        let Some(outbox) = self
            .connections
            .outbox(identity)
            .filter(|o| o.subscribed(Feature::Methods))
        else {
            return MethodOutcome::NotOnline;
        };
        let Ok(pending) = self
            .pending_methods
            .call(&identity.client_id(), outbox.connection())
        else {
            return MethodOutcome::Throttled;
        };
        let sent = outbox.send(Outgoing::MethodRequest {
            rid: pending.rid().to_owned(),
            method,
            payload: serde_json::to_vec(payload).unwrap_or_default(),
        });
        let answer = if sent {
            pending.answer(response_timeout).await
        } else {
            None
        };
        match answer {
            Some((status, payload)) => MethodOutcome::Answered {
                status,
                payload: outpost_mqtt::methods::answer_payload(&payload),
            },
            None => MethodOutcome::TimedOut,
        }
    }

    /// `from` answered a direct method on `connection`: accepted only if the call went to that identity on
    /// that connection; anything else is dropped and logged (another client cannot forge the answer).
    pub fn method_answered(
        &self,
        from: &Identity,
        connection: u64,
        rid: &str,
        status: i32,
        payload: Vec<u8>,
    ) {
        if let Err(refused) =
            self.pending_methods
                .answer(&from.client_id(), connection, rid, (status, payload))
        {
            tracing::warn!(client = %from, %refused, "method answer dropped");
        }
    }
}

/// Reads a queued cloud-to-device message back into a [`Message`].
fn stored_c2d(stored: &Value) -> Option<Message> {
    serde_json::from_value(stored.clone()).ok()
}

#[cfg(test)]
mod tests {
    use outpost_core::{DeviceId, ModuleId};

    use super::*;

    fn message(body: &[u8], system: &[(&str, &str)]) -> Message {
        let mut message = Message {
            body: body.to_vec().into(),
            ..Message::default()
        };
        for (name, value) in system {
            message.system.insert((*name).into(), (*value).into());
        }
        message
            .properties
            .insert("alert".into(), Some("yes".into()));
        message.properties.insert("flag".into(), None);
        message
    }

    #[test]
    fn the_event_text_is_byte_for_byte_the_event_json() {
        let device = Identity::device(DeviceId::new("edge-1").unwrap());
        let module = Identity::module(
            DeviceId::new("edge-1").unwrap(),
            ModuleId::new("filter").unwrap(),
        );
        let messages = [
            message(b"{\"t\":21.5}", &[]),
            message(
                b"plain \"quoted\"\n",
                &[("messageId", "m1"), ("outputName", "out")],
            ),
            message(
                &[0xff, 0x00, 0x80],
                &[("contentType", "application/octet-stream")],
            ),
            // A sender's own properties of the names the hub adds are replaced, wherever they sort.
            message(
                b"x",
                &[
                    ("aaa", "first"),
                    ("connectionDeviceId", "forged"),
                    ("connectionModuleId", "forged"),
                    ("enqueuedTime", "forged"),
                    ("zzz", "last"),
                ],
            ),
        ];
        let enqueued = "2026-12-03T19:00:00.000Z";
        for identity in [&device, &module] {
            for message in &messages {
                assert_eq!(
                    event_text(identity, message, enqueued).unwrap(),
                    serde_json::to_string(&event_json(identity, message, enqueued)).unwrap(),
                    "{identity} {message:?}"
                );
            }
        }
    }
}
