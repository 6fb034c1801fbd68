//! The hub's storage boundary: what the hub keeps, behind one trait per role, with one engine per database.
//!
//! [`Tables`] is one transaction's view of every table the hub keeps (registry, twins, deployments, policies,
//! sessions, the event stream and its Event Hub presentation, cloud-to-device messages and their feedback, the
//! hub's own settings). It only loads, stores and commits: the domain rules (twin merge, limits, etags,
//! versions, the C2D queue limit) stay in `outpost-core` and the hub's services, which compose these calls
//! inside one transaction. [`Engine`] runs such compositions on a real database: reads in a consistent view,
//! writes in group commits where each job has its own savepoint.
//!
//! Every method blocks the thread it runs on: engines are driven from the storage writer's thread and from
//! `spawn_blocking` ([`crate::writer::Storage`]), never from an async worker, but for the few synchronous methods
//! of the AMQP head, which read on their caller's thread through the engine's read connections.
//!
//! Two engines implement it: SQLite, the embedded default, in a data directory ([`sqlite`]); PostgreSQL, for
//! several hub replicas on one database ([`postgres`]).

pub mod index;
pub mod jobs;
pub mod postgres;
pub mod provisioning;
pub mod sqlite;

use std::collections::HashSet;

use outpost_core::query::Narrowing;
use outpost_core::{DeviceId, ModuleId, Twin};
use serde_json::Value;

use crate::fleet::rollout::Rollout;
use crate::fleet::{Assignment, Configuration};
use crate::identity::{AccessPolicy, DeviceRecord, ModuleRecord};
use crate::store::StorageError;
use crate::stream::{Appended, EventHubRecord, EventSource, Head, LockedFeedback, PartitionEvent};
use crate::x509_auth::CaRecord;

/// One transaction's view of the hub's tables. Changes made through it are committed or rolled back together
/// by the [`Engine`] that lent it. The jobs' tables are a trait of their own ([`jobs::JobTables`]), and so are the provisioning
/// service's ([`provisioning::ProvisioningTables`]).
pub trait Tables: jobs::JobTables + provisioning::ProvisioningTables {
    // The registry.

