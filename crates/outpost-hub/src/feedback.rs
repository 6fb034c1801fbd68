//! Cloud-to-device messages that arrive over AMQP, and the delivery feedback their senders ask for
//! (`iothub-ack`): durable records written in the transaction that settles the message, handed to the service in
//! batches locked for one receiver, deleted once it accepted them.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use outpost_amqp::{BackendError, C2dMessage, FeedbackBatch, Grant};
use outpost_core::Message;
use serde_json::json;

use crate::error::HubError;
use crate::eventhub::internal;
use crate::storage::Tables;
use crate::store::StorageError;
use crate::Hub;

/// At most this many feedback records wait; past it the oldest are dropped (IoT Hub keeps them for a while
/// only, too).
pub const MAX_FEEDBACK_RECORDS: usize = 10_000;
/// At most this many records travel in one feedback message.
const FEEDBACK_BATCH: usize = 100;
/// How long a feedback batch handed out stays locked before it is handed out again.
const FEEDBACK_LOCK: Duration = Duration::from_mins(1);

impl Hub {
    /// The oldest feedback records not locked, locked for one receiver; waits until there are some.
    pub async fn next_feedback(&self) -> Result<FeedbackBatch, BackendError> {
        let mut added = self.stream.feedback_added.subscribe();
        loop {
            added.borrow_and_update();
            let now = Utc::now().timestamp_millis();
            let token = self.stream.next_lock_token.fetch_add(1, Ordering::Relaxed);
            let lock_ms = i64::try_from(FEEDBACK_LOCK.as_millis()).unwrap_or(i64::MAX);
            let (locked, unlock) = self
                .storage
                .write(move |tx| {
                    let locked = tx.lock_feedback(token, now, now + lock_ms, FEEDBACK_BATCH)?;
                    let unlock = tx.next_feedback_unlock(now)?;
                    Ok::<_, StorageError>((locked, unlock))
                })
                .await
                .map_err(internal)?;
            if let Some(locked) = locked {
                let body = serde_json::to_vec(&locked.records)
                    .map_err(|e| BackendError::Internal(e.to_string()))?;
                return Ok(FeedbackBatch {
                    lock_token: token,
                    body,
                    enqueued_time_ms: locked.enqueued_ms,
                });
            }
            // Nothing free: wait for a new record, or for the earliest lock to end (its receiver went away).
            let until_unlock = unlock.map_or(FEEDBACK_LOCK, |at| {
                Duration::from_millis((at - now).max(1).unsigned_abs())
            });
            tokio::select! {
                changed = added.changed() => if changed.is_err() {
                    return Err(BackendError::Internal("the hub is shutting down".into()));
                },
                () = tokio::time::sleep(until_unlock) => {}
            }
        }
    }

    /// Deletes the feedback records a receiver accepted, in the storage writer's next group commit, without
    /// waiting for it (the AMQP head asks from a synchronous method): until then the records stay locked under
    /// `lock_token`, so no receiver gets them again.
    ///
    /// # Errors
    ///
    /// Outside a tokio runtime, where the deletion cannot be queued.
    pub fn complete_feedback(&self, lock_token: i64) -> Result<(), BackendError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(internal)?;
        let storage = self.storage.clone();
        runtime.spawn(async move {
            let deleted = storage
                .write(move |tx| tx.complete_feedback(lock_token))
                .await;
            if let Err(error) = deleted {
                tracing::warn!(%error, lock_token, "could not delete accepted feedback records");
            }
        });
        Ok(())
    }

    /// Queues a cloud-to-device message that came over AMQP, as the REST route does.
    pub async fn send_amqp_c2d(
        &self,
        grant: &Grant,
        message: C2dMessage,
    ) -> Result<(), BackendError> {
        if !grant.service_connect {
            return Err(BackendError::InvalidArgument(format!(
                "policy {} does not grant ServiceConnect",
                grant.policy
            )));
        }
        let device = message.device_id.clone();
        let message = c2d_message(message);
        self.messaging()
            .send_c2d(&device, &message)
            .await
            .map(drop)
            .map_err(|error| match error {
                HubError::DeviceNotFound(_) => BackendError::NotFound(error.to_string()),
                HubError::QueueFull(_) => BackendError::LimitExceeded(error.to_string()),
                HubError::TooLarge(_) | HubError::ArgumentInvalid(_) => {
                    BackendError::InvalidArgument(error.to_string())
                }
                other => BackendError::Internal(other.to_string()),
            })
    }
}

