//! For tests that run the real `meshgov-sidecar` binary: its config file
//! and its command line. Spawning, readiness, signals and exit codes are
//! the end-to-end harness's (`meshgov_e2e::Process`, `ready_within`).

use super::{AUDIENCE, ISSUER, Keys, PSEUDONYM_KEY, repo};
use meshgov_core::descriptor::Descriptor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A loopback address that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    meshgov_e2e::free_addr().unwrap()
}

/// `N` distinct loopback addresses that were free a moment ago.
pub fn free_addrs<const N: usize>() -> [SocketAddr; N] {
    meshgov_e2e::free_addrs().unwrap()
}

/// `policies/products/<product>.yaml` of the example mesh, parsed.
pub fn example_descriptor(product: &str) -> (PathBuf, Descriptor) {
    let path = repo().join(format!("policies/products/{product}.yaml"));
    let descriptor =
        Descriptor::parse("product.yaml", &std::fs::read_to_string(&path).unwrap()).unwrap();
    (path, descriptor)
}

/// What differs between the config files of process tests. The rest is
/// common: the media mesh, `state/`, `bundle.json` trusted under the
/// governance key, consumer tokens signed by the test's Ed25519 key, and the
/// `user-identity` pseudonym key.
#[derive(Default)]
pub struct ProcessConfig<'a> {
    /// Top-level keys, e.g. `log_format = "json"`.
    pub top: &'a str,
    /// The body of `[listen]`.
    pub listen: &'a str,
    /// The body of `[upstream]`; `path = "data"` when empty.
    pub upstream: &'a str,
    /// More tables, after the common ones.
    pub tables: &'a str,
}

impl ProcessConfig<'_> {
    /// Writes `<dir>/sidecar.toml` and the pseudonym key file it names, for
    /// the product described at `descriptor`; returns the config's path.
    pub fn write(
        &self,
        dir: &Path,
        descriptor: &Path,
        gov: &meshgov_bundle::SigningKey,
        keys: &Keys,
    ) -> PathBuf {
        std::fs::write(dir.join("user-identity.key"), PSEUDONYM_KEY).unwrap();
        let upstream = if self.upstream.is_empty() {
            "path = \"data\""
        } else {
            self.upstream
        };
        let config = dir.join("sidecar.toml");
        std::fs::write(
            &config,
            format!(
                r#"mesh = "media-mesh"
state_dir = "state"
descriptor = {desc:?}
bundle_file = "bundle.json"
trusted_bundle_keys = ["{gov}"]
{top}
[listen]
{listen}
[upstream]
{upstream}
{auth}
[pseudonym_keys]
user-identity = "user-identity.key"
{tables}
"#,
                desc = descriptor.display().to_string(),
                gov = gov.public_key(),
                top = self.top,
                listen = self.listen,
                auth = meshgov_sidecar::config::eddsa_auth_toml(ISSUER, AUDIENCE, &keys.ed_public),
                tables = self.tables,
            ),
        )
        .unwrap();
        config
    }
}

/// `meshgov-sidecar --config <config>` with `RUST_LOG=<filter>`; stdout is
/// discarded.
pub fn sidecar_command(config: &Path, filter: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meshgov-sidecar"));
    c.arg("--config")
        .arg(config)
        .env("RUST_LOG", filter)
        .stdout(Stdio::null());
    c
}
