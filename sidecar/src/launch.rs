//! Starting and stopping a sidecar: its listeners (data, control, metrics),
//! its engine link and its expiry watch, for the `meshgov-sidecar` binary
//! and for programs that run sidecars in process (`meshgov demo`, tests).
//! Shutdown signals are `meshgov-shutdown`'s, shared with the engine.

use crate::config::{Config, ConfigError, Strings};
use crate::engine_link::{self, LinkConfig};
use crate::{App, clock, control, server};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

/// Why a sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot listen on `{addr}` ({key}): {source}")]
    Bind {
        addr: SocketAddr,
        key: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "config key `engine.instance_id`: `{0}` may hold only ASCII letters, digits and `-_.@:` (at most 128)"
    )]
    InstanceId(String),
    #[error("config key `sql.tls_cert`: {0}")]
    Tls(String),
}

impl LaunchError {
    /// The binary's exit code: 70 for a listener, 64 for configuration.
    pub fn exit_code(&self) -> u8 {
        match self {
            LaunchError::Bind { .. } => 70,
            LaunchError::InstanceId(_) | LaunchError::Tls(_) => {
                crate::config::EXIT_BAD_CONFIG as u8
            }
        }
    }
}

/// Why [`boot`] could not start a sidecar.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The configuration, or what it names (descriptor, keys, state), is bad.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A listener could not be bound, or the instance id is not valid.
    #[error("{0}")]
    Launch(#[from] LaunchError),
}

/// Boots a sidecar in this process from the text of its TOML config, as
/// the `meshgov-sidecar` binary boots from its file: builds the [`App`],
/// loads the bundles it starts with ([`load_start_bundles`]), then
/// [`start`]s its listeners, engine link and expiry watch. Relative paths
/// in `toml` resolve against `base`. `MESHGOV_SIDECAR_*` overrides are not
/// read: they belong to a sidecar process, not to the program embedding one.
///
/// For programs that run sidecars beside other things (`meshgov demo`, the
/// end-to-end tests); stop it with [`Running::stop`]. Needs a Tokio runtime.
pub async fn boot(toml: &str, base: &Path) -> Result<Running, BootError> {
    let no_overrides = BTreeMap::<String, String>::new();
    let cfg = Config::from_toml(toml, base, &no_overrides as &dyn Strings)?;
    let app = App::from_config(&cfg)?;
    load_start_bundles(&app, &cfg);
    Ok(start(&cfg, Arc::new(app)).await?)
}

/// Loads the persisted bundle from the state directory, then `bundle_file`
/// (kept only if it is newer). With neither, or neither valid, the sidecar
/// serves nothing (503) and says why on `/readyz` and in the log.
pub fn load_start_bundles(app: &App, cfg: &Config) {
    let now = clock::now_unix();
    match app.restore_persisted(now) {
        Ok(Some(a)) => tracing::info!(
            revision = a.revision,
            "persisted bundle loaded from the state directory"
        ),
        Ok(None) => {}
        Err(e) => tracing::error!("the persisted bundle cannot be enforced: {e}"),
    }
    if let Some(f) = &cfg.bundle_file {
        match app.load_bundle_file(f, now) {
            Ok(rev) => tracing::info!(revision = rev, path = %f.display(), "bundle file loaded"),
            Err(e) => tracing::warn!(path = %f.display(), "bundle file not loaded: {e}"),
        }
    }
    // A first start has no bundle yet: that is normal, not an error.
    match app.bundle.valid_at(now) {
        Ok(_) => {}
        Err(_) if app.bundle.current().is_none() => tracing::info!(
            "waiting for the first bundle; reads are refused (503) until one arrives"
        ),
        Err(u) => tracing::warn!(
            "the bundle held cannot be enforced ({}); reads are refused (503) until a valid one arrives",
            u.reason()
        ),
    }
}

