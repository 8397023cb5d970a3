//! Ed25519 keys: the guild's signing key, the public keys sidecars trust, and
//! the key files they live in.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::digest;
use ring::rand::SecureRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use zeroize::Zeroizing;

/// The prefix of a public key's text form. It names the algorithm so that a
/// key pasted into the wrong place, or a future key type, is recognised.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";

const PRIVATE_PEM_LABEL: &str = "PRIVATE KEY";
const PUBLIC_PEM_LABEL: &str = "PUBLIC KEY";

/// The DER of an Ed25519 PKCS#8 v1 private key (RFC 8410) up to its 32-byte
/// seed: `SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING {
/// OCTET STRING (32) } }`, the form `openssl genpkey -algorithm ed25519`
/// writes.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The DER of an Ed25519 SubjectPublicKeyInfo (RFC 8410) up to its 32 key
/// bytes: `SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused
/// bits) }`, the form `openssl pkey -pubout` writes.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why a key could not be read, parsed or generated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The text holds no PEM block `PRIVATE KEY`.
    #[error("not a PKCS#8 Ed25519 private key (expected a PEM block `PRIVATE KEY`{})", found_label(.found))]
    NotPkcs8Pem {
        /// The label of the first PEM block found instead, if any.
        found: Option<String>,
    },
    /// The PEM block is cut short or its body is not base64.
    #[error("the PEM block `{label}` is damaged: {reason}")]
    BadPem {
        /// The block's label (`PRIVATE KEY` or `PUBLIC KEY`).
        label: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The PKCS#8 document holds no usable Ed25519 key (e.g. an RSA key).
    #[error(
        "the PEM block `PRIVATE KEY` does not hold an Ed25519 key; create one with `meshgov keygen`"
    )]
    NotEd25519,
    /// PEM text given as a public key holds no PEM block `PUBLIC KEY`.
    #[error(
        "not a public key (expected a PEM block `PUBLIC KEY`, as `meshgov keygen` and `openssl pkey -pubout` write{}){}",
        found_label(.found),
        private_hint(.found)
    )]
    NotSpkiPem {
        /// The label of the first PEM block found instead, if any.
        found: Option<String>,
    },
    /// The PEM block `PUBLIC KEY` holds a key of another algorithm, or is
    /// not a SubjectPublicKeyInfo.
    #[error(
        "the PEM block `PUBLIC KEY` does not hold an Ed25519 key; bundles are signed with Ed25519 keys only (`meshgov keygen`, or `openssl genpkey -algorithm ed25519` then `openssl pkey -pubout`)"
    )]
    NotEd25519Public,
    /// A public key is neither PEM nor starts with the `ed25519:` prefix.
    #[error(
        "public key `{text}` must be `ed25519:<base64>` or a PEM block `-----BEGIN PUBLIC KEY-----`"
    )]
    WrongPrefix {
        /// The text given, cut short if long.
        text: String,
    },
    /// A public key's base64 is not valid standard base64.
    #[error("public key `{text}` is not valid standard base64 after `ed25519:`")]
    BadBase64 {
        /// The text given, cut short if long.
        text: String,
    },
    /// A public key does not decode to 32 bytes.
    #[error("public key `{text}` is {len} bytes long; an Ed25519 public key is 32 bytes")]
    WrongLength {
        /// The text given, cut short if long.
        text: String,
        /// The decoded length.
        len: usize,
    },
    /// Two different trusted keys share a key id, so signatures would be
    /// ambiguous.
    #[error("two different trusted keys share the key id `{keyid}`; remove one of them")]
    KeyIdCollision {
        /// The shared key id.
        keyid: String,
    },
    /// The random number generator failed while generating a key.
    #[error("the system random number generator failed")]
    Rng,
}

fn found_label(found: &Option<String>) -> String {
    match found {
        Some(label) => format!(", found `{label}`"),
        None => String::new(),
    }
}

fn private_hint(found: &Option<String>) -> &'static str {
    match found.as_deref() {
        Some(label) if label.ends_with("PRIVATE KEY") => {
            "; this is a private key: pass the public key made with it (`KEY.pub`, or `openssl pkey -in KEY -pubout`)"
        }
        _ => "",
    }
}

