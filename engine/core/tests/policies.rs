//! Compiled policies survive the trip through bundle components unchanged,
//! slices keep only what applies, and hostile files never panic the checker.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use meshgov_core::descriptor::{Descriptor, ProductInfo};
use meshgov_core::policies::Policies;
use meshgov_core::source::{SourceFile, SourceSet};
use meshgov_core::{Asker, Principal, ProductView};
use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

fn checked() -> meshgov_core::Checked {
    meshgov_core::check(&SourceSet::read_dir(&root()).unwrap())
}

fn product(policies: &Policies, file: &str) -> ProductInfo {
    let text = std::fs::read_to_string(root().join("products").join(file)).unwrap();
    ProductInfo::resolve(&Descriptor::parse(file, &text).unwrap(), &policies.mesh).unwrap()
}

fn plans(p: &Policies, info: &ProductInfo, port: &str) -> Vec<meshgov_core::ReadDecision> {
    let view = ProductView::new(info.clone(), p).unwrap();
    let who = [
        ("ana", "marketing", "campaign-analytics"),
        ("frank", "fraud", "fraud-investigation"),
        ("dana", "data-science", "product-analytics"),
        ("pay", "payments", "royalty-payments"),
        ("eve", "outsiders", "product-analytics"),
    ];
    who.iter()
        .map(|(id, group, purpose)| {
            let principal = Principal {
                id: id.to_string(),
                groups: vec![group.to_string()],
                ..Default::default()
            };
            p.decide_read(
                &view,
                port,
                Asker {
                    principal: &principal,
                    purpose,
                    now_unix: 0,
                },
            )
            .unwrap()
        })
        .collect()
}

#[test]
fn bundle_components_round_trip_to_identical_decisions() {
    let p = checked().policies.unwrap();
    let back = Policies::from_components(&p.components(), None).unwrap();
    assert_eq!(back.components(), p.components(), "components are stable");
    for (file, port) in [
        ("user-profiles.yaml", "profiles"),
        ("play-events.yaml", "plays"),
        ("artist-payments.yaml", "payments"),
    ] {
        let info = product(&p, file);
        assert_eq!(plans(&p, &info, port), plans(&back, &info, port), "{file}");
    }
}

#[test]
fn a_slice_decides_like_the_whole_mesh_and_holds_only_its_rules() {
    let p = checked().policies.unwrap();
    let info = product(&p, "play-events.yaml");
    let slice = p.slice(&info).unwrap();
    assert_eq!(slice.product.as_deref(), Some("playback/play-events"));
    assert_eq!(plans(&p, &info, "plays"), plans(&slice, &info, "plays"));
    let ids: Vec<&str> = slice
        .access
        .texts()
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    assert!(
        ids.iter()
            .all(|id| id.starts_with("playback.") || id.starts_with("mesh.")),
        "{ids:?}"
    );
    assert!(ids.contains(&"playback.payments-read"));
    let users = slice.components();
    let text = users.values().cloned().collect::<String>();
    assert!(
        !text.contains("users.fraud-reveal-email"),
        "another product's policy leaked into the slice"
    );
    // The user-profiles slice has no playback row filter or privacy rule.
    let up = p.slice(&product(&p, "user-profiles.yaml")).unwrap();
    assert!(up.row_filters.is_empty() && up.privacy.is_empty());
    assert_eq!(slice.row_filters.len(), 1);
}

#[test]
fn malformed_components_are_refused() {
    let p = checked().policies.unwrap();
    let mut c = p.components();
    c.insert("anonymization.json".into(), "{not json".into());
    assert!(Policies::from_components(&c, None).is_err());
    let mut c = p.components();
    c.remove("mesh.json");
    let e = Policies::from_components(&c, None).unwrap_err();
    assert_eq!(e.to_string(), "the bundle has no `mesh.json` component");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Any bytes in any policy file give diagnostics, never a panic.
    #[test]
    fn hostile_files_never_panic(text in "\\PC{0,400}", which in 0usize..6) {
        let mut src = SourceSet::read_dir(&root()).unwrap();
        let file = |p: &str| SourceFile::new(p, text.clone());
        match which {
            0 => src.mesh = Some(file("mesh.toml")),
            1 => src.schema = Some(file("access/schema.cedarschema")),
            2 => src.access.push(file("access/x.cedar")),
            3 => src.anonymization.push(file("anonymization/x.toml")),
            4 => src.privacy.push(file("privacy/x.toml")),
            _ => src.products.push(file("products/x.yaml")),
        }
        let checked = meshgov_core::check(&src);
        for d in &checked.diagnostics {
            prop_assert!(d.pos.line >= 1 && d.pos.col >= 1);
        }
    }

    /// Mutating one byte of a valid file is reported or harmless.
    #[test]
    fn one_byte_mutations_never_panic(at in 0usize..2000, byte in any::<u8>()) {
        let mut src = SourceSet::read_dir(&root()).unwrap();
        let f = &mut src.anonymization[0];
        let mut bytes = f.text.clone().into_bytes();
        let i = at % bytes.len();
        bytes[i] = byte;
        *f = SourceFile::new(f.path.clone(), String::from_utf8_lossy(&bytes).into_owned());
        let _ = meshgov_core::check(&src);
    }
}

