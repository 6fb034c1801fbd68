//! The router over a real log: what a message costs on disk, and records of the JSON form written before the
//! binary one read after the upgrade.

use outpost_core::{DeviceId, ModuleId};
use outpost_store::log::LogOptions;

use super::*;

fn sensor() -> Identity {
    Identity::module(
        DeviceId::new("edge1").unwrap(),
        ModuleId::new("sensor").unwrap(),
    )
}

fn router(dir: &std::path::Path) -> Router {
    let log = MessageLog::open(dir.join("log"), LogOptions::default()).unwrap();
    let router = Router::new("edge1", log);
    router
        .configure(&json!({
            "schemaVersion": "1.1",
            "routes": {"up": "FROM /messages/* INTO $upstream"},
            "storeAndForwardConfiguration": {"timeToLiveSecs": 7200},
        }))
        .unwrap();
    router
}

/// A router over a new log in `dir` with `routes` (name → route) in force instead of the default one.
fn router_with(dir: &std::path::Path, routes: &Value) -> Router {
    let router = router(dir);
    router
        .configure(&json!({"schemaVersion": "1.1", "routes": routes}))
        .unwrap();
    router
}

/// A message as a module sends it: 100 bytes of body, an output name and a message id.
fn message(n: usize) -> Message {
    let mut message = Message {
        body: vec![b'x'; 100].into(),
        ..Message::default()
    };
    message.system.insert("outputName".into(), "out1".into());
    message.system.insert("messageId".into(), format!("{n:08}"));
    message
}

/// Routes and stores a message from the sensor, durably.
async fn store(router: &Router, message: Message) {
    store_all(router, vec![message]).await;
}

/// The message ids queued for the filter module's `input`, in order.
fn ids_at(router: &Router, input: &str) -> Vec<String> {
    stored_at(router, input)
        .into_iter()
        .map(|stored| stored.message.system["messageId"].clone())
        .collect()
}

/// Routes and stores the messages of `batch` from the sensor, read together, durably.
async fn store_all(router: &Router, batch: Vec<Message>) {
    router
        .accept(&sensor(), batch)
        .await
        .unwrap()
        .durable()
        .await
        .unwrap();
}

/// What is queued for the filter module's `input`, in order.
fn stored_at(router: &Router, input: &str) -> Vec<Stored> {
    router
        .log()
        .endpoint(&format!("edge1/filter/{input}"))
        .next_batch(1000)
        .unwrap()
        .into_iter()
        .map(|d| Stored::decode(&d.payload).unwrap())
        .collect()
}

#[tokio::test]
async fn a_100_byte_message_takes_less_than_half_the_bytes_of_the_json_form() {
    const N: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path());
    for n in 0..N {
        store(&router, message(n)).await;
    }
    // The records' bytes in the segments (the segment written to also holds zeros ahead of them until closed).
    let binary = router.log.stats().bytes_on_disk as f64 / N as f64;
    // The same records as the JSON form wrote them, for comparison.
    let mut json_payloads = 0;
    let mut binary_payloads = 0;
    for d in router.upstream.next_batch(N).unwrap() {
        binary_payloads += d.payload.len();
        json_payloads += serde_json::to_vec(&Stored::decode(&d.payload).unwrap())
            .unwrap()
            .len();
    }
    let json = binary + (json_payloads - binary_payloads) as f64 / N as f64;
    println!("bytes on disk per 100-byte message: binary {binary:.1}, JSON form {json:.1}");
    assert!(binary < 250.0, "{binary}");
    assert!(binary * 2.0 < json + 60.0, "binary {binary}, JSON {json}");
}

#[tokio::test]
async fn records_of_the_json_form_are_read_after_the_upgrade_in_order_with_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What the edge hub wrote before the binary form: JSON payloads.
        let log = MessageLog::open(dir.path().join("log"), LogOptions::default()).unwrap();
        let old: Vec<Record> = (0..3)
            .map(|n| {
                let payload = serde_json::to_vec(&Stored {
                    client: "edge1/sensor".into(),
                    message: message(n),
                })
                .unwrap();
                Record::to(UPSTREAM, payload)
            })
            .collect();
        log.append(old).await.unwrap();
    }
    let router = router(dir.path());
    for n in 3..5 {
        store(&router, message(n)).await;
    }
    let batch = router.upstream_batch(10);
    let ids: Vec<&str> = batch
        .iter()
        .map(|(_, _, m)| m.system["messageId"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["00000000", "00000001", "00000002", "00000003", "00000004"]
    );
    for (_, client, message) in &batch {
        assert_eq!(client, "edge1/sensor");
        assert_eq!(message.body, vec![b'x'; 100]);
        assert_eq!(message.system["outputName"], "out1");
    }
    // The new ones carry what the router adds.
    assert_eq!(batch[4].2.system["connectionModuleId"], "sensor");
}

