//! `FakeBackend`: a test double of the backend (the hub's registry, twins and queues), in memory.
//!
//! It stands in for the hub so the protocol head can be tested alone; the hub's own tests drive the real
//! thing. It records every call so tests can assert on what the head asked for.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use outpost_core::{Identity, Message};
use outpost_mqtt::{
    ConnectRefusal, DeviceOperations, Feature, OperationError, Outbox, Outgoing, PartlyAccepted,
};
use serde_json::{json, Value};
use tokio::sync::Notify;

/// The body of a message that `send_message` refuses (the others of its batch are not refused).
pub const REFUSED_BODY: &[u8] = b"refuse me";

/// An in-memory stand-in for the hub.
#[derive(Default)]
pub struct FakeBackend {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    allowed: HashSet<String>,
    outboxes: HashMap<String, Outbox>,
    disconnects: Vec<(String, u64)>,
    reported_version: u64,
    messages: Vec<(String, Message)>,
    /// How many messages each `send_messages` call brought, in order.
    batches: Vec<usize>,
    refuse_messages: bool,
    method_responses: Vec<(String, i32, Vec<u8>)>,
    delivered: Vec<u64>,
    /// How many delivery ids each `delivered_batch` call brought, in order.
    delivered_batches: Vec<usize>,
    subscriptions: HashMap<String, Vec<String>>,
    /// What each `subscriptions_changed` call saw: client id, connection, the outbox's feature bits then.
    feature_changes: Vec<(String, u64, u8)>,
    twin_delay: Duration,
    tokens: HashMap<String, String>,
}

impl FakeBackend {
    /// The token the backend accepts for `client_id`.
    pub fn token(client_id: &str) -> String {
        format!("SharedAccessSignature sr={client_id}&sig=good&se=9999999999")
    }

    /// Lets `client_id` connect with `token` instead of the usual one.
    pub fn allow_with_token(&self, client_id: &str, token: &str) {
        let mut state = self.state();
        state.allowed.insert(client_id.to_owned());
        state.tokens.insert(client_id.to_owned(), token.to_owned());
    }

    /// Lets `client_id` connect.
    pub fn allow(&self, client_id: &str) {
        self.state().allowed.insert(client_id.to_owned());
    }

    /// Makes `get_twin` take this long from now on.
    pub fn slow_twin(&self, delay: Duration) {
        self.state().twin_delay = delay;
    }

