//! `meshgov-sidecar`: the proxy beside one data product that enforces the
//! policy bundle on every read. `docs/architecture.md` in the repository
//! shows where it sits and the path of a read through it.
//!
//! Modules, one per concern. [`app`] holds the shared state, built once
//! at launch; the request handlers use it and it uses none of them, so the
//! modules form no import cycle (a test checks this).
//!
//! - [`config`]: the TOML file and `MESHGOV_SIDECAR_*` overrides; bad config exits 64;
//! - [`app`]: the shared state, bundle verification and swap, control status;
//! - [`auth`]: consumer JWTs (EdDSA, ES256, RS256);
//! - [`request`]: routes, ports, windows and limits, parsed purely;
//! - [`state`]: the active bundle (its enforcement core) behind an `ArcSwap`;
//! - [`data_port`]: the data port's router, request ids, spans, the audited decision;
//! - [`records`]: a read: authenticate → parse → load bundle → enforce → stream;
//! - [`aggregate`]: differentially private aggregates and their budget ledger;
//! - [`shape`]: a read's per-record program applied, NDJSON or CSV out;
//! - [`upstream`]: time-partitioned files or an HTTP NDJSON source;
//! - [`respond`]: request ids, JSON bodies and error documents;
//! - [`server`]: hyper 1 with limits, timeouts and graceful drain;
//! - [`control`]: the control port: signed bundle pushes (ACK/NACK), status, engine-only auth;
//! - [`persist`]: the last good bundle on disk, written atomically;
//! - [`engine_link`]: registration with the engine and the long poll;
//! - [`metrics`]: Prometheus counters and `GET /metrics` on `listen.metrics`;
//! - [`telemetry`]: typed events (a privacy spend) for the audit event, the log and metrics;
//! - [`sql`]: the SQL ports (PostgreSQL wire protocol, Arrow Flight SQL) over one core;
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
pub mod app;
pub mod audit_feed;
pub mod auth;
pub mod body;
pub mod clock;
pub mod config;
pub mod control;
pub mod data_port;
pub mod engine_link;
pub mod error;
pub mod jwks;
pub mod launch;
pub mod metrics;
pub mod persist;
pub mod records;
pub mod request;
pub mod respond;
pub mod scan;
pub mod server;
pub mod shape;
pub mod sql;
pub mod state;
pub mod telemetry;
pub mod upstream;
pub mod write_stall;

pub use app::App;
pub use config::Config;
