//! The client WebSocket upgrade (RFC 6455 §4.2), done here instead of by axum's
//! `WebSocketUpgrade` so that a connection keeps hold of its socket. axum's `WebSocket` hides
//! the byte stream under the WebSocket framing, and a connection refused for an oversized message
//! must go on reading that stream after the framing gave up, or its close frame is lost to a
//! reset (see [`crate::linger`]). The checks and the answer are the ones axum makes.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::{Instrument, debug};

/// A client's upgraded socket: WebSocket framing over the raw byte stream, which
/// [`WebSocketStream::into_inner`] gives back.
pub type ClientSocket = WebSocketStream<TokioIo<Upgraded>>;

/// A valid WebSocket upgrade request, not yet answered.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a WebSocket upgrade this server accepts.
#[derive(Debug, thiserror::Error)]
pub enum NotUpgrade {
    #[error("a WebSocket upgrade must be a GET")]
    Method,
    #[error("not a WebSocket upgrade: `Connection: upgrade` and `Upgrade: websocket` are required")]
    Headers,
    #[error("`Sec-WebSocket-Version: 13` is required")]
    Version,
    #[error("`Sec-WebSocket-Key` is missing")]
    Key,
    #[error("this connection cannot be upgraded (WebSocket needs HTTP/1.1)")]
    NotUpgradable,
}

impl IntoResponse for NotUpgrade {
    fn into_response(self) -> Response {
        let status = match self {
            NotUpgrade::Method => StatusCode::METHOD_NOT_ALLOWED,
            NotUpgrade::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, self.to_string()).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = NotUpgrade;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, NotUpgrade> {
        if parts.version != Version::HTTP_11 {
            return Err(NotUpgrade::NotUpgradable);
        }
        if parts.method != Method::GET {
            return Err(NotUpgrade::Method);
        }
        let h = &parts.headers;
        if !has_token(h, header::CONNECTION, "upgrade")
            || !has_token(h, header::UPGRADE, "websocket")
        {
            return Err(NotUpgrade::Headers);
        }
        if !has_token(h, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(NotUpgrade::Version);
        }
        let key = h
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(NotUpgrade::Key)?
            .clone();
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(NotUpgrade::NotUpgradable)?;
        Ok(Upgrade { key, on_upgrade })
    }
}

impl Upgrade {
    /// Answers 101 and, once the connection has switched, runs `serve` on the socket.
    pub fn on_upgrade<F, Fut>(self, config: WebSocketConfig, serve: F) -> Response
    where
        F: FnOnce(ClientSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        // The connection's task runs under the node's span (`node{region=..}`); so does this one.
        tokio::spawn(
            async move {
                match on_upgrade.await {
                    Ok(upgraded) => {
                        let io = TokioIo::new(upgraded);
                        serve(
                            WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await,
                        )
                        .await
                    }
                    Err(e) => debug!(error = %e, "WebSocket upgrade failed"),
                }
            }
            .in_current_span(),
        );
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (
                    header::SEC_WEBSOCKET_ACCEPT,
                    HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
                ),
            ],
        )
            .into_response()
    }
}

/// Whether one of the comma-separated values of `name` is `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}
