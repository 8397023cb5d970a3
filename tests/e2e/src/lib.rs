//! `meshgov-e2e`: the one end-to-end harness of meshgov's tests.
//!
//! - [`mesh`]: an engine (`meshgov-server`'s API) and sidecars in this
//!   process, on loopback, over a git copy of the example policies. Each
//!   sidecar boots from a real config through
//!   [`meshgov_sidecar::launch::boot`], as `meshgov demo` boots its own:
//!   data port, control port, engine link and expiry watch.
//! - [`process`]: real binaries (`meshgov serve`, `meshgov-sidecar`) as
//!   child processes: spawn with stderr to a log file, readiness polls,
//!   signals, waiting for the exit code; killed when dropped.
//! - [`oidc`]: a real OpenID provider (oidc-provider under Node.js) on
//!   loopback: discovery, a JWKS, JWT access tokens with chosen claims,
//!   key rotation by restart.
//! - [`bench`]: whether a benchmark measures or only runs once (CI).
//! - [`rng`]: the seeded generator for random fault moments and the seed a
//!   run takes from `MESHGOV_FAULT_SEED` (printed, so a failure replays).
//!
//! The tests under `tests/` run the engine and sidecars together (rollouts,
//! canaries, expiry, audit collection, the fleet page, the engine's
//! metrics and API limits). Tests of one crate's binary that need the
//! other side (`meshgov serve` killed under live sidecars, the sidecar's
//! process tests) stay in that crate and use this one as a
//! dev-dependency.
//!
//! Failures are returned as [`Error`]s naming what failed; tests unwrap
//! them.

pub mod bench;
pub mod mesh;
pub mod oidc;
pub mod process;
pub mod rng;

pub use mesh::*;
pub use oidc::OidcProvider;
pub use process::*;
pub use rng::*;

use std::fmt;
use std::path::{Path, PathBuf};

/// What the harness could not do, in words.
pub struct Error(String);

impl Error {
    pub fn new(message: impl Into<String>) -> Error {
        Error(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The message, so that a test's `unwrap()` prints it as it is.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Names what was being done when a result failed or a value was missing.
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error(format!("{what}: {e}")))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.ok_or_else(|| Error(what.to_string()))
    }
}

/// The repository's root directory (where `policies/` is).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Copies the directory tree `from` to `to`.
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).context(format!("create `{}`", to.display()))?;
    let entries = std::fs::read_dir(from).context(format!("read `{}`", from.display()))?;
    for e in entries {
        let e = e.context(format!("read `{}`", from.display()))?;
        let target = to.join(e.file_name());
        if e.file_type().context("file type")?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target).context(format!("copy to `{}`", target.display()))?;
        }
    }
    Ok(())
}
