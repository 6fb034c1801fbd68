//! Behaviour of deployment manifests: the §5.1 example, defaults, error codes and createOptions chunks.

use proptest::prelude::*;
use serde_json::json;

use super::*;

/// The manifest of AZURE-COMPAT §5.1, with a process module added.
fn example() -> Value {
    json!({"modulesContent":{
     "$edgeAgent":{"properties.desired":{
       "schemaVersion":"1.1",
       "runtime":{"type":"docker","settings":{"minDockerVersion":"v1.25","loggingOptions":"",
                  "registryCredentials":{"acr":{"username":"","password":"","address":"myacr.azurecr.io"}}}},
       "systemModules":{
         "edgeAgent":{"type":"docker","settings":{"image":"mcr.microsoft.com/azureiotedge-agent:1.5","createOptions":"{}"},"env":{}},
         "edgeHub":{"type":"docker","status":"running","restartPolicy":"always","startupOrder":0,
                    "settings":{"image":"mcr.microsoft.com/azureiotedge-hub:1.5",
                                "createOptions":"{\"HostConfig\":{\"PortBindings\":{\"443/tcp\":[{\"HostPort\":\"443\"}],\"5671/tcp\":[{\"HostPort\":\"5671\"}],\"8883/tcp\":[{\"HostPort\":\"8883\"}]}}}"},
                    "env":{"NAME":{"value":"v"}}}},
       "modules":{
         "filter":{"version":"1.0","type":"docker","status":"running","restartPolicy":"always",
                   "imagePullPolicy":"on-create","startupOrder":1,
                   "settings":{"image":"myacr.azurecr.io/filter:1","createOptions":"{\"Env\":[\"A=1\"]}"},
                   "env":{"K":{"value":"V"},"N":{"value":3}}},
         "sensor":{"type":"process","settings":{"path":"/usr/bin/sensor","args":["--rate","5"]}}}}},
     "$edgeHub":{"properties.desired":{"schemaVersion":"1.1",
       "routes":{"r1":"FROM /messages/modules/a/outputs/o1 INTO BrokeredEndpoint(\"/modules/b/inputs/i1\")",
                 "r2":{"route":"FROM /messages/* INTO $upstream","priority":0,"timeToLiveSecs":86400}},
       "storeAndForwardConfiguration":{"timeToLiveSecs":7200}}},
     "filter":{"properties.desired":{"threshold":25}}}})
}

/// The example's `$edgeAgent` desired properties.
fn agent() -> Value {
    example()["modulesContent"]["$edgeAgent"]["properties.desired"].clone()
}

/// The example's `$edgeHub` desired properties.
fn hub() -> Value {
    example()["modulesContent"]["$edgeHub"]["properties.desired"].clone()
}

fn code(result: Result<impl std::fmt::Debug, ManifestError>) -> u16 {
    result.unwrap_err().status_code()
}

#[test]
fn the_example_manifest_is_accepted_with_every_module_content() {
    let manifest = DeploymentManifest::from_json(&example()).unwrap();
    let names: Vec<&String> = manifest.modules_content.keys().collect();
    assert_eq!(names, ["$edgeAgent", "$edgeHub", "filter"]);
    assert_eq!(manifest.modules_content["filter"], json!({"threshold": 25}));
}

#[test]
fn a_manifest_wrapped_in_content_is_accepted() {
    let wrapped = json!({ "content": example() });
    assert_eq!(
        DeploymentManifest::from_json(&wrapped).unwrap(),
        DeploymentManifest::from_json(&example()).unwrap()
    );
}

