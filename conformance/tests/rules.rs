//! Conformance rules: the example products pass, and each rule has a failing
//! fixture whose exact rule id and `line:col` are asserted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use meshgov_conformance::rules::{Finding, Input, LIVE_RULES, RULES, check_product};
use meshgov_core::Policies;
use meshgov_core::source::SourceSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// 2026-06-01T00:00:00Z.
const TODAY: i64 = 1_780_272_000;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn policies() -> &'static Policies {
    static P: OnceLock<Policies> = OnceLock::new();
    P.get_or_init(|| {
        meshgov_core::check(&SourceSet::read_dir(&root()).unwrap())
            .policies
            .unwrap()
    })
}

fn profiles() -> String {
    std::fs::read_to_string(root().join("products/user-profiles.yaml")).unwrap()
}

fn edited(from: &str, to: &str) -> String {
    let text = profiles();
    assert!(text.contains(from), "`{from}` not in the descriptor");
    text.replacen(from, to, 1)
}

fn run(text: &str, previous: Option<&str>) -> Vec<Finding> {
    check_product(
        policies(),
        Input {
            path: "product.yaml",
            text,
        },
        previous.map(|text| Input {
            path: "product.v1.yaml",
            text,
        }),
        TODAY,
    )
}

/// `(rule, "path:line:col")` of every finding that is not waived.
fn found(text: &str, previous: Option<&str>) -> Vec<(String, String)> {
    run(text, previous)
        .into_iter()
        .filter(|f| f.waived_by.is_none())
        .map(|f| {
            let d = f.diag;
            (
                d.rule.to_string(),
                format!("{}:{}:{}", d.path, d.pos.line, d.pos.col),
            )
        })
        .collect()
}

fn assert_only(text: &str, previous: Option<&str>, expected: &[(&str, &str)]) {
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(r, a)| (r.to_string(), a.to_string()))
        .collect();
    assert_eq!(found(text, previous), expected);
}

#[test]
fn the_example_products_pass() {
    for f in [
        "user-profiles.yaml",
        "play-events.yaml",
        "artist-payments.yaml",
    ] {
        let text = std::fs::read_to_string(root().join("products").join(f)).unwrap();
        assert_eq!(found(&text, None), vec![], "{f}");
        assert_eq!(found(&text, Some(&text)), vec![], "{f} against itself");
    }
}

#[test]
fn spec_rules() {
    assert_only("schema: [", None, &[("SPEC-001", "product.yaml:1:9")]);
    assert_only(
        &edited("kind: DataContract", "kind: Contract"),
        None,
        &[("SPEC-002", "product.yaml:3:7")],
    );
    assert_only(
        &edited("status: active\n", ""),
        None,
        &[("SPEC-002", "product.yaml:1:1")],
    );
    assert_only(
        &edited("      - name: email", "      - name: user_id"),
        None,
        &[("SPEC-003", "product.yaml:31:15")],
    );
    assert_only(
        &edited("version: 1.0.0", "version: 1.0"),
        None,
        &[("SPEC-004", "product.yaml:6:10")],
    );
}

#[test]
fn meta_and_naming_rules() {
    assert_only(
        &edited("slaProperties:", "slas:"),
        None,
        &[("META-001", "product.yaml:1:1")],
    );
    assert_only(
        &edited("      - name: country", "      - name: Country"),
        None,
        &[("NAME-001", "product.yaml:40:15")],
    );
    let port_names = policies_with(
        "standards/schema.toml",
        "[[rules]]\nid = \"STD-PORT-001\"",
        "[[rules]]\nid = \"STD-PORT-NAME\"\ncheck = \"port_name\"\npattern = '^[a-z][a-z-]*$'\nmessage = \"port names are kebab-case\"\n\n[[rules]]\nid = \"STD-PORT-001\"",
    );
    let renamed = edited(
        "      - name: profiles\n        kind",
        "      - name: Profiles\n        kind",
    )
    .replace("/v1/ports/profiles", "/v1/ports/Profiles")
    .replace(
        "  - name: profiles\n    physicalName",
        "  - name: Profiles\n    physicalName",
    );
    let f = run_with(&port_names, &renamed);
    assert_eq!(
        f,
        vec![
            ("NAME-002".to_string(), "product.yaml:68:15".to_string()),
            ("NAME-004".to_string(), "product.yaml:68:15".to_string()),
        ]
    );
    assert_only(
        &edited(
            "      - name: user_id\n        logicalType: string",
            "      - name: user_id\n        logicalType: integer",
        ),
        None,
        &[("NAME-003", "product.yaml:27:22")],
    );
}

fn play_events() -> String {
    std::fs::read_to_string(root().join("products/play-events.yaml")).unwrap()
}

