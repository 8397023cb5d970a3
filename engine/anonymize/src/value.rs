//! Reading borrowed raw JSON values without building a `serde_json::Value`.
//!
//! The parser hands us each field as a `&RawValue` borrowed from the input
//! line. Most transforms need only its kind and, for strings, its content;
//! both can usually be had without allocating.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::value::RawValue;

use crate::escape::escapes_are_scalar;

/// What a raw JSON value is, with its text where a transform may need it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RawKind<'a> {
    Null,
    Bool(bool),
    /// The number's JSON text, e.g. `-12.5e3`.
    Number(&'a str),
    /// A JSON string.
    String(RawStr<'a>),
    /// A string from a typed (columnar) source: already decoded, and
    /// possibly holding characters JSON must escape.
    Text(&'a str),
    /// An array or an object.
    Compound,
}

/// One value from a typed source, such as a cell of an Arrow column, for
/// [`Transform::write_text`](crate::Transform::write_text). It is the same
/// input a record's JSON value gives the transforms, so both kinds of
/// source go through one implementation of each transform.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input<'a> {
    /// A missing or null value.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number as its JSON text, e.g. `42` or `-1.5e3`.
    Number(&'a str),
    /// A string's content.
    Text(&'a str),
}

impl<'a> Input<'a> {
    pub(crate) fn kind(self) -> RawKind<'a> {
        match self {
            Input::Null => RawKind::Null,
            Input::Bool(b) => RawKind::Bool(b),
            Input::Number(text) => RawKind::Number(text),
            Input::Text(text) => RawKind::Text(text),
        }
    }
}

/// A JSON string as it appears in the input, quotes removed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawStr<'a> {
    /// The text between the quotes, escapes not yet decoded.
    inner: &'a str,
    /// Whether `inner` contains a backslash (and so must be decoded).
    escaped: bool,
}

impl<'a> RawStr<'a> {
    /// The string's content. Borrowed from the input unless it had escapes.
    pub(crate) fn decode(self) -> Option<Text<'a>> {
        if !self.escaped {
            return Some(Text {
                text: Cow::Borrowed(self.inner),
                json_safe: true,
            });
        }
        // Rare path: only strings that were written with escapes allocate.
        let mut quoted = String::with_capacity(self.inner.len() + 2);
        quoted.push('"');
        quoted.push_str(self.inner);
        quoted.push('"');
        let decoded: String = serde_json::from_str(&quoted).ok()?;
        Some(Text {
            text: Cow::Owned(decoded),
            json_safe: false,
        })
    }

    /// The content compared byte for byte with `other`, decoding escapes only
    /// when there are any.
    pub(crate) fn cmp_str(self, other: &str) -> Option<Ordering> {
        if self.escaped {
            let text = self.decode()?;
            Some(text.text.as_bytes().cmp(other.as_bytes()))
        } else {
            Some(self.inner.as_bytes().cmp(other.as_bytes()))
        }
    }
}

/// Decoded string content, remembering whether it can be written into a
/// JSON string without escaping (true when it is a slice of an input string
/// that had no escapes: such text holds no `"`, `\` or control character).
#[derive(Debug, Clone)]
pub(crate) struct Text<'a> {
    pub(crate) text: Cow<'a, str>,
    pub(crate) json_safe: bool,
}

// INVARIANT: `raw` came from serde_json, so it is one complete, valid JSON
// value with no surrounding whitespace; its first byte tells its kind.
pub(crate) fn classify(raw: &RawValue) -> RawKind<'_> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'n') => RawKind::Null,
        Some(b't') => RawKind::Bool(true),
        Some(b'f') => RawKind::Bool(false),
        Some(b'"') => {
            let inner = text
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or_default();
            RawKind::String(RawStr {
                inner,
                escaped: memchr::memchr(b'\\', inner.as_bytes()).is_some(),
            })
        }
        Some(b'[' | b'{') => RawKind::Compound,
        Some(_) => RawKind::Number(text),
        // Not reachable for serde_json output; treat as null rather than guess.
        None => RawKind::Null,
    }
}

/// How deeply a value the plan reads may nest, counting the record itself
/// as the first level. serde_json (like many readers) refuses input nested
/// 128 levels deep, so a cleared value nested deeper than this would make
/// our output unreadable downstream.
pub(crate) const MAX_DEPTH: usize = 127;

/// Why a value that is valid JSON grammar would still be refused by strict
/// readers such as serde_json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// A `\u` escape of an unpaired UTF-16 surrogate.
    Escape,
    /// Nested deeper than [`MAX_DEPTH`] (with the record as level 1).
    Depth,
    /// A number beyond `f64`'s range, such as `1e400`.
    Number,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unreadable::Escape => "a `\\u` escape of a lone UTF-16 surrogate",
            Unreadable::Depth => "nested more than 126 levels deep",
            Unreadable::Number => "a number beyond the range of a 64-bit float",
        })
    }
}

