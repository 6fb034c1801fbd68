//! The examples of IoT Hub's query documentation ("Queries for IoT Hub device and module twins", "IoT Hub
//! query language"), run over small fleets with the rows IoT Hub documents.

use serde_json::{json, Value};

use crate::query::{Collection, Query, QueryCondition};

/// A device twin as the REST API returns it.
fn twin(device: &str, tags: &Value, reported: &Value) -> Value {
    json!({
        "deviceId": device,
        "etag": "AAAAAAAAAAE=",
        "version": 2,
        "status": "enabled",
        "connectionState": "Disconnected",
        "lastActivityTime": "0001-01-01T00:00:00Z",
        "capabilities": {"iotEdge": false},
        "tags": tags,
        "properties": {
            "desired": {"$metadata": {}, "$version": 1},
            "reported": reported,
        },
    })
}

/// A fleet in the shape of the documentation's sample twin.
fn fleet() -> Vec<Value> {
    vec![
        twin(
            "dev-us-1",
            &json!({"location": {"region": "US", "plant": "Redmond43"}}),
            &json!({"connectivity": {"type": "cellular"}, "connectivityKind": "wired",
                    "telemetryConfig": {"sendFrequency": "5m", "status": "Success", "sendFrequencyInSecs": 300}}),
        ),
        twin(
            "dev-us-2",
            &json!({"location": {"region": "US", "plant": "Redmond43"}}),
            &json!({"connectivityKind": "wifi",
                    "telemetryConfig": {"sendFrequency": "1m", "status": "Pending", "sendFrequencyInSecs": 60}}),
        ),
        twin(
            "dev-eu-1",
            &json!({"location": {"region": "EU", "plant": "Dublin1"}}),
            &json!({"connectivityKind": "cellular",
                    "telemetryConfig": {"sendFrequency": "5m", "status": "Success", "sendFrequencyInSecs": 300}}),
        ),
        twin(
            "x-untagged",
            &json!({}),
            &json!({"telemetryConfig": {"status": "Error"}}),
        ),
    ]
}

/// The device ids of the rows.
fn ids(rows: &[Value]) -> Vec<&str> {
    rows.iter()
        .map(|r| r["deviceId"].as_str().unwrap_or("?"))
        .collect()
}

/// Runs `text` over `documents`.
fn run(text: &str, documents: &[Value]) -> Vec<Value> {
    Query::parse(text)
        .unwrap_or_else(|e| panic!("{text:?} does not parse: {e}"))
        .run(documents)
}

#[test]
fn documented_device_twin_filters_select_the_documented_devices() {
    let fleet = fleet();
    let table: &[(&str, &[&str])] = &[
        ("SELECT * FROM devices", &["dev-us-1", "dev-us-2", "dev-eu-1", "x-untagged"]),
        ("SELECT * FROM devices WHERE tags.location.region = 'US'", &["dev-us-1", "dev-us-2"]),
        (
            "SELECT * FROM devices WHERE tags.location.region = 'US' \
             AND properties.reported.telemetryConfig.sendFrequency = '5m'",
            &["dev-us-1"],
        ),
        (
            "SELECT * FROM devices WHERE tags.location.region = 'US' \
             AND properties.reported.telemetryConfig.sendFrequencyInSecs >= 60",
            &["dev-us-1", "dev-us-2"],
        ),
        (
            "SELECT * FROM devices WHERE properties.reported.connectivityKind IN ['wired', 'wifi']",
            &["dev-us-1", "dev-us-2"],
        ),
        (
            "SELECT * FROM devices WHERE properties.reported.connectivityKind NIN ['wired', 'wifi']",
            &["dev-eu-1"],
        ),
        ("SELECT * FROM devices WHERE is_defined(tags.location)", &["dev-us-1", "dev-us-2", "dev-eu-1"]),
        ("SELECT * FROM devices WHERE NOT IS_DEFINED(tags.location)", &["x-untagged"]),
        ("SELECT * FROM devices WHERE STARTSWITH(deviceId, 'x')", &["x-untagged"]),
        ("SELECT * FROM devices WHERE ENDSWITH(deviceId, '-1')", &["dev-us-1", "dev-eu-1"]),
        ("SELECT * FROM devices WHERE CONTAINS(LOWER(tags.location.plant), 'redmond')", &["dev-us-1", "dev-us-2"]),
        (
            "select * from DEVICES where properties.reported.connectivity.type = 'cellular' \
             or tags.location.region = \"EU\"",
            &["dev-us-1", "dev-eu-1"],
        ),
        ("SELECT * FROM devices WHERE capabilities.iotEdge = false AND status = 'enabled'", &[
            "dev-us-1", "dev-us-2", "dev-eu-1", "x-untagged",
        ]),
        (
            "SELECT * FROM devices WHERE properties.reported.telemetryConfig.sendFrequencyInSecs / 60 = 5",
            &["dev-us-1", "dev-eu-1"],
        ),
        ("SELECT * FROM devices WHERE tags.location.region != 'US'", &["dev-eu-1"]),
        ("SELECT TOP 2 * FROM devices WHERE is_object(tags)", &["dev-us-1", "dev-us-2"]),
    ];
    for (text, expected) in table {
        assert_eq!(ids(&run(text, &fleet)), *expected, "{text}");
    }
}

