//! `POST /v1/ports/{port}/aggregate`: differentially private aggregates.
//!
//! 1. **authenticate** (401) and read the body (400, at most 64 KiB);
//! 2. **load** the bundle (503) and the port (404);
//! 3. **authorize** with Cedar's `aggregate` action for the purpose (403),
//!    then find the port's privacy rule (403 when it has none);
//! 4. **validate** the query against the rule (400);
//! 5. **cost** it with OpenDP's privacy maps, on a blocking thread;
//! 6. **reserve** the cost in the ledger, durably, before any noise or
//!    data: 429 with the remaining budget if it does not fit, the stored
//!    answer at no cost if the same query was answered in this window;
//! 7. **read** the upstream through the columnar plane
//!    ([`meshgov_columnar::aggregate`]): the window, contribution bounding
//!    per privacy unit, clamping and the per-group totals are steps of one
//!    query plan over the port's raw values;
//! 8. **release**: draw the noise (blocking thread), store the answer in
//!    the ledger for repeats, answer.
//!
//! A ledger error at any step refuses the query (503): fail closed. The
//! spend (cost and budget left) goes into the request's audit event, which
//! is durable before the answer leaves.

use crate::app::App;
use crate::auth::Identity;
use crate::body::Body;
use crate::clock;
use crate::error::ApiError;
use crate::respond::json;
use crate::telemetry::SpendEvent;
use crate::upstream::Window;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use meshgov_audit::Event;
use meshgov_columnar::aggregate::{accumulate, bounded_totals};
use meshgov_core::decision::{Asker, DecisionError};
use meshgov_core::privacy::rule_for;
use meshgov_privacy::ledger::{Account, LedgerError, Reservation, Reserved, Units, window_of};
use meshgov_privacy::mechanism::{self, Costed, Mechanism};
use meshgov_privacy::query::{self, Caps};
use sha2::Digest;
use std::sync::Arc;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

fn ledger_failed(rid: &str, e: &LedgerError) -> ApiError {
    tracing::error!(request_id = %rid, "privacy ledger: {e}");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "ledger_unavailable",
        "the privacy budget ledger is unavailable, so no aggregate can be answered; retry later",
    )
}

fn engine_failed(rid: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::error!(request_id = %rid, "privacy engine: {e}");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "privacy_failed",
        "the privacy mechanism failed; nothing was released",
    )
}

fn budget_doc(accounts: &[Account], remaining: &[Units], window: (i64, i64)) -> serde_json::Value {
    let consumer = remaining.first().map(|u| {
        serde_json::json!({"epsilon_remaining": u.epsilon_f64(), "delta_remaining": u.delta_f64()})
    });
    // The product-wide cap is on epsilon only.
    let product = remaining
        .get(1)
        .filter(|_| accounts.len() > 1)
        .map(|u| serde_json::json!({"epsilon_remaining": u.epsilon_f64()}));
    serde_json::json!({
        "window": {"start": clock::rfc3339(window.0), "end": clock::rfc3339(window.1)},
        "consumer": consumer,
        "product": product,
    })
}

/// Sets a key of a JSON object; other values are left alone.
fn set(doc: &mut serde_json::Value, key: &str, value: serde_json::Value) {
    if let Some(o) = doc.as_object_mut() {
        o.insert(key.to_string(), value);
    }
}

fn mechanism_doc(m: &Mechanism) -> serde_json::Value {
    let mut v = serde_json::json!({
        "statistic": m.name,
        "mechanism": m.kind,
        "scale": m.scale,
        "epsilon": m.epsilon,
    });
    if m.kind == "discrete_laplace" {
        set(
            &mut v,
            "ci95",
            serde_json::json!(mechanism::laplace_ci95(m.scale)),
        );
    }
    if let Some(t) = m.threshold {
        set(&mut v, "threshold", serde_json::json!(t));
        set(&mut v, "delta", serde_json::json!(m.delta));
    }
    v
}

/// Serves one aggregate request.
pub async fn aggregate<B>(
    app: &Arc<App>,
    req: Request<B>,
    port: &str,
    rid: &str,
    ev: &mut Event,
) -> Result<Response<Body>, ApiError>
where
    B: http_body::Body + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // 1. authenticate, read the body
    let who = app.authenticate(req.headers(), ev).await?;
    let body = tokio::time::timeout(
        std::time::Duration::from_millis(app.limits.body_read_timeout_ms),
        http_body_util::Limited::new(req.into_body(), MAX_BODY_BYTES).collect(),
    )
    .await
    .map_err(|_| ApiError::body_timeout(app.limits.body_read_timeout_ms))?
    .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?
    .to_bytes();
    let request = query::parse(&body).map_err(|e| ApiError::bad_request(e.0))?;
    let (status, doc) = answer(app, &who, &request, port, rid, ev).await?;
    Ok(json(status, rid, &doc))
}

