//! What a storage engine may check with an index before the evaluator sees a document: the top-level `AND`
//! conjuncts of a condition that say `deviceId`, a tag or a reported property equals a literal (or is `IN` a
//! list of literals).
//!
//! A [`Narrowing`] is necessary, not sufficient: every document the condition holds for satisfies each of its
//! [`Constraint`]s, so an engine may skip the documents that do not, and the evaluator still checks the whole
//! condition on the rest. Only literals whose equality the engines decide exactly as the evaluator does are
//! kept: strings, booleans, and numbers that are not whole or are whole and below 2^53 in magnitude (past it,
//! two integers may be equal as the evaluator's `f64` and differ in the database).

use super::parser::{Expr, Path};
use crate::route::eval::Value;
use crate::route::parser::BinaryOp;

/// Where a constrained value lives in a twin document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// `deviceId`.
    DeviceId,
    /// `tags.PATH`: the keys under `tags`.
    Tag(Vec<String>),
    /// `properties.reported.PATH`: the keys under the reported properties (never `$version` or `$metadata`).
    Reported(Vec<String>),
}

/// A scalar a constraint compares with.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// A string, compared by code points.
    String(String),
    /// A finite number, compared by value (`1` equals `1.0`).
    Number(f64),
    /// `true` or `false`.
    Bool(bool),
}

impl Literal {
    /// The JSON value of the literal.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::String(s) => s.clone().into(),
            // Whole numbers within 2^53 (the only whole ones kept) as JSON integers, as twins hold them.
            Self::Number(n) if n.fract() == 0.0 => (*n as i64).into(),
            Self::Number(n) => {
                serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, Into::into)
            }
            Self::Bool(b) => (*b).into(),
        }
    }
}

/// `field` equals one of `values` (at least one).
#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    /// The constrained value.
    pub field: Field,
    /// The literals it may equal.
    pub values: Vec<Literal>,
}

/// Constraints that every document a condition holds for satisfies (none: every document may match).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Narrowing {
    /// All must hold.
    pub constraints: Vec<Constraint>,
}

impl Narrowing {
    /// Whether nothing narrows the documents.
    pub fn is_empty(&self) -> bool {
        self.constraints.is_empty()
    }

    /// The narrowing of a condition (`None`: no condition).
    pub(crate) fn of(condition: Option<&Expr>) -> Self {
        let conjuncts: &[Expr] = match condition {
            None => &[],
            Some(Expr::And(operands)) => operands,
            Some(single) => std::slice::from_ref(single),
        };
        Self {
            constraints: conjuncts.iter().filter_map(constraint).collect(),
        }
    }
}

/// The constraint one conjunct states, if it is `path = literal`, `literal = path` or `path IN [literals]`.
fn constraint(conjunct: &Expr) -> Option<Constraint> {
    match conjunct {
        Expr::Compare(BinaryOp::Eq, left, right) => {
            let ((Expr::Path(path), Expr::Literal(value))
            | (Expr::Literal(value), Expr::Path(path))) = (&**left, &**right)
            else {
                return None;
            };
            let field = field(path)?;
            let literal = literal(&field, value)?;
            Some(Constraint {
                field,
                values: vec![literal],
            })
        }
        Expr::In {
            operand,
            list,
            negated: false,
        } => {
            let Expr::Path(path) = &**operand else {
                return None;
            };
            let field = field(path)?;
            // One literal the engine cannot decide would lose the documents equal to it: keep all or none.
            let values = list
                .iter()
                .map(|v| literal(&field, v))
                .collect::<Option<Vec<_>>>()?;
            // An empty list matches nothing; leave that to the evaluator rather than send an empty IN to SQL.
            (!values.is_empty()).then_some(Constraint { field, values })
        }
        _ => None,
    }
}

/// The field a path names, if an engine indexes it.
fn field(path: &Path) -> Option<Field> {
    match path.0.as_slice() {
        [id] if id == "deviceId" => Some(Field::DeviceId),
        [tags, rest @ ..] if tags == "tags" && !rest.is_empty() => Some(Field::Tag(rest.to_vec())),
        [properties, reported, rest @ ..]
            if properties == "properties"
                && reported == "reported"
                && !rest.is_empty()
                && !rest[0].starts_with('$') =>
        {
            Some(Field::Reported(rest.to_vec()))
        }
        _ => None,
    }
}

/// The literal an engine can compare exactly as the evaluator does, if `value` is one.
fn literal(field: &Field, value: &Value) -> Option<Literal> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match (field, value) {
        (_, Value::String(s)) => Some(Literal::String(s.clone())),
        (Field::DeviceId, _) => None,
        (_, Value::Bool(b)) => Some(Literal::Bool(*b)),
        (_, Value::Number(n)) if n.is_finite() && (n.fract() != 0.0 || n.abs() < EXACT) => {
            Some(Literal::Number(*n))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{Query, QueryCondition};

    fn narrowing(condition: &str) -> Narrowing {
        QueryCondition::parse(condition).unwrap().narrowing()
    }

    fn tag(path: &[&str], values: Vec<Literal>) -> Constraint {
        Constraint {
            field: Field::Tag(path.iter().map(|s| (*s).to_owned()).collect()),
            values,
        }
    }

    #[test]
    fn equalities_joined_by_and_become_constraints() {
        let found = narrowing(
            "tags.site = 'north' AND properties.reported.fw = 2 AND 'x' = deviceId AND tags.a.b IN [true, 1.5]",
        );
        assert_eq!(
            found.constraints,
            vec![
                tag(&["site"], vec![Literal::String("north".into())]),
                Constraint {
                    field: Field::Reported(vec!["fw".into()]),
                    values: vec![Literal::Number(2.0)],
                },
                Constraint {
                    field: Field::DeviceId,
                    values: vec![Literal::String("x".into())],
                },
                tag(&["a", "b"], vec![Literal::Bool(true), Literal::Number(1.5)]),
            ]
        );
    }

    #[test]
    fn conditions_an_index_cannot_decide_narrow_nothing() {
        for condition in [
            "*",
            "tags.site = 'a' OR tags.site = 'b'",
            "NOT tags.site = 'a'",
            "tags.site != 'a'",
            "tags.n > 1",
            "tags.n = null",
            "tags.n = 9007199254740993",
            "tags.site NIN ['a']",
            "tags.site IN ['a', null]",
            "properties.reported.$version = 3",
            "properties.desired.x = 1",
            "deviceId = 1",
            "tags = 'a'",
            "STARTSWITH(tags.site, 'a')",
        ] {
            assert!(narrowing(condition).is_empty(), "{condition}");
        }
    }

    #[test]
    fn the_conjuncts_that_narrow_are_kept_beside_those_that_do_not() {
        let found = Query::parse("SELECT * FROM devices WHERE tags.n > 1 AND tags.site = 'a'")
            .unwrap()
            .narrowing();
        assert_eq!(
            found.constraints,
            vec![tag(&["site"], vec![Literal::String("a".into())])]
        );
    }
}
