//! Prometheus metrics: what the sidecar counts, and `GET /metrics`.
//!
//! `/metrics` is served only on its own listener, `listen.metrics` (off by
//! default). The data port answers consumers with JWTs and the control port
//! only the engine; a Prometheus scraper has neither credential, so it gets
//! a listener of its own that serves nothing but metrics, without
//! authentication. Bind it where only the monitoring network reaches.
//!
//! **What never appears.** No field value, token, key, policy id or request
//! id is a label or a value. Labels are: the descriptor's port names (a
//! name a consumer asks for that the descriptor lacks counts as
//! `(unknown)`), fixed action, decision, status, refusal-code, stage and
//! outcome names, and, in the privacy-budget gauges only, the privacy rule
//! id and the consumer's token subject and purpose. Subjects are identities
//! the audit log records for every request anyway; they are not secrets,
//! but they may name people, so that family is bounded (at most
//! `metrics.budget_series` consumer/purpose series, the least recently
//! updated dropped first) and can be turned off with
//! `metrics.budget_series = 0`.
//!
//! **Cost.** Every per-request series lives in a table indexed by (port,
//! action, decision, status), built when the sidecar starts: recording is a
//! relaxed atomic add, with no lock and no allocation. Records and bytes
//! are added once per flushed chunk (up to about 128 KiB), never per
//! record. Only the budget gauges (updated once per aggregate query) and
//! bundle refusals take a lock.

use crate::state::BundleSlot;
use meshgov_anonymize::FailureKind;
use meshgov_audit::AuditLog;
use meshgov_metrics::{Counter, Encoder, Gauge, Histogram, Type};
use meshgov_privacy::ledger::{Account, Units};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

/// What a request did, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Aggregate,
    Discover,
    /// No route (404, 405, a bad port name).
    Other,
}

const ACTIONS: [&str; 4] = ["read", "aggregate", "discover", "other"];

impl Action {
    pub fn label(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Aggregate => "aggregate",
            Action::Discover => "discover",
            Action::Other => "other",
        }
    }
}
const DECISIONS: [&str; 3] = ["allow", "deny", "error"];
/// Every status the data port answers with; anything else counts as `other`.
const STATUSES: [&str; 13] = [
    "200", "400", "401", "403", "404", "405", "409", "413", "429", "500", "502", "503", "other",
];
/// Every refusal code of the data port ([`crate::error::ApiError`] and
/// the aggregate path); anything else counts as `other`.
const REFUSALS: [&str; 18] = [
    "unauthorized",
    "bad_request",
    "forbidden",
    "no_aggregates",
    "unknown_port",
    "not_found",
    "method_not_allowed",
    "query_pending",
    "budget_exhausted",
    "privacy_failed",
    "ledger_unavailable",
    "cannot_anonymize",
    "plugin_failed",
    "upstream_failed",
    "no_valid_bundle",
    "audit_unavailable",
    "internal",
    "other",
];
const UPSTREAM_STAGES: [&str; 2] = ["open", "mid_stream"];
/// How a streamed read ended, as its completion event says.
const STREAM_OUTCOMES: [&str; 5] = [
    "complete",
    "client_gone",
    "stalled",
    "upstream_failed",
    "shutdown",
];
const SPEND_OUTCOMES: [&str; 4] = ["granted", "cached", "exhausted", "pending"];
const LISTENERS: [&str; 3] = ["data", "control", "metrics"];
const UNPARSED: [Unparsed; 2] = [Unparsed::TooLarge, Unparsed::Malformed];
const PLUGIN_KINDS: [&str; 5] = [
    "trap",
    "out_of_fuel",
    "out_of_memory",
    "malformed_output",
    "other",
];

/// A listener of the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Data = 0,
    Control = 1,
    Metrics = 2,
}

/// Why the HTTP parser refused a request before it existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unparsed {
    /// The head was over `limits.max_header_bytes`, held more than 64
    /// headers, or its URI was too long: 431 or 414.
    TooLarge = 0,
    /// Not an HTTP/1.1 request (a raw `0xFF` in the path, a bad header
    /// line, an HTTP/2 preface): 400.
    Malformed = 1,
}

impl Unparsed {
    pub fn label(self) -> &'static str {
        match self {
            Unparsed::TooLarge => "too_large",
            Unparsed::Malformed => "malformed",
        }
    }
}