/// Answers `request` for `who` (steps 2 to 8): the answer document, with
/// 200, or 429 when the budget does not cover it. The HTTP port and the
/// SQL ports ask through this one function.
pub(crate) async fn answer(
    app: &Arc<App>,
    who: &Identity,
    request: &query::AggregateRequest,
    port: &str,
    rid: &str,
    ev: &mut Event,
) -> Result<(StatusCode, serde_json::Value), ApiError> {
    // 2. load
    let now = clock::now_unix();
    let bundle = app.bundle_for_request(now, ev)?;
    let port_info = bundle
        .view()
        .info
        .port(port)
        .ok_or_else(|| ApiError::unknown_port(port))?
        .clone();
    // 3. authorize
    let asker = Asker {
        principal: &who.principal,
        purpose: &who.purpose,
        now_unix: now,
    };
    let decision = bundle
        .policies()
        .decide(bundle.view(), "aggregate", port, None, asker)
        .map_err(|e| match e {
            DecisionError::UnknownPort(_) => ApiError::unknown_port(port),
            _ => ApiError::forbidden(),
        })?;
    ev.policies = decision.policies.clone();
    if !decision.allowed {
        tracing::debug!(purpose = who.purpose.as_str(), "aggregate denied by policy");
        return Err(ApiError::forbidden());
    }
    let product = bundle.view().info.id.clone();
    let rule = rule_for(
        &bundle.policies().privacy,
        &bundle.view().info.domain,
        &product,
        port,
    )
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "no_aggregates",
            "this port offers no differentially private aggregates",
        )
    })?
    .clone();
    // 4. validate
    let caps = Caps {
        max_epsilon_per_query: Some(bundle.policies().mesh.privacy.max_epsilon_per_query),
        max_delta: Some(bundle.policies().mesh.privacy.max_delta),
    };
    let plan = query::validate(request, &rule, &port_info, caps, now)
        .map_err(|e| ApiError::bad_request(e.0))?;
    let Some(ledger) = app.ledger.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ledger_unavailable",
            "this sidecar has no privacy budget ledger (set `state_dir` or `privacy.ledger`), so it answers no aggregates",
        ));
    };
    // 5. cost, 6. reserve: before any data is read or noise drawn.
    let window = window_of(now, rule.window_seconds);
    let consumer_limit = rule
        .purpose_budgets
        .iter()
        .find(|b| b.purpose == who.purpose)
        .map_or(rule.epsilon_budget, |b| {
            b.epsilon_budget.min(rule.epsilon_budget)
        });
    let mut accounts = vec![Account {
        key: format!(
            "{product}|{}|consumer|{}|{}",
            rule.id, who.principal.id, who.purpose
        ),
        limit: Units::budget(consumer_limit, rule.delta_budget).unwrap_or_default(),
    }];
    if let Some(p) = rule.product_epsilon_budget {
        accounts.push(Account {
            key: format!("{product}|{}|product", rule.id),
            limit: Units {
                delta: u64::MAX >> 1,
                ..Units::budget(p, 0.0).unwrap_or_default()
            },
        });
    }
    let fingerprint = {
        let mut h = sha2::Sha256::new();
        for part in [
            &who.principal.id,
            &who.purpose,
            &product,
            port,
            &plan.canonical(),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    };
    let (costed, reserved, reservation) = {
        let (plan, ledger, accounts, rid2) = (
            plan.clone(),
            Arc::clone(&ledger),
            accounts.clone(),
            rid.to_string(),
        );
        // The blocking thread does not inherit the request's span.
        let request_span = tracing::Span::current();
        tokio::task::spawn_blocking(
            move || -> Result<(Costed, Reserved, Reservation), ApiError> {
                let _request = request_span.enter();
                let costed = mechanism::cost(&plan).map_err(|e| engine_failed(&rid2, e))?;
                let cost = Units::cost(costed.epsilon, costed.delta)
                    .ok_or_else(|| engine_failed(&rid2, "cost out of range"))?;
                let r = Reservation {
                    query: fingerprint,
                    window_start: window.0,
                    window_end: window.1,
                    cost,
                    accounts,
                };
                let reserved = tracing::info_span!(
                    "ledger_spend",
                    window_start = r.window_start,
                    epsilon = r.cost.epsilon_f64(),
                    delta = r.cost.delta_f64()
                )
                .in_scope(|| ledger.reserve(&r))
                .map_err(|e| ledger_failed(&rid2, &e))?;
                Ok((costed, reserved, r))
            },
        )
        .await
        .map_err(|e| engine_failed(rid, e))??
    };
    let event = |ev: &mut Event, outcome, remaining: &[Units]| {
        let spend = SpendEvent {
            request_id: rid,
            consumer: &who.principal.id,
            purpose: &who.purpose,
            port,
            outcome,
            cost: if outcome == "granted" {
                reservation.cost
            } else {
                Units::default()
            },
            rule: &rule.id,
            accounts: &accounts,
            remaining,
            window_start: window.0,
            window_end: window.1,
            revision: bundle.meta.revision,
        };
        spend.emit(ev, &app.metrics);
    };
    match &reserved {
        Reserved::Exhausted { account, remaining } => {
            event(ev, "exhausted", remaining);
            let which = if *account == 0 {
                "this consumer and purpose"
            } else {
                "this product (all consumers together)"
            };
            return Ok((
                StatusCode::TOO_MANY_REQUESTS,
                serde_json::json!({
                    "request_id": rid,
                    "error": "budget_exhausted",
                    "reason": format!(
                        "this query costs epsilon {} and delta {}, more than the privacy budget left for {which} in this window; nothing was computed",
                        reservation.cost.epsilon_f64(), reservation.cost.delta_f64()
                    ),
                    "cost": {"epsilon": reservation.cost.epsilon_f64(), "delta": reservation.cost.delta_f64()},
                    "budget": budget_doc(&accounts, remaining, window),
                }),
            ));
        }
        Reserved::Pending { remaining } => {
            event(ev, "pending", remaining);
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "query_pending",
                "the same query is being answered, or its answer was lost in a crash; it cannot be answered again in this budget window",
            ));
        }
        Reserved::Cached { answer, remaining } => {
            event(ev, "cached", remaining);
            let mut doc: serde_json::Value =
                serde_json::from_str(answer).map_err(|e| engine_failed(rid, e))?;
            set(&mut doc, "request_id", serde_json::json!(rid));
            set(&mut doc, "cached", serde_json::json!(true));
            set(
                &mut doc,
                "cost",
                serde_json::json!({"epsilon": 0.0, "delta": 0.0}),
            );
            set(&mut doc, "budget", budget_doc(&accounts, remaining, window));
            return Ok((StatusCode::OK, doc));
        }
        Reserved::Granted { remaining } => event(ev, "granted", remaining),
    }
    let Reserved::Granted { remaining } = reserved else {
        return Err(engine_failed(rid, "unreachable reservation state"));
    };
    // 7. read: the budget is spent from here on, whatever happens.
    let win = Window {
        from: plan
            .from
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok()),
        to: plan
            .to
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok()),
    };
    let opened = app
        .open_port(
            port,
            &port_info.fields,
            win,
            "the product's upstream could not be read; the reserved budget stays spent",
        )
        .await?;
    // Whatever fails from here on, the budget was spent.
    let spent = |mut e: ApiError| {
        e.reason.push_str("; the reserved budget stays spent");
        e
    };
    let totals = crate::scan::Source::from(opened)
        .scan(app, port, &port_info)
        .map_err(|e| spent(crate::scan::refusal(app, &e)))?;
    let totals = bounded_totals(totals, &port_info, &plan, &win).map_err(|e| {
        tracing::error!("cannot plan the aggregate: {e}");
        spent(ApiError::plan_failed())
    })?;
    let acc = accumulate(totals, &plan)
        .await
        .map_err(|e| spent(crate::scan::refusal(app, &e)))?;
    // 8. release
    let released = {
        let plan = plan.clone();
        let costed = costed.clone();
        tokio::task::spawn_blocking(move || mechanism::release(&plan, &costed, acc))
            .await
            .map_err(|e| engine_failed(rid, e))?
            .map_err(|e| engine_failed(rid, e))?
    };
    let groups: Vec<serde_json::Value> = released
        .groups
        .iter()
        .map(|(key, stats)| {
            let mut g = serde_json::Map::new();
            g.insert(
                "key".into(),
                serde_json::Value::Object(
                    plan.group_by
                        .iter()
                        .zip(key)
                        .map(|(f, k)| (f.clone(), serde_json::json!(k)))
                        .collect(),
                ),
            );
            for (n, v) in stats {
                g.insert(n.clone(), serde_json::json!(v));
            }
            serde_json::Value::Object(g)
        })
        .collect();
    let mut doc = serde_json::json!({
        "port": port,
        "window": {
            "from": plan.from.map(clock::rfc3339),
            "to": plan.to.map(clock::rfc3339),
        },
        "group_by": plan.group_by,
        "groups": groups,
        "statistics": released.mechanisms.iter().map(mechanism_doc).collect::<Vec<_>>(),
        "privacy_unit": {
            "column": plan.unit,
            "max_contributions": plan.max_contributions,
        },
        "epsilon": plan.epsilon,
        "cost": {"epsilon": reservation.cost.epsilon_f64(), "delta": reservation.cost.delta_f64()},
        "bundle_revision": bundle.meta.revision,
    });
    let stored = doc.to_string();
    {
        let ledger = Arc::clone(&ledger);
        let (q, ws) = (reservation.query.clone(), reservation.window_start);
        tokio::task::spawn_blocking(move || ledger.release(&q, ws, &stored))
            .await
            .map_err(|e| engine_failed(rid, e))?
            .map_err(|e| ledger_failed(rid, &e))?;
    }
    set(&mut doc, "request_id", serde_json::json!(rid));
    set(&mut doc, "cached", serde_json::json!(false));
    set(
        &mut doc,
        "budget",
        budget_doc(&accounts, &remaining, window),
    );
    Ok((StatusCode::OK, doc))
}
