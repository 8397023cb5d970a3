//! The sidecar's audit log over real sockets: every answer is audited and
//! durable before the response, completions count what was sent (also when
//! the client goes away), audit failure refuses, and the feed and collector
//! move a verified copy over loopback HTTP, resuming without gaps.

use crate::common::*;
use meshgov_audit::show::{Filter, read_filtered};
use meshgov_audit::{Decision, Kind, StoredEvent, verify_path};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const RECORDS: &str = "/v1/ports/profiles/records";
const DAY1: &str = concat!(
    r#"{"user_id":"u-1","email":"alice@example.com","name":"Alice","birth_date":"1990-04-12","country":"NL","postcode":"1012AB","signed_up_at":"2026-03-01T10:00:00Z"}"#,
    "\n",
    r#"{"user_id":"u-2","email":"bob@example.org","name":"Bob","birth_date":"1985-11-30","country":"DE","postcode":"10115","signed_up_at":"2026-03-01T11:00:00Z"}"#,
    "\n"
);

fn audit_dir(s: &Sidecar) -> PathBuf {
    s.dir.path().join("state/audit")
}

fn events(s: &Sidecar) -> Vec<StoredEvent> {
    read_filtered(&audit_dir(s), &Filter::default())
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect()
}

/// The decision event of the request sent with `x-request-id: rid` (its
/// client id; the sidecar mints its own).
fn decision_of(evs: &[StoredEvent], rid: &str) -> StoredEvent {
    evs.iter()
        .find(|e| e.kind == Kind::Decision && e.client_request_id.as_deref() == Some(rid))
        .unwrap_or_else(|| panic!("no decision event for {rid}: {evs:#?}"))
        .clone()
}