/// Shortens user text quoted in an error so a pasted blob cannot flood logs.
fn quote(text: &str) -> String {
    crate::excerpt::head(text, 80)
}

/// A short, stable name for a public key: the first 16 hex digits of the
/// SHA-256 of its 32 raw bytes.
///
/// Envelopes carry it so a verifier picks the right trusted key without
/// trying them all, and humans can tell keys apart during a rotation.
fn keyid_of(raw: &[u8; 32]) -> String {
    let hash = digest::digest(&digest::SHA256, raw);
    let mut id = hex::encode(hash.as_ref());
    id.truncate(16);
    id
}

/// An Ed25519 public key, the thing a sidecar trusts.
///
/// Its text form is `ed25519:<standard base64 of the 32 raw bytes>`, one
/// short line that fits in a TOML string, an environment variable or a
/// Kubernetes secret without escaping.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey {
    raw: [u8; 32],
}

impl PublicKey {
    /// Wraps 32 raw key bytes.
    pub fn from_bytes(raw: [u8; 32]) -> Self {
        Self { raw }
    }

    /// The 32 raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.raw
    }

    /// The key id envelopes name this key by (16 hex digits).
    pub fn keyid(&self) -> String {
        keyid_of(&self.raw)
    }

    /// Reads a PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`)
    /// holding an Ed25519 key, the form `meshgov keygen` writes to `.pub`
    /// files and `openssl pkey -pubout` prints.
    pub fn from_spki_pem(pem: &str) -> Result<Self, KeyError> {
        let der = pem_decode(pem, PUBLIC_PEM_LABEL).map_err(|e| match e {
            PemError::Missing { found } => KeyError::NotSpkiPem { found },
            PemError::Damaged(reason) => KeyError::BadPem {
                label: PUBLIC_PEM_LABEL,
                reason,
            },
        })?;
        Self::from_spki_der(&der)
    }

    /// Reads a DER SubjectPublicKeyInfo holding an Ed25519 key (RFC 8410).
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let raw = der
            .strip_prefix(SPKI_PREFIX.as_slice())
            .and_then(|rest| <[u8; 32]>::try_from(rest).ok())
            .ok_or(KeyError::NotEd25519Public)?;
        Ok(Self { raw })
    }

    /// The key as PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`),
    /// which OpenSSL and other tools read.
    pub fn to_spki_pem(&self) -> String {
        let mut der = Vec::with_capacity(SPKI_PREFIX.len() + self.raw.len());
        der.extend_from_slice(&SPKI_PREFIX);
        der.extend_from_slice(&self.raw);
        pem_encode(PUBLIC_PEM_LABEL, &der)
    }

    /// Checks an Ed25519 signature over `message`.
    pub fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.raw)
            .verify(message, sig)
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_KEY_PREFIX}{}", BASE64.encode(self.raw))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    /// Parses either form: the one line `ed25519:<base64>`, or a PEM block
    /// `PUBLIC KEY` (see [`PublicKey::from_spki_pem`]). Surrounding
    /// whitespace is ignored, so a key file's trailing newline does no harm.
    fn from_str(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.starts_with("-----BEGIN ") {
            return Self::from_spki_pem(text);
        }
        let b64 = text
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .ok_or_else(|| KeyError::WrongPrefix { text: quote(text) })?;
        let bytes = BASE64
            .decode(b64)
            .map_err(|_| KeyError::BadBase64 { text: quote(text) })?;
        let raw = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::WrongLength {
            text: quote(text),
            len: bytes.len(),
        })?;
        Ok(Self { raw })
    }
}

