//! Starting and stopping a sidecar: its listeners (data, control, metrics),
//! its engine link and its expiry watch, for the `meshgov-sidecar` binary
//! and for programs that run sidecars in process (`meshgov demo`); and the
//! shutdown signals both listen to.

use crate::config::Config;
use crate::engine_link::{self, LinkConfig};
use crate::{App, control, server};
use std::io::Write as _;
use std::net::SocketAddr;
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
}

impl LaunchError {
    /// The binary's exit code: 70 for a listener, 64 for configuration.
    pub fn exit_code(&self) -> u8 {
        match self {
            LaunchError::Bind { .. } => 70,
            LaunchError::InstanceId(_) => crate::config::EXIT_BAD_CONFIG as u8,
        }
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
    app: Arc<App>,
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
        app,
        stop,
        data_task,
        tasks,
    })
}

impl Running {
    pub fn app(&self) -> &Arc<App> {
        &self.app
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

/// The exit code of a second shutdown signal (128 + SIGINT, by convention).
pub const EXIT_FORCED: u8 = 130;

/// SIGTERM and SIGINT (Ctrl-C), as one stream of shutdown requests.
/// Install it first, so that from then on a signal starts a drain rather
/// than killing the process.
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next SIGTERM or SIGINT.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }

    /// From now on, the next signal exits the process at once with
    /// [`EXIT_FORCED`], without waiting for a drain. Every audit event
    /// already acknowledged is durable; streams cut then get no completion
    /// event.
    pub fn force_on_next(mut self, program: &'static str) {
        tokio::spawn(async move {
            self.next().await;
            // Not `eprintln!`: it panics when stderr cannot be written.
            let _ = writeln!(
                std::io::stderr(),
                "{program}: second shutdown signal; exiting at once"
            );
            std::process::exit(i32::from(EXIT_FORCED));
        });
    }
}
