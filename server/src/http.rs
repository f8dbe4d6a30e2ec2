//! The HTTP surface, assembled in one place so it reads top to bottom:
//!
//! - `GET /ws/{doc}`: the y-websocket endpoint; `{doc}` is the rest of the path (may hold `/`).
//! - `GET /healthz`: 200 once the server is serving; `GET /readyz`: 200 or 503 ([`crate::health`]).
//! - `GET /api/docs/{doc}/update`: the document's state as one Yjs v1 update.
//! - `GET /api/docs/{doc}/text/{name}`: the plain text of its `Y.Text` root `{name}`.
//! - `GET /api/status`: node status as JSON.
//! - `GET /metrics`: the node's Prometheus metrics ([`crate::metrics`]).
//! - `GET /`, `/app.js`, `/style.css`: the web demo.
//!
//! With auth on ([`crate::auth`]), `/ws` and `/api/docs` need read access to the document and
//! `/api/status` and `/metrics` need an admin token; the refusal (401, 403) comes before any work,
//! and before the upgrade. `/healthz`, `/readyz`, the demo's static files and `/peer` (which
//! authenticates itself) stay open.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Extension, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use concord_crdt::{DocName, DocState};
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tower_http::cors::{Any, CorsLayer};
use tracing::{Instrument, debug, warn};

use crate::app::App;
use crate::auth::{Credentials, Grant, Need, Refusal};
use crate::handles::{ReadKind, RoomMsg};
use crate::replication::socket::bridge;
use crate::store::StoreError;
use crate::tls::Transport;
use crate::upgrade::Upgrade;
use crate::{connection, replication};

pub fn router(app: Arc<App>) -> Router {
    // The read API and status may be read from another region's page (the demo's replication
    // panel polls every region): allow cross-origin GETs. They expose nothing a client of the
    // document could not read anyway, and with auth on they need the same token.
    let api = Router::new()
        .route("/api/status", get(status))
        .route("/api/docs/{*rest}", get(doc_read))
        .layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods([Method::GET])
                .allow_headers([header::AUTHORIZATION]),
        );
    Router::new()
        .route("/", get(demo))
        .route("/app.js", get(demo_js))
        .route("/style.css", get(demo_css))
        .route("/healthz", get(crate::health::healthz))
        .route("/readyz", get(crate::health::readyz))
        .route("/metrics", get(metrics))
        .route("/ws/{*doc}", get(websocket))
        .route("/peer", get(peer))
        .merge(api)
        .with_state(app)
}

/// `?token=`: how browser clients (y-websocket's `params: { token }`) pass a token; server-side
/// clients may send `Authorization: Bearer` instead.
#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// Asks the gate; a refusal is logged at warn (reason, document, address, `sub`; never the
/// token) and becomes the response.
async fn authorize(
    app: &App,
    need: Need,
    doc: Option<&DocName>,
    remote: SocketAddr,
    headers: &HeaderMap,
    query: TokenQuery,
) -> Result<Grant, Response> {
    let creds = Credentials::from_request(headers, query.token);
    app.gate.check(need, doc, &creds).await.map_err(|refusal| {
        app.metrics.refused(refusal.kind);
        refuse(refusal, need, doc, remote)
    })
}

fn refuse(refusal: Refusal, need: Need, doc: Option<&DocName>, remote: SocketAddr) -> Response {
    let Refusal {
        status,
        kind: _,
        reason,
        sub,
        detail,
    } = refusal;
    warn!(
        %remote,
        doc = %doc.map_or("-", |d| d.as_str()),
        sub = %sub.as_deref().unwrap_or("-"),
        ?need,
        status = status.as_u16(),
        %reason,
        detail = detail.as_deref().unwrap_or(""),
        "access refused"
    );
    (status, reason).into_response()
}

/// Node status as JSON: identity, live documents and connections, and every peer with its link
/// state, last contact, acknowledged sequence and backlog. Needs an admin token with auth on.
async fn status(
    State(app): State<Arc<App>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    if let Err(refused) = authorize(&app, Need::Admin, None, remote, &headers, query).await {
        return refused;
    }
    let status = crate::status::render(
        &app.replication,
        app.registry.live(),
        app.metrics.connections_open.get().max(0) as usize,
    );
    axum::Json(status).into_response()
}

