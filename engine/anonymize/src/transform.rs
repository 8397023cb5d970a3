//! The built-in field transforms.
//!
//! Each transform maps one input value to one output value and is total:
//! a value it cannot handle becomes `null`, never an error and never the
//! raw value. A record is therefore never refused because of one odd field,
//! and nothing unanonymized slips out through an error path.

use std::borrow::Cow;
use std::sync::Arc;

use ring::hmac;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::KeyError;
use crate::output::{JsonSink, Sink, TextSink};
use crate::plugin::PluginTransform;
use crate::value::{Input, Num, RawKind, Text, classify, format_i128};

/// The smallest HMAC secret [`Transform::hmac_sha256`] accepts, in bytes.
///
/// Pseudonyms are only as strong as the key: with a short or guessable key
/// anyone can rebuild the mapping from a dictionary of likely ids, exactly as
/// with an unkeyed hash. 32 bytes matches the SHA-256 output size (RFC 2104
/// section 3).
pub const MIN_HMAC_KEY_LEN: usize = 32;

/// How many bytes of the HMAC-SHA256 tag a pseudonym keeps.
///
/// 16 bytes (128 bits) keeps accidental collisions out of reach for any
/// realistic number of ids while halving the output size.
pub const PSEUDONYM_BYTES: usize = 16;

/// What a consumer sees of one field.
///
/// Plain data, so the policy compiler can build it and tests can write it
/// out literally. [`RecordProgram::new`](crate::RecordProgram::new) checks it once
/// per request; applying it to a value cannot fail.
#[derive(Debug, Clone)]
pub enum Transform {
    /// The value unchanged: the consumer may `reveal` this field, or it is
    /// not sensitive. Costs one copy of the value's JSON text.
    Clear,
    /// Suppress the value: `null` it, or with `drop` leave the key out of the
    /// output altogether (so a consumer cannot even learn that it exists).
    Redact {
        /// Omit the key rather than writing `null`.
        drop: bool,
    },
    /// Keep the first and last few characters and replace each other
    /// character with `mask_char`, e.g. an email's last 4 characters.
    ///
    /// Counts Unicode scalar values, not bytes, so a multi-byte character is
    /// never split. A value with `keep_first + keep_last` characters or
    /// fewer is masked entirely: a short value is never revealed whole.
    /// Numbers are masked as their JSON text and become strings; `null`
    /// stays `null`; booleans, arrays and objects become `null`.
    Mask {
        /// Characters kept at the start.
        keep_first: usize,
        /// Characters kept at the end.
        keep_last: usize,
        /// Written once for every hidden character.
        mask_char: char,
    },
    /// A keyed pseudonym: `prefix` followed by the lowercase hex of the first
    /// [`PSEUDONYM_BYTES`] bytes of HMAC-SHA256 over the value.
    ///
    /// Deterministic for a given key, so ids pseudonymized with the same key
    /// scope stay joinable across data products, while someone without the
    /// key cannot reverse them from a dictionary (unlike an unkeyed hash,
    /// which this crate deliberately does not offer). Strings are hashed as
    /// their UTF-8 content, numbers as their JSON text (so `"42"` and `42`
    /// give the same pseudonym); `null` stays `null`; other values become
    /// `null`. The key must be an `HMAC_SHA256` key; build it with
    /// [`Transform::hmac_sha256`].
    Hmac {
        /// The key scope's secret, shared (not copied) between plans.
        key: Arc<hmac::Key>,
        /// Written before the hex, e.g. `urn:mesh:user:` or `u_`.
        prefix: String,
    },
    /// Reduce a `YYYY-MM-DD` date or an RFC 3339 timestamp to its year or
    /// month, as written (no time zone conversion). Anything that is not a
    /// valid date becomes `null`: a value we cannot generalize must not pass
    /// through as it is.
    GeneralizeDate(DatePart),
    /// Replace a number (or a numeric string) by the range of `width`
    /// integers that holds it, as a string `"lo-hi"`: with width 10,
    /// `37` → `"30-39"`, `-5` → `"-10--1"`. Values are floored first, so
    /// `39.9` → `"30-39"`. Anything else becomes `null`. `width` must not be
    /// 0.
    GeneralizeBucket {
        /// How many integers each bucket spans.
        width: u64,
    },
    /// Keep only the first `chars` characters of a string (or of a
    /// number's JSON text), e.g. postcode `SW1A 1AA` → `SW1`. A value no
    /// longer than `chars` is kept whole. Counts Unicode scalar values.
    /// Other values become `null`. `chars` must not be 0.
    GeneralizePrefix {
        /// Characters kept.
        chars: usize,
    },
    /// A plugin's transform (see [`PluginTransform`]). A plugin is called
    /// per batch of values by [`RecordProgram`](crate::RecordProgram)'s batch
    /// methods; a missing field is `null` without calling it. Applied to a
    /// lone value outside a batch (as by [`Transform::write_json`]) it writes
    /// `null`: no plugin answer, no value.
    Plugin(Arc<dyn PluginTransform>),
}

