//! Property tests: random conditions over random small documents, evaluated by the real parser and
//! evaluator and by a small reference evaluator written here from the documented rules; and robustness on
//! arbitrary text.

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::query::{Query, QueryCondition};

/// Paths the generated conditions read; documents use the keys `a`, `b` and `c`.
const PATHS: [&str; 7] = ["a", "b", "c", "a.a", "a.b", "b.c", "c.a.b"];

/// A literal of the generated conditions.
#[derive(Debug, Clone)]
enum Lit {
    Null,
    Bool(bool),
    Number(f64),
    Str(String),
}

/// A comparison operator, printed as written.
#[derive(Debug, Clone, Copy)]
enum Op {
    Eq,
    Ne,
    LtGt,
    Lt,
    Le,
    Gt,
    Ge,
}

/// The generated condition tree.
#[derive(Debug, Clone)]
enum Cond {
    Compare(&'static str, Op, Lit),
    In(&'static str, Vec<Lit>, bool),
    IsDefined(&'static str),
    IsNull(&'static str),
    IsObject(&'static str),
    StartsWith(&'static str, String),
    /// `path arith number op literal`, as in `a * 2 >= 3`.
    Arithmetic(&'static str, char, i32, Op, Lit),
    Not(Box<Cond>),
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
}

fn print_lit(lit: &Lit) -> String {
    match lit {
        Lit::Null => "null".into(),
        Lit::Bool(b) => b.to_string(),
        Lit::Number(n) => format!("{n:?}"),
        Lit::Str(s) => quote(s),
    }
}

/// A single-quoted string literal with `\\` and `\'` escaped.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The condition as query text, fully parenthesised, keywords in mixed case.
fn print(cond: &Cond) -> String {
    match cond {
        Cond::Compare(path, op, lit) => {
            let op = match op {
                Op::Eq => "=",
                Op::Ne => "!=",
                Op::LtGt => "<>",
                Op::Lt => "<",
                Op::Le => "<=",
                Op::Gt => ">",
                Op::Ge => ">=",
            };
            format!("{path} {op} {}", print_lit(lit))
        }
        Cond::In(path, list, negated) => {
            let items: Vec<String> = list.iter().map(print_lit).collect();
            let keyword = if *negated { "NIN" } else { "in" };
            format!("{path} {keyword} [{}]", items.join(", "))
        }
        Cond::IsDefined(path) => format!("IS_DEFINED({path})"),
        Cond::IsNull(path) => format!("is_null({path})"),
        Cond::IsObject(path) => format!("Is_Object({path})"),
        Cond::StartsWith(path, prefix) => format!("STARTSWITH({path}, {})", quote(prefix)),
        Cond::Arithmetic(path, arith, n, op, lit) => {
            let compared = print(&Cond::Compare("", *op, lit.clone()));
            format!("{path} {arith} {n}{compared}")
        }
        Cond::Not(c) => format!("NOT ({})", print(c)),
        Cond::And(a, b) => format!("({}) AND ({})", print(a), print(b)),
        Cond::Or(a, b) => format!("({}) or ({})", print(a), print(b)),
    }
}

/// The document's value at a dotted path.
fn lookup<'d>(document: &'d Value, path: &str) -> Option<&'d Value> {
    path.split('.')
        .try_fold(document, |node, key| node.as_object()?.get(key))
}

/// Whether a JSON value and a literal compare under `op`: like types only, booleans only for equality.
fn compare(value: &Value, op: Op, lit: &Lit) -> Option<bool> {
    use std::cmp::Ordering;
    let ordering = match (value, lit) {
        (Value::Null, Lit::Null) => Ordering::Equal,
        (Value::Bool(a), Lit::Bool(b)) if matches!(op, Op::Eq | Op::Ne | Op::LtGt) => a.cmp(b),
        (Value::Number(a), _) => return compare_number(a.as_f64()?, op, lit),
        (Value::String(a), Lit::Str(b)) => a.as_str().cmp(b.as_str()),
        _ => return None,
    };
    Some(holds(ordering, op))
}

/// Whether a number and a literal compare under `op`: only numbers compare with numbers.
fn compare_number(a: f64, op: Op, lit: &Lit) -> Option<bool> {
    match lit {
        Lit::Number(b) => Some(holds(a.partial_cmp(b)?, op)),
        _ => None,
    }
}

/// Whether an ordering satisfies `op`.
fn holds(ordering: std::cmp::Ordering, op: Op) -> bool {
    use std::cmp::Ordering;
    match op {
        Op::Eq => ordering == Ordering::Equal,
        Op::Ne | Op::LtGt => ordering != Ordering::Equal,
        Op::Lt => ordering == Ordering::Less,
        Op::Le => ordering != Ordering::Greater,
        Op::Gt => ordering == Ordering::Greater,
        Op::Ge => ordering != Ordering::Less,
    }
}

/// The reference: three-valued (`None` is undefined), straight from the documented rules.
fn reference(cond: &Cond, document: &Value) -> Option<bool> {
    match cond {
        Cond::Compare(path, op, lit) => compare(lookup(document, path)?, *op, lit),
        Cond::In(path, list, negated) => {
            let value = lookup(document, path)?;
            if value.is_object() || value.is_array() {
                return None;
            }
            let found = list.iter().any(|l| compare(value, Op::Eq, l) == Some(true));
            Some(found != *negated)
        }
        Cond::IsDefined(path) => Some(lookup(document, path).is_some()),
        Cond::IsNull(path) => Some(lookup(document, path).is_some_and(Value::is_null)),
        Cond::IsObject(path) => Some(lookup(document, path).is_some_and(Value::is_object)),
        Cond::StartsWith(path, prefix) => match lookup(document, path)? {
            Value::String(s) => Some(s.starts_with(prefix.as_str())),
            _ => None,
        },
        Cond::Arithmetic(path, arith, n, op, lit) => {
            let a = lookup(document, path)?.as_f64()?;
            let b = f64::from(*n);
            let result = match arith {
                '+' => a + b,
                '-' => a - b,
                '*' => a * b,
                '/' => a / b,
                _ => a % b,
            };
            if result.is_nan() {
                return None;
            }
            // Not through JSON, which has no infinities (`1.5 / 0` is a number here).
            compare_number(result, *op, lit)
        }
        Cond::Not(c) => reference(c, document).map(|b| !b),
        Cond::And(a, b) => match (reference(a, document), reference(b, document)) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Cond::Or(a, b) => match (reference(a, document), reference(b, document)) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
    }
}

fn lit() -> impl Strategy<Value = Lit> {
    prop_oneof![
        Just(Lit::Null),
        any::<bool>().prop_map(Lit::Bool),
        (-2i32..3).prop_map(|n| Lit::Number(f64::from(n))),
        Just(Lit::Number(1.5)),
        "[xy'\\\\]{0,2}".prop_map(Lit::Str),
    ]
}

fn path() -> impl Strategy<Value = &'static str> {
    prop::sample::select(PATHS.to_vec())
}

fn op() -> impl Strategy<Value = Op> {
    prop::sample::select(vec![
        Op::Eq,
        Op::Ne,
        Op::LtGt,
        Op::Lt,
        Op::Le,
        Op::Gt,
        Op::Ge,
    ])
}

fn cond() -> impl Strategy<Value = Cond> {
    let leaf = prop_oneof![
        (path(), op(), lit()).prop_map(|(p, o, l)| Cond::Compare(p, o, l)),
        (path(), prop::collection::vec(lit(), 0..4), any::<bool>())
            .prop_map(|(p, l, n)| Cond::In(p, l, n)),
        path().prop_map(Cond::IsDefined),
        path().prop_map(Cond::IsNull),
        path().prop_map(Cond::IsObject),
        (path(), "[xy]{0,2}").prop_map(|(p, s)| Cond::StartsWith(p, s)),
        (
            path(),
            prop::sample::select(vec!['+', '-', '*', '/', '%']),
            -1i32..3,
            op(),
            lit()
        )
            .prop_map(|(p, a, n, o, l)| Cond::Arithmetic(p, a, n, o, l)),
    ];
    leaf.prop_recursive(5, 32, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|c| Cond::Not(Box::new(c))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Cond::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| Cond::Or(Box::new(a), Box::new(b))),
        ]
    })
}

/// Small JSON values: scalars like the literals, arrays, and objects over the keys `a`, `b`, `c`.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-2i32..3).prop_map(|n| json!(n)),
        Just(json!(1.5)),
        "[xy'\\\\]{0,2}".prop_map(Value::String),
        Just(json!([1, "x"])),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c"]), inner, 0..3)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
    })
}

