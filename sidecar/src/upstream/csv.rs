//! CSV files as JSON record lines.
//!
//! The reader is `csv-core`'s incremental RFC 4180 reader: a quoted cell may
//! hold commas, doubled quotes and line breaks, a row may end in LF, CR or
//! CRLF, and blank lines are skipped. It is fed the file's chunks as they
//! arrive, so memory holds one chunk and one row, never the file.
//!
//! The first row of a file is its header. Each later row becomes one JSON
//! object line holding the port's declared fields only, each cell typed by
//! the field's `logicalType` (see [`CsvSchema`]).

use csv_core::{ReadRecordResult, Reader};
use meshgov_core::descriptor::FieldInfo;

/// How a CSV cell is written as JSON, from the declared field's
/// `logicalType`. A cell that does not fit its type stays a string, so a
/// row filter comparing it with a number fails closed; a `string` field
/// stays a string whatever it looks like (a postcode `029` stays `"029"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CellType {
    Text,
    Number,
    Boolean,
}

/// A CSV column: its pre-rendered `"name":` key and type, or `None` when
/// the descriptor does not declare it.
type Column = Option<(Box<[u8]>, CellType)>;

/// A port's declared fields, for turning CSV rows into JSON records.
/// Columns the descriptor does not declare are dropped at this step.
#[derive(Debug, Clone, Default)]
pub struct CsvSchema {
    fields: Vec<(String, CellType)>,
}

impl CsvSchema {
    pub fn new(fields: &[FieldInfo]) -> CsvSchema {
        let fields = fields
            .iter()
            .map(|f| {
                let t = match f.logical_type.as_deref() {
                    Some("integer" | "number" | "long" | "double" | "decimal") => CellType::Number,
                    Some("boolean") => CellType::Boolean,
                    _ => CellType::Text,
                };
                (f.name.clone(), t)
            })
            .collect();
        CsvSchema { fields }
    }

    /// For each header cell: the pre-rendered `"name":` key and cell type,
    /// or `None` for an undeclared column.
    fn columns<'a>(&self, header: impl Iterator<Item = &'a str>) -> Vec<Column> {
        header
            .map(|h| {
                let (name, t) = self.fields.iter().find(|(n, _)| n == h)?;
                let mut key = serde_json::to_vec(name).ok()?;
                key.push(b':');
                Some((key.into_boxed_slice(), *t))
            })
            .collect()
    }
}

/// What [`CsvRows::step`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsvStep {
    /// A data row, now in [`CsvRows::record`] as a JSON object line.
    Record,
    /// A row that is not a record: over the size limit, not UTF-8, or with
    /// another number of cells than the header. Every row after a header
    /// that is malformed is malformed too.
    Malformed,
    /// The input is used up: call again with more.
    NeedInput,
    /// The file is over (after a call with empty input); the next bytes
    /// start a new file, with its own header.
    FileEnd,
}

/// Turns one CSV file after another into JSON record lines, incrementally.
pub struct CsvRows {
    reader: Reader,
    schema: CsvSchema,
    /// The current file's columns, once its header is read.
    columns: Option<Vec<Column>>,
    /// The current row's cells, back to back, and where each ends.
    cells: Vec<u8>,
    cells_len: usize,
    ends: Vec<usize>,
    ends_len: usize,
    /// The most bytes a row's cells and the commas between them may take.
    max: usize,
    /// The current row went over `max`: its cells are being dropped.
    over: bool,
    json: Vec<u8>,
}

impl CsvRows {
    /// `max`: the most bytes one row may take (`limits.max_line_bytes`),
    /// counting its cells and the commas between them, not quotes or the
    /// line break; a longer row is malformed.
    pub fn new(schema: CsvSchema, max: usize) -> CsvRows {
        CsvRows {
            reader: Reader::new(),
            schema,
            columns: None,
            cells: vec![0; 1024],
            cells_len: 0,
            ends: vec![0; 64],
            ends_len: 0,
            max,
            over: false,
            json: Vec::new(),
        }
    }

