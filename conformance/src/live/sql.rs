//! The SQL checks of `conformance run`, LIVE-012 to LIVE-015, against the
//! PostgreSQL port the sidecar's discovery document (`GET /`) names.
//!
//! The suite connects as each consumer it reads as over HTTP, with the
//! consumer's JWT as the password and the token's subject as the user
//! name, and sends simple-protocol queries: every value arrives as text,
//! and is compared with the same consumer's HTTP read (JSON). Every
//! statement is remembered for the audit check (LIVE-010): each must be a
//! decision event with `protocol: "postgres"`, the consumer, its groups
//! and purpose, and, when answered, `action` `query` (rows) or
//! `aggregate` (through the privacy engine).

use super::{Consumer, MAX_BUDGET_QUERIES, Spoil, Suite, TIMEOUT, at, leaks, rfc3339};
use crate::Failure;
use futures::StreamExt as _;
use http::{Method, header};
use meshgov_audit::event::{Decision, StoredEvent};
use meshgov_core::anonymization::Method as Anon;
use meshgov_core::diag::Position;
use meshgov_core::privacy::{Aggregation, PrivacyRule};
use meshgov_core::{Asker, Policies, ProductView, ReadDecision, Treatment};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, NoTls, SimpleQueryMessage};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The rules this module checks.
const SQL_RULES: [&str; 4] = ["LIVE-012", "LIVE-013", "LIVE-014", "LIVE-015"];

/// The PostgreSQL port, as discovery names it (or `--sql-address`).
pub(super) struct PgPort {
    host: String,
    port: u16,
    database: String,
    /// The client's TLS set-up, when the port speaks TLS.
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Display for PgPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(
            f,
            "{host}:{}/{} ({})",
            self.port,
            self.database,
            if self.tls.is_some() {
                "TLS"
            } else {
                "plaintext"
            }
        )
    }
}

/// A SQL statement of the run that the sidecar answered or refused: the
/// audit stream must hold its decision.
pub(super) struct SqlSent {
    consumer: String,
    /// Sorted, as they are compared.
    groups: Vec<String>,
    purpose: String,
    /// Whether it was answered.
    allowed: bool,
    /// The action an answer is audited with: `query` or `aggregate`.
    action: &'static str,
    what: String,
}

/// A refused connect or statement, as the client saw it.
#[derive(Debug)]
struct Refusal {
    /// The SQLSTATE, when the server answered with an error.
    code: Option<String>,
    message: String,
}

impl Refusal {
    fn code(&self) -> &str {
        self.code.as_deref().unwrap_or("")
    }

    fn timed_out() -> Refusal {
        Refusal {
            code: None,
            message: format!("no answer within {} s", TIMEOUT.as_secs()),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(c) => write!(f, "SQLSTATE {c} ({})", self.message),
            None => write!(f, "no SQLSTATE ({})", self.message),
        }
    }
}

fn refusal(e: &tokio_postgres::Error) -> Refusal {
    match e.as_db_error() {
        Some(db) => Refusal {
            code: Some(db.code().code().to_string()),
            message: db.message().to_string(),
        },
        None => {
            let mut message = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                message.push_str(&format!(": {c}"));
                cause = c.source();
            }
            Refusal {
                code: None,
                message,
            }
        }
    }
}

/// A query's answer: its columns, its rows as text, and the notices the
/// server sent with it.
struct Rows {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
    notices: Vec<String>,
}

/// An open connection, and the notices it has received.
struct Conn {
    client: tokio_postgres::Client,
    notices: Arc<Mutex<Vec<String>>>,
}

impl Conn {
    fn take_notices(&self) -> Vec<String> {
        std::mem::take(&mut *self.notices.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Drives a connection until it closes, keeping its notices.
fn drive<S, T>(mut conn: tokio_postgres::Connection<S, T>, notices: Arc<Mutex<Vec<String>>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notice(n) = m {
                notices
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(n.message().to_string());
            }
        }
    });
}

/// A table's name as a query names it: bare when it is a plain lower-case
/// identifier (the differentially private shape is recognized by that
/// name), else quoted.
fn ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        quoted(name)
    }
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A JSON value as a SQL literal, for the values that can be one.
fn literal(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(format!("'{}'", s.replace('\'', "''"))),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Whether a field is a column of the consumer's table: withheld and
/// redacted fields are not.
fn is_column(t: &Treatment) -> bool {
    match t {
        Treatment::Withheld { .. } => false,
        Treatment::Anonymized(r) => !matches!(r.method, Anon::Redact { .. }),
        Treatment::Clear | Treatment::Revealed { .. } => true,
    }
}

fn is_clear(t: &Treatment) -> bool {
    matches!(t, Treatment::Clear | Treatment::Revealed { .. })
}

/// Whether a value read as text over SQL is the JSON value HTTP served.
fn same(json: Option<&Value>, text: Option<&str>) -> bool {
    match (json.unwrap_or(&Value::Null), text) {
        (Value::Null, None) => true,
        (_, None) | (Value::Null, Some(_)) => false,
        (Value::String(s), Some(t)) => s == t,
        (Value::Bool(b), Some(t)) => {
            matches!((b, t), (true, "t" | "true") | (false, "f" | "false"))
        }
        (Value::Number(n), Some(t)) => match (n.as_f64(), t.parse::<f64>()) {
            (Some(a), Ok(b)) => a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()),
            _ => false,
        },
        (v, Some(t)) => serde_json::from_str::<Value>(t).is_ok_and(|p| &p == v),
    }
}

fn show_text(t: Option<&str>) -> String {
    t.map_or_else(|| "null".to_string(), |t| format!("`{t}`"))
}

fn show_json(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "null".to_string(),
        Some(Value::String(s)) => format!("`{s}`"),
        Some(v) => format!("`{v}`"),
    }
}

/// A JSON value as the text a clear-value comparison uses.
fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        v => Some(v.to_string()),
    }
}

