//! The Outpost hub: the cloud half of Outpost.
//!
//! Start reading at [`Hub`], the service state: the registry ([`registry`]), twins and deployments ([`twins`]),
//! direct methods and messages ([`messaging`]). Two protocol heads sit on top of it: the REST service API of
//! azure-iot-hub ([`rest`]) and the MQTT device protocol of azure-iot-device, which is `outpost-mqtt`'s head
//! driven through the [`DeviceOperations`](outpost_mqtt::DeviceOperations) implementation in [`device_ops`].
//! [`server`] wires both to their listeners with certificates from `outpost-pki`. Everything durable goes through
//! the storage boundary ([`storage`]: the [`Tables`](storage::Tables) of one transaction, run by an
//! [`Engine`](storage::Engine): SQLite by default, PostgreSQL for replicas); the hub holds a
//! [`Storage`](writer::Storage) handle whose reads run on tokio's blocking pool and whose writes are
//! group-committed by the storage writer's thread ([`writer`]), so no async worker waits on a disk.
//! The event stream is also an Event Hub with partitions ([`stream`] has its records, [`eventhub`] serves it to the
//! AMQP head of `outpost-amqp` with cloud-to-device messages and their feedback).

pub mod auth;
pub mod device_ops;
pub mod edge_link;
pub mod error;
pub mod eventhub;
pub mod feedback;
pub mod identity;
pub mod messaging;
pub mod metrics;
pub mod migrate;
pub mod registry;
pub mod replicas;
pub mod rest;
pub mod server;
pub mod shared_identity;
pub mod storage;
pub mod store;
pub mod stream;
pub mod twins;
pub mod writer;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use outpost_core::{DeviceId, Identity};
use outpost_mqtt::{ConnectionTable, Outbox, PendingMethods};
use storage::sqlite::SqliteEngine;
use storage::Engine;
use tokio::sync::watch;

pub use error::HubError;
pub use server::{HubConfig, RunningHub};

/// Direct method calls that may wait for their answers at once; past this a call is refused with 429.
const MAX_PENDING_METHODS: usize = 10_000;

/// The setting that says the default access policies were created (see [`Hub::with_engine`]).
const POLICIES_CREATED: &str = "hub.policies-created";

/// The hub's state, shared by its protocol heads.
pub struct Hub {
    /// The host name devices and services address the hub by (the audience of their tokens).
    host_name: String,
    /// The storage: reads on the blocking pool over the engine's read connections, writes group-committed by
    /// the writer's thread, so that no tokio worker waits on a disk.
    storage: writer::Storage,
    /// This replica's live device connections by MQTT client id (`d` or `d/m`).
    connections: ConnectionTable,
    /// Direct method calls waiting for their response, each bound to the connection it was sent on.
    pending_methods: PendingMethods,
    next_request_id: AtomicU64,
    /// The sequence number of the newest device-to-cloud event, for long-polling readers.
    newest_event: watch::Sender<i64>,
    /// Cloud-to-device messages pushed and not yet acknowledged: message id → connection it went out on.
    c2d_in_flight: Mutex<HashMap<i64, u64>>,
    /// Orders reading the C2D queue to push it against completing a message: a push that read the queue
    /// before a completion committed must not see the message's in-flight mark already gone and send it again.
    c2d_gate: tokio::sync::Mutex<()>,
    /// The shared access policies, read once: every service request is authorised against them, and nothing
    /// changes them while the hub runs.
    policies: Vec<identity::AccessPolicy>,
    /// The upstream links of edge devices by device id.
    edge_links: Mutex<HashMap<String, std::sync::Arc<edge_link::EdgeLink>>>,
    /// What the hub counts and times (records nothing unless metrics are on).
    metrics: metrics::HubMetrics,
    /// The event stream as an Event Hub: its partitions' heads, twin change events, feedback.
    stream: eventhub::EventHubState,
    /// The other replicas of the hub on its PostgreSQL database, when it has some ([`replicas`]).
    replicas: Option<Arc<replicas::Replicas>>,
    /// Set when the hub shuts down: long polls answer at once instead of holding their connections open.
    stopping: watch::Sender<bool>,
}

