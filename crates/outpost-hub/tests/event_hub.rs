//! The event stream as an Event Hub: partitions, sequence numbers, positions, twin change events, consumer
//! groups and cloud-to-device feedback, as the AMQP head sees them through `ServiceBackend`.

use outpost_hub::storage::sqlite::SqliteEngine;
use outpost_hub::storage::transaction;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use outpost_amqp::{EventPosition, ServiceBackend, Value as AmqpValue};
use outpost_core::{DeviceId, Identity, Message, ModuleId};
use outpost_hub::eventhub::{HubService, StreamSettings};
use outpost_hub::messaging::EventRetention;
use outpost_hub::registry::{DeviceSpec, Precondition};
use outpost_hub::stream::partition_of;
use outpost_hub::twins::TwinWrite;
use outpost_hub::Hub;
use serde_json::{json, Value};

async fn add_device(hub: &Hub, id: &str) -> Identity {
    hub.registry()
        .put_device(
            &DeviceSpec {
                device_id: id.into(),
                ..DeviceSpec::default()
            },
            &Precondition::CreateOnly,
        )
        .await
        .unwrap();
    Identity::device(DeviceId::new(id).unwrap())
}

fn text(body: &str) -> Message {
    Message {
        body: body.as_bytes().to_vec().into(),
        ..Message::default()
    }
}

fn service(hub: Hub) -> HubService {
    HubService(Arc::new(hub))
}

/// Every event of a partition kept, from the first.
async fn partition(service: &HubService, partition: u32) -> Vec<outpost_amqp::Event> {
    if service.partition_info(partition).unwrap().is_empty {
        return Vec::new();
    }
    service.wait_events(partition, -1, 10_000).await.unwrap()
}

fn annotation<'a>(event: &'a outpost_amqp::Event, name: &str) -> Option<&'a AmqpValue> {
    event
        .annotations
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

fn string(value: Option<&AmqpValue>) -> Option<&str> {
    match value {
        Some(AmqpValue::String(s)) => Some(s),
        _ => None,
    }
}

#[test]
fn a_device_always_lands_in_the_same_partition_whatever_the_run() {
    // FNV-1a of the id: these figures must never change, or a restarted hub would move devices.
    assert_eq!(partition_of("sensor", 4), partition_of("sensor", 4));
    assert_eq!(partition_of("", 4), 0x811c_9dc5 % 4);
    let spread: std::collections::HashSet<u32> = (0..100)
        .map(|i| partition_of(&format!("device-{i}"), 4))
        .collect();
    assert_eq!(spread.len(), 4, "100 devices use every partition");
}

#[tokio::test]
async fn one_devices_messages_keep_their_order_in_one_partition_with_contiguous_sequence_numbers() {
    let hub = Hub::in_memory("hub.test").unwrap();
    let mut devices: Vec<Identity> = Vec::new();
    for i in 0..8 {
        devices.push(add_device(&hub, &format!("d{i}")).await);
    }
    for round in 0..5 {
        for device in &devices {
            hub.messaging()
                .accept_telemetry(device, &text(&format!("{}:{round}", device.device)))
                .await
                .unwrap();
        }
    }
    let service = service(hub);
    let info = service.event_hub();
    assert_eq!(info.partition_count, 4);
    let mut total = 0;
    for p in 0..4 {
        let events = partition(&service, p).await;
        total += events.len();
        let seqs: Vec<i64> = events.iter().map(|e| e.sequence_number).collect();
        assert_eq!(seqs, (0..events.len() as i64).collect::<Vec<_>>());
        assert!(events.windows(2).all(|w| w[0].offset < w[1].offset));
        for device in &devices {
            let bodies: Vec<String> = events
                .iter()
                .filter(|e| {
                    string(annotation(e, "iothub-connection-device-id"))
                        == Some(device.device.as_str())
                })
                .map(|e| String::from_utf8(e.body.clone()).unwrap())
                .collect();
            if !bodies.is_empty() {
                assert_eq!(p, partition_of(device.device.as_str(), 4));
                let expected: Vec<String> =
                    (0..5).map(|r| format!("{}:{r}", device.device)).collect();
                assert_eq!(bodies, expected);
            }
        }
    }
    assert_eq!(total, 40);
}

