//! The CLI as a user runs it: the real binary, real files, real signatures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn meshgov(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshgov"))
        .args(args)
        .current_dir(cwd)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

#[test]
fn init_check_test_keygen_build_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let o = meshgov(&["init", "repo"], d);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = meshgov(&["check", "repo"], d);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("0 errors"));
    let o = meshgov(&["test", "repo", "--junit", "report.xml"], d);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains(" passed, 0 failed"), "{}", text(&o));
    let junit = std::fs::read_to_string(d.join("report.xml")).unwrap();
    assert!(junit.starts_with("<?xml") && junit.contains("failures=\"0\""));

    let o = meshgov(&["keygen", "--out", "keys/guild"], d);
    assert_eq!(code(&o), 0, "{}", text(&o));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.join("keys/guild"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The public key is SPKI PEM; the one-line form printed is the same key.
    let public = std::fs::read_to_string(d.join("keys/guild.pub")).unwrap();
    assert!(
        public.starts_with("-----BEGIN PUBLIC KEY-----\n")
            && public.ends_with("-----END PUBLIC KEY-----\n"),
        "{public}"
    );
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("one line:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    assert!(line.starts_with("ed25519:") && line.len() == 52, "{out}");
    assert_eq!(
        line.parse::<meshgov_bundle::PublicKey>().unwrap(),
        public.parse::<meshgov_bundle::PublicKey>().unwrap()
    );
    // Keys are never silently overwritten.
    assert_eq!(code(&meshgov(&["keygen", "--out", "keys/guild"], d)), 2);

    // A fixed build time, an hour ago, so the bundle is valid now.
    let hour_ago = time::OffsetDateTime::now_utc().unix_timestamp() / 3600 * 3600 - 3600;
    let created = time::OffsetDateTime::from_unix_timestamp(hour_ago).unwrap();
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    let created_at = created.format(&fmt).unwrap();
    let expires_at = (created + time::Duration::days(1)).format(&fmt).unwrap();
    let build = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "build",
            "repo",
            "--key",
            "keys/guild",
            "--out",
            out,
            "--created-at",
            &created_at,
            "--revision",
            "7",
        ];
        args.extend_from_slice(extra);
        let o = meshgov(&args, d);
        assert_eq!(code(&o), 0, "{}", text(&o));
        std::fs::read(d.join(out)).unwrap()
    };
    let a = build("a.json", &[]);
    let b = build("b.json", &[]);
    assert_eq!(a, b, "the same inputs must give byte-identical bundles");
    let sliced = build("s.json", &["--product", "users/user-profiles"]);
    assert!(sliced.len() < a.len());

    let o = meshgov(
        &[
            "bundle",
            "inspect",
            "s.json",
            "--trust",
            "keys/guild.pub",
            "--json",
        ],
        d,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verdict"]["verified"], true);
    assert_eq!(v["manifest"]["product"], "users/user-profiles");
    assert_eq!(v["manifest"]["revision"], 7);
    assert_eq!(v["manifest"]["mesh"], "media-mesh");
    assert_eq!(v["manifest"]["created_at"], created_at.as_str());
    assert_eq!(v["manifest"]["expires_at"], expires_at.as_str());
}

