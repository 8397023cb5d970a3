//! `serve`, `status`, `push` and `control-token`: the engine service and
//! the fleet.

use crate::Failure;
use meshgov_server::client::{self, HttpClient};
use meshgov_server::{Canary, Engine, EngineConfig};
use meshgov_shutdown::Signals;
use meshgov_wire::{Ack, Nack, PushOutcome};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::usage(format!("cannot start the runtime: {e}")))
}

fn signing_key(path: &Path) -> Result<meshgov_bundle::SigningKey, Failure> {
    meshgov_bundle::read_signing_key_file(path).map_err(Failure::key)
}

/// `meshgov serve`'s options.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// The policy repository to watch.
    #[arg(long, default_value = "policies")]
    pub policies: PathBuf,
    /// The governance signing key (PKCS#8 PEM) for bundles and control tokens.
    #[arg(long)]
    pub key: PathBuf,
    /// Where to serve the API and the fleet page.
    #[arg(long, default_value = "127.0.0.1:7600")]
    pub listen: String,
    /// Stage rollouts: `N%` of the registered sidecars, or a comma-separated
    /// list of sidecar or product ids, get each revision first.
    #[arg(long)]
    pub canary: Option<String>,
    /// Seconds the canaries must stay healthy after ACKing before the rest get it.
    #[arg(long, default_value_t = 30)]
    pub canary_bake: u64,
    /// Seconds the canaries have to ACK before the rollout halts.
    #[arg(long, default_value_t = 30)]
    pub canary_ack_timeout: u64,
    /// Bundle lifetime in seconds (default: mesh.toml's `[bundle] ttl_seconds`).
    #[arg(long)]
    pub ttl: Option<u64>,
    /// How often to look for changes, in milliseconds.
    #[arg(long, default_value_t = 250)]
    pub watch_interval_ms: u64,
    /// Log format on stderr: `text`, or `json` (one JSON object per line,
    /// with the fields of the enclosing spans). RUST_LOG sets the level
    /// (default `info`). The container image sets MESHGOV_LOG_FORMAT=json.
    #[arg(long, value_enum, env = "MESHGOV_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The same as `--log-format json`.
    #[arg(long, hide = true)]
    pub log_json: bool,
    /// At shutdown (SIGTERM or SIGINT), how long requests in flight and an
    /// audit collection pass under way may take, in milliseconds. A second
    /// signal exits at once (code 130).
    #[arg(long, default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
    /// Collect every registered sidecar's audit stream into DIR/<sidecar id>/,
    /// verifying each chain as it arrives (check with `meshgov audit verify`).
    #[arg(long, value_name = "DIR")]
    pub collect_audit: Option<PathBuf>,
    /// How often to collect audit streams, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub collect_interval_ms: u64,
    /// A file holding the token sidecars must send to register, long-poll
    /// and report (their `engine.registration_token_file`); make one with
    /// `openssl rand -hex 32`. A control token signed with --key is
    /// accepted too.
    #[arg(long, value_name = "FILE", conflicts_with = "open_registration")]
    pub registration_token_file: Option<PathBuf>,
    /// Let any host that reaches the API register as a sidecar and receive
    /// bundle slices, without a token. Only for a trusted network.
    #[arg(long)]
    pub open_registration: bool,
    #[command(flatten)]
    pub webhook: crate::webhook_cmd::WebhookArgs,
}

/// How `meshgov serve` logs.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The registration token in `f`: at least 16 printable characters.
fn registration_token(f: &std::path::Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(f).map_err(|e| Failure::io(f, &e))?;
    let token = text.trim();
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Failure::usage(format!(
            "--registration-token-file `{}`: expected at least 16 printable characters without spaces (e.g. `openssl rand -hex 32`)",
            f.display()
        )));
    }
    Ok(token.to_string())
}

