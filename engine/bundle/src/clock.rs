//! The wall clock, as the engine and the sidecar read it.
//!
//! Bundles are signed and verified at a time the caller passes in (this
//! crate's functions read no clock). [`Clock`] is where those callers get
//! that time, so a test can hand them a [`ManualClock`] it sets and advances
//! instead of the real one. [`SystemClock`], the one implementation that
//! reads the wall clock, is compiled only with the `system-clock` feature.
//!
//! ```
//! use meshgov_bundle::clock::{Clock, ManualClock, rfc3339};
//! use std::time::Duration;
//!
//! let clock = ManualClock::at_unix(1_767_225_600); // 2026-01-01T00:00:00Z
//! clock.advance(Duration::from_millis(90_500));
//! assert_eq!(clock.now_unix(), 1_767_225_690);
//! assert_eq!(clock.now_ms(), 1_767_225_690_500);
//! assert_eq!(rfc3339(clock.now_unix()), "2026-01-01T00:01:30Z");
//! ```

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Wall time, since the Unix epoch (UTC).
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;

    /// Whole seconds since the Unix epoch (rounded down).
    fn now_unix(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

/// The wall clock of the machine.
#[cfg(feature = "system-clock")]
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

#[cfg(feature = "system-clock")]
impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
    }

    fn now_unix(&self) -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }
}

/// A clock that stands still until it is set or advanced: for tests.
/// Shared through an `Arc`, every holder sees the same time.
#[derive(Debug, Default)]
pub struct ManualClock {
    ms: AtomicI64,
}

impl ManualClock {
    /// A clock showing `unix` seconds.
    pub fn at_unix(unix: i64) -> ManualClock {
        ManualClock::at_ms(unix.saturating_mul(1000))
    }

    /// A clock showing `ms` milliseconds.
    pub fn at_ms(ms: i64) -> ManualClock {
        ManualClock {
            ms: AtomicI64::new(ms),
        }
    }

    /// Sets the time to `unix` seconds.
    pub fn set_unix(&self, unix: i64) {
        self.set_ms(unix.saturating_mul(1000));
    }

    /// Sets the time to `ms` milliseconds.
    pub fn set_ms(&self, ms: i64) {
        self.ms.store(ms, Ordering::SeqCst);
    }

    /// Moves the time forward by `by` (whole milliseconds).
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        // The closure always returns `Some`, so this cannot fail.
        let _ = self
            .ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |ms| {
                Some(ms.saturating_add(by))
            });
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.ms.load(Ordering::SeqCst)
    }
}

/// A Unix time as status documents show it: RFC 3339 in UTC, whole seconds
/// (`2026-01-02T03:04:05Z`), the spelling of [`crate::format_timestamp`] for
/// every time a manifest can hold. A time RFC 3339 cannot write (outside
/// the years 0 to 9999) shows as the epoch.
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = Arc::new(ManualClock::at_unix(1_767_225_600));
        let shared: Arc<dyn Clock> = c.clone();
        assert_eq!(shared.now_unix(), 1_767_225_600);
        assert_eq!(shared.now_ms(), 1_767_225_600_000);
        c.advance(Duration::from_millis(1_999));
        assert_eq!(shared.now_unix(), 1_767_225_601);
        assert_eq!(shared.now_ms(), 1_767_225_601_999);
        c.set_unix(100);
        assert_eq!(shared.now_unix(), 100);
        c.set_ms(-1);
        assert_eq!(shared.now_unix(), -1, "seconds round down before the epoch");
        c.set_ms(i64::MAX - 1);
        c.advance(Duration::from_secs(10));
        assert_eq!(shared.now_ms(), i64::MAX, "saturates");
    }

    #[cfg(feature = "system-clock")]
    #[test]
    fn the_system_clock_agrees_with_itself() {
        let c = SystemClock;
        let (s, ms) = (c.now_unix(), c.now_ms());
        assert!(s > 1_767_225_600 - 86_400 * 365, "{s}");
        assert!((ms / 1000 - s).abs() <= 1, "{s} {ms}");
    }

    #[test]
    fn rfc3339_spells_times_as_manifests_do() {
        for t in [0, 1_767_225_600, 1_767_225_600 + 3_661, 253_402_300_799] {
            assert_eq!(rfc3339(t), crate::format_timestamp(t).unwrap());
        }
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(i64::MAX), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(253_402_300_800), "1970-01-01T00:00:00Z");
    }
}
