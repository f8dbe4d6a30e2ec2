//! Opening a client WebSocket: TCP (no Nagle), TLS for `wss://`, then the WebSocket handshake.
//! Done by hand rather than with `connect_async`, so that `wss://` uses this run's trust (the
//! certificate `--tls` generated) and the ring provider.

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::either::Either;

/// A client WebSocket over plain TCP or TLS.
pub type Ws = WebSocketStream<Either<TcpStream, TlsStream<TcpStream>>>;

/// Opens client WebSockets; cheap to clone.
#[derive(Clone)]
pub struct Dialer {
    tls: Option<TlsConnector>,
}

impl Dialer {
    /// `ws://` only.
    pub fn plain() -> Dialer {
        Dialer { tls: None }
    }

    /// `ws://`, and `wss://` trusting what `config` trusts.
    pub fn with_tls(config: Arc<rustls::ClientConfig>) -> Dialer {
        Dialer {
            tls: Some(TlsConnector::from(config)),
        }
    }

    /// Connects to `url` (`ws://` or `wss://`) and completes the WebSocket handshake.
    pub async fn connect(&self, url: &str, config: WebSocketConfig) -> Result<Ws, String> {
        let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let secure = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(format!("{url}: not a ws:// or wss:// URL")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("{url}: no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let stream = if secure {
            let tls = self
                .tls
                .as_ref()
                .ok_or("wss:// needs TLS: pass --tls, or --tls-ca for a target")?;
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| format!("{host}: {e}"))?;
            Either::Right(
                tls.connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?,
            )
        } else {
            Either::Left(tcp)
        };
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .map_err(|e| e.to_string())?;
        Ok(ws)
    }
}
