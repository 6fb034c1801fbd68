//! The IoT Hub twin limits (AZURE-COMPAT §3.3), checked on the document a change would produce.

use serde_json::{Map, Value};

use super::TwinError;

/// Deepest nesting a section may hold, as IoT Hub counts it: the section itself is level 0, so
/// `tags: {one: {two: {... ten: {property: value}}}}` is the deepest document accepted.
pub(crate) const MAX_DEPTH: usize = 10;
/// Longest key, in UTF-8 bytes.
pub(crate) const MAX_KEY_BYTES: usize = 1024;
/// Longest string value, in UTF-8 bytes.
pub(crate) const MAX_STRING_BYTES: usize = 4096;
/// Smallest integer a twin may hold (-2^52).
pub(crate) const MIN_INTEGER: i64 = -4_503_599_627_370_496;
/// Largest integer a twin may hold (2^52 - 1).
pub(crate) const MAX_INTEGER: i64 = 4_503_599_627_370_495;
/// Size limit of the tags.
pub(crate) const TAGS_LIMIT: usize = 8 * 1024;
/// Size limit of the desired properties.
pub(crate) const DESIRED_LIMIT: usize = 32 * 1024;
/// Size limit of the reported properties.
pub(crate) const REPORTED_LIMIT: usize = 32 * 1024;

/// Checks a whole section (tags, desired or reported) against every limit.
pub(crate) fn check_section(
    section: &'static str,
    properties: &Map<String, Value>,
    limit: usize,
) -> Result<(), TwinError> {
    check_depth(properties, MAX_DEPTH)?;
    check_contents(properties)?;
    let size = object_size(properties);
    if size > limit {
        return Err(TwinError::SectionTooLarge {
            section,
            size,
            limit,
        });
    }
    Ok(())
}

/// Refuses an object nested more than `max` levels below itself (the object itself is level 0).
///
/// Arrays count as a level like objects: both nest, and counting them keeps every walk over a twin bounded.
/// The walk stops one level past `max`, so a hostile document cannot make it recurse deeply.
pub(crate) fn check_depth(object: &Map<String, Value>, max: usize) -> Result<(), TwinError> {
    fn walk(value: &Value, level: usize, max: usize) -> Result<(), TwinError> {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Object(map) => Box::new(map.values()),
            Value::Array(items) => Box::new(items.iter()),
            _ => return Ok(()),
        };
        if level > max {
            return Err(TwinError::TooDeep { depth: level });
        }
        children
            .into_iter()
            .try_for_each(|child| walk(child, level + 1, max))
    }
    if max == 0 {
        return Err(TwinError::TooDeep { depth: 1 });
    }
    object.values().try_for_each(|child| walk(child, 1, max))
}

/// Checks every key and scalar value; call it only after [`check_depth`], since it recurses freely.
fn check_contents(object: &Map<String, Value>) -> Result<(), TwinError> {
    for (key, value) in object {
        check_key(key)?;
        check_value(value)?;
    }
    Ok(())
}

fn check_value(value: &Value) -> Result<(), TwinError> {
    match value {
        Value::Object(map) => check_contents(map),
        Value::Array(items) => items.iter().try_for_each(check_value),
        Value::String(s) if s.len() > MAX_STRING_BYTES => {
            Err(TwinError::StringTooLong { len: s.len() })
        }
        Value::Number(n) => check_number(n),
        _ => Ok(()),
    }
}

/// Integers must fit in a double without loss; other numbers are doubles and always fit.
fn check_number(n: &serde_json::Number) -> Result<(), TwinError> {
    let fits = match (n.as_i64(), n.as_u64()) {
        (Some(i), _) => (MIN_INTEGER..=MAX_INTEGER).contains(&i),
        (None, Some(_)) => false,
        (None, None) => n.as_f64().is_some_and(f64::is_finite),
    };
    if fits {
        Ok(())
    } else {
        Err(TwinError::IntegerOutOfRange)
    }
}

