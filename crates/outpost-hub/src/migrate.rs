//! `outpost hub migrate`: copies a hub kept in SQLite (a data directory) into another database, PostgreSQL in
//! practice, so that hubs started on that database (`outpost hub serve --database`) are the same hub to devices
//! and services: the same identities and keys, twins with their versions and etags, the same access policies and
//! the same CA.
//!
//! The SQLite hub is read in one consistent view through its [`Engine`] and [`Tables`] (never its SQL), and the
//! target is written in one transaction that first checks it is empty: a target holding any device, policy or
//! hub setting is refused with nothing changed.
//!
//! Copied: devices and modules (keys, generation ids, etag counters, scopes), device and module twins as stored
//! (`$version`, etag, metadata), the deployment of each edge device, the automatic configurations and what they
//! gave each device, the scheduled jobs with how each of their devices stands (a running job resumes on the new
//! hub once the old one's lease has lapsed), the shared access policies (with the marker
//! that says they exist), the persisted MQTT subscriptions of each identity, the queued cloud-to-device messages
//! (in order; their store ids are new), the consumer groups, the Event Hub record (its name and partitions), and
//! the CA's files of the data directory, stored where the shared identity ([`crate::shared_identity`]) looks.
//!
//! Not copied: the device-to-cloud event stream (its offsets and sequence numbers are the database's own and
//! could not be kept; the new hub's stream starts empty), the delivery feedback of cloud-to-device messages, and
//! the server certificate (each replica gets one from the copied CA). The SQLite hub must be stopped while it is
//! migrated: what it writes after the read is not copied.

use std::path::{Path, PathBuf};

use outpost_core::{DeviceId, ModuleId, Twin};
use serde_json::Value;

use crate::fleet::rollout::Rollout;
use crate::fleet::{Assignment, Configuration};
use crate::identity::{AccessPolicy, DeviceRecord, ModuleRecord};
use crate::jobs::model::{JobDevice, StoredJob};
use crate::provisioning::model::{EnrollmentGroup, IndividualEnrollment, RegistrationRecord};
use crate::shared_identity::{StoredCa, CA_SETTING};
use crate::storage::sqlite::SqliteEngine;
use crate::storage::{transaction, Engine, Tables};
use crate::store::StorageError;
use crate::stream::EventHubRecord;
use crate::POLICIES_CREATED;

/// The SQLite database of a hub's data directory.
const DATABASE_FILE: &str = "hub.sqlite";

/// What a migration copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Devices.
    pub devices: usize,
    /// Modules.
    pub modules: usize,
    /// Device and module twins.
    pub twins: usize,
    /// Deployments of edge devices.
    pub deployments: usize,
    /// Automatic configurations and deployments.
    pub configurations: usize,
    /// Scheduled jobs.
    pub jobs: usize,
    /// Shared access policies.
    pub policies: usize,
    /// Identities with persisted MQTT subscriptions.
    pub sessions: usize,
    /// Queued cloud-to-device messages.
    pub c2d_messages: usize,
    /// Consumer groups (without `$Default`).
    pub consumer_groups: usize,
    /// CA certificates for X.509 devices.
    pub ca_certificates: usize,
    /// Whether the Event Hub record was copied (a hub that never started has none).
    pub event_hub: bool,
    /// Whether the CA was copied.
    pub ca: bool,
}

impl std::fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} devices, {} modules, {} twins, {} deployments, {} automatic configurations, {} jobs, {} access policies, \
             {} MQTT sessions, {} queued cloud-to-device messages, {} consumer groups, {} CA certificates, the Event Hub record: {}, \
             the CA: {}",
            self.devices,
            self.modules,
            self.twins,
            self.deployments,
            self.configurations,
            self.jobs,
            self.policies,
            self.sessions,
            self.c2d_messages,
            self.consumer_groups,
            self.ca_certificates,
            if self.event_hub { "yes" } else { "no" },
            if self.ca { "yes" } else { "no" },
        )
    }
}

