//! What the protocol head needs from whoever owns identities, twins and messages (the hub, later the edge
//! hub), and what that owner pushes back to a connected client.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use outpost_core::{Identity, Message};

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
    /// Checks a CONNECT without a password from a client that presented a TLS client certificate (X.509
    /// authentication): `chain` is the leaf first, then the intermediates it sent; the TLS handshake proved the
    /// client holds the leaf's key, but nothing else about the chain is checked yet. A backend without X.509
    /// identities refuses (the default).
    async fn authenticate_certificate(
        &self,
        _identity: &Identity,
        _username: &str,
        _chain: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<(), ConnectRefusal> {
        Err(ConnectRefusal::NotAuthorized)
    }
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
    /// Messages of one client read together, in the order it sent them: the first `accepted` are durably
    /// accepted (as by [`send_message`](Self::send_message)) when one is refused; the head then sends the
    /// PUBACKs of the accepted ones only and closes the connection, and the client sends the rest again (QoS 1
    /// is at least once: a backend may have stored some after the refused one). A backend that stores a batch
    /// at once (one append, one wait for its fsync) overrides this; the default runs `send_message` for each,
    /// all at once, as the head did before it read messages in batches.
    async fn send_messages(
        &self,
        identity: &Identity,
        messages: Vec<Message>,
    ) -> Result<(), PartlyAccepted> {
        let results = futures_util::future::join_all(
            messages
                .into_iter()
                .map(|message| self.send_message(identity, message)),
        )
        .await;
        match results
            .into_iter()
            .enumerate()
            .find_map(|(at, r)| r.err().map(|e| (at, e)))
        {
            Some((accepted, error)) => Err(PartlyAccepted { accepted, error }),
            None => Ok(()),
        }
    }
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
    /// PUBACKs of one connection read together, in order: [`delivered`](Self::delivered) for each, all at once
    /// (as before the head read them in batches). A backend that records them together overrides this.
    async fn delivered_batch(&self, identity: &Identity, connection: u64, delivery_ids: Vec<u64>) {
        futures_util::future::join_all(
            delivery_ids
                .into_iter()
                .map(|delivery_id| self.delivered(identity, connection, delivery_id)),
        )
        .await;
    }
    /// Persisted session state for CleanSession=0 (subscription filters by client id), so sessions survive restarts.
    async fn load_subscriptions(&self, client_id: &str) -> Vec<String>;
    /// Stores the full filter list after every change; an empty list for a clean session means "forget".
    async fn save_subscriptions(&self, client_id: &str, filters: &[String]);
    /// What connection `connection` of the client listens for changed (a SUBSCRIBE or UNSUBSCRIBE, of a clean
    /// session as of a persistent one): the connection's [`Outbox::subscribed`] already tells the new set. Called
    /// from the connection's loop, so it should return quickly. A backend that reads the outbox when it pushes
    /// needs nothing here.
    async fn subscriptions_changed(&self, _identity: &Identity, _connection: u64) {}
}

/// A batch of messages ([`DeviceOperations::send_messages`]) was refused part of the way: the first `accepted`
/// are durably accepted and the next one was refused with `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartlyAccepted {
    /// How many from the first on were accepted.
    pub accepted: usize,
    /// Why the next one was refused.
    pub error: OperationError,
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
        /// The whole topic, the input and the message's properties ([`crate::topic::input`]): the edge hub
        /// renders it from the stored record in one string, without building a [`Message`].
        topic: String,
        /// The message's body.
        body: bytes::Bytes,
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
///
/// The queue is a `VecDeque` behind a std `Mutex` (held for one push or pop, never across an `.await`) rather
/// than a tokio channel: a channel allocates a block of 32 slots up front, and every held connection has an
/// outbox that is empty nearly all the time.
#[derive(Debug)]
pub struct Outbox {
    connection: u64,
    shared: Arc<OutboxShared>,
}

/// The connection's end of an [`Outbox`].
#[derive(Debug)]
pub struct Inbox {
    shared: Arc<OutboxShared>,
}

/// What an outbox and its inbox share.
#[derive(Debug, Default)]
struct OutboxShared {
    features: AtomicU8,
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outgoing>,
    /// A push was refused: the connection must close.
    overflowed: bool,
    /// The inbox was dropped.
    closed: bool,
    /// Outboxes alive; at zero the inbox ends.
    senders: usize,
    /// The inbox's task, waiting for a push.
    waiting: Option<Waker>,
}

impl OutboxShared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Queue {
    fn wake(&mut self) {
        if let Some(waker) = self.waiting.take() {
            waker.wake();
        }
    }
}

