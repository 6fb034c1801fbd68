//! Parsing: what is refused, and where the error points.

use crate::query::{Query, QueryCondition, QueryError, MAX_DEPTH, MAX_QUERY_LEN};

/// The error of a query that must not parse.
fn error(text: &str) -> QueryError {
    match Query::parse(text) {
        Ok(query) => panic!("{text:?} parsed as {query:?}"),
        Err(e) => e,
    }
}

/// Asserts the error's line and column and that its text holds `words`.
fn assert_error_at(text: &str, line: usize, column: usize, words: &str) {
    let e = error(text);
    assert_eq!(
        (e.line(), e.column()),
        (Some(line), Some(column)),
        "{text:?}: {e}"
    );
    assert!(e.to_string().contains(words), "{text:?}: {e}");
}

#[test]
fn a_syntax_error_names_line_and_column_and_what_was_expected() {
    let e = error("SELECT * FROM devices WHERE = 'US'");
    assert_eq!(
        e.to_string(),
        "syntax error at line 1, column 29: expected a value, found '='"
    );
    assert_eq!(e.column(), Some(29));
}

#[test]
fn errors_point_at_the_offending_token() {
    assert_error_at("FROM devices", 1, 1, "a query starts with SELECT");
    assert_error_at("SELECT FROM devices", 1, 8, "expected a property path");
    assert_error_at("SELECT * devices", 1, 10, "expected FROM");
    assert_error_at(
        "SELECT * FROM devices.jobs",
        1,
        15,
        "unsupported collection 'devices.jobs'",
    );
    assert_error_at("SELECT * FROM things", 1, 15, "unsupported collection");
    assert_error_at(
        "SELECT * FROM devices WHERE a = 1 b",
        1,
        35,
        "nothing may follow",
    );
    assert_error_at(
        "SELECT * FROM devices WHERE (a = 1",
        1,
        35,
        "missing ')' for the '(' at line 1, column 29",
    );
    assert_error_at(
        "SELECT * FROM devices WHERE a IN 'x'",
        1,
        34,
        "expected '['",
    );
    assert_error_at(
        "SELECT * FROM devices WHERE a IN [b]",
        1,
        35,
        "expected a string, number",
    );
    assert_error_at(
        "SELECT * FROM devices WHERE a IN [1 2]",
        1,
        37,
        "expected ',' or ']'",
    );
    assert_error_at(
        "SELECT * FROM devices WHERE a = 'open",
        1,
        33,
        "unterminated string",
    );
    assert_error_at(
        "SELECT * FROM devices WHERE a = '\\x'",
        1,
        33,
        "invalid escape sequence",
    );
    assert_error_at(
        "SELECT * FROM devices WHERE a = 1 = 2",
        1,
        35,
        "nothing may follow",
    );
    assert_error_at(
        "SELECT * FROM devices WHERE a.",
        1,
        31,
        "expected a name after '.'",
    );
    assert_error_at(
        "SELECT * FROM devices WHERE a # 1",
        1,
        31,
        "invalid character '#'",
    );
    assert_error_at(
        "SELECT * FROM devices WHERE tags.[[x",
        1,
        34,
        "'[[' without a closing ']]'",
    );
    assert_error_at(
        "SELECT TOP x * FROM devices",
        1,
        12,
        "whole number after TOP",
    );
    assert_error_at(
        "SELECT deviceId AS 'x' FROM devices",
        1,
        20,
        "expected a name after AS",
    );
    assert_error_at("SELECT * FROM devices GROUP deviceId", 1, 29, "expected BY");
    assert_error_at(
        "SELECT * FROM devices WHERE a = 1e999",
        1,
        33,
        "out of range",
    );
}

#[test]
fn columns_count_characters_within_their_line() {
    assert_error_at(
        "SELECT *\nFROM devices\n  WHERE tags.é = ",
        3,
        18,
        "expected a value",
    );
    assert_error_at(
        "SELECT * FROM devices WHERE tags.é = 'ü' AND ?",
        1,
        46,
        "invalid character '?'",
    );
}

