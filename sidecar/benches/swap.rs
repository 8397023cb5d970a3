//! Verify-and-swap: what the control port does with a pushed bundle
//! (signature, digests, mesh, product, expiry, rollback check, Cedar
//! compilation, product view, `ArcSwap` store), for the example slice and
//! for a 1,000-policy whole-mesh bundle; with and without persisting
//! (write, fsync, rename).
//!
//! Then the read path under swaps: p50/p99/max latency of small reads
//! (`limit=10`) through the real data port, first with no swaps, then while
//! a new revision of the 1,000-policy bundle (one policy changed) is
//! swapped in every 20 ms, measured in the same run. Knobs: `SWAP_READS`
//! (2000 reads each way) and `SWAP_REVISIONS` (200 revisions signed up
//! front, swapped in until the reads end).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use criterion::{BatchSize, Criterion};
use meshgov_core::descriptor::{Descriptor, ProductInfo};
use meshgov_core::source::{SourceFile, SourceSet};
use meshgov_e2e::bench::knob;
use meshgov_sidecar::config::Strings;
use meshgov_sidecar::{App, Config, clock, launch};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Fixture {
    dir: tempfile::TempDir,
    /// The state directory of the runs "without persisting": on tmpfs when
    /// there is one, where the write, fsync and rename cost next to nothing.
    /// (Every sidecar has a state directory; there is no config without.)
    memory: tempfile::TempDir,
    gov: meshgov_bundle::SigningKey,
    idp: ring::signature::Ed25519KeyPair,
    idp_pkcs8: Vec<u8>,
}

fn fixture() -> Fixture {
    use ring::signature::KeyPair as _;
    let rng = ring::rand::SystemRandom::new();
    let pem = meshgov_bundle::SigningKey::generate_pkcs8_pem(&rng).unwrap();
    let idp_pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let idp = ring::signature::Ed25519KeyPair::from_pkcs8(idp_pkcs8.as_ref()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("uid.key"), "x".repeat(40)).unwrap();
    let data = dir.path().join("data/profiles");
    std::fs::create_dir_all(&data).unwrap();
    let line = r#"{"user_id":"u-1","email":"alice@example.com","name":"Alice","birth_date":"1990-04-12","country":"NL","postcode":"1012AB","signed_up_at":"2026-03-01T10:00:00Z"}"#;
    std::fs::write(
        data.join("2026-03-01.ndjson"),
        format!("{line}\n").repeat(50),
    )
    .unwrap();
    let _ = idp.public_key();
    let shm = Path::new("/dev/shm");
    let memory = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    Fixture {
        dir,
        memory,
        gov: meshgov_bundle::SigningKey::from_pkcs8_pem(&pem).unwrap(),
        idp,
        idp_pkcs8: idp_pkcs8.as_ref().to_vec(),
    }
}

/// The sidecar's config: the example user-profiles product, its state
/// (audit log, persisted bundle) in `state`.
fn config_text(f: &Fixture, state: &Path) -> String {
    use ring::signature::KeyPair as _;
    format!(
        r#"
mesh = "media-mesh"
descriptor = {d:?}
state_dir = {state:?}
trusted_bundle_keys = ["{gov}"]
[listen]
data = "127.0.0.1:0"
[upstream]
path = "data"
{auth}
[pseudonym_keys]
user-identity = "uid.key"
"#,
        d = root()
            .join("policies/products/user-profiles.yaml")
            .display()
            .to_string(),
        state = state.display().to_string(),
        gov = f.gov.public_key(),
        auth = meshgov_sidecar::config::eddsa_auth_toml(
            "https://idp.media.example",
            "meshgov",
            f.idp.public_key().as_ref()
        ),
    )
}

/// A sidecar's [`App`] without listeners: what verify-and-swap runs in.
fn app(f: &Fixture, persist: bool) -> App {
    let state = if persist {
        f.dir.path().join("state")
    } else {
        f.memory.path().to_path_buf()
    };
    let text = config_text(f, &state);
    let cfg = Config::from_toml(
        &text,
        f.dir.path(),
        &BTreeMap::<String, String>::new() as &dyn Strings,
    )
    .unwrap();
    App::from_config(&cfg).unwrap()
}