/// Waits for the completion event of the request the sidecar knows as
/// `own` (it is written when the body is dropped, after the response).
async fn completion_of_own(s: &Sidecar, own: &str) -> StoredEvent {
    for _ in 0..200 {
        if let Some(e) = events(s)
            .into_iter()
            .find(|e| e.kind == Kind::Completion && e.request_id.as_deref() == Some(own))
        {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no completion event for {own}");
}

/// The completion of the request sent as `rid`, joined to its decision by
/// the sidecar's id.
async fn completion_of(s: &Sidecar, rid: &str) -> StoredEvent {
    let own = decision_of(&events(s), rid).request_id.unwrap();
    completion_of_own(s, &own).await
}

async fn get_rid(s: &Sidecar, path: &str, rid: &str, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h = vec![("x-request-id", rid)];
    if let Some(a) = &auth {
        h.push(("Authorization", a.as_str()));
    }
    get(s.addr, path, &h).await
}

#[tokio::test]
async fn every_answer_is_audited_and_no_secret_enters_the_log() {
    let keys = Keys::generate();
    let s = start(&keys, Options::default()).await;
    write_upstream(s.dir.path(), "profiles", "2026-03-01.ndjson", DAY1);
    let mia = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let deny = token(&keys, "x", &["nobody"], "campaign-analytics");

    let ok = get_rid(&s, RECORDS, "r-ok", Some(&mia)).await;
    assert_eq!(ok.status, 200);
    assert!(
        ok.header("server-timing")
            .unwrap()
            .starts_with("audit;dur=")
    );
    let cases = [
        (
            "r-403",
            RECORDS,
            Some(deny.as_str()),
            403,
            Decision::Deny,
            Some("forbidden"),
        ),
        (
            "r-401",
            RECORDS,
            None,
            401,
            Decision::Error,
            Some("unauthorized"),
        ),
        (
            "r-401b",
            RECORDS,
            Some("not.a.jwt"),
            401,
            Decision::Error,
            Some("unauthorized"),
        ),
        (
            "r-400",
            "/v1/ports/profiles/records?limit=x",
            Some(mia.as_str()),
            400,
            Decision::Error,
            Some("bad_request"),
        ),
        (
            "r-404",
            "/v1/ports/nope/records",
            Some(mia.as_str()),
            404,
            Decision::Error,
            Some("unknown_port"),
        ),
        (
            "r-404b",
            "/nothing/here",
            None,
            404,
            Decision::Error,
            Some("not_found"),
        ),
        ("r-disc", "/", None, 200, Decision::Allow, None),
    ];
    for (rid, path, t, status, _, _) in &cases {
        let r = get_rid(&s, path, rid, *t).await;
        assert_eq!(r.status, *status, "{rid}: {}", r.text());
    }
    // Health probes are not decisions.
    let before = events(&s).len();
    get(s.addr, "/healthz", &[]).await;
    assert_eq!(events(&s).len(), before);

    let done = completion_of(&s, "r-ok").await;
    let evs = events(&s);
    let d = decision_of(&evs, "r-ok");
    assert_eq!(d.decision, Some(Decision::Allow));
    assert_eq!(d.status, Some(200));
    assert_eq!(d.consumer.as_deref(), Some("mia"));
    assert_eq!(d.groups, vec!["marketing".to_string()]);
    assert_eq!(d.purpose.as_deref(), Some("campaign-analytics"));
    assert_eq!(d.action.as_deref(), Some("read"));
    assert_eq!(d.port.as_deref(), Some("profiles"));
    assert!(!d.policies.is_empty(), "the policies behind the decision");
    assert_eq!(d.transforms["email"], "mask");
    assert_eq!(d.transforms["birth_date"], "generalize:year");
    assert_eq!(d.bundle_revision, Some(7));
    assert!(d.bundle_digest.as_deref().unwrap().starts_with("sha256:"));
    assert!(done.seq > d.seq);
    assert_eq!(done.records, Some(2));
    assert_eq!(done.bytes, Some(ok.body.len() as u64));
    assert_eq!(done.outcome.as_deref(), Some("complete"));
    for (rid, _, _, status, decision, code) in &cases {
        let e = decision_of(&evs, rid);
        assert_eq!(e.status, Some(*status), "{rid}");
        assert_eq!(e.decision, Some(*decision), "{rid}");
        assert_eq!(e.error.as_deref(), *code, "{rid}");
    }
    assert_eq!(decision_of(&evs, "r-403").consumer.as_deref(), Some("x"));
    assert_eq!(decision_of(&evs, "r-401").consumer, None);
    assert_eq!(
        decision_of(&evs, "r-disc").action.as_deref(),
        Some("discover")
    );

    // No token and no raw classified value anywhere in the log.
    let mut all = Vec::new();
    for f in std::fs::read_dir(audit_dir(&s)).unwrap() {
        all.extend(std::fs::read(f.unwrap().path()).unwrap());
    }
    let all = String::from_utf8(all).unwrap();
    for secret in [
        mia.as_str(),
        deny.as_str(),
        "not.a.jwt",
        "alice@example.com",
        "Alice",
        "1990-04-12",
        "1012AB",
    ] {
        assert!(
            !all.contains(secret),
            "`{secret}` leaked into the audit log"
        );
    }

    let key: meshgov_bundle::PublicKey =
        std::fs::read_to_string(s.dir.path().join("state/audit-signing.pub"))
            .unwrap()
            .parse()
            .unwrap();
    assert_eq!(key, s.app.audit.public_key());
    s.app.audit.close();
    let sum = verify_path(&audit_dir(&s), &key).unwrap();
    assert_eq!(sum.events as usize, evs.len());
    assert_eq!(
        sum.last_checkpoint_seq, sum.last_seq,
        "closing signs a final checkpoint"
    );
    s.stop().await;
}

/// A client's `x-request-id` is never the audit id: two consumers who send
/// the same one get distinct audit ids, each read's completion joins its
/// own decision, and both ids are echoed.
#[tokio::test]
async fn clients_sharing_a_request_id_get_distinct_audit_ids() {
    let keys = Keys::generate();
    let s = start(&keys, Options::default()).await;
    write_upstream(s.dir.path(), "profiles", "2026-03-01.ndjson", DAY1);
    let mia = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let ann = token(&keys, "ann", &["marketing"], "campaign-analytics");
    let a = get_rid(&s, RECORDS, "shared-1", Some(&mia)).await;
    let b = get_rid(&s, RECORDS, "shared-1", Some(&ann)).await;
    let (own_a, own_b) = (
        a.header("x-request-id").unwrap(),
        b.header("x-request-id").unwrap(),
    );
    assert_ne!(own_a, own_b);
    for r in [&a, &b] {
        assert_eq!(r.header("x-client-request-id"), Some("shared-1"));
    }
    let (a_done, b_done) = (
        completion_of_own(&s, own_a).await,
        completion_of_own(&s, own_b).await,
    );
    let evs = events(&s);
    for (own, who, done) in [(own_a, "mia", &a_done), (own_b, "ann", &b_done)] {
        let d = evs
            .iter()
            .find(|e| e.kind == Kind::Decision && e.request_id.as_deref() == Some(own))
            .unwrap();
        assert_eq!(d.consumer.as_deref(), Some(who));
        assert_eq!(d.client_request_id.as_deref(), Some("shared-1"));
        assert_eq!(done.request_id.as_deref(), Some(own));
    }
    assert_eq!(a_done.bytes, Some(a.body.len() as u64));
    assert_eq!(b_done.bytes, Some(b.body.len() as u64));
    s.stop().await;
}

#[tokio::test]
async fn refusals_for_missing_bundles_and_upstreams_are_audited() {
    let keys = Keys::generate();
    let mia = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let none = start(
        &keys,
        Options {
            install_bundle: false,
            ..Options::default()
        },
    )
    .await;
    assert_eq!(
        get_rid(&none, RECORDS, "r-503", Some(&mia)).await.status,
        503
    );
    let e = decision_of(&events(&none), "r-503");
    assert_eq!(
        (e.status, e.error.as_deref()),
        (Some(503), Some("no_valid_bundle"))
    );
    assert_eq!(e.bundle_revision, None);
    none.stop().await;
    // The port's directory does not exist: 502.
    let s = start(&keys, Options::default()).await;
    assert_eq!(get_rid(&s, RECORDS, "r-502", Some(&mia)).await.status, 502);
    let e = decision_of(&events(&s), "r-502");
    assert_eq!(
        (e.status, e.error.as_deref()),
        (Some(502), Some("upstream_failed"))
    );
    assert_eq!(e.decision, Some(Decision::Error));
    assert_eq!(e.bundle_revision, Some(7));
    s.stop().await;
}

#[tokio::test]
async fn a_client_that_goes_away_mid_stream_gets_a_completion_with_what_it_was_sent() {
    let keys = Keys::generate();
    let s = start(&keys, Options::default()).await;
    let line = DAY1.lines().next().unwrap();
    let big: String = (0..40_000).map(|_| format!("{line}\n")).collect();
    write_upstream(s.dir.path(), "profiles", "big.ndjson", &big);
    let mia = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let addr = s.addr;
    let got = tokio::task::spawn_blocking(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        write!(
            c,
            "GET {RECORDS} HTTP/1.1\r\nHost: t\r\nx-request-id: r-gone\r\nAuthorization: Bearer {mia}\r\n\r\n"
        )
        .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = c.read(&mut buf).unwrap();
        // Gone without reading the rest.
        drop(c);
        n
    })
    .await
    .unwrap();
    assert!(got > 0);
    let done = completion_of(&s, "r-gone").await;
    assert_eq!(done.outcome.as_deref(), Some("client_gone"));
    assert!(done.records.unwrap() < 40_000, "{done:?}");
    assert!(done.bytes.unwrap() < big.len() as u64);
    s.stop().await;
}

#[tokio::test]
async fn when_the_audit_log_cannot_take_the_decision_nothing_is_served() {
    let keys = Keys::generate();
    let s = start(&keys, Options::default()).await;
    write_upstream(s.dir.path(), "profiles", "2026-03-01.ndjson", DAY1);
    s.app.audit.close();
    let mia = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let r = get_rid(&s, RECORDS, "r-x", Some(&mia)).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "audit_unavailable");
    assert!(!r.text().contains("alice"), "no record leaked");
    s.stop().await;
}

