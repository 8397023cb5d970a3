//! The data port over real sockets, with the example mesh, a bundle built
//! from `policies/`, and tokens signed here.

use crate::common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const DAY1: &str = concat!(
    r#"{"user_id":"u-1","email":"alice@example.com","name":"Alice","birth_date":"1990-04-12","country":"NL","postcode":"1012AB","signed_up_at":"2026-03-01T10:00:00Z","ssn":"123-45-6789"}"#,
    "\n",
    "this is not json\n",
    r#"{"user_id":"u-2","email":"bob@example.org","name":"Bob","birth_date":"1985-11-30","country":"DE","postcode":"10115","signed_up_at":"2026-03-01T11:00:00Z"}"#,
    "\n"
);
const DAY2: &str = concat!(
    r#"{"user_id":"u-3","email":"carol@example.net","name":"Carol","birth_date":"2001-01-01","country":"FR","postcode":"75001","signed_up_at":"2026-03-02T09:00:00Z"}"#,
    "\n",
    "[1,2,3]\n"
);

async fn profiles(keys: &Keys) -> Sidecar {
    let s = start(keys, Options::default()).await;
    write_upstream(s.dir.path(), "profiles", "2026-03-01.ndjson", DAY1);
    write_upstream(s.dir.path(), "profiles", "2026-03-02.ndjson", DAY2);
    s
}

const RECORDS: &str = "/v1/ports/profiles/records";

#[tokio::test]
async fn marketing_sees_anonymized_profiles_without_undeclared_fields() {
    let keys = Keys::generate();
    let s = profiles(&keys).await;
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let r = get_as(s.addr, RECORDS, &t).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(r.header("x-meshgov-bundle-revision"), Some("7"));
    let recs = r.lines();
    assert_eq!(recs.len(), 3, "two malformed lines are skipped: {recs:?}");
    let a = &recs[0];
    assert_eq!(a["email"], "a************.com");
    assert_eq!(a["name"], serde_json::Value::Null);
    assert_eq!(a["birth_date"], "1990");
    assert_eq!(a["postcode"], "101");
    assert_eq!(a["country"], "NL");
    assert_eq!(a["signed_up_at"], "2026-03-01T10:00:00Z");
    // prefix + hex(HMAC-SHA256(key, "u-1")[..16]), computed independently:
    // python3 -c 'import hmac,hashlib; print(hmac.new(
    //   b"meshgov-test-pseudonym-key-0123456789", b"u-1", hashlib.sha256).hexdigest()[:32])'
    assert_eq!(a["user_id"], "u_da4ca8084e2e5e04ad13b2cef8bad897");
    assert!(
        a.get("ssn").is_none(),
        "an undeclared field left the sidecar"
    );
    let keys_out: Vec<&String> = a.as_object().unwrap().keys().collect();
    assert_eq!(keys_out.len(), 7);
    // Pseudonyms are deterministic per key scope: same input, same output.
    let again = get_as(s.addr, RECORDS, &t).await.lines();
    assert_eq!(again[0]["user_id"], a["user_id"]);
    assert!(s.app.metrics.malformed_skipped.get() >= 2);
    s.stop().await;
}

