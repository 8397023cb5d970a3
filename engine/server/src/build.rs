//! From a policy repository to signed bundles: watch for changes, check,
//! test, slice per product and sign.

use bytes::Bytes;
use meshgov_bundle::{BundleMeta, BundlePayload, SigningKey};
use meshgov_core::descriptor::ProductInfo;
use meshgov_core::{Severity, SourceSet};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether `dir` is inside a git work tree.
pub fn is_git(dir: &Path) -> bool {
    git(dir, &["rev-parse", "--is-inside-work-tree"]).as_deref() == Some("true")
}

/// The commit the repository is at, marked `+dirty` when files under it
/// differ from that commit, so an audit never mistakes local edits for it.
pub fn source_commit(dir: &Path) -> Option<String> {
    let commit = git(dir, &["rev-parse", "HEAD"])?;
    let dirty = git(dir, &["status", "--porcelain", "--", "."]).is_some_and(|s| !s.is_empty());
    Some(if dirty {
        format!("{commit}+dirty")
    } else {
        commit
    })
}

/// What identifies the repository's current state: the `HEAD` commit in a
/// git repository (a new commit is a change; uncommitted edits are not),
/// else a SHA-256 over every file's path and content.
pub fn fingerprint(dir: &Path) -> std::io::Result<String> {
    if is_git(dir) {
        return git(dir, &["rev-parse", "HEAD"])
            .map(|c| format!("git:{c}"))
            .ok_or_else(|| std::io::Error::other("`git rev-parse HEAD` failed (no commit yet?)"));
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    let mut h = Sha256::new();
    for rel in files {
        let bytes = std::fs::read(dir.join(&rel))?;
        h.update(rel.as_bytes());
        h.update([0]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(format!("files:{}", hex::encode(h.finalize())))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        // Editor swap files and hidden directories are not policy.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = e.path();
        if e.file_type()?.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// The compiled, tested content of one repository state, before signing.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub mesh: String,
    /// Components of the whole-mesh bundle.
    pub whole: BTreeMap<String, String>,
    /// Components of each product's slice, by product id.
    pub slices: BTreeMap<String, BTreeMap<String, String>>,
    pub ttl_seconds: u64,
    pub source_commit: Option<String>,
    pub tests_passed: usize,
}

/// Why a repository state is not rolled out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read the policy repository: {0}")]
    Read(String),
    #[error("check failed with {count} errors: {first}")]
    Check { count: usize, first: String },
    #[error("{failed} of {total} policy tests failed: {first}")]
    Test {
        failed: usize,
        total: usize,
        first: String,
    },
    #[error("cannot slice for product `{product}`: {reason}")]
    Slice { product: String, reason: String },
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// Checks and tests the repository, then compiles the whole mesh and one
/// slice per described product. Pure apart from reading the files.
pub fn compile(dir: &Path) -> Result<Compiled, BuildError> {
    let src = SourceSet::read_dir(dir).map_err(|e| BuildError::Read(e.to_string()))?;
    // The same plugin host as the sidecar: modules are loaded at check and
    // plugin cases run in the same sandbox.
    let checked = meshgov_core::check_with(&src, Some(&meshgov_wasm::Inspector));
    let errors: Vec<String> = checked
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect();
    let Some(policies) = checked.policies.filter(|_| errors.is_empty()) else {
        return Err(BuildError::Check {
            count: errors.len().max(1),
            first: errors
                .first()
                .cloned()
                .unwrap_or_else(|| "the policies did not compile".into()),
        });
    };
    let plugins = meshgov_wasm::Plugins::compile(&policies).map_err(|e| BuildError::Check {
        count: 1,
        first: e.to_string(),
    })?;
    let results =
        meshgov_core::testing::run(&policies, &plugins, &checked.products, &checked.tests);
    let failed: Vec<_> = results.iter().filter(|r| !r.passed()).collect();
    if let Some(f) = failed.first() {
        return Err(BuildError::Test {
            failed: failed.len(),
            total: results.len(),
            first: format!("{}: {}: {}", f.file, f.name, f.failures.join("; ")),
        });
    }
    let mut slices = BTreeMap::new();
    for (_, d) in &checked.products {
        let id = d.product_id();
        let slice_error = |reason: String| BuildError::Slice {
            product: id.clone(),
            reason,
        };
        let info =
            ProductInfo::resolve(d, &policies.mesh).map_err(|e| slice_error(e.to_string()))?;
        let slice = policies
            .slice(&info)
            .map_err(|e| slice_error(e.to_string()))?;
        slices.insert(id, slice.components());
    }
    Ok(Compiled {
        mesh: policies.mesh.id.clone(),
        whole: policies.components(),
        slices,
        ttl_seconds: policies.mesh.bundle.ttl_seconds,
        source_commit: source_commit(dir),
        tests_passed: results.len(),
    })
}

/// One signed envelope, ready to push or serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub bytes: Bytes,
    /// `sha256:<hex>` of the payload: the sidecar's ACK names it.
    pub digest: String,
}

/// One revision: every product's slice and the whole mesh, signed.
#[derive(Debug, Clone)]
pub struct Release {
    pub revision: u64,
    pub created_at_unix: i64,
    pub expires_at_unix: i64,
    pub source_commit: Option<String>,
    pub whole: Signed,
    pub slices: BTreeMap<String, Signed>,
}

impl Release {
    /// The bundle for `product`: its slice, or the whole mesh for a product
    /// the repository does not describe.
    pub fn for_product(&self, product: &str) -> &Signed {
        self.slices.get(product).unwrap_or(&self.whole)
    }

    /// Whether `digest` is one of this release's bundles.
    pub fn holds(&self, digest: &str) -> bool {
        self.whole.digest == digest || self.slices.values().any(|s| s.digest == digest)
    }
}

fn sign_one(
    key: &SigningKey,
    meta: BundleMeta,
    components: &BTreeMap<String, String>,
) -> Result<Signed, BuildError> {
    let payload = BundlePayload::new(meta, components.clone())
        .map_err(|e| BuildError::Sign(e.to_string()))?;
    let bytes = payload.to_canonical_bytes();
    let digest = format!(
        "{}{}",
        meshgov_bundle::DIGEST_PREFIX,
        hex::encode(Sha256::digest(&bytes))
    );
    let env = meshgov_bundle::sign(&bytes, &[key]).map_err(|e| BuildError::Sign(e.to_string()))?;
    Ok(Signed {
        bytes: Bytes::from(env.to_json_bytes()),
        digest,
    })
}

/// Signs `c` as `revision`, valid from `now_unix` for `ttl_seconds`.
pub fn sign_release(
    c: &Compiled,
    key: &SigningKey,
    revision: u64,
    now_unix: i64,
    ttl_seconds: u64,
) -> Result<Release, BuildError> {
    let expires = now_unix.saturating_add(i64::try_from(ttl_seconds).unwrap_or(i64::MAX));
    let meta = |product: Option<String>| BundleMeta {
        mesh: c.mesh.clone(),
        revision,
        created_at_unix: now_unix,
        expires_at_unix: expires,
        source_commit: c.source_commit.clone(),
        product,
    };
    let whole = sign_one(key, meta(None), &c.whole)?;
    let mut slices = BTreeMap::new();
    for (id, comps) in &c.slices {
        slices.insert(id.clone(), sign_one(key, meta(Some(id.clone())), comps)?);
    }
    Ok(Release {
        revision,
        created_at_unix: now_unix,
        expires_at_unix: expires,
        source_commit: c.source_commit.clone(),
        whole,
        slices,
    })
}
