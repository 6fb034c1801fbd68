//! Behaviour of twin documents: patch, replace, versions, metadata and refusals.

use chrono::TimeZone;
use proptest::prelude::*;
use serde_json::json;

use super::*;

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().unwrap()
}

/// A value nested so that the section holding it under one key is `levels` deep (the section is level 1).
fn nested(levels: usize) -> Value {
    let mut value = json!({});
    for _ in 2..levels {
        value = json!({ "k": value });
    }
    json!({ "top": value })
}

fn serialized(twin: &Twin) -> String {
    serde_json::to_string(twin).unwrap()
}

#[test]
fn a_new_twin_starts_at_version_one_with_etag_one() {
    let twin = Twin::new(at(0));
    assert_eq!(twin.desired_version(), 1);
    assert_eq!(twin.reported_version(), 1);
    assert_eq!(twin.version(), 1);
    assert_eq!(twin.etag(), "AAAAAAAAAAE=");
    assert_eq!(
        twin.device_view(),
        json!({ "desired": { "$version": 1 }, "reported": { "$version": 1 } })
    );
}

#[test]
fn a_new_twin_has_root_metadata_in_both_sections() {
    let twin = Twin::new(at(0));
    assert_eq!(
        twin.properties_json(),
        json!({
            "desired": { "$metadata": { "$lastUpdated": "1970-01-01T00:00:00.0000000Z", "$lastUpdatedVersion": 1 }, "$version": 1 },
            "reported": { "$metadata": { "$lastUpdated": "1970-01-01T00:00:00.0000000Z" }, "$version": 1 }
        })
    );
}

#[test]
fn a_desired_patch_merges_and_returns_the_patch_with_its_version() {
    let mut twin = Twin::new(at(0));
    twin.patch_desired(&json!({ "threshold": 25, "x": { "a": 1, "b": 2 } }), at(1))
        .unwrap();
    let body = twin
        .patch_desired(&json!({ "threshold": 30, "x": { "a": null } }), at(2))
        .unwrap();
    assert_eq!(
        serde_json::to_string(&body).unwrap(),
        r#"{"threshold":30,"x":{"a":null},"$version":3}"#
    );
    assert_eq!(
        Value::Object(twin.desired().clone()),
        json!({ "threshold": 30, "x": { "b": 2 } })
    );
    assert_eq!(twin.desired_version(), 3);
    assert_eq!(twin.reported_version(), 1);
}

#[test]
fn the_device_view_of_the_captured_exchange_carries_both_versions() {
    // device_sdk_reconnect_wire.log: {"desired": {"threshold": 25, "$version": 4}, "reported": {"$version": 7}}
    let mut twin = Twin::new(at(0));
    for i in 0..3 {
        twin.patch_desired(&json!({ "threshold": 25 - i }), at(1))
            .unwrap();
    }
    twin.patch_desired(&json!({ "threshold": 25 }), at(1))
        .unwrap();
    let mut twin_reported = twin.clone();
    for _ in 0..6 {
        twin_reported.patch_reported(&json!({}), at(1)).unwrap();
    }
    assert_eq!(
        serde_json::to_string(&twin_reported.device_view()).unwrap(),
        r#"{"desired":{"threshold":25,"$version":5},"reported":{"$version":7}}"#
    );
}

#[test]
fn the_captured_reported_patch_deletes_with_null_and_bumps_the_version() {
    let mut twin = Twin::new(at(0));
    twin.patch_reported(&json!({ "gone": 1 }), at(1)).unwrap();
    let version = twin
        .patch_reported(
            &json!({ "status": "ok", "nested": { "a": 1 }, "gone": null }),
            at(2),
        )
        .unwrap();
    assert_eq!(version, 3);
    assert_eq!(
        Value::Object(twin.reported().clone()),
        json!({ "status": "ok", "nested": { "a": 1 } })
    );
}

#[test]
fn every_change_bumps_the_etag_and_twin_version() {
    let mut twin = Twin::new(at(0));
    twin.patch_desired(&json!({ "a": 1 }), at(1)).unwrap();
    twin.patch_reported(&json!({ "b": 1 }), at(1)).unwrap();
    twin.patch_tags(&json!({ "env": "t" })).unwrap();
    twin.replace_tags(&json!({})).unwrap();
    twin.replace_desired(&json!({}), at(1)).unwrap();
    assert_eq!(twin.version(), 6);
    assert_eq!(twin.etag(), "AAAAAAAAAAY=");
}