/// The example mesh plus 1,000 generated Cedar policies, unsliced.
fn big_policies() -> meshgov_core::Policies {
    let mut src = SourceSet::read_dir(&root().join("policies")).unwrap();
    let mut text = String::new();
    for p in 0..100 {
        for i in 0..10 {
            text.push_str(&format!(
                "@id(\"gen.p{p}.{i}\")\npermit (principal in Group::\"team-{i}\", action == Action::\"{}\", resource in DataProduct::\"gen/product-{p}\")\nwhen {{ context.purpose == \"product-analytics\" && context.time > {i} }};\n\n",
                if i % 3 == 0 { "reveal" } else { "read" }
            ));
        }
    }
    src.access
        .push(SourceFile::new("access/generated.cedar", text));
    let checked = meshgov_core::check(&src);
    let p = checked.policies.expect("the generated mesh checks");
    assert!(p.access.len() >= 1000);
    p
}

fn example_slice() -> meshgov_core::Policies {
    let src = SourceSet::read_dir(&root().join("policies")).unwrap();
    let all = meshgov_core::check(&src).policies.unwrap();
    let text =
        std::fs::read_to_string(root().join("policies/products/user-profiles.yaml")).unwrap();
    let d = Descriptor::parse("d", &text).unwrap();
    all.slice(&ProductInfo::resolve(&d, &all.mesh).unwrap())
        .unwrap()
}

fn sign_components(
    f: &Fixture,
    components: BTreeMap<String, String>,
    product: Option<String>,
    revision: u64,
) -> Vec<u8> {
    let now = clock::now_unix();
    let payload = meshgov_bundle::BundlePayload::new(
        meshgov_bundle::BundleMeta {
            mesh: "media-mesh".into(),
            revision,
            created_at_unix: now - 60,
            expires_at_unix: now + 86_400,
            source_commit: None,
            product,
        },
        components,
    )
    .unwrap();
    meshgov_bundle::sign(&payload.to_canonical_bytes(), &[&f.gov])
        .unwrap()
        .to_json_bytes()
}

fn sign(f: &Fixture, p: &meshgov_core::Policies, revision: u64) -> Vec<u8> {
    sign_components(f, p.components(), p.product.clone(), revision)
}

/// The components of `p` with policy `gen.p0.1`'s condition set to `n`:
/// consecutive values differ in exactly one policy, like a small commit.
fn with_one_change(p: &meshgov_core::Policies, n: u64) -> BTreeMap<String, String> {
    let mut c = p.components();
    let (_, text) = c
        .iter_mut()
        .find(|(_, v)| v.contains("gen.p0.1"))
        .expect("the generated policies");
    let mut list: Vec<serde_json::Value> = serde_json::from_str(text).unwrap();
    let item = list.iter_mut().find(|v| v["id"] == "gen.p0.1").unwrap();
    let t = item["text"]
        .as_str()
        .unwrap()
        .replace("context.time > 1 ", &format!("context.time > {n} "));
    assert_ne!(item["text"].as_str().unwrap(), t);
    item["text"] = serde_json::Value::String(t);
    *text = serde_json::to_string(&list).unwrap();
    c
}

fn bench_swap(
    c: &mut Criterion,
    f: &Fixture,
    big: &meshgov_core::Policies,
    big_env: &[u8],
    slice_env: &[u8],
) {
    let mut g = c.benchmark_group("verify_and_swap");
    g.sample_size(20);
    // Into an empty sidecar: every policy is parsed.
    for (name, bundle, persist) in [
        ("cold_example_slice", slice_env, false),
        ("cold_1000_policies", big_env, false),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || app(f, persist),
                |a| {
                    a.accept_bundle(bundle, clock::now_unix()).unwrap();
                    a
                },
                BatchSize::PerIteration,
            )
        });
    }
    // Over the previous revision, as a rollout does: a renewal (same
    // policies), and a commit that changed one policy; with and without
    // persisting (write, fsync, rename).
    for (name, change, persist) in [
        ("next_revision_1000_policies_unchanged", false, false),
        ("next_revision_1000_policies_one_changed", true, false),
        (
            "next_revision_1000_policies_one_changed_persisted",
            true,
            true,
        ),
    ] {
        let a = app(f, persist);
        a.accept_bundle(big_env, clock::now_unix()).unwrap();
        let mut rev = 1;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    rev += 1;
                    let comps = if change {
                        with_one_change(big, rev)
                    } else {
                        big.components()
                    };
                    let env = sign_components(f, comps, None, rev);
                    let t = Instant::now();
                    let ack = a.accept_bundle(&env, clock::now_unix()).unwrap();
                    total += t.elapsed();
                    assert_eq!(ack.revision, rev);
                }
                total
            })
        });
    }
    g.finish();
}

