//! Consumer JWTs for local use, demos and the live suite (`meshgov token`
//! prints one).
//!
//! A development aid, not an identity provider: in production consumer
//! tokens come from the organisation's IdP, and sidecars trust its keys.
//! The claims are the ones the sidecar reads by default: `iss`, `aud`,
//! `sub`, `groups` (an array), `purpose`, `iat`, `nbf` and `exp`.

use crate::Failure;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::path::Path;

/// The longest lifetime a minted token may have (one week).
pub const MAX_TTL_SECONDS: u64 = 7 * 24 * 3600;

/// The `iss` claim `meshgov token` and the demo use by default.
pub const DEFAULT_ISSUER: &str = "https://idp.media.example";
/// The `aud` claim `meshgov token` and the demo use by default.
pub const DEFAULT_AUDIENCE: &str = "meshgov";

/// What a sidecar's `[auth]` section expects of a token besides its
/// subject: the claims and header it checks, and the claim names it reads.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct Issuer {
    /// The `iss` claim; must equal the sidecar's `auth.issuer`.
    #[cfg_attr(feature = "clap", arg(long, default_value = DEFAULT_ISSUER))]
    pub issuer: String,
    /// The `aud` claim; must equal the sidecar's `auth.audience`.
    #[cfg_attr(feature = "clap", arg(long, default_value = DEFAULT_AUDIENCE))]
    pub audience: String,
    /// EdDSA, ES256 or RS256.
    #[cfg_attr(feature = "clap", arg(long, default_value = "EdDSA"))]
    pub alg: String,
    /// A `kid` header, if the sidecar's key entry names one.
    #[cfg_attr(feature = "clap", arg(long))]
    pub kid: Option<String>,
    /// The groups claim name (the sidecar's `auth.groups_claim`).
    #[cfg_attr(feature = "clap", arg(long, default_value = "groups"))]
    pub groups_claim: String,
    /// The purpose claim name (the sidecar's `auth.purpose_claim`).
    #[cfg_attr(feature = "clap", arg(long, default_value = "purpose"))]
    pub purpose_claim: String,
}

impl Default for Issuer {
    fn default() -> Self {
        Issuer {
            issuer: DEFAULT_ISSUER.into(),
            audience: DEFAULT_AUDIENCE.into(),
            alg: "EdDSA".into(),
            kid: None,
            groups_claim: "groups".into(),
            purpose_claim: "purpose".into(),
        }
    }
}

pub struct TokenArgs<'a> {
    pub key: &'a Path,
    pub sub: &'a str,
    pub groups: &'a [String],
    pub purpose: &'a str,
    pub issuer: &'a Issuer,
    pub ttl: u64,
    pub now_unix: i64,
}

/// The signed token, and for EdDSA keys the public key a sidecar verifies
/// it with.
pub struct Minted {
    pub token: String,
    pub eddsa_public_key: Option<Vec<u8>>,
}

/// Signs the claims with the private key file. Pure apart from reading it.
pub fn mint(a: &TokenArgs<'_>) -> Result<Minted, Failure> {
    let pem = std::fs::read_to_string(a.key).map_err(|e| Failure::io(a.key, &e))?;
    mint_pem(&pem, a)
}

/// Signs the claims with `pem`, the text of the key `a.key` names.
pub fn mint_pem(pem: &str, a: &TokenArgs<'_>) -> Result<Minted, Failure> {
    let bad_key = |what: &str| {
        Failure::usage(format!(
            "`{}` is not {what}; `meshgov keygen --out FILE` writes an Ed25519 one",
            a.key.display()
        ))
    };
    let (alg, key) = match a.issuer.alg.as_str() {
        "EdDSA" => (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(pem.as_bytes())
                .map_err(|_| bad_key("an Ed25519 PKCS#8 PEM private key"))?,
        ),
        "ES256" => (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(pem.as_bytes())
                .map_err(|_| bad_key("a P-256 PKCS#8 PEM private key"))?,
        ),
        "RS256" => (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(pem.as_bytes())
                .map_err(|_| bad_key("an RSA PEM private key"))?,
        ),
        other => {
            return Err(Failure::usage(format!(
                "--alg `{other}` is not supported; use EdDSA, ES256 or RS256"
            )));
        }
    };
    if a.sub.is_empty() {
        return Err(Failure::usage("--sub must not be empty"));
    }
    if a.purpose.is_empty() {
        return Err(Failure::usage("--purpose must not be empty"));
    }
    if a.ttl == 0 || a.ttl > MAX_TTL_SECONDS {
        return Err(Failure::usage(format!(
            "--ttl must be between 1 and {MAX_TTL_SECONDS} seconds"
        )));
    }
    let exp = a
        .now_unix
        .saturating_add(i64::try_from(a.ttl).unwrap_or(i64::MAX));
    let mut claims = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        claims.insert(k.to_string(), v);
    };
    let i = a.issuer;
    put("iss", i.issuer.as_str().into());
    put("aud", i.audience.as_str().into());
    put("sub", a.sub.into());
    put("iat", a.now_unix.into());
    put("nbf", a.now_unix.into());
    put("exp", exp.into());
    put(&i.groups_claim, a.groups.into());
    put(&i.purpose_claim, a.purpose.into());
    let mut header = Header::new(alg);
    header.kid = i.kid.clone();
    let token = jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|e| Failure::usage(format!("cannot sign the token: {e}")))?;
    let eddsa_public_key = (alg == Algorithm::EdDSA)
        .then(|| meshgov_bundle::SigningKey::from_pkcs8_pem(pem).ok())
        .flatten()
        .map(|k| k.public_key().as_bytes().to_vec());
    Ok(Minted {
        token,
        eddsa_public_key,
    })
}
