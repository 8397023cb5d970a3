//! What is signed: the manifest and the components, in one canonical JSON
//! document.

use std::collections::BTreeMap;

use ring::digest;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::macros::format_description;

use crate::canonical;

/// The payload format this crate writes and the only one it accepts.
///
/// Bump it (and teach the verifier the new one) for any change to the signed
/// document's shape, so an old sidecar refuses a bundle it cannot read rather
/// than misreading it.
pub const FORMAT_VERSION: u32 = 1;

/// The prefix of every digest, naming the hash so it can change later.
pub const DIGEST_PREFIX: &str = "sha256:";

/// The bundle's metadata, the part a sidecar reports and checks before it
/// enforces anything.
///
/// Plain data: the fields are public so callers can read them, and so tests
/// can build deliberately wrong manifests. [`crate::verify`] is what decides
/// whether a manifest can be believed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a bundle manifest object")]
pub struct Manifest {
    /// The payload format version, [`FORMAT_VERSION`].
    pub format: u32,
    /// The mesh this bundle governs; a sidecar refuses another mesh's bundle.
    pub mesh: String,
    /// Monotonic revision; the sidecar refuses rollbacks.
    pub revision: u64,
    /// When the engine built the bundle: RFC 3339 UTC to the second, e.g.
    /// `2026-01-02T03:04:05Z`.
    pub created_at: String,
    /// When the bundle stops being enforceable (same form). A sidecar whose
    /// bundle expires serves nothing until it gets a fresh one.
    pub expires_at: String,
    /// The policy repository commit the bundle was built from, for audit.
    pub source_commit: Option<String>,
    /// The product this bundle was sliced for, or `None` for the whole mesh.
    pub product: Option<String>,
    /// `sha256:<hex>` of every component's UTF-8 bytes, by component name.
    pub components: BTreeMap<String, String>,
}

/// The metadata a caller chooses when building a bundle. Times are passed in
/// as unix seconds because this crate never reads a clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleMeta {
    /// See [`Manifest::mesh`].
    pub mesh: String,
    /// See [`Manifest::revision`].
    pub revision: u64,
    /// Build time, unix seconds.
    pub created_at_unix: i64,
    /// Expiry time, unix seconds; must be after `created_at_unix`.
    pub expires_at_unix: i64,
    /// See [`Manifest::source_commit`].
    pub source_commit: Option<String>,
    /// See [`Manifest::product`].
    pub product: Option<String>,
}

/// Why a payload could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// A time cannot be written as a four-digit-year RFC 3339 timestamp.
    #[error("time `{unix}` (unix seconds) is outside the years 1970 to 9999")]
    TimeOutOfRange {
        /// The offending time.
        unix: i64,
    },
    /// The bundle would expire before (or as) it is created.
    #[error(
        "expiry `{expires_at}` is not after creation `{created_at}`; give the bundle a positive lifetime"
    )]
    ExpiresBeforeCreated {
        /// Creation time.
        created_at: String,
        /// Expiry time.
        expires_at: String,
    },
}

/// The signed document: the manifest and the components it lists.
///
/// Component values are text (compiled Cedar, rule JSON, …). Binary
/// components such as WebAssembly modules are the caller's to encode, e.g. as
/// base64, so that the whole payload stays one canonical JSON document.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a bundle payload object")]
pub struct BundlePayload {
    /// The manifest.
    pub manifest: Manifest,
    /// Component text by name.
    pub components: BTreeMap<String, String>,
}

impl BundlePayload {
    /// Builds a payload, computing every component's digest so the manifest
    /// cannot disagree with the components.
    pub fn new(meta: BundleMeta, components: BTreeMap<String, String>) -> Result<Self, BuildError> {
        let created_at = format_timestamp(meta.created_at_unix)?;
        let expires_at = format_timestamp(meta.expires_at_unix)?;
        if meta.expires_at_unix <= meta.created_at_unix {
            return Err(BuildError::ExpiresBeforeCreated {
                created_at,
                expires_at,
            });
        }
        let digests = components
            .iter()
            .map(|(name, text)| (name.clone(), sha256_digest(text.as_bytes())))
            .collect();
        Ok(Self {
            manifest: Manifest {
                format: FORMAT_VERSION,
                mesh: meta.mesh,
                revision: meta.revision,
                created_at,
                expires_at,
                source_commit: meta.source_commit,
                product: meta.product,
                components: digests,
            },
            components,
        })
    }

