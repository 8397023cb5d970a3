//! The enforcement core: one bundle compiled for one product, with the
//! enforcing side's pseudonym keys and plugins bound in. Every way a product
//! is read asks it the same question — may this consumer read this port,
//! and how — and gets the same [`CompiledRead`] back.
//!
//! Building an [`Enforcer`] proves the bundle can be enforced in full: every
//! anonymization rule that can reach one of the product's fields compiles
//! (its pseudonym key is present, its plugin is loaded), and so does every
//! validator. A sidecar that cannot build one refuses the bundle (a NACK
//! with a code for each [`Unenforceable`] variant) and keeps the one it
//! has, instead of failing reads later.
//!
//! Reads are compiled once per (consumer, groups, attributes, purpose,
//! port), or once per (groups, attributes, purpose, port) when no policy
//! names a consumer, and cached for the bundle's life: the access decision with its
//! policy ids, each field's treatment, the row predicate, the validators,
//! and the per-record program built from them.

use crate::access::AccessDecision;
use crate::decision::{Asker, DecisionError, ProductView, ReadDecision, Treatment};
use crate::plugins::PluginSet;
use crate::policies::Policies;
use crate::records::{CompileError, KeyRing, Rules};
use meshgov_anonymize::RecordProgram;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Why a bundle cannot be enforced by this side, as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unenforceable {
    #[error(
        "rule `{rule}` pseudonymizes with key scope `{scope}`, and no key is configured for it"
    )]
    MissingKey { rule: String, scope: String },
    #[error("rule `{rule}` needs plugin `{plugin}`, which the bundle does not provide")]
    MissingPlugin { rule: String, plugin: String },
    #[error("rule `{rule}` cannot be applied: {reason}")]
    Invalid { rule: String, reason: String },
}

impl Unenforceable {
    fn from_record(rule: &str, e: CompileError) -> Unenforceable {
        match e {
            CompileError::MissingKey(scope) => Unenforceable::MissingKey {
                rule: rule.into(),
                scope,
            },
            CompileError::Unavailable(plugin) => Unenforceable::MissingPlugin {
                rule: rule.into(),
                plugin: plugin.trim_start_matches("plugin:").into(),
            },
            CompileError::InvalidRule { reason, .. } => Unenforceable::Invalid {
                rule: rule.into(),
                reason,
            },
        }
    }
}

/// Everything one read may do, compiled.
#[derive(Debug)]
pub struct CompiledRead {
    /// What policy decided: access, treatments, row filters, validators.
    pub decision: ReadDecision,
    /// The decision with keys and plugins bound in; `None` when access is
    /// denied. The columnar path plans from these.
    pub rules: Option<Arc<Rules>>,
    /// The per-record program of `rules`; `None` when access is denied.
    pub program: Option<Arc<RecordProgram>>,
}

impl CompiledRead {
    /// The access decision and the policies behind it.
    pub fn access(&self) -> &AccessDecision {
        &self.decision.decision
    }

    /// Each field's treatment label, for the audit event.
    pub fn labels(&self) -> Vec<(String, String)> {
        self.decision
            .fields
            .iter()
            .map(|f| (f.name.clone(), f.treatment.label()))
            .collect()
    }
}

/// Why a read could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Plan(#[from] DecisionError),
    /// Cannot happen for a bundle [`Enforcer::new`] accepted; refused if it
    /// does (fail closed).
    #[error(transparent)]
    Program(#[from] CompileError),
}

/// A bundle compiled for one product on one enforcing side.
pub struct Enforcer {
    policies: Policies,
    view: ProductView,
    keys: KeyRing,
    plugins: Arc<dyn PluginSet>,
    cache: ReadCache,
}

impl std::fmt::Debug for Enforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer")
            .field("product", &self.view.info.id)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Compiled reads kept per enforcer.
const READ_CACHE_CAPACITY: usize = 1024;

impl Enforcer {
    /// Compiles `policies` for `view`'s product with these keys and
    /// plugins, or says why the bundle cannot be enforced in full.
    pub fn new(
        policies: Policies,
        view: ProductView,
        keys: KeyRing,
        plugins: Arc<dyn PluginSet>,
    ) -> Result<Enforcer, Unenforceable> {
        check_enforceable(&policies, &view, &keys, plugins.as_ref())?;
        Ok(Enforcer {
            cache: ReadCache::new(&policies, READ_CACHE_CAPACITY),
            policies,
            view,
            keys,
            plugins,
        })
    }

    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    pub fn view(&self) -> &ProductView {
        &self.view
    }

