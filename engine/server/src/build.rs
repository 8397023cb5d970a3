//! From a policy repository to signed bundles: watch for changes, check,
//! test, slice per product and sign.
//!
//! [`build`] is the one build path: `meshgov serve` builds every change
//! with it, and `meshgov build` builds one bundle with it, so a bundle
//! signed by hand is checked, tested and sliced as the engine would.

use bytes::Bytes;
use meshgov_bundle::{BundleMeta, BundlePayload, SigningKey};
use meshgov_core::descriptor::ProductInfo;
use meshgov_core::testing::CaseResult;
use meshgov_core::{Diagnostic, Severity, SourceSet};
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
    /// Components of each product's slice ([`Options::slices`]), by product id.
    pub slices: BTreeMap<String, BTreeMap<String, String>>,
    /// The mesh's `[bundle] ttl_seconds`.
    pub ttl_seconds: u64,
    pub source_commit: Option<String>,
    /// Policy tests run, all passed (0 when [`Options::tests`] is off).
    pub tests_passed: usize,
}

/// Which product slices a build compiles (the whole mesh is always compiled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Slices<'a> {
    /// One per product the repository describes: what the engine rolls out.
    #[default]
    All,
    /// Only this product's (`meshgov build --product`).
    One(&'a str),
    /// None (`meshgov build` of the whole mesh).
    None,
}

/// What a build runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options<'a> {
    /// Run the repository's policy tests; one that fails fails the build.
    /// Off only for `meshgov build --skip-tests`.
    pub tests: bool,
    pub slices: Slices<'a>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            tests: true,
            slices: Slices::All,
        }
    }
}

/// What a build reports as it goes, for a caller that shows it (`meshgov
/// build` prints it; the engine keeps only the outcome, so `()` will do).
pub trait Progress {
    /// The checker's diagnostics, errors and warnings, once it has run.
    fn checked(&mut self, _diagnostics: &[Diagnostic]) {}
    /// Every policy test's result, once they have run (not called when
    /// [`Options::tests`] is off).
    fn tested(&mut self, _results: &[CaseResult]) {}
}