/// The port label of a request for a port the descriptor lacks.
pub const UNKNOWN_PORT: &str = "(unknown)";

/// One port's index in the tables: the descriptor's ports, then
/// `(unknown)`, then the empty label (requests without a port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortIx(usize);

/// Every counter of one sidecar process.
pub struct Metrics {
    ports: Vec<String>,
    requests: Box<[Counter]>,
    latency: Box<[Histogram]>,
    audit_wait: Histogram,
    refusals: Box<[Counter]>,
    stream_seconds: Box<[Histogram]>,
    records_out: Box<[Counter]>,
    bytes_out: Box<[Counter]>,
    upstream_errors: Box<[Counter]>,
    /// Streamed responses still being sent.
    pub streams_in_flight: Gauge,
    streams_ended: [Counter; STREAM_OUTCOMES.len()],
    /// Upstream lines that were not a record, skipped.
    pub malformed_skipped: Counter,
    /// Records a validator plugin refused (withheld as nonconforming).
    pub nonconforming_withheld: Counter,
    plugin_failures: [Counter; 5],
    /// Per listener, per [`Unparsed`] reason.
    unparsed: [Counter; 6],
    pub bundle_swaps: Counter,
    bundle_refusals: Mutex<BTreeMap<String, u64>>,
    spends: [Counter; 4],
    budgets: Mutex<Budgets>,
    /// SQL statements, by protocol, port and decision.
    sql_queries: Box<[Counter]>,
    /// SQL rows and bytes sent, by protocol.
    sql_rows: [Counter; SQL_PROTOCOLS.len()],
    sql_bytes: [Counter; SQL_PROTOCOLS.len()],
    /// Open SQL connections, by protocol.
    sql_connections: [Gauge; SQL_PROTOCOLS.len()],
}

/// The SQL ports' protocols, as labels.
pub const SQL_PROTOCOLS: [&str; 2] = ["postgres", "flight-sql"];

/// One ledger outcome, as the budget metrics see it (from
/// [`crate::telemetry::SpendEvent::emit`]).
pub struct Spend<'a> {
    /// `granted`, `cached`, `exhausted` or `pending`.
    pub outcome: &'a str,
    pub rule: &'a str,
    pub consumer: &'a str,
    pub purpose: &'a str,
    /// The consumer's account, then the product's, with their limits.
    pub accounts: &'a [Account],
    /// What each account has left.
    pub remaining: &'a [Units],
    pub window_end: i64,
}

/// The remaining budget of privacy accounts, as last seen by this sidecar.
struct Budgets {
    max_consumer_series: usize,
    tick: u64,
    /// `(rule, consumer, purpose)`.
    consumers: HashMap<(String, String, String), Budget>,
    /// By rule: the product-wide budget across all consumers.
    products: HashMap<String, Budget>,
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    remaining_epsilon: f64,
    remaining_delta: f64,
    limit_epsilon: f64,
    limit_delta: f64,
    window_end: i64,
    touched: u64,
}

impl Budget {
    /// `(epsilon, delta)` left at `now`: the full budget once the window
    /// in which it was last seen has closed.
    fn at(&self, now: i64) -> (f64, f64) {
        if now >= self.window_end {
            (self.limit_epsilon, self.limit_delta)
        } else {
            (self.remaining_epsilon, self.remaining_delta)
        }
    }
}

fn index_of(list: &[&str], v: &str) -> usize {
    list.iter()
        .position(|x| *x == v)
        .unwrap_or(list.len().saturating_sub(1))
}

fn table<T>(n: usize, f: impl Fn() -> T) -> Box<[T]> {
    (0..n).map(|_| f()).collect()
}