#[test]
fn refused_bundles_exit_1_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    assert_eq!(code(&meshgov(&["keygen", "--out", "guild"], d)), 0);
    assert_eq!(code(&meshgov(&["keygen", "--out", "other"], d)), 0);
    let policies = example();
    let o = meshgov(
        &[
            "build",
            policies.to_str().unwrap(),
            "--key",
            "guild",
            "--out",
            "b.json",
        ],
        d,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));

    let o = meshgov(&["bundle", "inspect", "b.json", "--trust", "other.pub"], d);
    assert_eq!(code(&o), 1);
    assert!(text(&o).contains("REFUSED [untrusted_key]"), "{}", text(&o));

    // Rotation: trusting both keys accepts it.
    let o = meshgov(
        &[
            "bundle",
            "inspect",
            "b.json",
            "--trust",
            "other.pub",
            "--trust",
            "guild.pub",
        ],
        d,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));

    // A tampered payload no longer matches its signature.
    let mut env: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("b.json")).unwrap()).unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = b64.decode(env["payload"].as_str().unwrap()).unwrap();
    let payload = String::from_utf8(payload).unwrap();
    assert!(payload.contains("\"revision\":"));
    let forged = payload.replacen("\"revision\":", "\"revision\":9", 1);
    env["payload"] = b64.encode(forged).into();
    std::fs::write(d.join("t.json"), serde_json::to_vec(&env).unwrap()).unwrap();
    let o = meshgov(&["bundle", "inspect", "t.json", "--trust", "guild.pub"], d);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("[bad_signature]"), "{}", text(&o));

    // An expired bundle.
    let o = meshgov(
        &[
            "build",
            policies.to_str().unwrap(),
            "--key",
            "guild",
            "--out",
            "old.json",
            "--created-at",
            "2001-01-01T00:00:00Z",
        ],
        d,
    );
    assert_eq!(code(&o), 0);
    let o = meshgov(
        &["bundle", "inspect", "old.json", "--trust", "guild.pub"],
        d,
    );
    assert_eq!(code(&o), 1);
    assert!(text(&o).contains("[expired]"), "{}", text(&o));

    // Truncated and garbage files.
    let full = std::fs::read(d.join("b.json")).unwrap();
    std::fs::write(d.join("cut.json"), &full[..full.len() / 2]).unwrap();
    let o = meshgov(
        &["bundle", "inspect", "cut.json", "--trust", "guild.pub"],
        d,
    );
    assert_eq!(code(&o), 1);
    assert!(text(&o).contains("malformed"), "{}", text(&o));
    assert!(!text(&o).contains("panicked"));
}

