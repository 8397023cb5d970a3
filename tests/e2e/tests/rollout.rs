//! The engine and sidecars together over loopback: registration, pushes on
//! commit, refused changes, long-poll recovery, canaries, renewal, expiry
//! with the engine down, and the fleet page in headless Chromium.

use meshgov_e2e::*;
use meshgov_server::Canary;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_register_get_the_current_bundle_and_every_commit() {
    let mut repo = PolicyRepo::new().unwrap();
    let e = start_engine(engine_config(&repo, new_key().unwrap()))
        .await
        .unwrap();
    wait_for("the first build", T, || e.released().is_some())
        .await
        .unwrap();
    let r1 = e.released().unwrap();
    let a = start_sidecar(repo.path(), options("profiles-0", "user-profiles", &e))
        .await
        .unwrap();
    let b = start_sidecar(repo.path(), options("plays-0", "play-events", &e))
        .await
        .unwrap();
    let took = wait_for("both sidecars on the first revision", T, || {
        a.revision() == Some(r1) && b.revision() == Some(r1)
    })
    .await
    .unwrap();
    eprintln!("registration to bundle in force: {took:?}");
    // Each got its own product's slice.
    let slice = |s: &SidecarHandle| s.app.bundle.current().unwrap().policies().product.clone();
    assert_eq!(slice(&a).as_deref(), Some("users/user-profiles"));
    assert_eq!(slice(&b).as_deref(), Some("playback/play-events"));
    // A commit reaches both as the next revision.
    repo.commit_change().unwrap();
    wait_for("a new release", T, || e.released() > Some(r1))
        .await
        .unwrap();
    let r2 = e.released().unwrap();
    wait_for("both sidecars on the new revision", T, || {
        a.revision() == Some(r2) && b.revision() == Some(r2)
    })
    .await
    .unwrap();
    let f = e.fleet();
    let commit = f["released"]["source_commit"].as_str().unwrap();
    assert_eq!(commit.len(), 40, "a git commit: {commit}");
    for sc in f["sidecars"].as_array().unwrap() {
        wait_for("fleet in sync", T, || {
            e.fleet()["sidecars"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["state"] == "in_sync")
        })
        .await
        .unwrap();
        assert!(sc["bundle_age_seconds"].as_i64().is_some(), "{sc}");
    }
    let f = e.fleet();
    let sc = f["sidecars"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "profiles-0")
        .unwrap();
    assert_eq!(sc["product"], "users/user-profiles");
    assert_eq!(sc["acked_revision"], r2);
    assert_eq!(sc["last_error"], serde_json::Value::Null);
    // The sidecar's own status names the engine link as healthy.
    let st = a.app.control_status(meshgov_sidecar::clock::now_unix());
    let link = st.engine.unwrap();
    assert!(link.registered && link.last_error.is_none(), "{link:?}");
    a.stop().await;
    b.stop().await;
    e.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_that_fail_check_or_test_are_not_rolled_out() {
    let repo = PolicyRepo::new().unwrap();
    let e = start_engine(engine_config(&repo, new_key().unwrap()))
        .await
        .unwrap();
    wait_for("the first build", T, || e.released().is_some())
        .await
        .unwrap();
    let r1 = e.released().unwrap();
    let a = start_sidecar(repo.path(), options("profiles-0", "user-profiles", &e))
        .await
        .unwrap();
    wait_for("the first revision", T, || a.revision() == Some(r1))
        .await
        .unwrap();
    // A Cedar syntax error fails check.
    repo.commit_append(
        "access/users.cedar",
        "\npermit(principal, action, resource\n",
    )
    .unwrap();
    wait_for("the failed build", T, || {
        e.fleet()["last_build"]["ok"] == false
    })
    .await
    .unwrap();
    let err = e.fleet()["last_build"]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        err.contains("check failed") && err.contains("access/users.cedar"),
        "{err}"
    );
    // Fix the syntax, but break a policy test's expectation: test fails.
    let cedar = repo.path().join("access/users.cedar");
    let text = std::fs::read_to_string(&cedar).unwrap();
    std::fs::write(
        &cedar,
        text.replace("\npermit(principal, action, resource\n", "\n"),
    )
    .unwrap();
    let tests = repo.path().join("tests/access.toml");
    let t = std::fs::read_to_string(&tests).unwrap();
    let broken = t.replacen("expect = \"allow\"", "expect = \"deny\"", 1);
    assert_ne!(t, broken);
    std::fs::write(&tests, broken).unwrap();
    repo.commit_all("break a test").unwrap();
    wait_for("the failed test build", T, || {
        e.fleet()["last_build"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("policy tests failed"))
    })
    .await
    .unwrap();
    // Neither was released, and the sidecar still holds revision 1.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(e.released(), Some(r1));
    assert_eq!(a.revision(), Some(r1));
    // The failure shows on the fleet page's data and `meshgov status`.
    let (code, body) = http_get(e.addr, "/v1/fleet").await.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("policy tests failed"), "{body}");
    a.stop().await;
    e.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_push_is_recovered_by_the_long_poll() {
    let mut repo = PolicyRepo::new().unwrap();
    let e = start_engine(engine_config(&repo, new_key().unwrap()))
        .await
        .unwrap();
    wait_for("the first build", T, || e.released().is_some())
        .await
        .unwrap();
    // The engine's pushes go nowhere: only the long poll can deliver.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let mut o = options("lost-0", "user-profiles", &e);
    o.advertise = Some(dead_url);
    let a = start_sidecar(repo.path(), o).await.unwrap();
    let r1 = e.released().unwrap();
    wait_for("the first revision by long poll", T, || {
        a.revision() == Some(r1)
    })
    .await
    .unwrap();
    repo.commit_change().unwrap();
    wait_for("a new release", T, || e.released() > Some(r1))
        .await
        .unwrap();
    let r2 = e.released().unwrap();
    wait_for("the new revision by long poll", T, || {
        a.revision() == Some(r2)
    })
    .await
    .unwrap();
    // The engine learns of it from the sidecar's report.
    wait_for("the engine records the ACK", T, || {
        e.fleet()["sidecars"][0]["acked_revision"] == r2
    })
    .await
    .unwrap();
    a.stop().await;
    e.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_that_was_down_restarts_from_disk_then_catches_up() {
    let mut repo = PolicyRepo::new().unwrap();
    let e = start_engine(engine_config(&repo, new_key().unwrap()))
        .await
        .unwrap();
    wait_for("the first build", T, || e.released().is_some())
        .await
        .unwrap();
    let r1 = e.released().unwrap();
    let a = start_sidecar(repo.path(), options("profiles-0", "user-profiles", &e))
        .await
        .unwrap();
    wait_for("the first revision", T, || a.revision() == Some(r1))
        .await
        .unwrap();
    let dir = a.stop().await;
    repo.commit_change().unwrap();
    wait_for("a new release", T, || e.released() > Some(r1))
        .await
        .unwrap();
    let r2 = e.released().unwrap();
    // Back with an engine that does not answer: it serves revision 1 from
    // its state directory at once.
    let mut o = options("profiles-0", "user-profiles", &e);
    o.engine_url = Some("http://127.0.0.1:9".into());
    o.dir = Some(dir);
    let offline = start_sidecar(repo.path(), o).await.unwrap();
    assert_eq!(offline.revision(), Some(r1));
    let (code, body) = http_get(offline.data, "/readyz").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let dir = offline.stop().await;
    // Back with the engine: it catches up without help.
    let mut o = options("profiles-0", "user-profiles", &e);
    o.dir = Some(dir);
    let b = start_sidecar(repo.path(), o).await.unwrap();
    wait_for("the catch-up", T, || b.revision() == Some(r2))
        .await
        .unwrap();
    b.stop().await;
    e.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_nack_halts_the_rollout_and_the_rest_keep_their_revision() {
    let mut repo = PolicyRepo::new().unwrap();
    let mut cfg = engine_config(&repo, new_key().unwrap());
    cfg.canary = Canary::Named(vec!["canary-0".into()]);
    let e = start_engine(cfg).await.unwrap();
    wait_for("the first build", T, || e.released().is_some())
        .await
        .unwrap();
    let r1 = e.released().unwrap();
    let rest = start_sidecar(repo.path(), options("rest-0", "user-profiles", &e))
        .await
        .unwrap();
    wait_for("the first revision", T, || rest.revision() == Some(r1))
        .await
        .unwrap();
    // The canary trusts another key: it NACKs everything this engine signs.
    let mut o = options("canary-0", "user-profiles", &e);
    o.trusted = vec![new_key().unwrap().public_key()];
    let canary = start_sidecar(repo.path(), o).await.unwrap();
    wait_for("the canary's NACK", T, || {
        e.fleet()["sidecars"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "canary-0" && s["state"] == "nacked")
    })
    .await
    .unwrap();
    repo.commit_change().unwrap();
    wait_for("the halt", T, || e.fleet()["rollout"]["phase"] == "halted")
        .await
        .unwrap();
    let f = e.fleet();
    let reason = f["rollout"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("canary-0") && reason.contains("untrusted_key"),
        "{reason}"
    );
    assert_eq!(f["released"]["revision"], r1);
    assert!(f["candidate"]["revision"].as_u64() > Some(r1));
    // The rest never get the halted revision, by push or by long poll.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rest.revision(), Some(r1));
    assert_eq!(canary.revision(), None);
    canary.stop().await;
    rest.stop().await;
    e.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_bakes_then_the_rest_follow() {
    let mut repo = PolicyRepo::new().unwrap();
    let mut cfg = engine_config(&repo, new_key().unwrap());
    cfg.canary = Canary::Percent(50);
    cfg.canary_bake = Duration::from_millis(1500);
    let e = start_engine(cfg).await.unwrap();
    wait_for("the first build", T, || e.released().is_some())
        .await
        .unwrap();
    let r1 = e.released().unwrap();
    let a = start_sidecar(repo.path(), options("a-0", "user-profiles", &e))
        .await
        .unwrap();
    let b = start_sidecar(repo.path(), options("b-0", "user-profiles", &e))
        .await
        .unwrap();
    wait_for("the first revision", T, || {
        a.revision() == Some(r1) && b.revision() == Some(r1)
    })
    .await
    .unwrap();
    repo.commit_change().unwrap();
    // 50% of two sidecars, by id order: `a-0` is the canary.
    wait_for("the canary's ACK", T, || {
        a.revision().is_some_and(|r| r > r1)
    })
    .await
    .unwrap();
    assert_eq!(e.fleet()["rollout"]["canaries"], serde_json::json!(["a-0"]));
    assert_eq!(
        b.revision(),
        Some(r1),
        "the rest wait while the canary bakes"
    );
    let r2 = a.revision().unwrap();
    wait_for("the promotion", T, || b.revision() == Some(r2))
        .await
        .unwrap();
    assert_eq!(e.fleet()["rollout"]["phase"], "released");
    assert_eq!(e.released(), Some(r2));
    a.stop().await;
    b.stop().await;
    e.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_are_renewed_and_with_the_engine_down_a_sidecar_serves_until_expiry() {
    let repo = PolicyRepo::new().unwrap();
    let mut cfg = engine_config(&repo, new_key().unwrap());
    cfg.ttl_seconds = Some(4);
    let e = start_engine(cfg).await.unwrap();
    wait_for("the first build", T, || e.released().is_some())
        .await
        .unwrap();
    let r1 = e.released().unwrap();
    let a = start_sidecar(repo.path(), options("profiles-0", "user-profiles", &e))
        .await
        .unwrap();
    wait_for("the first revision", T, || a.revision() == Some(r1))
        .await
        .unwrap();
    // Renewed at half its lifetime, with no commit.
    wait_for("a renewal", T, || a.revision().is_some_and(|r| r > r1))
        .await
        .unwrap();
    assert_eq!(e.fleet()["last_build"]["renewal"], true);
    // Engine down.
    e.stop().await.unwrap();
    let held = a.app.bundle.current().unwrap();
    let (code, _) = http_get(a.data, "/readyz").await.unwrap();
    assert_eq!(code, 200, "serves its last good bundle while it is valid");
    wait_for("expiry", T, || {
        meshgov_sidecar::clock::now_unix() >= held.meta.expires_at_unix
    })
    .await
    .unwrap();
    let (code, body) = http_get(a.data, "/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("expired"), "{body}");
    let (code, body) = http_get(a.data, "/v1/ports/profiles/records")
        .await
        .unwrap();
    assert_eq!(code, 401, "unauthenticated reads are still 401: {body}");
    let st = a.app.control_status(meshgov_sidecar::clock::now_unix());
    assert_eq!(
        serde_json::to_value(st.state).unwrap(),
        serde_json::json!("expired")
    );
    wait_for("the link error", T, || {
        a.app.control.link().is_some_and(|l| l.last_error.is_some())
    })
    .await
    .unwrap();
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_page_renders_in_headless_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is required in CI (.ci/setup installs it)"
        );
        eprintln!("skipped: chromium is not installed (apt-get install chromium)");
        return;
    };
    let repo = PolicyRepo::new().unwrap();
    let e = start_engine(engine_config(&repo, new_key().unwrap()))
        .await
        .unwrap();
    wait_for("the first build", T, || e.released().is_some())
        .await
        .unwrap();
    let r1 = e.released().unwrap();
    let a = start_sidecar(repo.path(), options("profiles-0", "user-profiles", &e))
        .await
        .unwrap();
    wait_for("the first revision", T, || a.revision() == Some(r1))
        .await
        .unwrap();
    wait_for("in sync", T, || {
        e.fleet()["sidecars"][0]["state"] == "in_sync"
    })
    .await
    .unwrap();
    let url = format!("{}/", e.url());
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--virtual-time-budget=5000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(["--dump-dom", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Rendered by the page's script from /v1/fleet: the served HTML has no rows.
    assert!(!meshgov_server::page::HTML.contains("data-sidecar=\""));
    assert!(dom.contains(r#"<tr data-sidecar="profiles-0">"#), "{dom}");
    assert!(dom.contains("users/user-profiles"), "{dom}");
    assert!(dom.contains(r#"<td class="in_sync">in_sync</td>"#), "{dom}");
    assert!(dom.contains(&format!("released revision {r1}")), "{dom}");
    a.stop().await;
    e.stop().await.unwrap();
}

/// `--collect-audit`: every registered sidecar's audit stream is pulled into
/// the engine's store, resumes where it stopped, and verifies there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_streams_are_collected_from_every_sidecar() {
    let repo = PolicyRepo::new().unwrap();
    let store = tempfile::tempdir().unwrap();
    let mut cfg = engine_config(&repo, new_key().unwrap());
    cfg.audit_dir = Some(store.path().to_path_buf());
    cfg.audit_interval = Duration::from_millis(200);
    let e = start_engine(cfg).await.unwrap();
    wait_for("the first build", T, || e.released().is_some())
        .await
        .unwrap();
    let a = start_sidecar(repo.path(), options("profiles-0", "user-profiles", &e))
        .await
        .unwrap();
    wait_for("the bundle in force", T, || a.revision().is_some())
        .await
        .unwrap();
    // Two audited answers on the data port: discovery, and a refused read.
    for path in ["/", "/v1/ports/profiles/records"] {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(a.data).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1"), "{answer}");
    }
    let head = a.app.audit.head().seq;
    assert!(head >= 2, "two answers audited, head {head}");
    let collected = || {
        e.fleet()["sidecars"][0]["audit_collected_seq"]
            .as_u64()
            .unwrap_or(0)
    };
    wait_for("the engine to hold the sidecar's events", T, || {
        collected() >= head
    })
    .await
    .unwrap();
    assert_eq!(
        e.fleet()["sidecars"][0]["audit_error"],
        serde_json::Value::Null
    );
    let key: meshgov_bundle::PublicKey = a.app.audit.head().public_key.parse().unwrap();
    let summary = meshgov_audit::verify_path(&store.path().join("profiles-0"), &key).unwrap();
    assert!(summary.last_seq >= head, "{summary:?}");
    a.stop().await;
    e.stop().await.unwrap();
}
