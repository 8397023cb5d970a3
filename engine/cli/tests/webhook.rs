//! The admission webhook of `meshgov serve`, as the API server calls it:
//! real `AdmissionReview` v1 bodies over HTTPS (curl, verifying a
//! certificate made with openssl), the JSON Patch applied to the pod, and
//! the patched pods validated with `kubernetes-validate` — for every pod
//! template of the corpus of public manifests.
//!
//! `openssl` and `curl` are Debian packages `.ci/setup` installs; without

//! them the test is skipped with a message, except in CI (`CI` set).

use base64::Engine as _;
use meshgov_e2e::{Process, Signal, copy_dir, free_addrs, repo_root};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::k8s;

const IMAGE: &str = "ghcr.io/meshgov/sidecar:0.1.0-test";
const ENGINE: &str = "http://meshgov-engine.meshgov-system.svc:7600";

fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        || Command::new(tool)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing; `.ci/setup` installs it"
        );
        eprintln!("skipped: {tool} not found (run .ci/setup)");
    }
    ok
}

struct Engine {
    process: Process,
    webhook: String,
    dir: tempfile::TempDir,
}

impl Engine {
    fn start() -> Engine {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        copy_dir(&repo_root().join("policies"), &d.join("policies")).unwrap();
        let k = Command::new(env!("CARGO_BIN_EXE_meshgov"))
            .args(["keygen", "--out"])
            .arg(d.join("guild"))
            .output()
            .unwrap();
        assert!(k.status.success());
        let (cert, key) = k8s::make_cert(d, "webhook");
        let [api, webhook] = free_addrs().unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_meshgov"));
        c.arg("serve")
            .arg("--policies")
            .arg(d.join("policies"))
            .arg("--key")
            .arg(d.join("guild"))
            .args(["--open-registration", "--listen", &api.to_string()])
            .args(["--webhook-listen", &webhook.to_string()])
            .arg("--webhook-cert")
            .arg(&cert)
            .arg("--webhook-key")
            .arg(&key)
            .args(["--inject-engine", ENGINE, "--inject-image", IMAGE]);
        let process = Process::spawn(&mut c, &d.join("stderr.log")).unwrap();
        // Listening once it says so (and the TCP port accepts).
        let t0 = std::time::Instant::now();
        while !(process.stderr().contains("admission webhook on https://")
            && std::net::TcpStream::connect(webhook).is_ok())
        {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{}",
                process.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Engine {
            process,
            webhook: format!("https://{webhook}"),
            dir,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("webhook.crt")
    }

    /// POSTs `body` to `path` with curl, trusting `ca`: the HTTP status and
    /// body, or curl's exit code and message.
    fn call_with(
        &self,
        ca: &Path,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String), (i32, String)> {
        let mut child = Command::new("curl")
            .args(["-sS", "-X", method, "--cacert"])
            .arg(ca)
            .args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "@-",
            ])
            .args(["-w", "\n%{http_code}"])
            .arg(format!("{}{path}", self.webhook))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            return Err((
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        Ok((code.parse().unwrap(), body.to_string()))
    }

    /// Sends an AdmissionReview for `request`; the `response`.
    fn review(&self, request: Value) -> Value {
        let uid = request["uid"].clone();
        let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request});
        let (status, text) = self
            .call_with(&self.ca(), "POST", "/mutate", &body.to_string())
            .unwrap();
        assert_eq!(status, 200, "{text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["uid"], uid);
        answer["response"].clone()
    }
}

/// An AdmissionReview request creating `pod` in `namespace`.
fn create(pod: &Value, namespace: &str, n: usize) -> Value {
    json!({
        "uid": format!("705ab4f5-6393-11e8-b7cc-42010a8000{n:02}"),
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "name": pod["metadata"]["name"].as_str().unwrap_or(""),
        "namespace": namespace,
        "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": ["system:serviceaccounts"]},
        "object": pod,
        "oldObject": null,
        "dryRun": false,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
    })
}

