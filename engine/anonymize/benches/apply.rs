//! The per-record hot path against a baseline measured in the same run.
//!
//! - `records/A_value_roundtrip`: `serde_json::from_slice::<Value>` and
//!   `to_writer` of every record: what a naive pass-through costs.
//! - `records/B_apply_json`: `RecordProgram::apply_json` with a realistic plan.
//!   Target: at least 0.5x A's throughput.
//! - `records/C_project`: the CSV path, for reference.
//! - `transforms/*`: single transforms over 10k values, in values/s.
//!
//! Then the same records through Presidio's anonymizer (PyPI
//! `presidio-anonymizer`, `presidio_apply.py` beside this file) in a Python
//! process of its own, with the same treatments field by field (a salted
//! SHA-256 for the HMAC pseudonym, as Presidio has no keyed one), and
//! records per CPU-second of both printed with the ratio (target: at least
//! 100x). The Python is `MESHGOV_PRESIDIO_PYTHON`, by default
//! `/opt/meshgov/presidio/bin/python` (`.ci/setup` installs it); without it
//! the comparison is skipped and said, except in CI (`CI` set).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

// How the bench was started (measure, or run once): shared with the
// other crates' benches.
#[path = "../../../tests/e2e/src/bench.rs"]
mod bench;

use serde_json::json;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshgov_anonymize::{DatePart, FieldRule, RawValue, RecordProgram, RowPredicate, Transform};

const RECORDS: usize = 10_000;
const SECRET: &[u8; 32] = b"bench-secret-bench-secret-bench!";

/// A small deterministic generator, so every run measures the same data.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const FIRST: &[&str] = &[
    "Olivia",
    "Noah",
    "Amélie",
    "Liam",
    "Søren",
    "Zoë",
    "Mateo",
    "Aiko",
    "Fatima",
    "Oliver",
    "Chloé",
    "Jürgen",
    "Priya",
    "Lucas",
    "Ana-María",
    "Ethan",
];
const LAST: &[&str] = &[
    "Smith",
    "García",
    "Müller",
    "O'Brien",
    "Nakamura",
    "Kowalski",
    "Johansson",
    "Dubois",
    "Rossi",
    "Novák",
    "Silva",
    "Brown",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "mail.example.org",
    "corp.example.net",
    "inbox.test",
];
const COUNTRIES: &[&str] = &["GB", "IE", "FR", "DE", "ES", "NL", "SE", "PL", "IT", "PT"];
const POSTCODES: &[&str] = &[
    "SW1A 1AA", "EC1A 1BB", "W1A 0AX", "M1 1AE", "B33 8TH", "CR2 6XH", "DN55 1PT", "75008",
    "10115", "28013",
];

fn records() -> Vec<String> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    (0..RECORDS)
        .map(|i| {
            let first = rng.pick(FIRST);
            let last = rng.pick(LAST);
            // Fields in schema order, as a producer's serializer writes them
            // (`json!` would sort them).
            let fields: Vec<(&str, serde_json::Value)> = vec![
                (
                    "user_id",
                    json!(format!("urn:mesh:user:{:08x}-{:04x}", rng.next() as u32, i)),
                ),
                (
                    "email",
                    json!(format!(
                        "{}.{}{}@{}",
                        first.to_lowercase(),
                        last.to_lowercase(),
                        rng.below(100),
                        rng.pick(DOMAINS)
                    )),
                ),
                ("name", json!(format!("{first} {last}"))),
                (
                    "birth_date",
                    json!(format!(
                        "{}-{:02}-{:02}",
                        1940 + rng.below(66),
                        1 + rng.below(12),
                        1 + rng.below(28)
                    )),
                ),
                ("country", json!(rng.pick(COUNTRIES))),
                ("postcode", json!(rng.pick(POSTCODES))),
                (
                    "signed_up_at",
                    json!(format!(
                        "20{:02}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                        15 + rng.below(10),
                        1 + rng.below(12),
                        1 + rng.below(28),
                        rng.below(24),
                        rng.below(60),
                        rng.below(60),
                        rng.below(1000)
                    )),
                ),
                ("orders", json!(rng.below(250))),
                (
                    "lifetime_value",
                    json!((rng.below(10_000_000) as f64) / 100.0),
                ),
                ("is_active", json!(rng.below(4) != 0)),
            ];
            let body: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{}:{}", json!(k), v))
                .collect();
            format!("{{{}}}", body.join(","))
        })
        .collect()
}

fn plan() -> RecordProgram {
    RecordProgram::new(
        vec![
            FieldRule::new("user_id", Transform::hmac_sha256(SECRET, "u_").unwrap()),
            FieldRule::new(
                "email",
                Transform::Mask {
                    keep_first: 1,
                    keep_last: 4,
                    mask_char: '*',
                },
            ),
            FieldRule::new("name", Transform::Redact { drop: false }),
            FieldRule::new("birth_date", Transform::GeneralizeDate(DatePart::Year)),
            FieldRule::new("country", Transform::Clear),
            FieldRule::new("postcode", Transform::GeneralizePrefix { chars: 3 }),
            FieldRule::new("signed_up_at", Transform::Clear),
            FieldRule::new("orders", Transform::Clear),
            FieldRule::new("lifetime_value", Transform::Clear),
            FieldRule::new("is_active", Transform::Clear),
        ],
        RowPredicate::keep_all(),
    )
    .unwrap()
}

