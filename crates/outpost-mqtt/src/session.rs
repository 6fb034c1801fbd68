//! The protocol state machine of one client session: packets from the client and pushes from the backend
//! go in; packets to send and backend operations to run come out. No I/O and no clock of its own (the
//! driver passes `now`), so each rule is unit-tested here and `server` only moves bytes.
//!
//! Operations come out as [`Call`]s that carry the acknowledgement to send once they finish. The driver
//! runs them concurrently but completes them in order, which keeps PUBACKs in the order of the PUBLISHes
//! [MQTT-4.6.0-2]; a telemetry PUBACK therefore means the backend accepted the message.

mod inflight;

use std::time::{Duration, Instant};

use bytes::Bytes;
use outpost_core::{Identity, Message};
use serde_json::Value;

use crate::ops::{Feature, OperationError, Outgoing};
use crate::packet::{
    Packet, PubAck, Publish, QoS, SubAck, Subscribe, SubscribeReturnCode, UnsubAck, Unsubscribe,
};
use crate::topic::{self, ClientRequest, Subscription, TopicError};

use inflight::{Inflight, Pushed};

/// How much one session may hold for its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// QoS 1 publishes sent and not yet acknowledged; more wait their turn.
    pub max_inflight: u16,
    /// QoS 1 publishes waiting for a packet id. Past this the session ends ([`SessionError::Overflow`]):
    /// a client this far behind is disconnected, which loses nothing (the backend keeps C2D and input
    /// messages until they are acknowledged and pushes them again; the SDK re-reads its twin on reconnect).
    pub max_queued: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_inflight: 100,
            max_queued: 1000,
        }
    }
}

/// Why a session ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// An unsupported topic or filter, or one of another identity (IoT Hub closes the connection too).
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// A QoS 2 PUBLISH: IoT Hub does not support QoS 2 and closes the connection.
    #[error("QoS 2 publish on {0:?} is not supported")]
    QoS2NotSupported(String),
    /// A second CONNECT on the same connection [MQTT-3.1.0-2].
    #[error("second CONNECT on one connection")]
    SecondConnect,
    /// A packet only a server sends (CONNACK, SUBACK, UNSUBACK, PINGRESP).
    #[error("unexpected {0} from a client")]
    UnexpectedPacket(&'static str),
    /// The backend refused a message: no PUBACK, so the client sends it again after reconnecting.
    #[error("message refused by the backend: {0}")]
    MessageRefused(OperationError),
    /// The backend asked for the connection to close ([`Outgoing::Close`]).
    #[error("closed by the backend")]
    ClosedByBackend,
    /// The client fell so far behind that a publish found no room ([`Limits::max_queued`]).
    #[error("the client does not acknowledge what it is sent: {0} found the session's queue full")]
    Overflow(&'static str),
}

/// What the driver must do after the session handled an input.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write this packet to the client.
    Send(Packet),
    /// Run this backend operation, then hand its outcome to [`Session::complete`].
    Call(Call),
    /// The client said DISCONNECT: close without error.
    Close,
}

/// A backend operation and the acknowledgement to send once it has succeeded.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// What to run.
    pub operation: Operation,
    /// PUBACK, SUBACK or UNSUBACK to send when the operation completes.
    pub ack: Option<Packet>,
}

/// A backend operation asked for by the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// `DeviceOperations::get_twin`, answered on `$iothub/twin/res/...`.
    GetTwin {
        /// Request id.
        rid: String,
    },
    /// `DeviceOperations::patch_reported`, answered on `$iothub/twin/res/204/...`.
    PatchReported {
        /// Request id.
        rid: String,
        /// The parsed JSON patch.
        patch: Value,
    },
    /// `DeviceOperations::send_message`; the PUBACK waits for it.
    SendMessage(Message),
    /// `DeviceOperations::method_response`.
    MethodResponse {
        /// Request id of the method call.
        rid: String,
        /// Status chosen by the client.
        status: i32,
        /// Response payload.
        payload: Vec<u8>,
    },
    /// `DeviceOperations::delivered`.
    Delivered(u64),
    /// `DeviceOperations::save_subscriptions` with the full filter list.
    SaveSubscriptions(Vec<String>),
    /// Nothing to call: the outcome is already known, it only waits its turn so acks stay in order.
    Ready(Outcome),
}