#[test]
fn the_example_modules_carry_their_settings() {
    let agent = DeploymentManifest::from_json(&example())
        .unwrap()
        .edge_agent()
        .unwrap();
    assert_eq!(agent.schema_version, "1.1");
    assert_eq!(agent.runtime["type"], "docker");
    let filter = &agent.modules["filter"];
    assert_eq!(filter.version.as_deref(), Some("1.0"));
    assert_eq!(filter.kind, "docker");
    assert_eq!(filter.restart_policy, RestartPolicy::Always);
    assert_eq!(filter.startup_order, 1);
    assert_eq!(filter.image, "myacr.azurecr.io/filter:1");
    assert_eq!(
        filter.create_options.as_deref(),
        Some("{\"Env\":[\"A=1\"]}")
    );
    assert_eq!(filter.env.get("K").map(String::as_str), Some("V"));
    assert_eq!(filter.env.get("N").map(String::as_str), Some("3"));
    let hub = &agent.system_modules["edgeHub"];
    assert_eq!(
        (hub.startup_order, hub.restart_policy),
        (0, RestartPolicy::Always)
    );
    assert!(hub.create_options.as_deref().unwrap().contains("8883/tcp"));
}

#[test]
fn module_fields_take_their_defaults_when_absent() {
    let agent = EdgeAgentDesired::from_desired(&agent()).unwrap();
    let sensor = &agent.modules["sensor"];
    assert_eq!(sensor.status, DesiredStatus::Running);
    assert_eq!(sensor.restart_policy, RestartPolicy::OnUnhealthy);
    assert_eq!(sensor.image_pull_policy, ImagePullPolicy::OnCreate);
    assert_eq!(sensor.startup_order, 4_294_967_295);
    assert_eq!(sensor.version, None);
    assert!(sensor.env.is_empty());
}

#[test]
fn a_process_module_needs_an_absolute_path_instead_of_an_image() {
    let agent = EdgeAgentDesired::from_desired(&agent()).unwrap();
    let sensor = &agent.modules["sensor"];
    assert_eq!(sensor.kind, "process");
    assert_eq!(sensor.image, "");
    assert_eq!(sensor.settings["args"], json!(["--rate", "5"]));
    for settings in [
        json!({"path": "sensor"}),
        json!({}),
        json!({"path": "/s", "args": [1]}),
        json!({"path": "/s", "args": "x"}),
    ] {
        let mut desired = agent_with_module(json!({"type": "process", "settings": settings}));
        assert_eq!(code(EdgeAgentDesired::from_desired(&desired)), 400);
        desired["modules"]["m"]["settings"] = json!({"path": "/bin/true"});
        assert!(EdgeAgentDesired::from_desired(&desired).is_ok());
    }
}

/// The example's `$edgeAgent` with one user module `m`.
fn agent_with_module(module: Value) -> Value {
    let mut desired = agent();
    desired["modules"] = Value::Object(Map::from_iter([("m".to_owned(), module)]));
    desired
}

#[test]
fn edge_agent_itself_always_runs_first() {
    let mut desired = agent();
    desired["systemModules"]["edgeAgent"]["startupOrder"] = json!(7);
    desired["systemModules"]["edgeAgent"]["status"] = json!("stopped");
    let spec = &EdgeAgentDesired::from_desired(&desired)
        .unwrap()
        .system_modules["edgeAgent"];
    assert_eq!(
        (spec.startup_order, spec.status),
        (0, DesiredStatus::Running)
    );
}

#[test]
fn edge_agent_schema_versions_above_1_1_are_refused_with_412() {
    for ok in ["1.0", "1.1", "1.1.0", "1.0.5"] {
        let mut desired = agent();
        desired["schemaVersion"] = json!(ok);
        assert!(EdgeAgentDesired::from_desired(&desired).is_ok(), "{ok}");
    }
    for bad in [
        json!("1.2"),
        json!("2.0"),
        json!("1"),
        json!("1.1.1"),
        json!("v1.1"),
        json!("1.+1"),
        json!(1.1),
    ] {
        let mut desired = agent();
        desired["schemaVersion"] = bad.clone();
        assert_eq!(code(EdgeAgentDesired::from_desired(&desired)), 412, "{bad}");
    }
    let mut desired = agent();
    desired.as_object_mut().unwrap().remove("schemaVersion");
    assert_eq!(code(EdgeAgentDesired::from_desired(&desired)), 412);
}

#[test]
fn empty_desired_properties_are_refused_with_417() {
    assert_eq!(code(EdgeAgentDesired::from_desired(&json!({}))), 417);
    assert_eq!(
        code(EdgeAgentDesired::from_desired(
            &json!({"$version": 3, "$metadata": {}})
        )),
        417
    );
    assert_eq!(code(EdgeHubDesired::from_desired(&json!({}))), 417);
}

