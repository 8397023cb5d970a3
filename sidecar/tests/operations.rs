//! Operating the `meshgov-sidecar` binary as a real process: Prometheus
//! `/metrics` on `listen.metrics`, JSON logs carrying the request id, and
//! graceful shutdown on SIGTERM (drain, audit flushed, exit 0; a second
//! signal exits at once).

use crate::common::*;
use meshgov_audit::show::{Filter, read_filtered};
use meshgov_audit::{Kind, verify_path};
use meshgov_e2e::Signal::{SIGINT, SIGTERM};
use prometheus_parse::{LineInfo, SampleType, Scrape, Value};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Plays of today, one JSON line each.
fn play(i: usize) -> String {
    let day = time::OffsetDateTime::now_utc().date();
    serde_json::json!({"event_id": format!("e{i}"), "user_id": format!("u{i}"), "song_id": "s",
        "artist_id": "a", "played_at": format!("{day}T00:00:01Z"), "duration_ms": 40000 + i,
        "country": "DE", "device": "prototype-x"})
    .to_string()
}

/// A play-events sidecar process with its own directory.
struct Proc {
    process: Process,
    dir: tempfile::TempDir,
    data: SocketAddr,
    metrics: SocketAddr,
    keys: Keys,
}

impl Proc {
    /// `upstream` is the `[upstream]` table's body; `extra` more tables.
    fn start(upstream: &str, extra: &str, rust_log: &str) -> Proc {
        let keys = Keys::generate();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (descriptor_path, descriptor) = example_descriptor("play-events");
        let gov = governance_key();
        std::fs::write(
            d.join("bundle.json"),
            signed_bundle(&gov, &descriptor, 7, 3600),
        )
        .unwrap();
        let [data, metrics] = free_addrs();
        let config = ProcessConfig {
            top: "log_format = \"json\"",
            listen: &format!("data = \"{data}\"\nmetrics = \"{metrics}\""),
            upstream,
            tables: extra,
        }
        .write(d, &descriptor_path, &gov, &keys);
        let process = Process::spawn(
            &mut sidecar_command(&config, rust_log),
            &d.join("stderr.log"),
        )
        .unwrap();
        let p = Proc {
            process,
            dir,
            data,
            metrics,
            keys,
        };
        p.wait_ready();
        p
    }

    fn wait_ready(&self) {
        assert!(
            ready_within(self.data, Duration::from_secs(30)),
            "the sidecar did not become ready: {}",
            self.stderr()
        );
    }

    fn signal(&self, sig: Signal) {
        self.process.signal(sig).unwrap();
    }

    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        self.process.wait_exit(within).unwrap()
    }

    fn stderr(&self) -> String {
        self.process.stderr()
    }

    fn audit(&self) -> PathBuf {
        self.dir.path().join("state/audit")
    }

    fn audit_key(&self) -> meshgov_bundle::PublicKey {
        std::fs::read_to_string(self.dir.path().join("state/audit-signing.pub"))
            .unwrap()
            .parse()
            .unwrap()
    }

    fn token(&self, sub: &str, group: &str, purpose: &str) -> String {
        token(&self.keys, sub, &[group], purpose)
    }
}

/// One blocking request; status, headers and (dechunked) body.
fn request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> Resp {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).unwrap();
    parse_response(&buf)
}

/// Every line parses, every family has HELP and TYPE, counters end in
/// `_total`; the samples.
fn scrape(addr: SocketAddr) -> (Scrape, String) {
    let r = request(addr, "GET", "/metrics", None, "");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    let mut typed = HashMap::new();
    for l in text.lines() {
        match LineInfo::parse(l) {
            LineInfo::Ignored => panic!("unparsed line `{l}`"),
            LineInfo::Type {
                metric_name,
                metric_alias,
                sample_type,
            } => {
                let name = metric_alias.unwrap_or(metric_name);
                if sample_type == SampleType::Counter {
                    assert!(name.ends_with("_total"), "counter `{name}`");
                }
                assert!(
                    typed.insert(name.clone(), sample_type).is_none(),
                    "{name} twice"
                );
            }
            _ => {}
        }
    }
    let s = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    for name in typed.keys() {
        assert!(s.docs.contains_key(name), "no HELP for `{name}`");
    }
    (s, text)
}

