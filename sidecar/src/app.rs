//! The sidecar's shared state, built once at launch ([`App::from_config`])
//! and handed to the servers: the bundle slot, identity, upstream, keys,
//! limits, metrics, the control port's state, the audit log and the ledger.
//!
//! It also holds the steps that change or read that state for everyone: a
//! bundle's verification and swap (the only writer of the slot), the
//! control status, and the two steps every data-port request starts with
//! (who asks, and which bundle answers). The request handlers
//! ([`crate::data_port`], [`crate::records`], [`crate::aggregate`],
//! [`crate::control`]) use it; it uses none of them.

use crate::auth::Authenticator;
use crate::clock;
use crate::config::{Config, ConfigError, LedgerConfig, Limits};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::persist;
use crate::state::{ActiveBundle, BundleError, BundleSlot, Unavailable, verify_bundle};
use crate::upstream::{CsvSchema, Opened, Upstream, UpstreamError, Window};
use http::{HeaderValue, header};
use meshgov_audit::{AuditLog, Event};
use meshgov_core::descriptor::{Descriptor, FieldInfo};
use meshgov_core::records::KeyRing;
use meshgov_privacy::ledger::{FileLedger, Ledger, LedgerError};
use meshgov_wire::{Ack, BundleStatus, ControlStatus, LinkStatus, NackCode, Refusal, ServingState};
use sha2::{Digest as _, Sha256};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Everything a request needs, shared by all connections.
pub struct App {
    pub bundle: BundleSlot,
    /// The mesh this sidecar belongs to.
    pub mesh: String,
    /// Governance keys trusted to sign bundles.
    pub trust: meshgov_bundle::TrustStore,
    pub descriptor: Descriptor,
    /// The descriptor as plain JSON, for discovery.
    pub descriptor_doc: serde_json::Value,
    pub auth: Authenticator,
    pub upstream: Upstream,
    /// Pseudonym secrets by key scope, from config.
    pub pseudonym_keys: KeyRing,
    pub limits: Limits,
    /// Prometheus metrics (see [`crate::metrics`]).
    pub metrics: Arc<Metrics>,
    /// Set when the shutdown grace period ran out: streams cut then are
    /// audited with the outcome `shutdown`.
    pub cut_at_shutdown: Arc<AtomicBool>,
    /// The control port's state: the apply lock, the state directory, the
    /// last refusal and the engine link.
    pub control: ControlState,
    /// The tamper-evident audit log (group commit; see `meshgov-audit`).
    pub audit: Arc<AuditLog>,
    /// The privacy-budget ledger; `None` refuses aggregates (503).
    pub ledger: Option<Arc<dyn meshgov_privacy::ledger::Ledger>>,
    /// Where the SQL ports listen, once bound (for discovery).
    pub sql_ports: std::sync::OnceLock<SqlPorts>,
}

/// The bound SQL ports, as discovery shows them.
#[derive(Debug, Clone, Copy, Default)]
pub struct SqlPorts {
    pub postgres: Option<std::net::SocketAddr>,
    pub flight: Option<std::net::SocketAddr>,
    pub tls: bool,
}

