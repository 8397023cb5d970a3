//! The engine on a clock the test holds: renewal at half a bundle's
//! lifetime, and what the fleet shows once a sidecar that never got the
//! renewal holds an expired bundle.
//!
//! Only the engine runs here (no HTTP, no sidecar process): two sidecars
//! register through `Engine::register`, pull with `Engine::poll` and report
//! with `Engine::report`, as the long-poll API would have them. Their
//! control URL is a closed loopback port, so the engine's pushes fail.
//! Every time the engine reads is the manual clock's; the test sets it and
//! never waits on the wall clock for it.

use meshgov_bundle::clock::{Clock, ManualClock, rfc3339};
use meshgov_bundle::{Expect, SigningKey, TrustStore};
use meshgov_server::engine::{PollAnswer, PullReport, Registration, SidecarState, SidecarView};
use meshgov_server::{Engine, EngineConfig};
use meshgov_wire::PulledAck;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// 2030-03-17T17:46:40Z: far from the machine's clock, so a time the
/// engine read from the system clock instead would show.
const T0: i64 = 1_900_000_000;
const TTL: i64 = 600;

fn key() -> SigningKey {
    let pem = SigningKey::generate_pkcs8_pem(&ring::rand::SystemRandom::new()).unwrap();
    SigningKey::from_pkcs8_pem(&pem).unwrap()
}

/// A loopback URL nothing listens on.
fn closed_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

fn register(engine: &Arc<Engine>, id: &str, product: &str, control_url: &str) {
    engine
        .register(Registration {
            id: id.into(),
            product: product.into(),
            mesh: None,
            control_url: control_url.into(),
            revision: None,
            digest: None,
        })
        .unwrap();
}

/// The sidecar's long poll without waiting: the bundle it should hold
/// (`held` is what it holds).
async fn pull(
    engine: &Engine,
    id: &str,
    held: Option<&str>,
) -> (meshgov_server::build::Signed, u64) {
    match engine.poll(id, held, Duration::ZERO).await {
        PollAnswer::Bundle(b, revision) => (b, revision),
        PollAnswer::NotModified => panic!("`{id}`: not modified"),
        PollAnswer::UnknownSidecar => panic!("`{id}`: unknown"),
    }
}

fn ack(engine: &Engine, id: &str, b: &meshgov_server::build::Signed, revision: u64) {
    assert!(engine.report(
        id,
        PullReport::Ack(PulledAck {
            revision,
            digest: b.digest.clone(),
        })
    ));
}

fn sidecar(engine: &Engine, id: &str) -> SidecarView {
    engine
        .fleet()
        .sidecars
        .into_iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("`{id}` is not in the fleet"))
}

