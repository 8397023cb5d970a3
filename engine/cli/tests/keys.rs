//! Key files other tools read and write: `meshgov keygen`'s files load in
//! OpenSSL and Python's `cryptography`, a key OpenSSL made signs bundles that
//! verify, and key files in the form earlier releases wrote keep working.
//!
//! OpenSSL (`openssl`) and Python's `cryptography` are external tools: a test
//! that needs one skips when it is missing, and fails instead when `CI` is
//! set (`.ci/setup` installs both).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use meshgov_bundle::PublicKey;

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

fn policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

/// Skips (returns `None`) when a tool is missing, unless `CI` is set.
fn tool_or_skip(found: bool, what: &str) -> Option<()> {
    if found {
        return Some(());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is missing; `.ci/setup` installs it"
    );
    eprintln!("skipped: {what} not found (run .ci/setup)");
    None
}

fn openssl() -> Option<PathBuf> {
    let candidate = std::env::var_os("MESHGOV_OPENSSL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("openssl"));
    let found = Command::new(&candidate)
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    tool_or_skip(found, "openssl")?;
    Some(candidate)
}

/// A Python with `cryptography`: `MESHGOV_PYTHON`, or the virtualenv
/// `.ci/setup` makes.
fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("MESHGOV_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/meshgov/pyclients/bin/python"));
    let found = Command::new(&candidate)
        .args(["-c", "import cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    tool_or_skip(found, "Python's cryptography")?;
    Some(candidate)
}

fn run(cmd: &Path, args: &[&str], cwd: &Path) -> Output {
    let o = Command::new(cmd)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{} {args:?}: {}",
        cmd.display(),
        text(&o)
    );
    o
}

