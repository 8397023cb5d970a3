//! Access: Cedar decides whether a consumer may `read`, `aggregate`,
//! `discover` or `reveal`. Policies are validated strictly against the
//! guild's schema, named by their `@id` annotation, and split by action at
//! load time so each request evaluates only the policies that can apply.

use crate::descriptor::{PortInfo, ProductInfo};
use crate::diag::{Diagnostic, Diagnostics, Position};
use crate::source::SourceFile;
use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, Policy, PolicyId, PolicySet, Request, ResourceConstraint, RestrictedExpression,
    Schema, ValidationMode, Validator,
};
use miette::Diagnostic as _;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;

/// The actions every mesh schema declares.
pub const ACTIONS: [&str; 4] = ["read", "aggregate", "discover", "reveal"];
/// The entity types meshgov builds for every request.
pub const ENTITY_TYPES: [&str; 6] = [
    "Consumer",
    "Group",
    "Domain",
    "DataProduct",
    "OutputPort",
    "Field",
];

/// A compiled, validated policy set.
#[derive(Debug, Clone)]
pub struct Access {
    schema_text: String,
    /// `(id, source text)` in id order; what bundles carry.
    texts: Vec<(String, String)>,
    /// Every policy, named by its `@id`.
    set: PolicySet,
    by_action: [PolicySet; 4],
    /// Entities and requests are checked against it, and it supplies the
    /// action hierarchy, so `action in Action::"group"` matches the members.
    schema: Schema,
    authorizer: std::sync::Arc<Authorizer>,
    /// Some policy may tell two consumers apart by who they are, not only
    /// by their groups and attributes (see [`Access::names_consumers`]).
    names_consumers: bool,
}

fn action_index(action: &str) -> Option<usize> {
    ACTIONS.iter().position(|a| *a == action)
}

/// Who is asking, from their token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Principal {
    pub id: String,
    pub groups: Vec<String>,
    /// Extra attributes (from token claims) the schema declares on `Consumer`.
    pub attrs: BTreeMap<String, serde_json::Value>,
}

/// A decision with the ids of the policies behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessDecision {
    pub allowed: bool,
    pub policies: Vec<String>,
    /// Policies that failed to evaluate; they never grant access.
    pub errors: Vec<String>,
}

/// Why compiled access policies could not be rebuilt from a bundle.
#[derive(Debug, thiserror::Error)]
pub enum AccessLoadError {
    #[error("the bundle's Cedar schema does not parse: {0}")]
    Schema(String),
    #[error("the bundle's Cedar policies do not parse: {0}")]
    Policies(String),
}

fn entity_type(name: &str) -> Option<EntityTypeName> {
    EntityTypeName::from_str(name).ok()
}

pub fn uid(ty: &str, id: &str) -> Option<EntityUid> {
    Some(EntityUid::from_type_name_and_id(
        entity_type(ty)?,
        EntityId::new(id),
    ))
}

fn action_uid(action: &str) -> Option<EntityUid> {
    uid("Action", action)
}

