//! The wall clock, read at the edges only and passed inward as numbers:
//! [`meshgov_bundle::clock`]'s system clock, which the engine runs on too.

use meshgov_bundle::clock::{Clock as _, SystemClock};

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    SystemClock.now_unix()
}

/// RFC 3339 for a Unix time; the epoch for out-of-range input.
pub fn rfc3339(unix: i64) -> String {
    meshgov_bundle::clock::rfc3339(unix)
}

/// Milliseconds since the Unix epoch (audit event times).
pub fn now_ms() -> i64 {
    SystemClock.now_ms()
}
