//! The `meshgov-sidecar` binary's contract: bad config exits 64 naming the key.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

fn run(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshgov-sidecar"));
    cmd.arg("--config").arg(&path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const OK: &str = r#"mesh = "m"
state_dir = "state"
descriptor = "missing.yaml"
[listen]
data = "127.0.0.1:0"
[upstream]
path = "data"
[auth]
issuer = "i"
audience = "a"
[[auth.keys]]
alg = "EdDSA"
x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
"#;

#[test]
fn bad_config_exits_64_and_names_the_key() {
    let (code, err) = run(&OK.replace("EdDSA", "none"), &[]);
    assert_eq!(code, Some(64));
    assert!(err.contains("auth.keys[0].alg"), "{err}");
    let (code, err) = run(OK, &[("MESHGOV_SIDECAR_LISTEN_DATA", "not-an-address")]);
    assert_eq!(code, Some(64));
    assert!(err.contains("listen.data"), "{err}");
    // A valid file whose descriptor is missing: the key is `descriptor`.
    let (code, err) = run(OK, &[]);
    assert_eq!(code, Some(64));
    assert!(err.contains("`descriptor`"), "{err}");
    let (code, _) = run("not = [toml", &[]);
    assert_eq!(code, Some(64));
}

#[test]
fn a_pseudonym_key_shorter_than_32_bytes_exits_64_naming_it() {
    let descriptor = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies/products/user-profiles.yaml")
        .display()
        .to_string();
    let config = OK.replace("\"missing.yaml\"", &format!("{descriptor:?}"));
    // 31 bytes, inline.
    let short = format!(
        "{config}[pseudonym_keys]\nuser-identity = {{ base64 = \"{}\" }}\n",
        "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MA=="
    );
    let (code, err) = run(&short, &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("`pseudonym_keys.user-identity`"), "{err}");
    assert!(err.contains("31 bytes"), "{err}");
    // A key file that does not exist names the key too.
    let missing =
        format!("{config}[pseudonym_keys]\nuser-identity = {{ file = \"/nonexistent/k\" }}\n");
    let (code, err) = run(&missing, &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("`pseudonym_keys.user-identity`"), "{err}");
}
