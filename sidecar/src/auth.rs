//! Consumer identity: a bearer JWT from a trusted issuer.
//!
//! A sidecar trusts one or more issuers (`[[auth.issuers]]`). A token is
//! verified by the issuer whose `issuer` is exactly its `iss`, with that
//! issuer's audience, algorithms, keys and claim mapping. Keys are written
//! into the config, read from a JWKS file, or follow the identity provider
//! (OIDC discovery or a JWKS URL; see [`crate::jwks`]).
//!
//! Only asymmetric algorithms are accepted (EdDSA, ES256, RS256), and each
//! key is bound to exactly one algorithm. A token is verified only against
//! keys whose algorithm equals the token's `alg`, and the validation allows
//! that algorithm alone, so `alg: none`, `HS256` signed with a public key,
//! or an RS256 token against an EC key are all refused. `iss`, `aud`, `exp`
//! and `sub` are required; `nbf` is checked when present.
//!
//! Verified tokens are remembered (see [`VerifiedCache`]): a consumer sends
//! the same token with every request until it expires, and the signature
//! check is most of the per-request cost of authentication.

use crate::config::{AuthConfig, ClaimMapping, IssuerConfig, IssuerKeys, KeyConfig, KeySource};
use crate::jwks::{RemoteKeys, TrustedKey};
use arc_swap::ArcSwap;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use meshgov_core::Principal;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Who is asking and why, from a verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub principal: Principal,
    pub purpose: String,
}

/// Why a token was refused. Messages are for the consumer: they say what
/// to fix, never which key exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token; send `Authorization: Bearer <JWT>`")]
    Missing,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not accepted for its issuer")]
    Algorithm,
    #[error("the token's signature does not verify against any trusted key")]
    Signature,
    #[error("no key of the token's issuer has the token's `kid`")]
    UnknownKey(usize),
    #[error("the keys of issuer `{0}` are not available yet; try again shortly")]
    NoKeys(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by an untrusted issuer")]
    Issuer,
    #[error("the token is not meant for this audience")]
    Audience,
    #[error("the token lacks claim `{0}`")]
    MissingClaim(String),
    #[error("the token's claim `{0}` has the wrong type")]
    BadClaim(String),
}

/// Tokens whose signature, issuer and audience verified, by their exact
/// text, with the time claims to re-check on every use.
///
/// Only a successful verification inserts; a hit requires the identical
/// token string, so a changed byte is a miss and is verified in full.
/// `exp` and `nbf` are checked against the clock at each use, exactly as
/// the full path does. A hit also requires the issuer's key set to be the
/// one the token was verified under: once the keys change, a token is
/// verified again, so a key the provider dropped stops working at once.
/// Bounded: at most [`VERIFIED_CACHE_ENTRIES`] tokens of at most
/// [`VERIFIED_CACHE_MAX_TOKEN`] bytes; a full cache starts over.
#[derive(Default)]
struct VerifiedCache {
    tokens: Mutex<HashMap<Box<str>, Verified>>,
}

#[derive(Clone)]
struct Verified {
    identity: Identity,
    exp: i64,
    nbf: Option<i64>,
    issuer: usize,
    generation: u64,
}

/// How many verified tokens are remembered.
pub const VERIFIED_CACHE_ENTRIES: usize = 256;
/// Longer tokens are always verified in full (bounds the cache's memory).
pub const VERIFIED_CACHE_MAX_TOKEN: usize = 2048;

impl VerifiedCache {
    fn get(&self, token: &str) -> Option<Verified> {
        self.tokens.lock().ok()?.get(token).cloned()
    }

    fn put(&self, token: &str, v: Verified) {
        if token.len() > VERIFIED_CACHE_MAX_TOKEN {
            return;
        }
        if let Ok(mut m) = self.tokens.lock() {
            if m.len() >= VERIFIED_CACHE_ENTRIES {
                m.clear();
            }
            m.insert(token.into(), v);
        }
    }
}

/// A time claim as whole seconds (`exp` rounds down, so never later).
fn seconds(v: Option<&serde_json::Value>) -> Option<i64> {
    let v = v?;
    v.as_i64().or_else(|| v.as_f64().map(|f| f.floor() as i64))
}

/// An issuer's keys: fixed at start, or kept fresh from its provider.
enum Keys {
    Fixed(Arc<Vec<TrustedKey>>),
    Remote(Arc<RemoteKeys>),
}

impl Keys {
    fn current(&self) -> Arc<Vec<TrustedKey>> {
        match self {
            Keys::Fixed(k) => Arc::clone(k),
            Keys::Remote(r) => r.keys(),
        }
    }

    fn generation(&self) -> u64 {
        match self {
            Keys::Fixed(_) => 0,
            Keys::Remote(r) => r.generation(),
        }
    }
}

