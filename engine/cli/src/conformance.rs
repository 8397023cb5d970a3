//! `meshgov conformance check` and `conformance run`: the
//! `meshgov-conformance` crate's checks, their report on stdout.

use crate::Failure;
use meshgov_conformance::check::{self, CheckArgs};
use meshgov_conformance::live::{self, RunArgs};
use meshgov_conformance::report::{FailOn, Format, Report};
use std::io::IsTerminal as _;

/// Prints the report in `format`; fails (exit 1) when a finding is at or
/// above `fail_on`.
fn emit(r: &Report, format: Format, fail_on: FailOn) -> Result<(), Failure> {
    out!(
        "{}",
        r.render(format, std::io::stdout().is_terminal(), fail_on)
    );
    Ok(r.verdict(fail_on)?)
}

/// `conformance check`: the static rules on one descriptor.
pub fn check(a: CheckArgs<'_>, format: Format, fail_on: FailOn) -> Result<(), Failure> {
    emit(&check::check(a)?, format, fail_on)
}

/// `conformance run`: the live suite against one sidecar.
pub fn run(a: &RunArgs<'_>, format: Format, fail_on: FailOn) -> Result<(), Failure> {
    emit(&live::run(a)?, format, fail_on)
}
