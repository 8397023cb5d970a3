//! `deploy/`: the kustomize manifests of the engine, rendered with
//! `kubectl kustomize` and validated with `kubernetes-validate` (both
//! installed by `.ci/setup`; see `k8s/mod.rs`), and checked to fit
//! together: the webhook reaches the engine's webhook listener, the
//! Secrets and ConfigMaps the engine mounts are the ones the flags name,

//! the NetworkPolicies name ports that exist, and every flag exists.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::k8s;

fn deploy_dir(rel: &str) -> PathBuf {
    meshgov_e2e::repo_root().join("deploy").join(rel)
}

/// `kubectl kustomize DIR`, as documents.
fn render(kubectl: &Path, dir: &str) -> Vec<Value> {
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(deploy_dir(dir))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple::<Value>(&String::from_utf8(out.stdout).unwrap()).unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn args_of(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn flag<'a>(args: &'a [String], name: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a == name)
        .unwrap_or_else(|| panic!("no {name} in {args:?}"));
    &args[i + 1]
}

/// The volume of `spec` mounted at the directory holding `path`.
fn volume_for<'a>(spec: &'a Value, container: &Value, path: &str) -> &'a Value {
    let dir = Path::new(path).parent().unwrap();
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| Path::new(m["mountPath"].as_str().unwrap()) == dir)
        .unwrap_or_else(|| panic!("nothing mounted at {}", dir.display()));
    spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap()
}

