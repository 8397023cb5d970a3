//! A real OpenID provider on loopback: panva's certified `oidc-provider`,
//! run by `tests/oidc/provider.mjs` under Node.js, for tests of the
//! sidecar's token checks against discovery and a JWKS.
//!
//! [`OidcProvider::start`] runs it on a free port with the signing keys
//! named by kid (made on first use, kept in a temporary directory);
//! [`OidcProvider::token`] gets a JWT access token from its
//! `client_credentials` grant, for an audience and with any claims;
//! [`OidcProvider::restart`] runs it again on the same port with the same
//! key files, publishing only the kids it is given: a key rotation is a
//! restart with `["k1", "k2"]`, then with `["k2"]`. The first kid signs.
//!
//! `.ci/setup` installs oidc-provider into `/opt/meshgov/oidc`
//! (`MESHGOV_OIDC_DIR` names another directory with its `node_modules`).
//! When it or `node` is missing, `start` answers `Ok(None)` and the test
//! skips, saying why; in CI (`CI` set) that is an error instead.

use crate::{Context as _, Error, Process, Result, Signal, free_addr, repo_root};
use base64::Engine as _;
use serde_json::Value;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The provider's one client, as `provider.mjs` registers it.
pub const CLIENT_ID: &str = "meshgov-test";
pub const CLIENT_SECRET: &str = "meshgov-test-secret";

/// Where `.ci/setup` installs oidc-provider.
const INSTALL_DIR: &str = "/opt/meshgov/oidc";

/// How long Node.js may take to load the provider, make its keys and
/// listen.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// How long one HTTP exchange with the provider may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `tests/oidc/provider.mjs`; killed when dropped.
pub struct OidcProvider {
    /// `http://127.0.0.1:<port>`: the `iss` of its tokens.
    pub issuer: String,
    pub port: u16,
    jwks_uri: String,
    token_endpoint: String,
    cache_control: Option<String>,
    modules: PathBuf,
    /// `keys/` (the private JWKs, by kid) and `provider.log` (its stderr).
    dir: tempfile::TempDir,
    process: Option<Process>,
}

impl OidcProvider {
    /// Starts the provider with the signing keys `kids` (the first signs).
    /// `Ok(None)` when it is not installed and `CI` is unset.
    pub fn start(kids: &[&str]) -> Result<Option<OidcProvider>> {
        OidcProvider::start_with(kids, None)
    }

    /// As [`start`](Self::start), with this `Cache-Control` header on its
    /// JWKS response (e.g. `max-age=60`), also after restarts.
    pub fn start_with_cache_control(
        kids: &[&str],
        cache_control: &str,
    ) -> Result<Option<OidcProvider>> {
        OidcProvider::start_with(kids, Some(cache_control.to_string()))
    }

    fn start_with(kids: &[&str], cache_control: Option<String>) -> Result<Option<OidcProvider>> {
        let Some(modules) = installed()? else {
            return Ok(None);
        };
        let mut dir = tempfile::tempdir().context("create the provider's directory")?;
        // The port is free a moment before Node listens on it; another
        // process may take it in between, so a few tries.
        let mut last = Error::new("no try");
        for _ in 0..3 {
            let port = free_addr()?.port();
            let mut p = OidcProvider {
                issuer: format!("http://127.0.0.1:{port}"),
                port,
                jwks_uri: String::new(),
                token_endpoint: String::new(),
                cache_control: cache_control.clone(),
                modules: modules.clone(),
                dir,
                process: None,
            };
            match p.launch(kids) {
                Ok(()) => return Ok(Some(p)),
                Err(e) => {
                    last = e;
                    dir = p.into_dir();
                }
            }
        }
        Err(last)
    }

    /// Stops it (SIGTERM) and starts it again on the same port with the
    /// same key files, publishing only `kids` and signing with the first.
    pub fn restart(&mut self, kids: &[&str]) -> Result<()> {
        self.stop()?;
        self.launch(kids)
    }

