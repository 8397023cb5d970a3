//! `meshgov diff`: what a policy change does. Test decisions that flip,
//! field treatments that change per consumer group and purpose, and privacy
//! settings that move; every widening of access is flagged.

use crate::access::Principal;
use crate::anonymization::Method;
use crate::decision::{Asker, ProductView, ReadDecision, Treatment};
use crate::descriptor::{Descriptor, ProductInfo};
use crate::policies::Policies;
use crate::privacy::{Aggregation, PrivacyRule};
use crate::testing::{DEFAULT_TEST_TIME, TestCase, TestFile};
use std::collections::BTreeSet;

/// One difference between the old and the new policies.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// `decision` (a policy test), `read` (a group's access to a port),
    /// `field` (a field's treatment), `rows` (row filters) or `privacy`.
    pub kind: &'static str,
    pub subject: String,
    pub before: String,
    pub after: String,
    /// True when the new policies let someone see more than before.
    pub widening: bool,
}

/// How much a treatment hides: more is stricter.
fn strictness(t: &Treatment) -> u8 {
    match t {
        Treatment::Withheld { .. } => 3,
        Treatment::Anonymized(r) if matches!(r.method, Method::Redact { .. }) => 3,
        Treatment::Anonymized(_) => 2,
        Treatment::Revealed { .. } | Treatment::Clear => 0,
    }
}

struct Side<'a> {
    policies: &'a Policies,
    views: Vec<ProductView>,
}