/// The node's Prometheus metrics ([`crate::internal::exposition`]). Needs an admin token with
/// auth on, like `/api/status`; `--metrics-listen` serves them without one.
async fn metrics(
    State(app): State<Arc<App>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    if let Err(refused) = authorize(&app, Need::Admin, None, remote, &headers, query).await {
        return refused;
    }
    crate::internal::exposition(&app)
}

/// A peer node's link. Authentication happens over the socket (challenge/response), so the
/// upgrade is open to anyone when this node has a secret, but only to a few at a time: until it
/// authenticates, a socket may buffer one message of up to [`replication::PEER_MAX_MESSAGE`].
/// A node without `--peer-secret` refuses before the upgrade, and so does one with
/// `--peer-tls-required` to a plain connection. Over TLS the handshake is bound to the session.
async fn peer(
    State(app): State<Arc<App>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Extension(transport): Extension<Transport>,
    ws: WebSocketUpgrade,
) -> Response {
    let hub = app.replication.clone();
    if hub.secret().is_none() {
        warn!(%remote, "peer link refused: this node has no --peer-secret");
        return (
            StatusCode::FORBIDDEN,
            "peer links are disabled on this node (no --peer-secret)",
        )
            .into_response();
    }
    if app.config.tls.peer_tls_required && !transport.is_tls() {
        warn!(%remote, "peer link refused: plain connection, and this node has --peer-tls-required");
        return (
            StatusCode::FORBIDDEN,
            "this node accepts peer links over TLS only (--peer-tls-required)",
        )
            .into_response();
    }
    if !transport.can_bind_peer_link() {
        warn!(%remote, "peer link refused: TLS older than 1.3 (its session cannot be bound)");
        return (StatusCode::FORBIDDEN, "peer links over TLS need TLS 1.3").into_response();
    }
    let Some(slot) = hub.handshake_slot() else {
        debug!(%remote, "too many peer handshakes at once; refused");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many peer handshakes in progress; retry",
        )
            .into_response();
    };
    // Messages arrive cut into frames and are put back together by the bridge (which holds
    // them to `PEER_MAX_MESSAGE`).
    let span = tracing::Span::current();
    let registry = app.registry.clone();
    ws.max_message_size(replication::socket::MAX_FRAME)
        .max_frame_size(replication::socket::MAX_FRAME)
        .on_upgrade(move |socket| {
            // axum runs this in a task of its own: it enters the node's span again.
            let _node = span.enter();
            let sock = bridge(socket, hub.shutdown.child_token(), &hub.tasks);
            // Tracked with the rest of replication, so shutdown waits for the link's last writes.
            let tasks = hub.tasks.clone();
            tasks.track_future(
                replication::link::accept(
                    hub,
                    registry,
                    sock,
                    remote,
                    slot,
                    transport.binding().to_vec(),
                )
                .instrument(span.clone()),
            )
        })
}

