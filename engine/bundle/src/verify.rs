//! Fail-closed verification: the only way to get a [`VerifiedBundle`].

use std::collections::BTreeMap;
use std::fmt;

use crate::envelope::{self, PAYLOAD_TYPE};
use crate::excerpt;
use crate::key::TrustStore;
use crate::payload::{self, BundlePayload, FORMAT_VERSION, Manifest};

/// The largest envelope [`verify`] reads by default: 64 MiB, far above a
/// large mesh (about 1 MB for 1,000 policies) yet small enough that a
/// hostile push cannot exhaust a sidecar's memory.
pub const DEFAULT_MAX_ENVELOPE_BYTES: usize = 64 * 1024 * 1024;

/// How far in the future `created_at` may be before a bundle is refused as
/// not yet valid: 5 minutes of clock skew between engine and sidecar.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// What the verifier expects of a bundle besides a good signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect<'a> {
    /// The mesh the verifier belongs to; `None` skips the check (for tools
    /// such as `meshgov bundle verify` that serve any mesh).
    pub mesh: Option<&'a str>,
    /// The product the verifier guards. A bundle sliced for this product, or
    /// an unsliced whole-mesh bundle, is accepted: the whole mesh holds every
    /// product's rules, so it is a correct (if larger) policy for this one.
    /// A bundle sliced for another product is refused. `None` skips the
    /// check.
    pub product: Option<&'a str>,
    /// Envelopes larger than this are refused before parsing.
    pub max_envelope_bytes: usize,
}

impl Default for Expect<'_> {
    /// No mesh or product check, and [`DEFAULT_MAX_ENVELOPE_BYTES`].
    fn default() -> Self {
        Self {
            mesh: None,
            product: None,
            max_envelope_bytes: DEFAULT_MAX_ENVELOPE_BYTES,
        }
    }
}

/// Why a bundle was refused. Each variant has a stable [`code`](Self::code)
/// for NACKs and audit events; the message is for humans.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// The envelope is larger than the configured limit.
    #[error("bundle is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The envelope's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The envelope or the payload cannot be read.
    #[error("malformed bundle: {reason}")]
    Malformed {
        /// What is wrong, with a position where the parser gives one.
        reason: String,
    },
    /// The envelope carries something other than a meshgov bundle.
    #[error("payload type `{found}` is not a meshgov bundle (expected `{PAYLOAD_TYPE}`)")]
    UnknownPayloadType {
        /// The envelope's payload type.
        found: String,
    },
    /// No signature names a trusted key.
    #[error("bundle is not signed by a trusted key (signed by {}); add the signer's public key to the trust store, or sign with a trusted key", list(.keyids))]
    UntrustedKey {
        /// The key ids the envelope's signatures name.
        keyids: Vec<String>,
    },
    /// Signatures name trusted keys but none of them is valid: the bundle was
    /// altered after signing, or signed by a different key with the same id.
    #[error("bad signature by trusted key {}; the bundle was altered after signing", list(.keyids))]
    BadSignature {
        /// The trusted key ids whose signatures failed.
        keyids: Vec<String>,
    },
    /// The payload's format version is not one this verifier reads.
    #[error(
        "bundle format `{found}` is not supported (this verifier reads format `{FORMAT_VERSION}`); upgrade the sidecar or build with an older engine"
    )]
    UnsupportedFormat {
        /// The payload's format version, as written.
        found: String,
    },
    /// A component's content does not match its digest in the manifest.
    #[error("component `{component}` does not match its digest in the manifest")]
    DigestMismatch {
        /// The component's name.
        component: String,
    },
    /// The manifest lists a component the payload lacks.
    #[error("component `{component}` is listed in the manifest but missing")]
    MissingComponent {
        /// The component's name.
        component: String,
    },
    /// The payload holds a component the manifest does not list.
    #[error("component `{component}` is not listed in the manifest")]
    UnlistedComponent {
        /// The component's name.
        component: String,
    },
    /// The bundle is for another mesh.
    #[error("bundle is for mesh `{found}`, expected mesh `{expected}`")]
    WrongMesh {
        /// The verifier's mesh.
        expected: String,
        /// The bundle's mesh.
        found: String,
    },
    /// The bundle was sliced for another product.
    #[error(
        "bundle is sliced for product `{found}`, expected product `{expected}` or a whole-mesh bundle"
    )]
    WrongProduct {
        /// The verifier's product.
        expected: String,
        /// The product the bundle was sliced for.
        found: String,
    },
    /// The bundle's lifetime is over.
    #[error("bundle expired at `{expires_at}`; build and push a fresh one")]
    Expired {
        /// The manifest's expiry.
        expires_at: String,
    },
    /// The bundle claims to be created in the future, beyond clock skew.
    #[error(
        "bundle is created at `{created_at}`, more than {MAX_CLOCK_SKEW_SECS} seconds in the future; check the engine's and the sidecar's clocks"
    )]
    NotYetValid {
        /// The manifest's creation time.
        created_at: String,
    },
}

