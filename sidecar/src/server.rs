//! The HTTP/1.1 servers of the data, control and metrics ports. Each takes
//! its listener and shutdown signal as arguments, so tests bind
//! `127.0.0.1:0` and stop it at will.
//!
//! Shutdown closes the listener (new connections are refused), lets every
//! response in flight finish (keep-alive connections close after it), and
//! waits up to `limits.drain_timeout_ms` for that. Connections still open
//! then are closed: their streams end cut short, and their completion
//! events record the outcome `shutdown`. The server returns only once every
//! connection task has ended, so every completion event has been handed to
//! the audit log before the caller closes it.

use crate::app::App;
use crate::body::Body;
use crate::metrics::{Listener, Unparsed};
use crate::write_stall::{Stalled, WriteStall};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Most headers a request may carry.
const MAX_HEADERS: usize = 64;

/// Serves the data port until `shutdown` completes, then drains.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    serve_with(
        listener,
        Listener::Data,
        app,
        shutdown,
        |app, req| async move { crate::data_port::handle(&app, req).await },
    )
    .await;
}

/// Serves the control port (see [`crate::control`]) until `shutdown`.
pub async fn serve_control(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(
        listener,
        Listener::Control,
        app,
        shutdown,
        |app, req| async move { crate::control::handle(&app, req).await },
    )
    .await;
}

/// Serves `GET /metrics` (see [`crate::metrics`]) until `shutdown`.
pub async fn serve_metrics(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(
        listener,
        Listener::Metrics,
        app,
        shutdown,
        |app, req| async move { metrics_route(&app, &req) },
    )
    .await;
}

fn metrics_route<B>(app: &App, req: &Request<B>) -> Response<Body> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/metrics") => (
            http::StatusCode::OK,
            meshgov_metrics::CONTENT_TYPE,
            app.metrics
                .render(&app.bundle, &app.audit, &app.auth, crate::clock::now_unix()),
        ),
        (_, "/metrics") => (
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n".to_string(),
        ),
        _ => (
            http::StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "this listener serves only GET /metrics\n".to_string(),
        ),
    };
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}

/// Serves `handler` with the sidecar's connection limits until `shutdown`
/// completes, then drains.
async fn serve_with<H, F>(
    listener: TcpListener,
    which: Listener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
    handler: H,
) where
    H: Fn(Arc<App>, Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Slowloris: a client must send its whole header block in time.
        .header_read_timeout(Duration::from_millis(app.limits.header_read_timeout_ms))
        // INVARIANT: config guarantees at least 8192, hyper's minimum.
        .max_buf_size(app.limits.max_header_bytes)
        .max_headers(MAX_HEADERS);
    // A client that stops reading fails the write after this long.
    let write_stall = Duration::from_millis(app.limits.write_stall_timeout_ms);
    let graceful = GracefulShutdown::new();
    // Set when the grace period is over: connections still open close.
    let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
    // Every connection task holds a sender; `recv` returns `None` once all
    // of them have ended.
    let (alive_tx, mut alive_rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // e.g. out of file descriptors: back off, keep serving.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let for_requests = Arc::clone(&app);
                let handler = handler.clone();
                let stalled = Stalled::default();
                let io = WriteStall::new(stream, write_stall, stalled.clone());
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(stalled.clone());
                    let fut = handler(Arc::clone(&for_requests), req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(io), svc));
                let (alive, mut cut) = (alive_tx.clone(), cut_rx.clone());
                let app = Arc::clone(&app);
                tokio::spawn(async move {
                    tokio::select! {
                        r = conn => if let Err(e) = r {
                            connection_failed(&app, which, peer, &e);
                        },
                        _ = cut.wait_for(|c| *c) => {}
                    }
                    drop(alive);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(alive_tx);
    let open = graceful.count();
    let drain = Duration::from_millis(app.limits.drain_timeout_ms);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!(connections = open, "drained"),
        () = tokio::time::sleep(drain) => {
            tracing::warn!(
                grace_ms = app.limits.drain_timeout_ms,
                "drain timed out; closing the connections still open"
            );
            app.cut_at_shutdown.store(true, std::sync::atomic::Ordering::Release);
            let _ = cut_tx.send(true);
        }
    }
    let _ = alive_rx.recv().await;
}

/// A connection that ended in an error. A request the HTTP parser refused
/// (hyper answers it: 431, 414 or 400) never reached a handler, so it has
/// no audit event: it is counted in `meshgov_sidecar_http_refused_total`
/// and logged with the peer's address instead. A head that does not arrive
/// in time is not counted: an idle keep-alive connection ends the same way.
fn connection_failed(app: &App, which: Listener, peer: std::net::SocketAddr, e: &hyper::Error) {
    let why = if e.is_parse_too_large() {
        Unparsed::TooLarge
    } else if e.is_parse() {
        Unparsed::Malformed
    } else {
        tracing::debug!("connection ended: {e}");
        return;
    };
    app.metrics.unparsed(which, why);
    tracing::info!(%peer, listener = ?which, reason = why.label(), "request refused by the HTTP parser: {e}");
}
