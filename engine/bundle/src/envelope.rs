//! The DSSE envelope: the signed payload plus its signatures, as JSON.
//!
//! DSSE signs a pre-authentication encoding of the payload *and its type*, so
//! a signature over a bundle can never be replayed as a signature over some
//! other kind of document, and the payload is verified as bytes before any
//! parser sees it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

use crate::canonical;
use crate::excerpt;
use crate::key::SigningKey;

/// The DSSE `payloadType` of a meshgov bundle. The version is part of the
/// type so a different envelope content is a different type altogether.
pub const PAYLOAD_TYPE: &str = "application/vnd.meshgov.bundle+json;version=1";

/// The most signatures an envelope may carry.
///
/// A rotation needs two; the cap keeps a hostile envelope from making the
/// verifier list (and quote) an unbounded number of key ids.
pub const MAX_SIGNATURES: usize = 16;

/// Why signing failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignError {
    /// No key was given; an unsigned bundle would be refused by every sidecar.
    #[error("no signing key given; a bundle needs at least one signature")]
    NoSigningKey,
    /// More keys than an envelope may carry signatures for.
    #[error("{count} signing keys given; an envelope carries at most {MAX_SIGNATURES} signatures")]
    TooManyKeys {
        /// How many keys were given.
        count: usize,
    },
}

/// One signature in an envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// The key id of the key that made it (see [`crate::PublicKey::keyid`]).
    pub keyid: String,
    /// The raw signature bytes.
    pub sig: Vec<u8>,
}

/// A signed bundle as it travels: DSSE JSON with `payloadType`, `payload`
/// (standard base64) and `signatures[{keyid, sig}]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub(crate) payload_type: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) signatures: Vec<Signature>,
}

impl Envelope {
    /// The DSSE payload type.
    pub fn payload_type(&self) -> &str {
        &self.payload_type
    }

    /// The signed payload bytes (already base64-decoded).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The signatures, in envelope order.
    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// The envelope as compact JSON, with keys in the order `payloadType`,
    /// `payload`, `signatures`. Deterministic, so a bundle file's digest only
    /// changes when its content does.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() / 3 * 4 + 256);
        out.push(b'{');
        canonical::key(&mut out, "payloadType", true);
        canonical::string(&mut out, &self.payload_type);
        canonical::key(&mut out, "payload", false);
        canonical::string(&mut out, &BASE64.encode(&self.payload));
        canonical::key(&mut out, "signatures", false);
        out.push(b'[');
        for (i, s) in self.signatures.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'{');
            canonical::key(&mut out, "keyid", true);
            canonical::string(&mut out, &s.keyid);
            canonical::key(&mut out, "sig", false);
            canonical::string(&mut out, &BASE64.encode(&s.sig));
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
        out
    }
}

/// Signs `payload` (normally [`crate::BundlePayload::to_canonical_bytes`])
/// with every key in `keys`, in order.
///
/// Several keys let the guild sign with the old and the new key during a
/// rotation, so sidecars trusting either accept the bundle.
pub fn sign(payload: &[u8], keys: &[&SigningKey]) -> Result<Envelope, SignError> {
    if keys.is_empty() {
        return Err(SignError::NoSigningKey);
    }
    if keys.len() > MAX_SIGNATURES {
        return Err(SignError::TooManyKeys { count: keys.len() });
    }
    let pae = pae(PAYLOAD_TYPE, payload);
    let signatures = keys
        .iter()
        .map(|key| Signature {
            keyid: key.keyid(),
            sig: key.sign(&pae).to_vec(),
        })
        .collect();
    Ok(Envelope {
        payload_type: PAYLOAD_TYPE.to_owned(),
        payload: payload.to_vec(),
        signatures,
    })
}

/// DSSE's pre-authentication encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII
/// decimal. The lengths make the split between type and body unambiguous.
pub(crate) fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let type_len = payload_type.len().to_string();
    let body_len = body.len().to_string();
    let mut out =
        Vec::with_capacity(10 + type_len.len() + payload_type.len() + body_len.len() + body.len());
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(type_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body);
    out
}

/// The envelope as it arrives, before any check. Unknown fields are refused:
/// a field this code does not understand might be one the sender relies on.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a DSSE envelope object")]
struct WireEnvelope {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    signatures: Vec<WireSignature>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a signature object with `keyid` and `sig`"
)]
struct WireSignature {
    keyid: String,
    sig: String,
}

/// Parses envelope JSON. Base64 must be standard, padded and canonical (no
/// stray bits), so each envelope has one spelling. Returns a reason fit for
/// a `malformed` refusal.
pub(crate) fn parse(bytes: &[u8]) -> Result<Envelope, String> {
    let wire: WireEnvelope =
        serde_json::from_slice(bytes).map_err(|e| format!("envelope is not valid JSON: {e}"))?;
    if wire.signatures.len() > MAX_SIGNATURES {
        return Err(format!(
            "envelope has {} signatures, more than the {MAX_SIGNATURES} allowed",
            wire.signatures.len()
        ));
    }
    let payload = BASE64
        .decode(&wire.payload)
        .map_err(|_| "envelope `payload` is not standard base64".to_owned())?;
    let signatures = wire
        .signatures
        .into_iter()
        .map(|s| {
            let sig = BASE64.decode(&s.sig).map_err(|_| {
                format!(
                    "signature `sig` of key `{}` is not standard base64",
                    excerpt::head(&s.keyid, 80)
                )
            })?;
            Ok(Signature {
                keyid: s.keyid,
                sig,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Envelope {
        payload_type: wire.payload_type,
        payload,
        signatures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_dsse_spec_example() {
        // The worked example from the DSSE protocol description.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
    }

    #[test]
    fn json_round_trips() {
        let env = Envelope {
            payload_type: PAYLOAD_TYPE.to_owned(),
            payload: b"{\"x\":1}".to_vec(),
            signatures: vec![Signature {
                keyid: "00112233aabbccdd".to_owned(),
                sig: vec![1, 2, 3],
            }],
        };
        let json = env.to_json_bytes();
        assert_eq!(
            String::from_utf8(json.clone()).unwrap(),
            r#"{"payloadType":"application/vnd.meshgov.bundle+json;version=1","payload":"eyJ4IjoxfQ==","signatures":[{"keyid":"00112233aabbccdd","sig":"AQID"}]}"#
        );
        assert_eq!(parse(&json).unwrap(), env);
    }

    #[test]
    fn parse_refuses_loose_forms() {
        let base = r#"{"payloadType":"t","payload":"eyJ4IjoxfQ==","signatures":[]}"#;
        assert!(parse(base.as_bytes()).is_ok());
        for bad in [
            r#"{"payloadType":"t","payload":"eyJ4IjoxfQ","signatures":[]}"#,
            r#"{"payloadType":"t","payload":"eyJ4IjoxfR==","signatures":[]}"#,
            r#"{"payloadType":"t","payload":"eyJ4Ijo-fQ==","signatures":[]}"#,
            r#"{"payloadType":"t","payload":"","signatures":[],"extra":1}"#,
            r#"{"payloadType":"t","payload":"","signatures":[{"keyid":"k","sig":"AQID","x":1}]}"#,
            r#"{"payloadType":"t","payload":"","signatures":[{"keyid":"k","sig":"%%"}]}"#,
            r#"{"payloadType":"t","payload":"","payload":"","signatures":[]}"#,
            r#"{"payloadType":"t","payload":""}"#,
            r#"[]"#,
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
