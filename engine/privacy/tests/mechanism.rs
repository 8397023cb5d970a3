//! The mechanisms against OpenDP's privacy maps and their distributions.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use meshgov_core::descriptor::{FieldInfo, PortInfo};
use meshgov_core::privacy::PrivacyRule;
use meshgov_privacy::mechanism::{self, Accumulator};
use meshgov_privacy::query::{self, Caps, ValidQuery};

fn rule() -> PrivacyRule {
    toml::from_str(
        r#"
id = "dp"
aggregations = ["count", "sum", "mean", "histogram"]
epsilon_budget = 4.0
delta_budget = 1e-6
max_epsilon_per_query = 1.0
privacy_unit_column = "user_id"
max_groups_contributed = 2
bounds = { duration_ms = [0, 1000] }
group_by = [{ field = "country", keys = ["DE", "SE"] }, { field = "device" }]
"#,
    )
    .unwrap()
}

fn port() -> PortInfo {
    let f = |name: &str, ty: &str, direct: bool| FieldInfo {
        name: name.into(),
        logical_type: Some(ty.into()),
        classification: None,
        level: meshgov_core::mesh::Level::Internal,
        direct_identifier: direct,
    };
    PortInfo {
        name: "events".into(),
        kind: "events".into(),
        time_field: None,
        fields: vec![
            f("user_id", "string", false),
            f("email", "string", true),
            f("country", "string", false),
            f("device", "string", false),
            f("duration_ms", "integer", false),
        ],
    }
}

fn plan(body: &str) -> ValidQuery {
    let r = query::parse(body.as_bytes()).unwrap();
    query::validate(&r, &rule(), &port(), Caps::default(), 0).unwrap()
}