    /// The exact bytes to sign: compact JSON with a fixed key order (see the
    /// rules in this crate's docs). The same payload always gives the same
    /// bytes, so bundle digests are stable and comparable across builds.
    pub fn to_canonical_bytes(&self) -> Vec<u8> {
        let size: usize = self.components.values().map(|v| v.len() + 16).sum();
        let mut out = Vec::with_capacity(size + 1024);
        let m = &self.manifest;
        out.push(b'{');
        canonical::key(&mut out, "manifest", true);
        out.push(b'{');
        canonical::key(&mut out, "format", true);
        canonical::uint(&mut out, u64::from(m.format));
        canonical::key(&mut out, "mesh", false);
        canonical::string(&mut out, &m.mesh);
        canonical::key(&mut out, "revision", false);
        canonical::uint(&mut out, m.revision);
        canonical::key(&mut out, "created_at", false);
        canonical::string(&mut out, &m.created_at);
        canonical::key(&mut out, "expires_at", false);
        canonical::string(&mut out, &m.expires_at);
        canonical::key(&mut out, "source_commit", false);
        canonical::opt_string(&mut out, m.source_commit.as_deref());
        canonical::key(&mut out, "product", false);
        canonical::opt_string(&mut out, m.product.as_deref());
        canonical::key(&mut out, "components", false);
        canonical::string_map(&mut out, &m.components);
        out.push(b'}');
        canonical::key(&mut out, "components", false);
        canonical::string_map(&mut out, &self.components);
        out.push(b'}');
        out
    }
}

/// `sha256:<lowercase hex>` of `bytes`: the digest of a component, and of
/// a signed payload (a bundle's identity, which a sidecar's ACK names).
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = digest::digest(&digest::SHA256, bytes);
    format!("{DIGEST_PREFIX}{}", hex::encode(hash.as_ref()))
}

const TIMESTAMP: &[time::format_description::BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

/// A manifest timestamp: RFC 3339 UTC to the second
/// (`2026-01-02T03:04:05Z`), the one spelling [`parse_timestamp`] reads
/// back. Refuses times outside the years 1970 to 9999.
pub fn format_timestamp(unix: i64) -> Result<String, BuildError> {
    let out_of_range = || BuildError::TimeOutOfRange { unix };
    let t = OffsetDateTime::from_unix_timestamp(unix).map_err(|_| out_of_range())?;
    if !(1970..=9999).contains(&t.year()) {
        return Err(out_of_range());
    }
    t.format(TIMESTAMP).map_err(|_| out_of_range())
}

/// Reads a manifest timestamp back to unix seconds. Only the exact form this
/// crate writes is accepted, so one instant has one spelling in signed bytes.
/// The years are those a builder can write (1970 to 9999).
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let t = time::PrimitiveDateTime::parse(text, TIMESTAMP)
        .ok()?
        .assume_utc();
    if !(1970..=9999).contains(&t.year()) {
        return None;
    }
    let canonical = t.format(TIMESTAMP).ok()?;
    (canonical == text).then_some(t.unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> BundleMeta {
        BundleMeta {
            mesh: "acme".into(),
            revision: 7,
            created_at_unix: 1_767_225_600, // 2026-01-01T00:00:00Z
            expires_at_unix: 1_767_225_600 + 86_400,
            source_commit: Some("abc123".into()),
            product: None,
        }
    }

    #[test]
    fn new_computes_digests_and_formats_times() {
        let comps = BTreeMap::from([("policies.cedar".to_owned(), "permit".to_owned())]);
        let p = BundlePayload::new(meta(), comps).unwrap();
        assert_eq!(p.manifest.created_at, "2026-01-01T00:00:00Z");
        assert_eq!(p.manifest.expires_at, "2026-01-02T00:00:00Z");
        assert_eq!(
            p.manifest.components.get("policies.cedar").unwrap(),
            // `printf permit | sha256sum`
            "sha256:85441a43c7cb9f242a5c20c6648026689c795ad4e8321e215bf68d48fc9a4b1c"
        );
    }

    #[test]
    fn canonical_bytes_are_stable_and_parse_back() {
        let comps = BTreeMap::from([
            ("b".to_owned(), "line\n\"two\"".to_owned()),
            ("a".to_owned(), "é".to_owned()),
        ]);
        let p = BundlePayload::new(meta(), comps).unwrap();
        let bytes = p.to_canonical_bytes();
        assert_eq!(bytes, p.clone().to_canonical_bytes());
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"manifest":{"format":1,"mesh":"acme","revision":7,"#),
            "{text}"
        );
        assert!(
            text.ends_with(r#""components":{"a":"é","b":"line\n\"two\""}}"#),
            "{text}"
        );
        let back: BundlePayload = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn refuses_bad_times() {
        let mut m = meta();
        m.expires_at_unix = m.created_at_unix;
        let err = BundlePayload::new(m, BTreeMap::new()).unwrap_err();
        assert!(
            matches!(err, BuildError::ExpiresBeforeCreated { .. }),
            "{err}"
        );
        let mut m = meta();
        m.created_at_unix = -1;
        let err = BundlePayload::new(m, BTreeMap::new()).unwrap_err();
        assert_eq!(err, BuildError::TimeOutOfRange { unix: -1 });
        let mut m = meta();
        m.expires_at_unix = i64::MAX;
        assert!(BundlePayload::new(m, BTreeMap::new()).is_err());
    }

    #[test]
    fn timestamps_have_one_spelling() {
        assert_eq!(parse_timestamp("2026-01-01T00:00:00Z"), Some(1_767_225_600));
        for other in [
            "2026-01-01T00:00:00+00:00",
            "2026-01-01T00:00:00.0Z",
            "2026-01-01t00:00:00z",
            "2026-1-01T00:00:00Z",
            "+2026-01-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "",
        ] {
            assert_eq!(parse_timestamp(other), None, "{other}");
        }
    }
}
