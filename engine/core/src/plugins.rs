//! `plugins/*.toml`: WebAssembly plugins the guild trusts, pinned by digest.

use meshgov_anonymize::{PluginTransform, PluginValidator};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginFile {
    #[serde(default)]
    pub plugins: Vec<PluginManifest>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginManifest {
    pub name: String,
    /// What the plugin is for.
    pub kind: PluginKind,
    /// The module's path, relative to the `plugins/` directory.
    pub module: String,
    /// Lowercase hex SHA-256 of the module bytes; a mismatch is refused.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Fuel per value (for a transform) or per record (for a validator):
    /// roughly, WebAssembly instructions. A call over a batch of `n` gets
    /// `n × fuel`. Fuel is deterministic, so a plugin that runs out does so
    /// in `meshgov test` and in the sidecar alike.
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// Linear memory cap, in bytes (at most [`MAX_PLUGIN_MEMORY`]).
    #[serde(default = "default_memory")]
    pub max_memory_bytes: u64,
}

fn default_fuel() -> u64 {
    100_000
}

/// The largest memory cap a plugin may declare: 256 MiB.
pub const MAX_PLUGIN_MEMORY: u64 = 256 << 20;

fn default_memory() -> u64 {
    16 << 20
}

/// What a plugin is for: `transform` (anonymization) or `validator`
/// (standards). Any other `kind` is a parse error with its location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    Transform,
    Validator,
}

impl PluginKind {
    /// The name a manifest writes.
    pub fn name(self) -> &'static str {
        match self {
            PluginKind::Transform => "transform",
            PluginKind::Validator => "validator",
        }
    }
}

/// True when `module` names a file inside `plugins/`: relative, with no
/// `..`, so a manifest cannot make the checker read arbitrary files.
pub fn module_path_is_confined(module: &str) -> bool {
    let path = std::path::Path::new(module);
    !module.is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// The plugins of a bundle, compiled by a host (`meshgov-wasm`). The core
/// only names plugins; running them is the host's job, so the core stays
/// free of any runtime.
pub trait PluginSet: Send + Sync {
    /// The transform plugin called `name`, if the set holds one.
    fn transform(&self, name: &str) -> Option<Arc<dyn PluginTransform>>;
    /// The validator plugin called `name`, if the set holds one.
    fn validator(&self, name: &str) -> Option<Arc<dyn PluginValidator>>;
}

/// No plugins at all: every rule that names a plugin fails closed.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPlugins;

impl PluginSet for NoPlugins {
    fn transform(&self, _: &str) -> Option<Arc<dyn PluginTransform>> {
        None
    }
    fn validator(&self, _: &str) -> Option<Arc<dyn PluginValidator>> {
        None
    }
}

/// Loads a plugin module to confirm it meets the plugin ABI, for `check`.
pub trait ModuleInspector {
    /// `Ok` when `bytes` is a module `manifest` can run; else why not.
    fn inspect(&self, manifest: &PluginManifest, bytes: &[u8]) -> Result<(), String>;
}