    /// Stops it (SIGTERM, then waits for its exit, which must be clean):
    /// its port refuses connections until [`restart`](Self::restart).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.signal(Signal::SIGTERM)?;
            let code = p
                .wait_exit(Duration::from_secs(10))
                .context("the OpenID provider after SIGTERM")?;
            if code != Some(0) {
                return Err(Error::new(format!(
                    "the OpenID provider exited with {code:?} on SIGTERM:\n{}",
                    self.log()
                )));
            }
        }
        Ok(())
    }

    /// A JWT access token from the `client_credentials` grant for
    /// `audience` (the `resource` indicator, an absolute URI, which becomes
    /// `aud`), with `claims` (a JSON object) merged into its payload last:
    /// they win over the provider's own (`sub` is otherwise the client id,
    /// `meshgov-test`; `iss`, `exp` and the rest can be changed too).
    pub fn token(&self, audience: &str, claims: Value) -> Result<String> {
        if !claims.is_object() {
            return Err(Error::new(format!(
                "claims must be a JSON object: {claims}"
            )));
        }
        let form = [
            ("grant_type", "client_credentials"),
            ("resource", audience),
            ("meshgov_claims", &claims.to_string()),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={}", form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
        let r = http(
            "POST",
            &self.token_endpoint,
            &[
                ("Authorization", &format!("Basic {basic}")),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            form.as_bytes(),
        )?;
        if r.status != 200 {
            return Err(Error::new(format!(
                "token request: {} {}; provider log:\n{}",
                r.status,
                String::from_utf8_lossy(&r.body),
                self.log()
            )));
        }
        r.json()?
            .get("access_token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .context("token response without access_token")
    }

    /// `<issuer>/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// The `jwks_uri` its discovery document names.
    pub fn jwks_url(&self) -> String {
        self.jwks_uri.clone()
    }

    /// Its JWKS, as it serves it now.
    pub fn jwks(&self) -> Result<Value> {
        get_ok(&self.jwks_uri)?.json()
    }

    /// What it has written to stderr (warnings, errors) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default()
    }

    /// Runs the provider on `self.port` and waits for it to say `ready`,
    /// then reads its discovery document.
    fn launch(&mut self, kids: &[&str]) -> Result<()> {
        if kids.is_empty() {
            return Err(Error::new("the OpenID provider needs a signing key"));
        }
        let log_path = self.dir.path().join("provider.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .context(format!("open `{}`", log_path.display()))?;
        let mut cmd = Command::new("node");
        cmd.arg(repo_root().join("tests/oidc/provider.mjs"))
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--keys-dir")
            .arg(self.dir.path().join("keys"))
            .arg("--kids")
            .arg(kids.join(","))
            .arg("--modules")
            .arg(&self.modules)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some(cc) = &self.cache_control {
            cmd.arg("--cache-control").arg(cc);
        }
        let mut process = Process::spawn_unlogged(&mut cmd)?;
        let stdout = process
            .child_mut()
            .stdout
            .take()
            .context("the provider's stdout")?;
        // Its stdout is read to the end on a thread of its own, so the
        // wait for `ready` has a deadline (and the pipe never fills).
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout)
                .lines()
                .map_while(std::result::Result::ok)
            {
                if let Some(issuer) = line.strip_prefix("ready ") {
                    let _ = tx.send(issuer.to_string());
                }
            }
        });
        let said = rx.recv_timeout(READY_WITHIN);
        self.process = Some(process);
        match said {
            Ok(issuer) if issuer == self.issuer => {}
            Ok(other) => {
                return Err(Error::new(format!(
                    "the OpenID provider says it is `{other}`, not `{}`",
                    self.issuer
                )));
            }
            Err(_) => {
                self.process = None;
                return Err(Error::new(format!(
                    "the OpenID provider did not start on port {} within {READY_WITHIN:?}:\n{}",
                    self.port,
                    self.log()
                )));
            }
        }
        let discovery = get_ok(&self.discovery_url())?.json()?;
        let field = |name: &str| {
            discovery
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .context(format!("discovery without {name}: {discovery}"))
        };
        if field("issuer")? != self.issuer {
            return Err(Error::new(format!(
                "discovery names another issuer: {discovery}"
            )));
        }
        self.jwks_uri = field("jwks_uri")?;
        self.token_endpoint = field("token_endpoint")?;
        Ok(())
    }

    /// Its directory, from a provider that did not start (for another try).
    fn into_dir(self) -> tempfile::TempDir {
        self.dir
    }
}