impl App {
    /// Reads the descriptor and key files named by the config.
    pub fn from_config(c: &Config) -> Result<App, ConfigError> {
        let bad = |key: &str, reason: String| ConfigError {
            key: key.into(),
            reason,
        };
        let text = std::fs::read_to_string(&c.descriptor).map_err(|e| {
            bad(
                "descriptor",
                meshgov_core::diag::io_message(c.descriptor.display(), &e),
            )
        })?;
        let path = c.descriptor.display().to_string();
        let descriptor =
            Descriptor::parse(&path, &text).map_err(|d| bad("descriptor", d.to_string()))?;
        let descriptor_doc: serde_json::Value =
            serde_saphyr::from_str(&text).map_err(|e| bad("descriptor", e.to_string()))?;
        let mut pseudonym_keys = KeyRing::new();
        for (scope, source) in &c.pseudonym_keys {
            let key = format!("pseudonym_keys.{scope}");
            let secret = source.read().map_err(|reason| bad(&key, reason))?;
            pseudonym_keys
                .insert(scope, &secret)
                .map_err(|reason| bad(&key, reason))?;
        }
        let mut keys = Vec::new();
        for (i, k) in c.trusted_bundle_keys.iter().enumerate() {
            keys.push(
                k.parse::<meshgov_bundle::PublicKey>()
                    .map_err(|e| bad(&format!("trusted_bundle_keys[{i}]"), e.to_string()))?,
            );
        }
        let trust = meshgov_bundle::TrustStore::from_keys(keys)
            .map_err(|e| bad("trusted_bundle_keys", e.to_string()))?;
        let audit_key = meshgov_audit::keyfile::load_or_create(&c.state_dir)
            .map_err(|e| bad("state_dir", format!("the audit signing key: {e}")))?;
        let audit = AuditLog::open(c.audit.options(), audit_key)
            .map_err(|e| bad("state_dir", format!("the audit log: {e}")))?;
        let ports = descriptor
            .ports()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.name)
            .collect();
        let metrics = Arc::new(Metrics::new(ports, c.metrics_budget_series));
        Ok(App {
            bundle: BundleSlot::default(),
            mesh: c.mesh.clone(),
            trust,
            descriptor,
            descriptor_doc,
            auth: Authenticator::new(&c.auth)?,
            upstream: Upstream::from_config(
                &c.upstream,
                Duration::from_millis(c.limits.upstream_stall_timeout_ms),
            )
            .map_err(|e| bad("upstream", e.to_string()))?,
            pseudonym_keys,
            limits: c.limits.clone(),
            metrics,
            cut_at_shutdown: Arc::new(AtomicBool::new(false)),
            control: ControlState::new(c.state_dir.clone()),
            audit: Arc::new(audit),
            ledger: open_ledger(&c.ledger, Some(c.state_dir.as_path()))
                .map_err(|(key, reason)| bad(&key, reason))?,
            sql_ports: std::sync::OnceLock::new(),
        })
    }
}

/// Opens the configured ledger. With the embedded ledger and no state
/// directory there is none, and aggregates are refused.
pub fn open_ledger(
    cfg: &LedgerConfig,
    state_dir: Option<&std::path::Path>,
) -> Result<Option<Arc<dyn Ledger>>, (String, String)> {
    match cfg {
        LedgerConfig::Embedded => match state_dir {
            None => Ok(None),
            Some(dir) => FileLedger::open(dir, clock::now_unix())
                .map(|l| Some(Arc::new(l) as Arc<dyn Ledger>))
                .map_err(|e| ("state_dir".to_string(), e.to_string())),
        },
        // The synchronous client must not run on a runtime thread.
        LedgerConfig::Postgres(url) => std::thread::scope(|s| {
            s.spawn(|| meshgov_privacy::pg::PgLedger::connect(url))
                .join()
                .unwrap_or_else(|_| Err(LedgerError::Unavailable("connect failed".into())))
        })
        .map(|l| Some(Arc::new(l) as Arc<dyn Ledger>))
        .map_err(|e| ("privacy.postgres_url".to_string(), e.to_string())),
    }
}

/// Lowers the calling thread's priority by 10 nice levels (at most 19);
/// on Linux a thread has its own. Best effort: where it cannot, the thread
/// keeps its priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let me = Some(rustix::thread::gettid());
        if let Ok(nice) = getpriority_process(me) {
            let _ = setpriority_process(me, (nice + 10).min(19));
        }
    }
}

impl App {
    /// Verifies a signed bundle and swaps it in (see [`App::accept_bundle`]:
    /// rollbacks are refused and the bundle is persisted to the state
    /// directory). On failure the previous bundle, if any, stays in force:
    /// a bad update never replaces a good one.
    pub fn load_bundle(&self, envelope: &[u8], now_unix: i64) -> Result<u64, BundleError> {
        self.accept_bundle(envelope, now_unix).map(|a| a.revision)
    }

