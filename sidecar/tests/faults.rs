//! Fault injection with real `meshgov-sidecar` processes, real signatures
//! and real HTTP on loopback. Each test names the fault, the invariants it
//! holds the sidecar to, and asserts them:
//!
//! - no acknowledged audit event is lost;
//! - no privacy budget is overspent;
//! - no read is served under an invalid bundle;
//! - recovery needs no operator action where it can be automatic.
//!
//! Random kill moments come from a seeded generator; the seed is printed,
//! and `MESHGOV_FAULT_SEED=N` replays a run. (The audit log's own crash test
//! is `crash.rs`.)

use crate::common::*;
use meshgov_audit::show::{Filter, read_filtered};
use meshgov_audit::{Decision, Kind, StoredEvent, verify_path};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- harness

fn now_ms() -> i64 {
    meshgov_sidecar::clock::now_ms()
}

/// A sidecar's directory, keys, config and listen addresses.
struct Setup {
    dir: tempfile::TempDir,
    keys: Keys,
    gov: meshgov_bundle::SigningKey,
    policies: meshgov_core::Policies,
    product: String,
    config: PathBuf,
    data: SocketAddr,
    control: SocketAddr,
}

impl Setup {
    /// `product` is `policies/products/<product>.yaml`; `upstream` the body
    /// of `[upstream]`; `extra` more config; the bundle file holds revision
    /// 7, valid for `ttl` seconds.
    fn new(product: &str, upstream: &str, extra: &str, ttl: i64) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let keys = Keys::generate();
        let gov = governance_key();
        let (descriptor_path, descriptor) = example_descriptor(product);
        let policies = policies_for(&descriptor);
        let [data, control] = free_addrs();
        let config = ProcessConfig {
            top: "log_format = \"json\"",
            listen: &format!("data = \"{data}\"\ncontrol = \"{control}\""),
            upstream,
            tables: extra,
        }
        .write(d, &descriptor_path, &gov, &keys);
        let s = Setup {
            dir,
            keys,
            gov,
            policies,
            product: descriptor.product_id(),
            config,
            data,
            control,
        };
        std::fs::write(s.path().join("bundle.json"), s.bundle(7, ttl)).unwrap();
        s
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    fn bundle(&self, revision: u64, ttl: i64) -> Vec<u8> {
        sign_policies(&self.gov, &self.policies, revision, ttl)
    }

    fn token(&self, sub: &str, groups: &[&str], purpose: &str) -> String {
        token(&self.keys, sub, groups, purpose)
    }

    /// Starts the sidecar; its stderr goes to `<dir>/<log>`.
    fn spawn(&self, log: &str) -> Proc {
        let mut c = Command::new(env!("CARGO_BIN_EXE_meshgov-sidecar"));
        c.arg("--config");
        // Per-request lines (`read finished`) are debug.
        self.spawn_with(c, log, "info,meshgov_sidecar::records=debug")
    }

    /// Starts the sidecar with a file-size limit of `bytes` (`ulimit -f`,
    /// 512-byte blocks) and SIGXFSZ ignored, so that a write past the limit
    /// fails with EFBIG, as on a full disk, instead of killing the process.
    /// (An ignored signal stays ignored across `exec`.)
    fn spawn_disk_limited(&self, bytes: u64, log: &str) -> Proc {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"trap '' XFSZ; ulimit -f "$1" && exec "$2" --config "$3""#)
            .arg("sh")
            .arg(bytes.div_ceil(512).to_string())
            .arg(env!("CARGO_BIN_EXE_meshgov-sidecar"));
        // The limit applies to the log file too; a log line that cannot be
        // written is dropped (see the unwritable-log test).
        self.spawn_with(c, log, "info,meshgov_sidecar::records=debug")
    }

    /// Runs `c` with the config path as its last argument.
    fn spawn_with(&self, mut c: Command, log: &str, filter: &str) -> Proc {
        c.arg(&self.config).env(
            "RUST_LOG",
            std::env::var("MESHGOV_FAULT_LOG").unwrap_or_else(|_| filter.into()),
        );
        Proc {
            process: Process::spawn(&mut c, &self.path().join(log)).unwrap(),
            data: self.data,
        }
    }
}

/// A running sidecar process; killed when dropped.
struct Proc {
    process: Process,
    data: SocketAddr,
}

impl Proc {
    /// SIGKILL, and reap.
    fn kill(&mut self) {
        self.process.kill();
    }

    /// Waits for the data port to answer `/readyz`, and returns that first
    /// answer (200 or not): the sidecar must know its state the moment it
    /// listens.
    fn first_readyz(&mut self) -> Resp {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if let Some(r) = http(self.data, "GET", "/readyz", &[], b"") {
                return r;
            }
            if let Ok(Some(code)) = self.process.exited() {
                panic!("the sidecar exited with {code}: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the sidecar did not listen: {}", self.stderr());
    }

    fn ready(&mut self) -> serde_json::Value {
        let r = self.first_readyz();
        assert_eq!(r.status, 200, "not ready at once: {}", r.text());
        r.json()
    }

    fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// The structured log lines (JSON) whose message is `message`.
    fn logged(&self, message: &str) -> Vec<serde_json::Value> {
        self.stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == message)
            .collect()
    }
}

/// Whether a JSON log line belongs to the request sent with
/// `x-request-id: rid` (the client's id is a field of the request's span).
fn of_request(v: &serde_json::Value, rid: &str) -> bool {
    v["spans"]
        .as_array()
        .is_some_and(|s| s.iter().any(|s| s["client_request_id"] == rid))
}

/// One request on a fresh connection; `None` if the connection failed or
/// closed before a response head arrived (a killed sidecar).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Resp> {
    http_within(addr, method, path, headers, body, Duration::from_secs(30))
}

fn http_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Option<Resp> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(timeout)).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    c.write_all(&bytes).ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("no end of the response within {timeout:?}")
            }
            Err(_) => break,
        }
    }
    try_parse_response(&got)
}

fn read(addr: SocketAddr, port: &str, query: &str, token: &str, rid: &str) -> Option<Resp> {
    http(
        addr,
        "GET",
        &format!("/v1/ports/{port}/records{query}"),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("x-request-id", rid),
        ],
        b"",
    )
}

fn aggregate(addr: SocketAddr, token: &str, rid: &str, body: &str) -> Option<Resp> {
    http(
        addr,
        "POST",
        "/v1/ports/plays/aggregate",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("x-request-id", rid),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    )
}

