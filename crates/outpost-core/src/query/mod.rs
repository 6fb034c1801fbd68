//! IoT Hub's query language over device and module twins: `POST /devices/query`, configurations'
//! `targetCondition` and metric queries, jobs' `queryCondition`.
//!
//! `SELECT [TOP n] * | projection, ... FROM devices | devices.modules [WHERE condition] [GROUP BY path, ...]`,
//! keywords in any case. [`Query::parse`] checks a query completely (syntax, function names and arities,
//! projections against `GROUP BY`) and refuses it with a [`QueryError`] that names line and column;
//! [`Query::run`] filters, projects and aggregates twin documents (the JSON the REST API returns).
//! [`QueryCondition`] is the `WHERE` grammar alone.
//!
//! Layout: `lexer` cuts tokens, `parser` builds the condition tree and the select list, `eval` evaluates a
//! condition over one document, `select` projects rows and computes groups and aggregates. Start with this
//! file, then `parser`.
//!
//! Shared with the route language ([`crate::route`]), because the grammars agree there: the string rule
//! (both quotes, `\" \' \\ \uXXXX` escapes) and the number rules of its lexer, its scalar value type and
//! its comparison (like types only, strings by code point, booleans only with `=` and `!=`, `null = null`),
//! its three-valued `AND`/`OR`/`NOT` (`null` counts as false), its string built-ins (`LOWER`, `UPPER`,
//! `LENGTH`, `CONTAINS`, `STARTSWITH`, `ENDSWITH`) and its depth limit [`MAX_DEPTH`].
//!
//! Different on purpose:
//! - **Names are twin paths**, not edgeHub identifiers: a name is letters, digits, `_` and `$` (so
//!   `properties.desired.$version` works), segments are joined by `.`, and `[[any text]]` writes a segment
//!   with other characters (`configurations.[[my-config]].status`). `a-b` is a subtraction here, and `-2` a
//!   negation of 2 (the route lexer makes both one token). A keyword after a `.` is a plain segment
//!   (`properties.reported.in`).
//! - **`NOT` binds looser than comparisons**, as in SQL: `NOT a = 1` is `NOT (a = 1)` (edgeHub's routes
//!   read `(NOT a) = 1`).
//! - **Objects and arrays are values**: `IS_OBJECT`, `IS_ARRAY` and projections see them; comparing them
//!   with anything is undefined.
//!
//! Decisions where IoT Hub's documents are silent:
//! - Path segments match document keys exactly (case-sensitive), as twin property names are.
//! - Undefined (a missing path, a comparison of unlike types) makes a condition fail, also under `NOT`.
//!   `x IN [..]` is true when `x` equals an element, false when it equals none, undefined when `x` is
//!   undefined, an object or an array; `NIN` (also written `NOT IN`) is its negation with the same
//!   undefined cases. List elements are literals (strings, numbers, `true`, `false`, `null`).
//! - Arithmetic (`+ - * / %`, unary `-`) takes numbers only, anything else is undefined; a NaN result is
//!   undefined.
//! - A projection without `AS` is keyed by its path's last segment; an aggregate without `AS` by `$1`,
//!   `$2`, ... in the order unnamed aggregates appear (as Cosmos DB names unnamed expressions). A projected
//!   path that is missing from a document is left out of that row.
//! - `COUNT()` counts rows; `SUM` adds the numbers it sees (0 when there are none); `AVG` averages them;
//!   `MIN` and `MAX` take the least or greatest number, or when there is none the least or greatest string
//!   (ISO timestamps compare well). Other values are skipped; an `AVG`, `MIN` or `MAX` with nothing to
//!   work on is left out of the row. Whole numbers are written as JSON integers.
//! - An aggregate query without `GROUP BY` always gives one row, even over no documents (`COUNT()` is 0).
//!   With `GROUP BY`, documents missing a grouped path form a group of their own (apart from `null`), whose
//!   rows leave that key out; numbers group by value (`1` with `1.0`), other values by their JSON text;
//!   groups come in first-seen order. A non-aggregate projection must be one of the `GROUP BY` paths,
//!   and `SELECT *` cannot be aggregated.
//! - `TOP n` keeps the first `n` result rows.
//! - Not supported (refused when parsed): `FROM devices.jobs`, array indexes in paths (`a[0]`), array
//!   literals outside `IN`/`NIN`, expressions other than paths and aggregates in the select list, `ORDER BY`,
//!   SQL's doubled quote (`'it''s'`; write `'it\'s'`), and the routing-only functions (math, `SUBSTRING`,
//!   `CONCAT`, ...).
//! - [`Query::run`] does not look at [`Query::collection`]: the caller passes device or module twins.
//! - Limits against hostile input: at most [`MAX_QUERY_LEN`] bytes of text and [`MAX_DEPTH`] levels of
//!   nesting (parentheses, `NOT`, unary `-`, calls); `AND`, `OR` and arithmetic chains are kept flat, so a
//!   long `OR` list of device ids costs no depth. Parsing and evaluation never panic.

