//! Read plans: everything a sidecar must know to serve one read, computed
//! once per request. Cedar is asked `read` once and `reveal` once per
//! classified field; applying the plan to each record is a separate,
//! allocation-light step that does no policy lookups.

use crate::access::{self, AccessDecision, Principal, ProductEntities};
use crate::anonymization::{AnonRule, RowFilter};
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
            Treatment::Anonymized(r) => r.method.label(),
            Treatment::Withheld { .. } => "withheld".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FieldDecision {
    pub name: String,
    pub classification: Option<String>,
    pub treatment: Treatment,
}

/// The answer to "may this consumer read this port, and how".
#[derive(Debug, Clone, PartialEq)]
pub struct ReadDecision {
    pub decision: AccessDecision,
    /// The port's declared fields in order; empty when denied.
    pub fields: Vec<FieldDecision>,
    /// Row filters that apply to this consumer; all must hold for a record.
    pub row_filters: Vec<RowFilter>,
    /// Validator plugins every served record must pass: those of the
    /// product's `error`-severity `plugin` standards. A record one refuses
    /// is withheld (it does not conform).
    pub validators: Vec<String>,
}

/// Why a plan could not be made at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
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
    ) -> Result<Result<Prepared<'v>, AccessDecision>, DecisionError> {
        let port = view
            .info
            .port(port)
            .ok_or_else(|| DecisionError::UnknownPort(port.to_string()))?;
        if !self.mesh.has_purpose(who.purpose) {
            return Ok(Err(deny(format!("unknown purpose `{}`", who.purpose))));
        }
        let (principal, entities) = view
            .entities
            .with_principal(who.principal)
            .map_err(DecisionError::Request)?;
        let context = access::context(who.purpose, who.now_unix)
            .ok_or_else(|| DecisionError::Request("invalid context".into()))?;
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
    ) -> Result<AccessDecision, DecisionError> {
        let p = match self.prepare(view, port, who)? {
            Ok(p) => p,
            Err(denied) => return Ok(denied),
        };
        let resource = match field {
            Some(f) => {
                if !p.port.fields.iter().any(|x| x.name == f) {
                    return Err(DecisionError::UnknownField(f.to_string()));
                }
                access::field_uid(&view.info, p.port, f)
            }
            None => access::port_uid(&view.info, p.port),
        }
        .ok_or_else(|| DecisionError::Request("invalid resource".into()))?;
        Ok(self
            .access
            .decide(action, &p.principal, &resource, &p.context, &p.entities))
    }

    /// Decides one read: access, each field's treatment, row filters.
    pub fn decide_read(
        &self,
        view: &ProductView,
        port: &str,
        who: Asker<'_>,
    ) -> Result<ReadDecision, DecisionError> {
        let denied = |decision| ReadDecision {
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
            .ok_or_else(|| DecisionError::Request("invalid port".into()))?;
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
            fields.push(FieldDecision {
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
        let validators = self
            .validators_for(&view.info)
            .into_iter()
            .map(String::from)
            .collect();
        Ok(ReadDecision {
            decision,
            fields,
            row_filters,
            validators,
        })
    }

    /// The validator plugins every record of `product` must pass: those of
    /// its `error`-severity `plugin` standards, each once.
    pub fn validators_for(&self, product: &ProductInfo) -> Vec<&str> {
        let mut validators: Vec<&str> = Vec::new();
        for r in &self.standards {
            if let (crate::standards::Check::Plugin, crate::Severity::Error, Some(name)) =
                (r.check, r.severity, r.plugin.as_deref())
                && crate::scope::applies(&r.domains, &r.products, &product.domain, &product.id)
                && !validators.contains(&name)
            {
                validators.push(name);
            }
        }
        validators
    }
}
