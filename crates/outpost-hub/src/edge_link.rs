//! The hub's side of the upstream link of edge devices: one HTTPS link per edge device carries every identity
//! behind it (its modules and the devices whose parent it is), instead of one connection per client.
//!
//! The edge hub tells which of its clients are connected and what they listen for (`presence`); the hub then
//! treats each as connected through a virtual [`Outbox`], whose pushes (desired patches, C2D, method requests)
//! queue for the edge to collect with a long poll (`events`). Telemetry arrives in batches, appended in one
//! transaction; twin reads and reported patches are made on behalf of a client in the edge's scope.
//!
//! Presence lives in this process's memory. A long poll from an edge device that has not declared its presence
//! since the hub started is refused ([`PresenceRequired`]): after a restart the edge may not have noticed that
//! anything happened (HTTP/2 reconnects under it), and polling a hub that holds no virtual connection for its
//! clients would wait for pushes that never come.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_core::edge_link::{
    Delivered, LinkEvent, LinkFeature, MethodResponse, PresenceClient, ScopeAnswer,
    ScopeAuthentication, ScopeDevice, ScopeModule, ScopeStatus, SymmetricKeys, TwinAnswer,
    UpstreamMessage, X509Thumbprints,
};
use outpost_core::{DeviceId, Identity, Message};
use outpost_mqtt::{Feature, Outbox, Outgoing};
use serde_json::Value;
use tokio::sync::Notify;

use crate::error::HubError;
use crate::identity::DeviceRecord;
use crate::storage::Tables;
use crate::Hub;

/// At most this many clients may be present behind one edge device at a time; a presence call declaring more is
/// refused (400) and changes nothing.
pub const MAX_EDGE_CLIENTS: usize = 1_000;

/// At most this many events wait for an edge device; older ones are dropped (desired state is re-read on
/// reconnect, C2D is re-pushed from its queue).
const MAX_PENDING_EVENTS: usize = 10_000;

/// The pending pushes of one edge device.
#[derive(Default)]
pub struct EdgeLink {
    /// A std `Mutex`: held to push or drain, never across an `.await`.
    events: Mutex<VecDeque<LinkEvent>>,
    arrived: Notify,
    /// The virtual connections of its clients by client id.
    clients: Mutex<HashMap<String, Outbox>>,
    /// Whether the edge device has declared its presence to this process.
    declared: AtomicBool,
}

/// A long poll from an edge device that has not declared its presence since the hub started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("edge device {0} has not declared its presence since the hub started")]
pub struct PresenceRequired(pub String);

fn feature_bits(features: &[LinkFeature]) -> u8 {
    features
        .iter()
        .map(|f| match f {
            LinkFeature::Desired => Feature::DesiredPatches,
            LinkFeature::Methods => Feature::Methods,
            LinkFeature::C2d => Feature::CloudToDevice,
            LinkFeature::Inputs => Feature::Inputs,
        })
        .fold(0, |bits, f| bits | f.bit())
}

fn event_of(client: &str, item: Outgoing) -> Option<LinkEvent> {
    let client = client.to_owned();
    Some(match item {
        Outgoing::DesiredPatch { body } => LinkEvent::Desired { client, body },
        Outgoing::CloudToDevice {
            delivery_id,
            message,
        } => LinkEvent::C2d {
            client,
            delivery_id,
            message,
        },
        Outgoing::MethodRequest {
            rid,
            method,
            payload,
        } => LinkEvent::Method {
            client,
            rid,
            method,
            payload: serde_json::from_slice::<Value>(&payload).unwrap_or(Value::Null),
        },
        Outgoing::Close => LinkEvent::Close { client },
        Outgoing::Input { .. } => return None,
    })
}

impl Hub {
    /// Checks that `caller` is the enabled edge device `edge` (its token or its client certificate); returns its
    /// record.
    pub async fn authorize_edge(
        &self,
        caller: crate::auth::Caller<'_>,
        edge: &str,
    ) -> Result<DeviceRecord, HubError> {
        self.authorize_module_management(caller, crate::identity::Right::ServiceConnect, edge)
            .await?;
        self.registry.device(edge).await
    }