fn profiles_text(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"user_id":"u-{i}","email":"user{i}@example.com","name":"User {i}","birth_date":"1990-04-12","country":"NL","postcode":"1012AB","signed_up_at":"2026-03-01T10:00:00Z"}}"#
            ) + "\n"
        })
        .collect()
}

/// `n` plays today by `n / 2` listeners.
fn plays_text(n: usize) -> String {
    let day = time::OffsetDateTime::now_utc().date();
    (0..n)
        .map(|i| {
            serde_json::json!({"event_id": format!("e{i}"), "user_id": format!("u{}", i / 2),
                "song_id": "s", "artist_id": "a", "played_at": format!("{day}T00:00:01Z"),
                "duration_ms": 1000 + i, "country": if i % 3 == 0 { "SE" } else { "DE" }, "device": "phone"})
            .to_string()
                + "\n"
        })
        .collect()
}

fn audit_events(state: &Path) -> Vec<StoredEvent> {
    read_filtered(&state.join("audit"), &Filter::default())
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect()
}

fn audit_key(state: &Path) -> meshgov_bundle::PublicKey {
    std::fs::read_to_string(state.join("audit-signing.pub"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Decision events by the `x-request-id` their requests were sent with.
fn decisions(events: &[StoredEvent]) -> HashMap<String, StoredEvent> {
    events
        .iter()
        .filter(|e| e.kind == Kind::Decision)
        .filter_map(|e| Some((e.client_request_id.clone()?, e.clone())))
        .collect()
}

/// The completion event of the request sent as `rid`, joined to its
/// decision by the sidecar's own id.
fn completion(events: &[StoredEvent], rid: &str) -> Option<StoredEvent> {
    let own = decisions(events).remove(rid)?.request_id;
    events
        .iter()
        .find(|e| e.kind == Kind::Completion && e.request_id == own)
        .cloned()
}

// ---------------------------------------------------------- 1. bundle swaps

/// **SIGKILL during bundle swaps.** A pusher streams new signed revisions
/// into `PUT /control/v1/bundle` while a reader reads, and the sidecar is
/// killed at random moments, then restarted. Invariants:
///
/// - the restarted sidecar is ready the moment it listens, with the
///   persisted bundle, which verifies (signature, digests, mesh, product):
///   old or new, never torn;
/// - its revision is at least the last one ACKed before the kill (no
///   acknowledged swap is lost) and at most the last one sent;
/// - every read answered 200 carries the revision it was served under,
///   never one older than a revision already ACKed when it was sent;
/// - what a kill can leave in the state directory (a half-written
///   temporary bundle is planted once, as a kill mid-persist leaves it)
///   does not break or change the next start, and the next swap cleans
///   it up.
#[test]
fn sigkill_during_bundle_swaps_keeps_a_verified_bundle_never_older_than_the_last_ack() {
    const ROUNDS: usize = 8;
    const PER_ROUND: u64 = 40;
    let mut rng = seeded("bundle swaps");
    let s = Setup::new("user-profiles", "path = \"data\"", "", 3600);
    write_upstream(s.path(), "profiles", "a.ndjson", &profiles_text(20));
    let token = s.token("mia", &["marketing"], "campaign-analytics");
    let trust = meshgov_bundle::TrustStore::from_keys([s.gov.public_key()]).unwrap();
    let (data, control) = (s.data, s.control);
    let (mut acked, mut sent) = (7u64, 7u64);
    let mut next = 8u64;
    let mut stray_temps = 0;
    let mut p = s.spawn("sidecar-0.log");
    for round in 0..ROUNDS {
        let ready = p.ready();
        let revision = ready["revision"].as_u64().unwrap();
        assert!(
            revision >= acked && revision <= sent,
            "round {round}: revision {revision} after a kill; last ACK {acked}, last sent {sent}"
        );
        // The persisted bundle is whole and is the one in force.
        let persisted = std::fs::read(s.state().join("bundle.dsse.json")).unwrap();
        let v = meshgov_bundle::verify(
            &persisted,
            &trust,
            now(),
            &meshgov_bundle::Expect {
                mesh: Some("media-mesh"),
                product: Some(&s.product),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("round {round}: the persisted bundle: {e}"));
        assert_eq!(v.manifest().revision, revision);
        assert_eq!(ready["digest"], v.digest());
        let r = read(
            s.data,
            "profiles",
            "?limit=3",
            &token,
            &format!("first-{round}"),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.revision(), Some(revision));

        // Revisions for this round, signed ahead so pushes come fast.
        let envelopes: Vec<(u64, Vec<u8>)> = (next..next + PER_ROUND)
            .map(|rev| (rev, s.bundle(rev, 3600)))
            .collect();
        next += PER_ROUND;
        let stop = Arc::new(AtomicBool::new(false));
        let last_ack = Arc::new(AtomicU64::new(acked));
        let last_sent = Arc::new(AtomicU64::new(sent));
        let pusher = {
            let (stop, last_ack, last_sent) = (
                Arc::clone(&stop),
                Arc::clone(&last_ack),
                Arc::clone(&last_sent),
            );
            std::thread::spawn(move || {
                for (rev, env) in envelopes {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    last_sent.store(rev, Ordering::SeqCst);
                    match http(control, "PUT", "/control/v1/bundle", &[], &env) {
                        Some(r) if r.status == 200 && r.complete => {
                            let v = r.json();
                            assert_eq!(v["result"], "ack", "{v}");
                            assert_eq!(v["revision"], rev);
                            last_ack.store(rev, Ordering::SeqCst);
                        }
                        Some(r) if r.complete => panic!("push {rev} refused: {}", r.text()),
                        // Killed mid-push: not acknowledged.
                        _ => break,
                    }
                }
            })
        };
        let reader = {
            let (stop, last_ack, token) = (Arc::clone(&stop), Arc::clone(&last_ack), token.clone());
            std::thread::spawn(move || {
                let mut served = 0;
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let floor = last_ack.load(Ordering::SeqCst);
                    match read(
                        data,
                        "profiles",
                        "?limit=2",
                        &token,
                        &format!("r{round}-{i}"),
                    ) {
                        Some(r) if r.status == 200 && r.complete => {
                            let rev = r.revision().unwrap();
                            assert!(
                                rev >= floor,
                                "a read sent after revision {floor} was ACKed was served under {rev}"
                            );
                            served += 1;
                        }
                        Some(r) if r.complete => panic!("read refused: {} {}", r.status, r.text()),
                        _ => break,
                    }
                }
                served
            })
        };
        std::thread::sleep(Duration::from_millis(rng.between(50, 500)));
        p.kill();
        stop.store(true, Ordering::Relaxed);
        pusher.join().unwrap();
        let served = reader.join().unwrap();
        acked = last_ack.load(Ordering::SeqCst);
        sent = last_sent.load(Ordering::SeqCst);
        let temps: Vec<String> = std::fs::read_dir(s.state())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        stray_temps += temps.len();
        if round == 0 {
            // What a kill between creating and renaming the temporary
            // file leaves: half of a newer bundle.
            let newer = s.bundle(next + 1000, 3600);
            std::fs::write(
                s.state().join("bundle.dsse.json.tmp"),
                &newer[..newer.len() / 2],
            )
            .unwrap();
        }
        println!(
            "round {round}: acked {acked}, sent {sent}, {served} reads served, temporary files {temps:?}"
        );
        p = s.spawn(&format!("sidecar-{}.log", round + 1));
    }
    // The next swap replaces any leftover temporary file.
    let ready = p.ready();
    let rev = ready["revision"].as_u64().unwrap();
    assert!(rev >= acked && rev <= sent);
    let r = http(
        control,
        "PUT",
        "/control/v1/bundle",
        &[],
        &s.bundle(next, 3600),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!s.state().join("bundle.dsse.json.tmp").exists());
    println!("{stray_temps} temporary file(s) left by kills");
}

// ------------------------------------------------------ 2. budget reservation

/// What the clients of one consumer saw of its privacy budget.
#[derive(Default)]
struct Budget {
    /// Costs of every 200 answer received whole, by budget window start.
    granted: BTreeMap<String, Vec<f64>>,
    refused: usize,
}

/// An aggregate answer (200 or 429): its window start, cost and the
/// consumer's remaining epsilon.
fn spend_of(r: &Resp) -> (String, f64, f64) {
    let v = r.json();
    let window = v["budget"]["window"]["start"].as_str().unwrap().to_string();
    let remaining = v["budget"]["consumer"]["epsilon_remaining"]
        .as_f64()
        .unwrap();
    let cost = if r.status == 200 {
        v["cost"]["epsilon"].as_f64().unwrap()
    } else {
        0.0
    };
    (window, cost, remaining)
}

/// **SIGKILL during budget reservation.** Four clients send distinct
/// aggregate queries (each its own time window, so none is a free repeat)
/// for one consumer, and the sidecar is killed at random moments, then
/// restarted on the same state directory (the embedded ledger). Invariants:
///
/// - after every restart, the budget the sidecar reports (in the next
///   answer, or a 429's body) satisfies `limit - remaining >= the sum of
///   the costs of every 200 the clients received`: a crash may lose budget
///   (reserved, never answered), never grant it twice;
/// - `remaining` is never negative, and the 200s never add up to more than
///   the limit;
/// - once a query is refused for want of budget, no query of the same cost
///   is granted again in that window.
#[test]
fn sigkill_during_budget_reservation_never_grants_budget_twice() {
    const ROUNDS: usize = 8;
    const LIMIT: f64 = 2.0; // campaign-analytics, per consumer and window
    const EPSILON: f64 = 0.005;
    let mut rng = seeded("budget reservation");
    let s = Setup::new("play-events", "path = \"data\"", "", 3600);
    write_upstream(s.path(), "plays", "today.ndjson", &plays_text(60));
    let token = s.token("ann", &["marketing"], "campaign-analytics");
    let to = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let to = to
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let query_no = Arc::new(AtomicU64::new(0));
    // Distinct windows: `from` moves by one second per query.
    let body = move |n: u64| {
        let from = time::OffsetDateTime::now_utc() - time::Duration::days(20)
            + time::Duration::seconds(n as i64);
        format!(
            r#"{{"aggregations":[{{"count":{{}}}}],"epsilon":{EPSILON},"from":"{}","to":"{to}"}}"#,
            from.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        )
    };
    let body = Arc::new(body);
    let seen = Arc::new(Mutex::new(Budget::default()));
    let check = |r: &Resp, b: &mut Budget, when: &str| {
        let (window, cost, remaining) = spend_of(r);
        assert!(remaining >= 0.0, "{when}: negative budget: {}", r.text());
        if r.status == 200 {
            b.granted.entry(window.clone()).or_default().push(cost);
        }
        let granted: f64 = b.granted.get(&window).map_or(0.0, |c| c.iter().sum());
        assert!(
            LIMIT - remaining >= granted - 1e-9,
            "{when}: {remaining} left of {LIMIT}, but 200s worth {granted} were answered"
        );
        assert!(
            granted <= LIMIT + 1e-9,
            "{when}: granted {granted} > {LIMIT}"
        );
    };
    let mut p = s.spawn("sidecar-0.log");
    let mut exhausted_at: Option<String> = None;
    for round in 0..ROUNDS {
        p.ready();
        // The first answer after the restart tells the spend as recovered.
        let n = query_no.fetch_add(1, Ordering::SeqCst);
        let r = aggregate(s.data, &token, &format!("probe-{round}"), &body(n)).unwrap();
        assert!(
            r.status == 200 || r.status == 429,
            "{} {}",
            r.status,
            r.text()
        );
        {
            let mut b = seen.lock().unwrap();
            check(&r, &mut b, &format!("after restart {round}"));
            if r.status == 429 {
                b.refused += 1;
                exhausted_at.get_or_insert(spend_of(&r).0);
            } else if let Some(w) = &exhausted_at {
                assert_ne!(w, &spend_of(&r).0, "granted after the budget was spent");
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let (stop, seen, query_no, body, token) = (
                    Arc::clone(&stop),
                    Arc::clone(&seen),
                    Arc::clone(&query_no),
                    Arc::clone(&body),
                    token.clone(),
                );
                let data = s.data;
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let n = query_no.fetch_add(1, Ordering::SeqCst);
                        let Some(r) =
                            aggregate(data, &token, &format!("q{round}-{c}-{n}"), &body(n))
                        else {
                            break;
                        };
                        if !r.complete {
                            break; // killed mid-answer: not received
                        }
                        assert!(
                            r.status == 200 || r.status == 429,
                            "{} {}",
                            r.status,
                            r.text()
                        );
                        let (window, cost, remaining) = spend_of(&r);
                        let mut b = seen.lock().unwrap();
                        assert!(remaining >= 0.0);
                        if r.status == 200 {
                            b.granted.entry(window).or_default().push(cost);
                        } else {
                            b.refused += 1;
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.between(50, 400)));
        p.kill();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        let b = seen.lock().unwrap();
        println!(
            "round {round}: {} answers received, {} refused",
            b.granted.values().map(Vec::len).sum::<usize>(),
            b.refused
        );
        drop(b);
        p = s.spawn(&format!("sidecar-{}.log", round + 1));
    }
    p.ready();
    // Spend what is left: the refusals must then hold.
    let mut refusals = 0;
    for i in 0..1000 {
        let n = query_no.fetch_add(1, Ordering::SeqCst);
        let r = aggregate(s.data, &token, &format!("rest-{i}"), &body(n)).unwrap();
        let mut b = seen.lock().unwrap();
        check(&r, &mut b, "spending the rest");
        if r.status == 429 {
            refusals += 1;
            if refusals == 3 {
                break;
            }
        } else {
            assert_eq!(refusals, 0, "a query was granted after one was refused");
        }
    }
    assert_eq!(refusals, 3, "the budget never ran out");
    let b = seen.lock().unwrap();
    let (window, costs) = b.granted.iter().next_back().unwrap();
    let granted: f64 = costs.iter().sum();
    let r = aggregate(
        s.data,
        &token,
        "last",
        &body(query_no.fetch_add(1, Ordering::SeqCst)),
    )
    .unwrap();
    let (w, _, remaining) = spend_of(&r);
    assert_eq!(&w, window);
    println!(
        "{} answers worth {granted:.2} of {LIMIT}; lost to crashes (reserved, never answered): {:.2}",
        costs.len(),
        LIMIT - remaining - granted
    );
}

// -------------------------------------------------------------- 3. disk full

/// One read as its client saw it.
struct Seen {
    rid: String,
    sent: Instant,
    got: Instant,
    reply: Resp,
}

/// **The state directory's disk fills up.** The sidecar runs with a
/// file-size limit just above its audit segment's size (`ulimit -f`, with
/// SIGXFSZ ignored, so writes fail with EFBIG as on a full disk), and three
/// clients read until the segment cannot grow. Invariants:
///
/// - every 200 answered is in the audit log, and the log verifies;
/// - no event of a refused request stays in the log (a failed batch is cut
///   back, not left half-written);
/// - once the log has failed, every read is refused with 503
///   `audit_unavailable` and a reason: nothing sent after the first such
///   refusal is served; `/readyz` says the audit log failed, and
///   `/healthz` fails so that a liveness probe restarts the process, which
///   stays up (no panic, no SIGXFSZ death) until then;
/// - recovery: restarted once it can write again, the sidecar serves at
///   once, and the log still holds every answered read and verifies.
#[test]
fn a_full_disk_refuses_reads_with_503_rather_than_serving_them_unaudited() {
    let s = Setup::new(
        "user-profiles",
        "path = \"data\"",
        // Checkpoints only at shutdown: the segment is what fills up.
        "[audit]\ncheckpoint_every = 1000000\ncheckpoint_interval_ms = 3600000\n",
        3600,
    );
    write_upstream(s.path(), "profiles", "a.ndjson", &profiles_text(10));
    let token = s.token("mia", &["marketing"], "campaign-analytics");
    // A first start persists the bundle, the audit key and the segment.
    let mut p = s.spawn("sidecar-0.log");
    p.ready();
    assert_eq!(
        read(s.data, "profiles", "?limit=1", &token, "before")
            .unwrap()
            .status,
        200
    );
    std::thread::sleep(Duration::from_millis(200));
    p.kill();
    let segment = std::fs::read_dir(s.state().join("audit"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .unwrap();
    let size = segment.metadata().unwrap().len();
    let mut p = s.spawn_disk_limited(size + 16 * 1024, "sidecar-1.log");
    p.ready();
    let failed = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let clients: Vec<_> = (0..3)
        .map(|c| {
            let (failed, seen, token, data) = (
                Arc::clone(&failed),
                Arc::clone(&seen),
                token.clone(),
                s.data,
            );
            std::thread::spawn(move || {
                let mut after = 0;
                for i in 0..2000 {
                    let rid = format!("c{c}-{i}");
                    let sent = Instant::now();
                    let reply = read(data, "profiles", "?limit=5", &token, &rid).unwrap();
                    let got = Instant::now();
                    if reply.status == 503 {
                        failed.store(true, Ordering::SeqCst);
                    }
                    seen.lock().unwrap().push(Seen {
                        rid,
                        sent,
                        got,
                        reply,
                    });
                    if failed.load(Ordering::SeqCst) {
                        after += 1;
                        if after == 5 {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert!(failed.load(Ordering::SeqCst), "the log never filled up");
    assert!(
        p.process.running().unwrap(),
        "the sidecar died: {}",
        p.stderr()
    );
    let seen = seen.lock().unwrap();
    let first_refusal = seen
        .iter()
        .filter(|r| r.reply.status == 503)
        .map(|r| r.got)
        .min()
        .unwrap();
    let (mut served, mut refused) = (HashSet::new(), HashSet::new());
    for r in seen.iter() {
        match r.reply.status {
            200 => {
                assert!(r.reply.complete, "{}: a 200 cut short", r.rid);
                assert_eq!(r.reply.text().lines().count(), 5);
                assert!(
                    r.sent < first_refusal,
                    "{} was sent after the log failed and was served",
                    r.rid
                );
                served.insert(r.rid.clone());
            }
            503 => {
                let v = r.reply.json();
                assert_eq!(v["error"], "audit_unavailable", "{v}");
                assert!(!v["reason"].as_str().unwrap().is_empty());
                assert!(!r.reply.text().contains("example.com"), "a record leaked");
                refused.insert(r.rid.clone());
            }
            other => panic!("{}: {other} {}", r.rid, r.reply.text()),
        }
    }
    assert!(
        served.len() > 3,
        "too few reads before the disk filled: {}",
        served.len()
    );
    let ready = http(s.data, "GET", "/readyz", &[], b"").unwrap();
    assert_eq!(ready.status, 503);
    assert!(
        ready.json()["reason"]
            .as_str()
            .unwrap()
            .contains("audit log failed"),
        "{}",
        ready.text()
    );
    let health = http(s.data, "GET", "/healthz", &[], b"").unwrap();
    assert_eq!(health.status, 503, "{}", health.text());
    assert!(health.text().contains("restart"), "{}", health.text());
    // The log as the failed process left it.
    let key = audit_key(&s.state());
    let summary = verify_path(&s.state().join("audit"), &key).unwrap();
    assert_eq!(summary.torn_bytes, 0, "a failed write was left in the log");
    let check_log = |when: &str| {
        let by_rid = decisions(&audit_events(&s.state()));
        for rid in &served {
            let e = by_rid
                .get(rid)
                .unwrap_or_else(|| panic!("{when}: served {rid} is not in the audit log"));
            assert_eq!(e.status, Some(200));
            assert_eq!(e.decision, Some(Decision::Allow));
        }
        for rid in &refused {
            assert!(
                !by_rid.contains_key(rid),
                "{when}: {rid} was refused but the log says it was answered"
            );
        }
    };
    check_log("disk full");
    println!(
        "{} reads served and audited, {} refused once the log could not grow (segment limit {} bytes)",
        served.len(),
        refused.len(),
        size + 16 * 1024
    );
    // Space again: a restart recovers without anything else.
    p.kill();
    let mut p = s.spawn("sidecar-2.log");
    p.ready();
    let r = read(s.data, "profiles", "?limit=5", &token, "after").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    verify_path(&s.state().join("audit"), &key).unwrap();
    check_log("after the restart");
}

/// **A process log that cannot be written.** The sidecar's stderr is
/// `/dev/full`, where every write fails with ENOSPC, and it logs at debug
/// (a line per request). Invariants: it starts, serves reads and spends
/// budget as usual, audits each one, and stops cleanly on SIGTERM; a
/// failed log write is dropped, never a panic.
#[test]
fn an_unwritable_process_log_does_not_stop_the_sidecar() {
    let s = Setup::new("play-events", "path = \"data\"", "", 3600);
    // Plays of 91 s and more: payments only reads plays of 30 s or longer.
    let long_plays = plays_text(20).replace("\"duration_ms\":", "\"duration_ms\":9");
    write_upstream(s.path(), "plays", "today.ndjson", &long_plays);
    let payments = s.token("pay", &["payments"], "royalty-payments");
    let marketing = s.token("ann", &["marketing"], "campaign-analytics");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    // Nothing to read back: `stderr()` is empty.
    let mut p = Proc {
        process: Process::spawn_unlogged(sidecar_command(&s.config, "debug").stderr(full)).unwrap(),
        data: s.data,
    };
    p.ready();
    for i in 0..20 {
        let r = read(s.data, "plays", "?limit=3", &payments, &format!("r{i}")).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text().lines().count(), 3, "{:?}", r.text());
    }
    let agg = aggregate(
        s.data,
        &marketing,
        "agg",
        r#"{"aggregations":[{"count":{}}],"epsilon":0.1}"#,
    )
    .unwrap();
    assert_eq!(agg.status, 200, "{}", agg.text());
    assert!(p.process.running().unwrap(), "the sidecar died");
    p.process.signal(Signal::SIGTERM).unwrap();
    let code = p
        .process
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("no exit on SIGTERM: {e}"));
    assert_eq!(code, Some(0));
    let summary = verify_path(&s.state().join("audit"), &audit_key(&s.state())).unwrap();
    let by_rid = decisions(&audit_events(&s.state()));
    for rid in (0..20).map(|i| format!("r{i}")).chain(["agg".into()]) {
        assert_eq!(
            by_rid.get(&rid).and_then(|e| e.status),
            Some(200),
            "{rid} is not audited as answered"
        );
    }
    println!(
        "stderr on /dev/full at debug: 21 requests answered and audited, clean exit, {} events verified",
        summary.events
    );
}

// ---------------------------------------------------------------- 5. upstream

const UP_DEAD: u8 = 0;
const UP_ERROR: u8 = 1;
const UP_GARBAGE: u8 = 2;
const UP_STALL: u8 = 3;

/// Valid profile records, each with one junk line after it: not JSON,
/// cut off, not UTF-8, not an object, and a valid record longer than the
/// sidecar's `max_line_bytes`; the last record has no final newline.
fn garbage_body() -> (Vec<u8>, usize, usize) {
    let good: Vec<String> = profiles_text(5).lines().map(str::to_string).collect();
    let long = format!(
        r#"{{"user_id":"u-long","name":"{}","country":"NL"}}"#,
        "x".repeat(5000)
    );
    let junk: [&[u8]; 5] = [
        b"this is not json",
        br#"{"user_id":"u-9","email":"cut@exam"#,
        b"\xff\xfe\x00\x01 binary",
        b"[1,2,3]",
        long.as_bytes(),
    ];
    let mut body = Vec::new();
    for (g, j) in good.iter().zip(junk) {
        body.extend_from_slice(g.as_bytes());
        body.push(b'\n');
        body.extend_from_slice(j);
        body.push(b'\n');
    }
    body.extend_from_slice(good[4].as_bytes());
    (body, good.len() + 1, junk.len())
}

/// A tiny HTTP upstream whose behaviour is switched by the test: dead (the
/// connection closes without an answer), failing (500), garbage, or
/// stalling mid-body. Stalled connections are held until `release`.
fn upstream(mode: Arc<AtomicU8>, release: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let (mode, release) = (mode.load(Ordering::SeqCst), Arc::clone(&release));
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                match mode {
                    UP_DEAD => {}
                    UP_ERROR => {
                        let _ = c.write_all(
                            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nconnection: close\r\n\r\noops",
                        );
                    }
                    UP_GARBAGE => {
                        let (body, _, _) = garbage_body();
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = c.write_all(head.as_bytes());
                        let _ = c.write_all(&body);
                    }
                    _ => {
                        let _ = c.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n",
                        );
                        let two = profiles_text(2);
                        let _ = c.write_all(format!("{:x}\r\n{two}\r\n", two.len()).as_bytes());
                        let _ = c.flush();
                        while !release.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            });
        }
    });
    addr
}

/// **The HTTP upstream dies, fails, sends garbage or stalls.** Invariants:
///
/// - dead or failing: 502 `upstream_failed`, audited as an error;
/// - garbage: every malformed line (not JSON, cut off, not UTF-8, not an
///   object, over `max_line_bytes`) is skipped and counted (the `read
///   finished` log line), every valid record is still served, shaped, and
///   the completion event counts exactly those;
/// - stalled mid-body: the read ends within the upstream stall timeout as
///   a broken stream (no last chunk, so the client cannot take it for the
///   whole answer), with the records before the stall, and the completion
///   event records `upstream_failed`; the sidecar keeps serving.
#[test]
fn dead_garbage_and_stalled_upstreams_fail_visibly_and_are_audited() {
    let mode = Arc::new(AtomicU8::new(UP_DEAD));
    let release = Arc::new(AtomicBool::new(false));
    let up = upstream(Arc::clone(&mode), Arc::clone(&release));
    let s = Setup::new(
        "user-profiles",
        &format!("kind = \"http\"\nurl = \"http://{up}\""),
        "[limits]\nmax_line_bytes = 4096\nupstream_stall_timeout_ms = 700\n",
        3600,
    );
    let token = s.token("mia", &["marketing"], "campaign-analytics");
    let mut p = s.spawn("sidecar.log");
    p.ready();

    for (m, rid) in [(UP_DEAD, "dead"), (UP_ERROR, "error")] {
        mode.store(m, Ordering::SeqCst);
        let r = read(s.data, "profiles", "", &token, rid).unwrap();
        assert_eq!(r.status, 502, "{rid}: {}", r.text());
        assert_eq!(r.error_code(), "upstream_failed");
    }

    mode.store(UP_GARBAGE, Ordering::SeqCst);
    let r = read(s.data, "profiles", "", &token, "garbage").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.complete);
    let (_, valid, junk) = garbage_body();
    let records: Vec<serde_json::Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), valid, "{}", r.text());
    for rec in &records {
        // Shaped for marketing: masked email, no name.
        let email = rec["email"].as_str().unwrap();
        assert!(email.contains('*') && email.ends_with(".com"), "{rec}");
        assert!(rec["name"].is_null(), "{rec}");
    }

    mode.store(UP_STALL, Ordering::SeqCst);
    let t0 = Instant::now();
    let r = http_within(
        s.data,
        "GET",
        "/v1/ports/profiles/records",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("x-request-id", "stall"),
        ],
        b"",
        Duration::from_secs(20),
    )
    .unwrap();
    let took = t0.elapsed();
    assert_eq!(r.status, 200);
    assert!(!r.complete, "a stalled read looked complete: {}", r.text());
    // What arrived before the break is whole, shaped records (hyper may
    // drop its last buffered chunk when it aborts the body).
    let got = r.text();
    assert!(got.lines().count() <= 2, "{got}");
    for l in got.lines() {
        let rec: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(rec["name"].is_null(), "{rec}");
    }
    assert!(
        took < Duration::from_secs(15),
        "the stalled read took {took:?}"
    );
    // Through the columnar plane (a projection), the stall comes before
    // the first batch is whole: a clean 502, not a partial answer.
    let r = read(s.data, "profiles", "?fields=email", &token, "stall-shaped").unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.error_code(), "upstream_failed");
    release.store(true, Ordering::SeqCst);

    // The sidecar still serves.
    mode.store(UP_GARBAGE, Ordering::SeqCst);
    assert_eq!(
        read(s.data, "profiles", "", &token, "again")
            .unwrap()
            .status,
        200
    );
    // The same garbage through the columnar plane: the same records, the
    // same lines skipped.
    let r = read(
        s.data,
        "profiles",
        "?fields=email",
        &token,
        "garbage-shaped",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let emails: Vec<serde_json::Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(emails.len(), valid, "{}", r.text());
    for rec in &emails {
        assert_eq!(rec.as_object().unwrap().len(), 1, "{rec}");
        assert!(rec["email"].as_str().unwrap().contains('*'), "{rec}");
    }

    // The audit log, once the completions are written.
    std::thread::sleep(Duration::from_millis(300));
    let events = audit_events(&s.state());
    let by_rid = decisions(&events);
    for rid in ["dead", "error", "stall-shaped"] {
        let e = &by_rid[rid];
        assert_eq!(e.status, Some(502));
        assert_eq!(e.error.as_deref(), Some("upstream_failed"));
        assert_eq!(e.decision, Some(Decision::Error));
    }
    for rid in ["garbage", "garbage-shaped"] {
        let c = completion(&events, rid).unwrap();
        assert_eq!(c.outcome.as_deref(), Some("complete"), "{rid}");
        assert_eq!(c.records, Some(valid as u64), "{rid}");
    }
    let c = completion(&events, "stall").unwrap();
    assert_eq!(c.outcome.as_deref(), Some("upstream_failed"));
    assert_eq!(c.records, Some(2));
    let finished = p.logged("read finished");
    let garbage = finished
        .iter()
        .find(|v| of_request(v, "garbage"))
        .unwrap_or_else(|| panic!("no `read finished` line: {}", p.stderr()));
    assert_eq!(
        garbage["fields"]["malformed_skipped"], junk as u64,
        "{garbage}"
    );
    assert_eq!(garbage["fields"]["records_out"], valid as u64);
    let stall = finished.iter().find(|v| of_request(v, "stall")).unwrap();
    assert_eq!(stall["fields"]["failed"], true, "{stall}");
    verify_path(&s.state().join("audit"), &audit_key(&s.state())).unwrap();
}

// ------------------------------------------------------------ 7. bundle expiry

/// **The bundle expires while the sidecar serves** (the clock passing
/// `expires_at` with no renewal; for a jump of the wall clock, see
/// `a_clock_jump_past_expiry_refuses_the_next_request`). Clients read records and ask for aggregates back to back
/// across the expiry instant. Invariants:
///
/// - no request sent at or after `expires_at` is answered 200 (reads and
///   aggregates); the first one is refused with 503 `no_valid_bundle` and a
///   reason naming the expiry, and so is every later one;
/// - `/readyz` says not ready and why; the refusals are audited;
/// - recovery needs no operator: the next signed revision (what the
///   engine's renewal pushes) restores service at once.
#[test]
fn an_expiring_bundle_is_refused_from_the_expiry_instant_on() {
    let s = Setup::new("play-events", "path = \"data\"", "", 4);
    write_upstream(s.path(), "plays", "today.ndjson", &plays_text(20));
    let token = s.token("ann", &["marketing"], "campaign-analytics");
    let payments = s.token("pay", &["payments"], "royalty-payments");
    let mut p = s.spawn("sidecar.log");
    let ready = p.ready();
    let expires = time::OffsetDateTime::parse(
        ready["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp()
        * 1000;
    let mut seen = Vec::new();
    let mut n = 0;
    while now_ms() < expires + 1500 {
        n += 1;
        let sent = now_ms();
        let r = if n % 2 == 0 {
            read(s.data, "plays", "?limit=3", &payments, &format!("x{n}")).unwrap()
        } else {
            let body = format!(
                r#"{{"aggregations":[{{"count":{{}}}}],"epsilon":0.01,"from":"2026-01-01T00:00:{:02}Z","to":"2026-01-20T00:00:00Z"}}"#,
                n % 60
            );
            aggregate(s.data, &token, &format!("x{n}"), &body).unwrap()
        };
        seen.push((format!("x{n}"), sent, r));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut before, mut after) = (0, 0);
    for (rid, sent, r) in &seen {
        if *sent >= expires {
            after += 1;
            assert_eq!(
                r.status,
                503,
                "{rid} sent {} ms after expiry: {}",
                sent - expires,
                r.text()
            );
            assert_eq!(r.error_code(), "no_valid_bundle");
            assert!(r.json()["reason"].as_str().unwrap().contains("expired"));
        } else if r.status == 200 {
            before += 1;
        }
    }
    assert!(
        before > 0 && after > 0,
        "{before} before, {after} after expiry"
    );
    let ready = http(s.data, "GET", "/readyz", &[], b"").unwrap();
    assert_eq!(ready.status, 503);
    assert!(
        ready.json()["reason"]
            .as_str()
            .unwrap()
            .contains("revision 7 expired")
    );
    let by_rid = decisions(&audit_events(&s.state()));
    for (rid, sent, _) in &seen {
        if *sent >= expires {
            let e = &by_rid[rid.as_str()];
            assert_eq!(
                (e.status, e.error.as_deref()),
                (Some(503), Some("no_valid_bundle"))
            );
        }
    }
    // Renewal: the next revision restores service without a restart.
    let r = http(
        s.control,
        "PUT",
        "/control/v1/bundle",
        &[],
        &s.bundle(8, 3600),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(p.ready()["revision"], 8);
    let r = read(s.data, "plays", "?limit=3", &payments, "renewed").unwrap();
    assert_eq!((r.status, r.revision()), (200, Some(8)));
}

/// libfaketime's multithreaded preload library, where Debian puts it.
fn libfaketime() -> Option<PathBuf> {
    let lib = "faketime/libfaketimeMT.so.1";
    std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(lib))
        .chain([Path::new("/usr/lib").join(lib)])
        .find(|p| p.exists())
}

/// **The wall clock jumps forward past the bundle's expiry** (an NTP step,
/// a VM resumed after hours): the sidecar runs under libfaketime, whose
/// offset the test moves by two hours at once, while monotonic time goes
/// on as before, so nothing but the wall clock tells the sidecar. The
/// consumer's tokens are valid on both sides of the jump. Invariants:
///
/// - the first request after the jump is refused with 503
///   `no_valid_bundle` naming the expiry, reads and aggregates alike, and
///   audited so; `/readyz` says not ready;
/// - a bundle valid at the new time restores service without a restart.
#[test]
fn a_clock_jump_past_expiry_refuses_the_next_request() {
    let Some(faketime) = libfaketime() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "libfaketime is missing; .ci/setup installs it"
        );
        eprintln!("skipped: libfaketime is not installed (apt-get install libfaketime)");
        return;
    };
    let s = Setup::new("play-events", "path = \"data\"", "", 3600);
    // Plays of 91 s and more: payments only reads plays of 30 s or longer.
    let long_plays = plays_text(20).replace("\"duration_ms\":", "\"duration_ms\":9");
    write_upstream(s.path(), "plays", "today.ndjson", &long_plays);
    let token = |sub: &str, group: &str, purpose: &str| {
        let mut c = claims(sub, &[group], purpose);
        c["exp"] = (now() + 4 * 3600).into();
        sign(&s.keys, jsonwebtoken::Algorithm::EdDSA, &c)
    };
    let payments = token("pay", "payments", "royalty-payments");
    let marketing = token("ann", "marketing", "campaign-analytics");
    let offset = s.path().join("faketime");
    std::fs::write(&offset, "+0").unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_meshgov-sidecar"));
    c.env("LD_PRELOAD", &faketime)
        .env("FAKETIME_TIMESTAMP_FILE", &offset)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .arg("--config");
    let mut p = s.spawn_with(c, "sidecar.log", "info,meshgov_sidecar::records=debug");
    assert_eq!(p.ready()["revision"], 7);
    let count = r#"{"aggregations":[{"count":{}}],"epsilon":0.01}"#;
    let r = read(s.data, "plays", "?limit=3", &payments, "before").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = aggregate(s.data, &marketing, "before-agg", count).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    std::fs::write(&offset, "+2h").unwrap();
    let read_after = read(s.data, "plays", "?limit=3", &payments, "after").unwrap();
    let agg_after = aggregate(s.data, &marketing, "after-agg", count).unwrap();
    for r in [&read_after, &agg_after] {
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.error_code(), "no_valid_bundle");
        assert!(
            r.json()["reason"].as_str().unwrap().contains("expired"),
            "{}",
            r.text()
        );
    }
    let ready = http(s.data, "GET", "/readyz", &[], b"").unwrap();
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(
        ready.text().contains("revision 7 expired"),
        "{}",
        ready.text()
    );
    let by_rid = decisions(&audit_events(&s.state()));
    for rid in ["after", "after-agg"] {
        let e = &by_rid[rid];
        assert_eq!(
            (e.status, e.error.as_deref()),
            (Some(503), Some("no_valid_bundle")),
            "{rid}"
        );
    }
    for rid in ["before", "before-agg"] {
        assert_eq!(by_rid[rid].status, Some(200), "{rid}");
    }
    // A bundle valid at the new time: served at once.
    let r = http(
        s.control,
        "PUT",
        "/control/v1/bundle",
        &[],
        &s.bundle(8, 3 * 3600),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = read(s.data, "plays", "?limit=3", &payments, "renewed").unwrap();
    assert_eq!((r.status, r.revision()), (200, Some(8)), "{}", r.text());
    verify_path(&s.state().join("audit"), &audit_key(&s.state())).unwrap();
}

// ------------------------------------------------------------ 4. PostgreSQL

/// A PostgreSQL cluster of this test's own, started with `.ci/postgres`
/// (so that stopping it disturbs no other test); stopped when dropped.
struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    url: String,
}

impl Postgres {
    fn bin() -> PathBuf {
        let mut v: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .unwrap()
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .filter(|b| b.join("pg_ctl").exists())
            .collect();
        v.sort();
        v.pop().expect("PostgreSQL server binaries (.ci/setup)")
    }

    /// Runs a PostgreSQL tool as the cluster's owner.
    fn tool(name: &str) -> Command {
        let bin = Self::bin().join(name);
        // As root, the cluster belongs to `postgres` (see `.ci/postgres`).
        let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        if root && name == "pg_ctl" {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        }
    }

    fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let port = free_addr().port();
        let mut pg = Postgres {
            dir,
            port,
            url: String::new(),
        };
        pg.up();
        pg
    }

    /// Starts (or restarts) the cluster; the first time, creates it.
    fn up(&mut self) {
        let o = Command::new("bash")
            .arg(repo().join(".ci/postgres"))
            .arg(self.dir.path())
            .arg(self.port.to_string())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        self.url = String::from_utf8(o.stdout).unwrap().trim().to_string();
    }

    /// Stops the cluster (`fast`: sessions are cut, as in a restart).
    fn down(&self) {
        let o = Self::tool("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// One value from `sql`, through `psql`.
    fn query(&self, sql: &str) -> String {
        let o = Self::tool("psql")
            .arg(&self.url)
            .args(["-tAc", sql])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Self::tool("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// **PostgreSQL goes down and comes back mid-spend** (the shared ledger).
/// Two clients ask for aggregates and one reads records, all the time,
/// while the database is stopped and restarted under them. Invariants:
///
/// - while it is down, every aggregate is refused with 503
///   `ledger_unavailable` (never a 200 without a recorded spend), and
///   record reads, which need no ledger, are unaffected;
/// - once it is back, aggregates succeed again without restarting the
///   sidecar;
/// - the spend in the database is at least the sum of the costs the
///   sidecar granted (each in its audit log), which is at least the sum of
///   the costs of the 200s the clients received. It may be more: a
///   reservation whose commit reached the server just as it stopped is
///   spent although the sidecar saw an error and refused (budget lost,
///   never granted twice); never less.
#[test]
fn postgres_down_mid_spend_refuses_aggregates_and_recovers_by_itself() {
    match std::env::var("MESHGOV_TEST_POSTGRES") {
        Ok(u) if !u.is_empty() => {}
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but MESHGOV_TEST_POSTGRES is not"
            );
            eprintln!("skipping: set MESHGOV_TEST_POSTGRES to run this test");
            return;
        }
    }
    const EPSILON: f64 = 0.01;
    let mut pg = Postgres::start();
    let s = Setup::new(
        "play-events",
        "path = \"data\"",
        &format!(
            "[privacy]\nledger = \"postgres\"\npostgres_url = \"{}\"\n",
            pg.url
        ),
        3600,
    );
    write_upstream(s.path(), "plays", "today.ndjson", &plays_text(40));
    let token = s.token("ann", &["marketing"], "campaign-analytics");
    let payments = s.token("pay", &["payments"], "royalty-payments");
    let mut p = s.spawn("sidecar.log");
    p.ready();
    // 0: up, 1: going down, 2: down, 3: coming back, 4: up again.
    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let query_no = Arc::new(AtomicU64::new(0));
    type Log = Vec<(u8, u8, String, Resp)>;
    let log: Arc<Mutex<Log>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..3 {
        let (phase, stop, query_no, log, data) = (
            Arc::clone(&phase),
            Arc::clone(&stop),
            Arc::clone(&query_no),
            Arc::clone(&log),
            s.data,
        );
        // Two clients ask for aggregates, the third reads records.
        let token = if c == 2 {
            payments.clone()
        } else {
            token.clone()
        };
        clients.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let before = phase.load(Ordering::SeqCst);
                let n = query_no.fetch_add(1, Ordering::SeqCst);
                let rid = format!("c{c}-{n}");
                let r = if c == 2 {
                    read(data, "plays", "?limit=5", &token, &rid)
                } else {
                    let from = 1_700_000_000 + n;
                    let from = time::OffsetDateTime::from_unix_timestamp(from as i64)
                        .unwrap()
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap();
                    aggregate(
                        data,
                        &token,
                        &rid,
                        &format!(
                            r#"{{"aggregations":[{{"count":{{}}}}],"epsilon":{EPSILON},"from":"{from}","to":"2023-11-20T00:00:00Z"}}"#
                        ),
                    )
                }
                .unwrap();
                let after = phase.load(Ordering::SeqCst);
                log.lock().unwrap().push((before, after, rid, r));
                std::thread::sleep(Duration::from_millis(15));
            }
        }));
    }
    let granted_ok = |log: &Log, phase: u8| {
        log.iter()
            .filter(|(b, _, rid, r)| *b == phase && !rid.starts_with("c2") && r.status == 200)
            .count()
    };
    let wait_for = |what: &str, f: &dyn Fn(&Log) -> bool| {
        let t0 = Instant::now();
        while !f(&log.lock().unwrap()) {
            assert!(t0.elapsed() < Duration::from_secs(30), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("aggregates while up", &|l| granted_ok(l, 0) >= 3);
    phase.store(1, Ordering::SeqCst);
    pg.down();
    phase.store(2, Ordering::SeqCst);
    wait_for("requests while down", &|l| {
        l.iter().filter(|(b, a, _, _)| *b == 2 && *a == 2).count() >= 12
    });
    phase.store(3, Ordering::SeqCst);
    pg.up();
    phase.store(4, Ordering::SeqCst);
    wait_for("aggregates after the restart", &|l| granted_ok(l, 4) >= 3);
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let log = log.lock().unwrap();
    let (mut paid, mut unavailable) = (0.0, 0);
    for (before, after, rid, r) in log.iter() {
        let reading = rid.starts_with("c2");
        if reading {
            assert_eq!(
                r.status,
                200,
                "{rid} (phase {before}..{after}): {}",
                r.text()
            );
            continue;
        }
        match r.status {
            200 => {
                assert!(
                    !(*before == 2 && *after == 2),
                    "{rid} was granted while PostgreSQL was down"
                );
                paid += r.json()["cost"]["epsilon"].as_f64().unwrap();
            }
            503 => {
                assert_eq!(r.error_code(), "ledger_unavailable", "{rid}");
                unavailable += 1;
            }
            other => panic!("{rid}: {other} {}", r.text()),
        }
        if *before == 2 && *after == 2 {
            assert_eq!(r.status, 503, "{rid}: {}", r.text());
        }
    }
    // What the sidecar granted, by its audit log, and what the database holds.
    let audited: f64 = audit_events(&s.state())
        .iter()
        .filter(|e| e.kind == Kind::Decision && e.action.as_deref() == Some("aggregate"))
        .filter_map(|e| e.privacy_cost)
        .sum();
    let spent: i64 = pg
        .query(
            "SELECT coalesce(sum(spent_epsilon), 0) FROM meshgov_privacy_budget \
             WHERE account LIKE '%|consumer|ann|campaign-analytics'",
        )
        .parse()
        .unwrap();
    let spent = spent as f64 / meshgov_privacy::ledger::UNITS_PER_ONE;
    println!(
        "{} requests, {unavailable} aggregates refused as ledger_unavailable; 200s worth {paid:.2}; granted {audited:.2}; the database holds {spent:.2}",
        log.len()
    );
    assert!(spent >= audited - 1e-9, "spent {spent} < granted {audited}");
    assert!(spent >= paid - 1e-9, "spent {spent} < answered {paid}");
    assert!(p.process.running().unwrap(), "the sidecar exited");
}
