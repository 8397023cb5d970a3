//! Fault injection on the engine: `meshgov serve` (the real binary) is
//! killed with SIGKILL mid-rollout and restarted, while sidecars (real
//! data ports, control ports and engine links on loopback) follow it. The
//! kill moments come from a seeded generator; the seed is printed, and
//! `MESHGOV_FAULT_SEED=N` replays a run.

use meshgov_e2e::*;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `meshgov serve` as a child process, its stderr in `log`; killed when
/// dropped.
/// Sidecars register with [`meshgov_e2e::REGISTRATION_TOKEN`].
fn serve(repo: &Path, key: &Path, listen: SocketAddr, log: &Path) -> Process {
    let token = key.with_extension("registration-token");
    std::fs::write(&token, meshgov_e2e::REGISTRATION_TOKEN).unwrap();
    Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_meshgov"))
            .arg("serve")
            .arg("--policies")
            .arg(repo)
            .arg("--key")
            .arg(key)
            .arg("--registration-token-file")
            .arg(&token)
            .args(["--listen", &listen.to_string(), "--watch-interval-ms", "50"]),
        log,
    )
    .unwrap()
}

/// `GET /v1/fleet`, or `None` while the engine is down.
fn fleet(engine: SocketAddr) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(engine).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /v1/fleet HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut b = Vec::new();
    s.read_to_end(&mut b).ok()?;
    let at = b.windows(4).position(|w| w == b"\r\n\r\n")?;
    if !b.starts_with(b"HTTP/1.1 200") {
        return None;
    }
    serde_json::from_slice(&b[at + 4..]).ok()
}

/// **SIGKILL of the engine mid-rollout.** Three sidecars follow `meshgov
/// serve`; each round commits a policy change and kills the engine at a
/// random moment while it checks, builds, signs or pushes the new
/// revision, then restarts it on the same address and repository.
/// Invariants:
///
/// - no sidecar's revision ever goes backwards (sampled continuously,
///   through the kills and restarts);
/// - the restarted engine releases a revision at least as high as any a
///   sidecar holds (revisions only grow across engine restarts), and
///   higher than the one before the change;
/// - every sidecar converges on that newest revision, and the engine's
///   fleet view shows all of them in sync, with no operator action: the
///   sidecars register again by themselves and the engine pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_engine_mid_rollout_converges_without_going_backwards() {
    const ROUNDS: usize = 3;
    let mut rng = seeded("engine kills");
    let mut repo = PolicyRepo::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let key_pem =
        meshgov_bundle::SigningKey::generate_pkcs8_pem(&ring::rand::SystemRandom::new()).unwrap();
    let key_path = work.path().join("guild");
    std::fs::write(&key_path, &key_pem).unwrap();
    let public = meshgov_bundle::SigningKey::from_pkcs8_pem(&key_pem)
        .unwrap()
        .public_key();
    let listen = free_addr().unwrap();
    let mut engine = serve(
        repo.path(),
        &key_path,
        listen,
        &work.path().join("serve-0.log"),
    );
    let mut sidecars = Vec::new();
    for (id, product) in [
        ("profiles-0", "user-profiles"),
        ("plays-0", "play-events"),
        ("profiles-1", "user-profiles"),
    ] {
        sidecars.push(
            start_sidecar(
                repo.path(),
                SidecarOptions {
                    id: id.into(),
                    product,
                    trusted: vec![public],
                    engine_url: Some(format!("http://{listen}")),
                    advertise: None,
                    poll_wait: Duration::from_secs(1),
                    registration_token: Some(meshgov_e2e::REGISTRATION_TOKEN.into()),
                    dir: None,
                },
            )
            .await
            .unwrap(),
        );
    }
    let apps: Vec<_> = sidecars.iter().map(|s| Arc::clone(&s.app)).collect();
    // Revisions as the sidecars hold them, sampled all the time.
    let highest = Arc::new(Mutex::new(vec![0u64; apps.len()]));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (highest, stop, apps) = (Arc::clone(&highest), Arc::clone(&stop), apps.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut h = highest.lock().unwrap();
                for (i, app) in apps.iter().enumerate() {
                    let rev = app.bundle.current().map_or(0, |b| b.meta.revision);
                    assert!(
                        rev >= h[i],
                        "sidecar {i} went back from revision {} to {rev}",
                        h[i]
                    );
                    h[i] = rev;
                }
                drop(h);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let converged = |within: Duration| {
        let highest = Arc::clone(&highest);
        async move {
            let t0 = Instant::now();
            loop {
                if let Some(f) = fleet(listen)
                    && let Some(released) = f["released"]["revision"].as_u64()
                {
                    let held = highest.lock().unwrap().clone();
                    let all = f["sidecars"].as_array().cloned().unwrap_or_default();
                    let in_sync = all.len() == held.len()
                        && all
                            .iter()
                            .all(|s| s["state"] == "in_sync" && s["acked_revision"] == released);
                    // Until it converges, a restarted engine may still
                    // report an older release than the sidecars hold (the
                    // killed engine's last one); it must then sign above it.
                    if held.iter().all(|r| *r == released) && in_sync {
                        return (released, t0.elapsed());
                    }
                }
                assert!(
                    t0.elapsed() < within,
                    "no convergence within {within:?}: sidecars at {:?}, fleet {}",
                    highest.lock().unwrap(),
                    fleet(listen).map(|f| f.to_string()).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let (mut revision, _) = converged(Duration::from_secs(60)).await;
    println!("initial rollout: revision {revision}");
    for round in 0..ROUNDS {
        repo.commit_change().unwrap();
        let wait = rng.between(0, 400);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        engine.kill();
        let held = highest.lock().unwrap().clone();
        engine = serve(
            repo.path(),
            &key_path,
            listen,
            &work.path().join(format!("serve-{}.log", round + 1)),
        );
        let (released, took) = converged(Duration::from_secs(60)).await;
        assert!(
            released > revision,
            "round {round}: released {released}, not newer than {revision} before the change"
        );
        assert!(held.iter().all(|r| *r <= released));
        println!(
            "round {round}: killed {wait} ms after the commit, sidecars then at {held:?}; converged on {released} {took:?} after the restart"
        );
        revision = released;
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    engine.kill();
    for s in sidecars {
        s.stop().await;
    }
}