/// Refuses empty and over-long keys, and keys with control characters, `.`, `$` or a space.
pub(crate) fn check_key(key: &str) -> Result<(), TwinError> {
    let refuse = |reason| {
        Err(TwinError::IllegalKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return refuse("keys may not be empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return refuse("keys may hold at most 1024 bytes");
    }
    // char::is_control is exactly the C0 and C1 control characters (and DEL).
    if key.chars().any(char::is_control) {
        return refuse("keys may not contain control characters");
    }
    if key.contains(['.', '$', ' ']) {
        return refuse("keys may not contain '.', '$' or ' '");
    }
    Ok(())
}

/// Σ key length + value length; numbers count 8, booleans 4 (and a null inside an array 4).
pub(crate) fn object_size(object: &Map<String, Value>) -> usize {
    object
        .iter()
        .map(|(k, v)| k.len().saturating_add(value_size(v)))
        .fold(0, usize::saturating_add)
}

fn value_size(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) => 4,
        Value::Number(_) => 8,
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(value_size).fold(0, usize::saturating_add),
        Value::Object(map) => object_size(map),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(map) => map,
            _ => unreachable!("tests pass objects"),
        }
    }

    /// A section whose innermost object is `levels` deep, counting the section itself as 1.
    fn nested(levels: usize) -> Map<String, Value> {
        let mut value = json!({ "leaf": 1 });
        for i in (2..levels).rev() {
            value = json!({ format!("k{i}"): value });
        }
        if levels == 1 {
            return object(json!({ "leaf": 1 }));
        }
        object(json!({ "k1": value }))
    }

    #[test]
    fn ten_levels_of_nesting_are_accepted_and_eleven_refused() {
        assert!(check_depth(&nested(11), MAX_DEPTH).is_ok());
        assert_eq!(
            check_depth(&nested(12), MAX_DEPTH),
            Err(TwinError::TooDeep { depth: 11 })
        );
    }

    #[test]
    fn arrays_count_as_a_level_of_nesting() {
        let mut value = json!(1);
        for _ in 0..10 {
            value = json!([value]);
        }
        assert!(check_depth(&object(json!({ "a": value.clone() })), MAX_DEPTH).is_ok());
        assert!(check_depth(&object(json!({ "a": [value] })), MAX_DEPTH).is_err());
    }

    #[test]
    fn keys_with_dots_dollars_spaces_or_controls_are_refused() {
        for key in [
            "a.b",
            "$version",
            "a b",
            "a\u{0}",
            "a\u{85}",
            "",
            &"k".repeat(1025),
        ] {
            assert!(
                matches!(check_key(key), Err(TwinError::IllegalKey { .. })),
                "{key:?}"
            );
        }
        assert!(check_key(&"k".repeat(1024)).is_ok());
        assert!(check_key("caf\u{e9}-_#").is_ok());
    }

    #[test]
    fn strings_up_to_4_kb_are_accepted() {
        assert!(check_contents(&object(json!({ "s": "x".repeat(4096) }))).is_ok());
        assert_eq!(
            check_contents(&object(json!({ "s": ["x".repeat(4097)] }))),
            Err(TwinError::StringTooLong { len: 4097 })
        );
    }

    #[test]
    fn integers_must_fit_in_a_double() {
        assert!(check_contents(&object(
            json!({ "min": MIN_INTEGER, "max": MAX_INTEGER, "f": 1.5e300 })
        ))
        .is_ok());
        for n in [
            json!(MAX_INTEGER + 1),
            json!(MIN_INTEGER - 1),
            json!(u64::MAX),
        ] {
            assert_eq!(
                check_contents(&object(json!({ "n": n }))),
                Err(TwinError::IntegerOutOfRange)
            );
        }
    }

    #[test]
    fn keys_inside_arrays_of_objects_are_checked() {
        assert!(matches!(
            check_contents(&object(json!({ "a": [{ "b.c": 1 }] }))),
            Err(TwinError::IllegalKey { .. })
        ));
    }

    #[test]
    fn size_counts_keys_strings_numbers_and_booleans() {
        // "ab" 2 + "xyz" 3, "n" 1 + 8, "b" 1 + 4, "o" 1 + ("i" 1 + 8), "l" 1 + (8 + 4)
        let doc =
            object(json!({ "ab": "xyz", "n": 1, "b": true, "o": { "i": 2.5 }, "l": [1, null] }));
        assert_eq!(object_size(&doc), 5 + 9 + 5 + 10 + 13);
    }

    #[test]
    fn a_section_over_its_size_limit_is_refused() {
        let doc =
            object(json!({ "a": "x".repeat(4000), "b": "x".repeat(4000), "c": "x".repeat(200) }));
        assert_eq!(
            check_section("tags", &doc, TAGS_LIMIT),
            Err(TwinError::SectionTooLarge {
                section: "tags",
                size: 8203,
                limit: 8192
            })
        );
        assert!(check_section("desired", &doc, DESIRED_LIMIT).is_ok());
    }
}