/// The number before `word` in a differentially private answer's notice
/// (`… epsilon 1.0 spent; epsilon 2.0 left for you …`).
fn notice_number(notice: &str, word: &str) -> Option<f64> {
    notice.split(';').find_map(|part| {
        let rest = part.split("epsilon ").nth(1)?;
        let (num, tail) = rest.split_once(' ')?;
        if tail.starts_with(word) {
            num.parse().ok()
        } else {
            None
        }
    })
}

/// Who an audit event or a statement is about, and how it ended.
type AuditKey = (String, Vec<String>, String, bool, Option<String>);

impl Suite<'_> {
    fn skip_sql(&mut self, why: &str) {
        for r in SQL_RULES {
            self.skipped.insert(r, why.to_string());
        }
    }

    /// The PostgreSQL port from the discovery document, or `None` (the
    /// SQL checks then say why they did not run).
    pub(super) async fn sql_port(&mut self) -> Result<Option<PgPort>, Failure> {
        if self.a.skip_sql {
            self.skip_sql("--skip-sql was given");
            return Ok(None);
        }
        let url = format!("{}/", self.data);
        let ans = self
            .client
            .send(Method::GET, &url, &[], Default::default(), TIMEOUT)
            .await
            .map_err(|e| super::io_failure(&format!("cannot reach {url}"), e))?;
        let doc: Value = if ans.status.is_success() {
            serde_json::from_slice(&ans.body).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        let pg = at(&doc, "/sql/postgres");
        let advertised = pg.get("address").and_then(Value::as_str);
        let Some(address) = self.a.sql_address.or(advertised) else {
            self.skip_sql(
                "skipped: no SQL port (the discovery document, `GET /`, names no PostgreSQL port)",
            );
            return Ok(None);
        };
        let bad = || {
            Failure::usage(format!(
                "the PostgreSQL port's address `{address}` is not HOST:PORT"
            ))
        };
        let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let mut host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        // A wildcard bind address: the sidecar's own host.
        if matches!(host.as_str(), "" | "0.0.0.0" | "::") {
            host = self
                .data
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_string()))
                .unwrap_or_else(|| "127.0.0.1".into());
        }
        let product = self.desc.product_id();
        let database = pg.get("database").and_then(Value::as_str).map_or_else(
            || product.rsplit('/').next().unwrap_or(&product).to_string(),
            str::to_string,
        );
        let tls = if at(pg, "/tls") == true {
            Some(self.sql_tls()?)
        } else {
            None
        };
        Ok(Some(PgPort {
            host,
            port,
            database,
            tls,
        }))
    }

    /// The TLS client for a TLS SQL port: the platform's roots and
    /// `--sql-ca`, with rustls's ring backend.
    fn sql_tls(&self) -> Result<MakeRustlsConnect, Failure> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(ca) = self.a.sql_ca {
            let pem = std::fs::read(ca).map_err(|e| Failure::io(ca, &e))?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    Failure::usage(format!("{}: not PEM certificates: {e}", ca.display()))
                })?;
            if certs.is_empty() {
                return Err(Failure::usage(format!(
                    "{} holds no certificate",
                    ca.display()
                )));
            }
            for c in certs {
                roots.add(c).map_err(|e| {
                    Failure::usage(format!("{}: unusable certificate: {e}", ca.display()))
                })?;
            }
        }
        if roots.is_empty() {
            return Err(Failure::usage(
                "the SQL port speaks TLS and no CA certificate is trusted: give --sql-ca CA.pem (or --skip-sql)",
            ));
        }
        // The workspace's rustls backend; rustls 0.23.48 deprecates it for
        // lacking post-quantum key exchange (only aws-lc-rs has it).
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| Failure::usage(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }

    /// Connects to the PostgreSQL port as `user` with `password`.
    async fn pg_connect(&self, pg: &PgPort, user: &str, password: &str) -> Result<Conn, Refusal> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&pg.host)
            .port(pg.port)
            .user(user)
            .password(password)
            .dbname(&pg.database)
            .application_name("meshgov-conformance")
            .connect_timeout(TIMEOUT)
            .ssl_mode(if pg.tls.is_some() {
                SslMode::Require
            } else {
                SslMode::Disable
            });
        let notices = Arc::new(Mutex::new(Vec::new()));
        let connect = async {
            match &pg.tls {
                Some(tls) => {
                    let (client, conn) = cfg.connect(tls.clone()).await?;
                    drive(conn, Arc::clone(&notices));
                    Ok::<_, tokio_postgres::Error>(client)
                }
                None => {
                    let (client, conn) = cfg.connect(NoTls).await?;
                    drive(conn, Arc::clone(&notices));
                    Ok(client)
                }
            }
        };
        match tokio::time::timeout(TIMEOUT, connect).await {
            Ok(Ok(client)) => Ok(Conn { client, notices }),
            Ok(Err(e)) => Err(refusal(&e)),
            Err(_) => Err(Refusal::timed_out()),
        }
    }

    /// Sends one statement as `who`; an answer or a refusal from the
    /// server is remembered for the audit check, audited as `action` when
    /// answered.
    async fn sql(
        &mut self,
        conn: &Conn,
        who: &Consumer,
        q: &str,
        action: &'static str,
        what: String,
    ) -> Result<Rows, Refusal> {
        conn.take_notices();
        let answer = match tokio::time::timeout(TIMEOUT, conn.client.simple_query(q)).await {
            Ok(Ok(messages)) => {
                let mut columns = Vec::new();
                let mut rows = Vec::new();
                for m in messages {
                    match m {
                        SimpleQueryMessage::RowDescription(cols) => {
                            columns = cols.iter().map(|c| c.name().to_string()).collect();
                        }
                        SimpleQueryMessage::Row(r) => {
                            if columns.is_empty() {
                                columns =
                                    r.columns().iter().map(|c| c.name().to_string()).collect();
                            }
                            rows.push(
                                (0..r.len())
                                    .map(|i| r.try_get(i).ok().flatten().map(str::to_string))
                                    .collect(),
                            );
                        }
                        _ => {}
                    }
                }
                Ok(Rows {
                    columns,
                    rows,
                    notices: conn.take_notices(),
                })
            }
            Ok(Err(e)) => Err(refusal(&e)),
            Err(_) => Err(Refusal::timed_out()),
        };
        let answered = match &answer {
            Ok(_) => Some(true),
            Err(r) if r.code.is_some() => Some(false),
            Err(_) => None,
        };
        if let Some(allowed) = answered {
            let mut groups = who.groups.clone();
            groups.sort();
            self.sql_sent.push(SqlSent {
                consumer: who.sub.clone(),
                groups,
                purpose: who.purpose.clone(),
                allowed,
                action,
                what,
            });
        }
        answer
    }

    /// `SET dp_epsilon`: not audited (a session setting).
    async fn set_epsilon(&self, conn: &Conn, epsilon: f64) -> Result<(), Refusal> {
        let q = format!("SET dp_epsilon = {epsilon}");
        match tokio::time::timeout(TIMEOUT, conn.client.simple_query(&q)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(refusal(&e)),
            Err(_) => Err(Refusal::timed_out()),
        }
    }

    /// The port's privacy rule when `who` may aggregate the port though
    /// not read it: the SQL port then answers them through the privacy
    /// engine only.
    fn aggregate_only(
        &self,
        policies: &Policies,
        view: &ProductView,
        port: &str,
        who: &Consumer,
    ) -> Result<Option<PrivacyRule>, Failure> {
        let d = policies
            .decide(
                view,
                "aggregate",
                port,
                None,
                Asker {
                    principal: &who.principal(),
                    purpose: &who.purpose,
                    now_unix: self.now,
                },
            )
            .map_err(|e| Failure::usage(e.to_string()))?;
        if !d.allowed {
            return Ok(None);
        }
        Ok(meshgov_core::privacy::rule_for(
            &policies.privacy,
            &view.info.domain,
            &view.info.id,
            port,
        )
        .cloned())
    }

    /// LIVE-012 to LIVE-014; `false` when no valid connect succeeded (the
    /// SQL checks are then reported as not run, after LIVE-012's finding).
    pub(super) async fn check_sql(
        &mut self,
        pg: &PgPort,
        policies: &Policies,
        view: &ProductView,
        candidates: &[super::Consumer],
    ) -> Result<bool, Failure> {
        self.summary
            .push_str(&format!("; the PostgreSQL port at {pg}"));
        if !self.check_sql_connects(pg, candidates).await? {
            for r in ["LIVE-013", "LIVE-014", "LIVE-015"] {
                self.skipped.insert(
                    r,
                    "no connection to the SQL port with a valid token succeeded (see LIVE-012)"
                        .into(),
                );
            }
            return Ok(false);
        }
        self.check_sql_reads(pg, policies, view, candidates).await?;
        Ok(true)
    }

    /// LIVE-012: bad passwords and user names are refused at connect.
    async fn check_sql_connects(
        &mut self,
        pg: &PgPort,
        candidates: &[Consumer],
    ) -> Result<bool, Failure> {
        let Some(who) = candidates.first().cloned() else {
            self.skip_sql("the mesh declares no purposes");
            return Ok(false);
        };
        let pos = Position { line: 1, col: 1 };
        let hint = "the SQL port must check the password as the data port checks a bearer token, and the user name against the token's subject, before anything else";
        let token = self.token(&who, Spoil::Valid)?;
        if let Err(e) = self.pg_connect(pg, &who.sub, &token).await {
            self.finding(
                "LIVE-012",
                pos,
                format!("{who} cannot connect to the SQL port at {pg} with a valid token: {e}"),
                "a consumer connects with the token's subject as the user name, the JWT as the password and the product's name as the database",
            );
            return Ok(false);
        }
        let other = format!("{}-not-the-subject", who.sub);
        let cases = [
            (
                "an empty password",
                who.sub.as_str(),
                String::new(),
                "28P01",
            ),
            (
                "a malformed token",
                who.sub.as_str(),
                "not-a-jwt".to_string(),
                "28P01",
            ),
            (
                "a token signed by an unknown key",
                who.sub.as_str(),
                self.stranger_token(&who)?,
                "28P01",
            ),
            (
                "an expired token",
                who.sub.as_str(),
                self.token(&who, Spoil::Expired)?,
                "28P01",
            ),
            (
                "a token for another audience",
                who.sub.as_str(),
                self.token(&who, Spoil::Audience)?,
                "28P01",
            ),
            (
                "a token from another issuer",
                who.sub.as_str(),
                self.token(&who, Spoil::Issuer)?,
                "28P01",
            ),
            (
                "a valid token and a user name that is not its subject",
                other.as_str(),
                token.clone(),
                "28000",
            ),
        ];
        for (what, user, password, code) in cases {
            match self.pg_connect(pg, user, &password).await {
                Ok(_) => self.finding(
                    "LIVE-012",
                    pos,
                    format!(
                        "connecting to the SQL port at {pg} as `{user}` with {what} succeeded; expected SQLSTATE {code}"
                    ),
                    hint,
                ),
                Err(r) if r.code() == code => {
                    if code == "28P01" {
                        self.sql_refused_connects += 1;
                    }
                }
                Err(r) => self.finding(
                    "LIVE-012",
                    pos,
                    format!(
                        "connecting to the SQL port at {pg} as `{user}` with {what} got {r}, not SQLSTATE {code}"
                    ),
                    hint,
                ),
            }
        }
        Ok(true)
    }

    /// Each field's values as consumers who see it in the clear read it,
    /// over HTTP: what a treated column must never hold.
    fn raw_values(&self) -> BTreeMap<(String, String), BTreeSet<String>> {
        let mut raw: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for (port, reads) in &self.reads {
            for r in reads.iter().filter(|r| r.status == 200) {
                for f in r.plan.fields.iter().filter(|f| is_clear(&f.treatment)) {
                    let set = raw.entry((port.clone(), f.name.clone())).or_default();
                    set.extend(
                        r.records
                            .iter()
                            .filter_map(|rec| rec.get(&f.name).and_then(as_text)),
                    );
                }
            }
        }
        raw
    }

    /// LIVE-013 and LIVE-014: every candidate queries every port.
    async fn check_sql_reads(
        &mut self,
        pg: &PgPort,
        policies: &Policies,
        view: &ProductView,
        candidates: &[Consumer],
    ) -> Result<(), Failure> {
        let ports: Vec<String> = view.info.ports.iter().map(|p| p.name.clone()).collect();
        let raw = self.raw_values();
        let (mut any_read, mut any_dp) = (false, false);
        for who in candidates {
            let token = self.token(who, Spoil::Valid)?;
            let conn = match self.pg_connect(pg, &who.sub, &token).await {
                Ok(c) => c,
                Err(e) => {
                    self.finding(
                        "LIVE-013",
                        Position { line: 1, col: 1 },
                        format!("{who} cannot connect to the SQL port at {pg}: {e}"),
                        "every consumer with a valid token may connect; the bundle decides what they see",
                    );
                    continue;
                }
            };
            for port in &ports {
                let plan = self.plan(policies, view, port, who)?;
                if plan.decision.allowed {
                    any_read = true;
                    self.sql_read(&conn, port, who, &plan, &raw).await;
                } else if let Some(rule) = self.aggregate_only(policies, view, port, who)? {
                    any_dp = true;
                    let time = view.info.port(port).and_then(|p| p.time_field.clone());
                    self.sql_no_rows(&conn, port, who, &rule, time.as_deref())
                        .await;
                } else {
                    let q = format!("SELECT * FROM {} LIMIT {}", quoted(port), self.a.limit);
                    let got = self
                        .sql(
                            &conn,
                            who,
                            &q,
                            "query",
                            format!("SQL read of `{port}` by {who}"),
                        )
                        .await;
                    let why = match got {
                        Err(r) if r.code() == "42P01" => continue,
                        Ok(rows) => format!(
                            "was answered with {} row(s) of columns [{}]",
                            rows.rows.len(),
                            rows.columns.join(", ")
                        ),
                        Err(r) => format!("got {r}"),
                    };
                    let pos = self.port_pos(port);
                    self.finding(
                        "LIVE-013",
                        pos,
                        format!(
                            "the bundle in force does not let {who} read or aggregate `{port}`, yet `{q}` over SQL {why}, not SQLSTATE 42P01"
                        ),
                        "a port the consumer may not read is no table in their catalog",
                    );
                }
            }
        }
        if !any_read {
            self.skipped.insert(
                "LIVE-013",
                "the bundle in force allows none of the consumers tried to read; add one with --consumer"
                    .into(),
            );
        }
        if !any_dp {
            self.skipped.insert(
                "LIVE-014",
                "no consumer tried may aggregate a port without reading it; add one with --consumer"
                    .into(),
            );
        }
        Ok(())
    }

    /// LIVE-013 for one consumer and a port they may read: the columns,
    /// the treated values, and the rows against their HTTP read.
    async fn sql_read(
        &mut self,
        conn: &Conn,
        port: &str,
        who: &Consumer,
        plan: &ReadDecision,
        raw: &BTreeMap<(String, String), BTreeSet<String>>,
    ) {
        let limit = self.a.limit;
        let http: Option<Vec<Map<String, Value>>> = self
            .reads
            .get(port)
            .and_then(|rs| rs.iter().find(|r| r.who == *who && r.status == 200))
            .map(|r| r.records.clone());
        let table = quoted(port);
        // A complete HTTP read is compared row for row; a truncated one
        // through a clear field that tells its records apart.
        let key = http
            .as_ref()
            .filter(|recs| recs.len() >= limit)
            .and_then(|recs| key_field(plan, recs));
        let q = match (&key, &http) {
            (Some(k), Some(recs)) => {
                let values: Vec<String> = recs
                    .iter()
                    .filter_map(|r| r.get(k.as_str()).and_then(literal))
                    .collect();
                format!(
                    "SELECT * FROM {table} WHERE {} IN ({}) LIMIT {}",
                    quoted(k),
                    values.join(", "),
                    limit * 10
                )
            }
            _ => format!("SELECT * FROM {table} LIMIT {limit}"),
        };
        let got = self
            .sql(
                conn,
                who,
                &q,
                "query",
                format!("SQL read of `{port}` by {who}"),
            )
            .await;
        let pos = self.port_pos(port);
        let rows = match got {
            Ok(rows) => rows,
            Err(r) => {
                self.finding(
                    "LIVE-013",
                    pos,
                    format!("{who} querying `{port}` over SQL (`{q}`) got {r}; the bundle in force lets them read it"),
                    "each port the consumer may read is a table of their catalog, in schema `public`",
                );
                return;
            }
        };
        let field = |name: &str| plan.fields.iter().find(|f| f.name == name);
        // The columns: the fields they may see, no more and no less.
        for c in &rows.columns {
            match field(c) {
                Some(f) if is_column(&f.treatment) => {}
                Some(f) => {
                    let fpos = self.field_pos(port, c);
                    self.finding(
                        "LIVE-013",
                        fpos,
                        format!(
                            "`{c}` is a column of `{port}` over SQL for {who}, but the bundle says `{}`",
                            f.treatment.label()
                        ),
                        "a withheld or redacted field is no column of the consumer's table",
                    );
                }
                None => self.finding(
                    "LIVE-013",
                    pos,
                    format!(
                        "`{c}` is a column of `{port}` over SQL for {who}, but the descriptor declares no such field"
                    ),
                    "the SQL port's tables hold only declared fields",
                ),
            }
        }
        for f in plan.fields.iter().filter(|f| is_column(&f.treatment)) {
            if !rows.columns.contains(&f.name) {
                let fpos = self.field_pos(port, &f.name);
                self.finding(
                    "LIVE-013",
                    fpos,
                    format!(
                        "`{}` is missing from `{port}` over SQL for {who}; the bundle lets them see it (`{}`)",
                        f.name,
                        f.treatment.label()
                    ),
                    "the consumer's table has a column for every field they may see",
                );
            }
        }
        // Treated columns: the treatment's shape, and never a raw value.
        for (j, c) in rows.columns.iter().enumerate() {
            let Some(f) = field(c).filter(|f| is_column(&f.treatment) && !is_clear(&f.treatment))
            else {
                continue;
            };
            let exact = matches!(&f.treatment, Treatment::Anonymized(r) if matches!(r.method, Anon::Mask { .. } | Anon::Hmac { .. }));
            let clear = raw.get(&(port.to_string(), c.clone()));
            for (i, row) in rows.rows.iter().enumerate() {
                let text = row.get(j).cloned().flatten();
                let got = text.clone().map(Value::String);
                let why = leaks(&f.treatment, got.as_ref(), None).or_else(|| {
                    (exact
                        && text
                            .as_ref()
                            .is_some_and(|t| clear.is_some_and(|s| s.contains(t))))
                    .then(|| {
                        "holds a raw value (one a consumer who sees the field in the clear reads)"
                            .to_string()
                    })
                });
                if let Some(why) = why {
                    let fpos = self.field_pos(port, c);
                    self.finding(
                        "LIVE-013",
                        fpos,
                        format!(
                            "`{c}` on `{port}` over SQL for {who}: row {} {why}; the bundle says `{}`",
                            i + 1,
                            f.treatment.label()
                        ),
                        "the SQL port's tables are the consumer's view: every value treated as the bundle says",
                    );
                    break;
                }
            }
        }
        // The rows, against the HTTP read.
        let Some(http) = http else {
            return;
        };
        if http.len() >= limit && key.is_none() {
            // A truncated read with no field to tell records apart: the
            // checks above are all that can be made.
            return;
        }
        if key.is_some() && rows.rows.len() >= limit * 10 {
            return;
        }
        let cols: Vec<(usize, &str)> = rows
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| field(c).is_some_and(|f| is_column(&f.treatment)))
            .map(|(j, c)| (j, c.as_str()))
            .collect();
        let complete = key.is_none();
        let key_or_first = key.clone().or_else(|| {
            plan.fields
                .iter()
                .find(|f| is_clear(&f.treatment))
                .map(|f| f.name.clone())
        });
        let problems = differences(&cols, &rows.rows, &http, key_or_first.as_deref(), complete);
        if let Some((first, at_field)) = problems.first().cloned() {
            let fpos = at_field.map_or(pos, |f| self.field_pos(port, &f));
            self.finding(
                "LIVE-013",
                fpos,
                format!(
                    "{who} reads `{port}` differently over SQL and over HTTP ({} difference(s)); first: {first}",
                    problems.len()
                ),
                "the SQL port must serve the consumer's view the records port serves: the same rows, fields and treated values",
            );
        }
    }

    /// LIVE-014: a consumer who may only aggregate `port` gets no rows
    /// from it, whatever the query; nothing sent here spends budget.
    async fn sql_no_rows(
        &mut self,
        conn: &Conn,
        port: &str,
        who: &Consumer,
        rule: &PrivacyRule,
        time: Option<&str>,
    ) {
        let table = ident(port);
        let group = rule.group_by.first().map(|g| g.field.clone());
        let column = group
            .clone()
            .or_else(|| rule.bounds.keys().next().cloned())
            .or_else(|| time.map(str::to_string));
        let mut cases = vec![(
            "`SELECT *`",
            format!("SELECT * FROM {table}"),
            Some("0A000"),
        )];
        if let Some(c) = &column {
            cases.push((
                "a raw column",
                format!("SELECT {} FROM {table} LIMIT 1", quoted(c)),
                None,
            ));
            cases.push((
                "MAX",
                format!("SELECT MAX({}) FROM {table}", quoted(c)),
                None,
            ));
        }
        cases.push((
            "a subquery",
            format!("SELECT COUNT(*) FROM (SELECT * FROM {table}) AS t"),
            None,
        ));
        if let Some(g) = &group {
            cases.push((
                "a filter on a field",
                format!(
                    "SELECT COUNT(*) FROM {table} WHERE {} IS NOT NULL",
                    quoted(g)
                ),
                None,
            ));
        }
        let pos = self.port_pos(port);
        for (what, q, code) in cases {
            let got = self
                .sql(
                    conn,
                    who,
                    &q,
                    "query",
                    format!("SQL {what} on `{port}` by {who}"),
                )
                .await;
            let why = match got {
                Ok(rows) => format!("was answered with {} row(s)", rows.rows.len()),
                Err(r) if r.code.is_some() && code.is_none_or(|c| r.code() == c) => continue,
                Err(r) => format!(
                    "got {r}, not {}",
                    code.map_or("a refusal".to_string(), |c| format!("SQLSTATE {c}"))
                ),
            };
            self.finding(
                "LIVE-014",
                pos,
                format!(
                    "{who} may only aggregate `{port}`, yet {what} over SQL (`{q}`) {why}"
                ),
                "a port the consumer may only aggregate answers only COUNT/SUM/AVG … GROUP BY through the privacy engine; anything else is refused with SQLSTATE 0A000",
            );
        }
    }

    /// LIVE-015: a throwaway aggregate-only consumer spends its budget
    /// with differentially private queries over SQL until refused.
    pub(super) async fn check_sql_budget(
        &mut self,
        pg: &PgPort,
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
                if self.plan(policies, view, &p.name, who)?.decision.allowed {
                    continue;
                }
                if self.aggregate_only(policies, view, &p.name, who)?.is_some() {
                    target = Some((p.clone(), rule.clone(), who.clone()));
                    break 'ports;
                }
            }
        }
        let Some((port, rule, mut who)) = target else {
            self.skipped.insert(
                "LIVE-015",
                "no port has a privacy rule with `count` that a tried consumer may aggregate without reading it; add one with --consumer"
                    .into(),
            );
            return Ok(());
        };
        // A fresh subject: a budget of its own.
        who.sub = format!("meshgov-conformance-sql-budget-{}", self.nonce);
        let token = self.token(&who, Spoil::Valid)?;
        let name = port.name.clone();
        let pos = self.port_pos(&name);
        let fail = |s: &mut Self, msg: String| {
            s.finding(
                "LIVE-015",
                pos,
                msg,
                "answer SQL aggregates through the ledger POST …/aggregate uses: reserve each query's cost before any noise, and refuse what does not fit with SQLSTATE 53400, charging nothing",
            );
        };
        let conn = match self.pg_connect(pg, &who.sub, &token).await {
            Ok(c) => c,
            Err(e) => {
                fail(
                    self,
                    format!("{who} cannot connect to the SQL port at {pg}: {e}"),
                );
                return Ok(());
            }
        };
        let epsilon = rule
            .max_epsilon_per_query
            .min(policies.mesh.privacy.max_epsilon_per_query);
        let span = rule.max_window_seconds.unwrap_or(86_400).clamp(60, 86_400);
        let to = self.now;
        let from = |i: u64| to - i64::try_from(span - 1 - i % (span - 1)).unwrap_or(0);
        let table = ident(&name);
        // Distinct queries (a repeat would be answered from the ledger):
        // distinct windows, or without a time field distinct epsilons.
        let time_field = port.time_field.clone();
        let query = |i: u64| match &time_field {
            Some(t) => format!(
                "SELECT COUNT(*) FROM {table} WHERE {t} >= '{}' AND {t} < '{}'",
                rfc3339(from(i)),
                rfc3339(to)
            ),
            None => format!("SELECT COUNT(*) FROM {table}"),
        };
        let eps = |i: u64| {
            if time_field.is_some() {
                epsilon
            } else {
                epsilon * (1.0 - i as f64 / 4096.0)
            }
        };

        // Over the per-query cap: refused (22023), nothing answered.
        let over = epsilon * 2.0;
        if let Err(e) = self.set_epsilon(&conn, over).await {
            fail(self, format!("`SET dp_epsilon = {over}` got {e}"));
            return Ok(());
        }
        let q = query(0);
        let got = self
            .sql(
                &conn,
                &who,
                &q,
                "aggregate",
                format!("SQL aggregate on `{name}` over the per-query cap"),
            )
            .await;
        let why = match got {
            Err(r) if r.code() == "22023" => None,
            Ok(_) => Some("was answered".to_string()),
            Err(r) => Some(format!("got {r}")),
        };
        if let Some(why) = why {
            fail(
                self,
                format!(
                    "an aggregate with epsilon {over} (over the cap {epsilon}) over SQL (`{q}`) {why}, not SQLSTATE 22023"
                ),
            );
        }

        let mut last: Option<f64> = None;
        let mut refused = None;
        for i in 0..MAX_BUDGET_QUERIES as u64 {
            if (i == 0 || time_field.is_none())
                && let Err(e) = self.set_epsilon(&conn, eps(i)).await
            {
                fail(self, format!("`SET dp_epsilon = {}` got {e}", eps(i)));
                return Ok(());
            }
            let q = query(i);
            let got = self
                .sql(
                    &conn,
                    &who,
                    &q,
                    "aggregate",
                    format!("SQL aggregate {} on `{name}`", i + 1),
                )
                .await;
            match got {
                Ok(rows) => {
                    let notice = rows.notices.iter().find(|n| n.contains(" spent"));
                    let (Some(cost), Some(left)) = (
                        notice.and_then(|n| notice_number(n, "spent")),
                        notice.and_then(|n| notice_number(n, "left")),
                    ) else {
                        fail(
                            self,
                            format!(
                                "a granted aggregate over SQL (`{q}`) came with no NOTICE of the epsilon spent and left (notices: {:?})",
                                rows.notices
                            ),
                        );
                        return Ok(());
                    };
                    if let Some(before) = last
                        && (before - cost - left).abs() > 1e-6
                    {
                        fail(
                            self,
                            format!(
                                "a grant over SQL costing {cost} took the budget from {before} to {left}"
                            ),
                        );
                    }
                    last = Some(left);
                }
                Err(r) if r.code() == "53400" => {
                    refused = Some((i, r));
                    break;
                }
                Err(r) => {
                    fail(
                        self,
                        format!("aggregate {} over SQL (`{q}`) got {r}", i + 1),
                    );
                    return Ok(());
                }
            }
        }
        let Some((n, _)) = refused else {
            fail(
                self,
                format!(
                    "{MAX_BUDGET_QUERIES} aggregates of epsilon {epsilon} over SQL were all granted; the budget is not enforced"
                ),
            );
            return Ok(());
        };
        // The ledger as the HTTP port reports it: the refusal was due and
        // charged nothing.
        let (status, left, product_left) = self
            .budget_probe(&name, &token, eps(n + 1), from(n + 1), to)
            .await?;
        if status != 429 {
            fail(
                self,
                format!(
                    "after SQL refused an aggregate with SQLSTATE 53400, the same consumer's aggregate over HTTP got {status}, not 429: both ports must spend from one ledger"
                ),
            );
            return Ok(());
        }
        let cost = eps(n);
        let fits =
            left.is_some_and(|l| l >= cost - 1e-9) && product_left.is_none_or(|p| p >= cost - 1e-9);
        if fits {
            fail(
                self,
                format!(
                    "an aggregate over SQL costing {cost} was refused with SQLSTATE 53400 although {} was left",
                    left.unwrap_or(f64::NAN)
                ),
            );
        }
        if let (Some(l), Some(h)) = (last, left)
            && (l - h).abs() > 1e-6
        {
            fail(
                self,
                format!(
                    "the last grant over SQL left {l}, but after the refusal {h} is left: the refused query spent budget"
                ),
            );
        }
        // Once more: still refused, and still nothing spent.
        if time_field.is_none()
            && let Err(e) = self.set_epsilon(&conn, eps(n + 2)).await
        {
            fail(self, format!("`SET dp_epsilon = {}` got {e}", eps(n + 2)));
            return Ok(());
        }
        let q = query(n + 2);
        let got = self
            .sql(
                &conn,
                &who,
                &q,
                "aggregate",
                format!("SQL aggregate on `{name}` after the budget is spent"),
            )
            .await;
        match got {
            Err(r) if r.code() == "53400" => {}
            Ok(_) => fail(
                self,
                format!("a new aggregate over SQL after the budget was spent (`{q}`) was answered"),
            ),
            Err(r) => fail(
                self,
                format!(
                    "a new aggregate over SQL after the budget was spent (`{q}`) got {r}, not SQLSTATE 53400"
                ),
            ),
        }
        let (_, again, _) = self
            .budget_probe(&name, &token, eps(n + 3), from(n + 3), to)
            .await?;
        if let (Some(a), Some(b)) = (left, again)
            && (a - b).abs() > 1e-6
        {
            fail(
                self,
                format!(
                    "a refused aggregate over SQL spent budget: {a} was left before it, {b} after"
                ),
            );
        }
        Ok(())
    }

    /// An aggregate over HTTP as `token`: its status and the consumer's
    /// and the product's budget left.
    async fn budget_probe(
        &mut self,
        port: &str,
        token: &str,
        epsilon: f64,
        from: i64,
        to: i64,
    ) -> Result<(u16, Option<f64>, Option<f64>), Failure> {
        let body = serde_json::json!({"aggregations": [{"count": {}}], "epsilon": epsilon,
            "from": rfc3339(from), "to": rfc3339(to)});
        let (_, ans) = self
            .send(
                Method::POST,
                format!("{}/v1/ports/{port}/aggregate", self.data),
                vec![
                    (header::AUTHORIZATION, format!("Bearer {token}")),
                    (header::CONTENT_TYPE, "application/json".to_string()),
                ],
                body.to_string().into_bytes(),
                format!("aggregate on `{port}` after SQL's budget refusal"),
            )
            .await?;
        let v: Value = serde_json::from_slice(&ans.body).unwrap_or(Value::Null);
        Ok((
            ans.status.as_u16(),
            at(&v, "/budget/consumer/epsilon_remaining").as_f64(),
            at(&v, "/budget/product/epsilon_remaining").as_f64(),
        ))
    }

    /// LIVE-010 for the SQL statements: each is a `postgres` decision of
    /// its consumer, and each connect refused for its token a `connect`
    /// decision.
    pub(super) fn check_sql_audit(&mut self, events: &[StoredEvent]) {
        let sent = std::mem::take(&mut self.sql_sent);
        if sent.is_empty() && self.sql_refused_connects == 0 {
            return;
        }
        let postgres: Vec<&StoredEvent> = events
            .iter()
            .filter(|e| e.protocol.as_deref() == Some("postgres"))
            .collect();
        let mut found: BTreeMap<AuditKey, usize> = BTreeMap::new();
        for e in &postgres {
            let (Some(consumer), Some(purpose)) = (&e.consumer, &e.purpose) else {
                continue;
            };
            let allowed = e.decision == Some(Decision::Allow);
            let mut groups = e.groups.clone();
            groups.sort();
            let action = allowed.then(|| e.action.clone().unwrap_or_default());
            *found
                .entry((consumer.clone(), groups, purpose.clone(), allowed, action))
                .or_default() += 1;
        }
        let mut expected: BTreeMap<AuditKey, (usize, &SqlSent)> = BTreeMap::new();
        for s in &sent {
            let key = (
                s.consumer.clone(),
                s.groups.clone(),
                s.purpose.clone(),
                s.allowed,
                s.allowed.then(|| s.action.to_string()),
            );
            expected.entry(key).or_insert((0, s)).0 += 1;
        }
        let pos = Position { line: 1, col: 1 };
        let mut audited = 0;
        for (key, (n, example)) in &expected {
            let f = found.get(key).copied().unwrap_or(0);
            audited += f.min(*n);
            if f < *n {
                let how = match &key.4 {
                    Some(action) => format!("answered (audited with action `{action}`)"),
                    None => "refused".to_string(),
                };
                self.finding(
                    "LIVE-010",
                    pos,
                    format!(
                        "{n} SQL statement(s) of `{}` (groups [{}], purpose `{}`) were {how}, but {f} such `postgres` decision(s) are in the audit stream; e.g. the {}",
                        key.0,
                        key.1.join(", "),
                        key.2,
                        example.what
                    ),
                    "every SQL statement, refusals included, must be a durable audit event before the answer goes out",
                );
            }
        }
        let since = self.started_ms - 60_000;
        let connects = postgres
            .iter()
            .filter(|e| {
                e.action.as_deref() == Some("connect")
                    && e.decision != Some(Decision::Allow)
                    && e.time_ms().is_some_and(|t| t >= since)
            })
            .count();
        if connects < self.sql_refused_connects {
            self.finding(
                "LIVE-010",
                pos,
                format!(
                    "{} connect(s) to the SQL port were refused for their token, but {connects} refused `connect` decision(s) are in the audit stream",
                    self.sql_refused_connects
                ),
                "a refused connect must be audited like a refused request",
            );
        }
        self.summary.push_str(&format!(
            "; {} SQL statements and {} refused connects sent, {audited} and {} found in the audit stream",
            sent.len(),
            self.sql_refused_connects,
            connects.min(self.sql_refused_connects)
        ));
    }
}

