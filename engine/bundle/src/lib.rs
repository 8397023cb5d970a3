#![doc = include_str!("../README.md")]

mod canonical;
pub mod clock;
mod control_token;
mod envelope;
mod excerpt;
mod key;
mod payload;
mod verify;

pub use control_token::{
    CONTROL_AUDIENCE, CONTROL_TOKEN_TYPE, ControlClaims, ControlTokenError,
    MAX_CONTROL_TOKEN_TTL_SECS, mint_control_token, verify_control_token,
};
pub use envelope::{Envelope, MAX_SIGNATURES, PAYLOAD_TYPE, SignError, Signature, sign};
#[cfg(unix)]
pub use key::write_private_key_file;
pub use key::{
    KeyError, KeyFileError, PUBLIC_KEY_PREFIX, PublicKey, SigningKey, TrustStore,
    read_public_key_file, read_signing_key_file,
};
pub use payload::{
    BuildError, BundleMeta, BundlePayload, DIGEST_PREFIX, FORMAT_VERSION, Manifest,
    format_timestamp, parse_timestamp, sha256_digest,
};
pub use verify::{
    DEFAULT_MAX_ENVELOPE_BYTES, Expect, Inspection, MAX_CLOCK_SKEW_SECS, VerifiedBundle,
    VerifyError, inspect, verify,
};
