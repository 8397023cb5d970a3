//! End-to-end load benchmark of the data port.
//!
//! ```sh
//! cargo bench -p meshgov-sidecar --bench loadbench
//! ```
//!
//! In one run, on loopback, over the same seeded NDJSON directory of ~1 KB
//! records, it measures five servers, each its own process (this binary
//! re-executed, nginx, or the release sidecar binary):
//!
//! - **(a) direct**: a minimal hyper server streaming the port's files (the
//!   direct upstream read);
//! - **(b) pass-through**: a minimal hyper reverse proxy in front of (a);
//! - **(c) sidecar**: `meshgov-sidecar` reading the directory itself, with a
//!   signed bundle, JWT authentication, authorization and masking (the
//!   `marketing` consumer: pseudonymized id, masked email, redacted name,
//!   generalized birth date and postcode), and its durable audit log (each
//!   decision `fdatasync`ed, group commit, before the response);
//! - **(d) sidecar, audit buffered**: the same with `audit.durability =
//!   "buffered"` (events written, not synced), the baseline for what the
//!   durability wait adds. Both sidecars serve the small reads in the same
//!   interleaved rounds;
//! - **(e) nginx**: Debian's `nginx-light` as a plain reverse proxy in
//!   front of (a), the added hop people actually run, when installed.
//!
//! The read-path targets are judged on (d) against (a), directly. The
//! sidecar reports its durability wait per response in `Server-Timing:
//! audit;dur=<ms>`, so (c)'s latency is also split into the wait and
//! everything else, as an explanation. Then (c) and (d) serve small reads
//! again at four times the concurrency, and (c)'s `GET /metrics` before and
//! after gives its group commit: fdatasyncs per second and events per batch.
//!
//! Small reads (`limit=10`) at a fixed concurrency give latency p50/p99,
//! interleaved in rounds so drift on a shared host hits every target alike;
//! full-port reads give sustained throughput, per wall second and per CPU
//! second of the serving process. The sidecar's RSS is read from
//! `/proc/<pid>/status` idle and while loaded. Every figure is printed with
//! its target; nothing is asserted.
//!
//! The record layout is conservative for the sidecar: most of each record
//! is the `email`, which it masks, so it writes as many bytes as it reads.
//!
//! Knobs (environment): `LOADBENCH_RECORDS` (50000), `LOADBENCH_CONCURRENCY`
//! (4), `LOADBENCH_SMALL` (small requests per target, 6000),
//! `LOADBENCH_LARGE` (full reads per target, 8), `LOADBENCH_WARMUP` (300).
//! Under `cargo test --benches` each defaults to a few, for a quick check.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;
use common::*;
use support::*;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshgov_sidecar::body::Body;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const PORT: &str = "profiles";
const SMALL_LIMIT: u64 = 10;
const ROUNDS: usize = 3;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve-upstream") => serve(&args[2], Mode::Upstream(PathBuf::from(&args[3]))),
        Some("serve-proxy") => serve(&args[2], Mode::Proxy(args[3].clone())),
        _ => bench(),
    }
}

// ---------------------------------------------------------------- servers

enum Mode {
    Upstream(PathBuf),
    Proxy(String),
}

