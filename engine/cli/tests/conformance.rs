//! `meshgov conformance check` as a product team's CI runs it: the real
//! binary, every output format, and the exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

fn conformance(dir: &Path, extra: &[&str]) -> Output {
    let policies = example();
    let mut args = vec![
        "conformance",
        "check",
        "product.yaml",
        "--policies",
        policies.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_meshgov"))
        .args(&args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The example profiles descriptor with a badly named, unclassified field.
fn broken(dir: &Path) {
    let text = std::fs::read_to_string(example().join("products/user-profiles.yaml")).unwrap();
    let text = text.replacen(
        "      - name: country\n        logicalType: string\n        classification: internal\n",
        "      - name: Country\n        logicalType: string\n",
        1,
    );
    std::fs::write(dir.join("product.yaml"), text).unwrap();
}

#[test]
fn a_conforming_product_passes() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        example().join("products/user-profiles.yaml"),
        tmp.path().join("product.yaml"),
    )
    .unwrap();
    let o = conformance(tmp.path(), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("0 error(s), 0 warning(s), 0 info"));
}

#[test]
fn text_and_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    broken(tmp.path());
    let o = conformance(tmp.path(), &[]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("product.yaml:40:15: error[NAME-001]: field `Country`: field names must be snake_case [STD-NAME-001]"),
        "{out}"
    );
    assert!(out.contains("product.yaml:40:15: error[PRIV-001]"), "{out}");
    assert!(
        out.contains("  see: conformance/RULES.md#priv-001"),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "no colour when not a terminal");
    // Usage errors exit 2.
    let o = conformance(tmp.path(), &["--previous", "missing.yaml"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn json_sarif_junit_and_github_formats() {
    let tmp = tempfile::tempdir().unwrap();
    broken(tmp.path());

    let o = conformance(tmp.path(), &["--format", "json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rules: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, vec!["NAME-001", "PRIV-001"]);
    assert_eq!(v["findings"][0]["line"], 40);
    assert_eq!(v["findings"][0]["column"], 15);

    let o = conformance(tmp.path(), &["--format", "sarif"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["version"], "2.1.0");
    let run = &v["runs"][0];
    let result = &run["results"][0];
    assert_eq!(result["ruleId"], "NAME-001");
    assert_eq!(result["level"], "error");
    let region = &result["locations"][0]["physicalLocation"]["region"];
    assert_eq!(
        (region["startLine"].as_u64(), region["startColumn"].as_u64()),
        (Some(40), Some(15))
    );
    let index = result["ruleIndex"].as_u64().unwrap() as usize;
    assert_eq!(run["tool"]["driver"]["rules"][index]["id"], "NAME-001");
    assert_eq!(
        run["tool"]["driver"]["rules"][index]["helpUri"],
        "https://example.invalid/meshgov/blob/main/conformance/RULES.md#name-001"
    );
    let base = "https://git.example/meshgov/blob/main/conformance/RULES.md";
    let o = conformance(tmp.path(), &["--format", "sarif", "--help-base-url", base]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["runs"][0]["tool"]["driver"]["rules"][index]["helpUri"],
        format!("{base}#name-001")
    );
    // A relative address is a usage error that says what to give.
    let o = conformance(
        tmp.path(),
        &["--format", "sarif", "--help-base-url", "docs/RULES.md"],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("is not an absolute URL") && err.contains("e.g. https://"),
        "{err}"
    );

    let o = conformance(tmp.path(), &["--format", "junit"]);
    let xml = stdout(&o);
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let cases: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), static_rule_count());
    let failed: Vec<&str> = cases
        .iter()
        .filter(|c| c.children().any(|n| n.has_tag_name("failure")))
        .map(|c| c.attribute("name").unwrap())
        .collect();
    assert_eq!(
        failed,
        vec!["NAME-001 product.yaml", "PRIV-001 product.yaml"]
    );
    // Without --previous the evolution rules did not run: skipped, with
    // the reason, not passed.
    let skipped: Vec<(&str, &str)> = cases
        .iter()
        .filter_map(|c| {
            let s = c.children().find(|n| n.has_tag_name("skipped"))?;
            Some((c.attribute("name")?, s.attribute("message")?))
        })
        .collect();
    let names: Vec<&str> = skipped.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "EVO-001 product.yaml",
            "EVO-002 product.yaml",
            "EVO-003 product.yaml"
        ]
    );
    assert!(skipped.iter().all(|(_, why)| why.contains("--previous")));

    let o = conformance(tmp.path(), &["--format", "github"]);
    let out = stdout(&o);
    assert!(
        out.lines()
            .any(|l| l.starts_with("::error file=product.yaml,line=40,col=15,title=NAME-001::")),
        "{out}"
    );
}

fn static_rule_count() -> usize {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/RULES.md"),
    )
    .unwrap();
    // The static rules; the LIVE ones belong to `conformance run`.
    doc.lines()
        .filter(|l| l.starts_with("### ") && !l.starts_with("### LIVE-"))
        .count()
}

#[test]
fn fail_on_and_waivers() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example().join("products/user-profiles.yaml")).unwrap();
    // A port address the warning-level standard rejects.
    let text = text.replacen("address: /v1/ports/profiles", "address: /profiles", 1);
    std::fs::write(tmp.path().join("product.yaml"), &text).unwrap();
    assert_eq!(conformance(tmp.path(), &[]).status.code(), Some(0));
    assert_eq!(
        conformance(tmp.path(), &["--fail-on", "warning"])
            .status
            .code(),
        Some(1)
    );
    let waived = text.replacen(
        "customProperties:\n",
        "customProperties:\n  - property: meshgov.waivers\n    value:\n      - rule: NAME-004\n        owner: users-core@media.example\n        reason: old clients\n        expires: \"2999-12-31\"\n",
        1,
    );
    std::fs::write(tmp.path().join("product.yaml"), waived).unwrap();
    let o = conformance(tmp.path(), &["--fail-on", "warning"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("info[NAME-004]"));
    assert!(
        stdout(&o).contains("waived by users-core@media.example until 2999-12-31: old clients")
    );
}