/// The result of an [`Operation`], fed back into [`Session::complete`].
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Result of `get_twin`.
    Twin {
        /// Request id.
        rid: String,
        /// The twin's device view, or why not.
        result: Result<Value, OperationError>,
    },
    /// Result of `patch_reported`.
    Reported {
        /// Request id.
        rid: String,
        /// The new reported `$version`, or why not.
        result: Result<u64, OperationError>,
    },
    /// Result of `send_message`.
    Message(Result<(), OperationError>),
    /// An operation without a result.
    Done,
}

/// A subscription as granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Granted {
    subscription: Subscription,
    qos: QoS,
}

/// Granted subscriptions by filter, sorted by filter. A client holds a handful (IoT Hub has four features), so a
/// vector that grows one slot at a time costs every held connection far less than a map's nodes.
#[derive(Debug, Clone, Default)]
struct Subscriptions(Vec<(String, Granted)>);

impl Subscriptions {
    fn find(&self, filter: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(f, _)| f.as_str().cmp(filter))
    }

    /// Adds or replaces the subscription to `filter`.
    fn insert(&mut self, filter: String, granted: Granted) {
        match self.find(&filter) {
            Ok(i) => self.0[i].1 = granted,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (filter, granted));
            }
        }
    }

    fn remove(&mut self, filter: &str) {
        if let Ok(i) = self.find(filter) {
            self.0.remove(i);
        }
    }

    fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(filter, _)| filter)
    }

    fn values(&self) -> impl Iterator<Item = &Granted> {
        self.0.iter().map(|(_, granted)| granted)
    }
}

impl FromIterator<(String, Granted)> for Subscriptions {
    fn from_iter<I: IntoIterator<Item = (String, Granted)>>(items: I) -> Self {
        let mut subscriptions = Self::default();
        for (filter, granted) in items {
            subscriptions.insert(filter, granted);
        }
        subscriptions
    }
}

/// What outlives the connection of a persistent session (CleanSession=0): subscriptions and unacknowledged
/// QoS 1 publishes [MQTT-3.1.2-4].
#[derive(Debug, Clone)]
pub struct StoredSession {
    subscriptions: Subscriptions,
    inflight: Inflight,
}

impl StoredSession {
    /// A session rebuilt from persisted filters (after a restart; nothing is in flight). Filters that no
    /// longer parse for this identity are dropped; the rest count as granted at QoS 1, as the SDK asks.
    pub fn from_filters(identity: &Identity, filters: &[String], limits: Limits) -> Self {
        let subscriptions = filters
            .iter()
            .filter_map(|filter| {
                let subscription = topic::parse_filter(filter, identity).ok()?;
                Some((
                    filter.clone(),
                    Granted {
                        subscription,
                        qos: QoS::AtLeastOnce,
                    },
                ))
            })
            .collect();
        Self {
            subscriptions,
            inflight: Inflight::new(limits.max_inflight, limits.max_queued),
        }
    }

    /// The subscribed topic filters.
    pub fn filters(&self) -> Vec<String> {
        self.subscriptions.keys().cloned().collect()
    }
}

/// The state of one client session.
#[derive(Debug)]
pub struct Session {
    identity: Identity,
    clean: bool,
    subscriptions: Subscriptions,
    inflight: Inflight,
    keep_alive: Option<Duration>,
    deadline: Option<Instant>,
}

impl Session {
    /// A session for an accepted CONNECT; `stored` is resumed unless `clean`.
    pub fn new(
        identity: Identity,
        clean: bool,
        keep_alive_secs: u16,
        stored: Option<StoredSession>,
        limits: Limits,
        now: Instant,
    ) -> Self {
        let stored = stored
            .filter(|_| !clean)
            .unwrap_or_else(|| StoredSession::from_filters(&identity, &[], limits));
        // [MQTT-3.1.2-24] the server disconnects after one and a half keep-alive periods of silence; 0 turns it off.
        let keep_alive =
            (keep_alive_secs > 0).then(|| Duration::from_millis(u64::from(keep_alive_secs) * 1500));
        Self {
            identity,
            clean,
            subscriptions: stored.subscriptions,
            inflight: if clean {
                stored.inflight.without_copies()
            } else {
                stored.inflight
            },
            keep_alive,
            deadline: keep_alive.map(|k| now + k),
        }
    }

