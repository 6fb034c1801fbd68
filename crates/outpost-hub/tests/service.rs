//! The hub's service operations, exercised on an in-memory database (the REST and MQTT heads are tested
//! end to end by compat/ with the real Azure SDKs).

use outpost_hub::registry::{DeviceSpec, ModuleSpec, Precondition};
use outpost_hub::twins::TwinWrite;
use outpost_hub::{Hub, HubError};
use serde_json::json;

fn hub() -> Hub {
    Hub::in_memory("hub.test").unwrap()
}

fn device(id: &str) -> DeviceSpec {
    DeviceSpec {
        device_id: id.into(),
        ..DeviceSpec::default()
    }
}

#[tokio::test]
async fn a_created_device_gets_generated_keys_and_a_twin() {
    let hub = hub();
    let record = hub
        .registry()
        .put_device(&device("dev1"), &Precondition::CreateOnly)
        .await
        .unwrap();
    assert!(!record.credentials.primary_key.is_empty());
    assert_ne!(
        record.credentials.primary_key,
        record.credentials.secondary_key
    );
    let view = hub.twins().twin("dev1", None).await.unwrap();
    assert_eq!(view.twin.desired_version(), 1);
}

#[tokio::test]
async fn creating_an_existing_device_is_a_conflict_and_changes_nothing() {
    let hub = hub();
    let first = hub
        .registry()
        .put_device(&device("dev1"), &Precondition::CreateOnly)
        .await
        .unwrap();
    let again = hub
        .registry()
        .put_device(&device("dev1"), &Precondition::CreateOnly)
        .await;
    assert!(matches!(again, Err(HubError::DeviceAlreadyExists(_))));
    assert_eq!(
        hub.registry()
            .device("dev1")
            .await
            .unwrap()
            .credentials
            .primary_key,
        first.credentials.primary_key
    );
}

