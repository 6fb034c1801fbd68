//! Several hubs on one PostgreSQL database are replicas of one hub: one identity (policies with their keys, the
//! CA, the server certificate), and a bad or lost database is a clear error, not a hang. A real, throwaway
//! PostgreSQL (`scripts/postgres.sh`); without its binaries the tests fail under `CI=true` and skip otherwise.

mod pg_server;

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use outpost_hub::registry::{DeviceSpec, Precondition};
use outpost_hub::server::{CertificateLifetimes, HttpsLimits, DEFAULT_SESSION_EXPIRY};
use outpost_hub::{HubConfig, RunningHub};
use pg_server::Server;

fn config(data_dir: &Path, database: &str) -> HubConfig {
    HubConfig {
        data_dir: data_dir.to_owned(),
        database: Some(database.to_owned()),
        host_name: "localhost".into(),
        bind: IpAddr::from([127, 0, 0, 1]),
        mqtt_port: 0,
        https_port: 0,
        amqp_port: None,
        event_retention: outpost_hub::messaging::EventRetention::default(),
        stream: outpost_hub::eventhub::StreamSettings::default(),
        https_limits: HttpsLimits::default(),
        session_expiry: DEFAULT_SESSION_EXPIRY,
        metrics_bind: None,
        certificates: CertificateLifetimes::default(),
    }
}

fn keys(hub: &outpost_hub::Hub) -> Vec<(String, String, String)> {
    hub.policies()
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.primary_key, p.secondary_key))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_together_share_policies_ca_and_server_certificate() {
    let Some(server) = Server::start() else {
        return;
    };
    let url = server.database("identity");
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a_config, b_config) = (config(a_dir.path(), &url), config(b_dir.path(), &url));
    // Started at once: both find an empty database, exactly one identity must come out.
    let (a, b) = tokio::join!(RunningHub::start(&a_config), RunningHub::start(&b_config));
    let (a, b) = (a.expect("replica A starts"), b.expect("replica B starts"));

    let policies = keys(&a.hub);
    assert_eq!(policies.len(), 5, "the default policies");
    assert_eq!(policies, keys(&b.hub), "both replicas accept the same keys");
    let file = |dir: &Path, name: &str| std::fs::read(dir.join(name)).unwrap();
    assert_eq!(file(a_dir.path(), "ca.pem"), file(b_dir.path(), "ca.pem"));
    assert_eq!(file(a_dir.path(), "ca.key"), file(b_dir.path(), "ca.key"));
    assert_eq!(
        file(a_dir.path(), "server.pem"),
        file(b_dir.path(), "server.pem"),
        "both present the server certificate stored in the database"
    );

    // What one replica writes, the other reads.
    a.hub
        .put_device(
            &DeviceSpec {
                device_id: "shared1".into(),
                ..DeviceSpec::default()
            },
            &Precondition::CreateOnly,
        )
        .await
        .unwrap();
    assert_eq!(
        b.hub.device("shared1").await.unwrap().credentials,
        a.hub.device("shared1").await.unwrap().credentials
    );

    // A third replica started later loads the same identity into its own data directory.
    let c_dir = tempfile::tempdir().unwrap();
    let c = RunningHub::start(&config(c_dir.path(), &url))
        .await
        .unwrap();
    assert_eq!(keys(&c.hub), policies);
    assert_eq!(file(a_dir.path(), "ca.pem"), file(c_dir.path(), "ca.pem"));
    for running in [a, b, c] {
        running.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_fails_the_start_within_seconds() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let Err(error) = RunningHub::start(&config(
        dir.path(),
        &format!("postgres://outpost@127.0.0.1:{port}/outpost"),
    ))
    .await
    else {
        panic!("a hub started on a closed port");
    };
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let text = format!("{error:#}");
    assert!(
        text.contains("--database") && text.contains(&port.to_string()),
        "{text}"
    );

    let Err(error) = RunningHub::start(&config(dir.path(), "postgres://[nonsense")).await else {
        panic!("a hub started on a malformed URL");
    };
    assert!(
        format!("{error:#}").contains("bad database URL"),
        "{error:#}"
    );
}

/// `outpost hub serve --database` with a wrong URL exits non-zero at once, saying why. Runs the CLI binary built
/// in this workspace's target directory (`cargo build -p outpost-cli`); skipped with a message when it is not
/// built, or too old to know the flag.
#[test]
fn the_cli_refuses_a_bad_database_at_start() {
    let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/outpost");
    if !binary.exists() {
        eprintln!("skipped: {} is not built", binary.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let started = Instant::now();
    let output = std::process::Command::new(&binary)
        .args(["hub", "serve", "--data-dir"])
        .arg(dir.path())
        .args([
            "--https-port",
            "0",
            "--mqtt-port",
            "0",
            "--amqp-port",
            "0",
            "--database",
        ])
        .arg(format!("postgres://outpost@127.0.0.1:{port}/outpost"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("unexpected argument '--database'") {
        eprintln!("skipped: {} predates --database", binary.display());
        return;
    }
    assert!(!output.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(stderr.contains("database"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_answers_503_and_the_hub_recovers_when_it_returns() {
    let Some(server) = Server::start() else {
        return;
    };
    let url = server.database("lost");
    let dir = tempfile::tempdir().unwrap();
    let running = RunningHub::start(&config(dir.path(), &url)).await.unwrap();
    let spec = |id: &str| DeviceSpec {
        device_id: id.into(),
        ..DeviceSpec::default()
    };
    running
        .hub
        .put_device(&spec("before"), &Precondition::CreateOnly)
        .await
        .unwrap();

    server.run("stop");
    let write = running
        .hub
        .put_device(&spec("during"), &Precondition::CreateOnly)
        .await
        .expect_err("no database, no write");
    assert_eq!(write.status(), 503, "{write}");
    let read = running
        .hub
        .device("before")
        .await
        .expect_err("no database, no read");
    assert_eq!(read.status(), 503, "{read}");

    server.run("start");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match running
            .hub
            .put_device(&spec("after"), &Precondition::CreateOnly)
            .await
        {
            Ok(_) => break,
            Err(error) if Instant::now() < deadline => {
                assert_eq!(error.status(), 503, "{error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("the hub did not recover: {error}"),
        }
    }
    assert!(running.hub.device("before").await.is_ok());
    running.shutdown().await;
}
