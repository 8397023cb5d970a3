//! `listen.flight`: Arrow Flight SQL (gRPC), over TLS.
//!
//! - **Authentication.** Every call carries the consumer's JWT, as
//!   `authorization: Bearer <JWT>`; or the client performs the Flight
//!   handshake with Basic credentials whose password is the JWT (the user
//!   name must be the token's subject, or empty), and the handshake
//!   answers with the bearer header to send from then on.
//! - **Queries.** `CommandStatementQuery` and prepared statements are
//!   planned through the shared core ([`super::query`]) when their flight
//!   info is asked for (a refusal is audited there), and run when their
//!   ticket is fetched: the ticket holds the SQL, so the query is planned
//!   again under the bundle then in force, audited, and streamed as Arrow
//!   record batches. A differentially private query is answered when its
//!   flight info is asked for, so that the info's schema carries the ε
//!   spent, the budget left and the noise in its metadata; its ticket
//!   fetches that answer, once, within a minute, for the same token.
//! - **Catalog.** `GetCatalogs`, `GetDbSchemas`, `GetTables` (with the
//!   tables' schemas) and `GetTableTypes` describe the consumer's catalog;
//!   `GetSqlInfo` says the server is read only.
//! - **Refusals.** Updates and ingestion are refused; every refusal is a
//!   gRPC status whose message ends with its SQLSTATE.
//! - **Limits.** At most `limits.max_sql_connections` results stream at
//!   once (`RESOURCE_EXHAUSTED`, SQLSTATE `53300`, beyond). Cancelling
//!   the fetch stops the query.

use super::SqlError;
use super::catalog::{SCHEMA, database_name};
use super::gate::{Gate, gate, shape};
use super::pg::OpenConnection;
use super::query::{SqlSession, refuse_statement};
use crate::app::App;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementIngest, CommandStatementQuery, CommandStatementUpdate, ProstMessageExt,
    SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use base64::Engine as _;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::{Stream, StreamExt as _};
use meshgov_columnar::datafusion;
use prost::Message as _;
use sha2::Digest as _;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status, Streaming};

/// Sessions kept for tokens seen recently; beyond, the oldest are
/// dropped (a dropped session only costs its catalog being built again).
const MAX_SESSIONS: usize = 1024;
/// TLS handshakes may take this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

static SQL_INFO: LazyLock<Option<SqlInfoData>> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "meshgov sidecar");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.build().ok()
});

/// The gRPC status of a refusal; its message ends with the SQLSTATE.
fn status(e: &SqlError) -> Status {
    let text = e.to_string();
    match e.code {
        c if c.starts_with("28") => Status::unauthenticated(text),
        "42501" => Status::permission_denied(text),
        "42P01" => Status::not_found(text),
        "0A000" | "25006" => Status::unimplemented(text),
        "57014" if e.audit == "timed_out" => Status::deadline_exceeded(text),
        "57014" => Status::cancelled(text),
        "53300" | "53200" => Status::resource_exhausted(text),
        "57P03" | "58030" => Status::unavailable(text),
        c if c.starts_with("42") || c.starts_with("22") => Status::invalid_argument(text),
        _ => Status::internal(text),
    }
}

