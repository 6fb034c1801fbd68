//! The hub's side of the Event Hubs-compatible endpoint: the partitioned stream's settings and heads, positions,
//! twin change events, the service's AMQP credentials, and [`HubService`], the [`ServiceBackend`] the AMQP head
//! of `outpost-amqp` calls (its C2D and feedback half is in [`feedback`](crate::feedback)).
//!
//! Appending is always part of the transaction that makes the event true (a telemetry batch, a twin write), and
//! the partition's watch is told only after that transaction committed: a reader never sees an event the hub
//! could still lose, and [`ServiceBackend::wait_events`] sleeps until an append, without polling.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use chrono::{SecondsFormat, Utc};
use outpost_amqp::{
    AuthError, BackendError, C2dMessage, Event, EventHubInfo, EventPosition, FeedbackBatch, Grant,
    PartitionInfo, ServiceBackend, Value as AmqpValue,
};
use outpost_core::{Identity, SasToken};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::error::HubError;
use crate::identity::Right;
use crate::storage::{self, Engine, Tables};
use crate::store::StorageError;
use crate::stream::{self, Appended, EventHubRecord, EventSource, PartitionEvent};
use crate::Hub;

/// Partitions of a new hub unless `--partitions` says otherwise.
pub const DEFAULT_PARTITIONS: u32 = 4;
/// The most partitions a hub may have (Event Hubs' limit for a standard namespace).
pub const MAX_PARTITIONS: u32 = 32;
/// The consumer group every Event Hub has.
pub const DEFAULT_CONSUMER_GROUP: &str = "$Default";
/// At most this many consumer groups may be created (IoT Hub's limit on its built-in endpoint is 20).
pub const MAX_CONSUMER_GROUPS: usize = 20;

/// How the stream is partitioned and what it carries besides telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSettings {
    /// The partition count: `None` keeps the stored one ([`DEFAULT_PARTITIONS`] for a new hub); a count that
    /// differs from the stored one is an error, as the partition of every event would change.
    pub partitions: Option<u32>,
    /// Whether twin changes append twin change events.
    pub twin_change_events: bool,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            partitions: None,
            twin_change_events: true,
        }
    }
}

/// The Event Hub's name for a hub host name: its first DNS label (IoT Hub's hub name), or `outpost` for an IP
/// address.
pub fn event_hub_name(host_name: &str) -> String {
    let host = host_name
        .rsplit_once(':')
        .filter(|(_, port)| port.parse::<u16>().is_ok())
        .map_or(host_name, |(host, _)| host);
    if host.parse::<std::net::IpAddr>().is_ok() || host.is_empty() {
        return "outpost".to_owned();
    }
    host.split('.').next().unwrap_or(host).to_ascii_lowercase()
}

/// What the hub holds of its Event Hub while it runs.
pub(crate) struct EventHubState {
    record: EventHubRecord,
    /// The sequence number of each partition's newest event, for waiting readers.
    heads: Vec<watch::Sender<i64>>,
    twin_change_events: bool,
    /// The sequence number of the newest device-to-cloud event, for long-polling readers.
    pub(crate) newest_event: watch::Sender<i64>,
    /// Bumped when a feedback record is added, for the waiting feedback receiver.
    pub(crate) feedback_added: watch::Sender<u64>,
    pub(crate) next_lock_token: AtomicI64,
}

/// The Event Hub's settings that twin change events need, owned, so that a write job can carry them.
#[derive(Debug, Clone)]
pub(crate) struct TwinChanges {
    hub_name: String,
    partitions: u32,
    enabled: bool,
}