/// One trusted issuer, ready to verify.
struct Issuer {
    issuer: String,
    audience: String,
    algorithms: Vec<Algorithm>,
    keys: Keys,
    claims: ClaimMapping,
}

/// Verifies consumer tokens with the `[auth]` in force, which a reload
/// (SIGHUP) replaces whole.
pub struct Authenticator {
    current: ArcSwap<Issuers>,
}

/// One loaded `[auth]`: its issuers, and the tokens they verified.
struct Issuers {
    issuers: Vec<Issuer>,
    verified: VerifiedCache,
    leeway: u64,
    cfg: AuthConfig,
    /// Dropped with these issuers: ends their key refresh tasks.
    retire: tokio::sync::watch::Sender<()>,
}

/// The longest token accepted, in bytes.
pub const MAX_TOKEN: usize = 8 * 1024;

fn algorithm(name: &str) -> Result<Algorithm, String> {
    match name {
        "EdDSA" => Ok(Algorithm::EdDSA),
        "ES256" => Ok(Algorithm::ES256),
        "RS256" => Ok(Algorithm::RS256),
        other => Err(format!("unsupported algorithm `{other}`")),
    }
}

fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::EdDSA => "EdDSA",
        Algorithm::ES256 => "ES256",
        _ => "RS256",
    }
}

fn load_key(k: &KeyConfig) -> Result<(Algorithm, DecodingKey), String> {
    let alg = algorithm(&k.alg)?;
    let pem_of = |pem: &[u8]| match alg {
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
        _ => DecodingKey::from_rsa_pem(pem),
    };
    let key = match &k.source {
        KeySource::Pem(p) => pem_of(p.as_bytes()).map_err(|e| format!("bad PEM: {e}"))?,
        KeySource::PemFile(f) => {
            let text =
                std::fs::read(f).map_err(|e| meshgov_core::diag::io_message(f.display(), &e))?;
            pem_of(&text).map_err(|e| format!("bad PEM in `{}`: {e}", f.display()))?
        }
        KeySource::Components(c) => {
            let get = |n: &str| {
                c.get(n)
                    .map(String::as_str)
                    .ok_or_else(|| format!("{} key needs component `{n}`", k.alg))
            };
            match alg {
                Algorithm::EdDSA => DecodingKey::from_ed_components(get("x")?),
                Algorithm::ES256 => DecodingKey::from_ec_components(get("x")?, get("y")?),
                _ => DecodingKey::from_rsa_components(get("n")?, get("e")?),
            }
            .map_err(|e| format!("bad key components: {e}"))?
        }
    };
    Ok((alg, key))
}

/// The keys of one configured issuer (`at` names it in errors).
fn issuer_keys(
    at: &str,
    c: &IssuerConfig,
    allowed: &[Algorithm],
) -> Result<Keys, crate::config::ConfigError> {
    let fail = |key: String, reason: String| crate::config::ConfigError { key, reason };
    Ok(match &c.keys {
        IssuerKeys::Static(list) => {
            let mut keys = Vec::new();
            for (i, k) in list.iter().enumerate() {
                let (alg, key) = load_key(k).map_err(|r| fail(format!("{at}.keys[{i}]"), r))?;
                if !allowed.contains(&alg) {
                    return Err(fail(
                        format!("{at}.keys[{i}].alg"),
                        format!("`{}` is not among the issuer's `algorithms`", k.alg),
                    ));
                }
                keys.push(TrustedKey {
                    kid: k.kid.clone(),
                    alg,
                    key,
                });
            }
            Keys::Fixed(Arc::new(keys))
        }
        IssuerKeys::JwksFile(f) => {
            let doc = std::fs::read(f).map_err(|e| {
                fail(
                    format!("{at}.jwks_file"),
                    meshgov_core::diag::io_message(f.display(), &e),
                )
            })?;
            let (keys, _) = crate::jwks::parse_jwks(&doc, allowed)
                .map_err(|e| fail(format!("{at}.jwks_file"), format!("`{}`: {e}", f.display())))?;
            if keys.is_empty() {
                return Err(fail(
                    format!("{at}.jwks_file"),
                    format!("`{}` has no usable signature key", f.display()),
                ));
            }
            Keys::Fixed(Arc::new(keys))
        }
        IssuerKeys::Remote(endpoint) => Keys::Remote(Arc::new(
            RemoteKeys::new(endpoint.clone(), allowed.to_vec(), c.refresh)
                .map_err(|r| fail(at.to_string(), r))?,
        )),
    })
}

/// The value at a dotted `path` into nested objects.
fn claim_at<'a>(
    claims: &'a serde_json::Map<String, serde_json::Value>,
    path: &str,
) -> Option<&'a serde_json::Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