#[tokio::test]
async fn the_engine_renews_and_ages_bundles_on_its_clock() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let key = key();
    let trust = TrustStore::from_keys([key.public_key()]).unwrap();
    let clock = Arc::new(ManualClock::at_unix(T0));
    let mut cfg = EngineConfig::new(repo, key);
    cfg.ttl_seconds = Some(TTL as u64);
    cfg.clock = clock.clone();
    let engine = Engine::new(cfg);
    let dead = closed_url();

    // The first build, signed at T0 for TTL seconds.
    Arc::clone(&engine).build_tick().await;
    let r1 = engine.fleet().released.expect("a first release");
    assert_eq!(r1.revision, T0 as u64, "the revision is at least the time");
    assert_eq!(r1.created_at, rfc3339(T0));
    assert_eq!(r1.expires_at, rfc3339(T0 + TTL));

    // Two sidecars pull it and ACK.
    register(&engine, "renewed", "users/user-profiles", &dead);
    register(&engine, "stranded", "users/user-profiles", &dead);
    let (b1, rev) = pull(&engine, "renewed", None).await;
    assert_eq!(rev, r1.revision);
    let v1 =
        meshgov_bundle::verify(&b1.bytes, &trust, clock.now_unix(), &Expect::default()).unwrap();
    assert_eq!(v1.manifest().expires_at, rfc3339(T0 + TTL));
    ack(&engine, "renewed", &b1, rev);
    ack(&engine, "stranded", &b1, rev);
    assert_eq!(sidecar(&engine, "stranded").state, SidecarState::InSync);

    // Just before half the lifetime: no renewal.
    clock.set_unix(T0 + TTL / 2 - 1);
    Arc::clone(&engine).build_tick().await;
    assert_eq!(engine.fleet().released.unwrap().revision, r1.revision);
    assert_eq!(engine.metrics.renewals.get(), 0);

    // At half the lifetime: the same policies signed again, as a new
    // revision with a new expiry.
    let renewed_at = T0 + TTL / 2;
    clock.set_unix(renewed_at);
    Arc::clone(&engine).build_tick().await;
    let fleet = engine.fleet();
    let r2 = fleet.released.expect("still released");
    assert!(
        r2.revision > r1.revision,
        "{} after {}",
        r2.revision,
        r1.revision
    );
    assert_eq!(r2.created_at, rfc3339(renewed_at));
    assert_eq!(r2.expires_at, rfc3339(renewed_at + TTL));
    let build = fleet.last_build.expect("a build status");
    assert!(build.ok && build.renewal, "{build:?}");
    assert_eq!(build.revision, Some(r2.revision));
    assert_eq!(build.at, rfc3339(renewed_at));
    assert_eq!(fleet.rollout.started_at, Some(rfc3339(renewed_at)));
    assert_eq!(engine.metrics.renewals.get(), 1);

    // One sidecar pulls the renewal: a bundle signed anew.
    let (b2, rev) = pull(&engine, "renewed", Some(&b1.digest)).await;
    assert_eq!(rev, r2.revision);
    assert_ne!(b2.digest, b1.digest);
    let v2 =
        meshgov_bundle::verify(&b2.bytes, &trust, clock.now_unix(), &Expect::default()).unwrap();
    assert_eq!(v2.manifest().revision, r2.revision);
    assert_eq!(v2.manifest().created_at, rfc3339(renewed_at));
    assert_eq!(v2.manifest().expires_at, rfc3339(renewed_at + TTL));
    ack(&engine, "renewed", &b2, rev);

    // The other never gets it: the engine's pushes to it fail. (This waits
    // for the push task, not for the clock.)
    let deadline = Instant::now() + Duration::from_secs(20);
    let wanted = format!("push of revision {} failed", r2.revision);
    while !sidecar(&engine, "stranded")
        .last_error
        .is_some_and(|e| e.starts_with(&wanted))
    {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            sidecar(&engine, "stranded")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Past the first bundle's expiry (and before the second's).
    let later = T0 + TTL + 1;
    clock.set_unix(later);
    let fleet = engine.fleet();
    assert_eq!(fleet.released.as_ref().unwrap().revision, r2.revision);
    let stranded = sidecar(&engine, "stranded");
    assert_eq!(stranded.state, SidecarState::Unreachable, "{stranded:?}");
    assert_eq!(stranded.acked_revision, Some(r1.revision));
    assert_eq!(stranded.acked_digest.as_deref(), Some(b1.digest.as_str()));
    assert_eq!(stranded.target_revision, Some(r2.revision));
    // The bundle it holds is older than its lifetime: expired, so the
    // sidecar serves nothing.
    assert_eq!(stranded.bundle_age_seconds, Some(TTL + 1));
    assert_eq!(stranded.last_contact, rfc3339(T0));
    assert_eq!(stranded.last_contact_seconds_ago, TTL + 1);
    let renewed = sidecar(&engine, "renewed");
    assert_eq!(renewed.state, SidecarState::InSync, "{renewed:?}");
    assert_eq!(renewed.acked_revision, Some(r2.revision));
    assert_eq!(renewed.bundle_age_seconds, Some(later - renewed_at));
    assert_eq!(renewed.last_contact_seconds_ago, later - renewed_at);
    // The same picture in the metrics.
    let text = engine.render_metrics();
    for line in [
        "meshgov_engine_sidecars{state=\"in_sync\"} 1",
        "meshgov_engine_sidecars{state=\"unreachable\"} 1",
        "meshgov_engine_renewals_total 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
    assert!(
        meshgov_bundle::verify(&b1.bytes, &trust, later, &Expect::default())
            .is_err_and(|e| e.code() == "expired")
    );
}
