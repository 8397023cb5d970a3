//! `meshgov-metrics`: the counters, gauges and histograms behind the
//! sidecar's and the engine's Prometheus `/metrics`, and an encoder for the
//! Prometheus text exposition format, version 0.0.4.
//!
//! # Why not a metrics crate
//!
//! The metrics are few and their label sets are known when a process starts
//! (the descriptor's ports, decisions, status codes, fixed outcome names),
//! so each series is a plain atomic in a table built once, found by index.
//! Recording is one relaxed `fetch_add`: no lock, no map lookup and no
//! allocation on a request, let alone per record. `prometheus-client`, the
//! well-kept alternative, looks each labelled series up in a map behind a
//! lock on every use, and its histograms take a lock per observation; the
//! text format itself is small enough to write here and is checked by tests
//! with an independent parser.
//!
//! [`process`] writes the standard `process_*` families (CPU seconds,
//! memory, file descriptors, start time) that Prometheus client libraries
//! write.
//!
//! # The format
//!
//! Each family is written as `# HELP`, `# TYPE`, then its samples, all
//! contiguous. Counters are named `…_total`. A histogram writes cumulative
//! `…_bucket{le="…"}` samples ending at `le="+Inf"`, then `…_sum` and
//! `…_count` (equal to the `+Inf` bucket). Label values are escaped (`\\`,
//! `\"`, `\n`); help text escapes `\\` and `\n`. Serve it with
//! [`CONTENT_TYPE`].

pub mod process;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds (seconds) for request latencies: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds (seconds) for disk syncs: 50 µs to 1 s.
pub const FSYNC_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Bucket bounds (seconds) for whole streamed responses: 10 ms to 30 min.
pub const STREAM_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram of durations with fixed bucket bounds (in seconds).
///
/// Buckets are stored per interval and made cumulative when read, so an
/// observation is two relaxed `fetch_add`s (the bucket and the sum, in
/// nanoseconds) after a short search of the bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    bounds_ns: Box<[u64]>,
    /// One per bound, then the overflow (`+Inf`) bucket.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, cumulative count)`, ascending.
    pub buckets: Vec<(f64, u64)>,
    /// All observations (the `+Inf` bucket).
    pub count: u64,
    /// Their sum in seconds.
    pub sum: f64,
}

impl Histogram {
    /// `bounds` are ascending upper bounds in seconds.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            // INVARIANT: bounds are small positive seconds, so the cast
            // neither truncates meaningfully nor overflows.
            bounds_ns: bounds.iter().map(|b| (b * 1e9) as u64).collect(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self.bounds_ns.partition_point(|&b| b < ns);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0u64;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        let mut counts = self.buckets.iter().map(|b| b.load(Ordering::Relaxed));
        for &bound in self.bounds {
            total += counts.next().unwrap_or(0);
            buckets.push((bound, total));
        }
        total += counts.next().unwrap_or(0);
        HistogramSnapshot {
            buckets,
            count: total,
            sum: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Counter,
    Gauge,
    Histogram,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Histogram => "histogram",
        }
    }
}