/// Runs (a) or (b) on `listen` with the sidecar's runtime shape (a
/// multi-threaded tokio runtime, one worker per CPU), printing its address.
fn serve(listen: &str, mode: Mode) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        let mode = Arc::new(mode);
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            let mode = Arc::clone(&mode);
            let client = client.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let mode = Arc::clone(&mode);
                    let client = client.clone();
                    async move {
                        Ok::<_, Infallible>(match &*mode {
                            Mode::Upstream(dir) => upstream(dir, &req).await.map(Either::Left),
                            Mode::Proxy(base) => proxy(&client, base, &req).await,
                        })
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// (a): streams `<dir>/<port>/*.ndjson` in name order, in 64 KiB chunks,
/// stopping after `limit` lines. File I/O is done as the sidecar does it:
/// one trip to tokio's blocking pool per chunk, the first of which also
/// lists the directory and opens the file, so the baseline is not slowed by
/// one hop per file-system call.
async fn upstream(dir: &Path, req: &Request<Incoming>) -> Response<Body> {
    let port = req.uri().path().trim_start_matches('/').to_string();
    let limit = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("limit=")))
        .and_then(|v| v.parse::<u64>().ok());
    let dir = Arc::new(dir.join(port));
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut left = limit.unwrap_or(u64::MAX);
        let mut state: Option<(Vec<PathBuf>, Option<std::fs::File>)> = None;
        loop {
            let dir = Arc::clone(&dir);
            let (s, buf) = tokio::task::spawn_blocking(move || {
                use std::io::Read as _;
                let (mut files, mut current) = state.unwrap_or_else(|| {
                    let mut files: Vec<PathBuf> = std::fs::read_dir(&*dir)
                        .unwrap()
                        .map(|e| e.unwrap().path())
                        .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
                        .collect();
                    files.sort();
                    files.reverse();
                    (files, None)
                });
                loop {
                    if current.is_none() {
                        match files.pop() {
                            Some(f) => current = Some(std::fs::File::open(f).unwrap()),
                            None => return ((files, current), None),
                        }
                    }
                    let mut buf = vec![0u8; 64 * 1024];
                    let n = current.as_mut().unwrap().read(&mut buf).unwrap();
                    if n > 0 {
                        buf.truncate(n);
                        return ((files, current), Some(buf));
                    }
                    current = None;
                }
            })
            .await
            .unwrap();
            let Some(mut buf) = buf else { return };
            let mut done = false;
            if limit.is_some() {
                for (i, b) in buf.iter().enumerate() {
                    if *b == b'\n' {
                        left -= 1;
                        if left == 0 {
                            buf.truncate(i + 1);
                            done = true;
                            break;
                        }
                    }
                }
            }
            if tx.send(Ok(Bytes::from(buf))).await.is_err() || done {
                return;
            }
            state = Some(s);
        }
    });
    let mut r = Response::new(Body::Stream(rx));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

/// (b): forwards the request line and headers to (a), streams the answer back.
async fn proxy(
    client: &Client<HttpConnector, Empty<Bytes>>,
    base: &str,
    req: &Request<Incoming>,
) -> Response<Either<Body, Either<Incoming, Empty<Bytes>>>> {
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut fwd = Request::new(Empty::new());
    *fwd.method_mut() = req.method().clone();
    *fwd.uri_mut() = format!("{base}{pq}").parse().unwrap();
    *fwd.headers_mut() = req.headers().clone();
    match client.request(fwd).await {
        Ok(r) => r.map(|b| Either::Right(Either::Left(b))),
        Err(_) => {
            let mut r = Response::new(Either::Right(Either::Right(Empty::new())));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r
        }
    }
}

// ------------------------------------------------------------- processes

/// A server process of the bench; killed when dropped.
fn spawn_self(name: &'static str, args: &[&str]) -> Server {
    let mut child = Process::spawn_unlogged(
        Command::new(std::env::current_exe().unwrap())
            .args(args)
            .stdout(Stdio::piped()),
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(child.child_mut().stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    Server {
        name,
        child,
        addr: line.trim().parse().unwrap(),
    }
}

// ------------------------------------------------------------- the data

/// `n` lowercase ASCII letters.
fn letters(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'a' + rng.below(26) as u8))
        .collect()
}

/// Writes `n` records of about 1 KB; returns the total bytes.
fn generate(dir: &Path, n: usize) -> u64 {
    let port = dir.join(PORT);
    std::fs::create_dir_all(&port).unwrap();
    let mut w = BufWriter::new(std::fs::File::create(port.join("2026-03-01.ndjson")).unwrap());
    // A fixed seed: every run reads the same records.
    let mut rng = Rng(0x6d65_7368_676f_7621);
    let countries = ["NL", "DE", "FR", "BE", "GB", "IE", "ES", "IT"];
    let mut total = 0u64;
    for i in 0..n {
        let len = 820 + rng.below(120) as usize;
        let local = letters(&mut rng, len);
        let line = format!(
            "{{\"user_id\":\"u-{i}\",\"email\":\"{local}@example.com\",\"name\":\"{} {}\",\"birth_date\":\"{}-{:02}-{:02}\",\"country\":\"{}\",\"postcode\":\"{}{}\",\"signed_up_at\":\"2026-03-01T{:02}:{:02}:{:02}Z\"}}\n",
            letters(&mut rng, 7),
            letters(&mut rng, 9),
            1940 + rng.below(70),
            1 + rng.below(12),
            1 + rng.below(28),
            countries[rng.below(countries.len() as u64) as usize],
            1000 + rng.below(9000),
            letters(&mut rng, 2).to_uppercase(),
            rng.below(24),
            rng.below(60),
            rng.below(60),
        );
        w.write_all(line.as_bytes()).unwrap();
        total += line.len() as u64;
    }
    w.flush().unwrap();
    total
}