impl Access {
    /// Parses and strictly validates the schema and every policy file,
    /// reporting every problem found. Returns `None` when anything failed.
    pub fn load(
        schema_file: Option<&SourceFile>,
        files: &[SourceFile],
        diags: &mut Diagnostics,
    ) -> Option<Access> {
        let before = diags.error_count();
        let schema = match schema_file {
            None => {
                diags.push(Diagnostic::error(
                    "access/schema.cedarschema",
                    Position { line: 1, col: 1 },
                    "ACCESS-SCHEMA",
                    "the policy repository has no Cedar schema",
                    "create `access/schema.cedarschema` (run `meshgov init` for a starting point)",
                ));
                None
            }
            Some(f) => match Schema::from_cedarschema_str(&f.text) {
                Ok((schema, _warnings)) => {
                    check_base_schema(&schema, f, diags);
                    Some(schema)
                }
                Err(e) => {
                    push_miette(diags, f, &e, "ACCESS-SCHEMA", "fix the schema syntax here");
                    None
                }
            },
        };

        let mut set = PolicySet::new();
        let mut texts = Vec::new();
        let mut origin: HashMap<String, (usize, usize)> = HashMap::new();
        for (file_index, f) in files.iter().enumerate() {
            let parsed = match PolicySet::from_str(&f.text) {
                Ok(p) => p,
                Err(errors) => {
                    for e in errors.iter() {
                        push_miette(diags, f, e, "ACCESS-PARSE", "fix the Cedar syntax here");
                    }
                    continue;
                }
            };
            if parsed.templates().next().is_some() {
                diags.push(Diagnostic::error(
                    &f.path,
                    Position { line: 1, col: 1 },
                    "ACCESS-TEMPLATE",
                    "policy templates are not supported",
                    "write a static policy instead of a template with `?principal` or `?resource`",
                ));
            }
            let mut policies: Vec<&Policy> = parsed.policies().collect();
            // Keep source order, so diagnostics and bundles follow the file.
            let text_of = |p: &Policy| p.to_cedar().unwrap_or_else(|| p.to_string());
            let offset_of = |p: &Policy| f.text.find(&text_of(p)).unwrap_or(0);
            policies.sort_by_key(|p| offset_of(p));
            for p in policies {
                let offset = offset_of(p);
                let pos = f.position(offset);
                let Some(id) = p.annotation("id") else {
                    diags.push(Diagnostic::error(
                        &f.path,
                        pos,
                        "ACCESS-ID",
                        "this policy has no `@id` annotation",
                        "add a stable id above the policy, e.g. `@id(\"marketing.read-profiles\")`",
                    ));
                    continue;
                };
                if let Some((fi, off)) = origin.get(id) {
                    let first = files
                        .get(*fi)
                        .map(|o| {
                            let p = o.position(*off);
                            format!("{}:{}:{}", o.path, p.line, p.col)
                        })
                        .unwrap_or_default();
                    diags.push(Diagnostic::error(
                        &f.path,
                        pos,
                        "ACCESS-DUPLICATE-ID",
                        format!("policy id `{id}` is already used at {first}"),
                        "give each policy a unique `@id`",
                    ));
                    continue;
                }
                let named = p.new_id(PolicyId::new(id));
                if set.add(named).is_err() {
                    continue;
                }
                origin.insert(id.to_string(), (file_index, offset));
                texts.push((id.to_string(), text_of(p)));
            }
        }

        if let Some(schema) = &schema {
            let validator = Validator::new(schema.clone());
            let result = validator.validate(&set, ValidationMode::Strict);
            for e in result.validation_errors() {
                let id = e.policy_id().to_string();
                let Some((fi, off)) = origin.get(&id) else {
                    continue;
                };
                let Some(f) = files.get(*fi) else { continue };
                let offset = e
                    .labels()
                    .and_then(|mut l| l.next())
                    .map(|l| l.offset())
                    .unwrap_or(*off);
                diags.push(Diagnostic::error(
                    &f.path,
                    f.position(offset),
                    "ACCESS-VALIDATE",
                    e.to_string(),
                    e.help().map(|h| h.to_string()).unwrap_or_else(|| {
                        "make the policy agree with `access/schema.cedarschema`".into()
                    }),
                ));
            }
        }

        if diags.error_count() > before {
            return None;
        }
        let (schema, schema_file) = (schema?, schema_file?);
        texts.sort();
        match Access::from_parts(schema, schema_file.text.clone(), texts, set) {
            Ok(access) => Some(access),
            Err(e) => {
                diags.push(Diagnostic::error(
                    &schema_file.path,
                    Position { line: 1, col: 1 },
                    "ACCESS-LOAD",
                    e.to_string(),
                    "report this: validated policies should always compile",
                ));
                None
            }
        }
    }

    fn from_parts(
        schema: Schema,
        schema_text: String,
        texts: Vec<(String, String)>,
        set: PolicySet,
    ) -> Result<Access, AccessLoadError> {
        let mut by_action: [PolicySet; 4] = Default::default();
        for p in set.policies() {
            for (i, action) in ACTIONS.iter().enumerate() {
                // `action in [...]` also matches members of action groups the
                // schema defines, which the policy does not name; such a
                // policy goes to every set, so a `forbid` on a group can never
                // be dropped. Evaluation stays exact either way.
                let applies = match p.action_constraint() {
                    ActionConstraint::Any | ActionConstraint::In(_) => true,
                    ActionConstraint::Eq(a) => a.id().unescaped() == *action,
                };
                if applies && let Some(s) = by_action.get_mut(i) {
                    s.add(p.clone())
                        .map_err(|e| AccessLoadError::Policies(format!("`{}`: {e}", p.id())))?;
                }
            }
        }
        let names_consumers = set.policies().any(names_a_consumer);
        Ok(Access {
            schema_text,
            texts,
            set,
            by_action,
            schema,
            authorizer: std::sync::Arc::new(Authorizer::new()),
            names_consumers,
        })
    }

