//! The internal listener (`--metrics-listen ADDR`): plain HTTP, no authentication, for a
//! scraper and probes inside the network (`/metrics`, `/healthz`, `/readyz`). It serves only what [`router`] lists, never
//! documents, and stops with the node.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info};

use crate::app::App;

/// The internal listener's routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(app.clone())
        .merge(crate::health::router(app))
}

/// The node's metrics exposition (also served, behind the admin gate, on the main listener).
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    exposition(&app)
}

/// The exposition as a response, with the content type of its format.
pub fn exposition(app: &App) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        app.metrics.render(),
    )
        .into_response()
}

/// Binds `addr` (so a bad address fails the start, not later) and returns the task serving it
/// with the main listener's accept loop (its header deadline and pending-connection cap) until
/// `stop` is cancelled.
pub async fn bind(
    addr: SocketAddr,
    app: Arc<App>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
    info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz without authentication");
    let limits = &app.config.limits;
    let (timeout, pending) = (
        limits.handshake_timeout,
        limits.max_pending_connections as usize,
    );
    let routes = router(app);
    Ok(tokio::spawn(
        crate::listen::serve(listener, routes, None, timeout, pending, stop).in_current_span(),
    ))
}
