//! The edge hub's route language (AZURE-COMPAT §7.1): `[SELECT *] FROM source [WHERE condition] INTO sink`.
//!
//! [`Route::parse`] checks a route completely (syntax, function names and arities, `$body` paths, the sink), so
//! an invalid route is refused when the deployment arrives, with a [`RouteError`] that names the column.
//! [`Route::matches`] then decides, for one message, whether the route takes it: its [`MessageSource`] must
//! start with the route's source and the condition must evaluate to exactly `true`.
//!
//! Layout: `lexer` cuts tokens as edgeHub's ANTLR lexer does, `parser` builds the expression tree, `eval`
//! evaluates it with three-valued logic and resolves properties, `functions` holds the built-ins.
//!
//! Decisions where the Azure documents are silent or where Outpost differs on purpose:
//! - **Types are checked at run time.** edgeHub type-checks a condition when it compiles it and refuses, for
//!   example, `temperature > 30` (an application property is a string, 30 a number). IoT Hub's routing
//!   documentation describes the same comparison as undefined. Outpost accepts the route and the comparison
//!   is undefined, so the route does not match; write `as_number(temperature) > 30`. Arithmetic, `||` and the
//!   built-ins give undefined for operands of the wrong type; `AND`, `OR` and `NOT` treat `null` as false.
//! - **Missing `$body` paths are undefined** (edgeHub returns null), as are JSON objects and arrays. A body
//!   is read only when `contentType` is `application/json` and `contentEncoding` is `utf-8`, `utf-16` or
//!   `utf-32` (both case-insensitive; UTF-16/32 little-endian, as .NET's `Encoding.Unicode` and `UTF32`).
//! - **Property names are case-insensitive**, as edgeHub's property dictionaries are: an exact match first,
//!   then any case. A key sent without `=` is `null`. System properties are looked up by the internal names
//!   [`Message::system`] already uses (`messageId`, `correlationId`, `connectionModuleId`, ...): the route
//!   names and the internal names are the same.
//! - Strings compare by code point, case-sensitively; `length`, `index_of` and `substring` count characters
//!   (edgeHub counts UTF-16 units: the same for text outside the astral planes). Booleans only compare with
//!   `=` and `!=`. A numeric result that is NaN is undefined.
//! - `twin_change_includes(path)` is true when a twin-change notification's JSON body holds a non-null value
//!   at `path`, false when it does not, and undefined for any other source (edgeHub refuses the route). The
//!   hub writes those notifications, so their body is read as JSON whatever `contentType` says.
//! - Tokens are cut exactly as edgeHub cuts them, quirks included: identifiers may hold `- + * % ! | '`,
//!   so `a-b` and `5-2` are property names and `x!=1` tests the property `x!`; `-2` is a number; `/* */`
//!   is a comment, even after `FROM /messages/*` when a `*/` follows. Operators need spaces around them.
//! - A source segment that lexes as a number, literal or `$` name (`/messages/modules/3`, `$edgeHub`) is
//!   accepted; edgeHub's parser refuses it. Keywords are still refused there.
//! - A `BrokeredEndpoint` path must read `modules/{m}/inputs/{i}` with a valid module id and an input name
//!   without MQTT wildcards; edgeHub only counts the segments.
//! - Limits against hostile input: a route is at most [`MAX_ROUTE_LEN`] bytes and its condition at most
//!   [`MAX_DEPTH`] levels deep, so parsing and evaluation neither panic nor recurse without bound.

// The query language (`crate::query`) shares the lexer's string and number rules, the value type, the
// comparison and the scalar built-ins, so these modules are visible to the crate.
pub(crate) mod eval;
pub(crate) mod functions;
pub(crate) mod lexer;
pub(crate) mod parser;
#[cfg(test)]
mod tests;

use crate::{Message, ModuleId};

/// The longest route text accepted, in bytes.
pub const MAX_ROUTE_LEN: usize = 4096;
/// The deepest a condition may nest: parentheses, unary operators, calls and operator chains all count.
pub const MAX_DEPTH: usize = 64;

/// Why a route is invalid; the `Display` text is meant for the 400 description the edge hub reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The route text is longer than [`MAX_ROUTE_LEN`] bytes.
    #[error("route is {len} bytes long, at most {MAX_ROUTE_LEN} are allowed")]
    TooLong {
        /// The length of the refused text in bytes.
        len: usize,
    },
    /// The text does not follow the grammar.
    #[error("syntax error at column {column}: {message}")]
    Syntax {
        /// 1-based column where the problem starts, in characters from the start of the text.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A call to a function that is not a built-in.
    #[error("invalid built-in function '{name}' at column {column}")]
    UnknownFunction {
        /// 1-based column of the function name.
        column: usize,
        /// The name as written.
        name: String,
    },
    /// A built-in called with the wrong number or kind of arguments.
    #[error("invalid arguments to built-in function '{function}' at column {column}: {message}")]
    Arguments {
        /// 1-based column of the function name.
        column: usize,
        /// The name as written.
        function: String,
        /// What the function expects.
        message: String,
    },
    /// The sink is neither `$upstream` nor a valid `BrokeredEndpoint("/modules/{m}/inputs/{i}")`.
    #[error("invalid sink at column {column}: {message}")]
    Sink {
        /// 1-based column of the sink.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The condition nests more than [`MAX_DEPTH`] levels deep.
    #[error("condition nests more than {MAX_DEPTH} levels deep at column {column}")]
    TooDeep {
        /// 1-based column where the limit was passed.
        column: usize,
    },
}

impl RouteError {
    /// The 1-based column (in characters from the start of the text) the error points at; 1 for a route
    /// that is too long.
    pub fn column(&self) -> usize {
        match self {
            Self::TooLong { .. } => 1,
            Self::Syntax { column, .. }
            | Self::UnknownFunction { column, .. }
            | Self::Arguments { column, .. }
            | Self::Sink { column, .. }
            | Self::TooDeep { column } => *column,
        }
    }
}

/// A parsed route: where messages come from, which of them to take, where they go.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The messages the route looks at.
    pub source: RouteSource,
    /// The condition after `WHERE`, if any.
    pub condition: Option<Condition>,
    /// Where matching messages go.
    pub sink: Sink,
}