#[test]
fn a_twin_version_beside_the_desired_properties_is_ignored() {
    let mut desired = agent();
    desired["$version"] = json!(4);
    assert!(EdgeAgentDesired::from_desired(&desired).is_ok());
}

#[test]
fn structural_errors_are_refused_with_400() {
    let cases: Vec<fn(&mut Value)> = vec![
        |d| d["runtime"] = json!("docker"),
        |d| {
            d.as_object_mut().unwrap().remove("systemModules");
        },
        |d| {
            d["systemModules"]
                .as_object_mut()
                .unwrap()
                .remove("edgeHub");
        },
        |d| d["systemModules"]["other"] = d["systemModules"]["edgeHub"].clone(),
        |d| d["modules"]["sensor"]["type"] = json!("vm"),
        |d| {
            d["modules"]["filter"]
                .as_object_mut()
                .unwrap()
                .remove("type");
        },
        |d| d["modules"]["filter"]["status"] = json!("paused"),
        |d| d["modules"]["filter"]["restartPolicy"] = json!("sometimes"),
        |d| d["modules"]["filter"]["imagePullPolicy"] = json!("always"),
        |d| d["modules"]["filter"]["startupOrder"] = json!(-1),
        |d| d["modules"]["filter"]["startupOrder"] = json!(4_294_967_296_u64),
        |d| d["modules"]["filter"]["settings"]["image"] = json!(""),
        |d| d["modules"]["filter"]["settings"]["createOptions"] = json!("{not json"),
        |d| d["modules"]["filter"]["env"] = json!({"K": "V"}),
        |d| d["modules"]["filter"]["version"] = json!(1),
        |d| d["modules"]["bad name"] = d["modules"]["filter"].clone(),
        |d| d["modules"]["$mine"] = d["modules"]["filter"].clone(),
        |d| {
            d["modules"]["filter"]
                .as_object_mut()
                .unwrap()
                .remove("settings");
        },
    ];
    for (i, break_it) in cases.iter().enumerate() {
        let mut desired = agent();
        break_it(&mut desired);
        assert_eq!(
            code(EdgeAgentDesired::from_desired(&desired)),
            400,
            "case {i}"
        );
    }
}

#[test]
fn manifests_without_both_system_modules_or_with_bad_entries_are_refused_with_400() {
    let content = |c: Value| json!({ "modulesContent": c });
    let agent_entry = json!({ "properties.desired": agent() });
    let hub_entry = json!({ "properties.desired": hub() });
    let refused = [
        json!({}),
        json!([]),
        json!({ "content": {} }),
        content(json!([])),
        content(json!({ "$edgeAgent": agent_entry })),
        content(json!({ "$edgeHub": hub_entry })),
        content(
            json!({ "$edgeAgent": agent_entry, "$edgeHub": hub_entry, "m": { "properties.desired": 1 } }),
        ),
        content(
            json!({ "$edgeAgent": agent_entry, "$edgeHub": hub_entry, "m": { "desired": {} } }),
        ),
        content(
            json!({ "$edgeAgent": agent_entry, "$edgeHub": hub_entry, "m": { "properties.desired": {}, "x": 1 } }),
        ),
    ];
    for manifest in refused {
        assert_eq!(
            code(DeploymentManifest::from_json(&manifest)),
            400,
            "{manifest}"
        );
    }
}

#[test]
fn the_errors_of_the_system_modules_keep_their_codes_through_the_manifest() {
    let mut manifest = example();
    manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["schemaVersion"] = json!("2.0");
    assert_eq!(code(DeploymentManifest::from_json(&manifest)), 412);
    manifest["modulesContent"]["$edgeAgent"]["properties.desired"] = json!({});
    assert_eq!(code(DeploymentManifest::from_json(&manifest)), 417);
}