/// Which part of a date [`Transform::GeneralizeDate`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatePart {
    /// `"YYYY"`.
    Year,
    /// `"YYYY-MM"`.
    Month,
}

impl DatePart {
    /// Length in bytes of the kept prefix of a `YYYY-MM-DD...` text.
    fn prefix_len(self) -> usize {
        match self {
            DatePart::Year => 4,
            DatePart::Month => 7,
        }
    }
}

impl Transform {
    /// Builds an [`Transform::Hmac`] from a raw HMAC-SHA256 secret.
    ///
    /// Refuses secrets shorter than [`MIN_HMAC_KEY_LEN`] bytes, because a
    /// weak key turns pseudonyms back into a reversible hash.
    pub fn hmac_sha256(secret: &[u8], prefix: impl Into<String>) -> Result<Self, KeyError> {
        if secret.len() < MIN_HMAC_KEY_LEN {
            return Err(KeyError::TooShort {
                len: secret.len(),
                min: MIN_HMAC_KEY_LEN,
            });
        }
        Ok(Transform::Hmac {
            key: Arc::new(hmac::Key::new(hmac::HMAC_SHA256, secret)),
            prefix: prefix.into(),
        })
    }

    /// Applies the transform to one value and appends the result as JSON
    /// text to `out`. `None` means the field was missing from the record.
    ///
    /// For callers that handle values one at a time (and for benchmarks);
    /// [`RecordProgram`](crate::RecordProgram) is the per-record entry point.
    /// [`Transform::Redact`] writes `null` here, whether or not it drops the
    /// key, because only the record writer can omit a key.
    pub fn write_json(&self, value: Option<&RawValue>, out: &mut Vec<u8>) {
        self.apply(value, &mut JsonSink { out });
    }

    /// Whether the output omits this field's key altogether.
    pub(crate) fn drops_key(&self) -> bool {
        matches!(self, Transform::Redact { drop: true })
    }

    /// Whether the transform looks at the input value at all.
    pub(crate) fn reads_value(&self) -> bool {
        !matches!(self, Transform::Redact { .. })
    }

    /// Applies the transform to one value from a typed source (a cell of
    /// an Arrow column) and appends the result's text to `out`; `false`
    /// means the result is null and nothing was written.
    ///
    /// Every transform but [`Transform::Clear`] gives a string or null, so
    /// a columnar writer needs nothing else. `Clear` writes the value's
    /// text (a number's JSON text, `true`/`false`); a columnar plan serves
    /// a clear column as it is instead. [`Transform::Plugin`] gives null,
    /// as in [`Transform::write_json`]: plugins are called per batch.
    pub fn write_text(&self, value: Input<'_>, out: &mut String) -> bool {
        let mut sink = TextSink { out, null: false };
        match (self, value.kind()) {
            (_, RawKind::Null) => sink.null(),
            (Transform::Clear, RawKind::Bool(b)) => sink.push_str(if b { "true" } else { "false" }),
            (Transform::Clear, RawKind::Number(text) | RawKind::Text(text)) => sink.push_str(text),
            (_, kind) => self.apply_kind(kind, &mut sink),
        }
        !sink.null
    }

    pub(crate) fn apply<'a, S: Sink<'a>>(&self, value: Option<&'a RawValue>, sink: &mut S) {
        match (self, value) {
            (_, None) => sink.null(),
            (Transform::Clear, Some(value)) => sink.raw(value),
            (_, Some(value)) => self.apply_kind(classify(value), sink),
        }
    }

