//! The active bundle: compiled policies and the product view, behind an
//! `ArcSwap`. Each request loads it once, so a swap from the control port
//! never blocks or changes a request in flight.

use arc_swap::ArcSwapOption;
use meshgov_core::descriptor::{Descriptor, ProductInfo};
use meshgov_core::policies::{ComponentError, Policies};
use meshgov_core::records::KeyRing;
use meshgov_core::{Enforcer, ProductView, Unenforceable};
use meshgov_wire::NackCode;
use std::sync::Arc;

/// What the manifest of the enforced bundle says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleMeta {
    pub revision: u64,
    /// `sha256:<hex>` of the signed payload.
    pub digest: String,
    pub created_at_unix: i64,
    pub expires_at_unix: i64,
    /// SHA-256 of the signed envelope as received: the same bytes offered
    /// again (a release arrives by push and by long poll) need no second
    /// verification.
    pub envelope_sha256: [u8; 32],
}

/// One loaded bundle, ready to serve.
#[derive(Debug)]
pub struct ActiveBundle {
    /// The bundle compiled for this product, with this sidecar's pseudonym
    /// keys and the bundle's plugins (compiled when it loaded, never per
    /// request). Every read asks it; its cache of compiled reads goes with
    /// the bundle, so a swap never serves a stale one.
    pub enforcer: Enforcer,
    pub meta: BundleMeta,
    pub loaded_at_unix: i64,
}