    /// The identity this session belongs to.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// When the connection must close unless a packet arrives first.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The features the client subscribed to, as [`Feature::bit`]s.
    pub fn features(&self) -> u8 {
        self.subscriptions
            .values()
            .fold(0, |bits, granted| match granted.subscription {
                Subscription::Feature(feature) => bits | feature.bit(),
                Subscription::TwinResponses => bits,
            })
    }

    /// The subscribed topic filters.
    pub fn filters(&self) -> Vec<String> {
        self.subscriptions.keys().cloned().collect()
    }

    /// QoS 1 publishes of a resumed session the client never acknowledged, to send again first [MQTT-4.4.0-1].
    pub fn redeliveries(&self) -> Vec<Action> {
        self.inflight
            .redeliver()
            .into_iter()
            .map(|p| Action::Send(Packet::Publish(p)))
            .collect()
    }

    /// What survives the connection: `None` for a clean session, which ends with it [MQTT-3.1.2-6].
    pub fn into_stored(self) -> Option<StoredSession> {
        (!self.clean).then_some(StoredSession {
            subscriptions: self.subscriptions,
            inflight: self.inflight,
        })
    }

    /// Handles a packet from the client, received at `now`.
    pub fn handle(&mut self, packet: Packet, now: Instant) -> Result<Vec<Action>, SessionError> {
        self.deadline = self.keep_alive.map(|k| now + k);
        match packet {
            Packet::Publish(publish) => self.handle_publish(publish),
            Packet::PubAck(PubAck { pkid }) => Ok(self.handle_puback(pkid)),
            Packet::Subscribe(subscribe) => self.handle_subscribe(subscribe),
            Packet::Unsubscribe(unsubscribe) => Ok(self.handle_unsubscribe(&unsubscribe)),
            Packet::PingReq => Ok(vec![Action::Send(Packet::PingResp)]),
            Packet::Disconnect => Ok(vec![Action::Close]),
            // [MQTT-3.1.0-2] a second CONNECT is a protocol violation.
            Packet::Connect(_) => Err(SessionError::SecondConnect),
            other => Err(SessionError::UnexpectedPacket(other.name())),
        }
    }

