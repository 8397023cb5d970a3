//! Errors: a plan that cannot be built (a policy or compiler bug, caught
//! once per request) and a record that cannot be read (bad upstream data,
//! skipped and counted per record).

/// Why a [`RecordProgram`](crate::RecordProgram) could not be built.
///
/// These name fields and operators from the policy, never data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProgramError {
    /// Two output fields with one name would write the key twice.
    #[error("field `{field}` appears twice in the plan; keep one rule per field")]
    DuplicateField {
        /// The repeated field name.
        field: String,
    },
    /// A bucket of width 0 holds no number.
    #[error("field `{field}` buckets numbers with width 0; use a width of 1 or more")]
    ZeroBucketWidth {
        /// The field with the bad transform.
        field: String,
    },
    /// A prefix of 0 characters is a redaction in disguise.
    #[error("field `{field}` keeps a prefix of 0 characters; use a prefix of 1 or more, or redact")]
    ZeroPrefix {
        /// The field with the bad transform.
        field: String,
    },
    /// The pseudonym contract is HMAC-SHA256.
    #[error("field `{field}` has an hmac key for another algorithm; use an HMAC-SHA256 key")]
    HmacAlgorithm {
        /// The field with the bad transform.
        field: String,
    },
    /// A filter clause's value does not suit its operator.
    #[error("filter on field `{field}`: `{op}` expects {expected}")]
    InvalidClause {
        /// The filtered field.
        field: String,
        /// The operator, as policies spell it.
        op: &'static str,
        /// What the operator accepts.
        expected: &'static str,
    },
}

/// Why an HMAC key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Short secrets make pseudonyms guessable.
    #[error("hmac secret is {len} bytes; use at least {min} random bytes")]
    TooShort {
        /// The secret's length.
        len: usize,
        /// The minimum accepted.
        min: usize,
    },
}

/// Why one input record could not be read.
///
/// The caller skips the record and counts it. Messages carry positions and
/// the plan's own field names, never any part of the record: raw values must
/// not reach logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The line is not UTF-8, so it is not JSON.
    #[error("record is not valid UTF-8 (at byte {offset})")]
    NotUtf8 {
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// The line holds only whitespace.
    #[error("record is empty")]
    Empty,
    /// The line is JSON but not an object.
    #[error("record is not a JSON object")]
    NotAnObject,
    /// The line is not valid JSON, or has text after the object.
    #[error("record is not valid JSON (at column {column})")]
    Syntax {
        /// 1-based column (byte) where reading failed.
        column: usize,
    },
    /// The line ends inside the object.
    #[error("record is truncated JSON")]
    Truncated,
    /// A field the plan reads occurs twice. Readers disagree on which copy
    /// wins, so rather than guess which one the producer meant, the record is
    /// refused.
    #[error("record has field `{field}` more than once")]
    DuplicateField {
        /// The plan's name for the field.
        field: String,
    },
    /// A field the plan reads nests arrays or objects more deeply than
    /// common JSON readers accept.
    #[error("record field `{field}` nests deeper than {max} levels")]
    TooDeep {
        /// The plan's name for the field.
        field: String,
        /// The deepest nesting accepted, counting the record as level 1.
        max: usize,
    },
    /// A field the plan reads holds a number too large for a 64-bit float
    /// (such as `1e400`), which strict JSON readers reject.
    #[error("record field `{field}` holds a number out of range")]
    NumberOutOfRange {
        /// The plan's name for the field.
        field: String,
    },
    /// A field the plan reads holds a string with an unpaired UTF-16
    /// surrogate escape (such as `\ud800`), which strict JSON readers reject.
    #[error("record field `{field}` holds an invalid unicode escape")]
    InvalidEscape {
        /// The plan's name for the field.
        field: String,
    },
    /// A plugin the plan calls failed on this record. Unlike the other
    /// errors this is not bad input: the caller must refuse the request.
    #[error(transparent)]
    Plugin(crate::plugin::PluginFailure),
}
