//! `listen.sql`: the PostgreSQL wire protocol (pgwire), over TLS.
//!
//! - **Connect.** The server asks for a cleartext password, which is the
//!   consumer's JWT; TLS keeps it private (plaintext is allowed on a
//!   loopback address only, and only when `sql.allow_plaintext` says so).
//!   The user name must be the token's subject, and the database the
//!   product's id (or left out). A refused connect is audited.
//! - **Queries**, simple and extended (prepared statements and portals),
//!   go through the shared core ([`super::query`]); a prepared statement
//!   is planned again when it runs, under the bundle then in force.
//! - **Cancel.** A cancel request with the connection's key stops its
//!   running query (`57014`).
//! - **Limits.** At most `limits.max_sql_connections` connections
//!   (`53300` beyond), a statement timeout (`limits.query_timeout_ms`, or
//!   the client's `statement_timeout` when lower), and a connection with
//!   no statement at work for `limits.sql_idle_timeout_ms` is closed.

use super::SqlError;
use super::gate::{Gate, gate, shape};
use super::query::{Running, SqlSession, refuse_statement};
use crate::app::App;
use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DFSchema, ParamValues};
use datafusion::logical_expr::EmptyRelation;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion_postgres::QueryHook;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters;
use datafusion_postgres::arrow_pg::datatypes::{
    arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type,
};
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire;
use futures::{Sink, SinkExt as _, StreamExt as _};
use meshgov_columnar::datafusion;
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, METADATA_DATABASE, METADATA_USER, PgWireConnectionState,
    PgWireServerHandlers, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::{Authentication, SecretKey};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// A statement as stored for the extended protocol: its text, and the
/// parsed statement with its plan at `Parse` time (used to describe it).
type Prepared = (String, Option<(Statement, LogicalPlan)>);

impl From<SqlError> for PgWireError {
    fn from(e: SqlError) -> PgWireError {
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".into(),
            e.code.into(),
            e.message,
        )))
    }
}

fn fatal(e: SqlError) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        e.code.into(),
        e.message,
    )))
}

/// A connection's cancel key: its process id and secret.
type CancelKey = (i32, Vec<u8>);

/// The running connections' cancel keys.
#[derive(Default)]
struct Cancels(Mutex<HashMap<CancelKey, Arc<Notify>>>);

/// A connection's entry in [`Cancels`], removed when it closes.
struct CancelEntry {
    cancels: Arc<Cancels>,
    key: CancelKey,
}

impl Drop for CancelEntry {
    fn drop(&mut self) {
        let mut map = self.cancels.0.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&self.key);
    }
}

/// Serves the PostgreSQL protocol on `listener` until `shutdown`, then
/// lets open connections finish their statement for at most `drain`.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let limit = app.limits.max_sql_connections;
    let idle = Duration::from_millis(app.limits.sql_idle_timeout_ms);
    let slots = Arc::new(Semaphore::new(limit));
    let cancels = Arc::new(Cancels::default());
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((socket, _peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = socket.set_nodelay(true);
                let activity = Arc::new(Activity::default());
                activity.touch();
                let handlers = Arc::new(Handlers {
                    app: Arc::clone(&app),
                    permit: Arc::clone(&slots).try_acquire_owned().ok(),
                    limit,
                    cancels: Arc::clone(&cancels),
                    parser: Arc::new(Parser { compat: PostgresCompatibilityParser::new() }),
                    activity: Arc::clone(&activity),
                });
                let acceptor = acceptor.clone();
                let open = OpenConnection::new(&app, "postgres");
                tasks.spawn(async move {
                    let _open = open;
                    tokio::select! {
                        served = pgwire::tokio::process_socket(socket, acceptor, handlers) => {
                            if let Err(e) = served {
                                tracing::debug!("SQL connection ended: {e}");
                            }
                        }
                        () = activity.idle(idle) => {
                            tracing::debug!(idle_ms = idle.as_millis() as u64, "SQL connection closed: idle");
                        }
                    }
                });
                while tasks.try_join_next().is_some() {}
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let drained =
        tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            open = tasks.len(),
            "SQL connections cut at the end of the drain"
        );
        tasks.abort_all();
    }
}

