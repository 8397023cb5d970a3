//! The compiled policies of a mesh (or of one product's slice): what the
//! checker produces, what a bundle carries, and what the evaluators read.

use crate::access::{Access, AccessLoadError};
use crate::anonymization::{AnonRule, AnonymizationFile, Method, RowFilter};
use crate::descriptor::ProductInfo;
use crate::mesh::MeshConfig;
use crate::plugins::PluginManifest;
use crate::privacy::{Aggregation, PrivacyFile, PrivacyRule};
use crate::scope;
use crate::standards::{Check, StandardRule, StandardsFile};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Policies {
    pub mesh: MeshConfig,
    pub access: Access,
    pub anonymization: Vec<AnonRule>,
    pub row_filters: Vec<RowFilter>,
    pub privacy: Vec<PrivacyRule>,
    pub standards: Vec<StandardRule>,
    pub plugins: Vec<PluginManifest>,
    /// Plugin module bytes by plugin name.
    pub modules: BTreeMap<String, Vec<u8>>,
    /// The product this slice was compiled for; `None` for the whole mesh.
    pub product: Option<String>,
}

/// Component names inside a bundle.
pub mod component {
    pub const MESH: &str = "mesh.json";
    pub const SCHEMA: &str = "access/schema.cedarschema";
    pub const POLICIES: &str = "access/policies.json";
    pub const ANONYMIZATION: &str = "anonymization.json";
    pub const PRIVACY: &str = "privacy.json";
    pub const STANDARDS: &str = "standards.json";
    pub const PLUGINS: &str = "plugins.json";
    pub const MODULE_PREFIX: &str = "plugins/";
    pub const MODULE_SUFFIX: &str = ".wasm.b64";
}

#[derive(Serialize, Deserialize)]
struct PolicyText {
    id: String,
    text: String,
}

