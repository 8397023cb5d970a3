//! An issuer's token verification keys, from its configuration or from its
//! identity provider.
//!
//! Keys from a provider (`discovery_url` or `jwks_url`) follow it:
//!
//! - they are fetched at start, and again on failure with backoff, until a
//!   fetch succeeds;
//! - they are kept for as long as the answer's `Cache-Control: max-age`
//!   allows, within the configured bounds, then fetched again;
//! - a token whose `kid` the key set lacks triggers one fetch, shared by
//!   every request that waits for it (single flight) and at most one per
//!   cooldown, so a flood of made-up kids cannot hammer the provider;
//! - the last good key set stays while the provider is unreachable or
//!   answers something unusable;
//! - a new key set replaces the old one whole: a key the provider dropped
//!   stops verifying.

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A key that verifies tokens of exactly one algorithm.
pub struct TrustedKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // INVARIANT: nothing panics while holding it; the value stays whole.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The largest JWKS or discovery document read.
const MAX_DOCUMENT: usize = 1024 * 1024;
/// Per-request timeout towards the provider.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The usable keys of a JWKS document: signature keys whose algorithm is in
/// `allowed` (named by `alg`, or implied by the key type and curve).
/// Unusable entries (encryption keys, other algorithms, malformed keys) are
/// skipped; the count of skipped ones is returned too.
pub fn parse_jwks(doc: &[u8], allowed: &[Algorithm]) -> Result<(Vec<TrustedKey>, usize), String> {
    let v: serde_json::Value =
        serde_json::from_slice(doc).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    let entries = v
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or("the JWKS has no `keys` array")?;
    let mut keys = Vec::new();
    let mut skipped = 0;
    for entry in entries {
        match usable(entry, allowed) {
            Some(k) => keys.push(k),
            None => skipped += 1,
        }
    }
    Ok((keys, skipped))
}

fn usable(entry: &serde_json::Value, allowed: &[Algorithm]) -> Option<TrustedKey> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).ok()?;
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            Some(Algorithm::ES256)
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Some(Algorithm::EdDSA)
        }
        _ => None,
    }?;
    let alg = match jwk.common.key_algorithm {
        None => implied,
        Some(KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
        Some(_) => return None,
    };
    // The key type must fit the algorithm it claims.
    if alg != implied || !allowed.contains(&alg) {
        return None;
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(TrustedKey {
        kid: jwk.common.key_id,
        alg,
        key,
    })
}

/// Cache bounds and the refetch cooldown of a provider's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refresh {
    /// The shortest time a key set is kept (a smaller `max-age` is raised).
    pub min: Duration,
    /// The longest (also used when the answer sets no `max-age`).
    pub max: Duration,
    /// At most one unknown-`kid` fetch per this long.
    pub cooldown: Duration,
}

/// Where a provider's keys are fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// OIDC discovery: the document names the `jwks_uri`.
    Discovery(String),
    Jwks(String),
}

/// What the sidecar knows of a provider's keys, for `/readyz`, the
/// metrics and refusals.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub keys: usize,
    /// When the key set in use was fetched.
    pub fetched_at: Option<Instant>,
    /// Why the last fetch failed, if it did.
    pub last_error: Option<String>,
}

/// The keys of one provider, kept fresh.
pub struct RemoteKeys {
    endpoint: Endpoint,
    allowed: Vec<Algorithm>,
    refresh: Refresh,
    client: reqwest::Client,
    keys: ArcSwap<Vec<TrustedKey>>,
    health: Mutex<Health>,
    /// Bumped by every fetch that replaced the key set.
    generation: AtomicU64,
    /// Held while fetching: the single flight. Holds when the last fetch
    /// for an unknown `kid` started (the cooldown counts from it).
    flight: tokio::sync::Mutex<Option<Instant>>,
    pub fetches_ok: AtomicU64,
    pub fetches_failed: AtomicU64,
}