impl TwinChanges {
    /// Appends the twin change event of `identity` with `body` (see [`twin_change_body`]) inside the caller's
    /// transaction, unless twin change events are off.
    pub(crate) fn append(
        &self,
        tx: &mut dyn Tables,
        identity: &Identity,
        operation: TwinOperation,
        body: &Value,
    ) -> Result<Option<Appended>, StorageError> {
        if !self.enabled {
            return Ok(None);
        }
        let now = Utc::now();
        let timestamp = now.to_rfc3339_opts(SecondsFormat::Millis, true);
        let module = identity.module.as_ref().map(outpost_core::ModuleId::as_str);
        let mut properties = json!({
            "hubName": self.hub_name,
            "deviceId": identity.device.as_str(),
            "operationTimestamp": timestamp,
            "iothub-message-schema": "twinChangeNotification",
            "opType": operation.op_type(),
        });
        let mut system = json!({
            "contentType": "application/json",
            "contentEncoding": "utf-8",
            "connectionDeviceId": identity.device.as_str(),
            "enqueuedTime": timestamp,
        });
        if let Some(module) = module {
            properties["moduleId"] = module.into();
            system["connectionModuleId"] = module.into();
        }
        let event = json!({
            "deviceId": identity.device.as_str(),
            "moduleId": module,
            "properties": properties,
            "systemProperties": system,
            "enqueuedTime": timestamp,
            "messageSource": EventSource::TwinChange.annotation(),
            "body": body.to_string(),
        });
        let partition = stream::partition_of(identity.device.as_str(), self.partitions);
        tx.append_event(
            partition,
            EventSource::TwinChange,
            &event,
            now.timestamp_millis(),
        )
        .map(Some)
    }
}

impl EventHubState {
    /// Reads (or creates) the Event Hub of `engine` and gives events of an older database their partitions.
    pub(crate) fn open(
        engine: &dyn Engine,
        host_name: &str,
        settings: &StreamSettings,
    ) -> Result<Self, HubError> {
        if let Some(count) = settings.partitions {
            if !(1..=MAX_PARTITIONS).contains(&count) {
                return Err(HubError::ArgumentInvalid(format!(
                    "the partition count must be between 1 and {MAX_PARTITIONS}, not {count}"
                )));
            }
        }
        let (record, heads) = storage::transaction(engine, |tx| {
            let record = if let Some(stored) = tx.event_hub()? {
                if let Some(asked) = settings.partitions.filter(|&p| p != stored.partitions) {
                    return Err(HubError::ArgumentInvalid(format!(
                        "the event stream of this data directory has {} partitions, not {asked}: the \
                         partition count is fixed when a hub is created (leave --partitions out, or give {})",
                        stored.partitions, stored.partitions
                    )));
                }
                stored
            } else {
                let record = EventHubRecord {
                    name: event_hub_name(host_name),
                    partitions: settings.partitions.unwrap_or(DEFAULT_PARTITIONS),
                    created_ms: Utc::now().timestamp_millis(),
                };
                tx.create_event_hub(&record)?;
                record
            };
            let assigned = tx.assign_partitions(record.partitions)?;
            if assigned > 0 {
                tracing::info!(
                    assigned,
                    "gave the events of an older database their partitions"
                );
            }
            let heads = (0..record.partitions)
                .map(|p| Ok(tx.head(p)?.last_seq))
                .collect::<Result<Vec<_>, StorageError>>()?;
            Ok::<_, HubError>((record, heads))
        })?;
        Ok(Self {
            record,
            heads: heads.into_iter().map(|h| watch::channel(h).0).collect(),
            twin_change_events: settings.twin_change_events,
            newest_event: watch::channel(0).0,
            feedback_added: watch::channel(0).0,
            next_lock_token: AtomicI64::new(Utc::now().timestamp_micros()),
        })
    }

    /// The partition `identity`'s device-to-cloud messages go to (a device and its modules share one).
    pub(crate) fn partition_of(&self, identity: &Identity) -> u32 {
        stream::partition_of(identity.device.as_str(), self.record.partitions)
    }

