//! The `$metadata` tree of a twin section: when (and, for desired, in which `$version`) each node last changed.
//!
//! The tree mirrors the properties: every node, the section root included, holds `$lastUpdated`, desired nodes
//! also `$lastUpdatedVersion`, and an object node holds one child entry per property. Property keys never start
//! with `$` (the limits forbid it), so they cannot collide with the stamp fields.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// Stamp field: when the node last changed.
pub(crate) const LAST_UPDATED: &str = "$lastUpdated";
/// Stamp field of desired nodes: the `$version` that last changed the node.
pub(crate) const LAST_UPDATED_VERSION: &str = "$lastUpdatedVersion";

/// What a change writes into the nodes it touches.
#[derive(Debug, Clone)]
pub(crate) struct Stamp {
    at: String,
    version: Option<u64>,
}

impl Stamp {
    /// A stamp for a change at `now`, recording `version` for desired nodes (`None` for reported).
    pub(crate) fn new(now: DateTime<Utc>, version: Option<u64>) -> Self {
        Self {
            at: format_timestamp(now),
            version,
        }
    }

    /// Writes the stamp fields into `node`, keeping its child entries.
    fn apply(&self, node: &mut Map<String, Value>) {
        node.insert(LAST_UPDATED.to_owned(), Value::String(self.at.clone()));
        if let Some(version) = self.version {
            node.insert(LAST_UPDATED_VERSION.to_owned(), Value::from(version));
        }
    }

    /// A node with just the stamp fields.
    pub(crate) fn node(&self) -> Map<String, Value> {
        let mut node = Map::new();
        self.apply(&mut node);
        node
    }
}

/// IoT Hub's timestamp form, `YYYY-MM-DDTHH:MM:SS.fffffffZ` (seven fractional digits, .NET ticks).
pub(crate) fn format_timestamp(at: DateTime<Utc>) -> String {
    // A leap second shows as nanos >= 1e9; clamp so the fraction keeps seven digits.
    let ticks = (at.timestamp_subsec_nanos() / 100).min(9_999_999);
    format!("{}.{ticks:07}Z", at.format("%Y-%m-%dT%H:%M:%S"))
}

/// The metadata of a value written in one go: every node stamped.
pub(crate) fn fresh(value: &Value, stamp: &Stamp) -> Value {
    let mut node = stamp.node();
    if let Value::Object(children) = value {
        for (key, child) in children {
            node.insert(key.clone(), fresh(child, stamp));
        }
    }
    Value::Object(node)
}

/// Updates `meta` (the node of an object) for a merge `patch` that produced `merged`.
///
/// The node and every node the patch names are stamped; entries of deleted keys go; nodes the patch does
/// not reach keep their stamps.
pub(crate) fn merge_patch(
    meta: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    merged: &Map<String, Value>,
    stamp: &Stamp,
) {
    stamp.apply(meta);
    for (key, patch_value) in patch {
        match (merged.get(key), patch_value) {
            (None, _) => {
                meta.shift_remove(key);
            }
            (Some(Value::Object(merged_child)), Value::Object(patch_child)) => {
                let entry = meta
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                if let Value::Object(child) = entry {
                    // A scalar that became an object leaves a node with only stamps: drop them, the walk restamps.
                    child.retain(|k, _| k.starts_with('$') || merged_child.contains_key(k));
                    merge_patch(child, patch_child, merged_child, stamp);
                }
            }
            (Some(value), _) => {
                meta.insert(key.clone(), fresh(value, stamp));
            }
        }
    }
}

