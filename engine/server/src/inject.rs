//! What injecting the meshgov sidecar adds to a pod template: one
//! implementation for `meshgov inject`, which edits manifests as text, and
//! for the admission webhook ([`crate::webhook`]), which answers with a
//! JSON Patch.
//!
//! Both read the object through [`Tree`] (the CLI's source tree, or a
//! `serde_json::Value`), check it with [`plan_template`], and get a
//! [`Change`]: the nodes inject owns, as they must be. The CLI turns it into
//! text edits; [`json_patch`] turns it into JSON Patch operations.
//!
//! Inject owns, in a pod template: the container named `meshgov-sidecar`,
//! the volumes `meshgov-config`, `meshgov-keys` and `meshgov-state`, the
//! `meshgov.io/injected` label and annotation, the `meshgov.io/product`
//! annotation and, unless the application already has them for its own
//! metrics, the `prometheus.io/*` scrape annotations.

use serde_json::Value as Json;

/// The name of the injected container.
pub const SIDECAR: &str = "meshgov-sidecar";
/// Label and annotation of an injected pod template (`"true"`).
pub const INJECTED: &str = "meshgov.io/injected";
/// The data product a workload serves (`domain/name`).
pub const PRODUCT: &str = "meshgov.io/product";
/// `meshgov.io/inject: disabled` leaves an object alone.
pub const OPT_OUT: &str = "meshgov.io/inject";
/// The volume of the ConfigMap (`sidecar.toml` and the descriptor).
pub const CONFIG_VOLUME: &str = "meshgov-config";
/// The volume of the keys Secret.
pub const KEYS_VOLUME: &str = "meshgov-keys";
/// The sidecar's writable state (an emptyDir, or a StatefulSet claim).
pub const STATE_VOLUME: &str = "meshgov-state";
pub const CONFIG_DIR: &str = "/etc/meshgov/config";
pub const KEYS_DIR: &str = "/etc/meshgov/keys";
pub const STATE_DIR: &str = "/var/lib/meshgov";
/// The sidecar's config file in the ConfigMap.
pub const CONFIG_FILE: &str = "sidecar.toml";

/// The default ports: above Istio's (15000–15090) and Linkerd's (4140–4191)
/// proxies, and rarely used by applications.
pub const DEFAULT_DATA_PORT: u16 = 15180;
pub const DEFAULT_CONTROL_PORT: u16 = 15181;
pub const DEFAULT_METRICS_PORT: u16 = 15190;
/// The sidecar runs as this user and group (the image's non-root user).
pub const SIDECAR_UID: i64 = 65532;
pub const METRICS_PATH: &str = "/metrics";
const SCRAPE: &str = "prometheus.io/scrape";
const SCRAPE_PORT: &str = "prometheus.io/port";
const SCRAPE_PATH: &str = "prometheus.io/path";

/// The sidecar image of this release.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/meshgov/sidecar:", env!("CARGO_PKG_VERSION"));

/// What the sidecar gets: image, engine, ports, resources and the names of
/// what it mounts.
#[derive(Debug, Clone)]
pub struct Options {
    /// The engine URL (`MESHGOV_SIDECAR_ENGINE_URL`); `None`: the config
    /// file's `engine.url`.
    pub engine: Option<String>,
    pub image: String,
    /// The ConfigMap; `None`: `meshgov-<domain>-<name>`.
    pub config_map: Option<String>,
    /// The keys Secret; `None`: the ConfigMap's name with `-keys`.
    pub keys_secret: Option<String>,
    /// Mount no keys Secret.
    pub no_keys_secret: bool,
    pub data_port: u16,
    pub control_port: u16,
    pub metrics_port: u16,
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: Option<String>,
    pub memory_limit: String,
    /// The StatefulSet claim's size and storage class.
    pub state_size: String,
    pub state_storage_class: Option<String>,
    /// How the caller's flags are spelled in messages: `--` for `meshgov
    /// inject`, `--inject-` for `meshgov serve`'s webhook.
    pub flag_prefix: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            engine: None,
            image: DEFAULT_IMAGE.into(),
            config_map: None,
            keys_secret: None,
            no_keys_secret: false,
            data_port: DEFAULT_DATA_PORT,
            control_port: DEFAULT_CONTROL_PORT,
            metrics_port: DEFAULT_METRICS_PORT,
            cpu_request: "100m".into(),
            memory_request: "64Mi".into(),
            cpu_limit: None,
            memory_limit: "256Mi".into(),
            state_size: "1Gi".into(),
            state_storage_class: None,
            flag_prefix: "--",
        }
    }
}

