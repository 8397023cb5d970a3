//! Product descriptors (`product.yaml`) in the shape of the Open Data
//! Contract Standard v3. Keys ODCS defines but meshgov does not use are
//! ignored, so a contract other ODCS tools accept loads here too. What
//! meshgov needs beyond ODCS sits under `customProperties`:
//!
//! - `meshgov.outputPorts`: the ports, the schema object each serves, their
//!   kind (`records` or `events`), time field and upstream location;
//! - `meshgov.timeField`: the default time field for every port;
//! - `meshgov.privacyUnit`: the column that identifies a person.
//!
//! Both ODCS v3.0 and v3.1 load: v3.1's team object (v3.0 wrote a list of
//! members), its `relationships` on schema objects and properties, stable
//! `id`s on schema elements and the `timestamp` and `time` logical types.

use crate::diag::{Diagnostic, Position};
use crate::mesh::{Level, MeshConfig};
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

/// A located string from the YAML file.
pub type Located = Spanned<String>;

pub fn position_of<T>(s: &Spanned<T>) -> Position {
    let l = &s.referenced;
    Position {
        line: usize::try_from(l.line()).unwrap_or(0).max(1),
        col: usize::try_from(l.column()).unwrap_or(0).max(1),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub api_version: Option<Located>,
    pub kind: Option<Located>,
    pub id: Option<Located>,
    pub name: Option<Located>,
    pub version: Option<Located>,
    pub status: Option<Located>,
    pub domain: Option<Located>,
    pub data_product: Option<Located>,
    #[serde(default)]
    pub description: Option<serde_json::Value>,
    #[serde(default)]
    pub team: Option<serde_json::Value>,
    #[serde(default)]
    pub schema: Vec<SchemaObject>,
    #[serde(default)]
    pub sla_properties: Vec<serde_json::Value>,
    #[serde(default)]
    pub servers: Vec<serde_json::Value>,
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaObject {
    pub name: Located,
    #[serde(default)]
    pub physical_name: Option<String>,
    #[serde(default)]
    pub logical_type: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub properties: Vec<Property>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Property {
    pub name: Located,
    #[serde(default)]
    pub logical_type: Option<Located>,
    #[serde(default)]
    pub physical_type: Option<String>,
    #[serde(default)]
    pub classification: Option<Located>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub primary_key: bool,
    /// Example values; conformance checks them against id and time formats.
    #[serde(default)]
    pub examples: Vec<serde_json::Value>,
    #[serde(default)]
    pub description: Option<String>,
    /// ODCS tags (`pii`, `email`, …); the mesh vocabulary gives some a
    /// sensitivity (see [`MeshConfig::tag_level`]).
    #[serde(default)]
    pub tags: Vec<serde_json::Value>,
}

impl Property {
    /// The tags written as strings.
    pub fn tag_names(&self) -> impl Iterator<Item = &str> {
        self.tags.iter().filter_map(|t| t.as_str())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct CustomProperty {
    pub property: Located,
    pub value: serde_json::Value,
}

/// An output port, from `meshgov.outputPorts` (or one per schema object).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    pub name: String,
    /// The schema object this port serves; defaults to the port's name.
    #[serde(default)]
    pub schema: Option<String>,
    #[serde(default = "default_port_kind")]
    pub kind: String,
    #[serde(default)]
    pub time_field: Option<String>,
    /// Where the sidecar reads the port's records (overridable in config).
    #[serde(default)]
    pub upstream: Option<serde_json::Value>,
    /// The address consumers use, checked by the `port_address` standard.
    #[serde(default)]
    pub address: Option<String>,
}

fn default_port_kind() -> String {
    "records".into()
}

impl Descriptor {
    /// Parses a descriptor; a YAML or shape error is a located diagnostic.
    pub fn parse(path: &str, text: &str) -> Result<Descriptor, Diagnostic> {
        serde_saphyr::from_str::<Descriptor>(text).map_err(|e| {
            let pos = e
                .location()
                .map(|l| Position {
                    line: usize::try_from(l.line()).unwrap_or(1).max(1),
                    col: usize::try_from(l.column()).unwrap_or(1).max(1),
                })
                .unwrap_or(Position { line: 1, col: 1 });
            let rendered = e.to_string();
            let message = rendered
                .lines()
                .next()
                .unwrap_or("invalid YAML")
                .to_string();
            Diagnostic::error(
                path,
                pos,
                "SPEC-YAML",
                message,
                "fix the YAML at this position; see the ODCS v3 shape in the README",
            )
        })
    }

    /// The top-level keys of a descriptor that parses, each with its value
    /// (located): what the `required_metadata` standard reads, whether the
    /// contract is written in YAML or JSON.
    pub fn top_level(text: &str) -> BTreeMap<String, Spanned<serde_json::Value>> {
        serde_saphyr::from_str(text).unwrap_or_default()
    }

    pub fn domain_name(&self) -> &str {
        self.domain.as_ref().map(|d| d.value.as_str()).unwrap_or("")
    }

    /// The product's name: `dataProduct`, else `id`.
    pub fn product_name(&self) -> &str {
        self.data_product
            .as_ref()
            .or(self.id.as_ref())
            .map(|n| n.value.as_str())
            .unwrap_or("")
    }

    /// The product id the mesh knows it by: `domain/dataProduct`.
    pub fn product_id(&self) -> String {
        format!("{}/{}", self.domain_name(), self.product_name())
    }

    pub fn custom(&self, key: &str) -> Option<&serde_json::Value> {
        self.custom_properties
            .iter()
            .find(|c| c.property.value == key)
            .map(|c| &c.value)
    }

    /// The declared output ports; without `meshgov.outputPorts`, one port
    /// per schema object.
    pub fn ports(&self) -> Result<Vec<PortSpec>, String> {
        let default_time = self
            .custom("meshgov.timeField")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let mut ports = match self.custom("meshgov.outputPorts") {
            Some(v) => serde_json::from_value::<Vec<PortSpec>>(v.clone())
                .map_err(|e| format!("`meshgov.outputPorts`: {e}"))?,
            None => self
                .schema
                .iter()
                .map(|o| PortSpec {
                    name: o.name.value.clone(),
                    schema: None,
                    kind: default_port_kind(),
                    time_field: None,
                    upstream: None,
                    address: None,
                })
                .collect(),
        };
        for p in &mut ports {
            if p.time_field.is_none() {
                p.time_field.clone_from(&default_time);
            }
        }
        Ok(ports)
    }

    pub fn schema_object(&self, name: &str) -> Option<&SchemaObject> {
        self.schema.iter().find(|o| o.name.value == name)
    }
}

/// A field as the evaluators see it: name and classification details.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldInfo {
    pub name: String,
    pub logical_type: Option<String>,
    pub classification: Option<String>,
    pub level: Level,
    pub direct_identifier: bool,
}

/// A port with its fields resolved against the mesh taxonomy.
#[derive(Debug, Clone, PartialEq)]
pub struct PortInfo {
    pub name: String,
    pub kind: String,
    pub time_field: Option<String>,
    pub fields: Vec<FieldInfo>,
}

/// A product as the evaluators see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductInfo {
    pub id: String,
    pub domain: String,
    pub status: String,
    pub ports: Vec<PortInfo>,
}

/// Why a descriptor does not describe a product meshgov can serve.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ResolveError {
    pub pos: Position,
    pub message: String,
    pub hint: String,
}

impl ResolveError {
    fn new(pos: Position, message: String, hint: &str) -> ResolveError {
        ResolveError {
            pos,
            message,
            hint: hint.to_string(),
        }
    }

    pub fn diagnostic(&self, path: &str) -> Diagnostic {
        Diagnostic::error(
            path,
            self.pos,
            "PRODUCT-RESOLVE",
            self.message.clone(),
            self.hint.clone(),
        )
    }
}

const TOP: Position = Position { line: 1, col: 1 };

/// A name that becomes one segment of an entity id (`domain/product/port/field`).
fn check_segment(what: &str, name: &str, pos: Position) -> Result<(), ResolveError> {
    if name.trim().is_empty() || name.contains('/') {
        return Err(ResolveError::new(
            pos,
            format!("{what} `{name}` must be non-empty and must not contain `/`"),
            "rename it; `/` separates domain, product, port and field in entity ids",
        ));
    }
    Ok(())
}

impl ProductInfo {
    /// Resolves a descriptor against the mesh. A missing or unknown
    /// classification resolves to `restricted`, and such fields are withheld
    /// at read time: a gap can only hide data, never expose it. Refuses
    /// duplicate port or field names and names that would make entity ids
    /// ambiguous, and a product without a `domain`: the sidecar and bundles
    /// name every entity `domain/product/port/field`.
    pub fn resolve(d: &Descriptor, mesh: &MeshConfig) -> Result<ProductInfo, ResolveError> {
        Self::resolve_in(d, mesh, true)
    }

    /// As [`ProductInfo::resolve`], for judging a contract rather than
    /// serving it (`conformance check`): ODCS does not require a `domain`,
    /// so a contract without one (or with an empty one) resolves in no
    /// domain, its id `/product`. Whether products need a domain is the
    /// guild's standard (`required_metadata`), reported once there.
    pub fn resolve_contract(
        d: &Descriptor,
        mesh: &MeshConfig,
    ) -> Result<ProductInfo, ResolveError> {
        let placed = d
            .domain
            .as_ref()
            .is_some_and(|x| !x.value.trim().is_empty());
        Self::resolve_in(d, mesh, placed)
    }

    fn resolve_in(
        d: &Descriptor,
        mesh: &MeshConfig,
        check_domain: bool,
    ) -> Result<ProductInfo, ResolveError> {
        let located = |l: &Option<Located>| l.as_ref().map(position_of).unwrap_or(TOP);
        if check_domain {
            check_segment("domain", d.domain_name(), located(&d.domain))?;
        }
        let name = d.data_product.as_ref().or(d.id.as_ref());
        check_segment(
            "data product",
            name.map(|n| n.value.as_str()).unwrap_or(""),
            name.map(position_of).unwrap_or(TOP),
        )?;
        let ports_pos = d
            .custom_properties
            .iter()
            .find(|c| c.property.value == "meshgov.outputPorts")
            .map(|c| position_of(&c.property))
            .unwrap_or(TOP);
        let specs = d.ports().map_err(|e| {
            ResolveError::new(
                ports_pos,
                e,
                "give each port `name` and optionally `schema`, `kind`, `timeField`, `upstream`, `address`",
            )
        })?;
        let mut ports: Vec<PortInfo> = Vec::new();
        for spec in specs {
            check_segment("port", &spec.name, ports_pos)?;
            if ports.iter().any(|p| p.name == spec.name) {
                return Err(ResolveError::new(
                    ports_pos,
                    format!("port `{}` is declared twice", spec.name),
                    "give each output port a unique name",
                ));
            }
            let object_name = spec.schema.as_deref().unwrap_or(&spec.name);
            let object = d.schema_object(object_name).ok_or_else(|| {
                ResolveError::new(
                    ports_pos,
                    format!(
                        "port `{}` serves schema object `{object_name}`, which the descriptor does not declare",
                        spec.name
                    ),
                    "add the object under `schema:`, or point the port's `schema` at one",
                )
            })?;
            let mut fields: Vec<FieldInfo> = Vec::with_capacity(object.properties.len());
            for p in &object.properties {
                let pos = position_of(&p.name);
                check_segment("field", &p.name.value, pos)?;
                if fields.iter().any(|f| f.name == p.name.value) {
                    return Err(ResolveError::new(
                        pos,
                        format!(
                            "field `{}` is declared twice in `{object_name}`",
                            p.name.value
                        ),
                        "give each property a unique name",
                    ));
                }
                let classification = p.classification.as_ref().map(|c| c.value.clone());
                let class = classification
                    .as_deref()
                    .and_then(|c| mesh.classification(c));
                fields.push(FieldInfo {
                    name: p.name.value.clone(),
                    logical_type: p.logical_type.as_ref().map(|t| t.value.clone()),
                    level: class.map(|c| c.level).unwrap_or(Level::Restricted),
                    direct_identifier: class.is_some_and(|c| c.direct_identifier),
                    classification,
                });
            }
            ports.push(PortInfo {
                name: spec.name,
                kind: spec.kind,
                time_field: spec.time_field,
                fields,
            });
        }
        let domain = if check_domain { d.domain_name() } else { "" };
        Ok(ProductInfo {
            id: format!("{domain}/{}", d.product_name()),
            domain: domain.to_string(),
            status: d
                .status
                .as_ref()
                .map(|s| s.value.clone())
                .unwrap_or_default(),
            ports,
        })
    }

    pub fn port(&self, name: &str) -> Option<&PortInfo> {
        self.ports.iter().find(|p| p.name == name)
    }
}