/// The read API. `{rest}` is `{doc}/update` or `{doc}/text/{name}`; the document name may hold
/// `/`, the text root name may not. Served from the live room when there is one (which answers
/// with committed state only), otherwise straight from the store without starting a room.
async fn doc_read(
    State(app): State<Arc<App>>,
    Path(rest): Path<String>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    let (name, kind) = if let Some(name) = rest.strip_suffix("/update") {
        (name, ReadKind::Update)
    } else if let Some((name, root)) = rest.rsplit_once("/text/") {
        (name, ReadKind::Text(root.to_string()))
    } else {
        return (
            StatusCode::NOT_FOUND,
            "expected /api/docs/{doc}/update or /api/docs/{doc}/text/{name}",
        )
            .into_response();
    };
    let text = matches!(kind, ReadKind::Text(_));
    let doc = match DocName::parse_with_limit(name, app.config.max_doc_name) {
        Ok(doc) => doc,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    if let Err(refused) = authorize(&app, Need::Read, Some(&doc), remote, &headers, query).await {
        return refused;
    }
    let answer = match read_doc(&app, &doc, kind).await {
        Ok(answer) => answer,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    match answer {
        None => (
            StatusCode::NOT_FOUND,
            format!("document {doc:?} was never written"),
        )
            .into_response(),
        Some(body) if text => {
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
        }
        Some(body) => ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response(),
    }
}

/// Why an HTTP read of a document failed (500, with this text).
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("document closed while reading; retry")]
    Closed,
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

async fn read_doc(app: &App, doc: &DocName, kind: ReadKind) -> Result<Option<Vec<u8>>, ReadError> {
    if let Some(room) = app.registry.live_room(doc) {
        let (reply, answer) = oneshot::channel();
        if room.tx.send(RoomMsg::Read { kind, reply }).await.is_ok() {
            return answer.await.map_err(|_| ReadError::Closed);
        }
        return Err(ReadError::Closed);
    }
    let Some(stored) = app.registry.store.load(doc).await? else {
        return Ok(None);
    };
    let state = DocState::load_with(app.config.doc_mode.into(), stored.parts())
        .map_err(|e| ReadError::Corrupt(e.to_string()))?;
    Ok(Some(match kind {
        ReadKind::Update => state.full_state(),
        ReadKind::Text(root) => state.text(&root).unwrap_or_default().into_bytes(),
    }))
}

// The demo is embedded at build time, so the binary serves it from anywhere. `web-demo/dist/`
// is built by `npm run build` in web-demo/ and committed (tests/browser checks it is current).
/// The page may carry `?token=` in its URL: no `Referer` with it to anything it links to.
async fn demo() -> impl IntoResponse {
    (
        [(header::REFERRER_POLICY, "no-referrer")],
        Html(include_str!("../../web-demo/index.html")),
    )
}

async fn demo_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../web-demo/dist/app.js"),
    )
}

async fn demo_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../web-demo/style.css"),
    )
}

/// Validates the name and the token before upgrading, so a bad name costs a 400, a full server
/// (`--max-connections`, `--max-live-docs`) a 503, a missing or bad token a 401 and a token
/// without access a 403, and none of them a socket: clients retry rejected upgrades in a loop,
/// so rejection must be cheap.
async fn websocket(
    State(app): State<Arc<App>>,
    Path(doc): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    ws: Upgrade,
) -> Response {
    let doc = match DocName::parse_with_limit(&doc, app.config.max_doc_name) {
        Ok(doc) => doc,
        Err(e) => {
            debug!(%peer, error = %e, "refused document name");
            return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
        }
    };
    // A place under the connection limits, held by the connection task until it ends. Taken
    // first: a full server answers 503 without asking the auth backend.
    let permit = match app.admission.try_admit(peer.ip()) {
        Ok(permit) => permit,
        Err(refusal) => {
            app.metrics.refused(refusal.kind());
            return (refusal.status(), refusal.to_string()).into_response();
        }
    };
    let grant = match authorize(&app, Need::Connect, Some(&doc), peer, &headers, query).await {
        Ok(grant) => grant,
        Err(refused) => return refused,
    };
    // The new document's place under `--max-live-docs`, held until the room it starts takes it
    // over. Checked after auth: whether a document is live is not for anonymous callers to learn
    // (503 for a document not live, 401 for a live one, would tell them).
    let slot = match app.registry.reserve(&doc) {
        Ok(slot) => slot,
        Err(refusal) => {
            app.metrics.refused(refusal.kind());
            return (refusal.status(), refusal.to_string()).into_response();
        }
    };
    let limit = app.config.max_message_size;
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
        // Small buffers: most connections are idle most of the time, and tungstenite grows the
        // read buffer as large messages require.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0);
    ws.on_upgrade(config, move |socket| {
        let tasks = app.tasks.clone();
        tasks.track_future(async move {
            connection::serve(socket, doc, peer, grant, slot, app).await;
            drop(permit);
        })
    })
}
