//! Consumer identity: a bearer JWT from a trusted issuer.
//!
//! Only asymmetric algorithms are accepted (EdDSA, ES256, RS256), and each
//! configured key is bound to exactly one algorithm. A token is verified
//! only against keys whose algorithm equals the token's `alg`, and the
//! validation allows that algorithm alone, so `alg: none`, `HS256` signed
//! with a public key, or an RS256 token against an EC key are all refused.
//! `iss`, `aud`, `exp` and `sub` are required; `nbf` is checked when present.
//!
//! Verified tokens are remembered (see [`VerifiedCache`]): a consumer sends
//! the same token with every request until it expires, and the signature
//! check is most of the per-request cost of authentication.

use crate::config::{AuthConfig, KeyConfig, KeySource};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use meshgov_core::Principal;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

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
    #[error("the token's algorithm is not accepted; use EdDSA, ES256 or RS256")]
    Algorithm,
    #[error("the token's signature does not verify against any trusted key")]
    Signature,
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

struct TrustedKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Tokens whose signature, issuer and audience verified, by their exact
/// text, with the time claims to re-check on every use.
///
/// Only a successful verification inserts; a hit requires the identical
/// token string, so a changed byte is a miss and is verified in full.
/// `exp` and `nbf` are checked against the clock at each use, exactly as
/// the full path does. Bounded: at most [`VERIFIED_CACHE_ENTRIES`] tokens
/// of at most [`VERIFIED_CACHE_MAX_TOKEN`] bytes; a full cache starts over.
// INVARIANT: the trusted keys, issuer and audience are fixed for the
// Authenticator's life (config is read once). If keys ever reload, the
// cache must be dropped with them.
#[derive(Default)]
struct VerifiedCache {
    tokens: Mutex<HashMap<Box<str>, Verified>>,
}