/// Serves Flight SQL on `listener` until `shutdown`, then lets results
/// in flight finish for at most `drain`.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
) {
    let slots = Arc::new(Semaphore::new(app.limits.max_sql_connections));
    let app_for_gauge = Arc::clone(&app);
    let service = FlightServiceServer::new(Flight {
        app,
        parser: PostgresCompatibilityParser::new(),
        sessions: Mutex::new(HashMap::new()),
        slots,
        answers: Mutex::new(HashMap::new()),
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<Conn>(64);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let counted = Arc::clone(&app_for_gauge);
    let accept = async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = socket.set_nodelay(true);
            let tx = tx.clone();
            let open = OpenConnection::new(&counted, "flight-sql");
            match &acceptor {
                None => {
                    let _ = tx
                        .send(Conn {
                            io: Io::Plain(socket),
                            _open: open,
                        })
                        .await;
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await
                        {
                            Ok(Ok(tls)) => {
                                let _ = tx
                                    .send(Conn {
                                        io: Io::Tls(Box::new(tls)),
                                        _open: open,
                                    })
                                    .await;
                            }
                            Ok(Err(e)) => tracing::debug!("Flight SQL TLS handshake failed: {e}"),
                            Err(_) => tracing::debug!("Flight SQL TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    };
    let incoming = futures::stream::unfold(rx, |mut rx| async move {
        let conn = rx.recv().await?;
        Some((Ok::<_, std::io::Error>(conn), rx))
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tokio::pin!(shutdown);
    tokio::select! {
        () = accept => {}
        r = &mut server => {
            if let Err(e) = r {
                tracing::error!("the Flight SQL port failed: {e}");
            }
            return;
        }
        () = &mut shutdown => {}
    }
    let _ = stop_tx.send(());
    if tokio::time::timeout(drain, server).await.is_err() {
        tracing::warn!("Flight SQL results cut at the end of the drain");
    }
}

/// A Flight SQL connection: plain TCP on loopback, or TLS.
struct Conn {
    io: Io,
    _open: OpenConnection,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

struct Flight {
    app: Arc<App>,
    parser: PostgresCompatibilityParser,
    /// Sessions by the SHA-256 of their token.
    sessions: Mutex<HashMap<[u8; 32], Arc<SqlSession>>>,
    /// One permit per result streaming.
    slots: Arc<Semaphore>,
    /// Differentially private answers computed for a flight info, waiting
    /// for their ticket, by ticket id.
    answers: Mutex<HashMap<[u8; 16], Answer>>,
}

/// A differentially private answer waiting for its ticket: computed when
/// the flight info was asked for, so that the info's schema carries the
/// cost and the noise in its metadata.
struct Answer {
    /// The SHA-256 of the token that asked; only it may fetch the answer.
    token: [u8; 32],
    running: super::query::Running,
    at: std::time::Instant,
}

/// How long a computed answer waits for its ticket.
const ANSWER_TTL: Duration = Duration::from_secs(60);
/// The first byte of a ticket that fetches a computed answer; a SQL
/// ticket holds the query's text.
const ANSWER_TICKET: u8 = 0;

type DoGetStream = <Flight as FlightService>::DoGetStream;

/// The key a token is known by: its SHA-256.
fn token_key(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// The bearer token of a call.
fn bearer(metadata: &MetadataMap) -> Result<String, SqlError> {
    let value = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| SqlError::bad_token("no token; send `authorization: Bearer <JWT>`"))?;
    value
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_string())
        .ok_or_else(|| SqlError::bad_token("the authorization header is not `Bearer <JWT>`"))
}

impl Flight {
    /// The session of the call's token: one per token, kept while recent.
    async fn session(&self, metadata: &MetadataMap) -> Result<Arc<SqlSession>, Status> {
        let token = bearer(metadata).map_err(|e| status(&e))?;
        let key = token_key(&token);
        if let Some(s) = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(Arc::clone(s));
        }
        let session = Arc::new(
            SqlSession::connect(&self.app, &token, "flight-sql")
                .await
                .map_err(|e| status(&e))?,
        );
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.len() >= MAX_SESSIONS {
            sessions.clear();
        }
        sessions.insert(key, Arc::clone(&session));
        Ok(session)
    }

    /// Parses `sql` into its one query statement; refusals are audited.
    async fn statement(&self, session: &SqlSession, sql: &str) -> Result<Statement, Status> {
        let refused = |e: SqlError| async move {
            refuse_statement(session, session.event(shape(sql)), &e).await;
            Err(status(&e))
        };
        let mut statements = match self.parser.parse(sql) {
            Ok(s) => s,
            Err(e) => {
                return refused(SqlError::new(
                    "42601",
                    "bad_query",
                    format!("syntax error: {e}"),
                ))
                .await;
            }
        };
        if statements.len() != 1 {
            return refused(SqlError::new(
                "42601",
                "bad_query",
                "send one statement per query",
            ))
            .await;
        }
        let statement = statements.remove(0);
        match gate(&statement) {
            Ok(Gate::Query) => Ok(statement),
            Ok(Gate::Session) => {
                refused(SqlError::not_supported(
                    "a session statement (SET, SHOW, BEGIN, COMMIT) over Flight SQL",
                ))
                .await
            }
            Err(e) => refused(e).await,
        }
    }

    /// The result schema of `sql`, planned in the consumer's catalog.
    async fn describe(&self, session: &SqlSession, sql: &str) -> Result<SchemaRef, Status> {
        let statement = self.statement(session, sql).await?;
        let mut ev = session.event(shape(&statement.to_string()));
        let (_, plan) = session
            .plan(&statement, &mut ev)
            .await
            .map_err(|e| status(&e))?;
        Ok(Arc::new(plan.schema().as_arrow().clone()))
    }

    /// A permit to stream a result, or `53300`.
    fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            status(&SqlError::too_many_connections(
                self.app.limits.max_sql_connections,
            ))
        })
    }

    /// Runs `sql` and streams its batches as Flight data.
    async fn run(
        &self,
        metadata: &MetadataMap,
        sql: &str,
    ) -> Result<Response<DoGetStream>, Status> {
        let session = self.session(metadata).await?;
        let permit = self.slot()?;
        let statement = self.statement(&session, sql).await?;
        let ev = session.event(shape(&statement.to_string()));
        let (running, _notice) = session
            .run(&statement, None, ev, None, super::dp::DEFAULT_EPSILON)
            .await
            .map_err(|e| status(&e))?;
        Ok(stream(running, permit))
    }

    /// The flight info of `sql`: its schema and a ticket (`ticket`, which
    /// plans and runs it when fetched). A differentially private query is
    /// answered now instead, so that the schema's metadata carries its
    /// cost and noise; its ticket fetches that answer.
    async fn flight_info(
        &self,
        request: Request<FlightDescriptor>,
        sql: &str,
        ticket: Vec<u8>,
    ) -> Result<Response<FlightInfo>, Status> {
        let session = self.session(request.metadata()).await?;
        let statement = self.statement(&session, sql).await?;
        let private = session
            .session_catalog()
            .is_ok_and(|c| super::dp::recognize(&statement, &c.dp, 0.0).is_some());
        if !private {
            let schema = self.describe(&session, sql).await?;
            return Ok(Response::new(info(&schema, ticket, request.into_inner())?));
        }
        let ev = session.event(shape(&statement.to_string()));
        let (running, _notice) = session
            .run(&statement, None, ev, None, super::dp::DEFAULT_EPSILON)
            .await
            .map_err(|e| status(&e))?;
        let schema = Arc::clone(&running.schema);
        let mut id = [0u8; 16];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id);
        let token = bearer(request.metadata()).map_err(|e| status(&e))?;
        {
            let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
            answers.retain(|_, a| a.at.elapsed() < ANSWER_TTL);
            answers.insert(
                id,
                Answer {
                    token: token_key(&token),
                    running,
                    at: std::time::Instant::now(),
                },
            );
        }
        let handle: Vec<u8> = std::iter::once(ANSWER_TICKET).chain(id).collect();
        let ticket = TicketStatementQuery {
            statement_handle: handle.into(),
        };
        let info = info(
            &schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    /// Streams the answer a ticket names, to the token that asked for it.
    fn fetch(&self, metadata: &MetadataMap, id: &[u8]) -> Result<Response<DoGetStream>, Status> {
        let token = bearer(metadata).map_err(|e| status(&e))?;
        let gone = || {
            Status::not_found(
                "this ticket's answer was fetched already or has expired; ask for the flight info again",
            )
        };
        let id: [u8; 16] = id.try_into().map_err(|_| gone())?;
        let answer = {
            let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
            match answers.get(&id) {
                Some(a) if a.token == token_key(&token) => answers.remove(&id),
                _ => None,
            }
        }
        .filter(|a| a.at.elapsed() < ANSWER_TTL)
        .ok_or_else(gone)?;
        Ok(stream(answer.running, self.slot()?))
    }

    /// The consumer's tables: their names and the schemas they see.
    async fn tables(
        &self,
        metadata: &MetadataMap,
    ) -> Result<(String, Vec<(String, SchemaRef)>), Status> {
        let session = self.session(metadata).await?;
        let catalog = session.session_catalog().map_err(|e| status(&e))?;
        let db = database_name(&catalog.bundle.view().info.id).to_string();
        let mut out = Vec::new();
        if let Some(schema) = catalog.ctx.catalog(&db).and_then(|c| c.schema(SCHEMA)) {
            let mut names = schema.table_names();
            names.sort();
            for name in names {
                if let Ok(Some(t)) = schema.table(&name).await {
                    out.push((name, t.schema()));
                }
            }
        }
        Ok((db, out))
    }
}

/// The running query's batches as Flight data, counted into its
/// completion; `permit` is held until the stream ends.
fn stream(
    running: super::query::Running,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response<DoGetStream> {
    let schema = Arc::clone(&running.schema);
    let bytes = Arc::clone(&running.completion.bytes);
    let batches = running
        .map(|r| r.map_err(|e| arrow_flight::error::FlightError::Tonic(Box::new(status(&e)))));
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches)
        .map(move |d| {
            let _permit = &permit;
            match d {
                Ok(d) => {
                    let n = d.data_body.len() + d.data_header.len();
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                    Ok(d)
                }
                Err(e) => Err(Status::from(e)),
            }
        });
    Response::new(Box::pin(stream))
}

impl Flight {
    /// The flight info of a catalog listing: its schema, and a ticket that
    /// fetches it (for the caller's session).
    async fn listing(
        &self,
        request: Request<FlightDescriptor>,
        schema: &Schema,
        ticket: Vec<u8>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.session(request.metadata()).await?;
        Ok(Response::new(info(schema, ticket, request.into_inner())?))
    }
}

fn info(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo, Status> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("cannot encode the schema: {e}")))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor))
}

fn one_batch(
    schema: SchemaRef,
    batch: Result<datafusion::arrow::array::RecordBatch, arrow_flight::error::FlightError>,
) -> Response<DoGetStream> {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(async move { batch }))
        .map(|d| d.map_err(Status::from));
    Response::new(Box::pin(stream))
}

