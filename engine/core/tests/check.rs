//! The checker against the example mesh and one broken variant per rule:
//! each finding must carry the exact rule id and `path:line:col`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use meshgov_core::source::{SourceFile, SourceSet};
use std::path::Path;

fn example() -> SourceSet {
    SourceSet::read_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")).unwrap()
}

/// Replaces (or adds) one file of the example repository.
fn with(mut src: SourceSet, path: &str, text: &str) -> SourceSet {
    let file = SourceFile::new(path, text);
    let list = match path.split('/').next().unwrap() {
        "access" if path.ends_with(".cedarschema") => {
            src.schema = Some(file);
            return src;
        }
        "mesh.toml" => {
            src.mesh = Some(file);
            return src;
        }
        "access" => &mut src.access,
        "anonymization" => &mut src.anonymization,
        "privacy" => &mut src.privacy,
        "standards" => &mut src.standards,
        "plugins" => &mut src.plugins,
        "tests" => &mut src.tests,
        "products" => &mut src.products,
        other => panic!("unknown dir {other}"),
    };
    list.retain(|f| f.path != path);
    list.push(file);
    src
}

fn edit(src: SourceSet, path: &str, from: &str, to: &str) -> SourceSet {
    let text = [src.mesh.iter(), src.schema.iter()]
        .into_iter()
        .flatten()
        .chain(src.access.iter())
        .chain(src.anonymization.iter())
        .chain(src.privacy.iter())
        .chain(src.standards.iter())
        .chain(src.products.iter())
        .find(|f| f.path == path)
        .unwrap()
        .text
        .clone();
    assert!(text.contains(from), "`{from}` not in {path}");
    with(src, path, &text.replacen(from, to, 1))
}

/// `(rule, "path:line:col")` of every finding.
fn findings(src: &SourceSet) -> Vec<(String, String)> {
    meshgov_core::check(src)
        .diagnostics
        .into_iter()
        .map(|d| {
            (
                d.rule.to_string(),
                format!("{}:{}:{}", d.path, d.pos.line, d.pos.col),
            )
        })
        .collect()
}

fn assert_finding(src: &SourceSet, rule: &str, at: &str) {
    let f = findings(src);
    assert!(
        f.iter().any(|(r, a)| r == rule && a == at),
        "expected {rule} at {at}, got {f:?}"
    );
}

#[test]
fn the_example_mesh_is_clean() {
    let checked = meshgov_core::check(&example());
    assert!(checked.diagnostics.is_empty(), "{:#?}", checked.diagnostics);
    let p = checked.policies.unwrap();
    assert!(p.access.len() >= 10);
    assert_eq!(checked.products.len(), 3);
}

#[test]
fn cedar_syntax_error_is_located() {
    let src = with(
        example(),
        "access/extra.cedar",
        "@id(\"x\")\npermit (principal action, resource);\n",
    );
    assert_finding(&src, "ACCESS-PARSE", "access/extra.cedar:2:19");
}

#[test]
fn cedar_validation_is_strict_and_located() {
    let src = with(
        example(),
        "access/extra.cedar",
        "// header\n@id(\"x\")\npermit (principal, action == Action::\"read\", resource)\nwhen { context.purpse == \"a\" };\n",
    );
    assert_finding(&src, "ACCESS-VALIDATE", "access/extra.cedar:4:8");
}

#[test]
fn unknown_action_fails_validation() {
    let src = with(
        example(),
        "access/extra.cedar",
        "@id(\"x\")\npermit (principal, action == Action::\"write\", resource);\n",
    );
    let f = findings(&src);
    assert!(
        f.iter()
            .any(|(r, a)| r == "ACCESS-VALIDATE" && a.starts_with("access/extra.cedar:2:")),
        "{f:?}"
    );
}

#[test]
fn policies_need_unique_ids() {
    let src = with(
        example(),
        "access/extra.cedar",
        "permit (principal, action == Action::\"discover\", resource);\n\n@id(\"users.marketing-read\")\npermit (principal, action == Action::\"discover\", resource);\n",
    );
    assert_finding(&src, "ACCESS-ID", "access/extra.cedar:1:1");
    assert_finding(&src, "ACCESS-DUPLICATE-ID", "access/extra.cedar:3:1");
}

#[test]
fn schema_must_declare_the_base_types() {
    let schema = "entity Group;\nentity Consumer in [Group];\naction read appliesTo { principal: Consumer, resource: Consumer };\n";
    let src = with(example(), "access/schema.cedarschema", schema);
    let f = findings(&src);
    assert!(f.iter().any(|(r, _)| r == "ACCESS-SCHEMA-BASE"), "{f:?}");
}