/// When a connection last did something, and how many of its statements
/// are running: a connection with none running for
/// `limits.sql_idle_timeout_ms` is closed.
#[derive(Default)]
struct Activity {
    last_ms: AtomicI64,
    busy: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(crate::clock::now_ms(), Ordering::Relaxed);
    }

    /// Resolves once the connection has been idle for `limit`.
    async fn idle(&self, limit: Duration) {
        let limit_ms = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
        let step = (limit / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        loop {
            tokio::time::sleep(step).await;
            let quiet = crate::clock::now_ms() - self.last_ms.load(Ordering::Relaxed);
            if self.busy.load(Ordering::Relaxed) == 0 && quiet >= limit_ms {
                return;
            }
        }
    }
}

/// A statement at work on a connection (planning, or its rows streaming).
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: &Arc<Activity>) -> Busy {
        a.busy.fetch_add(1, Ordering::Relaxed);
        a.touch();
        Busy(Arc::clone(a))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open connection, counted in `meshgov_sidecar_sql_connections`
/// while it lives.
pub(crate) struct OpenConnection(Arc<crate::metrics::Metrics>, &'static str);

impl OpenConnection {
    pub(crate) fn new(app: &App, protocol: &'static str) -> OpenConnection {
        if let Some(g) = app.metrics.sql_connections(protocol) {
            g.inc();
        }
        OpenConnection(Arc::clone(&app.metrics), protocol)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(g) = self.0.sql_connections(self.1) {
            g.dec();
        }
    }
}

/// One connection's handlers.
struct Handlers {
    app: Arc<App>,
    /// `None` when the connection limit was reached: the connection is
    /// refused at startup (`53300`).
    permit: Option<OwnedSemaphorePermit>,
    limit: usize,
    cancels: Arc<Cancels>,
    parser: Arc<Parser>,
    activity: Arc<Activity>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::new(Queries {
            parser: Arc::clone(&self.parser),
            activity: Arc::clone(&self.activity),
        })
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::new(Queries {
            parser: Arc::clone(&self.parser),
            activity: Arc::clone(&self.activity),
        })
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(Startup {
            app: Arc::clone(&self.app),
            full: self.permit.is_none(),
            limit: self.limit,
            cancels: Arc::clone(&self.cancels),
        })
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(Canceller(Arc::clone(&self.cancels)))
    }
}

struct Canceller(Arc<Cancels>);

#[async_trait]
impl CancelHandler for Canceller {
    async fn on_cancel_request(&self, req: CancelRequest) {
        let key = (req.pid, req.secret_key.to_bytes().to_vec());
        let found = {
            let map = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&key).cloned()
        };
        if let Some(cancel) = found {
            cancel.notify_waiters();
        }
    }
}