/// Builds the example policies into `out` with `key` and returns whether
/// `meshgov bundle inspect --trust trust` verifies it.
fn build_and_inspect(d: &Path, key: &str, out: &str, trust: &str) -> bool {
    let o = meshgov(
        &[
            "build",
            policies().to_str().unwrap(),
            "--key",
            key,
            "--out",
            out,
        ],
        d,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = meshgov(&["bundle", "inspect", out, "--trust", trust, "--json"], d);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let verified = v["verdict"]["verified"] == true;
    assert_eq!(
        o.status.code(),
        Some(if verified { 0 } else { 1 }),
        "{}",
        text(&o)
    );
    verified
}

#[test]
fn keygen_files_load_in_openssl() {
    let Some(openssl) = openssl() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let o = meshgov(&["keygen", "--out", "guild"], d);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    run(&openssl, &["pkey", "-in", "guild", "-noout"], d);
    run(
        &openssl,
        &["pkey", "-pubin", "-in", "guild.pub", "-noout"],
        d,
    );
    // OpenSSL derives the same public key, in the same bytes, from the
    // private key.
    let derived = run(&openssl, &["pkey", "-in", "guild", "-pubout"], d);
    let written = std::fs::read(d.join("guild.pub")).unwrap();
    assert_eq!(
        String::from_utf8(derived.stdout).unwrap(),
        String::from_utf8(written).unwrap()
    );
    // And it is an Ed25519 key.
    let shown = run(
        &openssl,
        &["pkey", "-pubin", "-in", "guild.pub", "-text", "-noout"],
        d,
    );
    assert!(
        String::from_utf8_lossy(&shown.stdout).starts_with("ED25519 Public-Key:"),
        "{}",
        text(&shown)
    );
}

#[test]
fn keygen_files_load_in_python_cryptography() {
    let Some(python) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let o = meshgov(&["keygen", "--out", "guild"], d);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Loads both files, signs with the private key, verifies with the public
    // one, and prints the raw public key in base64.
    let script = r#"
import base64, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
priv = serialization.load_pem_private_key(open(sys.argv[1], "rb").read(), password=None)
pub = serialization.load_pem_public_key(open(sys.argv[2], "rb").read())
assert isinstance(priv, Ed25519PrivateKey), type(priv)
assert isinstance(pub, Ed25519PublicKey), type(pub)
pub.verify(priv.sign(b"meshgov"), b"meshgov")
raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
assert raw == priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
print("ed25519:" + base64.b64encode(raw).decode())
"#;
    let out = run(&python, &["-c", script, "guild", "guild.pub"], d);
    let printed: PublicKey = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    let ours = meshgov_bundle::read_public_key_file(&d.join("guild.pub")).unwrap();
    assert_eq!(printed, ours);
    let signing = meshgov_bundle::read_signing_key_file(&d.join("guild")).unwrap();
    assert_eq!(signing.public_key(), ours);
}

#[test]
fn a_key_openssl_made_signs_bundles_that_verify() {
    let Some(openssl) = openssl() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    run(
        &openssl,
        &["genpkey", "-algorithm", "ed25519", "-out", "k.pem"],
        d,
    );
    run(
        &openssl,
        &["pkey", "-in", "k.pem", "-pubout", "-out", "k.pub.pem"],
        d,
    );
    assert!(build_and_inspect(d, "k.pem", "b.json", "k.pub.pem"));

    // Another key's public key does not verify it.
    assert_eq!(
        meshgov(&["keygen", "--out", "other"], d).status.code(),
        Some(0)
    );
    assert!(!build_and_inspect(d, "k.pem", "b.json", "other.pub"));
    // And a bundle signed with meshgov's key verifies against a public key
    // OpenSSL derived from it.
    run(
        &openssl,
        &[
            "pkey",
            "-in",
            "other",
            "-pubout",
            "-out",
            "other.openssl.pem",
        ],
        d,
    );
    assert!(build_and_inspect(d, "other", "o.json", "other.openssl.pem"));
}

#[test]
fn key_files_in_the_earlier_format_keep_working() {
    // Written by `meshgov keygen` 0.1.0: a PKCS#8 v2 private key (public key
    // inside) and a one-line `ed25519:<base64>` public key. Test-only keys.
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for name in [
        "TEST-ONLY-keygen-0.1.0-guild",
        "TEST-ONLY-keygen-0.1.0-guild.pub",
    ] {
        std::fs::copy(fixture(name), d.join(name)).unwrap();
    }
    let key = "TEST-ONLY-keygen-0.1.0-guild";
    let public = "TEST-ONLY-keygen-0.1.0-guild.pub";
    assert!(build_and_inspect(d, key, "old.json", public));

    // The old private key with a public key in the new form, and a new key
    // against the old form, mixed during a rotation.
    let old = meshgov_bundle::read_public_key_file(&d.join(public)).unwrap();
    std::fs::write(d.join("old.pem.pub"), old.to_spki_pem()).unwrap();
    assert!(build_and_inspect(d, key, "old2.json", "old.pem.pub"));
    assert_eq!(
        meshgov(&["keygen", "--out", "new"], d).status.code(),
        Some(0)
    );
    let new = meshgov_bundle::read_public_key_file(&d.join("new.pub")).unwrap();
    std::fs::write(d.join("new.line.pub"), format!("{new}\n")).unwrap();
    assert!(build_and_inspect(d, "new", "new.json", "new.line.pub"));
    let o = meshgov(
        &[
            "bundle", "inspect", "new.json", "--trust", public, "--trust", "new.pub",
        ],
        d,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn a_private_key_given_as_a_public_key_is_named_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    assert_eq!(
        meshgov(&["keygen", "--out", "guild"], d).status.code(),
        Some(0)
    );
    let o = meshgov(
        &[
            "build",
            policies().to_str().unwrap(),
            "--key",
            "guild",
            "--out",
            "b.json",
        ],
        d,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = meshgov(&["bundle", "inspect", "b.json", "--trust", "guild"], d);
    assert_ne!(o.status.code(), Some(0));
    let msg = text(&o);
    assert!(
        msg.contains("`guild`: not a public key") && msg.contains("this is a private key"),
        "{msg}"
    );
}
