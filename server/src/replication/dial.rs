//! Dialing a configured peer, forever: connect, authenticate, run the link; when it ends or
//! fails, retry with jittered exponential backoff (100 ms doubling to [`MAX_BACKOFF`]). While a
//! link with that peer exists (it may have dialed us), do not dial a second one.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, warn};

use super::Replication;
use super::socket::bridge;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Retries never wait longer than this, so a returning region is found within seconds.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A link up at least this long counts as working: the next dial starts from the first backoff.
const STABLE_LINK: Duration = Duration::from_secs(10);

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

pub async fn dial_forever(hub: Arc<Replication>, url: String) {
    let endpoint = peer_endpoint(&url);
    let mut backoff = FIRST_BACKOFF;
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
        match attempt(&hub, &url, &endpoint).await {
            // Only a link that stayed up a while resets the backoff: one that authenticates and
            // then dies at once (say, on an update it cannot store) must not be redialed in a
            // tight loop.
            Ok(up) if up >= STABLE_LINK => {
                backoff = FIRST_BACKOFF;
                failures = 0;
            }
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                hub.set_dial(&url, |d| d.last_error = Some(e.clone()));
                // The first failure and then every tenth are worth a warning; the rest is noise.
                if failures == 1 || failures.is_multiple_of(10) {
                    warn!(peer = %url, error = %e, failures, "cannot reach peer; retrying");
                } else {
                    debug!(peer = %url, error = %e, "cannot reach peer");
                }
            }
        }
        let jittered = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tokio::time::sleep(jittered) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: returns when the link ends, with how long it was up (Err if it never was).
async fn attempt(hub: &Arc<Replication>, url: &str, endpoint: &str) -> Result<Duration, String> {
    let secret = hub.secret().ok_or("no --peer-secret")?.to_vec();
    // The same limits as the accepting side: messages arrive cut into frames, put back together
    // (up to `PEER_MAX_MESSAGE`) by the bridge.
    let config = WebSocketConfig::default()
        .max_message_size(Some(super::socket::MAX_FRAME))
        .max_frame_size(Some(super::socket::MAX_FRAME));
    let (ws, _) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(endpoint, Some(config), true),
    )
    .await
    .map_err(|_| format!("no answer within {CONNECT_TIMEOUT:?}"))?
    .map_err(|e| e.to_string())?;
    let mut sock = bridge(ws, hub.shutdown.child_token());
    let peer = match super::auth::dial(&mut sock, &hub.me, &secret).await {
        Ok(peer) => peer,
        Err(e) => {
            sock.control.close(1008, e.to_string());
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
    super::link::run(hub.clone(), sock, peer, me).await;
    Ok(up.elapsed())
}

#[cfg(test)]
mod tests {
    use super::peer_endpoint;

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
