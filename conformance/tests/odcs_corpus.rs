//! Other people's ODCS v3.0 and v3.1 contracts (`fixtures/odcs-corpus`,
//! sources in its `SOURCES.md`): every one datacontract-cli accepts loads,
//! with findings only from the guild's standards, each reported once; the
//! ones it rejects get located errors, never a panic.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use meshgov_conformance::rules::{Finding, Input, check_product};
use meshgov_core::Policies;
use meshgov_core::source::SourceSet;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// 2026-06-01T00:00:00Z.
const TODAY: i64 = 1_780_272_000;

/// The 13 contracts `datacontract lint` (datacontract-cli 1.2.8) rejects.
const INVALID: &[&str] = &[
    "bitol__data-types__all-data-types.odcs.yaml",
    "bitol__quality__column-completeness.odcs.yaml",
    "bitol__stakeholders__basic-four-dpo.odcs.yaml",
    "dcc__tests__fixtures__lint__invalid.odcs.yaml",
    "dcc__tests__fixtures__lint__invalid_multiple_errors.odcs.yaml",
    "dcc__tests__fixtures__lint__invalid_multiple_schema_errors.odcs.yaml",
    "dcc__tests__fixtures__lint__odcs_with_extra_top_level.yaml",
    "dcc__tests__fixtures__lint__valid.odcs.yaml",
    "dcc__tests__fixtures__mysql__odcs.yaml",
    "dcc__tests__fixtures__oracle__datacontract-oracle-odcs.yaml",
    "dcc__tests__fixtures__postgres__odcs.yaml",
    "dcc__tests__fixtures__postgres__odcs_case_sensitive.odcs.yaml",
    "dcc__tests__fixtures__redshift__odcs.yaml",
];

/// Accepted by datacontract-cli as its older Data Contract Specification,
/// not ODCS: it has none of `apiVersion`, `kind` and `status`.
const NOT_ODCS: &str = "dcc__tests__fixtures__markdown__export__multicolumn.odcs.yaml";

fn corpus() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/odcs-corpus");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

fn policies() -> Policies {
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    meshgov_core::check(&SourceSet::read_dir(&root).unwrap())
        .policies
        .unwrap()
}

fn check(p: &Policies, name: &str, text: &str) -> Vec<Finding> {
    check_product(p, Input { path: name, text }, None, TODAY)
}

/// Every finding is located and says how to fix it, and none is reported
/// twice.
fn assert_well_formed(name: &str, findings: &[Finding]) {
    let mut seen = BTreeSet::new();
    for f in findings {
        let d = &f.diag;
        assert!(d.pos.line >= 1 && d.pos.col >= 1, "{name}: {d}");
        assert!(!d.message.is_empty() && !d.hint.is_empty(), "{name}: {d}");
        assert!(
            seen.insert((d.rule, d.pos, d.message.clone())),
            "{name}: reported twice: {d}"
        );
    }
}

fn spec(findings: &[Finding]) -> Vec<String> {
    findings
        .iter()
        .filter(|f| f.diag.rule.starts_with("SPEC-"))
        .map(|f| f.diag.to_string())
        .collect()
}

#[test]
fn the_corpus_is_complete() {
    let files = corpus();
    assert_eq!(files.len(), 77);
    for name in INVALID.iter().chain([&NOT_ODCS]) {
        assert!(files.iter().any(|(n, _)| n == name), "{name} is missing");
    }
}

#[test]
fn every_accepted_contract_loads_with_guild_findings_only() {
    let p = policies();
    let mut accepted = 0;
    for (name, text) in corpus() {
        if INVALID.contains(&name.as_str()) || name == NOT_ODCS {
            continue;
        }
        accepted += 1;
        let findings = check(&p, &name, &text);
        assert_well_formed(&name, &findings);
        assert_eq!(spec(&findings), Vec::<String>::new(), "{name}");
        let domain = findings
            .iter()
            .filter(|f| f.diag.message.starts_with("`domain`"))
            .map(|f| f.diag.to_string())
            .collect::<Vec<_>>();
        assert!(domain.len() <= 1, "{name}: {domain:?}");
        if !text.lines().any(|l| l.starts_with("domain:")) {
            assert!(
                domain[0].contains("[META-001]: `domain` is missing"),
                "{name}: {domain:?}"
            );
        }
    }
    assert_eq!(accepted, 63);
}

/// The one accepted contract that is not ODCS lacks what ODCS requires:
/// each missing key is reported once.
#[test]
fn a_contract_in_another_format_names_each_missing_key_once() {
    let p = policies();
    let (name, text) = corpus().into_iter().find(|(n, _)| n == NOT_ODCS).unwrap();
    let findings = check(&p, &name, &text);
    assert_well_formed(&name, &findings);
    let spec: Vec<&str> = findings
        .iter()
        .filter(|f| f.diag.rule.starts_with("SPEC-"))
        .map(|f| f.diag.message.as_str())
        .collect();
    assert_eq!(
        spec,
        [
            "the descriptor has no `apiVersion`",
            "the descriptor has no `kind`",
            "the descriptor has no `status`"
        ]
    );
}

/// The rejected contracts get located errors, never a panic; those that
/// lack what ODCS requires are told which key.
#[test]
fn rejected_contracts_get_located_errors() {
    let p = policies();
    for (name, text) in corpus() {
        if !INVALID.contains(&name.as_str()) {
            continue;
        }
        let findings = check(&p, &name, &text);
        assert_well_formed(&name, &findings);
        let expected: &[&str] = match name.as_str() {
            "dcc__tests__fixtures__lint__invalid.odcs.yaml" => &["the descriptor has no `status`"],
            "dcc__tests__fixtures__lint__invalid_multiple_errors.odcs.yaml" => &[
                "the descriptor has no `version`",
                "the descriptor has no `status`",
            ],
            _ => &[],
        };
        let spec: Vec<&str> = findings
            .iter()
            .filter(|f| f.diag.rule == "SPEC-002")
            .map(|f| f.diag.message.as_str())
            .collect();
        assert_eq!(spec, expected, "{name}");
    }
}