mod eval;
mod lexer;
mod narrow;
mod parser;
mod select;
#[cfg(test)]
mod tests;

pub use crate::route::MAX_DEPTH;
pub use narrow::{Constraint, Field, Literal, Narrowing};

/// The longest query or condition text accepted, in bytes (IoT Hub's limit on query text).
pub const MAX_QUERY_LEN: usize = 8192;

/// Why a query or condition is invalid; the `Display` text is meant for the 400 description the hub reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The text is longer than [`MAX_QUERY_LEN`] bytes.
    #[error("query is {len} bytes long, at most {MAX_QUERY_LEN} are allowed")]
    TooLong {
        /// The length of the refused text in bytes.
        len: usize,
    },
    /// The text does not follow the grammar.
    #[error("syntax error at line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column in that line, in characters.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A call to a function the language does not have.
    #[error("unknown function '{name}' at line {line}, column {column}")]
    UnknownFunction {
        /// 1-based line of the function name.
        line: usize,
        /// 1-based column of the function name.
        column: usize,
        /// The name as written.
        name: String,
    },
    /// A function or aggregate called with the wrong number or kind of arguments.
    #[error("invalid arguments to '{function}' at line {line}, column {column}: {message}")]
    Arguments {
        /// 1-based line of the function name.
        line: usize,
        /// 1-based column of the function name.
        column: usize,
        /// The name as written.
        function: String,
        /// What the function expects.
        message: String,
    },
    /// The condition nests more than [`MAX_DEPTH`] levels deep.
    #[error("condition nests more than {MAX_DEPTH} levels deep at line {line}, column {column}")]
    TooDeep {
        /// 1-based line where the limit was passed.
        line: usize,
        /// 1-based column where the limit was passed.
        column: usize,
    },
}

impl QueryError {
    /// The 1-based column (in characters, within its line) the error points at; `None` for a text that is
    /// too long.
    pub fn column(&self) -> Option<usize> {
        self.position().map(|(_, column)| column)
    }

    /// The 1-based line the error points at; `None` for a text that is too long.
    pub fn line(&self) -> Option<usize> {
        self.position().map(|(line, _)| line)
    }

    fn position(&self) -> Option<(usize, usize)> {
        match self {
            Self::TooLong { .. } => None,
            Self::Syntax { line, column, .. }
            | Self::UnknownFunction { line, column, .. }
            | Self::Arguments { line, column, .. }
            | Self::TooDeep { line, column } => Some((*line, *column)),
        }
    }
}

/// The document collection a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Collection {
    /// `FROM devices`: device twins.
    Devices,
    /// `FROM devices.modules`: module twins.
    Modules,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    top: Option<usize>,
    projection: select::Projection,
    collection: Collection,
    condition: Option<parser::Expr>,
    group_by: Vec<parser::Path>,
}

impl Query {
    /// Parses and checks a query.
    pub fn parse(text: &str) -> Result<Self, QueryError> {
        check_length(text)?;
        parser::parse_query(text)
    }

    /// The collection after `FROM`.
    pub fn collection(&self) -> Collection {
        self.collection
    }

    /// Whether the query aggregates: it has `COUNT`, `SUM`, `AVG`, `MIN`, `MAX` or `GROUP BY`.
    pub fn is_aggregate(&self) -> bool {
        !self.group_by.is_empty() || self.projection.has_aggregates()
    }

    /// The `n` of `SELECT TOP n`, if given.
    pub fn top(&self) -> Option<usize> {
        self.top
    }

    /// Whether the `WHERE` clause alone holds for a document (true without `WHERE`).
    pub fn matches(&self, document: &serde_json::Value) -> bool {
        self.condition
            .as_ref()
            .is_none_or(|c| eval::holds(c, document))
    }

    /// What an index may check of the `WHERE` clause before [`Query::matches`] (see [`Narrowing`]).
    pub fn narrowing(&self) -> Narrowing {
        Narrowing::of(self.condition.as_ref())
    }

