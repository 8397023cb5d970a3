//! Read plans: everything a sidecar must know to serve one read, computed
//! once per request. Cedar is asked `read` once and `reveal` once per
//! classified field; applying the plan to each record is a separate,
//! allocation-light step that does no policy lookups.

use crate::access::{self, AccessDecision, Principal, ProductEntities};
use crate::anonymization::{AnonRule, RowFilterRule};
use crate::descriptor::{PortInfo, ProductInfo};
use crate::policies::Policies;
use cedar_policy::{Context, Entities, EntityUid};

/// A product compiled against a bundle: its resolved fields and Cedar
/// entities (with the bundle schema's action hierarchy). Built once per
/// bundle load, shared by every request; rebuild it with each new bundle.
#[derive(Debug, Clone)]
pub struct ProductView {
    pub info: ProductInfo,
    entities: ProductEntities,
}

impl ProductView {
    /// Fails when the product's entities do not fit the bundle's schema.
    pub fn new(info: ProductInfo, policies: &Policies) -> Result<ProductView, String> {
        let entities = ProductEntities::build(&info, &policies.access)?;
        Ok(ProductView { info, entities })
    }
}

/// How one field leaves the sidecar.
#[derive(Debug, Clone, PartialEq)]
pub enum Treatment {
    /// Not sensitive enough to need anonymization.
    Clear,
    /// Sensitive, but Cedar permits `reveal` for this consumer and purpose.
    Revealed { policies: Vec<String> },
    /// Anonymized by a rule.
    Anonymized(Box<AnonRule>),
    /// Sensitive with no applicable rule, or unclassified: nulled (fail closed).
    Withheld { reason: &'static str },
}

impl Treatment {
    /// A short label for audit events, test expectations and `diff`.
    pub fn label(&self) -> String {
        match self {
            Treatment::Clear => "clear".into(),
            Treatment::Revealed { .. } => "revealed".into(),
            Treatment::Anonymized(r) => match (r.transform.as_str(), &r.to, &r.plugin) {
                ("generalize", Some(to), _) => format!("generalize:{to}"),
                ("plugin", _, Some(p)) => format!("plugin:{p}"),
                ("redact", _, _) if r.drop == Some(true) => "drop".into(),
                (t, _, _) => t.to_string(),
            },
            Treatment::Withheld { .. } => "withheld".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FieldPlan {
    pub name: String,
    pub classification: Option<String>,
    pub treatment: Treatment,
}

/// The answer to "may this consumer read this port, and how".
#[derive(Debug, Clone, PartialEq)]
pub struct ReadPlan {
    pub decision: AccessDecision,
    /// The port's declared fields in order; empty when denied.
    pub fields: Vec<FieldPlan>,
    /// Row filters that apply to this consumer; all must hold for a record.
    pub row_filters: Vec<RowFilterRule>,
    /// Validator plugins every served record must pass: those of the
    /// product's `error`-severity `plugin` standards. A record one refuses
    /// is withheld (it does not conform).
    pub validators: Vec<String>,
}

/// Why a plan could not be made at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no such port `{0}`")]
    UnknownPort(String),
    #[error("no such field `{0}`")]
    UnknownField(String),
    #[error("the request could not be expressed to the policy engine: {0}")]
    Request(String),
}

/// Who asks, why, and when.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    pub principal: &'a Principal,
    pub purpose: &'a str,
    pub now_unix: i64,
}

fn deny(reason: String) -> AccessDecision {
    AccessDecision {
        allowed: false,
        policies: vec![],
        errors: vec![reason],
    }
}

/// What every decision on one port needs: the port, the consumer's entity
/// store, the context; or the denial when the purpose is unknown.
struct Prepared<'v> {
    port: &'v PortInfo,
    principal: EntityUid,
    entities: Entities,
    context: Context,
}

impl Policies {
    fn prepare<'v>(
        &self,
        view: &'v ProductView,
        port: &str,
        who: Asker<'_>,
    ) -> Result<Result<Prepared<'v>, AccessDecision>, PlanError> {
        let port = view
            .info
            .port(port)
            .ok_or_else(|| PlanError::UnknownPort(port.to_string()))?;
        if !self.mesh.has_purpose(who.purpose) {
            return Ok(Err(deny(format!("unknown purpose `{}`", who.purpose))));
        }
        let (principal, entities) = view
            .entities
            .with_principal(who.principal)
            .map_err(PlanError::Request)?;
        let context = access::context(who.purpose, who.now_unix)
            .ok_or_else(|| PlanError::Request("invalid context".into()))?;
        Ok(Ok(Prepared {
            port,
            principal,
            entities,
            context,
        }))
    }

    /// Decides one action on a port (or, for `reveal`, on one of its fields).
    pub fn decide(
        &self,
        view: &ProductView,
        action: &str,
        port: &str,
        field: Option<&str>,
        who: Asker<'_>,
    ) -> Result<AccessDecision, PlanError> {
        let p = match self.prepare(view, port, who)? {
            Ok(p) => p,
            Err(denied) => return Ok(denied),
        };
        let resource = match field {
            Some(f) => {
                if !p.port.fields.iter().any(|x| x.name == f) {
                    return Err(PlanError::UnknownField(f.to_string()));
                }
                access::field_uid(&view.info, p.port, f)
            }
            None => access::port_uid(&view.info, p.port),
        }
        .ok_or_else(|| PlanError::Request("invalid resource".into()))?;
        Ok(self
            .access
            .decide(action, &p.principal, &resource, &p.context, &p.entities))
    }

    /// Computes the read plan for one request.
    pub fn plan_read(
        &self,
        view: &ProductView,
        port: &str,
        who: Asker<'_>,
    ) -> Result<ReadPlan, PlanError> {
        let denied = |decision| ReadPlan {
            decision,
            fields: vec![],
            row_filters: vec![],
            validators: vec![],
        };
        let p = match self.prepare(view, port, who)? {
            Ok(p) => p,
            Err(decision) => return Ok(denied(decision)),
        };
        let port_info = p.port;
        let port_uid = access::port_uid(&view.info, port_info)
            .ok_or_else(|| PlanError::Request("invalid port".into()))?;
        let decision = self
            .access
            .decide("read", &p.principal, &port_uid, &p.context, &p.entities);
        if !decision.allowed {
            return Ok(denied(decision));
        }
        let mut fields = Vec::with_capacity(port_info.fields.len());
        for f in &port_info.fields {
            // Unclassified fields and unknown classifications are withheld
            // whatever Cedar says: no policy was written with them in mind.
            let classification = f
                .classification
                .as_deref()
                .filter(|c| self.mesh.classification(c).is_some());
            let treatment = match classification {
                None => Treatment::Withheld {
                    reason: "unclassified",
                },
                Some(_) if !f.level.needs_anonymization() => Treatment::Clear,
                Some(c) => {
                    let revealed = access::field_uid(&view.info, port_info, &f.name)
                        .map(|fuid| {
                            self.access.decide(
                                "reveal",
                                &p.principal,
                                &fuid,
                                &p.context,
                                &p.entities,
                            )
                        })
                        .filter(|d| d.allowed);
                    match (revealed, self.anonymization_rule(c, &view.info)) {
                        (Some(d), _) => Treatment::Revealed {
                            policies: d.policies,
                        },
                        (None, Some(rule)) => Treatment::Anonymized(Box::new(rule.clone())),
                        (None, None) => Treatment::Withheld {
                            reason: "no anonymization rule",
                        },
                    }
                }
            };
            fields.push(FieldPlan {
                name: f.name.clone(),
                classification: f.classification.clone(),
                treatment,
            });
        }
        let row_filters = self
            .row_filters
            .iter()
            .filter(|r| {
                crate::scope::applies(&r.domains, &r.products, &view.info.domain, &view.info.id)
                    && crate::scope::port_matches(&r.ports, port)
                    && (r.groups.is_empty()
                        || r.groups.iter().any(|g| who.principal.groups.contains(g)))
                    && (r.purposes.is_empty() || r.purposes.iter().any(|p| p == who.purpose))
            })
            .cloned()
            .collect();
        let mut validators: Vec<String> = Vec::new();
        for r in &self.standards {
            if let ("plugin", crate::Severity::Error, Some(name)) =
                (r.check.as_str(), r.severity, r.plugin.as_deref())
                && crate::scope::applies(&r.domains, &r.products, &view.info.domain, &view.info.id)
                && !validators.iter().any(|v| v == name)
            {
                validators.push(name.to_string());
            }
        }
        Ok(ReadPlan {
            decision,
            fields,
            row_filters,
            validators,
        })
    }
}