/// Why a bundle's components do not form valid policies.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("the bundle has no `{0}` component")]
    Missing(&'static str),
    #[error("component `{name}` is malformed: {reason}")]
    Malformed { name: String, reason: String },
    /// Well-formed, but it holds a policy choice this build does not know
    /// (a newer engine's transform, say): enforcing the rest would enforce
    /// less than the guild wrote, so the whole bundle is refused.
    #[error("component `{name}` holds a policy this build cannot enforce: {reason}")]
    Unsupported { name: String, reason: String },
    #[error(transparent)]
    Access(#[from] AccessLoadError),
    #[error("plugin `{plugin}`: the module's digest is {actual}, but its manifest pins {pinned}")]
    PluginDigest {
        plugin: String,
        actual: String,
        pinned: String,
    },
}

fn to_json<T: Serialize>(v: &T) -> String {
    // INVARIANT: the model holds only strings, numbers, bools, vecs and
    // BTreeMaps, which always serialize.
    serde_json::to_string(v).unwrap_or_default()
}

fn from_json<T: for<'de> Deserialize<'de>>(
    c: &BTreeMap<String, String>,
    name: &'static str,
) -> Result<T, ComponentError> {
    let text = c.get(name).ok_or(ComponentError::Missing(name))?;
    serde_json::from_str(text).map_err(|e| {
        let reason = e.to_string();
        // serde_json has no typed category for it, but every enum of the
        // model reports an unknown name through `Error::unknown_variant`.
        if reason.starts_with("unknown variant") {
            ComponentError::Unsupported {
                name: name.into(),
                reason,
            }
        } else {
            ComponentError::Malformed {
                name: name.into(),
                reason,
            }
        }
    })
}

/// Parses each written rule into the model; a rule the model cannot hold
/// makes the component unsupported.
fn parse_each<S, T, E: std::fmt::Display>(
    name: &'static str,
    specs: Vec<S>,
    parse: impl Fn(S) -> Result<T, E>,
) -> Result<Vec<T>, ComponentError> {
    specs
        .into_iter()
        .map(|s| {
            parse(s).map_err(|e| ComponentError::Unsupported {
                name: name.into(),
                reason: e.to_string(),
            })
        })
        .collect()
}

impl Policies {
    /// The bundle components: text, one per concern, deterministic.
    pub fn components(&self) -> BTreeMap<String, String> {
        let mut c = BTreeMap::new();
        c.insert(component::MESH.into(), to_json(&self.mesh));
        c.insert(
            component::SCHEMA.into(),
            self.access.schema_text().to_string(),
        );
        let texts: Vec<PolicyText> = self
            .access
            .texts()
            .iter()
            .map(|(id, text)| PolicyText {
                id: id.clone(),
                text: text.clone(),
            })
            .collect();
        c.insert(component::POLICIES.into(), to_json(&texts));
        c.insert(
            component::ANONYMIZATION.into(),
            to_json(&AnonymizationFile {
                rules: self.anonymization.iter().cloned().map(Into::into).collect(),
                row_filters: self.row_filters.iter().cloned().map(Into::into).collect(),
            }),
        );
        c.insert(
            component::PRIVACY.into(),
            to_json(&PrivacyFile::<Aggregation> {
                rules: self.privacy.clone(),
            }),
        );
        c.insert(
            component::STANDARDS.into(),
            to_json(&StandardsFile::<Check> {
                rules: self.standards.clone(),
            }),
        );
        c.insert(component::PLUGINS.into(), to_json(&self.plugins));
        for (name, bytes) in &self.modules {
            c.insert(
                format!(
                    "{}{name}{}",
                    component::MODULE_PREFIX,
                    component::MODULE_SUFFIX
                ),
                base64::engine::general_purpose::STANDARD.encode(bytes),
            );
        }
        c
    }

    /// Rebuilds policies from a verified bundle's components.
    pub fn from_components(
        c: &BTreeMap<String, String>,
        product: Option<String>,
    ) -> Result<Policies, ComponentError> {
        Policies::from_components_reusing(c, product, None)
    }

    /// Like [`Policies::from_components`], reusing the Cedar policies of
    /// `previous` whose text is unchanged (see [`Access::from_texts_reusing`]).
    pub fn from_components_reusing(
        c: &BTreeMap<String, String>,
        product: Option<String>,
        previous: Option<&Policies>,
    ) -> Result<Policies, ComponentError> {
        let mesh: MeshConfig = from_json(c, component::MESH)?;
        let schema = c
            .get(component::SCHEMA)
            .ok_or(ComponentError::Missing(component::SCHEMA))?;
        let texts: Vec<PolicyText> = from_json(c, component::POLICIES)?;
        let texts: Vec<(String, String)> = texts.into_iter().map(|t| (t.id, t.text)).collect();
        let access = Access::from_texts_reusing(schema, &texts, previous.map(|p| &p.access))?;
        let anon: AnonymizationFile = from_json(c, component::ANONYMIZATION)?;
        let privacy: PrivacyFile = from_json(c, component::PRIVACY)?;
        let anonymization = parse_each(component::ANONYMIZATION, anon.rules, AnonRule::try_from)?;
        let row_filters = parse_each(
            component::ANONYMIZATION,
            anon.row_filters,
            RowFilter::try_from,
        )?;
        let privacy = parse_each(component::PRIVACY, privacy.rules, |r| {
            r.parse()
                .map_err(|(_, a)| format!("unknown aggregation `{a}`"))
        })?;
        let standards: StandardsFile = from_json(c, component::STANDARDS)?;
        let standards = parse_each(component::STANDARDS, standards.rules, |r| {
            r.parse().map_err(|c| format!("unknown check `{c}`"))
        })?;
        let plugins: Vec<PluginManifest> = from_json(c, component::PLUGINS)?;
        let mut modules = BTreeMap::new();
        for p in &plugins {
            let name = format!(
                "{}{}{}",
                component::MODULE_PREFIX,
                p.name,
                component::MODULE_SUFFIX
            );
            let text = c.get(&name).ok_or_else(|| ComponentError::Malformed {
                name: name.clone(),
                reason: "plugin module missing".into(),
            })?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| ComponentError::Malformed {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
            // The bundle's own digest only proves the signer sent these
            // bytes; the manifest pin proves they are the reviewed module.
            let actual = hex::encode(sha2::Sha256::digest(&bytes));
            if actual != p.sha256.to_ascii_lowercase() {
                return Err(ComponentError::PluginDigest {
                    plugin: p.name.clone(),
                    actual,
                    pinned: p.sha256.clone(),
                });
            }
            modules.insert(p.name.clone(), bytes);
        }
        Ok(Policies {
            mesh,
            access,
            anonymization,
            row_filters,
            privacy,
            standards,
            plugins,
            modules,
            product,
        })
    }

    /// The slice of these policies that applies to one product. A sidecar
    /// given a slice learns nothing about other products' rules.
    pub fn slice(&self, product: &ProductInfo) -> Result<Policies, AccessLoadError> {
        let applies =
            |d: &[String], p: &[String]| scope::applies(d, p, &product.domain, &product.id);
        let anonymization: Vec<AnonRule> = self
            .anonymization
            .iter()
            .filter(|r| applies(&r.domains, &r.products))
            .cloned()
            .collect();
        let standards: Vec<StandardRule> = self
            .standards
            .iter()
            .filter(|r| applies(&r.domains, &r.products))
            .cloned()
            .collect();
        let used: Vec<&str> = anonymization
            .iter()
            .filter_map(|r| match &r.method {
                Method::Plugin { name } => Some(name.as_str()),
                _ => None,
            })
            .chain(standards.iter().filter_map(|r| r.plugin.as_deref()))
            .collect();
        let plugins: Vec<PluginManifest> = self
            .plugins
            .iter()
            .filter(|p| used.contains(&p.name.as_str()))
            .cloned()
            .collect();
        Ok(Policies {
            mesh: self.mesh.clone(),
            access: self.access.slice(product)?,
            row_filters: self
                .row_filters
                .iter()
                .filter(|r| applies(&r.domains, &r.products))
                .cloned()
                .collect(),
            privacy: self
                .privacy
                .iter()
                .filter(|r| applies(&r.domains, &r.products))
                .cloned()
                .collect(),
            modules: self
                .modules
                .iter()
                .filter(|(n, _)| plugins.iter().any(|p| &p.name == *n))
                .map(|(n, b)| (n.clone(), b.clone()))
                .collect(),
            anonymization,
            standards,
            plugins,
            product: Some(product.id.clone()),
        })
    }

    /// The anonymization rule for `classification` in `product`: the most
    /// specific scope wins (product, then domain, then mesh-wide).
    pub fn anonymization_rule(
        &self,
        classification: &str,
        product: &ProductInfo,
    ) -> Option<&AnonRule> {
        self.anonymization
            .iter()
            .filter(|r| {
                r.classification == classification
                    && scope::applies(&r.domains, &r.products, &product.domain, &product.id)
            })
            .max_by_key(|r| (!r.products.is_empty(), !r.domains.is_empty()))
    }
}
