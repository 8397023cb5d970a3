//! Control tokens: how the engine proves itself on a sidecar's control port.
//!
//! A control token is a short-lived claim set signed with a governance key,
//! the same Ed25519 key that signs bundles, so a sidecar that trusts a key
//! for bundles trusts it for control calls and needs no second secret.
//!
//! Text form: `mgc1.<base64url(claims JSON)>.<base64url(signature)>`. The
//! signature covers the DSSE pre-authentication encoding of the claims under
//! [`CONTROL_TOKEN_TYPE`], so neither a bundle signature nor any other DSSE
//! signature can be replayed as a token, and a consumer JWT (three
//! dot-separated parts, another audience) is never one.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::{Deserialize, Serialize};

use crate::envelope::pae;
use crate::key::{SigningKey, TrustStore};

/// The DSSE payload type control-token signatures are made under.
pub const CONTROL_TOKEN_TYPE: &str = "application/vnd.meshgov.control-token+json;version=1";
/// The audience every control token names. Consumer tokens carry another
/// audience (and another format), so they never pass.
pub const CONTROL_AUDIENCE: &str = "meshgov-control";
/// The longest lifetime a verifier accepts: 10 minutes.
pub const MAX_CONTROL_TOKEN_TTL_SECS: i64 = 600;
/// Clock skew tolerated on `iat` and `exp`.
pub const CONTROL_TOKEN_SKEW_SECS: i64 = 30;
const PREFIX: &str = "mgc1.";
/// Tokens longer than this are refused before decoding.
const MAX_TOKEN_BYTES: usize = 4096;

/// What a control token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlClaims {
    /// Always [`CONTROL_AUDIENCE`].
    pub aud: String,
    /// Who asks, e.g. `meshgov-engine`; for logs.
    pub sub: String,
    /// The signing key's id.
    pub kid: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expires at, unix seconds.
    pub exp: i64,
}

/// Why a control token was refused. Messages are lowercase and name no
/// secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlTokenError {
    #[error("not a control token (expected `mgc1.<claims>.<signature>`)")]
    Malformed,
    #[error("the control token's audience is `{0}`, expected `{CONTROL_AUDIENCE}`")]
    WrongAudience(String),
    #[error("the control token is signed by key `{0}`, which this sidecar does not trust")]
    UntrustedKey(String),
    #[error("the control token's signature does not verify")]
    BadSignature,
    #[error("the control token has expired")]
    Expired,
    #[error("the control token is issued in the future; check the clocks")]
    NotYetValid,
    #[error("the control token lives longer than {MAX_CONTROL_TOKEN_TTL_SECS} seconds")]
    TooLong,
}

/// Mints a token for `sub` valid from `now_unix` for `ttl_secs` (clamped to
/// [`MAX_CONTROL_TOKEN_TTL_SECS`]).
pub fn mint_control_token(key: &SigningKey, sub: &str, now_unix: i64, ttl_secs: i64) -> String {
    let claims = ControlClaims {
        aud: CONTROL_AUDIENCE.to_owned(),
        sub: sub.to_owned(),
        kid: key.keyid(),
        iat: now_unix,
        exp: now_unix.saturating_add(ttl_secs.clamp(1, MAX_CONTROL_TOKEN_TTL_SECS)),
    };
    let json = serde_json::to_vec(&claims).unwrap_or_default();
    let sig = key.sign(&pae(CONTROL_TOKEN_TYPE, &json));
    format!("{PREFIX}{}.{}", B64URL.encode(&json), B64URL.encode(sig))
}

/// Verifies a control token against the trusted governance keys at
/// `now_unix`. Fails closed: anything unexpected is a refusal.
pub fn verify_control_token(
    token: &str,
    trust: &TrustStore,
    now_unix: i64,
) -> Result<ControlClaims, ControlTokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(ControlTokenError::Malformed);
    }
    let rest = token
        .strip_prefix(PREFIX)
        .ok_or(ControlTokenError::Malformed)?;
    let (claims_b64, sig_b64) = rest.split_once('.').ok_or(ControlTokenError::Malformed)?;
    let json = B64URL
        .decode(claims_b64)
        .map_err(|_| ControlTokenError::Malformed)?;
    let sig = B64URL
        .decode(sig_b64)
        .map_err(|_| ControlTokenError::Malformed)?;
    let claims: ControlClaims =
        serde_json::from_slice(&json).map_err(|_| ControlTokenError::Malformed)?;
    let key = trust
        .get(&claims.kid)
        .ok_or_else(|| ControlTokenError::UntrustedKey(claims.kid.clone()))?;
    if !key.verifies(&pae(CONTROL_TOKEN_TYPE, &json), &sig) {
        return Err(ControlTokenError::BadSignature);
    }
    if claims.aud != CONTROL_AUDIENCE {
        return Err(ControlTokenError::WrongAudience(claims.aud));
    }
    if claims.exp.saturating_sub(claims.iat) > MAX_CONTROL_TOKEN_TTL_SECS {
        return Err(ControlTokenError::TooLong);
    }
    if claims.iat > now_unix.saturating_add(CONTROL_TOKEN_SKEW_SECS) {
        return Err(ControlTokenError::NotYetValid);
    }
    if now_unix >= claims.exp.saturating_add(CONTROL_TOKEN_SKEW_SECS) {
        return Err(ControlTokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key() -> SigningKey {
        let pem = SigningKey::generate_pkcs8_pem(&ring::rand::SystemRandom::new()).unwrap();
        SigningKey::from_pkcs8_pem(&pem).unwrap()
    }

    #[test]
    fn round_trip_and_refusals() {
        let (k, other) = (key(), key());
        let trust = TrustStore::from_keys([k.public_key()]).unwrap();
        let t = mint_control_token(&k, "meshgov-engine", 1000, 60);
        let c = verify_control_token(&t, &trust, 1010).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.aud.as_str()),
            ("meshgov-engine", CONTROL_AUDIENCE)
        );
        assert_eq!(
            verify_control_token(&t, &trust, 1100),
            Err(ControlTokenError::Expired)
        );
        assert_eq!(
            verify_control_token(&t, &trust, 900),
            Err(ControlTokenError::NotYetValid)
        );
        let foreign = mint_control_token(&other, "x", 1000, 60);
        assert!(matches!(
            verify_control_token(&foreign, &trust, 1010),
            Err(ControlTokenError::UntrustedKey(_))
        ));
        // Flip one claim byte: the signature no longer verifies.
        let (claims, sig) = t.trim_start_matches(PREFIX).split_once('.').unwrap();
        let json = String::from_utf8(B64URL.decode(claims).unwrap()).unwrap();
        let json = json.replace("meshgov-engine", "meshgov-Engine");
        let forged = format!("{PREFIX}{}.{sig}", B64URL.encode(&json));
        assert_eq!(
            verify_control_token(&forged, &trust, 1010),
            Err(ControlTokenError::BadSignature)
        );
        for bad in ["", "mgc1.", "a.b.c", "Bearer x", "mgc1.!!.!!"] {
            assert_eq!(
                verify_control_token(bad, &trust, 1010),
                Err(ControlTokenError::Malformed),
                "{bad}"
            );
        }
    }
}
