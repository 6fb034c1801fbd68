//! Automatic configurations and deployments through the hub's services on an in-memory database: stored,
//! evaluated over devices by their tags, and counted in their metrics (compat/test_fleet_configurations.py
//! drives the same through the REST API with the Azure SDKs, on both engines).

mod fleet_devices;

use fleet_devices::set_tags;
use outpost_hub::registry::{DeviceSpec, Precondition};
use outpost_hub::{Hub, HubError};
use serde_json::{json, Value};

fn hub() -> Hub {
    Hub::in_memory("hub.test").unwrap()
}

async fn create_device(hub: &Hub, id: &str, edge: bool, tags: Value) {
    let spec = DeviceSpec {
        device_id: id.into(),
        iot_edge: edge,
        ..DeviceSpec::default()
    };
    hub.registry()
        .put_device(&spec, &Precondition::CreateOnly)
        .await
        .unwrap();
    set_tags(hub, id, tags).await;
}

async fn desired(hub: &Hub, device: &str, module: Option<&str>) -> Value {
    let view = hub.twins().twin(device, module).await.unwrap();
    let mut desired = Value::Object(view.twin.desired().clone());
    desired.as_object_mut().unwrap().remove("$version");
    desired
}

fn base_deployment(image: &str) -> Value {
    json!({
        "modulesContent": {
            "$edgeAgent": {"properties.desired": {
                "schemaVersion": "1.1",
                "runtime": {"type": "docker", "settings": {}},
                "systemModules": {
                    "edgeAgent": {"type": "docker", "settings": {"image": "agent"}},
                    "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always",
                                "settings": {"image": "hub"}},
                },
                "modules": {"sensor": {"type": "docker", "status": "running", "restartPolicy": "always",
                                       "version": "1.0", "settings": {"image": image}}},
            }},
            "$edgeHub": {"properties.desired": {
                "schemaVersion": "1.1",
                "routes": {"up": "FROM /messages/* INTO $upstream"},
                "storeAndForwardConfiguration": {"timeToLiveSecs": 7200},
            }},
        }
    })
}

async fn put(hub: &Hub, id: &str, body: Value) -> Result<(), HubError> {
    hub.configurations()
        .put(id, &body, &Precondition::CreateOnly)
        .await
        .map(|_| ())
}

#[tokio::test]
async fn an_edge_device_gets_the_base_deployment_its_tags_select_with_layers_on_top() {
    let hub = hub();
    create_device(&hub, "edge1", true, json!({"site": "north"})).await;
    create_device(&hub, "edge2", true, json!({"site": "south"})).await;
    put(&hub, "base-north", json!({
        "targetCondition": "tags.site = 'north'", "priority": 10, "content": base_deployment("north:1"),
    }))
    .await
    .unwrap();
    put(&hub, "layer", json!({
        "targetCondition": "tags.site = 'north'", "priority": 20,
        "content": {"modulesContent": {
            "$edgeAgent": {"properties.desired.modules.extra": {"type": "docker", "status": "running",
                "restartPolicy": "always", "version": "1.0", "settings": {"image": "extra:1"}}},
            "$edgeHub": {"properties.desired.routes.extra": "FROM /messages/modules/extra/* INTO $upstream"},
        }},
    }))
    .await
    .unwrap();
    hub.configurations().evaluate_all().await.unwrap();

    let agent = desired(&hub, "edge1", Some("$edgeAgent")).await;
    assert_eq!(agent["modules"]["sensor"]["settings"]["image"], "north:1");
    assert_eq!(agent["modules"]["extra"]["settings"]["image"], "extra:1");
    let edge_hub = desired(&hub, "edge1", Some("$edgeHub")).await;
    assert_eq!(edge_hub["routes"]["up"], "FROM /messages/* INTO $upstream");
    assert!(edge_hub["routes"]["extra"].is_string());
    assert!(desired(&hub, "edge2", Some("$edgeAgent")).await["modules"].is_null());

    let shown = hub.configurations().get("layer").await.unwrap();
    assert_eq!(shown["systemMetrics"]["results"]["targetedCount"], 1);
    assert_eq!(shown["systemMetrics"]["results"]["appliedCount"], 1);
    let twin = hub.twins().twin("edge1", Some("$edgeAgent")).await.unwrap();
    let configurations = twin.configurations.unwrap();
    assert_eq!(configurations["base-north"]["status"], "Applied");

    // A second evaluation finds the twins as configured and writes nothing.
    assert_eq!(hub.configurations().evaluate_all().await.unwrap(), 0);
}