struct Startup {
    app: Arc<App>,
    full: bool,
    limit: usize,
    cancels: Arc<Cancels>,
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(startup) => {
                if self.full {
                    return Err(fatal(SqlError::too_many_connections(self.limit)));
                }
                protocol_negotiation(client, &startup).await?;
                save_startup_parameters_to_metadata(client, &startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let token = pwd.into_password()?.password;
                let session = SqlSession::connect(&self.app, &token, "postgres")
                    .await
                    .map_err(fatal)?;
                let id = self.app.descriptor.product_id();
                let product = super::catalog::database_name(&id).to_string();
                let user = client
                    .metadata()
                    .get(METADATA_USER)
                    .cloned()
                    .unwrap_or_default();
                if user != session.who.principal.id {
                    let e = SqlError::new(
                        "28000",
                        "unauthorized",
                        format!(
                            "the user name must be your token's subject, `{}`",
                            session.who.principal.id
                        ),
                    );
                    session.refuse_connect(&e).await;
                    return Err(fatal(e));
                }
                if let Some(db) = client.metadata().get(METADATA_DATABASE)
                    && *db != product
                    && *db != id
                    && *db != user
                {
                    let e = SqlError::new(
                        "3D000",
                        "unknown_database",
                        format!(
                            "database \"{db}\" does not exist; this sidecar serves `{product}`"
                        ),
                    );
                    session.refuse_connect(&e).await;
                    return Err(fatal(e));
                }
                let (pid, secret) = new_cancel_key();
                let secret = SecretKey::I32(secret);
                client.set_pid_and_secret_key(pid, secret.clone());
                let secret = secret.to_bytes().to_vec();
                {
                    let mut map = self.cancels.0.lock().unwrap_or_else(|p| p.into_inner());
                    map.insert((pid, secret.clone()), Arc::clone(&session.cancel));
                }
                client.session_extensions().insert(CancelEntry {
                    cancels: Arc::clone(&self.cancels),
                    key: (pid, secret),
                });
                client.session_extensions().insert(session);
                let mut params = DefaultServerParameterProvider::default();
                params.server_version = super::catalog::PG_VERSION.into();
                params.is_superuser = false;
                params.default_transaction_read_only = true;
                finish_authentication(client, &params).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// A random process id and secret for cancel requests.
fn new_cancel_key() -> (i32, i32) {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let [p0, p1, p2, p3, s0, s1, s2, s3] = b;
    (
        i32::from_be_bytes([p0 & 0x7f, p1, p2, p3]).max(1),
        i32::from_be_bytes([s0, s1, s2, s3]),
    )
}

fn session_of<C: ClientInfo>(client: &C) -> PgWireResult<Arc<SqlSession>> {
    client
        .session_extensions()
        .get::<SqlSession>()
        .ok_or_else(|| fatal(SqlError::bad_token("the connection is not authenticated")))
}

/// The ε a differentially private query spends: the session's
/// `SET dp_epsilon`, else the default.
fn epsilon<C: ClientInfo>(client: &C) -> f64 {
    client
        .metadata()
        .get(DP_EPSILON)
        .and_then(|s| s.parse().ok())
        .unwrap_or(super::dp::DEFAULT_EPSILON)
}

/// The session setting that holds the ε of differentially private queries.
const DP_EPSILON: &str = "dp_epsilon";

/// The client's `statement_timeout`, in milliseconds.
fn client_timeout<C: ClientInfo>(client: &C) -> Option<u64> {
    client
        .metadata()
        .get("statement_timeout_ms")
        .and_then(|s| s.parse().ok())
}

struct Parser {
    compat: PostgresCompatibilityParser,
}

impl Parser {
    fn parse(&self, sql: &str) -> Result<Vec<Statement>, SqlError> {
        let mut statements = self
            .compat
            .parse(sql)
            .map_err(|e| SqlError::new("42601", "bad_query", format!("syntax error: {e}")))?;
        statements.iter_mut().for_each(super::compat::rewrite);
        Ok(statements)
    }
}

fn hooks() -> [Arc<dyn QueryHook>; 3] {
    [
        Arc::new(Savepoints),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ]
}

/// Savepoints and `DISCARD`, which clients and pools send around
/// queries: acknowledged, with nothing to do on read-only ports; and
/// `SET dp_epsilon = <ε>`, the ε of the session's differentially private
/// queries.
struct Savepoints;

/// The ε a `SET dp_epsilon = …` sets, or why it cannot.
fn set_epsilon(statement: &Statement) -> Option<Result<String, SqlError>> {
    let Statement::Set(Set::SingleAssignment {
        variable, values, ..
    }) = statement
    else {
        return None;
    };
    if !variable.to_string().eq_ignore_ascii_case(DP_EPSILON) {
        return None;
    }
    let text = values
        .first()
        .map(|v| v.to_string().trim_matches('\'').to_string())
        .unwrap_or_default();
    Some(match text.parse::<f64>() {
        Ok(e) if e.is_finite() && e > 0.0 => Ok(text),
        _ => Err(SqlError::new(
            "22023",
            "bad_query",
            format!("`dp_epsilon` must be a positive number, got `{text}`"),
        )),
    })
}

impl Savepoints {
    fn tag(statement: &Statement) -> Option<&'static str> {
        match statement {
            Statement::Savepoint { .. } => Some("SAVEPOINT"),
            Statement::ReleaseSavepoint { .. } => Some("RELEASE"),
            Statement::Rollback {
                savepoint: Some(_), ..
            } => Some("ROLLBACK"),
            Statement::Discard { .. } => Some("DISCARD ALL"),
            _ => None,
        }
    }
}

#[async_trait]
impl QueryHook for Savepoints {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if let Some(set) = set_epsilon(statement) {
            return Some(match set {
                Ok(v) => {
                    client.metadata_mut().insert(DP_EPSILON.into(), v);
                    Ok(Response::Execution(Tag::new("SET")))
                }
                Err(e) => Err(e.into()),
            });
        }
        Self::tag(statement).map(|t| Ok(Response::Execution(Tag::new(t))))
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        if set_epsilon(statement).is_none() {
            Self::tag(statement)?;
        }
        Some(Ok(LogicalPlan::EmptyRelation(EmptyRelation {
            produce_one_row: false,
            schema: Arc::new(DFSchema::empty()),
        })))
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.handle_simple_query(statement, ctx, client).await
    }
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let session = session_of(client)?;
        let mut statements = match self.parse(sql) {
            Ok(s) => s,
            Err(e) => {
                refuse_statement(&session, session.event(shape(sql)), &e).await;
                return Err(e.into());
            }
        };
        if statements.is_empty() {
            return Ok(None);
        }
        if statements.len() > 1 {
            let e = SqlError::new(
                "42601",
                "bad_query",
                "a prepared statement holds one statement",
            );
            refuse_statement(&session, session.event(shape(sql)), &e).await;
            return Err(e.into());
        }
        let statement = statements.remove(0);
        let mut ev = session.event(shape(&statement.to_string()));
        let plan = match gate(&statement) {
            Err(e) => {
                refuse_statement(&session, ev, &e).await;
                return Err(e.into());
            }
            Ok(Gate::Session) => {
                let catalog = session.session_catalog()?;
                let mut found = None;
                for hook in hooks() {
                    if let Some(plan) = hook
                        .handle_extended_parse_query(&statement, &catalog.ctx, client)
                        .await
                    {
                        found = Some(plan?);
                        break;
                    }
                }
                found.ok_or_else(|| SqlError::not_supported("this statement"))?
            }
            Ok(Gate::Query) => session.plan(&statement, &mut ev).await?.1,
        };
        Ok(Some((sql.to_string(), Some((statement, plan)))))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        let Some((_, plan)) = &stmt.1 else {
            return Ok(Vec::new());
        };
        parameter_types(plan)?
            .iter()
            .map(|t| t.as_ref().map_or(Ok(Type::UNKNOWN), into_pg_type))
            .collect()
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.1 {
            Some((Statement::Query(_), plan)) => arrow_schema_to_pg_fields(
                plan.schema().as_arrow(),
                column_format.unwrap_or(&Format::UnifiedText),
                None,
            ),
            _ => Ok(Vec::new()),
        }
    }
}

