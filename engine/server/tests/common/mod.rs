//! An engine and sidecars on loopback, in this process: a git copy of the
//! example policies, `meshgov-server`'s API, and `meshgov-sidecar`'s real
//! data port, control port and engine link.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use meshgov_server::{Engine, EngineConfig};
use meshgov_sidecar::config::Strings;
use meshgov_sidecar::engine_link::{self, LinkConfig};
use meshgov_sidecar::{App, Config, server};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn new_key() -> meshgov_bundle::SigningKey {
    let pem =
        meshgov_bundle::SigningKey::generate_pkcs8_pem(&ring::rand::SystemRandom::new()).unwrap();
    meshgov_bundle::SigningKey::from_pkcs8_pem(&pem).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A git repository holding a copy of the example policies.
pub struct PolicyRepo {
    pub dir: tempfile::TempDir,
    changes: u32,
}

impl PolicyRepo {
    pub fn new() -> PolicyRepo {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&repo_root().join("policies"), dir.path());
        let r = PolicyRepo { dir, changes: 0 };
        r.git(&["init", "-q", "-b", "main"]);
        r.commit_all("policies");
        r
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn git(&self, args: &[&str]) {
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
            .unwrap()
            .success();
        assert!(ok, "git {args:?} failed");
    }

    pub fn commit_all(&self, msg: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", msg]);
    }

    /// Commits a change to one Cedar policy (one that grants a group no
    /// test uses), so every slice's bundle changes by one policy.
    pub fn commit_change(&mut self) {
        self.changes += 1;
        let n = self.changes;
        std::fs::write(
            self.path().join("access/change.cedar"),
            format!(
                "@id(\"change.{n}\")\npermit (principal in Group::\"change-{n}\", action == Action::\"read\", resource);\n"
            ),
        )
        .unwrap();
        self.commit_all(&format!("change {n}"));
    }

    /// Commits `text` appended to `file`.
    pub fn commit_append(&self, file: &str, text: &str) {
        let f = self.path().join(file);
        let mut t = std::fs::read_to_string(&f).unwrap();
        t.push_str(text);
        std::fs::write(f, t).unwrap();
        self.commit_all(&format!("edit {file}"));
    }
}

pub struct EngineHandle {
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    stop: Option<watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EngineHandle {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    pub fn fleet(&self) -> serde_json::Value {
        serde_json::to_value(self.engine.fleet()).unwrap()
    }

    pub fn released(&self) -> Option<u64> {
        self.fleet()["released"]["revision"].as_u64()
    }
}

pub async fn start_engine(cfg: EngineConfig) -> EngineHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let engine = Engine::new(cfg);
    let (tx, mut rx) = watch::channel(false);
    let task = tokio::spawn(meshgov_server::api::serve(
        listener,
        Arc::clone(&engine),
        async move {
            let _ = rx.wait_for(|s| *s).await;
        },
    ));
    EngineHandle {
        addr,
        engine,
        stop: Some(tx),
        task: Some(task),
    }
}

/// Engine defaults for tests: quick watch, short canary times.
pub fn engine_config(repo: &PolicyRepo, key: meshgov_bundle::SigningKey) -> EngineConfig {
    let mut c = EngineConfig::new(repo.path().to_path_buf(), key);
    c.watch_interval = Duration::from_millis(50);
    c.canary_bake = Duration::from_millis(500);
    c.canary_ack_timeout = Duration::from_secs(5);
    c
}

pub struct SidecarHandle {
    pub app: Arc<App>,
    pub data: SocketAddr,
    pub control: SocketAddr,
    pub id: String,
    pub dir: tempfile::TempDir,
    stop: Option<watch::Sender<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SidecarHandle {
    pub fn revision(&self) -> Option<u64> {
        self.app.bundle.current().map(|b| b.meta.revision)
    }

    /// Stops every task; returns the directory (config, state) for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        for t in self.tasks.drain(..) {
            t.await.unwrap();
        }
        self.dir
    }
}

pub struct SidecarOptions<'a> {
    pub id: String,
    /// `policies/products/<product>.yaml` of the repository.
    pub product: &'a str,
    pub trusted: Vec<meshgov_bundle::PublicKey>,
    pub engine_url: String,
    /// Advertise this control URL instead of the real one (to lose pushes).
    pub advertise: Option<String>,
    pub poll_wait: Duration,
    /// Start in this directory (holding a previous run's state).
    pub dir: Option<tempfile::TempDir>,
}

/// A sidecar with a data port, a control port and an engine link.
pub async fn start_sidecar(repo: &Path, o: SidecarOptions<'_>) -> SidecarHandle {
    let dir = o.dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    std::fs::write(dir.path().join("uid.key"), "x".repeat(40)).unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let idp = new_key();
    let x = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(idp.public_key().as_bytes())
    };
    let trusted: Vec<String> = o.trusted.iter().map(|k| format!("\"{k}\"")).collect();
    let text = format!(
        r#"
mesh = "media-mesh"
descriptor = {descriptor:?}
state_dir = "state"
trusted_bundle_keys = [{trusted}]
[listen]
data = "127.0.0.1:0"
control = "127.0.0.1:0"
[engine]
url = "{engine}"
[upstream]
path = "data"
[auth]
issuer = "https://idp.media.example"
audience = "meshgov"
[[auth.keys]]
alg = "EdDSA"
x = "{x}"
[pseudonym_keys]
user-identity = "uid.key"
artist-identity = "uid.key"
"#,
        descriptor = repo
            .join(format!("products/{}.yaml", o.product))
            .display()
            .to_string(),
        trusted = trusted.join(", "),
        engine = o.engine_url,
    );
    let cfg = Config::from_toml(
        &text,
        dir.path(),
        &BTreeMap::<String, String>::new() as &dyn Strings,
    )
    .unwrap();
    let app = App::from_config(&cfg).unwrap();
    let _ = app.restore_persisted(meshgov_sidecar::clock::now_unix());
    let app = Arc::new(app);
    app.control.set_instance_id(o.id.clone());
    let data_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (data, control) = (
        data_l.local_addr().unwrap(),
        control_l.local_addr().unwrap(),
    );
    let (tx, rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let tasks = vec![
        tokio::spawn(server::serve(data_l, Arc::clone(&app), stopped())),
        tokio::spawn(server::serve_control(
            control_l,
            Arc::clone(&app),
            stopped(),
        )),
        tokio::spawn(engine_link::run(
            Arc::clone(&app),
            LinkConfig {
                engine_url: o.engine_url.clone(),
                instance_id: o.id.clone(),
                control_url: o.advertise.unwrap_or_else(|| format!("http://{control}")),
                poll_wait: o.poll_wait,
            },
            stopped(),
        )),
    ];
    SidecarHandle {
        app,
        data,
        control,
        id: o.id,
        dir,
        stop: Some(tx),
        tasks,
    }
}

pub fn options<'a>(id: &str, product: &'a str, engine: &EngineHandle) -> SidecarOptions<'a> {
    SidecarOptions {
        id: id.into(),
        product,
        trusted: vec![engine.engine.public_key()],
        engine_url: engine.url(),
        advertise: None,
        poll_wait: Duration::from_secs(30),
        dir: None,
    }
}

/// Waits until `f` holds, or panics naming `what`.
pub async fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// A GET over a fresh connection; status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
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
        (status, body)
    })
    .await
    .unwrap()
}