#[test]
fn a_replace_drops_missing_keys_and_returns_the_full_desired() {
    let mut twin = Twin::new(at(0));
    twin.patch_desired(&json!({ "x": 1, "y": 2 }), at(1))
        .unwrap();
    let body = twin.replace_desired(&json!({ "z": 2 }), at(2)).unwrap();
    assert_eq!(body, json!({ "z": 2, "$version": 3 }));
    assert_eq!(Value::Object(twin.desired().clone()), json!({ "z": 2 }));
}

#[test]
fn tags_patch_and_replace_never_reach_the_device_view() {
    let mut twin = Twin::new(at(0));
    twin.patch_tags(&json!({ "env": "t", "loc": { "b": 1 } }))
        .unwrap();
    twin.patch_tags(&json!({ "loc": null })).unwrap();
    assert_eq!(Value::Object(twin.tags().clone()), json!({ "env": "t" }));
    twin.replace_tags(&json!({ "only": true })).unwrap();
    assert_eq!(Value::Object(twin.tags().clone()), json!({ "only": true }));
    assert!(twin.device_view().get("tags").is_none());
    assert_eq!(twin.desired_version(), 1);
}

#[test]
fn an_echoed_version_or_metadata_at_the_top_of_a_patch_is_ignored() {
    let mut twin = Twin::new(at(0));
    let body = twin
        .patch_desired(&json!({ "a": 1, "$version": 99, "$metadata": {} }), at(1))
        .unwrap();
    assert_eq!(body, json!({ "a": 1, "$version": 2 }));
    assert_eq!(
        twin.patch_reported(&json!({ "$version": 7 }), at(1))
            .unwrap(),
        2
    );
    assert_eq!(Value::Object(twin.reported().clone()), json!({}));
}

#[test]
fn a_nested_dollar_key_is_refused() {
    let mut twin = Twin::new(at(0));
    let err = twin
        .patch_desired(&json!({ "a": { "$version": 1 } }), at(1))
        .unwrap_err();
    assert!(matches!(err, TwinError::IllegalKey { .. }));
    assert!(matches!(
        twin.patch_tags(&json!({ "$version": 1 })),
        Err(TwinError::IllegalKey { .. })
    ));
}

#[test]
fn desired_metadata_records_when_and_in_which_version_each_node_changed() {
    let mut twin = Twin::new(at(0));
    twin.patch_desired(&json!({ "t": { "a": 1, "b": 1 } }), at(10))
        .unwrap();
    twin.patch_desired(&json!({ "t": { "a": 2 } }), at(20))
        .unwrap();
    let props = twin.properties_json();
    let meta = &props["desired"]["$metadata"];
    assert_eq!(meta["$lastUpdated"], "1970-01-01T00:00:20.0000000Z");
    assert_eq!(meta["$lastUpdatedVersion"], 3);
    assert_eq!(meta["t"]["$lastUpdatedVersion"], 3);
    assert_eq!(meta["t"]["a"]["$lastUpdatedVersion"], 3);
    assert_eq!(meta["t"]["b"]["$lastUpdatedVersion"], 2);
    assert_eq!(
        meta["t"]["b"]["$lastUpdated"],
        "1970-01-01T00:00:10.0000000Z"
    );
    assert_eq!(props["desired"]["$version"], 3);
    assert_eq!(props["desired"]["t"], json!({ "a": 2, "b": 1 }));
}

#[test]
fn reported_metadata_has_no_version_stamps() {
    let mut twin = Twin::new(at(0));
    twin.patch_reported(&json!({ "r": { "x": 1 } }), at(5))
        .unwrap();
    let meta = &twin.properties_json()["reported"]["$metadata"];
    assert_eq!(
        meta["r"]["x"],
        json!({ "$lastUpdated": "1970-01-01T00:00:05.0000000Z" })
    );
    assert!(meta.get("$lastUpdatedVersion").is_none());
}

#[test]
fn a_scalar_replaced_by_an_object_gets_metadata_for_its_children() {
    let mut twin = Twin::new(at(0));
    twin.patch_desired(&json!({ "a": 1 }), at(1)).unwrap();
    twin.patch_desired(&json!({ "a": { "b": 1 } }), at(2))
        .unwrap();
    let meta = &twin.properties_json()["desired"]["$metadata"];
    assert_eq!(meta["a"]["b"]["$lastUpdatedVersion"], 3);
}

