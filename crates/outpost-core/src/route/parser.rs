//! The route and condition grammars (`Route.g4`, `Condition.g4`) over the tokens of [`lexer`](super::lexer).
//!
//! Conditions are parsed by precedence climbing, lowest first: `??`, `OR`, `AND`, `= != <>`, `< <= > >=`,
//! `+ - ||`, `* / %`, then the prefix operators `-` and `NOT` (so `NOT a = b` is `(NOT a) = b`, as in
//! edgeHub). All binary operators group to the left. Everything that can be checked without a message is
//! checked here: function names and arities, `$body` paths, the sink, and the depth limit.

use super::eval::Value;
use super::functions::Function;
use super::lexer::{is_id_char, lex, Kind, Token};
use super::{Route, RouteError, RouteSource, Sink, MAX_DEPTH};
use crate::ModuleId;

/// A condition's expression tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// A literal; a number that does not parse (`e5`, an oversized hex) is undefined, as in edgeHub.
    Literal(Value),
    /// An application property by name.
    AppProperty(String),
    /// A system property by internal name (without the `$`).
    SystemProperty(String),
    /// A query into the JSON body.
    Body(BodyPath),
    /// The application property with this literal name if the message has it, else the fallback.
    AppOr(String, Box<Expr>),
    /// Unary minus.
    Negate(Box<Expr>),
    /// `NOT`.
    Not(Box<Expr>),
    /// A binary operator.
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// A built-in other than `twin_change_includes`.
    Call(Function, Vec<Expr>),
    /// `twin_change_includes(path)`.
    TwinChangeIncludes(BodyPath),
}

/// The binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    Mul,
    Div,
    Mod,
    Add,
    Sub,
    Concat,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
    Coalesce,
}

/// A JSON path in edgeHub's subset: `name([index])?` segments joined by `.`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BodyPath(pub Vec<PathStep>);

/// One segment of a [`BodyPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathStep {
    pub key: String,
    pub index: Option<usize>,
}

/// Parses a whole route.
pub(crate) fn parse_route(text: &str) -> Result<Route, RouteError> {
    let mut parser = Parser::new(text)?;
    if parser.eat(&Kind::Select) {
        parser.expect(&Kind::Star, "expected '*' after SELECT")?;
    }
    parser.expect(&Kind::From, "a route starts with FROM (or SELECT * FROM)")?;
    let source = parser.source()?;
    let condition = if parser.eat(&Kind::Where) {
        Some(super::Condition(parser.expr(0)?.0))
    } else {
        None
    };
    parser.expect(&Kind::Into, "expected INTO after the source or condition")?;
    let sink = parser.sink()?;
    parser.end("after the sink")?;
    Ok(Route {
        source,
        condition,
        sink,
    })
}

/// Parses a condition on its own.
pub(crate) fn parse_condition(text: &str) -> Result<Expr, RouteError> {
    let mut parser = Parser::new(text)?;
    let (expr, _) = parser.expr(0)?;
    parser.end("after the condition")?;
    Ok(expr)
}

/// A parser over the tokens of one text.
struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// The column just past the text, for errors at the end.
    end_column: usize,
    /// Parentheses, prefix operators and calls currently open.
    nesting: usize,
}

