//! Records (JSON object lines, as a port kept as NDJSON, CSV or behind
//! HTTP yields them) as Arrow record batches of the port's schema, so that
//! such a port is planned and answered like one kept as Parquet.
//!
//! A record fits the schema when it is a JSON object and each declared
//! field it holds has its declared type (see [`crate::schema::arrow_type`]):
//!
//! | column | accepts |
//! | --- | --- |
//! | `Utf8` | a string |
//! | `Int64` | an integer, or a number with no fraction within `i64` |
//! | `Float64` | any number |
//! | `Boolean` | `true` or `false` |
//!
//! `null` and a missing field are null in every column; fields the port
//! does not declare are never read. A record that does not fit is not
//! added: the caller skips it and counts it as malformed.

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::error::ArrowError;
use serde_json::{Map, Value};
use std::sync::Arc;

/// A record that does not fit the port's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the record is not a JSON object whose fields have their declared types")]
pub struct Unfit;

/// Builds record batches of one schema, a record at a time.
pub struct RowBatcher {
    schema: SchemaRef,
    columns: Vec<Column>,
    /// One record's cells, checked before any is appended.
    cells: Vec<Cell>,
    rows: usize,
}

enum Column {
    Text(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
}

enum Cell {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Column {
    fn new(t: &DataType) -> Column {
        match t {
            DataType::Int64 => Column::Int(Int64Builder::new()),
            DataType::Float64 => Column::Float(Float64Builder::new()),
            DataType::Boolean => Column::Bool(BooleanBuilder::new()),
            _ => Column::Text(StringBuilder::new()),
        }
    }

    /// `v` as a cell of this column, if it has the column's type.
    fn cell(&self, v: Option<Value>) -> Result<Cell, Unfit> {
        let v = match v {
            None | Some(Value::Null) => return Ok(Cell::Null),
            Some(v) => v,
        };
        match (self, v) {
            (Column::Text(_), Value::String(s)) => Ok(Cell::Text(s)),
            (Column::Int(_), Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().and_then(whole))
                .map(Cell::Int)
                .ok_or(Unfit),
            (Column::Float(_), Value::Number(n)) => n.as_f64().map(Cell::Float).ok_or(Unfit),
            (Column::Bool(_), Value::Bool(b)) => Ok(Cell::Bool(b)),
            _ => Err(Unfit),
        }
    }

    fn append(&mut self, cell: Cell) {
        match (self, cell) {
            (Column::Text(b), Cell::Text(s)) => b.append_value(s),
            (Column::Int(b), Cell::Int(i)) => b.append_value(i),
            (Column::Float(b), Cell::Float(f)) => b.append_value(f),
            (Column::Bool(b), Cell::Bool(v)) => b.append_value(v),
            (Column::Text(b), _) => b.append_null(),
            (Column::Int(b), _) => b.append_null(),
            (Column::Float(b), _) => b.append_null(),
            (Column::Bool(b), _) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Text(b) => Arc::new(b.finish()),
            Column::Int(b) => Arc::new(b.finish()),
            Column::Float(b) => Arc::new(b.finish()),
            Column::Bool(b) => Arc::new(b.finish()),
        }
    }
}

/// `f` as an `i64` if it has no fraction and is in range.
fn whole(f: f64) -> Option<i64> {
    // `i64::MAX as f64` rounds up to 2^63, which is out of range.
    (f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64).then_some(f as i64)
}

impl RowBatcher {
    pub fn new(schema: SchemaRef) -> RowBatcher {
        let columns = schema
            .fields()
            .iter()
            .map(|f| Column::new(f.data_type()))
            .collect();
        RowBatcher {
            schema,
            columns,
            cells: Vec::new(),
            rows: 0,
        }
    }

    /// Adds one record; a record that does not fit adds nothing.
    pub fn push(&mut self, line: &[u8]) -> Result<(), Unfit> {
        let mut record: Map<String, Value> = serde_json::from_slice(line).map_err(|_| Unfit)?;
        self.cells.clear();
        for (field, column) in self.schema.fields().iter().zip(&self.columns) {
            self.cells.push(column.cell(record.remove(field.name()))?);
        }
        for (column, cell) in self.columns.iter_mut().zip(self.cells.drain(..)) {
            column.append(cell);
        }
        self.rows += 1;
        Ok(())
    }

    /// Records added since the last batch.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The records added since the last batch, as a batch.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.rows = 0;
        let columns = self.columns.iter_mut().map(Column::finish).collect();
        RecordBatch::try_new(Arc::clone(&self.schema), columns)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Field, Float64Type, Int64Type, Schema};

    fn batcher() -> RowBatcher {
        RowBatcher::new(Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("i", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
            Field::new("b", DataType::Boolean, true),
        ])))
    }

    #[test]
    fn records_become_typed_columns_and_missing_fields_nulls() {
        let mut b = batcher();
        b.push(br#"{"s":"029","i":3,"f":2,"b":true,"extra":[1]}"#)
            .unwrap();
        b.push(br#"{"i":4.0,"f":0.5,"s":null}"#).unwrap();
        assert_eq!(b.len(), 2);
        let batch = b.finish().unwrap();
        assert!(b.is_empty());
        assert_eq!(batch.num_columns(), 4);
        let s = batch.column(0).as_string::<i32>();
        assert_eq!(s.value(0), "029");
        assert!(s.is_null(1));
        let i = batch.column(1).as_primitive::<Int64Type>();
        assert_eq!((i.value(0), i.value(1)), (3, 4));
        let f = batch.column(2).as_primitive::<Float64Type>();
        assert_eq!((f.value(0), f.value(1)), (2.0, 0.5));
        let bools = batch.column(3).as_boolean();
        assert!(bools.value(0));
        assert!(bools.is_null(1));
    }

    #[test]
    fn a_record_that_does_not_fit_adds_nothing() {
        let mut b = batcher();
        for line in [
            &br#"{"s":1}"#[..],
            br#"{"i":"3"}"#,
            br#"{"i":3.5}"#,
            br#"{"i":1e300}"#,
            br#"{"f":"x"}"#,
            br#"{"b":1}"#,
            br#"{"s":{"a":1}}"#,
            br#"[1,2]"#,
            br#"{"s":"a""#,
            b"",
        ] {
            assert_eq!(
                b.push(line),
                Err(Unfit),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        b.push(br#"{"s":"kept","i":-9223372036854775808}"#).unwrap();
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.column(0).as_string::<i32>().value(0), "kept");
        assert_eq!(
            batch.column(1).as_primitive::<Int64Type>().value(0),
            i64::MIN
        );
    }
}