    /// Reads from `input`, which is empty exactly when the file has ended.
    /// Returns what was found and how many bytes of `input` were used; the
    /// caller passes the rest again.
    pub fn step(&mut self, input: &[u8]) -> (CsvStep, usize) {
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            // Empty input would tell the reader that the file has ended.
            if rest.is_empty() && !input.is_empty() {
                return (CsvStep::NeedInput, used);
            }
            let cells = self.cells.get_mut(self.cells_len..).unwrap_or_default();
            let ends = self.ends.get_mut(self.ends_len..).unwrap_or_default();
            let (result, nin, nout, nend) = self.reader.read_record(rest, cells, ends);
            used += nin;
            self.cells_len += nout;
            self.ends_len += nend;
            let too_wide = self
                .columns
                .as_ref()
                .is_some_and(|c| self.ends_len > c.len());
            if too_wide || self.cells_len + self.ends_len.saturating_sub(1) > self.max {
                // Keep reading to the row's end, keeping none of it.
                self.over = true;
                self.cells_len = 0;
                self.ends_len = 0;
            }
            match result {
                ReadRecordResult::InputEmpty if input.is_empty() => {
                    // Not expected of csv-core; ends the file rather than loop.
                    self.end_file();
                    return (CsvStep::FileEnd, used);
                }
                ReadRecordResult::InputEmpty => return (CsvStep::NeedInput, used),
                // A row being dropped reuses the buffers from the start.
                ReadRecordResult::OutputFull if !self.over => grow(&mut self.cells, self.max),
                ReadRecordResult::OutputEndsFull if !self.over => grow(&mut self.ends, self.max),
                ReadRecordResult::OutputFull | ReadRecordResult::OutputEndsFull => {}
                ReadRecordResult::Record => {
                    if let Some(step) = self.finish_row() {
                        return (step, used);
                    }
                }
                ReadRecordResult::End => {
                    self.end_file();
                    return (CsvStep::FileEnd, used);
                }
            }
        }
    }

    /// The last [`CsvStep::Record`] as a JSON object line.
    pub fn record(&self) -> &[u8] {
        &self.json
    }

    /// Forgets the current file: the next input starts a new one.
    pub fn end_file(&mut self) {
        self.reader.reset();
        self.columns = None;
        self.clear_row();
    }

    fn clear_row(&mut self) {
        self.cells_len = 0;
        self.ends_len = 0;
        self.over = false;
    }

    /// The row just read; `None` for a header row, which is kept.
    fn finish_row(&mut self) -> Option<CsvStep> {
        let over = self.over;
        let cells = self.cells.get(..self.cells_len).unwrap_or_default();
        let ends = self.ends.get(..self.ends_len).unwrap_or_default();
        // Each cell must be UTF-8 on its own, not only all of them joined.
        let text = std::str::from_utf8(cells)
            .ok()
            .filter(|t| !over && ends.iter().all(|&e| t.is_char_boundary(e)));
        let step = match (text, &self.columns) {
            (None, None) => {
                // No header: no row of this file can be read.
                self.columns = Some(Vec::new());
                Some(CsvStep::Malformed)
            }
            (None, Some(_)) => Some(CsvStep::Malformed),
            (Some(text), None) => {
                let mut header = split(text, ends);
                let first = header.next().map(|h| h.trim_start_matches('\u{feff}'));
                self.columns = Some(self.schema.columns(first.into_iter().chain(header)));
                None
            }
            (Some(text), Some(columns)) if columns.len() == ends.len() => {
                row_to_json(columns, split(text, ends), &mut self.json);
                Some(CsvStep::Record)
            }
            (Some(_), Some(_)) => Some(CsvStep::Malformed),
        };
        self.clear_row();
        step
    }
}

/// Doubles a buffer, but not past what one row of `max` bytes can need.
fn grow<T: Default + Clone>(buf: &mut Vec<T>, max: usize) {
    let len = buf
        .len()
        .saturating_mul(2)
        .clamp(64, max.saturating_add(1).max(64));
    buf.resize(len.max(buf.len() + 1), T::default());
}

/// The cells of a row, given the end of each in `text`.
fn split<'a>(text: &'a str, ends: &'a [usize]) -> impl Iterator<Item = &'a str> + 'a {
    let starts = std::iter::once(0).chain(ends.iter().copied());
    starts
        .zip(ends.iter().copied())
        .map(|(s, e)| text.get(s..e).unwrap_or_default())
}

