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
        provisioning: None,
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
        .registry()
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
        b.hub
            .registry()
            .device("shared1")
            .await
            .unwrap()
            .credentials,
        a.hub
            .registry()
            .device("shared1")
            .await
            .unwrap()
            .credentials
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
        .registry()
        .put_device(&spec("before"), &Precondition::CreateOnly)
        .await
        .unwrap();

    server.run("stop");
    let write = running
        .hub
        .registry()
        .put_device(&spec("during"), &Precondition::CreateOnly)
        .await
        .expect_err("no database, no write");
    assert_eq!(write.status(), 503, "{write}");
    let read = running
        .hub
        .registry()
        .device("before")
        .await
        .expect_err("no database, no read");
    assert_eq!(read.status(), 503, "{read}");

    server.run("start");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match running
            .hub
            .registry()
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
    assert!(running.hub.registry().device("before").await.is_ok());
    running.shutdown().await;
}

/// A device connection made in-process through replica `hub`'s device operations, listening for everything.
async fn connect(
    hub: &std::sync::Arc<outpost_hub::Hub>,
    device: &str,
    connection: u64,
) -> outpost_mqtt::Inbox {
    use outpost_mqtt::{DeviceOperations as _, Feature, Outbox};
    let (outbox, inbox) = Outbox::new(connection);
    outbox.set_features(
        Feature::CloudToDevice.bit() | Feature::Methods.bit() | Feature::DesiredPatches.bit(),
    );
    outpost_hub::device_ops::HubDevices(hub.clone())
        .connected(&identity(device), outbox)
        .await;
    inbox
}

fn identity(device: &str) -> outpost_core::Identity {
    outpost_core::Identity::device(outpost_core::DeviceId::new(device).unwrap())
}