/// How the rows read over SQL differ from the records the HTTP read got,
/// comparing the columns `cols` (index in the row, name): each HTTP record
/// without an equal row (described by the first column that differs in
/// the row with the same `key`, if any), and, when the HTTP read was
/// `complete`, the rows it does not hold. Each with the field to point at.
fn differences(
    cols: &[(usize, &str)],
    rows: &[Vec<Option<String>>],
    http: &[Map<String, Value>],
    key: Option<&str>,
    complete: bool,
) -> Vec<(String, Option<String>)> {
    let equal = |rec: &Map<String, Value>, row: &[Option<String>], only: Option<&str>| {
        cols.iter()
            .filter(|(_, c)| only.is_none_or(|o| o == *c))
            .all(|(j, c)| same(rec.get(*c), row.get(*j).and_then(|v| v.as_deref())))
    };
    let mut sql_left: Vec<&Vec<Option<String>>> = rows.iter().collect();
    let mut http_left = Vec::new();
    for rec in http {
        match sql_left.iter().position(|row| equal(rec, row, None)) {
            Some(k) => {
                sql_left.swap_remove(k);
            }
            None => http_left.push(rec),
        }
    }
    let mut problems: Vec<(String, Option<String>)> = Vec::new();
    for rec in &http_left {
        let twin = key.and_then(|k| {
            sql_left
                .iter()
                .find(|row| rec.get(k).is_some() && equal(rec, row, Some(k)))
        });
        let differs = twin.and_then(|row| {
            cols.iter().find_map(|(j, c)| {
                let t = row.get(*j).and_then(|v| v.as_deref());
                (!same(rec.get(*c), t)).then(|| {
                    (
                        format!(
                            "`{c}` is {} over SQL but {} over HTTP",
                            show_text(t),
                            show_json(rec.get(*c))
                        ),
                        Some(c.to_string()),
                    )
                })
            })
        });
        problems.push(differs.unwrap_or_else(|| {
            (
                format!(
                    "the HTTP record {} has no equal row over SQL",
                    serde_json::to_string(rec).unwrap_or_default()
                ),
                None,
            )
        }));
    }
    if complete && !sql_left.is_empty() && http_left.is_empty() {
        problems.push((
            format!(
                "{} row(s) over SQL are not in the HTTP read of {} record(s)",
                sql_left.len(),
                http.len()
            ),
            None,
        ));
    }
    problems
}

