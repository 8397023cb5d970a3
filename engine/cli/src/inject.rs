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
//! What a pod template gets is decided by [`meshgov_server::inject`], which
//! the admission webhook uses too; this module finds the workloads, reads
//! them as a source tree and turns the change into text edits. inject owns,
//! in each workload: what that module lists for the pod template, the
//! StatefulSet claim template `meshgov-state`, and the workload's
//! `meshgov.io/injected` and `meshgov.io/product` annotations. Anything else
//! in those is replaced by what the flags ask for.

use crate::Failure;
use granit_parser::{Event, Parser, ScalarStyle, Span, StructureStyle};
use meshgov_server::inject::{
    Change, DEFAULT_CONTROL_PORT, DEFAULT_DATA_PORT, DEFAULT_IMAGE, DEFAULT_METRICS_PORT, INJECTED,
    NameKey, OPT_OUT, Options, PRODUCT, STATE_VOLUME, Template, Tree, Value, change, check_product,
    item_name, join, map, plan_template, s,
};
use std::io::Read;
use std::path::PathBuf;

const SUPPORTED: &str = "inject supports Deployment, StatefulSet, Job and CronJob";

/// `meshgov inject`'s arguments.
#[derive(clap::Args)]
pub struct InjectArgs {
    /// The manifest, `-` for standard input; it may hold several `---`
    /// separated documents.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        required_unless_present = "emit_config",
        conflicts_with = "emit_config"
    )]
    pub file: Option<PathBuf>,
    /// Instead of injecting, print what injected pods mount, for
    /// `--product`: the ConfigMap with this `sidecar.toml` and the
    /// descriptor it names, and a template of the keys Secret with an entry
    /// for each key file the config names under /etc/meshgov/keys.
    #[arg(long, value_name = "SIDECAR_TOML", requires = "product")]
    pub emit_config: Option<PathBuf>,
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
    /// The data port (consumers' reads, and the probes). The sidecar's
    /// ports are in the 15000s, which applications rarely use; a container
    /// of the pod that declares one of them is refused.
    #[arg(long, default_value_t = DEFAULT_DATA_PORT)]
    pub data_port: u16,
    /// The control port (bundle pushes and status, for the engine).
    #[arg(long, default_value_t = DEFAULT_CONTROL_PORT)]
    pub control_port: u16,
    /// The metrics port (Prometheus `GET /metrics`), announced with the
    /// `prometheus.io/*` pod annotations.
    #[arg(long, default_value_t = DEFAULT_METRICS_PORT)]
    pub metrics_port: u16,
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

impl InjectArgs {
    /// The sidecar's options, as the webhook has them too.
    pub fn options(&self) -> Options {
        Options {
            engine: self.engine.clone(),
            image: self.image.clone(),
            config_map: self.config_map.clone(),
            keys_secret: self.keys_secret.clone(),
            no_keys_secret: self.no_keys_secret,
            data_port: self.data_port,
            control_port: self.control_port,
            metrics_port: self.metrics_port,
            cpu_request: self.cpu_request.clone(),
            memory_request: self.memory_request.clone(),
            cpu_limit: self.cpu_limit.clone(),
            memory_limit: self.memory_limit.clone(),
            state_size: self.state_size.clone(),
            state_storage_class: self.state_storage_class.clone(),
            flag_prefix: "--",
        }
    }
}

/// Reads the manifest, injects, and writes the result to stdout; nothing is
/// written when any document is refused.
pub fn run(args: &InjectArgs) -> Result<(), Failure> {
    if let Some(p) = &args.product {
        check_product(p).map_err(Failure::usage)?;
    }
    let opts = args.options();
    opts.check().map_err(Failure::usage)?;
    if let Some(config) = &args.emit_config {
        return crate::emit_config::run(config, args.product.as_deref().unwrap_or(""), &opts);
    }
    let file = args.file.clone().unwrap_or_else(|| PathBuf::from("-"));
    let (name, bytes) = if file.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .map_err(|e| Failure::usage(format!("cannot read standard input: {e}")))?;
        ("<stdin>".to_string(), b)
    } else {
        let b = std::fs::read(&file)
            .map_err(|e| Failure::usage(format!("cannot read `{}`: {e}", file.display())))?;
        (file.display().to_string(), b)
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        Failure::usage(format!(
            "{name}: not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    match inject(&text, args, &opts) {
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
fn inject(text: &str, args: &InjectArgs, opts: &Options) -> Result<Injected, Vec<Problem>> {
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
            opts,
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

impl Tree for Node {
    fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar(s, _) => Some(s),
            _ => None,
        }
    }

    fn as_int(&self) -> Option<i64> {
        match &self.kind {
            Kind::Scalar(s, ScalarStyle::Plain) => s.parse().ok(),
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

    fn items(&self) -> &[Node] {
        match &self.kind {
            Kind::Seq(items) => items,
            _ => &[],
        }
    }
}

impl Node {
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
            match (
                list.iter().find(|n| item_name(*n, *key) == Some(name)),
                want,
            ) {
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
                .find(|(_, n)| item_name(*n, key) == Some(name));
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
    opts: &'a Options,
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
        let claim = workload == Workload::StatefulSet;
        let planned = plan_template(
            self.opts,
            &product,
            what,
            kind_node,
            &Template {
                node: root.path(template_path),
                path: template_path.join("."),
                native_sidecar: workload.native_sidecar(),
                state_on_claim: claim,
            },
        )
        .map_err(|r| self.problem(r.at, r.message))?;
        for note in planned.ephemeral_state.into_iter().chain(planned.notes) {
            self.notes.push(self.problem(kind_node, note));
        }
        let template = planned.change;
        let annotations = change([
            (INJECTED, Change::Set(s("true"))),
            (PRODUCT, Change::Set(s(&product))),
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
                                STATE_VOLUME.into(),
                                Some(map([
                                    ("metadata", map([("name", s(STATE_VOLUME))])),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;
    use meshgov_server::inject::{check_object_name, default_config_map, is_quantity};

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
        let out = inject(text, &a, &a.options()).unwrap().output;
        let again = inject(&out, &a, &a.options()).unwrap().output;
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
        let out = inject(text, &a, &a.options()).unwrap().output;
        assert_eq!(containers(&out), ["meshgov-sidecar", "app"]);
        assert!(!out.contains("image: old"));
        assert_eq!(
            names(&out, &["spec", "template", "spec", "volumes"]),
            ["keep", "meshgov-config", "meshgov-keys"]
        );
        assert_eq!(inject(&out, &a, &a.options()).unwrap().output, out);
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
                let Ok(first) = inject(text, &a, &a.options()) else {
                    continue;
                };
                let out = first.output;
                serde_saphyr::from_multiple::<serde_json::Value>(&out)
                    .unwrap_or_else(|e| panic!("cut at {cut}: {e}\n{out}"));
                let again = inject(&out, &a, &a.options())
                    .unwrap_or_else(|e| panic!("cut at {cut}: {e:?}\n{out}"));
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
