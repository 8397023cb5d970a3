//! Consumer JWTs in `Authorization` headers (`meshgov_sidecar::auth`), with
//! an EdDSA key and an RS256 key trusted, as a sidecar is configured.
//!
//! Mode byte % 4:
//! - 0: the rest is the raw header value. Whatever is accepted must be an
//!   `EdDSA` or `RS256` JWT whose signature verifies under a trusted key
//!   (checked here with `ring`, apart from the crate's decoder) and whose
//!   `iss`, `aud` and `exp` are the trusted issuer, audience and not past.
//! - 1: the rest is a claim set (JSON), signed here with the trusted EdDSA
//!   key: reaches the claim checks. What is accepted has the right `iss`,
//!   `aud`, `sub` and `purpose`.
//! - 2: the claim set signed with HS256 using the RS256 public key PEM as
//!   the HMAC secret (algorithm confusion): always refused.
//! - 3: the claim set with `alg: none` and no signature: always refused.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64U;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use meshgov_fuzz::{AUDIENCE, ISSUER, NOW, TEST_KEY_PEM, repo, split_mode, test_public_key};
use meshgov_sidecar::auth::Authenticator;
use meshgov_sidecar::config::{
    AuthConfig, ClaimMapping, DEFAULT_REFRESH, IssuerConfig, IssuerKeys, KeyConfig, KeySource,
};
use std::collections::BTreeMap;
use std::sync::LazyLock;

const LEEWAY: i64 = 30;

static RSA_PUBLIC_PEM: LazyLock<String> = LazyLock::new(|| {
    let p = repo().join("sidecar/tests/fixtures/rs256-test.pub.pem");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
});

static AUTH: LazyLock<Authenticator> = LazyLock::new(|| {
    let cfg = AuthConfig {
        issuers: vec![IssuerConfig {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            algorithms: vec!["EdDSA".into(), "RS256".into()],
            keys: IssuerKeys::Static(vec![
                KeyConfig {
                    kid: None,
                    alg: "EdDSA".into(),
                    source: KeySource::Components(BTreeMap::from([(
                        "x".to_string(),
                        B64U.encode(test_public_key().as_bytes()),
                    )])),
                },
                KeyConfig {
                    kid: Some("rsa".into()),
                    alg: "RS256".into(),
                    source: KeySource::Pem(RSA_PUBLIC_PEM.clone()),
                },
            ]),
            // The defaults: `groups` and `purpose`; a string groups claim
            // is refused.
            claims: ClaimMapping::default(),
            refresh: DEFAULT_REFRESH,
        }],
        leeway_seconds: LEEWAY as u64,
    };
    Authenticator::new(&cfg).unwrap_or_else(|e| panic!("auth config: {e}"))
});

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = split_mode(data) else {
        return;
    };
    let auth = &*AUTH;
    if mode % 4 == 0 {
        if auth.authenticate_at(Some(rest), NOW).is_ok() {
            assert!(
                independently_valid(rest),
                "accepted a token that is not signed by a trusted key for this issuer and audience"
            );
        }
        return;
    }
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(rest) else {
        return;
    };
    let token = match mode % 4 {
        1 => {
            let Ok(key) = EncodingKey::from_ed_pem(TEST_KEY_PEM.as_bytes()) else {
                panic!("the TEST-ONLY key is not an Ed25519 PEM");
            };
            match jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key) {
                Ok(t) => t,
                Err(_) => return,
            }
        }
        2 => {
            let key = EncodingKey::from_secret(RSA_PUBLIC_PEM.as_bytes());
            match jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key) {
                Ok(t) => t,
                Err(_) => return,
            }
        }
        _ => format!(
            "{}.{}.",
            B64U.encode(br#"{"alg":"none","typ":"JWT"}"#),
            B64U.encode(claims.to_string())
        ),
    };
    let result = auth.authenticate_at(Some(format!("Bearer {token}").as_bytes()), NOW);
    match (mode % 4, result) {
        (1, Ok(identity)) => {
            assert_eq!(claims["iss"], ISSUER);
            assert!(
                audience_ok(&claims["aud"]),
                "accepted audience {}",
                claims["aud"]
            );
            assert_eq!(claims["sub"], identity.principal.id.as_str());
            assert_eq!(claims["purpose"], identity.purpose.as_str());
        }
        (2 | 3, Ok(_)) => panic!("accepted an unsigned or HS256 token: {token}"),
        _ => {}
    }
});

fn audience_ok(aud: &serde_json::Value) -> bool {
    match aud {
        serde_json::Value::String(s) => s == AUDIENCE,
        serde_json::Value::Array(a) => a.iter().any(|v| v == AUDIENCE),
        _ => false,
    }
}

/// The token verifies under a trusted key with its own algorithm, and its
/// claims name the trusted issuer and audience and have not expired.
fn independently_valid(header_value: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(header_value) else {
        return false;
    };
    let Some(token) = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .map(str::trim)
    else {
        return false;
    };
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts.as_slice() else {
        return false;
    };
    let decode = |x: &str| B64U.decode(x).ok();
    let (Some(h_raw), Some(p_raw), Some(sig)) = (decode(h), decode(p), decode(s)) else {
        return false;
    };
    let Ok(header) = serde_json::from_slice::<serde_json::Value>(&h_raw) else {
        return false;
    };
    let signed = format!("{h}.{p}");
    let verified = match header["alg"].as_str() {
        Some("EdDSA") => ring::signature::UnparsedPublicKey::new(
            &ring::signature::ED25519,
            test_public_key().as_bytes(),
        )
        .verify(signed.as_bytes(), &sig)
        .is_ok(),
        Some("RS256") => rsa_verifies(signed.as_bytes(), &sig),
        _ => false,
    };
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(&p_raw) else {
        return false;
    };
    verified
        && claims["iss"] == ISSUER
        && audience_ok(&claims["aud"])
        && claims["exp"]
            .as_f64()
            .is_some_and(|e| e >= (NOW - LEEWAY) as f64)
}

/// RS256 over the fixture's public key (SubjectPublicKeyInfo PEM).
fn rsa_verifies(message: &[u8], sig: &[u8]) -> bool {
    let b64: String = RSA_PUBLIC_PEM
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let Ok(spki) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return false;
    };
    // The RSAPublicKey is the SPKI's BIT STRING; ring takes it without the
    // 24-byte algorithm header of a 2048-bit key's SPKI.
    let Some(rsa) = spki.get(24..) else {
        return false;
    };
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, rsa)
        .verify(message, sig)
        .is_ok()
}