pub fn serve(a: ServeArgs) -> Result<(), Failure> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Unwritable log lines are dropped rather than reported (see the
    // sidecar's `init_logging`).
    // Colours only for a person at a terminal, never into a collector.
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false);
    if a.log_json || a.log_format == LogFormat::Json {
        sub.json().init();
    } else {
        sub.init();
    }
    if !a.policies.is_dir() {
        return Err(Failure::usage(format!(
            "--policies `{}` is not a directory",
            a.policies.display()
        )));
    }
    let mut cfg = EngineConfig::new(a.policies, signing_key(&a.key)?);
    if let Some(c) = &a.canary {
        cfg.canary = c
            .parse::<Canary>()
            .map_err(|e| Failure::usage(format!("--canary {e}")))?;
    }
    cfg.canary_bake = Duration::from_secs(a.canary_bake);
    cfg.canary_ack_timeout = Duration::from_secs(a.canary_ack_timeout.max(1));
    cfg.ttl_seconds = a.ttl;
    cfg.watch_interval = Duration::from_millis(a.watch_interval_ms.max(10));
    cfg.audit_dir = a.collect_audit;
    cfg.audit_interval = Duration::from_millis(a.collect_interval_ms.max(100));
    cfg.drain_timeout = Duration::from_millis(a.drain_timeout_ms);
    cfg.registration_token = match (&a.registration_token_file, a.open_registration) {
        (Some(f), _) => Some(registration_token(f)?),
        (None, true) => None,
        (None, false) => {
            return Err(Failure::usage(
                "give --registration-token-file FILE (sidecars send the token in it), or --open-registration to let any host that reaches the API register",
            ));
        }
    };
    let addr: std::net::SocketAddr = a.listen.parse().map_err(|_| {
        Failure::usage(format!(
            "--listen `{}`: expected host:port with an IP host",
            a.listen
        ))
    })?;
    let webhook = crate::webhook_cmd::prepare(&a.webhook)?;
    let drain = cfg.drain_timeout;
    let engine = Engine::new(cfg);
    runtime()?.block_on(async move {
        // Installed before listening, so that a signal drains rather than kills.
        let mut signals = Signals::new()
            .map_err(|e| Failure::usage(format!("cannot install signal handlers: {e}")))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Failure::usage(format!("cannot listen on `{addr}`: {e}")))?;
        errln!(
            "meshgov serve: listening on http://{} (fleet page at /), signing with key {}; sidecars must trust {}",
            listener.local_addr().unwrap_or(addr),
            engine.public_key().keyid(),
            engine.public_key()
        );
        let webhook = match webhook {
            Some(w) => Some(w.start(drain).await?),
            None => None,
        };
        let stop_webhook = webhook.as_ref().map(|w| w.stop.clone());
        let shutdown = async move {
            signals.next().await;
            if let Some(stop) = &stop_webhook {
                let _ = stop.send(true);
            }
            tracing::info!("shutting down: refusing new connections, draining requests in flight");
            // A second signal does not wait for the drain.
            signals.force_on_next("meshgov serve");
        };
        meshgov_server::api::serve(listener, engine, shutdown).await;
        if let Some(w) = webhook {
            let _ = w.task.await;
        }
        tracing::info!("stopped");
        Ok(())
    })
}

pub fn status(engine: &str, json: bool) -> Result<(), Failure> {
    let f = runtime()?
        .block_on(client::fleet(&HttpClient::default(), engine))
        .map_err(Failure::usage)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&f).unwrap_or_default());
        return Ok(());
    }
    // An optional value as text; `-` when absent.
    fn or_dash<T: std::fmt::Display>(v: Option<T>) -> String {
        v.map_or_else(|| "-".to_string(), |v| v.to_string())
    }
    outln!(
        "released: revision {} (expires {}); rollout: {} {}{}",
        or_dash(f.released.as_ref().map(|r| r.revision)),
        or_dash(f.released.as_ref().map(|r| &r.expires_at)),
        f.rollout.phase.as_str(),
        or_dash(f.rollout.revision),
        f.rollout
            .reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    if let Some(b) = &f.last_build {
        match &b.error {
            Some(e) => outln!("last build: FAILED at {}: {e}", b.at),
            None => outln!(
                "last build: ok at {}, revision {}",
                b.at,
                or_dash(b.revision)
            ),
        }
    }
    outln!(
        "{:<40} {:<28} {:<12} {:>12} {:>12} {:>8}  {:<20}  LAST ERROR",
        "SIDECAR",
        "PRODUCT",
        "STATE",
        "ACKED",
        "TARGET",
        "AGE",
        "LAST CONTACT"
    );
    for sc in &f.sidecars {
        outln!(
            "{:<40} {:<28} {:<12} {:>12} {:>12} {:>8}  {:<20}  {}",
            sc.id,
            sc.product,
            sc.state.as_str(),
            or_dash(sc.acked_revision),
            or_dash(sc.target_revision),
            or_dash(sc.bundle_age_seconds.map(|a| format!("{a}s"))),
            sc.last_contact,
            or_dash(sc.last_error.as_ref())
        );
    }
    Ok(())
}

pub fn push(file: &Path, sidecar: &str) -> Result<(), Failure> {
    let bytes = std::fs::read(file).map_err(|e| Failure::io(file, &e))?;
    let r = runtime()?
        .block_on(client::push_bundle(
            &HttpClient::default(),
            sidecar,
            bytes.into(),
            Duration::from_secs(30),
        ))
        .map_err(Failure::usage)?;
    match r {
        PushOutcome::Ack(Ack {
            revision,
            digest,
            noop,
        }) => {
            outln!(
                "ACK revision {revision} {digest}{}",
                if noop { " (already in force)" } else { "" }
            );
            Ok(())
        }
        PushOutcome::Nack(Nack {
            code,
            reason,
            active_revision,
        }) => Err(Failure::violations(format!(
            "NACK [{code}]: {reason} (in force: revision {})",
            active_revision.map_or("none".into(), |r| r.to_string())
        ))),
    }
}

pub fn control_token(key: &Path, ttl: u64) -> Result<(), Failure> {
    let key = signing_key(key)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let ttl = i64::try_from(ttl).unwrap_or(i64::MAX);
    outln!(
        "{}",
        meshgov_bundle::mint_control_token(&key, "meshgov-cli", now, ttl)
    );
    Ok(())
}