fn find<'a>(
    s: &'a Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Vec<&'a prometheus_parse::Sample> {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .collect()
}

/// The one sample of `name` with exactly `labels`.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = find(s, name, labels)
        .into_iter()
        .filter(|x| x.labels.len() == labels.len())
        .collect();
    assert_eq!(found.len(), 1, "`{name}` {labels:?}: {found:?}");
    match found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn metrics_scrape_follows_the_requests_made() {
    let dir = tempfile::tempdir().unwrap();
    let plays: String = (0..20).map(|i| format!("{}\n", play(i))).collect();
    write_upstream(dir.path(), "plays", "today.ndjson", &plays);
    let data = dir.path().join("data").display().to_string();
    let p = Proc::start(&format!("path = {data:?}"), "", "warn");
    let payments = p.token("pat", "payments", "royalty-payments");
    let marketing = p.token("ann", "marketing", "campaign-analytics");
    // allow, deny, 401, an unknown port, and an aggregate.
    let read = request(
        p.data,
        "GET",
        "/v1/ports/plays/records?limit=5",
        Some(&payments),
        "",
    );
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.lines().len(), 5);
    let deny = request(
        p.data,
        "GET",
        "/v1/ports/plays/records",
        Some(&marketing),
        "",
    );
    assert_eq!(deny.status, 403);
    let anon = request(p.data, "GET", "/v1/ports/plays/records", None, "");
    assert_eq!(anon.status, 401);
    let unknown = request(p.data, "GET", "/v1/ports/nope/records", Some(&payments), "");
    assert_eq!(unknown.status, 404);
    let agg = request(
        p.data,
        "POST",
        "/v1/ports/plays/aggregate",
        Some(&marketing),
        r#"{"aggregations":[{"count":{}}],"epsilon":0.5}"#,
    );
    assert_eq!(agg.status, 200, "{}", agg.text());
    let spent = agg.json()["cost"]["epsilon"].as_f64().unwrap();

    // Five decisions and the read's completion: wait until the completion
    // (submitted when the body ended) is durable.
    let t0 = Instant::now();
    let (s, text) = loop {
        let (s, text) = scrape(p.metrics);
        if value(&s, "meshgov_sidecar_audit_head_sequence", &[]) >= 6.0 {
            break (s, text);
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let req = |port, action, decision, status| {
        value(
            &s,
            "meshgov_sidecar_requests_total",
            &[
                ("port", port),
                ("action", action),
                ("decision", decision),
                ("status", status),
            ],
        )
    };
    // The process families Prometheus client libraries write.
    assert!(
        value(&s, "process_resident_memory_bytes", &[]) > 1e6,
        "{text}"
    );
    assert!(value(&s, "process_cpu_seconds_total", &[]) > 0.0, "{text}");
    assert!(value(&s, "process_open_fds", &[]) >= 3.0, "{text}");
    let started = value(&s, "process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started > now - 600.0 && started <= now + 1.0,
        "{started} {now}"
    );
    assert_eq!(req("plays", "read", "allow", "200"), 1.0);
    assert_eq!(req("plays", "read", "deny", "403"), 1.0);
    assert_eq!(req("plays", "read", "error", "401"), 1.0);
    assert_eq!(req("(unknown)", "read", "error", "404"), 1.0);
    assert_eq!(req("plays", "aggregate", "allow", "200"), 1.0);
    assert_eq!(
        find(&s, "meshgov_sidecar_requests_total", &[]).len(),
        5,
        "only the series that happened: {text}"
    );
    for (code, n) in [
        ("forbidden", 1.0),
        ("unauthorized", 1.0),
        ("unknown_port", 1.0),
    ] {
        assert_eq!(
            value(&s, "meshgov_sidecar_refusals_total", &[("code", code)]),
            n
        );
    }
    // Latency: three reads on `plays` (allow, deny, 401).
    let h = find(
        &s,
        "meshgov_sidecar_request_duration_seconds",
        &[("port", "plays"), ("action", "read")],
    );
    let Value::Histogram(b) = &h[0].value else {
        panic!("{:?}", h[0]);
    };
    assert!(
        b.windows(2)
            .all(|w| w[0].count <= w[1].count && w[0].less_than < w[1].less_than)
    );
    assert_eq!(b.last().unwrap().less_than, f64::INFINITY);
    assert_eq!(b.last().unwrap().count, 3.0);
    assert_eq!(
        value(
            &s,
            "meshgov_sidecar_request_duration_seconds_count",
            &[("port", "plays"), ("action", "read")]
        ),
        3.0
    );
    // Records and bytes out are what the read's body held.
    assert_eq!(
        value(
            &s,
            "meshgov_sidecar_records_out_total",
            &[("port", "plays")]
        ),
        5.0
    );
    assert_eq!(
        value(&s, "meshgov_sidecar_bytes_out_total", &[("port", "plays")]),
        read.body.len() as f64
    );
    assert_eq!(value(&s, "meshgov_sidecar_streams_in_flight", &[]), 0.0);
    assert_eq!(
        value(
            &s,
            "meshgov_sidecar_stream_duration_seconds_count",
            &[("port", "plays")]
        ),
        1.0
    );
    // The bundle.
    assert_eq!(value(&s, "meshgov_sidecar_bundle_revision", &[]), 7.0);
    assert_eq!(value(&s, "meshgov_sidecar_serving", &[]), 1.0);
    let age = value(&s, "meshgov_sidecar_bundle_age_seconds", &[]);
    assert!((60.0..120.0).contains(&age), "built a minute ago: {age}");
    let left = value(&s, "meshgov_sidecar_bundle_expiry_seconds", &[]);
    assert!((3000.0..=3600.0).contains(&left), "{left}");
    // The privacy budget: 2.0 for campaign-analytics, 10.0 for the product.
    assert_eq!(
        value(
            &s,
            "meshgov_sidecar_privacy_spends_total",
            &[("outcome", "granted")]
        ),
        1.0
    );
    let consumer = value(
        &s,
        "meshgov_sidecar_privacy_epsilon_remaining",
        &[
            ("rule", "dp.play-events"),
            ("consumer", "ann"),
            ("purpose", "campaign-analytics"),
        ],
    );
    assert!((consumer - (2.0 - spent)).abs() < 1e-9, "{consumer}");
    let product = value(
        &s,
        "meshgov_sidecar_privacy_product_epsilon_remaining",
        &[("rule", "dp.play-events")],
    );
    assert!((product - (10.0 - spent)).abs() < 1e-9, "{product}");
    // The audit log: six durable events, synced in at least one batch.
    assert_eq!(value(&s, "meshgov_sidecar_audit_queue_depth", &[]), 0.0);
    assert_eq!(value(&s, "meshgov_sidecar_audit_failed", &[]), 0.0);
    assert!(value(&s, "meshgov_sidecar_audit_fsync_seconds_count", &[]) >= 1.0);
    assert_eq!(
        value(&s, "meshgov_sidecar_audit_wait_seconds_count", &[]),
        5.0
    );
    assert_eq!(
        value(
            &s,
            "meshgov_sidecar_plugin_failures_total",
            &[("kind", "trap")]
        ),
        0.0
    );
    // Nothing secret or classified: no token, no field value.
    for secret in [&payments, &marketing, "prototype-x", "u1\"", PSEUDONYM_KEY] {
        assert!(!text.contains(secret), "`{secret}` leaked into /metrics");
    }
    // The metrics listener serves nothing else.
    assert_eq!(
        request(p.metrics, "GET", "/v1/ports/plays/records", None, "").status,
        404
    );
}

#[test]
fn json_logs_carry_the_request_span() {
    let dir = tempfile::tempdir().unwrap();
    let plays: String = (0..3).map(|i| format!("{}\n", play(i))).collect();
    write_upstream(dir.path(), "plays", "today.ndjson", &plays);
    let data = dir.path().join("data").display().to_string();
    let mut p = Proc::start(
        &format!("path = {data:?}"),
        "",
        "info,meshgov_sidecar=debug",
    );
    let payments = p.token("pat", "payments", "royalty-payments");
    let read = request(
        p.data,
        "GET",
        "/v1/ports/plays/records",
        Some(&payments),
        "",
    );
    assert_eq!(read.status, 200);
    let rid = read.header("x-request-id").unwrap().to_string();
    let deny = request(
        p.data,
        "GET",
        "/v1/ports/plays/records",
        Some(&p.token("ann", "marketing", "campaign-analytics")),
        "",
    );
    assert_eq!(deny.status, 403);
    let deny_rid = deny.json()["request_id"].as_str().unwrap().to_string();
    assert_eq!(deny.header("x-request-id"), Some(deny_rid.as_str()));
    p.signal(SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let log = p.stderr();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of = |rid: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["span"]["request_id"] == rid)
            .collect()
    };
    let read_lines = of(&rid);
    let answered = read_lines
        .iter()
        .find(|l| l["fields"]["message"] == "answered")
        .unwrap_or_else(|| panic!("no `answered` line for {rid}:\n{log}"));
    assert_eq!(answered["level"], "DEBUG");
    assert_eq!(answered["fields"]["status"], 200);
    assert_eq!(answered["span"]["name"], "request");
    assert_eq!(answered["span"]["port"], "plays");
    assert_eq!(answered["span"]["action"], "read");
    assert_eq!(answered["span"]["consumer"], "pat");
    // The stream's own line, logged by another task, is in the same span.
    assert!(
        read_lines
            .iter()
            .any(|l| l["fields"]["message"] == "read finished" && l["fields"]["records_out"] == 3),
        "{log}"
    );
    let denied = of(&deny_rid);
    assert!(
        denied
            .iter()
            .any(|l| l["fields"]["status"] == 403 && l["span"]["consumer"] == "ann"),
        "{log}"
    );
    // Lifecycle at info.
    for msg in [
        "data port listening",
        "shutting down: refusing new connections, draining reads in flight",
        "stopped",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l["level"] == "INFO" && l["fields"]["message"] == msg),
            "no `{msg}` line:\n{log}"
        );
    }
    // Never a token or a field value.
    for secret in [payments.as_str(), "prototype-x", "u1\"", PSEUDONYM_KEY] {
        assert!(!log.contains(secret), "`{secret}` in the log");
    }
}

