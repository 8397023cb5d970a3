//! `meshgov-sidecar --config sidecar.toml [--engine URL]`

use meshgov_sidecar::config::{self, Config, EXIT_BAD_CONFIG, Strings};
use meshgov_sidecar::{App, launch};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

const USAGE: &str = "usage: meshgov-sidecar --config <sidecar.toml> [--engine <http://host:port>]

  --config, -c FILE   the sidecar's TOML config (see the README, \"Sidecar\")
  --engine URL        register with `meshgov serve` at URL and receive bundles
                      from it (overrides `engine.url`; needs `listen.control`)
  --version, -V       print the version and exit

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

SIGHUP: read the config file again and apply what changes without a
restart: the `[auth]` table (issuers, claim mapping, key files). What
changed is logged; a file that does not load changes nothing.

Exit codes: 0 clean shutdown, 64 bad configuration, 70 a listener could not
be bound, 130 a second shutdown signal.";

/// `eprintln!` that loses the message, rather than panicking, when stderr
/// cannot be written (a full disk under the log file).
macro_rules! errln {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

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
                let _ = writeln!(std::io::stdout(), "{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--version" | "-V" => {
                let _ = writeln!(
                    std::io::stdout(),
                    "meshgov-sidecar {}",
                    env!("CARGO_PKG_VERSION")
                );
                return ExitCode::SUCCESS;
            }
            other => {
                errln!("meshgov-sidecar: unknown argument `{other}`\n{USAGE}");
                return ExitCode::from(EXIT_BAD_CONFIG as u8);
            }
        }
    }
    let Some(config_path) = config_path else {
        errln!("meshgov-sidecar: `--config` is required\n{USAGE}");
        return ExitCode::from(EXIT_BAD_CONFIG as u8);
    };
    let cfg = match Config::load(&config_path, &overrides) {
        Ok(c) => c,
        Err(e) => {
            errln!("meshgov-sidecar: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    init_logging(&cfg.log_format);
    let app = match App::from_config(&cfg) {
        Ok(a) => a,
        Err(e) => {
            errln!("meshgov-sidecar: {e}");
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
    launch::load_start_bundles(&app, &cfg);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("meshgov-sidecar: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let reload = move || Config::load(&config_path, &overrides);
    rt.block_on(run(cfg, Arc::new(app), reload))
}

async fn run(
    cfg: Config,
    app: Arc<App>,
    reload: impl Fn() -> Result<Config, config::ConfigError>,
) -> ExitCode {
    let mut signals = match meshgov_shutdown::Signals::new() {
        Ok(s) => s,
        Err(e) => {
            errln!("meshgov-sidecar: cannot install signal handlers: {e}");
            return ExitCode::from(70);
        }
    };
    let mut hangups = match hangups() {
        Ok(h) => h,
        Err(e) => {
            errln!("meshgov-sidecar: cannot install the SIGHUP handler: {e}");
            return ExitCode::from(70);
        }
    };
    let mut running = match launch::start(&cfg, app).await {
        Ok(r) => r,
        Err(e) => {
            errln!("meshgov-sidecar: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    loop {
        tokio::select! {
            () = signals.next() => break,
            () = hangups.next() => {
                tracing::info!("SIGHUP: reading the config file again");
                running.reload(reload());
            }
        }
    }
    signals.force_on_next("meshgov-sidecar");
    running.stop().await;
    ExitCode::SUCCESS
}

/// SIGHUP, as a stream (never on platforms without it).
struct Hangups {
    #[cfg(unix)]
    rx: tokio::signal::unix::Signal,
}

fn hangups() -> std::io::Result<Hangups> {
    Ok(Hangups {
        #[cfg(unix)]
        rx: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
    })
}

impl Hangups {
    async fn next(&mut self) {
        #[cfg(unix)]
        self.rx.recv().await;
        #[cfg(not(unix))]
        std::future::pending::<()>().await;
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A log line that cannot be written (a full disk) is dropped: reporting
    // the failure would print to the same stderr, and `eprintln!` panics
    // when that fails too.
    // Colours only for a person at a terminal, never into a collector.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}