#[test]
fn against_a_signed_bundle_and_a_previous_version() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_meshgov"))
            .args(args)
            .current_dir(d)
            .output()
            .unwrap()
    };
    assert_eq!(run(&["keygen", "--out", "guild"]).status.code(), Some(0));
    let policies = example();
    let o = run(&[
        "build",
        policies.to_str().unwrap(),
        "--key",
        "guild",
        "--out",
        "b.json",
        "--product",
        "users/user-profiles",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v1 = std::fs::read_to_string(example().join("products/user-profiles.yaml")).unwrap();
    std::fs::write(d.join("v1.yaml"), &v1).unwrap();
    std::fs::write(
        d.join("product.yaml"),
        v1.replacen("classification: pii.email", "classification: internal", 1)
            .replacen("version: 1.0.0", "version: 2.0.0", 1),
    )
    .unwrap();
    let o = run(&[
        "conformance",
        "check",
        "product.yaml",
        "--bundle",
        "b.json",
        "--trust",
        "guild.pub",
        "--previous",
        "v1.yaml",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("product.yaml:31:15: error[EVO-002]"),
        "{}",
        stdout(&o)
    );
    // A bundle sliced for another product is a usage error.
    std::fs::copy(
        example().join("products/play-events.yaml"),
        d.join("other.yaml"),
    )
    .unwrap();
    let o = run(&[
        "conformance",
        "check",
        "other.yaml",
        "--bundle",
        "b.json",
        "--trust",
        "guild.pub",
    ]);
    assert_eq!(o.status.code(), Some(2));
    // An untrusted bundle is refused.
    assert_eq!(run(&["keygen", "--out", "rogue"]).status.code(), Some(0));
    let o = run(&[
        "conformance",
        "check",
        "product.yaml",
        "--bundle",
        "b.json",
        "--trust",
        "rogue.pub",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("untrusted_key"));
}

/// A downgrade written in ODCS's conventional levels and tags fails the
/// check against the previous version, naming the field and its line.
#[test]
fn a_conventional_downgrade_fails_against_the_previous_version() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/tests/fixtures");
    std::fs::copy(
        fixtures.join("listeners.v1.yaml"),
        tmp.path().join("v1.yaml"),
    )
    .unwrap();
    std::fs::copy(
        fixtures.join("listeners.v2.yaml"),
        tmp.path().join("product.yaml"),
    )
    .unwrap();
    let o = conformance(tmp.path(), &["--previous", "v1.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("product.yaml:21:15: error[EVO-002]: governance loosening: field `listener_email` was downgraded from `restricted` (restricted) to `public` (public); lost the tag `pii`"),
        "{out}"
    );
    assert!(
        out.contains("product.yaml:27:25: error[PRIV-001]: unknown classification `restricted`"),
        "{out}"
    );
}