#[test]
fn the_base_renders_validates_and_fits_together() {
    let Some(kubectl) = k8s::kubectl() else {
        return;
    };
    let docs = render(&kubectl, "base");
    let mut kinds: Vec<_> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "Deployment",
            "MutatingWebhookConfiguration",
            "Namespace",
            "NetworkPolicy",
            "Secret",
            "Secret",
            "Service",
            "ServiceAccount"
        ]
    );
    for d in &docs {
        if d["kind"] != "Namespace" && d["kind"] != "MutatingWebhookConfiguration" {
            assert_eq!(d["metadata"]["namespace"], "meshgov-system", "{d}");
        }
    }

    // The engine: this release's image, the restricted profile.
    let deployment = find(&docs, "Deployment", "meshgov-engine");
    let spec = &deployment["spec"]["template"]["spec"];
    let engine = &spec["containers"][0];
    assert_eq!(
        engine["image"],
        format!("ghcr.io/meshgov/meshgov:{}", env!("CARGO_PKG_VERSION"))
    );
    k8s::assert_restricted_in(engine, &spec["securityContext"], "engine");
    assert_eq!(engine["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(spec["automountServiceAccountToken"], false);
    let sa = find(&docs, "ServiceAccount", "meshgov-engine");
    assert_eq!(spec["serviceAccountName"], sa["metadata"]["name"]);

    // Every flag exists: clap refuses an unknown one before printing help.
    let args = args_of(engine);
    assert_eq!(args[0], "serve");
    let help = Command::new(env!("CARGO_BIN_EXE_meshgov"))
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        help.status.success(),
        "{}",
        String::from_utf8_lossy(&help.stderr)
    );

    // The key files the flags name are in the Secrets the base ships.
    for (f, secret) in [
        ("--key", "meshgov-engine-keys"),
        ("--registration-token-file", "meshgov-engine-keys"),
        ("--webhook-cert", "meshgov-webhook-tls"),
        ("--webhook-key", "meshgov-webhook-tls"),
    ] {
        let v = volume_for(spec, engine, flag(&args, f));
        assert_eq!(v["secret"]["secretName"], secret, "{f}");
        find(&docs, "Secret", secret);
    }
    // The policy repository: mesh.toml and each directory from ConfigMaps.
    let policies = flag(&args, "--policies");
    let mounts = engine["volumeMounts"].as_array().unwrap();
    for dir in [
        "access",
        "anonymization",
        "privacy",
        "standards",
        "plugins",
        "tests",
        "products",
    ] {
        let at = format!("{policies}/{dir}");
        let m = mounts
            .iter()
            .find(|m| m["mountPath"] == at.as_str())
            .unwrap();
        let v = volume_for(spec, engine, &format!("{at}/x"));
        assert_eq!(v["name"], m["name"]);
        assert_eq!(v["configMap"]["name"], format!("meshgov-policies-{dir}"));
        assert_eq!(v["configMap"]["optional"], true);
    }
    let mesh = mounts
        .iter()
        .find(|m| m["mountPath"] == format!("{policies}/mesh.toml").as_str())
        .unwrap();
    assert_eq!(mesh["subPath"], "mesh.toml");

    // The webhook reaches the engine's webhook listener.
    let hook = &find(
        &docs,
        "MutatingWebhookConfiguration",
        "meshgov-sidecar-injector",
    )["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["admissionReviewVersions"], serde_json::json!(["v1"]));
    assert_eq!(hook["rules"][0]["resources"], serde_json::json!(["pods"]));
    assert_eq!(
        hook["rules"][0]["operations"],
        serde_json::json!(["CREATE"])
    );
    let selector = hook["namespaceSelector"]["matchExpressions"]
        .as_array()
        .unwrap();
    assert!(selector.contains(
        &serde_json::json!({"key": "meshgov.io/inject", "operator": "In", "values": ["enabled"]})
    ));
    let svc_ref = &hook["clientConfig"]["service"];
    assert_eq!(svc_ref["path"], "/mutate");
    let service = find(&docs, "Service", svc_ref["name"].as_str().unwrap());
    assert_eq!(service["metadata"]["namespace"], svc_ref["namespace"]);
    let port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == svc_ref["port"])
        .unwrap();
    let container_port = |name: &Value| {
        engine["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == *name)
            .unwrap()["containerPort"]
            .as_u64()
            .unwrap()
    };
    let webhook_port = container_port(&port["targetPort"]);
    assert!(flag(&args, "--webhook-listen").ends_with(&format!(":{webhook_port}")));
    for p in service["spec"]["ports"].as_array().unwrap() {
        container_port(&p["targetPort"]);
    }
    assert!(
        service["spec"]["selector"]
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| deployment["spec"]["template"]["metadata"]["labels"][k] == *v)
    );
    // Injected sidecars register with this Service.
    assert_eq!(
        flag(&args, "--inject-engine"),
        format!(
            "http://{}.{}.svc:{}",
            service["metadata"]["name"].as_str().unwrap(),
            service["metadata"]["namespace"].as_str().unwrap(),
            container_port(&serde_json::json!("api"))
        )
    );

    // The NetworkPolicy opens the engine's two ports, and no others.
    let netpol = find(&docs, "NetworkPolicy", "meshgov-engine");
    let mut opened: Vec<u64> = netpol["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["ports"].as_array().unwrap().iter())
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    opened.sort();
    let mut declared: Vec<u64> = engine["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    declared.sort();
    assert_eq!(opened, declared);

    if let Some(validator) = k8s::kubernetes_validate() {
        let dir = tempfile::tempdir().unwrap();
        let files = k8s::write_for_validation(dir.path(), "base", &docs);
        k8s::validate(&validator, &files).unwrap();
    }
}

#[test]
fn the_git_sync_example_replaces_the_configmaps() {
    let Some(kubectl) = k8s::kubectl() else {
        return;
    };
    let docs = render(&kubectl, "examples/git-sync");
    let spec = &find(&docs, "Deployment", "meshgov-engine")["spec"]["template"]["spec"];
    let engine = &spec["containers"][0];
    let args = args_of(engine);
    let git_sync = &spec["initContainers"][0];
    assert_eq!(git_sync["name"], "git-sync");
    // A native sidecar, ready once the first clone is there.
    assert_eq!(git_sync["restartPolicy"], "Always");
    assert_eq!(git_sync["startupProbe"]["httpGet"]["port"], "git-sync");
    k8s::assert_restricted_in(git_sync, &spec["securityContext"], "git-sync");
    let env = |name: &str| {
        git_sync["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap()["value"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        env("GITSYNC_REPO"),
        "https://github.com/example-org/governance-policies.git"
    );
    // The engine reads the link git-sync keeps pointing at the checkout.
    assert_eq!(
        flag(&args, "--policies"),
        format!("{}/{}", env("GITSYNC_ROOT"), env("GITSYNC_LINK"))
    );
    let volumes: Vec<_> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        !volumes.iter().any(|v| v.starts_with("policies")),
        "{volumes:?}"
    );
    assert!(volumes.contains(&"git"));
    assert!(!engine["volumeMounts"].as_array().unwrap().iter().any(|m| {
        m["mountPath"]
            .as_str()
            .unwrap()
            .starts_with("/etc/meshgov/policies")
    }));
    if let Some(validator) = k8s::kubernetes_validate() {
        let dir = tempfile::tempdir().unwrap();
        let files = k8s::write_for_validation(dir.path(), "git-sync", &docs);
        k8s::validate(&validator, &files).unwrap();
    }
}

/// The sidecars' NetworkPolicy names ports the injected container declares.
#[test]
fn the_namespace_policy_names_the_sidecars_ports() {
    let Some(kubectl) = k8s::kubectl() else {
        return;
    };
    let docs = render(&kubectl, "namespace");
    let policy = find(&docs, "NetworkPolicy", "meshgov-sidecar");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["meshgov.io/injected"],
        "true"
    );
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  template:\n    spec:\n      containers:\n      - name: a\n        image: b\n";
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshgov"))
        .args(["inject", "-f", "-", "--product", "d/p"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), deployment.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let injected: Value = serde_saphyr::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let pod = &injected["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["meshgov.io/injected"], "true");
    let declared: Vec<_> = pod["spec"]["containers"][1]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    // The control port only from the engine's pods.
    assert_eq!(rules[0]["ports"][0]["port"], "meshgov-control");
    assert_eq!(
        rules[0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "meshgov-engine"
    );
    let mut named: Vec<_> = rules
        .iter()
        .flat_map(|r| r["ports"].as_array().unwrap().iter())
        .map(|p| p["port"].as_str().unwrap())
        .collect();
    named.sort();
    let mut declared_sorted = declared.clone();
    declared_sorted.sort();
    assert_eq!(named, declared_sorted);
    if let Some(validator) = k8s::kubernetes_validate() {
        let dir = tempfile::tempdir().unwrap();
        let files = k8s::write_for_validation(dir.path(), "namespace", &docs);
        k8s::validate(&validator, &files).unwrap();
    }
}

/// The engine's command line in the base, with its files where the pod
/// mounts them (under a temporary root) and loopback ports, starts an
/// engine whose webhook injects a pod, pointing its sidecar at the Service.
#[test]
fn the_engine_starts_with_the_bases_command_line() {
    let Some(kubectl) = k8s::kubectl() else {
        return;
    };
    let tools = [("openssl", "version"), ("curl", "--version")]
        .iter()
        .all(|(t, probe)| {
            let ok = Command::new(t)
                .arg(probe)
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(
                ok || std::env::var_os("CI").is_none(),
                "{t} is missing; `.ci/setup` installs it"
            );
            ok
        });
    if !tools {
        eprintln!("skipped: openssl or curl not found (run .ci/setup)");
        return;
    }
    let docs = render(&kubectl, "base");
    let engine =
        &find(&docs, "Deployment", "meshgov-engine")["spec"]["template"]["spec"]["containers"][0];
    let root = tempfile::tempdir().unwrap();
    let at = |p: &str| root.path().join(p.trim_start_matches('/'));
    let [api, webhook] = meshgov_e2e::free_addrs().unwrap();
    let args: Vec<String> = args_of(engine)
        .into_iter()
        .map(|a| match a.as_str() {
            "0.0.0.0:7600" => api.to_string(),
            "0.0.0.0:9443" => webhook.to_string(),
            p if p.starts_with("/etc/meshgov/") => at(p).display().to_string(),
            _ => a,
        })
        .collect();
    // What the Secrets and ConfigMaps hold, where they are mounted.
    meshgov_e2e::copy_dir(
        &meshgov_e2e::repo_root().join("policies"),
        &at("/etc/meshgov/policies"),
    )
    .unwrap();
    std::fs::create_dir_all(at("/etc/meshgov/keys")).unwrap();
    std::fs::create_dir_all(at("/etc/meshgov/webhook")).unwrap();
    let k = Command::new(env!("CARGO_BIN_EXE_meshgov"))
        .args(["keygen", "--out"])
        .arg(at("/etc/meshgov/keys/governance.pem"))
        .output()
        .unwrap();
    assert!(k.status.success());
    std::fs::write(
        at("/etc/meshgov/keys/registration-token"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let (cert, _) = k8s::make_cert(&at("/etc/meshgov/webhook"), "tls");

    let mut c = Command::new(env!("CARGO_BIN_EXE_meshgov"));
    c.args(&args);
    let mut process = meshgov_e2e::Process::spawn(&mut c, &root.path().join("stderr.log")).unwrap();
    let t0 = std::time::Instant::now();
    while !(process.stderr().contains("admission webhook on https://")
        && std::net::TcpStream::connect(webhook).is_ok())
    {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "{}",
            process.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u-1", "operation": "CREATE", "namespace": "shop",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web", "annotations": {"meshgov.io/product": "users/user-profiles"}},
                "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
        }
    });
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(&cert)
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(review.to_string())
        .arg(format!("https://{webhook}/mutate"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        process.stderr()
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let patch = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        answer["response"]["patch"].as_str().unwrap(),
    )
    .unwrap();
    let ops: Vec<Value> = serde_json::from_slice(&patch).unwrap();
    let sidecar = ops
        .iter()
        .find(|o| o["path"] == "/spec/containers/-")
        .unwrap();
    let engine_url = sidecar["value"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "MESHGOV_SIDECAR_ENGINE_URL")
        .unwrap()["value"]
        .clone();
    assert_eq!(engine_url, flag(&args_of(engine), "--inject-engine"));
    process.signal(meshgov_e2e::Signal::SIGTERM).unwrap();
    assert_eq!(
        process
            .wait_exit(std::time::Duration::from_secs(20))
            .unwrap(),
        Some(0)
    );
}
