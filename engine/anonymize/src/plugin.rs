//! Plugin transforms and validators: code the core does not ship, run by a
//! host (meshgov's WebAssembly host) behind two small traits.
//!
//! Plugins are called per *batch* of values, not per value, so that the cost
//! of entering a sandbox is paid once per chunk of records. A plugin that
//! fails fails the whole batch: the caller must refuse the request, never
//! pass the values through.

use std::fmt;

use serde_json::value::RawValue;

/// A field transform implemented by a plugin.
pub trait PluginTransform: Send + Sync + fmt::Debug {
    /// The plugin's name, for errors and audit.
    fn name(&self) -> &str;

    /// Transforms every value of the batch. The answer holds exactly one
    /// JSON value per input value, in order.
    fn transform(&self, values: &[&RawValue]) -> Result<Vec<Box<RawValue>>, PluginFailure>;
}

/// A record validator implemented by a plugin.
pub trait PluginValidator: Send + Sync + fmt::Debug {
    /// The plugin's name, for errors and audit.
    fn name(&self) -> &str;

    /// Judges every record of the batch. Each record is given as the values
    /// of `fields` (in that order; `None` when the record lacks the field).
    /// The answer holds one verdict per record: `None` when it passes, else
    /// the plugin's reason.
    fn validate(
        &self,
        fields: &[&str],
        records: &[&[Option<&RawValue>]],
    ) -> Result<Vec<Option<String>>, PluginFailure>;
}

/// What went wrong inside a plugin call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The guest trapped (`unreachable`, out-of-bounds access, …).
    Trap,
    /// The guest ran out of its fuel (an endless or too-slow loop).
    OutOfFuel,
    /// The guest tried to grow its memory past its cap.
    OutOfMemory,
    /// The guest answered something that breaks the ABI.
    Malformed,
    /// The guest refused the batch with an error of its own.
    Refused,
    /// The host could not run the plugin at all (e.g. no free instance).
    Unavailable,
}

impl FailureKind {
    /// A short stable label, for metrics and audit.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::OutOfFuel => "out_of_fuel",
            FailureKind::OutOfMemory => "out_of_memory",
            FailureKind::Malformed => "malformed_output",
            FailureKind::Refused => "refused",
            FailureKind::Unavailable => "unavailable",
        }
    }
}

/// A failed plugin call. The message describes the failure, never the
/// values of the batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin `{plugin}` failed ({}): {detail}", kind.label())]
pub struct PluginFailure {
    /// The plugin's name.
    pub plugin: String,
    /// What kind of failure.
    pub kind: FailureKind,
    /// Details for operators.
    pub detail: String,
}

impl PluginFailure {
    /// Convenience constructor.
    pub fn new(plugin: impl Into<String>, kind: FailureKind, detail: impl Into<String>) -> Self {
        PluginFailure {
            plugin: plugin.into(),
            kind,
            detail: detail.into(),
        }
    }
}
