//! Tokens of the route language, cut exactly as edgeHub's ANTLR lexer (`GrammarLexer.g4`) cuts them.
//!
//! ANTLR picks the longest match among all token rules and breaks ties by rule order. Identifiers may contain
//! `- + * % ! & | ' . $`, so `a-b` is one application property and `5-2` is an identifier, not a subtraction;
//! `-2` is a negative number, `- 2` is a negation. Reproducing the quirks keeps a route meaning what it means
//! on Azure IoT Edge.

use super::RouteError;

/// The kinds of token the parsers look at (white space and `/* */` comments are dropped).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Select,
    From,
    Where,
    Into,
    And,
    Or,
    Not,
    /// A quoted string, already unescaped.
    Str(String),
    Integer,
    Hex,
    Real,
    True,
    False,
    Null,
    Undefined,
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Eq,
    /// `!=`
    Ne,
    /// `<>`
    LtGt,
    Le,
    Ge,
    Gt,
    Lt,
    /// `||`
    Concat,
    /// `??`
    Coalesce,
    /// `$` followed by query-path characters: `$messageId`, `$body.a[0]`.
    SysProp,
    /// An identifier: application property, function or endpoint name, path segment.
    Id,
}

/// One token: what it is, its text as written and its 1-based column (in characters).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub kind: Kind,
    pub text: String,
    pub column: usize,
}

/// Characters an identifier may not contain (`ID_CHARS` in the grammar).
const NOT_ID: &[char] = &[
    '(', ')', '<', '>', '@', ',', ';', ':', '\\', '"', '/', '[', ']', '?', '=', '{', '}', ' ',
    '\t', '\n', '\r',
];

/// Whether `c` may appear in an identifier.
pub(crate) fn is_id_char(c: char) -> bool {
    !NOT_ID.contains(&c)
}

/// Whether `c` may appear after the `$` of a system property (identifier characters plus `[` and `]`).
fn is_path_char(c: char) -> bool {
    c == '[' || c == ']' || is_id_char(c)
}

/// Punctuation and operators; a longer one wins over its prefix because the longest match wins.
const PUNCTUATION: [(&str, Kind); 19] = [
    ("{", Kind::LBrace),
    ("}", Kind::RBrace),
    ("(", Kind::LParen),
    (")", Kind::RParen),
    (",", Kind::Comma),
    ("+", Kind::Plus),
    ("-", Kind::Minus),
    ("*", Kind::Star),
    ("/", Kind::Slash),
    ("%", Kind::Percent),
    ("=", Kind::Eq),
    ("!=", Kind::Ne),
    ("<>", Kind::LtGt),
    ("<=", Kind::Le),
    (">=", Kind::Ge),
    (">", Kind::Gt),
    ("<", Kind::Lt),
    ("||", Kind::Concat),
    ("??", Kind::Coalesce),
];

/// Case-insensitive keywords, in grammar rule order.
const KEYWORDS: [(&str, Kind); 7] = [
    ("select", Kind::Select),
    ("from", Kind::From),
    ("where", Kind::Where),
    ("into", Kind::Into),
    ("and", Kind::And),
    ("or", Kind::Or),
    ("not", Kind::Not),
];

/// What the string rules make of a quote.
pub(crate) enum Quoted {
    /// A closed string: its length in characters and its unescaped value.
    Closed(usize, String),
    /// `len` characters of string, then the end of the text (`bad_escape` is `None`) or a bad escape
    /// sequence at index `bad_escape`.
    Open {
        len: usize,
        bad_escape: Option<usize>,
    },
}

/// What a candidate match becomes.
enum Candidate {
    Token(Kind),
    Quoted(Quoted),
    Skip,
    QueryPath,
    Unknown,
}