impl Parser {
    fn new(text: &str) -> Result<Self, RouteError> {
        Ok(Self {
            tokens: lex(text)?,
            pos: 0,
            end_column: text.chars().count() + 1,
            nesting: 0,
        })
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn peek_kind(&self) -> Option<&Kind> {
        self.peek().map(|t| &t.kind)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += usize::from(token.is_some());
        token
    }

    fn column(&self) -> usize {
        self.peek().map_or(self.end_column, |t| t.column)
    }

    /// Consumes the next token if it is `kind`.
    fn eat(&mut self, kind: &Kind) -> bool {
        let found = self.peek_kind() == Some(kind);
        self.pos += usize::from(found);
        found
    }

    fn expect(&mut self, kind: &Kind, message: &str) -> Result<(), RouteError> {
        if self.eat(kind) {
            Ok(())
        } else {
            Err(self.unexpected(message))
        }
    }

    /// Requires the end of the text.
    fn end(&self, context: &str) -> Result<(), RouteError> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.unexpected(&format!("nothing may follow {context}"))),
        }
    }

    /// A syntax error at the next token, saying what was found.
    fn unexpected(&self, message: &str) -> RouteError {
        let found = match self.peek() {
            None => "the end of the route".to_owned(),
            Some(t) if t.kind == Kind::RParen => "an unmatched closing ')'".to_owned(),
            Some(t) if t.kind == Kind::Integer && t.text.starts_with('-') => format!(
                "'{}' (a '-' written against a number is its sign: put a space after the '-')",
                t.text
            ),
            Some(t) => format!("'{}'", t.text),
        };
        RouteError::Syntax {
            column: self.column(),
            message: format!("{message}, found {found}"),
        }
    }

    /// `('/' ('*' | ID))+`, normalised.
    fn source(&mut self) -> Result<RouteSource, RouteError> {
        if self.peek_kind() != Some(&Kind::Slash) {
            return Err(self.unexpected("expected a source path such as /messages/* after FROM"));
        }
        let mut path = String::new();
        while self.eat(&Kind::Slash) {
            // Any token made only of identifier characters, keywords aside, is a segment, so
            // `/messages/modules/3` works.
            match self.peek() {
                Some(t) if !is_keyword(&t.kind) && t.text.chars().all(is_id_char) => {
                    path.push('/');
                    path.push_str(&t.text);
                    self.pos += 1;
                }
                _ => return Err(self.unexpected("expected a path segment after '/'")),
            }
        }
        Ok(RouteSource::new(&path))
    }

    /// `$upstream` or `BrokeredEndpoint("/modules/{m}/inputs/{i}")`.
    fn sink(&mut self) -> Result<Sink, RouteError> {
        let column = self.column();
        let sink_error = |message: String| RouteError::Sink { column, message };
        let Some(token) = self.next() else {
            return Err(sink_error(
                "expected $upstream or BrokeredEndpoint(\"/modules/{m}/inputs/{i}\")".into(),
            ));
        };
        match token.kind {
            Kind::SysProp if token.text.eq_ignore_ascii_case("$upstream") => Ok(Sink::Upstream),
            Kind::SysProp => Err(sink_error(format!(
                "system endpoint '{}' is not supported, only $upstream",
                token.text
            ))),
            Kind::Id if self.peek_kind() == Some(&Kind::LParen) => {
                if !token.text.eq_ignore_ascii_case("BrokeredEndpoint") {
                    return Err(sink_error(format!(
                        "endpoint function '{}' is not supported, only BrokeredEndpoint",
                        token.text
                    )));
                }
                self.pos += 1;
                let Some(Token { kind: Kind::Str(address), .. }) = self.next() else {
                    return Err(sink_error(
                        "BrokeredEndpoint takes one string: \"/modules/{m}/inputs/{i}\"".into(),
                    ));
                };
                self.expect(&Kind::RParen, "expected ')' after the BrokeredEndpoint address")?;
                brokered_endpoint(&address).map_err(sink_error)
            }
            _ => Err(sink_error(format!(
                "expected $upstream or BrokeredEndpoint(\"/modules/{{m}}/inputs/{{i}}\"), found '{}'",
                token.text
            ))),
        }
    }

    /// An expression whose binary operators bind at least as tightly as `min_level`, and its height.
    fn expr(&mut self, min_level: u8) -> Result<(Expr, usize), RouteError> {
        let (mut left, mut height) = self.unary()?;
        while let Some((op, level)) = self.peek_kind().and_then(binary_op) {
            if level < min_level {
                break;
            }
            let column = self.column();
            self.pos += 1;
            let (right, right_height) = self.expr(level + 1)?;
            height = grow(height.max(right_height), column)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok((left, height))
    }

    /// Prefix operators, then a primary expression.
    fn unary(&mut self) -> Result<(Expr, usize), RouteError> {
        let wrap: fn(Box<Expr>) -> Expr = match self.peek_kind() {
            Some(Kind::Minus) => Expr::Negate,
            Some(Kind::Not) => Expr::Not,
            _ => return self.primary(),
        };
        let column = self.column();
        self.pos += 1;
        let (operand, height) = self.nested(Self::unary)?;
        Ok((wrap(Box::new(operand)), grow(height, column)?))
    }

    /// Runs `parse` one nesting level deeper, refusing to go past [`MAX_DEPTH`].
    fn nested<T>(
        &mut self,
        parse: impl FnOnce(&mut Self) -> Result<T, RouteError>,
    ) -> Result<T, RouteError> {
        if self.nesting >= MAX_DEPTH {
            return Err(RouteError::TooDeep {
                column: self.column(),
            });
        }
        self.nesting += 1;
        let result = parse(self);
        self.nesting -= 1;
        result
    }

    fn primary(&mut self) -> Result<(Expr, usize), RouteError> {
        let column = self.column();
        let Some(token) = self.next() else {
            return Err(RouteError::Syntax {
                column,
                message: "expected a value, found the end of the route".into(),
            });
        };
        let expr = match token.kind {
            Kind::LParen => {
                let inner = self.nested(|p| p.expr(0))?;
                if !self.eat(&Kind::RParen) {
                    return Err(
                        self.unexpected(&format!("missing ')' for the '(' at column {column}"))
                    );
                }
                return Ok(inner);
            }
            Kind::Str(s) => Expr::Literal(Value::String(s)),
            Kind::Integer | Kind::Real => Expr::Literal(number(&token.text)),
            Kind::Hex => Expr::Literal(hex_number(&token.text[2..])),
            Kind::True => Expr::Literal(Value::Bool(true)),
            Kind::False => Expr::Literal(Value::Bool(false)),
            Kind::Null => Expr::Literal(Value::Null),
            Kind::Undefined => Expr::Literal(Value::Undefined),
            Kind::SysProp => dollar_property(&token)?,
            Kind::LBrace => {
                let prop = self
                    .next()
                    .filter(|t| t.kind == Kind::SysProp)
                    .ok_or_else(|| RouteError::Syntax {
                        column,
                        message: "'{' must enclose a $ property, as in {$messageId}".into(),
                    })?;
                self.expect(&Kind::RBrace, "expected '}' after the $ property")?;
                forced_system_property(&prop)?
            }
            Kind::Id if self.peek_kind() == Some(&Kind::LParen) => {
                self.pos += 1;
                return self.nested(|p| p.call(&token));
            }
            Kind::Id => Expr::AppProperty(token.text),
            _ => {
                self.pos -= 1;
                return Err(self.unexpected("expected a value"));
            }
        };
        Ok((expr, 1))
    }

    /// The arguments and `)` of a call to `name` (whose `(` is consumed).
    fn call(&mut self, name: &Token) -> Result<(Expr, usize), RouteError> {
        let function =
            Function::from_name(&name.text).ok_or_else(|| RouteError::UnknownFunction {
                column: name.column,
                name: name.text.clone(),
            })?;
        let mut args = Vec::new();
        let mut height = 0;
        if !self.eat(&Kind::RParen) {
            loop {
                let (arg, arg_height) = self.expr(0)?;
                args.push(arg);
                height = height.max(arg_height);
                if self.eat(&Kind::RParen) {
                    break;
                }
                if !self.eat(&Kind::Comma) {
                    return Err(self.unexpected(&format!(
                        "expected ',' or ')' in the call to {} at column {}",
                        name.text, name.column
                    )));
                }
            }
        }
        let arguments_error = |message: String| RouteError::Arguments {
            column: name.column,
            function: name.text.clone(),
            message,
        };
        if !function.accepts(args.len()) {
            return Err(arguments_error(format!(
                "{} given, {}",
                args.len(),
                function.arity_text()
            )));
        }
        let expr = if function == Function::TwinChangeIncludes {
            // edgeHub passes the argument's text, a property path such as properties.reported.x.
            let Some(Expr::AppProperty(path)) = args.pop() else {
                return Err(arguments_error(
                    "the argument must be a path such as properties.reported.x".into(),
                ));
            };
            Expr::TwinChangeIncludes(body_path(&path).map_err(arguments_error)?)
        } else {
            Expr::Call(function, args)
        };
        Ok((expr, grow(height, name.column)?))
    }
}

