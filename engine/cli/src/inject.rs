//! `meshgov inject`: add the meshgov sidecar to Kubernetes workloads.
//!
//! The manifest is edited as text, never re-serialized: a document that
//! needs no change is written back byte for byte, and in a workload only the
//! nodes inject owns are added or replaced. Comments, key order, quoting and
//! YAML 1.1 spellings that Kubernetes reads differently from YAML 1.2 (such
//! as the octal `defaultMode: 0644`) survive. A node is only rewritten when
//! its value differs from what inject would write, so running inject on its
//! own output changes nothing.
//!
//! inject owns, in each workload: the container named `meshgov-sidecar`,
//! the pod volumes `meshgov-config`, `meshgov-keys` and `meshgov-state`, the
//! StatefulSet claim template `meshgov-state`, and the `meshgov.io/injected`
//! and `meshgov.io/product` annotations (and label). Anything else in those
//! is replaced by what the flags ask for.

use crate::Failure;
use granit_parser::{Event, Parser, ScalarStyle, Span, StructureStyle};
use std::io::Read;
use std::path::PathBuf;

/// The name of the injected container.
const SIDECAR: &str = "meshgov-sidecar";
const INJECTED: &str = "meshgov.io/injected";
const PRODUCT: &str = "meshgov.io/product";
/// `meshgov.io/inject: disabled` leaves an object alone.
const OPT_OUT: &str = "meshgov.io/inject";
const CONFIG_DIR: &str = "/etc/meshgov/config";
const KEYS_DIR: &str = "/etc/meshgov/keys";
const STATE_DIR: &str = "/var/lib/meshgov";
const DEFAULT_IMAGE: &str = concat!("ghcr.io/meshgov/sidecar:", env!("CARGO_PKG_VERSION"));
const SUPPORTED: &str = "inject supports Deployment, StatefulSet, Job and CronJob";

/// `meshgov inject`'s arguments.
#[derive(clap::Args)]
pub struct InjectArgs {
    /// The manifest, `-` for standard input; it may hold several `---`
    /// separated documents.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// The data product (`domain/name`). Default: each workload's
    /// `meshgov.io/product` annotation.
    #[arg(long)]
    pub product: Option<String>,
    /// The engine (`meshgov serve`) the sidecar registers with and receives
    /// bundles from. Default: `engine.url` in the sidecar's config file.
    #[arg(long, value_name = "URL")]
    pub engine: Option<String>,
    /// The sidecar image.
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// The ConfigMap with `sidecar.toml` and the files it names by relative
    /// path (the descriptor), mounted read-only at /etc/meshgov/config.
    /// Default: `meshgov-<domain>-<name>`.
    #[arg(long, value_name = "NAME")]
    pub config_map: Option<String>,
    /// The Secret with the key files the config names (pseudonym keys, IdP
    /// keys), mounted read-only at /etc/meshgov/keys. Default: the
    /// ConfigMap's name with `-keys` appended.
    #[arg(long, value_name = "NAME")]
    pub keys_secret: Option<String>,
    /// Mount no Secret: the sidecar's config names no key files.
    #[arg(long, conflicts_with = "keys_secret")]
    pub no_keys_secret: bool,
    /// The data port (consumers' reads, and the probes).
    #[arg(long, default_value_t = 8080)]
    pub data_port: u16,
    /// The control port (bundle pushes and status, for the engine).
    #[arg(long, default_value_t = 8081)]
    pub control_port: u16,
    /// The sidecar's CPU request.
    #[arg(long, default_value = "100m")]
    pub cpu_request: String,
    /// The sidecar's memory request.
    #[arg(long, default_value = "64Mi")]
    pub memory_request: String,
    /// A CPU limit; none by default, since throttling stalls reads.
    #[arg(long)]
    pub cpu_limit: Option<String>,
    /// The sidecar's memory limit.
    #[arg(long, default_value = "256Mi")]
    pub memory_limit: String,
    /// The size of each StatefulSet replica's state volume claim.
    #[arg(long, default_value = "1Gi")]
    pub state_size: String,
    /// The storage class of the state volume claim (default: the cluster's).
    #[arg(long, value_name = "NAME")]
    pub state_storage_class: Option<String>,
}