#[test]
fn scales_match_opendp_privacy_maps() {
    let p =
        plan(r#"{"aggregations":[{"count":{}},{"sum":{"field":"duration_ms"}}],"epsilon":0.5}"#);
    let c = mechanism::cost(&p).unwrap();
    // Two releases share 0.5; k = 2 contributions per user.
    let count = &c.mechanisms[0];
    assert_eq!(count.sensitivity, 2);
    assert!((count.scale - 2.0 / 0.25).abs() < 1e-9, "{count:?}");
    assert!((count.epsilon - 0.25).abs() < 1e-12);
    let sum = &c.mechanisms[1];
    // 2 · 1000 · 1000 fixed-point units over 0.25, reported in field units.
    assert_eq!(sum.sensitivity, 2_000_000);
    assert!((sum.scale - 2000.0 / 0.25).abs() < 1e-6, "{sum:?}");
    assert!((c.epsilon - 0.5).abs() < 1e-12);
    assert_eq!(c.delta, 0.0);
}

#[test]
fn noisy_counts_follow_the_discrete_laplace() {
    let p = plan(r#"{"aggregations":[{"count":{}}],"epsilon":1.0}"#);
    let c = mechanism::cost(&p).unwrap();
    let b = c.mechanisms[0].scale; // 2.0
    let n = 20_000;
    let mut noise = Vec::with_capacity(n);
    for _ in 0..n {
        let mut acc = Accumulator::new(&p);
        for u in 0..100 {
            acc.add(Some(&u.to_string()), &[], &[]);
        }
        let r = mechanism::release(&p, &c, acc).unwrap();
        noise.push(r.groups[0].1[0].1.unwrap() - 100.0);
    }
    // P(X <= x) of the discrete Laplace with scale b.
    let q = (-1.0 / b).exp();
    let cdf = |x: i64| {
        if x < 0 {
            q.powi((-x) as i32) / (1.0 + q)
        } else {
            1.0 - q.powi((x + 1) as i32) / (1.0 + q)
        }
    };
    for x in [-6, -3, -1, 0, 1, 3, 6] {
        let emp = noise.iter().filter(|v| **v <= x as f64).count() as f64 / n as f64;
        assert!(
            (emp - cdf(x)).abs() < 0.02,
            "x={x}: empirical {emp}, expected {}",
            cdf(x)
        );
    }
    let mean = noise.iter().sum::<f64>() / n as f64;
    assert!(mean.abs() < 0.15, "mean noise {mean}");
}

#[test]
fn partition_selection_hides_a_key_held_by_one_person() {
    let p =
        plan(r#"{"aggregations":[{"count":{}}],"group_by":["device"],"epsilon":1.0,"delta":1e-7}"#);
    let c = mechanism::cost(&p).unwrap();
    let sel = &c.mechanisms[0];
    assert_eq!(sel.kind, "laplace_threshold");
    assert!(sel.delta <= 1e-7 && sel.delta > 0.0);
    let mut shown_rare = 0;
    let mut shown_common = 0;
    for _ in 0..300 {
        let mut acc = Accumulator::new(&p);
        // One person holds the rare device (as often as the cap allows).
        acc.add(Some("rare-user"), &["prototype-x"], &[]);
        acc.add(Some("rare-user"), &["prototype-x"], &[]);
        for u in 0..2000 {
            acc.add(Some(&format!("u{u}")), &["phone"], &[]);
        }
        let r = mechanism::release(&p, &c, acc).unwrap();
        shown_rare += r.groups.iter().filter(|g| g.0 == ["prototype-x"]).count();
        shown_common += r.groups.iter().filter(|g| g.0 == ["phone"]).count();
    }
    assert_eq!(shown_rare, 0);
    assert_eq!(shown_common, 300);
}

#[test]
fn contributions_are_bounded_per_unit() {
    let p = plan(r#"{"aggregations":[{"count":{}}],"group_by":["country"],"epsilon":1.0}"#);
    let mut acc = Accumulator::new(&p);
    let mut used = 0;
    for _ in 0..10 {
        used += usize::from(acc.add(Some("heavy"), &["DE"], &[]));
    }
    // Keys outside the public list never count.
    assert!(!acc.add(Some("other"), &["FR"], &[]));
    assert_eq!(used, 2);
    assert_eq!(acc.used, 2);
}

#[test]
fn bad_requests_are_refused_with_reasons() {
    let r = rule();
    let cases = [
        (
            r#"{"aggregations":[{"median":{}}],"epsilon":0.5}"#,
            "unknown aggregation",
        ),
        (
            r#"{"aggregations":[{"sum":{"field":"country"}}],"epsilon":0.5}"#,
            "not a numeric",
        ),
        (
            r#"{"aggregations":[{"sum":{"field":"email"}}],"epsilon":0.5}"#,
            "direct identifier",
        ),
        (
            r#"{"aggregations":[{"sum":{"field":"nope"}}],"epsilon":0.5}"#,
            "no field",
        ),
        (r#"{"aggregations":[{"count":{}}],"epsilon":0}"#, "at least"),
        (
            r#"{"aggregations":[{"count":{}}],"epsilon":-1}"#,
            "at least",
        ),
        // Subnormal: positive and finite, but no mechanism has its scale.
        (
            r#"{"aggregations":[{"count":{}}],"epsilon":5e-324}"#,
            "at least 0.000001",
        ),
        (
            r#"{"aggregations":[{"count":{}}],"epsilon":9e-7}"#,
            "at least 0.000001",
        ),
        (r#"{"aggregations":[{"count":{}}],"epsilon":1.5}"#, "cap"),
        (
            r#"{"aggregations":[{"count":{}}],"group_by":["email"],"epsilon":0.5}"#,
            "direct identifier",
        ),
        (
            r#"{"aggregations":[{"count":{}}],"group_by":["user_id"],"epsilon":0.5}"#,
            "not allowed",
        ),
        (
            r#"{"aggregations":[{"count":{}}],"epsilon":0.5,"from":"2026-01-01T00:00:00Z"}"#,
            "no time field",
        ),
    ];
    for (body, want) in cases {
        let req = query::parse(body.as_bytes()).unwrap();
        let e = query::validate(&req, &r, &port(), Caps::default(), 0).unwrap_err();
        assert!(e.0.contains(want), "{body}: {e}");
    }
    // The smallest epsilon allowed can be costed and released.
    let p = plan(
        r#"{"aggregations":[{"count":{}},{"sum":{"field":"duration_ms"}}],"epsilon":0.000001}"#,
    );
    let costed = mechanism::cost(&p).unwrap();
    let mut acc = Accumulator::new(&p);
    acc.add(Some("u"), &[], &[5.0]);
    assert!(mechanism::release(&p, &costed, acc).is_ok());
    // Missing bounds.
    let mut nb = rule();
    nb.bounds.clear();
    let req = query::parse(br#"{"aggregations":[{"mean":{"field":"duration_ms"}}],"epsilon":0.5}"#)
        .unwrap();
    assert!(
        query::validate(&req, &nb, &port(), Caps::default(), 0)
            .unwrap_err()
            .0
            .contains("bounds")
    );
    // Malformed bodies, NaN included (JSON has no NaN).
    for body in [
        &b"{"[..],
        br#"{"aggregations":[],"epsilon":"NaN"}"#,
        br#"{"epsilon":NaN}"#,
        br#"{"aggregations":[],"epsilon":1,"x":1}"#,
    ] {
        assert!(query::parse(body).is_err());
    }
    // Too large a window on a timed port.
    let mut timed = port();
    timed.time_field = Some("played_at".into());
    let mut wr = rule();
    wr.max_window_seconds = Some(86_400);
    let req = query::parse(br#"{"aggregations":[{"count":{}}],"epsilon":0.5,"from":"2026-01-01T00:00:00Z","to":"2026-01-03T00:00:00Z"}"#).unwrap();
    assert!(
        query::validate(&req, &wr, &timed, Caps::default(), 0)
            .unwrap_err()
            .0
            .contains("too large")
    );
}

/// Found by the `aggregate_body` fuzz target: serde quotes an unknown key
/// as sent, so a key holding a newline or DEL reached the 400 reason (and
/// the log) raw.
#[test]
fn refusal_reasons_escape_control_characters_from_the_body() {
    for body in [
        "{\"ation\u{7f}ms\": 1}",
        "{\"aggregations\": [], \"epsilon\": 1, \"x\\ny\": 2}",
        "{\"aggregations\": [{\"co\\r\\nunt\": {}}], \"epsilon\": 0.5}",
    ] {
        let reason = match query::parse(body.as_bytes()) {
            Err(e) => e.0,
            Ok(r) => {
                query::validate(&r, &rule(), &port(), Caps::default(), 0)
                    .unwrap_err()
                    .0
            }
        };
        assert!(!reason.chars().any(char::is_control), "{reason:?}");
        assert!(
            reason.contains("\\u{7f}") || reason.contains("\\n"),
            "{reason:?}"
        );
    }
}

/// Found by the `aggregate_body` fuzz target: an epsilon of 1.2e-75 made
/// the partition-selection threshold search overflow `i64` (a panic with
/// overflow checks, a wrapped negative threshold without). Costing now
/// refuses it, before anything is reserved or released.
#[test]
fn a_vanishing_epsilon_is_refused_by_costing_not_overflowed() {
    // Validation refuses such epsilons (see `bad_requests_are_refused_with_reasons`);
    // costing still refuses them on its own rather than overflow.
    let base =
        plan(r#"{"aggregations":[{"count":{}}],"group_by":["device"],"epsilon":0.5,"delta":1e-8}"#);
    for eps in [1.2e-75, 1e-300, 5e-324] {
        let mut p = base.clone();
        p.epsilon = eps;
        let err = mechanism::cost(&p).unwrap_err();
        assert!(eps != 1.2e-75 || err.0.contains("too small"), "{err}");
    }
}
