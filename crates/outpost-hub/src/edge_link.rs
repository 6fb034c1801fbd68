//! The hub's side of the upstream link of edge devices: one HTTPS link per edge device carries every identity
//! behind it (its modules and the devices whose parent it is), instead of one connection per client.
//!
//! The edge hub tells which of its clients are connected and what they listen for (`presence`); the hub then
//! treats each as connected through a virtual [`Outbox`], whose pushes (desired patches, C2D, method requests)
//! queue for the edge to collect with a long poll (`events`). Telemetry arrives in batches, appended in one
//! transaction; twin reads and reported patches are made on behalf of a client in the edge's scope.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_core::{Identity, Message};
use outpost_mqtt::{Feature, Outbox, Outgoing};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::error::HubError;
use crate::identity::DeviceRecord;
use crate::{store, Hub};

/// At most this many events wait for an edge device; older ones are dropped (desired state is re-read on
/// reconnect, C2D is re-pushed from its queue).
const MAX_PENDING_EVENTS: usize = 10_000;

/// One connected client behind an edge device, as its edge hub reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EdgeClient {
    /// `d` or `d/m`.
    pub id: String,
    /// What it listens for: `desired`, `methods`, `c2d`, `inputs`.
    #[serde(default)]
    pub features: Vec<String>,
}

/// A telemetry message of a client behind an edge device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EdgeMessage {
    /// The sender, `d` or `d/m`.
    pub client: String,
    /// The message.
    pub message: Message,
}

/// The pending pushes of one edge device.
#[derive(Default)]
pub struct EdgeLink {
    /// A std `Mutex`: held to push or drain, never across an `.await`.
    events: Mutex<VecDeque<Value>>,
    arrived: Notify,
    /// The virtual connections of its clients by client id.
    clients: Mutex<HashMap<String, Outbox>>,
}

fn feature_bits(features: &[String]) -> u8 {
    features
        .iter()
        .filter_map(|f| match f.as_str() {
            "desired" => Some(Feature::DesiredPatches),
            "methods" => Some(Feature::Methods),
            "c2d" => Some(Feature::CloudToDevice),
            "inputs" => Some(Feature::Inputs),
            _ => None,
        })
        .fold(0, |bits, f| bits | f.bit())
}

fn event_of(client: &str, item: Outgoing) -> Option<Value> {
    Some(match item {
        Outgoing::DesiredPatch { body } => {
            json!({"kind": "desired", "client": client, "body": body})
        }
        Outgoing::CloudToDevice {
            delivery_id,
            message,
        } => {
            json!({"kind": "c2d", "client": client, "deliveryId": delivery_id, "message": message})
        }
        Outgoing::MethodRequest {
            rid,
            method,
            payload,
        } => json!({
            "kind": "method", "client": client, "rid": rid, "method": method,
            "payload": serde_json::from_slice::<Value>(&payload).unwrap_or(Value::Null),
        }),
        Outgoing::Close => json!({"kind": "close", "client": client}),
        Outgoing::Input { .. } => return None,
    })
}

impl Hub {
    /// Checks that `authorization` is the token of the enabled edge device `edge`; returns its record.
    pub fn authorize_edge(
        &self,
        authorization: Option<&str>,
        edge: &str,
    ) -> Result<DeviceRecord, HubError> {
        self.authorize_module_management(
            authorization,
            crate::identity::Right::ServiceConnect,
            edge,
        )?;
        self.device(edge)
    }

    /// Whether `identity` is behind `edge`: the edge device itself, one of its modules, or one of its children.
    pub fn in_scope(&self, edge: &DeviceRecord, identity: &Identity) -> Result<bool, HubError> {
        if identity.device == edge.device_id {
            return Ok(true);
        }
        let record = store::device(&self.db.lock(), &identity.device)?;
        Ok(record.is_some_and(|d| d.parent_scopes.contains(&edge.edge_scope())))
    }

    fn scoped(&self, edge: &DeviceRecord, client: &str) -> Result<Identity, HubError> {
        let identity = Identity::parse_client_id(client)
            .map_err(|e| HubError::ArgumentInvalid(format!("{client:?}: {e}")))?;
        if !self.in_scope(edge, &identity)? {
            return Err(HubError::Unauthorized(format!(
                "{client} is not behind edge device {}",
                edge.device_id
            )));
        }
        Ok(identity)
    }

    fn edge_link(&self, edge: &str) -> Arc<EdgeLink> {
        let mut links = self
            .edge_links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        links.entry(edge.to_owned()).or_default().clone()
    }