/// The directory with oidc-provider's `node_modules`, when it and `node`
/// are there. Otherwise `Ok(None)` (the test skips, saying why), or an
/// error in CI.
fn installed() -> Result<Option<PathBuf>> {
    let dir = std::env::var_os("MESHGOV_OIDC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(INSTALL_DIR));
    let module = dir.join("node_modules/oidc-provider/package.json");
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if node && module.is_file() {
        return Ok(Some(dir));
    }
    let why = if node {
        format!("oidc-provider is not installed in `{}`", dir.display())
    } else {
        "node is not installed".to_string()
    };
    if std::env::var_os("CI").is_some() {
        return Err(Error::new(format!(
            "{why}; the OpenID provider is required in CI (`.ci/setup` installs it)"
        )));
    }
    eprintln!("skipped: {why} (run .ci/setup, or set MESHGOV_OIDC_DIR)");
    Ok(None)
}

/// An HTTP response, read to the end.
pub struct Response {
    pub status: u16,
    /// Names in lower case, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).context("parse a JSON response")
    }
}

/// `GET url`, which must answer 200.
pub fn get_ok(url: &str) -> Result<Response> {
    let r = http("GET", url, &[], b"")?;
    if r.status != 200 {
        return Err(Error::new(format!(
            "GET {url}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        )));
    }
    Ok(r)
}

/// One HTTP/1.0 exchange with a loopback `http://host:port/path` (1.0: the
/// answer is never chunked and ends with the connection).
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response> {
    let rest = url
        .strip_prefix("http://")
        .context(format!("not an http:// URL: {url}"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let what = format!("{method} {url}");
    let mut s = TcpStream::connect(host).context(&what)?;
    s.set_read_timeout(Some(HTTP_TIMEOUT)).context(&what)?;
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).context(&what)?;
    s.write_all(body).context(&what)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).context(&what)?;
    parse_response(&raw).context(what)
}

fn parse_response(raw: &[u8]) -> std::result::Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let (head, body) = raw.split_at(end);
    let head = std::str::from_utf8(head).map_err(|e| e.to_string())?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.get(4..).unwrap_or_default().to_vec(),
    })
}

