//! Evaluating a condition against one message, with three-valued logic.
//!
//! A value that is missing or of the wrong type is undefined; any comparison or arithmetic with undefined is
//! undefined; `AND` and `OR` are Kleene's (`false AND undefined` is false, `true OR undefined` is true). The
//! caller takes a message only when the result is exactly `true`.

use std::cell::OnceCell;
use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::parser::{BinaryOp, BodyPath, Expr};
use super::MessageSource;
use crate::Message;

/// The value of an expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Undefined,
    Null,
    Bool(bool),
    /// Never NaN: NaN results are undefined.
    Number(f64),
    String(String),
}

impl Value {
    /// A numeric result; NaN (`sqrt(-1)`, `0 / 0`) is undefined.
    pub fn number(n: f64) -> Self {
        if n.is_nan() {
            Self::Undefined
        } else {
            Self::Number(n)
        }
    }

    /// The truth value for `AND`, `OR` and `NOT`: null counts as false (as edgeHub's `Null` converts), other
    /// non-booleans as unknown.
    pub(crate) fn truth(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            Self::Null => Some(false),
            _ => None,
        }
    }

    pub(crate) fn from_truth(truth: Option<bool>) -> Self {
        truth.map_or(Self::Undefined, Self::Bool)
    }
}

/// What one evaluation looks at: the message, its source and, parsed at most once, its JSON body.
pub(crate) struct Scope<'a> {
    source: &'a MessageSource,
    message: &'a Message,
    body: OnceCell<Option<serde_json::Value>>,
}

impl<'a> Scope<'a> {
    pub fn new(source: &'a MessageSource, message: &'a Message) -> Self {
        Self {
            source,
            message,
            body: OnceCell::new(),
        }
    }

    /// The value of `expr`; recursion is bounded by the parser's depth limit.
    pub fn evaluate(&self, expr: &Expr) -> Value {
        match expr {
            Expr::Literal(v) => v.clone(),
            Expr::AppProperty(name) => self.app_property(name).unwrap_or(Value::Undefined),
            Expr::SystemProperty(name) => lookup(&self.message.system, name)
                .map_or(Value::Undefined, |v| Value::String(v.clone())),
            Expr::Body(path) => self.body_value(path),
            Expr::AppOr(name, fallback) => self
                .app_property(name)
                .unwrap_or_else(|| self.evaluate(fallback)),
            Expr::Negate(operand) => match self.evaluate(operand) {
                Value::Number(n) => Value::Number(-n),
                _ => Value::Undefined,
            },
            // edgeHub: NOT null is true (null converts to false).
            Expr::Not(operand) => Value::from_truth(self.evaluate(operand).truth().map(|b| !b)),
            Expr::Binary(op, left, right) => self.binary(*op, left, right),
            Expr::Call(function, args) => {
                let values: Vec<Value> = args.iter().map(|a| self.evaluate(a)).collect();
                function.apply(&values)
            }
            Expr::TwinChangeIncludes(path) => self.twin_change_includes(path),
        }
    }

