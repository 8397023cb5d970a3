//! Read-plan computation: one `read` decision plus one `reveal` per
//! classified field, for a 1,000-policy mesh, with the product's slice and
//! against the whole unsliced policy set, measured in the same run. Then
//! the same read decided by the same rules written in Rego, on `regorus`
//! (a Rust Rego engine), with meshgov's plan time over regorus's printed
//! from interleaved passes, uncached and cached.
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

use criterion::{Criterion, criterion_group, criterion_main};
use meshgov_core::descriptor::{Descriptor, ProductInfo};
use meshgov_core::plugins::NoPlugins;
use meshgov_core::records::KeyRing;
use meshgov_core::source::{SourceFile, SourceSet};
use meshgov_core::{Asker, Enforcer, Principal, ProductView};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The slice's rules for `users/user-profiles` in Rego: the three
/// `users.*-read` permits, `users.fraud-reveal-email`, and the mesh-wide
/// forbid on direct identifiers for marketing.
const REGO: &str = r#"
package meshgov

import rego.v1

default read := false

read if {
	some [group, purpose] in [
		["marketing", "campaign-analytics"],
		["data-science", "product-analytics"],
		["fraud", "fraud-investigation"],
	]
	group in input.groups
	input.purpose == purpose
}

reveal contains f.name if {
	some f in input.fields
	"fraud" in input.groups
	input.purpose == "fraud-investigation"
	f.classification == "pii.email"
	not forbidden(f)
}

forbidden(f) if {
	"marketing" in input.groups
	f.direct_identifier
}

plan := {"read": read, "reveal": reveal}
"#;

/// A regorus engine holding [`REGO`], and the port's fields that a `reveal`
/// decides (classified and anonymized by default) as its input's `fields`,
/// built once as meshgov builds the product's entities once.
struct Rego {
    engine: regorus::Engine,
    fields: serde_json::Value,
}

impl Rego {
    fn new(view: &ProductView, port: &str) -> Rego {
        let mut engine = regorus::Engine::new();
        engine.add_policy("plan.rego".into(), REGO.into()).unwrap();
        let fields = view
            .info
            .port(port)
            .unwrap()
            .fields
            .iter()
            .filter(|f| f.classification.is_some() && f.level.needs_anonymization())
            .map(|f| {
                serde_json::json!({
                    "name": f.name,
                    "classification": f.classification,
                    "direct_identifier": f.direct_identifier,
                })
            })
            .collect();
        Rego { engine, fields }
    }

    /// `(read allowed, revealed fields, sorted)`.
    fn decide(&mut self, who: Asker<'_>) -> (bool, Vec<String>) {
        let input = serde_json::json!({
            "groups": who.principal.groups,
            "purpose": who.purpose,
            "fields": self.fields,
        });
        self.engine.set_input(regorus::Value::from(input));
        let plan = self.engine.eval_rule("data.meshgov.plan".into()).unwrap();
        let read = *plan["read"].as_bool().unwrap();
        let mut reveal: Vec<String> = plan["reveal"]
            .as_set()
            .unwrap()
            .iter()
            .map(|v| v.as_string().unwrap().to_string())
            .collect();
        reveal.sort();
        (read, reveal)
    }
}

/// meshgov's answer in the same terms as [`Rego::decide`].
fn summary(plan: &meshgov_core::ReadDecision) -> (bool, Vec<String>) {
    let mut reveal: Vec<String> = plan
        .fields
        .iter()
        .filter(|f| matches!(f.treatment, meshgov_core::Treatment::Revealed { .. }))
        .map(|f| f.name.clone())
        .collect();
    reveal.sort();
    (plan.decision.allowed, reveal)
}

/// The median time per call of each closure, from 15 interleaved passes of
/// `n` calls each, so both see the same machine load.
fn interleaved(n: u32, mut a: impl FnMut(), mut b: impl FnMut()) -> (Duration, Duration) {
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        let start = Instant::now();
        for _ in 0..n {
            a();
        }
        ta.push(start.elapsed() / n);
        let start = Instant::now();
        for _ in 0..n {
            b();
        }
        tb.push(start.elapsed() / n);
    }
    ta.sort_unstable();
    tb.sort_unstable();
    (ta[ta.len() / 2], tb[tb.len() / 2])
}

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
    // A consumer never seen before whose class (groups, attributes) has
    // read before: no policy names a consumer, so the class's read serves.
    let mut n = 0u64;
    g.bench_function("sliced_new_consumer_known_class", |b| {
        b.iter(|| {
            n += 1;
            let p = Principal {
                id: format!("c{n}"),
                ..principal.clone()
            };
            black_box(
                enforcer
                    .read(
                        "profiles",
                        Asker {
                            principal: &p,
                            ..who
                        },
                    )
                    .unwrap(),
            )
        })
    });
    g.bench_function("unsliced_1000", |b| {
        b.iter(|| black_box(whole.decide_read(&view, "profiles", who).unwrap()))
    });
    let mut rego = Rego::new(&view, "profiles");
    g.bench_function("regorus", |b| b.iter(|| black_box(rego.decide(who))));
    g.finish();

    // The same answers from both engines, for every consumer class and
    // purpose of the example mesh.
    for groups in [
        &["fraud"][..],
        &["marketing"],
        &["data-science"],
        &["marketing", "fraud"],
        &[],
    ] {
        for purpose in [
            "fraud-investigation",
            "campaign-analytics",
            "product-analytics",
        ] {
            let p = Principal {
                id: "x".into(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                attrs: Default::default(),
            };
            let who = Asker {
                principal: &p,
                purpose,
                ..who
            };
            let ours = summary(&sliced.decide_read(&view, "profiles", who).unwrap());
            assert_eq!(ours, rego.decide(who), "{groups:?} {purpose}");
        }
    }
    let n = bench::knob("PLAN_CALLS", 2_000, 1) as u32;
    let (ours, theirs) = interleaved(
        n,
        || {
            black_box(sliced.decide_read(&view, "profiles", who).unwrap());
        },
        || {
            black_box(rego.decide(who));
        },
    );
    eprintln!(
        "read plan, interleaved medians: meshgov uncached {ours:.2?}, regorus {theirs:.2?}; meshgov/regorus = {:.2}",
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
    let (ours, theirs) = interleaved(
        n,
        || {
            black_box(enforcer.read("profiles", who).unwrap());
        },
        || {
            black_box(rego.decide(who));
        },
    );
    eprintln!(
        "read plan, interleaved medians: meshgov cached {ours:.2?}, regorus {theirs:.2?}; meshgov/regorus = {:.2}",
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
}

criterion_group!(benches, bench_plan);
criterion_main!(benches);
