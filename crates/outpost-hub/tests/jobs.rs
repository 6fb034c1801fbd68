//! Jobs end to end on a hub: a twin job over the devices a tag selects, the refusals that store nothing, a
//! scheduled job that outlives a hub restart, and a job interrupted mid-way that the restarted hub resumes
//! without repeating the devices already done; and the lease that lets one replica alone run a job, on SQLite
//! and on a real, throwaway PostgreSQL (`scripts/postgres.sh`; skipped without its binaries unless `CI=true`).

mod fleet_devices;
mod pg_server;

use fleet_devices::device_with_tags as device;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use outpost_hub::eventhub::StreamSettings;
use outpost_hub::jobs::driver::{self, JobSettings};
use outpost_hub::jobs::model::{
    DeviceJobStatistics, DeviceOutcome, JobDevice, JobRecord, JobStatus, StoredJob,
};

use outpost_hub::server::{CertificateLifetimes, HttpsLimits, DEFAULT_SESSION_EXPIRY};
use outpost_hub::storage::postgres::PostgresEngine;
use outpost_hub::storage::sqlite::SqliteEngine;
use outpost_hub::storage::{transaction, Engine};
use outpost_hub::store::StorageError;
use outpost_hub::{Hub, HubConfig, HubError, RunningHub};
use serde_json::{json, Value};
use tokio::sync::watch;