fn list(keyids: &[String]) -> String {
    if keyids.is_empty() {
        return "no key at all".to_owned();
    }
    let quoted: Vec<String> = keyids.iter().map(|k| format!("`{k}`")).collect();
    quoted.join(", ")
}

impl VerifyError {
    /// A stable machine-readable code, for NACK bodies, metrics labels and
    /// audit events. Codes never change meaning; messages may be reworded.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Malformed { .. } => "malformed",
            Self::UnknownPayloadType { .. } => "unknown_payload_type",
            Self::UntrustedKey { .. } => "untrusted_key",
            Self::BadSignature { .. } => "bad_signature",
            Self::UnsupportedFormat { .. } => "unsupported_format",
            Self::DigestMismatch { .. } => "digest_mismatch",
            Self::MissingComponent { .. } => "missing_component",
            Self::UnlistedComponent { .. } => "unlisted_component",
            Self::WrongMesh { .. } => "wrong_mesh",
            Self::WrongProduct { .. } => "wrong_product",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
        }
    }
}

/// Parser messages can echo input (a whole string value), so they are cut.
fn malformed(reason: impl AsRef<str>) -> VerifyError {
    VerifyError::Malformed {
        reason: excerpt::ends(reason.as_ref(), 240),
    }
}

/// A bundle that passed every check in [`verify`].
///
/// Its fields are private and it has no public constructor, so holding one
/// proves the checks ran: enforcement code can take a `VerifiedBundle` and
/// never see an unverified payload.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedBundle {
    manifest: Manifest,
    components: BTreeMap<String, String>,
    digest: String,
    signed_by: String,
}

impl VerifiedBundle {
    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The components, each matching its manifest digest.
    pub fn components(&self) -> &BTreeMap<String, String> {
        &self.components
    }

    /// `sha256:<hex>` of the signed payload bytes: the bundle's identity in
    /// ACKs, status and audit events.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The key id of the trusted key whose signature was accepted.
    pub fn signed_by(&self) -> &str {
        &self.signed_by
    }

    /// Takes the manifest and components out, for a loader that compiles
    /// them without copying.
    pub fn into_parts(self) -> (Manifest, BTreeMap<String, String>) {
        (self.manifest, self.components)
    }
}

impl fmt::Debug for VerifiedBundle {
    // Components can be megabytes; show what identifies the bundle instead.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedBundle")
            .field("manifest", &self.manifest)
            .field("digest", &self.digest)
            .field("signed_by", &self.signed_by)
            .finish_non_exhaustive()
    }
}