impl RemoteKeys {
    pub fn new(
        endpoint: Endpoint,
        allowed: Vec<Algorithm>,
        refresh: Refresh,
    ) -> Result<RemoteKeys, String> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(RemoteKeys {
            endpoint,
            allowed,
            refresh,
            client,
            keys: ArcSwap::from_pointee(Vec::new()),
            health: Mutex::new(Health::default()),
            generation: AtomicU64::new(0),
            flight: tokio::sync::Mutex::new(None),
            fetches_ok: AtomicU64::new(0),
            fetches_failed: AtomicU64::new(0),
        })
    }

    /// The key set in use (empty until a fetch succeeded).
    pub fn keys(&self) -> Arc<Vec<TrustedKey>> {
        self.keys.load_full()
    }

    pub fn health(&self) -> Health {
        lock(&self.health).clone()
    }

    /// Bumped each time the key set is replaced; remembered tokens verified
    /// under an older set are verified again.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps the keys fresh until `shutdown`: fetches now, then when the
    /// key set's time is up, and retries failures with backoff (1 s
    /// doubling, at most the cache's lower bound or 30 s).
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = match self.fetch_now().await {
                Ok(ttl) => {
                    backoff = Duration::from_secs(1);
                    ttl
                }
                Err(()) => {
                    let w = backoff;
                    backoff = (backoff * 2).min(self.refresh.min.max(Duration::from_secs(30)));
                    w
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut shutdown => return,
            }
        }
    }

    /// A token named `kid`, which the key set lacks: fetches once for all
    /// the requests that ask at the same time, unless a fetch started
    /// within the cooldown. True when the key set changed meanwhile.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        let before = self.generation();
        let mut last = self.flight.lock().await;
        if self.generation() != before {
            // Another request's fetch finished while this one waited.
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < self.refresh.cooldown) {
            return false;
        }
        *last = Some(Instant::now());
        let _ = self.fetch(&mut last).await;
        self.generation() != before
    }

    async fn fetch_now(&self) -> Result<Duration, ()> {
        let mut flight = self.flight.lock().await;
        self.fetch(&mut flight).await
    }

    /// One fetch, under the flight lock; the key set's lifetime on success.
    async fn fetch(
        &self,
        _flight: &mut tokio::sync::MutexGuard<'_, Option<Instant>>,
    ) -> Result<Duration, ()> {
        match self.fetch_keys().await {
            Ok((keys, ttl)) => {
                let n = keys.len();
                self.keys.store(Arc::new(keys));
                self.generation.fetch_add(1, Ordering::AcqRel);
                self.fetches_ok.fetch_add(1, Ordering::Relaxed);
                *lock(&self.health) = Health {
                    keys: n,
                    fetched_at: Some(Instant::now()),
                    last_error: None,
                };
                tracing::info!(keys = n, ttl_s = ttl.as_secs(), "fetched the issuer's keys");
                Ok(ttl)
            }
            Err(e) => {
                self.fetches_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("cannot fetch the issuer's keys (the last good ones stay): {e}");
                lock(&self.health).last_error = Some(e);
                Err(())
            }
        }
    }

    async fn fetch_keys(&self) -> Result<(Vec<TrustedKey>, Duration), String> {
        let jwks_url = match &self.endpoint {
            Endpoint::Jwks(u) => u.clone(),
            Endpoint::Discovery(u) => {
                let (doc, _) = self.get(u).await?;
                let v: serde_json::Value = serde_json::from_slice(&doc)
                    .map_err(|e| format!("the discovery document `{u}` is not JSON: {e}"))?;
                v.get("jwks_uri")
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| format!("the discovery document `{u}` names no `jwks_uri`"))?
                    .to_string()
            }
        };
        let (doc, max_age) = self.get(&jwks_url).await?;
        let (keys, skipped) =
            parse_jwks(&doc, &self.allowed).map_err(|e| format!("{jwks_url}: {e}"))?;
        if keys.is_empty() {
            return Err(format!(
                "`{jwks_url}` has no usable signature key ({skipped} skipped: other algorithms, encryption keys or malformed)"
            ));
        }
        let ttl = max_age
            .unwrap_or(self.refresh.max)
            .clamp(self.refresh.min, self.refresh.max);
        Ok((keys, ttl))
    }

    /// The body of `url` (a 200 within [`MAX_DOCUMENT`] bytes) and its
    /// `Cache-Control: max-age`.
    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), String> {
        let mut r = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("cannot reach `{url}`: {e}"))?;
        if r.status() != reqwest::StatusCode::OK {
            return Err(format!("`{url}` answered {}", r.status()));
        }
        let max_age = r
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let mut body = Vec::new();
        while let Some(chunk) = r
            .chunk()
            .await
            .map_err(|e| format!("cannot read `{url}`: {e}"))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(format!("`{url}` is larger than {MAX_DOCUMENT} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }
}

/// `max-age` of a `Cache-Control` value (`no-store`/`no-cache` count as 0).
fn max_age(v: &str) -> Option<Duration> {
    v.split(',').map(str::trim).find_map(|d| {
        let d = d.to_ascii_lowercase();
        if d == "no-store" || d == "no-cache" {
            return Some(Duration::ZERO);
        }
        d.strip_prefix("max-age=")
            .and_then(|s| s.trim_matches('"').parse::<u64>().ok())
            .map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    const ALL: [Algorithm; 3] = [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256];

    #[test]
    fn only_usable_signature_keys_of_allowed_algorithms_are_kept() {
        let doc = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "lies", "alg": "RS256", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "rsa", "alg": "RS512", "n": "AQAB", "e": "AQAB"},
            {"kty": "unknown"},
            "not even an object"
        ]});
        let (keys, skipped) = parse_jwks(doc.to_string().as_bytes(), &ALL).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ed"));
        assert_eq!(keys[0].alg, Algorithm::EdDSA);
        assert_eq!(skipped, 6);
        let (keys, _) = parse_jwks(doc.to_string().as_bytes(), &[Algorithm::RS256]).unwrap();
        assert!(keys.is_empty());
        assert!(parse_jwks(b"{}", &ALL).is_err());
        assert!(parse_jwks(b"[", &ALL).is_err());
    }

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("Max-Age=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(max_age("private"), None);
        assert_eq!(max_age("max-age=-1"), None);
    }

    /// A loopback JWKS server: answers every GET with the current status,
    /// body and `Cache-Control`, and counts the requests.
    struct Served {
        answer: Arc<Mutex<(u16, String, &'static str)>>,
        hits: Arc<AtomicU64>,
        url: String,
    }

    async fn serve() -> Served {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let answer = Arc::new(Mutex::new((200, String::new(), "max-age=120")));
        let hits = Arc::new(AtomicU64::new(0));
        let (a, h) = (Arc::clone(&answer), Arc::clone(&hits));
        tokio::spawn(async move {
            loop {
                let Ok((mut c, _)) = listener.accept().await else {
                    return;
                };
                let (a, h) = (Arc::clone(&a), Arc::clone(&h));
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut b = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match c.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    // Slow enough that concurrent askers overlap.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let (status, body, cc) = a.lock().unwrap().clone();
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nCache-Control: {cc}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = c.write_all(resp.as_bytes()).await;
                });
            }
        });
        Served { answer, hits, url }
    }

    fn jwks(kids: &[&str]) -> String {
        let keys: Vec<serde_json::Value> = kids
            .iter()
            .map(|k| serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": k, "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}))
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    fn kids(r: &RemoteKeys) -> Vec<String> {
        r.keys().iter().filter_map(|k| k.kid.clone()).collect()
    }

    #[tokio::test]
    async fn provider_keys_are_fetched_once_per_flight_and_kept_when_the_provider_fails() {
        let s = serve().await;
        s.answer.lock().unwrap().1 = jwks(&["k1"]);
        let refresh = Refresh {
            min: Duration::from_secs(60),
            max: Duration::from_secs(600),
            cooldown: Duration::from_millis(500),
        };
        let r = Arc::new(
            RemoteKeys::new(Endpoint::Jwks(s.url.clone()), ALL.to_vec(), refresh).unwrap(),
        );
        assert!(kids(&r).is_empty());
        // The answer's max-age, within the bounds.
        assert_eq!(r.fetch_now().await, Ok(Duration::from_secs(120)));
        assert_eq!(kids(&r), ["k1"]);
        assert_eq!(s.hits.load(Ordering::SeqCst), 1);
        // A periodic fetch does not start the cooldown: the first unknown
        // kid fetches at once, and the new set replaces the old one.
        s.answer.lock().unwrap().1 = jwks(&["k2"]);
        assert!(r.refetch_for_unknown_kid().await);
        assert_eq!(s.hits.load(Ordering::SeqCst), 2);
        assert_eq!(kids(&r), ["k2"]);
        // Inside the cooldown nothing more is fetched.
        s.answer.lock().unwrap().1 = jwks(&["k3"]);
        assert!(!r.refetch_for_unknown_kid().await);
        assert_eq!(s.hits.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(600)).await;
        // Twenty requests with an unknown kid at once: one fetch.
        let asks: Vec<_> = (0..20)
            .map(|_| {
                let r = Arc::clone(&r);
                tokio::spawn(async move { r.refetch_for_unknown_kid().await })
            })
            .collect();
        for a in asks {
            assert!(a.await.unwrap());
        }
        assert_eq!(s.hits.load(Ordering::SeqCst), 3);
        assert_eq!(kids(&r), ["k3"]);
        // The provider fails: the last good set stays, and why is known.
        tokio::time::sleep(Duration::from_millis(600)).await;
        *s.answer.lock().unwrap() = (503, "down".into(), "no-store");
        assert!(!r.refetch_for_unknown_kid().await);
        assert_eq!(kids(&r), ["k3"]);
        let h = r.health();
        assert!(h.last_error.unwrap().contains("503"));
        assert_eq!(r.fetches_failed.load(Ordering::SeqCst), 1);
        // An answer with no usable key is a failure too, not an empty set;
        // a short max-age is raised to the lower bound.
        tokio::time::sleep(Duration::from_millis(600)).await;
        *s.answer.lock().unwrap() = (200, jwks(&[]), "max-age=5");
        assert_eq!(r.fetch_now().await, Err(()));
        assert_eq!(kids(&r), ["k3"]);
        *s.answer.lock().unwrap() = (200, jwks(&["k4"]), "max-age=5");
        assert_eq!(r.fetch_now().await, Ok(Duration::from_secs(60)));
        assert_eq!(kids(&r), ["k4"]);
    }
}
