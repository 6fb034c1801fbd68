//! Behaviour of the route language: parsing, source matching, sinks, conditions, built-ins, robustness.

mod conditions;
mod functions;
mod routes;

use proptest::prelude::*;

use super::eval::{Scope, Value};
use super::parser::parse_condition;
use super::*;

/// A message with these application properties (`None`: a key sent without `=`).
fn with_properties(pairs: &[(&str, Option<&str>)]) -> Message {
    Message {
        properties: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
            .collect(),
        ..Message::default()
    }
}

/// A message with these system properties, by internal name.
fn with_system(pairs: &[(&str, &str)]) -> Message {
    Message {
        system: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Message::default()
    }
}

/// A message whose body is `json`, declared as UTF-8 JSON.
fn json_message(json: &str) -> Message {
    Message {
        body: json.as_bytes().to_vec().into(),
        ..with_system(&[
            ("contentType", "application/json"),
            ("contentEncoding", "utf-8"),
        ])
    }
}

/// The value of a condition for a device telemetry message.
fn value_of(condition: &str, message: &Message) -> Value {
    let expr =
        parse_condition(condition).unwrap_or_else(|e| panic!("{condition:?} does not parse: {e}"));
    Scope::new(&MessageSource::Telemetry, message).evaluate(&expr)
}

/// Whether a condition holds for a device telemetry message.
fn holds(condition: &str, message: &Message) -> bool {
    Condition::parse(condition)
        .unwrap_or_else(|e| panic!("{condition:?} does not parse: {e}"))
        .matches(&MessageSource::Telemetry, message)
}

/// Whether a condition without properties holds.
fn is_true(condition: &str) -> bool {
    holds(condition, &Message::default())
}

/// Asserts that every condition is exactly true on an empty message.
fn assert_all_true(conditions: &[&str]) {
    for condition in conditions {
        assert!(is_true(condition), "{condition:?} should be true");
    }
}

/// Asserts that every condition is undefined on an empty message.
fn assert_all_undefined(conditions: &[&str]) {
    for condition in conditions {
        assert_eq!(
            value_of(condition, &Message::default()),
            Value::Undefined,
            "{condition:?}"
        );
    }
}

/// Conditions exercising every operator and built-in, for the robustness property.
const CONDITIONS: &[&str] = &[
    "$body.a.b = 1 OR $body.a[0] > 2 OR {$body.x} <> 'y' OR $body.list[3] ?? true",
    "as_number(temperature) > 30 AND NOT is_null(flag) AND is_defined($connectionModuleId)",
    "length($messageId) + index_of(lower(alert), 'x') * sign(-1) / 0 % 7 - abs(-3) >= exp(1)",
    "substring(name, 1) = substring(name, 0, 2) || concat(upper(a), lower(b), 'c') OR starts_with(a, b)",
    "ends_with($contentType, 'json') AND contains($contentEncoding, 'utf') AND is_string($body.s)",
    "power(as_number($body.n), square(2)) < ceiling(floor(sqrt(as_number(x)))) ?? is_bool(is_number(1))",
    "{$messageId} = $messageId AND -$body.n = - 1 AND NOT NOT null AND undefined <> 0x1F",
    "twin_change_includes(properties.reported.x) OR $body.a.b.c.d[10] != 'z'",
];

proptest! {
    #[test]
    fn parsing_never_panics_on_arbitrary_text(text in "(?s).{0,200}") {
        let _ = Route::parse(&text);
        let _ = Condition::parse(&text);
    }

    #[test]
    fn parsing_never_panics_on_arbitrary_token_soup(
        tokens in prop::collection::vec(
            prop::sample::select(vec![
                "(", ")", "{", "}", ",", "NOT", "AND", "OR", "-", "+", "*", "/", "%", "||", "??", "=", "<>", "!=",
                "<", "<=", ">", ">=", "1", "-2", "0x1F", ".5e3", "e5", "'a'", "\"b\\\"\"", "'", "\\u", "true", "null",
                "undefined", "a", "a-b", "$body.a[0]", "$body.", "$x", "abs", "concat", "substring", "/*", "*/",
                "[", "]", "twin_change_includes", "INTO", "WHERE", "$upstream",
            ]),
            0..60,
        )
    ) {
        let condition = tokens.join(" ");
        let _ = Route::parse(&format!("FROM /* WHERE {condition} INTO $upstream"));
        if let Ok(parsed) = Condition::parse(&condition) {
            let _ = parsed.matches(&MessageSource::Telemetry, &json_message("{\"a\":[1]}"));
        }
    }

    #[test]
    fn evaluation_never_panics_on_arbitrary_messages(
        body in prop::collection::vec(any::<u8>(), 0..64),
        json_body in "\\{(\"[a-z]\":(1|\"s\"|\\[1,2\\]|\\{\"b\":null\\}|true),?){0,4}\\}",
        use_json in any::<bool>(),
        content_type in prop::sample::select(vec!["application/json", "APPLICATION/JSON", "text/plain", ""]),
        encoding in prop::sample::select(vec!["utf-8", "UTF-16", "utf-32", "latin1", ""]),
        properties in prop::collection::btree_map("[a-zA-Z$]{1,8}", prop::option::of("\\PC{0,8}"), 0..6),
        system in prop::collection::btree_map(
            prop::sample::select(vec!["messageId", "contentType", "connectionModuleId", "MESSAGEID"]),
            "\\PC{0,8}",
            0..4,
        ),
        source in prop::sample::select(vec![
            MessageSource::Telemetry,
            MessageSource::from_sender(Some("m"), Some("o")),
            MessageSource::TwinChangeNotifications,
        ]),
    ) {
        let mut message = Message {
            body: (if use_json { json_body.into_bytes() } else { body }).into(),
            system: system.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            properties,
        };
        if !content_type.is_empty() {
            message.system.insert("contentType".into(), content_type.to_owned());
        }
        if !encoding.is_empty() {
            message.system.insert("contentEncoding".into(), encoding.to_owned());
        }
        for condition in CONDITIONS {
            let route = Route::parse(&format!("FROM /* WHERE {condition} INTO $upstream")).unwrap();
            let _ = route.matches(&source, &message);
        }
    }
}
