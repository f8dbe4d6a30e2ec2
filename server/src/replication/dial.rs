//! Dialing a configured peer, forever: connect, authenticate, run the link; when it ends or
//! fails, retry with jittered exponential backoff (100 ms doubling to [`MAX_BACKOFF`]). While a
//! link with that peer exists (it may have dialed us), do not dial a second one. An `https://`
//! peer is dialed over TLS ([`crate::tls::peer`]).

use axum::extract::ws::close_code;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{Instrument, debug, warn};

use super::Replication;
use super::socket::bridge;
use crate::registry::Registry;
use crate::tls::peer::peer_endpoint;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Retries never wait longer than this, so a returning region is found within seconds.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A link up at least this long counts as working: the next dial starts from the first backoff.
const STABLE_LINK: Duration = Duration::from_secs(10);

pub async fn dial_forever(hub: Arc<Replication>, registry: Arc<Registry>, url: String) {
    let endpoint = peer_endpoint(&url);
    let mut backoff = Backoff::default();
    let mut failures = 0u32;
    loop {
        if hub.shutdown.is_cancelled() {
            return;
        }
        let known = hub.dials.get(&url).and_then(|d| d.node_id.clone());
        if known.as_ref().is_some_and(|id| hub.is_linked(id)) {
            // The pair already has a link (perhaps the peer dialed us): check again later.
            tokio::select! {
                _ = hub.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
            }
        }
        let outcome = attempt(&hub, &registry, &url, &endpoint).await;
        if hub.shutdown.is_cancelled() {
            // Whatever the attempt met, it was this node stopping.
            return;
        }
        let wait = backoff.after(outcome.as_ref().ok().copied());
        match outcome {
            Ok(up) if up >= STABLE_LINK => failures = 0,
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                hub.set_dial(&url, |d| d.last_error = Some(e.clone()));
                // Named by region once a handshake told us who is there; until then by its URL.
                let _peer = known_peer(&hub, &url).entered();
                // The first failure and then every tenth are worth a warning; the rest is noise.
                if failures == 1 || failures.is_multiple_of(10) {
                    warn!(%url, error = %e, failures, "cannot reach peer; retrying");
                } else {
                    debug!(%url, error = %e, "cannot reach peer");
                }
            }
        }
        let jittered = wait.mul_f64(rand::rng().random_range(0.5..1.0));
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tokio::time::sleep(jittered) => {}
        }
    }
}

/// The span of the peer dialed at `url`, once it is known who answers there.
fn known_peer(hub: &Replication, url: &str) -> tracing::Span {
    let Some(id) = hub.dials.get(url).and_then(|d| d.node_id.clone()) else {
        return tracing::Span::none();
    };
    let region = hub.stats(&id).region.lock().unwrap().clone();
    super::link::peer_span(&super::auth::Identity {
        node_id: id,
        region,
        url: url.to_string(),
    })
}

/// The redial policy, free of I/O: how long to wait (before jitter) after each attempt. It
/// doubles from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`]; only a link that stayed up
/// [`STABLE_LINK`] starts it over, so one that authenticates and then dies at once (say, on an
/// update it cannot store) is not redialed in a tight loop.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: FIRST_BACKOFF,
        }
    }
}

impl Backoff {
    /// After an attempt whose link was up for `up` (`None`: it never came up), the wait before
    /// the next one.
    fn after(&mut self, up: Option<Duration>) -> Duration {
        if up.is_some_and(|up| up >= STABLE_LINK) {
            self.next = FIRST_BACKOFF;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        wait
    }
}

/// One connection: returns when the link ends, with how long it was up (Err if it never was).
async fn attempt(
    hub: &Arc<Replication>,
    registry: &Arc<Registry>,
    url: &str,
    endpoint: &str,
) -> Result<Duration, String> {
    let secret = hub.secret().ok_or("no --peer-secret")?.to_vec();
    // The same limits as the accepting side: messages arrive cut into frames, put back together
    // (up to `PEER_MAX_MESSAGE`) by the bridge.
    let config = WebSocketConfig::default()
        .max_message_size(Some(super::socket::MAX_FRAME))
        .max_frame_size(Some(super::socket::MAX_FRAME));
    // A connect in progress gives way to shutdown, which would otherwise wait for it.
    let dialed = tokio::select! {
        _ = hub.shutdown.cancelled() => return Err("this node is shutting down".into()),
        dialed = tokio::time::timeout(CONNECT_TIMEOUT, hub.peer_tls.dial(endpoint, config)) => dialed,
    };
    let dialed = dialed
        .map_err(|_| format!("no answer within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let mut sock = bridge(dialed.ws, hub.shutdown.child_token(), &hub.tasks);
    let peer = match super::auth::dial(&mut sock, &hub.me, &secret, &dialed.binding).await {
        Ok(peer) => peer,
        Err(e) => {
            registry.metrics().refused("peer_auth");
            sock.control.close(close_code::POLICY, e.to_string());
            return Err(format!("authentication failed: {e}"));
        }
    };
    hub.set_dial(url, |d| {
        d.node_id = Some(peer.node_id.clone());
        d.last_error = None;
    });
    hub.remember(&peer, Some(url));
    let me = hub.me.node_id.clone();
    let up = std::time::Instant::now();
    let span = super::link::peer_span(&peer);
    super::link::run(hub.clone(), registry.clone(), sock, peer, me)
        .instrument(span)
        .await;
    Ok(up.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_only_a_stable_link_starts_it_over() {
        let ms = Duration::from_millis;
        let mut b = Backoff::default();
        let failures: Vec<Duration> = (0..7).map(|_| b.after(None)).collect();
        assert_eq!(
            failures,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3000),
                ms(3000)
            ]
        );
        // A link that died within seconds keeps the backoff where it is.
        assert_eq!(b.after(Some(Duration::from_secs(2))), ms(3000));
        // One that stayed up starts it over.
        assert_eq!(b.after(Some(STABLE_LINK)), ms(100));
        assert_eq!(b.after(None), ms(200));
    }

    #[test]
    fn endpoints_from_base_urls() {
        assert_eq!(
            peer_endpoint("http://10.0.0.2:8080"),
            "ws://10.0.0.2:8080/peer"
        );
        assert_eq!(
            peer_endpoint("https://eu.example.com/"),
            "wss://eu.example.com/peer"
        );
        assert_eq!(peer_endpoint("127.0.0.1:9000"), "ws://127.0.0.1:9000/peer");
    }
}
