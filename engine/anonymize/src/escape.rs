//! JSON string escaping for the output writer.
//!
//! Written by hand (rather than through `serde_json::to_writer`) so that the
//! per-record path can escape a borrowed `&str` straight into the caller's
//! buffer, copying runs of safe bytes with one `extend_from_slice`.

/// Appends `s` to `out` with JSON string escaping, without the quotes.
///
/// Escapes exactly what RFC 8259 requires (`"`, `\` and U+0000..U+001F);
/// everything else, including non-ASCII UTF-8, is copied as is.
pub(crate) fn push_escaped(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        if let Some(run) = bytes.get(run_start..i) {
            out.extend_from_slice(run);
        }
        push_escape_of(out, b);
        run_start = i + 1;
    }
    if let Some(run) = bytes.get(run_start..) {
        out.extend_from_slice(run);
    }
}

/// Appends one `char` with JSON string escaping.
pub(crate) fn push_escaped_char(out: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    push_escaped(out, c.encode_utf8(&mut buf));
}

/// Whether a byte may not appear raw inside a JSON string.
#[inline]
pub(crate) fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

fn push_escape_of(out: &mut Vec<u8>, b: u8) {
    let short: &[u8] = match b {
        b'"' => b"\\\"",
        b'\\' => b"\\\\",
        b'\n' => b"\\n",
        b'\r' => b"\\r",
        b'\t' => b"\\t",
        0x08 => b"\\b",
        0x0c => b"\\f",
        _ => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            for nibble in [b >> 4, b & 0x0f] {
                if let Some(&h) = HEX.get(usize::from(nibble)) {
                    out.push(h);
                }
            }
            return;
        }
    };
    out.extend_from_slice(short);
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

    fn escaped(s: &str) -> String {
        let mut out = Vec::new();
        push_escaped(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_quotes_backslashes_and_controls() {
        assert_eq!(escaped(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escaped("\n\r\t\u{8}\u{c}"), r"\n\r\t\b\f");
        assert_eq!(escaped("\u{0}\u{1f}"), r"\u0000\u001f");
    }

    #[test]
    fn copies_unicode_and_plain_text() {
        assert_eq!(escaped("héllo ✓ 🎵"), "héllo ✓ 🎵");
        assert_eq!(escaped(""), "");
    }

    #[test]
    fn escaped_text_round_trips_through_serde_json() {
        let s = "q\"\\\u{0}\u{7f}\u{2028}é";
        let json = format!("\"{}\"", escaped(s));
        assert_eq!(serde_json::from_str::<String>(&json).unwrap(), s);
    }

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