/// The private half: signs bundles. Held by the engine only.
///
/// Its `Debug` output shows the key id, never secret material.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl SigningKey {
    /// Reads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    ///
    /// Both v1 documents (RFC 8410: what `meshgov keygen` and `openssl
    /// genpkey -algorithm ed25519` write) and the v2 documents with the
    /// public key inside that earlier `meshgov keygen` releases wrote are
    /// accepted, so a guild may create its key with whichever tool its key
    /// ceremony uses.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let der = pem_decode(pem, PRIVATE_PEM_LABEL).map_err(|e| match e {
            PemError::Missing { found } => KeyError::NotPkcs8Pem { found },
            PemError::Damaged(reason) => KeyError::BadPem {
                label: PRIVATE_PEM_LABEL,
                reason,
            },
        })?;
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|_| KeyError::NotEd25519)?;
        let raw =
            <[u8; 32]>::try_from(pair.public_key().as_ref()).map_err(|_| KeyError::NotEd25519)?;
        Ok(Self {
            pair,
            public: PublicKey { raw },
        })
    }

    /// Creates a new key and returns it as PKCS#8 v1 PEM text (RFC 8410, the
    /// form OpenSSL writes and reads), ready to be written with
    /// [`write_private_key_file`] and read back with
    /// [`SigningKey::from_pkcs8_pem`].
    ///
    /// Randomness is passed in so callers (and tests) control its source; the
    /// seed and the text are wiped from memory when dropped.
    pub fn generate_pkcs8_pem(rng: &dyn SecureRandom) -> Result<Zeroizing<String>, KeyError> {
        let mut der = Zeroizing::new([0u8; PKCS8_V1_PREFIX.len() + 32]);
        let (prefix, seed) = der.split_at_mut(PKCS8_V1_PREFIX.len());
        prefix.copy_from_slice(&PKCS8_V1_PREFIX);
        rng.fill(seed).map_err(|_| KeyError::Rng)?;
        let pem = Zeroizing::new(pem_encode(PRIVATE_PEM_LABEL, der.as_slice()));
        // The document must be one ring reads back as an Ed25519 key.
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.as_slice())
            .map_err(|_| KeyError::NotEd25519)?;
        Ok(pem)
    }

    /// The public key to hand to sidecars.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The key id signatures made with this key carry.
    pub fn keyid(&self) -> String {
        self.public.keyid()
    }

    /// Signs `message` (Ed25519 is deterministic: same key and message, same
    /// signature). Callers sign their own domain-separated messages (the
    /// audit log's checkpoints); bundles are signed with [`crate::sign`].
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.pair.sign(message).as_ref());
        sig
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("keyid", &self.keyid())
            .finish_non_exhaustive()
    }
}

/// Why a PEM block could not be taken from a text.
enum PemError {
    /// No block with the label; `found` is the first other label seen.
    Missing { found: Option<String> },
    /// The block is cut short or its body is not base64.
    Damaged(String),
}

/// PEM text: `label` around the base64 of `der`, in lines of 64 characters.
///
/// The intermediate base64 is wiped; callers wrap the result in
/// [`Zeroizing`] when `der` is secret.
fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = Zeroizing::new(BASE64.encode(der));
    let mut pem = String::with_capacity(b64.len() + 2 * label.len() + 40);
    pem.push_str("-----BEGIN ");
    pem.push_str(label);
    pem.push_str("-----\n");
    // Base64 output is ASCII, so 64-byte chunks are whole lines of text.
    for line in b64.as_bytes().chunks(64) {
        pem.extend(line.iter().map(|&b| char::from(b)));
        pem.push('\n');
    }
    pem.push_str("-----END ");
    pem.push_str(label);
    pem.push_str("-----\n");
    pem
}

/// Finds the first PEM block `label` and decodes its body.
fn pem_decode(pem: &str, label: &str) -> Result<Zeroizing<Vec<u8>>, PemError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut lines = pem.lines().map(str::trim);
    let mut first_label = None;
    loop {
        let Some(line) = lines.next() else {
            return Err(PemError::Missing { found: first_label });
        };
        if line == begin {
            break;
        }
        if first_label.is_none() {
            first_label = line
                .strip_prefix("-----BEGIN ")
                .and_then(|rest| rest.strip_suffix("-----"))
                .map(str::to_owned);
        }
    }
    let mut body = Zeroizing::new(String::new());
    for line in lines {
        if line == end {
            let der = BASE64
                .decode(body.as_bytes())
                .map_err(|_| PemError::Damaged("its body is not valid base64".to_owned()))?;
            return Ok(Zeroizing::new(der));
        }
        body.push_str(line);
    }
    Err(PemError::Damaged(format!("no `{end}` line")))
}

/// The public keys a verifier accepts signatures from.
///
/// More than one key may be trusted at once so that the guild can rotate its
/// signing key: trust old and new, re-sign, then drop the old one.
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    keys: BTreeMap<String, PublicKey>,
}