fn token(f: &Fixture) -> String {
    let now = clock::now_unix();
    let claims = serde_json::json!({
        "iss": "https://idp.media.example", "aud": "meshgov", "sub": "mia",
        "groups": ["marketing"], "purpose": "campaign-analytics",
        "iat": now, "exp": now + 3600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_der(&f.idp_pkcs8),
    )
    .unwrap()
}

fn read_once(addr: std::net::SocketAddr, req: &[u8]) -> Duration {
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(req).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    t.elapsed()
}

fn summary(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99), *v.last().unwrap())
}

fn us(d: Duration) -> String {
    format!("{:.0} us", d.as_secs_f64() * 1e6)
}

/// Small reads with and without swaps of the 1,000-policy bundle.
fn reads_under_swaps(f: &Fixture, big: &meshgov_core::Policies) {
    let reads = knob("SWAP_READS", 2000, 20);
    let revisions = knob("SWAP_REVISIONS", 200, 4) as u64;
    let swaps: Vec<Vec<u8>> = (2..revisions)
        .map(|r| sign_components(f, with_one_change(big, r), None, r))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // A state directory of its own: the swap benchmarks above persisted
    // higher revisions to `state`, and this sidecar starts from revision 1.
    let running = rt
        .block_on(launch::boot(
            &config_text(f, &f.dir.path().join("state-reads")),
            f.dir.path(),
        ))
        .unwrap();
    let app = Arc::clone(running.app());
    let addr = running.data_addr;
    app.accept_bundle(&sign(f, big, 1), clock::now_unix())
        .unwrap();
    let req = format!(
        "GET /v1/ports/profiles/records?limit=10 HTTP/1.1\r\nHost: b\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\r\n",
        token(f)
    )
    .into_bytes();
    for _ in 0..reads / 10 {
        read_once(addr, &req);
    }
    let quiet: Vec<Duration> = (0..reads).map(|_| read_once(addr, &req)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (app, stop) = (Arc::clone(&app), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0;
            let mut worst = Duration::ZERO;
            for b in &swaps {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let t = Instant::now();
                app.accept_bundle(b, clock::now_unix()).unwrap();
                worst = worst.max(t.elapsed());
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (n, worst)
        })
    };
    let busy: Vec<Duration> = (0..reads).map(|_| read_once(addr, &req)).collect();
    stop.store(true, Ordering::Relaxed);
    let (n, worst_swap) = swapper.join().unwrap();
    rt.block_on(running.stop());
    let (q50, q99, qmax) = summary(quiet);
    let (b50, b99, bmax) = summary(busy);
    println!("reads (limit=10), {reads} each:");
    println!(
        "  no swaps:                      p50 {}  p99 {}  max {}",
        us(q50),
        us(q99),
        us(qmax)
    );
    println!(
        "  swapping every 20 ms ({n} swaps, each at most {} incl. fsync): p50 {}  p99 {}  max {}",
        us(worst_swap),
        us(b50),
        us(b99),
        us(bmax)
    );
    println!(
        "  p99 under swaps / p99 without: {:.2}",
        b99.as_secs_f64() / q99.as_secs_f64()
    );
}

fn main() {
    let f = fixture();
    let big = big_policies();
    let big_env = sign(&f, &big, 1);
    let slice_env = sign(&f, &example_slice(), 1);
    println!(
        "bundles: 1,000-policy whole mesh {} KiB, example slice {} KiB",
        big_env.len() / 1024,
        slice_env.len() / 1024
    );
    let mut c = Criterion::default().configure_from_args();
    bench_swap(&mut c, &f, &big, &big_env, &slice_env);
    c.final_summary();
    reads_under_swaps(&f, &big);
}
