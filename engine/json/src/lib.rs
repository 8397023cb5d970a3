//! The one JSON string escaper of meshgov.
//!
//! Three writers build JSON text by hand: the record path (to escape a
//! borrowed `&str` straight into the caller's buffer, copying runs of safe
//! bytes at once), the canonical bundle writer (whose signed bytes must
//! depend on rules written down, not on a serializer's choices) and the
//! audit event writer (whose bytes are hashed into the chain). They all
//! escape strings here, so the three outputs agree byte for byte.
//!
//! The rules are RFC 8259's minimum, and the choices `serde_json` makes too:
//! escape only `"`, `\` and U+0000..U+001F, with the short forms
//! `\b \f \n \r \t` where JSON has one and lowercase `\u00XX` otherwise.
//! Everything else, non-ASCII UTF-8 included, is copied as it is.

/// Whether a byte may not appear raw inside a JSON string.
#[inline]
pub fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Appends `s` to `out` with JSON string escaping, without the quotes.
pub fn push_escaped(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        // INVARIANT: every byte that stops the scan is ASCII, so the run
        // ends on a char boundary.
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

/// Appends `s` as a JSON string literal, quotes included.
pub fn push_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    push_escaped(out, s);
    out.push(b'"');
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

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

    proptest! {
        #[test]
        fn the_same_bytes_as_serde_json_and_read_back_to_the_same_string(s in any::<String>()) {
            let mut out = Vec::new();
            push_string(&mut out, &s);
            prop_assert_eq!(&out, &serde_json::to_vec(&s).unwrap());
            let back: String = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(back, s);
        }
    }
}