impl<'a> Side<'a> {
    fn new(policies: &'a Policies, products: &[(String, Descriptor)]) -> Side<'a> {
        let views = products
            .iter()
            .filter_map(|(_, d)| ProductInfo::resolve(d, &policies.mesh).ok())
            .filter_map(|info| ProductView::new(info, policies).ok())
            .collect();
        Side { policies, views }
    }

    fn view(&self, product: &str) -> Option<&ProductView> {
        self.views.iter().find(|v| v.info.id == product)
    }

    fn plan(&self, product: &str, port: &str, group: &str, purpose: &str) -> Option<ReadDecision> {
        let principal = Principal {
            id: "diff-probe".into(),
            groups: vec![group.to_string()],
            attrs: Default::default(),
        };
        let who = Asker {
            principal: &principal,
            purpose,
            now_unix: DEFAULT_TEST_TIME,
        };
        self.policies
            .decide_read(self.view(product)?, port, who)
            .ok()
    }

    /// The decision of a policy test case, or why it could not be made.
    fn decide(&self, case: &TestCase) -> String {
        let Some(view) = self.view(&case.product) else {
            return "unknown product".into();
        };
        let principal = Principal {
            id: case.principal.id.clone(),
            groups: case.principal.groups.clone(),
            attrs: case.principal.attrs.clone(),
        };
        let now = case
            .time
            .as_deref()
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .map_or(DEFAULT_TEST_TIME, time::OffsetDateTime::unix_timestamp);
        let who = Asker {
            principal: &principal,
            purpose: &case.purpose,
            now_unix: now,
        };
        let decision =
            self.policies
                .decide(view, &case.action, &case.port, case.field.as_deref(), who);
        match decision {
            Ok(d) if d.allowed => "allow".into(),
            Ok(_) => "deny".into(),
            Err(e) => format!("error: {e}"),
        }
    }
}

/// Groups the policies name: from Cedar's `Group::"…"` and row filters.
fn groups(p: &Policies, out: &mut BTreeSet<String>) {
    for (_, text) in p.access.texts() {
        let mut rest = text.as_str();
        while let Some(i) = rest.find("Group::\"") {
            rest = rest.get(i + 8..).unwrap_or("");
            if let Some(end) = rest.find('"') {
                out.insert(rest.get(..end).unwrap_or("").to_string());
            }
        }
    }
    for r in &p.row_filters {
        out.extend(r.groups.iter().cloned());
    }
}

fn names(aggregations: &[Aggregation]) -> String {
    let names: Vec<&str> = aggregations.iter().map(|a| a.name()).collect();
    names.join(", ")
}

fn privacy_changes(old: &[PrivacyRule], new: &[PrivacyRule], out: &mut Vec<Change>) {
    let ids: BTreeSet<&str> = old.iter().chain(new).map(|r| r.id.as_str()).collect();
    for id in ids {
        let (o, n) = (
            old.iter().find(|r| r.id == id),
            new.iter().find(|r| r.id == id),
        );
        let mut push = |what: &str, before: String, after: String, widening: bool| {
            out.push(Change {
                kind: "privacy",
                subject: format!("{id} {what}"),
                before,
                after,
                widening,
            });
        };
        let (o, n) = match (o, n) {
            (Some(o), Some(n)) => (o, n),
            (None, Some(n)) => {
                push(
                    "rule",
                    "absent".into(),
                    format!("allows {}", names(&n.aggregations)),
                    true,
                );
                continue;
            }
            (Some(_), None) => {
                push("rule", "present".into(), "removed".into(), false);
                continue;
            }
            (None, None) => continue,
        };
        let caps = [
            ("epsilon_budget", o.epsilon_budget, n.epsilon_budget),
            (
                "max_epsilon_per_query",
                o.max_epsilon_per_query,
                n.max_epsilon_per_query,
            ),
            ("delta_budget", o.delta_budget, n.delta_budget),
            (
                "product_epsilon_budget",
                o.product_epsilon_budget.unwrap_or(f64::INFINITY),
                n.product_epsilon_budget.unwrap_or(f64::INFINITY),
            ),
        ];
        for (what, b, a) in caps {
            if b != a {
                push(what, b.to_string(), a.to_string(), a > b);
            }
        }
        let added: Vec<&Aggregation> = n
            .aggregations
            .iter()
            .filter(|x| !o.aggregations.contains(x))
            .collect();
        if !added.is_empty() || n.aggregations.len() != o.aggregations.len() {
            push(
                "aggregations",
                names(&o.aggregations),
                names(&n.aggregations),
                !added.is_empty(),
            );
        }
        if o.bounds != n.bounds {
            push(
                "bounds",
                format!("{:?}", o.bounds),
                format!("{:?}", n.bounds),
                false,
            );
        }
    }
}

/// Compares two compiled policy sets over the products and test cases given
/// (usually the new repository's `products/` and `tests/`).
pub fn diff(
    old: &Policies,
    new: &Policies,
    products: &[(String, Descriptor)],
    tests: &[(String, TestFile)],
) -> Vec<Change> {
    let (before, after) = (Side::new(old, products), Side::new(new, products));
    let mut out = Vec::new();
    for (file, t) in tests {
        for case in &t.cases {
            let (b, a) = (before.decide(case), after.decide(case));
            if b != a {
                out.push(Change {
                    kind: "decision",
                    subject: format!("{file}: {}", case.name),
                    widening: a == "allow",
                    before: b,
                    after: a,
                });
            }
        }
    }
    let mut all_groups = BTreeSet::new();
    groups(old, &mut all_groups);
    groups(new, &mut all_groups);
    for (_, t) in tests {
        for case in &t.cases {
            all_groups.extend(case.principal.groups.iter().cloned());
        }
    }
    let purposes: BTreeSet<&str> = old
        .mesh
        .purposes
        .iter()
        .chain(&new.mesh.purposes)
        .map(|p| p.id.as_str())
        .collect();
    for view in &after.views {
        for port in &view.info.ports {
            for group in &all_groups {
                for purpose in &purposes {
                    let id = &view.info.id;
                    let (b, a) = (
                        before.plan(id, &port.name, group, purpose),
                        after.plan(id, &port.name, group, purpose),
                    );
                    let subject =
                        format!("{id}/{} for group {group}, purpose {purpose}", port.name);
                    let allowed =
                        |p: &Option<ReadDecision>| p.as_ref().is_some_and(|p| p.decision.allowed);
                    if allowed(&b) != allowed(&a) {
                        let word = |x: bool| if x { "allow" } else { "deny" };
                        out.push(Change {
                            kind: "read",
                            subject,
                            before: word(allowed(&b)).into(),
                            after: word(allowed(&a)).into(),
                            widening: allowed(&a),
                        });
                        continue;
                    }
                    let (Some(b), Some(a)) = (b, a) else { continue };
                    for fa in &a.fields {
                        let Some(fb) = b.fields.iter().find(|f| f.name == fa.name) else {
                            continue;
                        };
                        if fb.treatment.label() != fa.treatment.label() {
                            out.push(Change {
                                kind: "field",
                                subject: format!(
                                    "{id}/{}/{} for group {group}, purpose {purpose}",
                                    port.name, fa.name
                                ),
                                before: fb.treatment.label(),
                                after: fa.treatment.label(),
                                widening: strictness(&fa.treatment) < strictness(&fb.treatment),
                            });
                        }
                    }
                    let filters = |p: &ReadDecision| -> Vec<String> {
                        p.row_filters.iter().map(|r| r.id.clone()).collect()
                    };
                    let (fb, fa) = (filters(&b), filters(&a));
                    if fb != fa {
                        out.push(Change {
                            kind: "rows",
                            subject,
                            widening: fb.iter().any(|f| !fa.contains(f)),
                            before: fb.join(", "),
                            after: fa.join(", "),
                        });
                    }
                }
            }
        }
    }
    privacy_changes(&old.privacy, &new.privacy, &mut out);
    out
}
