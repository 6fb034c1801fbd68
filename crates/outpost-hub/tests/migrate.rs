//! `outpost hub migrate`: a SQLite hub populated through the hub's API, copied into a real, throwaway PostgreSQL
//! (`scripts/postgres.sh`), reads the same on the PostgreSQL hub: identities and keys, twins with their versions
//! and etags, the deployment, queued cloud-to-device messages, the policies and the CA. A second migration into
//! the now non-empty database is refused and changes nothing. Without PostgreSQL's binaries the test fails under
//! `CI=true` and is skipped otherwise.

mod pg_server;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use outpost_core::{DeviceId, Identity, Message, ModuleId};
use outpost_hub::eventhub::StreamSettings;
use outpost_hub::jobs::model::StoredJob;
use outpost_hub::migrate::{migrate, MigrateError};
use outpost_hub::registry::{DeviceSpec, ModuleSpec, Precondition};
use outpost_hub::server::{CertificateLifetimes, HttpsLimits, DEFAULT_SESSION_EXPIRY};
use outpost_hub::storage::postgres::PostgresEngine;
use outpost_hub::storage::sqlite::SqliteEngine;
use outpost_hub::storage::{transaction, Engine};
use outpost_hub::store::StorageError;
use outpost_hub::twins::{twin_json, TwinWrite};
use outpost_hub::{Hub, HubConfig, RunningHub};
use pg_server::Server;
use serde_json::{json, Value};

fn config(data_dir: &Path, database: Option<&str>) -> HubConfig {
    HubConfig {
        data_dir: data_dir.to_owned(),
        database: database.map(str::to_owned),
        host_name: "localhost".into(),
        bind: IpAddr::from([127, 0, 0, 1]),
        mqtt_port: 0,
        https_port: 0,
        amqp_port: None,
        event_retention: outpost_hub::messaging::EventRetention::default(),
        stream: StreamSettings::default(),
        https_limits: HttpsLimits::default(),
        session_expiry: DEFAULT_SESSION_EXPIRY,
        metrics_bind: None,
        certificates: CertificateLifetimes::default(),
        provisioning: None,
    }
}

fn manifest() -> Value {
    json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {
            "schemaVersion": "1.1",
            "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25"}},
            "systemModules": {
                "edgeAgent": {"type": "docker", "settings": {"image": "agent:1", "createOptions": "{}"}},
                "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always", "settings": {"image": "hub:1", "createOptions": "{}"}}
            },
            "modules": {"sensor": {"version": "1.0", "type": "docker", "status": "running", "restartPolicy": "always",
                                    "settings": {"image": "localhost:5000/sensor:1", "createOptions": "{}"}}}
        }},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {"up": "FROM /messages/* INTO $upstream"},
                                             "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}},
        "sensor": {"properties.desired": {"SendInterval": 5}}
    }})
}

fn device(id: &str) -> DeviceSpec {
    DeviceSpec {
        device_id: id.into(),
        ..DeviceSpec::default()
    }
}