#[tokio::test]
async fn a_device_configuration_arrives_with_a_tag_and_leaves_without_it() {
    let hub = hub();
    create_device(&hub, "dev1", false, json!({"env": "test"})).await;
    put(
        &hub,
        "low",
        json!({
            "targetCondition": "tags.env = 'test'", "priority": 1,
            "content": {"deviceContent": {"properties.desired.telemetry.interval": 10,
                                          "properties.desired.mode": "low"}},
        }),
    )
    .await
    .unwrap();
    put(
        &hub,
        "high",
        json!({
            "targetCondition": "tags.env = 'test'", "priority": 5,
            "content": {"deviceContent": {"properties.desired.mode": "high"}},
        }),
    )
    .await
    .unwrap();
    hub.configurations().evaluate_all().await.unwrap();
    let got = desired(&hub, "dev1", None).await;
    assert_eq!(got["telemetry"]["interval"], 10);
    assert_eq!(got["mode"], "high");

    set_tags(&hub, "dev1", json!({"env": "prod"})).await;
    assert!(hub.configurations().evaluate_device("dev1").await.unwrap());
    let got = desired(&hub, "dev1", None).await;
    assert!(got.get("mode").is_none(), "{got}");
    assert!(got["telemetry"].get("interval").is_none(), "{got}");
    let shown = hub.configurations().get("low").await.unwrap();
    assert_eq!(shown["systemMetrics"]["results"]["targetedCount"], 0);
}