#[derive(Clone)]
struct Verified {
    identity: Identity,
    exp: i64,
    nbf: Option<i64>,
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

/// Verifies consumer tokens. Built once from config.
pub struct Authenticator {
    keys: Vec<TrustedKey>,
    verified: VerifiedCache,
    issuer: String,
    audience: String,
    groups_claim: String,
    /// Whether a string `groups` claim is a space-separated list (an
    /// array is always accepted); otherwise a string is refused.
    groups_space_separated: bool,
    purpose_claim: String,
    leeway: u64,
}

/// The longest token accepted, in bytes.
pub const MAX_TOKEN: usize = 8 * 1024;

fn load_key(k: &KeyConfig) -> Result<(Algorithm, DecodingKey), String> {
    let alg = match k.alg.as_str() {
        "EdDSA" => Algorithm::EdDSA,
        "ES256" => Algorithm::ES256,
        "RS256" => Algorithm::RS256,
        other => return Err(format!("unsupported algorithm `{other}`")),
    };
    let pem_of = |pem: &[u8]| match alg {
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
        _ => DecodingKey::from_rsa_pem(pem),
    };
    let key = match &k.source {
        KeySource::Pem(p) => pem_of(p.as_bytes()).map_err(|e| format!("bad PEM: {e}"))?,
        KeySource::PemFile(f) => {
            let text =
                std::fs::read(f).map_err(|e| format!("cannot read `{}`: {e}", f.display()))?;
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

impl Authenticator {
    /// Loads every key; an error names the key's index (`auth.keys[i]`).
    pub fn new(cfg: &AuthConfig) -> Result<Authenticator, crate::config::ConfigError> {
        let mut keys = Vec::new();
        for (i, k) in cfg.keys.iter().enumerate() {
            let (alg, key) = load_key(k).map_err(|reason| crate::config::ConfigError {
                key: format!("auth.keys[{i}]"),
                reason,
            })?;
            keys.push(TrustedKey {
                kid: k.kid.clone(),
                alg,
                key,
            });
        }
        Ok(Authenticator {
            keys,
            verified: VerifiedCache::default(),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            groups_claim: cfg.groups_claim.clone(),
            groups_space_separated: cfg.groups_space_separated,
            purpose_claim: cfg.purpose_claim.clone(),
            leeway: cfg.leeway_seconds,
        })
    }

    /// The accepted algorithms, for discovery.
    pub fn algorithms(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self
            .keys
            .iter()
            .map(|k| match k.alg {
                Algorithm::EdDSA => "EdDSA",
                Algorithm::ES256 => "ES256",
                _ => "RS256",
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }
    pub fn audience(&self) -> &str {
        &self.audience
    }
    pub fn groups_claim(&self) -> &str {
        &self.groups_claim
    }
    pub fn purpose_claim(&self) -> &str {
        &self.purpose_claim
    }

    /// Verifies an `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Identity, AuthError> {
        self.authenticate_at(authorization, crate::clock::now_unix())
    }

    /// Verifies an `Authorization` header value at `now_unix`; a token
    /// verified before is only checked for expiry and not-before.
    pub fn authenticate_at(
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
        if let Some(v) = self.verified.get(token) {
            self.check_times(v.exp, v.nbf, now_unix)?;
            return Ok(v.identity);
        }
        // The header names the algorithm; `none` and symmetric algorithms
        // fail here or find no key below.
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Algorithm)?;
        let mut last = AuthError::Algorithm;
        for k in self.keys.iter().filter(|k| k.alg == header.alg) {
            if let (Some(want), Some(got)) = (&k.kid, &header.kid)
                && want != got
            {
                continue;
            }
            let mut v = Validation::new(k.alg);
            v.algorithms = vec![k.alg];
            v.set_issuer(&[&self.issuer]);
            v.set_audience(&[&self.audience]);
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
                    let identity = self.identity(data.claims)?;
                    let exp = exp.ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
                    self.check_times(exp, nbf, now_unix)?;
                    self.verified.put(
                        token,
                        Verified {
                            identity: identity.clone(),
                            exp,
                            nbf,
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
        claims: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Identity, AuthError> {
        use serde_json::Value;
        // Belt and braces for claim type confusion: time claims must be numbers.
        for c in ["exp", "nbf", "iat"] {
            if claims.get(c).is_some_and(|v| !v.is_number()) {
                return Err(AuthError::BadClaim(c.into()));
            }
        }
        // An issuer is one string; the library would accept any of an
        // array's entries.
        if !claims.get("iss").is_some_and(Value::is_string) {
            return Err(AuthError::BadClaim("iss".into()));
        }
        let sub = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => s.clone(),
            _ => return Err(AuthError::BadClaim("sub".into())),
        };
        let groups = match claims.get(&self.groups_claim) {
            None => vec![],
            Some(Value::Array(a)) => a
                .iter()
                .map(|g| g.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| AuthError::BadClaim(self.groups_claim.clone()))?,
            // `"fraud auditors"` is one group unless the issuer is known
            // to send a space-separated list.
            Some(Value::String(s)) if self.groups_space_separated => {
                s.split_whitespace().map(str::to_string).collect()
            }
            Some(_) => return Err(AuthError::BadClaim(self.groups_claim.clone())),
        };
        if groups.len() > 256 {
            return Err(AuthError::BadClaim(self.groups_claim.clone()));
        }
        let purpose = match claims.get(&self.purpose_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            None => return Err(AuthError::MissingClaim(self.purpose_claim.clone())),
            Some(_) => return Err(AuthError::BadClaim(self.purpose_claim.clone())),
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
    use base64::Engine as _;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn setup() -> (Authenticator, Vec<u8>) {
        setup_with(false)
    }

    fn setup_with(groups_space_separated: bool) -> (Authenticator, Vec<u8>) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key());
        let cfg = AuthConfig {
            issuer: "i".into(),
            audience: "a".into(),
            groups_claim: "groups".into(),
            groups_space_separated,
            purpose_claim: "purpose".into(),
            leeway_seconds: 5,
            keys: vec![KeyConfig {
                kid: None,
                alg: "EdDSA".into(),
                source: KeySource::Components(BTreeMap::from([("x".to_string(), x)])),
            }],
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
}
