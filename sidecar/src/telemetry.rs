//! Typed events the sidecar records about itself, beyond the decision
//! events of [`meshgov_audit`]: each is one value with one `emit`, which
//! writes it to the audit event, the structured log and the metrics
//! ([`crate::metrics`]).

use crate::metrics::{Metrics, Spend};
use meshgov_audit::{Decision, Event};
use meshgov_privacy::ledger::{Account, Units};

/// One spend (or refusal) of privacy budget, for the audit log.
#[derive(Debug, Clone)]
pub struct SpendEvent<'a> {
    pub request_id: &'a str,
    pub consumer: &'a str,
    pub purpose: &'a str,
    pub port: &'a str,
    /// `granted`, `cached`, `exhausted` or `pending`.
    pub outcome: &'static str,
    pub cost: Units,
    /// The privacy rule that set the budgets.
    pub rule: &'a str,
    /// The accounts charged (consumer, then product), with their limits.
    pub accounts: &'a [Account],
    /// Remaining per account after the outcome: consumer, then product.
    pub remaining: &'a [Units],
    pub window_start: i64,
    pub window_end: i64,
    pub revision: u64,
}

impl SpendEvent<'_> {
    /// Records the event everywhere it belongs: the request's audit event,
    /// the structured log and the budget metrics.
    pub fn emit(&self, ev: &mut Event, metrics: &Metrics) {
        metrics.spend(&Spend {
            outcome: self.outcome,
            rule: self.rule,
            consumer: self.consumer,
            purpose: self.purpose,
            accounts: self.accounts,
            remaining: self.remaining,
            window_end: self.window_end,
        });
        self.audit(ev);
    }

    /// Records the spend decision in the request's audit event (made durable
    /// before the answer leaves) and in the structured log.
    fn audit(&self, ev: &mut Event) {
        let e = self;
        ev.privacy_cost = Some(e.cost.epsilon_f64());
        ev.budget_remaining = e.remaining.iter().map(Units::epsilon_f64).reduce(f64::min);
        if e.outcome == "exhausted" {
            ev.decision = Some(Decision::Deny);
        }
        tracing::debug!(
            purpose = e.purpose,
            outcome = e.outcome, epsilon = e.cost.epsilon_f64(), delta = e.cost.delta_f64(),
            remaining = ?e.remaining.iter().map(|u| (u.epsilon_f64(), u.delta_f64())).collect::<Vec<_>>(),
            window_start = e.window_start, revision = e.revision,
            "privacy spend"
        );
    }
}
