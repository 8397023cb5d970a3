//! `meshgov token`: mints a consumer JWT for local use and demos (the
//! minting is `meshgov_conformance::token`'s).

use crate::Failure;
use meshgov_conformance::token::{TokenArgs, mint};

/// Prints the token alone on stdout (so `$(meshgov token …)` works) and,
/// on stderr, the sidecar key entry that verifies it.
pub fn run(a: &TokenArgs<'_>) -> Result<(), Failure> {
    let minted = mint(a)?;
    outln!("{}", minted.token);
    errln!(
        "meshgov: development token for `{}` (purpose `{}`), valid {} s; issuer `{}`, audience `{}`",
        a.sub,
        a.purpose,
        a.ttl,
        a.issuer.issuer,
        a.issuer.audience
    );
    if let Some(k) = minted.eddsa_public_key {
        let entry = meshgov_sidecar::config::eddsa_key_toml(&k);
        errln!("meshgov: a sidecar verifies it with:\n{}", entry.trim_end());
    }
    Ok(())
}
