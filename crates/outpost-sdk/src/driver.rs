//! The task behind every client: it owns the connection and all protocol state, reconnects with back-off,
//! renews the token, and matches answers to the callers waiting for them.
//!
//! One task, plain maps, no locks: callers send [`Command`]s and wait on a oneshot; the server's pushes go
//! out on the application's streams. What survives a lost connection: every operation not yet answered
//! (resent on the next connection; its caller's timeout bounds the wait), the features subscribed to
//! (subscribed again on every connection), and the desired-properties tracker (the twin is read again after
//! every connection, so changes made while away are delivered once). A refused CONNECT on a reconnect is
//! final: the client stops and every caller gets the reason, rather than retrying bad credentials forever.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use outpost_core::Identity;
use outpost_mqtt::packet::{Packet, PubAck, Publish, QoS, SubAck, Subscribe, SubscribeReturnCode};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::credentials::{Credential, IssuedToken};
use crate::error::ClientError;
use crate::link::{Endpoint, Link, LinkEnd};
use crate::message::Message;
use crate::methods::MethodCall;
use crate::options::ClientOptions;
use crate::topics::{self, Feature, Incoming};
use crate::twin::{DesiredPatch, DesiredTracker, Step, Twin};

/// A publish whose connection closed this many times before it was acknowledged is failed: IoT Hub closes
/// the connection on a publish it refuses, and resending that one forever would never end.
const MAX_ATTEMPTS: u32 = 3;

/// Everything needed to (re)connect, shared by the client and its driver.
pub(crate) struct Config {
    /// Whose connection this is.
    pub(crate) identity: Identity,
    /// The IoT Hub host name: the token's audience and the username's first part.
    pub(crate) hub_host: String,
    /// Where to connect (the gateway, or the hub).
    pub(crate) endpoint: Endpoint,
    /// The gateway, when the client connects through one (module method invocation needs it).
    pub(crate) gateway_host: Option<String>,
    /// How tokens are made.
    pub(crate) credential: Credential,
    /// The settings.
    pub(crate) options: ClientOptions,
}

impl Config {
    /// A fresh token.
    pub(crate) async fn token(&self) -> Result<IssuedToken, ClientError> {
        self.credential
            .issue(
                &self.hub_host,
                &self.identity,
                self.options.token_ttl,
                self.options.renew_after(),
            )
            .await
    }
}

/// Whether a client is connected now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionStatus {
    /// Connected and subscribed.
    Connected,
    /// The connection was lost; the client is reconnecting with back-off.
    Disconnected,
    /// The client stopped: closed by the application, or refused on a reconnect (the operations return why).
    Closed,
}

