//! A sidecar on 127.0.0.1:0 over the example mesh, with keys and tokens
//! minted here, and a tiny raw HTTP/1.1 client (so tests can send odd bytes).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use meshgov_core::descriptor::ProductInfo;
use meshgov_core::{SourceSet, check};
use meshgov_sidecar::launch::{self, Running};
use meshgov_sidecar::{App, clock};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod process;
// Not every test binary runs a sidecar process.
#[allow(unused_imports)]
pub use process::*;
// The end-to-end harness's process handling and seeded generator.
#[allow(unused_imports)]
pub use meshgov_e2e::{Process, Rng, Signal, ready_within, seed, seeded};

pub const ISSUER: &str = "https://idp.media.example";
pub const AUDIENCE: &str = "meshgov";
/// The `user-identity` pseudonym secret tests configure (37 bytes).
pub const PSEUDONYM_KEY: &str = "meshgov-test-pseudonym-key-0123456789";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn b64u(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Consumer-token signing keys, generated per test run (RSA from a fixture).
pub struct Keys {
    pub ed_pkcs8: Vec<u8>,
    pub ed_public: Vec<u8>,
    pub ec_pkcs8: Vec<u8>,
    pub ec_public: Vec<u8>,
    pub rsa_private_pem: Vec<u8>,
    pub rsa_public_pem: String,
}

impl Keys {
    pub fn generate() -> Keys {
        let rng = SystemRandom::new();
        let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed_pair = Ed25519KeyPair::from_pkcs8(ed.as_ref()).unwrap();
        let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ec_pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec.as_ref(), &rng).unwrap();
        let fx = repo().join("sidecar/tests/fixtures");
        Keys {
            ed_pkcs8: ed.as_ref().to_vec(),
            ed_public: ed_pair.public_key().as_ref().to_vec(),
            ec_pkcs8: ec.as_ref().to_vec(),
            ec_public: ec_pair.public_key().as_ref().to_vec(),
            rsa_private_pem: std::fs::read(fx.join("rs256-test.key.pem")).unwrap(),
            rsa_public_pem: fx.join("rs256-test.pub.pem").display().to_string(),
        }
    }
}

pub fn now() -> i64 {
    clock::now_unix()
}

/// Standard claims for `sub` in `groups` asking for `purpose`.
pub fn claims(sub: &str, groups: &[&str], purpose: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub,
        "groups": groups, "purpose": purpose,
        "iat": now(), "exp": now() + 600,
    })
}

pub fn sign(keys: &Keys, alg: Algorithm, claims: &serde_json::Value) -> String {
    let key = match alg {
        Algorithm::EdDSA => EncodingKey::from_ed_der(&keys.ed_pkcs8),
        Algorithm::ES256 => EncodingKey::from_ec_der(&keys.ec_pkcs8),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&keys.rsa_private_pem).unwrap(),
        _ => panic!("unsupported in tests"),
    };
    jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap()
}

pub fn token(keys: &Keys, sub: &str, groups: &[&str], purpose: &str) -> String {
    sign(keys, Algorithm::EdDSA, &claims(sub, groups, purpose))
}

/// Compiles the example mesh and slices it for `product_file`.
pub fn policies_for(descriptor: &meshgov_core::descriptor::Descriptor) -> meshgov_core::Policies {
    policies_in(&repo().join("policies"), descriptor)
}

/// Compiles the policy repository at `dir` and slices it for `descriptor`.
pub fn policies_in(
    dir: &Path,
    descriptor: &meshgov_core::descriptor::Descriptor,
) -> meshgov_core::Policies {
    let src = SourceSet::read_dir(dir).unwrap();
    let checked = check(&src);
    let all = checked.policies.expect("the example mesh checks clean");
    let info = ProductInfo::resolve(descriptor, &all.mesh).unwrap();
    all.slice(&info).unwrap()
}

/// The governance key that signs bundles in tests, generated per run.
pub fn governance_key() -> meshgov_bundle::SigningKey {
    let pem = meshgov_bundle::SigningKey::generate_pkcs8_pem(&SystemRandom::new()).unwrap();
    meshgov_bundle::SigningKey::from_pkcs8_pem(&pem).unwrap()
}

/// A real signed bundle of the example mesh, sliced for `descriptor`.
pub fn signed_bundle(
    key: &meshgov_bundle::SigningKey,
    descriptor: &meshgov_core::descriptor::Descriptor,
    revision: u64,
    expires_in: i64,
) -> Vec<u8> {
    sign_policies(key, &policies_for(descriptor), revision, expires_in)
}

/// Signs `policies` into a bundle envelope.
pub fn sign_policies(
    key: &meshgov_bundle::SigningKey,
    policies: &meshgov_core::Policies,
    revision: u64,
    expires_in: i64,
) -> Vec<u8> {
    sign_components(
        key,
        policies.product.clone(),
        policies.components(),
        revision,
        expires_in,
    )
}

