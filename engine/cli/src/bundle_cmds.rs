//! `keygen`, `build` and `bundle inspect`: signing keys and signed bundles.

use crate::Failure;
use crate::policy_cmds::{print_cases, print_summary};
use meshgov_bundle::{Expect, SigningKey, TrustStore};
use meshgov_core::testing::CaseResult;
use meshgov_core::{Diagnostic, Severity};
use meshgov_server::build::{BuildError, Options, Progress, Slices, Stamp};
use std::path::{Path, PathBuf};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn io(path: &Path, e: std::io::Error) -> Failure {
    Failure::io(path, &e)
}

/// The public key file that goes with a private key file.
pub fn public_path(private: &Path) -> PathBuf {
    let mut p = private.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

pub fn keygen(out: &Path, force: bool) -> Result<(), Failure> {
    let pub_path = public_path(out);
    if !force {
        for p in [out, pub_path.as_path()] {
            if p.exists() {
                return Err(Failure::usage(format!(
                    "`{}` already exists; pass --force to replace it",
                    p.display()
                )));
            }
        }
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    let rng = ring::rand::SystemRandom::new();
    let pem = SigningKey::generate_pkcs8_pem(&rng).map_err(|e| Failure::usage(e.to_string()))?;
    let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| Failure::usage(e.to_string()))?;
    if force && out.exists() {
        std::fs::remove_file(out).map_err(|e| io(out, e))?;
    }
    meshgov_bundle::write_private_key_file(out, &pem).map_err(|e| Failure::usage(e.to_string()))?;
    let public = key.public_key();
    std::fs::write(&pub_path, public.to_spki_pem()).map_err(|e| io(&pub_path, e))?;
    outln!("private key: {} (mode 0600, PKCS#8 PEM)", out.display());
    outln!("public key:  {} (SPKI PEM)", pub_path.display());
    outln!("key id:      {}", public.keyid());
    outln!("one line:    {public}   (for trusted_bundle_keys)");
    Ok(())
}

pub struct BuildArgs<'a> {
    pub dir: &'a Path,
    pub key: &'a Path,
    pub out: &'a Path,
    pub product: Option<&'a str>,
    pub revision: Option<u64>,
    pub created_at: Option<&'a str>,
    /// Build without running the policy tests.
    pub skip_tests: bool,
}

fn build_time(created_at: Option<&str>) -> Result<i64, Failure> {
    if let Some(t) = created_at {
        return OffsetDateTime::parse(t, &Rfc3339)
            .map(|t| t.unix_timestamp())
            .map_err(|_| {
                Failure::usage(format!("--created-at `{t}` is not an RFC 3339 timestamp"))
            });
    }
    if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
        return epoch.trim().parse().map_err(|_| {
            Failure::usage(format!(
                "SOURCE_DATE_EPOCH `{epoch}` is not a number of seconds"
            ))
        });
    }
    Ok(OffsetDateTime::now_utc().unix_timestamp())
}

/// Prints what the build reports as it goes: every diagnostic, as `meshgov
/// check` does, and the policy tests as `meshgov test` does when one fails
/// (else their count).
#[derive(Default)]
struct Printer {
    errors: usize,
}

impl Progress for Printer {
    fn checked(&mut self, diagnostics: &[Diagnostic]) {
        for d in diagnostics {
            outln!("{d}");
        }
        self.errors = diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
    }

    fn tested(&mut self, results: &[CaseResult]) {
        if results.iter().any(|r| !r.passed()) {
            print_cases(results);
        }
        print_summary(results);
    }
}

