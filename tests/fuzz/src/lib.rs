//! Fixtures shared by the fuzz targets: the committed TEST-ONLY Ed25519 key
//! (the bundle golden files' key, which also signs the fuzz targets' tokens
//! and audit checkpoints) and the example mesh, compiled once per process.

use meshgov_bundle::{PublicKey, SigningKey, TrustStore};
use meshgov_core::descriptor::{Descriptor, ProductInfo};
use meshgov_core::{Policies, SourceSet};
use std::path::PathBuf;
use std::sync::LazyLock;

/// 2026-01-01T00:00:00Z: the golden bundle's `created_at`.
pub const CREATED: i64 = 1_767_225_600;
/// A moment inside the golden bundle's validity (it expires a week later).
pub const NOW: i64 = CREATED + 3600;

/// The TEST-ONLY private key, PKCS#8 PEM.
pub const TEST_KEY_PEM: &str =
    include_str!("../../../engine/bundle/tests/golden/TEST-ONLY-signing-key.pem");

/// Issuer and audience the `jwt_auth` target's sidecar trusts.
pub const ISSUER: &str = "https://idp.fuzz.example";
pub const AUDIENCE: &str = "meshgov";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

static KEY: LazyLock<SigningKey> = LazyLock::new(|| {
    SigningKey::from_pkcs8_pem(TEST_KEY_PEM).unwrap_or_else(|e| panic!("TEST-ONLY key: {e}"))
});

pub fn test_key() -> &'static SigningKey {
    &KEY
}

pub fn test_public_key() -> PublicKey {
    KEY.public_key()
}

pub fn trust() -> TrustStore {
    TrustStore::from_keys([test_public_key()]).unwrap_or_else(|e| panic!("trust store: {e}"))
}

/// The example mesh (`policies/`), its sources and one product's descriptor.
pub struct Example {
    pub sources: SourceSet,
    pub policies: Policies,
    /// `products/user-profiles.yaml`.
    pub descriptor_text: String,
    pub descriptor: Descriptor,
    pub product: ProductInfo,
}

static EXAMPLE: LazyLock<Example> = LazyLock::new(|| {
    let dir = repo().join("policies");
    let sources = SourceSet::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let checked = meshgov_core::check(&sources);
    let Some(policies) = checked.policies else {
        panic!(
            "the example mesh must check clean: {:?}",
            checked.diagnostics
        )
    };
    let path = "products/user-profiles.yaml";
    let descriptor_text =
        std::fs::read_to_string(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let descriptor = Descriptor::parse(path, &descriptor_text)
        .unwrap_or_else(|d| panic!("{path}: {}", d.message));
    let product = ProductInfo::resolve(&descriptor, &policies.mesh)
        .unwrap_or_else(|e| panic!("{path}: {}", e.message));
    Example {
        sources,
        policies,
        descriptor_text,
        descriptor,
        product,
    }
});

pub fn example() -> &'static Example {
    &EXAMPLE
}

/// The first byte chooses a mode, the rest is the input proper.
pub fn split_mode(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(m, rest)| (*m, rest))
}
