//! Audit events, their canonical encoding and the hash chain.
//!
//! # The stored line
//!
//! Each event is one line of UTF-8 JSON:
//!
//! ```text
//! {"action":"read",…,"prev":"<64 hex>",…,"seq":42,…,"hash":"<64 hex>"}\n
//! ```
//!
//! Everything before `,"hash":` followed by `}` is the event's **canonical
//! encoding**: a JSON object whose members are in lexicographic byte order of
//! their names, with no insignificant whitespace, strings escaped as
//! `serde_json` escapes them, integers in decimal, and absent values left out.
//! `hash` is the SHA-256 of that encoding, in lower-case hex, appended as the
//! final member. `prev` is the previous event's `hash` (64 zeros for the
//! first event, sequence 1), so changing, removing or moving any event breaks
//! every link after it.
//!
//! The encoding is pure: time, sequence and previous hash are inputs.

use ring::digest;
use serde::{Deserialize, Serialize};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The `prev` of the first event.
pub const GENESIS: Hash = [0u8; 32];

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A request was answered: allowed, denied or refused.
    Decision,
    /// A streamed response ended or broke: what was actually sent.
    Completion,
    /// Old segments were removed under the retention policy.
    Retention,
    /// The log was reopened after a crash and a torn tail was cut off.
    Recovery,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Decision => "decision",
            Kind::Completion => "completion",
            Kind::Retention => "retention",
            Kind::Recovery => "recovery",
        }
    }
}

/// The outcome of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Served (the response body may follow).
    Allow,
    /// Refused by policy (403).
    Deny,
    /// Refused for another reason: no token, bad parameters, no bundle,
    /// upstream failure and so on; `error` holds the stable code.
    Error,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Error => "error",
        }
    }
}

/// One event as submitted: everything except `seq`, `prev` and `hash`,
/// which the chain assigns. Fields that do not apply are `None` or empty and
/// are left out of the encoding.
///
/// INVARIANT: no token and no raw value of a classified field is ever put
/// in an event; only ids, names, labels and counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: Kind,
    /// Milliseconds since the Unix epoch (encoded as RFC 3339 UTC).
    pub time_ms: i64,
    /// The sidecar's own id for the request, minted for every request: the
    /// key that joins a read's decision and completion events.
    pub request_id: Option<String>,
    /// The `x-request-id` the client sent, if it was a plain token. Recorded
    /// for the client's correlation only: two clients can send the same one.
    pub client_request_id: Option<String>,
    pub consumer: Option<String>,
    pub groups: Vec<String>,
    pub purpose: Option<String>,
    /// `read`, `aggregate`, `discover`, …
    pub action: Option<String>,
    pub port: Option<String>,
    pub decision: Option<Decision>,
    /// The HTTP status answered.
    pub status: Option<u16>,
    /// The stable error code of a refusal (`unauthorized`, `forbidden`, …).
    pub error: Option<String>,
    /// The ids of the policies behind the decision.
    pub policies: Vec<String>,
    /// Field name → transform label (`clear`, `mask`, `hmac`, …), in field order
    /// of the port; encoded as an object with sorted keys.
    pub transforms: Vec<(String, String)>,
    pub privacy_cost: Option<f64>,
    pub budget_remaining: Option<f64>,
    pub bundle_revision: Option<u64>,
    pub bundle_digest: Option<String>,
    /// A read's answer format (`ndjson`, `csv`, `arrow`, `parquet`).
    pub format: Option<String>,
    /// The fields a read asked for (`fields=`); empty for all of them.
    pub projection: Vec<String>,
    /// The shape of a read's filter, every value replaced by `?`
    /// (`country eq ? and age ge ?`): no field value enters the log.
    pub filter: Option<String>,
    /// A SQL query's shape: its normalized text with every literal
    /// replaced by `?`, so that no value enters the log.
    pub query: Option<String>,
    /// The protocol a SQL query came in by (`postgres`, `flight-sql`).
    pub protocol: Option<String>,
    /// Completion: records and bytes handed to the connection.
    pub records: Option<u64>,
    pub bytes: Option<u64>,
    /// Completion: `complete`, `client_gone`, `upstream_failed`, `stalled`.
    pub outcome: Option<String>,
    /// Retention: the removed segment files.
    pub segments: Vec<String>,
    /// Retention: the last removed sequence and its hash, so a log that now
    /// starts later still links to what came before.
    pub through_seq: Option<u64>,
    pub through_hash: Option<String>,
    /// Recovery: bytes of torn tail cut off.
    pub torn_bytes: Option<u64>,
}

