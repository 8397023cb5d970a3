//! `meshgov conformance run` against a real sidecar on loopback, with its
//! PostgreSQL port: a sound one passes every check, and one behind a proxy
//! that swaps in a privileged token (over HTTP, or as the SQL password)
//! fails the checks that catch it.

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
    /// The PostgreSQL port, when the sidecar has one.
    sql: Option<SocketAddr>,
}

/// The example mesh's play-events sidecar, with its data port and control
/// port on loopback, serving a bundle signed by a fresh guild key.
async fn play_events_sidecar() -> Mesh {
    play_events_sidecar_kept(false, Some(PLAINTEXT)).await
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

/// The `[sql]` table of a PostgreSQL port without TLS (on loopback only).
const PLAINTEXT: &str = "allow_plaintext = true";

/// As [`play_events_sidecar`], with the plays kept as Parquet when
/// `parquet`, and a PostgreSQL port with this `[sql]` table when `sql`.
async fn play_events_sidecar_kept(parquet: bool, sql: Option<&str>) -> Mesh {
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
    let (sql_listen, sql_table) = match sql {
        Some(body) => ("sql = \"127.0.0.1:0\"", format!("[sql]\n{body}")),
        None => ("", String::new()),
    };
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
{sql_listen}
[upstream]
path = "data"
{}
[pseudonym_keys]
user-identity = "uid.key"
{sql_table}
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
    assert_eq!(sidecar.sql_addr.is_some(), sql.is_some());
    Mesh {
        data: sidecar.data_addr,
        control: sidecar.control_addr.unwrap(),
        sql: sidecar.sql_addr,
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
    assert!(m.sql.is_some());
    let o = meshgov(run_args(&m, m.data, "json"), &m.dir).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["findings"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["not_run"], serde_json::json!({}), "{v:#}");

    // The SQL checks ran, and each left its mark in the audit stream.
    assert!(
        v["summary"]
            .as_str()
            .unwrap()
            .contains("the PostgreSQL port at 127.0.0.1:"),
        "{v:#}"
    );
    let events = sql_decisions(&m);
    let count = |action: &str, allowed: bool| {
        events
            .iter()
            .filter(|e| {
                e.action.as_deref() == Some(action)
                    && (e.decision == Some(meshgov_audit::event::Decision::Allow)) == allowed
            })
            .count()
    };
    // Six bad tokens refused at connect (a wrong user name is not audited).
    assert!(count("connect", false) >= 6, "{events:#?}");
    assert!(count("query", true) > 0, "{events:#?}");
    assert!(count("query", false) > 0, "{events:#?}");
    // The throwaway consumer's budget over SQL: 2.0 for campaign
    // analytics at 1.0 a query, then refused (53400) twice.
    let spent: Vec<_> = events
        .iter()
        .filter(|e| e.action.as_deref() == Some("aggregate"))
        .filter(|e| {
            e.consumer
                .as_deref()
                .is_some_and(|c| c.starts_with("meshgov-conformance-sql-budget-"))
        })
        .map(|e| (e.decision, e.error.clone()))
        .collect();
    let granted = spent
        .iter()
        .filter(|(d, _)| *d == Some(meshgov_audit::event::Decision::Allow))
        .count();
    let exhausted = spent
        .iter()
        .filter(|(_, e)| e.as_deref() == Some("budget_exhausted"))
        .count();
    assert_eq!((granted, exhausted), (2, 2), "{spent:?}");

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
    assert_eq!(cases.len(), 15, "{xml}");
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
    let o = meshgov(args.clone(), &m.dir).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("LIVE-005: not run: --skip-budget was given"),
        "{out}"
    );
    assert!(
        out.contains("LIVE-015: not run: --skip-budget was given"),
        "{out}"
    );
    assert!(!out.contains("LIVE-012: not run"), "{out}");
    assert!(
        out.contains("LIVE-008: not run: signing it needs the governance key"),
        "{out}"
    );

    // --skip-sql leaves the SQL checks out.
    args.push("--skip-sql".into());
    let o = meshgov(args, &m.dir).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    for r in ["LIVE-012", "LIVE-013", "LIVE-014", "LIVE-015"] {
        assert!(
            out.contains(&format!("{r}: not run: --skip-sql was given")),
            "{out}"
        );
    }
}

/// The SQL checks each leave their mark in the audit stream: refused
/// connects, reads, refusals and differentially private aggregates, all as
/// `postgres` decisions.
fn sql_decisions(m: &Mesh) -> Vec<meshgov_audit::event::StoredEvent> {
    meshgov_audit::show::read_filtered(&m.dir.join("state/audit"), &Default::default())
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .filter(|e| {
            e.kind == meshgov_audit::Kind::Decision && e.protocol.as_deref() == Some("postgres")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_sql_port_the_sql_checks_say_so() {
    let m = play_events_sidecar_kept(false, None).await;
    let mut args = run_args(&m, m.data, "json");
    args.push("--skip-budget".into());
    let o = meshgov(args, &m.dir).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["findings"], serde_json::json!([]), "{v:#}");
    for r in ["LIVE-012", "LIVE-013", "LIVE-014", "LIVE-015"] {
        assert!(
            v["not_run"][r]
                .as_str()
                .unwrap()
                .contains("skipped: no SQL port"),
            "{v:#}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_port_passes_every_live_check() {
    let m = play_events_sidecar_kept(true, Some(PLAINTEXT)).await;
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

/// A CA and a server certificate it signs for 127.0.0.1, made with
/// openssl: the CA's certificate, the server's and its key.
fn certificates(dir: &Path) -> Option<[std::path::PathBuf; 3]> {
    let [ca_crt, ca_key, crt, key, csr, ext] = [
        "ca.crt", "ca.key", "sql.crt", "sql.key", "sql.csr", "sql.ext",
    ]
    .map(|f| dir.join(f));
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| -> Option<()> {
        match Command::new("openssl").args(args).output() {
            Ok(o) if o.status.success() => Some(()),
            Ok(o) => panic!("openssl: {}", String::from_utf8_lossy(&o.stderr)),
            Err(_) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "openssl is missing; `.ci/setup` installs it"
                );
                eprintln!("skipped: openssl not found (run .ci/setup)");
                None
            }
        }
    };
    let [ca_crt_s, ca_key_s, crt_s, key_s, csr_s, ext_s] =
        [&ca_crt, &ca_key, &crt, &key, &csr, &ext].map(|p| p.display().to_string());
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let subject = ["-subj", "/CN=meshgov test CA", "-days", "2"];
    let out = ["-keyout", &ca_key_s, "-out", &ca_crt_s];
    openssl(&[&["req", "-x509"][..], &ec, &subject, &out].concat())?;
    let out = ["-subj", "/CN=127.0.0.1", "-keyout", &key_s, "-out", &csr_s];
    let req = [&["req"][..], &ec, &out].concat();
    openssl(&req)?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr_s,
        "-CA",
        &ca_crt_s,
        "-CAkey",
        &ca_key_s,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext_s,
        "-out",
        &crt_s,
    ])?;
    Some([ca_crt, crt, key])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_checks_run_over_tls_with_the_ca_given() {
    let scratch = tempfile::tempdir().unwrap();
    let Some([ca, crt, key]) = certificates(scratch.path()) else {
        return;
    };
    let m = play_events_sidecar_kept(
        false,
        Some(&format!("tls_cert = {crt:?}\ntls_key = {key:?}")),
    )
    .await;
    let mut args = run_args(&m, m.data, "json");
    args.push("--skip-budget".into());
    // Without the CA, the certificate is not trusted: no connect succeeds
    // (or, on a machine with no CA certificates at all, the suite says it
    // needs one).
    let o = meshgov(args.clone(), &m.dir).await;
    if o.status.code() == Some(2) {
        assert!(text(&o).contains("--sql-ca"), "{}", text(&o));
    } else {
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["findings"].as_array().unwrap().len(), 1, "{v:#}");
        assert_eq!(v["findings"][0]["rule"], "LIVE-012", "{v:#}");
        assert!(
            v["not_run"]["LIVE-013"]
                .as_str()
                .unwrap()
                .contains("no connection"),
            "{v:#}"
        );
    }
    // With it, every check passes.
    args.extend(["--sql-ca".into(), ca.display().to_string()]);
    let o = meshgov(args, &m.dir).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["findings"], serde_json::json!([]), "{v:#}");
    assert!(
        v["summary"].as_str().unwrap().contains("play-events (TLS)"),
        "{v:#}"
    );
    let not_run: Vec<&String> = v["not_run"].as_object().unwrap().keys().collect();
    assert_eq!(not_run, ["LIVE-005", "LIVE-015"], "{v:#}");
}

/// A proxy in front of the PostgreSQL port that logs every client in as
/// `user` with `token`, whatever user name and password it sent.
async fn credential_swapping_pg_proxy(
    upstream: SocketAddr,
    user: String,
    token: String,
) -> SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (client, _) = l.accept().await.unwrap();
            let (user, token) = (user.clone(), token.clone());
            tokio::spawn(async move {
                let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                // The startup message: length, protocol, then `key\0value\0`
                // pairs and a closing `\0`; the user name is replaced.
                let Ok(len) = cr.read_u32().await else { return };
                let mut body = vec![0; len as usize - 4];
                cr.read_exact(&mut body).await.unwrap();
                let (protocol, mut rest) = body.split_at(4);
                let mut params = Vec::new();
                loop {
                    let end = rest.iter().position(|b| *b == 0).unwrap();
                    let key = &rest[..end];
                    rest = &rest[end + 1..];
                    if key.is_empty() {
                        break;
                    }
                    let end = rest.iter().position(|b| *b == 0).unwrap();
                    let value = if key == b"user" {
                        user.as_bytes()
                    } else {
                        &rest[..end]
                    };
                    params.extend_from_slice(key);
                    params.push(0);
                    params.extend_from_slice(value);
                    params.push(0);
                    rest = &rest[end + 1..];
                }
                params.push(0);
                sw.write_u32(8 + params.len() as u32).await.unwrap();
                sw.write_all(protocol).await.unwrap();
                sw.write_all(&params).await.unwrap();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                // The client's first message then is its password: replaced.
                let mut tag = [0u8];
                if cr.read_exact(&mut tag).await.is_err() {
                    return;
                }
                let len = cr.read_u32().await.unwrap();
                let mut body = vec![0; len as usize - 4];
                cr.read_exact(&mut body).await.unwrap();
                if tag[0] == b'p' {
                    body = format!("{token}\0").into_bytes();
                }
                sw.write_all(&tag).await.unwrap();
                sw.write_u32(4 + body.len() as u32).await.unwrap();
                sw.write_all(&body).await.unwrap();
                let _ = tokio::io::copy(&mut cr, &mut sw).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_front_that_logs_everyone_in_as_a_data_scientist_fails_the_sql_checks() {
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
    let proxy = credential_swapping_pg_proxy(m.sql.unwrap(), "dana".into(), token).await;
    let mut args = run_args(&m, m.data, "json");
    args.extend([
        "--skip-budget".into(),
        "--sql-address".into(),
        proxy.to_string(),
    ]);
    let o = meshgov(args, &m.dir).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let findings = v["findings"].as_array().unwrap();
    let rules: std::collections::BTreeSet<&str> = findings
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    // Bad passwords get in; consumers see the data scientist's tables
    // (the device revealed, ports they may not read); the marketer who
    // may only aggregate reads rows; and the audit stream records dana,
    // not the consumers who asked.
    for r in ["LIVE-012", "LIVE-013", "LIVE-014", "LIVE-010"] {
        assert!(rules.contains(r), "{r} missing: {v:#}");
    }
    let descriptor = std::fs::read_to_string(m.dir.join("pol/products/play-events.yaml")).unwrap();
    let device_line = descriptor
        .lines()
        .position(|l| l.contains("name: device"))
        .unwrap()
        + 1;
    assert!(
        findings.iter().any(|f| f["rule"] == "LIVE-013"
            && f["line"] == device_line
            && f["message"].as_str().unwrap().contains("`device`")),
        "{v:#}"
    );
    // Everything over HTTP goes to the sidecar directly: it passes.
    for r in [
        "LIVE-001", "LIVE-002", "LIVE-003", "LIVE-004", "LIVE-006", "LIVE-007", "LIVE-008",
        "LIVE-009", "LIVE-011",
    ] {
        assert!(!rules.contains(r), "{r}: {v:#}");
    }
}