async fn next(inbox: &mut outpost_mqtt::Inbox) -> outpost_mqtt::Outgoing {
    tokio::time::timeout(Duration::from_secs(5), inbox.recv())
        .await
        .expect("a push within 5 s")
        .expect("the outbox lives")
        .expect("no overflow")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_methods_and_messages_made_through_one_replica_reach_a_device_on_another() {
    use outpost_hub::messaging::MethodCall;
    use outpost_hub::twins::TwinWrite;
    use outpost_mqtt::Outgoing;
    let Some(server) = Server::start() else {
        return;
    };
    let url = server.database("routing");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = Vec::new();
    for dir in &dirs {
        replicas.push(RunningHub::start(&config(dir.path(), &url)).await.unwrap());
    }
    let (a, b, c) = (&replicas[0].hub, &replicas[1].hub, &replicas[2].hub);
    b.registry()
        .put_device(
            &DeviceSpec {
                device_id: "roamer".into(),
                ..DeviceSpec::default()
            },
            &Precondition::CreateOnly,
        )
        .await
        .unwrap();
    let mut on_a = connect(a, "roamer", 1).await;
    // The connection is recorded by A's sending thread: wait until B can see where it is.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A desired patch made through B.
    let started = Instant::now();
    let patch = TwinWrite::from_body(
        &serde_json::json!({"properties": {"desired": {"x": 1}}}),
        false,
    )
    .unwrap();
    b.twins()
        .write_twin("roamer", None, &patch, &Precondition::Any)
        .await
        .unwrap();
    match next(&mut on_a).await {
        Outgoing::DesiredPatch { body } => assert_eq!(body["x"], 1, "{body}"),
        other => panic!("expected the desired patch, got {other:?}"),
    }
    eprintln!(
        "desired patch through B reached A in {:?}",
        started.elapsed()
    );

    // No fixed delay on the way (a listener that waited a tick after each notice took ~250 ms a patch):
    // 20 patches one after the other, each waited for on A, take well under 20 x 100 ms.
    let mut latencies = Vec::new();
    let started = Instant::now();
    for x in 2..22 {
        let sent = Instant::now();
        let patch = TwinWrite::from_body(
            &serde_json::json!({"properties": {"desired": {"x": x}}}),
            false,
        )
        .unwrap();
        b.twins()
            .write_twin("roamer", None, &patch, &Precondition::Any)
            .await
            .unwrap();
        match next(&mut on_a).await {
            Outgoing::DesiredPatch { body } => assert_eq!(body["x"], x, "{body}"),
            other => panic!("expected the desired patch, got {other:?}"),
        }
        latencies.push(sent.elapsed());
    }
    let total = started.elapsed();
    latencies.sort();
    eprintln!(
        "20 desired patches through B reached A in {total:?}: median {:?}, max {:?}",
        latencies[10], latencies[19]
    );
    assert!(
        total < Duration::from_secs(2),
        "20 cross-replica patches took {total:?}"
    );

    // A direct method made through B, answered by the device on A.
    let answering = {
        let a = a.clone();
        tokio::spawn(async move {
            match next(&mut on_a).await {
                Outgoing::MethodRequest { rid, method, .. } => {
                    assert_eq!(method, "reboot");
                    a.messaging().method_answered(
                        &identity("roamer"),
                        1,
                        &rid,
                        200,
                        br#"{"ok":true}"#.to_vec(),
                    );
                }
                other => panic!("expected the method, got {other:?}"),
            }
            on_a
        })
    };
    let (status, payload) = b
        .messaging()
        .invoke_method(
            "roamer",
            None,
            MethodCall {
                method: "reboot".into(),
                payload: serde_json::json!({}),
                response_timeout: Duration::from_secs(5),
                connect_timeout: Duration::ZERO,
            },
        )
        .await
        .expect("the method is answered through A");
    assert_eq!((status, payload), (200, serde_json::json!({"ok": true})));
    let mut on_a = answering.await.unwrap();

    // A cloud-to-device message sent through B.
    let message = outpost_core::Message {
        body: bytes::Bytes::from_static(b"hello"),
        ..outpost_core::Message::default()
    };
    b.messaging().send_c2d("roamer", &message).await.unwrap();
    match next(&mut on_a).await {
        Outgoing::CloudToDevice { message, .. } => assert_eq!(&message.body[..], b"hello"),
        other => panic!("expected the message, got {other:?}"),
    }

    // The same identity connecting through C closes A's connection.
    let _on_c = connect(c, "roamer", 2).await;
    assert!(
        matches!(next(&mut on_a).await, Outgoing::Close),
        "A closes its connection of the device"
    );

    // A device nobody holds: DeviceNotOnline, not a hang.
    b.registry()
        .put_device(
            &DeviceSpec {
                device_id: "absent".into(),
                ..DeviceSpec::default()
            },
            &Precondition::CreateOnly,
        )
        .await
        .unwrap();
    let error = b
        .messaging()
        .invoke_method(
            "absent",
            None,
            MethodCall {
                method: "m".into(),
                payload: serde_json::json!({}),
                response_timeout: Duration::from_secs(5),
                connect_timeout: Duration::ZERO,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(error.code().0, "DeviceNotOnline");
    for running in replicas {
        running.shutdown().await;
    }
}

/// Runs `work` with a connection of its own to the database at `url`, off the runtime (the blocking client
/// may not run on a tokio worker).
fn sql<T: Send + 'static>(
    url: &str,
    work: impl FnOnce(&mut postgres::Client) -> T + Send + 'static,
) -> T {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        work(&mut client)
    })
    .join()
    .unwrap()
}

/// Waits up to `within` for `check` to hold, every 100 ms.
async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check()
}