/// The outbox of a connection overflowed: pushes were refused, so the connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the backend pushed more than {OUTBOX_CAPACITY} items the connection had not taken")]
pub struct OutboxOverflow;

impl Inbox {
    /// The next push, `None` once every outbox is dropped, or the overflow once one push was refused.
    ///
    /// A refused push leaves the queue full, so this wakes and reports it without waiting. Cancel-safe: a
    /// push is taken from the queue only when it is returned.
    pub async fn recv(&mut self) -> Option<Result<Outgoing, OutboxOverflow>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Outgoing, OutboxOverflow>>> {
        let mut queue = self.shared.queue();
        if queue.overflowed {
            return Poll::Ready(Some(Err(OutboxOverflow)));
        }
        if let Some(item) = queue.items.pop_front() {
            // What a burst grew stays for the next one while the connection is busy; see `release_if_empty`.
            return Poll::Ready(Some(Ok(item)));
        }
        if queue.senders == 0 {
            return Poll::Ready(None);
        }
        if !queue
            .waiting
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            queue.waiting = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Gives back the queue's memory if no push waits (the connection calls this once it has been quiet for
    /// a while, so that an idle connection holds no queue memory); true if it was empty.
    pub fn release_if_empty(&self) -> bool {
        let mut queue = self.shared.queue();
        if !queue.items.is_empty() {
            return false;
        }
        queue.items = VecDeque::new();
        true
    }

    /// Pushes waiting to be taken.
    pub fn len(&self) -> usize {
        self.shared.queue().items.len()
    }

    /// Whether no push waits.
    pub fn is_empty(&self) -> bool {
        self.shared.queue().items.is_empty()
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut queue = self.shared.queue();
        queue.closed = true;
        queue.items = VecDeque::new();
    }
}

impl Outbox {
    /// A new outbox for connection `connection` and the receiving end its connection reads.
    ///
    /// The server makes these; backends may make them in their own tests.
    pub fn new(connection: u64) -> (Self, Inbox) {
        let shared = Arc::new(OutboxShared::default());
        shared.queue().senders = 1;
        (
            Self {
                connection,
                shared: Arc::clone(&shared),
            },
            Inbox { shared },
        )
    }

    /// The connection this outbox pushes to, as passed to `disconnected`.
    pub fn connection(&self) -> u64 {
        self.connection
    }

    /// Queues `item` for the client; false if the connection is gone or its outbox is full (it then closes).
    pub fn send(&self, item: Outgoing) -> bool {
        let mut queue = self.shared.queue();
        if queue.closed {
            return false;
        }
        if queue.items.len() >= OUTBOX_CAPACITY {
            if !std::mem::replace(&mut queue.overflowed, true) {
                tracing::warn!(
                    connection = self.connection,
                    "a connection's outbox is full; closing it"
                );
            }
            queue.wake();
            return false;
        }
        queue.items.push_back(item);
        queue.wake();
        true
    }

    /// Whether the client has subscribed to `feature` (persisted subscriptions count).
    pub fn subscribed(&self, feature: Feature) -> bool {
        self.shared.features.load(Ordering::Acquire) & feature.bit() != 0
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.queue().closed
    }

    /// The feature set (bits of [`Feature::bit`]).
    pub fn features(&self) -> u8 {
        self.shared.features.load(Ordering::Acquire)
    }

    /// Replaces the feature set (bits of [`Feature::bit`]); the connection calls it after every SUBSCRIBE.
    pub fn set_features(&self, bits: u8) {
        self.shared.features.store(bits, Ordering::Release);
    }
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.shared.queue().senders += 1;
        Self {
            connection: self.connection,
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut queue = self.shared.queue();
        queue.senders -= 1;
        if queue.senders == 0 {
            queue.wake();
        }
    }
}

/// The live connections of a protocol head's owner by client id (`d` or `d/m`): the newest connection of each
/// identity, as the hub and the edge hub both keep them.
///
/// A std `Mutex`: held for one map operation, never across an `.await`.
#[derive(Debug, Default)]
pub struct ConnectionTable {
    outboxes: Mutex<std::collections::HashMap<String, Outbox>>,
}

impl ConnectionTable {
    fn lock(&self) -> MutexGuard<'_, std::collections::HashMap<String, Outbox>> {
        self.outboxes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `outbox` as `client_id`'s connection; the one it replaces, if any.
    pub fn connected(&self, client_id: String, outbox: Outbox) -> Option<Outbox> {
        self.lock().insert(client_id, outbox)
    }