fn read_only() -> Status {
    status(&SqlError::new(
        "25006",
        "read_only",
        "the ports of a data product are read only; only queries run here",
    ))
}

#[tonic::async_trait]
impl FlightSqlService for Flight {
    type FlightService = Flight;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let token = if let Some(basic) = header.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(basic.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    status(&SqlError::bad_token("the Basic credentials do not decode"))
                })?;
            let (user, password) = decoded.split_once(':').unwrap_or(("", decoded.as_str()));
            let mut md = MetadataMap::new();
            let bearer = MetadataValue::try_from(format!("Bearer {password}"))
                .map_err(|_| status(&SqlError::bad_token("the token is not a well-formed JWT")))?;
            md.insert("authorization", bearer);
            let session = self.session(&md).await?;
            if !user.is_empty() && user != session.who.principal.id {
                return Err(status(&SqlError::new(
                    "28000",
                    "unauthorized",
                    format!(
                        "the user name must be your token's subject, `{}`, or empty",
                        session.who.principal.id
                    ),
                )));
            }
            password.to_string()
        } else {
            self.session(request.metadata()).await?;
            bearer(request.metadata()).map_err(|e| status(&e))?
        };
        let answer = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        };
        let mut response: Response<Pin<Box<dyn Stream<Item = _> + Send>>> =
            Response::new(Box::pin(futures::stream::iter([Ok(answer)])));
        if let Ok(v) = MetadataValue::try_from(format!("Bearer {token}")) {
            response.metadata_mut().insert("authorization", v);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = TicketStatementQuery {
            statement_handle: query.query.clone().into_bytes().into(),
        };
        self.flight_info(request, &query.query, ticket.as_any().encode_to_vec())
            .await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let sql = handle_sql(&cmd.prepared_statement_handle)?;
        self.flight_info(request, &sql, cmd.as_any().encode_to_vec())
            .await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        if let Some((&ANSWER_TICKET, id)) = ticket.statement_handle.split_first() {
            return self.fetch(request.metadata(), id);
        }
        let sql = handle_sql(&ticket.statement_handle)?;
        self.run(request.metadata(), &sql).await
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let sql = handle_sql(&query.prepared_statement_handle)?;
        self.run(request.metadata(), &sql).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let session = self.session(request.metadata()).await?;
        let schema = self.describe(&session, &query.query).await?;
        let IpcMessage(dataset_schema) = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(|e| Status::internal(format!("cannot encode the schema: {e}")))?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: query.query.into_bytes().into(),
            dataset_schema,
            parameter_schema: Default::default(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.listing(request, &schema, query.as_any().encode_to_vec())
            .await
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (db, _) = self.tables(request.metadata()).await?;
        let mut b = query.into_builder();
        b.append(db);
        Ok(one_batch(b.schema(), b.build()))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.listing(request, &schema, query.as_any().encode_to_vec())
            .await
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (db, _) = self.tables(request.metadata()).await?;
        let mut b = query.into_builder();
        b.append(db, SCHEMA);
        Ok(one_batch(b.schema(), b.build()))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.listing(request, &schema, query.as_any().encode_to_vec())
            .await
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (db, tables) = self.tables(request.metadata()).await?;
        let mut b = query.into_builder();
        for (name, schema) in tables {
            b.append(&db, SCHEMA, &name, "TABLE", &schema)
                .map_err(|e| Status::internal(format!("cannot list the tables: {e}")))?;
        }
        Ok(one_batch(b.schema(), b.build()))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.listing(request, &schema, query.as_any().encode_to_vec())
            .await
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.session(request.metadata()).await?;
        let mut b = query.into_builder();
        b.append("TABLE");
        Ok(one_batch(b.schema(), b.build()))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let data = SQL_INFO
            .as_ref()
            .ok_or_else(|| Status::internal("the server's SQL info could not be built"))?;
        let schema = query.clone().into_builder(data).schema();
        self.listing(request, &schema, query.as_any().encode_to_vec())
            .await
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.session(request.metadata()).await?;
        let data = SQL_INFO
            .as_ref()
            .ok_or_else(|| Status::internal("the server's SQL info could not be built"))?;
        let b = query.into_builder(data);
        Ok(one_batch(b.schema(), b.build()))
    }

    async fn do_put_statement_update(
        &self,
        _ticket: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.session(request.metadata()).await?;
        Err(read_only())
    }

    async fn do_put_statement_ingest(
        &self,
        _ticket: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.session(request.metadata()).await?;
        Err(read_only())
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<DoGetStream>, Status> {
        Err(status(&SqlError::not_supported(format!(
            "the Flight SQL command `{}`",
            message.type_url.chars().take(80).collect::<String>()
        ))))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// The SQL a ticket or prepared-statement handle holds.
fn handle_sql(handle: &[u8]) -> Result<String, Status> {
    String::from_utf8(handle.to_vec()).map_err(|_| {
        status(&SqlError::new(
            "22021",
            "bad_query",
            "the statement handle is not UTF-8",
        ))
    })
}
