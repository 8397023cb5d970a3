//! The HTTP/1.1 servers of the data and control ports. Each takes its
//! listener and shutdown signal as arguments, so tests bind `127.0.0.1:0`
//! and stop it at will.
//! Shutdown stops accepting, then drains in-flight responses (bounded by
//! `limits.drain_timeout_ms`).

use crate::body::Body;
use crate::pipeline::App;
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
    serve_with(listener, app, shutdown, |app, req| async move {
        crate::pipeline::handle(&app, req).await
    })
    .await;
}

/// Serves the control port (see [`crate::control`]) until `shutdown`.
pub async fn serve_control(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, app, shutdown, |app, req| async move {
        crate::control::handle(&app, req).await
    })
    .await;
}

/// Serves `handler` with the sidecar's connection limits until `shutdown`
/// completes, then drains.
async fn serve_with<H, F>(
    listener: TcpListener,
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
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // e.g. out of file descriptors: back off, keep serving.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = Arc::clone(&app);
                let handler = handler.clone();
                let svc = service_fn(move |req| {
                    let fut = handler(Arc::clone(&app), req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("connection ended: {e}");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let drain = Duration::from_millis(app.limits.drain_timeout_ms);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("drained"),
        () = tokio::time::sleep(drain) => tracing::warn!("drain timed out; closing remaining connections"),
    }
}
