//! Writes seed inputs for every fuzz target into `<corpus>/<target>/`, from
//! real fixtures: the example mesh (`policies/`), the bundle golden files,
//! bundles and tokens signed with the TEST-ONLY key, a real audit log, and
//! ABI responses built with the host's encoder. Deterministic: the same
//! sources give the same files (named by content hash).
//!
//! Usage: `meshgov-fuzz-seeds CORPUS_DIR`

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use meshgov_audit::event::{Decision, Event, Kind};
use meshgov_audit::{AuditLog, Durability, Options, Retention};
use meshgov_bundle::{BundleMeta, BundlePayload, SigningKey, sign};
use meshgov_fuzz::{AUDIENCE, CREATED, ISSUER, NOW, TEST_KEY_PEM, example, repo, test_key};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn main() {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: meshgov-fuzz-seeds CORPUS_DIR");
        std::process::exit(2);
    };
    let mut seeds = Seeds { out, count: 0 };
    bundles(&mut seeds);
    policies(&mut seeds);
    descriptors(&mut seeds);
    tokens(&mut seeds);
    queries(&mut seeds);
    aggregates(&mut seeds);
    records(&mut seeds);
    audit(&mut seeds);
    plugin_outputs(&mut seeds);
    println!(
        "wrote {} seed files under {}",
        seeds.count,
        seeds.out.display()
    );
}

struct Seeds {
    out: PathBuf,
    count: usize,
}

impl Seeds {
    /// Writes `mode` followed by `body`, or just `body` when `mode` is None.
    fn put(&mut self, target: &str, mode: Option<u8>, body: &[u8]) {
        let mut bytes = Vec::with_capacity(body.len() + 1);
        bytes.extend(mode);
        bytes.extend_from_slice(body);
        let dir = self.out.join(target);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let name = hex(&Sha256::digest(&bytes)[..20]);
        std::fs::write(dir.join(name), &bytes).unwrap_or_else(|e| panic!("{e}"));
        self.count += 1;
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn bundles(s: &mut Seeds) {
    let golden = repo().join("engine/bundle/tests/golden");
    s.put(
        "bundle_verify",
        Some(0),
        &read(&golden.join("envelope.json")),
    );
    s.put(
        "bundle_verify",
        Some(1),
        &read(&golden.join("payload.json")),
    );
    let ex = example();
    let sliced = ex
        .policies
        .slice(&ex.product)
        .unwrap_or_else(|e| panic!("slice: {e}"));
    for (policies, product) in [(&ex.policies, None), (&sliced, Some(ex.product.id.clone()))] {
        let payload = BundlePayload::new(
            BundleMeta {
                mesh: policies.mesh.id.clone(),
                revision: 7,
                created_at_unix: CREATED,
                expires_at_unix: CREATED + 86_400,
                source_commit: Some("0123456789abcdef".into()),
                product,
            },
            policies.components(),
        )
        .unwrap_or_else(|e| panic!("payload: {e}"))
        .to_canonical_bytes();
        let envelope = sign(&payload, &[test_key()]).unwrap_or_else(|e| panic!("sign: {e}"));
        s.put("bundle_verify", Some(0), &envelope.to_json_bytes());
        s.put("bundle_verify", Some(1), &payload);
    }
}

fn policies(s: &mut Seeds) {
    let src = &example().sources;
    let mut put = |mode: u8, text: &str| s.put("policy_sources", Some(mode), text.as_bytes());
    if let Some(f) = &src.mesh {
        put(0, &f.text);
    }
    if let Some(f) = &src.schema {
        put(1, &f.text);
    }
    for f in &src.access {
        put(2, &f.text);
    }
    let groups: [(u8, &Vec<_>); 5] = [
        (4, &src.anonymization),
        (5, &src.privacy),
        (6, &src.standards),
        (8, &src.tests),
        (9, &src.products),
    ];
    for (mode, files) in groups {
        for f in files {
            put(mode, &f.text);
        }
    }
    put(
        7,
        "[[plugins]]\nname = \"phone-mask\"\nkind = \"transform\"\nmodule = \"phone_mask.wasm\"\n\
         sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\nfuel = 100000\n",
    );
}

fn descriptors(s: &mut Seeds) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("policies/products"))
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files.push(repo().join("conformance/tests/fixtures/odcs-full.yaml"));
    for f in files {
        let text = read(&f);
        s.put("descriptor", Some(0), &text);
        s.put("descriptor", Some(1), &text);
    }
}

