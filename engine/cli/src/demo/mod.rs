//! `meshgov demo`: the example media mesh on this machine, on loopback,
//! from embedded defaults only: the policy repository (`meshgov init`'s),
//! seeded sample data, fresh keys, the engine, and one sidecar per product,
//! all in this process. Then a scripted tour, or (`--no-tour`) just the
//! running mesh until Ctrl-C.

mod data;
mod tour;

use crate::Failure;
use meshgov_bundle::SigningKey;
use meshgov_conformance::token::{
    self, DEFAULT_AUDIENCE as AUDIENCE, DEFAULT_ISSUER as ISSUER, Issuer, TokenArgs,
};
use meshgov_server::{Engine, EngineConfig};
use meshgov_shutdown::Signals;
use meshgov_sidecar::launch::Running;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `meshgov demo`'s options.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Rows of sample data per product.
    #[arg(long, default_value_t = 1000)]
    pub rows: usize,
    /// The sample data's seed: the same seed gives the same data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Work in DIR (new or empty; kept afterwards) instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the temporary directory (policies, keys, data, state, logs) on exit.
    #[arg(long)]
    pub keep: bool,
    /// Start the mesh and keep it running, without the tour.
    #[arg(long, conflicts_with = "exit")]
    pub no_tour: bool,
    /// Stop after the tour instead of running on until Ctrl-C (for scripts and CI).
    #[arg(long)]
    pub exit: bool,
    /// The engine's port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub engine_port: u16,
}

/// The example products: descriptor file, product id, port.
pub const PRODUCTS: &[(&str, &str, &str)] = &[
    ("user-profiles", "users/user-profiles", "profiles"),
    ("play-events", "playback/play-events", "plays"),
    ("artist-payments", "artists/artist-payments", "payments"),
];

/// One running sidecar of the demo.
pub struct Sidecar {
    pub product: &'static str,
    pub port: &'static str,
    pub running: Running,
}

impl Sidecar {
    pub fn data_url(&self) -> String {
        format!("http://{}", self.running.data_addr)
    }

    pub fn metrics_url(&self) -> String {
        self.running
            .metrics_addr
            .map(|a| format!("http://{a}/metrics"))
            .unwrap_or_default()
    }

    pub fn control_url(&self) -> String {
        self.running
            .control_addr
            .map(|a| format!("http://{a}"))
            .unwrap_or_default()
    }

    pub fn revision(&self) -> Option<u64> {
        self.running.app().bundle.current().map(|b| b.meta.revision)
    }
}

/// The running demo mesh.
pub struct Mesh {
    pub dir: PathBuf,
    pub engine_url: String,
    pub sidecars: Vec<Sidecar>,
    idp_pem: String,
}

impl Mesh {
    pub fn sidecar(&self, product: &str) -> Option<&Sidecar> {
        self.sidecars.iter().find(|s| s.product == product)
    }

    /// A consumer token from the demo's identity provider.
    pub fn token(&self, sub: &str, groups: &[&str], purpose: &str) -> Result<String, Failure> {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        token::mint_pem(
            &self.idp_pem,
            &TokenArgs {
                key: &self.dir.join("keys/idp"),
                sub,
                groups: &groups,
                purpose,
                issuer: &Issuer::default(),
                ttl: 3600,
                now_unix: time::OffsetDateTime::now_utc().unix_timestamp(),
            },
        )
        .map(|m| m.token)
        .map_err(Failure::from)
    }

