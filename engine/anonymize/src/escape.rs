//! JSON string escaping for the output writer (the one escaper of
//! `meshgov-json`), and the check that raw values' escapes are scalars.

pub(crate) use meshgov_json::{needs_escape, push_escaped};

/// Appends one `char` with JSON string escaping.
pub(crate) fn push_escaped_char(out: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    push_escaped(out, c.encode_utf8(&mut buf));
}

/// Checks that every `\u` escape in a raw JSON text is a scalar value:
/// a high surrogate must be followed by a low one, and no low surrogate
/// may stand alone.
///
/// serde_json skips over values we only borrow as `RawValue` without this
/// check (it cannot know whether the bytes end up in a `String`). Strict
/// JSON readers, serde_json included, reject unpaired surrogates, so a value
/// that carried one into our output would make the output unreadable.
// INVARIANT: `raw` is syntactically valid JSON (serde_json has already
// scanned it), so a backslash only occurs inside a string and is followed by
// a complete escape.
pub(crate) fn escapes_are_scalar(raw: &[u8]) -> bool {
    let mut i = 0;
    while let Some(offset) = raw
        .get(i..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\\'))
    {
        let at = i + offset;
        if raw.get(at + 1) != Some(&b'u') {
            // Two-byte escape such as `\\` or `\n`: skip both bytes so an
            // escaped backslash is never read as the start of an escape.
            i = at + 2;
            continue;
        }
        match hex4(raw.get(at + 2..at + 6)) {
            Some(0xD800..=0xDBFF) => {
                let next_is_low = raw.get(at + 6..at + 8) == Some(b"\\u")
                    && matches!(hex4(raw.get(at + 8..at + 12)), Some(0xDC00..=0xDFFF));
                if !next_is_low {
                    return false;
                }
                i = at + 12;
            }
            Some(0xDC00..=0xDFFF) | None => return false,
            Some(_) => i = at + 6,
        }
    }
    true
}

fn hex4(digits: Option<&[u8]>) -> Option<u16> {
    let digits = digits?;
    let mut value: u16 = 0;
    for &d in digits {
        let v = (d as char).to_digit(16)?;
        value = (value << 4) | u16::try_from(v).ok()?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surrogate_scan() {
        assert!(escapes_are_scalar(br#""plain""#));
        assert!(escapes_are_scalar(br#""\u00e9 \ud83c\udfb5""#));
        assert!(
            escapes_are_scalar(br#""\\ud800""#),
            "escaped backslash, not an escape"
        );
        assert!(!escapes_are_scalar(br#""\ud800""#));
        assert!(!escapes_are_scalar(br#""\udc00""#));
        assert!(!escapes_are_scalar(br#""\ud800\u0041""#));
        assert!(!escapes_are_scalar(br#"["ok", "\uDBFF"]"#));
    }
}
