//! One SQL connection and its statements: authentication, the catalog of
//! the bundle in force, planning, the audit events and the running query
//! (cancel, timeout, completion).

use super::SqlError;
use super::catalog::{Catalog, QueryLog};
use super::gate::plan_is_query;
use crate::app::App;
use crate::auth::Identity;
use crate::clock;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement;
use futures::{Stream, StreamExt as _};
use meshgov_anonymize::PluginFailure;
use meshgov_audit::{AuditLog, Decision, Event, Kind};
use meshgov_columnar::datafusion;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;
use zeroize::Zeroizing;

/// An authenticated SQL connection.
pub(crate) struct SqlSession {
    pub app: Arc<App>,
    /// `Bearer <token>`, checked again before every statement.
    authorization: Zeroizing<Vec<u8>>,
    pub who: Identity,
    /// `postgres` or `flight-sql`.
    pub protocol: &'static str,
    /// The catalog of the last bundle a statement ran under.
    catalog: Mutex<Option<Arc<Catalog>>>,
    /// Woken by a cancel request: the running query stops.
    pub cancel: Arc<Notify>,
}

impl SqlSession {
    /// Authenticates `token` as the data port does. A refusal is audited.
    pub async fn connect(
        app: &Arc<App>,
        token: &str,
        protocol: &'static str,
    ) -> Result<SqlSession, SqlError> {
        let authorization = Zeroizing::new(format!("Bearer {token}").into_bytes());
        match app.auth.authenticate(Some(authorization.as_slice())).await {
            Ok(who) => Ok(SqlSession {
                app: Arc::clone(app),
                authorization,
                who,
                protocol,
                catalog: Mutex::new(None),
                cancel: Arc::new(Notify::new()),
            }),
            Err(e) => {
                let err = SqlError::bad_token(e);
                let mut ev = Event::new(Kind::Decision, clock::now_ms());
                ev.request_id = Some(crate::respond::request_id());
                ev.action = Some("connect".into());
                ev.protocol = Some(protocol.into());
                refuse(app, &mut ev, &err).await;
                Err(err)
            }
        }
    }

    /// Refuses the connection after its token verified (the user name or
    /// the database is wrong): audited as a refused connect by this
    /// consumer.
    pub async fn refuse_connect(&self, e: &SqlError) {
        let mut ev = self.event(String::new());
        ev.query = None;
        ev.action = Some("connect".into());
        refuse(&self.app, &mut ev, e).await;
    }

    /// A statement's decision event, with who asks.
    pub fn event(&self, shape: String) -> Event {
        let mut ev = Event::new(Kind::Decision, clock::now_ms());
        ev.request_id = Some(crate::respond::request_id());
        ev.consumer = Some(self.who.principal.id.clone());
        ev.groups = self.who.principal.groups.clone();
        ev.purpose = Some(self.who.purpose.clone());
        ev.action = Some("query".into());
        ev.protocol = Some(self.protocol.into());
        ev.query = Some(shape);
        ev
    }

    /// Checks the token again (it may have expired since the connect) and
    /// returns the consumer's catalog under the bundle in force.
    fn catalog(&self, ev: &mut Event) -> Result<Arc<Catalog>, SqlError> {
        let now = clock::now_unix();
        self.app
            .auth
            .authenticate_at(Some(self.authorization.as_slice()), now)
            .map_err(SqlError::bad_token)?;
        let bundle = self
            .app
            .bundle
            .valid_at(now)
            .map_err(|u| SqlError::unavailable(u.reason()))?;
        ev.bundle_revision = Some(bundle.meta.revision);
        ev.bundle_digest = Some(bundle.meta.digest.clone());
        let mut slot = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref()
            && Arc::ptr_eq(&c.bundle, &bundle)
        {
            return Ok(Arc::clone(c));
        }
        let catalog = Arc::new(Catalog::build(&self.app, &self.who, bundle, now)?);
        *slot = Some(Arc::clone(&catalog));
        Ok(catalog)
    }

    /// The catalog for a session statement (`SET`, `SHOW`): the token and
    /// the bundle are checked as for a query.
    pub fn session_catalog(&self) -> Result<Arc<Catalog>, SqlError> {
        let mut ev = self.event(String::new());
        self.catalog(&mut ev)
    }

