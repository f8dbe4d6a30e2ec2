//! The accept loop of `--listen`, plain TCP or TLS: each connection is served by hyper (HTTP/1.1
//! with upgrades, for WebSockets) after an optional TLS handshake.
//!
//! It exists instead of `axum::serve` for what that cannot do:
//! - TLS ([`crate::tls::server`]), and the [`Transport`] of each connection as a request
//!   extension (next to axum's `ConnectInfo<SocketAddr>`), for the peer handshake's binding;
//! - slowloris protection: a connection must finish its TLS handshake and send its first
//!   request's headers within `--handshake-timeout` of being accepted, or it is cut; later
//!   requests on a kept-alive connection get the same time for their headers.
//!
//! - HTTP/1.1 only: WebSockets need it, and HTTP/2 has no timeout for later requests' headers.
//! - a cap on connections that have not upgraded yet (`--max-pending-connections`): past it a
//!   new socket is closed at once, so silent or slow sockets cannot take every file descriptor.
//!
//! Shutdown works as with axum: stop accepting, let HTTP connections finish what they are
//! doing (for at most [`SHUTDOWN_GRACE`]), and return. Upgraded sockets are the caller's to
//! wait for.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1::Builder;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;
use tracing::{Instrument, debug, error, warn};

use crate::tls::Transport;

/// How long shutdown waits for HTTP connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every connection is served with.
struct Serving {
    router: Router,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    http: Builder,
    shutdown: CancellationToken,
}

/// Serves `router` on `listener` until `shutdown`, then waits for the connections still doing
/// HTTP (not for upgraded ones).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    max_pending: usize,
    shutdown: CancellationToken,
) {
    // hyper's own HTTP/1 builder: hyper-util's auto builder still serves HTTP/2 with upgrades on,
    // even when told HTTP/1 only.
    let mut http = Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout);
    let serving = Arc::new(Serving {
        router,
        tls,
        handshake_timeout,
        http,
        shutdown: shutdown.clone(),
    });
    let connections = TaskTracker::new();
    let pending = Arc::new(tokio::sync::Semaphore::new(max_pending));
    let mut last_full_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors, most likely: wait instead of spinning.
                error!("accept failed: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
        };
        // A place among the connections not yet upgraded, held until this one upgrades or ends.
        let Ok(place) = pending.clone().try_acquire_owned() else {
            if last_full_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                last_full_warning = Some(Instant::now());
                warn!(%remote, max = max_pending, "too many connections not yet upgraded (--max-pending-connections); closing new ones");
            }
            drop(tcp);
            continue;
        };
        // Small frames must leave at once: Nagle's algorithm would hold them for the peer's
        // delayed ACK (~40 ms), which is most of a latency budget.
        if let Err(e) = tcp.set_nodelay(true) {
            warn!("could not set TCP_NODELAY: {e}");
        }
        let serving = serving.clone();
        connections.spawn(
            async move {
                serving.connection(tcp, remote).await;
                drop(place);
            }
            .in_current_span(),
        );
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        warn!("some HTTP connections did not finish within {SHUTDOWN_GRACE:?}; leaving them");
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

impl Serving {
    async fn connection(self: Arc<Self>, tcp: TcpStream, remote: SocketAddr) {
        let deadline = Instant::now() + self.handshake_timeout;
        let Some(acceptor) = self.tls.clone() else {
            return self
                .serve_http(tcp, remote, Transport::Plain, deadline)
                .await;
        };
        let handshake = tokio::select! {
            handshake = tokio::time::timeout_at(deadline, acceptor.accept(tcp)) => handshake,
            _ = self.shutdown.cancelled() => return,
        };
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            // Scanners, and browsers refusing the certificate, do this all day: not a warning.
            Ok(Err(e)) => {
                debug!(%remote, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!(%remote, "TLS handshake not finished within --handshake-timeout; cut");
                return;
            }
        };
        let transport = match crate::tls::binding(stream.get_ref().1) {
            Ok(binding) => Transport::Tls {
                binding,
                tls13: stream.get_ref().1.protocol_version()
                    == Some(rustls::ProtocolVersion::TLSv1_3),
            },
            Err(e) => {
                warn!(%remote, error = %e, "TLS session without an exporter; closed");
                return;
            }
        };
        self.serve_http(stream, remote, transport, deadline).await
    }

    /// Serves HTTP on `io`. Until its first request's headers are in, the connection lives only
    /// until `deadline` (hyper's header timeout starts late, once it knows the HTTP version).
    async fn serve_http<I>(
        &self,
        io: I,
        remote: SocketAddr,
        transport: Transport,
        deadline: Instant,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let requested = Arc::new(Notify::new());
        let router = self.router.clone();
        let notify = requested.clone();
        let service = tower::service_fn(move |mut req: Request<Incoming>| {
            notify.notify_one();
            req.extensions_mut().insert(ConnectInfo(remote));
            req.extensions_mut().insert(transport.clone());
            router.clone().call(req)
        });
        let conn = self
            .http
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
            .with_upgrades();
        let mut conn = pin!(conn);
        let mut expiry = pin!(tokio::time::sleep_until(deadline));
        let (mut started, mut closing) = (false, false);
        loop {
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        debug!(%remote, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = requested.notified(), if !started => started = true,
                _ = &mut expiry, if !started => {
                    debug!(%remote, "no request within --handshake-timeout; cut");
                    return;
                }
                _ = self.shutdown.cancelled(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
