pub async fn serve(
    _: std::sync::Arc<crate::App>,
    _: tokio::net::TcpListener,
    _: Option<std::sync::Arc<rustls::ServerConfig>>,
    _: impl std::future::Future<Output = ()>,
    _: std::time::Duration,
) {
}
