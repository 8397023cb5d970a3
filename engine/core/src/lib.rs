//! meshgov's policy core: the policy model, the checker and compiler, and
//! the evaluators that the sidecar, `meshgov test` and conformance share.
//!
//! Everything here is pure: values in, values out. Time, keys and
//! randomness are passed in; the one edge that reads files is
//! [`source::SourceSet::read_dir`].

pub mod access;
pub mod anonymization;
pub mod check;
pub mod decision;
pub mod descriptor;
pub mod diag;
pub mod diff;
pub mod enforce;
pub mod mesh;
pub mod plugins;
pub mod policies;
pub mod privacy;
pub mod records;
pub mod scope;
pub mod source;
pub mod standards;
pub mod testing;
pub mod window;

pub use access::Principal;
pub use check::{Checked, check, check_with};
pub use decision::{Asker, ProductView, ReadDecision, Treatment};
pub use diag::{Diagnostic, Severity};
pub use enforce::{CompiledRead, Enforcer, Unenforceable};
pub use policies::Policies;
pub use source::SourceSet;