#[tokio::test]
async fn fraud_sees_email_in_the_clear_for_fraud_work_only() {
    let keys = Keys::generate();
    let s = profiles(&keys).await;
    let t = token(&keys, "fred", &["fraud"], "fraud-investigation");
    let recs = get_as(s.addr, RECORDS, &t).await.lines();
    assert_eq!(recs[0]["email"], "alice@example.com");
    assert_eq!(recs[0]["name"], serde_json::Value::Null);
    // The same consumer with another purpose is refused outright.
    let t = token(&keys, "fred", &["fraud"], "campaign-analytics");
    let r = get_as(s.addr, RECORDS, &t).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "forbidden");
    let body = r.text();
    assert!(
        !body.contains("users.") && !body.contains("policy"),
        "policy internals leaked: {body}"
    );
    assert!(
        r.json()["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    s.stop().await;
}

#[tokio::test]
async fn denied_groups_and_unknown_purposes_get_403() {
    let keys = Keys::generate();
    let s = profiles(&keys).await;
    for (groups, purpose) in [
        (&["payments"][..], "royalty-payments"),
        (&["marketing"][..], "no-such-purpose"),
        (&[][..], "campaign-analytics"),
    ] {
        let r = get_as(s.addr, RECORDS, &token(&keys, "x", groups, purpose)).await;
        assert_eq!(r.status, 403, "{groups:?} {purpose}");
    }
    s.stop().await;
}

#[tokio::test]
async fn row_filters_hide_short_plays_from_payments() {
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            product: "play-events",
            ..Options::default()
        },
    )
    .await;
    let mut text = String::new();
    for (i, d) in [10_000, 45_000, 30_000, 29_999].iter().enumerate() {
        text.push_str(&json!({"event_id": format!("e{i}"), "user_id": "u-1", "song_id": "s1", "artist_id": "a1",
            "played_at": "2026-03-01T10:00:00Z", "duration_ms": d, "country": "NL", "device": "Pixel 9"}).to_string());
        text.push('\n');
    }
    write_upstream(s.dir.path(), "plays", "2026-03-01.ndjson", &text);
    let pay = get_as(
        s.addr,
        "/v1/ports/plays/records",
        &token(&keys, "p", &["payments"], "royalty-payments"),
    )
    .await;
    assert_eq!(pay.status, 200, "{}", pay.text());
    let ids: Vec<_> = pay
        .lines()
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["e1", "e2"]);
    assert_eq!(pay.lines()[0]["device"], serde_json::Value::Null);
    // Data science sees every play, and the device (revealed for product work).
    let ds = get_as(
        s.addr,
        "/v1/ports/plays/records",
        &token(&keys, "d", &["data-science"], "product-analytics"),
    )
    .await;
    assert_eq!(ds.lines().len(), 4);
    assert_eq!(ds.lines()[0]["device"], "Pixel 9");
    s.stop().await;
}