fn config(data_dir: &Path) -> HubConfig {
    HubConfig {
        data_dir: data_dir.to_owned(),
        database: None,
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

fn twin_job(condition: &str, desired: &Value) -> Value {
    json!({
        "type": "scheduleUpdateTwin",
        "queryCondition": condition,
        "updateTwin": {"etag": "*", "properties": {"desired": desired}},
        "maxExecutionTimeInSeconds": 60,
    })
}

/// Waits until job `id` has ended.
async fn ended(hub: &Hub, id: &str) -> StoredJob {
    for _ in 0..200 {
        let job = hub.jobs().job(id).await.unwrap();
        if !job.status.is_active() {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not end: {:?}", hub.jobs().job(id).await);
}

async fn desired(hub: &Hub, id: &str) -> Value {
    let view = hub.twins().twin(id, None).await.unwrap();
    Value::Object(view.twin.desired().clone())
}

/// Runs the hub's job runner (as `RunningHub` does) until the returned sender says stop.
fn start_runner(hub: &Arc<Hub>) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = watch::channel(false);
    let settings = JobSettings {
        poll: Duration::from_millis(50),
        ..JobSettings::default()
    };
    let task = tokio::spawn(driver::run(hub.clone(), settings, stopped));
    (stop, task)
}

#[tokio::test]
async fn a_twin_job_updates_the_devices_a_tag_selects_and_no_others() {
    let hub = Arc::new(Hub::in_memory("hub.test").unwrap());
    device(&hub, "north-1", json!({"site": "north"})).await;
    device(&hub, "north-2", json!({"site": "north"})).await;
    device(&hub, "south-1", json!({"site": "south"})).await;
    let (stop, task) = start_runner(&hub);

    let created = hub
        .jobs()
        .create(
            "fan-on",
            &twin_job(
                "tags.site = 'north' AND deviceId IN ['north-1', 'north-2']",
                &json!({"fan": true}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(created.status, JobStatus::Queued);
    let job = ended(&hub, "fan-on").await;
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(
        job.statistics,
        DeviceJobStatistics {
            device_count: 2,
            succeeded_count: 2,
            ..DeviceJobStatistics::default()
        }
    );
    assert!(job.end_time.is_some());
    assert_eq!(desired(&hub, "north-1").await["fan"], json!(true));
    assert_eq!(desired(&hub, "north-2").await["fan"], json!(true));
    assert!(desired(&hub, "south-1").await.get("fan").is_none());
    let outcomes: Vec<DeviceOutcome> = hub
        .jobs()
        .devices("fan-on")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [DeviceOutcome::Succeeded, DeviceOutcome::Succeeded]
    );

    stop.send_replace(true);
    task.await.unwrap();
}

#[tokio::test]
async fn a_method_job_counts_offline_devices_as_failed() {
    let hub = Arc::new(Hub::in_memory("hub.test").unwrap());
    device(&hub, "sensor-1", json!({"kind": "sensor"})).await;
    let (stop, task) = start_runner(&hub);
    let body = json!({
        "type": "scheduleDeviceMethod",
        "queryCondition": "tags.kind = 'sensor'",
        "cloudToDeviceMethod": {"methodName": "reboot", "payload": null, "responseTimeoutInSeconds": 5},
    });
    hub.jobs().create("reboot", &body).await.unwrap();
    let job = ended(&hub, "reboot").await;
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.statistics.device_count, 1);
    assert_eq!(job.statistics.failed_count, 1);
    stop.send_replace(true);
    task.await.unwrap();
}

#[tokio::test]
async fn an_invalid_job_is_refused_and_nothing_is_stored() {
    let hub = Hub::in_memory("hub.test").unwrap();
    let refused = [
        twin_job("tags.site = ", &json!({"fan": true})),
        json!({"type": "scheduleDeviceMethod", "queryCondition": "tags.a = 1", "cloudToDeviceMethod": {"payload": 1}}),
        json!({"type": "export", "queryCondition": "tags.a = 1"}),
        json!({"type": "scheduleUpdateTwin", "updateTwin": {"tags": {"a": 1}}}),
        json!({"type": "scheduleUpdateTwin", "queryCondition": "tags.a = 1", "updateTwin": {}}),
        json!({"jobId": "other", "type": "scheduleUpdateTwin", "queryCondition": "tags.a = 1", "updateTwin": {"tags": {"a": 2}}}),
    ];
    for body in refused {
        let result = hub.jobs().create("job-1", &body).await;
        assert!(
            matches!(result, Err(HubError::ArgumentInvalid(_))),
            "{body}: {result:?}"
        );
    }
    let bad_id = hub
        .jobs()
        .create("no spaces", &twin_job("tags.a = 1", &json!({"x": 1})))
        .await;
    assert!(matches!(bad_id, Err(HubError::ArgumentInvalid(_))));
    assert!(hub.jobs().list(None, None).await.unwrap().is_empty());
    assert!(matches!(
        hub.jobs().job("job-1").await,
        Err(HubError::JobNotFound(_))
    ));
}

#[tokio::test]
async fn a_cancelled_scheduled_job_never_runs_and_jobs_list_by_type_and_status() {
    let hub = Arc::new(Hub::in_memory("hub.test").unwrap());
    device(&hub, "d1", json!({"site": "north"})).await;
    let (stop, task) = start_runner(&hub);
    let mut later = twin_job("tags.site = 'north'", &json!({"late": true}));
    later["startTime"] = (Utc::now() + chrono::Duration::seconds(1))
        .to_rfc3339()
        .into();
    let created = hub.jobs().create("later", &later).await.unwrap();
    assert_eq!(created.status, JobStatus::Scheduled);
    let again = hub.jobs().create("later", &later).await;
    assert!(matches!(again, Err(HubError::JobAlreadyExists(_))));
    let cancelled = hub.jobs().cancel("later").await.unwrap();
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    hub.jobs()
        .create(
            "now",
            &twin_job("tags.site = 'north'", &json!({"now": true})),
        )
        .await
        .unwrap();
    ended(&hub, "now").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(desired(&hub, "d1").await.get("late").is_none());
    let ids = |jobs: Vec<StoredJob>| -> Vec<String> {
        jobs.into_iter().map(|j| j.record.job_id).collect()
    };
    let completed = hub
        .jobs()
        .list(None, Some(JobStatus::Completed))
        .await
        .unwrap();
    assert_eq!(ids(completed), ["now"]);
    let cancelled = hub
        .jobs()
        .list(None, Some(JobStatus::Cancelled))
        .await
        .unwrap();
    assert_eq!(ids(cancelled), ["later"]);
    let methods = hub
        .jobs()
        .list(Some(outpost_hub::jobs::model::JobType::DeviceMethod), None)
        .await
        .unwrap();
    assert!(methods.is_empty());
    stop.send_replace(true);
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_job_outlives_a_hub_restart_and_runs_on_the_restarted_hub() {
    let dir = tempfile::tempdir().unwrap();
    let running = RunningHub::start(&config(dir.path())).await.unwrap();
    device(&running.hub, "d1", json!({"site": "north"})).await;
    let mut job = twin_job("tags.site = 'north'", &json!({"after": "restart"}));
    job["startTime"] = (Utc::now() + chrono::Duration::seconds(2))
        .to_rfc3339()
        .into();
    running.hub.jobs().create("soon", &job).await.unwrap();
    running.shutdown().await;

    let running = RunningHub::start(&config(dir.path())).await.unwrap();
    let ended = ended(&running.hub, "soon").await;
    assert_eq!(ended.status, JobStatus::Completed);
    assert_eq!(ended.statistics.succeeded_count, 1);
    assert_eq!(desired(&running.hub, "d1").await["after"], "restart");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_interrupted_mid_way_resumes_after_a_restart_without_repeating_the_devices_done() {
    let dir = tempfile::tempdir().unwrap();
    let devices = ["d1", "d2", "d3", "d4"];
    {
        // The hub without its runner: the job is stored, queued, and nothing runs it.
        let hub = Hub::open(dir.path(), "localhost").unwrap();
        for id in devices {
            device(&hub, id, json!({"site": "north"})).await;
        }
        hub.jobs()
            .create("resume", &twin_job("tags.site = 'north'", &json!({"v": 2})))
            .await
            .unwrap();
    }
    // What a runner that died mid-way leaves: the job running, d1 done, d2 failed, d3 in flight (pending),
    // d4 not started, and its lease (of a replica gone) lapsed.
    {
        let engine = SqliteEngine::open(&dir.path().join("hub.sqlite")).unwrap();
        let now = Utc::now().timestamp_millis();
        transaction(&engine, |t| {
            assert!(t.claim_job("resume", "dead-runner", now, now - 1)?);
            assert!(t.set_job_status("resume", JobStatus::Running, None, None)?);
            let ids: Vec<String> = devices.iter().map(|d| (*d).to_owned()).collect();
            t.add_job_devices("resume", &ids)?;
            for (id, outcome) in [
                ("d1", DeviceOutcome::Succeeded),
                ("d2", DeviceOutcome::Failed),
            ] {
                t.set_job_device(
                    "resume",
                    &JobDevice {
                        device_id: id.into(),
                        outcome,
                        result: None,
                    },
                )?;
            }
            Ok::<_, StorageError>(())
        })
        .unwrap();
    }

    let running = RunningHub::start(&config(dir.path())).await.unwrap();
    let job = ended(&running.hub, "resume").await;
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(
        job.statistics,
        DeviceJobStatistics {
            device_count: 4,
            succeeded_count: 3,
            failed_count: 1,
            ..DeviceJobStatistics::default()
        }
    );
    // d1 and d2 were not written again; d3 and d4 were.
    for id in ["d1", "d2"] {
        assert!(desired(&running.hub, id).await.get("v").is_none(), "{id}");
    }
    for id in ["d3", "d4"] {
        assert_eq!(desired(&running.hub, id).await["v"], 2, "{id}");
    }
    running.shutdown().await;
}

/// Two runners (`a` and `b`, each on its own engine over one database) claim one job: one lease at a time.
fn one_runner_holds_a_job_at_a_time(a: &dyn Engine, b: &dyn Engine) {
    let now = Utc::now();
    let record = JobRecord::from_request(
        "leased",
        &twin_job("tags.site = 'north'", &json!({"x": 1})),
        now,
    )
    .unwrap();
    let job = StoredJob {
        record,
        status: JobStatus::Queued,
        end_time: None,
        statistics: DeviceJobStatistics::default(),
        failure_reason: None,
    };
    let claim = |engine: &dyn Engine, owner: &str, now_ms: i64, until_ms: i64| {
        transaction(engine, |t| t.claim_job("leased", owner, now_ms, until_ms)).unwrap()
    };
    assert!(transaction(a, |t| t.create_job(&job)).unwrap());
    assert!(
        !transaction(b, |t| t.create_job(&job)).unwrap(),
        "one job per id"
    );
    let t0 = now.timestamp_millis();
    assert!(claim(a, "a", t0, t0 + 30_000));
    assert!(!claim(b, "b", t0 + 1_000, t0 + 31_000), "a's lease holds");
    assert!(claim(a, "a", t0 + 2_000, t0 + 32_000), "a renews its own");
    assert!(
        claim(b, "b", t0 + 32_000, t0 + 62_000),
        "a's lease lapsed: b takes over"
    );
    assert!(!claim(a, "a", t0 + 33_000, t0 + 63_000), "a lost it");
    transaction(b, |t| t.release_job("leased", "b")).unwrap();
    assert!(
        claim(a, "a", t0 + 34_000, t0 + 64_000),
        "a released lease is free at once"
    );
    let end = Some(t0 + 35_000);
    assert!(transaction(a, |t| t.set_job_status(
        "leased",
        JobStatus::Completed,
        end,
        None
    ))
    .unwrap());
    assert!(
        !transaction(b, |t| t.set_job_status(
            "leased",
            JobStatus::Cancelled,
            end,
            None
        ))
        .unwrap(),
        "a final status never changes"
    );
    assert!(
        !claim(b, "b", t0 + 99_000, t0 + 129_000),
        "an ended job is not claimed"
    );
}

#[test]
fn one_runner_holds_a_job_at_a_time_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.sqlite");
    let (a, b) = (
        SqliteEngine::open(&path).unwrap(),
        SqliteEngine::open(&path).unwrap(),
    );
    one_runner_holds_a_job_at_a_time(&a, &b);
}

#[test]
fn one_replica_holds_a_job_at_a_time_on_postgresql() {
    let Some(server) = pg_server::Server::start() else {
        return;
    };
    let url = server.database("job_lease");
    let a = PostgresEngine::connect(&url).unwrap();
    let b = PostgresEngine::connect(&url).unwrap();
    one_runner_holds_a_job_at_a_time(&a, &b);
}