impl Event {
    /// An event of `kind` at `time_ms` with nothing else set.
    pub fn new(kind: Kind, time_ms: i64) -> Event {
        Event {
            kind,
            time_ms,
            request_id: None,
            client_request_id: None,
            consumer: None,
            groups: Vec::new(),
            purpose: None,
            action: None,
            port: None,
            decision: None,
            status: None,
            error: None,
            policies: Vec::new(),
            transforms: Vec::new(),
            privacy_cost: None,
            budget_remaining: None,
            bundle_revision: None,
            bundle_digest: None,
            format: None,
            projection: Vec::new(),
            filter: None,
            query: None,
            protocol: None,
            records: None,
            bytes: None,
            outcome: None,
            segments: Vec::new(),
            through_seq: None,
            through_hash: None,
            torn_bytes: None,
        }
    }
}

/// Where the chain stands: the last sequence and its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: Hash,
}

impl Head {
    /// The empty chain.
    pub const EMPTY: Head = Head {
        seq: 0,
        hash: GENESIS,
    };
}

/// Encodes `ev` as the next link after `head` and appends the stored line
/// (with its trailing newline) to `out`. Returns the new head.
pub fn seal(ev: &Event, head: Head, out: &mut Vec<u8>) -> Head {
    let start = out.len();
    let seq = head.seq + 1;
    encode_body(ev, seq, &head.hash, out);
    // The body's closing brace is part of what is hashed.
    out.push(b'}');
    let hash = sha256(out.get(start..).unwrap_or_default());
    out.pop();
    out.extend_from_slice(b",\"hash\":\"");
    push_hex(out, &hash);
    out.extend_from_slice(b"\"}\n");
    Head { seq, hash }
}

/// SHA-256 of `b`.
pub fn sha256(b: &[u8]) -> Hash {
    let d = digest::digest(&digest::SHA256, b);
    let mut h = [0u8; 32];
    h.copy_from_slice(d.as_ref());
    h
}

/// The canonical body without its closing brace. Members are written in
/// sorted order by hand: this is the per-event hot path.
fn encode_body(ev: &Event, seq: u64, prev: &Hash, out: &mut Vec<u8>) {
    let mut w = Obj { out, first: true };
    w.opt_str("action", ev.action.as_deref());
    w.opt_f64("budget_remaining", ev.budget_remaining);
    w.opt_str("bundle_digest", ev.bundle_digest.as_deref());
    w.opt_u64("bundle_revision", ev.bundle_revision);
    w.opt_u64("bytes", ev.bytes);
    w.opt_str("client_request_id", ev.client_request_id.as_deref());
    w.opt_str("consumer", ev.consumer.as_deref());
    w.opt_str("decision", ev.decision.map(Decision::as_str));
    w.opt_str("error", ev.error.as_deref());
    w.opt_str("filter", ev.filter.as_deref());
    w.opt_str("format", ev.format.as_deref());
    w.list("groups", &ev.groups);
    w.key("kind");
    w.string(ev.kind.as_str());
    w.opt_str("outcome", ev.outcome.as_deref());
    w.list("policies", &ev.policies);
    w.opt_str("port", ev.port.as_deref());
    w.key("prev");
    w.out.push(b'"');
    push_hex(w.out, prev);
    w.out.push(b'"');
    w.opt_f64("privacy_cost", ev.privacy_cost);
    w.list("projection", &ev.projection);
    w.opt_str("protocol", ev.protocol.as_deref());
    w.opt_str("purpose", ev.purpose.as_deref());
    w.opt_str("query", ev.query.as_deref());
    w.opt_u64("records", ev.records);
    w.opt_str("request_id", ev.request_id.as_deref());
    w.list("segments", &ev.segments);
    w.opt_u64("seq", Some(seq));
    w.opt_u64("status", ev.status.map(u64::from));
    w.opt_str("through_hash", ev.through_hash.as_deref());
    w.opt_u64("through_seq", ev.through_seq);
    w.key("time");
    w.out.push(b'"');
    push_rfc3339_ms(w.out, ev.time_ms);
    w.out.push(b'"');
    w.opt_u64("torn_bytes", ev.torn_bytes);
    if !ev.transforms.is_empty() {
        w.key("transforms");
        let mut sorted: Vec<&(String, String)> = ev.transforms.iter().collect();
        if !sorted.is_sorted_by(|a, b| a.0 < b.0) {
            sorted.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            sorted.dedup_by(|a, b| a.0 == b.0);
        }
        for (i, (k, v)) in sorted.into_iter().enumerate() {
            // Field names come from descriptors: escape them like any string.
            w.out.push(if i == 0 { b'{' } else { b',' });
            meshgov_json::push_string(w.out, k);
            w.out.push(b':');
            meshgov_json::push_string(w.out, v);
        }
        w.out.push(b'}');
    }
}