/// The height of a node over children of `height`, refused past [`MAX_DEPTH`].
fn grow(height: usize, column: usize) -> Result<usize, RouteError> {
    if height >= MAX_DEPTH {
        return Err(RouteError::TooDeep { column });
    }
    Ok(height + 1)
}

/// Whether a token is one of the keywords, which never name a path segment.
fn is_keyword(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Select | Kind::From | Kind::Where | Kind::Into | Kind::And | Kind::Or | Kind::Not
    )
}

/// The operator a token stands for and its level (higher binds tighter).
fn binary_op(kind: &Kind) -> Option<(BinaryOp, u8)> {
    Some(match kind {
        Kind::Coalesce => (BinaryOp::Coalesce, 1),
        Kind::Or => (BinaryOp::Or, 2),
        Kind::And => (BinaryOp::And, 3),
        Kind::Eq => (BinaryOp::Eq, 4),
        Kind::Ne | Kind::LtGt => (BinaryOp::Ne, 4),
        Kind::Lt => (BinaryOp::Lt, 5),
        Kind::Le => (BinaryOp::Le, 5),
        Kind::Gt => (BinaryOp::Gt, 5),
        Kind::Ge => (BinaryOp::Ge, 5),
        Kind::Plus => (BinaryOp::Add, 6),
        Kind::Minus => (BinaryOp::Sub, 6),
        Kind::Concat => (BinaryOp::Concat, 6),
        Kind::Star => (BinaryOp::Mul, 7),
        Kind::Slash => (BinaryOp::Div, 7),
        Kind::Percent => (BinaryOp::Mod, 7),
        _ => return None,
    })
}

