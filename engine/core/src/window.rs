//! The time window of a read, and how a record's time is read from text.
//! Every read path filters by the same window with the same parser.

use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime};

/// The window a read asks for: `[from, to)`, either end open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
}

impl Window {
    /// Whether the period `[start, end)` has any instant in the window.
    pub fn overlaps(&self, start: OffsetDateTime, end: OffsetDateTime) -> bool {
        self.to.is_none_or(|t| start < t) && self.from.is_none_or(|f| end > f)
    }

    pub fn contains(&self, t: OffsetDateTime) -> bool {
        self.from.is_none_or(|f| t >= f) && self.to.is_none_or(|to| t < to)
    }

    /// Whether the window is open at both ends.
    pub fn is_open(&self) -> bool {
        self.from.is_none() && self.to.is_none()
    }
}

/// A record's time: an RFC 3339 timestamp (`2026-03-01T12:00:00Z`) or a
/// date (`2026-03-01`, meaning its midnight UTC). `None` for anything else.
pub fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok().or_else(|| {
        let f = time::macros::format_description!("[year]-[month]-[day]");
        Date::parse(text, &f)
            .ok()
            .map(|d| d.midnight().assume_utc())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn times_and_dates_parse_and_windows_are_half_open() {
        let day = parse_time("2026-03-01").unwrap();
        let noon = parse_time("2026-03-01T12:00:00Z").unwrap();
        assert!(parse_time("2026-02-30").is_none());
        assert!(parse_time("yesterday").is_none());
        let w = Window {
            from: Some(day),
            to: Some(noon),
        };
        assert!(w.contains(day));
        assert!(!w.contains(noon));
        assert!(w.overlaps(noon - time::Duration::HOUR, noon));
        assert!(!w.overlaps(noon, noon + time::Duration::HOUR));
        assert!(Window::default().is_open());
    }
}