    /// Every transform but `Clear`, on a classified value.
    fn apply_kind<'a, S: Sink<'a>>(&self, value: RawKind<'a>, sink: &mut S) {
        match self {
            Transform::Clear | Transform::Redact { .. } | Transform::Plugin(_) => sink.null(),
            Transform::Mask {
                keep_first,
                keep_last,
                mask_char,
            } => match scalar_text(value) {
                Some(text) => mask(&text.text, *keep_first, *keep_last, *mask_char, sink),
                None => sink.null(),
            },
            Transform::Hmac { key, prefix } => match scalar_text(value) {
                Some(text) => pseudonym(key, prefix, text.text.as_bytes(), sink),
                None => sink.null(),
            },
            Transform::GeneralizeDate(part) => generalize_date(value, *part, sink),
            Transform::GeneralizeBucket { width } => bucket(value, *width, sink),
            Transform::GeneralizePrefix { chars } => match scalar_text(value) {
                Some(text) => prefix_of(text, *chars, sink),
                None => sink.null(),
            },
        }
    }
}

/// The text a string-like transform works on: a string's content or a
/// number's JSON text. `None` for null, booleans, arrays and objects.
fn scalar_text(kind: RawKind<'_>) -> Option<Text<'_>> {
    match kind {
        RawKind::String(s) => s.decode(),
        RawKind::Text(text) => Some(Text {
            text: Cow::Borrowed(text),
            json_safe: false,
        }),
        RawKind::Number(text) => Some(Text {
            text: Cow::Borrowed(text),
            json_safe: true,
        }),
        RawKind::Null | RawKind::Bool(_) | RawKind::Compound => None,
    }
}

fn mask<'a, S: Sink<'a>>(
    text: &str,
    keep_first: usize,
    keep_last: usize,
    mask_char: char,
    sink: &mut S,
) {
    let total = text.chars().count();
    sink.begin_string();
    if total <= keep_first.saturating_add(keep_last) {
        sink.push_repeated(mask_char, total);
    } else {
        // Byte offsets of the kept head's end and the kept tail's start.
        let head_end = text
            .char_indices()
            .nth(keep_first)
            .map_or(text.len(), |(at, _)| at);
        let tail_start = match keep_last {
            0 => text.len(),
            n => text
                .char_indices()
                .nth_back(n - 1)
                .map_or(head_end, |(at, _)| at),
        };
        sink.push_str(text.get(..head_end).unwrap_or_default());
        sink.push_repeated(mask_char, total - keep_first - keep_last);
        sink.push_str(text.get(tail_start..).unwrap_or_default());
    }
    sink.end_string();
}

fn pseudonym<'a, S: Sink<'a>>(key: &hmac::Key, prefix: &str, message: &[u8], sink: &mut S) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let tag = hmac::sign(key, message);
    let mut hex = [0u8; PSEUDONYM_BYTES * 2];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(tag.as_ref()) {
        if let ([hi, lo], Some(&h), Some(&l)) = (
            pair,
            HEX.get(usize::from(byte >> 4)),
            HEX.get(usize::from(byte & 0x0f)),
        ) {
            *hi = h;
            *lo = l;
        }
    }
    sink.begin_string();
    sink.push_str(prefix);
    sink.push_plain_ascii(&hex);
    sink.end_string();
}

fn generalize_date<'a, S: Sink<'a>>(kind: RawKind<'a>, part: DatePart, sink: &mut S) {
    let text = match kind {
        RawKind::String(s) => s.decode(),
        RawKind::Text(text) => Some(Text {
            text: Cow::Borrowed(text),
            json_safe: false,
        }),
        _ => None,
    };
    let Some(text) = text else {
        sink.null();
        return;
    };
    if !is_date_or_timestamp(&text.text) {
        sink.null();
        return;
    }
    let len = part.prefix_len();
    // INVARIANT: a valid date or timestamp starts with ASCII `YYYY-MM-DD`,
    // so `len` is on a character boundary and the prefix needs no escaping.
    match text.text {
        Cow::Borrowed(borrowed) => match borrowed.get(..len) {
            Some(prefix) => sink.borrowed_str(prefix, true),
            None => sink.null(),
        },
        Cow::Owned(owned) => match owned.get(..len) {
            Some(prefix) => {
                sink.begin_string();
                sink.push_plain_ascii(prefix.as_bytes());
                sink.end_string();
            }
            None => sink.null(),
        },
    }
}

/// `YYYY-MM-DD` naming a real calendar day, or an RFC 3339 timestamp.
fn is_date_or_timestamp(text: &str) -> bool {
    if text.len() == 10 {
        is_calendar_date(text)
    } else {
        OffsetDateTime::parse(text, &Rfc3339).is_ok()
    }
}