/// A decimal literal; text that does not parse as a number (`e5` lexes as a real) is undefined.
fn number(text: &str) -> Value {
    text.parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
        .map_or(Value::Undefined, Value::Number)
}

/// A hex literal read as a signed 64-bit integer, as edgeHub does (`0xFFFFFFFFFFFFFFFF` is -1); longer is
/// undefined.
fn hex_number(digits: &str) -> Value {
    u64::from_str_radix(digits, 16).map_or(Value::Undefined, |n| Value::Number(n as i64 as f64))
}

/// Whether a `$` property name starts with `$body.` (in any case).
fn body_query(name: &str) -> Option<&str> {
    name.get(..6)
        .filter(|prefix| prefix.eq_ignore_ascii_case("$body."))
        .map(|_| &name[6..])
}

/// `$name`: the application property `$name` if the message has it, else the body query or the system
/// property `name`. A name with `[` or `]` can only be a body query (edgeHub: otherwise undefined).
fn dollar_property(token: &Token) -> Result<Expr, RouteError> {
    let name = &token.text;
    let brackets = name.contains(['[', ']']);
    let fallback = match body_query(name) {
        Some(path) => Expr::Body(checked_body_path(path, token)?),
        None if brackets => return Ok(Expr::Literal(Value::Undefined)),
        None => Expr::SystemProperty(name[1..].to_owned()),
    };
    Ok(if brackets {
        fallback
    } else {
        Expr::AppOr(name.clone(), Box::new(fallback))
    })
}

/// `{$name}`: a body query or a system property, never an application property.
fn forced_system_property(token: &Token) -> Result<Expr, RouteError> {
    let name = &token.text;
    Ok(match body_query(name) {
        Some(path) => Expr::Body(checked_body_path(path, token)?),
        None if name.contains(['[', ']']) => Expr::Literal(Value::Undefined),
        None => Expr::SystemProperty(name[1..].to_owned()),
    })
}

fn checked_body_path(path: &str, token: &Token) -> Result<BodyPath, RouteError> {
    body_path(path).map_err(|message| RouteError::Syntax {
        column: token.column,
        message: format!("invalid $body query '{}': {message}", token.text),
    })
}

/// Parses edgeHub's JSON path subset: `IDENTIFIER ('[' INT ']')?` segments joined by `.`.
fn body_path(path: &str) -> Result<BodyPath, String> {
    path.split('.')
        .map(|segment| {
            let (key, index) = match segment.split_once('[') {
                None => (segment, None),
                Some((key, rest)) => {
                    let digits = rest
                        .strip_suffix(']')
                        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| format!("'{segment}' must be name or name[index]"))?;
                    let index = digits
                        .parse()
                        .map_err(|_| format!("index {digits} is too large"))?;
                    (key, Some(index))
                }
            };
            if key.is_empty() || !key.chars().all(is_id_char) {
                return Err(format!("'{segment}' is not a valid path segment"));
            }
            Ok(PathStep {
                key: key.to_owned(),
                index,
            })
        })
        .collect::<Result<_, _>>()
        .map(BodyPath)
}

/// The sink of `BrokeredEndpoint("...")`: one leading and one trailing `/` are dropped (after trimming), the
/// rest must be `modules/{m}/inputs/{i}`.
fn brokered_endpoint(address: &str) -> Result<Sink, String> {
    let trimmed = address.trim();
    let trimmed = trimmed.strip_prefix('/').unwrap_or(trimmed);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let bad = || {
        format!("BrokeredEndpoint address \"{address}\" must be \"/modules/{{module}}/inputs/{{input}}\"")
    };
    let parts: Vec<&str> = trimmed.split('/').collect();
    let [modules, module, inputs, input] = parts[..] else {
        return Err(bad());
    };
    if !modules.eq_ignore_ascii_case("modules") || !inputs.eq_ignore_ascii_case("inputs") {
        return Err(bad());
    }
    let module =
        ModuleId::new(module).map_err(|e| format!("invalid module id in \"{address}\": {e}"))?;
    // The input name becomes an MQTT topic level, where wildcards are not allowed.
    if input.is_empty() || input.contains(['+', '#', '\0']) {
        return Err(format!("invalid input name \"{input}\" in \"{address}\""));
    }
    Ok(Sink::ModuleInput {
        module,
        input: input.to_owned(),
    })
}
