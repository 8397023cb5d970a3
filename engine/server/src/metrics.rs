//! Prometheus metrics of the engine, at `GET /metrics` on the API listener
//! (which, like the rest of the API, does not authenticate callers).
//!
//! Labels are fixed names only (results, outcomes, sidecar states, rollout
//! phases): no sidecar id, product, key or policy text, so the number of
//! series does not grow with the fleet. Per-sidecar detail is in
//! `GET /v1/fleet`.

use meshgov_metrics::{Counter, Encoder, Type};
use meshgov_wire::{Fleet, Phase, SidecarState};

/// The engine's counters; gauges are read from the fleet at scrape time.
#[derive(Debug, Default)]
pub struct EngineMetrics {
    pub builds_ok: Counter,
    pub builds_failed: Counter,
    pub renewals: Counter,
    pub pushes_ack: Counter,
    pub pushes_nack: Counter,
    pub pushes_error: Counter,
    pub pull_acks: Counter,
    pub pull_nacks: Counter,
    pub rollout_halts: Counter,
    pub audit_events_collected: Counter,
    pub audit_collection_errors: Counter,
}

/// The exposition text: the counters `m`, and gauges from `fleet`.
pub fn render(m: &EngineMetrics, fleet: &Fleet) -> String {
    let mut e = Encoder::new();
    e.family(
        "meshgov_engine_build_info",
        Type::Gauge,
        "The running engine's version and signing key id (always 1).",
    )
    .sample(
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("key_id", &fleet.key_id),
        ],
        1i64,
    );
    e.family(
        "meshgov_engine_released_revision",
        Type::Gauge,
        "The revision released to the whole fleet (0: none yet).",
    )
    .sample(&[], fleet.released.as_ref().map_or(0, |r| r.revision));
    e.family(
        "meshgov_engine_candidate_revision",
        Type::Gauge,
        "The revision in a canary rollout (0: none).",
    )
    .sample(&[], fleet.candidate.as_ref().map_or(0, |r| r.revision));
    e.family(
            "meshgov_engine_builds_total",
            Type::Counter,
            "Builds of the policy repository by result (`failed`: check, test or signing failed; not rolled out).",
        )
        .sample(&[("result", "ok")], m.builds_ok.get())
        .sample(&[("result", "failed")], m.builds_failed.get());
    e.family(
        "meshgov_engine_renewals_total",
        Type::Counter,
        "Unchanged policies re-signed as a new revision before expiry.",
    )
    .sample(&[], m.renewals.get());
    e.family(
        "meshgov_engine_pushes_total",
        Type::Counter,
        "Bundle pushes to sidecars' control ports by outcome (`error`: no answer, retried).",
    )
    .sample(&[("outcome", "ack")], m.pushes_ack.get())
    .sample(&[("outcome", "nack")], m.pushes_nack.get())
    .sample(&[("outcome", "error")], m.pushes_error.get());
    e.family(
        "meshgov_engine_pull_reports_total",
        Type::Counter,
        "Sidecars' reports on bundles they pulled by long poll, by result.",
    )
    .sample(&[("result", "ack")], m.pull_acks.get())
    .sample(&[("result", "nack")], m.pull_nacks.get());
    e.family(
        "meshgov_engine_sidecars",
        Type::Gauge,
        "Registered sidecars by state.",
    );
    for st in SidecarState::ALL {
        let n = fleet.sidecars.iter().filter(|s| s.state == st).count();
        e.sample(&[("state", st.as_str())], n as u64);
    }
    e.family(
        "meshgov_engine_rollout_phase",
        Type::Gauge,
        "1 for the phase the current rollout is in, else 0.",
    );
    for p in Phase::ALL {
        e.sample(
            &[("phase", p.as_str())],
            i64::from(fleet.rollout.phase == p),
        );
    }
    e.family(
        "meshgov_engine_rollout_halts_total",
        Type::Counter,
        "Rollouts halted by a canary's NACK, missing ACK or failed health check.",
    )
    .sample(&[], m.rollout_halts.get());
    e.family(
        "meshgov_engine_audit_events_collected_total",
        Type::Counter,
        "Audit events collected from sidecars (with --collect-audit), verified and stored.",
    )
    .sample(&[], m.audit_events_collected.get());
    e.family(
        "meshgov_engine_audit_collection_errors_total",
        Type::Counter,
        "Audit collection passes that failed for a sidecar.",
    )
    .sample(&[], m.audit_collection_errors.get());
    meshgov_metrics::process::write(&mut e);
    e.finish()
}