/// The pod a controller makes from a workload's template.
fn pod_of(doc: &Value, template: &Value, product: &str) -> Value {
    let mut metadata = template["metadata"].clone();
    if !metadata.is_object() {
        metadata = json!({});
    }
    let name = doc["metadata"]["name"]
        .as_str()
        .or(doc["metadata"]["generateName"].as_str())
        .unwrap();
    metadata["generateName"] = json!(format!("{name}-"));
    metadata["namespace"] = json!("shop");
    if !metadata["annotations"].is_object() {
        metadata["annotations"] = json!({});
    }
    metadata["annotations"]["meshgov.io/product"] = json!(product);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
}

fn pod_templates(doc: &Value) -> Vec<&Value> {
    match doc["kind"].as_str() {
        Some("Deployment" | "StatefulSet" | "Job" | "ReplicaSet") => vec![&doc["spec"]["template"]],
        Some("CronJob") => vec![&doc["spec"]["jobTemplate"]["spec"]["template"]],
        _ => vec![],
    }
}

/// Applies JSON Patch (RFC 6902) `add`, `replace` and `remove` operations.
fn apply(doc: &mut Value, ops: &[Value]) {
    for op in ops {
        let path = op["path"].as_str().unwrap();
        let tokens: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        let (last, parents) = tokens.split_last().unwrap();
        let mut target = &mut *doc;
        for t in parents {
            target = match target {
                Value::Object(m) => m.get_mut(t).unwrap(),
                Value::Array(a) => &mut a[t.parse::<usize>().unwrap()],
                _ => panic!("{path}: not a container"),
            };
        }
        let kind = op["op"].as_str().unwrap();
        match (kind, target) {
            ("add" | "replace", Value::Object(m)) => {
                if kind == "replace" {
                    assert!(m.contains_key(last), "replace of a missing {path}");
                }
                m.insert(last.clone(), op["value"].clone());
            }
            ("add", Value::Array(a)) if last == "-" => a.push(op["value"].clone()),
            ("add", Value::Array(a)) => a.insert(last.parse().unwrap(), op["value"].clone()),
            ("replace", Value::Array(a)) => a[last.parse::<usize>().unwrap()] = op["value"].clone(),
            ("remove", Value::Object(m)) => {
                m.remove(last).unwrap();
            }
            ("remove", Value::Array(a)) => {
                a.remove(last.parse().unwrap());
            }
            (other, _) => panic!("unexpected op {other} at {path}"),
        }
    }
}

fn decode_patch(response: &Value) -> Vec<Value> {
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn sidecar(pod_spec: &Value) -> (String, Value) {
    for list in ["containers", "initContainers"] {
        if let Some(c) = pod_spec[list]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == "meshgov-sidecar"))
        {
            return (list.to_string(), c.clone());
        }
    }
    panic!("no sidecar in {pod_spec}");
}

/// `meshgov inject` of a corpus file with the webhook's options.
fn cli_inject(path: &Path, product: &str) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_meshgov"))
        .args(["inject", "-f"])
        .arg(path)
        .args(["--product", product, "--engine", ENGINE, "--image", IMAGE])
        .output()
        .unwrap();
    if !out.status.success() {
        return Vec::new();
    }
    serde_saphyr::from_multiple::<Value>(&String::from_utf8(out.stdout).unwrap()).unwrap()
}