#[tokio::test]
async fn csv_output_has_a_header_and_the_same_shaping() {
    let keys = Keys::generate();
    let s = profiles(&keys).await;
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let r = get(
        s.addr,
        RECORDS,
        &[
            ("Authorization", &format!("Bearer {t}")),
            ("Accept", "text/csv"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/csv"));
    let text = r.text();
    let rows: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(
        rows[0],
        "user_id,email,name,birth_date,country,postcode,signed_up_at"
    );
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows[1],
        "u_da4ca8084e2e5e04ad13b2cef8bad897,a************.com,,1990,NL,101,2026-03-01T10:00:00Z"
    );
    assert!(!text.contains("123-45-6789") && !text.contains("Alice"));
    s.stop().await;
}

#[tokio::test]
async fn csv_output_neutralises_formulas() {
    let keys = Keys::generate();
    let s = start(&keys, Options::default()).await;
    let line = json!({"user_id": "u-1", "email": "x@y.z", "country": "=HYPERLINK(\"http://evil\",\"x\")",
        "postcode": "-1+1", "signed_up_at": "@now"});
    write_upstream(s.dir.path(), "profiles", "a.ndjson", &format!("{line}\n"));
    let t = token(&keys, "fred", &["fraud"], "fraud-investigation");
    let r = get(
        s.addr,
        RECORDS,
        &[
            ("Authorization", &format!("Bearer {t}")),
            ("Accept", "text/csv"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let row = text.split("\r\n").nth(1).unwrap();
    assert_eq!(
        row,
        r#"u_da4ca8084e2e5e04ad13b2cef8bad897,x@y.z,,,"'=HYPERLINK(""http://evil"",""x"")",'-1+,'@now"#
    );
    s.stop().await;
}

#[tokio::test]
async fn a_missing_pseudonym_key_refuses_the_bundle_instead_of_leaking() {
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            pseudonym_keys: String::new(),
            install_bundle: false,
            ..Options::default()
        },
    )
    .await;
    write_upstream(s.dir.path(), "profiles", "2026-03-01.ndjson", DAY1);
    // `user_id` is pseudonymized for some consumers: with no key for its
    // scope, the sidecar cannot enforce the bundle, so it does not take it.
    let bundle = signed_bundle(&s.gov, &s.app.descriptor, 7, 600);
    let e = s.app.load_bundle(&bundle, now()).unwrap_err();
    assert_eq!(e.code().as_str(), "missing_key", "{e}");
    assert!(e.to_string().contains("`user-identity`"), "{e}");
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let r = get_as(s.addr, RECORDS, &t).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(!r.text().contains("u-1") && !r.text().contains("user-identity"));
    s.stop().await;
}

#[tokio::test]
async fn csv_upstream_files_are_read_too() {
    let keys = Keys::generate();
    let s = start(&keys, Options::default()).await;
    write_upstream(
        s.dir.path(),
        "profiles",
        "2026-03-05.csv",
        "user_id,email,name,birth_date,country,postcode,signed_up_at,extra\r\nu-9,\"dan@example.com\",\"Dan, Jr\",1970-02-03,BE,1000,2026-03-05T08:00:00Z,secret\r\nbroken,row\r\n",
    );
    let r = get_as(
        s.addr,
        RECORDS,
        &token(&keys, "fred", &["fraud"], "fraud-investigation"),
    )
    .await;
    let recs = r.lines();
    assert_eq!(recs.len(), 1, "{}", r.text());
    assert_eq!(recs[0]["email"], "dan@example.com");
    assert_eq!(recs[0]["name"], serde_json::Value::Null);
    // python3: hmac.new(b"meshgov-test-pseudonym-key-0123456789", b"u-9", hashlib.sha256)
    assert_eq!(recs[0]["user_id"], "u_a0fb2b536035d08a4cb32a292bd7c5b8");
    assert!(recs[0].get("extra").is_none());
    s.stop().await;
}

#[tokio::test]
async fn windows_and_limits() {
    let keys = Keys::generate();
    let s = profiles(&keys).await;
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let day2 = get_as(
        s.addr,
        &format!("{RECORDS}?from=2026-03-02&to=2026-03-03"),
        &t,
    )
    .await;
    assert_eq!(day2.status, 200);
    assert_eq!(day2.lines().len(), 1);
    assert_eq!(day2.lines()[0]["country"], "FR");
    let part = get_as(
        s.addr,
        &format!("{RECORDS}?from=2026-03-01T10%3A30%3A00Z&to=2026-03-02"),
        &t,
    )
    .await;
    assert_eq!(part.lines().len(), 1);
    assert_eq!(part.lines()[0]["country"], "DE");
    let two = get_as(s.addr, &format!("{RECORDS}?limit=2"), &t).await;
    assert_eq!(two.lines().len(), 2);
    s.stop().await;
}

#[tokio::test]
async fn bad_parameters_get_400_with_a_reason() {
    let keys = Keys::generate();
    let s = profiles(&keys).await;
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    for q in [
        "?limit=-1",
        "?limit=0",
        "?limit=abc",
        "?from=yesterday",
        "?from=2026-02-30",
        "?from=2026-03-02&to=2026-03-01",
        "?from=2026-03-01&from=2026-03-02",
        "?colour=blue",
        "?from=%ZZ",
    ] {
        let r = get_as(s.addr, &format!("{RECORDS}{q}"), &t).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert_eq!(r.error_code(), "bad_request");
        assert!(!r.json()["reason"].as_str().unwrap().is_empty());
    }
    for path in [
        "/v1/ports/../records",
        "/v1/ports/..%2F..%2Fetc/records",
        "/v1/ports/a%00b/records",
    ] {
        let r = get_as(s.addr, path, &t).await;
        assert_eq!(r.status, 400, "{path}");
    }
    let r = get_as(s.addr, "/v1/ports/nope/records", &t).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "unknown_port");
    let r = get_as(s.addr, "/v1/elsewhere", &t).await;
    assert_eq!(r.status, 404);
    // Malformed request lines and absurd headers are refused and the
    // process keeps serving.
    let r = raw(
        s.addr,
        b"GET /v1/ports/\xff\xfe/records HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    assert!((400..500).contains(&r.status), "{}", r.status);
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(100_000)
    );
    let r = raw(s.addr, huge.into_bytes()).await;
    assert_eq!(r.status, 431);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("Connection: close\r\n\r\n");
    let r = raw(s.addr, many.into_bytes()).await;
    assert!((400..500).contains(&r.status), "{}", r.status);
    assert_eq!(get(s.addr, "/healthz", &[]).await.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn tokens_are_verified_strictly() {
    let keys = Keys::generate();
    let s = profiles(&keys).await;
    let ok = claims("mia", &["marketing"], "campaign-analytics");
    // Every accepted algorithm works.
    for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
        let r = get_as(s.addr, RECORDS, &sign(&keys, alg, &ok)).await;
        assert_eq!(r.status, 200, "{alg:?}: {}", r.text());
    }
    let expect_401 = |r: Resp, what: &str| {
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_eq!(r.error_code(), "unauthorized", "{what}");
    };
    expect_401(get(s.addr, RECORDS, &[]).await, "no token");
    expect_401(
        get(s.addr, RECORDS, &[("Authorization", "Basic Zm9vOmJhcg==")]).await,
        "basic auth",
    );
    expect_401(get_as(s.addr, RECORDS, "not.a.jwt").await, "garbage");
    // alg: none, unsigned.
    let none = format!(
        "{}.{}.",
        b64u(br#"{"alg":"none","typ":"JWT"}"#),
        b64u(ok.to_string().as_bytes())
    );
    expect_401(get_as(s.addr, RECORDS, &none).await, "alg none");
    let none2 = format!(
        "{}.{}.",
        b64u(br#"{"alg":"None"}"#),
        b64u(ok.to_string().as_bytes())
    );
    expect_401(get_as(s.addr, RECORDS, &none2).await, "alg None");
    // Algorithm confusion: HS256 keyed with the RSA public key, and with the Ed25519 public key bytes.
    let rsa_pub = std::fs::read(&keys.rsa_public_pem).unwrap();
    for secret in [rsa_pub.as_slice(), keys.ed_public.as_slice()] {
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &ok,
            &EncodingKey::from_secret(secret),
        )
        .unwrap();
        expect_401(get_as(s.addr, RECORDS, &t).await, "HS256 confusion");
    }
    // An ES256 header on an EdDSA signature.
    let ed = sign(&keys, Algorithm::EdDSA, &ok);
    let mut parts: Vec<&str> = ed.split('.').collect();
    let es_header = b64u(br#"{"alg":"ES256","typ":"JWT"}"#);
    parts[0] = &es_header;
    expect_401(
        get_as(s.addr, RECORDS, &parts.join(".")).await,
        "header swap",
    );
    // A key the sidecar does not trust.
    let other = Keys::generate();
    expect_401(
        get_as(s.addr, RECORDS, &sign(&other, Algorithm::EdDSA, &ok)).await,
        "untrusted key",
    );
    // Tampered payload.
    let mut tampered: Vec<String> = ed.split('.').map(str::to_string).collect();
    let mut c = ok.clone();
    c["groups"] = json!(["fraud"]);
    tampered[1] = b64u(c.to_string().as_bytes());
    expect_401(
        get_as(s.addr, RECORDS, &tampered.join(".")).await,
        "tampered",
    );
    // Claims.
    let with = |k: &str, v: serde_json::Value| {
        let mut c = ok.clone();
        c[k] = v;
        sign(&keys, Algorithm::EdDSA, &c)
    };
    expect_401(
        get_as(s.addr, RECORDS, &with("iss", json!("https://evil.example"))).await,
        "issuer",
    );
    expect_401(
        get_as(s.addr, RECORDS, &with("aud", json!("someone-else"))).await,
        "audience",
    );
    expect_401(
        get_as(s.addr, RECORDS, &with("exp", json!(now() - 10))).await,
        "expired",
    );
    expect_401(
        get_as(s.addr, RECORDS, &with("exp", json!("never"))).await,
        "exp as string",
    );
    expect_401(
        get_as(s.addr, RECORDS, &with("nbf", json!(now() + 600))).await,
        "not yet valid",
    );
    expect_401(
        get_as(s.addr, RECORDS, &with("nbf", json!("99999999999"))).await,
        "nbf as string",
    );
    let mut no_exp = ok.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    expect_401(
        get_as(s.addr, RECORDS, &sign(&keys, Algorithm::EdDSA, &no_exp)).await,
        "no exp",
    );
    let mut no_purpose = ok.clone();
    no_purpose.as_object_mut().unwrap().remove("purpose");
    expect_401(
        get_as(s.addr, RECORDS, &sign(&keys, Algorithm::EdDSA, &no_purpose)).await,
        "no purpose",
    );
    expect_401(
        get_as(s.addr, RECORDS, &with("groups", json!(7))).await,
        "groups not a list",
    );
    s.stop().await;
}

#[tokio::test]
async fn no_bundle_or_an_expired_one_fails_closed() {
    let keys = Keys::generate();
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let none = start(
        &keys,
        Options {
            install_bundle: false,
            ..Options::default()
        },
    )
    .await;
    write_upstream(none.dir.path(), "profiles", "2026-03-01.ndjson", DAY1);
    let r = get_as(none.addr, RECORDS, &t).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "no_valid_bundle");
    let ready = get(none.addr, "/readyz", &[]).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["ready"], false);
    assert!(
        ready.json()["reason"]
            .as_str()
            .unwrap()
            .contains("no valid policy bundle")
    );
    assert_eq!(get(none.addr, "/healthz", &[]).await.status, 200);
    none.stop().await;

    // An expired bundle is refused at load (by the verifier) ...
    let stale = start(
        &keys,
        Options {
            expires_in: -5,
            ..Options::default()
        },
    )
    .await;
    assert_eq!(get_as(stale.addr, RECORDS, &t).await.status, 503);
    stale.stop().await;
    // ... and one that expires while loaded stops being served at once,
    // judged by the clock at request time.
    let expiring = start(
        &keys,
        Options {
            expires_in: 2,
            ..Options::default()
        },
    )
    .await;
    write_upstream(expiring.dir.path(), "profiles", "2026-03-01.ndjson", DAY1);
    assert_eq!(get_as(expiring.addr, RECORDS, &t).await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = get_as(expiring.addr, RECORDS, &t).await;
    assert_eq!(r.status, 503);
    assert!(r.json()["reason"].as_str().unwrap().contains("expired"));
    let ready = get(expiring.addr, "/readyz", &[]).await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.json()["reason"]
            .as_str()
            .unwrap()
            .contains("revision 7 expired")
    );
    expiring.stop().await;

    let fine = profiles(&keys).await;
    let ready = get(fine.addr, "/readyz", &[]).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["revision"], 7);
    fine.stop().await;
}

#[tokio::test]
async fn unreachable_upstreams_get_502() {
    let keys = Keys::generate();
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    // The port's directory does not exist.
    let s = start(&keys, Options::default()).await;
    let r = get_as(s.addr, RECORDS, &t).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_failed");
    assert!(
        !r.text().contains(s.dir.path().to_str().unwrap()),
        "paths leaked"
    );
    s.stop().await;
    // An HTTP upstream that refuses connections.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let s = start(
        &keys,
        Options {
            upstream: Some(format!(
                "kind = \"http\"\nurl = \"http://127.0.0.1:{port}\""
            )),
            ..Options::default()
        },
    )
    .await;
    let r = get_as(s.addr, RECORDS, &t).await;
    assert_eq!(r.status, 502);
    s.stop().await;
}

#[tokio::test]
async fn http_upstream_streams_ndjson() {
    let keys = Keys::generate();
    // A one-shot upstream that serves DAY1 and records the request line.
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    let served = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut c, _) = up.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = c.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap()
            .to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{DAY1}",
            DAY1.len()
        );
        c.write_all(resp.as_bytes()).await.unwrap();
        head
    });
    let s = start(
        &keys,
        Options {
            upstream: Some(format!("kind = \"http\"\nurl = \"http://{up_addr}/ports\"")),
            ..Options::default()
        },
    )
    .await;
    let r = get_as(
        s.addr,
        &format!("{RECORDS}?from=2026-03-01"),
        &token(&keys, "fred", &["fraud"], "fraud-investigation"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.lines().len(), 2);
    assert!(r.lines()[0].get("ssn").is_none());
    let head = served.await.unwrap();
    assert_eq!(
        head,
        "GET /ports/profiles?from=2026-03-01T00:00:00Z HTTP/1.1"
    );
    s.stop().await;
}