/// `application/x-www-form-urlencoded` for one value.
fn form_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    use serde_json::json;
    use std::time::Instant;

    const AUD: &str = "https://meshgov.test/api";

    /// A token's header and payload, decoded without checking anything.
    fn parts(token: &str) -> (Value, Value) {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let segments: Vec<&str> = token.split('.').collect();
        assert_eq!(segments.len(), 3, "not a JWS: {token}");
        let decode =
            |s: &str| -> Value { serde_json::from_slice(&b64.decode(s).unwrap()).unwrap() };
        (decode(segments[0]), decode(segments[1]))
    }

    fn kids(jwks: &Value) -> Vec<String> {
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    }

    /// Verifies `token`'s signature with the key of its kid in `jwks`, and
    /// its `iss` and `aud`; the payload.
    fn verify(token: &str, jwks: &Value, issuer: &str) -> jsonwebtoken::errors::Result<Value> {
        let set: JwkSet = serde_json::from_value(jwks.clone()).unwrap();
        let kid = jsonwebtoken::decode_header(token)?.kid.unwrap();
        let Some(jwk) = set.find(&kid) else {
            return Err(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat.into());
        };
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&[AUD]);
        v.set_issuer(&[issuer]);
        jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk)?, &v).map(|d| d.claims)
    }

    #[test]
    fn discovery_and_the_jwks_publish_the_listed_kids() {
        let t0 = Instant::now();
        let Some(p) = OidcProvider::start(&["k1", "k2"]).unwrap() else {
            return;
        };
        eprintln!("started in {:?}", t0.elapsed());
        assert_eq!(p.issuer, format!("http://127.0.0.1:{}", p.port));
        let d = get_ok(&p.discovery_url()).unwrap().json().unwrap();
        assert_eq!(d["issuer"], p.issuer.as_str());
        assert_eq!(d["jwks_uri"], p.jwks_url().as_str());
        assert!(p.jwks_url().starts_with(&p.issuer), "{}", p.jwks_url());
        assert!(
            d["grant_types_supported"]
                .as_array()
                .unwrap()
                .contains(&json!("client_credentials")),
            "{d}"
        );
        let r = get_ok(&p.jwks_url()).unwrap();
        assert_eq!(r.header("cache-control"), None);
        let jwks = r.json().unwrap();
        assert_eq!(kids(&jwks), ["k1", "k2"]);
        for k in jwks["keys"].as_array().unwrap() {
            assert_eq!(k["kty"], "RSA");
            assert_eq!(k["alg"], "RS256");
            assert_eq!(k["use"], "sig");
            assert!(k.get("d").is_none(), "a private key is published: {k}");
            // 2048-bit modulus: 256 bytes, 342 base64url characters.
            assert_eq!(k["n"].as_str().unwrap().len(), 342);
        }
    }

    #[test]
    fn a_token_carries_the_requested_claims_and_verifies_against_the_jwks() {
        let Some(p) = OidcProvider::start(&["k1"]).unwrap() else {
            return;
        };
        let claims = json!({
            "sub": "alice",
            "groups": ["analysts", "eu"],
            "purpose": "fraud-detection",
            "realm_access": {"roles": ["reader", "auditor"]},
            "scope": "orders:read customers:read",
        });
        let token = p.token(AUD, claims.clone()).unwrap();
        let (header, payload) = parts(&token);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["kid"], "k1");
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(payload["iss"], p.issuer.as_str());
        assert_eq!(payload["aud"], AUD);
        assert_eq!(payload["client_id"], CLIENT_ID);
        for (name, value) in claims.as_object().unwrap() {
            assert_eq!(&payload[name], value, "{name} in {payload}");
        }
        let (iat, exp) = (
            payload["iat"].as_i64().unwrap(),
            payload["exp"].as_i64().unwrap(),
        );
        assert_eq!(exp - iat, 600, "{payload}");
        let verified = verify(&token, &p.jwks().unwrap(), &p.issuer).unwrap();
        assert_eq!(verified, payload);

        // Without claims, `sub` is the client's id.
        let (_, plain) = parts(&p.token(AUD, json!({})).unwrap());
        assert_eq!(plain["sub"], CLIENT_ID);
        assert_eq!(plain.get("scope"), None, "{plain}");
        // Another audience is another `aud`: a token for it fails the check
        // for AUD.
        let other = p.token("https://elsewhere.test/", json!({})).unwrap();
        assert_eq!(parts(&other).1["aud"], "https://elsewhere.test/");
        let err = verify(&other, &p.jwks().unwrap(), &p.issuer).unwrap_err();
        assert_eq!(
            err.kind(),
            &jsonwebtoken::errors::ErrorKind::InvalidAudience
        );
        // The requested claims win over the provider's own, e.g. a token
        // that expired an hour ago, signed with the real key.
        let old = p.token(AUD, json!({"exp": iat - 3600})).unwrap();
        let err = verify(&old, &p.jwks().unwrap(), &p.issuer).unwrap_err();
        assert_eq!(
            err.kind(),
            &jsonwebtoken::errors::ErrorKind::ExpiredSignature
        );
    }

    #[test]
    fn a_rotation_is_two_restarts_and_the_jwks_and_kid_follow() {
        let Some(mut p) = OidcProvider::start(&["k1"]).unwrap() else {
            return;
        };
        let (issuer, port) = (p.issuer.clone(), p.port);
        let before = p.jwks().unwrap();
        let t1 = p.token(AUD, json!({"sub": "alice"})).unwrap();
        assert_eq!(parts(&t1).0["kid"], "k1");

        // Publish the next key; the old one still signs.
        let t0 = Instant::now();
        p.restart(&["k1", "k2"]).unwrap();
        eprintln!("restarted in {:?}", t0.elapsed());
        assert_eq!((p.issuer.as_str(), p.port), (issuer.as_str(), port));
        let both = p.jwks().unwrap();
        assert_eq!(kids(&both), ["k1", "k2"]);
        // The same k1, from its key file.
        assert_eq!(both["keys"][0], before["keys"][0]);
        let t2 = p.token(AUD, json!({"sub": "alice"})).unwrap();
        assert_eq!(parts(&t2).0["kid"], "k1");
        verify(&t1, &both, &issuer).unwrap();

        // Retire the old key: only k2 is published, and it signs.
        p.restart(&["k2"]).unwrap();
        let after = p.jwks().unwrap();
        assert_eq!(kids(&after), ["k2"]);
        assert_eq!(after["keys"][0], both["keys"][1]);
        let t3 = p.token(AUD, json!({"sub": "alice"})).unwrap();
        assert_eq!(parts(&t3).0["kid"], "k2");
        assert_eq!(verify(&t3, &after, &issuer).unwrap()["sub"], "alice");
        // A token of the retired key has no key in the JWKS any more.
        assert!(verify(&t1, &after, &issuer).is_err());
        // k2 with k1's kid would not verify: the keys differ.
        assert_ne!(before["keys"][0]["n"], after["keys"][0]["n"]);
    }

    #[test]
    fn a_stopped_provider_refuses_connections_until_restarted() {
        let Some(mut p) = OidcProvider::start(&["k1"]).unwrap() else {
            return;
        };
        p.stop().unwrap();
        assert!(get_ok(&p.jwks_url()).is_err());
        assert!(p.token(AUD, json!({})).is_err());
        p.restart(&["k1"]).unwrap();
        assert_eq!(kids(&p.jwks().unwrap()), ["k1"]);
    }

    #[test]
    fn the_jwks_carries_the_cache_control_asked_for_also_after_a_restart() {
        let Some(mut p) = OidcProvider::start_with_cache_control(&["k1"], "max-age=60").unwrap()
        else {
            return;
        };
        let r = get_ok(&p.jwks_url()).unwrap();
        assert_eq!(r.header("Cache-Control"), Some("max-age=60"));
        p.restart(&["k1", "k2"]).unwrap();
        let r = get_ok(&p.jwks_url()).unwrap();
        assert_eq!(r.header("Cache-Control"), Some("max-age=60"));
        assert_eq!(kids(&r.json().unwrap()), ["k1", "k2"]);
    }

    #[test]
    fn claims_that_are_not_an_object_are_refused() {
        let Some(p) = OidcProvider::start(&["k1"]).unwrap() else {
            return;
        };
        let err = p.token(AUD, json!(["alice"])).unwrap_err();
        assert!(err.to_string().contains("JSON object"), "{err}");
    }

    #[test]
    fn form_values_and_responses_are_encoded_and_parsed() {
        assert_eq!(form_encode(r#"{"a":"b c"}"#), "%7B%22a%22%3A%22b%20c%22%7D");
        assert_eq!(
            form_encode("https://x.test/api"),
            "https%3A%2F%2Fx.test%2Fapi"
        );
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\n\r\n{}").unwrap();
        assert_eq!(
            (r.status, r.header("x-a"), r.body.as_slice()),
            (404, Some("1"), &b"{}"[..])
        );
    }
}