#[test]
fn ten_levels_are_accepted_and_eleven_refused() {
    let mut twin = Twin::new(at(0));
    twin.patch_desired(&nested(11), at(1)).unwrap();
    twin.patch_reported(&nested(11), at(1)).unwrap();
    twin.patch_tags(&nested(11)).unwrap();
    let before = serialized(&twin);
    assert_eq!(
        twin.patch_desired(&nested(12), at(2)),
        Err(TwinError::TooDeep { depth: 11 })
    );
    assert_eq!(
        twin.patch_reported(&nested(12), at(2)),
        Err(TwinError::TooDeep { depth: 11 })
    );
    assert_eq!(
        twin.replace_desired(&nested(12), at(2)),
        Err(TwinError::TooDeep { depth: 11 })
    );
    assert_eq!(
        twin.replace_tags(&nested(12)),
        Err(TwinError::TooDeep { depth: 11 })
    );
    assert_eq!(serialized(&twin), before);
}

#[test]
fn merging_into_an_existing_deep_object_can_exceed_the_depth() {
    let mut twin = Twin::new(at(0));
    twin.patch_desired(&nested(11), at(1)).unwrap();
    // Ten levels in the patch, but it lands one level below the existing "top".
    let mut deeper = json!({ "k": {} });
    for _ in 0..9 {
        deeper = json!({ "k": deeper });
    }
    let patch = json!({ "top": deeper });
    assert!(matches!(
        twin.patch_desired(&patch, at(2)),
        Err(TwinError::TooDeep { .. })
    ));
}

#[test]
fn patches_that_are_not_objects_are_refused() {
    let mut twin = Twin::new(at(0));
    for v in [json!(null), json!(1), json!("x"), json!([1])] {
        assert_eq!(twin.patch_desired(&v, at(1)), Err(TwinError::NotAnObject));
        assert_eq!(twin.patch_reported(&v, at(1)), Err(TwinError::NotAnObject));
        assert_eq!(twin.replace_tags(&v), Err(TwinError::NotAnObject));
    }
    assert_eq!(twin.version(), 1);
}

#[test]
fn a_desired_section_over_32_kb_is_refused_and_changes_nothing() {
    let mut twin = Twin::new(at(0));
    for i in 0..8 {
        twin.patch_desired(&json!({ format!("k{i}"): "x".repeat(4000) }), at(1))
            .unwrap();
    }
    let before = serialized(&twin);
    let err = twin
        .patch_desired(&json!({ "k8": "x".repeat(4000) }), at(2))
        .unwrap_err();
    assert!(
        matches!(
            err,
            TwinError::SectionTooLarge {
                section: "desired",
                limit: 32768,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(serialized(&twin), before);
}

#[test]
fn a_twin_survives_its_storage_format() {
    let mut twin = Twin::new(at(0));
    twin.patch_desired(&json!({ "a": { "b": [1, 2] } }), at(1))
        .unwrap();
    twin.patch_tags(&json!({ "t": 1 })).unwrap();
    let stored = serialized(&twin);
    let back: Twin = serde_json::from_str(&stored).unwrap();
    assert_eq!(back, twin);
    assert_eq!(serialized(&back), stored);
}

/// Keys, mostly legal, sometimes breaking one rule.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-d]{1,2}",
        1 => prop_oneof![Just("a.b".to_owned()), Just("$x".to_owned()), Just("a b".to_owned()), Just("\u{1}".to_owned()), Just(String::new())],
    ]
}

/// Scalars, mostly legal, sometimes too long or out of range; `null` deletes in a patch.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => any::<i32>().prop_map(Value::from),
        2 => "[a-z]{0,5}".prop_map(Value::from),
        1 => any::<bool>().prop_map(Value::from),
        2 => Just(Value::Null),
        1 => Just(Value::from("s".repeat(4097))),
        1 => Just(Value::from(i64::MAX)),
        1 => Just(Value::from(1.5)),
    ]
}