    /// One device.
    fn device(&mut self, id: &DeviceId) -> Result<Option<DeviceRecord>, StorageError>;
    /// Every device, ordered by id.
    fn devices(&mut self) -> Result<Vec<DeviceRecord>, StorageError>;
    /// Up to `limit` device ids in order, from the first after `after`: a page of the fleet's ids.
    fn device_ids(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError>;
    /// Inserts or replaces a device.
    fn put_device(&mut self, record: &DeviceRecord) -> Result<(), StorageError>;
    /// Deletes a device with its modules, twins, sessions, queued messages and deployment; whether it existed.
    fn delete_device(&mut self, id: &DeviceId) -> Result<bool, StorageError>;
    /// The ids of the modules of a device.
    fn module_ids(&mut self, device: &DeviceId) -> Result<HashSet<String>, StorageError>;
    /// One module.
    fn module(
        &mut self,
        device: &DeviceId,
        module: &ModuleId,
    ) -> Result<Option<ModuleRecord>, StorageError>;
    /// The modules of a device, ordered by id.
    fn modules(&mut self, device: &DeviceId) -> Result<Vec<ModuleRecord>, StorageError>;
    /// Inserts or replaces a module.
    fn put_module(&mut self, record: &ModuleRecord) -> Result<(), StorageError>;
    /// Deletes a module with its twin and session; whether it existed.
    fn delete_module(&mut self, device: &DeviceId, module: &ModuleId)
        -> Result<bool, StorageError>;

    // Twins and deployments.

    /// The twin of a device (`module` `None`) or of a module.
    fn twin(
        &mut self,
        device: &DeviceId,
        module: Option<&ModuleId>,
    ) -> Result<Option<Twin>, StorageError>;
    /// Inserts or replaces a twin.
    fn put_twin(
        &mut self,
        device: &DeviceId,
        module: Option<&ModuleId>,
        twin: &Twin,
    ) -> Result<(), StorageError>;
    /// Up to `limit` devices with their twins (`None` if one has none yet), ordered by id, from the first id
    /// after `after` (from the first without it): the documents of fleet queries, read in one statement so
    /// that a device and its twin are of the same moment, a page at a time so that paging is not quadratic.
    ///
    /// Only devices whose twin satisfies every constraint of `narrowing` are returned, found through an index
    /// (see [`index`]); the caller still evaluates its whole condition on each.
    fn device_twins(
        &mut self,
        after: Option<&str>,
        limit: usize,
        narrowing: &Narrowing,
    ) -> Result<Vec<(DeviceRecord, Option<Twin>)>, StorageError>;
    /// Up to `limit` modules with their devices and twins, ordered by device then module id, from the first
    /// after `after` (device id, module id), narrowed, as [`Tables::device_twins`].
    fn module_twins(
        &mut self,
        after: Option<(&str, &str)>,
        limit: usize,
        narrowing: &Narrowing,
    ) -> Result<Vec<(DeviceRecord, ModuleRecord, Option<Twin>)>, StorageError>;
    /// Records the deployment last applied to an edge device.
    fn put_deployment(&mut self, device: &DeviceId, manifest: &Value) -> Result<(), StorageError>;
    /// The deployment last applied to an edge device.
    fn deployment(&mut self, device: &DeviceId) -> Result<Option<Value>, StorageError>;

    // Automatic configurations and deployments.

    /// One configuration by id.
    fn configuration(&mut self, id: &str) -> Result<Option<Configuration>, StorageError>;
    /// Every configuration, ordered by id.
    fn configurations(&mut self) -> Result<Vec<Configuration>, StorageError>;
    /// Inserts or replaces a configuration.
    fn put_configuration(&mut self, record: &Configuration) -> Result<(), StorageError>;
    /// Deletes a configuration; whether it existed.
    fn delete_configuration(&mut self, id: &str) -> Result<bool, StorageError>;
    /// What automatic configurations gave a device and its modules, once evaluated.
    fn assignment(&mut self, device: &DeviceId) -> Result<Option<Assignment>, StorageError>;
    /// Every device's assignment, ordered by device id.
    fn assignments(&mut self) -> Result<Vec<(String, Assignment)>, StorageError>;
    /// The ids of the devices that have an assignment, ordered.
    fn assigned_devices(&mut self) -> Result<Vec<String>, StorageError>;
    /// Records what automatic configurations gave a device (deleted with the device).
    fn put_assignment(
        &mut self,
        device: &DeviceId,
        assignment: &Assignment,
    ) -> Result<(), StorageError>;
    /// The rollout of a deployment, if it has one.
    fn rollout(&mut self, id: &str) -> Result<Option<Rollout>, StorageError>;
    /// Every rollout, ordered by deployment id.
    fn rollouts(&mut self) -> Result<Vec<Rollout>, StorageError>;
    /// Inserts or replaces a rollout (its lease stays as it is).
    fn put_rollout(&mut self, rollout: &Rollout) -> Result<(), StorageError>;
    /// Takes or renews the lease on driving a rollout for `owner` until `until_ms` when it is free, expired
    /// (before `now_ms`) or `owner`'s already; whether `owner` holds it.
    fn claim_rollout(
        &mut self,
        id: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StorageError>;

    // The hub's own state.

    /// Every shared access policy, ordered by name.
    fn policies(&mut self) -> Result<Vec<AccessPolicy>, StorageError>;
    /// Inserts or replaces a shared access policy.
    fn put_policy(&mut self, policy: &AccessPolicy) -> Result<(), StorageError>;
    /// A setting of the hub by name (its CA and server certificate, say, so that every replica shares them).
    fn setting(&mut self, name: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Stores a setting; `only_if_absent` keeps an existing value (the first replica to start wins) and says
    /// whether this call stored it.
    fn put_setting(
        &mut self,
        name: &str,
        value: &[u8],
        only_if_absent: bool,
    ) -> Result<bool, StorageError>;

    // MQTT sessions.

    /// The persisted subscriptions of an MQTT client id.
    fn session(&mut self, client_id: &str) -> Result<Vec<String>, StorageError>;
    /// Persists the subscriptions of a client id; an empty list forgets the session.
    fn put_session(&mut self, client_id: &str, filters: &[String]) -> Result<(), StorageError>;

    // The event stream.

    /// Up to `max` events with a sequence number above `after`; twin change events only with `all_sources`.
    fn events_after(
        &mut self,
        after: i64,
        max: usize,
        all_sources: bool,
    ) -> Result<Vec<(i64, Value)>, StorageError>;
    /// The sequence number of the newest event ever appended (0 when none), even if it was pruned.
    fn last_event(&mut self) -> Result<i64, StorageError>;
    /// The bytes of event JSON stored.
    fn event_bytes(&mut self) -> Result<u64, StorageError>;
    /// Deletes the oldest events enqueued before `cutoff_ms` or past `max_bytes`, at most `batch`; how many.
    fn prune_events(
        &mut self,
        cutoff_ms: i64,
        max_bytes: u64,
        batch: usize,
    ) -> Result<usize, StorageError>;
    /// The Event Hub the stream is presented as, once created.
    fn event_hub(&mut self) -> Result<Option<EventHubRecord>, StorageError>;
    /// Creates the Event Hub record (once).
    fn create_event_hub(&mut self, record: &EventHubRecord) -> Result<(), StorageError>;
    /// Appends an event to `partition`, with the next sequence number of the stream and of the partition.
    fn append_event(
        &mut self,
        partition: u32,
        source: EventSource,
        event: &Value,
        enqueued_ms: i64,
    ) -> Result<Appended, StorageError> {
        self.append_event_text(
            partition,
            source,
            &serde_json::to_string(event)?,
            enqueued_ms,
        )
    }
    /// [`append_event`](Self::append_event) with the event already written as JSON text.
    fn append_event_text(
        &mut self,
        partition: u32,
        source: EventSource,
        text: &str,
        enqueued_ms: i64,
    ) -> Result<Appended, StorageError>;
    /// Appends `events` in order, `(partition, JSON text)` each, from one source and at one time, as
    /// [`append_event_text`](Self::append_event_text) would one by one. An engine may share the partition heads'
    /// reads and writes across the batch (SQLite does: a batch of telemetry from an edge device is an insert per
    /// 50 events and one head update per partition, instead of three statements per event).
    fn append_events(
        &mut self,
        source: EventSource,
        events: &[(u32, String)],
        enqueued_ms: i64,
    ) -> Result<Vec<Appended>, StorageError> {
        events
            .iter()
            .map(|(partition, text)| self.append_event_text(*partition, source, text, enqueued_ms))
            .collect()
    }
    /// Gives events stored before partitions existed their partition; how many.
    fn assign_partitions(&mut self, partitions: u32) -> Result<usize, StorageError>;
    /// A partition's newest event.
    fn head(&mut self, partition: u32) -> Result<Head, StorageError>;
    /// The offset of the oldest event kept in a partition.
    fn first_kept(&mut self, partition: u32) -> Result<Option<i64>, StorageError>;
    /// The offset of the first event of a partition at (`inclusive`) or after `offset`.
    fn first_from_offset(
        &mut self,
        partition: u32,
        offset: i64,
        inclusive: bool,
    ) -> Result<Option<i64>, StorageError>;
    /// The offset of the first event of a partition enqueued after `ms`.
    fn first_after_time(&mut self, partition: u32, ms: i64) -> Result<Option<i64>, StorageError>;
    /// Up to `max` events of a partition with offsets above `after`.
    fn partition_events(
        &mut self,
        partition: u32,
        after: i64,
        max: usize,
    ) -> Result<Vec<PartitionEvent>, StorageError>;
    /// The consumer groups created (without `$Default`).
    fn consumer_groups(&mut self) -> Result<Vec<String>, StorageError>;
    /// Whether a consumer group exists (case-insensitive).
    fn consumer_group_exists(&mut self, name: &str) -> Result<bool, StorageError>;
    /// Creates a consumer group; false when it exists.
    fn create_consumer_group(&mut self, name: &str, created_ms: i64) -> Result<bool, StorageError>;
    /// Deletes a consumer group; whether it existed.
    fn delete_consumer_group(&mut self, name: &str) -> Result<bool, StorageError>;

    // The CA certificates device certificates may chain to (X.509 authentication).

    /// Every CA certificate the hub holds, ordered by name.
    fn ca_certificates(&mut self) -> Result<Vec<CaRecord>, StorageError>;
    /// Adds a CA certificate; false when one of that name exists.
    fn add_ca_certificate(&mut self, record: &CaRecord) -> Result<bool, StorageError>;
    /// Removes a CA certificate; whether it existed.
    fn remove_ca_certificate(&mut self, name: &str) -> Result<bool, StorageError>;

    // Cloud-to-device messages and their feedback.

    /// Queues a cloud-to-device message; its id.
    fn enqueue_c2d(&mut self, device: &DeviceId, message: &Value) -> Result<i64, StorageError>;
    /// The queued messages of a device, oldest first.
    fn pending_c2d(&mut self, device: &DeviceId) -> Result<Vec<(i64, Value)>, StorageError>;
    /// One queued message of a device.
    fn c2d_message(&mut self, device: &DeviceId, id: i64) -> Result<Option<Value>, StorageError>;
    /// `(device, id)` of the queued messages whose expiry is before `now_ms`.
    fn expired_c2d(&mut self, now_ms: i64) -> Result<Vec<(String, i64)>, StorageError>;
    /// The devices with messages queued.
    fn devices_with_c2d(&mut self) -> Result<Vec<String>, StorageError>;
    /// Removes a delivered (or expired, or rejected) message.
    fn complete_c2d(&mut self, device: &DeviceId, id: i64) -> Result<(), StorageError>;
    /// Records one feedback record, keeping at most `cap` (the oldest go); its id.
    fn add_feedback(
        &mut self,
        record: &Value,
        enqueued_ms: i64,
        cap: usize,
    ) -> Result<i64, StorageError>;
    /// Locks up to `max` records unlocked at `now_ms` under `token` until `until_ms`.
    fn lock_feedback(
        &mut self,
        token: i64,
        now_ms: i64,
        until_ms: i64,
        max: usize,
    ) -> Result<Option<LockedFeedback>, StorageError>;
    /// When the next locked record unlocks, if any is locked at `now_ms`.
    fn next_feedback_unlock(&mut self, now_ms: i64) -> Result<Option<i64>, StorageError>;
    /// Removes the records locked under `token`; how many.
    fn complete_feedback(&mut self, token: i64) -> Result<usize, StorageError>;
    /// The records kept.
    fn feedback_count(&mut self) -> Result<usize, StorageError>;
}

/// A job that runs in its own savepoint of a group commit: `false` (or an error) rolls back its changes alone.
pub type SavepointJob<'a> = &'a mut dyn FnMut(&mut dyn Tables) -> bool;

/// One group commit in progress: runs jobs in savepoints of one transaction.
pub trait Group {
    /// Runs `job` in a savepoint of the group's transaction, rolled back if it returns `false`. An `Err` means
    /// the transaction itself failed: the group is lost and will not commit.
    fn run(&mut self, job: SavepointJob<'_>) -> Result<(), StorageError>;
}

/// A database the hub runs on.
pub trait Engine: Send + Sync + 'static {
    /// What the engine is, for logs (`sqlite /path` or `postgres host:port/db`, never a password).
    fn describe(&self) -> String;
    /// Runs `job` in a read-only, consistent view. Blocks: call it from `spawn_blocking` or a storage thread.
    fn read(
        &self,
        job: &mut dyn FnMut(&mut dyn Tables) -> Result<(), StorageError>,
    ) -> Result<(), StorageError>;
    /// Opens one transaction, lets `fill` run jobs in it through [`Group::run`], and commits it durably
    /// (one fsync) before returning. Blocks: the storage writer's thread calls it.
    fn write_group(
        &self,
        fill: &mut dyn FnMut(&mut dyn Group) -> Result<(), StorageError>,
    ) -> Result<(), StorageError>;
}

/// Runs `job` in one transaction of `engine` and commits it, on the calling thread: a group of one job, for
/// start-up and the CLI (the hub's own writes go through [`crate::writer`]). An `Err` from `job` rolls its
/// changes back and is returned.
pub fn transaction<T, E>(
    engine: &dyn Engine,
    job: impl FnOnce(&mut dyn Tables) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<StorageError>,
{
    let mut job = Some(job);
    let mut result = None;
    engine.write_group(&mut |group| {
        group.run(&mut |tables| {
            let Some(job) = job.take() else {
                return false;
            };
            let outcome = job(tables);
            let ok = outcome.is_ok();
            result = Some(outcome);
            ok
        })
    })?;
    result.unwrap_or_else(|| Err(StorageError::Engine("the transaction did not run".into()).into()))
}
