//! `conformance check`: reads a product descriptor (and its previous
//! version) and the policies it is checked against, a repository or a
//! verified bundle, and runs the static rules ([`crate::rules`]) on them.

use crate::Failure;
use crate::report::Report;
use crate::rules::{self, Input, RULES};
use meshgov_core::{Policies, SourceSet};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct CheckArgs<'a> {
    pub descriptor: &'a Path,
    pub policies: Option<&'a Path>,
    pub bundle: Option<&'a Path>,
    pub trust: &'a [PathBuf],
    pub previous: Option<&'a Path>,
}

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure::io(path, &e))
}

/// The policies to check against: a repository (which must check clean) or
/// a verified bundle.
pub fn load_policies(
    policies: Option<&Path>,
    bundle: Option<&Path>,
    trust: &[PathBuf],
    now_unix: i64,
) -> Result<Policies, Failure> {
    match (policies, bundle) {
        (Some(dir), None) => {
            let src = SourceSet::read_dir(dir).map_err(|e| Failure::usage(e.to_string()))?;
            let checked = meshgov_core::check(&src);
            checked.policies.ok_or_else(|| {
                let errors: Vec<String> =
                    checked.diagnostics.iter().map(|d| d.to_string()).collect();
                Failure::usage(format!(
                    "the policies in `{}` do not check; run `meshgov check` there:\n{}",
                    dir.display(),
                    errors.join("\n")
                ))
            })
        }
        (None, Some(file)) => {
            if trust.is_empty() {
                return Err(Failure::usage(
                    "--bundle needs at least one --trust KEY.pub",
                ));
            }
            let mut store = meshgov_bundle::TrustStore::new();
            for t in trust {
                let k = meshgov_bundle::read_public_key_file(t).map_err(Failure::key)?;
                store.insert(k).map_err(|e| Failure::usage(e.to_string()))?;
            }
            let bytes = std::fs::read(file).map_err(|e| Failure::io(file, &e))?;
            let verified = meshgov_bundle::verify(
                &bytes,
                &store,
                now_unix,
                &meshgov_bundle::Expect::default(),
            )
            .map_err(|e| {
                Failure::usage(format!("`{}`: refused [{}]: {e}", file.display(), e.code()))
            })?;
            let (manifest, components) = verified.into_parts();
            Policies::from_components(&components, manifest.product)
                .map_err(|e| Failure::usage(format!("`{}`: {e}", file.display())))
        }
        _ => Err(Failure::usage(
            "give exactly one of --policies DIR or --bundle FILE",
        )),
    }
}

/// Reads the descriptor (and its previous version) and runs every static
/// rule on it.
pub fn check(a: CheckArgs<'_>) -> Result<Report, Failure> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let policies = load_policies(a.policies, a.bundle, a.trust, now)?;
    let path = a.descriptor.display().to_string();
    let text = read(a.descriptor)?;
    if let Some(product) = &policies.product {
        let id = meshgov_core::descriptor::Descriptor::parse(&path, &text)
            .map(|d| d.product_id())
            .unwrap_or_default();
        if !id.is_empty() && &id != product {
            return Err(Failure::usage(format!(
                "the bundle is sliced for `{product}`, but `{path}` describes `{id}`"
            )));
        }
    }
    let prev = match a.previous {
        Some(p) => Some((p.display().to_string(), read(p)?)),
        None => None,
    };
    let findings = rules::check_product(
        &policies,
        Input {
            path: &path,
            text: &text,
        },
        prev.as_ref().map(|(path, text)| Input { path, text }),
        now,
    );
    // Without a previous version there is nothing to compare: the
    // evolution rules did not run, which is not the same as passing.
    let skipped = match prev {
        Some(_) => BTreeMap::new(),
        None => RULES
            .iter()
            .filter(|r| r.id.starts_with("EVO-"))
            .map(|r| {
                (
                    r.id,
                    "give --previous with the last released descriptor to compare".to_string(),
                )
            })
            .collect(),
    };
    Ok(Report {
        target: path,
        rules: RULES,
        findings,
        skipped,
        summary: None,
        help_base_url: rules::DEFAULT_HELP_BASE_URL.to_string(),
    })
}
