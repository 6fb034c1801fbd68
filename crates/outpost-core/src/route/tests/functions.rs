//! Every built-in function, its results and its undefined cases.

use super::*;

#[test]
fn math_functions_compute_on_numbers() {
    assert_all_true(&[
        "abs(-2.5) = 2.5",
        "exp(0) = 1",
        "power(2, 10) = 1024",
        "square(-3) = 9",
        "ceiling(1.2) = 2",
        "ceiling(-1.2) = -1",
        "floor(1.8) = 1",
        "floor(-1.2) = -2",
        "sign(-3) = -1",
        "sign(0) = 0",
        "sign(4.5) = 1",
        "sqrt(16) = 4",
    ]);
}

#[test]
fn math_functions_are_undefined_for_non_numbers_and_nan() {
    assert_all_undefined(&[
        "abs('1')",
        "exp(null)",
        "power(2, '3')",
        "square(true)",
        "ceiling(undefined)",
        "floor('x')",
        "sign('x')",
        "sqrt(-1)",
        "power(-8, 1 / 3)",
    ]);
}

#[test]
fn as_number_converts_numeric_strings() {
    assert_all_true(&[
        "as_number('42') = 42",
        "as_number(' 4.5 ') = 4.5",
        "as_number('-1e3') = -1000",
        "as_number(7) = 7",
    ]);
    assert_all_undefined(&[
        "as_number('abc')",
        "as_number('')",
        "as_number(true)",
        "as_number(null)",
        "as_number('NaN')",
    ]);
}

#[test]
fn type_predicates_answer_true_or_false_for_every_value() {
    assert_all_true(&[
        "is_bool(true)",
        "NOT is_bool('true')",
        "NOT is_bool(undefined)",
        "is_defined(null)",
        "is_defined(0)",
        "NOT is_defined(undefined)",
        "NOT is_defined(missing)",
        "is_null(null)",
        "NOT is_null(undefined)",
        "NOT is_null('null')",
        "is_number(1)",
        "is_number(0x1)",
        "NOT is_number('1')",
        "is_string('a')",
        "is_string('')",
        "NOT is_string(1)",
        "NOT is_string(undefined)",
    ]);
}

#[test]
fn string_functions_transform_and_search_strings() {
    assert_all_true(&[
        "concat('a', 'b') = 'ab'",
        "concat('a', 'b', 'c', 'd') = 'abcd'",
        "length('héllo') = 5",
        "length('') = 0",
        "lower('AbC É') = 'abc é'",
        "upper('abc é') = 'ABC É'",
        "substring('hello', 1) = 'ello'",
        "substring('hello', 5) = ''",
        "substring('hello', 1, 3) = 'ell'",
        "substring('hello', 0, 5) = 'hello'",
        "substring('héllo', 1.9, 1) = 'é'",
        "index_of('héllo', 'l') = 2",
        "index_of('hello', 'z') = -1",
        "index_of('hello', '') = 0",
        "starts_with('hello', 'he')",
        "NOT starts_with('hello', 'He')",
        "ends_with('hello', 'lo')",
        "NOT ends_with('hello', 'he')",
        "contains('hello', 'ell')",
        "NOT contains('hello', 'LL')",
    ]);
}

#[test]
fn string_functions_are_undefined_for_non_strings_and_out_of_range_indexes() {
    assert_all_undefined(&[
        "concat('a', 1)",
        "concat('a', undefined)",
        "length(12)",
        "lower(null)",
        "upper(true)",
        "substring('hello', 6)",
        "substring('hello', -1)",
        "substring('hello', 5, 0)",
        "substring('hello', 2, 4)",
        "substring('hello', 1, -1)",
        "substring(1, 1)",
        "index_of('a', 1)",
        "starts_with(1, '1')",
        "ends_with('1', null)",
        "contains(undefined, 'a')",
    ]);
}

#[test]
fn function_names_ignore_case() {
    assert_all_true(&[
        "IS_DEFINED(1)",
        "Lower('A') = 'a'",
        "StArTs_WiTh('ab', 'a')",
        "ABS(-1) = 1",
    ]);
}

#[test]
fn twin_change_includes_looks_into_twin_change_notifications_only() {
    let condition =
        Condition::parse("twin_change_includes(properties.reported.telemetry.interval)").unwrap();
    let absent = Condition::parse("twin_change_includes(properties.reported.other)").unwrap();
    let notification = Message {
        body: bytes::Bytes::from_static(
            br#"{"properties":{"reported":{"telemetry":{"interval":10},"other":null}}}"#,
        ),
        ..Message::default()
    };
    let twin = MessageSource::TwinChangeNotifications;
    assert!(condition.matches(&twin, &notification));
    assert!(!absent.matches(&twin, &notification));
    let negated = Condition::parse("NOT twin_change_includes(properties.reported.other)").unwrap();
    assert!(
        negated.matches(&twin, &notification),
        "a missing or null path is false, not undefined"
    );
    assert!(!condition.matches(&MessageSource::Telemetry, &notification));
    let negated =
        Condition::parse("NOT twin_change_includes(properties.reported.telemetry)").unwrap();
    assert!(
        !negated.matches(&MessageSource::Telemetry, &notification),
        "other sources are undefined"
    );
    let route = Route::parse(
        "FROM /twinChangeNotifications WHERE twin_change_includes(properties.reported.telemetry) INTO $upstream",
    )
    .unwrap();
    assert!(route.matches(&twin, &notification));
}