/// Checks a value that will be copied into served records (an upstream
/// field the plan reads, a plugin's output) so that strict JSON readers can
/// read it back: no lone-surrogate escapes, numbers within `f64`'s range,
/// nesting of at most 127 levels counting the record as the first.
///
/// Costs a byte scan of strings with escapes and of arrays and objects;
/// plain strings, short numbers and literals are checked in O(1).
// INVARIANT: `raw` is valid JSON grammar (serde_json has scanned it), so
// brackets outside strings balance and every `\` in a string starts an
// escape.
pub fn check_readable(raw: &RawValue) -> Result<(), Unreadable> {
    let text = raw.get();
    let bytes = text.as_bytes();
    match bytes.first() {
        Some(b'"') => check_escapes(bytes),
        Some(b'[' | b'{') => {
            check_escapes(bytes)?;
            check_compound(bytes)
        }
        Some(b'-' | b'0'..=b'9') => check_number(bytes),
        _ => Ok(()),
    }
}

fn check_escapes(bytes: &[u8]) -> Result<(), Unreadable> {
    if memchr::memchr(b'\\', bytes).is_some() && !escapes_are_scalar(bytes) {
        Err(Unreadable::Escape)
    } else {
        Ok(())
    }
}

fn check_number(number: &[u8]) -> Result<(), Unreadable> {
    // Only an exponent or more than ~309 digits can leave f64's range.
    let may_overflow = number.len() > 300 || number.iter().any(|&b| b == b'e' || b == b'E');
    let in_range = || {
        std::str::from_utf8(number)
            .ok()
            .and_then(Num::parse)
            .is_some()
    };
    if may_overflow && !in_range() {
        Err(Unreadable::Number)
    } else {
        Ok(())
    }
}

/// Depth and numbers inside an array or object.
fn check_compound(raw: &[u8]) -> Result<(), Unreadable> {
    let limit = MAX_DEPTH - 1;
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut number_start: Option<usize> = None;
    for (i, &b) in raw.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'-' | b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' => {
                // `e` also occurs in `true`/`false`, but those never start
                // with a number character, so they never open a token here.
                if number_start.is_none() && matches!(b, b'-' | b'0'..=b'9') {
                    number_start = Some(i);
                }
                continue;
            }
            _ => {}
        }
        if let Some(start) = number_start.take() {
            check_number(raw.get(start..i).unwrap_or_default())?;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(Unreadable::Depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A JSON number, kept exact where it fits an integer type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    /// Parses JSON number text (or, for numeric strings, Rust's float and
    /// integer syntax). Non-finite results (`1e400`, `inf`, `NaN`) are not
    /// numbers: comparing or bucketing them would be meaningless.
    pub(crate) fn parse(text: &str) -> Option<Num> {
        let looks_integral = !text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E'));
        if looks_integral && let Ok(i) = text.parse::<i128>() {
            return Some(Num::Int(i));
        }
        let f = text.parse::<f64>().ok()?;
        f.is_finite().then_some(Num::Float(f))
    }

    pub(crate) fn from_json(n: &serde_json::Number) -> Option<Num> {
        if let Some(i) = n.as_i64() {
            Some(Num::Int(i128::from(i)))
        } else if let Some(u) = n.as_u64() {
            Some(Num::Int(i128::from(u)))
        } else {
            n.as_f64().filter(|f| f.is_finite()).map(Num::Float)
        }
    }

    /// Exact numeric order: `2^53 + 1` and `2^53` compare unequal even
    /// though they share an `f64`.
    pub(crate) fn cmp_num(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
            (Num::Float(a), Num::Float(b)) => a.partial_cmp(&b),
            (Num::Float(a), Num::Int(b)) => cmp_float_int(a, b),
            (Num::Int(a), Num::Float(b)) => cmp_float_int(b, a).map(Ordering::reverse),
        }
    }

    /// The number rounded down to an integer, if it fits in `i128`.
    pub(crate) fn floor(self) -> Option<i128> {
        match self {
            Num::Int(i) => Some(i),
            Num::Float(f) => float_to_int(f.floor()),
        }
    }
}

/// 2^127 as f64: the first float beyond `i128`.
const TWO_POW_127: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;

fn float_to_int(integral: f64) -> Option<i128> {
    // INVARIANT: `integral` has no fractional part, so the cast is exact
    // whenever it is in range.
    if (-TWO_POW_127..TWO_POW_127).contains(&integral) {
        Some(integral as i128)
    } else {
        None
    }
}

fn cmp_float_int(f: f64, i: i128) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    if f >= TWO_POW_127 {
        return Some(Ordering::Greater);
    }
    if f < -TWO_POW_127 {
        return Some(Ordering::Less);
    }
    let whole = f.trunc();
    let whole_int = float_to_int(whole)?;
    match whole_int.cmp(&i) {
        Ordering::Equal => (f - whole).partial_cmp(&0.0),
        unequal => Some(unequal),
    }
}

