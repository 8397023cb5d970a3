//! Reading events back for people: filters, readable rows, JSON.

use crate::event::{Decision, StoredEvent, open_line};
use crate::segment::{lines, list_segments, read_file};
use std::path::Path;

/// Which events to show; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub consumer: Option<String>,
    pub port: Option<String>,
    pub decision: Option<Decision>,
    pub request_id: Option<String>,
    /// The `x-request-id` a client sent.
    pub client_request_id: Option<String>,
    /// Inclusive bounds, milliseconds since the epoch.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

impl Filter {
    /// Whether `e` passes. A completion event carries no consumer or
    /// decision; it passes those filters when its request's decision did,
    /// which [`read_filtered`] tracks by request id.
    pub fn matches(&self, e: &StoredEvent) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        eq(&self.consumer, &e.consumer)
            && eq(&self.port, &e.port)
            && eq(&self.request_id, &e.request_id)
            && eq(&self.client_request_id, &e.client_request_id)
            && self.decision.is_none_or(|d| e.decision == Some(d))
            && self.in_time(e)
    }

    fn in_time(&self, e: &StoredEvent) -> bool {
        let t = e.time_ms().unwrap_or(i64::MIN);
        self.since_ms.is_none_or(|s| t >= s) && self.until_ms.is_none_or(|u| t <= u)
    }
}

/// The events of a directory or segment file that pass `filter`, in chain
/// order, as `(event, stored line)`. Lines that are not sound events are
/// skipped (`meshgov audit verify` is the tool that reports them).
pub fn read_filtered(path: &Path, filter: &Filter) -> std::io::Result<Vec<(StoredEvent, Vec<u8>)>> {
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        list_segments(path)?.into_iter().map(|s| s.path).collect()
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    let mut shown_requests = std::collections::HashSet::new();
    for f in files {
        let data = match read_file(&f) {
            Ok(d) => d,
            // Retired by a live sidecar since the listing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let (ls, _) = lines(&data);
        for (_, line) in ls {
            let Ok((e, _)) = open_line(line) else {
                continue;
            };
            let pass = if e.kind == crate::event::Kind::Completion {
                e.request_id
                    .as_ref()
                    .is_some_and(|r| shown_requests.contains(r))
                    && filter.in_time(&e)
            } else {
                filter.matches(&e)
            };
            if pass {
                if let Some(r) = &e.request_id {
                    shown_requests.insert(r.clone());
                }
                out.push((e, line.to_vec()));
            }
        }
    }
    Ok(out)
}

/// One readable row.
pub fn row(e: &StoredEvent) -> String {
    let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let mut s = format!(
        "{:>8}  {}  {:<10}  {:<24}",
        e.seq,
        e.time,
        e.kind.as_str(),
        dash(&e.request_id),
    );
    match e.kind {
        crate::event::Kind::Decision => {
            s.push_str(&format!(
                "  {:<5} {:>3}  {} ({})  {} {}",
                e.decision.map_or("-", Decision::as_str),
                e.status.map_or("-".into(), |c| c.to_string()),
                dash(&e.consumer),
                dash(&e.purpose),
                dash(&e.action),
                dash(&e.port),
            ));
            if let Some(err) = &e.error {
                s.push_str(&format!("  error={err}"));
            }
            if !e.policies.is_empty() {
                s.push_str(&format!("  policies={}", e.policies.join(",")));
            }
        }
        crate::event::Kind::Completion => s.push_str(&format!(
            "  {} records, {} bytes, {}",
            e.records.unwrap_or(0),
            e.bytes.unwrap_or(0),
            dash(&e.outcome)
        )),
        crate::event::Kind::Retention => s.push_str(&format!(
            "  removed {} (through sequence {})",
            e.segments.join(", "),
            e.through_seq.unwrap_or(0)
        )),
        crate::event::Kind::Recovery => s.push_str(&format!(
            "  cut {} byte(s) of torn tail",
            e.torn_bytes.unwrap_or(0)
        )),
    }
    s
}