    /// Plans `statement` (a query the gate let through) in the consumer's
    /// catalog. A refusal is audited with `ev`.
    pub async fn plan(
        &self,
        statement: &Statement,
        ev: &mut Event,
    ) -> Result<(Arc<Catalog>, LogicalPlan), SqlError> {
        let planned = async {
            let catalog = self.catalog(ev)?;
            let plan = catalog
                .ctx
                .state()
                .statement_to_plan(DfStatement::Statement(Box::new(statement.clone())))
                .await
                .map_err(|e| from_datafusion(&e))?;
            plan_is_query(&plan)?;
            Ok((catalog, plan))
        }
        .await;
        if let Err(e) = &planned {
            refuse(&self.app, ev, e).await;
        }
        planned
    }

    /// Plans and runs a query statement (bound to `params`, for a prepared
    /// statement): through the privacy engine when it aggregates a port
    /// the consumer may only aggregate (with the notice to show), else as
    /// planned. Refusals are audited with `ev`.
    pub async fn run(
        &self,
        statement: &Statement,
        params: Option<&ParamValues>,
        mut ev: Event,
        timeout_ms: Option<u64>,
        epsilon: f64,
    ) -> Result<(Running, Option<String>), SqlError> {
        // A query over a port the consumer may only aggregate is refused
        // for its shape before it is planned, with what is allowed.
        let shape = self.catalog(&mut ev).and_then(|c| {
            match super::dp::recognize(statement, &c.dp, epsilon) {
                Some(Err(e)) => Err(e),
                _ => Ok(()),
            }
        });
        if let Err(e) = shape {
            refuse(&self.app, &mut ev, &e).await;
            return Err(e);
        }
        let (catalog, plan) = self.plan(statement, &mut ev).await?;
        let plan = match params {
            Some(values) => match plan.replace_params_with_values(values) {
                Ok(plan) => plan,
                Err(e) => {
                    let e = from_datafusion(&e);
                    refuse(&self.app, &mut ev, &e).await;
                    return Err(e);
                }
            },
            None => plan,
        };
        let Some(dq) = super::dp::recognize(statement, &catalog.dp, epsilon) else {
            let running = self.execute(&catalog, plan, ev, timeout_ms).await?;
            return Ok((running, None));
        };
        let answered = match dq {
            Ok(dq) => {
                super::dp::answer(&self.app, &self.who, &dq, plan.schema().as_arrow(), &mut ev)
                    .await
            }
            Err(e) => Err(e),
        };
        let (batch, notice) = match answered {
            Ok(a) => a,
            Err(e) => {
                refuse(&self.app, &mut ev, &e).await;
                return Err(e);
            }
        };
        ev.decision.get_or_insert(Decision::Allow);
        let schema = batch.schema();
        let stream = Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&schema),
            futures::stream::iter([Ok(batch)]),
        ));
        let running = self.running(stream, ev, self.timeout(timeout_ms)).await?;
        Ok((running, Some(notice)))
    }

    /// Runs a planned query: builds it for execution (which opens the
    /// ports' upstreams), makes the decision event durable, and starts
    /// it. A refusal is audited with `ev`.
    async fn execute(
        &self,
        catalog: &Catalog,
        plan: LogicalPlan,
        mut ev: Event,
        timeout_ms: Option<u64>,
    ) -> Result<Running, SqlError> {
        let limit = self.timeout(timeout_ms);
        let mut deadline = Box::pin(tokio::time::sleep(limit));
        let cancelled = Arc::clone(&self.cancel).notified_owned();
        let started = self.start(catalog, plan, &mut ev);
        let started = tokio::select! {
            r = started => r,
            () = cancelled => Err(SqlError::cancelled()),
            () = deadline.as_mut() => Err(SqlError::timed_out(millis(limit))),
        };
        let stream = match started {
            Ok(stream) => stream,
            Err(e) => {
                refuse(&self.app, &mut ev, &e).await;
                return Err(e);
            }
        };
        ev.decision = Some(Decision::Allow);
        let mut running = self.running(stream, ev, limit).await?;
        running.deadline = deadline;
        Ok(running)
    }

    /// Makes the decision event `ev` durable, then lets `stream` run, for
    /// at most `limit`.
    async fn running(
        &self,
        stream: SendableRecordBatchStream,
        ev: Event,
        limit: Duration,
    ) -> Result<Running, SqlError> {
        let mut completion = Event::new(Kind::Completion, 0);
        completion.request_id = ev.request_id.clone();
        completion.consumer = ev.consumer.clone();
        completion.port = ev.port.clone();
        completion.protocol = ev.protocol.clone();
        count(&self.app, &ev);
        if let Err(e) = self.app.audit.submit(ev).await {
            tracing::error!("cannot audit the query, refusing: {e}");
            return Err(SqlError::audit_unavailable());
        }
        Ok(Running {
            schema: stream.schema(),
            stream,
            cancelled: Box::pin(Arc::clone(&self.cancel).notified_owned()),
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
            completion: Completion {
                audit: Arc::clone(&self.app.audit),
                metrics: Arc::clone(&self.app.metrics),
                event: Some(completion),
                rows: 0,
                bytes: Arc::new(AtomicU64::new(0)),
                outcome: None,
            },
            done: false,
        })
    }

    /// The statement timeout: the client's (`SET statement_timeout`), at
    /// most `limits.query_timeout_ms`.
    fn timeout(&self, client_ms: Option<u64>) -> Duration {
        let cap = self.app.limits.query_timeout_ms;
        Duration::from_millis(client_ms.filter(|&ms| ms > 0).map_or(cap, |ms| ms.min(cap)))
    }

    async fn start(
        &self,
        catalog: &Catalog,
        plan: LogicalPlan,
        ev: &mut Event,
    ) -> Result<SendableRecordBatchStream, SqlError> {
        let log = Arc::new(QueryLog::default());
        let mut state = catalog.ctx.state();
        state.config_mut().set_extension(Arc::clone(&log));
        let physical = state.create_physical_plan(&plan).await;
        let scanned = log.scanned();
        if let [port] = scanned.ports.as_slice() {
            ev.port = Some(port.clone());
        }
        ev.transforms = scanned.transforms;
        ev.policies = scanned.policies;
        let physical = physical.map_err(|e| from_datafusion(&e))?;
        datafusion::physical_plan::execute_stream(physical, state.task_ctx())
            .map_err(|e| from_datafusion(&e))
    }
}