/// Cuts `text` into tokens, dropping white space and comments.
pub(crate) fn lex(text: &str) -> Result<Vec<Token>, RouteError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut pos = 0;
    while pos < chars.len() {
        let (len, candidate) = longest_match(&chars, pos);
        let column = pos + 1;
        let token_text: String = chars[pos..pos + len].iter().collect();
        match candidate {
            Candidate::Token(kind) => tokens.push(Token {
                kind,
                text: token_text,
                column,
            }),
            Candidate::Quoted(Quoted::Closed(_, value)) => tokens.push(Token {
                kind: Kind::Str(value),
                text: token_text,
                column,
            }),
            Candidate::Quoted(Quoted::Open {
                bad_escape: Some(at),
                ..
            }) => {
                let escape: String = chars[at..(at + 2).min(chars.len())].iter().collect();
                return Err(RouteError::Syntax {
                    column: at + 1,
                    message: format!(
                        "invalid escape sequence '{escape}' in string (allowed: \\\" \\' \\\\ \\uXXXX)"
                    ),
                });
            }
            Candidate::Quoted(Quoted::Open {
                bad_escape: None, ..
            }) => {
                return Err(RouteError::Syntax {
                    column,
                    message: "unterminated string".into(),
                });
            }
            Candidate::Skip => {}
            Candidate::QueryPath => {
                return Err(RouteError::Syntax {
                    column,
                    message: format!(
                        "invalid name '{token_text}': only a $ property may contain '[' or ']'"
                    ),
                });
            }
            Candidate::Unknown => {
                return Err(RouteError::Syntax {
                    column,
                    message: format!("invalid symbol '{token_text}'"),
                });
            }
        }
        pos += len;
    }
    Ok(tokens)
}

/// The longest token starting at `pos`; ties go to the rule the grammar lists first.
fn longest_match(s: &[char], pos: usize) -> (usize, Candidate) {
    let mut best: (usize, Candidate) = (1, Candidate::Unknown);
    let mut offer = |len: usize, candidate: Candidate| {
        if len > best.0 || (len == best.0 && matches!(best.1, Candidate::Unknown)) {
            best = (len, candidate);
        }
    };
    // Rule order of GrammarLexer.g4: the implicit '{' '}' tokens, SELECT FROM WHERE INTO, STRING,
    // UNTERMINATED_STRING, INTEGER, HEX, REAL, true false null undefined, punctuation, AND OR NOT,
    // operators, SYS_PROP, ID, QUERY_PATH, WS, COMMENT.
    for (word, kind) in &KEYWORDS[..4] {
        if keyword(s, pos, word) {
            offer(word.len(), Candidate::Token(kind.clone()));
        }
    }
    if let Some(quoted) = quoted(s, pos) {
        let len = match &quoted {
            Quoted::Closed(len, _) | Quoted::Open { len, .. } => *len,
        };
        offer(len, Candidate::Quoted(quoted));
    }
    offer(integer(s, pos), Candidate::Token(Kind::Integer));
    offer(hex(s, pos), Candidate::Token(Kind::Hex));
    offer(real(s, pos), Candidate::Token(Kind::Real));
    for (word, kind) in [
        ("true", Kind::True),
        ("false", Kind::False),
        ("null", Kind::Null),
        ("undefined", Kind::Undefined),
    ] {
        if literal(s, pos, word) {
            offer(word.len(), Candidate::Token(kind));
        }
    }
    // AND, OR and NOT come between the single-character and the comparison operators in the grammar; no
    // operator shares a first character with them, so their place in this list changes nothing.
    for (word, kind) in &KEYWORDS[4..] {
        if keyword(s, pos, word) {
            offer(word.len(), Candidate::Token(kind.clone()));
        }
    }
    for (op, kind) in &PUNCTUATION {
        if literal(s, pos, op) {
            offer(op.chars().count(), Candidate::Token(kind.clone()));
        }
    }
    if s[pos] == '$' {
        let n = run(s, pos + 1, is_path_char);
        if n > 0 {
            offer(n + 1, Candidate::Token(Kind::SysProp));
        }
    }
    offer(run(s, pos, is_id_char), Candidate::Token(Kind::Id));
    offer(run(s, pos, is_path_char), Candidate::QueryPath);
    offer(
        run(s, pos, |c| matches!(c, ' ' | '\t' | '\r' | '\n')),
        Candidate::Skip,
    );
    offer(comment(s, pos), Candidate::Skip);
    best
}

/// Counts the characters from `pos` that satisfy `pred`.
pub(crate) fn run(s: &[char], pos: usize, pred: impl Fn(char) -> bool) -> usize {
    s.get(pos..)
        .map_or(0, |rest| rest.iter().take_while(|&&c| pred(c)).count())
}

/// Whether the exact text `word` starts at `pos`.
fn literal(s: &[char], pos: usize, word: &str) -> bool {
    word.chars()
        .enumerate()
        .all(|(i, w)| s.get(pos + i) == Some(&w))
}

