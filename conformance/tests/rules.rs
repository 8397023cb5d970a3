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

/// META-001 reads the parsed document: the same contract written as JSON
/// passes, and empty values are missing.
#[test]
fn meta_001_reads_the_parsed_document() {
    let doc: serde_json::Map<String, serde_json::Value> =
        meshgov_core::descriptor::Descriptor::top_level(&profiles())
            .into_iter()
            .map(|(k, v)| (k, v.value))
            .collect();
    let json = serde_json::to_string_pretty(&doc).unwrap();
    assert_eq!(found(&json, None), vec![], "{json}");
    let no_team = edited(
        "team:\n  - username: owner@media.example\n    role: owner\n    name: users-core owner\n    description: owner of the users-core team\n",
        "team: []\n",
    );
    assert_only(&no_team, None, &[("META-001", "product.yaml:15:7")]);
    let text = profiles();
    let start = text.find("description:\n  purpose").unwrap();
    let end = text.find("team:").unwrap();
    let blank = format!("{}description: \"\"\n{}", &text[..start], &text[end..]);
    assert_only(&blank, None, &[("META-001", "product.yaml:11:14")]);
}

/// ODCS does not require a `domain`: a contract without one loads, and the
/// guild's `required_metadata` standard reports it, once.
#[test]
fn a_contract_without_a_domain_is_reported_once() {
    let text = edited("domain: users\n", "");
    let f = run(&text, None);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].diag.rule, "META-001");
    assert!(
        f[0].diag.message.starts_with("`domain` is missing"),
        "{f:?}"
    );
    // A domain that cannot be an id segment is still a shape error.
    assert_only(
        &edited("domain: users", "domain: users/eu"),
        None,
        &[("SPEC-003", "product.yaml:8:9")],
    );
}

/// What ODCS v3.1 adds loads without a finding: the team object,
/// relationships, stable ids, `timestamp` and `time`.
#[test]
fn an_odcs_v3_1_contract_loads() {
    let text = include_str!("fixtures/odcs-v3.1.yaml");
    assert_eq!(found(text, None), vec![]);
}

/// A downgrade written in ODCS's usual vocabulary: `restricted` and `pii`
/// in v1, `public` without `pii` in v2. The unknown classification is still
/// reported, and no longer hides the loosening.
#[test]
fn a_downgrade_in_conventional_levels_and_tags_is_caught() {
    let v1 = include_str!("fixtures/listeners.v1.yaml");
    let v2 = include_str!("fixtures/listeners.v2.yaml");
    assert_only(
        v2,
        Some(v1),
        &[
            ("EVO-002", "product.yaml:21:15"),
            ("PRIV-001", "product.yaml:27:25"),
        ],
    );
    let f = run(v2, Some(v1));
    let evo = &f.iter().find(|f| f.diag.rule == "EVO-002").unwrap().diag;
    assert_eq!(
        evo.message,
        "governance loosening: field `listener_email` was downgraded from `restricted` (restricted) to `public` (public); lost the tag `pii`"
    );
    // Dropping only the tag is a loosening too.
    let untagged = v1.replacen("tags: [pii, email]", "tags: [email]", 1);
    assert_only(
        &untagged,
        Some(v1),
        &[
            ("EVO-002", "product.yaml:21:15"),
            ("PRIV-001", "product.yaml:23:25"),
            ("PRIV-001", "product.yaml:27:25"),
        ],
    );
    // `mesh.toml` maps more words: here `email` ranks as `pii.email`, so
    // a field tagged `email` classified `internal` is restricted.
    let mut mapped = policies().clone();
    mapped
        .mesh
        .vocabulary
        .tags
        .insert("email".into(), "pii.email".into());
    let v1_internal = v1.replacen(
        "classification: restricted\n        tags: [pii, email]",
        "classification: internal\n        tags: [email]",
        1,
    );
    let v2_untagged = v1_internal.replacen("tags: [email]", "tags: []", 1);
    let f = check_product(
        &mapped,
        Input {
            path: "product.yaml",
            text: &v2_untagged,
        },
        Some(Input {
            path: "product.v1.yaml",
            text: &v1_internal,
        }),
        TODAY,
    );
    let evo: Vec<String> = f
        .iter()
        .filter(|f| f.diag.rule == "EVO-002")
        .map(|f| f.diag.message.clone())
        .collect();
    assert_eq!(
        evo,
        [
            "governance loosening: field `listener_email` was downgraded from `internal` (restricted) to `internal` (internal); lost the tag `email`"
        ]
    );
    // Without the mapping `email` says nothing, and nothing loosened.
    assert!(
        !found(&v2_untagged, Some(&v1_internal))
            .iter()
            .any(|(r, _)| r == "EVO-002")
    );
}