#[test]
fn documented_aggregates_count_and_group() {
    let fleet = fleet();
    assert_eq!(
        run(
            "SELECT COUNT() as totalNumberOfDevices FROM devices",
            &fleet
        ),
        vec![json!({"totalNumberOfDevices": 4})]
    );
    assert_eq!(
        run(
            "SELECT properties.reported.telemetryConfig.status AS status, COUNT() AS numberOfDevices \
             FROM devices GROUP BY properties.reported.telemetryConfig.status",
            &fleet
        ),
        vec![
            json!({"status": "Success", "numberOfDevices": 2}),
            json!({"status": "Pending", "numberOfDevices": 1}),
            json!({"status": "Error", "numberOfDevices": 1}),
        ]
    );
    assert_eq!(
        run(
            "SELECT tags.location.region, COUNT(), SUM(properties.reported.telemetryConfig.sendFrequencyInSecs), \
             AVG(properties.reported.telemetryConfig.sendFrequencyInSecs) AS avg, \
             MIN(deviceId) AS first, MAX(properties.reported.telemetryConfig.sendFrequencyInSecs) AS slowest \
             FROM devices GROUP BY tags.location.region",
            &fleet
        ),
        vec![
            json!({"region": "US", "$1": 2, "$2": 360, "avg": 180, "first": "dev-us-1", "slowest": 300}),
            json!({"region": "EU", "$1": 1, "$2": 300, "avg": 300, "first": "dev-eu-1", "slowest": 300}),
            json!({"$1": 1, "$2": 0, "first": "x-untagged"}),
        ],
        "devices without the grouped path form their own group without that key"
    );
    assert_eq!(
        run(
            "SELECT COUNT() AS n FROM devices WHERE tags.location.region = 'nowhere'",
            &fleet
        ),
        vec![json!({"n": 0})]
    );
}

#[test]
fn documented_projections_keep_the_last_segment_or_the_alias() {
    let fleet = fleet();
    assert_eq!(
        run(
            "SELECT deviceId, tags.location.region, properties.reported.telemetryConfig AS config \
             FROM devices WHERE deviceId IN ['dev-eu-1', 'x-untagged']",
            &fleet
        ),
        vec![
            json!({"deviceId": "dev-eu-1", "region": "EU",
                   "config": {"sendFrequency": "5m", "status": "Success", "sendFrequencyInSecs": 300}}),
            json!({"deviceId": "x-untagged", "config": {"status": "Error"}}),
        ]
    );
}

#[test]
fn documented_module_twin_queries_read_devices_modules() {
    let module = |device: &str, module: &str, status: &str| {
        let mut twin = twin(device, &json!({}), &json!({"status": status}));
        twin["moduleId"] = json!(module);
        twin
    };
    let modules = vec![
        module("d1", "scanner", "scanning"),
        module("d1", "other", "idle"),
        module("d2", "scanner", "scanning"),
    ];
    let query =
        Query::parse("SELECT * FROM devices.modules WHERE properties.reported.status = 'scanning'")
            .unwrap();
    assert_eq!(query.collection(), Collection::Modules);
    assert_eq!(
        query.run(&modules),
        vec![modules[0].clone(), modules[2].clone()]
    );
    assert_eq!(
        run(
            "SELECT * FROM devices.modules WHERE properties.reported.status = 'scanning' AND deviceId IN ['d2']",
            &modules
        ),
        vec![modules[2].clone()]
    );
    assert_eq!(
        Query::parse("SELECT * FROM devices").unwrap().collection(),
        Collection::Devices
    );
}

#[test]
fn configuration_paths_with_special_characters_use_double_brackets() {
    let mut device = twin("d1", &json!({"my tag": "a-b"}), &json!({}));
    device["configurations"] = json!({"my-config": {"status": "Applied"}});
    let applied = QueryCondition::parse("configurations.[[my-config]].status = 'Applied'").unwrap();
    assert!(applied.matches(&device));
    assert!(QueryCondition::parse("tags.[[my tag]] = 'a-b'")
        .unwrap()
        .matches(&device));
    assert!(
        !QueryCondition::parse("configurations.[[other]].status = 'Applied'")
            .unwrap()
            .matches(&device)
    );
}