/// The plan's parameters (`$1`, `$2`, …) in order, each with the type
/// DataFusion inferred for it.
fn parameter_types(plan: &LogicalPlan) -> PgWireResult<Vec<Option<DataType>>> {
    let types = plan
        .get_parameter_types()
        .map_err(|e| PgWireError::from(super::query::from_datafusion(&e)))?;
    let mut numbered: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .filter_map(|(name, ty)| Some((name.strip_prefix('$')?.parse().ok()?, ty)))
        .collect();
    numbered.sort_by_key(|(n, _)| *n);
    Ok(numbered.into_iter().map(|(_, t)| t).collect())
}

struct Queries {
    parser: Arc<Parser>,
    activity: Arc<Activity>,
}

impl Queries {
    /// Runs one query statement and answers with its rows; a
    /// differentially private answer's notice is sent first.
    async fn query<C>(
        &self,
        client: &mut C,
        session: &SqlSession,
        statement: &Statement,
        params: Option<&ParamValues>,
        format: &Format,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let ev = session.event(shape(&statement.to_string()));
        let (running, notice) = session
            .run(
                statement,
                params,
                ev,
                client_timeout(client),
                epsilon(client),
            )
            .await?;
        if let Some(text) = notice {
            let info = ErrorInfo::new("NOTICE".into(), "00000".into(), text);
            client
                .send(PgWireBackendMessage::NoticeResponse(info.into()))
                .await?;
        }
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let fields = Arc::new(arrow_schema_to_pg_fields(
            running.schema.as_ref(),
            format,
            Some(options),
        )?);
        Ok(Response::Query(QueryResponse::new(
            Arc::clone(&fields),
            rows(running, fields, Busy::new(&self.activity)),
        )))
    }