fn is_calendar_date(text: &str) -> bool {
    let b = text.as_bytes();
    let digits_at = |range: std::ops::Range<usize>| -> Option<u16> {
        let part = b.get(range)?;
        part.iter().try_fold(0u16, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u16::from(d - b'0'))
        })
    };
    let shape_ok = b.get(4) == Some(&b'-') && b.get(7) == Some(&b'-');
    let (Some(year), Some(month), Some(day)) = (digits_at(0..4), digits_at(5..7), digits_at(8..10))
    else {
        return false;
    };
    let Ok(month) = time::Month::try_from(u8::try_from(month).unwrap_or(0)) else {
        return false;
    };
    let Ok(day) = u8::try_from(day) else {
        return false;
    };
    shape_ok && time::Date::from_calendar_date(i32::from(year), month, day).is_ok()
}

fn bucket<'a, S: Sink<'a>>(kind: RawKind<'a>, width: u64, sink: &mut S) {
    let number = match kind {
        RawKind::Number(text) => Num::parse(text),
        RawKind::String(s) => s.decode().and_then(|t| Num::parse(&t.text)),
        RawKind::Text(text) => Num::parse(text),
        RawKind::Null | RawKind::Bool(_) | RawKind::Compound => None,
    };
    let width = i128::from(width);
    let range = number.and_then(Num::floor).and_then(|v| {
        let lo = v.checked_div_euclid(width)?.checked_mul(width)?;
        let hi = lo.checked_add(width - 1)?;
        Some((lo, hi))
    });
    let Some((lo, hi)) = range else {
        sink.null();
        return;
    };
    let mut buf = [0u8; 40];
    sink.begin_string();
    sink.push_plain_ascii(format_i128(lo, &mut buf));
    sink.push_plain_ascii(b"-");
    sink.push_plain_ascii(format_i128(hi, &mut buf));
    sink.end_string();
}