/// The metadata of `new` replacing `old`: unchanged subtrees keep their stamps, everything else is stamped.
pub(crate) fn replace(
    old_meta: &Map<String, Value>,
    old: &Map<String, Value>,
    new: &Map<String, Value>,
    stamp: &Stamp,
) -> Map<String, Value> {
    let mut node = stamp.node();
    for (key, new_child) in new {
        let child = match (old.get(key), old_meta.get(key)) {
            (Some(old_child), Some(kept)) if old_child == new_child && kept.is_object() => {
                kept.clone()
            }
            (Some(Value::Object(old_child)), Some(Value::Object(child_meta))) => match new_child {
                Value::Object(new_object) => {
                    Value::Object(replace(child_meta, old_child, new_object, stamp))
                }
                other => fresh(other, stamp),
            },
            _ => fresh(new_child, stamp),
        };
        node.insert(key.clone(), child);
    }
    node
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn at(secs: i64, nanos: u32) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, nanos).single().unwrap()
    }

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(map) => map,
            _ => unreachable!("tests pass objects"),
        }
    }

    #[test]
    fn timestamps_have_seven_fractional_digits() {
        assert_eq!(
            format_timestamp(at(1_489_084_252, 316_724_800)),
            "2017-03-09T18:30:52.3167248Z"
        );
        assert_eq!(format_timestamp(at(0, 0)), "1970-01-01T00:00:00.0000000Z");
    }

    #[test]
    fn a_fresh_tree_stamps_every_node_and_leaf() {
        let stamp = Stamp::new(at(0, 0), Some(2));
        let meta = fresh(&json!({ "a": { "b": 1 }, "c": [1] }), &stamp);
        let s = json!({ "$lastUpdated": "1970-01-01T00:00:00.0000000Z", "$lastUpdatedVersion": 2 });
        let mut a = s.clone();
        a["b"] = s.clone();
        let mut expected = s.clone();
        expected["a"] = a;
        expected["c"] = s;
        assert_eq!(meta, expected);
    }

    #[test]
    fn a_merge_restamps_only_what_the_patch_touches() {
        let old = Stamp::new(at(0, 0), None);
        let new = Stamp::new(at(60, 0), None);
        let before = json!({ "a": { "x": 1, "y": 2 }, "b": 3, "gone": 4 });
        let mut meta = object(fresh(&before, &old));
        let patch = object(json!({ "a": { "x": 5 }, "gone": null }));
        let merged = object(json!({ "a": { "x": 5, "y": 2 }, "b": 3 }));
        merge_patch(&mut meta, &patch, &merged, &new);
        let stamp_of = |v: &Value| v[LAST_UPDATED].as_str().unwrap().to_owned();
        let meta = Value::Object(meta);
        assert_eq!(stamp_of(&meta), "1970-01-01T00:01:00.0000000Z");
        assert_eq!(stamp_of(&meta["a"]), "1970-01-01T00:01:00.0000000Z");
        assert_eq!(stamp_of(&meta["a"]["x"]), "1970-01-01T00:01:00.0000000Z");
        assert_eq!(stamp_of(&meta["a"]["y"]), "1970-01-01T00:00:00.0000000Z");
        assert_eq!(stamp_of(&meta["b"]), "1970-01-01T00:00:00.0000000Z");
        assert!(meta.get("gone").is_none());
    }

    #[test]
    fn a_replace_keeps_the_stamps_of_unchanged_subtrees() {
        let old_stamp = Stamp::new(at(0, 0), Some(1));
        let new_stamp = Stamp::new(at(60, 0), Some(2));
        let old =
            object(json!({ "same": { "k": 1 }, "changed": { "k": 1, "l": 2 }, "dropped": 1 }));
        let old_meta = object(fresh(&Value::Object(old.clone()), &old_stamp));
        let new =
            object(json!({ "same": { "k": 1 }, "changed": { "k": 2, "l": 2 }, "added": true }));
        let meta = Value::Object(replace(&old_meta, &old, &new, &new_stamp));
        assert_eq!(meta[LAST_UPDATED_VERSION], 2);
        assert_eq!(meta["same"][LAST_UPDATED_VERSION], 1);
        assert_eq!(meta["changed"][LAST_UPDATED_VERSION], 2);
        assert_eq!(meta["changed"]["k"][LAST_UPDATED_VERSION], 2);
        assert_eq!(meta["changed"]["l"][LAST_UPDATED_VERSION], 1);
        assert_eq!(meta["added"][LAST_UPDATED_VERSION], 2);
        assert!(meta.get("dropped").is_none());
    }
}
