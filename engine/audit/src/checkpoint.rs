//! Signed checkpoints: the sidecar's Ed25519 signature over a sequence, the
//! chain's hash at that sequence, and the time.
//!
//! Checkpoints are kept in their own file (`checkpoints.ndjson`) beside the
//! segments, so cutting events off the end of a segment leaves the
//! checkpoints that covered them behind as witnesses. One line each:
//!
//! ```text
//! {"hash":"<64 hex>","key":"ed25519:…","kind":"checkpoint","seq":N,"sig":"<base64>","time":"…"}
//! ```
//!
//! The signature covers [`signed_message`], a domain-separated text, so a
//! checkpoint signature can never be replayed as anything else.

use crate::event::{Hash, hex, parse_hex, rfc3339_ms};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use meshgov_bundle::{PublicKey, SigningKey};
use serde::{Deserialize, Serialize};

/// One checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub hash: String,
    /// The signer's public key (informational: verification uses the key
    /// the auditor trusts).
    pub key: String,
    pub kind: String,
    pub seq: u64,
    pub sig: String,
    pub time: String,
}

/// What a checkpoint signature covers.
pub fn signed_message(seq: u64, hash: &str, time: &str) -> Vec<u8> {
    format!("meshgov-audit-checkpoint/v1\n{seq}\n{hash}\n{time}\n").into_bytes()
}

impl Checkpoint {
    /// Signs the chain head `seq`/`hash` at `time_ms`.
    pub fn sign(key: &SigningKey, seq: u64, hash: &Hash, time_ms: i64) -> Checkpoint {
        let hash = hex(hash);
        let time = rfc3339_ms(time_ms);
        let sig = key.sign(&signed_message(seq, &hash, &time));
        Checkpoint {
            hash,
            key: key.public_key().to_string(),
            kind: "checkpoint".into(),
            seq,
            sig: BASE64.encode(sig),
            time,
        }
    }

    /// The stored line, with its newline.
    pub fn to_line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parses a stored line (without its newline).
    pub fn parse(line: &[u8]) -> Option<Checkpoint> {
        let c: Checkpoint = serde_json::from_slice(line).ok()?;
        (c.kind == "checkpoint").then_some(c)
    }

    /// The chain hash this checkpoint vouches for.
    pub fn head_hash(&self) -> Option<Hash> {
        parse_hex(&self.hash)
    }

    /// Whether `key` signed exactly this checkpoint.
    pub fn verifies(&self, key: &PublicKey) -> bool {
        let Ok(sig) = BASE64.decode(&self.sig) else {
            return false;
        };
        key.verifies(&signed_message(self.seq, &self.hash, &self.time), &sig)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sign_and_verify_and_refuse_changes() {
        let pem = SigningKey::generate_pkcs8_pem(&ring::rand::SystemRandom::new()).unwrap();
        let k = SigningKey::from_pkcs8_pem(&pem).unwrap();
        let c = Checkpoint::sign(&k, 9, &[7u8; 32], 1_000);
        assert!(c.verifies(&k.public_key()));
        let line = c.to_line();
        let back = Checkpoint::parse(&line[..line.len() - 1]).unwrap();
        assert_eq!(back, c);
        let mut later = c.clone();
        later.seq = 10;
        assert!(!later.verifies(&k.public_key()));
        let pem2 = SigningKey::generate_pkcs8_pem(&ring::rand::SystemRandom::new()).unwrap();
        let other = SigningKey::from_pkcs8_pem(&pem2).unwrap();
        assert!(!c.verifies(&other.public_key()));
    }
}