    /// Rebuilds compiled access policies from a verified bundle's texts.
    pub fn from_texts(
        schema_text: &str,
        policies: &[(String, String)],
    ) -> Result<Access, AccessLoadError> {
        Access::from_texts_reusing(schema_text, policies, None)
    }

    /// Like [`Access::from_texts`], but a policy whose id and text are
    /// unchanged from `previous` is taken from it instead of parsed again.
    /// Parsing is most of the cost of loading a bundle (about 150 µs a
    /// policy), and a new revision usually changes a few policies, or none
    /// (a renewal), so a swap costs what changed.
    pub fn from_texts_reusing(
        schema_text: &str,
        policies: &[(String, String)],
        previous: Option<&Access>,
    ) -> Result<Access, AccessLoadError> {
        // The same schema as before needs no second parse.
        let schema = match previous.filter(|p| p.schema_text == schema_text) {
            Some(p) => p.schema.clone(),
            None => {
                Schema::from_cedarschema_str(schema_text)
                    .map_err(|e| AccessLoadError::Schema(e.to_string()))?
                    .0
            }
        };
        let mut set = PolicySet::new();
        for (id, text) in policies {
            if let Some(p) = previous.and_then(|prev| prev.parsed(id, text)) {
                set.add(p)
                    .map_err(|e| AccessLoadError::Policies(format!("`{id}`: {e}")))?;
                continue;
            }
            let p = Policy::parse(Some(PolicyId::new(id)), text)
                .map_err(|e| AccessLoadError::Policies(format!("`{id}`: {e}")))?;
            set.add(p)
                .map_err(|e| AccessLoadError::Policies(format!("`{id}`: {e}")))?;
        }
        Access::from_parts(schema, schema_text.to_string(), policies.to_vec(), set)
    }

    /// The parsed policy `id`, if this set holds it with exactly `text`.
    fn parsed(&self, id: &str, text: &str) -> Option<Policy> {
        let i = self
            .texts
            .binary_search_by(|(k, _)| k.as_str().cmp(id))
            .ok()?;
        if self.texts.get(i).is_none_or(|(_, t)| t != text) {
            return None;
        }
        self.set.policy(&PolicyId::new(id)).cloned()
    }

    pub fn schema_text(&self) -> &str {
        &self.schema_text
    }

    /// True when some policy may read the request time, so decisions for
    /// the same consumer and purpose can change from one second to the next.
    /// Conservative: any mention of `time` counts.
    pub fn time_dependent(&self) -> bool {
        self.texts.iter().any(|(_, text)| text.contains("time"))
    }

    /// True when some policy may decide differently for two consumers with
    /// the same groups and attributes: it names a consumer
    /// (`Consumer::"mia"`, in its scope or its conditions), reads
    /// `principal.sub`, or uses `principal` other than as `principal in …`,
    /// `principal is …` or `principal.<attribute>`. When false, a decision
    /// depends on the consumer only through their groups and attributes
    /// (and the purpose, the time and the resource).
    pub fn names_consumers(&self) -> bool {
        self.names_consumers
    }