impl TrustStore {
    /// An empty store; it trusts nothing, so every bundle is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store trusting all of `keys`.
    pub fn from_keys(keys: impl IntoIterator<Item = PublicKey>) -> Result<Self, KeyError> {
        let mut store = Self::new();
        for key in keys {
            store.insert(key)?;
        }
        Ok(store)
    }

    /// Trusts one more key. Adding a key already trusted changes nothing; two
    /// different keys with the same key id are refused, since a signature's
    /// key id must name exactly one key.
    pub fn insert(&mut self, key: PublicKey) -> Result<(), KeyError> {
        let keyid = key.keyid();
        match self.keys.get(&keyid) {
            Some(known) if *known != key => Err(KeyError::KeyIdCollision { keyid }),
            _ => {
                self.keys.insert(keyid, key);
                Ok(())
            }
        }
    }

    /// The trusted key with this key id, if any.
    pub fn get(&self, keyid: &str) -> Option<&PublicKey> {
        self.keys.get(keyid)
    }

    /// The trusted key ids, sorted; for status pages and error hints.
    pub fn keyids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted (then every bundle is refused).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A key file could not be read or written. The message names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be opened, read or written.
    #[error("`{}`: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but holds no usable key.
    #[error("`{}`: {source}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        #[source]
        source: KeyError,
    },
}

/// Reads a PKCS#8 PEM private key file (reads the file system).
///
/// The file's text is wiped from memory once the key is parsed.
pub fn read_signing_key_file(path: &Path) -> Result<SigningKey, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    let text = Zeroizing::new(text);
    SigningKey::from_pkcs8_pem(&text).map_err(|source| KeyFileError::Key {
        path: path.to_owned(),
        source,
    })
}

/// Reads a public key file (reads the file system): a PEM block `PUBLIC KEY`
/// (SubjectPublicKeyInfo, what `meshgov keygen` and `openssl pkey -pubout`
/// write) or one `ed25519:<base64>` line (what `meshgov keygen` wrote before,
/// and what the sidecar writes for its audit key).
pub fn read_public_key_file(path: &Path) -> Result<PublicKey, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    text.parse().map_err(|source| KeyFileError::Key {
        path: path.to_owned(),
        source,
    })
}