    /// The compiled read of `port` for `who`, from the cache when it can be.
    pub fn read(&self, port: &str, who: Asker<'_>) -> Result<Arc<CompiledRead>, ReadError> {
        self.cache.get_or_compile(&self.view, port, who, || {
            compile_read(
                &self.policies,
                &self.view,
                port,
                who,
                &self.keys,
                self.plugins.as_ref(),
            )
        })
    }
}

/// Decides one read and compiles its rules and program, with the same
/// steps `meshgov test` runs on a policy test case (`Policies::decide_read`,
/// then `ReadDecision::record_program`).
fn compile_read(
    policies: &Policies,
    view: &ProductView,
    port: &str,
    who: Asker<'_>,
    keys: &KeyRing,
    plugins: &dyn PluginSet,
) -> Result<CompiledRead, ReadError> {
    let decision = policies.decide_read(view, port, who)?;
    if !decision.decision.allowed {
        return Ok(CompiledRead {
            decision,
            rules: None,
            program: None,
        });
    }
    let rules = decision.rules(keys, plugins)?;
    let program = rules.record_program()?;
    Ok(CompiledRead {
        decision,
        rules: Some(Arc::new(rules)),
        program: Some(Arc::new(program)),
    })
}

/// Every rule that can reach one of the product's fields, and every
/// validator, must compile with these keys and plugins.
fn check_enforceable(
    policies: &Policies,
    view: &ProductView,
    keys: &KeyRing,
    plugins: &dyn PluginSet,
) -> Result<(), Unenforceable> {
    for port in &view.info.ports {
        for f in &port.fields {
            let Some(rule) = f
                .classification
                .as_deref()
                .filter(|_| f.level.needs_anonymization())
                .and_then(|c| policies.anonymization_rule(c, &view.info))
            else {
                continue;
            };
            crate::records::compile_treatment(
                &Treatment::Anonymized(Box::new(rule.clone())),
                keys,
                plugins,
            )
            .map_err(|e| Unenforceable::from_record(&rule.id, e))?;
        }
    }
    for name in policies.validators_for(&view.info) {
        if plugins.validator(name).is_none() {
            return Err(Unenforceable::MissingPlugin {
                rule: format!("standard using `{name}`"),
                plugin: name.to_string(),
            });
        }
    }
    Ok(())
}

/// Compiled reads remembered per consumer class, purpose and port, for one
/// bundle.
///
/// A read depends only on the bundle, the product, the consumer (id,
/// groups, attributes), the purpose and the port, plus the request time
/// when a policy reads it. Consumers repeat the same reads, so an enforcer
/// keeps one cache and drops it with the bundle. When any policy mentions
/// the time, nothing is cached.
///
/// When no policy names a consumer ([`crate::access::Access::names_consumers`]),
/// consumers with the same groups and attributes get the same read, so it
/// is kept once for all of them: a consumer's first read costs a lookup
/// when another of their class read before. A read whose decision carries
/// evaluation errors is kept for its consumer alone, since the errors may
/// name them.
#[derive(Debug)]
struct ReadCache {
    enabled: bool,
    by_class: bool,
    capacity: usize,
    reads: Mutex<HashMap<ReadKey, Arc<CompiledRead>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ReadKey {
    product: String,
    /// `None` for a read kept for the consumer's whole class.
    principal: Option<String>,
    groups: Vec<String>,
    attrs: String,
    purpose: String,
    port: String,
}

impl ReadCache {
    fn new(policies: &Policies, capacity: usize) -> ReadCache {
        ReadCache {
            enabled: capacity > 0 && !policies.access.time_dependent(),
            by_class: !policies.access.names_consumers(),
            capacity,
            reads: Mutex::default(),
        }
    }

    fn get_or_compile(
        &self,
        view: &ProductView,
        port: &str,
        who: Asker<'_>,
        compile: impl FnOnce() -> Result<CompiledRead, ReadError>,
    ) -> Result<Arc<CompiledRead>, ReadError> {
        if !self.enabled {
            return compile().map(Arc::new);
        }
        let mut groups = who.principal.groups.clone();
        groups.sort();
        let mut key = ReadKey {
            product: view.info.id.clone(),
            principal: None,
            groups,
            attrs: serde_json::to_string(&who.principal.attrs).unwrap_or_default(),
            purpose: who.purpose.to_string(),
            port: port.to_string(),
        };
        if !self.by_class {
            key.principal = Some(who.principal.id.clone());
        }
        if let Some(read) = self.lookup(&key) {
            return Ok(read);
        }
        if self.by_class {
            key.principal = Some(who.principal.id.clone());
            if let Some(read) = self.lookup(&key) {
                return Ok(read);
            }
        }
        let read = Arc::new(compile()?);
        if self.by_class && read.decision.decision.errors.is_empty() {
            key.principal = None;
        }
        if let Ok(mut m) = self.reads.lock() {
            // A full cache starts over rather than tracking recency: cheap,
            // and a working set larger than the cache only costs recompiling.
            if m.len() >= self.capacity {
                m.clear();
            }
            m.insert(key, Arc::clone(&read));
        }
        Ok(read)
    }

