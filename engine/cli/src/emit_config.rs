//! `meshgov inject --emit-config SIDECAR_TOML`: what an injected pod
//! mounts. The ConfigMap holds the sidecar's config and every file it names
//! inside /etc/meshgov/config (the descriptor, a JWKS file); the Secret
//! template has an empty entry for each file it names inside
//! /etc/meshgov/keys, to fill in before applying.

use crate::Failure;
use meshgov_server::inject::{CONFIG_DIR, CONFIG_FILE, KEYS_DIR, Options, PRODUCT};
use std::path::{Component, Path, PathBuf};

/// A file the config names, by the key that names it.
struct Named {
    key: String,
    /// As the sidecar resolves it in the pod.
    path: PathBuf,
    /// As written in the config (relative to its directory, or absolute).
    written: String,
}

pub fn run(config: &Path, product: &str, opts: &Options) -> Result<(), Failure> {
    let text = std::fs::read_to_string(config).map_err(|e| Failure::io(config, &e))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        Failure::usage(format!(
            "{}: not a sidecar config: {}",
            config.display(),
            e.message().trim()
        ))
    })?;
    let mut named = Vec::new();
    files("", &toml::Value::Table(table.clone()), &mut named);
    if !table.contains_key("descriptor") {
        return Err(Failure::usage(format!(
            "{}: names no `descriptor`; the sidecar needs one",
            config.display()
        )));
    }
    let config_map = opts.config_map_name(product).map_err(Failure::usage)?;
    let secret = opts.keys_secret_name(&config_map);
    let local_dir = config.parent().unwrap_or(Path::new("."));

    let mut data = vec![(CONFIG_FILE.to_string(), text.clone())];
    let mut keys: Vec<(String, String)> = Vec::new();
    for n in &named {
        let in_dir = |dir: &str| {
            n.path
                .strip_prefix(dir)
                .ok()
                .and_then(|rel| rel.to_str())
                .map(str::to_string)
        };
        if let Some(rel) = in_dir(CONFIG_DIR) {
            check_key(&rel, n, "ConfigMap", CONFIG_DIR)?;
            let local = local_dir.join(&rel);
            let content = std::fs::read_to_string(&local).map_err(|e| Failure::io(&local, &e))?;
            if !data.iter().any(|(k, _)| *k == rel) {
                data.push((rel, content));
            }
        } else if let Some(rel) = in_dir(KEYS_DIR) {
            check_key(&rel, n, "Secret", KEYS_DIR)?;
            if !keys.iter().any(|(k, _)| *k == rel) {
                keys.push((rel, n.key.clone()));
            }
        } else {
            return Err(Failure::usage(format!(
                "{}: `{}` names `{}`, which an injected pod does not have: put it in the ConfigMap (a path relative to the config) or the keys Secret (under {KEYS_DIR})",
                config.display(),
                n.key,
                n.written
            )));
        }
    }

    let mut out = format!(
        "# What `meshgov inject` mounts for {product}: the sidecar's config at {CONFIG_DIR}.\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {config_map}\n  annotations:\n    {PRODUCT}: {product}\ndata:\n"
    );
    for (k, v) in &data {
        out += &format!("  {k}:{}", block(v, 4));
    }
    match (&secret, keys.is_empty()) {
        (Some(name), false) => {
            out += &format!(
                "---\n# The keys at {KEYS_DIR}: fill in every entry before applying (or create\n\
                 # the Secret with `kubectl create secret generic {name} --from-file=...`).\n\
                 apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  annotations:\n    {PRODUCT}: {product}\ntype: Opaque\nstringData:\n"
            );
            for (k, named_by) in &keys {
                out += &format!("  # {named_by}\n  {k}: \"\"\n");
            }
        }
        (Some(name), true) => errln!(
            "meshgov: note: {} names no key files; inject with `--no-keys-secret`, or the pods wait for a Secret `{name}`",
            config.display()
        ),
        (None, false) => {
            return Err(Failure::usage(format!(
                "{} names key files under {KEYS_DIR} ({}), but `--no-keys-secret` mounts none",
                config.display(),
                keys.iter()
                    .map(|(_, by)| format!("`{by}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        (None, true) => {}
    }
    outln!("{}", out.trim_end());
    Ok(())
}

/// A ConfigMap or Secret key: one file, directly in the mounted directory.
fn check_key(rel: &str, n: &Named, what: &str, dir: &str) -> Result<(), Failure> {
    let ok = !rel.is_empty()
        && rel.len() <= 253
        && rel
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "`{}` names `{}`: a {what} holds files directly in {dir}, named with letters, digits, `-`, `_` and `.`",
            n.key, n.written
        )))
    }
}

/// The files a sidecar config names: `descriptor`, every `file` and
/// `*_file` key but `bundle_file` (the sidecar's own state), and the bare
/// strings of `pseudonym_keys`.
fn files(prefix: &str, v: &toml::Value, out: &mut Vec<Named>) {
    let path = |written: &str| {
        let p = Path::new(written);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            normalize(&Path::new(CONFIG_DIR).join(p))
        }
    };
    match v {
        toml::Value::Table(t) => {
            for (k, child) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                let names_file = (k == "file" || k.ends_with("_file") || k == "descriptor")
                    && key != "bundle_file"
                    || prefix == "pseudonym_keys";
                match child {
                    toml::Value::String(s) if names_file => out.push(Named {
                        key,
                        path: path(s),
                        written: s.clone(),
                    }),
                    _ => files(&key, child, out),
                }
            }
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                files(&format!("{prefix}[{i}]"), item, out);
            }
        }
        _ => {}
    }
}

/// `a/./b/../c` as `a/c`, without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// A string value after `key:`, as a literal block when it reads back the
/// same, else double-quoted; through the final newline.
fn block(text: &str, indent: usize) -> String {
    let literal_safe = !text.is_empty()
        && !text.starts_with([' ', '\t', '\n'])
        && !text.contains('\r')
        && text.lines().all(|l| l == l.trim_end());
    if !literal_safe {
        return format!(
            " {}\n",
            serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
        );
    }
    let body = text.trim_end_matches('\n');
    let chomp = match text.len() - body.len() {
        0 => "-",
        1 => "",
        _ => "+",
    };
    let pad = " ".repeat(indent);
    let mut out = format!(" |{chomp}\n");
    for line in body.split('\n') {
        if line.is_empty() {
            out.push('\n');
        } else {
            out += &format!("{pad}{line}\n");
        }
    }
    for _ in 1..(text.len() - body.len()) {
        out.push('\n');
    }
    out
}
