//! The wire format between host and guest (`wasm-plugins/ABI.md`): pure
//! encoding and decoding, so every rule is testable without a runtime.
//!
//! Everything is little-endian. A value is a tag byte, a `u32` length and
//! that many bytes. Requests carry a `u32` count of items; responses start
//! with a status byte.

use serde_json::value::RawValue;

/// The ABI version this host speaks; a guest's `meshgov_abi_version` must
/// return it.
pub const ABI_VERSION: i32 = 1;

/// The guest's exports.
pub mod export {
    pub const MEMORY: &str = "memory";
    pub const ABI_VERSION: &str = "meshgov_abi_version";
    pub const ALLOC: &str = "meshgov_alloc";
    pub const TRANSFORM: &str = "meshgov_transform";
    pub const VALIDATE: &str = "meshgov_validate";
}

/// Value tags.
pub mod tag {
    pub const NULL: u8 = 0;
    pub const FALSE: u8 = 1;
    pub const TRUE: u8 = 2;
    /// A JSON number, as its text.
    pub const NUMBER: u8 = 3;
    /// A string, as UTF-8 (no JSON escapes).
    pub const STRING: u8 = 4;
    /// An array or object, as JSON text.
    pub const JSON: u8 = 5;
}

/// Response status bytes.
pub mod status {
    pub const OK: u8 = 0;
    /// The guest refuses the whole batch; a UTF-8 reason follows.
    pub const ERROR: u8 = 1;
}

/// Why a response was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The guest answered status 1 with this reason.
    Refused(String),
    /// The response breaks the ABI.
    Malformed(String),
}

fn put_u32(out: &mut Vec<u8>, n: usize) -> Result<(), String> {
    let n = u32::try_from(n).map_err(|_| "the batch is too large for the ABI".to_string())?;
    out.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) -> Result<(), String> {
    out.push(tag);
    put_u32(out, bytes.len())?;
    out.extend_from_slice(bytes);
    Ok(())
}

/// Appends one JSON value in the ABI's tagged form.
fn put_value(out: &mut Vec<u8>, value: &RawValue) -> Result<(), String> {
    let text = value.get().trim_matches([' ', '\t', '\n', '\r']);
    match text.as_bytes().first() {
        Some(b'n') => put_bytes(out, tag::NULL, b""),
        Some(b't') => put_bytes(out, tag::TRUE, b""),
        Some(b'f') => put_bytes(out, tag::FALSE, b""),
        Some(b'"') => match serde_json::from_str::<&str>(text) {
            Ok(s) => put_bytes(out, tag::STRING, s.as_bytes()),
            // Escapes: decode into an owned string.
            Err(_) => {
                let s: String = serde_json::from_str(text)
                    .map_err(|_| "a value is not a valid JSON string".to_string())?;
                put_bytes(out, tag::STRING, s.as_bytes())
            }
        },
        Some(b'[' | b'{') => put_bytes(out, tag::JSON, text.as_bytes()),
        Some(_) => put_bytes(out, tag::NUMBER, text.as_bytes()),
        None => Err("a value is empty".into()),
    }
}

/// A transform request: the batch of values.
pub fn encode_values(values: &[&RawValue]) -> Result<Vec<u8>, String> {
    let size: usize = values.iter().map(|v| v.get().len() + 5).sum();
    let mut out = Vec::with_capacity(size + 4);
    put_u32(&mut out, values.len())?;
    for v in values {
        put_value(&mut out, v)?;
    }
    Ok(out)
}

/// A validator request: per record, the fields it has, by name.
pub fn encode_records(
    fields: &[&str],
    records: &[&[Option<&RawValue>]],
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    put_u32(&mut out, records.len())?;
    for record in records {
        let present = record.iter().filter(|v| v.is_some()).count();
        put_u32(&mut out, present)?;
        for (name, value) in fields.iter().zip(record.iter()) {
            if let Some(value) = value {
                put_u32(&mut out, name.len())?;
                out.extend_from_slice(name.as_bytes());
                put_value(&mut out, value)?;
            }
        }
    }
    Ok(out)
}

/// Reads a response, never past its end.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Rejection> {
        if n > self.data.len() {
            return Err(Rejection::Malformed("the response ends early".into()));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Rejection> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }

    fn u32(&mut self) -> Result<usize, Rejection> {
        let b = self.take(4)?;
        let mut n = [0u8; 4];
        n.copy_from_slice(b);
        Ok(u32::from_le_bytes(n) as usize)
    }

    fn text(&mut self) -> Result<&'a str, Rejection> {
        let len = self.u32()?;
        std::str::from_utf8(self.take(len)?)
            .map_err(|_| Rejection::Malformed("a text is not UTF-8".into()))
    }

    /// The status byte, and for an error the guest's reason.
    fn status(&mut self) -> Result<(), Rejection> {
        match self.u8()? {
            status::OK => Ok(()),
            status::ERROR => Err(Rejection::Refused(short(self.text()?))),
            other => Err(Rejection::Malformed(format!("unknown status {other}"))),
        }
    }

    fn count(&mut self, expected: usize) -> Result<(), Rejection> {
        match self.u32()? {
            n if n == expected => Ok(()),
            n => Err(Rejection::Malformed(format!(
                "answered {n} items for a batch of {expected}"
            ))),
        }
    }

    fn end(&self) -> Result<(), Rejection> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(Rejection::Malformed(
                "the response has bytes after its last item".into(),
            ))
        }
    }
}