impl Metrics {
    /// Tables for the descriptor's `ports`, and at most
    /// `budget_series` consumer budget series.
    pub fn new(ports: Vec<String>, budget_series: usize) -> Metrics {
        let p = ports.len() + 2;
        let req = p * ACTIONS.len() * DECISIONS.len() * STATUSES.len();
        Metrics {
            ports,
            requests: table(req, Counter::default),
            latency: table(p * ACTIONS.len(), || {
                Histogram::new(meshgov_metrics::LATENCY_BUCKETS)
            }),
            audit_wait: Histogram::new(meshgov_metrics::LATENCY_BUCKETS),
            refusals: table(REFUSALS.len(), Counter::default),
            stream_seconds: table(p, || Histogram::new(meshgov_metrics::STREAM_BUCKETS)),
            records_out: table(p, Counter::default),
            bytes_out: table(p, Counter::default),
            upstream_errors: table(p * UPSTREAM_STAGES.len(), Counter::default),
            streams_in_flight: Gauge::default(),
            streams_ended: Default::default(),
            malformed_skipped: Counter::default(),
            nonconforming_withheld: Counter::default(),
            plugin_failures: Default::default(),
            unparsed: Default::default(),
            bundle_swaps: Counter::default(),
            bundle_refusals: Mutex::new(BTreeMap::new()),
            spends: Default::default(),
            budgets: Mutex::new(Budgets {
                max_consumer_series: budget_series,
                tick: 0,
                consumers: HashMap::new(),
                products: HashMap::new(),
            }),
            sql_queries: table(SQL_PROTOCOLS.len() * p * DECISIONS.len(), Counter::default),
            sql_rows: Default::default(),
            sql_bytes: Default::default(),
            sql_connections: Default::default(),
        }
    }

    /// Counts one SQL statement over `protocol` (a [`SQL_PROTOCOLS`] name)
    /// on `port`, with its decision (0 allow, 1 deny, 2 error).
    pub fn sql_query(&self, protocol: &str, port: PortIx, decision: usize) {
        let p = self.ports.len() + 2;
        let ix = (index_of(&SQL_PROTOCOLS, protocol) * p + port.0) * DECISIONS.len() + decision;
        if let Some(c) = self.sql_queries.get(ix) {
            c.inc();
        }
    }

    /// Counts what a SQL query sent.
    pub fn sql_sent(&self, protocol: &str, rows: u64, bytes: u64) {
        let i = index_of(&SQL_PROTOCOLS, protocol);
        if let (Some(r), Some(b)) = (self.sql_rows.get(i), self.sql_bytes.get(i)) {
            r.add(rows);
            b.add(bytes);
        }
    }

    /// The open connections' gauge of `protocol`.
    pub fn sql_connections(&self, protocol: &str) -> Option<&Gauge> {
        self.sql_connections.get(index_of(&SQL_PROTOCOLS, protocol))
    }

    /// The index of a port label: `None` is a request without a port.
    pub fn port(&self, name: Option<&str>) -> PortIx {
        match name {
            None => PortIx(self.ports.len() + 1),
            Some(n) => PortIx(
                self.ports
                    .iter()
                    .position(|p| p == n)
                    .unwrap_or(self.ports.len()),
            ),
        }
    }

    fn port_label(&self, p: usize) -> &str {
        match self.ports.get(p) {
            Some(name) => name,
            None if p == self.ports.len() => UNKNOWN_PORT,
            None => "",
        }
    }

    /// Counts one answered request and how long it took to answer (up to
    /// the response head, the audit wait included).
    pub fn request(
        &self,
        port: PortIx,
        action: Action,
        decision: usize,
        status: u16,
        refusal: Option<&str>,
        took: Duration,
    ) {
        let a = action as usize;
        let s = index_of(&STATUSES, itoa_status(status));
        let i =
            ((port.0 * ACTIONS.len() + a) * DECISIONS.len() + decision.min(2)) * STATUSES.len() + s;
        if let Some(c) = self.requests.get(i) {
            c.inc();
        }
        if let Some(h) = self.latency.get(port.0 * ACTIONS.len() + a) {
            h.observe(took);
        }
        if let Some(code) = refusal
            && let Some(c) = self.refusals.get(index_of(&REFUSALS, code))
        {
            c.inc();
        }
    }

    /// How long a request waited for its decision event to be durable.
    pub fn audit_wait(&self, took: Duration) {
        self.audit_wait.observe(took);
    }

    /// Records and bytes of one chunk handed to a connection.
    pub fn sent(&self, port: PortIx, records: u64, bytes: u64) {
        if let Some(c) = self.records_out.get(port.0) {
            c.add(records);
        }
        if let Some(c) = self.bytes_out.get(port.0) {
            c.add(bytes);
        }
    }

