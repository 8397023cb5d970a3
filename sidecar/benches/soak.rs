//! Load soak: mixed traffic against one real `meshgov-sidecar` process on
//! loopback for ten minutes, then the invariants.
//!
//! ```sh
//! cargo bench -p meshgov-sidecar --bench soak                    # 10 minutes
//! SOAK_SECONDS=60 cargo bench -p meshgov-sidecar --bench soak    # a short one
//! ```
//!
//! Traffic (`SOAK_CONCURRENCY` clients, 4 by default), over the example
//! `play-events` product with ~20,000 plays in daily files:
//!
//! - reads as a data scientist (allowed) and as the payments pipeline
//!   (allowed, row-filtered), each of a random `limit`;
//! - reads as an outsider (403) and without a token (401);
//! - differentially private counts as marketing analysts (a fresh subject
//!   every 150 queries, each query a new window so none is a free repeat),
//!   until the product's budget for the window is spent, then 429s;
//! - a newly signed bundle revision pushed to the control port every 10 s.
//!
//! Afterwards it checks, and prints:
//!
//! - no 5xx at all (nothing is injected here; see `tests/faults.rs` for
//!   faults), and every answer has the status its request calls for;
//! - RSS flat: the median of the last minute within 10% (and 4 MB) of the
//!   median of the first minute after warm-up;
//! - the audit log verifies, and every request sent has its decision event;
//! - the budget: for every subject, and for the product, the limit minus
//!   the lowest remaining the sidecar reported equals the sum of the costs it
//!   charged in the answers, and the audit events' costs sum to the same.
//!
//! The process exits 1 when an invariant fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../tests/common/mod.rs"]
mod common;
use meshgov_e2e::bench::knob;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const EPSILON: f64 = 0.01;
const QUERIES_PER_SUBJECT: u64 = 150;
const PUSH_EVERY: Duration = Duration::from_secs(10);
const WARMUP: Duration = Duration::from_secs(30);

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// ~20,000 plays over the last week, one file per day.
fn write_plays(dir: &Path) -> u64 {
    let mut n = 0;
    let now = now();
    for day in 0..7 {
        let start = now - (7 - day) * 86_400;
        let date = meshgov_sidecar::clock::rfc3339(start);
        let mut text = String::new();
        for i in 0..2_900 {
            let at = meshgov_sidecar::clock::rfc3339(start + i * 29);
            text.push_str(&format!(
                "{{\"event_id\":\"e-{day}-{i}\",\"user_id\":\"u-{}\",\"song_id\":\"s-{}\",\"artist_id\":\"urn:mesh:artist:a{}\",\"played_at\":\"{at}\",\"duration_ms\":{},\"country\":\"{}\",\"device\":\"Pixel {}\"}}\n",
                i % 997,
                i % 300,
                i % 60,
                5_000 + (i * 7919) % 295_000,
                ["DE", "SE", "NO", "GB"][(i % 4) as usize],
                i % 9
            ));
            n += 1;
        }
        write_upstream(dir, "plays", &format!("{}.ndjson", &date[..10]), &text);
    }
    n
}