/// Guest text in host messages is cut short and its control characters
/// escaped: it is for operators, and a plugin must not be able to flood logs
/// or forge log lines.
fn short(text: &str) -> String {
    const MAX: usize = 200;
    let mut out = String::with_capacity(text.len().min(MAX));
    // Counted after escaping: an escaped character is several.
    let mut n = 0;
    for c in text.chars() {
        let width = if c.is_control() {
            c.escape_default().count()
        } else {
            1
        };
        if n + width > MAX {
            out.push('…');
            break;
        }
        n += width;
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn is_json_number(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        && serde_json::from_str::<serde_json::Number>(text).is_ok()
}

fn value(r: &mut Reader<'_>) -> Result<Box<RawValue>, Rejection> {
    let bad = |what: &str| Rejection::Malformed(format!("a value is {what}"));
    let t = r.u8()?;
    let len = r.u32()?;
    let bytes = r.take(len)?;
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| bad("not UTF-8"))
    };
    let raw = match t {
        tag::NULL | tag::FALSE | tag::TRUE if !bytes.is_empty() => {
            return Err(bad("a null or boolean with a payload"));
        }
        tag::NULL => RawValue::from_string("null".into()),
        tag::FALSE => RawValue::from_string("false".into()),
        tag::TRUE => RawValue::from_string("true".into()),
        tag::NUMBER => {
            let t = text(bytes)?;
            if !is_json_number(&t) {
                return Err(bad("tagged as a number but is not a JSON number"));
            }
            RawValue::from_string(t)
        }
        tag::STRING => serde_json::value::to_raw_value(&text(bytes)?),
        tag::JSON => {
            let t = text(bytes)?;
            if !matches!(t.trim_start().as_bytes().first(), Some(b'[' | b'{')) {
                return Err(bad("tagged as JSON but is not an array or object"));
            }
            RawValue::from_string(t)
        }
        other => return Err(bad(&format!("tagged {other}, which is no tag"))),
    };
    let raw = raw.map_err(|_| bad("not valid JSON"))?;
    // It is copied into served records: consumers' strict readers must be
    // able to read it back.
    meshgov_anonymize::check_readable(&raw).map_err(|u| bad(&u.to_string()))?;
    Ok(raw)
}

/// A transform response: exactly `expected` values.
pub fn decode_values(data: &[u8], expected: usize) -> Result<Vec<Box<RawValue>>, Rejection> {
    let mut r = Reader { data };
    r.status()?;
    r.count(expected)?;
    let values = (0..expected)
        .map(|_| value(&mut r))
        .collect::<Result<Vec<_>, _>>()?;
    r.end()?;
    Ok(values)
}