/// Patches of varied shapes; some sink a value 8 to 12 single-key objects deep, around the depth limit.
fn patch() -> impl Strategy<Value = Value> {
    let value = scalar().prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            proptest::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let deep =
        (proptest::collection::vec("[a-c]", 8..13), value.clone()).prop_map(|(path, leaf)| {
            path.into_iter()
                .rev()
                .fold(leaf, |inner, k| json!({ k: inner }))
        });
    let member = prop_oneof![4 => value, 1 => deep];
    proptest::collection::btree_map(key(), member, 0..5)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// RFC 7386 MergePatch, written from the RFC's pseudo-code as the reference.
fn reference_merge(target: &Value, patch: &Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut result = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    for (name, value) in patch {
        if value.is_null() {
            result.remove(name);
        } else {
            let merged = reference_merge(result.get(name).unwrap_or(&Value::Null), value);
            result.insert(name.clone(), merged);
        }
    }
    Value::Object(result)
}

proptest! {
    #[test]
    fn a_refused_patch_leaves_the_twin_byte_identical(first in patch(), second in patch()) {
        let mut twin = Twin::new(at(0));
        let _ = twin.patch_desired(&first, at(1));
        let _ = twin.patch_reported(&first, at(1));
        let _ = twin.patch_tags(&first);
        let before = serialized(&twin);
        if twin.clone().patch_desired(&second, at(2)).is_err() {
            prop_assert!(twin.patch_desired(&second, at(2)).is_err());
            prop_assert_eq!(serialized(&twin), before.clone());
        }
        if twin.clone().patch_reported(&second, at(2)).is_err() {
            prop_assert!(twin.patch_reported(&second, at(2)).is_err());
            prop_assert_eq!(serialized(&twin), before.clone());
        }
        if twin.clone().replace_desired(&second, at(2)).is_err() {
            prop_assert!(twin.replace_desired(&second, at(2)).is_err());
            prop_assert_eq!(serialized(&twin), before.clone());
        }
        if twin.clone().patch_tags(&second).is_err() {
            prop_assert!(twin.patch_tags(&second).is_err());
            prop_assert_eq!(serialized(&twin), before);
        }
    }

    #[test]
    fn an_accepted_desired_patch_reads_back_as_the_reference_merge(first in patch(), second in patch()) {
        let mut twin = Twin::new(at(0));
        let _ = twin.patch_desired(&first, at(1));
        let before = Value::Object(twin.desired().clone());
        let version = twin.desired_version();
        if let Ok(body) = twin.patch_desired(&second, at(2)) {
            prop_assert_eq!(Value::Object(twin.desired().clone()), reference_merge(&before, &second));
            prop_assert_eq!(twin.desired_version(), version + 1);
            prop_assert_eq!(&body["$version"], &Value::from(version + 1));
        }
    }

    #[test]
    fn an_accepted_reported_patch_reads_back_as_the_reference_merge(first in patch(), second in patch()) {
        let mut twin = Twin::new(at(0));
        let _ = twin.patch_reported(&first, at(1));
        let before = Value::Object(twin.reported().clone());
        if twin.patch_reported(&second, at(2)).is_ok() {
            prop_assert_eq!(Value::Object(twin.reported().clone()), reference_merge(&before, &second));
        }
    }

    #[test]
    fn metadata_mirrors_every_property_node(first in patch(), second in patch()) {
        let mut twin = Twin::new(at(0));
        let _ = twin.patch_desired(&first, at(1));
        let _ = twin.patch_desired(&second, at(2));
        let _ = twin.replace_desired(&first, at(3));
        prop_assert!(mirrors(twin.desired(), twin.desired_section().metadata()));
    }
}

/// Whether `meta` has a stamped node for exactly the keys of `properties`, recursively through objects.
fn mirrors(properties: &Map<String, Value>, meta: &Map<String, Value>) -> bool {
    let children: Vec<&String> = meta.keys().filter(|k| !k.starts_with('$')).collect();
    meta.contains_key("$lastUpdated")
        && children.len() == properties.len()
        && properties.iter().all(|(k, v)| match (v, meta.get(k)) {
            (Value::Object(p), Some(Value::Object(m))) => mirrors(p, m),
            (_, Some(Value::Object(m))) => {
                m.keys().all(|k| k.starts_with('$')) && m.contains_key("$lastUpdated")
            }
            _ => false,
        })
}

#[test]
fn a_merge_patch_keeps_the_order_of_the_keys_that_stay() {
    let mut target = json!({"a": 1, "b": 2, "c": 3, "d": {"x": 1, "y": 2, "z": 3}});
    let patch = json!({"b": null, "d": {"x": null, "w": 0}, "e": 5});
    let (Value::Object(target_map), Value::Object(patch_map)) = (&mut target, &patch) else {
        unreachable!()
    };
    super::merge(target_map, patch_map);
    assert_eq!(
        serde_json::to_string(&target).unwrap(),
        r#"{"a":1,"c":3,"d":{"y":2,"z":3,"w":0},"e":5}"#
    );
}
