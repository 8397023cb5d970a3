//! The columnar data plane: a port's data as Arrow record batches, and a
//! consumer's view of it as a DataFusion plan.
//!
//! The enforcement core decides a read and binds its keys and plugins into
//! [`Rules`](meshgov_core::records::Rules). [`view::consumer_view`] turns
//! those rules into a logical plan over the port's table:
//!
//! 1. the scan, of the port's declared fields only ([`schema::port_schema`]):
//!    an undeclared column cannot even be named;
//! 2. the read's time window and the policy's row predicate, on raw values
//!    inside the product (these may reach the scan as pushed-down
//!    predicates);
//! 3. validator plugins, which withhold records that do not conform;
//! 4. a projection in which every field has its treatment, each a scalar
//!    function over Arrow arrays that calls the transform of
//!    `meshgov-anonymize` (the same code the record path runs) or, for a
//!    plugin, one sandboxed call per batch.
//!
//! What a consumer adds (projection, filters, order, paging) goes on top
//! of that plan, so it only ever sees treated values. [`answer`] encodes
//! the result as NDJSON, CSV, an Arrow IPC stream or Parquet.
//!
//! A differentially private aggregate is planned over the same table
//! ([`aggregate`]): contribution bounding, clamping and the per-group
//! totals are steps of its plan.
//!
//! A port kept as Parquet is scanned as it is ([`source`]); a port whose
//! upstream yields records (NDJSON, CSV, HTTP) is turned into batches of
//! the same schema by [`rows`], and planned the same way.

pub mod aggregate;
pub mod answer;
pub mod query;
pub mod rows;
pub mod schema;
pub mod source;
mod udf;
pub mod view;

pub use datafusion;