#[test]
fn the_example_routes_parse_with_their_priorities_and_ttls() {
    let hub = EdgeHubDesired::from_desired(&hub()).unwrap();
    assert_eq!(hub.schema_version, "1.1");
    assert_eq!(hub.store_and_forward_ttl_secs, 7200);
    assert_eq!(
        hub.routes["r1"],
        RouteSpec {
            route: "FROM /messages/modules/a/outputs/o1 INTO BrokeredEndpoint(\"/modules/b/inputs/i1\")".into(),
            priority: 2_000_000_000,
            time_to_live_secs: 0
        }
    );
    assert_eq!(
        hub.routes["r2"],
        RouteSpec {
            route: "FROM /messages/* INTO $upstream".into(),
            priority: 0,
            time_to_live_secs: 86400
        }
    );
}

#[test]
fn schema_1_0_routes_must_be_strings() {
    let mut desired = hub();
    desired["schemaVersion"] = json!("1.0");
    assert_eq!(code(EdgeHubDesired::from_desired(&desired)), 400);
    desired["routes"].as_object_mut().unwrap().remove("r2");
    assert!(EdgeHubDesired::from_desired(&desired).is_ok());
}

#[test]
fn edge_hub_accepts_schemas_1_0_to_1_3() {
    for (version, status) in [
        ("1.0", 0),
        ("1.2", 0),
        ("1.3", 0),
        ("1.4", 412),
        ("0.9", 412),
        ("2.0", 412),
    ] {
        let mut desired = hub();
        desired["schemaVersion"] = json!(version);
        if version == "1.0" {
            desired["routes"] = json!({ "r": "FROM /* INTO $upstream" });
        }
        let result = EdgeHubDesired::from_desired(&desired);
        assert_eq!(
            result.err().map_or(0, |e| e.status_code()),
            status,
            "{version}"
        );
    }
}

#[test]
fn edge_hub_defaults_apply_when_fields_are_absent() {
    let hub = EdgeHubDesired::from_desired(&json!({ "schemaVersion": "1.2" })).unwrap();
    assert!(hub.routes.is_empty());
    assert_eq!(hub.store_and_forward_ttl_secs, 7200);
}

#[test]
fn bad_routes_are_refused_with_400() {
    for route in [
        json!(""),
        json!(3),
        json!({"priority": 1}),
        json!({"route": "r", "priority": 10}),
        json!({"route": "r", "timeToLiveSecs": -1}),
    ] {
        let mut desired = hub();
        desired["routes"]["bad"] = route.clone();
        assert_eq!(code(EdgeHubDesired::from_desired(&desired)), 400, "{route}");
    }
    let mut desired = hub();
    desired["storeAndForwardConfiguration"]["timeToLiveSecs"] = json!("7200");
    assert_eq!(code(EdgeHubDesired::from_desired(&desired)), 400);
}

#[test]
fn create_options_are_joined_from_their_chunks_in_order() {
    let settings = json!({ "createOptions": "{\"a\":", "createOptions01": "1,", "createOptions02": "\"b\":2}" });
    let joined = join_create_options(settings.as_object().unwrap()).unwrap();
    assert_eq!(joined.as_deref(), Some("{\"a\":1,\"b\":2}"));
    assert_eq!(join_create_options(&Map::new()).unwrap(), None);
}

#[test]
fn create_options_given_as_an_object_are_taken_as_their_json_text() {
    let settings = json!({ "createOptions": { "HostConfig": { "Privileged": true } } });
    let joined = join_create_options(settings.as_object().unwrap()).unwrap();
    assert_eq!(
        joined.as_deref(),
        Some("{\"HostConfig\":{\"Privileged\":true}}")
    );
}

#[test]
fn chunks_after_a_gap_or_without_the_first_are_refused() {
    for settings in [
        json!({ "createOptions": "{", "createOptions02": "}" }),
        json!({ "createOptions01": "{}" }),
        json!({ "createOptions": "{", "createOptions01": 1 }),
        json!({ "createOptions": 1 }),
    ] {
        assert_eq!(
            code(join_create_options(settings.as_object().unwrap())),
            400,
            "{settings}"
        );
    }
}

