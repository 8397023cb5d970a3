//! `meshgov-conformance`: whether a data product meets the mesh's rules.
//!
//! - [`rules`]: the static rules on a product descriptor. Pure: the
//!   descriptor's text and the policies in, findings out; no I/O.
//! - [`check`]: `meshgov conformance check`: reads the descriptor and the
//!   policies (a repository, or a verified bundle) and runs [`rules`].
//! - [`live`]: `meshgov conformance run`, the black-box suite against a
//!   running sidecar, over HTTP and, when it has one, its PostgreSQL port.
//! - [`report`]: the reports both commands print (text, JSON, JUnit XML,
//!   SARIF 2.1.0, GitHub workflow annotations).
//! - [`token`]: consumer JWTs, as the live suite reads with them (and
//!   `meshgov token` mints them).
//!
//! Every rule is documented under its id in `RULES.md`, next to this
//! crate's manifest.

pub mod check;
pub mod live;
pub mod report;
pub mod rules;
pub mod token;

pub use rules::{Finding, Input, LIVE_RULES, RULES, Rule, check_product};

/// Why a conformance command did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A usage or I/O error: nothing was judged (the CLI exits 2).
    Usage(String),
    /// Findings at or above the threshold (the CLI exits 1).
    Violations(String),
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::Usage(message.into())
    }

    /// A file or directory that cannot be read or written, in words.
    pub fn io(path: &std::path::Path, e: &std::io::Error) -> Failure {
        Failure::usage(meshgov_core::diag::io_message(path.display(), e))
    }

    /// A key file that cannot be read, or holds no usable key.
    pub fn key(e: meshgov_bundle::KeyFileError) -> Failure {
        match e {
            meshgov_bundle::KeyFileError::Io { path, source } => Failure::io(&path, &source),
            e => Failure::usage(e.to_string()),
        }
    }

    pub fn violations(message: impl Into<String>) -> Failure {
        Failure::Violations(message.into())
    }

    /// The message, whichever the kind.
    pub fn message(&self) -> &str {
        match self {
            Failure::Usage(m) | Failure::Violations(m) => m,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Failure {}
