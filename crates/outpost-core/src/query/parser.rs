//! The query grammar over the tokens of [`lexer`](super::lexer).
//!
//! A condition is parsed by recursive descent, loosest first: `OR`, `AND`, `NOT`, one comparison or
//! `IN`/`NIN` (comparisons do not chain), `+ -`, `* / %`, unary `-`, then values: literals, parenthesised
//! conditions, calls and paths. `AND`, `OR` and arithmetic chains become flat lists, so only parentheses,
//! prefix operators and calls nest, and [`MAX_DEPTH`] bounds them.

use super::eval::Function;
use super::lexer::{lex, Kind, Token};
use super::select::{Aggregate, Item, Projection, Source};
use super::{Collection, Query, QueryError, MAX_DEPTH};
use crate::route::eval::Value;
use crate::route::parser::BinaryOp;

/// A condition's expression tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// A string, number, boolean or null.
    Literal(Value),
    /// A value in the document.
    Path(Path),
    /// `NOT`.
    Not(Box<Expr>),
    /// Unary minus.
    Negate(Box<Expr>),
    /// Operands joined by `AND` (at least two).
    And(Vec<Expr>),
    /// Operands joined by `OR` (at least two).
    Or(Vec<Expr>),
    /// A comparison (`BinaryOp::Eq`, `Ne`, `Lt`, `Le`, `Gt` or `Ge`).
    Compare(BinaryOp, Box<Expr>, Box<Expr>),
    /// A first operand and `(operator, operand)` pairs applied left to right (`Add`, `Sub`, `Mul`, `Div`,
    /// `Mod`); `*` binds tighter than `+`, so a term holds only `* / %` and a sum only `+ -`.
    Arithmetic(Box<Expr>, Vec<(BinaryOp, Expr)>),
    /// `operand IN [list]`, or `NIN` when `negated`.
    In {
        operand: Box<Expr>,
        list: Vec<Value>,
        negated: bool,
    },
    /// A built-in function.
    Call(Function, Vec<Expr>),
}

/// A path into the twin document: keys from the root.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Path(pub Vec<String>);

impl Path {
    /// The last segment: a projection's key when it has no alias.
    pub fn last(&self) -> &str {
        self.0.last().map_or("", String::as_str)
    }

    /// The value at this path, if the document has one.
    pub fn lookup<'d>(&self, document: &'d serde_json::Value) -> Option<&'d serde_json::Value> {
        self.0
            .iter()
            .try_fold(document, |node, key| node.as_object()?.get(key))
    }
}

/// Parses a whole query.
pub(super) fn parse_query(text: &str) -> Result<Query, QueryError> {
    let mut parser = Parser::new(text)?;
    parser.expect(&Kind::Select, "a query starts with SELECT")?;
    let top = if parser.eat(&Kind::Top) {
        Some(parser.top()?)
    } else {
        None
    };
    let (projection, columns) = parser.projection()?;
    parser.expect(&Kind::From, "expected FROM after the select list")?;
    let collection = parser.collection()?;
    let condition = if parser.eat(&Kind::Where) {
        Some(parser.condition()?)
    } else {
        None
    };
    let mut group_by = Vec::new();
    if parser.eat(&Kind::Group) {
        parser.expect(&Kind::By, "expected BY after GROUP")?;
        loop {
            group_by.push(parser.path()?);
            if !parser.eat(&Kind::Comma) {
                break;
            }
        }
    }
    parser.end("after the query")?;
    let query = Query {
        top,
        projection,
        collection,
        condition,
        group_by,
    };
    check_aggregation(&query, &columns)?;
    Ok(query)
}

/// Parses a condition on its own.
pub(super) fn parse_condition(text: &str) -> Result<Expr, QueryError> {
    let mut parser = Parser::new(text)?;
    let condition = parser.condition()?;
    parser.end("after the condition")?;
    Ok(condition)
}

/// In an aggregate query, every plain projection must be grouped by, and `*` is not allowed.
fn check_aggregation(query: &Query, columns: &[(usize, usize)]) -> Result<(), QueryError> {
    if !query.is_aggregate() {
        return Ok(());
    }
    let Projection::Items(items) = &query.projection else {
        let (line, column) = columns.first().copied().unwrap_or((1, 1));
        return Err(QueryError::Syntax {
            line,
            column,
            message: "SELECT * cannot be combined with aggregates or GROUP BY".into(),
        });
    };
    for (item, &(line, column)) in items.iter().zip(columns) {
        if let Source::Path(path) = &item.source {
            if !query.group_by.contains(path) {
                return Err(QueryError::Syntax {
                    line,
                    column,
                    message: format!(
                        "'{}' must be in GROUP BY or inside an aggregate",
                        path.0.join(".")
                    ),
                });
            }
        }
    }
    Ok(())
}

