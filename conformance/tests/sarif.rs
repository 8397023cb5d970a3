//! The SARIF report validates against the official SARIF 2.1.0 schema
//! (`fixtures/sarif`, source in its `SOURCES.md`), formats included: every
//! `helpUri` is an absolute URI, every artifact a URI reference.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use meshgov_conformance::report::{FailOn, Format, Report};
use meshgov_conformance::rules::{DEFAULT_HELP_BASE_URL, Input, LIVE_RULES, RULES, check_product};
use meshgov_core::source::SourceSet;
use std::path::Path;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(fixtures().join("sarif/sarif-schema-2.1.0.json")).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

/// The report `conformance check` makes of the conventional-vocabulary
/// pair, under a path with a space in it.
fn report() -> Report {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let policies = meshgov_core::check(&SourceSet::read_dir(&root).unwrap())
        .policies
        .unwrap();
    let v1 = std::fs::read_to_string(fixtures().join("listeners.v1.yaml")).unwrap();
    let v2 = std::fs::read_to_string(fixtures().join("listeners.v2.yaml")).unwrap();
    let findings = check_product(
        &policies,
        Input {
            path: "contracts/news letter.yaml",
            text: &v2,
        },
        Some(Input {
            path: "contracts/v1.yaml",
            text: &v1,
        }),
        1_780_272_000,
    );
    assert!(findings.len() >= 2);
    Report {
        target: "contracts/news letter.yaml".into(),
        rules: RULES,
        findings,
        skipped: Default::default(),
        summary: None,
        help_base_url: DEFAULT_HELP_BASE_URL.into(),
    }
}

fn sarif(r: &Report) -> serde_json::Value {
    serde_json::from_str(&r.render(Format::Sarif, false, FailOn::Error)).unwrap()
}

fn assert_valid(doc: &serde_json::Value) {
    let errors: Vec<String> = validator()
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert_eq!(errors, Vec::<String>::new());
}

#[test]
fn the_sarif_report_validates_against_the_official_schema() {
    let doc = sarif(&report());
    assert_valid(&doc);
    let driver = &doc["runs"][0]["tool"]["driver"];
    assert_eq!(driver["informationUri"], "https://example.invalid/meshgov");
    assert_eq!(
        driver["rules"][0]["helpUri"],
        "https://example.invalid/meshgov/blob/main/conformance/RULES.md#spec-001"
    );
    assert_eq!(
        doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        "contracts/news%20letter.yaml"
    );
    // The live suite's report too.
    let mut live = report();
    live.rules = LIVE_RULES;
    live.findings.clear();
    assert_valid(&sarif(&live));
}

#[test]
fn the_help_base_url_is_configurable() {
    let mut r = report();
    r.help_base_url = "https://git.example/meshgov/blob/v2/conformance/RULES.md".into();
    let doc = sarif(&r);
    assert_valid(&doc);
    let rules = doc["runs"][0]["tool"]["driver"]["rules"]
        .as_array()
        .unwrap();
    assert_eq!(rules.len(), RULES.len());
    for (rule, r) in rules.iter().zip(RULES) {
        assert_eq!(
            rule["helpUri"],
            format!(
                "https://git.example/meshgov/blob/v2/conformance/RULES.md#{}",
                r.id.to_ascii_lowercase()
            )
        );
    }
}