#[test]
fn unknown_classification_suggests_the_nearest() {
    let src = edit(
        example(),
        "anonymization/personal-data.toml",
        "classification = \"pii.email\"",
        "classification = \"pii.emial\"",
    );
    let checked = meshgov_core::check(&src);
    let d = checked
        .diagnostics
        .iter()
        .find(|d| d.rule == "UNKNOWN-CLASSIFICATION")
        .unwrap();
    assert_eq!(
        (d.path.as_str(), d.pos.line, d.pos.col),
        ("anonymization/personal-data.toml", 15, 1)
    );
    assert!(d.hint.contains("`pii.email`"), "{}", d.hint);
    assert!(checked.policies.is_none());
}

#[test]
fn unknown_transform_and_missing_parameters() {
    let src = edit(
        example(),
        "anonymization/personal-data.toml",
        "transform = \"redact\"",
        "transform = \"scramble\"",
    );
    assert_finding(
        &src,
        "ANON-TRANSFORM",
        "anonymization/personal-data.toml:23:1",
    );
    let src = edit(
        example(),
        "anonymization/personal-data.toml",
        "keep_first = 1\nkeep_last = 4\n",
        "",
    );
    assert_finding(&src, "ANON-PARAM", "anonymization/personal-data.toml:16:1");
    let src = edit(
        example(),
        "anonymization/personal-data.toml",
        "key_scope = \"user-identity\"\n",
        "",
    );
    assert_finding(&src, "ANON-PARAM", "anonymization/personal-data.toml:9:1");
}

#[test]
fn unknown_choices_are_located_with_a_fix() {
    // A plugin kind is parsed into its enum as the file loads.
    let src = with(
        example(),
        "plugins/p.toml",
        "[[plugins]]\nname = \"x\"\nkind = \"transformer\"\nmodule = \"x.wasm\"\nsha256 = \"00\"\n",
    );
    assert_finding(&src, "PLUGIN-PARSE", "plugins/p.toml:3:8");
    let d = meshgov_core::check(&src)
        .diagnostics
        .into_iter()
        .find(|d| d.rule == "PLUGIN-PARSE")
        .unwrap();
    assert!(d.message.contains("`transform` or `validator`"), "{d:?}");
    assert_eq!(d.hint, "use one of the expected values");
    // A generalization that does not exist points at `to`.
    let src = edit(
        example(),
        "anonymization/personal-data.toml",
        "to = \"year\"",
        "to = \"decade\"",
    );
    let f = findings(&src);
    assert!(
        f.iter()
            .any(|(r, a)| r == "ANON-PARAM" && a.starts_with("anonymization/personal-data.toml:")),
        "{f:?}"
    );
}

#[test]
fn undeclared_plugin_is_refused() {
    let src = edit(
        example(),
        "anonymization/personal-data.toml",
        "transform = \"redact\"",
        "transform = \"plugin\"\nplugin = \"nope\"",
    );
    assert_finding(&src, "ANON-PLUGIN", "anonymization/personal-data.toml:24:1");
}

#[test]
fn unknown_fields_are_refused_with_their_location() {
    let src = edit(
        example(),
        "privacy/playback.toml",
        "window_seconds = 86400",
        "window_seconds = 86400\nwindow_secs = 1",
    );
    assert_finding(&src, "PRIV-PARSE", "privacy/playback.toml:12:1");
}

#[test]
fn epsilon_must_be_positive_and_within_caps() {
    let src = edit(
        example(),
        "privacy/playback.toml",
        "epsilon_budget = 4.0",
        "epsilon_budget = 0.0",
    );
    assert_finding(&src, "PRIV-EPSILON", "privacy/playback.toml:8:1");
    let src = edit(
        example(),
        "privacy/playback.toml",
        "epsilon_budget = 4.0",
        "epsilon_budget = 40.0",
    );
    assert_finding(&src, "PRIV-EPSILON", "privacy/playback.toml:8:1");
    let src = edit(
        example(),
        "privacy/playback.toml",
        "max_epsilon_per_query = 1.0",
        "max_epsilon_per_query = 2.0",
    );
    assert_finding(&src, "PRIV-EPSILON", "privacy/playback.toml:10:1");
    let src = edit(
        example(),
        "privacy/playback.toml",
        "delta_budget = 1e-6",
        "delta_budget = 0.5",
    );
    assert_finding(&src, "PRIV-DELTA", "privacy/playback.toml:9:1");
    let src = edit(
        example(),
        "privacy/playback.toml",
        "\"histogram\"]",
        "\"median\"]",
    );
    assert_finding(&src, "PRIV-AGGREGATION", "privacy/playback.toml:6:41");
    let src = edit(example(), "privacy/playback.toml", "[0, 600000]", "[10, 1]");
    assert_finding(&src, "PRIV-BOUNDS", "privacy/playback.toml:21:1");
}

