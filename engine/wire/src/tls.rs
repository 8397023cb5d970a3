//! TLS for the listeners that serve it (the admission webhook, the SQL
//! ports): a certificate chain and key from PEM files, read again when
//! they change.

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The files' modification times when last read, and what was read.
type Loaded = (Option<(SystemTime, SystemTime)>, Arc<CertifiedKey>);

/// A certificate and key read from PEM files, read again when either
/// file's modification time changes (a Secret update replaces them).
#[derive(Debug)]
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<Loaded>,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read `{}`: {e}", p.display()));
    let cert_pem = read(cert)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{}`: not a PEM certificate chain: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no certificate", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| format!("`{}`: not a PEM private key: {e}", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| format!("`{}`: unusable private key: {e}", key.display()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "`{}` and `{}` do not go together: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(certified)
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = modified(&self.cert).zip(modified(&self.key));
        if stamp.is_some() && stamp != current.0 {
            match load(&self.cert, &self.key) {
                Ok(k) => {
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    *current = (stamp, Arc::new(k));
                }
                // Half-written files: keep serving the last good pair.
                Err(e) => tracing::warn!("TLS certificate not reloaded: {e}"),
            }
        }
        Some(Arc::clone(&current.1))
    }
}

/// rustls's ring backend, the one the workspace builds (for reqwest too).
/// rustls 0.23.48 deprecates it for lacking post-quantum key exchange,
/// which only its aws-lc-rs backend has; X25519 is offered.
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The TLS configuration for a certificate chain and key in PEM files,
/// offering `alpn` protocols. The files are read again when either
/// changes (a rotated Secret), without a restart; a pair that does not
/// load then keeps the last good one in service.
pub fn server_config(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let first = load(cert, key)?;
    let files = CertFiles {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        current: Mutex::new((modified(cert).zip(modified(key)), Arc::new(first))),
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(ring_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(files));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}