impl Options {
    /// A flag's name as the user types it.
    pub fn flag(&self, name: &str) -> String {
        format!("{}{name}", self.flag_prefix)
    }

    /// The sidecar's ports with the flag that sets each.
    pub fn ports(&self) -> [(&'static str, u16); 3] {
        [
            ("data-port", self.data_port),
            ("control-port", self.control_port),
            ("metrics-port", self.metrics_port),
        ]
    }

    /// Checks every option; the message names the flag.
    pub fn check(&self) -> Result<(), String> {
        if let Some(url) = &self.engine {
            let u = url.trim_end_matches('/');
            if !u.starts_with("http://")
                || u.len() <= "http://".len()
                || u.contains(char::is_whitespace)
            {
                return Err(format!(
                    "{}: expected an `http://host:port` URL (the sidecar's `engine.url`), got `{url}`",
                    self.flag("engine")
                ));
            }
        }
        if self.image.is_empty() || self.image.contains(char::is_whitespace) {
            return Err(format!(
                "{}: `{}` is not an image reference",
                self.flag("image"),
                self.image
            ));
        }
        for (flag, name) in [
            ("config-map", &self.config_map),
            ("keys-secret", &self.keys_secret),
            ("state-storage-class", &self.state_storage_class),
        ] {
            if let Some(n) = name {
                check_object_name(n).map_err(|e| format!("{}: {e}", self.flag(flag)))?;
            }
        }
        let ports = self.ports();
        for (i, (flag, port)) in ports.iter().enumerate() {
            if *port == 0 {
                return Err(format!("{}: the port must be above 0", self.flag(flag)));
            }
            if let Some((other, _)) = ports.iter().skip(i + 1).find(|(_, p)| p == port) {
                return Err(format!(
                    "{} and {} are both {port}; the sidecar needs a port for each",
                    self.flag(flag),
                    self.flag(other)
                ));
            }
        }
        for (flag, q) in [
            ("cpu-request", Some(&self.cpu_request)),
            ("memory-request", Some(&self.memory_request)),
            ("cpu-limit", self.cpu_limit.as_ref()),
            ("memory-limit", Some(&self.memory_limit)),
            ("state-size", Some(&self.state_size)),
        ] {
            if let Some(q) = q
                && !is_quantity(q)
            {
                return Err(format!(
                    "{}: `{q}` is not a Kubernetes quantity (e.g. `100m`, `64Mi`, `1Gi`)",
                    self.flag(flag)
                ));
            }
        }
        Ok(())
    }

    /// The ConfigMap for `product`.
    pub fn config_map_name(&self, product: &str) -> Result<String, String> {
        match &self.config_map {
            Some(n) => Ok(n.clone()),
            None => {
                let n = default_config_map(product);
                check_object_name(&n).map_err(|e| {
                    format!(
                        "the default ConfigMap name {e}; pass `{}`",
                        self.flag("config-map")
                    )
                })?;
                Ok(n)
            }
        }
    }

    /// The keys Secret for a ConfigMap, or `None` without one.
    pub fn keys_secret_name(&self, config_map: &str) -> Option<String> {
        if self.no_keys_secret {
            return None;
        }
        Some(
            self.keys_secret
                .clone()
                .unwrap_or_else(|| format!("{config_map}-keys")),
        )
    }
}

/// A product id: `domain/name`.
pub fn check_product(p: &str) -> Result<(), String> {
    let ok = p.split_once('/').is_some_and(|(d, n)| {
        !d.is_empty()
            && !n.is_empty()
            && !n.contains('/')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "product `{p}` is not `domain/name` (letters, digits, `-`, `_`, `.`)"
        ))
    }
}

