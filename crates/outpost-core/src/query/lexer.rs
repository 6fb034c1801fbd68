//! Tokens of the query language.
//!
//! Strings and numbers are cut by the route lexer's rules ([`crate::route::lexer`]); names are not: a
//! query name is a twin path segment (letters, digits, `_`, `$`), where an edgeHub identifier may hold
//! `- + * % ! | '`. So `a-b` is three tokens here, and a `-` is always an operator (the route lexer glues
//! it to a following number).

use super::QueryError;
use crate::route::lexer::{integer, keyword, quoted, real, run, Quoted};

/// The kinds of token the parser looks at (white space is dropped).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Kind {
    Select,
    Top,
    From,
    Where,
    Group,
    By,
    As,
    And,
    Or,
    Not,
    In,
    Nin,
    True,
    False,
    Null,
    /// A quoted string, already unescaped.
    Str(String),
    /// A number literal (always finite).
    Number(f64),
    /// A name: a bare identifier that is no keyword, or the text inside `[[ ]]`.
    Name(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    Star,
    Plus,
    Minus,
    Slash,
    Percent,
    Eq,
    /// `!=` or `<>`.
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// One token: what it is, its text as written, and where it starts (1-based line and column in characters).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Token {
    pub kind: Kind,
    pub text: String,
    pub line: usize,
    pub column: usize,
}

/// Keywords in any case; any other bare identifier is a [`Kind::Name`].
const KEYWORDS: [(&str, Kind); 15] = [
    ("select", Kind::Select),
    ("top", Kind::Top),
    ("from", Kind::From),
    ("where", Kind::Where),
    ("group", Kind::Group),
    ("by", Kind::By),
    ("as", Kind::As),
    ("and", Kind::And),
    ("or", Kind::Or),
    ("not", Kind::Not),
    ("in", Kind::In),
    ("nin", Kind::Nin),
    ("true", Kind::True),
    ("false", Kind::False),
    ("null", Kind::Null),
];

/// Operators and punctuation, two-character ones first so that they win over their prefixes.
const PUNCTUATION: [(&str, Kind); 18] = [
    ("!=", Kind::Ne),
    ("<>", Kind::Ne),
    ("<=", Kind::Le),
    (">=", Kind::Ge),
    ("(", Kind::LParen),
    (")", Kind::RParen),
    ("[", Kind::LBracket),
    ("]", Kind::RBracket),
    (",", Kind::Comma),
    (".", Kind::Dot),
    ("*", Kind::Star),
    ("+", Kind::Plus),
    ("-", Kind::Minus),
    ("/", Kind::Slash),
    ("%", Kind::Percent),
    ("=", Kind::Eq),
    ("<", Kind::Lt),
    (">", Kind::Gt),
];

/// Whether `c` may start a bare name.
fn is_name_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '$'
}

/// Whether `c` may continue a bare name.
fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// A position in the text: the char index plus its line and column.
struct Cursor {
    line: usize,
    column: usize,
}

impl Cursor {
    fn error(&self, message: String) -> QueryError {
        QueryError::Syntax {
            line: self.line,
            column: self.column,
            message,
        }
    }
}

/// Cuts `text` into tokens, dropping white space.
pub(super) fn lex(text: &str) -> Result<Vec<Token>, QueryError> {
    let s: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut pos = 0;
    let mut at = Cursor { line: 1, column: 1 };
    while pos < s.len() {
        let (len, kind) = token_at(&s, pos, &at)?;
        let token_text: String = s[pos..pos + len].iter().collect();
        if let Some(kind) = kind {
            tokens.push(Token {
                kind,
                text: token_text,
                line: at.line,
                column: at.column,
            });
        }
        for &c in &s[pos..pos + len] {
            if c == '\n' {
                at.line += 1;
                at.column = 1;
            } else {
                at.column += 1;
            }
        }
        pos += len;
    }
    Ok(tokens)
}

/// The token at `pos` and its length in characters; `None` for white space.
fn token_at(s: &[char], pos: usize, at: &Cursor) -> Result<(usize, Option<Kind>), QueryError> {
    let c = s[pos];
    if c.is_whitespace() {
        return Ok((run(s, pos, char::is_whitespace), None));
    }
    if c == '"' || c == '\'' {
        return match quoted(s, pos) {
            Some(Quoted::Closed(len, value)) => Ok((len, Some(Kind::Str(value)))),
            Some(Quoted::Open {
                bad_escape: Some(i),
                ..
            }) => {
                let escape: String = s[i..(i + 2).min(s.len())].iter().collect();
                Err(at.error(format!(
                    "invalid escape sequence '{escape}' in string (allowed: \\\" \\' \\\\ \\uXXXX)"
                )))
            }
            _ => Err(at.error("unterminated string".into())),
        };
    }
    if c.is_ascii_digit() {
        // The route rules without their sign: a '-' is always an operator here.
        let len = integer(s, pos).max(real(s, pos));
        let text: String = s[pos..pos + len].iter().collect();
        return match text.parse::<f64>() {
            Ok(n) if n.is_finite() => Ok((len, Some(Kind::Number(n)))),
            _ => Err(at.error(format!("number '{text}' is out of range"))),
        };
    }
    if c == '[' && s.get(pos + 1) == Some(&'[') {
        return escaped_name(s, pos, at);
    }
    if is_name_start(c) {
        let len = run(s, pos, is_name_char);
        let kind = KEYWORDS
            .iter()
            .find(|(word, _)| word.len() == len && keyword(s, pos, word))
            .map_or_else(
                || Kind::Name(s[pos..pos + len].iter().collect()),
                |(_, kind)| kind.clone(),
            );
        return Ok((len, Some(kind)));
    }
    for (op, kind) in &PUNCTUATION {
        if op
            .chars()
            .enumerate()
            .all(|(i, o)| s.get(pos + i) == Some(&o))
        {
            return Ok((op.len(), Some(kind.clone())));
        }
    }
    Err(at.error(format!("invalid character '{c}'")))
}

/// `[[text]]`: a name with any characters but `]]`, never a keyword.
fn escaped_name(s: &[char], pos: usize, at: &Cursor) -> Result<(usize, Option<Kind>), QueryError> {
    let start = pos + 2;
    let Some(end) = (start..s.len().saturating_sub(1)).find(|&i| s[i] == ']' && s[i + 1] == ']')
    else {
        return Err(at.error("'[[' without a closing ']]'".into()));
    };
    if end == start {
        return Err(at.error("'[[]]' names nothing".into()));
    }
    Ok((
        end + 2 - pos,
        Some(Kind::Name(s[start..end].iter().collect())),
    ))
}
