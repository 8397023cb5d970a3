//! `meshgov conformance check` and `conformance run`: the
//! `meshgov-conformance` crate's checks, their report on stdout.

use crate::Failure;
use meshgov_conformance::check::{self, CheckArgs};
use meshgov_conformance::live::{self, RunArgs};
use meshgov_conformance::report::{FailOn, Format, Report};
use std::io::IsTerminal as _;

/// `--help-base-url`: SARIF's `helpUri`s must be absolute, so the address
/// of `RULES.md` must be an absolute URL, without a fragment.
pub fn help_base_url(s: &str) -> Result<String, String> {
    let example = "e.g. https://git.example/meshgov/blob/main/conformance/RULES.md";
    match url::Url::parse(s) {
        Ok(u) if u.cannot_be_a_base() => Err(format!(
            "`{s}` is not an address documents can live under; {example}"
        )),
        Ok(u) if u.fragment().is_some() => Err(format!(
            "`{s}` has a `#fragment`; each rule adds its own anchor, so give the address of RULES.md alone, {example}"
        )),
        Ok(_) => Ok(s.to_string()),
        Err(e) => Err(format!("`{s}` is not an absolute URL ({e}); {example}")),
    }
}

/// Prints the report in `format`; fails (exit 1) when a finding is at or
/// above `fail_on`.
fn emit(
    mut r: Report,
    format: Format,
    fail_on: FailOn,
    help_base_url: String,
) -> Result<(), Failure> {
    r.help_base_url = help_base_url;
    out!(
        "{}",
        r.render(format, std::io::stdout().is_terminal(), fail_on)
    );
    Ok(r.verdict(fail_on)?)
}

/// `conformance check`: the static rules on one descriptor.
pub fn check(
    a: CheckArgs<'_>,
    format: Format,
    fail_on: FailOn,
    help_base_url: String,
) -> Result<(), Failure> {
    emit(check::check(a)?, format, fail_on, help_base_url)
}

/// `conformance run`: the live suite against one sidecar.
pub fn run(
    a: &RunArgs<'_>,
    format: Format,
    fail_on: FailOn,
    help_base_url: String,
) -> Result<(), Failure> {
    emit(live::run(a)?, format, fail_on, help_base_url)
}
