//! The sidecar against a real OpenID provider (oidc-provider under Node.js,
//! see `tests/oidc/`): keys from OIDC discovery, fetched with retries while
//! the provider is down, a key rotation followed without a restart, a
//! dropped key refused, the last good keys kept through an outage, and
//! Keycloak-shaped claims mapped. Skipped when the provider is not
//! installed, unless `CI` is set.

use crate::common::*;
use meshgov_e2e::OidcProvider;
use std::time::{Duration, Instant};

const RECORDS: &str = "/v1/ports/profiles/records";
const DAY1: &str = concat!(
    r#"{"user_id":"u-1","email":"alice@example.com","name":"Alice","birth_date":"1990-04-12","country":"NL","postcode":"1012AB","signed_up_at":"2026-03-01T10:00:00Z"}"#,
    "\n",
);
/// The audience (a resource indicator) the provider's tokens are for.
const AUDIENCE_URI: &str = "https://meshgov.test/api";

fn issuer_auth(p: &OidcProvider, mapping: &str) -> String {
    format!(
        "[auth]\nleeway_seconds = 0\n[[auth.issuers]]\nissuer = \"{}\"\naudience = \"{AUDIENCE_URI}\"\nalgorithms = [\"RS256\"]\ndiscovery_url = \"{}\"\njwks_min_refresh_seconds = 1\njwks_refetch_cooldown_seconds = 1\n{mapping}\n",
        p.issuer,
        p.discovery_url()
    )
}

/// A sidecar trusting `p` with the claim `mapping`, serving DAY1, ready.
async fn mapped_sidecar(p: &OidcProvider, mapping: &str) -> Sidecar {
    let s = start(
        &Keys::generate(),
        Options {
            auth: Some(issuer_auth(p, mapping)),
            ..Options::default()
        },
    )
    .await;
    write_upstream(s.dir.path(), "profiles", "2026-03-01.ndjson", DAY1);
    wait_ready(&s).await;
    s
}