/// The `iss` of a token's payload, before any verification: it only
/// chooses which issuer's keys verify the token.
fn claimed_issuer(token: &str) -> Result<String, AuthError> {
    let payload = token.split('.').nth(1).ok_or(AuthError::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AuthError::Malformed)?;
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    match claims.get("iss") {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        None => Err(AuthError::MissingClaim("iss".into())),
        // An issuer is one string; the library would accept any of an
        // array's entries.
        Some(_) => Err(AuthError::BadClaim("iss".into())),
    }
}

impl Authenticator {
    /// Loads every issuer's keys; an error names the key (`auth.keys[i]`,
    /// `auth.issuers[i].jwks_file`, …). Keys from a provider are fetched
    /// once [`Self::spawn_key_refresh`]'s tasks run.
    pub fn new(cfg: &AuthConfig) -> Result<Authenticator, crate::config::ConfigError> {
        Ok(Authenticator {
            current: ArcSwap::from_pointee(Issuers::new(cfg, None)?),
        })
    }

    /// Replaces the `[auth]` in force with `cfg` (key files read again,
    /// tokens verified again; a provider's fetched keys are kept when its
    /// settings did not change), unless it does not load; returns
    /// what changed, in words. Run [`Self::spawn_key_refresh`] after it:
    /// the replaced issuers' refresh tasks end.
    pub fn reload(&self, cfg: &AuthConfig) -> Result<Vec<String>, crate::config::ConfigError> {
        let next = Issuers::new(cfg, Some(&self.current.load()))?;
        let changes = changes(&self.current.load().cfg, cfg);
        self.current.store(Arc::new(next));
        Ok(changes)
    }

    /// Starts the key refresh of each issuer whose keys come from its
    /// provider; each runs until `stop` turns true or a reload replaces it.
    pub fn spawn_key_refresh(
        &self,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        use tracing::Instrument as _;
        let st = self.current.load();
        st.remote_keys()
            .into_iter()
            .map(|(keys, issuer)| {
                let mut stop = stop.clone();
                let mut retired = st.retire.subscribe();
                let until = async move {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => {}
                        // Ends when the issuers are dropped.
                        () = async { while retired.changed().await.is_ok() {} } => {}
                    }
                };
                let span = tracing::info_span!("issuer_keys", issuer = %issuer);
                tokio::spawn(keys.run(until).instrument(span))
            })
            .collect()
    }

    /// What discovery tells consumers about each issuer.
    pub fn describe(&self) -> serde_json::Value {
        self.current.load().describe()
    }

    /// Issuers without usable keys, with why: `(issuer, reason)`.
    pub fn missing_keys(&self) -> Vec<(String, String)> {
        self.current.load().missing_keys()
    }

    /// Whether some issuer's tokens can be verified now.
    pub fn has_usable_keys(&self) -> bool {
        self.current.load().has_usable_keys()
    }

    /// `meshgov_sidecar_jwks_*`: fetches, keys and key-set age per issuer
    /// whose keys come from its provider.
    pub fn write_metrics(&self, e: &mut meshgov_metrics::Encoder) {
        self.current.load().write_metrics(e);
    }

    /// Verifies an `Authorization` header value. A token signed with a key
    /// its provider's key set lacks triggers one refetch of the set (see
    /// [`RemoteKeys::refetch_for_unknown_kid`]) and is then tried again.
    pub async fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Identity, AuthError> {
        self.current.load_full().authenticate(authorization).await
    }

    /// Verifies an `Authorization` header value at `now_unix` with the keys
    /// at hand; a token verified before under the same keys is only
    /// checked for expiry and not-before.
    pub fn authenticate_at(
        &self,
        authorization: Option<&[u8]>,
        now_unix: i64,
    ) -> Result<Identity, AuthError> {
        self.current.load().authenticate_at(authorization, now_unix)
    }
}

/// What differs between two `[auth]`s, in words.
fn changes(old: &AuthConfig, new: &AuthConfig) -> Vec<String> {
    let mut out = Vec::new();
    for n in &new.issuers {
        match old.issuers.iter().find(|o| o.issuer == n.issuer) {
            None => out.push(format!("issuer `{}` added", n.issuer)),
            Some(o) => {
                let differs: Vec<&str> = [
                    ("audience", o.audience != n.audience),
                    ("algorithms", o.algorithms != n.algorithms),
                    ("keys", o.keys != n.keys),
                    ("claim mapping", o.claims != n.claims),
                    ("key refresh", o.refresh != n.refresh),
                ]
                .into_iter()
                .filter_map(|(what, d)| d.then_some(what))
                .collect();
                if !differs.is_empty() {
                    out.push(format!(
                        "issuer `{}`: {} changed",
                        n.issuer,
                        differs.join(", ")
                    ));
                } else if !matches!(n.keys, IssuerKeys::Remote(_)) {
                    out.push(format!("issuer `{}`: key files read again", n.issuer));
                }
            }
        }
    }
    for o in &old.issuers {
        if !new.issuers.iter().any(|n| n.issuer == o.issuer) {
            out.push(format!("issuer `{}` removed", o.issuer));
        }
    }
    if old.leeway_seconds != new.leeway_seconds {
        out.push(format!(
            "leeway_seconds {} → {}",
            old.leeway_seconds, new.leeway_seconds
        ));
    }
    out
}