    /// `(id, text)` of every policy, sorted by id.
    pub fn texts(&self) -> &[(String, String)] {
        &self.texts
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// The policies that can apply to `product`: unscoped ones, and those
    /// whose resource scope names this product, its domain, or its ports.
    pub fn slice(&self, product: &ProductInfo) -> Result<Access, AccessLoadError> {
        let mut set = PolicySet::new();
        for p in self.set.policies() {
            if resource_may_match(&p.resource_constraint(), product) {
                set.add(p.clone())
                    .map_err(|e| AccessLoadError::Policies(format!("`{}`: {e}", p.id())))?;
            }
        }
        let keep = self
            .texts
            .iter()
            .filter(|(id, _)| set.policy(&PolicyId::new(id)).is_some())
            .cloned()
            .collect();
        Access::from_parts(self.schema.clone(), self.schema_text.clone(), keep, set)
    }

    /// `(policy id, entity type, entity id)` for every policy whose resource
    /// scope names one entity (`resource == T::"id"` or `resource in …`).
    pub fn resource_references(&self) -> Vec<(String, String, String)> {
        self.set
            .policies()
            .filter_map(|p| match p.resource_constraint() {
                ResourceConstraint::In(u)
                | ResourceConstraint::Eq(u)
                | ResourceConstraint::IsIn(_, u) => Some((
                    p.id().to_string(),
                    u.type_name().basename().to_string(),
                    u.id().unescaped().to_string(),
                )),
                ResourceConstraint::Any | ResourceConstraint::Is(_) => None,
            })
            .collect()
    }

    /// One Cedar decision, against only the policies for `action`.
    pub fn decide(
        &self,
        action: &str,
        principal: &EntityUid,
        resource: &EntityUid,
        context: &Context,
        entities: &Entities,
    ) -> AccessDecision {
        let (Some(i), Some(action_uid)) = (action_index(action), action_uid(action)) else {
            return AccessDecision {
                allowed: false,
                policies: vec![],
                errors: vec![format!("unknown action `{action}`")],
            };
        };
        let Some(set) = self.by_action.get(i) else {
            return AccessDecision {
                allowed: false,
                policies: vec![],
                errors: vec![],
            };
        };
        let request = match Request::new(
            principal.clone(),
            action_uid,
            resource.clone(),
            context.clone(),
            Some(&self.schema),
        ) {
            Ok(r) => r,
            Err(e) => {
                return AccessDecision {
                    allowed: false,
                    policies: vec![],
                    errors: vec![e.to_string()],
                };
            }
        };
        let response = self.authorizer.is_authorized(&request, set, entities);
        let mut policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|p| p.to_string())
            .collect();
        policies.sort();
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        // A policy that fails to evaluate might have been a `forbid`, so any
        // evaluation error denies.
        AccessDecision {
            allowed: response.decision() == Decision::Allow && errors.is_empty(),
            policies,
            errors,
        }
    }
}

/// See [`Access::names_consumers`]; judged on the policy's JSON form, and
/// true when that form cannot be had.
fn names_a_consumer(p: &Policy) -> bool {
    let Ok(est) = p.to_json() else {
        return true;
    };
    let scope_is_eq = est
        .get("principal")
        .and_then(|s| s.get("op"))
        .is_some_and(|op| op == "==");
    scope_is_eq
        || ["principal", "conditions"]
            .iter()
            .filter_map(|k| est.get(*k))
            .any(subject_in_expr)
}

/// Walks a policy's JSON form (scope or condition expressions).
fn subject_in_expr(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    let is_principal = |e: Option<&Value>| {
        e.and_then(|e| e.get("Var"))
            .is_some_and(|v| v == "principal")
    };
    match v {
        Value::Array(items) => items.iter().any(subject_in_expr),
        Value::Object(m) => {
            // An entity literal (`{"type": "Consumer", "id": …}`, bare in a
            // scope or under `__entity` in an expression).
            if m.get("type").is_some_and(|t| t == "Consumer") {
                return true;
            }
            if m.get("Var").is_some_and(|v| v == "principal") {
                return true;
            }
            for (op, inner) in m {
                if !is_principal(inner.get("left")) {
                    continue;
                }
                match op.as_str() {
                    "." | "has" => return inner.get("attr").is_none_or(|a| a == "sub"),
                    "in" => return inner.get("right").is_some_and(subject_in_expr),
                    "is" => return inner.get("in").is_some_and(subject_in_expr),
                    _ => {}
                }
            }
            m.values().any(subject_in_expr)
        }
        _ => false,
    }
}

fn resource_may_match(c: &ResourceConstraint, product: &ProductInfo) -> bool {
    let target = match c {
        ResourceConstraint::Any | ResourceConstraint::Is(_) => return true,
        ResourceConstraint::In(u) | ResourceConstraint::Eq(u) | ResourceConstraint::IsIn(_, u) => u,
    };
    let id = target.id().unescaped();
    match target.type_name().basename() {
        "Domain" => id == product.domain,
        "DataProduct" => id == product.id,
        "OutputPort" | "Field" => id
            .strip_prefix(product.id.as_str())
            .is_some_and(|rest| rest.starts_with('/')),
        _ => true,
    }
}

