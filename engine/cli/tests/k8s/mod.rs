//! Kubernetes helpers shared by the inject, webhook and deploy tests: the
//! schema validator, the public manifest corpus, and the Pod Security
//! `restricted` checks of the sidecar container.
//!
//! `kubernetes-validate` (PyPI) and `kubectl` (Debian) are installed by
//! `.ci/setup`. Set `MESHGOV_KUBERNETES_VALIDATE` to the validator's path,
//! or put it on `PATH`. Without a tool its check is skipped with a message,
//! except in CI (`CI` set), where a missing tool fails the test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `tool` if it runs, else `None` (skip) outside CI.
fn found(tool: PathBuf, what: &str) -> Option<PathBuf> {
    let ok = Command::new(&tool)
        .arg(if what == "kubectl" {
            "version"
        } else {
            "--version"
        })
        .args(if what == "kubectl" {
            &["--client"][..]
        } else {
            &[][..]
        })
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(tool);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is missing; `.ci/setup` installs it"
    );
    eprintln!("skipped: {what} not found (run .ci/setup)");
    None
}

/// The path of `kubernetes-validate`, or `None` (skip) outside CI.
pub fn kubernetes_validate() -> Option<PathBuf> {
    let candidate = std::env::var_os("MESHGOV_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("kubernetes-validate"));
    found(candidate, "kubernetes-validate")
}

/// The path of `kubectl`, or `None` (skip) outside CI.
pub fn kubectl() -> Option<PathBuf> {
    found(PathBuf::from("kubectl"), "kubectl")
}

/// Validates `files` strictly against Kubernetes 1.29 (native sidecars)
/// and 1.35; the validator's output on failure.
pub fn validate(validator: &Path, files: &[PathBuf]) -> Result<(), String> {
    for version in ["1.29.0", "1.35.0"] {
        let out = Command::new(validator)
            .args(["--strict", "--kubernetes-version", version])
            .args(files)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(format!(
                "Kubernetes {version}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

/// The corpus of public manifests (`tests/fixtures/k8s-corpus`), sorted.
pub fn corpus() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/k8s-corpus");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 11, "{files:?}");
    files
}

/// Asserts that the sidecar container `c` passes the Pod Security
/// Standards' `restricted` profile on its own (no pod-level setting
/// needed), with a read-only root and the state volume its one writable
/// place.
pub fn assert_restricted(c: &serde_json::Value, what: &str) {
    assert_restricted_context(c, what);
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"], true,
        "{what}"
    );
    let writable: Vec<_> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["readOnly"] != true)
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(writable, ["/var/lib/meshgov"], "{what}");
}

/// Asserts the `restricted` profile's container fields: non-root with a
/// numeric user (here or in `pod`'s securityContext), no privilege
/// escalation, every capability dropped, the runtime's seccomp profile.
pub fn assert_restricted_context(c: &serde_json::Value, what: &str) {
    assert_restricted_in(c, &serde_json::Value::Null, what);
}

/// As [`assert_restricted_context`], where `pod_sc` (the pod's
/// securityContext) may supply the user and seccomp profile.
pub fn assert_restricted_in(c: &serde_json::Value, pod_sc: &serde_json::Value, what: &str) {
    let sc = &c["securityContext"];
    let either = |k: &str| if sc[k].is_null() { &pod_sc[k] } else { &sc[k] };
    assert_eq!(*either("runAsNonRoot"), true, "{what}: {sc}");
    assert!(
        either("runAsUser").as_u64().is_some_and(|u| u > 0),
        "{what}: {sc}"
    );
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}: {sc}");
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{what}: {sc}"
    );
    assert!(sc["capabilities"]["add"].is_null(), "{what}: {sc}");
    assert_eq!(
        either("seccompProfile")["type"],
        "RuntimeDefault",
        "{what}: {sc}"
    );
    assert!(sc["privileged"].is_null(), "{what}: {sc}");
}

/// `kubernetes-validate` fails on an object without `metadata.name` (one
/// with only `generateName`, as controllers create pods and as Argo CD
/// hooks are written): such an object gets a name for the check.
pub fn named_for_validation(doc: &mut serde_json::Value) {
    let meta = &mut doc["metadata"];
    if meta["name"].is_null()
        && let Some(g) = meta["generateName"].as_str()
    {
        meta["name"] = serde_json::Value::from(format!("{g}x"));
    }
}

/// Writes each document of `docs` as its own JSON file in `dir`, named
/// for validation; the files.
pub fn write_for_validation(dir: &Path, stem: &str, docs: &[serde_json::Value]) -> Vec<PathBuf> {
    docs.iter()
        .enumerate()
        .filter(|(_, d)| d.is_object())
        .map(|(i, d)| {
            let mut d = d.clone();
            named_for_validation(&mut d);
            let file = dir.join(format!("{stem}-{}.json", i + 1));
            std::fs::write(&file, serde_json::to_string_pretty(&d).unwrap()).unwrap();
            file
        })
        .collect()
}

/// A self-signed certificate for 127.0.0.1 and the Service's DNS name.
pub fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args([
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=meshgov-engine.meshgov-system.svc",
        ])
        .args([
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:meshgov-engine.meshgov-system.svc",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}
