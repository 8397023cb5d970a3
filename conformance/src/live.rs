//! `conformance run`: a black-box suite against a live sidecar.
//!
//! The suite takes the bundle in force from the sidecar's control port
//! (`GET /control/v1/bundle`, verified against the trusted keys) and uses
//! it as the reference: for every consumer it tries, the policy engine
//! computes what the sidecar must answer, and the suite compares that with
//! what the sidecar answers over HTTP. Then it pushes bad bundles to the
//! control port, spends a throwaway consumer's privacy budget, and finally
//! pulls the audit stream and checks that every request it made is there
//! and that the chain verifies. The checks are [`LIVE_RULES`].
//!
//! When the sidecar's discovery document (`GET /`) names a PostgreSQL
//! port, the suite also connects to it ([`sql`]): bad passwords and user
//! names are refused, every consumer's tables hold what their HTTP reads
//! hold, an aggregate-only consumer gets no rows, and the budget holds
//! over SQL too (`--skip-sql` leaves all of that out).
//!
//! It changes the sidecar's state only in ways a sidecar must shrug off
//! (refused pushes) or that are scoped to its own throwaway consumer (the
//! budget check, which also spends from a product-wide budget if the rule
//! has one; `--skip-budget` leaves that out). Run it against a staging
//! sidecar, never against one whose budget matters.

use crate::Failure;
use crate::report::Report;
use crate::rules::{Finding, LIVE_RULES};
use crate::token::{self, Issuer, TokenArgs};
use http::{Method, header};
use meshgov_bundle::{BundleMeta, BundlePayload, SigningKey, TrustStore};
use meshgov_core::anonymization::Method as Anon;
use meshgov_core::descriptor::{Descriptor, ProductInfo, position_of};
use meshgov_core::diag::{Diagnostic, Position};
use meshgov_core::privacy::Aggregation;
use meshgov_core::{Asker, Policies, Principal, ProductView, ReadDecision, Treatment};
use meshgov_server::client::{Answer, HttpClient};
use meshgov_wire::{ControlStatus, Nack, PushOutcome, path};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest one request of the suite may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The most aggregate queries the budget check sends before it concludes
/// that the budget is not enforced.
const MAX_BUDGET_QUERIES: usize = 500;

mod sql;

pub struct RunArgs<'a> {
    /// The data port, e.g. `http://127.0.0.1:8080`.
    pub sidecar: &'a str,
    /// The control port, e.g. `http://127.0.0.1:8081`.
    pub control: &'a str,
    pub product: &'a Path,
    /// The private key of an issuer the sidecar trusts, to mint consumer tokens.
    pub issuer_key: &'a Path,
    pub issuer: &'a Issuer,
    pub control_token: Option<&'a str>,
    /// The governance signing key: mints the control token when none is
    /// given, and signs the rolled-back and expired bundles.
    pub governance_key: Option<&'a Path>,
    pub trust: &'a [PathBuf],
    /// Extra consumers, `SUB:GROUP,GROUP:PURPOSE`.
    pub consumers: &'a [String],
    pub limit: usize,
    pub skip_budget: bool,
    /// Leave out the SQL checks (LIVE-012 to LIVE-015).
    pub skip_sql: bool,
    /// Connect to the PostgreSQL port here instead of the address the
    /// discovery document gives (a port forward, a load balancer).
    pub sql_address: Option<&'a str>,
    /// A PEM file of CA certificates to trust for a TLS SQL port, besides
    /// the platform's roots.
    pub sql_ca: Option<&'a Path>,
}

/// A consumer the suite reads as.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Consumer {
    sub: String,
    groups: Vec<String>,
    purpose: String,
}

impl Consumer {
    fn parse(spec: &str) -> Result<Consumer, Failure> {
        let mut parts = spec.splitn(3, ':');
        let (Some(sub), Some(groups), Some(purpose)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Failure::usage(format!(
                "--consumer `{spec}`: expected SUB:GROUP,GROUP:PURPOSE (groups may be empty)"
            )));
        };
        if sub.is_empty() || purpose.is_empty() {
            return Err(Failure::usage(format!(
                "--consumer `{spec}`: the subject and the purpose must not be empty"
            )));
        }
        Ok(Consumer {
            sub: sub.into(),
            groups: groups
                .split(',')
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect(),
            purpose: purpose.into(),
        })
    }

    fn principal(&self) -> Principal {
        Principal {
            id: self.sub.clone(),
            groups: self.groups.clone(),
            attrs: BTreeMap::new(),
        }
    }
}