/// Signs bundle components as they are, for bundles no engine would build.
pub fn sign_components(
    key: &meshgov_bundle::SigningKey,
    product: Option<String>,
    components: BTreeMap<String, String>,
    revision: u64,
    expires_in: i64,
) -> Vec<u8> {
    let payload = meshgov_bundle::BundlePayload::new(
        meshgov_bundle::BundleMeta {
            mesh: "media-mesh".into(),
            revision,
            created_at_unix: now() - 60,
            expires_at_unix: now() + expires_in,
            source_commit: Some("test".into()),
            product,
        },
        components,
    )
    .unwrap();
    meshgov_bundle::sign(&payload.to_canonical_bytes(), &[key])
        .unwrap()
        .to_json_bytes()
}

/// A sidecar booted in this process by `launch::boot`, as `meshgov demo`
/// and the end-to-end harness boot theirs.
pub struct Sidecar {
    pub addr: SocketAddr,
    /// The control port, when `Options::control` asked for one.
    pub control: Option<SocketAddr>,
    pub app: Arc<App>,
    pub dir: tempfile::TempDir,
    pub gov: meshgov_bundle::SigningKey,
    /// The SQL ports, when `Options::sql` asked for them.
    pub sql: Option<SocketAddr>,
    pub flight: Option<SocketAddr>,
    running: Running,
}

impl Sidecar {
    /// Stops it as on SIGTERM: drains, then closes the audit log.
    pub async fn stop(self) {
        self.running.stop().await;
    }
}

pub struct Options {
    /// `policies/products/<product>.yaml`
    pub product: &'static str,
    pub install_bundle: bool,
    pub expires_in: i64,
    pub upstream: Option<String>,
    /// The body of `[pseudonym_keys]`.
    pub pseudonym_keys: String,
    pub extra_config: String,
    /// Also serve the control port, and persist bundles to `<dir>/state`.
    pub control: bool,
    /// An `[auth]` section in place of the one that trusts [`Keys`].
    pub auth: Option<String>,
    /// A policy repository other than `policies/`: the descriptor is
    /// `<repo>/products/<product>.yaml` and the bundle is built from it.
    pub repo: Option<PathBuf>,
    /// Also serve both SQL ports on loopback, with this `[sql]` table body
    /// (`allow_plaintext = true`, or a certificate and key).
    pub sql: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            product: "user-profiles",
            install_bundle: true,
            expires_in: 3600,
            upstream: None,
            pseudonym_keys: r#"user-identity = { file = "user-identity.key" }"#.into(),
            extra_config: String::new(),
            control: false,
            auth: None,
            repo: None,
            sql: None,
        }
    }
}

/// Writes `lines` as one upstream file of `port`.
pub fn write_upstream(dir: &Path, port: &str, name: &str, text: &str) {
    let d = dir.join("data").join(port);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(name), text).unwrap();
}

pub async fn start(keys: &Keys, opts: Options) -> Sidecar {
    let dir = tempfile::tempdir().unwrap();
    // A trailing newline is not part of the secret.
    std::fs::write(
        dir.path().join("user-identity.key"),
        format!("{PSEUDONYM_KEY}\n"),
    )
    .unwrap();
    let policy_repo = opts.repo.clone().unwrap_or_else(|| repo().join("policies"));
    let descriptor = policy_repo.join(format!("products/{}.yaml", opts.product));
    let upstream = opts
        .upstream
        .clone()
        .unwrap_or_else(|| format!("path = {:?}", dir.path().join("data").display().to_string()));
    let (ex, ey) = (&keys.ec_public[1..33], &keys.ec_public[33..65]);
    let gov = governance_key();
    let bundle_file = if opts.install_bundle {
        let parsed = meshgov_core::descriptor::Descriptor::parse(
            "product.yaml",
            &std::fs::read_to_string(&descriptor).unwrap(),
        )
        .unwrap();
        let policies = policies_in(&policy_repo, &parsed);
        let envelope = sign_policies(&gov, &policies, 7, opts.expires_in);
        std::fs::write(dir.path().join("bundle.dsse.json"), &envelope).unwrap();
        "bundle_file = \"bundle.dsse.json\""
    } else {
        ""
    };
    // Also the control port; bundles it accepts persist to `<dir>/state`.
    let control = if opts.control {
        "control = \"127.0.0.1:0\""
    } else {
        ""
    };
    let (sql_listen, sql) = match &opts.sql {
        Some(body) => (
            "sql = \"127.0.0.1:0\"\nflight = \"127.0.0.1:0\"".to_string(),
            format!("[sql]\n{body}"),
        ),
        None => (String::new(), String::new()),
    };
    let cfg = format!(
        r#"
mesh = "media-mesh"
state_dir = "state"
trusted_bundle_keys = ["{gov_pub}"]
descriptor = {descriptor:?}
{bundle_file}
[listen]
data = "127.0.0.1:0"
{control}
{sql_listen}
{sql}
[upstream]
{upstream}
{auth}
[pseudonym_keys]
{pseudonym_keys}
{extra}
"#,
        descriptor = descriptor.display().to_string(),
        pseudonym_keys = opts.pseudonym_keys,
        extra = opts.extra_config,
        auth = opts.auth.clone().unwrap_or_else(|| format!(
            r#"[auth]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
leeway_seconds = 0
[[auth.keys]]
alg = "EdDSA"
x = "{edx}"
[[auth.keys]]
alg = "ES256"
x = "{ecx}"
y = "{ecy}"
[[auth.keys]]
alg = "RS256"
pem_file = {rsa:?}"#,
            edx = b64u(&keys.ed_public),
            ecx = b64u(ex),
            ecy = b64u(ey),
            rsa = keys.rsa_public_pem,
        )),
        gov_pub = gov.public_key(),
    );
    let running = launch::boot(&cfg, dir.path()).await.unwrap();
    if opts.install_bundle && opts.expires_in > 0 {
        assert!(
            running.app().bundle.current().is_some(),
            "a fresh signed bundle must load"
        );
    }
    Sidecar {
        addr: running.data_addr,
        control: running.control_addr,
        sql: running.sql_addr,
        flight: running.flight_addr,
        app: Arc::clone(running.app()),
        dir,
        gov,
        running,
    }
}

