//! No secret and no raw classified value leaves through the side doors: a
//! real `meshgov-sidecar` process, logging everything it can (`RUST_LOG=
//! trace`, text and JSON), serves allowed, denied, refused and failing
//! requests over records holding known classified values; then its logs,
//! its audit log and checkpoints, and its error bodies are searched for those
//! values, the bearer tokens, the pseudonym key and the private key
//! material. Key files it creates are private (0600). A purpose holding
//! a newline cannot forge a log line.

use crate::common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Classified values in the upstream records, each unique in the test.
const EMAIL: &str = "zq.secret.7731@example.com";
const NAME: &str = "Quentin Zarathustra";
const BIRTH: &str = "1977-07-07";
const USER_ID: &str = "zz-user-90210";
/// An undeclared field: never leaves the product.
const SSN: &str = "987-65-4329";
/// What a consumer's purpose tries to forge as a log line of its own.
const FORGED: &str = "FORGED-LOG-LINE";

/// One request; the whole raw response.
fn request(addr: SocketAddr, path: &str, headers: &str) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}\r\n"
    )
    .unwrap();
    let mut b = Vec::new();
    let _ = c.read_to_end(&mut b);
    String::from_utf8_lossy(&b).into_owned()
}

/// Every file under `dir`, with its path.
fn files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
}

