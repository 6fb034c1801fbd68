//! Whole routes: the documented examples, sources, sinks and refused routes.

use super::*;

fn module_input(module: &str, input: &str) -> Sink {
    Sink::ModuleInput {
        module: ModuleId::new(module).unwrap(),
        input: input.to_owned(),
    }
}

fn output(module: &str, output: &str) -> MessageSource {
    MessageSource::from_sender(Some(module), Some(output))
}

fn parse_error(route: &str) -> RouteError {
    Route::parse(route).expect_err(route)
}

#[test]
fn a_module_output_routes_into_another_modules_input() {
    let route = Route::parse(
        r#"FROM /messages/modules/a/outputs/o1 INTO BrokeredEndpoint("/modules/b/inputs/i1")"#,
    )
    .unwrap();
    assert_eq!(route.source.as_str(), "/messages/modules/a/outputs/o1/");
    assert_eq!(route.condition, None);
    assert_eq!(route.sink, module_input("b", "i1"));
    assert!(route.matches(&output("a", "o1"), &Message::default()));
    assert!(!route.matches(&output("a", "o2"), &Message::default()));
    assert!(!route.matches(&output("b", "o1"), &Message::default()));
    assert!(!route.matches(&MessageSource::Telemetry, &Message::default()));
}

#[test]
fn not_is_defined_connection_module_id_sends_only_device_telemetry_upstream() {
    let route =
        Route::parse("FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO $upstream")
            .unwrap();
    assert_eq!(route.sink, Sink::Upstream);
    let from_device = with_system(&[("connectionDeviceId", "leaf")]);
    let from_module = with_system(&[
        ("connectionDeviceId", "edge"),
        ("connectionModuleId", "filter"),
    ]);
    assert!(route.matches(&MessageSource::Telemetry, &from_device));
    assert!(!route.matches(&output("filter", "out"), &from_module));
}

#[test]
fn from_slash_star_matches_every_message_source() {
    let route = Route::parse("FROM /* INTO $upstream").unwrap();
    assert_eq!(route.source.as_str(), "/");
    for source in [
        MessageSource::Telemetry,
        MessageSource::from_sender(Some("m"), None),
        output("m", "o"),
        MessageSource::TwinChangeNotifications,
    ] {
        assert!(route.matches(&source, &Message::default()), "{source:?}");
    }
}

#[test]
fn from_messages_star_matches_telemetry_and_modules_but_not_twin_changes() {
    let route = Route::parse("FROM /messages/* INTO $upstream").unwrap();
    assert!(route.matches(&MessageSource::Telemetry, &Message::default()));
    assert!(route.matches(&output("m", "o"), &Message::default()));
    assert!(!route.matches(&MessageSource::TwinChangeNotifications, &Message::default()));
}

#[test]
fn a_module_source_matches_its_outputs_but_not_a_module_whose_name_it_prefixes() {
    let route = Route::parse("FROM /messages/modules/m/* INTO $upstream").unwrap();
    assert!(route.matches(
        &MessageSource::from_sender(Some("m"), None),
        &Message::default()
    ));
    assert!(route.matches(&output("m", "o"), &Message::default()));
    assert!(!route.matches(&output("mm", "o"), &Message::default()));
    assert!(!route.matches(&MessageSource::Telemetry, &Message::default()));
}

#[test]
fn source_matching_ignores_case() {
    let route = Route::parse("FROM /Messages/Modules/Filter/Outputs/* INTO $upstream").unwrap();
    assert!(route.matches(&output("filter", "OUT"), &Message::default()));
}

#[test]
fn route_sources_are_normalised_like_edge_hub() {
    assert_eq!(
        RouteSource::new(" /messages/modules/a/outputs/* ").as_str(),
        "/messages/modules/a/outputs/"
    );
    assert_eq!(
        RouteSource::new("/messages/modules/a*").as_str(),
        "/messages/modules/a/"
    );
    assert_eq!(RouteSource::new("/*").as_str(), "/");
    assert_eq!(
        RouteSource::new("/twinChangeNotifications").as_str(),
        "/twinChangeNotifications/"
    );
    let spaced = Route::parse("FROM / messages / modules / a INTO $upstream").unwrap();
    assert_eq!(spaced.source.as_str(), "/messages/modules/a/");
}

#[test]
fn source_segments_that_lex_as_numbers_or_system_properties_are_accepted() {
    let route = Route::parse("FROM /messages/modules/$edgeHub/outputs/3 INTO $upstream").unwrap();
    assert_eq!(
        route.source.as_str(),
        "/messages/modules/$edgeHub/outputs/3/"
    );
}

#[test]
fn message_sources_build_the_paths_edge_hub_matches_against() {
    assert_eq!(
        MessageSource::from_sender(None, Some("ignored")).path(),
        "/messages/"
    );
    assert_eq!(
        MessageSource::from_sender(Some("m"), None).path(),
        "/messages/modules/m/"
    );
    assert_eq!(
        MessageSource::from_sender(Some("m"), Some("")).path(),
        "/messages/modules/m/"
    );
    assert_eq!(output("m", "o").path(), "/messages/modules/m/outputs/o/");
    assert_eq!(
        MessageSource::TwinChangeNotifications.path(),
        "/twinChangeNotifications/"
    );
}

