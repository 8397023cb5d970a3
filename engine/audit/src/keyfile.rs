//! The sidecar's own checkpoint key, kept in its state directory.

use meshgov_bundle::{KeyFileError, SigningKey};
use std::path::{Path, PathBuf};

/// The private key file (PKCS#8 PEM, mode 0600) and its public half
/// (`ed25519:<base64>`, a form `meshgov_bundle::read_public_key_file` reads).
pub fn key_paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    (
        state_dir.join("audit-signing.key"),
        state_dir.join("audit-signing.pub"),
    )
}

/// Loads the checkpoint key from `state_dir`, generating it on first start.
/// The public half is (re)written beside it so an auditor can copy it.
pub fn load_or_create(state_dir: &Path) -> Result<SigningKey, KeyFileError> {
    let (private, public) = key_paths(state_dir);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeyFileError::Io { path, source }
    };
    std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
    if !private.exists() {
        let pem =
            SigningKey::generate_pkcs8_pem(&ring::rand::SystemRandom::new()).map_err(|source| {
                KeyFileError::Key {
                    path: private.clone(),
                    source,
                }
            })?;
        meshgov_bundle::write_private_key_file(&private, &pem)?;
    }
    let key = meshgov_bundle::read_signing_key_file(&private)?;
    let text = format!("{}\n", key.public_key());
    if std::fs::read_to_string(&public).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&public, text).map_err(io(&public))?;
    }
    Ok(key)
}
