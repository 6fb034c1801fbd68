//! The task behind every client: it owns the connection and all protocol state, reconnects with back-off,
//! renews the token, and matches answers to the callers waiting for them.
//!
//! One task, plain maps, no locks: callers send `Command`s and wait on a oneshot; the server's pushes go
//! out on the application's streams. What survives a lost connection: every operation not yet answered
//! (resent on the next connection; its caller's timeout bounds the wait), the features subscribed to
//! (subscribed again on every connection), and the desired-properties tracker (the twin is read again after
//! every connection, so changes made while away are delivered once). A refused CONNECT on a reconnect is
//! final: the client stops and every caller gets the reason, rather than retrying bad credentials forever.
//! This file holds the connection's life; `incoming` what the server sends.

mod incoming;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use outpost_mqtt::packet::{Packet, Publish, QoS, Subscribe};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::config::Config;
use crate::credentials::IssuedToken;
use crate::error::ClientError;
use crate::link::{Link, LinkEnd};
use crate::message::Message;
use crate::methods::MethodCall;
use crate::requests::{Command, ConnectionStatus, Requester, TwinAnswer};
use crate::topics::{self, Feature};
use crate::twin::{DesiredPatch, DesiredTracker};

/// A publish whose connection closed this many times before it was acknowledged is failed: IoT Hub closes
/// the connection on a publish it refuses, and resending that one forever would never end.
const MAX_ATTEMPTS: u32 = 3;

/// Where the server's pushes go: the application's streams.
pub(crate) struct Sinks {
    pub(crate) desired: mpsc::UnboundedSender<DesiredPatch>,
    pub(crate) methods: mpsc::UnboundedSender<MethodCall>,
    pub(crate) cloud_to_device: mpsc::UnboundedSender<Message>,
    pub(crate) inputs: mpsc::UnboundedSender<Message>,
}

/// Who waits for an operation.
enum Waiter {
    /// A publish, done at PUBACK.
    Ack(oneshot::Sender<Result<(), ClientError>>),
    /// A twin request of the application, done at its response.
    Twin(oneshot::Sender<Result<TwinAnswer, ClientError>>),
    /// The driver's own twin read for the desired tracker.
    Resync,
}

impl Waiter {
    /// Whether nobody listens for the answer any more (the caller timed out or went away).
    fn abandoned(&self) -> bool {
        match self {
            Self::Ack(reply) => reply.is_closed(),
            Self::Twin(reply) => reply.is_closed(),
            Self::Resync => false,
        }
    }

    fn fail(self, error: ClientError) {
        match self {
            Self::Ack(reply) => drop(reply.send(Err(error))),
            Self::Twin(reply) => drop(reply.send(Err(error))),
            Self::Resync => {}
        }
    }
}

/// An operation not yet answered.
struct Operation {
    topic: String,
    payload: Bytes,
    /// The twin request id, for twin operations.
    rid: Option<String>,
    waiter: Waiter,
    /// Whether it was sent on the current connection.
    sent: bool,
    /// Its packet id while its PUBACK is awaited.
    pkid: Option<u16>,
    /// Connections it was sent on.
    attempts: u32,
}

/// How serving one connection ended.
enum Ended {
    /// The application closed the client.
    Closed,
    /// The connection broke.
    Lost(String),
    /// The token is due for renewal.
    Renew,
}

/// The driver's state.
pub(crate) struct Driver {
    config: Arc<Config>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// A requester on the driver's own queue, handed to method calls so they can answer.
    responder: Requester,
    sinks: Sinks,
    status: watch::Sender<ConnectionStatus>,
    fatal: Arc<OnceLock<ClientError>>,
    operations: BTreeMap<u64, Operation>,
    next_operation: u64,
    in_flight: HashMap<u16, u64>,
    rids: HashMap<String, u64>,
    next_pkid: u16,
    next_rid: u64,
    /// Features the application subscribed to; subscribed again on every connection.
    features: BTreeSet<Feature>,
    /// Subscribe callers not yet answered, by feature.
    subscribers: Vec<(Feature, oneshot::Sender<Result<(), ClientError>>)>,
    /// SUBSCRIBEs in flight: packet id → the features, in filter order (`None` is the twin responses filter).
    subscribes: HashMap<u16, Vec<Option<Feature>>>,
    desired: DesiredTracker,
}

impl Driver {
    /// A driver for a client whose first connection is open.
    pub(crate) fn new(
        config: Arc<Config>,
        commands: mpsc::UnboundedReceiver<Command>,
        responder: Requester,
        sinks: Sinks,
        status: watch::Sender<ConnectionStatus>,
        fatal: Arc<OnceLock<ClientError>>,
    ) -> Self {
        Self {
            config,
            commands,
            responder,
            sinks,
            status,
            fatal,
            operations: BTreeMap::new(),
            next_operation: 0,
            in_flight: HashMap::new(),
            rids: HashMap::new(),
            next_pkid: 0,
            next_rid: 0,
            features: BTreeSet::new(),
            subscribers: Vec::new(),
            subscribes: HashMap::new(),
            desired: DesiredTracker::default(),
        }
    }