impl Issuers {
    /// Loads `cfg`. An issuer whose provider, algorithms and refresh are
    /// the same as in `previous` keeps its fetched keys, so a reload does
    /// not leave its tokens without keys until the next fetch.
    fn new(
        cfg: &AuthConfig,
        previous: Option<&Issuers>,
    ) -> Result<Issuers, crate::config::ConfigError> {
        let mut issuers = Vec::new();
        for (i, c) in cfg.issuers.iter().enumerate() {
            let at = if cfg.issuers.len() == 1 && matches!(c.keys, IssuerKeys::Static(_)) {
                "auth".to_string()
            } else {
                format!("auth.issuers[{i}]")
            };
            let algorithms = c
                .algorithms
                .iter()
                .map(|a| algorithm(a))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|reason| crate::config::ConfigError {
                    key: format!("{at}.algorithms"),
                    reason,
                })?;
            let kept = previous.and_then(|p| {
                // `issuers` holds `cfg.issuers`, in order.
                let (i, _) = p.issuers.iter().zip(&p.cfg.issuers).find(|(_, o)| {
                    o.issuer == c.issuer
                        && (&o.keys, &o.algorithms, o.refresh)
                            == (&c.keys, &c.algorithms, c.refresh)
                })?;
                match &i.keys {
                    Keys::Remote(r) => Some(Keys::Remote(Arc::clone(r))),
                    Keys::Fixed(_) => None,
                }
            });
            let keys = match kept {
                Some(k) => k,
                None => issuer_keys(&at, c, &algorithms)?,
            };
            issuers.push(Issuer {
                keys,
                issuer: c.issuer.clone(),
                audience: c.audience.clone(),
                algorithms,
                claims: c.claims.clone(),
            });
        }
        Ok(Issuers {
            issuers,
            verified: VerifiedCache::default(),
            leeway: cfg.leeway_seconds,
            cfg: cfg.clone(),
            retire: tokio::sync::watch::Sender::new(()),
        })
    }

    /// The keys that come from a provider, with their issuer.
    fn remote_keys(&self) -> Vec<(Arc<RemoteKeys>, String)> {
        self.issuers
            .iter()
            .filter_map(|i| match &i.keys {
                Keys::Remote(r) => Some((Arc::clone(r), i.issuer.clone())),
                Keys::Fixed(_) => None,
            })
            .collect()
    }

    fn describe(&self) -> serde_json::Value {
        let issuers: Vec<serde_json::Value> = self
            .issuers
            .iter()
            .map(|i| {
                let purpose = match &i.claims.purpose_scope_prefix {
                    Some(p) => serde_json::json!({"scope_prefix": p}),
                    None => serde_json::json!(i.claims.purpose_claim),
                };
                serde_json::json!({
                    "issuer": i.issuer,
                    "audience": i.audience,
                    "algorithms": i.algorithms.iter().map(|a| algorithm_name(*a)).collect::<Vec<_>>(),
                    "claims": {"subject": "sub", "groups": i.claims.groups_claims, "purpose": purpose},
                })
            })
            .collect();
        serde_json::Value::Array(issuers)
    }

    fn missing_keys(&self) -> Vec<(String, String)> {
        self.issuers
            .iter()
            .filter_map(|i| match &i.keys {
                Keys::Remote(r) if r.keys().is_empty() => Some((
                    i.issuer.clone(),
                    r.health()
                        .last_error
                        .unwrap_or_else(|| "the first fetch has not finished".into()),
                )),
                _ => None,
            })
            .collect()
    }

    fn has_usable_keys(&self) -> bool {
        self.issuers.iter().any(|i| !i.keys.current().is_empty())
    }

    fn write_metrics(&self, e: &mut meshgov_metrics::Encoder) {
        use meshgov_metrics::Type;
        let remote: Vec<(&str, &RemoteKeys)> = self
            .issuers
            .iter()
            .filter_map(|i| match &i.keys {
                Keys::Remote(r) => Some((i.issuer.as_str(), &**r)),
                Keys::Fixed(_) => None,
            })
            .collect();
        if remote.is_empty() {
            return;
        }
        e.family(
            "meshgov_sidecar_jwks_fetches_total",
            Type::Counter,
            "Fetches of an identity provider's keys, by issuer and outcome.",
        );
        for (iss, r) in &remote {
            let ok = r.fetches_ok.load(std::sync::atomic::Ordering::Relaxed);
            let failed = r.fetches_failed.load(std::sync::atomic::Ordering::Relaxed);
            e.sample(&[("issuer", iss), ("outcome", "ok")], ok);
            e.sample(&[("issuer", iss), ("outcome", "error")], failed);
        }
        e.family(
            "meshgov_sidecar_jwks_keys",
            Type::Gauge,
            "Usable keys in an issuer's key set (0: its tokens are refused).",
        );
        for (iss, r) in &remote {
            e.sample(&[("issuer", iss)], r.keys().len() as i64);
        }
        e.family(
            "meshgov_sidecar_jwks_age_seconds",
            Type::Gauge,
            "Seconds since an issuer's key set in use was fetched (absent before the first fetch).",
        );
        for (iss, r) in &remote {
            if let Some(t) = r.health().fetched_at {
                e.sample(&[("issuer", iss)], t.elapsed().as_secs_f64());
            }
        }
    }

    async fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Identity, AuthError> {
        let now = crate::clock::now_unix();
        match self.authenticate_at(authorization, now) {
            Err(AuthError::UnknownKey(i)) => {
                if let Some(Issuer {
                    keys: Keys::Remote(r),
                    ..
                }) = self.issuers.get(i)
                    && r.refetch_for_unknown_kid().await
                {
                    return self.authenticate_at(authorization, now);
                }
                Err(AuthError::UnknownKey(i))
            }
            r => r,
        }
    }

    fn authenticate_at(
        &self,
        authorization: Option<&[u8]>,
        now_unix: i64,
    ) -> Result<Identity, AuthError> {
        let raw = authorization.ok_or(AuthError::Missing)?;
        if raw.len() > MAX_TOKEN + 7 {
            return Err(AuthError::Malformed);
        }
        let text = std::str::from_utf8(raw).map_err(|_| AuthError::Malformed)?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .ok_or(AuthError::Missing)?
            .trim();
        if let Some(v) = self.verified.get(token)
            && self
                .issuers
                .get(v.issuer)
                .is_some_and(|i| i.keys.generation() == v.generation)
        {
            self.check_times(v.exp, v.nbf, now_unix)?;
            return Ok(v.identity);
        }
        // The header names the algorithm; `none` and symmetric algorithms
        // fail here or find no key below.
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Algorithm)?;
        let iss = claimed_issuer(token)?;
        let (index, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.issuer == iss)
            .ok_or(AuthError::Issuer)?;
        if !issuer.algorithms.contains(&header.alg) {
            return Err(AuthError::Algorithm);
        }
        let generation = issuer.keys.generation();
        let keys = issuer.keys.current();
        if keys.is_empty() {
            return Err(AuthError::NoKeys(issuer.issuer.clone()));
        }
        let candidates: Vec<&TrustedKey> = keys
            .iter()
            .filter(|k| k.alg == header.alg)
            .filter(|k| match (&k.kid, &header.kid) {
                (Some(want), Some(got)) => want == got,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(match (&issuer.keys, &header.kid) {
                (Keys::Remote(_), Some(_)) => AuthError::UnknownKey(index),
                _ => AuthError::Signature,
            });
        }
        let mut last = AuthError::Signature;
        for k in candidates {
            let mut v = Validation::new(k.alg);
            v.algorithms = vec![k.alg];
            v.set_issuer(&[&issuer.issuer]);
            v.set_audience(&[&issuer.audience]);
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            // `exp` and `nbf` are checked below against `now_unix`, the same
            // way for fresh and remembered tokens.
            v.validate_exp = false;
            v.validate_nbf = false;
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token, &k.key, &v,
            ) {
                Ok(data) => {
                    let (exp, nbf) = (
                        seconds(data.claims.get("exp")),
                        seconds(data.claims.get("nbf")),
                    );
                    let identity = self.identity(&issuer.claims, data.claims)?;
                    let exp = exp.ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
                    self.check_times(exp, nbf, now_unix)?;
                    self.verified.put(
                        token,
                        Verified {
                            identity: identity.clone(),
                            exp,
                            nbf,
                            issuer: index,
                            generation,
                        },
                    );
                    return Ok(identity);
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::InvalidSignature => AuthError::Signature,
                        K::InvalidIssuer => AuthError::Issuer,
                        K::InvalidAudience => AuthError::Audience,
                        K::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
                        K::InvalidAlgorithm | K::InvalidAlgorithmName => AuthError::Algorithm,
                        _ => AuthError::Malformed,
                    };
                    // A signature failure may be a rotated key: try the next.
                    if last != AuthError::Signature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    /// `exp` is exclusive of leeway-adjusted now; `nbf` may be up to the
    /// leeway in the future.
    fn check_times(&self, exp: i64, nbf: Option<i64>, now_unix: i64) -> Result<(), AuthError> {
        let leeway = i64::try_from(self.leeway).unwrap_or(i64::MAX);
        if exp < now_unix.saturating_sub(leeway) {
            return Err(AuthError::Expired);
        }
        if nbf.is_some_and(|nbf| nbf > now_unix.saturating_add(leeway)) {
            return Err(AuthError::NotYetValid);
        }
        Ok(())
    }

    fn identity(
        &self,
        map: &ClaimMapping,
        claims: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Identity, AuthError> {
        use serde_json::Value;
        // Belt and braces for claim type confusion: time claims must be numbers.
        for c in ["exp", "nbf", "iat"] {
            if claims.get(c).is_some_and(|v| !v.is_number()) {
                return Err(AuthError::BadClaim(c.into()));
            }
        }
        if !claims.get("iss").is_some_and(Value::is_string) {
            return Err(AuthError::BadClaim("iss".into()));
        }
        let sub = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => s.clone(),
            _ => return Err(AuthError::BadClaim("sub".into())),
        };
        let mut groups: Vec<String> = Vec::new();
        for path in &map.groups_claims {
            let bad = || AuthError::BadClaim(path.clone());
            let found: Vec<&str> = match claim_at(&claims, path) {
                None => continue,
                Some(Value::Array(a)) => a
                    .iter()
                    .map(Value::as_str)
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(bad)?,
                // `"fraud auditors"` is one group unless the issuer is known
                // to send a space-separated list.
                Some(Value::String(s)) if map.groups_space_separated => {
                    s.split_whitespace().collect()
                }
                Some(_) => return Err(bad()),
            };
            for g in found {
                let g = map
                    .groups_strip_prefix
                    .as_deref()
                    .and_then(|p| g.strip_prefix(p))
                    .unwrap_or(g);
                if !g.is_empty() && !groups.iter().any(|h| h == g) {
                    groups.push(g.to_string());
                }
            }
            if groups.len() > 256 {
                return Err(bad());
            }
        }
        let purpose = match &map.purpose_scope_prefix {
            Some(prefix) => {
                let scope = match claims.get("scope") {
                    Some(Value::String(s)) => s.as_str(),
                    None => return Err(AuthError::MissingClaim(format!("scope ({prefix}…)"))),
                    Some(_) => return Err(AuthError::BadClaim("scope".into())),
                };
                let mut found = scope
                    .split_whitespace()
                    .filter_map(|s| s.strip_prefix(prefix.as_str()));
                match (found.next(), found.next()) {
                    (Some(p), None) if !p.is_empty() => p.to_string(),
                    (None, _) => return Err(AuthError::MissingClaim(format!("scope ({prefix}…)"))),
                    _ => return Err(AuthError::BadClaim(format!("scope ({prefix}…)"))),
                }
            }
            None => match claim_at(&claims, &map.purpose_claim) {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                None => return Err(AuthError::MissingClaim(map.purpose_claim.clone())),
                Some(_) => return Err(AuthError::BadClaim(map.purpose_claim.clone())),
            },
        };
        Ok(Identity {
            principal: Principal {
                id: sub,
                groups,
                attrs: BTreeMap::new(),
            },
            purpose,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn setup() -> (Authenticator, Vec<u8>) {
        setup_with(false)
    }

    fn setup_with(groups_space_separated: bool) -> (Authenticator, Vec<u8>) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key());
        let cfg = AuthConfig {
            issuers: vec![IssuerConfig {
                issuer: "i".into(),
                audience: "a".into(),
                algorithms: vec!["EdDSA".into()],
                keys: IssuerKeys::Static(vec![KeyConfig {
                    kid: None,
                    alg: "EdDSA".into(),
                    source: KeySource::Components(BTreeMap::from([("x".to_string(), x)])),
                }]),
                claims: ClaimMapping {
                    groups_space_separated,
                    ..ClaimMapping::default()
                },
                refresh: crate::config::DEFAULT_REFRESH,
            }],
            leeway_seconds: 5,
        };
        (Authenticator::new(&cfg).unwrap(), pkcs8.as_ref().to_vec())
    }

    fn bearer(pkcs8: &[u8], claims: serde_json::Value) -> Vec<u8> {
        let t = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::EdDSA),
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_der(pkcs8),
        )
        .unwrap();
        format!("Bearer {t}").into_bytes()
    }

    #[test]
    fn remembered_tokens_still_expire_and_altered_ones_are_verified_in_full() {
        let (auth, key) = setup();
        let now = 1_800_000_000;
        let claims = serde_json::json!({"iss": "i", "aud": "a", "sub": "s", "purpose": "p",
            "groups": ["g"], "nbf": now - 10, "exp": now + 100});
        let t = bearer(&key, claims);
        let first = auth.authenticate_at(Some(&t), now).unwrap();
        assert_eq!(auth.authenticate_at(Some(&t), now + 1).unwrap(), first);
        assert_eq!(auth.authenticate_at(Some(&t), now + 105), Ok(first));
        assert_eq!(
            auth.authenticate_at(Some(&t), now + 106),
            Err(AuthError::Expired)
        );
        assert_eq!(
            auth.authenticate_at(Some(&t), now - 16),
            Err(AuthError::NotYetValid)
        );
        // Flip one signature character: not a cache hit, and it fails.
        let mut forged = t.clone();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            auth.authenticate_at(Some(&forged), now),
            Err(AuthError::Signature)
        );
    }

    #[test]
    fn fresh_tokens_check_times_against_the_given_clock() {
        let (auth, key) = setup();
        let now = 1_800_000_000;
        let t = bearer(
            &key,
            serde_json::json!({"iss": "i", "aud": "a", "sub": "s", "purpose": "p", "exp": now - 6}),
        );
        assert_eq!(auth.authenticate_at(Some(&t), now), Err(AuthError::Expired));
        let t = bearer(
            &key,
            serde_json::json!({"iss": "i", "aud": "a", "sub": "s", "purpose": "p",
                "nbf": now + 6, "exp": now + 60}),
        );
        assert_eq!(
            auth.authenticate_at(Some(&t), now),
            Err(AuthError::NotYetValid)
        );
        // Not remembered while not yet valid: later it verifies in full.
        assert!(auth.authenticate_at(Some(&t), now + 1).is_ok());
        let t = bearer(
            &key,
            serde_json::json!({"iss": "i", "aud": "a", "sub": "s", "purpose": "p", "exp": "9999999999"}),
        );
        // A string `exp` is refused (the library reports it as missing).
        assert!(matches!(
            auth.authenticate_at(Some(&t), now),
            Err(AuthError::MissingClaim(c) | AuthError::BadClaim(c)) if c == "exp"
        ));
    }

    #[test]
    fn a_string_groups_claim_is_one_group_name_refused_unless_configured_as_a_list() {
        let now = 1_800_000_000;
        let claims = serde_json::json!({"iss": "i", "aud": "a", "sub": "s", "purpose": "p",
            "groups": "fraud auditors", "exp": now + 100});
        let (strict, key) = setup();
        let t = bearer(&key, claims.clone());
        assert_eq!(
            strict.authenticate_at(Some(&t), now),
            Err(AuthError::BadClaim("groups".into()))
        );
        let (lists, key) = setup_with(true);
        let t = bearer(&key, claims);
        let who = lists.authenticate_at(Some(&t), now).unwrap();
        assert_eq!(who.principal.groups, ["fraud", "auditors"]);
    }

    #[test]
    fn an_issuer_given_as_an_array_is_refused() {
        let (auth, key) = setup();
        let now = 1_800_000_000;
        for iss in [serde_json::json!(["i"]), serde_json::json!(["x", "i"])] {
            let t = bearer(
                &key,
                serde_json::json!({"iss": iss, "aud": "a", "sub": "s", "purpose": "p", "exp": now + 100}),
            );
            let got = auth.authenticate_at(Some(&t), now);
            assert!(
                matches!(&got, Err(AuthError::BadClaim(c)) if c == "iss")
                    || got == Err(AuthError::Issuer),
                "{iss}: {got:?}"
            );
        }
    }

    /// A Keycloak-shaped and an Entra-shaped claim set, each through its
    /// issuer's mapping.
    #[test]
    fn claims_map_from_nested_paths_several_claims_and_scopes() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key());
        let key = || {
            IssuerKeys::Static(vec![KeyConfig {
                kid: None,
                alg: "EdDSA".into(),
                source: KeySource::Components(BTreeMap::from([("x".to_string(), x.clone())])),
            }])
        };
        let issuer = |iss: &str, claims: ClaimMapping| IssuerConfig {
            issuer: iss.into(),
            audience: "a".into(),
            algorithms: vec!["EdDSA".into()],
            keys: key(),
            claims,
            refresh: crate::config::DEFAULT_REFRESH,
        };
        let auth = Authenticator::new(&AuthConfig {
            issuers: vec![
                issuer(
                    "https://kc",
                    ClaimMapping {
                        groups_claims: vec![
                            "realm_access.roles".into(),
                            "resource_access.meshgov.roles".into(),
                            "groups".into(),
                        ],
                        groups_strip_prefix: Some("/".into()),
                        purpose_scope_prefix: Some("purpose:".into()),
                        ..ClaimMapping::default()
                    },
                ),
                issuer(
                    "https://entra",
                    ClaimMapping {
                        groups_claims: vec!["roles".into()],
                        purpose_claim: "ext.purpose".into(),
                        ..ClaimMapping::default()
                    },
                ),
            ],
            leeway_seconds: 5,
        })
        .unwrap();
        let now = 1_800_000_000;
        let kc = serde_json::json!({"iss": "https://kc", "aud": "a", "sub": "mia", "exp": now + 60,
            "realm_access": {"roles": ["marketing", "offline_access"]},
            "resource_access": {"meshgov": {"roles": ["fraud"]}, "other": {"roles": ["admin"]}},
            "groups": ["/marketing", "/data-science"],
            "scope": "openid profile purpose:campaign-analytics"});
        let who = auth
            .authenticate_at(Some(&bearer(pkcs8.as_ref(), kc.clone())), now)
            .unwrap();
        assert_eq!(
            who.principal.groups,
            ["marketing", "offline_access", "fraud", "data-science"]
        );
        assert_eq!(who.purpose, "campaign-analytics");
        // No purpose scope, or two, is refused; so is a role list of
        // objects.
        for (path, value, want) in [
            (
                "scope",
                serde_json::json!("openid"),
                AuthError::MissingClaim("scope (purpose:…)".into()),
            ),
            (
                "scope",
                serde_json::json!("purpose:a purpose:b"),
                AuthError::BadClaim("scope (purpose:…)".into()),
            ),
            (
                "realm_access",
                serde_json::json!({"roles": [{"name": "x"}]}),
                AuthError::BadClaim("realm_access.roles".into()),
            ),
        ] {
            let mut c = kc.clone();
            c[path] = value;
            assert_eq!(
                auth.authenticate_at(Some(&bearer(pkcs8.as_ref(), c)), now),
                Err(want)
            );
        }
        let entra = serde_json::json!({"iss": "https://entra", "aud": "a", "sub": "oid-1", "exp": now + 60,
            "roles": ["fraud"], "ext": {"purpose": "fraud-investigation"}, "groups": ["ignored"]});
        let who = auth
            .authenticate_at(Some(&bearer(pkcs8.as_ref(), entra)), now)
            .unwrap();
        assert_eq!(who.principal.groups, ["fraud"]);
        assert_eq!(who.purpose, "fraud-investigation");
        // An issuer nobody configured.
        let other = serde_json::json!({"iss": "https://other", "aud": "a", "sub": "s", "exp": now + 60, "purpose": "p"});
        assert_eq!(
            auth.authenticate_at(Some(&bearer(pkcs8.as_ref(), other)), now),
            Err(AuthError::Issuer)
        );
    }

    #[test]
    fn a_jwks_file_issuer_verifies_with_its_keys_and_algorithms() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("jwks.json");
        std::fs::write(
            &f,
            serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": x}]})
                .to_string(),
        )
        .unwrap();
        let cfg = |algorithms: &[&str]| AuthConfig {
            issuers: vec![IssuerConfig {
                issuer: "i".into(),
                audience: "a".into(),
                algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
                keys: IssuerKeys::JwksFile(f.clone()),
                claims: ClaimMapping::default(),
                refresh: crate::config::DEFAULT_REFRESH,
            }],
            leeway_seconds: 5,
        };
        let auth = Authenticator::new(&cfg(&["EdDSA"])).unwrap();
        let now = 1_800_000_000;
        let claims = serde_json::json!({"iss": "i", "aud": "a", "sub": "s", "purpose": "p", "exp": now + 60});
        let mut h = jsonwebtoken::Header::new(Algorithm::EdDSA);
        h.kid = Some("k1".into());
        let t = jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref()),
        )
        .unwrap();
        assert!(
            auth.authenticate_at(Some(format!("Bearer {t}").as_bytes()), now)
                .is_ok()
        );
        h.kid = Some("k2".into());
        let t = jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref()),
        )
        .unwrap();
        assert_eq!(
            auth.authenticate_at(Some(format!("Bearer {t}").as_bytes()), now),
            Err(AuthError::Signature)
        );
        // A file with no key of the issuer's algorithms is a config error.
        let e = Authenticator::new(&cfg(&["RS256"])).err().unwrap();
        assert_eq!(e.key, "auth.issuers[0].jwks_file");
    }
}