#[tokio::test]
async fn illegal_ids_are_refused() {
    let hub = hub();
    for id in ["bad/id", "a b", "", &"x".repeat(129)] {
        assert!(
            matches!(
                hub.registry()
                    .put_device(&device(id), &Precondition::CreateOnly)
                    .await,
                Err(HubError::ArgumentInvalid(_))
            ),
            "{id:?}"
        );
    }
    assert!(hub.registry().devices().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_stale_etag_is_refused_and_the_wildcard_is_not() {
    let hub = hub();
    let created = hub
        .registry()
        .put_device(&device("dev1"), &Precondition::CreateOnly)
        .await
        .unwrap();
    let etag = outpost_hub::identity::identity_etag(created.etag_counter);
    hub.registry()
        .put_device(&device("dev1"), &Precondition::Etag(etag.clone()))
        .await
        .unwrap();
    assert!(matches!(
        hub.registry()
            .put_device(&device("dev1"), &Precondition::Etag(etag))
            .await,
        Err(HubError::PreconditionFailed)
    ));
    hub.registry()
        .put_device(&device("dev1"), &Precondition::Any)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_edge_device_gets_its_system_modules_and_a_scope() {
    let hub = hub();
    let spec = DeviceSpec {
        iot_edge: true,
        ..device("edge1")
    };
    let record = hub
        .registry()
        .put_device(&spec, &Precondition::CreateOnly)
        .await
        .unwrap();
    let modules: Vec<String> = hub
        .registry()
        .modules("edge1")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.module_id.to_string())
        .collect();
    assert_eq!(modules, ["$edgeAgent", "$edgeHub"]);
    assert_eq!(
        record.device_scope.unwrap(),
        format!("ms-azure-iot-edge://edge1-{}", record.generation_id)
    );
}

#[tokio::test]
async fn a_child_device_takes_its_parents_scope() {
    let hub = hub();
    let edge = hub
        .registry()
        .put_device(
            &DeviceSpec {
                iot_edge: true,
                ..device("edge1")
            },
            &Precondition::CreateOnly,
        )
        .await
        .unwrap();
    let child = hub
        .registry()
        .put_device(
            &DeviceSpec {
                parent: Some("edge1".into()),
                ..device("leaf")
            },
            &Precondition::CreateOnly,
        )
        .await
        .unwrap();
    assert_eq!(child.parent_scopes, vec![edge.edge_scope()]);
    let not_edge = hub
        .registry()
        .put_device(
            &DeviceSpec {
                parent: Some("leaf".into()),
                ..device("leaf2")
            },
            &Precondition::CreateOnly,
        )
        .await;
    assert!(matches!(not_edge, Err(HubError::ArgumentInvalid(_))));
}

#[tokio::test]
async fn deleting_a_device_deletes_its_modules() {
    let hub = hub();
    hub.registry()
        .put_device(&device("dev1"), &Precondition::CreateOnly)
        .await
        .unwrap();
    let module = ModuleSpec {
        device_id: "dev1".into(),
        module_id: "m1".into(),
        ..ModuleSpec::default()
    };
    let (_, created) = hub
        .registry()
        .put_module(module.clone(), &Precondition::CreateOnly)
        .await
        .unwrap();
    assert!(created);
    assert!(matches!(
        hub.registry()
            .put_module(module, &Precondition::CreateOnly)
            .await,
        Err(HubError::ModuleAlreadyExists(_))
    ));
    hub.registry()
        .delete_device("dev1", &Precondition::Any)
        .await
        .unwrap();
    assert!(matches!(
        hub.registry().module("dev1", "m1").await,
        Err(HubError::DeviceNotFound(_))
    ));
    assert!(matches!(
        hub.registry().device("dev1").await,
        Err(HubError::DeviceNotFound(_))
    ));
}

#[tokio::test]
async fn a_desired_patch_bumps_the_version_and_a_refused_one_changes_nothing() {
    let hub = hub();
    hub.registry()
        .put_device(&device("dev1"), &Precondition::CreateOnly)
        .await
        .unwrap();
    let patch = TwinWrite::from_body(
        &json!({"properties": {"desired": {"a": 1}}, "tags": {"site": "x"}}),
        false,
    )
    .unwrap();
    let view = hub
        .twins()
        .write_twin("dev1", None, &patch, &Precondition::Any)
        .await
        .unwrap();
    assert_eq!(view.twin.desired_version(), 2);
    assert_eq!(view.twin.desired()["a"], 1);
    let before =
        serde_json::to_string(&hub.twins().twin("dev1", None).await.unwrap().twin).unwrap();

    let mut deep = json!(1);
    for _ in 0..12 {
        deep = json!({"k": deep});
    }
    let too_deep = TwinWrite::from_body(
        &json!({"properties": {"desired": deep}, "tags": {"other": 1}}),
        false,
    )
    .unwrap();
    assert!(hub
        .twins()
        .write_twin("dev1", None, &too_deep, &Precondition::Any)
        .await
        .is_err());
    let after = serde_json::to_string(&hub.twins().twin("dev1", None).await.unwrap().twin).unwrap();
    assert_eq!(before, after);
}

#[tokio::test]
async fn a_stale_twin_etag_is_refused() {
    let hub = hub();
    hub.registry()
        .put_device(&device("dev1"), &Precondition::CreateOnly)
        .await
        .unwrap();
    let etag = hub.twins().twin("dev1", None).await.unwrap().twin.etag();
    let patch = TwinWrite::from_body(&json!({"properties": {"desired": {"a": 1}}}), false).unwrap();
    hub.twins()
        .write_twin("dev1", None, &patch, &Precondition::Etag(etag.clone()))
        .await
        .unwrap();
    assert!(matches!(
        hub.twins()
            .write_twin("dev1", None, &patch, &Precondition::Etag(etag))
            .await,
        Err(HubError::PreconditionFailed)
    ));
}

#[test]
fn the_service_cannot_write_reported_properties() {
    assert!(TwinWrite::from_body(&json!({"properties": {"reported": {"a": 1}}}), false).is_err());
}

fn manifest(schema: &str) -> serde_json::Value {
    json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {
            "schemaVersion": schema,
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

#[tokio::test]
async fn a_deployment_lands_in_the_module_twins() {
    let hub = hub();
    hub.registry()
        .put_device(
            &DeviceSpec {
                iot_edge: true,
                ..device("edge1")
            },
            &Precondition::CreateOnly,
        )
        .await
        .unwrap();
    hub.twins()
        .apply_configuration("edge1", &manifest("1.1"))
        .await
        .unwrap();
    let agent = hub.twins().twin("edge1", Some("$edgeAgent")).await.unwrap();
    assert_eq!(agent.twin.desired()["schemaVersion"], "1.1");
    let edge_hub = hub.twins().twin("edge1", Some("$edgeHub")).await.unwrap();
    assert_eq!(
        edge_hub.twin.desired()["routes"]["up"],
        "FROM /messages/* INTO $upstream"
    );
    // The sensor's identity does not exist yet: its content waits for the edge runtime to create it.
    assert!(matches!(
        hub.registry().module("edge1", "sensor").await,
        Err(HubError::ModuleNotFound(_))
    ));
    let module = ModuleSpec {
        device_id: "edge1".into(),
        module_id: "sensor".into(),
        managed_by: Some("IotEdge".into()),
        ..ModuleSpec::default()
    };
    hub.registry()
        .put_module(module, &Precondition::CreateOnly)
        .await
        .unwrap();
    let sensor = hub.twins().twin("edge1", Some("sensor")).await.unwrap();
    assert_eq!(sensor.twin.desired()["SendInterval"], 5);
}

#[tokio::test]
async fn a_deployment_with_an_unknown_schema_is_refused_and_changes_nothing() {
    let hub = hub();
    hub.registry()
        .put_device(
            &DeviceSpec {
                iot_edge: true,
                ..device("edge1")
            },
            &Precondition::CreateOnly,
        )
        .await
        .unwrap();
    let result = hub
        .twins()
        .apply_configuration("edge1", &manifest("2.0"))
        .await;
    assert!(matches!(
        result,
        Err(HubError::InvalidConfigurationContent(_))
    ));
    assert_eq!(
        hub.twins()
            .twin("edge1", Some("$edgeAgent"))
            .await
            .unwrap()
            .twin
            .desired_version(),
        1
    );
    assert!(matches!(
        hub.registry().module("edge1", "sensor").await,
        Err(HubError::ModuleNotFound(_))
    ));
}

#[tokio::test]
async fn a_deployment_needs_an_edge_device() {
    let hub = hub();
    hub.registry()
        .put_device(&device("plain"), &Precondition::CreateOnly)
        .await
        .unwrap();
    assert!(matches!(
        hub.twins()
            .apply_configuration("plain", &manifest("1.1"))
            .await,
        Err(HubError::ArgumentInvalid(_))
    ));
}

#[tokio::test]
async fn a_device_token_authenticates_only_its_own_identity() {
    let hub = hub();
    let record = hub
        .registry()
        .put_device(&device("dev1"), &Precondition::CreateOnly)
        .await
        .unwrap();
    hub.registry()
        .put_device(&device("dev2"), &Precondition::CreateOnly)
        .await
        .unwrap();
    let expiry = chrono::Utc::now().timestamp() as u64 + 600;
    let token =
        outpost_core::device_token("hub.test", "dev1", &record.credentials.primary_key, expiry)
            .unwrap();
    let identity =
        |d: &str| outpost_core::Identity::device(outpost_core::DeviceId::new(d).unwrap());
    hub.authenticate_identity(&identity("dev1"), &token)
        .await
        .unwrap();
    assert!(hub
        .authenticate_identity(&identity("dev2"), &token)
        .await
        .is_err());
    let wrong_key = outpost_core::device_token(
        "hub.test",
        "dev1",
        &outpost_hub::identity::generate_key(),
        expiry,
    )
    .unwrap();
    assert!(hub
        .authenticate_identity(&identity("dev1"), &wrong_key)
        .await
        .is_err());
    hub.registry()
        .delete_device("dev1", &Precondition::Any)
        .await
        .unwrap();
    assert!(hub
        .authenticate_identity(&identity("dev1"), &token)
        .await
        .is_err());
}

#[tokio::test]
async fn a_method_on_an_offline_device_fails_fast() {
    let hub = hub();
    hub.registry()
        .put_device(&device("dev1"), &Precondition::CreateOnly)
        .await
        .unwrap();
    let call = outpost_hub::messaging::MethodCall::from_body(
        &json!({"methodName": "ping", "payload": {}}),
    )
    .unwrap();
    let result = hub.messaging().invoke_method("dev1", None, call).await;
    assert!(matches!(result, Err(HubError::DeviceNotOnline(_))));
}

#[tokio::test]
async fn an_edge_device_may_manage_its_own_modules_only() {
    use outpost_hub::auth::Caller;
    use outpost_hub::identity::Right;
    let hub = hub();
    let edge = hub
        .registry()
        .put_device(
            &DeviceSpec {
                iot_edge: true,
                ..device("edge1")
            },
            &Precondition::CreateOnly,
        )
        .await
        .unwrap();
    let plain = hub
        .registry()
        .put_device(&device("plain"), &Precondition::CreateOnly)
        .await
        .unwrap();
    let expiry = chrono::Utc::now().timestamp() as u64 + 600;
    let edge_token =
        outpost_core::device_token("hub.test", "edge1", &edge.credentials.primary_key, expiry)
            .unwrap();
    let plain_token =
        outpost_core::device_token("hub.test", "plain", &plain.credentials.primary_key, expiry)
            .unwrap();

    hub.authorize_module_management(
        Caller::Token(Some(&edge_token)),
        Right::RegistryWrite,
        "edge1",
    )
    .await
    .unwrap();
    assert!(hub
        .authorize_module_management(
            Caller::Token(Some(&edge_token)),
            Right::RegistryWrite,
            "plain"
        )
        .await
        .is_err());
    assert!(hub
        .authorize_module_management(
            Caller::Token(Some(&plain_token)),
            Right::RegistryWrite,
            "plain"
        )
        .await
        .is_err());
    assert!(hub
        .authorize_module_management(Caller::Token(None), Right::RegistryRead, "edge1")
        .await
        .is_err());
}