fn bench_records(c: &mut Criterion) {
    let lines = records();
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let plan = plan();
    // Sanity: every record is emitted and the output is JSON.
    let mut out = Vec::with_capacity(bytes * 2);
    for line in &lines {
        plan.apply_json(line.as_bytes(), &mut out).unwrap();
    }
    for written in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        serde_json::from_slice::<serde_json::Value>(written).unwrap();
    }
    eprintln!(
        "{} records, {:.0} bytes/record in, {:.0} bytes/record out",
        lines.len(),
        bytes as f64 / lines.len() as f64,
        out.len() as f64 / lines.len() as f64
    );

    // Criterion reports each function alone; print the ratio the target is
    // stated in, from interleaved passes so both see the same machine load.
    let mut a_times = Vec::new();
    let mut b_times = Vec::new();
    for _ in 0..bench::knob("APPLY_PASSES", 15, 1) {
        let start = Instant::now();
        out.clear();
        for line in &lines {
            let value: serde_json::Value = serde_json::from_slice(line.as_bytes()).unwrap();
            serde_json::to_writer(&mut out, &value).unwrap();
            out.push(b'\n');
        }
        a_times.push(start.elapsed());
        let start = Instant::now();
        out.clear();
        for line in &lines {
            plan.apply_json(black_box(line.as_bytes()), &mut out)
                .unwrap();
        }
        b_times.push(start.elapsed());
    }
    a_times.sort_unstable();
    b_times.sort_unstable();
    let (a, b) = (a_times[a_times.len() / 2], b_times[b_times.len() / 2]);
    eprintln!(
        "interleaved medians: A {a:.2?}, B {b:.2?}; B/A throughput = {:.2} (target >= 0.5)",
        a.as_secs_f64() / b.as_secs_f64()
    );
    presidio(&lines, b);

    let mut group = c.benchmark_group("records");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("A_value_roundtrip", |b| {
        b.iter(|| {
            out.clear();
            for line in &lines {
                let value: serde_json::Value = serde_json::from_slice(line.as_bytes()).unwrap();
                serde_json::to_writer(&mut out, &value).unwrap();
                out.push(b'\n');
            }
            black_box(out.len())
        });
    });
    group.bench_function("B_apply_json", |b| {
        b.iter(|| {
            out.clear();
            for line in &lines {
                plan.apply_json(black_box(line.as_bytes()), &mut out)
                    .unwrap();
            }
            black_box(out.len())
        });
    });
    group.bench_function("C_project", |b| {
        b.iter(|| {
            let mut cells = Vec::new();
            let mut total = 0;
            for line in &lines {
                plan.project(black_box(line.as_bytes()), &mut cells)
                    .unwrap();
                total += cells.len();
            }
            black_box(total)
        });
    });
    group.finish();
}

/// The same records through Presidio's anonymizer, against meshgov's
/// `apply_json` time for all of them (`ours`).
fn presidio(lines: &[String], ours: Duration) {
    let python = std::env::var("MESHGOV_PRESIDIO_PYTHON")
        .unwrap_or_else(|_| "/opt/meshgov/presidio/bin/python".into());
    if !std::path::Path::new(&python).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no Python with presidio-anonymizer at {python} (.ci/setup installs it)"
        );
        eprintln!("presidio: not measured (no {python}; set MESHGOV_PRESIDIO_PYTHON)");
        return;
    }
    let n = bench::knob("PRESIDIO_RECORDS", RECORDS, 100).min(lines.len());
    let dir = std::env::temp_dir().join(format!("meshgov-presidio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("records.ndjson");
    std::fs::write(&input, lines[..n].join("\n")).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/presidio_apply.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&input)
        .arg(bench::knob("PRESIDIO_PASSES", 3, 1).to_string())
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        out.status.success(),
        "presidio: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut rows = text.lines();
    let cpu: f64 = rows
        .next()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap();
    // The same treatment of the first record's email as meshgov's mask.
    let first: serde_json::Value = serde_json::from_str(rows.next().unwrap()).unwrap();
    let mut ours_first = Vec::new();
    plan()
        .apply_json(lines[0].as_bytes(), &mut ours_first)
        .unwrap();
    let ours_first: serde_json::Value = serde_json::from_slice(&ours_first).unwrap();
    assert_eq!(first["email"], ours_first["email"], "the same mask");
    let theirs_rps = n as f64 / cpu.max(1e-9);
    let ours_rps = lines.len() as f64 / ours.as_secs_f64();
    eprintln!(
        "presidio-anonymizer ({n} records, CPU time, median of its passes): {theirs_rps:.0} records/s; meshgov apply_json {ours_rps:.0} records/s; meshgov/presidio = {:.0}x (target >= 100x)",
        ours_rps / theirs_rps
    );
}

fn bench_transforms(c: &mut Criterion) {
    let lines = records();
    let field = |name: &str| -> Vec<Box<RawValue>> {
        lines
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                serde_json::value::to_raw_value(&v[name]).unwrap()
            })
            .collect()
    };
    let emails = field("email");
    let ids = field("user_id");
    let mask = Transform::Mask {
        keep_first: 1,
        keep_last: 4,
        mask_char: '*',
    };
    let hmac = Transform::hmac_sha256(SECRET, "u_").unwrap();
    let mut out = Vec::with_capacity(RECORDS * 64);

    let mut group = c.benchmark_group("transforms");
    group.throughput(Throughput::Elements(RECORDS as u64));
    for (name, transform, values) in [
        ("mask_email", &mask, &emails),
        ("hmac_user_id", &hmac, &ids),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                for value in values {
                    transform.write_json(Some(black_box(value)), &mut out);
                }
                black_box(out.len())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_records, bench_transforms);
criterion_main!(benches);