// ------------------------------------------------------------- the load

struct Target {
    name: &'static str,
    addr: SocketAddr,
    path: String,
    auth: Option<String>,
    /// The processes serving it, for CPU accounting.
    pids: Vec<u32>,
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// One GET on a kept-alive connection; returns (body bytes, lines, the
/// audit durability wait in µs the server reported, 0 if none).
async fn fetch(sender: &mut Sender, t: &Target, query: &str) -> (u64, u64, f64) {
    sender.ready().await.unwrap();
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = format!("{}{query}", t.path).parse().unwrap();
    req.headers_mut()
        .insert(http::header::HOST, http::HeaderValue::from_static("bench"));
    if let Some(a) = &t.auth {
        req.headers_mut().insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(a).unwrap(),
        );
    }
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "{} answered {}", t.name, resp.status());
    let wait_us = resp
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("audit;dur="))
        .and_then(|ms| ms.parse::<f64>().ok())
        .map_or(0.0, |ms| ms * 1e3);
    let mut body = resp.into_body();
    let (mut bytes, mut lines) = (0u64, 0u64);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            bytes += data.len() as u64;
            lines += data.iter().filter(|b| **b == b'\n').count() as u64;
        }
    }
    (bytes, lines, wait_us)
}

/// `n` small reads over `conc` connections; returns each latency and its
/// audit durability wait, in µs.
async fn small_reads(t: &Target, n: usize, conc: usize) -> Vec<(f64, f64)> {
    let t = Arc::new(Target {
        name: t.name,
        addr: t.addr,
        path: t.path.clone(),
        auth: t.auth.clone(),
        pids: vec![],
    });
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (t, next) = (Arc::clone(&t), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(t.addr).await;
            let mut lat = Vec::new();
            let query = format!("?limit={SMALL_LIMIT}");
            while (next.fetch_add(1, Ordering::Relaxed) as usize) < n {
                let start = Instant::now();
                let (_, lines, wait) = fetch(&mut sender, &t, &query).await;
                lat.push((start.elapsed().as_secs_f64() * 1e6, wait));
                assert_eq!(lines, SMALL_LIMIT, "{}", t.name);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// The audit log's group-commit counters, from a sidecar's `GET /metrics`.
#[derive(Clone, Copy)]
struct AuditCounters {
    fsyncs: f64,
    events: f64,
}

struct Commits {
    fsyncs_per_second: f64,
    events_per_batch: f64,
}

impl AuditCounters {
    fn since(self, before: AuditCounters, took: Duration) -> Commits {
        let fsyncs = self.fsyncs - before.fsyncs;
        Commits {
            fsyncs_per_second: fsyncs / took.as_secs_f64(),
            events_per_batch: (self.events - before.events) / fsyncs.max(1.0),
        }
    }
}

async fn audit_counters(metrics: SocketAddr) -> AuditCounters {
    let mut sender = connect(metrics).await;
    sender.ready().await.unwrap();
    let req = Request::get("/metrics")
        .header(http::header::HOST, "bench")
        .body(Empty::new())
        .unwrap();
    let body = sender.send_request(req).await.unwrap().into_body();
    let text = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let sample = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no `{name}` in the sidecar's metrics"))
    };
    AuditCounters {
        fsyncs: sample("meshgov_sidecar_audit_fsync_seconds_count"),
        events: sample("meshgov_sidecar_audit_head_sequence"),
    }
}

struct Throughput {
    records: u64,
    bytes: u64,
    secs: f64,
    cpu: Vec<f64>,
}

/// `reads` full-port reads, two at a time.
async fn large_reads(t: &Target, reads: usize) -> Throughput {
    let cpu0: Vec<f64> = t.pids.iter().map(|p| cpu_seconds(*p)).collect();
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let target = Arc::new(Target {
        name: t.name,
        addr: t.addr,
        path: t.path.clone(),
        auth: t.auth.clone(),
        pids: vec![],
    });
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (t, next) = (Arc::clone(&target), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(t.addr).await;
            let (mut b, mut l) = (0, 0);
            while (next.fetch_add(1, Ordering::Relaxed) as usize) < reads {
                let (bb, ll, _) = fetch(&mut sender, &t, "").await;
                b += bb;
                l += ll;
            }
            (b, l)
        }));
    }
    let (mut bytes, mut records) = (0, 0);
    for task in tasks {
        let (b, l) = task.await.unwrap();
        bytes += b;
        records += l;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = t
        .pids
        .iter()
        .zip(cpu0)
        .map(|(p, c)| cpu_seconds(*p) - c)
        .collect();
    Throughput {
        records,
        bytes,
        secs,
        cpu,
    }
}

