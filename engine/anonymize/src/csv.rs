//! CSV answers (RFC 4180): one writer for every read path, so that a CSV
//! answer is the same whichever path made it.
//!
//! # Formula injection
//!
//! A spreadsheet opening the CSV would run a cell that starts with `=`, `+`,
//! `-` or `@` (and, in some, a tab or carriage return) as a formula. Such text
//! cells are written with a leading `'`, which spreadsheets show as text.
//! Numbers, booleans and other JSON values are written as their JSON text,
//! which is never a formula (`-5` stays `-5`).

use crate::output::Cell;

/// The header row: the column names, then `\r\n`.
pub fn write_header<'a>(columns: impl Iterator<Item = &'a str>, out: &mut Vec<u8>) {
    for (i, column) in columns.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_text(column, out);
    }
    out.extend_from_slice(b"\r\n");
}

/// One row: each cell, then `\r\n`. Null cells are empty.
pub fn write_row(cells: &[Cell<'_>], out: &mut Vec<u8>) {
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match cell {
            Cell::Null => {}
            Cell::Text(text) => write_text(text, out),
            // A number, boolean, array or object as its JSON text: never a
            // formula, but arrays and objects may hold commas and quotes.
            Cell::Json(raw) => write_quoted_if_needed(raw.get(), out),
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A text cell: neutralised if a spreadsheet would read it as a formula,
/// then quoted if it holds a separator, quote or line break.
pub fn write_text(text: &str, out: &mut Vec<u8>) {
    let formula = text
        .as_bytes()
        .first()
        .is_some_and(|b| matches!(b, b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r'));
    let quote = text.contains([',', '"', '\n', '\r']);
    if quote {
        out.push(b'"');
    }
    if formula {
        out.push(b'\'');
    }
    if quote {
        for part in text.split_inclusive('"') {
            out.extend_from_slice(part.as_bytes());
            if part.ends_with('"') {
                out.push(b'"');
            }
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}

fn write_quoted_if_needed(text: &str, out: &mut Vec<u8>) {
    if text.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        for part in text.split_inclusive('"') {
            out.extend_from_slice(part.as_bytes());
            if part.ends_with('"') {
                out.push(b'"');
            }
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}