/// Why a migration did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The data directory holds no hub.
    #[error("{0} holds no hub database (hub.sqlite): nothing to migrate")]
    NoHub(PathBuf),
    /// The data directory's hub has no CA files.
    #[error(
        "{0} has no CA (ca.pem and ca.key): start the hub once, or copy its data directory whole"
    )]
    NoCa(PathBuf),
    /// The target already holds a hub (or part of one); nothing was changed.
    #[error(
        "the target database is not empty ({0}): refusing to migrate into it; nothing was changed"
    )]
    NotEmpty(String),
    /// A database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A file of the data directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// One module with its twin.
struct ModuleCopy {
    record: ModuleRecord,
    twin: Option<Twin>,
    session: Vec<String>,
}

/// One device with everything that hangs off it.
struct DeviceCopy {
    record: DeviceRecord,
    twin: Option<Twin>,
    deployment: Option<Value>,
    /// What automatic configurations gave it, so that the new hub's first evaluation finds it as it was.
    assignment: Option<Assignment>,
    session: Vec<String>,
    c2d: Vec<Value>,
    modules: Vec<ModuleCopy>,
}

/// Everything copied, read from the SQLite hub in one view.
#[derive(Default)]
struct Snapshot {
    devices: Vec<DeviceCopy>,
    configurations: Vec<Configuration>,
    jobs: Vec<(StoredJob, Vec<JobDevice>)>,
    /// The deployments' rollouts (their state, without the lease: the new hub takes it).
    rollouts: Vec<Rollout>,
    policies: Vec<AccessPolicy>,
    consumer_groups: Vec<String>,
    ca_certificates: Vec<crate::x509_auth::CaRecord>,
    event_hub: Option<EventHubRecord>,
    /// The provisioning service's ID scope (devices carry it), enrollments, groups and registration records.
    id_scope: Option<Vec<u8>>,
    enrollments: Vec<IndividualEnrollment>,
    enrollment_groups: Vec<EnrollmentGroup>,
    registrations: Vec<RegistrationRecord>,
}

fn read_snapshot(tables: &mut dyn Tables) -> Result<Snapshot, StorageError> {
    let mut snapshot = Snapshot {
        policies: tables.policies()?,
        consumer_groups: tables.consumer_groups()?,
        ca_certificates: tables.ca_certificates()?,
        event_hub: tables.event_hub()?,
        configurations: tables.configurations()?,
        rollouts: tables.rollouts()?,
        id_scope: tables.setting(crate::provisioning::ID_SCOPE_SETTING)?,
        enrollments: tables.individual_enrollments()?,
        enrollment_groups: tables.enrollment_groups()?,
        registrations: tables.registrations()?,
        ..Snapshot::default()
    };
    for job in tables.jobs()? {
        let devices = tables.job_devices(&job.record.job_id)?;
        snapshot.jobs.push((job, devices));
    }
    for record in tables.devices()? {
        let id = record.device_id.clone();
        let mut modules = Vec::new();
        for module in tables.modules(&id)? {
            let twin = tables.twin(&id, Some(&module.module_id))?;
            let session = tables.session(&format!("{id}/{}", module.module_id))?;
            modules.push(ModuleCopy {
                record: module,
                twin,
                session,
            });
        }
        snapshot.devices.push(DeviceCopy {
            twin: tables.twin(&id, None)?,
            deployment: tables.deployment(&id)?,
            assignment: tables.assignment(&id)?,
            session: tables.session(id.as_str())?,
            c2d: tables
                .pending_c2d(&id)?
                .into_iter()
                .map(|(_, message)| message)
                .collect(),
            modules,
            record,
        });
    }
    Ok(snapshot)
}

/// What makes `tables` not empty, if anything: a device, a policy, the Event Hub record or a setting the hub
/// writes when it first opens a database.
fn occupied(tables: &mut dyn Tables) -> Result<Option<String>, StorageError> {
    if let Some(device) = tables.devices()?.first() {
        return Ok(Some(format!(
            "it has devices, {} among them",
            device.device_id
        )));
    }
    if !tables.policies()?.is_empty() {
        return Ok(Some("it has shared access policies".into()));
    }
    for setting in [POLICIES_CREATED, CA_SETTING] {
        if tables.setting(setting)?.is_some() {
            return Ok(Some(format!("it has the hub setting {setting}")));
        }
    }
    if tables.event_hub()?.is_some() {
        return Ok(Some("it has an Event Hub record".into()));
    }
    Ok(None)
}