    fn lookup(&self, key: &ReadKey) -> Option<Arc<CompiledRead>> {
        self.reads.lock().ok().and_then(|m| m.get(key).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Principal;
    use crate::descriptor::{Descriptor, ProductInfo};
    use crate::plugins::NoPlugins;
    use std::path::Path;

    fn example(product: &str) -> (Policies, ProductView) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        let src = crate::SourceSet::read_dir(&root).unwrap();
        let policies = crate::check(&src).policies.unwrap();
        let text = std::fs::read_to_string(root.join(format!("products/{product}.yaml"))).unwrap();
        let d = Descriptor::parse("p.yaml", &text).unwrap();
        let info = ProductInfo::resolve(&d, &policies.mesh).unwrap();
        let view = ProductView::new(info, &policies).unwrap();
        (policies, view)
    }

    fn keys() -> KeyRing {
        let mut k = KeyRing::new();
        k.insert("user-identity", &[7; 32]).unwrap();
        k
    }

    #[test]
    fn a_missing_pseudonym_key_makes_the_bundle_unenforceable() {
        let (policies, view) = example("user-profiles");
        let e = Enforcer::new(policies, view, KeyRing::new(), Arc::new(NoPlugins)).unwrap_err();
        assert!(matches!(e, Unenforceable::MissingKey { .. }), "{e:?}");
        assert!(e.to_string().contains("`user-identity`"), "{e}");
    }

    #[test]
    fn cached_reads_equal_fresh_ones_and_are_keyed_by_consumer_and_purpose() {
        let (policies, view) = example("user-profiles");
        let enforcer =
            Enforcer::new(policies.clone(), view.clone(), keys(), Arc::new(NoPlugins)).unwrap();
        assert!(enforcer.cache.enabled);
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
            let fresh = policies.decide_read(&view, "profiles", who).unwrap();
            let first = enforcer.read("profiles", who).unwrap();
            assert_eq!(first.decision, fresh);
            assert_eq!(first.program.is_some(), fresh.decision.allowed);
            let again = enforcer.read("profiles", who).unwrap();
            assert!(Arc::ptr_eq(&first, &again));
        }
        let who = |p| Asker {
            principal: p,
            purpose: "fraud-investigation",
            now_unix: 0,
        };
        let email = |read: &CompiledRead| {
            read.labels()
                .into_iter()
                .find(|(f, _)| f == "email")
                .unwrap()
                .1
        };
        assert_eq!(
            email(&enforcer.read("profiles", who(&fraud)).unwrap()),
            "revealed"
        );
        let denied = enforcer.read("profiles", who(&marketing)).unwrap();
        assert!(!denied.access().allowed && denied.program.is_none());
    }

    #[test]
    fn consumers_of_one_class_share_a_read_unless_a_policy_names_one() {
        let fraud = |id: &str| Principal {
            id: id.into(),
            groups: vec!["fraud".into()],
            ..Default::default()
        };
        let (frank, eve) = (fraud("frank"), fraud("eve"));
        let who = |p| Asker {
            principal: p,
            purpose: "fraud-investigation",
            now_unix: 0,
        };
        let (policies, view) = example("user-profiles");
        assert!(!policies.access.names_consumers());
        let enforcer = Enforcer::new(policies, view, keys(), Arc::new(NoPlugins)).unwrap();
        let first = enforcer.read("profiles", who(&frank)).unwrap();
        assert!(first.access().allowed);
        assert!(Arc::ptr_eq(
            &first,
            &enforcer.read("profiles", who(&eve)).unwrap()
        ));

        // One forbid that names eve: she is told apart from frank, whoever
        // reads first.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        let mut src = crate::SourceSet::read_dir(&root).unwrap();
        src.access.push(crate::source::SourceFile::new(
            "access/eve.cedar",
            "@id(\"no-eve\")\nforbid (principal, action, resource) when { principal == Consumer::\"eve\" };\n",
        ));
        let policies = crate::check(&src).policies.unwrap();
        assert!(policies.access.names_consumers());
        let (_, view) = example("user-profiles");
        let enforcer = Enforcer::new(policies, view, keys(), Arc::new(NoPlugins)).unwrap();
        assert!(
            enforcer
                .read("profiles", who(&frank))
                .unwrap()
                .access()
                .allowed
        );
        let denied = enforcer.read("profiles", who(&eve)).unwrap();
        assert!(!denied.access().allowed);
        assert_eq!(denied.access().policies, ["no-eve"]);
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
        assert!(!ReadCache::new(&policies, 8).enabled);
    }
}
