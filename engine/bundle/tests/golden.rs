//! Golden files pin the wire format: the canonical payload and envelope
//! bytes for a fixed input and a committed TEST-ONLY key (Ed25519 signing is
//! deterministic, so the signature is fixed too).
//!
//! A failure here means the bytes a sidecar receives have changed. If that
//! is deliberate, rerun with `MESHGOV_BLESS=1` to rewrite the files, and
//! commit them with the change that explains why.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use meshgov_bundle::{
    BundleMeta, BundlePayload, Expect, SigningKey, TrustStore, inspect, read_public_key_file,
    read_signing_key_file, sign, verify,
};

const CREATED: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn test_key() -> SigningKey {
    read_signing_key_file(&golden("TEST-ONLY-signing-key.pem")).unwrap()
}

/// A fixed payload touching every field and the escaping rules.
fn fixed_payload() -> BundlePayload {
    BundlePayload::new(
        BundleMeta {
            mesh: "acme".into(),
            revision: 42,
            created_at_unix: CREATED,
            expires_at_unix: CREATED + 7 * 86_400,
            source_commit: Some("9f1c2e7b4d0a".into()),
            product: Some("orders".into()),
        },
        BTreeMap::from([
            (
                "policies.cedar".into(),
                "@id(\"read-orders\")\npermit(principal in Group::\"analysts\", action == Action::\"read\", resource);\n".into(),
            ),
            ("anonymization.json".into(), "{\"email\":\"mask\",\"name\":\"pseudonym\"}".into()),
            ("notes.txt".into(), "tab\there, ümlaut, \u{1} control, \\ backslash".into()),
        ]),
    )
    .unwrap()
}

fn blessing() -> bool {
    std::env::var_os("MESHGOV_BLESS").is_some_and(|v| v == "1")
}

/// Compares `actual` with the golden file, or rewrites it when blessing.
fn assert_golden(name: &str, actual: &[u8]) {
    let path = golden(name);
    if blessing() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with MESHGOV_BLESS=1 to create it",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from what the code now produces:\n  golden: {}\n  now:    {}\n\
         if the format change is deliberate, rerun with MESHGOV_BLESS=1 and commit the files",
        path.display(),
        String::from_utf8_lossy(&expected),
        String::from_utf8_lossy(actual),
    );
}

#[test]
fn public_key_matches_golden() {
    assert_golden(
        "TEST-ONLY-public-key.txt",
        format!("{}\n", test_key().public_key()).as_bytes(),
    );
}

#[test]
fn payload_bytes_match_golden() {
    assert_golden("payload.json", &fixed_payload().to_canonical_bytes());
}

#[test]
fn envelope_bytes_match_golden() {
    let envelope = sign(&fixed_payload().to_canonical_bytes(), &[&test_key()]).unwrap();
    assert_golden("envelope.json", &envelope.to_json_bytes());
}

/// The committed envelope must keep verifying: today's sidecars must accept
/// bundles built by yesterday's engine until the format is bumped.
#[test]
fn golden_envelope_verifies() {
    if blessing() {
        // The other tests are rewriting these files right now; the next
        // plain run checks them.
        return;
    }
    let bytes = std::fs::read(golden("envelope.json")).unwrap();
    let public = read_public_key_file(&golden("TEST-ONLY-public-key.txt")).unwrap();
    let trust = TrustStore::from_keys([public]).unwrap();
    let expect = Expect {
        mesh: Some("acme"),
        product: Some("orders"),
        ..Expect::default()
    };
    let bundle = verify(&bytes, &trust, CREATED, &expect).unwrap();
    assert_eq!(bundle.manifest(), &fixed_payload().manifest);
    assert_eq!(bundle.signed_by(), public.keyid());
    assert_eq!(bundle.digest(), inspect(&bytes).unwrap().digest);
}