fn run_with(policies: &Policies, text: &str) -> Vec<(String, String)> {
    check_product(
        policies,
        Input {
            path: "product.yaml",
            text,
        },
        None,
        TODAY,
    )
    .into_iter()
    .map(|f| {
        (
            f.diag.rule.to_string(),
            format!("product.yaml:{}:{}", f.diag.pos.line, f.diag.pos.col),
        )
    })
    .collect()
}

/// The example policies with one file's text edited.
fn policies_with(path: &str, from: &str, to: &str) -> Policies {
    let mut src = SourceSet::read_dir(&root()).unwrap();
    let file = src
        .anonymization
        .iter_mut()
        .chain(src.privacy.iter_mut())
        .chain(src.standards.iter_mut())
        .find(|f| f.path == path)
        .unwrap();
    assert!(file.text.contains(from), "`{from}` not in {path}");
    *file = meshgov_core::source::SourceFile::new(path, file.text.replacen(from, to, 1));
    let checked = meshgov_core::check(&src);
    checked
        .policies
        .unwrap_or_else(|| panic!("{:?}", checked.diagnostics))
}

#[test]
fn privacy_rules() {
    assert_only(
        &edited("        classification: internal\n", ""),
        None,
        &[("PRIV-001", "product.yaml:40:15")],
    );
    assert_only(
        &edited(
            "classification: pii.postcode",
            "classification: pii.postcod",
        ),
        None,
        &[("PRIV-001", "product.yaml:45:25")],
    );
    // Without the device rule, the device field would leave as null.
    let no_device_rule = policies_with(
        "anonymization/personal-data.toml",
        "classification = \"device.info\"",
        "classification = \"device.info\"\nproducts = [\"users/user-profiles\"]",
    );
    assert_eq!(
        run_with(&no_device_rule, &play_events()),
        vec![("PRIV-002".to_string(), "product.yaml:48:15".to_string())]
    );
    // The mesh caps were lowered under the product's privacy rule.
    // Caps lowered under an existing rule (a bundle `check` would now refuse).
    let mut low_caps = policies().clone();
    low_caps.mesh.privacy.max_epsilon_budget = 3.0;
    let f = run_with(&low_caps, &play_events());
    assert!(
        f.contains(&("PRIV-003".to_string(), "product.yaml:61:15".to_string())),
        "{f:?}"
    );
    let text = play_events().replace("    value: user_id", "    value: song_id");
    assert_eq!(
        run_with(policies(), &text),
        vec![("PRIV-004".to_string(), "product.yaml:61:15".to_string())]
    );
    let text = play_events().replace(
        "      - name: duration_ms\n        logicalType: integer",
        "      - name: duration_ms\n        logicalType: string",
    );
    assert_eq!(
        run_with(policies(), &text),
        vec![("PRIV-004".to_string(), "product.yaml:61:15".to_string())]
    );
}

#[test]
fn semantic_and_event_rules() {
    let text = play_events().replace(
        "      - name: artist_id\n        logicalType: string\n",
        "      - name: artist_id\n        logicalType: string\n        examples: [\"urn:mesh:artist:42\", \"artist-42\"]\n",
    );
    assert_eq!(
        run_with(policies(), &text),
        vec![("SEM-001".to_string(), "product.yaml:36:15".to_string())]
    );
    assert_only(
        &edited(
            "      - name: signed_up_at\n        logicalType: date\n",
            "      - name: signed_up_at\n        logicalType: date\n        examples: [\"2026-01-31T12:00:00+02:00\"]\n",
        ),
        None,
        &[("SEM-002", "product.yaml:46:15")],
    );
    assert_only(
        &edited("        kind: records", "        kind: events"),
        None,
        &[("EVT-001", "product.yaml:68:15")],
    );
}

#[test]
fn access_rules() {
    // A policy naming a port this product does not declare never applies.
    let mut src = SourceSet::read_dir(&root()).unwrap();
    src.access.push(meshgov_core::source::SourceFile::new(
        "access/typo.cedar",
        "@id(\"users.typo\")\npermit (principal in Group::\"fraud\", action == Action::\"read\", resource == OutputPort::\"users/user-profiles/profile\");\n",
    ));
    let with_typo = meshgov_core::check(&src).policies.unwrap();
    assert_eq!(
        run_with(&with_typo, &profiles()),
        vec![("ACL-002".to_string(), "product.yaml:1:1".to_string())]
    );
    // A bundle whose schema requires a product attribute meshgov does not
    // build (`check` refuses this, so it is made by editing a component).
    let mut c = policies().components();
    let schema = c
        .iter()
        .find(|(_, v)| v.contains("entity DataProduct"))
        .map(|(k, _)| k.clone())
        .unwrap();
    let text = c[&schema].replace("  status: String,\n", "  status: String,\n  tier: Long,\n");
    c.insert(schema, text);
    let strict = Policies::from_components(&c, None).unwrap();
    assert_eq!(
        run_with(&strict, &profiles()),
        vec![("ACL-001".to_string(), "product.yaml:1:1".to_string())]
    );
}