/// Writes one JSON object's members; the caller supplies them in order.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Obj<'_> {
    /// A member name; `k` must need no escaping (the fixed names do).
    fn key(&mut self, k: &str) {
        self.out.push(if self.first { b'{' } else { b',' });
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn string(&mut self, s: &str) {
        meshgov_json::push_string(self.out, s);
    }

    fn opt_str(&mut self, k: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.key(k);
            self.string(v);
        }
    }

    fn opt_u64(&mut self, k: &str, v: Option<u64>) {
        if let Some(v) = v {
            self.key(k);
            push_u64(self.out, v);
        }
    }

    fn opt_f64(&mut self, k: &str, v: Option<f64>) {
        if let Some(v) = v {
            self.key(k);
            // serde_json writes the shortest representation that round-trips,
            // and `null` for non-finite values.
            let _ = serde_json::to_writer(&mut *self.out, &v);
        }
    }

    fn list(&mut self, k: &str, v: &[String]) {
        if v.is_empty() {
            return;
        }
        self.key(k);
        self.out.push(b'[');
        for (i, s) in v.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            meshgov_json::push_string(self.out, s);
        }
        self.out.push(b']');
    }
}

fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(slot) = buf.get_mut(i) {
            *slot = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    out.extend_from_slice(buf.get(i..).unwrap_or_default());
}

/// A JSON string literal; plain ASCII is copied as is.
fn nibble(n: u8) -> u8 {
    if n < 10 { b'0' + n } else { b'a' + n - 10 }
}

fn push_hex(out: &mut Vec<u8>, b: &[u8; 32]) {
    let mut s = [0u8; 64];
    for (pair, &x) in s.chunks_exact_mut(2).zip(b) {
        if let [hi, lo] = pair {
            *hi = nibble(x >> 4);
            *lo = nibble(x & 15);
        }
    }
    out.extend_from_slice(&s);
}

/// Lower-case hex of a hash.
pub fn hex(h: &Hash) -> String {
    let mut v = Vec::with_capacity(64);
    push_hex(&mut v, h);
    String::from_utf8(v).unwrap_or_default()
}

/// Parses 64 hex digits.
pub fn parse_hex(s: &str) -> Option<Hash> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut h = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = (*pair.first()? as char).to_digit(16)?;
        let lo = (*pair.get(1)? as char).to_digit(16)?;
        *h.get_mut(i)? = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(h)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a Unix time in milliseconds (proleptic
/// Gregorian, UTC; years outside 0..=9999 are clamped).
pub fn push_rfc3339_ms(out: &mut Vec<u8>, ms: i64) {
    let ms = ms.clamp(-62_167_219_200_000, 253_402_300_799_999);
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Days to civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // Every value is in range after the clamp, so each fits its digits;
    // constant divisors keep this free of real divisions.
    let two = |v: i64| [b'0' + (v / 10 % 10) as u8, b'0' + (v % 10) as u8];
    let [y1, y2] = two(y / 100);
    let [y3, y4] = two(y);
    let [m1, m2] = two(m);
    let [d1, d2] = two(d);
    let [h1, h2] = two(sod / 3600);
    let [n1, n2] = two(sod / 60 % 60);
    let [s1, s2] = two(sod % 60);
    let [f1, f2] = two(milli / 10);
    let f3 = b'0' + (milli % 10) as u8;
    out.extend_from_slice(&[
        y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2, b'T', h1, h2, b':', n1, n2, b':', s1, s2, b'.',
        f1, f2, f3, b'Z',
    ]);
}

/// RFC 3339 text for a Unix time in milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    let mut v = Vec::with_capacity(24);
    push_rfc3339_ms(&mut v, ms);
    String::from_utf8(v).unwrap_or_default()
}

/// Milliseconds since the Unix epoch for an RFC 3339 time.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// A stored event, read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub seq: u64,
    pub kind: Kind,
    pub time: String,
    pub prev: String,
    pub hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub transforms: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy_cost: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_remaining: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projection: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torn_bytes: Option<u64>,
}

impl StoredEvent {
    /// Milliseconds since the epoch, if `time` parses.
    pub fn time_ms(&self) -> Option<i64> {
        parse_rfc3339_ms(&self.time)
    }
}

/// Why a stored line is not a sound event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not an audit event (expected JSON ending in `,\"hash\":\"<64 hex>\"}}`)")]
    Shape,
    #[error("the event does not parse: {0}")]
    Parse(String),
    #[error("the event's content does not match its hash")]
    HashMismatch,
}

const HASH_TAIL: usize = ",\"hash\":\"".len() + 64 + "\"}".len();

