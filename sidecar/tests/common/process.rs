//! For tests that run the real `meshgov-sidecar` binary: its config file,
//! its command line and its readiness.

use super::{AUDIENCE, ISSUER, Keys, PSEUDONYM_KEY, b64u, repo};
use meshgov_core::descriptor::Descriptor;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback address that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
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
[auth]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
[[auth.keys]]
alg = "EdDSA"
x = "{x}"
[pseudonym_keys]
user-identity = "user-identity.key"
{tables}
"#,
                desc = descriptor.display().to_string(),
                gov = gov.public_key(),
                top = self.top,
                listen = self.listen,
                x = b64u(&keys.ed_public),
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

/// Polls `GET /readyz` on `addr` until it answers 200 (true) or `within`
/// has passed (false).
pub fn ready_within(addr: SocketAddr, within: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if let Ok(mut c) = TcpStream::connect(addr) {
            let _ = c.write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            let mut b = Vec::new();
            let _ = c.read_to_end(&mut b);
            if b.starts_with(b"HTTP/1.1 200") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
