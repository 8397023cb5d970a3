//! The SQL ports: the PostgreSQL wire protocol ([`pg`]) and Arrow Flight
//! SQL ([`flight`]) over one core, this module.
//!
//! A connection authenticates once, with the consumer's JWT as its
//! password (or bearer token), exactly as the data port checks it. Each
//! statement then:
//!
//! 1. checks the token again (it may have expired since the connect) and
//!    loads the bundle in force (no valid bundle: refused);
//! 2. passes the [gate](gate::gate): queries run; client session
//!    statements (`SET` of a client setting, `SHOW`, `BEGIN`, `COMMIT`)
//!    are answered; anything that writes, changes the engine or reads
//!    files is refused with its SQLSTATE;
//! 3. is planned by DataFusion in the consumer's [catalog](catalog): one
//!    table per port the bundle lets them read, each the consumer's view
//!    of the port ([`meshgov_columnar::view::consumer_view`]) with only the
//!    fields they may see. The client's SQL is planned on top of those
//!    views, so every expression sees treated values only;
//! 4. is audited: one decision event (consumer, purpose, the ports and
//!    columns read with their treatments, the query's shape with literals
//!    replaced) is durable before the first row leaves, and a completion
//!    event gives the rows and bytes sent and how the query ended.
//!
//! A query the bundle or the plan cannot serve is refused, audited, with
//! a SQLSTATE ([`SqlError`]); never answered from raw data.

pub(crate) mod catalog;
pub(crate) mod compat;
pub(crate) mod dp;
pub(crate) mod flight;
pub(crate) mod gate;
pub(crate) mod pg;
pub(crate) mod query;

/// A refused statement or connection, as the client is told: a SQLSTATE
/// and a message that says what to do. `audit` is the stable code the
/// audit event records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (SQLSTATE {code})")]
pub struct SqlError {
    pub code: &'static str,
    pub message: String,
    pub audit: &'static str,
}

impl SqlError {
    pub(crate) fn new(code: &'static str, audit: &'static str, message: impl Into<String>) -> Self {
        SqlError {
            code,
            message: message.into(),
            audit,
        }
    }

    /// The token is missing, malformed, expired or not trusted.
    pub(crate) fn bad_token(why: impl std::fmt::Display) -> Self {
        SqlError::new(
            "28P01",
            "unauthorized",
            format!("{why}; connect with your JWT as the password"),
        )
    }

    pub(crate) fn unavailable(why: impl std::fmt::Display) -> Self {
        SqlError::new(
            "57P03",
            "bundle_unavailable",
            format!("{why}; nothing can be served until a valid policy bundle is in force"),
        )
    }

    pub(crate) fn not_supported(what: impl std::fmt::Display) -> Self {
        SqlError::new("0A000", "not_supported", format!("{what} is not supported"))
    }

    pub(crate) fn cancelled() -> Self {
        SqlError::new(
            "57014",
            "cancelled",
            "canceling statement due to user request",
        )
    }

    pub(crate) fn timed_out(ms: u64) -> Self {
        SqlError::new(
            "57014",
            "timed_out",
            format!("canceling statement due to statement timeout ({ms} ms)"),
        )
    }

    pub(crate) fn too_many_connections(limit: usize) -> Self {
        SqlError::new(
            "53300",
            "too_many_connections",
            format!("sorry, too many clients already ({limit} connections are open); retry later"),
        )
    }

    pub(crate) fn audit_unavailable() -> Self {
        SqlError::new(
            "58030",
            "audit_unavailable",
            "the audit log cannot record this query, so it was not run; retry later",
        )
    }

    pub(crate) fn plan_failed() -> Self {
        SqlError::new(
            "XX000",
            "plan_failed",
            "the query could not be planned under the policy bundle; nothing was served",
        )
    }
}