/// A DNS-1123 subdomain, as ConfigMap, Secret and storage class names are.
pub fn check_object_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{n}` is not a Kubernetes object name (lower-case letters, digits, `-` and `.`, at most 253)"
        ))
    }
}

/// A resource quantity: a decimal number and an optional suffix.
pub fn is_quantity(q: &str) -> bool {
    let digits = q.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = q.get(digits.len()..).unwrap_or("");
    let number = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.matches('.').count() <= 1
        && digits.starts_with(|c: char| c.is_ascii_digit());
    number
        && [
            "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
        ]
        .contains(&suffix)
}

/// The default ConfigMap name for a product: `meshgov-<domain>-<name>`.
pub fn default_config_map(product: &str) -> String {
    let raw: String = format!("meshgov-{product}")
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.') => c,
            _ => '-',
        })
        .collect();
    raw.trim_end_matches(['-', '.']).to_string()
}

// ---------------------------------------------------------------------------
// What inject writes, and the changes that describe it.

/// A value inject writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Map(Vec<(String, Value)>),
    Seq(Vec<Value>),
}

impl Value {
    pub fn to_json(&self) -> Json {
        match self {
            Value::Str(s) => Json::String(s.clone()),
            Value::Int(i) => Json::from(*i),
            Value::Bool(b) => Json::Bool(*b),
            Value::Map(es) => {
                Json::Object(es.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
            Value::Seq(items) => Json::Array(items.iter().map(Value::to_json).collect()),
        }
    }
}

pub fn s(v: impl Into<String>) -> Value {
    Value::Str(v.into())
}

pub fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

/// How a list's items are named.
#[derive(Debug, Clone, Copy)]
pub enum NameKey {
    /// `name` (containers, volumes).
    Name,
    /// `metadata.name` (volume claim templates).
    MetadataName,
}

/// A change to one node.
#[derive(Debug)]
pub enum Change {
    /// The node must equal this value.
    Set(Value),
    /// These keys of a mapping change; others stay.
    Map(Vec<(String, Change)>),
    /// These items of a list of named objects are set (`Some`) or removed
    /// (`None`); others stay.
    Named(NameKey, Vec<(String, Option<Value>)>),
}

pub fn change<const N: usize>(entries: [(&str, Change); N]) -> Change {
    Change::Map(entries.into_iter().map(|(k, c)| (k.into(), c)).collect())
}

impl Change {
    /// The value to write where the node is absent (or null); `None` when
    /// there is nothing to add.
    pub fn value(&self) -> Option<Value> {
        match self {
            Change::Set(v) => Some(v.clone()),
            Change::Map(cs) => {
                let entries: Vec<_> = cs
                    .iter()
                    .filter_map(|(k, c)| c.value().map(|v| (k.clone(), v)))
                    .collect();
                (!entries.is_empty()).then_some(Value::Map(entries))
            }
            Change::Named(_, items) => {
                let items: Vec<_> = items.iter().filter_map(|(_, v)| v.clone()).collect();
                (!items.is_empty()).then_some(Value::Seq(items))
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Reading the object.

/// A parsed Kubernetes object, as far as inject reads it.
pub trait Tree: Sized {
    /// A mapping's value for `key`.
    fn get(&self, key: &str) -> Option<&Self>;
    /// A string scalar.
    fn as_str(&self) -> Option<&str>;
    /// An integer scalar.
    fn as_int(&self) -> Option<i64>;
    /// A list's items (none for anything else).
    fn items(&self) -> &[Self];

    fn path(&self, path: &[&str]) -> Option<&Self> {
        path.iter().try_fold(self, |n, k| n.get(k))
    }
}

impl Tree for Json {
    fn get(&self, key: &str) -> Option<&Self> {
        self.as_object().and_then(|m| m.get(key))
    }
    fn as_str(&self) -> Option<&str> {
        Json::as_str(self)
    }
    fn as_int(&self) -> Option<i64> {
        self.as_i64()
    }
    fn items(&self) -> &[Self] {
        self.as_array().map_or(&[], Vec::as_slice)
    }
}

pub fn item_name<T: Tree>(node: &T, key: NameKey) -> Option<&str> {
    match key {
        NameKey::Name => node.get("name"),
        NameKey::MetadataName => node.path(&["metadata", "name"]),
    }
    .and_then(T::as_str)
}

/// Why an object cannot be injected, at the node to point at.
#[derive(Debug)]
pub struct Refusal<'t, T> {
    pub at: &'t T,
    pub message: String,
}

/// Where a pod template is, and what its pods are like.
pub struct Template<'t, T> {
    /// The template (`metadata` and `spec`), or a Pod; `None`: absent.
    pub node: Option<&'t T>,
    /// Its path, for messages (`spec.template`; empty for a Pod).
    pub path: String,
    /// Pods that run to completion get a native sidecar (an init
    /// container with `restartPolicy: Always`), which Kubernetes stops once
    /// the main containers exit.
    pub native_sidecar: bool,
    /// The state volume is a StatefulSet claim, not an emptyDir.
    pub state_on_claim: bool,
}

/// The change to a pod template, and what the user should know about it.
pub struct Planned {
    pub change: Change,
    pub notes: Vec<String>,
    /// The note that the state volume is an emptyDir, apart: `meshgov
    /// inject` prints it with the others, the webhook (which can only give
    /// pods an emptyDir) does not repeat it on every pod.
    pub ephemeral_state: Option<String>,
}