/// An NDJSON upstream on loopback that sends `lines` plays, one every
/// `every`, counting what it has sent.
struct Trickle {
    addr: SocketAddr,
    sent: Arc<AtomicUsize>,
}

fn trickle(lines: usize, every: Duration) -> Trickle {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&sent);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if c.read(&mut b).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n",
                );
                for i in 0..lines {
                    let line = format!("{}\n", play(i));
                    if write!(c, "{:x}\r\n{line}\r\n", line.len()).is_err() {
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(every);
                }
                let _ = c.write_all(b"0\r\n\r\n");
            });
        }
    });
    Trickle { addr, sent }
}

/// Starts a read and returns once its response head has arrived.
fn begin_read(addr: SocketAddr, token: &str, rid: &str) -> (TcpStream, Vec<u8>) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        c,
        "GET /v1/ports/plays/records HTTP/1.1\r\nHost: t\r\nConnection: close\r\nx-request-id: {rid}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = c.read(&mut b).unwrap();
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&b[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    (c, got)
}

/// Waits until the data port refuses connections.
fn wait_refused(addr: SocketAddr) {
    let t0 = Instant::now();
    while TcpStream::connect(addr).is_ok() {
        assert!(t0.elapsed() < Duration::from_secs(10), "still accepting");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The events of the request sent with `x-request-id: rid`: its decision
/// (which records the client's id) and what joins it by the sidecar's id.
fn events_of(audit: &Path, rid: &str) -> Vec<meshgov_audit::StoredEvent> {
    let all: Vec<_> = read_filtered(audit, &Filter::default())
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    let own = all
        .iter()
        .find(|e| e.client_request_id.as_deref() == Some(rid))
        .and_then(|e| e.request_id.clone());
    all.into_iter()
        .filter(|e| own.is_some() && e.request_id == own)
        .collect()
}

#[test]
fn sigterm_drains_the_stream_in_flight_and_exits_0() {
    const LINES: usize = 30;
    let up = trickle(LINES, Duration::from_millis(100));
    let mut p = Proc::start(
        &format!("kind = \"http\"\nurl = \"http://{}\"", up.addr),
        "",
        "info",
    );
    let token = p.token("pat", "payments", "royalty-payments");
    let (mut c, mut got) = begin_read(p.data, &token, "drain-1");
    while up.sent.load(Ordering::SeqCst) < 3 {
        std::thread::sleep(Duration::from_millis(10));
    }
    p.signal(SIGTERM);
    wait_refused(p.data);
    let sent = up.sent.load(Ordering::SeqCst);
    assert!(
        sent < LINES,
        "the stream was over before the drain began ({sent} lines)"
    );
    // The read in flight goes on to its end.
    c.read_to_end(&mut got).unwrap();
    let r = parse_response(&got);
    assert!(
        got.ends_with(b"0\r\n\r\n"),
        "the chunked body was not terminated"
    );
    let recs = r.lines();
    assert_eq!(recs.len(), LINES);
    assert_eq!(recs[LINES - 1]["event_id"], format!("e{}", LINES - 1));
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    // Every event is durable, under a final checkpoint, and the chain verifies.
    let summary = verify_path(&p.audit(), &p.audit_key()).unwrap();
    assert_eq!(summary.last_checkpoint_seq, summary.last_seq, "{summary:?}");
    let evs = events_of(&p.audit(), "drain-1");
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert_eq!(evs[0].kind, Kind::Decision);
    assert_eq!(evs[0].status, Some(200));
    assert_eq!(evs[1].kind, Kind::Completion);
    assert_eq!(evs[1].outcome.as_deref(), Some("complete"));
    assert_eq!(evs[1].records, Some(LINES as u64));
}

#[test]
fn a_stream_longer_than_the_grace_period_is_cut_and_audited_as_shutdown() {
    let up = trickle(1000, Duration::from_millis(50));
    let mut p = Proc::start(
        &format!("kind = \"http\"\nurl = \"http://{}\"", up.addr),
        "[limits]\ndrain_timeout_ms = 500",
        "info",
    );
    let token = p.token("pat", "payments", "royalty-payments");
    let (mut c, mut got) = begin_read(p.data, &token, "cut-1");
    p.signal(SIGTERM);
    wait_refused(p.data);
    let t0 = Instant::now();
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(10));
    let _ = c.read_to_end(&mut got);
    assert!(
        !got.ends_with(b"0\r\n\r\n"),
        "a cut stream must not look complete"
    );
    assert!(up.sent.load(Ordering::SeqCst) < 1000);
    verify_path(&p.audit(), &p.audit_key()).unwrap();
    let evs = events_of(&p.audit(), "cut-1");
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert_eq!(evs[1].outcome.as_deref(), Some("shutdown"));
}

#[test]
fn a_second_signal_exits_at_once() {
    let up = trickle(1000, Duration::from_millis(100));
    let mut p = Proc::start(
        &format!("kind = \"http\"\nurl = \"http://{}\"", up.addr),
        "",
        "info",
    );
    let token = p.token("pat", "payments", "royalty-payments");
    let (_c, _) = begin_read(p.data, &token, "forced-1");
    p.signal(SIGTERM);
    wait_refused(p.data);
    // Still draining (the default grace period is 10 s, the stream 100 s).
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        p.process.running().unwrap(),
        "exited before the second signal"
    );
    let t0 = Instant::now();
    p.signal(SIGINT);
    assert_eq!(p.wait_exit(Duration::from_secs(5)), Some(130));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(up.sent.load(Ordering::SeqCst) < 1000);
    // What was acknowledged is durable: the read's decision, in a chain
    // that verifies.
    verify_path(&p.audit(), &p.audit_key()).unwrap();
    let evs = events_of(&p.audit(), "forced-1");
    assert_eq!(evs[0].kind, Kind::Decision);
    assert_eq!(evs[0].status, Some(200));
}