#[tokio::test]
async fn discovery_describes_the_product_and_how_to_authenticate() {
    let keys = Keys::generate();
    let s = profiles(&keys).await;
    let r = get(s.addr, "/", &[]).await;
    assert_eq!(r.status, 200);
    let d = r.json();
    assert_eq!(d["product"]["id"], "users/user-profiles");
    assert_eq!(d["ports"][0]["name"], "profiles");
    assert_eq!(d["ports"][0]["records"], "/v1/ports/profiles/records");
    assert_eq!(
        d["ports"][0]["formats"],
        serde_json::json!([
            "application/x-ndjson",
            "text/csv",
            "application/vnd.apache.arrow.stream",
            "application/vnd.apache.parquet"
        ])
    );
    assert_eq!(
        d["schema"][0]["properties"][1]["classification"],
        "pii.email"
    );
    assert_eq!(d["slos"][0]["property"], "latency");
    assert_eq!(d["bundle"]["revision"], 7);
    let issuer = &d["authentication"]["issuers"][0];
    assert_eq!(issuer["issuer"], ISSUER);
    assert_eq!(issuer["algorithms"], json!(["EdDSA", "ES256", "RS256"]));
    assert_eq!(issuer["claims"]["groups"], json!(["groups"]));
    assert_eq!(issuer["claims"]["purpose"], "purpose");
    s.stop().await;
}