    /// A streamed response ended (however it ended) after `took`.
    pub fn stream_ended(&self, port: PortIx, took: Duration) {
        self.streams_in_flight.dec();
        if let Some(h) = self.stream_seconds.get(port.0) {
            h.observe(took);
        }
    }

    /// A streamed response ended with `outcome` (one of its completion
    /// event's outcomes).
    pub fn stream_outcome(&self, outcome: &str) {
        if let Some(c) = self.streams_ended.get(index_of(&STREAM_OUTCOMES, outcome)) {
            c.inc();
        }
    }

    /// The upstream failed when opened (`mid_stream: false`) or while read.
    pub fn upstream_error(&self, port: PortIx, mid_stream: bool) {
        if let Some(c) = self
            .upstream_errors
            .get(port.0 * UPSTREAM_STAGES.len() + usize::from(mid_stream))
        {
            c.inc();
        }
    }

    pub fn plugin_failure(&self, kind: FailureKind) {
        let i = match kind {
            FailureKind::Trap => 0,
            FailureKind::OutOfFuel => 1,
            FailureKind::OutOfMemory => 2,
            FailureKind::Malformed => 3,
            _ => 4,
        };
        if let Some(c) = self.plugin_failures.get(i) {
            c.inc();
        }
    }

    /// A request the HTTP parser refused on `listener`: it never became a
    /// request, so it has no audit event; it is counted here instead.
    pub fn unparsed(&self, listener: Listener, why: Unparsed) {
        if let Some(c) = self
            .unparsed
            .get(listener as usize * UNPARSED.len() + why as usize)
        {
            c.inc();
        }
    }

    /// Requests failed by a plugin so far, of every kind.
    pub fn plugin_failures_total(&self) -> u64 {
        self.plugin_failures.iter().map(Counter::get).sum()
    }

    /// A bundle refused, by its NACK code.
    pub fn bundle_refused(&self, code: &meshgov_wire::NackCode) {
        let mut m = self
            .bundle_refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *m.entry(code.as_str().to_owned()).or_default() += 1;
    }

