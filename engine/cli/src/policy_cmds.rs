//! `check` and `test`: the guild's CI commands.

use crate::Failure;
use meshgov_core::testing::CaseResult;
use meshgov_core::{Checked, SourceSet};
use std::path::Path;

/// Reads and checks a repository, printing every diagnostic. Plugin
/// modules are loaded by the same host the sidecar runs, to confirm their
/// exports and ABI version.
pub fn load_checked(dir: &Path) -> Result<(SourceSet, Checked), Failure> {
    let src = SourceSet::read_dir(dir).map_err(|e| Failure::usage(e.to_string()))?;
    let checked = meshgov_core::check_with(&src, Some(&meshgov_wasm::Inspector));
    for d in &checked.diagnostics {
        outln!("{d}");
    }
    Ok((src, checked))
}

fn file_count(src: &SourceSet) -> usize {
    usize::from(src.mesh.is_some())
        + usize::from(src.schema.is_some())
        + src.access.len()
        + src.anonymization.len()
        + src.privacy.len()
        + src.standards.len()
        + src.plugins.len()
        + src.tests.len()
        + src.products.len()
}

pub fn check(dir: &Path) -> Result<(), Failure> {
    let (src, checked) = load_checked(dir)?;
    let errors = checked
        .diagnostics
        .iter()
        .filter(|d| d.severity == meshgov_core::Severity::Error)
        .count();
    let warnings = checked.diagnostics.len() - errors;
    let summary = format!(
        "checked {} files in `{}`: {errors} errors, {warnings} warnings",
        file_count(&src),
        dir.display()
    );
    if errors > 0 {
        return Err(Failure::violations(summary));
    }
    outln!("{summary}");
    Ok(())
}

pub fn test(dir: &Path, junit: Option<&Path>) -> Result<(), Failure> {
    let (_, checked) = load_checked(dir)?;
    let Some(policies) = &checked.policies else {
        return Err(Failure::violations(
            "the policies do not check; fix the errors above before testing",
        ));
    };
    // Plugins run in the same sandbox, with the same limits, as in a sidecar.
    let plugins =
        meshgov_wasm::Plugins::compile(policies).map_err(|e| Failure::violations(e.to_string()))?;
    let results = meshgov_core::testing::run(policies, &plugins, &checked.products, &checked.tests);
    print_cases(&results);
    if let Some(path) = junit {
        std::fs::write(path, meshgov_core::testing::junit(&results))
            .map_err(|e| Failure::io(path, &e))?;
    }
    let failed = print_summary(&results);
    if failed > 0 {
        return Err(Failure::violations(""));
    }
    Ok(())
}

/// One line per case, with what differed under each failing one.
pub fn print_cases(results: &[CaseResult]) {
    for r in results {
        if r.passed() {
            outln!("ok   {}: {}", r.file, r.name);
        } else {
            outln!("FAIL {}: {}", r.file, r.name);
            for f in &r.failures {
                outln!("     {}", f.replace('\n', "\n     "));
            }
        }
    }
}

/// `N passed, N failed`; returns the failed count.
pub fn print_summary(results: &[CaseResult]) -> usize {
    let failed = results.iter().filter(|r| !r.passed()).count();
    outln!("{} passed, {failed} failed", results.len() - failed);
    failed
}