/// Checks that a pod template can be injected for `product`, and the change
/// that injects it. `what` names the object in messages; `fallback` is
/// where to point when the template has no better node.
pub fn plan_template<'t, T: Tree>(
    opts: &Options,
    product: &str,
    what: &str,
    fallback: &'t T,
    template: &Template<'t, T>,
) -> Result<Planned, Refusal<'t, T>> {
    let refuse = |at: &'t T, message: String| Refusal { at, message };
    let spec = template.node.and_then(|t| t.get("spec"));
    let containers = spec.and_then(|s| s.get("containers"));
    if containers.is_none_or(|c| c.items().is_empty()) {
        let path = join(&join(&template.path, "spec"), "containers");
        return Err(refuse(
            containers.unwrap_or(fallback),
            format!("{what} has no containers at `{path}`"),
        ));
    }
    let (list, other) = if template.native_sidecar {
        ("initContainers", "containers")
    } else {
        ("containers", "initContainers")
    };
    let listed = |l: &str| spec.and_then(|p| p.get(l)).map(T::items).unwrap_or(&[]);
    if let Some(misplaced) = listed(other)
        .iter()
        .find(|c| item_name(*c, NameKey::Name) == Some(SIDECAR))
    {
        let why = if template.native_sidecar {
            "this kind's pods run to completion, so the sidecar must be an init container with `restartPolicy: Always`"
        } else {
            "this kind's sidecar is a regular container"
        };
        return Err(refuse(
            misplaced,
            format!("{what}: `{SIDECAR}` is in `{other}`, but {why}; remove it and inject again"),
        ));
    }
    // Containers of a pod share its network: a port the application uses
    // is not free for the sidecar.
    for c in listed("containers").iter().chain(listed("initContainers")) {
        if item_name(c, NameKey::Name) == Some(SIDECAR) {
            continue;
        }
        for p in c.get("ports").map(T::items).unwrap_or(&[]) {
            let port = p.get("containerPort").and_then(T::as_int);
            for (flag, ours) in opts.ports() {
                if port == Some(i64::from(ours)) {
                    return Err(refuse(
                        p,
                        format!(
                            "{what}: container `{}` already uses port {ours}, which the sidecar needs; choose another with `{}`",
                            item_name(c, NameKey::Name).unwrap_or("?"),
                            opts.flag(flag)
                        ),
                    ));
                }
            }
        }
    }

    let config_map = opts
        .config_map_name(product)
        .map_err(|e| refuse(fallback, format!("{what}: {e}")))?;
    let secret = opts.keys_secret_name(&config_map);
    let mut notes = Vec::new();
    let mut ephemeral_state = None;

    let volumes = vec![
        (
            CONFIG_VOLUME.to_string(),
            Some(map([
                ("name", s(CONFIG_VOLUME)),
                ("configMap", map([("name", s(&config_map))])),
            ])),
        ),
        (
            KEYS_VOLUME.into(),
            secret.as_ref().map(|n| {
                map([
                    ("name", s(KEYS_VOLUME)),
                    ("secret", map([("secretName", s(n))])),
                ])
            }),
        ),
        (
            STATE_VOLUME.into(),
            (!template.state_on_claim)
                .then(|| map([("name", s(STATE_VOLUME)), ("emptyDir", map([]))])),
        ),
    ];
    if !template.state_on_claim {
        ephemeral_state = Some(format!(
            "{what}: the sidecar's state (audit log, persisted bundle, embedded privacy ledger) is in an emptyDir and ends with the pod; have the engine collect audit logs, and use `privacy.ledger = \"postgres\"` when there are several replicas"
        ));
    }

    let mut annotations = vec![
        (INJECTED.to_string(), Change::Set(s("true"))),
        (PRODUCT.into(), Change::Set(s(product))),
    ];
    let existing = template
        .node
        .and_then(|t| t.path(&["metadata", "annotations"]));
    let theirs = existing
        .and_then(|a| a.get(SCRAPE_PORT))
        .map(|p| {
            p.as_str().map_or_else(
                || p.as_int().map(|i| i.to_string()),
                |s| Some(s.to_string()),
            )
        })
        .unwrap_or(None);
    let ours = opts.metrics_port.to_string();
    match theirs {
        Some(port) if port != ours => notes.push(format!(
            "{what}: the pod is annotated `{SCRAPE_PORT}: {port}` for the application's own metrics, so the sidecar's metrics (port {ours}, `meshgov-metrics`, at {METRICS_PATH}) are not announced by annotations; scrape them with a PodMonitor"
        )),
        _ => annotations.extend([
            (SCRAPE.to_string(), Change::Set(s("true"))),
            (SCRAPE_PORT.into(), Change::Set(s(&ours))),
            (SCRAPE_PATH.into(), Change::Set(s(METRICS_PATH))),
        ]),
    }

    let container = sidecar_container(opts, template.native_sidecar, secret.is_some());
    let change = change([
        (
            "metadata",
            change([
                ("labels", change([(INJECTED, Change::Set(s("true")))])),
                ("annotations", Change::Map(annotations)),
            ]),
        ),
        (
            "spec",
            change([
                (
                    list,
                    Change::Named(NameKey::Name, vec![(SIDECAR.into(), Some(container))]),
                ),
                ("volumes", Change::Named(NameKey::Name, volumes)),
            ]),
        ),
    ]);
    Ok(Planned {
        change,
        notes,
        ephemeral_state,
    })
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn env(name: &str, value: impl Into<String>) -> Value {
    map([("name", s(name)), ("value", s(value))])
}