    /// Makes `send_message` fail from now on.
    pub fn refuse_messages(&self) {
        self.state().refuse_messages = true;
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Waits until `check` holds on the recorded state.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        mut check: impl FnMut(&FakeView) -> Option<T>,
    ) -> T {
        tokio::time::timeout(super::WAIT, async {
            loop {
                let notified = self.changed.notified();
                if let Some(value) = check(&FakeView(self)) {
                    return value;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    /// The live outbox of `client_id`, once connected.
    pub async fn outbox(&self, client_id: &str) -> Outbox {
        self.wait_for("the client's outbox", |v| {
            v.0.state().outboxes.get(client_id).cloned()
        })
        .await
    }

    /// Pushes to `client_id`'s connection the way a backend does: only what the client subscribed to.
    pub async fn push(&self, client_id: &str, feature: Feature, item: Outgoing) -> bool {
        let outbox = self.outbox(client_id).await;
        outbox.subscribed(feature) && outbox.send(item)
    }

    fn record(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state());
        self.changed.notify_waiters();
    }
}

/// Read access to the recorded state inside `wait_for`.
pub struct FakeView<'a>(&'a FakeBackend);

impl FakeView<'_> {
    pub fn messages(&self) -> Vec<(String, Message)> {
        self.0.state().messages.clone()
    }
    pub fn batches(&self) -> Vec<usize> {
        self.0.state().batches.clone()
    }
    pub fn delivered_batches(&self) -> Vec<usize> {
        self.0.state().delivered_batches.clone()
    }
    pub fn delivered(&self) -> Vec<u64> {
        self.0.state().delivered.clone()
    }
    pub fn method_responses(&self) -> Vec<(String, i32, Vec<u8>)> {
        self.0.state().method_responses.clone()
    }
    pub fn disconnects(&self) -> Vec<(String, u64)> {
        self.0.state().disconnects.clone()
    }
    pub fn subscriptions(&self, client_id: &str) -> Option<Vec<String>> {
        self.0.state().subscriptions.get(client_id).cloned()
    }
    pub fn feature_changes(&self) -> Vec<(String, u64, u8)> {
        self.0.state().feature_changes.clone()
    }
    pub fn connected(&self, client_id: &str) -> Option<u64> {
        self.0
            .state()
            .outboxes
            .get(client_id)
            .map(Outbox::connection)
    }
}

#[async_trait::async_trait]
impl DeviceOperations for FakeBackend {
    async fn authenticate(
        &self,
        identity: &Identity,
        _username: &str,
        password: Option<&[u8]>,
    ) -> Result<(), ConnectRefusal> {
        let client_id = identity.client_id();
        if !self.state().allowed.contains(&client_id) {
            return Err(ConnectRefusal::NotAuthorized);
        }
        let expected = self
            .state()
            .tokens
            .get(&client_id)
            .cloned()
            .unwrap_or_else(|| Self::token(&client_id));
        if password != Some(expected.as_bytes()) {
            return Err(ConnectRefusal::BadUsernameOrPassword);
        }
        Ok(())
    }

    async fn connected(&self, identity: &Identity, outbox: Outbox) {
        self.record(|s| {
            s.outboxes.insert(identity.client_id(), outbox);
        });
    }

    async fn disconnected(&self, identity: &Identity, connection: u64) {
        self.record(|s| {
            let client_id = identity.client_id();
            if s.outboxes
                .get(&client_id)
                .is_some_and(|o| o.connection() == connection)
            {
                s.outboxes.remove(&client_id);
            }
            s.disconnects.push((client_id, connection));
        });
    }

    async fn get_twin(&self, _identity: &Identity) -> Result<Value, OperationError> {
        let delay = self.state().twin_delay;
        tokio::time::sleep(delay).await;
        let reported = self.state().reported_version;
        Ok(json!({"desired": {"threshold": 25, "$version": 4}, "reported": {"$version": reported}}))
    }

    async fn patch_reported(
        &self,
        _identity: &Identity,
        patch: Value,
    ) -> Result<u64, OperationError> {
        if !patch.is_object() {
            return Err(OperationError::new(400, "not an object"));
        }
        let mut state = self.state();
        state.reported_version += 1;
        Ok(state.reported_version)
    }

    async fn send_message(
        &self,
        identity: &Identity,
        message: Message,
    ) -> Result<(), OperationError> {
        if self.state().refuse_messages || message.body == REFUSED_BODY {
            return Err(OperationError::new(503, "queue unavailable"));
        }
        self.record(|s| s.messages.push((identity.client_id(), message)));
        Ok(())
    }

    async fn send_messages(
        &self,
        identity: &Identity,
        messages: Vec<Message>,
    ) -> Result<(), PartlyAccepted> {
        self.record(|s| s.batches.push(messages.len()));
        for (accepted, message) in messages.into_iter().enumerate() {
            self.send_message(identity, message)
                .await
                .map_err(|error| PartlyAccepted { accepted, error })?;
        }
        Ok(())
    }

    async fn delivered_batch(&self, identity: &Identity, connection: u64, delivery_ids: Vec<u64>) {
        self.record(|s| s.delivered_batches.push(delivery_ids.len()));
        for delivery_id in delivery_ids {
            self.delivered(identity, connection, delivery_id).await;
        }
    }

    async fn method_response(
        &self,
        _identity: &Identity,
        _connection: u64,
        rid: &str,
        status: i32,
        payload: Vec<u8>,
    ) {
        self.record(|s| s.method_responses.push((rid.to_owned(), status, payload)));
    }

    async fn delivered(&self, _identity: &Identity, _connection: u64, delivery_id: u64) {
        self.record(|s| s.delivered.push(delivery_id));
    }

    async fn load_subscriptions(&self, client_id: &str) -> Vec<String> {
        self.state()
            .subscriptions
            .get(client_id)
            .cloned()
            .unwrap_or_default()
    }

    async fn subscriptions_changed(&self, identity: &Identity, connection: u64) {
        self.record(|s| {
            let client_id = identity.client_id();
            let features = s.outboxes.get(&client_id).map_or(0, Outbox::features);
            s.feature_changes.push((client_id, connection, features));
        });
    }

    async fn save_subscriptions(&self, client_id: &str, filters: &[String]) {
        self.record(|s| {
            if filters.is_empty() {
                s.subscriptions.remove(client_id);
            } else {
                s.subscriptions
                    .insert(client_id.to_owned(), filters.to_vec());
            }
        });
    }
}
