//! The Outpost hub: the cloud half of Outpost.
//!
//! Start reading at [`Hub`], which composes three services: the [`Registry`] of devices and modules
//! ([`registry`]), [`Twins`] with deployments ([`twins`]), automatic configurations and deployments evaluated
//! over the fleet ([`fleet`]), and [`Messaging`]: the event stream, cloud-to-device messages and direct methods
//! ([`messaging`]). Each holds only what it needs: the [`Storage`](writer::Storage)
//! handle, the one connection table of this replica shared by all of them ([`Connections`], which also reaches
//! the other replicas), and for twins and messaging the Event Hub's state. [`Hub`] keeps what spans them: access
//! policies and tokens ([`auth`]), the Event Hub ([`eventhub`]), edge links ([`edge_link`]) and metrics. Two
//! protocol heads sit on top of it: the REST service API of azure-iot-hub ([`rest`]) and the MQTT device protocol
//! of azure-iot-device, which is `outpost-mqtt`'s head driven through the
//! [`DeviceOperations`](outpost_mqtt::DeviceOperations) implementation in [`device_ops`].
//! [`server`] wires both to their listeners with certificates from `outpost-pki`. Everything durable goes through
//! the storage boundary ([`storage`]: the [`Tables`](storage::Tables) of one transaction, run by an
//! [`Engine`](storage::Engine): SQLite by default, PostgreSQL for replicas); the services' storage handle runs
//! reads on tokio's blocking pool and hands writes to the storage writer's thread, which group-commits them
//! ([`writer`]), so no async worker waits on a disk.
//! The event stream is also an Event Hub with partitions ([`stream`] has its records, [`eventhub`] serves it to the
//! AMQP head of `outpost-amqp` with cloud-to-device messages and their feedback).

pub mod auth;
pub mod connections;
pub mod device_ops;
pub mod edge_link;
pub mod error;
pub mod eventhub;
pub mod feedback;
pub mod fleet;
pub mod identity;
pub mod jobs;
pub mod messaging;
pub mod metrics;
pub mod migrate;
pub mod provisioning;
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
pub mod x509_auth;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use storage::sqlite::SqliteEngine;
use storage::Engine;
use tokio::sync::watch;

pub use connections::Connections;
pub use error::HubError;
pub use messaging::Messaging;
pub use registry::Registry;
pub use server::{HubConfig, RunningHub};
pub use twins::Twins;

/// The setting that says the default access policies were created (see [`Hub::with_engine`]).
const POLICIES_CREATED: &str = "hub.policies-created";

