//! `meshgov test` must catch every kind of wrong expectation, not just pass.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use meshgov_core::source::SourceSet;
use meshgov_core::testing::{self, TestFile};
use std::path::Path;

fn run(case_toml: &str) -> Vec<testing::CaseResult> {
    let src =
        SourceSet::read_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")).unwrap();
    let checked = meshgov_core::check(&src);
    let policies = checked.policies.unwrap();
    let file: TestFile = toml::from_str(case_toml).unwrap();
    testing::run(
        &policies,
        &meshgov_core::plugins::NoPlugins,
        &checked.products,
        &[("tests/t.toml".into(), file)],
    )
}

const KEYS: &str = "[keys]\nuser-identity = \"test-only-key-for-the-user-identity-scope\"\n";

fn case(body: &str) -> String {
    format!(
        "{KEYS}[[cases]]\nname = \"c\"\nprincipal = {{ id = \"ana\", groups = [\"marketing\"] }}\nproduct = \"users/user-profiles\"\nport = \"profiles\"\npurpose = \"campaign-analytics\"\n{body}\n"
    )
}

#[test]
fn the_examples_pass() {
    let r = run(&case("expect = \"allow\"\nfields = { email = \"mask\" }"));
    assert!(r[0].passed(), "{:?}", r[0].failures);
}

#[test]
fn a_wrong_decision_fails() {
    let r = run(&case("expect = \"deny\""));
    assert!(
        r[0].failures[0].starts_with("expected deny, got allow (policies: [users.marketing-read]"),
        "{:?}",
        r[0].failures
    );
}

#[test]
fn wrong_policies_fail() {
    let r = run(&case(
        "expect = \"allow\"\npolicies = [\"users.fraud-read\"]",
    ));
    assert_eq!(
        r[0].failures,
        vec!["expected policies [users.fraud-read], got [users.marketing-read]".to_string()]
    );
}

#[test]
fn a_wrong_treatment_fails() {
    let r = run(&case(
        "expect = \"allow\"\nfields = { email = \"revealed\", nosuch = \"clear\" }",
    ));
    assert_eq!(
        r[0].failures,
        vec![
            "field `email`: expected `revealed`, got `mask`".to_string(),
            "field `nosuch` is not in the plan".to_string()
        ]
    );
}

#[test]
fn a_wrong_output_record_fails() {
    let r = run(&case(
        "expect = \"allow\"\ninput = [{ user_id = \"u-1\", email = \"a@b.example\" }]\noutput = ['{\"user_id\": \"u-1\"}']",
    ));
    assert_eq!(r[0].failures.len(), 1);
    assert!(
        r[0].failures[0].starts_with("output records differ"),
        "{:?}",
        r[0].failures
    );
    // The raw id was pseudonymized, so the expectation of the clear id fails.
    assert!(r[0].failures[0].contains("u_"), "{:?}", r[0].failures);
}

#[test]
fn a_short_test_key_is_refused() {
    let body = "expect = \"allow\"\ninput = [{ user_id = \"u-1\" }]\noutput = []";
    let toml = case(body).replace("test-only-key-for-the-user-identity-scope", "short");
    let r = run(&toml);
    assert!(
        r[0].failures[0].contains("at least 32"),
        "{:?}",
        r[0].failures
    );
}

#[test]
fn an_unknown_product_fails_with_a_fix() {
    let r = run(&case("expect = \"allow\"").replace("users/user-profiles", "users/nope"));
    assert!(r[0].failures[0].contains("add its descriptor to `products/`"));
}

#[test]
fn junit_escapes_and_counts() {
    let mut r = run(&case("expect = \"deny\""));
    r[0].name = "a <b> & \"c\"".into();
    let xml = testing::junit(&r);
    assert!(xml.contains("tests=\"1\" failures=\"1\""));
    assert!(xml.contains("name=\"a &lt;b&gt; &amp; &quot;c&quot;\""));
    assert!(xml.contains("<failure message=\"expected deny, got allow"));
}

/// A typo'd action, or a `reveal` without its field, must not pass as a
/// denial.
#[test]
fn malformed_cases_fail_instead_of_passing_as_deny() {
    let r = run(&case("action = \"raed\"\nexpect = \"deny\""));
    assert!(
        r[0].failures[0].starts_with("unknown action `raed`"),
        "{:?}",
        r[0].failures
    );
    let r = run(&case("action = \"reveal\"\nexpect = \"deny\""));
    assert_eq!(
        r[0].failures,
        vec!["a `reveal` case needs `field`".to_string()]
    );
    let r = run(&case("field = \"email\"\nexpect = \"allow\""));
    assert_eq!(
        r[0].failures,
        vec!["`field` applies only to `reveal`, not `read`".to_string()]
    );
    let r = run(&case(
        "action = \"reveal\"\nfield = \"email\"\nexpect = \"deny\"\nfields = { email = \"mask\" }",
    ));
    assert_eq!(
        r[0].failures,
        vec!["`fields`, `input` and `output` apply only to `read` cases".to_string()]
    );
}

/// A principal the schema cannot express (an undeclared attribute) is an
/// error, not a quiet denial.
#[test]
fn an_inexpressible_principal_fails() {
    let r = run(
        "[[cases]]\nname = \"c\"\nprincipal = { id = \"ana\", groups = [\"marketing\"], attrs = { level = 3 } }\nproduct = \"users/user-profiles\"\nport = \"profiles\"\npurpose = \"campaign-analytics\"\nexpect = \"deny\"\n",
    );
    assert!(r[0].failures[0].contains("level"), "{:?}", r[0].failures);
}
