//! `meshgov conformance run` against a real sidecar on loopback: a sound
//! one passes every check, and one behind a proxy that swaps in a
//! privileged token fails the checks that catch it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

async fn meshgov(args: Vec<String>, cwd: &Path) -> Output {
    let cwd = cwd.to_path_buf();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_meshgov"))
            .args(&args)
            .current_dir(cwd)
            .env_remove("MESHGOV_CONTROL_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Mesh {
    /// Serving until the test ends.
    _sidecar: meshgov_sidecar::launch::Running,
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    data: SocketAddr,
    control: SocketAddr,
}

/// The example mesh's play-events sidecar, with its data port and control
/// port on loopback, serving a bundle signed by a fresh guild key.
async fn play_events_sidecar() -> Mesh {
    play_events_sidecar_kept(false).await
}

/// The plays as one Parquet file, typed as declared, with the same
/// undeclared column.
fn write_plays_parquet(path: &Path, ndjson: &str) {
    use meshgov_columnar::datafusion::arrow::array::{
        ArrayRef, Int64Array, RecordBatch, StringArray,
    };
    use meshgov_columnar::datafusion::parquet::arrow::ArrowWriter;
    use std::sync::Arc;
    let rows: Vec<serde_json::Value> = ndjson
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let text = |k: &str| -> (String, ArrayRef) {
        (
            k.to_string(),
            Arc::new(
                rows.iter()
                    .map(|r| r[k].as_str().map(str::to_string))
                    .collect::<StringArray>(),
            ),
        )
    };
    let mut columns: Vec<(String, ArrayRef)> =
        ["event_id", "user_id", "song_id", "artist_id", "played_at"]
            .iter()
            .map(|k| text(k))
            .collect();
    columns.push((
        "duration_ms".into(),
        Arc::new(
            rows.iter()
                .map(|r| r["duration_ms"].as_i64())
                .collect::<Int64Array>(),
        ),
    ));
    columns.extend(
        ["country", "device", "internal_note"]
            .iter()
            .map(|k| text(k)),
    );
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// As [`play_events_sidecar`], with the plays kept as Parquet when
/// `parquet`.
async fn play_events_sidecar_kept(parquet: bool) -> Mesh {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    let run = |args: &[&str]| meshgov(args.iter().map(|s| s.to_string()).collect(), &d);
    assert!(run(&["init", "pol"]).await.status.success());
    assert!(
        run(&["keygen", "--out", "keys/guild"])
            .await
            .status
            .success()
    );
    assert!(run(&["keygen", "--out", "keys/idp"]).await.status.success());
    let o = run(&[
        "build",
        "pol",
        "--key",
        "keys/guild",
        "--product",
        "playback/play-events",
        "--revision",
        "7",
        "--out",
        "bundle.json",
    ])
    .await;
    assert!(o.status.success(), "{}", text(&o));

    std::fs::create_dir_all(d.join("data/plays")).unwrap();
    let mut lines = String::new();
    for i in 0..30 {
        lines.push_str(&format!(
            "{{\"event_id\":\"e{i}\",\"user_id\":\"u-{}\",\"song_id\":\"s{}\",\"artist_id\":\"urn:mesh:artist:a{}\",\"played_at\":\"2026-11-0{}T10:00:00Z\",\"duration_ms\":{},\"country\":\"SE\",\"device\":\"Pixel {i}\",\"internal_note\":\"not declared\"}}\n",
            i % 7,
            i % 5,
            i % 3,
            1 + i % 9,
            5_000 + i * 3_000
        ));
    }
    if parquet {
        write_plays_parquet(&d.join("data/plays/plays.parquet"), &lines);
    } else {
        std::fs::write(d.join("data/plays/plays.ndjson"), lines).unwrap();
    }
    std::fs::write(d.join("uid.key"), "k".repeat(40)).unwrap();
    let guild = meshgov_bundle::read_signing_key_file(&d.join("keys/guild")).unwrap();
    let idp = meshgov_bundle::read_signing_key_file(&d.join("keys/idp")).unwrap();
    let cfg = format!(
        r#"
mesh = "media-mesh"
descriptor = "pol/products/play-events.yaml"
state_dir = "state"
bundle_file = "bundle.json"
trusted_bundle_keys = ["{}"]
[listen]
data = "127.0.0.1:0"
control = "127.0.0.1:0"
[upstream]
path = "data"
{}
[pseudonym_keys]
user-identity = "uid.key"
"#,
        guild.public_key(),
        meshgov_sidecar::config::eddsa_auth_toml(
            "https://idp.media.example",
            "meshgov",
            idp.public_key().as_bytes()
        ),
    );
    let sidecar = meshgov_sidecar::launch::boot(&cfg, &d).await.unwrap();
    assert_eq!(
        sidecar.app().bundle.current().map(|b| b.meta.revision),
        Some(7),
        "the bundle file is in force"
    );
    Mesh {
        data: sidecar.data_addr,
        control: sidecar.control_addr.unwrap(),
        _sidecar: sidecar,
        _tmp: tmp,
        dir: d,
    }
}

fn run_args(m: &Mesh, data: SocketAddr, format: &str) -> Vec<String> {
    [
        "conformance",
        "run",
        "--sidecar",
        &format!("http://{data}"),
        "--control",
        &format!("http://{}", m.control),
        "--product",
        "pol/products/play-events.yaml",
        "--issuer-key",
        "keys/idp",
        "--governance-key",
        "keys/guild",
        "--format",
        format,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sound_sidecar_passes_every_live_check() {
    let m = play_events_sidecar().await;
    let o = meshgov(run_args(&m, m.data, "json"), &m.dir).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["findings"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["not_run"], serde_json::json!({}), "{v:#}");

    // JUnit: one testcase per rule, none failed or skipped, names stable.
    let o = meshgov(run_args(&m, m.data, "junit"), &m.dir).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let xml = String::from_utf8(o.stdout).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let cases: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .map(|n| n.attribute("name").unwrap().to_string())
        .collect();
    assert_eq!(cases.len(), 11, "{xml}");
    assert_eq!(cases[0], format!("LIVE-001 http://{}", m.data));
    assert!(
        !xml.contains("<failure") && !xml.contains("<skipped"),
        "{xml}"
    );

    // Without the governance key, the checks that need it say so.
    let mut args = run_args(&m, m.data, "text");
    let at = args.iter().position(|a| a == "--governance-key").unwrap();
    args.drain(at..at + 2);
    let token = meshgov(
        ["control-token", "--key", "keys/guild"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        &m.dir,
    )
    .await;
    let pubkey = m.dir.join("keys/guild.pub").display().to_string();
    args.extend([
        "--control-token".into(),
        String::from_utf8(token.stdout).unwrap().trim().to_string(),
        "--trust".into(),
        pubkey,
        "--skip-budget".into(),
    ]);
    let o = meshgov(args, &m.dir).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("LIVE-005: not run: --skip-budget was given"),
        "{out}"
    );
    assert!(
        out.contains("LIVE-008: not run: signing it needs the governance key"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_port_passes_every_live_check() {
    let m = play_events_sidecar_kept(true).await;
    let o = meshgov(run_args(&m, m.data, "json"), &m.dir).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["findings"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["not_run"], serde_json::json!({}), "{v:#}");
}

/// A proxy in front of the data port that replaces every caller's token
/// with a data scientist's: everyone reads, and the device is revealed.
async fn token_swapping_proxy(upstream: SocketAddr, token: String) -> SocketAddr {
    use hyper::service::service_fn;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let (client, token) = (client.clone(), token.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (client, token) = (client.clone(), token.clone());
                    async move {
                        let (mut parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        parts.uri =
                            format!("http://{upstream}{}", parts.uri.path_and_query().unwrap())
                                .parse()
                                .unwrap();
                        parts.headers.insert(
                            http::header::AUTHORIZATION,
                            format!("Bearer {token}").parse().unwrap(),
                        );
                        let resp = client
                            .request(hyper::Request::from_parts(parts, Full::new(body)))
                            .await
                            .unwrap();
                        let (parts, body) = resp.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        Ok::<_, std::convert::Infallible>(hyper::Response::from_parts(
                            parts,
                            Full::new(body),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaky_front_fails_with_located_findings() {
    let m = play_events_sidecar().await;
    let o = meshgov(
        [
            "token",
            "--key",
            "keys/idp",
            "--sub",
            "dana",
            "--groups",
            "data-science",
            "--purpose",
            "product-analytics",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        &m.dir,
    )
    .await;
    let token = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let proxy = token_swapping_proxy(m.data, token).await;
    let mut args = run_args(&m, proxy, "json");
    args.push("--skip-budget".into());
    let o = meshgov(args, &m.dir).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let findings = v["findings"].as_array().unwrap();
    let rules: std::collections::BTreeSet<&str> = findings
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    for r in ["LIVE-001", "LIVE-002", "LIVE-003"] {
        assert!(rules.contains(r), "{r} missing: {v:#}");
    }
    // The revealed device is reported at its declaration in the descriptor.
    let descriptor = std::fs::read_to_string(m.dir.join("pol/products/play-events.yaml")).unwrap();
    let device_line = descriptor
        .lines()
        .position(|l| l.contains("name: device"))
        .unwrap()
        + 1;
    assert!(
        findings.iter().any(|f| f["rule"] == "LIVE-003"
            && f["line"] == device_line
            && f["message"].as_str().unwrap().contains("`device`")),
        "{v:#}"
    );
    // The bundle and audit checks go to the control port directly: they pass.
    for r in ["LIVE-006", "LIVE-007", "LIVE-008", "LIVE-009", "LIVE-011"] {
        assert!(!rules.contains(r), "{r}: {v:#}");
    }
}
