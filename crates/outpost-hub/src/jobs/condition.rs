//! A stand-in for `outpost_core::query::QueryCondition` until branch `query` is merged: comparisons joined by
//! `AND`, each `path = literal` or `path IN [literal, ...]`.
// integrator: replace with outpost_core::query::QueryCondition (and delete this file)

use serde_json::Value;

/// Why a condition was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(String);

/// A parsed WHERE condition over a twin document.
#[derive(Debug, Clone)]
pub struct QueryCondition(Vec<(Vec<String>, Vec<Value>)>);

fn literal(text: &str) -> Result<Value, QueryError> {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
        return Ok(Value::String(inner.to_owned()));
    }
    serde_json::from_str(text).map_err(|_| QueryError(format!("not a literal: {text}")))
}

impl QueryCondition {
    /// Parses a condition.
    pub fn parse(text: &str) -> Result<Self, QueryError> {
        let mut terms = Vec::new();
        for term in text.split(" AND ") {
            let (path, values) = if let Some((path, list)) = term.split_once(" IN ") {
                let list = list.trim();
                let inner = list
                    .strip_prefix('[')
                    .and_then(|l| l.strip_suffix(']'))
                    .ok_or_else(|| QueryError(format!("IN needs a [list]: {term}")))?;
                let values = inner.split(',').map(literal).collect::<Result<_, _>>()?;
                (path, values)
            } else if let Some((path, value)) = term.split_once('=') {
                (path, vec![literal(value)?])
            } else {
                return Err(QueryError(format!("not a comparison: {term}")));
            };
            let path = path.trim();
            if path.is_empty() || !path.chars().all(|c| c.is_alphanumeric() || c == '.' || c == '_' || c == '$') {
                return Err(QueryError(format!("not a property path: {path}")));
            }
            terms.push((path.split('.').map(str::to_owned).collect(), values));
        }
        Ok(Self(terms))
    }

    /// Whether `document` satisfies the condition.
    pub fn matches(&self, document: &Value) -> bool {
        self.0.iter().all(|(path, values)| {
            let found = path.iter().try_fold(document, |v, key| v.get(key));
            found.is_some_and(|found| values.contains(found))
        })
    }
}