#[test]
fn the_webhook_injects_every_pod_of_the_corpus_over_tls() {
    if !(have("openssl") && have("curl")) {
        return;
    }
    let mut engine = Engine::start();
    let out_dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut n = 0;
    for path in k8s::corpus() {
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        let product = format!("corpus/{stem}");
        let text = std::fs::read_to_string(&path).unwrap();
        let docs = serde_saphyr::from_multiple::<Value>(&text).unwrap();
        let by_cli = cli_inject(&path, &product);
        for (i, doc) in docs.iter().enumerate() {
            for template in pod_templates(doc) {
                n += 1;
                let what = format!("{stem} document {}", i + 1);
                let mut pod = pod_of(doc, template, &product);
                let response = engine.review(create(&pod, "shop", n));
                let ops = decode_patch(&response);
                apply(&mut pod, &ops);
                let (list, container) = sidecar(&pod["spec"]);
                k8s::assert_restricted(&container, &what);
                let runs_to_completion = matches!(
                    template["spec"]["restartPolicy"].as_str(),
                    Some("Never" | "OnFailure")
                );
                if runs_to_completion {
                    assert_eq!(list, "initContainers", "{what}");
                    assert_eq!(container["restartPolicy"], "Always", "{what}");
                } else {
                    assert_eq!(list, "containers", "{what}");
                }
                let annotations = &pod["metadata"]["annotations"];
                assert_eq!(annotations["meshgov.io/injected"], "true", "{what}");
                assert_eq!(annotations["prometheus.io/port"], "15190", "{what}");
                assert_eq!(
                    pod["metadata"]["labels"]["meshgov.io/injected"], "true",
                    "{what}"
                );
                // The same container as `meshgov inject` writes into the workload.
                if let Some(injected) = by_cli.get(i) {
                    let cli_template = pod_templates(injected)[0];
                    assert_eq!(sidecar(&cli_template["spec"]).1, container, "{what}");
                }
                // An injected pod sent again (a reinvocation) is left alone.
                let again = engine.review(create(&pod, "shop", n));
                assert_eq!(again["allowed"], true);
                assert!(again["patch"].is_null(), "{what}: {again}");

                files.extend(k8s::write_for_validation(
                    out_dir.path(),
                    &format!("{stem}-{}", i + 1),
                    std::slice::from_ref(&pod),
                ));
            }
        }
    }
    // Every workload of the corpus, the two ReplicaSets included.
    assert_eq!(n, 17);
    if let Some(validator) = k8s::kubernetes_validate() {
        k8s::validate(&validator, &files).unwrap();
    }
    engine.process.signal(Signal::SIGTERM).unwrap();
    assert_eq!(
        engine.process.wait_exit(Duration::from_secs(20)).unwrap(),
        Some(0),
        "{}",
        engine.process.stderr()
    );
}

const POD: &str = r#"{"apiVersion": "v1", "kind": "Pod",
  "metadata": {"name": "web", "namespace": "shop", "annotations": {"meshgov.io/product": "users/user-profiles"}},
  "spec": {"containers": [{"name": "app", "image": "registry.example/app:1", "ports": [{"containerPort": 8080}]}]}}"#;