    /// Whether `identity` is behind `edge`: the edge device itself, one of its modules that exists, or one of its
    /// child devices.
    pub async fn in_scope(
        &self,
        edge: &DeviceRecord,
        identity: &Identity,
    ) -> Result<bool, HubError> {
        Ok(self.all_in_scope(edge, vec![identity.clone()]).await?.1[0])
    }

    /// [`Self::in_scope`] for many identities, read in one view: one query for the edge device's modules and
    /// one lookup per distinct other device. Gives the identities back with the answers.
    async fn all_in_scope(
        &self,
        edge: &DeviceRecord,
        identities: Vec<Identity>,
    ) -> Result<(Vec<Identity>, Vec<bool>), HubError> {
        let edge = edge.clone();
        self.storage
            .read(move |tables| {
                let answers = scope_of(tables, &edge, &identities)?;
                Ok((identities, answers))
            })
            .await
    }
    /// The identities of `clients`, each of which must be in `edge`'s scope.
    async fn all_scoped<'c>(
        &self,
        edge: &DeviceRecord,
        clients: impl IntoIterator<Item = &'c str>,
    ) -> Result<Vec<Identity>, HubError> {
        let identities: Vec<Identity> = clients
            .into_iter()
            .map(|client| {
                Identity::parse_client_id(client)
                    .map_err(|e| HubError::ArgumentInvalid(format!("{client:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let (identities, in_scope) = self.all_in_scope(edge, identities).await?;
        if let Some((identity, _)) = identities.iter().zip(&in_scope).find(|(_, ok)| !**ok) {
            return Err(HubError::Unauthorized(format!(
                "{identity} is not in the scope of edge device {}",
                edge.device_id
            )));
        }
        Ok(identities)
    }

    async fn scoped(&self, edge: &DeviceRecord, client: &str) -> Result<Identity, HubError> {
        Ok(self.all_scoped(edge, [client]).await?.remove(0))
    }

    /// [`scoped`](Self::scoped) for one entry of a batch: a client outside the edge device's scope (forged, or
    /// deleted at the hub since) is logged and dropped (`None`), its error kept in `refused` for the answer.
    async fn scoped_or_dropped(
        &self,
        edge: &DeviceRecord,
        client: &str,
        refused: &mut Option<HubError>,
    ) -> Result<Option<Identity>, HubError> {
        match self.scoped(edge, client).await {
            Ok(identity) => Ok(Some(identity)),
            Err(error @ (HubError::Unauthorized(_) | HubError::ArgumentInvalid(_))) => {
                tracing::warn!(edge = %edge.device_id, client, %error,
                    "link acknowledgement dropped: the client is not in the edge device's scope");
                refused.get_or_insert(error);
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    fn edge_link(&self, edge: &str) -> Arc<EdgeLink> {
        let mut links = self
            .edge_links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        links.entry(edge.to_owned()).or_default().clone()
    }

    /// Replaces the set of clients connected behind an edge device. At most [`MAX_EDGE_CLIENTS`] may be declared,
    /// each in the edge's scope; the sets are compared by client id in linear time.
    pub async fn edge_presence(
        &self,
        edge: &DeviceRecord,
        clients: &[PresenceClient],
    ) -> Result<(), HubError> {
        if clients.len() > MAX_EDGE_CLIENTS {
            return Err(HubError::ArgumentInvalid(format!(
                "{} clients declared; an edge device may declare at most {MAX_EDGE_CLIENTS}",
                clients.len()
            )));
        }
        let identities = self
            .all_scoped(edge, clients.iter().map(|c| c.id.as_str()))
            .await?;
        let wanted: HashMap<String, (Identity, u8)> = identities
            .into_iter()
            .zip(clients)
            .map(|(identity, c)| (identity.client_id(), (identity, feature_bits(&c.features))))
            .collect();
        let link = self.edge_link(edge.device_id.as_str());
        let mut gone = Vec::new();
        {
            let mut current = link
                .clients
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            current.retain(|id, outbox| {
                let keep = wanted.contains_key(id);
                if !keep {
                    gone.push((id.clone(), outbox.connection()));
                }
                keep
            });
        }
        for (id, connection) in gone {
            if let Ok(identity) = Identity::parse_client_id(&id) {
                self.connections.disconnected(&identity, connection);
                if let Some(replicas) = self.connections.replicas() {
                    replicas.disconnected(&id, connection);
                }
            }
        }
        for (id, (identity, bits)) in wanted {
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
                .next_virtual_connection
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
                while let Some(Ok(item)) = pushes.recv().await {
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
            if let Some(replicas) = self.connections.replicas() {
                // Held by this replica, like a device connected here: what other replicas make for the client
                // (desired patches, C2D, methods) is routed here and wakes the edge's long poll.
                replicas.connected(&identity.client_id(), connection);
            }
            self.connections
                .table()
                .connected(identity.client_id(), outbox);
            self.messaging.push_c2d(&identity).await;
        }
        link.declared.store(true, Ordering::Release);
        Ok(())
    }

    /// The pushes waiting for an edge device, waiting up to `wait` for the first one. Refused when the edge
    /// device has not declared its presence since this process started (see the module's documentation).
    pub async fn edge_events(
        &self,
        edge: &DeviceRecord,
        wait: Duration,
    ) -> Result<Vec<LinkEvent>, PresenceRequired> {
        let link = self.edge_link(edge.device_id.as_str());
        if !link.declared.load(Ordering::Acquire) {
            return Err(PresenceRequired(edge.device_id.to_string()));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let arrived = link.arrived.notified();
            {
                let mut events = link
                    .events
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if !events.is_empty() {
                    return Ok(events.drain(..).collect());
                }
            }
            tokio::select! {
                waited = tokio::time::timeout_at(deadline, arrived) => if waited.is_err() {
                    return Ok(Vec::new());
                },
                () = self.stopping() => return Ok(Vec::new()),
            }
        }
    }

    /// Appends a batch of telemetry of clients behind an edge device, durably, in one transaction.
    pub async fn edge_messages(
        &self,
        edge: &DeviceRecord,
        messages: &[UpstreamMessage<'_>],
    ) -> Result<usize, HubError> {
        let identities = self
            .all_scoped(edge, messages.iter().map(|m| &*m.client))
            .await?;
        let batch: Vec<(Identity, &Message)> = identities
            .into_iter()
            .zip(messages.iter().map(|m| &*m.message))
            .collect();
        self.messaging.accept_telemetry_batch(&batch).await
    }

    /// Reads a twin on behalf of a client behind an edge device.
    pub async fn edge_twin(
        &self,
        edge: &DeviceRecord,
        client: &str,
    ) -> Result<TwinAnswer, HubError> {
        let mut view = self
            .twins
            .device_view(&self.scoped(edge, client).await?)
            .await?;
        let mut section = |name: &str| view.get_mut(name).map(Value::take).unwrap_or_default();
        Ok(TwinAnswer {
            desired: section("desired"),
            reported: section("reported"),
        })
    }

    /// Applies a reported patch on behalf of a client behind an edge device.
    pub async fn edge_reported(
        &self,
        edge: &DeviceRecord,
        client: &str,
        patch: &Value,
    ) -> Result<u64, HubError> {
        self.twins
            .report(&self.scoped(edge, client).await?, patch)
            .await
    }

    /// Completes C2D messages and answers methods on behalf of clients behind an edge device.
    ///
    /// Each entry stands alone: one for a client outside the edge device's scope (forged, or deleted at the hub
    /// since) is dropped and logged, and the others are still taken; the request is then refused with that
    /// entry's error, so the edge hears of it. Taking an entry twice is harmless (a completed message or a
    /// settled call ignores it), so an edge that sends the request again loses nothing.
    pub async fn edge_acks(
        &self,
        edge: &DeviceRecord,
        delivered: &[Delivered],
        answers: Vec<MethodResponse>,
    ) -> Result<(), HubError> {
        let mut refused = None;
        for ack in delivered {
            if let Some(identity) = self
                .scoped_or_dropped(edge, &ack.client, &mut refused)
                .await?
            {
                self.messaging
                    .complete_c2d(&identity, ack.delivery_id)
                    .await;
            }
        }
        let link = self.edge_link(edge.device_id.as_str());
        for answer in answers {
            let Some(identity) = self
                .scoped_or_dropped(edge, &answer.client, &mut refused)
                .await?
            else {
                continue;
            };
            // The request went out on the client's virtual connection behind this edge device: only an
            // answer that comes back the same way is taken.
            let Some(connection) = link
                .clients
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&identity.client_id())
                .map(Outbox::connection)
            else {
                tracing::warn!(edge = %edge.device_id, client = %identity, rid = %answer.rid,
                    "method answer dropped: the client is not connected behind this edge device");
                continue;
            };
            self.messaging.method_answered(
                &identity,
                connection,
                &answer.rid,
                answer.status,
                serde_json::to_vec(&answer.payload).unwrap_or_default(),
            );
        }
        refused.map_or(Ok(()), Err)
    }

    /// The identities behind an edge device with their keys, for its offline authentication cache.
    pub async fn edge_scope(&self, edge: &DeviceRecord) -> Result<ScopeAnswer, HubError> {
        let authentication = |c: &crate::identity::Credentials| ScopeAuthentication {
            symmetric_key: SymmetricKeys {
                primary_key: c.primary_key.clone(),
                secondary_key: c.secondary_key.clone(),
            },
            x509_thumbprint: X509Thumbprints {
                primary_thumbprint: c.primary_thumbprint.clone(),
                secondary_thumbprint: c.secondary_thumbprint.clone(),
            },
            kind: serde_json::to_value(c.kind)
                .ok()
                .and_then(|kind| kind.as_str().map(str::to_owned))
                .unwrap_or_default(),
        };
        let edge_id = edge.device_id.clone();
        let (modules, devices, cas) = self
            .storage
            .read(move |tables| {
                Ok::<_, HubError>((
                    tables.modules(&edge_id)?,
                    tables.devices()?,
                    tables.ca_certificates()?,
                ))
            })
            .await?;
        let modules = modules
            .iter()
            .map(|m| ScopeModule {
                device_id: m.device_id.to_string(),
                module_id: m.module_id.to_string(),
                authentication: authentication(&m.credentials),
            })
            .collect();
        let scope = edge.edge_scope();
        let devices = devices
            .iter()
            .filter(|d| d.parent_scopes.contains(&scope))
            .map(|d| ScopeDevice {
                device_id: d.device_id.to_string(),
                status: match d.status {
                    crate::identity::IdentityStatus::Enabled => ScopeStatus::Enabled,
                    crate::identity::IdentityStatus::Disabled => ScopeStatus::Disabled,
                },
                authentication: authentication(&d.credentials),
            })
            .collect();
        Ok(ScopeAnswer {
            devices,
            modules,
            ca_certificates: cas.into_iter().map(|ca| ca.pem).collect(),
        })
    }
}

/// Whether each of `identities` is behind `edge` (see [`Hub::in_scope`]).
fn scope_of(
    tables: &mut dyn Tables,
    edge: &DeviceRecord,
    identities: &[Identity],
) -> Result<Vec<bool>, HubError> {
    let modules = if identities
        .iter()
        .any(|i| i.device == edge.device_id && i.module.is_some())
    {
        tables.module_ids(&edge.device_id)?
    } else {
        HashSet::new()
    };
    let scope = edge.edge_scope();
    let mut children: HashMap<&DeviceId, bool> = HashMap::new();
    identities
        .iter()
        .map(|identity| {
            if identity.device == edge.device_id {
                return Ok(identity
                    .module
                    .as_ref()
                    .is_none_or(|m| modules.contains(m.as_str())));
            }
            // A child device connects as itself: the edge's scope holds no modules of other devices.
            if identity.module.is_some() {
                return Ok(false);
            }
            if let Some(&child) = children.get(&identity.device) {
                return Ok(child);
            }
            let child = tables
                .device(&identity.device)?
                .is_some_and(|d| d.parent_scopes.contains(&scope));
            children.insert(&identity.device, child);
            Ok(child)
        })
        .collect()
}