    /// A ledger outcome for a query, and the budget each account has left
    /// (`accounts` and `remaining` are the consumer's account, then the
    /// product's).
    pub fn spend(&self, e: &Spend<'_>) {
        let (accounts, remaining) = (e.accounts, e.remaining);
        if let Some(c) = self.spends.get(index_of(&SPEND_OUTCOMES, e.outcome)) {
            c.inc();
        }
        let mut b = self
            .budgets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        b.tick += 1;
        let touched = b.tick;
        let budget = |i: usize| -> Option<Budget> {
            let (a, r) = (accounts.get(i)?, remaining.get(i)?);
            Some(Budget {
                remaining_epsilon: r.epsilon_f64(),
                remaining_delta: r.delta_f64(),
                limit_epsilon: a.limit.epsilon_f64(),
                limit_delta: a.limit.delta_f64(),
                window_end: e.window_end,
                touched,
            })
        };
        if let Some(p) = budget(1) {
            b.products.insert(e.rule.to_string(), p);
        }
        let Some(c) = budget(0) else { return };
        if b.max_consumer_series == 0 {
            return;
        }
        let key = (
            e.rule.to_string(),
            e.consumer.to_string(),
            e.purpose.to_string(),
        );
        if !b.consumers.contains_key(&key) && b.consumers.len() >= b.max_consumer_series {
            // Bounded: the least recently updated series goes.
            let oldest = b
                .consumers
                .iter()
                .min_by_key(|(_, v)| v.touched)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                b.consumers.remove(&k);
            }
        }
        b.consumers.insert(key, c);
    }

    /// The exposition text at `now_unix`, with the bundle in `bundle` and
    /// the state of `audit`.
    pub fn render(
        &self,
        bundle: &BundleSlot,
        audit: &AuditLog,
        auth: &crate::auth::Authenticator,
        now_unix: i64,
    ) -> String {
        let mut e = Encoder::new();
        e.family(
            "meshgov_sidecar_build_info",
            Type::Gauge,
            "The running sidecar's version (always 1).",
        )
        .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1i64);
        self.render_requests(&mut e);
        self.render_streams(&mut e);
        render_bundle(&mut e, bundle, now_unix);
        self.render_bundle_events(&mut e);
        self.render_privacy(&mut e, now_unix);
        self.render_sql(&mut e);
        render_audit(&mut e, audit);
        e.family(
            "meshgov_sidecar_plugin_failures_total",
            Type::Counter,
            "Reads failed by a WebAssembly plugin, by what went wrong.",
        );
        for (kind, c) in PLUGIN_KINDS.iter().zip(&self.plugin_failures) {
            e.sample(&[("kind", kind)], c.get());
        }
        e.family(
            "meshgov_sidecar_http_refused_total",
            Type::Counter,
            "Requests the HTTP parser refused before they became requests (so without an audit event), by listener and reason.",
        );
        let pairs = LISTENERS
            .iter()
            .flat_map(|l| UNPARSED.iter().map(move |r| (l, r)));
        for ((listener, reason), c) in pairs.zip(&self.unparsed) {
            e.sample(
                &[("listener", listener), ("reason", reason.label())],
                c.get(),
            );
        }
        auth.write_metrics(&mut e);
        meshgov_metrics::process::write(&mut e);
        e.finish()
    }

    fn render_requests(&self, e: &mut Encoder) {
        let p = self.ports.len() + 2;
        e.family(
            "meshgov_sidecar_requests_total",
            Type::Counter,
            "Answered data-port requests (probes excluded) by port, action, decision and HTTP status.",
        );
        for port in 0..p {
            for (a, action) in ACTIONS.iter().enumerate() {
                for (d, decision) in DECISIONS.iter().enumerate() {
                    for (s, status) in STATUSES.iter().enumerate() {
                        let i =
                            ((port * ACTIONS.len() + a) * DECISIONS.len() + d) * STATUSES.len() + s;
                        let n = self.requests.get(i).map_or(0, Counter::get);
                        if n > 0 {
                            e.sample(
                                &[
                                    ("port", self.port_label(port)),
                                    ("action", action),
                                    ("decision", decision),
                                    ("status", status),
                                ],
                                n,
                            );
                        }
                    }
                }
            }
        }
        e.family(
            "meshgov_sidecar_request_duration_seconds",
            Type::Histogram,
            "Time from a request's arrival to its response head (decision, audit wait included), by port and action.",
        );
        for port in 0..p {
            for (a, action) in ACTIONS.iter().enumerate() {
                if let Some(h) = self.latency.get(port * ACTIONS.len() + a) {
                    let s = h.snapshot();
                    if s.count > 0 {
                        e.histogram(&[("port", self.port_label(port)), ("action", action)], &s);
                    }
                }
            }
        }
        e.family(
            "meshgov_sidecar_refusals_total",
            Type::Counter,
            "Refused data-port requests by refusal code (the `error` of the answer).",
        );
        for (code, c) in REFUSALS.iter().zip(self.refusals.iter()) {
            if c.get() > 0 {
                e.sample(&[("code", code)], c.get());
            }
        }
        e.family(
            "meshgov_sidecar_audit_wait_seconds",
            Type::Histogram,
            "How long requests waited for their decision event to be durable in the audit log.",
        )
        .histogram(&[], &self.audit_wait.snapshot());
    }

    fn render_sql(&self, e: &mut Encoder) {
        let p = self.ports.len() + 2;
        e.family(
            "meshgov_sidecar_sql_queries_total",
            Type::Counter,
            "SQL statements over the SQL ports (session statements excluded), by protocol, port (`` for none or several) and decision.",
        );
        for (i, protocol) in SQL_PROTOCOLS.iter().enumerate() {
            for port in 0..p {
                for (d, decision) in DECISIONS.iter().enumerate() {
                    let c = self.sql_queries.get((i * p + port) * DECISIONS.len() + d);
                    if let Some(c) = c.filter(|c| c.get() > 0) {
                        e.sample(
                            &[
                                ("protocol", protocol),
                                ("port", self.port_label(port)),
                                ("decision", decision),
                            ],
                            c.get(),
                        );
                    }
                }
            }
        }
        for (name, help, t) in [
            (
                "meshgov_sidecar_sql_rows_out_total",
                "Rows the SQL ports sent, by protocol.",
                &self.sql_rows,
            ),
            (
                "meshgov_sidecar_sql_bytes_out_total",
                "Bytes of rows the SQL ports sent (PostgreSQL data rows, Arrow Flight data), by protocol.",
                &self.sql_bytes,
            ),
        ] {
            e.family(name, Type::Counter, help);
            for (protocol, c) in SQL_PROTOCOLS.iter().zip(t) {
                e.sample(&[("protocol", protocol)], c.get());
            }
        }
        e.family(
            "meshgov_sidecar_sql_connections",
            Type::Gauge,
            "Open connections to the SQL ports, by protocol.",
        );
        for (protocol, g) in SQL_PROTOCOLS.iter().zip(&self.sql_connections) {
            e.sample(&[("protocol", protocol)], g.get());
        }
    }

    fn render_streams(&self, e: &mut Encoder) {
        let p = self.ports.len() + 2;
        let per_port = |e: &mut Encoder, t: &[Counter]| {
            for (port, c) in t.iter().enumerate().take(p) {
                if c.get() > 0 {
                    e.sample(&[("port", self.port_label(port))], c.get());
                }
            }
        };
        e.family(
            "meshgov_sidecar_records_out_total",
            Type::Counter,
            "Records handed to consumers' connections, by port.",
        );
        per_port(e, &self.records_out);
        e.family(
            "meshgov_sidecar_bytes_out_total",
            Type::Counter,
            "Bytes of record bodies (NDJSON or CSV) handed to consumers' connections, by port.",
        );
        per_port(e, &self.bytes_out);
        e.family(
            "meshgov_sidecar_stream_duration_seconds",
            Type::Histogram,
            "Time from a streamed read's response head to the end of its body (however it ended), by port.",
        );
        for port in 0..p {
            if let Some(h) = self.stream_seconds.get(port) {
                let s = h.snapshot();
                if s.count > 0 {
                    e.histogram(&[("port", self.port_label(port))], &s);
                }
            }
        }
        e.family(
            "meshgov_sidecar_streams_in_flight",
            Type::Gauge,
            "Streamed reads still being sent.",
        )
        .sample(&[], self.streams_in_flight.get());
        e.family(
            "meshgov_sidecar_streams_total",
            Type::Counter,
            "Streamed reads that ended, by outcome (`stalled`: the client read nothing for `limits.write_stall_timeout_ms`).",
        );
        for (outcome, c) in STREAM_OUTCOMES.iter().zip(&self.streams_ended) {
            e.sample(&[("outcome", outcome)], c.get());
        }
        e.family(
            "meshgov_sidecar_upstream_errors_total",
            Type::Counter,
            "Upstream failures by port and stage (`open`: nothing served; `mid_stream`: the body was aborted).",
        );
        for port in 0..p {
            for (st, stage) in UPSTREAM_STAGES.iter().enumerate() {
                let n = self
                    .upstream_errors
                    .get(port * UPSTREAM_STAGES.len() + st)
                    .map_or(0, Counter::get);
                if n > 0 {
                    e.sample(&[("port", self.port_label(port)), ("stage", stage)], n);
                }
            }
        }
        e.family(
            "meshgov_sidecar_upstream_malformed_records_total",
            Type::Counter,
            "Upstream lines that were not a valid record, skipped.",
        )
        .sample(&[], self.malformed_skipped.get());
        e.family(
            "meshgov_sidecar_nonconforming_withheld_total",
            Type::Counter,
            "Records a validator plugin refused, withheld.",
        )
        .sample(&[], self.nonconforming_withheld.get());
    }

    fn render_bundle_events(&self, e: &mut Encoder) {
        e.family(
            "meshgov_sidecar_bundle_swaps_total",
            Type::Counter,
            "Bundles accepted and swapped in.",
        )
        .sample(&[], self.bundle_swaps.get());
        e.family(
            "meshgov_sidecar_bundle_refusals_total",
            Type::Counter,
            "Bundles refused (the bundle in force stayed), by NACK code.",
        );
        let m = self
            .bundle_refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (code, n) in m.iter() {
            e.sample(&[("code", code.as_str())], *n);
        }
    }

    fn render_privacy(&self, e: &mut Encoder, now: i64) {
        e.family(
            "meshgov_sidecar_privacy_spends_total",
            Type::Counter,
            "Aggregate queries by ledger outcome.",
        );
        for (o, c) in SPEND_OUTCOMES.iter().zip(&self.spends) {
            e.sample(&[("outcome", o)], c.get());
        }
        let b = self
            .budgets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut consumers: Vec<_> = b.consumers.iter().collect();
        consumers.sort_by(|x, y| x.0.cmp(y.0));
        e.family(
            "meshgov_sidecar_privacy_epsilon_remaining",
            Type::Gauge,
            "Epsilon left in the current window per privacy rule, consumer (token subject) and purpose, as of this sidecar's last query on that account; the full budget once that window closed.",
        );
        for ((rule, consumer, purpose), v) in &consumers {
            e.sample(
                &[("rule", rule), ("consumer", consumer), ("purpose", purpose)],
                v.at(now).0,
            );
        }
        e.family(
            "meshgov_sidecar_privacy_delta_remaining",
            Type::Gauge,
            "Delta left in the current window per privacy rule, consumer and purpose (see meshgov_sidecar_privacy_epsilon_remaining).",
        );
        for ((rule, consumer, purpose), v) in &consumers {
            e.sample(
                &[("rule", rule), ("consumer", consumer), ("purpose", purpose)],
                v.at(now).1,
            );
        }
        let mut products: Vec<_> = b.products.iter().collect();
        products.sort_by(|x, y| x.0.cmp(y.0));
        e.family(
            "meshgov_sidecar_privacy_product_epsilon_remaining",
            Type::Gauge,
            "Epsilon left in the current window across all consumers, per privacy rule with a product_epsilon_budget.",
        );
        for (rule, v) in products {
            e.sample(&[("rule", rule)], v.at(now).0);
        }
        e.family(
            "meshgov_sidecar_privacy_budget_series",
            Type::Gauge,
            "Consumer budget series kept (bounded by metrics.budget_series).",
        )
        .sample(&[], consumers.len() as u64);
    }
}