/// Serves the audit feed of `app` on a loopback control listener.
async fn control(app: Arc<meshgov_sidecar::App>) -> std::net::SocketAddr {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = l.accept().await.unwrap();
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let app = Arc::clone(&app);
                    async move {
                        assert_eq!(req.uri().path(), "/control/v1/audit");
                        Ok::<_, std::convert::Infallible>(meshgov_sidecar::audit_feed::respond(
                            &app.audit,
                            req.uri().query(),
                        ))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_feed_streams_events_then_checkpoints_after_a_sequence() {
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            extra_config: "[audit]\ncheckpoint_every = 3\n".into(),
            ..Options::default()
        },
    )
    .await;
    for i in 0..7 {
        get_rid(&s, "/", &format!("f-{i}"), None).await;
    }
    let addr = control(Arc::clone(&s.app)).await;
    let r = get(addr, "/control/v1/audit?after=2", &[]).await;
    assert_eq!(r.status, 200);
    let lines: Vec<serde_json::Value> = r.lines();
    let seqs: Vec<u64> = lines
        .iter()
        .filter(|l| l["kind"] != "checkpoint")
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![3, 4, 5, 6, 7]);
    let cps: Vec<u64> = lines
        .iter()
        .filter(|l| l["kind"] == "checkpoint")
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(cps, vec![3, 6]);
    assert_eq!(s.app.audit.head().collected_seq, 2);
    let bad = get(addr, "/control/v1/audit?after=-1", &[]).await;
    assert_eq!(bad.status, 400);
    let status = meshgov_sidecar::audit_feed::status(&s.app.audit);
    assert_eq!(status.head_seq, 7);
    assert_eq!(status.public_key, s.app.audit.public_key().to_string());
    s.stop().await;
}

