//! A bundle's plugins, compiled together, and the check-time inspector.

use crate::host::{Kind, LoadError, Plugin, Runtime};
use meshgov_anonymize::{PluginTransform, PluginValidator};
use meshgov_core::plugins::{ModuleInspector, PluginManifest, PluginSet};
use meshgov_core::policies::Policies;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Every plugin of one bundle, compiled. Build it when the bundle loads and
/// drop it with the bundle.
#[derive(Debug, Default, Clone)]
pub struct Plugins {
    by_name: BTreeMap<String, Arc<Plugin>>,
}

impl Plugins {
    /// Compiles and checks every plugin the policies declare. Any failure
    /// (a digest mismatch, a missing module, a bad export) refuses the
    /// whole set: a bundle is enforced with all its plugins or not at all.
    pub fn compile(policies: &Policies) -> Result<Plugins, LoadError> {
        if policies.plugins.is_empty() {
            // No engine (and no instance pool) for bundles without plugins.
            return Ok(Plugins::default());
        }
        let runtime = Runtime::global()?;
        let mut by_name = BTreeMap::new();
        for manifest in &policies.plugins {
            let bytes = policies
                .modules
                .get(&manifest.name)
                .ok_or_else(|| LoadError::Invalid {
                    plugin: manifest.name.clone(),
                    reason: "its module is missing".into(),
                })?;
            by_name.insert(
                manifest.name.clone(),
                Arc::new(runtime.load(manifest, bytes)?),
            );
        }
        Ok(Plugins { by_name })
    }

    /// The compiled plugin called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.by_name.get(name)
    }

    /// How many plugins the set holds.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether the set holds no plugin.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The plugins' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

impl PluginSet for Plugins {
    fn transform(&self, name: &str) -> Option<Arc<dyn PluginTransform>> {
        let p = self
            .by_name
            .get(name)
            .filter(|p| p.kind() == Kind::Transform)?;
        Some(Arc::clone(p) as Arc<dyn PluginTransform>)
    }

    fn validator(&self, name: &str) -> Option<Arc<dyn PluginValidator>> {
        let p = self
            .by_name
            .get(name)
            .filter(|p| p.kind() == Kind::Validator)?;
        Some(Arc::clone(p) as Arc<dyn PluginValidator>)
    }
}

/// `meshgov check`'s inspector: loads each module as the sidecar would.
#[derive(Debug, Default, Clone, Copy)]
pub struct Inspector;

impl ModuleInspector for Inspector {
    fn inspect(&self, manifest: &PluginManifest, bytes: &[u8]) -> Result<(), String> {
        Runtime::global()
            .and_then(|r| r.load(manifest, bytes))
            .map(drop)
            .map_err(|e| match e {
                LoadError::Invalid { reason, .. } => reason,
                other => other.to_string(),
            })
    }
}
