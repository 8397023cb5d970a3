//! `meshgov-sidecar --config sidecar.toml [--engine URL]`

use meshgov_sidecar::config::{self, Config, EXIT_BAD_CONFIG, Strings};
use meshgov_sidecar::engine_link::{self, LinkConfig};
use meshgov_sidecar::{App, clock, control, server};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

const USAGE: &str = "usage: meshgov-sidecar --config <sidecar.toml> [--engine <http://host:port>]

  --config, -c FILE   the sidecar's TOML config (see the README, \"Sidecar\")
  --engine URL        register with `meshgov serve` at URL and receive bundles
                      from it (overrides `engine.url`; needs `listen.control`)

Serves the data port for one product and enforces its policy bundle. Every
answer is audited in <state_dir>/audit before it leaves; checkpoints are
signed with <state_dir>/audit-signing.key (generated on first start; verify
with `meshgov audit verify <state_dir>/audit --key <state_dir>/audit-signing.pub`).

Every scalar config key `a.b_c` can be overridden with MESHGOV_SIDECAR_A_B_C.
Logs go to stderr, as text or JSON lines (`log_format`); RUST_LOG sets the
level (default `info`; `debug` adds a line per request).

SIGTERM or SIGINT: stop accepting, let reads in flight finish (at most
`limits.drain_timeout_ms`), write the audit log's final checkpoint, exit 0.
A second signal during the drain exits at once with 130.

Exit codes: 0 clean shutdown, 64 bad configuration, 70 a listener could not
be bound, 130 a second shutdown signal.";

/// Command-line values first, then the process environment.
struct Overrides {
    args: BTreeMap<String, String>,
}

impl Strings for Overrides {
    fn get(&self, key: &str) -> Option<String> {
        self.args.get(key).cloned().or_else(|| config::Env.get(key))
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut config_path: Option<PathBuf> = None;
    let mut overrides = Overrides {
        args: BTreeMap::new(),
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" | "-c" => config_path = args.next().map(PathBuf::from),
            "--engine" => {
                if let Some(url) = args.next() {
                    overrides.args.insert(config::env_name("engine.url"), url);
                }
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("meshgov-sidecar: unknown argument `{other}`\n{USAGE}");
                return ExitCode::from(EXIT_BAD_CONFIG as u8);
            }
        }
    }
    let Some(config_path) = config_path else {
        eprintln!("meshgov-sidecar: `--config` is required\n{USAGE}");
        return ExitCode::from(EXIT_BAD_CONFIG as u8);
    };
    let cfg = match Config::load(&config_path, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("meshgov-sidecar: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    init_logging(&cfg.log_format);
    let app = match App::from_config(&cfg) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("meshgov-sidecar: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    let head = app.audit.head();
    tracing::info!(
        dir = %app.audit.dir().display(), seq = head.seq, public_key = %head.public_key,
        "audit log open; checkpoints are signed with this key"
    );
    if !cfg.audit.fsync {
        tracing::warn!(
            "audit.durability = \"buffered\": acknowledged audit events can be lost on power failure; use only for benchmarks"
        );
    }
    load_start_bundles(&app, &cfg);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshgov-sidecar: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    rt.block_on(run(cfg, Arc::new(app)))
}

async fn bind(addr: std::net::SocketAddr, key: &str) -> Result<tokio::net::TcpListener, ExitCode> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        eprintln!("meshgov-sidecar: cannot listen on `{addr}` ({key}): {e}");
        ExitCode::from(70)
    })
}

/// The exit code of a second shutdown signal (128 + SIGINT, by convention).
const EXIT_FORCED: u8 = 130;

async fn run(cfg: Config, app: Arc<App>) -> ExitCode {
    // Installed first, so that from here on a signal starts a drain rather
    // than killing the process.
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("meshgov-sidecar: cannot install signal handlers: {e}");
            return ExitCode::from(70);
        }
    };
    let data = match bind(cfg.listen_data, "listen.data").await {
        Ok(l) => l,
        Err(c) => return c,
    };
    let control = match cfg.listen_control {
        None => None,
        Some(a) => match bind(a, "listen.control").await {
            Ok(l) => Some(l),
            Err(c) => return c,
        },
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = Vec::new();
    if let Some(listener) = control {
        let addr = listener.local_addr().unwrap_or(cfg.listen_data);
        tracing::info!(%addr, "control port listening");
        let id = cfg
            .engine
            .as_ref()
            .and_then(|e| e.instance_id.clone())
            .unwrap_or_else(|| {
                engine_link::default_instance_id(&app.descriptor.product_id(), addr)
            });
        if !engine_link::valid_instance_id(&id) {
            eprintln!(
                "meshgov-sidecar: config key `engine.instance_id`: `{id}` may hold only ASCII letters, digits and `-_.@:` (at most 128)"
            );
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
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
    if let Some(addr) = cfg.listen_metrics {
        let listener = match bind(addr, "listen.metrics").await {
            Ok(l) => l,
            Err(c) => return c,
        };
        tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "metrics listening (GET /metrics)");
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
    tracing::info!(addr = %cfg.listen_data, "data port listening");
    let data_task = tokio::spawn(server::serve(data, Arc::clone(&app), stopped()));
    signals.next().await;
    tracing::info!(
        grace_ms = app.limits.drain_timeout_ms,
        "shutting down: refusing new connections, draining reads in flight"
    );
    let _ = stop_tx.send(true);
    // A second signal does not wait for the drain. Every event already
    // acknowledged is durable; streams cut here get no completion event.
    tokio::spawn(async move {
        signals.next().await;
        eprintln!("meshgov-sidecar: second shutdown signal; exiting at once");
        std::process::exit(i32::from(EXIT_FORCED));
    });
    let _ = data_task.await;
    for t in tasks {
        let _ = t.await;
    }
    // Writes what is queued (completion events included) and a final
    // signed checkpoint, and waits for both to be on disk.
    let audit = Arc::clone(&app.audit);
    let _ = tokio::task::spawn_blocking(move || audit.close()).await;
    let head = app.audit.head();
    tracing::info!(
        audit_seq = head.seq,
        checkpoint_seq = head.checkpoint_seq,
        "stopped"
    );
    ExitCode::SUCCESS
}

/// Loads the persisted bundle from the state directory, then `bundle_file`
/// (kept only if it is newer). With neither, or neither valid, the sidecar
/// serves nothing (503) and says why on `/readyz` and in the log.
fn load_start_bundles(app: &App, cfg: &Config) {
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
    if app.bundle.valid_at(now).is_err() {
        tracing::error!("no valid bundle yet; serving nothing until one arrives");
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

/// SIGTERM and SIGINT (Ctrl-C), as one stream of shutdown requests.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
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
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