#[tokio::test]
async fn a_payload_that_does_not_decode_is_dead_lettered_not_handed_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path());
    router
        .log
        .append(vec![Record::to(
            UPSTREAM,
            vec![crate::edgehub::stored::FORMAT_V1, 0xff],
        )])
        .await
        .unwrap();
    store(&router, message(1)).await;
    let batch = router.upstream_batch(10);
    assert_eq!(batch.len(), 1);
    router.upstream_retry();
    assert_eq!(router.upstream_batch(10).len(), 1);
}

/// The link's `$upstream` loop sleeps until a message is stored for `$upstream`: it is woken by one (even
/// stored while it was busy, before it waited), and not by a message routed only to a module input.
#[tokio::test]
async fn a_message_for_upstream_wakes_the_upstream_loop_and_one_for_an_input_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let router = router_with(
        dir.path(),
        &json!({
            "up": "FROM /messages/modules/sensor/outputs/up INTO $upstream",
            "local": "FROM /messages/modules/sensor/outputs/local INTO BrokeredEndpoint(\"/modules/filter/inputs/in\")",
        }),
    );
    let long = std::time::Duration::from_secs(30);
    let short = std::time::Duration::from_millis(300);
    let output = |name: &str| {
        let mut message = message(0);
        message.system.insert("outputName".into(), name.into());
        message
    };

    let inputs = router
        .accept(&sensor(), vec![output("up")])
        .await
        .unwrap()
        .inputs;
    assert!(inputs.is_empty());
    let started = tokio::time::Instant::now();
    router.upstream_stored(long).await;
    assert!(
        started.elapsed() < long,
        "stored for $upstream: woken at once"
    );

    let inputs = router
        .accept(&sensor(), vec![output("local")])
        .await
        .unwrap()
        .inputs;
    assert_eq!(inputs.len(), 1);
    let started = tokio::time::Instant::now();
    router.upstream_stored(short).await;
    assert!(
        started.elapsed() >= short,
        "stored only for an input: not woken"
    );
}

/// The router matches a batch's messages against one source while their output stays the same: a batch whose
/// messages change output (and back) still routes each by its own output, in the batch's order.
#[tokio::test]
async fn a_batch_that_changes_output_routes_each_message_by_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let router = router_with(
        dir.path(),
        &json!({
            "a": "FROM /messages/modules/sensor/outputs/a INTO BrokeredEndpoint(\"/modules/filter/inputs/a\")",
            "b": "FROM /messages/modules/sensor/outputs/b INTO BrokeredEndpoint(\"/modules/filter/inputs/b\")",
            "none": "FROM /messages/modules/sensor/* INTO BrokeredEndpoint(\"/modules/filter/inputs/all\")",
        }),
    );
    let outputs = [
        Some("a"),
        Some("a"),
        Some("b"),
        None,
        Some("a"),
        Some("b"),
        Some("b"),
    ];
    let batch = outputs
        .iter()
        .enumerate()
        .map(|(n, output)| {
            let mut message = message(n);
            match output {
                Some(name) => message.system.insert("outputName".into(), (*name).into()),
                None => message.system.remove("outputName"),
            };
            message
        })
        .collect();
    store_all(&router, batch).await;

    let sent_on = |wanted: Option<&str>| -> Vec<String> {
        (0..outputs.len())
            .filter(|&n| outputs[n] == wanted)
            .map(|n| format!("{n:08}"))
            .collect()
    };
    assert_eq!(ids_at(&router, "a"), sent_on(Some("a")));
    assert_eq!(ids_at(&router, "b"), sent_on(Some("b")));
    // `/messages/modules/sensor/*` takes every message of the sensor, on an output or not.
    let all: Vec<String> = (0..outputs.len()).map(|n| format!("{n:08}")).collect();
    assert_eq!(ids_at(&router, "all"), all);
}

