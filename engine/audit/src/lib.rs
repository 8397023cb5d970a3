//! `meshgov-audit`: the tamper-evident audit log of meshgov's sidecar.
//!
//! - [`event`]: what an event holds, its canonical encoding and the SHA-256
//!   hash chain (pure: time, sequence and previous hash are inputs);
//! - [`segment`]: append-only segment files, torn-tail repair on reopen;
//! - [`log`]: the group-commit writer (one `fdatasync` per batch, each
//!   submitter awaits its acknowledgement), rotation, signed checkpoints,
//!   retention;
//! - [`checkpoint`]: Ed25519 checkpoints over (sequence, head hash, time);
//! - [`verify`]: offline verification naming the first break and its kind;
//! - [`show`]: filters and readable rows;
//! - [`feed`]: reading events after a sequence, for collection;
//! - `collect` (feature `collect`): pulling a sidecar's audit feed into a
//!   local, verified store.

pub mod checkpoint;
pub mod event;
pub mod feed;
pub mod keyfile;
pub mod log;
pub mod segment;
pub mod show;
pub mod verify;

#[cfg(feature = "collect")]
pub mod collect;

pub use checkpoint::Checkpoint;
pub use event::{Decision, Event, Head, Kind, StoredEvent};
pub use log::{AuditError, AuditHead, AuditLog, Durability, Options, Pending, Receipt, Retention};
pub use verify::{Break, BreakKind, Summary, VerifyError, verify_path};