/// A field the consumer sees in the clear whose values tell the HTTP
/// read's records apart (strings or numbers, all different).
fn key_field(plan: &ReadDecision, records: &[Map<String, Value>]) -> Option<String> {
    plan.fields
        .iter()
        .filter(|f| is_clear(&f.treatment))
        .find(|f| {
            let values: Option<BTreeSet<String>> = records
                .iter()
                .map(|r| {
                    r.get(&f.name)
                        .filter(|v| literal(v).is_some())
                        .map(Value::to_string)
                })
                .collect();
            values.is_some_and(|v| v.len() == records.len())
        })
        .map(|f| f.name.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    #[test]
    fn text_values_compare_with_json() {
        assert!(same(Some(&json!("a**@x.com")), Some("a**@x.com")));
        assert!(same(Some(&json!(5000)), Some("5000")));
        assert!(same(Some(&json!(1.0)), Some("1")));
        assert!(same(Some(&json!(true)), Some("t")));
        assert!(same(None, None));
        assert!(same(Some(&Value::Null), None));
        assert!(!same(Some(&json!("x")), None));
        assert!(!same(None, Some("x")));
        assert!(!same(Some(&json!(5000)), Some("5001")));
        assert!(!same(
            Some(&json!("ada@example.com")),
            Some("a**@example.com")
        ));
    }

    #[test]
    fn rows_are_compared_with_the_http_records() {
        let recs: Vec<Map<String, Value>> = [
            json!({"id": "e1", "email": "a***@x.com", "n": 1}),
            json!({"id": "e2", "email": "b***@x.com", "n": 2}),
        ]
        .iter()
        .map(|v| v.as_object().cloned().unwrap_or_default())
        .collect();
        let cols = [(0, "id"), (1, "email"), (2, "n")];
        let row = |id: &str, email: &str, n: &str| {
            vec![
                Some(id.to_string()),
                Some(email.to_string()),
                Some(n.to_string()),
            ]
        };
        let same_rows = [row("e2", "b***@x.com", "2"), row("e1", "a***@x.com", "1")];
        assert!(differences(&cols, &same_rows, &recs, Some("id"), true).is_empty());
        // A raw value over SQL: found, at the field.
        let leaked = [row("e1", "ann@x.com", "1"), row("e2", "b***@x.com", "2")];
        let d = differences(&cols, &leaked, &recs, Some("id"), true);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].1.as_deref(), Some("email"));
        assert!(d[0].0.contains("`ann@x.com` over SQL"), "{d:?}");
        // A row HTTP does not have: a difference of a complete read only.
        let extra = [
            row("e1", "a***@x.com", "1"),
            row("e2", "b***@x.com", "2"),
            row("e3", "c***@x.com", "3"),
        ];
        assert_eq!(differences(&cols, &extra, &recs, Some("id"), true).len(), 1);
        assert!(differences(&cols, &extra, &recs, Some("id"), false).is_empty());
        // A missing row.
        let d = differences(&cols, &extra[..1], &recs, None, false);
        assert!(d[0].0.contains("has no equal row"), "{d:?}");
    }

    #[test]
    fn names_and_literals() {
        assert_eq!(ident("plays"), "plays");
        assert_eq!(ident("play-events"), "\"play-events\"");
        assert_eq!(ident("Plays"), "\"Plays\"");
        assert_eq!(quoted("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal(&json!("O'Brien")).as_deref(), Some("'O''Brien'"));
        assert_eq!(literal(&json!(7)).as_deref(), Some("7"));
        assert_eq!(literal(&json!(null)), None);
    }

    #[test]
    fn the_notice_gives_epsilon_spent_and_left() {
        let n = "differentially private answer: epsilon 1.0 spent; epsilon 0.5 left for you and this purpose in this window; count: laplace noise of scale 10";
        assert_eq!(notice_number(n, "spent"), Some(1.0));
        assert_eq!(notice_number(n, "left"), Some(0.5));
        assert_eq!(notice_number("nothing here", "left"), None);
    }
}