fn document() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        prop::sample::select(vec!["a", "b", "c"]),
        json_value(),
        0..4,
    )
    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_evaluator_agrees_with_the_reference_evaluator(
        condition in cond(),
        documents in prop::collection::vec(document(), 1..4),
    ) {
        let text = print(&condition);
        let parsed = QueryCondition::parse(&text)
            .unwrap_or_else(|e| panic!("{text:?} does not parse: {e}"));
        let query = Query::parse(&format!("SELECT * FROM devices WHERE {text}")).unwrap();
        for document in &documents {
            let expected = reference(&condition, document) == Some(true);
            prop_assert_eq!(parsed.matches(document), expected, "{} over {}", text, document);
            prop_assert_eq!(query.matches(document), expected);
        }
        let expected_rows: Vec<Value> = documents
            .iter()
            .filter(|d| reference(&condition, d) == Some(true))
            .cloned()
            .collect();
        prop_assert_eq!(query.run(&documents), expected_rows);
    }

    #[test]
    fn parsing_never_panics_on_arbitrary_text(text in "(?s).{0,200}") {
        let _ = Query::parse(&text);
        let _ = QueryCondition::parse(&text);
    }

    #[test]
    fn parsing_and_running_never_panic_on_token_soup(
        tokens in prop::collection::vec(
            prop::sample::select(vec![
                "SELECT", "TOP", "1", "*", "FROM", "devices", ".", "modules", "WHERE", "GROUP", "BY", "AS", "(",
                ")", "[", "]", "[[", "]]", ",", "NOT", "AND", "OR", "IN", "NIN", "-", "+", "/", "%", "=", "<>",
                "!=", "<", "<=", ">", ">=", "1.5e3", "'a'", "\"b\\\"\"", "'", "\\u", "true", "null", "a", "b.c",
                "COUNT", "SUM", "AVG", "MIN", "MAX", "is_defined", "STARTSWITH", "length", "lower", "x",
            ]),
            0..40,
        ),
        document in document(),
    ) {
        let text = tokens.join(" ");
        if let Ok(query) = Query::parse(&text) {
            let _ = query.run([&document, &document]);
        }
        if let Ok(condition) = QueryCondition::parse(&text) {
            let _ = condition.matches(&document);
        }
    }
}
