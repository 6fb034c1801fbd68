//! The built-in functions of route conditions (edgeHub `ConditionVisitor.Builtins`), case-insensitive names.
//!
//! Arities are checked when the route is parsed; argument types at run time, where a wrong type gives
//! undefined. The `is_*` functions always answer true or false.

use super::eval::Value;

/// A built-in function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Function {
    Abs,
    Exp,
    Power,
    Square,
    Ceiling,
    Floor,
    Sign,
    Sqrt,
    AsNumber,
    IsBool,
    IsDefined,
    IsNull,
    IsNumber,
    IsString,
    Concat,
    Length,
    Lower,
    Upper,
    Substring,
    IndexOf,
    StartsWith,
    EndsWith,
    Contains,
    TwinChangeIncludes,
}

/// Every built-in with its name.
const NAMES: [(&str, Function); 24] = [
    ("abs", Function::Abs),
    ("exp", Function::Exp),
    ("power", Function::Power),
    ("square", Function::Square),
    ("ceiling", Function::Ceiling),
    ("floor", Function::Floor),
    ("sign", Function::Sign),
    ("sqrt", Function::Sqrt),
    ("as_number", Function::AsNumber),
    ("is_bool", Function::IsBool),
    ("is_defined", Function::IsDefined),
    ("is_null", Function::IsNull),
    ("is_number", Function::IsNumber),
    ("is_string", Function::IsString),
    ("concat", Function::Concat),
    ("length", Function::Length),
    ("lower", Function::Lower),
    ("upper", Function::Upper),
    ("substring", Function::Substring),
    ("index_of", Function::IndexOf),
    ("starts_with", Function::StartsWith),
    ("ends_with", Function::EndsWith),
    ("contains", Function::Contains),
    ("twin_change_includes", Function::TwinChangeIncludes),
];

impl Function {
    /// The built-in called `name`, in any case.
    pub fn from_name(name: &str) -> Option<Self> {
        NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, f)| f)
    }

    /// The fewest and most arguments the function takes (`None`: any number).
    fn arity(self) -> (usize, Option<usize>) {
        match self {
            Self::Power | Self::IndexOf | Self::StartsWith | Self::EndsWith | Self::Contains => {
                (2, Some(2))
            }
            Self::Substring => (2, Some(3)),
            Self::Concat => (2, None),
            _ => (1, Some(1)),
        }
    }

    /// Whether a call with `count` arguments is valid.
    pub fn accepts(self, count: usize) -> bool {
        let (min, max) = self.arity();
        count >= min && max.is_none_or(|max| count <= max)
    }

    /// The arity in words, for error messages.
    pub fn arity_text(self) -> &'static str {
        match self.arity() {
            (1, Some(1)) => "expected 1 argument",
            (2, Some(2)) => "expected 2 arguments",
            (2, Some(3)) => "expected 2 or 3 arguments",
            _ => "expected at least 2 arguments",
        }
    }

    /// Applies the function to evaluated arguments (whose count [`accepts`](Self::accepts) checked).
    pub fn apply(self, args: &[Value]) -> Value {
        match (self, args) {
            (Self::Abs, [x]) => math(x, f64::abs),
            (Self::Exp, [x]) => math(x, f64::exp),
            (Self::Square, [x]) => math(x, |n| n * n),
            (Self::Ceiling, [x]) => math(x, f64::ceil),
            (Self::Floor, [x]) => math(x, f64::floor),
            (Self::Sqrt, [x]) => math(x, f64::sqrt),
            // Math.Sign: 0 for both zeros.
            (Self::Sign, [x]) => math(x, |n| if n == 0.0 { 0.0 } else { n.signum() }),
            (Self::Power, [Value::Number(x), Value::Number(y)]) => Value::number(x.powf(*y)),
            (Self::AsNumber, [x]) => as_number(x),
            (Self::IsBool, [x]) => Value::Bool(matches!(x, Value::Bool(_))),
            (Self::IsDefined, [x]) => Value::Bool(*x != Value::Undefined),
            (Self::IsNull, [x]) => Value::Bool(*x == Value::Null),
            (Self::IsNumber, [x]) => Value::Bool(matches!(x, Value::Number(_))),
            (Self::IsString, [x]) => Value::Bool(matches!(x, Value::String(_))),
            (Self::Concat, _) => concat(args),
            (Self::Length, [Value::String(s)]) => Value::Number(s.chars().count() as f64),
            (Self::Lower, [Value::String(s)]) => Value::String(s.to_lowercase()),
            (Self::Upper, [Value::String(s)]) => Value::String(s.to_uppercase()),
            (Self::Substring, [Value::String(s), Value::Number(start)]) => {
                substring(s, *start, None)
            }
            (Self::Substring, [Value::String(s), Value::Number(start), Value::Number(len)]) => {
                substring(s, *start, Some(*len))
            }
            (Self::IndexOf, [Value::String(s), Value::String(part)]) => Value::Number(
                s.find(part.as_str())
                    .map_or(-1.0, |byte| s[..byte].chars().count() as f64),
            ),
            (Self::StartsWith, [Value::String(s), Value::String(p)]) => {
                Value::Bool(s.starts_with(p.as_str()))
            }
            (Self::EndsWith, [Value::String(s), Value::String(p)]) => {
                Value::Bool(s.ends_with(p.as_str()))
            }
            (Self::Contains, [Value::String(s), Value::String(p)]) => {
                Value::Bool(s.contains(p.as_str()))
            }
            // Wrong types, and twin_change_includes, which the evaluator handles itself.
            _ => Value::Undefined,
        }
    }
}

/// A one-argument math function: numbers only.
fn math(x: &Value, f: impl Fn(f64) -> f64) -> Value {
    match x {
        Value::Number(n) => Value::number(f(*n)),
        _ => Value::Undefined,
    }
}

/// A number as it is, a string parsed as a number (surrounding white space allowed), else undefined.
fn as_number(x: &Value) -> Value {
    match x {
        Value::Number(n) => Value::Number(*n),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map_or(Value::Undefined, Value::number),
        _ => Value::Undefined,
    }
}

/// All arguments joined, if they are all strings.
fn concat(args: &[Value]) -> Value {
    let mut joined = String::new();
    for arg in args {
        match arg {
            Value::String(s) => joined.push_str(s),
            _ => return Value::Undefined,
        }
    }
    Value::String(joined)
}

/// `substring(s, start[, length])` in characters; out of range is undefined (edgeHub's bounds).
fn substring(s: &str, start: f64, len: Option<f64>) -> Value {
    let count = s.chars().count() as f64;
    let valid = match len {
        None => (0.0..=count).contains(&start),
        Some(len) => (0.0..count).contains(&start) && len >= 0.0 && len <= count - start,
    };
    if !valid {
        return Value::Undefined;
    }
    // Fractions truncate, as edgeHub's (int) casts do.
    let rest = s.chars().skip(start as usize);
    Value::String(match len {
        None => rest.collect(),
        Some(len) => rest.take(len as usize).collect(),
    })
}