/// A validator response: exactly `expected` verdicts (`None` = passes).
pub fn decode_verdicts(data: &[u8], expected: usize) -> Result<Vec<Option<String>>, Rejection> {
    let mut r = Reader { data };
    r.status()?;
    r.count(expected)?;
    let verdicts = (0..expected)
        .map(|_| match r.u8()? {
            0 => r.text().map(|_| None),
            1 => r.text().map(|t| Some(short(t))),
            other => Err(Rejection::Malformed(format!("unknown verdict {other}"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    r.end()?;
    Ok(verdicts)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// Found by the `plugin_output` fuzz target: a guest's reason carried
    /// a tab and NUL bytes into host messages (and so into logs).
    #[test]
    fn guest_text_has_its_control_characters_escaped() {
        let mut refusal = vec![status::ERROR];
        let reason = "line one\nforged: line\t\0";
        refusal.extend_from_slice(&(reason.len() as u32).to_le_bytes());
        refusal.extend_from_slice(reason.as_bytes());
        let Err(Rejection::Refused(why)) = decode_values(&refusal, 1) else {
            panic!("a refusal is a refusal");
        };
        assert_eq!(why, "line one\\nforged: line\\t\\u{0}");
        assert!(!why.chars().any(char::is_control));
        let long = "é".repeat(300);
        let cut = short(&long);
        assert_eq!(cut.chars().count(), 201);
        assert!(cut.ends_with('…'));
        // Found by `plugin_output` again: the cut counted characters before
        // escaping, so NULs (`\u{0}`, five each) made it 215 long.
        let nuls = "\0".repeat(300);
        let cut = short(&nuls);
        assert!(cut.chars().count() <= 201, "{}", cut.chars().count());
        assert!(cut.ends_with('…') && !cut.chars().any(char::is_control));
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.into()).unwrap()
    }

    #[test]
    fn values_are_tagged_and_strings_unescaped() {
        let vals = [
            raw("null"),
            raw("true"),
            raw("-1.5e3"),
            raw(r#""a\"é""#),
            raw("[1]"),
        ];
        let refs: Vec<&RawValue> = vals.iter().map(|b| &**b).collect();
        let enc = encode_values(&refs).unwrap();
        let mut want = vec![5, 0, 0, 0];
        for (t, b) in [
            (tag::NULL, &b""[..]),
            (tag::TRUE, b""),
            (tag::NUMBER, b"-1.5e3"),
            (tag::STRING, "a\"é".as_bytes()),
            (tag::JSON, b"[1]"),
        ] {
            want.push(t);
            want.extend_from_slice(&(b.len() as u32).to_le_bytes());
            want.extend_from_slice(b);
        }
        assert_eq!(enc, want);
    }

    #[test]
    fn a_response_round_trips_and_strings_are_escaped_by_the_host() {
        let mut data = vec![status::OK];
        data.extend_from_slice(&2u32.to_le_bytes());
        for (t, b) in [(tag::STRING, "x\"\n".as_bytes()), (tag::NUMBER, b"42")] {
            data.push(t);
            data.extend_from_slice(&(b.len() as u32).to_le_bytes());
            data.extend_from_slice(b);
        }
        let got = decode_values(&data, 2).unwrap();
        assert_eq!(got[0].get(), r#""x\"\n""#);
        assert_eq!(got[1].get(), "42");
    }

    #[test]
    fn malformed_responses_are_rejected() {
        let ok_one = |t: u8, b: &[u8]| {
            let mut d = vec![status::OK, 1, 0, 0, 0, t];
            d.extend_from_slice(&(b.len() as u32).to_le_bytes());
            d.extend_from_slice(b);
            d
        };
        let malformed = |d: &[u8], n| matches!(decode_values(d, n), Err(Rejection::Malformed(_)));
        assert!(malformed(&ok_one(tag::NUMBER, b"1e400"), 1));
        assert!(malformed(&ok_one(tag::NUMBER, b"NaN"), 1));
        assert!(malformed(&ok_one(tag::NUMBER, b" 1"), 1));
        assert!(malformed(&ok_one(tag::JSON, b"\"s\""), 1));
        assert!(malformed(&ok_one(tag::JSON, b"[1"), 1));
        // Valid JSON grammar that strict readers refuse: it would reach
        // served records. Found by the `plugin_output` fuzz target.
        for unreadable in [
            "[9,9e3109]".to_string(),
            r#"{"a":["\ud800"]}"#.to_string(),
            format!("{}{}", "[".repeat(127), "]".repeat(127)),
        ] {
            let d = ok_one(tag::JSON, unreadable.as_bytes());
            let Err(Rejection::Malformed(why)) = decode_values(&d, 1) else {
                panic!("{unreadable} was accepted");
            };
            assert!(why.starts_with("a value is "), "{why}");
        }
        let deepest = format!("{}{}", "[".repeat(126), "]".repeat(126));
        assert!(decode_values(&ok_one(tag::JSON, deepest.as_bytes()), 1).is_ok());
        assert!(malformed(&ok_one(tag::STRING, &[0xff]), 1));
        assert!(malformed(&ok_one(tag::NULL, b"x"), 1));
        assert!(malformed(&ok_one(9, b""), 1));
        assert!(malformed(&ok_one(tag::NULL, b""), 2));
        let mut long = ok_one(tag::NULL, b"");
        long.push(0);
        assert!(malformed(&long, 1));
        assert!(malformed(&[status::OK, 1, 0], 1));
        assert!(malformed(&[7], 0));
        assert!(malformed(&[], 0));
        let mut huge = vec![status::OK, 1, 0, 0, 0, tag::STRING];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(malformed(&huge, 1));
        let mut refused = vec![status::ERROR, 3, 0, 0, 0];
        refused.extend_from_slice(b"bad");
        assert_eq!(
            decode_values(&refused, 1).unwrap_err(),
            Rejection::Refused("bad".into())
        );
    }

    #[test]
    fn verdicts_decode() {
        let mut d = vec![status::OK, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0];
        d.extend_from_slice(b"no");
        assert_eq!(
            decode_verdicts(&d, 2).unwrap(),
            vec![None, Some("no".into())]
        );
        let mut bad = d.clone();
        bad[10] = 3;
        assert!(decode_verdicts(&bad, 2).is_err());
    }
}