/// Verifies a signed bundle and returns it only if every check passes.
///
/// This is the gate a sidecar puts in front of enforcement, so it fails
/// closed: any doubt is a refusal. The checks run in this order, and the
/// first failure is returned:
///
/// 1. size (`too_large`), then the envelope's JSON and base64 (`malformed`);
/// 2. the payload type (`unknown_payload_type`);
/// 3. signatures: at least one signature by a trusted key must verify over
///    the DSSE pre-authentication encoding. Signatures by unknown keys are
///    ignored, so a bundle co-signed during a rotation is accepted
///    (`untrusted_key` when no signature names a trusted key,
///    `bad_signature` when all that do are invalid);
/// 4. the format version (`unsupported_format`), checked before the rest of
///    the payload is read since another format may have another shape;
/// 5. the payload's JSON, which must be in canonical form, so one bundle has
///    one digest (`malformed`);
/// 6. every component against its manifest digest (`missing_component`,
///    `digest_mismatch`, `unlisted_component`);
/// 7. mesh and product against `expect` (`wrong_mesh`, `wrong_product`);
/// 8. time: refused when `now_unix >= expires_at` (`expired`) or when
///    `created_at` is more than [`MAX_CLOCK_SKEW_SECS`] after `now_unix`
///    (`not_yet_valid`).
///
/// `now_unix` is passed in because this crate never reads a clock. Revision
/// (rollback) checks need the sidecar's state, so they are the caller's.
pub fn verify(
    envelope_bytes: &[u8],
    trust: &TrustStore,
    now_unix: i64,
    expect: &Expect<'_>,
) -> Result<VerifiedBundle, VerifyError> {
    if envelope_bytes.len() > expect.max_envelope_bytes {
        return Err(VerifyError::TooLarge {
            size: envelope_bytes.len(),
            limit: expect.max_envelope_bytes,
        });
    }
    let env = envelope::parse(envelope_bytes).map_err(malformed)?;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(VerifyError::UnknownPayloadType {
            found: excerpt::head(&env.payload_type, 80),
        });
    }

    let pae = envelope::pae(&env.payload_type, &env.payload);
    let mut failed = Vec::new();
    let mut signed_by = None;
    for s in &env.signatures {
        let Some(key) = trust.get(&s.keyid) else {
            continue;
        };
        // Each check hashes the whole payload: one try per key, so repeating
        // a trusted key id cannot multiply the work.
        if failed.contains(&s.keyid) {
            continue;
        }
        if key.verifies(&pae, &s.sig) {
            signed_by = Some(s.keyid.clone());
            break;
        }
        failed.push(s.keyid.clone());
    }
    let Some(signed_by) = signed_by else {
        if failed.is_empty() {
            let keyids = env
                .signatures
                .iter()
                .map(|s| excerpt::head(&s.keyid, 80))
                .collect();
            return Err(VerifyError::UntrustedKey { keyids });
        }
        return Err(VerifyError::BadSignature { keyids: failed });
    };

    // From here on the payload is authentic: errors are the signer's bugs or
    // a mismatch between signer and verifier, not an attack.
    let payload = parse_payload(&env.payload)?;
    if payload.to_canonical_bytes() != env.payload {
        return Err(malformed(
            "payload is not in canonical form (re-encoding it gives different bytes)",
        ));
    }
    let BundlePayload {
        manifest,
        components,
    } = payload;

    check_components(&manifest, &components)?;

    if let Some(expected) = expect.mesh
        && manifest.mesh != expected
    {
        return Err(VerifyError::WrongMesh {
            expected: expected.to_owned(),
            found: manifest.mesh,
        });
    }
    if let (Some(expected), Some(found)) = (expect.product, manifest.product.as_deref())
        && found != expected
    {
        return Err(VerifyError::WrongProduct {
            expected: expected.to_owned(),
            found: found.to_owned(),
        });
    }

    let created_at = timestamp(&manifest.created_at, "created_at")?;
    let expires_at = timestamp(&manifest.expires_at, "expires_at")?;
    // `BundlePayload::new` never builds such a manifest; a signed one is a
    // signer's bug, refused like any other malformed bundle.
    if expires_at <= created_at {
        return Err(malformed(format!(
            "manifest `expires_at` ({}) is not after `created_at` ({})",
            manifest.expires_at, manifest.created_at
        )));
    }
    if now_unix >= expires_at {
        return Err(VerifyError::Expired {
            expires_at: manifest.expires_at,
        });
    }
    if created_at > now_unix.saturating_add(MAX_CLOCK_SKEW_SECS) {
        return Err(VerifyError::NotYetValid {
            created_at: manifest.created_at,
        });
    }

    Ok(VerifiedBundle {
        manifest,
        components,
        digest: payload::sha256_digest(&env.payload),
        signed_by,
    })
}