/// Records a refusal in `ev` and makes it durable (a refusal that cannot
/// be audited is still a refusal).
async fn refuse(app: &App, ev: &mut Event, e: &SqlError) {
    ev.decision = Some(match (e.code, ev.decision) {
        ("42501", _) | (_, Some(Decision::Deny)) => Decision::Deny,
        _ => Decision::Error,
    });
    ev.error = Some(e.audit.into());
    count(app, ev);
    if let Err(err) = app.audit.submit(ev.clone()).await {
        tracing::error!("cannot audit a refused query: {err}");
    }
}

/// Counts a statement's decision in the SQL ports' metrics.
fn count(app: &App, ev: &Event) {
    if let Some(protocol) = ev.protocol.as_deref() {
        let port = app.metrics.port(ev.port.as_deref());
        let decision = ev.decision.map_or(2, |d| d as usize);
        app.metrics.sql_query(protocol, port, decision);
    }
}

/// A refusal that happened before a statement could be planned (it did
/// not parse, or the gate refused it), audited with `ev`.
pub(crate) async fn refuse_statement(session: &SqlSession, mut ev: Event, e: &SqlError) {
    refuse(&session.app, &mut ev, e).await;
}

/// What a DataFusion error means for the client.
pub(crate) fn from_datafusion(e: &DataFusionError) -> SqlError {
    let root = e.find_root();
    match root {
        DataFusionError::External(inner) => {
            if let Some(sql) = inner.downcast_ref::<SqlError>() {
                return sql.clone();
            }
            if let Some(failure) = inner.downcast_ref::<PluginFailure>() {
                tracing::error!(plugin = %failure.plugin, kind = failure.kind.label(), "{failure}");
                return SqlError::new(
                    "XX000",
                    "plugin_failed",
                    "a policy plugin failed on this data; nothing more was served",
                );
            }
            if inner.is::<crate::upstream::UpstreamError>() {
                tracing::error!("the port's upstream could not be read: {e}");
                return SqlError::new(
                    "58030",
                    "upstream_failed",
                    "the product's upstream could not be read",
                );
            }
            tracing::error!("query failed: {e}");
            SqlError::plan_failed()
        }
        DataFusionError::SchemaError(inner, _) => {
            let text = inner.to_string();
            if text.contains("not found") || text.contains("No field named") {
                SqlError::new(
                    "42703",
                    "unknown_column",
                    format!("{text}; `\\d <table>` lists the columns you can see"),
                )
            } else {
                SqlError::new("42P01", "bad_query", text)
            }
        }
        DataFusionError::Plan(text) if text.contains("not found") && text.contains("table") => {
            SqlError::new(
                "42P01",
                "unknown_table",
                format!("{text}; `\\dt` lists the tables (ports) you can read"),
            )
        }
        DataFusionError::Plan(text) => SqlError::new("42601", "bad_query", text.clone()),
        DataFusionError::SQL(err, _) => SqlError::new("42601", "bad_query", err.to_string()),
        DataFusionError::NotImplemented(text) => {
            SqlError::new("0A000", "not_supported", text.clone())
        }
        DataFusionError::ResourcesExhausted(_) => SqlError::new(
            "53200",
            "out_of_memory",
            "the query needs more memory than this sidecar allows one query (`limits.query_memory_bytes`); narrow it",
        ),
        DataFusionError::ParquetError(_)
        | DataFusionError::ObjectStore(_)
        | DataFusionError::IoError(_) => {
            tracing::error!("the port's upstream could not be read: {e}");
            SqlError::new(
                "58030",
                "upstream_failed",
                "the product's upstream could not be read",
            )
        }
        _ => {
            tracing::error!("query failed: {e}");
            SqlError::plan_failed()
        }
    }
}

