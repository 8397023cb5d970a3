//! `meshgov-privacy`: differentially private aggregates for the sidecar.
//!
//! - [`query`]: an aggregate request, validated against the port's privacy
//!   rule (aggregations, fields, bounds, epsilon, window);
//! - [`engine`]: contribution bounding, OpenDP measurements, noise and
//!   DP partition selection, run on the caller's (blocking) thread;
//! - [`ledger`]: the budget ledger trait and the embedded file ledger;
//! - [`pg`]: the PostgreSQL ledger for several replicas.

pub mod ledger;
pub mod mechanism;
pub mod pg;
pub mod query;
