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
pub(crate) use meshgov_json::push_string as string;

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
