//! Policy sources: the files of a policy repository, as text.
//!
//! The core never touches the file system while deciding. This module is the
//! one edge that reads a repository from disk into memory; everything after
//! works on [`SourceSet`] values, so tests can build repositories in memory.

use crate::diag::{Diagnostic, LineIndex, Position};
use serde::de::DeserializeOwned;
use std::path::Path;

/// One file of a policy repository.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path shown to users, relative to the repository root (`access/a.cedar`).
    pub path: String,
    pub text: String,
    lines: LineIndex,
}

impl SourceFile {
    pub fn new(path: impl Into<String>, text: impl Into<String>) -> Self {
        let text = text.into();
        let lines = LineIndex::new(&text);
        SourceFile {
            path: path.into(),
            text,
            lines,
        }
    }

    pub fn position(&self, offset: usize) -> Position {
        self.lines.position(&self.text, offset)
    }

    /// Parses the file as TOML into `T`; a syntax or shape error becomes a
    /// located diagnostic with `rule`.
    pub fn parse_toml<T: DeserializeOwned>(&self, rule: &'static str) -> Result<T, Diagnostic> {
        toml::from_str(&self.text).map_err(|e| {
            let pos = e
                .span()
                .map(|s| self.position(s.start))
                .unwrap_or(Position { line: 1, col: 1 });
            let message = e.message().trim().to_string();
            let hint = toml_hint(&message);
            Diagnostic::error(&self.path, pos, rule, message, hint)
        })
    }

    /// A locator for semantic errors in this TOML file.
    pub fn locator(&self) -> TomlLocator<'_> {
        TomlLocator::new(self)
    }
}

fn toml_hint(message: &str) -> String {
    if message.starts_with("unknown field") {
        "remove the key, or fix its spelling to one of the expected keys".into()
    } else if message.starts_with("missing field") {
        "add the missing key to this table".into()
    } else if message.starts_with("unknown variant") {
        "use one of the expected values".into()
    } else if message.starts_with("invalid type") {
        "change the value to the expected type".into()
    } else if message.contains("duplicate key") {
        "each key may appear once per table; remove one".into()
    } else {
        "see the TOML syntax at the reported position".into()
    }
}

/// One step of a path into a TOML document: a key, or an array index.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

impl<'a> From<&'a str> for Step<'a> {
    fn from(k: &'a str) -> Self {
        Step::Key(k)
    }
}

impl From<usize> for Step<'_> {
    fn from(i: usize) -> Self {
        Step::Index(i)
    }
}

/// Finds where a value sits in a TOML file, for semantic errors found after
/// parsing into the plain model (which keeps no spans).
pub struct TomlLocator<'f> {
    file: &'f SourceFile,
    root: Option<toml::Spanned<toml::de::DeTable<'f>>>,
}

impl<'f> TomlLocator<'f> {
    fn new(file: &'f SourceFile) -> Self {
        TomlLocator {
            file,
            root: toml::de::DeTable::parse(&file.text).ok(),
        }
    }

