//! Devices with tags for the fleet tests (queries, configurations, jobs): created through the registry and
//! tagged through the twins service, as the REST API does.

// Each test binary uses part of it.
#![allow(dead_code)]

use outpost_hub::registry::{DeviceSpec, Precondition};
use outpost_hub::twins::TwinWrite;
use outpost_hub::Hub;
use serde_json::Value;

/// Creates device `id` with `tags`.
pub async fn device_with_tags(hub: &Hub, id: &str, tags: Value) {
    let spec = DeviceSpec {
        device_id: id.into(),
        ..DeviceSpec::default()
    };
    hub.registry()
        .put_device(&spec, &Precondition::CreateOnly)
        .await
        .unwrap();
    set_tags(hub, id, tags).await;
}

/// Merges `tags` into the tags of `id`'s twin.
pub async fn set_tags(hub: &Hub, id: &str, tags: Value) {
    let write = TwinWrite {
        tags: Some(tags),
        ..TwinWrite::default()
    };
    hub.twins()
        .write_twin(id, None, &write, &Precondition::Any)
        .await
        .unwrap();
}