/// The hub's state, shared by its protocol heads: the [`Registry`], [`Twins`] and [`Messaging`] services over
/// one storage handle and one connection table, and what the hub keeps beside them (access policies, the Event
/// Hub, edge links).
pub struct Hub {
    /// The host name devices and services address the hub by (the audience of their tokens).
    host_name: String,
    /// The storage: reads on the blocking pool over the engine's read connections, writes group-committed by
    /// the writer's thread, so that no tokio worker waits on a disk. Every service holds a clone of it.
    storage: writer::Storage,
    /// This replica's live device connections and the other replicas; every service shares the one table.
    connections: Connections,
    /// The ids of the virtual connections of clients behind edge links.
    next_virtual_connection: AtomicU64,
    /// The shared access policies, read once: every service request is authorised against them, and nothing
    /// changes them while the hub runs.
    policies: Vec<identity::AccessPolicy>,
    /// The upstream links of edge devices by device id.
    edge_links: Mutex<HashMap<String, std::sync::Arc<edge_link::EdgeLink>>>,
    /// What the hub counts and times (records nothing unless metrics are on).
    metrics: metrics::HubMetrics,
    /// The event stream as an Event Hub: its partitions' heads, the newest event, twin change events, feedback.
    stream: Arc<eventhub::EventHubState>,
    /// Set when the hub shuts down: long polls answer at once instead of holding their connections open.
    stopping: watch::Sender<bool>,
    /// Devices and modules.
    registry: Registry,
    /// Twins and deployments.
    twins: Twins,
    /// Automatic configurations and deployments.
    configurations: fleet::Configurations,
    /// The event stream, cloud-to-device messages and direct methods.
    messaging: Messaging,
    /// Jobs over many devices (run by [`jobs::driver`]).
    jobs: jobs::Jobs,
    /// The ID scope devices register in ([`provisioning`]), made once and stored.
    id_scope: String,
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
        let (newest, policies, id_scope) = storage::transaction(&*engine, |tables| {
            // Replicas starting together on one new database: the marker's insert makes all but the first wait
            // for its commit and then skip, so every replica reads the same policies (with the same keys).
            if tables.policies()?.is_empty() && tables.put_setting(POLICIES_CREATED, b"1", true)? {
                for policy in identity::AccessPolicy::defaults() {
                    tables.put_policy(&policy)?;
                }
            }
            // The first start makes the ID scope; concurrent first starts of replicas keep the winner's.
            tables.put_setting(
                provisioning::ID_SCOPE_SETTING,
                provisioning::new_id_scope().as_bytes(),
                true,
            )?;
            let id_scope = tables
                .setting(provisioning::ID_SCOPE_SETTING)?
                .map(|s| String::from_utf8_lossy(&s).into_owned())
                .unwrap_or_default();
            Ok::<_, HubError>((tables.last_event()?, tables.policies()?, id_scope))
        })?;
        tracing::debug!(engine = %engine.describe(), "hub storage opened");
        event_hub.newest_event.send_replace(newest);
        let storage = writer::Storage::start(engine)?;
        let storage_for_jobs = storage.clone();
        let connections = Connections::default();
        let stream = Arc::new(event_hub);
        let metrics = metrics::HubMetrics::default();
        let stopping = watch::channel(false).0;
        let fleet = fleet::FleetSignal::default();
        let registry = Registry::new(storage.clone(), connections.clone(), fleet.clone());
        let twins = Twins::new(
            storage.clone(),
            connections.clone(),
            stream.clone(),
            fleet.clone(),
        );
        let configurations = fleet::Configurations::new(twins.clone(), fleet);
        let messaging = Messaging::new(
            registry.clone(),
            stream.clone(),
            metrics.clone(),
            stopping.subscribe(),
        );
        Ok(Self {
            host_name: host_name.to_owned(),
            storage,
            connections,
            next_virtual_connection: AtomicU64::new(1),
            stopping,
            edge_links: Mutex::new(HashMap::new()),
            policies,
            metrics,
            stream,
            registry,
            twins,
            configurations,
            messaging,
            jobs: jobs::Jobs::new(storage_for_jobs),
            id_scope,
        })
    }

    /// Makes this hub one replica of those on its PostgreSQL database (see [`replicas`]).
    #[must_use]
    pub fn with_replicas(mut self, replicas: Arc<replicas::Replicas>) -> Self {
        self.connections = self.connections.with_replicas(replicas);
        self.assemble();
        self
    }

    /// Builds the services again over the hub's shared parts, after a builder step changed one of them. Only
    /// builders call it, before the hub serves: the services it replaces hold no state yet.
    pub(crate) fn assemble(&mut self) {
        let fleet = self.configurations.signal().clone();
        self.registry = Registry::new(
            self.storage.clone(),
            self.connections.clone(),
            fleet.clone(),
        );
        self.twins = Twins::new(
            self.storage.clone(),
            self.connections.clone(),
            self.stream.clone(),
            fleet.clone(),
        );
        self.configurations = fleet::Configurations::new(self.twins.clone(), fleet);
        self.messaging = Messaging::new(
            self.registry.clone(),
            self.stream.clone(),
            self.metrics.clone(),
            self.stopping.subscribe(),
        );
    }

    /// The provisioning service: enrollments and registrations of devices that join by themselves.
    pub fn provisioning(&self) -> provisioning::Provisioning<'_> {
        provisioning::Provisioning::new(self)
    }

    /// The storage handle every service shares.
    pub(crate) fn storage(&self) -> &writer::Storage {
        &self.storage
    }

    /// The ID scope devices register in.
    pub fn id_scope(&self) -> &str {
        &self.id_scope
    }

    /// The registry: devices and modules.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Twins and deployments.
    pub fn twins(&self) -> &Twins {
        &self.twins
    }

    /// Automatic configurations and deployments, and their evaluation.
    pub fn configurations(&self) -> &fleet::Configurations {
        &self.configurations
    }

    /// The event stream, cloud-to-device messages and direct methods.
    pub fn messaging(&self) -> &Messaging {
        &self.messaging
    }

    /// Jobs: twin updates and direct methods over the devices a query selects.
    pub fn jobs(&self) -> &jobs::Jobs {
        &self.jobs
    }

    /// The hub's live device connections, on this replica and the others.
    pub fn connections(&self) -> &Connections {
        &self.connections
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
}