#[test]
fn the_webhook_answers_what_it_cannot_inject() {
    if !(have("openssl") && have("curl")) {
        return;
    }
    let mut engine = Engine::start();
    let pod: Value = serde_json::from_str(POD).unwrap();

    // A pod naming no product is refused, with what to do.
    let mut anonymous = pod.clone();
    anonymous["metadata"]["annotations"] = json!({});
    let r = engine.review(create(&anonymous, "shop", 1));
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 403);
    assert_eq!(
        r["status"]["message"],
        "pod `web` in namespace `shop` names no data product, and its namespace has meshgov injection enabled: annotate the pod template `meshgov.io/product: domain/name`, or `meshgov.io/inject: disabled` to run it without the sidecar"
    );

    // A clash with the sidecar's ports names the container and the flag.
    let mut clash = pod.clone();
    clash["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(15181);
    let r = engine.review(create(&clash, "shop", 2));
    assert_eq!(r["allowed"], false);
    assert_eq!(
        r["status"]["message"],
        "pod `web` in namespace `shop`: container `app` already uses port 15181, which the sidecar needs; choose another with `--inject-control-port`"
    );

    // Opted out, by annotation or label: allowed unchanged.
    for (kind, key) in [("annotations", "a"), ("labels", "l")] {
        let mut out = pod.clone();
        out["metadata"][kind] =
            json!({"meshgov.io/inject": "disabled", "meshgov.io/product": "users/user-profiles"});
        let r = engine.review(create(&out, "shop", 3));
        assert_eq!(r["allowed"], true, "{key}");
        assert!(r["patch"].is_null(), "{key}: {r}");
    }

    // Not a pod creation: allowed unchanged.
    let mut update = create(&pod, "shop", 4);
    update["operation"] = json!("UPDATE");
    let r = engine.review(update);
    assert_eq!(r["allowed"], true);
    assert!(r["patch"].is_null());
    let mut deployment = create(&pod, "shop", 5);
    deployment["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    deployment["resource"] = json!({"group": "apps", "version": "v1", "resource": "deployments"});
    assert!(engine.review(deployment)["patch"].is_null());

    // A dry run is answered as the real thing (no side effects).
    let mut dry = create(&pod, "shop", 6);
    dry["dryRun"] = json!(true);
    let real = engine.review(create(&pod, "shop", 6));
    assert_eq!(engine.review(dry)["patch"], real["patch"]);
    assert!(real["patch"].is_string());
    assert!(real["warnings"].is_null(), "{real}");

    // A pod announcing its own metrics keeps its annotations, and the
    // user is told where the sidecar's are.
    let mut scraped = pod.clone();
    scraped["metadata"]["annotations"]["prometheus.io/port"] = json!("8080");
    let r = engine.review(create(&scraped, "shop", 9));
    let mut patched = scraped.clone();
    apply(&mut patched, &decode_patch(&r));
    assert_eq!(
        patched["metadata"]["annotations"]["prometheus.io/port"],
        "8080"
    );
    assert!(patched["metadata"]["annotations"]["prometheus.io/scrape"].is_null());
    assert_eq!(
        r["warnings"],
        json!([
            "pod `web` in namespace `shop`: the pod is annotated `prometheus.io/port: 8080` for the application's own metrics, so the sidecar's metrics (port 15190, `meshgov-metrics`, at /metrics) are not announced by annotations; scrape them with a PodMonitor"
        ])
    );

    // A malformed pod is a 400 in the review.
    let mut bad = pod.clone();
    bad["metadata"]["labels"] = json!("x");
    let r = engine.review(create(&bad, "shop", 7));
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 400);
    assert_eq!(
        r["status"]["message"],
        "pod `web` in namespace `shop`: expected a mapping at `metadata.labels`"
    );

    // Not an AdmissionReview v1: HTTP 400, and the API server applies failurePolicy.
    let ca = engine.ca();
    let (status, body) = engine.call_with(&ca, "POST", "/mutate", "{").unwrap();
    assert_eq!(status, 400, "{body}");
    let v1beta1 = json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": create(&pod, "shop", 8)});
    let (status, body) = engine
        .call_with(&ca, "POST", "/mutate", &v1beta1.to_string())
        .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("admissionReviewVersions: [v1]"), "{body}");
    assert_eq!(engine.call_with(&ca, "GET", "/mutate", "").unwrap().0, 405);
    assert_eq!(
        engine.call_with(&ca, "POST", "/v1/fleet", "{}").unwrap().0,
        404
    );

    // TLS: a client that does not trust the certificate gets no answer
    // (curl: 60, peer certificate cannot be authenticated).
    let stranger = k8s::make_cert(engine.dir.path(), "stranger").0;
    assert_eq!(
        engine
            .call_with(&stranger, "POST", "/mutate", "{}")
            .unwrap_err()
            .0,
        60
    );

    // A rotated certificate is served without a restart, and the old one
    // no more.
    let d = engine.dir.path().to_path_buf();
    let original = d.join("original.crt");
    std::fs::copy(&ca, &original).unwrap();
    let (cert, key) = k8s::make_cert(&d, "rotated");
    std::thread::sleep(Duration::from_millis(20));
    std::fs::copy(&key, d.join("webhook.key")).unwrap();
    std::fs::copy(&cert, d.join("webhook.crt")).unwrap();
    assert_eq!(
        engine.call_with(&cert, "POST", "/mutate", "{").unwrap().0,
        400,
        "{}",
        engine.process.stderr()
    );
    assert_eq!(
        engine
            .call_with(&original, "POST", "/mutate", "{")
            .unwrap_err()
            .0,
        60
    );
    assert!(engine.process.stderr().contains("TLS certificate reloaded"));

    engine.process.signal(Signal::SIGTERM).unwrap();
    assert_eq!(
        engine.process.wait_exit(Duration::from_secs(20)).unwrap(),
        Some(0)
    );
}
