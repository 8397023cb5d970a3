//! `serve`, `status`, `push` and `control-token` as a user runs them: the
//! real binary, a real sidecar control port on loopback.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

async fn meshgov(args: &[&str], cwd: &Path) -> Output {
    let (args, cwd): (Vec<String>, _) = (
        args.iter().map(|a| a.to_string()).collect(),
        cwd.to_path_buf(),
    );
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_meshgov"))
            .args(&args)
            .current_dir(cwd)
            .env_remove("SOURCE_DATE_EPOCH")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn wait_for_status(
    d: &Path,
    url: &str,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let o = meshgov(&["status", "--engine", url, "--json"], d).await;
        if o.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            if f(&v) {
                return v;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}: {}",
            out(&o)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_status_push_and_control_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    assert!(meshgov(&["init", "pol"], d).await.status.success());
    assert!(
        meshgov(&["keygen", "--out", "keys/guild"], d)
            .await
            .status
            .success()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{port}");
    // Killed when dropped, at the end of the test.
    let _serve = meshgov_e2e::Process::spawn_unlogged(
        Command::new(env!("CARGO_BIN_EXE_meshgov"))
            .args([
                "serve",
                "--policies",
                "pol",
                "--key",
                "keys/guild",
                "--listen",
                &port.to_string(),
                "--open-registration",
            ])
            .args(["--watch-interval-ms", "50"])
            .current_dir(d)
            .stderr(std::process::Stdio::null()),
    )
    .unwrap();
    let v = wait_for_status(d, &url, "the first build", |v| {
        v["released"]["revision"].is_u64()
    })
    .await;
    let r1 = v["released"]["revision"].as_u64().unwrap();
    let text = out(&meshgov(&["status", "--engine", &url], d).await);
    assert!(text.contains(&format!("released: revision {r1}")), "{text}");
    assert!(text.contains("last build: ok"), "{text}");

    // A broken file (a plain directory: any change counts) is not rolled out.
    let mesh = d.join("pol/mesh.toml");
    let good = std::fs::read_to_string(&mesh).unwrap();
    std::fs::write(&mesh, format!("{good}\ngarbage = [\n")).unwrap();
    let v = wait_for_status(d, &url, "the failed build", |v| {
        v["last_build"]["ok"] == false
    })
    .await;
    assert_eq!(v["released"]["revision"], r1);
    let text = out(&meshgov(&["status", "--engine", &url], d).await);
    assert!(
        text.contains("last build: FAILED") && text.contains("mesh.toml"),
        "{text}"
    );
    std::fs::write(&mesh, &good).unwrap();
    wait_for_status(d, &url, "the repaired build", |v| {
        v["released"]["revision"].as_u64() > Some(r1)
    })
    .await;

    // Control tokens verify against the public key, with the control audience.
    let o = meshgov(&["control-token", "--key", "keys/guild", "--ttl", "60"], d).await;
    assert!(o.status.success(), "{}", out(&o));
    let token = String::from_utf8(o.stdout).unwrap();
    let public = meshgov_bundle::read_public_key_file(&d.join("keys/guild.pub")).unwrap();
    let trust = meshgov_bundle::TrustStore::from_keys([public]).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = meshgov_bundle::verify_control_token(token.trim(), &trust, now).unwrap();
    assert_eq!(claims.aud, meshgov_bundle::CONTROL_AUDIENCE);

    // `push` against a sidecar's control port: ACK, no-op, NACK (exit 1).
    // A sidecar of `users/user-profiles` trusting the guild key, without an
    // engine link: bundles reach it by push only.
    let sidecar = meshgov_e2e::start_sidecar(
        &d.join("pol"),
        meshgov_e2e::SidecarOptions {
            id: "profiles-0".into(),
            product: "user-profiles",
            trusted: vec![public],
            engine_url: None,
            advertise: None,
            poll_wait: Duration::from_secs(30),
            registration_token: None,
            dir: None,
        },
    )
    .await
    .unwrap();
    let sidecar_url = format!("http://{}", sidecar.control);
    for rev in ["5", "4"] {
        let o = meshgov(
            &[
                "build",
                "pol",
                "--key",
                "keys/guild",
                "--product",
                "users/user-profiles",
                "--revision",
                rev,
                "--out",
                &format!("b{rev}.json"),
            ],
            d,
        )
        .await;
        assert!(o.status.success(), "{}", out(&o));
    }
    let o = meshgov(&["push", "b5.json", "--sidecar", &sidecar_url], d).await;
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).starts_with("ACK revision 5 sha256:"), "{}", out(&o));
    let o = meshgov(&["push", "b5.json", "--sidecar", &sidecar_url], d).await;
    assert!(out(&o).contains("(already in force)"), "{}", out(&o));
    let o = meshgov(&["push", "b4.json", "--sidecar", &sidecar_url], d).await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("NACK [rollback]"), "{}", out(&o));
    let o = meshgov(&["push", "b4.json", "--sidecar", "http://127.0.0.1:9"], d).await;
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
}