/// A parser over the tokens of one text.
struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// Line and column just past the text, for errors at the end.
    end: (usize, usize),
    /// Parentheses, prefix operators and calls currently open.
    nesting: usize,
}

impl Parser {
    fn new(text: &str) -> Result<Self, QueryError> {
        let last_line = text.rsplit('\n').next().unwrap_or("");
        Ok(Self {
            tokens: lex(text)?,
            pos: 0,
            end: (
                text.matches('\n').count() + 1,
                last_line.chars().count() + 1,
            ),
            nesting: 0,
        })
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn peek_kind(&self) -> Option<&Kind> {
        self.peek().map(|t| &t.kind)
    }

    fn peek_kind_at(&self, ahead: usize) -> Option<&Kind> {
        self.tokens.get(self.pos + ahead).map(|t| &t.kind)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += usize::from(token.is_some());
        token
    }

    /// Line and column of the next token (or of the end of the text).
    fn here(&self) -> (usize, usize) {
        self.peek().map_or(self.end, |t| (t.line, t.column))
    }

    fn eat(&mut self, kind: &Kind) -> bool {
        let found = self.peek_kind() == Some(kind);
        self.pos += usize::from(found);
        found
    }

    fn expect(&mut self, kind: &Kind, message: &str) -> Result<(), QueryError> {
        if self.eat(kind) {
            Ok(())
        } else {
            Err(self.unexpected(message))
        }
    }

    fn end(&self, context: &str) -> Result<(), QueryError> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.unexpected(&format!("nothing may follow {context}"))),
        }
    }

    /// A syntax error at the next token, saying what was found.
    fn unexpected(&self, message: &str) -> QueryError {
        let found = match self.peek() {
            None => "the end of the text".to_owned(),
            Some(t) => format!("'{}'", t.text),
        };
        let (line, column) = self.here();
        QueryError::Syntax {
            line,
            column,
            message: format!("{message}, found {found}"),
        }
    }

    /// The count after `TOP`.
    fn top(&mut self) -> Result<usize, QueryError> {
        match self.peek_kind() {
            Some(&Kind::Number(n)) if n.fract() == 0.0 && (0.0..=1e9).contains(&n) => {
                self.pos += 1;
                Ok(n as usize)
            }
            _ => Err(self.unexpected("expected a whole number after TOP")),
        }
    }

    /// `*` or a list of projections, with the line and column of each.
    fn projection(&mut self) -> Result<(Projection, Vec<(usize, usize)>), QueryError> {
        let start = self.here();
        if self.eat(&Kind::Star) {
            return Ok((Projection::All, vec![start]));
        }
        let mut items = Vec::new();
        let mut columns = Vec::new();
        let mut unnamed = 0;
        loop {
            columns.push(self.here());
            let source = self.projected()?;
            let key = if self.eat(&Kind::As) {
                let Some(Kind::Name(alias)) = self.peek_kind().cloned() else {
                    return Err(self.unexpected("expected a name after AS"));
                };
                self.pos += 1;
                alias
            } else {
                match &source {
                    Source::Path(path) => path.last().to_owned(),
                    Source::Aggregate(_) => {
                        unnamed += 1;
                        format!("${unnamed}")
                    }
                }
            };
            items.push(Item { key, source });
            if !self.eat(&Kind::Comma) {
                break;
            }
        }
        Ok((Projection::Items(items), columns))
    }

    /// A path or an aggregate.
    fn projected(&mut self) -> Result<Source, QueryError> {
        let (Some(Kind::Name(name)), Some(Kind::LParen)) = (self.peek_kind(), self.peek_kind_at(1))
        else {
            return self.path().map(Source::Path);
        };
        let name = name.clone();
        let (line, column) = self.here();
        self.pos += 2;
        let argument = if self.eat(&Kind::RParen) {
            None
        } else {
            let path = self.path()?;
            self.expect(&Kind::RParen, "expected ')' after the aggregated path")?;
            Some(path)
        };
        let arguments_error = |message: &str| QueryError::Arguments {
            line,
            column,
            function: name.clone(),
            message: message.into(),
        };
        let aggregate = match (name.to_ascii_lowercase().as_str(), argument) {
            ("count", None) => Aggregate::Count,
            ("count", Some(_)) => return Err(arguments_error("COUNT takes no argument: COUNT()")),
            ("sum", Some(p)) => Aggregate::Sum(p),
            ("avg", Some(p)) => Aggregate::Avg(p),
            ("min", Some(p)) => Aggregate::Min(p),
            ("max", Some(p)) => Aggregate::Max(p),
            ("sum" | "avg" | "min" | "max", None) => {
                return Err(arguments_error(
                    "expected one path, as in SUM(properties.reported.x)",
                ))
            }
            _ => return Err(QueryError::UnknownFunction { line, column, name }),
        };
        Ok(Source::Aggregate(aggregate))
    }

    /// `devices` or `devices.modules`, in any case.
    fn collection(&mut self) -> Result<Collection, QueryError> {
        let (line, column) = self.here();
        let path = self.path()?;
        let names: Vec<String> = path.0.iter().map(|s| s.to_ascii_lowercase()).collect();
        match names.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["devices"] => Ok(Collection::Devices),
            ["devices", "modules"] => Ok(Collection::Modules),
            _ => Err(QueryError::Syntax {
                line,
                column,
                message: format!(
                    "unsupported collection '{}': expected devices or devices.modules",
                    path.0.join(".")
                ),
            }),
        }
    }

    /// `name ('.' name)*`, where a keyword after a `.` is a plain segment.
    fn path(&mut self) -> Result<Path, QueryError> {
        let mut segments = vec![match self.peek_kind() {
            Some(Kind::Name(name)) => name.clone(),
            _ => return Err(self.unexpected("expected a property path")),
        }];
        self.pos += 1;
        while self.eat(&Kind::Dot) {
            let segment = match self.peek() {
                Some(Token {
                    kind: Kind::Name(name),
                    ..
                }) => name.clone(),
                // A keyword (or a number such as `1`) right after a '.' is a plain key.
                Some(t) if t.text.chars().all(|c| c.is_alphanumeric() || c == '_') => {
                    t.text.clone()
                }
                _ => return Err(self.unexpected("expected a name after '.'")),
            };
            self.pos += 1;
            segments.push(segment);
        }
        Ok(Path(segments))
    }

    /// A whole condition.
    fn condition(&mut self) -> Result<Expr, QueryError> {
        self.chain(&Kind::Or, Self::and, Expr::Or)
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        self.chain(&Kind::And, Self::not, Expr::And)
    }

    /// `operand (separator operand)*`, flat.
    fn chain(
        &mut self,
        separator: &Kind,
        mut operand: impl FnMut(&mut Self) -> Result<Expr, QueryError>,
        join: fn(Vec<Expr>) -> Expr,
    ) -> Result<Expr, QueryError> {
        let mut operands = vec![operand(self)?];
        while self.eat(separator) {
            operands.push(operand(self)?);
        }
        Ok(if operands.len() == 1 {
            operands.swap_remove(0)
        } else {
            join(operands)
        })
    }

    fn not(&mut self) -> Result<Expr, QueryError> {
        if self.eat(&Kind::Not) {
            let operand = self.nested(Self::not)?;
            return Ok(Expr::Not(Box::new(operand)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, QueryError> {
        let left = self.sum()?;
        let op = match self.peek_kind() {
            Some(Kind::Eq) => BinaryOp::Eq,
            Some(Kind::Ne) => BinaryOp::Ne,
            Some(Kind::Lt) => BinaryOp::Lt,
            Some(Kind::Le) => BinaryOp::Le,
            Some(Kind::Gt) => BinaryOp::Gt,
            Some(Kind::Ge) => BinaryOp::Ge,
            // `NOT IN` is read as `NIN`, as SQL readers expect.
            Some(Kind::Not) if self.peek_kind_at(1) == Some(&Kind::In) => {
                self.pos += 2;
                let list = self.list()?;
                return Ok(Expr::In {
                    operand: Box::new(left),
                    list,
                    negated: true,
                });
            }
            Some(Kind::In | Kind::Nin) => {
                let negated = self.peek_kind() == Some(&Kind::Nin);
                self.pos += 1;
                let list = self.list()?;
                return Ok(Expr::In {
                    operand: Box::new(left),
                    list,
                    negated,
                });
            }
            _ => return Ok(left),
        };
        self.pos += 1;
        let right = self.sum()?;
        Ok(Expr::Compare(op, Box::new(left), Box::new(right)))
    }

    /// `[literal, ...]` after `IN` or `NIN`.
    fn list(&mut self) -> Result<Vec<Value>, QueryError> {
        self.expect(&Kind::LBracket, "expected '[' to start the list")?;
        let mut list = Vec::new();
        if self.eat(&Kind::RBracket) {
            return Ok(list);
        }
        loop {
            let negative = self.eat(&Kind::Minus);
            let value = match (self.peek_kind(), negative) {
                (Some(&Kind::Number(n)), _) => Value::Number(if negative { -n } else { n }),
                (Some(Kind::Str(s)), false) => Value::String(s.clone()),
                (Some(Kind::True), false) => Value::Bool(true),
                (Some(Kind::False), false) => Value::Bool(false),
                (Some(Kind::Null), false) => Value::Null,
                _ => return Err(self.unexpected("expected a string, number, true, false or null")),
            };
            self.pos += 1;
            list.push(value);
            if self.eat(&Kind::RBracket) {
                return Ok(list);
            }
            if !self.eat(&Kind::Comma) {
                return Err(self.unexpected("expected ',' or ']' in the list"));
            }
        }
    }

    fn sum(&mut self) -> Result<Expr, QueryError> {
        self.arithmetic(
            |k| match k {
                Kind::Plus => Some(BinaryOp::Add),
                Kind::Minus => Some(BinaryOp::Sub),
                _ => None,
            },
            Self::term,
        )
    }

    fn term(&mut self) -> Result<Expr, QueryError> {
        self.arithmetic(
            |k| match k {
                Kind::Star => Some(BinaryOp::Mul),
                Kind::Slash => Some(BinaryOp::Div),
                Kind::Percent => Some(BinaryOp::Mod),
                _ => None,
            },
            Self::unary,
        )
    }

    /// `operand (op operand)*` for the operators `op_of` knows, flat and applied left to right.
    fn arithmetic(
        &mut self,
        op_of: fn(&Kind) -> Option<BinaryOp>,
        operand: fn(&mut Self) -> Result<Expr, QueryError>,
    ) -> Result<Expr, QueryError> {
        let first = operand(self)?;
        let mut rest = Vec::new();
        while let Some(op) = self.peek_kind().and_then(op_of) {
            self.pos += 1;
            rest.push((op, operand(self)?));
        }
        Ok(if rest.is_empty() {
            first
        } else {
            Expr::Arithmetic(Box::new(first), rest)
        })
    }

    fn unary(&mut self) -> Result<Expr, QueryError> {
        if self.eat(&Kind::Minus) {
            let operand = self.nested(Self::unary)?;
            return Ok(Expr::Negate(Box::new(operand)));
        }
        self.primary()
    }

    /// Runs `parse` one nesting level deeper, refusing to go past [`MAX_DEPTH`].
    fn nested(
        &mut self,
        parse: impl FnOnce(&mut Self) -> Result<Expr, QueryError>,
    ) -> Result<Expr, QueryError> {
        if self.nesting >= MAX_DEPTH {
            let (line, column) = self.here();
            return Err(QueryError::TooDeep { line, column });
        }
        self.nesting += 1;
        let result = parse(self);
        self.nesting -= 1;
        result
    }

    fn primary(&mut self) -> Result<Expr, QueryError> {
        let (line, column) = self.here();
        let literal = match self.peek_kind() {
            Some(Kind::Str(s)) => Value::String(s.clone()),
            Some(&Kind::Number(n)) => Value::Number(n),
            Some(Kind::True) => Value::Bool(true),
            Some(Kind::False) => Value::Bool(false),
            Some(Kind::Null) => Value::Null,
            Some(Kind::LParen) => {
                self.pos += 1;
                let inner = self.nested(Self::condition)?;
                if !self.eat(&Kind::RParen) {
                    return Err(self.unexpected(&format!(
                        "missing ')' for the '(' at line {line}, column {column}"
                    )));
                }
                return Ok(inner);
            }
            Some(Kind::Name(_)) if self.peek_kind_at(1) == Some(&Kind::LParen) => {
                let Some(name) = self.next() else {
                    return Err(self.unexpected("expected a value"));
                };
                self.pos += 1;
                return self.nested(|p| p.call(&name));
            }
            Some(Kind::Name(_)) => return self.path().map(Expr::Path),
            _ => return Err(self.unexpected("expected a value")),
        };
        self.pos += 1;
        Ok(Expr::Literal(literal))
    }

    /// The arguments and `)` of a call to `name` (whose `(` is consumed).
    fn call(&mut self, name: &Token) -> Result<Expr, QueryError> {
        let function =
            Function::from_name(&name.text).ok_or_else(|| QueryError::UnknownFunction {
                line: name.line,
                column: name.column,
                name: name.text.clone(),
            })?;
        let mut args = Vec::new();
        if !self.eat(&Kind::RParen) {
            loop {
                args.push(self.condition()?);
                if self.eat(&Kind::RParen) {
                    break;
                }
                if !self.eat(&Kind::Comma) {
                    return Err(self.unexpected(&format!(
                        "expected ',' or ')' in the call to {} at line {}, column {}",
                        name.text, name.line, name.column
                    )));
                }
            }
        }
        if !function.accepts(args.len()) {
            return Err(QueryError::Arguments {
                line: name.line,
                column: name.column,
                function: name.text.clone(),
                message: format!("{} given, {}", args.len(), function.arity_text()),
            });
        }
        Ok(Expr::Call(function, args))
    }
}
