//! Aggregate request bodies (`POST /v1/ports/{port}/aggregate`), through the
//! sidecar's steps before any budget is spent: `query::parse`,
//! `query::validate` against the example mesh's privacy rule for
//! `playback/play-events`, OpenDP costing, then accumulation over a few
//! records and the release.
//!
//! Invariants: no panic (OpenDP errors are errors); a validated plan's
//! epsilon is positive, finite and within the per-query caps, and its delta
//! within the rule's budget; the cost OpenDP's privacy maps report never
//! exceeds what the plan asked to spend; rejections are messages without
//! control characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgov_core::descriptor::{Descriptor, ProductInfo};
use meshgov_core::privacy::PrivacyRule;
use meshgov_fuzz::{NOW, example, repo};
use meshgov_privacy::mechanism::{Accumulator, cost, release};
use meshgov_privacy::query::{self, Caps};
use std::sync::LazyLock;

struct Port {
    rule: PrivacyRule,
    info: meshgov_core::descriptor::PortInfo,
    caps: Caps,
}

static PORT: LazyLock<Port> = LazyLock::new(|| {
    let mesh = &example().policies;
    let path = repo().join("policies/products/play-events.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let d =
        Descriptor::parse("play-events.yaml", &text).unwrap_or_else(|d| panic!("{}", d.message));
    let product = ProductInfo::resolve(&d, &mesh.mesh).unwrap_or_else(|e| panic!("{}", e.message));
    let rule = mesh
        .privacy
        .iter()
        .find(|r| r.id == "dp.play-events")
        .cloned()
        .unwrap_or_else(|| panic!("the example mesh has no dp.play-events rule"));
    let info = product
        .port("plays")
        .cloned()
        .unwrap_or_else(|| panic!("play-events has no `plays` port"));
    Port {
        rule,
        info,
        caps: Caps {
            max_epsilon_per_query: Some(mesh.mesh.privacy.max_epsilon_per_query),
            max_delta: Some(mesh.mesh.privacy.max_delta),
        },
    }
});

const RECORDS: &[&str] = &[
    r#"{"user_id":"u1","country":"DE","device":"tv","duration_ms":185000}"#,
    r#"{"user_id":"u1","country":"SE","device":"phone","duration_ms":-5}"#,
    r#"{"user_id":"u2","country":"US","device":"web","duration_ms":9e18}"#,
    r#"{"user_id":"u3","country":"XX","duration_ms":"12"}"#,
];

fuzz_target!(|body: &[u8]| {
    let port = &*PORT;
    let request = match query::parse(body) {
        Ok(r) => r,
        Err(e) => return no_controls(&e.0),
    };
    let plan = match query::validate(&request, &port.rule, &port.info, port.caps, NOW) {
        Ok(p) => p,
        Err(e) => return no_controls(&e.0),
    };
    assert!(plan.epsilon.is_finite() && plan.epsilon > 0.0);
    assert!(plan.epsilon <= port.rule.max_epsilon_per_query);
    assert!(
        port.caps
            .max_epsilon_per_query
            .is_none_or(|c| plan.epsilon <= c)
    );
    assert!(plan.delta >= 0.0 && plan.delta <= port.rule.delta_budget);
    let _ = plan.canonical();
    let Ok(costed) = cost(&plan) else {
        return;
    };
    assert!(
        costed.epsilon.is_finite() && costed.epsilon <= plan.epsilon * (1.0 + 1e-9),
        "OpenDP's map says {} for a plan of {}",
        costed.epsilon,
        plan.epsilon
    );
    assert!(costed.delta <= plan.delta * (1.0 + 1e-9) + f64::MIN_POSITIVE);
    let mut acc = Accumulator::new(&plan);
    for r in RECORDS {
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(r) {
            acc.add_json(&m);
        }
    }
    let _ = release(&plan, &costed, acc);
});

fn no_controls(message: &str) {
    assert!(
        !message.chars().any(char::is_control),
        "a control character reaches a 400 reason: {message:?}"
    );
}
