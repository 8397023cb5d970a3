//! DSSE bundle envelopes and their manifests (`meshgov_bundle::verify`,
//! `inspect`), as a sidecar receives them on `PUT /control/v1/bundle`.
//!
//! Mode byte even: the rest is an envelope from the wire. Whatever `verify`
//! accepts must carry a signature by the trusted key over the DSSE
//! pre-authentication encoding of the payload it returns, checked here with
//! an independent decoder and `ring`: nothing is accepted unless signed.
//!
//! Mode byte odd: the rest is a payload, signed here with the trusted key, so
//! the manifest and component checks behind the signature are reached. What
//! verifies must rebuild to the same canonical bytes (round trip).
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use meshgov_bundle::{BundleMeta, BundlePayload, Expect, PAYLOAD_TYPE, inspect, sign, verify};
use meshgov_fuzz::{NOW, split_mode, test_key, test_public_key, trust};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = split_mode(data) else {
        return;
    };
    let trust = trust();
    if mode % 2 == 0 {
        let inspected = inspect(rest);
        if let Ok(bundle) = verify(rest, &trust, NOW, &Expect::default()) {
            let payload = independently_signed_payload(rest)
                .unwrap_or_else(|| panic!("accepted an envelope the trusted key did not sign"));
            assert_eq!(bundle.digest(), digest(&payload));
            let inspected = inspected.unwrap_or_else(|e| panic!("verified but inspect fails: {e}"));
            assert_eq!(&inspected.manifest, bundle.manifest());
            assert_eq!(inspected.digest, bundle.digest());
        }
    } else {
        let Ok(envelope) = sign(rest, &[test_key()]) else {
            return;
        };
        let bytes = envelope.to_json_bytes();
        if let Ok(bundle) = verify(&bytes, &trust, NOW, &Expect::default()) {
            assert_eq!(bundle.digest(), digest(rest));
            let m = bundle.manifest().clone();
            let meta = BundleMeta {
                mesh: m.mesh.clone(),
                revision: m.revision,
                created_at_unix: unix(&m.created_at),
                expires_at_unix: unix(&m.expires_at),
                source_commit: m.source_commit.clone(),
                product: m.product.clone(),
            };
            let rebuilt = BundlePayload::new(meta, bundle.components().clone())
                .unwrap_or_else(|e| panic!("a verified payload does not rebuild: {e}"));
            assert_eq!(rebuilt.manifest, m, "manifest round trip");
            assert!(
                rebuilt.to_canonical_bytes() == rest,
                "a verified payload is not the canonical form of what it holds"
            );
        }
    }
});

fn unix(t: &str) -> i64 {
    OffsetDateTime::parse(t, &Rfc3339)
        .unwrap_or_else(|e| panic!("a verified manifest time `{t}` does not parse: {e}"))
        .unix_timestamp()
}

fn digest(payload: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(payload)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The payload, if some signature in the envelope by the trusted key id
/// verifies over `DSSEv1 <len> <type> <len> <payload>`. Written apart from
/// the crate's decoder so that a parser differential shows up here.
fn independently_signed_payload(envelope: &[u8]) -> Option<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_slice(envelope).ok()?;
    let payload_type = v.get("payloadType")?.as_str()?;
    if payload_type != PAYLOAD_TYPE {
        return None;
    }
    let payload = STANDARD.decode(v.get("payload")?.as_str()?).ok()?;
    let mut pae = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    pae.extend_from_slice(&payload);
    let key = test_public_key();
    let keyid = key.keyid();
    let public = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.as_bytes());
    v.get("signatures")?
        .as_array()?
        .iter()
        .filter(|s| s.get("keyid").and_then(|k| k.as_str()) == Some(keyid.as_str()))
        .filter_map(|s| STANDARD.decode(s.get("sig")?.as_str()?).ok())
        .any(|sig| public.verify(&pae, &sig).is_ok())
        .then_some(payload)
}