    /// What a write job on the storage writer's thread needs to append twin change events.
    pub(crate) fn twin_changes(&self) -> TwinChanges {
        TwinChanges {
            hub_name: self.record.name.clone(),
            partitions: self.record.partitions,
            enabled: self.twin_change_events,
        }
    }

    /// Wakes the readers of the partitions `appended` went to, here and on the other `replicas`; call after their
    /// transaction committed.
    pub(crate) fn streamed(
        &self,
        appended: &[Appended],
        replicas: Option<&crate::replicas::Replicas>,
    ) {
        let mut newest = None;
        let mut partitions: Vec<(u32, i64)> = Vec::new();
        for event in appended {
            match partitions.iter_mut().find(|(p, _)| *p == event.partition) {
                Some((_, seq)) => *seq = (*seq).max(event.partition_seq),
                None => partitions.push((event.partition, event.partition_seq)),
            }
            if let Some(head) = self.heads.get(event.partition as usize) {
                head.send_if_modified(|last| {
                    let newer = event.partition_seq > *last;
                    if newer {
                        *last = event.partition_seq;
                    }
                    newer
                });
            }
            newest = newest.max(Some(event.seq));
        }
        if let (Some(newest), Some(replicas)) = (newest, replicas) {
            replicas.tell(crate::replicas::Notice::Events { newest, partitions });
        }
        if let Some(newest) = newest {
            self.newest_event.send_if_modified(|last| {
                let newer = newest > *last;
                if newer {
                    *last = newest;
                }
                newer
            });
        }
    }

    /// Wakes the readers of the partitions another replica appended to (each with its newest sequence number).
    pub(crate) fn streamed_elsewhere(&self, partitions: &[(u32, i64)]) {
        for &(partition, seq) in partitions {
            if let Some(head) = self.heads.get(partition as usize) {
                head.send_if_modified(|last| {
                    let newer = seq > *last;
                    if newer {
                        *last = seq;
                    }
                    newer
                });
            }
        }
    }

    /// Wakes the long polls and Event Hub readers of this replica: another one appended events up to `newest`,
    /// to `partitions` (each with its newest partition sequence number).
    pub(crate) fn appended_elsewhere(&self, newest: i64, partitions: &[(u32, i64)]) {
        self.streamed_elsewhere(partitions);
        self.newest_event.send_if_modified(|last| {
            let newer = newest > *last;
            if newer {
                *last = newest;
            }
            newer
        });
    }

    /// Wakes the feedback receiver; call after a transaction that recorded feedback committed.
    pub(crate) fn feedback_recorded(&self) {
        self.feedback_added.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn partition(&self, partition: u32) -> Result<&watch::Sender<i64>, BackendError> {
        self.heads.get(partition as usize).ok_or_else(|| {
            BackendError::NotFound(format!(
                "partition {partition} does not exist (the event hub has {})",
                self.record.partitions
            ))
        })
    }
}

/// The partition sequence number to read after so that reading `partition` starts where `position` says.
fn resolve(
    tables: &mut dyn Tables,
    partition: u32,
    position: EventPosition,
) -> Result<i64, StorageError> {
    let last = tables.head(partition)?.last_seq;
    let before = |first: Option<i64>| first.map_or(last, |seq| seq - 1);
    Ok(match position {
        EventPosition::Earliest => -1,
        EventPosition::Latest => last,
        EventPosition::Offset { offset, inclusive } => {
            before(tables.first_from_offset(partition, offset, inclusive)?)
        }
        EventPosition::SequenceNumber {
            sequence_number,
            inclusive,
        } => if inclusive {
            sequence_number - 1
        } else {
            sequence_number
        }
        .max(-1),
        EventPosition::EnqueuedTime { ms } => before(tables.first_after_time(partition, ms)?),
    })
}

/// Why a twin changed, as twin change events say it (`opType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwinOperation {
    /// A patch of tags, desired or reported properties.
    Update,
    /// A replacement of tags or desired properties.
    Replace,
}