#[test]
fn unknown_purpose_is_refused() {
    let src = edit(
        example(),
        "privacy/playback.toml",
        "purpose = \"campaign-analytics\"",
        "purpose = \"campaign-analytic\"",
    );
    let checked = meshgov_core::check(&src);
    let d = checked
        .diagnostics
        .iter()
        .find(|d| d.rule == "UNKNOWN-PURPOSE")
        .unwrap();
    assert_eq!((d.pos.line, d.pos.col), (32, 1));
    assert!(d.hint.contains("`campaign-analytics`"));
}

#[test]
fn invalid_regex_is_located() {
    let src = edit(
        example(),
        "standards/schema.toml",
        "field_pattern = '_id$'",
        "field_pattern = '_id($'",
    );
    assert_finding(&src, "STD-REGEX", "standards/schema.toml:14:1");
    let src = edit(
        example(),
        "standards/schema.toml",
        "check = \"field_name\"",
        "check = \"field_names\"",
    );
    assert_finding(&src, "STD-CHECK", "standards/schema.toml:6:1");
}

#[test]
fn duplicate_rule_ids_point_at_both() {
    let src = edit(
        example(),
        "standards/schema.toml",
        "id = \"STD-NAME-002\"",
        "id = \"anon.email\"",
    );
    let checked = meshgov_core::check(&src);
    let d = checked
        .diagnostics
        .iter()
        .find(|d| d.rule == "DUPLICATE-ID")
        .unwrap();
    assert_eq!((d.path.as_str(), d.pos.line), ("standards/schema.toml", 12));
    assert!(
        d.message.contains("anonymization/personal-data.toml:14:1"),
        "{}",
        d.message
    );
    // A rule id that a Cedar policy already uses points at its `@id`.
    let src = edit(
        example(),
        "standards/schema.toml",
        "id = \"STD-NAME-002\"",
        "id = \"users.marketing-read\"",
    );
    let checked = meshgov_core::check(&src);
    let d = checked
        .diagnostics
        .iter()
        .find(|d| d.rule == "DUPLICATE-ID")
        .unwrap();
    assert!(d.message.contains("access/users.cedar:"), "{}", d.message);
}

#[test]
fn every_problem_is_reported_in_one_run() {
    let src = edit(
        example(),
        "privacy/playback.toml",
        "epsilon_budget = 4.0",
        "epsilon_budget = -1.0",
    );
    let src = edit(
        src,
        "standards/schema.toml",
        "field_pattern = '_id$'",
        "field_pattern = '('",
    );
    let src = edit(
        src,
        "anonymization/personal-data.toml",
        "transform = \"redact\"",
        "transform = \"scramble\"",
    );
    let src = with(
        src,
        "access/extra.cedar",
        "@id(\"x\")\npermit (principal action, resource);\n",
    );
    let rules: Vec<String> = findings(&src).into_iter().map(|(r, _)| r).collect();
    for r in [
        "PRIV-EPSILON",
        "STD-REGEX",
        "ANON-TRANSFORM",
        "ACCESS-PARSE",
    ] {
        assert!(rules.iter().any(|x| x == r), "missing {r} in {rules:?}");
    }
}

#[test]
fn malformed_mesh_is_located() {
    let src = with(
        example(),
        "mesh.toml",
        "id = \"m\"\n[[classifications]]\nid = \"x\"\nlevel = \"secret\"\n",
    );
    assert_finding(&src, "MESH-PARSE", "mesh.toml:4:9");
}

/// The ODCS vocabulary maps onto levels or declared classifications only.
#[test]
fn vocabulary_targets_must_be_levels_or_classifications() {
    let mesh = "id = \"m\"\n[[classifications]]\nid = \"pii.email\"\nlevel = \"restricted\"\n\n[vocabulary.classifications]\nsecret = \"restricted\"\n[vocabulary.tags]\npii = \"pii.email\"\ngdpr = \"pii.mail\"\n";
    let src = with(example(), "mesh.toml", mesh);
    assert_finding(&src, "MESH-VOCABULARY", "mesh.toml:10:1");
    let d = meshgov_core::check(&src).diagnostics;
    assert_eq!(
        d.iter().filter(|d| d.rule == "MESH-VOCABULARY").count(),
        1,
        "{d:?}"
    );
}

