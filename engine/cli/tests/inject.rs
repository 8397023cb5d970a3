//! `meshgov inject`, run as a process on real manifests.
//!
//! Golden files pin the injected manifests; rerun with `MESHGOV_BLESS=1` to
//! rewrite them after a deliberate change, and commit them with it.
//!
//! The injected manifests are also checked against the Kubernetes API
//! schemas with `kubernetes-validate` (see `k8s/mod.rs`), here and over

//! the corpus of public manifests in `tests/fixtures/k8s-corpus`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::k8s;

const ENGINE: &str = "http://meshgov-engine.governance:7600";
const IMAGE: &str = "ghcr.io/meshgov/sidecar:0.1.0-test";

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/inject")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(golden(name)).unwrap()
}

fn blessing() -> bool {
    std::env::var_os("MESHGOV_BLESS").is_some_and(|v| v == "1")
}

/// Compares `actual` with the golden file, or rewrites it when blessing.
fn assert_golden(name: &str, actual: &str) {
    let path = golden(name);
    if blessing() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with MESHGOV_BLESS=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || "at the end".to_string(),
                |i| format!("at line {}", i + 1),
            );
        panic!(
            "{} differs from what inject now produces ({line}):\n{actual}\n\
             if the change is deliberate, rerun with MESHGOV_BLESS=1 and commit the file",
            path.display()
        );
    }
}

