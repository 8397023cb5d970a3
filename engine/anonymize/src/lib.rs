#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod error;
mod escape;
mod filter;
mod output;
mod plan;
mod plugin;
mod transform;
mod value;

pub use error::{KeyError, PlanError, RecordError};
pub use filter::{Clause, CompareOp, RowPredicate};
pub use output::Cell;
pub use plan::{FieldRule, Outcome, RecordPlan};
pub use plugin::{FailureKind, PluginFailure, PluginTransform, PluginValidator};
pub use transform::{DatePart, MIN_HMAC_KEY_LEN, PSEUDONYM_BYTES, Transform};
pub use value::{Unreadable, check_readable};

/// Re-exported so callers can name the borrowed values in [`Cell::Json`]
/// and pass values to [`Transform::write_json`].
pub use serde_json::value::RawValue;
