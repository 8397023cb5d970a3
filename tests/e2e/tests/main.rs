//! The crate's integration tests, one module per file, built as one test
//! binary: one link and one copy of the dependencies on disk, not one per

//! file. `cargo test -p meshgov-e2e --test e2e <module>::` runs one file's.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod api_limits;
mod clock;
mod metrics;
mod module_graph;
mod rollout;