    /// Reads and loads a bundle file.
    pub fn load_bundle_file(
        &self,
        path: &std::path::Path,
        now_unix: i64,
    ) -> Result<u64, BundleError> {
        let bytes = std::fs::read(path).map_err(|e| {
            BundleError::rejected(
                meshgov_wire::NackCode::Unreadable,
                meshgov_core::diag::io_message(path.display(), &e),
            )
        })?;
        self.load_bundle(&bytes, now_unix)
    }

    /// Opens `port` over `window`: its records, or its Parquet files. A
    /// failure is counted, logged, and answered 502 with `reason`.
    pub(crate) async fn open_port(
        &self,
        port: &str,
        fields: &[FieldInfo],
        window: Window,
        reason: &'static str,
    ) -> Result<Opened, ApiError> {
        let opened = self
            .upstream
            .open(
                port,
                window,
                self.limits.max_line_bytes,
                CsvSchema::new(fields),
            )
            .await;
        opened.map_err(|e| self.upstream_failed(port, &e, reason))
    }

    fn upstream_failed(&self, port: &str, e: &UpstreamError, reason: &'static str) -> ApiError {
        self.metrics
            .upstream_error(self.metrics.port(Some(port)), false);
        tracing::error!("upstream failed: {e}");
        ApiError::upstream(reason)
    }

    /// The consumer behind the request's bearer token (401 otherwise), noted
    /// in the audit event: subject, groups and purpose, never the token.
    pub(crate) async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        ev: &mut Event,
    ) -> Result<crate::auth::Identity, ApiError> {
        let auth = single_authorization(headers)?;
        let who = self
            .auth
            .authenticate(auth)
            .await
            .map_err(|e| ApiError::unauthorized(e.to_string()))?;
        tracing::Span::current().record("consumer", who.principal.id.as_str());
        ev.consumer = Some(who.principal.id.clone());
        ev.groups = who.principal.groups.clone();
        ev.purpose = Some(who.purpose.clone());
        Ok(who)
    }

    /// The bundle in force at `now` (503 otherwise), noted in the audit event.
    pub(crate) fn bundle_for_request(
        &self,
        now: i64,
        ev: &mut Event,
    ) -> Result<Arc<ActiveBundle>, ApiError> {
        let bundle = self
            .bundle
            .valid_at(now)
            .map_err(|u| ApiError::unavailable(u.reason()))?;
        ev.bundle_revision = Some(bundle.meta.revision);
        ev.bundle_digest = Some(bundle.meta.digest.clone());
        Ok(bundle)
    }
}

/// What the control port keeps beside the bundle slot.
#[derive(Default)]
pub struct ControlState {
    /// Serializes verify → persist → swap, so two deliveries (a push and a
    /// long-poll answer) cannot interleave their rollback checks.
    pub(crate) apply: Mutex<()>,
    /// One push is read and applied at a time, so pushes cannot add up in
    /// memory: each holds at most `limits.max_bundle_bytes` of body.
    pub(crate) push_slot: PushSlot,
    /// Where the last good bundle is persisted.
    pub state_dir: PathBuf,
    instance_id: OnceLock<String>,
    last_refusal: Mutex<Option<Refusal>>,
    link: Mutex<Option<LinkStatus>>,
    /// The bundle replaced by the last swap. Kept until the next swap so
    /// that freeing it (thousands of compiled policies) happens here, on the
    /// control path, and not in whichever read drops the last reference.
    retired: Mutex<Option<Arc<ActiveBundle>>>,
    /// The last serving state the expiry watch logged (see [`watch_expiry`]).
    pub(crate) logged_state: AtomicU8,
}

/// The one permit of the push being read and applied.
pub(crate) struct PushSlot(pub(crate) tokio::sync::Semaphore);