/// Writes an `i128` in decimal into `buf`, returning the used tail.
/// Hand-rolled so the per-record path does not go through `core::fmt`.
pub(crate) fn format_i128(value: i128, buf: &mut [u8; 40]) -> &[u8] {
    let mut pos = buf.len();
    let mut magnitude = value.unsigned_abs();
    loop {
        pos -= 1;
        let digit = (magnitude % 10) as u8; // always < 10
        if let Some(slot) = buf.get_mut(pos) {
            *slot = b'0' + digit;
        }
        magnitude /= 10;
        if magnitude == 0 {
            break;
        }
    }
    if value < 0 {
        pos -= 1;
        if let Some(slot) = buf.get_mut(pos) {
            *slot = b'-';
        }
    }
    buf.get(pos..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn classifies_every_kind() {
        assert!(matches!(classify(&raw("null")), RawKind::Null));
        assert!(matches!(classify(&raw("true")), RawKind::Bool(true)));
        assert!(matches!(classify(&raw("false")), RawKind::Bool(false)));
        assert!(matches!(
            classify(&raw("-1.5e3")),
            RawKind::Number("-1.5e3")
        ));
        assert!(matches!(classify(&raw("[1]")), RawKind::Compound));
        assert!(matches!(classify(&raw("{}")), RawKind::Compound));
        let escaped = raw(r#""a\"b""#);
        let RawKind::String(s) = classify(&escaped) else {
            panic!("not a string")
        };
        let text = s.decode().unwrap();
        assert_eq!(text.text, "a\"b");
        assert!(!text.json_safe);
        let plain = raw(r#""plain é""#);
        let RawKind::String(s) = classify(&plain) else {
            panic!("not a string")
        };
        let text = s.decode().unwrap();
        assert!(matches!(text.text, Cow::Borrowed("plain é")));
        assert!(text.json_safe);
    }

    #[test]
    fn numbers_compare_exactly() {
        let big = Num::parse("9007199254740993").unwrap();
        let big_f = Num::parse("9007199254740992.0").unwrap();
        assert_eq!(big.cmp_num(big_f), Some(Ordering::Greater));
        assert_eq!(
            Num::parse("1").unwrap().cmp_num(Num::parse("1.0").unwrap()),
            Some(Ordering::Equal)
        );
        assert_eq!(
            Num::parse("-1.5")
                .unwrap()
                .cmp_num(Num::parse("-1").unwrap()),
            Some(Ordering::Less)
        );
        assert_eq!(
            Num::parse("1e300").unwrap().cmp_num(Num::Int(i128::MAX)),
            Some(Ordering::Greater)
        );
        assert_eq!(Num::parse("1e400"), None);
        assert_eq!(Num::parse("NaN"), None);
        assert_eq!(Num::parse("inf"), None);
        assert_eq!(
            Num::parse("18446744073709551616"),
            Some(Num::Int(18_446_744_073_709_551_616))
        );
    }

    #[test]
    fn floors_toward_negative_infinity() {
        assert_eq!(Num::parse("-0.5").unwrap().floor(), Some(-1));
        assert_eq!(Num::parse("39.99").unwrap().floor(), Some(39));
        assert_eq!(Num::parse("1e200").unwrap().floor(), None);
    }

    fn readable(json: &str) -> Result<(), Unreadable> {
        check_readable(&raw(json))
    }

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn nesting_is_measured_outside_strings() {
        assert_eq!(readable(&nested(MAX_DEPTH - 1)), Ok(()));
        assert_eq!(readable(&nested(MAX_DEPTH)), Err(Unreadable::Depth));
        let quoted = format!(r#"{{"a":"{}"}}"#, "[".repeat(500));
        assert_eq!(readable(&quoted), Ok(()));
        let after_escape = format!(r#"["\\\"{}",1]"#, "[".repeat(500));
        assert_eq!(readable(&after_escape), Ok(()));
    }

    #[test]
    fn numbers_beyond_f64_are_found_anywhere() {
        assert_eq!(readable("1e400"), Err(Unreadable::Number));
        assert_eq!(readable("-1E+309"), Err(Unreadable::Number));
        assert_eq!(readable(&"9".repeat(400)), Err(Unreadable::Number));
        assert_eq!(readable("[1,2e999]"), Err(Unreadable::Number));
        assert_eq!(readable(r#"{"a":{"b":-1e400}}"#), Err(Unreadable::Number));
        assert_eq!(readable(r#"[true,false,null,1e5,"1e999"]"#), Ok(()));
        assert_eq!(readable("1e-400"), Ok(()));
        assert_eq!(readable("[1.7976931348623157e308]"), Ok(()));
    }

    #[test]
    fn unpaired_surrogates_are_found_in_strings_and_compounds() {
        assert_eq!(readable(r#""\ud800""#), Err(Unreadable::Escape));
        assert_eq!(readable(r#"{"k":["\udfff"]}"#), Err(Unreadable::Escape));
        assert_eq!(readable(r#""\ud83c\udfb5""#), Ok(()));
    }

    #[test]
    fn formats_integers() {
        let mut buf = [0u8; 40];
        for v in [0, 7, -7, 1234567890, i128::MIN, i128::MAX] {
            assert_eq!(format_i128(v, &mut buf), v.to_string().as_bytes());
        }
    }
}