/// A sample value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(i64),
    Uint(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Uint(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

fn write_value(out: &mut String, v: Value) {
    let _ = match v {
        Value::Int(i) => write!(out, "{i}"),
        Value::Uint(u) => write!(out, "{u}"),
        Value::Float(f) if f.is_nan() => write!(out, "NaN"),
        Value::Float(f) if f == f64::INFINITY => write!(out, "+Inf"),
        Value::Float(f) if f == f64::NEG_INFINITY => write!(out, "-Inf"),
        Value::Float(f) => write!(out, "{f}"),
    };
}

/// Whether `s` is a valid metric or label name.
pub fn valid_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Writes metric families in the text exposition format.
#[derive(Debug, Default)]
pub struct Encoder {
    out: String,
    family: String,
    kind: Option<Type>,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines. Its samples follow.
    pub fn family(&mut self, name: &str, kind: Type, help: &str) -> &mut Encoder {
        debug_assert!(valid_name(name), "bad metric name `{name}`");
        debug_assert!(
            kind != Type::Counter || name.ends_with("_total"),
            "counter `{name}` must end in `_total`"
        );
        let _ = write!(self.out, "# HELP {name} ");
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        let _ = writeln!(self.out, "\n# TYPE {name} {}", kind.name());
        self.family.clear();
        self.family.push_str(name);
        self.kind = Some(kind);
        self
    }

    fn line(
        &mut self,
        suffix: &str,
        labels: &[(&str, &str)],
        extra: Option<(&str, f64)>,
        v: Value,
    ) {
        self.out.push_str(&self.family);
        self.out.push_str(suffix);
        if !labels.is_empty() || extra.is_some() {
            self.out.push('{');
            let mut first = true;
            for (k, val) in labels {
                debug_assert!(valid_name(k), "bad label name `{k}`");
                if !first {
                    self.out.push(',');
                }
                first = false;
                self.out.push_str(k);
                self.out.push_str("=\"");
                for c in val.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            if let Some((k, le)) = extra {
                if !first {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                write_value(&mut self.out, Value::Float(le));
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        write_value(&mut self.out, v);
        self.out.push('\n');
    }

    /// One counter or gauge sample of the current family.
    pub fn sample(&mut self, labels: &[(&str, &str)], v: impl Into<Value>) -> &mut Encoder {
        debug_assert!(matches!(self.kind, Some(Type::Counter | Type::Gauge)));
        self.line("", labels, None, v.into());
        self
    }

    /// One histogram series of the current family.
    pub fn histogram(&mut self, labels: &[(&str, &str)], h: &HistogramSnapshot) -> &mut Encoder {
        debug_assert_eq!(self.kind, Some(Type::Histogram));
        for &(le, n) in &h.buckets {
            self.line("_bucket", labels, Some(("le", le)), Value::Uint(n));
        }
        self.line(
            "_bucket",
            labels,
            Some(("le", f64::INFINITY)),
            Value::Uint(h.count),
        );
        self.line("_sum", labels, None, Value::Float(h.sum));
        self.line("_count", labels, None, Value::Uint(h.count));
        self
    }

    /// The exposition text.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;
    use prometheus_parse::{LineInfo, Scrape, Value as P};

    fn parse(text: &str) -> Scrape {
        for l in text.lines() {
            assert_ne!(LineInfo::parse(l), LineInfo::Ignored, "unparsed line `{l}`");
        }
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
    }

    #[test]
    fn histograms_are_cumulative_and_count_the_overflow() {
        let h = Histogram::new(&[0.001, 0.01, 0.1]);
        for ms in [0, 1, 5, 50, 50, 2000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        // 1 ms is at the bound, so in `le="0.001"`.
        assert_eq!(s.buckets, vec![(0.001, 2), (0.01, 3), (0.1, 5)]);
        assert_eq!(s.count, 6);
        assert!((s.sum - 2.106).abs() < 1e-9);
    }

    #[test]
    fn an_independent_parser_reads_every_line() {
        let h = Histogram::new(LATENCY_BUCKETS);
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_millis(30));
        let mut e = Encoder::new();
        e.family(
            "x_requests_total",
            Type::Counter,
            "Requests.\nBy port \\ status.",
        )
        .sample(&[("port", "pro\"files"), ("status", "200")], 3u64)
        .sample(&[("port", "a\\b\nc"), ("status", "403")], 1u64);
        e.family("x_revision", Type::Gauge, "Revision.")
            .sample(&[], 42i64);
        e.family("x_ratio", Type::Gauge, "Ratio.")
            .sample(&[], f64::INFINITY);
        e.family("x_latency_seconds", Type::Histogram, "Latency.")
            .histogram(&[("port", "plays")], &h.snapshot());
        let text = e.finish();
        assert!(text.contains("# HELP x_requests_total Requests.\\nBy port \\\\ status.\n"));
        assert!(text.contains(r#"x_requests_total{port="pro\"files",status="200"} 3"#));
        assert!(text.contains(r#"x_requests_total{port="a\\b\nc",status="403"} 1"#));
        assert!(text.contains("x_ratio +Inf\n"));
        assert!(text.contains("x_latency_seconds_bucket{port=\"plays\",le=\"0.001\"} 1\n"));
        assert!(text.contains("x_latency_seconds_bucket{port=\"plays\",le=\"+Inf\"} 2\n"));
        let scrape = parse(&text);
        let get = |name: &str| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name)
                .unwrap_or_else(|| panic!("no `{name}` in\n{text}"))
        };
        assert_eq!(get("x_revision").value, P::Gauge(42.0));
        let P::Histogram(b) = &get("x_latency_seconds").value else {
            panic!("not a histogram");
        };
        assert_eq!(b.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!((b[0].count, b[1].count), (0.0, 1.0));
        assert_eq!(b.last().unwrap().count, 2.0);
        assert_eq!(get("x_latency_seconds_count").value, P::Untyped(2.0));
        match get("x_latency_seconds_sum").value {
            P::Untyped(s) => assert!((s - 0.0307).abs() < 1e-9),
            ref v => panic!("{v:?}"),
        }
        assert_eq!(scrape.docs["x_revision"], "Revision.");
    }

    #[test]
    fn names() {
        assert!(valid_name("meshgov_sidecar_requests_total"));
        assert!(valid_name("_x1"));
        assert!(!valid_name("1x"));
        assert!(!valid_name("a-b"));
        assert!(!valid_name(""));
    }
}
