//! Evaluating a condition over one twin document, with the route language's three-valued logic.
//!
//! A scalar is the route language's [`Value`] (undefined, null, boolean, number, string), so comparison,
//! truth and the string built-ins are the route's own; objects and arrays stay references into the
//! document, which only the `IS_*` functions look at. Recursion follows the tree, whose depth the parser
//! bounds.

use super::parser::{Expr, Path};
use crate::route::eval::{compare, Value};
use crate::route::functions::Function as Scalar;
use crate::route::parser::BinaryOp;

/// A built-in function of the query language, by case-insensitive name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Function {
    IsDefined,
    IsNull,
    IsBool,
    IsNumber,
    IsString,
    IsObject,
    IsArray,
    IsPrimitive,
    /// A string built-in the route language has too (`LOWER`, `STARTSWITH`, ...).
    Scalar(Scalar),
}

/// Every function with its name; `STARTS_WITH` and `ENDS_WITH` (the route spellings) are accepted too.
const NAMES: [(&str, Function); 16] = [
    ("is_defined", Function::IsDefined),
    ("is_null", Function::IsNull),
    ("is_bool", Function::IsBool),
    ("is_number", Function::IsNumber),
    ("is_string", Function::IsString),
    ("is_object", Function::IsObject),
    ("is_array", Function::IsArray),
    ("is_primitive", Function::IsPrimitive),
    ("startswith", Function::Scalar(Scalar::StartsWith)),
    ("starts_with", Function::Scalar(Scalar::StartsWith)),
    ("endswith", Function::Scalar(Scalar::EndsWith)),
    ("ends_with", Function::Scalar(Scalar::EndsWith)),
    ("contains", Function::Scalar(Scalar::Contains)),
    ("lower", Function::Scalar(Scalar::Lower)),
    ("upper", Function::Scalar(Scalar::Upper)),
    ("length", Function::Scalar(Scalar::Length)),
];

impl Function {
    /// The function called `name`, in any case.
    pub fn from_name(name: &str) -> Option<Self> {
        NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, f)| f)
    }

    /// Whether a call with `count` arguments is valid.
    pub fn accepts(self, count: usize) -> bool {
        match self {
            Self::Scalar(f) => f.accepts(count),
            _ => count == 1,
        }
    }

    /// The arity in words, for error messages.
    pub fn arity_text(self) -> &'static str {
        match self {
            Self::Scalar(f) => f.arity_text(),
            _ => "expected 1 argument",
        }
    }

    fn apply(self, args: &[Operand<'_>]) -> Value {
        let [only] = args else {
            return self.apply_scalar(args);
        };
        let test = match self {
            Self::IsDefined => !matches!(only, Operand::Scalar(Value::Undefined)),
            Self::IsNull => matches!(only, Operand::Scalar(Value::Null)),
            Self::IsBool => matches!(only, Operand::Scalar(Value::Bool(_))),
            Self::IsNumber => matches!(only, Operand::Scalar(Value::Number(_))),
            Self::IsString => matches!(only, Operand::Scalar(Value::String(_))),
            Self::IsObject => matches!(only, Operand::Composite(v) if v.is_object()),
            Self::IsArray => matches!(only, Operand::Composite(v) if v.is_array()),
            Self::IsPrimitive => {
                matches!(only, Operand::Scalar(v) if *v != Value::Undefined)
            }
            Self::Scalar(_) => return self.apply_scalar(args),
        };
        Value::Bool(test)
    }

    /// A string built-in: undefined when any argument is an object or an array.
    fn apply_scalar(self, args: &[Operand<'_>]) -> Value {
        let Self::Scalar(f) = self else {
            return Value::Undefined;
        };
        let mut values = Vec::with_capacity(args.len());
        for arg in args {
            match arg {
                Operand::Scalar(v) => values.push(v.clone()),
                Operand::Composite(_) => return Value::Undefined,
            }
        }
        f.apply(&values)
    }
}

/// The value of an expression: a scalar, or an object or array of the document.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Operand<'d> {
    Scalar(Value),
    Composite(&'d serde_json::Value),
}

impl Operand<'_> {
    fn scalar(self) -> Value {
        match self {
            Self::Scalar(v) => v,
            Self::Composite(_) => Value::Undefined,
        }
    }
}

/// Whether `expr` is exactly true for `document`.
pub(crate) fn holds(expr: &Expr, document: &serde_json::Value) -> bool {
    evaluate(expr, document).scalar() == Value::Bool(true)
}

/// The operand a path names in the document (undefined when missing).
pub(crate) fn resolve<'d>(path: &Path, document: &'d serde_json::Value) -> Operand<'d> {
    match path.lookup(document) {
        None => Operand::Scalar(Value::Undefined),
        Some(serde_json::Value::Null) => Operand::Scalar(Value::Null),
        Some(serde_json::Value::Bool(b)) => Operand::Scalar(Value::Bool(*b)),
        Some(serde_json::Value::Number(n)) => {
            Operand::Scalar(n.as_f64().map_or(Value::Undefined, Value::number))
        }
        Some(serde_json::Value::String(s)) => Operand::Scalar(Value::String(s.clone())),
        Some(composite) => Operand::Composite(composite),
    }
}

/// The value of `expr` for `document`.
fn evaluate<'d>(expr: &Expr, document: &'d serde_json::Value) -> Operand<'d> {
    let scalar = |e: &Expr| evaluate(e, document).scalar();
    Operand::Scalar(match expr {
        Expr::Literal(v) => v.clone(),
        Expr::Path(path) => return resolve(path, document),
        Expr::Not(operand) => Value::from_truth(scalar(operand).truth().map(|b| !b)),
        Expr::Negate(operand) => match scalar(operand) {
            Value::Number(n) => Value::Number(-n),
            _ => Value::Undefined,
        },
        // Kleene logic, stopping as soon as the result is known.
        Expr::And(operands) => {
            let mut known = Some(true);
            for operand in operands {
                match scalar(operand).truth() {
                    Some(false) => return Operand::Scalar(Value::Bool(false)),
                    Some(true) => {}
                    None => known = None,
                }
            }
            Value::from_truth(known)
        }
        Expr::Or(operands) => {
            let mut known = Some(false);
            for operand in operands {
                match scalar(operand).truth() {
                    Some(true) => return Operand::Scalar(Value::Bool(true)),
                    Some(false) => {}
                    None => known = None,
                }
            }
            Value::from_truth(known)
        }
        Expr::Compare(op, left, right) => compare(*op, &scalar(left), &scalar(right)),
        Expr::Arithmetic(first, rest) => {
            let mut acc = scalar(first);
            for (op, operand) in rest {
                acc = arithmetic(*op, &acc, &scalar(operand));
            }
            acc
        }
        Expr::In {
            operand,
            list,
            negated,
        } => match scalar(operand) {
            Value::Undefined => Value::Undefined,
            value => {
                let found = list
                    .iter()
                    .any(|item| compare(BinaryOp::Eq, &value, item) == Value::Bool(true));
                Value::Bool(found != *negated)
            }
        },
        Expr::Call(function, args) => {
            let values: Vec<Operand<'d>> = args.iter().map(|a| evaluate(a, document)).collect();
            function.apply(&values)
        }
    })
}

/// `a op b` for numbers; anything else, and NaN, is undefined.
fn arithmetic(op: BinaryOp, a: &Value, b: &Value) -> Value {
    let (Value::Number(a), Value::Number(b)) = (a, b) else {
        return Value::Undefined;
    };
    Value::number(match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        _ => a % b,
    })
}
