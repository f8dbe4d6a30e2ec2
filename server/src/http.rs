//! The HTTP surface, assembled in one place so it reads top to bottom:
//!
//! - `GET /ws/{doc}`: the y-websocket endpoint; `{doc}` is the rest of the path (may hold `/`).
//! - `GET /healthz`: 200 once the server is serving.
//! - `GET /`: the web demo.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use concord_crdt::DocName;
use tracing::debug;

use crate::{App, connection};

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(demo))
        .route("/healthz", get(healthz))
        .route("/api/status", get(status))
        .route("/ws/{*doc}", get(websocket))
        .with_state(app)
}

async fn healthz() -> &'static str {
    "ok"
}

/// Node status as JSON: live documents and connections (replication adds its peers here).
async fn status(State(app): State<Arc<App>>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "documents": app.registry.live(),
        "connections": app.connections.load(std::sync::atomic::Ordering::Relaxed),
    }))
}

async fn demo() -> Html<&'static str> {
    Html(include_str!("../../web-demo/index.html"))
}

/// Validates the name before upgrading, so a bad name costs a 400 and no socket: clients retry
/// rejected upgrades in a loop, so rejection must be cheap.
async fn websocket(
    State(app): State<Arc<App>>,
    Path(doc): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let doc = match DocName::parse_with_limit(&doc, app.config.max_doc_name) {
        Ok(doc) => doc,
        Err(e) => {
            debug!(%peer, error = %e, "refused document name");
            return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
        }
    };
    let limit = app.config.max_message_size;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        // Small buffers: most connections are idle most of the time, and tungstenite grows the
        // read buffer as large messages require.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| {
            let tasks = app.tasks.clone();
            tasks.track_future(connection::serve(socket, doc, peer, app))
        })
}
