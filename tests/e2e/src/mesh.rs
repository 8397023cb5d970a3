//! An engine and sidecars in this process, on loopback: a git copy of the
//! example policies, `meshgov-server`'s API, and sidecars booted from
//! their real TOML config by [`meshgov_sidecar::launch::boot`] (data port,
//! control port, engine link, expiry watch).

use crate::{Context as _, Error, Result};
use meshgov_server::{Engine, EngineConfig};
use meshgov_sidecar::App;
use meshgov_sidecar::launch::Running;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A fresh Ed25519 signing key (governance, identity provider).
pub fn new_key() -> Result<meshgov_bundle::SigningKey> {
    let pem = meshgov_bundle::SigningKey::generate_pkcs8_pem(&ring::rand::SystemRandom::new())
        .context("generate a key")?;
    meshgov_bundle::SigningKey::from_pkcs8_pem(&pem).context("read the new key")
}

/// A git repository holding a copy of the example policies.
pub struct PolicyRepo {
    pub dir: tempfile::TempDir,
    changes: u32,
}

impl PolicyRepo {
    /// `policies/` copied into a new repository, committed on `main`.
    pub fn new() -> Result<PolicyRepo> {
        let dir = tempfile::tempdir().context("make a temporary directory")?;
        crate::copy_dir(&crate::repo_root().join("policies"), dir.path())?;
        let r = PolicyRepo { dir, changes: 0 };
        r.git(&["init", "-q", "-b", "main"])?;
        r.commit_all("policies")?;
        Ok(r)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn git(&self, args: &[&str]) -> Result<()> {
        let ok = Command::new("git")
            .arg("-C")
            .arg(self.path())
            .args([
                "-c",
                "user.name=guild",
                "-c",
                "user.email=guild@example.invalid",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .status()
            .context("run git")?
            .success();
        if ok {
            Ok(())
        } else {
            Err(Error::new(format!("git {args:?} failed")))
        }
    }

    /// Commits everything in the working tree.
    pub fn commit_all(&self, msg: &str) -> Result<()> {
        self.git(&["add", "-A"])?;
        self.git(&["commit", "-q", "-m", msg])
    }

    /// Commits a change to one Cedar policy (one that grants a group no
    /// test uses), so every slice's bundle changes by one policy.
    pub fn commit_change(&mut self) -> Result<()> {
        self.changes += 1;
        let n = self.changes;
        let file = self.path().join("access/change.cedar");
        std::fs::write(
            &file,
            format!(
                "@id(\"change.{n}\")\npermit (principal in Group::\"change-{n}\", action == Action::\"read\", resource);\n"
            ),
        )
        .context(format!("write `{}`", file.display()))?;
        self.commit_all(&format!("change {n}"))
    }

    /// Commits `text` appended to `file`.
    pub fn commit_append(&self, file: &str, text: &str) -> Result<()> {
        let f = self.path().join(file);
        let mut t = std::fs::read_to_string(&f).context(format!("read `{}`", f.display()))?;
        t.push_str(text);
        std::fs::write(&f, t).context(format!("write `{}`", f.display()))?;
        self.commit_all(&format!("edit {file}"))
    }
}

/// An engine serving its API on loopback.
pub struct EngineHandle {
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl EngineHandle {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.task.await.context("the engine's server task")
    }

    /// The fleet view (`GET /v1/fleet`'s body) as JSON.
    pub fn fleet(&self) -> serde_json::Value {
        serde_json::to_value(self.engine.fleet()).unwrap_or_default()
    }

    /// The released revision, if any.
    pub fn released(&self) -> Option<u64> {
        self.engine.fleet().released.map(|r| r.revision)
    }
}

/// Starts an engine with `cfg` on a free loopback port.
pub async fn start_engine(cfg: EngineConfig) -> Result<EngineHandle> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind the engine")?;
    let addr = listener.local_addr().context("the engine's address")?;
    let engine = Engine::new(cfg);
    let (stop, mut rx) = watch::channel(false);
    let task = tokio::spawn(meshgov_server::api::serve(
        listener,
        Arc::clone(&engine),
        async move {
            let _ = rx.wait_for(|s| *s).await;
        },
    ));
    Ok(EngineHandle {
        addr,
        engine,
        stop,
        task,
    })
}

/// The registration token of [`engine_config`]'s engines, which
/// [`options`] gives its sidecars.
pub const REGISTRATION_TOKEN: &str = "e2e-registration-0123456789abcdef";

/// Engine defaults for tests: quick watch, short canary times, sidecars
/// must send [`REGISTRATION_TOKEN`].
pub fn engine_config(repo: &PolicyRepo, key: meshgov_bundle::SigningKey) -> EngineConfig {
    let mut c = EngineConfig::new(repo.path().to_path_buf(), key);
    c.registration_token = Some(REGISTRATION_TOKEN.into());
    c.watch_interval = Duration::from_millis(50);
    c.canary_bake = Duration::from_millis(500);
    c.canary_ack_timeout = Duration::from_secs(5);
    c
}

/// A sidecar running in this process.
pub struct SidecarHandle {
    pub app: Arc<App>,
    /// The data port.
    pub data: SocketAddr,
    /// The control port.
    pub control: SocketAddr,
    pub id: String,
    /// Its config's base directory: `state/`, `data/`, `uid.key`.
    pub dir: tempfile::TempDir,
    running: Running,
}

impl SidecarHandle {
    /// The revision of the bundle in force.
    pub fn revision(&self) -> Option<u64> {
        self.app.bundle.current().map(|b| b.meta.revision)
    }

    /// Stops it as a sidecar stops on SIGTERM (drain, audit log closed);
    /// returns its directory (config, state) for a restart.
    pub async fn stop(self) -> tempfile::TempDir {
        self.running.stop().await;
        self.dir
    }
}

/// How [`start_sidecar`] configures a sidecar.
pub struct SidecarOptions<'a> {
    /// Its `engine.instance_id`.
    pub id: String,
    /// `products/<product>.yaml` of the policy repository.
    pub product: &'a str,
    /// Its `trusted_bundle_keys`.
    pub trusted: Vec<meshgov_bundle::PublicKey>,
    /// Its `engine.url`; without one it has no engine link (bundles come
    /// by push to its control port).
    pub engine_url: Option<String>,
    /// Advertise this control URL instead of the real one (to lose pushes).
    pub advertise: Option<String>,
    /// The long poll's hold time (whole seconds, at least 1).
    pub poll_wait: Duration,
    /// Its `engine.registration_token`.
    pub registration_token: Option<String>,
    /// Start in this directory (holding a previous run's state).
    pub dir: Option<tempfile::TempDir>,
}

/// Options for a sidecar of `product` that registers with `engine` as
/// `id` and trusts its key.
pub fn options<'a>(id: &str, product: &'a str, engine: &EngineHandle) -> SidecarOptions<'a> {
    SidecarOptions {
        id: id.into(),
        product,
        trusted: vec![engine.engine.public_key()],
        engine_url: Some(engine.url()),
        advertise: None,
        poll_wait: Duration::from_secs(30),
        registration_token: Some(REGISTRATION_TOKEN.into()),
        dir: None,
    }
}

