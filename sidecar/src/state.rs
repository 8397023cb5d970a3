//! The active bundle: compiled policies and the product view, behind an
//! `ArcSwap`. Each request loads it once, so a swap (from the control port,
//! later) never blocks or changes a request in flight.

use arc_swap::ArcSwapOption;
use meshgov_core::ProductView;
use meshgov_core::descriptor::{Descriptor, ProductInfo};
use meshgov_core::policies::Policies;
use std::sync::Arc;

/// What the manifest of the enforced bundle says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleMeta {
    pub revision: u64,
    /// `sha256:<hex>` of the signed payload.
    pub digest: String,
    pub created_at_unix: i64,
    pub expires_at_unix: i64,
}

/// One loaded bundle, ready to serve.
#[derive(Debug)]
pub struct ActiveBundle {
    pub policies: Policies,
    pub view: ProductView,
    pub meta: BundleMeta,
    pub loaded_at_unix: i64,
}

/// Why a bundle cannot be enforced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("the bundle was sliced for product `{bundle}`, but this sidecar serves `{descriptor}`")]
    WrongProduct { bundle: String, descriptor: String },
    #[error("the descriptor does not resolve against the bundle's mesh: {0}")]
    Descriptor(String),
    #[error("bundle rejected: {0}")]
    Rejected(String),
}

impl ActiveBundle {
    /// Compiles the product view for `descriptor` against `policies`.
    pub fn new(
        policies: Policies,
        descriptor: &Descriptor,
        meta: BundleMeta,
        now_unix: i64,
    ) -> Result<ActiveBundle, BundleError> {
        let id = descriptor.product_id();
        if let Some(p) = &policies.product
            && p != &id
        {
            return Err(BundleError::WrongProduct {
                bundle: p.clone(),
                descriptor: id,
            });
        }
        let info = ProductInfo::resolve(descriptor, &policies.mesh).map_err(BundleError::Descriptor)?;
        Ok(ActiveBundle {
            policies,
            view: ProductView::new(info),
            meta,
            loaded_at_unix: now_unix,
        })
    }

    pub fn expired_at(&self, now_unix: i64) -> bool {
        now_unix >= self.meta.expires_at_unix
    }
}

/// Why there is nothing to enforce right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    NoBundle,
    Expired { revision: u64, expires_at_unix: i64 },
}

impl Unavailable {
    pub fn reason(&self) -> String {
        match self {
            Unavailable::NoBundle => "no valid policy bundle is loaded; the sidecar serves nothing until one is".into(),
            Unavailable::Expired {
                revision,
                expires_at_unix,
            } => format!(
                "policy bundle revision {revision} expired at {}; the sidecar serves nothing until a fresh one arrives",
                crate::clock::rfc3339(*expires_at_unix)
            ),
        }
    }
}

/// The slot every request reads.
#[derive(Default)]
pub struct BundleSlot {
    current: ArcSwapOption<ActiveBundle>,
}

impl BundleSlot {
    /// The bundle to enforce at `now_unix`, or why there is none. Callers
    /// hold the returned `Arc` for the whole request.
    pub fn valid_at(&self, now_unix: i64) -> Result<Arc<ActiveBundle>, Unavailable> {
        let b = self.current.load_full().ok_or(Unavailable::NoBundle)?;
        if b.expired_at(now_unix) {
            return Err(Unavailable::Expired {
                revision: b.meta.revision,
                expires_at_unix: b.meta.expires_at_unix,
            });
        }
        Ok(b)
    }

    /// The loaded bundle, valid or not (for status and discovery).
    pub fn current(&self) -> Option<Arc<ActiveBundle>> {
        self.current.load_full()
    }

    /// Swaps in a new bundle. Requests in flight keep the one they loaded.
    pub fn install(&self, b: ActiveBundle) {
        self.current.store(Some(Arc::new(b)));
    }
}

/// Verifies a signed bundle envelope and returns its policies and manifest.
///
/// STUB: the DSSE verifier (`meshgov-bundle`) is not on main yet. Until it
/// lands this refuses every envelope, so a sidecar configured with a
/// `bundle_file` starts not ready (fail closed) rather than enforcing an
/// unverified bundle.
pub fn verify_bundle(
    _envelope: &[u8],
    _trusted_keys: &[String],
    _mesh_and_product: (&str, &str),
    _now_unix: i64,
) -> Result<(Policies, BundleMeta), BundleError> {
    Err(BundleError::Rejected(
        "bundle verification is not built into this sidecar yet".into(),
    ))
}