#[test]
fn usage_and_io_errors_exit_2_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let o = meshgov(&["check", "nowhere"], d);
    assert_eq!(code(&o), 2);
    assert!(
        text(&o).contains("`nowhere` does not exist; give the directory of a policy repository"),
        "{}",
        text(&o)
    );
    std::fs::create_dir(d.join("empty")).unwrap();
    let o = meshgov(&["check", "empty"], d);
    assert_eq!(code(&o), 2);
    assert!(text(&o).contains("no `mesh.toml`"), "{}", text(&o));
    // A missing file is said in words, never as an OS error number.
    for args in [
        &["push", "nope.json", "--sidecar", "http://127.0.0.1:9"][..],
        &["audit", "verify", "nope", "--key", "nope.pub"],
        &["audit", "show", "nope"],
        &["build", example().to_str().unwrap(), "--key", "nope"],
    ] {
        let o = meshgov(args, d);
        assert_eq!(code(&o), 2, "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains("` does not exist"),
            "{args:?}: {}",
            text(&o)
        );
        assert!(!text(&o).contains("os error"), "{args:?}: {}", text(&o));
    }
    std::fs::write(d.join("not-a-key"), "hello").unwrap();
    let o = meshgov(
        &["build", example().to_str().unwrap(), "--key", "not-a-key"],
        d,
    );
    assert_eq!(code(&o), 2);
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).lines().count(),
        1,
        "{}",
        text(&o)
    );
    let o = meshgov(
        &["build", example().to_str().unwrap(), "--key", "missing"],
        d,
    );
    assert_eq!(code(&o), 2);
    let o = meshgov(&["init", "."], Path::new(env!("CARGO_MANIFEST_DIR")));
    assert_eq!(code(&o), 2, "init refuses a non-empty directory");
}

#[test]
fn a_broken_repository_exits_1_listing_every_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    assert_eq!(code(&meshgov(&["init", "repo"], d)), 0);
    let anon = d.join("repo/anonymization/personal-data.toml");
    let s = std::fs::read_to_string(&anon).unwrap();
    std::fs::write(&anon, s.replace("\"pii.email\"", "\"pii.emial\"")).unwrap();
    std::fs::write(
        d.join("repo/access/bad.cedar"),
        "@id(\"x\")\npermit (principal action, resource);\n",
    )
    .unwrap();
    let o = meshgov(&["check", "repo"], d);
    assert_eq!(code(&o), 1);
    let out = text(&o);
    assert!(
        out.contains("access/bad.cedar:2:19: error[ACCESS-PARSE]"),
        "{out}"
    );
    assert!(
        out.contains("anonymization/personal-data.toml:15:1: error[UNKNOWN-CLASSIFICATION]"),
        "{out}"
    );
    assert!(out.contains("2 errors"), "{out}");
    // Nothing is built from a repository that does not check.
    assert_eq!(code(&meshgov(&["keygen", "--out", "k"], d)), 0);
    let o = meshgov(&["build", "repo", "--key", "k", "--out", "b.json"], d);
    assert_eq!(code(&o), 1);
    assert!(!d.join("b.json").exists());
}

/// `meshgov build` runs the policy tests, as the engine's build does: one
/// that fails fails the build (exit 1, the failure printed as `meshgov test`
/// prints it) and nothing is written; `--skip-tests` builds anyway.
#[test]
fn build_runs_the_policy_tests_unless_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    assert_eq!(code(&meshgov(&["init", "repo"], d)), 0);
    assert_eq!(code(&meshgov(&["keygen", "--out", "k"], d)), 0);
    let tests = d.join("repo/tests/access.toml");
    let s = std::fs::read_to_string(&tests).unwrap();
    let case = "name = \"marketing may not read profiles for another purpose\"";
    let at = s.find(case).unwrap();
    let (before, after) = s.split_at(at);
    let broken = format!(
        "{before}{}",
        after.replacen("expect = \"deny\"", "expect = \"allow\"", 1)
    );
    std::fs::write(&tests, broken).unwrap();

    let t = meshgov(&["test", "repo"], d);
    assert_eq!(code(&t), 1, "{}", text(&t));
    let tested = String::from_utf8_lossy(&t.stdout).into_owned();
    let failure: Vec<&str> = tested
        .lines()
        .skip_while(|l| !l.starts_with("FAIL "))
        .take_while(|l| !l.starts_with("ok "))
        .collect();
    assert!(
        failure[0]
            .starts_with("FAIL tests/access.toml: marketing may not read profiles for another"),
        "{tested}"
    );

    let build = |extra: &[&str]| {
        let mut args = vec!["build", "repo", "--key", "k", "--out", "b.json"];
        args.extend_from_slice(extra);
        meshgov(&args, d)
    };
    let o = build(&[]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(!d.join("b.json").exists(), "a bundle was written");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains(&failure.join("\n")), "{out}");
    assert!(out.contains(" passed, 1 failed"), "{out}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("1 of ")
            && String::from_utf8_lossy(&o.stderr).contains("policy tests failed"),
        "{}",
        text(&o)
    );
    // Nor is a product's slice built.
    let o = build(&["--product", "users/user-profiles"]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(!d.join("b.json").exists(), "a bundle was written");

    let o = build(&["--skip-tests"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(!text(&o).contains("FAIL "), "{}", text(&o));
    assert!(text(&o).contains("policy tests not run (--skip-tests)"));
    assert!(d.join("b.json").exists());
    let o = meshgov(&["bundle", "inspect", "b.json", "--trust", "k.pub"], d);
    assert_eq!(code(&o), 0, "{}", text(&o));
}

/// A sidecar config around the `[[auth.keys]]` entry `meshgov token` printed.
fn sidecar_auth(key_entry: &str) -> meshgov_sidecar::auth::Authenticator {
    let cfg = format!(
        "mesh = \"media-mesh\"\nstate_dir = \"state\"\ndescriptor = \"p.yaml\"\n[listen]\ndata = \"127.0.0.1:0\"\n[upstream]\npath = \"data\"\n[auth]\nissuer = \"https://idp.media.example\"\naudience = \"meshgov\"\n{key_entry}\n"
    );
    let env = std::collections::BTreeMap::<String, String>::new();
    let cfg = meshgov_sidecar::Config::from_toml(&cfg, Path::new("/"), &env).unwrap();
    meshgov_sidecar::auth::Authenticator::new(&cfg.auth).unwrap()
}

#[test]
fn minted_tokens_are_accepted_by_the_sidecars_verifier() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    assert_eq!(code(&meshgov(&["keygen", "--out", "idp"], d)), 0);
    let o = meshgov(
        &[
            "token",
            "--key",
            "idp",
            "--sub",
            "alice",
            "--groups",
            "marketing,fraud",
            "--purpose",
            "campaign-analytics",
            "--ttl",
            "600",
        ],
        d,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    let token = String::from_utf8(o.stdout.clone()).unwrap();
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    let entry = &stderr[stderr.find("[[auth.keys]]").expect("a key entry")..];
    let auth = sidecar_auth(entry);
    let now = meshgov_sidecar::clock::now_unix();
    let who = auth
        .authenticate_at(Some(format!("Bearer {token}").as_bytes()), now)
        .unwrap();
    assert_eq!(who.principal.id, "alice");
    assert_eq!(who.principal.groups, ["marketing", "fraud"]);
    assert_eq!(who.purpose, "campaign-analytics");

    // Another key's token, or a tampered one, is refused by the same verifier.
    assert_eq!(code(&meshgov(&["keygen", "--out", "other"], d)), 0);
    let o = meshgov(
        &[
            "token",
            "--key",
            "other",
            "--sub",
            "mallory",
            "--purpose",
            "campaign-analytics",
        ],
        d,
    );
    let forged = String::from_utf8(o.stdout).unwrap();
    assert!(
        auth.authenticate_at(Some(format!("Bearer {}", forged.trim()).as_bytes()), now)
            .is_err()
    );
    let wrong_issuer = meshgov(
        &[
            "token",
            "--key",
            "idp",
            "--sub",
            "a",
            "--purpose",
            "p",
            "--issuer",
            "https://evil",
        ],
        d,
    );
    let t = String::from_utf8(wrong_issuer.stdout).unwrap();
    assert_eq!(
        auth.authenticate_at(Some(format!("Bearer {}", t.trim()).as_bytes()), now),
        Err(meshgov_sidecar::auth::AuthError::Issuer)
    );
}

#[test]
fn token_refuses_bad_input_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("not-a-key"), "hello").unwrap();
    let base = ["token", "--sub", "a", "--purpose", "p", "--key"];
    let o = meshgov(&[&base[..], &["not-a-key"]].concat(), d);
    assert_eq!(code(&o), 2);
    assert!(text(&o).contains("meshgov keygen"), "{}", text(&o));
    assert_eq!(code(&meshgov(&["keygen", "--out", "k"], d)), 0);
    let o = meshgov(&[&base[..], &["k", "--ttl", "0"]].concat(), d);
    assert_eq!(code(&o), 2);
    let o = meshgov(&[&base[..], &["k", "--alg", "HS256"]].concat(), d);
    assert_eq!(code(&o), 2);
    assert!(text(&o).contains("EdDSA, ES256 or RS256"), "{}", text(&o));
    let o = meshgov(&["token", "--help"], d);
    assert!(text(&o).contains("development aid"), "{}", text(&o));
}

/// Writes a sidecar-style audit log of `n` reads with its key files.
fn audit_log(d: &Path, n: u64) {
    let state = d.join("state");
    let key = meshgov_audit::keyfile::load_or_create(&state).unwrap();
    let mut o = meshgov_audit::Options::new(state.join("audit"));
    o.checkpoint_every = 5;
    let log = meshgov_audit::AuditLog::open(o, key).unwrap();
    for i in 1..=n {
        let mut e = meshgov_audit::Event::new(
            meshgov_audit::Kind::Decision,
            1_795_000_000_000 + 60_000 * i as i64,
        );
        e.request_id = Some(format!("r-{i}"));
        e.client_request_id = Some(format!("job-{}", i % 3));
        e.consumer = Some(if i.is_multiple_of(2) { "mia" } else { "fred" }.into());
        e.purpose = Some("campaign-analytics".into());
        e.action = Some("read".into());
        e.port = Some("profiles".into());
        let deny = i.is_multiple_of(4);
        e.decision = Some(if deny {
            meshgov_audit::Decision::Deny
        } else {
            meshgov_audit::Decision::Allow
        });
        e.status = Some(if deny { 403 } else { 200 });
        log.submit(e).wait().unwrap();
    }
}

#[test]
fn audit_verify_and_show() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    audit_log(d, 12);
    let ok = meshgov(
        &[
            "audit",
            "verify",
            "state/audit",
            "--key",
            "state/audit-signing.pub",
        ],
        d,
    );
    assert_eq!(code(&ok), 0, "{}", text(&ok));
    assert!(text(&ok).contains("ok: 12 events"), "{}", text(&ok));
    let json = meshgov(
        &[
            "audit",
            "verify",
            "state/audit",
            "--key",
            "state/audit-signing.pub",
            "--json",
        ],
        d,
    );
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["last_checkpoint_seq"], 12);

    let show = meshgov(
        &[
            "audit",
            "show",
            "state/audit",
            "--consumer",
            "mia",
            "--decision",
            "deny",
        ],
        d,
    );
    assert_eq!(code(&show), 0, "{}", text(&show));
    let rows: Vec<String> = String::from_utf8_lossy(&show.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r.contains("deny") && r.contains("mia")));
    // The client's id is a filter of its own: events 3, 6, 9 and 12.
    let by_client = meshgov(
        &[
            "audit",
            "show",
            "state/audit",
            "--client-request-id",
            "job-0",
            "--json",
        ],
        d,
    );
    assert_eq!(code(&by_client), 0, "{}", text(&by_client));
    let ids: Vec<String> = String::from_utf8_lossy(&by_client.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"].to_string())
        .collect();
    assert_eq!(ids, ["\"r-3\"", "\"r-6\"", "\"r-9\"", "\"r-12\""]);
    let since = meshgov(
        &[
            "audit",
            "show",
            "state/audit",
            "--json",
            "--since",
            "2026-11-18T11:15:40Z",
        ],
        d,
    );
    let seqs: Vec<u64> = String::from_utf8_lossy(&since.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![9, 10, 11, 12]);
    let bad = meshgov(&["audit", "show", "state/audit", "--since", "yesterday"], d);
    assert_eq!(code(&bad), 2);
    assert!(text(&bad).contains("--since"));

    // One byte of event 3 changed: exit 1, naming sequence 3 and the kind.
    let seg = std::fs::read_dir(d.join("state/audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("seg-"))
        .unwrap();
    let t = std::fs::read_to_string(&seg).unwrap();
    std::fs::write(&seg, t.replacen("\"r-3\"", "\"r-8\"", 1)).unwrap();
    let broken = meshgov(
        &[
            "audit",
            "verify",
            "state/audit",
            "--key",
            "state/audit-signing.pub",
        ],
        d,
    );
    assert_eq!(code(&broken), 1, "{}", text(&broken));
    assert!(
        text(&broken).contains("sequence 3: edited"),
        "{}",
        text(&broken)
    );
    let nokey = meshgov(
        &["audit", "verify", "state/audit", "--key", "missing.pub"],
        d,
    );
    assert_eq!(code(&nokey), 2);
}

/// A repository using the example plugins (built from source) and a
/// well-behaved `hostile` plugin (the echo fixture).
fn plugin_repo(d: &Path) -> Option<PathBuf> {
    let built = meshgov_wasm::examples::build().unwrap()?;
    let fixtures = meshgov_wasm::examples::source_dir().join("fixtures");
    let echo = wat::parse_file(fixtures.join("echo.wat")).unwrap();
    let repo = d.join("repo");
    built.policy_repo(&repo, &echo).unwrap();
    Some(repo)
}

#[test]
fn plugins_are_checked_tested_and_built_into_bundles() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let Some(repo) = plugin_repo(d) else { return };
    let o = meshgov(&["check", "repo"], d);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = meshgov(&["test", "repo"], d);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("ok   tests/plugins.toml"), "{}", text(&o));

    // `test` catches a plugin whose output differs from the expectation.
    let tests = std::fs::read_to_string(repo.join("tests/plugins.toml")).unwrap();
    std::fs::write(
        repo.join("tests/plugins.toml"),
        tests.replace("\"35-44\"", "\"25-34\""),
    )
    .unwrap();
    let o = meshgov(&["test", "repo"], d);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("\"35-44\""), "{}", text(&o));
    std::fs::write(repo.join("tests/plugins.toml"), tests).unwrap();

    // The bundle carries the module bytes.
    assert_eq!(code(&meshgov(&["keygen", "--out", "k"], d)), 0);
    let o = meshgov(
        &[
            "build",
            "repo",
            "--key",
            "k",
            "--out",
            "b.json",
            "--product",
            "playback/listeners",
        ],
        d,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = meshgov(
        &["bundle", "inspect", "b.json", "--trust", "k.pub", "--json"],
        d,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    let inspected = String::from_utf8_lossy(&o.stdout).into_owned();
    for name in ["phone-mask", "age-band", "artist-urn"] {
        assert!(
            inspected.contains(&format!("plugins/{name}.wasm.b64")),
            "{inspected}"
        );
    }
}

#[test]
fn plugin_modules_that_do_not_match_their_pin_or_the_abi_are_refused_at_check() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let Some(repo) = plugin_repo(d) else { return };
    // A rebuilt (different) module under a stale pin.
    let age = repo.join("plugins/age-band.wasm");
    let mut bytes = std::fs::read(&age).unwrap();
    bytes.extend_from_slice(b"\0\x04\x03tmp");
    std::fs::write(&age, &bytes).unwrap();
    let o = meshgov(&["check", "repo"], d);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(
        text(&o).contains("error[PLUGIN-DIGEST]: plugin `age-band`"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).starts_with("plugins/plugins.toml:"),
        "{}",
        text(&o)
    );

    // A module pinned correctly that speaks another ABI version.
    let fixtures = meshgov_wasm::examples::source_dir().join("fixtures");
    let wrong = wat::parse_file(fixtures.join("wrong-version.wat")).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&wrong))
    };
    let manifest = std::fs::read_to_string(repo.join("plugins/plugins.toml")).unwrap();
    let echo_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            std::fs::read(repo.join("plugins/hostile.wasm")).unwrap(),
        ))
    };
    std::fs::write(repo.join("plugins/hostile.wasm"), &wrong).unwrap();
    std::fs::write(
        repo.join("plugins/plugins.toml"),
        manifest.replace(&echo_sha, &sha),
    )
    .unwrap();
    let o = meshgov(&["check", "repo"], d);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(
        text(&o).contains(
            "error[PLUGIN-ABI]: plugin `hostile`: the module speaks plugin ABI version 2"
        ),
        "{}",
        text(&o)
    );
}

/// `meshgov test … | head -1`: when the reader of stdout has gone, the
/// command ends quietly with 141 (what a shell reports for SIGPIPE) instead
/// of panicking on the failed write.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    for args in [
        vec!["test", example().to_str().unwrap()],
        vec!["check", example().to_str().unwrap()],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        // Closed before the command writes anything: every write is EPIPE.
        drop(reader);
        let o = Command::new(env!("CARGO_BIN_EXE_meshgov"))
            .args(&args)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
