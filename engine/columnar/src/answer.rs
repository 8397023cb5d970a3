//! Answers: record batches encoded as NDJSON, CSV, an Arrow IPC stream or
//! Parquet, a chunk at a time, so that an answer streams with bounded
//! memory.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::json::writer::{LineDelimited, Writer as JsonWriter, WriterBuilder};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use meshgov_anonymize::{Cell, Input, RawValue, csv};
use std::borrow::Cow;

/// An answer's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnswerFormat {
    /// One JSON object per line; nulls are written, not left out.
    Ndjson,
    /// A header line, then one row per record.
    Csv,
    /// The Arrow IPC streaming format.
    ArrowStream,
    /// A Parquet file.
    Parquet,
}

impl AnswerFormat {
    pub const ALL: [AnswerFormat; 4] = [
        AnswerFormat::Ndjson,
        AnswerFormat::Csv,
        AnswerFormat::ArrowStream,
        AnswerFormat::Parquet,
    ];

    /// The media type the answer is served as.
    pub fn media_type(self) -> &'static str {
        match self {
            AnswerFormat::Ndjson => "application/x-ndjson",
            AnswerFormat::Csv => "text/csv",
            AnswerFormat::ArrowStream => "application/vnd.apache.arrow.stream",
            AnswerFormat::Parquet => "application/vnd.apache.parquet",
        }
    }

    /// A short name, for audit events and metrics.
    pub fn name(self) -> &'static str {
        match self {
            AnswerFormat::Ndjson => "ndjson",
            AnswerFormat::Csv => "csv",
            AnswerFormat::ArrowStream => "arrow",
            AnswerFormat::Parquet => "parquet",
        }
    }
}

/// Rows per Parquet row group in an answer.
const PARQUET_ROW_GROUP: usize = 64 * 1024;

/// Encodes one answer: [`write`](Self::write) each batch, then
/// [`finish`](Self::finish); each returns the bytes ready to send.
pub struct Encoder {
    inner: Inner,
}

enum Inner {
    Ndjson(JsonWriter<Vec<u8>, LineDelimited>),
    /// The header row, until it is sent.
    Csv {
        header: Option<Vec<u8>>,
    },
    Arrow(StreamWriter<Vec<u8>>),
    Parquet(ArrowWriter<Vec<u8>>),
}

impl Encoder {
    /// An encoder for answers of `schema` in `format`.
    pub fn new(format: AnswerFormat, schema: &SchemaRef) -> Result<Encoder, ArrowError> {
        let inner = match format {
            AnswerFormat::Ndjson => Inner::Ndjson(
                WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build(Vec::new()),
            ),
            AnswerFormat::Csv => {
                let mut header = Vec::new();
                csv::write_header(
                    schema.fields().iter().map(|f| f.name().as_str()),
                    &mut header,
                );
                Inner::Csv {
                    header: Some(header),
                }
            }
            AnswerFormat::ArrowStream => Inner::Arrow(StreamWriter::try_new(Vec::new(), schema)?),
            AnswerFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .set_max_row_group_row_count(Some(PARQUET_ROW_GROUP))
                    .build();
                Inner::Parquet(
                    ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))
                        .map_err(|e| ArrowError::ExternalError(Box::new(e)))?,
                )
            }
        };
        Ok(Encoder { inner })
    }

    /// Encodes `batch`; returns what can be sent now (maybe nothing: Parquet
    /// sends a row group at a time).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
        match &mut self.inner {
            Inner::Ndjson(w) => {
                w.write(batch)?;
                Ok(std::mem::take(w.get_mut()))
            }
            Inner::Csv { header } => {
                let mut out = header.take().unwrap_or_default();
                write_csv_rows(batch, &mut out)?;
                Ok(out)
            }
            Inner::Arrow(w) => {
                w.write(batch)?;
                Ok(std::mem::take(w.get_mut()))
            }
            Inner::Parquet(w) => {
                w.write(batch)
                    .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
                Ok(std::mem::take(w.inner_mut()))
            }
        }
    }

    /// Ends the answer; returns its last bytes (an Arrow stream's end
    /// marker, a Parquet file's last row group and footer).
    pub fn finish(self) -> Result<Vec<u8>, ArrowError> {
        match self.inner {
            Inner::Ndjson(mut w) => {
                w.finish()?;
                Ok(w.into_inner())
            }
            Inner::Csv { header } => Ok(header.unwrap_or_default()),
            Inner::Arrow(mut w) => {
                w.finish()?;
                w.into_inner()
            }
            Inner::Parquet(w) => w
                .into_inner()
                .map_err(|e| ArrowError::ExternalError(Box::new(e))),
        }
    }
}

/// A batch as CSV rows, written by the same writer as the record path's
/// (formulas neutralised): strings as text, numbers and booleans as their
/// JSON text, nulls empty.
fn write_csv_rows(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), ArrowError> {
    let mut columns: Vec<Vec<Cell<'static>>> = Vec::with_capacity(batch.num_columns());
    for array in batch.columns() {
        let mut cells = Vec::with_capacity(array.len());
        crate::udf::for_each_input(array, |value| {
            cells.push(match value {
                Input::Null => Cell::Null,
                Input::Text(t) => Cell::Text(Cow::Owned(t.to_string())),
                Input::Bool(b) => json_cell(if b { "true" } else { "false" }),
                Input::Number(n) => json_cell(n),
            });
        })
        .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
        columns.push(cells);
    }
    let mut row = Vec::with_capacity(columns.len());
    for r in 0..batch.num_rows() {
        row.clear();
        row.extend(
            columns
                .iter()
                .map(|c| c.get(r).cloned().unwrap_or(Cell::Null)),
        );
        csv::write_row(&row, out);
    }
    Ok(())
}

fn json_cell(text: &str) -> Cell<'static> {
    RawValue::from_string(text.to_string()).map_or(Cell::Null, |raw| Cell::Json(Cow::Owned(raw)))
}