#[test]
fn a_target_condition_of_star_matches_every_device() {
    let condition = QueryCondition::parse(" * ").unwrap();
    assert!(fleet().iter().all(|d| condition.matches(d)));
    assert!(QueryCondition::parse("").is_err());
}

#[test]
fn job_and_configuration_conditions_use_the_where_grammar() {
    let fleet = fleet();
    let condition =
        QueryCondition::parse("tags.location.region='US' and deviceId <> 'dev-us-2'").unwrap();
    let chosen: Vec<&str> = fleet
        .iter()
        .filter(|d| condition.matches(d))
        .map(|d| d["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(chosen, ["dev-us-1"]);
}

#[test]
fn a_query_is_aggregate_only_with_aggregates_or_group_by() {
    assert!(!Query::parse("SELECT * FROM devices")
        .unwrap()
        .is_aggregate());
    assert!(!Query::parse("SELECT deviceId FROM devices")
        .unwrap()
        .is_aggregate());
    assert!(Query::parse("SELECT COUNT() FROM devices")
        .unwrap()
        .is_aggregate());
    assert!(Query::parse("SELECT status FROM devices GROUP BY status")
        .unwrap()
        .is_aggregate());
}

#[test]
fn matches_tests_the_where_clause_alone() {
    let fleet = fleet();
    let query =
        Query::parse("SELECT COUNT() FROM devices WHERE tags.location.region = 'EU'").unwrap();
    assert!(query.matches(&fleet[2]));
    assert!(!query.matches(&fleet[0]));
    assert!(Query::parse("SELECT deviceId FROM devices")
        .unwrap()
        .matches(&fleet[3]));
}

#[test]
fn undefined_and_unlike_types_compare_as_false() {
    let device = twin(
        "d",
        &json!({"n": 5, "s": "5", "b": true, "z": null, "o": {"a": 1}}),
        &json!({}),
    );
    let holds = |c: &str| QueryCondition::parse(c).unwrap().matches(&device);
    assert!(holds(
        "tags.n = 5 AND tags.s = '5' AND tags.b = true AND tags.z = null"
    ));
    assert!(!holds("tags.n = '5'"));
    assert!(!holds("tags.s > 4"));
    assert!(
        !holds("tags.missing = 1") && !holds("tags.missing != 1") && !holds("NOT tags.missing = 1")
    );
    assert!(!holds("tags.o = tags.o"), "objects are not compared");
    assert!(holds("tags.missing = 1 OR tags.n = 5"));
    assert!(holds("IS_OBJECT(tags.o) AND IS_PRIMITIVE(tags.z) AND NOT IS_PRIMITIVE(tags.o) AND IS_NULL(tags.z)"));
    assert!(holds(
        "IS_NUMBER(tags.n) AND IS_STRING(tags.s) AND IS_BOOL(tags.b) AND NOT IS_ARRAY(tags.o)"
    ));
    assert!(holds(
        "tags.n * 2 - 1 = 9 AND -tags.n = -5 AND tags.n % 2 = 1 AND LENGTH(tags.s) = 1"
    ));
    assert!(holds(
        "UPPER(deviceId) = 'D' AND tags.s < 'a' AND tags.z IN [null]"
    ));
    assert!(!holds("tags.missing NIN [1]"));
}

#[test]
fn not_in_reads_as_nin() {
    let fleet = fleet();
    assert_eq!(
        ids(&run(
            "SELECT * FROM devices WHERE tags.location.region NOT IN ['US']",
            &fleet
        )),
        ["dev-eu-1"]
    );
}

#[test]
fn groups_keep_missing_apart_from_null_and_numbers_by_value() {
    let documents = [
        json!({"deviceId": "a", "tags": {"v": 1}}),
        json!({"deviceId": "b", "tags": {"v": 1.0}}),
        json!({"deviceId": "c", "tags": {"v": null}}),
        json!({"deviceId": "d", "tags": {}}),
        json!({"deviceId": "e", "tags": {"v": "1"}}),
    ];
    assert_eq!(
        run(
            "SELECT tags.v, COUNT() AS n FROM devices GROUP BY tags.v",
            &documents
        ),
        vec![
            json!({"v": 1, "n": 2}),
            json!({"v": null, "n": 1}),
            json!({"n": 1}),
            json!({"v": "1", "n": 1}),
        ]
    );
}