    /// Forgets `client_id`'s connection `connection`, unless a newer one has replaced it; whether it did.
    pub fn disconnected(&self, client_id: &str, connection: u64) -> bool {
        let mut outboxes = self.lock();
        let current = outboxes
            .get(client_id)
            .is_some_and(|outbox| outbox.connection() == connection);
        if current {
            outboxes.remove(client_id);
        }
        current
    }

    /// The outbox of a connected client.
    pub fn get(&self, client_id: &str) -> Option<Outbox> {
        self.lock().get(client_id).cloned()
    }

    /// Whether a client is connected.
    pub fn contains(&self, client_id: &str) -> bool {
        self.lock().contains_key(client_id)
    }

    /// Closes the connection of one client; whether it had one.
    pub fn close(&self, client_id: &str) -> bool {
        self.get(client_id)
            .is_some_and(|outbox| outbox.send(Outgoing::Close))
    }

    /// Closes the connections of a device and of all its modules.
    pub fn close_device(&self, device: &str) {
        let prefix = format!("{device}/");
        for (client_id, outbox) in self.lock().iter() {
            if client_id == device || client_id.starts_with(&prefix) {
                outbox.send(Outgoing::Close);
            }
        }
    }

    /// Each connected client's id with what `f` makes of its outbox.
    pub fn map<T>(&self, mut f: impl FnMut(&str, &Outbox) -> T) -> Vec<T> {
        self.lock()
            .iter()
            .map(|(client_id, outbox)| f(client_id, outbox))
            .collect()
    }

    /// Connections held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_disconnect_leaves_the_newer_connection_in_the_table() {
        let table = ConnectionTable::default();
        let (first, _first_inbox) = Outbox::new(1);
        let (second, _second_inbox) = Outbox::new(2);
        assert!(table.connected("d".into(), first).is_none());
        let replaced = table
            .connected("d".into(), second)
            .expect("the first is replaced");
        assert_eq!(replaced.connection(), 1);
        assert!(
            !table.disconnected("d", 1),
            "connection 1 is not the current one"
        );
        assert_eq!(table.get("d").map(|o| o.connection()), Some(2));
        assert!(table.disconnected("d", 2));
        assert!(table.is_empty());
    }

    #[test]
    fn closing_a_device_closes_its_modules_and_not_its_namesakes() {
        let table = ConnectionTable::default();
        let mut inboxes = Vec::new();
        for (n, client) in ["d", "d/m1", "d/m2", "d2", "d2/m1"].into_iter().enumerate() {
            let (outbox, inbox) = Outbox::new(n as u64);
            table.connected(client.into(), outbox);
            inboxes.push((client, inbox));
        }
        table.close_device("d");
        for (client, inbox) in &mut inboxes {
            let closed = matches!(
                futures_poll_once(inbox.recv()),
                Some(Some(Ok(Outgoing::Close)))
            );
            assert_eq!(closed, !client.starts_with("d2"), "{client}");
        }
    }

    /// Polls a future once: its output if it was ready.
    fn futures_poll_once<F: std::future::Future>(future: F) -> Option<F::Output> {
        let mut future = std::pin::pin!(future);
        let mut context = Context::from_waker(Waker::noop());
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        }
    }

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

    #[tokio::test]
    async fn the_inbox_ends_once_every_outbox_is_dropped() {
        let (outbox, mut inbox) = Outbox::new(1);
        let copy = outbox.clone();
        assert!(copy.send(Outgoing::Close));
        drop(outbox);
        drop(copy);
        assert!(matches!(inbox.recv().await, Some(Ok(Outgoing::Close))));
        assert!(inbox.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_inbox_wakes_on_a_push_from_another_task() {
        let (outbox, mut inbox) = Outbox::new(1);
        let waiting = tokio::spawn(async move { inbox.recv().await });
        tokio::task::yield_now().await;
        assert!(outbox.send(Outgoing::Close));
        let received = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the push wakes the inbox")
            .unwrap();
        assert!(matches!(received, Some(Ok(Outgoing::Close))));
    }

    #[tokio::test]
    async fn an_emptied_queue_gives_back_what_a_burst_grew_once_released() {
        let (outbox, mut inbox) = Outbox::new(1);
        for _ in 0..100 {
            assert!(outbox.send(Outgoing::Close));
        }
        while !inbox.is_empty() {
            inbox.recv().await.unwrap().unwrap();
        }
        assert!(inbox.shared.queue().items.capacity() > 0, "kept while busy");
        assert!(outbox.send(Outgoing::Close));
        assert!(!inbox.release_if_empty(), "a push waits");
        inbox.recv().await.unwrap().unwrap();
        assert!(inbox.release_if_empty());
        assert_eq!(inbox.shared.queue().items.capacity(), 0);
    }
}
