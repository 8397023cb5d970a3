#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod csv;
mod error;
mod escape;
mod filter;
mod output;
mod plugin;
mod program;
mod transform;
mod value;

pub use error::{KeyError, ProgramError, RecordError};
pub use filter::{Clause, CompareOp, RowPredicate};
pub use output::Cell;
pub use plugin::{FailureKind, PluginFailure, PluginTransform, PluginValidator};
pub use program::{FieldRule, Outcome, RecordProgram};
pub use transform::{DatePart, MIN_HMAC_KEY_LEN, PSEUDONYM_BYTES, Transform};
pub use value::{Input, Unreadable, check_readable};

/// Re-exported so callers can name the borrowed values in [`Cell::Json`]
/// and pass values to [`Transform::write_json`].
pub use serde_json::value::RawValue;
