//! `meshgov serve --webhook-listen`: the mutating admission webhook that
//! injects the sidecar into pods ([`meshgov_server::webhook`]), on its own
//! TLS listener next to the engine API.

use crate::Failure;
use meshgov_server::inject::{
    DEFAULT_CONTROL_PORT, DEFAULT_DATA_PORT, DEFAULT_IMAGE, DEFAULT_METRICS_PORT, Options,
};
use meshgov_server::webhook::{self, Webhook};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// `meshgov serve`'s webhook options.
#[derive(clap::Args)]
#[command(next_help_heading = "Admission webhook")]
pub struct WebhookArgs {
    /// Also answer Kubernetes admission reviews (`POST /mutate`, over TLS)
    /// on ADDR: the mutating webhook that injects the sidecar into pods
    /// annotated `meshgov.io/product` (deploy/base configures it).
    #[arg(long, value_name = "ADDR", requires_all = ["webhook_cert", "webhook_key"])]
    pub webhook_listen: Option<String>,
    /// The webhook's certificate chain (PEM); read again when the file changes.
    #[arg(long, value_name = "PEM", requires = "webhook_listen")]
    pub webhook_cert: Option<PathBuf>,
    /// The webhook's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "webhook_listen")]
    pub webhook_key: Option<PathBuf>,
    /// The sidecar image the webhook injects.
    #[arg(long, value_name = "IMAGE", default_value = DEFAULT_IMAGE)]
    pub inject_image: String,
    /// The engine injected sidecars register with, e.g.
    /// `http://meshgov-engine.meshgov-system.svc:7600`. Default: the
    /// `engine.url` of each sidecar's config.
    #[arg(long, value_name = "URL")]
    pub inject_engine: Option<String>,
    /// The injected sidecar's data port.
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_DATA_PORT)]
    pub inject_data_port: u16,
    /// The injected sidecar's control port.
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_CONTROL_PORT)]
    pub inject_control_port: u16,
    /// The injected sidecar's metrics port.
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_METRICS_PORT)]
    pub inject_metrics_port: u16,
    /// Mount no keys Secret in injected pods (their configs name no key files).
    #[arg(long)]
    pub inject_no_keys_secret: bool,
}

/// A webhook ready to listen: its address, TLS and decisions checked.
pub struct Prepared {
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    webhook: Arc<Webhook>,
}

/// Checks the options; `None` without `--webhook-listen`.
pub fn prepare(a: &WebhookArgs) -> Result<Option<Prepared>, Failure> {
    let (Some(listen), Some(cert), Some(key)) =
        (&a.webhook_listen, &a.webhook_cert, &a.webhook_key)
    else {
        return Ok(None);
    };
    let addr: SocketAddr = listen.parse().map_err(|_| {
        Failure::usage(format!(
            "--webhook-listen `{listen}`: expected host:port with an IP host"
        ))
    })?;
    let tls = webhook::tls_config(cert, key)
        .map_err(|e| Failure::usage(format!("--webhook-cert/--webhook-key: {e}")))?;
    let opts = Options {
        engine: a.inject_engine.clone(),
        image: a.inject_image.clone(),
        no_keys_secret: a.inject_no_keys_secret,
        data_port: a.inject_data_port,
        control_port: a.inject_control_port,
        metrics_port: a.inject_metrics_port,
        flag_prefix: "--inject-",
        ..Options::default()
    };
    let webhook = Webhook::new(opts).map_err(Failure::usage)?;
    Ok(Some(Prepared {
        addr,
        tls,
        webhook: Arc::new(webhook),
    }))
}

/// A running webhook: send `true` to stop it, then await its task.
pub struct Running {
    pub stop: watch::Sender<bool>,
    pub task: JoinHandle<()>,
}

impl Prepared {
    /// Listens and serves until stopped; requests in flight then get `drain`.
    pub async fn start(self, drain: Duration) -> Result<Running, Failure> {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .map_err(|e| Failure::usage(format!("cannot listen on `{}`: {e}", self.addr)))?;
        errln!(
            "meshgov serve: admission webhook on https://{}{}",
            listener.local_addr().unwrap_or(self.addr),
            webhook::PATH
        );
        let (stop, mut stopped) = watch::channel(false);
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let task = tokio::spawn(webhook::serve(
            listener,
            self.tls,
            self.webhook,
            shutdown,
            drain,
        ));
        Ok(Running { stop, task })
    }
}