/// Writes a private key to a new file that only its owner can read (writes
/// the file system; unix only).
///
/// The file is created with mode 0600 in the same call that creates it, so
/// the key is never readable by others, not even for an instant. An existing
/// file is never overwritten: losing a signing key is worse than an error.
/// If writing fails half way, the partial file is removed.
#[cfg(unix)]
pub fn write_private_key_file(path: &Path, pem: &str) -> Result<(), KeyFileError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    let io_err = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    let written = file
        .write_all(pem.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(source) = written {
        drop(file);
        // The write error is the one worth reporting; a failed cleanup
        // leaves only a 0600 file behind.
        let _ = std::fs::remove_file(path);
        return Err(io_err(source));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    fn new_key() -> SigningKey {
        let pem = SigningKey::generate_pkcs8_pem(&SystemRandom::new()).unwrap();
        SigningKey::from_pkcs8_pem(&pem).unwrap()
    }

    #[test]
    fn generated_pem_round_trips() {
        let pem = SigningKey::generate_pkcs8_pem(&SystemRandom::new()).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.ends_with("-----END PRIVATE KEY-----\n"));
        let a = SigningKey::from_pkcs8_pem(&pem).unwrap();
        let b = SigningKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.keyid().len(), 16);
        // RFC 8410's v1 document: the prefix OpenSSL writes, then the seed.
        let der = pem_decode(&pem, PRIVATE_PEM_LABEL).ok().unwrap();
        assert_eq!(der.len(), 48);
        assert_eq!(der.get(..16), Some(PKCS8_V1_PREFIX.as_slice()));
        // Two keys from the system's randomness differ.
        let c = new_key();
        assert_ne!(a.public_key(), c.public_key());
    }

    #[test]
    fn accepts_the_v2_pkcs8_that_earlier_keygen_wrote() {
        // ring's v2 document (the public key inside), the form `meshgov
        // keygen` wrote before it wrote RFC 8410 v1 documents.
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        assert_eq!(doc.as_ref().len(), 83);
        let pem = pem_encode(PRIVATE_PEM_LABEL, doc.as_ref());
        let key = SigningKey::from_pkcs8_pem(&pem).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        assert_eq!(key.public_key().as_bytes(), pair.public_key().as_ref());
        let sig = key.sign(b"m");
        assert!(key.public_key().verifies(b"m", &sig));
    }

    // Generated with `openssl genpkey -algorithm ed25519` (PKCS#8 v1, no
    // public key inside). A throwaway test key.
    const OPENSSL_V1_PEM: &str = "-----BEGIN PRIVATE KEY-----\r\n\
        MC4CAQAwBQYDK2VwBCIEILZXP6oypFCl5RdQLLAU1s6hd2KDLyRAfbA4JGOTIt/X\r\n\
        -----END PRIVATE KEY-----\r\n";
    // `openssl pkey -pubout` for the key above, as raw bytes in base64.
    const OPENSSL_V1_PUBLIC: &str = "ed25519:DjIEtJLh+HQ90xNUIRGoefTkET+ywjlSNqTkT0Qx+2U=";
    // `openssl pkey -pubout` for the key above, as it prints it.
    const OPENSSL_SPKI_PEM: &str = "-----BEGIN PUBLIC KEY-----\n\
        MCowBQYDK2VwAyEADjIEtJLh+HQ90xNUIRGoefTkET+ywjlSNqTkT0Qx+2U=\n\
        -----END PUBLIC KEY-----\n";

    #[test]
    fn accepts_openssl_v1_pkcs8() {
        let key = SigningKey::from_pkcs8_pem(OPENSSL_V1_PEM).unwrap();
        assert_eq!(key.public_key().to_string(), OPENSSL_V1_PUBLIC);
    }

    #[test]
    fn spki_pem_is_what_openssl_writes_and_reads_back() {
        let key = SigningKey::from_pkcs8_pem(OPENSSL_V1_PEM).unwrap();
        assert_eq!(key.public_key().to_spki_pem(), OPENSSL_SPKI_PEM);
        let parsed = PublicKey::from_spki_pem(OPENSSL_SPKI_PEM).unwrap();
        assert_eq!(parsed.to_string(), OPENSSL_V1_PUBLIC);
        // Both text forms parse to the same key, with CRLF and padding too.
        assert_eq!(OPENSSL_V1_PUBLIC.parse::<PublicKey>().unwrap(), parsed);
        let crlf = format!("\n  {}", OPENSSL_SPKI_PEM.replace('\n', "\r\n"));
        assert_eq!(crlf.parse::<PublicKey>().unwrap(), parsed);
        let fresh = new_key().public_key();
        assert_eq!(fresh.to_spki_pem().parse::<PublicKey>().unwrap(), fresh);
    }

    #[test]
    fn refuses_other_public_pem_blocks_and_algorithms() {
        // `openssl genpkey -algorithm x25519 | openssl pkey -pubout`: a
        // well-formed SPKI of another algorithm with 32 key bytes.
        let x25519 = "-----BEGIN PUBLIC KEY-----\n\
            MCowBQYDK2VuAyEApwccDvPv0dRR5+PNCCbKY3MObzAKyamKNGO/rzM/SjI=\n\
            -----END PUBLIC KEY-----\n";
        let err = x25519.parse::<PublicKey>().unwrap_err();
        assert_eq!(err, KeyError::NotEd25519Public);
        assert!(
            err.to_string()
                .contains("openssl genpkey -algorithm ed25519"),
            "{err}"
        );

        // A private key where a public key belongs says so.
        let err = OPENSSL_V1_PEM.parse::<PublicKey>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a public key (expected a PEM block `PUBLIC KEY`, as `meshgov keygen` and \
             `openssl pkey -pubout` write, found `PRIVATE KEY`); this is a private key: pass \
             the public key made with it (`KEY.pub`, or `openssl pkey -in KEY -pubout`)"
        );
        let err = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2Vw\n"
            .parse::<PublicKey>()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the PEM block `PUBLIC KEY` is damaged: no `-----END PUBLIC KEY-----` line"
        );
        let err = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2Vw\n-----END PUBLIC KEY-----"
            .parse::<PublicKey>()
            .unwrap_err();
        assert_eq!(err, KeyError::NotEd25519Public);
    }

    #[test]
    fn refuses_other_pem_blocks_and_damage() {
        let err = SigningKey::from_pkcs8_pem("-----BEGIN EC PRIVATE KEY-----\nAAAA\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a PKCS#8 Ed25519 private key (expected a PEM block `PRIVATE KEY`, found `EC PRIVATE KEY`)"
        );
        let err = SigningKey::from_pkcs8_pem("hello").unwrap_err();
        assert_eq!(err, KeyError::NotPkcs8Pem { found: None });
        let err = SigningKey::from_pkcs8_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap_err();
        assert!(matches!(err, KeyError::BadPem { .. }), "{err}");
        let err = SigningKey::from_pkcs8_pem(
            "-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----",
        )
        .unwrap_err();
        assert!(matches!(err, KeyError::BadPem { .. }), "{err}");
        let err = SigningKey::from_pkcs8_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
        )
        .unwrap_err();
        assert_eq!(err, KeyError::NotEd25519);
    }

    #[test]
    fn public_key_text_round_trips_and_names_errors() {
        let key = new_key().public_key();
        let text = key.to_string();
        assert!(text.starts_with("ed25519:"));
        assert_eq!(format!("  {text}\n").parse::<PublicKey>().unwrap(), key);

        let err = "rsa:AAAA".parse::<PublicKey>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "public key `rsa:AAAA` must be `ed25519:<base64>` or a PEM block `-----BEGIN PUBLIC KEY-----`"
        );
        let err = "ed25519:not base64!".parse::<PublicKey>().unwrap_err();
        assert!(matches!(err, KeyError::BadBase64 { .. }), "{err}");
        let err = "ed25519:AAAA".parse::<PublicKey>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "public key `ed25519:AAAA` is 3 bytes long; an Ed25519 public key is 32 bytes"
        );
    }

    #[test]
    fn keyid_is_sha256_prefix_of_raw_key() {
        let key = PublicKey::from_bytes([0u8; 32]);
        // sha256 of 32 zero bytes starts with 66687aadf862bd77.
        assert_eq!(key.keyid(), "66687aadf862bd77");
    }

    #[test]
    fn trust_store_dedups_and_looks_up() {
        let a = new_key().public_key();
        let b = new_key().public_key();
        let store = TrustStore::from_keys([a, b, a]).unwrap();
        assert_eq!(store.len(), 2);
        assert_eq!(store.get(&a.keyid()), Some(&a));
        assert_eq!(store.get(&b.keyid()), Some(&b));
        assert_eq!(store.get("0000000000000000"), None);
        assert!(TrustStore::new().is_empty());
    }

    #[test]
    fn key_files_round_trip_with_private_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("guild.pem");
        let pem = SigningKey::generate_pkcs8_pem(&SystemRandom::new()).unwrap();
        write_private_key_file(&path, &pem).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let key = read_signing_key_file(&path).unwrap();

        // Never clobbers an existing key.
        let err = write_private_key_file(&path, "other").unwrap_err();
        assert!(matches!(err, KeyFileError::Io { .. }), "{err}");
        assert_eq!(read_signing_key_file(&path).unwrap().keyid(), key.keyid());

        // Public key files in either form.
        let pub_path = dir.path().join("guild.pub");
        std::fs::write(&pub_path, format!("{}\n", key.public_key())).unwrap();
        assert_eq!(read_public_key_file(&pub_path).unwrap(), key.public_key());
        let pem_path = dir.path().join("guild.pub.pem");
        std::fs::write(&pem_path, key.public_key().to_spki_pem()).unwrap();
        assert_eq!(read_public_key_file(&pem_path).unwrap(), key.public_key());
    }

    #[test]
    fn key_file_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("guild");
        std::fs::write(&path, "ed25519:AAAA").unwrap();
        let err = read_signing_key_file(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "`{}`: not a PKCS#8 Ed25519 private key (expected a PEM block `PRIVATE KEY`)",
                path.display()
            )
        );
        let err = read_public_key_file(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing`: "), "{err}");
    }
}
