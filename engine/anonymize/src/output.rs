//! Where transformed values go: straight into an NDJSON buffer, or into
//! cells for a CSV writer.
//!
//! Transforms are written once against the [`Sink`] trait, so both output
//! formats make exactly the same decisions, and the NDJSON path never builds
//! an intermediate `String`.

use std::borrow::Cow;

use serde_json::value::RawValue;

use crate::escape::{push_escaped, push_escaped_char};
use crate::value::{RawKind, classify};

/// One output value of a record, for writers that are not NDJSON (CSV).
///
/// Cells borrow from the input line where they can: a cleared string without
/// escapes, a date or a prefix costs no allocation.
#[derive(Debug, Clone)]
pub enum Cell<'a> {
    /// JSON `null`: the field was missing, null, redacted, or its value did
    /// not suit the transform. A CSV writer usually writes an empty cell.
    Null,
    /// A string, already decoded (no JSON escapes left).
    Text(Cow<'a, str>),
    /// A non-string value (number, boolean, array or object) as its JSON
    /// text: borrowed from the input when cleared, so that numbers keep their
    /// exact digits, or owned when a plugin computed it.
    Json(Cow<'a, RawValue>),
}

/// Cells are equal when they are the same variant with the same text
/// (`Json` cells compare their JSON text as written).
impl PartialEq for Cell<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Cell::Null, Cell::Null) => true,
            (Cell::Text(a), Cell::Text(b)) => a == b,
            (Cell::Json(a), Cell::Json(b)) => a.get() == b.get(),
            _ => false,
        }
    }
}

impl Cell<'_> {
    /// The cell with its borrowed text copied, so it outlives its input.
    pub fn to_static(&self) -> Cell<'static> {
        match self {
            Cell::Null => Cell::Null,
            Cell::Text(text) => Cell::Text(Cow::Owned(text.to_string())),
            Cell::Json(raw) => Cell::Json(Cow::Owned(raw.as_ref().to_owned())),
        }
    }

    /// The cell as text, the way a CSV writer would print it: strings
    /// decoded, other values as their JSON text, and null as `None`.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Cell::Null => None,
            Cell::Text(text) => Some(text),
            Cell::Json(raw) => Some(raw.get()),
        }
    }
}

/// Receives one output value from a transform.
///
/// A value is either a single call (`null`, `raw`, `borrowed_str`), or a
/// string built from pieces between `begin_string` and `end_string`.
pub(crate) trait Sink<'a> {
    fn null(&mut self);
    /// The input value unchanged.
    fn raw(&mut self, value: &'a RawValue);
    /// A complete string value borrowed from the input. `json_safe` says it
    /// holds nothing JSON must escape.
    fn borrowed_str(&mut self, text: &'a str, json_safe: bool);
    fn begin_string(&mut self);
    /// Appends text that may need escaping.
    fn push_str(&mut self, text: &str);
    /// Appends `count` copies of `c`.
    fn push_repeated(&mut self, c: char, count: usize);
    /// Appends bytes that need no escaping.
    // INVARIANT: callers pass only printable ASCII other than `"` and `\`
    // (hex digits, decimal digits, `-`).
    fn push_plain_ascii(&mut self, bytes: &[u8]);
    fn end_string(&mut self);
}

/// Writes values as JSON text into the caller's buffer.
pub(crate) struct JsonSink<'o> {
    pub(crate) out: &'o mut Vec<u8>,
}