#[tokio::test]
async fn collection_resumes_after_a_restart_without_gaps_or_duplicates_and_verifies() {
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            extra_config: "[audit]\ncheckpoint_every = 4\n".into(),
            ..Options::default()
        },
    )
    .await;
    for i in 0..10 {
        get_rid(&s, "/", &format!("c-{i}"), None).await;
    }
    let addr = control(Arc::clone(&s.app)).await;
    let url = format!("http://{addr}");
    let store = tempfile::tempdir().unwrap();
    let key = s.app.audit.public_key();
    let mut c = meshgov_audit::collect::Collector::open(store.path(), key).unwrap();
    let p = c.pull(&url).await.unwrap();
    assert_eq!((p.events, p.head_seq), (10, 10));
    assert_eq!(p.checkpoints, 2);
    drop(c);
    // The engine restarts; the sidecar goes on.
    for i in 10..15 {
        get_rid(&s, "/", &format!("c-{i}"), None).await;
    }
    let mut c = meshgov_audit::collect::Collector::open(store.path(), key).unwrap();
    assert_eq!(c.head_seq(), 10);
    let p = c.pull(&url).await.unwrap();
    assert_eq!((p.events, p.head_seq), (5, 15));
    let again = c.pull(&url).await.unwrap();
    assert_eq!(again.events, 0);
    let stored: Vec<u64> = read_filtered(store.path(), &Filter::default())
        .unwrap()
        .iter()
        .map(|(e, _)| e.seq)
        .collect();
    assert_eq!(stored, (1..=15).collect::<Vec<_>>());
    let sum = verify_path(store.path(), &key).unwrap();
    assert_eq!(sum.last_seq, 15);
    assert_eq!(sum.last_checkpoint_seq, 12);
    // A collector that trusts another key refuses the first checkpoint.
    let other = tempfile::tempdir().unwrap();
    let wrong = meshgov_bundle::SigningKey::from_pkcs8_pem(
        &meshgov_bundle::SigningKey::generate_pkcs8_pem(&ring::rand::SystemRandom::new()).unwrap(),
    )
    .unwrap()
    .public_key();
    let mut c = meshgov_audit::collect::Collector::open(other.path(), wrong).unwrap();
    let err = c.pull(&url).await.unwrap_err();
    assert!(err.to_string().contains("not signed"), "{err}");
    s.stop().await;
}

#[tokio::test]
async fn collected_and_checkpointed_segments_are_retired_and_the_removal_is_audited() {
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            extra_config: "[audit]\nsegment_bytes = 4096\ncheckpoint_every = 5\nretention = \"after_collection\"\n".into(),
            ..Options::default()
        },
    )
    .await;
    for i in 0..40 {
        get_rid(&s, "/", &format!("t-{i}"), None).await;
    }
    let segments = || meshgov_audit::segment::list_segments(&audit_dir(&s)).unwrap();
    let before = segments();
    assert!(before.len() >= 3, "{} segments", before.len());
    let addr = control(Arc::clone(&s.app)).await;
    // Reading the feed is not acknowledging it; `after=` is.
    get(addr, "/control/v1/audit?after=0", &[]).await;
    assert_eq!(segments()[0].first_seq, 1);
    get(addr, "/control/v1/audit?after=40", &[]).await;
    // The removal is recorded first, then the files go.
    let mut retired = None;
    for _ in 0..200 {
        let r = events(&s).into_iter().find(|e| e.kind == Kind::Retention);
        if let Some(r) = r
            && segments()[0].first_seq == r.through_seq.unwrap() + 1
        {
            retired = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = retired.expect("no segment was retired");
    assert!(r.through_seq.unwrap() <= 40);
    assert!(segments().len() < before.len());
    let key = s.app.audit.public_key();
    s.app.audit.close();
    let sum = verify_path(&audit_dir(&s), &key).unwrap();
    assert_eq!(sum.retired_through, r.through_seq.unwrap());
    s.stop().await;
}