/// Reads the manifest, injects, and writes the result to stdout; nothing is
/// written when any document is refused.
pub fn run(args: &InjectArgs) -> Result<(), Failure> {
    check_args(args).map_err(Failure::usage)?;
    let (name, bytes) = if args.file.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .map_err(|e| Failure::usage(format!("cannot read standard input: {e}")))?;
        ("<stdin>".to_string(), b)
    } else {
        let b = std::fs::read(&args.file)
            .map_err(|e| Failure::usage(format!("cannot read `{}`: {e}", args.file.display())))?;
        (args.file.display().to_string(), b)
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        Failure::usage(format!(
            "{name}: not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    match inject(&text, args) {
        Ok(Injected { output, notes }) => {
            for n in notes {
                errln!(
                    "{name}:{}:{}: note: document {}: {}",
                    n.line,
                    n.col,
                    n.doc,
                    n.message
                );
            }
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(output.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| Failure::usage(format!("cannot write the result: {e}")))
        }
        Err(refusals) => {
            for r in &refusals {
                errln!(
                    "{name}:{}:{}: error: document {}: {}",
                    r.line,
                    r.col,
                    r.doc,
                    r.message
                );
            }
            Err(Failure::usage(format!(
                "{} refused; nothing was written",
                plural(refusals.len(), "document")
            )))
        }
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn check_args(a: &InjectArgs) -> Result<(), String> {
    if let Some(p) = &a.product {
        check_product(p)?;
    }
    if let Some(url) = &a.engine {
        let u = url.trim_end_matches('/');
        if !u.starts_with("http://")
            || u.len() <= "http://".len()
            || u.contains(char::is_whitespace)
        {
            return Err(format!(
                "--engine: expected an `http://host:port` URL (the sidecar's `engine.url`), got `{url}`"
            ));
        }
    }
    if a.image.is_empty() || a.image.contains(char::is_whitespace) {
        return Err(format!("--image: `{}` is not an image reference", a.image));
    }
    for (flag, name) in [
        ("--config-map", &a.config_map),
        ("--keys-secret", &a.keys_secret),
        ("--state-storage-class", &a.state_storage_class),
    ] {
        if let Some(n) = name {
            check_object_name(n).map_err(|e| format!("{flag}: {e}"))?;
        }
    }
    if a.data_port == 0 || a.control_port == 0 || a.data_port == a.control_port {
        return Err(format!(
            "--data-port and --control-port must be two different ports above 0, got {} and {}",
            a.data_port, a.control_port
        ));
    }
    for (flag, q) in [
        ("--cpu-request", Some(&a.cpu_request)),
        ("--memory-request", Some(&a.memory_request)),
        ("--cpu-limit", a.cpu_limit.as_ref()),
        ("--memory-limit", Some(&a.memory_limit)),
        ("--state-size", Some(&a.state_size)),
    ] {
        if let Some(q) = q
            && !is_quantity(q)
        {
            return Err(format!(
                "{flag}: `{q}` is not a Kubernetes quantity (e.g. `100m`, `64Mi`, `1Gi`)"
            ));
        }
    }
    Ok(())
}

/// A product id: `domain/name`.
fn check_product(p: &str) -> Result<(), String> {
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
fn check_object_name(n: &str) -> Result<(), String> {
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
fn is_quantity(q: &str) -> bool {
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
fn default_config_map(product: &str) -> String {
    let raw: String = format!("meshgov-{product}")
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.') => c,
            _ => '-',
        })
        .collect();
    raw.trim_end_matches(['-', '.']).to_string()
}

/// What a document-level problem is, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    doc: usize,
    /// 1-based.
    line: usize,
    /// 1-based.
    col: usize,
    message: String,
}

/// The result of a successful run.
struct Injected {
    output: String,
    /// Things the user should know about the injected workloads.
    notes: Vec<Problem>,
}

/// Injects every workload of `text`; all problems, or the edited text.
fn inject(text: &str, args: &InjectArgs) -> Result<Injected, Vec<Problem>> {
    let docs = parse(text).map_err(|e| vec![e])?;
    let mut editor = Editor {
        text,
        edits: Vec::new(),
    };
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    for doc in &docs {
        let Some(root) = &doc.root else { continue };
        let mut plan = Plan {
            doc: doc.index,
            args,
            notes: &mut notes,
        };
        if let Err(p) = plan.document(root, &mut editor) {
            problems.push(p);
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Injected {
        output: editor.apply(),
        notes,
    })
}

// ---------------------------------------------------------------------------
// The source tree: nodes with byte ranges into the manifest.

#[derive(Debug)]
struct Node {
    kind: Kind,
    /// Byte range of the node's content (block collections: from their
    /// first to the end of their last child).
    start: usize,
    end: usize,
    /// 1-based line, 0-based column of `start`.
    line: usize,
    col: usize,
    flow: bool,
    anchored: bool,
}

#[derive(Debug)]
enum Kind {
    Scalar(String, ScalarStyle),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    Alias,
}

impl Node {
    fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar(s, _) => Some(s),
            _ => None,
        }
    }

    fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn path(&self, path: &[&str]) -> Option<&Node> {
        path.iter().try_fold(self, |n, k| n.get(k))
    }

    fn items(&self) -> &[Node] {
        match &self.kind {
            Kind::Seq(items) => items,
            _ => &[],
        }
    }

    fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar(s, ScalarStyle::Plain) if matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }
}

struct Doc {
    /// 1-based.
    index: usize,
    root: Option<Node>,
}

struct Frame {
    node: Node,
    key: Option<Node>,
}

fn parse(text: &str) -> Result<Vec<Doc>, Problem> {
    let mut docs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut root = None;
    let mut index = 0;
    let mut in_doc = false;
    for next in Parser::new_from_str(text) {
        let (event, span) = next.map_err(|e| Problem {
            doc: if in_doc { index } else { index + 1 },
            line: e.marker().line(),
            col: e.marker().col() + 1,
            message: format!("malformed YAML: {}", e.info()),
        })?;
        let doc = index;
        let node = |kind, flow, anchor: usize| -> Result<Node, Problem> {
            let range = span.byte_range().ok_or_else(|| Problem {
                doc,
                line: span.start.line(),
                col: span.start.col() + 1,
                message: "the parser gave no source position".into(),
            })?;
            Ok(Node {
                kind,
                start: range.start,
                end: range.end,
                line: span.start.line(),
                col: span.start.col(),
                flow,
                anchored: anchor != 0,
            })
        };
        match event {
            Event::DocumentStart(..) => {
                index += 1;
                in_doc = true;
                root = None;
            }
            Event::DocumentEnd => {
                docs.push(Doc {
                    index,
                    root: root.take(),
                });
                in_doc = false;
            }
            Event::Scalar(value, style, anchor, _) => {
                let mut n = node(Kind::Scalar(value.into_owned(), style), false, anchor)?;
                if matches!(style, ScalarStyle::Literal | ScalarStyle::Folded) {
                    // A block scalar's span runs on to the next token's
                    // indentation; it ends at the start of that line.
                    let line = text
                        .get(..n.end)
                        .and_then(|t| t.rfind('\n'))
                        .map_or(0, |i| i + 1);
                    if text.get(line..n.end).is_some_and(|t| t.trim().is_empty()) {
                        n.end = line.max(n.start);
                    }
                }
                add(&mut stack, &mut root, n, index)?;
            }
            Event::Alias(_) => {
                let n = node(Kind::Alias, false, 0)?;
                add(&mut stack, &mut root, n, index)?;
            }
            Event::SequenceStart(style, anchor, _) => stack.push(Frame {
                node: node(Kind::Seq(Vec::new()), style == StructureStyle::Flow, anchor)?,
                key: None,
            }),
            Event::MappingStart(style, anchor, _) => stack.push(Frame {
                node: node(Kind::Map(Vec::new()), style == StructureStyle::Flow, anchor)?,
                key: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(Frame { mut node, .. }) = stack.pop() {
                    node.end = collection_end(&node, &span);
                    add(&mut stack, &mut root, node, index)?;
                }
            }
            _ => {}
        }
    }
    Ok(docs)
}

/// Where a collection's content ends: its closing bracket, or the end of
/// its last child.
fn collection_end(node: &Node, end_event: &Span) -> usize {
    if node.flow {
        return end_event.byte_range().map_or(node.end, |r| r.end);
    }
    let last = match &node.kind {
        Kind::Seq(items) => items.last().map(|i| i.end),
        Kind::Map(entries) => entries.last().map(|(k, v)| k.end.max(v.end)),
        _ => None,
    };
    last.unwrap_or(node.start)
}

fn add(
    stack: &mut [Frame],
    root: &mut Option<Node>,
    mut node: Node,
    doc: usize,
) -> Result<(), Problem> {
    let Some(top) = stack.last_mut() else {
        *root = Some(node);
        return Ok(());
    };
    match &mut top.node.kind {
        Kind::Seq(items) => items.push(node),
        Kind::Map(entries) => match top.key.take() {
            None => top.key = Some(node),
            Some(key) => {
                if let Some(k) = key.as_str()
                    && entries.iter().any(|(e, _)| e.as_str() == Some(k))
                {
                    return Err(Problem {
                        doc,
                        line: key.line,
                        col: key.col + 1,
                        message: format!("malformed YAML: duplicate key `{k}`"),
                    });
                }
                // An empty value has no text; place it right after its key.
                if node.start == node.end && node.is_null() {
                    node.start = key.end;
                    node.end = key.end;
                }
                entries.push((key, node));
            }
        },
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// What inject wants, and how it differs from what is there.

/// A value inject writes.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Map(Vec<(String, Value)>),
    Seq(Vec<Value>),
}

fn s(v: impl Into<String>) -> Value {
    Value::Str(v.into())
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

/// How a list's items are named.
#[derive(Debug, Clone, Copy)]
enum NameKey {
    /// `name` (containers, volumes).
    Name,
    /// `metadata.name` (volume claim templates).
    MetadataName,
}

/// A change to one node.
#[derive(Debug)]
enum Change {
    /// The node must equal this value.
    Set(Value),
    /// These keys of a mapping change; others stay.
    Map(Vec<(String, Change)>),
    /// These items of a list of named objects are set (`Some`) or removed
    /// (`None`); others stay.
    Named(NameKey, Vec<(String, Option<Value>)>),
}

fn change<const N: usize>(entries: [(&str, Change); N]) -> Change {
    Change::Map(entries.into_iter().map(|(k, c)| (k.into(), c)).collect())
}

impl Change {
    /// The value to write where the node is absent (or null); `None` when
    /// there is nothing to add.
    fn value(&self) -> Option<Value> {
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

fn item_name(node: &Node, key: NameKey) -> Option<&str> {
    match key {
        NameKey::Name => node.get("name"),
        NameKey::MetadataName => node.path(&["metadata", "name"]),
    }
    .and_then(Node::as_str)
}

/// Whether a plain scalar reads as something other than a string (under
/// YAML 1.2 or the YAML 1.1 Kubernetes uses).
fn plain_is_special(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    let number = {
        let t = s.replace('_', "");
        let t = t.trim_start_matches(['+', '-']);
        t.parse::<f64>().is_ok()
            || t.strip_prefix("0x")
                .or_else(|| t.strip_prefix("0o"))
                .or_else(|| t.strip_prefix("0b"))
                .is_some_and(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_hexdigit()))
            || t.starts_with('.')
    };
    number
        || [
            "", "~", "null", "true", "false", "yes", "no", "on", "off", "y", "n",
        ]
        .contains(&lower.as_str())
}

/// Whether `node` is `value`, as Kubernetes reads it.
fn equals(node: &Node, value: &Value) -> bool {
    match (&node.kind, value) {
        (Kind::Scalar(s, style), Value::Str(v)) => {
            s == v && (*style != ScalarStyle::Plain || !plain_is_special(s))
        }
        (Kind::Scalar(s, ScalarStyle::Plain), Value::Int(i)) => s.parse::<i64>() == Ok(*i),
        (Kind::Scalar(s, ScalarStyle::Plain), Value::Bool(b)) => {
            s.eq_ignore_ascii_case(if *b { "true" } else { "false" })
        }
        (Kind::Map(entries), Value::Map(want)) => {
            entries.len() == want.len()
                && want.iter().all(|(k, w)| {
                    entries
                        .iter()
                        .any(|(ek, ev)| ek.as_str() == Some(k) && equals(ev, w))
                })
        }
        (Kind::Seq(items), Value::Seq(want)) => {
            items.len() == want.len() && items.iter().zip(want).all(|(n, w)| equals(n, w))
        }
        _ => false,
    }
}

/// Whether applying `change` to `node` would change anything.
fn differs(node: &Node, change: &Change) -> bool {
    match (change, &node.kind) {
        (Change::Set(v), _) => !equals(node, v),
        (Change::Map(cs), Kind::Map(_)) => cs.iter().any(|(k, c)| match node.get(k) {
            Some(v) => differs(v, c),
            None => c.value().is_some(),
        }),
        (Change::Named(key, items), Kind::Seq(list)) => items.iter().any(|(name, want)| {
            match (list.iter().find(|n| item_name(n, *key) == Some(name)), want) {
                (Some(n), Some(w)) => !equals(n, w),
                (Some(_), None) => true,
                (None, w) => w.is_some(),
            }
        }),
        _ => change.value().is_some(),
    }
}

// ---------------------------------------------------------------------------
// Rendering inject's values as YAML text.

/// A string, plain when that reads back as the same string, else
/// double-quoted.
fn scalar(v: &str) -> String {
    let plain = v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && v.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '/')
        && !plain_is_special(v);
    if plain { v.to_string() } else { quoted(v) }
}

/// Flow style, on one line, as JSON (so a JSON document stays JSON).
fn inline(v: &Value) -> String {
    match v {
        Value::Str(s) => quoted(s),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Map(es) => {
            let parts: Vec<_> = es
                .iter()
                .map(|(k, v)| format!("{}: {}", quoted(k), inline(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
        Value::Seq(items) => {
            let parts: Vec<_> = items.iter().map(inline).collect();
            format!("[{}]", parts.join(", "))
        }
    }
}

/// A double-quoted scalar (JSON string syntax is valid YAML).
fn quoted(v: &str) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| format!("\"{v}\""))
}

/// A scalar in block style: plain, or double-quoted where plain would not
/// read back as the same string.
fn block_scalar(v: &Value) -> String {
    match v {
        Value::Str(s) => scalar(s),
        _ => inline(v),
    }
}

fn pad(n: usize) -> String {
    " ".repeat(n)
}

/// What follows `key:` for a key at column `col`, through the final newline.
fn after_key(v: &Value, col: usize) -> String {
    match v {
        Value::Map(es) if !es.is_empty() => format!("\n{}", block_map(es, col + 2)),
        Value::Seq(items) if !items.is_empty() => {
            let mut out = String::from("\n");
            for i in items {
                out += &seq_item(i, col + 2);
            }
            out
        }
        _ => format!(" {}\n", block_scalar(v)),
    }
}

fn block_map(entries: &[(String, Value)], col: usize) -> String {
    entries
        .iter()
        .map(|(k, v)| format!("{}{}:{}", pad(col), scalar(k), after_key(v, col)))
        .collect()
}

/// One list item with its dash at column `dash`.
fn seq_item(v: &Value, dash: usize) -> String {
    match v {
        Value::Map(es) => match es.split_first() {
            Some(((k, first), rest)) => format!(
                "{}- {}:{}{}",
                pad(dash),
                scalar(k),
                after_key(first, dash + 2),
                block_map(rest, dash + 2)
            ),
            None => format!("{}- {{}}\n", pad(dash)),
        },
        _ => format!("{}- {}\n", pad(dash), block_scalar(v)),
    }
}

// ---------------------------------------------------------------------------
// Text edits.

struct Edit {
    start: usize,
    end: usize,
    text: String,
}

struct Editor<'t> {
    text: &'t str,
    edits: Vec<Edit>,
}

/// A failure to edit: where, and why (the caller adds the document).
struct Stop {
    line: usize,
    col: usize,
    message: String,
}

fn stop(node: &Node, message: String) -> Stop {
    Stop {
        line: node.line,
        col: node.col + 1,
        message,
    }
}

impl Editor<'_> {
    fn src(&self, n: &Node) -> &str {
        self.text.get(n.start..n.end).unwrap_or("")
    }

    /// Where the line holding `pos` ends (after its newline), and whether
    /// the text ends there without one.
    fn line_end(&self, pos: usize) -> (usize, bool) {
        let b = self.text.as_bytes();
        if pos > 0 && b.get(pos - 1) == Some(&b'\n') {
            return (pos, false);
        }
        match b
            .get(pos..)
            .and_then(|r| r.iter().position(|&c| c == b'\n'))
        {
            Some(i) => (pos + i + 1, false),
            None => (b.len(), true),
        }
    }

    fn line_start(&self, pos: usize) -> usize {
        self.text
            .get(..pos)
            .and_then(|t| t.rfind('\n'))
            .map_or(0, |i| i + 1)
    }

    /// The column of the `-` that introduces a block list item.
    fn dash_col(&self, item: &Node) -> usize {
        let prefix = self
            .text
            .get(self.line_start(item.start)..item.start)
            .unwrap_or("");
        match prefix.rfind('-') {
            Some(i) => prefix.get(..i).map_or(0, |p| p.chars().count()),
            None => item.col.saturating_sub(2),
        }
    }

    /// Inserts whole lines after the line holding `pos`.
    fn insert_lines_after(&mut self, pos: usize, text: String) {
        let (at, missing_newline) = self.line_end(pos);
        let text = if missing_newline {
            format!("\n{text}")
        } else {
            text
        };
        self.edits.push(Edit {
            start: at,
            end: at,
            text,
        });
    }

    fn replace(&mut self, start: usize, end: usize, text: String) {
        self.edits.push(Edit { start, end, text });
    }

    fn apply(mut self) -> String {
        // Stable: insertions at one point stay in the order they were made.
        self.edits.sort_by_key(|e| e.start);
        let mut out = String::with_capacity(self.text.len() + 4096);
        let mut at = 0;
        for e in &self.edits {
            // INVARIANT: edits do not overlap (each replaces a distinct node).
            if e.start >= at {
                out += self.text.get(at..e.start).unwrap_or("");
                at = e.end;
            }
            out += &e.text;
        }
        out += self.text.get(at..).unwrap_or("");
        out
    }

    /// Applies a mapping change to `node`, which must be a mapping.
    fn map(&mut self, node: &Node, changes: &[(String, Change)], path: &str) -> Result<(), Stop> {
        let Kind::Map(entries) = &node.kind else {
            return Err(stop(node, format!("expected a mapping at `{path}`")));
        };
        if node.flow {
            let text = self.flow_map(node, changes, path)?;
            self.replace(node.start, node.end, text);
            return Ok(());
        }
        let indent = entries.first().map_or(node.col, |(k, _)| k.col);
        let mut added = String::new();
        for (key, c) in changes {
            let child = join(path, key);
            match entries.iter().find(|(k, _)| k.as_str() == Some(key)) {
                Some((k, v)) => self.entry(k, v, c, &child)?,
                None => {
                    if let Some(v) = c.value() {
                        added +=
                            &format!("{}{}:{}", pad(indent), scalar(key), after_key(&v, indent));
                    }
                }
            }
        }
        // After the existing entries' edits, which may insert at the same point.
        if !added.is_empty() {
            self.insert_lines_after(node.end, added);
        }
        Ok(())
    }

    fn entry(&mut self, key: &Node, value: &Node, c: &Change, path: &str) -> Result<(), Stop> {
        if !differs(value, c) {
            return Ok(());
        }
        editable(value, c, path)?;
        match (c, &value.kind) {
            (Change::Map(cs), Kind::Map(_)) => self.map(value, cs, path),
            (Change::Named(k, items), Kind::Seq(_)) => self.named(value, *k, items, path),
            _ => {
                let Some(v) = c.value() else { return Ok(()) };
                let (end, _) = self.line_end(key.end.max(value.end));
                let text = format!("{}:{}", self.src(key), after_key(&v, key.col));
                self.replace(key.start, end, text);
                Ok(())
            }
        }
    }

    /// Sets or removes named items of `node`, which must be a list.
    fn named(
        &mut self,
        node: &Node,
        key: NameKey,
        items: &[(String, Option<Value>)],
        path: &str,
    ) -> Result<(), Stop> {
        let Kind::Seq(list) = &node.kind else {
            return Err(stop(node, format!("expected a list at `{path}`")));
        };
        if node.flow {
            let text = self.flow_named(list, key, items);
            self.replace(node.start, node.end, text);
            return Ok(());
        }
        let dash = list.first().map_or(node.col, |first| self.dash_col(first));
        let mut appended = String::new();
        for (name, want) in items {
            let found = list
                .iter()
                .enumerate()
                .find(|(_, n)| item_name(n, key) == Some(name));
            match (found, want) {
                (Some((i, item)), want) => {
                    if want.as_ref().is_some_and(|w| equals(item, w)) {
                        continue;
                    }
                    let start = match i.checked_sub(1).and_then(|p| list.get(p)) {
                        Some(prev) => self.line_end(prev.end).0,
                        None => self.line_start(node.start),
                    };
                    let (end, _) = self.line_end(item.end);
                    let text = want.as_ref().map(|w| seq_item(w, dash)).unwrap_or_default();
                    self.replace(start, end, text);
                }
                (None, Some(w)) => appended += &seq_item(w, dash),
                (None, None) => {}
            }
        }
        if !appended.is_empty() {
            self.insert_lines_after(node.end, appended);
        }
        Ok(())
    }

    /// A flow mapping rewritten with `changes`, on one line; entries inject
    /// does not own keep their source text.
    fn flow_map(
        &self,
        node: &Node,
        changes: &[(String, Change)],
        path: &str,
    ) -> Result<String, Stop> {
        let Kind::Map(entries) = &node.kind else {
            return Err(stop(node, format!("expected a mapping at `{path}`")));
        };
        let mut parts = Vec::new();
        for (k, v) in entries {
            let c = changes
                .iter()
                .find(|(key, _)| k.as_str() == Some(key.as_str()));
            let text = match c {
                Some((key, c)) if differs(v, c) => self.flow_value(v, c, &join(path, key))?,
                _ => self.src(v).to_string(),
            };
            parts.push(format!("{}: {text}", self.src(k)));
        }
        for (key, c) in changes {
            if node.get(key).is_none()
                && let Some(v) = c.value()
            {
                parts.push(format!("{}: {}", quoted(key), inline(&v)));
            }
        }
        Ok(format!("{{{}}}", parts.join(", ")))
    }

    /// The flow text of `node` after `c`.
    fn flow_value(&self, node: &Node, c: &Change, path: &str) -> Result<String, Stop> {
        editable(node, c, path)?;
        match (c, &node.kind) {
            (Change::Map(cs), Kind::Map(_)) => self.flow_map(node, cs, path),
            (Change::Named(k, items), Kind::Seq(list)) => Ok(self.flow_named(list, *k, items)),
            _ => Ok(c
                .value()
                .map(|v| inline(&v))
                .unwrap_or_else(|| "null".into())),
        }
    }

    fn flow_named(&self, list: &[Node], key: NameKey, items: &[(String, Option<Value>)]) -> String {
        let mut parts = Vec::new();
        for n in list {
            match items
                .iter()
                .find(|(name, _)| item_name(n, key) == Some(name.as_str()))
            {
                Some((_, Some(w))) if !equals(n, w) => parts.push(inline(w)),
                Some((_, None)) => {}
                _ => parts.push(self.src(n).to_string()),
            }
        }
        for (name, want) in items {
            if let Some(w) = want
                && !list
                    .iter()
                    .any(|n| item_name(n, key) == Some(name.as_str()))
            {
                parts.push(inline(w));
            }
        }
        format!("[{}]", parts.join(", "))
    }
}

/// Refuses to edit an anchor or alias (the edit would reach every alias of
/// it), or a node of another type than the change expects (null is empty).
fn editable(node: &Node, c: &Change, path: &str) -> Result<(), Stop> {
    if node.anchored || matches!(node.kind, Kind::Alias) {
        return Err(stop(
            node,
            format!("`{path}` is a YAML anchor or alias; expand it so inject can edit it"),
        ));
    }
    match (c, &node.kind) {
        (Change::Set(_), _)
        | (Change::Map(_), Kind::Map(_))
        | (Change::Named(..), Kind::Seq(_)) => Ok(()),
        _ if node.is_null() => Ok(()),
        (Change::Map(_), _) => Err(stop(node, format!("expected a mapping at `{path}`"))),
        (Change::Named(..), _) => Err(stop(node, format!("expected a list at `{path}`"))),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

// ---------------------------------------------------------------------------
// Kubernetes: which documents are workloads, and what inject adds to them.

/// The workload kinds inject supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Deployment,
    StatefulSet,
    Job,
    CronJob,
}

impl Workload {
    fn of(kind: &str) -> Option<Workload> {
        Some(match kind {
            "Deployment" => Workload::Deployment,
            "StatefulSet" => Workload::StatefulSet,
            "Job" => Workload::Job,
            "CronJob" => Workload::CronJob,
            _ => return None,
        })
    }

    fn api_version(self) -> &'static str {
        match self {
            Workload::Deployment | Workload::StatefulSet => "apps/v1",
            Workload::Job | Workload::CronJob => "batch/v1",
        }
    }

    /// Where the pod template is.
    fn template_path(self) -> &'static [&'static str] {
        match self {
            Workload::CronJob => &["spec", "jobTemplate", "spec", "template"],
            _ => &["spec", "template"],
        }
    }

    /// Pods that run to completion get a native sidecar (an init container
    /// with `restartPolicy: Always`), which Kubernetes stops once the main
    /// containers exit; a plain container would keep the Job from finishing.
    fn native_sidecar(self) -> bool {
        matches!(self, Workload::Job | Workload::CronJob)
    }
}

/// Why a kind that carries pods is not injected.
fn unsupported_hint(kind: &str) -> &'static str {
    match kind {
        "DaemonSet" => {
            "a DaemonSet runs one pod per node, not a data product's replicas; run the product as a Deployment or StatefulSet"
        }
        "ReplicaSet" | "ReplicationController" => "inject the Deployment that manages it",
        "Pod" => "inject the Deployment, StatefulSet or Job that creates it",
        _ => SUPPORTED,
    }
}

/// Whether an object of another kind carries a pod template (or is a pod).
fn carries_pods(root: &Node) -> bool {
    [
        &["spec", "template", "spec", "containers"][..],
        &[
            "spec",
            "jobTemplate",
            "spec",
            "template",
            "spec",
            "containers",
        ],
        &["template", "spec", "containers"],
        &["spec", "containers"],
    ]
    .iter()
    .any(|p| root.path(p).is_some())
}

struct Plan<'a> {
    doc: usize,
    args: &'a InjectArgs,
    notes: &'a mut Vec<Problem>,
}

impl Plan<'_> {
    fn problem(&self, node: &Node, message: String) -> Problem {
        Problem {
            doc: self.doc,
            line: node.line,
            col: node.col + 1,
            message,
        }
    }

    fn document(&mut self, root: &Node, editor: &mut Editor) -> Result<(), Problem> {
        if root.is_null() {
            return Ok(());
        }
        if !matches!(root.kind, Kind::Map(_)) {
            return Err(self.problem(
                root,
                "not a Kubernetes object (expected a mapping with `apiVersion` and `kind`)".into(),
            ));
        }
        let Some(kind_node) = root.get("kind") else {
            return Err(self.problem(
                root,
                "no `kind`; every Kubernetes object needs `apiVersion` and `kind`".into(),
            ));
        };
        let kind = kind_node.as_str().unwrap_or_default();
        let name = object_name(root);
        if root
            .path(&["metadata", "annotations", OPT_OUT])
            .and_then(Node::as_str)
            == Some("disabled")
        {
            return Ok(());
        }
        if kind == "List" {
            for (i, item) in root
                .get("items")
                .map(Node::items)
                .unwrap_or(&[])
                .iter()
                .enumerate()
            {
                let item_kind = item.get("kind").and_then(Node::as_str).unwrap_or("object");
                if Workload::of(item_kind).is_some() || carries_pods(item) {
                    return Err(self.problem(
                        item,
                        format!(
                            "a `List` holding a `{item_kind}` (item {}) is not supported: put each object in its own document (`---`)",
                            i + 1
                        ),
                    ));
                }
            }
            return Ok(());
        }
        let Some(workload) = Workload::of(kind) else {
            if carries_pods(root) {
                return Err(self.problem(
                    kind_node,
                    format!(
                        "`{kind}` {name} is not supported: {}; or annotate it `{OPT_OUT}: disabled` to leave it as it is",
                        unsupported_hint(kind)
                    ),
                ));
            }
            return Ok(());
        };
        let api = root.get("apiVersion").and_then(Node::as_str).unwrap_or("");
        if api != workload.api_version() {
            return Err(self.problem(
                root.get("apiVersion").unwrap_or(kind_node),
                format!(
                    "`{kind}` {name} has apiVersion `{api}`; inject supports `{}`",
                    workload.api_version()
                ),
            ));
        }
        let what = format!("`{kind}` {name}");
        let change = self.workload(root, kind_node, workload, &what)?;
        if differs(root, &change) {
            let Change::Map(changes) = &change else {
                return Ok(());
            };
            editor.map(root, changes, "").map_err(|s| Problem {
                doc: self.doc,
                line: s.line,
                col: s.col,
                message: format!("{what}: {}", s.message),
            })?;
        }
        Ok(())
    }

    /// The change that injects `root`, after checking it can be injected.
    fn workload(
        &mut self,
        root: &Node,
        kind_node: &Node,
        workload: Workload,
        what: &str,
    ) -> Result<Change, Problem> {
        let args = self.args;
        let product = self.product(root, kind_node, what)?;
        let template_path = workload.template_path();
        let pod_path = [template_path, &["spec"]].concat();
        let containers_path = [pod_path.as_slice(), &["containers"]].concat();
        let containers = root.path(&containers_path);
        if containers.is_none_or(|c| c.items().is_empty()) {
            return Err(self.problem(
                containers.unwrap_or(kind_node),
                format!(
                    "{what} has no containers at `{}`",
                    containers_path.join(".")
                ),
            ));
        }
        let (list, other) = if workload.native_sidecar() {
            ("initContainers", "containers")
        } else {
            ("containers", "initContainers")
        };
        let pod = root.path(&pod_path);
        let listed = |l: &str| pod.and_then(|p| p.get(l)).map(Node::items).unwrap_or(&[]);
        if let Some(misplaced) = listed(other)
            .iter()
            .find(|c| item_name(c, NameKey::Name) == Some(SIDECAR))
        {
            let why = if workload.native_sidecar() {
                "this kind's pods run to completion, so the sidecar must be an init container with `restartPolicy: Always`"
            } else {
                "this kind's sidecar is a regular container"
            };
            return Err(self.problem(
                misplaced,
                format!(
                    "{what}: `{SIDECAR}` is in `{other}`, but {why}; remove it and inject again"
                ),
            ));
        }
        for c in listed("containers").iter().chain(listed("initContainers")) {
            if item_name(c, NameKey::Name) == Some(SIDECAR) {
                continue;
            }
            for p in c.get("ports").map(Node::items).unwrap_or(&[]) {
                let port = p.get("containerPort").and_then(Node::as_str);
                for (flag, ours) in [
                    ("--data-port", args.data_port),
                    ("--control-port", args.control_port),
                ] {
                    if port == Some(ours.to_string().as_str()) {
                        return Err(self.problem(
                            p,
                            format!(
                                "{what}: container `{}` already uses port {ours}, which the sidecar needs; choose another with `{flag}`",
                                item_name(c, NameKey::Name).unwrap_or("?")
                            ),
                        ));
                    }
                }
            }
        }

        let config_map = match &args.config_map {
            Some(n) => n.clone(),
            None => {
                let n = default_config_map(&product);
                check_object_name(&n).map_err(|e| {
                    self.problem(
                        kind_node,
                        format!("{what}: the default ConfigMap name {e}; pass `--config-map`"),
                    )
                })?;
                n
            }
        };
        let secret = if args.no_keys_secret {
            None
        } else {
            Some(
                args.keys_secret
                    .clone()
                    .unwrap_or_else(|| format!("{config_map}-keys")),
            )
        };
        let claim = workload == Workload::StatefulSet;

        let mut volumes = vec![(
            "meshgov-config".to_string(),
            Some(map([
                ("name", s("meshgov-config")),
                ("configMap", map([("name", s(&config_map))])),
            ])),
        )];
        volumes.push((
            "meshgov-keys".into(),
            secret.as_ref().map(|n| {
                map([
                    ("name", s("meshgov-keys")),
                    ("secret", map([("secretName", s(n))])),
                ])
            }),
        ));
        volumes.push((
            "meshgov-state".into(),
            (!claim).then(|| map([("name", s("meshgov-state")), ("emptyDir", map([]))])),
        ));
        if !claim {
            self.notes.push(self.problem(
                kind_node,
                format!(
                    "{what}: the sidecar's state (audit log, persisted bundle, embedded privacy ledger) is in an emptyDir and ends with the pod; have the engine collect audit logs, and use `privacy.ledger = \"postgres\"` when there are several replicas"
                ),
            ));
        }

        let container = sidecar_container(args, workload, secret.is_some());
        let annotations = change([
            (INJECTED, Change::Set(s("true"))),
            (PRODUCT, Change::Set(s(&product))),
        ]);
        let template = change([
            (
                "metadata",
                change([
                    ("labels", change([(INJECTED, Change::Set(s("true")))])),
                    (
                        "annotations",
                        change([
                            (INJECTED, Change::Set(s("true"))),
                            (PRODUCT, Change::Set(s(&product))),
                        ]),
                    ),
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
        let spec = match workload {
            Workload::CronJob => change([(
                "jobTemplate",
                change([("spec", change([("template", template)]))]),
            )]),
            Workload::StatefulSet => {
                let mut claim_spec = vec![
                    (
                        "accessModes".to_string(),
                        Value::Seq(vec![s("ReadWriteOnce")]),
                    ),
                    (
                        "resources".to_string(),
                        map([("requests", map([("storage", s(&args.state_size))]))]),
                    ),
                ];
                if let Some(class) = &args.state_storage_class {
                    claim_spec.push(("storageClassName".into(), s(class)));
                }
                change([
                    ("template", template),
                    (
                        "volumeClaimTemplates",
                        Change::Named(
                            NameKey::MetadataName,
                            vec![(
                                "meshgov-state".into(),
                                Some(map([
                                    ("metadata", map([("name", s("meshgov-state"))])),
                                    ("spec", Value::Map(claim_spec)),
                                ])),
                            )],
                        ),
                    ),
                ])
            }
            _ => change([("template", template)]),
        };
        Ok(change([
            ("metadata", change([("annotations", annotations)])),
            ("spec", spec),
        ]))
    }

    /// `--product`, else the workload's `meshgov.io/product` annotation.
    fn product(&self, root: &Node, kind_node: &Node, what: &str) -> Result<String, Problem> {
        let annotated = root.path(&["metadata", "annotations", PRODUCT]);
        let from_annotation = annotated.and_then(Node::as_str);
        match (&self.args.product, from_annotation) {
            (Some(flag), Some(a)) if flag != a => Err(self.problem(
                annotated.unwrap_or(kind_node),
                format!(
                    "{what} is annotated `{PRODUCT}: {a}` but `--product` is `{flag}`; make them agree"
                ),
            )),
            (Some(flag), _) => Ok(flag.clone()),
            (None, Some(a)) => {
                check_product(a).map_err(|e| {
                    self.problem(annotated.unwrap_or(kind_node), format!("{what}: {e}"))
                })?;
                Ok(a.to_string())
            }
            (None, None) => Err(self.problem(
                kind_node,
                format!(
                    "{what} names no product: pass `--product domain/name` or annotate it `{PRODUCT}: domain/name`"
                ),
            )),
        }
    }
}

/// `` `name` `` of an object, for messages.
fn object_name(root: &Node) -> String {
    match root.path(&["metadata", "name"]).and_then(Node::as_str) {
        Some(n) => format!("`{n}`"),
        None => match root
            .path(&["metadata", "generateName"])
            .and_then(Node::as_str)
        {
            Some(n) => format!("`{n}…`"),
            None => "(unnamed)".into(),
        },
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
/// the ports and volumes declared here whatever the config file says.
fn sidecar_container(args: &InjectArgs, workload: Workload, keys: bool) -> Value {
    let (data, control) = (args.data_port, args.control_port);
    let mut env_vars = vec![
        env("MESHGOV_SIDECAR_LISTEN_DATA", format!("0.0.0.0:{data}")),
        env(
            "MESHGOV_SIDECAR_LISTEN_CONTROL",
            format!("0.0.0.0:{control}"),
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
    if let Some(url) = &args.engine {
        env_vars.push(env("MESHGOV_SIDECAR_ENGINE_URL", url.trim_end_matches('/')));
    }
    let mut limits = vec![("memory".to_string(), s(&args.memory_limit))];
    if let Some(cpu) = &args.cpu_limit {
        limits.insert(0, ("cpu".into(), s(cpu)));
    }
    let mut mounts = vec![map([
        ("name", s("meshgov-config")),
        ("mountPath", s(CONFIG_DIR)),
        ("readOnly", Value::Bool(true)),
    ])];
    if keys {
        mounts.push(map([
            ("name", s("meshgov-keys")),
            ("mountPath", s(KEYS_DIR)),
            ("readOnly", Value::Bool(true)),
        ]));
    }
    mounts.push(map([
        ("name", s("meshgov-state")),
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
        ("image".into(), s(&args.image)),
        (
            "args".into(),
            Value::Seq(vec![s("--config"), s(format!("{CONFIG_DIR}/sidecar.toml"))]),
        ),
    ];
    if workload.native_sidecar() {
        c.push(("restartPolicy".into(), s("Always")));
    }
    c.extend([
        (
            "ports".into(),
            Value::Seq(vec![
                port("meshgov-data", data),
                port("meshgov-control", control),
            ]),
        ),
        ("env".into(), Value::Seq(env_vars)),
        (
            "resources".into(),
            map([
                (
                    "requests",
                    map([
                        ("cpu", s(&args.cpu_request)),
                        ("memory", s(&args.memory_request)),
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
                ("allowPrivilegeEscalation", Value::Bool(false)),
                ("readOnlyRootFilesystem", Value::Bool(true)),
                ("capabilities", map([("drop", Value::Seq(vec![s("ALL")]))])),
            ]),
        ),
        ("volumeMounts".into(), Value::Seq(mounts)),
    ]);
    Value::Map(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: InjectArgs,
    }

    fn args(extra: &[&str]) -> InjectArgs {
        let all = ["t", "-f", "-", "--product", "d/p", "--image", "img:1"];
        Cli::parse_from(all.iter().chain(extra)).args
    }

    fn run(text: &str) -> String {
        let a = args(&[]);
        let out = inject(text, &a).unwrap().output;
        let again = inject(&out, &a).unwrap().output;
        assert_eq!(out, again, "not idempotent");
        out
    }

    /// The names of `path`'s items in the first document of `text`.
    fn names(text: &str, path: &[&str]) -> Vec<String> {
        let docs = parse(text).unwrap();
        let root = docs[0].root.as_ref().unwrap();
        root.path(path)
            .unwrap()
            .items()
            .iter()
            .map(|n| item_name(n, NameKey::Name).unwrap().to_string())
            .collect()
    }

    fn containers(text: &str) -> Vec<String> {
        names(text, &["spec", "template", "spec", "containers"])
    }

    #[test]
    fn appends_after_a_block_scalar_and_keeps_indentation_styles() {
        let indentless = "kind: Deployment\napiVersion: apps/v1\nspec:\n  template:\n    spec:\n      containers:\n      - name: a\n        args:\n        - |\n          line one\n          line two\n\n      volumes:\n      - name: v\n        emptyDir: {}\n";
        let out = run(indentless);
        assert_eq!(containers(&out), ["a", "meshgov-sidecar"]);
        assert!(
            out.contains(
                "          line one\n          line two\n\n      - name: meshgov-sidecar\n"
            ),
            "{out}"
        );
        assert_eq!(
            names(&out, &["spec", "template", "spec", "volumes"]),
            ["v", "meshgov-config", "meshgov-keys", "meshgov-state"]
        );

        let indented = "kind: Deployment\napiVersion: apps/v1\nspec:\n  template:\n    spec:\n      containers:\n        - name: a\n          image: b # last\n";
        let out = run(indented);
        assert!(out.contains("          image: b # last\n        - name: meshgov-sidecar\n          image: \"img:1\"\n"), "{out}");
    }

    #[test]
    fn flow_collections_and_missing_keys() {
        let text = "kind: Deployment\napiVersion: apps/v1\nmetadata: {name: x, annotations: {}}\nspec:\n  template:\n    spec:\n      containers: [{name: a, image: b}]\n      volumes: []";
        let out = run(text);
        assert_eq!(containers(&out), ["a", "meshgov-sidecar"]);
        assert!(out.starts_with("kind: Deployment\napiVersion: apps/v1\nmetadata: {name: x, annotations: {\"meshgov.io/injected\": \"true\", \"meshgov.io/product\": \"d/p\"}}\n"), "{out}");
        // The template had no metadata; the file had no final newline.
        assert!(
            out.contains("\n    metadata:\n      labels:\n        meshgov.io/injected: \"true\"\n"),
            "{out}"
        );
        assert!(out.ends_with('\n'));
    }

    #[test]
    fn null_values_are_filled_in() {
        let text = "kind: Deployment\napiVersion: apps/v1\nmetadata:\n  name: x\n  annotations:\nspec:\n  template:\n    metadata:\n    spec:\n      volumes: ~\n      containers:\n      - name: a\n";
        let out = run(text);
        assert!(out.contains("  annotations:\n    meshgov.io/injected: \"true\"\n    meshgov.io/product: d/p\nspec:\n"), "{out}");
        assert_eq!(
            names(&out, &["spec", "template", "spec", "volumes"]),
            ["meshgov-config", "meshgov-keys", "meshgov-state"]
        );
    }

    #[test]
    fn replaces_a_stale_sidecar_and_removes_unwanted_volumes() {
        let a = args(&[]);
        let text = "kind: StatefulSet\napiVersion: apps/v1\nspec:\n  template:\n    spec:\n      containers:\n      - name: meshgov-sidecar\n        image: old\n      - name: app\n      volumes:\n      - name: meshgov-state\n        emptyDir: {}\n      - name: keep\n";
        let out = inject(text, &a).unwrap().output;
        assert_eq!(containers(&out), ["meshgov-sidecar", "app"]);
        assert!(!out.contains("image: old"));
        assert_eq!(
            names(&out, &["spec", "template", "spec", "volumes"]),
            ["keep", "meshgov-config", "meshgov-keys"]
        );
        assert_eq!(inject(&out, &a).unwrap().output, out);
    }

    #[test]
    fn scalars_read_back_as_written() {
        for v in [
            "true", "no", "0644", "1e3", "0x1F", "8080", "", " a", "a: b", "#x", "null", "1.5",
        ] {
            let rendered = scalar(v);
            assert_ne!(rendered, v, "`{v}` must be quoted");
            let docs = parse(&format!("k: {rendered}\n")).unwrap();
            let node = docs[0].root.as_ref().unwrap().get("k").unwrap();
            assert!(equals(node, &s(v)), "{v}");
        }
        for v in [
            "64Mi",
            "100m",
            "meshgov-data",
            "/readyz",
            "users/user-profiles",
            "TCP",
        ] {
            assert_eq!(scalar(v), v);
        }
    }

    /// Every prefix of a real manifest (cut at a line) is refused or
    /// injected into YAML that parses and is stable; nothing panics.
    #[test]
    fn truncated_manifests_never_break_the_output() {
        let a = args(&[]);
        for fixture in [
            include_str!("../tests/golden/inject/manifest.yaml"),
            include_str!("../tests/golden/inject/more.yaml"),
        ] {
            let cuts = fixture.match_indices('\n').map(|(i, _)| i + 1);
            for cut in cuts.chain([fixture.len() - 1]) {
                let text = &fixture[..cut];
                let Ok(first) = inject(text, &a) else {
                    continue;
                };
                let out = first.output;
                serde_saphyr::from_multiple::<serde_json::Value>(&out)
                    .unwrap_or_else(|e| panic!("cut at {cut}: {e}\n{out}"));
                let again =
                    inject(&out, &a).unwrap_or_else(|e| panic!("cut at {cut}: {e:?}\n{out}"));
                assert_eq!(again.output, out, "cut at {cut}");
            }
        }
    }

    #[test]
    fn quantities_and_names() {
        for q in ["100m", "1", "0.5", "64Mi", "1Gi", "2k"] {
            assert!(is_quantity(q), "{q}");
        }
        for q in ["", "Mi", "1.2.3", "-1", "1 Gi", "1GB"] {
            assert!(!is_quantity(q), "{q}");
        }
        assert_eq!(
            default_config_map("Users/user_profiles"),
            "meshgov-users-user-profiles"
        );
        assert!(check_object_name("Bad_Name").is_err());
    }
}
