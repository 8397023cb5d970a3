//! The `meshgov-sidecar` binary's contract: bad config exits 64 naming the key.

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

#[test]
fn version_and_help_print_and_exit_0() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshgov-sidecar"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("meshgov-sidecar {}\n", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(env!("CARGO_BIN_EXE_meshgov-sidecar"))
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with("usage: meshgov-sidecar")
    );
}

#[test]
fn trusted_bundle_keys_take_pem_public_keys_and_name_a_private_one() {
    let descriptor = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies/products/play-events.yaml")
        .display()
        .to_string();
    let pem =
        meshgov_bundle::SigningKey::generate_pkcs8_pem(&ring::rand::SystemRandom::new()).unwrap();
    let key = meshgov_bundle::SigningKey::from_pkcs8_pem(&pem).unwrap();
    let other =
        meshgov_bundle::SigningKey::generate_pkcs8_pem(&ring::rand::SystemRandom::new()).unwrap();
    let other = meshgov_bundle::SigningKey::from_pkcs8_pem(&other).unwrap();
    let with_keys = |keys: &str| {
        OK.replace("\"missing.yaml\"", &format!("{descriptor:?}"))
            .replace(
                "state_dir = \"state\"",
                &format!("state_dir = \"/dev/null/state\"\ntrusted_bundle_keys = [{keys}]"),
            )
    };
    // A PEM public key (a TOML multi-line string) and a one-line key are both
    // taken: start-up gets past the keys to the (unusable) state directory.
    let keys = format!(
        "'''\n{}''', \"{}\"",
        key.public_key().to_spki_pem(),
        other.public_key()
    );
    let (code, err) = run(&with_keys(&keys), &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("`state_dir`"), "{err}");
    assert!(!err.contains("trusted_bundle_keys"), "{err}");
    // The private key where its public key belongs is named as such.
    let (code, err) = run(
        &with_keys(&format!("\"{}\", '''\n{}'''", other.public_key(), *pem)),
        &[],
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("trusted_bundle_keys[1]"), "{err}");
    assert!(err.contains("this is a private key"), "{err}");
}