#[tokio::test]
async fn invalid_configurations_are_refused_and_nothing_is_stored() {
    let hub = hub();
    let bad_condition = put(&hub, "c1", json!({
        "targetCondition": "tags.env = ", "content": {"deviceContent": {"properties.desired.x": 1}},
    }))
    .await;
    assert_eq!(bad_condition.unwrap_err().status(), 400);
    let bad_content = put(
        &hub,
        "c1",
        json!({
            "targetCondition": "*", "content": {"deviceContent": {"tags.x": 1}},
        }),
    )
    .await;
    assert_eq!(bad_content.unwrap_err().status(), 400);
    let bad_metric = put(
        &hub,
        "c1",
        json!({
            "targetCondition": "*", "content": {"deviceContent": {"properties.desired.x": 1}},
            "metrics": {"queries": {"m": "SELECT FROM nowhere"}},
        }),
    )
    .await;
    assert_eq!(bad_metric.unwrap_err().status(), 400);
    assert!(hub.configurations().list(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_configuration_past_the_hub_limit_is_throttled_and_nothing_changes() {
    let hub = hub();
    let body = |n: usize| {
        json!({
            "targetCondition": "tags.env = 'prod'", "priority": n,
            "content": {"deviceContent": {"properties.desired.n": n}},
        })
    };
    for n in 0..outpost_hub::fleet::MAX_CONFIGURATIONS {
        put(&hub, &format!("c{n}"), body(n)).await.unwrap();
    }
    let refused = put(&hub, "one-too-many", body(1000)).await.unwrap_err();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.code().0, "ThrottlingException");
    let listed = hub.configurations().list(None).await.unwrap();
    assert_eq!(listed.len(), outpost_hub::fleet::MAX_CONFIGURATIONS);
    assert!(listed.iter().all(|c| c["id"] != "one-too-many"));
    assert_eq!(
        hub.configurations()
            .get("one-too-many")
            .await
            .unwrap_err()
            .status(),
        404
    );
    // Replacing one of the hundred is no creation; deleting one makes room again.
    let mut replaced = body(0);
    replaced["priority"] = json!(50);
    hub.configurations()
        .put("c0", &replaced, &Precondition::Any)
        .await
        .unwrap();
    hub.configurations()
        .delete("c1", &Precondition::Any)
        .await
        .unwrap();
    put(&hub, "one-too-many", body(1000)).await.unwrap();
}

#[tokio::test]
async fn replacing_a_configuration_needs_its_current_etag() {
    let hub = hub();
    let body = json!({"targetCondition": "*", "priority": 1,
                      "content": {"deviceContent": {"properties.desired.x": 1}},
                      "metrics": {"queries": {"all": "SELECT deviceId FROM devices"}}});
    put(&hub, "c1", body.clone()).await.unwrap();
    assert!(matches!(
        put(&hub, "c1", body.clone()).await,
        Err(HubError::ConfigurationAlreadyExists(_))
    ));
    let shown = hub.configurations().get("c1").await.unwrap();
    let stale = Precondition::Etag("stale".into());
    let refused = hub.configurations().put("c1", &body, &stale).await;
    assert!(matches!(refused, Err(HubError::PreconditionFailed)));
    let etag = Precondition::Etag(shown["etag"].as_str().unwrap().into());
    let (replaced, created) = hub.configurations().put("c1", &body, &etag).await.unwrap();
    assert!(!created);
    assert_eq!(replaced.version, 2);
    create_device(&hub, "d", false, json!({})).await;
    let shown = hub.configurations().get("c1").await.unwrap();
    assert_eq!(shown["metrics"]["results"]["all"], 1);
    hub.configurations()
        .delete("c1", &Precondition::Any)
        .await
        .unwrap();
    assert!(matches!(
        hub.configurations().get("c1").await,
        Err(HubError::ConfigurationNotFound(_))
    ));
}

#[tokio::test]
async fn a_module_configuration_reaches_the_module_twins_it_selects() {
    let hub = hub();
    create_device(&hub, "dev1", false, json!({"site": "north"})).await;
    for module in ["logger", "other"] {
        let spec = outpost_hub::registry::ModuleSpec {
            device_id: "dev1".into(),
            module_id: module.into(),
            ..outpost_hub::registry::ModuleSpec::default()
        };
        hub.registry()
            .put_module(spec, &Precondition::CreateOnly)
            .await
            .unwrap();
    }
    put(
        &hub,
        "logging",
        json!({
            "targetCondition": "FROM devices.modules WHERE moduleId = 'logger'",
            "content": {"moduleContent": {"properties.desired.level": "debug"}},
        }),
    )
    .await
    .unwrap();
    hub.configurations().evaluate_all().await.unwrap();
    assert_eq!(
        desired(&hub, "dev1", Some("logger")).await["level"],
        "debug"
    );
    assert!(desired(&hub, "dev1", Some("other"))
        .await
        .get("level")
        .is_none());
    assert!(desired(&hub, "dev1", None).await.get("level").is_none());
    let shown = hub.configurations().get("logging").await.unwrap();
    assert_eq!(shown["systemMetrics"]["results"]["appliedCount"], 1);
}

#[tokio::test]
async fn a_manual_deployment_is_replaced_where_an_automatic_one_targets_and_kept_elsewhere() {
    let hub = hub();
    create_device(&hub, "targeted", true, json!({"auto": true})).await;
    create_device(&hub, "manual", true, json!({})).await;
    put(
        &hub,
        "auto",
        json!({
            "targetCondition": "tags.auto = true", "content": base_deployment("auto:1"),
        }),
    )
    .await
    .unwrap();
    hub.configurations().evaluate_all().await.unwrap();
    let manual = base_deployment("manual:1");
    for device in ["targeted", "manual"] {
        hub.twins()
            .apply_configuration(device, &manual)
            .await
            .unwrap();
        hub.configurations().evaluate_device(device).await.unwrap();
    }
    let image = |desired: Value| desired["modules"]["sensor"]["settings"]["image"].clone();
    assert_eq!(
        image(desired(&hub, "targeted", Some("$edgeAgent")).await),
        "auto:1"
    );
    assert_eq!(
        image(desired(&hub, "manual", Some("$edgeAgent")).await),
        "manual:1"
    );

    // A device that no deployment targets any more keeps the last one it got.
    set_tags(&hub, "targeted", json!({"auto": false})).await;
    hub.configurations()
        .evaluate_device("targeted")
        .await
        .unwrap();
    assert_eq!(
        image(desired(&hub, "targeted", Some("$edgeAgent")).await),
        "auto:1"
    );
    let twin = hub
        .twins()
        .twin("targeted", Some("$edgeAgent"))
        .await
        .unwrap();
    assert!(twin.configurations.is_none());
}