    fn handle_publish(&mut self, publish: Publish) -> Result<Vec<Action>, SessionError> {
        let ack = match publish.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Packet::PubAck(PubAck { pkid: publish.pkid })),
            QoS::ExactlyOnce => return Err(SessionError::QoS2NotSupported(publish.topic)),
        };
        let operation = match topic::parse_publish(&publish.topic, &self.identity)? {
            // The SDK sends a single space as the GET body; it means nothing.
            ClientRequest::TwinGet { rid } => Operation::GetTwin { rid },
            ClientRequest::TwinPatchReported { rid } => {
                match serde_json::from_slice(&publish.payload) {
                    Ok(patch) => Operation::PatchReported { rid, patch },
                    Err(e) => {
                        let error =
                            OperationError::new(400, format!("reported patch is not JSON: {e}"));
                        Operation::Ready(Outcome::Reported {
                            rid,
                            result: Err(error),
                        })
                    }
                }
            }
            ClientRequest::Telemetry { system, properties } => Operation::SendMessage(Message {
                // The codec copied the payload out of the read buffer: a queue holding the message keeps
                // only the payload alive.
                body: publish.payload,
                system,
                properties,
            }),
            ClientRequest::MethodResponse { rid, status } => Operation::MethodResponse {
                rid,
                status,
                payload: publish.payload.to_vec(),
            },
        };
        Ok(vec![Action::Call(Call { operation, ack })])
    }

    fn handle_puback(&mut self, pkid: u16) -> Vec<Action> {
        let Some((delivery, next)) = self.inflight.ack(pkid) else {
            tracing::debug!(client = %self.identity, pkid, "PUBACK for a packet id not in flight");
            return Vec::new();
        };
        let mut actions: Vec<Action> = next
            .map(|p| Action::Send(Packet::Publish(p)))
            .into_iter()
            .collect();
        if let Some(id) = delivery {
            actions.push(Action::Call(Call {
                operation: Operation::Delivered(id),
                ack: None,
            }));
        }
        actions
    }

    fn handle_subscribe(&mut self, subscribe: Subscribe) -> Result<Vec<Action>, SessionError> {
        let mut return_codes = Vec::with_capacity(subscribe.filters.len());
        for (filter, requested) in subscribe.filters {
            let subscription = topic::parse_filter(&filter, &self.identity)?;
            // IoT Hub grants at most QoS 1.
            let qos = requested.min(QoS::AtLeastOnce);
            // [MQTT-3.8.4-3] a filter subscribed again replaces the old subscription.
            self.subscriptions
                .insert(filter, Granted { subscription, qos });
            return_codes.push(SubscribeReturnCode::Success(qos));
        }
        Ok(vec![self.persist(Packet::SubAck(SubAck {
            pkid: subscribe.pkid,
            return_codes,
        }))])
    }

    fn handle_unsubscribe(&mut self, unsubscribe: &Unsubscribe) -> Vec<Action> {
        for filter in &unsubscribe.filters {
            self.subscriptions.remove(filter);
        }
        // [MQTT-3.10.4-5] UNSUBACK even when nothing matched.
        vec![self.persist(Packet::UnsubAck(UnsubAck {
            pkid: unsubscribe.pkid,
        }))]
    }

    /// A persistent session stores its filters before acknowledging a change; a clean one just acknowledges.
    fn persist(&self, ack: Packet) -> Action {
        if self.clean {
            Action::Send(ack)
        } else {
            Action::Call(Call {
                operation: Operation::SaveSubscriptions(self.filters()),
                ack: Some(ack),
            })
        }
    }

    /// Turns a finished operation into the packets to send: its ack, then its response.
    pub fn complete(
        &mut self,
        outcome: Outcome,
        ack: Option<Packet>,
    ) -> Result<Vec<Packet>, SessionError> {
        let response = match outcome {
            Outcome::Twin { rid, result } => match result {
                Ok(twin) => self.twin_response(200, &rid, None, json_bytes(&twin))?,
                Err(e) => self.twin_error(&rid, &e)?,
            },
            Outcome::Reported { rid, result } => match result {
                Ok(version) => self.twin_response(204, &rid, Some(version), Vec::new())?,
                Err(e) => self.twin_error(&rid, &e)?,
            },
            Outcome::Message(Err(e)) => return Err(SessionError::MessageRefused(e)),
            Outcome::Message(Ok(())) | Outcome::Done => None,
        };
        Ok(ack.into_iter().chain(response).collect())
    }

    fn twin_error(
        &mut self,
        rid: &str,
        error: &OperationError,
    ) -> Result<Option<Packet>, SessionError> {
        let body = json_bytes(&serde_json::json!({ "message": error.message }));
        self.twin_response(error.status, rid, None, body)
    }

    /// Twin responses go out whether or not the client subscribed to `$iothub/twin/res/#`: after a reconnect
    /// the SDK sends a GET without subscribing (device_sdk_reconnect_wire.log).
    fn twin_response(
        &mut self,
        status: u16,
        rid: &str,
        version: Option<u64>,
        body: Vec<u8>,
    ) -> Result<Option<Packet>, SessionError> {
        let qos = self
            .granted(Subscription::TwinResponses)
            .unwrap_or(QoS::AtLeastOnce);
        let publish = Publish::new(topic::twin_response(status, rid, version), qos, body);
        self.send(publish, None, "a twin response")
    }

    /// Handles a push from the backend.
    pub fn push(&mut self, item: Outgoing) -> Result<Vec<Action>, SessionError> {
        let actions = match item {
            Outgoing::DesiredPatch { body } => {
                let Some(qos) = self.granted(Subscription::Feature(Feature::DesiredPatches)) else {
                    return Ok(self.dropped("desired patch", Feature::DesiredPatches));
                };
                let version = body
                    .get("$version")
                    .and_then(Value::as_u64)
                    .unwrap_or_default();
                let publish = Publish::new(topic::desired_patch(version), qos, json_bytes(&body));
                self.send(publish, None, "a desired patch")?
                    .map(Action::Send)
                    .into_iter()
                    .collect()
            }
            Outgoing::CloudToDevice {
                delivery_id,
                message,
            } => {
                if self.identity.module.is_some() {
                    return Ok(self.dropped("C2D message to a module", Feature::CloudToDevice));
                }
                let topic = topic::cloud_to_device(&self.identity, &message);
                self.deliver(Feature::CloudToDevice, delivery_id, topic, message.body)?
            }
            Outgoing::Input {
                delivery_id,
                topic,
                body,
            } => {
                if self.identity.module.is_none() {
                    return Ok(self.dropped("input message to a device", Feature::Inputs));
                }
                self.deliver(Feature::Inputs, delivery_id, topic, body)?
            }
            Outgoing::MethodRequest {
                rid,
                method,
                payload,
            } => {
                if self
                    .granted(Subscription::Feature(Feature::Methods))
                    .is_none()
                {
                    return Ok(self.dropped("method request", Feature::Methods));
                }
                // Method requests go at QoS 0, as IoT Hub sends them; the service side times out instead.
                vec![Action::Send(Packet::Publish(Publish::new(
                    topic::method_request(&method, &rid),
                    QoS::AtMostOnce,
                    payload,
                )))]
            }
            Outgoing::Close => return Err(SessionError::ClosedByBackend),
        };
        Ok(actions)
    }

    /// Sends a C2D or input message whose PUBACK becomes `delivered(delivery_id)`.
    fn deliver(
        &mut self,
        feature: Feature,
        delivery_id: u64,
        topic: String,
        body: Bytes,
    ) -> Result<Vec<Action>, SessionError> {
        let Some(qos) = self.granted(Subscription::Feature(feature)) else {
            return Ok(self.dropped("message", feature));
        };
        // The backend re-pushes what is not delivered when a session resumes; the session may already be
        // redelivering it.
        if self.inflight.holds_delivery(delivery_id) {
            return Ok(Vec::new());
        }
        let publish = Publish::new(topic, qos, body);
        if qos == QoS::AtMostOnce {
            // Granted QoS 0: no PUBACK will ever come, so sending is delivering.
            let delivered = Call {
                operation: Operation::Delivered(delivery_id),
                ack: None,
            };
            return Ok(vec![
                Action::Send(Packet::Publish(publish)),
                Action::Call(delivered),
            ]);
        }
        Ok(self
            .send(publish, Some(delivery_id), "a message")?
            .map(Action::Send)
            .into_iter()
            .collect())
    }

    /// A QoS 0 publish goes out now; a QoS 1 publish takes a packet id, or waits for one, or ends the
    /// session when the client is so far behind that no room is left ([`Limits::max_queued`]).
    fn send(
        &mut self,
        publish: Publish,
        delivery: Option<u64>,
        what: &'static str,
    ) -> Result<Option<Packet>, SessionError> {
        if publish.qos == QoS::AtMostOnce {
            return Ok(Some(Packet::Publish(publish)));
        }
        match self.inflight.push(publish, delivery) {
            Pushed::Send(publish) => Ok(Some(Packet::Publish(publish))),
            Pushed::Queued => Ok(None),
            Pushed::Full => Err(SessionError::Overflow(what)),
        }
    }

    fn granted(&self, subscription: Subscription) -> Option<QoS> {
        self.subscriptions
            .values()
            .filter(|g| g.subscription == subscription)
            .map(|g| g.qos)
            .max()
    }

    fn dropped(&self, what: &str, feature: Feature) -> Vec<Action> {
        tracing::debug!(client = %self.identity, ?feature, "{what} dropped: not subscribed");
        Vec::new()
    }
}

fn json_bytes(value: &Value) -> Vec<u8> {
    // Serialising a Value cannot fail (its map keys are strings).
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests;
