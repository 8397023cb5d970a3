//! `docs/operations.md` documents every sidecar config key, with the
//! names `config.rs` reads.

#[test]
fn every_config_key_is_in_the_operations_guide() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"),
    )
    .unwrap();
    let missing: Vec<&str> = meshgov_sidecar::config::SCALAR_KEYS
        .iter()
        .copied()
        .chain(["trusted_bundle_keys", "[[auth.keys]]", "[pseudonym_keys]"])
        .filter(|k| !doc.contains(&format!("| `{k}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md lacks a row for {missing:?}"
    );
}