/// Checks one stored line (without its newline): its hash covers its
/// canonical body. Returns the event and its hash.
pub fn open_line(line: &[u8]) -> Result<(StoredEvent, Hash), LineError> {
    let cut = line.len().checked_sub(HASH_TAIL).ok_or(LineError::Shape)?;
    let (body, tail) = line.split_at(cut);
    let hex_part = tail
        .strip_prefix(b",\"hash\":\"")
        .and_then(|t| t.strip_suffix(b"\"}"))
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(parse_hex)
        .ok_or(LineError::Shape)?;
    let mut canon = Vec::with_capacity(body.len() + 1);
    canon.extend_from_slice(body);
    canon.push(b'}');
    if sha256(&canon) != hex_part {
        return Err(LineError::HashMismatch);
    }
    let ev: StoredEvent =
        serde_json::from_slice(line).map_err(|e| LineError::Parse(e.to_string()))?;
    Ok((ev, hex_part))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    pub fn sample() -> Event {
        let mut e = Event::new(Kind::Decision, 1_795_000_000_123);
        e.request_id = Some("r-1".into());
        e.client_request_id = Some("c-1".into());
        e.consumer = Some("alice".into());
        e.groups = vec!["marketing".into()];
        e.purpose = Some("campaign-analytics".into());
        e.action = Some("read".into());
        e.port = Some("profiles".into());
        e.decision = Some(Decision::Allow);
        e.status = Some(200);
        e.policies = vec!["marketing-reads".into()];
        e.transforms = vec![
            ("email".into(), "mask".into()),
            ("birth_date".into(), "generalize:year".into()),
        ];
        e.privacy_cost = Some(0.5);
        e.budget_remaining = Some(2.25);
        e.bundle_revision = Some(7);
        e.bundle_digest = Some("sha256:ab".into());
        e
    }

    #[test]
    fn members_are_in_sorted_order_and_the_hash_verifies() {
        let mut out = Vec::new();
        let head = seal(&sample(), Head::EMPTY, &mut out);
        assert_eq!(head.seq, 1);
        assert_eq!(*out.last().unwrap(), b'\n');
        let line = &out[..out.len() - 1];
        // The body (without hash) has sorted keys: compare with a sorted
        // re-serialisation of the parsed body.
        let cut = line.len() - HASH_TAIL;
        let mut body = line[..cut].to_vec();
        body.push(b'}');
        let v: std::collections::BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&body).unwrap();
        let keys: Vec<&String> = v.keys().collect();
        let text = std::str::from_utf8(&body).unwrap();
        let mut pos = 0;
        for k in keys {
            let at = text[pos..].find(&format!("\"{k}\":")).unwrap() + pos;
            assert!(at >= pos, "{k} out of order in {text}");
            pos = at;
        }
        assert_eq!(sha256(&body), head.hash);
        let (ev, h) = open_line(line).unwrap();
        assert_eq!(h, head.hash);
        assert_eq!(ev.seq, 1);
        assert_eq!(ev.prev, "0".repeat(64));
        assert_eq!(ev.transforms["birth_date"], "generalize:year");
        assert_eq!(ev.time, "2026-11-18T11:06:40.123Z");
        assert_eq!(ev.decision, Some(Decision::Allow));
        assert_eq!(ev.client_request_id.as_deref(), Some("c-1"));
    }

    #[test]
    fn a_changed_byte_fails_the_hash() {
        let mut out = Vec::new();
        seal(&sample(), Head::EMPTY, &mut out);
        let line = &mut out[..];
        let n = line.len() - 1;
        let at = std::str::from_utf8(line).unwrap().find("alice").unwrap();
        line[at] = b'A';
        assert_eq!(open_line(&line[..n]), Err(LineError::HashMismatch));
        assert_eq!(open_line(b"{}"), Err(LineError::Shape));
    }

    #[test]
    fn escaping_matches_serde_json_and_links_chain() {
        let mut e = sample();
        e.consumer = Some("quo\"te\\ \u{1} é".into());
        let mut out = Vec::new();
        let h1 = seal(&e, Head::EMPTY, &mut out);
        let h2 = seal(&e, h1, &mut out);
        let lines: Vec<&[u8]> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let (a, _) = open_line(lines[0]).unwrap();
        let (b, _) = open_line(lines[1]).unwrap();
        assert_eq!(a.consumer.as_deref(), Some("quo\"te\\ \u{1} é"));
        assert_eq!(b.prev, hex(&h1.hash));
        assert_eq!(h2.seq, 2);
    }

    #[test]
    fn rfc3339_matches_the_time_crate() {
        for ms in [
            0i64,
            1,
            999,
            951_782_400_000,
            1_795_000_000_123,
            -1,
            4_102_444_800_000,
        ] {
            let mut v = Vec::new();
            push_rfc3339_ms(&mut v, ms);
            let s = String::from_utf8(v).unwrap();
            assert_eq!(parse_rfc3339_ms(&s), Some(ms), "{s}");
        }
    }
}