fn prefix_of<'a, S: Sink<'a>>(text: Text<'a>, chars: usize, sink: &mut S) {
    let end = text
        .text
        .char_indices()
        .nth(chars)
        .map_or(text.text.len(), |(at, _)| at);
    match text.text {
        Cow::Borrowed(borrowed) => {
            sink.borrowed_str(borrowed.get(..end).unwrap_or_default(), text.json_safe);
        }
        Cow::Owned(owned) => {
            sink.begin_string();
            sink.push_str(owned.get(..end).unwrap_or_default());
            sink.end_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

    fn apply(t: &Transform, json: &str) -> String {
        let raw = RawValue::from_string(json.to_owned()).unwrap();
        let mut out = Vec::new();
        t.write_json(Some(&raw), &mut out);
        let text = String::from_utf8(out).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).expect("output is valid JSON");
        text
    }

    fn mask(first: usize, last: usize) -> Transform {
        Transform::Mask {
            keep_first: first,
            keep_last: last,
            mask_char: '*',
        }
    }

    #[test]
    fn missing_value_is_null_for_every_transform() {
        for t in [
            Transform::Clear,
            Transform::Redact { drop: false },
            mask(1, 1),
            Transform::hmac_sha256(SECRET, "").unwrap(),
            Transform::GeneralizeDate(DatePart::Year),
            Transform::GeneralizeBucket { width: 10 },
            Transform::GeneralizePrefix { chars: 2 },
        ] {
            let mut out = Vec::new();
            t.write_json(None, &mut out);
            assert_eq!(out, b"null", "{t:?}");
        }
    }

    #[test]
    fn clear_copies_the_raw_text() {
        assert_eq!(apply(&Transform::Clear, r#""a\u00e9\n""#), r#""a\u00e9\n""#);
        assert_eq!(apply(&Transform::Clear, "1.50e2"), "1.50e2");
        assert_eq!(apply(&Transform::Clear, r#"{"a":[1,2]}"#), r#"{"a":[1,2]}"#);
    }

    #[test]
    fn redact_nulls() {
        assert_eq!(apply(&Transform::Redact { drop: false }, r#""x""#), "null");
        assert_eq!(apply(&Transform::Redact { drop: true }, "42"), "null");
    }

    #[test]
    fn mask_keeps_head_and_tail() {
        assert_eq!(
            apply(&mask(0, 4), r#""jane@example.com""#),
            r#""************.com""#
        );
        assert_eq!(apply(&mask(2, 0), r#""secret""#), r#""se****""#);
        assert_eq!(apply(&mask(1, 1), r#""abc""#), r#""a*c""#);
    }

    #[test]
    fn mask_hides_short_values_entirely() {
        assert_eq!(apply(&mask(2, 2), r#""abcd""#), r#""****""#);
        assert_eq!(apply(&mask(2, 2), r#""ab""#), r#""**""#);
        assert_eq!(apply(&mask(0, 0), r#""abc""#), r#""***""#);
        assert_eq!(apply(&mask(2, 2), r#""""#), r#""""#);
        assert_eq!(apply(&mask(usize::MAX, usize::MAX), r#""abc""#), r#""***""#);
    }

    #[test]
    fn mask_counts_characters_not_bytes() {
        assert_eq!(apply(&mask(1, 1), r#""héllo wörld""#), r#""h*********d""#);
        assert_eq!(apply(&mask(1, 2), r#""🎵ab🎶c""#), r#""🎵**🎶c""#);
        // An escaped character counts once, like any other.
        assert_eq!(apply(&mask(0, 1), r#""ab\u00e9""#), r#""**é""#);
    }

    #[test]
    fn mask_escapes_kept_text_and_mask_char() {
        assert_eq!(apply(&mask(1, 1), r#""\"xyz\\""#), r#""\"***\\""#);
        let quote = Transform::Mask {
            keep_first: 0,
            keep_last: 0,
            mask_char: '"',
        };
        assert_eq!(apply(&quote, r#""ab""#), r#""\"\"""#);
        let star = Transform::Mask {
            keep_first: 0,
            keep_last: 1,
            mask_char: '★',
        };
        assert_eq!(apply(&star, r#""abc""#), r#""★★c""#);
    }

    #[test]
    fn mask_numbers_as_text_and_nulls_the_rest() {
        assert_eq!(
            apply(&mask(0, 4), "4111111111111111"),
            r#""************1111""#
        );
        assert_eq!(apply(&mask(1, 0), "-12.5"), r#""-****""#);
        assert_eq!(apply(&mask(1, 1), "null"), "null");
        assert_eq!(apply(&mask(1, 1), "true"), "null");
        assert_eq!(apply(&mask(1, 1), r#"["abc"]"#), "null");
        assert_eq!(apply(&mask(1, 1), r#"{"a":"b"}"#), "null");
    }

    #[test]
    fn hmac_is_keyed_deterministic_and_prefixed() {
        let a = Transform::hmac_sha256(SECRET, "u_").unwrap();
        let b = Transform::hmac_sha256(b"another secret of thirty-two b!!", "u_").unwrap();
        let first = apply(&a, r#""user-1""#);
        assert_eq!(first, apply(&a, r#""user-1""#));
        assert_ne!(first, apply(&a, r#""user-2""#));
        assert_ne!(first, apply(&b, r#""user-1""#));
        let id: String = serde_json::from_str(&first).unwrap();
        let hex = id.strip_prefix("u_").unwrap();
        assert_eq!(hex.len(), 32);
        assert!(
            hex.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
    }

    #[test]
    fn hmac_matches_ring_over_the_content() {
        let t = Transform::hmac_sha256(SECRET, "").unwrap();
        let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET);
        let expected: String = hmac::sign(&key, "é\"".as_bytes())
            .as_ref()
            .iter()
            .take(PSEUDONYM_BYTES)
            .map(|b| format!("{b:02x}"))
            .collect();
        // Escaped and unescaped spellings are the same string, so the same id.
        assert_eq!(apply(&t, r#""é\"""#), format!("\"{expected}\""));
        assert_eq!(apply(&t, r#""\u00e9\"""#), format!("\"{expected}\""));
    }

    #[test]
    fn hmac_numbers_as_text_and_nulls_the_rest() {
        let t = Transform::hmac_sha256(SECRET, "").unwrap();
        assert_eq!(apply(&t, "42"), apply(&t, r#""42""#));
        assert_eq!(apply(&t, "null"), "null");
        assert_eq!(apply(&t, "false"), "null");
        assert_eq!(apply(&t, "[1]"), "null");
    }

    #[test]
    fn hmac_prefix_is_escaped() {
        let t = Transform::hmac_sha256(SECRET, "a\"b").unwrap();
        let out: String = serde_json::from_str(&apply(&t, "1")).unwrap();
        assert!(out.starts_with("a\"b"));
    }

    #[test]
    fn hmac_refuses_short_secrets() {
        assert!(matches!(
            Transform::hmac_sha256(b"password", ""),
            Err(KeyError::TooShort { len: 8, min: 32 })
        ));
    }

    #[test]
    fn date_to_year_or_month() {
        let year = Transform::GeneralizeDate(DatePart::Year);
        let month = Transform::GeneralizeDate(DatePart::Month);
        assert_eq!(apply(&year, r#""1987-06-15""#), r#""1987""#);
        assert_eq!(apply(&month, r#""1987-06-15""#), r#""1987-06""#);
        assert_eq!(apply(&year, r#""2024-02-29T23:59:59.123Z""#), r#""2024""#);
        assert_eq!(
            apply(&month, r#""2023-12-31T23:30:00-05:00""#),
            r#""2023-12""#
        );
        assert_eq!(apply(&month, r#""2023-12-31t23:30:00z""#), r#""2023-12""#);
        assert_eq!(apply(&month, r#""2023\u002d12-31""#), r#""2023-12""#);
    }

    #[test]
    fn unparseable_dates_become_null() {
        let year = Transform::GeneralizeDate(DatePart::Year);
        for bad in [
            r#""2023-02-29""#,
            r#""2024-13-01""#,
            r#""2024-00-10""#,
            r#""2024-1-10x""#,
            r#""15/06/1987""#,
            r#""1987/06/15""#,
            r#""1987-06x15""#,
            r#""1987-06-15T25:00:00Z""#,
            r#""1987-06-15T10:00:00""#,
            r#""19870615""#,
            r#""é987-06-15""#,
            r#""""#,
            "19870615",
            "null",
            "true",
            r#"["1987-06-15"]"#,
        ] {
            assert_eq!(apply(&year, bad), "null", "{bad}");
        }
    }

    #[test]
    fn bucket_floors_into_ranges() {
        let t = Transform::GeneralizeBucket { width: 10 };
        assert_eq!(apply(&t, "37"), r#""30-39""#);
        assert_eq!(apply(&t, "30"), r#""30-39""#);
        assert_eq!(apply(&t, "39.99"), r#""30-39""#);
        assert_eq!(apply(&t, "0"), r#""0-9""#);
        assert_eq!(apply(&t, "-5"), r#""-10--1""#);
        assert_eq!(apply(&t, "-10"), r#""-10--1""#);
        assert_eq!(apply(&t, "-0.5"), r#""-10--1""#);
        assert_eq!(apply(&t, "1e3"), r#""1000-1009""#);
        assert_eq!(apply(&t, r#""42""#), r#""40-49""#);
        assert_eq!(apply(&t, r#""4.2e1""#), r#""40-49""#);
        let one = Transform::GeneralizeBucket { width: 1 };
        assert_eq!(apply(&one, "7.9"), r#""7-7""#);
        let wide = Transform::GeneralizeBucket { width: u64::MAX };
        assert_eq!(apply(&wide, "5"), format!("\"0-{}\"", u64::MAX - 1));
    }

    #[test]
    fn bucket_nulls_non_numbers() {
        let t = Transform::GeneralizeBucket { width: 10 };
        for bad in [
            r#""abc""#, r#""""#, r#"" 42""#, r#""NaN""#, r#""inf""#, "1e400", "null", "true", "[1]",
        ] {
            assert_eq!(apply(&t, bad), "null", "{bad}");
        }
        assert_eq!(
            apply(&Transform::GeneralizeBucket { width: 0 }, "5"),
            "null"
        );
    }

    #[test]
    fn prefix_keeps_leading_characters() {
        let t = Transform::GeneralizePrefix { chars: 3 };
        assert_eq!(apply(&t, r#""SW1A 1AA""#), r#""SW1""#);
        assert_eq!(apply(&t, r#""ab""#), r#""ab""#);
        assert_eq!(apply(&t, r#""Ørsted""#), r#""Ørs""#);
        assert_eq!(apply(&t, r#""a\"bc""#), r#""a\"b""#);
        assert_eq!(apply(&t, "75008"), r#""750""#);
        assert_eq!(apply(&t, "null"), "null");
        assert_eq!(apply(&t, "false"), "null");
        assert_eq!(apply(&t, r#"{"a":1}"#), "null");
    }
}
