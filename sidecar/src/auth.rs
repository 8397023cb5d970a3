//! Consumer identity: a bearer JWT from a trusted issuer.
//!
//! Only asymmetric algorithms are accepted (EdDSA, ES256, RS256), and each
//! configured key is bound to exactly one algorithm. A token is verified
//! only against keys whose algorithm equals the token's `alg`, and the
//! validation allows that algorithm alone, so `alg: none`, `HS256` signed
//! with a public key, or an RS256 token against an EC key are all refused.
//! `iss`, `aud`, `exp` and `sub` are required; `nbf` is checked when present.

use crate::config::{AuthConfig, KeyConfig, KeySource};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use meshgov_core::Principal;
use std::collections::BTreeMap;

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

/// Verifies consumer tokens. Built once from config.
pub struct Authenticator {
    keys: Vec<TrustedKey>,
    issuer: String,
    audience: String,
    groups_claim: String,
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
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            groups_claim: cfg.groups_claim.clone(),
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
            v.validate_exp = true;
            v.validate_nbf = true;
            v.leeway = self.leeway;
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token, &k.key, &v,
            ) {
                Ok(data) => return self.identity(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::InvalidSignature => AuthError::Signature,
                        K::ExpiredSignature => AuthError::Expired,
                        K::ImmatureSignature => AuthError::NotYetValid,
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
            Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
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