    fn binary(&self, op: BinaryOp, left: &Expr, right: &Expr) -> Value {
        let l = self.evaluate(left);
        // AND, OR and ?? skip the right side when it can no longer change the result.
        match op {
            BinaryOp::And => Value::from_truth(match l.truth() {
                Some(false) => Some(false),
                left_truth => match (left_truth, self.evaluate(right).truth()) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                },
            }),
            BinaryOp::Or => Value::from_truth(match l.truth() {
                Some(true) => Some(true),
                left_truth => match (left_truth, self.evaluate(right).truth()) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                },
            }),
            BinaryOp::Coalesce if l == Value::Undefined => self.evaluate(right),
            BinaryOp::Coalesce => l,
            BinaryOp::Concat => match (l, self.evaluate(right)) {
                (Value::String(a), Value::String(b)) => Value::String(a + &b),
                _ => Value::Undefined,
            },
            BinaryOp::Eq
            | BinaryOp::Ne
            | BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Gt
            | BinaryOp::Ge => compare(op, &l, &self.evaluate(right)),
            BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod | BinaryOp::Add | BinaryOp::Sub => {
                let (Value::Number(a), Value::Number(b)) = (l, self.evaluate(right)) else {
                    return Value::Undefined;
                };
                Value::number(match op {
                    BinaryOp::Mul => a * b,
                    BinaryOp::Div => a / b,
                    BinaryOp::Mod => a % b,
                    BinaryOp::Add => a + b,
                    _ => a - b,
                })
            }
        }
    }

    /// An application property: its value, `null` for a key sent without `=`, `None` if absent.
    fn app_property(&self, name: &str) -> Option<Value> {
        lookup(&self.message.properties, name)
            .map(|v| v.as_ref().map_or(Value::Null, |s| Value::String(s.clone())))
    }

    /// The JSON body, if the message declares one (`contentType` and `contentEncoding`).
    fn body(&self) -> Option<&serde_json::Value> {
        self.body
            .get_or_init(|| {
                let content_type = lookup(&self.message.system, "contentType")?;
                if !content_type.eq_ignore_ascii_case("application/json") {
                    return None;
                }
                let encoding = lookup(&self.message.system, "contentEncoding")?;
                parse_json(&self.message.body, encoding)
            })
            .as_ref()
    }

    fn body_value(&self, path: &BodyPath) -> Value {
        match self.body().and_then(|json| select(json, path)) {
            Some(serde_json::Value::String(s)) => Value::String(s.clone()),
            Some(serde_json::Value::Number(n)) => {
                n.as_f64().map_or(Value::Undefined, Value::number)
            }
            Some(serde_json::Value::Bool(b)) => Value::Bool(*b),
            Some(serde_json::Value::Null) => Value::Null,
            // Objects and arrays are not values in conditions (edgeHub: undefined); missing is undefined.
            _ => Value::Undefined,
        }
    }

    /// Whether a twin-change notification's body has a non-null value at `path`; undefined for other sources.
    ///
    /// The hub writes these notifications itself, so the body is read as JSON whatever the content type says,
    /// in the declared encoding or UTF-8.
    fn twin_change_includes(&self, path: &BodyPath) -> Value {
        if *self.source != MessageSource::TwinChangeNotifications {
            return Value::Undefined;
        }
        let encoding =
            lookup(&self.message.system, "contentEncoding").map_or("utf-8", String::as_str);
        match parse_json(&self.message.body, encoding) {
            Some(json) => Value::Bool(select(&json, path).is_some_and(|v| !v.is_null())),
            None => Value::Undefined,
        }
    }
}

/// A property by exact name, else by the first name equal ignoring case (edgeHub's dictionaries are
/// case-insensitive).
fn lookup<'m, V>(map: &'m BTreeMap<String, V>, name: &str) -> Option<&'m V> {
    map.get(name).or_else(|| {
        map.iter()
            .find(|(k, _)| eq_ignore_case(k, name))
            .map(|(_, v)| v)
    })
}

/// Whether two names are equal once lower-cased.
fn eq_ignore_case(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

/// Compares two values; different types, and undefined, give undefined.
pub(crate) fn compare(op: BinaryOp, l: &Value, r: &Value) -> Value {
    let ordering = match (l, r) {
        (Value::Number(a), Value::Number(b)) => a.partial_cmp(b),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        (Value::Bool(a), Value::Bool(b)) if matches!(op, BinaryOp::Eq | BinaryOp::Ne) => {
            Some(a.cmp(b))
        }
        _ => None,
    };
    Value::from_truth(ordering.map(|o| match op {
        BinaryOp::Eq => o == Ordering::Equal,
        BinaryOp::Ne => o != Ordering::Equal,
        BinaryOp::Lt => o == Ordering::Less,
        BinaryOp::Le => o != Ordering::Greater,
        BinaryOp::Gt => o == Ordering::Greater,
        _ => o != Ordering::Less,
    }))
}

/// Decodes a body in `encoding` (utf-8, utf-16 or utf-32, little-endian, any case) and parses it as a JSON
/// object; anything else is `None`. Invalid sequences become U+FFFD, as .NET decoders do.
fn parse_json(body: &[u8], encoding: &str) -> Option<serde_json::Value> {
    let text = match encoding.to_ascii_lowercase().as_str() {
        "utf-8" => String::from_utf8_lossy(body).into_owned(),
        "utf-16" => {
            let units = body.chunks(2).map(|c| match c {
                [lo, hi] => u16::from_le_bytes([*lo, *hi]),
                _ => 0xFFFD,
            });
            char::decode_utf16(units)
                .map(|c| c.unwrap_or('\u{FFFD}'))
                .collect()
        }
        "utf-32" => body
            .chunks(4)
            .map(|c| {
                <[u8; 4]>::try_from(c)
                    .ok()
                    .and_then(|b| char::from_u32(u32::from_le_bytes(b)))
                    .unwrap_or('\u{FFFD}')
            })
            .collect(),
        _ => return None,
    };
    let json: serde_json::Value =
        serde_json::from_str(text.strip_prefix('\u{FEFF}').unwrap_or(&text)).ok()?;
    json.is_object().then_some(json)
}

/// The JSON value at `path`, if there is one.
fn select<'j>(json: &'j serde_json::Value, path: &BodyPath) -> Option<&'j serde_json::Value> {
    path.0.iter().try_fold(json, |node, step| {
        let child = node.as_object()?.get(&step.key)?;
        match step.index {
            Some(i) => child.as_array()?.get(i),
            None => Some(child),
        }
    })
}
