//! The audit feed's framing: `GET /control/v1/audit?after=SEQ`.
//!
//! The answer (`application/x-ndjson`, [`AUDIT_HEAD_HEADER`]: the durable
//! sequence it reads up to) is the sidecar's stored audit lines, byte for
//! byte, each ending in `\n`: every event with a sequence above `SEQ` in
//! order, then the signed checkpoints in that range. The lines are
//! `meshgov-audit`'s canonical, hash-chained encoding and are never
//! re-serialized; this module only frames them. Asking with `after=SEQ`
//! also acknowledges everything up to `SEQ` as collected.

/// The durable sequence an audit feed answer reads up to.
pub const AUDIT_HEAD_HEADER: &str = "x-meshgov-audit-head";
/// The audit feed's content type.
pub const NDJSON_CONTENT_TYPE: &str = "application/x-ndjson";
/// The longest line a collector accepts.
pub const MAX_FEED_LINE_BYTES: usize = 1024 * 1024;

/// The audit feed's query: sent by the collector (the engine with
/// `--collect-audit`), read by the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuditFeedQuery {
    /// The last sequence the collector holds (0: none).
    pub after: u64,
}

/// Why an audit feed query is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditQueryError {
    /// `after` is not a sequence number (the value given).
    #[error("`after` must be a sequence number, got `{0}`")]
    BadAfter(String),
    /// A parameter other than `after` (its name).
    #[error("unknown parameter `{0}`; the only one is `after`")]
    UnknownParameter(String),
    /// `after` given more than once.
    #[error("parameter `after` is given more than once")]
    Repeated,
}

/// The longest piece of a request echoed in a refusal, in characters.
const ECHO_CHARS: usize = 32;

/// `text` cut to [`ECHO_CHARS`], marked with `…` when cut.
fn echo(text: &str) -> String {
    match text.char_indices().nth(ECHO_CHARS) {
        Some((end, _)) => format!("{}…", text.get(..end).unwrap_or_default()),
        None => text.to_string(),
    }
}

impl AuditFeedQuery {
    /// The query string, without `?`.
    pub fn to_query(&self) -> String {
        format!("after={}", self.after)
    }

    /// Reads a query string (without `?`); `after` is 0 when absent. A
    /// repeated `after` is refused, and a refusal echoes at most 32
    /// characters of what was sent.
    pub fn parse(query: Option<&str>) -> Result<AuditFeedQuery, AuditQueryError> {
        let mut after = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "after" if after.is_some() => return Err(AuditQueryError::Repeated),
                "after" => {
                    after = Some(v.parse().map_err(|_| AuditQueryError::BadAfter(echo(v)))?);
                }
                _ => return Err(AuditQueryError::UnknownParameter(echo(k))),
            }
        }
        Ok(AuditFeedQuery {
            after: after.unwrap_or(0),
        })
    }
}

/// One line of the audit feed (without its `\n`), by kind: sent by the
/// sidecar, told apart by the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedLine<'a> {
    /// An event: `{"action":…,"prev":…,"seq":N,…,"hash":…}`, its members
    /// in canonical (sorted) order with `hash` last.
    Event(&'a [u8]),
    /// A signed checkpoint: `{"hash":…,"key":…,"kind":"checkpoint",…}`.
    Checkpoint(&'a [u8]),
}

impl<'a> FeedLine<'a> {
    /// What kind of line `line` is. Both kinds are stored with their
    /// members sorted, but an event's `hash` comes last, so only a
    /// checkpoint starts with `{"hash":`.
    pub fn of(line: &'a [u8]) -> FeedLine<'a> {
        if line.starts_with(b"{\"hash\":") {
            FeedLine::Checkpoint(line)
        } else {
            FeedLine::Event(line)
        }
    }
}