/// Why a bundle cannot be enforced. Each has a stable [`code`](Self::code),
/// the NACK reason the control port answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error(
        "the bundle was sliced for product `{bundle}`, but this sidecar serves `{descriptor}` (wrong_product)"
    )]
    WrongProduct { bundle: String, descriptor: String },
    #[error("the descriptor does not resolve against the bundle's mesh: {0} (descriptor)")]
    Descriptor(String),
    /// Refused by verification (`meshgov-bundle`'s codes) or while compiling.
    #[error("bundle rejected: {reason} ({code})")]
    Rejected { code: NackCode, reason: String },
    #[error(
        "revision {offered} is older than revision {active} in force; rollbacks are refused (rollback)"
    )]
    Rollback { offered: u64, active: u64 },
    #[error(
        "revision {revision} is already in force with another digest (`{active_digest}`); a revision is never reused (revision_conflict)"
    )]
    RevisionConflict {
        revision: u64,
        active_digest: String,
    },
    #[error(
        "cannot persist the bundle to the state directory: {0}; the previous bundle stays in force (persist_failed)"
    )]
    Persist(String),
    #[error("bundle rejected: {0} (plugin_invalid)")]
    Plugin(#[from] meshgov_wasm::LoadError),
    /// Valid and signed, but this sidecar cannot enforce all of it.
    #[error("bundle rejected: {0} ({code})", code = unenforceable_code(.0).as_str())]
    Unenforceable(#[from] Unenforceable),
}

fn unenforceable_code(e: &Unenforceable) -> NackCode {
    match e {
        Unenforceable::MissingKey { .. } => NackCode::MissingKey,
        Unenforceable::MissingPlugin { .. } => NackCode::PluginInvalid,
        Unenforceable::Invalid { .. } => NackCode::UnsupportedPolicy,
    }
}

impl BundleError {
    /// A stable machine-readable code, for NACKs, logs and status.
    pub fn code(&self) -> NackCode {
        match self {
            BundleError::WrongProduct { .. } => NackCode::WrongProduct,
            BundleError::Descriptor(_) => NackCode::Descriptor,
            BundleError::Rejected { code, .. } => code.clone(),
            BundleError::Rollback { .. } => NackCode::Rollback,
            BundleError::RevisionConflict { .. } => NackCode::RevisionConflict,
            BundleError::Persist(_) => NackCode::PersistFailed,
            BundleError::Plugin(_) => NackCode::PluginInvalid,
            BundleError::Unenforceable(e) => unenforceable_code(e),
        }
    }

    pub(crate) fn rejected(code: NackCode, reason: impl Into<String>) -> BundleError {
        BundleError::Rejected {
            code,
            reason: reason.into(),
        }
    }
}

impl ActiveBundle {
    /// Compiles the product view for `descriptor` against `policies`, and
    /// every plugin the bundle carries, and proves that every rule that can
    /// reach the product compiles with `keys`.
    pub fn new(
        policies: Policies,
        descriptor: &Descriptor,
        keys: &KeyRing,
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
        let info = ProductInfo::resolve(descriptor, &policies.mesh)
            .map_err(|e| BundleError::Descriptor(e.to_string()))?;
        let view = ProductView::new(info, &policies).map_err(BundleError::Descriptor)?;
        let plugins = meshgov_wasm::Plugins::compile(&policies)?;
        let enforcer = Enforcer::new(policies, view, keys.clone(), Arc::new(plugins))?;
        Ok(ActiveBundle {
            enforcer,
            meta,
            loaded_at_unix: now_unix,
        })
    }

    pub fn policies(&self) -> &Policies {
        self.enforcer.policies()
    }

    pub fn view(&self) -> &ProductView {
        self.enforcer.view()
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
            Unavailable::NoBundle => {
                "no valid policy bundle is loaded; the sidecar serves nothing until one is".into()
            }
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

    /// Swaps in a new bundle and returns the one it replaces. Requests in
    /// flight keep the one they loaded.
    pub fn install(&self, b: ActiveBundle) -> Option<Arc<ActiveBundle>> {
        self.current.swap(Some(Arc::new(b)))
    }
}

/// Verifies a signed bundle envelope (DSSE, Ed25519; see `meshgov-bundle`)
/// for this sidecar's mesh and product at `now_unix`, and compiles its
/// components, reusing the Cedar policies of `previous` that did not change.
/// `envelope_sha256` is the envelope's SHA-256, which the caller has already
/// taken. Any failure is a refusal; nothing unverified is returned.
pub fn verify_bundle(
    envelope: &[u8],
    envelope_sha256: [u8; 32],
    trust: &meshgov_bundle::TrustStore,
    mesh: &str,
    product: &str,
    now_unix: i64,
    previous: Option<&Policies>,
) -> Result<(Policies, BundleMeta), BundleError> {
    let expect = meshgov_bundle::Expect {
        mesh: Some(mesh),
        product: Some(product),
        ..meshgov_bundle::Expect::default()
    };
    let verified = meshgov_bundle::verify(envelope, trust, now_unix, &expect)
        .map_err(|e| BundleError::rejected(NackCode::from_code(e.code()), e.to_string()))?;
    let digest = verified.digest().to_string();
    let (manifest, components) = verified.into_parts();
    let policies =
        Policies::from_components_reusing(&components, manifest.product.clone(), previous)
            .map_err(|e| {
                let code = match e {
                    ComponentError::Unsupported { .. } => NackCode::UnsupportedPolicy,
                    _ => NackCode::Components,
                };
                BundleError::rejected(code, e.to_string())
            })?;
    let unix = |s: &str| {
        meshgov_bundle::parse_timestamp(s).ok_or_else(|| {
            BundleError::rejected(
                NackCode::Malformed,
                format!("manifest time `{s}` is not RFC 3339"),
            )
        })
    };
    Ok((
        policies,
        BundleMeta {
            revision: manifest.revision,
            digest,
            created_at_unix: unix(&manifest.created_at)?,
            expires_at_unix: unix(&manifest.expires_at)?,
            envelope_sha256,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgov_bundle::VerifyError;

    /// Every verification refusal NACKs with a code the wire names, the
    /// same string `meshgov-bundle` gives it.
    #[test]
    fn verification_codes_are_known_nack_codes() {
        let s = String::new;
        let errors = [
            VerifyError::TooLarge { size: 2, limit: 1 },
            VerifyError::Malformed { reason: s() },
            VerifyError::UnknownPayloadType { found: s() },
            VerifyError::UntrustedKey { keyids: vec![] },
            VerifyError::BadSignature { keyids: vec![] },
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
        for e in errors {
            let code = NackCode::from_code(e.code());
            assert!(!matches!(code, NackCode::Other(_)), "{}", e.code());
            assert_eq!(code.as_str(), e.code());
        }
    }
}
