//! `plugins/*.toml`: WebAssembly plugins the guild trusts, pinned by digest.

use serde::{Deserialize, Serialize};

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
    /// `transform` (anonymization) or `validator` (standards).
    pub kind: String,
    /// The module's path, relative to the `plugins/` directory.
    pub module: String,
    /// Lowercase hex SHA-256 of the module bytes; a mismatch is refused.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Fuel per call (instructions, roughly).
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// Linear memory cap, in bytes.
    #[serde(default = "default_memory")]
    pub max_memory_bytes: u64,
}

fn default_fuel() -> u64 {
    10_000_000
}

fn default_memory() -> u64 {
    16 << 20
}

pub const PLUGIN_KINDS: &[&str] = &["transform", "validator"];

/// True when `module` names a file inside `plugins/`: relative, with no
/// `..`, so a manifest cannot make the checker read arbitrary files.
pub fn module_path_is_confined(module: &str) -> bool {
    let path = std::path::Path::new(module);
    !module.is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}