fn env_field(name: &str, field: &str) -> Value {
    map([
        ("name", s(name)),
        (
            "valueFrom",
            map([("fieldRef", map([("fieldPath", s(field))]))]),
        ),
    ])
}

fn probe(path: &str, period: i64, failures: i64) -> Value {
    map([
        (
            "httpGet",
            map([("path", s(path)), ("port", s("meshgov-data"))]),
        ),
        ("periodSeconds", Value::Int(period)),
        ("failureThreshold", Value::Int(failures)),
    ])
}

/// The sidecar container. Its listen addresses, state directory and engine
/// identity come from `MESHGOV_SIDECAR_*` overrides, so they always match
/// the ports and volumes declared here whatever the config file says. It
/// passes the Pod Security Standards' `restricted` profile.
pub fn sidecar_container(opts: &Options, native_sidecar: bool, keys: bool) -> Value {
    let (data, control, metrics) = (opts.data_port, opts.control_port, opts.metrics_port);
    let mut env_vars = vec![
        env("MESHGOV_SIDECAR_LISTEN_DATA", format!("0.0.0.0:{data}")),
        env(
            "MESHGOV_SIDECAR_LISTEN_CONTROL",
            format!("0.0.0.0:{control}"),
        ),
        env(
            "MESHGOV_SIDECAR_LISTEN_METRICS",
            format!("0.0.0.0:{metrics}"),
        ),
        env("MESHGOV_SIDECAR_STATE_DIR", STATE_DIR),
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_IP", "status.podIP"),
        // One fleet entry per pod, and the address the engine pushes to.
        env("MESHGOV_SIDECAR_ENGINE_INSTANCE_ID", "$(POD_NAME)"),
        env(
            "MESHGOV_SIDECAR_ENGINE_ADVERTISE_URL",
            format!("http://$(POD_IP):{control}"),
        ),
    ];
    if let Some(url) = &opts.engine {
        env_vars.push(env("MESHGOV_SIDECAR_ENGINE_URL", url.trim_end_matches('/')));
    }
    let mut limits = vec![("memory".to_string(), s(&opts.memory_limit))];
    if let Some(cpu) = &opts.cpu_limit {
        limits.insert(0, ("cpu".into(), s(cpu)));
    }
    let mut mounts = vec![map([
        ("name", s(CONFIG_VOLUME)),
        ("mountPath", s(CONFIG_DIR)),
        ("readOnly", Value::Bool(true)),
    ])];
    if keys {
        mounts.push(map([
            ("name", s(KEYS_VOLUME)),
            ("mountPath", s(KEYS_DIR)),
            ("readOnly", Value::Bool(true)),
        ]));
    }
    mounts.push(map([
        ("name", s(STATE_VOLUME)),
        ("mountPath", s(STATE_DIR)),
    ]));
    let port = |name: &str, number: u16| {
        map([
            ("name", s(name)),
            ("containerPort", Value::Int(i64::from(number))),
            ("protocol", s("TCP")),
        ])
    };
    let mut c = vec![
        ("name".to_string(), s(SIDECAR)),
        ("image".into(), s(&opts.image)),
        (
            "args".into(),
            Value::Seq(vec![
                s("--config"),
                s(format!("{CONFIG_DIR}/{CONFIG_FILE}")),
            ]),
        ),
    ];
    if native_sidecar {
        c.push(("restartPolicy".into(), s("Always")));
    }
    c.extend([
        (
            "ports".into(),
            Value::Seq(vec![
                port("meshgov-data", data),
                port("meshgov-control", control),
                port("meshgov-metrics", metrics),
            ]),
        ),
        ("env".into(), Value::Seq(env_vars)),
        (
            "resources".into(),
            map([
                (
                    "requests",
                    map([
                        ("cpu", s(&opts.cpu_request)),
                        ("memory", s(&opts.memory_request)),
                    ]),
                ),
                ("limits", Value::Map(limits)),
            ]),
        ),
        // Opening the audit log and replaying the ledger can take a while
        // on a large state directory: up to a minute before liveness counts.
        ("startupProbe".into(), probe("/healthz", 2, 30)),
        ("livenessProbe".into(), probe("/healthz", 10, 3)),
        // Not ready (and so out of the Service) until a valid bundle is in force.
        ("readinessProbe".into(), probe("/readyz", 5, 2)),
        (
            "securityContext".into(),
            map([
                ("runAsNonRoot", Value::Bool(true)),
                ("runAsUser", Value::Int(SIDECAR_UID)),
                ("runAsGroup", Value::Int(SIDECAR_UID)),
                ("allowPrivilegeEscalation", Value::Bool(false)),
                ("readOnlyRootFilesystem", Value::Bool(true)),
                ("capabilities", map([("drop", Value::Seq(vec![s("ALL")]))])),
                ("seccompProfile", map([("type", s("RuntimeDefault"))])),
            ]),
        ),
        ("volumeMounts".into(), Value::Seq(mounts)),
    ]);
    Value::Map(c)
}