#[tokio::test]
async fn events_carry_the_body_properties_and_annotations_iot_hub_puts_on_them() {
    let hub = Hub::in_memory("hub.test").unwrap();
    let device = add_device(&hub, "sensor").await;
    let module = Identity::module(device.device.clone(), ModuleId::new("filter").unwrap());
    hub.registry()
        .put_module(
            outpost_hub::registry::ModuleSpec {
                device_id: "sensor".into(),
                module_id: "filter".into(),
                managed_by: None,
                ..outpost_hub::registry::ModuleSpec::default()
            },
            &Precondition::CreateOnly,
        )
        .await
        .unwrap();
    let message = Message {
        body: vec![0xff, 0x00, 0x01].into(),
        system: BTreeMap::from([
            ("messageId".to_owned(), "m-1".to_owned()),
            ("correlationId".to_owned(), "c-1".to_owned()),
            (
                "contentType".to_owned(),
                "application/octet-stream".to_owned(),
            ),
            ("contentEncoding".to_owned(), "binary".to_owned()),
        ]),
        properties: BTreeMap::from([("alert".to_owned(), Some("high".to_owned()))]),
    };
    hub.messaging()
        .accept_telemetry(&device, &message)
        .await
        .unwrap();
    hub.messaging()
        .accept_telemetry(&module, &text("from the module"))
        .await
        .unwrap();
    let service = service(hub);
    let events = partition(&service, partition_of("sensor", 4)).await;
    let [first, second] = events.as_slice() else {
        panic!("two events expected, got {events:?}");
    };
    assert_eq!(first.body, vec![0xff, 0x00, 0x01]);
    assert_eq!(first.message_id.as_deref(), Some("m-1"));
    assert_eq!(first.correlation_id.as_deref(), Some("c-1"));
    assert_eq!(
        first.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(first.content_encoding.as_deref(), Some("binary"));
    assert_eq!(
        first.application_properties,
        vec![("alert".to_owned(), AmqpValue::String("high".into()))]
    );
    assert_eq!(
        string(annotation(first, "iothub-message-source")),
        Some("Telemetry")
    );
    assert_eq!(
        string(annotation(first, "iothub-connection-auth-method")),
        Some(r#"{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#)
    );
    assert_eq!(
        annotation(first, "iothub-enqueuedtime"),
        Some(&AmqpValue::Timestamp(first.enqueued_time_ms))
    );
    assert!(annotation(first, "iothub-connection-module-id").is_none());
    assert_eq!(
        string(annotation(second, "iothub-connection-module-id")),
        Some("filter")
    );
    assert!(string(annotation(second, "iothub-connection-auth-method"))
        .is_some_and(|m| m.contains(r#""scope":"module""#)));
}

#[tokio::test]
async fn sequence_numbers_continue_after_everything_was_pruned_and_the_hub_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let sensor_partition = partition_of("sensor", 4);
    {
        let hub = Hub::open(dir.path(), "hub.test").unwrap();
        let sensor = add_device(&hub, "sensor").await;
        for i in 0..3 {
            hub.messaging()
                .accept_telemetry(&sensor, &text(&i.to_string()))
                .await
                .unwrap();
        }
        let all = EventRetention {
            max_age: Duration::ZERO,
            ..EventRetention::default()
        };
        hub.messaging()
            .prune_events(&all, Utc::now() + chrono::Duration::seconds(1))
            .await
            .unwrap();
        let info = hub.partition_info(sensor_partition).unwrap();
        assert!(info.is_empty);
        assert_eq!(info.last_enqueued_sequence_number, 2);
        assert_eq!(info.begin_sequence_number, 3);
    }
    let hub = Hub::open(dir.path(), "hub.test").unwrap();
    let sensor = Identity::device(DeviceId::new("sensor").unwrap());
    hub.messaging()
        .accept_telemetry(&sensor, &text("after"))
        .await
        .unwrap();
    let service = service(hub);
    let events = partition(&service, sensor_partition).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].sequence_number, 3);
    let info = service.partition_info(sensor_partition).unwrap();
    assert_eq!(
        (
            info.begin_sequence_number,
            info.last_enqueued_sequence_number
        ),
        (3, 3)
    );
    assert_eq!(info.last_enqueued_offset, events[0].offset);
}

#[tokio::test]
async fn positions_resolve_to_the_event_they_select() {
    let hub = Hub::in_memory("hub.test").unwrap();
    let sensor = add_device(&hub, "sensor").await;
    for i in 0..5 {
        hub.messaging()
            .accept_telemetry(&sensor, &text(&i.to_string()))
            .await
            .unwrap();
    }
    let service = service(hub);
    let p = partition_of("sensor", 4);
    let events = partition(&service, p).await;
    let resolve = |position| service.resolve_position(p, position).unwrap();
    assert_eq!(resolve(EventPosition::Earliest), -1);
    assert_eq!(resolve(EventPosition::Latest), 4);
    let offset = events[2].offset;
    assert_eq!(
        resolve(EventPosition::Offset {
            offset,
            inclusive: false
        }),
        2,
        "after the third event's offset: the fourth"
    );
    assert_eq!(
        resolve(EventPosition::Offset {
            offset,
            inclusive: true
        }),
        1
    );
    assert_eq!(
        resolve(EventPosition::SequenceNumber {
            sequence_number: 3,
            inclusive: true
        }),
        2
    );
    assert_eq!(
        resolve(EventPosition::SequenceNumber {
            sequence_number: 3,
            inclusive: false
        }),
        3
    );
    assert_eq!(
        resolve(EventPosition::EnqueuedTime {
            ms: events[0].enqueued_time_ms - 1
        }),
        -1
    );
    assert_eq!(
        resolve(EventPosition::EnqueuedTime {
            ms: events[4].enqueued_time_ms
        }),
        4,
        "nothing enqueued after the newest: only what comes"
    );
    let read = service.wait_events(p, 2, 1).await.unwrap();
    assert_eq!(read[0].sequence_number, 3);
    assert!(service
        .resolve_position(9, EventPosition::Earliest)
        .is_err());
}

#[tokio::test]
async fn a_waiting_reader_wakes_when_its_partition_gets_an_event() {
    let hub = Arc::new(Hub::in_memory("hub.test").unwrap());
    let sensor = add_device(&hub, "sensor").await;
    let p = partition_of("sensor", 4);
    let reader = {
        let service = HubService(hub.clone());
        tokio::spawn(async move { service.wait_events(p, -1, 10).await })
    };
    tokio::task::yield_now().await;
    assert!(!reader.is_finished());
    hub.messaging()
        .accept_telemetry(&sensor, &text("wake up"))
        .await
        .unwrap();
    let events = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the reader wakes")
        .unwrap()
        .unwrap();
    assert_eq!(events[0].body, b"wake up");
}

fn twin_changes(events: &[outpost_amqp::Event]) -> Vec<(BTreeMap<String, String>, Value)> {
    events
        .iter()
        .filter(|e| string(annotation(e, "iothub-message-source")) == Some("twinChangeEvents"))
        .map(|e| {
            let properties = e
                .application_properties
                .iter()
                .filter_map(|(k, v)| match v {
                    AmqpValue::String(s) => Some((k.clone(), s.clone())),
                    _ => None,
                })
                .collect();
            (properties, serde_json::from_slice(&e.body).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn twin_changes_append_twin_change_events_with_what_changed() {
    let hub = Hub::in_memory("myhub.example.net").unwrap();
    let sensor = add_device(&hub, "sensor").await;
    hub.twins()
        .report(&sensor, &json!({"temperature": 21}))
        .await
        .unwrap();
    hub.twins()
        .write_twin(
            "sensor",
            None,
            &TwinWrite {
                desired: Some(json!({"interval": 5})),
                tags: Some(json!({"site": "north"})),
                replace: false,
            },
            &Precondition::Any,
        )
        .await
        .unwrap();
    hub.twins()
        .write_twin(
            "sensor",
            None,
            &TwinWrite {
                desired: Some(json!({"only": true})),
                replace: true,
                ..TwinWrite::default()
            },
            &Precondition::Any,
        )
        .await
        .unwrap();
    let rest = hub
        .messaging()
        .read_events(0, 100, Duration::ZERO)
        .await
        .unwrap();
    assert!(rest.is_empty(), "GET /events shows telemetry only");
    assert_eq!(
        hub.messaging()
            .read_stream(0, 100, Duration::ZERO, true)
            .await
            .unwrap()
            .len(),
        3
    );
    let service = service(hub);
    let events = partition(&service, partition_of("sensor", 4)).await;
    let changes = twin_changes(&events);
    assert_eq!(changes.len(), 3);
    let (properties, body) = &changes[0];
    assert_eq!(properties["hubName"], "myhub");
    assert_eq!(properties["deviceId"], "sensor");
    assert_eq!(properties["opType"], "updateTwin");
    assert_eq!(
        properties["iothub-message-schema"],
        "twinChangeNotification"
    );
    assert!(!properties.contains_key("moduleId"));
    assert_eq!(
        body["properties"]["reported"],
        json!({"temperature": 21, "$version": 2})
    );
    assert!(body["version"].as_u64().is_some());
    assert_eq!(events[0].content_type.as_deref(), Some("application/json"));
    let (_, body) = &changes[1];
    assert_eq!(body["properties"]["desired"]["interval"], 5);
    assert_eq!(body["tags"], json!({"site": "north"}));
    let (properties, body) = &changes[2];
    assert_eq!(properties["opType"], "replaceTwin");
    assert_eq!(
        body["properties"]["desired"],
        json!({"only": true, "$version": 3})
    );
}

#[tokio::test]
async fn twin_change_events_can_be_turned_off() {
    let hub = Hub::in_memory_with(
        "hub.test",
        &StreamSettings {
            twin_change_events: false,
            ..StreamSettings::default()
        },
    )
    .unwrap();
    let sensor = add_device(&hub, "sensor").await;
    hub.twins()
        .report(&sensor, &json!({"temperature": 21}))
        .await
        .unwrap();
    assert!(hub
        .messaging()
        .read_stream(0, 100, Duration::ZERO, true)
        .await
        .unwrap()
        .is_empty());
}

#[test]
fn the_partition_count_is_fixed_when_the_hub_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let eight = StreamSettings {
        partitions: Some(8),
        ..StreamSettings::default()
    };
    drop(Hub::open_with(dir.path(), "hub.test", &eight).unwrap());
    let reopened = Hub::open(dir.path(), "hub.test").unwrap();
    assert_eq!(reopened.event_hub().partition_count, 8);
    drop(reopened);
    let four = StreamSettings {
        partitions: Some(4),
        ..StreamSettings::default()
    };
    let Err(error) = Hub::open_with(dir.path(), "hub.test", &four) else {
        panic!("a different partition count must be refused");
    };
    assert!(error.to_string().contains("8 partitions"), "{error}");
}

#[tokio::test]
async fn the_events_of_an_older_database_get_partitions_in_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.sqlite");
    {
        let db =
            outpost_store::Database::open(&path, &outpost_hub::store::MIGRATIONS[..2]).unwrap();
        let conn = db.lock();
        for (device, body) in [("a", "a0"), ("b", "b0"), ("a", "a1")] {
            let event = json!({"deviceId": device, "moduleId": null, "body": body,
                "properties": {}, "systemProperties": {}, "enqueuedTime": "2026-01-01T00:00:00Z"});
            conn.execute(
                "INSERT INTO events (enqueued_ms, bytes, event) VALUES (1, 1, ?1)",
                [event.to_string()],
            )
            .unwrap();
        }
    }
    let hub = Hub::open(dir.path(), "hub.test").unwrap();
    assert_eq!(
        hub.messaging()
            .read_events(0, 10, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        3,
        "the REST stream reads them as before"
    );
    let service = service(hub);
    let a = partition(&service, partition_of("a", 4)).await;
    let bodies: Vec<&[u8]> = a
        .iter()
        .filter(|e| string(annotation(e, "iothub-connection-device-id")) == Some("a"))
        .map(|e| e.body.as_slice())
        .collect();
    assert_eq!(bodies, vec![b"a0".as_slice(), b"a1".as_slice()]);
    let all: usize = futures_len(&service).await;
    assert_eq!(all, 3);
}

async fn futures_len(service: &HubService) -> usize {
    let mut total = 0;
    for p in 0..service.event_hub().partition_count {
        let events = partition(service, p).await;
        assert_eq!(
            events.iter().map(|e| e.sequence_number).collect::<Vec<_>>(),
            (0..events.len() as i64).collect::<Vec<_>>()
        );
        total += events.len();
    }
    total
}

#[tokio::test]
async fn consumer_groups_are_default_plus_the_created_ones() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::open(dir.path(), "hub.test").unwrap();
    assert!(hub.consumer_group_exists("$Default"));
    assert!(!hub.consumer_group_exists("analytics"));
    {
        // Another process (the CLI) on the same database.
        let engine = SqliteEngine::open(&dir.path().join("hub.sqlite")).unwrap();
        let created = transaction(&engine, |tables| {
            tables.create_consumer_group("analytics", 0)
        });
        assert!(created.unwrap());
    }
    assert!(
        hub.consumer_group_exists("analytics"),
        "seen while the hub runs"
    );
    assert_eq!(
        hub.consumer_groups().await.unwrap(),
        vec!["$Default", "analytics"]
    );
}

async fn next_feedback(service: &HubService) -> outpost_amqp::FeedbackBatch {
    tokio::time::timeout(Duration::from_secs(5), service.next_feedback())
        .await
        .expect("feedback arrives")
        .unwrap()
}

#[tokio::test]
async fn completed_and_expired_messages_that_asked_for_feedback_leave_feedback_records() {
    let hub = Arc::new(Hub::in_memory("hub.test").unwrap());
    let sensor = add_device(&hub, "sensor").await;
    let service = HubService(hub.clone());
    let c2d = |id: &str, ack: &str, expiry: Option<String>| {
        let mut system = BTreeMap::from([
            ("messageId".to_owned(), id.to_owned()),
            ("ack".to_owned(), ack.to_owned()),
        ]);
        if let Some(expiry) = expiry {
            system.insert("absolute-expiry-time".into(), expiry);
        }
        Message {
            body: bytes::Bytes::from_static(b"hi"),
            system,
            properties: BTreeMap::new(),
        }
    };
    let full = hub
        .messaging()
        .send_c2d("sensor", &c2d("full-1", "full", None))
        .await
        .unwrap();
    let negative = hub
        .messaging()
        .send_c2d("sensor", &c2d("neg-1", "negative", None))
        .await
        .unwrap();
    hub.messaging()
        .send_c2d(
            "sensor",
            &c2d("gone-1", "full", Some("2020-01-01T00:00:00.000Z".into())),
        )
        .await
        .unwrap();
    hub.messaging()
        .complete_c2d(&sensor, full.unsigned_abs())
        .await;
    hub.messaging()
        .complete_c2d(&sensor, negative.unsigned_abs())
        .await;

    let batch = next_feedback(&service).await;
    let records: Value = serde_json::from_slice(&batch.body).unwrap();
    assert_eq!(
        records.as_array().unwrap().len(),
        1,
        "negative-only: no Success"
    );
    assert_eq!(records[0]["originalMessageId"], "full-1");
    assert_eq!(records[0]["statusCode"], "Success");
    assert_eq!(records[0]["description"], "Success");
    assert_eq!(records[0]["deviceId"], "sensor");
    assert!(records[0]["deviceGenerationId"]
        .as_str()
        .is_some_and(|g| !g.is_empty()));
    service.complete_feedback(batch.lock_token).unwrap();

    assert_eq!(hub.messaging().expire_c2d(Utc::now()).await.unwrap(), 1);
    let batch = next_feedback(&service).await;
    let records: Value = serde_json::from_slice(&batch.body).unwrap();
    assert_eq!(records[0]["originalMessageId"], "gone-1");
    assert_eq!(records[0]["statusCode"], "Expired");
    service.complete_feedback(batch.lock_token).unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(200), service.next_feedback()).await;
    assert!(waiting.is_err(), "nothing left once completed");
}

#[tokio::test]
async fn a_feedback_batch_not_completed_stays_locked_for_others() {
    let hub = Arc::new(Hub::in_memory("hub.test").unwrap());
    let sensor = add_device(&hub, "sensor").await;
    let service = HubService(hub.clone());
    let message = Message {
        body: bytes::Bytes::from_static(b"hi"),
        system: BTreeMap::from([("ack".to_owned(), "positive".to_owned())]),
        properties: BTreeMap::new(),
    };
    let id = hub.messaging().send_c2d("sensor", &message).await.unwrap();
    hub.messaging()
        .complete_c2d(&sensor, id.unsigned_abs())
        .await;
    let _locked = next_feedback(&service).await;
    let again = tokio::time::timeout(Duration::from_millis(200), service.next_feedback()).await;
    assert!(
        again.is_err(),
        "a locked batch is not handed out twice at once"
    );
}

#[test]
fn tokens_of_policies_with_service_connect_are_granted_it() {
    let hub = Hub::in_memory("myhub.example.net").unwrap();
    let owner = hub.policy("iothubowner").unwrap().clone();
    let registry = hub.policy("registryRead").unwrap().clone();
    let expiry = Utc::now().timestamp().unsigned_abs() + 3600;
    let token = |resource: &str, policy: &outpost_hub::identity::AccessPolicy| {
        outpost_core::service_token(resource, &policy.name, &policy.primary_key, expiry).unwrap()
    };
    let grant = hub
        .authorize_amqp_token(
            "sb://myhub.example.net/myhub",
            &token("sb://myhub.example.net/myhub", &owner),
        )
        .unwrap();
    assert!(grant.service_connect);
    assert_eq!(grant.policy, "iothubowner");
    assert!(hub
        .authorize_amqp_token("myhub.example.net", &token("myhub.example.net", &owner))
        .is_ok());
    let read_only = hub
        .authorize_amqp_token("myhub.example.net", &token("myhub.example.net", &registry))
        .unwrap();
    assert!(!read_only.service_connect);
    assert!(hub
        .authorize_amqp_token("other.example.net", &token("other.example.net", &owner))
        .is_err());
    assert!(hub
        .authorize_amqp_plain(
            "iothubowner@sas.root.myhub",
            &token("myhub.example.net", &owner)
        )
        .is_ok());
    assert!(hub
        .authorize_amqp_plain("iothubowner", &owner.primary_key)
        .is_ok());
    assert!(hub.authorize_amqp_plain("iothubowner", "wrong").is_err());
}

#[tokio::test]
async fn a_module_twin_change_names_the_module() {
    let hub = Hub::in_memory("hub.test").unwrap();
    add_device(&hub, "sensor").await;
    hub.registry()
        .put_module(
            outpost_hub::registry::ModuleSpec {
                device_id: "sensor".into(),
                module_id: "filter".into(),
                managed_by: None,
                ..outpost_hub::registry::ModuleSpec::default()
            },
            &Precondition::CreateOnly,
        )
        .await
        .unwrap();
    let module = Identity::module(
        DeviceId::new("sensor").unwrap(),
        ModuleId::new("filter").unwrap(),
    );
    hub.twins()
        .report(&module, &json!({"ok": true}))
        .await
        .unwrap();
    let service = service(hub);
    let events = partition(&service, partition_of("sensor", 4)).await;
    let changes = twin_changes(&events);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].0["moduleId"], "filter");
    assert_eq!(
        string(annotation(&events[0], "iothub-connection-module-id")),
        Some("filter")
    );
    assert!(
        annotation(&events[0], "iothub-connection-auth-method").is_none(),
        "twin changes come from the hub, not a connection"
    );
}

#[test]
fn the_event_hub_is_named_after_the_first_label_of_the_host_name() {
    assert_eq!(
        outpost_hub::eventhub::event_hub_name("MyHub.azure-devices.net"),
        "myhub"
    );
    assert_eq!(
        outpost_hub::eventhub::event_hub_name("localhost"),
        "localhost"
    );
    assert_eq!(
        outpost_hub::eventhub::event_hub_name("127.0.0.7"),
        "outpost"
    );
}

#[tokio::test]
async fn offsets_and_times_resolve_within_their_partition_when_partitions_interleave() {
    let hub = Hub::in_memory("hub.test").unwrap();
    let (a, b) = ("d0", "d1");
    assert_ne!(partition_of(a, 4), partition_of(b, 4));
    let (da, db) = (add_device(&hub, a).await, add_device(&hub, b).await);
    for i in 0..3 {
        hub.messaging()
            .accept_telemetry(&da, &text(&format!("a{i}")))
            .await
            .unwrap();
        hub.messaging()
            .accept_telemetry(&db, &text(&format!("b{i}")))
            .await
            .unwrap();
    }
    let service = service(hub);
    let pa = partition_of(a, 4);
    let events = partition(&service, pa).await;
    let after_first = service
        .resolve_position(
            pa,
            EventPosition::Offset {
                offset: events[0].offset,
                inclusive: false,
            },
        )
        .unwrap();
    assert_eq!(
        after_first, 0,
        "the next event of the partition is its second"
    );
    let after_b_offset = service
        .resolve_position(
            pa,
            EventPosition::Offset {
                offset: events[0].offset + 1,
                inclusive: true,
            },
        )
        .unwrap();
    assert_eq!(
        after_b_offset, 0,
        "an offset of another partition selects the next event of this one"
    );
    let by_time = service
        .resolve_position(
            pa,
            EventPosition::EnqueuedTime {
                ms: events[1].enqueued_time_ms - 1,
            },
        )
        .unwrap();
    assert!(by_time <= 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_from_many_devices_at_once_shares_commits_and_every_message_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let devices = 40;
    {
        let hub = Arc::new(Hub::open(dir.path(), "hub.test").unwrap());
        let mut senders = Vec::new();
        for i in 0..devices {
            senders.push(add_device(&hub, &format!("device-{i}")).await);
        }
        let before = hub.storage_commits();
        let sent: Vec<_> = senders
            .into_iter()
            .map(|sender| {
                let hub = hub.clone();
                tokio::spawn(async move {
                    hub.messaging()
                        .accept_telemetry(&sender, &text(sender.device.as_str()))
                        .await
                })
            })
            .collect();
        for answer in sent {
            answer.await.unwrap().unwrap();
        }
        let commits = hub.storage_commits() - before;
        // Through the storage writer (its commits counted), and grouped: fewer commits than messages.
        assert!(
            (1..devices).contains(&commits),
            "{devices} messages sent at once took {commits} writer commits"
        );
    }
    // Every acknowledged message is on disk: a new hub over the same files has them all.
    let service = service(Hub::open(dir.path(), "hub.test").unwrap());
    let mut bodies = Vec::new();
    for p in 0..4 {
        bodies.extend(partition(&service, p).await.into_iter().map(|e| e.body));
    }
    bodies.sort();
    let mut expected: Vec<_> = (0..devices)
        .map(|i| format!("device-{i}").into_bytes())
        .collect();
    expected.sort();
    assert_eq!(bodies, expected);
}