    /// Answers a session statement through the client-setting hooks.
    async fn session_statement<C>(
        &self,
        client: &mut C,
        session: &SqlSession,
        statement: &Statement,
        plan: Option<(&LogicalPlan, &datafusion::common::ParamValues)>,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let catalog = session.session_catalog()?;
        for hook in hooks() {
            let answered = match plan {
                None => {
                    hook.handle_simple_query(statement, &catalog.ctx, client)
                        .await
                }
                Some((plan, params)) => {
                    hook.handle_extended_query(statement, plan, params, &catalog.ctx, client)
                        .await
                }
            };
            if let Some(answer) = answered {
                return answer;
            }
        }
        Err(SqlError::not_supported("this statement").into())
    }
}

/// The query's rows as PostgreSQL data rows, counted into its completion.
fn rows(
    running: Running,
    fields: Arc<Vec<FieldInfo>>,
    busy: Busy,
) -> impl futures::Stream<Item = PgWireResult<pgwire::messages::data::DataRow>> + Send + 'static {
    futures::stream::unfold(Some((running, busy)), move |state| {
        let fields = Arc::clone(&fields);
        async move {
            let (mut running, busy) = state?;
            match running.next().await {
                None => None,
                Some(Err(e)) => Some((vec![Err(PgWireError::from(e))], None)),
                Some(Ok(batch)) => {
                    let rows: Vec<_> = encode_recordbatch(fields, batch).collect();
                    let bytes = rows
                        .iter()
                        .map(|r| r.as_ref().map_or(0, |r| r.data.len() as u64 + 7))
                        .sum::<u64>();
                    running.completion.bytes.fetch_add(bytes, Ordering::Relaxed);
                    Some((rows, Some((running, busy))))
                }
            }
        }
    })
    .flat_map(futures::stream::iter)
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let _busy = Busy::new(&self.activity);
        let session = session_of(client)?;
        let statements = match self.parser.parse(query) {
            Ok(s) => s,
            Err(e) => {
                refuse_statement(&session, session.event(shape(query)), &e).await;
                return Err(e.into());
            }
        };
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut out = Vec::with_capacity(statements.len());
        for statement in &statements {
            match gate(statement) {
                Err(e) => {
                    refuse_statement(&session, session.event(shape(&statement.to_string())), &e)
                        .await;
                    return Err(e.into());
                }
                Ok(Gate::Session) => {
                    out.push(
                        self.session_statement(client, &session, statement, None)
                            .await?,
                    );
                }
                Ok(Gate::Query) => {
                    out.push(
                        self.query(client, &session, statement, None, &Format::UnifiedText)
                            .await?,
                    );
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        Arc::clone(&self.parser)
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let _busy = Busy::new(&self.activity);
        let session = session_of(client)?;
        let Some((statement, plan)) = &portal.statement.statement.1 else {
            return Ok(Response::EmptyQuery);
        };
        let types = parameter_types(plan)?;
        let refs: Vec<Option<&DataType>> = types.iter().map(Option::as_ref).collect();
        let params = deserialize_parameters(portal, &refs)?;
        match gate(statement)? {
            Gate::Session => {
                self.session_statement(client, &session, statement, Some((plan, &params)))
                    .await
            }
            Gate::Query => {
                self.query(
                    client,
                    &session,
                    statement,
                    Some(&params),
                    &portal.result_column_format,
                )
                .await
            }
        }
    }
}