#[test]
fn unknown_functions_and_wrong_arities_are_refused_with_the_name() {
    let e = error("SELECT * FROM devices WHERE frobnicate(deviceId)");
    assert_eq!(
        e,
        QueryError::UnknownFunction {
            line: 1,
            column: 29,
            name: "frobnicate".into()
        }
    );
    assert_error_at(
        "SELECT * FROM devices WHERE STARTSWITH(deviceId)",
        1,
        29,
        "1 given, expected 2 arguments",
    );
    assert_error_at(
        "SELECT * FROM devices WHERE is_defined()",
        1,
        29,
        "0 given, expected 1 argument",
    );
    assert_error_at(
        "SELECT COUNT(deviceId) FROM devices",
        1,
        8,
        "COUNT takes no argument",
    );
    assert_error_at("SELECT SUM() FROM devices", 1, 8, "expected one path");
    assert_error_at(
        "SELECT TOTAL(x) FROM devices",
        1,
        8,
        "unknown function 'TOTAL'",
    );
}

#[test]
fn aggregate_queries_only_project_grouped_paths() {
    assert_error_at(
        "SELECT deviceId, COUNT() FROM devices",
        1,
        8,
        "'deviceId' must be in GROUP BY",
    );
    assert_error_at(
        "SELECT * FROM devices GROUP BY status",
        1,
        8,
        "SELECT * cannot be combined",
    );
    assert!(Query::parse("SELECT status, COUNT() FROM devices GROUP BY status").is_ok());
}

#[test]
fn keywords_are_case_insensitive_and_are_plain_keys_after_a_dot() {
    for text in [
        "select * from devices where tags.in = 1 and NOT properties.reported.select = 'x'",
        "SeLeCt TOP 3 deviceId As id FrOm DeViCeS.MoDuLeS wHeRe deviceId nin ['a'] GrOuP bY deviceId",
        "SELECT * FROM devices WHERE properties.desired.$version > 1 AND tags.[[select]] = TRUE",
    ] {
        assert!(Query::parse(text).is_ok(), "{text}");
    }
}

#[test]
fn text_longer_than_the_limit_is_refused_without_a_position() {
    let long = format!(
        "SELECT * FROM devices WHERE deviceId = '{}'",
        "x".repeat(MAX_QUERY_LEN)
    );
    let e = error(&long);
    assert!(matches!(e, QueryError::TooLong { .. }));
    assert_eq!(e.column(), None);
    assert!(matches!(
        QueryCondition::parse(&"a".repeat(MAX_QUERY_LEN + 1)),
        Err(QueryError::TooLong { .. })
    ));
}

#[test]
fn nesting_past_the_depth_limit_is_refused() {
    let deep = format!(
        "{}a = 1{}",
        "(".repeat(MAX_DEPTH + 1),
        ")".repeat(MAX_DEPTH + 1)
    );
    assert!(matches!(
        QueryCondition::parse(&deep),
        Err(QueryError::TooDeep { .. })
    ));
    let ok = format!("{}a = 1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
    assert!(QueryCondition::parse(&ok)
        .unwrap()
        .matches(&serde_json::json!({"a": 1})));
    // The deepest calls and operators the limit allows still evaluate within a test thread's stack.
    let calls = format!(
        "{}LOWER(-(a)) = 'x'{}",
        "NOT (LENGTH(".repeat(MAX_DEPTH / 3 - 1),
        "))".repeat(MAX_DEPTH / 3 - 1)
    );
    let _ = QueryCondition::parse(&calls)
        .unwrap()
        .matches(&serde_json::json!({"a": 1}));
    let nots = format!("{}a = 1", "NOT ".repeat(MAX_DEPTH + 1));
    assert!(matches!(
        QueryCondition::parse(&nots),
        Err(QueryError::TooDeep { .. })
    ));
    let minus = format!("a = {}1", "-".repeat(MAX_DEPTH + 1));
    assert!(matches!(
        QueryCondition::parse(&minus),
        Err(QueryError::TooDeep { .. })
    ));
}

#[test]
fn long_or_chains_cost_no_depth() {
    let ids: Vec<String> = (0..300).map(|i| format!("deviceId = 'd{i}'")).collect();
    let condition = QueryCondition::parse(&ids.join(" OR ")).unwrap();
    assert!(condition.matches(&serde_json::json!({"deviceId": "d299"})));
    let sum = format!("a = {}", vec!["1"; 1000].join(" + "));
    let condition = QueryCondition::parse(&sum).unwrap();
    assert!(condition.matches(&serde_json::json!({"a": 1000})));
}
