//! Verify cost for a bundle the size of a 1,000-policy mesh (~1 MB of
//! components): what a sidecar pays on every push and on every restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshgov_bundle::{BundleMeta, BundlePayload, Expect, SigningKey, TrustStore, sign, verify};

const NOW: i64 = 1_767_225_600;

fn bundle() -> (Vec<u8>, TrustStore) {
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/TEST-ONLY-signing-key.pem"
    ))
    .unwrap();
    let key = SigningKey::from_pkcs8_pem(&pem).unwrap();
    // 1,000 policies of ~1 KiB each, with escapes like real Cedar text.
    let components: BTreeMap<String, String> = (0..1000)
        .map(|i| {
            let policy = format!(
                "@id(\"p{i}\")\npermit(principal in Group::\"team-{i}\", action == Action::\"read\", resource in Port::\"orders-{i}\")\nwhen {{ context.purpose == \"analytics\" }};\n"
            );
            (format!("policies/p{i:04}.cedar"), policy.repeat(1024 / policy.len() + 1))
        })
        .collect();
    let meta = BundleMeta {
        mesh: "acme".into(),
        revision: 1,
        created_at_unix: NOW,
        expires_at_unix: NOW + 86_400,
        source_commit: None,
        product: None,
    };
    let payload = BundlePayload::new(meta, components).unwrap();
    let envelope = sign(&payload.to_canonical_bytes(), &[&key])
        .unwrap()
        .to_json_bytes();
    let trust = TrustStore::from_keys([key.public_key()]).unwrap();
    (envelope, trust)
}

fn bench_verify(c: &mut Criterion) {
    let (envelope, trust) = bundle();
    let expect = Expect {
        mesh: Some("acme"),
        ..Expect::default()
    };
    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Bytes(envelope.len() as u64));
    group.bench_function("1000_policies", |b| {
        b.iter(|| verify(black_box(&envelope), &trust, NOW, &expect).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