fn run(log_format: &str) {
    let keys = Keys::generate();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (descriptor_path, descriptor) = example_descriptor("user-profiles");
    let gov = governance_key();
    std::fs::write(
        d.join("bundle.json"),
        signed_bundle(&gov, &descriptor, 7, 3600),
    )
    .unwrap();
    let record = format!(
        r#"{{"user_id":"{USER_ID}","email":"{EMAIL}","name":"{NAME}","birth_date":"{BIRTH}","country":"NL","postcode":"1012AB","signed_up_at":"2026-03-01T10:00:00Z","ssn":"{SSN}"}}"#
    );
    // A malformed line carrying the same values: skipped and counted, and
    // its content must not be logged either.
    let broken = format!(r#"{{"email":"{EMAIL}","name":"{NAME}","ssn":"{SSN}""#);
    write_upstream(
        d,
        "profiles",
        "a.ndjson",
        &format!("{record}\n{broken}\n{record}\n"),
    );
    let [addr, control] = free_addrs();
    let config = ProcessConfig {
        top: &format!("log_format = \"{log_format}\""),
        listen: &format!("data = \"{addr}\"\ncontrol = \"{control}\""),
        tables: "[audit]\ncheckpoint_every = 2\ncheckpoint_interval_ms = 50",
        ..ProcessConfig::default()
    }
    .write(d, &descriptor_path, &gov, &keys);
    let stdout = std::fs::File::create(d.join("stdout.log")).unwrap();
    let stderr = std::fs::File::create(d.join("stderr.log")).unwrap();
    let mut child = Process::spawn_unlogged(
        sidecar_command(&config, "trace")
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr)),
    )
    .unwrap();
    assert!(
        ready_within(addr, Duration::from_secs(30)),
        "the sidecar did not become ready"
    );

    let marketing = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let fraud = token(&keys, "fred", &["fraud"], "fraud-investigation");
    let wrong_purpose = token(&keys, "mia", &["marketing"], "fraud-investigation");
    let untrusted = token(&Keys::generate(), "eve", &["fraud"], "fraud-investigation");
    // A purpose that would write a line of its own into a text log.
    let forging = token(
        &keys,
        "mia",
        &["marketing"],
        &format!("campaign-analytics\n{FORGED} level=ERROR"),
    );
    let mut tampered = fraud.clone();
    tampered.push('A');
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
    let records = "/v1/ports/profiles/records";
    let mut bodies = Vec::new();
    for (path, headers, status) in [
        (records.to_string(), bearer(&marketing), 200),
        (
            records.to_string(),
            format!("{}Accept: text/csv\r\n", bearer(&marketing)),
            200,
        ),
        // fraud sees the email in the clear: in the response, not in logs.
        (records.to_string(), bearer(&fraud), 200),
        (records.to_string(), bearer(&wrong_purpose), 403),
        (records.to_string(), bearer(&forging), 403),
        (records.to_string(), bearer(&untrusted), 401),
        (records.to_string(), bearer(&tampered), 401),
        (format!("{records}?limit=0"), bearer(&fraud), 400),
        ("/v1/ports/nope/records".into(), bearer(&fraud), 404),
    ] {
        let r = request(addr, &path, &headers);
        assert!(
            r.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: expected {status}, got {}",
            r.lines().next().unwrap_or_default()
        );
        bodies.push(r);
    }
    assert!(
        bodies[2].contains(EMAIL),
        "the fraud read shows the email in the clear"
    );
    assert!(
        !bodies[0].contains(EMAIL) && bodies[0].contains("z*"),
        "marketing sees it masked"
    );
    // The control port with a consumer's token (refused).
    let r = request(control, "/control/v1/status", &bearer(&fraud));
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    bodies.push(r);
    // Let a checkpoint cover the events, then stop.
    std::thread::sleep(Duration::from_millis(300));
    child.kill();

    let state = d.join("state");
    // Key files are private.
    use std::os::unix::fs::PermissionsExt as _;
    let key_file = state.join("audit-signing.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", key_file.display());
    let private_pem = std::fs::read_to_string(&key_file).unwrap();
    let private_body: String = private_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();

    let mut searched = vec![
        (
            "stdout".to_string(),
            std::fs::read(d.join("stdout.log")).unwrap(),
        ),
        (
            "stderr".to_string(),
            std::fs::read(d.join("stderr.log")).unwrap(),
        ),
    ];
    let mut state_files = Vec::new();
    files(&state, &mut state_files);
    for (path, bytes) in state_files {
        // The key file itself and the bundle copy are what they are.
        if path.ends_with("audit-signing.key") || path.ends_with("bundle.dsse.json") {
            continue;
        }
        searched.push((path, bytes));
    }
    for (i, b) in bodies.iter().enumerate() {
        if i != 2 {
            searched.push((format!("response {i}"), b.clone().into_bytes()));
        }
    }
    // Consumer-supplied values are escaped in logs: no line starts with
    // what the forging purpose put after its newline.
    for (file, bytes) in &searched[..2] {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !text.lines().any(|l| l.starts_with(FORGED)),
            "{file} holds a forged line"
        );
    }
    assert!(
        String::from_utf8_lossy(&searched[1].1).contains(FORGED),
        "the forging purpose was never logged, so the check above proves nothing"
    );
    let logged = String::from_utf8_lossy(&searched[0].1).len()
        + String::from_utf8_lossy(&searched[1].1).len();
    assert!(
        logged > 1000,
        "the sidecar logged almost nothing ({logged} bytes)"
    );
    let audit_bytes: usize = searched
        .iter()
        .filter(|(p, _)| p.contains("audit"))
        .map(|(_, b)| b.len())
        .sum();
    assert!(audit_bytes > 1000, "the audit log is nearly empty");
    let signature = |t: &str| t.rsplit('.').next().unwrap().to_string();
    let secrets: Vec<(&str, String)> = vec![
        ("email", EMAIL.into()),
        ("name", NAME.into()),
        ("birth date", BIRTH.into()),
        ("user id", USER_ID.into()),
        ("ssn", SSN.into()),
        ("marketing token", marketing.clone()),
        ("fraud token signature", signature(&fraud)),
        ("untrusted token signature", signature(&untrusted)),
        ("tampered token signature", signature(&tampered)),
        ("pseudonym key", PSEUDONYM_KEY.into()),
        ("audit private key", private_body),
    ];
    for (file, bytes) in &searched {
        let text = String::from_utf8_lossy(bytes);
        for (what, secret) in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{file} contains the {what}:\n{}",
                text.lines()
                    .filter(|l| l.contains(secret.as_str()))
                    .take(3)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

#[test]
fn no_secret_or_classified_value_reaches_text_logs_audit_or_errors() {
    run("text");
}

#[test]
fn no_secret_or_classified_value_reaches_json_logs_audit_or_errors() {
    run("json");
}
