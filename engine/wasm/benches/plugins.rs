//! Plugin costs, with native baselines measured in the same run.
//!
//! - `instantiate/pooled`: a fresh store and instance from the pooling
//!   allocator, dropped (what every call pays before guest code runs).
//!   Target: 10 µs or less.
//! - `call/echo_1_value`: a whole host→guest call of one value to a guest
//!   that does no work (instantiate, allocate, copy in, call, decode).
//! - `batch_10k/*`: 10,000 phone numbers through the phone-mask plugin
//!   (one call) against the core's built-in `mask` transform (keep the last
//!   2 characters) over the same values. The ratio is printed at the end.
//!
//! The example plugins are built from source first (see
//! `meshgov_wasm::examples`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshgov_anonymize::{RawValue, Transform};
use meshgov_core::plugins::PluginManifest;
use meshgov_wasm::{Plugin, Runtime};
use sha2::Digest;
use std::hint::black_box;
use std::time::{Duration, Instant};

const VALUES: usize = 10_000;

fn load(name: &str, kind: &str, bytes: &[u8]) -> Plugin {
    let manifest = PluginManifest {
        name: name.into(),
        kind: serde_json::from_value(serde_json::Value::from(kind)).unwrap(),
        module: String::new(),
        sha256: hex::encode(sha2::Sha256::digest(bytes)),
        description: String::new(),
        fuel: 100_000,
        max_memory_bytes: 64 << 20,
    };
    Runtime::global().unwrap().load(&manifest, bytes).unwrap()
}

fn phones() -> Vec<Box<RawValue>> {
    (0..VALUES)
        .map(|i| RawValue::from_string(format!("\"+44 20 {:04} {:04}\"", i % 9973, i)).unwrap())
        .collect()
}

fn native(values: &[&RawValue], mask: &Transform, out: &mut Vec<u8>) {
    out.clear();
    for v in values {
        mask.write_json(Some(v), out);
        out.push(b'\n');
    }
}

fn median(mut f: impl FnMut(), runs: usize) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn bench(c: &mut Criterion) {
    let built = meshgov_wasm::examples::build()
        .unwrap()
        .expect("the wasm32 toolchain is needed to build the example plugins");
    let echo_wasm =
        wat::parse_file(meshgov_wasm::examples::source_dir().join("fixtures/echo.wat")).unwrap();
    let echo = load("echo", "transform", &echo_wasm);
    let phone = load(
        "phone-mask",
        "transform",
        &built.bytes("phone-mask").unwrap(),
    );
    let one = RawValue::from_string("\"+44 20 7946 0958\"".into()).unwrap();

    c.bench_function("instantiate/pooled", |b| b.iter(|| echo.probe().unwrap()));
    c.bench_function("call/echo_1_value", |b| {
        b.iter(|| echo.transform(black_box(&[&*one])).unwrap())
    });

    let values = phones();
    let refs: Vec<&RawValue> = values.iter().map(|b| &**b).collect();
    let mask = Transform::Mask {
        keep_first: 0,
        keep_last: 2,
        mask_char: 'X',
    };
    let mut g = c.benchmark_group("batch_10k");
    g.throughput(Throughput::Elements(VALUES as u64));
    g.bench_function("plugin_phone_mask", |b| {
        b.iter(|| phone.transform(black_box(&refs)).unwrap())
    });
    let mut out = Vec::new();
    g.bench_function("native_core_mask", |b| {
        b.iter(|| native(black_box(&refs), &mask, &mut out))
    });
    g.finish();

    let plugin = median(
        || {
            black_box(phone.transform(&refs).unwrap());
        },
        31,
    );
    let core = median(|| native(&refs, &mask, &mut out), 31);
    let rate = |d: Duration| VALUES as f64 / d.as_secs_f64() / 1e6;
    println!(
        "\n10k-value batch, medians of 31: plugin phone-mask {plugin:?} ({:.1} M values/s), \
         native core mask {core:?} ({:.1} M values/s); the plugin takes {:.1}x the native time",
        rate(plugin),
        rate(core),
        plugin.as_secs_f64() / core.as_secs_f64()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