async fn read(s: &Sidecar, token: &str) -> Resp {
    get(
        s.addr,
        RECORDS,
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await
}

/// Polls `/readyz` until it is ready.
async fn wait_ready(s: &Sidecar) {
    let t0 = Instant::now();
    loop {
        let r = get(s.addr, "/readyz", &[]).await;
        if r.status == 200 {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "not ready: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn metric(s: &Sidecar, series: &str) -> f64 {
    let text = s
        .app
        .metrics
        .render(&s.app.bundle, &s.app.audit, &s.app.auth, now());
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{series}` in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_follow_the_provider_through_rotation_and_outage() {
    let Some(mut idp) = OidcProvider::start_with_cache_control(&["k1"], "max-age=1").unwrap()
    else {
        return;
    };
    let claims =
        serde_json::json!({"sub": "mia", "groups": ["marketing"], "purpose": "campaign-analytics"});
    let t1 = idp.token(AUDIENCE_URI, claims.clone()).unwrap();
    // The provider is down when the sidecar starts: not ready, and its
    // tokens are refused with a reason.
    idp.stop().unwrap();
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            auth: Some(issuer_auth(&idp, "")),
            ..Options::default()
        },
    )
    .await;
    write_upstream(s.dir.path(), "profiles", "2026-03-01.ndjson", DAY1);
    let r = get(s.addr, "/readyz", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.json()["reason"].as_str().unwrap().contains(&idp.issuer),
        "{}",
        r.text()
    );
    let r = read(&s, &t1).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap()
            .contains("not available yet"),
        "{}",
        r.text()
    );

    // The provider comes up: the sidecar's retries fetch its keys.
    idp.restart(&["k1"]).unwrap();
    wait_ready(&s).await;
    let r = read(&s, &t1).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.lines()[0]["name"], serde_json::Value::Null);

    // A reload with the same issuer keeps its fetched keys: its tokens do
    // not wait for the next fetch.
    let same = meshgov_sidecar::config::AuthConfig {
        issuers: vec![meshgov_sidecar::config::IssuerConfig {
            issuer: idp.issuer.clone(),
            audience: AUDIENCE_URI.into(),
            algorithms: vec!["RS256".into()],
            keys: meshgov_sidecar::config::IssuerKeys::Remote(
                meshgov_sidecar::jwks::Endpoint::Discovery(idp.discovery_url()),
            ),
            claims: Default::default(),
            refresh: meshgov_sidecar::jwks::Refresh {
                min: Duration::from_secs(1),
                cooldown: Duration::from_secs(1),
                ..meshgov_sidecar::config::DEFAULT_REFRESH
            },
        }],
        leeway_seconds: 0,
    };
    assert_eq!(s.app.auth.reload(&same).unwrap(), Vec::<String>::new());
    assert!(s.app.auth.has_usable_keys());
    assert_eq!(read(&s, &t1).await.status, 200);
    // As a SIGHUP does, the reloaded issuers get their refresh task (the
    // replaced ones' task ends).
    let (_keep_refreshing, stop) = tokio::sync::watch::channel(false);
    let _tasks = s.app.auth.spawn_key_refresh(&stop);

    // Rotation: k2 signs, k1 is still published. The new kid is fetched
    // on first sight; the sidecar is not restarted.
    idp.restart(&["k2", "k1"]).unwrap();
    let t2 = idp.token(AUDIENCE_URI, claims.clone()).unwrap();
    assert_eq!(read(&s, &t2).await.status, 200);
    assert_eq!(read(&s, &t1).await.status, 200);

    // k1 is dropped: once the sidecar has refetched (max-age 1 s), tokens
    // signed with it stop working, though one was verified before.
    idp.restart(&["k2"]).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = read(&s, &t1).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(read(&s, &t2).await.status, 200);

    // An outage: the last good keys stay.
    idp.stop().unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(read(&s, &t2).await.status, 200);
    assert_eq!(get(s.addr, "/readyz", &[]).await.status, 200);
    let iss = &idp.issuer;
    assert!(
        metric(
            &s,
            &format!("meshgov_sidecar_jwks_fetches_total{{issuer=\"{iss}\",outcome=\"error\"}}")
        ) >= 1.0
    );
    assert!(
        metric(
            &s,
            &format!("meshgov_sidecar_jwks_fetches_total{{issuer=\"{iss}\",outcome=\"ok\"}}")
        ) >= 3.0
    );
    assert_eq!(
        metric(
            &s,
            &format!("meshgov_sidecar_jwks_keys{{issuer=\"{iss}\"}}")
        ),
        1.0
    );
    s.stop().await;
}

/// A token shaped as Keycloak issues them: roles in `realm_access` and
/// `resource_access`, group paths, the purpose as a scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_shaped_claims_are_mapped() {
    let Some(idp) = OidcProvider::start(&["k1"]).unwrap() else {
        return;
    };
    let s = mapped_sidecar(
        &idp,
        "groups_claims = [\"realm_access.roles\", \"resource_access.meshgov.roles\", \"groups\"]\ngroups_strip_prefix = \"/\"\npurpose_scope_prefix = \"purpose:\"",
    )
    .await;
    let token = idp
        .token(
            AUDIENCE_URI,
            serde_json::json!({"sub": "finn", "realm_access": {"roles": ["offline_access"]},
                "resource_access": {"meshgov": {"roles": ["fraud"]}}, "groups": ["/staff"],
                "scope": "openid profile purpose:fraud-investigation"}),
        )
        .unwrap();
    let r = read(&s, &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The fraud investigator sees the email.
    assert_eq!(r.lines()[0]["email"], "alice@example.com");
    // A purpose that is not a scope entry, or a groups claim as a string,
    // is refused with the claim named.
    for (claims, names) in [
        (
            serde_json::json!({"sub": "finn", "groups": ["/fraud"], "scope": "openid"}),
            "scope",
        ),
        (
            serde_json::json!({"sub": "finn", "groups": "fraud auditors", "scope": "purpose:fraud-investigation"}),
            "groups",
        ),
    ] {
        let r = read(&s, &idp.token(AUDIENCE_URI, claims).unwrap()).await;
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(
            r.json()["reason"].as_str().unwrap().contains(names),
            "{}",
            r.text()
        );
    }
    s.stop().await;
}

/// A token shaped as Entra ID issues them: app roles in `roles`, and here
/// the purpose in an extension object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_shaped_claims_are_mapped() {
    let Some(idp) = OidcProvider::start(&["k1"]).unwrap() else {
        return;
    };
    let s = mapped_sidecar(
        &idp,
        "groups_claims = [\"roles\"]\npurpose_claim = \"extension_meshgov.purpose\"",
    )
    .await;
    let token = idp
        .token(
            AUDIENCE_URI,
            serde_json::json!({"sub": "4f1c-oid", "oid": "4f1c-oid", "tid": "tenant",
                "roles": ["marketing"], "groups": ["fraud"],
                "extension_meshgov": {"purpose": "campaign-analytics"}}),
        )
        .unwrap();
    let r = read(&s, &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Marketing, not the `groups` claim's fraud: the email is masked.
    let email = r.lines()[0]["email"].as_str().unwrap().to_string();
    assert!(email.contains('*'), "{email}");
    s.stop().await;
}
