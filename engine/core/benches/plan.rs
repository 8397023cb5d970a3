//! Read-plan computation: one `read` decision plus one `reveal` per
//! classified field, for a 1,000-policy mesh, with the product's slice and
//! against the whole unsliced policy set, measured in the same run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use criterion::{Criterion, criterion_group, criterion_main};
use meshgov_core::descriptor::{Descriptor, ProductInfo};
use meshgov_core::plugins::NoPlugins;
use meshgov_core::records::KeyRing;
use meshgov_core::source::{SourceFile, SourceSet};
use meshgov_core::{Asker, Enforcer, Principal, ProductView};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

/// The example mesh plus 100 generated products with 10 policies each.
fn big_mesh() -> SourceSet {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let mut src = SourceSet::read_dir(&root).unwrap();
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
    src
}

fn bench_plan(c: &mut Criterion) {
    let src = big_mesh();
    let checked = meshgov_core::check(&src);
    assert!(checked.diagnostics.is_empty(), "{:?}", checked.diagnostics);
    let whole = checked.policies.unwrap();
    assert!(whole.access.len() >= 1000);
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/products/user-profiles.yaml"),
    )
    .unwrap();
    let d = Descriptor::parse("user-profiles.yaml", &text).unwrap();
    let info = ProductInfo::resolve(&d, &whole.mesh).unwrap();
    let sliced = whole.slice(&info).unwrap();
    let view = ProductView::new(info, &sliced).unwrap();
    let principal = Principal {
        id: "frank".into(),
        groups: vec!["fraud".into()],
        attrs: Default::default(),
    };
    let who = Asker {
        principal: &principal,
        purpose: "fraud-investigation",
        now_unix: 1_767_225_600,
    };
    let plan = sliced.decide_read(&view, "profiles", who).unwrap();
    assert!(plan.decision.allowed);
    assert_eq!(plan, whole.decide_read(&view, "profiles", who).unwrap());
    eprintln!(
        "policies: whole mesh {}, slice for users/user-profiles {}",
        whole.access.len(),
        sliced.access.len()
    );

    let mut g = c.benchmark_group("read_plan");
    g.bench_function("sliced", |b| {
        b.iter(|| black_box(sliced.decide_read(&view, "profiles", who).unwrap()))
    });
    // The enforcement core: the decision and its per-record program,
    // compiled once per consumer and cached for the bundle.
    let mut keys = KeyRing::new();
    keys.insert("user-identity", &[7; 32]).unwrap();
    let enforcer = Enforcer::new(sliced.clone(), view.clone(), keys, Arc::new(NoPlugins)).unwrap();
    g.bench_function("sliced_cached", |b| {
        b.iter(|| black_box(enforcer.read("profiles", who).unwrap()))
    });
    g.bench_function("unsliced_1000", |b| {
        b.iter(|| black_box(whole.decide_read(&view, "profiles", who).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench_plan);
criterion_main!(benches);