impl<'a> Sink<'a> for JsonSink<'_> {
    fn null(&mut self) {
        self.out.extend_from_slice(b"null");
    }

    fn raw(&mut self, value: &'a RawValue) {
        self.out.extend_from_slice(value.get().as_bytes());
    }

    fn borrowed_str(&mut self, text: &'a str, json_safe: bool) {
        self.out.push(b'"');
        if json_safe {
            self.out.extend_from_slice(text.as_bytes());
        } else {
            push_escaped(self.out, text);
        }
        self.out.push(b'"');
    }

    fn begin_string(&mut self) {
        self.out.push(b'"');
    }

    fn push_str(&mut self, text: &str) {
        push_escaped(self.out, text);
    }

    fn push_repeated(&mut self, c: char, count: usize) {
        let mut encoded = [0u8; 4];
        let as_str: &str = c.encode_utf8(&mut encoded);
        let single_byte_plain = as_str.len() == 1 && !crate::escape::needs_escape(encoded[0]);
        if single_byte_plain {
            self.out.resize(self.out.len() + count, encoded[0]);
        } else {
            for _ in 0..count {
                push_escaped_char(self.out, c);
            }
        }
    }

    fn push_plain_ascii(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    fn end_string(&mut self) {
        self.out.push(b'"');
    }
}

/// Collects values as [`Cell`]s.
pub(crate) struct CellSink<'c, 'a> {
    pub(crate) cells: &'c mut Vec<Cell<'a>>,
    /// The string being built between `begin_string` and `end_string`.
    pub(crate) building: String,
}

impl<'a> Sink<'a> for CellSink<'_, 'a> {
    fn null(&mut self) {
        self.cells.push(Cell::Null);
    }

    fn raw(&mut self, value: &'a RawValue) {
        let cell = match classify(value) {
            RawKind::Null => Cell::Null,
            RawKind::String(s) => match s.decode() {
                Some(text) => Cell::Text(text.text),
                None => Cell::Null,
            },
            RawKind::Text(text) => Cell::Text(Cow::Borrowed(text)),
            RawKind::Bool(_) | RawKind::Number(_) | RawKind::Compound => {
                Cell::Json(Cow::Borrowed(value))
            }
        };
        self.cells.push(cell);
    }

    fn borrowed_str(&mut self, text: &'a str, _json_safe: bool) {
        self.cells.push(Cell::Text(Cow::Borrowed(text)));
    }

    fn begin_string(&mut self) {
        self.building.clear();
    }

    fn push_str(&mut self, text: &str) {
        self.building.push_str(text);
    }

    fn push_repeated(&mut self, c: char, count: usize) {
        self.building.extend(std::iter::repeat_n(c, count));
    }

    fn push_plain_ascii(&mut self, bytes: &[u8]) {
        // INVARIANT (from the trait): `bytes` is ASCII, so this never fails.
        if let Ok(text) = std::str::from_utf8(bytes) {
            self.building.push_str(text);
        }
    }

    fn end_string(&mut self) {
        let built = std::mem::take(&mut self.building);
        self.cells.push(Cell::Text(Cow::Owned(built)));
    }
}

/// Writes one value's text into a caller's buffer, for columnar writers:
/// every built-in transform but `Clear` gives a string or null.
pub(crate) struct TextSink<'o> {
    pub(crate) out: &'o mut String,
    pub(crate) null: bool,
}

impl<'a> Sink<'a> for TextSink<'_> {
    fn null(&mut self) {
        self.null = true;
    }

    fn raw(&mut self, value: &'a RawValue) {
        match classify(value) {
            RawKind::Null => self.null = true,
            RawKind::String(s) => match s.decode() {
                Some(text) => self.out.push_str(&text.text),
                None => self.null = true,
            },
            RawKind::Text(text) => self.out.push_str(text),
            RawKind::Bool(_) | RawKind::Number(_) | RawKind::Compound => {
                self.out.push_str(value.get());
            }
        }
    }

    fn borrowed_str(&mut self, text: &'a str, _json_safe: bool) {
        self.out.push_str(text);
    }

    fn begin_string(&mut self) {}

    fn push_str(&mut self, text: &str) {
        self.out.push_str(text);
    }

    fn push_repeated(&mut self, c: char, count: usize) {
        self.out.extend(std::iter::repeat_n(c, count));
    }

    fn push_plain_ascii(&mut self, bytes: &[u8]) {
        // INVARIANT (from the trait): `bytes` is ASCII, so this never fails.
        if let Ok(text) = std::str::from_utf8(bytes) {
            self.out.push_str(text);
        }
    }

    fn end_string(&mut self) {}
}