/// The identity provider's issuer and audience in every sidecar's `[auth]`.
pub const ISSUER: &str = "https://idp.media.example";
pub const AUDIENCE: &str = "meshgov";

/// Boots a sidecar of the policy repository at `repo`: a data port and a
/// control port on loopback, and an engine link when `o.engine_url` is set.
/// Its upstream is `<dir>/data` (empty); consumer tokens are checked
/// against a fresh identity-provider key.
pub async fn start_sidecar(repo: &Path, o: SidecarOptions<'_>) -> Result<SidecarHandle> {
    let dir = match o.dir {
        Some(d) => d,
        None => tempfile::tempdir().context("make a temporary directory")?,
    };
    std::fs::write(dir.path().join("uid.key"), "x".repeat(40)).context("write uid.key")?;
    std::fs::create_dir_all(dir.path().join("data")).context("make data/")?;
    let idp = new_key()?;
    let trusted: Vec<String> = o.trusted.iter().map(|k| format!("\"{k}\"")).collect();
    let engine = match &o.engine_url {
        None => String::new(),
        Some(url) => format!(
            "[engine]\nurl = {url:?}\ninstance_id = {id:?}\npoll_wait_seconds = {wait}\n{advertise}{token}",
            id = o.id,
            wait = o.poll_wait.as_secs().max(1),
            advertise = o
                .advertise
                .as_ref()
                .map(|a| format!("advertise_url = {a:?}\n"))
                .unwrap_or_default(),
            token = o
                .registration_token
                .as_ref()
                .map(|t| format!("registration_token = {t:?}\n"))
                .unwrap_or_default(),
        ),
    };
    let text = format!(
        r#"
mesh = "media-mesh"
descriptor = {descriptor:?}
state_dir = "state"
trusted_bundle_keys = [{trusted}]
[listen]
data = "127.0.0.1:0"
control = "127.0.0.1:0"
{engine}
[upstream]
path = "data"
{auth}
[pseudonym_keys]
user-identity = "uid.key"
artist-identity = "uid.key"
"#,
        descriptor = repo
            .join(format!("products/{}.yaml", o.product))
            .display()
            .to_string(),
        trusted = trusted.join(", "),
        auth =
            meshgov_sidecar::config::eddsa_auth_toml(ISSUER, AUDIENCE, idp.public_key().as_bytes()),
    );
    let running = meshgov_sidecar::launch::boot(&text, dir.path())
        .await
        .context(format!("boot sidecar `{}`", o.id))?;
    let control = running
        .control_addr
        .context("the sidecar has no control port")?;
    Ok(SidecarHandle {
        app: Arc::clone(running.app()),
        data: running.data_addr,
        control,
        id: o.id,
        dir,
        running,
    })
}

/// Waits until `f` holds (its time), or errs naming `what`.
pub async fn wait_for(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() >= within {
            return Err(Error::new(format!("timed out waiting for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(start.elapsed())
}

/// A GET over a fresh connection; status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || -> Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).context(format!("connect to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .context("set a read timeout")?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .context(format!("send GET {path}"))?;
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        let status = buf
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    })
    .await
    .context("the GET's thread")?
}
