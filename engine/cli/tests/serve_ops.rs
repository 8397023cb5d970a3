//! Operating `meshgov serve` as a real process: JSON logs, `/metrics`,
//! graceful shutdown on SIGTERM (long polls end, exit 0) and a second
//! signal exiting at once; and `docs/operations.md` listing every flag.

use meshgov_e2e::Signal::{SIGINT, SIGTERM};
use meshgov_e2e::{Process, REGISTRATION_TOKEN, Signal, copy_dir, free_addr, repo_root};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Serve {
    process: Process,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Serve {
    /// Logs at info to `stderr.log` in its directory.
    fn start(extra: &[&str]) -> Serve {
        Serve::start_with(extra, None, "info")
    }

    /// Logs at `filter` to `stderr`, or to `stderr.log` in its directory.
    fn start_with(extra: &[&str], stderr: Option<Stdio>, filter: &str) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        copy_dir(&repo_root().join("policies"), &d.join("policies")).unwrap();
        let k = Command::new(env!("CARGO_BIN_EXE_meshgov"))
            .args(["keygen", "--out"])
            .arg(d.join("guild"))
            .output()
            .unwrap();
        assert!(k.status.success());
        let addr = free_addr().unwrap();
        std::fs::write(d.join("registration-token"), REGISTRATION_TOKEN).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_meshgov"));
        c.arg("serve")
            .arg("--policies")
            .arg(d.join("policies"))
            .arg("--key")
            .arg(d.join("guild"))
            .arg("--registration-token-file")
            .arg(d.join("registration-token"))
            .args(["--listen", &addr.to_string(), "--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", filter);
        let process = match stderr {
            None => Process::spawn(&mut c, &d.join("stderr.log")),
            Some(stderr) => Process::spawn_unlogged(c.stdout(Stdio::null()).stderr(stderr)),
        }
        .unwrap();
        let s = Serve {
            process,
            addr,
            _dir: dir,
        };
        let t0 = Instant::now();
        loop {
            if let Ok((200, body)) = s.try_get("/metrics", &[])
                && body.contains("meshgov_engine_builds_total{result=\"ok\"} 1")
            {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "{}", s.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn stderr(&self) -> String {
        self.process.stderr()
    }

    fn try_get(&self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<(u16, String)> {
        request(self.addr, "GET", path, headers, "")
    }

    fn signal(&self, sig: Signal) {
        self.process.signal(sig).unwrap();
    }

    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        self.process.wait_exit(within).unwrap()
    }

    fn register(&self, control: SocketAddr) {
        let body = serde_json::json!({"id": "profiles-0", "product": "users/user-profiles",
            "mesh": "media-mesh", "control_url": format!("http://{control}")})
        .to_string();
        let (status, text) = request(self.addr, "POST", "/v1/sidecars", &[AUTH], &body).unwrap();
        assert_eq!(status, 200, "{text}");
    }
}

/// The registration token [`Serve`] starts the engine with, as sidecars send it.
const AUTH: (&str, &str) = ("Authorization", "Bearer e2e-registration-0123456789abcdef");

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut c = TcpStream::connect(addr)?;
    c.set_read_timeout(Some(Duration::from_secs(90)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    c.write_all(req.as_bytes())?;
    let mut buf = String::new();
    c.read_to_string(&mut buf)?;
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let etag = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("etag: ")
                .or_else(|| l.strip_prefix("ETag: "))
        })
        .map(str::to_string);
    Ok((
        status,
        match etag {
            // A bundle's body is long; its ETag is what tests need.
            Some(e) if status == 200 => e,
            _ => body.to_string(),
        },
    ))
}

/// A control port that accepts connections and never answers.
fn silent_listener() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            held.push(c);
        }
    });
    addr
}

#[test]
fn sigterm_ends_long_polls_and_exits_0_with_json_logs() {
    let mut s = Serve::start(&[]);
    s.register(silent_listener());
    // The first poll gets the bundle; the second, holding it, waits.
    let (status, etag) = s
        .try_get("/v1/bundle?sidecar=profiles-0&wait=1", &[AUTH])
        .unwrap();
    assert_eq!(status, 200);
    let addr = s.addr;
    let poll = std::thread::spawn(move || {
        let t0 = Instant::now();
        let r = request(
            addr,
            "GET",
            "/v1/bundle?sidecar=profiles-0&wait=60",
            &[("If-None-Match", &etag), AUTH],
            "",
        )
        .unwrap();
        (r, t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!poll.is_finished(), "the long poll did not wait");
    s.signal(SIGTERM);
    let ((status, body), took) = poll.join().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shutting_down"), "{body}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert_eq!(s.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(TcpStream::connect(s.addr).is_err());
    let log = s.stderr();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.starts_with("meshgov serve:"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for msg in [
        "built and signed",
        "sidecar registered",
        "shutting down: refusing new connections, draining requests in flight",
        "stopped",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l["level"] == "INFO" && l["fields"]["message"] == msg),
            "no `{msg}`:\n{log}"
        );
    }
}

/// A log that cannot be written (stderr on `/dev/full`, where every write
/// fails, at debug level) does not stop the engine: it builds, signs and
/// serves as usual, and exits 0 on SIGTERM.
#[test]
fn an_unwritable_log_does_not_stop_the_engine() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    // `start_with` returns once `/metrics` counts the first build.
    let mut s = Serve::start_with(&[], Some(full.into()), "debug");
    let (status, page) = s.try_get("/v1/fleet", &[]).unwrap();
    assert_eq!(status, 200, "{page}");
    s.signal(SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(20)), Some(0));
}