/// Read plans remembered per consumer, purpose and port, for one bundle.
///
/// A plan depends only on the bundle, the product, the consumer (id, groups,
/// attributes), the purpose and the port, plus the request time when a
/// policy reads it. Consumers repeat the same reads, so a sidecar keeps one
/// cache per loaded bundle and drops it with the bundle. When any policy
/// mentions the time, nothing is cached.
#[derive(Debug)]
pub struct PlanCache {
    enabled: bool,
    capacity: usize,
    plans: std::sync::Mutex<std::collections::HashMap<PlanKey, std::sync::Arc<ReadPlan>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PlanKey {
    product: String,
    principal: String,
    groups: Vec<String>,
    attrs: String,
    purpose: String,
    port: String,
}

impl PlanCache {
    /// A cache for `policies`, holding at most `capacity` plans.
    pub fn new(policies: &Policies, capacity: usize) -> PlanCache {
        PlanCache {
            enabled: capacity > 0 && !policies.access.time_dependent(),
            capacity,
            plans: Default::default(),
        }
    }

    /// The plan for this request, computed at most once per key.
    pub fn plan_read(
        &self,
        policies: &Policies,
        view: &ProductView,
        port: &str,
        who: Asker<'_>,
    ) -> Result<std::sync::Arc<ReadPlan>, PlanError> {
        if !self.enabled {
            return policies.plan_read(view, port, who).map(std::sync::Arc::new);
        }
        let mut groups = who.principal.groups.clone();
        groups.sort();
        let key = PlanKey {
            product: view.info.id.clone(),
            principal: who.principal.id.clone(),
            groups,
            attrs: serde_json::to_string(&who.principal.attrs).unwrap_or_default(),
            purpose: who.purpose.to_string(),
            port: port.to_string(),
        };
        if let Some(plan) = self.plans.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(plan);
        }
        let plan = std::sync::Arc::new(policies.plan_read(view, port, who)?);
        if let Ok(mut m) = self.plans.lock() {
            // A full cache starts over rather than tracking recency: cheap,
            // and a working set larger than the cache only costs recomputing.
            if m.len() >= self.capacity {
                m.clear();
            }
            m.insert(key, std::sync::Arc::clone(&plan));
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::Descriptor;
    use std::path::Path;

    fn example() -> (Policies, ProductView) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        let src = crate::SourceSet::read_dir(&root).unwrap();
        let checked = crate::check(&src);
        let policies = checked.policies.unwrap();
        let text = std::fs::read_to_string(root.join("products/user-profiles.yaml")).unwrap();
        let d = Descriptor::parse("p.yaml", &text).unwrap();
        let info = ProductInfo::resolve(&d, &policies.mesh).unwrap();
        let view = ProductView::new(info, &policies).unwrap();
        (policies, view)
    }