/// Records the delivery feedback of a cloud-to-device message whose sender asked for it, inside the caller's
/// transaction; returns whether one was recorded.
pub(crate) fn record_feedback(
    tx: &mut dyn Tables,
    device: &outpost_core::DeviceId,
    message: &Message,
    outcome: DeliveryOutcome,
) -> Result<bool, StorageError> {
    let ack = message.system.get("ack").map_or("none", String::as_str);
    let wanted = match outcome {
        DeliveryOutcome::Completed => matches!(ack, "positive" | "full"),
        DeliveryOutcome::Rejected | DeliveryOutcome::Expired => {
            matches!(ack, "negative" | "full")
        }
    };
    if !wanted {
        return Ok(false);
    }
    let generation = tx
        .device(device)?
        .map(|d| d.generation_id)
        .unwrap_or_default();
    let now = Utc::now();
    let record = json!({
        "originalMessageId": message.system.get("messageId"),
        "description": outcome.description(),
        "deviceGenerationId": generation,
        "deviceId": device.as_str(),
        "enqueuedTimeUtc": now.to_rfc3339_opts(SecondsFormat::Millis, true),
        "statusCode": outcome.status_code(),
    });
    tx.add_feedback(&record, now.timestamp_millis(), MAX_FEEDBACK_RECORDS)?;
    Ok(true)
}

/// What became of a cloud-to-device message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The device completed it.
    Completed,
    /// The device rejected it.
    Rejected,
    /// It expired before the device took it.
    Expired,
}

impl DeliveryOutcome {
    fn description(self) -> &'static str {
        match self {
            Self::Completed => "Success",
            Self::Rejected => "Message was rejected",
            Self::Expired => "Expired",
        }
    }

    fn status_code(self) -> &'static str {
        match self {
            Self::Completed => "Success",
            Self::Rejected => "Rejected",
            Self::Expired => "Expired",
        }
    }
}

/// A cloud-to-device message of the AMQP head as the hub queues it.
fn c2d_message(message: C2dMessage) -> Message {
    let mut system = std::collections::BTreeMap::new();
    let message_id = message
        .message_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    system.insert("messageId".to_owned(), message_id);
    system.insert(
        "to".to_owned(),
        format!("/devices/{}/messages/deviceBound", message.device_id),
    );
    let user_id = message
        .user_id
        .map(|u| String::from_utf8_lossy(&u).into_owned());
    let expiry = message.expiry_time_ms.and_then(|ms| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
    });
    for (name, value) in [
        ("correlationId", message.correlation_id),
        ("contentType", message.content_type),
        ("contentEncoding", message.content_encoding),
        ("userId", user_id),
        ("absolute-expiry-time", expiry),
        ("ack", message.ack.filter(|a| a != "none")),
    ] {
        if let Some(value) = value {
            system.insert(name.to_owned(), value);
        }
    }
    Message {
        body: message.body.into(),
        system,
        properties: message
            .application_properties
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::storage::sqlite::SqliteEngine;
    use crate::storage::transaction;

    #[test]
    fn past_the_cap_the_oldest_feedback_records_are_dropped() {
        let engine = SqliteEngine::in_memory().unwrap();
        let device = outpost_core::DeviceId::new("sensor").unwrap();
        let oldest = transaction(&engine, |tx| {
            for i in 0..MAX_FEEDBACK_RECORDS + 3 {
                let message = Message {
                    system: [
                        ("messageId".to_owned(), format!("m{i}")),
                        ("ack".to_owned(), "positive".to_owned()),
                    ]
                    .into(),
                    ..Message::default()
                };
                assert!(record_feedback(
                    tx,
                    &device,
                    &message,
                    DeliveryOutcome::Completed
                )?);
            }
            assert_eq!(tx.feedback_count()?, MAX_FEEDBACK_RECORDS);
            tx.lock_feedback(1, 0, 1, 1)
        })
        .unwrap()
        .unwrap();
        assert_eq!(oldest.records[0]["originalMessageId"], "m3");
    }

    #[test]
    fn feedback_is_recorded_only_for_the_outcomes_the_sender_asked_about() {
        let engine = SqliteEngine::in_memory().unwrap();
        let device = outpost_core::DeviceId::new("sensor").unwrap();
        let asking = |ack: &str| Message {
            system: [("ack".to_owned(), ack.to_owned())].into(),
            ..Message::default()
        };
        transaction(&engine, |tx| {
            let mut recorded = |ack: &str, outcome| {
                record_feedback(&mut *tx, &device, &asking(ack), outcome).unwrap()
            };
            assert!(recorded("positive", DeliveryOutcome::Completed));
            assert!(!recorded("positive", DeliveryOutcome::Expired));
            assert!(!recorded("negative", DeliveryOutcome::Completed));
            assert!(recorded("negative", DeliveryOutcome::Expired));
            assert!(recorded("negative", DeliveryOutcome::Rejected));
            assert!(recorded("full", DeliveryOutcome::Completed));
            assert!(recorded("full", DeliveryOutcome::Expired));
            assert!(!recorded("none", DeliveryOutcome::Completed));
            assert!(!record_feedback(
                tx,
                &device,
                &Message::default(),
                DeliveryOutcome::Expired
            )?);
            Ok::<_, StorageError>(())
        })
        .unwrap();
    }
}