#[test]
fn evolution_rules() {
    let v1 = profiles();
    let removed = edited(
        "      - name: name\n        logicalType: string\n        classification: pii.name\n",
        "",
    );
    assert_only(&removed, Some(&v1), &[("EVO-001", "product.yaml:65:15")]);
    assert_only(
        &removed.replace("version: 1.0.0", "version: 2.0.0"),
        Some(&v1),
        &[],
    );
    assert_only(
        &edited("        logicalType: date", "        logicalType: string"),
        Some(&v1),
        &[("EVO-001", "product.yaml:38:22")],
    );
    assert_only(
        &edited(
            "      - name: email\n        logicalType: string\n",
            "      - name: email\n        logicalType: string\n        required: true\n",
        ),
        Some(&v1),
        &[("EVO-001", "product.yaml:31:15")],
    );
    // Loosening is an error whatever the version says.
    let downgraded = edited("classification: pii.email", "classification: internal")
        .replace("version: 1.0.0", "version: 2.0.0");
    assert_only(&downgraded, Some(&v1), &[("EVO-002", "product.yaml:31:15")]);
    assert_only(
        &edited(
            "  - property: meshgov.privacyUnit\n    value: user_id\n",
            "",
        ),
        Some(&v1),
        &[("EVO-002", "product.yaml:1:1")],
    );
    assert_only(
        &edited("version: 1.0.0", "version: 0.9.0"),
        Some(&v1),
        &[("EVO-003", "product.yaml:6:10")],
    );
}

fn waiver(rule: &str, expires: &str) -> String {
    edited("      - name: country", "      - name: Country").replace(
        "customProperties:\n",
        &format!(
            "customProperties:\n  - property: meshgov.waivers\n    value:\n      - rule: {rule}\n        owner: users-core@media.example\n        reason: legacy consumers read this column\n        expires: \"{expires}\"\n"
        ),
    )
}

#[test]
fn waivers_downgrade_until_they_expire() {
    let waived = run(&waiver("NAME-001", "2026-12-31"), None);
    assert_eq!(waived.len(), 1);
    assert_eq!(waived[0].diag.rule, "NAME-001");
    assert_eq!(waived[0].diag.severity, meshgov_core::Severity::Info);
    assert!(
        waived[0]
            .waived_by
            .as_deref()
            .unwrap()
            .starts_with("waived by users-core@media.example until 2026-12-31")
    );
    assert_only(
        &waiver("NAME-001", "2026-01-01"),
        None,
        &[
            ("NAME-001", "product.yaml:40:15"),
            ("WAIVER-001", "product.yaml:62:15"),
        ],
    );
    assert_only(
        &waiver("EVO-002", "2026-12-31"),
        None,
        &[
            ("NAME-001", "product.yaml:40:15"),
            ("WAIVER-002", "product.yaml:62:15"),
        ],
    );
}

/// Every rule is documented and has a failing fixture in this file.
#[test]
fn every_rule_is_documented_and_tested() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("RULES.md")).unwrap();
    let tests = include_str!("rules.rs");
    for r in RULES {
        assert!(
            doc.contains(&format!("### {}", r.id)),
            "{} is not in RULES.md",
            r.id
        );
        assert!(
            tests.contains(&format!("(\"{}\", \"product", r.id))
                || tests.contains(&format!("(\"{}\".to_string()", r.id)),
            "{} has no fixture asserting its location",
            r.id
        );
    }
}

/// Every live check is documented as well (its fixtures are the CLI's
/// end-to-end tests of `meshgov conformance run`), and every rule RULES.md
/// documents is one the crate reports.
#[test]
fn every_live_rule_is_documented_and_no_other() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("RULES.md")).unwrap();
    for r in LIVE_RULES {
        assert!(
            doc.contains(&format!("### {}", r.id)),
            "{} is not in RULES.md",
            r.id
        );
    }
    for id in doc.lines().filter_map(|l| l.strip_prefix("### ")) {
        assert!(
            RULES.iter().chain(LIVE_RULES).any(|r| r.id == id.trim()),
            "RULES.md documents `{id}`, which no check reports"
        );
    }
}

/// A full ODCS v3 contract, with many keys meshgov does not read, loads and
/// meets the shape rules; only mesh-specific rules speak.
#[test]
fn a_full_odcs_contract_loads() {
    let text = include_str!("fixtures/odcs-full.yaml");
    let d = meshgov_core::descriptor::Descriptor::parse("odcs-full.yaml", text).unwrap();
    assert_eq!(d.product_id(), "seller/payments");
    let info = meshgov_core::descriptor::ProductInfo::resolve(&d, &policies().mesh).unwrap();
    assert_eq!(info.ports.len(), 1);
    assert_eq!(info.ports[0].fields.len(), 4);
    let rules: Vec<String> = found(text, None).into_iter().map(|(r, _)| r).collect();
    assert!(rules.iter().all(|r| !r.starts_with("SPEC")), "{rules:?}");
}