    #[test]
    fn cached_plans_equal_fresh_ones_and_are_keyed_by_consumer_and_purpose() {
        let (policies, view) = example();
        let cache = PlanCache::new(&policies, 8);
        assert!(cache.enabled);
        let fraud = Principal {
            id: "f".into(),
            groups: vec!["fraud".into()],
            ..Default::default()
        };
        let marketing = Principal {
            id: "m".into(),
            groups: vec!["marketing".into()],
            ..Default::default()
        };
        for (p, purpose) in [
            (&fraud, "fraud-investigation"),
            (&marketing, "campaign-analytics"),
            (&fraud, "campaign-analytics"),
        ] {
            let who = Asker {
                principal: p,
                purpose,
                now_unix: 0,
            };
            let fresh = policies.plan_read(&view, "profiles", who).unwrap();
            assert_eq!(
                *cache.plan_read(&policies, &view, "profiles", who).unwrap(),
                fresh
            );
            assert_eq!(
                *cache.plan_read(&policies, &view, "profiles", who).unwrap(),
                fresh
            );
        }
        let who = |p| Asker {
            principal: p,
            purpose: "fraud-investigation",
            now_unix: 0,
        };
        let email = |plan: &ReadPlan| {
            plan.fields
                .iter()
                .find(|f| f.name == "email")
                .unwrap()
                .treatment
                .label()
        };
        assert_eq!(
            email(
                &cache
                    .plan_read(&policies, &view, "profiles", who(&fraud))
                    .unwrap()
            ),
            "revealed"
        );
        assert!(
            !cache
                .plan_read(&policies, &view, "profiles", who(&marketing))
                .unwrap()
                .decision
                .allowed
        );
    }

    #[test]
    fn policies_that_read_the_time_disable_the_cache() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        let mut src = crate::SourceSet::read_dir(&root).unwrap();
        src.access.push(crate::source::SourceFile::new(
            "access/hours.cedar",
            "@id(\"night\")\nforbid (principal, action, resource) when { context.time < 0 };\n",
        ));
        let policies = crate::check(&src).policies.unwrap();
        assert!(!PlanCache::new(&policies, 8).enabled);
    }
}
