//! `meshgov-sidecar`: the proxy beside one data product that enforces the
//! policy bundle on every read (DESIGN.md section 6).
//!
//! Modules, one per concern:
//!
//! - [`config`]: the TOML file and `MESHGOV_SIDECAR_*` overrides; bad config exits 64;
//! - [`auth`]: consumer JWTs (EdDSA, ES256, RS256);
//! - [`request`]: routes, ports, windows and limits, parsed purely;
//! - [`state`]: the active bundle behind an `ArcSwap`;
//! - [`aggregate`]: differentially private aggregates and their budget ledger;
//! - [`pipeline`]: authenticate → parse → load bundle → plan → authorize → stream;
//! - [`shape`]: the read plan compiled into a `meshgov-anonymize` record plan, NDJSON or CSV out;
//! - [`upstream`]: time-partitioned files or an HTTP NDJSON source;
//! - [`server`]: hyper 1 with limits, timeouts and graceful drain;
//! - [`control`]: the control port: signed bundle pushes (ACK/NACK), status, engine-only auth;
//! - [`persist`]: the last good bundle on disk, written atomically;
//! - [`engine_link`]: registration with the engine and the long poll;
//! - [`metrics`]: Prometheus counters and `GET /metrics` on `listen.metrics`.
//! - [`audit_feed`]: `GET /control/v1/audit?after=SEQ`, the audit stream for
//!   collection (events, then checkpoints, as NDJSON).
//!
//! # Exit codes
//!
//! `0` clean shutdown; `64` bad configuration (the message names the key);
//! `70` the listener could not be bound or the runtime failed.
//!
//! # Why `jsonwebtoken` 10 with the `rust_crypto` backend
//!
//! - 10.3 and later fix CVE-2026-25537: in 9.x an `exp` or `nbf` claim
//!   of the wrong JSON type was treated as absent, skipping its check.
//!   9.x (the `ring` line) is still affected, so it is out.
//! - Of the two 10.x backends, `aws_lc_rs` compiles C with cmake (minutes
//!   on these machines, and a C toolchain on every build host), while
//!   `rust_crypto` is pure Rust (`ed25519-dalek`, `p256`, `rsa`).
//! - The `rsa` crate's timing advisory (RUSTSEC-2023-0071, Marvin) concerns
//!   private-key operations; the sidecar only verifies signatures.
//! - Algorithm confusion is prevented here, not left to the library: each
//!   key is bound to one algorithm in config, a token is tried only against
//!   keys of its own `alg`, and only asymmetric algorithms are configurable.
//!   `alg: none` has no key and is refused. Tests prove both.

pub mod aggregate;
pub mod audit_feed;
pub mod auth;
pub mod body;
pub mod clock;
pub mod config;
pub mod control;
pub mod engine_link;
pub mod error;
pub mod launch;
pub mod metrics;
pub mod persist;
pub mod pipeline;
pub mod request;
pub mod server;
pub mod shape;
pub mod state;
pub mod upstream;

pub use config::Config;
pub use pipeline::App;
