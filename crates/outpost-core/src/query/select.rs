//! The select list: projecting one document into a row, and grouping documents into aggregate rows.

use std::collections::HashMap;

use super::eval::{resolve, Operand};
use super::parser::Path;
use crate::route::eval::Value;

/// What `SELECT` asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Projection {
    /// `SELECT *`: the document unchanged.
    All,
    /// A list of keyed values.
    Items(Vec<Item>),
}

/// One element of the select list and the key it gets in a row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Item {
    pub key: String,
    pub source: Source,
}

/// Where an item's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Source {
    Path(Path),
    Aggregate(Aggregate),
}

/// An aggregate function over the documents of a group.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Aggregate {
    Count,
    Sum(Path),
    Avg(Path),
    Min(Path),
    Max(Path),
}

impl Projection {
    /// Whether any item is an aggregate.
    pub fn has_aggregates(&self) -> bool {
        match self {
            Self::All => false,
            Self::Items(items) => items
                .iter()
                .any(|i| matches!(i.source, Source::Aggregate(_))),
        }
    }

    /// The row of a non-aggregate query for one document; missing paths are left out.
    pub fn project(&self, document: &serde_json::Value) -> serde_json::Value {
        let Self::Items(items) = self else {
            return document.clone();
        };
        let mut row = serde_json::Map::new();
        for item in items {
            if let Source::Path(path) = &item.source {
                if let Some(value) = path.lookup(document) {
                    row.insert(item.key.clone(), value.clone());
                }
            }
        }
        serde_json::Value::Object(row)
    }
}

/// One group: the projected paths of its first document and an accumulator per item.
struct Group {
    first: Vec<Option<serde_json::Value>>,
    totals: Vec<Total>,
}

/// Documents grouped by the `GROUP BY` paths (one group when there are none), fed one at a time: what it
/// keeps is one small row per group, whatever the number of documents.
pub(crate) struct Grouping {
    groups: Vec<Group>,
    index: HashMap<String, usize>,
}