/// The device's floor for the durability wait: `n` appends of an
/// event-sized line, each followed by `fdatasync`, in µs (sorted).
fn fdatasync_floor(dir: &Path, n: usize) -> Vec<f64> {
    let path = dir.join("fdatasync-probe");
    let mut f = std::fs::File::create(&path).unwrap();
    let line = [b'x'; 700];
    let mut lat: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f.write_all(&line).unwrap();
            f.sync_data().unwrap();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    drop(f);
    let _ = std::fs::remove_file(path);
    lat.sort_by(f64::total_cmp);
    lat
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// What waiting for durability adds: (c)'s (p50, p99) over (d)'s.
fn durability_added(c: (f64, f64), d: (f64, f64)) {
    println!(
        "  added by waiting for durability: p50 {:+.0} µs, p99 {:+.0} µs (target p99 <= +5000): {}",
        c.0 - d.0,
        c.1 - d.1,
        verdict(c.1 - d.1 <= 5000.0)
    );
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISS" }
}

fn bench() {
    let n_records = knob("LOADBENCH_RECORDS", 50_000, 500);
    let conc = knob("LOADBENCH_CONCURRENCY", 4, 2);
    let n_small = knob("LOADBENCH_SMALL", 6_000, 30);
    let n_large = knob("LOADBENCH_LARGE", 8, 1);
    let warmup = knob("LOADBENCH_WARMUP", 300, 10);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let total = generate(&data, n_records);

    let up = spawn_self(
        "(a) direct upstream",
        &["serve-upstream", "127.0.0.1:0", data.to_str().unwrap()],
    );
    let px = spawn_self(
        "(b) hyper pass-through",
        &["serve-proxy", "127.0.0.1:0", &format!("http://{}", up.addr)],
    );
    let sc_addr = free_addr();
    let sc_metrics = free_addr();
    let (config, bearer) = sidecar_setup(
        tmp.path(),
        &data,
        sc_addr,
        &format!("metrics = \"{sc_metrics}\""),
        "",
    );
    let sc = spawn_sidecar("(c) sidecar", &config, sc_addr);
    let sc_pid = sc.child.id();
    let buffered_dir = tmp.path().join("buffered");
    std::fs::create_dir_all(&buffered_dir).unwrap();
    let bf_addr = free_addr();
    let (bf_config, bf_bearer) = sidecar_setup(
        &buffered_dir,
        &data,
        bf_addr,
        "",
        "[audit]\ndurability = \"buffered\"",
    );
    let bf = spawn_sidecar("(d) sidecar, audit buffered", &bf_config, bf_addr);
    let nginx = spawn_nginx(tmp.path(), up.addr);
    std::thread::sleep(Duration::from_millis(300));
    let idle_kb = proc_status_kb(sc_pid, "VmRSS:");

    // Sample the sidecar's RSS while it is under load.
    let sampling = Arc::new(AtomicBool::new(true));
    let loaded_max = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sampling, loaded_max) = (Arc::clone(&sampling), Arc::clone(&loaded_max));
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                loaded_max.fetch_max(proc_status_kb(sc_pid, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let mut targets = vec![
        Target {
            name: up.name,
            addr: up.addr,
            path: format!("/{PORT}"),
            auth: None,
            pids: vec![up.child.id()],
        },
        Target {
            name: px.name,
            addr: px.addr,
            path: format!("/{PORT}"),
            auth: None,
            pids: vec![px.child.id(), up.child.id()],
        },
        Target {
            name: sc.name,
            addr: sc.addr,
            path: format!("/v1/ports/{PORT}/records"),
            auth: Some(bearer),
            pids: vec![sc_pid],
        },
        Target {
            name: bf.name,
            addr: bf.addr,
            path: format!("/v1/ports/{PORT}/records"),
            auth: Some(bf_bearer),
            pids: vec![bf.child.id()],
        },
    ];
    if let Some(n) = &nginx {
        targets.push(Target {
            name: n.name,
            addr: n.addr,
            path: format!("/{PORT}"),
            auth: None,
            pids: vec![n.child.id(), up.child.id()],
        });
    }

    // Full-port reads: (d) differs from (c) only in the audit's durability.
    let thr_targets: Vec<&Target> = targets
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, t)| t)
        .collect();

    // The load generator: one thread, so it takes at most one CPU.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (lat, small_cpu, heavy, commits, thr) = rt.block_on(async {
        for t in &targets {
            small_reads(t, warmup, conc).await;
        }
        let mut lat: Vec<Vec<(f64, f64)>> = vec![vec![]; targets.len()];
        // CPU seconds of each target's own process over its small reads.
        let mut small_cpu = vec![0.0; targets.len()];
        for _ in 0..ROUNDS {
            for (i, t) in targets.iter().enumerate() {
                let before = cpu_seconds(t.pids[0]);
                lat[i].extend(small_reads(t, n_small / ROUNDS, conc).await);
                small_cpu[i] += cpu_seconds(t.pids[0]) - before;
            }
        }
        // Durability under 4x the concurrency: (c) and (d) interleaved,
        // with (c)'s group commits counted from its metrics.
        let mut heavy: Vec<Vec<(f64, f64)>> = vec![vec![]; 2];
        let before = audit_counters(sc_metrics).await;
        let started = Instant::now();
        for _ in 0..ROUNDS {
            for (i, t) in targets[2..4].iter().enumerate() {
                heavy[i].extend(small_reads(t, n_small / ROUNDS, conc * 4).await);
            }
        }
        let commits = audit_counters(sc_metrics)
            .await
            .since(before, started.elapsed());
        let mut thr = Vec::new();
        for t in &thr_targets {
            thr.push(large_reads(t, n_large).await);
        }
        (lat, small_cpu, heavy, commits, thr)
    });
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let after_kb = proc_status_kb(sc_pid, "VmRSS:");
    let hwm_kb = proc_status_kb(sc_pid, "VmHWM:");

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "meshgov-sidecar load benchmark: loopback, {cpus} CPUs, {n_records} records of ~{} B ({:.1} MB) in one NDJSON file",
        total / n_records as u64,
        total as f64 / 1e6
    );
    println!(
        "small reads: limit={SMALL_LIMIT}, concurrency {conc}, {ROUNDS} interleaved rounds, {} requests per target (after {warmup} warm-up)",
        n_small / ROUNDS * ROUNDS
    );
    println!(
        "{:<24} {:>9} {:>9} {:>9}",
        "target", "p50 µs", "p99 µs", "req/s"
    );
    let mut p = Vec::new();
    // (c)'s latency split: the durability wait, and everything else.
    let sorted = |v: Vec<f64>| {
        let mut v = v;
        v.sort_by(f64::total_cmp);
        v
    };
    let c_wait = sorted(lat[2].iter().map(|(_, w)| *w).collect());
    let c_rest = sorted(lat[2].iter().map(|(l, w)| l - w).collect());
    for (t, l) in targets.iter().zip(lat.iter()) {
        let l = sorted(l.iter().map(|(l, _)| *l).collect());
        let (p50, p99) = (pct(&l, 0.50), pct(&l, 0.99));
        let mean = l.iter().sum::<f64>() / l.len() as f64;
        println!(
            "{:<24} {:>9.0} {:>9.0} {:>9.0}",
            t.name,
            p50,
            p99,
            conc as f64 * 1e6 / mean
        );
        p.push((p50, p99));
    }
    let (a, b, c, d) = (p[0], p[1], p[2], p[3]);
    let floor = fdatasync_floor(tmp.path(), 500);
    let (w50, w99) = (pct(&c_wait, 0.50), pct(&c_wait, 0.99));
    let (r50, r99) = (pct(&c_rest, 0.50), pct(&c_rest, 0.99));
    println!("audit durability, (c) fsync vs (d) buffered, same rounds:");
    durability_added(c, d);
    println!(
        "  (c) split: durability wait p50 {w50:.0} µs, p99 {w99:.0} µs; everything else p50 {r50:.0} µs, p99 {r99:.0} µs"
    );
    println!(
        "  the disk's floor, one 700 B append + fdatasync in the same directory: p50 {:.0} µs, p99 {:.0} µs",
        pct(&floor, 0.50),
        pct(&floor, 0.99)
    );
    println!(
        "  (c) over (a): total p50 {:+.0} µs, p99 {:+.0} µs = durability wait p50 {w50:.0} / p99 {w99:.0} µs + the rest p50 {:+.0} / p99 {:+.0} µs",
        c.0 - a.0,
        c.1 - a.1,
        r50 - a.0,
        r99 - a.1
    );
    // The read-path targets are judged on (d), the same sidecar without the
    // durability wait, against (a) directly; (c)'s split explains it.
    let (b50, b99) = (b.0 - a.0, b.1 - a.1);
    let (c50, c99) = (d.0 - a.0, d.1 - a.1);
    println!(
        "read path, added over (a): (b) p50 {b50:+.0} µs, p99 {b99:+.0} µs; (d) p50 {c50:+.0} µs, p99 {c99:+.0} µs; (c) without its durability wait p50 {:+.0} µs, p99 {:+.0} µs",
        r50 - a.0,
        r99 - a.1
    );
    println!(
        "  sidecar (d) p50 added {c50:+.0} µs (target <= +150): {}",
        verdict(c50 <= 150.0)
    );
    println!(
        "  sidecar (d) p99 added {c99:+.0} µs (target <= +500): {}",
        verdict(c99 <= 500.0)
    );
    if let Some(e) = p.get(4) {
        let (e50, e99) = (e.0 - a.0, e.1 - a.1);
        let (r50, r99) = (c50 / e50.max(1.0), c99 / e99.max(1.0));
        println!(
            "  (e) nginx added p50 {e50:+.0} µs, p99 {e99:+.0} µs; (d) added / (e) added: p50 {r50:.2}x, p99 {r99:.2}x (target <= 1.0x): {}",
            verdict(r50 <= 1.0 && r99 <= 1.0)
        );
    }
    let r50 = c50 / b50.max(1.0);
    let r99 = c99 / b99.max(1.0);
    println!(
        "  (c) added / (b) added: p50 {r50:.2}x, p99 {r99:.2}x (target <= 1.5x): {}",
        verdict(r50 <= 1.5 && r99 <= 1.5)
    );

    // CPU per small read, the serving process alone (for (b) and (e) the
    // proxy, without (a) behind it).
    let per_read: Vec<f64> = small_cpu
        .iter()
        .zip(&lat)
        .map(|(cpu, l)| cpu * 1e6 / l.len().max(1) as f64)
        .collect();
    let named: Vec<String> = targets
        .iter()
        .zip(&per_read)
        .map(|(t, us)| format!("{} {us:.0}", &t.name[..3]))
        .collect();
    println!(
        "CPU per small read, µs of the serving process alone: {}",
        named.join(", ")
    );
    println!(
        "  sidecar (d) {:.0} µs of CPU per limit={SMALL_LIMIT} read (target <= 100): {}",
        per_read[3],
        verdict(per_read[3] <= 100.0)
    );

    let heavy: Vec<(f64, f64)> = heavy
        .into_iter()
        .map(|l| {
            let l = sorted(l.into_iter().map(|(l, _)| l).collect());
            (pct(&l, 0.50), pct(&l, 0.99))
        })
        .collect();
    let (hc, hd) = (heavy[0], heavy[1]);
    println!(
        "audit durability at 4x the concurrency ({}), (c) vs (d), same rounds: p50 {:.0} vs {:.0} µs, p99 {:.0} vs {:.0} µs",
        conc * 4,
        hc.0,
        hd.0,
        hc.1,
        hd.1
    );
    durability_added(hc, hd);
    println!(
        "  (c)'s group commit: {:.0} fdatasyncs/s, {:.1} events per batch on average",
        commits.fsyncs_per_second, commits.events_per_batch
    );

    println!("large reads: the whole port, 2 connections, {n_large} reads per target");
    println!(
        "{:<24} {:>11} {:>8} {:>10} {:>14}",
        "target", "records/s", "MB/s", "server CPU s", "records/CPU-s"
    );
    let mut per_cpu = Vec::new();
    for (t, r) in thr_targets.iter().zip(&thr) {
        let cpu: f64 = r.cpu.first().copied().unwrap_or(0.0);
        let rps = r.records as f64 / r.secs;
        println!(
            "{:<24} {:>11.0} {:>8.1} {:>10.2} {:>14.0}",
            t.name,
            rps,
            r.bytes as f64 / r.secs / 1e6,
            cpu,
            r.records as f64 / cpu.max(0.01)
        );
        per_cpu.push((
            rps,
            r.records as f64 / cpu.max(0.01),
            r.records as f64 / r.cpu.iter().sum::<f64>().max(0.01),
        ));
    }
    println!(
        "  (b) counts the proxy's CPU; with (a)'s behind it, (b) serves {:.0} records per CPU-s",
        per_cpu[1].2
    );
    let wall = per_cpu[2].0 / per_cpu[1].0;
    let core = per_cpu[2].1 / per_cpu[1].1;
    let core_path = per_cpu[2].1 / per_cpu[1].2;
    println!(
        "  throughput (c)/(b): wall {wall:.2}x, per core {core:.2}x vs the proxy alone, {core_path:.2}x vs proxy+upstream (target >= 0.5x): {}",
        verdict(core >= 0.5)
    );
    if let Some(e) = per_cpu.get(3) {
        let vs = per_cpu[2].1 / e.1;
        println!(
            "  throughput per core, (c) vs (e) nginx alone: {vs:.2}x (target >= 0.5x): {}",
            verdict(vs >= 0.5)
        );
    }
    println!(
        "sidecar RSS: idle {:.1} MB (target <= 20): {}; under load max {:.1} MB (target <= 30): {}; idle after load {:.1} MB; VmHWM {:.1} MB",
        idle_kb as f64 / 1024.0,
        verdict(idle_kb <= 20 * 1024),
        loaded_max.load(Ordering::Relaxed) as f64 / 1024.0,
        verdict(loaded_max.load(Ordering::Relaxed) <= 30 * 1024),
        after_kb as f64 / 1024.0,
        hwm_kb as f64 / 1024.0,
    );
    drop(sc);
    drop(bf);
    drop(nginx);
    drop(px);
    drop(up);
}

/// nginx (Debian's `nginx-light`) as a plain reverse proxy in front of
/// `upstream`, as people run it: keep-alive to the upstream, no buffering,
/// no access log, one process (`master_process off`, so its CPU is one
/// pid's). `None`, said, when there is no nginx; in CI (`CI` set) that
/// fails instead.
fn spawn_nginx(dir: &Path, upstream: SocketAddr) -> Option<Server> {
    let Some(bin) = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no nginx (Debian's nginx-light; .ci/setup installs it)"
        );
        println!("(e) nginx: not measured (no nginx; install Debian's nginx-light)");
        return None;
    };
    let d = dir.join("nginx");
    std::fs::create_dir_all(&d).unwrap();
    let addr = free_addr();
    let conf = d.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream up {{
        server {upstream};
        keepalive 32;
    }}
    server {{
        listen {addr};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"#,
            d = d.display()
        ),
    )
    .unwrap();
    let child = Process::spawn_unlogged(
        Command::new(bin)
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-p")
            .arg(&d)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not listen on {addr}: {}",
            std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Server {
        name: "(e) nginx pass-through",
        child,
        addr,
    })
}