impl TwinOperation {
    fn op_type(self) -> &'static str {
        match self {
            Self::Update => "updateTwin",
            Self::Replace => "replaceTwin",
        }
    }
}

/// The body of a twin change event: the new twin `version` and what changed, each section with its `$version`.
pub fn twin_change_body(
    version: u64,
    tags: Option<&Value>,
    desired: Option<&Value>,
    reported: Option<&Value>,
) -> Value {
    let mut body = json!({ "version": version });
    if let Some(tags) = tags {
        body["tags"] = tags.clone();
    }
    let mut properties = serde_json::Map::new();
    if let Some(desired) = desired {
        properties.insert("desired".into(), desired.clone());
    }
    if let Some(reported) = reported {
        properties.insert("reported".into(), reported.clone());
    }
    if !properties.is_empty() {
        body["properties"] = Value::Object(properties);
    }
    body
}

impl Hub {
    /// The hub's Event Hub.
    pub fn event_hub(&self) -> EventHubInfo {
        EventHubInfo {
            name: self.stream.record.name.clone(),
            created_at_ms: self.stream.record.created_ms,
            partition_count: self.stream.record.partitions,
        }
    }

    /// The state of one partition.
    pub fn partition_info(&self, partition: u32) -> Result<PartitionInfo, BackendError> {
        self.stream.partition(partition)?;
        let (head, first) = self
            .storage
            .read_blocking(|tables| {
                Ok::<_, StorageError>((tables.head(partition)?, tables.first_kept(partition)?))
            })
            .map_err(internal)?;
        Ok(PartitionInfo {
            begin_sequence_number: first.unwrap_or(head.last_seq + 1),
            last_enqueued_sequence_number: head.last_seq,
            last_enqueued_offset: head.last_offset,
            last_enqueued_time_ms: head.last_enqueued_ms,
            is_empty: first.is_none(),
        })
    }

    /// The partition sequence number to read after so that reading starts where `position` says.
    pub fn resolve_position(
        &self,
        partition: u32,
        position: EventPosition,
    ) -> Result<i64, BackendError> {
        self.stream.partition(partition)?;
        self.storage
            .read_blocking(|tables| resolve(tables, partition, position))
            .map_err(internal)
    }

    /// Up to `max` events of `partition` after sequence number `after`; waits until there is one.
    pub async fn wait_partition_events(
        &self,
        partition: u32,
        after: i64,
        max: usize,
    ) -> Result<Vec<Event>, BackendError> {
        let mut head = self.stream.partition(partition)?.subscribe();
        loop {
            // Marked seen before reading, so that an append between the read and the wait still wakes us.
            head.borrow_and_update();
            let events = self
                .storage
                .read(move |tables| tables.partition_events(partition, after, max.max(1)))
                .await
                .map_err(internal)?;
            if !events.is_empty() {
                return Ok(events.iter().map(amqp_event).collect());
            }
            if head.changed().await.is_err() {
                return Err(BackendError::Internal("the hub is shutting down".into()));
            }
        }
    }

    /// The consumer groups: `$Default` and those created.
    pub async fn consumer_groups(&self) -> Result<Vec<String>, HubError> {
        let mut groups = vec![DEFAULT_CONSUMER_GROUP.to_owned()];
        groups.extend(self.storage.read(|tables| tables.consumer_groups()).await?);
        Ok(groups)
    }

    /// Whether a consumer group exists (read from the database, so that groups created by the CLI while the hub
    /// runs count at once).
    pub fn consumer_group_exists(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(DEFAULT_CONSUMER_GROUP)
            || self
                .storage
                .read_blocking(|tables| tables.consumer_group_exists(name))
                .unwrap_or(false)
    }