/// `meshgov build`: [`meshgov_server::build::build`], the engine's build
/// path, for one bundle (the whole mesh, or one product's slice).
pub fn build(a: BuildArgs<'_>) -> Result<(), Failure> {
    let key = meshgov_bundle::read_signing_key_file(a.key).map_err(Failure::key)?;
    let created = build_time(a.created_at)?;
    // One default scheme, so a later build never gets a lower revision
    // (a commit count can shrink after a rebase, and mixing schemes jumps).
    let revision = match a.revision {
        Some(r) => r,
        None => u64::try_from(created)
            .map_err(|_| Failure::usage("the build time is before 1970; pass --revision"))?,
    };
    let opts = Options {
        tests: !a.skip_tests,
        slices: a.product.map_or(Slices::None, Slices::One),
    };
    let mut printer = Printer::default();
    let built = meshgov_server::build::build(a.dir, &key, &opts, &mut printer, |c| Stamp {
        revision,
        created_at_unix: created,
        ttl_seconds: c.ttl_seconds,
    })
    .map_err(|e| match e {
        BuildError::Read(_) | BuildError::UnknownProduct { .. } => Failure::usage(e.to_string()),
        BuildError::Check { .. } if printer.errors > 0 => Failure::violations(
            "the policies do not check; fix the errors above before building",
        ),
        BuildError::Test { failed, total, .. } => Failure::violations(format!(
            "{failed} of {total} policy tests failed; nothing was built (fix them, or pass --skip-tests)"
        )),
        BuildError::Check { .. } | BuildError::Slice { .. } => Failure::violations(e.to_string()),
        BuildError::Sign(_) => Failure::usage(e.to_string()),
    })?;
    let release = built.release.map_err(|e| Failure::usage(e.to_string()))?;
    let (signed, components) = match a.product {
        None => (&release.whole, &built.compiled.whole),
        Some(id) => match (release.slices.get(id), built.compiled.slices.get(id)) {
            (Some(s), Some(c)) => (s, c),
            _ => return Err(Failure::usage(format!("no slice was built for `{id}`"))),
        },
    };
    if a.skip_tests {
        outln!("policy tests not run (--skip-tests)");
    }
    let bytes = &signed.bytes;
    let tmp = a.out.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, a.out).map_err(|e| io(a.out, e))?;
    outln!(
        "built {} revision {} for {} ({} components, {} bytes), signed by {}, expires {}",
        a.out.display(),
        release.revision,
        a.product.unwrap_or("the whole mesh"),
        components.len(),
        bytes.len(),
        key.keyid(),
        meshgov_bundle::format_timestamp(release.expires_at_unix).unwrap_or_default()
    );
    Ok(())
}

pub fn inspect(file: &Path, trust: &[PathBuf], json: bool) -> Result<(), Failure> {
    let bytes = std::fs::read(file).map_err(|e| io(file, e))?;
    let ins = meshgov_bundle::inspect(&bytes)
        .map_err(|e| Failure::violations(format!("`{}`: refused: {e}", file.display())))?;
    let mut store = TrustStore::new();
    for t in trust {
        let k = meshgov_bundle::read_public_key_file(t).map_err(Failure::key)?;
        store.insert(k).map_err(|e| Failure::usage(e.to_string()))?;
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let verdict = (!trust.is_empty())
        .then(|| meshgov_bundle::verify(&bytes, &store, now, &Expect::default()));
    let m = &ins.manifest;
    if json {
        let v = serde_json::json!({
            "manifest": m,
            "keyids": ins.keyids,
            "digest": ins.digest,
            "verdict": match &verdict {
                None => serde_json::json!({"verified": false, "reason": "no --trust key given"}),
                Some(Ok(v)) => serde_json::json!({"verified": true, "signed_by": v.signed_by()}),
                Some(Err(e)) => serde_json::json!({"verified": false, "code": e.code(), "reason": e.to_string()}),
            },
        });
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        outln!("bundle:     {}", file.display());
        outln!("mesh:       {}", m.mesh);
        outln!("revision:   {}", m.revision);
        outln!(
            "product:    {}",
            m.product.as_deref().unwrap_or("(whole mesh)")
        );
        outln!("created_at: {}", m.created_at);
        outln!("expires_at: {}", m.expires_at);
        outln!(
            "commit:     {}",
            m.source_commit
                .as_deref()
                .unwrap_or("(not a git repository)")
        );
        outln!("digest:     {}", ins.digest);
        outln!("signed by:  {}", ins.keyids.join(", "));
        outln!("components:");
        for (name, digest) in &m.components {
            outln!("  {digest}  {name}");
        }
        match &verdict {
            None => outln!("verdict:    not verified (pass --trust KEY.pub)"),
            Some(Ok(v)) => outln!(
                "verdict:    verified, signed by trusted key {}",
                v.signed_by()
            ),
            Some(Err(e)) => outln!("verdict:    REFUSED [{}]: {e}", e.code()),
        }
    }
    match verdict {
        Some(Err(e)) => Err(Failure::violations(format!(
            "`{}`: refused: {e}",
            file.display()
        ))),
        _ => Ok(()),
    }
}