impl Default for PushSlot {
    fn default() -> Self {
        PushSlot(tokio::sync::Semaphore::new(1))
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // INVARIANT: nothing panics while holding these locks; if something
    // did, the data (plain values) is still consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ControlState {
    pub fn new(state_dir: PathBuf) -> ControlState {
        ControlState {
            state_dir,
            ..ControlState::default()
        }
    }

    /// Sets this sidecar's fleet id (once, at start).
    pub fn set_instance_id(&self, id: String) {
        let _ = self.instance_id.set(id);
    }

    pub fn instance_id(&self) -> Option<&str> {
        self.instance_id.get().map(String::as_str)
    }

    pub fn last_refusal(&self) -> Option<Refusal> {
        lock(&self.last_refusal).clone()
    }

    pub fn link(&self) -> Option<LinkStatus> {
        lock(&self.link).clone()
    }

    /// Updates the engine link's status in place.
    pub fn update_link(&self, f: impl FnOnce(&mut LinkStatus)) {
        if let Some(l) = lock(&self.link).as_mut() {
            f(l);
        }
    }

    pub fn set_link(&self, l: LinkStatus) {
        *lock(&self.link) = Some(l);
    }
}

impl App {
    /// Verifies a signed bundle (signature against the trusted keys, mesh,
    /// product slice, expiry), refuses rollbacks (a lower revision) and
    /// revision reuse (the same revision with another digest), persists it
    /// atomically to the state directory, then swaps it in. The same
    /// revision and digest again is a no-op ACK.
    ///
    /// On any refusal the bundle in force stays in force, and the refusal
    /// is logged and kept for status.
    pub fn accept_bundle(&self, envelope: &[u8], now_unix: i64) -> Result<Ack, BundleError> {
        self.apply_bundle(envelope, now_unix, true)
    }

    /// Loads the state directory's persisted bundle at start. Nothing to
    /// load is `Ok(None)`.
    pub fn restore_persisted(&self, now_unix: i64) -> Result<Option<Ack>, BundleError> {
        let dir = &self.control.state_dir;
        let bytes = persist::read_bundle(dir).map_err(|e| {
            BundleError::rejected(
                NackCode::Unreadable,
                meshgov_core::diag::io_message(persist::bundle_path(dir).display(), &e),
            )
        })?;
        match bytes {
            None => Ok(None),
            // Already on disk: no need to write it again.
            Some(b) => self.apply_bundle(&b, now_unix, false).map(Some),
        }
    }