    /// The grant of a SAS token put on `$cbs` for `audience`: signed by an access policy of this hub, for this
    /// hub (or its Event Hub), not expired.
    pub fn authorize_amqp_token(&self, audience: &str, token: &str) -> Result<Grant, AuthError> {
        let refuse = |why: String| AuthError(why);
        let parsed = SasToken::parse(token).map_err(|e| refuse(e.to_string()))?;
        let resource = percent_encoding::percent_decode_str(&parsed.resource_raw)
            .decode_utf8()
            .map_err(|_| refuse("the token's resource is not UTF-8".into()))?;
        if !self.covers(&resource) {
            return Err(refuse(format!(
                "the token's resource {resource} is not this hub ({})",
                self.host_name
            )));
        }
        if !audience.is_empty() && !self.covers(audience) {
            return Err(refuse(format!("the audience {audience} is not this hub")));
        }
        let policy_name = parsed
            .key_name
            .clone()
            .ok_or_else(|| refuse("the token names no shared access policy (skn)".into()))?;
        let policy = self
            .policy(&policy_name)
            .ok_or_else(|| refuse(format!("no shared access policy named {policy_name}")))?;
        // IoT Hub's SDKs sign with the base64-decoded key; Event Hubs' (azure-eventhub, Service Bus) sign with
        // the key's text as it is, and IoT Hub's Event Hubs-compatible endpoint takes both. `verify` decodes
        // each key, so the second pair is the keys' text encoded once more.
        let as_text = |key: &str| base64::engine::general_purpose::STANDARD.encode(key.as_bytes());
        let (primary_text, secondary_text) =
            (as_text(&policy.primary_key), as_text(&policy.secondary_key));
        parsed
            .verify(
                &[
                    policy.primary_key.as_str(),
                    policy.secondary_key.as_str(),
                    primary_text.as_str(),
                    secondary_text.as_str(),
                ],
                chrono::Utc::now().timestamp().max(0).unsigned_abs(),
            )
            .map_err(|e| refuse(e.to_string()))?;
        Ok(Grant {
            policy: policy.name.clone(),
            service_connect: policy.grants(Right::ServiceConnect),
            expires_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(parsed.expiry)),
        })
    }

    /// The grant of SASL PLAIN credentials: a policy name (`name` or `name@sas.root.HUB`) with a SAS token of
    /// that policy or the policy's key itself.
    pub fn authorize_amqp_plain(&self, user: &str, password: &str) -> Result<Grant, AuthError> {
        let name = user.split_once('@').map_or(user, |(name, _)| name);
        if password.starts_with("SharedAccessSignature ") {
            let grant = self.authorize_amqp_token("", password)?;
            if !grant.policy.eq_ignore_ascii_case(name) {
                return Err(AuthError(format!(
                    "the token is signed by policy {}, not {name}",
                    grant.policy
                )));
            }
            return Ok(grant);
        }
        let policy = self
            .policy(name)
            .ok_or_else(|| AuthError(format!("no shared access policy named {name}")))?;
        let matches = [&policy.primary_key, &policy.secondary_key]
            .iter()
            .any(|key| constant_time_eq(key.as_bytes(), password.as_bytes()));
        if !matches {
            return Err(AuthError(format!("wrong key for policy {name}")));
        }
        Ok(Grant {
            policy: policy.name.clone(),
            service_connect: policy.grants(Right::ServiceConnect),
            expires_at: None,
        })
    }

    /// Whether a token resource or audience names this hub: its host, optionally with a scheme, and a path that
    /// is empty, the Event Hub's name or an IoT Hub service node (`messages/...`, `devices/...`).
    fn covers(&self, resource: &str) -> bool {
        let rest = resource
            .split_once("://")
            .map_or(resource, |(_, rest)| rest);
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let first = path.split('/').next().unwrap_or("");
        crate::auth::same_host(host, &self.host_name)
            && (first.is_empty()
                || first.eq_ignore_ascii_case(&self.stream.record.name)
                || first.eq_ignore_ascii_case("messages")
                || first.eq_ignore_ascii_case("devices"))
    }
}