/// A request from a client handle to its driver.
pub(crate) enum Command {
    /// Publish at QoS 1; answered on PUBACK.
    Publish {
        topic: String,
        payload: Bytes,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    /// A twin GET or reported patch; answered by the twin response.
    Twin {
        patch: Option<Value>,
        reply: oneshot::Sender<Result<TwinAnswer, ClientError>>,
    },
    /// Subscribe to a push; answered on SUBACK.
    Subscribe {
        feature: Feature,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    /// Disconnect and stop.
    Close,
}

/// How a handle asks the driver for something and waits for the answer.
#[derive(Debug, Clone)]
pub(crate) struct Requester {
    commands: mpsc::UnboundedSender<Command>,
    timeout: Duration,
    fatal: Arc<OnceLock<ClientError>>,
}

impl Requester {
    /// A requester on a driver's queue.
    pub(crate) fn new(
        commands: mpsc::UnboundedSender<Command>,
        timeout: Duration,
        fatal: Arc<OnceLock<ClientError>>,
    ) -> Self {
        Self {
            commands,
            timeout,
            fatal,
        }
    }

    /// Sends the command `make` builds and waits for its answer, at most the operation timeout.
    pub(crate) async fn request<T>(
        &self,
        what: &str,
        make: impl FnOnce(oneshot::Sender<Result<T, ClientError>>) -> Command,
    ) -> Result<T, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .map_err(|_| self.stopped())?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.stopped()),
            Err(_) => Err(ClientError::Timeout(format!(
                "{what}: no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// Asks the driver to close.
    pub(crate) fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }

    /// Why the driver stopped: the error it stopped with, or closed.
    pub(crate) fn stopped(&self) -> ClientError {
        self.fatal.get().cloned().unwrap_or(ClientError::Closed)
    }
}

/// The server's answer to a twin request.
#[derive(Debug)]
pub(crate) struct TwinAnswer {
    /// 200 (GET), 204 (patch), or an error status.
    pub(crate) status: u16,
    /// The new reported `$version` after a patch.
    pub(crate) version: Option<u64>,
    /// The body (the twin for a GET, `{"message":..}` for an error).
    pub(crate) body: Bytes,
}

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

    fn on_packet(&mut self, packet: Packet, link: &Link) {
        match packet {
            Packet::PubAck(PubAck { pkid }) => {
                let Some(id) = self.in_flight.remove(&pkid) else {
                    return;
                };
                let Some(operation) = self.operations.get_mut(&id) else {
                    return;
                };
                // A twin request stays until its response; only its packet id is released.
                operation.pkid = None;
                if matches!(operation.waiter, Waiter::Ack(_)) {
                    if let Some(Operation {
                        waiter: Waiter::Ack(reply),
                        ..
                    }) = self.forget(id)
                    {
                        let _ = reply.send(Ok(()));
                    }
                }
            }
            Packet::SubAck(suback) => self.on_suback(&suback, link),
            Packet::Publish(publish) => {
                let ack = (publish.qos == QoS::AtLeastOnce).then_some(publish.pkid);
                self.on_publish(publish, link);
                if let Some(pkid) = ack {
                    link.send(Packet::PubAck(PubAck { pkid }));
                }
            }
            Packet::PingResp | Packet::UnsubAck(_) => {}
            other => tracing::debug!(
                packet = other.name(),
                "unexpected packet from the server ignored"
            ),
        }
    }

    fn on_suback(&mut self, suback: &SubAck, link: &Link) {
        let Some(features) = self.subscribes.remove(&suback.pkid) else {
            return;
        };
        let mut resync = false;
        for (feature, code) in features.iter().zip(&suback.return_codes) {
            let Some(feature) = *feature else {
                continue;
            };
            let result = match code {
                SubscribeReturnCode::Success(_) => {
                    resync |= feature == Feature::DesiredPatches;
                    Ok(())
                }
                SubscribeReturnCode::Failure => {
                    self.features.remove(&feature);
                    Err(ClientError::Rejected {
                        status: 0x80,
                        message: format!(
                            "the server refused the subscription to {}",
                            feature.name()
                        ),
                    })
                }
            };
            let (answered, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.subscribers)
                .into_iter()
                .partition(|(f, _)| *f == feature);
            self.subscribers = waiting;
            for (_, reply) in answered {
                let _ = reply.send(result.clone());
            }
        }
        // Read the twin now that patches are subscribed: the first read gives the application the whole
        // document; after a reconnection, what changed while away.
        if resync && self.desired.start_resync() {
            self.add_twin_request(None, Waiter::Resync);
            self.transmit(link);
        }
    }

    fn on_publish(&mut self, publish: Publish, link: &Link) {
        let incoming = match topics::parse_incoming(&publish.topic, &self.config.identity) {
            Ok(incoming) => incoming,
            Err(error) => return tracing::warn!(%error, "ignored a publish from the server"),
        };
        match incoming {
            Incoming::TwinResponse {
                status,
                rid,
                version,
            } => {
                let Some(id) = self.rids.get(&rid).copied() else {
                    return tracing::debug!(rid, "twin response for no pending request");
                };
                let Some(operation) = self.forget(id) else {
                    return;
                };
                let answer = TwinAnswer {
                    status,
                    version,
                    body: publish.payload,
                };
                match operation.waiter {
                    Waiter::Twin(reply) => drop(reply.send(Ok(answer))),
                    Waiter::Resync => self.on_resync(&answer, link),
                    Waiter::Ack(_) => {}
                }
            }
            Incoming::DesiredPatch { version } => {
                if !self.features.contains(&Feature::DesiredPatches) {
                    return;
                }
                match serde_json::from_slice::<Value>(&publish.payload) {
                    Ok(body) => {
                        let step = self.desired.on_patch(&body, version);
                        self.follow(step, link);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "a desired patch that is not JSON was ignored")
                    }
                }
            }
            Incoming::MethodRequest { name, rid } => {
                let payload = if publish.payload.iter().all(u8::is_ascii_whitespace) {
                    Value::Null
                } else {
                    serde_json::from_slice(&publish.payload).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&publish.payload).into_owned())
                    })
                };
                let call = MethodCall::new(name, rid, payload, self.responder.clone());
                let _ = self.sinks.methods.send(call);
            }
            Incoming::CloudToDevice(mut message) => {
                message.body = publish.payload.to_vec();
                let _ = self.sinks.cloud_to_device.send(message.into());
            }
            Incoming::Input(mut message) => {
                message.body = publish.payload.to_vec();
                let _ = self.sinks.inputs.send(message.into());
            }
        }
    }

    fn on_resync(&mut self, answer: &TwinAnswer, link: &Link) {
        let twin = match answer.status {
            200 => serde_json::from_slice::<Value>(&answer.body)
                .map_err(|e| ClientError::Protocol(format!("the twin is not JSON: {e}")))
                .and_then(|body| Twin::from_json(&body)),
            status => Err(ClientError::from_status(
                status,
                crate::error::error_message(&answer.body),
            )),
        };
        match twin {
            Ok(twin) => {
                let step = self.desired.on_twin(&twin);
                self.follow(step, link);
            }
            Err(error) => {
                // Tried again on the next connection, or when a pushed patch skips a version.
                tracing::warn!(%error, "reading the twin for desired properties failed");
                self.desired.resync_failed();
            }
        }
    }

    /// Delivers what the tracker released and starts the twin read it asked for.
    fn follow(&mut self, step: Step, link: &Link) {
        for patch in step.deliver {
            let _ = self.sinks.desired.send(patch);
        }
        if step.resync {
            self.add_twin_request(None, Waiter::Resync);
            self.transmit(link);
        }
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