/// A started sidecar.
pub struct Running {
    /// Where the data port listens (the bound address, also for port 0).
    pub data_addr: SocketAddr,
    /// Where the control port listens, when configured.
    pub control_addr: Option<SocketAddr>,
    /// Where `GET /metrics` is served, when configured.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the PostgreSQL wire protocol is served, when configured.
    pub sql_addr: Option<SocketAddr>,
    /// Where Arrow Flight SQL is served, when configured.
    pub flight_addr: Option<SocketAddr>,
    app: Arc<App>,
    /// The config it runs with (the `[auth]` of the last reload).
    cfg: Config,
    stop: watch::Sender<bool>,
    data_task: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind(addr: SocketAddr, key: &'static str) -> Result<tokio::net::TcpListener, LaunchError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| LaunchError::Bind { addr, key, source })
}

/// Binds the data port (and the control port, when configured), starts the
/// engine link when `cfg.engine` is set, and the expiry watch.
pub async fn start(cfg: &Config, app: Arc<App>) -> Result<Running, LaunchError> {
    let data = bind(cfg.listen_data, "listen.data").await?;
    let data_addr = data.local_addr().unwrap_or(cfg.listen_data);
    let control = match cfg.listen_control {
        None => None,
        Some(a) => Some(bind(a, "listen.control").await?),
    };
    let (stop, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = Vec::new();
    let mut control_addr = None;
    if let Some(listener) = control {
        let addr = listener.local_addr().unwrap_or(data_addr);
        control_addr = Some(addr);
        tracing::info!(%addr, "control port listening");
        let id = cfg
            .engine
            .as_ref()
            .and_then(|e| e.instance_id.clone())
            .unwrap_or_else(|| {
                engine_link::default_instance_id(&app.descriptor.product_id(), addr)
            });
        if !engine_link::valid_instance_id(&id) {
            return Err(LaunchError::InstanceId(id));
        }
        app.control.set_instance_id(id.clone());
        tasks.push(tokio::spawn(server::serve_control(
            listener,
            Arc::clone(&app),
            stopped(),
        )));
        if let Some(e) = &cfg.engine {
            let link = LinkConfig {
                engine_url: e.url.clone(),
                instance_id: id,
                control_url: e
                    .advertise_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{addr}")),
                poll_wait: Duration::from_secs(e.poll_wait_seconds),
                token: e.registration_token.as_ref().map(|t| t.0.clone()),
            };
            let span = tracing::info_span!("engine_link", engine = %link.engine_url);
            tasks.push(tokio::spawn(
                engine_link::run(Arc::clone(&app), link, stopped()).instrument(span),
            ));
        }
    }
    let mut metrics_addr = None;
    if let Some(addr) = cfg.listen_metrics {
        let listener = bind(addr, "listen.metrics").await?;
        let addr = listener.local_addr().unwrap_or(addr);
        metrics_addr = Some(addr);
        tracing::info!(%addr, "metrics listening (GET /metrics)");
        tasks.push(tokio::spawn(server::serve_metrics(
            listener,
            Arc::clone(&app),
            stopped(),
        )));
    }
    let drain = Duration::from_millis(app.limits.drain_timeout_ms);
    let tls = match &cfg.sql.tls {
        Some((cert, key)) if cfg.sql.postgres.is_some() || cfg.sql.flight.is_some() => Some((
            meshgov_wire::tls::server_config(cert, key, &[]).map_err(LaunchError::Tls)?,
            meshgov_wire::tls::server_config(cert, key, &[b"h2"]).map_err(LaunchError::Tls)?,
        )),
        _ => None,
    };
    let mut sql_addr = None;
    if let Some(addr) = cfg.sql.postgres {
        let listener = bind(addr, "listen.sql").await?;
        let addr = listener.local_addr().unwrap_or(addr);
        sql_addr = Some(addr);
        tracing::info!(%addr, tls = tls.is_some(), "SQL port listening (PostgreSQL wire protocol)");
        tasks.push(tokio::spawn(crate::sql::pg::serve(
            Arc::clone(&app),
            listener,
            tls.as_ref().map(|t| Arc::clone(&t.0)),
            stopped(),
            drain,
        )));
    }
    let mut flight_addr = None;
    if let Some(addr) = cfg.sql.flight {
        let listener = bind(addr, "listen.flight").await?;
        let addr = listener.local_addr().unwrap_or(addr);
        flight_addr = Some(addr);
        tracing::info!(%addr, tls = tls.is_some(), "Flight SQL port listening");
        tasks.push(tokio::spawn(crate::sql::flight::serve(
            Arc::clone(&app),
            listener,
            tls.as_ref().map(|t| Arc::clone(&t.1)),
            stopped(),
            drain,
        )));
    }
    let _ = app.sql_ports.set(crate::app::SqlPorts {
        postgres: sql_addr,
        flight: flight_addr,
        tls: tls.is_some(),
    });
    tasks.extend(app.auth.spawn_key_refresh(&stop.subscribe()));
    tasks.push(tokio::spawn(control::watch_expiry(
        Arc::clone(&app),
        stopped(),
    )));
    tracing::info!(addr = %data_addr, "data port listening");
    let data_task = tokio::spawn(server::serve(data, Arc::clone(&app), stopped()));
    Ok(Running {
        data_addr,
        control_addr,
        metrics_addr,
        sql_addr,
        flight_addr,
        app,
        cfg: cfg.clone(),
        stop,
        data_task,
        tasks,
    })
}

impl Running {
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Applies what of `next` (the config file read again, on SIGHUP) can
    /// change without a restart: the `[auth]` table, its issuers' settings
    /// and key files. Logs what changed; a config that does not load
    /// changes nothing. Other changed settings are logged as needing a
    /// restart.
    pub fn reload(&mut self, next: Result<Config, ConfigError>) {
        let next = match next {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload refused, the settings in force stay: {e}");
                return;
            }
        };
        match self.app.auth.reload(&next.auth) {
            Ok(changes) => {
                if changes.is_empty() {
                    tracing::info!("reloaded [auth]: nothing changed");
                }
                for c in changes {
                    tracing::info!("reloaded [auth]: {c}");
                }
                self.tasks.retain(|t| !t.is_finished());
                self.tasks
                    .extend(self.app.auth.spawn_key_refresh(&self.stop.subscribe()));
                self.cfg.auth = next.auth.clone();
            }
            Err(e) => {
                tracing::error!("reload refused, the settings in force stay: {e}");
                return;
            }
        }
        let rest = Config {
            auth: self.cfg.auth.clone(),
            ..next
        };
        if rest != self.cfg {
            tracing::warn!(
                "settings outside [auth] changed in the config file; they apply at the next restart"
            );
        }
    }

    /// Stops accepting, lets reads in flight finish (within
    /// `limits.drain_timeout_ms`), stops the background tasks, then closes
    /// the audit log: what is queued, completion events included, and a
    /// final signed checkpoint, on disk before this returns.
    pub async fn stop(self) {
        tracing::info!(
            grace_ms = self.app.limits.drain_timeout_ms,
            "shutting down: refusing new connections, draining reads in flight"
        );
        let _ = self.stop.send(true);
        let _ = self.data_task.await;
        for t in self.tasks {
            let _ = t.await;
        }
        let audit = Arc::clone(&self.app.audit);
        let _ = tokio::task::spawn_blocking(move || audit.close()).await;
        let head = self.app.audit.head();
        tracing::info!(
            audit_seq = head.seq,
            checkpoint_seq = head.checkpoint_seq,
            "stopped"
        );
    }
}