#[tokio::test]
async fn a_bundle_swap_is_honoured_by_the_next_request_and_shutdown_refuses() {
    let keys = Keys::generate();
    let s = profiles(&keys).await;
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    // Swap in a signed revision 8 and see it honoured by the next request.
    let eight = signed_bundle(&s.gov, &s.app.descriptor, 8, 600);
    assert_eq!(s.app.load_bundle(&eight, now()).unwrap(), 8);
    let r = get_as(s.addr, RECORDS, &t).await;
    assert_eq!(r.header("x-meshgov-bundle-revision"), Some("8"));
    // Draining a stream in flight is tested with a real process and a
    // slow upstream in `operations.rs`; here, a stopped server refuses.
    let addr = s.addr;
    s.stop().await;
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn bad_bundles_never_replace_the_good_one() {
    let keys = Keys::generate();
    let s = profiles(&keys).await;
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let good = signed_bundle(&s.gov, &s.app.descriptor, 9, 600);
    // Tampered payload: one byte of the base64 payload changed.
    let mut env: serde_json::Value = serde_json::from_slice(&good).unwrap();
    let p = env["payload"].as_str().unwrap().to_string();
    let flipped = format!("{}{}", if p.starts_with('A') { "B" } else { "A" }, &p[1..]);
    env["payload"] = json!(flipped);
    let tampered = serde_json::to_vec(&env).unwrap();
    assert!(s.app.load_bundle(&tampered, now()).is_err());
    // Signed by a key nobody trusts.
    let rogue = signed_bundle(&governance_key(), &s.app.descriptor, 10, 600);
    let e = s.app.load_bundle(&rogue, now()).unwrap_err();
    assert!(e.to_string().contains("untrusted_key"), "{e}");
    // Sliced for another product.
    let plays = meshgov_core::descriptor::Descriptor::parse(
        "p",
        &std::fs::read_to_string(repo().join("policies/products/play-events.yaml")).unwrap(),
    )
    .unwrap();
    let other = signed_bundle(&s.gov, &plays, 11, 600);
    assert!(
        s.app
            .load_bundle(&other, now())
            .unwrap_err()
            .to_string()
            .contains("wrong_product")
    );
    assert!(s.app.load_bundle(b"{not json", now()).is_err());
    // Revision 7 is still in force and serving.
    let r = get_as(s.addr, RECORDS, &t).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-meshgov-bundle-revision"), Some("7"));
    s.stop().await;
}
