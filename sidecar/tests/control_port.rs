//! The control port over real sockets: signed pushes with ACK/NACK,
//! persistence and restart (a real process), engine-only auth, expiry, and
//! swaps under load.

use crate::common;
use base64::Engine as _;
use common::*;
use serde_json::json;
use sha2::Digest as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const RECORDS: &str = "/v1/ports/profiles/records";
const DAY1: &str = concat!(
    r#"{"user_id":"u-1","email":"alice@example.com","name":"Alice","birth_date":"1990-04-12","country":"NL","postcode":"1012AB","signed_up_at":"2026-03-01T10:00:00Z"}"#,
    "\n",
    r#"{"user_id":"u-2","email":"bob@example.org","name":"Bob","birth_date":"1985-11-30","country":"DE","postcode":"10115","signed_up_at":"2026-03-01T11:00:00Z"}"#,
    "\n"
);

async fn sidecar(keys: &Keys, install_bundle: bool) -> Sidecar {
    let s = start(
        keys,
        Options {
            control: true,
            install_bundle,
            ..Options::default()
        },
    )
    .await;
    write_upstream(s.dir.path(), "profiles", "2026-03-01.ndjson", DAY1);
    s
}

async fn push(s: &Sidecar, bundle: &[u8]) -> Resp {
    put(s.control.unwrap(), "/control/v1/bundle", bundle, &[]).await
}