    /// The position of the deepest value of `path` that exists; the start
    /// of the file if nothing matches.
    pub fn at(&self, path: &[Step<'_>]) -> Position {
        let Some(root) = &self.root else {
            return Position { line: 1, col: 1 };
        };
        let mut offset = root.span().start;
        let mut table = Some(root.get_ref());
        let mut array: Option<&toml::de::DeArray<'_>> = None;
        for step in path {
            let next = match (step, table, array) {
                (Step::Key(k), Some(t), _) => t
                    .iter()
                    .find(|(key, _)| key.get_ref().as_ref() == *k)
                    .map(|(key, v)| (key.span().start, v)),
                (Step::Index(i), _, Some(a)) => a.get(*i).map(|v| (v.span().start, v)),
                _ => None,
            };
            let Some((start, value)) = next else { break };
            offset = start;
            table = None;
            array = None;
            match value.get_ref() {
                toml::de::DeValue::Table(t) => table = Some(t),
                toml::de::DeValue::Array(a) => array = Some(a),
                _ => {}
            }
        }
        self.file.position(offset)
    }
}

/// A policy repository's files, grouped by kind.
#[derive(Debug, Clone, Default)]
pub struct SourceSet {
    pub mesh: Option<SourceFile>,
    pub schema: Option<SourceFile>,
    pub access: Vec<SourceFile>,
    pub anonymization: Vec<SourceFile>,
    pub privacy: Vec<SourceFile>,
    pub standards: Vec<SourceFile>,
    pub plugins: Vec<SourceFile>,
    pub tests: Vec<SourceFile>,
    /// Product descriptors the mesh knows about (`products/*.yaml`).
    pub products: Vec<SourceFile>,
    /// Plugin module bytes, by repository-relative path.
    pub modules: std::collections::BTreeMap<String, Vec<u8>>,
}

/// Why a repository could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}", crate::diag::io_message(.path, .source))]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("`{0}` is not a policy repository: it has no `mesh.toml`")]
    NotARepository(String),
    #[error(
        "`{0}` does not exist; give the directory of a policy repository (the one holding `mesh.toml`)"
    )]
    NoDirectory(String),
}

impl SourceSet {
    /// Reads a policy repository from disk. Files are sorted by name so that
    /// every later step is deterministic.
    pub fn read_dir(root: &Path) -> Result<SourceSet, ReadError> {
        let io = |p: &Path, e| ReadError::Io {
            path: p.display().to_string(),
            source: e,
        };
        let mesh_path = root.join("mesh.toml");
        if !root.exists() {
            return Err(ReadError::NoDirectory(root.display().to_string()));
        }
        if !mesh_path.is_file() {
            return Err(ReadError::NotARepository(root.display().to_string()));
        }
        let read = |rel: &str| -> Result<Option<SourceFile>, ReadError> {
            let p = root.join(rel);
            if !p.exists() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&p).map_err(|e| io(&p, e))?;
            Ok(Some(SourceFile::new(rel, text)))
        };
        let read_all = |dir: &str, exts: &[&str]| -> Result<Vec<SourceFile>, ReadError> {
            let d = root.join(dir);
            if !d.is_dir() {
                return Ok(Vec::new());
            }
            let mut names = Vec::new();
            for entry in std::fs::read_dir(&d).map_err(|e| io(&d, e))? {
                let entry = entry.map_err(|e| io(&d, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if exts.iter().any(|x| name.ends_with(x)) && entry.path().is_file() {
                    names.push(name);
                }
            }
            names.sort();
            names
                .into_iter()
                .map(|n| {
                    let rel = format!("{dir}/{n}");
                    let p = root.join(&rel);
                    let text = std::fs::read_to_string(&p).map_err(|e| io(&p, e))?;
                    Ok(SourceFile::new(rel, text))
                })
                .collect()
        };
        let mut set = SourceSet {
            mesh: read("mesh.toml")?,
            schema: read("access/schema.cedarschema")?,
            access: read_all("access", &[".cedar"])?,
            anonymization: read_all("anonymization", &[".toml"])?,
            privacy: read_all("privacy", &[".toml"])?,
            standards: read_all("standards", &[".toml"])?,
            plugins: read_all("plugins", &[".toml"])?,
            tests: read_all("tests", &[".toml"])?,
            products: read_all("products", &[".yaml", ".yml"])?,
            modules: Default::default(),
        };
        // Plugin modules are named by the plugin manifests; read the ones
        // that exist so the checker can verify their digests.
        for file in &set.plugins {
            if let Ok(doc) = toml::from_str::<crate::plugins::PluginFile>(&file.text) {
                for p in doc.plugins {
                    if !crate::plugins::module_path_is_confined(&p.module) {
                        continue;
                    }
                    let path = root.join("plugins").join(&p.module);
                    if let Ok(bytes) = std::fs::read(&path) {
                        set.modules.insert(p.module.clone(), bytes);
                    }
                }
            }
        }
        Ok(set)
    }
}