/// The records of a batch are encoded into shared buffers of at most 64 KiB: a batch larger than one reads back
/// message by message, each with its own body and id.
#[tokio::test]
async fn a_batch_larger_than_one_shared_buffer_reads_back_message_by_message() {
    let dir = tempfile::tempdir().unwrap();
    let router = router_with(
        dir.path(),
        &json!({"toFilter": "FROM /messages/modules/sensor/outputs/out1 INTO BrokeredEndpoint(\"/modules/filter/inputs/input1\")"}),
    );
    let count = 100;
    let batch = (0..count)
        .map(|n| {
            let mut message = message(n);
            message.body = vec![u8::try_from(n).unwrap(); 1500].into();
            message
        })
        .collect();
    store_all(&router, batch).await;

    let read = stored_at(&router, "input1");
    assert_eq!(read.len(), count);
    for (n, stored) in read.iter().enumerate() {
        assert_eq!(stored.message.system["messageId"], format!("{n:08}"));
        assert_eq!(
            &stored.message.body[..],
            &vec![u8::try_from(n).unwrap(); 1500][..]
        );
    }
}

/// The messages of a batch on one output share their targets only while no route has a condition: with one, each
/// message is matched by its own properties.
#[tokio::test]
async fn a_batch_on_one_output_is_matched_message_by_message_under_a_condition() {
    let dir = tempfile::tempdir().unwrap();
    let router = router_with(
        dir.path(),
        &json!({
            "every": "FROM /messages/modules/sensor/outputs/out1 INTO BrokeredEndpoint(\"/modules/filter/inputs/every\")",
            "alerts": "FROM /messages/modules/sensor/outputs/out1 WHERE alert = 'yes' INTO BrokeredEndpoint(\"/modules/filter/inputs/alerts\")",
        }),
    );
    let alerts = [false, true, false, false, true];
    let batch = alerts
        .iter()
        .enumerate()
        .map(|(n, alert)| {
            let mut message = message(n);
            if *alert {
                message
                    .properties
                    .insert("alert".into(), Some("yes".into()));
            }
            message
        })
        .collect();
    store_all(&router, batch).await;

    let all: Vec<String> = (0..alerts.len()).map(|n| format!("{n:08}")).collect();
    assert_eq!(ids_at(&router, "every"), all);
    assert_eq!(ids_at(&router, "alerts"), ["00000001", "00000004"]);
}

/// The router stamps who sent a message and when it arrived, over what its sender claimed, whether the routes in
/// force have conditions (then the stamps are in the message before its routes are matched, and a condition can
/// read them) or not (then they go straight into its record).
#[tokio::test]
async fn the_sender_and_arrival_are_stamped_over_what_the_sender_claimed() {
    let claimed = || {
        let mut message = message(0);
        message
            .system
            .insert("connectionDeviceId".into(), "someone-else".into());
        message
            .system
            .insert("enqueuedTime".into(), "2026-12-06T00:00:00+00:00".into());
        message
    };
    let stamped = |router: &Router| {
        let batch = router.upstream_batch(10);
        assert_eq!(batch.len(), 1, "routed once");
        batch[0].2.system.clone()
    };

    let dir = tempfile::tempdir().unwrap();
    let plain = router(dir.path());
    store(&plain, claimed()).await;
    let system = stamped(&plain);
    assert_eq!(system["connectionDeviceId"], "edge1");
    assert_eq!(system["connectionModuleId"], "sensor");
    // A time the message carries is kept.
    assert_eq!(system["enqueuedTime"], "2026-12-06T00:00:00+00:00");

    let dir = tempfile::tempdir().unwrap();
    let conditional = router_with(
        dir.path(),
        &json!({
            "mine": "FROM /messages/* WHERE $connectionDeviceId = 'edge1' AND $connectionModuleId = 'sensor' INTO $upstream",
            "claimed": "FROM /messages/* WHERE $connectionDeviceId = 'someone-else' INTO BrokeredEndpoint(\"/modules/filter/inputs/x\")",
        }),
    );
    let mut without_time = claimed();
    without_time.system.remove("enqueuedTime");
    store(&conditional, without_time).await;
    let system = stamped(&conditional);
    assert_eq!(system["connectionDeviceId"], "edge1");
    assert_eq!(system["connectionModuleId"], "sensor");
    assert!(
        chrono::DateTime::parse_from_rfc3339(&system["enqueuedTime"]).is_ok(),
        "stamped with the time it arrived: {:?}",
        system["enqueuedTime"]
    );
    let claimed_route = conditional.log().endpoint("edge1/filter/x");
    assert!(claimed_route.next_batch(10).unwrap().is_empty());
}
