//! Shaping records for one consumer: the read's record program, compiled once
//! into a [`RecordProgram`] (`meshgov-anonymize`), applied to every record.
//!
//! - NDJSON out: [`RecordProgram::apply_json`] reads the upstream line and
//!   writes the shaped object straight into the response buffer.
//! - CSV out: [`RecordProgram::project`] makes the same decisions and hands back
//!   cells, which are written as RFC 4180 rows under a header of
//!   [`RecordProgram::columns`].
//!
//! Either way only the plan's fields leave, in the plan's order: a field the
//! descriptor does not declare is never written, and a record the row filter
//! excludes is never written.
//!
//! CSV cells are written by [`meshgov_anonymize::csv`], which neutralises
//! spreadsheet formulas.

use meshgov_anonymize::{Cell, Outcome, PluginFailure, RecordError, RecordProgram, csv};

use std::sync::Arc;

/// A read's record program and output format.
pub struct Shaper {
    plan: Arc<RecordProgram>,
    /// CSV out (else NDJSON).
    csv: bool,
    /// The CSV path's cell buffer, reused across records (see [`recycle`]).
    cells: Vec<Cell<'static>>,
}

impl Shaper {
    /// A shaper writing CSV when `csv`, else NDJSON.
    pub fn new(plan: Arc<RecordProgram>, csv: bool) -> Shaper {
        Shaper {
            plan,
            csv,
            cells: Vec::new(),
        }
    }

    /// What goes before the first record: the CSV header row.
    pub fn write_preamble(&self, out: &mut Vec<u8>) {
        if !self.csv {
            return;
        }
        csv::write_header(self.plan.columns(), out);
    }

    /// Whether records must go through [`write_batch`](Self::write_batch):
    /// the plan calls plugins, once per batch.
    pub fn uses_plugins(&self) -> bool {
        self.plan.uses_plugins()
    }

    /// Shapes a batch of upstream records into `out`, calling each plugin
    /// once for the batch; `outcomes` gets one entry per line. A plugin
    /// failure writes nothing and fails the request.
    pub fn write_batch(
        &mut self,
        lines: &[&[u8]],
        out: &mut Vec<u8>,
        outcomes: &mut Vec<Result<Outcome, RecordError>>,
    ) -> Result<(), PluginFailure> {
        match self.csv {
            false => self.plan.apply_json_batch(lines, out, outcomes),
            true => {
                outcomes.clear();
                let mut rows = Vec::new();
                self.plan.project_batch(lines, |outcome, cells| {
                    if outcome == Ok(Outcome::Emitted) {
                        csv::write_row(cells, &mut rows);
                    }
                    outcomes.push(outcome);
                })?;
                out.extend_from_slice(&rows);
                Ok(())
            }
        }
    }

    /// Shapes one upstream record (a JSON object line) into `out`.
    ///
    /// On [`Outcome::Filtered`] or an error nothing is written; an error
    /// means the line is malformed, to be skipped and counted.
    pub fn write(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<Outcome, RecordError> {
        match self.csv {
            false => self.plan.apply_json(line, out),
            true => {
                let mut cells = recycle(std::mem::take(&mut self.cells));
                let outcome = self.plan.project(line, &mut cells);
                if outcome == Ok(Outcome::Emitted) {
                    csv::write_row(&cells, out);
                }
                self.cells = recycle(cells);
                outcome
            }
        }
    }
}

/// Empties a cell buffer and gives it back with another lifetime, keeping
/// its allocation: `Cell<'a>` and `Cell<'b>` have one layout, so the
/// standard library collects an empty `into_iter` in place. This lets one
/// buffer serve every record although each record's cells borrow its line.
// `filter_map` (not `filter`) because the item type changes lifetime.
#[allow(clippy::unnecessary_filter_map)]
fn recycle<'b>(mut cells: Vec<Cell<'_>>) -> Vec<Cell<'b>> {
    cells.clear();
    cells.into_iter().filter_map(|_| None).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use meshgov_anonymize::{FieldRule, RowPredicate, Transform};
    use proptest::prelude::*;

    fn text(s: &str) -> String {
        let mut out = Vec::new();
        csv::write_text(s, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn formulas_are_neutralised_and_separators_quoted() {
        assert_eq!(text("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(text("+1"), "'+1");
        assert_eq!(text("-2"), "'-2");
        assert_eq!(text("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(text("\tx"), "'\tx");
        assert_eq!(text("a,b"), "\"a,b\"");
        assert_eq!(text("plain"), "plain");
        assert_eq!(text("a-b=c"), "a-b=c");
        assert_eq!(text(""), "");
    }

    #[test]
    fn csv_rows_write_numbers_as_numbers_and_formulas_as_text() {
        let plan = RecordProgram::new(
            vec![
                FieldRule::new("a", Transform::Clear),
                FieldRule::new("n", Transform::Clear),
                FieldRule::new("gone", Transform::Redact { drop: true }),
                FieldRule::new("r", Transform::Redact { drop: false }),
                FieldRule::new("o", Transform::Clear),
            ],
            RowPredicate::keep_all(),
        )
        .unwrap();
        let mut s = Shaper::new(Arc::new(plan), true);
        let mut out = Vec::new();
        s.write_preamble(&mut out);
        for line in [
            r#"{"a":"=cmd|' /C calc'!A0","n":-5,"gone":"x","r":"y","o":{"k":[1,2]}}"#,
            r#"{"a":"ok","n":1.5,"extra":"=1"}"#,
        ] {
            assert_eq!(
                s.write(line.as_bytes(), &mut out).unwrap(),
                Outcome::Emitted
            );
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a,n,r,o\r\n'=cmd|' /C calc'!A0,-5,,\"{\"\"k\"\":[1,2]}\"\r\nok,1.5,,\r\n"
        );
    }

    #[test]
    fn recycling_keeps_the_allocation() {
        let line = String::from("x");
        let mut cells: Vec<Cell<'_>> = Vec::with_capacity(16);
        cells.push(Cell::Text(line.as_str().into()));
        let before = cells.as_ptr() as usize;
        let again: Vec<Cell<'static>> = recycle(cells);
        assert!(again.is_empty() && again.capacity() >= 16);
        assert_eq!(again.as_ptr() as usize, before);
    }

    proptest! {
        /// Whatever the text, a cell parses back (RFC 4180) to the text,
        /// with one leading `'` exactly when it would start a formula.
        #[test]
        fn csv_text_cells_round_trip(s in "\\PC{0,30}|[=+@,\"-][\\PC,\"]{0,10}") {
            let written = text(&s);
            let mut cell = vec![0; 4 * written.len() + 8];
            let mut ends = [0; 3];
            let (_, _, _, cells) = csv_core::Reader::new()
                .read_record(format!("{written},x\n").as_bytes(), &mut cell, &mut ends);
            prop_assert_eq!(cells, 2);
            let n = ends[0];
            let formula = s.starts_with(['=', '+', '-', '@', '\t', '\r']);
            let expected = if formula { format!("'{s}") } else { s.clone() };
            prop_assert_eq!(std::str::from_utf8(&cell[..n]).unwrap(), expected);
        }
    }
}