#[test]
fn scopes_must_name_described_products_domains_and_ports() {
    let src = edit(
        example(),
        "anonymization/personal-data.toml",
        "products = [\"playback/play-events\"]\ngroups",
        "products = [\"playback/play-event\"]\nports = [\"plays\", \"play\"]\ngroups",
    );
    assert_finding(
        &src,
        "SCOPE-UNKNOWN",
        "anonymization/personal-data.toml:53:13",
    );
    let src = edit(
        example(),
        "anonymization/personal-data.toml",
        "groups = [\"payments\"]",
        "ports = [\"plays\", \"play\"]\ngroups = [\"payments\"]",
    );
    let f = findings(&src);
    assert_eq!(
        f,
        vec![(
            "SCOPE-UNKNOWN".to_string(),
            "anonymization/personal-data.toml:54:19".to_string()
        )]
    );
    let src = edit(
        example(),
        "privacy/playback.toml",
        "products = [\"playback/play-events\"]",
        "domains = [\"playbak\"]",
    );
    assert_finding(&src, "SCOPE-UNKNOWN", "privacy/playback.toml:5:12");
}

#[test]
fn descriptors_are_resolved_with_located_errors() {
    let path = "products/play-events.yaml";
    let dup = edit(
        example(),
        path,
        "      - name: country",
        "      - name: song_id",
    );
    assert_finding(&dup, "PRODUCT-RESOLVE", "products/play-events.yaml:45:15");
    let slash = edit(example(), path, "- name: device", "- name: device/os");
    assert_finding(&slash, "PRODUCT-RESOLVE", "products/play-events.yaml:48:15");
    let port = edit(
        example(),
        path,
        "      - name: plays\n        kind",
        "      - name: plays\n        kind: records\n      - name: plays\n        kind",
    );
    assert_eq!(
        findings(&port),
        vec![(
            "PRODUCT-RESOLVE".to_string(),
            "products/play-events.yaml:63:15".to_string()
        )],
        "a product that does not resolve reports only that, not every rule scoped to it"
    );
    let unclassified = edit(example(), path, "        classification: device.info\n", "");
    assert_finding(
        &unclassified,
        "PRODUCT-UNCLASSIFIED",
        "products/play-events.yaml:48:15",
    );
    let unknown = edit(
        example(),
        path,
        "classification: device.info",
        "classification: device.inf",
    );
    assert_finding(
        &unknown,
        "UNKNOWN-CLASSIFICATION",
        "products/play-events.yaml:50:25",
    );
}

#[test]
fn consumer_attributes_meshgov_cannot_supply_are_refused() {
    let src = edit(
        example(),
        "access/schema.cedarschema",
        "  sub: String,\n",
        "  sub: String,\n  clearance: Long,\n",
    );
    assert_finding(&src, "ACCESS-SCHEMA-BASE", "access/schema.cedarschema:1:1");
    let optional = edit(
        example(),
        "access/schema.cedarschema",
        "  sub: String,\n",
        "  sub: String,\n  clearance?: Long,\n",
    );
    assert_eq!(findings(&optional), vec![]);
    let product_attr = edit(
        example(),
        "access/schema.cedarschema",
        "  status: String,\n",
        "  status: String,\n  tier: Long,\n",
    );
    assert_finding(
        &product_attr,
        "PRODUCT-SCHEMA",
        "products/play-events.yaml:1:1",
    );
}

#[test]
fn plugin_modules_must_stay_inside_plugins() {
    for module in ["../mesh.toml", "/etc/passwd"] {
        let src = with(
            example(),
            "plugins/escape.toml",
            &format!(
                "[[plugins]]\nname = \"escape\"\nkind = \"transform\"\nmodule = \"{module}\"\nsha256 = \"00\"\n"
            ),
        );
        let d = meshgov_core::check(&src)
            .diagnostics
            .into_iter()
            .find(|d| d.rule == "PLUGIN-MODULE")
            .unwrap();
        assert_eq!((d.pos.line, d.pos.col), (4, 1));
        assert!(d.message.contains("outside `plugins/`"), "{}", d.message);
    }
}

#[test]
fn overlapping_rules_of_equal_specificity_conflict() {
    let rules = |second: &str| {
        format!(
            "[[rules]]\nid = \"a\"\nclassification = \"device.info\"\nproducts = [\"playback/play-events\"]\ntransform = \"redact\"\n\n[[rules]]\nid = \"b\"\nclassification = \"device.info\"\nproducts = {second}\ntransform = \"redact\"\n"
        )
    };
    let overlap = with(
        example(),
        "anonymization/overlap.toml",
        &rules("[\"users/user-profiles\", \"playback/play-events\"]"),
    );
    assert_finding(&overlap, "ANON-CONFLICT", "anonymization/overlap.toml:9:1");
    let disjoint = with(
        example(),
        "anonymization/overlap.toml",
        &rules("[\"users/user-profiles\"]"),
    );
    assert_eq!(findings(&disjoint), vec![]);
}
