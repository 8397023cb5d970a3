//! The per-record hot path against a baseline measured in the same run.
//!
//! - `records/A_value_roundtrip`: `serde_json::from_slice::<Value>` and
//!   `to_writer` of every record: what a naive pass-through costs.
//! - `records/B_apply_json`: `RecordProgram::apply_json` with a realistic plan.
//!   Target: at least 0.5x A's throughput.
//! - `records/C_project`: the CSV path, for reference.
//! - `transforms/*`: single transforms over 10k values, in values/s.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::json;
use std::hint::black_box;
use std::time::Instant;

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
    for _ in 0..15 {
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
