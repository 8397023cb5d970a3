//! `meshgov-server`: the authoring service behind `meshgov serve`
//! (`docs/architecture.md` in the repository shows where it sits).
//!
//! It watches a policy repository, and for each change checks, tests,
//! compiles and signs the next revision (a slice per product and the whole
//! mesh), then rolls it out to every registered sidecar: pushed to each
//! sidecar's control port, served to long polls, optionally through a
//! canary set first. It tracks each sidecar's ACKed revision, renews
//! bundles before they expire, and shows the fleet at `GET /v1/fleet` and
//! as a page at `GET /`.
//!
//! Modules:
//!
//! - [`build`]: fingerprint the repository; check, test, slice, sign;
//! - [`engine`]: releases, rollouts (canary, bake, promote, halt) and the fleet;
//! - [`api`]: the HTTP API and the server loop;
//! - [`page`]: the fleet page;
//! - [`client`]: pushes and status reads (also used by `meshgov push` and `meshgov status`);
//! - [`collect`]: audit collection from every registered sidecar;
//! - [`metrics`]: Prometheus metrics at `GET /metrics`;
//! - [`inject`]: what injecting the sidecar adds to a pod template (also
//!   `meshgov inject`'s);
//! - [`webhook`]: the mutating admission webhook that injects pods.
//!
//! They import each other without a cycle (`tests/module_graph.rs` checks
//! it): `api` uses `engine` and `page`; `engine` uses `build`, `client`,
//! `collect` and `metrics`, handing the last two what they need (a fleet
//! snapshot, a collection pass's inputs) rather than itself; `collect` uses
//! `client`.
//!
//! Every wall-clock time the engine reads comes from
//! [`EngineConfig::clock`]: the system clock in `meshgov serve`, a
//! [`meshgov_bundle::clock::ManualClock`] in tests that drive renewal and
//! expiry.

pub mod api;
pub mod build;
pub mod client;
pub mod collect;
pub mod engine;
pub mod inject;
pub mod metrics;
pub mod page;
pub mod webhook;

pub use engine::{Canary, Engine, EngineConfig, Fleet};