/// Writes one CSV row as a JSON object line (declared columns only). An
/// empty cell is `null`.
fn row_to_json<'a>(columns: &[Column], cells: impl Iterator<Item = &'a str>, out: &mut Vec<u8>) {
    out.clear();
    out.push(b'{');
    for (col, cell) in columns.iter().zip(cells) {
        let Some((key, t)) = col else {
            continue;
        };
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(key);
        let trimmed = cell.trim();
        match t {
            _ if cell.is_empty() => out.extend_from_slice(b"null"),
            CellType::Number if serde_json::from_str::<serde_json::Number>(trimmed).is_ok() => {
                out.extend_from_slice(trimmed.as_bytes());
            }
            CellType::Boolean if trimmed == "true" || trimmed == "false" => {
                out.extend_from_slice(trimmed.as_bytes());
            }
            // INVARIANT: serializing a `str` into a Vec cannot fail.
            _ => {
                let _ = serde_json::to_writer(&mut *out, cell);
            }
        }
    }
    out.push(b'}');
}

/// A schema of `(name, logicalType)` fields, for tests.
#[cfg(test)]
pub(super) fn schema(fields: &[(&str, &str)]) -> CsvSchema {
    let fields: Vec<FieldInfo> = fields
        .iter()
        .map(|(n, t)| FieldInfo {
            name: n.to_string(),
            logical_type: Some(t.to_string()),
            classification: None,
            level: meshgov_core::mesh::Level::Restricted,
            direct_identifier: false,
        })
        .collect();
    CsvSchema::new(&fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of `files`, each fed in pieces of `piece` bytes.
    fn rows(s: &CsvSchema, max: usize, files: &[&str], piece: usize) -> Vec<Option<String>> {
        let mut r = CsvRows::new(s.clone(), max);
        let mut out = Vec::new();
        for file in files {
            let mut pieces: Vec<&[u8]> = file.as_bytes().chunks(piece).collect();
            pieces.push(b"");
            for p in pieces {
                let mut at = 0;
                loop {
                    let (step, used) = r.step(&p[at..]);
                    at += used;
                    match step {
                        CsvStep::Record => {
                            out.push(Some(String::from_utf8(r.record().to_vec()).unwrap()));
                        }
                        CsvStep::Malformed => out.push(None),
                        CsvStep::NeedInput | CsvStep::FileEnd => break,
                    }
                    // Empty input ends the file: only the last, empty piece may.
                    if at == p.len() && !p.is_empty() {
                        break;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn cells_are_typed_by_the_declared_logical_type() {
        let s = schema(&[("n", "integer"), ("ok", "boolean"), ("t", "string")]);
        let file =
            "t,secret,n,ok\n=1+1,pw,-42,true\n\"a\"\"b\",pw,1e400,yes\n,,,\n029,x,029,false\n";
        let want = [
            r#"{"t":"=1+1","n":-42,"ok":true}"#,
            r#"{"t":"a\"b","n":"1e400","ok":"yes"}"#,
            r#"{"t":null,"n":null,"ok":null}"#,
            r#"{"t":"029","n":"029","ok":false}"#,
        ];
        let got = rows(&s, 1024, &[file], 4096);
        assert_eq!(got, want.map(|w| Some(w.to_string())));
    }

    #[test]
    fn quoted_cells_span_lines_and_chunk_edges_fall_anywhere() {
        let s = schema(&[("id", "string"), ("note", "string"), ("n", "number")]);
        let file = "id,note,n\r\n\"1\",\"line one\nline two, with a comma\",2.5\r\n\n2,\"say \"\"hi\"\"\r\nbye\",3\r";
        let want = vec![
            Some(r#"{"id":"1","note":"line one\nline two, with a comma","n":2.5}"#.to_string()),
            Some(r#"{"id":"2","note":"say \"hi\"\r\nbye","n":3}"#.to_string()),
        ];
        for piece in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(rows(&s, 1024, &[file], piece), want, "pieces of {piece}");
        }
    }

    #[test]
    fn each_file_has_its_own_header_and_a_last_row_needs_no_newline() {
        let s = schema(&[("x", "integer"), ("y", "integer")]);
        let got = rows(&s, 1024, &["x,y\n1,2\n3,4", "y,x\n5,6"], 3);
        let want = [r#"{"x":1,"y":2}"#, r#"{"x":3,"y":4}"#, r#"{"y":5,"x":6}"#];
        assert_eq!(got, want.map(|w| Some(w.to_string())));
    }

    #[test]
    fn bad_rows_are_malformed_and_reading_goes_on() {
        let s = schema(&[("a", "string"), ("b", "string")]);
        let long = "z".repeat(300);
        let file = format!("a,b\n1,2,3\n{long},x\n\"{long}\nstill\",y\n5,6\n");
        let got = rows(&s, 200, &[&file], 17);
        assert_eq!(
            got,
            vec![None, None, None, Some(r#"{"a":"5","b":"6"}"#.to_string())]
        );
        // A cell that is not UTF-8.
        let bytes = b"a,b\n\xff,1\n7,8\n";
        let mut r = CsvRows::new(s, 200);
        let (step, used) = r.step(bytes);
        assert_eq!(step, CsvStep::Malformed);
        let (step, _) = r.step(&bytes[used..]);
        assert_eq!(step, CsvStep::Record);
        assert_eq!(r.record(), br#"{"a":"7","b":"8"}"#);
    }

    #[test]
    fn an_unreadable_header_makes_the_whole_file_malformed() {
        let s = schema(&[("a", "string"), ("b", "string")]);
        let mut r = CsvRows::new(s, 200);
        let file = b"Stra\xdfe,b\nDE,1\nSE,2\n";
        let mut at = 0;
        let mut got = Vec::new();
        for _ in 0..3 {
            let (step, used) = r.step(&file[at..]);
            at += used;
            got.push(step);
        }
        assert_eq!(got, [CsvStep::Malformed; 3]);
    }

    #[test]
    fn each_cell_is_utf8_on_its_own() {
        let s = schema(&[("a", "string"), ("b", "string")]);
        let mut r = CsvRows::new(s, 200);
        let file = b"a,b\n\xc3,\xa9\n";
        assert_eq!(r.step(file).0, CsvStep::Malformed);
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_name() {
        let s = schema(&[("id", "integer")]);
        let got = rows(&s, 1024, &["\u{feff}id\n7\n"], 4096);
        assert_eq!(got, [Some(r#"{"id":7}"#.to_string())]);
    }

    #[test]
    fn the_size_limit_counts_cells_and_commas_only() {
        let s = schema(&[("a", "string"), ("b", "string")]);
        // 8 bytes of cells and comma: at the limit. Quotes, line breaks
        // and blank lines before a row do not count.
        let file = format!("a,b\r\n{}\"abc\",defg\r\n\"abc\",defgh\n", "\n".repeat(50));
        let got = rows(&s, 8, &[&file], 5);
        assert_eq!(got, [Some(r#"{"a":"abc","b":"defg"}"#.to_string()), None]);
    }

    #[test]
    fn a_row_wider_than_its_header_is_cut_short() {
        let s = schema(&[("a", "string"), ("b", "string")]);
        let mut r = CsvRows::new(s, 1 << 20);
        let mut file = b"a,b\n".to_vec();
        file.extend(std::iter::repeat_n(b',', 500_000));
        file.extend_from_slice(b"\n1,2\n");
        let mut at = 0;
        let mut got = Vec::new();
        while at < file.len() {
            let (step, used) = r.step(&file[at..]);
            at += used;
            got.push(step);
        }
        assert_eq!(got, [CsvStep::Malformed, CsvStep::Record]);
        // The cell ends kept never grew with the commas.
        assert!(r.ends.len() < 1024, "{} ends kept", r.ends.len());
    }

    #[test]
    fn an_unterminated_quote_runs_to_the_size_limit() {
        let s = schema(&[("a", "string")]);
        let file = format!("a\n\"open{}\n", "\nmore".repeat(100));
        assert_eq!(rows(&s, 200, &[&file], 64), vec![None]);
    }
}