impl Progress for () {}

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
    #[error("unknown product `{product}`; the repository describes: {}", known.join(", "))]
    UnknownProduct { product: String, known: Vec<String> },
    #[error("cannot slice for product `{product}`: {reason}")]
    Slice { product: String, reason: String },
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// Checks and tests the repository, then compiles the whole mesh and the
/// product slices `opts` asks for. Pure apart from reading the files (and
/// `git` for the source commit).
pub fn compile(
    dir: &Path,
    opts: &Options<'_>,
    progress: &mut dyn Progress,
) -> Result<Compiled, BuildError> {
    let src = SourceSet::read_dir(dir).map_err(|e| BuildError::Read(e.to_string()))?;
    // The same plugin host as the sidecar: modules are loaded at check and
    // plugin cases run in the same sandbox.
    let checked = meshgov_core::check_with(&src, Some(&meshgov_wasm::Inspector));
    progress.checked(&checked.diagnostics);
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
    let mut tests_passed = 0;
    if opts.tests {
        let plugins = meshgov_wasm::Plugins::compile(&policies).map_err(|e| BuildError::Check {
            count: 1,
            first: e.to_string(),
        })?;
        let results =
            meshgov_core::testing::run(&policies, &plugins, &checked.products, &checked.tests);
        progress.tested(&results);
        let failed: Vec<_> = results.iter().filter(|r| !r.passed()).collect();
        if let Some(f) = failed.first() {
            return Err(BuildError::Test {
                failed: failed.len(),
                total: results.len(),
                first: format!("{}: {}: {}", f.file, f.name, f.failures.join("; ")),
            });
        }
        tests_passed = results.len();
    }
    let products: Vec<_> = match opts.slices {
        Slices::All => checked.products.iter().collect(),
        Slices::None => Vec::new(),
        Slices::One(id) => {
            let one: Vec<_> = checked
                .products
                .iter()
                .filter(|(_, d)| d.product_id() == id)
                .take(1)
                .collect();
            if one.is_empty() {
                return Err(BuildError::UnknownProduct {
                    product: id.to_string(),
                    known: checked
                        .products
                        .iter()
                        .map(|(_, d)| d.product_id())
                        .collect(),
                });
            }
            one
        }
    };
    let mut slices = BTreeMap::new();
    for (path, d) in products {
        let id = d.product_id();
        let slice_error = |reason: String| BuildError::Slice {
            product: id.clone(),
            reason,
        };
        let info = ProductInfo::resolve(d, &policies.mesh)
            .map_err(|e| slice_error(e.diagnostic(path).to_string()))?;
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
        tests_passed,
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
    let digest = meshgov_bundle::sha256_digest(&bytes);
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

/// When, and as which revision, a compiled state is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub revision: u64,
    pub created_at_unix: i64,
    /// The bundles' lifetime from `created_at_unix`.
    pub ttl_seconds: u64,
}

/// A compiled repository state and its signed release. Signing can fail
/// where compiling did not (a time out of range); the compiled state is
/// then still good to sign again.
#[derive(Debug, Clone)]
pub struct Built {
    pub compiled: Compiled,
    pub release: Result<Release, BuildError>,
}

/// The one build path, `meshgov serve`'s and `meshgov build`'s: checks the
/// repository at `dir`, runs its policy tests, compiles the whole mesh and
/// the slices `opts` asks for ([`compile`]), then signs them with `key`
/// ([`sign_release`]) as `stamp` decides once the state has compiled (the
/// lifetime may come from the mesh's `[bundle] ttl_seconds`).
pub fn build(
    dir: &Path,
    key: &SigningKey,
    opts: &Options<'_>,
    progress: &mut dyn Progress,
    stamp: impl FnOnce(&Compiled) -> Stamp,
) -> Result<Built, BuildError> {
    let compiled = compile(dir, opts, progress)?;
    let s = stamp(&compiled);
    let release = sign_release(&compiled, key, s.revision, s.created_at_unix, s.ttl_seconds);
    Ok(Built { compiled, release })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn example() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
    }

    #[derive(Default)]
    struct Seen {
        checked: bool,
        tests: Option<usize>,
    }

    impl Progress for Seen {
        fn checked(&mut self, _: &[Diagnostic]) {
            self.checked = true;
        }
        fn tested(&mut self, results: &[CaseResult]) {
            self.tests = Some(results.len());
        }
    }

    #[test]
    fn options_choose_the_tests_and_the_slices() {
        let mut seen = Seen::default();
        let all = compile(&example(), &Options::default(), &mut seen).unwrap();
        assert!(seen.checked);
        assert_eq!(seen.tests, Some(all.tests_passed));
        assert!(all.tests_passed > 0);
        assert_eq!(all.slices.len(), 3);

        let mut seen = Seen::default();
        let opts = Options {
            tests: false,
            slices: Slices::One("users/user-profiles"),
        };
        let one = compile(&example(), &opts, &mut seen).unwrap();
        assert_eq!((seen.tests, one.tests_passed), (None, 0));
        assert_eq!(
            one.slices.keys().collect::<Vec<_>>(),
            ["users/user-profiles"]
        );
        assert_eq!(one.slices, {
            let mut s = all.slices.clone();
            s.retain(|k, _| k == "users/user-profiles");
            s
        });
        assert_eq!(one.whole, all.whole);

        let opts = Options {
            tests: false,
            slices: Slices::None,
        };
        assert!(
            compile(&example(), &opts, &mut ())
                .unwrap()
                .slices
                .is_empty()
        );

        let opts = Options {
            tests: false,
            slices: Slices::One("users/nobody"),
        };
        match compile(&example(), &opts, &mut ()) {
            Err(BuildError::UnknownProduct { product, known }) => {
                assert_eq!(product, "users/nobody");
                assert!(
                    known.iter().any(|k| k == "users/user-profiles"),
                    "{known:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn build_signs_as_stamped_and_names_the_payload_digest() {
        let pem = SigningKey::generate_pkcs8_pem(&ring::rand::SystemRandom::new()).unwrap();
        let key = SigningKey::from_pkcs8_pem(&pem).unwrap();
        let now = 1_767_225_600;
        let built = build(
            &example(),
            &key,
            &Options {
                tests: false,
                slices: Slices::One("users/user-profiles"),
            },
            &mut (),
            |c| Stamp {
                revision: 9,
                created_at_unix: now,
                ttl_seconds: c.ttl_seconds,
            },
        )
        .unwrap();
        let r = built.release.unwrap();
        assert_eq!((r.revision, r.created_at_unix), (9, now));
        assert_eq!(r.expires_at_unix - now, 24 * 3600);
        let trust = meshgov_bundle::TrustStore::from_keys([key.public_key()]).unwrap();
        for (signed, product) in [
            (&r.whole, None),
            (
                r.for_product("users/user-profiles"),
                Some("users/user-profiles"),
            ),
        ] {
            let v = meshgov_bundle::verify(&signed.bytes, &trust, now + 60, &Default::default())
                .unwrap();
            assert_eq!(signed.digest, v.digest());
            assert_eq!(v.manifest().product.as_deref(), product);
            assert_eq!(v.manifest().revision, 9);
        }
    }
}