#[test]
fn keywords_and_the_upstream_sink_are_case_insensitive() {
    let route =
        Route::parse("select * from /messages/* where true and not false into $UpStream").unwrap();
    assert_eq!(route.sink, Sink::Upstream);
    assert!(route.matches(&MessageSource::Telemetry, &Message::default()));
    let route = Route::parse("SeLeCt * FrOm /* WhErE a = 'x' oR b = 'y' InTo $upstream").unwrap();
    assert!(route.matches(
        &MessageSource::Telemetry,
        &with_properties(&[("b", Some("y"))])
    ));
}

#[test]
fn brokered_endpoint_accepts_any_case_and_paths_without_the_outer_slashes() {
    let route = Route::parse(r#"FROM /* INTO brokeredendpoint("modules/b/inputs/i1/")"#).unwrap();
    assert_eq!(route.sink, module_input("b", "i1"));
    let route =
        Route::parse(r"FROM /* INTO BrokeredEndpoint(' /Modules/b/Inputs/in put ')").unwrap();
    assert_eq!(route.sink, module_input("b", "in put"));
}

#[test]
fn a_condition_that_holds_does_not_rescue_a_source_that_does_not_match() {
    let route = Route::parse("FROM /messages/modules/a/* WHERE true INTO $upstream").unwrap();
    assert!(!route.matches(&MessageSource::Telemetry, &Message::default()));
}

#[test]
fn a_system_endpoint_other_than_upstream_is_refused() {
    let err = parse_error("FROM /* INTO $downstream");
    assert!(
        matches!(err, RouteError::Sink { column: 14, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("$downstream"), "{err}");
}

#[test]
fn an_endpoint_function_other_than_brokered_endpoint_is_refused() {
    let err = parse_error(r#"FROM /* INTO Forward("/modules/b/inputs/i")"#);
    assert!(
        matches!(err, RouteError::Sink { column: 14, .. }),
        "{err:?}"
    );
    assert!(matches!(
        parse_error("FROM /* INTO upstream"),
        RouteError::Sink { .. }
    ));
    assert!(matches!(
        parse_error("FROM /* INTO"),
        RouteError::Sink { column: 13, .. }
    ));
    assert!(matches!(
        parse_error("FROM /* INTO BrokeredEndpoint(b)"),
        RouteError::Sink { .. }
    ));
}

#[test]
fn a_brokered_endpoint_path_of_the_wrong_shape_is_refused() {
    for path in [
        "/modules/b/outputs/i1",
        "/devices/b/inputs/i1",
        "/modules/b/inputs",
        "/modules/b/inputs/i1/extra",
        "//modules/b/inputs/i1",
        "/modules//inputs/i1",
        "/modules/b/inputs/",
        "/modules/b/inputs/#",
        "/modules/b c/inputs/i",
        "",
    ] {
        let err = parse_error(&format!(r#"FROM /* INTO BrokeredEndpoint("{path}")"#));
        assert!(
            matches!(err, RouteError::Sink { column: 14, .. }),
            "{path:?}: {err:?}"
        );
    }
}

#[test]
fn unbalanced_parentheses_are_refused_at_the_offending_column() {
    let err = parse_error("FROM /* WHERE (a = 'x' INTO $upstream");
    assert_eq!(err.column(), 24);
    assert!(
        err.to_string()
            .contains("missing ')' for the '(' at column 15"),
        "{err}"
    );
    let err = parse_error("FROM /* WHERE a = 'x') INTO $upstream");
    assert_eq!(err.column(), 22);
    assert!(err.to_string().contains("unmatched closing ')'"), "{err}");
    let err = parse_error("FROM /* WHERE lower(a = 'x' INTO $upstream");
    assert!(
        err.to_string()
            .contains("expected ',' or ')' in the call to lower"),
        "{err}"
    );
}

#[test]
fn an_unknown_function_is_refused_with_its_name_and_column() {
    let err = parse_error("FROM /* WHERE frobnicate(a) = 1 INTO $upstream");
    assert_eq!(
        err,
        RouteError::UnknownFunction {
            column: 15,
            name: "frobnicate".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "invalid built-in function 'frobnicate' at column 15"
    );
}

#[test]
fn a_built_in_with_the_wrong_number_of_arguments_is_refused() {
    for (condition, expected) in [
        ("abs(1, 2) = 1", "2 given, expected 1 argument"),
        ("is_defined()", "0 given, expected 1 argument"),
        (
            "concat('a') = 'a'",
            "1 given, expected at least 2 arguments",
        ),
        (
            "substring('abc') = 'a'",
            "1 given, expected 2 or 3 arguments",
        ),
        ("power(2) = 2", "1 given, expected 2 arguments"),
    ] {
        let err = Condition::parse(condition).expect_err(condition);
        assert!(
            matches!(err, RouteError::Arguments { column: 1, .. }),
            "{condition}: {err:?}"
        );
        assert!(err.to_string().contains(expected), "{condition}: {err}");
    }
    let err = Condition::parse("twin_change_includes('x')").unwrap_err();
    assert!(matches!(err, RouteError::Arguments { .. }), "{err:?}");
}

#[test]
fn a_route_missing_from_or_into_or_with_trailing_text_is_refused() {
    assert!(parse_error("")
        .to_string()
        .contains("a route starts with FROM"));
    assert!(parse_error("SELECT FROM /* INTO $upstream")
        .to_string()
        .contains("expected '*' after SELECT"));
    assert!(parse_error("FROM INTO $upstream")
        .to_string()
        .contains("expected a source path"));
    assert!(parse_error("FROM /messages/ INTO $upstream")
        .to_string()
        .contains("expected a path segment"));
    assert!(parse_error("FROM /* $upstream")
        .to_string()
        .contains("expected INTO"));
    assert!(parse_error("FROM /* WHERE INTO $upstream")
        .to_string()
        .contains("expected a value, found 'INTO'"));
    let err = parse_error("FROM /* INTO $upstream INTO $upstream");
    assert_eq!(err.column(), 24);
}

#[test]
fn a_minus_written_against_a_number_is_explained() {
    let err = parse_error("FROM /* WHERE 5 -2 = 3 INTO $upstream");
    assert_eq!(err.column(), 17);
    assert!(
        err.to_string().contains("put a space after the '-'"),
        "{err}"
    );
}

#[test]
fn bad_strings_are_refused_where_they_go_wrong() {
    let err = parse_error("FROM /* WHERE a = 'abc INTO $upstream");
    assert_eq!(
        err,
        RouteError::Syntax {
            column: 19,
            message: "unterminated string".into()
        }
    );
    let err = parse_error(r"FROM /* WHERE a = 'a\nb' INTO $upstream");
    assert_eq!(err.column(), 21);
    assert!(
        err.to_string().contains(r"invalid escape sequence '\n'"),
        "{err}"
    );
    assert!(Condition::parse(r"a = '\u12'").is_err());
}

#[test]
fn invalid_symbols_and_bad_body_paths_are_refused() {
    assert!(parse_error("FROM /* WHERE a = @ INTO $upstream")
        .to_string()
        .contains("invalid symbol '@'"));
    assert!(parse_error("FROM /* WHERE a[0] = 1 INTO $upstream")
        .to_string()
        .contains("only a $ property"));
    assert!(parse_error("FROM /* WHERE {a} = 1 INTO $upstream")
        .to_string()
        .contains("must enclose a $ property"));
    for path in [
        "$body.",
        "$body.a..b",
        "$body.a[x]",
        "$body.a[0",
        "$body.a[]",
        "$body.[0]",
        "$body.a[0]b",
    ] {
        let err = Condition::parse(&format!("{path} = 1")).expect_err(path);
        assert!(
            err.to_string().contains("invalid $body query"),
            "{path}: {err}"
        );
    }
}

#[test]
fn deep_nesting_is_refused_instead_of_overflowing_the_stack() {
    let parens = format!("{}1{}", "(".repeat(2000), ")".repeat(2000));
    assert!(matches!(
        Condition::parse(&parens),
        Err(RouteError::TooDeep { .. })
    ));
    let nots = format!("{}true", "NOT ".repeat(1000));
    assert!(matches!(
        Condition::parse(&nots),
        Err(RouteError::TooDeep { .. })
    ));
    let calls = format!("{}1{}", "abs(".repeat(800), ")".repeat(800));
    assert!(matches!(
        Condition::parse(&calls),
        Err(RouteError::TooDeep { .. })
    ));
    let chain = vec!["1"; 1000].join(" + ");
    assert!(matches!(
        Condition::parse(&chain),
        Err(RouteError::TooDeep { .. })
    ));
    // Without spaces, `1+1+1` is one identifier (an application property), as in edgeHub.
    assert!(Condition::parse(&vec!["1"; 2000].join("+")).is_ok());
    let limit = format!(
        "{}true{}",
        "(NOT ".repeat(MAX_DEPTH / 2 - 1),
        ")".repeat(MAX_DEPTH / 2 - 1)
    );
    assert!(Condition::parse(&limit).is_ok());
    let ors = vec!["a = '1'"; 30].join(" OR ");
    assert!(Condition::parse(&ors).is_ok());
}

#[test]
fn a_route_longer_than_the_limit_is_refused() {
    let long = format!(
        "FROM /* WHERE a = '{}' INTO $upstream",
        "x".repeat(MAX_ROUTE_LEN)
    );
    assert_eq!(parse_error(&long), RouteError::TooLong { len: long.len() });
}