/// Compares two secrets in time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn internal(error: impl std::fmt::Display) -> BackendError {
    BackendError::Internal(error.to_string())
}

/// An event as the AMQP head sends it, from its stored JSON.
fn amqp_event(stored: &PartitionEvent) -> Event {
    let event = &stored.event;
    let body = match (event.get("body"), event.get("bodyBase64")) {
        (Some(Value::String(text)), _) => text.clone().into_bytes(),
        (_, Some(Value::String(encoded))) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let system = |name: &str| {
        event
            .get("systemProperties")
            .and_then(|s| s.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let application_properties = event
        .get("properties")
        .and_then(Value::as_object)
        .map(|properties| {
            properties
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    (k.clone(), AmqpValue::String(value))
                })
                .collect()
        })
        .unwrap_or_default();
    let device = event.get("deviceId").and_then(Value::as_str).unwrap_or("");
    let module = event.get("moduleId").and_then(Value::as_str);
    let mut annotations = vec![(
        "iothub-connection-device-id".to_owned(),
        AmqpValue::String(device.to_owned()),
    )];
    if let Some(module) = module {
        annotations.push((
            "iothub-connection-module-id".to_owned(),
            AmqpValue::String(module.to_owned()),
        ));
    }
    if stored.source == EventSource::Telemetry {
        let scope = if module.is_some() { "module" } else { "device" };
        annotations.push((
            "iothub-connection-auth-method".to_owned(),
            AmqpValue::String(format!(
                r#"{{"scope":"{scope}","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}}"#
            )),
        ));
    }
    annotations.push((
        "iothub-enqueuedtime".to_owned(),
        AmqpValue::Timestamp(stored.enqueued_ms),
    ));
    annotations.push((
        "iothub-message-source".to_owned(),
        AmqpValue::String(stored.source.annotation().to_owned()),
    ));
    Event {
        sequence_number: stored.partition_seq,
        offset: stored.offset,
        enqueued_time_ms: stored.enqueued_ms,
        body,
        message_id: system("messageId"),
        correlation_id: system("correlationId"),
        content_type: system("contentType"),
        content_encoding: system("contentEncoding"),
        user_id: system("userId").map(String::into_bytes),
        application_properties,
        annotations,
    }
}

/// [`Hub`] behind an `Arc`, as the AMQP head holds it.
pub struct HubService(pub Arc<Hub>);

#[async_trait::async_trait]
impl ServiceBackend for HubService {
    fn authorize_token(&self, audience: &str, token: &str) -> Result<Grant, AuthError> {
        self.0.authorize_amqp_token(audience, token)
    }

    fn authorize_plain(&self, user: &str, password: &str) -> Result<Grant, AuthError> {
        self.0.authorize_amqp_plain(user, password)
    }

    fn event_hub(&self) -> EventHubInfo {
        self.0.event_hub()
    }

    fn consumer_group_exists(&self, name: &str) -> bool {
        self.0.consumer_group_exists(name)
    }

    fn partition_info(&self, partition: u32) -> Result<PartitionInfo, BackendError> {
        self.0.partition_info(partition)
    }

    fn resolve_position(
        &self,
        partition: u32,
        position: EventPosition,
    ) -> Result<i64, BackendError> {
        self.0.resolve_position(partition, position)
    }

    async fn wait_events(
        &self,
        partition: u32,
        after: i64,
        max: usize,
    ) -> Result<Vec<Event>, BackendError> {
        self.0.wait_partition_events(partition, after, max).await
    }

    async fn send_c2d(&self, grant: &Grant, message: C2dMessage) -> Result<(), BackendError> {
        self.0.send_amqp_c2d(grant, message).await
    }

    async fn next_feedback(&self) -> Result<FeedbackBatch, BackendError> {
        self.0.next_feedback().await
    }

    fn complete_feedback(&self, lock_token: i64) -> Result<(), BackendError> {
        self.0.complete_feedback(lock_token)
    }
}