/// Every schema must declare the entity types and actions meshgov builds
/// requests from; otherwise every request would fail to evaluate.
fn check_base_schema(schema: &Schema, f: &SourceFile, diags: &mut Diagnostics) {
    let declared: HashSet<String> = schema
        .entity_types()
        .map(|t| t.basename().to_string())
        .collect();
    for ty in ENTITY_TYPES {
        if !declared.contains(ty) {
            diags.push(Diagnostic::error(
                &f.path,
                Position { line: 1, col: 1 },
                "ACCESS-SCHEMA-BASE",
                format!("the schema does not declare entity type `{ty}`"),
                format!("add `entity {ty} …;` (see `meshgov init` for the base schema)"),
            ));
        }
    }
    let actions: HashSet<String> = schema
        .actions()
        .map(|a| a.id().unescaped().to_string())
        .collect();
    for a in ACTIONS {
        if !actions.contains(a) {
            diags.push(Diagnostic::error(
                &f.path,
                Position { line: 1, col: 1 },
                "ACCESS-SCHEMA-BASE",
                format!("the schema does not declare action `{a}`"),
                format!("add `action {a} appliesTo {{ … }};`"),
            ));
        }
    }
}

fn push_miette(
    diags: &mut Diagnostics,
    f: &SourceFile,
    e: &dyn miette::Diagnostic,
    rule: &'static str,
    fallback_hint: &str,
) {
    let offset = e
        .labels()
        .and_then(|mut l| l.next())
        .map(|l| l.offset())
        .unwrap_or(0);
    let hint = e
        .help()
        .map(|h| h.to_string())
        .unwrap_or_else(|| fallback_hint.to_string());
    diags.push(Diagnostic::error(
        &f.path,
        f.position(offset),
        rule,
        e.to_string(),
        hint,
    ));
}

/// The per-product entities (domain, product, ports, fields), built once per
/// bundle and product so a request only adds the consumer.
#[derive(Debug, Clone)]
pub struct ProductEntities {
    /// The product's entities with their transitive closure computed once.
    base: Entities,
    schema: Schema,
}

pub fn port_uid(product: &ProductInfo, port: &PortInfo) -> Option<EntityUid> {
    uid("OutputPort", &format!("{}/{}", product.id, port.name))
}

pub fn field_uid(product: &ProductInfo, port: &PortInfo, field: &str) -> Option<EntityUid> {
    uid("Field", &format!("{}/{}/{}", product.id, port.name, field))
}

fn s(v: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(v.to_string())
}

impl ProductEntities {
    /// Fails when the entities do not conform to the bundle's schema (an
    /// attribute the schema requires that meshgov does not supply, or one of
    /// another type); every request would otherwise fail to evaluate.
    pub fn build(product: &ProductInfo, access: &Access) -> Result<ProductEntities, String> {
        let mut entities = Vec::new();
        let domain = uid("Domain", &product.domain);
        let product_uid = uid("DataProduct", &product.id);
        if let Some(d) = &domain {
            entities.push(Entity::new_no_attrs(d.clone(), HashSet::new()));
        }
        if let Some(p) = &product_uid {
            let attrs = HashMap::from([
                ("domain".to_string(), s(&product.domain)),
                ("status".to_string(), s(&product.status)),
            ]);
            if let Ok(e) = Entity::new(p.clone(), attrs, domain.iter().cloned().collect()) {
                entities.push(e);
            }
        }
        for port in &product.ports {
            let Some(port_uid) = port_uid(product, port) else {
                continue;
            };
            let attrs = HashMap::from([
                ("name".to_string(), s(&port.name)),
                ("product".to_string(), s(&product.id)),
                ("domain".to_string(), s(&product.domain)),
                ("kind".to_string(), s(&port.kind)),
            ]);
            if let Ok(e) = Entity::new(
                port_uid.clone(),
                attrs,
                product_uid.iter().cloned().collect(),
            ) {
                entities.push(e);
            }
            for field in &port.fields {
                let Some(fuid) = field_uid(product, port, &field.name) else {
                    continue;
                };
                let attrs = HashMap::from([
                    ("name".to_string(), s(&field.name)),
                    (
                        "classification".to_string(),
                        s(field.classification.as_deref().unwrap_or("")),
                    ),
                    ("level".to_string(), s(field.level.as_str())),
                    (
                        "direct_identifier".to_string(),
                        RestrictedExpression::new_bool(field.direct_identifier),
                    ),
                    ("port".to_string(), s(&port.name)),
                    ("product".to_string(), s(&product.id)),
                    ("domain".to_string(), s(&product.domain)),
                ]);
                if let Ok(e) = Entity::new(fuid, attrs, HashSet::from([port_uid.clone()])) {
                    entities.push(e);
                }
            }
        }
        let base = Entities::from_entities(entities, Some(&access.schema)).map_err(|e| {
            format!(
                "product `{}` does not fit the Cedar schema: {}",
                product.id,
                error_chain(&e)
            )
        })?;
        Ok(ProductEntities {
            base,
            schema: access.schema.clone(),
        })
    }