/// Parses payload JSON, reporting an unknown format version as such rather
/// than as whatever shape error the newer format happens to cause.
fn parse_payload(bytes: &[u8]) -> Result<BundlePayload, VerifyError> {
    let unsupported = |found: String| VerifyError::UnsupportedFormat { found };
    match serde_json::from_slice::<BundlePayload>(bytes) {
        Ok(p) if p.manifest.format == FORMAT_VERSION => Ok(p),
        Ok(p) => Err(unsupported(p.manifest.format.to_string())),
        Err(e) => match probe_format(bytes) {
            Some(found) if found != FORMAT_VERSION.to_string() => Err(unsupported(found)),
            _ => Err(malformed(format!("payload: {e}"))),
        },
    }
}

/// The payload's `manifest.format`, read as loosely as possible.
fn probe_format(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        manifest: ManifestProbe,
    }
    #[derive(serde::Deserialize)]
    struct ManifestProbe {
        format: serde_json::Value,
    }
    let probe: Probe = serde_json::from_slice(bytes).ok()?;
    Some(probe.manifest.format.to_string())
}

fn check_components(
    manifest: &Manifest,
    components: &BTreeMap<String, String>,
) -> Result<(), VerifyError> {
    for (name, listed) in &manifest.components {
        let Some(text) = components.get(name) else {
            return Err(VerifyError::MissingComponent {
                component: name.clone(),
            });
        };
        if payload::sha256_digest(text.as_bytes()) != *listed {
            return Err(VerifyError::DigestMismatch {
                component: name.clone(),
            });
        }
    }
    if let Some(name) = components
        .keys()
        .find(|name| !manifest.components.contains_key(*name))
    {
        return Err(VerifyError::UnlistedComponent {
            component: name.clone(),
        });
    }
    Ok(())
}

fn timestamp(text: &str, field: &str) -> Result<i64, VerifyError> {
    payload::parse_timestamp(text).ok_or_else(|| {
        malformed(format!(
            "manifest `{field}` is `{text}`, expected an RFC 3339 UTC time like `2026-01-02T03:04:05Z` in the years 1970 to 9999"
        ))
    })
}

/// What [`inspect`] can tell about an envelope without trusting it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    /// The manifest, as claimed (unverified).
    pub manifest: Manifest,
    /// The key ids the signatures name, in envelope order.
    pub keyids: Vec<String>,
    /// `sha256:<hex>` of the payload bytes; equals
    /// [`VerifiedBundle::digest`] once verified.
    pub digest: String,
}

