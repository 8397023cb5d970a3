//! `meshgov-sidecar --config sidecar.toml`

use meshgov_sidecar::config::{self, Config, EXIT_BAD_CONFIG};
use meshgov_sidecar::{App, clock, server};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

const USAGE: &str = "usage: meshgov-sidecar --config <sidecar.toml>

Serves the data port for one product and enforces its policy bundle. Every
answer is audited in <state_dir>/audit before it leaves; checkpoints are
signed with <state_dir>/audit-signing.key (generated on first start; verify
with `meshgov audit verify <state_dir>/audit --key <state_dir>/audit-signing.pub`).
Config keys may be overridden by MESHGOV_SIDECAR_* environment variables.";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut config_path: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" | "-c" => config_path = args.next().map(PathBuf::from),
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
    let cfg = match Config::load(&config_path, &config::Env) {
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
    if let Some(f) = &cfg.bundle_file {
        load_bundle_file(&app, f);
    }
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
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(cfg.listen_data).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "meshgov-sidecar: cannot listen on `{}` (listen.data): {e}",
                    cfg.listen_data
                );
                return ExitCode::from(70);
            }
        };
        tracing::info!(addr = %cfg.listen_data, "data port listening");
        let app = Arc::new(app);
        server::serve(listener, Arc::clone(&app), shutdown_signal()).await;
        // Writes what is queued and a final signed checkpoint.
        app.audit.close();
        ExitCode::SUCCESS
    })
}

/// Loads the start-up bundle; on failure the sidecar serves nothing (503)
/// and says why on `/readyz` and in the log.
fn load_bundle_file(app: &App, path: &std::path::Path) {
    match app.load_bundle_file(path, clock::now_unix()) {
        Ok(rev) => tracing::info!(revision = rev, "bundle loaded"),
        Err(e) => {
            tracing::error!(path = %path.display(), "{e}; serving nothing until a valid bundle arrives")
        }
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

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down; draining in-flight reads");
}
