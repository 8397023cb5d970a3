//! Properties of the verifier over hostile input: it never panics, and no
//! edit to a signed envelope yields a different accepted bundle.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use base64::Engine as _;
use meshgov_bundle::{
    BundleMeta, BundlePayload, Expect, SigningKey, TrustStore, VerifiedBundle, inspect, sign,
    verify,
};
use proptest::prelude::*;

const CREATED: i64 = 1_767_225_600;
const NOW: i64 = CREATED + 60;

fn key(seed: u8) -> SigningKey {
    // Fixed keys keep failures reproducible: a PKCS#8 v1 document with a
    // chosen seed.
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend([seed; 32]);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    SigningKey::from_pkcs8_pem(&format!(
        "-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"
    ))
    .unwrap()
}

struct Fixture {
    trust: TrustStore,
    trusted: SigningKey,
    envelope: Vec<u8>,
    accepted: VerifiedBundle,
}

/// A bundle signed by a trusted key and co-signed by a stranger, whose
/// signature the verifier skips: edits there may be accepted, but must not
/// change what is accepted.
static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let (trusted, stranger) = (key(1), key(2));
    let payload = BundlePayload::new(
        BundleMeta {
            mesh: "acme".into(),
            revision: 9,
            created_at_unix: CREATED,
            expires_at_unix: CREATED + 3600,
            source_commit: None,
            product: Some("orders".into()),
        },
        BTreeMap::from([
            (
                "a.cedar".into(),
                "permit(principal, action, resource);".into(),
            ),
            ("b.json".into(), "{\"x\":\"\\n\"}".into()),
        ]),
    )
    .unwrap();
    let envelope = sign(&payload.to_canonical_bytes(), &[&stranger, &trusted])
        .unwrap()
        .to_json_bytes();
    let trust = TrustStore::from_keys([trusted.public_key()]).unwrap();
    let accepted = check(&envelope, &trust).unwrap();
    Fixture {
        trust,
        trusted,
        envelope,
        accepted,
    }
});

fn check(bytes: &[u8], trust: &TrustStore) -> Result<VerifiedBundle, meshgov_bundle::VerifyError> {
    let expect = Expect {
        mesh: Some("acme"),
        product: Some("orders"),
        ..Expect::default()
    };
    verify(bytes, trust, NOW, &expect)
}

/// Accepted means accepted as-is: same manifest, components and digest.
fn assert_same_or_refused(mutated: &[u8]) -> Result<(), TestCaseError> {
    let f = &*FIXTURE;
    if let Ok(got) = check(mutated, &f.trust) {
        prop_assert_eq!(got.manifest(), f.accepted.manifest());
        prop_assert_eq!(got.components(), f.accepted.components());
        prop_assert_eq!(got.digest(), f.accepted.digest());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(check(&bytes, &FIXTURE.trust).is_err());
        let _ = inspect(&bytes);
    }

    #[test]
    fn json_like_text_never_panics(text in r#"[{}\[\]":,a-zA-Z0-9+/= \\]{0,200}"#) {
        prop_assert!(check(text.as_bytes(), &FIXTURE.trust).is_err());
        let _ = inspect(text.as_bytes());
    }

    /// Even with a valid signature, a payload that is not a canonical bundle
    /// is refused, without panicking.
    #[test]
    fn signed_garbage_is_refused(payload in proptest::collection::vec(any::<u8>(), 0..256)) {
        let env = sign(&payload, &[&FIXTURE.trusted]).unwrap().to_json_bytes();
        prop_assert!(check(&env, &FIXTURE.trust).is_err());
    }

    #[test]
    fn one_byte_substitution_never_yields_another_bundle(
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut m = FIXTURE.envelope.clone();
        let i = at.index(m.len());
        prop_assume!(m[i] != byte);
        m[i] = byte;
        assert_same_or_refused(&m)?;
    }

    #[test]
    fn one_byte_insertion_or_deletion_never_yields_another_bundle(
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        insert in any::<bool>(),
    ) {
        let mut m = FIXTURE.envelope.clone();
        if insert {
            m.insert(at.index(m.len() + 1), byte);
        } else {
            m.remove(at.index(m.len()));
        }
        assert_same_or_refused(&m)?;
    }

    /// Whatever text the components hold, a bundle round-trips exactly:
    /// the hand-written canonical encoder and the JSON parser agree.
    #[test]
    fn any_components_round_trip(
        components in proptest::collection::btree_map(any::<String>(), any::<String>(), 0..6),
        mesh in any::<String>(),
        product in proptest::option::of(any::<String>()),
        revision in any::<u64>(),
    ) {
        let payload = BundlePayload::new(
            BundleMeta {
                mesh: mesh.clone(),
                revision,
                created_at_unix: CREATED,
                expires_at_unix: CREATED + 1,
                source_commit: Some("c".into()),
                product: product.clone(),
            },
            components.clone(),
        )
        .unwrap();
        let env = sign(&payload.to_canonical_bytes(), &[&FIXTURE.trusted]).unwrap();
        let expect = Expect { mesh: Some(&mesh), product: product.as_deref(), ..Expect::default() };
        let got = verify(&env.to_json_bytes(), &FIXTURE.trust, CREATED, &expect).unwrap();
        prop_assert_eq!(got.manifest(), &payload.manifest);
        prop_assert_eq!(got.components(), &components);
    }
}

/// Every position, one bit flipped: exhaustive where the proptests sample.
#[test]
fn every_single_bit_flip_is_refused_or_harmless() {
    let f = &*FIXTURE;
    let mut accepted = 0;
    for i in 0..f.envelope.len() {
        let mut m = f.envelope.clone();
        m[i] ^= 0x01;
        if let Ok(got) = check(&m, &f.trust) {
            assert_eq!(got.manifest(), f.accepted.manifest(), "flip at {i}");
            assert_eq!(got.components(), f.accepted.components(), "flip at {i}");
            assert_eq!(got.digest(), f.accepted.digest(), "flip at {i}");
            accepted += 1;
        }
    }
    // Only flips inside the stranger's signature can be accepted, and most
    // of those are; a count of zero would mean the fixture lost its point.
    assert!(accepted > 0);
}
