//! The index that narrows fleet queries: how a twin's tags and reported properties are found by value.
//!
//! A query's [`Narrowing`] (the `deviceId`, `tags.PATH` and `properties.reported.PATH` equalities among its
//! top-level `AND` conjuncts) is checked in SQL so that only candidate twins are read; the evaluator checks
//! the whole condition on each (see `outpost_core::query::narrow`).
//!
//! - **SQLite** keeps an inverted table, `twin_values (device_id, module_id, path, value)`, one row per scalar
//!   leaf of a twin's tags and reported properties, written with the twin in the same transaction
//!   ([`entries`]), indexed on `(path, value)`. Paths and values are encoded here, so that what is written
//!   and what is looked up agree: a path is its section letter (`t` tags, `r` reported) and the JSON array of
//!   its keys; a value is `s:` and the string, `b:true`/`b:false`, or `n:` and the number as the evaluator
//!   sees it (an `f64`, so `1` and `1.0` are one entry). Leaves inside arrays are not indexed: a path cannot
//!   reach them.
//! - **PostgreSQL** has GIN (`jsonb_path_ops`) indexes on the twin's `tags` and reported `properties`, and a
//!   constraint is a containment (`@>`) of the document [`containment`] builds.
//!
//! Setting `OUTPOST_NO_QUERY_INDEX` (any value) in the hub's environment turns the narrowing off
//! ([`enabled`]): every query reads every document, as before the index, which the fleet benchmark measures
//! against.

use outpost_core::query::{Field, Literal, Narrowing};
use outpost_core::Twin;
use serde_json::{Map, Value};

/// The environment variable that turns the index's use off.
pub const DISABLE_ENV: &str = "OUTPOST_NO_QUERY_INDEX";

/// Whether queries are narrowed through the index (read once per process).
pub fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os(DISABLE_ENV).is_none())
}

/// `narrowing`, or nothing when the index is turned off.
pub fn applied(narrowing: Narrowing) -> Narrowing {
    if enabled() {
        narrowing
    } else {
        Narrowing::default()
    }
}

/// The encoded path of a field in `twin_values` (`None` for `deviceId`, which is a column).
pub fn path(field: &Field) -> Option<String> {
    let (section, keys) = match field {
        Field::DeviceId => return None,
        Field::Tag(keys) => ('t', keys),
        Field::Reported(keys) => ('r', keys),
    };
    Some(format!("{section}{}", Value::from(keys.clone())))
}

/// The encoded value of a literal in `twin_values`.
pub fn literal(literal: &Literal) -> String {
    match literal {
        Literal::String(s) => format!("s:{s}"),
        Literal::Bool(b) => format!("b:{b}"),
        Literal::Number(n) => number(*n),
    }
}

fn number(n: f64) -> String {
    // -0 equals 0 for the evaluator.
    let n = if n == 0.0 { 0.0 } else { n };
    format!("n:{n}")
}

/// The `(path, value)` rows of `twin_values` for a twin: every scalar leaf of its tags and reported properties.
pub fn entries(twin: &Twin) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut keys = Vec::new();
    leaves('t', twin.tags(), &mut keys, &mut found);
    leaves('r', twin.reported(), &mut keys, &mut found);
    found
}

fn leaves(
    section: char,
    object: &Map<String, Value>,
    keys: &mut Vec<String>,
    found: &mut Vec<(String, String)>,
) {
    for (key, value) in object {
        keys.push(key.clone());
        let encoded = match value {
            Value::Object(inner) => {
                leaves(section, inner, keys, found);
                None
            }
            Value::String(s) => Some(format!("s:{s}")),
            Value::Bool(b) => Some(format!("b:{b}")),
            Value::Number(n) => n.as_f64().map(number),
            Value::Null | Value::Array(_) => None,
        };
        if let Some(value) = encoded {
            found.push((format!("{section}{}", Value::from(keys.clone())), value));
        }
        keys.pop();
    }
}

/// The JSON a section (`tags` or the reported properties) must contain for `field` to equal `literal`
/// (PostgreSQL's `@>`); `None` for `deviceId`.
pub fn containment(field: &Field, literal: &Literal) -> Option<Value> {
    let keys = match field {
        Field::DeviceId => return None,
        Field::Tag(keys) | Field::Reported(keys) => keys,
    };
    Some(keys.iter().rev().fold(literal.to_json(), |inner, key| {
        let mut object = Map::new();
        object.insert(key.clone(), inner);
        Value::Object(object)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;

    fn twin(tags: &Value, reported: &Value) -> Twin {
        let mut twin = Twin::new(Utc::now());
        twin.replace_tags(tags).unwrap();
        twin.patch_reported(reported, Utc::now()).unwrap();
        twin
    }

    #[test]
    fn every_scalar_leaf_outside_arrays_is_an_entry_that_its_equality_finds() {
        let twin = twin(
            &json!({"site": "north", "rack": {"row": 3, "on": true}, "list": ["a"], "gone": null}),
            &json!({"fw": 2.0}),
        );
        let mut found = entries(&twin);
        found.sort();
        let tag = |keys: &[&str]| path(&Field::Tag(keys.iter().map(|k| (*k).to_owned()).collect()));
        let mut expected = vec![
            (tag(&["rack", "on"]).unwrap(), literal(&Literal::Bool(true))),
            (
                tag(&["rack", "row"]).unwrap(),
                literal(&Literal::Number(3.0)),
            ),
            (
                tag(&["site"]).unwrap(),
                literal(&Literal::String("north".into())),
            ),
            (
                path(&Field::Reported(vec!["fw".into()])).unwrap(),
                literal(&Literal::Number(2.0)),
            ),
        ];
        expected.sort();
        assert_eq!(found, expected);
    }

    #[test]
    fn a_containment_nests_the_literal_under_its_keys() {
        let field = Field::Reported(vec!["a".into(), "b".into()]);
        assert_eq!(
            containment(&field, &Literal::Number(2.0)),
            Some(json!({"a": {"b": 2}}))
        );
        assert_eq!(containment(&Field::DeviceId, &Literal::Bool(true)), None);
    }
}