#[derive(Default)]
struct Tally {
    /// (operation, status) → count.
    statuses: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Status answers that contradict the request.
    wrong: Mutex<Vec<String>>,
    /// Every request id sent, with its status.
    sent: Mutex<Vec<(String, u16)>>,
    /// Subject → (sum of costs charged, lowest reported remaining).
    spend: Mutex<HashMap<String, (f64, Option<f64>)>>,
    /// The lowest product-wide remaining reported.
    product_left: Mutex<Option<f64>>,
    records: AtomicU64,
    next: AtomicU64,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn call(
    c: &HttpClient,
    method: &str,
    url: String,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (u16, Bytes) {
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    match c
        .request(b.body(Full::new(Bytes::from(body))).unwrap())
        .await
    {
        Ok(r) => {
            let status = r.status().as_u16();
            match r.into_body().collect().await {
                Ok(b) => (status, b.to_bytes()),
                // A broken stream: counted as a server failure.
                Err(_) => (599, Bytes::new()),
            }
        }
        Err(_) => (598, Bytes::new()),
    }
}

struct World {
    data: SocketAddr,
    client: HttpClient,
    tally: Tally,
    tokens: HashMap<&'static str, String>,
    keys: Keys,
    to: i64,
}

impl World {
    fn rid(&self) -> String {
        format!("soak-{}", self.tally.next.fetch_add(1, Ordering::Relaxed))
    }

    fn note(&self, op: &'static str, rid: String, status: u16, want: &[u16]) {
        *self
            .tally
            .statuses
            .lock()
            .unwrap()
            .entry((op, status))
            .or_default() += 1;
        if !want.contains(&status) {
            self.tally
                .wrong
                .lock()
                .unwrap()
                .push(format!("{op} {rid}: {status}, expected {want:?}"));
        }
        self.tally.sent.lock().unwrap().push((rid, status));
    }

    async fn read(&self, op: &'static str, who: Option<&str>, limit: u64, want: &[u16]) {
        let rid = self.rid();
        let mut h = vec![("x-request-id", rid.clone())];
        if let Some(w) = who {
            h.push(("authorization", format!("Bearer {}", self.tokens[w])));
        }
        let url = format!("http://{}/v1/ports/plays/records?limit={limit}", self.data);
        let (status, body) = call(&self.client, "GET", url, &h, vec![]).await;
        if status == 200 {
            let n = body.iter().filter(|b| **b == b'\n').count() as u64;
            self.tally.records.fetch_add(n, Ordering::Relaxed);
        }
        self.note(op, rid, status, want);
    }

    async fn aggregate(&self, k: u64) {
        let subject = format!("soak-analyst-{}", k / QUERIES_PER_SUBJECT);
        let token = token(&self.keys, &subject, &["marketing"], "campaign-analytics");
        let rid = self.rid();
        let body = serde_json::json!({
            "aggregations": [{"count": {}}], "epsilon": EPSILON,
            "from": meshgov_sidecar::clock::rfc3339(self.to - 1_000_000 - k as i64),
            "to": meshgov_sidecar::clock::rfc3339(self.to),
        });
        let h = [
            ("x-request-id", rid.clone()),
            ("authorization", format!("Bearer {token}")),
            ("content-type", "application/json".into()),
        ];
        let url = format!("http://{}/v1/ports/plays/aggregate", self.data);
        let (status, b) = call(&self.client, "POST", url, &h, body.to_string().into_bytes()).await;
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        let left = v["budget"]["consumer"]["epsilon_remaining"].as_f64();
        {
            let mut spend = self.tally.spend.lock().unwrap();
            let e = spend.entry(subject).or_insert((0.0, None));
            if status == 200 && v["cached"] == false {
                e.0 += v["cost"]["epsilon"].as_f64().unwrap_or(f64::NAN);
            }
            // Remaining only falls, but answers to one subject's concurrent
            // queries can arrive out of order: keep the lowest.
            if let Some(l) = left {
                e.1 = Some(e.1.map_or(l, |old: f64| old.min(l)));
            }
        }
        if let Some(p) = v["budget"]["product"]["epsilon_remaining"].as_f64() {
            let mut pl = self.tally.product_left.lock().unwrap();
            *pl = Some(pl.map_or(p, |old: f64| old.min(p)));
        }
        self.note("aggregate", rid, status, &[200, 429]);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from argv.
    let seconds = knob("SOAK_SECONDS", 600, 12) as u64;
    let concurrency = knob("SOAK_CONCURRENCY", 4, 2);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let keys = Keys::generate();
    let gov = governance_key();
    let (descriptor_path, descriptor) = example_descriptor("play-events");
    let policies = policies_for(&descriptor);
    std::fs::write(
        d.join("bundle.json"),
        sign_policies(&gov, &policies, 1, 3600),
    )
    .unwrap();
    let plays = write_plays(d);
    let [data, control] = free_addrs();
    let config = ProcessConfig {
        listen: &format!("data = \"{data}\"\ncontrol = \"{control}\""),
        ..ProcessConfig::default()
    }
    .write(d, &descriptor_path, &gov, &keys);
    let log = std::fs::File::create(d.join("sidecar.log")).unwrap();
    let mut child = Process::spawn_unlogged(sidecar_command(&config, "warn").stderr(log)).unwrap();
    let pid = child.id();
    println!(
        "soak: {seconds} s, {concurrency} clients, sidecar pid {pid} on {data}, {plays} plays"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let world = Arc::new(World {
        data,
        client: Client::builder(TokioExecutor::new()).build_http(),
        tally: Tally::default(),
        tokens: HashMap::from([
            (
                "scientist",
                token(&keys, "dana", &["data-science"], "product-analytics"),
            ),
            (
                "payments",
                token(&keys, "pay-pipeline", &["payments"], "royalty-payments"),
            ),
            ("outsider", token(&keys, "olaf", &[], "product-analytics")),
        ]),
        keys,
        to: now(),
    });
    let (rss, pushes, pushed_ok) = rt.block_on(async {
        // Ready?
        let t0 = Instant::now();
        loop {
            let (s, _) = call(
                &world.client,
                "GET",
                format!("http://{data}/readyz"),
                &[],
                vec![],
            )
            .await;
            if s == 200 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the sidecar did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let aggregates = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        for w in 0..concurrency {
            let (world, stop, aggregates) = (
                Arc::clone(&world),
                Arc::clone(&stop),
                Arc::clone(&aggregates),
            );
            workers.push(tokio::spawn(async move {
                let mut rng = (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                while !stop.load(Ordering::Relaxed) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let limit = 1 + rng % 200;
                    match rng % 20 {
                        0..=9 => world.read("read", Some("scientist"), limit, &[200]).await,
                        10..=12 => {
                            world
                                .read("read filtered", Some("payments"), limit, &[200])
                                .await
                        }
                        13..=14 => world.read("denied", Some("outsider"), limit, &[403]).await,
                        15 => world.read("no token", None, limit, &[401]).await,
                        _ => {
                            world
                                .aggregate(aggregates.fetch_add(1, Ordering::Relaxed))
                                .await
                        }
                    }
                }
            }));
        }
        let start = Instant::now();
        let deadline = start + Duration::from_secs(seconds);
        let mut rss = Vec::new();
        let (mut pushes, mut pushed_ok, mut revision) = (0u64, 0u64, 1u64);
        let mut next_push = start + PUSH_EVERY;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            rss.push((start.elapsed(), rss_kb(pid)));
            if Instant::now() >= next_push {
                next_push += PUSH_EVERY;
                revision += 1;
                let bundle = sign_policies(&gov, &policies, revision, 3600);
                let (s, b) = call(
                    &world.client,
                    "PUT",
                    format!("http://{control}/control/v1/bundle"),
                    &[],
                    bundle,
                )
                .await;
                pushes += 1;
                if s == 200 {
                    pushed_ok += 1;
                } else {
                    world.tally.wrong.lock().unwrap().push(format!(
                        "push of revision {revision}: {s} {}",
                        String::from_utf8_lossy(&b)
                    ));
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.await.unwrap();
        }
        (rss, pushes, pushed_ok)
    });
    let _ = child.signal(Signal::SIGTERM);
    let _ = child.wait_exit(Duration::from_secs(30));
    child.kill();
    report(d, &world.tally, &policies, &rss, pushes, pushed_ok, seconds);
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn report(
    d: &Path,
    t: &Tally,
    policies: &meshgov_core::Policies,
    rss: &[(Duration, u64)],
    pushes: u64,
    pushed_ok: u64,
    seconds: u64,
) {
    let mut failed = Vec::new();
    let statuses = t.statuses.lock().unwrap();
    let total: u64 = statuses.values().sum();
    println!(
        "\nrequests: {total} ({:.0}/s)",
        total as f64 / seconds as f64
    );
    for ((op, status), n) in statuses.iter() {
        println!("  {op:<14} {status}  {n}");
    }
    let fivexx: u64 = statuses
        .iter()
        .filter(|((_, s), _)| *s >= 500)
        .map(|(_, n)| n)
        .sum();
    println!("records streamed: {}", t.records.load(Ordering::Relaxed));
    println!("bundle pushes: {pushes}, ACKed {pushed_ok}");
    if fivexx > 0 {
        failed.push(format!("{fivexx} answers were 5xx"));
    }
    let wrong = t.wrong.lock().unwrap();
    if !wrong.is_empty() {
        failed.push(format!(
            "{} answers were not what the request calls for, e.g. {}",
            wrong.len(),
            wrong[0]
        ));
    }

    // RSS: first minute after warm-up against the last minute.
    let window = |from: Duration, to: Duration| -> Vec<u64> {
        rss.iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, k)| *k)
            .collect()
    };
    let end = rss.last().map_or(Duration::ZERO, |(t, _)| *t);
    let early = median(window(WARMUP, WARMUP + Duration::from_secs(60)));
    let late = median(window(
        end.saturating_sub(Duration::from_secs(60)),
        end + Duration::from_secs(1),
    ));
    let peak = rss.iter().map(|(_, k)| *k).max().unwrap_or(0);
    println!(
        "RSS: {early} kB median in the first minute after warm-up, {late} kB in the last minute, {peak} kB peak"
    );
    if early > 0 && late > early + (early / 10).max(4096) {
        failed.push(format!("RSS grew from {early} kB to {late} kB"));
    }

    // The audit log.
    let key: meshgov_bundle::PublicKey = std::fs::read_to_string(d.join("state/audit-signing.pub"))
        .unwrap()
        .parse()
        .unwrap();
    match meshgov_audit::verify_path(&d.join("state/audit"), &key) {
        Ok(s) => println!("audit: {s}"),
        Err(e) => failed.push(format!("the audit log does not verify: {e}")),
    }
    let events =
        meshgov_audit::show::read_filtered(&d.join("state/audit"), &Default::default()).unwrap();
    let mut decided: HashMap<String, Option<u16>> = HashMap::new();
    let mut audited_cost = 0.0;
    for (e, _) in &events {
        if e.kind == meshgov_audit::Kind::Decision {
            if let Some(r) = &e.client_request_id {
                decided.insert(r.clone(), e.status);
            }
            if e.status == Some(200) && e.action.as_deref() == Some("aggregate") {
                audited_cost += e.privacy_cost.unwrap_or(0.0);
            }
        }
    }
    let sent = t.sent.lock().unwrap();
    let missing: Vec<&(String, u16)> = sent
        .iter()
        .filter(|(rid, status)| decided.get(rid) != Some(&Some(*status)))
        .collect();
    println!(
        "audit: {} of {} requests found with their status",
        sent.len() - missing.len(),
        sent.len()
    );
    if let Some((rid, s)) = missing.first() {
        failed.push(format!(
            "{} requests lack their decision event, e.g. {rid} ({s})",
            missing.len()
        ));
    }

    // The budget.
    let rule = &policies.privacy[0];
    let consumer_limit = rule
        .purpose_budgets
        .iter()
        .find(|b| b.purpose == "campaign-analytics")
        .map_or(rule.epsilon_budget, |b| {
            b.epsilon_budget.min(rule.epsilon_budget)
        });
    let spend = t.spend.lock().unwrap();
    let mut charged = 0.0;
    let mut off = 0;
    for (subject, (sum, left)) in spend.iter() {
        charged += sum;
        if let Some(left) = left
            && (consumer_limit - left - sum).abs() > 1e-6
        {
            off += 1;
            failed.push(format!(
                "{subject}: limit {consumer_limit} − remaining {left} ≠ charged {sum}"
            ));
        }
    }
    let product_left = *t.product_left.lock().unwrap();
    println!(
        "budget: {} subjects, ε {charged:.4} charged in answers, ε {audited_cost:.4} in audit events, product remaining {product_left:?} of {:?}",
        spend.len(),
        rule.product_epsilon_budget
    );
    if let (Some(limit), Some(left)) = (rule.product_epsilon_budget, product_left)
        && (limit - left - charged).abs() > 1e-6
    {
        failed.push(format!(
            "product: limit {limit} − remaining {left} ≠ charged {charged}"
        ));
    }
    if (audited_cost - charged).abs() > 1e-6 {
        failed.push(format!(
            "the audit log records ε {audited_cost}, the answers charged ε {charged}"
        ));
    }
    if off == 0 {
        println!("budget: every subject's limit − remaining equals what it was charged");
    }

    if failed.is_empty() {
        println!("\nsoak: PASS");
    } else {
        println!("\nsoak: FAIL");
        for f in &failed {
            println!("  - {f}");
        }
        std::process::exit(1);
    }
}
