//! The modules of `meshgov-server` (`engine/server/src`) and of
//! `meshgov-sidecar` (`sidecar/src`) import each other without a cycle:
//! each one can be read, tested and changed knowing only the ones below it.
//! In the sidecar, the shared state (`app`) uses no request handler; in the
//! engine, metrics and collection take what they use, not the engine.
//!
//! What is checked, from the source text alone:
//!
//! - A file's module is the first component of its path under `src/`:
//!   `src/engine.rs` and everything under `src/engine/` are `engine`.
//!   `lib.rs` (and `main.rs`) are the crate root, which may use every module.
//! - A module uses another when its code names it through a `crate::` path:
//!   `crate::engine::Engine`, `use crate::engine;`, `use crate::{engine::X,
//!   client};`, or `crate::Name` for a name the root re-exports from a
//!   module (`pub use engine::{Name, …};` in `lib.rs`). `super::` paths count
//!   the same way, which overcounts only inside a nested module (where
//!   `super::` is the file's own module, whose imports count already).
//! - Comments (so doc links), string, raw string and char literals are not
//!   code and are skipped. A module naming itself is no edge.
//!
//! The graph of those edges must be acyclic; a cycle fails the test with
//! its path (`a -> b -> a`) and every edge. The reader itself is tested on
//! small inputs below.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// `src` with comments and literals replaced by spaces.
fn code_only(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        let prev = i.checked_sub(1).map(|p| b[p]);
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
            continue;
        }
        // Raw strings: r"…", r#"…"#, br#"…"# (no escapes inside).
        let raw_start = c == 'r'
            && match prev {
                Some('b') => i < 2 || !ident(b[i - 2]),
                Some(p) => !ident(p),
                None => true,
            };
        if raw_start {
            let mut j = i + 1;
            while b.get(j) == Some(&'#') {
                j += 1;
            }
            if b.get(j) == Some(&'"') {
                let hashes = j - i - 1;
                j += 1;
                while j < b.len() {
                    if b[j] == '"' && (1..=hashes).all(|k| b.get(j + k) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                i = j;
                out.push(' ');
                continue;
            }
        }
        if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
            continue;
        }
        if c == '\'' {
            // A char literal ('x', '\n', '\u{1F600}'), else a lifetime.
            if next == Some('\\') {
                let mut j = i + 3;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push(' ');
                continue;
            }
            if b.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push(' ');
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

fn ident_at(b: &[char], mut i: usize) -> (String, usize) {
    let mut s = String::new();
    while let Some(&c) = b.get(i) {
        if !(c.is_alphanumeric() || c == '_') {
            break;
        }
        s.push(c);
        i += 1;
    }
    (s, i)
}

fn skip_space(b: &[char], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    i
}

/// The first names after every `crate::` and `super::` in `code`: for a
/// group (`crate::{a::X, b}`), the first name of each of its items.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let b: Vec<char> = code.chars().collect();
    let mut names = BTreeSet::new();
    for prefix in ["crate", "super"] {
        let p: Vec<char> = prefix.chars().collect();
        let mut i = 0;
        while i + p.len() <= b.len() {
            let boundary = i == 0 || !(b[i - 1].is_alphanumeric() || b[i - 1] == '_');
            if !(boundary && b[i..i + p.len()] == p[..]) {
                i += 1;
                continue;
            }
            let mut j = skip_space(&b, i + p.len());
            i += p.len();
            if !(b.get(j) == Some(&':') && b.get(j + 1) == Some(&':')) {
                continue;
            }
            j = skip_space(&b, j + 2);
            if b.get(j) == Some(&'{') {
                // Each item of the group starts after `{` or a `,` at depth 1.
                let mut depth = 0;
                let mut expect_item = true;
                while let Some(&c) = b.get(j) {
                    match c {
                        '{' => {
                            depth += 1;
                            expect_item = depth == 1;
                        }
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        ',' if depth == 1 => expect_item = true,
                        c if c.is_whitespace() => {}
                        _ if expect_item && depth == 1 => {
                            let (name, end) = ident_at(&b, j);
                            if !name.is_empty() {
                                names.insert(name);
                                j = end;
                                expect_item = false;
                                continue;
                            }
                            expect_item = false;
                        }
                        _ => {}
                    }
                    j += 1;
                }
            } else {
                let (name, _) = ident_at(&b, j);
                if !name.is_empty() {
                    names.insert(name);
                }
            }
        }
    }
    names
}

/// Name → module, for every name the root's `use` statements bring in
/// from a module (`pub use engine::{Engine, EngineConfig};`).
fn reexports(root_code: &str, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for stmt in root_code.split(';') {
        let words: Vec<&str> = stmt
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        let Some(u) = words.iter().position(|w| *w == "use") else {
            continue;
        };
        let mut path = words[u + 1..].iter();
        let mut first = path.next();
        if matches!(first, Some(&"crate" | &"self")) {
            first = path.next();
        }
        let Some(module) = first.filter(|m| modules.contains(**m)) else {
            continue;
        };
        for name in path {
            map.insert((*name).to_string(), (*module).to_string());
        }
    }
    map
}

/// The module a file under `src/` belongs to; `None` for the crate root.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module graph of the crate whose sources are `files` (path under
/// `src`, text).
fn graph(files: &[(PathBuf, String)], src: &Path) -> Graph {
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|(p, _)| module_of(src, p))
        .collect();
    let mut names = BTreeMap::new();
    for (p, text) in files {
        if module_of(src, p).is_none() {
            names.extend(reexports(&code_only(text), &modules));
        }
    }
    let mut g: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for (p, text) in files {
        let Some(from) = module_of(src, p) else {
            continue;
        };
        for name in crate_paths(&code_only(text)) {
            let to = if modules.contains(&name) {
                Some(name)
            } else {
                names.get(&name).cloned()
            };
            if let Some(to) = to.filter(|t| *t != from) {
                g.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    g
}

/// A cycle as `a -> b -> a`, if there is one.
fn find_cycle(g: &Graph) -> Option<String> {
    fn visit(
        g: &Graph,
        m: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<String> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle.join(" -> "));
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for next in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(g, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|m| visit(g, m, &mut Vec::new(), &mut done))
}

fn edges(g: &Graph) -> String {
    g.iter()
        .map(|(m, to)| {
            format!(
                "{m} -> {}",
                to.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Fails with the cycle when `src` (relative to the repository root) has one.
fn assert_acyclic(crate_src: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(crate_src);
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let files: Vec<(PathBuf, String)> = paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();
    let g = graph(&files, &src);
    // The reader sees the crate: its modules and at least one import.
    assert!(g.len() >= 2, "{crate_src} modules: {g:?}");
    assert!(
        g.values().any(|to| !to.is_empty()),
        "no imports read in {crate_src}:\n{}",
        edges(&g)
    );
    if let Some(cycle) = find_cycle(&g) {
        panic!(
            "import cycle in {crate_src}: {cycle}\nevery edge:\n{}",
            edges(&g)
        );
    }
}

#[test]
fn the_server_modules_form_no_import_cycle() {
    assert_acyclic("engine/server/src");
}

#[test]
fn the_sidecar_modules_form_no_import_cycle() {
    assert_acyclic("sidecar/src");
}

fn graph_of(files: &[(&str, &str)]) -> Graph {
    let src = Path::new("/src");
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(p, t)| (src.join(p), (*t).to_string()))
        .collect();
    graph(&files, src)
}

#[test]
fn the_reader_finds_crate_paths_in_code_only() {
    let g = graph_of(&[
        (
            "lib.rs",
            "pub mod a; pub mod b;\npub use b::{Bee, Hive as H};\n",
        ),
        (
            "a.rs",
            r##"
//! See [`crate::c`] (a doc link, not code).
use crate::{
    d::{One, Two},
    e,
};
/* crate::f in a /* nested */ comment */
fn x() {
    let _ = crate :: g::run();
    let _ = "crate::h";
    let _ = r#"crate::i " still inside"#;
    let _ = ('"', '\'', '\u{22}'); let _ = crate::j::K;
    let _ = mycrate::k::L;
    let _: &'static str = crate::Bee::NAME;
}
"##,
        ),
        ("b.rs", "use super::a;\n"),
        ("c.rs", ""),
        ("d/mod.rs", "use crate::d::inner;\n"),
        ("d/inner.rs", "use crate::c::X;\n"),
        ("e.rs", ""),
        ("f.rs", ""),
        ("g.rs", ""),
        ("h.rs", ""),
        ("i.rs", ""),
        ("j.rs", ""),
        ("k.rs", ""),
    ]);
    let to = |m: &str| g[m].iter().map(String::as_str).collect::<Vec<_>>();
    assert_eq!(to("a"), ["b", "d", "e", "g", "j"], "{g:?}");
    assert_eq!(to("b"), ["a"]);
    assert_eq!(to("d"), ["c"], "a module's subdirectory is the module");
    assert!(to("c").is_empty());
    assert_eq!(find_cycle(&g).as_deref(), Some("a -> b -> a"));
}

#[test]
fn cycles_are_found_and_acyclic_graphs_pass() {
    let g = graph_of(&[
        ("lib.rs", ""),
        ("x.rs", "use crate::y::Y;"),
        ("y.rs", "fn f() { crate::z::go() }"),
        ("z.rs", "use crate::x;"),
    ]);
    assert_eq!(find_cycle(&g).as_deref(), Some("x -> y -> z -> x"));
    let g = graph_of(&[
        ("lib.rs", ""),
        ("x.rs", "use crate::{y, z};"),
        ("y.rs", "use crate::z::Z;"),
        ("z.rs", "mod tests { use super::*; }"),
    ]);
    assert_eq!(find_cycle(&g), None, "{g:?}");
}