/// Fills a hub through its API: plain devices with twins written by the service and reported by the device, an
/// edge device with a deployment and modules, a module with its own twin, queued cloud-to-device messages.
async fn populate(hub: &Hub) {
    for id in ["sensor-1", "sensor-2", "sensor-3"] {
        hub.registry()
            .put_device(&device(id), &Precondition::CreateOnly)
            .await
            .unwrap();
        let write = TwinWrite::from_body(
            &json!({"tags": {"site": "north", "id": id},
                    "properties": {"desired": {"interval": 5, "mode": {"fast": true}}}}),
            false,
        )
        .unwrap();
        hub.twins()
            .write_twin(id, None, &write, &Precondition::Any)
            .await
            .unwrap();
        let identity = Identity::device(DeviceId::new(id).unwrap());
        hub.twins()
            .report(&identity, &json!({"temperature": 21.5, "firmware": "1.2"}))
            .await
            .unwrap();
        hub.twins()
            .report(&identity, &json!({"temperature": 22}))
            .await
            .unwrap();
    }
    hub.registry()
        .put_device(
            &DeviceSpec {
                iot_edge: true,
                ..device("edge-1")
            },
            &Precondition::CreateOnly,
        )
        .await
        .unwrap();
    hub.twins()
        .apply_configuration("edge-1", &manifest())
        .await
        .unwrap();
    for module in ["sensor", "filter"] {
        hub.registry()
            .put_module(
                ModuleSpec {
                    device_id: "edge-1".into(),
                    module_id: module.into(),
                    managed_by: Some("IotEdge".into()),
                    ..ModuleSpec::default()
                },
                &Precondition::CreateOnly,
            )
            .await
            .unwrap();
    }
    let module = Identity::module(
        DeviceId::new("edge-1").unwrap(),
        ModuleId::new("sensor").unwrap(),
    );
    hub.twins()
        .report(&module, &json!({"running": true}))
        .await
        .unwrap();
    // A job scheduled for tomorrow: it waits, on either hub, as it was.
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    hub.jobs()
        .create(
            "nightly",
            &json!({"type": "scheduleUpdateTwin", "queryCondition": "tags.site = 'north'",
                    "updateTwin": {"etag": "*", "properties": {"desired": {"interval": 60}}},
                    "startTime": tomorrow, "maxExecutionTimeInSeconds": 600}),
        )
        .await
        .unwrap();
    for n in 0..3 {
        let message = Message {
            body: format!("command {n}").into_bytes().into(),
            system: [("messageId".to_owned(), format!("m{n}"))].into(),
            properties: [("n".to_owned(), Some(n.to_string()))].into(),
        };
        hub.messaging()
            .send_c2d("sensor-2", &message)
            .await
            .unwrap();
    }
}

/// Everything the read checks compare, as the REST API would show it.
#[derive(Debug, PartialEq)]
struct Reads {
    devices: Vec<Value>,
    twins: Vec<Value>,
    policies: Vec<(String, String, String)>,
    c2d: Vec<Value>,
    deployment: Option<Value>,
    session: Vec<String>,
    consumer_groups: Vec<String>,
    partitions: u32,
    jobs: Vec<StoredJob>,
}