    /// The entity store for one request: these plus the consumer and groups.
    /// Fails when the consumer does not fit the schema (for example an
    /// attribute the schema requires that the token does not carry).
    pub fn with_principal(&self, principal: &Principal) -> Result<(EntityUid, Entities), String> {
        let puid = uid("Consumer", &principal.id)
            .ok_or_else(|| format!("invalid consumer id `{}`", principal.id))?;
        let groups: HashSet<EntityUid> = principal
            .groups
            .iter()
            .filter_map(|g| uid("Group", g))
            .collect();
        let mut attrs = HashMap::from([("sub".to_string(), s(&principal.id))]);
        for (k, v) in &principal.attrs {
            if let Some(e) = json_to_cedar(v) {
                attrs.insert(k.clone(), e);
            }
        }
        let consumer =
            Entity::new(puid.clone(), attrs, groups.clone()).map_err(|e| error_chain(&e))?;
        let added = groups
            .into_iter()
            .map(|g| Entity::new_no_attrs(g, HashSet::new()))
            .chain(std::iter::once(consumer));
        let entities = self
            .base
            .clone()
            .add_entities(added, Some(&self.schema))
            .map_err(|e| error_chain(&e))?;
        Ok((puid, entities))
    }
}

/// An error with its causes, which hold the detail (which entity, which
/// attribute).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

fn json_to_cedar(v: &serde_json::Value) -> Option<RestrictedExpression> {
    match v {
        serde_json::Value::String(x) => Some(s(x)),
        serde_json::Value::Bool(b) => Some(RestrictedExpression::new_bool(*b)),
        serde_json::Value::Number(n) => n.as_i64().map(RestrictedExpression::new_long),
        serde_json::Value::Array(items) => {
            let items: Option<Vec<_>> = items.iter().map(json_to_cedar).collect();
            Some(RestrictedExpression::new_set(items?))
        }
        _ => None,
    }
}

/// The request context every decision sees.
pub fn context(purpose: &str, now_unix: i64) -> Option<Context> {
    Context::from_pairs([
        ("purpose".to_string(), s(purpose)),
        ("time".to_string(), RestrictedExpression::new_long(now_unix)),
    ])
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> bool {
        names_a_consumer(&Policy::parse(None, text).unwrap())
    }

    #[test]
    fn policies_that_name_a_consumer_are_told_apart_from_those_that_do_not() {
        for text in [
            r#"permit (principal == Consumer::"mia", action, resource);"#,
            r#"permit (principal in Consumer::"mia", action, resource);"#,
            r#"permit (principal, action, resource) when { principal.sub == "mia" };"#,
            r#"permit (principal, action, resource) when { principal has sub };"#,
            r#"permit (principal, action, resource) when { principal == Consumer::"mia" };"#,
            r#"permit (principal, action, resource) when { [principal].contains(Consumer::"x") };"#,
            r#"forbid (principal, action, resource) unless { principal in [Group::"a", Consumer::"b"] };"#,
            r#"permit (principal, action, resource) when { context.purpose == "x" && principal.dept == "a" || principal == principal };"#,
        ] {
            assert!(names(text), "{text}");
        }
        for text in [
            r#"permit (principal, action, resource);"#,
            r#"permit (principal in Group::"fraud", action == Action::"reveal", resource) when { resource.classification == "pii" };"#,
            r#"permit (principal is Consumer in Group::"a", action, resource);"#,
            r#"forbid (principal, action, resource) when { principal.dept == "x" && principal has region && context.purpose like "fraud-*" };"#,
            r#"permit (principal, action, resource) when { principal in Group::"a" || resource in DataProduct::"users/user-profiles" };"#,
        ] {
            assert!(!names(text), "{text}");
        }
    }
}