/// Waits until the process's log has a line holding `text`.
fn wait_logged(p: &Proc, text: &str) {
    let t0 = Instant::now();
    while !p.stderr().contains(text) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no `{text}` in:\n{}",
            p.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGHUP reads the config file again and applies `[auth]`: a new
/// identity-provider key verifies without a restart, the replaced one no
/// longer does, and a file that does not load changes nothing. The process
/// keeps serving throughout.
#[test]
fn sighup_reloads_the_issuer_keys_and_keeps_serving() {
    let mut p = Proc::start("", "", "info");
    let plays = p.dir.path().join("data/plays");
    std::fs::create_dir_all(&plays).unwrap();
    std::fs::write(plays.join("today.ndjson"), play(1) + "\n").unwrap();
    let path = "/v1/ports/plays/records";
    let old = p.token("pat", "payments", "royalty-payments");
    assert_eq!(request(p.data, "GET", path, Some(&old), "").status, 200);
    let rotated = Keys::generate();
    let config = p.dir.path().join("sidecar.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let (a, b) = (b64u(&p.keys.ed_public), b64u(&rotated.ed_public));
    assert!(text.contains(&a));
    std::fs::write(&config, text.replace(&a, &b)).unwrap();
    p.signal(meshgov_e2e::Signal::SIGHUP);
    wait_logged(
        &p,
        "reloaded [auth]: issuer `https://idp.media.example`: keys changed",
    );
    let new = token(&rotated, "pat", &["payments"], "royalty-payments");
    assert_eq!(request(p.data, "GET", path, Some(&new), "").status, 200);
    let r = request(p.data, "GET", path, Some(&old), "");
    assert_eq!(r.status, 401, "{}", r.text());
    // A broken file: refused, and the keys in force stay.
    std::fs::write(&config, "[auth\n").unwrap();
    p.signal(meshgov_e2e::Signal::SIGHUP);
    wait_logged(&p, "reload refused, the settings in force stay");
    assert_eq!(request(p.data, "GET", path, Some(&new), "").status, 200);
    assert!(p.process.running().unwrap());
    p.signal(SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
}

/// A first start has no bundle: that is said at INFO, not as an error, and
/// a log that is not a terminal carries no colour codes.
#[test]
fn a_first_start_without_a_bundle_logs_info_without_colours() {
    let keys = Keys::generate();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (descriptor_path, _) = example_descriptor("play-events");
    let [data] = free_addrs();
    let config = ProcessConfig {
        top: "",
        listen: &format!("data = \"{data}\""),
        upstream: "",
        tables: "",
    }
    .write(d, &descriptor_path, &governance_key(), &keys);
    let mut p =
        Process::spawn(&mut sidecar_command(&config, "info"), &d.join("stderr.log")).unwrap();
    let t0 = Instant::now();
    while !p.stderr().contains("waiting for the first bundle") {
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", p.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = p.stderr();
    assert!(!log.contains('\u{1b}'), "colour codes in a file:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("waiting for the first bundle"))
        .unwrap();
    assert!(line.contains(" INFO "), "{line}");
    assert!(!log.contains(" ERROR "), "{log}");
    p.signal(SIGTERM).unwrap();
    assert_eq!(p.wait_exit(Duration::from_secs(20)).unwrap(), Some(0));
}