    /// `WHERE`, then projection, `GROUP BY` and aggregates over twin documents; rows come in input order
    /// (groups in first-seen order), at most `TOP n` of them. `SELECT *` returns each document unchanged.
    pub fn run<'a>(
        &self,
        documents: impl IntoIterator<Item = &'a serde_json::Value>,
    ) -> Vec<serde_json::Value> {
        let mut rows = self.rows();
        for document in documents {
            if rows.is_full() {
                break;
            }
            rows.add(document);
        }
        rows.finish()
    }

    /// The rows of [`Query::run`], fed one document at a time (so that a caller can read the fleet in pages):
    /// an aggregate query keeps one small row per group, any other its projected rows up to `TOP n`.
    pub fn rows(&self) -> Rows<'_> {
        let state = if self.is_aggregate() {
            RowState::Groups(select::Grouping::new())
        } else {
            RowState::Projected(Vec::new())
        };
        Rows { query: self, state }
    }

    /// How many rows [`Query::run`] gives, fed one document at a time, keeping no row of a query without
    /// aggregates.
    pub fn row_count(&self) -> Rows<'_> {
        let state = if self.is_aggregate() {
            RowState::Groups(select::Grouping::new())
        } else {
            RowState::Counted(0)
        };
        Rows { query: self, state }
    }
}

/// A query's result being built from documents fed one at a time ([`Query::rows`], [`Query::row_count`]).
pub struct Rows<'q> {
    query: &'q Query,
    state: RowState,
}

enum RowState {
    Groups(select::Grouping),
    Projected(Vec<serde_json::Value>),
    Counted(usize),
}

impl Rows<'_> {
    /// Feeds one document (ignored once [`Rows::is_full`]).
    pub fn add(&mut self, document: &serde_json::Value) {
        if self.is_full() || !self.query.matches(document) {
            return;
        }
        let query = self.query;
        match &mut self.state {
            RowState::Groups(grouping) => {
                grouping.add(&query.projection, &query.group_by, document);
            }
            RowState::Projected(rows) => rows.push(query.projection.project(document)),
            RowState::Counted(n) => *n += 1,
        }
    }

    /// Whether a query without aggregates has its `TOP n` rows: no document fed later changes the result.
    pub fn is_full(&self) -> bool {
        let limit = self.query.top.unwrap_or(usize::MAX);
        match &self.state {
            RowState::Groups(_) => false,
            RowState::Projected(rows) => rows.len() >= limit,
            RowState::Counted(n) => *n >= limit,
        }
    }

    /// How many rows a query without aggregates has so far (0 for an aggregate query, whose rows exist only
    /// once every document was fed).
    pub fn ungrouped_rows(&self) -> usize {
        match &self.state {
            RowState::Groups(_) => 0,
            RowState::Projected(rows) => rows.len(),
            RowState::Counted(n) => *n,
        }
    }

    /// The rows (for [`Query::row_count`], as many empty objects as there are rows: use [`Rows::count`]).
    pub fn finish(self) -> Vec<serde_json::Value> {
        let limit = self.query.top.unwrap_or(usize::MAX);
        let mut rows = match self.state {
            RowState::Groups(grouping) => {
                if matches!(self.query.projection, select::Projection::All) {
                    // The parser refuses `SELECT *` with aggregates.
                    Vec::new()
                } else {
                    grouping.finish(&self.query.projection, &self.query.group_by)
                }
            }
            RowState::Projected(rows) => rows,
            RowState::Counted(n) => vec![serde_json::Value::Object(serde_json::Map::new()); n],
        };
        rows.truncate(limit);
        rows
    }

    /// The number of rows the result has.
    pub fn count(self) -> usize {
        let limit = self.query.top.unwrap_or(usize::MAX);
        match self.state {
            RowState::Counted(n) => n.min(limit),
            RowState::Projected(rows) => rows.len().min(limit),
            RowState::Groups(_) => self.finish().len(),
        }
    }
}

/// A `WHERE` condition on its own: configurations' `targetCondition`, jobs' `queryCondition`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryCondition(Option<parser::Expr>);

impl QueryCondition {
    /// Parses a condition; `*` (IoT Hub's "all devices") matches every document. Empty text is an error.
    pub fn parse(text: &str) -> Result<Self, QueryError> {
        check_length(text)?;
        if text.trim() == "*" {
            return Ok(Self(None));
        }
        parser::parse_condition(text).map(|c| Self(Some(c)))
    }

    /// What an index may check of the condition before [`QueryCondition::matches`] (see [`Narrowing`]).
    pub fn narrowing(&self) -> Narrowing {
        Narrowing::of(self.0.as_ref())
    }

    /// Whether the condition is exactly true for a document (false and undefined both refuse it).
    pub fn matches(&self, document: &serde_json::Value) -> bool {
        self.0.as_ref().is_none_or(|c| eval::holds(c, document))
    }
}

/// Refuses text longer than [`MAX_QUERY_LEN`].
fn check_length(text: &str) -> Result<(), QueryError> {
    if text.len() > MAX_QUERY_LEN {
        return Err(QueryError::TooLong { len: text.len() });
    }
    Ok(())
}
