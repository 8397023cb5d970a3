//! The crate's integration tests, one module per file, built as one test
//! binary: one link and one copy of the dependencies on disk, not one per

//! file. `cargo test -p meshgov --test cli <module>::` runs one file's.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod k8s;

mod cli;
mod conformance;
mod conformance_run;
mod demo;
mod deploy;
mod diff;
mod faults;
mod fleet;
mod inject;
mod keys;
mod serve_ops;
mod webhook;