    /// Serves connections until the client is closed or refused.
    pub(crate) async fn run(mut self, link: Link, token: IssuedToken) {
        let mut current = Some((link, token));
        let mut delay = self.config.options.reconnect_min_delay;
        loop {
            let (link, token) = match current.take() {
                Some(connected) => connected,
                None => match self.reconnect(&mut delay).await {
                    Some(connected) => connected,
                    None => return,
                },
            };
            self.status.send_replace(ConnectionStatus::Connected);
            match self.serve(link, token).await {
                Ended::Closed => return self.stop(&ClientError::Closed),
                Ended::Lost(reason) => {
                    tracing::warn!(client = %self.config.identity, %reason, "connection lost; reconnecting");
                    self.status.send_replace(ConnectionStatus::Disconnected);
                }
                Ended::Renew => {
                    tracing::debug!(client = %self.config.identity, "renewing the token");
                    // Reconnect at once; only if that fails does back-off start.
                    delay = Duration::ZERO;
                }
            }
        }
    }

    /// Waits `delay`, then tries to connect until it works; `None` if the client must stop.
    async fn reconnect(&mut self, delay: &mut Duration) -> Option<(Link, IssuedToken)> {
        let options = self.config.options.clone();
        loop {
            let pause = jitter(*delay);
            self.while_offline(tokio::time::sleep(pause)).await?;
            let config = Arc::clone(&self.config);
            let attempt = async move {
                let token = config.token().await?;
                let link = Link::open(&config.endpoint, &token.token, false).await?;
                Ok::<_, ClientError>((link, token))
            };
            match self.while_offline(attempt).await? {
                Ok(connected) => {
                    *delay = options.reconnect_min_delay;
                    tracing::info!(client = %self.config.identity, session_present = connected.0.session_present, "reconnected");
                    return Some(connected);
                }
                Err(error) if error.is_fatal() => {
                    tracing::error!(client = %self.config.identity, %error, "reconnecting was refused; the client stops");
                    self.stop(&error);
                    return None;
                }
                Err(error) => {
                    *delay = (*delay * 2)
                        .max(options.reconnect_min_delay)
                        .min(options.reconnect_max_delay);
                    tracing::info!(client = %self.config.identity, %error, retry_in = ?*delay, "reconnect failed");
                }
            }
        }
    }