#[test]
fn long_create_options_split_into_512_char_chunks() {
    let options = format!("{{\"x\":\"{}\"}}", "a".repeat(1100));
    let chunks = split_create_options(&options);
    let keys: Vec<&String> = chunks.keys().collect();
    assert_eq!(
        keys,
        ["createOptions", "createOptions01", "createOptions02"]
    );
    assert_eq!(chunks["createOptions"].as_str().unwrap().len(), 512);
    assert_eq!(chunks["createOptions01"].as_str().unwrap().len(), 512);
    assert_eq!(join_create_options(&chunks).unwrap(), Some(options));
    assert_eq!(
        split_create_options(""),
        json!({ "createOptions": "" }).as_object().unwrap().clone()
    );
}

#[test]
fn create_options_too_long_for_100_chunks_keep_the_rest_in_the_last() {
    let options = "é".repeat(512 * 100 + 7);
    let chunks = split_create_options(&options);
    assert_eq!(chunks.len(), 100);
    assert_eq!(
        chunks["createOptions99"].as_str().unwrap().chars().count(),
        519
    );
    assert_eq!(join_create_options(&chunks).unwrap(), Some(options));
}

#[test]
fn a_module_split_into_chunks_reads_back_its_create_options() {
    let options = format!("{{\"Labels\":{{\"l\":\"{}\"}}}}", "z".repeat(2000));
    let mut settings = split_create_options(&options);
    settings.insert("image".into(), json!("img"));
    let desired = agent_with_module(json!({ "type": "docker", "settings": settings }));
    let agent = EdgeAgentDesired::from_desired(&desired).unwrap();
    assert_eq!(
        agent.modules["m"].create_options.as_deref(),
        Some(options.as_str())
    );
}

#[test]
fn enums_print_and_serialize_as_the_manifest_spells_them() {
    assert_eq!(RestartPolicy::OnUnhealthy.to_string(), "on-unhealthy");
    assert_eq!(
        serde_json::to_value(RestartPolicy::OnFailure).unwrap(),
        json!("on-failure")
    );
    assert_eq!(
        serde_json::to_value(ImagePullPolicy::OnCreate).unwrap(),
        json!("on-create")
    );
    assert_eq!(DesiredStatus::Stopped.as_str(), "stopped");
    assert_eq!(
        serde_json::from_value::<RestartPolicy>(json!("always")).unwrap(),
        RestartPolicy::Always
    );
}

proptest! {
    #[test]
    fn splitting_then_joining_create_options_gives_them_back(options in any::<String>()) {
        let chunks = split_create_options(&options);
        prop_assert!(chunks.values().all(|c| c.as_str().is_some_and(|c| c.chars().count() <= 512) || chunks.len() == 100));
        prop_assert_eq!(join_create_options(&chunks).unwrap(), Some(options));
    }

    #[test]
    fn parsing_arbitrary_json_never_panics(v in arbitrary_json()) {
        let _ = DeploymentManifest::from_json(&v);
        let _ = EdgeAgentDesired::from_desired(&v);
        let _ = EdgeHubDesired::from_desired(&v);
    }
}

/// JSON values built from the manifest's own vocabulary, so parsing gets past the first checks.
fn arbitrary_json() -> impl Strategy<Value = Value> {
    let words = prop_oneof![
        Just("modulesContent"),
        Just("properties.desired"),
        Just("$edgeAgent"),
        Just("$edgeHub"),
        Just("schemaVersion"),
        Just("runtime"),
        Just("systemModules"),
        Just("modules"),
        Just("edgeAgent"),
        Just("edgeHub"),
        Just("type"),
        Just("settings"),
        Just("image"),
        Just("createOptions"),
        Just("createOptions01"),
        Just("env"),
        Just("value"),
        Just("routes"),
        Just("route"),
        Just("priority"),
        Just("timeToLiveSecs"),
        Just("path"),
        Just("args"),
        Just("1.1"),
        Just("docker"),
        Just("process"),
        Just("startupOrder"),
        Just("storeAndForwardConfiguration"),
    ]
    .prop_map(str::to_owned);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        words.clone().prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 5, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            proptest::collection::btree_map(words.clone(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