impl std::fmt::Display for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` (groups [{}], purpose `{}`)",
            self.sub,
            self.groups.join(", "),
            self.purpose
        )
    }
}

/// How a token is spoiled for the authentication check.
#[derive(Clone, Copy)]
enum Spoil {
    Valid,
    Expired,
    Audience,
    Issuer,
}

/// One request the suite made, to look for in the audit stream.
struct Sent {
    rid: String,
    what: String,
    status: u16,
}

/// One read: who, what the bundle says, what the sidecar answered.
struct Read {
    who: Consumer,
    plan: ReadDecision,
    status: u16,
    records: Vec<Map<String, Value>>,
}

struct Suite<'a> {
    a: &'a RunArgs<'a>,
    client: HttpClient,
    data: String,
    control: String,
    control_token: String,
    idp_pem: String,
    nonce: String,
    n: u32,
    now: i64,
    sent: Vec<Sent>,
    /// The SQL statements of the run, for the audit check.
    sql_sent: Vec<sql::SqlSent>,
    /// Connects to the SQL port refused for a bad token: each must be
    /// an audited `connect` decision.
    sql_refused_connects: usize,
    /// When the run started, in milliseconds since the epoch.
    started_ms: i64,
    /// Every HTTP read of `check_reads`, by port: the reference for the
    /// same reads over SQL.
    reads: BTreeMap<String, Vec<Read>>,
    findings: Vec<Finding>,
    skipped: BTreeMap<&'static str, String>,
    /// What the run did, for the report.
    summary: String,
    path: String,
    desc: Descriptor,
}

fn io_failure(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::usage(format!("{what}: {e}"))
}

/// Runs the suite against the sidecar; the report lists what it found.
pub fn run(a: &RunArgs<'_>) -> Result<Report, Failure> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| io_failure("cannot start the runtime", e))?;
    let (findings, skipped, summary) = rt.block_on(async {
        let mut suite = Suite::new(a)?;
        suite.run_all().await?;
        Ok::<_, Failure>((suite.findings, suite.skipped, suite.summary))
    })?;
    Ok(Report {
        target: a.sidecar.to_string(),
        rules: LIVE_RULES,
        findings,
        skipped,
        summary: Some(summary),
        help_base_url: crate::rules::DEFAULT_HELP_BASE_URL.to_string(),
    })
}

impl<'a> Suite<'a> {
    fn new(a: &'a RunArgs<'a>) -> Result<Suite<'a>, Failure> {
        let path = a.product.display().to_string();
        let text = std::fs::read_to_string(a.product).map_err(|e| io_failure(&path, e))?;
        let desc = Descriptor::parse(&path, &text).map_err(|d| Failure::usage(d.to_string()))?;
        let idp_pem = std::fs::read_to_string(a.issuer_key)
            .map_err(|e| io_failure(&a.issuer_key.display().to_string(), e))?;
        let started = time::OffsetDateTime::now_utc();
        let now = started.unix_timestamp();
        let started_ms = i64::try_from(started.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let control_token = match (a.control_token, a.governance_key) {
            (Some(t), _) => t.trim().to_string(),
            (None, Some(k)) => {
                let key = read_key(k)?;
                meshgov_bundle::mint_control_token(&key, "meshgov-conformance", now, 300)
            }
            (None, None) => {
                return Err(Failure::usage(
                    "give --control-token TOKEN (`meshgov control-token`) or --governance-key KEY",
                ));
            }
        };
        let mut nonce = [0u8; 6];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| Failure::usage("the system random source failed"))?;
        Ok(Suite {
            a,
            client: HttpClient::default(),
            data: a.sidecar.trim_end_matches('/').to_string(),
            control: a.control.trim_end_matches('/').to_string(),
            control_token,
            idp_pem,
            nonce: nonce.iter().map(|b| format!("{b:02x}")).collect(),
            n: 0,
            now,
            sent: Vec::new(),
            sql_sent: Vec::new(),
            sql_refused_connects: 0,
            started_ms,
            reads: BTreeMap::new(),
            findings: Vec::new(),
            skipped: BTreeMap::new(),
            summary: String::new(),
            path,
            desc,
        })
    }

    async fn run_all(&mut self) -> Result<(), Failure> {
        let status = self.control_status().await?;
        let product = self.desc.product_id();
        if status.product != product {
            return Err(Failure::usage(format!(
                "the sidecar at {} serves `{}`, but `{}` describes `{product}`",
                self.control, status.product, self.path
            )));
        }
        let envelope = self.control_get(path::CONTROL_BUNDLE).await?.body;
        let (manifest, components, policies) = self.verify_in_force(&envelope)?;
        let info = ProductInfo::resolve(&self.desc, &policies.mesh)
            .map_err(|e| Failure::usage(e.diagnostic(&self.path).to_string()))?;
        let view = ProductView::new(info, &policies).map_err(Failure::usage)?;
        let candidates = self.candidates(&policies, &components)?;
        self.summary = format!(
            "revision {} of {product}: {} consumers on {} port(s)",
            manifest.revision,
            candidates.len(),
            view.info.ports.len()
        );

        self.check_authentication(&policies, &view, &candidates)
            .await?;
        self.check_reads(&policies, &view, &candidates).await?;
        let mut pg = self.sql_port().await?;
        if let Some(p) = &pg
            && !self.check_sql(p, &policies, &view, &candidates).await?
        {
            pg = None;
        }
        if self.a.skip_budget {
            self.skipped
                .insert("LIVE-005", "--skip-budget was given".into());
            if pg.is_some() {
                self.skipped
                    .insert("LIVE-015", "--skip-budget was given".into());
            }
        } else {
            self.check_budget(&policies, &view, &candidates).await?;
            if let Some(pg) = &pg {
                self.check_sql_budget(pg, &policies, &view, &candidates)
                    .await?;
            }
        }
        self.check_bundles(&envelope, &manifest, &components)
            .await?;
        self.check_audit(&status).await
    }

    fn finding(&mut self, rule: &'static str, pos: Position, message: String, hint: &str) {
        self.findings.push(Finding {
            diag: Diagnostic::error(self.path.clone(), pos, rule, message, hint),
            waived_by: None,
        });
    }

    /// The schema object a port serves.
    fn schema_of(&self, port: &str) -> String {
        self.desc
            .ports()
            .ok()
            .and_then(|ps| ps.into_iter().find(|p| p.name == port))
            .and_then(|p| p.schema.or(Some(p.name)))
            .unwrap_or_else(|| port.to_string())
    }

    /// Where a port's schema object is declared in the descriptor.
    fn port_pos(&self, port: &str) -> Position {
        let schema = self.schema_of(port);
        self.desc
            .schema
            .iter()
            .find(|o| o.name.value == schema)
            .map_or(Position { line: 1, col: 1 }, |o| position_of(&o.name))
    }

    /// Where a field is declared in the descriptor.
    fn field_pos(&self, port: &str, field: &str) -> Position {
        let schema = self.schema_of(port);
        self.desc
            .schema
            .iter()
            .filter(|o| o.name.value == schema)
            .flat_map(|o| o.properties.iter())
            .find(|p| p.name.value == field)
            .map_or_else(|| self.port_pos(port), |p| position_of(&p.name))
    }

    fn next_rid(&mut self) -> String {
        self.n += 1;
        format!("mgc-{}-{}", self.nonce, self.n)
    }

    /// Sends one request to the data or control port with a fresh request
    /// id, and remembers it for the audit check when `audited`.
    async fn send(
        &mut self,
        method: Method,
        url: String,
        mut headers: Vec<(header::HeaderName, String)>,
        body: Vec<u8>,
        what: String,
    ) -> Result<(String, Answer), Failure> {
        let rid = self.next_rid();
        headers.push((header::HeaderName::from_static("x-request-id"), rid.clone()));
        let answer = self
            .client
            .send(method, &url, &headers, body.into(), TIMEOUT)
            .await
            .map_err(|e| io_failure(&format!("cannot reach {url}"), e))?;
        self.sent.push(Sent {
            rid: rid.clone(),
            what,
            status: answer.status.as_u16(),
        });
        Ok((rid, answer))
    }

    async fn control_get(&self, path: &str) -> Result<Answer, Failure> {
        let url = format!("{}{path}", self.control);
        let auth = format!("Bearer {}", self.control_token);
        let answer = self
            .client
            .send(
                Method::GET,
                &url,
                &[(header::AUTHORIZATION, auth)],
                Default::default(),
                TIMEOUT,
            )
            .await
            .map_err(|e| io_failure(&format!("cannot reach {url}"), e))?;
        if !answer.status.is_success() {
            return Err(Failure::usage(format!(
                "{url} answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            )));
        }
        Ok(answer)
    }

    async fn control_status(&self) -> Result<ControlStatus, Failure> {
        let a = self.control_get(path::CONTROL_STATUS).await?;
        serde_json::from_slice(&a.body).map_err(|e| {
            io_failure(
                &format!(
                    "{}{} is not a control status",
                    self.control,
                    path::CONTROL_STATUS
                ),
                e,
            )
        })
    }

    fn trust_store(&self) -> Result<TrustStore, Failure> {
        let mut store = TrustStore::new();
        for t in self.a.trust {
            let k = meshgov_bundle::read_public_key_file(t).map_err(Failure::key)?;
            store.insert(k).map_err(|e| Failure::usage(e.to_string()))?;
        }
        if let Some(k) = self.a.governance_key {
            let _ = store.insert(read_key(k)?.public_key());
        }
        if store.is_empty() {
            return Err(Failure::usage(
                "give --trust GUILD.pub (or --governance-key) to verify the bundle in force",
            ));
        }
        Ok(store)
    }

    /// The bundle in force, verified: the reference for every check.
    #[allow(clippy::type_complexity)]
    fn verify_in_force(
        &self,
        envelope: &[u8],
    ) -> Result<(meshgov_bundle::Manifest, BTreeMap<String, String>, Policies), Failure> {
        let store = self.trust_store()?;
        let v = meshgov_bundle::verify(
            envelope,
            &store,
            self.now,
            &meshgov_bundle::Expect::default(),
        )
        .map_err(|e| {
            Failure::usage(format!(
                "the bundle in force does not verify against the trusted keys [{}]: {e}",
                e.code()
            ))
        })?;
        let (manifest, components) = v.into_parts();
        let policies = Policies::from_components(&components, manifest.product.clone())
            .map_err(|e| Failure::usage(format!("the bundle in force: {e}")))?;
        Ok((manifest, components, policies))
    }

    /// Who to read as: one consumer per group the access policies name and
    /// per purpose, one with no groups per purpose, and `--consumer`s.
    fn candidates(
        &self,
        policies: &Policies,
        components: &BTreeMap<String, String>,
    ) -> Result<Vec<Consumer>, Failure> {
        let text = components
            .get(meshgov_core::policies::component::POLICIES)
            .map_or("", String::as_str);
        let mut groups = BTreeSet::new();
        let mut rest = text;
        while let Some(i) = rest.find("Group::") {
            rest = rest.get(i + "Group::".len()..).unwrap_or("");
            let name = rest.trim_start_matches('\\').trim_start_matches('"');
            let end = name.find(['\\', '"']).unwrap_or(0);
            if let Some(g) = name.get(..end).filter(|g| !g.is_empty()) {
                groups.insert(g.to_string());
            }
        }
        let mut out = BTreeSet::new();
        for p in &policies.mesh.purposes {
            out.insert(Consumer {
                sub: format!("meshgov-conformance-{}", self.nonce),
                groups: vec![],
                purpose: p.id.clone(),
            });
            for g in &groups {
                out.insert(Consumer {
                    sub: format!("meshgov-conformance-{}", self.nonce),
                    groups: vec![g.clone()],
                    purpose: p.id.clone(),
                });
            }
        }
        for c in self.a.consumers {
            out.insert(Consumer::parse(c)?);
        }
        Ok(out.into_iter().collect())
    }

    fn token(&self, who: &Consumer, spoil: Spoil) -> Result<String, Failure> {
        let (now, ttl) = match spoil {
            Spoil::Expired => (self.now - 7200, 3600),
            _ => (self.now, 600),
        };
        let mut issuer = self.a.issuer.clone();
        match spoil {
            Spoil::Issuer => issuer.issuer = "https://issuer.invalid".into(),
            Spoil::Audience => issuer.audience = "not-this-sidecar".into(),
            _ => {}
        }
        let args = TokenArgs {
            key: self.a.issuer_key,
            sub: &who.sub,
            groups: &who.groups,
            purpose: &who.purpose,
            issuer: &issuer,
            ttl,
            now_unix: now,
        };
        token::mint_pem(&self.idp_pem, &args).map(|m| m.token)
    }

    /// A token for `who` signed by a key generated for the run, which no
    /// sidecar trusts.
    fn stranger_token(&self, who: &Consumer) -> Result<String, Failure> {
        let pem = SigningKey::generate_pkcs8_pem(&ring::rand::SystemRandom::new())
            .map_err(|e| Failure::usage(e.to_string()))?;
        let args = TokenArgs {
            key: Path::new("(a key generated for this run)"),
            sub: &who.sub,
            groups: &who.groups,
            purpose: &who.purpose,
            // The key generated here is Ed25519.
            issuer: &Issuer {
                alg: "EdDSA".into(),
                ..self.a.issuer.clone()
            },
            ttl: 600,
            now_unix: self.now,
        };
        Ok(token::mint_pem(&pem, &args)?.token)
    }

    fn plan(
        &self,
        policies: &Policies,
        view: &ProductView,
        port: &str,
        who: &Consumer,
    ) -> Result<ReadDecision, Failure> {
        policies
            .decide_read(
                view,
                port,
                Asker {
                    principal: &who.principal(),
                    purpose: &who.purpose,
                    now_unix: self.now,
                },
            )
            .map_err(|e| Failure::usage(format!("the bundle in force cannot plan a read: {e}")))
    }

    fn records_url(&self, port: &str) -> String {
        format!(
            "{}/v1/ports/{port}/records?limit={}",
            self.data, self.a.limit
        )
    }

    /// LIVE-001: every kind of bad token gets 401.
    async fn check_authentication(
        &mut self,
        policies: &Policies,
        view: &ProductView,
        candidates: &[Consumer],
    ) -> Result<(), Failure> {
        let Some(port) = view.info.ports.first().map(|p| p.name.clone()) else {
            self.skipped
                .insert("LIVE-001", "the descriptor declares no ports".into());
            return Ok(());
        };
        // A consumer the bundle allows, so that only the token is wrong.
        let mut who = candidates.first().cloned();
        for c in candidates {
            if self.plan(policies, view, &port, c)?.decision.allowed {
                who = Some(c.clone());
                break;
            }
        }
        let Some(who) = who else {
            self.skipped
                .insert("LIVE-001", "the mesh declares no purposes".into());
            return Ok(());
        };
        let stranger = self.stranger_token(&who)?;
        let cases = [
            ("no token", None),
            ("a malformed token", Some("not-a-jwt".to_string())),
            ("a token signed by an unknown key", Some(stranger)),
            ("an expired token", Some(self.token(&who, Spoil::Expired)?)),
            (
                "a token for another audience",
                Some(self.token(&who, Spoil::Audience)?),
            ),
            (
                "a token from another issuer",
                Some(self.token(&who, Spoil::Issuer)?),
            ),
        ];
        let pos = self.port_pos(&port);
        for (what, token) in cases {
            let headers = token
                .map(|t| (header::AUTHORIZATION, format!("Bearer {t}")))
                .into_iter()
                .collect();
            let (rid, ans) = self
                .send(
                    Method::GET,
                    self.records_url(&port),
                    headers,
                    vec![],
                    format!("read of `{port}` with {what}"),
                )
                .await?;
            if ans.status != 401 {
                self.finding(
                    "LIVE-001",
                    pos,
                    format!(
                        "a read of `{port}` with {what} got {}, not 401 (request {rid})",
                        ans.status
                    ),
                    "the sidecar must verify every bearer token (signature, issuer, audience, expiry) before anything else",
                );
            }
        }
        Ok(())
    }

    /// LIVE-002, -003, -004: every candidate reads every port.
    async fn check_reads(
        &mut self,
        policies: &Policies,
        view: &ProductView,
        candidates: &[Consumer],
    ) -> Result<(), Failure> {
        let ports: Vec<String> = view.info.ports.iter().map(|p| p.name.clone()).collect();
        let mut any_allowed = false;
        for port in &ports {
            let mut reads = Vec::new();
            for who in candidates {
                let plan = self.plan(policies, view, port, who)?;
                let token = self.token(who, Spoil::Valid)?;
                let (rid, ans) = self
                    .send(
                        Method::GET,
                        self.records_url(port),
                        vec![(header::AUTHORIZATION, format!("Bearer {token}"))],
                        vec![],
                        format!("read of `{port}` by {who}"),
                    )
                    .await?;
                let read = self.judge_read(view, port, who, plan, &rid, &ans);
                any_allowed |= read.status == 200;
                reads.push(read);
            }
            self.check_treatments(port, &reads);
            self.reads.insert(port.clone(), reads);
        }
        if !any_allowed {
            let why = "the bundle in force allows none of the consumers tried to read; add one with --consumer";
            self.skipped.insert("LIVE-003", why.into());
            self.skipped.insert("LIVE-004", why.into());
        }
        Ok(())
    }

    /// LIVE-002 and LIVE-004 for one answer.
    fn judge_read(
        &mut self,
        view: &ProductView,
        port: &str,
        who: &Consumer,
        plan: ReadDecision,
        rid: &str,
        ans: &Answer,
    ) -> Read {
        let pos = self.port_pos(port);
        let expect = if plan.decision.allowed { 200 } else { 403 };
        let status = ans.status.as_u16();
        if status != expect {
            self.finding(
                "LIVE-002",
                pos,
                format!(
                    "{who} reading `{port}` got {status}; the bundle in force {} it (request {rid})",
                    if plan.decision.allowed { "allows" } else { "denies" }
                ),
                "the sidecar must decide with the bundle in force; check its revision on the control port",
            );
        }
        let body = String::from_utf8_lossy(&ans.body);
        if status == 403 {
            let leaked: Vec<&String> = plan
                .decision
                .policies
                .iter()
                .filter(|id| body.contains(id.as_str()))
                .collect();
            let is_error = serde_json::from_str::<Value>(&body)
                .is_ok_and(|v| v.get("error").is_some() && v.get("records").is_none());
            if !leaked.is_empty() || !is_error {
                self.finding(
                    "LIVE-002",
                    pos,
                    format!(
                        "the 403 for {who} on `{port}` is not a plain error body or names policies {leaked:?} (request {rid})"
                    ),
                    "a refusal carries the request id and a reason, never records or policy ids",
                );
            }
        }
        let mut records = Vec::new();
        if status == 200 {
            let declared: BTreeSet<&str> = view
                .info
                .port(port)
                .map(|p| p.fields.iter().map(|f| f.name.as_str()).collect())
                .unwrap_or_default();
            let mut undeclared = BTreeSet::new();
            for line in body.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<Map<String, Value>>(line) {
                    Ok(r) => {
                        undeclared.extend(
                            r.keys()
                                .filter(|k| !declared.contains(k.as_str()))
                                .cloned(),
                        );
                        records.push(r);
                    }
                    Err(e) => self.finding(
                        "LIVE-004",
                        pos,
                        format!("{who} reading `{port}` got a line that is not a JSON object: {e} (request {rid})"),
                        "records are NDJSON objects holding only the declared fields",
                    ),
                }
            }
            if !undeclared.is_empty() {
                self.finding(
                    "LIVE-004",
                    pos,
                    format!(
                        "{who} reading `{port}` got fields the descriptor does not declare: {} (request {rid})",
                        undeclared.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                    "the sidecar must drop every field the descriptor does not declare",
                );
            }
        }
        Read {
            who: who.clone(),
            plan,
            status,
            records,
        }
    }

    /// LIVE-003: each anonymized or withheld field, against the same
    /// records read by a consumer who sees the field in the clear (when the
    /// bundle allows one with the same row filters), else by its shape.
    fn check_treatments(&mut self, port: &str, reads: &[Read]) {
        for r in reads.iter().filter(|r| r.status == 200) {
            for f in &r.plan.fields {
                let clear =
                    |t: &Treatment| matches!(t, Treatment::Clear | Treatment::Revealed { .. });
                if clear(&f.treatment) {
                    continue;
                }
                let reference = reads.iter().find(|o| {
                    o.status == 200
                        && o.plan.row_filters == r.plan.row_filters
                        && o.records.len() == r.records.len()
                        && o.plan
                            .fields
                            .iter()
                            .any(|x| x.name == f.name && clear(&x.treatment))
                });
                for (i, rec) in r.records.iter().enumerate() {
                    let raw = reference
                        .and_then(|o| o.records.get(i))
                        .and_then(|o| o.get(&f.name));
                    if let Some(why) = leaks(&f.treatment, rec.get(&f.name), raw) {
                        let pos = self.field_pos(port, &f.name);
                        self.finding(
                            "LIVE-003",
                            pos,
                            format!(
                                "`{}` on `{port}` for {}: record {} {why}; the bundle says `{}`",
                                f.name,
                                r.who,
                                i + 1,
                                f.treatment.label()
                            ),
                            "the sidecar must apply the bundle's anonymization to every record",
                        );
                        break;
                    }
                }
            }
        }
    }

    /// LIVE-005: spends a throwaway consumer's budget on the first port
    /// with a privacy rule that allows `count`.
    async fn check_budget(
        &mut self,
        policies: &Policies,
        view: &ProductView,
        candidates: &[Consumer],
    ) -> Result<(), Failure> {
        let (domain, product) = (view.info.domain.clone(), view.info.id.clone());
        let mut target = None;
        'ports: for p in &view.info.ports {
            let Some(rule) =
                meshgov_core::privacy::rule_for(&policies.privacy, &domain, &product, &p.name)
            else {
                continue;
            };
            if !rule.allows(Aggregation::Count) {
                continue;
            }
            for who in candidates.iter().filter(|c| c.groups.len() <= 1) {
                let d = policies
                    .decide(
                        view,
                        "aggregate",
                        &p.name,
                        None,
                        Asker {
                            principal: &who.principal(),
                            purpose: &who.purpose,
                            now_unix: self.now,
                        },
                    )
                    .map_err(|e| Failure::usage(e.to_string()))?;
                if d.allowed {
                    target = Some((p.name.clone(), rule.clone(), who.clone()));
                    break 'ports;
                }
            }
        }
        let Some((port, rule, mut who)) = target else {
            self.skipped.insert(
                "LIVE-005",
                "no port has a privacy rule with `count` that a tried consumer may aggregate"
                    .into(),
            );
            return Ok(());
        };
        // A fresh subject: a budget of its own.
        who.sub = format!("meshgov-conformance-budget-{}", self.nonce);
        let token = self.token(&who, Spoil::Valid)?;
        let pos = self.port_pos(&port);
        let epsilon = rule
            .max_epsilon_per_query
            .min(policies.mesh.privacy.max_epsilon_per_query);
        let span = rule.max_window_seconds.unwrap_or(86_400).clamp(60, 86_400);
        let to = self.now;
        // Distinct windows (a repeat would be answered from the ledger).
        let body = |i: u64| {
            let from = to - i64::try_from(span - 1 - i % (span - 1)).unwrap_or(0);
            serde_json::json!({"aggregations": [{"count": {}}], "epsilon": epsilon,
                "from": rfc3339(from), "to": rfc3339(to)})
        };
        let url = format!("{}/v1/ports/{port}/aggregate", self.data);
        let headers = vec![
            (header::AUTHORIZATION, format!("Bearer {token}")),
            (header::CONTENT_TYPE, "application/json".to_string()),
        ];
        let remaining = |v: &Value| at(v, "/budget/consumer/epsilon_remaining").as_f64();
        let product_left = |v: &Value| at(v, "/budget/product/epsilon_remaining").as_f64();
        let fail = |s: &mut Self, msg: String| {
            s.finding(
                "LIVE-005",
                pos,
                msg,
                "reserve each query's cost in the ledger before reading data or drawing noise, and refuse what does not fit",
            );
        };

        // Over the per-query cap: a 400, and nothing spent.
        let mut over = body(0);
        if let Some(e) = over.pointer_mut("/epsilon") {
            *e = serde_json::json!(epsilon * 2.0);
        }
        let (rid, ans) = self
            .send(
                Method::POST,
                url.clone(),
                headers.clone(),
                over.to_string().into_bytes(),
                format!("aggregate on `{port}` over the per-query cap"),
            )
            .await?;
        if ans.status != 400 {
            fail(
                self,
                format!(
                    "an aggregate with epsilon {} (over the cap {epsilon}) got {}, not 400 (request {rid})",
                    epsilon * 2.0,
                    ans.status
                ),
            );
        }

        let mut last: Option<f64> = None;
        let mut grants = 0;
        let mut refused = None;
        for i in 0..MAX_BUDGET_QUERIES {
            let (rid, ans) = self
                .send(
                    Method::POST,
                    url.clone(),
                    headers.clone(),
                    body(i as u64).to_string().into_bytes(),
                    format!("aggregate {} on `{port}`", i + 1),
                )
                .await?;
            let v: Value = serde_json::from_slice(&ans.body).unwrap_or(Value::Null);
            match ans.status.as_u16() {
                200 => {
                    grants += 1;
                    let cost = at(&v, "/cost/epsilon").as_f64().unwrap_or(f64::NAN);
                    let (Some(now_left), true) = (remaining(&v), at(&v, "/statistics").is_array())
                    else {
                        fail(
                            self,
                            format!(
                                "a granted aggregate carries no statistics or no remaining budget (request {rid})"
                            ),
                        );
                        return Ok(());
                    };
                    if let Some(before) = last
                        && (before - cost - now_left).abs() > 1e-6
                    {
                        fail(
                            self,
                            format!(
                                "a grant costing {cost} took the budget from {before} to {now_left} (request {rid})"
                            ),
                        );
                    }
                    last = Some(now_left);
                }
                429 => {
                    refused = Some((rid, v));
                    break;
                }
                other => {
                    fail(
                        self,
                        format!(
                            "aggregate {} on `{port}` got {other}: {} (request {rid})",
                            i + 1,
                            String::from_utf8_lossy(&ans.body)
                        ),
                    );
                    return Ok(());
                }
            }
        }
        let Some((rid, v)) = refused else {
            fail(
                self,
                format!(
                    "{MAX_BUDGET_QUERIES} aggregates of epsilon {epsilon} were all granted; the budget is not enforced"
                ),
            );
            return Ok(());
        };
        let left = remaining(&v).unwrap_or(f64::NAN);
        let fits_consumer = left >= epsilon - 1e-9;
        let fits_product = product_left(&v).is_none_or(|p| p >= epsilon - 1e-9);
        if fits_consumer && fits_product {
            fail(
                self,
                format!(
                    "an aggregate costing {epsilon} was refused with 429 although {left} was left (request {rid})"
                ),
            );
        }
        if ["statistics", "groups", "values"]
            .iter()
            .any(|k| v.get(*k).is_some())
        {
            fail(
                self,
                format!(
                    "the 429 carries statistics: a refusal must come before any noise (request {rid})"
                ),
            );
        }
        if let Some(l) = last
            && (l - left).abs() > 1e-6
        {
            fail(
                self,
                format!(
                    "the refusal reports {left} left, but the last grant left {l}: the refused query spent budget (request {rid})"
                ),
            );
        }
        // Still refused, and the budget still has not moved.
        let (rid, ans) = self
            .send(
                Method::POST,
                url.clone(),
                headers.clone(),
                body(MAX_BUDGET_QUERIES as u64).to_string().into_bytes(),
                format!("aggregate on `{port}` after the budget is spent"),
            )
            .await?;
        let again: Value = serde_json::from_slice(&ans.body).unwrap_or(Value::Null);
        if ans.status != 429 || remaining(&again).is_none_or(|x| (x - left).abs() > 1e-6) {
            fail(
                self,
                format!(
                    "a new aggregate after the budget was spent got {} with {:?} left, not 429 with {left} (request {rid})",
                    ans.status,
                    remaining(&again)
                ),
            );
        }
        // A repeat of a granted query is the stored answer, free.
        if grants > 0 {
            let (rid, ans) = self
                .send(
                    Method::POST,
                    url,
                    headers,
                    body(0).to_string().into_bytes(),
                    format!("repeat of aggregate 1 on `{port}`"),
                )
                .await?;
            let rep: Value = serde_json::from_slice(&ans.body).unwrap_or(Value::Null);
            if ans.status != 200 || at(&rep, "/cached") != true {
                fail(
                    self,
                    format!(
                        "repeating a granted aggregate got {} (cached: {}), not the stored answer (request {rid})",
                        ans.status,
                        at(&rep, "/cached")
                    ),
                );
            }
        }
        Ok(())
    }

    /// LIVE-006 to LIVE-009: bad bundles are refused, the one in force stays.
    async fn check_bundles(
        &mut self,
        envelope: &[u8],
        manifest: &meshgov_bundle::Manifest,
        components: &BTreeMap<String, String>,
    ) -> Result<(), Failure> {
        let before = self.in_force().await?;
        let meta = |revision: u64, created: i64, expires: i64| BundleMeta {
            mesh: manifest.mesh.clone(),
            revision,
            created_at_unix: created,
            expires_at_unix: expires,
            source_commit: manifest.source_commit.clone(),
            product: manifest.product.clone(),
        };
        let sign = |m: BundleMeta, key: &SigningKey| -> Result<Vec<u8>, Failure> {
            let payload = BundlePayload::new(m, components.clone())
                .map_err(|e| Failure::usage(e.to_string()))?;
            meshgov_bundle::sign(&payload.to_canonical_bytes(), &[key])
                .map(|e| e.to_json_bytes())
                .map_err(|e| Failure::usage(e.to_string()))
        };
        let (now, rev) = (self.now, manifest.revision);
        let mut cases: Vec<(&'static str, &'static str, &'static str, Option<Vec<u8>>)> = vec![(
            "LIVE-006",
            "a tampered bundle (revision raised, signature kept)",
            "bad_signature",
            Some(tamper(envelope)?),
        )];
        let stranger = SigningKey::from_pkcs8_pem(
            &SigningKey::generate_pkcs8_pem(&ring::rand::SystemRandom::new())
                .map_err(|e| Failure::usage(e.to_string()))?,
        )
        .map_err(|e| Failure::usage(e.to_string()))?;
        cases.push((
            "LIVE-007",
            "a bundle signed by an untrusted key",
            "untrusted_key",
            Some(sign(meta(rev + 1, now, now + 3600), &stranger)?),
        ));
        let guild = self.a.governance_key.map(read_key).transpose()?;
        match &guild {
            Some(k) => {
                cases.push((
                    "LIVE-008",
                    "a rolled-back bundle (revision below the one in force)",
                    "rollback",
                    (rev > 0)
                        .then(|| sign(meta(rev - 1, now, now + 3600), k))
                        .transpose()?,
                ));
                cases.push((
                    "LIVE-009",
                    "an expired bundle",
                    "expired",
                    Some(sign(meta(rev + 1, now - 7200, now - 3600), k)?),
                ));
            }
            None => {
                let why =
                    "signing it needs the governance key (--governance-key), for a staging sidecar";
                self.skipped.insert("LIVE-008", why.into());
                self.skipped.insert("LIVE-009", why.into());
            }
        }
        let pos = Position { line: 1, col: 1 };
        for (rule, what, code, bytes) in cases {
            let Some(bytes) = bytes else {
                self.skipped
                    .insert(rule, "the bundle in force has revision 0".into());
                continue;
            };
            let (rid, ans) = self
                .send(
                    Method::PUT,
                    format!("{}{}", self.control, path::CONTROL_BUNDLE),
                    vec![(header::CONTENT_TYPE, "application/json".into())],
                    bytes,
                    format!("push of {what}"),
                )
                .await?;
            let nacked = matches!(
                serde_json::from_slice::<PushOutcome>(&ans.body),
                Ok(PushOutcome::Nack(Nack { code: c, .. })) if c.as_str() == code
            );
            if !nacked {
                self.finding(
                    rule,
                    pos,
                    format!(
                        "pushing {what} got {} {}, not a NACK with code `{code}` (request {rid})",
                        ans.status,
                        String::from_utf8_lossy(&ans.body)
                    ),
                    "the control port must verify signature, trusted key, revision and expiry before swapping",
                );
            }
            let after = self.in_force().await?;
            if after != before {
                self.finding(
                    rule,
                    pos,
                    format!(
                        "after pushing {what}, the bundle in force changed from {before:?} to {after:?} (request {rid})"
                    ),
                    "a refused bundle must leave the one in force in place",
                );
            }
        }
        Ok(())
    }

    /// The revision and digest in force, from the control status.
    async fn in_force(&self) -> Result<Option<(u64, String)>, Failure> {
        let s = self.control_status().await?;
        Ok(s.bundle.map(|b| (b.revision, b.digest)))
    }

    /// LIVE-010 and LIVE-011: pulls the whole audit stream into a scratch
    /// store (verifying every link as it arrives), verifies the store with
    /// its checkpoints, and looks for every request of the run.
    async fn check_audit(&mut self, status: &ControlStatus) -> Result<(), Failure> {
        let key: meshgov_bundle::PublicKey = status.audit.public_key.parse().map_err(|e| {
            Failure::usage(format!(
                "the sidecar's status gives no usable audit checkpoint key: {e}"
            ))
        })?;
        let store =
            tempfile::tempdir().map_err(|e| io_failure("cannot make a scratch directory", e))?;
        let pos = Position { line: 1, col: 1 };
        let hint = "the audit log must be one unbroken hash chain with signed checkpoints";
        let mut collector = meshgov_audit::collect::Collector::open(store.path(), key)
            .map_err(|e| io_failure("cannot open the scratch audit store", e))?
            .with_bearer(self.control_token.clone());
        match collector.pull(&self.control).await {
            Ok(_) => {}
            Err(e @ meshgov_audit::collect::CollectError::Chain { .. }) => {
                self.finding("LIVE-011", pos, e.to_string(), hint);
            }
            Err(e) => return Err(io_failure("cannot read the audit stream", e)),
        }
        let verified = match meshgov_audit::verify_path(store.path(), &key) {
            Ok(summary) => summary.events,
            Err(e) => {
                self.finding(
                    "LIVE-011",
                    pos,
                    format!("the audit log does not verify: {e}"),
                    hint,
                );
                0
            }
        };
        let events: Vec<_> = meshgov_audit::show::read_filtered(store.path(), &Default::default())
            .map_err(|e| io_failure("cannot read the scratch audit store", e))?
            .into_iter()
            .map(|(e, _)| e)
            .filter(|e| e.kind == meshgov_audit::Kind::Decision)
            .collect();
        let decided: BTreeMap<String, Option<u16>> = events
            .iter()
            .filter_map(|e| e.client_request_id.clone().map(|r| (r, e.status)))
            .collect();
        self.check_sql_audit(&events);
        let sent = std::mem::take(&mut self.sent);
        for s in &sent {
            match decided.get(&s.rid) {
                Some(Some(st)) if *st == s.status => {}
                Some(st) => self.finding(
                    "LIVE-010",
                    pos,
                    format!("the {} (request {}) answered {} but is audited with status {st:?}", s.what, s.rid, s.status),
                    "audit the status actually answered",
                ),
                None => self.finding(
                    "LIVE-010",
                    pos,
                    format!("the {} (request {}, answered {}) is not in the audit stream", s.what, s.rid, s.status),
                    "every decision, refusals included, must be a durable audit event before the answer goes out",
                ),
            }
        }
        let found = sent.iter().filter(|s| decided.contains_key(&s.rid)).count();
        self.summary.push_str(&format!(
            "; {} requests sent, {found} found in the audit stream ({verified} events verified)",
            sent.len()
        ));
        Ok(())
    }
}

/// The value at a JSON pointer, or `null`.
pub fn at<'v>(v: &'v Value, pointer: &str) -> &'v Value {
    v.pointer(pointer).unwrap_or(&Value::Null)
}

/// RFC 3339 UTC to the second, as bundle manifests write times.
fn rfc3339(unix: i64) -> String {
    meshgov_bundle::format_timestamp(unix).unwrap_or_default()
}

fn read_key(path: &Path) -> Result<SigningKey, Failure> {
    meshgov_bundle::read_signing_key_file(path).map_err(Failure::key)
}

/// The envelope with its payload's revision raised by one and the
/// signatures left as they were.
fn tamper(envelope: &[u8]) -> Result<Vec<u8>, Failure> {
    use base64::Engine as _;
    let bad = |why: &str| {
        Failure::usage(format!(
            "the bundle in force cannot be tampered with: {why}"
        ))
    };
    let mut env: Value = serde_json::from_slice(envelope).map_err(|_| bad("not JSON"))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = at(&env, "/payload")
        .as_str()
        .and_then(|p| b64.decode(p).ok())
        .ok_or_else(|| bad("no base64 payload"))?;
    let mut doc: Value =
        serde_json::from_slice(&payload).map_err(|_| bad("the payload is not JSON"))?;
    let rev = doc
        .pointer_mut("/manifest/revision")
        .ok_or_else(|| bad("no revision in the payload"))?;
    *rev = (rev
        .as_u64()
        .ok_or_else(|| bad("the revision is not a number"))?
        + 1)
    .into();
    let encoded = b64.encode(serde_json::to_vec(&doc).map_err(|_| bad("cannot encode"))?);
    *env.pointer_mut("/payload")
        .ok_or_else(|| bad("no payload"))? = encoded.into();
    serde_json::to_vec(&env).map_err(|_| bad("cannot encode"))
}

/// Why a served value breaks its treatment, or `None` when it does not.
/// `raw` is the same record's value as a consumer who may see it read it.
fn leaks(t: &Treatment, got: Option<&Value>, raw: Option<&Value>) -> Option<String> {
    let got_null = got.is_none_or(Value::is_null);
    let same_as_raw = raw.is_some_and(|r| !r.is_null() && Some(r) == got);
    match t {
        Treatment::Clear | Treatment::Revealed { .. } => None,
        Treatment::Withheld { .. } => (!got_null).then(|| "is not withheld (null)".to_string()),
        Treatment::Anonymized(rule) => match &rule.method {
            Anon::Redact { .. } => (!got_null).then(|| "is not redacted".to_string()),
            _ if same_as_raw => Some("arrives in the clear".to_string()),
            Anon::Hmac { prefix, .. } => match got {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => {
                    let tail = s.strip_prefix(prefix.as_str());
                    (!tail
                        .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit())))
                    .then(|| format!("is not a pseudonym (`{prefix}` and hex)"))
                }
                Some(_) => Some("is not a pseudonym string".to_string()),
            },
            Anon::Mask { mask_char, .. } => match got {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => {
                    (!s.contains(*mask_char)).then(|| format!("is not masked with `{mask_char}`"))
                }
                Some(_) => Some("is not a masked string".to_string()),
            },
            Anon::Generalize(_) | Anon::Plugin { .. } => None,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meshgov_core::anonymization::AnonRule;

    fn anon(transform: &str) -> Treatment {
        let r: AnonRule = serde_json::from_value(serde_json::json!({
            "id": "r", "classification": "c", "transform": transform,
            "keep_last": 4, "key_scope": "s", "prefix": "u_", "to": "year"
        }))
        .unwrap();
        Treatment::Anonymized(Box::new(r))
    }

    #[test]
    fn leaks_by_treatment() {
        let s = |v: &str| Value::String(v.into());
        let raw = s("ada@example.com");
        assert!(leaks(&anon("mask"), Some(&s("a**@example.com")), Some(&raw)).is_none());
        assert!(leaks(&anon("mask"), Some(&raw), Some(&raw)).is_some());
        assert!(leaks(&anon("mask"), Some(&s("plain")), None).is_some());
        assert!(leaks(&anon("hmac"), Some(&s("u_0a1b")), Some(&raw)).is_none());
        assert!(leaks(&anon("hmac"), Some(&s("ada")), None).is_some());
        assert!(leaks(&anon("redact"), None, Some(&raw)).is_none());
        assert!(leaks(&anon("redact"), Some(&s("x")), None).is_some());
        assert!(
            leaks(
                &anon("generalize"),
                Some(&s("1990")),
                Some(&s("1990-05-01"))
            )
            .is_none()
        );
        assert!(
            leaks(
                &anon("generalize"),
                Some(&s("1990-05-01")),
                Some(&s("1990-05-01"))
            )
            .is_some()
        );
        let withheld = Treatment::Withheld { reason: "r" };
        assert!(leaks(&withheld, Some(&Value::Null), None).is_none());
        assert!(leaks(&withheld, Some(&s("x")), None).is_some());
    }

    #[test]
    fn consumer_specs() {
        let c = Consumer::parse("mia:marketing,analysts:campaign-analytics").unwrap();
        assert_eq!(c.groups, ["marketing", "analysts"]);
        assert_eq!(
            Consumer::parse("mia::campaign-analytics")
                .unwrap()
                .groups
                .len(),
            0
        );
        assert!(Consumer::parse("mia:marketing").is_err());
        assert!(Consumer::parse(":g:p").is_err());
    }

    #[test]
    fn tamper_keeps_the_signature_and_changes_the_payload() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let payload = serde_json::json!({"manifest": {"revision": 7}});
        let env = serde_json::json!({"payload": b64.encode(payload.to_string()), "signatures": [{"keyid": "k", "sig": "s"}]});
        let out: Value =
            serde_json::from_slice(&tamper(env.to_string().as_bytes()).unwrap()).unwrap();
        assert_eq!(at(&out, "/signatures"), at(&env, "/signatures"));
        let p: Value =
            serde_json::from_slice(&b64.decode(at(&out, "/payload").as_str().unwrap()).unwrap())
                .unwrap();
        assert_eq!(at(&p, "/manifest/revision"), 8);
    }
}