    /// Runs `work` while queueing the commands that arrive meanwhile; `None` if the client was closed.
    async fn while_offline<T>(&mut self, work: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Some(done),
                command = self.commands.recv() => match command {
                    Some(Command::Close) | None => {
                        self.stop(&ClientError::Closed);
                        return None;
                    }
                    Some(command) => self.accept(command),
                },
            }
        }
    }

    /// Stops: every waiting caller gets `error`, later calls get it too, the streams end.
    fn stop(&mut self, error: &ClientError) {
        let _ = self.fatal.set(error.clone());
        for (_, operation) in std::mem::take(&mut self.operations) {
            operation.waiter.fail(error.clone());
        }
        for (_, reply) in self.subscribers.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
        self.commands.close();
        self.status.send_replace(ConnectionStatus::Closed);
    }

    /// Takes a command in without sending anything (the next connection sends it).
    fn accept(&mut self, command: Command) {
        match command {
            Command::Publish {
                topic,
                payload,
                reply,
            } => self.add_operation(topic, payload, None, Waiter::Ack(reply)),
            Command::Twin { patch, reply } => self.add_twin_request(patch, Waiter::Twin(reply)),
            Command::Subscribe { feature, reply } => {
                self.features.insert(feature);
                self.subscribers.push((feature, reply));
            }
            Command::Close => {}
        }
    }

    fn add_operation(
        &mut self,
        topic: String,
        payload: Bytes,
        rid: Option<String>,
        waiter: Waiter,
    ) {
        let id = self.next_operation;
        self.next_operation += 1;
        if let Some(rid) = &rid {
            self.rids.insert(rid.clone(), id);
        }
        self.operations.insert(
            id,
            Operation {
                topic,
                payload,
                rid,
                waiter,
                sent: false,
                pkid: None,
                attempts: 0,
            },
        );
    }

    fn add_twin_request(&mut self, patch: Option<Value>, waiter: Waiter) {
        self.next_rid += 1;
        let rid = self.next_rid.to_string();
        let (topic, payload) = match patch {
            // The SDK sends a single space as the GET body.
            None => (topics::twin_get(&rid), Bytes::from_static(b" ")),
            Some(patch) => (
                topics::twin_patch_reported(&rid),
                Bytes::from(patch.to_string()),
            ),
        };
        self.add_operation(topic, payload, Some(rid), waiter);
    }

    /// Serves one connection until it ends.
    async fn serve(&mut self, mut link: Link, token: IssuedToken) -> Ended {
        self.start_connection(&link);
        let keep_alive = self.config.options.keep_alive.max(Duration::from_secs(1));
        let mut ping = tokio::time::interval_at(Instant::now() + keep_alive, keep_alive);
        let mut ping_deadline: Option<Instant> = None;
        let renew_at = token.renew_after.map(|after| Instant::now() + after);
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Close) | None => {
                        link.close().await;
                        return Ended::Closed;
                    }
                    Some(command) => {
                        self.accept(command);
                        self.transmit(&link);
                    }
                },
                packet = link.recv() => match packet {
                    Ok(packet) => {
                        ping_deadline = None;
                        self.on_packet(packet, &link);
                    }
                    Err(LinkEnd::Closed) => return Ended::Lost("the server closed the connection".into()),
                    Err(LinkEnd::Failed(reason)) => return Ended::Lost(reason),
                },
                _ = ping.tick() => {
                    link.send(Packet::PingReq);
                    ping_deadline.get_or_insert(Instant::now() + keep_alive);
                }
                () = sleep_until(ping_deadline) => {
                    return Ended::Lost(format!("no answer from the server for {keep_alive:?} after PINGREQ"));
                }
                () = sleep_until(renew_at) => {
                    link.close().await;
                    return Ended::Renew;
                }
            }
        }
    }

    /// A new connection: forget the old packet ids, subscribe to everything wanted, resend what is pending.
    fn start_connection(&mut self, link: &Link) {
        self.in_flight.clear();
        self.subscribes.clear();
        // A twin read for the tracker that was lost with its connection is started afresh after the SUBACK,
        // so that the read cannot overtake the subscription.
        let stale: Vec<u64> = self
            .operations
            .iter()
            .filter(|(_, op)| matches!(op.waiter, Waiter::Resync))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.forget(id);
        }
        self.desired.resync_failed();
        let mut failed = Vec::new();
        for (id, operation) in &mut self.operations {
            operation.sent = false;
            operation.pkid = None;
            if operation.waiter.abandoned() || operation.attempts >= MAX_ATTEMPTS {
                failed.push(*id);
            }
        }
        for id in failed {
            if let Some(operation) = self.forget(id) {
                operation.waiter.fail(ClientError::connection_closed(format!(
                    "the connection closed {MAX_ATTEMPTS} times before the server acknowledged this; it may be refusing it"
                )));
            }
        }
        let mut filters = vec![None];
        filters.extend(self.features.iter().copied().map(Some));
        self.send_subscribe(link, filters);
        self.transmit(link);
    }

    /// Sends what is not yet sent on this connection: operations, then new subscriptions.
    fn transmit(&mut self, link: &Link) {
        let unsent: Vec<u64> = self
            .operations
            .iter()
            .filter(|(_, op)| !op.sent)
            .map(|(id, _)| *id)
            .collect();
        for id in unsent {
            let pkid = self.pkid();
            let Some(operation) = self.operations.get_mut(&id) else {
                continue;
            };
            operation.sent = true;
            operation.pkid = Some(pkid);
            operation.attempts += 1;
            self.in_flight.insert(pkid, id);
            let publish = Publish::new(
                operation.topic.clone(),
                QoS::AtLeastOnce,
                operation.payload.clone(),
            )
            .with_pkid(pkid);
            link.send(Packet::Publish(publish));
        }
        let waiting: BTreeSet<Feature> = self
            .subscribers
            .iter()
            .map(|(feature, _)| *feature)
            .filter(|feature| {
                !self
                    .subscribes
                    .values()
                    .flatten()
                    .any(|f| *f == Some(*feature))
            })
            .collect();
        if !waiting.is_empty() {
            self.send_subscribe(link, waiting.into_iter().map(Some).collect());
        }
    }

    fn send_subscribe(&mut self, link: &Link, filters: Vec<Option<Feature>>) {
        let pkid = self.pkid();
        let identity = &self.config.identity;
        let topics = filters
            .iter()
            .map(|feature| {
                let filter = feature
                    .map_or_else(|| topics::TWIN_RESPONSES.to_owned(), |f| f.filter(identity));
                (filter, QoS::AtLeastOnce)
            })
            .collect();
        self.subscribes.insert(pkid, filters);
        link.send(Packet::Subscribe(Subscribe {
            pkid,
            filters: topics,
        }));
    }

    /// The next packet id not in use (1..=65535; 0 is not allowed [MQTT-2.3.1-1]).
    fn pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            let id = self.next_pkid;
            if !self.in_flight.contains_key(&id) && !self.subscribes.contains_key(&id) {
                return id;
            }
        }
    }

    /// Removes an operation and its indexes.
    fn forget(&mut self, id: u64) -> Option<Operation> {
        let operation = self.operations.remove(&id)?;
        if let Some(pkid) = operation.pkid {
            self.in_flight.remove(&pkid);
        }
        if let Some(rid) = &operation.rid {
            self.rids.remove(rid);
        }
        Some(operation)
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// `delay` ± up to 20 %, so that many clients cut off together do not all come back in the same instant.
fn jitter(delay: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let factor = 0.8 + 0.4 * (f64::from(nanos % 1000) / 1000.0);
    delay.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_fifth_of_the_delay() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