/// A query's completion event: rows and bytes sent, and how it ended
/// (`complete`, `cancelled`, `timed_out`, `failed`, `client_gone`).
/// Submitted when the query is over or dropped.
pub(crate) struct Completion {
    audit: Arc<AuditLog>,
    metrics: Arc<crate::metrics::Metrics>,
    event: Option<Event>,
    rows: u64,
    /// Bytes the protocol put on the wire for the query's rows.
    pub bytes: Arc<AtomicU64>,
    outcome: Option<&'static str>,
}

impl Completion {
    pub fn end(&mut self, outcome: &'static str) {
        self.outcome.get_or_insert(outcome);
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(mut ev) = self.event.take() {
            let bytes = self.bytes.load(Ordering::Relaxed);
            if let Some(protocol) = ev.protocol.as_deref() {
                self.metrics.sql_sent(protocol, self.rows, bytes);
            }
            ev.records = Some(self.rows);
            ev.bytes = Some(bytes);
            ev.outcome = Some(self.outcome.unwrap_or("client_gone").into());
            ev.time_ms = clock::now_ms();
            if let Err(e) = self.audit.submit_detached(ev) {
                tracing::error!("cannot audit a query's completion: {e}");
            }
        }
    }
}

/// A running query: its batches, until it ends, fails, is cancelled or
/// runs out of time.
pub(crate) struct Running {
    pub schema: SchemaRef,
    stream: SendableRecordBatchStream,
    cancelled: Pin<Box<tokio::sync::futures::OwnedNotified>>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    pub completion: Completion,
    done: bool,
}

impl Stream for Running {
    type Item = Result<RecordBatch, SqlError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let stop = if this.cancelled.as_mut().poll(cx).is_ready() {
            Some(("cancelled", SqlError::cancelled()))
        } else if this.deadline.as_mut().poll(cx).is_ready() {
            Some(("timed_out", SqlError::timed_out(millis(this.limit))))
        } else {
            None
        };
        if let Some((outcome, e)) = stop {
            this.done = true;
            this.completion.end(outcome);
            return Poll::Ready(Some(Err(e)));
        }
        match this.stream.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(batch))) => {
                this.completion.rows += batch.num_rows() as u64;
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                this.completion.end("failed");
                Poll::Ready(Some(Err(from_datafusion(&e))))
            }
            Poll::Ready(None) => {
                this.done = true;
                this.completion.end("complete");
                Poll::Ready(None)
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