impl Grouping {
    pub fn new() -> Self {
        Self {
            groups: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Adds a document to its group.
    pub fn add(
        &mut self,
        projection: &Projection,
        group_by: &[Path],
        document: &serde_json::Value,
    ) {
        let Projection::Items(items) = projection else {
            return;
        };
        let key = group_key(group_by, document);
        let groups = &mut self.groups;
        let at = *self.index.entry(key).or_insert_with(|| {
            groups.push(Group {
                first: items
                    .iter()
                    .map(|i| match &i.source {
                        Source::Path(path) => path.lookup(document).cloned(),
                        Source::Aggregate(_) => None,
                    })
                    .collect(),
                totals: fresh(items),
            });
            groups.len() - 1
        });
        for total in &mut groups[at].totals {
            total.add(document);
        }
    }

    /// One row per group, in first-seen order.
    pub fn finish(self, projection: &Projection, group_by: &[Path]) -> Vec<serde_json::Value> {
        let Projection::Items(items) = projection else {
            return Vec::new();
        };
        if self.groups.is_empty() && group_by.is_empty() {
            // Without GROUP BY an aggregate query has one row even over nothing (COUNT() is 0).
            return vec![row(items, None, fresh(items))];
        }
        self.groups
            .into_iter()
            .map(|g| row(items, Some(g.first), g.totals))
            .collect()
    }
}

fn fresh(items: &[Item]) -> Vec<Total> {
    items.iter().map(|i| Total::new(&i.source)).collect()
}

/// The identity of a document's group: its grouped values as text, a missing value apart from `null`, and
/// numbers by value (so `1` and `1.0` group together, as they compare equal).
fn group_key(group_by: &[Path], document: &serde_json::Value) -> String {
    let mut key = String::new();
    for path in group_by {
        match path.lookup(document) {
            None => key.push('u'),
            Some(serde_json::Value::Number(n)) => {
                key.push('n');
                key.push_str(&n.as_f64().unwrap_or(f64::NAN).to_string());
            }
            // Serialised JSON escapes control characters, so the separator below never appears inside.
            Some(value) => {
                key.push('j');
                key.push_str(&value.to_string());
            }
        }
        key.push('\0');
    }
    key
}

/// The row of one group: its grouped paths from its first document, its finished aggregates.
fn row(
    items: &[Item],
    first: Option<Vec<Option<serde_json::Value>>>,
    totals: Vec<Total>,
) -> serde_json::Value {
    let mut row = serde_json::Map::new();
    let first = first.unwrap_or_default();
    let mut first = first.into_iter();
    for (item, total) in items.iter().zip(totals) {
        let grouped = first.next().flatten();
        let value = match &item.source {
            Source::Path(_) => grouped,
            Source::Aggregate(_) => total.finish(),
        };
        if let Some(value) = value {
            row.insert(item.key.clone(), value);
        }
    }
    serde_json::Value::Object(row)
}

/// The running state of one aggregate (plain paths keep none).
enum Total {
    None,
    Count(u64),
    Sum(Path, f64),
    Avg(Path, f64, u64),
    /// `max` is false for `MIN`. The best number, else the best string.
    Extreme {
        path: Path,
        max: bool,
        number: Option<f64>,
        string: Option<String>,
    },
}

impl Total {
    fn new(source: &Source) -> Self {
        let extreme = |path: &Path, max| Self::Extreme {
            path: path.clone(),
            max,
            number: None,
            string: None,
        };
        match source {
            Source::Path(_) => Self::None,
            Source::Aggregate(Aggregate::Count) => Self::Count(0),
            Source::Aggregate(Aggregate::Sum(p)) => Self::Sum(p.clone(), 0.0),
            Source::Aggregate(Aggregate::Avg(p)) => Self::Avg(p.clone(), 0.0, 0),
            Source::Aggregate(Aggregate::Min(p)) => extreme(p, false),
            Source::Aggregate(Aggregate::Max(p)) => extreme(p, true),
        }
    }

    fn add(&mut self, document: &serde_json::Value) {
        let scalar = |path: &Path| match resolve(path, document) {
            Operand::Scalar(v) => v,
            Operand::Composite(_) => Value::Undefined,
        };
        match self {
            Self::None => {}
            Self::Count(n) => *n += 1,
            Self::Sum(path, sum) => {
                if let Value::Number(x) = scalar(path) {
                    *sum += x;
                }
            }
            Self::Avg(path, sum, count) => {
                if let Value::Number(x) = scalar(path) {
                    *sum += x;
                    *count += 1;
                }
            }
            Self::Extreme {
                path,
                max,
                number,
                string,
            } => match scalar(path) {
                Value::Number(x) => {
                    let better = number.is_none_or(|best| if *max { x > best } else { x < best });
                    if better {
                        *number = Some(x);
                    }
                }
                Value::String(s) => {
                    let better =
                        string
                            .as_ref()
                            .is_none_or(|best| if *max { s > *best } else { s < *best });
                    if better {
                        *string = Some(s);
                    }
                }
                _ => {}
            },
        }
    }

    /// The aggregate's value, `None` when it has nothing to show.
    fn finish(self) -> Option<serde_json::Value> {
        match self {
            Self::None => None,
            Self::Count(n) => Some(n.into()),
            Self::Sum(_, sum) => number(sum),
            Self::Avg(_, sum, count) => (count > 0).then(|| number(sum / count as f64)).flatten(),
            Self::Extreme {
                number: n, string, ..
            } => match n {
                Some(n) => number(n),
                None => string.map(serde_json::Value::String),
            },
        }
    }
}

/// A JSON number, written as an integer when it is a whole number in the exact range of `f64`.
fn number(n: f64) -> Option<serde_json::Value> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if n.fract() == 0.0 && n.abs() <= EXACT {
        return Some((n as i64).into());
    }
    serde_json::Number::from_f64(n).map(serde_json::Value::Number)
}