async fn status(s: &Sidecar) -> serde_json::Value {
    let t = meshgov_bundle::mint_control_token(&s.gov, "meshgov-engine", now(), 60);
    let r = get_as(s.control.unwrap(), "/control/v1/status", &t).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[tokio::test]
async fn a_push_is_acked_persisted_and_enforced_and_the_same_push_is_a_noop() {
    let keys = Keys::generate();
    let s = sidecar(&keys, false).await;
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    assert_eq!(get_as(s.addr, RECORDS, &t).await.status, 503);
    let bundle = signed_bundle(&s.gov, &s.app.descriptor, 8, 600);
    let r = push(&s, &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ack = r.json();
    assert_eq!(ack["result"], "ack");
    assert_eq!(ack["revision"], 8);
    assert_eq!(ack["noop"], false);
    let digest = ack["digest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");
    // Persisted byte for byte, and served.
    let persisted = std::fs::read(s.dir.path().join("state/bundle.dsse.json")).unwrap();
    assert_eq!(persisted, bundle);
    let r = get_as(s.addr, RECORDS, &t).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-meshgov-bundle-revision"), Some("8"));
    // The same bundle again: ACK, nothing changes.
    let again = push(&s, &bundle).await.json();
    assert_eq!(
        again,
        json!({"result": "ack", "revision": 8, "digest": digest, "noop": true})
    );
    let st = status(&s).await;
    assert_eq!(st["state"], "serving");
    assert_eq!(st["bundle"]["revision"], 8);
    assert_eq!(st["bundle"]["digest"], digest.as_str());
    assert_eq!(st["product"], "users/user-profiles");
    s.stop().await;
}

#[tokio::test]
async fn tampered_foreign_rolled_back_expired_and_conflicting_bundles_are_nacked() {
    let keys = Keys::generate();
    let s = sidecar(&keys, true).await; // revision 7 in force
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let good = signed_bundle(&s.gov, &s.app.descriptor, 9, 600);
    let mut env: serde_json::Value = serde_json::from_slice(&good).unwrap();
    let p = env["payload"].as_str().unwrap().to_string();
    env["payload"] = json!(format!(
        "{}{}",
        if p.starts_with('A') { "B" } else { "A" },
        &p[1..]
    ));
    let tampered = serde_json::to_vec(&env).unwrap();
    let plays = meshgov_core::descriptor::Descriptor::parse(
        "p",
        &std::fs::read_to_string(repo().join("policies/products/play-events.yaml")).unwrap(),
    )
    .unwrap();
    // Revision 7 again with another lifetime, so another digest.
    let seven_again = signed_bundle(&s.gov, &s.app.descriptor, 7, 601);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("tampered", tampered, 422, "bad_signature"),
        (
            "wrong key",
            signed_bundle(&governance_key(), &s.app.descriptor, 10, 600),
            422,
            "untrusted_key",
        ),
        (
            "rollback",
            signed_bundle(&s.gov, &s.app.descriptor, 6, 600),
            409,
            "rollback",
        ),
        (
            "expired",
            signed_bundle(&s.gov, &s.app.descriptor, 11, -1),
            422,
            "expired",
        ),
        (
            "other product",
            signed_bundle(&s.gov, &plays, 12, 600),
            422,
            "wrong_product",
        ),
        (
            "same revision, other digest",
            seven_again,
            409,
            "revision_conflict",
        ),
        ("not json", b"{not json".to_vec(), 422, "malformed"),
    ];
    for (what, bundle, status_code, code) in cases {
        let r = push(&s, &bundle).await;
        assert_eq!(r.status, status_code, "{what}: {}", r.text());
        let nack = r.json();
        assert_eq!(nack["result"], "nack", "{what}");
        assert_eq!(nack["code"], code, "{what}: {nack}");
        assert_eq!(nack["active_revision"], 7, "{what}");
        assert!(!nack["reason"].as_str().unwrap().is_empty());
        // The last good bundle stays in force and serves.
        let r = get_as(s.addr, RECORDS, &t).await;
        assert_eq!(r.status, 200, "{what}");
        assert_eq!(r.header("x-meshgov-bundle-revision"), Some("7"), "{what}");
        let st = status(&s).await;
        assert_eq!(st["last_refusal"]["code"], code, "{what}");
        assert_eq!(st["bundle"]["revision"], 7);
    }
    // The persisted bundle is still revision 7's.
    let persisted = std::fs::read(s.dir.path().join("state/bundle.dsse.json")).unwrap();
    assert_eq!(
        meshgov_bundle::inspect(&persisted)
            .unwrap()
            .manifest
            .revision,
        7
    );
    s.stop().await;
}

/// The example slice's components with the `pii.user_id` rule replaced.
fn with_user_id_rule(
    policies: &meshgov_core::Policies,
    rule: serde_json::Value,
) -> std::collections::BTreeMap<String, String> {
    let mut c = policies.components();
    let mut anon: serde_json::Value = serde_json::from_str(&c["anonymization.json"]).unwrap();
    let rules = anon["rules"].as_array_mut().unwrap();
    let at = rules
        .iter()
        .position(|r| r["classification"] == "pii.user_id")
        .unwrap();
    rules[at] = rule;
    c.insert("anonymization.json".into(), anon.to_string());
    c
}

#[tokio::test]
async fn bundles_this_sidecar_cannot_enforce_in_full_are_nacked_with_a_typed_code() {
    let keys = Keys::generate();
    let s = sidecar(&keys, true).await; // revision 7 in force
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let policies = policies_for(&s.app.descriptor);
    let rule = |extra: serde_json::Value| {
        let mut r = json!({"id": "anon.user-id", "classification": "pii.user_id"});
        r.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        r
    };
    // A plugin whose module is not WebAssembly, pinned by its true digest.
    let junk = b"not a wasm module".to_vec();
    let mut bad_module = with_user_id_rule(
        &policies,
        rule(json!({"transform": "plugin", "plugin": "junk"})),
    );
    bad_module.insert(
        "plugins.json".into(),
        json!([{"name": "junk", "kind": "transform", "module": "junk.wasm",
                "sha256": hex::encode(sha2::Sha256::digest(&junk))}])
        .to_string(),
    );
    bad_module.insert(
        "plugins/junk.wasm.b64".into(),
        base64::engine::general_purpose::STANDARD.encode(&junk),
    );
    let mut unknown_check = policies.components();
    let mut standards: serde_json::Value =
        serde_json::from_str(&unknown_check["standards.json"]).unwrap();
    standards["rules"][0]["check"] = json!("lineage");
    unknown_check.insert("standards.json".into(), standards.to_string());
    let cases = [
        (
            "a standards check this build does not know",
            unknown_check,
            "unsupported_policy",
            "lineage",
        ),
        (
            "a transform this build does not know",
            with_user_id_rule(&policies, rule(json!({"transform": "tokenize"}))),
            "unsupported_policy",
            "tokenize",
        ),
        (
            "a key scope with no key on this sidecar",
            with_user_id_rule(
                &policies,
                rule(json!({"transform": "hmac", "key_scope": "billing-identity"})),
            ),
            "missing_key",
            "billing-identity",
        ),
        (
            "a plugin the bundle does not carry",
            with_user_id_rule(
                &policies,
                rule(json!({"transform": "plugin", "plugin": "absent"})),
            ),
            "plugin_invalid",
            "absent",
        ),
        (
            "a plugin module that cannot be loaded",
            bad_module,
            "plugin_invalid",
            "junk",
        ),
    ];
    for (revision, (what, components, code, named)) in (8..).zip(cases) {
        let bundle = sign_components(&s.gov, policies.product.clone(), components, revision, 600);
        let r = push(&s, &bundle).await;
        assert_eq!(r.status, 422, "{what}: {}", r.text());
        let nack = r.json();
        assert_eq!(nack["result"], "nack", "{what}");
        assert_eq!(nack["code"], code, "{what}: {nack}");
        assert_eq!(nack["active_revision"], 7, "{what}");
        assert!(
            nack["reason"].as_str().unwrap().contains(named),
            "{what}: {nack}"
        );
        // Revision 7 keeps serving, pseudonyms and all.
        let r = get_as(s.addr, RECORDS, &t).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert_eq!(r.header("x-meshgov-bundle-revision"), Some("7"), "{what}");
        assert!(r.lines()[0]["user_id"].as_str().unwrap().starts_with("u_"));
        assert_eq!(status(&s).await["last_refusal"]["code"], code, "{what}");
    }
    // Each refusal is in the audit log with its code (the audit submit
    // returns before the NACK is answered).
    let refused: Vec<String> = meshgov_audit::show::read_filtered(
        &s.dir.path().join("state/audit"),
        &meshgov_audit::show::Filter::default(),
    )
    .unwrap()
    .into_iter()
    .filter_map(|(e, _)| e.error)
    .collect();
    for code in ["unsupported_policy", "missing_key", "plugin_invalid"] {
        assert!(refused.iter().any(|e| e == code), "{code}: {refused:?}");
    }
    s.stop().await;
}

#[tokio::test]
async fn only_the_engine_may_call_control_routes() {
    let keys = Keys::generate();
    let s = sidecar(&keys, true).await;
    let c = s.control.unwrap();
    let path = "/control/v1/status";
    let consumer = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let stranger = meshgov_bundle::mint_control_token(&governance_key(), "x", now(), 60);
    let stale = meshgov_bundle::mint_control_token(&s.gov, "meshgov-engine", now() - 700, 60);
    for route in [path, "/control/v1/audit?after=0", "/control/v1/bundle"] {
        for (what, auth) in [
            ("no token", None),
            ("consumer token", Some(consumer.clone())),
            ("control token of an untrusted key", Some(stranger.clone())),
            ("expired control token", Some(stale.clone())),
        ] {
            let r = match &auth {
                None => get(c, route, &[]).await,
                Some(t) => get_as(c, route, t).await,
            };
            assert_eq!(r.status, 401, "{route}, {what}: {}", r.text());
            assert_eq!(r.error_code(), "unauthorized", "{route}, {what}");
        }
    }
    let good = meshgov_bundle::mint_control_token(&s.gov, "meshgov-engine", now(), 60);
    let st = get_as(c, path, &good).await;
    assert_eq!(st.status, 200);
    // The status publishes the audit head and the checkpoint key.
    let audit = &st.json()["audit"];
    assert_eq!(
        audit["public_key"],
        s.app.audit.head().public_key,
        "{audit}"
    );
    assert!(audit["head_seq"].as_u64().is_some(), "{audit}");
    let feed = get_as(c, "/control/v1/audit?after=0", &good).await;
    assert_eq!(feed.status, 200, "{}", feed.text());
    // A control token is no consumer token either.
    assert_eq!(get_as(s.addr, RECORDS, &good).await.status, 401);
    // The data port does not serve control routes.
    assert_eq!(get_as(s.addr, path, &good).await.status, 404);
    // The bundle in force, byte for byte: it verifies, and it is the one
    // the status names.
    let b = get_as(c, "/control/v1/bundle", &good).await;
    assert_eq!(b.status, 200, "{}", b.text());
    let digest = meshgov_bundle::inspect(&b.body).unwrap().digest;
    assert_eq!(st.json()["bundle"]["digest"], digest.as_str());
    assert_eq!(b.header("etag"), Some(format!("\"{digest}\"").as_str()));
    let delete = b"DELETE /control/v1/bundle HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(c, delete.to_vec()).await.status, 405);
    s.stop().await;
}

#[tokio::test]
async fn an_expired_bundle_fails_closed_and_says_why() {
    let keys = Keys::generate();
    let s = sidecar(&keys, false).await;
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let bundle = signed_bundle(&s.gov, &s.app.descriptor, 8, 2);
    let r = push(&s, &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get_as(s.addr, RECORDS, &t).await.status, 200);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    // The same bytes again are verified again, not taken as a no-op.
    let r = push(&s, &bundle).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["code"], "expired", "{}", r.text());
    let r = get_as(s.addr, RECORDS, &t).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "no_valid_bundle");
    assert!(r.json()["reason"].as_str().unwrap().contains("expired"));
    let ready = get(s.addr, "/readyz", &[]).await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.json()["reason"]
            .as_str()
            .unwrap()
            .contains("revision 8 expired")
    );
    let st = status(&s).await;
    assert_eq!(st["state"], "expired");
    assert!(st["bundle"]["expires_in_seconds"].as_i64().unwrap() <= 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swaps_under_load_drop_no_request() {
    const SWAPS: u64 = 25;
    const CLIENTS: usize = 4;
    let keys = Keys::generate();
    let s = sidecar(&keys, true).await;
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let bundles: Vec<Vec<u8>> = (0..SWAPS)
        .map(|i| signed_bundle(&s.gov, &s.app.descriptor, 8 + i, 600))
        .collect();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (addr, t, done) = (s.addr, t.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let r = get_as(addr, RECORDS, &t).await;
                assert_eq!(r.status, 200, "{}", r.text());
                assert_eq!(r.lines().len(), 2, "a complete body");
                let revs: Vec<&str> = r
                    .headers
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case("x-meshgov-bundle-revision"))
                    .map(|(_, v)| v.as_str())
                    .collect();
                assert_eq!(revs.len(), 1, "exactly one revision per response");
                seen.push(revs[0].parse::<u64>().unwrap());
            }
            seen
        }));
    }
    for b in &bundles {
        let r = push(&s, b).await;
        assert_eq!(r.status, 200, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    let mut distinct = std::collections::BTreeSet::new();
    for c in clients {
        let seen = c.await.unwrap();
        // Each client's requests are sequential, so revisions never go back.
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert!(seen.iter().all(|r| (7..8 + SWAPS).contains(r)));
        total += seen.len();
        distinct.extend(seen);
    }
    assert!(total >= 50, "only {total} requests ran");
    assert!(
        distinct.len() >= 10,
        "requests saw only {distinct:?} across {SWAPS} swaps"
    );
    assert_eq!(status(&s).await["bundle"]["revision"], 7 + SWAPS);
    s.stop().await;
}

async fn wait_ready(addr: SocketAddr, within: Duration) -> Option<Resp> {
    let start = Instant::now();
    while start.elapsed() < within {
        if std::net::TcpStream::connect(addr).is_ok() {
            let r = get(addr, "/readyz", &[]).await;
            if r.status == 200 {
                return Some(r);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test]
async fn a_restarted_sidecar_serves_its_persisted_bundle_before_the_engine_answers() {
    let keys = Keys::generate();
    let dir = tempfile::tempdir().unwrap();
    let gov = governance_key();
    let (descriptor_path, descriptor) = example_descriptor("user-profiles");
    let data = dir.path().join("data/profiles");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("2026-03-01.ndjson"), DAY1).unwrap();
    let [data_addr, control_addr, engine_addr] = free_addrs();
    // An engine that never answers: nothing listens there.
    let engine = format!("http://{engine_addr}");
    // No bundle file: the sidecar starts with nothing to enforce.
    let cfg = ProcessConfig {
        listen: &format!("data = \"{data_addr}\"\ncontrol = \"{control_addr}\""),
        ..ProcessConfig::default()
    }
    .write(dir.path(), &descriptor_path, &gov, &keys);
    let spawn = || {
        Process::spawn_unlogged(
            sidecar_command(&cfg, "info")
                .arg("--engine")
                .arg(&engine)
                .stderr(std::process::Stdio::null()),
        )
        .unwrap()
    };
    let first = spawn();
    // No bundle yet: not ready.
    let start = Instant::now();
    while std::net::TcpStream::connect(control_addr).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(data_addr, "/readyz", &[]).await.status, 503);
    let r = put(
        control_addr,
        "/control/v1/bundle",
        &signed_bundle(&gov, &descriptor, 41, 600),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A crash, not a clean stop: the bundle must already be on disk.
    drop(first);
    let _second = spawn();
    let r = wait_ready(data_addr, Duration::from_secs(10))
        .await
        .expect("the restarted sidecar never became ready");
    assert_eq!(r.json()["revision"], 41);
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let r = get_as(data_addr, RECORDS, &t).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-meshgov-bundle-revision"), Some("41"));
    // Rollback protection survives the restart.
    let r = put(
        control_addr,
        "/control/v1/bundle",
        &signed_bundle(&gov, &descriptor, 40, 600),
        &[],
    )
    .await;
    assert_eq!(r.json()["code"], "rollback");
    // And the engine it cannot reach shows in status.
    let ct = meshgov_bundle::mint_control_token(&gov, "meshgov-engine", now(), 60);
    let st = get_as(control_addr, "/control/v1/status", &ct).await.json();
    assert_eq!(st["engine"]["registered"], false);
    assert!(st["engine"]["last_error"].is_string(), "{st}");
}