    /// Waits until every sidecar has a bundle of at least `revision` in force.
    pub async fn wait_for_revision(&self, revision: u64, within: Duration) -> Result<(), Failure> {
        let start = Instant::now();
        loop {
            let behind: Vec<&str> = self
                .sidecars
                .iter()
                .filter(|s| s.revision().is_none_or(|r| r < revision))
                .map(|s| s.product)
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if start.elapsed() > within {
                return Err(Failure::violations(format!(
                    "revision {revision} did not reach {} within {} s; see {}",
                    behind.join(", "),
                    within.as_secs(),
                    self.dir.join("demo.log").display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn io(what: &Path, e: std::io::Error) -> Failure {
    Failure::io(what, &e)
}

fn new_key(path: &Path) -> Result<SigningKey, Failure> {
    let pem = SigningKey::generate_pkcs8_pem(&ring::rand::SystemRandom::new())
        .map_err(|e| Failure::usage(e.to_string()))?;
    meshgov_bundle::write_private_key_file(path, &pem)
        .map_err(|e| Failure::usage(e.to_string()))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| Failure::usage(e.to_string()))
}

pub fn run(a: DemoArgs) -> Result<(), Failure> {
    let (dir, temp) = match &a.dir {
        Some(d) => {
            if std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()) {
                return Err(Failure::usage(format!(
                    "--dir `{}` is not empty; give a new or empty directory",
                    d.display()
                )));
            }
            std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("meshgov-demo-")
                .tempdir()
                .map_err(|e| Failure::usage(format!("cannot make a work directory: {e}")))?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let log = std::fs::File::create(dir.join("demo.log")).map_err(|e| io(&dir, e))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(log))
        .log_internal_errors(false)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::usage(format!("cannot start the runtime: {e}")))?;
    let result = rt.block_on(run_in(&a, &dir));
    match temp {
        Some(t) if a.keep => {
            let kept = t.keep();
            outln!("kept {}", kept.display());
        }
        _ => {}
    }
    result
}

async fn run_in(a: &DemoArgs, dir: &Path) -> Result<(), Failure> {
    // Installed first: from here on Ctrl-C stops the mesh cleanly.
    let mut signals = Signals::new()
        .map_err(|e| Failure::usage(format!("cannot install signal handlers: {e}")))?;
    let started = Instant::now();
    let (mesh, engine_task, stop_engine) = start(a, dir).await?;
    outln!(
        "meshgov demo: the media mesh on 127.0.0.1, {} rows per product (seed {}), in {}",
        a.rows,
        a.seed,
        dir.display()
    );
    let revision = mesh
        .sidecars
        .iter()
        .filter_map(Sidecar::revision)
        .min()
        .unwrap_or(0);
    outln!(
        "engine built, signed and rolled out revision {revision} to {} sidecars in {:.1} s\n",
        mesh.sidecars.len(),
        started.elapsed().as_secs_f64()
    );
    let mut interrupted = false;
    let outcome = if a.no_tour {
        Ok(())
    } else {
        tokio::select! {
            r = tour::run(&mesh) => r,
            () = signals.next() => {
                interrupted = true;
                Ok(())
            }
        }
    };
    if !interrupted {
        print_urls(&mesh);
        if outcome.is_ok() && !a.exit {
            outln!("\nthe mesh keeps running; Ctrl-C stops it");
            signals.next().await;
        }
    }
    outln!("stopping…");
    signals.force_on_next("meshgov demo");
    let _ = stop_engine.send(true);
    for s in mesh.sidecars {
        s.running.stop().await;
    }
    let _ = engine_task.await;
    outcome
}

fn print_urls(m: &Mesh) {
    outln!("\n── explore ─────────────────────────────────────────────────────────");
    outln!(
        "{:<24} {url}/   (metrics: {url}/metrics)",
        "fleet page",
        url = m.engine_url
    );
    for s in &m.sidecars {
        outln!(
            "{:<24} data {}/  (port `{}`)   control {}   metrics {}",
            s.product,
            s.data_url(),
            s.port,
            s.control_url(),
            s.metrics_url()
        );
    }
    let key = m.dir.join("keys/idp");
    outln!(
        "{:<24} meshgov token --key {} --sub mia --groups marketing --purpose campaign-analytics",
        "a token",
        key.display()
    );
    if let Some(s) = m.sidecar("users/user-profiles") {
        outln!(
            "{:<24} curl -H \"Authorization: Bearer $TOKEN\" '{}/v1/ports/profiles/records?limit=5'",
            "then",
            s.data_url()
        );
        if let Some(a) = s.running.sql_addr {
            outln!(
                "{:<24} PGPASSWORD=$TOKEN psql \"host={} port={} dbname=user-profiles user=mia sslmode=disable\"",
                "or SQL",
                a.ip(),
                a.port()
            );
        }
        if let Some(a) = s.running.flight_addr {
            outln!(
                "{:<24} grpc://{a} with `authorization: Bearer $TOKEN` (ADBC's Flight SQL driver)",
                "or Flight SQL"
            );
        }
    }
    outln!(
        "{:<24} meshgov audit show {}/state/user-profiles/audit",
        "the audit log",
        m.dir.display()
    );
}

/// Writes the repository, keys and data, starts the engine and the
/// sidecars, and waits for the first rollout.
async fn start(
    a: &DemoArgs,
    dir: &Path,
) -> Result<
    (
        Mesh,
        tokio::task::JoinHandle<()>,
        tokio::sync::watch::Sender<bool>,
    ),
    Failure,
> {
    let policies = dir.join("policies");
    crate::init::write(&policies)?;
    std::fs::create_dir_all(dir.join("keys")).map_err(|e| io(dir, e))?;
    let guild = new_key(&dir.join("keys/guild"))?;
    let idp = new_key(&dir.join("keys/idp"))?;
    let idp_pem = std::fs::read_to_string(dir.join("keys/idp")).map_err(|e| io(dir, e))?;
    let pseudonym_key = dir.join("keys/user-identity.key");
    std::fs::write(&pseudonym_key, random_hex()?).map_err(|e| io(&pseudonym_key, e))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    data::generate(&dir.join("data"), a.rows, a.seed, now).map_err(|e| io(dir, e))?;

    let guild_public = guild.public_key();
    let mut cfg = EngineConfig::new(policies, guild);
    cfg.watch_interval = Duration::from_millis(200);
    // The sidecars register with a fresh token, as in a real deployment.
    let registration_token = random_hex()?;
    cfg.registration_token = Some(registration_token.clone());
    let engine = Engine::new(cfg);
    let addr = SocketAddr::from(([127, 0, 0, 1], a.engine_port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::usage(format!("cannot listen on `{addr}`: {e}")))?;
    let engine_url = format!("http://{}", listener.local_addr().unwrap_or(addr));
    let (stop_engine, stop_rx) = tokio::sync::watch::channel(false);
    let engine_task = tokio::spawn(meshgov_server::api::serve(listener, engine, async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|s| *s).await;
    }));

    let auth =
        meshgov_sidecar::config::eddsa_auth_toml(ISSUER, AUDIENCE, idp.public_key().as_bytes());
    let mut sidecars = Vec::new();
    for (file, product, port) in PRODUCTS {
        let text = format!(
            r#"
mesh = "media-mesh"
descriptor = "policies/products/{file}.yaml"
state_dir = "state/{file}"
trusted_bundle_keys = ["{guild_public}"]
[listen]
data = "127.0.0.1:0"
control = "127.0.0.1:0"
metrics = "127.0.0.1:0"
sql = "127.0.0.1:0"
flight = "127.0.0.1:0"
[sql]
allow_plaintext = true
[engine]
url = "{engine_url}"
instance_id = "{file}-0"
poll_wait_seconds = 5
registration_token = "{registration_token}"
[upstream]
path = "data/{file}"
{auth}
[pseudonym_keys]
user-identity = "keys/user-identity.key"
"#
        );
        let running = meshgov_sidecar::launch::boot(&text, dir)
            .await
            .map_err(|e| Failure::usage(format!("{product}: {e}")))?;
        sidecars.push(Sidecar {
            product,
            port,
            running,
        });
    }
    let mesh = Mesh {
        dir: dir.to_path_buf(),
        engine_url,
        sidecars,
        idp_pem,
    };
    mesh.wait_for_revision(1, Duration::from_secs(30)).await?;
    Ok((mesh, engine_task, stop_engine))
}

/// 32 random bytes, hex-encoded: a pseudonym secret or a token.
fn random_hex() -> Result<String, Failure> {
    let mut b = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| Failure::usage("the system random source failed"))?;
    Ok(b.iter().map(|b| format!("{b:02x}")).collect())
}