fn read_file(path: &Path) -> Result<Option<String>, MigrateError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(MigrateError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The CA files of `data_dir`, as the shared identity stores them.
fn read_ca(data_dir: &Path) -> Result<StoredCa, MigrateError> {
    let (Some(bundle), Some(key)) = (
        read_file(&data_dir.join("ca.pem"))?,
        read_file(&data_dir.join("ca.key"))?,
    ) else {
        return Err(MigrateError::NoCa(data_dir.to_owned()));
    };
    Ok(StoredCa {
        bundle,
        key,
        cross: read_file(&data_dir.join("ca-cross.pem"))?,
    })
}

/// Copies the SQLite hub of `data_dir` into `target`, in one transaction, refusing a target that is not empty
/// (nothing is changed then). The hub of `data_dir` must not be running.
pub fn migrate(data_dir: &Path, target: &dyn Engine) -> Result<MigrationReport, MigrateError> {
    let database = data_dir.join(DATABASE_FILE);
    if !database.is_file() {
        return Err(MigrateError::NoHub(data_dir.to_owned()));
    }
    let ca = read_ca(data_dir)?;
    let ca = serde_json::to_vec(&ca).map_err(StorageError::from)?;
    let source = SqliteEngine::open(&database)?;
    let mut snapshot = None;
    source.read(&mut |tables| {
        snapshot = Some(read_snapshot(tables)?);
        Ok(())
    })?;
    let snapshot =
        snapshot.ok_or_else(|| StorageError::Engine("the SQLite hub could not be read".into()))?;
    drop(source);
    transaction(target, |tables| {
        if let Some(why) = occupied(tables)? {
            return Err(MigrateError::NotEmpty(why));
        }
        write_snapshot(tables, &snapshot, &ca)
    })
}

fn write_snapshot(
    tables: &mut dyn Tables,
    snapshot: &Snapshot,
    ca: &[u8],
) -> Result<MigrationReport, MigrateError> {
    let mut report = MigrationReport::default();
    for policy in &snapshot.policies {
        tables.put_policy(policy)?;
        report.policies += 1;
    }
    // The marker a starting hub checks before creating the default policies (see `Hub::with_engine`).
    tables.put_setting(POLICIES_CREATED, b"1", false)?;
    report.ca = tables.put_setting(CA_SETTING, ca, false)?;
    if let Some(record) = &snapshot.event_hub {
        tables.create_event_hub(record)?;
        report.event_hub = true;
    }
    for configuration in &snapshot.configurations {
        tables.put_configuration(configuration)?;
        report.configurations += 1;
    }
    for (job, devices) in &snapshot.jobs {
        let id = &job.record.job_id;
        tables.create_job(job)?;
        let ids: Vec<String> = devices.iter().map(|d| d.device_id.clone()).collect();
        tables.add_job_devices(id, &ids)?;
        for device in devices {
            tables.set_job_device(id, device)?;
        }
        report.jobs += 1;
    }
    for rollout in &snapshot.rollouts {
        tables.put_rollout(rollout)?;
    }
    if let Some(scope) = &snapshot.id_scope {
        tables.put_setting(crate::provisioning::ID_SCOPE_SETTING, scope, false)?;
    }
    for enrollment in &snapshot.enrollments {
        tables.put_individual_enrollment(enrollment)?;
    }
    for group in &snapshot.enrollment_groups {
        tables.put_enrollment_group(group)?;
    }
    for record in &snapshot.registrations {
        tables.put_registration(record)?;
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    for group in &snapshot.consumer_groups {
        if tables.create_consumer_group(group, now_ms)? {
            report.consumer_groups += 1;
        }
    }
    for ca in &snapshot.ca_certificates {
        if tables.add_ca_certificate(ca)? {
            report.ca_certificates += 1;
        }
    }
    for device in &snapshot.devices {
        let id: &DeviceId = &device.record.device_id;
        tables.put_device(&device.record)?;
        report.devices += 1;
        if let Some(twin) = &device.twin {
            tables.put_twin(id, None, twin)?;
            report.twins += 1;
        }
        if let Some(manifest) = &device.deployment {
            tables.put_deployment(id, manifest)?;
            report.deployments += 1;
        }
        if let Some(assignment) = &device.assignment {
            tables.put_assignment(id, assignment)?;
        }
        if !device.session.is_empty() {
            tables.put_session(id.as_str(), &device.session)?;
            report.sessions += 1;
        }
        for module in &device.modules {
            let module_id: &ModuleId = &module.record.module_id;
            tables.put_module(&module.record)?;
            report.modules += 1;
            if let Some(twin) = &module.twin {
                tables.put_twin(id, Some(module_id), twin)?;
                report.twins += 1;
            }
            if !module.session.is_empty() {
                tables.put_session(&format!("{id}/{module_id}"), &module.session)?;
                report.sessions += 1;
            }
        }
        for message in &device.c2d {
            tables.enqueue_c2d(id, message)?;
            report.c2d_messages += 1;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data directory with a hub (one device) and a CA.
    fn sqlite_hub() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let engine = SqliteEngine::open(&dir.path().join(DATABASE_FILE)).unwrap();
        crate::Hub::with_engine(
            std::sync::Arc::new(engine),
            "localhost",
            &crate::eventhub::StreamSettings::default(),
        )
        .unwrap();
        let engine = SqliteEngine::open(&dir.path().join(DATABASE_FILE)).unwrap();
        let record = DeviceRecord {
            device_id: DeviceId::new("d1").unwrap(),
            generation_id: "g1".into(),
            etag_counter: 7,
            status: crate::identity::IdentityStatus::Enabled,
            status_reason: None,
            status_updated: chrono::Utc::now(),
            credentials: crate::identity::Credentials::sas(None, None),
            iot_edge: false,
            device_scope: None,
            parent_scopes: Vec::new(),
        };
        transaction(&engine, |t| t.put_device(&record)).unwrap();
        outpost_pki::CertificateAuthority::load_or_create(dir.path(), "Outpost hub CA").unwrap();
        dir
    }

    #[test]
    fn a_hub_is_copied_once_and_a_non_empty_target_is_left_alone() {
        let hub = sqlite_hub();
        let target = SqliteEngine::in_memory().unwrap();
        let report = migrate(hub.path(), &target).unwrap();
        assert_eq!((report.devices, report.policies), (1, 5));
        assert!(report.ca && report.event_hub);
        let copied = transaction(&target, |t| {
            Ok::<_, StorageError>((t.devices()?, t.setting(CA_SETTING)?))
        })
        .unwrap();
        assert_eq!(copied.0.len(), 1);
        assert_eq!(copied.0[0].etag_counter, 7);
        let ca: StoredCa = serde_json::from_slice(&copied.1.unwrap()).unwrap();
        assert_eq!(
            ca.bundle,
            std::fs::read_to_string(hub.path().join("ca.pem")).unwrap()
        );

        assert!(matches!(
            migrate(hub.path(), &target),
            Err(MigrateError::NotEmpty(_))
        ));
        // A target holding only a setting of the hub is not empty either, and is not written to.
        let other = SqliteEngine::in_memory().unwrap();
        transaction(&other, |t| t.put_setting(POLICIES_CREATED, b"1", false)).unwrap();
        assert!(matches!(
            migrate(hub.path(), &other),
            Err(MigrateError::NotEmpty(_))
        ));
        let written = transaction(&other, |t| {
            Ok::<_, StorageError>((
                t.devices()?.len(),
                t.policies()?.len(),
                t.setting(CA_SETTING)?,
            ))
        })
        .unwrap();
        assert_eq!(written, (0, 0, None));
    }

    #[test]
    fn a_hub_without_its_ca_is_refused() {
        let hub = sqlite_hub();
        std::fs::remove_file(hub.path().join("ca.key")).unwrap();
        let target = SqliteEngine::in_memory().unwrap();
        assert!(matches!(
            migrate(hub.path(), &target),
            Err(MigrateError::NoCa(_))
        ));
    }

    #[test]
    fn a_directory_without_a_hub_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = SqliteEngine::in_memory().unwrap();
        assert!(matches!(
            migrate(dir.path(), &target),
            Err(MigrateError::NoHub(_))
        ));
        assert!(!dir.path().join(DATABASE_FILE).exists());
    }
}