// ---------------------------------------------------------------------------
// JSON Patch (RFC 6902).

/// A JSON Pointer token: `~` and `/` escaped.
fn token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The JSON Patch operations that apply `change` to `doc`: empty when `doc`
/// already is as the change says. An error names the path whose type is
/// not what the change expects.
pub fn json_patch(doc: &Json, change: &Change) -> Result<Vec<Json>, String> {
    let mut ops = Vec::new();
    patch_node(doc, change, "", "", &mut ops)?;
    Ok(ops)
}

fn op(kind: &str, path: &str, value: Option<Json>) -> Json {
    let mut o = serde_json::Map::new();
    o.insert("op".into(), Json::from(kind));
    o.insert("path".into(), Json::from(path));
    if let Some(v) = value {
        o.insert("value".into(), v);
    }
    Json::Object(o)
}

/// `pointer` is the JSON Pointer of `node`; `dotted` its path for messages.
fn patch_node(
    node: &Json,
    change: &Change,
    pointer: &str,
    dotted: &str,
    ops: &mut Vec<Json>,
) -> Result<(), String> {
    match (change, node) {
        (Change::Set(v), _) => {
            let want = v.to_json();
            if *node != want {
                ops.push(op("replace", pointer, Some(want)));
            }
        }
        (_, Json::Null) => {
            if let Some(v) = change.value() {
                ops.push(op("replace", pointer, Some(v.to_json())));
            }
        }
        (Change::Map(cs), Json::Object(m)) => {
            for (key, c) in cs {
                let p = format!("{pointer}/{}", token(key));
                match m.get(key) {
                    Some(child) => patch_node(child, c, &p, &join(dotted, key), ops)?,
                    None => {
                        if let Some(v) = c.value() {
                            ops.push(op("add", &p, Some(v.to_json())));
                        }
                    }
                }
            }
        }
        (Change::Named(key, items), Json::Array(list)) => {
            let mut removed = Vec::new();
            let mut appended = Vec::new();
            for (name, want) in items {
                let found = list
                    .iter()
                    .position(|n| item_name(n, *key) == Some(name.as_str()));
                match (found, want) {
                    (Some(i), Some(w)) => {
                        let w = w.to_json();
                        if list.get(i) != Some(&w) {
                            ops.push(op("replace", &format!("{pointer}/{i}"), Some(w)));
                        }
                    }
                    (Some(i), None) => removed.push(i),
                    (None, Some(w)) => appended.push(w.to_json()),
                    (None, None) => {}
                }
            }
            // From the end, so that each index still points at its item.
            removed.sort_unstable_by(|a, b| b.cmp(a));
            for i in removed {
                ops.push(op("remove", &format!("{pointer}/{i}"), None));
            }
            for w in appended {
                ops.push(op("add", &format!("{pointer}/-"), Some(w)));
            }
        }
        (Change::Map(_), _) => return Err(format!("expected a mapping at `{dotted}`")),
        (Change::Named(..), _) => return Err(format!("expected a list at `{dotted}`")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    fn plan(pod: &Json, opts: &Options) -> Result<Planned, String> {
        let t = Template {
            node: Some(pod),
            path: String::new(),
            native_sidecar: false,
            state_on_claim: false,
        };
        plan_template(opts, "d/p", "pod", pod, &t).map_err(|r| r.message)
    }

    #[test]
    fn patches_add_to_absent_and_null_nodes_and_escape_keys() {
        let pod =
            json!({"metadata": {"annotations": null}, "spec": {"containers": [{"name": "a"}]}});
        let planned = plan(&pod, &Options::default()).unwrap();
        let ops = json_patch(&pod, &planned.change).unwrap();
        let paths: Vec<_> = ops.iter().map(|o| o["path"].as_str().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "/metadata/labels",
                "/metadata/annotations",
                "/spec/containers/-",
                "/spec/volumes"
            ]
        );
        assert_eq!(ops[1]["op"], "replace");
        assert_eq!(ops[1]["value"]["meshgov.io/injected"], "true");
        let pod = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "a"}], "volumes": []}});
        let ops = json_patch(&pod, &plan(&pod, &Options::default()).unwrap().change).unwrap();
        assert_eq!(ops[0]["path"], "/metadata/labels/meshgov.io~1injected");
    }

    #[test]
    fn a_stale_sidecar_is_replaced_and_an_unwanted_volume_removed_from_the_end() {
        let opts = Options {
            no_keys_secret: true,
            ..Options::default()
        };
        let pod = json!({"metadata": {}, "spec": {
            "containers": [{"name": "a"}, {"name": SIDECAR, "image": "old"}],
            "volumes": [{"name": KEYS_VOLUME}, {"name": "x"}, {"name": STATE_VOLUME}]}});
        let planned = plan(&pod, &opts).unwrap();
        let ops = json_patch(&pod, &planned.change).unwrap();
        let summary: Vec<_> = ops
            .iter()
            .map(|o| {
                format!(
                    "{} {}",
                    o["op"].as_str().unwrap(),
                    o["path"].as_str().unwrap()
                )
            })
            .collect();
        assert!(
            summary.contains(&"replace /spec/containers/1".to_string()),
            "{summary:?}"
        );
        assert!(
            summary.contains(&"replace /spec/volumes/2".to_string()),
            "{summary:?}"
        );
        assert!(
            summary.contains(&"remove /spec/volumes/0".to_string()),
            "{summary:?}"
        );
        assert!(
            summary.contains(&"add /spec/volumes/-".to_string()),
            "{summary:?}"
        );
        let bad = json!({"metadata": "x", "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(
            json_patch(&bad, &plan(&bad, &opts).unwrap().change).unwrap_err(),
            "expected a mapping at `metadata`"
        );
    }

    #[test]
    fn ports_clash_and_scrape_annotations_yield() {
        let pod = json!({"metadata": {}, "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 15190}]}]}});
        assert_eq!(
            plan(&pod, &Options::default()).err().unwrap(),
            "pod: container `app` already uses port 15190, which the sidecar needs; choose another with `--metrics-port`"
        );
        let pod = json!({"metadata": {"annotations": {"prometheus.io/port": "9090"}}, "spec": {"containers": [{"name": "app"}]}});
        let planned = plan(&pod, &Options::default()).unwrap();
        let ops = json_patch(&pod, &planned.change).unwrap();
        assert!(
            !serde_json::to_string(&ops)
                .unwrap()
                .contains("prometheus.io")
        );
        assert!(planned.notes.iter().any(|n| n.contains("PodMonitor")));
        let o = Options {
            metrics_port: DEFAULT_DATA_PORT,
            flag_prefix: "--inject-",
            ..Options::default()
        };
        assert_eq!(
            o.check().unwrap_err(),
            "--inject-data-port and --inject-metrics-port are both 15180; the sidecar needs a port for each"
        );
    }
}