    /// Replaces the set of clients connected behind an edge device.
    pub fn edge_presence(
        &self,
        edge: &DeviceRecord,
        clients: &[EdgeClient],
    ) -> Result<(), HubError> {
        let identities: Vec<(Identity, u8)> = clients
            .iter()
            .map(|c| Ok((self.scoped(edge, &c.id)?, feature_bits(&c.features))))
            .collect::<Result<_, HubError>>()?;
        let link = self.edge_link(edge.device_id.as_str());
        let mut gone = Vec::new();
        {
            let mut current = link
                .clients
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            current.retain(|id, outbox| {
                let keep = identities.iter().any(|(i, _)| &i.client_id() == id);
                if !keep {
                    gone.push((id.clone(), outbox.connection()));
                }
                keep
            });
        }
        for (id, connection) in gone {
            if let Ok(identity) = Identity::parse_client_id(&id) {
                self.disconnected(&identity, connection);
            }
        }
        for (identity, bits) in identities {
            let id = identity.client_id();
            let existing = link
                .clients
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&id)
                .cloned();
            if let Some(outbox) = existing.filter(|o| !o.is_closed()) {
                outbox.set_features(bits);
                continue;
            }
            let connection = self
                .next_request_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                | (1 << 62);
            let (outbox, mut pushes) = Outbox::new(connection);
            outbox.set_features(bits);
            link.clients
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(id.clone(), outbox.clone());
            let forward = link.clone();
            tokio::spawn(async move {
                while let Some(item) = pushes.recv().await {
                    let Some(event) = event_of(&id, item) else {
                        continue;
                    };
                    let mut events = forward
                        .events
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if events.len() >= MAX_PENDING_EVENTS {
                        events.pop_front();
                    }
                    events.push_back(event);
                    drop(events);
                    forward.arrived.notify_waiters();
                }
            });
            self.connections
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(identity.client_id(), outbox);
            self.push_c2d(&identity);
        }
        Ok(())
    }

    /// The pushes waiting for an edge device, waiting up to `wait` for the first one.
    pub async fn edge_events(&self, edge: &DeviceRecord, wait: Duration) -> Vec<Value> {
        let link = self.edge_link(edge.device_id.as_str());
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let arrived = link.arrived.notified();
            {
                let mut events = link
                    .events
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if !events.is_empty() {
                    return events.drain(..).collect();
                }
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Vec::new();
            }
        }
    }

    /// Appends a batch of telemetry of clients behind an edge device, durably, in one transaction.
    pub fn edge_messages(
        &self,
        edge: &DeviceRecord,
        messages: &[EdgeMessage],
    ) -> Result<usize, HubError> {
        let batch: Vec<(Identity, &Message)> = messages
            .iter()
            .map(|m| Ok((self.scoped(edge, &m.client)?, &m.message)))
            .collect::<Result<_, HubError>>()?;
        self.accept_telemetry_batch(&batch)
    }

    /// Reads a twin on behalf of a client behind an edge device.
    pub fn edge_twin(&self, edge: &DeviceRecord, client: &str) -> Result<Value, HubError> {
        self.device_view(&self.scoped(edge, client)?)
    }

    /// Applies a reported patch on behalf of a client behind an edge device.
    pub fn edge_reported(
        &self,
        edge: &DeviceRecord,
        client: &str,
        patch: &Value,
    ) -> Result<u64, HubError> {
        self.patch_reported(&self.scoped(edge, client)?, patch)
    }

    /// Completes C2D messages and answers methods on behalf of clients behind an edge device.
    pub fn edge_acks(
        &self,
        edge: &DeviceRecord,
        delivered: &[(String, u64)],
        answers: Vec<(String, i32, Value)>,
    ) -> Result<(), HubError> {
        for (client, delivery_id) in delivered {
            self.complete_c2d(&self.scoped(edge, client)?, *delivery_id);
        }
        for (rid, status, payload) in answers {
            self.method_answered(
                &rid,
                status,
                serde_json::to_vec(&payload).unwrap_or_default(),
            );
        }
        Ok(())
    }

    /// The identities behind an edge device with their keys, for its offline authentication cache.
    pub fn edge_scope(&self, edge: &DeviceRecord) -> Result<Value, HubError> {
        let conn = self.db.lock();
        let modules: Vec<Value> = store::modules(&conn, &edge.device_id)?
            .iter()
            .map(|m| crate::rest::wire::module_json(m, false))
            .collect();
        let scope = edge.edge_scope();
        let devices: Vec<Value> = store::devices(&conn)?
            .iter()
            .filter(|d| d.parent_scopes.contains(&scope))
            .map(|d| crate::rest::wire::device_json(d, false))
            .collect();
        Ok(json!({"devices": devices, "modules": modules}))
    }
}