    fn apply_bundle(
        &self,
        envelope: &[u8],
        now_unix: i64,
        persist: bool,
    ) -> Result<Ack, BundleError> {
        let _serial = lock(&self.control.apply);
        let span = tracing::info_span!(
            "bundle_swap",
            bytes = envelope.len(),
            revision = tracing::field::Empty,
        )
        .entered();
        // Verifying is CPU work (hashing, Cedar parsing, compiling the
        // product's view): it runs on a thread of its own at a lower
        // priority, so that on a busy machine the reads being served keep
        // theirs and a large swap delays them little. The thread, and its
        // priority, end with the swap.
        let inner = tracing::Span::current();
        let spawned = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("bundle-verify".into())
                .spawn_scoped(s, || {
                    lower_priority();
                    inner.in_scope(|| self.verify_and_swap(envelope, now_unix, persist))
                })
                .map(|h| h.join())
        });
        let r = match spawned {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(BundleError::rejected(
                NackCode::Malformed,
                "the bundle could not be processed".to_string(),
            )),
            // No thread to be had: verify here, at the caller's priority.
            Err(_) => self.verify_and_swap(envelope, now_unix, persist),
        };
        match &r {
            Ok(a) if !a.noop => {
                span.record("revision", a.revision);
                self.metrics.bundle_swaps.inc();
                tracing::info!(revision = a.revision, digest = %a.digest, "bundle accepted and in force");
            }
            Ok(_) => {}
            Err(e) => {
                let code = e.code();
                self.metrics.bundle_refused(&code);
                tracing::warn!(code = code.as_str(), "bundle refused: {e}");
                *lock(&self.control.last_refusal) = Some(Refusal {
                    code,
                    reason: e.to_string(),
                    at: clock::rfc3339(now_unix),
                });
            }
        }
        r
    }

    fn verify_and_swap(
        &self,
        envelope: &[u8],
        now_unix: i64,
        persist: bool,
    ) -> Result<Ack, BundleError> {
        let product = self.descriptor.product_id();
        let current = self.bundle.current();
        // The bytes already in force, offered again: they verified then,
        // and only the time can have changed since.
        let envelope_sha256: [u8; 32] = Sha256::digest(envelope).into();
        if let Some(cur) = &current
            && now_unix < cur.meta.expires_at_unix
            && cur.meta.envelope_sha256 == envelope_sha256
        {
            return Ok(Ack {
                revision: cur.meta.revision,
                digest: cur.meta.digest.clone(),
                noop: true,
            });
        }
        let (policies, meta) = verify_bundle(
            envelope,
            envelope_sha256,
            &self.trust,
            &self.mesh,
            &product,
            now_unix,
            current.as_ref().map(|c| c.policies()),
        )?;
        if let Some(cur) = current {
            if meta.revision < cur.meta.revision {
                return Err(BundleError::Rollback {
                    offered: meta.revision,
                    active: cur.meta.revision,
                });
            }
            if meta.revision == cur.meta.revision {
                if meta.digest == cur.meta.digest {
                    return Ok(Ack {
                        revision: meta.revision,
                        digest: meta.digest,
                        noop: true,
                    });
                }
                return Err(BundleError::RevisionConflict {
                    revision: meta.revision,
                    active_digest: cur.meta.digest.clone(),
                });
            }
        }
        let b = ActiveBundle::new(
            policies,
            &self.descriptor,
            &self.pseudonym_keys,
            meta,
            now_unix,
        )?;
        if persist {
            let dir = &self.control.state_dir;
            persist::write_bundle(dir, envelope).map_err(|e| {
                BundleError::Persist(format!("`{}`: {e}", persist::bundle_path(dir).display()))
            })?;
        }
        let ack = Ack {
            revision: b.meta.revision,
            digest: b.meta.digest.clone(),
            noop: false,
        };
        let replaced = self.bundle.install(b);
        // The bundle retired by the previous swap is freed here.
        *lock(&self.control.retired) = replaced;
        Ok(ack)
    }

    /// What the control port's status route reports.
    pub fn control_status(&self, now_unix: i64) -> ControlStatus {
        let bundle = self.bundle.current().map(|b| BundleStatus {
            revision: b.meta.revision,
            digest: b.meta.digest.clone(),
            created_at: clock::rfc3339(b.meta.created_at_unix),
            expires_at: clock::rfc3339(b.meta.expires_at_unix),
            loaded_at: clock::rfc3339(b.loaded_at_unix),
            age_seconds: now_unix.saturating_sub(b.meta.created_at_unix),
            expires_in_seconds: b.meta.expires_at_unix.saturating_sub(now_unix),
        });
        let (state, reason) = match self.bundle.valid_at(now_unix) {
            Ok(_) => (ServingState::Serving, None),
            Err(u @ Unavailable::Expired { .. }) => (ServingState::Expired, Some(u.reason())),
            Err(u) => (ServingState::NoBundle, Some(u.reason())),
        };
        ControlStatus {
            instance_id: self.control.instance_id().map(str::to_string),
            mesh: self.mesh.clone(),
            product: self.descriptor.product_id(),
            state,
            reason,
            bundle,
            last_refusal: self.control.last_refusal(),
            engine: self.control.link(),
            trusted_keys: self.trust.keyids().map(str::to_string).collect(),
            audit: crate::audit_feed::status(&self.audit),
        }
    }
}

/// The request's one `Authorization` header, if any. Two are refused
/// (400): which one a proxy or a server reads differs, so neither is.
pub(crate) fn single_authorization(headers: &http::HeaderMap) -> Result<Option<&[u8]>, ApiError> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(ApiError::bad_request(
            "the request has more than one `Authorization` header; send one",
        ));
    }
    Ok(first.map(HeaderValue::as_bytes))
}