/// A `forbid` on an action group must bind every action in the group, even
/// though the policy never names them: splitting policies by action must
/// not drop it.
#[test]
fn forbids_on_action_groups_still_apply() {
    let mut src = SourceSet::read_dir(&root()).unwrap();
    let schema = src.schema.as_ref().unwrap().text.replace(
        "action read, aggregate appliesTo {",
        "action \"data-access\";\naction read, aggregate in [\"data-access\"] appliesTo {",
    );
    src.schema = Some(SourceFile::new("access/schema.cedarschema", schema));
    src.access.push(SourceFile::new(
        "access/freeze.cedar",
        "@id(\"mesh.freeze\")\nforbid (principal, action in Action::\"data-access\", resource);\n",
    ));
    let checked = meshgov_core::check(&src);
    assert!(checked.diagnostics.is_empty(), "{:?}", checked.diagnostics);
    let p = checked.policies.unwrap();
    let info = product(&p, "user-profiles.yaml");
    for plan in plans(&p, &info, "profiles") {
        assert!(!plan.decision.allowed, "{:?}", plan.decision);
    }
    let frank = plans(&p, &info, "profiles").remove(1);
    assert_eq!(frank.decision.policies, vec!["mesh.freeze".to_string()]);
}

fn with_policy(text: &str) -> Policies {
    let mut src = SourceSet::read_dir(&root()).unwrap();
    src.access
        .push(SourceFile::new("access/extra.cedar", text.to_string()));
    let checked = meshgov_core::check(&src);
    assert!(checked.diagnostics.is_empty(), "{:?}", checked.diagnostics);
    checked.policies.unwrap()
}

/// A `forbid` that fails to evaluate (here: integer overflow) might have
/// matched, so the decision is a denial that names the error.
#[test]
fn a_policy_that_errors_denies() {
    let p = with_policy(
        "@id(\"mesh.overflow\")\nforbid (principal, action == Action::\"read\", resource)\nwhen { (context.time + 2) * 9223372036854775807 > 0 };\n",
    );
    let info = product(&p, "play-events.yaml");
    let frank = plans(&p, &info, "plays").remove(1);
    assert!(!frank.decision.allowed, "{:?}", frank.decision);
    assert!(
        frank
            .decision
            .errors
            .iter()
            .any(|e| e.contains("mesh.overflow")),
        "{:?}",
        frank.decision.errors
    );
}

/// Unclassified fields and unknown classifications are withheld even when a
/// blanket `reveal` permit would show them: no rule was written for them.
#[test]
fn unclassified_fields_are_withheld_whatever_cedar_says() {
    let p = with_policy(
        "@id(\"mesh.reveal-all\")\npermit (principal, action == Action::\"reveal\", resource);\n",
    );
    let text = std::fs::read_to_string(root().join("products/play-events.yaml")).unwrap();
    let text = text
        .replace("        classification: device.info\n", "")
        .replace("classification: pii.user_id", "classification: pii.userid");
    let d = Descriptor::parse("play-events.yaml", &text).unwrap();
    let info = ProductInfo::resolve(&d, &p.mesh).unwrap();
    let frank = plans(&p, &info, "plays").remove(1);
    assert!(frank.decision.allowed);
    let treatment = |name: &str| {
        frank
            .fields
            .iter()
            .find(|f| f.name == name)
            .unwrap()
            .treatment
            .label()
    };
    assert_eq!(treatment("device"), "withheld");
    assert_eq!(treatment("user_id"), "withheld");
    assert_eq!(treatment("country"), "clear");
}
#[test]
fn reloading_over_a_previous_bundle_reuses_unchanged_policies_and_sees_changed_ones() {
    let p = checked().policies.unwrap();
    let before = Policies::from_components(&p.components(), None).unwrap();
    // Unchanged: the same decisions as a fresh load.
    let same = Policies::from_components_reusing(&p.components(), None, Some(&before)).unwrap();
    assert_eq!(same.components(), p.components());
    // One policy's text changed (a `permit` turned into a `forbid`): the
    // reload must parse it again, not keep the old one.
    let mut c = p.components();
    let (_, text) = c
        .iter_mut()
        .find(|(_, v)| v.contains("users.marketing-read"))
        .expect("the example's marketing policy");
    let mut list: Vec<serde_json::Value> = serde_json::from_str(text).unwrap();
    let item = list
        .iter_mut()
        .find(|v| v["id"] == "users.marketing-read")
        .unwrap();
    let changed = item["text"]
        .as_str()
        .unwrap()
        .replacen("permit", "forbid", 1);
    item["text"] = serde_json::Value::String(changed);
    *text = serde_json::to_string(&list).unwrap();
    let after = Policies::from_components_reusing(&c, None, Some(&before)).unwrap();
    let fresh = Policies::from_components(&c, None).unwrap();
    let info = product(&p, "user-profiles.yaml");
    assert_eq!(
        plans(&after, &info, "profiles"),
        plans(&fresh, &info, "profiles")
    );
    assert!(plans(&before, &info, "profiles")[0].decision.allowed);
    assert!(
        !plans(&after, &info, "profiles")[0].decision.allowed,
        "the changed policy took effect"
    );
}
