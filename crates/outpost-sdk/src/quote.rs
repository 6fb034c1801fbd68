//! Percent-encoding as Python's `urllib.parse` does it: the Azure SDKs build topics, tokens and paths with it,
//! and servers (Outpost's, IoT Hub's, edgeHub's) expect exactly that.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// What `quote(s, safe="")` leaves alone.
const SAFE_NONE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~');

/// `urllib.parse.quote(s, safe="")`.
pub(crate) fn quote(s: &str) -> String {
    utf8_percent_encode(s, SAFE_NONE).to_string()
}

/// `urllib.parse.quote_plus(s)`: like [`quote`], but a space becomes `+`.
pub(crate) fn quote_plus(s: &str) -> String {
    s.split(' ').map(quote).collect::<Vec<_>>().join("+")
}

/// Percent-decodes; `+` stays `+` (the SDKs never encode a space as `+` in topics).
pub(crate) fn unquote(s: &str) -> Option<String> {
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_matches_python_for_reserved_characters() {
        assert_eq!(quote("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(quote("$edgeAgent/x y+="), "%24edgeAgent%2Fx%20y%2B%3D");
    }

    #[test]
    fn quote_plus_turns_spaces_into_plus() {
        assert_eq!(quote_plus("my dev/1"), "my+dev%2F1");
    }

    #[test]
    fn unquote_keeps_plus_and_refuses_invalid_utf8() {
        assert_eq!(unquote("a+b%2F").as_deref(), Some("a+b/"));
        assert_eq!(unquote("%FF"), None);
    }
}