fn tokens(s: &mut Seeds) {
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
        "groups": ["marketing", "fraud"], "purpose": "campaign-analytics",
        "iat": NOW, "nbf": NOW - 5, "exp": NOW + 600,
    });
    let text = claims.to_string();
    for mode in 1..=3 {
        s.put("jwt_auth", Some(mode), text.as_bytes());
    }
    let odd = serde_json::json!({
        "iss": ISSUER, "aud": [AUDIENCE, "other"], "sub": "svc",
        "groups": "a b c", "purpose": "p", "exp": (NOW + 60) as f64 + 0.5,
    });
    s.put("jwt_auth", Some(1), odd.to_string().as_bytes());
    let ed = EncodingKey::from_ed_pem(TEST_KEY_PEM.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let rsa_pem = read(&repo().join("sidecar/tests/fixtures/rs256-test.key.pem"));
    let rsa = EncodingKey::from_rsa_pem(&rsa_pem).unwrap_or_else(|e| panic!("{e}"));
    let mut rs_header = Header::new(Algorithm::RS256);
    rs_header.kid = Some("rsa".into());
    for (header, key) in [(Header::new(Algorithm::EdDSA), &ed), (rs_header, &rsa)] {
        let t = jsonwebtoken::encode(&header, &claims, key).unwrap_or_else(|e| panic!("{e}"));
        s.put("jwt_auth", Some(0), format!("Bearer {t}").as_bytes());
    }
    s.put("jwt_auth", Some(0), b"Bearer a.b.c");
}

fn queries(s: &mut Seeds) {
    for q in [
        "/v1/ports/profiles/records?from=2026-03-01&to=2026-03-02T00:00:00Z&limit=10\ntext/csv",
        "/v1/ports/plays/aggregate\napplication/json",
        "/v1/ports/../etc/records?limit=1%0d%0aX-Injected:%201\ntext/csv;q=0.9, */*",
        "/v1/ports/p%2Fq/records?from=2026-03-01T00:00:00%2B01:00&to=2026-03-01",
        "/readyz?limit=5&limit=6",
    ] {
        s.put("request_query", None, q.as_bytes());
    }
}

fn aggregates(s: &mut Seeds) {
    for b in [
        r#"{"aggregations":[{"count":{}}],"group_by":["country"],"epsilon":0.5}"#,
        r#"{"aggregations":[{"sum":{"field":"duration_ms"}},{"mean":{"field":"duration_ms"}}],"epsilon":1.0,"from":"2025-12-01T00:00:00Z","to":"2026-01-01T00:00:00Z"}"#,
        r#"{"aggregations":[{"count":{}}],"group_by":["device"],"epsilon":0.25,"delta":1e-7}"#,
        r#"{"aggregations":[{"mean":{"field":"user_id"}}],"epsilon":-1}"#,
    ] {
        s.put("aggregate_body", None, b.as_bytes());
    }
}

fn records(s: &mut Seeds) {
    let ndjson = concat!(
        r#"{"id":"r1","email":"alice@example.com","user":"u-1","birth":"1990-04-12","ts":"2026-03-01T10:00:00Z","age":37,"zip":"SW1A 1AA","ssn":"123-45-6789","secret":"x","country":"DE"}"#,
        "\n",
        r#"{"id":2,"email":null,"user":42,"birth":"not a date","age":"17","zip":28013,"country":"SE","extra":{"nested":[1,2,{"a":"\u00e9"}]}}"#,
        "\n",
        r#"{"id":"r3","age":18.5,"country":"DE","ssn":"987"} trailing"#,
        "\n",
        r#"["not","an","object"]"#,
    );
    s.put("record_apply", Some(0), ndjson.as_bytes());
    s.put("record_apply", Some(2), ndjson.as_bytes());
    let csv = "id,email,user,birth,ts,age,zip,ssn,secret,country,active,score\n\
               r1,alice@example.com,u-1,1990-04-12,2026-03-01T10:00:00Z,37,SW1A 1AA,123-45-6789,x,DE,true,1.5\n\
               \"r,2\",\"a \"\"quoted\"\" one\",,1990,,-5, 1 ,,,SE,maybe,1e3\n\
               =1+1,@cmd,+x,-y,,99999999999999999999,,,,DE,false,\n";
    s.put("record_apply", Some(1), csv.as_bytes());
    s.put("record_apply", Some(3), csv.as_bytes());
}

