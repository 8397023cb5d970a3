//! The crate's integration tests, one module per file, built as one test
//! binary: one link and one copy of the dependencies on disk, not one per

//! file. `cargo test -p meshgov-sidecar --test sidecar <module>::` runs one file's.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

mod aggregate;
mod audit;
mod binary;
mod control_port;
mod crash;
mod data_port;
mod docs;
mod faults;
mod hardening;
mod oidc;
mod operations;
mod parquet_port;
mod plugins;
mod py_clients;
mod s3_port;
mod secrets;
mod sql_agree;
mod sql_clients;
mod sql_psql;
mod streaming_memory;