async fn create(hub: &outpost_hub::Hub, spec: DeviceSpec) {
    hub.registry()
        .put_device(&spec, &Precondition::CreateOnly)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_link_long_poll_on_one_replica_wakes_for_what_another_makes_for_its_clients() {
    use outpost_core::edge_link::{LinkEvent, LinkFeature, MethodResponse, PresenceClient};
    use outpost_hub::messaging::MethodCall;
    use outpost_hub::twins::TwinWrite;
    let Some(server) = Server::start() else {
        return;
    };
    let url = server.database("edge");
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a_running = RunningHub::start(&config(a_dir.path(), &url))
        .await
        .unwrap();
    let b_running = RunningHub::start(&config(b_dir.path(), &url))
        .await
        .unwrap();
    let (a, b) = (a_running.hub.clone(), b_running.hub.clone());
    create(
        &a,
        DeviceSpec {
            device_id: "edge1".into(),
            iot_edge: true,
            ..DeviceSpec::default()
        },
    )
    .await;
    create(
        &a,
        DeviceSpec {
            device_id: "leaf".into(),
            parent: Some("edge1".into()),
            ..DeviceSpec::default()
        },
    )
    .await;
    let edge = a.registry().device("edge1").await.unwrap();
    a.edge_presence(
        &edge,
        &[PresenceClient {
            id: "leaf".into(),
            features: vec![LinkFeature::Desired, LinkFeature::Methods, LinkFeature::C2d],
        }],
    )
    .await
    .unwrap();
    // The presence is recorded by A's sending thread: wait until B can see where the leaf is.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The edge's long poll on A (10 s) answers as soon as B makes something for the leaf.
    let poll = |a: std::sync::Arc<outpost_hub::Hub>, edge: outpost_hub::identity::DeviceRecord| {
        tokio::spawn(async move {
            let started = Instant::now();
            let events = a.edge_events(&edge, Duration::from_secs(10)).await.unwrap();
            (events, started.elapsed())
        })
    };
    let waiting = poll(a.clone(), edge.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let patch = TwinWrite::from_body(
        &serde_json::json!({"properties": {"desired": {"y": 7}}}),
        false,
    )
    .unwrap();
    b.twins()
        .write_twin("leaf", None, &patch, &Precondition::Any)
        .await
        .unwrap();
    let (events, waited) = waiting.await.unwrap();
    eprintln!("the link poll on A woke for B's desired patch after {waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert!(
        matches!(&events[..], [LinkEvent::Desired { client, body }] if client == "leaf" && body["y"] == 7),
        "{events:?}"
    );

    let waiting = poll(a.clone(), edge.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let message = outpost_core::Message {
        body: bytes::Bytes::from_static(b"to the leaf"),
        ..outpost_core::Message::default()
    };
    b.messaging().send_c2d("leaf", &message).await.unwrap();
    let (events, waited) = waiting.await.unwrap();
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert!(
        matches!(&events[..], [LinkEvent::C2d { client, message, .. }] if client == "leaf" && &message.body[..] == b"to the leaf"),
        "{events:?}"
    );

    // A method through B: routed to A, on the link, answered by the edge through A.
    let waiting = poll(a.clone(), edge.clone());
    let calling = {
        let b = b.clone();
        tokio::spawn(async move {
            b.messaging()
                .invoke_method(
                    "leaf",
                    None,
                    MethodCall {
                        method: "blink".into(),
                        payload: serde_json::json!({"n": 2}),
                        response_timeout: Duration::from_secs(5),
                        connect_timeout: Duration::ZERO,
                    },
                )
                .await
        })
    };
    let (events, waited) = waiting.await.unwrap();
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    let [LinkEvent::Method {
        client,
        rid,
        method,
        payload,
    }] = &events[..]
    else {
        panic!("expected the method on the link, got {events:?}");
    };
    assert_eq!((client.as_str(), method.as_str()), ("leaf", "blink"));
    assert_eq!(payload["n"], 2);
    a.edge_acks(
        &edge,
        &[],
        vec![MethodResponse {
            client: "leaf".into(),
            rid: rid.clone(),
            status: 201,
            payload: serde_json::json!({"blinked": true}),
        }],
    )
    .await
    .unwrap();
    let answer = calling.await.unwrap().expect("answered through A");
    assert_eq!(answer, (201, serde_json::json!({"blinked": true})));
    a_running.shutdown().await;
    b_running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_appended_through_one_replica_wake_long_polls_and_event_hub_readers_on_another() {
    let Some(server) = Server::start() else {
        return;
    };
    let url = server.database("events");
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a_running = RunningHub::start(&config(a_dir.path(), &url))
        .await
        .unwrap();
    let b_running = RunningHub::start(&config(b_dir.path(), &url))
        .await
        .unwrap();
    let (a, b) = (a_running.hub.clone(), b_running.hub.clone());
    create(
        &b,
        DeviceSpec {
            device_id: "sensor".into(),
            ..DeviceSpec::default()
        },
    )
    .await;
    let partition = outpost_hub::stream::partition_of("sensor", a.event_hub().partition_count);
    let head = a
        .partition_info(partition)
        .unwrap()
        .last_enqueued_sequence_number;
    let after = a.messaging().newest_event();
    let long_poll = {
        let a = a.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let events = a
                .messaging()
                .read_events(after, 10, Duration::from_secs(10))
                .await;
            (events, started.elapsed())
        })
    };
    let reader = {
        let a = a.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let events = a.wait_partition_events(partition, head, 10).await;
            (events, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let message = outpost_core::Message {
        body: bytes::Bytes::from_static(b"21.5"),
        ..outpost_core::Message::default()
    };
    b.messaging()
        .accept_telemetry(&identity("sensor"), &message)
        .await
        .unwrap();

    let (events, waited) = tokio::time::timeout(Duration::from_secs(5), long_poll)
        .await
        .expect("the long poll on A answers")
        .unwrap();
    eprintln!("A's /events long poll woke after {waited:?}");
    assert_eq!(events.unwrap().len(), 1);
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    let (events, waited) = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the Event Hub reader on A wakes")
        .unwrap();
    eprintln!("A's Event Hub reader woke after {waited:?}");
    let events = events.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].body, b"21.5");
    a_running.shutdown().await;
    b_running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connections_of_a_replica_whose_heartbeat_stopped_do_not_count_and_are_cleaned() {
    use outpost_hub::messaging::MethodCall;
    let Some(server) = Server::start() else {
        return;
    };
    let url = server.database("liveness");
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b_running = RunningHub::start(&config(b_dir.path(), &url))
        .await
        .unwrap();
    let b = b_running.hub.clone();
    create(
        &b,
        DeviceSpec {
            device_id: "ghost".into(),
            ..DeviceSpec::default()
        },
    )
    .await;
    // A replica SIGKILLed 20 s ago (past the 15 s) left the connection it held.
    sql(&url, |db| {
        db.batch_execute(
            "INSERT INTO replicas (id, last_seen) VALUES ('killed', now() - interval '20 seconds');
             INSERT INTO replica_connections (client_id, replica, connection) VALUES ('ghost', 'killed', 1);",
        )
        .unwrap();
    });
    let started = Instant::now();
    let error = b
        .messaging()
        .invoke_method(
            "ghost",
            None,
            MethodCall {
                method: "m".into(),
                payload: serde_json::json!({}),
                response_timeout: Duration::from_secs(5),
                connect_timeout: Duration::ZERO,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(error.code().0, "DeviceNotOnline", "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "not forwarded to the dead replica: {:?}",
        started.elapsed()
    );
    // B's next heartbeat deletes the dead replica with its rows.
    let rows = |url: String| {
        move || {
            sql(&url, |db| {
                db.query_one(
                    "SELECT (SELECT count(*) FROM replicas WHERE id = 'killed')
                          + (SELECT count(*) FROM replica_connections WHERE replica = 'killed')",
                    &[],
                )
                .unwrap()
                .get::<_, i64>(0)
            })
        }
    };
    let killed_rows = rows(url.clone());
    assert!(
        eventually(
            outpost_hub::replicas::HEARTBEAT + Duration::from_secs(3),
            || killed_rows() == 0
        )
        .await,
        "the dead replica's rows were not cleaned"
    );

    // A live replica taken for dead (say, its database was away for long) records its connections again at
    // its next heartbeat, and methods reach them.
    let a_running = RunningHub::start(&config(a_dir.path(), &url))
        .await
        .unwrap();
    let a = a_running.hub.clone();
    let mut on_a = connect(&a, "ghost", 9).await;
    let held = |url: String| {
        move || {
            sql(&url, |db| {
                db.query_one(
                    "SELECT count(*) FROM replica_connections WHERE client_id = 'ghost'",
                    &[],
                )
                .unwrap()
                .get::<_, i64>(0)
            })
        }
    };
    let ghost_rows = held(url.clone());
    assert!(eventually(Duration::from_secs(3), || ghost_rows() == 1).await);
    sql(&url, |db| {
        db.batch_execute(
            "WITH gone AS (DELETE FROM replica_connections WHERE client_id = 'ghost' RETURNING replica)
             DELETE FROM replicas WHERE id IN (SELECT replica FROM gone)",
        )
        .unwrap();
    });
    assert_eq!(ghost_rows(), 0);
    assert!(
        eventually(
            outpost_hub::replicas::HEARTBEAT + Duration::from_secs(3),
            || ghost_rows() == 1
        )
        .await,
        "A did not record its connection again"
    );
    let answering = {
        let a = a.clone();
        tokio::spawn(async move {
            match next(&mut on_a).await {
                outpost_mqtt::Outgoing::MethodRequest { rid, .. } => {
                    a.messaging()
                        .method_answered(&identity("ghost"), 9, &rid, 200, b"{}".to_vec());
                }
                other => panic!("expected the method, got {other:?}"),
            }
        })
    };
    let (status, _) = b
        .messaging()
        .invoke_method(
            "ghost",
            None,
            MethodCall {
                method: "m".into(),
                payload: serde_json::json!({}),
                response_timeout: Duration::from_secs(5),
                connect_timeout: Duration::ZERO,
            },
        )
        .await
        .expect("routed to A again");
    assert_eq!(status, 200);
    answering.await.unwrap();
    a_running.shutdown().await;
    b_running.shutdown().await;
}