fn audit(s: &mut Seeds) {
    let dir = std::env::temp_dir().join(format!("meshgov-fuzz-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut opts = Options::new(&dir);
    opts.checkpoint_every = 3;
    opts.checkpoint_interval = Duration::from_secs(3600);
    opts.durability = Durability::Fsync;
    opts.retention = Retention::KeepAll;
    let key = SigningKey::from_pkcs8_pem(TEST_KEY_PEM).unwrap_or_else(|e| panic!("{e}"));
    let log = AuditLog::open(opts, key).unwrap_or_else(|e| panic!("audit open: {e}"));
    for i in 0..7u16 {
        let mut e = Event::new(
            if i == 6 {
                Kind::Completion
            } else {
                Kind::Decision
            },
            CREATED * 1000 + i64::from(i),
        );
        e.request_id = Some(format!("r-{i}"));
        e.consumer = Some("alice".into());
        e.groups = vec!["marketing".into(), "fraud \"q\"".into()];
        e.purpose = Some("campaign-analytics".into());
        e.action = Some("read".into());
        e.port = Some("profiles".into());
        e.decision = Some(if i % 3 == 0 {
            Decision::Deny
        } else {
            Decision::Allow
        });
        e.status = Some(if i % 3 == 0 { 403 } else { 200 });
        e.policies = vec!["users.marketing-read".into()];
        e.transforms = vec![
            ("email".into(), "mask".into()),
            ("user_id".into(), "hmac".into()),
        ];
        e.privacy_cost = (i == 2).then_some(0.25);
        e.budget_remaining = (i == 2).then_some(1.75);
        e.bundle_revision = Some(7);
        e.bundle_digest = Some(format!("sha256:{}", "ab".repeat(32)));
        e.records = Some(u64::from(i) * 10);
        e.bytes = Some(u64::from(i) * 1000);
        e.outcome = (i == 6).then(|| "complete".into());
        log.submit(e)
            .wait()
            .unwrap_or_else(|e| panic!("audit submit: {e}"));
    }
    log.close();
    drop(log);
    let segs: Vec<PathBuf> = meshgov_audit::segment::list_segments(&dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|s| s.path)
        .collect();
    let checkpoints =
        std::fs::read(dir.join(meshgov_audit::segment::CHECKPOINTS)).unwrap_or_default();
    for seg in segs {
        let mut body = read(&seg);
        body.push(0xFF);
        body.extend_from_slice(&checkpoints);
        s.put("audit_segment", Some(0), &body);
        s.put("audit_segment", Some(1), &body);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn plugin_outputs(s: &mut Seeds) {
    let values = [
        "\"+44 ******* 123\"",
        "null",
        "true",
        "42.5e3",
        "[1,{\"a\":\"\\u00e9\"}]",
        "\"line\\nbreak\"",
    ];
    let raws: Vec<Box<RawValue>> = values
        .iter()
        .map(|v| RawValue::from_string((*v).to_string()).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let refs: Vec<&RawValue> = raws.iter().map(|r| &**r).collect();
    let mut ok = vec![0u8];
    ok.extend(meshgov_wasm::abi::encode_values(&refs).unwrap_or_else(|e| panic!("{e}")));
    s.put("plugin_output", Some(values.len() as u8), &ok);
    let mut verdicts = vec![0u8];
    verdicts.extend_from_slice(&3u32.to_le_bytes());
    for (verdict, text) in [
        (0u8, ""),
        (1, "artist ids must be urn:mesh:artist: URNs"),
        (0, ""),
    ] {
        verdicts.push(verdict);
        verdicts.extend_from_slice(&(text.len() as u32).to_le_bytes());
        verdicts.extend_from_slice(text.as_bytes());
    }
    s.put("plugin_output", Some(3), &verdicts);
    let mut refused = vec![1u8];
    let reason = "the batch holds a value this plugin cannot mask";
    refused.extend_from_slice(&(reason.len() as u32).to_le_bytes());
    refused.extend_from_slice(reason.as_bytes());
    s.put("plugin_output", Some(2), &refused);
}