/// Runs `meshgov inject ARGS`, with `stdin` on standard input.
fn inject(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshgov"))
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // A usage error ends `meshgov inject` before it reads its input; if it
    // has already exited, the pipe is closed. Its exit status and output
    // tell what happened.
    if let Err(e) = input.write_all(stdin.unwrap_or("").as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Injects `text` from stdin with `args`.
fn inject_text(text: &str, args: &[&str]) -> String {
    let mut all = vec!["-f", "-"];
    all.extend_from_slice(args);
    ok(&inject(&all, Some(text)))
}

const MANIFEST_ARGS: [&str; 6] = [
    "--product",
    "users/user-profiles",
    "--engine",
    ENGINE,
    "--image",
    IMAGE,
];

fn injected_manifest() -> String {
    let file = golden("manifest.yaml");
    let mut args = vec!["-f", file.to_str().unwrap()];
    args.extend_from_slice(&MANIFEST_ARGS);
    ok(&inject(&args, None))
}

/// The documents of a multi-document manifest, as its text between `---` lines.
fn documents(text: &str) -> Vec<&str> {
    text.split("\n---\n").collect()
}

fn yaml_docs(text: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple::<serde_json::Value>(text).unwrap()
}

#[test]
fn injects_the_realistic_manifest_as_the_golden_file_says() {
    let out = injected_manifest();
    assert_golden("manifest.injected.yaml", &out);
    // The workloads whose state ends with the pod get a note; the StatefulSet does not.
    let file = golden("manifest.yaml");
    let mut args = vec!["-f", file.to_str().unwrap()];
    args.extend_from_slice(&MANIFEST_ARGS);
    let notes = stderr(&inject(&args, None));
    let lines: Vec<_> = notes.lines().collect();
    assert_eq!(lines.len(), 2, "{notes}");
    assert!(lines[0].ends_with(
        "manifest.yaml:40:7: note: document 2: `Deployment` `user-profiles`: the sidecar's state (audit log, persisted bundle, embedded privacy ledger) is in an emptyDir and ends with the pod; have the engine collect audit logs, and use `privacy.ledger = \"postgres\"` when there are several replicas"
    ), "{notes}");
    assert!(
        lines[1].contains(":122:7: note: document 5: `Job` `profiles-backfill`: "),
        "{notes}"
    );
}

#[test]
fn other_documents_pass_through_byte_for_byte() {
    let input = read("manifest.yaml");
    let out = injected_manifest();
    let (before, after) = (documents(&input), documents(&out));
    assert_eq!(before.len(), after.len());
    // The ConfigMap (with its comments and block scalars) and the Service.
    assert_eq!(before[0], after[0]);
    assert_eq!(before[2], after[2]);
    // The workloads changed, and kept their own comments and octal mode.
    for i in [1, 3, 4] {
        assert_ne!(before[i], after[i], "document {}", i + 1);
    }
    assert!(
        after[1]
            .contains("    meshgov.io/product: users/user-profiles   # the product this serves\n")
    );
    assert!(after[1].contains("      - name: log-shipper   # ships the API's logs\n"));
    assert!(
        after[1]
            .contains("          defaultMode: 0400   # YAML 1.1 octal, as Kubernetes reads it\n")
    );
}

#[test]
fn the_sidecar_lands_where_each_kind_needs_it() {
    let docs = yaml_docs(&injected_manifest());
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|c| c["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let deploy = &docs[1]["spec"]["template"]["spec"];
    assert_eq!(
        names(&deploy["containers"]),
        ["api", "log-shipper", "meshgov-sidecar"]
    );
    assert_eq!(
        names(&deploy["volumes"]),
        [
            "data",
            "tls",
            "meshgov-config",
            "meshgov-keys",
            "meshgov-state"
        ]
    );
    assert_eq!(deploy["volumes"][4]["emptyDir"], serde_json::json!({}));

    let sts = &docs[3]["spec"];
    assert_eq!(
        names(&sts["template"]["spec"]["containers"]),
        ["cache", "meshgov-sidecar"]
    );
    // State on a claim per replica, not in the pod.
    assert_eq!(
        names(&sts["template"]["spec"]["volumes"]),
        ["meshgov-config", "meshgov-keys"]
    );
    let claims: Vec<_> = sts["volumeClaimTemplates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(claims, ["cache", "meshgov-state"]);
    assert_eq!(
        sts["volumeClaimTemplates"][1]["spec"]["resources"]["requests"]["storage"],
        "1Gi"
    );

    // A Job's pods run to completion: the sidecar is a native sidecar.
    let job = &docs[4]["spec"]["template"]["spec"];
    assert_eq!(names(&job["containers"]), ["backfill"]);
    assert_eq!(names(&job["initContainers"]), ["meshgov-sidecar"]);
    assert_eq!(job["initContainers"][0]["restartPolicy"], "Always");

    for (i, doc) in [(1, &docs[1]), (3, &docs[3]), (4, &docs[4])] {
        assert_eq!(
            doc["metadata"]["annotations"]["meshgov.io/injected"], "true",
            "{i}"
        );
        assert_eq!(
            doc["spec"]["template"]["metadata"]["annotations"]["meshgov.io/product"],
            "users/user-profiles",
            "{i}"
        );
        assert_eq!(
            doc["spec"]["template"]["metadata"]["labels"]["meshgov.io/injected"], "true",
            "{i}"
        );
    }
}

/// The sidecar, started as injected with the ConfigMap's config, listens on
/// the ports the pod declares, keeps its state on the mounted volume and
/// registers with the engine under the pod's name.
#[test]
fn the_injected_sidecar_config_is_what_the_pod_declares() {
    let docs = yaml_docs(&injected_manifest());
    let config = docs[0]["data"]["sidecar.toml"].as_str().unwrap();
    let pod = &docs[1]["spec"]["template"]["spec"];
    let sidecar = &pod["containers"][2];
    assert_eq!(sidecar["image"], IMAGE);
    let args: Vec<_> = sidecar["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args, ["--config", "/etc/meshgov/config/sidecar.toml"]);

    // The environment as the kubelet would give it, `$(VAR)` expanded.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for e in sidecar["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => "user-profiles-7d9f8-abcde".to_string(),
            Some("status.podIP") => "10.1.2.3".to_string(),
            Some(other) => panic!("unexpected field {other}"),
            None => {
                let mut v = e["value"].as_str().unwrap().to_string();
                for (k, val) in &env {
                    v = v.replace(&format!("$({k})"), val);
                }
                v
            }
        };
        env.insert(name, value);
    }
    let cfg =
        meshgov_sidecar::config::Config::from_toml(config, Path::new("/etc/meshgov/config"), &env)
            .unwrap();
    let port = |name: &str| {
        sidecar["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["containerPort"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(u64::from(cfg.listen_data.port()), port("meshgov-data"));
    assert!(cfg.listen_data.ip().is_unspecified());
    assert_eq!(
        u64::from(cfg.listen_control.unwrap().port()),
        port("meshgov-control")
    );
    let mount = |name: &str| {
        sidecar["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()["mountPath"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(cfg.state_dir, PathBuf::from(mount("meshgov-state")));
    assert_eq!(
        cfg.descriptor,
        Path::new(&mount("meshgov-config")).join("user-profiles.yaml")
    );
    let engine = cfg.engine.unwrap();
    assert_eq!(engine.url, ENGINE);
    assert_eq!(
        engine.instance_id.as_deref(),
        Some("user-profiles-7d9f8-abcde")
    );
    assert_eq!(
        engine.advertise_url.as_deref(),
        Some("http://10.1.2.3:15181")
    );
    assert_eq!(
        cfg.listen_metrics.map(|a| u64::from(a.port())),
        Some(port("meshgov-metrics"))
    );
    // Prometheus finds the metrics port by the pod's annotations.
    let annotations = &docs[1]["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        port("meshgov-metrics").to_string()
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    // The probes hit the data port.
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["port"], "meshgov-data");
}

#[test]
fn a_second_run_changes_nothing() {
    let once = injected_manifest();
    let twice = inject_text(&once, &MANIFEST_ARGS);
    assert!(once == twice, "second run differs:\n{twice}");
    let more = read("more.injected.yaml");
    assert!(inject_text(&more, &["--image", IMAGE]) == more);
}

#[test]
fn cronjobs_and_json_documents() {
    let out = ok(&inject(
        &[
            "-f",
            golden("more.yaml").to_str().unwrap(),
            "--image",
            IMAGE,
        ],
        None,
    ));
    assert_golden("more.injected.yaml", &out);
    let docs = yaml_docs(&out);
    let pod = &docs[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let init: Vec<_> = pod["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["wait-for-db", "meshgov-sidecar"]);
    // Without --engine, the sidecar's own config decides.
    assert!(!out.contains("MESHGOV_SIDECAR_ENGINE_URL"));
    // A JSON document stays JSON.
    let json = documents(&out)[1];
    let parsed: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(
        parsed["spec"]["template"]["spec"]["containers"][1]["name"],
        "meshgov-sidecar"
    );
}

#[test]
fn reads_standard_input() {
    let input = read("manifest.yaml");
    assert_eq!(inject_text(&input, &MANIFEST_ARGS), injected_manifest());
}

#[test]
fn reinjection_updates_the_sidecar_in_place() {
    let once = injected_manifest();
    let upgraded = inject_text(
        &once,
        &[
            "--product",
            "users/user-profiles",
            "--image",
            "ghcr.io/meshgov/sidecar:0.2.0",
            "--no-keys-secret",
            "--memory-limit",
            "512Mi",
        ],
    );
    assert_eq!(upgraded.matches("- name: meshgov-sidecar").count(), 3);
    assert_eq!(
        upgraded
            .matches("image: \"ghcr.io/meshgov/sidecar:0.2.0\"")
            .count(),
        3
    );
    assert!(!upgraded.contains(IMAGE));
    assert!(!upgraded.contains("meshgov-keys"));
    assert!(!upgraded.contains("MESHGOV_SIDECAR_ENGINE_URL"));
    assert_eq!(upgraded.matches("memory: 512Mi").count(), 3);
    // Untouched documents and the rest of each workload are as before.
    let (a, b) = (documents(&once), documents(&upgraded));
    assert_eq!(a[0], b[0]);
    assert_eq!(a[2], b[2]);
    assert!(
        b[1].contains("          defaultMode: 0400   # YAML 1.1 octal, as Kubernetes reads it\n")
    );
    // And the upgrade is itself stable.
    let again = inject_text(
        &upgraded,
        &[
            "--product",
            "users/user-profiles",
            "--image",
            "ghcr.io/meshgov/sidecar:0.2.0",
            "--no-keys-secret",
            "--memory-limit",
            "512Mi",
        ],
    );
    assert!(again == upgraded);
}

#[test]
fn the_default_image_is_this_release() {
    let doc = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  template:\n    spec:\n      containers:\n      - name: a\n        image: b\n";
    let out = inject_text(doc, &["--product", "d/p"]);
    assert!(out.contains(&format!(
        "image: \"ghcr.io/meshgov/sidecar:{}\"\n",
        env!("CARGO_PKG_VERSION")
    )));
    // The ConfigMap and Secret are named after the product by default.
    assert!(out.contains("configMap:\n            name: meshgov-d-p\n"));
    assert!(out.contains("secretName: meshgov-d-p-keys\n"));
}

/// Runs inject on `text` and returns its stderr, asserting exit 2 and no output.
fn refused(text: &str, args: &[&str]) -> String {
    let mut all = vec!["-f", "-"];
    all.extend_from_slice(args);
    let out = inject(&all, Some(text));
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(
        out.stdout.is_empty(),
        "wrote {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr(&out)
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n";

#[test]
fn refuses_kinds_it_cannot_inject() {
    let daemonset = format!(
        "{SERVICE}---\napiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: node-agent\nspec:\n  template:\n    spec:\n      containers:\n      - name: a\n        image: b\n"
    );
    assert_eq!(
        refused(&daemonset, &["--product", "d/p"]),
        "<stdin>:7:7: error: document 2: `DaemonSet` `node-agent` is not supported: a DaemonSet runs one pod per node, not a data product's replicas; run the product as a Deployment or StatefulSet; or annotate it `meshgov.io/inject: disabled` to leave it as it is\n\
         meshgov: 1 document refused; nothing was written\n"
    );
    let pod_and_rs = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: a\n    image: b\n---\napiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  name: rs\nspec:\n  template:\n    spec:\n      containers: [{name: a, image: b}]\n";
    assert_eq!(
        refused(pod_and_rs, &["--product", "d/p"]),
        "<stdin>:2:7: error: document 1: `Pod` `p` is not supported: inject the Deployment, StatefulSet or Job that creates it; or annotate it `meshgov.io/inject: disabled` to leave it as it is\n\
         <stdin>:11:7: error: document 2: `ReplicaSet` `rs` is not supported: inject the Deployment that manages it; or annotate it `meshgov.io/inject: disabled` to leave it as it is\n\
         meshgov: 2 documents refused; nothing was written\n"
    );
    // An object annotated to be left alone is, whatever its kind.
    let opted_out = daemonset.replace(
        "  name: node-agent\n",
        "  name: node-agent\n  annotations:\n    meshgov.io/inject: disabled\n",
    );
    assert_eq!(inject_text(&opted_out, &["--product", "d/p"]), opted_out);
    let job = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: j\n  annotations: {meshgov.io/inject: disabled}\nspec: {}\n";
    assert_eq!(inject_text(job, &[]), job);
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: d}\n";
    assert_eq!(
        refused(list, &["--product", "d/p"]),
        "<stdin>:4:3: error: document 1: a `List` holding a `Deployment` (item 1) is not supported: put each object in its own document (`---`)\n\
         meshgov: 1 document refused; nothing was written\n"
    );
    let old = "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata:\n  name: d\n";
    assert_eq!(
        refused(old, &["--product", "d/p"]),
        "<stdin>:1:13: error: document 1: `Deployment` `d` has apiVersion `extensions/v1beta1`; inject supports `apps/v1`\n\
         meshgov: 1 document refused; nothing was written\n"
    );
}

#[test]
fn refuses_malformed_yaml_with_its_position() {
    let text =
        format!("{SERVICE}---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: [d\n");
    assert_eq!(
        refused(&text, &[]),
        "<stdin>:9:9: error: document 2: malformed YAML: unclosed bracket '['\n\
         meshgov: 1 document refused; nothing was written\n"
    );
    let dup = "apiVersion: apps/v1\nkind: Deployment\nkind: Job\n";
    assert_eq!(
        refused(dup, &[]),
        "<stdin>:3:1: error: document 1: malformed YAML: duplicate key `kind`\n\
         meshgov: 1 document refused; nothing was written\n"
    );
    assert_eq!(
        refused("- a\n- b\n", &[]),
        "<stdin>:1:1: error: document 1: not a Kubernetes object (expected a mapping with `apiVersion` and `kind`)\n\
         meshgov: 1 document refused; nothing was written\n"
    );
}

const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  annotations:\n    meshgov.io/product: users/user-profiles\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: b\n        ports:\n        - containerPort: 15180\n";

#[test]
fn refuses_workloads_it_cannot_inject_safely() {
    let no_product = DEPLOYMENT.replace(
        "  annotations:\n    meshgov.io/product: users/user-profiles\n",
        "",
    );
    assert_eq!(
        refused(&no_product, &[]),
        "<stdin>:2:7: error: document 1: `Deployment` `web` names no product: pass `--product domain/name` or annotate it `meshgov.io/product: domain/name`\n\
         meshgov: 1 document refused; nothing was written\n"
    );
    assert_eq!(
        refused(DEPLOYMENT, &["--product", "users/other"]),
        "<stdin>:6:25: error: document 1: `Deployment` `web` is annotated `meshgov.io/product: users/user-profiles` but `--product` is `users/other`; make them agree\n\
         meshgov: 1 document refused; nothing was written\n"
    );
    assert_eq!(
        refused(DEPLOYMENT, &[]),
        "<stdin>:14:11: error: document 1: `Deployment` `web`: container `app` already uses port 15180, which the sidecar needs; choose another with `--data-port`\n\
         meshgov: 1 document refused; nothing was written\n"
    );
    let out = inject_text(DEPLOYMENT, &["--data-port", "8090"]);
    assert!(out.contains("value: \"0.0.0.0:8090\"\n"));
    let scalar_annotations = DEPLOYMENT
        .replace("    meshgov.io/product: users/user-profiles\n", "")
        .replace("  annotations:\n", "  annotations: none\n");
    assert_eq!(
        refused(
            &scalar_annotations,
            &["--product", "a/b", "--data-port", "8090"]
        ),
        "<stdin>:5:16: error: document 1: `Deployment` `web`: expected a mapping at `metadata.annotations`\n\
         meshgov: 1 document refused; nothing was written\n"
    );
    let job = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: j\nspec:\n  template:\n    spec:\n      containers:\n      - name: work\n      - name: meshgov-sidecar\n";
    assert_eq!(
        refused(job, &["--product", "a/b"]),
        "<stdin>:10:9: error: document 1: `Job` `j`: `meshgov-sidecar` is in `containers`, but this kind's pods run to completion, so the sidecar must be an init container with `restartPolicy: Always`; remove it and inject again\n\
         meshgov: 1 document refused; nothing was written\n"
    );
    let aliased = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  annotations: &shared\n    meshgov.io/product: a/b\nspec:\n  template:\n    metadata:\n      annotations: *shared\n    spec:\n      containers:\n      - name: app\n        image: b\n";
    assert_eq!(
        refused(aliased, &[]),
        "<stdin>:6:5: error: document 1: `Deployment` `web`: `metadata.annotations` is a YAML anchor or alias; expand it so inject can edit it\n\
         meshgov: 1 document refused; nothing was written\n"
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = inject(&["-f", "/nonexistent/deploy.yaml"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).starts_with("meshgov: cannot read `/nonexistent/deploy.yaml`: "));
    let out = inject(
        &["-f", "-", "--engine", "https://engine:7600"],
        Some(DEPLOYMENT),
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "meshgov: --engine: expected an `http://host:port` URL (the sidecar's `engine.url`), got `https://engine:7600`\n"
    );
    let out = inject(&["-f", "-", "--product", "nodomain"], Some(DEPLOYMENT));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("product `nodomain` is not `domain/name`"));
}

#[test]
fn documents_without_workloads_are_echoed() {
    let text =
        "# only comments\n---\napiVersion: v1\nkind: ConfigMap  # kept\nmetadata: {name: c}\n...\n";
    assert_eq!(inject_text(text, &[]), text);
    assert_eq!(inject_text("", &[]), "");
}

#[test]
fn injected_manifests_match_the_kubernetes_schemas() {
    let Some(validator) = k8s::kubernetes_validate() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (name, text) in [
        ("manifest.yaml", injected_manifest()),
        ("more.yaml", read("more.injected.yaml")),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        files.push(path);
    }
    // Native sidecars (restartable init containers) need Kubernetes 1.29.
    for version in ["1.29.0", "1.35.0"] {
        let out = Command::new(&validator)
            .args(["--strict", "--kubernetes-version", version])
            .args(&files)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "Kubernetes {version}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And the check can fail: a string port is refused.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        injected_manifest().replace("containerPort: 15181", "containerPort: \"15181\""),
    )
    .unwrap();
    let out = Command::new(&validator)
        .args(["--strict", "--kubernetes-version", "1.35.0"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// The pod templates of a workload document, with where they are.
fn pod_templates(doc: &serde_json::Value) -> Vec<&serde_json::Value> {
    match doc["kind"].as_str() {
        Some("Deployment" | "StatefulSet" | "Job" | "ReplicaSet") => vec![&doc["spec"]["template"]],
        Some("CronJob") => vec![&doc["spec"]["jobTemplate"]["spec"]["template"]],
        _ => vec![],
    }
}

/// The sidecar containers of a pod template, wherever they are.
fn sidecars_of(template: &serde_json::Value) -> Vec<&serde_json::Value> {
    let spec = &template["spec"];
    ["containers", "initContainers"]
        .iter()
        .flat_map(|l| spec[*l].as_array().into_iter().flatten())
        .filter(|c| c["name"] == "meshgov-sidecar")
        .collect()
}

/// The corpus file with its ReplicaSets annotated to be left alone.
fn opt_out_replicasets(text: &str) -> String {
    text.replace(
        "kind: ReplicaSet\nmetadata:\n",
        "kind: ReplicaSet\nmetadata:\n  annotations:\n    meshgov.io/inject: disabled\n",
    )
    .replace(
        "kind: ReplicaSet\nmetadata:\n  annotations:\n    meshgov.io/inject: disabled\n  name: frontend\n  annotations:\n",
        "kind: ReplicaSet\nmetadata:\n  name: frontend\n  annotations:\n    meshgov.io/inject: disabled\n",
    )
}

/// Every workload of eleven manifests from public projects gets one
/// sidecar that passes the `restricted` Pod Security profile, with the
/// scrape annotations; the results are stable and match the schemas.
#[test]
fn injects_every_manifest_of_the_public_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut workloads = 0;
    for path in k8s::corpus() {
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        let product = format!("corpus/{stem}");
        let args = ["--product", &product, "--engine", ENGINE, "--image", IMAGE];
        let mut all = vec!["-f", path.to_str().unwrap()];
        all.extend_from_slice(&args);
        let out = inject(&all, None);
        let text = if stem == "argoapps-sync-waves" {
            // Its ReplicaSets are refused, with what to do instead.
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{err}");
            assert_eq!(err.matches("`ReplicaSet`").count(), 2, "{err}");
            assert!(err.contains(": `ReplicaSet` `backend` is not supported: inject the Deployment that manages it; or annotate it `meshgov.io/inject: disabled`"), "{err}");
            let source = std::fs::read_to_string(&path).unwrap();
            inject_text(&opt_out_replicasets(&source), &args)
        } else {
            ok(&out)
        };
        assert!(
            inject_text(&text, &args) == text,
            "{stem}: a second run changed it"
        );
        for doc in yaml_docs(&text) {
            for template in pod_templates(&doc) {
                let what = format!("{stem}: {} {}", doc["kind"], doc["metadata"]["name"]);
                let sidecars = sidecars_of(template);
                if doc["kind"] == "ReplicaSet" {
                    assert!(sidecars.is_empty(), "{what}");
                    continue;
                }
                workloads += 1;
                assert_eq!(sidecars.len(), 1, "{what}");
                k8s::assert_restricted(sidecars[0], &what);
                let ports: Vec<_> = sidecars[0]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["containerPort"].as_u64().unwrap())
                    .collect();
                assert_eq!(ports, [15180, 15181, 15190], "{what}");
                let annotations = &template["metadata"]["annotations"];
                assert_eq!(annotations["prometheus.io/port"], "15190", "{what}");
                assert_eq!(
                    annotations["meshgov.io/product"],
                    product.as_str(),
                    "{what}"
                );
            }
        }
        files.extend(k8s::write_for_validation(
            dir.path(),
            &stem,
            &yaml_docs(&text),
        ));
    }
    // 4 Jobs, a CronJob, 3 StatefulSets and 7 Deployments.
    assert_eq!(workloads, 15);
    if let Some(validator) = k8s::kubernetes_validate() {
        k8s::validate(&validator, &files).unwrap();
    }
}

/// The defaults before the 15000s, 8080 and 8081, clash with two of the
/// corpus's manifests; inject names the container, the port and the flag.
#[test]
fn a_port_clash_is_refused_naming_the_container_and_the_flag() {
    let mut refused = Vec::new();
    for path in k8s::corpus() {
        let out = inject(
            &[
                "-f",
                path.to_str().unwrap(),
                "--product",
                "c/p",
                "--data-port",
                "8080",
                "--control-port",
                "8081",
            ],
            None,
        );
        let err = stderr(&out);
        for line in err.lines().filter(|l| l.contains("already uses port")) {
            refused.push(line.split_once(": error: ").unwrap().1.to_string());
        }
    }
    assert_eq!(
        refused,
        [
            "document 1: `Deployment` `argocd-repo-server`: container `argocd-repo-server` already uses port 8081, which the sidecar needs; choose another with `--control-port`",
            "document 1: `Deployment` `prometheus-operator`: container `prometheus-operator` already uses port 8080, which the sidecar needs; choose another with `--data-port`",
        ]
    );
    // The metrics port too, and two of the sidecar's own ports may not agree.
    let text = DEPLOYMENT.replace("containerPort: 15180", "containerPort: 9100");
    assert!(
        refused_text(&text, &["--metrics-port", "9100"])
            .contains("container `app` already uses port 9100, which the sidecar needs; choose another with `--metrics-port`")
    );
    let out = inject(&["-f", "-", "--metrics-port", "15180"], Some(&text));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "meshgov: --data-port and --metrics-port are both 15180; the sidecar needs a port for each\n"
    );
}

fn refused_text(text: &str, args: &[&str]) -> String {
    refused(text, args)
}

/// An application that announces its own metrics keeps its annotations;
/// inject says where the sidecar's are instead.
#[test]
fn the_applications_own_scrape_annotations_are_kept() {
    let text = DEPLOYMENT
        .replace("containerPort: 15180", "containerPort: 9090")
        .replace(
            "  template:\n    spec:\n",
            "  template:\n    metadata:\n      annotations:\n        prometheus.io/scrape: \"true\"\n        prometheus.io/port: \"9090\"\n    spec:\n",
        );
    let mut child = inject(&["-f", "-"], Some(&text));
    let out = ok(&child);
    assert!(
        out.contains("        prometheus.io/port: \"9090\"\n"),
        "{out}"
    );
    assert!(!out.contains("15190\"\n        prometheus"), "{out}");
    assert!(!out.contains("prometheus.io/path"), "{out}");
    let notes = stderr(&child);
    assert!(notes.contains("is annotated `prometheus.io/port: 9090` for the application's own metrics, so the sidecar's metrics (port 15190, `meshgov-metrics`, at /metrics) are not announced by annotations; scrape them with a PodMonitor"), "{notes}");
    // And again, nothing changes.
    child = inject(&["-f", "-"], Some(&out));
    assert!(ok(&child) == out);
}

/// `--emit-config` writes the ConfigMap and the Secret template the
/// injected pods mount: the names, keys and paths inject references.
#[test]
fn emit_config_writes_what_the_injected_pods_mount() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = yaml_docs(&read("manifest.yaml"));
    let data = &manifest[0]["data"];
    let config = dir.path().join("sidecar.toml");
    std::fs::write(&config, data["sidecar.toml"].as_str().unwrap()).unwrap();
    std::fs::write(
        dir.path().join("user-profiles.yaml"),
        data["user-profiles.yaml"].as_str().unwrap(),
    )
    .unwrap();
    let out = inject(
        &[
            "--emit-config",
            config.to_str().unwrap(),
            "--product",
            "users/user-profiles",
        ],
        None,
    );
    let emitted = ok(&out);
    let docs = yaml_docs(&emitted);
    assert_eq!(docs.len(), 2, "{emitted}");
    let (cm, secret) = (&docs[0], &docs[1]);
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(secret["kind"], "Secret");
    // The files, byte for byte.
    assert_eq!(cm["data"]["sidecar.toml"], data["sidecar.toml"]);
    assert_eq!(cm["data"]["user-profiles.yaml"], data["user-profiles.yaml"]);
    assert_eq!(
        secret["stringData"],
        serde_json::json!({"user-identity.key": ""}),
        "{emitted}"
    );

    // What inject mounts for the same product.
    let injected = yaml_docs(&injected_manifest());
    let pod = &injected[1]["spec"]["template"]["spec"];
    let volume = |name: &str| {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        volume("meshgov-config")["configMap"]["name"],
        cm["metadata"]["name"]
    );
    assert_eq!(
        volume("meshgov-keys")["secret"]["secretName"],
        secret["metadata"]["name"]
    );
    let sidecar = sidecars_of(&injected[1]["spec"]["template"])[0];
    let mount = |name: &str| {
        sidecar["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()["mountPath"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // The config file the sidecar is started with is a key of the ConfigMap,
    // and the key file the config names is a key of the Secret.
    let config_arg = sidecar["args"][1].as_str().unwrap();
    let (config_dir, config_file) = config_arg.rsplit_once('/').unwrap();
    assert_eq!(config_dir, mount("meshgov-config"));
    assert!(cm["data"][config_file].is_string());
    assert!(
        data["sidecar.toml"]
            .as_str()
            .unwrap()
            .contains(&format!("\"{}/user-identity.key\"", mount("meshgov-keys")))
    );

    // Both match the schemas.
    if let Some(validator) = k8s::kubernetes_validate() {
        let file = dir.path().join("emitted.yaml");
        std::fs::write(&file, &emitted).unwrap();
        k8s::validate(&validator, &[file]).unwrap();
    }

    // A file outside the two mounted directories is refused.
    std::fs::write(
        &config,
        "descriptor = \"p.yaml\"\n[pseudonym_keys]\nk = { file = \"/var/keys/k.key\" }\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("p.yaml"), "id: p\n").unwrap();
    let out = inject(
        &[
            "--emit-config",
            config.to_str().unwrap(),
            "--product",
            "d/p",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "`pseudonym_keys.k.file` names `/var/keys/k.key`, which an injected pod does not have"
        ),
        "{}",
        stderr(&out)
    );
}