async fn reads(hub: &Hub, engine: &dyn Engine) -> Reads {
    let mut devices = Vec::new();
    let mut twins = Vec::new();
    for record in hub.registry().devices().await.unwrap() {
        let id = record.device_id.to_string();
        devices.push(serde_json::to_value(&record).unwrap());
        twins.push(twin_json(&hub.twins().twin(&id, None).await.unwrap()));
        for module in hub.registry().modules(&id).await.unwrap() {
            devices.push(serde_json::to_value(&module).unwrap());
            let twin = hub
                .twins()
                .twin(&id, Some(module.module_id.as_str()))
                .await
                .unwrap();
            twins.push(twin_json(&twin));
        }
    }
    let mut policies: Vec<_> = hub
        .policies()
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.primary_key, p.secondary_key))
        .collect();
    policies.sort();
    let (c2d, deployment, session, consumer_groups, partitions) = transaction(engine, |t| {
        let c2d = t
            .pending_c2d(&DeviceId::new("sensor-2").unwrap())?
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        Ok::<_, StorageError>((
            c2d,
            t.deployment(&DeviceId::new("edge-1").unwrap())?,
            t.session("sensor-1")?,
            t.consumer_groups()?,
            t.event_hub()?.map_or(0, |r| r.partitions),
        ))
    })
    .unwrap();
    let jobs = transaction(engine, |t| t.jobs()).unwrap();
    Reads {
        devices,
        twins,
        policies,
        c2d,
        deployment,
        session,
        consumer_groups,
        partitions,
        jobs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_hub_reads_the_same_on_postgresql_and_a_second_migration_is_refused() {
    let Some(server) = Server::start() else {
        return;
    };
    // A SQLite hub, run once (so that it has its CA), populated through its API, then stopped.
    let sqlite_dir = tempfile::tempdir().unwrap();
    let running = RunningHub::start(&config(sqlite_dir.path(), None))
        .await
        .unwrap();
    populate(&running.hub).await;
    running.shutdown().await;
    // What the API above cannot set without a device connecting: an MQTT session, a consumer group.
    {
        let engine = SqliteEngine::open(&sqlite_dir.path().join("hub.sqlite")).unwrap();
        transaction(&engine, |t| {
            t.put_session(
                "sensor-1",
                &["devices/sensor-1/messages/devicebound/#".into()],
            )?;
            t.create_consumer_group("analytics", 1)?;
            Ok::<_, StorageError>(())
        })
        .unwrap();
    }
    let before = {
        let engine: Arc<dyn Engine> =
            Arc::new(SqliteEngine::open(&sqlite_dir.path().join("hub.sqlite")).unwrap());
        let hub =
            Hub::with_engine(engine.clone(), "localhost", &StreamSettings::default()).unwrap();
        reads(&hub, &*engine).await
    };
    assert_eq!(
        before.devices.len(),
        8,
        "4 devices, the edge device's $edgeAgent and $edgeHub, 2 modules"
    );
    assert_eq!(before.c2d.len(), 3);
    assert!(before.deployment.is_some());

    // Migrated into an empty PostgreSQL database.
    let url = server.database("migrated");
    let target = PostgresEngine::connect(&url).unwrap();
    let report = migrate(sqlite_dir.path(), &target).unwrap();
    assert_eq!(
        (
            report.devices,
            report.modules,
            report.twins,
            report.deployments
        ),
        (4, 4, 8, 1)
    );
    assert_eq!(
        (report.policies, report.sessions, report.c2d_messages),
        (5, 1, 3)
    );
    assert_eq!(report.consumer_groups, 1);
    assert_eq!(report.jobs, 1);
    assert_eq!(before.jobs.len(), 1, "the scheduled job");
    assert!(report.event_hub && report.ca);
    drop(target);

    // A hub on PostgreSQL, in a new data directory: the same reads, the same keys, the same CA.
    let pg_dir = tempfile::tempdir().unwrap();
    let running = RunningHub::start(&config(pg_dir.path(), Some(&url)))
        .await
        .unwrap();
    let engine: Arc<dyn Engine> = Arc::new(PostgresEngine::connect(&url).unwrap());
    let after = reads(&running.hub, &*engine).await;
    assert_eq!(after, before);
    let twin = running.hub.twins().twin("sensor-1", None).await.unwrap();
    assert_eq!(
        twin.twin.reported_version(),
        3,
        "two reports after the first"
    );
    assert_eq!(twin.twin.desired_version(), 2, "one desired write");
    for name in ["ca.pem", "ca.key"] {
        assert_eq!(
            std::fs::read(pg_dir.path().join(name)).unwrap(),
            std::fs::read(sqlite_dir.path().join(name)).unwrap(),
            "{name}: devices trusting the SQLite hub's CA trust the PostgreSQL hub"
        );
    }
    // The devices' and modules' old keys authenticate.
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    for record in running.hub.registry().devices().await.unwrap() {
        let id = record.device_id.as_str();
        let key = record.credentials.keys()[0].to_owned();
        let token = outpost_core::sas::device_token("localhost", id, &key, expiry).unwrap();
        running
            .hub
            .authenticate_identity(&Identity::device(record.device_id.clone()), &token)
            .await
            .unwrap_or_else(|e| panic!("{id} authenticates with its old key: {e}"));
    }
    let module = running
        .hub
        .registry()
        .module("edge-1", "filter")
        .await
        .unwrap();
    let token = outpost_core::sas::module_token(
        "localhost",
        "edge-1",
        "filter",
        module.credentials.keys()[1],
        expiry,
    )
    .unwrap();
    running
        .hub
        .authenticate_identity(
            &Identity::module(module.device_id.clone(), module.module_id.clone()),
            &token,
        )
        .await
        .unwrap();
    // The service's old connection string works: the owner policy's key signs a token the hub accepts.
    let owner = before
        .policies
        .iter()
        .find(|p| p.0 == "iothubowner")
        .unwrap();
    let token =
        outpost_core::sas::service_token("localhost", "iothubowner", &owner.1, expiry).unwrap();
    running
        .hub
        .authorize_service(Some(&token), outpost_hub::identity::Right::RegistryWrite)
        .unwrap();
    running.shutdown().await;

    // A second migration into the now non-empty database is refused, and changes nothing.
    let target = PostgresEngine::connect(&url).unwrap();
    let refused = migrate(sqlite_dir.path(), &target);
    assert!(
        matches!(refused, Err(MigrateError::NotEmpty(_))),
        "{refused:?}"
    );
    let hub = Hub::with_engine(engine.clone(), "localhost", &StreamSettings::default()).unwrap();
    assert_eq!(
        reads(&hub, &*engine).await.c2d.len(),
        3,
        "no message queued twice"
    );
    assert_eq!(reads(&hub, &*engine).await, after);
}
