//! The device-to-cloud event stream keeps at most its retention's age and size, always the newest events.

use std::time::Duration;

use chrono::Utc;
use outpost_core::{DeviceId, Identity, Message};
use outpost_hub::messaging::{EventRetention, PRUNE_BATCH};
use outpost_hub::registry::{DeviceSpec, Precondition};
use outpost_hub::Hub;

async fn hub_with_sensor() -> (Hub, Identity) {
    let hub = Hub::in_memory("hub.test").unwrap();
    hub.registry()
        .put_device(
            &DeviceSpec {
                device_id: "sensor".into(),
                ..DeviceSpec::default()
            },
            &Precondition::CreateOnly,
        )
        .await
        .unwrap();
    (hub, Identity::device(DeviceId::new("sensor").unwrap()))
}

fn reading(i: usize) -> Message {
    Message {
        body: format!("{{\"reading\": {i:04}}}").into_bytes().into(),
        ..Message::default()
    }
}

/// Prunes until a call deletes less than a batch, as the hub's background task does; returns how many went.
async fn prune(hub: &Hub, retention: &EventRetention, now: chrono::DateTime<Utc>) -> usize {
    let mut total = 0;
    loop {
        let count = hub.messaging().prune_events(retention, now).await.unwrap();
        total += count;
        if count < PRUNE_BATCH {
            return total;
        }
    }
}

async fn kept(hub: &Hub) -> Vec<i64> {
    hub.messaging()
        .read_events(0, 10_000, Duration::ZERO)
        .await
        .unwrap()
        .into_iter()
        .map(|(seq, _)| seq)
        .collect()
}

#[tokio::test]
async fn events_older_than_the_retention_are_pruned_in_batches_and_readers_get_what_is_kept() {
    let (hub, sensor) = hub_with_sensor().await;
    let retention = EventRetention {
        max_age: Duration::from_mins(1),
        ..EventRetention::default()
    };
    let count = PRUNE_BATCH * 2 + 10;
    for i in 0..count {
        hub.messaging()
            .accept_telemetry(&sensor, &reading(i))
            .await
            .unwrap();
    }
    assert_eq!(
        prune(&hub, &retention, Utc::now()).await,
        0,
        "nothing is old yet"
    );
    assert_eq!(
        hub.messaging()
            .prune_events(&retention, Utc::now() + chrono::Duration::seconds(61))
            .await
            .unwrap(),
        PRUNE_BATCH
    );
    assert_eq!(
        prune(&hub, &retention, Utc::now() + chrono::Duration::seconds(61)).await,
        count - PRUNE_BATCH
    );
    assert!(kept(&hub).await.is_empty());

    let newest = i64::try_from(count).unwrap();
    assert_eq!(hub.messaging().newest_event(), newest);
    let next = hub
        .messaging()
        .accept_telemetry(&sensor, &reading(0))
        .await
        .unwrap();
    assert_eq!(next, newest + 1, "sequence numbers are never reused");
    // A reader that last saw an event long pruned gets the oldest kept.
    let events = hub
        .messaging()
        .read_events(3, 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, next);
}

#[tokio::test]
async fn the_oldest_events_past_the_size_cap_are_pruned_and_the_newest_kept() {
    let (hub, sensor) = hub_with_sensor().await;
    for i in 0..100 {
        hub.messaging()
            .accept_telemetry(&sensor, &reading(i))
            .await
            .unwrap();
    }
    let one = hub
        .messaging()
        .read_events(0, 1, Duration::ZERO)
        .await
        .unwrap();
    let size = serde_json::to_string(&one[0].1).unwrap().len() as u64;
    let retention = EventRetention {
        max_bytes: 10 * size,
        ..EventRetention::default()
    };
    assert_eq!(prune(&hub, &retention, Utc::now()).await, 90);
    assert_eq!(kept(&hub).await, (91..=100).collect::<Vec<i64>>());
    let bodies: Vec<String> = hub
        .messaging()
        .read_events(0, 100, Duration::ZERO)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| e["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies.first().unwrap(), "{\"reading\": 0090}");
    assert_eq!(bodies.last().unwrap(), "{\"reading\": 0099}");
    assert_eq!(prune(&hub, &retention, Utc::now()).await, 0);
}

#[test]
fn the_default_retention_is_a_day_and_a_gibibyte() {
    let retention = EventRetention::default();
    assert_eq!(retention.max_age, Duration::from_hours(24));
    assert_eq!(retention.max_bytes, 1 << 30);
    assert_eq!(retention.prune_interval(), Duration::from_secs(10));
    let short = EventRetention {
        max_age: Duration::from_secs(2),
        ..retention
    };
    assert_eq!(short.prune_interval(), Duration::from_secs(1));
}