/// Whether the ASCII keyword `word` starts at `pos`, in any case.
pub(crate) fn keyword(s: &[char], pos: usize, word: &str) -> bool {
    word.chars()
        .enumerate()
        .all(|(i, w)| s.get(pos + i).is_some_and(|c| c.eq_ignore_ascii_case(&w)))
}

/// `'-'? [0-9]+`: the length matched, 0 if none.
pub(crate) fn integer(s: &[char], pos: usize) -> usize {
    let sign = usize::from(s[pos] == '-');
    match run(s, pos + sign, |c| c.is_ascii_digit()) {
        0 => 0,
        n => sign + n,
    }
}

/// `'0' [Xx] HEX_DIGIT+`.
fn hex(s: &[char], pos: usize) -> usize {
    if s[pos] != '0' || !matches!(s.get(pos + 1), Some('x' | 'X')) {
        return 0;
    }
    match run(s, pos + 2, |c| c.is_ascii_hexdigit()) {
        0 => 0,
        n => n + 2,
    }
}

/// `'-'? [0-9]* '.' [0-9]+ EXP? | '-'? [0-9]* EXP`.
pub(crate) fn real(s: &[char], pos: usize) -> usize {
    let sign = usize::from(s[pos] == '-');
    let digits_end = pos + sign + run(s, pos + sign, |c| c.is_ascii_digit());
    let mut best = 0;
    if s.get(digits_end) == Some(&'.') {
        let fraction = run(s, digits_end + 1, |c| c.is_ascii_digit());
        if fraction > 0 {
            let end = digits_end + 1 + fraction;
            best = end + exponent(s, end) - pos;
        }
    }
    let exp = exponent(s, digits_end);
    if exp > 0 {
        best = best.max(digits_end + exp - pos);
    }
    best
}

/// `[Ee] [+-]? [0-9]+`.
fn exponent(s: &[char], pos: usize) -> usize {
    if !matches!(s.get(pos), Some('e' | 'E')) {
        return 0;
    }
    let sign = usize::from(matches!(s.get(pos + 1), Some('+' | '-')));
    match run(s, pos + 1 + sign, |c| c.is_ascii_digit()) {
        0 => 0,
        n => 1 + sign + n,
    }
}

/// `'/*' .*? '*/'`: the length up to the first `*/`, 0 if the comment is never closed.
fn comment(s: &[char], pos: usize) -> usize {
    if !literal(s, pos, "/*") {
        return 0;
    }
    (pos + 2..s.len().saturating_sub(1))
        .find(|&i| s[i] == '*' && s[i + 1] == '/')
        .map_or(0, |i| i + 2 - pos)
}

/// A string in `"` or `'` quotes with `\"`, `\'`, `\\` and `\uXXXX` escapes; `None` if `pos` is no quote.
pub(crate) fn quoted(s: &[char], pos: usize) -> Option<Quoted> {
    let quote = s[pos];
    if quote != '"' && quote != '\'' {
        return None;
    }
    let mut units: Vec<u16> = Vec::new();
    let mut i = pos + 1;
    loop {
        let Some(&c) = s.get(i) else {
            return Some(Quoted::Open {
                len: i - pos,
                bad_escape: None,
            });
        };
        if c == quote {
            return Some(Quoted::Closed(
                i + 1 - pos,
                String::from_utf16_lossy(&units),
            ));
        }
        if c != '\\' {
            let mut buf = [0u16; 2];
            units.extend_from_slice(c.encode_utf16(&mut buf));
            i += 1;
            continue;
        }
        match s.get(i + 1) {
            Some(&e @ ('"' | '\'' | '\\')) => {
                units.push(e as u16);
                i += 2;
            }
            Some('u') if (2..6).all(|k| s.get(i + k).is_some_and(char::is_ascii_hexdigit)) => {
                let digits: String = s[i + 2..i + 6].iter().collect();
                // Four hex digits always fit a u16; escapes are UTF-16 units, as in .NET, so a surrogate
                // pair written as two escapes becomes one character (a lone surrogate becomes U+FFFD).
                units.push(u16::from_str_radix(&digits, 16).unwrap_or(0xFFFD));
                i += 6;
            }
            _ => {
                return Some(Quoted::Open {
                    len: i - pos,
                    bad_escape: Some(i),
                })
            }
        }
    }
}
