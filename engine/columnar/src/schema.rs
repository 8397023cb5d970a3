//! The Arrow schema of a port: its declared fields, typed by their ODCS
//! `logicalType`.

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use meshgov_core::descriptor::{FieldInfo, PortInfo};
use std::sync::Arc;

/// The Arrow type a declared field is read as.
///
/// | `logicalType` | Arrow |
/// | --- | --- |
/// | `integer` | `Int64` |
/// | `number` | `Float64` |
/// | `boolean` | `Boolean` |
/// | `string`, `date`, anything else or none | `Utf8` |
///
/// Dates and times stay text (`2026-03-01`, `2026-03-01T12:00:00Z`), as
/// the record path sees them; a Parquet file that stores them as dates or
/// timestamps is cast to that text when scanned.
pub fn arrow_type(logical_type: Option<&str>) -> DataType {
    match logical_type {
        Some("integer") => DataType::Int64,
        Some("number") => DataType::Float64,
        Some("boolean") => DataType::Boolean,
        _ => DataType::Utf8,
    }
}

/// The schema a port's table has: its declared fields in order, all
/// nullable. Columns a file holds beyond these are never read.
pub fn port_schema(port: &PortInfo) -> SchemaRef {
    fields_schema(&port.fields)
}

/// The schema of these declared fields, as [`port_schema`].
pub fn fields_schema(fields: &[FieldInfo]) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|f| Field::new(&f.name, arrow_type(f.logical_type.as_deref()), true))
            .collect::<Vec<_>>(),
    ))
}