impl Route {
    /// Parses and checks a route; keywords are case-insensitive.
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        check_length(text)?;
        parser::parse_route(text)
    }

    /// Whether the route takes this message: the source matches and the condition is exactly `true`.
    pub fn matches(&self, source: &MessageSource, message: &Message) -> bool {
        self.matches_at(&source.path(), source, message)
    }

    /// [`Route::matches`] with the source's [`path`](MessageSource::path) made once for all the routes.
    pub fn matches_at(&self, path: &str, source: &MessageSource, message: &Message) -> bool {
        self.source.matches_path(path)
            && self
                .condition
                .as_ref()
                .is_none_or(|c| c.matches(source, message))
    }
}

/// The source of a route, normalised: trimmed, trailing `*` and `/` dropped, one `/` appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSource(String);

impl RouteSource {
    /// Normalises a source path as edgeHub's `CustomMessageSource` does (`/messages/*` becomes `/messages/`).
    pub fn new(path: &str) -> Self {
        let trimmed = path.trim().trim_end_matches('*').trim_end_matches('/');
        Self(format!("{trimmed}/"))
    }

    /// The normalised prefix, ending in `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a message from `source` is one this route looks at: a case-insensitive prefix test.
    pub fn matches(&self, source: &MessageSource) -> bool {
        self.matches_path(&source.path())
    }

    /// [`RouteSource::matches`] with the source's path made already.
    pub fn matches_path(&self, path: &str) -> bool {
        // The common case, on every message and route: ASCII on both sides (ids are ASCII), compared in place.
        if self.0.is_ascii() && path.is_ascii() {
            return path.len() >= self.0.len()
                && path.as_bytes()[..self.0.len()].eq_ignore_ascii_case(self.0.as_bytes());
        }
        let mut path_chars = path.chars().flat_map(char::to_lowercase);
        self.0
            .chars()
            .flat_map(char::to_lowercase)
            .all(|c| path_chars.next() == Some(c))
    }
}

/// Where a message entered the edge hub, as the route language names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MessageSource {
    /// Telemetry from a device or a leaf device: `/messages/`.
    Telemetry,
    /// A module's message sent without an output name: `/messages/modules/{module}/`.
    Module {
        /// The sending module.
        module: String,
    },
    /// A module's output: `/messages/modules/{module}/outputs/{output}/`.
    ModuleOutput {
        /// The sending module.
        module: String,
        /// The output name (`$.on`).
        output: String,
    },
    /// A reported-property change: `/twinChangeNotifications/`.
    TwinChangeNotifications,
}

impl MessageSource {
    /// The source of a message sent by a device (`module` is `None`) or a module, on an output or not.
    ///
    /// An output name from a device is ignored (devices have no outputs), and so is an empty one.
    pub fn from_sender(module: Option<&str>, output: Option<&str>) -> Self {
        match (module, output) {
            (None, _) => Self::Telemetry,
            (Some(m), Some(o)) if !o.is_empty() => Self::ModuleOutput {
                module: m.to_owned(),
                output: o.to_owned(),
            },
            (Some(m), _) => Self::Module {
                module: m.to_owned(),
            },
        }
    }

    /// The source path routes are matched against, ending in `/` (the router makes one per batch of messages:
    /// concatenated, not a `format!`, which costs several times as much).
    pub fn path(&self) -> String {
        match self {
            Self::Telemetry => "/messages/".to_owned(),
            Self::Module { module } => ["/messages/modules/", module, "/"].concat(),
            Self::ModuleOutput { module, output } => {
                ["/messages/modules/", module, "/outputs/", output, "/"].concat()
            }
            Self::TwinChangeNotifications => "/twinChangeNotifications/".to_owned(),
        }
    }
}

/// Where a route sends the messages it takes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sink {
    /// `$upstream`: the cloud (IoT Hub).
    Upstream,
    /// `BrokeredEndpoint("/modules/{module}/inputs/{input}")`: a module's input on this edge device.
    ModuleInput {
        /// The receiving module.
        module: ModuleId,
        /// The input name the message is delivered on.
        input: String,
    },
}

/// A parsed `WHERE` condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition(parser::Expr);

impl Condition {
    /// Parses and checks a condition on its own (columns count from its first character).
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        check_length(text)?;
        parser::parse_condition(text).map(Self)
    }

    /// Whether the condition is exactly `true` for this message (false and undefined both refuse it).
    pub fn matches(&self, source: &MessageSource, message: &Message) -> bool {
        eval::Scope::new(source, message).evaluate(&self.0) == eval::Value::Bool(true)
    }
}

/// Refuses text longer than [`MAX_ROUTE_LEN`].
fn check_length(text: &str) -> Result<(), RouteError> {
    if text.len() > MAX_ROUTE_LEN {
        return Err(RouteError::TooLong { len: text.len() });
    }
    Ok(())
}
