//! Percent-encoding exactly as Python's `urllib.parse` does it, since the Azure SDKs build their strings with it:
//! the one percent-encoding of the workspace (tokens, topics, message properties, URL path segments), so that
//! what Outpost writes is what the SDKs write and what it reads is what they read.

use std::borrow::Cow;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// What `quote(s, safe="")` leaves alone: Python's "always safe" characters.
const QUOTE_SAFE_NONE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~');

/// What `quote(s)` leaves alone: its default `safe="/"`.
const QUOTE_SAFE_SLASH: &AsciiSet = &QUOTE_SAFE_NONE.remove(b'/');

/// `urllib.parse.quote(s, safe="")`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_quoted(&mut out, s);
    out
}

/// Whether `quote(s, safe="")` leaves byte `b` alone (the bytes [`QUOTE_SAFE_NONE`] does not hold).
fn always_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~')
}

/// Appends `quote(s)` to `out`, without a string of its own (topics are built this way per message). Most of
/// what it is given (ids, names, numbers) needs no encoding and is copied whole.
pub fn push_quoted(out: &mut String, s: &str) {
    if s.bytes().all(always_safe) {
        out.push_str(s);
    } else {
        out.extend(utf8_percent_encode(s, QUOTE_SAFE_NONE));
    }
}

/// `urllib.parse.quote(s)`: like [`quote`] but `/` stays raw.
pub fn quote_keep_slash(s: &str) -> String {
    utf8_percent_encode(s, QUOTE_SAFE_SLASH).to_string()
}

/// `urllib.parse.quote_plus(s)`: like [`quote`] but a space becomes `+`.
pub fn quote_plus(s: &str) -> String {
    s.split(' ').map(quote).collect::<Vec<_>>().join("+")
}

/// Percent-decodes `s` to UTF-8. `+` stays `+`: the SDKs never use it for a space, and base64 needs it.
pub fn unquote(s: &str) -> Result<String, std::str::Utf8Error> {
    unquote_borrowed(s).map(Cow::into_owned)
}

/// [`unquote`] without a string of its own when `s` holds no `%` (the message properties of every message are
/// decoded this way).
pub fn unquote_borrowed(s: &str) -> Result<Cow<'_, str>, std::str::Utf8Error> {
    percent_decode_str(s).decode_utf8()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bytes_copied_whole_are_those_the_encoder_leaves_alone() {
        for b in 0..=0x7f_u8 {
            let s = char::from(b).to_string();
            let encoded: String = utf8_percent_encode(&s, QUOTE_SAFE_NONE).collect();
            assert_eq!(always_safe(b), encoded == s, "byte {b:#04x}");
        }
        assert!(!always_safe(0xc3));
    }

    #[test]
    fn quote_matches_python_for_reserved_and_unreserved_characters() {
        assert_eq!(quote("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(quote("$ /&=+%"), "%24%20%2F%26%3D%2B%25");
        assert_eq!(quote("\u{e9}"), "%C3%A9");
    }

    #[test]
    fn push_quoted_appends_what_quote_returns() {
        let mut out = String::from("a/");
        push_quoted(&mut out, "$ /&=+%\u{e9}");
        assert_eq!(out, format!("a/{}", quote("$ /&=+%\u{e9}")));
    }

    #[test]
    fn quote_keep_slash_leaves_slashes_raw() {
        assert_eq!(quote_keep_slash("a/b+c="), "a/b%2Bc%3D");
    }

    #[test]
    fn quote_plus_turns_spaces_into_plus() {
        assert_eq!(quote_plus("a b+c"), "a+b%2Bc");
    }

    #[test]
    fn unquote_keeps_plus_and_refuses_invalid_utf8() {
        assert_eq!(unquote("a+b%2F/").unwrap(), "a+b//");
        assert!(unquote("%FF").is_err());
        assert_eq!(unquote("%zz%").unwrap(), "%zz%");
    }
}