impl Hub {
    /// Ends the long polls in progress, and answers those that come later at once, as if their wait had passed:
    /// a hub shutting down does not wait for the edge devices' and monitors' polls to time out.
    pub fn stop_long_polls(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once [`stop_long_polls`](Self::stop_long_polls) was called.
    pub(crate) async fn stopping(&self) {
        let mut stopping = self.stopping.subscribe();
        // The sender lives as long as the hub, so this only ends when the flag is set.
        let _ = stopping.wait_for(|stopping| *stopping).await;
    }

    /// Opens the hub's database in `data_dir` (creating it and the default access policies on first start), with
    /// the stream settings stored in it (or the defaults for a new one).
    pub fn open(data_dir: &Path, host_name: &str) -> Result<Self, HubError> {
        Self::open_with(data_dir, host_name, &eventhub::StreamSettings::default())
    }

    /// Opens the hub's database in `data_dir` with `stream` settings: a partition count that differs from the
    /// stored one is refused.
    pub fn open_with(
        data_dir: &Path,
        host_name: &str,
        stream: &eventhub::StreamSettings,
    ) -> Result<Self, HubError> {
        let engine = SqliteEngine::open(&data_dir.join("hub.sqlite")).map_err(|e| match e {
            store::StorageError::Engine(why) => HubError::ArgumentInvalid(why),
            other => HubError::Storage(other),
        })?;
        Self::with_engine(Arc::new(engine), host_name, stream)
    }

    /// A hub on an in-memory database, for tests.
    pub fn in_memory(host_name: &str) -> Result<Self, HubError> {
        Self::in_memory_with(host_name, &eventhub::StreamSettings::default())
    }

    /// A hub on an in-memory database with `stream` settings, for tests.
    pub fn in_memory_with(
        host_name: &str,
        stream: &eventhub::StreamSettings,
    ) -> Result<Self, HubError> {
        Self::with_engine(Arc::new(SqliteEngine::in_memory()?), host_name, stream)
    }

    /// A hub on `engine` (SQLite or PostgreSQL) with `stream` settings: creates the default access policies and
    /// the Event Hub on first start, reads the policies once, and starts the storage writer.
    pub fn with_engine(
        engine: Arc<dyn Engine>,
        host_name: &str,
        stream: &eventhub::StreamSettings,
    ) -> Result<Self, HubError> {
        let event_hub = eventhub::EventHubState::open(&*engine, host_name, stream)?;
        let (newest, policies) = storage::transaction(&*engine, |tables| {
            // Replicas starting together on one new database: the marker's insert makes all but the first wait
            // for its commit and then skip, so every replica reads the same policies (with the same keys).
            if tables.policies()?.is_empty() && tables.put_setting(POLICIES_CREATED, b"1", true)? {
                for policy in identity::AccessPolicy::defaults() {
                    tables.put_policy(&policy)?;
                }
            }
            Ok::<_, HubError>((tables.last_event()?, tables.policies()?))
        })?;
        tracing::debug!(engine = %engine.describe(), "hub storage opened");
        let storage = writer::Storage::start(engine)?;
        Ok(Self {
            host_name: host_name.to_owned(),
            storage,
            connections: ConnectionTable::default(),
            pending_methods: PendingMethods::new(MAX_PENDING_METHODS),
            next_request_id: AtomicU64::new(1),
            newest_event: watch::channel(newest).0,
            stopping: watch::channel(false).0,
            replicas: None,
            c2d_in_flight: Mutex::new(HashMap::new()),
            c2d_gate: tokio::sync::Mutex::new(()),
            edge_links: Mutex::new(HashMap::new()),
            policies,
            metrics: metrics::HubMetrics::default(),
            stream: event_hub,
        })
    }

    /// Makes this hub one replica of those on its PostgreSQL database (see [`replicas`]).
    #[must_use]
    pub fn with_replicas(mut self, replicas: Arc<replicas::Replicas>) -> Self {
        self.replicas = Some(replicas);
        self
    }

    /// Closes this replica's connection of `client_id`: the client connected through another replica.
    fn close_here(&self, client_id: &str) {
        if self.connections.close(client_id) {
            tracing::debug!(client_id, "closing this replica's connection of the client");
        }
    }

    /// The host name of the hub.
    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// Every shared access policy.
    pub fn policies(&self) -> Result<Vec<identity::AccessPolicy>, HubError> {
        Ok(self.policies.clone())
    }

    /// The shared access policy named `name`.
    pub fn policy(&self, name: &str) -> Option<&identity::AccessPolicy> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// The outbox of a connected identity.
    fn outbox(&self, identity: &Identity) -> Option<Outbox> {
        self.connections.get(&identity.client_id())
    }

    /// Whether an identity has a live connection to this replica.
    pub fn is_connected(&self, identity: &Identity) -> bool {
        self.connections.contains(&identity.client_id())
    }

    /// Which of the given clients (`d` or `d/m`) have a live connection to any replica of the hub: this one's
    /// table, and with replicas the live replicas' records. A lost database counts as not connected elsewhere.
    pub async fn connected_clients(&self, client_ids: &[String]) -> HashSet<String> {
        let mut connected: HashSet<String> = client_ids
            .iter()
            .filter(|client_id| self.connections.contains(client_id))
            .cloned()
            .collect();
        if let Some(replicas) = &self.replicas {
            let elsewhere: Vec<String> = client_ids
                .iter()
                .filter(|client_id| !connected.contains(*client_id))
                .cloned()
                .collect();
            if !elsewhere.is_empty() {
                match replicas.held_among(elsewhere).await {
                    Ok(held) => connected.extend(held),
                    Err(error) => {
                        tracing::warn!(%error, "cannot read which replicas hold connections");
                    }
                }
            }
        }
        connected
    }

    /// Whether an identity has a live connection to any replica of the hub.
    pub async fn is_connected_anywhere(&self, identity: &Identity) -> bool {
        let client_id = identity.client_id();
        !self
            .connected_clients(std::slice::from_ref(&client_id))
            .await
            .is_empty()
    }

    /// Forgets the connection `connection` of an identity, unless a newer one has replaced it.
    fn disconnected(&self, identity: &Identity, connection: u64) {
        self.connections
            .disconnected(&identity.client_id(), connection);
    }

    /// Closes the connection of one identity, on whichever replica holds it.
    fn disconnect(&self, identity: &Identity) {
        let client_id = identity.client_id();
        self.connections.close(&client_id);
        if let Some(replicas) = &self.replicas {
            replicas.tell(replicas::Notice::Close {
                client_id,
                with_modules: false,
            });
        }
    }

    /// Closes the connections of a device and of all its modules, on whichever replicas hold them.
    fn disconnect_device(&self, device: &DeviceId) {
        self.connections.close_device(device.as_str());
        if let Some(replicas) = &self.replicas {
            replicas.tell(replicas::Notice::Close {
                client_id: device.to_string(),
                with_modules: true,
            });
        }
    }
}