/// Decodes an envelope and its manifest **without verifying anything**.
///
/// For `meshgov bundle inspect`, so an operator can see which mesh, revision,
/// expiry and keys a refused bundle claims. Never enforce what this returns.
pub fn inspect(envelope_bytes: &[u8]) -> Result<Inspection, VerifyError> {
    let env = envelope::parse(envelope_bytes).map_err(malformed)?;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(VerifyError::UnknownPayloadType {
            found: excerpt::head(&env.payload_type, 80),
        });
    }
    let payload = parse_payload(&env.payload)?;
    Ok(Inspection {
        manifest: payload.manifest,
        keyids: env
            .signatures
            .iter()
            .map(|s| excerpt::head(&s.keyid, 80))
            .collect(),
        digest: payload::sha256_digest(&env.payload),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, MAX_SIGNATURES, sign};
    use crate::key::SigningKey;
    use crate::payload::BundleMeta;
    use ring::rand::SystemRandom;

    const CREATED: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
    const EXPIRES: i64 = CREATED + 86_400;
    const NOW: i64 = CREATED + 60;

    fn key() -> SigningKey {
        let pem = SigningKey::generate_pkcs8_pem(&SystemRandom::new()).unwrap();
        SigningKey::from_pkcs8_pem(&pem).unwrap()
    }

    fn payload(product: Option<&str>) -> BundlePayload {
        BundlePayload::new(
            BundleMeta {
                mesh: "acme".into(),
                revision: 3,
                created_at_unix: CREATED,
                expires_at_unix: EXPIRES,
                source_commit: Some("9f1c2e7".into()),
                product: product.map(Into::into),
            },
            BTreeMap::from([
                (
                    "policies.cedar".to_owned(),
                    "permit(principal, action, resource);".to_owned(),
                ),
                ("rules.json".to_owned(), "{\"mask\":[\"email\"]}".to_owned()),
            ]),
        )
        .unwrap()
    }

    fn envelope(p: &BundlePayload, keys: &[&SigningKey]) -> Envelope {
        sign(&p.to_canonical_bytes(), keys).unwrap()
    }

    fn trust(keys: &[&SigningKey]) -> TrustStore {
        TrustStore::from_keys(keys.iter().map(|k| k.public_key())).unwrap()
    }

    fn expect() -> Expect<'static> {
        Expect {
            mesh: Some("acme"),
            product: Some("orders"),
            ..Expect::default()
        }
    }

    fn check(env: &Envelope, trust: &TrustStore, now: i64) -> Result<VerifiedBundle, VerifyError> {
        verify(&env.to_json_bytes(), trust, now, &expect())
    }

    #[test]
    fn accepts_a_good_bundle() {
        let k = key();
        let p = payload(Some("orders"));
        let bytes = p.to_canonical_bytes();
        let b = check(&envelope(&p, &[&k]), &trust(&[&k]), NOW).unwrap();
        assert_eq!(b.manifest(), &p.manifest);
        assert_eq!(b.components(), &p.components);
        assert_eq!(b.signed_by(), k.keyid());
        assert_eq!(b.digest(), payload::sha256_digest(&bytes));
        assert!(b.digest().starts_with("sha256:") && b.digest().len() == 7 + 64);
    }

    #[test]
    fn refuses_an_untrusted_key() {
        let (signer, trusted) = (key(), key());
        let err = check(
            &envelope(&payload(None), &[&signer]),
            &trust(&[&trusted]),
            NOW,
        )
        .unwrap_err();
        assert_eq!(
            err,
            VerifyError::UntrustedKey {
                keyids: vec![signer.keyid()]
            }
        );
        assert_eq!(err.code(), "untrusted_key");
        let err = check(
            &envelope(&payload(None), &[&signer]),
            &TrustStore::new(),
            NOW,
        )
        .unwrap_err();
        assert_eq!(err.code(), "untrusted_key");
    }

    #[test]
    fn refuses_an_unsigned_bundle() {
        let mut env = envelope(&payload(None), &[&key()]);
        env.signatures.clear();
        let err = check(&env, &trust(&[&key()]), NOW).unwrap_err();
        assert_eq!(err, VerifyError::UntrustedKey { keyids: vec![] });
        assert!(err.to_string().contains("signed by no key at all"), "{err}");
    }

    #[test]
    fn refuses_a_flipped_signature_byte() {
        let k = key();
        let mut env = envelope(&payload(None), &[&k]);
        if let Some(b) = env.signatures.first_mut().and_then(|s| s.sig.get_mut(10)) {
            *b ^= 0x01;
        }
        let err = check(&env, &trust(&[&k]), NOW).unwrap_err();
        assert_eq!(
            err,
            VerifyError::BadSignature {
                keyids: vec![k.keyid()]
            }
        );
        assert_eq!(err.code(), "bad_signature");
    }

    #[test]
    fn refuses_a_tampered_payload() {
        let k = key();
        let mut env = envelope(&payload(None), &[&k]);
        // "revision":3 -> "revision":4, still valid canonical JSON.
        let at = env
            .payload
            .windows(11)
            .position(|w| w == b"\"revision\":")
            .unwrap();
        env.payload[at + 11] = b'4';
        let err = check(&env, &trust(&[&k]), NOW).unwrap_err();
        assert_eq!(err.code(), "bad_signature");
    }

    #[test]
    fn refuses_a_payload_whose_digests_disagree() {
        let k = key();
        let t = trust(&[&k]);

        let mut p = payload(None);
        p.components.insert("rules.json".into(), "{}".into());
        let err = check(&envelope(&p, &[&k]), &t, NOW).unwrap_err();
        assert_eq!(
            err,
            VerifyError::DigestMismatch {
                component: "rules.json".into()
            }
        );
        assert_eq!(err.code(), "digest_mismatch");

        let mut p = payload(None);
        p.components.remove("policies.cedar");
        let err = check(&envelope(&p, &[&k]), &t, NOW).unwrap_err();
        assert_eq!(
            err,
            VerifyError::MissingComponent {
                component: "policies.cedar".into()
            }
        );

        let mut p = payload(None);
        p.components.insert("zz.wasm".into(), "AGFzbQ==".into());
        let err = check(&envelope(&p, &[&k]), &t, NOW).unwrap_err();
        assert_eq!(
            err,
            VerifyError::UnlistedComponent {
                component: "zz.wasm".into()
            }
        );
    }

    #[test]
    fn refuses_an_unknown_payload_type() {
        let k = key();
        let mut env = envelope(&payload(None), &[&k]);
        env.payload_type = "application/vnd.in-toto+json".into();
        let err = check(&env, &trust(&[&k]), NOW).unwrap_err();
        assert_eq!(err.code(), "unknown_payload_type");
        assert!(
            err.to_string().contains("`application/vnd.in-toto+json`"),
            "{err}"
        );
    }

    #[test]
    fn refuses_an_unknown_format() {
        let k = key();
        let t = trust(&[&k]);
        let mut p = payload(None);
        p.manifest.format = 2;
        let err = check(&envelope(&p, &[&k]), &t, NOW).unwrap_err();
        assert_eq!(err, VerifyError::UnsupportedFormat { found: "2".into() });

        // A newer format with a different shape is still reported as such.
        let v2 = br#"{"manifest":{"format":2,"mesh":"acme","layers":[]},"components":{}}"#;
        let err = check(&sign(v2, &[&k]).unwrap(), &t, NOW).unwrap_err();
        assert_eq!(err, VerifyError::UnsupportedFormat { found: "2".into() });
    }

    #[test]
    fn refuses_malformed_input() {
        let k = key();
        let t = trust(&[&k]);
        for bad in [&b""[..], b"{", b"null", b"\xff\xfe", b"{\"payloadType\":1}"] {
            let err = verify(bad, &t, NOW, &expect()).unwrap_err();
            assert_eq!(err.code(), "malformed", "{err}");
        }

        // Signed, but not canonical: pretty-printed.
        let p = payload(None);
        let pretty = serde_json::to_vec_pretty(
            &serde_json::from_slice::<serde_json::Value>(&p.to_canonical_bytes()).unwrap(),
        )
        .unwrap();
        let err = check(&sign(&pretty, &[&k]).unwrap(), &t, NOW).unwrap_err();
        assert!(err.to_string().contains("canonical"), "{err}");

        // Signed, but a field is missing.
        let err = check(
            &sign(b"{\"manifest\":{\"format\":1}}", &[&k]).unwrap(),
            &t,
            NOW,
        )
        .unwrap_err();
        assert_eq!(err.code(), "malformed");

        // Signed, canonical, but a time is not in the one accepted form.
        let mut p = payload(None);
        p.manifest.expires_at = "2026-01-02T00:00:00+00:00".into();
        let err = check(&envelope(&p, &[&k]), &t, NOW).unwrap_err();
        assert!(err.to_string().contains("`expires_at`"), "{err}");
    }

    #[test]
    fn refuses_an_expired_bundle() {
        let k = key();
        let env = envelope(&payload(None), &[&k]);
        let t = trust(&[&k]);
        assert!(check(&env, &t, EXPIRES - 1).is_ok());
        let err = check(&env, &t, EXPIRES).unwrap_err();
        assert_eq!(
            err,
            VerifyError::Expired {
                expires_at: "2026-01-02T00:00:00Z".into()
            }
        );
        assert_eq!(err.code(), "expired");
    }

    #[test]
    fn refuses_a_bundle_from_the_future_beyond_skew() {
        let k = key();
        let env = envelope(&payload(None), &[&k]);
        let t = trust(&[&k]);
        assert!(check(&env, &t, CREATED - MAX_CLOCK_SKEW_SECS).is_ok());
        let err = check(&env, &t, CREATED - MAX_CLOCK_SKEW_SECS - 1).unwrap_err();
        assert_eq!(err.code(), "not_yet_valid");
    }

    #[test]
    fn refuses_another_mesh() {
        let k = key();
        let env = envelope(&payload(None), &[&k]).to_json_bytes();
        let expect = Expect {
            mesh: Some("globex"),
            ..Expect::default()
        };
        let err = verify(&env, &trust(&[&k]), NOW, &expect).unwrap_err();
        assert_eq!(
            err,
            VerifyError::WrongMesh {
                expected: "globex".into(),
                found: "acme".into()
            }
        );
    }

    #[test]
    fn product_slices_are_checked() {
        let k = key();
        let t = trust(&[&k]);
        let err = check(&envelope(&payload(Some("billing")), &[&k]), &t, NOW).unwrap_err();
        assert_eq!(
            err,
            VerifyError::WrongProduct {
                expected: "orders".into(),
                found: "billing".into()
            }
        );
        assert_eq!(err.code(), "wrong_product");
        // A whole-mesh bundle serves any product.
        assert!(check(&envelope(&payload(None), &[&k]), &t, NOW).is_ok());
        // A verifier that guards no product accepts any slice.
        let env = envelope(&payload(Some("billing")), &[&k]).to_json_bytes();
        assert!(verify(&env, &t, NOW, &Expect::default()).is_ok());
    }

    /// Found in review (the `bundle_verify` fuzz target's round-trip
    /// check states it): a signed manifest whose `expires_at` is not after
    /// its `created_at` was accepted while `now` fell in the skew window,
    /// though no builder makes one.
    #[test]
    fn refuses_a_manifest_that_expires_before_it_is_created() {
        let k = key();
        let good = payload(None);
        let mut m = good.manifest.clone();
        m.created_at = "2026-01-01T00:02:00Z".into();
        m.expires_at = "2026-01-01T00:01:30Z".into();
        let bad = BundlePayload {
            manifest: m,
            components: good.components.clone(),
        };
        let err = check(&envelope(&bad, &[&k]), &trust(&[&k]), NOW).unwrap_err();
        assert_eq!(err.code(), "malformed", "{err}");
        assert!(err.to_string().contains("not after"), "{err}");
    }

    /// Found by the `bundle_verify` fuzz target: a signed manifest created
    /// in the year 1013 verified, though no builder can write that time.
    #[test]
    fn refuses_manifest_times_outside_the_years_a_builder_writes() {
        let k = key();
        for (created, expires) in [
            ("1013-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
            ("0000-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
            ("1969-12-31T23:59:59Z", "2026-01-02T00:00:00Z"),
        ] {
            let good = payload(None);
            let mut m = good.manifest.clone();
            m.created_at = created.into();
            m.expires_at = expires.into();
            let bad = BundlePayload {
                manifest: m,
                components: good.components.clone(),
            };
            let err = check(&envelope(&bad, &[&k]), &trust(&[&k]), NOW).unwrap_err();
            assert_eq!(err.code(), "malformed", "{created}: {err}");
            assert!(err.to_string().contains("1970 to 9999"), "{err}");
        }
    }

    #[test]
    fn ignores_extra_signatures_by_unknown_keys() {
        let (trusted, stranger) = (key(), key());
        let t = trust(&[&trusted]);
        for keys in [[&stranger, &trusted], [&trusted, &stranger]] {
            let b = check(&envelope(&payload(None), &keys), &t, NOW).unwrap();
            assert_eq!(b.signed_by(), trusted.keyid());
        }
    }

    #[test]
    fn one_good_trusted_signature_is_enough() {
        let (a, b) = (key(), key());
        let mut env = envelope(&payload(None), &[&a, &b]);
        if let Some(byte) = env.signatures.first_mut().and_then(|s| s.sig.get_mut(0)) {
            *byte ^= 0x80;
        }
        let v = check(&env, &trust(&[&a, &b]), NOW).unwrap();
        assert_eq!(v.signed_by(), b.keyid());
    }

    #[test]
    fn rotation_trusts_old_and_new_keys() {
        let (old, new) = (key(), key());
        let t = trust(&[&old, &new]);
        for k in [&old, &new] {
            let b = check(&envelope(&payload(None), &[k]), &t, NOW).unwrap();
            assert_eq!(b.signed_by(), k.keyid());
        }
    }

    #[test]
    fn hostile_envelopes_cost_little_and_quote_little() {
        let k = key();
        let t = trust(&[&k]);

        // A trusted key id repeated with bad signatures is tried once.
        let mut env = envelope(&payload(None), &[&k]);
        let mut bad = env.signatures[0].clone();
        bad.sig[0] ^= 1;
        env.signatures = vec![bad; MAX_SIGNATURES];
        let err = check(&env, &t, NOW).unwrap_err();
        assert_eq!(
            err,
            VerifyError::BadSignature {
                keyids: vec![k.keyid()]
            }
        );

        // More signatures than allowed is malformed.
        env.signatures.push(env.signatures[0].clone());
        let err = check(&env, &t, NOW).unwrap_err();
        assert!(
            err.to_string().contains("more than the 16 allowed"),
            "{err}"
        );

        // Huge untrusted input is cut in messages.
        let mut env = envelope(&payload(None), &[&k]);
        env.signatures[0].keyid = "k".repeat(100_000);
        let err = check(&env, &t, NOW).unwrap_err();
        assert_eq!(err.code(), "untrusted_key");
        assert!(err.to_string().len() < 400, "{err}");
        env.payload_type = "t".repeat(100_000);
        assert!(check(&env, &t, NOW).unwrap_err().to_string().len() < 400);
        let json = format!(
            r#"{{"payloadType":"x","payload":"","signatures":"{}"}}"#,
            "s".repeat(100_000)
        );
        let err = verify(json.as_bytes(), &t, NOW, &expect()).unwrap_err();
        assert_eq!(err.code(), "malformed");
        assert!(err.to_string().len() < 400, "{err}");
        assert!(
            err.to_string().ends_with("at line 1 column 100047"),
            "{err}"
        );
    }

    #[test]
    fn refuses_oversized_envelopes_before_parsing() {
        let expect = Expect {
            max_envelope_bytes: 4,
            ..Expect::default()
        };
        let err = verify(b"{ } ", &TrustStore::new(), NOW, &expect);
        assert_eq!(err.unwrap_err().code(), "malformed");
        let err = verify(b"{    }", &TrustStore::new(), NOW, &expect).unwrap_err();
        assert_eq!(err, VerifyError::TooLarge { size: 6, limit: 4 });
    }

    #[test]
    fn inspect_shows_what_verify_refuses() {
        let p = payload(Some("orders"));
        let env = envelope(&p, &[&key()]);
        let bytes = env.to_json_bytes();
        assert_eq!(
            verify(&bytes, &TrustStore::new(), NOW, &expect())
                .unwrap_err()
                .code(),
            "untrusted_key"
        );
        let seen = inspect(&bytes).unwrap();
        assert_eq!(seen.manifest, p.manifest);
        assert_eq!(seen.keyids, vec![env.signatures[0].keyid.clone()]);
        assert_eq!(seen.digest, payload::sha256_digest(&p.to_canonical_bytes()));
        assert_eq!(inspect(b"nope").unwrap_err().code(), "malformed");
    }

    #[test]
    fn messages_are_lowercase_and_codes_distinct() {
        let s = || "x".to_owned();
        let all = [
            VerifyError::TooLarge { size: 2, limit: 1 },
            malformed("x"),
            VerifyError::UnknownPayloadType { found: s() },
            VerifyError::UntrustedKey { keyids: vec![s()] },
            VerifyError::BadSignature { keyids: vec![s()] },
            VerifyError::UnsupportedFormat { found: s() },
            VerifyError::DigestMismatch { component: s() },
            VerifyError::MissingComponent { component: s() },
            VerifyError::UnlistedComponent { component: s() },
            VerifyError::WrongMesh {
                expected: s(),
                found: s(),
            },
            VerifyError::WrongProduct {
                expected: s(),
                found: s(),
            },
            VerifyError::Expired { expires_at: s() },
            VerifyError::NotYetValid { created_at: s() },
        ];
        let codes: std::collections::BTreeSet<_> = all.iter().map(VerifyError::code).collect();
        assert_eq!(codes.len(), all.len());
        for e in &all {
            let msg = e.to_string();
            assert!(msg.starts_with(|c: char| c.is_ascii_lowercase()), "{msg}");
            assert!(!msg.contains("::"), "{msg}");
        }
    }
}