fn itoa_status(s: u16) -> &'static str {
    match s {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        _ => "other",
    }
}

fn render_bundle(e: &mut Encoder, slot: &BundleSlot, now: i64) {
    let current = slot.current();
    let serving = slot.valid_at(now).is_ok();
    e.family(
        "meshgov_sidecar_serving",
        Type::Gauge,
        "1 while a valid, unexpired bundle is in force (reads are served), else 0.",
    )
    .sample(&[], i64::from(serving));
    let Some(b) = current else {
        return;
    };
    e.family(
        "meshgov_sidecar_bundle_revision",
        Type::Gauge,
        "The revision of the bundle in force.",
    )
    .sample(&[], b.meta.revision);
    e.family(
        "meshgov_sidecar_bundle_age_seconds",
        Type::Gauge,
        "Seconds since the bundle in force was built (its created_at).",
    )
    .sample(&[], now.saturating_sub(b.meta.created_at_unix));
    e.family(
        "meshgov_sidecar_bundle_loaded_seconds",
        Type::Gauge,
        "Seconds since this sidecar swapped in the bundle in force.",
    )
    .sample(&[], now.saturating_sub(b.loaded_at_unix));
    e.family(
        "meshgov_sidecar_bundle_expiry_seconds",
        Type::Gauge,
        "Seconds until the bundle in force expires (negative once expired: reads are refused).",
    )
    .sample(&[], b.meta.expires_at_unix.saturating_sub(now));
}

fn render_audit(e: &mut Encoder, audit: &AuditLog) {
    let head = audit.head();
    e.family(
        "meshgov_sidecar_audit_queue_depth",
        Type::Gauge,
        "Audit events submitted but not yet written by the audit writer.",
    )
    .sample(&[], audit.queue_depth());
    e.family(
        "meshgov_sidecar_audit_fsync_seconds",
        Type::Histogram,
        "Duration of each audit batch's fdatasync (group commit).",
    )
    .histogram(&[], &audit.fsync_seconds());
    e.family(
        "meshgov_sidecar_audit_head_sequence",
        Type::Gauge,
        "The sequence number of the last durable audit event.",
    )
    .sample(&[], head.seq);
    e.family(
        "meshgov_sidecar_audit_checkpoint_sequence",
        Type::Gauge,
        "The sequence number covered by the last signed checkpoint.",
    )
    .sample(&[], head.checkpoint_seq);
    e.family(
        "meshgov_sidecar_audit_failed",
        Type::Gauge,
        "1 once the audit log has failed (every request is then refused with 503), else 0.",
    )
    .sample(&[], i64::from(head.failed.is_some()));
}
