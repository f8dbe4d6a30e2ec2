//! The dialing side of peer links: opens the socket to a peer's `/peer` endpoint, over TLS for a
//! `wss://` endpoint (from an `https://` peer URL), and returns the WebSocket with the session's
//! channel binding for the handshake. Peers are verified against the system roots plus
//! `--peer-ca`; a peer that cannot prove its name with them is not spoken to.
//! Peer links use TLS 1.3 only: both ends are Concord, and its exporter is per connection.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::either::Either;
use tracing::{info, warn};

use super::TlsError;
use crate::config::TlsArgs;

/// A dialed peer socket: TLS or plain TCP.
pub type PeerStream = Either<TlsStream<TcpStream>, TcpStream>;

/// A peer WebSocket, open and upgraded, not yet authenticated.
pub struct Dialed {
    pub ws: WebSocketStream<PeerStream>,
    /// What the handshake binds its proofs to: the TLS exporter value, empty for a plain link.
    pub binding: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("bad peer URL {0}: {1}")]
    Url(String, String),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(String, std::io::Error),
    #[error("no TLS settings for https:// peers on this node")]
    NoTls,
    #[error("TLS session without an exporter: {0}")]
    Binding(rustls::Error),
    #[error("WebSocket upgrade failed: {0}")]
    Upgrade(#[from] tokio_tungstenite::tungstenite::Error),
}

/// How this node dials its peers.
#[derive(Clone, Default)]
pub struct PeerTls {
    /// For `wss://` endpoints; `None` when no configured peer uses TLS.
    client: Option<Arc<ClientConfig>>,
}

/// The WebSocket URL of a peer's link endpoint, from its base URL.
pub fn peer_endpoint(base: &str) -> String {
    let base = base.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_string()
    } else {
        format!("ws://{base}")
    };
    format!("{ws}/peer")
}

/// Whether `endpoint` (from [`peer_endpoint`]) is dialed over TLS.
pub fn is_tls_endpoint(endpoint: &str) -> bool {
    endpoint.starts_with("wss://")
}

/// Under `--peer-tls-required`, every configured peer must be dialed over TLS.
pub fn check_peers(peers: &[String], required: bool) -> Result<(), TlsError> {
    if !required {
        return Ok(());
    }
    match peers.iter().find(|p| !is_tls_endpoint(&peer_endpoint(p))) {
        Some(plain) => Err(TlsError::PlainPeer(plain.clone())),
        None => Ok(()),
    }
}

impl PeerTls {
    /// From the command line: checks `--peer-tls-required` against the peer URLs, and loads the
    /// trusted roots when some peer is `https://`.
    pub fn from_config(tls: &TlsArgs, peers: &[String]) -> Result<PeerTls, TlsError> {
        check_peers(peers, tls.peer_tls_required)?;
        let any_tls = peers.iter().any(|p| is_tls_endpoint(&peer_endpoint(p)));
        if !any_tls && tls.peer_ca.is_none() {
            return Ok(PeerTls::default());
        }
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        if !native.errors.is_empty() {
            warn!(errors = ?native.errors, "some system root certificates could not be loaded");
        }
        let (system, _) = roots.add_parsable_certificates(native.certs);
        if let Some(ca) = &tls.peer_ca {
            let read = |e: &dyn std::fmt::Display| TlsError::Read {
                path: ca.clone(),
                reason: e.to_string(),
            };
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| read(&e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| read(&e))?;
            if certs.is_empty() {
                return Err(TlsError::NoCertificate { path: ca.clone() });
            }
            for cert in certs {
                roots.add(cert)?;
            }
        }
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        info!(
            system_roots = system,
            peer_ca = ?tls.peer_ca,
            "https:// peers are verified against the system roots and --peer-ca"
        );
        let config = ClientConfig::builder_with_provider(super::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(PeerTls {
            client: Some(Arc::new(config)),
        })
    }

    /// Connects to `endpoint` (`ws://` or `wss://`) and upgrades to a WebSocket.
    pub async fn dial(&self, endpoint: &str, config: WebSocketConfig) -> Result<Dialed, DialError> {
        let request = endpoint
            .into_client_request()
            .map_err(|e| DialError::Url(endpoint.into(), e.to_string()))?;
        let uri = request.uri();
        let tls = is_tls_endpoint(endpoint);
        let host = uri
            .host()
            .ok_or_else(|| DialError::Url(endpoint.into(), "no host".into()))?;
        // `[::1]` in a URL, `::1` for the resolver and the certificate check.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| DialError::Connect(format!("{host}:{port}"), e))?;
        // Small frames must leave at once (see `listen`).
        let _ = tcp.set_nodelay(true);
        let (stream, binding) = if tls {
            let client = self.client.clone().ok_or(DialError::NoTls)?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| DialError::Url(endpoint.into(), e.to_string()))?;
            let stream = TlsConnector::from(client)
                .connect(name, tcp)
                .await
                .map_err(|e| DialError::Tls(host.clone(), e))?;
            let binding = super::binding(stream.get_ref().1).map_err(DialError::Binding)?;
            (Either::Left(stream), binding.to_vec())
        } else {
            (Either::Right(tcp), Vec::new())
        };
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
        Ok(Dialed { ws, binding })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_required_refuses_every_plain_peer_url() {
        let peers = |urls: &[&str]| urls.iter().map(|u| u.to_string()).collect::<Vec<_>>();
        assert!(check_peers(&peers(&["https://a:1", "wss://b:2"]), true).is_ok());
        for plain in ["http://a:1", "ws://a:1", "a:1"] {
            let err = check_peers(&peers(&["https://ok:1", plain]), true).unwrap_err();
            assert!(
                matches!(&err, TlsError::PlainPeer(p) if p == plain),
                "{err}"
            );
            assert!(check_peers(&peers(&[plain]), false).is_ok());
        }
    }
}