#[test]
fn a_second_signal_exits_at_once() {
    // An audit collection pass that hangs on a silent control port keeps
    // the drain busy for up to --drain-timeout-ms.
    let mut s = Serve::start(&[
        "--collect-audit",
        "collected",
        "--collect-interval-ms",
        "100",
        "--drain-timeout-ms",
        "60000",
    ]);
    s.register(silent_listener());
    std::thread::sleep(Duration::from_millis(500));
    s.signal(SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    assert!(s.process.running().unwrap(), "{}", s.stderr());
    let t0 = Instant::now();
    s.signal(SIGINT);
    assert_eq!(s.wait_exit(Duration::from_secs(5)), Some(130));
    assert!(t0.elapsed() < Duration::from_secs(2));
}

/// Registration, long polls and reports need the registration token or a
/// control token signed with the engine's key; `serve` refuses to start
/// with neither a token nor `--open-registration`.
#[test]
fn sidecar_routes_need_the_registration_token() {
    assert!(AUTH.1.ends_with(REGISTRATION_TOKEN));
    let s = Serve::start(&[]);
    let body = serde_json::json!({"id": "profiles-0", "product": "users/user-profiles",
        "mesh": "media-mesh", "control_url": "http://127.0.0.1:9"})
    .to_string();
    let poll = "/v1/bundle?sidecar=profiles-0&wait=1";
    let report = "/v1/sidecars/profiles-0/report";
    for headers in [
        vec![],
        vec![("Authorization", "Bearer not-the-token")],
        vec![("Authorization", REGISTRATION_TOKEN)],
        vec![AUTH, AUTH],
    ] {
        for (method, path, body) in [
            ("POST", "/v1/sidecars", body.as_str()),
            ("GET", poll, ""),
            ("POST", report, "{}"),
        ] {
            let (status, text) = request(s.addr, method, path, &headers, body).unwrap();
            assert!(
                status == 401 || (status == 400 && headers.len() == 2),
                "{method} {path} with {headers:?}: {status} {text}"
            );
        }
    }
    let (_, fleet) = s.try_get("/v1/fleet", &[]).unwrap();
    assert!(!fleet.contains("profiles-0"), "{fleet}");
    // The token registers; so does a control token of the engine's key.
    s.register(silent_listener());
    let key = s._dir.path().join("guild");
    let o = Command::new(env!("CARGO_BIN_EXE_meshgov"))
        .args(["control-token", "--key"])
        .arg(&key)
        .output()
        .unwrap();
    let control = format!("Bearer {}", String::from_utf8(o.stdout).unwrap().trim());
    let (status, text) = request(s.addr, "GET", poll, &[("Authorization", &control)], "").unwrap();
    assert_eq!(status, 200, "{text}");
    // Neither a token file nor --open-registration: a usage error.
    let o = Command::new(env!("CARGO_BIN_EXE_meshgov"))
        .args(["serve", "--policies"])
        .arg(s._dir.path().join("policies"))
        .arg("--key")
        .arg(&key)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--registration-token-file") && err.contains("--open-registration"),
        "{err}"
    );
}

#[test]
fn every_serve_flag_is_in_the_operations_guide() {
    let help = Command::new(env!("CARGO_BIN_EXE_meshgov"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let doc = std::fs::read_to_string(repo_root().join("docs/operations.md")).unwrap();
    // The option lines of the `Options:` section.
    let options = help.split_once("Options:").unwrap().1;
    let flags: Vec<&str> = options
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("-h, ").unwrap_or(l);
            l.starts_with("--")
                .then(|| l.split_whitespace().next())
                .flatten()
        })
        .filter(|f| *f != "--help")
        .collect();
    assert!(flags.len() >= 10, "{help}");
    for f in flags {
        assert!(
            doc.contains(&format!("| `{f}")),
            "docs/operations.md lacks `{f}`"
        );
    }
}