/// An HTTP/1.1 answer as the client saw it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body ended as HTTP says it should (the last chunk, or the whole
    /// content length); false for a stream cut short.
    pub complete: bool,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn lines(&self) -> Vec<serde_json::Value> {
        String::from_utf8(self.body.clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn error_code(&self) -> String {
        self.json()["error"].as_str().unwrap().to_string()
    }
    /// The bundle revision the answer was served under.
    pub fn revision(&self) -> Option<u64> {
        self.header("x-meshgov-bundle-revision")?.parse().ok()
    }
}

/// Sends raw bytes, reads to close, decodes a (possibly chunked) response.
pub async fn raw(addr: SocketAddr, request: Vec<u8>) -> Resp {
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        s.write_all(&request).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        parse_response(&buf)
    })
    .await
    .unwrap()
}

pub fn parse_response(buf: &[u8]) -> Resp {
    try_parse_response(buf).expect("a response head")
}

/// `None` if no whole response head arrived (the connection closed first).
pub fn try_parse_response(buf: &[u8]) -> Option<Resp> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &buf[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let (body, complete) = if chunked {
        dechunk(rest)
    } else {
        let want = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok());
        (rest.to_vec(), want.is_none_or(|n| n == rest.len()))
    };
    Some(Resp {
        status,
        headers,
        body,
        complete,
    })
}

/// Decodes a chunked body; `complete` only if the last (empty) chunk came.
fn dechunk(mut b: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let Some(size) = std::str::from_utf8(&b[..nl])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
        else {
            return (out, false);
        };
        if size == 0 {
            return (out, true);
        }
        let Some(chunk) = b.get(nl + 2..nl + 2 + size) else {
            out.extend_from_slice(&b[nl + 2..]);
            return (out, false);
        };
        out.extend_from_slice(chunk);
        b = b.get(nl + 2 + size + 2..).unwrap_or_default();
    }
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw(addr, req.into_bytes()).await
}

pub async fn get_as(addr: SocketAddr, path: &str, token: &str) -> Resp {
    get(addr, path, &[("Authorization", &format!("Bearer {token}"))]).await
}

/// `PUT` of `body` to `path`, with optional extra headers.
pub async fn put(addr: SocketAddr, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Resp {
    let mut req = format!(
        "PUT {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, bytes).await
}

pub async fn get_with(addr: SocketAddr, path: &str, token: &str, accept: &str) -> Resp {
    get(
        addr,
        path,
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Accept", accept),
        ],
    )
    .await
}

/// The Python of the real-client tests (`/opt/meshgov/pyclients`, which
/// `.ci/setup` makes, or `MESHGOV_PYTHON`) when it can import `modules`
/// (`"pyarrow, polars"`). Outside CI a test skips when it cannot; in CI
/// that is a failure.
#[allow(dead_code)]
pub fn python_with(modules: &str) -> Option<PathBuf> {
    let candidate = std::env::var_os("MESHGOV_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/meshgov/pyclients/bin/python"));
    let found = std::process::Command::new(&candidate)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some(candidate);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the Python clients ({modules}) are missing; `.ci/setup` installs them"
    );
    eprintln!("skipped: cannot import {modules} (run .ci/setup, or set MESHGOV_PYTHON)");
    None
}

/// 300 users in DE and 100 in SE, two plays each, today.
#[allow(dead_code)]
pub fn plays_today() -> String {
    let day = time::OffsetDateTime::now_utc().date();
    let mut s = String::new();
    for u in 0..400 {
        let country = if u < 300 { "DE" } else { "SE" };
        for p in 0..2 {
            s.push_str(&serde_json::json!({"event_id": format!("e{u}-{p}"), "user_id": format!("u{u}"), "song_id": "s", "artist_id": "a",
                "played_at": format!("{day}T00:00:01Z"), "duration_ms": 1000 * (p + 1), "country": country, "device": "phone"}).to_string());
            s.push('\n');
        }
    }
    s
}
