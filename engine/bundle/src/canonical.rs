//! The canonical JSON writer behind every signed byte.
//!
//! Written by hand rather than through `serde_json::to_vec` so that the
//! encoding cannot fail, and so that the signed bytes depend on rules written
//! down here, not on a serializer's formatting choices.
//!
//! Rules: no whitespace; object keys in a fixed order (struct fields in
//! declaration order, maps sorted by the UTF-8 bytes of their keys); integers
//! in plain decimal; strings escape only `"`, `\` and control characters, with
//! the short forms `\b \f \n \r \t` where JSON has one and `\u00XX` otherwise.
//! These are the choices `serde_json` makes too, so its parser reads them back
//! to the same values (a property test checks this).

use std::collections::BTreeMap;

/// Appends `s` as a JSON string literal.
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        // INVARIANT: `start..i` lies on char boundaries, because every byte
        // that stops the scan is ASCII.
        out.extend_from_slice(s.get(start..i).unwrap_or_default().as_bytes());
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX_DIGITS.get(usize::from(b >> 4)).copied().unwrap_or(b'0'));
            out.push(
                HEX_DIGITS
                    .get(usize::from(b & 0xf))
                    .copied()
                    .unwrap_or(b'0'),
            );
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(s.get(start..).unwrap_or_default().as_bytes());
    out.push(b'"');
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `"key":` (after a comma unless it is the object's first key).
pub(crate) fn key(out: &mut Vec<u8>, name: &str, first: bool) {
    if !first {
        out.push(b',');
    }
    string(out, name);
    out.push(b':');
}

/// Appends an optional string as the string or `null`.
pub(crate) fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends an unsigned integer in decimal.
pub(crate) fn uint(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(n.to_string().as_bytes());
}

/// Appends a string-to-string map, keys in sorted order.
pub(crate) fn string_map(out: &mut Vec<u8>, map: &BTreeMap<String, String>) {
    out.push(b'{');
    for (i, (k, v)) in map.iter().enumerate() {
        key(out, k, i == 0);
        string(out, v);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(s: &str) -> String {
        let mut out = Vec::new();
        string(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_only_what_json_requires() {
        assert_eq!(encode("plain é ✓"), "\"plain é ✓\"");
        assert_eq!(encode("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(encode("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(encode("\u{0}\u{1f}/"), r#""\u0000\u001f/""#);
        assert_eq!(encode("\u{7f}"), "\"\u{7f}\"");
    }

    proptest! {
        // The canonical form must read back to the same value and must be
        // exactly what serde_json itself writes, so either side may check it.
        #[test]
        fn strings_match_serde_json(s in any::<String>()) {
            let ours = encode(&s);
            prop_assert_eq!(&ours, &serde_json::to_string(&s).unwrap());
            prop_assert_eq!(serde_json::from_str::<String>(&ours).unwrap(), s);
        }
    }
}
